#!/usr/bin/env python3
"""Load the board kas files with kas itself (schema, format version,
includes), offline, and check what they promise: the machine, wrynose
branches for every layer repository, this repository's meta-berth layer,
the example image as target, and the kernel fragment opt-in.

Usage: kas-check.py   (run with a Python that has kas installed)
"""

import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BOARDS = {"raspberrypi2.yml": "raspberrypi2", "hpe-el10.yml": "intel-corei7-64"}


def main():
    from kas import context
    from kas.includehandler import IncludeHandler

    failures = []
    with tempfile.TemporaryDirectory(prefix="berth-kas-") as work:
        os.environ["KAS_WORK_DIR"] = work
        context.create_global_context(argparse.Namespace(no_color=True, update=False, force_checkout=False))
        for name, machine in BOARDS.items():
            path = os.path.join(HERE, "kas", name)
            try:
                cfg, missing = IncludeHandler([path], use_lock=False).get_config()
            except Exception as e:  # kas reports schema errors as several types
                failures.append(f"{name}: kas refuses it: {type(e).__name__}: {e}")
                continue
            problems = []
            if missing:
                problems.append(f"unresolved includes {missing}")
            if cfg.get("machine") != machine:
                problems.append(f"machine {cfg.get('machine')!r}, want {machine!r}")
            if cfg.get("target") != "berth-gateway-image":
                problems.append(f"target {cfg.get('target')!r}")
            repos = cfg.get("repos", {})
            berth = repos.get("berth") or {}
            if "url" in berth or "yocto-layer/meta-berth" not in (berth.get("layers") or {}):
                problems.append("meta-berth is not taken from this repository")
            for rname, repo in repos.items():
                if not repo or "url" not in repo:
                    continue
                want = "2.16" if rname == "bitbake" else "wrynose"
                if repo.get("branch") != want:
                    problems.append(f"repo {rname} branch {repo.get('branch')!r}, want {want!r}")
            for needed in ("bitbake", "openembedded-core", "meta-yocto"):
                if needed not in repos:
                    problems.append(f"repo {needed} missing")
            headers = "\n".join((cfg.get("local_conf_header") or {}).values())
            if 'BERTH_KERNEL_FRAGMENT = "1"' not in headers or 'INIT_MANAGER = "systemd"' not in headers:
                problems.append("local.conf lacks the systemd init manager or the kernel fragment opt-in")
            for p in problems:
                failures.append(f"{name}: {p}")
            if not problems:
                print(f"kas-check: {name}: ok (machine {machine}, {len(repos)} repositories)")
    for f in failures:
        print(f"kas-check: FAIL: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

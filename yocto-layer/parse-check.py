#!/usr/bin/env python3
"""Parse meta-berth's recipes and appends with BitBake's own parser, offline.

BitBake's `bb` package (from PyPI's bitbake-setup wheel; pass its directory
with --bb) parses the layer the way the cooker does: the layers' layer.conf,
a bitbake.conf, the base class and INHERITs, then each recipe with its
matching bbappends, finalised (deferred inherits, anonymous python, key
expansion, task graph). oe-core is not cloned: a temporary stub layer
provides the classes and kernel recipes meta-berth touches, each small but
strict about what it checks (PACKAGECONFIG syntax, systemd units present,
REQUIRED_DISTRO_FEATURES).

On top of a clean parse this asserts what the layer promises: the berth
recipe's crates match Cargo.lock, its local files exist, PACKAGECONFIG maps
to cargo features, each MACHINE gets an existing board config, and the
kernel fragment is added to linux-yocto, linux-raspberrypi and linux-intel
only on opt-in.

Usage: parse-check.py --bb DIR [--layer DIR] [--repo DIR]
Exit status 0 when every check passed; failures are listed.
"""

import argparse
import atexit
import glob
import logging
import os
import shutil
import sys
import tempfile
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))

STUB_FILES = {
    "conf/layer.conf": """\
BBPATH .= ":${LAYERDIR}"
BBFILES += "${LAYERDIR}/recipes-*/*/*.bb"
BBFILE_COLLECTIONS += "core"
BBFILE_PATTERN_core = "^${LAYERDIR}/"
BBFILE_PRIORITY_core = "5"
LAYERSERIES_CORENAMES = "wrynose"
LAYERVERSION_core = "16"
LAYERSERIES_COMPAT_core = "wrynose"
""",
    # The parts of oe-core's bitbake.conf that recipes and these checks read.
    "conf/bitbake.conf": """\
include conf/local.conf
TMPDIR ?= "${TOPDIR}/tmp"
PN = "${@bb.parse.vars_from_file(d.getVar('FILE', False),d)[0] or 'defaultpkgname'}"
PV = "${@bb.parse.vars_from_file(d.getVar('FILE', False),d)[1] or '1.0'}"
PR = "${@bb.parse.vars_from_file(d.getVar('FILE', False),d)[2] or 'r0'}"
BPN = "${PN}"
BP = "${BPN}-${PV}"
P = "${PN}-${PV}"
PF = "${PN}-${PV}-${PR}"
THISDIR = "${@os.path.dirname(d.getVar('FILE'))}"
FILESPATH = "${@':'.join([p for p in (d.getVar('FILESEXTRAPATHS') or '').split(':') if p and p != '__default'] + [os.path.join(os.path.dirname(d.getVar('FILE')), p) for p in (d.getVar('BP'), d.getVar('BPN'), 'files')])}"
FILESEXTRAPATHS ?= "__default:"
WORKDIR = "${TMPDIR}/work/${PF}"
UNPACKDIR = "${WORKDIR}/sources"
S = "${UNPACKDIR}/${BP}"
B = "${S}"
D = "${WORKDIR}/image"
prefix = "/usr"
exec_prefix = "/usr"
bindir = "/usr/bin"
sysconfdir = "/etc"
localstatedir = "/var"
datadir = "/usr/share"
docdir = "${datadir}/doc"
systemd_system_unitdir = "/usr/lib/systemd/system"
COMMON_LICENSE_DIR = "${TOPDIR}/licenses"
AUTOREV = "${@bb.fetch2.get_autorev(d)}"
MACHINE ??= "qemux86-64"
DISTRO_FEATURES ??= "systemd usrmerge"
PACKAGES = "${PN}"
DEPENDS ??= ""
RDEPENDS:${PN} ??= ""
OVERRIDES = "${MACHINE}:pn-${PN}"
""",
    "classes/base.bbclass": """\
# Stub of oe-core's base class: tasks, and the PACKAGECONFIG handling the
# real class does (unknown values and malformed flags are fatal there too).
addtask fetch
addtask unpack after do_fetch
addtask patch after do_unpack
addtask configure after do_patch
addtask compile after do_configure
addtask install after do_compile
addtask build after do_install
do_fetch() {
    :
}
do_unpack() {
    :
}
do_patch() {
    :
}
do_configure() {
    :
}
do_compile() {
    :
}
do_install() {
    :
}
do_build() {
    :
}

python () {
    pkgconfigflags = d.getVarFlags("PACKAGECONFIG") or {}
    pkgconfigflags.pop("doc", None)
    pkgconfig = (d.getVar("PACKAGECONFIG") or "").split()
    for flag in pkgconfig:
        if flag not in pkgconfigflags:
            bb.fatal("PACKAGECONFIG has '%s' but there is no PACKAGECONFIG[%s]" % (flag, flag))
    for flag, value in pkgconfigflags.items():
        items = value.split(",")
        if len(items) > 6:
            bb.fatal("PACKAGECONFIG[%s] has more than 6 fields: %s" % (flag, value))
        if flag in pkgconfig:
            items += [""] * (6 - len(items))
            if items[2]:
                d.appendVar("DEPENDS", " " + items[2])
            if items[3]:
                d.appendVar("RDEPENDS:" + d.getVar("PN"), " " + items[3])
}
""",
    "classes/cargo.bbclass": """\
# Stub of oe-core's cargo class: the variables recipes adjust.
CARGO_SRC_DIR ??= ""
CARGO_MANIFEST_PATH ??= "${S}/${CARGO_SRC_DIR}/Cargo.toml"
BUILD_MODE = "--release"
CARGO_BUILD_FLAGS = "-v --frozen --target ${TARGET_SYS} ${BUILD_MODE} --manifest-path=${CARGO_MANIFEST_PATH}"
cargo_do_compile() {
    cargo build ${CARGO_BUILD_FLAGS}
}
cargo_do_install() {
    install -d ${D}${bindir}
}
EXPORT_FUNCTIONS do_compile do_install
""",
    "classes/cargo-update-recipe-crates.bbclass": """\
addtask do_update_crates after do_patch
CARGO_LOCK_SRC_DIR ??= "${S}"
do_update_crates() {
    :
}
""",
    "classes/systemd.bbclass": """\
# Stub of oe-core's systemd class: like the real one, a unit named in
# SYSTEMD_SERVICE must be among the recipe's sources.
SYSTEMD_PACKAGES ?= "${PN}"
SYSTEMD_AUTO_ENABLE ??= "enable"
python () {
    import os
    if not bb.utils.contains("DISTRO_FEATURES", "systemd", True, False, d):
        return
    local = [u.split(";")[0][len("file://"):] for u in (d.getVar("SRC_URI") or "").split() if u.startswith("file://")]
    for pkg in (d.getVar("SYSTEMD_PACKAGES") or "").split():
        services = (d.getVar("SYSTEMD_SERVICE:" + pkg) or "").split()
        if not services:
            bb.fatal("SYSTEMD_SERVICE:%s is empty" % pkg)
        for service in services:
            if service not in [os.path.basename(f) for f in local]:
                bb.fatal("systemd unit %s of %s is not in SRC_URI" % (service, pkg))
        auto = d.getVar("SYSTEMD_AUTO_ENABLE:" + pkg) or d.getVar("SYSTEMD_AUTO_ENABLE")
        if auto not in ("enable", "disable", "mask", "preset"):
            bb.fatal("SYSTEMD_AUTO_ENABLE:%s is '%s'" % (pkg, auto))
}
""",
    "classes/features_check.bbclass": """\
python () {
    for f in (d.getVar("REQUIRED_DISTRO_FEATURES") or "").split():
        if f not in (d.getVar("DISTRO_FEATURES") or "").split():
            raise bb.parse.SkipRecipe("missing required distro feature '%s'" % f)
}
""",
    "classes/packagegroup.bbclass": """\
PACKAGE_ARCH ?= "all"
PACKAGES = "${PN}"
python () {
    if not d.getVar("RDEPENDS:" + d.getVar("PN")):
        bb.fatal("packagegroup %s has no RDEPENDS" % d.getVar("PN"))
}
""",
    "classes/core-image.bbclass": """\
IMAGE_FEATURES ??= ""
IMAGE_INSTALL ??= ""
CORE_IMAGE_EXTRA_INSTALL ??= ""
IMAGE_LINGUAS ??= ""
addtask rootfs after do_install before do_build
do_rootfs() {
    :
}
""",
}

KERNEL_STUBS = ("linux-yocto", "linux-raspberrypi", "linux-intel")
KERNEL_STUB = """\
SUMMARY = "stub kernel recipe"
LICENSE = "GPL-2.0-only"
SRC_URI = "git://example.invalid/linux.git;branch=main"
"""


class Failures:
    def __init__(self):
        self.items = []

    def check(self, ok, what):
        if ok:
            print(f"parse-check: ok: {what}")
        else:
            print(f"parse-check: FAIL: {what}")
            self.items.append(what)


def make_stub_layer(root):
    for rel, text in STUB_FILES.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    for name in KERNEL_STUBS:
        path = os.path.join(root, "recipes-kernel", "linux", f"{name}_6.18.bb")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(KERNEL_STUB)


def base_config(bb, layers, topdir, local):
    """Configuration data built by BitBake's own CookerDataBuilder code:
    bblayers.conf, each layer.conf (with the LAYERSERIES_COMPAT check),
    bitbake.conf (which includes conf/local.conf, made from `local`), the
    base class and INHERITs."""
    conf = os.path.join(topdir, "conf")
    os.makedirs(conf, exist_ok=True)
    with open(os.path.join(conf, "bblayers.conf"), "w", encoding="utf-8") as f:
        f.write('BBPATH = "${TOPDIR}"\nBBFILES ?= ""\nBBLAYERS = "%s"\n' % " ".join(layers))
    with open(os.path.join(conf, "local.conf"), "w", encoding="utf-8") as f:
        for key, value in local.items():
            f.write('%s = "%s"\n' % (key, value))

    class Builder:
        """The two members parseConfigurationFiles uses."""

        def __init__(self):
            self.basedata = bb.data.init()
            self.basedata.setVar("__bbclasstype", "global")

        def _findLayerConf(self, data):
            return os.path.join(conf, "bblayers.conf")

    d = bb.cookerdata.CookerDataBuilder.parseConfigurationFiles(Builder(), [], [])
    d.renameVar("__depends", "__base_depends")
    d.setVar("__bbclasstype", "recipe")
    bb.parse.siggen = bb.siggen.init(d)
    return d


def appends_for(recipe, appends):
    """The cooker's rule: same name, or '%' matching any rest of the name."""
    base = os.path.basename(recipe)
    out = []
    for a in appends:
        name = os.path.basename(a)[: -len("append")]  # foo_%.bb
        if name == base or ("%" in name and base.startswith(name[: name.index("%")])):
            out.append(a)
    return sorted(out)


def parse(bb, d, recipe, appends):
    rd = bb.data.createCopy(d)
    if appends:
        rd.setVar("__BBAPPEND", " ".join(appends))
    stores = bb.parse.handle(recipe, rd, 0)
    return stores[""]


def collect(bb, d):
    recipes, appends = [], []
    for pattern in (d.getVar("BBFILES") or "").split():
        for f in glob.glob(pattern):
            (appends if f.endswith(".bbappend") else recipes).append(f)
    return sorted(set(recipes)), sorted(set(appends))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bb", required=True, help="directory holding the bb package")
    ap.add_argument("--layer", default=os.path.join(HERE, "meta-berth"))
    ap.add_argument("--repo", default=os.path.dirname(HERE))
    args = ap.parse_args()

    # The wheel ships `bb` without BitBake's hash-equivalence server package,
    # which bb.siggen imports at load time but parsing never calls.
    shim = tempfile.mkdtemp(prefix="berth-bbshim-")
    os.makedirs(os.path.join(shim, "hashserv"))
    atexit.register(shutil.rmtree, shim, True)
    for mod in ("__init__.py", "client.py"):
        with open(os.path.join(shim, "hashserv", mod), "w") as f:
            f.write('"""Placeholder: parsing does not use hash equivalence."""\n')
    sys.path.insert(0, args.bb)
    sys.path.append(shim)
    import bb  # noqa: E402  (from the bitbake-setup wheel)
    import bb.data  # noqa: E402
    import bb.parse  # noqa: E402
    import bb.siggen  # noqa: E402
    import bb.fetch2  # noqa: E402
    import bb.cookerdata  # noqa: E402

    bb.msg.init_msgconfig(False, 0)
    logging.basicConfig(format="parse-check: bitbake: %(levelname)s: %(message)s")
    print(f"parse-check: BitBake {bb.__version__} from {args.bb}")
    fails = Failures()
    layer = os.path.abspath(args.layer)

    with tempfile.TemporaryDirectory(prefix="berth-parse-") as top:
        stub = os.path.join(top, "stub-core")
        make_stub_layer(stub)
        os.makedirs(os.path.join(top, "licenses"))
        with open(os.path.join(top, "licenses", "Apache-2.0"), "w") as f:
            f.write("stub\n")

        def config(**local):
            return base_config(bb, [stub, layer], top, local)

        try:
            d = config()
        except Exception as e:  # bb.fatal raises BBHandledException after logging
            fails.check(False, f"configuration (bblayers.conf, layer.conf, bitbake.conf): {type(e).__name__} {e}")
            print(f"parse-check: {len(fails.items)} check(s) failed")
            return 1
        compat = (d.getVar("LAYERSERIES_COMPAT_berth") or "").split()
        fails.check("wrynose" in compat, f"LAYERSERIES_COMPAT_berth {compat} names wrynose")
        fails.check("berth" in (d.getVar("BBFILE_COLLECTIONS") or "").split(), "layer collection 'berth'")

        recipes, appends = collect(bb, d)
        ours = [r for r in recipes if r.startswith(layer)]
        fails.check(len(ours) >= 3, f"{len(ours)} recipes in meta-berth")
        used = set()
        parsed = {}
        for recipe in recipes:
            app = appends_for(recipe, appends)
            used.update(app)
            try:
                rd = parse(bb, d, recipe, app)
            except Exception as e:  # BitBake raises many types; report all
                fails.check(False, f"parse {os.path.relpath(recipe, top if recipe.startswith(top) else layer)}: {e}")
                continue
            skipped = rd.getVar("__SKIPPED")
            name = os.path.basename(recipe)
            fails.check(not skipped, f"parse {name} with {len(app)} append(s)" + (f" (skipped: {skipped})" if skipped else ""))
            parsed[name] = rd
        for a in appends:
            fails.check(a in used, f"{os.path.relpath(a, layer)} applies to a recipe")

        berth = parsed.get("berth_git.bb")
        if berth is None:
            fails.check(False, "berth_git.bb parsed")
        else:
            check_berth(bb, berth, args.repo, layer, fails)
            for pc, feats in (("", ""), ("ble", "agent/ble"), ("ble lxd", "agent/ble agent/lxd"), ("lxd", "agent/lxd")):
                rd = parse(bb, config(**{"PACKAGECONFIG:pn-berth": pc}), os.path.join(layer, "recipes-berth/berth/berth_git.bb"), [])
                flags = rd.getVar("CARGO_BUILD_FLAGS")
                fails.check(flags.endswith(f"--no-default-features --features '{feats}'"),
                            f"PACKAGECONFIG '{pc}' builds with features '{feats}'")
            rd = parse(bb, config(**{"PACKAGECONFIG:pn-berth": "ble"}), os.path.join(layer, "recipes-berth/berth/berth_git.bb"), [])
            rdeps = (rd.getVar("RDEPENDS:berth") or "").split()
            fails.check("bluez5" in rdeps and "dbus" in rdeps, f"PACKAGECONFIG ble pulls in bluez5 and dbus ({rdeps})")
            for machine, board in (("raspberrypi2", "raspberrypi2"), ("intel-corei7-64", "hpe-el10"),
                                   ("qemuarm", "qemu-armv7"), ("qemux86-64", "generic-x86_64")):
                rd = parse(bb, config(MACHINE=machine), os.path.join(layer, "recipes-berth/berth/berth_git.bb"), [])
                got = rd.getVar("BERTH_BOARD")
                path = os.path.join(args.repo, "board-configs", f"{got}.toml")
                fails.check(got == board and os.path.isfile(path),
                            f"MACHINE {machine} installs board-configs/{got}.toml (want {board}, exists: {os.path.isfile(path)})")

        # The kernel fragment: absent by default, present on either opt-in.
        for kernel in KERNEL_STUBS:
            recipe = os.path.join(stub, "recipes-kernel", "linux", f"{kernel}_6.18.bb")
            app = appends_for(recipe, appends)
            fails.check(len(app) == 1, f"{kernel} has one meta-berth append")
            for local, want in (({}, False), ({"BERTH_KERNEL_FRAGMENT": "1"}, True),
                                ({"DISTRO_FEATURES": "systemd berth-jails"}, True),
                                ({"BERTH_KERNEL_FRAGMENT": "0"}, False)):
                rd = parse(bb, config(**local), recipe, app)
                src = rd.getVar("SRC_URI").split()
                has = "file://berth-jails.cfg" in src
                found = bb.utils.which(rd.getVar("FILESPATH"), "berth-jails.cfg")
                fails.check(has == want and (not want or bool(found)),
                            f"{kernel} with {local or 'no opt-in'}: fragment {'added' if has else 'absent'}"
                            + (f", found at {found}" if has else ""))

    if fails.items:
        print(f"parse-check: {len(fails.items)} check(s) failed")
        return 1
    print("parse-check: all checks passed")
    return 0


def check_berth(bb, rd, repo, layer, fails):
    src = rd.getVar("SRC_URI").split()
    crates = [u for u in src if u.startswith("crate://crates.io/")]
    with open(os.path.join(repo, "Cargo.lock"), "rb") as f:
        lock = tomllib.load(f)
    locked = [p for p in lock["package"] if "crates.io" in p.get("source", "")]
    fails.check(len(crates) == len(locked), f"berth SRC_URI has {len(crates)} crates, Cargo.lock {len(locked)}")
    missing_sums = [
        p for p in locked
        if rd.getVarFlag("SRC_URI", f"{p['name']}-{p['version']}.sha256sum") != p.get("checksum")
    ]
    fails.check(not missing_sums, f"every crate's sha256sum matches Cargo.lock ({len(missing_sums)} differ)")
    fails.check(src[0].startswith("git://"), "berth fetches its sources with git first")
    filespath = rd.getVar("FILESPATH").split(":")
    for u in src:
        if u.startswith("file://"):
            name = u.split(";")[0][len("file://"):]
            fails.check(any(os.path.isfile(os.path.join(p, name)) for p in filespath), f"berth source {name} exists")
    fails.check(rd.getVar("SYSTEMD_SERVICE:berth") == "berthd.service", "berth enables berthd.service")
    fails.check(rd.getVar("CARGO_SRC_DIR") == "", "berth builds from the workspace root")
    flags = rd.getVar("CARGO_BUILD_FLAGS").split()
    for b in ("berthd", "berth", "berth-init"):
        fails.check(f"--bin={b}" in flags or any(a == "--bin" and n == b for a, n in zip(flags, flags[1:])),
                    f"berth builds the {b} binary")
    fails.check("-Csymbol-mangling-version=v0" in (rd.getVar("RUSTFLAGS") or ""),
                "berth builds with v0 symbol names, as agent/berthd-hot.ld needs")
    install = rd.getVar("do_install") or ""
    for path in ("/etc/berth/berthd.toml", "/etc/berth/rules.toml", "/etc/berth/board.toml", "/var/lib/berth",
                 "/usr/lib/systemd/system/berthd.service"):
        fails.check(path in install, f"do_install installs {path}")


if __name__ == "__main__":
    sys.exit(main())

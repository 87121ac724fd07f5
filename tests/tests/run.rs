//! `berth jail run`: exit codes, stdio, and what the jail sees.

// Test code: a failed step must fail the test, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use berth_tests::{host, TestEnv};

#[test]
#[ignore = "privileged: needs root"]
fn echo_prints_and_exits_zero() {
    let env = TestEnv::new_with_rootfs();
    let out = env.jail_run(&[], &["/bin/echo", "hello", "jail"]);
    assert_eq!(out.ok(), "hello jail\n");
    assert_eq!(out.stderr, "", "berth printed on stderr");
    env.assert_no_leftovers(&[]);
}

#[test]
#[ignore = "privileged: needs root"]
fn exit_code_passes_through() {
    let env = TestEnv::new_with_rootfs();
    let out = env.jail_run(&[], &["/bin/sh", "-c", "exit 3"]);
    assert_eq!(out.code(), 3, "stderr: {}", out.stderr);
    env.assert_no_leftovers(&[]);
}

#[test]
#[ignore = "privileged: needs root"]
fn payload_starts_with_default_signal_dispositions() {
    let env = TestEnv::new_with_rootfs();
    // `yes` ends by SIGPIPE once `head` exits; with SIGPIPE ignored it
    // would get EPIPE instead and report a write error.
    let out = env.jail_run(
        &[],
        &[
            "/bin/sh",
            "-c",
            "grep SigIgn /proc/self/status; yes | head -n 2",
        ],
    );
    let text = out.ok();
    let ign = text
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .expect("SigIgn line");
    assert_eq!(ign & (1 << (13 - 1)), 0, "SIGPIPE ignored: {text}");
    assert!(text.ends_with("y\ny\n"), "{text}");
    assert_eq!(out.stderr, "", "a write error on the pipe");
    env.assert_no_leftovers(&[]);
}

#[test]
#[ignore = "privileged: needs root"]
fn killed_by_sigkill_exits_137() {
    let env = TestEnv::new_with_rootfs();
    let out = env.jail_run(&[], &["/bin/sh", "-c", "kill -9 $$; sleep 5"]);
    assert_eq!(out.code(), 137, "stderr: {}", out.stderr);
    env.assert_no_leftovers(&[]);
}

#[test]
#[ignore = "privileged: needs root"]
fn stdin_passes_through() {
    let env = TestEnv::new_with_rootfs();
    let mut args: Vec<String> = vec!["jail".into(), "run".into(), "--rootfs".into()];
    args.push(env.rootfs.display().to_string());
    args.extend(["--", "/bin/sh", "-c", "tr a-z A-Z; echo err >&2"].map(String::from));
    let out = env.run_stdin(&args, b"from the host\nline two\n");
    assert_eq!(out.ok(), "FROM THE HOST\nLINE TWO\n");
    assert_eq!(out.stderr, "err\n");
    env.assert_no_leftovers(&[]);
}

#[test]
#[ignore = "privileged: needs root"]
fn jail_sees_only_its_own_processes() {
    let env = TestEnv::new_with_rootfs();
    // A host process the jail must not see.
    let mut host_sleep = std::process::Command::new("/bin/sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let out = env.jail_run(
        &[],
        &[
            "/bin/sh",
            "-c",
            "for p in /proc/[0-9]*; do cat $p/comm; done",
        ],
    );
    let _ = host_sleep.kill();
    let _ = host_sleep.wait();
    let comms: Vec<&str> = out.ok().lines().collect();
    assert!(
        comms.len() <= 3,
        "jail sees {} processes: {comms:?}",
        comms.len()
    );
    assert!(!comms.contains(&"sleep"), "host sleep visible: {comms:?}");
    assert!(comms.contains(&"sh") || comms.contains(&"cat"), "{comms:?}");
    env.assert_no_leftovers(&[]);
}

#[test]
#[ignore = "privileged: needs root"]
fn root_is_the_given_rootfs() {
    let env = TestEnv::new_with_rootfs();
    std::fs::write(env.rootfs.join("marker"), format!("{}\n", env.id)).unwrap();
    let out = env.jail_run(
        &[],
        &[
            "/bin/sh",
            "-c",
            "cat /marker; test -e /work && echo host-visible; test -e /bin/busybox && echo busybox",
        ],
    );
    assert_eq!(out.ok(), format!("{}\nbusybox\n", env.id));
    env.assert_no_leftovers(&[]);
}

#[test]
#[ignore = "privileged: needs root"]
fn hostname_stays_inside() {
    let env = TestEnv::new_with_rootfs();
    let host_before = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let out = env.jail_run(
        &["--hostname", "jailhost"],
        &[
            "/bin/sh",
            "-c",
            "hostname; hostname changed 2>/dev/null || echo refused; hostname",
        ],
    );
    // The jail's root lacks CAP_SYS_ADMIN: it cannot even rename its own
    // UTS namespace, let alone the host's.
    assert_eq!(out.ok(), "jailhost\nrefused\njailhost\n");
    let host_after = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(host_before, host_after, "host hostname changed");
    env.assert_no_leftovers(&[]);
}

#[test]
#[ignore = "privileged: needs root"]
fn mount_fails_inside() {
    let env = TestEnv::new_with_rootfs();
    let out = env.jail_run(
        &[],
        &["/bin/sh", "-c", "mount -t tmpfs none /tmp && echo mounted; mount -o remount,rw / && echo remounted; exit 0"],
    );
    assert_eq!(out.ok(), "", "a mount succeeded inside the jail");
    assert!(
        host::mounts_mentioning(&env.rootfs).is_empty(),
        "mount visible on the host"
    );
    env.assert_no_leftovers(&[]);
}

#[test]
#[ignore = "privileged: needs root"]
fn overlay_writes_are_thrown_away() {
    let env = TestEnv::new_with_rootfs();
    let layer = env.dir.path().join("layer");
    std::fs::create_dir_all(layer.join("etc")).unwrap();
    std::fs::write(layer.join("etc/from-layer"), "layer\n").unwrap();
    let out = env.jail_run(
        &["--layer", layer.to_str().unwrap()],
        &[
            "/bin/sh",
            "-c",
            "cat /etc/from-layer; echo new > /written; rm /etc/passwd; cat /written",
        ],
    );
    assert_eq!(out.ok(), "layer\nnew\n");
    assert!(
        !env.rootfs.join("written").exists(),
        "write reached the rootfs"
    );
    assert!(
        env.rootfs.join("etc/passwd").exists(),
        "delete reached the rootfs"
    );
    assert!(!layer.join("written").exists(), "write reached the layer");
    let out = env.jail_run(&["--overlay"], &["/bin/sh", "-c", "touch /x && ls /x"]);
    assert_eq!(out.ok(), "/x\n");
    assert!(!env.rootfs.join("x").exists(), "write reached the rootfs");
    env.assert_no_leftovers(&[]);
}

#[test]
#[ignore = "privileged: needs root"]
fn user_ns_maps_root_to_an_unprivileged_host_user() {
    let env = TestEnv::new_with_rootfs();
    let out = env.jail_run(
        &["--user-ns", "--overlay"],
        &["/bin/sh", "-c", "id -u; cat /proc/self/uid_map"],
    );
    let stdout = out.ok();
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("0"));
    let map: Vec<u64> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(map.len(), 3, "uid_map: {stdout}");
    assert_eq!(map[0], 0);
    assert_ne!(map[1], 0, "root inside is root outside");
    env.assert_no_leftovers(&[]);
}

//! Bad input is refused with one `berth: error: ...` line and exit code 2,
//! and nothing is created: no state dir, cgroup or link.

// Test code: a failed step must fail the test, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::os::unix::process::CommandExt;

use berth_tests::{require_root, run_with_timeout, TestEnv, DEFAULT_TIMEOUT};

fn run_opts(env: &TestEnv, opts: &[&str]) -> berth_tests::Outcome {
    let mut args = vec!["jail", "run", "--vendor"];
    let vendor = env.vendor("a");
    args.push(&vendor);
    args.extend_from_slice(opts);
    args.extend_from_slice(&["--", "/bin/true"]);
    env.run(&args)
}

#[test]
fn version_prints_name_and_version() {
    let env = TestEnv::new();
    let out = env.run(["--version"]);
    assert_eq!(out.ok(), format!("berth {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn missing_rootfs_is_refused() {
    let env = TestEnv::new();
    let rootfs = env.dir.path().join("no-such-rootfs");
    let out = run_opts(&env, &["--rootfs", rootfs.to_str().unwrap()]);
    out.assert_usage_error(&format!(
        "berth: error: rootfs {} does not exist",
        rootfs.display()
    ));
    env.assert_nothing_created(&[&env.vendor("a")]);
}

#[test]
fn rootfs_that_is_a_file_is_refused() {
    let env = TestEnv::new();
    let file = env.dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let out = run_opts(&env, &["--rootfs", file.to_str().unwrap()]);
    out.assert_usage_error(&format!(
        "berth: error: rootfs {} is not a directory",
        file.display()
    ));
    env.assert_nothing_created(&[&env.vendor("a")]);
}

#[test]
fn missing_layer_is_refused() {
    let env = TestEnv::new();
    let layer = env.dir.path().join("no-layer");
    let root = env.dir.path().to_str().unwrap().to_string();
    let out = run_opts(
        &env,
        &["--rootfs", &root, "--layer", layer.to_str().unwrap()],
    );
    out.assert_usage_error(&format!(
        "berth: error: layer {} is not a directory",
        layer.display()
    ));
    env.assert_nothing_created(&[&env.vendor("a")]);
}

#[test]
fn unknown_option_is_refused() {
    let env = TestEnv::new();
    let root = env.dir.path().to_str().unwrap().to_string();
    let out = run_opts(&env, &["--rootfs", &root, "--bogus"]);
    out.assert_usage_error("berth: error: unexpected argument '--bogus' found");
    env.assert_nothing_created(&[&env.vendor("a")]);
}

#[test]
fn bad_memory_size_is_refused() {
    let env = TestEnv::new();
    let root = env.dir.path().to_str().unwrap().to_string();
    let out = run_opts(&env, &["--rootfs", &root, "--memory", "12Q"]);
    out.assert_usage_error(
        "berth: error: invalid value '12Q' for '--memory <SIZE>': unknown size suffix 'Q' \
         (use K, M, G, KiB, MiB, GiB or plain bytes)",
    );
    env.assert_nothing_created(&[&env.vendor("a")]);
}

#[test]
fn zero_cpus_is_refused() {
    let env = TestEnv::new();
    let root = env.dir.path().to_str().unwrap().to_string();
    let out = run_opts(&env, &["--rootfs", &root, "--cpus", "0"]);
    out.assert_usage_error(
        "berth: error: invalid value '0' for '--cpus <CPUS>': must be greater than 0",
    );
    env.assert_nothing_created(&[&env.vendor("a")]);
}

#[test]
fn zero_pids_is_refused() {
    let env = TestEnv::new();
    let root = env.dir.path().to_str().unwrap().to_string();
    let out = run_opts(&env, &["--rootfs", &root, "--pids", "0"]);
    out.assert_usage_error("berth: error: invalid value '0' for '--pids <N>': must be at least 1");
    env.assert_nothing_created(&[&env.vendor("a")]);
}

#[test]
fn bad_name_is_refused() {
    let env = TestEnv::new();
    let root = env.dir.path().to_str().unwrap().to_string();
    let out = run_opts(&env, &["--rootfs", &root, "--name", "Bad/Name"]);
    out.assert_usage_error(
        "berth: error: invalid value 'Bad/Name' for '--name <N>': character 'B' not allowed (use a-z, 0-9 and '-')",
    );
    env.assert_nothing_created(&[&env.vendor("a")]);
}

#[test]
fn missing_command_is_refused() {
    let env = TestEnv::new();
    let root = env.dir.path().to_str().unwrap().to_string();
    let out = env.run(["jail", "run", "--rootfs", &root]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("berth: error: the following required arguments were not provided"),
        "{}",
        out.stderr
    );
    env.assert_nothing_created(&[]);
}

#[test]
fn bad_signal_is_refused() {
    let env = TestEnv::new();
    let out = env.run(["jail", "kill", "x", "--signal", "FOO"]);
    out.assert_usage_error(
        "berth: error: invalid value 'FOO' for '--signal <SIG>': unknown signal 'FOO'",
    );
    env.assert_nothing_created(&[]);
}

#[test]
#[ignore = "privileged: needs root"]
fn not_root_is_refused() {
    require_root();
    let env = TestEnv::new();
    // The temp dir must be reachable by nobody for the rootfs check to pass.
    std::fs::set_permissions(
        env.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut cmd = env.berth();
    cmd.args(["jail", "run", "--rootfs"])
        .arg(env.dir.path())
        .args(["--", "/bin/true"])
        .uid(65534)
        .gid(65534);
    let out = run_with_timeout(cmd, None, DEFAULT_TIMEOUT);
    if out.stderr.contains("Permission denied") {
        panic!(
            "precondition missing: the berth binary is not executable by uid 65534: {}",
            out.stderr
        );
    }
    out.assert_usage_error("berth: error: jail commands need root (running as uid 65534)");
    env.assert_nothing_created(&[]);
}

#[test]
#[ignore = "privileged: needs root"]
fn unknown_jail_is_refused() {
    require_root();
    let env = TestEnv::new();
    for cmd in [
        vec!["jail", "start", "nosuch"],
        vec!["jail", "exec", "nosuch", "--", "/bin/true"],
        vec!["jail", "stop", "nosuch"],
        vec!["jail", "kill", "nosuch"],
        vec!["jail", "rm", "nosuch"],
        vec!["jail", "stats", "nosuch"],
    ] {
        let out = env.run(&cmd);
        out.assert_usage_error(&format!(
            "berth: error: no jail named 'nosuch' in {}",
            env.state_dir.display()
        ));
    }
    env.assert_nothing_created(&[]);
}

#[test]
#[ignore = "privileged: needs root"]
fn memory_limit_too_small_to_start_is_refused() {
    require_root();
    let env = TestEnv::new();
    let root = env.dir.path().to_str().unwrap().to_string();
    let out = run_opts(&env, &["--rootfs", &root, "--memory", "1M"]);
    assert_eq!(out.code(), 2, "stderr: {}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("berth: error: invalid jail options: linux.resources.memory.limit: "),
        "{}",
        out.stderr
    );
    env.assert_nothing_created(&[&env.vendor("a")]);
}

//! Named jails: create, start, exec, ls, stats, stop, kill, rm; name
//! clashes; an init killed from outside; berth killed mid-create.

// Test code: a failed step must fail the test, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use berth_tests::{host, wait_until, TestEnv};
use serde_json::Value;

fn ls(env: &TestEnv) -> Vec<Value> {
    let out = env.run(["jail", "ls", "--json"]);
    match serde_json::from_str::<Value>(out.ok()) {
        Ok(Value::Array(v)) => v,
        other => panic!("ls --json is not an array: {other:?}: {}", out.stdout),
    }
}

fn entry(env: &TestEnv, name: &str) -> Option<Value> {
    ls(env).into_iter().find(|j| j["name"] == name)
}

fn state_of(env: &TestEnv, name: &str) -> String {
    entry(env, name)
        .map(|j| j["state"].as_str().unwrap_or("?").to_string())
        .unwrap_or_else(|| "absent".into())
}

#[test]
#[ignore = "privileged: needs root"]
fn named_lifecycle() {
    let env = TestEnv::new_with_rootfs();
    let name = format!("life-{}", env.tag);
    let vendor = env.vendor("l");
    let root = env.rootfs.display().to_string();
    let create = [
        "jail",
        "create",
        &name,
        "--rootfs",
        &root,
        "--vendor",
        &vendor,
        "--memory",
        "32M",
        "--pids",
        "50",
        "--overlay",
        "--",
        "/bin/sleep",
        "1000",
    ];
    env.run(create).ok();
    assert_eq!(state_of(&env, &name), "created");

    // A second create of the same name is refused and changes nothing.
    let cgroups_before = host::cgroups_below(&env.cgroup_parent);
    let out = env.run(create);
    out.assert_usage_error(&format!(
        "berth: error: jail '{name}' already exists in {}",
        env.state_dir.display()
    ));
    assert_eq!(host::cgroups_below(&env.cgroup_parent), cgroups_before);

    env.run(["jail", "start", &name]).ok();
    let j = entry(&env, &name).expect("listed");
    assert_eq!(j["state"], "running", "{j}");
    assert_eq!(j["vendor"], vendor.as_str(), "{j}");
    let pid = j["pid"].as_i64().expect("pid");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    // exec runs inside: same hostname, sees the payload, exit code passes.
    let out = env.run([
        "jail",
        "exec",
        &name,
        "--",
        "/bin/sh",
        "-c",
        "hostname; for p in /proc/[0-9]*; do cat $p/comm; done | grep -c '^sleep$'; exit 4",
    ]);
    assert_eq!(out.code(), 4, "stderr: {}", out.stderr);
    assert_eq!(out.stdout, format!("{name}\n1\n"));

    let out = env.run(["jail", "stats", &name, "--json"]);
    let s: Value = serde_json::from_str(out.ok()).expect("stats json");
    assert_eq!(s["name"], name.as_str(), "{s}");
    assert!(s["memory_bytes"].as_u64().expect("memory_bytes") > 0, "{s}");
    assert_eq!(s["memory_max"].as_u64(), Some(32 << 20), "{s}");
    assert!(s["pids"].as_u64().expect("pids") >= 1, "{s}");
    assert_eq!(s["pids_max"].as_u64(), Some(50), "{s}");
    assert!(s["cpu_ns"].as_u64().is_some(), "{s}");
    let text = env.run(["jail", "stats", &name]);
    assert!(text.ok().contains("memory"), "{}", text.stdout);

    // rm of a running jail without --force is refused.
    let out = env.run(["jail", "rm", &name]);
    out.assert_usage_error(&format!(
        "berth: error: jail '{name}' is running: stop it first or use --force"
    ));

    env.run(["jail", "stop", &name, "--time", "2"]).ok();
    assert_eq!(state_of(&env, &name), "stopped");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists() || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.contains(") Z")
        }
    );
    env.run(["jail", "rm", &name]).ok();
    assert!(ls(&env).is_empty());
    env.assert_no_leftovers(&[&vendor]);
}

#[test]
#[ignore = "privileged: needs root"]
fn kill_sends_the_signal() {
    let env = TestEnv::new_with_rootfs();
    let name = format!("kill-{}", env.tag);
    let root = env.rootfs.display().to_string();
    env.run([
        "jail",
        "create",
        &name,
        "--rootfs",
        &root,
        "--",
        "/bin/sleep",
        "1000",
    ])
    .ok();
    env.run(["jail", "start", &name]).ok();
    // init forwards TERM to the payload, which dies of it: 128 + 15.
    env.run(["jail", "kill", &name, "--signal", "TERM"]).ok();
    assert!(
        wait_until(Duration::from_secs(5), || state_of(&env, &name)
            == "stopped"),
        "jail still {}",
        state_of(&env, &name)
    );
    let j = entry(&env, &name).expect("listed");
    assert_eq!(j["exit_code"].as_i64(), Some(143), "{j}");
    env.run(["jail", "rm", &name]).ok();
    env.assert_no_leftovers(&[]);
}

#[test]
#[ignore = "privileged: needs root"]
fn init_killed_from_outside_then_rm_cleans_all() {
    let env = TestEnv::new_with_rootfs();
    let name = format!("k9-{}", env.tag);
    let vendor = env.vendor("k");
    let root = env.rootfs.display().to_string();
    env.run([
        "jail",
        "create",
        &name,
        "--rootfs",
        &root,
        "--vendor",
        &vendor,
        "--net",
        "--overlay",
        "--memory",
        "32M",
        "--",
        "/bin/sleep",
        "1000",
    ])
    .ok();
    env.run(["jail", "start", &name]).ok();
    let pid = entry(&env, &name).expect("listed")["pid"]
        .as_i64()
        .expect("pid") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || state_of(&env, &name)
            == "stopped"),
        "jail still {}",
        state_of(&env, &name)
    );
    env.run(["jail", "rm", &name]).ok();
    assert!(ls(&env).is_empty());
    env.assert_no_leftovers(&[&vendor]);
}

#[test]
#[ignore = "privileged: needs root"]
fn berth_killed_mid_create_is_recovered() {
    let env = TestEnv::new_with_rootfs();
    let vendor = env.vendor("c");
    let root = env.rootfs.display().to_string();
    for (i, delay_ms) in [0u64, 1, 3, 6, 10, 20, 40, 80].into_iter().enumerate() {
        let name = format!("mid{i}-{}", env.tag);
        let mut cmd = env.berth();
        cmd.args([
            "jail",
            "create",
            &name,
            "--rootfs",
            &root,
            "--vendor",
            &vendor,
            "--net",
            "--overlay",
            "--memory",
            "32M",
            "--pids",
            "20",
            "--",
            "/bin/sleep",
            "1000",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        // The next command recovers; a jail whose create completed is kept.
        let listed = ls(&env);
        if listed.iter().any(|j| j["name"] == name.as_str()) {
            env.run(["jail", "rm", "--force", &name]).ok();
        }
        assert!(ls(&env).is_empty(), "after delay {delay_ms} ms: {listed:?}");
        env.assert_no_leftovers(&[&vendor]);
        assert!(
            host::pids_with_cmdline(&name).is_empty(),
            "after delay {delay_ms} ms a process of {name} is left"
        );
    }
}

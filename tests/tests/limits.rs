//! Resource limits hold: pids, memory, CPU; the host survives.

// Test code: a failed step must fail the test, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_tests::{host, TestEnv};

/// Highest value of `<file>` in any cgroup below the test's parent in the
/// hierarchy mounted at `hierarchy`, sampled every 5 ms until stopped.
fn sample_max(
    env: &TestEnv,
    hierarchy: &'static str,
    file: &'static str,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let max = Arc::new(AtomicU64::new(0));
    let parent = std::path::Path::new("/sys/fs/cgroup")
        .join(hierarchy)
        .join(&env.cgroup_parent);
    let (s, m) = (stop.clone(), max.clone());
    let h = std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            let mut dirs = Vec::new();
            if let Ok(rd) = std::fs::read_dir(&parent) {
                for e in rd.flatten() {
                    dirs.push(e.path());
                }
            }
            for d in dirs {
                if let Ok(t) = std::fs::read_to_string(d.join(file)) {
                    if let Ok(v) = t.trim().parse::<u64>() {
                        m.fetch_max(v, Ordering::SeqCst);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        m.load(Ordering::SeqCst)
    });
    (stop, h)
}

#[test]
#[ignore = "privileged: needs root"]
fn fork_bomb_is_held_by_pids() {
    let env = TestEnv::new_with_rootfs();
    berth_tests::require_path("/sys/fs/cgroup/pids", "the v1 pids hierarchy");
    let (stop, sampler) = sample_max(&env, "pids", "pids.current");
    // The sleep is forked before the bomb so the shell can wait on it. Every
    // bomb process keeps forking copies of itself, so the jail stays pressed
    // against the limit for seconds whatever the machine's load (a bomb whose
    // processes give up on the first failed fork can die out between two
    // samples); it is killed with the jail.
    let out = env.jail_run(
        &["--pids", "24", "--cpus", "1"],
        &[
            "/bin/sh",
            "-c",
            "sleep 3 & s=$!; (b() { while :; do b & sleep 0.1; done; }; b) 2>/dev/null & wait $s; echo held",
        ],
    );
    stop.store(true, Ordering::SeqCst);
    let max = sampler.join().unwrap();
    assert_eq!(out.ok(), "held\n", "stderr: {}", out.stderr);
    assert!(max <= 24, "jail reached {max} tasks past --pids 24");
    assert!(
        max >= 20,
        "the bomb never came near the limit (max {max} tasks)"
    );
    env.assert_no_leftovers(&[]);
}

#[test]
#[ignore = "privileged: needs root"]
fn memory_hog_is_oom_killed_and_reported() {
    let env = TestEnv::new_with_rootfs();
    // Doubling a shell string reaches 64 MiB in about 26 steps.
    let out = env.jail_run(
        &["--memory", "32M"],
        &["/bin/sh", "-c", "a=x; while :; do a=$a$a; done"],
    );
    assert_eq!(out.code(), 137, "stderr: {}", out.stderr);
    assert!(
        out.stderr.contains("out of memory"),
        "berth did not report the OOM kill: {:?}",
        out.stderr
    );
    // The host survives: a jail without a limit still runs.
    let out = env.jail_run(&[], &["/bin/echo", "alive"]);
    assert_eq!(out.ok(), "alive\n");
    env.assert_no_leftovers(&[]);
}

#[test]
#[ignore = "privileged: needs root"]
fn cpu_hog_is_held_to_cpus() {
    let env = TestEnv::new_with_rootfs();
    // Two busy loops for 2 s; print the CPU ticks (1/100 s) they used.
    let script = "(while :; do :; done) & a=$!; (while :; do :; done) & b=$!; sleep 2; \
                  set -- $(cat /proc/$a/stat); ta=$(( ${14} + ${15} )); \
                  set -- $(cat /proc/$b/stat); tb=$(( ${14} + ${15} )); \
                  kill $a $b; echo $(( ta + tb ))";
    let out = env.jail_run(&["--cpus", "0.5"], &["/bin/sh", "-c", script]);
    let ticks: u64 = out.ok().trim().parse().expect("ticks");
    // 0.5 CPU for 2 s is 100 ticks; allow scheduling slack.
    assert!(
        ticks <= 130,
        "loops used {ticks} ticks in 2 s under --cpus 0.5"
    );
    // The floor only shows the loops ran at all (the machine may be busy).
    assert!(ticks >= 10, "loops barely ran: {ticks} ticks");
    env.assert_no_leftovers(&[]);
}

#[test]
#[ignore = "privileged: needs root"]
fn limits_are_written_to_the_cgroups() {
    let env = TestEnv::new_with_rootfs();
    // A named jail, so the limits can be read while it runs.
    let name = format!("lim{}", env.tag);
    let root = env.rootfs.display().to_string();
    env.run([
        "jail",
        "create",
        &name,
        "--rootfs",
        &root,
        "--memory",
        "48M",
        "--pids",
        "33",
        "--cpus",
        "0.25",
        "--",
        "/bin/sleep",
        "30",
    ])
    .ok();
    env.run(["jail", "start", &name]).ok();
    let find = |hier: &str, file: &str| -> String {
        let mut found = Vec::new();
        for cg in host::cgroups_below(&env.cgroup_parent) {
            if cg.starts_with(format!("/sys/fs/cgroup/{hier}")) && cg.ends_with(&name) {
                if let Ok(v) = std::fs::read_to_string(cg.join(file)) {
                    found.push(v.trim().to_string());
                }
            }
        }
        assert_eq!(found.len(), 1, "{hier}/{file}: {found:?}");
        found.remove(0)
    };
    assert_eq!(
        find("memory", "memory.limit_in_bytes"),
        (48u64 << 20).to_string()
    );
    assert_eq!(find("pids", "pids.max"), "33");
    assert_eq!(find("cpu", "cpu.cfs_quota_us"), "25000");
    assert_eq!(find("cpu", "cpu.cfs_period_us"), "100000");
    env.run(["jail", "rm", "--force", &name]).ok();
    env.assert_no_leftovers(&[]);
}

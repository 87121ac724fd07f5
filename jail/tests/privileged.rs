//! Privileged tests: real jails from namespaces, cgroups, overlayfs and
//! veth bridges. Run as root with `-- --include-ignored`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// Included by path so these tests build without the `testing` feature.
#[allow(dead_code)]
#[path = "../src/testing.rs"]
mod testing;

use jail::{ExecOptions, Jail, JailOptions, JailSpec};
use testing::{assert_no_leaks, busybox_rootfs, oci_spec, unique};

/// Per-test environment: temp dir with a busybox rootfs, a state root and
/// a cgroup parent of its own; removed on drop, also when the test fails.
struct Env {
    tmp: tempfile::TempDir,
    cgroup_parent: String,
    bridges: Vec<String>,
}

impl Env {
    fn new() -> Env {
        testing::require_root();
        let tmp = tempfile::Builder::new()
            .prefix("berth-jail-")
            .tempdir()
            .unwrap();
        busybox_rootfs(&tmp.path().join("rootfs"), "jail-marker");
        Env {
            tmp,
            cgroup_parent: unique("berth-t"),
            bridges: Vec::new(),
        }
    }
    fn rootfs(&self) -> PathBuf {
        self.tmp.path().join("rootfs")
    }
    fn state_root(&self) -> PathBuf {
        self.tmp.path().join("state")
    }
    fn opts(&self, name: &str) -> JailOptions {
        testing::options(name, "acme", &self.state_root(), &self.cgroup_parent)
    }
    fn spec(&self, name: &str, script: &str) -> JailSpec {
        JailSpec::from_oci(&oci_spec(&self.rootfs(), script), &self.opts(name)).unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Best effort: kill whatever a failed test left in its cgroups.
        for d in testing::cgroup_dirs(Path::new(&self.cgroup_parent)) {
            kill_tree(&d);
        }
        std::thread::sleep(Duration::from_millis(100));
        testing::remove_cgroup_parent(&self.cgroup_parent);
        for b in &self.bridges {
            testing::delete_link(b);
        }
    }
}

fn kill_tree(d: &Path) {
    if let Ok(s) = std::fs::read_to_string(d.join("cgroup.procs")) {
        for pid in s.lines().filter_map(|l| l.parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                kill_tree(&e.path());
            }
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn exec(j: &Jail, script: &str) -> jail::ExecOutput {
    j.exec(ExecOptions::new(["/bin/sh", "-c", script]))
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
#[ignore = "privileged: needs root"]
fn runs_payload_in_own_root_and_pid_namespace() {
    let env = Env::new();
    let spec = env.spec(
        &unique("basic"),
        "cat /marker; echo; echo pid=$$; ls /proc | grep -c '^[0-9]'; \
         ping -c1 -W2 127.0.0.1 >/dev/null && echo lo-up; ls /sys/class/net; ls /proc/self/fd | tr '\\n' ' '",
    );
    let log = env
        .state_root()
        .join(spec.name.as_str())
        .join("console.log");
    let spec2 = spec.clone();
    rt().block_on(async move {
        let mut j = Jail::create(spec2).await.unwrap();
        j.start().await.unwrap();
        let r = j.wait().await.unwrap();
        let out = std::fs::read_to_string(&log).unwrap();
        assert_eq!(r.code, 0, "{out}");
        // Own rootfs, PID 2 (init is 1), and only init + sh (+ ls, grep) in /proc.
        assert!(out.starts_with("jail-marker\npid=2\n"), "{out}");
        let n: u32 = out.lines().nth(2).unwrap().trim().parse().unwrap();
        assert!(n <= 4, "too many processes visible: {out}");
        // Own network namespace: loopback only, and up; and the payload
        // inherited stdio only (ls itself holds fd 3).
        assert!(out.ends_with("lo-up\nlo\n0 1 2 3 "), "{out}");
        j.delete().await.unwrap();
    });
    assert_no_leaks(&spec);
}

#[test]
#[ignore = "privileged: needs root"]
fn exec_sees_same_pid_namespace_and_hostname_stays_inside() {
    let env = Env::new();
    let mut opts = env.opts(&unique("exec"));
    opts.hostname = Some("meter-1".into());
    let spec = JailSpec::from_oci(
        &oci_spec(
            &env.rootfs(),
            "sh -c 'hostname inner'; echo rc=$? > /tmp/rc; sleep 1000",
        ),
        &opts,
    )
    .unwrap();
    let host_before = nix::unistd::gethostname().unwrap();
    let spec2 = spec.clone();
    rt().block_on(async move {
        let mut j = Jail::create(spec2).await.unwrap();
        j.start().await.unwrap();
        // Wait for the payload's rename attempt.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = exec(&j, "cat /tmp/rc").await;
        while text(&out.stdout).trim().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            out = exec(&j, "cat /tmp/rc").await;
        }
        assert_eq!(text(&out.stdout).trim(), "rc=1");
        let out = exec(&j, "hostname").await;
        assert_eq!(text(&out.stdout).trim(), "meter-1");
        assert_eq!(out.code, 0);
        // Same pid namespace: init is 1, the payload's sleep is visible.
        let ps = exec(&j, "cat /proc/1/cmdline; echo; ps -o pid,args").await;
        let s = text(&ps.stdout);
        assert!(s.starts_with("berth-init"), "{s}");
        assert!(s.contains("sleep 1000"), "{s}");
        // Exit status is relayed.
        let r = exec(&j, "echo err >&2; exit 7").await;
        assert_eq!(r.code, 7);
        assert_eq!(text(&r.stderr), "err\n");
        j.delete().await.unwrap();
    });
    assert_eq!(
        nix::unistd::gethostname().unwrap(),
        host_before,
        "hostname leaked to the host"
    );
    assert_no_leaks(&spec);
}

#[test]
#[ignore = "privileged: needs root"]
fn mount_module_reboot_and_keyctl_are_refused() {
    let env = Env::new();
    let script = "mount -t tmpfs none /tmp 2>&1; echo mount=$?; \
                  insmod /marker 2>&1; echo insmod=$?; \
                  reboot -f 2>&1; echo reboot=$?; \
                  echo alive";
    let spec = env.spec(&unique("deny"), script);
    let log = env
        .state_root()
        .join(spec.name.as_str())
        .join("console.log");
    let spec2 = spec.clone();
    rt().block_on(async move {
        let mut j = Jail::create(spec2).await.unwrap();
        j.start().await.unwrap();
        let r = j.wait().await.unwrap();
        let out = std::fs::read_to_string(&log).unwrap();
        assert_eq!(r.code, 0, "{out}");
        assert!(
            out.contains("mount=1") || out.contains("mount=255"),
            "{out}"
        );
        assert!(out.contains("Operation not permitted"), "{out}");
        assert!(!out.contains("insmod=0"), "{out}");
        assert!(!out.contains("reboot=0"), "{out}");
        assert!(out.contains("alive"), "{out}");
        j.delete().await.unwrap();
    });
    assert_no_leaks(&spec);
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
#[ignore = "privileged: needs root"]
fn fork_bomb_stops_at_pids_limit() {
    let env = Env::new();
    let mut opts = env.opts(&unique("pids"));
    opts.pids_max = Some(16);
    // The bomb runs in its own shell, which dies at its first failed fork;
    // the payload survives it to report and keep the jail up.
    let script = "sh -c 'i=0; while [ $i -lt 64 ]; do sleep 1000 & i=$((i+1)); done'; \
                  echo spawned; exec sleep 1000";
    let spec = JailSpec::from_oci(&oci_spec(&env.rootfs(), script), &opts).unwrap();
    let log = env
        .state_root()
        .join(spec.name.as_str())
        .join("console.log");
    let spec2 = spec.clone();
    rt().block_on(async move {
        let mut j = Jail::create(spec2).await.unwrap();
        j.start().await.unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("spawned")),
            "{:?}",
            std::fs::read_to_string(&log)
        );
        // The bomb's survivors fill the jail up to, never past, the limit.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut st = j.stats().await.unwrap();
        while st.cgroup.pids_current < 10 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            st = j.stats().await.unwrap();
            assert!(st.cgroup.pids_current <= 16, "{st:?}");
        }
        assert!(st.cgroup.pids_current <= 16, "{st:?}");
        assert!(
            st.cgroup.pids_current >= 10,
            "{st:?} {:?}",
            std::fs::read_to_string(&log)
        );
        let out = std::fs::read_to_string(&log).unwrap();
        assert!(out.contains("fork"), "no fork failure reported: {out}");
        // The host still forks.
        assert!(std::process::Command::new("true")
            .status()
            .unwrap()
            .success());
        j.delete().await.unwrap();
    });
    assert_no_leaks(&spec);
}

#[test]
#[ignore = "privileged: needs root"]
fn memory_hog_is_oom_killed_inside() {
    let env = Env::new();
    let mut opts = env.opts(&unique("oom"));
    opts.memory_max = Some(16 << 20);
    let script = "sh -c 'x=$(head -c 134217728 /dev/zero | tr \"\\0\" a); echo ${#x}'; echo rc=$?; sleep 1000";
    let spec = JailSpec::from_oci(&oci_spec(&env.rootfs(), script), &opts).unwrap();
    let log = env
        .state_root()
        .join(spec.name.as_str())
        .join("console.log");
    let spec2 = spec.clone();
    rt().block_on(async move {
        let mut j = Jail::create(spec2).await.unwrap();
        j.start().await.unwrap();
        assert!(
            wait_until(Duration::from_secs(30), || std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("rc=")),
            "{:?}",
            std::fs::read_to_string(&log)
        );
        let out = std::fs::read_to_string(&log).unwrap();
        assert!(out.contains("rc=137"), "hog was not killed: {out}");
        let st = j.stats().await.unwrap();
        assert!(st.cgroup.oom_kills >= 1, "{st:?}");
        // Init survived the OOM kill of the hog.
        assert!(j.is_alive());
        j.delete().await.unwrap();
    });
    assert_no_leaks(&spec);
}

#[test]
#[ignore = "privileged: needs root"]
fn cpu_hog_is_held_to_quota() {
    let env = Env::new();
    let mut opts = env.opts(&unique("cpu"));
    opts.cpus = Some(0.2);
    let spec = JailSpec::from_oci(&oci_spec(&env.rootfs(), "while :; do :; done"), &opts).unwrap();
    let spec2 = spec.clone();
    rt().block_on(async move {
        let mut j = Jail::create(spec2).await.unwrap();
        j.start().await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let a = j.stats().await.unwrap().cgroup.cpu_usage_us;
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let b = j.stats().await.unwrap().cgroup.cpu_usage_us;
        let wall = t.elapsed().as_micros() as u64;
        let used = b - a;
        // 20% of one CPU, with slack for period boundaries.
        assert!(used <= wall * 30 / 100, "used {used} us of {wall} us");
        assert!(
            used >= wall * 10 / 100,
            "hog did not run: {used} us of {wall} us"
        );
        j.delete().await.unwrap();
    });
    assert_no_leaks(&spec);
}

#[test]
#[ignore = "privileged: needs root"]
fn overlay_writes_land_in_upper() {
    let env = Env::new();
    let upper = env.tmp.path().join("upper");
    let work = env.tmp.path().join("work");
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let mut opts = env.opts(&unique("ovl"));
    opts.rootfs = Some(jail::RootfsOptions::Overlay {
        lowers: vec![env.rootfs()],
        upper: upper.clone(),
        work: work.clone(),
    });
    let script = "echo new > /newfile && echo changed > /marker && rm /etc/group && cat /marker";
    let spec = JailSpec::from_oci(&oci_spec(Path::new("/unused"), script), &opts).unwrap();
    let log = env
        .state_root()
        .join(spec.name.as_str())
        .join("console.log");
    let spec2 = spec.clone();
    rt().block_on(async move {
        let mut j = Jail::create(spec2).await.unwrap();
        j.start().await.unwrap();
        let r = j.wait().await.unwrap();
        let out = std::fs::read_to_string(&log).unwrap();
        assert_eq!((r.code, out.as_str()), (0, "changed\n"));
        j.delete().await.unwrap();
    });
    assert_eq!(
        std::fs::read_to_string(upper.join("newfile")).unwrap(),
        "new\n"
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("marker")).unwrap(),
        "changed\n"
    );
    // Lower untouched; the deletion is a whiteout (char 0:0) in upper.
    assert_eq!(
        std::fs::read_to_string(env.rootfs().join("marker")).unwrap(),
        "jail-marker"
    );
    assert!(env.rootfs().join("etc/group").exists());
    assert!(!env.rootfs().join("newfile").exists());
    use std::os::unix::fs::FileTypeExt;
    let wo = std::fs::symlink_metadata(upper.join("etc/group")).unwrap();
    assert!(wo.file_type().is_char_device());
    // Work dir emptied by delete.
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
    assert_no_leaks(&spec);
}

#[test]
#[ignore = "privileged: needs root"]
fn stop_kills_after_grace_when_term_is_ignored() {
    let env = Env::new();
    let spec = env.spec(&unique("stop"), "trap '' TERM; echo ready; sleep 1000");
    let log = env
        .state_root()
        .join(spec.name.as_str())
        .join("console.log");
    let spec2 = spec.clone();
    rt().block_on(async move {
        let mut j = Jail::create(spec2).await.unwrap();
        j.start().await.unwrap();
        assert!(wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("ready")
        }));
        let t = Instant::now();
        let r = j.stop(Duration::from_millis(1500)).await.unwrap();
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(1500), "{took:?}");
        assert!(took < Duration::from_secs(6), "{took:?}");
        assert_eq!(r.code, 137, "{r:?}");
        assert!(!j.is_alive());
        j.delete().await.unwrap();
    });
    assert_no_leaks(&spec);
}

#[test]
#[ignore = "privileged: needs root"]
fn stop_is_quick_when_payload_honours_term() {
    let env = Env::new();
    let spec = env.spec(&unique("term"), "sleep 1000");
    let spec2 = spec.clone();
    rt().block_on(async move {
        let mut j = Jail::create(spec2).await.unwrap();
        j.start().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = Instant::now();
        let r = j.stop(Duration::from_secs(10)).await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(3));
        // TERM forwarded to the payload: init records 128 + 15.
        assert_eq!(
            r,
            jail::ExitRecord {
                code: 143,
                signal: Some(15)
            }
        );
        j.delete().await.unwrap();
    });
    assert_no_leaks(&spec);
}

/// PID 1 of a running jail is the reaper init execs (`src/reaper.c`):
/// it reaps an orphan reparented to it, forwards SIGTERM to the payload,
/// and writes the exit record, for an exit code and for a signal, as the
/// same bytes as serde_json of `ExitRecord`.
#[test]
#[ignore = "privileged: needs root"]
fn reaper_reaps_orphans_forwards_term_and_records_the_exit() {
    let env = Env::new();
    // The subshell starts a sleep in the background and ends at once, so
    // the sleep is reparented to PID 1; the payload ends with 7 on TERM.
    let coded = env.spec(
        &unique("reap"),
        "(sleep 2 & echo $! > /tmp/orphan); trap 'exit 7' TERM; echo ready; \
         while :; do sleep 0.1; done",
    );
    let signalled = env.spec(&unique("reap"), "echo ready; exec sleep 1000");
    let (c2, s2) = (coded.clone(), signalled.clone());
    let dir = |s: &JailSpec| env.state_root().join(s.name.as_str());
    let (cdir, sdir) = (dir(&coded), dir(&signalled));
    rt().block_on(async move {
        let mut j = Jail::create(c2).await.unwrap();
        j.start().await.unwrap();
        let pid = j.pid().unwrap();
        assert!(wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(cdir.join("console.log"))
                .unwrap_or_default()
                .contains("ready")
        }));
        // PID 1 is the reaper: the memfd image, named as init, and a few
        // pages instead of init's libc and heap (about 2 MiB of RSS). With
        // vm.memfd_noexec = 2 no memfd may be executed: init then stays
        // PID 1 itself, and only the behaviour below is checked.
        let noexec =
            std::fs::read_to_string("/proc/sys/vm/memfd_noexec").is_ok_and(|v| v.trim() == "2");
        if noexec {
            eprintln!("SKIPPED (part): vm.memfd_noexec = 2 forbids the reaper's memfd exec");
        } else {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
            assert!(
                exe.to_string_lossy().starts_with("/memfd:berth-init"),
                "{exe:?}"
            );
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
            assert_eq!(comm, "berth-init\n");
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let rss: u64 = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
                .unwrap();
            assert!(rss <= 64, "reaper RSS {rss} kB: {status}");
        }

        // The orphan is a child of PID 1 while it sleeps ...
        let o = exec(&j, "o=$(cat /tmp/orphan); cut -d' ' -f3,4 /proc/$o/stat").await;
        assert_eq!(text(&o.stdout), "S 1\n", "{}", text(&o.stderr));
        // ... and once it has ended it is reaped: a zombie nobody waits
        // for would stay in /proc with state Z.
        let mut gone = String::new();
        for _ in 0..50 {
            let o = exec(
                &j,
                "o=$(cat /tmp/orphan); if [ -e /proc/$o ]; then cut -d' ' -f3 /proc/$o/stat; \
                 else echo gone; fi",
            )
            .await;
            gone = text(&o.stdout);
            if gone == "gone\n" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(gone, "gone\n", "the orphan was not reaped");

        // TERM to PID 1 reaches the payload, which exits with 7.
        j.kill(libc::SIGTERM).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), j.wait())
            .await
            .expect("the payload ends on TERM")
            .unwrap();
        assert_eq!(
            r,
            jail::ExitRecord {
                code: 7,
                signal: None
            }
        );
        let bytes = std::fs::read(cdir.join("status")).unwrap();
        assert_eq!(text(&bytes), r#"{"code":7,"signal":null}"#);
        assert_eq!(bytes, serde_json::to_vec(&r).unwrap());
        j.delete().await.unwrap();

        // Killed by the forwarded TERM: 128 + 15 and the signal.
        let mut j = Jail::create(s2).await.unwrap();
        j.start().await.unwrap();
        assert!(wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(sdir.join("console.log"))
                .unwrap_or_default()
                .contains("ready")
        }));
        j.kill(libc::SIGTERM).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(5), j.wait())
            .await
            .expect("the payload ends on TERM")
            .unwrap();
        assert_eq!(
            r,
            jail::ExitRecord {
                code: 143,
                signal: Some(15)
            }
        );
        let bytes = std::fs::read(sdir.join("status")).unwrap();
        assert_eq!(text(&bytes), r#"{"code":143,"signal":15}"#);
        assert_eq!(bytes, serde_json::to_vec(&r).unwrap());
        j.delete().await.unwrap();
    });
    assert_no_leaks(&coded);
    assert_no_leaks(&signalled);
}

#[test]
#[ignore = "privileged: needs root"]
fn init_leads_a_session_of_its_own() {
    let env = Env::new();
    let spec = env.spec(&unique("sess"), "sleep 1000");
    let spec2 = spec.clone();
    rt().block_on(async move {
        let mut j = Jail::create(spec2).await.unwrap();
        j.start().await.unwrap();
        let pid = j.pid().unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the parenthesised comm: state ppid pgrp session ...
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<i32> = rest
            .split(' ')
            .skip(2)
            .take(2)
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(
            f,
            vec![pid, pid],
            "init's process group and session: {stat}"
        );
        assert_ne!(nix::unistd::getpgrp().as_raw(), pid);
        j.stop(Duration::from_secs(2)).await.unwrap();
        j.delete().await.unwrap();
    });
    assert_no_leaks(&spec);
}

#[test]
#[ignore = "privileged: needs root"]
fn init_killed_from_outside_then_adopt_and_delete_cleans() {
    let env = Env::new();
    let spec = env.spec(&unique("kill"), "sleep 1000 & sleep 1000");
    let state_root = env.state_root();
    let name = spec.name.to_string();
    let spec2 = spec.clone();
    rt().block_on(async move {
        let mut j = Jail::create(spec2).await.unwrap();
        j.start().await.unwrap();
        let pid = j.pid().unwrap();
        // Another process (a restarted agent) adopts the running jail.
        let a = Jail::adopt(&state_root, &name).await.unwrap();
        assert!(a.is_alive());
        assert_eq!(a.pid(), Some(pid));
        let list = jail::list(&state_root).await.unwrap();
        assert_eq!(list.len(), 1);
        assert!(list[0].alive);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let r = j.wait().await.unwrap();
        assert_eq!(r.code, 137);
        drop(j);
        let a = Jail::adopt(&state_root, &name).await.unwrap();
        assert!(!a.is_alive());
        assert_eq!(a.state().phase, jail::Phase::Stopped);
        a.delete().await.unwrap();
        // Idempotent: a second delete of a fresh handle finds nothing.
        assert!(matches!(
            Jail::adopt(&state_root, &name).await,
            Err(jail::Error::NotFound(_))
        ));
    });
    assert_no_leaks(&spec);
}

/// What a recovery of berth's CLI removes after a creator was killed:
/// jail `name` exactly when its record (read as `phase`) says `creating`.
fn assert_list_creating(
    state_root: &Path,
    name: &str,
    phase: &Result<jail::Phase, jail::state::StateError>,
    attempt: impl std::fmt::Display,
) {
    let creating = rt().block_on(jail::list_creating(state_root)).unwrap();
    let creating: Vec<_> = creating.into_iter().map(|i| i.name).collect();
    if matches!(phase, Ok(jail::Phase::Creating)) {
        assert_eq!(creating, vec![name.to_string()], "attempt {attempt}");
    } else {
        assert!(creating.is_empty(), "{creating:?}");
    }
}

#[test]
#[ignore = "privileged: needs root"]
fn creator_killed_mid_create_is_recovered() {
    let env = Env::new();
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/create-jail");
    if !example.is_file() {
        panic!(
            "precondition missing: {} (built by cargo test --features testing)",
            example.display()
        );
    }
    // Stop the creator as soon as it made the cgroup; if create already
    // finished by then (a fast machine), try again with a new jail.
    for attempt in 0..10 {
        let name = unique("rec");
        let spec = env.spec(&name, "sleep 1000");
        let mut child = std::process::Command::new(&example)
            .args([
                name.as_str(),
                "acme",
                env.state_root().to_str().unwrap(),
                env.cgroup_parent.as_str(),
                env.rootfs().to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let cg = testing::cgroup_dirs(&spec.cgroup_path);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cg.iter().any(|d| d.exists()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        assert!(
            cg.iter().any(|d| d.exists()),
            "creator never reached the cgroup step"
        );
        let dir = env.state_root().join(&name);
        let phase = jail::JailState::load(&dir).map(|s| s.phase);
        child.kill().unwrap();
        child.wait().unwrap();
        let state_root = env.state_root();
        assert_list_creating(&state_root, &name, &phase, attempt);
        let removed = rt().block_on(async move { jail::recover(&state_root).await.unwrap() });
        if matches!(phase, Ok(jail::Phase::Creating)) {
            assert_eq!(removed, vec![name], "attempt {attempt}");
            assert_no_leaks(&spec);
            return;
        }
        // Create had finished: recover keeps a live jail; remove it.
        assert!(removed.is_empty(), "{removed:?}");
        let j = rt()
            .block_on(Jail::adopt(&env.state_root(), &name))
            .unwrap();
        rt().block_on(j.delete()).unwrap();
        assert_no_leaks(&spec);
    }
    panic!("create always finished before the creator could be stopped");
}

#[test]
#[ignore = "privileged: needs root"]
fn user_namespace_maps_root_to_unprivileged_ids() {
    let env = Env::new();
    let mut opts = env.opts(&unique("userns"));
    opts.user_ns = Some(jail::IdMap {
        inside: 0,
        outside: 100_000,
        count: 65_536,
    });
    let spec = JailSpec::from_oci(&oci_spec(&env.rootfs(), "sleep 1000"), &opts).unwrap();
    let spec2 = spec.clone();
    rt().block_on(async move {
        let mut j = Jail::create(spec2).await.unwrap();
        j.start().await.unwrap();
        let out = exec(&j, "id -u; id -g; cat /proc/self/uid_map").await;
        let s = text(&out.stdout);
        assert!(s.starts_with("0\n0\n"), "{s} {}", text(&out.stderr));
        assert!(s.contains("100000"), "{s}");
        // Seen from the host, init runs as 100000.
        let status = std::fs::read_to_string(format!("/proc/{}/status", j.pid().unwrap())).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(
            uid.split_whitespace().skip(1).all(|u| u == "100000"),
            "{uid}"
        );
        // Root inside cannot write host-root-owned files of the rootfs.
        let w = exec(&j, "echo x > /marker").await;
        assert_ne!(w.code, 0);
        j.delete().await.unwrap();
    });
    assert_no_leaks(&spec);
}

/// Removes a test nftables table on drop.
struct FirewallGuard(netns::Firewall);

impl Drop for FirewallGuard {
    fn drop(&mut self) {
        let _ = self.0.remove();
    }
}

/// The IPv4 routes of the host as (network, prefix length).
fn host_routes() -> Vec<(u32, u32)> {
    let t = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    t.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let mask = u32::from_str_radix(f.get(7)?, 16).ok()?;
            // /proc/net/route prints the network-order word as a host
            // integer.
            Some((u32::from_be(dest), mask.count_ones()))
        })
        .collect()
}

/// Gateway `10.<second>.x.1` of a /24 that no host route overlaps: the
/// agent's pool (10.213.0.0/16) and other suites' bridges may exist on
/// the machine at the same time, and an overlapping route sends the
/// replies elsewhere.
fn free_gateway(second: u8) -> std::net::Ipv4Addr {
    let routes = host_routes();
    let start = std::process::id();
    for k in 0..200u32 {
        let x = ((start + k * 7) % 200 + 20) as u8;
        let net = u32::from(std::net::Ipv4Addr::new(10, second, x, 0));
        let clash = routes.iter().any(|&(r, len)| {
            let len = len.min(24);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            r & mask == net & mask && len > 0
        });
        if !clash {
            return std::net::Ipv4Addr::new(10, second, x, 1);
        }
    }
    panic!("precondition missing: no free 10.{second}.x.0/24 (routes cover them all)");
}

#[test]
#[ignore = "privileged: needs root"]
fn vendors_on_different_bridges_are_isolated() {
    let mut env = Env::new();
    let pid = std::process::id();
    let mut nets = Vec::new();
    for (i, v) in ["va", "vb"].iter().enumerate() {
        let bridge = format!("bt{}{}", pid % 1_000_000, ["a", "b"][i]);
        env.bridges.push(bridge.clone());
        let gateway = free_gateway(226 + i as u8);
        nets.push((
            *v,
            jail::NetOptions {
                bridge,
                gateway,
                prefix_len: 24,
                allocator_dir: env.tmp.path().join(format!("alloc-{v}")),
            },
        ));
    }
    let fw = FirewallGuard(netns::Firewall::new(&format!("berth_jt_{pid}")));
    fw.0.apply(&netns::Policy {
        bridges: nets
            .iter()
            .map(|(_, n)| netns::BridgePolicy {
                bridge: n.bridge.clone(),
                subnet: n.gateway,
                prefix_len: n.prefix_len,
                gateway: n.gateway,
                host_ports: vec![],
                allow_to: vec![],
            })
            .collect(),
        uplink_masquerade: false,
    })
    .unwrap();
    let mut specs = Vec::new();
    for (vendor, n) in &nets {
        let mut o = testing::options(
            &unique("net"),
            vendor,
            &env.state_root(),
            &env.cgroup_parent,
        );
        o.network = Some(n.clone());
        specs.push(JailSpec::from_oci(&oci_spec(&env.rootfs(), "sleep 1000"), &o).unwrap());
    }
    let specs2 = specs.clone();
    let gws: Vec<_> = nets.iter().map(|(_, n)| n.gateway).collect();
    rt().block_on(async move {
        let mut jails = Vec::new();
        for s in specs2 {
            let mut j = Jail::create(s).await.unwrap();
            j.start().await.unwrap();
            jails.push(j);
        }
        let addrs: Vec<_> = jails.iter().map(|j| j.address().unwrap()).collect();
        for (i, j) in jails.iter().enumerate() {
            let own = exec(j, &format!("ping -c1 -W2 {}", gws[i])).await;
            assert_eq!(
                own.code,
                0,
                "jail {i} cannot reach its gateway: {}{}",
                text(&own.stdout),
                text(&own.stderr)
            );
            let other = exec(j, &format!("ping -c1 -W2 {}", addrs[1 - i])).await;
            assert_ne!(
                other.code,
                0,
                "jail {i} reached the other vendor: {}",
                text(&other.stdout)
            );
            let ip = exec(j, "ip -4 addr show eth0").await;
            assert!(
                text(&ip.stdout).contains(&addrs[i].to_string()),
                "{}",
                text(&ip.stdout)
            );
        }
        for j in jails {
            j.delete().await.unwrap();
        }
    });
    for s in &specs {
        assert_no_leaks(s);
    }
    drop(fw);
    for b in &env.bridges {
        testing::delete_link(b);
        assert!(!testing::link_exists(b), "bridge {b} left behind");
    }
}

#[test]
#[ignore = "privileged: needs root"]
fn payload_is_confined_and_spec_seccomp_is_honoured() {
    let env = Env::new();
    let mut oci = oci_spec(&env.rootfs(), "sleep 1000");
    let linux: oci_spec::runtime::Linux = serde_json::from_value(serde_json::json!({
        "seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
        ]}
    }))
    .unwrap();
    oci.set_linux(Some(linux));
    let spec = JailSpec::from_oci(&oci, &env.opts(&unique("conf"))).unwrap();
    let spec2 = spec.clone();
    rt().block_on(async move {
        let mut j = Jail::create(spec2).await.unwrap();
        j.start().await.unwrap();
        let st = exec(
            &j,
            "grep -E '^(Seccomp|NoNewPrivs|CapEff|CapBnd):' /proc/self/status",
        )
        .await;
        let s = text(&st.stdout);
        // Two filters (baseline + spec), no_new_privs, the default 14 caps.
        assert!(s.contains("Seccomp:\t2"), "{s}");
        assert!(s.contains("NoNewPrivs:\t1"), "{s}");
        let want = format!("CapEff:\t{:016x}", jail::caps::default_mask());
        assert!(s.contains(&want), "{s} / {want}");
        let m = exec(&j, "mkdir /tmp/x").await;
        assert_ne!(m.code, 0);
        assert!(
            text(&m.stderr).contains("Permission denied"),
            "{}",
            text(&m.stderr)
        );
        // /proc/keys is masked (bind of /dev/null), /proc/sys read-only.
        let k = exec(
            &j,
            "stat -c %t:%T /proc/keys; echo 1 > /proc/sys/kernel/domainname",
        )
        .await;
        assert!(text(&k.stdout).trim() == "1:3", "{}", text(&k.stdout));
        assert!(text(&k.stderr).contains("Read-only"), "{}", text(&k.stderr));
        j.delete().await.unwrap();
    });
    assert_no_leaks(&spec);
}

#[test]
#[ignore = "privileged: needs root"]
fn failed_setup_reports_the_step_and_leaves_nothing() {
    let env = Env::new();
    let upper = env.tmp.path().join("upper");
    let work = env.tmp.path().join("work");
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let mut opts = env.opts(&unique("fail"));
    opts.rootfs = Some(jail::RootfsOptions::Overlay {
        lowers: vec![env.tmp.path().join("no-such-layer")],
        upper,
        work,
    });
    let spec = JailSpec::from_oci(&oci_spec(Path::new("/unused"), "true"), &opts).unwrap();
    let root = env.state_root().join(spec.name.as_str()).join("root");
    let spec2 = spec.clone();
    let err = rt().block_on(async move { Jail::create(spec2).await.unwrap_err() });
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "setup failed: mount overlay on {}: ENOENT",
            root.display()
        )),
        "{msg}"
    );
    assert_no_leaks(&spec);
}

#[test]
#[ignore = "privileged: needs root"]
fn run_is_create_start_wait_delete() {
    let env = Env::new();
    let spec = env.spec(&unique("run"), "exit 3");
    let r = rt().block_on(jail::run(spec.clone())).unwrap();
    assert_eq!(
        r,
        jail::ExitRecord {
            code: 3,
            signal: None
        }
    );
    assert_no_leaks(&spec);
    // A name in use is refused while the first jail exists.
    let spec2 = env.spec(&unique("dup"), "sleep 1000");
    let s = spec2.clone();
    rt().block_on(async move {
        let j = Jail::create(s.clone()).await.unwrap();
        let e = Jail::create(s).await.unwrap_err();
        assert_eq!(e.to_string(), format!("jail {} already exists", j.name()));
        j.delete().await.unwrap();
    });
    assert_no_leaks(&spec2);
}

#[test]
#[ignore = "privileged: needs root"]
fn create_started_runs_the_payload_without_a_start() {
    let env = Env::new();
    let name = unique("started");
    // The payload waits for a file the test writes into the jail's upper
    // (bind) root once create_started has returned.
    let spec = env.spec(
        &name,
        "while [ ! -e /go ]; do sleep 0.01; done; echo went; exit 4",
    );
    let dir = env.state_root().join(spec.name.as_str());
    let spec2 = spec.clone();
    let rootfs = env.rootfs().to_path_buf();
    rt().block_on(async move {
        let mut j = Jail::create_started(spec2).await.unwrap();
        let root = dir.parent().unwrap().to_path_buf();
        assert!(jail::list_creating(&root).await.unwrap().is_empty());
        assert_eq!(jail::list(&root).await.unwrap().len(), 1);
        // Running on return, the start FIFO gone, and a start refused.
        assert_eq!(j.state().phase, jail::Phase::Running);
        let saved = jail::JailState::load(&dir).unwrap();
        assert_eq!(saved.phase, jail::Phase::Running);
        assert!(!dir.join("exec.fifo").exists());
        assert!(j.start().await.is_err());
        std::fs::write(rootfs.join("go"), b"").unwrap();
        let r = j.wait().await.unwrap();
        let _ = std::fs::remove_file(rootfs.join("go"));
        assert_eq!(r.code, 4);
        let out = std::fs::read_to_string(dir.join("console.log")).unwrap();
        assert_eq!(out, "went\n");
        j.delete().await.unwrap();
    });
    assert_no_leaks(&spec);
}

#[test]
#[ignore = "privileged: needs root"]
fn passed_device_works_and_others_are_refused() {
    let env = Env::new();
    let mut oci = oci_spec(&env.rootfs(), "sleep 1000");
    let linux: oci_spec::runtime::Linux = serde_json::from_value(serde_json::json!({
        "devices": [{"path": "/dev/sensor0", "type": "c", "major": 1, "minor": 5}]
    }))
    .unwrap();
    oci.set_linux(Some(linux));
    let spec = JailSpec::from_oci(&oci, &env.opts(&unique("dev"))).unwrap();
    let spec2 = spec.clone();
    rt().block_on(async move {
        let mut j = Jail::create(spec2).await.unwrap();
        j.start().await.unwrap();
        // The passed device (here the zero device) reads.
        let ok = exec(&j, "head -c 4 /dev/sensor0 | wc -c").await;
        assert_eq!(text(&ok.stdout).trim(), "4", "{}", text(&ok.stderr));
        // A node the payload makes itself for /dev/mem is refused by the
        // device cgroup even though mknod (CAP_MKNOD) works.
        let mem = exec(&j, "mknod /tmp/mem c 1 1 && head -c 1 /tmp/mem; echo rc=$?").await;
        assert!(text(&mem.stdout).contains("rc=1"), "{}", text(&mem.stdout));
        assert!(
            text(&mem.stderr).contains("Operation not permitted"),
            "{}",
            text(&mem.stderr)
        );
        j.delete().await.unwrap();
    });
    assert_no_leaks(&spec);
}

#[test]
#[ignore = "privileged: needs root"]
fn mount_destinations_resolve_inside_the_rootfs() {
    let env = Env::new();
    // A hostile image: `/data` is an absolute symlink naming a host
    // directory; the image also has that path, so in-root resolution has
    // somewhere to land.
    let host = env.tmp.path().join("host-side");
    std::fs::create_dir(&host).unwrap();
    let inside = env.rootfs().join(host.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&inside).unwrap();
    std::os::unix::fs::symlink(&host, env.rootfs().join("data")).unwrap();
    let probe = env.tmp.path().join("probe.txt");
    std::fs::write(&probe, "bound-file").unwrap();
    let mut oci = oci_spec(
        &env.rootfs(),
        "echo x > /data/sub/w && cat /data/probe && grep -c ' tmpfs ' /proc/mounts >/dev/null",
    );
    let mounts: Vec<oci_spec::runtime::Mount> = serde_json::from_value(serde_json::json!([
        {"destination": "/data/sub", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m"]},
        {"destination": "/data/probe", "type": "bind", "source": probe, "options": ["bind", "ro"]}
    ]))
    .unwrap();
    oci.set_mounts(Some(mounts));
    let spec = JailSpec::from_oci(&oci, &env.opts(&unique("link"))).unwrap();
    let log = env
        .state_root()
        .join(spec.name.as_str())
        .join("console.log");
    let spec2 = spec.clone();
    rt().block_on(async move {
        let mut j = Jail::create(spec2).await.unwrap();
        j.start().await.unwrap();
        let r = j.wait().await.unwrap();
        let out = std::fs::read_to_string(&log).unwrap();
        assert_eq!(r.code, 0, "{out}");
        assert_eq!(out, "bound-file");
        j.delete().await.unwrap();
    });
    // The host directory the link names stayed untouched; the mount
    // points were made inside the rootfs.
    let left: Vec<_> = std::fs::read_dir(&host).unwrap().flatten().collect();
    assert!(left.is_empty(), "host side touched: {left:?}");
    assert!(inside.join("sub").is_dir());
    assert!(inside.join("probe").is_file());
    assert_no_leaks(&spec);
}

#[test]
#[ignore = "privileged: needs root"]
fn creator_killed_after_init_joined_its_cgroup_is_recovered() {
    let env = Env::new();
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/create-jail");
    if !example.is_file() {
        panic!(
            "precondition missing: {} (built by cargo test)",
            example.display()
        );
    }
    // Stop the creator once init is in the jail's cgroup: from there on
    // nothing but the `creating` record tells recover about it (pid and
    // address are persisted only with phase `created`).
    for attempt in 0..10 {
        let name = unique("rci");
        let spec = env.spec(&name, "sleep 1000");
        let mut child = std::process::Command::new(&example)
            .args([
                name.as_str(),
                "acme",
                env.state_root().to_str().unwrap(),
                env.cgroup_parent.as_str(),
                env.rootfs().to_str().unwrap(),
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let procs: Vec<_> = testing::cgroup_dirs(&spec.cgroup_path)
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect();
        let members = || -> Vec<i32> {
            procs
                .iter()
                .filter_map(|p| std::fs::read_to_string(p).ok())
                .flat_map(|s| {
                    s.lines()
                        .filter_map(|l| l.parse().ok())
                        .collect::<Vec<i32>>()
                })
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while members().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(200));
        }
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        let inits = members();
        assert!(!inits.is_empty(), "init never joined the cgroup");
        let dir = env.state_root().join(&name);
        let phase = jail::JailState::load(&dir).map(|s| s.phase);
        eprintln!("attempt {attempt}: phase {phase:?}");
        child.kill().unwrap();
        child.wait().unwrap();
        let state_root = env.state_root();
        assert_list_creating(&state_root, &name, &phase, attempt);
        let removed = rt().block_on(async move { jail::recover(&state_root).await.unwrap() });
        if matches!(phase, Ok(jail::Phase::Creating)) {
            assert_eq!(removed, vec![name], "attempt {attempt}");
            for p in inits {
                let alive = std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .map(|s| !s.contains(") Z "))
                    .unwrap_or(false);
                assert!(!alive, "process {p} of the jail survived recover");
            }
            assert_no_leaks(&spec);
            return;
        }
        assert!(removed.is_empty(), "{removed:?}");
        let j = rt()
            .block_on(Jail::adopt(&env.state_root(), &name))
            .unwrap();
        rt().block_on(j.delete()).unwrap();
        assert_no_leaks(&spec);
    }
    panic!("create always finished before the creator could be stopped");
}

/// Hierarchy → cgroup path of `pid`, from /proc/PID/cgroup.
fn cgroups_of(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.splitn(3, ':').nth(2).unwrap_or("").to_string())
        .collect()
}

#[test]
#[ignore = "privileged: needs root"]
fn same_name_again_at_once_and_addresses_wait_for_the_old_veth() {
    let mut env = Env::new();
    let pid = std::process::id();
    let bridge = format!("bt{}q", pid % 1_000_000);
    env.bridges.push(bridge.clone());
    let net = jail::NetOptions {
        bridge: bridge.clone(),
        gateway: free_gateway(227),
        // A /29: five addresses for jails, so every round's allocator
        // file is small to check.
        prefix_len: 29,
        allocator_dir: env.tmp.path().join("alloc"),
    };
    let name = unique("again");
    let spec = {
        let mut o = testing::options(&name, "acme", &env.state_root(), &env.cgroup_parent);
        o.network = Some(net.clone());
        JailSpec::from_oci(&oci_spec(&env.rootfs(), "sleep 1000"), &o).unwrap()
    };
    let veth = jail::name::host_veth(&spec.vendor, &spec.name);
    let s = spec.clone();
    rt().block_on(async move {
        for round in 0..3 {
            // The same name (same veth name) right after the last one
            // ended: create waits for the kernel to drop the old veth.
            let mut j = Jail::create(s.clone()).await.unwrap();
            j.start().await.unwrap();
            let init = j.pid().unwrap();
            // Init joined the jail's cgroup itself, in every hierarchy
            // where the jail has one (unmanaged ones, e.g. name=systemd,
            // stay at the root).
            let want = format!("/{}", s.cgroup_path.display());
            let cgs = cgroups_of(init);
            let managed = testing::cgroup_dirs(&s.cgroup_path)
                .iter()
                .filter(|d| d.is_dir())
                .count();
            assert!(managed > 0);
            assert_eq!(
                cgs.iter().filter(|c| **c == want).count(),
                managed,
                "round {round}: init in {cgs:?}"
            );
            let ip = exec(&j, "ip -4 addr show eth0").await;
            assert!(
                text(&ip.stdout).contains(&j.address().unwrap().to_string()),
                "round {round}: {}",
                text(&ip.stdout)
            );
            j.delete().await.unwrap();
            // Delete does not wait for the veth; the address stays parked
            // while the veth exists, so the allocator hands it to nobody.
            let mut a =
                netns::Allocator::open(&net.allocator_dir, &net.bridge, net.gateway, 29).unwrap();
            if testing::link_exists(&veth) {
                let parked: Vec<_> = a.quarantined().map(|(_, l)| l.to_string()).collect();
                assert_eq!(parked, vec![veth.clone()], "round {round}");
                let parked_addr = a.quarantined().next().map(|(ad, _)| ad);
                let got = a.allocate("someone/else").unwrap();
                // Handed out again only if its veth vanished meanwhile.
                assert!(
                    Some(got) != parked_addr || !testing::link_exists(&veth),
                    "round {round}: {got} handed out while {veth} exists"
                );
                a.release("someone/else").unwrap();
            }
        }
    });
    assert_no_leaks(&spec);
}

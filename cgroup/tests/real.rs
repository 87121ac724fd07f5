//! Privileged tests on the real cgroup filesystems of the host. The
//! development host is hybrid (v1 controllers each mounted on their own plus
//! a cgroup2 mount at /sys/fs/cgroup/unified); the same tests run on a pure
//! v2 host, e.g. the guest of `tests/vm/run` used as cargo runner. Tests
//! about v1 specifics need a v1 hierarchy and say so. Run as root with
//! `cargo test -p cgroup -- --include-ignored`.
//!
//! Every cgroup lives under a prefix `berth-test-<pid>-<n>` that only this
//! test created; a [`Fixture`] removes it, and kills its child processes by
//! pid, also when a test fails.

// Test helpers panic on failure on purpose: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use cgroup::{
    Cgroup, Controller, CpuQuota, DeviceAccess, DeviceKind, DeviceRule, Hierarchy, Layout, Limits,
};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Held by the tests that burn CPU or measure it, so that they do not skew
/// each other's measurements on a small machine.
static CPU: Mutex<()> = Mutex::new(());

fn cpu_lock() -> MutexGuard<'static, ()> {
    CPU.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn precondition(ok: bool, what: &str) {
    assert!(ok, "precondition missing: {what}");
}

fn host() -> Hierarchy {
    precondition(nix::unistd::geteuid().is_root(), "root");
    let h = Hierarchy::detect().expect("detect the host's cgroups");
    precondition(
        h.layout() != Layout::V1,
        "a hybrid or pure v2 cgroup host (these tests also use the cgroup2 mount)",
    );
    for c in [
        Controller::Memory,
        Controller::Pids,
        Controller::Cpu,
        Controller::Freezer,
    ] {
        precondition(h.controllers().contains(&c), &format!("the {c} controller"));
    }
    h
}

/// Where controller `c` of the cgroup `rel` has its files.
fn dir_of(f: &Fixture, c: Controller, rel: &Path) -> PathBuf {
    match f.h.controller_version(c) {
        Some(Layout::V1) => f.h.v1_mount(c).unwrap().join(rel),
        Some(_) => f.h.unified_mount().unwrap().join(rel),
        None => panic!("precondition missing: the {c} controller"),
    }
}

fn is_v2(f: &Fixture, c: Controller) -> bool {
    f.h.controller_version(c) == Some(Layout::V2)
}

/// The real python3 binary (not a version-manager shim, which would fork
/// helpers outside the cgroup).
fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output();
        let out = match out {
            Ok(o) if o.status.success() => o,
            _ => panic!("precondition missing: python3"),
        };
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    })
}

/// Cgroups and processes of one test, removed on drop.
struct Fixture {
    h: Hierarchy,
    prefix: PathBuf,
    children: Vec<Child>,
}

impl Fixture {
    fn new(h: Hierarchy) -> Fixture {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = PathBuf::from(format!("berth-test-{}-{n}", std::process::id()));
        let h = h.with_prefix(&prefix).unwrap();
        Fixture {
            h,
            prefix,
            children: Vec::new(),
        }
    }

    fn rel(&self, name: &str) -> PathBuf {
        self.prefix.join(name)
    }

    fn create(&self, name: &str) -> Cgroup {
        Cgroup::create(&self.h, &self.rel(name)).unwrap()
    }

    /// Every hierarchy root of the host that a cgroup may live in.
    fn roots(&self) -> Vec<PathBuf> {
        let mut roots: Vec<PathBuf> = Controller::ALL
            .iter()
            .filter_map(|c| self.h.v1_mount(*c).map(Path::to_path_buf))
            .collect();
        roots.extend(self.h.unified_mount().map(Path::to_path_buf));
        roots.sort();
        roots.dedup();
        roots
    }

    /// Starts `sh -c script` blocked on a line from stdin, so it can be
    /// attached before it does anything; returns its index.
    fn spawn_gated(&mut self, script: &str) -> usize {
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("read _gate; {script}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.children.push(child);
        self.children.len() - 1
    }

    fn pid(&self, i: usize) -> i32 {
        self.children[i].id() as i32
    }

    fn release(&mut self, i: usize) {
        let stdin = self.children[i].stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    fn wait(&mut self, i: usize, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.children[i].try_wait().unwrap() {
                return st;
            }
            assert!(
                start.elapsed() < timeout,
                "child {} still running after {timeout:?}",
                self.pid(i)
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn output(&mut self, i: usize) -> (String, String) {
        let (mut out, mut err) = (String::new(), String::new());
        if let Some(s) = self.children[i].stdout.as_mut() {
            s.read_to_string(&mut out).unwrap();
        }
        if let Some(s) = self.children[i].stderr.as_mut() {
            s.read_to_string(&mut err).unwrap();
        }
        (out, err)
    }

    /// Directories left under the prefix in any hierarchy.
    fn leftovers(&self) -> Vec<PathBuf> {
        self.roots()
            .into_iter()
            .map(|r| r.join(&self.prefix))
            .filter(|p| p.exists())
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Whatever a failed test left below the prefix: thaw, kill, remove.
        for root in self.roots() {
            let top = root.join(&self.prefix);
            if !top.exists() {
                continue;
            }
            let mut dirs = Vec::new();
            collect_dirs(&top, &mut dirs);
            for d in &dirs {
                let _ = std::fs::write(d.join("freezer.state"), "THAWED");
                let _ = std::fs::write(d.join("cgroup.freeze"), "0");
                if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
                    for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            for d in dirs.iter().rev() {
                for _ in 0..100 {
                    if std::fs::remove_dir(d).is_ok() || !d.exists() {
                        break;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .to_string()
}

fn v1_dir(f: &Fixture, c: Controller, rel: &Path) -> PathBuf {
    let Some(m) = f.h.v1_mount(c) else {
        panic!("precondition missing: a v1 {c} hierarchy");
    };
    m.join(rel)
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[ignore = "privileged: needs root"]
fn create_apply_attach_stats_destroy() {
    let mut f = Fixture::new(host());
    let rel = f.rel("vendorA/jail1");
    let cg = f.create("vendorA/jail1");
    for d in cg.dirs() {
        assert!(d.is_dir(), "{}", d.display());
    }
    // v1 cpuset children get cpus and mems, else attach would fail.
    if f.h.controller_version(Controller::Cpuset) == Some(Layout::V1) {
        let cs = v1_dir(&f, Controller::Cpuset, &rel);
        assert!(!read(&cs.join("cpuset.cpus")).is_empty());
        assert!(!read(&cs.join("cpuset.mems")).is_empty());
        // The parent made on the way (vendorA) passes them on by itself;
        // a sibling made under it with one mkdir gets them as well.
        let vendor = cs.parent().unwrap();
        assert_eq!(read(&vendor.join("cgroup.clone_children")), "1");
        let sibling = f.create("vendorA/jail2");
        let cs2 = v1_dir(&f, Controller::Cpuset, &f.rel("vendorA/jail2"));
        assert_eq!(
            read(&cs2.join("cpuset.cpus")),
            read(&cs.join("cpuset.cpus"))
        );
        assert_eq!(
            read(&cs2.join("cpuset.mems")),
            read(&cs.join("cpuset.mems"))
        );
        sibling.destroy().unwrap();
    }

    let limits = Limits {
        memory_max: Some(256 << 20),
        swap_off: true,
        cpu_weight: Some(100),
        cpu_quota: Some(CpuQuota {
            quota_us: 50_000,
            period_us: 100_000,
        }),
        pids_max: Some(64),
        devices: None,
        io_weight: Some(100),
    };
    cg.apply(&limits).unwrap();
    let mem = dir_of(&f, Controller::Memory, &rel);
    let limit_file = if is_v2(&f, Controller::Memory) {
        assert!(
            cg.controllers().unwrap().contains(&Controller::Memory),
            "memory enabled through the parents Berth owns"
        );
        let swap = mem.join("memory.swap.max");
        if swap.exists() {
            assert_eq!(read(&swap), "0");
        }
        mem.join("memory.max")
    } else {
        if mem.join("memory.memsw.limit_in_bytes").exists() {
            assert_eq!(read(&mem.join("memory.memsw.limit_in_bytes")), "268435456");
        }
        assert_eq!(read(&mem.join("memory.swappiness")), "0");
        mem.join("memory.limit_in_bytes")
    };
    assert_eq!(read(&limit_file), "268435456");
    let cpu = dir_of(&f, Controller::Cpu, &rel);
    if is_v2(&f, Controller::Cpu) {
        assert_eq!(read(&cpu.join("cpu.weight")), "100");
        assert_eq!(read(&cpu.join("cpu.max")), "50000 100000");
    } else {
        assert_eq!(read(&cpu.join("cpu.shares")), "2597");
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
    }
    assert_eq!(
        read(&dir_of(&f, Controller::Pids, &rel).join("pids.max")),
        "64"
    );

    // The io weight lands where the io scheduler has a weight file.
    let io = dir_of(&f, Controller::Io, &rel);
    for (file, want) in [
        ("io.weight", "default 100"),
        ("io.bfq.weight", "default 19"),
        ("blkio.weight", "19"),
        ("blkio.bfq.weight", "19"),
    ] {
        if io.join(file).exists() {
            let got = read(&io.join(file));
            assert!(got.starts_with(want), "{file}: {got}");
            break;
        }
    }

    // Raising the memory limit above the one set above (and, on v1, above
    // the memsw limit) works too.
    cg.apply(&Limits {
        memory_max: Some(512 << 20),
        swap_off: true,
        ..Limits::default()
    })
    .unwrap();
    assert_eq!(read(&limit_file), "536870912");

    let i = f.spawn_gated("exec sleep 30");
    let pid = f.pid(i);
    cg.attach(pid).unwrap();
    f.release(i);
    assert_eq!(cg.procs().unwrap(), vec![pid]);
    let own = read(Path::new(&format!("/proc/{pid}/cgroup")));
    for c in [
        Controller::Memory,
        Controller::Pids,
        Controller::Cpu,
        Controller::Freezer,
    ] {
        if f.h.controller_version(c) == Some(Layout::V1) {
            let line = format!(":{}:/{}", c.v1_name(), rel.display());
            assert!(own.contains(&line), "{line} not in\n{own}");
        }
    }
    assert!(own.contains(&format!("0::/{}", rel.display())), "{own}");

    // exec of sleep after the attach is charged to the cgroup.
    wait_for("memory to be charged", Duration::from_secs(5), || {
        cg.stats().unwrap().memory_current > 0
    });
    let s = cg.stats().unwrap();
    assert_eq!(s.pids_current, 1, "{s:?}");
    if let Some(peak) = s.memory_peak {
        assert!(peak >= s.memory_current, "{s:?}");
    }
    assert_eq!(s.oom_kills, 0);

    // Adopting after a restart sees the same cgroup.
    let again = Cgroup::open(&f.h, &rel).unwrap();
    assert_eq!(again.procs().unwrap(), vec![pid]);

    cg.destroy().unwrap();
    let st = f.wait(i, Duration::from_secs(5));
    assert_eq!(st.signal(), Some(9), "{st:?}");
    assert_eq!(f.leftovers(), Vec::<PathBuf>::new());
}

#[test]
#[ignore = "privileged: needs root"]
fn pids_limit_stops_forks() {
    let mut f = Fixture::new(host());
    let cg = f.create("j");
    cg.apply(&Limits {
        pids_max: Some(5),
        ..Limits::default()
    })
    .unwrap();
    // The sleeps must not hold the shell's output pipes open.
    let i =
        f.spawn_gated("for n in 1 2 3 4 5 6 7 8 9 10; do sleep 30 >/dev/null 2>&1 & done; wait");
    cg.attach(f.pid(i)).unwrap();
    f.release(i);
    let st = f.wait(i, Duration::from_secs(10));
    let (_, err) = f.output(i);
    assert!(!st.success(), "the shell should fail to fork: {st:?}");
    assert!(err.to_lowercase().contains("fork"), "stderr: {err}");
    let s = cg.stats().unwrap();
    assert!(
        (1..=5).contains(&s.pids_current),
        "pids.current {} with max 5",
        s.pids_current
    );
    let events = dir_of(&f, Controller::Pids, cg.rel_path()).join("pids.events");
    if events.exists() {
        assert!(read(&events) != "max 0", "no fork was refused");
    }
    // The orphaned sleeps are still inside; destroy kills them.
    assert!(!cg.procs().unwrap().is_empty());
    cg.destroy().unwrap();
    assert_eq!(f.leftovers(), Vec::<PathBuf>::new());
}

#[test]
#[ignore = "privileged: needs root"]
fn memory_limit_oom_kills_a_hog() {
    let _cpu = cpu_lock();
    let mut f = Fixture::new(host());
    let cg = f.create("j");
    let limit: u64 = 64 << 20;
    cg.apply(&Limits {
        memory_max: Some(limit),
        swap_off: true,
        ..Limits::default()
    })
    .unwrap();
    // Each chunk is written, so the pages are really charged.
    let i = f.spawn_gated(&format!(
        "exec {} -c 'a = []\nwhile True: a.append(b\"x\" * (1 << 20))'",
        python()
    ));
    cg.attach(f.pid(i)).unwrap();
    f.release(i);
    let st = f.wait(i, Duration::from_secs(60));
    assert_eq!(st.signal(), Some(9), "the hog should be OOM-killed: {st:?}");
    let s = cg.stats().unwrap();
    assert!(s.oom_kills >= 1, "{s:?}");
    if let Some(peak) = s.memory_peak {
        assert!(
            peak <= limit && peak > limit / 2,
            "peak {peak} against limit {limit}"
        );
    }
    cg.destroy().unwrap();
    assert_eq!(f.leftovers(), Vec::<PathBuf>::new());
}

/// Waits (bounded) until the cgroup has used 20 ms more CPU.
fn runs(cg: &Cgroup) {
    let start = cg.stats().unwrap().cpu_usage_us;
    wait_for(
        "the loop to use 20 ms of CPU",
        Duration::from_secs(10),
        || cg.stats().unwrap().cpu_usage_us - start >= 20_000,
    );
}

fn usage_over(cg: &Cgroup, d: Duration) -> u64 {
    let a = cg.stats().unwrap().cpu_usage_us;
    thread::sleep(d);
    cg.stats().unwrap().cpu_usage_us - a
}

#[test]
#[ignore = "privileged: needs root"]
fn cpu_quota_holds_a_busy_loop() {
    let _cpu = cpu_lock();
    let mut f = Fixture::new(host());
    let cg = f.create("j");
    // 20% of one CPU.
    cg.apply(&Limits {
        cpu_quota: Some(CpuQuota {
            quota_us: 20_000,
            period_us: 100_000,
        }),
        ..Limits::default()
    })
    .unwrap();
    let i = f.spawn_gated("while :; do :; done");
    cg.attach(f.pid(i)).unwrap();
    f.release(i);
    thread::sleep(Duration::from_millis(300));
    let used = usage_over(&cg, Duration::from_secs(2));
    // 400 ms expected; unlimited it would be close to 2000 ms. The floor is
    // low because the machine may be busy with other work.
    assert!(
        (100_000..=600_000).contains(&used),
        "busy loop used {used} µs of CPU in 2 s under a 20% quota"
    );
    cg.destroy().unwrap();
    assert_eq!(f.leftovers(), Vec::<PathBuf>::new());
}

#[test]
#[ignore = "privileged: needs root"]
fn freeze_stops_progress_and_thaw_resumes() {
    let _cpu = cpu_lock();
    let mut f = Fixture::new(host());
    let cg = f.create("j");
    let i = f.spawn_gated("while :; do :; done");
    cg.attach(f.pid(i)).unwrap();
    f.release(i);
    runs(&cg);

    cg.freeze().unwrap();
    let frozen = usage_over(&cg, Duration::from_millis(500));
    assert!(frozen < 2_000, "frozen loop still used {frozen} µs");
    let dir = dir_of(&f, Controller::Freezer, cg.rel_path());
    let state = || {
        if is_v2(&f, Controller::Freezer) {
            let ev = read(&dir.join("cgroup.events"));
            if ev.contains("frozen 1") {
                "FROZEN"
            } else {
                "THAWED"
            }
            .to_string()
        } else {
            read(&dir.join("freezer.state"))
        }
    };
    assert_eq!(state(), "FROZEN");

    cg.thaw().unwrap();
    assert_eq!(state(), "THAWED");
    runs(&cg);
    // Destroy also works on a frozen cgroup.
    cg.freeze().unwrap();
    cg.destroy().unwrap();
    assert_eq!(f.wait(i, Duration::from_secs(5)).signal(), Some(9));
    assert_eq!(f.leftovers(), Vec::<PathBuf>::new());
}

#[test]
#[ignore = "privileged: needs root"]
fn destroy_with_live_tasks_keeps_shared_parents_until_last() {
    let mut f = Fixture::new(host());
    let a = f.create("vendor/a");
    let b = f.create("vendor/b");
    let i = f.spawn_gated("sleep 60 & sleep 60 & exec sleep 60");
    a.attach(f.pid(i)).unwrap();
    f.release(i);
    wait_for("three tasks", Duration::from_secs(5), || {
        a.procs().unwrap().len() == 3
    });
    let pids = a.procs().unwrap();
    // A child cgroup made inside the jail goes too.
    let nested = dir_of(&f, Controller::Pids, a.rel_path()).join("inner");
    std::fs::create_dir(&nested).unwrap();
    std::fs::write(nested.join("cgroup.procs"), pids[0].to_string()).unwrap();

    let a_dirs = a.dirs();
    a.destroy().unwrap();
    for d in &a_dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    for pid in &pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        assert!(
            status.is_empty() || status.contains("State:\tZ"),
            "pid {pid} survived: {status}"
        );
    }
    // `vendor` is shared with b: it stays.
    let shared = f.roots()[0].join(f.rel("vendor"));
    assert!(shared.is_dir(), "{}", shared.display());

    b.destroy().unwrap();
    assert_eq!(f.leftovers(), Vec::<PathBuf>::new());
}

#[test]
#[ignore = "privileged: needs root"]
fn destroy_without_cgroup_kill_freezes_and_kills() {
    let _cpu = cpu_lock();
    let h = host();
    precondition(
        h.layout() == Layout::Hybrid,
        "a hybrid host (this test drops its cgroup2 mount to see it as v1)",
    );
    // The same host seen as pure v1 (no cgroup2 mount, so no cgroup.kill):
    // destroy must fall back to freeze, SIGKILL every pid, thaw.
    let mountinfo: String = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| !l.contains(" - cgroup2 "))
        .map(|l| format!("{l}\n"))
        .collect();
    let v1 = Hierarchy::detect_with_root(&mountinfo, Path::new("/")).unwrap();
    assert_eq!(v1.layout(), Layout::V1);
    let mut f = Fixture::new(v1);
    let cg = f.create("j");
    let i = f.spawn_gated("sleep 60 & sleep 60 & while :; do :; done");
    cg.attach(f.pid(i)).unwrap();
    f.release(i);
    wait_for("three tasks", Duration::from_secs(5), || {
        cg.procs().unwrap().len() == 3
    });
    cg.destroy().unwrap();
    assert_eq!(f.wait(i, Duration::from_secs(5)).signal(), Some(9));
    assert_eq!(f.leftovers(), Vec::<PathBuf>::new());
}

fn device_probe(f: &mut Fixture, cg: &Cgroup) -> String {
    let script = "import os\n\
                  for dev in ('/dev/null', '/dev/full'):\n\
                  \x20   try:\n\
                  \x20       os.close(os.open(dev, os.O_RDWR))\n\
                  \x20       print(dev, 'ok')\n\
                  \x20   except OSError as e:\n\
                  \x20       print(dev, 'errno', e.errno)\n";
    // `$0` of `sh -c` is the argument after the command: the script.
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("read _gate; exec {} -c \"$0\"", python()))
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    f.children.push(child);
    let i = f.children.len() - 1;
    cg.attach(f.pid(i)).unwrap();
    f.release(i);
    let st = f.wait(i, Duration::from_secs(20));
    let (out, err) = f.output(i);
    assert!(st.success(), "probe failed: {st:?} {err}");
    out
}

#[test]
#[ignore = "privileged: needs root"]
fn v2_device_program_on_the_unified_mount() {
    let h = host().with_v2_devices().unwrap();
    assert_eq!(h.controller_version(Controller::Devices), Some(Layout::V2));
    let mut f = Fixture::new(h);
    let cg = f.create("j");
    let null = DeviceRule {
        allow: true,
        kind: DeviceKind::Char,
        major: Some(1),
        minor: Some(3),
        access: DeviceAccess::RW,
    };
    cg.apply(&Limits {
        devices: Some(vec![null]),
        ..Limits::default()
    })
    .unwrap();
    let out = device_probe(&mut f, &cg);
    assert_eq!(
        out, "/dev/null ok\n/dev/full errno 1\n",
        "/dev/full (char 1:7) must fail with EPERM"
    );

    // Applying again replaces the program: now /dev/full is allowed too.
    let full = DeviceRule {
        minor: Some(7),
        ..null
    };
    cg.apply(&Limits {
        devices: Some(vec![null, full]),
        ..Limits::default()
    })
    .unwrap();
    let out = device_probe(&mut f, &cg);
    assert_eq!(out, "/dev/null ok\n/dev/full ok\n");

    // A later deny overrides an earlier allow.
    let deny_full = DeviceRule {
        allow: false,
        ..full
    };
    cg.apply(&Limits {
        devices: Some(vec![null, full, deny_full]),
        ..Limits::default()
    })
    .unwrap();
    let out = device_probe(&mut f, &cg);
    assert_eq!(out, "/dev/null ok\n/dev/full errno 1\n");

    cg.destroy().unwrap();
    assert_eq!(f.leftovers(), Vec::<PathBuf>::new());
}

#[test]
#[ignore = "privileged: needs root"]
fn v1_device_allow_list() {
    let mut f = Fixture::new(host());
    precondition(
        f.h.controller_version(Controller::Devices) == Some(Layout::V1),
        "a v1 devices hierarchy",
    );
    let cg = f.create("j");
    let null = DeviceRule {
        allow: true,
        kind: DeviceKind::Char,
        major: Some(1),
        minor: Some(3),
        access: DeviceAccess::RW,
    };
    cg.apply(&Limits {
        devices: Some(vec![null]),
        ..Limits::default()
    })
    .unwrap();
    let list = read(&v1_dir(&f, Controller::Devices, cg.rel_path()).join("devices.list"));
    assert_eq!(list, "c 1:3 rw");
    let out = device_probe(&mut f, &cg);
    assert_eq!(out, "/dev/null ok\n/dev/full errno 1\n");
    cg.destroy().unwrap();
    assert_eq!(f.leftovers(), Vec::<PathBuf>::new());
}

#[test]
#[ignore = "privileged: needs root"]
fn v2_freeze_cpu_stat_and_kill_on_the_unified_mount() {
    let _cpu = cpu_lock();
    let h = host()
        .with_v2(Controller::Freezer)
        .unwrap()
        .with_v2(Controller::Cpuacct)
        .unwrap();
    let mut f = Fixture::new(h);
    let cg = f.create("j");
    let unified = f.h.unified_mount().unwrap().join(cg.rel_path());
    // The v1 freezer and cpuacct hierarchies, if any, are not used at all.
    for c in [Controller::Freezer, Controller::Cpuacct] {
        if let Some(m) = f.h.v1_mount(c) {
            assert!(!m.join(cg.rel_path()).exists());
        }
    }

    let i = f.spawn_gated("sleep 60 >/dev/null 2>&1 & while :; do :; done");
    cg.attach(f.pid(i)).unwrap();
    f.release(i);
    wait_for("two tasks", Duration::from_secs(5), || {
        cg.procs().unwrap().len() == 2
    });
    runs(&cg); // usage_usec of the unified cpu.stat

    cg.freeze().unwrap();
    assert!(read(&unified.join("cgroup.events")).contains("frozen 1"));
    let frozen = usage_over(&cg, Duration::from_millis(500));
    assert!(frozen < 2_000, "frozen loop still used {frozen} µs");
    cg.thaw().unwrap();
    assert!(read(&unified.join("cgroup.events")).contains("frozen 0"));
    runs(&cg);

    cg.freeze().unwrap();
    assert_eq!(cg.procs().unwrap().len(), 2);
    cg.destroy().unwrap();
    assert_eq!(f.wait(i, Duration::from_secs(5)).signal(), Some(9));
    assert_eq!(f.leftovers(), Vec::<PathBuf>::new());
}

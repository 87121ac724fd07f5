//! Privileged tests: real jails from namespaces, cgroups, overlayfs and
//! veth bridges. Run as root with `-- --include-ignored`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use jail::testing::{self, assert_no_leaks, busybox_rootfs, oci_spec, unique};
use jail::{ExecOptions, Jail, JailOptions, JailSpec};

const PRIV: &str = "privileged: needs root";

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
    let _ = PRIV;
    let env = Env::new();
    let spec = env.spec(
        &unique("basic"),
        "cat /marker; echo; echo pid=$$; ls /proc | grep -c '^[0-9]'",
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
        let n: u32 = out.lines().last().unwrap().trim().parse().unwrap();
        assert!(n <= 4, "too many processes visible: {out}");
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

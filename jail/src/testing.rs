//! Helpers for privileged tests of jails (feature `testing`): a busybox
//! rootfs builder, unique names, and leak checks that assert nothing of a
//! jail is left on the host.
//!
//! Test code: panics on failure, with messages that say what leaked. The
//! crate's own privileged tests include this file by path (see `lib.rs`).

// Test helpers: a failed step must fail the test loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use jail::name::{host_veth, Name};
use jail::spec::{JailOptions, JailSpec};

/// The static busybox the rootfs is built from (Debian `busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<prefix>-<pid>-<n>` (jail
/// names are at most 32 bytes; keep `prefix` short).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Panics with `precondition missing: ...` unless running as root with
/// busybox available.
pub fn require_root() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("precondition missing: must run as root");
    }
    if !Path::new(BUSYBOX).is_file() {
        panic!("precondition missing: {BUSYBOX} (apt-get install busybox-static)");
    }
}

/// Builds a busybox rootfs in `root`: /bin/busybox, one symlink per applet,
/// the usual empty directories and a `/marker` file holding `marker`.
pub fn busybox_rootfs(root: &Path, marker: &str) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    std::fs::copy(BUSYBOX, bin.join("busybox")).expect("copy busybox");
    let out = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let l = bin.join(applet);
        if applet != "busybox" && !l.exists() {
            std::os::unix::fs::symlink("busybox", &l).expect("applet symlink");
        }
    }
    for d in [
        "proc", "sys", "dev", "tmp", "etc", "root", "usr/bin", "sbin", "var",
    ] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
    std::fs::write(root.join("marker"), marker).expect("marker");
}

/// A minimal OCI spec running `/bin/sh -c <script>` in the rootfs.
pub fn oci_spec(root: &Path, script: &str) -> oci_spec::runtime::Spec {
    jail::oci::spec(
        jail::oci::root(root, false),
        jail::oci::process(
            vec!["/bin/sh".into(), "-c".into(), script.into()],
            vec!["PATH=/bin:/sbin:/usr/bin".into(), "HOME=/root".into()],
            "/",
            0,
            0,
        ),
    )
}

/// Options for a test jail under `state_root` and a per-test cgroup
/// parent (so nothing collides with real jails).
pub fn options(name: &str, vendor: &str, state_root: &Path, cgroup_parent: &str) -> JailOptions {
    JailOptions {
        name: name.into(),
        vendor: vendor.into(),
        state_root: Some(state_root.to_owned()),
        cgroup_parent: Some(PathBuf::from(cgroup_parent)),
        init_path: std::env::var_os("BERTH_INIT").map(PathBuf::from),
        ..JailOptions::default()
    }
}

/// Every cgroup directory of `rel` on this host (all mounted hierarchies).
pub fn cgroup_dirs(rel: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return out;
    };
    for line in mi.lines() {
        let Some((_, post)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = post.split_whitespace().next().unwrap_or("");
        if fstype == "cgroup" || fstype == "cgroup2" {
            if let Some(mp) = line.split_whitespace().nth(4) {
                out.push(Path::new(mp).join(rel));
            }
        }
    }
    out
}

/// True when a network interface of that name exists on the host.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// How long a test waits for the kernel to remove an ended jail's veth.
pub const VETH_GONE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Polls until link `name` is gone; false if it is still there at the
/// deadline.
pub fn wait_link_gone(name: &str, deadline: std::time::Duration) -> bool {
    let end = std::time::Instant::now() + deadline;
    loop {
        if !link_exists(name) {
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Lines of /proc/self/mountinfo that mention `needle`.
pub fn mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

/// Asserts that nothing of `spec`'s jail remains: cgroup directories,
/// host veth, mounts under its state dir or rootfs, state directory.
pub fn assert_no_leaks(spec: &JailSpec) {
    for d in cgroup_dirs(&spec.cgroup_path) {
        assert!(!d.exists(), "cgroup leaked: {}", d.display());
    }
    if spec.network.is_some() {
        // The kernel removes the veth with the jail's network namespace,
        // asynchronously after the jail's last process is gone.
        let v = host_veth(&spec.vendor, &spec.name);
        assert!(
            wait_link_gone(&v, VETH_GONE_DEADLINE),
            "veth leaked: {v} still there after {VETH_GONE_DEADLINE:?}"
        );
    }
    let dir = spec.state_root.join(spec.name.as_str());
    let m = mounts_mentioning(&dir.to_string_lossy());
    assert!(m.is_empty(), "mounts leaked: {m:?}");
    assert!(!dir.exists(), "state leaked: {}", dir.display());
    let rootfs = match &spec.rootfs {
        jail::spec::RootfsOptions::Bind { path } => path.clone(),
        jail::spec::RootfsOptions::Overlay { upper, .. } => upper.clone(),
    };
    let m = mounts_mentioning(&rootfs.to_string_lossy());
    assert!(m.is_empty(), "rootfs mounts leaked: {m:?}");
}

/// Removes a cgroup parent tree made for a test (after its jails are
/// gone); panics if something is still inside.
pub fn remove_cgroup_parent(rel: &str) {
    for d in cgroup_dirs(Path::new(rel)) {
        if d.exists() {
            remove_tree(&d);
        }
    }
}

fn remove_tree(d: &Path) {
    if let Ok(rd) = std::fs::read_dir(d) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(d);
}

/// Deletes a link if it exists (test cleanup of bridges).
pub fn delete_link(name: &str) {
    if link_exists(name) {
        let _ = Command::new("ip").args(["link", "del", name]).status();
    }
}

/// Validated name (test helper).
pub fn name(s: &str) -> Name {
    Name::new(s).expect("valid name")
}

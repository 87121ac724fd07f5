//! End-to-end tests of Berth against real peers; the tests live in tests/.
//!
//! This library is their harness:
//! - [`berth_bin`] finds the `berth` binary the workspace build put beside
//!   the test executable;
//! - [`TestEnv`] gives each test its own state dir, cgroup parent
//!   (`berth-t<pid>-<n>`), vendor names and busybox rootfs, runs `berth` with
//!   them, checks for leftovers and removes whatever a failed test left;
//! - [`build_rootfs`] is the Rust twin of `scripts/mkrootfs`;
//! - [`host`] reads the host's cgroups, links, mounts and namespaces.
#![forbid(unsafe_code)]
// This is test harness code: a setup that fails must fail the test loudly,
// so panicking through expect is the intended behaviour here.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod host;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where Debian's busybox-static installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// How long one `berth` invocation may take in a test before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The `berth` binary beside the test executable (`target/<profile>/berth`).
///
/// # Panics
/// If it is missing, with a message telling to build the workspace first.
pub fn berth_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/berth
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("berth");
    assert!(
        bin.is_file(),
        "berth binary not found at {}: build the workspace first (cargo build --workspace) \
         with the same target dir and profile as the tests",
        bin.display()
    );
    bin
}

/// Panics with `precondition missing: ...` unless running as root.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("precondition missing: this test needs root (run the suite as root with --include-ignored)");
    }
}

/// Panics with `precondition missing: ...` unless `path` exists.
pub fn require_path(path: &str, what: &str) {
    if !Path::new(path).exists() {
        panic!("precondition missing: {path} ({what})");
    }
}

/// Builds a busybox rootfs in `dir` (which may exist, empty): `/bin/busybox`,
/// applet symlinks at the paths `busybox --list-full` gives, `/etc/passwd`
/// and `/etc/group` with root and nobody, `/etc/hostname`, `/tmp` and empty
/// `/proc`, `/sys`, `/dev` mountpoints.
pub fn build_rootfs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{symlink, PermissionsExt};
    if !Path::new(BUSYBOX).is_file() {
        panic!("precondition missing: {BUSYBOX} (apt-get install busybox-static)");
    }
    for sub in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp", "proc", "sys", "dev", "var/tmp",
    ] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::set_permissions(dir.join("var/tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::copy(BUSYBOX, dir.join("bin/busybox"))?;
    let list = Command::new(BUSYBOX).arg("--list-full").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "bin/busybox" || applet.contains("..") {
            continue;
        }
        let depth = applet.matches('/').count();
        let target = format!("{}bin/busybox", "../".repeat(depth));
        let link = dir.join(applet);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)?;
        }
        match symlink(&target, &link) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    std::fs::write(dir.join("etc/hostname"), "berth\n")?;
    Ok(())
}

/// What one `berth` run produced.
#[derive(Debug)]
pub struct Outcome {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Outcome {
    /// The exit code (panics if berth itself died of a signal).
    pub fn code(&self) -> i32 {
        match self.status.code() {
            Some(c) => c,
            None => panic!(
                "berth died of a signal: {:?}\nstderr: {}",
                self.status, self.stderr
            ),
        }
    }

    /// Asserts exit code 0 and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.status.code(),
            Some(0),
            "berth failed\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Asserts exit code 2 and exactly one stderr line equal to `line`.
    pub fn assert_usage_error(&self, line: &str) {
        assert_eq!(
            self.stderr.trim_end_matches('\n'),
            line,
            "stderr (stdout: {:?}, status {:?})",
            self.stdout,
            self.status
        );
        assert_eq!(
            self.status.code(),
            Some(2),
            "exit code; stderr: {}",
            self.stderr
        );
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One test's private world: state dir, cgroup parent, vendor names, rootfs.
///
/// Dropping it removes what a failed test may have left: processes in its
/// cgroups, its cgroups, its links, its mounts and its temp dir.
#[derive(Debug)]
pub struct TestEnv {
    /// `t<pid>-<n>`: unique per test process and test.
    pub id: String,
    /// Short unique tag used in vendor names (`v<pid36><n36>`).
    pub tag: String,
    /// The temp dir holding everything below.
    pub dir: tempfile::TempDir,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// `--cgroup-parent`.
    pub cgroup_parent: String,
    /// A busybox rootfs (built by [`TestEnv::new_with_rootfs`]).
    pub rootfs: PathBuf,
}

fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

impl TestEnv {
    /// A fresh environment without a rootfs (for bad-input tests).
    pub fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix(&format!("berth-t{pid}-{n}-"))
            .tempdir()
            .expect("temp dir");
        let state_dir = dir.path().join("state");
        let rootfs = dir.path().join("rootfs");
        TestEnv {
            id: format!("t{pid}-{n}"),
            tag: format!("{}{}", base36(pid.into()), base36(n.into())),
            state_dir,
            cgroup_parent: format!("berth-t{pid}-{n}"),
            rootfs,
            dir,
        }
    }

    /// A fresh environment with a busybox rootfs; needs root.
    pub fn new_with_rootfs() -> Self {
        require_root();
        let env = Self::new();
        build_rootfs(&env.rootfs).expect("build rootfs");
        env
    }

    /// A vendor name unique to this test: `v<tag><suffix>` (short, so its
    /// bridge `berth-<vendor>` fits in 15 bytes unhashed).
    pub fn vendor(&self, suffix: &str) -> String {
        format!("v{}{}", self.tag, suffix)
    }

    /// A `berth` command with this test's `--state-dir` and `--cgroup-parent`.
    pub fn berth(&self) -> Command {
        let mut cmd = Command::new(berth_bin());
        cmd.arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .env_remove("RUST_LOG");
        cmd
    }

    /// Runs `berth ARGS` with empty stdin and returns its outcome.
    pub fn run<I, S>(&self, args: I) -> Outcome
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.berth();
        cmd.args(args);
        run_with_timeout(cmd, None, DEFAULT_TIMEOUT)
    }

    /// Runs `berth ARGS` with `stdin` as its standard input.
    pub fn run_stdin<I, S>(&self, args: I, stdin: &[u8]) -> Outcome
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.berth();
        cmd.args(args);
        run_with_timeout(cmd, Some(stdin), DEFAULT_TIMEOUT)
    }

    /// `berth jail run --rootfs <rootfs> OPTS -- CMD`.
    pub fn jail_run(&self, opts: &[&str], cmd: &[&str]) -> Outcome {
        let mut args: Vec<&OsStr> = vec!["jail".as_ref(), "run".as_ref(), "--rootfs".as_ref()];
        args.push(self.rootfs.as_os_str());
        args.extend(opts.iter().map(|s| OsStr::new(*s)));
        args.push("--".as_ref());
        args.extend(cmd.iter().map(|s| OsStr::new(*s)));
        self.run(args)
    }

    /// Asserts that nothing of this test is left on the host: no cgroup
    /// below its cgroup parent in any hierarchy, no link of its vendors, an
    /// empty (or absent) state dir, no mount under its temp dir.
    pub fn assert_no_leftovers(&self, vendors: &[&str]) {
        let mut problems = Vec::new();
        for cg in host::cgroups_below(&self.cgroup_parent) {
            problems.push(format!("cgroup {}", cg.display()));
        }
        // A jail's veth goes with its network namespace, which the kernel
        // tears down asynchronously after the jail's last process: poll.
        let ours = |link: &String| {
            vendors
                .iter()
                .any(|v| *link == host::bridge_name(v) || link.contains(v))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut links: Vec<String> = host::link_names().into_iter().filter(ours).collect();
        while !links.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            links = host::link_names().into_iter().filter(ours).collect();
        }
        for link in links {
            problems.push(format!("link {link}"));
        }
        if let Ok(rd) = std::fs::read_dir(&self.state_dir) {
            for e in rd.flatten() {
                problems.push(format!("state entry {}", e.path().display()));
            }
        }
        for m in host::mounts_mentioning(self.dir.path()) {
            problems.push(format!("mount {m}"));
        }
        let table = host::nft_table_name(&self.state_dir);
        if host::nft_table_exists(&table) == Some(true) {
            problems.push(format!("nftables table inet {table}"));
        }
        for ns in host::named_netns() {
            if ns.contains(&self.tag) || ns.contains(&self.id) {
                problems.push(format!("netns {ns}"));
            }
        }
        assert!(
            problems.is_empty(),
            "leftovers of test {}: {problems:#?}",
            self.id
        );
    }

    /// Asserts nothing was created at all: no state dir, no cgroup parent in
    /// any hierarchy, no vendor link (for refused commands).
    pub fn assert_nothing_created(&self, vendors: &[&str]) {
        assert!(
            !self.state_dir.exists(),
            "state dir {} was created",
            self.state_dir.display()
        );
        let parents = host::cgroup_dirs(&self.cgroup_parent);
        assert!(parents.is_empty(), "cgroup parent created: {parents:?}");
        self.assert_no_leftovers(vendors);
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        // Kill what our cgroups still hold, then remove them deepest first.
        host::kill_and_remove_cgroups(&self.cgroup_parent);
        // Unmount anything under our temp dir, deepest first.
        let mut mounts = host::mount_points_under(self.dir.path());
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in mounts {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
        for link in host::link_names() {
            if link.contains(&format!("v{}", self.tag)) {
                let _ = Command::new("ip").args(["link", "del", &link]).status();
            }
        }
        let table = host::nft_table_name(&self.state_dir);
        if host::nft_table_exists(&table) == Some(true) {
            let _ = Command::new("nft")
                .args(["delete", "table", "inet", &table])
                .status();
        }
    }
}

/// Runs `cmd` with `stdin` (or an empty stdin), killing it after `timeout`.
pub fn run_with_timeout(mut cmd: Command, stdin: Option<&[u8]>, timeout: Duration) -> Outcome {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn berth");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.unwrap_or_default().to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = reader(child.stdout.take().expect("stdout"));
    let err = reader(child.stderr.take().expect("stderr"));
    let status = wait_timeout(&mut child, timeout);
    let _ = writer.join();
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    let status = match status {
        Some(s) => s,
        None => panic!(
            "berth {:?} did not exit within {timeout:?}\nstdout: {stdout}\nstderr: {stderr}",
            cmd.get_args().collect::<Vec<_>>()
        ),
    };
    Outcome {
        status,
        stdout,
        stderr,
    }
}

fn reader<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child` up to `timeout`; on timeout kills it (by its pid) and
/// returns `None`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_is_short_and_distinct() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert!(base36(4_194_304).len() <= 5);
    }

    #[test]
    fn envs_are_unique_and_vendor_bridges_fit() {
        let a = TestEnv::new();
        let b = TestEnv::new();
        assert_ne!(a.cgroup_parent, b.cgroup_parent);
        assert_ne!(a.state_dir, b.state_dir);
        assert!(host::bridge_name(&a.vendor("b")).len() <= 15);
        assert!(a.cgroup_parent.starts_with("berth-t"));
    }

    #[test]
    fn rootfs_has_busybox_and_applets() {
        let d = tempfile::tempdir().unwrap();
        build_rootfs(d.path()).unwrap();
        assert!(d.path().join("bin/busybox").is_file());
        assert_eq!(
            std::fs::read_link(d.path().join("bin/sh")).unwrap(),
            PathBuf::from("../bin/busybox")
        );
        assert!(d.path().join("bin/sh").exists(), "symlink resolves");
        assert!(std::fs::read_to_string(d.path().join("etc/passwd"))
            .unwrap()
            .contains("nobody:x:65534"));
        for m in ["proc", "sys", "dev", "tmp"] {
            assert!(d.path().join(m).is_dir());
        }
    }
}

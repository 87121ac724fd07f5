//! `berth check-board` and `berthd --board` as a user runs them: exit codes,
//! the exact lines printed, and what berthd does at start.
//!
//! The tests marked privileged check this very host against
//! `board-configs/generic-x86_64.toml` and start a real berthd; they run as
//! root with `cargo test -p agent --test board -- --include-ignored`.

// Test code: a failed step must fail the test.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const BERTHD: &str = env!("CARGO_BIN_EXE_berthd");

fn boards() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../board-configs")
}

fn generic() -> PathBuf {
    boards().join("generic-x86_64.toml")
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out: Output = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn require_root() {
    if !nix::unistd::Uid::effective().is_root() {
        panic!("precondition missing: root (run the privileged tests as root)");
    }
}

/// A unique name part for this test process.
fn tag() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A file named `name` in `dir` holding the generic board with `edits`.
fn board_file(dir: &Path, name: &str, edits: &[(&str, &str)]) -> PathBuf {
    let mut text = std::fs::read_to_string(generic()).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{from:?}");
        text = text.replacen(from, to, 1);
    }
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn check_board_refuses_a_bad_file_with_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = board_file(
        dir.path(),
        "generic-x86_64.toml",
        &[(
            "jail_range = \"10.88.0.0/24\"",
            "jail_range = \"10.99.0.0/24\"",
        )],
    );
    let (code, out, err) = run(Command::new(BERTH).arg("check-board").arg(&bad));
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(
        err,
        format!(
            "berth: error: {}:42:18: network.bridge_address 10.88.0.1/24 is not an address of jail_range 10.99.0.0/24\n",
            bad.display()
        )
    );
    let (code, _, err) = run(Command::new(BERTH)
        .arg("check-board")
        .arg(dir.path().join("none.toml")));
    assert_eq!(code, 2);
    assert!(
        err.starts_with(&format!(
            "berth: error: cannot read board {}:",
            dir.path().join("none.toml").display()
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn berthd_refuses_a_bad_board_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("berthd.toml");
    std::fs::write(&config, format!("state_dir = \"{}\"\n", state.display())).unwrap();
    let bad = board_file(
        dir.path(),
        "board.toml",
        &[("max_jails = 4", "max_jails = 40")],
    );
    let (code, out, err) = run(Command::new(BERTHD)
        .arg("--config")
        .arg(&config)
        .arg("--board")
        .arg(&bad));
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(
        err,
        format!(
            "berthd: error: {}:63:13: memory: berthd 64 + reserve 512 + 40 x 256 = 10816 MiB exceeds 2048 MiB\n",
            bad.display()
        )
    );
    assert!(!state.exists(), "berthd created its state dir");
    // --check-config validates both files.
    let good = board_file(dir.path(), "board.toml", &[]);
    let (code, out, err) = run(Command::new(BERTHD)
        .arg("--config")
        .arg(&config)
        .arg("--board")
        .arg(&good)
        .arg("--check-config"));
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        format!(
            "{}: ok (0 vendors)\n{}: ok (board generic-x86_64)\n",
            config.display(),
            good.display()
        )
    );
    let (code, _, err) = run(Command::new(BERTHD).arg("--board"));
    assert_eq!(code, 2);
    assert!(
        err.starts_with("berthd: error: --board needs a file"),
        "{err}"
    );
}

/// The cgroup layout of this host, told apart the simple way.
fn host_layout() -> &'static str {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let v1 = mi.lines().any(|l| {
        l.contains(" - cgroup cgroup ")
            && [
                "cpu", "memory", "pids", "blkio", "cpuset", "devices", "freezer",
            ]
            .iter()
            .any(|c| l.split(',').any(|o| o.trim() == *c))
    });
    let v2 = mi.lines().any(|l| l.contains(" - cgroup2 "));
    match (v1, v2) {
        (true, true) => "hybrid",
        (true, false) => "v1",
        _ => "v2",
    }
}

#[test]
#[ignore = "privileged: needs root"]
fn check_board_on_this_host_prints_what_it_finds() {
    require_root();
    let (code, out, err) = run(Command::new(BERTH).arg("check-board").arg(generic()));
    let lines: Vec<&str> = out.lines().collect();
    // Namespaces, overlayfs, seccomp, cgroups: facts of every host Berth's
    // tests run on.
    let mut want = vec![
        "ok      kernel: mnt namespace: /proc/self/ns/mnt present".to_string(),
        "ok      kernel: net namespace: /proc/self/ns/net present".to_string(),
        "ok      kernel: cgroup namespace: /proc/self/ns/cgroup present".to_string(),
        "ok      kernel: overlayfs: overlay in /proc/filesystems".to_string(),
        "ok      kernel: seccomp filters: Seccomp_filters in /proc/self/status".to_string(),
        format!(
            "ok      cgroup: layout: {} (board expects any)",
            host_layout()
        ),
    ];
    let max_userns = std::fs::read_to_string("/proc/sys/user/max_user_namespaces").unwrap();
    want.push(format!(
        "ok      kernel: user namespace: /proc/self/ns/user present, user.max_user_namespaces = {}",
        max_userns.trim()
    ));
    if Path::new("/sys/class/bluetooth/hci0").exists() {
        want.push("ok      ble adapter hci0: /sys/class/bluetooth/hci0 present".into());
    } else {
        want.push("WARN    ble adapter hci0: /sys/class/bluetooth/hci0 absent; berthd starts without it and picks it up when it appears".into());
    }
    for w in &want {
        assert!(lines.contains(&w.as_str()), "no line {w:?} in:\n{out}{err}");
    }
    for prefix in [
        "ok      kernel: veth: ",
        "ok      kernel: bridge: ",
        "ok      kernel: nftables: ",
        "ok      kernel: nftables masquerade (network.masquerade): ",
        "ok      cgroup: memory controller: in v",
        "ok      cgroup: pids controller: in v",
        "ok      storage: images_dir /var/lib/berth/images: ",
        "ok      memory: total: MemTotal ",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(prefix)),
            "no line starting {prefix:?} in:\n{out}"
        );
    }
    // The broker line: a loopback probe, whatever its answer.
    let mqtt = lines
        .iter()
        .find(|l| l.contains("mqtt broker mqtt://127.0.0.1:1883: "))
        .unwrap_or_else(|| panic!("no broker line in:\n{out}"));
    let up = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:1883".parse().unwrap(),
        Duration::from_secs(2),
    )
    .is_ok();
    assert_eq!(mqtt.starts_with("ok "), up, "{mqtt}");
    // Nothing required is missing here: exit 0 and the count says so.
    assert_eq!(code, 0, "{out}{err}");
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("board generic-x86_64: ") && last.ends_with(", 0 MISSING"),
        "{last}"
    );
    // --json: the same checks.
    let (code, json, _) = run(Command::new(BERTH)
        .arg("check-board")
        .arg(generic())
        .arg("--json"));
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["name"], "generic-x86_64");
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.len(), lines.len() - 1);
    assert!(checks
        .iter()
        .any(|c| c["what"] == "kernel: overlayfs" && c["status"] == "ok"));
}

#[test]
#[ignore = "privileged: needs root"]
fn check_board_exits_1_when_a_required_adapter_is_missing() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let b = board_file(
        dir.path(),
        "generic-x86_64.toml",
        &[
            ("adapter = \"hci0\"", "adapter = \"hci97\""),
            ("required = false", "required = true"),
        ],
    );
    assert!(!Path::new("/sys/class/bluetooth/hci97").exists());
    let (code, out, _) = run(Command::new(BERTH).arg("check-board").arg(&b));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().any(|l| l
            == "MISSING ble adapter hci97: /sys/class/bluetooth/hci97 absent and the board requires it (ble.required = true)"),
        "{out}"
    );
    assert!(out.trim_end().ends_with(", 1 MISSING"), "{out}");
}

/// A berthd child, ended by PID (SIGTERM, then SIGKILL) and its cgroup
/// parent removed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
    cgroup_parent: String,
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; the exit code, or `None` after 20 s.
    fn stop(&mut self) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() && self.stop().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_dir(h.path().join(&self.cgroup_parent));
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&self.cgroup_parent));
    }
}

fn start_berthd(dir: &Path, board: &Path) -> Daemon {
    let state = dir.join("state");
    let cgroup_parent = format!("berth-bt{}", tag());
    let config = dir.join("berthd.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\ncgroup_parent = \"{cgroup_parent}\"\ngateway_id = \"gw-board\"\n",
            state.display()
        ),
    )
    .unwrap();
    let log = dir.join("berthd.log");
    let f = std::fs::File::create(&log).unwrap();
    let child = Command::new(BERTHD)
        .arg("--config")
        .arg(&config)
        .arg("--board")
        .arg(board)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f)
        .spawn()
        .unwrap();
    Daemon {
        child,
        log,
        cgroup_parent,
    }
}

#[test]
#[ignore = "privileged: needs root"]
fn berthd_logs_board_mismatches_and_runs() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let b = board_file(
        dir.path(),
        "board.toml",
        &[("adapter = \"hci0\"", "adapter = \"hci98\"")],
    );
    let mut d = start_berthd(dir.path(), &b);
    let end = Instant::now() + Duration::from_secs(30);
    while !d.log().contains("berthd running") {
        assert!(Instant::now() < end, "berthd did not start:\n{}", d.log());
        assert!(
            d.child.try_wait().unwrap().is_none(),
            "berthd exited:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = d.log();
    let warn = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("ble adapter hci98"))
        .unwrap_or_else(|| panic!("no warning about the adapter in:\n{log}"));
    assert!(
        warn.contains("board: /sys/class/bluetooth/hci98 absent; berthd starts without it"),
        "{warn}"
    );
    assert!(
        log.lines().any(|l| l.contains("state_dir")
            && l.contains("the configured state_dir is not the board's storage.state_dir")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("INFO")
            && l.contains("board generic-x86_64: ")
            && l.contains(", 0 MISSING")),
        "{log}"
    );
    assert_eq!(d.stop(), Some(0), "{}", d.log());
}

#[test]
#[ignore = "privileged: needs root"]
fn berthd_refuses_a_host_lacking_what_the_board_requires() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let b = board_file(
        dir.path(),
        "board.toml",
        &[
            ("adapter = \"hci0\"", "adapter = \"hci99\""),
            ("required = false", "required = true"),
        ],
    );
    let mut d = start_berthd(dir.path(), &b);
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "berthd kept running:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::fs::File::open(&d.log)
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    let last = log.lines().last().unwrap_or("");
    assert_eq!(
        last,
        format!(
            "berthd: error: this host lacks what board generic-x86_64 requires: ble adapter hci99 (/sys/class/bluetooth/hci99 absent and the board requires it (ble.required = true)); `berth check-board {}` lists every check",
            b.display()
        )
    );
    assert!(
        !dir.path().join("state").exists(),
        "berthd created its state dir"
    );
}

#[test]
#[ignore = "privileged: needs root"]
fn board_files_the_python_checker_and_the_rust_reader_agree_on() {
    require_root();
    let py = Path::new("/usr/bin/python3");
    let ok = Command::new(py)
        .args(["-c", "import tomllib"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "precondition missing: /usr/bin/python3 with tomllib (3.11+)"
    );
    let checker = boards().join("check");
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("", ""),
        ("schema = 1", "schema = 2"),
        ("target = \"x86_64-unknown-linux-gnu\"", "target = \"mips\""),
        ("memory_mib = 2048", "memory_mib = \"2G\""),
        ("baud = 115200", "baud = 115201"),
        ("path = \"/dev/ttyUSB*\"", "path = \"/dev/ttyUSB0\""),
        ("vendor = \"0403\"", "vendor = \"04G3\""),
        (
            "subclass = \"02\",",
            "subclass = \"02\", vendor = \"0403\",",
        ),
        ("name = \"usb-acm\"", "name = \"usb\""),
        ("adapter = \"hci0\"", "adapter = \"bt0\""),
        ("127.0.0.1:1883", "127.0.0.1:99999"),
        (
            "topic_prefix = \"berth/devices\"",
            "topic_prefix = \"berth/#\"",
        ),
        ("bridge = \"berth0\"", "bridge = \"Berth0\""),
        (
            "bridge_address = \"10.88.0.1/24\"",
            "bridge_address = \"10.88.0.0/24\"",
        ),
        (
            "jail_range = \"10.88.0.0/24\"",
            "jail_range = \"10.88.0.1/24\"",
        ),
        (
            "jail_range = \"10.88.0.0/24\"",
            "jail_range = \"fd00::/64\"",
        ),
        ("uplink = \"auto\"", "uplink = \"a b\""),
        ("masquerade = true", "masquerade = \"yes\""),
        (
            "images_dir = \"/var/lib/berth/images\"",
            "images_dir = \"/srv/images\"",
        ),
        ("expect = \"any\"", "expect = \"v3\""),
        (
            "[\"cpu\", \"memory\", \"pids\"]",
            "[\"cpu\", \"memory\", \"pids\", \"pids\"]",
        ),
        ("[\"cpu\", \"memory\", \"pids\"]", "[\"cpu\", \"memory\"]"),
        ("max_jails = 4", "max_jails = 0"),
        ("max_jails = 4", "max_jails = 6"),
        ("jail_max_mib = 1024", "jail_max_mib = 2000"),
        ("masquerade = true", "masquerade = true\nnat = true"),
    ];
    for (from, to) in cases {
        let f = board_file(dir.path(), "generic-x86_64.toml", &[(from, to)]);
        let (rust, _, rerr) = run(Command::new(BERTH).arg("check-board").arg(&f));
        let (python, pout, _) = run(Command::new(py).arg(&checker).arg(&f));
        let rust_ok = rust != 2;
        let python_ok = python == 0;
        assert_eq!(
            rust_ok, python_ok,
            "{from:?} -> {to:?}: berth says {rerr:?}, board-configs/check says {pout:?}"
        );
        assert_eq!(rust_ok, from.is_empty(), "{from:?} -> {to:?}: {rerr}{pout}");
    }
}

//! End to end: a fake serial device, `berth-vendor` on loopback, a real OCI
//! registry on loopback and `berthd` with a temp state dir. Approval gates
//! the jail; the app answers from inside it; a published update is applied
//! without a technician; an update whose check fails is rolled back and
//! reported.
//!
//! Peers are started by the test and ended by PID. Binaries come from the
//! test's target dir: build the workspace first, including the examples
//! (`cargo build --workspace --examples`).

// Test code: a failed step must fail the test, helpers included.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use berth_tests::{build_rootfs, require_path, require_root, wait_until, TestEnv};
use serde_json::Value;

/// A child process ended by PID (SIGTERM, then SIGKILL) on drop.
struct Peer {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Peer {
    fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Peer {
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Peer { name, child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if berth_tests::wait_timeout(&mut self.child, Duration::from_secs(15)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log());
        }
    }
}

fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

fn require_bin(rel: &str) -> PathBuf {
    let p = bin_dir().join(rel);
    if !p.is_file() {
        panic!(
            "precondition missing: {} (cargo build --workspace --examples with the tests' target dir)",
            p.display()
        );
    }
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(cmd: &mut Command) -> String {
    let out: Output = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn http_ok(addr: &str) -> bool {
    if let Ok(mut s) = TcpStream::connect(addr) {
        let _ = write!(s, "GET /v2/ HTTP/1.0\r\n\r\n");
        let mut line = String::new();
        let _ = BufReader::new(s).read_line(&mut line);
        return line.contains(" 200 ");
    }
    false
}

fn http_get(host: &str, port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &format!("{host}:{port}").parse().ok()?,
        Duration::from_secs(3),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    if !body.starts_with("HTTP/1.") || !body.contains(" 200 ") {
        return None;
    }
    body.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// One request on berthd's API socket (4-byte length, JSON); `None` when
/// berthd is not (yet) there.
fn try_api(sock: &Path, req: Value) -> Option<Value> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let body = serde_json::to_vec(&req).ok()?;
    s.write_all(&(body.len() as u32).to_be_bytes()).ok()?;
    s.write_all(&body).ok()?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut buf = vec![0; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).ok()?;
    serde_json::from_slice(&buf).ok()
}

fn api(sock: &Path, req: Value) -> Value {
    try_api(sock, req.clone()).unwrap_or_else(|| panic!("berthd did not answer {req}"))
}

fn devices(sock: &Path) -> Vec<Value> {
    let r = try_api(sock, serde_json::json!({"op": "devices"})).unwrap_or(Value::Null);
    r["data"].as_array().cloned().unwrap_or_default()
}

/// Builds a one-layer OCI image from a busybox rootfs and pushes it;
/// returns `registry/repo@digest`.
fn push_image(work: &Path, registry: &str, repo: &str) -> String {
    let rootfs = work.join("img-rootfs");
    build_rootfs(&rootfs).unwrap();
    std::fs::create_dir_all(rootfs.join("www")).unwrap();
    std::fs::write(rootfs.join("www/health"), "ok\n").unwrap();
    let layout = work.join("oci");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    let img = format!("{}:app", layout.display());
    run(Command::new("umoci").args(["new", "--image", &img]));
    let bundle = work.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &img])
        .arg(&bundle));
    let status = Command::new("cp")
        .args([
            "-a",
            &format!("{}/.", rootfs.display()),
            &format!("{}/rootfs/", bundle.display()),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    run(Command::new("umoci")
        .args(["repack", "--image", &img])
        .arg(&bundle));
    run(Command::new("umoci").args(["config", "--image", &img, "--config.entrypoint", "/bin/sh"]));
    let dest = format!("docker://{registry}/{repo}:v1");
    run(Command::new("skopeo").args([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{img}"),
        &dest,
    ]));
    let digest = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &dest,
    ]));
    format!("{registry}/{repo}@{}", digest.trim())
}

fn template(vendor: &str, image: &str, script: &str, extra_check: &str) -> String {
    format!(
        r#"vendor = "{vendor}"

[jail]
name = "app"
memory_mib = 64
cpu_millis = 500
pids = 64
network = true
serial = true

[[app]]
name = "web"
image = "{image}"
command = ["/bin/sh", "-c", "{script}"]

[[app.check]]
process = "httpd"
timeout_ms = 10000

[[app.check]]
http = {{ port = 8080, path = "/health" }}
timeout_ms = 10000
{extra_check}
"#
    )
}

/// Everything one provisioning test runs against.
struct Rig {
    env: TestEnv,
    work: PathBuf,
    vendor: String,
    serial: String,
    image: String,
    db: PathBuf,
    vendor_bin: PathBuf,
    berthd: PathBuf,
    config: PathBuf,
    state: PathBuf,
    sock: PathBuf,
    vport: u16,
    vkey: PathBuf,
    fake_device: PathBuf,
    dev1: PathBuf,
    // Dropped (ended) in reverse order of start.
    peers: Vec<Peer>,
}

const MODEL: &str = "Test Meter";
const V1: &str = "echo 1 > /www/version; exec httpd -f -p 8080 -h /www";

impl Rig {
    fn vendor_cmd(&self) -> Command {
        let mut c = Command::new(&self.vendor_bin);
        c.arg("--db").arg(&self.db);
        c
    }

    fn publish(&self, n: u32, script: &str, extra: &str) {
        let f = self.work.join(format!("t{n}.toml"));
        std::fs::write(&f, template(&self.vendor, &self.image, script, extra)).unwrap();
        run(self
            .vendor_cmd()
            .args(["publish", "--model", MODEL, "--template"])
            .arg(&f));
    }

    /// `berth-vendor serve` on the rig's port with database `db`.
    fn serve_vendor(&self, db: &Path) -> Peer {
        let mut c = Command::new(&self.vendor_bin);
        c.arg("--db")
            .arg(db)
            .args([
                "serve",
                "--insecure-http",
                "--listen",
                &format!("127.0.0.1:{}", self.vport),
                "--key",
            ])
            .arg(&self.vkey);
        let n = std::fs::read_dir(&self.work).unwrap().count();
        let p = Peer::spawn("berth-vendor", c, self.work.join(format!("vendor-{n}.log")));
        let port = self.vport;
        assert!(
            wait_until(Duration::from_secs(20), || TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "berth-vendor did not come up"
        );
        p
    }

    /// The fake device on its end of the pty pair.
    fn start_device(&mut self) {
        let mut fd = Command::new(&self.fake_device);
        fd.arg(&self.dev1).args([
            "--vendor",
            &self.vendor,
            "--model",
            MODEL,
            "--serial",
            &self.serial,
            "--endpoint",
            &format!("http://127.0.0.1:{}", self.vport),
        ]);
        let p = Peer::spawn("fake-device", fd, self.work.join("device.log"));
        self.peers.push(p);
    }

    fn start_berthd(&self) -> Peer {
        let mut bd = Command::new(&self.berthd);
        bd.arg("--config").arg(&self.config).env("RUST_LOG", "info");
        let n = std::fs::read_dir(&self.work).unwrap().count();
        Peer::spawn("berthd", bd, self.work.join(format!("berthd-{n}.log")))
    }

    fn pending(&self) -> Option<Value> {
        if !self.sock.exists() {
            return None;
        }
        let r = try_api(&self.sock, serde_json::json!({"op": "pending"}))?;
        r["data"].as_array().and_then(|a| a.first().cloned())
    }

    fn stage_is(&self, want: &str, version: u64) -> bool {
        self.sock.exists()
            && devices(&self.sock)
                .iter()
                .any(|d| d["stage"] == want && d["running_version"] == version)
    }

    fn jails(&self) -> Vec<Value> {
        api(&self.sock, serde_json::json!({"op": "jails"}))["data"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Jail dirs, overlay dirs, and the runtime's view.
    fn host_jails(&self) -> (usize, usize) {
        let count = |p: PathBuf| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
        (
            count(self.state.join("jails")),
            count(self.state.join("overlay")),
        )
    }

    fn berth(&self, args: &[&str]) -> Output {
        Command::new(berth_tests::berth_bin())
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--cgroup-parent")
            .arg(&self.env.cgroup_parent)
            .args(args)
            .output()
            .unwrap()
    }

    /// Removes every jail of the state dir with `berth jail rm --force`.
    fn remove_jails(&self) {
        let ls = self.berth(&["jail", "ls", "--json"]);
        let ls: Value = serde_json::from_slice(&ls.stdout).unwrap_or(Value::Null);
        for j in ls.as_array().into_iter().flatten() {
            let name = j["name"].as_str().unwrap();
            let out = self.berth(&["jail", "rm", "--force", name]);
            assert!(
                out.status.success(),
                "rm {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        while let Some(p) = self.peers.pop() {
            drop(p);
        }
        if std::thread::panicking() {
            self.remove_jails();
        }
    }
}

fn setup() -> Rig {
    let mut rig = setup_without_device();
    rig.start_device();
    rig
}

fn setup_without_device() -> Rig {
    require_root();
    for (p, what) in [
        (
            "/usr/bin/docker-registry",
            "apt-get install docker-registry",
        ),
        ("/usr/bin/skopeo", "apt-get install skopeo"),
        ("/usr/bin/umoci", "apt-get install umoci"),
        ("/usr/bin/socat", "apt-get install socat"),
    ] {
        require_path(p, what);
    }
    let berthd = require_bin("berthd");
    let vendor_bin = require_bin("berth-vendor");
    let fake_device = require_bin("examples/fake-device");
    require_bin("berth-init");

    let env = TestEnv::new();
    let work = env.dir.path().to_path_buf();
    let vendor = env.vendor("");
    let mut peers = Vec::new();

    // Registry with the app image.
    let reg_port = free_port();
    let registry = format!("127.0.0.1:{reg_port}");
    std::fs::write(
        work.join("registry.yml"),
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {registry}\n",
            work.join("registry-data").display()
        ),
    )
    .unwrap();
    let mut reg_cmd = Command::new("/usr/bin/docker-registry");
    reg_cmd.arg("serve").arg(work.join("registry.yml"));
    peers.push(Peer::spawn(
        "docker-registry",
        reg_cmd,
        work.join("registry.log"),
    ));
    assert!(
        wait_until(Duration::from_secs(20), || http_ok(&registry)),
        "registry did not come up"
    );
    let image = push_image(&work, &registry, &format!("{vendor}/web"));

    // The vendor: key, device registry, first plan version.
    let db = work.join("vendor.db");
    let vkey = work.join("vendor.key");
    let vendor_cmd = || {
        let mut c = Command::new(&vendor_bin);
        c.arg("--db").arg(&db);
        c
    };
    let vendor_pub = run(vendor_cmd().arg("keygen").arg("--out").arg(&vkey))
        .trim()
        .to_string();
    let device_pub = run(Command::new(&fake_device).arg("--print-public-key"))
        .trim()
        .to_string();
    let serial = format!("SN-{}", env.tag);
    run(vendor_cmd().args([
        "device",
        "add",
        "--serial",
        &serial,
        "--model",
        MODEL,
        "--public-key",
        &device_pub,
    ]));
    let vport = free_port();
    let vurl = format!("http://127.0.0.1:{vport}");
    let mut serve = vendor_cmd();
    serve
        .args([
            "serve",
            "--insecure-http",
            "--listen",
            &format!("127.0.0.1:{vport}"),
            "--key",
        ])
        .arg(&vkey);
    peers.push(Peer::spawn("berth-vendor", serve, work.join("vendor.log")));
    assert!(
        wait_until(Duration::from_secs(20), || TcpStream::connect((
            "127.0.0.1",
            vport
        ))
        .is_ok()),
        "berth-vendor did not come up"
    );

    // The device on one end of a pty pair; berthd reads the other.
    let dev0 = work.join("dev0");
    let dev1 = work.join("dev1");
    let mut socat = Command::new("socat");
    socat.args([
        &format!("pty,raw,echo=0,link={}", dev0.display()),
        &format!("pty,raw,echo=0,link={}", dev1.display()),
    ]);
    peers.push(Peer::spawn("socat", socat, work.join("socat.log")));
    assert!(
        wait_until(Duration::from_secs(10), || dev0.exists() && dev1.exists()),
        "no pty pair"
    );

    let state = env.state_dir.clone();
    let config = work.join("berthd.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{}"
cgroup_parent = "{}"
gateway_id = "gw-test"
poll_interval = "500ms"
request_timeout = "5s"
[detect]
serial = ["{}"]
[[vendor]]
id = "{vendor}"
url = "{vurl}"
key = "{vendor_pub}"
approval = "manual"
"#,
            state.display(),
            env.cgroup_parent,
            dev0.display()
        ),
    )
    .unwrap();
    let sock = state.join("berthd.sock");
    Rig {
        env,
        work,
        vendor,
        serial,
        image,
        db,
        vendor_bin,
        berthd,
        config,
        state,
        sock,
        vport,
        vkey,
        fake_device,
        dev1,
        peers,
    }
}

#[test]
#[ignore = "privileged: needs root"]
fn approval_gates_the_jail_updates_apply_and_a_failing_update_rolls_back() {
    let rig = setup();
    // The device's serial node is passed into the jail (and checked there).
    rig.publish(
        1,
        V1,
        "\n[[app.check]]\nfile = \"/dev/berth-serial0\"\ntimeout_ms = 2000\n",
    );
    let mut daemon = rig.start_berthd();

    // The request waits for a technician; nothing is built meanwhile.
    assert!(
        wait_until(Duration::from_secs(60), || rig.pending().is_some()),
        "no pending request"
    );
    std::thread::sleep(Duration::from_secs(2));
    let req = rig.pending().unwrap();
    // Only root may talk to berthd: the socket is 0600 and root's.
    let meta = std::fs::metadata(&rig.sock).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
    assert_eq!(req["vendor"], rig.vendor.as_str());
    assert_eq!(req["serial"], rig.serial.as_str());
    assert_eq!(rig.host_jails(), (0, 0), "a jail was built before approval");

    let id = req["id"].as_u64().unwrap();
    let r = api(&rig.sock, serde_json::json!({"op": "approve", "id": id}));
    assert_eq!(r["result"], "ok", "{r}");
    assert!(
        wait_until(Duration::from_secs(120), || rig.stage_is("running", 1)),
        "not running: {:?}",
        devices(&rig.sock)
    );
    let jails = rig.jails();
    let addr = jails[0]["address"]
        .as_str()
        .expect("jail address")
        .to_string();
    assert_eq!(http_get(&addr, 8080, "/version").as_deref(), Some("1\n"));
    // Logs of a managed jail; an unknown jail is a usage error.
    let name = jails[0]["name"].as_str().unwrap().to_string();
    let r = api(&rig.sock, serde_json::json!({"op": "logs", "jail": name}));
    assert_eq!(r["result"], "ok", "{r}");
    let r = api(&rig.sock, serde_json::json!({"op": "logs", "jail": "nope"}));
    assert_eq!(
        (r["usage"].as_bool(), r["message"].as_str()),
        (Some(true), Some("no jail named 'nope'")),
        "{r}"
    );
    let st = api(&rig.sock, serde_json::json!({"op": "status"}));
    assert_eq!(st["data"]["devices"]["running"], 1, "{st}");
    // The vendor's bridge is under the state dir's firewall table
    // (isolation from other vendors, NAT egress).
    let table = berth_tests::host::nft_table_name(&rig.state);
    assert_eq!(
        berth_tests::host::nft_table_exists(&table),
        Some(true),
        "no table {table}"
    );

    // An update: published, polled, applied, no technician.
    rig.publish(
        2,
        "echo 2 > /www/version; exec httpd -f -p 8080 -h /www",
        "",
    );
    assert!(
        wait_until(Duration::from_secs(120), || rig.stage_is("running", 2)),
        "update not applied: {:?}",
        devices(&rig.sock)
    );
    // The old version's jail goes once the new one is committed.
    assert!(
        wait_until(Duration::from_secs(30), || rig.jails().len() == 1),
        "old version's jail still there: {:?}",
        rig.jails()
    );
    let jails = rig.jails();
    let addr = jails[0]["address"].as_str().unwrap().to_string();
    assert_eq!(http_get(&addr, 8080, "/version").as_deref(), Some("2\n"));

    // An update whose check fails: rolled back, version 2 keeps answering.
    rig.publish(
        3,
        "echo 3 > /www/version; exec httpd -f -p 8080 -h /www",
        "\n[[app.check]]\nfile = \"/www/missing\"\ntimeout_ms = 1000\n",
    );
    assert!(
        wait_until(Duration::from_secs(120), || rig.stage_is("rolled-back", 2)),
        "failed update not rolled back: {:?}",
        devices(&rig.sock)
    );
    assert_eq!(http_get(&addr, 8080, "/version").as_deref(), Some("2\n"));
    assert!(
        wait_until(Duration::from_secs(30), || rig.jails().len() == 1),
        "the failed version's jail is still there: {:?}",
        rig.jails()
    );
    // The report follows the commit; wait for it.
    let report_of = |v: u64| {
        let text = run(rig.vendor_cmd().args(["reports", "--json"]));
        let all: Value = serde_json::from_str(&text).unwrap();
        all.as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == v)
            .cloned()
    };
    assert!(
        wait_until(Duration::from_secs(30), || report_of(3).is_some()),
        "no report of version 3"
    );
    let rb = report_of(3).unwrap();
    assert_eq!(rb["state"], "rolledback", "{rb}");
    assert!(
        rb["error"].as_str().unwrap_or("").contains("/www/missing"),
        "{rb}"
    );

    // The jail outlives berthd; then everything goes.
    daemon.stop();
    assert_eq!(http_get(&addr, 8080, "/version").as_deref(), Some("2\n"));
    rig.remove_jails();
    // berthd's own data (store, image layers, broker passwords) is not a
    // leftover; everything else must be gone.
    for f in ["berthd.redb", "images", "mqtt", "data"] {
        let p = rig.state.join(f);
        let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
    }
    rig.env.assert_no_leftovers(&[&rig.vendor]);
}

#[test]
#[ignore = "privileged: needs root"]
fn berthd_killed_at_random_points_comes_back_and_converges() {
    let rig = setup();
    rig.publish(1, V1, "");
    let trials: u32 = std::env::var("BERTH_KILL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    // xorshift seeded from the pid: different kill points on every run,
    // printed so that a failing run can be told apart.
    let mut x = u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for t in 0..trials {
        let mut first = rig.start_berthd();
        assert!(
            wait_until(Duration::from_secs(60), || rig.pending().is_some()),
            "trial {t}: no pending request"
        );
        let id = rig.pending().unwrap()["id"].as_u64().unwrap();
        let r = api(&rig.sock, serde_json::json!({"op": "approve", "id": id}));
        assert_eq!(r["result"], "ok", "trial {t}: {r}");
        let delay = Duration::from_millis(next() % 900);
        std::thread::sleep(delay);
        let pid = nix::unistd::Pid::from_raw(first.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        let _ = first.child.wait();
        eprintln!("trial {t}: killed berthd {delay:?} after approving request {id}");

        let mut second = rig.start_berthd();
        assert!(
            wait_until(Duration::from_secs(120), || rig.stage_is("running", 1)),
            "trial {t} (killed after {delay:?}): did not converge: {:?}",
            devices(&rig.sock)
        );
        assert!(
            rig.pending().is_none(),
            "trial {t}: the approval was asked again"
        );
        assert!(
            wait_until(Duration::from_secs(30), || rig.host_jails() == (1, 1)),
            "trial {t}: jails and overlays on the host: {:?}",
            rig.host_jails()
        );
        let jails = rig.jails();
        assert_eq!(jails.len(), 1, "trial {t}: {jails:?}");
        let addr = jails[0]["address"].as_str().unwrap().to_string();
        assert_eq!(
            http_get(&addr, 8080, "/version").as_deref(),
            Some("1\n"),
            "trial {t}: the app does not answer"
        );
        // Start over: the device is provisioned anew by the next trial.
        let name = jails[0]["name"].as_str().unwrap().to_string();
        let r = api(
            &rig.sock,
            serde_json::json!({"op": "jail-reset", "jail": name}),
        );
        assert_eq!(r["result"], "ok", "trial {t}: {r}");
        assert_eq!(
            rig.host_jails(),
            (0, 0),
            "trial {t}: reset left a jail behind"
        );
        second.stop();
    }
    // Every approval is in the audit trail of the store, and nothing is
    // left on the host.
    rig.remove_jails();
    for f in ["berthd.redb", "images", "mqtt", "data"] {
        let p = rig.state.join(f);
        let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
    }
    rig.env.assert_no_leftovers(&[&rig.vendor]);
}

#[test]
#[ignore = "privileged: needs root"]
fn a_plan_signed_with_another_key_is_refused_and_nothing_is_built() {
    let rig = setup();
    rig.publish(1, V1, "");
    // The registry lists a key the vendor did not sign with.
    let text = std::fs::read_to_string(&rig.config).unwrap();
    let other = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
    let key_line = text
        .lines()
        .find(|l| l.starts_with("key = "))
        .unwrap()
        .to_string();
    std::fs::write(
        &rig.config,
        text.replace(&key_line, &format!("key = \"{other}\"")),
    )
    .unwrap();
    let _daemon = rig.start_berthd();
    assert!(
        wait_until(Duration::from_secs(60), || devices(&rig.sock)
            .iter()
            .any(|d| d["stage"] == "failed")),
        "request not refused: {:?}",
        devices(&rig.sock)
    );
    let d = devices(&rig.sock);
    let err = d[0]["error"].as_str().unwrap_or("");
    assert!(
        err.contains("signature does not verify"),
        "error names the signature: {err}"
    );
    assert!(rig.pending().is_none());
    assert_eq!(
        rig.host_jails(),
        (0, 0),
        "a jail was built for a forged plan"
    );
}

#[test]
#[ignore = "privileged: needs root"]
fn a_replayed_older_plan_version_is_refused() {
    let mut rig = setup();
    rig.publish(1, V1, "");
    let daemon = rig.start_berthd();
    assert!(
        wait_until(Duration::from_secs(60), || rig.pending().is_some()),
        "no pending request"
    );
    let id = rig.pending().unwrap()["id"].as_u64().unwrap();
    api(&rig.sock, serde_json::json!({"op": "approve", "id": id}));
    assert!(
        wait_until(Duration::from_secs(120), || rig.stage_is("running", 1)),
        "v1 not running"
    );

    // Keep the vendor's database as it was at version 1 (stopped, so the
    // WAL is checkpointed into the file).
    rig.peers[1].stop();
    let old_db = rig.work.join("vendor-v1.db");
    std::fs::copy(&rig.db, &old_db).unwrap();
    let db = rig.db.clone();
    rig.peers[1] = rig.serve_vendor(&db);
    rig.publish(
        2,
        "echo 2 > /www/version; exec httpd -f -p 8080 -h /www",
        "",
    );
    assert!(
        wait_until(Duration::from_secs(120), || rig.stage_is("running", 2)),
        "v2 not running"
    );

    // A server replaying the signed version 1: refused, version 2 stays.
    rig.peers[1].stop();
    rig.peers[1] = rig.serve_vendor(&old_db);
    assert!(
        wait_until(Duration::from_secs(30), || daemon
            .log()
            .contains("version 1 is older than version 2 already accepted")),
        "replay not refused; berthd log:\n{}",
        daemon.log()
    );
    assert!(rig.stage_is("running", 2), "{:?}", devices(&rig.sock));
    assert!(
        wait_until(Duration::from_secs(30), || rig.jails().len() == 1),
        "{:?}",
        rig.jails()
    );
    let addr = rig.jails()[0]["address"].as_str().unwrap().to_string();
    assert_eq!(http_get(&addr, 8080, "/version").as_deref(), Some("2\n"));
    drop(daemon);
    rig.remove_jails();
}

#[test]
#[ignore = "privileged: needs root"]
fn a_running_vendor_gets_broker_credentials_limited_to_its_topics() {
    for (p, what) in [
        ("/usr/sbin/mosquitto", "apt-get install mosquitto"),
        (
            "/usr/bin/mosquitto_pub",
            "apt-get install mosquitto-clients",
        ),
        (
            "/usr/bin/mosquitto_sub",
            "apt-get install mosquitto-clients",
        ),
    ] {
        require_path(p, what);
    }
    let mut rig = setup();
    rig.publish(1, V1, "");
    // A broker that reads berthd's ACL and password files.
    let acl = rig.work.join("berth.acl");
    let pw = rig.work.join("berth.passwd");
    std::fs::write(&acl, "").unwrap();
    std::fs::write(&pw, "").unwrap();
    // mosquitto reads its files as its own user after dropping root; the
    // files berthd rewrites keep this owner and mode.
    let user = nix::unistd::User::from_name("mosquitto")
        .unwrap()
        .unwrap_or_else(|| {
            panic!("precondition missing: user mosquitto (apt-get install mosquitto)")
        });
    for f in [&acl, &pw] {
        std::os::unix::fs::chown(f, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let port = free_port();
    let conf = rig.work.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nacl_file {}\n",
            pw.display(),
            acl.display()
        ),
    )
    .unwrap();
    let mut m = Command::new("/usr/sbin/mosquitto");
    m.arg("-c").arg(&conf);
    let broker = Peer::spawn("mosquitto", m, rig.work.join("mosquitto.log"));
    let pid_file = rig.work.join("mosquitto.pid");
    std::fs::write(&pid_file, format!("{}\n", broker.child.id())).unwrap();
    rig.peers.push(broker);
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "mosquitto did not come up"
    );
    let mut text = std::fs::read_to_string(&rig.config).unwrap();
    let at = text.find("[detect]").unwrap();
    text.insert_str(
        at,
        &format!(
            "[mqtt_routing]\nacl_file = \"{}\"\npassword_file = \"{}\"\npid_file = \"{}\"\nbroker = \"10.213.0.1:{port}\"\n",
            acl.display(),
            pw.display(),
            pid_file.display()
        ),
    );
    std::fs::write(&rig.config, text).unwrap();

    let daemon = rig.start_berthd();
    assert!(
        wait_until(Duration::from_secs(60), || rig.pending().is_some()),
        "no pending request"
    );
    let id = rig.pending().unwrap()["id"].as_u64().unwrap();
    api(&rig.sock, serde_json::json!({"op": "approve", "id": id}));
    assert!(
        wait_until(Duration::from_secs(120), || rig.stage_is("running", 1)),
        "not running"
    );
    let v = rig.vendor.clone();
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&acl)
            .unwrap_or_default()
            .contains(&format!("user {v}\ntopic readwrite berth/dev/{v}/#"))),
        "acl: {:?}",
        std::fs::read_to_string(&acl)
    );
    // The jail's credentials sit in its own rootfs.
    let jail = rig.jails()[0]["name"].as_str().unwrap().to_string();
    let creds = std::fs::read_to_string(
        rig.state
            .join("overlay")
            .join(&jail)
            .join("upper/etc/berth/mqtt.conf"),
    )
    .unwrap();
    let password = creds
        .lines()
        .find_map(|l| l.strip_prefix("password="))
        .unwrap()
        .to_string();
    assert!(creds.contains(&format!("username={v}\n")), "{creds}");
    // Give the broker a moment to reload on SIGHUP, then use them: the
    // vendor's own topics pass, another vendor's do not.
    std::thread::sleep(Duration::from_millis(500));
    let sub = Command::new("/usr/bin/mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-u",
            &v,
            "-P",
            &password,
        ])
        .args(["-t", "berth/dev/#", "-v", "-C", "1", "-W", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let publish = |topic: &str, user: &str, pass: &str| {
        Command::new("/usr/bin/mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-u",
                user,
                "-P",
                pass,
            ])
            .args(["-t", topic, "-m", "hello"])
            .output()
            .unwrap()
    };
    publish("berth/dev/othervendor/x", &v, &password);
    let ok = publish(&format!("berth/dev/{v}/meter"), &v, &password);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = publish(&format!("berth/dev/{v}/meter"), &v, "wrong-password");
    assert!(!bad.status.success(), "a wrong password was accepted");
    let out = sub.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("berth/dev/{v}/meter hello\n"),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(daemon);
    rig.remove_jails();
}

#[test]
#[ignore = "privileged: needs root"]
fn a_pairing_window_approves_the_vendors_new_devices() {
    let mut rig = setup_without_device();
    rig.publish(1, V1, "");
    let _daemon = rig.start_berthd();
    assert!(
        wait_until(Duration::from_secs(30), || try_api(
            &rig.sock,
            serde_json::json!({"op": "status"})
        )
        .is_some()),
        "berthd did not come up"
    );
    // Only vendors of the registry can be paired.
    let r = api(
        &rig.sock,
        serde_json::json!({"op": "pair", "vendor": "nobody", "secs": 60}),
    );
    assert_eq!(
        (r["result"].as_str(), r["usage"].as_bool()),
        (Some("error"), Some(true)),
        "{r}"
    );
    let r = api(
        &rig.sock,
        serde_json::json!({"op": "pair", "vendor": rig.vendor, "secs": 600}),
    );
    assert_eq!(r["result"], "ok", "{r}");
    let status = api(&rig.sock, serde_json::json!({"op": "status"}));
    assert_eq!(
        status["data"]["pairing"][0],
        rig.vendor.as_str(),
        "{status}"
    );
    // The device shows while the window is open: no technician needed.
    rig.start_device();
    assert!(
        wait_until(Duration::from_secs(120), || rig.stage_is("running", 1)),
        "not provisioned by the pairing window: {:?}",
        devices(&rig.sock)
    );
    assert!(rig.pending().is_none());
    rig.remove_jails();
}

#[test]
#[ignore = "privileged: needs root"]
fn a_denied_request_builds_nothing_and_is_reported_refused() {
    let rig = setup();
    rig.publish(1, V1, "");
    let _daemon = rig.start_berthd();
    assert!(
        wait_until(Duration::from_secs(60), || rig.pending().is_some()),
        "no pending request"
    );
    let id = rig.pending().unwrap()["id"].as_u64().unwrap();
    let r = api(
        &rig.sock,
        serde_json::json!({"op": "deny", "id": id, "reason": "not on this site"}),
    );
    assert_eq!(r["result"], "ok", "{r}");
    let report = || {
        let text = run(rig.vendor_cmd().args(["reports", "--json"]));
        let all: Value = serde_json::from_str(&text).unwrap();
        all.as_array().unwrap().first().cloned()
    };
    assert!(
        wait_until(Duration::from_secs(30), || report().is_some()),
        "no report"
    );
    let rep = report().unwrap();
    assert_eq!(rep["state"], "refused", "{rep}");
    assert!(
        rep["error"]
            .as_str()
            .unwrap_or("")
            .contains("not on this site"),
        "{rep}"
    );
    let d = devices(&rig.sock);
    assert_eq!(d[0]["stage"], "denied", "{d:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        rig.host_jails(),
        (0, 0),
        "a jail was built for a denied request"
    );
}

#[test]
#[ignore = "privileged: needs root"]
fn updates_interrupted_by_kill_converge_to_the_new_version() {
    let rig = setup();
    rig.publish(1, V1, "");
    let mut daemon = rig.start_berthd();
    assert!(
        wait_until(Duration::from_secs(60), || rig.pending().is_some()),
        "no pending request"
    );
    let id = rig.pending().unwrap()["id"].as_u64().unwrap();
    api(&rig.sock, serde_json::json!({"op": "approve", "id": id}));
    assert!(
        wait_until(Duration::from_secs(120), || rig.stage_is("running", 1)),
        "v1 not running"
    );
    let trials: u64 = std::env::var("BERTH_KILL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut x = u64::from(std::process::id()).wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
    for v in 2..2 + trials {
        let script = format!("echo {v} > /www/version; exec httpd -f -p 8080 -h /www");
        rig.publish(v as u32, &script, "");
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Polls come every 500 ms; a build takes a few hundred more.
        let delay = Duration::from_millis(x % 1500);
        std::thread::sleep(delay);
        let pid = nix::unistd::Pid::from_raw(daemon.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        let _ = daemon.child.wait();
        daemon = rig.start_berthd();
        assert!(
            wait_until(Duration::from_secs(120), || rig.stage_is("running", v)),
            "version {v} (killed after {delay:?}) not converged: {:?}",
            devices(&rig.sock)
        );
        assert!(
            wait_until(Duration::from_secs(30), || rig.host_jails() == (1, 1)),
            "version {v} (killed after {delay:?}): jails and overlays: {:?}",
            rig.host_jails()
        );
        let jails = rig.jails();
        let addr = jails[0]["address"].as_str().unwrap().to_string();
        assert_eq!(
            http_get(&addr, 8080, "/version"),
            Some(format!("{v}\n")),
            "version {v}: the app does not answer"
        );
    }
    daemon.stop();
    rig.remove_jails();
    for f in ["berthd.redb", "images", "mqtt", "data"] {
        let p = rig.state.join(f);
        let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
    }
    rig.env.assert_no_leftovers(&[&rig.vendor]);
}

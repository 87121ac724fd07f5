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
    push_image_with(work, registry, repo, "img", &[("www/health", "ok\n")])
}

/// [`push_image`] with `files` (path in the image, content) added to the
/// busybox rootfs; `name` keeps its work dirs apart from other images'.
fn push_image_with(
    work: &Path,
    registry: &str,
    repo: &str,
    name: &str,
    files: &[(&str, &str)],
) -> String {
    let rootfs = work.join(format!("{name}-rootfs"));
    build_rootfs(&rootfs).unwrap();
    for (path, text) in files {
        let p = rootfs.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let layout = work.join(format!("{name}-oci"));
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    let img = format!("{}:app", layout.display());
    run(Command::new("umoci").args(["new", "--image", &img]));
    let bundle = work.join(format!("{name}-bundle"));
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

    /// Publishes a template given as text.
    fn publish_text(&self, n: u32, text: &str) {
        let f = self.work.join(format!("t{n}.toml"));
        std::fs::write(&f, text).unwrap();
        run(self
            .vendor_cmd()
            .args(["publish", "--model", MODEL, "--template"])
            .arg(&f));
    }

    /// The registry's `host:port`.
    fn registry(&self) -> String {
        self.image.split('/').next().unwrap().to_string()
    }

    /// Every report the vendor stored, as `berth-vendor reports --json`
    /// prints them.
    fn reports(&self) -> Vec<Value> {
        let text = run(self.vendor_cmd().args(["reports", "--json"]));
        serde_json::from_str::<Value>(&text)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Approves the pending requests as they show up until `want` were
    /// approved; returns their ids.
    fn approve_pending(&self, want: usize) -> Vec<u64> {
        let mut done = Vec::new();
        assert!(
            wait_until(Duration::from_secs(90), || {
                let r = try_api(&self.sock, serde_json::json!({"op": "pending"}));
                for p in r
                    .and_then(|r| r["data"].as_array().cloned())
                    .unwrap_or_default()
                {
                    let id = p["id"].as_u64().unwrap();
                    if !done.contains(&id) {
                        let r = api(&self.sock, serde_json::json!({"op": "approve", "id": id}));
                        assert_eq!(r["result"], "ok", "{r}");
                        done.push(id);
                    }
                }
                done.len() >= want
            }),
            "only {} of {want} requests showed: {:?}",
            done.len(),
            devices(&self.sock)
        );
        done
    }

    /// The device whose serial is `serial`, as `devices` shows it.
    fn device(&self, serial: &str) -> Option<Value> {
        devices(&self.sock)
            .into_iter()
            .find(|d| d["serial"] == serial)
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
    for f in ["berthd.redb", "images", "mqtt", "data", "announce-counters"] {
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
    for f in ["berthd.redb", "images", "mqtt", "data", "announce-counters"] {
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
    for f in ["berthd.redb", "images", "mqtt", "data", "announce-counters"] {
        let p = rig.state.join(f);
        let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
    }
    rig.env.assert_no_leftovers(&[&rig.vendor]);
}

/// A command run in the network namespace of a jail's init (the host's
/// binaries, the jail's view of the network).
fn in_jail_net(pid: u64, args: &[&str]) -> Command {
    let mut c = Command::new("/usr/bin/nsenter");
    c.arg("-t")
        .arg(pid.to_string())
        .arg("-n")
        .arg("--")
        .args(args);
    c
}

/// Whether a TCP connection to `addr:port` opens from the network of the
/// jail whose init is `pid` (3 s at most).
fn connects_from_jail(pid: u64, addr: &str, port: u16) -> bool {
    in_jail_net(
        pid,
        &[
            "timeout",
            "3",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{addr}/{port}"),
        ],
    )
    .stderr(Stdio::null())
    .status()
    .unwrap()
    .success()
}

#[test]
#[ignore = "privileged: needs root"]
fn a_report_lost_to_a_crash_is_sent_after_the_restart() {
    let mut rig = setup();
    rig.publish(1, V1, "");
    let mut first = rig.start_berthd();
    assert!(
        wait_until(Duration::from_secs(60), || rig.pending().is_some()),
        "no pending request"
    );
    // The vendor goes away once its plan is in: the version is built, but
    // its report cannot be delivered.
    rig.peers[1].stop();
    let id = rig.pending().unwrap()["id"].as_u64().unwrap();
    let r = api(&rig.sock, serde_json::json!({"op": "approve", "id": id}));
    assert_eq!(r["result"], "ok", "{r}");
    assert!(
        wait_until(Duration::from_secs(120), || rig.stage_is("running", 1)),
        "not running: {:?}",
        devices(&rig.sock)
    );
    assert!(
        wait_until(Duration::from_secs(30), || first
            .log()
            .contains("report not delivered; kept for a retry")),
        "no failed delivery; berthd log:\n{}",
        first.log()
    );
    // Killed after the transition, before the report got through.
    let pid = nix::unistd::Pid::from_raw(first.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = first.child.wait();
    assert!(rig.reports().is_empty(), "{:?}", rig.reports());

    let db = rig.db.clone();
    rig.peers[1] = rig.serve_vendor(&db);
    let second = rig.start_berthd();
    assert!(
        wait_until(Duration::from_secs(60), || !rig.reports().is_empty()),
        "the owed report never came; berthd log:\n{}",
        second.log()
    );
    // Re-sends would show by now; there is exactly the one result.
    std::thread::sleep(Duration::from_secs(2));
    let all = rig.reports();
    assert_eq!(all.len(), 1, "{all:#?}");
    let rep = &all[0];
    assert_eq!(rep["version"], 1, "{rep}");
    assert_eq!(rep["state"], "running", "{rep}");
    assert_eq!(rep["serial"], rig.serial.as_str(), "{rep}");
    assert_eq!(rep["gateway_id"], "gw-test", "{rep}");
    let jails = rig.jails();
    let addr = jails[0]["address"].as_str().unwrap();
    assert_eq!(
        rep["address"].as_str(),
        Some(format!("{addr}/24").as_str()),
        "{rep}"
    );
    let checks = rep["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2, "{rep}");
    assert!(checks.iter().all(|c| c["passed"] == true), "{rep}");
    // Nothing is owed any more: another start sends nothing again.
    drop(second);
    let _third = rig.start_berthd();
    assert!(
        wait_until(Duration::from_secs(30), || try_api(
            &rig.sock,
            serde_json::json!({"op": "status"})
        )
        .is_some()),
        "berthd did not come back"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rig.reports().len(), 1, "{:#?}", rig.reports());
    rig.remove_jails();
}

fn two_apps(rig: &Rig, api_image: &str, n: u32, api_extra: &str) -> String {
    format!(
        r#"vendor = "{vendor}"

[jail]
name = "app"
memory_mib = 96
cpu_millis = 500
pids = 64
network = true

[[app]]
name = "web"
image = "{web}"
command = ["/bin/sh", "-c", "echo {n} > /www/version; exec httpd -f -p 8080 -h /www"]

[[app.check]]
http = {{ port = 8080, path = "/health" }}
timeout_ms = 10000

[[app]]
name = "api"
image = "{api_image}"
command = ["/bin/sh", "-c", "echo {n} > /api/version; exec httpd -f -p 8081 -h /api"]
env = {{ APP = "api" }}

[[app.check]]
tcp_port = 8081
timeout_ms = 10000

[[app.check]]
http = {{ port = 8081, path = "/hello" }}
timeout_ms = 10000
{api_extra}
"#,
        vendor = rig.vendor,
        web = rig.image,
    )
}

#[test]
#[ignore = "privileged: needs root"]
fn several_apps_run_in_one_jail_and_a_failed_update_restores_them_all() {
    let rig = setup();
    // The second app comes from an image of its own.
    let api_image = push_image_with(
        &rig.work,
        &rig.registry(),
        &format!("{}/api", rig.vendor),
        "api",
        &[("api/hello", "hi\n")],
    );
    rig.publish_text(1, &two_apps(&rig, &api_image, 1, ""));
    let mut daemon = rig.start_berthd();
    rig.approve_pending(1);
    assert!(
        wait_until(Duration::from_secs(120), || rig.stage_is("running", 1)),
        "not running: {:?}",
        devices(&rig.sock)
    );
    let jails = rig.jails();
    assert_eq!(jails.len(), 1, "the apps share one jail: {jails:?}");
    let addr = jails[0]["address"].as_str().unwrap().to_string();
    // Both apps answer from the one jail (one address); the second one
    // serves a file only its own image has.
    assert_eq!(http_get(&addr, 8080, "/version").as_deref(), Some("1\n"));
    assert_eq!(http_get(&addr, 8081, "/version").as_deref(), Some("1\n"));
    assert_eq!(http_get(&addr, 8081, "/hello").as_deref(), Some("hi\n"));
    // Each app's checks ran and were reported.
    assert!(
        wait_until(Duration::from_secs(30), || rig
            .reports()
            .iter()
            .any(|r| r["version"] == 1)),
        "no report of version 1"
    );
    let rep = rig
        .reports()
        .into_iter()
        .find(|r| r["version"] == 1)
        .unwrap();
    assert_eq!(rep["state"], "running", "{rep}");
    let apps: Vec<(&str, bool)> = rep["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["app"].as_str().unwrap(), c["passed"] == true))
        .collect();
    assert_eq!(apps, [("web", true), ("api", true), ("api", true)], "{rep}");

    // berthd killed and started again: the further app was started by the
    // berthd that died and runs on in the jail; nothing is rebuilt.
    let pid = nix::unistd::Pid::from_raw(daemon.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = daemon.child.wait();
    daemon = rig.start_berthd();
    assert!(
        wait_until(Duration::from_secs(60), || rig.stage_is("running", 1)),
        "not running after the restart: {:?}",
        devices(&rig.sock)
    );
    assert_eq!(rig.jails()[0]["address"], addr.as_str());
    assert_eq!(http_get(&addr, 8081, "/version").as_deref(), Some("1\n"));
    assert_eq!(http_get(&addr, 8080, "/version").as_deref(), Some("1\n"));

    // An update whose second app fails its check: rolled back, and both
    // apps of version 1 keep answering; the failed version's apps are gone.
    rig.publish_text(
        2,
        &two_apps(
            &rig,
            &api_image,
            2,
            "\n[[app.check]]\nfile = \"/api/missing\"\ntimeout_ms = 1000\n",
        ),
    );
    assert!(
        wait_until(Duration::from_secs(120), || rig.stage_is("rolled-back", 1)),
        "failed update not rolled back: {:?}",
        devices(&rig.sock)
    );
    assert!(
        wait_until(Duration::from_secs(30), || rig.jails().len() == 1),
        "the failed version's jail is still there: {:?}",
        rig.jails()
    );
    assert_eq!(http_get(&addr, 8080, "/version").as_deref(), Some("1\n"));
    assert_eq!(http_get(&addr, 8081, "/version").as_deref(), Some("1\n"));
    assert!(
        wait_until(Duration::from_secs(10), || {
            berth_tests::host::pids_with_cmdline("httpd -f -p 8081 -h /api").len() == 1
        }),
        "the failed version's second app still runs: {:?}",
        berth_tests::host::pids_with_cmdline("httpd -f -p 8081 -h /api")
    );
    assert!(
        wait_until(Duration::from_secs(30), || rig
            .reports()
            .iter()
            .any(|r| r["version"] == 2)),
        "no report of version 2"
    );
    let rb = rig
        .reports()
        .into_iter()
        .find(|r| r["version"] == 2)
        .unwrap();
    assert_eq!(rb["state"], "rolledback", "{rb}");
    let err = rb["error"].as_str().unwrap_or("");
    assert!(
        err.contains("of app api failed") && err.contains("/api/missing"),
        "{rb}"
    );

    daemon.stop();
    rig.remove_jails();
    assert!(
        wait_until(Duration::from_secs(10), || {
            berth_tests::host::pids_with_cmdline("httpd -f -p 8081 -h /api").is_empty()
        }),
        "an app outlived its jail"
    );
    for f in ["berthd.redb", "images", "mqtt", "data", "announce-counters"] {
        let p = rig.state.join(f);
        let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
    }
    rig.env.assert_no_leftovers(&[&rig.vendor]);
}

/// A second vendor on its own `berth-vendor`: key, device registry, a
/// published plan; its server is pushed onto the rig's peers.
struct OtherVendor {
    id: String,
    db: PathBuf,
    key: PathBuf,
    public_key: String,
    url: String,
}

impl OtherVendor {
    fn cmd(&self, rig: &Rig) -> Command {
        let mut c = Command::new(&rig.vendor_bin);
        c.arg("--db").arg(&self.db);
        c
    }

    fn new(rig: &mut Rig, suffix: &str) -> OtherVendor {
        let id = rig.env.vendor(suffix);
        let db = rig.work.join(format!("vendor-{suffix}.db"));
        let key = rig.work.join(format!("vendor-{suffix}.key"));
        let mut v = OtherVendor {
            id,
            db,
            key,
            public_key: String::new(),
            url: String::new(),
        };
        v.public_key = run(v.cmd(rig).arg("keygen").arg("--out").arg(&v.key))
            .trim()
            .to_string();
        v
    }

    fn add_device(&self, rig: &Rig, serial: &str, device_key: &str) {
        run(self.cmd(rig).args([
            "device",
            "add",
            "--serial",
            serial,
            "--model",
            MODEL,
            "--public-key",
            device_key,
        ]));
    }

    fn publish(&self, rig: &Rig, text: &str) {
        let f = rig.work.join(format!("{}.toml", self.id));
        std::fs::write(&f, text).unwrap();
        run(self
            .cmd(rig)
            .args(["publish", "--model", MODEL, "--template"])
            .arg(&f));
    }

    /// Serves its database, signing with `key`.
    fn serve(&mut self, rig: &mut Rig, key: &Path) {
        let port = free_port();
        let mut c = self.cmd(rig);
        c.args([
            "serve",
            "--insecure-http",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--key",
        ])
        .arg(key);
        let p = Peer::spawn(
            "berth-vendor (second vendor)",
            c,
            rig.work.join(format!("{}.log", self.id)),
        );
        assert!(
            wait_until(Duration::from_secs(20), || TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "second berth-vendor did not come up"
        );
        rig.peers.push(p);
        self.url = format!("http://127.0.0.1:{port}");
    }

    /// Adds it to berthd's registry.
    fn register(&self, rig: &Rig) {
        let mut text = std::fs::read_to_string(&rig.config).unwrap();
        text.push_str(&format!(
            "[[vendor]]\nid = \"{}\"\nurl = \"{}\"\nkey = \"{}\"\napproval = \"manual\"\n",
            self.id, self.url, self.public_key
        ));
        std::fs::write(&rig.config, text).unwrap();
    }
}

/// Writes a mosquitto configuration: `devices` is an anonymous loopback
/// listener (devices and berthd's detection); each of `jails` a listener
/// on that address and `port`, with berthd's password and ACL files.
fn mosquitto_conf(path: &Path, devices: u16, jails: &[String], port: u16, pw: &Path, acl: &Path) {
    let mut text =
        format!("per_listener_settings true\nlistener {devices} 127.0.0.1\nallow_anonymous true\n");
    for addr in jails {
        text.push_str(&format!(
            "listener {port} {addr}\nallow_anonymous false\npassword_file {}\nacl_file {}\n",
            pw.display(),
            acl.display()
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// The broker address and password berthd gave a jail, from the jail's
/// own rootfs.
fn jail_credentials(rig: &Rig, jail: &str) -> (String, String) {
    let creds = std::fs::read_to_string(
        rig.state
            .join("overlay")
            .join(jail)
            .join("upper/etc/berth/mqtt.conf"),
    )
    .unwrap();
    let field = |name: &str| {
        creds
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {creds}"))
            .to_string()
    };
    (field("broker="), field("password="))
}

#[test]
#[ignore = "privileged: needs root"]
fn an_mqtt_device_is_provisioned_and_only_its_vendors_jail_reaches_it() {
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
        ("/usr/bin/nsenter", "apt-get install util-linux"),
    ] {
        require_path(p, what);
    }
    let announcer = require_bin("examples/device-announce");
    // Vendor A has the serial device of the rig; vendor B an MQTT device.
    let mut rig = setup();
    rig.publish(1, V1, "");
    let mut b = OtherVendor::new(&mut rig, "b");
    let seed = "43".repeat(32);
    let device_key = run(Command::new(&announcer).args(["--print-public-key", "--seed", &seed]))
        .trim()
        .to_string();
    let mq_serial = format!("MQ-{}", rig.env.tag);
    b.add_device(&rig, &mq_serial, &device_key);
    b.publish(&rig, &template(&b.id, &rig.image, V1, ""));
    let bkey = b.key.clone();
    b.serve(&mut rig, &bkey);
    b.register(&rig);

    // The broker: an anonymous loopback listener for devices and berthd's
    // detection; the jails' listener comes once their bridges exist.
    let acl = rig.work.join("berth.acl");
    let pw = rig.work.join("berth.passwd");
    std::fs::write(&acl, "").unwrap();
    std::fs::write(&pw, "").unwrap();
    let user = nix::unistd::User::from_name("mosquitto")
        .unwrap()
        .unwrap_or_else(|| {
            panic!("precondition missing: user mosquitto (apt-get install mosquitto)")
        });
    for f in [&acl, &pw] {
        std::os::unix::fs::chown(f, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
        std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    let (dport, jport) = (free_port(), free_port());
    let conf = rig.work.join("mosquitto.conf");
    mosquitto_conf(&conf, dport, &[], jport, &pw, &acl);
    let start_broker = |rig: &mut Rig| {
        let mut m = Command::new("/usr/sbin/mosquitto");
        m.arg("-c").arg(&conf);
        let n = std::fs::read_dir(&rig.work).unwrap().count();
        let broker = Peer::spawn("mosquitto", m, rig.work.join(format!("mosquitto-{n}.log")));
        std::fs::write(
            rig.work.join("mosquitto.pid"),
            format!("{}\n", broker.child.id()),
        )
        .unwrap();
        rig.peers.push(broker);
        assert!(
            wait_until(Duration::from_secs(10), || TcpStream::connect((
                "127.0.0.1",
                dport
            ))
            .is_ok()),
            "mosquitto did not come up"
        );
    };
    start_broker(&mut rig);
    let mut text = std::fs::read_to_string(&rig.config).unwrap();
    let at = text.find("[detect]").unwrap();
    text.insert_str(
        at,
        &format!(
            "[mqtt_routing]\nacl_file = \"{}\"\npassword_file = \"{}\"\npid_file = \"{}\"\nbroker = \"gateway:{jport}\"\n",
            acl.display(),
            pw.display(),
            rig.work.join("mosquitto.pid").display()
        ),
    );
    let text = text.replace(
        "[detect]\n",
        &format!("[detect]\nmqtt = \"127.0.0.1:{dport}\"\n"),
    );
    std::fs::write(&rig.config, text).unwrap();

    // The MQTT device announces itself (retained, as devices do).
    let announce = rig.work.join("announce.cbor");
    run(Command::new(&announcer)
        .args([
            "--vendor",
            &b.id,
            "--model",
            MODEL,
            "--serial",
            &mq_serial,
            "--endpoint",
            &b.url,
            "--seed",
            &seed,
            "--out",
        ])
        .arg(&announce));
    let topic = format!("berth/announce/{}/{mq_serial}", b.id);
    run(Command::new("/usr/bin/mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &dport.to_string(),
            "-r",
            "-t",
            &topic,
            "-f",
        ])
        .arg(&announce));

    let daemon = rig.start_berthd();
    // Both devices wait for a technician; approved, both run.
    rig.approve_pending(2);
    assert!(
        wait_until(Duration::from_secs(180), || {
            let d = devices(&rig.sock);
            d.len() == 2
                && d.iter()
                    .all(|d| d["stage"] == "running" && d["running_version"] == 1)
        }),
        "not both running: {:?}",
        devices(&rig.sock)
    );
    let mq = devices(&rig.sock)
        .into_iter()
        .find(|d| d["serial"] == mq_serial.as_str())
        .unwrap();
    assert_eq!(mq["transport"], "mqtt", "{mq}");
    assert_eq!(mq["address"], topic.as_str(), "{mq}");
    assert_eq!(mq["vendor"], b.id.as_str(), "{mq}");

    let jails = rig.jails();
    assert_eq!(jails.len(), 2, "{jails:?}");
    let jail_of = |vendor: &str| {
        jails
            .iter()
            .find(|j| j["vendor"] == vendor)
            .unwrap_or_else(|| panic!("no jail of {vendor}: {jails:?}"))
            .clone()
    };
    let (ja, jb) = (jail_of(&rig.vendor), jail_of(&b.id));
    let addr = |j: &Value| j["address"].as_str().unwrap().to_string();
    let pid = |j: &Value| j["pid"].as_u64().unwrap();
    let (addr_a, addr_b) = (addr(&ja), addr(&jb));
    assert_eq!(http_get(&addr_a, 8080, "/version").as_deref(), Some("1\n"));
    assert_eq!(http_get(&addr_b, 8080, "/version").as_deref(), Some("1\n"));

    // Vendor B's jail cannot reach vendor A's, nor A's B's; each reaches
    // its own.
    assert!(connects_from_jail(pid(&ja), &addr_a, 8080));
    assert!(connects_from_jail(pid(&jb), &addr_b, 8080));
    assert!(
        !connects_from_jail(pid(&jb), &addr_a, 8080),
        "vendor B's jail reached vendor A's"
    );
    assert!(
        !connects_from_jail(pid(&ja), &addr_b, 8080),
        "vendor A's jail reached vendor B's"
    );

    // The jails' listeners, on the gateway addresses of the vendor bridges
    // (`broker = "gateway:PORT"` gives each jail its own bridge's), which
    // the firewall opens on the broker port only.
    let gateway = |a: &str| {
        let mut o: Vec<u8> = a.split('.').map(|x| x.parse().unwrap()).collect();
        o[3] = 1;
        format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])
    };
    let (gw_a, gw_b) = (gateway(&addr_a), gateway(&addr_b));
    let b_user = b.id.clone();
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&acl)
            .unwrap_or_default()
            .contains(&format!("user {b_user}\n"))),
        "acl: {:?}",
        std::fs::read_to_string(&acl)
    );
    rig.peers.pop().unwrap().stop();
    mosquitto_conf(
        &conf,
        dport,
        &[gw_a.clone(), gw_b.clone()],
        jport,
        &pw,
        &acl,
    );
    start_broker(&mut rig);
    let (broker_a, pw_a) = jail_credentials(&rig, ja["name"].as_str().unwrap());
    let (broker_b, pw_b) = jail_credentials(&rig, jb["name"].as_str().unwrap());
    assert_eq!(broker_a, format!("{gw_a}:{jport}"));
    assert_eq!(broker_b, format!("{gw_b}:{jport}"));
    let device_topic = format!("berth/dev/{}/{mq_serial}", b.id);
    let own_topic_a = format!("berth/dev/{}/status", rig.vendor);
    let sub = |pid: u64, broker: &str, user: &str, pass: &str, topics: &[&str]| {
        let (host, port) = broker.rsplit_once(':').unwrap();
        let mut args = vec![
            "/usr/bin/mosquitto_sub",
            "-h",
            host,
            "-p",
            port,
            "-u",
            user,
            "-P",
            pass,
            "-v",
            "-C",
            "1",
            "-W",
            "15",
        ];
        for t in topics {
            args.push("-t");
            args.push(t);
        }
        in_jail_net(pid, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let b_sees = sub(
        pid(&jb),
        &broker_b,
        &b.id,
        &pw_b,
        &[&format!("{device_topic}/#")],
    );
    // A's jail asks for B's device topic and its own; only its own comes.
    let a_sees = sub(
        pid(&ja),
        &broker_a,
        &rig.vendor,
        &pw_a,
        &[&format!("{device_topic}/#"), &own_topic_a],
    );
    std::thread::sleep(Duration::from_secs(2));
    let publish = |topic: &str, msg: &str| {
        run(Command::new("/usr/bin/mosquitto_pub").args([
            "-h",
            "127.0.0.1",
            "-p",
            &dport.to_string(),
            "-t",
            topic,
            "-m",
            msg,
        ]));
    };
    // The device publishes its reading; then something for vendor A.
    publish(&format!("{device_topic}/temp"), "21.5");
    std::thread::sleep(Duration::from_millis(500));
    publish(&own_topic_a, "a-only");
    let b_out = b_sees.wait_with_output().unwrap();
    let a_out = a_sees.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&b_out.stdout),
        format!("{device_topic}/temp 21.5\n"),
        "vendor B's jail did not get its device's reading: {}",
        String::from_utf8_lossy(&b_out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&a_out.stdout),
        format!("{own_topic_a} a-only\n"),
        "vendor A's jail: {}",
        String::from_utf8_lossy(&a_out.stderr)
    );
    drop(daemon);
    rig.remove_jails();
}

/// A man in the middle between berthd and a vendor server on loopback: it
/// passes every exchange through, changing one hex digit of the first
/// `@sha256:` digest in every answer that has one (a signed plan naming
/// another image). Ended on drop.
struct TamperingProxy {
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TamperingProxy {
    fn start(upstream: u16) -> TamperingProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((c, _)) => {
                        let _ = Self::exchange(c, upstream);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        TamperingProxy {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// One request and its answer (the connection is closed after it).
    fn exchange(mut c: TcpStream, upstream: u16) -> std::io::Result<()> {
        c.set_nonblocking(false)?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if c.read(&mut byte)? == 0 {
                return Ok(());
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf).into_owned();
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0; len];
        c.read_exact(&mut body)?;
        let mut req: String = head
            .trim_end()
            .lines()
            .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        req.push_str("Connection: close\r\n\r\n");
        let mut u = TcpStream::connect(("127.0.0.1", upstream))?;
        u.set_read_timeout(Some(Duration::from_secs(70)))?;
        u.write_all(req.as_bytes())?;
        u.write_all(&body)?;
        let mut answer = Vec::new();
        u.read_to_end(&mut answer)?;
        let pat = b"@sha256:";
        if let Some(at) = answer.windows(pat.len()).position(|w| w == pat) {
            let i = at + pat.len();
            answer[i] = if answer[i] == b'0' { b'1' } else { b'0' };
        }
        c.write_all(&answer)
    }
}

impl Drop for TamperingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits until the rig's device failed; returns its error.
fn failure_of(rig: &Rig) -> String {
    assert!(
        wait_until(Duration::from_secs(120), || rig
            .device(&rig.serial)
            .is_some_and(|d| d["stage"] == "failed")),
        "not refused: {:?}",
        devices(&rig.sock)
    );
    rig.device(&rig.serial).unwrap()["error"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
#[ignore = "privileged: needs root"]
fn a_forged_plan_is_refused_and_nothing_is_built() {
    let rig = setup();
    rig.publish(1, V1, "");
    // berthd reaches the vendor through a party that changes the image
    // digest in the signed plan.
    let proxy = TamperingProxy::start(rig.vport);
    let text = std::fs::read_to_string(&rig.config).unwrap();
    std::fs::write(
        &rig.config,
        text.replace(
            &format!("http://127.0.0.1:{}", rig.vport),
            &format!("http://127.0.0.1:{}", proxy.port),
        ),
    )
    .unwrap();
    let daemon = rig.start_berthd();
    let err = failure_of(&rig);
    assert!(
        err.starts_with("plan refused: ") && err.contains("signature does not verify"),
        "{err}"
    );
    assert!(rig.pending().is_none(), "a forged plan was offered");
    assert_eq!(
        rig.host_jails(),
        (0, 0),
        "a jail was built for a forged plan"
    );
    assert!(
        !daemon.log().contains("image pulled"),
        "an image was pulled for a forged plan"
    );
}

#[test]
#[ignore = "privileged: needs root"]
fn a_plan_signed_with_the_other_vendors_key_is_refused() {
    let mut rig = setup();
    rig.publish(1, V1, "");
    // Vendor B is trusted by the gateway, for its own plans only.
    let mut b = OtherVendor::new(&mut rig, "b");
    let bkey = b.key.clone();
    b.serve(&mut rig, &bkey);
    b.register(&rig);
    // Vendor A's server now signs with B's key.
    rig.peers[1].stop();
    let mut c = rig.vendor_cmd();
    c.args([
        "serve",
        "--insecure-http",
        "--listen",
        &format!("127.0.0.1:{}", rig.vport),
        "--key",
    ])
    .arg(&b.key);
    rig.peers[1] = Peer::spawn(
        "berth-vendor (B's key)",
        c,
        rig.work.join("vendor-bkey.log"),
    );
    let port = rig.vport;
    assert!(
        wait_until(Duration::from_secs(20), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "berth-vendor did not come up"
    );
    let _daemon = rig.start_berthd();
    let err = failure_of(&rig);
    assert!(
        err.starts_with("plan refused: ") && err.contains("signature does not verify"),
        "{err}"
    );
    assert!(rig.pending().is_none());
    assert_eq!(rig.host_jails(), (0, 0));
}

#[test]
#[ignore = "privileged: needs root"]
fn an_image_whose_digest_does_not_match_is_refused() {
    let rig = setup();
    rig.publish(1, V1, "");
    // The registry's copy of the layer changes under its digest (a byte in
    // the middle; the size stays).
    let mut blobs = Vec::new();
    let mut stack = vec![rig.work.join("registry-data")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "data")
                && p.to_string_lossy().contains("/blobs/")
            {
                blobs.push((std::fs::metadata(&p).unwrap().len(), p));
            }
        }
    }
    let (len, layer) = blobs.into_iter().max().expect("no blob in the registry");
    assert!(
        len > 100_000,
        "the largest blob is not a layer: {len} bytes"
    );
    let mut bytes = std::fs::read(&layer).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&layer, bytes).unwrap();

    let _daemon = rig.start_berthd();
    rig.approve_pending(1);
    let err = failure_of(&rig);
    assert!(err.contains("digest mismatch"), "{err}");
    assert!(err.contains("the content was discarded"), "{err}");
    assert_eq!(
        rig.host_jails(),
        (0, 0),
        "a jail was built from a tampered image"
    );
    let rep = {
        assert!(
            wait_until(Duration::from_secs(30), || !rig.reports().is_empty()),
            "no report"
        );
        rig.reports().remove(0)
    };
    assert_eq!(rep["state"], "failed", "{rep}");
    assert!(
        rep["error"]
            .as_str()
            .unwrap_or("")
            .contains("digest mismatch"),
        "{rep}"
    );
}

/// Writes an OCI image layout holding one image of one gzip layer whose
/// tar has `entries` (`file PATH`, `symlink PATH TARGET`), and pushes it;
/// returns `registry/repo@digest`.
fn push_crafted_image(rig: &Rig, name: &str, entries: &[&str]) -> String {
    let layout = rig.work.join(format!("{name}-oci"));
    let script = r#"
import gzip, hashlib, io, json, os, sys, tarfile
out, entries = sys.argv[1], sys.argv[2:]
raw = io.BytesIO()
with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
    for e in entries:
        kind, path, *rest = e.split(" ")
        info = tarfile.TarInfo(path)
        info.mtime = 0
        if kind == "file":
            data = b"escaped\n"
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        elif kind == "symlink":
            info.type = tarfile.SYMTYPE
            info.linkname = rest[0]
            t.addfile(info)
        elif kind == "dir":
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            t.addfile(info)
tar = raw.getvalue()
layer = gzip.compress(tar, mtime=0)
def blob(data):
    d = hashlib.sha256(data).hexdigest()
    os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(out, "blobs", "sha256", d), "wb") as f:
        f.write(data)
    return "sha256:" + d, len(data)
ld, ll = blob(layer)
config = json.dumps({"architecture": "amd64", "os": "linux",
    "config": {"Entrypoint": ["/bin/sh"]},
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]}}).encode()
cd, cl = blob(config)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cl},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": ll}]}).encode()
md, ml = blob(manifest)
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": md, "size": ml, "annotations": {"org.opencontainers.image.ref.name": "app"}}]}, f)
with open(os.path.join(out, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)
"#;
    run(Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(&layout)
        .args(entries));
    let dest = format!("docker://{}/{}/{name}:v1", rig.registry(), rig.vendor);
    run(Command::new("skopeo").args([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:app", layout.display()),
        &dest,
    ]));
    let digest = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &dest,
    ]));
    format!("{}/{}/{name}@{}", rig.registry(), rig.vendor, digest.trim())
}

#[test]
#[ignore = "privileged: needs root"]
fn layers_that_escape_the_rootfs_are_refused() {
    let rig = setup();
    require_path("/usr/bin/python3", "apt-get install python3");
    // Where each attack aims, on the host.
    let target = rig.work.join("escape-target");
    std::fs::create_dir_all(&target).unwrap();
    let cases = [
        (
            "traversal",
            vec![format!(
                "file ../../../../../../../..{}/traversed",
                target.display()
            )],
            "traversed",
        ),
        (
            "symlink",
            vec![
                format!("symlink link {}", target.display()),
                "file link/through-symlink".to_string(),
            ],
            "through-symlink",
        ),
    ];
    for (n, (name, entries, dropped)) in cases.iter().enumerate() {
        let entries: Vec<&str> = entries.iter().map(String::as_str).collect();
        let image = push_crafted_image(&rig, name, &entries);
        rig.publish_text(n as u32 + 1, &template(&rig.vendor, &image, V1, ""));
        // A fresh berthd store each round: the device is new again.
        let _ = std::fs::remove_file(rig.state.join("berthd.redb"));
        let daemon = rig.start_berthd();
        rig.approve_pending(1);
        let err = failure_of(&rig);
        assert!(
            err.contains("refused at entry") && err.contains("nothing of it was kept"),
            "{name}: {err}"
        );
        assert!(
            !target.join(dropped).exists(),
            "{name}: the layer wrote outside the rootfs"
        );
        assert_eq!(rig.host_jails(), (0, 0), "{name}: a jail was built");
        drop(daemon);
    }
}

/// The host's address on its default route (`ip route get`), if it has
/// one: a non-loopback address of the gateway that is no vendor bridge's.
fn uplink_address() -> Option<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "route", "get", "192.0.2.123"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut t = text.split_whitespace();
    t.find(|w| *w == "src")?;
    t.next().map(str::to_string)
}

#[test]
#[ignore = "privileged: needs root"]
fn a_forwarded_gateway_port_reaches_the_app_until_the_jail_goes() {
    let rig = setup();
    let port = free_port();
    let text = format!(
        r#"vendor = "{vendor}"

[jail]
name = "app"
memory_mib = 64
cpu_millis = 500
pids = 64
network = true
host_ports = ["{port}/tcp"]

[[app]]
name = "web"
image = "{image}"
command = ["/bin/sh", "-c", "echo forwarded > /www/version; exec httpd -f -p {port} -h /www"]

[[app.check]]
http = {{ port = {port}, path = "/health" }}
timeout_ms = 10000
"#,
        vendor = rig.vendor,
        image = rig.image,
    );
    rig.publish_text(1, &text);
    let uplink = uplink_address();
    if let Some(u) = &uplink {
        assert_eq!(
            http_get(u, port, "/version"),
            None,
            "port {port} answers on {u} before any jail"
        );
    }
    let mut daemon = rig.start_berthd();
    rig.approve_pending(1);
    assert!(
        wait_until(Duration::from_secs(120), || rig.stage_is("running", 1)),
        "not running: {:?}",
        devices(&rig.sock)
    );
    let jails = rig.jails();
    let addr: std::net::Ipv4Addr = jails[0]["address"].as_str().unwrap().parse().unwrap();
    let o = addr.octets();
    let gateway = format!("{}.{}.{}.1", o[0], o[1], o[2]);
    // The app answers on the gateway's own addresses: its vendor bridge's
    // gateway address and its uplink address (not on loopback: see
    // netns::firewall).
    assert_eq!(
        http_get(&gateway, port, "/version").as_deref(),
        Some("forwarded\n"),
        "forwarded port on the bridge gateway {gateway}"
    );
    if let Some(u) = &uplink {
        assert_eq!(
            http_get(u, port, "/version").as_deref(),
            Some("forwarded\n"),
            "forwarded port on the uplink address {u}"
        );
    }
    assert_eq!(http_get("127.0.0.1", port, "/version"), None);
    let table = berth_tests::host::nft_table_name(&rig.state);
    let listed = run(Command::new("nft").args(["list", "table", "inet", &table]));
    assert!(
        listed.contains(&format!("tcp dport {port} dnat ip to {addr}:{port}")),
        "{listed}"
    );

    // The jail goes (the technician's `berth jail reset`): so does the
    // forward.
    let name = jails[0]["name"].as_str().unwrap().to_string();
    let out = run(Command::new(require_bin("berth"))
        .arg("--state-dir")
        .arg(&rig.state)
        .args(["jail", "reset", &name, "--json"]));
    let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(r["jail"], name.as_str(), "{r}");
    assert_eq!(rig.host_jails(), (0, 0), "reset left a jail behind");
    assert!(
        !rig.state.join("forwards").join(&name).exists(),
        "the jail's forwards are still recorded"
    );
    if let Some(u) = &uplink {
        assert_eq!(
            http_get(u, port, "/version"),
            None,
            "port {port} still forwarded on {u}"
        );
    }
    assert_eq!(http_get(&gateway, port, "/version"), None);
    let listed = Command::new("nft")
        .args(["list", "table", "inet", &table])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(!listed.contains("dnat"), "{listed}");
    daemon.stop();
    rig.remove_jails();
    for f in [
        "berthd.redb",
        "images",
        "mqtt",
        "data",
        "announce-counters",
        "forwards",
    ] {
        let p = rig.state.join(f);
        let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
    }
    rig.env.assert_no_leftovers(&[&rig.vendor]);
}

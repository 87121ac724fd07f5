//! End-to-end tests of the `berth-vendor` binary: each test registers
//! devices and templates through the CLI, starts `berth-vendor serve` on
//! 127.0.0.1:0 (plain HTTP, or HTTPS with a certificate made here), and
//! talks to it as a gateway would, with the protocol crate's types.
//!
//! Every server is a child process stopped by its PID when the test ends,
//! pass or fail; every file lives in a per-test temporary directory.

// A test harness: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::announce::MAX_ANNOUNCE;
use protocol::ed25519_dalek::{SigningKey, VerifyingKey};
use protocol::provision::{
    verify_plan, CborMessage, CgroupLayout, CheckResult, DeviceIdentity, ErrorBody, ExistingJail,
    GatewayCapabilities, GatewayIdentity, JailState, Plan, ProvisionRequest, Report,
    COSE_CONTENT_TYPE, FORMAT,
};
use protocol::{Announce, AnnounceBuilder};
use tokio_rustls::rustls;

const BIN: &str = env!("CARGO_BIN_EXE_berth-vendor");
const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const MODEL: &str = "Meter 2";
const DEVICE_SEED: [u8; 32] = [11; 32];

fn template(memory_mib: u64) -> String {
    format!(
        r#"vendor = "acme"

[jail]
name = "acme-meter"
memory_mib = {memory_mib}
cpu_millis = 500
pids = 64
network = true
host_ports = ["8080/tcp"]
serial = true
volumes = ["data"]

[[app]]
name = "collector"
image = "registry.acme.example/meter/collector@{DIGEST}"
command = ["/bin/collector"]
mounts = [{{ volume = "data", target = "/var/lib/collector" }}]

[[app.check]]
http = {{ port = 8080, path = "/health" }}
timeout_ms = 3000
"#
    )
}

/// A vendor's working directory: database, key, templates.
struct Vendor {
    dir: tempfile::TempDir,
    public_key: VerifyingKey,
}

/// A running `berth-vendor serve`, killed by PID on drop.
struct Running {
    child: Child,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Vendor {
    fn new() -> Vendor {
        let dir = tempfile::tempdir().unwrap();
        let out = run_ok(dir.path(), &["keygen", "--out", "vendor.key"]);
        let bytes: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&out.trim()[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let public_key = VerifyingKey::from_bytes(&bytes.try_into().unwrap()).unwrap();
        Vendor { dir, public_key }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cmd(&self, args: &[&str]) -> Output {
        run(self.path(), args)
    }

    fn ok(&self, args: &[&str]) -> String {
        run_ok(self.path(), args)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Registers the test device and publishes version 1; returns the
    /// device's plan id.
    fn setup(&self) -> String {
        let pk = SigningKey::from_bytes(&DEVICE_SEED).verifying_key();
        let plan_id = self.ok(&[
            "device",
            "add",
            "--serial",
            "SN-1",
            "--model",
            MODEL,
            "--public-key",
            &hex(pk.as_bytes()),
        ]);
        self.write("t1.toml", &template(64));
        self.ok(&["template", "set", "--model", MODEL, "t1.toml"]);
        let out = self.ok(&["publish", "--model", MODEL]);
        assert_eq!(out.trim(), "model `Meter 2`: published version 1");
        plan_id.trim().to_owned()
    }

    fn serve(&self, tls: bool) -> Running {
        let mut args = vec![
            "--db",
            "vendor.db",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--key",
            "vendor.key",
        ];
        let client = if tls {
            let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
            self.write("cert.pem", &ck.cert.pem());
            self.write("key.pem", &ck.signing_key.serialize_pem());
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ck.cert.der().clone()).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            args.extend(["--tls-cert", "cert.pem", "--tls-key", "key.pem"]);
            Some(Arc::new(config))
        } else {
            args.push("--insecure-http");
            None
        };
        let mut child = Command::new(BIN)
            .args(&args)
            .current_dir(self.path())
            .env("BERTH_VENDOR_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        // From here the child is stopped on drop, also when a wait below
        // fails.
        let mut running = Running {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            tls: client,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("berth-vendor serve printed no address within 30 s");
        running.addr = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("berth-vendor serve printed `{line}`, not an address"));
        running
    }
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["--db", "vendor.db"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn run_ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "berth-vendor {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One HTTP/1.1 exchange, `Connection: close`.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn reason(&self) -> String {
        ErrorBody::from_cbor(&self.body)
            .unwrap_or_else(|e| panic!("status {}: body is no error body: {e}", self.status))
            .reason
    }
}

impl Running {
    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let tcp = TcpStream::connect(self.addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut raw = Vec::new();
        match &self.tls {
            Some(config) => {
                let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
                let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
                let mut s = rustls::StreamOwned::new(conn, tcp);
                s.write_all(head.as_bytes()).unwrap();
                s.write_all(body).unwrap();
                s.flush().unwrap();
                // The server closes after answering; treat a missing
                // close_notify as the end too.
                let _ = s.read_to_end(&mut raw);
            }
            None => {
                let mut s = tcp;
                s.write_all(head.as_bytes()).unwrap();
                s.write_all(body).unwrap();
                s.read_to_end(&mut raw).unwrap();
            }
        }
        parse_answer(&raw)
    }

    fn post_cbor(&self, path: &str, body: &[u8]) -> Answer {
        self.request("POST", path, &[("Content-Type", "application/cbor")], body)
    }

    fn get_plan(&self, plan_id: &str, etag: Option<&str>, query: &str) -> Answer {
        let path = format!("/v1/plans/{plan_id}{query}");
        match etag {
            Some(t) => self.request("GET", &path, &[("If-None-Match", t)], b""),
            None => self.request("GET", &path, &[], b""),
        }
    }
}

fn parse_answer(raw: &[u8]) -> Answer {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if let Some(n) = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse::<usize>().unwrap())
    {
        body.truncate(n);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn announce(seed: &[u8; 32], serial: &str, counter: u64) -> Vec<u8> {
    let mut buf = [0u8; MAX_ANNOUNCE];
    let n = AnnounceBuilder::new(
        "acme",
        MODEL,
        serial,
        "1.0.3",
        "https://p.acme.example",
        counter,
    )
    .encode_signed(seed, &mut buf)
    .unwrap();
    buf[..n].to_vec()
}

fn request(announce: Vec<u8>) -> Vec<u8> {
    request_with(announce, 512 << 20, vec![])
}

fn request_with(announce: Vec<u8>, memory_free: u64, jails: Vec<ExistingJail>) -> Vec<u8> {
    let device = DeviceIdentity::of(&Announce::decode(&announce).unwrap());
    ProvisionRequest {
        format: FORMAT,
        announce,
        device,
        gateway: GatewayIdentity {
            id: "gw-17".into(),
            public_key: [9; 32],
        },
        capabilities: GatewayCapabilities {
            arch: "arm.v7".into(),
            memory_free,
            disk_free: 4 << 30,
            cgroup: CgroupLayout::Hybrid,
        },
        jails,
    }
    .to_cbor()
    .unwrap()
}

fn plan_of(v: &Vendor, a: &Answer) -> Plan {
    assert_eq!(
        a.status,
        200,
        "body: {:?}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.header("content-type"), Some(COSE_CONTENT_TYPE));
    verify_plan(&a.body, &v.public_key, "acme").unwrap()
}

fn provisions_a_registered_device(tls: bool) {
    let v = Vendor::new();
    let plan_id = v.setup();
    let s = v.serve(tls);
    let a = s.post_cbor("/v1/provision", &request(announce(&DEVICE_SEED, "SN-1", 1)));
    let plan = plan_of(&v, &a);
    assert_eq!(a.header("etag"), Some("\"1\""));
    assert_eq!(
        a.header("content-location"),
        Some(&*format!("/v1/plans/{plan_id}"))
    );
    assert_eq!(plan.plan_id, plan_id);
    assert_eq!(plan.version, 1);
    assert_eq!(plan.vendor, "acme");
    assert_eq!((plan.model.as_str(), plan.serial.as_str()), (MODEL, "SN-1"));
    assert_eq!(plan.jail.name, "acme-meter");
    assert_eq!(plan.jail.resources.memory, 64 << 20);
    assert_eq!(plan.apps[0].image.digest(), DIGEST);
    // Another vendor's key does not verify it.
    let other = SigningKey::from_bytes(&[99; 32]).verifying_key();
    assert!(verify_plan(&a.body, &other, "acme").is_err());
    // The same announce again (a gateway retrying) gets the same bytes.
    let again = s.post_cbor("/v1/provision", &request(announce(&DEVICE_SEED, "SN-1", 1)));
    assert_eq!(again.status, 200);
    assert_eq!(again.body, a.body);
}

#[test]
fn provisions_over_http() {
    provisions_a_registered_device(false);
}

#[test]
fn provisions_over_https() {
    provisions_a_registered_device(true);
}

#[test]
fn refuses_unknown_devices_bad_signatures_and_replays() {
    let v = Vendor::new();
    v.setup();
    let s = v.serve(false);
    let a = s.post_cbor("/v1/provision", &request(announce(&DEVICE_SEED, "SN-9", 1)));
    assert_eq!(a.status, 403);
    assert_eq!(
        a.reason(),
        "unknown device: model `Meter 2` serial `SN-9` is not registered with this vendor"
    );
    // SN-1 is registered, but this announce is signed by another key.
    let a = s.post_cbor("/v1/provision", &request(announce(&[12; 32], "SN-1", 1)));
    assert_eq!(a.status, 403);
    assert!(a.reason().contains("does not verify"), "{}", a.reason());
    // Accepted at counter 5; then 5 with other bytes, and 4, are replays.
    let a = s.post_cbor("/v1/provision", &request(announce(&DEVICE_SEED, "SN-1", 5)));
    assert_eq!(a.status, 200);
    let mut other = announce(&DEVICE_SEED, "SN-1", 4);
    let a = s.post_cbor("/v1/provision", &request(other.clone()));
    assert_eq!(a.status, 403);
    assert_eq!(
        a.reason(),
        "device `SN-1`: announce counter 4 is not above 5, the last accepted (a replay)"
    );
    // A gateway without the memory the plan needs is refused, unless the
    // vendor's jail is already there.
    let a = s.post_cbor(
        "/v1/provision",
        &request_with(announce(&DEVICE_SEED, "SN-1", 7), 32 << 20, vec![]),
    );
    assert_eq!(a.status, 403);
    assert_eq!(
        a.reason(),
        "gateway `gw-17` has 33554432 bytes of memory free; the plan needs 67108864"
    );
    let jail = ExistingJail {
        name: "acme-meter".into(),
        plan_id: "x".into(),
        version: 1,
    };
    let a = s.post_cbor(
        "/v1/provision",
        &request_with(announce(&DEVICE_SEED, "SN-1", 8), 32 << 20, vec![jail]),
    );
    assert_eq!(a.status, 200);
    // Tampering with a signed announce (firmware `1.0.3` -> `1.0.4`).
    let at = other.windows(5).position(|w| w == b"1.0.3").unwrap();
    other[at + 4] = b'4';
    let mut req = ProvisionRequest::from_cbor(&request(announce(&DEVICE_SEED, "SN-1", 9))).unwrap();
    req.device.firmware = "1.0.4".into();
    req.announce = other;
    let a = s.post_cbor("/v1/provision", &req.to_cbor().unwrap());
    assert_eq!(a.status, 403);
    assert!(a.reason().contains("does not verify"), "{}", a.reason());
}

#[test]
fn refuses_bad_requests() {
    let v = Vendor::new();
    let plan_id = v.setup();
    let s = v.serve(false);
    let body = request(announce(&DEVICE_SEED, "SN-1", 1));
    let a = s.request(
        "POST",
        "/v1/provision",
        &[("Content-Type", "application/json")],
        &body,
    );
    assert_eq!(a.status, 415);
    let a = s.post_cbor("/v1/provision", &body[..body.len() - 1]);
    assert_eq!(a.status, 400);
    assert!(
        a.reason().contains("provisioning request"),
        "{}",
        a.reason()
    );
    let big = vec![0u8; 64 * 1024];
    let a = s.post_cbor("/v1/provision", &big);
    assert_eq!(a.status, 413);
    let a = s.request("GET", "/v1/provision", &[], b"");
    assert_eq!(a.status, 405);
    assert_eq!(a.header("allow"), Some("POST"));
    let a = s.get_plan("0000", None, "");
    assert_eq!(a.status, 404);
    assert_eq!(a.reason(), "unknown plan `0000`");
    let a = s.get_plan(&plan_id, None, "?wait=soon");
    assert_eq!(a.status, 400);
    let a = s.request("GET", "/nothing", &[], b"");
    assert_eq!(a.status, 404);
    // Garbage and mangled requests are answered 400, never a fault, and the
    // server keeps serving.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..60 {
        let mut b = body.clone();
        for _ in 0..1 + round % 5 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % b.len();
            b[i] = (x >> 32) as u8;
        }
        if round % 3 == 0 {
            b.truncate((x as usize) % b.len());
        }
        for path in ["/v1/provision", "/v1/reports"] {
            let a = s.post_cbor(path, &b);
            assert!(
                [200, 400, 403].contains(&a.status),
                "round {round} {path}: {} {:?}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
    }
    let a = s.post_cbor("/v1/provision", &body);
    assert_eq!(a.status, 200);
}

#[test]
fn pending_until_a_plan_is_published() {
    let v = Vendor::new();
    let pk = SigningKey::from_bytes(&DEVICE_SEED).verifying_key();
    v.ok(&[
        "device",
        "add",
        "--serial",
        "SN-1",
        "--model",
        MODEL,
        "--public-key",
        &hex(pk.as_bytes()),
    ]);
    let s = v.serve(false);
    let body = request(announce(&DEVICE_SEED, "SN-1", 1));
    let a = s.post_cbor("/v1/provision", &body);
    assert_eq!(a.status, 202);
    assert_eq!(a.header("retry-after"), Some("30"));
    assert_eq!(
        a.reason(),
        "no plan published for model `Meter 2` yet; retry later"
    );
    v.write("t.toml", &template(64));
    v.ok(&["publish", "--model", MODEL, "--template", "t.toml"]);
    // The gateway retries with the same announce: now it gets the plan.
    let a = s.post_cbor("/v1/provision", &body);
    assert_eq!(plan_of(&v, &a).version, 1);
}

#[test]
fn updates_by_etag_and_long_poll() {
    let v = Vendor::new();
    let plan_id = v.setup();
    let s = v.serve(false);
    let a = s.get_plan(&plan_id, None, "");
    assert_eq!(plan_of(&v, &a).version, 1);
    let a = s.get_plan(&plan_id, Some("\"1\""), "");
    assert_eq!(a.status, 304);
    assert_eq!(a.header("etag"), Some("\"1\""));
    assert!(a.body.is_empty());

    // Publish version 2 while the server runs.
    v.write("t2.toml", &template(128));
    let out = v.ok(&["publish", "--model", MODEL, "--template", "t2.toml"]);
    assert_eq!(out.trim(), "model `Meter 2`: published version 2");
    let a = s.get_plan(&plan_id, Some("\"1\""), "");
    let plan = plan_of(&v, &a);
    assert_eq!((plan.version, plan.jail.resources.memory), (2, 128 << 20));
    assert_eq!(a.header("etag"), Some("\"2\""));
    let a = s.get_plan(&plan_id, Some("\"2\""), "");
    assert_eq!(a.status, 304);

    // A long poll returns as soon as version 3 is published.
    let started = Instant::now();
    let publisher = {
        let dir = v.path().to_owned();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            std::fs::write(dir.join("t3.toml"), template(96)).unwrap();
            run_ok(
                &dir,
                &["publish", "--model", MODEL, "--template", "t3.toml"],
            );
        })
    };
    let a = s.get_plan(&plan_id, Some("\"2\""), "?wait=30");
    publisher.join().unwrap();
    let waited = started.elapsed();
    let plan = plan_of(&v, &a);
    assert_eq!(plan.version, 3);
    assert!(
        waited >= Duration::from_millis(700),
        "answered after {waited:?}, before the publish"
    );
    assert!(
        waited < Duration::from_secs(25),
        "answered only after {waited:?}"
    );
    // With nothing new, a short long poll ends in 304 after its wait.
    let started = Instant::now();
    let a = s.get_plan(&plan_id, Some("\"3\""), "?wait=1");
    assert_eq!(a.status, 304);
    assert!(started.elapsed() >= Duration::from_millis(900));
}

fn report(plan_id: &str, serial: &str) -> Report {
    Report {
        format: FORMAT,
        plan_id: plan_id.into(),
        version: 1,
        gateway_id: "gw-17".into(),
        serial: serial.into(),
        jail: "acme-meter".into(),
        address: Some("10.77.0.5/24".into()),
        state: JailState::RolledBack,
        checks: vec![CheckResult {
            app: "collector".into(),
            index: 0,
            passed: false,
            output: "GET /health: 503".into(),
            elapsed_ms: 3000,
        }],
        error: Some("check collector#0 failed".into()),
    }
}

#[test]
fn stores_reports() {
    let v = Vendor::new();
    let plan_id = v.setup();
    let s = v.serve(false);
    let a = s.post_cbor("/v1/reports", &report(&plan_id, "SN-1").to_cbor().unwrap());
    assert_eq!(a.status, 204);
    let a = s.post_cbor("/v1/reports", &report("ffff", "SN-1").to_cbor().unwrap());
    assert_eq!(a.status, 404);
    let a = s.post_cbor("/v1/reports", &report(&plan_id, "SN-2").to_cbor().unwrap());
    assert_eq!(a.status, 403);
    let json: serde_json::Value = serde_json::from_str(&v.ok(&["reports", "--json"])).unwrap();
    let list = json.as_array().unwrap();
    assert_eq!(list.len(), 1);
    let r = &list[0];
    assert_eq!(r["plan_id"], plan_id.as_str());
    assert_eq!(r["state"], "rolledback");
    assert_eq!(r["address"], "10.77.0.5/24");
    assert_eq!(r["checks"][0]["output"], "GET /health: 503");
    assert_eq!(r["checks"][0]["passed"], false);
    let text = v.ok(&["reports"]);
    assert!(text.contains("RolledBack"), "{text}");
    assert!(
        text.contains("collector#0 FAILED (3000 ms): GET /health: 503"),
        "{text}"
    );
}

#[test]
fn refuses_bad_templates_with_their_line() {
    let v = Vendor::new();
    let bad = template(64).replace(&format!("collector@{DIGEST}"), "collector:latest");
    v.write("bad.toml", &bad);
    let out = v.cmd(&["template", "set", "--model", MODEL, "bad.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("template bad.toml: line 15: field `image` `registry.acme.example/meter/collector:latest` is not pinned by digest"),
        "{err}"
    );
    let out = v.cmd(&["publish", "--model", MODEL]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no template set for model `Meter 2`"));
    v.write(
        "bad2.toml",
        &template(64).replace("pids = 64", "pids = 64\nswap = 1"),
    );
    let out = v.cmd(&["publish", "--model", MODEL, "--template", "bad2.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 8: unknown field `swap`"), "{err}");
}

#[test]
fn cli_refusals() {
    let v = Vendor::new();
    let out = v.cmd(&[
        "serve",
        "--listen",
        "0.0.0.0:0",
        "--key",
        "vendor.key",
        "--insecure-http",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("plain HTTP is only allowed on a loopback address"));
    let out = v.cmd(&["serve", "--listen", "127.0.0.1:0", "--key", "vendor.key"]);
    assert_eq!(out.status.code(), Some(1));
    let out = v.cmd(&[
        "device",
        "add",
        "--serial",
        "SN 1",
        "--model",
        MODEL,
        "--public-key",
        &"00".repeat(32),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad serial `SN 1`"));
    let pk = hex(SigningKey::from_bytes(&DEVICE_SEED)
        .verifying_key()
        .as_bytes());
    v.ok(&[
        "device",
        "add",
        "--serial",
        "SN-1",
        "--model",
        MODEL,
        "--public-key",
        &pk,
    ]);
    let out = v.cmd(&[
        "device",
        "add",
        "--serial",
        "SN-1",
        "--model",
        MODEL,
        "--public-key",
        &pk,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("device Meter 2/SN-1 is already registered")
    );
    let out = v.cmd(&["keygen", "--out", "vendor.key"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "keygen must not overwrite a key"
    );
    assert_eq!(
        v.ok(&["pubkey", "--key", "vendor.key"]).trim(),
        hex(v.public_key.as_bytes())
    );
}

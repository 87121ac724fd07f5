//! Shared harness for the device-probes tests against real peers: child
//! processes ended by PID, socat pty pairs, a fake serial device, the merged
//! pipeline, and bounded waits.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use device_probes::event::{DeviceEvent, Drops, SourceEvent};
use device_probes::merger::{self, Emitter, Merger};
use protocol::announce::AnnounceBuilder;
use protocol::frame::{encode_frame, max_encoded_len, FrameDecoder, MAX_FRAME};
use protocol::message::Message;
use tokio::sync::{mpsc, watch};

/// Panics unless `bin` exists and runs.
pub fn need(bin: &str) {
    let found = if bin.contains('/') {
        Path::new(bin).exists()
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).exists()))
            .unwrap_or(false)
    };
    assert!(
        found,
        "precondition missing: {bin} (install it: see the crate's test notes)"
    );
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// A child process killed (by its PID) and reaped when dropped.
#[derive(Debug)]
pub struct Peer {
    pub child: Option<Child>,
    pub name: String,
}

impl Peer {
    pub fn spawn(name: &str, cmd: &mut Command) -> Peer {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("precondition missing: cannot start {name}: {e}"));
        Peer {
            child: Some(child),
            name: name.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Kills the process (SIGKILL to its PID) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `f` holds, at most `limit`.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A socat pty pair with links `a` and `b`.
pub struct PtyPair {
    pub peer: Peer,
    pub a: PathBuf,
    pub b: PathBuf,
}

pub fn socat_pair(a: &Path, b: &Path) -> PtyPair {
    need("socat");
    // A socat killed by its PID leaves its links behind, pointing at pty
    // numbers another process may get next: remove them, so the wait below
    // sees this socat's links and not a stale one that resolves by chance.
    let _ = std::fs::remove_file(a);
    let _ = std::fs::remove_file(b);
    let peer = Peer::spawn(
        "socat",
        Command::new("socat")
            .arg("-d")
            .arg("-d")
            .arg(format!("pty,raw,echo=0,link={}", a.display()))
            .arg(format!("pty,raw,echo=0,link={}", b.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until(Duration::from_secs(10), "socat links", || {
        a.exists() && b.exists()
    });
    PtyPair {
        peer,
        a: a.to_owned(),
        b: b.to_owned(),
    }
}

/// The seed the fake devices sign with.
pub const SEED: [u8; 32] = [0x42; 32];

/// How a fake device misbehaves before it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Noise {
    None,
    /// Sends a frame with a bad CRC, an oversize frame and a frame that is
    /// not CBOR before each answer.
    Malformed,
}

pub fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; max_encoded_len(msg.len())];
    let n = encode_frame(msg, &mut out).unwrap();
    out.truncate(n);
    out
}

/// A framed `Announce` answering `nonce`, counter 1.
pub fn announce_frame(vendor: &str, serial: &str, firmware: &str, nonce: Option<u64>) -> Vec<u8> {
    announce_frame_n(vendor, serial, firmware, nonce, 1)
}

/// A framed `Announce` answering `nonce` with `counter`.
pub fn announce_frame_n(
    vendor: &str,
    serial: &str,
    firmware: &str,
    nonce: Option<u64>,
    counter: u64,
) -> Vec<u8> {
    let mut b = AnnounceBuilder::new(
        vendor,
        "Fake Meter",
        serial,
        firmware,
        "https://provision.acme.example/berth",
        counter,
    );
    if let Some(n) = nonce {
        b = b.challenge(n);
    }
    let a = b.sign(&SEED).unwrap();
    let mut msg = vec![0u8; protocol::frame::MAX_MESSAGE];
    let n = Message::Announce(a).encode(&mut msg).unwrap();
    frame(&msg[..n])
}

/// A fake end device on the `b` end of a pty pair: answers every Hello
/// with a signed announce echoing the nonce. Runs on its own thread until
/// the port hangs up. Counts the bytes it received, and keeps when the
/// last Hello arrived and when the answer to it was about to be written (the bench
/// splits the handshake's time between gateway and device with these).
pub struct FakeDevice {
    pub received: Arc<AtomicUsize>,
    pub hellos: Arc<AtomicUsize>,
    pub last_hello: HelloTimes,
    stop: Arc<AtomicBool>,
}

/// When a fake device got its last Hello and when its answer was about to
/// be written.
pub type HelloTimes = Arc<Mutex<Option<(Instant, Instant)>>>;

impl FakeDevice {
    pub fn start(path: &Path, vendor: &str, serial: &str, noise: Noise) -> FakeDevice {
        FakeDevice::start_at(path, vendor, serial, noise, 1)
    }

    /// A device whose announces all carry `counter`.
    pub fn start_at(
        path: &Path,
        vendor: &str,
        serial: &str,
        noise: Noise,
        counter: u64,
    ) -> FakeDevice {
        let mut port = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NOCTTY.bits())
            .open(path)
            .unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let hellos = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let last_hello = Arc::new(Mutex::new(None));
        let (r, h, s, l) = (
            received.clone(),
            hellos.clone(),
            stop.clone(),
            last_hello.clone(),
        );
        let (vendor, serial) = (vendor.to_owned(), serial.to_owned());
        std::thread::spawn(move || {
            let mut dec = FrameDecoder::<MAX_FRAME>::new();
            let mut buf = [0u8; 256];
            loop {
                let n = match port.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let got_at = Instant::now();
                if s.load(Ordering::SeqCst) {
                    return;
                }
                r.fetch_add(n, Ordering::SeqCst);
                for &byte in &buf[..n] {
                    let nonce = match dec.push(byte) {
                        Some(Ok(f)) => match Message::decode(f) {
                            Ok(Message::Hello { nonce }) => nonce,
                            _ => continue,
                        },
                        _ => continue,
                    };
                    h.fetch_add(1, Ordering::SeqCst);
                    let mut out = Vec::new();
                    if noise == Noise::Malformed {
                        let mut bad = announce_frame(&vendor, &serial, "1.0.0", Some(nonce));
                        bad[5] ^= 0x40;
                        out.extend(bad);
                        out.extend(vec![0x33u8; 2 * MAX_FRAME]);
                        out.push(0);
                        out.extend(frame(&[0xff, 0xfe, 0xfd]));
                    }
                    out.extend(announce_frame_n(
                        &vendor,
                        &serial,
                        "1.0.0",
                        Some(nonce),
                        counter,
                    ));
                    // Kept before the write: the gateway may report the
                    // device before this thread runs again.
                    *l.lock().unwrap() = Some((got_at, Instant::now()));
                    if port.write_all(&out).is_err() {
                        return;
                    }
                }
            }
        });
        FakeDevice {
            received,
            hellos,
            last_hello,
            stop,
        }
    }
}

impl Drop for FakeDevice {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A device that only records whether anything was written to it.
pub fn canary(path: &Path) -> Arc<AtomicUsize> {
    let mut port = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOCTTY.bits())
        .open(path)
        .unwrap();
    let got = Arc::new(AtomicUsize::new(0));
    let g = got.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok(n) = port.read(&mut buf) {
            if n == 0 {
                return;
            }
            g.fetch_add(n, Ordering::SeqCst);
        }
    });
    got
}

/// The merged pipeline: sources send into `emitter`; device events come
/// out of `events`.
pub struct Pipeline {
    pub emitter: Emitter,
    pub events: mpsc::Receiver<DeviceEvent>,
    pub drops: Arc<Drops>,
    pub shutdown: watch::Sender<bool>,
    pub shutdown_rx: watch::Receiver<bool>,
}

pub fn pipeline() -> Pipeline {
    let drops = Arc::new(Drops::default());
    let (stx, srx) = mpsc::channel::<SourceEvent>(256);
    let (dtx, drx) = mpsc::channel(256);
    tokio::spawn(merger::run(Merger::new(drops.clone()), srx, dtx));
    let (shutdown, shutdown_rx) = watch::channel(false);
    Pipeline {
        emitter: Emitter::new(stx, drops.clone()),
        events: drx,
        drops,
        shutdown,
        shutdown_rx,
    }
}

impl Pipeline {
    /// The next device event, within `limit`.
    pub async fn next(&mut self, limit: Duration) -> DeviceEvent {
        tokio::time::timeout(limit, self.events.recv())
            .await
            .expect("timed out waiting for a device event")
            .expect("merger stopped")
    }

    /// Skips events until one satisfies `f`, within `limit` overall.
    pub async fn until(
        &mut self,
        limit: Duration,
        what: &str,
        mut f: impl FnMut(&DeviceEvent) -> bool,
    ) -> DeviceEvent {
        let end = tokio::time::Instant::now() + limit;
        loop {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(ev)) if f(&ev) => return ev,
                Ok(Some(_)) => {}
                Ok(None) => panic!("merger stopped while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    /// Asserts that no event arrives for `d`.
    pub async fn quiet(&mut self, d: Duration) {
        if let Ok(Some(ev)) = tokio::time::timeout(d, self.events.recv()).await {
            panic!("unexpected device event {ev:?}");
        }
    }
}

/// Reads the first line a child printed on stdout.
pub fn first_line(child: &mut Child) -> String {
    let out = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    line.trim().to_owned()
}

pub fn write_file(path: &Path, text: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts mosquitto with config file `conf` and waits until it accepts
/// connections on 127.0.0.1:`port`.
pub fn mosquitto(conf: &Path, port: u16) -> Peer {
    let peer = Peer::spawn(
        "mosquitto",
        Command::new("mosquitto")
            .arg("-c")
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until(Duration::from_secs(10), "mosquitto listening", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    peer
}

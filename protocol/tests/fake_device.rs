//! The fake-device example against a real pseudo-terminal pair made by
//! `socat`: it announces at start, answers a `Hello` with a challenged
//! announce, survives line noise, and exits when the line goes away.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![cfg(feature = "std")]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use protocol::announce::{public_key, verify, OwnedAnnounce};
use protocol::ed25519_dalek::VerifyingKey;
use protocol::frame::{encode_frame, FrameDecoder, MAX_FRAME, MAX_WIRE};
use protocol::message::Message;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A child process killed and reaped on drop, by its PID.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A temp dir removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let p = std::env::temp_dir().join(format!(
            "berth-protocol-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fake_device_bin() -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/examples/
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("examples/fake-device"))
        .unwrap();
    assert!(
        bin.exists(),
        "precondition missing: {} (build it with `cargo test -p protocol` or `cargo build -p protocol --examples`)",
        bin.display()
    );
    bin
}

fn socat_pair(dir: &Path) -> (Proc, PathBuf, PathBuf) {
    let (a, b) = (dir.join("a"), dir.join("b"));
    let child = Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("precondition missing: socat ({e}); install Debian's socat"));
    let p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(a.exists() && b.exists()) {
        assert!(Instant::now() < deadline, "socat made no pty pair in 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    (p, a, b)
}

/// Reads the line on a thread; hands out decoded frames with a timeout.
struct Line {
    rx: mpsc::Receiver<Result<Vec<u8>, protocol::FrameError>>,
}

impl Line {
    fn new(mut port: std::fs::File) -> Self {
        let (tx, rx) = mpsc::sync_channel(16);
        std::thread::spawn(move || {
            let mut dec = FrameDecoder::<MAX_FRAME>::new();
            let mut buf = [0u8; 256];
            // Ends when the pty goes away (EIO) or the test is gone.
            while let Ok(n) = port.read(&mut buf) {
                if n == 0 {
                    break;
                }
                for &b in &buf[..n] {
                    if let Some(r) = dec.push(b) {
                        if tx.send(r.map(<[u8]>::to_vec)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Line { rx }
    }

    fn next_announce(&self) -> OwnedAnnounce {
        loop {
            let frame = self
                .rx
                .recv_timeout(Duration::from_secs(10))
                .expect("no frame from the fake device within 10 s");
            // Line noise from --garbage shows up as a bad frame: skip it.
            let Ok(frame) = frame else { continue };
            let msg = Message::decode(&frame).unwrap();
            match msg {
                Message::Announce(a) => return OwnedAnnounce::from(&a),
                other => panic!("unexpected message {other:?}"),
            }
        }
    }
}

fn send(port: &mut std::fs::File, m: &Message<'_>) {
    let mut msg = [0u8; 32];
    let n = m.encode(&mut msg).unwrap();
    let mut wire = [0u8; MAX_WIRE];
    let w = encode_frame(&msg[..n], &mut wire).unwrap();
    port.write_all(&wire[..w]).unwrap();
}

#[test]
fn fake_device_announces_and_answers_hello() {
    let bin = fake_device_bin();
    let dir = TempDir::new();
    let (socat, dev_end, gw_end) = socat_pair(&dir.0);
    let mut dev = Proc(
        Command::new(&bin)
            .arg(&dev_end)
            .args(["--serial", "T-1", "--counter", "5", "--public-key"])
            .args(["--announce-at-start", "--garbage"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    BufReader::new(dev.0.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");

    let port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&gw_end)
        .unwrap();
    let mut writer = port.try_clone().unwrap();
    let line = Line::new(port);
    let key = VerifyingKey::from_bytes(&public_key(&[0x42; 32])).unwrap();

    let first = line.next_announce();
    assert_eq!((first.serial.as_str(), first.counter), ("T-1", 5));
    assert_eq!(first.challenge, None);
    verify(&first.as_announce().unwrap(), &key).unwrap();

    // Noise on the line first; the device must resynchronise.
    writer.write_all(&[0x01, 0x02, 0xff, 0x00]).unwrap();
    send(&mut writer, &Message::Hello { nonce: 0xfeed });
    let second = line.next_announce();
    assert_eq!(second.challenge, Some(0xfeed));
    assert_eq!(second.counter, 6);
    verify(&second.as_announce().unwrap(), &key).unwrap();

    send(&mut writer, &Message::Ack { counter: 6 });
    send(&mut writer, &Message::Hello { nonce: 1 });
    let third = line.next_announce();
    assert_eq!((third.challenge, third.counter), (Some(1), 7));

    // The line goes away: the device exits cleanly by itself.
    drop(writer);
    drop(socat);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = dev.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "fake device still running after its line closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "fake device exited with {status}");
}

#[test]
fn fake_device_prints_its_public_key() {
    let out = Command::new(fake_device_bin())
        .args(["--print-public-key", "--seed"])
        .arg("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    );
    let bad = Command::new(fake_device_bin())
        .args(["--seed", "zz"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--seed takes 64 hex digits"));
}

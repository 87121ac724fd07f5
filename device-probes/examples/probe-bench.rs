//! Detection benchmark against real peers (not a test: it prints figures).
//!
//! - Latency, transport event to device event, p50/p99, per source:
//!   serial (the port's link appears in the watched directory → Seen, the
//!   Hello/Announce handshake with a fake device included; the bench makes
//!   the link itself, so the moment is exact; the fake sysfs the source
//!   rescans holds a board's virtual consoles and UARTs), split into the
//!   gateway's and the device's shares, without and with the vendor's key
//!   known, over a socat pty pair (as the tests) and over one bare pty (as
//!   a USB adapter's tty), MQTT (announce published by
//!   a client on its own thread → Seen), BLE (BlueZ's `PropertiesChanged`
//!   signal as a second bus client on its own thread receives it →
//!   Updated; the mock is driven by one long-lived Python process, so no
//!   interpreter start-up or blocked call is in the timed path).
//! - Throughput: 1000 distinct devices announcing over MQTT within one
//!   second, at QoS 0, at QoS 1, and at QoS 1 with the vendor's key known
//!   (every signature checked): how long until all 1000 are Seen, and what
//!   was dropped. The publisher waits for the broker's acknowledgements.
//! - Peak RSS of this process (sources, merger and clients) at the end.
//!
//! Every source and the merger run on one current-thread runtime, as in
//! `berth detect`; the peers and the clients that play devices run on
//! threads of their own. On a loaded machine run it as
//! `chrt -f 10 probe-bench` to see the code's latency rather than the
//! scheduler's (the peers inherit the policy).
//!
//! Needs socat, mosquitto, dbus-daemon and /usr/bin/python3 with dbusmock.
//! Run: `cargo run --release -p device-probes --example probe-bench`
//! (`-- serial N` for the serial runs alone, N ports each).
//! The release profile aborts on panic, so a failed run cannot end its
//! peers (mosquitto, dbus-daemon, dbusmock, socat) through their guards:
//! after a failure, end them by the PIDs the run left.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use device_probes::event::DeviceEvent;
use device_probes::{ble, mqtt, serial};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

fn pct(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

fn report(name: &str, mut s: Vec<Duration>) {
    let p50 = pct(&mut s, 0.50);
    let p99 = pct(&mut s, 0.99);
    println!(
        "{name:<28} latency  n={:<4} p50={:>8.2} ms  p99={:>8.2} ms",
        s.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}

fn cbor_announce(serial: &str, firmware: &str) -> Vec<u8> {
    let a = protocol::announce::AnnounceBuilder::new(
        "acme",
        "Bench",
        serial,
        firmware,
        "https://provision.acme.example/berth",
        1,
    )
    .sign(&SEED)
    .unwrap();
    let mut out = vec![0u8; protocol::announce::MAX_ANNOUNCE];
    let n = a.encode(&mut out).unwrap();
    out.truncate(n);
    out
}

/// What stands between the gateway's port and the fake device.
#[derive(Clone, Copy, Debug)]
enum Via {
    /// A socat pty pair, as in the tests: every byte crosses two ptys and
    /// the socat process.
    Socat,
    /// One pty: the device holds its master, as a USB serial adapter's
    /// driver holds the tty the gateway opens.
    Pty,
}

/// A fake device on the master side of a fresh pty: answers the first
/// Hello with a signed announce, then holds the port until told to unplug
/// (closing the master hangs the slave up). Returns the slave's path, the
/// (Hello received, answer about to be written) instants, and the unplug
/// switch.
fn direct_device(
    serial_number: &str,
) -> (std::path::PathBuf, HelloTimes, std::sync::mpsc::Sender<()>) {
    use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
    use protocol::frame::{FrameDecoder, MAX_FRAME};
    use protocol::message::Message;
    use std::io::{Read, Write};
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut t = tcgetattr(&pty.slave).unwrap();
    cfmakeraw(&mut t);
    tcsetattr(&pty.slave, SetArg::TCSANOW, &t).unwrap();
    use std::os::fd::AsRawFd;
    let slave = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd())).unwrap();
    // Held open by the device: reading a master whose slave nobody has
    // open fails with EIO (pty(7)), and the gateway opens it only later.
    let keep = pty.slave;
    let mut master = std::fs::File::from(pty.master);
    let last = std::sync::Arc::new(std::sync::Mutex::new(None));
    let (unplug, unplugged) = std::sync::mpsc::channel::<()>();
    let (l, serial_number) = (last.clone(), serial_number.to_owned());
    std::thread::spawn(move || {
        let mut dec = FrameDecoder::<MAX_FRAME>::new();
        let mut buf = [0u8; 256];
        'read: loop {
            let n = match master.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let got_at = Instant::now();
            for &byte in &buf[..n] {
                if let Some(Ok(f)) = dec.push(byte) {
                    if let Ok(Message::Hello { nonce }) = Message::decode(f) {
                        let out = announce_frame("acme", &serial_number, "1.0.0", Some(nonce));
                        *l.lock().unwrap() = Some((got_at, Instant::now()));
                        master.write_all(&out).unwrap();
                        break 'read;
                    }
                }
            }
        }
        // Holds the port (later Hellos stay unread) until unplugged.
        let _ = unplugged.recv();
        drop(keep);
    });
    (slave, last, unplug)
}

/// Fills a fake sysfs with the ttys of a board with no USB serial port
/// plugged in, as the source scans them on every hotplug event: the
/// virtual consoles, console and ptmx (links into devices/virtual), and
/// four on-board UARTs.
fn board_ttys(sys: &Path) {
    let class = sys.join("class/tty");
    std::fs::create_dir_all(&class).unwrap();
    let virtual_ttys = (0..64)
        .map(|i| format!("tty{i}"))
        .chain(["tty", "console", "ptmx"].map(String::from));
    for tty in virtual_ttys {
        std::fs::create_dir_all(sys.join(format!("devices/virtual/tty/{tty}"))).unwrap();
        std::os::unix::fs::symlink(format!("../../devices/virtual/tty/{tty}"), class.join(&tty))
            .unwrap();
    }
    let uart = sys.join("devices/platform/serial8250");
    for i in 0..4 {
        let tty = format!("ttyS{i}");
        let dev = uart.join(format!("tty/{tty}"));
        std::fs::create_dir_all(&dev).unwrap();
        std::os::unix::fs::symlink("../../../serial8250", dev.join("device")).unwrap();
        std::os::unix::fs::symlink(
            format!("../../devices/platform/serial8250/tty/{tty}"),
            class.join(&tty),
        )
        .unwrap();
    }
}

/// Serial latency, `n` ports one after another; with `keys` the vendor's
/// key is known and every announce's signature is checked. Besides the
/// total it reports where the time went, from the fake device's clock:
/// link → Hello at the device (the gateway notices the port, opens it and
/// writes, then socat relays), the device's own answer (decode and sign),
/// and answer → Seen (the device writes, socat relays, the gateway reads,
/// checks and merges).
async fn bench_serial(n: usize, keys: bool, via: Via) {
    let dir = tempfile::tempdir().unwrap();
    board_ttys(&dir.path().join("sys"));
    let watched = dir.path().join("by-id");
    std::fs::create_dir(&watched).unwrap();
    let staging = dir.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let mut p = pipeline();
    let explicit: Vec<_> = (0..n).map(|i| watched.join(format!("dev{i}"))).collect();
    let mut ring = device_probes::announce::KeyRing::default();
    if keys {
        ring.add("acme", &protocol::announce::public_key(&SEED))
            .unwrap();
    }
    let cfg = serial::SerialConfig {
        sysfs_root: dir.path().join("sys"),
        dev_dir: dir.path().to_owned(),
        watch_dirs: Vec::new(),
        explicit: explicit.clone(),
        uevents: false,
        poll: None,
        hello_every: Duration::from_millis(200),
        keys: ring,
        ..serial::SerialConfig::default()
    };
    let src = tokio::spawn(serial::run(cfg, p.emitter.clone(), p.shutdown_rx.clone()));
    let (mut total, mut to_device, mut in_device, mut back) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, link) in explicit.iter().enumerate() {
        // The pty pair and the device come up first, off the watched
        // directory; the port "appears" when the bench links it in.
        let a = staging.join(format!("a{i}"));
        let b = staging.join(format!("b{i}"));
        let serial_number = format!("SER-{i}");
        let (target, last_hello, unplug): (_, _, Box<dyn FnOnce()>) = match via {
            Via::Socat => {
                let pair = tokio::task::spawn_blocking(move || socat_pair(&a, &b))
                    .await
                    .unwrap();
                let dev = FakeDevice::start(&pair.b, "acme", &serial_number, Noise::None);
                let target = std::fs::read_link(&pair.a).unwrap();
                let last = dev.last_hello.clone();
                (target, last, Box::new(move || drop((dev, pair))))
            }
            Via::Pty => {
                let (slave, last, unplug) = direct_device(&serial_number);
                (
                    slave,
                    last,
                    Box::new(move || {
                        let _ = unplug.send(());
                    }),
                )
            }
        };
        let t0 = Instant::now();
        std::os::unix::fs::symlink(&target, link).unwrap();
        let ev = p
            .until(Duration::from_secs(10), "serial seen", |e| {
                matches!(e, DeviceEvent::Seen(_))
            })
            .await;
        let seen = Instant::now();
        if let DeviceEvent::Seen(d) = &ev {
            assert_eq!(d.identity.verified, keys, "signature checked iff key known");
        }
        total.push(seen - t0);
        // The answer to the first Hello (a later Hello would mean one was
        // lost; then the split is of that one).
        let (hello_at, answered_at) = last_hello.lock().unwrap().unwrap();
        to_device.push(hello_at.saturating_duration_since(t0));
        in_device.push(answered_at.saturating_duration_since(hello_at));
        back.push(seen.saturating_duration_since(answered_at));
        unplug();
        std::fs::remove_file(link).unwrap();
        p.until(Duration::from_secs(10), "serial gone", |e| {
            matches!(e, DeviceEvent::Gone(_))
        })
        .await;
    }
    let label = match (via, keys) {
        (Via::Socat, false) => "serial",
        (Via::Socat, true) => "serial, signatures checked",
        (Via::Pty, false) => "serial on a bare pty",
        (Via::Pty, true) => "serial on a bare pty, checked",
    };
    report(label, total);
    report("  link -> hello at device", to_device);
    report("  device answers", in_device);
    report("  answer -> seen", back);
    p.shutdown.send(true).unwrap();
    let _ = src.await;
}

async fn mqtt_client(port: u16) -> (AsyncClient, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let mut o = MqttOptions::new(unique("bench-pub-"), "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    o.set_inflight(200);
    let (c, mut el) = AsyncClient::new(o, 256);
    // Counts the broker's acknowledgements (QoS 1).
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a = acks.clone();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                Ok(Event::Incoming(Packet::Disconnect)) | Err(_) => return,
                _ => {}
            }
        }
    });
    (c, acks)
}

/// What the publisher thread is asked to do.
enum Job {
    /// Publish one announce at QoS 0; answer the moment it was handed to
    /// the client.
    One(String, Vec<u8>),
    /// Publish 1000 announces spread over one second; answer how long the
    /// publishing took and how many the broker acknowledged.
    Burst(QoS, &'static str),
}

enum Done {
    One(Instant),
    Burst(Duration, usize),
}

/// One thread with its own runtime plays every device: the detector's
/// runtime never runs a publisher, and the bench adds one thread, not one
/// per burst, to the process whose peak RSS is reported.
fn mqtt_publisher(
    port: u16,
) -> (
    tokio::sync::mpsc::UnboundedSender<Job>,
    std::sync::mpsc::Receiver<Done>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
    let (dtx, drx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (client, acks) = mqtt_client(port).await;
            while let Some(job) = rx.recv().await {
                match job {
                    Job::One(t, pl) => {
                        let t0 = Instant::now();
                        client.publish(t, QoS::AtMostOnce, false, pl).await.unwrap();
                        if dtx.send(Done::One(t0)).is_err() {
                            return;
                        }
                    }
                    Job::Burst(qos, prefix) => {
                        // Signing is not what is measured: every payload
                        // is made first.
                        let payloads: Vec<(String, Vec<u8>)> = (0..1000)
                            .map(|i| {
                                let s = format!("{prefix}-{i:04}");
                                (format!("berth/announce/acme/{s}"), cbor_announce(&s, "1.0"))
                            })
                            .collect();
                        let acked_before = acks.load(std::sync::atomic::Ordering::SeqCst);
                        let start = tokio::time::Instant::now();
                        for (i, (t, pl)) in payloads.into_iter().enumerate() {
                            // Spread evenly over one second.
                            tokio::time::sleep_until(
                                start + Duration::from_micros(i as u64 * 1000),
                            )
                            .await;
                            client.publish(t, qos, false, pl).await.unwrap();
                        }
                        let sent = start.elapsed();
                        // At QoS 1, wait (bounded) for every acknowledgement.
                        let end = tokio::time::Instant::now() + Duration::from_secs(10);
                        while qos == QoS::AtLeastOnce
                            && acks.load(std::sync::atomic::Ordering::SeqCst) - acked_before < 1000
                            && tokio::time::Instant::now() < end
                        {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        let acked = acks.load(std::sync::atomic::Ordering::SeqCst) - acked_before;
                        if dtx.send(Done::Burst(sent, acked)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    });
    (tx, drx)
}

async fn mqtt_burst(
    p: &mut Pipeline,
    jobs: &tokio::sync::mpsc::UnboundedSender<Job>,
    done: &std::sync::mpsc::Receiver<Done>,
    qos: QoS,
    prefix: &'static str,
    label: &str,
) {
    let drops_before = p.drops.snapshot();
    jobs.send(Job::Burst(qos, prefix)).unwrap();
    // Time from the first announce seen to the last.
    let mut got = 0;
    p.until(Duration::from_secs(60), "first burst device", |e| {
        matches!(e, DeviceEvent::Seen(d) if d.identity.serial_number.as_deref().is_some_and(|s| s.starts_with(prefix)))
    })
    .await;
    got += 1;
    let t0 = Instant::now();
    let end = Instant::now() + Duration::from_secs(60);
    while got < 1000 && Instant::now() < end {
        if let Ok(Some(DeviceEvent::Seen(d))) =
            tokio::time::timeout(Duration::from_secs(5), p.events.recv()).await
        {
            if d.identity
                .serial_number
                .as_deref()
                .is_some_and(|s| s.starts_with(prefix))
            {
                got += 1;
            }
        }
    }
    let took = t0.elapsed();
    let Done::Burst(sent_in, acked) = done.recv_timeout(Duration::from_secs(30)).unwrap() else {
        panic!("publisher answered out of turn");
    };
    println!(
        "mqtt     burst    {label}: 1000 published in {:.3} s (broker acked {acked}); {got}/1000 seen, first to last {:.3} s; drops before {:?} after {:?}",
        sent_in.as_secs_f64(),
        took.as_secs_f64(),
        drops_before,
        p.drops.snapshot()
    );
}

async fn bench_mqtt() {
    need("mosquitto");
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path().join("m.conf");
    // mosquitto's default limits (20 in flight, 1000 queued per client).
    write_file(
        &conf,
        &format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    );
    let _broker = Peer::spawn(
        "mosquitto",
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until(Duration::from_secs(10), "mosquitto", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let (jobs, done) = mqtt_publisher(port);
    let one = |t: String, pl: Vec<u8>| {
        jobs.send(Job::One(t, pl)).unwrap();
    };
    let when = || match done.recv_timeout(Duration::from_secs(10)).unwrap() {
        Done::One(t) => t,
        Done::Burst(..) => panic!("publisher answered out of turn"),
    };
    // One pipeline per measurement: the devices of one do not weigh on the
    // next, as in a detector that knows 1000 devices.
    for (qos, prefix, label, keys) in [
        (None, "LAT", "", false),
        (Some(QoS::AtMostOnce), "TP0", "qos 0", false),
        (Some(QoS::AtLeastOnce), "TP1", "qos 1", false),
        (
            Some(QoS::AtLeastOnce),
            "TPK",
            "qos 1, signatures checked",
            true,
        ),
    ] {
        let mut p = pipeline();
        let mut cfg = mqtt::MqttConfig::new("127.0.0.1", port);
        cfg.client_id = unique("berth-bench-");
        if keys {
            cfg.keys
                .add("acme", &protocol::announce::public_key(&SEED))
                .unwrap();
        }
        let src = tokio::spawn(mqtt::run(cfg, p.emitter.clone(), p.shutdown_rx.clone()));
        // Wait for the subscription.
        let mut n = 0;
        loop {
            n += 1;
            assert!(n < 100, "mqtt source never subscribed");
            one(
                format!("berth/announce/acme/WARM-{prefix}"),
                cbor_announce(&format!("WARM-{prefix}"), "1"),
            );
            when();
            if tokio::time::timeout(Duration::from_millis(100), p.events.recv())
                .await
                .is_ok()
            {
                break;
            }
        }
        match qos {
            None => {
                let mut samples = Vec::new();
                for i in 0..200 {
                    let serial = format!("LAT-{i}");
                    let payload = cbor_announce(&serial, "1.0");
                    let topic = format!("berth/announce/acme/{serial}");
                    one(topic, payload);
                    p.until(Duration::from_secs(5), "mqtt seen", |e| {
                        matches!(e, DeviceEvent::Seen(d) if d.identity.serial_number.as_deref() == Some(serial.as_str()))
                    })
                    .await;
                    let seen = Instant::now();
                    samples.push(seen.saturating_duration_since(when()));
                }
                report("mqtt", samples);
            }
            Some(qos) => mqtt_burst(&mut p, &jobs, &done, qos, prefix, label).await,
        }
        p.shutdown.send(true).unwrap();
        let _ = src.await;
    }
}

async fn bench_ble() {
    need("dbus-daemon");
    need("/usr/bin/python3");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("bus.conf");
    write_file(
        &conf,
        &format!(
            "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
             \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n<busconfig><type>session</type>\
             <listen>unix:path={}/bus</listen><auth>EXTERNAL</auth><policy context=\"default\">\
             <allow send_destination=\"*\" eavesdrop=\"true\"/><allow eavesdrop=\"true\"/><allow own=\"*\"/>\
             </policy></busconfig>\n",
            dir.path().display()
        ),
    );
    let mut daemon = Peer::spawn(
        "dbus-daemon",
        Command::new("dbus-daemon")
            .arg("--nofork")
            .arg("--print-address")
            .arg(format!("--config-file={}", conf.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let address = first_line(daemon.child.as_mut().unwrap());
    let _mock = Peer::spawn(
        "dbusmock",
        Command::new("/usr/bin/python3")
            .args(["-m", "dbusmock", "--template", "bluez5"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bluez_ctl.py");
    let ctl_with = |args: &[&str], stderr: Stdio| {
        Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(&address)
            .args(args)
            .stderr(stderr)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let ctl = |args: &[&str]| ctl_with(args, Stdio::inherit());
    // Until the mock owns org.bluez the controller fails; those expected
    // failures stay quiet (the wait reports a timeout itself).
    wait_until(Duration::from_secs(15), "bluez mock", || {
        ctl_with(&["add-adapter", "hci0"], Stdio::null())
    });
    let mut p = pipeline();
    let cfg = ble::BleConfig {
        bus_address: Some(address.clone()),
        retry: Duration::from_millis(200),
        ..ble::BleConfig::default()
    };
    let src = tokio::spawn(ble::run(cfg, p.emitter.clone(), p.shutdown_rx.clone()));
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mfr = |fw: &str| {
        let a = protocol::announce::AnnounceBuilder::new(
            "acme",
            "Bench Tag",
            "BLE-B",
            fw,
            "https://provision.acme.example/berth",
            1,
        )
        .sign(&SEED)
        .unwrap();
        let mut out = vec![0u8; protocol::ble::MAX_MANUFACTURER_DATA];
        let n = protocol::ble::encode_manufacturer_data(&a, &mut out).unwrap();
        out.truncate(n);
        out
    };
    assert!(ctl(&[
        "add-device",
        "hci0",
        "C0:FF:EE:00:00:09",
        "bench",
        "0xffff",
        &hex(&mfr("0")),
        "-40"
    ]));
    p.until(Duration::from_secs(10), "ble seen", |e| {
        matches!(e, DeviceEvent::Seen(_))
    })
    .await;
    // Another client of the bus, on its own thread, timestamps every
    // PropertiesChanged signal BlueZ (the mock) emits: that moment is the
    // transport event.
    let signals = bus_observer(&address);
    // One long-lived controller: commands on its stdin, no interpreter
    // start-up per change.
    let mut ctl_proc = Peer::spawn(
        "bluez_ctl serve",
        Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(&address)
            .arg("serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let mut ctl_in = ctl_proc.child.as_mut().unwrap().stdin.take().unwrap();
    let ctl_out = std::io::BufReader::new(ctl_proc.child.as_mut().unwrap().stdout.take().unwrap());
    let (done_tx, done_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in ctl_out.lines() {
            let Ok(line) = line else { return };
            if (line == "ok" || line.starts_with("error")) && done_tx.send(line).is_err() {
                return;
            }
        }
    });
    // The controller is up once it answers.
    {
        use std::io::Write;
        writeln!(ctl_in, "ping").unwrap();
        ctl_in.flush().unwrap();
        let answer = done_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(answer, "ok");
    }
    let mut samples = Vec::new();
    for i in 1..=100 {
        let data = hex(&mfr(&format!("1.{i}")));
        // Below the merger's flood limit for one address (10/s).
        tokio::time::sleep(Duration::from_millis(120)).await;
        while signals.try_recv().is_ok() {}
        use std::io::Write;
        writeln!(
            ctl_in,
            "set-manufacturer-data hci0 C0:FF:EE:00:00:09 0xffff {data}"
        )
        .unwrap();
        ctl_in.flush().unwrap();
        p.until(Duration::from_secs(5), "ble updated", |e| {
            matches!(e, DeviceEvent::Updated(_))
        })
        .await;
        let seen = Instant::now();
        let emitted = signals
            .recv_timeout(Duration::from_secs(5))
            .expect("the observer saw no PropertiesChanged");
        samples.push(seen.saturating_duration_since(emitted));
        let answer = done_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(answer, "ok");
    }
    drop(ctl_in);
    report("ble", samples);
    p.shutdown.send(true).unwrap();
    let _ = src.await;
}

/// A bus client on its own thread and runtime that sends the moment each
/// `org.bluez.Device1` PropertiesChanged signal arrives.
fn bus_observer(address: &str) -> std::sync::mpsc::Receiver<Instant> {
    use futures_util::StreamExt;
    let (tx, rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let address = address.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let conn = zbus::connection::Builder::address(address.as_str())
                .unwrap()
                .build()
                .await
                .unwrap();
            let rule = zbus::MatchRule::builder()
                .msg_type(zbus::message::Type::Signal)
                .interface("org.freedesktop.DBus.Properties")
                .unwrap()
                .member("PropertiesChanged")
                .unwrap()
                .build();
            let mut stream = zbus::MessageStream::for_match_rule(rule, &conn, Some(64))
                .await
                .unwrap();
            ready_tx.send(()).unwrap();
            while let Some(Ok(_msg)) = stream.next().await {
                let at = Instant::now();
                if tx.send(at).is_err() {
                    return;
                }
            }
        });
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    rx
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let only = std::env::args().nth(1);
    // `probe-bench serial N`: N ports per serial run (200 by default).
    let serial_n = std::env::args()
        .nth(2)
        .map(|n| n.parse().expect("the port count is a number"))
        .unwrap_or(200);
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    rt.block_on(async {
        if run("serial") {
            for (keys, via) in [
                (false, Via::Socat),
                (true, Via::Socat),
                (false, Via::Pty),
                (true, Via::Pty),
            ] {
                bench_serial(serial_n, keys, via).await;
            }
            println!("         peak RSS after serial {} KiB", peak_rss_kib());
        }
        if run("mqtt") {
            bench_mqtt().await;
            println!("         peak RSS after mqtt {} KiB", peak_rss_kib());
        }
        if run("ble") {
            bench_ble().await;
        }
    });
    println!(
        "peak RSS {} KiB (VmHWM of the benchmark process)",
        peak_rss_kib()
    );
}

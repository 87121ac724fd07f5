//! Detection benchmark against real peers (not a test: it prints figures).
//!
//! - Latency, transport event to device event, p50/p99, per source:
//!   serial (pty link appears → Seen, handshake included), MQTT (announce
//!   published → Seen), BLE (BlueZ property change → Updated; the BLE
//!   figure includes the mock's signal and one blocked Python call, and the
//!   event is awaited only after that call returns, so it is an upper
//!   bound).
//! - Throughput: 1000 distinct devices announcing over MQTT within one
//!   second: how long until all 1000 are Seen, and what was dropped.
//! - Peak RSS of this process (sources, merger and clients) at the end.
//!
//! Needs socat, mosquitto, dbus-daemon and /usr/bin/python3 with dbusmock.
//! Run: `cargo run --release -p device-probes --example probe-bench`.
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
        "{name:<8} latency  n={:<4} p50={:>8.2} ms  p99={:>8.2} ms",
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

async fn bench_serial() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("sys/class/tty")).unwrap();
    let watched = dir.path().join("by-id");
    std::fs::create_dir(&watched).unwrap();
    let mut p = pipeline();
    let explicit: Vec<_> = (0..20).map(|i| watched.join(format!("dev{i}"))).collect();
    let cfg = serial::SerialConfig {
        sysfs_root: dir.path().join("sys"),
        dev_dir: dir.path().to_owned(),
        watch_dirs: Vec::new(),
        explicit: explicit.clone(),
        uevents: false,
        poll: None,
        hello_every: Duration::from_millis(200),
        ..serial::SerialConfig::default()
    };
    let src = tokio::spawn(serial::run(cfg, p.emitter.clone(), p.shutdown_rx.clone()));
    let mut samples = Vec::new();
    for (i, a) in explicit.iter().enumerate() {
        let b = dir.path().join(format!("b{i}"));
        let pair = socat_pair(a, &b);
        let t0 = Instant::now();
        let _dev = FakeDevice::start(&pair.b, "acme", &format!("SER-{i}"), Noise::None);
        p.until(Duration::from_secs(10), "serial seen", |e| {
            matches!(e, DeviceEvent::Seen(_))
        })
        .await;
        samples.push(t0.elapsed());
        drop(pair);
        p.until(Duration::from_secs(10), "serial gone", |e| {
            matches!(e, DeviceEvent::Gone(_))
        })
        .await;
    }
    report("serial", samples);
    p.shutdown.send(true).unwrap();
    let _ = src.await;
}

async fn mqtt_client(port: u16) -> AsyncClient {
    let mut o = MqttOptions::new(unique("bench-pub-"), "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (c, mut el) = AsyncClient::new(o, 2048);
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Disconnect)) | Err(_) => return,
                _ => {}
            }
        }
    });
    c
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
    write_file(
        &conf,
        &format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 5000\n"),
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
    let mut p = pipeline();
    let mut cfg = mqtt::MqttConfig::new("127.0.0.1", port);
    cfg.channel_capacity = 256;
    let src = tokio::spawn(mqtt::run(cfg, p.emitter.clone(), p.shutdown_rx.clone()));
    let client = mqtt_client(port).await;
    // Wait for the subscription.
    let mut n = 0;
    loop {
        n += 1;
        assert!(n < 100, "mqtt source never subscribed");
        client
            .publish(
                "berth/announce/acme/WARM",
                QoS::AtMostOnce,
                false,
                cbor_announce("WARM", "1"),
            )
            .await
            .unwrap();
        if tokio::time::timeout(Duration::from_millis(100), p.events.recv())
            .await
            .is_ok()
        {
            break;
        }
    }
    let mut samples = Vec::new();
    for i in 0..200 {
        let serial = format!("LAT-{i}");
        let payload = cbor_announce(&serial, "1.0");
        let topic = format!("berth/announce/acme/{serial}");
        let t0 = Instant::now();
        client
            .publish(topic, QoS::AtMostOnce, false, payload)
            .await
            .unwrap();
        p.until(Duration::from_secs(5), "mqtt seen", |e| {
            matches!(e, DeviceEvent::Seen(d) if d.identity.serial_number.as_deref() == Some(serial.as_str()))
        })
        .await;
        samples.push(t0.elapsed());
    }
    report("mqtt", samples);

    // 1000 devices within one second.
    let drops_before = p.drops.snapshot();
    // The publisher runs on a thread and runtime of its own, like a fleet
    // of devices would: it must not share the detector's runtime.
    let publisher = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Signing is not what is measured: prepare every payload first.
        let payloads: Vec<(String, Vec<u8>)> = (0..1000)
            .map(|i| {
                let s = format!("TP-{i:04}");
                (format!("berth/announce/acme/{s}"), cbor_announce(&s, "1.0"))
            })
            .collect();
        rt.block_on(async move {
            let client = mqtt_client(port).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let start = tokio::time::Instant::now();
            for (i, (t, pl)) in payloads.into_iter().enumerate() {
                // Spread evenly over one second.
                tokio::time::sleep_until(start + Duration::from_micros(i as u64 * 1000)).await;
                client.publish(t, QoS::AtMostOnce, false, pl).await.unwrap();
            }
            let sent = start.elapsed();
            // Let the client's event loop flush before the runtime ends.
            tokio::time::sleep(Duration::from_secs(2)).await;
            sent
        })
    });
    // Time from the first announce published (after the payloads are
    // signed and the publisher is connected) to the last device seen.
    let mut got = 0;
    let first = p
        .until(Duration::from_secs(60), "first burst device", |e| {
            matches!(e, DeviceEvent::Seen(d) if d.identity.serial_number.as_deref().is_some_and(|s| s.starts_with("TP-")))
        })
        .await;
    drop(first);
    got += 1;
    let t0 = Instant::now();
    let end = Instant::now() + Duration::from_secs(30);
    while got < 1000 && Instant::now() < end {
        if let Ok(Some(DeviceEvent::Seen(d))) =
            tokio::time::timeout(Duration::from_secs(5), p.events.recv()).await
        {
            if d.identity
                .serial_number
                .as_deref()
                .is_some_and(|s| s.starts_with("TP-"))
            {
                got += 1;
            }
        }
    }
    let took = t0.elapsed();
    let sent_in = publisher.join().unwrap();
    println!(
        "mqtt     burst    1000 announces published in {:.3} s; {got}/1000 devices seen after {:.3} s ({:.0} devices/s); drops before {:?} after {:?}",
        sent_in.as_secs_f64(),
        took.as_secs_f64(),
        f64::from(got) / took.as_secs_f64(),
        drops_before,
        p.drops.snapshot()
    );
    p.shutdown.send(true).unwrap();
    let _ = src.await;
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
    let ctl = |args: &[&str]| {
        Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(&address)
            .args(args)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    wait_until(Duration::from_secs(15), "bluez mock", || {
        ctl(&["add-adapter", "hci0"])
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
    let mut samples = Vec::new();
    for i in 1..=50 {
        let data = hex(&mfr(&format!("1.{i}")));
        // bluez_ctl.py prints the wall-clock moment right before it sets
        // the property: the latency excludes Python's start-up.
        let out = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(&address)
            .args([
                "set-manufacturer-data",
                "hci0",
                "C0:FF:EE:00:00:09",
                "0xffff",
                &data,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stamp: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        p.until(Duration::from_secs(5), "ble updated", |e| {
            matches!(e, DeviceEvent::Updated(_))
        })
        .await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        samples.push(Duration::from_secs_f64((now - stamp).max(0.0)));
    }
    report("ble", samples);
    p.shutdown.send(true).unwrap();
    let _ = src.await;
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
    rt.block_on(async {
        bench_serial().await;
        bench_mqtt().await;
        bench_ble().await;
    });
    println!(
        "peak RSS {} KiB (VmHWM of the benchmark process)",
        peak_rss_kib()
    );
}

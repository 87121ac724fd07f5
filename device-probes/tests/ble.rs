//! The BLE source against BlueZ's D-Bus API as served by python-dbusmock's
//! bluez5 template on a private dbus-daemon: adapter absent and powered
//! off, native announces in manufacturer data, property updates, removal,
//! the presence timeout, and malformed advertisements.
#![cfg(feature = "ble")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use device_probes::ble::{self, BleConfig};
use device_probes::event::{DeviceEvent, DropReason};

const T: Duration = Duration::from_secs(15);
const PYTHON: &str = "/usr/bin/python3";

struct Bus {
    address: String,
    _daemon: Peer,
    _mock: Peer,
}

fn ctl_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bluez_ctl.py")
}

/// Runs one bluez_ctl.py command; panics with its stderr on failure.
fn ctl(bus: &str, args: &[&str]) {
    let out = Command::new(PYTHON)
        .arg(ctl_script())
        .arg(bus)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bluez_ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private bus with the bluez5 mock on it.
fn bluez(dir: &Path) -> Bus {
    need("dbus-daemon");
    need(PYTHON);
    let ok = Command::new(PYTHON)
        .args(["-c", "import dbusmock"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "precondition missing: python3-dbusmock for {PYTHON}");
    let conf = dir.join("bus.conf");
    write_file(
        &conf,
        &format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
            dir.display()
        ),
    );
    let mut daemon = Peer::spawn(
        "dbus-daemon",
        Command::new("dbus-daemon")
            .arg("--nofork")
            .arg("--print-address")
            .arg(format!("--config-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let address = first_line(daemon.child.as_mut().unwrap());
    assert!(
        address.starts_with("unix:"),
        "dbus-daemon printed {address:?}"
    );
    let mock = Peer::spawn(
        "dbusmock",
        Command::new(PYTHON)
            .args(["-m", "dbusmock", "--template", "bluez5"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &address)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_until(Duration::from_secs(15), "bluez mock on the bus", || {
        Command::new("dbus-send")
            .arg(format!("--bus={address}"))
            .args([
                "--print-reply",
                "--dest=org.bluez",
                "/",
                "org.freedesktop.DBus.Peer.Ping",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    });
    Bus {
        address,
        _daemon: daemon,
        _mock: mock,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn announce(serial: &str, firmware: &str) -> String {
    announce_n(serial, firmware, 1)
}

fn announce_n(serial: &str, firmware: &str, counter: u64) -> String {
    let a = protocol::announce::AnnounceBuilder::new(
        "acme",
        "Fake Tag",
        serial,
        firmware,
        "https://provision.acme.example/berth",
        counter,
    )
    .sign(&SEED)
    .unwrap();
    let mut out = vec![0u8; protocol::ble::MAX_MANUFACTURER_DATA];
    let n = protocol::ble::encode_manufacturer_data(&a, &mut out).unwrap();
    hex(&out[..n])
}

#[tokio::test(flavor = "current_thread")]
async fn bluez_devices_seen_updated_removed_and_timed_out() {
    let dir = tempfile::tempdir().unwrap();
    let bus = bluez(dir.path());
    let b = bus.address.clone();
    let mut p = pipeline();
    let cfg = BleConfig {
        bus_address: Some(b.clone()),
        gone_after: Duration::from_secs(2),
        retry: Duration::from_millis(300),
        ..BleConfig::default()
    };
    let src = tokio::spawn(ble::run(cfg, p.emitter.clone(), p.shutdown_rx.clone()));

    // No adapter, then a powered-off one: the source waits, does not fail.
    p.quiet(Duration::from_millis(700)).await;
    assert!(!src.is_finished());
    ctl(&b, &["add-adapter", "hci0"]);
    ctl(&b, &["set-powered", "hci0", "false"]);
    ctl(
        &b,
        &[
            "add-device",
            "hci0",
            "C0:FF:EE:00:00:01",
            "tag1",
            "0xffff",
            &announce("BLE-1", "1.0.0"),
            "-50",
        ],
    );
    p.quiet(Duration::from_millis(700)).await;
    assert!(!src.is_finished());
    ctl(&b, &["set-powered", "hci0", "true"]);
    let ev = p.next(T).await;
    let DeviceEvent::Seen(d) = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(d.id.0, "acme:BLE-1");
    assert_eq!(d.identity.model.as_deref(), Some("Fake Tag"));
    assert_eq!(d.identity.mac.as_deref(), Some("c0:ff:ee:00:00:01"));

    // A new announce in the advertisement: Updated.
    ctl(
        &b,
        &[
            "set-manufacturer-data",
            "hci0",
            "C0:FF:EE:00:00:01",
            "0xffff",
            &announce("BLE-1", "1.1.0"),
        ],
    );
    let ev = p.next(T).await;
    assert!(
        matches!(&ev, DeviceEvent::Updated(d) if d.identity.firmware.as_deref() == Some("1.1.0")),
        "{ev:?}"
    );

    // A broken announce is dropped and counted; a foreign company id shows
    // as an unidentified device.
    ctl(
        &b,
        &[
            "add-device",
            "hci0",
            "C0:FF:EE:00:00:02",
            "junk",
            "0xffff",
            "a3ff00",
            "-70",
        ],
    );
    ctl(
        &b,
        &[
            "add-device",
            "hci0",
            "C0:FF:EE:00:00:03",
            "beacon",
            "0x004c",
            "0215aa",
            "-70",
        ],
    );
    let ev = p.next(T).await;
    let DeviceEvent::Seen(beacon) = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(beacon.id.0, "ble:C0:FF:EE:00:00:03");
    assert_eq!(beacon.identity.ble_company_id, Some(0x004c));
    assert_eq!(
        p.drops.get(DropReason::BadCbor),
        1,
        "{:?}",
        p.drops.snapshot()
    );

    // Removal through the adapter: Gone.
    ctl(&b, &["remove-device", "hci0", "C0:FF:EE:00:00:01"]);
    let ev = p.next(T).await;
    assert!(
        matches!(&ev, DeviceEvent::Gone(d) if d.id.0 == "acme:BLE-1"),
        "{ev:?}"
    );

    // The beacon goes silent: Gone after the last-seen timeout; it is seen
    // again when it is heard again.
    let ev = p.next(Duration::from_secs(6)).await;
    assert!(
        matches!(&ev, DeviceEvent::Gone(d) if d.id.0 == beacon.id.0),
        "{ev:?}"
    );
    ctl(&b, &["set-rssi", "hci0", "C0:FF:EE:00:00:03", "-60"]);
    let ev = p.next(T).await;
    assert!(
        matches!(&ev, DeviceEvent::Seen(d) if d.id.0 == beacon.id.0),
        "{ev:?}"
    );
    p.shutdown.send(true).unwrap();
    tokio::time::timeout(T, src)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// An advertisement that goes back to an older announce counter is a
/// replay: dropped and counted, no update; a newer one updates.
#[tokio::test(flavor = "current_thread")]
async fn advertised_older_counter_is_a_replay() {
    use device_probes::announce::KeyRing;
    use device_probes::replay::ReplayGuard;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let bus = bluez(dir.path());
    let b = bus.address.clone();
    let guard = Arc::new(ReplayGuard::in_memory());
    let mut p = pipeline();
    let cfg = BleConfig {
        bus_address: Some(b.clone()),
        retry: Duration::from_millis(300),
        keys: KeyRing::default().with_replay(guard.clone()),
        ..BleConfig::default()
    };
    let src = tokio::spawn(ble::run(cfg, p.emitter.clone(), p.shutdown_rx.clone()));
    ctl(&b, &["add-adapter", "hci0"]);
    let mac = "C0:FF:EE:00:00:07";
    ctl(
        &b,
        &[
            "add-device",
            "hci0",
            mac,
            "tag7",
            "0xffff",
            &announce_n("BLE-7", "2.0", 20),
            "-50",
        ],
    );
    let ev = p.next(T).await;
    assert!(
        matches!(&ev, DeviceEvent::Seen(d) if d.id.0 == "acme:BLE-7"),
        "{ev:?}"
    );
    ctl(
        &b,
        &[
            "set-manufacturer-data",
            "hci0",
            mac,
            "0xffff",
            &announce_n("BLE-7", "1.0", 19),
        ],
    );
    p.quiet(Duration::from_millis(800)).await;
    assert_eq!(
        p.drops.get(DropReason::Replay),
        1,
        "{:?}",
        p.drops.snapshot()
    );
    ctl(
        &b,
        &[
            "set-manufacturer-data",
            "hci0",
            mac,
            "0xffff",
            &announce_n("BLE-7", "2.1", 21),
        ],
    );
    let ev = p.next(T).await;
    assert!(
        matches!(&ev, DeviceEvent::Updated(d) if d.identity.firmware.as_deref() == Some("2.1")),
        "{ev:?}"
    );
    assert_eq!(guard.last("acme", "BLE-7"), Some(21));
    p.shutdown.send(true).unwrap();
    tokio::time::timeout(T, src)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

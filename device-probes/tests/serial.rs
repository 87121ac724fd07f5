//! The serial source against socat pty pairs with a fake device on the far
//! end: handshake, unplug, hotplug (inotify and netlink uevents), USB rules
//! from a fake sysfs tree, exclusive locking and malformed input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use device_probes::event::{DeviceEvent, DropReason, Transport};
use device_probes::rules::Rules;
use device_probes::serial::{self, SerialConfig};

const T: Duration = Duration::from_secs(15);

fn config(sysfs: &Path, dev: &Path) -> SerialConfig {
    SerialConfig {
        sysfs_root: sysfs.to_owned(),
        dev_dir: dev.to_owned(),
        watch_dirs: Vec::new(),
        explicit: Vec::new(),
        uevents: false,
        poll: None,
        hello_every: Duration::from_millis(300),
        identify_timeout: Duration::from_secs(3),
        reopen_after: Duration::from_millis(500),
        ..SerialConfig::default()
    }
}

/// An empty fake sysfs (class/tty exists, no ports).
fn empty_sysfs(root: &Path) -> PathBuf {
    let s = root.join("sys");
    std::fs::create_dir_all(s.join("class/tty")).unwrap();
    s
}

fn fake_usb_tty(sysfs: &Path, busport: &str, tty: &str, vid: u16, pid: u16, serial: &str) {
    let dev = sysfs.join(format!("devices/pci0000:00/usb1/{busport}"));
    let port = dev.join(format!("{busport}:1.0/{tty}"));
    let ttydir = port.join(format!("tty/{tty}"));
    std::fs::create_dir_all(&ttydir).unwrap();
    write_file(&dev.join("idVendor"), &format!("{vid:04x}\n"));
    write_file(&dev.join("idProduct"), &format!("{pid:04x}\n"));
    write_file(&dev.join("serial"), &format!("{serial}\n"));
    write_file(&dev.join("manufacturer"), "FTDI\n");
    write_file(&dev.join("product"), "FT232R USB UART\n");
    std::os::unix::fs::symlink(&port, ttydir.join("device")).unwrap();
    std::os::unix::fs::symlink(&ttydir, sysfs.join(format!("class/tty/{tty}"))).unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn explicit_port_handshake_then_unplug() {
    let dir = tempfile::tempdir().unwrap();
    let sysfs = empty_sysfs(dir.path());
    let mut pair = socat_pair(&dir.path().join("a"), &dir.path().join("b"));
    let dev = FakeDevice::start(&pair.b, "acme", "SN-100", Noise::None);
    let mut p = pipeline();
    let mut cfg = config(&sysfs, dir.path());
    cfg.explicit = vec![pair.a.clone()];
    let src = tokio::spawn(serial::run(cfg, p.emitter.clone(), p.shutdown_rx.clone()));

    let ev = p.next(T).await;
    let DeviceEvent::Seen(d) = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(d.id.0, "acme:SN-100");
    assert_eq!(d.identity.model.as_deref(), Some("Fake Meter"));
    assert_eq!(d.identity.firmware.as_deref(), Some("1.0.0"));
    assert_eq!(
        d.seen_on,
        vec![(Transport::Serial, pair.a.to_string_lossy().into_owned())]
    );
    assert!(dev.hellos.load(Ordering::SeqCst) >= 1);

    // Unplug: the far end goes away.
    pair.peer.kill();
    let ev = p.next(T).await;
    assert!(
        matches!(&ev, DeviceEvent::Gone(d) if d.id.0 == "acme:SN-100"),
        "{ev:?}"
    );
    p.shutdown.send(true).unwrap();
    tokio::time::timeout(T, src)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn hotplug_by_link_appearing_in_watched_dir() {
    let dir = tempfile::tempdir().unwrap();
    let sysfs = empty_sysfs(dir.path());
    let watched = dir.path().join("by-id");
    std::fs::create_dir(&watched).unwrap();
    let a = watched.join("usb-acme_meter-if00");
    let mut p = pipeline();
    let mut cfg = config(&sysfs, dir.path());
    cfg.explicit = vec![a.clone()];
    let src = tokio::spawn(serial::run(cfg, p.emitter.clone(), p.shutdown_rx.clone()));
    // Nothing there yet, and nothing polls: only inotify can notice.
    p.quiet(Duration::from_millis(500)).await;

    let pair = socat_pair(&a, &dir.path().join("b"));
    let _dev = FakeDevice::start(&pair.b, "acme", "HOT-1", Noise::None);
    let ev = p.next(T).await;
    assert!(
        matches!(&ev, DeviceEvent::Seen(d) if d.id.0 == "acme:HOT-1"),
        "{ev:?}"
    );
    drop(pair);
    let ev = p.next(T).await;
    assert!(matches!(&ev, DeviceEvent::Gone(_)), "{ev:?}");
    p.shutdown.send(true).unwrap();
    tokio::time::timeout(T, src)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn usb_rule_opens_only_matching_port_from_fake_sysfs() {
    let dir = tempfile::tempdir().unwrap();
    let sysfs = empty_sysfs(dir.path());
    let devdir = dir.path().join("dev");
    std::fs::create_dir(&devdir).unwrap();
    // Ours: 0403:6001 serial A10K. A stranger: 1a86:7523.
    fake_usb_tty(&sysfs, "1-1", "ttyUSB0", 0x0403, 0x6001, "A10K");
    fake_usb_tty(&sysfs, "1-2", "ttyUSB1", 0x1a86, 0x7523, "X");
    let ours = socat_pair(&devdir.join("ttyUSB0"), &dir.path().join("b0"));
    let stranger = socat_pair(&devdir.join("ttyUSB1"), &dir.path().join("b1"));
    let _dev = FakeDevice::start(&ours.b, "acme", "USB-1", Noise::None);
    let stranger_got = canary(&stranger.b);
    let rules = Rules::parse(
        "[[rule]]\nvendor = \"acme\"\nusb = { vid = 0x0403, pid = 0x6001, serial = \"A10K\" }\nbaud = 57600\n",
        Path::new("rules.toml"),
    )
    .unwrap();
    let mut p = pipeline();
    let mut cfg = config(&sysfs, &devdir);
    cfg.rules = Arc::new(rules);
    let src = tokio::spawn(serial::run(cfg, p.emitter.clone(), p.shutdown_rx.clone()));
    let ev = p.next(T).await;
    let DeviceEvent::Seen(d) = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(d.id.0, "acme:USB-1");
    let usb = d.identity.usb.as_ref().expect("usb ids");
    assert_eq!((usb.vid, usb.pid), (0x0403, 0x6001));
    assert_eq!(usb.serial.as_deref(), Some("A10K"));
    assert_eq!(usb.manufacturer.as_deref(), Some("FTDI"));

    // While the port is ours, nobody else gets it: TIOCEXCL + flock.
    let again = device_probes::serial::port::open(&devdir.join("ttyUSB0"), 9600);
    assert!(again.is_err(), "second open of a held port succeeded");
    let f = std::fs::File::open(devdir.join("ttyUSB0")).unwrap();
    let locked = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock);
    assert!(locked.is_err(), "flock on a held port succeeded");

    // The stranger's port was never opened: not one byte reached it.
    p.quiet(Duration::from_secs(1)).await;
    assert_eq!(stranger_got.load(Ordering::SeqCst), 0);
    assert_eq!(p.drops.get(DropReason::UnknownVendor), 1);
    p.shutdown.send(true).unwrap();
    let ev = p.next(T).await;
    assert!(matches!(&ev, DeviceEvent::Gone(_)), "{ev:?}");
    tokio::time::timeout(T, src)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn without_rules_usb_ports_are_listed_not_opened() {
    let dir = tempfile::tempdir().unwrap();
    let sysfs = empty_sysfs(dir.path());
    let devdir = dir.path().join("dev");
    std::fs::create_dir(&devdir).unwrap();
    fake_usb_tty(&sysfs, "1-1", "ttyUSB3", 0x0403, 0x6001, "Q1");
    let pair = socat_pair(&devdir.join("ttyUSB3"), &dir.path().join("b"));
    let got = canary(&pair.b);
    let mut p = pipeline();
    let src = tokio::spawn(serial::run(
        config(&sysfs, &devdir),
        p.emitter.clone(),
        p.shutdown_rx.clone(),
    ));
    let ev = p.next(T).await;
    let DeviceEvent::Seen(d) = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(
        d.identity.usb.as_ref().unwrap().serial.as_deref(),
        Some("Q1")
    );
    assert_eq!(d.identity.model.as_deref(), Some("FT232R USB UART"));
    p.quiet(Duration::from_millis(800)).await;
    assert_eq!(
        got.load(Ordering::SeqCst),
        0,
        "an unmatched port was written to"
    );
    p.shutdown.send(true).unwrap();
    tokio::time::timeout(T, src)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn malformed_frames_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let sysfs = empty_sysfs(dir.path());
    let pair = socat_pair(&dir.path().join("a"), &dir.path().join("b"));
    let _dev = FakeDevice::start(&pair.b, "acme", "NOISY-1", Noise::Malformed);
    let mut p = pipeline();
    let mut cfg = config(&sysfs, dir.path());
    cfg.explicit = vec![pair.a.clone()];
    let src = tokio::spawn(serial::run(cfg, p.emitter.clone(), p.shutdown_rx.clone()));
    let ev = p.next(T).await;
    assert!(
        matches!(&ev, DeviceEvent::Seen(d) if d.id.0 == "acme:NOISY-1"),
        "{ev:?}"
    );
    assert!(p.drops.get(DropReason::BadCrc) + p.drops.get(DropReason::BadFrame) >= 1);
    assert!(
        p.drops.get(DropReason::Oversize) >= 1,
        "{:?}",
        p.drops.snapshot()
    );
    assert!(
        p.drops.get(DropReason::BadCbor) >= 1,
        "{:?}",
        p.drops.snapshot()
    );
    p.shutdown.send(true).unwrap();
    tokio::time::timeout(T, src)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Hotplug by a udev-format uevent, sent and received inside a private
/// network namespace (uevents sent from userspace stay in their netns).
#[test]
#[ignore = "privileged: needs root"]
fn udev_uevent_in_private_netns_triggers_rescan() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "precondition missing: root (run with sudo)"
    );
    need("socat");
    let dir = tempfile::tempdir().unwrap();
    let sysfs = empty_sysfs(dir.path());
    let devdir = dir.path().join("dev");
    std::fs::create_dir(&devdir).unwrap();
    let (sysfs2, devdir2, root) = (sysfs.clone(), devdir.clone(), dir.path().to_owned());
    // Namespaces are per thread: unshare on a thread of our own and run the
    // whole source there.
    let t = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("precondition missing: unshare(CLONE_NEWNET)");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut p = pipeline();
            let mut cfg = config(&sysfs2, &devdir2);
            cfg.uevents = true;
            let rules = Rules::parse(
                "[[rule]]\nvendor = \"acme\"\nusb = { vid = 0x0403, pid = 0x6001 }\n",
                Path::new("rules.toml"),
            )
            .unwrap();
            cfg.rules = Arc::new(rules);
            let src = tokio::spawn(serial::run(cfg, p.emitter.clone(), p.shutdown_rx.clone()));
            // Let the source bind its netlink socket and scan (nothing).
            p.quiet(Duration::from_millis(500)).await;
            // The device appears in sysfs and /dev; nothing watches those.
            fake_usb_tty(&sysfs2, "1-1", "ttyUSB0", 0x0403, 0x6001, "NS1");
            let pair = socat_pair(&devdir2.join("ttyUSB0"), &root.join("b"));
            let _dev = FakeDevice::start(&pair.b, "acme", "NETNS-1", Noise::None);
            p.quiet(Duration::from_millis(500)).await;
            // A uevent from a non-root sender would be ignored; ours is root.
            send_uevent(&device_probes::serial::uevent::encode_udev(&[
                ("ACTION", "add"),
                (
                    "DEVPATH",
                    "/devices/pci0000:00/usb1/1-1/1-1:1.0/ttyUSB0/tty/ttyUSB0",
                ),
                ("SUBSYSTEM", "tty"),
                ("DEVNAME", "/dev/ttyUSB0"),
                ("SEQNUM", "1"),
            ]));
            let ev = p.next(T).await;
            assert!(
                matches!(&ev, DeviceEvent::Seen(d) if d.id.0 == "acme:NETNS-1"),
                "{ev:?}"
            );
            // Garbage on the socket is ignored without harm.
            send_uevent(b"libudev\0garbage");
            drop(pair);
            let ev = p.next(T).await;
            assert!(matches!(&ev, DeviceEvent::Gone(_)), "{ev:?}");
            p.shutdown.send(true).unwrap();
            tokio::time::timeout(T, src)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        });
    });
    t.join().unwrap();
}

/// Multicasts one message to the udev group of this thread's netns.
fn send_uevent(msg: &[u8]) {
    use nix::sys::socket::*;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkKObjectUEvent,
    )
    .unwrap();
    let dest = NetlinkAddr::new(0, device_probes::serial::uevent::GROUP_UDEV);
    sendto(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        msg,
        &dest,
        MsgFlags::empty(),
    )
    .unwrap();
}

/// A device that comes back answering with an older counter (a clone, or
/// rolled-back firmware) is refused as a replay, even though it answers
/// the fresh challenge; a newer counter is accepted.
#[tokio::test(flavor = "current_thread")]
async fn older_counter_after_replug_is_a_replay() {
    use device_probes::announce::KeyRing;
    use device_probes::replay::ReplayGuard;

    let dir = tempfile::tempdir().unwrap();
    let sysfs = empty_sysfs(dir.path());
    let watched = dir.path().join("by-id");
    std::fs::create_dir(&watched).unwrap();
    let a = watched.join("usb-acme_meter-if00");
    let b = dir.path().join("b");
    let guard = Arc::new(ReplayGuard::in_memory());
    let mut p = pipeline();
    let mut cfg = config(&sysfs, dir.path());
    cfg.explicit = vec![a.clone()];
    cfg.keys = KeyRing::default().with_replay(guard.clone());
    let src = tokio::spawn(serial::run(cfg, p.emitter.clone(), p.shutdown_rx.clone()));

    let pair = socat_pair(&a, &b);
    let _dev = FakeDevice::start_at(&pair.b, "acme", "RP-7", Noise::None, 5);
    let ev = p.next(T).await;
    assert!(
        matches!(&ev, DeviceEvent::Seen(d) if d.id.0 == "acme:RP-7"),
        "{ev:?}"
    );
    drop(pair);
    let ev = p.next(T).await;
    assert!(matches!(&ev, DeviceEvent::Gone(_)), "{ev:?}");

    let pair = socat_pair(&a, &b);
    let dev = FakeDevice::start_at(&pair.b, "acme", "RP-7", Noise::None, 4);
    p.quiet(Duration::from_secs(2)).await;
    assert!(
        dev.hellos.load(Ordering::SeqCst) >= 1,
        "the device was asked"
    );
    assert!(
        p.drops.get(DropReason::Replay) >= 1,
        "{:?}",
        p.drops.snapshot()
    );
    assert_eq!(guard.last("acme", "RP-7"), Some(5));
    drop(pair);

    tokio::time::sleep(Duration::from_millis(600)).await;
    let pair = socat_pair(&a, &b);
    let _dev = FakeDevice::start_at(&pair.b, "acme", "RP-7", Noise::None, 6);
    let ev = p.next(T).await;
    assert!(
        matches!(&ev, DeviceEvent::Seen(d) if d.id.0 == "acme:RP-7"),
        "{ev:?}"
    );
    assert_eq!(guard.last("acme", "RP-7"), Some(6));
    drop(pair);
    p.shutdown.send(true).unwrap();
    tokio::time::timeout(T, src)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

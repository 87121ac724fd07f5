//! One device on two transports at once (serial through a socat pty pair,
//! MQTT through a real mosquitto) is one device in the merged stream; it is
//! gone only when the last transport loses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use device_probes::event::{DeviceEvent, Transport};
use device_probes::{mqtt, serial};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "current_thread")]
async fn serial_and_mqtt_sightings_merge() {
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
    std::fs::create_dir_all(dir.path().join("sys/class/tty")).unwrap();
    let mut pair = socat_pair(&dir.path().join("a"), &dir.path().join("b"));
    let _dev = FakeDevice::start(&pair.b, "acme", "BOTH-1", Noise::None);

    let mut p = pipeline();
    let scfg = serial::SerialConfig {
        sysfs_root: dir.path().join("sys"),
        dev_dir: dir.path().to_owned(),
        watch_dirs: Vec::new(),
        explicit: vec![pair.a.clone()],
        uevents: false,
        poll: None,
        ..serial::SerialConfig::default()
    };
    let mut mcfg = mqtt::MqttConfig::new("127.0.0.1", port);
    mcfg.client_id = unique("merge-");
    let s1 = tokio::spawn(serial::run(scfg, p.emitter.clone(), p.shutdown_rx.clone()));
    let s2 = tokio::spawn(mqtt::run(mcfg, p.emitter.clone(), p.shutdown_rx.clone()));

    let ev = p.next(T).await;
    assert!(
        matches!(&ev, DeviceEvent::Seen(d) if d.id.0 == "acme:BOTH-1"),
        "{ev:?}"
    );

    // The same device announces over MQTT: no second device, the first
    // one now shows on two transports.
    let a = protocol::announce::AnnounceBuilder::new(
        "acme",
        "Fake Meter",
        "BOTH-1",
        "1.0.0",
        "https://provision.acme.example/berth",
        2,
    )
    .sign(&SEED)
    .unwrap();
    let mut buf = vec![0u8; protocol::announce::MAX_ANNOUNCE];
    let n = a.encode(&mut buf).unwrap();
    buf.truncate(n);
    let (client, mut el) =
        AsyncClient::new(MqttOptions::new(unique("pub-"), "127.0.0.1", port), 16);
    tokio::spawn(async move {
        while !matches!(
            el.poll().await,
            Err(_) | Ok(Event::Incoming(Packet::Disconnect))
        ) {}
    });
    let ev = loop {
        client
            .publish(
                "berth/announce/acme/BOTH-1",
                QoS::AtLeastOnce,
                false,
                buf.clone(),
            )
            .await
            .unwrap();
        if let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(300), p.events.recv()).await
        {
            break ev;
        }
    };
    let DeviceEvent::Updated(d) = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(d.id.0, "acme:BOTH-1");
    let transports: Vec<Transport> = d.seen_on.iter().map(|(t, _)| *t).collect();
    assert_eq!(transports, vec![Transport::Serial, Transport::Mqtt]);

    // Unplugging the serial side leaves it on MQTT: Updated, not Gone.
    pair.peer.kill();
    let ev = p
        .until(
            T,
            "update after unplug",
            |e| !matches!(e, DeviceEvent::Updated(d) if d.seen_on.len() == 2),
        )
        .await;
    assert!(
        matches!(&ev, DeviceEvent::Updated(d) if d.seen_on.len() == 1 && d.seen_on[0].0 == Transport::Mqtt),
        "{ev:?}"
    );
    p.shutdown.send(true).unwrap();
    tokio::time::timeout(T, s1).await.unwrap().unwrap().unwrap();
    tokio::time::timeout(T, s2).await.unwrap().unwrap().unwrap();
}

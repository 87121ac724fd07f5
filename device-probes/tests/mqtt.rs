//! The MQTT source against a real mosquitto on a loopback port: native
//! announces (CBOR and JSON), retained Home Assistant and Zigbee2MQTT
//! fixtures, malformed payloads, and a broker restart that must not leave
//! the source deaf.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use std::time::Duration;

use common::*;
use device_probes::event::{DeviceEvent, DropReason};
use device_probes::mqtt::{self, MqttConfig};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

const T: Duration = Duration::from_secs(20);

/// A mosquitto on 127.0.0.1:`port`, config generated in `dir`.
fn broker(dir: &Path, port: u16) -> Peer {
    need("mosquitto");
    let conf = dir.join(format!("mosquitto-{port}.conf"));
    write_file(
        &conf,
        &format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
    );
    mosquitto(&conf, port)
}

/// Publishes each `(topic, payload, retain)` at QoS 1 and waits for the
/// broker's acknowledgements.
async fn publish(port: u16, msgs: &[(&str, Vec<u8>, bool)]) {
    let mut o = MqttOptions::new(unique("pub-"), "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (c, mut el) = AsyncClient::new(o, 64);
    for (t, p, r) in msgs {
        c.publish(*t, QoS::AtLeastOnce, *r, p.clone())
            .await
            .unwrap();
    }
    let mut acked = 0;
    tokio::time::timeout(T, async {
        while acked < msgs.len() {
            if let Event::Incoming(Packet::PubAck(_)) = el.poll().await.unwrap() {
                acked += 1;
            }
        }
        c.disconnect().await.unwrap();
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                _ => {}
            }
        }
    })
    .await
    .expect("publish timed out");
}

fn cbor_announce(vendor: &str, serial: &str, firmware: &str) -> Vec<u8> {
    let a = protocol::announce::AnnounceBuilder::new(
        vendor,
        "Fake Meter",
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

fn source_config(port: u16) -> MqttConfig {
    let mut c = MqttConfig::new("127.0.0.1", port);
    c.client_id = unique("berth-test-");
    c.backoff_min = Duration::from_millis(100);
    c.backoff_max = Duration::from_millis(800);
    c
}

const HA_CONFIG: &str = r#"{"name":"Temperature","state_topic":"plug/temp","unique_id":"plug01_t",
 "device":{"identifiers":["plug01"],"manufacturer":"Shelly","model":"Plug S","sw_version":"20230913-114008","name":"Kitchen plug"}}"#;

const Z2M_DEVICES: &str = r#"[
 {"ieee_address":"0x00124b0000000001","type":"Coordinator","friendly_name":"Coordinator","definition":null},
 {"ieee_address":"0x00158d0001a2b3c4","type":"EndDevice","friendly_name":"front_door","manufacturer":"LUMI",
  "model_id":"lumi.sensor_magnet.aq2","software_build_id":"3000-0001","definition":{"vendor":"Aqara","model":"MCCGQ11LM","description":"Door sensor"}}
]"#;

#[tokio::test(flavor = "current_thread")]
async fn announces_retained_fixtures_and_malformed_input() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = broker(dir.path(), port);
    publish(
        port,
        &[
            (
                "homeassistant/sensor/plug01/temperature/config",
                HA_CONFIG.as_bytes().to_vec(),
                true,
            ),
            (
                "zigbee2mqtt/bridge/devices",
                Z2M_DEVICES.as_bytes().to_vec(),
                true,
            ),
        ],
    )
    .await;

    let mut p = pipeline();
    let src = tokio::spawn(mqtt::run(
        source_config(port),
        p.emitter.clone(),
        p.shutdown_rx.clone(),
    ));
    let mut seen = Vec::new();
    for _ in 0..2 {
        match p.next(T).await {
            DeviceEvent::Seen(d) => seen.push(d),
            other => panic!("{other:?}"),
        }
    }
    let ha = seen
        .iter()
        .find(|d| d.identity.manufacturer.as_deref() == Some("Shelly"))
        .expect("home assistant device");
    assert_eq!(ha.identity.model.as_deref(), Some("Plug S"));
    assert_eq!(ha.identity.firmware.as_deref(), Some("20230913-114008"));
    assert_eq!(ha.identity.name.as_deref(), Some("Kitchen plug"));
    let z = seen
        .iter()
        .find(|d| d.identity.manufacturer.as_deref() == Some("Aqara"))
        .expect("zigbee2mqtt device");
    assert_eq!(z.identity.model.as_deref(), Some("MCCGQ11LM"));
    assert_eq!(
        z.identity.serial_number.as_deref(),
        Some("0x00158d0001a2b3c4")
    );

    // Native announces, CBOR then JSON, and junk on every input.
    let cbor = cbor_announce("acme", "MQ-1", "1.0.0");
    let a = protocol::announce::Announce::decode(&cbor).unwrap();
    let json = protocol::announce::to_json(&a).unwrap();
    publish(
        port,
        &[
            ("berth/announce/acme/MQ-1", b"\xa3garbage".to_vec(), false),
            ("berth/announce/acme/MQ-1", b"{\"vendor\":".to_vec(), false),
            ("berth/announce/acme/OTHER", cbor.clone(), false),
            ("homeassistant/sensor/bad/config", b"{{{".to_vec(), false),
            ("zigbee2mqtt/bridge/devices", b"[1,2".to_vec(), false),
            ("berth/announce/acme/MQ-1", cbor.clone(), false),
        ],
    )
    .await;
    let ev = p.next(T).await;
    assert!(
        matches!(&ev, DeviceEvent::Seen(d) if d.id.0 == "acme:MQ-1" && d.identity.endpoint.is_some()),
        "{ev:?}"
    );
    assert_eq!(
        p.drops.get(DropReason::BadCbor),
        1,
        "{:?}",
        p.drops.snapshot()
    );
    assert_eq!(
        p.drops.get(DropReason::BadJson),
        3,
        "{:?}",
        p.drops.snapshot()
    );
    assert_eq!(p.drops.get(DropReason::TopicMismatch), 1);
    // The same announce as JSON is the same device: no new event.
    publish(
        port,
        &[("berth/announce/acme/MQ-1", json.into_bytes(), false)],
    )
    .await;
    p.quiet(Duration::from_millis(500)).await;

    // Clearing the retained HA config: the device is gone.
    publish(
        port,
        &[(
            "homeassistant/sensor/plug01/temperature/config",
            Vec::new(),
            true,
        )],
    )
    .await;
    let ev = p.next(T).await;
    assert!(
        matches!(&ev, DeviceEvent::Gone(d) if d.identity.manufacturer.as_deref() == Some("Shelly")),
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
async fn broker_restart_resubscribes() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut b = broker(dir.path(), port);
    let mut p = pipeline();
    let src = tokio::spawn(mqtt::run(
        source_config(port),
        p.emitter.clone(),
        p.shutdown_rx.clone(),
    ));
    // Wait for the subscription: publish until the announce comes through.
    let mut n = 0;
    let ev = loop {
        n += 1;
        assert!(n < 50, "first announce never seen");
        publish(
            port,
            &[(
                "berth/announce/acme/R-1",
                cbor_announce("acme", "R-1", "1.0.0"),
                false,
            )],
        )
        .await;
        if let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(300), p.events.recv()).await
        {
            break ev;
        }
    };
    assert!(
        matches!(&ev, DeviceEvent::Seen(d) if d.id.0 == "acme:R-1"),
        "{ev:?}"
    );

    // Kill the broker by PID; start a fresh one (no persistence, so no
    // session and no subscriptions survive) on the same port.
    b.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let _b2 = broker(dir.path(), port);
    // Announces published after the restart must still arrive. Keep
    // publishing fresh firmware versions until one shows (reconnect and
    // re-subscribe take a backoff step); bounded.
    let mut i = 0;
    let ev = loop {
        i += 1;
        assert!(i < 60, "source went deaf after the broker restart");
        publish(
            port,
            &[(
                "berth/announce/acme/R-1",
                cbor_announce("acme", "R-1", &format!("2.0.{i}")),
                false,
            )],
        )
        .await;
        if let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(300), p.events.recv()).await
        {
            break ev;
        }
    };
    assert!(
        matches!(&ev, DeviceEvent::Updated(d) if d.id.0 == "acme:R-1" && d.identity.firmware.as_deref().is_some_and(|f| f.starts_with("2.0."))),
        "{ev:?}"
    );
    p.shutdown.send(true).unwrap();
    tokio::time::timeout(T, src)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A fleet of `n` devices announcing once each, spread evenly over one
/// second, from a client on its own thread and runtime; returns how many
/// the broker acknowledged (QoS 1) or how many were sent (QoS 0).
fn fleet(port: u16, n: usize, qos: QoS, prefix: &'static str) -> std::thread::JoinHandle<usize> {
    // Signing is not what is tested: every payload is made first.
    let payloads: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            let s = format!("{prefix}-{i:04}");
            (
                format!("berth/announce/acme/{s}"),
                cbor_announce("acme", &s, "1.0"),
            )
        })
        .collect();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut o = MqttOptions::new(unique("fleet-"), "127.0.0.1", port);
            o.set_max_packet_size(1 << 20, 1 << 20);
            o.set_inflight(200);
            let (c, mut el) = AsyncClient::new(o, 64);
            let acks = tokio::spawn(async move {
                let mut acked = 0usize;
                loop {
                    match tokio::time::timeout(T, el.poll()).await {
                        Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                        Ok(Ok(Event::Outgoing(Outgoing::Publish(_)))) if qos == QoS::AtMostOnce => {
                            acked += 1
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) | Err(_) => return acked,
                    }
                    if acked == n {
                        return acked;
                    }
                }
            });
            let start = tokio::time::Instant::now();
            for (i, (t, pl)) in payloads.into_iter().enumerate() {
                tokio::time::sleep_until(
                    start + Duration::from_micros(i as u64 * 1_000_000 / n as u64),
                )
                .await;
                c.publish(t, qos, false, pl).await.unwrap();
            }
            let acked = acks.await.unwrap();
            let _ = c.try_disconnect();
            acked
        })
    })
}

/// 1000 devices announcing within one second at QoS 1, through a broker
/// with mosquitto's default queue limits: every one must come out of the
/// merger, nothing dropped.
#[tokio::test(flavor = "current_thread")]
async fn qos1_burst_of_1000_devices_in_one_second() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = broker(dir.path(), port);
    let mut p = pipeline();
    let src = tokio::spawn(mqtt::run(
        source_config(port),
        p.emitter.clone(),
        p.shutdown_rx.clone(),
    ));
    // Wait for the subscription.
    let mut n = 0;
    loop {
        n += 1;
        assert!(n < 50, "source never subscribed");
        publish(
            port,
            &[(
                "berth/announce/acme/WARM",
                cbor_announce("acme", "WARM", "1"),
                false,
            )],
        )
        .await;
        if tokio::time::timeout(Duration::from_millis(300), p.events.recv())
            .await
            .is_ok()
        {
            break;
        }
    }
    let start = std::time::Instant::now();
    let publisher = fleet(port, 1000, QoS::AtLeastOnce, "Q1");
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 1000 {
        let ev = p
            .until(T, "all 1000 devices", |e| matches!(e, DeviceEvent::Seen(_)))
            .await;
        if let DeviceEvent::Seen(d) = ev {
            if let Some(s) = d.identity.serial_number.filter(|s| s.starts_with("Q1-")) {
                seen.insert(s);
            }
        }
    }
    let took = start.elapsed();
    let acked = tokio::task::spawn_blocking(move || publisher.join().unwrap())
        .await
        .unwrap();
    assert_eq!(acked, 1000, "the broker acknowledged every publish");
    assert_eq!(seen.len(), 1000);
    assert!(p.drops.snapshot().is_empty(), "{:?}", p.drops.snapshot());
    // Published over one second; handled within a few more.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    p.shutdown.send(true).unwrap();
    tokio::time::timeout(T, src)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

fn announce_n(serial: &str, firmware: &str, counter: u64) -> Vec<u8> {
    let a = protocol::announce::AnnounceBuilder::new(
        "acme",
        "Fake Meter",
        serial,
        firmware,
        "https://provision.acme.example/berth",
        counter,
    )
    .sign(&SEED)
    .unwrap();
    let mut out = vec![0u8; protocol::announce::MAX_ANNOUNCE];
    let n = a.encode(&mut out).unwrap();
    out.truncate(n);
    out
}

/// A replayed older announce is dropped and counted, the very same one
/// repeated is not news, a newer one is; and the counters survive a
/// restart of the detector through the state file.
#[tokio::test(flavor = "current_thread")]
async fn replayed_announces_are_dropped_across_a_restart() {
    use device_probes::replay::ReplayGuard;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("announce-counters");
    let port = free_port();
    let _broker = broker(dir.path(), port);
    let topic = "berth/announce/acme/RP-1";

    let guard = Arc::new(ReplayGuard::open(&state).unwrap());
    let mut p = pipeline();
    let mut cfg = source_config(port);
    cfg.keys = cfg.keys.clone().with_replay(guard.clone());
    let src = tokio::spawn(mqtt::run(cfg, p.emitter.clone(), p.shutdown_rx.clone()));
    // Subscribed once a fresh announce shows (counters 10, 11, ... while
    // waiting).
    let mut c = 10;
    loop {
        publish(port, &[(topic, announce_n("RP-1", "1.0", c), false)]).await;
        if tokio::time::timeout(Duration::from_millis(300), p.events.recv())
            .await
            .is_ok()
        {
            break;
        }
        c += 1;
        assert!(c < 60, "source never subscribed");
    }
    // The round that showed may be an earlier one arriving late; the
    // latest announce is in the table soon after.
    let end = std::time::Instant::now() + T;
    while guard.last("acme", "RP-1") != Some(c) {
        assert!(
            std::time::Instant::now() < end,
            "{:?}",
            guard.last("acme", "RP-1")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An older announce (a recording replayed): dropped, counted.
    publish(port, &[(topic, announce_n("RP-1", "0.9", c - 1), false)]).await;
    // The same announce again (a device repeating itself): not news, not
    // a replay.
    publish(port, &[(topic, announce_n("RP-1", "1.0", c), false)]).await;
    // Same counter, other content: a replay.
    publish(port, &[(topic, announce_n("RP-1", "6.6", c), false)]).await;
    // A newer one goes through.
    publish(port, &[(topic, announce_n("RP-1", "1.1", c + 1), false)]).await;
    let ev = p.next(T).await;
    assert!(
        matches!(&ev, DeviceEvent::Updated(d) if d.identity.firmware.as_deref() == Some("1.1")),
        "{ev:?}"
    );
    assert_eq!(
        p.drops.get(DropReason::Replay),
        2,
        "{:?}",
        p.drops.snapshot()
    );
    p.shutdown.send(true).unwrap();
    tokio::time::timeout(T, src)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(guard.flush().unwrap());
    drop(guard);

    // "Reboot": a new detector loads the counters; the old announce is
    // still refused, the next one accepted.
    let guard = Arc::new(ReplayGuard::open(&state).unwrap());
    assert_eq!(guard.last("acme", "RP-1"), Some(c + 1));
    let mut p = pipeline();
    let mut cfg = source_config(port);
    cfg.keys = cfg.keys.clone().with_replay(guard.clone());
    let src = tokio::spawn(mqtt::run(cfg, p.emitter.clone(), p.shutdown_rx.clone()));
    let mut n = c + 2;
    let mut replays_sent = 0;
    loop {
        // Until subscribed, each round sends a replay and a fresh one.
        publish(
            port,
            &[
                (topic, announce_n("RP-1", "0.9", c), false),
                (topic, announce_n("RP-1", "1.2", n), false),
            ],
        )
        .await;
        replays_sent += 1;
        if let Ok(Some(ev)) =
            tokio::time::timeout(Duration::from_millis(300), p.events.recv()).await
        {
            assert!(
                matches!(&ev, DeviceEvent::Seen(d) if d.identity.firmware.as_deref() == Some("1.2")),
                "{ev:?}"
            );
            break;
        }
        n += 1;
        assert!(n < c + 60, "source never subscribed after the restart");
    }
    // Subscribed now: a replay of the old announce is refused, whatever
    // the rounds above lost before the subscription.
    let before = p.drops.get(DropReason::Replay);
    assert!(before <= replays_sent, "{before} of {replays_sent}");
    publish(
        port,
        &[
            (topic, announce_n("RP-1", "0.9", c), false),
            (topic, announce_n("RP-1", "1.3", n + 1), false),
        ],
    )
    .await;
    let ev = p.next(T).await;
    assert!(
        matches!(&ev, DeviceEvent::Updated(d) if d.identity.firmware.as_deref() == Some("1.3")),
        "{ev:?}"
    );
    assert_eq!(p.drops.get(DropReason::Replay), before + 1);
    p.shutdown.send(true).unwrap();
    tokio::time::timeout(T, src)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// The same burst while whoever reads the device events stalls for 3 s
/// (longer than the 2 s other sources wait on a full channel): the source
/// stops reading, the broker keeps the rest, and nothing is dropped.
#[tokio::test(flavor = "current_thread")]
async fn qos1_burst_survives_a_stalled_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = broker(dir.path(), port);
    let mut p = pipeline();
    let src = tokio::spawn(mqtt::run(
        source_config(port),
        p.emitter.clone(),
        p.shutdown_rx.clone(),
    ));
    let mut n = 0;
    loop {
        n += 1;
        assert!(n < 50, "source never subscribed");
        publish(
            port,
            &[(
                "berth/announce/acme/WARM",
                cbor_announce("acme", "WARM", "1"),
                false,
            )],
        )
        .await;
        if tokio::time::timeout(Duration::from_millis(300), p.events.recv())
            .await
            .is_ok()
        {
            break;
        }
    }
    let publisher = fleet(port, 1000, QoS::AtLeastOnce, "ST");
    // Nobody reads for 3 s: both 256-event channels fill up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 1000 {
        let ev = p
            .until(T, "all 1000 devices", |e| matches!(e, DeviceEvent::Seen(_)))
            .await;
        if let DeviceEvent::Seen(d) = ev {
            if let Some(s) = d.identity.serial_number.filter(|s| s.starts_with("ST-")) {
                seen.insert(s);
            }
        }
    }
    let acked = tokio::task::spawn_blocking(move || publisher.join().unwrap())
        .await
        .unwrap();
    assert_eq!(acked, 1000);
    assert_eq!(
        p.drops.get(DropReason::QueueFull),
        0,
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

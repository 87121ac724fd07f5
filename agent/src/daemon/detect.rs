//! Detection inside the daemon: the configured sources (serial, MQTT, BLE)
//! feed their observations straight to the daemon, which needs the raw
//! announce bytes (the merged device stream does not carry them): each
//! native announce becomes a device record and goes to
//! [`super::engine::Daemon::device_seen`]. Observations without an announce
//! (Home Assistant, Zigbee2MQTT, bare USB ids) carry no vendor endpoint and
//! no device signature, so they are not provisioned.
//!
//! Replays: every source checks announce counters against one
//! [`ReplayGuard`] kept in `<state dir>/announce-counters` (an older counter
//! than the device's last, or the same counter on a different announce, is
//! dropped before it reaches the daemon; the very same announce again, as
//! a retained MQTT message or a repeated advertisement, passes). The table
//! is written at most every second and at shutdown; a crash loses at most
//! that last second of counters, which the vendor's own counter check
//! still covers. The gateway does not hold device keys (vendors do), so
//! the counters of unverified announces are checked too: the vendor's
//! check of the signature and counter stays the authority.

use std::sync::Arc;

use device_probes::announce::KeyRing;
use device_probes::event::{Drops, SourceEvent};
use device_probes::merger::Emitter;
use device_probes::replay::{self, ReplayGuard};
use device_probes::rules::Rules;
use device_probes::{ble, mqtt, serial};
use tokio::sync::mpsc;

use super::engine::{stopped, Daemon};
use super::state::DeviceRecord;

/// File of the announce counters in the state dir.
pub const COUNTERS_FILE: &str = "announce-counters";

/// Runs the sources until shutdown.
pub async fn run(d: Arc<Daemon>) {
    let cfg = d.config().detect.clone();
    let rules = match &cfg.rules {
        Some(p) => match Rules::load(p) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "detection rules not loaded; detection is off");
                return;
            }
        },
        None => Rules::default(),
    };
    let rules = Arc::new(rules);
    let counters = d.config().state_dir.join(COUNTERS_FILE);
    remove_stale_temps(&d.config().state_dir);
    let guard = match ReplayGuard::open(&counters) {
        Ok(g) => Arc::new(g),
        Err(e) => {
            // Not emptied silently: that would accept every replay again.
            tracing::error!(error = %e, file = %counters.display(), "announce counters unreadable; detection is off until the file is repaired or removed");
            return;
        }
    };
    let keys = KeyRing::default().with_replay(guard.clone());
    let persist = tokio::spawn(replay::persist(
        guard,
        replay::DEFAULT_FLUSH_EVERY,
        d.shutdown(),
    ));
    let drops = Arc::new(Drops::default());
    let (tx, mut rx) = mpsc::channel(256);
    let emitter = Emitter::new(tx, drops);
    let stop = d.shutdown();
    let mut sources = tokio::task::JoinSet::new();
    if !cfg.serial.is_empty() {
        let scfg = serial::SerialConfig {
            explicit: cfg.serial.clone(),
            rules: rules.clone(),
            keys: keys.clone(),
            ..serial::SerialConfig::default()
        };
        let (e, s) = (emitter.clone(), stop.clone());
        sources.spawn(async move {
            (
                "serial",
                serial::run(scfg, e, s).await.map_err(|e| e.to_string()),
            )
        });
    }
    if let Some((host, port)) = &cfg.mqtt {
        let mut mcfg = mqtt::MqttConfig::new(host, *port);
        mcfg.client_id = format!("berthd-{}", std::process::id());
        mcfg.rules = rules.clone();
        mcfg.keys = keys.clone();
        let (e, s) = (emitter.clone(), stop.clone());
        sources.spawn(async move {
            (
                "mqtt",
                mqtt::run(mcfg, e, s).await.map_err(|e| e.to_string()),
            )
        });
    }
    if cfg.ble {
        let bcfg = ble::BleConfig {
            rules: rules.clone(),
            keys: keys.clone(),
            ..ble::BleConfig::default()
        };
        let (e, s) = (emitter.clone(), stop.clone());
        sources
            .spawn(async move { ("ble", ble::run(bcfg, e, s).await.map_err(|e| e.to_string())) });
    }
    drop(emitter);
    let mut stop = stop;
    loop {
        tokio::select! {
            // Cancel-safe: recv and join_next lose nothing when another
            // branch wins; wait_for only reads the watch.
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                if let Some((dev, endpoint)) = record_of(&ev) {
                    if let Err(e) = d.device_seen(dev, &endpoint).await {
                        tracing::error!(error = %e, "cannot record a device");
                    }
                }
            }
            Some(done) = sources.join_next() => {
                match done {
                    Ok((name, Err(e))) => tracing::error!(source = name, error = %e, "detection source failed"),
                    Ok((name, Ok(()))) => tracing::info!(source = name, "detection source stopped"),
                    Err(e) => tracing::error!(error = %e, "detection source panicked"),
                }
            }
            _ = stopped(&mut stop) => break,
        }
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while sources.join_next().await.is_some() {}
        // The last flush of the counters, after the sources stopped.
        let _ = persist.await;
    })
    .await;
}

/// Removes the temp files of counter writes that a crash interrupted
/// (`.announce-counters.tmp.<pid>`: written, not yet renamed over the
/// table, so never part of it). One berthd owns a state dir (its store is
/// locked), so none of them is being written now.
pub fn remove_stale_temps(state_dir: &std::path::Path) {
    let prefix = format!(".{COUNTERS_FILE}.tmp");
    let Ok(rd) = std::fs::read_dir(state_dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {
                    tracing::info!(file = %e.path().display(), "removed an interrupted counter write")
                }
                Err(err) => {
                    tracing::warn!(file = %e.path().display(), error = %err, "cannot remove an interrupted counter write")
                }
            }
        }
    }
}

/// The device record of an observation that carries a native announce,
/// and the endpoint the announce names.
pub fn record_of(ev: &SourceEvent) -> Option<(DeviceRecord, String)> {
    let SourceEvent::Seen(obs) = ev else {
        return None;
    };
    let raw = obs.announce.as_ref()?;
    // MQTT carries the bare announce; serial carries it inside a message
    // (`[kind, announce]`, the announce from byte 2 on).
    let bytes: &[u8] = match protocol::Message::decode(raw) {
        Ok(protocol::Message::Announce(_)) => raw.get(2..)?,
        _ => raw,
    };
    let a = match protocol::Announce::decode(bytes) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, address = obs.address.as_str(), "undecodable announce");
            return None;
        }
    };
    Some((
        DeviceRecord {
            vendor: a.vendor().to_string(),
            model: a.model().to_string(),
            serial: a.serial().to_string(),
            firmware: a.firmware().to_string(),
            transport: obs.transport.to_string(),
            address: obs.address.clone(),
            announce: bytes.to_vec(),
        },
        a.endpoint().to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use device_probes::event::{Identity, Observation, Transport};
    use protocol::AnnounceBuilder;

    fn builder() -> AnnounceBuilder<'static> {
        AnnounceBuilder::new(
            "acme",
            "Meter 2",
            "SN-1",
            "1.0",
            "https://p.acme.example",
            7,
        )
    }

    fn seen(transport: Transport, bytes: Vec<u8>) -> SourceEvent {
        SourceEvent::Seen(Observation {
            transport,
            address: "/dev/ttyUSB0".into(),
            identity: Identity::default(),
            announce: Some(bytes),
        })
    }

    #[test]
    fn bare_and_wrapped_announces_give_the_same_record() {
        let mut buf = [0u8; 512];
        let n = builder().encode_signed(&[3; 32], &mut buf).unwrap();
        let bare = buf[..n].to_vec();
        let n = protocol::message::encode_signed_announce(&builder(), &[3; 32], &mut buf).unwrap();
        let wrapped = buf[..n].to_vec();
        assert_ne!(bare, wrapped);
        let (a, ep) = record_of(&seen(Transport::Mqtt, bare.clone())).unwrap();
        let (b, _) = record_of(&seen(Transport::Serial, wrapped)).unwrap();
        assert_eq!(ep, "https://p.acme.example");
        assert_eq!(
            (a.vendor.as_str(), a.serial.as_str(), a.model.as_str()),
            ("acme", "SN-1", "Meter 2")
        );
        assert_eq!(a.announce, bare, "the request carries the bare announce");
        assert_eq!(b.announce, bare);
        assert_eq!(
            (a.transport.as_str(), b.transport.as_str()),
            ("mqtt", "serial")
        );
    }

    #[test]
    fn interrupted_counter_writes_are_removed_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        for f in [
            ".announce-counters.tmp.4242",
            ".announce-counters.tmp7",
            COUNTERS_FILE,
            "berthd.redb",
            ".other.tmp.1",
        ] {
            std::fs::write(d.path().join(f), "x").unwrap();
        }
        remove_stale_temps(d.path());
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".other.tmp.1", COUNTERS_FILE, "berthd.redb"]);
        // A state dir that does not exist yet is no error.
        remove_stale_temps(&d.path().join("missing"));
    }

    #[test]
    fn observations_without_a_valid_announce_are_skipped() {
        assert!(record_of(&seen(Transport::Mqtt, vec![0xa0])).is_none());
        let gone = SourceEvent::Gone {
            transport: Transport::Serial,
            address: "/dev/ttyUSB0".into(),
        };
        assert!(record_of(&gone).is_none());
    }
}

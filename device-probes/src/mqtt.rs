//! MQTT detection with `rumqttc`: native announces, and as optional inputs
//! Home Assistant discovery configs and Zigbee2MQTT's device list.
//!
//! - Native: `berth/announce/<vendor>/<serial>` carrying the announce as
//!   CBOR or JSON ([`protocol::mqtt`]).
//! - Home Assistant: `homeassistant/<component>/[<node>/]<object>/config`,
//!   a JSON entity config whose `device` (`dev`) block names the device
//!   (`identifiers`, `manufacturer`, `model`, `sw_version`, `name`, also in
//!   their abbreviated forms). Several entities share one device; the device
//!   is gone when every one of its config topics was cleared (an empty
//!   retained payload).
//! - Zigbee2MQTT: the retained `zigbee2mqtt/bridge/devices` array
//!   (`ieee_address`, `definition.vendor/model`, `manufacturer`, `model_id`,
//!   `software_build_id`); a device missing from a new list is gone.
//!
//! rumqttc does not restore subscriptions after a reconnect whose CONNACK
//! says `session_present = false`: this source re-subscribes after every
//! such CONNACK. Reconnects back off exponentially with jitter. The I/O-free
//! part is [`Decoder`]; [`run`] owns the event loop.
//!
//! Brokers: `HOST:PORT` or `mqtt://HOST[:PORT]` in the clear, and
//! `mqtts://HOST[:PORT]` over TLS (rustls with the ring provider; a CA file
//! is required, a client certificate and key optional), with optional
//! username and password ([`parse_url`], [`TlsFiles`]).
//!
//! QoS 1: the source subscribes at QoS 1 and acknowledges each publish as
//! rumqttc reads it (at most 10 per read); it reads again only once it
//! handed what it read to the merger, so a slow consumer holds the broker
//! back through TCP rather than growing a queue here. The broker bounds
//! what it sends unacknowledged (mosquitto `max_inflight_messages`, 20) and
//! what it queues (`max_queued_messages`, 1000). A full merger channel is
//! waited on for up to `queue_wait` (10 s, under the keep-alive) instead of
//! the other sources' 2 s: the broker keeps what is not read meanwhile, so
//! a consumer that stalls for seconds (a burst of state writes) loses
//! nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport as MqttTransport,
};
use serde_json::Value;
use tokio::sync::watch;

use crate::announce::KeyRing;
use crate::event::{DropReason, Identity, Observation, SourceEvent, Transport};
use crate::merger::Emitter;
use crate::rules::Rules;

/// How the MQTT source runs.
#[derive(Clone, Debug)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    /// Home Assistant discovery prefix; `None` to ignore HA.
    pub home_assistant: Option<String>,
    /// Zigbee2MQTT base topic; `None` to ignore Z2M.
    pub zigbee2mqtt: Option<String>,
    pub keep_alive: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Capacity of rumqttc's request channel.
    pub channel_capacity: usize,
    /// Largest incoming packet (Z2M's device list can be large).
    pub max_packet: usize,
    pub rules: Arc<Rules>,
    pub keys: KeyRing,
    /// TLS to the broker (`mqtts://`); `None` for plain TCP.
    pub tls: Option<TlsFiles>,
    /// Username and password for the broker.
    pub credentials: Option<(String, String)>,
    /// How long a publish waits for room in the merger's channel before it
    /// is dropped (counted `queue_full`). While it waits the source reads
    /// nothing, so the broker holds the rest (QoS 1 messages in its queue);
    /// keep it well below 1.5 × `keep_alive`, after which the broker drops
    /// the connection.
    pub queue_wait: Duration,
}

/// The PEM files of a TLS connection to the broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates the broker's certificate must chain to.
    pub ca: PathBuf,
    /// Client certificate chain, for brokers that require one (with `key`).
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

/// A broker as `HOST:PORT`, `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl MqttConfig {
    pub fn new(host: &str, port: u16) -> MqttConfig {
        MqttConfig {
            host: host.to_owned(),
            port,
            client_id: format!("berth-detect-{}", std::process::id()),
            home_assistant: Some("homeassistant".to_owned()),
            zigbee2mqtt: Some("zigbee2mqtt".to_owned()),
            keep_alive: Duration::from_secs(15),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            channel_capacity: 64,
            max_packet: 1 << 20,
            rules: Arc::new(Rules::default()),
            keys: KeyRing::default(),
            tls: None,
            credentials: None,
            queue_wait: Duration::from_secs(10),
        }
    }

    /// The topic filters this source subscribes to.
    pub fn filters(&self) -> Vec<String> {
        let mut f = vec![protocol::mqtt::TOPIC_FILTER.to_owned()];
        if let Some(p) = &self.home_assistant {
            f.push(format!("{p}/+/+/config"));
            f.push(format!("{p}/+/+/+/config"));
        }
        if let Some(b) = &self.zigbee2mqtt {
            f.push(format!("{b}/bridge/devices"));
        }
        f
    }
}

/// Why the MQTT source stopped.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error(
        "mqtt broker address {0:?} is not HOST:PORT, mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
    )]
    BadAddress(String),
    #[error("mqtt tls file {path}: {reason}")]
    TlsFile { path: PathBuf, reason: String },
    #[error("mqtt tls setup: {0}")]
    Tls(String),
}

/// Parses `HOST:PORT` (`[v6]:PORT` too).
pub fn parse_address(s: &str) -> Result<(String, u16), MqttError> {
    let bad = || MqttError::BadAddress(s.to_owned());
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port.parse().map_err(|_| bad())?))
}

/// Parses a broker URL: `mqtts://` means TLS (default port 8883),
/// `mqtt://` or no scheme plain TCP (default port 1883 with a scheme; a
/// bare address needs its port).
pub fn parse_url(s: &str) -> Result<BrokerUrl, MqttError> {
    let bad = || MqttError::BadAddress(s.to_owned());
    let (rest, tls, default_port) = if let Some(r) = s.strip_prefix("mqtts://") {
        (r, true, Some(8883))
    } else if let Some(r) = s.strip_prefix("mqtt://") {
        (r, false, Some(1883))
    } else if s.contains("://") {
        return Err(bad());
    } else {
        (s, false, None)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('@') {
        return Err(bad());
    }
    let has_port = if rest.starts_with('[') {
        rest.contains("]:")
    } else {
        rest.contains(':')
    };
    let (host, port) = match (has_port, default_port) {
        (true, _) => parse_address(rest).map_err(|_| bad())?,
        (false, Some(p)) => {
            let h = rest.trim_start_matches('[').trim_end_matches(']');
            if h.is_empty() {
                return Err(bad());
            }
            (h.to_owned(), p)
        }
        (false, None) => return Err(bad()),
    };
    Ok(BrokerUrl { host, port, tls })
}

fn tls_file_err(path: &Path, reason: impl std::fmt::Display) -> MqttError {
    MqttError::TlsFile {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Builds the rustls client configuration (ring provider) from PEM files.
pub fn tls_config(files: &TlsFiles) -> Result<Arc<tokio_rustls::rustls::ClientConfig>, MqttError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;

    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for c in CertificateDer::pem_file_iter(&files.ca).map_err(|e| tls_file_err(&files.ca, e))? {
        let c = c.map_err(|e| tls_file_err(&files.ca, e))?;
        roots.add(c).map_err(|e| tls_file_err(&files.ca, e))?;
        n += 1;
    }
    if n == 0 {
        return Err(tls_file_err(&files.ca, "no PEM certificate in it"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&files.cert, &files.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| tls_file_err(cert, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls_file_err(cert, e))?;
            if chain.is_empty() {
                return Err(tls_file_err(cert, "no PEM certificate in it"));
            }
            let k = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_file_err(key, e))?;
            builder
                .with_client_auth_cert(chain, k)
                .map_err(|e| tls_file_err(key, e))?
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(MqttError::Tls(
                "a client certificate needs its key and a key its certificate".to_owned(),
            ))
        }
    };
    Ok(Arc::new(config))
}

/// The rumqttc options for `cfg` (TLS files are read here).
pub fn options(cfg: &MqttConfig) -> Result<MqttOptions, MqttError> {
    let mut opts = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
    opts.set_keep_alive(cfg.keep_alive);
    opts.set_clean_session(true);
    opts.set_max_packet_size(cfg.max_packet, 16 * 1024);
    if let Some(files) = &cfg.tls {
        let tls = tls_config(files)?;
        opts.set_transport(MqttTransport::Tls(TlsConfiguration::Rustls(tls)));
    }
    if let Some((user, password)) = &cfg.credentials {
        opts.set_credentials(user.clone(), password.clone());
    }
    Ok(opts)
}

/// The socket options of the source's connection.
pub fn network_options() -> rumqttc::NetworkOptions {
    let mut net = rumqttc::NetworkOptions::new();
    // Acknowledgements and pings are small writes: without TCP_NODELAY,
    // Nagle's algorithm may hold them back behind unacknowledged data.
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(10);
    net
}

/// The I/O-free part: one publish in, source events out.
#[derive(Debug)]
pub struct Decoder {
    ha_prefix: Option<String>,
    z2m_base: Option<String>,
    rules: Arc<Rules>,
    keys: KeyRing,
    /// HA config topic → device address, and device address → its topics.
    ha_topics: HashMap<String, String>,
    ha_devices: HashMap<String, BTreeSet<String>>,
    /// Z2M devices reported from the last list: address → identity.
    z2m: BTreeMap<String, Identity>,
}

/// What one publish did.
pub type Decoded = Result<Vec<SourceEvent>, DropReason>;

fn s(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn pick<'a>(o: &'a serde_json::Map<String, Value>, long: &str, short: &str) -> Option<&'a Value> {
    o.get(long).or_else(|| o.get(short))
}

impl Decoder {
    pub fn new(cfg: &MqttConfig) -> Decoder {
        Decoder {
            ha_prefix: cfg.home_assistant.clone(),
            z2m_base: cfg.zigbee2mqtt.clone(),
            rules: cfg.rules.clone(),
            keys: cfg.keys.clone(),
            ha_topics: HashMap::new(),
            ha_devices: HashMap::new(),
            z2m: BTreeMap::new(),
        }
    }

    fn vendor_for(&self, topic: &str) -> Result<Option<String>, DropReason> {
        self.rules.admit(self.rules.match_topic(topic))
    }

    /// Handles one publish.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) -> Decoded {
        if protocol::mqtt::parse_topic(topic).is_some() {
            return self.native(topic, payload);
        }
        if let Some(p) = &self.ha_prefix {
            if topic.starts_with(&format!("{p}/")) && topic.ends_with("/config") {
                return self.home_assistant(topic, payload);
            }
        }
        if let Some(b) = &self.z2m_base {
            if topic == format!("{b}/bridge/devices") {
                return self.zigbee2mqtt(payload);
            }
        }
        Ok(Vec::new())
    }

    fn native(&mut self, topic: &str, payload: &[u8]) -> Decoded {
        if payload.is_empty() {
            return Ok(vec![SourceEvent::Gone {
                transport: Transport::Mqtt,
                address: topic.to_owned(),
            }]);
        }
        let rule_vendor = self.vendor_for(topic)?;
        let c = crate::announce::decode_payload(topic, payload, &self.keys)?;
        let mut identity = c.identity;
        if identity.vendor.is_none() {
            identity.vendor = rule_vendor;
        }
        Ok(vec![SourceEvent::Seen(Observation {
            transport: Transport::Mqtt,
            address: topic.to_owned(),
            identity,
            announce: Some(payload.to_vec()),
        })])
    }

    fn home_assistant(&mut self, topic: &str, payload: &[u8]) -> Decoded {
        if payload.is_empty() {
            let Some(addr) = self.ha_topics.remove(topic) else {
                return Ok(Vec::new());
            };
            let topics = self.ha_devices.entry(addr.clone()).or_default();
            topics.remove(topic);
            if topics.is_empty() {
                self.ha_devices.remove(&addr);
                return Ok(vec![SourceEvent::Gone {
                    transport: Transport::Mqtt,
                    address: addr,
                }]);
            }
            return Ok(Vec::new());
        }
        if payload.len() > 64 * 1024 {
            return Err(DropReason::Oversize);
        }
        let v: Value = serde_json::from_slice(payload).map_err(|_| DropReason::BadJson)?;
        let Some(obj) = v.as_object() else {
            return Err(DropReason::BadJson);
        };
        let Some(dev) = pick(obj, "device", "dev").and_then(Value::as_object) else {
            // An entity without a device block names no device.
            return Ok(Vec::new());
        };
        let ids = pick(dev, "identifiers", "ids");
        let first_id = match ids {
            Some(Value::Array(a)) => a.iter().find_map(|x| s(Some(x))),
            other => s(other),
        };
        let mut mac = None;
        if let Some(Value::Array(cns)) = pick(dev, "connections", "cns") {
            for c in cns {
                if let Some([kind, val]) = c.as_array().map(Vec::as_slice) {
                    if matches!(kind.as_str(), Some("mac") | Some("bluetooth")) {
                        mac = val.as_str().map(str::to_ascii_lowercase);
                    }
                }
            }
        }
        let Some(key) = first_id.or_else(|| mac.clone()) else {
            return Err(DropReason::BadJson);
        };
        let rule_vendor = self.vendor_for(topic)?;
        let addr = format!(
            "{}/device/{key}",
            self.ha_prefix.as_deref().unwrap_or("homeassistant")
        );
        let identity = Identity {
            vendor: rule_vendor,
            manufacturer: s(pick(dev, "manufacturer", "mf")),
            model: s(pick(dev, "model", "mdl")).or_else(|| s(pick(dev, "model_id", "mdl_id"))),
            serial_number: s(pick(dev, "serial_number", "sn")),
            firmware: s(pick(dev, "sw_version", "sw")),
            name: s(pick(dev, "name", "name")),
            mac,
            ..Identity::default()
        };
        if let Some(old) = self.ha_topics.insert(topic.to_owned(), addr.clone()) {
            if old != addr {
                if let Some(t) = self.ha_devices.get_mut(&old) {
                    t.remove(topic);
                }
            }
        }
        self.ha_devices
            .entry(addr.clone())
            .or_default()
            .insert(topic.to_owned());
        Ok(vec![SourceEvent::Seen(Observation {
            transport: Transport::Mqtt,
            address: addr,
            identity,
            announce: None,
        })])
    }

    fn zigbee2mqtt(&mut self, payload: &[u8]) -> Decoded {
        let base = self.z2m_base.clone().unwrap_or_default();
        let list: Vec<Value> = if payload.is_empty() {
            Vec::new()
        } else {
            match serde_json::from_slice(payload).map_err(|_| DropReason::BadJson)? {
                Value::Array(a) => a,
                _ => return Err(DropReason::BadJson),
            }
        };
        let mut now: BTreeMap<String, Identity> = BTreeMap::new();
        let mut bad = 0usize;
        for d in &list {
            let Some(o) = d.as_object() else {
                bad += 1;
                continue;
            };
            if o.get("type").and_then(Value::as_str) == Some("Coordinator") {
                continue;
            }
            let Some(ieee) = s(o.get("ieee_address")) else {
                bad += 1;
                continue;
            };
            let def = o.get("definition").and_then(Value::as_object);
            let name = s(o.get("friendly_name"));
            let topic = format!("{base}/{}", name.as_deref().unwrap_or(&ieee));
            let vendor = match self.vendor_for(&topic) {
                Ok(v) => v,
                Err(_) => continue,
            };
            now.insert(
                format!("{base}/{ieee}"),
                Identity {
                    vendor,
                    manufacturer: def
                        .and_then(|d| s(d.get("vendor")))
                        .or_else(|| s(o.get("manufacturer"))),
                    model: def
                        .and_then(|d| s(d.get("model")))
                        .or_else(|| s(o.get("model_id"))),
                    serial_number: Some(ieee),
                    firmware: s(o.get("software_build_id")),
                    name,
                    ..Identity::default()
                },
            );
        }
        let mut out = Vec::new();
        for addr in self.z2m.keys() {
            if !now.contains_key(addr) {
                out.push(SourceEvent::Gone {
                    transport: Transport::Mqtt,
                    address: addr.clone(),
                });
            }
        }
        for (addr, identity) in &now {
            out.push(SourceEvent::Seen(Observation {
                transport: Transport::Mqtt,
                address: addr.clone(),
                identity: identity.clone(),
                announce: None,
            }));
        }
        self.z2m = now;
        if bad > 0 && out.is_empty() {
            return Err(DropReason::BadJson);
        }
        Ok(out)
    }
}

/// Bounded exponential backoff with jitter (half to full of the step).
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            attempt: 0,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let step = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let frac = 0.5 + (r % 1000) as f64 / 2000.0;
        step.mul_f64(frac)
    }
}

/// Runs the MQTT source until `shutdown` turns true or the merger goes
/// away. Broker outages are waited out, never an error.
pub async fn run(
    cfg: MqttConfig,
    emitter: Emitter,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), MqttError> {
    let opts = options(&cfg)?;
    let (client, mut eventloop) = AsyncClient::new(opts, cfg.channel_capacity);
    eventloop.set_network_options(network_options());
    let filters = cfg.filters();
    let queue_wait = cfg.queue_wait.min(cfg.keep_alive);
    let mut decoder = Decoder::new(&cfg);
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    let mut logged_down = false;
    loop {
        // Cancel-safe enough: on shutdown the event loop is dropped whole.
        let ev = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = shutdown.changed() => {
                if *shutdown.borrow() { return Ok(()); }
                continue;
            }
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                if logged_down {
                    tracing::info!(host = %cfg.host, port = cfg.port, "mqtt broker back");
                    logged_down = false;
                }
                if !ack.session_present {
                    for f in &filters {
                        if let Err(e) = client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                            tracing::warn!(filter = %f, error = %e, "mqtt subscribe not queued");
                        }
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                match decoder.publish(&p.topic, &p.payload) {
                    Ok(evs) => {
                        for ev in evs {
                            let alive = match ev {
                                SourceEvent::Seen(o) => emitter.seen_within(o, queue_wait).await,
                                SourceEvent::Gone { transport, address } => {
                                    emitter.gone(transport, address).await
                                }
                            };
                            if !alive {
                                return Ok(());
                            }
                        }
                    }
                    Err(reason) => {
                        tracing::debug!(topic = %p.topic, ?reason, "mqtt payload dropped");
                        emitter.drop_input(reason);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                let wait = backoff.next_delay();
                if !logged_down {
                    tracing::warn!(host = %cfg.host, port = cfg.port, error = %e, "mqtt broker unreachable, retrying");
                    logged_down = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => if *shutdown.borrow() { return Ok(()); },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn decoder() -> Decoder {
        Decoder::new(&MqttConfig::new("127.0.0.1", 1883))
    }

    fn seen(evs: &[SourceEvent]) -> Vec<&Observation> {
        evs.iter()
            .filter_map(|e| match e {
                SourceEvent::Seen(o) => Some(o),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn native_cbor_and_json_announces() {
        let mut d = decoder();
        let cbor = crate::announce::testing::signed("acme", "SN-1", "1.0", None);
        let evs = d.publish("berth/announce/acme/SN-1", &cbor).unwrap();
        let o = seen(&evs)[0];
        assert_eq!(o.identity.vendor.as_deref(), Some("acme"));
        assert_eq!(o.identity.serial_number.as_deref(), Some("SN-1"));
        let a = protocol::announce::Announce::decode(&cbor).unwrap();
        let json = protocol::announce::to_json(&a).unwrap();
        let evs = d
            .publish("berth/announce/acme/SN-1", json.as_bytes())
            .unwrap();
        assert_eq!(seen(&evs)[0].identity.firmware.as_deref(), Some("1.0"));
        assert_eq!(
            d.publish("berth/announce/acme/SN-1", b"\xa1\x01"),
            Err(DropReason::BadCbor)
        );
        assert_eq!(
            d.publish("berth/announce/other/SN-1", &cbor),
            Err(DropReason::TopicMismatch)
        );
    }

    #[test]
    fn home_assistant_device_lifecycle() {
        let mut d = decoder();
        let cfg = br#"{"name":"Temp","state_topic":"x","device":{"identifiers":["plug-01"],"manufacturer":"Shelly","model":"Plug S","sw_version":"1.14","name":"Kitchen plug","connections":[["mac","AA:BB:CC:00:11:22"]]}}"#;
        let evs = d
            .publish("homeassistant/sensor/plug-01/temp/config", cfg)
            .unwrap();
        let o = seen(&evs)[0];
        assert_eq!(o.address, "homeassistant/device/plug-01");
        assert_eq!(o.identity.manufacturer.as_deref(), Some("Shelly"));
        assert_eq!(o.identity.model.as_deref(), Some("Plug S"));
        assert_eq!(o.identity.firmware.as_deref(), Some("1.14"));
        assert_eq!(o.identity.mac.as_deref(), Some("aa:bb:cc:00:11:22"));
        // Abbreviated keys, second entity of the same device.
        let abbr = br#"{"name":"Power","dev":{"ids":"plug-01","mf":"Shelly","mdl":"Plug S","sw":"1.14","name":"Kitchen plug","cns":[["mac","AA:BB:CC:00:11:22"]]}}"#;
        let evs = d
            .publish("homeassistant/sensor/plug-01_power/config", abbr)
            .unwrap();
        assert_eq!(seen(&evs)[0].address, "homeassistant/device/plug-01");
        // Clearing one entity keeps the device, clearing the last ends it.
        assert!(d
            .publish("homeassistant/sensor/plug-01/temp/config", b"")
            .unwrap()
            .is_empty());
        let evs = d
            .publish("homeassistant/sensor/plug-01_power/config", b"")
            .unwrap();
        assert!(
            matches!(&evs[..], [SourceEvent::Gone { address, .. }] if address == "homeassistant/device/plug-01")
        );
        assert_eq!(
            d.publish("homeassistant/sensor/x/config", b"{not json"),
            Err(DropReason::BadJson)
        );
        assert!(d
            .publish("homeassistant/sensor/x/config", br#"{"name":"no device"}"#)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn zigbee2mqtt_device_list_diff() {
        let mut d = decoder();
        let list = br#"[
          {"ieee_address":"0x00124b0000000001","type":"Coordinator","friendly_name":"Coordinator"},
          {"ieee_address":"0x00158d0001a2b3c4","type":"EndDevice","friendly_name":"door",
           "definition":{"vendor":"Aqara","model":"MCCGQ11LM"},"manufacturer":"LUMI","model_id":"lumi.sensor_magnet.aq2","software_build_id":"3000-0001"},
          {"ieee_address":"0x00158d0001a2b3c5","type":"Router","friendly_name":"lamp","definition":null,"manufacturer":"IKEA of Sweden","model_id":"TRADFRI bulb"}
        ]"#;
        let evs = d.publish("zigbee2mqtt/bridge/devices", list).unwrap();
        let s = seen(&evs);
        assert_eq!(s.len(), 2);
        let door = s.iter().find(|o| o.address.ends_with("c4")).unwrap();
        assert_eq!(door.identity.manufacturer.as_deref(), Some("Aqara"));
        assert_eq!(door.identity.model.as_deref(), Some("MCCGQ11LM"));
        assert_eq!(door.identity.firmware.as_deref(), Some("3000-0001"));
        assert_eq!(
            door.identity.serial_number.as_deref(),
            Some("0x00158d0001a2b3c4")
        );
        let lamp = s.iter().find(|o| o.address.ends_with("c5")).unwrap();
        assert_eq!(
            lamp.identity.manufacturer.as_deref(),
            Some("IKEA of Sweden")
        );
        assert_eq!(lamp.identity.model.as_deref(), Some("TRADFRI bulb"));
        let smaller = br#"[{"ieee_address":"0x00158d0001a2b3c5","friendly_name":"lamp","manufacturer":"IKEA of Sweden","model_id":"TRADFRI bulb"}]"#;
        let evs = d.publish("zigbee2mqtt/bridge/devices", smaller).unwrap();
        assert!(evs.iter().any(|e| matches!(e, SourceEvent::Gone { address, .. } if address == "zigbee2mqtt/0x00158d0001a2b3c4")));
        assert_eq!(
            d.publish("zigbee2mqtt/bridge/devices", b"{}"),
            Err(DropReason::BadJson)
        );
    }

    #[test]
    fn rules_narrow_and_map_topics() {
        let rules = Rules::parse(
            "[[rule]]\nvendor = \"shelly\"\nmqtt = { topic = \"homeassistant/+/+/+/config\" }\n",
            Path::new("r.toml"),
        )
        .unwrap();
        let mut cfg = MqttConfig::new("127.0.0.1", 1);
        cfg.rules = Arc::new(rules);
        let mut d = Decoder::new(&cfg);
        let c = br#"{"device":{"identifiers":["a"]}}"#;
        let evs = d.publish("homeassistant/sensor/a/t/config", c).unwrap();
        assert_eq!(seen(&evs)[0].identity.vendor.as_deref(), Some("shelly"));
        assert_eq!(
            d.publish("homeassistant/sensor/a/config", c),
            Err(DropReason::UnknownVendor)
        );
    }

    #[test]
    fn backoff_grows_bounded_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[7] >= Duration::from_millis(500) && d[7] <= Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_address("127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883)
        );
        assert_eq!(parse_address("[::1]:1883").unwrap(), ("::1".into(), 1883));
        assert!(parse_address("nohost").is_err());
        assert!(parse_address(":1883").is_err());
        assert!(parse_address("h:99999").is_err());
    }
}

//! The BLE source's D-Bus side: BlueZ's object manager over `zbus`.
//!
//! One session: find BlueZ's unique bus name, a powered `Adapter1`, start
//! discovery, list the devices (`GetManagedObjects`), then follow every
//! signal BlueZ sends (`InterfacesAdded`, `InterfacesRemoved`,
//! `PropertiesChanged`). A device whose properties have not changed for
//! `gone_after` is reported gone; BlueZ updates RSSI on every advertisement
//! while discovering, so silence means out of range. When BlueZ or a powered
//! adapter is missing, or BlueZ restarts, the session ends, its devices are
//! reported gone, and a new one starts after `retry`; the reason is logged
//! once, not every retry.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::watch;
use zbus::message::Type as MsgType;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};
use zbus::{Connection, MatchRule, MessageStream};

use super::{observe, Advert, BleConfig, BleError};
use crate::event::Transport;
use crate::merger::Emitter;

const BLUEZ: &str = "org.bluez";
const DEVICE_IFACE: &str = "org.bluez.Device1";
const ADAPTER_IFACE: &str = "org.bluez.Adapter1";
const OM_IFACE: &str = "org.freedesktop.DBus.ObjectManager";
const PROPS_IFACE: &str = "org.freedesktop.DBus.Properties";
/// Bound on every D-Bus call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Signals queued in zbus before the oldest are dropped.
const SIGNAL_QUEUE: usize = 256;

type Props = HashMap<String, OwnedValue>;
type Managed = HashMap<OwnedObjectPath, HashMap<String, Props>>;

#[derive(Debug)]
struct Dev {
    advert: Advert,
    last_seen: Instant,
    reported: bool,
    /// What was last sent, so the RSSI chatter of a present device does
    /// not reach the merger (and its flood limit) as repeats.
    last_sent: Option<crate::event::Observation>,
}

/// Why a session ended.
#[derive(Debug)]
enum SessionEnd {
    Shutdown,
    Retry(String),
}

fn bus_err(address: &str) -> impl Fn(zbus::Error) -> BleError + '_ {
    move |e| BleError::Bus {
        address: address.to_owned(),
        reason: e.to_string(),
    }
}

/// Runs the BLE source until `shutdown` turns true or the merger goes away.
/// BlueZ or an adapter being absent is not an error: the source waits.
pub async fn run(
    cfg: BleConfig,
    emitter: Emitter,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BleError> {
    let address = cfg
        .bus_address
        .clone()
        .or_else(|| std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok())
        .unwrap_or_else(|| "unix:path=/var/run/dbus/system_bus_socket".to_owned());
    let mut last_reason: Option<String> = None;
    loop {
        let end = match connect(&address).await {
            Ok(conn) => session(&cfg, &conn, &emitter, &mut shutdown).await,
            Err(e) => SessionEnd::Retry(e.to_string()),
        };
        match end {
            SessionEnd::Shutdown => return Ok(()),
            SessionEnd::Retry(reason) => {
                if last_reason.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(%reason, retry = ?cfg.retry, "ble source waiting");
                    last_reason = Some(reason);
                }
            }
        }
        // Cancel-safe: both branches only wait.
        tokio::select! {
            _ = tokio::time::sleep(cfg.retry) => {}
            _ = shutdown.changed() => return Ok(()),
        }
        if *shutdown.borrow() {
            return Ok(());
        }
    }
}

async fn connect(address: &str) -> Result<Connection, BleError> {
    let b = zbus::connection::Builder::address(address).map_err(bus_err(address))?;
    tokio::time::timeout(CALL_TIMEOUT, b.build())
        .await
        .map_err(|_| BleError::Bus {
            address: address.to_owned(),
            reason: "connect timed out".to_owned(),
        })?
        .map_err(bus_err(address))
}

async fn call<B>(
    conn: &Connection,
    dest: &str,
    path: &str,
    iface: &str,
    method: &str,
    body: &B,
) -> Result<zbus::Message, String>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    tokio::time::timeout(
        CALL_TIMEOUT,
        conn.call_method(Some(dest), path, Some(iface), method, body),
    )
    .await
    .map_err(|_| format!("{iface}.{method} timed out"))?
    .map_err(|e| format!("{iface}.{method}: {e}"))
}

async fn session(
    cfg: &BleConfig,
    conn: &Connection,
    emitter: &Emitter,
    shutdown: &mut watch::Receiver<bool>,
) -> SessionEnd {
    match session_inner(cfg, conn, emitter, shutdown).await {
        Ok(end) => end,
        Err(reason) => SessionEnd::Retry(reason),
    }
}

fn rule(
    build: impl FnOnce() -> zbus::Result<MatchRule<'static>>,
) -> Result<MatchRule<'static>, String> {
    build().map_err(|e| format!("match rule: {e}"))
}

async fn session_inner(
    cfg: &BleConfig,
    conn: &Connection,
    emitter: &Emitter,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SessionEnd, String> {
    let owner: String = call(
        conn,
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        "GetNameOwner",
        &(BLUEZ,),
    )
    .await
    .map_err(|_| "bluez is not on the bus".to_owned())?
    .body()
    .deserialize()
    .map_err(|e| format!("GetNameOwner reply: {e}"))?;
    // Subscribe before listing so nothing falls between the two.
    let owner_for_rule = owner.clone();
    let signals = rule(move || {
        Ok(MatchRule::builder()
            .msg_type(MsgType::Signal)
            .sender(owner_for_rule)?
            .build())
    })?;
    let mut signals = MessageStream::for_match_rule(signals, conn, Some(SIGNAL_QUEUE))
        .await
        .map_err(|e| format!("subscribe to bluez signals: {e}"))?;
    let owner_rule = rule(|| {
        Ok(MatchRule::builder()
            .msg_type(MsgType::Signal)
            .interface("org.freedesktop.DBus")?
            .member("NameOwnerChanged")?
            .arg(0, BLUEZ)?
            .build())
    })?;
    let mut owner_changes = MessageStream::for_match_rule(owner_rule, conn, Some(8))
        .await
        .map_err(|e| format!("subscribe to NameOwnerChanged: {e}"))?;

    let managed: Managed = call(conn, BLUEZ, "/", OM_IFACE, "GetManagedObjects", &())
        .await?
        .body()
        .deserialize()
        .map_err(|e| format!("GetManagedObjects reply: {e}"))?;
    let adapter = managed
        .iter()
        .find(|(_, ifaces)| {
            ifaces
                .get(ADAPTER_IFACE)
                .and_then(|p| p.get("Powered"))
                .and_then(|v| bool::try_from(v).ok())
                == Some(true)
        })
        .map(|(p, _)| p.clone())
        .ok_or_else(|| "no powered bluetooth adapter".to_owned())?;
    if cfg.discover {
        if let Err(e) = call(
            conn,
            BLUEZ,
            adapter.as_str(),
            ADAPTER_IFACE,
            "StartDiscovery",
            &(),
        )
        .await
        {
            // Another client may be discovering already; keep listening.
            tracing::debug!(error = %e, "StartDiscovery refused");
        }
    }
    let mut devs: HashMap<OwnedObjectPath, Dev> = HashMap::new();
    let now = Instant::now();
    for (path, ifaces) in &managed {
        if let Some(props) = ifaces.get(DEVICE_IFACE) {
            let mut advert = Advert::default();
            apply(&mut advert, props);
            // BlueZ lists devices it remembers even when they are away;
            // only those with a fresh RSSI are being heard now.
            let present = advert.rssi.is_some();
            let d = devs.entry(path.clone()).or_insert(Dev {
                advert,
                last_seen: now,
                reported: false,
                last_sent: None,
            });
            if present && !report(cfg, emitter, d).await {
                return Ok(SessionEnd::Shutdown);
            }
        }
    }

    let mut tick = tokio::time::interval(Duration::from_secs(1).min(cfg.gone_after));
    let end = loop {
        // Cancel-safe: MessageStream and watch::changed lose nothing when
        // another branch wins; interval ticks are only delayed.
        tokio::select! {
            msg = signals.next() => {
                let Some(msg) = msg else { break SessionEnd::Retry("d-bus connection closed".into()) };
                let Ok(msg) = msg else { continue };
                if !on_signal(cfg, emitter, &mut devs, &adapter, &msg).await {
                    break SessionEnd::Shutdown;
                }
                if !devs_adapter_present(&msg, &adapter) {
                    break SessionEnd::Retry("bluetooth adapter removed".into());
                }
            }
            _ = owner_changes.next() => {
                break SessionEnd::Retry("bluez restarted".into());
            }
            _ = tick.tick() => {
                let now = Instant::now();
                for d in devs.values_mut() {
                    if d.reported && now.duration_since(d.last_seen) >= cfg.gone_after {
                        d.reported = false;
                        d.last_sent = None;
                        if !emitter.gone(Transport::Ble, d.advert.address.clone()).await {
                            return Ok(SessionEnd::Shutdown);
                        }
                    }
                }
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break SessionEnd::Shutdown; }
            }
        }
    };
    if cfg.discover {
        let _ = call(
            conn,
            BLUEZ,
            adapter.as_str(),
            ADAPTER_IFACE,
            "StopDiscovery",
            &(),
        )
        .await;
    }
    for d in devs.values() {
        if d.reported {
            emitter.gone(Transport::Ble, d.advert.address.clone()).await;
        }
    }
    Ok(end)
}

/// False when the adapter itself went away in this signal.
fn devs_adapter_present(msg: &zbus::Message, adapter: &OwnedObjectPath) -> bool {
    let h = msg.header();
    if h.member().map(|m| m.as_str()) != Some("InterfacesRemoved") {
        return true;
    }
    match msg.body().deserialize::<(OwnedObjectPath, Vec<String>)>() {
        Ok((path, ifaces)) => !(path == *adapter && ifaces.iter().any(|i| i == ADAPTER_IFACE)),
        Err(_) => true,
    }
}

/// Handles one BlueZ signal; false once the merger is gone.
async fn on_signal(
    cfg: &BleConfig,
    emitter: &Emitter,
    devs: &mut HashMap<OwnedObjectPath, Dev>,
    adapter: &OwnedObjectPath,
    msg: &zbus::Message,
) -> bool {
    let h = msg.header();
    let member = h.member().map(|m| m.as_str().to_owned());
    let iface = h.interface().map(|i| i.as_str().to_owned());
    match (iface.as_deref(), member.as_deref()) {
        (Some(OM_IFACE), Some("InterfacesAdded")) => {
            let Ok((path, ifaces)) = msg
                .body()
                .deserialize::<(OwnedObjectPath, HashMap<String, Props>)>()
            else {
                return true;
            };
            let Some(props) = ifaces.get(DEVICE_IFACE) else {
                return true;
            };
            if !path.as_str().starts_with(adapter.as_str()) {
                return true;
            }
            let d = devs.entry(path).or_insert(Dev {
                advert: Advert::default(),
                last_seen: Instant::now(),
                reported: false,
                last_sent: None,
            });
            apply(&mut d.advert, props);
            d.last_seen = Instant::now();
            report(cfg, emitter, d).await
        }
        (Some(OM_IFACE), Some("InterfacesRemoved")) => {
            let Ok((path, ifaces)) = msg.body().deserialize::<(OwnedObjectPath, Vec<String>)>()
            else {
                return true;
            };
            if !ifaces.iter().any(|i| i == DEVICE_IFACE) {
                return true;
            }
            match devs.remove(&path) {
                Some(d) if d.reported => emitter.gone(Transport::Ble, d.advert.address).await,
                _ => true,
            }
        }
        (Some(PROPS_IFACE), Some("PropertiesChanged")) => {
            let Some(path) = h.path() else { return true };
            let Ok((iface, changed, _invalidated)) =
                msg.body().deserialize::<(String, Props, Vec<String>)>()
            else {
                return true;
            };
            if iface != DEVICE_IFACE {
                return true;
            }
            let path = OwnedObjectPath::from(path.to_owned());
            let Some(d) = devs.get_mut(&path) else {
                return true;
            };
            apply(&mut d.advert, &changed);
            d.last_seen = Instant::now();
            report(cfg, emitter, d).await
        }
        _ => true,
    }
}

/// Sends the device's current observation (or counts why not).
async fn report(cfg: &BleConfig, emitter: &Emitter, d: &mut Dev) -> bool {
    match observe(&d.advert, &cfg.rules, &cfg.keys) {
        Ok(Some(obs)) => {
            if d.reported && d.last_sent.as_ref() == Some(&obs) {
                return true;
            }
            d.reported = true;
            d.last_sent = Some(obs.clone());
            emitter.seen(obs).await
        }
        Ok(None) => true,
        Err(reason) => {
            emitter.drop_input(reason);
            true
        }
    }
}

/// Applies `org.bluez.Device1` properties to an advert.
pub(crate) fn apply(ad: &mut Advert, props: &Props) {
    for (k, v) in props {
        let v: &Value<'_> = v;
        match k.as_str() {
            "Address" => {
                if let Some(s) = string(v) {
                    ad.address = s;
                }
            }
            "Alias" if ad.name.is_none() => ad.name = string(v),
            "Name" => ad.name = string(v),
            "RSSI" => ad.rssi = int16(v),
            "UUIDs" => {
                if let Value::Array(a) = unwrap(v) {
                    ad.service_uuids = a.iter().filter_map(string).collect();
                }
            }
            "ManufacturerData" => {
                if let Value::Dict(d) = unwrap(v) {
                    ad.manufacturer_data = d
                        .iter()
                        .filter_map(|(k, v)| match (unwrap(k), bytes(v)) {
                            (Value::U16(c), Some(b)) => Some((*c, b)),
                            _ => None,
                        })
                        .collect();
                }
            }
            "ServiceData" => {
                if let Value::Dict(d) = unwrap(v) {
                    ad.service_data = d
                        .iter()
                        .filter_map(|(k, v)| Some((string(k)?, bytes(v)?)))
                        .collect();
                }
            }
            _ => {}
        }
    }
}

fn unwrap<'a, 'b>(v: &'a Value<'b>) -> &'a Value<'b> {
    match v {
        Value::Value(inner) => unwrap(inner),
        other => other,
    }
}

fn string(v: &Value<'_>) -> Option<String> {
    match unwrap(v) {
        Value::Str(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn int16(v: &Value<'_>) -> Option<i16> {
    match unwrap(v) {
        Value::I16(n) => Some(*n),
        Value::I32(n) => i16::try_from(*n).ok(),
        _ => None,
    }
}

fn bytes(v: &Value<'_>) -> Option<Vec<u8>> {
    match unwrap(v) {
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::U8(b) => Some(*b),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

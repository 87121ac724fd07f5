//! The merger: turns every source's [`SourceEvent`]s into one stream of
//! [`DeviceEvent`]s.
//!
//! [`Merger`] is the I/O-free state: observations in, events out. It gives
//! each device a stable id (`vendor:serial` when both are known, else
//! `transport:address`), links observations of one device on several
//! transports (same vendor and serial, same USB bridge serial, same
//! hardware address), emits `Updated` when what it knows changes and `Gone`
//! when the last transport loses the device. A token bucket per transport
//! address caps how fast one device can make the merger work; what goes
//! over is dropped and counted as [`DropReason::Flood`]. [`run`] drives it
//! between two bounded channels.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::event::{
    Device, DeviceEvent, DeviceId, DropReason, Drops, Identity, Observation, SourceEvent, Transport,
};

type Addr = (Transport, String);

/// How many observations one transport address may send in a burst, and
/// how many per second after that.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    pub burst: u32,
    pub per_second: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            burst: 20,
            per_second: 10,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct Entry {
    id: DeviceId,
    per_addr: BTreeMap<Addr, Identity>,
    merged: Identity,
}

impl Entry {
    fn device(&self) -> Device {
        Device {
            id: self.id.clone(),
            identity: self.merged.clone(),
            seen_on: self.per_addr.keys().cloned().collect(),
        }
    }
}

/// The merger's state. Feed it with [`Merger::handle`].
#[derive(Debug)]
pub struct Merger {
    devices: BTreeMap<DeviceId, Entry>,
    by_addr: HashMap<Addr, DeviceId>,
    aliases: HashMap<String, DeviceId>,
    buckets: HashMap<Addr, Bucket>,
    limit: RateLimit,
    ignored: BTreeSet<String>,
    drops: Arc<Drops>,
}

/// The stable id for a device with this identity, seen first at `addr`.
pub fn device_id(identity: &Identity, transport: Transport, address: &str) -> DeviceId {
    match (&identity.vendor, &identity.serial_number) {
        (Some(v), Some(s)) => DeviceId(format!("{v}:{s}")),
        _ => DeviceId(format!("{transport}:{address}")),
    }
}

/// Keys that name one physical device whatever transport shows it.
fn alias_keys(identity: &Identity, transport: Transport, address: &str) -> Vec<String> {
    let mut keys = Vec::new();
    if let (Some(v), Some(s)) = (&identity.vendor, &identity.serial_number) {
        keys.push(format!("vs:{v}/{s}"));
    }
    if let Some(usb) = &identity.usb {
        if let Some(s) = &usb.serial {
            keys.push(format!("usb:{:04x}:{:04x}:{s}", usb.vid, usb.pid));
        }
    }
    if let Some(mac) = &identity.mac {
        keys.push(format!("mac:{}", mac.to_ascii_lowercase()));
    }
    if transport == Transport::Ble {
        keys.push(format!("mac:{}", address.to_ascii_lowercase()));
    }
    keys
}

/// Combines what several transports said about one device: a verified
/// identity first, then one that names vendor and serial, then the rest;
/// each field from the first that has it.
fn merge<'a>(identities: impl Iterator<Item = &'a Identity>) -> Identity {
    let mut all: Vec<&Identity> = identities.collect();
    all.sort_by_key(|i| {
        (
            !i.verified,
            !(i.vendor.is_some() && i.serial_number.is_some()),
        )
    });
    let mut out = Identity::default();
    for i in all {
        macro_rules! fill {
            ($($f:ident),*) => {$(
                if out.$f.is_none() { out.$f = i.$f.clone(); }
            )*};
        }
        fill!(
            vendor,
            manufacturer,
            model,
            serial_number,
            firmware,
            name,
            endpoint,
            usb,
            ble_company_id,
            mac
        );
        if out.capabilities.is_empty() {
            out.capabilities = i.capabilities.clone();
        }
        out.verified |= i.verified;
    }
    out
}

impl Merger {
    pub fn new(drops: Arc<Drops>) -> Merger {
        Merger {
            devices: BTreeMap::new(),
            by_addr: HashMap::new(),
            aliases: HashMap::new(),
            buckets: HashMap::new(),
            limit: RateLimit::default(),
            ignored: BTreeSet::new(),
            drops,
        }
    }

    pub fn with_rate_limit(mut self, limit: RateLimit) -> Merger {
        self.limit = limit;
        self
    }

    /// Device ids whose observations are dropped (counted as `Denied`).
    pub fn with_ignored(mut self, ids: impl IntoIterator<Item = String>) -> Merger {
        self.ignored = ids.into_iter().collect();
        self
    }

    /// The devices known now.
    pub fn devices(&self) -> Vec<Device> {
        self.devices.values().map(Entry::device).collect()
    }

    fn admit_rate(&mut self, addr: &Addr, now: Instant) -> bool {
        let limit = self.limit;
        let b = self.buckets.entry(addr.clone()).or_insert(Bucket {
            tokens: f64::from(limit.burst),
            at: now,
        });
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * f64::from(limit.per_second)).min(f64::from(limit.burst));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes one source event and returns the device events it causes.
    pub fn handle(&mut self, ev: SourceEvent, now: Instant) -> Vec<DeviceEvent> {
        match ev {
            SourceEvent::Seen(obs) => self.seen(obs, now),
            SourceEvent::Gone { transport, address } => {
                self.buckets.remove(&(transport, address.clone()));
                self.detach(&(transport, address)).into_iter().collect()
            }
        }
    }

    fn seen(&mut self, obs: Observation, now: Instant) -> Vec<DeviceEvent> {
        let addr: Addr = (obs.transport, obs.address.clone());
        if !self.admit_rate(&addr, now) {
            self.drops.count(DropReason::Flood);
            return Vec::new();
        }
        let keys = alias_keys(&obs.identity, obs.transport, &obs.address);
        let by_alias = keys.iter().find_map(|k| self.aliases.get(k).cloned());
        let current = self.by_addr.get(&addr).cloned();
        // The same address may now show a different device (a port reused
        // after an unplug): then it leaves the old one.
        let current = current.filter(|id| {
            let Some(e) = self.devices.get(id) else {
                return false;
            };
            let same_vs = match (
                &e.merged.vendor,
                &e.merged.serial_number,
                &obs.identity.vendor,
                &obs.identity.serial_number,
            ) {
                (Some(a), Some(b), Some(c), Some(d)) => a == c && b == d,
                _ => true,
            };
            same_vs && by_alias.as_ref().is_none_or(|a| a == id)
        });
        let id = by_alias
            .or(current)
            .unwrap_or_else(|| device_id(&obs.identity, obs.transport, &obs.address));
        if self.ignored.contains(&id.0) {
            self.drops.count(DropReason::Denied);
            return Vec::new();
        }
        let mut out = Vec::new();
        if let Some(old) = self.by_addr.get(&addr) {
            if *old != id {
                out.extend(self.detach(&addr));
            }
        }
        self.by_addr.insert(addr.clone(), id.clone());
        match self.devices.get_mut(&id) {
            Some(e) => {
                let before_on = e.per_addr.len();
                let changed_here = e.per_addr.get(&addr) != Some(&obs.identity);
                e.per_addr.insert(addr, obs.identity);
                if changed_here {
                    let merged = merge(e.per_addr.values());
                    let changed = merged != e.merged || before_on != e.per_addr.len();
                    e.merged = merged;
                    if changed {
                        out.push(DeviceEvent::Updated(e.device()));
                    }
                }
            }
            None => {
                let merged = obs.identity.clone();
                let mut per_addr = BTreeMap::new();
                per_addr.insert(addr, obs.identity);
                let e = Entry {
                    id: id.clone(),
                    per_addr,
                    merged,
                };
                out.push(DeviceEvent::Seen(e.device()));
                self.devices.insert(id.clone(), e);
            }
        }
        if let Some(e) = self.devices.get(&id) {
            for i in e.per_addr.iter() {
                for k in alias_keys(i.1, i.0 .0, &i.0 .1) {
                    self.aliases.insert(k, id.clone());
                }
            }
            for k in alias_keys(&e.merged, Transport::Mqtt, "") {
                self.aliases.insert(k, id.clone());
            }
        }
        out
    }

    /// Removes one transport address from its device; the device is gone
    /// when that was its last.
    fn detach(&mut self, addr: &Addr) -> Option<DeviceEvent> {
        let id = self.by_addr.remove(addr)?;
        let e = self.devices.get_mut(&id)?;
        e.per_addr.remove(addr);
        if e.per_addr.is_empty() {
            let e = self.devices.remove(&id)?;
            self.aliases.retain(|_, v| *v != id);
            let mut d = e.device();
            d.seen_on = vec![addr.clone()];
            return Some(DeviceEvent::Gone(d));
        }
        e.merged = merge(e.per_addr.values());
        let d = e.device();
        // Re-derive the aliases from what is left.
        self.aliases.retain(|_, v| *v != id);
        let keys: Vec<String> = e
            .per_addr
            .iter()
            .flat_map(|(a, i)| alias_keys(i, a.0, &a.1))
            .collect();
        for k in keys {
            self.aliases.insert(k, id.clone());
        }
        Some(DeviceEvent::Updated(d))
    }
}

/// Drives a [`Merger`] until every source sender is dropped or the
/// receiver of device events goes away. Forwarding waits on a full output
/// channel: a slow consumer slows the sources down rather than losing
/// events; the sources' own channel sends count what they must drop.
pub async fn run(
    mut merger: Merger,
    mut rx: mpsc::Receiver<SourceEvent>,
    tx: mpsc::Sender<DeviceEvent>,
) {
    while let Some(ev) = rx.recv().await {
        for out in merger.handle(ev, Instant::now()) {
            if tx.send(out).await.is_err() {
                return;
            }
        }
    }
}

/// How long a source waits on a full channel before it counts a drop.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// The sending half a source uses: bounded, with drops counted.
#[derive(Debug, Clone)]
pub struct Emitter {
    tx: mpsc::Sender<SourceEvent>,
    drops: Arc<Drops>,
}

impl Emitter {
    pub fn new(tx: mpsc::Sender<SourceEvent>, drops: Arc<Drops>) -> Emitter {
        Emitter { tx, drops }
    }

    pub fn drops(&self) -> &Arc<Drops> {
        &self.drops
    }

    /// Sends an observation; a channel full for [`SEND_TIMEOUT`] drops it
    /// (counted as `QueueFull`). Returns false once the merger is gone.
    pub async fn seen(&self, obs: Observation) -> bool {
        self.seen_within(obs, SEND_TIMEOUT).await
    }

    /// [`seen`](Self::seen) with another wait on a full channel: a source
    /// whose peer holds undelivered input itself (an MQTT broker at QoS 1)
    /// waits longer rather than drop.
    pub async fn seen_within(&self, obs: Observation, wait: Duration) -> bool {
        match self.tx.try_send(SourceEvent::Seen(obs)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(ev)) => {
                match tokio::time::timeout(wait, self.tx.send(ev)).await {
                    Ok(Ok(())) => true,
                    Ok(Err(_)) => false,
                    Err(_) => {
                        self.drops.count(DropReason::QueueFull);
                        true
                    }
                }
            }
        }
    }

    /// Sends a departure; these are never dropped, the source waits.
    pub async fn gone(&self, transport: Transport, address: String) -> bool {
        self.tx
            .send(SourceEvent::Gone { transport, address })
            .await
            .is_ok()
    }

    /// Counts a dropped piece of input.
    pub fn drop_input(&self, reason: DropReason) {
        self.drops.count(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::UsbIds;

    fn obs(t: Transport, addr: &str, vendor: Option<&str>, serial: Option<&str>) -> Observation {
        Observation {
            transport: t,
            address: addr.to_owned(),
            identity: Identity {
                vendor: vendor.map(str::to_owned),
                serial_number: serial.map(str::to_owned),
                ..Identity::default()
            },
            announce: None,
        }
    }

    fn merger() -> (Merger, Arc<Drops>) {
        let d = Arc::new(Drops::default());
        (Merger::new(d.clone()), d)
    }

    #[test]
    fn one_device_on_two_transports_is_one_device() {
        let (mut m, _) = merger();
        let t = Instant::now();
        let ev = m.handle(
            SourceEvent::Seen(obs(
                Transport::Serial,
                "/dev/ttyUSB0",
                Some("acme"),
                Some("42"),
            )),
            t,
        );
        assert!(matches!(&ev[..], [DeviceEvent::Seen(d)] if d.id.0 == "acme:42"));
        let ev = m.handle(
            SourceEvent::Seen(obs(
                Transport::Mqtt,
                "berth/announce/42",
                Some("acme"),
                Some("42"),
            )),
            t,
        );
        assert!(
            matches!(&ev[..], [DeviceEvent::Updated(d)] if d.id.0 == "acme:42" && d.seen_on.len() == 2),
            "{ev:?}"
        );
        assert_eq!(m.devices().len(), 1);
        // Losing one transport keeps the device; losing the last ends it.
        let ev = m.handle(
            SourceEvent::Gone {
                transport: Transport::Serial,
                address: "/dev/ttyUSB0".into(),
            },
            t,
        );
        assert!(matches!(&ev[..], [DeviceEvent::Updated(d)] if d.seen_on.len() == 1));
        let ev = m.handle(
            SourceEvent::Gone {
                transport: Transport::Mqtt,
                address: "berth/announce/42".into(),
            },
            t,
        );
        assert!(matches!(&ev[..], [DeviceEvent::Gone(d)] if d.id.0 == "acme:42"));
        assert!(m.devices().is_empty());
    }

    #[test]
    fn repeated_identical_observation_is_silent_and_change_is_updated() {
        let (mut m, _) = merger();
        let t = Instant::now();
        let o = obs(Transport::Ble, "AA:BB:CC:DD:EE:FF", None, None);
        assert_eq!(m.handle(SourceEvent::Seen(o.clone()), t).len(), 1);
        assert!(m.handle(SourceEvent::Seen(o.clone()), t).is_empty());
        let mut o2 = o;
        o2.identity.firmware = Some("1.2".into());
        let ev = m.handle(SourceEvent::Seen(o2), t);
        assert!(
            matches!(&ev[..], [DeviceEvent::Updated(d)] if d.id.0 == "ble:AA:BB:CC:DD:EE:FF" && d.identity.firmware.as_deref() == Some("1.2"))
        );
    }

    #[test]
    fn mac_links_mqtt_report_to_ble_device() {
        let (mut m, _) = merger();
        let t = Instant::now();
        m.handle(
            SourceEvent::Seen(obs(Transport::Ble, "AA:BB:CC:DD:EE:01", None, None)),
            t,
        );
        let mut o = obs(Transport::Mqtt, "homeassistant/device/x", None, None);
        o.identity.mac = Some("aa:bb:cc:dd:ee:01".into());
        o.identity.model = Some("T1".into());
        let ev = m.handle(SourceEvent::Seen(o), t);
        assert!(
            matches!(&ev[..], [DeviceEvent::Updated(d)] if d.seen_on.len() == 2 && d.identity.model.as_deref() == Some("T1")),
            "{ev:?}"
        );
    }

    #[test]
    fn usb_serial_links_two_observations() {
        let (mut m, _) = merger();
        let t = Instant::now();
        let usb = UsbIds {
            vid: 1,
            pid: 2,
            serial: Some("S".into()),
            ..UsbIds::default()
        };
        let mut a = obs(Transport::Serial, "/dev/ttyUSB0", None, None);
        a.identity.usb = Some(usb.clone());
        let mut b = obs(Transport::Mqtt, "x/y", Some("acme"), Some("9"));
        b.identity.usb = Some(usb);
        m.handle(SourceEvent::Seen(a), t);
        let ev = m.handle(SourceEvent::Seen(b), t);
        assert!(
            matches!(&ev[..], [DeviceEvent::Updated(d)] if d.id.0 == "serial:/dev/ttyUSB0" && d.identity.vendor.as_deref() == Some("acme"))
        );
    }

    #[test]
    fn reused_address_with_other_device_replaces_it() {
        let (mut m, _) = merger();
        let t = Instant::now();
        m.handle(
            SourceEvent::Seen(obs(
                Transport::Serial,
                "/dev/ttyUSB0",
                Some("acme"),
                Some("1"),
            )),
            t,
        );
        let ev = m.handle(
            SourceEvent::Seen(obs(
                Transport::Serial,
                "/dev/ttyUSB0",
                Some("acme"),
                Some("2"),
            )),
            t,
        );
        assert!(
            matches!(&ev[..], [DeviceEvent::Gone(a), DeviceEvent::Seen(b)] if a.id.0 == "acme:1" && b.id.0 == "acme:2"),
            "{ev:?}"
        );
    }

    #[test]
    fn flood_is_limited_and_counted() {
        let d = Arc::new(Drops::default());
        let mut m = Merger::new(d.clone()).with_rate_limit(RateLimit {
            burst: 5,
            per_second: 1,
        });
        let t = Instant::now();
        for i in 0..50 {
            let mut o = obs(Transport::Mqtt, "flood/1", None, None);
            o.identity.firmware = Some(i.to_string());
            m.handle(SourceEvent::Seen(o), t);
        }
        assert_eq!(d.get(DropReason::Flood), 45);
        // Tokens come back with time.
        let mut o = obs(Transport::Mqtt, "flood/1", None, None);
        o.identity.firmware = Some("new".into());
        let ev = m.handle(SourceEvent::Seen(o), t + Duration::from_secs(2));
        assert_eq!(ev.len(), 1);
        // Another device is not affected by the flood.
        let ev = m.handle(
            SourceEvent::Seen(obs(Transport::Mqtt, "calm/1", None, None)),
            t,
        );
        assert_eq!(ev.len(), 1);
    }

    #[test]
    fn ignored_ids_are_dropped() {
        let d = Arc::new(Drops::default());
        let mut m = Merger::new(d.clone()).with_ignored(["acme:7".to_owned()]);
        let ev = m.handle(
            SourceEvent::Seen(obs(Transport::Mqtt, "a", Some("acme"), Some("7"))),
            Instant::now(),
        );
        assert!(ev.is_empty());
        assert_eq!(d.get(DropReason::Denied), 1);
    }

    #[test]
    fn gone_for_unknown_address_is_nothing() {
        let (mut m, _) = merger();
        assert!(m
            .handle(
                SourceEvent::Gone {
                    transport: Transport::Ble,
                    address: "x".into()
                },
                Instant::now()
            )
            .is_empty());
    }

    #[tokio::test]
    async fn run_forwards_until_sources_close() {
        let d = Arc::new(Drops::default());
        let (stx, srx) = mpsc::channel(4);
        let (dtx, mut drx) = mpsc::channel(4);
        let task = tokio::spawn(run(Merger::new(d.clone()), srx, dtx));
        let e = Emitter::new(stx, d);
        assert!(e.seen(obs(Transport::Mqtt, "a", None, None)).await);
        assert!(e.gone(Transport::Mqtt, "a".into()).await);
        drop(e);
        assert!(matches!(drx.recv().await, Some(DeviceEvent::Seen(_))));
        assert!(matches!(drx.recv().await, Some(DeviceEvent::Gone(_))));
        assert!(drx.recv().await.is_none());
        task.await.unwrap();
    }
}

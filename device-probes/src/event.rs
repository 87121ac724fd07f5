//! The types every detection source and the merger share.

use std::fmt;

/// The transport a device was seen on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Serial,
    Ble,
    Mqtt,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Serial => "serial",
            Transport::Ble => "ble",
            Transport::Mqtt => "mqtt",
        })
    }
}

/// USB identity of the bridge a serial device hangs off.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsbIds {
    pub vid: u16,
    pub pid: u16,
    pub serial: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
}

/// Everything a source learned about a device. Fields a transport cannot
/// tell stay `None` or empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// Vendor id as Berth's vendor registry knows it, when the source could
    /// map the device to one (signed announce, vendor rule).
    pub vendor: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub firmware: Option<String>,
    pub name: Option<String>,
    pub capabilities: Vec<String>,
    /// The vendor's provisioning endpoint as the device announced it.
    pub endpoint: Option<String>,
    pub usb: Option<UsbIds>,
    pub ble_company_id: Option<u16>,
    /// A hardware address the device reported or was seen with (BLE or
    /// MAC), lowercase; it links the same device across transports.
    pub mac: Option<String>,
    /// Whether the device's announce signature was checked against a key
    /// of the named vendor (`false` when not checked or not signed).
    pub verified: bool,
}

/// One observation from one source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub transport: Transport,
    /// Where on the transport: port path, BLE address, MQTT topic.
    pub address: String,
    pub identity: Identity,
    /// The raw announce bytes when the device sent a native announce.
    pub announce: Option<Vec<u8>>,
}

/// What a source sends to the merger.
// Observations dominate the traffic; boxing them would cost an allocation
// per event for no gain.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceEvent {
    Seen(Observation),
    Gone {
        transport: Transport,
        address: String,
    },
}

/// Stable device id: derived from vendor and serial number when known, else
/// from transport and address.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(pub String);

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A device as the merger knows it: its identity and every place it shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub id: DeviceId,
    pub identity: Identity,
    pub seen_on: Vec<(Transport, String)>,
}

/// What the merged stream emits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceEvent {
    Seen(Device),
    Updated(Device),
    Gone(Device),
}

/// Why a piece of input was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    BadFrame,
    Oversize,
    BadCrc,
    BadCbor,
    BadJson,
    BadSignature,
    UnknownVendor,
    Denied,
    Flood,
    QueueFull,
    /// A serial announce that does not echo the gateway's `Hello` nonce.
    BadNonce,
    /// An MQTT announce whose topic names another vendor or serial.
    TopicMismatch,
    /// An announce whose counter is below the last one accepted from its
    /// device (or the same counter on other content): a replay.
    Replay,
}

impl DropReason {
    /// The reason as printed in reports, lowercase (`bad_crc`, `replay`).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::BadFrame => "bad_frame",
            DropReason::Oversize => "oversize",
            DropReason::BadCrc => "bad_crc",
            DropReason::BadCbor => "bad_cbor",
            DropReason::BadJson => "bad_json",
            DropReason::BadSignature => "bad_signature",
            DropReason::UnknownVendor => "unknown_vendor",
            DropReason::Denied => "denied",
            DropReason::Flood => "flood",
            DropReason::QueueFull => "queue_full",
            DropReason::BadNonce => "bad_nonce",
            DropReason::TopicMismatch => "topic_mismatch",
            DropReason::Replay => "replay",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters of dropped input, per reason. Shared by a source and whoever
/// reports on it.
#[derive(Debug, Default)]
pub struct Drops {
    counts: std::sync::Mutex<std::collections::BTreeMap<DropReason, u64>>,
}

impl Drops {
    pub fn count(&self, reason: DropReason) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *c.entry(reason).or_insert(0) += 1;
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.get(&reason).copied().unwrap_or(0)
    }

    pub fn snapshot(&self) -> Vec<(DropReason, u64)> {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.iter().map(|(r, n)| (*r, *n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_count_per_reason() {
        let d = Drops::default();
        d.count(DropReason::BadCrc);
        d.count(DropReason::BadCrc);
        d.count(DropReason::Oversize);
        assert_eq!(d.get(DropReason::BadCrc), 2);
        assert_eq!(d.get(DropReason::Flood), 0);
        assert_eq!(d.snapshot().len(), 2);
    }
}

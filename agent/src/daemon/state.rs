//! The provisioning state machine: one [`Item`] per device, moving through
//! [`Stage`]s. Pure data and rules; [`super::store`] persists it.
//!
//! ```text
//! detected -> requested -> awaiting-approval -> approved -> building
//!     -> delivering -> validating -> running
//! awaiting-approval -> denied
//! requested | approved | building | delivering | validating -> failed
//! building | delivering | validating -> rolled-back   (an update failed)
//! running -> approved        (an update: no technician is asked again)
//! failed | rolled-back | denied -> requested          (the device shows again)
//! ```
//!
//! Every record carries a format version `v`; fields added later have
//! serde defaults, so records written by older daemons stay readable.

use serde::{Deserialize, Serialize};

/// Format of the records written by this code.
pub const RECORD_VERSION: u32 = 1;

/// Where a device's provisioning stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Seen, nothing asked yet.
    Detected,
    /// Asking the vendor for a plan.
    Requested,
    /// A verified plan waits for a technician.
    AwaitingApproval,
    /// Approved (by a technician, a policy, a pairing window, or an update
    /// of a plan approved before): to be built.
    Approved,
    /// Creating the candidate jail.
    Building,
    /// Pulling images and starting the app.
    Delivering,
    /// Running the plan's checks.
    Validating,
    /// The plan is in force.
    Running,
    /// A technician refused it.
    Denied,
    /// Could not be applied; nothing left behind.
    Failed,
    /// An update failed; the previous version is in force again.
    RolledBack,
}

impl Stage {
    /// The name shown to people and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Detected => "detected",
            Stage::Requested => "requested",
            Stage::AwaitingApproval => "awaiting-approval",
            Stage::Approved => "approved",
            Stage::Building => "building",
            Stage::Delivering => "delivering",
            Stage::Validating => "validating",
            Stage::Running => "running",
            Stage::Denied => "denied",
            Stage::Failed => "failed",
            Stage::RolledBack => "rolled-back",
        }
    }

    /// Whether work with side effects on the host may be half done here: a
    /// restart finds a candidate jail to remove.
    pub fn in_flight(self) -> bool {
        matches!(
            self,
            Stage::Building | Stage::Delivering | Stage::Validating
        )
    }

    /// Whether the move `self -> to` is allowed.
    pub fn can_go(self, to: Stage) -> bool {
        use Stage::*;
        matches!(
            (self, to),
            (Detected, Requested)
                | (Requested, AwaitingApproval)
                | (Requested, Approved)
                | (Requested, Failed)
                | (Requested, Requested)
                | (AwaitingApproval, Approved)
                | (AwaitingApproval, Denied)
                | (AwaitingApproval, Requested)
                | (Approved, Building)
                | (Approved, Failed)
                | (Building, Delivering)
                | (Delivering, Validating)
                | (Validating, Running)
                | (
                    Building | Delivering | Validating,
                    Failed | RolledBack | Approved
                )
                | (Running, Approved)
                | (Running, Requested)
                | (RolledBack, Approved)
                | (Failed | RolledBack | Denied, Requested)
        )
    }
}

/// What the device told us about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Vendor id.
    pub vendor: String,
    /// Model.
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// Firmware version.
    pub firmware: String,
    /// Transport it came on (`serial`, `mqtt`, `ble`).
    pub transport: String,
    /// Where on that transport (port path, topic, address).
    pub address: String,
    /// The announce bytes as received.
    #[serde(with = "hexbytes")]
    pub announce: Vec<u8>,
}

/// One device's provisioning, persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Record format.
    pub v: u32,
    /// Short id technicians type (`berth approve 3`).
    pub id: u64,
    /// The device.
    pub device: DeviceRecord,
    /// Where it stands.
    pub stage: Stage,
    /// The signed plan being applied or waiting for approval.
    #[serde(default, with = "opt_hexbytes")]
    pub candidate: Option<Vec<u8>>,
    /// Plan id and version of `candidate`.
    #[serde(default)]
    pub candidate_version: Option<(String, u64)>,
    /// Name of the jail built for `candidate` (recorded before it is
    /// created, so that a restart can remove it).
    #[serde(default)]
    pub candidate_jail: Option<String>,
    /// The signed plan in force.
    #[serde(default, with = "opt_hexbytes")]
    pub current: Option<Vec<u8>>,
    /// Plan id and version of `current`.
    #[serde(default)]
    pub current_version: Option<(String, u64)>,
    /// The jail running `current`.
    #[serde(default)]
    pub current_jail: Option<String>,
    /// The ETag of the plan last fetched.
    #[serde(default)]
    pub etag: Option<String>,
    /// The last error, shown by `berth devices`.
    #[serde(default)]
    pub error: Option<String>,
    /// Failed attempts since the last success (drives backoff).
    #[serde(default)]
    pub attempts: u32,
    /// Unix time of the last change.
    #[serde(default)]
    pub updated: u64,
}

impl Item {
    /// A device just seen.
    pub fn new(id: u64, device: DeviceRecord) -> Item {
        Item {
            v: RECORD_VERSION,
            id,
            device,
            stage: Stage::Detected,
            candidate: None,
            candidate_version: None,
            candidate_jail: None,
            current: None,
            current_version: None,
            current_jail: None,
            etag: None,
            error: None,
            attempts: 0,
            updated: now_secs(),
        }
    }

    /// The store key of a device: `vendor/serial`.
    pub fn key(&self) -> String {
        device_key(&self.device.vendor, &self.device.serial)
    }
}

/// The store key of a device.
pub fn device_key(vendor: &str, serial: &str) -> String {
    format!("{vendor}/{serial}")
}

/// A move the state machine does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request {id} cannot go from {from} to {to}")]
pub struct BadTransition {
    /// The item.
    pub id: u64,
    /// Its stage.
    pub from: &'static str,
    /// The refused stage.
    pub to: &'static str,
}

/// Checks and applies `item.stage -> to`.
pub fn transition(item: &mut Item, to: Stage) -> Result<(), BadTransition> {
    if !item.stage.can_go(to) {
        return Err(BadTransition {
            id: item.id,
            from: item.stage.name(),
            to: to.name(),
        });
    }
    item.stage = to;
    item.updated = now_secs();
    Ok(())
}

/// One audited decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Record format.
    pub v: u32,
    /// Unix time.
    pub time: u64,
    /// Who: `uid=0 pid=1234` for a technician on the local API,
    /// `policy:auto`, `pairing:<vendor>`, `update`, `berthd`.
    pub who: String,
    /// The request.
    pub item: u64,
    /// Plan id and version decided on, if any.
    pub plan: Option<(String, u64)>,
    /// What: `approve`, `deny`, `pair`, `reset`, `rollback`, ….
    pub decision: String,
    /// Free text (a denial's reason, an error).
    #[serde(default)]
    pub detail: String,
}

/// A report to a vendor that berthd owes: written in the same transaction
/// as the transition it reports on, removed once the vendor acknowledged
/// it (or refused it for good). A crash between the transition and the
/// report therefore cannot lose the report: the next start sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwedReport {
    /// Record format.
    pub v: u32,
    /// The vendor it goes to.
    pub vendor: String,
    /// The request it is about.
    pub item: u64,
    /// The report's canonical CBOR, exactly as it will be sent.
    #[serde(with = "hexbytes")]
    pub report: Vec<u8>,
    /// Unix time it was owed from.
    pub since: u64,
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

mod hexbytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::daemon::config::hex(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let t = String::deserialize(d)?;
        crate::daemon::config::decode_hex(&t).map_err(serde::de::Error::custom)
    }
}

mod opt_hexbytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(&crate::daemon::config::hex(b)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(t) => crate::daemon::config::decode_hex(&t)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn device(serial: &str) -> DeviceRecord {
        DeviceRecord {
            vendor: "acme".into(),
            model: "Meter 2".into(),
            serial: serial.into(),
            firmware: "1.0".into(),
            transport: "mqtt".into(),
            address: "berth/announce/acme/x".into(),
            announce: vec![1, 2, 3],
        }
    }

    #[test]
    fn the_happy_path_and_an_update_are_allowed() {
        let mut it = Item::new(1, device("s1"));
        for s in [
            Stage::Requested,
            Stage::AwaitingApproval,
            Stage::Approved,
            Stage::Building,
            Stage::Delivering,
            Stage::Validating,
            Stage::Running,
            Stage::Approved,
            Stage::Building,
            Stage::Delivering,
            Stage::Validating,
            Stage::RolledBack,
        ] {
            transition(&mut it, s).unwrap();
        }
        assert_eq!(it.stage, Stage::RolledBack);
    }

    #[test]
    fn shortcuts_are_refused() {
        let mut it = Item::new(4, device("s1"));
        let e = transition(&mut it, Stage::Building).unwrap_err();
        assert_eq!(
            e.to_string(),
            "request 4 cannot go from detected to building"
        );
        transition(&mut it, Stage::Requested).unwrap();
        transition(&mut it, Stage::AwaitingApproval).unwrap();
        // Nothing is built before approval, and a denial is final until the
        // device is requested again.
        assert!(transition(&mut it, Stage::Building).is_err());
        transition(&mut it, Stage::Denied).unwrap();
        assert!(transition(&mut it, Stage::Approved).is_err());
        assert!(!Stage::Running.can_go(Stage::Running));
        assert!(Stage::Validating.in_flight() && !Stage::Running.in_flight());
    }

    #[test]
    fn records_round_trip_and_old_ones_read() {
        let mut it = Item::new(2, device("s2"));
        it.candidate = Some(vec![0xd2, 0x84]);
        let json = serde_json::to_string(&it).unwrap();
        assert!(json.contains("\"candidate\":\"d284\""), "{json}");
        assert_eq!(serde_json::from_str::<Item>(&json).unwrap(), it);
        // A record without the fields added after format 1's first cut.
        let old = r#"{"v":1,"id":9,"stage":"awaiting-approval","device":{"vendor":"a","model":"m","serial":"s","firmware":"f","transport":"serial","address":"/dev/x","announce":"00"}}"#;
        let it: Item = serde_json::from_str(old).unwrap();
        assert_eq!(it.stage, Stage::AwaitingApproval);
        assert_eq!(it.current, None);
        assert_eq!(it.key(), "a/s");
    }
}

//! BLE detection through BlueZ's D-Bus API.
//!
//! [`Advert`] is what BlueZ tells about one device (`org.bluez.Device1`
//! properties); [`observe`] turns it into an observation, I/O free:
//! manufacturer data of company [`protocol::ble::COMPANY_ID`] carries a
//! native announce, decoded with `protocol`; other company ids and service
//! UUIDs map to vendors by rule. The D-Bus side lives in `bluez` (feature
//! `ble`; without it `stub` reports the source as not built). It talks to
//! BlueZ with `zbus` directly: the object manager's `GetManagedObjects`,
//! `InterfacesAdded`/`InterfacesRemoved` and `PropertiesChanged` on
//! `org.bluez.Device1` give everything btleplug would, plus device removal,
//! with one D-Bus library instead of two (btleplug brings libdbus).

use std::sync::Arc;
use std::time::Duration;

use crate::announce::KeyRing;
use crate::event::{DropReason, Identity, Observation, Transport};
use crate::rules::Rules;

#[cfg(feature = "ble")]
mod bluez;
#[cfg(feature = "ble")]
pub use bluez::run;
#[cfg(not(feature = "ble"))]
mod stub;
#[cfg(not(feature = "ble"))]
pub use stub::run;

/// How the BLE source runs.
#[derive(Clone, Debug)]
pub struct BleConfig {
    /// D-Bus address of the bus BlueZ is on; `None` for the system bus
    /// (which honours `DBUS_SYSTEM_BUS_ADDRESS`).
    pub bus_address: Option<String>,
    /// A device unseen this long is reported gone.
    pub gone_after: Duration,
    /// Wait between attempts while BlueZ or a powered adapter is missing.
    pub retry: Duration,
    /// Ask the adapter to scan (`StartDiscovery`).
    pub discover: bool,
    pub keys: KeyRing,
    pub rules: Arc<Rules>,
}

impl Default for BleConfig {
    fn default() -> Self {
        BleConfig {
            bus_address: None,
            gone_after: Duration::from_secs(30),
            retry: Duration::from_secs(5),
            discover: true,
            keys: KeyRing::default(),
            rules: Arc::new(Rules::default()),
        }
    }
}

/// Why the BLE source stopped.
#[derive(Debug, thiserror::Error)]
pub enum BleError {
    #[error("ble support was not built in (cargo feature `ble`)")]
    NotBuilt,
    #[error("d-bus at {address}: {reason}")]
    Bus { address: String, reason: String },
}

/// What BlueZ shows of one device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advert {
    pub address: String,
    pub name: Option<String>,
    pub manufacturer_data: Vec<(u16, Vec<u8>)>,
    pub service_uuids: Vec<String>,
    pub service_data: Vec<(String, Vec<u8>)>,
    pub rssi: Option<i16>,
}

/// Turns an advert into an observation: `Ok(None)` when there is nothing
/// to report (no address), `Err` with the reason when it is dropped.
pub fn observe(
    ad: &Advert,
    rules: &Rules,
    keys: &KeyRing,
) -> Result<Option<Observation>, DropReason> {
    if ad.address.is_empty() {
        return Ok(None);
    }
    let mut announce = None;
    let mut identity = Identity::default();
    if let Some((_, data)) = ad
        .manufacturer_data
        .iter()
        .find(|(c, _)| *c == protocol::ble::COMPANY_ID)
    {
        let a = protocol::ble::decode_manufacturer_data(data)
            .map_err(|e| crate::announce::drop_reason(&e))?;
        let checked = crate::announce::checked(&a, keys)?;
        identity = checked.identity;
        announce = Some(data.clone());
    }
    let companies: Vec<u16> = ad.manufacturer_data.iter().map(|(c, _)| *c).collect();
    let mut uuids: Vec<String> = ad
        .service_uuids
        .iter()
        .map(|u| u.to_ascii_lowercase())
        .collect();
    uuids.extend(ad.service_data.iter().map(|(u, _)| u.to_ascii_lowercase()));
    let rule_vendor = rules.admit(rules.match_ble(&companies, &uuids));
    match rule_vendor {
        Ok(v) => {
            if identity.vendor.is_none() {
                identity.vendor = v;
            }
        }
        Err(r) => return Err(r),
    }
    if identity.name.is_none() {
        identity.name = ad.name.clone();
    }
    identity.ble_company_id = companies
        .iter()
        .copied()
        .find(|c| *c != protocol::ble::COMPANY_ID)
        .or(companies.first().copied());
    identity.mac = Some(ad.address.to_ascii_lowercase());
    Ok(Some(Observation {
        transport: Transport::Ble,
        address: ad.address.clone(),
        identity,
        announce,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn announce_data() -> Vec<u8> {
        crate::announce::testing::signed("acme", "BLE-7", "2.0", None)
    }

    #[test]
    fn native_announce_in_manufacturer_data() {
        let ad = Advert {
            address: "C0:FF:EE:00:00:01".into(),
            name: Some("thermo".into()),
            manufacturer_data: vec![(protocol::ble::COMPANY_ID, announce_data())],
            ..Advert::default()
        };
        let o = observe(&ad, &Rules::default(), &KeyRing::default())
            .unwrap()
            .unwrap();
        assert_eq!(o.identity.vendor.as_deref(), Some("acme"));
        assert_eq!(o.identity.serial_number.as_deref(), Some("BLE-7"));
        assert_eq!(o.identity.name.as_deref(), Some("thermo"));
        assert_eq!(o.identity.mac.as_deref(), Some("c0:ff:ee:00:00:01"));
        assert!(o.announce.is_some());
    }

    #[test]
    fn broken_announce_is_dropped_with_reason() {
        let mut data = announce_data();
        data.truncate(data.len() - 3);
        let ad = Advert {
            address: "C0:FF:EE:00:00:01".into(),
            manufacturer_data: vec![(protocol::ble::COMPANY_ID, data)],
            ..Advert::default()
        };
        assert_eq!(
            observe(&ad, &Rules::default(), &KeyRing::default()),
            Err(DropReason::BadCbor)
        );
    }

    #[test]
    fn company_id_and_uuid_rules_map_vendors() {
        let rules = Rules::parse(
            "[[rule]]\nvendor = \"nordicish\"\nble = { company_id = 0x0059 }\n\n\
             [[rule]]\nvendor = \"svc\"\nble = { service_uuid = \"0000FEAA-0000-1000-8000-00805F9B34FB\" }\n",
            Path::new("r.toml"),
        )
        .unwrap();
        let ad = Advert {
            address: "AA:00:00:00:00:01".into(),
            manufacturer_data: vec![(0x0059, vec![1, 2, 3])],
            ..Advert::default()
        };
        let o = observe(&ad, &rules, &KeyRing::default()).unwrap().unwrap();
        assert_eq!(o.identity.vendor.as_deref(), Some("nordicish"));
        assert_eq!(o.identity.ble_company_id, Some(0x0059));
        let ad = Advert {
            address: "AA:00:00:00:00:02".into(),
            service_data: vec![("0000feaa-0000-1000-8000-00805f9b34fb".into(), vec![0])],
            ..Advert::default()
        };
        let o = observe(&ad, &rules, &KeyRing::default()).unwrap().unwrap();
        assert_eq!(o.identity.vendor.as_deref(), Some("svc"));
        let ad = Advert {
            address: "AA:00:00:00:00:03".into(),
            manufacturer_data: vec![(0x004c, vec![1])],
            ..Advert::default()
        };
        assert_eq!(
            observe(&ad, &rules, &KeyRing::default()),
            Err(DropReason::UnknownVendor)
        );
    }
}

//! The provisioning request: what a gateway sends to a vendor's
//! `POST /v1/provision` when one of the vendor's devices appears.
//!
//! It carries the device's announce exactly as received (the vendor checks
//! its signature against its own registry), the identity the gateway decoded
//! from it, the gateway's identity and capabilities, and the vendor's jails
//! already on this gateway, so the vendor can choose to reuse one.

use std::format;
use std::string::String;
use std::vec::Vec;

use minicbor::{Decode, Encode};

use super::{
    check_count, check_name, check_plan_id, from_field, invalid, CborMessage, Invalid, FORMAT,
};
use crate::announce::{self, Announce, MAX_ANNOUNCE};

/// Largest encoded request, in bytes.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Most existing jails one request may list.
pub const MAX_EXISTING_JAILS: usize = 64;

/// `POST /v1/provision` body.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct ProvisionRequest {
    /// Always [`FORMAT`].
    #[n(0)]
    pub format: u32,
    /// The device's announce, byte for byte as the gateway received it
    /// (canonical CBOR, see `docs/announce.md`).
    #[cbor(n(1), with = "minicbor::bytes")]
    pub announce: Vec<u8>,
    /// What the gateway decoded from `announce`; must agree with it.
    #[n(2)]
    pub device: DeviceIdentity,
    #[n(3)]
    pub gateway: GatewayIdentity,
    #[n(4)]
    pub capabilities: GatewayCapabilities,
    /// The vendor's jails already on this gateway.
    #[n(5)]
    pub jails: Vec<ExistingJail>,
}

/// The device as the gateway understood its announce.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct DeviceIdentity {
    #[n(0)]
    pub vendor: String,
    #[n(1)]
    pub model: String,
    #[n(2)]
    pub serial: String,
    #[n(3)]
    pub firmware: String,
}

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct GatewayIdentity {
    /// The gateway's id: `[A-Za-z0-9._-]`, 1–64 bytes.
    #[n(0)]
    pub id: String,
    /// The gateway's Ed25519 public key.
    #[cbor(n(1), with = "minicbor::bytes")]
    pub public_key: [u8; 32],
}

/// What the gateway can offer a jail.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct GatewayCapabilities {
    /// CPU architecture in OCI terms (`arm`, `arm64`, `amd64`, `386`, ...),
    /// with the variant after a dot where it matters (`arm.v7`).
    #[n(0)]
    pub arch: String,
    /// Memory available for new jails, in bytes.
    #[n(1)]
    pub memory_free: u64,
    /// Disk space available for images and volumes, in bytes.
    #[n(2)]
    pub disk_free: u64,
    #[n(3)]
    pub cgroup: CgroupLayout,
}

/// How the gateway's cgroup hierarchies are mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(index_only)]
pub enum CgroupLayout {
    #[n(0)]
    V1,
    #[n(1)]
    V2,
    /// v1 controllers with a cgroup2 mount beside them.
    #[n(2)]
    Hybrid,
}

/// One of the vendor's jails already on the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct ExistingJail {
    #[n(0)]
    pub name: String,
    /// The plan it was built from, and that plan's version.
    #[n(1)]
    pub plan_id: String,
    #[n(2)]
    pub version: u64,
}

impl DeviceIdentity {
    /// The identity an announce carries.
    pub fn of(a: &Announce<'_>) -> Self {
        DeviceIdentity {
            vendor: a.vendor.into(),
            model: a.model.into(),
            serial: a.serial.into(),
            firmware: a.firmware.into(),
        }
    }
}

impl ProvisionRequest {
    /// The request a gateway sends for an announce it received as `announce`
    /// (canonical CBOR, as the device sent it). Fails when the announce
    /// does not decode or the result breaks a rule (too many jails, say).
    pub fn new(
        announce: &[u8],
        gateway: GatewayIdentity,
        capabilities: GatewayCapabilities,
        jails: Vec<ExistingJail>,
    ) -> Result<Self, super::MessageError> {
        let what = Self::WHAT;
        let a = Announce::decode(announce).map_err(|e| super::MessageError::Invalid {
            what,
            source: invalid("announce", format!("is not a valid announce: {e}")),
        })?;
        let r = ProvisionRequest {
            format: FORMAT,
            announce: announce.to_vec(),
            device: DeviceIdentity::of(&a),
            gateway,
            capabilities,
            jails,
        };
        r.validate()
            .map_err(|source| super::MessageError::Invalid { what, source })?;
        Ok(r)
    }

    /// Decodes the announce the request carries (its signature unchecked).
    pub fn decode_announce(&self) -> Result<Announce<'_>, announce::DecodeError> {
        Announce::decode(&self.announce)
    }
}

impl CborMessage for ProvisionRequest {
    const WHAT: &'static str = "provisioning request";
    const MAX: usize = MAX_REQUEST;

    fn format(&self) -> u32 {
        self.format
    }

    fn validate(&self) -> Result<(), Invalid> {
        if self.format != FORMAT {
            return Err(invalid(
                "format",
                format!("is {}, must be {FORMAT}", self.format),
            ));
        }
        if self.announce.len() > MAX_ANNOUNCE {
            return Err(invalid(
                "announce",
                format!(
                    "is {} bytes long, the limit is {MAX_ANNOUNCE}",
                    self.announce.len()
                ),
            ));
        }
        let a = Announce::decode(&self.announce)
            .map_err(|e| invalid("announce", format!("is not a valid announce: {e}")))?;
        if DeviceIdentity::of(&a) != self.device {
            return Err(invalid("device", "does not match the announce"));
        }
        check_plan_id("gateway.id", &self.gateway.id)?;
        check_name("capabilities.arch", &self.capabilities.arch)?;
        check_count("jails", &self.jails, MAX_EXISTING_JAILS)?;
        for (i, j) in self.jails.iter().enumerate() {
            check_name(&format!("jails[{i}].name"), &j.name)?;
            check_plan_id(&format!("jails[{i}].plan_id"), &j.plan_id)?;
        }
        // The device identity is the announce's, so its rules already hold;
        // keep the check explicit for requests built by hand.
        announce::check_vendor(&self.device.vendor).map_err(|e| from_field("device.vendor", e))?;
        announce::check_serial(&self.device.serial).map_err(|e| from_field("device.serial", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::prelude::rust_2021::*;
    use std::{format, vec};

    use super::*;
    use crate::provision::MessageError;
    use crate::AnnounceBuilder;

    pub(crate) fn announce_bytes(seed: &[u8; 32]) -> Vec<u8> {
        let mut buf = [0u8; MAX_ANNOUNCE];
        let n = AnnounceBuilder::new(
            "acme",
            "Meter 2",
            "SN-1",
            "1.0.3",
            "https://p.acme.example",
            7,
        )
        .include_public_key(true)
        .encode_signed(seed, &mut buf)
        .unwrap();
        buf[..n].to_vec()
    }

    fn sample() -> ProvisionRequest {
        let announce = announce_bytes(&[1; 32]);
        let device = DeviceIdentity::of(&Announce::decode(&announce).unwrap());
        ProvisionRequest {
            format: FORMAT,
            announce,
            device,
            gateway: GatewayIdentity {
                id: "gw-17".into(),
                public_key: [9; 32],
            },
            capabilities: GatewayCapabilities {
                arch: "arm.v7".into(),
                memory_free: 512 << 20,
                disk_free: 4 << 30,
                cgroup: CgroupLayout::Hybrid,
            },
            jails: vec![ExistingJail {
                name: "acme".into(),
                plan_id: "p1".into(),
                version: 3,
            }],
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        let bytes = r.to_cbor().unwrap();
        assert_eq!(ProvisionRequest::from_cbor(&bytes).unwrap(), r);
        assert_eq!(r.decode_announce().unwrap().serial, "SN-1");
    }

    #[test]
    fn new_fills_in_the_identity() {
        let s = sample();
        let r = ProvisionRequest::new(
            &s.announce,
            s.gateway.clone(),
            s.capabilities.clone(),
            s.jails.clone(),
        )
        .unwrap();
        assert_eq!(r, s);
        let e = ProvisionRequest::new(b"\xa0", s.gateway.clone(), s.capabilities.clone(), vec![])
            .unwrap_err();
        assert!(e.to_string().contains("not a valid announce"), "{e}");
    }

    #[test]
    fn identity_must_match_announce() {
        let mut r = sample();
        r.device.serial = "SN-2".into();
        let e = r.to_cbor().unwrap_err();
        assert!(e.to_string().contains("`device` does not match"), "{e}");
    }

    #[test]
    fn refuses_trailing_bytes_and_other_formats() {
        let mut bytes = sample().to_cbor().unwrap();
        bytes.push(0);
        assert!(matches!(
            ProvisionRequest::from_cbor(&bytes),
            Err(MessageError::NonCanonical { .. })
        ));
        let mut r = sample();
        r.format = 2;
        let bytes = super::super::encode_unchecked(&r);
        assert!(matches!(
            ProvisionRequest::from_cbor(&bytes),
            Err(MessageError::UnsupportedFormat { format: 2, .. })
        ));
    }

    #[test]
    fn refuses_oversize_before_parsing() {
        let bytes = vec![0u8; MAX_REQUEST + 1];
        assert!(matches!(
            ProvisionRequest::from_cbor(&bytes),
            Err(MessageError::TooLarge { .. })
        ));
    }

    #[test]
    fn bounds_jails() {
        let mut r = sample();
        r.jails = (0..=MAX_EXISTING_JAILS)
            .map(|i| ExistingJail {
                name: format!("j{i}"),
                plan_id: "p".into(),
                version: 1,
            })
            .collect();
        assert!(r.to_cbor().is_err());
    }
}

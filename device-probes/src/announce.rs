//! Native announces to identities: decoding through `protocol`, optional
//! signature checks against vendor keys the caller knows, the replay check
//! of the announce counter ([`crate::replay`]), and the mapping of an
//! announce's fields onto [`Identity`].

use std::collections::HashMap;
use std::sync::Arc;

use protocol::announce::{Announce, DecodeError};

use crate::event::{DropReason, Identity};
use crate::replay::ReplayGuard;

/// How announces are checked: vendor verifying keys (Ed25519 public keys)
/// the gateway already knows, and the replay guard its sources share.
/// An announce of a vendor with a key here must verify, or it is dropped;
/// announces of other vendors pass unverified (`verified = false`): the
/// vendor checks them when asked. With a guard, an announce whose counter
/// is older than its device's last is dropped as [`DropReason::Replay`];
/// the signature is checked first, so where the vendor's key is known a
/// forged announce cannot move a device's counter.
#[derive(Clone, Debug, Default)]
pub struct KeyRing {
    keys: HashMap<String, ed25519_dalek::VerifyingKey>,
    replay: Option<Arc<ReplayGuard>>,
}

/// Why a vendor key was refused.
#[derive(Debug, thiserror::Error)]
#[error("bad verifying key for vendor {vendor}: {reason}")]
pub struct KeyError {
    pub vendor: String,
    pub reason: String,
}

impl KeyRing {
    /// Adds a 32-byte Ed25519 public key for `vendor`.
    pub fn add(&mut self, vendor: &str, key: &[u8; 32]) -> Result<(), KeyError> {
        let k = ed25519_dalek::VerifyingKey::from_bytes(key).map_err(|e| KeyError {
            vendor: vendor.to_owned(),
            reason: e.to_string(),
        })?;
        self.keys.insert(vendor.to_owned(), k);
        Ok(())
    }

    /// Checks announce counters against `guard` (share one guard between
    /// every source of a gateway).
    pub fn with_replay(mut self, guard: Arc<ReplayGuard>) -> KeyRing {
        self.replay = Some(guard);
        self
    }

    /// The replay guard, if any.
    pub fn replay(&self) -> Option<&Arc<ReplayGuard>> {
        self.replay.as_ref()
    }

    /// Checks the announce against its vendor's key; `Ok(true)` when it
    /// verified, `Ok(false)` when no key is known.
    pub fn check(&self, a: &Announce<'_>) -> Result<bool, DropReason> {
        match self.keys.get(a.vendor) {
            None => Ok(false),
            Some(k) => protocol::announce::verify(a, k)
                .map(|()| true)
                .map_err(|_| DropReason::BadSignature),
        }
    }
}

/// The identity an announce gives.
pub fn identity(a: &Announce<'_>, verified: bool) -> Identity {
    Identity {
        vendor: Some(a.vendor.to_owned()),
        model: Some(a.model.to_owned()),
        serial_number: Some(a.serial.to_owned()),
        firmware: Some(a.firmware.to_owned()),
        capabilities: a.capabilities.iter().map(|c| (*c).to_owned()).collect(),
        endpoint: Some(a.endpoint.to_owned()),
        verified,
        ..Identity::default()
    }
}

/// Maps a decode error onto the drop reason it is counted under.
pub fn drop_reason(e: &DecodeError) -> DropReason {
    match e {
        DecodeError::TooLarge { .. } => DropReason::Oversize,
        DecodeError::Json(_) => DropReason::BadJson,
        DecodeError::TopicMismatch { .. } => DropReason::TopicMismatch,
        _ => DropReason::BadCbor,
    }
}

/// A decoded, checked announce: its identity, its raw bytes, and the
/// challenge it answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    pub identity: Identity,
    pub challenge: Option<u64>,
    pub counter: u64,
}

/// Decodes a CBOR announce and checks it against `keys`.
pub fn decode_cbor(bytes: &[u8], keys: &KeyRing) -> Result<Checked, DropReason> {
    let a = Announce::decode(bytes).map_err(|e| drop_reason(&e))?;
    checked(&a, keys)
}

/// Checks a decoded announce against `keys`: signature, then counter.
pub fn checked(a: &Announce<'_>, keys: &KeyRing) -> Result<Checked, DropReason> {
    let verified = keys.check(a)?;
    if let Some(g) = &keys.replay {
        g.admit(a.vendor, a.serial, a.counter, &a.signature)?;
    }
    Ok(Checked {
        identity: identity(a, verified),
        challenge: a.challenge,
        counter: a.counter,
    })
}

/// Decodes an MQTT announce payload (CBOR, or JSON when it starts with
/// `{`) that came on `topic`; the topic must name the announce's vendor and
/// serial.
pub fn decode_payload(topic: &str, bytes: &[u8], keys: &KeyRing) -> Result<Checked, DropReason> {
    let owned = protocol::mqtt::decode_payload(topic, bytes).map_err(|e| drop_reason(&e))?;
    let a = owned.as_announce().map_err(|_| {
        if protocol::mqtt::is_json(bytes) {
            DropReason::BadJson
        } else {
            DropReason::BadCbor
        }
    })?;
    checked(&a, keys)
}

#[cfg(test)]
pub(crate) mod testing {
    //! Signed announces for tests.
    use protocol::announce::AnnounceBuilder;

    pub const SEED: [u8; 32] = [7; 32];

    /// A signed canonical announce of `vendor`/`serial`, counter 1.
    pub fn signed(vendor: &str, serial: &str, firmware: &str, challenge: Option<u64>) -> Vec<u8> {
        signed_n(vendor, serial, firmware, challenge, 1)
    }

    /// A signed canonical announce with counter `counter`.
    pub fn signed_n(
        vendor: &str,
        serial: &str,
        firmware: &str,
        challenge: Option<u64>,
        counter: u64,
    ) -> Vec<u8> {
        let mut b = AnnounceBuilder::new(
            vendor,
            "T-1000",
            serial,
            firmware,
            "https://provision.example/v1",
            counter,
        )
        .capabilities(&["temp", "serial"]);
        if let Some(c) = challenge {
            b = b.challenge(c);
        }
        let mut out = vec![0u8; protocol::announce::MAX_ANNOUNCE + 32];
        let n = b.encode_signed(&SEED, &mut out).unwrap();
        out.truncate(n);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn announce_maps_onto_identity() {
        let bytes = signed("acme", "SN-1", "1.0.3", Some(9));
        let c = decode_cbor(&bytes, &KeyRing::default()).unwrap();
        assert_eq!(c.identity.vendor.as_deref(), Some("acme"));
        assert_eq!(c.identity.serial_number.as_deref(), Some("SN-1"));
        assert_eq!(c.identity.firmware.as_deref(), Some("1.0.3"));
        assert_eq!(c.identity.capabilities, vec!["temp", "serial"]);
        assert_eq!(c.challenge, Some(9));
        assert!(!c.identity.verified);
    }

    #[test]
    fn known_vendor_key_verifies_or_drops() {
        let bytes = signed("acme", "SN-1", "1.0.3", None);
        let mut keys = KeyRing::default();
        keys.add("acme", &protocol::announce::public_key(&SEED))
            .unwrap();
        assert!(decode_cbor(&bytes, &keys).unwrap().identity.verified);
        let mut other = KeyRing::default();
        other
            .add("acme", &protocol::announce::public_key(&[9; 32]))
            .unwrap();
        assert_eq!(decode_cbor(&bytes, &other), Err(DropReason::BadSignature));
    }

    #[test]
    fn replayed_counter_is_dropped_after_the_signature_check() {
        let guard = Arc::new(ReplayGuard::in_memory());
        let mut keys = KeyRing::default().with_replay(guard.clone());
        keys.add("acme", &protocol::announce::public_key(&SEED))
            .unwrap();
        let a5 = signed_n("acme", "SN-1", "1.0", None, 5);
        let a4 = signed_n("acme", "SN-1", "0.9", None, 4);
        assert_eq!(decode_cbor(&a5, &keys).unwrap().counter, 5);
        // The same announce again (a retained message, a BLE repeat).
        assert!(decode_cbor(&a5, &keys).is_ok());
        assert_eq!(decode_cbor(&a4, &keys), Err(DropReason::Replay));
        // A forgery with a huge counter fails its signature and does not
        // move the device's counter.
        let mut forged = signed_n("acme", "SN-1", "6.6", None, u64::MAX);
        let n = forged.len();
        forged[n - 1] ^= 1;
        assert_eq!(decode_cbor(&forged, &keys), Err(DropReason::BadSignature));
        assert_eq!(guard.last("acme", "SN-1"), Some(5));
        assert!(decode_cbor(&signed_n("acme", "SN-1", "1.1", None, 6), &keys).is_ok());
    }

    #[test]
    fn garbage_is_a_counted_reason() {
        assert_eq!(
            decode_cbor(&[0xff, 0x00], &KeyRing::default()),
            Err(DropReason::BadCbor)
        );
        assert_eq!(
            decode_cbor(&vec![0u8; 100_000], &KeyRing::default()),
            Err(DropReason::Oversize)
        );
        assert_eq!(
            decode_payload(
                "berth/announce/acme/1",
                b"{\"vendor\": 3",
                &KeyRing::default()
            ),
            Err(DropReason::BadJson)
        );
        let cbor = signed("acme", "SN-1", "1.0.3", None);
        assert!(decode_payload("berth/announce/acme/SN-1", &cbor, &KeyRing::default()).is_ok());
        assert_eq!(
            decode_payload("berth/announce/acme/SN-2", &cbor, &KeyRing::default()),
            Err(DropReason::TopicMismatch)
        );
    }
}

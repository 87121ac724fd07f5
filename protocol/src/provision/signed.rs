//! Signed plans: a [`Plan`] as the payload of a COSE_Sign1 (RFC 9052 §4.2)
//! signed with the vendor's Ed25519 key.
//!
//! The protected header carries exactly: `alg` = EdDSA (-8), `content type`
//! = [`PLAN_CONTENT_TYPE`], and `kid` = the vendor's key id. The external
//! additional data is empty. A verifier refuses anything else: another
//! algorithm (also one only in the unprotected header), a missing or other
//! content type (so no other COSE document signed with the same key passes
//! for a plan), critical headers, a detached payload, a signature that does
//! not verify strictly (`verify_strict`: no malleable `S`, no small-order
//! keys), a payload that is not a valid canonical plan, or a plan of another
//! vendor. Input is size-checked before it is parsed.
//!
//! Signatures prove where a plan came from, not that it is current: a
//! gateway remembers the version it runs per plan id and refuses lower ones
//! ([`PlanVersionGuard`]), so a replayed old plan cannot roll it back.

use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use coset::{
    iana, CborSerializable, ContentType, CoseSign1, CoseSign1Builder, HeaderBuilder,
    TaggedCborSerializable,
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::plan::{Plan, MAX_PLAN};
use super::{CborMessage, MessageError};

/// The content type in a signed plan's protected header.
pub const PLAN_CONTENT_TYPE: &str = "application/vnd.berth.plan+cbor; format=1";
/// Largest signed plan accepted, in bytes: the plan plus room for the COSE
/// structure, the headers and the signature.
pub const MAX_SIGNED_PLAN: usize = MAX_PLAN + 512;
/// Longest key id, in bytes.
pub const MAX_KID: usize = 64;

/// Why a signed plan was refused (or could not be made).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("signed plan of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("signed plan is not a valid COSE_Sign1: {0}")]
    Malformed(String),
    #[error("signed plan has no payload (detached payloads are not accepted)")]
    Detached,
    #[error(
        "signed plan uses algorithm {found}, only EdDSA (-8) in the protected header is accepted"
    )]
    Algorithm { found: String },
    #[error("signed plan has content type {found}, expected `{PLAN_CONTENT_TYPE}`")]
    ContentType { found: String },
    #[error("signed plan marks headers critical; none are understood")]
    Critical,
    #[error("signed plan key id of {len} bytes exceeds the limit of {MAX_KID}")]
    KeyId { len: usize },
    #[error("signed plan signature does not verify under the vendor's key")]
    BadSignature,
    #[error("signed plan payload is not a valid plan")]
    Payload(#[source] MessageError),
    #[error("plan is from vendor `{found}`, expected `{expected}`")]
    WrongVendor { expected: String, found: String },
    #[error("plan `{found}` is not plan `{expected}`")]
    OtherPlan { expected: String, found: String },
    #[error("plan `{plan_id}` version {version} is older than version {current} already accepted")]
    Replayed {
        plan_id: String,
        version: u64,
        current: u64,
    },
}

/// A plan whose signature was checked, with the bytes it came in (what a
/// gateway persists and can re-verify after a restart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedPlan {
    pub plan: Plan,
    /// The key id from the protected header.
    pub kid: Vec<u8>,
    /// The COSE_Sign1 bytes as received.
    pub bytes: Vec<u8>,
}

impl SignedPlan {
    /// Encodes `plan` and signs it as a tagged COSE_Sign1 with `key`,
    /// naming the key `kid` (see [`key_id`]). Fails when the plan breaks a
    /// rule (the same rules [`verify_plan`] applies) or `kid` is too long.
    pub fn sign(plan: &Plan, key: &SigningKey, kid: &[u8]) -> Result<Vec<u8>, PlanError> {
        if kid.len() > MAX_KID {
            return Err(PlanError::KeyId { len: kid.len() });
        }
        let payload = plan.to_cbor().map_err(PlanError::Payload)?;
        let protected = HeaderBuilder::new()
            .algorithm(iana::Algorithm::EdDSA)
            .content_type(PLAN_CONTENT_TYPE.to_string())
            .key_id(kid.to_vec())
            .build();
        let sign1 = CoseSign1Builder::new()
            .protected(protected)
            .payload(payload)
            .create_signature(b"", |tbs| key.sign(tbs).to_bytes().to_vec())
            .build();
        sign1
            .to_tagged_vec()
            .map_err(|e| PlanError::Malformed(e.to_string()))
    }

    /// [`verify_plan`], keeping the bytes and key id.
    pub fn verify(
        bytes: &[u8],
        key: &VerifyingKey,
        expected_vendor: &str,
    ) -> Result<SignedPlan, PlanError> {
        let sign1 = parse(bytes)?;
        let kid = sign1.protected.header.key_id.clone();
        let plan = verify_parsed(&sign1, key, expected_vendor)?;
        Ok(SignedPlan {
            plan,
            kid,
            bytes: bytes.to_vec(),
        })
    }
}

/// Checks a signed plan against the vendor's key and returns the plan.
/// `expected_vendor` is the vendor the gateway asked (the announce's
/// vendor); a plan naming another vendor is refused even when the signature
/// holds.
pub fn verify_plan(
    bytes: &[u8],
    key: &VerifyingKey,
    expected_vendor: &str,
) -> Result<Plan, PlanError> {
    let sign1 = parse(bytes)?;
    verify_parsed(&sign1, key, expected_vendor)
}

/// The key id of a signed plan, before verification: lets a gateway that
/// trusts several keys of one vendor (during a rotation) pick the one to
/// verify with. Nothing in the result is authenticated.
pub fn peek_kid(bytes: &[u8]) -> Result<Vec<u8>, PlanError> {
    Ok(parse(bytes)?.protected.header.key_id)
}

/// The key id Berth's vendor server puts in its plans: the first 8 bytes of
/// the Ed25519 public key. Any id up to [`MAX_KID`] bytes is valid.
pub fn key_id(key: &VerifyingKey) -> Vec<u8> {
    key.as_bytes()[..8].to_vec()
}

fn parse(bytes: &[u8]) -> Result<CoseSign1, PlanError> {
    if bytes.len() > MAX_SIGNED_PLAN {
        return Err(PlanError::TooLarge {
            len: bytes.len(),
            max: MAX_SIGNED_PLAN,
        });
    }
    // Tag 18 is optional: the media type already says COSE_Sign1.
    let sign1 = if bytes.first() == Some(&0xd2) {
        CoseSign1::from_tagged_slice(bytes)
    } else {
        CoseSign1::from_slice(bytes)
    }
    .map_err(|e| PlanError::Malformed(e.to_string()))?;
    let h = &sign1.protected.header;
    let eddsa = coset::Algorithm::Assigned(iana::Algorithm::EdDSA);
    if h.alg.as_ref() != Some(&eddsa) {
        return Err(PlanError::Algorithm {
            found: h.alg.as_ref().map_or("none".into(), |a| format!("{a:?}")),
        });
    }
    if let Some(a) = &sign1.unprotected.alg {
        if *a != eddsa {
            return Err(PlanError::Algorithm {
                found: format!("{a:?} (unprotected)"),
            });
        }
    }
    match &h.content_type {
        Some(ContentType::Text(t)) if t == PLAN_CONTENT_TYPE => {}
        other => {
            return Err(PlanError::ContentType {
                found: other.as_ref().map_or("none".into(), |c| format!("{c:?}")),
            })
        }
    }
    if !h.crit.is_empty() || !sign1.unprotected.crit.is_empty() {
        return Err(PlanError::Critical);
    }
    if h.key_id.len() > MAX_KID {
        return Err(PlanError::KeyId {
            len: h.key_id.len(),
        });
    }
    if sign1.payload.is_none() {
        return Err(PlanError::Detached);
    }
    Ok(sign1)
}

fn verify_parsed(
    sign1: &CoseSign1,
    key: &VerifyingKey,
    expected_vendor: &str,
) -> Result<Plan, PlanError> {
    sign1.verify_signature(b"", |sig, tbs| {
        let sig = Signature::from_slice(sig).map_err(|_| PlanError::BadSignature)?;
        key.verify_strict(tbs, &sig)
            .map_err(|_| PlanError::BadSignature)
    })?;
    let payload = sign1.payload.as_deref().ok_or(PlanError::Detached)?;
    let plan = Plan::from_cbor(payload).map_err(PlanError::Payload)?;
    if plan.vendor != expected_vendor {
        return Err(PlanError::WrongVendor {
            expected: expected_vendor.into(),
            found: plan.vendor,
        });
    }
    Ok(plan)
}

/// Whether a verified plan moves a gateway forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// A higher version: converge to it.
    Newer,
    /// The version already in force: nothing to do.
    Same,
}

/// The version a gateway runs for one plan id; refuses replayed older
/// versions. Persist `(plan_id, version)` with the plan and rebuild the
/// guard from it after a restart.
///
/// Version numbers are the vendor's promise: one version number names one
/// plan. A plan arriving with the current version is [`Freshness::Same`]
/// whatever its content; gateways compare the signed bytes if they care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanVersionGuard {
    plan_id: String,
    version: u64,
}

impl PlanVersionGuard {
    pub fn new(plan_id: impl Into<String>, version: u64) -> Self {
        PlanVersionGuard {
            plan_id: plan_id.into(),
            version,
        }
    }

    /// The guard of a gateway now running `plan`.
    pub fn of(plan: &Plan) -> Self {
        Self::new(plan.plan_id.clone(), plan.version)
    }

    pub fn plan_id(&self) -> &str {
        &self.plan_id
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Compares `plan` with the version in force, without changing it.
    pub fn check(&self, plan: &Plan) -> Result<Freshness, PlanError> {
        if plan.plan_id != self.plan_id {
            return Err(PlanError::OtherPlan {
                expected: self.plan_id.clone(),
                found: plan.plan_id.clone(),
            });
        }
        match plan.version.cmp(&self.version) {
            core::cmp::Ordering::Greater => Ok(Freshness::Newer),
            core::cmp::Ordering::Equal => Ok(Freshness::Same),
            core::cmp::Ordering::Less => Err(PlanError::Replayed {
                plan_id: plan.plan_id.clone(),
                version: plan.version,
                current: self.version,
            }),
        }
    }

    /// [`check`](Self::check), then records `plan`'s version as the one in
    /// force. Call it once the plan has been applied (or at least
    /// committed to), not merely received.
    pub fn advance(&mut self, plan: &Plan) -> Result<Freshness, PlanError> {
        let f = self.check(plan)?;
        self.version = plan.version;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use std::prelude::rust_2021::*;
    use std::{format, vec};

    use super::*;
    use crate::provision::plan::tests::sample;

    fn vendor_key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn signed() -> Vec<u8> {
        let k = vendor_key();
        SignedPlan::sign(&sample(), &k, &key_id(&k.verifying_key())).unwrap()
    }

    /// Re-signs a modified COSE structure with the vendor key.
    fn resign(sign1: CoseSign1Builder) -> Vec<u8> {
        let k = vendor_key();
        sign1
            .create_signature(b"", |tbs| k.sign(tbs).to_bytes().to_vec())
            .build()
            .to_tagged_vec()
            .unwrap()
    }

    #[test]
    fn round_trip() {
        let k = vendor_key();
        let bytes = signed();
        assert_eq!(bytes[0], 0xd2, "tagged COSE_Sign1");
        let plan = verify_plan(&bytes, &k.verifying_key(), "acme").unwrap();
        assert_eq!(plan, sample());
        let s = SignedPlan::verify(&bytes, &k.verifying_key(), "acme").unwrap();
        assert_eq!(s.kid, key_id(&k.verifying_key()));
        assert_eq!(peek_kid(&bytes).unwrap(), s.kid);
        // The untagged form verifies too.
        let untagged = CoseSign1::from_tagged_slice(&bytes)
            .unwrap()
            .to_vec()
            .unwrap();
        assert_eq!(
            verify_plan(&untagged, &k.verifying_key(), "acme").unwrap(),
            sample()
        );
    }

    #[test]
    fn refuses_other_key() {
        let other = SigningKey::from_bytes(&[8; 32]);
        let e = verify_plan(&signed(), &other.verifying_key(), "acme").unwrap_err();
        assert!(matches!(e, PlanError::BadSignature), "{e}");
    }

    #[test]
    fn refuses_other_vendors_plan() {
        // Another vendor signs a plan with its own key; the gateway expects
        // acme: wrong key first, and wrong vendor even with the right key.
        let mut p = sample();
        p.vendor = "globex".into();
        let k = vendor_key();
        let bytes = SignedPlan::sign(&p, &k, b"g").unwrap();
        let e = verify_plan(&bytes, &k.verifying_key(), "acme").unwrap_err();
        assert!(matches!(e, PlanError::WrongVendor { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "plan is from vendor `globex`, expected `acme`"
        );
    }

    #[test]
    fn refuses_forged_signature() {
        let mut sign1 = CoseSign1::from_tagged_slice(&signed()).unwrap();
        sign1.signature = vec![0x55; 64];
        let e = verify_plan(
            &sign1.clone().to_tagged_vec().unwrap(),
            &vendor_key().verifying_key(),
            "acme",
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::BadSignature), "{e}");
        sign1.signature = vec![0x55; 63];
        let e = verify_plan(
            &sign1.to_tagged_vec().unwrap(),
            &vendor_key().verifying_key(),
            "acme",
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::BadSignature), "{e}");
    }

    #[test]
    fn refuses_tampered_payload() {
        let mut sign1 = CoseSign1::from_tagged_slice(&signed()).unwrap();
        let mut p = sample();
        p.jail.resources.memory *= 4;
        sign1.payload = Some(p.to_cbor().unwrap());
        let e = verify_plan(
            &sign1.to_tagged_vec().unwrap(),
            &vendor_key().verifying_key(),
            "acme",
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::BadSignature), "{e}");
        // Flip bytes all over the signed message (every one in the headers
        // and the signature, every 7th in the payload): each is refused.
        let bytes = signed();
        let n = bytes.len();
        for i in (0..n).filter(|i| *i < 64 || *i >= n - 70 || i % 7 == 0) {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(
                verify_plan(&b, &vendor_key().verifying_key(), "acme").is_err(),
                "byte {i}"
            );
        }
    }

    #[test]
    fn refuses_tampered_protected_header() {
        let mut sign1 = CoseSign1::from_tagged_slice(&signed()).unwrap();
        sign1.protected.original_data = None;
        sign1.protected.header.key_id = b"other".to_vec();
        let e = verify_plan(
            &sign1.to_tagged_vec().unwrap(),
            &vendor_key().verifying_key(),
            "acme",
        )
        .unwrap_err();
        assert!(matches!(e, PlanError::BadSignature), "{e}");
    }

    #[test]
    fn refuses_wrong_alg() {
        let payload = sample().to_cbor().unwrap();
        let es256 = HeaderBuilder::new()
            .algorithm(iana::Algorithm::ES256)
            .content_type(PLAN_CONTENT_TYPE.into())
            .build();
        let b = resign(
            CoseSign1Builder::new()
                .protected(es256)
                .payload(payload.clone()),
        );
        let e = verify_plan(&b, &vendor_key().verifying_key(), "acme").unwrap_err();
        assert!(matches!(e, PlanError::Algorithm { .. }), "{e}");
        // alg only in the unprotected header does not count.
        let ct = HeaderBuilder::new()
            .content_type(PLAN_CONTENT_TYPE.into())
            .build();
        let unprot = HeaderBuilder::new()
            .algorithm(iana::Algorithm::EdDSA)
            .build();
        let b = resign(
            CoseSign1Builder::new()
                .protected(ct)
                .unprotected(unprot)
                .payload(payload.clone()),
        );
        let e = verify_plan(&b, &vendor_key().verifying_key(), "acme").unwrap_err();
        assert!(matches!(e, PlanError::Algorithm { .. }), "{e}");
        // A conflicting unprotected alg is refused as well.
        let prot = HeaderBuilder::new()
            .algorithm(iana::Algorithm::EdDSA)
            .content_type(PLAN_CONTENT_TYPE.into())
            .build();
        let unprot = HeaderBuilder::new()
            .algorithm(iana::Algorithm::ES256)
            .build();
        let b = resign(
            CoseSign1Builder::new()
                .protected(prot)
                .unprotected(unprot)
                .payload(payload),
        );
        let e = verify_plan(&b, &vendor_key().verifying_key(), "acme").unwrap_err();
        assert!(matches!(e, PlanError::Algorithm { .. }), "{e}");
    }

    #[test]
    fn refuses_other_content_crit_and_detached() {
        let payload = sample().to_cbor().unwrap();
        let eddsa = || HeaderBuilder::new().algorithm(iana::Algorithm::EdDSA);
        let b = resign(
            CoseSign1Builder::new()
                .protected(eddsa().build())
                .payload(payload.clone()),
        );
        let e = verify_plan(&b, &vendor_key().verifying_key(), "acme").unwrap_err();
        assert!(matches!(e, PlanError::ContentType { .. }), "{e}");
        let b = resign(
            CoseSign1Builder::new()
                .protected(eddsa().content_type("application/cwt".into()).build())
                .payload(payload.clone()),
        );
        let e = verify_plan(&b, &vendor_key().verifying_key(), "acme").unwrap_err();
        assert!(matches!(e, PlanError::ContentType { .. }), "{e}");
        let b = resign(
            CoseSign1Builder::new()
                .protected(
                    eddsa()
                        .content_type(PLAN_CONTENT_TYPE.into())
                        .add_critical(iana::HeaderParameter::Kid)
                        .build(),
                )
                .payload(payload.clone()),
        );
        let e = verify_plan(&b, &vendor_key().verifying_key(), "acme").unwrap_err();
        assert!(matches!(e, PlanError::Critical), "{e}");
        let k = vendor_key();
        let b = CoseSign1Builder::new()
            .protected(eddsa().content_type(PLAN_CONTENT_TYPE.into()).build())
            .create_detached_signature(&payload, b"", |tbs| k.sign(tbs).to_bytes().to_vec())
            .build()
            .to_tagged_vec()
            .unwrap();
        let e = verify_plan(&b, &k.verifying_key(), "acme").unwrap_err();
        assert!(matches!(e, PlanError::Detached), "{e}");
    }

    #[test]
    fn refuses_a_signed_invalid_plan() {
        // Correctly signed, but the payload breaks a rule (a tagged image):
        // the vendor's signature does not make a bad plan acceptable.
        let mut p = sample();
        p.apps[0].image = crate::provision::ImageRef::parse(&format!(
            "r.example/a@{}",
            crate::provision::plan::tests::DIGEST
        ))
        .unwrap();
        let mut payload = p.to_cbor().unwrap();
        let at = payload.windows(2).position(|w| w == b"@s").unwrap();
        payload[at] = b':';
        let b = resign(
            CoseSign1Builder::new()
                .protected(
                    HeaderBuilder::new()
                        .algorithm(iana::Algorithm::EdDSA)
                        .content_type(PLAN_CONTENT_TYPE.into())
                        .build(),
                )
                .payload(payload),
        );
        let e = verify_plan(&b, &vendor_key().verifying_key(), "acme").unwrap_err();
        assert!(matches!(e, PlanError::Payload(_)), "{e}");
    }

    #[test]
    fn refuses_malformed_and_oversize() {
        let key = vendor_key().verifying_key();
        for b in [
            &b""[..],
            b"\xd2",
            b"\x84\x40\xa0\xf6",
            b"\xd2\x83\x40\xa0\xf6",
            b"garbage",
        ] {
            let e = verify_plan(b, &key, "acme").unwrap_err();
            assert!(matches!(e, PlanError::Malformed(_)), "{b:?}: {e}");
        }
        let mut b = signed();
        b.push(0);
        assert!(matches!(
            verify_plan(&b, &key, "acme"),
            Err(PlanError::Malformed(_))
        ));
        let big = vec![0u8; MAX_SIGNED_PLAN + 1];
        assert!(matches!(
            verify_plan(&big, &key, "acme"),
            Err(PlanError::TooLarge { .. })
        ));
        assert!(matches!(
            SignedPlan::sign(&sample(), &vendor_key(), &[0; MAX_KID + 1]),
            Err(PlanError::KeyId { .. })
        ));
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// The worked example in docs/provisioning.md §8 is what this code
    /// produces.
    #[test]
    fn doc_example_is_true() {
        let doc = include_str!("../../../docs/provisioning.md");
        let k = vendor_key();
        let bytes = SignedPlan::sign(&sample(), &k, &key_id(&k.verifying_key())).unwrap();
        let sign1 = CoseSign1::from_tagged_slice(&bytes).unwrap();
        let protected = sign1.protected.original_data.unwrap();
        let e = crate::provision::ErrorBody::new(403, "unknown device");
        let mut want = vec![
            format!("vendor public key:  {}", hex(k.verifying_key().as_bytes())),
            format!("protected header:   {}", hex(&protected)),
            format!("error body:         {}", hex(&e.to_cbor().unwrap())),
            format!("signed plan starts: {}", hex(&bytes[..8])),
            format!("signature:          {}", hex(&sign1.signature)),
        ];
        // The whole signed plan, 32 bytes a line.
        want.extend(bytes.chunks(32).map(hex));
        let missing: Vec<_> = want.iter().filter(|l| !doc.contains(l.as_str())).collect();
        assert!(
            missing.is_empty(),
            "docs/provisioning.md lacks:\n{}",
            want.join("\n")
        );
    }

    #[test]
    fn version_guard() {
        let mut p = sample();
        let mut g = PlanVersionGuard::new("p-3f9a", 4);
        assert_eq!(g.check(&p).unwrap(), Freshness::Same);
        p.version = 3;
        let e = g.check(&p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "plan `p-3f9a` version 3 is older than version 4 already accepted"
        );
        p.version = 5;
        assert_eq!(g.advance(&p).unwrap(), Freshness::Newer);
        assert_eq!(g.version(), 5);
        p.version = 4;
        assert!(matches!(g.advance(&p), Err(PlanError::Replayed { .. })));
        assert_eq!(g.version(), 5);
        p.plan_id = "other".into();
        p.version = 9;
        assert!(matches!(g.check(&p), Err(PlanError::OtherPlan { .. })));
        assert_eq!(PlanVersionGuard::of(&sample()).version(), 4);
    }
}

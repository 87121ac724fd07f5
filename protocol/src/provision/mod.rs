//! Provisioning messages between a gateway and a vendor server (feature
//! `std`): what the gateway asks, the plan the vendor signs, and what the
//! gateway reports back. `docs/provisioning.md` is the specification; this
//! module is its reference.
//!
//! Every message is one canonical CBOR map with small integer keys, as the
//! announce is: definite lengths, shortest integers, keys ascending, no
//! unknown keys (every key is critical in format 1), every field within its
//! bound, and a size limit checked before parsing. Decoders prove the input
//! canonical by re-encoding what they decoded and comparing, so one message
//! has exactly one encoding.
//!
//! Layout:
//! - [`request`]: [`ProvisionRequest`], sent by the gateway in
//!   `POST /v1/provision`: the device's announce as received, the device
//!   identity the gateway decoded from it, the gateway's identity and
//!   capabilities, and the vendor's jails already on the gateway.
//! - [`plan`]: [`Plan`], what the vendor wants on the gateway: the jail
//!   (resources, network, device passthrough, volumes), the apps (OCI images
//!   pinned by digest, command, environment, mounts) and the checks that
//!   validate them.
//! - [`signed`]: plans travel as COSE_Sign1 (RFC 9052) signed with the
//!   vendor's Ed25519 key: [`SignedPlan::sign`], [`verify_plan`], and
//!   [`PlanVersionGuard`], which refuses replayed older versions.
//! - [`report`]: [`Report`], sent by the gateway in `POST /v1/reports` after
//!   each build, delivery and validation.
//! - [`ErrorBody`]: the body of `202`, `4xx` and `5xx` answers.
//!
//! Both sides in a few lines:
//!
//! ```
//! use protocol::ed25519_dalek::SigningKey;
//! use protocol::provision::*;
//! use protocol::AnnounceBuilder;
//!
//! // Gateway: a device announced itself; ask its vendor.
//! let mut buf = [0u8; protocol::announce::MAX_ANNOUNCE];
//! let n = AnnounceBuilder::new("acme", "Meter 2", "SN-1", "1.0", "https://p.acme.example", 1)
//!     .encode_signed(&[1; 32], &mut buf)?;
//! let request = ProvisionRequest::new(
//!     &buf[..n],
//!     GatewayIdentity { id: "gw-17".into(), public_key: [9; 32] },
//!     GatewayCapabilities {
//!         arch: "arm.v7".into(),
//!         memory_free: 512 << 20,
//!         disk_free: 4 << 30,
//!         cgroup: CgroupLayout::Hybrid,
//!     },
//!     vec![],
//! )?;
//! let body = request.to_cbor()?; // POST /v1/provision, application/cbor
//!
//! // Vendor: answer a signed plan.
//! let request = ProvisionRequest::from_cbor(&body)?;
//! let plan = Plan {
//!     format: FORMAT,
//!     plan_id: "p-1".into(),
//!     version: 1,
//!     vendor: request.device.vendor.clone(),
//!     model: request.device.model.clone(),
//!     serial: request.device.serial.clone(),
//!     jail: JailPlan {
//!         name: "acme".into(),
//!         mode: JailMode::CreateOrReuse,
//!         resources: Resources { memory: 64 << 20, cpu_millis: 500, pids: 64 },
//!         network: NetworkPolicy { enabled: false, host_ports: vec![] },
//!         devices: DevicePassthrough { serial: false },
//!         volumes: vec![],
//!     },
//!     apps: vec![App {
//!         name: "collector".into(),
//!         image: ImageRef::parse(
//!             "registry.acme.example/collector@sha256:\
//!              0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
//!         )?,
//!         command: vec![],
//!         args: vec![],
//!         env: Default::default(),
//!         mounts: vec![],
//!         checks: vec![Check { kind: CheckKind::TcpListening { port: 8080 }, timeout_ms: 5000 }],
//!     }],
//! };
//! let vendor_key = SigningKey::from_bytes(&[7; 32]);
//! let cose = SignedPlan::sign(&plan, &vendor_key, &key_id(&vendor_key.verifying_key()))?;
//!
//! // Gateway: check it with the key its registry holds for `acme`, and
//! // refuse older versions than the one in force.
//! let got = verify_plan(&cose, &vendor_key.verifying_key(), "acme")?;
//! assert!(got.applies_to("acme", "Meter 2", "SN-1"));
//! let mut guard = PlanVersionGuard::new("p-1", 0);
//! assert_eq!(guard.advance(&got)?, Freshness::Newer);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::format;
use std::string::{String, ToString};
use std::vec::Vec;

use minicbor::{Decode, Encode};

pub mod plan;
pub mod report;
pub mod request;
pub mod signed;

pub use plan::{
    App, Check, CheckKind, DevicePassthrough, HostPort, ImageRef, JailMode, JailPlan, Mount,
    NetworkPolicy, Plan, PortProtocol, Resources, Volume,
};
pub use report::{CheckResult, JailState, Report};
pub use request::{
    CgroupLayout, DeviceIdentity, ExistingJail, GatewayCapabilities, GatewayIdentity,
    ProvisionRequest,
};
pub use signed::{
    key_id, peek_kid, verify_plan, Freshness, PlanError, PlanVersionGuard, SignedPlan,
};

/// The provisioning format version this crate speaks. Every message carries
/// it under key 0; a decoder refuses any other value.
pub const FORMAT: u32 = 1;

/// Content type of request and report bodies.
pub const CBOR_CONTENT_TYPE: &str = "application/cbor";
/// Content type of a signed plan.
pub const COSE_CONTENT_TYPE: &str = "application/cose; cose-type=\"cose-sign1\"";

/// A value that breaks the format's rules. `field` is a path into the
/// message, such as `apps[1].image`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}` {reason}")]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

/// Why bytes are not a valid provisioning message.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("invalid cbor in {what}")]
    Cbor {
        what: &'static str,
        #[source]
        source: minicbor::decode::Error,
    },
    #[error("{what} is not in canonical form (or has unknown or repeated keys) at byte {at}")]
    NonCanonical { what: &'static str, at: usize },
    #[error("{what} has format {format}, this decoder speaks {FORMAT}")]
    UnsupportedFormat { what: &'static str, format: u32 },
    #[error("invalid {what}: {source}")]
    Invalid {
        what: &'static str,
        #[source]
        source: Invalid,
    },
}

/// A message type with a canonical CBOR form and bounds.
pub trait CborMessage: Encode<()> + for<'b> Decode<'b, ()> + Sized {
    /// Name used in errors.
    const WHAT: &'static str;
    /// Largest encoding accepted or produced, in bytes.
    const MAX: usize;
    /// The format version the value carries.
    fn format(&self) -> u32;
    /// Checks every field against its rule.
    fn validate(&self) -> Result<(), Invalid>;

    /// Validates and encodes canonically.
    fn to_cbor(&self) -> Result<Vec<u8>, MessageError> {
        self.validate().map_err(|source| MessageError::Invalid {
            what: Self::WHAT,
            source,
        })?;
        let bytes = encode_unchecked(self);
        if bytes.len() > Self::MAX {
            return Err(MessageError::TooLarge {
                what: Self::WHAT,
                len: bytes.len(),
                max: Self::MAX,
            });
        }
        Ok(bytes)
    }

    /// Decodes one canonical message that fills `buf` exactly, checking
    /// its size before parsing and every field after.
    fn from_cbor(buf: &[u8]) -> Result<Self, MessageError> {
        decode_canonical::<Self>(buf)
    }
}

fn encode_unchecked<T: Encode<()>>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing into a Vec cannot fail and the derived encoders return no
    // errors of their own, so there is nothing to report here.
    let _ = minicbor::encode(v, &mut out);
    out
}

fn decode_canonical<T: CborMessage>(buf: &[u8]) -> Result<T, MessageError> {
    let what = T::WHAT;
    if buf.len() > T::MAX {
        return Err(MessageError::TooLarge {
            what,
            len: buf.len(),
            max: T::MAX,
        });
    }
    let mut d = minicbor::Decoder::new(buf);
    let v: T = d
        .decode()
        .map_err(|source| MessageError::Cbor { what, source })?;
    if v.format() != FORMAT {
        return Err(MessageError::UnsupportedFormat {
            what,
            format: v.format(),
        });
    }
    // Canonical means: encoding what was decoded gives the input back. This
    // also refuses unknown keys (the derived decoder skips them), repeated
    // keys and trailing bytes.
    let again = encode_unchecked(&v);
    if again != buf {
        let at = again
            .iter()
            .zip(buf)
            .position(|(a, b)| a != b)
            .unwrap_or(again.len().min(buf.len()));
        return Err(MessageError::NonCanonical { what, at });
    }
    v.validate()
        .map_err(|source| MessageError::Invalid { what, source })?;
    Ok(v)
}

/// Largest error body, in bytes.
pub const MAX_ERROR_BODY: usize = 4096;

/// The body of every 4xx and 5xx answer, and of `202 Accepted` (pending):
/// the HTTP status again and one line saying why, for the gateway's log and
/// the technician.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct ErrorBody {
    /// Always [`FORMAT`].
    #[n(0)]
    pub format: u32,
    #[n(1)]
    pub status: u16,
    #[n(2)]
    pub reason: String,
}

impl ErrorBody {
    pub fn new(status: u16, reason: impl Into<String>) -> Self {
        let reason: String = reason.into();
        ErrorBody {
            format: FORMAT,
            status,
            reason: report::truncate(&reason, MAX_ERROR_BODY - 16).into(),
        }
    }
}

impl CborMessage for ErrorBody {
    const WHAT: &'static str = "error body";
    const MAX: usize = MAX_ERROR_BODY;

    fn format(&self) -> u32 {
        self.format
    }

    fn validate(&self) -> Result<(), Invalid> {
        check_text("reason", &self.reason, MAX_ERROR_BODY - 16)
    }
}

// ---- field rules shared by the messages ----

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Longest name of a jail, app, volume or architecture.
pub const MAX_NAME: usize = 32;
/// Longest plan id.
pub const MAX_PLAN_ID: usize = 64;
/// Longest path (mount target, file check, HTTP path).
pub const MAX_PATH: usize = 255;

pub(crate) fn check_len(field: &str, s: &str, max: usize) -> Result<(), Invalid> {
    if s.is_empty() {
        return Err(invalid(field, "is empty"));
    }
    if s.len() > max {
        return Err(invalid(
            field,
            format!("is {} bytes long, the limit is {max}", s.len()),
        ));
    }
    Ok(())
}

fn check_bytes(field: &str, s: &str, max: usize, ok: impl Fn(u8) -> bool) -> Result<(), Invalid> {
    check_len(field, s, max)?;
    match s.bytes().position(|b| !ok(b)) {
        Some(at) => Err(invalid(
            field,
            format!("has a character not allowed there at byte {at}"),
        )),
        None => Ok(()),
    }
}

/// A short name: `[a-z0-9][a-z0-9._-]*`, at most [`MAX_NAME`] bytes. Jail,
/// app and volume names become file and cgroup names on the gateway.
pub(crate) fn check_name(field: &str, s: &str) -> Result<(), Invalid> {
    check_bytes(field, s, MAX_NAME, |b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
    })?;
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(invalid(field, "must start with a letter or digit"));
    }
    Ok(())
}

/// A plan id: `[A-Za-z0-9._-]+`, at most [`MAX_PLAN_ID`] bytes, not `.` or
/// `..`; it is a URL path segment.
pub(crate) fn check_plan_id(field: &str, s: &str) -> Result<(), Invalid> {
    check_bytes(field, s, MAX_PLAN_ID, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
    })?;
    if s == "." || s == ".." {
        return Err(invalid(field, "may not be `.` or `..`"));
    }
    Ok(())
}

/// Free text shown to people (errors, check output): UTF-8 without NUL, at
/// most `max` bytes, may be empty.
pub(crate) fn check_text(field: &str, s: &str, max: usize) -> Result<(), Invalid> {
    if s.len() > max {
        return Err(invalid(
            field,
            format!("is {} bytes long, the limit is {max}", s.len()),
        ));
    }
    if s.contains('\0') {
        return Err(invalid(field, "contains a NUL byte"));
    }
    Ok(())
}

/// An absolute, normalised path: starts with `/`, no empty, `.` or `..`
/// components, no NUL, at most [`MAX_PATH`] bytes; `/` alone is refused.
pub(crate) fn check_abs_path(field: &str, s: &str) -> Result<(), Invalid> {
    check_len(field, s, MAX_PATH)?;
    let Some(rest) = s.strip_prefix('/') else {
        return Err(invalid(field, "must be an absolute path"));
    };
    if s.contains('\0') {
        return Err(invalid(field, "contains a NUL byte"));
    }
    for c in rest.split('/') {
        if c.is_empty() || c == "." || c == ".." {
            return Err(invalid(
                field,
                "must be normalised: no empty, `.` or `..` components",
            ));
        }
    }
    Ok(())
}

pub(crate) fn check_count<T>(field: &str, v: &[T], max: usize) -> Result<(), Invalid> {
    if v.len() > max {
        return Err(invalid(
            field,
            format!("has {} entries, the limit is {max}", v.len()),
        ));
    }
    Ok(())
}

pub(crate) fn from_field(field: &str, e: crate::FieldError) -> Invalid {
    // The announce's rule text, under this message's field path.
    invalid(field, e.problem.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("n", "web-1.a_b").is_ok());
        assert!(check_name("n", "").is_err());
        assert!(check_name("n", "-x").is_err());
        assert!(check_name("n", "Web").is_err());
        assert!(check_name("n", &"a".repeat(33)).is_err());
        assert!(check_name("n", &"a".repeat(32)).is_ok());
    }

    #[test]
    fn plan_ids() {
        assert!(check_plan_id("p", "3f9A-x_y.z").is_ok());
        assert!(check_plan_id("p", "..").is_err());
        assert!(check_plan_id("p", "a/b").is_err());
        assert!(check_plan_id("p", "a%2f").is_err());
    }

    #[test]
    fn paths() {
        assert!(check_abs_path("p", "/data/x").is_ok());
        for bad in [
            "", "/", "data", "/data/", "/a//b", "/a/./b", "/a/../b", "/a\0",
        ] {
            assert!(check_abs_path("p", bad).is_err(), "{bad:?}");
        }
    }

    mod hostile {
        use super::super::*;
        use proptest::prelude::*;
        use std::vec;
        use std::vec::Vec;

        fn valid_plan() -> Vec<u8> {
            plan::tests::sample().to_cbor().unwrap()
        }

        fn valid_signed() -> Vec<u8> {
            static SIGNED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            SIGNED
                .get_or_init(|| {
                    let k = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
                    SignedPlan::sign(&plan::tests::sample(), &k, b"k").unwrap()
                })
                .clone()
        }

        /// Every decoder, on every input: an answer, never a panic. Returns
        /// what signature verification said.
        fn decode_all(b: &[u8]) -> Result<Plan, PlanError> {
            let k = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
            let _ = ProvisionRequest::from_cbor(b);
            let _ = Plan::from_cbor(b);
            let _ = Report::from_cbor(b);
            let _ = ErrorBody::from_cbor(b);
            let _ = peek_kid(b);
            verify_plan(b, &k, "acme")
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn random_bytes(b in proptest::collection::vec(any::<u8>(), 0..600)) {
                prop_assert!(decode_all(&b).is_err());
            }

            #[test]
            fn mutated_plans(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                             cut in any::<prop::sample::Index>()) {
                for base in [valid_plan(), valid_signed()] {
                    let mut b = base.clone();
                    for (i, v) in &flips {
                        let i = i.index(b.len());
                        b[i] = *v;
                    }
                    let cut = cut.index(b.len());
                    prop_assert!(decode_all(&b[..cut]).is_err());
                    let verified = decode_all(&b);
                    // A changed signed plan never verifies as another plan:
                    // only a change outside what is signed (the unprotected
                    // header) could pass, and then it is the original plan.
                    if let Ok(p) = verified {
                        prop_assert_eq!(p, plan::tests::sample());
                    }
                }
            }
        }

        #[test]
        fn deep_nesting_is_refused_without_overflow() {
            // 10 000 nested arrays, and as many nested tags.
            let mut b = vec![0x81u8; 10_000];
            b.push(0x00);
            assert!(decode_all(&b).is_err());
            let mut b = vec![0xd2u8; 10_000];
            b.push(0x00);
            assert!(decode_all(&b).is_err());
            // Huge declared lengths with no content behind them.
            for b in [
                &[
                    0xa8, 0x07, 0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                ][..],
                &[0x84, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
                &[0xd2, 0x84, 0x40, 0xa0, 0x5a, 0xff, 0xff, 0xff, 0xff, 0x40],
            ] {
                assert!(decode_all(b).is_err());
            }
        }
    }

    #[test]
    fn error_body_round_trip() {
        let e = ErrorBody::new(403, "unknown device");
        let b = e.to_cbor().unwrap();
        assert_eq!(ErrorBody::from_cbor(&b).unwrap(), e);
        let long = ErrorBody::new(500, "x".repeat(10_000));
        assert!(long.to_cbor().unwrap().len() <= MAX_ERROR_BODY);
    }

    #[test]
    fn text() {
        assert!(check_text("t", "", 4).is_ok());
        assert!(check_text("t", "abcde", 4).is_err());
        assert!(check_text("t", "a\0", 4).is_err());
    }
}

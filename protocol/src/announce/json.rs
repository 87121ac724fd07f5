//! The JSON form of an announce, used over MQTT where a device's stack makes
//! CBOR awkward, and the owned announce it decodes to.
//!
//! ```json
//! {"version":1,"vendor":"acme","model":"Meter","serial":"SN1",
//!  "firmware":"1.0","capabilities":["temp"],
//!  "endpoint":"https://p.acme.example","counter":3,"challenge":99,
//!  "public_key":"<64 hex digits>","signature":"<128 hex digits>"}
//! ```
//!
//! `challenge` and `public_key` may be absent (or null); unknown fields are
//! refused. Binary fields are lowercase hex. The signature is the same as
//! in CBOR: over the canonical CBOR signing input, never over the JSON text,
//! so the two forms of one announce carry one signature.

use std::string::String;
use std::vec::Vec;

use serde::{Deserialize, Serialize};

use super::{
    Announce, Capabilities, DecodeError, EncodeError, FieldError, Problem, MAX_ANNOUNCE,
    PUBLIC_KEY_LEN, SIGNATURE_LEN, VERSION,
};

/// Largest JSON announce accepted, in bytes.
pub const MAX_JSON: usize = 2048;

/// An announce that owns its strings: what the gateway keeps after the
/// buffer it decoded from is gone, and what the JSON form decodes to. Build
/// it from a decoded [`Announce`] (`From`), and back with
/// [`OwnedAnnounce::as_announce`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedAnnounce {
    pub vendor: String,
    pub model: String,
    pub serial: String,
    pub firmware: String,
    pub capabilities: Vec<String>,
    pub endpoint: String,
    pub counter: u64,
    pub challenge: Option<u64>,
    pub public_key: Option<[u8; PUBLIC_KEY_LEN]>,
    pub signature: [u8; SIGNATURE_LEN],
}

impl From<&Announce<'_>> for OwnedAnnounce {
    fn from(a: &Announce<'_>) -> Self {
        OwnedAnnounce {
            vendor: a.vendor.into(),
            model: a.model.into(),
            serial: a.serial.into(),
            firmware: a.firmware.into(),
            capabilities: a.capabilities.iter().map(|c| String::from(*c)).collect(),
            endpoint: a.endpoint.into(),
            counter: a.counter,
            challenge: a.challenge,
            public_key: a.public_key,
            signature: a.signature,
        }
    }
}

impl OwnedAnnounce {
    /// Borrows it as an [`Announce`], checking every field.
    pub fn as_announce(&self) -> Result<Announce<'_>, FieldError> {
        let mut capabilities = Capabilities::new();
        for c in &self.capabilities {
            capabilities.push(c.as_str()).map_err(|_| FieldError {
                field: "capabilities",
                problem: Problem::TooMany {
                    count: self.capabilities.len(),
                    max: super::MAX_CAPABILITIES,
                },
            })?;
        }
        let a = Announce {
            vendor: &self.vendor,
            model: &self.model,
            serial: &self.serial,
            firmware: &self.firmware,
            capabilities,
            endpoint: &self.endpoint,
            counter: self.counter,
            challenge: self.challenge,
            public_key: self.public_key,
            signature: self.signature,
        };
        a.validate()?;
        Ok(a)
    }

    /// The canonical CBOR form.
    pub fn to_cbor(&self) -> Result<Vec<u8>, EncodeError> {
        let mut buf = [0u8; MAX_ANNOUNCE];
        let n = self.as_announce()?.encode(&mut buf)?;
        Ok(buf[..n].to_vec())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Json {
    version: u64,
    vendor: String,
    model: String,
    serial: String,
    firmware: String,
    capabilities: Vec<String>,
    endpoint: String,
    counter: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    challenge: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    signature: String,
}

/// Decodes the JSON form, applying every bound the CBOR decoder applies.
pub fn from_json(buf: &[u8]) -> Result<OwnedAnnounce, DecodeError> {
    if buf.len() > MAX_JSON {
        return Err(DecodeError::TooLarge {
            len: buf.len(),
            max: MAX_JSON,
        });
    }
    let j: Json = serde_json::from_slice(buf).map_err(DecodeError::Json)?;
    if j.version != VERSION {
        return Err(DecodeError::UnsupportedVersion { version: j.version });
    }
    let public_key = match &j.public_key {
        Some(h) => Some(unhex::<PUBLIC_KEY_LEN>("public_key", h)?),
        None => None,
    };
    let a = OwnedAnnounce {
        signature: unhex::<SIGNATURE_LEN>("signature", &j.signature)?,
        vendor: j.vendor,
        model: j.model,
        serial: j.serial,
        firmware: j.firmware,
        capabilities: j.capabilities,
        endpoint: j.endpoint,
        counter: j.counter,
        challenge: j.challenge,
        public_key,
    };
    a.as_announce()?;
    Ok(a)
}

/// The JSON form of `announce`.
pub fn to_json(announce: &Announce<'_>) -> Result<String, EncodeError> {
    announce.validate()?;
    let j = Json {
        version: VERSION,
        vendor: announce.vendor.into(),
        model: announce.model.into(),
        serial: announce.serial.into(),
        firmware: announce.firmware.into(),
        capabilities: announce
            .capabilities
            .iter()
            .map(|c| String::from(*c))
            .collect(),
        endpoint: announce.endpoint.into(),
        counter: announce.counter,
        challenge: announce.challenge,
        public_key: announce.public_key.as_ref().map(|k| hex(k)),
        signature: hex(&announce.signature),
    };
    // Serialising a struct of strings and integers cannot fail.
    Ok(serde_json::to_string(&j).unwrap_or_default())
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn unhex<const N: usize>(field: &'static str, s: &str) -> Result<[u8; N], FieldError> {
    if s.len() != 2 * N {
        return Err(FieldError {
            field,
            problem: Problem::BadLength {
                len: s.len(),
                want: 2 * N,
            },
        });
    }
    let digit = |at: usize, c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(FieldError {
            field,
            problem: Problem::BadChar { at },
        }),
    };
    let mut out = [0u8; N];
    for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
        out[i] = digit(2 * i, pair[0])? << 4 | digit(2 * i + 1, pair[1])?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::announce::{verify, AnnounceBuilder};
    use ed25519_dalek::SigningKey;
    use std::format;

    const SEED: [u8; 32] = [3; 32];

    fn sample() -> Announce<'static> {
        AnnounceBuilder::new(
            "acme",
            "Meter ü",
            "SN-1",
            "1.2.3",
            "https://p.acme.example/v1",
            9,
        )
        .capabilities(&["temp", "hum"])
        .challenge(0xdead_beef)
        .include_public_key(true)
        .sign(&SEED)
        .unwrap()
    }

    #[test]
    fn json_round_trip_keeps_signature_valid() {
        let a = sample();
        let j = to_json(&a).unwrap();
        let o = from_json(j.as_bytes()).unwrap();
        assert_eq!(o, OwnedAnnounce::from(&a));
        let vk = SigningKey::from_bytes(&SEED).verifying_key();
        verify(&o.as_announce().unwrap(), &vk).unwrap();
        let mut buf = [0u8; MAX_ANNOUNCE];
        let n = a.encode(&mut buf).unwrap();
        assert_eq!(o.to_cbor().unwrap(), &buf[..n]);
    }

    #[test]
    fn json_optional_fields_may_be_absent_or_null() {
        let mut a = sample();
        a.challenge = None;
        a.public_key = None;
        let j = to_json(&a).unwrap();
        assert!(!j.contains("challenge") && !j.contains("public_key"), "{j}");
        assert_eq!(from_json(j.as_bytes()).unwrap(), OwnedAnnounce::from(&a));
        let with_null = j.replacen('{', "{\"challenge\":null,", 1);
        assert_eq!(from_json(with_null.as_bytes()).unwrap().challenge, None);
    }

    #[test]
    fn json_refusals() {
        let j = to_json(&sample()).unwrap();
        let unknown = j.replacen('{', "{\"extra\":1,", 1);
        assert!(matches!(
            from_json(unknown.as_bytes()),
            Err(DecodeError::Json(_))
        ));
        let v2 = j.replacen("\"version\":1", "\"version\":2", 1);
        assert!(matches!(
            from_json(v2.as_bytes()),
            Err(DecodeError::UnsupportedVersion { version: 2 })
        ));
        let bad_vendor = j.replacen("\"acme\"", "\"ac/me\"", 1);
        assert!(matches!(
            from_json(bad_vendor.as_bytes()),
            Err(DecodeError::Invalid(FieldError {
                field: "vendor",
                ..
            }))
        ));
        let long = j.replacen("\"Meter ü\"", &format!("\"{}\"", "m".repeat(33)), 1);
        assert!(matches!(
            from_json(long.as_bytes()),
            Err(DecodeError::Invalid(FieldError {
                field: "model",
                problem: Problem::TooLong { len: 33, max: 32 }
            }))
        ));
        let sig_at = j.find("\"signature\":\"").unwrap() + 13;
        let mut upper = j.clone();
        upper.replace_range(sig_at..sig_at + 1, "G");
        assert!(matches!(
            from_json(upper.as_bytes()),
            Err(DecodeError::Invalid(FieldError {
                field: "signature",
                problem: Problem::BadChar { at: 0 }
            }))
        ));
        let short = j.replacen("\"signature\":\"", "\"signature\":\"00", 1);
        assert!(matches!(
            from_json(short.as_bytes()),
            Err(DecodeError::Invalid(FieldError {
                field: "signature",
                problem: Problem::BadLength {
                    len: 130,
                    want: 128
                }
            }))
        ));
        let caps: Vec<String> = (0..9).map(|i| format!("\"c{i}\"")).collect();
        let many = j.replacen("[\"temp\",\"hum\"]", &format!("[{}]", caps.join(",")), 1);
        assert!(matches!(
            from_json(many.as_bytes()),
            Err(DecodeError::Invalid(FieldError {
                field: "capabilities",
                problem: Problem::TooMany { count: 9, max: 8 }
            }))
        ));
        let huge = std::vec![b' '; MAX_JSON + 1];
        assert!(matches!(
            from_json(&huge),
            Err(DecodeError::TooLarge { .. })
        ));
        assert!(matches!(from_json(b"{"), Err(DecodeError::Json(_))));
    }

    #[test]
    fn hex_round_trip() {
        let k: [u8; 4] = [0x00, 0x0f, 0xa5, 0xff];
        assert_eq!(hex(&k), "000fa5ff");
        assert_eq!(unhex::<4>("k", "000fa5ff").unwrap(), k);
    }
}

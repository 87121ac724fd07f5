//! The device announce: who made a device, what it is, where its vendor
//! provisions it, and a signature only that vendor can check.
//!
//! On the wire an announce is one canonical CBOR map with small integer keys
//! (see [`key`] and `docs/announce.md`). [`Announce::decode`] borrows every
//! string from the input and accepts nothing but the canonical form: definite
//! lengths, shortest integer encodings, keys strictly ascending, no unknown
//! keys (every key is critical in version 1), every field within its bound.
//! A decoded announce therefore re-encodes to exactly the bytes it came from,
//! which is what the signature covers.
//!
//! The signature is Ed25519 over [`SIGNING_CONTEXT`] followed by the
//! canonical map of every field except the signature. The device builds and
//! signs with [`AnnounceBuilder`] straight into a caller's buffer
//! ([`AnnounceBuilder::encode_signed`]); the vendor (or a gateway that has
//! the vendor's key) checks with [`verify`].
//!
//! Submodule `json` (feature `std`) holds the JSON form used over MQTT and
//! the owned `OwnedAnnounce`.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use minicbor::encode::Write;
use minicbor::{Decoder, Encoder};

use crate::cbor::{CompareWriter, SliceWriter};

#[cfg(feature = "std")]
mod json;
#[cfg(feature = "std")]
pub use json::{from_json, to_json, OwnedAnnounce, MAX_JSON};

/// The announce format version this crate speaks.
pub const VERSION: u64 = 1;
/// Prepended to the unsigned map to form the signing input, so that an
/// announce signature can never be mistaken for any other Berth signature.
pub const SIGNING_CONTEXT: &[u8] = b"berth-announce-v1";

/// Longest vendor id, in bytes.
pub const MAX_VENDOR: usize = 32;
/// Longest model name, in bytes.
pub const MAX_MODEL: usize = 32;
/// Longest serial number, in bytes.
pub const MAX_SERIAL: usize = 32;
/// Longest firmware version, in bytes.
pub const MAX_FIRMWARE: usize = 32;
/// Most capabilities one announce may list.
pub const MAX_CAPABILITIES: usize = 8;
/// Longest capability, in bytes.
pub const MAX_CAPABILITY: usize = 16;
/// Longest provisioning endpoint URL, in bytes.
pub const MAX_ENDPOINT: usize = 96;
/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// CBOR bytes of a map entry with a small key and a string of `n` bytes.
const fn str_entry(n: usize) -> usize {
    1 + if n < 24 {
        1
    } else if n < 256 {
        2
    } else {
        3
    } + n
}

/// The largest canonical announce: every field at its bound, both optional
/// fields present. Decoders reject longer input before parsing it.
pub const MAX_ANNOUNCE: usize = 1 // map header
    + 2 // version
    + str_entry(MAX_VENDOR)
    + str_entry(MAX_MODEL)
    + str_entry(MAX_SERIAL)
    + str_entry(MAX_FIRMWARE)
    + 2 + MAX_CAPABILITIES * (1 + MAX_CAPABILITY)
    + str_entry(MAX_ENDPOINT)
    + 10 // counter
    + 10 // challenge
    + str_entry(PUBLIC_KEY_LEN)
    + str_entry(SIGNATURE_LEN);

/// The map keys of version 1, in the order they must appear.
pub mod key {
    pub const VERSION: u8 = 1;
    pub const VENDOR: u8 = 2;
    pub const MODEL: u8 = 3;
    pub const SERIAL: u8 = 4;
    pub const FIRMWARE: u8 = 5;
    pub const CAPABILITIES: u8 = 6;
    pub const ENDPOINT: u8 = 7;
    pub const COUNTER: u8 = 8;
    /// Optional: the gateway's challenge nonce, echoed.
    pub const CHALLENGE: u8 = 9;
    /// Optional: the device's Ed25519 public key.
    pub const PUBLIC_KEY: u8 = 10;
    /// Always last: the largest one-byte key, so later versions can add
    /// fields below it.
    pub const SIGNATURE: u8 = 23;
}

/// The capability list of a decoded announce.
pub type Capabilities<'a> = heapless::Vec<&'a str, MAX_CAPABILITIES>;

/// What is wrong with one field's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("is empty")]
    Empty,
    #[error("is {len} bytes long, the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("has a character not allowed there at byte {at}")]
    BadChar { at: usize },
    #[error("has {count} entries, the limit is {max}")]
    TooMany { count: usize, max: usize },
    #[error("repeats entry {index}")]
    Duplicate { index: usize },
    #[error("does not start with https:// or http://")]
    BadScheme,
    #[error("is {len} bytes long, it must be {want}")]
    BadLength { len: usize, want: usize },
}

/// A field whose value breaks the format's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("announce field `{field}` {problem}")]
pub struct FieldError {
    pub field: &'static str,
    pub problem: Problem,
}

/// Why bytes are not a valid announce (or message).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("input of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("invalid cbor")]
    Cbor(#[source] minicbor::decode::Error),
    #[error("cbor is not in canonical form at byte {at}")]
    NonCanonical { at: usize },
    #[error("map key {key} appears twice")]
    DuplicateKey { key: u64 },
    #[error("unknown critical field with key {key}")]
    UnknownField { key: u64 },
    #[error("unsupported announce version {version} (this decoder speaks {VERSION})")]
    UnsupportedVersion { version: u64 },
    #[error("required field `{field}` is missing")]
    MissingField { field: &'static str },
    #[error("{count} entries in a map of at most {max}")]
    TooManyFields { count: u64, max: u64 },
    #[error("{extra} bytes after the end of the value")]
    TrailingBytes { extra: usize },
    #[error("unknown message kind {kind}")]
    UnknownMessage { kind: u64 },
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[cfg(feature = "std")]
    #[error("invalid announce json")]
    Json(#[source] serde_json::Error),
    #[cfg(feature = "std")]
    #[error("announce does not belong on topic {topic}")]
    TopicMismatch { topic: std::string::String },
}

impl From<minicbor::decode::Error> for DecodeError {
    fn from(e: minicbor::decode::Error) -> Self {
        DecodeError::Cbor(e)
    }
}

/// Why an announce (or message) could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("output buffer of {have} bytes is too small")]
    BufferTooSmall { have: usize },
    #[error("encoded size {len} exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error(transparent)]
    Invalid(#[from] FieldError),
}

/// Why an announce's signature was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("announce signature does not verify under the vendor's key for this device")]
    BadSignature,
    #[error("announce carries a public key other than the one it is checked against")]
    KeyMismatch,
    #[error("announce cannot be re-encoded for checking")]
    Encode(#[from] EncodeError),
}

/// One signed announce. Strings borrow from the buffer it was decoded from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announce<'a> {
    /// Vendor id: `[a-z0-9][a-z0-9._-]*`, at most [`MAX_VENDOR`] bytes.
    pub vendor: &'a str,
    /// Model name: UTF-8 without control characters.
    pub model: &'a str,
    /// Serial number: `[A-Za-z0-9._:-]+`.
    pub serial: &'a str,
    /// Firmware version: printable ASCII without spaces.
    pub firmware: &'a str,
    /// Short capability names: `[a-z0-9._-]+`, distinct.
    pub capabilities: Capabilities<'a>,
    /// The vendor's provisioning endpoint, an `https://` (or `http://`) URL.
    pub endpoint: &'a str,
    /// Increases with every announce the device sends; the receiver refuses
    /// a counter it has already seen from this device.
    pub counter: u64,
    /// The gateway's `Hello` nonce this announce answers, if any.
    pub challenge: Option<u64>,
    /// The device's Ed25519 public key, for the vendor's registry lookup.
    pub public_key: Option<[u8; PUBLIC_KEY_LEN]>,
    /// Ed25519 signature over the signing input (see the module docs).
    pub signature: [u8; SIGNATURE_LEN],
}

type CborResult<W> = Result<(), minicbor::encode::Error<<W as Write>::Error>>;

impl<'a> Announce<'a> {
    /// Decodes one canonical announce that fills `buf` exactly.
    pub fn decode(buf: &'a [u8]) -> Result<Announce<'a>, DecodeError> {
        if buf.len() > MAX_ANNOUNCE {
            return Err(DecodeError::TooLarge {
                len: buf.len(),
                max: MAX_ANNOUNCE,
            });
        }
        let mut d = Decoder::new(buf);
        let count = d.map()?.ok_or(DecodeError::NonCanonical { at: 0 })?;
        const MAX_FIELDS: u64 = 11;
        if count > MAX_FIELDS {
            return Err(DecodeError::TooManyFields {
                count,
                max: MAX_FIELDS,
            });
        }
        let mut version = None;
        let mut vendor = None;
        let mut model = None;
        let mut serial = None;
        let mut firmware = None;
        let mut capabilities = None;
        let mut endpoint = None;
        let mut counter = None;
        let mut challenge = None;
        let mut public_key = None;
        let mut signature = None;
        let mut previous: Option<u64> = None;
        for _ in 0..count {
            let at = d.position();
            let k = d.u64()?;
            match previous {
                Some(p) if p == k => return Err(DecodeError::DuplicateKey { key: k }),
                Some(p) if p > k => return Err(DecodeError::NonCanonical { at }),
                _ => previous = Some(k),
            }
            let Ok(k8) = u8::try_from(k) else {
                return Err(DecodeError::UnknownField { key: k });
            };
            match k8 {
                key::VERSION => {
                    let v = d.u64()?;
                    if v != VERSION {
                        return Err(DecodeError::UnsupportedVersion { version: v });
                    }
                    version = Some(v);
                }
                key::VENDOR => vendor = Some(d.str()?),
                key::MODEL => model = Some(d.str()?),
                key::SERIAL => serial = Some(d.str()?),
                key::FIRMWARE => firmware = Some(d.str()?),
                key::CAPABILITIES => {
                    let at = d.position();
                    let n = d.array()?.ok_or(DecodeError::NonCanonical { at })?;
                    if n > MAX_CAPABILITIES as u64 {
                        return Err(FieldError {
                            field: "capabilities",
                            problem: Problem::TooMany {
                                count: usize::try_from(n).unwrap_or(usize::MAX),
                                max: MAX_CAPABILITIES,
                            },
                        }
                        .into());
                    }
                    let mut caps = Capabilities::new();
                    for _ in 0..n {
                        // Cannot overflow: n was checked against the capacity.
                        let _ = caps.push(d.str()?);
                    }
                    capabilities = Some(caps);
                }
                key::ENDPOINT => endpoint = Some(d.str()?),
                key::COUNTER => counter = Some(d.u64()?),
                key::CHALLENGE => challenge = Some(d.u64()?),
                key::PUBLIC_KEY => {
                    public_key = Some(fixed::<PUBLIC_KEY_LEN>("public_key", d.bytes()?)?)
                }
                key::SIGNATURE => {
                    signature = Some(fixed::<SIGNATURE_LEN>("signature", d.bytes()?)?)
                }
                _ => return Err(DecodeError::UnknownField { key: k }),
            }
        }
        if d.position() != buf.len() {
            return Err(DecodeError::TrailingBytes {
                extra: buf.len() - d.position(),
            });
        }
        fn need<T>(v: Option<T>, field: &'static str) -> Result<T, DecodeError> {
            v.ok_or(DecodeError::MissingField { field })
        }
        need(version, "version")?;
        let a = Announce {
            vendor: need(vendor, "vendor")?,
            model: need(model, "model")?,
            serial: need(serial, "serial")?,
            firmware: need(firmware, "firmware")?,
            capabilities: need(capabilities, "capabilities")?,
            endpoint: need(endpoint, "endpoint")?,
            counter: need(counter, "counter")?,
            challenge,
            public_key,
            signature: need(signature, "signature")?,
        };
        a.validate()?;
        // Canonical means: encoding what was decoded gives the input back.
        let mut cmp = CompareWriter::new(buf);
        let res = a.encode_cbor(&mut Encoder::new(&mut cmp), true);
        if res.is_err() || !cmp.finished() {
            return Err(DecodeError::NonCanonical { at: cmp.position() });
        }
        Ok(a)
    }

    /// Encodes the announce canonically into `out`; returns the length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        self.validate()?;
        let have = out.len();
        let mut w = SliceWriter::new(out);
        self.encode_cbor(&mut Encoder::new(&mut w), true)
            .map_err(|_| EncodeError::BufferTooSmall { have })?;
        Ok(w.position())
    }

    /// Writes the bytes the signature covers into `out`: [`SIGNING_CONTEXT`]
    /// then the canonical map without the signature. Returns the length.
    pub fn signing_input(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        self.validate()?;
        self.signing_input_unchecked(out)
    }

    /// Checks every field against the format's rules.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_vendor(self.vendor)?;
        check_text("model", self.model, MAX_MODEL)?;
        check_serial(self.serial)?;
        check_ascii("firmware", self.firmware, MAX_FIRMWARE, |b| {
            b.is_ascii_graphic()
        })?;
        check_capabilities(&self.capabilities)?;
        check_endpoint(self.endpoint)
    }

    fn field_count(&self, with_signature: bool) -> u64 {
        8 + u64::from(self.challenge.is_some())
            + u64::from(self.public_key.is_some())
            + u64::from(with_signature)
    }

    fn encode_cbor<W: Write>(&self, e: &mut Encoder<W>, with_signature: bool) -> CborResult<W> {
        e.map(self.field_count(with_signature))?;
        e.u8(key::VERSION)?.u64(VERSION)?;
        e.u8(key::VENDOR)?.str(self.vendor)?;
        e.u8(key::MODEL)?.str(self.model)?;
        e.u8(key::SERIAL)?.str(self.serial)?;
        e.u8(key::FIRMWARE)?.str(self.firmware)?;
        e.u8(key::CAPABILITIES)?
            .array(self.capabilities.len() as u64)?;
        for c in &self.capabilities {
            e.str(c)?;
        }
        e.u8(key::ENDPOINT)?.str(self.endpoint)?;
        e.u8(key::COUNTER)?.u64(self.counter)?;
        if let Some(c) = self.challenge {
            e.u8(key::CHALLENGE)?.u64(c)?;
        }
        if let Some(pk) = &self.public_key {
            e.u8(key::PUBLIC_KEY)?.bytes(pk)?;
        }
        if with_signature {
            e.u8(key::SIGNATURE)?.bytes(&self.signature)?;
        }
        Ok(())
    }

    pub fn vendor(&self) -> &'a str {
        self.vendor
    }
    pub fn model(&self) -> &'a str {
        self.model
    }
    pub fn serial(&self) -> &'a str {
        self.serial
    }
    pub fn firmware(&self) -> &'a str {
        self.firmware
    }
    pub fn capabilities(&self) -> &[&'a str] {
        &self.capabilities
    }
    pub fn endpoint(&self) -> &'a str {
        self.endpoint
    }
    pub fn counter(&self) -> u64 {
        self.counter
    }
    pub fn challenge(&self) -> Option<u64> {
        self.challenge
    }
    pub fn public_key(&self) -> Option<&[u8; PUBLIC_KEY_LEN]> {
        self.public_key.as_ref()
    }
    pub fn signature(&self) -> &[u8; SIGNATURE_LEN] {
        &self.signature
    }
}

fn fixed<const N: usize>(field: &'static str, b: &[u8]) -> Result<[u8; N], FieldError> {
    <[u8; N]>::try_from(b).map_err(|_| FieldError {
        field,
        problem: Problem::BadLength {
            len: b.len(),
            want: N,
        },
    })
}

/// Checks that `signature` is the vendor device key's signature of the
/// announce. When the announce carries a public key it must be `key`.
/// Needs no allocator: the signing input is rebuilt on the stack.
pub fn verify(announce: &Announce<'_>, key: &VerifyingKey) -> Result<(), VerifyError> {
    if let Some(pk) = &announce.public_key {
        if pk != key.as_bytes() {
            return Err(VerifyError::KeyMismatch);
        }
    }
    let mut buf = [0u8; SIGNING_CONTEXT.len() + MAX_ANNOUNCE];
    let n = announce.signing_input(&mut buf)?;
    let sig = Signature::from_bytes(&announce.signature);
    key.verify_strict(&buf[..n], &sig)
        .map_err(|_| VerifyError::BadSignature)
}

/// The fields of an announce before it is signed; what a device fills in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceBuilder<'a> {
    pub vendor: &'a str,
    pub model: &'a str,
    pub serial: &'a str,
    pub firmware: &'a str,
    pub capabilities: &'a [&'a str],
    pub endpoint: &'a str,
    pub counter: u64,
    pub challenge: Option<u64>,
    /// Whether to carry the public key derived from the signing seed.
    pub include_public_key: bool,
}

impl<'a> AnnounceBuilder<'a> {
    /// An announce without capabilities, challenge or public key.
    pub fn new(
        vendor: &'a str,
        model: &'a str,
        serial: &'a str,
        firmware: &'a str,
        endpoint: &'a str,
        counter: u64,
    ) -> Self {
        AnnounceBuilder {
            vendor,
            model,
            serial,
            firmware,
            capabilities: &[],
            endpoint,
            counter,
            challenge: None,
            include_public_key: false,
        }
    }

    pub fn capabilities(mut self, capabilities: &'a [&'a str]) -> Self {
        self.capabilities = capabilities;
        self
    }

    /// Echo the gateway's `Hello` nonce.
    pub fn challenge(mut self, nonce: u64) -> Self {
        self.challenge = Some(nonce);
        self
    }

    pub fn include_public_key(mut self, include: bool) -> Self {
        self.include_public_key = include;
        self
    }

    fn unsigned(&self, key: &SigningKey) -> Result<Announce<'a>, FieldError> {
        let mut capabilities = Capabilities::new();
        for c in self.capabilities {
            capabilities.push(c).map_err(|_| FieldError {
                field: "capabilities",
                problem: Problem::TooMany {
                    count: self.capabilities.len(),
                    max: MAX_CAPABILITIES,
                },
            })?;
        }
        let a = Announce {
            vendor: self.vendor,
            model: self.model,
            serial: self.serial,
            firmware: self.firmware,
            capabilities,
            endpoint: self.endpoint,
            counter: self.counter,
            challenge: self.challenge,
            public_key: self
                .include_public_key
                .then(|| key.verifying_key().to_bytes()),
            signature: [0; SIGNATURE_LEN],
        };
        a.validate()?;
        Ok(a)
    }

    /// Signs with the device key `seed` and writes the canonical announce
    /// into `out`, using no memory beyond `out` and the stack of Ed25519
    /// signing. The signing input is built in place first; it is always
    /// shorter than the signed announce (the 17-byte context is replaced by
    /// the 67-byte signature entry), so `out` needs only the announce's
    /// length; [`MAX_ANNOUNCE`] always suffices. Returns the length.
    pub fn encode_signed(&self, seed: &[u8; 32], out: &mut [u8]) -> Result<usize, EncodeError> {
        self.sign_into(seed, out).map(|(n, _)| n)
    }

    /// Signs with the device key `seed`.
    pub fn sign(&self, seed: &[u8; 32]) -> Result<Announce<'a>, EncodeError> {
        let mut buf = [0u8; MAX_ANNOUNCE];
        self.sign_into(seed, &mut buf).map(|(_, a)| a)
    }

    fn sign_into(
        &self,
        seed: &[u8; 32],
        out: &mut [u8],
    ) -> Result<(usize, Announce<'a>), EncodeError> {
        let key = SigningKey::from_bytes(seed);
        let mut a = self.unsigned(&key)?;
        let have = out.len();
        let small = EncodeError::BufferTooSmall { have };
        // Build context ‖ unsigned map in `out` and sign it in place.
        let m = a.signing_input_unchecked(out)?;
        let sig = key.sign(&out[..m]).to_bytes();
        a.signature = sig;
        // Turn it into the signed map: drop the context, bump the entry
        // count (always a one-byte header: at most 11 entries), append the
        // signature entry.
        let body = m - SIGNING_CONTEXT.len();
        out.copy_within(SIGNING_CONTEXT.len() + 1..m, 1);
        out[0] = 0xa0 | a.field_count(true) as u8;
        let mut w = SliceWriter::new(out.get_mut(body..).ok_or(small)?);
        Encoder::new(&mut w)
            .u8(key::SIGNATURE)
            .and_then(|e| e.bytes(&sig))
            .map_err(|_| small)?;
        Ok((body + w.position(), a))
    }
}

impl Announce<'_> {
    /// [`Announce::signing_input`] for an announce already validated.
    fn signing_input_unchecked(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let have = out.len();
        let small = EncodeError::BufferTooSmall { have };
        let (ctx, rest) = out
            .split_at_mut_checked(SIGNING_CONTEXT.len())
            .ok_or(small)?;
        ctx.copy_from_slice(SIGNING_CONTEXT);
        let mut w = SliceWriter::new(rest);
        self.encode_cbor(&mut Encoder::new(&mut w), false)
            .map_err(|_| small)?;
        Ok(SIGNING_CONTEXT.len() + w.position())
    }
}

/// Signs the fields of `builder` with the device key `seed`.
pub fn sign<'a>(
    builder: &AnnounceBuilder<'a>,
    seed: &[u8; 32],
) -> Result<Announce<'a>, EncodeError> {
    builder.sign(seed)
}

/// The Ed25519 public key belonging to a device key seed.
pub fn public_key(seed: &[u8; 32]) -> [u8; PUBLIC_KEY_LEN] {
    SigningKey::from_bytes(seed).verifying_key().to_bytes()
}

fn bad(field: &'static str, problem: Problem) -> FieldError {
    FieldError { field, problem }
}

fn check_len(field: &'static str, s: &str, max: usize) -> Result<(), FieldError> {
    if s.is_empty() {
        return Err(bad(field, Problem::Empty));
    }
    if s.len() > max {
        return Err(bad(field, Problem::TooLong { len: s.len(), max }));
    }
    Ok(())
}

fn check_ascii(
    field: &'static str,
    s: &str,
    max: usize,
    ok: impl Fn(u8) -> bool,
) -> Result<(), FieldError> {
    check_len(field, s, max)?;
    match s.bytes().position(|b| !ok(b)) {
        Some(at) => Err(bad(field, Problem::BadChar { at })),
        None => Ok(()),
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
}

/// Vendor ids appear in MQTT topics and file names: lowercase, no
/// separators, starting with a letter or digit.
pub fn check_vendor(vendor: &str) -> Result<(), FieldError> {
    check_ascii("vendor", vendor, MAX_VENDOR, is_name_byte)?;
    if !vendor.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(bad("vendor", Problem::BadChar { at: 0 }));
    }
    Ok(())
}

/// Serial numbers appear in MQTT topics: no `/`, `+`, `#` or spaces.
pub fn check_serial(serial: &str) -> Result<(), FieldError> {
    check_ascii("serial", serial, MAX_SERIAL, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':')
    })
}

fn check_text(field: &'static str, s: &str, max: usize) -> Result<(), FieldError> {
    check_len(field, s, max)?;
    match s.char_indices().find(|(_, c)| c.is_control()) {
        Some((at, _)) => Err(bad(field, Problem::BadChar { at })),
        None => Ok(()),
    }
}

fn check_capabilities(caps: &[&str]) -> Result<(), FieldError> {
    if caps.len() > MAX_CAPABILITIES {
        return Err(bad(
            "capabilities",
            Problem::TooMany {
                count: caps.len(),
                max: MAX_CAPABILITIES,
            },
        ));
    }
    for (i, c) in caps.iter().enumerate() {
        check_ascii("capabilities", c, MAX_CAPABILITY, is_name_byte)?;
        if caps[..i].contains(c) {
            return Err(bad("capabilities", Problem::Duplicate { index: i }));
        }
    }
    Ok(())
}

fn check_endpoint(url: &str) -> Result<(), FieldError> {
    check_ascii("endpoint", url, MAX_ENDPOINT, |b| b.is_ascii_graphic())?;
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or(bad("endpoint", Problem::BadScheme))?;
    if rest.is_empty() {
        return Err(bad("endpoint", Problem::Empty));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

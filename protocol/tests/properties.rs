//! Property tests: round trips of everything a device can build, and
//! decoders fed arbitrary or mutated input never panic, never accept a
//! non-canonical or malleated announce, and the frame decoder recovers.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Uses the JSON form, which needs `std`.
#![cfg(feature = "std")]

use ed25519_dalek::SigningKey;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

use protocol::announce::{
    verify, Announce, AnnounceBuilder, MAX_ANNOUNCE, MAX_CAPABILITIES, MAX_CAPABILITY,
    MAX_ENDPOINT, MAX_FIRMWARE, MAX_MODEL, MAX_SERIAL, MAX_VENDOR,
};
use protocol::frame::{encode_frame, max_encoded_len, FrameDecoder, MAX_FRAME, MAX_WIRE};
use protocol::message::Message;

const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789._-";
const SERIAL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcxyz0123456789._:-";

fn ascii(alphabet: &'static [u8], max: usize) -> impl Strategy<Value = String> {
    vec(select(alphabet), 1..=max).prop_map(|b| String::from_utf8(b).unwrap_or_default())
}

fn vendor() -> impl Strategy<Value = String> {
    (select(&LOWER[..36]), ascii(LOWER, MAX_VENDOR - 1))
        .prop_map(|(c, rest)| format!("{}{rest}", char::from(c)))
}

fn model() -> impl Strategy<Value = String> {
    // Printable characters of several UTF-8 lengths, bounded in bytes.
    vec(
        select(&['a', 'Z', ' ', '3', 'é', 'ß', '€', '水', '🙂'][..]),
        1..=MAX_MODEL,
    )
    .prop_map(|cs| {
        let mut s = String::new();
        for c in cs {
            if s.len() + c.len_utf8() > MAX_MODEL {
                break;
            }
            s.push(c);
        }
        s
    })
}

fn endpoint() -> impl Strategy<Value = String> {
    (
        select(&["https://", "http://"][..]),
        ascii(
            b"abcdefghijklmnopqrstuvwxyz0123456789./:-_?=&%",
            MAX_ENDPOINT - 8,
        ),
    )
        .prop_map(|(scheme, rest)| format!("{scheme}{rest}"))
}

fn caps() -> impl Strategy<Value = Vec<String>> {
    vec(ascii(LOWER, MAX_CAPABILITY), 0..=MAX_CAPABILITIES).prop_map(|mut v| {
        let mut seen = Vec::new();
        v.retain(|c| {
            let fresh = !seen.contains(c);
            seen.push(c.clone());
            fresh
        });
        v
    })
}

#[derive(Clone, Debug)]
struct Fields {
    vendor: String,
    model: String,
    serial: String,
    firmware: String,
    caps: Vec<String>,
    endpoint: String,
    counter: u64,
    challenge: Option<u64>,
    include_public_key: bool,
    seed: [u8; 32],
}

fn fields() -> impl Strategy<Value = Fields> {
    (
        (vendor(), model(), ascii(SERIAL, MAX_SERIAL)),
        (
            ascii(b"0123456789.abc-+~RC", MAX_FIRMWARE),
            caps(),
            endpoint(),
        ),
        (
            any::<u64>(),
            any::<Option<u64>>(),
            any::<bool>(),
            any::<[u8; 32]>(),
        ),
    )
        .prop_map(
            |(
                (vendor, model, serial),
                (firmware, caps, endpoint),
                (counter, challenge, include_public_key, seed),
            )| Fields {
                vendor,
                model,
                serial,
                firmware,
                caps,
                endpoint,
                counter,
                challenge,
                include_public_key,
                seed,
            },
        )
}

impl Fields {
    fn sign_into(&self, out: &mut [u8]) -> usize {
        let caps: Vec<&str> = self.caps.iter().map(String::as_str).collect();
        let b = AnnounceBuilder {
            vendor: &self.vendor,
            model: &self.model,
            serial: &self.serial,
            firmware: &self.firmware,
            capabilities: &caps,
            endpoint: &self.endpoint,
            counter: self.counter,
            challenge: self.challenge,
            include_public_key: self.include_public_key,
        };
        b.encode_signed(&self.seed, out).unwrap()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn signed_announce_round_trips(f in fields()) {
        let mut buf = [0u8; MAX_ANNOUNCE];
        let n = f.sign_into(&mut buf);
        let a = Announce::decode(&buf[..n]).unwrap();
        prop_assert_eq!(a.vendor, f.vendor.as_str());
        prop_assert_eq!(a.model, f.model.as_str());
        prop_assert_eq!(a.serial, f.serial.as_str());
        prop_assert_eq!(a.firmware, f.firmware.as_str());
        prop_assert_eq!(a.endpoint, f.endpoint.as_str());
        prop_assert_eq!(a.capabilities.len(), f.caps.len());
        prop_assert_eq!(a.counter, f.counter);
        prop_assert_eq!(a.challenge, f.challenge);
        prop_assert_eq!(a.public_key.is_some(), f.include_public_key);
        let key = SigningKey::from_bytes(&f.seed).verifying_key();
        prop_assert!(verify(&a, &key).is_ok());
        // encode(decode(x)) == x
        let mut again = [0u8; MAX_ANNOUNCE];
        let m = a.encode(&mut again).unwrap();
        prop_assert_eq!(&again[..m], &buf[..n]);
        // JSON keeps everything, signature included.
        let json = protocol::announce::to_json(&a).unwrap();
        let owned = protocol::announce::from_json(json.as_bytes()).unwrap();
        prop_assert_eq!(owned.as_announce().unwrap(), a.clone());
        // Through a message and a frame and back.
        let mut msg = [0u8; MAX_FRAME];
        let ml = Message::Announce(a.clone()).encode(&mut msg).unwrap();
        let mut wire = [0u8; MAX_WIRE];
        let wl = encode_frame(&msg[..ml], &mut wire).unwrap();
        prop_assert!(wl <= max_encoded_len(ml));
        let mut dec = FrameDecoder::<MAX_FRAME>::new();
        let mut got = None;
        for &b in &wire[..wl] {
            if let Some(r) = dec.push(b) {
                got = Some(r.unwrap().to_vec());
            }
        }
        let frame = got.unwrap();
        prop_assert_eq!(Message::decode(&frame).unwrap(), Message::Announce(a));
    }

    #[test]
    fn mutated_announce_never_verifies_unless_identical(
        f in fields(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut buf = [0u8; MAX_ANNOUNCE];
        let n = f.sign_into(&mut buf);
        let original = buf[..n].to_vec();
        let mut m = original.clone();
        for (at, byte, op) in edits {
            match op {
                0 if !m.is_empty() => { let i = at.index(m.len()); m[i] = byte; }
                1 => { let i = at.index(m.len() + 1); m.insert(i, byte); }
                _ if !m.is_empty() => { let i = at.index(m.len()); m.remove(i); }
                _ => {}
            }
        }
        let key = SigningKey::from_bytes(&f.seed).verifying_key();
        let accepted = Announce::decode(&m).is_ok_and(|a| verify(&a, &key).is_ok());
        if accepted {
            prop_assert_eq!(m, original);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_decode_only_if_canonical(bytes in vec(any::<u8>(), 0..600)) {
        if let Ok(a) = Announce::decode(&bytes) {
            let mut again = [0u8; MAX_ANNOUNCE];
            let m = a.encode(&mut again).unwrap();
            prop_assert_eq!(&again[..m], bytes.as_slice());
        }
        if let Ok(msg) = Message::decode(&bytes) {
            let mut again = [0u8; MAX_FRAME];
            let m = msg.encode(&mut again).unwrap();
            prop_assert_eq!(&again[..m], bytes.as_slice());
        }
        let _ = protocol::announce::from_json(&bytes);
        let _ = protocol::ble::decode_manufacturer_data(&bytes);
    }

    #[test]
    fn cbor_shaped_input_never_panics(
        head in select(&[0xa9u8, 0xaa, 0xab, 0xbf, 0xa0, 0x82][..]),
        body in vec(select(&[0x00u8, 0x01, 0x02, 0x17, 0x18, 0x19, 0x1b, 0x40, 0x58, 0x60, 0x78, 0x7f, 0x80, 0x9f, 0xa1, 0xbf, 0xc0, 0xf9, 0xff, 0x61, 0x62][..]), 0..80),
    ) {
        let mut bytes = vec![head];
        bytes.extend(body);
        if let Ok(a) = Announce::decode(&bytes) {
            let mut again = [0u8; MAX_ANNOUNCE];
            let m = a.encode(&mut again).unwrap();
            prop_assert_eq!(&again[..m], bytes.as_slice());
        }
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn frame_decoder_survives_anything_and_recovers(
        garbage in vec(any::<u8>(), 0..2000),
        msg in vec(any::<u8>(), 0..=protocol::frame::MAX_MESSAGE),
    ) {
        let mut dec = FrameDecoder::<MAX_FRAME>::new();
        for &b in &garbage {
            if let Some(Ok(m)) = dec.push(b) {
                prop_assert!(m.len() <= MAX_FRAME);
            }
        }
        let mut wire = [0u8; MAX_WIRE];
        let n = encode_frame(&msg, &mut wire).unwrap();
        // One delimiter ends whatever the garbage left open.
        let mut results = Vec::new();
        for &b in std::iter::once(&0u8).chain(&wire[..n]) {
            if let Some(r) = dec.push(b) {
                results.push(r.map(|m| m.to_vec()));
            }
        }
        prop_assert_eq!(results.last(), Some(&Ok(msg.clone())));
        prop_assert!(results.len() <= 2);
    }

    #[test]
    fn small_decoder_reports_oversize_and_recovers(
        msg in vec(any::<u8>(), 0..300),
    ) {
        let mut wire = [0u8; MAX_WIRE];
        let n = encode_frame(&msg, &mut wire).unwrap();
        let mut dec = FrameDecoder::<64>::new();
        let mut results = Vec::new();
        for _ in 0..2 {
            for &b in &wire[..n] {
                if let Some(r) = dec.push(b) {
                    results.push(r.map(|m| m.to_vec()));
                }
            }
        }
        if msg.len() + 4 <= 64 {
            prop_assert_eq!(results, vec![Ok(msg.clone()), Ok(msg)]);
        } else {
            let e = Err(protocol::FrameError::Oversize { max: 64 });
            prop_assert_eq!(results, vec![e.clone(), e]);
        }
    }
}

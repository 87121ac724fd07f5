//! Unit tests of the announce codec, signing and verification.

extern crate std;

use std::vec::Vec;

use ed25519_dalek::SigningKey;

use super::*;

const SEED: [u8; 32] = [0x11; 32];
const OTHER_SEED: [u8; 32] = [0x22; 32];

fn builder() -> AnnounceBuilder<'static> {
    AnnounceBuilder::new(
        "acme",
        "Meter 3000",
        "SN-0042",
        "2.1.0",
        "https://provision.acme.example/berth",
        7,
    )
    .capabilities(&["temp", "humidity"])
}

fn vk(seed: &[u8; 32]) -> VerifyingKey {
    SigningKey::from_bytes(seed).verifying_key()
}

fn encoded(a: &Announce<'_>) -> Vec<u8> {
    let mut buf = [0u8; MAX_ANNOUNCE];
    let n = a.encode(&mut buf).unwrap();
    buf[..n].to_vec()
}

/// The largest announce the bounds allow.
fn biggest() -> Vec<u8> {
    const CAPS: [&str; MAX_CAPABILITIES] = [
        "aaaaaaaaaaaaaaa1",
        "aaaaaaaaaaaaaaa2",
        "aaaaaaaaaaaaaaa3",
        "aaaaaaaaaaaaaaa4",
        "aaaaaaaaaaaaaaa5",
        "aaaaaaaaaaaaaaa6",
        "aaaaaaaaaaaaaaa7",
        "aaaaaaaaaaaaaaa8",
    ];
    let v = "v".repeat(MAX_VENDOR);
    let m = "m".repeat(MAX_MODEL);
    let s = "s".repeat(MAX_SERIAL);
    let f = "f".repeat(MAX_FIRMWARE);
    let e = std::format!("https://{}", "e".repeat(MAX_ENDPOINT - 8));
    let b = AnnounceBuilder {
        vendor: &v,
        model: &m,
        serial: &s,
        firmware: &f,
        capabilities: &CAPS,
        endpoint: &e,
        counter: u64::MAX,
        challenge: Some(u64::MAX),
        include_public_key: true,
    };
    let mut out = [0u8; MAX_ANNOUNCE + SIGNING_CONTEXT.len()];
    let n = b.encode_signed(&SEED, &mut out).unwrap();
    out[..n].to_vec()
}

#[test]
fn sign_encode_decode_verify_round_trip() {
    let a = builder()
        .challenge(1234)
        .include_public_key(true)
        .sign(&SEED)
        .unwrap();
    let bytes = encoded(&a);
    let d = Announce::decode(&bytes).unwrap();
    assert_eq!(d, a);
    assert_eq!(d.vendor(), "acme");
    assert_eq!(d.capabilities(), &["temp", "humidity"]);
    assert_eq!(d.challenge(), Some(1234));
    assert_eq!(d.public_key(), Some(&public_key(&SEED)));
    verify(&d, &vk(&SEED)).unwrap();
}

#[test]
fn encode_signed_matches_sign_then_encode() {
    for b in [builder(), builder().challenge(5).include_public_key(true)] {
        let mut out = [0u8; 600];
        let n = b.encode_signed(&SEED, &mut out).unwrap();
        assert_eq!(&out[..n], encoded(&b.sign(&SEED).unwrap()).as_slice());
    }
}

#[test]
fn max_announce_is_reached_exactly_by_the_biggest() {
    let big = biggest();
    assert_eq!(big.len(), MAX_ANNOUNCE);
    let a = Announce::decode(&big).unwrap();
    verify(&a, &vk(&SEED)).unwrap();
}

#[test]
fn encode_signed_needs_no_room_beyond_the_announce() {
    // The signing context (17 bytes) is shorter than the signature entry
    // (67) that replaces it, so building the signing input in place fits.
    let b = builder();
    let mut roomy = [0u8; 600];
    let n = b.encode_signed(&SEED, &mut roomy).unwrap();
    let mut exact = std::vec![0u8; n];
    assert_eq!(b.encode_signed(&SEED, &mut exact).unwrap(), n);
    assert_eq!(exact, &roomy[..n]);
    let mut tight = std::vec![0u8; n - 1];
    assert_eq!(
        b.encode_signed(&SEED, &mut tight),
        Err(EncodeError::BufferTooSmall { have: n - 1 })
    );
    let a = b.sign(&SEED).unwrap();
    let mut small = [0u8; 10];
    assert_eq!(
        a.encode(&mut small),
        Err(EncodeError::BufferTooSmall { have: 10 })
    );
}

#[test]
fn wrong_key_and_key_mismatch_are_refused() {
    let a = builder().sign(&SEED).unwrap();
    assert_eq!(verify(&a, &vk(&OTHER_SEED)), Err(VerifyError::BadSignature));
    let with_key = builder().include_public_key(true).sign(&SEED).unwrap();
    assert_eq!(
        verify(&with_key, &vk(&OTHER_SEED)),
        Err(VerifyError::KeyMismatch)
    );
}

#[test]
fn every_field_is_covered_by_the_signature() {
    let a = builder()
        .challenge(10)
        .include_public_key(true)
        .sign(&SEED)
        .unwrap();
    let key = vk(&SEED);
    let mut tampered: Vec<Announce<'_>> = Vec::new();
    let mut t = a.clone();
    t.vendor = "acmf";
    tampered.push(t);
    let mut t = a.clone();
    t.model = "Meter 3001";
    tampered.push(t);
    let mut t = a.clone();
    t.serial = "SN-0043";
    tampered.push(t);
    let mut t = a.clone();
    t.firmware = "2.1.1";
    tampered.push(t);
    let mut t = a.clone();
    t.capabilities.pop();
    tampered.push(t);
    let mut t = a.clone();
    t.endpoint = "https://evil.example/berth";
    tampered.push(t);
    let mut t = a.clone();
    t.counter += 1;
    tampered.push(t);
    let mut t = a.clone();
    t.challenge = Some(11);
    tampered.push(t);
    let mut t = a.clone();
    t.challenge = None;
    tampered.push(t);
    let mut t = a.clone();
    t.public_key = None;
    tampered.push(t);
    let mut t = a.clone();
    t.signature[0] ^= 1;
    tampered.push(t);
    for t in &tampered {
        assert_eq!(verify(t, &key), Err(VerifyError::BadSignature), "{t:?}");
    }
    verify(&a, &key).unwrap();
}

#[test]
fn tampered_bytes_fail_decode_or_verify() {
    let a = builder().challenge(77).sign(&SEED).unwrap();
    let bytes = encoded(&a);
    let key = vk(&SEED);
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut t = bytes.clone();
            t[i] ^= bit;
            if let Ok(d) = Announce::decode(&t) {
                assert!(verify(&d, &key).is_err(), "flip at {i} verified");
            };
        }
    }
}

#[test]
fn field_bounds_are_enforced_on_encode() {
    let cases: [(AnnounceBuilder<'static>, &str, Problem); 10] = [
        (
            AnnounceBuilder {
                vendor: "",
                ..builder()
            },
            "vendor",
            Problem::Empty,
        ),
        (
            AnnounceBuilder {
                vendor: "Acme",
                ..builder()
            },
            "vendor",
            Problem::BadChar { at: 0 },
        ),
        (
            AnnounceBuilder {
                vendor: "-acme",
                ..builder()
            },
            "vendor",
            Problem::BadChar { at: 0 },
        ),
        (
            AnnounceBuilder {
                serial: "a/b",
                ..builder()
            },
            "serial",
            Problem::BadChar { at: 1 },
        ),
        (
            AnnounceBuilder {
                model: "a\nb",
                ..builder()
            },
            "model",
            Problem::BadChar { at: 1 },
        ),
        (
            AnnounceBuilder {
                firmware: "1 0",
                ..builder()
            },
            "firmware",
            Problem::BadChar { at: 1 },
        ),
        (
            AnnounceBuilder {
                endpoint: "ftp://x",
                ..builder()
            },
            "endpoint",
            Problem::BadScheme,
        ),
        (
            AnnounceBuilder {
                endpoint: "https://",
                ..builder()
            },
            "endpoint",
            Problem::Empty,
        ),
        (
            AnnounceBuilder {
                capabilities: &["a", "a"],
                ..builder()
            },
            "capabilities",
            Problem::Duplicate { index: 1 },
        ),
        (
            AnnounceBuilder {
                capabilities: &["a", "b", "c", "d", "e", "f", "g", "h", "i"],
                ..builder()
            },
            "capabilities",
            Problem::TooMany { count: 9, max: 8 },
        ),
    ];
    for (b, field, problem) in cases {
        assert_eq!(
            b.sign(&SEED),
            Err(EncodeError::Invalid(FieldError { field, problem })),
            "{b:?}"
        );
    }
    let long = "x".repeat(MAX_MODEL + 1);
    let b = AnnounceBuilder {
        model: &long,
        ..builder()
    };
    assert_eq!(
        b.sign(&SEED),
        Err(EncodeError::Invalid(FieldError {
            field: "model",
            problem: Problem::TooLong { len: 33, max: 32 }
        }))
    );
}

/// Hand-built CBOR for decoder tests: a map of the entries given.
fn map(entries: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = std::vec![0xa0 | entries.len() as u8];
    for (k, v) in entries {
        let mut kb = [0u8; 9];
        let mut w = crate::cbor::SliceWriter::new(&mut kb);
        Encoder::new(&mut w).u64(*k).unwrap();
        let n = w.position();
        out.extend_from_slice(&kb[..n]);
        out.extend_from_slice(v);
    }
    out
}

/// The entries of a valid signed announce, value bytes as encoded.
fn entries(a: &Announce<'_>) -> Vec<(u64, Vec<u8>)> {
    let bytes = encoded(a);
    let mut d = Decoder::new(&bytes);
    let n = d.map().unwrap().unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let k = d.u64().unwrap();
        let start = d.position();
        d.skip().unwrap();
        out.push((k, bytes[start..d.position()].to_vec()));
    }
    out
}

#[test]
fn hand_built_map_matches_encoder() {
    let a = builder().sign(&SEED).unwrap();
    assert_eq!(map(&entries(&a)), encoded(&a));
}

#[test]
fn decode_rejects_structural_errors() {
    let a = builder().challenge(3).sign(&SEED).unwrap();
    let good = entries(&a);

    // Keys out of order.
    let mut swapped = good.clone();
    swapped.swap(1, 2);
    assert!(matches!(
        Announce::decode(&map(&swapped)),
        Err(DecodeError::NonCanonical { .. })
    ));
    // Duplicate key.
    let mut dup = good.clone();
    dup.insert(2, dup[1].clone());
    assert!(matches!(
        Announce::decode(&map(&dup)),
        Err(DecodeError::DuplicateKey { key: 2 })
    ));
    // Unknown key, small and large.
    for k in [11u64, 100, 1 << 40] {
        let mut unk = good.clone();
        let at = unk.len() - 1;
        unk.insert(at, (k, std::vec![0x00]));
        if k > 23 {
            // Keep ascending order: move it after the signature.
            let e = unk.remove(at);
            unk.push(e);
        }
        assert!(
            matches!(
                Announce::decode(&map(&unk)),
                Err(DecodeError::UnknownField { key }) if key == k
            ),
            "key {k}"
        );
    }
    // Missing required field.
    let mut missing = good.clone();
    missing.retain(|(k, _)| *k != u64::from(key::SERIAL));
    assert!(matches!(
        Announce::decode(&map(&missing)),
        Err(DecodeError::MissingField { field: "serial" })
    ));
    let mut nosig = good.clone();
    nosig.pop();
    assert!(matches!(
        Announce::decode(&map(&nosig)),
        Err(DecodeError::MissingField { field: "signature" })
    ));
    // Wrong version.
    let mut v2 = good.clone();
    v2[0].1 = std::vec![0x02];
    assert!(matches!(
        Announce::decode(&map(&v2)),
        Err(DecodeError::UnsupportedVersion { version: 2 })
    ));
    // Wrong type: vendor as bytes.
    let mut ty = good.clone();
    ty[1].1 = std::vec![0x44, b'a', b'c', b'm', b'e'];
    assert!(matches!(
        Announce::decode(&map(&ty)),
        Err(DecodeError::Cbor(_))
    ));
    // Float counter.
    let mut fl = good.clone();
    let ci = fl
        .iter()
        .position(|(k, _)| *k == u64::from(key::COUNTER))
        .unwrap();
    fl[ci].1 = std::vec![0xf9, 0x3c, 0x00];
    assert!(matches!(
        Announce::decode(&map(&fl)),
        Err(DecodeError::Cbor(_))
    ));
    // Short signature.
    let mut short = good.clone();
    let last = short.len() - 1;
    short[last].1 = std::vec![0x42, 1, 2];
    assert!(matches!(
        Announce::decode(&map(&short)),
        Err(DecodeError::Invalid(FieldError {
            field: "signature",
            problem: Problem::BadLength { len: 2, want: 64 }
        }))
    ));
    // Trailing bytes.
    let mut trailing = encoded(&a);
    trailing.push(0x00);
    assert!(matches!(
        Announce::decode(&trailing),
        Err(DecodeError::TrailingBytes { extra: 1 })
    ));
    // Truncated.
    let full = encoded(&a);
    for cut in [0, 1, 5, full.len() / 2, full.len() - 1] {
        assert!(
            Announce::decode(&full[..cut]).is_err(),
            "truncated at {cut} decoded"
        );
    }
    // Not a map.
    assert!(matches!(
        Announce::decode(&[0x80]),
        Err(DecodeError::Cbor(_))
    ));
    // Too many fields claimed.
    assert!(matches!(
        Announce::decode(&[0xb8, 0xff]),
        Err(DecodeError::TooManyFields { count: 255, .. })
    ));
    // Oversize input refused before parsing.
    let big = std::vec![0u8; MAX_ANNOUNCE + 1];
    assert!(matches!(
        Announce::decode(&big),
        Err(DecodeError::TooLarge { len, max: MAX_ANNOUNCE }) if len == MAX_ANNOUNCE + 1
    ));
}

#[test]
fn decode_rejects_non_canonical_encodings() {
    let a = builder().sign(&SEED).unwrap();
    let good = encoded(&a);

    // Indefinite-length map.
    let mut indef = std::vec![0xbf];
    indef.extend_from_slice(&good[1..]);
    indef.push(0xff);
    assert!(matches!(
        Announce::decode(&indef),
        Err(DecodeError::NonCanonical { at: 0 })
    ));
    // Non-minimal integer: the version 1 as 0x18 0x01.
    let mut e = entries(&a);
    e[0].1 = std::vec![0x18, 0x01];
    assert!(matches!(
        Announce::decode(&map(&e)),
        Err(DecodeError::NonCanonical { .. })
    ));
    // Non-minimal key: key 2 as 0x18 0x02.
    let mut raw = std::vec![good[0]];
    raw.extend_from_slice(&good[1..3]); // version entry
    raw.extend_from_slice(&[0x18, 0x02]);
    raw.extend_from_slice(&good[4..]);
    assert!(matches!(
        Announce::decode(&raw),
        Err(DecodeError::NonCanonical { .. })
    ));
    // Non-minimal string length: "acme" with a one-byte length argument.
    let mut e = entries(&a);
    e[1].1 = std::vec![0x78, 0x04, b'a', b'c', b'm', b'e'];
    assert!(matches!(
        Announce::decode(&map(&e)),
        Err(DecodeError::NonCanonical { .. })
    ));
    // Indefinite-length capability array.
    let mut e = entries(&a);
    let ci = e
        .iter()
        .position(|(k, _)| *k == u64::from(key::CAPABILITIES))
        .unwrap();
    e[ci].1 = std::vec![0x9f, 0x61, b'x', 0xff];
    assert!(matches!(
        Announce::decode(&map(&e)),
        Err(DecodeError::NonCanonical { .. })
    ));
    // Tagged value.
    let mut e = entries(&a);
    let mut tagged = std::vec![0xc0];
    tagged.extend_from_slice(&e[1].1);
    e[1].1 = tagged;
    assert!(matches!(
        Announce::decode(&map(&e)),
        Err(DecodeError::Cbor(_))
    ));
}

#[test]
fn decode_rejects_over_long_and_bad_strings() {
    let a = builder().sign(&SEED).unwrap();
    let mut e = entries(&a);
    let long = "v".repeat(MAX_VENDOR + 1);
    let mut v = std::vec![0x78, long.len() as u8];
    v.extend_from_slice(long.as_bytes());
    e[1].1 = v;
    assert!(matches!(
        Announce::decode(&map(&e)),
        Err(DecodeError::Invalid(FieldError {
            field: "vendor",
            problem: Problem::TooLong { len: 33, max: 32 }
        }))
    ));
    // A string claiming more bytes than there are.
    let mut e = entries(&a);
    e[1].1 = std::vec![0x79, 0xff, 0xff, b'a'];
    assert!(matches!(
        Announce::decode(&map(&e)),
        Err(DecodeError::Cbor(_))
    ));
    // Invalid UTF-8 in the model.
    let mut e = entries(&a);
    e[2].1 = std::vec![0x62, 0xc3, 0x28];
    assert!(matches!(
        Announce::decode(&map(&e)),
        Err(DecodeError::Cbor(_))
    ));
    // Too many capabilities claimed.
    let mut e = entries(&a);
    let ci = e
        .iter()
        .position(|(k, _)| *k == u64::from(key::CAPABILITIES))
        .unwrap();
    e[ci].1 = std::vec![0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    assert!(matches!(
        Announce::decode(&map(&e)),
        Err(DecodeError::Invalid(FieldError {
            field: "capabilities",
            problem: Problem::TooMany { .. }
        }))
    ));
}

#[test]
fn signing_input_is_context_then_unsigned_map() {
    let a = builder().sign(&SEED).unwrap();
    let mut buf = [0u8; 600];
    let n = a.signing_input(&mut buf).unwrap();
    assert!(buf.starts_with(SIGNING_CONTEXT));
    let body = &buf[SIGNING_CONTEXT.len()..n];
    let full = encoded(&a);
    // Same entries minus the signature, with the count one lower.
    assert_eq!(body[0] + 1, full[0]);
    assert_eq!(&body[1..], &full[1..full.len() - 67]);
    assert_eq!(&full[full.len() - 67..full.len() - 64], &[0x17, 0x58, 0x40]);
}

#[test]
fn errors_read_well() {
    let e = DecodeError::from(FieldError {
        field: "vendor",
        problem: Problem::TooLong { len: 40, max: 32 },
    });
    assert_eq!(
        std::format!("{e}"),
        "announce field `vendor` is 40 bytes long, the limit is 32"
    );
    assert_eq!(
        std::format!("{}", DecodeError::UnknownField { key: 11 }),
        "unknown critical field with key 11"
    );
}

//! The worked example in `docs/announce.md` is generated here: each hex or
//! JSON block that follows an `<!-- example:NAME -->` marker in the doc must
//! equal what this crate produces for the example fields. When the format
//! changes, the failure prints the new block; `BERTH_BLESS=1 cargo test`
//! rewrites the blocks in place.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Uses the JSON form, which needs `std`.
#![cfg(feature = "std")]

use protocol::announce::{public_key, to_json, verify, Announce, AnnounceBuilder, MAX_ANNOUNCE};
use protocol::frame::{encode_frame, MAX_MESSAGE, MAX_WIRE};
use protocol::message::{encode_signed_announce, Message};

/// RFC 8032 section 7.1, test 1: a published key, so a firmware team can
/// check its own Ed25519 library against the example.
const SEED_HEX: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

fn seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    for (i, b) in s.iter_mut().enumerate() {
        *b = u8::from_str_radix(&SEED_HEX[2 * i..2 * i + 2], 16).unwrap();
    }
    s
}

fn builder() -> AnnounceBuilder<'static> {
    AnnounceBuilder::new(
        "acme",
        "Thermo 2",
        "TH2-000123",
        "1.4.2",
        "https://provision.acme.example/berth/v1",
        17,
    )
    .capabilities(&["temperature", "humidity"])
    .challenge(0x1122_3344_5566_7788)
    .include_public_key(true)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Hex in lines of 32 bytes, as the doc shows it.
fn hex_block(b: &[u8]) -> String {
    b.chunks(32).map(hex).collect::<Vec<_>>().join("\n")
}

/// The fenced block after `<!-- example:NAME -->`.
fn doc_block(doc: &str, name: &str) -> String {
    let marker = format!("<!-- example:{name} -->");
    let at = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/announce.md lacks {marker}"));
    let rest = &doc[at + marker.len()..];
    let open = rest.find("```").expect("code block after marker");
    let body = &rest[open..];
    let body = &body[body.find('\n').expect("fence line") + 1..];
    let close = body.find("```").expect("closing fence");
    body[..close].trim().to_string()
}

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/announce.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Replaces the block after `<!-- example:NAME -->` with `want`.
fn bless(doc: &str, name: &str, want: &str) -> String {
    let marker = format!("<!-- example:{name} -->");
    let at = doc.find(&marker).expect("marker") + marker.len();
    let open = at + doc[at..].find("```").expect("fence");
    let start = open + doc[open..].find('\n').expect("fence line") + 1;
    let end = start + doc[start..].find("```").expect("closing fence");
    format!("{}{want}\n{}", &doc[..start], &doc[end..])
}

fn check(doc: &mut String, name: &str, want: &str) {
    if std::env::var_os("BERTH_BLESS").is_some() {
        *doc = bless(doc, name, want);
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/announce.md");
        std::fs::write(path, doc.as_bytes()).unwrap();
    }
    let got = doc_block(doc, name);
    assert!(
        got == want,
        "docs/announce.md example `{name}` is stale; it should read:\n{want}\n"
    );
}

#[test]
fn doc_example_is_what_the_code_produces() {
    let mut doc = doc();
    let doc = &mut doc;
    let seed = seed();
    let a = builder().sign(&seed).unwrap();

    check(doc, "public-key", &hex(&public_key(&seed)));

    let mut si = [0u8; MAX_ANNOUNCE];
    let n = a.signing_input(&mut si).unwrap();
    check(doc, "signing-input", &hex_block(&si[..n]));

    check(doc, "signature", &hex_block(&a.signature));

    let mut enc = [0u8; MAX_ANNOUNCE];
    let n = a.encode(&mut enc).unwrap();
    check(doc, "announce", &hex_block(&enc[..n]));

    let mut msg = [0u8; MAX_MESSAGE];
    let ml = encode_signed_announce(&builder(), &seed, &mut msg).unwrap();
    let mut wire = [0u8; MAX_WIRE];
    let wl = encode_frame(&msg[..ml], &mut wire).unwrap();
    check(doc, "frame", &hex_block(&wire[..wl]));

    let mut hello = [0u8; 16];
    let hl = Message::Hello {
        nonce: 0x1122_3344_5566_7788,
    }
    .encode(&mut hello)
    .unwrap();
    let mut hello_wire = [0u8; 32];
    let hwl = encode_frame(&hello[..hl], &mut hello_wire).unwrap();
    check(doc, "hello-frame", &hex_block(&hello_wire[..hwl]));

    check(doc, "json", &to_json(&a).unwrap());
}

#[test]
fn doc_example_hex_decodes_and_verifies() {
    let doc = doc();
    let text = doc_block(&doc, "announce").replace(['\n', ' '], "");
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect();
    let a = Announce::decode(&bytes).unwrap();
    assert_eq!(a.serial, "TH2-000123");
    let key = ed25519_dalek::VerifyingKey::from_bytes(&public_key(&seed())).unwrap();
    verify(&a, &key).unwrap();
}

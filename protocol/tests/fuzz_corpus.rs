//! Replays the committed fuzz seed corpus (`protocol/fuzz/corpus/<target>/`)
//! through the same checks the cargo-fuzz targets run, on stable Rust, and
//! keeps the generated seeds current: `BERTH_BLESS=1 cargo test` rewrites
//! them. Files other than the generated seeds (crash reproducers saved from
//! a fuzzing run) are replayed too.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The JSON target needs `std`.
#![cfg(feature = "std")]

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};

use protocol::announce::{to_json, AnnounceBuilder, MAX_ANNOUNCE};
use protocol::frame::{encode_frame, MAX_MESSAGE, MAX_WIRE};
use protocol::message::{encode_signed_announce, Message};

const SEED: [u8; 32] = [0x5e; 32];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn builders() -> Vec<AnnounceBuilder<'static>> {
    let small = AnnounceBuilder::new("a", "m", "s", "1", "https://x", 0);
    let full = AnnounceBuilder::new(
        "acme",
        "Thermo 2",
        "TH2-000123",
        "1.4.2",
        "https://provision.acme.example/berth/v1",
        u64::MAX,
    )
    .capabilities(&["temperature", "humidity", "relay"])
    .challenge(0x1122_3344_5566_7788)
    .include_public_key(true);
    vec![small, full]
}

fn frame(msg: &[u8]) -> Vec<u8> {
    let mut wire = [0u8; MAX_WIRE];
    let n = encode_frame(msg, &mut wire).unwrap();
    wire[..n].to_vec()
}

/// The generated seeds, per target.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, b) in builders().iter().enumerate() {
        let a = b.sign(&SEED).unwrap();
        let mut buf = [0u8; MAX_ANNOUNCE];
        let n = a.encode(&mut buf).unwrap();
        let announce = buf[..n].to_vec();
        out.push(("announce_decode", format!("announce-{i}"), announce.clone()));
        // Non-canonical twin: indefinite-length map.
        let mut indef = vec![0xbf];
        indef.extend_from_slice(&announce[1..]);
        indef.push(0xff);
        out.push(("announce_decode", format!("indefinite-{i}"), indef));
        out.push((
            "announce_json",
            format!("json-{i}"),
            to_json(&a).unwrap().into_bytes(),
        ));
        let mut msg = [0u8; MAX_MESSAGE];
        let m = encode_signed_announce(b, &SEED, &mut msg).unwrap();
        out.push(("message_decode", format!("announce-{i}"), msg[..m].to_vec()));
        let mut stream = vec![0x13, 0x37, 0x00];
        stream.extend(frame(&msg[..m]));
        out.push((
            "frame_decoder",
            format!("garbage-then-announce-{i}"),
            stream,
        ));
    }
    for (name, m) in [
        ("hello", Message::Hello { nonce: 42 }),
        ("ack", Message::Ack { counter: 7 }),
    ] {
        let mut buf = [0u8; 16];
        let n = m.encode(&mut buf).unwrap();
        out.push(("message_decode", name.to_string(), buf[..n].to_vec()));
        out.push(("frame_decoder", name.to_string(), frame(&buf[..n])));
    }
    let mut bad_crc = frame(b"\x82\x00\x05");
    bad_crc[2] ^= 0x40;
    out.push(("frame_decoder", "bad-crc".into(), bad_crc));
    out
}

#[test]
fn seed_corpus_is_current() {
    let bless = std::env::var_os("BERTH_BLESS").is_some();
    for (target, name, bytes) in seeds() {
        let path = corpus_dir(target).join(&name);
        if bless {
            std::fs::create_dir_all(corpus_dir(target)).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let on_disk = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("read {}: {e} (BERTH_BLESS=1 regenerates)", path.display()));
        assert_eq!(
            on_disk,
            bytes,
            "{} is stale (BERTH_BLESS=1 regenerates)",
            path.display()
        );
    }
}

#[test]
fn corpus_passes_the_fuzz_checks() {
    type Check = fn(&[u8]);
    let targets: [(&str, Check); 4] = [
        ("announce_decode", checks::announce_decode),
        ("message_decode", checks::message_decode),
        ("frame_decoder", checks::frame_decoder),
        ("announce_json", checks::announce_json),
    ];
    for (target, check) in targets {
        let dir = corpus_dir(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            // Every input also goes through every other check: the
            // decoders must survive all of it.
            for (_, other) in targets {
                other(&data);
            }
            check(&data);
            n += 1;
        }
        assert!(n > 0, "{} is empty", dir.display());
    }
}

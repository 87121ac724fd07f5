//! What every fuzz target asserts about one input; shared with the stable
//! test that replays the seed corpus (`protocol/tests/fuzz_corpus.rs`).
//! Each function panics on a property violation, which is the bug report.

// Each includer uses only some of these.
#![allow(dead_code)]

use protocol::announce::{Announce, MAX_ANNOUNCE};
use protocol::frame::{encode_frame, FrameDecoder, MAX_FRAME, MAX_WIRE};
use protocol::message::Message;

/// A decoded announce re-encodes to exactly its input (canonical, and no
/// two byte strings decode to the same announce).
pub fn announce_decode(data: &[u8]) {
    if let Ok(a) = Announce::decode(data) {
        let mut out = [0u8; MAX_ANNOUNCE];
        let n = match a.encode(&mut out) {
            Ok(n) => n,
            Err(e) => panic!("decoded announce does not encode: {e}"),
        };
        assert_eq!(&out[..n], data, "decoded announce re-encodes differently");
    }
}

/// Same for serial messages.
pub fn message_decode(data: &[u8]) {
    if let Ok(m) = Message::decode(data) {
        let mut out = [0u8; MAX_FRAME];
        let n = match m.encode(&mut out) {
            Ok(n) => n,
            Err(e) => panic!("decoded message does not encode: {e}"),
        };
        assert_eq!(&out[..n], data, "decoded message re-encodes differently");
    }
}

/// Any byte stream: frames come out bounded, and a delimiter followed by a
/// good frame always yields that frame.
pub fn frame_decoder(data: &[u8]) {
    let mut dec = FrameDecoder::<MAX_FRAME>::new();
    for &b in data {
        if let Some(Ok(frame)) = dec.push(b) {
            assert!(frame.len() + 4 <= MAX_FRAME);
            message_decode(frame);
        }
    }
    let probe = [0x82, 0x00, 0x05];
    let mut wire = [0u8; MAX_WIRE];
    let n = match encode_frame(&probe, &mut wire) {
        Ok(n) => n,
        Err(e) => panic!("cannot frame the probe: {e}"),
    };
    let mut last = None;
    for &b in core::iter::once(&0u8).chain(&wire[..n]) {
        if let Some(r) = dec.push(b) {
            last = Some(r.map(<[u8]>::to_vec));
        }
    }
    assert_eq!(last, Some(Ok(probe.to_vec())), "decoder did not recover");
}

/// The JSON form: anything accepted converts to a valid CBOR announce that
/// decodes back to the same fields.
pub fn announce_json(data: &[u8]) {
    if let Ok(o) = protocol::announce::from_json(data) {
        let cbor = match o.to_cbor() {
            Ok(c) => c,
            Err(e) => panic!("accepted json does not encode: {e}"),
        };
        match Announce::decode(&cbor) {
            Ok(a) => assert_eq!(protocol::OwnedAnnounce::from(&a), o),
            Err(e) => panic!("json-derived cbor does not decode: {e}"),
        };
    }
}

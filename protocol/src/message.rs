//! The messages of the serial handshake, each carried in one frame.
//!
//! A message is a CBOR array of two items, `[kind, body]`:
//!
//! | kind | message | direction | body |
//! | --- | --- | --- | --- |
//! | 0 | `Hello` | gateway → device | nonce (uint64): echo it as the announce's challenge |
//! | 1 | `Announce` | device → gateway | the announce map |
//! | 2 | `Ack` | gateway → device | the counter of the announce received |
//!
//! Like the announce, messages must be canonical; unknown kinds are refused.
//!
//! The gateway's side of the handshake is a few I/O-free helpers:
//! [`hello_frame`] and [`ack_frame`] give the bytes to write,
//! [`check_challenge`] and [`check_counter`] judge an announce received
//! (after [`crate::announce::verify`] where the vendor's key is known).

use minicbor::{Decoder, Encoder};

use crate::announce::{Announce, AnnounceBuilder, DecodeError, EncodeError, MAX_ANNOUNCE};
use crate::cbor::{CompareWriter, SliceWriter};
use crate::frame::{encode_frame, max_encoded_len, FrameError, DELIMITER, MAX_MESSAGE};

/// Message kinds, the first item of the array.
pub mod kind {
    pub const HELLO: u8 = 0;
    pub const ANNOUNCE: u8 = 1;
    pub const ACK: u8 = 2;
}

/// Bytes before the announce map in an `Announce` message.
pub const ANNOUNCE_HEADER: [u8; 2] = [0x82, kind::ANNOUNCE];

// Every announce fits a frame.
const _: () = assert!(ANNOUNCE_HEADER.len() + MAX_ANNOUNCE <= MAX_MESSAGE);

/// One serial message.
// The announce variant is a few hundred bytes and the others a word, but
// boxing needs an allocator the device side does not have; a message lives
// briefly on the stack.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// The gateway asks the device to announce itself, echoing `nonce`.
    Hello { nonce: u64 },
    /// The device's announce.
    Announce(Announce<'a>),
    /// The gateway has the announce with this counter; the device may stop
    /// repeating it.
    Ack { counter: u64 },
}

impl<'a> Message<'a> {
    /// Decodes one canonical message filling `buf` exactly.
    pub fn decode(buf: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        if buf.len() > MAX_MESSAGE {
            return Err(DecodeError::TooLarge {
                len: buf.len(),
                max: MAX_MESSAGE,
            });
        }
        let mut d = Decoder::new(buf);
        match d.array()? {
            Some(2) => {}
            _ => return Err(DecodeError::NonCanonical { at: 0 }),
        }
        let k = d.u64()?;
        if d.position() != 2 {
            return Err(DecodeError::NonCanonical { at: 1 });
        }
        let msg = match u8::try_from(k) {
            Ok(kind::ANNOUNCE) => return Ok(Message::Announce(Announce::decode(&buf[2..])?)),
            Ok(kind::HELLO) => Message::Hello { nonce: d.u64()? },
            Ok(kind::ACK) => Message::Ack { counter: d.u64()? },
            _ => return Err(DecodeError::UnknownMessage { kind: k }),
        };
        if d.position() != buf.len() {
            return Err(DecodeError::TrailingBytes {
                extra: buf.len() - d.position(),
            });
        }
        let mut cmp = CompareWriter::new(buf);
        if msg.encode_small(&mut Encoder::new(&mut cmp)).is_err() || !cmp.finished() {
            return Err(DecodeError::NonCanonical { at: cmp.position() });
        }
        Ok(msg)
    }

    /// Encodes the message canonically into `out`; returns the length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let have = out.len();
        let small = EncodeError::BufferTooSmall { have };
        if let Message::Announce(a) = self {
            let (head, rest) = out
                .split_at_mut_checked(ANNOUNCE_HEADER.len())
                .ok_or(small)?;
            head.copy_from_slice(&ANNOUNCE_HEADER);
            return Ok(ANNOUNCE_HEADER.len() + a.encode(rest)?);
        }
        let mut w = SliceWriter::new(out);
        self.encode_small(&mut Encoder::new(&mut w))
            .map_err(|_| small)?;
        Ok(w.position())
    }

    fn encode_small<W: minicbor::encode::Write>(
        &self,
        e: &mut Encoder<W>,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        match self {
            Message::Hello { nonce } => e.array(2)?.u8(kind::HELLO)?.u64(*nonce)?.ok(),
            Message::Ack { counter } => e.array(2)?.u8(kind::ACK)?.u64(*counter)?.ok(),
            // Announces are encoded by `encode`, never through here.
            Message::Announce(_) => Err(minicbor::encode::Error::message(
                "announce is not a small message",
            )),
        }
    }
}

/// The device path: signs `builder` with `seed` and writes a complete
/// `Announce` message into `out` without any other buffer. `out` needs only
/// the message's length; [`crate::frame::MAX_MESSAGE`] always suffices.
pub fn encode_signed_announce(
    builder: &AnnounceBuilder<'_>,
    seed: &[u8; 32],
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let have = out.len();
    let (head, rest) = out
        .split_at_mut_checked(ANNOUNCE_HEADER.len())
        .ok_or(EncodeError::BufferTooSmall { have })?;
    head.copy_from_slice(&ANNOUNCE_HEADER);
    Ok(ANNOUNCE_HEADER.len() + builder.encode_signed(seed, rest)?)
}

/// Longest `Hello` or `Ack` message: array header, kind, 9-byte uint.
const SMALL_MESSAGE_LEN: usize = 11;
/// Longest output of [`hello_frame`].
pub const HELLO_FRAME_LEN: usize = 1 + max_encoded_len(SMALL_MESSAGE_LEN);
/// Longest output of [`ack_frame`].
pub const ACK_FRAME_LEN: usize = max_encoded_len(SMALL_MESSAGE_LEN);

/// Why an announce is not an acceptable answer to the gateway's `Hello`,
/// or is a replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("announce answers challenge {got:?}, the gateway sent {sent:#018x}")]
    WrongChallenge { sent: u64, got: Option<u64> },
    #[error(
        "announce counter {counter} is not above {last}, the last one accepted from this device"
    )]
    Replayed { counter: u64, last: u64 },
}

/// The bytes a gateway writes to start the handshake: a delimiter (which
/// flushes whatever partial frame the device holds) and the framed
/// `Hello { nonce }`. [`HELLO_FRAME_LEN`] bytes always suffice.
pub fn hello_frame(nonce: u64, out: &mut [u8]) -> Result<usize, FrameError> {
    let mut msg = [0u8; SMALL_MESSAGE_LEN];
    let n = Message::Hello { nonce }
        .encode(&mut msg)
        .map_err(|_| FrameError::BufferTooSmall {
            need: SMALL_MESSAGE_LEN,
            have: SMALL_MESSAGE_LEN,
        })?;
    let have = out.len();
    let (first, rest) = out.split_first_mut().ok_or(FrameError::BufferTooSmall {
        need: HELLO_FRAME_LEN,
        have,
    })?;
    *first = DELIMITER;
    Ok(1 + encode_frame(&msg[..n], rest)?)
}

/// The framed `Ack { counter }`. [`ACK_FRAME_LEN`] bytes always suffice.
pub fn ack_frame(counter: u64, out: &mut [u8]) -> Result<usize, FrameError> {
    let mut msg = [0u8; SMALL_MESSAGE_LEN];
    let n = Message::Ack { counter }
        .encode(&mut msg)
        .map_err(|_| FrameError::BufferTooSmall {
            need: SMALL_MESSAGE_LEN,
            have: SMALL_MESSAGE_LEN,
        })?;
    encode_frame(&msg[..n], out)
}

/// Checks that `announce` answers the `Hello` whose nonce was `sent`.
pub fn check_challenge(announce: &Announce<'_>, sent: u64) -> Result<(), HandshakeError> {
    match announce.challenge {
        Some(got) if got == sent => Ok(()),
        got => Err(HandshakeError::WrongChallenge { sent, got }),
    }
}

/// Checks that `counter` is above the last one accepted from the same
/// vendor and serial (`None` when none was). Only meaningful once the
/// announce's signature has been verified.
pub fn check_counter(counter: u64, last_accepted: Option<u64>) -> Result<(), HandshakeError> {
    match last_accepted {
        Some(last) if counter <= last => Err(HandshakeError::Replayed { counter, last }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameDecoder;

    const SEED: [u8; 32] = [7; 32];

    #[test]
    fn gateway_helpers() {
        assert_eq!((HELLO_FRAME_LEN, ACK_FRAME_LEN), (18, 17));
        let mut out = [0u8; HELLO_FRAME_LEN];
        let n = hello_frame(u64::MAX, &mut out).unwrap();
        assert_eq!(out[0], 0);
        // A device needs only 15 bytes to receive either (docs/announce.md).
        let mut d = FrameDecoder::<15>::new();
        let mut got = false;
        for &b in &out[..n] {
            if let Some(r) = d.push(b) {
                got = Message::decode(r.unwrap()).unwrap() == Message::Hello { nonce: u64::MAX };
            }
        }
        assert!(got);
        let mut ack = [0u8; ACK_FRAME_LEN];
        let n = ack_frame(u64::MAX, &mut ack).unwrap();
        let mut got = false;
        for &b in &ack[..n] {
            if let Some(r) = d.push(b) {
                got = Message::decode(r.unwrap()).unwrap() == Message::Ack { counter: u64::MAX };
            }
        }
        assert!(got);
        assert!(hello_frame(1, &mut [0u8; 4]).is_err());

        let a = AnnounceBuilder::new("acme", "M", "S", "1", "https://a.example", 10)
            .challenge(5)
            .sign(&SEED)
            .unwrap();
        assert_eq!(check_challenge(&a, 5), Ok(()));
        assert_eq!(
            check_challenge(&a, 6),
            Err(HandshakeError::WrongChallenge {
                sent: 6,
                got: Some(5)
            })
        );
        assert_eq!(check_counter(10, None), Ok(()));
        assert_eq!(check_counter(10, Some(9)), Ok(()));
        assert_eq!(
            check_counter(10, Some(10)),
            Err(HandshakeError::Replayed {
                counter: 10,
                last: 10
            })
        );
    }

    #[test]
    fn hello_and_ack_round_trip() {
        for m in [
            Message::Hello { nonce: 0 },
            Message::Hello { nonce: u64::MAX },
            Message::Ack { counter: 1 << 40 },
        ] {
            let mut buf = [0u8; 16];
            let n = m.encode(&mut buf).unwrap();
            assert_eq!(Message::decode(&buf[..n]).unwrap(), m);
        }
        let mut buf = [0u8; 16];
        let n = Message::Hello { nonce: 5 }.encode(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[0x82, 0x00, 0x05]);
    }

    #[test]
    fn announce_message_round_trip_and_device_path_agree() {
        let b = AnnounceBuilder::new("acme", "Meter", "SN1", "1.0", "https://p.acme.example", 3)
            .challenge(99);
        let mut out = [0u8; 600];
        let n = encode_signed_announce(&b, &SEED, &mut out).unwrap();
        let Message::Announce(a) = Message::decode(&out[..n]).unwrap() else {
            panic!("not an announce")
        };
        assert_eq!(a.challenge, Some(99));
        let mut again = [0u8; 600];
        let m = Message::Announce(a).encode(&mut again).unwrap();
        assert_eq!(&again[..m], &out[..n]);
    }

    #[test]
    fn rejects_unknown_kind_bad_shape_and_non_canonical() {
        assert!(matches!(
            Message::decode(&[0x82, 0x07, 0x01]),
            Err(DecodeError::UnknownMessage { kind: 7 })
        ));
        assert!(matches!(
            Message::decode(&[0x83, 0x00, 0x01, 0x01]),
            Err(DecodeError::NonCanonical { .. })
        ));
        // Non-minimal nonce: 5 as a one-byte-argument uint.
        assert!(matches!(
            Message::decode(&[0x82, 0x00, 0x18, 0x05]),
            Err(DecodeError::NonCanonical { at: 2 })
        ));
        // Non-minimal kind.
        assert!(matches!(
            Message::decode(&[0x82, 0x18, 0x00, 0x05]),
            Err(DecodeError::NonCanonical { at: 1 })
        ));
        assert!(matches!(
            Message::decode(&[0x82, 0x00, 0x05, 0x00]),
            Err(DecodeError::TrailingBytes { extra: 1 })
        ));
        assert!(matches!(
            Message::decode(&[0x82, 0x00]),
            Err(DecodeError::Cbor(_))
        ));
        assert!(matches!(
            Message::decode(&[0x9f, 0x00, 0x05, 0xff]),
            Err(DecodeError::NonCanonical { at: 0 })
        ));
        let big = [0u8; MAX_MESSAGE + 1];
        assert!(matches!(
            Message::decode(&big),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn encode_into_small_buffer_fails() {
        let mut buf = [0u8; 2];
        assert_eq!(
            Message::Hello { nonce: 1 << 20 }.encode(&mut buf),
            Err(EncodeError::BufferTooSmall { have: 2 })
        );
    }
}

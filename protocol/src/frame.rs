//! Serial framing: each message travels as
//! `COBS(message ‖ CRC-32(message) little-endian) ‖ 0x00`.
//!
//! COBS (Consistent Overhead Byte Stuffing) removes every zero byte from the
//! frame so that 0x00 can only mean "end of frame": a receiver that starts
//! in the middle of a stream, or sees line noise, loses at most the frame in
//! progress and is back in step at the next zero. The CRC is
//! CRC-32/ISO-HDLC (the one of Ethernet and zlib: polynomial 0x04C11DB7
//! reflected, init 0xFFFFFFFF, xorout 0xFFFFFFFF; check value 0xCBF43926 for
//! "123456789").
//!
//! [`FrameDecoder`] takes bytes one at a time as they arrive, holds at most
//! `N` decoded bytes, and hands back each complete frame's message, or one
//! error per bad frame. Empty frames (two zeros in a row) are idle fill and
//! are skipped silently, so a sender may start with a zero to flush a
//! receiver's partial frame.

/// Largest decoded frame (message plus CRC) Berth devices send or accept.
pub const MAX_FRAME: usize = 512;
/// Bytes of CRC at the end of each decoded frame.
pub const CRC_LEN: usize = 4;
/// Largest message that fits in a [`MAX_FRAME`] frame.
pub const MAX_MESSAGE: usize = MAX_FRAME - CRC_LEN;
/// Bytes on the wire for the largest frame, delimiter included.
pub const MAX_WIRE: usize = max_encoded_len(MAX_MESSAGE);
/// The frame delimiter.
pub const DELIMITER: u8 = 0;

/// Bytes on the wire for a message of `msg_len` bytes, delimiter included.
pub const fn max_encoded_len(msg_len: usize) -> usize {
    let n = msg_len + CRC_LEN;
    // One code byte per started run of 254 data bytes, plus the delimiter.
    n + n / 254 + 1 + 1
}

/// Why a frame was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame exceeds {max} decoded bytes; skipped to the next delimiter")]
    Oversize { max: usize },
    #[error(
        "frame crc mismatch: frame carries {carried:#010x}, its content gives {computed:#010x}"
    )]
    BadCrc { carried: u32, computed: u32 },
    #[error("bad cobs: a block announced {want} more bytes when the frame ended")]
    BadCobs { want: u8 },
    #[error("frame of {len} bytes is shorter than its {CRC_LEN}-byte crc")]
    TooShort { len: usize },
    #[error("message of {len} bytes exceeds the frame limit of {max}")]
    MessageTooLarge { len: usize, max: usize },
    #[error("output buffer of {have} bytes is too small, {need} needed")]
    BufferTooSmall { need: usize, have: usize },
}

/// CRC-32/ISO-HDLC of `data`. Bitwise: no table, so it costs no flash on a
/// device; frames are short.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

/// Frames `msg` into `out`: COBS of message and CRC, then the delimiter.
/// Returns the number of bytes written. `out` needs
/// [`max_encoded_len`]`(msg.len())` bytes.
pub fn encode_frame(msg: &[u8], out: &mut [u8]) -> Result<usize, FrameError> {
    let need = max_encoded_len(msg.len());
    if msg.len() <= MAX_MESSAGE && out.len() < need {
        return Err(FrameError::BufferTooSmall {
            need,
            have: out.len(),
        });
    }
    let mut at = 0;
    write_frame(msg, |chunk| {
        // Cannot fail: `need` bytes were checked above and the frame is at
        // most that long; a miss would only cut the frame short.
        let end = at + chunk.len();
        if let Some(dst) = out.get_mut(at..end) {
            dst.copy_from_slice(chunk);
        }
        at = end;
        Ok::<(), FrameError>(())
    })?;
    Ok(at)
}

/// Frames `msg` straight to a writer (a UART, a socket), in pieces, with
/// no output buffer: a device needs RAM only for the message itself. Writes
/// exactly the bytes [`encode_frame`] would.
pub fn write_frame<E>(msg: &[u8], mut write: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E>
where
    E: From<FrameError>,
{
    if msg.len() > MAX_MESSAGE {
        return Err(FrameError::MessageTooLarge {
            len: msg.len(),
            max: MAX_MESSAGE,
        }
        .into());
    }
    let crc = crc32(msg).to_le_bytes();
    let total = msg.len() + CRC_LEN;
    // The bytes to stuff are msg ‖ crc; `span` hands out a run of them as
    // at most two slices, since a run may straddle the two.
    let span = |from: usize, to: usize| -> (&[u8], &[u8]) {
        let split = msg.len();
        let a = msg.get(from.min(split)..to.min(split)).unwrap_or_default();
        let b = crc
            .get(from.max(split) - split..to.max(split) - split)
            .unwrap_or_default();
        (a, b)
    };
    let byte = |i: usize| {
        if i < msg.len() {
            msg[i]
        } else {
            crc[i - msg.len()]
        }
    };
    // Each run of non-zero bytes (between zeros, or the ends) goes out as
    // full 254-byte blocks with code 0xFF, then one block with code
    // `rest + 1` whose end stands for the zero that follows the run.
    let mut i = 0;
    loop {
        let mut end = i;
        while end < total && byte(end) != 0 {
            end += 1;
        }
        let mut from = i;
        while end - from >= 254 {
            let (a, b) = span(from, from + 254);
            write(&[0xff])?;
            write(a)?;
            write(b)?;
            from += 254;
        }
        let (a, b) = span(from, end);
        write(&[(end - from) as u8 + 1])?;
        write(a)?;
        write(b)?;
        if end == total {
            break;
        }
        // Skip the zero the block code stood for.
        i = end + 1;
    }
    write(&[DELIMITER])
}

/// Streaming frame decoder holding at most `N` decoded bytes (message plus
/// CRC); `FrameDecoder::<MAX_FRAME>` accepts every Berth frame.
#[derive(Clone, Debug)]
pub struct FrameDecoder<const N: usize> {
    buf: [u8; N],
    len: usize,
    /// Data bytes still due in the current COBS block.
    remaining: u8,
    /// The current block ends in an implied zero (its code was below 0xFF),
    /// written only once another block follows.
    zero_pending: bool,
    /// Any byte of this frame seen since the last delimiter.
    started: bool,
    /// The frame overflowed: drop bytes until the next delimiter.
    skipping: bool,
}

impl<const N: usize> Default for FrameDecoder<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> FrameDecoder<N> {
    pub fn new() -> Self {
        const { assert!(N > CRC_LEN, "a frame buffer must hold more than the crc") };
        FrameDecoder {
            buf: [0; N],
            len: 0,
            remaining: 0,
            zero_pending: false,
            started: false,
            skipping: false,
        }
    }

    /// Takes the next byte from the line. Returns `Some(Ok(message))` when
    /// it completes a good frame, `Some(Err(..))` once for each bad frame,
    /// `None` otherwise. After an error the decoder is ready for the next
    /// frame by itself.
    pub fn push(&mut self, byte: u8) -> Option<Result<&[u8], FrameError>> {
        if byte == DELIMITER {
            return self.end_frame();
        }
        if self.skipping {
            return None;
        }
        self.started = true;
        if self.remaining == 0 {
            // A code byte: the previous block's implied zero is now real.
            if self.zero_pending && !self.put(0) {
                return Some(Err(self.overflow()));
            }
            self.remaining = byte - 1;
            self.zero_pending = byte != 0xff;
        } else {
            if !self.put(byte) {
                return Some(Err(self.overflow()));
            }
            self.remaining -= 1;
        }
        None
    }

    /// Forgets the frame in progress.
    pub fn reset(&mut self) {
        self.len = 0;
        self.remaining = 0;
        self.zero_pending = false;
        self.started = false;
        self.skipping = false;
    }

    fn put(&mut self, b: u8) -> bool {
        match self.buf.get_mut(self.len) {
            Some(slot) => {
                *slot = b;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    fn overflow(&mut self) -> FrameError {
        self.reset();
        self.skipping = true;
        FrameError::Oversize { max: N }
    }

    fn end_frame(&mut self) -> Option<Result<&[u8], FrameError>> {
        let (started, skipping, remaining, len) =
            (self.started, self.skipping, self.remaining, self.len);
        self.reset();
        if skipping || !started {
            // Overflow was already reported; an empty frame is idle fill.
            return None;
        }
        if remaining != 0 {
            return Some(Err(FrameError::BadCobs { want: remaining }));
        }
        if len < CRC_LEN {
            return Some(Err(FrameError::TooShort { len }));
        }
        let (msg, crc) = self.buf[..len].split_at(len - CRC_LEN);
        let carried = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = crc32(msg);
        if carried != computed {
            return Some(Err(FrameError::BadCrc { carried, computed }));
        }
        Some(Ok(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(msg: &[u8]) -> ([u8; MAX_WIRE], usize) {
        let mut out = [0u8; MAX_WIRE];
        let n = encode_frame(msg, &mut out).unwrap();
        (out, n)
    }

    /// Feeds `wire` and collects every result, messages copied out.
    fn feed<const N: usize>(
        d: &mut FrameDecoder<N>,
        wire: &[u8],
    ) -> std::vec::Vec<Result<std::vec::Vec<u8>, FrameError>> {
        let mut got = std::vec::Vec::new();
        for &b in wire {
            if let Some(r) = d.push(b) {
                got.push(r.map(|m| m.to_vec()));
            }
        }
        got
    }

    extern crate std;

    /// The textbook COBS encoder, buffered, as a reference.
    fn reference(msg: &[u8]) -> std::vec::Vec<u8> {
        let mut data = msg.to_vec();
        data.extend_from_slice(&crc32(msg).to_le_bytes());
        let mut out = std::vec![0u8];
        let (mut code_at, mut code) = (0, 1u8);
        for b in data {
            if b == 0 {
                out[code_at] = code;
                code_at = out.len();
                out.push(0);
                code = 1;
            } else {
                out.push(b);
                code += 1;
                if code == 0xff {
                    out[code_at] = code;
                    code_at = out.len();
                    out.push(0);
                    code = 1;
                }
            }
        }
        out[code_at] = code;
        out.push(0);
        out
    }

    #[test]
    fn streaming_encoder_matches_reference() {
        for len in [0usize, 1, 3, 253, 254, 255, 256, 400, 507, 508] {
            for zero_every in [0usize, 1, 2, 5, 254, 255] {
                let msg: std::vec::Vec<u8> = (0..len)
                    .map(|i| {
                        if zero_every > 0 && i % zero_every == zero_every - 1 {
                            0
                        } else {
                            (i % 255) as u8 + 1
                        }
                    })
                    .collect();
                let (out, n) = frame(&msg);
                assert_eq!(
                    &out[..n],
                    reference(&msg).as_slice(),
                    "len {len} zero every {zero_every}"
                );
                let mut pieces = std::vec::Vec::new();
                write_frame(&msg, |c| {
                    pieces.extend_from_slice(c);
                    Ok::<(), FrameError>(())
                })
                .unwrap();
                assert_eq!(pieces, &out[..n]);
            }
        }
    }

    #[test]
    fn crc_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn cobs_known_vectors() {
        // Payload 00 is COBS 01 01; with its CRC appended the layout is
        // code bytes around the CRC bytes.
        let (out, n) = frame(&[0x00]);
        let crc = crc32(&[0]).to_le_bytes();
        assert!(
            crc.iter().all(|&b| b != 0),
            "vector assumes a zero-free crc"
        );
        assert_eq!(
            &out[..n],
            &[0x01, 0x05, crc[0], crc[1], crc[2], crc[3], 0x00]
        );
        // No zero anywhere but the delimiter.
        let (out, n) = frame(&[0u8; 300]);
        assert!(out[..n - 1].iter().all(|&b| b != 0));
        assert_eq!(out[n - 1], 0);
    }

    #[test]
    fn round_trip_lengths_around_block_boundaries() {
        let mut d = FrameDecoder::<MAX_FRAME>::new();
        for len in [0usize, 1, 2, 250, 251, 252, 253, 254, 255, 300, 507, 508] {
            for fill in [0u8, 1, 0xff] {
                let msg: std::vec::Vec<u8> = (0..len)
                    .map(|i| {
                        if i % 7 == 3 {
                            fill
                        } else {
                            (i % 251) as u8 + 1
                        }
                    })
                    .collect();
                let (out, n) = frame(&msg);
                assert!(n <= max_encoded_len(len));
                let got = feed(&mut d, &out[..n]);
                assert_eq!(got, [Ok(msg.clone())], "len {len} fill {fill}");
            }
        }
    }

    #[test]
    fn bad_crc_is_reported_and_next_frame_decodes() {
        let (mut out, n) = frame(b"hello");
        out[2] ^= 0x01; // 'e' -> 'd': still non-zero, so COBS stays valid
        let (good, m) = frame(b"again");
        let mut wire = out[..n].to_vec();
        wire.extend_from_slice(&good[..m]);
        let mut d = FrameDecoder::<64>::new();
        let got = feed(&mut d, &wire);
        assert_eq!(got.len(), 2);
        assert!(matches!(got[0], Err(FrameError::BadCrc { .. })), "{got:?}");
        assert_eq!(got[1], Ok(b"again".to_vec()));
    }

    #[test]
    fn oversize_reported_once_then_recovers() {
        let msg = [7u8; 100];
        let (out, n) = frame(&msg);
        let mut d = FrameDecoder::<32>::new();
        let got = feed(&mut d, &out[..n]);
        assert_eq!(got, [Err(FrameError::Oversize { max: 32 })]);
        let (out, n) = frame(b"ok");
        assert_eq!(feed(&mut d, &out[..n]), [Ok(b"ok".to_vec())]);
    }

    #[test]
    fn oversize_garbage_without_delimiter_stays_bounded() {
        let mut d = FrameDecoder::<16>::new();
        let mut errors = 0;
        for _ in 0..10_000 {
            if let Some(r) = d.push(0x55) {
                assert_eq!(r, Err(FrameError::Oversize { max: 16 }));
                errors += 1;
            }
        }
        assert_eq!(errors, 1);
        assert_eq!(d.push(0), None);
        let (out, n) = frame(b"x");
        assert_eq!(feed(&mut d, &out[..n]), [Ok(b"x".to_vec())]);
    }

    #[test]
    fn truncated_block_is_bad_cobs() {
        // Code 0x05 promises four data bytes; only two come.
        let mut d = FrameDecoder::<64>::new();
        let got = feed(&mut d, &[0x05, 1, 2, 0x00]);
        assert_eq!(got, [Err(FrameError::BadCobs { want: 2 })]);
    }

    #[test]
    fn short_frame_is_too_short() {
        let mut d = FrameDecoder::<64>::new();
        assert_eq!(
            feed(&mut d, &[0x03, 1, 2, 0x00]),
            [Err(FrameError::TooShort { len: 2 })]
        );
    }

    #[test]
    fn garbage_then_frame_resynchronises() {
        let (out, n) = frame(b"payload");
        let mut wire = std::vec![0x13, 0x37, 0xff, 0x42];
        wire.push(0);
        wire.extend_from_slice(&out[..n]);
        let mut d = FrameDecoder::<64>::new();
        let got = feed(&mut d, &wire);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].is_err());
        assert_eq!(got[1], Ok(b"payload".to_vec()));
    }

    #[test]
    fn empty_frames_are_idle_fill() {
        let mut d = FrameDecoder::<64>::new();
        assert!(feed(&mut d, &[0, 0, 0]).is_empty());
    }

    #[test]
    fn encode_errors() {
        let mut small = [0u8; 8];
        assert_eq!(
            encode_frame(b"hello", &mut small),
            Err(FrameError::BufferTooSmall { need: 11, have: 8 })
        );
        let big = [1u8; MAX_MESSAGE + 1];
        let mut out = [0u8; MAX_WIRE + 8];
        assert_eq!(
            encode_frame(&big, &mut out),
            Err(FrameError::MessageTooLarge {
                len: MAX_MESSAGE + 1,
                max: MAX_MESSAGE
            })
        );
    }

    #[test]
    fn largest_frame_fits_max_frame_decoder() {
        let msg = [0xabu8; MAX_MESSAGE];
        let (out, n) = frame(&msg);
        assert!(n <= MAX_WIRE);
        let mut d = FrameDecoder::<MAX_FRAME>::new();
        assert_eq!(feed(&mut d, &out[..n]), [Ok(msg.to_vec())]);
    }
}

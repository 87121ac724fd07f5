//! One serial port: open it exclusively, speak the announce handshake,
//! report what answers, and notice when it goes away.
//!
//! Opening goes through `tokio-serial` (serialport's `TTYPort::open`):
//! `O_NOCTTY`, the TIOCEXCL ioctl (tty_ioctl(4)) and `flock(LOCK_EX |
//! LOCK_NB)`, so a second opener — Berth or another program that locks —
//! is refused while the port is ours; termios raw at the rule's baud. DTR
//! is left as the kernel set it on open (`preserve_dtr_on_open`): no
//! explicit toggling, which resets some boards.
//!
//! The handshake ([`Handshake`], I/O free): send `Hello{nonce}` in a frame,
//! then read frames; an `Announce` whose challenge is our nonce identifies
//! the device. Hellos repeat until one is answered. Bad frames, bad
//! messages and announces with another nonce are dropped and counted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::frame::{encode_frame, max_encoded_len, FrameDecoder, FrameError, MAX_FRAME};
use protocol::message::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_serial::SerialPortBuilderExt;

use crate::announce::KeyRing;
use crate::event::{DropReason, Identity, Observation, Transport, UsbIds};
use crate::merger::Emitter;

/// Why a port could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("cannot open serial port {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("serial port {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Maps a frame error onto the drop reason it is counted under.
pub fn frame_drop(e: &FrameError) -> DropReason {
    match e {
        FrameError::Oversize { .. } | FrameError::MessageTooLarge { .. } => DropReason::Oversize,
        FrameError::BadCrc { .. } => DropReason::BadCrc,
        _ => DropReason::BadFrame,
    }
}

/// The I/O-free handshake state of one port.
#[derive(Debug)]
pub struct Handshake {
    nonce: u64,
    decoder: FrameDecoder<MAX_FRAME>,
    keys: KeyRing,
    identified: bool,
}

/// What bytes from the port amounted to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A valid announce answering our nonce.
    Announce(Box<Identity>, Vec<u8>),
    Dropped(DropReason),
}

impl Handshake {
    pub fn new(nonce: u64, keys: KeyRing) -> Handshake {
        Handshake {
            nonce,
            decoder: FrameDecoder::new(),
            keys,
            identified: false,
        }
    }

    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// Whether an announce answered our nonce yet.
    pub fn identified(&self) -> bool {
        self.identified
    }

    /// The framed `Hello{nonce}` to send.
    pub fn hello(&self) -> Vec<u8> {
        let mut msg = [0u8; 16];
        let mut out = vec![0u8; max_encoded_len(16)];
        // Cannot fail: a Hello is at most 11 bytes and the frame buffer is
        // sized for 16; an error would only mean sending nothing.
        let n = Message::Hello { nonce: self.nonce }
            .encode(&mut msg)
            .ok()
            .and_then(|n| encode_frame(&msg[..n], &mut out).ok())
            .unwrap_or(0);
        out.truncate(n);
        out
    }

    /// Feeds bytes read from the port.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Step> {
        let mut steps = Vec::new();
        for &b in bytes {
            let step = match self.decoder.push(b) {
                None => continue,
                Some(Err(e)) => Step::Dropped(frame_drop(&e)),
                Some(Ok(frame)) => match Message::decode(frame) {
                    Err(e) => Step::Dropped(crate::announce::drop_reason(&e)),
                    Ok(Message::Announce(a)) => {
                        if a.challenge != Some(self.nonce) {
                            Step::Dropped(DropReason::BadNonce)
                        } else {
                            match crate::announce::checked(&a, &self.keys) {
                                Ok(c) => {
                                    self.identified = true;
                                    Step::Announce(Box::new(c.identity), frame.to_vec())
                                }
                                Err(r) => Step::Dropped(r),
                            }
                        }
                    }
                    // Hello and Ack go gateway → device; one coming back is
                    // an echo or a confused peer.
                    Ok(_) => Step::Dropped(DropReason::BadFrame),
                },
            };
            steps.push(step);
        }
        steps
    }
}

/// A random nonce, from the standard library's per-process random keys.
pub fn random_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Opens `path` exclusively, raw, at `baud`.
pub fn open(path: &Path, baud: u32) -> Result<tokio_serial::SerialStream, PortError> {
    let name = path.to_string_lossy();
    tokio_serial::new(name, baud)
        .preserve_dtr_on_open()
        .timeout(Duration::from_millis(100))
        .open_native_async()
        .map_err(|e| PortError::Open {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// How one port task runs.
#[derive(Debug, Clone)]
pub struct PortSpec {
    pub path: PathBuf,
    pub baud: u32,
    pub usb: Option<UsbIds>,
    /// Vendor a rule gave the port.
    pub vendor: Option<String>,
    pub hello_every: Duration,
    /// Report a USB-identified port without an announce after this long.
    pub identify_timeout: Duration,
    pub keys: KeyRing,
}

/// Runs one port until it goes away, shutdown, or the merger is gone.
/// Reports Seen after the handshake (or after `identify_timeout` for a
/// port with USB ids), Gone on EOF/HUP or a read error.
pub async fn run_port(
    spec: PortSpec,
    emitter: Emitter,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PortError> {
    let mut port = open(&spec.path, spec.baud)?;
    let address = spec.path.to_string_lossy().into_owned();
    let io_err = |source| PortError::Io {
        path: spec.path.clone(),
        source,
    };
    let mut hs = Handshake::new(random_nonce(), spec.keys.clone());
    port.write_all(&hs.hello()).await.map_err(io_err)?;
    // The next Hello is due a period after this one. (Not `interval` and
    // its first tick: that tick waits for the timer's next millisecond,
    // and a device that answers sooner would wait with it.)
    let mut hello = tokio::time::interval_at(
        tokio::time::Instant::now() + spec.hello_every,
        spec.hello_every,
    );
    let identify = tokio::time::sleep(spec.identify_timeout);
    tokio::pin!(identify);
    let mut reported = false;
    let mut buf = [0u8; 512];
    let base = Identity {
        usb: spec.usb.clone(),
        vendor: spec.vendor.clone(),
        ..Identity::default()
    };
    let result = loop {
        // Cancel-safe: a read that loses the race has read nothing; the
        // timers only wait.
        tokio::select! {
            r = port.read(&mut buf) => {
                let n = match r {
                    Ok(0) => break Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // EIO: the other end hung up (pty master closed, USB
                    // unplugged).
                    Err(e) => {
                        tracing::debug!(port = %address, error = %e, "serial port closed");
                        break Ok(());
                    }
                };
                for step in hs.feed(&buf[..n]) {
                    match step {
                        Step::Dropped(reason) => emitter.drop_input(reason),
                        Step::Announce(mut identity, frame) => {
                            identity.usb = spec.usb.clone();
                            if identity.vendor.is_none() {
                                identity.vendor = spec.vendor.clone();
                            }
                            reported = true;
                            let obs = Observation {
                                transport: Transport::Serial,
                                address: address.clone(),
                                identity: *identity,
                                announce: Some(frame),
                            };
                            if !emitter.seen(obs).await {
                                return Ok(());
                            }
                        }
                    }
                }
            }
            _ = hello.tick(), if !hs.identified() => {
                if let Err(e) = port.write_all(&hs.hello()).await {
                    tracing::debug!(port = %address, error = %e, "hello not sent");
                    break Ok(());
                }
            }
            _ = &mut identify, if !reported && spec.usb.is_some() => {
                reported = true;
                let obs = Observation {
                    transport: Transport::Serial,
                    address: address.clone(),
                    identity: base.clone(),
                    announce: None,
                };
                if !emitter.seen(obs).await {
                    return Ok(());
                }
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break Ok(()); }
            }
        }
    };
    if reported {
        emitter.gone(Transport::Serial, address).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a device sends: `Announce` answering `nonce`, framed.
    pub(crate) fn framed_announce(vendor: &str, serial: &str, nonce: Option<u64>) -> Vec<u8> {
        let a = crate::announce::testing::signed(vendor, serial, "1.0", nonce);
        let mut msg = protocol::message::ANNOUNCE_HEADER.to_vec();
        msg.extend_from_slice(&a);
        let mut out = vec![0u8; max_encoded_len(msg.len())];
        let n = encode_frame(&msg, &mut out).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn hello_is_a_decodable_frame() {
        let hs = Handshake::new(0xdead_beef_0000_0001, KeyRing::default());
        let wire = hs.hello();
        let mut d = FrameDecoder::<MAX_FRAME>::new();
        let mut got = None;
        for b in wire {
            if let Some(r) = d.push(b) {
                got = Some(Message::decode(r.unwrap()).unwrap().clone_hello());
            }
        }
        assert_eq!(got, Some(Some(0xdead_beef_0000_0001)));
    }

    trait HelloNonce {
        fn clone_hello(&self) -> Option<u64>;
    }
    impl HelloNonce for Message<'_> {
        fn clone_hello(&self) -> Option<u64> {
            match self {
                Message::Hello { nonce } => Some(*nonce),
                _ => None,
            }
        }
    }

    #[test]
    fn announce_with_our_nonce_identifies() {
        let mut hs = Handshake::new(77, KeyRing::default());
        let steps = hs.feed(&framed_announce("acme", "S1", Some(77)));
        assert!(
            matches!(&steps[..], [Step::Announce(id, _)] if id.serial_number.as_deref() == Some("S1"))
        );
        assert!(hs.identified());
    }

    #[test]
    fn wrong_or_missing_nonce_and_garbage_are_counted() {
        let mut hs = Handshake::new(77, KeyRing::default());
        assert_eq!(
            hs.feed(&framed_announce("acme", "S1", Some(78))),
            vec![Step::Dropped(DropReason::BadNonce)]
        );
        assert_eq!(
            hs.feed(&framed_announce("acme", "S1", None)),
            vec![Step::Dropped(DropReason::BadNonce)]
        );
        // A flipped byte breaks the CRC.
        let mut f = framed_announce("acme", "S1", Some(77));
        f[10] ^= 0x01;
        let steps = hs.feed(&f);
        assert_eq!(steps.len(), 1);
        assert!(matches!(
            steps[0],
            Step::Dropped(DropReason::BadCrc | DropReason::BadFrame)
        ));
        // Line noise then a good frame: the decoder resynchronises.
        let mut noise = vec![0x55u8; 40];
        noise.push(0);
        noise.extend(framed_announce("acme", "S1", Some(77)));
        let steps = hs.feed(&noise);
        assert!(
            matches!(steps.last(), Some(Step::Announce(..))),
            "{steps:?}"
        );
        // Far too long a frame.
        let mut long = vec![0x11u8; 4 * MAX_FRAME];
        long.push(0);
        assert_eq!(hs.feed(&long), vec![Step::Dropped(DropReason::Oversize)]);
        assert!(!hs.identified() || hs.nonce() == 77);
    }
}

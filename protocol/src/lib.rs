//! Berth's wire formats between end devices, the gateway and vendors.
//!
//! An end device makes itself known with an *announce*: who made it, what it
//! is, where its vendor provisions it, and an Ed25519 signature that only the
//! vendor can check. The announce is one canonical CBOR map; it travels over
//! serial inside COBS frames, over BLE in manufacturer data or a GATT
//! characteristic, and over MQTT as CBOR or JSON. `docs/announce.md` is the
//! language-neutral specification; this crate is its reference.
//!
//! Layout:
//! - [`announce`]: the announce itself: zero-copy decode, canonical encode
//!   into a caller's buffer, signing from a 32-byte seed, verification, and
//!   (feature `std`) the JSON form.
//! - [`frame`]: serial framing: COBS and CRC-32, an encoder that can write
//!   straight to a UART without an output buffer, and a streaming decoder
//!   that resynchronises after garbage.
//! - [`message`]: the messages exchanged on serial (`Hello`, `Announce`,
//!   `Ack`).
//! - [`ble`] and [`mqtt`]: how the announce is carried on those transports.
//!
//! The crate is `no_std` without an allocator when built with
//! `default-features = false`: everything a device needs (building, signing,
//! encoding and framing an announce) works from fixed buffers. Decoding never
//! allocates either, on any feature set; every decoder bounds its input.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod announce;
pub mod ble;
mod cbor;
pub mod frame;
pub mod message;
pub mod mqtt;
#[cfg(feature = "std")]
pub mod provision;

#[cfg(feature = "std")]
pub use announce::OwnedAnnounce;
pub use announce::{Announce, AnnounceBuilder, DecodeError, EncodeError, FieldError, VerifyError};
/// The Ed25519 implementation the signatures use, so callers name the same
/// `VerifyingKey` type.
pub use ed25519_dalek;
pub use frame::{FrameDecoder, FrameError, MAX_FRAME};
pub use message::{HandshakeError, Message};

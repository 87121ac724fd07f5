//! How an announce travels over Bluetooth Low Energy.
//!
//! - Advertising: manufacturer-specific data (AD type 0xFF) with company id
//!   [`COMPANY_ID`]; the bytes after the company id are the announce map,
//!   exactly as [`crate::announce::Announce::encode`] writes it. A signed
//!   announce is larger than a legacy 31-byte advertisement, so this needs
//!   BLE 5 extended advertising, and the announce must fit one AD structure
//!   ([`MAX_MANUFACTURER_DATA`] bytes after the company id).
//! - GATT, for announces too large to advertise or for the challenge:
//!   service [`SERVICE_UUID`]; the gateway writes an 8-byte big-endian nonce
//!   to [`CHALLENGE_UUID`], then reads [`ANNOUNCE_UUID`] (a long read) and
//!   gets an announce map that echoes the nonce as its challenge.

use crate::announce::{Announce, DecodeError, EncodeError};

/// Bluetooth SIG company id under which Berth announces are advertised.
/// 0xFFFF is the id the SIG sets aside for tests and development; a vendor
/// with its own id may configure the gateway to accept that one instead.
pub const COMPANY_ID: u16 = 0xffff;
/// Largest manufacturer data after the company id in one AD structure
/// (length byte 255 minus the AD type and the 2-byte company id).
pub const MAX_MANUFACTURER_DATA: usize = 251;
/// GATT service of a Berth device.
pub const SERVICE_UUID: &str = "5b3e0001-8b1f-4d7e-9a0c-6265727468b1";
/// Readable characteristic holding the current announce map.
pub const ANNOUNCE_UUID: &str = "5b3e0002-8b1f-4d7e-9a0c-6265727468b1";
/// Writable characteristic taking the gateway's 8-byte challenge nonce.
pub const CHALLENGE_UUID: &str = "5b3e0003-8b1f-4d7e-9a0c-6265727468b1";

/// Writes the manufacturer data payload (after the company id) for
/// `announce`; fails if it does not fit one AD structure.
pub fn encode_manufacturer_data(
    announce: &Announce<'_>,
    out: &mut [u8],
) -> Result<usize, EncodeError> {
    let n = announce.encode(out)?;
    if n > MAX_MANUFACTURER_DATA {
        return Err(EncodeError::TooLarge {
            len: n,
            max: MAX_MANUFACTURER_DATA,
        });
    }
    Ok(n)
}

/// Decodes the manufacturer data payload of company [`COMPANY_ID`].
pub fn decode_manufacturer_data(data: &[u8]) -> Result<Announce<'_>, DecodeError> {
    if data.len() > MAX_MANUFACTURER_DATA {
        return Err(DecodeError::TooLarge {
            len: data.len(),
            max: MAX_MANUFACTURER_DATA,
        });
    }
    Announce::decode(data)
}

/// Decodes the 8-byte challenge written to [`CHALLENGE_UUID`].
pub fn decode_challenge(data: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(data).ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::announce::AnnounceBuilder;

    #[test]
    fn small_announce_fits_advertising_and_big_one_does_not() {
        let seed = [1u8; 32];
        let b = AnnounceBuilder::new("acme", "T1", "A1", "1", "https://acme.example/p", 1);
        let a = b.sign(&seed).unwrap();
        let mut out = [0u8; 600];
        let n = encode_manufacturer_data(&a, &mut out).unwrap();
        assert_eq!(decode_manufacturer_data(&out[..n]).unwrap(), a);

        let caps = [
            "cap-aaaaaaaaaaa1",
            "cap-aaaaaaaaaaa2",
            "cap-aaaaaaaaaaa3",
            "cap-aaaaaaaaaaa4",
        ];
        let big = AnnounceBuilder::new(
            "acme-industrial-measurement-corp",
            "Model with a quite long name 123",
            "SERIAL-0123456789-ABCDEFGHIJKLMN",
            "2024.11.03-release-candidate-001",
            "https://provisioning.acme-industrial.example.com/berth/v1/devices",
            1,
        )
        .capabilities(&caps)
        .include_public_key(true)
        .sign(&seed)
        .unwrap();
        assert!(matches!(
            encode_manufacturer_data(&big, &mut out),
            Err(EncodeError::TooLarge {
                max: MAX_MANUFACTURER_DATA,
                ..
            })
        ));
    }

    #[test]
    fn oversized_manufacturer_data_refused_before_parsing() {
        let data = [0u8; MAX_MANUFACTURER_DATA + 1];
        assert!(matches!(
            decode_manufacturer_data(&data),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn challenge_is_big_endian_u64() {
        assert_eq!(decode_challenge(&[0, 0, 0, 0, 0, 0, 1, 2]), Some(0x102));
        assert_eq!(decode_challenge(&[1, 2]), None);
    }
}

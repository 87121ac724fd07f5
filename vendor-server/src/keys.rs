//! The vendor's plan-signing key: an Ed25519 seed in a file (64 hex digits
//! and a newline, mode 0600), and hex helpers for public keys.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use protocol::ed25519_dalek::{SigningKey, VerifyingKey};
use ring::rand::{SecureRandom, SystemRandom};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} holds no Ed25519 seed (expected 64 hex digits or 32 raw bytes)")]
    Format { path: PathBuf },
    #[error("cannot write key file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the system random number generator failed")]
    Random,
    #[error("`{value}` is not an Ed25519 public key: {reason}")]
    PublicKey { value: String, reason: String },
}

/// Reads a seed file.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let seed: [u8; 32] = if bytes.len() == 32 {
        bytes[..].try_into().map_err(|_| KeyError::Format {
            path: path.to_owned(),
        })?
    } else {
        std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| decode_hex(s.trim()))
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or_else(|| KeyError::Format {
                path: path.to_owned(),
            })?
    };
    Ok(SigningKey::from_bytes(&seed))
}

/// Makes a new key and writes its seed to `path`, which must not exist.
pub fn generate_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| KeyError::Random)?;
    let key = SigningKey::from_bytes(&seed);
    let write = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write)?;
    f.write_all(format!("{}\n", encode_hex(&seed)).as_bytes())
        .map_err(write)?;
    f.sync_all().map_err(write)?;
    Ok(key)
}

/// Parses a public key given as 64 hex digits.
pub fn parse_public_key(hex: &str) -> Result<VerifyingKey, KeyError> {
    let bad = |reason: &str| KeyError::PublicKey {
        value: hex.into(),
        reason: reason.into(),
    };
    let bytes = decode_hex(hex.trim()).ok_or_else(|| bad("not hex"))?;
    let bytes = <[u8; 32]>::try_from(bytes).map_err(|_| bad("not 32 bytes"))?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|_| bad("not a curve point"))?;
    if key.is_weak() {
        return Err(bad("a weak (small-order) key"));
    }
    Ok(key)
}

pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vendor.key");
        let k = generate_signing_key(&p).unwrap();
        let l = load_signing_key(&p).unwrap();
        assert_eq!(k.to_bytes(), l.to_bytes());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Never overwrites a key.
        assert!(matches!(
            generate_signing_key(&p),
            Err(KeyError::Write { .. })
        ));
        std::fs::write(&p, "zz").unwrap();
        assert!(matches!(load_signing_key(&p), Err(KeyError::Format { .. })));
        std::fs::write(&p, [5u8; 32]).unwrap();
        assert_eq!(load_signing_key(&p).unwrap().to_bytes(), [5u8; 32]);
    }

    #[test]
    fn public_keys() {
        let k = SigningKey::from_bytes(&[3; 32]).verifying_key();
        assert_eq!(parse_public_key(&encode_hex(k.as_bytes())).unwrap(), k);
        assert!(parse_public_key("abc").is_err());
        assert!(parse_public_key(&"00".repeat(31)).is_err());
        // The identity point is a small-order key.
        let mut id = [0u8; 32];
        id[0] = 1;
        let e = parse_public_key(&encode_hex(&id)).unwrap_err();
        assert!(e.to_string().contains("weak"), "{e}");
        assert_eq!(decode_hex("0aFf"), Some(vec![0x0a, 0xff]));
        assert_eq!(decode_hex("é"), None);
    }
}

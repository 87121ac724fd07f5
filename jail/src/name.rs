//! Jail and vendor names, and the kernel object names derived from them.
//!
//! A name is `[a-z0-9-]`, 1 to 32 bytes, not starting with `-`. The host
//! side of a jail's veth pair is `bj` + 12 hex digits of a stable hash of
//! `vendor/name` (14 bytes, under the 15-byte `IFNAMSIZ` limit).

use std::fmt;

/// Maximum length of a jail or vendor name.
pub const MAX_NAME: usize = 32;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty string.
    #[error("name is empty")]
    Empty,
    /// Longer than [`MAX_NAME`].
    #[error("name {0:?} is longer than 32 bytes")]
    TooLong(String),
    /// A byte outside `[a-z0-9-]`.
    #[error("name {name:?} has {ch:?} at byte {at}: only a-z, 0-9 and '-' are allowed")]
    BadChar {
        /// The name.
        name: String,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// Starts with '-'.
    #[error("name {0:?} starts with '-'")]
    LeadingDash(String),
}

/// A validated jail or vendor name.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    /// Validates `s`.
    pub fn new(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME {
            return Err(NameError::TooLong(s.to_owned()));
        }
        if let Some((at, ch)) = s
            .char_indices()
            .find(|(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(NameError::BadChar {
                name: s.to_owned(),
                ch,
                at,
            });
        }
        if s.starts_with('-') {
            return Err(NameError::LeadingDash(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        Name::new(&s)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// 64-bit FNV-1a: stable across builds and platforms (unlike `std`'s
/// `DefaultHasher`), which matters because the derived names are persisted
/// implicitly in the kernel.
pub fn fnv1a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Host-side veth name of a jail: `bj` + 12 hex digits (14 bytes).
pub fn host_veth(vendor: &Name, name: &Name) -> String {
    let h = fnv1a(format!("{vendor}/{name}").as_bytes());
    format!("bj{:012x}", h & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for s in ["a", "acme", "acme-meter-2", &"x".repeat(32)] {
            assert_eq!(Name::new(s).unwrap().as_str(), s);
        }
    }

    #[test]
    fn refuses_bad_names_with_exact_text() {
        assert_eq!(Name::new("").unwrap_err().to_string(), "name is empty");
        assert_eq!(
            Name::new(&"x".repeat(33)).unwrap_err().to_string(),
            format!("name {:?} is longer than 32 bytes", "x".repeat(33))
        );
        assert_eq!(
            Name::new("Acme").unwrap_err().to_string(),
            "name \"Acme\" has 'A' at byte 0: only a-z, 0-9 and '-' are allowed"
        );
        assert_eq!(
            Name::new("a/b").unwrap_err().to_string(),
            "name \"a/b\" has '/' at byte 1: only a-z, 0-9 and '-' are allowed"
        );
        assert_eq!(
            Name::new("-x").unwrap_err().to_string(),
            "name \"-x\" starts with '-'"
        );
    }

    #[test]
    fn veth_name_is_short_stable_and_distinct() {
        let v = Name::new("acme").unwrap();
        let a = host_veth(&v, &Name::new("one").unwrap());
        let b = host_veth(&v, &Name::new("two").unwrap());
        assert_eq!(a.len(), 14);
        assert!(a.starts_with("bj"));
        assert_ne!(a, b);
        assert_eq!(a, host_veth(&v, &Name::new("one").unwrap()));
        // Vendor is part of the identity.
        let w = Name::new("other").unwrap();
        assert_ne!(a, host_veth(&w, &Name::new("one").unwrap()));
    }

    #[test]
    fn fnv_known_vector() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn serde_validates() {
        let n: Result<Name, _> = serde_json::from_str("\"BAD\"");
        assert!(n.is_err());
        let n: Name = serde_json::from_str("\"ok-1\"").unwrap();
        assert_eq!(n.as_str(), "ok-1");
    }
}

//! Name rules for interfaces and named namespaces.
//!
//! Linux interface names are at most 15 bytes (`IFNAMSIZ` 16 with the NUL,
//! see netdevice(7)) and may not contain `/`, `:` or whitespace; we further
//! restrict them to ASCII letters, digits, `-`, `_` and `.` so they are safe
//! in nftables rules, file names and logs alike.

use crate::Error;

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
pub const IFNAME_MAX: usize = 15;

/// Longest named-namespace name we accept (it becomes a file name).
pub const NETNS_NAME_MAX: usize = 64;

fn check_chars(kind: &'static str, name: &str, max: usize) -> Result<(), Error> {
    let bad = |reason| Error::InvalidName {
        kind,
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > max {
        return Err(bad(if max == IFNAME_MAX {
            "longer than 15 bytes"
        } else {
            "longer than 64 bytes"
        }));
    }
    if name == "." || name == ".." || name.starts_with('.') {
        return Err(bad("starts with a dot"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(bad(
            "only ASCII letters, digits, '-', '_' and '.' are allowed",
        ));
    }
    Ok(())
}

/// Checks an interface (link, bridge, veth end) name.
pub fn validate_ifname(name: &str) -> Result<(), Error> {
    check_chars("interface", name, IFNAME_MAX)
}

/// Checks a named network namespace name.
pub fn validate_netns_name(name: &str) -> Result<(), Error> {
    check_chars("network namespace", name, NETNS_NAME_MAX)
}

/// Checks an nftables table name (we use the same rules, at most 64 bytes).
pub fn validate_table_name(name: &str) -> Result<(), Error> {
    check_chars("nftables table", name, NETNS_NAME_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for n in ["eth0", "br-acme", "veth_1.2", "abcdefghijklmno"] {
            validate_ifname(n).unwrap();
        }
    }

    #[test]
    fn refuses_long_names() {
        let err = validate_ifname("abcdefghijklmnop").unwrap_err();
        assert!(err.to_string().contains("longer than 15 bytes"), "{err}");
        assert!(err.to_string().contains("abcdefghijklmnop"), "{err}");
        assert!(validate_netns_name(&"a".repeat(64)).is_ok());
        assert!(validate_netns_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn refuses_bad_characters() {
        for n in [
            "", ".", "..", ".hidden", "a/b", "a:b", "a b", "a\nb", "é", "a\0",
        ] {
            assert!(validate_ifname(n).is_err(), "{n:?} accepted");
            assert!(validate_netns_name(n).is_err(), "{n:?} accepted");
        }
    }
}

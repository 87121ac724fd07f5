//! The IPv4 forwarding switch (`net.ipv4.ip_forward`, see
//! Documentation/networking/ip-sysctl.rst).
//!
//! Berth turns forwarding on only when its caller asks, and never turns it
//! off: other services on the gateway may rely on it.

use std::fs;
use std::path::{Path, PathBuf};

use crate::Error;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

fn read_flag(path: &Path) -> Result<bool, Error> {
    let s = fs::read_to_string(path).map_err(|source| Error::Sysctl {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(s.trim() != "0")
}

/// Whether IPv4 forwarding is on in the calling thread's namespace.
pub fn ipv4_forwarding() -> Result<bool, Error> {
    read_flag(Path::new(IP_FORWARD))
}

/// With `on`, turns IPv4 forwarding on (logged at info level when it was
/// off). With `!on`, does nothing: Berth never turns forwarding off.
pub fn set_ipv4_forwarding(on: bool) -> Result<(), Error> {
    if on {
        enable_ipv4_forwarding().map(drop)
    } else {
        tracing::debug!(
            sysctl = IP_FORWARD,
            "not turning forwarding off: Berth never does"
        );
        Ok(())
    }
}

/// Turns IPv4 forwarding on; returns whether it was off (so the caller can
/// report that it changed the host's setting).
pub fn enable_ipv4_forwarding() -> Result<bool, Error> {
    enable_flag(Path::new(IP_FORWARD))
}

fn enable_flag(path: &Path) -> Result<bool, Error> {
    if read_flag(path)? {
        return Ok(false);
    }
    fs::write(path, b"1\n").map_err(|source| Error::Sysctl {
        path: PathBuf::from(path),
        source,
    })?;
    tracing::info!(sysctl = %path.display(), "enabled IPv4 forwarding");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_on_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("ip_forward");
        fs::write(&f, "0\n").unwrap();
        assert!(enable_flag(&f).unwrap());
        assert_eq!(fs::read_to_string(&f).unwrap(), "1\n");
        assert!(!enable_flag(&f).unwrap());
        assert_eq!(fs::read_to_string(&f).unwrap(), "1\n");
    }

    #[test]
    fn errors_name_the_file() {
        let err = enable_flag(Path::new("/nonexistent/ip_forward")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ip_forward"), "{err}");
    }
}

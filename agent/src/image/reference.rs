//! Image references pinned by digest: `registry[:port]/repository[:tag]@sha256:<hex>`.
//!
//! Berth pulls only by digest (a plan pins every image), so a reference
//! without `@sha256:` is refused; a tag, if present, is kept for display
//! only. Names follow the distribution reference grammar; a first component
//! without `.` or `:` (and not `localhost`) means Docker Hub, as everywhere.

use std::fmt;

use super::digest::Digest;
use super::error::ImageError;

/// A parsed, digest-pinned image reference.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Digest,
}

const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

impl Reference {
    /// Parses a reference; it must carry a sha256 digest.
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        let bad = |reason| ImageError::InvalidReference {
            reference: s.to_owned(),
            reason,
        };
        if s.len() > 1024 {
            return Err(bad("longer than 1024 bytes"));
        }
        let (name, digest) = s
            .split_once('@')
            .ok_or_else(|| bad("not pinned by digest: append @sha256:<hex>"))?;
        let digest = Digest::parse(digest).map_err(|_| bad("the digest is not sha256:<64 hex>"))?;
        // A tag is after the last `:` that comes after the last `/`.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &name[last_slash + i + 1..];
                if tag.is_empty()
                    || tag.len() > 128
                    || !tag
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
                {
                    return Err(bad("the tag is not [A-Za-z0-9_.-]{1,128}"));
                }
                (&name[..last_slash + i], Some(tag.to_owned()))
            }
            None => (name, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        if !valid_host(&registry) {
            return Err(bad("the registry is not host[:port]"));
        }
        if repository.is_empty() || !repository.split('/').all(valid_path_component) {
            return Err(bad(
                "the repository is not lowercase [a-z0-9] components joined by . _ - and /",
            ));
        }
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry as written (`host[:port]`), `docker.io` for Docker Hub.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host and port the Distribution API is served on.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The repository path, e.g. `vendor/app`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The pinned digest (of a manifest or an index).
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The tag written in the reference, if any (informational only).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
}

impl std::str::FromStr for Reference {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, ImageError> {
        Self::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        write!(f, "@{}", self.digest)
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || h.starts_with('[') => (host, Some(port)),
        _ => (h, None),
    };
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok());
    host_ok && port_ok
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut prev_sep = false;
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            prev_sep = false;
        } else if matches!(ch, b'.' | b'_' | b'-') {
            if prev_sep && !(ch == b'-' && b[i - 1] == b'-' || ch == b'_' && b[i - 1] == b'_') {
                return false;
            }
            prev_sep = true;
        } else {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn parses_registry_port_repo_tag_digest() {
        let r = Reference::parse(&format!("127.0.0.1:5000/vendor/app:1.2@{D}")).unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.api_host(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "vendor/app");
        assert_eq!(r.tag(), Some("1.2"));
        assert_eq!(r.digest().to_string(), D);
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/vendor/app:1.2@{D}"));
        let r = Reference::parse(&format!("localhost/app@{D}")).unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("localhost", "app", None)
        );
        let r = Reference::parse(&format!("[::1]:5000/a/b@{D}")).unwrap();
        assert_eq!(r.api_host(), "[::1]:5000");
    }

    #[test]
    fn docker_hub_names_are_normalised() {
        let r = Reference::parse(&format!("alpine@{D}")).unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.repository(), "library/alpine");
        let r = Reference::parse(&format!("vendor/app:v1@{D}")).unwrap();
        assert_eq!(r.repository(), "vendor/app");
    }

    #[test]
    fn refuses_unpinned_and_malformed() {
        for bad in [
            "127.0.0.1:5000/app:latest".to_owned(),
            format!("127.0.0.1:5000/App@{D}"),
            format!("127.0.0.1:5000/a/../b@{D}"),
            format!("127.0.0.1:5000/a?x=1@{D}"),
            format!("127.0.0.1:5000/a b@{D}"),
            format!("127.0.0.1:99999/a@{D}"),
            format!("127.0.0.1:5000/@{D}"),
            "127.0.0.1:5000/a@sha256:abc".to_owned(),
            format!("127.0.0.1:5000/a:@{D}"),
        ] {
            let err = Reference::parse(&bad).unwrap_err();
            assert!(
                matches!(&err, ImageError::InvalidReference { reference, .. } if *reference == bad),
                "{bad}: {err}"
            );
        }
    }
}

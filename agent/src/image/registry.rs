//! A small client of the OCI Distribution API v2: manifests and blobs by
//! digest, with the token (and basic) authentication flow the spec
//! describes.
//!
//! HTTP through [`crate::http`]: HTTPS trusting the system's CA bundle;
//! plain HTTP only for the hosts the caller lists (loopback by default).
//! Every request has a connect and a read timeout, redirects (a registry
//! may send blob downloads to a storage host) are followed at most five
//! times, never to plain HTTP on a host not allowed it and never carrying
//! the registry's Authorization to another host; bodies read into memory
//! are bounded. Digests are checked by the callers (manifests here, blobs
//! while streaming in the store).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::http::header::{
    ACCEPT, AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, RANGE, WWW_AUTHENTICATE,
};
use crate::http::{self, HeaderMap, HeaderValue, Response, StatusCode, Url};

use super::digest::{Digest, Hasher};
use super::error::ImageError;
use super::manifest::ACCEPT_MANIFESTS;
use super::reference::Reference;
use super::Credentials;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// No byte for this long on an open response: the registry is gone.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Whole-request bound for small documents (manifests, tokens).
const SMALL_TIMEOUT: Duration = Duration::from_secs(120);
const MAX_TOKEN_BYTES: u64 = 64 << 10;
const MAX_ERROR_BODY: u64 = 4 << 10;

/// A client for one repository of one registry.
pub(crate) struct Registry {
    client: http::Client,
    base: String,
    repository: String,
    insecure: Vec<String>,
    credentials: Option<Credentials>,
    authorization: Mutex<Option<HeaderValue>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("base", &self.base)
            .field("repository", &self.repository)
            .finish_non_exhaustive()
    }
}

/// Whether `host_port` (as in a reference or URL authority) may be reached
/// over plain HTTP given the allow-list: an entry matches the exact
/// `host:port` or the host alone.
pub(crate) fn plain_http_allowed(host_port: &str, insecure: &[String]) -> bool {
    let host = strip_port(host_port);
    insecure.iter().any(|h| h == host_port || h == host)
}

fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => h,
    }
}

impl Registry {
    /// A client for `reference`'s repository.
    pub(crate) fn new(
        reference: &Reference,
        insecure: &[String],
        credentials: Option<Credentials>,
    ) -> Result<Self, ImageError> {
        let host = reference.api_host();
        let scheme = if plain_http_allowed(host, insecure) {
            "http"
        } else {
            "https"
        };
        let base = format!("{scheme}://{host}");
        let allowed = insecure.to_vec();
        let check: http::RedirectCheck = Arc::new(move |url: &Url| {
            if url.is_https() || plain_http_allowed(&url.authority(), &allowed) {
                Ok(())
            } else {
                Err(format!("refusing a redirect to plain http: {url}"))
            }
        });
        let client = http::Client::new(http::Options {
            trust: http::Trust::System,
            connect_timeout: CONNECT_TIMEOUT,
            read_timeout: READ_TIMEOUT,
            timeout: None,
            redirects: http::Redirects::Follow { max: 5, check },
            user_agent: concat!("berth/", env!("CARGO_PKG_VERSION")).into(),
        })
        .map_err(|source| ImageError::Http {
            url: base.clone(),
            source,
        })?;
        Ok(Self {
            client,
            base,
            repository: reference.repository().to_owned(),
            insecure: insecure.to_vec(),
            credentials,
            authorization: Mutex::new(None),
        })
    }

    fn url(&self, kind: &str, digest: &Digest) -> String {
        format!("{}/v2/{}/{kind}/{digest}", self.base, self.repository)
    }

    /// GET with the current authorization; on 401 runs the challenge once
    /// and retries.
    async fn get(
        &self,
        url: &str,
        headers: HeaderMap,
        timeout: Option<Duration>,
    ) -> Result<Response, ImageError> {
        let mut challenged = false;
        loop {
            let mut req = self.client.get(url).headers(headers.clone());
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            let auth = self.authorization.lock().map(|a| a.clone()).unwrap_or(None);
            if let Some(a) = auth {
                req = req.header(AUTHORIZATION, a);
            }
            let resp = req.send().await.map_err(|source| ImageError::Http {
                url: url.to_owned(),
                source,
            })?;
            if resp.status() != StatusCode::UNAUTHORIZED || challenged {
                return Ok(resp);
            }
            challenged = true;
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or_else(|| ImageError::Auth {
                    url: url.to_owned(),
                    reason: "401 without a WWW-Authenticate challenge".into(),
                })?;
            let value = self.answer_challenge(url, &challenge).await?;
            if let Ok(mut a) = self.authorization.lock() {
                *a = Some(value);
            }
        }
    }

    async fn answer_challenge(
        &self,
        url: &str,
        challenge: &str,
    ) -> Result<HeaderValue, ImageError> {
        let auth_err = |reason: String| ImageError::Auth {
            url: url.to_owned(),
            reason,
        };
        let (scheme, params) = parse_challenge(challenge);
        if scheme.eq_ignore_ascii_case("basic") {
            let c = self.credentials.as_ref().ok_or_else(|| {
                auth_err("the registry wants a user name and password; none configured".into())
            })?;
            return basic_header(c)
                .ok_or_else(|| auth_err("credentials are not valid header text".into()));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(auth_err(format!("unsupported challenge `{challenge}`")));
        }
        let get = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let realm =
            get("realm").ok_or_else(|| auth_err("bearer challenge without realm".into()))?;
        let realm_url =
            Url::parse(realm).map_err(|e| auth_err(format!("bad realm `{realm}`: {e}")))?;
        if !realm_url.is_https() && !plain_http_allowed(&realm_url.authority(), &self.insecure) {
            return Err(auth_err(format!(
                "refusing a token realm over plain http: {realm}"
            )));
        }
        let default_scope = format!("repository:{}:pull", self.repository);
        let scope = get("scope").unwrap_or(&default_scope);
        let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
        if let Some(s) = get("service") {
            query.push(("service", s));
        }
        let mut req = self.client.get(realm).query(&query).timeout(SMALL_TIMEOUT);
        if let Some(c) = &self.credentials {
            req = req.basic_auth(&c.username, &c.password);
        }
        let resp = req.send().await.map_err(|source| ImageError::Http {
            url: realm.to_owned(),
            source,
        })?;
        if !resp.status().is_success() {
            return Err(auth_err(format!(
                "token endpoint {realm} answered HTTP {}",
                resp.status().as_u16()
            )));
        }
        let body = read_limited(realm, resp, MAX_TOKEN_BYTES).await?;
        #[derive(serde::Deserialize)]
        struct Token {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&body)
            .map_err(|e| auth_err(format!("bad token response: {e}")))?;
        let token = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| auth_err("token response without a token".into()))?;
        HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| auth_err("the token is not valid header text".into()))
    }

    /// The manifest or index `digest`, at most `limit` bytes, verified
    /// against the digest; with the registry's `Content-Type`.
    pub(crate) async fn manifest(
        &self,
        digest: &Digest,
        limit: u64,
    ) -> Result<(Vec<u8>, Option<String>), ImageError> {
        let url = self.url("manifests", digest);
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(ACCEPT_MANIFESTS));
        let resp = self.get(&url, h, Some(SMALL_TIMEOUT)).await?;
        let resp = check_status(&url, resp, &[StatusCode::OK]).await?;
        let ct = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_limited(&url, resp, limit).await?;
        verify(&url, digest, &body)?;
        Ok((body, ct))
    }

    /// A small blob (config), at most `limit` bytes, verified.
    pub(crate) async fn small_blob(
        &self,
        digest: &Digest,
        limit: u64,
    ) -> Result<Vec<u8>, ImageError> {
        let url = self.url("blobs", digest);
        let resp = self
            .get(&url, HeaderMap::new(), Some(SMALL_TIMEOUT))
            .await?;
        let resp = check_status(&url, resp, &[StatusCode::OK]).await?;
        let body = read_limited(&url, resp, limit).await?;
        verify(&url, digest, &body)?;
        Ok(body)
    }

    /// Starts streaming blob `digest` from byte `offset`. Returns the
    /// response and whether the registry honoured the range (206); with a
    /// 200 the body starts at 0.
    pub(crate) async fn blob(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> Result<(String, Response, bool), ImageError> {
        let url = self.url("blobs", digest);
        let mut h = HeaderMap::new();
        if offset > 0 {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes={offset}-")) {
                h.insert(RANGE, v);
            }
        }
        let resp = self.get(&url, h, None).await?;
        let resp = check_status(&url, resp, &[StatusCode::OK, StatusCode::PARTIAL_CONTENT]).await?;
        let partial = resp.status() == StatusCode::PARTIAL_CONTENT
            && resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|r| r.starts_with(&format!("bytes {offset}-")));
        if resp.status() == StatusCode::PARTIAL_CONTENT && !partial {
            return Err(ImageError::Status {
                url,
                status: 206,
                detail: "Content-Range does not start where asked".into(),
            });
        }
        Ok((url, resp, partial))
    }
}

fn verify(url: &str, expected: &Digest, body: &[u8]) -> Result<(), ImageError> {
    let actual = Digest::of(body);
    if &actual != expected {
        return Err(ImageError::DigestMismatch {
            what: url.to_owned(),
            expected: expected.clone(),
            actual,
        });
    }
    Ok(())
}

async fn check_status(
    url: &str,
    resp: Response,
    ok: &[StatusCode],
) -> Result<Response, ImageError> {
    if ok.contains(&resp.status()) {
        return Ok(resp);
    }
    let status = resp.status().as_u16();
    let detail = read_limited(url, resp, MAX_ERROR_BODY)
        .await
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim()
                .chars()
                .take(300)
                .collect()
        })
        .unwrap_or_default();
    Err(ImageError::Status {
        url: url.to_owned(),
        status,
        detail,
    })
}

/// Reads a body into memory, failing as soon as it passes `limit`.
pub(crate) async fn read_limited(
    url: &str,
    mut resp: Response,
    limit: u64,
) -> Result<Vec<u8>, ImageError> {
    resp.bytes_limited(limit)
        .await
        .map_err(|source| ImageError::Http {
            url: url.to_owned(),
            source,
        })?
        .ok_or_else(|| ImageError::TooLarge {
            what: url.to_owned(),
            limit,
        })
}

/// `Bearer realm="x",service="y"` → ("Bearer", [(realm, x), (service, y)]).
fn parse_challenge(s: &str) -> (String, Vec<(String, String)>) {
    let s = s.trim();
    let (scheme, rest) = s.split_once(' ').unwrap_or((s, ""));
    let mut params = Vec::new();
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b' ' || b[i] == b',') {
            i += 1;
        }
        let k0 = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        let key = rest[k0..i].trim().to_owned();
        if i >= b.len() || b[i] != b'=' {
            continue;
        }
        i += 1;
        let mut val = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                let ch_len = rest[i..].chars().next().map_or(1, char::len_utf8);
                val.push_str(&rest[i..i + ch_len]);
                i += ch_len;
            }
            i += 1;
        } else {
            let v0 = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            val = rest[v0..i].trim().to_owned();
        }
        if !key.is_empty() {
            params.push((key, val));
        }
    }
    (scheme.to_owned(), params)
}

fn basic_header(c: &Credentials) -> Option<HeaderValue> {
    let raw = format!("{}:{}", c.username, c.password);
    HeaderValue::from_str(&format!("Basic {}", http::base64(raw.as_bytes()))).ok()
}

/// Hashes bytes already on disk (a partial download being resumed).
pub(crate) fn hash_prefix(file: &mut std::fs::File) -> std::io::Result<Hasher> {
    use std::io::Read;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(h);
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parsing() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(
            p,
            vec![
                ("realm".to_owned(), "https://auth.example/token".to_owned()),
                ("service".to_owned(), "registry.example".to_owned()),
                ("scope".to_owned(), "repository:a/b:pull,push".to_owned()),
            ]
        );
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!((s.as_str(), p[0].1.as_str()), ("Basic", "Registry Realm"));
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(http::base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn plain_http_only_for_listed_hosts() {
        let l = vec![
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
            "reg.lan:5000".to_owned(),
        ];
        assert!(plain_http_allowed("127.0.0.1:5000", &l));
        assert!(plain_http_allowed("127.0.0.1", &l));
        assert!(plain_http_allowed("[::1]:5000", &l));
        assert!(plain_http_allowed("reg.lan:5000", &l));
        assert!(!plain_http_allowed("reg.lan:5001", &l));
        assert!(!plain_http_allowed("reg.lan", &l));
        assert!(!plain_http_allowed("127.0.0.2:5000", &l));
        assert!(!plain_http_allowed("registry-1.docker.io", &l));
    }
}

//! The gateway's HTTP/1.1 client, shared by image delivery (registries) and
//! the provisioning client (vendor servers).
//!
//! Small on purpose: hyper's HTTP/1.1 client connection over tokio, TLS by
//! rustls with the ring provider, one connection per request (no pool, no
//! proxy, no HTTP/2, no cookies, no decompression). What it does offer is
//! what Berth's two callers need:
//!
//! - streaming response bodies ([`Response::chunk`]) with a read timeout
//!   between bytes and an optional deadline for the whole exchange;
//! - request headers (Range, Authorization, If-None-Match ...) and bodies;
//! - redirects, off or followed up to a limit through a caller's check
//!   (Authorization is dropped when a redirect leaves the host);
//! - trust per client ([`Trust`]): the system's CA bundle, a CA file, or
//!   one pinned server key ([`KeyPin`], the SHA-256 of the server's
//!   SubjectPublicKeyInfo), never bundled web roots.
//!
//! Layout: [`Url`] (the small URL type), [`KeyPin`] and the pinned-key
//! certificate verifier, [`Client`] / [`Request`] / [`Response`], tests at
//! the bottom.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
pub use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
pub use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// CA bundles of the usual distributions, tried in order for
/// [`Trust::System`] (Debian and Yocto's `ca-certificates` first).
pub const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Largest trust file read (a full web PKI bundle is about 220 KiB).
const MAX_TRUST_FILE: u64 = 4 << 20;

/// Why an HTTP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not one this client speaks.
    #[error("invalid url `{url}`: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A header value is not valid header text.
    #[error("invalid value for header {name}")]
    Header {
        /// The header.
        name: String,
    },
    /// The trust configuration cannot be used.
    #[error("trust {path}: {reason}")]
    Trust {
        /// The CA file (or the bundles looked for).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The host name did not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// `host:port`.
        host: String,
        /// Cause.
        source: io::Error,
    },
    /// No address of the host accepted a connection.
    #[error("cannot connect to {host}: {source}")]
    Connect {
        /// `host:port`.
        host: String,
        /// Cause (of the last address tried).
        source: io::Error,
    },
    /// The TLS handshake failed (certificate, pinned key, protocol).
    #[error("TLS handshake with {host} failed: {source}")]
    Tls {
        /// `host:port`.
        host: String,
        /// Cause, a rustls error inside.
        source: io::Error,
    },
    /// The server's key is not the pinned one ([`Trust::Pinned`]).
    #[error(
        "TLS handshake with {host} refused: the server's key {got} is not the pinned key {want}"
    )]
    KeyMismatch {
        /// `host:port`.
        host: String,
        /// The pin configured.
        want: KeyPin,
        /// The pin of the key the server presented.
        got: KeyPin,
    },
    /// The HTTP exchange itself failed (connection closed, bad response).
    #[error("HTTP exchange with {host} failed: {source}")]
    Protocol {
        /// `host:port`.
        host: String,
        /// Cause.
        source: hyper::Error,
    },
    /// A timeout passed: connecting, waiting for the answer or a byte.
    #[error("{host}: no progress within {secs} s while {during}")]
    Timeout {
        /// `host:port`.
        host: String,
        /// The timeout in seconds.
        secs: u64,
        /// What was awaited.
        during: &'static str,
    },
    /// A redirect could not or may not be followed.
    #[error("redirect from {from} refused: {reason}")]
    Redirect {
        /// The URL that answered with the redirect.
        from: String,
        /// Why.
        reason: String,
    },
}

// ---------- URLs ----------

/// An `http` or `https` URL: scheme, host, port, path and query. No user
/// info, no fragment; the host is kept as written (lowercased), IPv6 without
/// its brackets.
#[derive(Clone, PartialEq, Eq)]
pub struct Url {
    https: bool,
    host: String,
    port: u16,
    explicit_port: bool,
    path_and_query: String,
}

impl Url {
    /// Parses `http://host[:port][/path][?query]` (or `https://`).
    pub fn parse(s: &str) -> Result<Url, HttpError> {
        let bad = |reason| HttpError::Url {
            url: s.to_owned(),
            reason,
        };
        let (https, rest) = if let Some(r) = strip_prefix_ci(s, "https://") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(s, "http://") {
            (false, r)
        } else {
            return Err(bad("only http:// and https:// URLs are supported"));
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err(bad("user info in URLs is not supported"));
        }
        let tail = tail.split('#').next().unwrap_or("");
        if tail.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("spaces or control characters in the path"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed `[` in host"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("bad IPv6 address"));
            }
            match after {
                "" => (h, None),
                p => (h, Some(p.strip_prefix(':').ok_or_else(|| bad("bad port"))?)),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if !host.contains(':')
            && !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(bad("host is not a DNS name or IP address"));
        }
        let (port, explicit_port) = match port {
            Some(p) => (p.parse::<u16>().map_err(|_| bad("bad port"))?, true),
            None => (if https { 443 } else { 80 }, false),
        };
        let path_and_query = if tail.is_empty() || tail.starts_with('?') {
            format!("/{tail}")
        } else {
            tail.to_owned()
        };
        Ok(Url {
            https,
            host: host.to_ascii_lowercase(),
            port,
            explicit_port,
            path_and_query,
        })
    }

    /// Whether the scheme is `https`.
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The host (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, explicit or the scheme's default.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host[:port]` as it appears in the URL (IPv6 in brackets); the port
    /// only when the URL names one.
    pub fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.explicit_port {
            format!("{host}:{}", self.port)
        } else {
            host
        }
    }

    /// Path and query, starting with `/`.
    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }

    /// The URL a `Location` header points to, relative to this one.
    pub fn join(&self, location: &str) -> Result<Url, HttpError> {
        if strip_prefix_ci(location, "http://").is_some()
            || strip_prefix_ci(location, "https://").is_some()
        {
            return Url::parse(location);
        }
        let scheme = if self.https { "https" } else { "http" };
        if let Some(rest) = location.strip_prefix("//") {
            return Url::parse(&format!("{scheme}://{rest}"));
        }
        let path = if location.starts_with('/') {
            location.to_owned()
        } else {
            // Relative path: replace the last segment of ours.
            let base = self
                .path_and_query
                .split('?')
                .next()
                .unwrap_or("/")
                .rsplit_once('/')
                .map_or("", |(dir, _)| dir);
            format!("{base}/{location}")
        };
        Url::parse(&format!("{scheme}://{}{path}", self.authority()))
    }

    /// Appends `key=value` pairs to the query, percent-encoded.
    pub fn append_query(&mut self, pairs: &[(&str, &str)]) {
        for (k, v) in pairs {
            let sep = if self.path_and_query.contains('?') {
                '&'
            } else {
                '?'
            };
            self.path_and_query.push(sep);
            percent_encode_into(k, &mut self.path_and_query);
            self.path_and_query.push('=');
            percent_encode_into(v, &mut self.path_and_query);
        }
    }

    /// The `Host` header: the authority without a default port.
    fn host_header(&self) -> String {
        self.authority()
    }

    /// `host:port` for messages.
    fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path_and_query)
    }
}

impl fmt::Debug for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Url({self})")
    }
}

impl std::str::FromStr for Url {
    type Err = HttpError;
    fn from_str(s: &str) -> Result<Url, HttpError> {
        Url::parse(s)
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent_encode_into(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

// ---------- trust ----------

/// A pinned server key: the SHA-256 of the DER SubjectPublicKeyInfo of the
/// server's certificate, written `sha256:<64 hex digits>`.
///
/// Compute it from the server's certificate with
/// `openssl x509 -in cert.pem -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyPin([u8; 32]);

/// A pin that is not `sha256:<64 hex digits>`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid key pin `{value}`: expected sha256:<64 hex digits> (the SHA-256 of the server's SubjectPublicKeyInfo)")]
pub struct KeyPinError {
    /// The value as given.
    pub value: String,
}

impl KeyPin {
    /// Parses `sha256:<64 hex digits>` (either case).
    pub fn parse(s: &str) -> Result<KeyPin, KeyPinError> {
        let err = || KeyPinError {
            value: s.to_owned(),
        };
        let hex = s.strip_prefix("sha256:").ok_or_else(err)?;
        if hex.len() != 64 {
            return Err(err());
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(err)?;
            *o = u8::from_str_radix(pair, 16).map_err(|_| err())?;
        }
        Ok(KeyPin(out))
    }

    /// The pin of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> KeyPin {
        let d = ring::digest::digest(&ring::digest::SHA256, spki_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        KeyPin(out)
    }

    /// The pin of a DER certificate's key.
    pub fn of_certificate(cert_der: &[u8]) -> Result<KeyPin, rustls::Error> {
        let cert = CertificateDer::from(cert_der);
        let parsed = rustls::server::ParsedCertificate::try_from(&cert)?;
        Ok(KeyPin::of_spki(parsed.subject_public_key_info().as_ref()))
    }
}

impl fmt::Display for KeyPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPin({self})")
    }
}

impl std::str::FromStr for KeyPin {
    type Err = KeyPinError;
    fn from_str(s: &str) -> Result<KeyPin, KeyPinError> {
        KeyPin::parse(s)
    }
}

/// Whom a client trusts for HTTPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The system's CA bundle (the first of [`SYSTEM_CA_BUNDLES`] present),
    /// read when the first HTTPS request is made.
    System,
    /// The CA certificate(s) of a PEM file, and nothing else.
    CaFile(PathBuf),
    /// Exactly the server key with this pin, whatever certificate carries
    /// it (its names, issuer and validity dates are not checked: the pin
    /// is the trust, as with an SSH host key).
    Pinned(KeyPin),
}

/// The server key did not match the pin; carried out of rustls inside its
/// "invalid peer certificate" error and turned into
/// [`HttpError::KeyMismatch`].
struct PinMismatch {
    want: KeyPin,
    got: KeyPin,
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the server's key {} is not the pinned key {}",
            self.got, self.want
        )
    }
}

impl fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for PinMismatch {}

/// The TLS error of a handshake, [`HttpError::KeyMismatch`] when it was
/// the pinned-key check that refused.
fn tls_error(host: String, source: io::Error) -> HttpError {
    let mismatch = source
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .and_then(|e| match e {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o)) => {
                o.0.downcast_ref::<PinMismatch>()
            }
            _ => None,
        });
    match mismatch {
        Some(m) => HttpError::KeyMismatch {
            host,
            want: m.want,
            got: m.got,
        },
        None => HttpError::Tls { host, source },
    }
}

/// Accepts exactly one server key; handshake signatures are still verified
/// against that key, so only its holder can complete the handshake.
#[derive(Debug)]
struct PinnedKeyVerifier {
    pin: KeyPin,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = KeyPin::of_certificate(end_entity.as_ref())?;
        if got == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch {
                    want: self.pin,
                    got,
                }))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Reads the certificates of a PEM file into a root store.
fn roots_from_file(path: &Path) -> Result<rustls::RootCertStore, HttpError> {
    use std::io::Read;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let bad = |reason: String| HttpError::Trust {
        path: path.display().to_string(),
        reason,
    };
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TRUST_FILE).read_to_end(&mut pem))
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(format!("bad PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("unusable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no certificate".into()));
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration for `trust`.
fn tls_config(trust: &Trust) -> Result<Arc<rustls::ClientConfig>, HttpError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Trust {
            path: "(rustls)".into(),
            reason: e.to_string(),
        })?;
    let mut config = match trust {
        Trust::Pinned(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedKeyVerifier {
                pin: *pin,
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        Trust::CaFile(path) => builder
            .with_root_certificates(roots_from_file(path)?)
            .with_no_client_auth(),
        Trust::System => {
            let path = SYSTEM_CA_BUNDLES
                .iter()
                .map(Path::new)
                .find(|p| p.is_file())
                .ok_or_else(|| HttpError::Trust {
                    path: SYSTEM_CA_BUNDLES.join(", "),
                    reason: "no system CA bundle found (install ca-certificates, or configure a CA file or pinned key)".into(),
                })?;
            builder
                .with_root_certificates(roots_from_file(path)?)
                .with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

// ---------- client ----------

/// Decides whether a redirect to a URL may be followed: `Err(reason)`
/// refuses it.
pub type RedirectCheck = Arc<dyn Fn(&Url) -> Result<(), String> + Send + Sync>;

/// Redirect handling.
#[derive(Clone)]
pub enum Redirects {
    /// Redirect answers are returned to the caller as they are.
    None,
    /// Followed up to `max` times, each after `check` allowed it.
    Follow {
        /// Most redirects followed for one request.
        max: usize,
        /// Asked before each.
        check: RedirectCheck,
    },
}

impl fmt::Debug for Redirects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Redirects::None => f.write_str("None"),
            Redirects::Follow { max, .. } => write!(f, "Follow {{ max: {max} }}"),
        }
    }
}

/// How a [`Client`] behaves.
#[derive(Debug, Clone)]
pub struct Options {
    /// Whom HTTPS trusts.
    pub trust: Trust,
    /// Bound on resolving and connecting (and the TLS handshake).
    pub connect_timeout: Duration,
    /// Longest wait for the answer's head or for any byte of a body.
    pub read_timeout: Duration,
    /// Bound on a whole exchange, body included (per request overridable).
    pub timeout: Option<Duration>,
    /// Redirect handling.
    pub redirects: Redirects,
    /// The `User-Agent` header.
    pub user_agent: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            trust: Trust::System,
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            timeout: None,
            redirects: Redirects::None,
            user_agent: concat!("berth/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

/// An HTTP/1.1 client. Cheap to clone; the TLS configuration is shared.
#[derive(Debug, Clone)]
pub struct Client {
    options: Arc<Options>,
    /// Built at construction for a CA file or pin (so a bad file fails
    /// early), at the first HTTPS request for the system bundle.
    tls: Arc<Mutex<Option<Arc<rustls::ClientConfig>>>>,
}

impl Client {
    /// A client; reads and checks a CA file now.
    pub fn new(options: Options) -> Result<Client, HttpError> {
        let tls = match options.trust {
            Trust::System => None,
            ref t => Some(tls_config(t)?),
        };
        Ok(Client {
            options: Arc::new(options),
            tls: Arc::new(Mutex::new(tls)),
        })
    }

    /// A request to `url` (checked when sent).
    pub fn request(&self, method: Method, url: impl AsRef<str>) -> RequestBuilder<'_> {
        RequestBuilder {
            client: self,
            method,
            url: Url::parse(url.as_ref()),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            timeout: self.options.timeout,
        }
    }

    /// A GET request.
    pub fn get(&self, url: impl AsRef<str>) -> RequestBuilder<'_> {
        self.request(Method::GET, url)
    }

    /// A POST request.
    pub fn post(&self, url: impl AsRef<str>) -> RequestBuilder<'_> {
        self.request(Method::POST, url)
    }

    /// A PUT request.
    pub fn put(&self, url: impl AsRef<str>) -> RequestBuilder<'_> {
        self.request(Method::PUT, url)
    }

    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, HttpError> {
        // A poisoned lock only means another request panicked while
        // loading; the slot is still an Option we can read or fill.
        let mut slot = self.tls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = tls_config(&self.options.trust)?;
        *slot = Some(c.clone());
        Ok(c)
    }

    async fn send(&self, mut req: Request) -> Result<Response, HttpError> {
        let deadline = req.timeout.map(|t| Instant::now() + t);
        let mut followed = 0usize;
        loop {
            let resp = self.exchange(&req, deadline).await?;
            let Redirects::Follow { max, check } = &self.options.redirects else {
                return Ok(resp);
            };
            let status = resp.status();
            if !matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
                return Ok(resp);
            }
            let refuse = |reason: String| HttpError::Redirect {
                from: req.url.to_string(),
                reason,
            };
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| refuse(format!("HTTP {} without a Location", status.as_u16())))?;
            let next = req.url.join(location).map_err(|e| refuse(e.to_string()))?;
            followed += 1;
            if followed > *max {
                return Err(refuse(format!("more than {max} redirects")));
            }
            check(&next).map_err(refuse)?;
            if next.host != req.url.host || next.port != req.url.port || next.https != req.url.https
            {
                // Credentials are for the host that asked for them.
                req.headers.remove(header::AUTHORIZATION);
                req.headers.remove(header::COOKIE);
            }
            if status == StatusCode::SEE_OTHER
                || (matches!(status.as_u16(), 301 | 302) && req.method == Method::POST)
            {
                req.method = Method::GET;
                req.body = Bytes::new();
                req.headers.remove(header::CONTENT_TYPE);
            }
            req.url = next;
        }
    }

    /// One request on a fresh connection.
    async fn exchange(
        &self,
        req: &Request,
        deadline: Option<Instant>,
    ) -> Result<Response, HttpError> {
        let url = &req.url;
        let endpoint = url.endpoint();
        let opts = &self.options;
        let connect_by = cap(Instant::now() + opts.connect_timeout, deadline);
        let timed_out = |during, by: Instant, start: Instant| HttpError::Timeout {
            host: endpoint.clone(),
            secs: by.saturating_duration_since(start).as_secs().max(1),
            during,
        };
        let start = Instant::now();
        let tcp = tokio::time::timeout_at(connect_by, connect(url, &endpoint))
            .await
            .map_err(|_| timed_out("connecting", connect_by, start))??;
        let mut builder = hyper::Request::builder()
            .method(req.method.clone())
            .uri(url.path_and_query());
        if let Some(h) = builder.headers_mut() {
            *h = req.headers.clone();
            let host = HeaderValue::from_str(&url.host_header()).map_err(|_| HttpError::Url {
                url: url.to_string(),
                reason: "host is not valid header text",
            })?;
            h.insert(header::HOST, host);
            if !h.contains_key(header::USER_AGENT) {
                if let Ok(ua) = HeaderValue::from_str(&opts.user_agent) {
                    h.insert(header::USER_AGENT, ua);
                }
            }
        }
        let request = builder
            .body(Full::new(req.body.clone()))
            .map_err(|_| HttpError::Url {
                url: url.to_string(),
                reason: "not a valid request target",
            })?;
        let proto = |source| HttpError::Protocol {
            host: endpoint.clone(),
            source,
        };
        let head_by = cap(Instant::now() + opts.read_timeout, deadline);
        let answer = async {
            if url.is_https() {
                let tls = self.tls()?;
                let name =
                    ServerName::try_from(url.host().to_owned()).map_err(|_| HttpError::Url {
                        url: url.to_string(),
                        reason: "host is not a valid TLS server name",
                    })?;
                let stream = tokio::time::timeout_at(
                    connect_by,
                    tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
                )
                .await
                .map_err(|_| timed_out("in the TLS handshake", connect_by, start))?
                .map_err(|source| tls_error(endpoint.clone(), source))?;
                round_trip(TokioIo::new(stream), request)
                    .await
                    .map_err(proto)
            } else {
                round_trip(TokioIo::new(tcp), request).await.map_err(proto)
            }
        };
        let resp = tokio::time::timeout_at(head_by, answer)
            .await
            .map_err(|_| timed_out("waiting for the answer", head_by, start))??;
        let (parts, body) = resp.into_parts();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
            url: req.url.clone(),
            read_timeout: opts.read_timeout,
            deadline,
        })
    }
}

fn cap(t: Instant, deadline: Option<Instant>) -> Instant {
    deadline.map_or(t, |d| d.min(t))
}

/// Resolves and connects to the first address that answers.
async fn connect(url: &Url, endpoint: &str) -> Result<TcpStream, HttpError> {
    let addrs = tokio::net::lookup_host((url.host(), url.port()))
        .await
        .map_err(|source| HttpError::Resolve {
            host: endpoint.to_owned(),
            source,
        })?;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                // Small requests go out at once.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(HttpError::Connect {
        host: endpoint.to_owned(),
        source: last,
    })
}

/// Sends one request over `io` and returns the answer's head; the
/// connection is driven by a task that ends with the body.
async fn round_trip<T>(
    io: T,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<Incoming>, hyper::Error>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        // Its errors reach the caller through the response or its body.
        let _ = conn.await;
    });
    sender.send_request(request).await
}

/// A request being put together; [`RequestBuilder::send`] sends it.
#[derive(Debug)]
pub struct RequestBuilder<'c> {
    client: &'c Client,
    method: Method,
    url: Result<Url, HttpError>,
    headers: HeaderMap,
    body: Bytes,
    timeout: Option<Duration>,
}

#[derive(Debug)]
struct Request {
    method: Method,
    url: Url,
    headers: HeaderMap,
    body: Bytes,
    timeout: Option<Duration>,
}

impl RequestBuilder<'_> {
    /// Adds a header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Adds a header given as text; invalid text fails the request.
    pub fn header_str(mut self, name: &'static str, value: &str) -> Self {
        match HeaderValue::from_str(value) {
            Ok(v) => {
                self.headers.append(HeaderName::from_static(name), v);
            }
            Err(_) => {
                self.url = Err(HttpError::Header { name: name.into() });
            }
        }
        self
    }

    /// Adds all of `headers`.
    pub fn headers(mut self, headers: HeaderMap) -> Self {
        for (k, v) in &headers {
            self.headers.append(k.clone(), v.clone());
        }
        self
    }

    /// Appends percent-encoded query pairs.
    pub fn query(mut self, pairs: &[(&str, &str)]) -> Self {
        if let Ok(u) = self.url.as_mut() {
            u.append_query(pairs);
        }
        self
    }

    /// HTTP basic authentication.
    pub fn basic_auth(self, user: &str, password: &str) -> Self {
        let value = format!("Basic {}", base64(format!("{user}:{password}").as_bytes()));
        self.header_str("authorization", &value)
    }

    /// The request body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Bound on this whole exchange (overrides the client's).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Sends it, following redirects as the client's options say.
    pub async fn send(self) -> Result<Response, HttpError> {
        let req = Request {
            method: self.method,
            url: self.url?,
            headers: self.headers,
            body: self.body,
            timeout: self.timeout,
        };
        self.client.send(req).await
    }
}

/// An answer whose body is read as it arrives.
#[derive(Debug)]
pub struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Incoming,
    url: Url,
    read_timeout: Duration,
    deadline: Option<Instant>,
}

impl Response {
    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The URL that answered (after redirects).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The `Content-Length`, if the server sent a valid one.
    pub fn content_length(&self) -> Option<u64> {
        self.headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    }

    /// The next piece of the body; `None` at its end. Fails when no byte
    /// arrives within the read timeout or the exchange's deadline passes.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, HttpError> {
        loop {
            let start = Instant::now();
            let by = cap(start + self.read_timeout, self.deadline);
            let frame = tokio::time::timeout_at(by, self.body.frame())
                .await
                .map_err(|_| HttpError::Timeout {
                    host: self.url.endpoint(),
                    secs: by.saturating_duration_since(start).as_secs().max(1),
                    during: "reading the body",
                })?;
            match frame {
                None => return Ok(None),
                Some(Err(source)) => {
                    return Err(HttpError::Protocol {
                        host: self.url.endpoint(),
                        source,
                    })
                }
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        if !data.is_empty() {
                            return Ok(Some(data));
                        }
                    }
                }
            }
        }
    }

    /// The whole body; `Ok(None)` when it is longer than `limit` bytes.
    pub async fn bytes_limited(&mut self, limit: u64) -> Result<Option<Vec<u8>>, HttpError> {
        if self.content_length().is_some_and(|n| n > limit) {
            return Ok(None);
        }
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await? {
            if out.len() as u64 + c.len() as u64 > limit {
                return Ok(None);
            }
            out.extend_from_slice(&c);
        }
        Ok(Some(out))
    }

    /// The body as text (invalid UTF-8 replaced), cut after `limit` bytes.
    pub async fn text(mut self, limit: usize) -> Result<String, HttpError> {
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await? {
            out.extend_from_slice(&c[..c.len().min(limit - out.len().min(limit))]);
            if out.len() >= limit {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// RFC 4648 base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                out.push(char::from(T[((v >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn urls_parse_join_and_encode() {
        let u = Url::parse("https://Reg.Example:5000/v2/a/b?x=1#frag").unwrap();
        assert!(u.is_https());
        assert_eq!((u.host(), u.port()), ("reg.example", 5000));
        assert_eq!(u.authority(), "reg.example:5000");
        assert_eq!(u.path_and_query(), "/v2/a/b?x=1");
        assert_eq!(u.to_string(), "https://reg.example:5000/v2/a/b?x=1");
        let v6 = Url::parse("http://[::1]:8080").unwrap();
        assert_eq!(
            (v6.host(), v6.port(), v6.path_and_query()),
            ("::1", 8080, "/")
        );
        assert_eq!(v6.authority(), "[::1]:8080");
        assert_eq!(Url::parse("http://h").unwrap().port(), 80);
        assert_eq!(Url::parse("https://h?q").unwrap().path_and_query(), "/?q");
        for bad in [
            "ftp://h/",
            "h/x",
            "http://",
            "http://u:p@h/",
            "http://h:99999/",
            "http://[::1/",
            "http://h/a b",
            "http://h%41/",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            u.join("/blobs/x").unwrap().to_string(),
            "https://reg.example:5000/blobs/x"
        );
        assert_eq!(
            u.join("c?d=1").unwrap().to_string(),
            "https://reg.example:5000/v2/a/c?d=1"
        );
        assert_eq!(
            u.join("//cdn.example/x").unwrap().to_string(),
            "https://cdn.example/x"
        );
        assert_eq!(
            u.join("HTTP://other:81/y").unwrap().to_string(),
            "http://other:81/y"
        );
        let mut q = Url::parse("http://h/token?a=b").unwrap();
        q.append_query(&[("scope", "repository:x/y:pull"), ("service", "r e~g")]);
        assert_eq!(
            q.path_and_query(),
            "/token?a=b&scope=repository%3Ax%2Fy%3Apull&service=r%20e~g"
        );
    }

    #[test]
    fn key_pins_parse_and_print() {
        let hex = "0123456789abcdef".repeat(4);
        let pin = KeyPin::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(pin.to_string(), format!("sha256:{hex}"));
        assert_eq!(
            KeyPin::parse(&format!("sha256:{}", hex.to_uppercase())).unwrap(),
            pin
        );
        for bad in [
            hex.clone(),
            format!("sha1:{hex}"),
            format!("sha256:{}", &hex[1..]),
            format!("sha256:{}g", &hex[1..]),
            format!("sha256:{hex}00"),
            "sha256:é".repeat(2),
        ] {
            let e = KeyPin::parse(&bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid key pin"), "{e}");
        }
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Reads one request head (and a body announced by Content-Length).
    async fn read_request<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
        let mut buf = Vec::new();
        let mut b = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut b).await.unwrap();
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&b[..n]);
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// A loopback server answering each connection with `answer(head)`;
    /// request heads are recorded. Dropped with the runtime.
    async fn serve(
        answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> (String, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (seen2, answer) = (seen.clone(), Arc::new(answer));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let (seen, answer, tls) = (seen2.clone(), answer.clone(), tls.clone());
                tokio::spawn(async move {
                    let mut s: Box<dyn AsyncStream> = match tls {
                        Some(a) => match a.accept(tcp).await {
                            Ok(s) => Box::new(s),
                            Err(_) => return,
                        },
                        None => Box::new(tcp),
                    };
                    let head = read_request(&mut s).await;
                    seen.lock().unwrap().push(head.clone());
                    let _ = s.write_all(&answer(&head)).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        (addr, seen)
    }

    trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
    impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncStream for T {}

    fn ok(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// A self-signed certificate for 127.0.0.1 and its TLS acceptor.
    fn tls_server() -> (
        rcgen::CertifiedKey<rcgen::KeyPair>,
        tokio_rustls::TlsAcceptor,
    ) {
        use tokio_rustls::rustls::pki_types::PrivateKeyDer;
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        (ck, tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    fn client(trust: Trust) -> Client {
        Client::new(Options {
            trust,
            ..Options::default()
        })
        .unwrap()
    }

    #[test]
    fn pinned_key_accepts_exactly_that_key() {
        rt().block_on(async {
            let (ck, acceptor) = tls_server();
            let (addr, seen) = serve(|_| ok("hello"), Some(acceptor)).await;
            let url = format!("https://{addr}/x");
            let pin = KeyPin::of_certificate(ck.cert.der()).unwrap();
            // The pin is the SHA-256 of the key's SubjectPublicKeyInfo.
            {
                use tokio_rustls::rustls::pki_types::pem::PemObject;
                use tokio_rustls::rustls::pki_types::SubjectPublicKeyInfoDer;
                let spki =
                    SubjectPublicKeyInfoDer::from_pem_slice(ck.signing_key.public_key_pem().as_bytes())
                        .unwrap();
                assert_eq!(pin, KeyPin::of_spki(spki.as_ref()));
            }

            let mut r = client(Trust::Pinned(pin)).get(&url).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.bytes_limited(100).await.unwrap().unwrap(), b"hello");

            // Another key: refused in the handshake, saying which key it saw.
            let other = KeyPin::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap();
            let e = client(Trust::Pinned(other)).get(&url).send().await.unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, HttpError::KeyMismatch { .. }), "{msg}");
            assert_eq!(
                msg,
                format!(
                    "TLS handshake with {addr} refused: the server's key {pin} is not the pinned key {other}"
                )
            );
            // No request got through on the refused connection.
            assert_eq!(seen.lock().unwrap().len(), 1);
        });
    }

    #[test]
    fn ca_file_trust_and_no_fallback_to_other_roots() {
        rt().block_on(async {
            let (ck, acceptor) = tls_server();
            let (addr, _) = serve(|_| ok("hi"), Some(acceptor)).await;
            let url = format!("https://{addr}/");
            let dir = tempfile::tempdir().unwrap();
            let ca = dir.path().join("ca.pem");
            std::fs::write(&ca, ck.cert.pem()).unwrap();
            let r = client(Trust::CaFile(ca)).get(&url).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);

            // A CA file of another certificate does not vouch for it.
            let (other, _) = tls_server();
            let ca2 = dir.path().join("other.pem");
            std::fs::write(&ca2, other.cert.pem()).unwrap();
            let e = client(Trust::CaFile(ca2))
                .get(&url)
                .send()
                .await
                .unwrap_err();
            assert!(e.to_string().contains("invalid peer certificate"), "{e}");

            // Unusable trust files fail when the client is made.
            let empty = dir.path().join("empty.pem");
            std::fs::write(&empty, "no pem here").unwrap();
            let e = Client::new(Options {
                trust: Trust::CaFile(empty.clone()),
                ..Options::default()
            })
            .unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("trust {}: holds no certificate", empty.display())
            );
        });
    }

    #[test]
    fn redirects_follow_the_check_and_keep_credentials_at_home() {
        rt().block_on(async {
            let (cdn, cdn_seen) = serve(|_| ok("blob"), None).await;
            let cdn2 = cdn.clone();
            let (reg, reg_seen) = serve(
                move |head| {
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    let to = match path.as_str() {
                        "/same" => "/final".to_owned(),
                        "/away" => format!("http://{cdn2}/blob?sig=1"),
                        "/loop" => "/loop".to_owned(),
                        "/final" => return ok("here"),
                        _ => return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                    };
                    format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n")
                        .into_bytes()
                },
                None,
            )
            .await;
            let checked = Arc::new(AtomicUsize::new(0));
            let c2 = checked.clone();
            let c = Client::new(Options {
                redirects: Redirects::Follow {
                    max: 3,
                    check: Arc::new(move |u: &Url| {
                        c2.fetch_add(1, Ordering::SeqCst);
                        if u.host() == "127.0.0.1" {
                            Ok(())
                        } else {
                            Err(format!("{u} is not allowed"))
                        }
                    }),
                },
                ..Options::default()
            })
            .unwrap();
            let get = |path: &str| {
                c.get(format!("http://{reg}{path}"))
                    .header_str("authorization", "Bearer s3cret")
                    .send()
            };
            let mut r = get("/same").await.unwrap();
            assert_eq!(r.url().path_and_query(), "/final");
            assert_eq!(r.bytes_limited(10).await.unwrap().unwrap(), b"here");
            let mut r = get("/away").await.unwrap();
            assert_eq!(r.bytes_limited(10).await.unwrap().unwrap(), b"blob");
            let heads = reg_seen.lock().unwrap().clone();
            assert!(
                heads.iter().all(|h| h.contains("authorization: Bearer s3cret")),
                "{heads:?}"
            );
            let cdn_heads = cdn_seen.lock().unwrap().clone();
            assert_eq!(cdn_heads.len(), 1);
            assert!(cdn_heads[0].starts_with("GET /blob?sig=1 HTTP/1.1"), "{cdn_heads:?}");
            assert!(
                !cdn_heads[0].to_ascii_lowercase().contains("authorization"),
                "{cdn_heads:?}"
            );
            assert_eq!(checked.load(Ordering::SeqCst), 2);

            let e = get("/loop").await.unwrap_err();
            assert!(e.to_string().ends_with("more than 3 redirects"), "{e}");

            // Without Follow, the redirect is the answer.
            let plain = client(Trust::System);
            let r = plain.get(format!("http://{reg}/same")).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 307);
        });
    }

    #[test]
    fn a_stalled_body_times_out_and_streams_arrive_in_pieces() {
        rt().block_on(async {
            let (addr, _) = serve(
                |head| {
                    if head.starts_with("GET /stall") {
                        // Promises 10 bytes, sends 2, then nothing.
                        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab".to_vec()
                    } else {
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                            .to_vec()
                    }
                },
                None,
            )
            .await;
            let c = Client::new(Options {
                read_timeout: Duration::from_millis(500),
                ..Options::default()
            })
            .unwrap();
            let mut r = c.get(format!("http://{addr}/chunked")).send().await.unwrap();
            assert_eq!(r.content_length(), None);
            let mut all = Vec::new();
            while let Some(piece) = r.chunk().await.unwrap() {
                all.extend_from_slice(&piece);
            }
            assert_eq!(all, b"abcde");

            let mut r = c.get(format!("http://{addr}/stall")).send().await.unwrap();
            assert_eq!(r.content_length(), Some(10));
            let t0 = std::time::Instant::now();
            // The server half-closes after "ab": a short body, not a hang.
            let mut got = Vec::new();
            let err = loop {
                match r.chunk().await {
                    Ok(Some(p)) => got.extend_from_slice(&p),
                    Ok(None) => panic!("a short body ended cleanly"),
                    Err(e) => break e,
                }
            };
            assert_eq!(got, b"ab");
            assert!(matches!(err, HttpError::Protocol { .. }), "{err}");
            assert!(t0.elapsed() < Duration::from_secs(5));
        });
    }

    #[test]
    fn a_silent_server_times_out_with_the_host_in_the_message() {
        rt().block_on(async {
            // Accepts and reads, never answers.
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap().to_string();
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((s, _)) = l.accept().await {
                    held.push(s);
                }
            });
            let c = Client::new(Options {
                read_timeout: Duration::from_millis(300),
                ..Options::default()
            })
            .unwrap();
            let e = c.get(format!("http://{addr}/")).send().await.unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("{addr}: no progress within 1 s while waiting for the answer")
            );
            // A whole-exchange timeout bounds it too.
            let e = client(Trust::System)
                .get(format!("http://{addr}/"))
                .timeout(Duration::from_millis(200))
                .send()
                .await
                .unwrap_err();
            assert!(matches!(e, HttpError::Timeout { .. }), "{e}");
        });
    }
}

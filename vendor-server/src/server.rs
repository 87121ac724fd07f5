//! The HTTP(S) side: hyper 1 over TCP, with rustls (ring provider) unless
//! plain HTTP was asked for on loopback. `docs/provisioning.md` specifies
//! the endpoints:
//!
//! - `POST /v1/provision`: check the device against the registry (its
//!   announce signature under its registered key, a fresh counter) and
//!   answer its signed plan, `202` while its model has no published plan, or
//!   `403` with the reason.
//! - `GET /v1/plans/<plan-id>`: the current signed plan, `ETag` = the
//!   quoted version; `If-None-Match` with the current one gives `304`, and
//!   `?wait=SECONDS` holds the answer until a newer version is published.
//! - `POST /v1/reports`: store a gateway's report.
//!
//! Store calls run on the blocking pool; every read of a request has a
//! timeout and a size limit.

// Handlers answer early with a whole `Response` as their error; boxing it
// would only add an allocation on the refusal path.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use protocol::announce;
use protocol::ed25519_dalek::{SigningKey, VerifyingKey};
use protocol::provision::report::MAX_REPORT;
use protocol::provision::request::MAX_REQUEST;
use protocol::provision::{
    key_id, CborMessage, ErrorBody, ProvisionRequest, Report, SignedPlan, CBOR_CONTENT_TYPE,
    COSE_CONTENT_TYPE,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use crate::store::{CounterCheck, Device, Store, StoreError};
use crate::template::Template;

/// Longest `?wait=` honoured, in seconds.
pub const MAX_WAIT_SECS: u64 = 60;
/// How often a long poll looks for a newer version.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// `Retry-After` of a pending answer, in seconds.
pub const RETRY_AFTER_SECS: u64 = 30;
/// Time allowed for a TLS handshake, request headers, or a request body.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 512;
/// Time open connections get to finish after shutdown is asked.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Certificate chain and key, both PEM.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How to run the server.
#[derive(Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `None`: plain HTTP, allowed only on a loopback address.
    pub tls: Option<TlsFiles>,
    /// The vendor's plan-signing key.
    pub signing_key: SigningKey,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("plain HTTP is only allowed on a loopback address, not {addr}; give --tls-cert and --tls-key")]
    InsecureNotLoopback { addr: SocketAddr },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read TLS {what} from {path}")]
    TlsFile {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS certificate file {path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("TLS certificate and key do not make a server configuration")]
    Tls(#[source] rustls::Error),
    #[error("cannot accept connections on {addr}")]
    Accept {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

struct State {
    store: Arc<Store>,
    key: SigningKey,
    kid: Vec<u8>,
}

/// A bound server; [`Server::run`] serves until shutdown.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    state: Arc<State>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("tls", &self.acceptor.is_some())
            .finish()
    }
}

fn tls_config(files: &TlsFiles) -> Result<rustls::ServerConfig, ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| ServerError::TlsFile {
            what: "certificates",
            path: files.cert.clone(),
            source,
        })?;
    if certs.is_empty() {
        return Err(ServerError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| ServerError::TlsFile {
        what: "private key",
        path: files.key.clone(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ServerError::Tls)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(ServerError::Tls)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Server {
    /// Binds the listener (port 0 picks a free port) and loads TLS.
    pub async fn bind(config: ServerConfig, store: Store) -> Result<Server, ServerError> {
        let acceptor = match &config.tls {
            Some(files) => Some(TlsAcceptor::from(Arc::new(tls_config(files)?))),
            None if config.listen.ip().is_loopback() => None,
            None => {
                return Err(ServerError::InsecureNotLoopback {
                    addr: config.listen,
                })
            }
        };
        let bind = |source| ServerError::Bind {
            addr: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen).await.map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let kid = key_id(&config.signing_key.verifying_key());
        Ok(Server {
            listener,
            addr,
            acceptor,
            state: Arc::new(State {
                store: Arc::new(store),
                key: config.signing_key,
                kid,
            }),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.acceptor.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The store the server answers from; tests and embedding programs
    /// may register devices and publish through it while it runs.
    pub fn store(&self) -> &Arc<Store> {
        &self.state.store
    }

    /// The vendor's public key, for gateways' registries.
    pub fn public_key(&self) -> VerifyingKey {
        self.state.key.verifying_key()
    }

    /// Serves until `shutdown` completes, then gives open connections
    /// [`SHUTDOWN_GRACE`] to finish and returns once every task has ended.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                // Cancel-safe: TcpListener::accept loses no connection when
                // the other branch wins.
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        // Out of fds and the like: keep serving the others.
                        Err(e) if is_transient(&e) => {
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        Err(source) => break Err(ServerError::Accept { addr: self.addr, source }),
                    };
                    while conns.try_join_next().is_some() {}
                    if conns.len() >= MAX_CONNECTIONS {
                        tracing::warn!(%peer, "too many connections; closing the new one");
                        continue;
                    }
                    conns.spawn(serve_conn(
                        stream,
                        peer,
                        self.acceptor.clone(),
                        self.state.clone(),
                        stop_rx.clone(),
                    ));
                }
                // Cancel-safe: a plain future polled to completion once.
                () = &mut shutdown => break Ok(()),
            }
        };
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            conns.shutdown().await;
        }
        result
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e.raw_os_error().is_some_and(|c| c == 24 || c == 23) // EMFILE, ENFILE
}

async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
) {
    match acceptor {
        Some(acceptor) => {
            let tls = match tokio::time::timeout(IO_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            serve_http(TokioIo::new(tls), peer, state, &mut stop).await
        }
        None => serve_http(TokioIo::new(stream), peer, state, &mut stop).await,
    }
}

async fn serve_http<I>(io: I, peer: SocketAddr, state: Arc<State>, stop: &mut watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(state, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(IO_TIMEOUT)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        // Cancel-safe: the connection future stays pinned here and is
        // polled again below.
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            return;
        }
        // Cancel-safe: `changed` only reads the channel.
        _ = stop.changed() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// An answer with an [`ErrorBody`].
fn refuse(status: StatusCode, reason: impl Into<String>) -> Resp {
    let reason = reason.into();
    tracing::info!(status = status.as_u16(), %reason, "refused");
    let body = ErrorBody::new(status.as_u16(), reason);
    // The reason is truncated to fit and has no NUL unless a caller put one
    // there; fall back to an empty body rather than fail the answer.
    respond(
        status,
        CBOR_CONTENT_TYPE,
        body.to_cbor().unwrap_or_default(),
    )
}

fn internal(e: impl std::fmt::Display) -> Resp {
    tracing::error!(error = %e, "internal error");
    refuse(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error; see the vendor server's log",
    )
}

async fn blocking<T, F>(state: &Arc<State>, f: F) -> Result<T, Resp>
where
    T: Send + 'static,
    F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || f(&store)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(internal(e)),
        Err(e) => Err(internal(e)),
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    tracing::debug!(%method, %path, "request");
    match (path.as_str(), &method) {
        ("/v1/provision", &Method::POST) => match read_body(req, MAX_REQUEST).await {
            Ok(b) => provision(&state, &b).await,
            Err(r) => r,
        },
        ("/v1/reports", &Method::POST) => match read_body(req, MAX_REPORT).await {
            Ok(b) => report(&state, &b).await,
            Err(r) => r,
        },
        ("/v1/provision" | "/v1/reports", _) => {
            let mut r = refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} not allowed on {path}"),
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
            r
        }
        (p, m) if p.starts_with("/v1/plans/") => {
            if m != Method::GET && m != Method::HEAD {
                let mut r = refuse(
                    StatusCode::METHOD_NOT_ALLOWED,
                    format!("{method} not allowed on {path}"),
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
                return r;
            }
            let id = p["/v1/plans/".len()..].to_owned();
            plan(&state, &id, &req).await
        }
        _ => refuse(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

async fn read_body(req: Request<Incoming>, max: usize) -> Result<Bytes, Resp> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case(CBOR_CONTENT_TYPE) {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type must be {CBOR_CONTENT_TYPE}, not `{ct}`"),
        ));
    }
    let body = Limited::new(req.into_body(), max);
    match tokio::time::timeout(IO_TIMEOUT, body.collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body exceeds the limit of {max} bytes"),
        )),
        Ok(Err(e)) => Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("cannot read the body: {e}"),
        )),
        Err(_) => Err(refuse(
            StatusCode::REQUEST_TIMEOUT,
            "body not received in time",
        )),
    }
}

fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

fn plan_response(device: &Device, version: u64, cose: Vec<u8>) -> Resp {
    let mut r = respond(StatusCode::OK, COSE_CONTENT_TYPE, cose);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag(version)) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/plans/{}", device.plan_id)) {
        h.insert(header::CONTENT_LOCATION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The signed plan of `version` for `device`, signed once and kept so that
/// every answer for that version has the same bytes.
async fn signed_plan(
    state: &Arc<State>,
    device: &Device,
    version: u64,
    template: String,
) -> Result<Vec<u8>, Resp> {
    let plan_id = device.plan_id.clone();
    if let Some(b) = blocking(state, move |s| s.signed_plan(&plan_id, version)).await? {
        return Ok(b);
    }
    let t = Template::parse(&template, "published template").map_err(internal)?;
    let plan = t.plan(&device.plan_id, version, &device.model, &device.serial);
    let cose = SignedPlan::sign(&plan, &state.key, &state.kid).map_err(|e| {
        // The template was checked with a placeholder serial; this device's
        // values can still break a rule (a model name too long, say).
        internal(format!(
            "cannot sign plan {} version {version}: {e}",
            device.plan_id
        ))
    })?;
    let plan_id = device.plan_id.clone();
    blocking(state, move |s| s.put_signed_plan(&plan_id, version, &cose)).await
}

async fn provision(state: &Arc<State>, body: &[u8]) -> Resp {
    let req = match ProvisionRequest::from_cbor(body) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // Valid: `from_cbor` decoded it already.
    let a = match req.decode_announce() {
        Ok(a) => a,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("announce: {e}")),
    };
    let (model, serial) = (a.model.to_owned(), a.serial.to_owned());
    let found = {
        let (m, s) = (model.clone(), serial.clone());
        match blocking(state, move |st| st.device(&m, &s)).await {
            Ok(d) => d,
            Err(r) => return r,
        }
    };
    let Some(device) = found else {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("unknown device: model `{model}` serial `{serial}` is not registered with this vendor"),
        );
    };
    let key = match VerifyingKey::from_bytes(&device.public_key) {
        Ok(k) => k,
        Err(e) => return internal(format!("device {model}/{serial} has a bad stored key: {e}")),
    };
    if let Err(e) = announce::verify(&a, &key) {
        return refuse(StatusCode::FORBIDDEN, format!("device `{serial}`: {e}"));
    }
    let published = {
        let m = model.clone();
        match blocking(state, move |st| st.published(&m)).await {
            Ok(p) => p,
            Err(r) => return r,
        }
    };
    if let Some((_, text)) = &published {
        match Template::parse(text, "published template") {
            Ok(t) if t.vendor != a.vendor => {
                return refuse(
                    StatusCode::FORBIDDEN,
                    format!(
                        "device announces vendor `{}`; this server provisions `{}`",
                        a.vendor, t.vendor
                    ),
                )
            }
            // A jail already there (reused) holds its memory already.
            Ok(t)
                if t.jail.resources.memory > req.capabilities.memory_free
                    && !req.jails.iter().any(|j| j.name == t.jail.name) =>
            {
                return refuse(
                    StatusCode::FORBIDDEN,
                    format!(
                        "gateway `{}` has {} bytes of memory free; the plan needs {}",
                        req.gateway.id, req.capabilities.memory_free, t.jail.resources.memory
                    ),
                )
            }
            Ok(_) => {}
            Err(e) => return internal(e),
        }
    }
    let counter = a.counter;
    let check = {
        let (m, s, bytes) = (model.clone(), serial.clone(), req.announce.clone());
        match blocking(state, move |st| st.accept_announce(&m, &s, counter, &bytes)).await {
            Ok(c) => c,
            Err(r) => return r,
        }
    };
    if let CounterCheck::Replayed { last } = check {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("device `{serial}`: announce counter {counter} is not above {last}, the last accepted (a replay)"),
        );
    }
    let Some((version, text)) = published else {
        let mut r = refuse(
            StatusCode::ACCEPTED,
            format!("no plan published for model `{model}` yet; retry later"),
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        return r;
    };
    match signed_plan(state, &device, version, text).await {
        Ok(cose) => {
            tracing::info!(%model, %serial, plan_id = %device.plan_id, version, gateway = %req.gateway.id, "plan handed out");
            plan_response(&device, version, cose)
        }
        Err(r) => r,
    }
}

/// The versions an `If-None-Match` header names (`*` matches any).
fn none_match(req: &Request<Incoming>, version: u64) -> bool {
    let want = etag(version);
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == want || t == "*")
}

fn wait_param(req: &Request<Incoming>) -> Result<Duration, Resp> {
    let Some(q) = req.uri().query() else {
        return Ok(Duration::ZERO);
    };
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "wait" {
            let secs: u64 = v.parse().map_err(|_| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    format!("wait=`{v}` is not a number of seconds"),
                )
            })?;
            return Ok(Duration::from_secs(secs.min(MAX_WAIT_SECS)));
        }
    }
    Ok(Duration::ZERO)
}

async fn plan(state: &Arc<State>, id: &str, req: &Request<Incoming>) -> Resp {
    let wait = match wait_param(req) {
        Ok(w) => w,
        Err(r) => return r,
    };
    let found = {
        let id = id.to_owned();
        match blocking(state, move |s| s.device_by_plan(&id)).await {
            Ok(d) => d,
            Err(r) => return r,
        }
    };
    let Some(device) = found else {
        return refuse(StatusCode::NOT_FOUND, format!("unknown plan `{id}`"));
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let published = {
            let m = device.model.clone();
            match blocking(state, move |s| s.published(&m)).await {
                Ok(p) => p,
                Err(r) => return r,
            }
        };
        let Some((version, text)) = published else {
            return refuse(
                StatusCode::NOT_FOUND,
                format!(
                    "plan `{id}`: no plan published for model `{}`",
                    device.model
                ),
            );
        };
        if !none_match(req, version) {
            return match signed_plan(state, &device, version, text).await {
                Ok(cose) => {
                    let mut r = plan_response(&device, version, cose);
                    if req.method() == Method::HEAD {
                        *r.body_mut() = Full::new(Bytes::new());
                    }
                    r
                }
                Err(r) => r,
            };
        }
        if tokio::time::Instant::now() >= deadline {
            let mut r = respond(StatusCode::NOT_MODIFIED, COSE_CONTENT_TYPE, Vec::new());
            r.headers_mut().remove(header::CONTENT_TYPE);
            if let Ok(v) = HeaderValue::from_str(&etag(version)) {
                r.headers_mut().insert(header::ETAG, v);
            }
            return r;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

async fn report(state: &Arc<State>, body: &[u8]) -> Resp {
    let report = match Report::from_cbor(body) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let found = {
        let id = report.plan_id.clone();
        match blocking(state, move |s| s.device_by_plan(&id)).await {
            Ok(d) => d,
            Err(r) => return r,
        }
    };
    let Some(device) = found else {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("unknown plan `{}`", report.plan_id),
        );
    };
    if device.serial != report.serial {
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "report for plan `{}` names serial `{}`; the plan belongs to `{}`",
                report.plan_id, report.serial, device.serial
            ),
        );
    }
    let body = body.to_vec();
    let r = report.clone();
    match blocking(state, move |s| s.add_report(&r, &body)).await {
        Ok(id) => {
            tracing::info!(id, plan_id = %report.plan_id, version = report.version, state = ?report.state, "report stored");
            let mut r = respond(StatusCode::NO_CONTENT, CBOR_CONTENT_TYPE, Vec::new());
            r.headers_mut().remove(header::CONTENT_TYPE);
            r
        }
        Err(r) => r,
    }
}

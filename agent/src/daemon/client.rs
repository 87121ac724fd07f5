//! The provisioning client: berthd's side of `docs/provisioning.md` towards
//! one vendor of the registry.
//!
//! - `POST <url>/v1/provision`, body a CBOR [`ProvisionRequest`]; the answer
//!   is a signed plan (COSE_Sign1);
//! - `GET <url>/v1/plans/<id>` with `If-None-Match`: `304` when the plan did
//!   not change, else the signed plan and its `ETag`;
//! - `POST <url>/v1/reports`, body a CBOR [`Report`].
//!
//! HTTP through [`crate::http`]. HTTPS trusts what the registry says for
//! the vendor: exactly its pinned server key (`tls_pin`), else its CA file
//! (`ca_file`), else the system's CA bundle; plain HTTP only to loopback,
//! as the configuration checked. Redirects are never followed
//! (the gateway talks only to the server the registry lists), every request
//! has a timeout and every body a size limit checked while it streams.

use std::time::Duration;

use protocol::provision::signed::MAX_SIGNED_PLAN;
use protocol::provision::{CborMessage, ProvisionRequest, Report, SignedPlan};

use super::config::VendorSpec;
use crate::http::{self, StatusCode};

/// Largest error body kept for a message.
const MAX_ERROR_BODY: usize = 512;

/// A provisioning exchange that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client could not be set up (CA file).
    #[error("vendor {vendor}: {reason}")]
    Setup {
        /// Vendor.
        vendor: String,
        /// What failed.
        reason: String,
    },
    /// The request did not complete (connect, TLS, timeout).
    #[error("vendor {vendor}: {what} {url}: {reason}")]
    Transport {
        /// Vendor.
        vendor: String,
        /// Which call.
        what: &'static str,
        /// URL.
        url: String,
        /// Cause.
        reason: String,
    },
    /// The server answered with an error status.
    #[error("vendor {vendor}: {what} {url}: HTTP {status}: {body}")]
    Status {
        /// Vendor.
        vendor: String,
        /// Which call.
        what: &'static str,
        /// URL.
        url: String,
        /// Status code.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// The answer is larger than allowed.
    #[error("vendor {vendor}: {what} {url}: answer exceeds {max} bytes")]
    TooLarge {
        /// Vendor.
        vendor: String,
        /// Which call.
        what: &'static str,
        /// URL.
        url: String,
        /// Limit.
        max: usize,
    },
    /// A message could not be encoded.
    #[error("vendor {vendor}: cannot encode {what}: {reason}")]
    Encode {
        /// Vendor.
        vendor: String,
        /// Which message.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

impl ClientError {
    /// Whether retrying later may help (transport errors, 5xx, 429).
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Status { status, .. } => {
                *status >= 500 || *status == 429 || *status == 202
            }
            _ => false,
        }
    }
}

/// What `GET /v1/plans/<id>` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// `304 Not Modified`.
    Unchanged,
    /// A signed plan (unverified) and its ETag.
    Plan {
        /// COSE_Sign1 bytes.
        bytes: Vec<u8>,
        /// The ETag header, if any.
        etag: Option<String>,
    },
}

/// A client for one vendor.
#[derive(Debug, Clone)]
pub struct VendorClient {
    vendor: String,
    base: String,
    http: http::Client,
}

impl VendorClient {
    /// Builds the client of `spec`; every request is bounded by `timeout`.
    pub fn new(spec: &VendorSpec, timeout: Duration) -> Result<VendorClient, ClientError> {
        let setup = |reason: String| ClientError::Setup {
            vendor: spec.id.clone(),
            reason,
        };
        let trust = match (&spec.tls_pin, &spec.ca_file) {
            (Some(pin), _) => http::Trust::Pinned(*pin),
            (None, Some(ca)) => http::Trust::CaFile(ca.clone()),
            (None, None) => http::Trust::System,
        };
        let http = http::Client::new(http::Options {
            trust,
            connect_timeout: timeout,
            read_timeout: timeout,
            timeout: Some(timeout),
            redirects: http::Redirects::None,
            user_agent: concat!("berthd/", env!("CARGO_PKG_VERSION")).into(),
        })
        .map_err(|e| setup(e.to_string()))?;
        Ok(VendorClient {
            vendor: spec.id.clone(),
            base: spec.url.clone(),
            http,
        })
    }

    /// The vendor.
    pub fn vendor(&self) -> &str {
        &self.vendor
    }

    /// `POST /v1/provision`: returns the signed plan's bytes (unverified).
    pub async fn provision(&self, req: &ProvisionRequest) -> Result<Vec<u8>, ClientError> {
        let what = "POST";
        let url = format!("{}/v1/provision", self.base);
        let body = req.to_cbor().map_err(|e| ClientError::Encode {
            vendor: self.vendor.clone(),
            what: "provisioning request",
            reason: e.to_string(),
        })?;
        let resp = self
            .http
            .post(&url)
            .header_str("content-type", protocol::provision::CBOR_CONTENT_TYPE)
            .header_str("accept", protocol::provision::COSE_CONTENT_TYPE)
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport(what, &url, e))?;
        if resp.status() == StatusCode::ACCEPTED {
            // The vendor knows the device but has no plan yet: retry later.
            return Err(ClientError::Status {
                vendor: self.vendor.clone(),
                what,
                url,
                status: 202,
                body: "no plan yet".into(),
            });
        }
        let resp = self.ok(what, &url, resp).await?;
        self.body(what, &url, resp, MAX_SIGNED_PLAN).await
    }

    /// `GET /v1/plans/<id>` with `If-None-Match: etag`.
    pub async fn fetch_plan(
        &self,
        plan_id: &str,
        etag: Option<&str>,
    ) -> Result<Fetched, ClientError> {
        let what = "GET";
        // Plan ids are `[A-Za-z0-9._-]` (checked when the plan verified),
        // so the id is a safe path segment.
        let url = format!("{}/v1/plans/{plan_id}", self.base);
        let mut rb = self
            .http
            .get(&url)
            .header_str("accept", protocol::provision::COSE_CONTENT_TYPE);
        if let Some(t) = etag {
            rb = rb.header_str("if-none-match", t);
        }
        let resp = rb.send().await.map_err(|e| self.transport(what, &url, e))?;
        if resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(Fetched::Unchanged);
        }
        let resp = self.ok(what, &url, resp).await?;
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = self.body(what, &url, resp, MAX_SIGNED_PLAN).await?;
        Ok(Fetched::Plan { bytes, etag })
    }

    /// `POST /v1/reports`.
    pub async fn report(&self, report: &Report) -> Result<(), ClientError> {
        let what = "POST";
        let url = format!("{}/v1/reports", self.base);
        let body = report.to_cbor().map_err(|e| ClientError::Encode {
            vendor: self.vendor.clone(),
            what: "report",
            reason: e.to_string(),
        })?;
        let resp = self
            .http
            .post(&url)
            .header_str("content-type", protocol::provision::CBOR_CONTENT_TYPE)
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport(what, &url, e))?;
        self.ok(what, &url, resp).await?;
        Ok(())
    }

    fn transport(&self, what: &'static str, url: &str, e: http::HttpError) -> ClientError {
        // HttpError's message already carries its cause.
        ClientError::Transport {
            vendor: self.vendor.clone(),
            what,
            url: url.to_string(),
            reason: e.to_string(),
        }
    }

    async fn ok(
        &self,
        what: &'static str,
        url: &str,
        resp: http::Response,
    ) -> Result<http::Response, ClientError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = self
            .body(what, url, resp, MAX_ERROR_BODY)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        let text = protocol::provision::report::truncate(&text, MAX_ERROR_BODY);
        Err(ClientError::Status {
            vendor: self.vendor.clone(),
            what,
            url: url.to_string(),
            status: status.as_u16(),
            body: text.trim().to_string(),
        })
    }

    async fn body(
        &self,
        what: &'static str,
        url: &str,
        mut resp: http::Response,
        max: usize,
    ) -> Result<Vec<u8>, ClientError> {
        resp.bytes_limited(max as u64)
            .await
            .map_err(|e| self.transport(what, url, e))?
            .ok_or_else(|| ClientError::TooLarge {
                vendor: self.vendor.clone(),
                what,
                url: url.to_string(),
                max,
            })
    }
}

/// Why a plan was refused.
#[derive(Debug, thiserror::Error)]
pub enum PlanRefused {
    /// Signature, format or vendor.
    #[error("{0}")]
    Plan(#[from] protocol::provision::PlanError),
    /// The plan is for another device.
    #[error("plan {plan_id} is for device {model}/{serial}, not for this one")]
    OtherDevice {
        /// Plan id.
        plan_id: String,
        /// Its model.
        model: String,
        /// Its serial.
        serial: String,
    },
}

/// Verifies signed plan bytes against the registry's key for `vendor` and
/// checks it names the device (`model`, `serial`).
pub fn verify(
    bytes: &[u8],
    spec: &VendorSpec,
    model: &str,
    serial: &str,
) -> Result<SignedPlan, PlanRefused> {
    let sp = SignedPlan::verify(bytes, &spec.key, &spec.id)?;
    if !sp.plan.applies_to(&spec.id, model, serial) {
        return Err(PlanRefused::OtherDevice {
            plan_id: sp.plan.plan_id.clone(),
            model: sp.plan.model.clone(),
            serial: sp.plan.serial.clone(),
        });
    }
    Ok(sp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ed25519_dalek::SigningKey;
    use protocol::provision::{
        key_id, App, DevicePassthrough, ImageRef, JailMode, JailPlan, NetworkPolicy, Plan,
        Resources, FORMAT,
    };

    fn plan(vendor: &str, serial: &str) -> Plan {
        Plan {
            format: FORMAT,
            plan_id: "p1".into(),
            version: 2,
            vendor: vendor.into(),
            model: "M".into(),
            serial: serial.into(),
            jail: JailPlan {
                name: "app".into(),
                mode: JailMode::CreateOrReuse,
                resources: Resources {
                    memory: 64 << 20,
                    cpu_millis: 500,
                    pids: 64,
                },
                network: NetworkPolicy {
                    enabled: true,
                    host_ports: vec![],
                },
                devices: DevicePassthrough { serial: false },
                volumes: vec![],
            },
            apps: vec![App {
                name: "web".into(),
                image: ImageRef::parse(&format!(
                    "localhost:5000/acme/web@sha256:{}",
                    "a".repeat(64)
                ))
                .unwrap(),
                command: vec![],
                args: vec![],
                env: Default::default(),
                mounts: vec![],
                checks: vec![],
            }],
        }
    }

    fn spec(id: &str, key: &SigningKey) -> VendorSpec {
        VendorSpec {
            id: id.into(),
            url: "http://127.0.0.1:1".into(),
            key: key.verifying_key(),
            ca_file: None,
            tls_pin: None,
            approval: crate::daemon::config::Approval::Manual,
        }
    }

    fn signed(p: &Plan, key: &SigningKey) -> Vec<u8> {
        SignedPlan::sign(p, key, &key_id(&key.verifying_key())).unwrap()
    }

    #[test]
    fn verifies_only_the_registry_key_vendor_and_device() {
        let acme = SigningKey::from_bytes(&[1; 32]);
        let other = SigningKey::from_bytes(&[2; 32]);
        let good = signed(&plan("acme", "S1"), &acme);
        let sp = verify(&good, &spec("acme", &acme), "M", "S1").unwrap();
        assert_eq!(sp.plan.version, 2);
        // Another key: a forged plan.
        let e = verify(
            &signed(&plan("acme", "S1"), &other),
            &spec("acme", &acme),
            "M",
            "S1",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "signed plan signature does not verify under the vendor's key"
        );
        // Signed by the right key but naming another vendor.
        let e = verify(
            &signed(&plan("globex", "S1"), &acme),
            &spec("acme", &acme),
            "M",
            "S1",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "plan is from vendor `globex`, expected `acme`"
        );
        // For another device of the vendor.
        let e = verify(&good, &spec("acme", &acme), "M", "S2").unwrap_err();
        assert_eq!(
            e.to_string(),
            "plan p1 is for device M/S1, not for this one"
        );
        // A flipped byte.
        let mut bad = good.clone();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert!(verify(&bad, &spec("acme", &acme), "M", "S1").is_err());
    }

    /// A real `berth-vendor` server over TLS (rcgen self-signed for
    /// 127.0.0.1), serving until the returned sender is dropped.
    async fn tls_vendor(
        dir: &std::path::Path,
    ) -> (
        String,
        crate::http::KeyPin,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let store = vendor_server::Store::open(&dir.join("vendor.db")).unwrap();
        let server = vendor_server::Server::bind(
            vendor_server::ServerConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                tls: Some(vendor_server::TlsFiles { cert, key }),
                signing_key: SigningKey::from_bytes(&[7; 32]),
            },
            store,
        )
        .await
        .unwrap();
        let url = format!("https://{}", server.local_addr());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        let pin = crate::http::KeyPin::of_certificate(ck.cert.der()).unwrap();
        (url, pin, tx)
    }

    #[tokio::test]
    async fn a_pinned_vendor_key_is_trusted_and_any_other_key_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (url, pin, _stop) = tls_vendor(dir.path()).await;
        let acme = SigningKey::from_bytes(&[1; 32]);
        let mut s = spec("acme", &acme);
        s.url = url.clone();

        // The server's own key: the exchange happens (the plan is unknown
        // to this vendor, so it answers 404 over the pinned connection).
        s.tls_pin = Some(pin);
        let c = VendorClient::new(&s, Duration::from_secs(5)).unwrap();
        let e = c.fetch_plan("p1", None).await.unwrap_err();
        assert!(matches!(e, ClientError::Status { status: 404, .. }), "{e}");

        // A pin of another key: refused before any request is sent.
        let other = crate::http::KeyPin::parse(&format!("sha256:{}", "cd".repeat(32))).unwrap();
        s.tls_pin = Some(other);
        let c = VendorClient::new(&s, Duration::from_secs(5)).unwrap();
        let e = c.fetch_plan("p1", None).await.unwrap_err();
        let addr = url.trim_start_matches("https://");
        assert_eq!(
            e.to_string(),
            format!(
                "vendor acme: GET {url}/v1/plans/p1: TLS handshake with {addr} refused: \
                 the server's key {pin} is not the pinned key {other}"
            )
        );

        // Without a pin or CA file, the system bundle does not know this
        // self-signed server.
        s.tls_pin = None;
        let c = VendorClient::new(&s, Duration::from_secs(5)).unwrap();
        let e = c.fetch_plan("p1", None).await.unwrap_err();
        assert!(matches!(e, ClientError::Transport { .. }), "{e}");
        assert!(e.to_string().contains("invalid peer certificate"), "{e}");
    }

    #[test]
    fn the_registry_names_a_vendor_pin_as_tls_pin() {
        let key: String = SigningKey::from_bytes(&[1; 32])
            .verifying_key()
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let pin = format!("sha256:{}", "0f".repeat(32));
        let text = |pin: &str| {
            format!(
                "[[vendor]]\nid = \"acme\"\nurl = \"https://v.example\"\nkey = \"{key}\"\ntls_pin = \"{pin}\"\n"
            )
        };
        let path = std::path::Path::new("/etc/berth/berthd.toml");
        let c = crate::daemon::config::Config::parse(path, &text(&pin)).unwrap();
        assert_eq!(
            c.vendors["acme"].tls_pin,
            Some(crate::http::KeyPin::parse(&pin).unwrap())
        );
        let e = crate::daemon::config::Config::parse(path, &text("sha256:12"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "/etc/berth/berthd.toml:5: vendor \"acme\" tls_pin: invalid key pin `sha256:12`"
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_vendor_is_a_retryable_transport_error() {
        let acme = SigningKey::from_bytes(&[1; 32]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = spec("acme", &acme);
        s.url = format!("http://127.0.0.1:{port}");
        let c = VendorClient::new(&s, Duration::from_secs(2)).unwrap();
        let e = c.fetch_plan("p1", None).await.unwrap_err();
        assert!(e.retryable(), "{e}");
        assert!(
            e.to_string().starts_with(&format!(
                "vendor acme: GET http://127.0.0.1:{port}/v1/plans/p1:"
            )),
            "{e}"
        );
    }
}

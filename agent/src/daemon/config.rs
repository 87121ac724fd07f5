//! `berthd`'s configuration: a TOML file read once at start, checked field
//! by field into [`Config`]. A bad file is refused with its path, the line
//! of the offending value and the reason; nothing starts.
//!
//! ```toml
//! state_dir = "/var/lib/berth"
//! cgroup_parent = "berth"
//! gateway_id = "gw-17"
//! approval = "manual"          # default for vendors that do not say
//! poll_interval = "5m"         # plan update polling
//!
//! [detect]
//! serial = ["/dev/ttyUSB0"]    # ports opened whatever their USB ids
//! mqtt = "127.0.0.1:1883"
//! ble = false
//! rules = "/etc/berth/rules.toml"
//!
//! [mqtt_routing]               # optional: per-vendor broker ACLs
//! acl_file = "/etc/mosquitto/berth.acl"
//! password_file = "/etc/mosquitto/berth.passwd"
//! pid_file = "/run/mosquitto.pid"
//! broker = "gateway:1883"      # what jails are told to connect to; the
//!                              # host `gateway` is each jail's own bridge
//!                              # address; the port is opened to the jails
//!
//! [[vendor]]
//! id = "acme"
//! url = "https://provision.acme.example"
//! key = "3b6a27bc…"            # Ed25519 plan-signing key, 64 hex digits
//! ca_file = "/etc/berth/acme-ca.pem"
//! # tls_pin = "sha256:…"      # or: trust exactly this server key (SPKI SHA-256)
//! approval = "auto"
//! ```
//!
//! Plain `http://` URLs are accepted only for loopback hosts (tests, a
//! vendor proxy on the gateway itself); everything else is HTTPS.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use protocol::ed25519_dalek::VerifyingKey;
use serde::Deserialize;
use toml::Spanned;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A value is wrong (or the TOML is).
    #[error("{path}:{line}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending value (0 when unknown).
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// How requests of a vendor are approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    /// A technician approves each request (`berth approve`).
    Manual,
    /// Requests are approved as soon as their plan verifies.
    Auto,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    state_dir: Option<Spanned<PathBuf>>,
    cgroup_parent: Option<Spanned<String>>,
    gateway_id: Option<Spanned<String>>,
    approval: Option<Approval>,
    poll_interval: Option<Spanned<String>>,
    request_timeout: Option<Spanned<String>>,
    #[serde(default)]
    detect: DetectFile,
    mqtt_routing: Option<Spanned<MqttRoutingFile>>,
    #[serde(default)]
    vendor: Vec<Spanned<VendorFile>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetectFile {
    #[serde(default)]
    serial: Vec<PathBuf>,
    mqtt: Option<Spanned<String>>,
    #[serde(default)]
    ble: bool,
    rules: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MqttRoutingFile {
    acl_file: PathBuf,
    password_file: PathBuf,
    pid_file: Option<PathBuf>,
    broker: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VendorFile {
    id: Spanned<String>,
    url: Spanned<String>,
    key: Spanned<String>,
    ca_file: Option<Spanned<PathBuf>>,
    tls_pin: Option<Spanned<String>>,
    approval: Option<Approval>,
}

/// Detection sources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DetectConfig {
    /// Serial ports opened whatever their USB ids.
    pub serial: Vec<PathBuf>,
    /// MQTT broker watched for announces: host and port.
    pub mqtt: Option<(String, u16)>,
    /// Scan BLE through BlueZ.
    pub ble: bool,
    /// Vendor rules file of the detection sources.
    pub rules: Option<PathBuf>,
}

/// Where the broker's per-vendor ACL and passwords go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttRouting {
    /// mosquitto `acl_file`.
    pub acl_file: PathBuf,
    /// mosquitto `password_file` (plain `user:password` lines are hashed by
    /// `mosquitto_passwd -U`; berthd writes PBKDF2 entries itself).
    pub password_file: PathBuf,
    /// The broker's PID file: SIGHUP makes it reload both files.
    pub pid_file: Option<PathBuf>,
    /// The broker address given to jails.
    pub broker: String,
}

/// One vendor the gateway talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorSpec {
    /// Vendor id, as devices announce it.
    pub id: String,
    /// Base URL of its provisioning server, without a trailing `/`.
    pub url: String,
    /// The key its plans are signed with.
    pub key: VerifyingKey,
    /// CA certificate(s) (PEM) its server's certificate chains to; `None`
    /// for plain loopback HTTP or the system's web PKI roots.
    pub ca_file: Option<PathBuf>,
    /// The pinned key of its server (SHA-256 of the SubjectPublicKeyInfo):
    /// when set, exactly that key is trusted and `ca_file` is not used.
    pub tls_pin: Option<crate::http::KeyPin>,
    /// How its requests are approved.
    pub approval: Approval,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// State directory: store, socket, jails, images.
    pub state_dir: PathBuf,
    /// Cgroup under which jails are created.
    pub cgroup_parent: String,
    /// This gateway's id, sent to vendors.
    pub gateway_id: String,
    /// How often running plans are polled for updates.
    pub poll_interval: Duration,
    /// Bound of every network wait towards vendors.
    pub request_timeout: Duration,
    /// Detection sources.
    pub detect: DetectConfig,
    /// Broker ACL routing, when configured.
    pub mqtt_routing: Option<MqttRouting>,
    /// The vendor registry, by id.
    pub vendors: BTreeMap<String, VendorSpec>,
}

/// Default state directory of the daemon.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/berth";

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let bad = |span: Option<Range<usize>>, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: span.map_or(0, |s| line_of(text, s.start)),
            reason,
        };
        let file: ConfigFile =
            toml::from_str(text).map_err(|e| bad(e.span(), e.message().trim().to_string()))?;
        let state_dir = match file.state_dir {
            Some(s) => {
                if !s.get_ref().is_absolute() {
                    return Err(bad(
                        Some(s.span()),
                        "state_dir must be an absolute path".into(),
                    ));
                }
                s.into_inner()
            }
            None => PathBuf::from(DEFAULT_STATE_DIR),
        };
        let cgroup_parent = match file.cgroup_parent {
            Some(s) => crate::cli::parse_cgroup_parent(s.get_ref())
                .map_err(|e| bad(Some(s.span()), format!("cgroup_parent: {e}")))?,
            None => crate::cli::DEFAULT_CGROUP_PARENT.to_string(),
        };
        let gateway_id = match file.gateway_id {
            Some(s) => {
                let ok = !s.get_ref().is_empty()
                    && s.get_ref().len() <= 64
                    && s.get_ref()
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
                if !ok {
                    return Err(bad(
                        Some(s.span()),
                        format!(
                            "gateway_id {:?} must be 1-64 of [A-Za-z0-9._-]",
                            s.get_ref()
                        ),
                    ));
                }
                s.into_inner()
            }
            None => default_gateway_id(),
        };
        let dur = |v: Option<Spanned<String>>, default: Duration, what: &str| match v {
            Some(s) => {
                parse_duration(s.get_ref()).map_err(|e| bad(Some(s.span()), format!("{what}: {e}")))
            }
            None => Ok(default),
        };
        let poll_interval = dur(
            file.poll_interval,
            Duration::from_secs(300),
            "poll_interval",
        )?;
        let request_timeout = dur(
            file.request_timeout,
            Duration::from_secs(30),
            "request_timeout",
        )?;
        let mqtt = match file.detect.mqtt {
            Some(s) => Some(
                parse_host_port(s.get_ref())
                    .map_err(|e| bad(Some(s.span()), format!("detect.mqtt: {e}")))?,
            ),
            None => None,
        };
        let detect = DetectConfig {
            serial: file.detect.serial,
            mqtt,
            ble: file.detect.ble,
            rules: file.detect.rules,
        };
        let mqtt_routing = file.mqtt_routing.map(|s| {
            let m = s.into_inner();
            MqttRouting {
                acl_file: m.acl_file,
                password_file: m.password_file,
                pid_file: m.pid_file,
                broker: m.broker,
            }
        });
        let default_approval = file.approval.unwrap_or(Approval::Manual);
        let mut vendors = BTreeMap::new();
        for v in file.vendor {
            let span = v.span();
            let v = v.into_inner();
            let id = v.id.get_ref();
            protocol::announce::check_vendor(id).map_err(|e| {
                bad(
                    Some(v.id.span()),
                    format!("vendor id {id:?}: {}", e.problem),
                )
            })?;
            if vendors.contains_key(id) {
                return Err(bad(Some(span), format!("vendor {id:?} is listed twice")));
            }
            let url = check_url(v.url.get_ref())
                .map_err(|e| bad(Some(v.url.span()), format!("vendor {id:?} url: {e}")))?;
            let key = parse_key(v.key.get_ref())
                .map_err(|e| bad(Some(v.key.span()), format!("vendor {id:?} key: {e}")))?;
            let ca_file = match v.ca_file {
                Some(c) => {
                    if !c.get_ref().is_file() {
                        return Err(bad(
                            Some(c.span()),
                            format!(
                                "vendor {id:?} ca_file {} is not a file",
                                c.get_ref().display()
                            ),
                        ));
                    }
                    Some(c.into_inner())
                }
                None => None,
            };
            let tls_pin = match v.tls_pin {
                Some(p) => Some(
                    crate::http::KeyPin::parse(p.get_ref())
                        .map_err(|e| bad(Some(p.span()), format!("vendor {id:?} tls_pin: {e}")))?,
                ),
                None => None,
            };
            vendors.insert(
                id.clone(),
                VendorSpec {
                    id: id.clone(),
                    url,
                    key,
                    ca_file,
                    tls_pin,
                    approval: v.approval.unwrap_or(default_approval),
                },
            );
        }
        Ok(Config {
            path: path.to_path_buf(),
            state_dir,
            cgroup_parent,
            gateway_id,
            poll_interval,
            request_timeout,
            detect,
            mqtt_routing,
            vendors,
        })
    }

    /// The local API socket.
    pub fn socket(&self) -> PathBuf {
        socket_path(&self.state_dir)
    }
}

/// The local API socket of a state dir.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("berthd.sock")
}

fn default_gateway_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    if host.is_empty() {
        "gateway".into()
    } else {
        host
    }
}

/// 1-based line of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Parses `500ms`, `30s`, `10m`, `2h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 500ms, 30s, 10m or 2h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{text:?} has an unknown unit (use ms, s, m or h)")),
    };
    if d.is_zero() {
        return Err(format!("{text:?} is zero"));
    }
    Ok(d)
}

fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{text:?} has a bad port"))?;
    if host.is_empty() {
        return Err(format!("{text:?} names no host"));
    }
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// Checks a provisioning URL: `https://`, or `http://` to a loopback host.
pub fn check_url(text: &str) -> Result<String, String> {
    let url = text.trim_end_matches('/');
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{text:?} is not an absolute URL"))?;
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    if host.is_empty() {
        return Err(format!("{text:?} names no host"));
    }
    match scheme {
        "https" => Ok(url.to_string()),
        "http" if is_loopback(host) => Ok(url.to_string()),
        "http" => Err(format!(
            "{text:?} is plain http to a host that is not loopback; use https"
        )),
        other => Err(format!("{text:?} has scheme {other:?}; use https")),
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .map(|a| a.is_loopback())
            .unwrap_or(false)
}

/// Parses an Ed25519 public key written as 64 hex digits.
pub fn parse_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes = decode_hex(text.trim())?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("is {} bytes, an Ed25519 key is 32", b.len()))?;
    VerifyingKey::from_bytes(&arr).map_err(|_| "is not a valid Ed25519 public key".to_string())
}

/// Decodes hex digits (either case).
pub fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err("has an odd number of hex digits".into());
    }
    let digit = |c: u8| -> Result<u8, String> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(format!(
                "has a character that is not a hex digit: {:?}",
                c as char
            )),
        }
    };
    text.as_bytes()
        .chunks(2)
        .map(|p| Ok(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/berth/berthd.toml"), text)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn a_full_config_validates() {
        let c = parse(&format!(
            r#"
state_dir = "/tmp/st"
gateway_id = "gw-1"
poll_interval = "500ms"
approval = "manual"
[detect]
mqtt = "127.0.0.1:1883"
serial = ["/dev/ttyUSB0"]
[[vendor]]
id = "acme"
url = "http://127.0.0.1:8080/"
key = "{KEY}"
approval = "auto"
[[vendor]]
id = "globex"
url = "https://p.globex.example"
key = "{KEY}"
"#
        ))
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/tmp/st"));
        assert_eq!(c.poll_interval, Duration::from_millis(500));
        assert_eq!(c.detect.mqtt, Some(("127.0.0.1".into(), 1883)));
        assert_eq!(c.vendors["acme"].url, "http://127.0.0.1:8080");
        assert_eq!(c.vendors["acme"].approval, Approval::Auto);
        assert_eq!(c.vendors["globex"].approval, Approval::Manual);
        assert_eq!(hex(c.vendors["acme"].key.as_bytes()), KEY);
        assert_eq!(c.socket(), PathBuf::from("/tmp/st/berthd.sock"));
    }

    #[test]
    fn errors_name_file_line_and_reason() {
        let e = err("state_dir = \"/x\"\n\nbogus = 1\n");
        assert!(
            e.starts_with("/etc/berth/berthd.toml:3: unknown field `bogus`"),
            "{e}"
        );
        let e = err(&format!(
            "[[vendor]]\nid = \"acme\"\nurl = \"http://10.0.0.1/\"\nkey = \"{KEY}\"\n"
        ));
        assert_eq!(
            e,
            "/etc/berth/berthd.toml:3: vendor \"acme\" url: \"http://10.0.0.1/\" is plain http to a host that is not loopback; use https"
        );
        let e = err("[[vendor]]\nid = \"acme\"\nurl = \"https://a.example\"\nkey = \"abcd\"\n");
        assert_eq!(
            e,
            "/etc/berth/berthd.toml:4: vendor \"acme\" key: is 2 bytes, an Ed25519 key is 32"
        );
        let e = err("poll_interval = \"3 weeks\"\n");
        assert!(
            e.starts_with("/etc/berth/berthd.toml:1: poll_interval:"),
            "{e}"
        );
        let e = err("state_dir = \"rel\"\n");
        assert_eq!(
            e,
            "/etc/berth/berthd.toml:1: state_dir must be an absolute path"
        );
        let e = err("approval = \"sometimes\"\n");
        assert!(
            e.starts_with("/etc/berth/berthd.toml:1: unknown variant `sometimes`"),
            "{e}"
        );
        let dup = format!(
            "[[vendor]]\nid = \"a\"\nurl = \"https://a.example\"\nkey = \"{KEY}\"\n\
             [[vendor]]\nid = \"a\"\nurl = \"https://a.example\"\nkey = \"{KEY}\"\n"
        );
        assert!(
            err(&dup).contains("vendor \"a\" is listed twice"),
            "{}",
            err(&dup)
        );
        let e = err("[detect]\nmqtt = \"nohost\"\n");
        assert_eq!(
            e,
            "/etc/berth/berthd.toml:2: detect.mqtt: \"nohost\" is not HOST:PORT"
        );
    }

    #[test]
    fn urls_and_durations() {
        assert!(check_url("http://localhost:1/").is_ok());
        assert!(check_url("http://[::1]:8/").is_ok());
        assert!(check_url("https://x.example").is_ok());
        assert!(check_url("ftp://x.example").is_err());
        assert!(check_url("http://example.com").is_err());
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").is_err());
        assert_eq!(decode_hex("0aFF"), Ok(vec![10, 255]));
        assert!(decode_hex("0g").is_err());
    }
}

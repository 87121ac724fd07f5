//! The plan: what a vendor wants on a gateway for one of its devices.
//!
//! A plan names the jail (created or reused by name, with its resources,
//! network policy, device passthrough and volumes), the apps to run in it
//! (OCI images pinned by digest, command, environment, mounts of the jail's
//! own volumes) and the checks that prove each app healthy. Plans are
//! versioned per plan id: a gateway only ever moves to a higher version (see
//! [`super::PlanVersionGuard`]). They travel signed; see [`super::signed`].

use std::collections::BTreeMap;
use std::format;
use std::string::String;
use std::vec::Vec;

use minicbor::{Decode, Encode};

use super::{
    check_abs_path, check_count, check_len, check_name, check_plan_id, check_text, from_field,
    invalid, CborMessage, Invalid, FORMAT,
};
use crate::announce;

/// Largest encoded plan (the COSE payload), in bytes.
pub const MAX_PLAN: usize = 32 * 1024;
/// Most apps in one plan.
pub const MAX_APPS: usize = 8;
/// Most volumes one jail declares.
pub const MAX_VOLUMES: usize = 16;
/// Most host ports one jail may be allowed.
pub const MAX_HOST_PORTS: usize = 16;
/// Most entries in an app's command, args, or a check's argv.
pub const MAX_ARGV: usize = 64;
/// Longest single argument, in bytes.
pub const MAX_ARG: usize = 1024;
/// Most environment variables per app.
pub const MAX_ENV: usize = 64;
/// Longest environment variable name, in bytes.
pub const MAX_ENV_NAME: usize = 128;
/// Longest environment variable value, in bytes.
pub const MAX_ENV_VALUE: usize = 4096;
/// Most mounts per app.
pub const MAX_MOUNTS: usize = 16;
/// Most checks per app.
pub const MAX_CHECKS: usize = 16;
/// Longest check timeout, in milliseconds.
pub const MAX_CHECK_TIMEOUT_MS: u32 = 300_000;
/// Longest image reference, in bytes.
pub const MAX_IMAGE_REF: usize = 255;
/// Smallest memory limit a plan may set, in bytes.
pub const MIN_MEMORY: u64 = 4 << 20;
/// Largest CPU share, in thousandths of a CPU.
pub const MAX_CPU_MILLIS: u32 = 256_000;
/// Largest pids limit.
pub const MAX_PIDS: u32 = 65_536;

/// A signed plan's payload.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Plan {
    /// Always [`FORMAT`].
    #[n(0)]
    pub format: u32,
    /// Stable id of this plan at the vendor: `[A-Za-z0-9._-]`, 1–64 bytes,
    /// used in `GET /v1/plans/<plan_id>`.
    #[n(1)]
    pub plan_id: String,
    /// Increases with every change the vendor publishes; at least 1.
    #[n(2)]
    pub version: u64,
    /// The vendor id, as in the device's announce.
    #[n(3)]
    pub vendor: String,
    /// The device this plan applies to: its model and serial as announced.
    #[n(4)]
    pub model: String,
    #[n(5)]
    pub serial: String,
    #[n(6)]
    pub jail: JailPlan,
    /// One to [`MAX_APPS`] apps, distinct names.
    #[n(7)]
    pub apps: Vec<App>,
}

/// The vendor's jail on the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct JailPlan {
    /// The jail's name among the vendor's jails on this gateway.
    #[n(0)]
    pub name: String,
    #[n(1)]
    pub mode: JailMode,
    #[n(2)]
    pub resources: Resources,
    #[n(3)]
    pub network: NetworkPolicy,
    #[n(4)]
    pub devices: DevicePassthrough,
    /// Persistent volumes, each a directory under the jail's data directory
    /// on the gateway; apps may mount only these.
    #[n(5)]
    pub volumes: Vec<Volume>,
}

/// Whether the gateway creates the jail or reuses the vendor's jail of that
/// name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(index_only)]
pub enum JailMode {
    /// Reuse the jail of that name if there is one, else create it.
    #[n(0)]
    CreateOrReuse,
    /// Create it; refuse the plan if the name is taken.
    #[n(1)]
    Create,
    /// Reuse it; refuse the plan if there is no jail of that name.
    #[n(2)]
    Reuse,
}

/// Resource limits of the jail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Resources {
    /// Memory limit in bytes, at least [`MIN_MEMORY`].
    #[n(0)]
    pub memory: u64,
    /// CPU share in thousandths of a CPU (1000 = one whole CPU).
    #[n(1)]
    pub cpu_millis: u32,
    /// Most processes and threads in the jail.
    #[n(2)]
    pub pids: u32,
}

/// What the jail may do on the network.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct NetworkPolicy {
    /// Whether the jail gets a network interface at all.
    #[n(0)]
    pub enabled: bool,
    /// Ports of the gateway the jail may listen on (forwarded to the jail);
    /// empty unless `enabled`.
    #[n(1)]
    pub host_ports: Vec<HostPort>,
}

/// One gateway port forwarded into the jail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct HostPort {
    #[n(0)]
    pub port: u16,
    #[n(1)]
    pub protocol: PortProtocol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Encode, Decode)]
#[cbor(index_only)]
pub enum PortProtocol {
    #[n(0)]
    Tcp,
    #[n(1)]
    Udp,
}

/// Devices passed into the jail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct DevicePassthrough {
    /// Whether the device's serial node (when it came on serial) is passed
    /// into the jail.
    #[n(0)]
    pub serial: bool,
}

/// A persistent directory of the jail.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Volume {
    #[n(0)]
    pub name: String,
}

/// One app in the jail.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct App {
    #[n(0)]
    pub name: String,
    /// `registry/repository@sha256:<64 hex digits>`; tags are refused.
    #[n(1)]
    pub image: ImageRef,
    /// Replaces the image's entrypoint when not empty.
    #[n(2)]
    pub command: Vec<String>,
    /// Replaces the image's default arguments when not empty.
    #[n(3)]
    pub args: Vec<String>,
    /// Added to the image's environment; names `[A-Za-z_][A-Za-z0-9_]*`.
    #[n(4)]
    pub env: BTreeMap<String, String>,
    #[n(5)]
    pub mounts: Vec<Mount>,
    /// Run after the app starts; all must pass or the gateway rolls back.
    #[n(6)]
    pub checks: Vec<Check>,
}

/// One of the jail's volumes mounted into an app.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Mount {
    /// A name from [`JailPlan::volumes`].
    #[n(0)]
    pub volume: String,
    /// Absolute, normalised path inside the jail.
    #[n(1)]
    pub target: String,
    #[n(2)]
    pub read_only: bool,
}

/// One validation check.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Check {
    #[n(0)]
    pub kind: CheckKind,
    /// How long the check may take (and keep retrying) before it fails, in
    /// milliseconds: 1 to [`MAX_CHECK_TIMEOUT_MS`].
    #[n(1)]
    pub timeout_ms: u32,
}

/// What a check looks at. On the wire: `[kind, {fields}]`.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
pub enum CheckKind {
    /// A process of this name (`comm`, at most 15 bytes) runs in the jail.
    #[n(0)]
    #[cbor(map)]
    ProcessRunning {
        #[n(0)]
        name: String,
    },
    /// Something in the jail listens on this TCP port.
    #[n(1)]
    #[cbor(map)]
    TcpListening {
        #[n(0)]
        port: u16,
    },
    /// `GET http://<jail address>:<port><path>` answers `status`.
    #[n(2)]
    #[cbor(map)]
    HttpGet {
        #[n(0)]
        port: u16,
        #[n(1)]
        path: String,
        #[n(2)]
        status: u16,
    },
    /// Running `argv` in the jail exits with `code`.
    #[n(3)]
    #[cbor(map)]
    CommandExit {
        #[n(0)]
        argv: Vec<String>,
        #[n(1)]
        code: i32,
    },
    /// The file exists inside the jail.
    #[n(4)]
    #[cbor(map)]
    FileExists {
        #[n(0)]
        path: String,
    },
}

/// An OCI image reference pinned by digest:
/// `registry[:port]/repository@sha256:<64 lowercase hex digits>`.
///
/// The registry part must look like a host (contain a `.` or a `:`, or be
/// `localhost`), so a reference is never resolved against an implied
/// default registry. A tag (`repo:tag@sha256:...`) is refused: the digest
/// alone names the image.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Encode, Decode)]
#[cbor(transparent)]
pub struct ImageRef(#[n(0)] String);

impl ImageRef {
    /// Parses and checks a reference.
    pub fn parse(s: &str) -> Result<ImageRef, Invalid> {
        check_image_ref("image", s)?;
        Ok(ImageRef(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `host[:port]`.
    pub fn registry(&self) -> &str {
        self.0.split_once('/').map_or("", |(r, _)| r)
    }

    /// The repository path, without registry or digest.
    pub fn repository(&self) -> &str {
        let rest = self.0.split_once('/').map_or("", |(_, r)| r);
        rest.split_once('@').map_or(rest, |(r, _)| r)
    }

    /// `sha256:<hex>`.
    pub fn digest(&self) -> &str {
        self.0.split_once('@').map_or("", |(_, d)| d)
    }
}

impl core::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_image_ref(field: &str, s: &str) -> Result<(), Invalid> {
    check_len(field, s, MAX_IMAGE_REF)?;
    let Some((name, digest)) = s.split_once('@') else {
        return Err(invalid(
            field,
            format!("`{s}` is not pinned by digest (`registry/repo@sha256:...`)"),
        ));
    };
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return Err(invalid(field, format!("`{s}`: the digest must be sha256")));
    };
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid(
            field,
            format!("`{s}`: a sha256 digest is 64 lowercase hex digits"),
        ));
    }
    let Some((registry, repo)) = name.split_once('/') else {
        return Err(invalid(
            field,
            format!("`{s}` names no registry (`registry/repo@sha256:...`)"),
        ));
    };
    let host_ok = !registry.is_empty()
        && registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
        && (registry.contains('.') || registry.contains(':') || registry == "localhost");
    if !host_ok {
        return Err(invalid(
            field,
            format!("`{s}`: `{registry}` is not a registry host"),
        ));
    }
    if let Some((_, port)) = registry.split_once(':') {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(invalid(field, format!("`{s}`: bad registry port `{port}`")));
        }
    }
    if repo.contains(':') {
        return Err(invalid(
            field,
            format!("`{s}` carries a tag; pin the image by digest only"),
        ));
    }
    for c in repo.split('/') {
        let ok = !c.is_empty()
            && c.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && c.as_bytes()[0].is_ascii_alphanumeric()
            && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric();
        if !ok {
            return Err(invalid(
                field,
                format!("`{s}`: bad repository component `{c}`"),
            ));
        }
    }
    Ok(())
}

fn check_argv(field: &str, argv: &[String]) -> Result<(), Invalid> {
    check_count(field, argv, MAX_ARGV)?;
    for (i, a) in argv.iter().enumerate() {
        check_text(&format!("{field}[{i}]"), a, MAX_ARG)?;
    }
    Ok(())
}

fn check_model(field: &str, s: &str) -> Result<(), Invalid> {
    check_len(field, s, announce::MAX_MODEL)?;
    if s.chars().any(char::is_control) {
        return Err(invalid(field, "has a control character"));
    }
    Ok(())
}

impl Plan {
    /// Whether the plan is meant for this device.
    pub fn applies_to(&self, vendor: &str, model: &str, serial: &str) -> bool {
        self.vendor == vendor && self.model == model && self.serial == serial
    }

    /// The app of that name.
    pub fn app(&self, name: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.name == name)
    }
}

impl CborMessage for Plan {
    const WHAT: &'static str = "plan";
    const MAX: usize = MAX_PLAN;

    fn format(&self) -> u32 {
        self.format
    }

    fn validate(&self) -> Result<(), Invalid> {
        if self.format != FORMAT {
            return Err(invalid(
                "format",
                format!("is {}, must be {FORMAT}", self.format),
            ));
        }
        check_plan_id("plan_id", &self.plan_id)?;
        if self.version == 0 {
            return Err(invalid("version", "must be at least 1"));
        }
        announce::check_vendor(&self.vendor).map_err(|e| from_field("vendor", e))?;
        check_model("model", &self.model)?;
        announce::check_serial(&self.serial).map_err(|e| from_field("serial", e))?;
        self.jail.validate()?;
        if self.apps.is_empty() {
            return Err(invalid("apps", "is empty"));
        }
        check_count("apps", &self.apps, MAX_APPS)?;
        for (i, app) in self.apps.iter().enumerate() {
            if self.apps[..i].iter().any(|a| a.name == app.name) {
                return Err(invalid(
                    format!("apps[{i}].name"),
                    format!("repeats `{}`", app.name),
                ));
            }
            app.validate(&format!("apps[{i}]"), &self.jail)?;
        }
        Ok(())
    }
}

impl JailPlan {
    fn validate(&self) -> Result<(), Invalid> {
        check_name("jail.name", &self.name)?;
        let r = &self.resources;
        if r.memory < MIN_MEMORY {
            return Err(invalid(
                "jail.resources.memory",
                format!("is {} bytes, the least is {MIN_MEMORY}", r.memory),
            ));
        }
        if r.cpu_millis == 0 || r.cpu_millis > MAX_CPU_MILLIS {
            return Err(invalid(
                "jail.resources.cpu_millis",
                format!("is {}, must be 1 to {MAX_CPU_MILLIS}", r.cpu_millis),
            ));
        }
        if r.pids == 0 || r.pids > MAX_PIDS {
            return Err(invalid(
                "jail.resources.pids",
                format!("is {}, must be 1 to {MAX_PIDS}", r.pids),
            ));
        }
        let ports = &self.network.host_ports;
        check_count("jail.network.host_ports", ports, MAX_HOST_PORTS)?;
        if !self.network.enabled && !ports.is_empty() {
            return Err(invalid(
                "jail.network.host_ports",
                "must be empty when the network is not enabled",
            ));
        }
        for (i, p) in ports.iter().enumerate() {
            if p.port == 0 {
                return Err(invalid(
                    format!("jail.network.host_ports[{i}].port"),
                    "is 0",
                ));
            }
            if ports[..i].contains(p) {
                return Err(invalid(
                    format!("jail.network.host_ports[{i}]"),
                    format!("repeats port {}", p.port),
                ));
            }
        }
        check_count("jail.volumes", &self.volumes, MAX_VOLUMES)?;
        for (i, v) in self.volumes.iter().enumerate() {
            check_name(&format!("jail.volumes[{i}].name"), &v.name)?;
            if self.volumes[..i].contains(v) {
                return Err(invalid(
                    format!("jail.volumes[{i}].name"),
                    format!("repeats `{}`", v.name),
                ));
            }
        }
        Ok(())
    }
}

impl App {
    fn validate(&self, at: &str, jail: &JailPlan) -> Result<(), Invalid> {
        check_name(&format!("{at}.name"), &self.name)?;
        check_image_ref(&format!("{at}.image"), self.image.as_str())?;
        check_argv(&format!("{at}.command"), &self.command)?;
        if self.command.first().is_some_and(String::is_empty) {
            return Err(invalid(format!("{at}.command[0]"), "is empty"));
        }
        check_argv(&format!("{at}.args"), &self.args)?;
        if self.env.len() > MAX_ENV {
            return Err(invalid(
                format!("{at}.env"),
                format!("has {} entries, the limit is {MAX_ENV}", self.env.len()),
            ));
        }
        for (k, v) in &self.env {
            let f = format!("{at}.env.{k}");
            check_len(&f, k, MAX_ENV_NAME)?;
            let b = k.as_bytes();
            let ok = (b[0].is_ascii_alphabetic() || b[0] == b'_')
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
            if !ok {
                return Err(invalid(f, "is not a valid variable name"));
            }
            check_text(&f, v, MAX_ENV_VALUE)?;
        }
        check_count(&format!("{at}.mounts"), &self.mounts, MAX_MOUNTS)?;
        for (i, m) in self.mounts.iter().enumerate() {
            let f = format!("{at}.mounts[{i}]");
            if !jail.volumes.iter().any(|v| v.name == m.volume) {
                return Err(invalid(
                    format!("{f}.volume"),
                    format!("`{}` is not one of the jail's volumes", m.volume),
                ));
            }
            check_abs_path(&format!("{f}.target"), &m.target)?;
            if self.mounts[..i].iter().any(|o| o.target == m.target) {
                return Err(invalid(
                    format!("{f}.target"),
                    format!("repeats `{}`", m.target),
                ));
            }
        }
        check_count(&format!("{at}.checks"), &self.checks, MAX_CHECKS)?;
        for (i, c) in self.checks.iter().enumerate() {
            c.validate(&format!("{at}.checks[{i}]"))?;
        }
        Ok(())
    }
}

impl Check {
    fn validate(&self, at: &str) -> Result<(), Invalid> {
        if self.timeout_ms == 0 || self.timeout_ms > MAX_CHECK_TIMEOUT_MS {
            return Err(invalid(
                format!("{at}.timeout_ms"),
                format!(
                    "is {}, must be 1 to {MAX_CHECK_TIMEOUT_MS}",
                    self.timeout_ms
                ),
            ));
        }
        match &self.kind {
            CheckKind::ProcessRunning { name } => {
                let f = format!("{at}.name");
                // The kernel keeps 15 bytes of a process name (`comm`).
                check_len(&f, name, 15)?;
                if name.bytes().any(|b| b == b'/' || b.is_ascii_control()) {
                    return Err(invalid(f, "has `/` or a control character"));
                }
            }
            CheckKind::TcpListening { port } => {
                if *port == 0 {
                    return Err(invalid(format!("{at}.port"), "is 0"));
                }
            }
            CheckKind::HttpGet { port, path, status } => {
                if *port == 0 {
                    return Err(invalid(format!("{at}.port"), "is 0"));
                }
                let f = format!("{at}.path");
                check_len(&f, path, super::MAX_PATH)?;
                if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(invalid(f, "must start with `/` and be printable ASCII"));
                }
                if !(100..=599).contains(status) {
                    return Err(invalid(
                        format!("{at}.status"),
                        format!("{status} is not an HTTP status"),
                    ));
                }
            }
            CheckKind::CommandExit { argv, .. } => {
                let f = format!("{at}.argv");
                check_argv(&f, argv)?;
                if argv.first().is_none_or(String::is_empty) {
                    return Err(invalid(f, "needs a program"));
                }
            }
            CheckKind::FileExists { path } => check_abs_path(&format!("{at}.path"), path)?,
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::prelude::rust_2021::*;
    use std::{format, vec};

    use super::*;
    use crate::provision::MessageError;

    pub(crate) const DIGEST: &str =
        "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    pub(crate) fn sample() -> Plan {
        let mut env = BTreeMap::new();
        env.insert("LOG_LEVEL".into(), "info".into());
        Plan {
            format: FORMAT,
            plan_id: "p-3f9a".into(),
            version: 4,
            vendor: "acme".into(),
            model: "Meter 2".into(),
            serial: "SN-1".into(),
            jail: JailPlan {
                name: "acme".into(),
                mode: JailMode::CreateOrReuse,
                resources: Resources {
                    memory: 64 << 20,
                    cpu_millis: 500,
                    pids: 64,
                },
                network: NetworkPolicy {
                    enabled: true,
                    host_ports: vec![HostPort {
                        port: 8080,
                        protocol: PortProtocol::Tcp,
                    }],
                },
                devices: DevicePassthrough { serial: true },
                volumes: vec![Volume {
                    name: "data".into(),
                }],
            },
            apps: vec![App {
                name: "collector".into(),
                image: ImageRef::parse(&format!("registry.acme.example/meter/collector@{DIGEST}"))
                    .unwrap(),
                command: vec!["/bin/collector".into()],
                args: vec!["--port".into(), "8080".into()],
                env,
                mounts: vec![Mount {
                    volume: "data".into(),
                    target: "/var/lib/collector".into(),
                    read_only: false,
                }],
                checks: vec![
                    Check {
                        kind: CheckKind::ProcessRunning {
                            name: "collector".into(),
                        },
                        timeout_ms: 5000,
                    },
                    Check {
                        kind: CheckKind::TcpListening { port: 8080 },
                        timeout_ms: 5000,
                    },
                    Check {
                        kind: CheckKind::HttpGet {
                            port: 8080,
                            path: "/health".into(),
                            status: 200,
                        },
                        timeout_ms: 5000,
                    },
                    Check {
                        kind: CheckKind::CommandExit {
                            argv: vec!["/bin/collector".into(), "--check".into()],
                            code: 0,
                        },
                        timeout_ms: 5000,
                    },
                    Check {
                        kind: CheckKind::FileExists {
                            path: "/var/lib/collector/ready".into(),
                        },
                        timeout_ms: 5000,
                    },
                ],
            }],
        }
    }

    #[test]
    fn round_trip() {
        let p = sample();
        let bytes = p.to_cbor().unwrap();
        assert_eq!(Plan::from_cbor(&bytes).unwrap(), p);
        assert!(p.applies_to("acme", "Meter 2", "SN-1"));
        assert!(!p.applies_to("acme", "Meter 2", "SN-2"));
    }

    #[test]
    fn image_refs() {
        let good = [
            format!("registry.acme.example/meter/collector@{DIGEST}"),
            format!("localhost:5000/app@{DIGEST}"),
            format!("127.0.0.1:5000/a/b-c/d_e@{DIGEST}"),
        ];
        for g in &good {
            ImageRef::parse(g).unwrap();
        }
        let r = ImageRef::parse(&good[0]).unwrap();
        assert_eq!(r.registry(), "registry.acme.example");
        assert_eq!(r.repository(), "meter/collector");
        assert_eq!(r.digest(), DIGEST);
        let bad = [
            ("registry.acme.example/app:1.0", "not pinned"),
            (
                &*format!("registry.acme.example/app:1.0@{DIGEST}"),
                "carries a tag",
            ),
            (&*format!("app@{DIGEST}"), "names no registry"),
            (&*format!("library/app@{DIGEST}"), "not a registry host"),
            ("r.example/app@sha512:00", "must be sha256"),
            ("r.example/app@sha256:ABC", "64 lowercase hex"),
            (
                &*format!("r.example/App@{DIGEST}"),
                "bad repository component",
            ),
            (
                &*format!("r.example/a//b@{DIGEST}"),
                "bad repository component",
            ),
            (&*format!("r.example:0/a@{DIGEST}"), "bad registry port"),
        ];
        for (b, why) in bad {
            let e = ImageRef::parse(b).unwrap_err();
            assert!(e.reason.contains(why), "{b}: {e}");
        }
    }

    #[test]
    fn refuses_a_tagged_image_on_decode() {
        let mut p = sample();
        p.apps[0].image = ImageRef("registry.acme.example/meter/collector:latest".into());
        let bytes = super::super::encode_unchecked(&p);
        let e = Plan::from_cbor(&bytes).unwrap_err();
        assert!(matches!(e, MessageError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("apps[0].image"), "{e}");
    }

    #[test]
    fn mounts_only_declared_volumes() {
        let mut p = sample();
        p.apps[0].mounts[0].volume = "etc".into();
        let e = p.to_cbor().unwrap_err().to_string();
        assert!(e.contains("apps[0].mounts[0].volume"), "{e}");
        let mut p = sample();
        p.apps[0].mounts[0].target = "/var/../etc".into();
        assert!(p.to_cbor().is_err());
    }

    #[test]
    fn field_rules() {
        type Case = (fn(&mut Plan), &'static str);
        let cases: Vec<Case> = vec![
            (|p| p.version = 0, "version"),
            (|p| p.plan_id = "a/b".into(), "plan_id"),
            (|p| p.vendor = "Acme".into(), "vendor"),
            (|p| p.serial = "SN 1".into(), "serial"),
            (|p| p.jail.name = "".into(), "jail.name"),
            (|p| p.jail.resources.memory = 1024, "jail.resources.memory"),
            (
                |p| p.jail.resources.cpu_millis = 0,
                "jail.resources.cpu_millis",
            ),
            (|p| p.jail.resources.pids = 0, "jail.resources.pids"),
            (
                |p| p.jail.network.enabled = false,
                "jail.network.host_ports",
            ),
            (
                |p| {
                    let d = p.jail.network.host_ports[0];
                    p.jail.network.host_ports.push(d)
                },
                "jail.network.host_ports[1]",
            ),
            (|p| p.apps.clear(), "apps"),
            (
                |p| {
                    let a = p.apps[0].clone();
                    p.apps.push(a)
                },
                "apps[1].name",
            ),
            (
                |p| {
                    p.apps[0].env.insert("1X".into(), "v".into());
                },
                "apps[0].env.1X",
            ),
            (
                |p| p.apps[0].command = vec!["".into()],
                "apps[0].command[0]",
            ),
            (
                |p| p.apps[0].checks[0].timeout_ms = 0,
                "apps[0].checks[0].timeout_ms",
            ),
            (
                |p| {
                    p.apps[0].checks[0].kind = CheckKind::ProcessRunning {
                        name: "a-very-long-process-name".into(),
                    }
                },
                "apps[0].checks[0].name",
            ),
            (
                |p| {
                    p.apps[0].checks[2].kind = CheckKind::HttpGet {
                        port: 1,
                        path: "x".into(),
                        status: 200,
                    }
                },
                "apps[0].checks[2].path",
            ),
            (
                |p| {
                    p.apps[0].checks[2].kind = CheckKind::HttpGet {
                        port: 1,
                        path: "/".into(),
                        status: 42,
                    }
                },
                "apps[0].checks[2].status",
            ),
            (
                |p| {
                    p.apps[0].checks[3].kind = CheckKind::CommandExit {
                        argv: vec![],
                        code: 0,
                    }
                },
                "apps[0].checks[3].argv",
            ),
            (
                |p| p.apps[0].checks[4].kind = CheckKind::FileExists { path: "rel".into() },
                "apps[0].checks[4].path",
            ),
        ];
        for (mutate, field) in cases {
            let mut p = sample();
            mutate(&mut p);
            let e = p.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn bounds_the_encoding() {
        let mut p = sample();
        p.apps[0].args = vec!["x".repeat(MAX_ARG); MAX_ARGV];
        let e = p.to_cbor().unwrap_err();
        assert!(matches!(e, MessageError::TooLarge { .. }), "{e}");
        let bytes = vec![0xa0; MAX_PLAN + 1];
        assert!(matches!(
            Plan::from_cbor(&bytes),
            Err(MessageError::TooLarge { .. })
        ));
    }

    #[test]
    fn refuses_unknown_keys() {
        // The sample plan with an extra key 8 appended to its map.
        let mut bytes = sample().to_cbor().unwrap();
        assert_eq!(bytes[0], 0xa8);
        bytes[0] = 0xa9;
        bytes.extend_from_slice(&[0x08, 0x00]);
        let e = Plan::from_cbor(&bytes).unwrap_err();
        assert!(matches!(e, MessageError::NonCanonical { .. }), "{e}");
    }

    #[test]
    fn refuses_non_canonical_integers() {
        let bytes = sample().to_cbor().unwrap();
        // Key 0 (format) is `00 01`; spell the value 1 as `18 01`.
        assert_eq!(&bytes[1..3], &[0x00, 0x01]);
        let mut long = vec![bytes[0], 0x00, 0x18, 0x01];
        long.extend_from_slice(&bytes[3..]);
        assert!(matches!(
            Plan::from_cbor(&long),
            Err(MessageError::NonCanonical { .. })
        ));
    }
}

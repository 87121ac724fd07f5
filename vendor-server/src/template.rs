//! Plan templates: one TOML file per device model, turned into a signed
//! [`Plan`] for each device of that model.
//!
//! ```toml
//! vendor = "acme"
//!
//! [jail]
//! name = "acme-meter"
//! mode = "create-or-reuse"      # or "create", "reuse"
//! memory_mib = 64
//! cpu_millis = 500              # 1000 = one CPU
//! pids = 64
//! network = true
//! host_ports = ["8080/tcp"]
//! serial = true                 # pass the device's serial node in
//! volumes = ["data"]
//!
//! [[app]]
//! name = "collector"
//! image = "registry.acme.example/meter/collector@sha256:<64 hex>"
//! command = ["/bin/collector"]
//! args = ["--port", "8080"]
//! env = { LOG_LEVEL = "info" }
//! mounts = [{ volume = "data", target = "/var/lib/collector" }]
//!
//! [[app.check]]
//! process = "collector"
//! [[app.check]]
//! tcp_port = 8080
//! timeout_ms = 5000
//! [[app.check]]
//! http = { port = 8080, path = "/health", status = 200 }
//! [[app.check]]
//! command = ["/bin/collector", "--check"]
//! exit_code = 0
//! [[app.check]]
//! file = "/var/lib/collector/ready"
//! ```
//!
//! Unknown keys are refused. Every rule of the plan format is checked when
//! the template is loaded (with a placeholder plan id, version and serial),
//! and a refusal names the line of the table or value at fault.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use protocol::provision::{
    App, CborMessage, Check, CheckKind, DevicePassthrough, HostPort, ImageRef, Invalid, JailMode,
    JailPlan, Mount, NetworkPolicy, Plan, PortProtocol, Resources, Volume, FORMAT,
};
use serde::Deserialize;
use toml::Spanned;

/// Default check timeout, in milliseconds.
pub const DEFAULT_CHECK_TIMEOUT_MS: u32 = 10_000;
/// Largest template file accepted, in bytes.
pub const MAX_TEMPLATE: usize = 256 * 1024;

/// Why a template was refused.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read template {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("template {origin}: {len} bytes exceeds the limit of {MAX_TEMPLATE}")]
    TooLarge { origin: String, len: usize },
    #[error("template {origin}: line {line}: {reason}")]
    Invalid {
        origin: String,
        line: usize,
        reason: String,
    },
}

impl TemplateError {
    /// The 1-based line the refusal is about, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            TemplateError::Invalid { line, .. } => Some(*line),
            _ => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateToml {
    vendor: Spanned<String>,
    jail: Spanned<JailToml>,
    #[serde(default)]
    app: Vec<Spanned<AppToml>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JailToml {
    name: String,
    #[serde(default)]
    mode: ModeToml,
    memory_mib: u64,
    cpu_millis: u32,
    pids: u32,
    #[serde(default)]
    network: bool,
    #[serde(default)]
    host_ports: Vec<Spanned<String>>,
    #[serde(default)]
    serial: bool,
    #[serde(default)]
    volumes: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ModeToml {
    #[default]
    CreateOrReuse,
    Create,
    Reuse,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppToml {
    name: String,
    image: Spanned<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    mounts: Vec<MountToml>,
    #[serde(default)]
    check: Vec<Spanned<CheckToml>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MountToml {
    volume: String,
    target: String,
    #[serde(default)]
    read_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckToml {
    process: Option<String>,
    tcp_port: Option<u16>,
    http: Option<HttpToml>,
    command: Option<Vec<String>>,
    exit_code: Option<i32>,
    file: Option<String>,
    timeout_ms: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpToml {
    port: u16,
    path: String,
    #[serde(default = "ok_status")]
    status: u16,
}

fn ok_status() -> u16 {
    200
}

/// A validated template: everything of a plan but the plan id, version,
/// model and serial, which are filled in per device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub vendor: String,
    pub jail: JailPlan,
    pub apps: Vec<App>,
}

impl Template {
    /// Reads and checks a template file.
    pub fn load(path: &Path) -> Result<Template, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
            path: path.to_owned(),
            source,
        })?;
        Template::parse(&text, &path.display().to_string())
    }

    /// Parses and checks template text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Template, TemplateError> {
        if text.len() > MAX_TEMPLATE {
            return Err(TemplateError::TooLarge {
                origin: origin.into(),
                len: text.len(),
            });
        }
        let at = |span: Option<Range<usize>>, reason: String| TemplateError::Invalid {
            origin: origin.into(),
            line: span.map_or(1, |s| line_of(text, s.start)),
            reason,
        };
        let t: TemplateToml =
            toml::from_str(text).map_err(|e| at(e.span(), e.message().trim().to_string()))?;

        let jail_span = t.jail.span();
        let j = t.jail.into_inner();
        let mut host_ports = Vec::new();
        for p in &j.host_ports {
            host_ports.push(parse_port(p.get_ref()).map_err(|r| at(Some(p.span()), r))?);
        }
        let jail = JailPlan {
            name: j.name,
            mode: match j.mode {
                ModeToml::CreateOrReuse => JailMode::CreateOrReuse,
                ModeToml::Create => JailMode::Create,
                ModeToml::Reuse => JailMode::Reuse,
            },
            resources: Resources {
                memory: j.memory_mib.saturating_mul(1 << 20),
                cpu_millis: j.cpu_millis,
                pids: j.pids,
            },
            network: NetworkPolicy {
                enabled: j.network,
                host_ports,
            },
            devices: DevicePassthrough { serial: j.serial },
            volumes: j.volumes.into_iter().map(|name| Volume { name }).collect(),
        };

        // Where each part of the plan came from, to point refusals at a line.
        let mut app_spans = Vec::new();
        let mut image_spans = Vec::new();
        let mut check_spans = Vec::new();
        let mut apps = Vec::new();
        for a in t.app {
            app_spans.push(a.span());
            let a = a.into_inner();
            image_spans.push(a.image.span());
            let mut checks = Vec::new();
            let mut spans = Vec::new();
            for c in a.check {
                spans.push(c.span());
                let span = c.span();
                checks.push(check(c.into_inner()).map_err(|r| at(Some(span), r))?);
            }
            check_spans.push(spans);
            apps.push(App {
                name: a.name,
                // Checked with the rest of the plan below.
                image: ImageRef::parse(a.image.get_ref())
                    .map_err(|e| at(Some(a.image.span()), e.to_string()))?,
                command: a.command,
                args: a.args,
                env: a.env,
                mounts: a
                    .mounts
                    .into_iter()
                    .map(|m| Mount {
                        volume: m.volume,
                        target: m.target,
                        read_only: m.read_only,
                    })
                    .collect(),
                checks,
            });
        }
        let template = Template {
            vendor: t.vendor.get_ref().clone(),
            jail,
            apps,
        };
        if let Err(e) = template
            .plan("template", 1, "model", "placeholder")
            .validate()
        {
            let span = span_of(
                &e,
                &t.vendor.span(),
                &jail_span,
                &app_spans,
                &image_spans,
                &check_spans,
            );
            let reason = if template.apps.is_empty() && e.field == "apps" {
                "no `[[app]]`: a plan needs at least one app".to_string()
            } else {
                e.to_string()
            };
            return Err(at(Some(span), reason));
        }
        Ok(template)
    }

    /// The plan for one device. Validate it (or encode it, which validates)
    /// before use: the model and serial come from outside the template.
    pub fn plan(&self, plan_id: &str, version: u64, model: &str, serial: &str) -> Plan {
        Plan {
            format: FORMAT,
            plan_id: plan_id.into(),
            version,
            vendor: self.vendor.clone(),
            model: model.into(),
            serial: serial.into(),
            jail: self.jail.clone(),
            apps: self.apps.clone(),
        }
    }
}

/// The template span a plan refusal points at: the app's image, check or
/// table, the jail table, or the vendor line.
fn span_of(
    e: &Invalid,
    vendor: &Range<usize>,
    jail: &Range<usize>,
    apps: &[Range<usize>],
    images: &[Range<usize>],
    checks: &[Vec<Range<usize>>],
) -> Range<usize> {
    let f = e.field.as_str();
    if f.starts_with("jail") {
        return jail.clone();
    }
    if f == "vendor" {
        return vendor.clone();
    }
    let Some(rest) = f.strip_prefix("apps[") else {
        return apps.first().unwrap_or(jail).clone();
    };
    let Some((i, rest)) = rest.split_once(']') else {
        return jail.clone();
    };
    let Ok(i) = i.parse::<usize>() else {
        return jail.clone();
    };
    if rest.starts_with(".image") {
        if let Some(s) = images.get(i) {
            return s.clone();
        }
    }
    if let Some(c) = rest.strip_prefix(".checks[") {
        if let Some(j) = c.split_once(']').and_then(|(j, _)| j.parse::<usize>().ok()) {
            if let Some(s) = checks.get(i).and_then(|c| c.get(j)) {
                return s.clone();
            }
        }
    }
    apps.get(i).unwrap_or(jail).clone()
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn parse_port(s: &str) -> Result<HostPort, String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let protocol = match proto {
        "tcp" => PortProtocol::Tcp,
        "udp" => PortProtocol::Udp,
        _ => return Err(format!("host port `{s}`: protocol must be tcp or udp")),
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("host port `{s}`: not a port number 1-65535"))?;
    Ok(HostPort { port, protocol })
}

fn check(c: CheckToml) -> Result<Check, String> {
    let kinds = [
        c.process.is_some(),
        c.tcp_port.is_some(),
        c.http.is_some(),
        c.command.is_some(),
        c.file.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(
            "a check needs exactly one of `process`, `tcp_port`, `http`, `command`, `file`".into(),
        );
    }
    if c.exit_code.is_some() && c.command.is_none() {
        return Err("`exit_code` belongs to a `command` check".into());
    }
    let kind = if let Some(name) = c.process {
        CheckKind::ProcessRunning { name }
    } else if let Some(port) = c.tcp_port {
        CheckKind::TcpListening { port }
    } else if let Some(h) = c.http {
        CheckKind::HttpGet {
            port: h.port,
            path: h.path,
            status: h.status,
        }
    } else if let Some(argv) = c.command {
        CheckKind::CommandExit {
            argv,
            code: c.exit_code.unwrap_or(0),
        }
    } else if let Some(path) = c.file {
        CheckKind::FileExists { path }
    } else {
        unreachable!("exactly one kind was checked above")
    };
    Ok(Check {
        kind,
        timeout_ms: c.timeout_ms.unwrap_or(DEFAULT_CHECK_TIMEOUT_MS),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const DIGEST: &str =
        "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    pub(crate) fn text() -> String {
        format!(
            r#"vendor = "acme"

[jail]
name = "acme-meter"
memory_mib = 64
cpu_millis = 500
pids = 64
network = true
host_ports = ["8080/tcp", "5353/udp"]
serial = true
volumes = ["data"]

[[app]]
name = "collector"
image = "registry.acme.example/meter/collector@{DIGEST}"
command = ["/bin/collector"]
env = {{ LOG_LEVEL = "info" }}
mounts = [{{ volume = "data", target = "/var/lib/collector" }}]

[[app.check]]
process = "collector"

[[app.check]]
http = {{ port = 8080, path = "/health" }}
timeout_ms = 3000

[[app.check]]
command = ["/bin/collector", "--check"]
exit_code = 3
"#
        )
    }

    #[test]
    fn parses() {
        let t = Template::parse(&text(), "t.toml").unwrap();
        assert_eq!(t.vendor, "acme");
        assert_eq!(t.jail.resources.memory, 64 << 20);
        assert_eq!(t.jail.mode, JailMode::CreateOrReuse);
        assert_eq!(t.jail.network.host_ports[1].protocol, PortProtocol::Udp);
        let app = &t.apps[0];
        assert_eq!(app.checks.len(), 3);
        assert_eq!(app.checks[0].timeout_ms, DEFAULT_CHECK_TIMEOUT_MS);
        assert_eq!(
            app.checks[1].kind,
            CheckKind::HttpGet {
                port: 8080,
                path: "/health".into(),
                status: 200
            }
        );
        assert_eq!(
            app.checks[2].kind,
            CheckKind::CommandExit {
                argv: vec!["/bin/collector".into(), "--check".into()],
                code: 3
            }
        );
        let plan = t.plan("p1", 2, "Meter 2", "SN-1");
        plan.validate().unwrap();
    }

    fn refusal(text: &str) -> (usize, String) {
        match Template::parse(text, "t.toml") {
            Err(TemplateError::Invalid { line, reason, .. }) => (line, reason),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn unknown_key_names_its_line() {
        let t = text().replace("pids = 64\n", "pids = 64\ncolour = \"red\"\n");
        let (line, reason) = refusal(&t);
        assert_eq!(line, 8, "{reason}");
        assert!(reason.contains("unknown field `colour`"), "{reason}");
    }

    #[test]
    fn tagged_image_names_its_line() {
        let t = text().replace(&format!("collector@{DIGEST}"), "collector:latest");
        let (line, reason) = refusal(&t);
        assert_eq!(line, 15, "{reason}");
        assert!(reason.contains("not pinned by digest"), "{reason}");
    }

    #[test]
    fn plan_rules_name_their_line() {
        // A mount of an undeclared volume: the app's table.
        let t = text().replace("volume = \"data\"", "volume = \"etc\"");
        let (line, reason) = refusal(&t);
        assert_eq!(line, 13, "{reason}");
        assert!(reason.contains("apps[0].mounts[0].volume"), "{reason}");
        // A bad check: its own table.
        let t = text().replace("path = \"/health\"", "path = \"health\"");
        let (line, reason) = refusal(&t);
        assert_eq!(line, 23, "{reason}");
        assert!(reason.contains("apps[0].checks[1].path"), "{reason}");
        // A check with two kinds.
        let t = text().replace(
            "process = \"collector\"",
            "process = \"collector\"\ntcp_port = 1",
        );
        let (line, reason) = refusal(&t);
        assert_eq!(line, 20, "{reason}");
        assert!(reason.contains("exactly one of"), "{reason}");
        // Jail limits.
        let t = text().replace("pids = 64", "pids = 0");
        let (line, reason) = refusal(&t);
        assert_eq!(line, 3, "{reason}");
        assert!(reason.contains("jail.resources.pids"), "{reason}");
        let t = text().replace("\"5353/udp\"", "\"5353/sctp\"");
        let (line, reason) = refusal(&t);
        assert_eq!(line, 9, "{reason}");
        assert!(reason.contains("tcp or udp"), "{reason}");
    }

    #[test]
    fn syntax_errors_name_their_line() {
        let t = text().replace("cpu_millis = 500", "cpu_millis = ");
        let (line, _) = refusal(&t);
        assert_eq!(line, 6);
        let (line, reason) = refusal("vendor = \"acme\"\n");
        assert_eq!(line, 1);
        assert!(reason.contains("missing field `jail`"), "{reason}");
    }

    #[test]
    fn needs_an_app() {
        let t = text();
        let cut = t.find("[[app]]").unwrap();
        let (_, reason) = refusal(&t[..cut]);
        assert!(reason.contains("at least one app"), "{reason}");
    }

    #[test]
    fn the_example_template_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/meter.toml");
        let t = Template::load(&p).unwrap();
        assert_eq!(t.apps[0].checks.len(), 5);
        assert_eq!(t.apps[0].checks[1].timeout_ms, DEFAULT_CHECK_TIMEOUT_MS);
    }

    #[test]
    fn load_reports_the_path() {
        let e = Template::load(Path::new("/nonexistent/t.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/t.toml"));
    }
}

//! `JailSpec`: the validated description of one jail.
//!
//! Built once from an OCI runtime-spec [`oci_spec::runtime::Spec`] plus the
//! Berth options the OCI model lacks ([`JailOptions`]: name, vendor, overlay
//! rootfs, network, cgroup parent, resource overrides). Every later step
//! works on the validated types here; validation errors name the field and
//! say why ([`SpecError`]).

// MS_* and RLIMIT_* are c_ulong / c_int-sized per target (u32 on ARMv7):
// the casts are needed there even where clippy sees u64 -> u64.
#![allow(clippy::unnecessary_cast)]

use std::net::Ipv4Addr;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxSeccomp, Spec};
use serde::{Deserialize, Serialize};

use crate::caps::{self, CapSets};
use crate::name::{Name, NameError};

/// Default root of the per-jail state directories.
pub const DEFAULT_STATE_ROOT: &str = "/run/berth/jails";
/// Default cgroup parent of all jails.
pub const DEFAULT_CGROUP_PARENT: &str = "berth";
/// PATH used to resolve `process.args[0]` when the spec sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A refused spec: which field, and why.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// Bad jail name.
    #[error("jail name: {0}")]
    Name(#[source] NameError),
    /// Bad vendor name.
    #[error("vendor name: {0}")]
    Vendor(#[source] NameError),
    /// A field is missing.
    #[error("{0}: missing")]
    Missing(&'static str),
    /// A field has a bad value.
    #[error("{field}: {why}")]
    Invalid {
        /// Field path in OCI JSON terms (e.g. `mounts[2].destination`).
        field: String,
        /// What is wrong with it.
        why: String,
    },
}

fn invalid(field: impl Into<String>, why: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        why: why.into(),
    }
}

/// The jail's root filesystem as Berth builds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RootfsOptions {
    /// Bind-mount a directory (the OCI `root.path`).
    Bind {
        /// Host directory.
        path: PathBuf,
    },
    /// Overlay of read-only lower layers (first = top) and a writable upper.
    Overlay {
        /// Lower layer directories, topmost first.
        lowers: Vec<PathBuf>,
        /// Writable upper directory.
        upper: PathBuf,
        /// Overlay work directory (same filesystem as `upper`).
        work: PathBuf,
    },
}

/// The jail's network: one veth into the vendor's bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetOptions {
    /// Bridge of the vendor (created if missing).
    pub bridge: String,
    /// Gateway address on the bridge.
    pub gateway: Ipv4Addr,
    /// Prefix length of the bridge subnet.
    pub prefix_len: u8,
    /// Directory of the persisted address allocator of this bridge.
    pub allocator_dir: PathBuf,
}

/// A uid or gid mapping of a user namespace (user_namespaces(7)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// First id inside the jail.
    pub inside: u32,
    /// First id on the host.
    pub outside: u32,
    /// Number of ids.
    pub count: u32,
}

/// Where the payload's stdio goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Console {
    /// stdin `/dev/null`, stdout and stderr appended to `console.log` in
    /// the jail's state directory.
    #[default]
    LogFile,
    /// The caller's stdio.
    Inherit,
    /// All three on `/dev/null`.
    Null,
}

/// Berth options that the OCI model lacks, plus overrides of it.
#[derive(Debug, Clone, Default)]
pub struct JailOptions {
    /// Jail name (`[a-z0-9-]`, at most 32 bytes).
    pub name: String,
    /// Vendor name (same rules).
    pub vendor: String,
    /// Rootfs; `None` binds the OCI `root.path`.
    pub rootfs: Option<RootfsOptions>,
    /// Network; `None` gives the jail an empty network namespace.
    pub network: Option<NetOptions>,
    /// Cgroup parent (relative to each hierarchy); default `berth`.
    pub cgroup_parent: Option<PathBuf>,
    /// State root; default [`DEFAULT_STATE_ROOT`].
    pub state_root: Option<PathBuf>,
    /// Path of `berth-init`; default: beside the current executable, then
    /// `$BERTH_INIT`.
    pub init_path: Option<PathBuf>,
    /// Override of `linux.resources.memory.limit` (bytes).
    pub memory_max: Option<u64>,
    /// Override of `linux.resources.pids.limit`.
    pub pids_max: Option<u64>,
    /// CPU quota in CPUs (e.g. 0.5), period 100 ms.
    pub cpus: Option<f64>,
    /// Override of `hostname`.
    pub hostname: Option<String>,
    /// Run in a user namespace mapping `0..count` inside to
    /// `outside..outside+count` (uid and gid alike), overriding the spec's
    /// mappings.
    pub user_ns: Option<IdMap>,
    /// Where the payload's stdio goes.
    pub console: Console,
}

/// A CPU quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuQuotaSpec {
    /// Microseconds per period.
    pub quota_us: u64,
    /// Period in microseconds.
    pub period_us: u64,
}

/// A device cgroup rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRuleSpec {
    /// Allow or deny.
    pub allow: bool,
    /// 'a' all, 'c' char, 'b' block.
    pub kind: char,
    /// Major, `None` = any.
    pub major: Option<u32>,
    /// Minor, `None` = any.
    pub minor: Option<u32>,
    /// Subset of "rwm".
    pub access: String,
}

/// Resource limits, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceSpec {
    /// Memory limit in bytes.
    pub memory_max: Option<u64>,
    /// No swap beyond the memory limit.
    pub swap_off: bool,
    /// CPU weight (cgroup v2 scale 1..=10000).
    pub cpu_weight: Option<u64>,
    /// CPU quota.
    pub cpu_quota: Option<CpuQuotaSpec>,
    /// Process limit.
    pub pids_max: Option<u64>,
    /// Device rules in order.
    pub devices: Vec<DeviceRuleSpec>,
    /// Block I/O weight.
    pub io_weight: Option<u16>,
}

/// A mount of the spec, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Absolute path inside the jail.
    pub destination: String,
    /// Filesystem type (`bind` for binds).
    pub fstype: String,
    /// Source.
    pub source: String,
    /// MS_* flags.
    pub flags: u64,
    /// Propagation flags applied after the mount (MS_PRIVATE, ...).
    pub propagation: u64,
    /// Filesystem-specific data (`mode=755,size=65536k`).
    pub data: String,
}

/// A device node passed into the jail (bind-mounted from the host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// Path inside the jail, under /dev.
    pub path: String,
    /// 'c' or 'b'.
    pub kind: char,
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

/// The payload process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// argv; argv[0] is resolved on the spec's PATH inside the jail.
    pub args: Vec<String>,
    /// Environment (`KEY=VALUE`).
    pub env: Vec<String>,
    /// Working directory inside the jail.
    pub cwd: String,
    /// uid inside the jail.
    pub uid: u32,
    /// gid inside the jail.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Capability sets.
    pub caps: CapSets,
    /// `(resource, soft, hard)`.
    pub rlimits: Vec<(u32, u64, u64)>,
    /// PR_SET_NO_NEW_PRIVS.
    pub no_new_privs: bool,
}

/// One syscall rule of an OCI seccomp profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyscallRuleSpec {
    /// Syscall names.
    pub names: Vec<String>,
    /// `(index, op, value, value_two)`; op is the OCI name without
    /// `SCMP_CMP_` (`EQ`, `MASKED_EQ`, ...).
    pub args: Vec<(u8, String, u64, u64)>,
}

/// An OCI seccomp profile reduced to what Berth compiles: a default action
/// and one other action with the syscalls (and argument conditions) it
/// applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompSpec {
    /// Action for syscalls no rule matches.
    pub default_action: SeccompActionSpec,
    /// Action of the rules.
    pub rule_action: SeccompActionSpec,
    /// Rules.
    pub rules: Vec<SyscallRuleSpec>,
}

/// A seccomp action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SeccompActionSpec {
    /// Allow.
    Allow,
    /// Fail with this errno.
    Errno(u32),
    /// Kill the process.
    KillProcess,
    /// Kill the thread.
    KillThread,
    /// SIGSYS.
    Trap,
    /// Allow and log.
    Log,
}

/// The validated jail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailSpec {
    /// Jail name.
    pub name: Name,
    /// Vendor name.
    pub vendor: Name,
    /// Root filesystem.
    pub rootfs: RootfsOptions,
    /// Remount the root read-only after setup.
    pub readonly_root: bool,
    /// Hostname inside the jail.
    pub hostname: Option<String>,
    /// The payload.
    pub process: ProcessSpec,
    /// Extra mounts, in order.
    pub mounts: Vec<MountSpec>,
    /// Devices passed through.
    pub devices: Vec<DeviceSpec>,
    /// Paths hidden inside the jail.
    pub masked_paths: Vec<String>,
    /// Paths made read-only inside the jail.
    pub readonly_paths: Vec<String>,
    /// Cgroup limits.
    pub resources: ResourceSpec,
    /// uid and gid maps when the jail has a user namespace.
    pub user_ns: Option<(Vec<IdMap>, Vec<IdMap>)>,
    /// The spec's own seccomp profile (the Berth baseline always applies).
    pub seccomp: Option<SeccompSpec>,
    /// Cgroup path relative to each hierarchy: `<parent>/<vendor>/<name>`.
    pub cgroup_path: PathBuf,
    /// Network.
    pub network: Option<NetOptions>,
    /// State root.
    pub state_root: PathBuf,
    /// berth-init override.
    pub init_path: Option<PathBuf>,
    /// Payload stdio.
    pub console: Console,
}

fn serde_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(e) => e.to_string(),
    }
}

/// Checks an absolute in-jail path: starts with '/', no `..`, no NUL.
pub fn check_jail_path(field: &str, p: &str) -> Result<(), SpecError> {
    if !p.starts_with('/') {
        return Err(invalid(field, format!("{p:?} is not absolute")));
    }
    if p.contains('\0') {
        return Err(invalid(field, format!("{p:?} contains NUL")));
    }
    if Path::new(p).components().any(|c| c == Component::ParentDir) {
        return Err(invalid(field, format!("{p:?} contains '..'")));
    }
    Ok(())
}

fn check_host_dir(field: &str, p: &Path) -> Result<(), SpecError> {
    if !p.is_absolute() {
        return Err(invalid(field, format!("{} is not absolute", p.display())));
    }
    Ok(())
}

/// Parses OCI mount options into (flags, propagation, data).
pub fn parse_mount_options(opts: &[String]) -> (u64, u64, String) {
    use libc::*;
    let mut flags: u64 = 0;
    let mut prop: u64 = 0;
    let mut data: Vec<&str> = Vec::new();
    for o in opts {
        let (set, clear): (c_ulong, c_ulong) = match o.as_str() {
            "ro" => (MS_RDONLY, 0),
            "rw" => (0, MS_RDONLY),
            "nosuid" => (MS_NOSUID, 0),
            "suid" => (0, MS_NOSUID),
            "nodev" => (MS_NODEV, 0),
            "dev" => (0, MS_NODEV),
            "noexec" => (MS_NOEXEC, 0),
            "exec" => (0, MS_NOEXEC),
            "sync" => (MS_SYNCHRONOUS, 0),
            "async" => (0, MS_SYNCHRONOUS),
            "dirsync" => (MS_DIRSYNC, 0),
            "remount" => (MS_REMOUNT, 0),
            "mand" => (MS_MANDLOCK, 0),
            "nomand" => (0, MS_MANDLOCK),
            "noatime" => (MS_NOATIME, 0),
            "atime" => (0, MS_NOATIME),
            "nodiratime" => (MS_NODIRATIME, 0),
            "diratime" => (0, MS_NODIRATIME),
            "relatime" => (MS_RELATIME, 0),
            "norelatime" => (0, MS_RELATIME),
            "strictatime" => (MS_STRICTATIME, 0),
            "nostrictatime" => (0, MS_STRICTATIME),
            "bind" => (MS_BIND, 0),
            "rbind" => (MS_BIND | MS_REC, 0),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let p = match o.as_str() {
                    "private" => MS_PRIVATE,
                    "rprivate" => MS_PRIVATE | MS_REC,
                    "shared" => MS_SHARED,
                    "rshared" => MS_SHARED | MS_REC,
                    "slave" => MS_SLAVE,
                    "rslave" => MS_SLAVE | MS_REC,
                    "unbindable" => MS_UNBINDABLE,
                    _ => MS_UNBINDABLE | MS_REC,
                };
                prop = p as u64;
                continue;
            }
            other => {
                data.push(other);
                continue;
            }
        };
        flags |= set as u64;
        flags &= !(clear as u64);
    }
    (flags, prop, data.join(","))
}

fn cap_mask(field: &str, set: Option<&oci_spec::runtime::Capabilities>) -> Result<u64, SpecError> {
    let Some(set) = set else { return Ok(0) };
    let mut m = 0u64;
    for c in set {
        let name = serde_name(c);
        let n = caps::number(&name)
            .ok_or_else(|| invalid(field, format!("unknown capability {name}")))?;
        m |= 1 << n;
    }
    Ok(m)
}

fn rlimit_number(name: &str) -> Option<u32> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    } as u32)
}

fn seccomp_action(
    field: &str,
    a: &str,
    errno: Option<u32>,
) -> Result<SeccompActionSpec, SpecError> {
    Ok(match a {
        "SCMP_ACT_ALLOW" => SeccompActionSpec::Allow,
        "SCMP_ACT_ERRNO" => SeccompActionSpec::Errno(errno.unwrap_or(libc::EPERM as u32)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => SeccompActionSpec::KillThread,
        "SCMP_ACT_KILL_PROCESS" => SeccompActionSpec::KillProcess,
        "SCMP_ACT_TRAP" => SeccompActionSpec::Trap,
        "SCMP_ACT_LOG" => SeccompActionSpec::Log,
        other => return Err(invalid(field, format!("action {other} is not supported"))),
    })
}

fn seccomp_spec(s: &LinuxSeccomp) -> Result<SeccompSpec, SpecError> {
    let default_action = seccomp_action(
        "linux.seccomp.defaultAction",
        &serde_name(&s.default_action()),
        s.default_errno_ret(),
    )?;
    let mut rule_action: Option<SeccompActionSpec> = None;
    let mut rules = Vec::new();
    for (i, sc) in s.syscalls().iter().flatten().enumerate() {
        let field = format!("linux.seccomp.syscalls[{i}]");
        let action = seccomp_action(
            &format!("{field}.action"),
            &serde_name(&sc.action()),
            sc.errno_ret(),
        )?;
        if action == default_action {
            continue; // same as the default: nothing to compile
        }
        match rule_action {
            None => rule_action = Some(action),
            Some(a) if a == action => {}
            Some(a) => {
                return Err(invalid(
                    format!("{field}.action"),
                    format!(
                        "{action:?} differs from {a:?} of an earlier rule: only one action besides the default is supported"
                    ),
                ))
            }
        }
        let mut args = Vec::new();
        for (j, a) in sc.args().iter().flatten().enumerate() {
            if a.index() > 5 {
                return Err(invalid(
                    format!("{field}.args[{j}].index"),
                    format!("{} is not a syscall argument (0..=5)", a.index()),
                ));
            }
            let op = serde_name(&a.op());
            let op = op.trim_start_matches("SCMP_CMP_").to_owned();
            args.push((a.index() as u8, op, a.value(), a.value_two().unwrap_or(0)));
        }
        if sc.names().is_empty() {
            return Err(invalid(format!("{field}.names"), "empty"));
        }
        rules.push(SyscallRuleSpec {
            names: sc.names().clone(),
            args,
        });
    }
    Ok(SeccompSpec {
        default_action,
        rule_action: rule_action.unwrap_or(default_action),
        rules,
    })
}

impl JailSpec {
    /// Validates `spec` plus `opts` into a `JailSpec`.
    pub fn from_oci(spec: &Spec, opts: &JailOptions) -> Result<JailSpec, SpecError> {
        let name = Name::new(&opts.name).map_err(SpecError::Name)?;
        let vendor = Name::new(&opts.vendor).map_err(SpecError::Vendor)?;

        // Root filesystem.
        let rootfs = match &opts.rootfs {
            Some(r) => r.clone(),
            None => {
                let root = spec.root().as_ref().ok_or(SpecError::Missing("root"))?;
                RootfsOptions::Bind {
                    path: root.path().clone(),
                }
            }
        };
        match &rootfs {
            RootfsOptions::Bind { path } => check_host_dir("root.path", path)?,
            RootfsOptions::Overlay {
                lowers,
                upper,
                work,
            } => {
                if lowers.is_empty() {
                    return Err(invalid("rootfs.overlay.lowers", "needs at least one layer"));
                }
                for (i, l) in lowers.iter().enumerate() {
                    check_host_dir(&format!("rootfs.overlay.lowers[{i}]"), l)?;
                    if l.to_string_lossy().contains([',', ':']) {
                        return Err(invalid(
                            format!("rootfs.overlay.lowers[{i}]"),
                            format!("{} contains ',' or ':'", l.display()),
                        ));
                    }
                }
                check_host_dir("rootfs.overlay.upper", upper)?;
                check_host_dir("rootfs.overlay.work", work)?;
                if upper == work || work.starts_with(upper) || upper.starts_with(work) {
                    return Err(invalid(
                        "rootfs.overlay.work",
                        "must be a separate directory beside upper, not inside it",
                    ));
                }
            }
        }
        let readonly_root = spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false);

        // Hostname.
        let hostname = opts.hostname.clone().or_else(|| spec.hostname().clone());
        if let Some(h) = &hostname {
            if h.is_empty()
                || h.len() > 64
                || !h
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            {
                return Err(invalid(
                    "hostname",
                    format!("{h:?} is not a valid host name (1-64 of a-z, 0-9, '-', '.')"),
                ));
            }
        }

        // Process.
        let p = spec
            .process()
            .as_ref()
            .ok_or(SpecError::Missing("process"))?;
        let args = p.args().clone().unwrap_or_default();
        if args.is_empty() {
            return Err(invalid("process.args", "empty: nothing to run"));
        }
        let env = p.env().clone().unwrap_or_default();
        for (i, e) in env.iter().enumerate() {
            if !e.contains('=') || e.contains('\0') {
                return Err(invalid(
                    format!("process.env[{i}]"),
                    format!("{e:?} is not KEY=VALUE"),
                ));
            }
        }
        for (i, a) in args.iter().enumerate() {
            if a.contains('\0') {
                return Err(invalid(format!("process.args[{i}]"), "contains NUL"));
            }
        }
        let cwd = p.cwd().to_string_lossy().into_owned();
        check_jail_path("process.cwd", &cwd)?;
        let caps_field = p.capabilities().as_ref();
        let caps = match caps_field {
            Some(c) => CapSets {
                bounding: cap_mask("process.capabilities.bounding", c.bounding().as_ref())?,
                effective: cap_mask("process.capabilities.effective", c.effective().as_ref())?,
                permitted: cap_mask("process.capabilities.permitted", c.permitted().as_ref())?,
                inheritable: cap_mask(
                    "process.capabilities.inheritable",
                    c.inheritable().as_ref(),
                )?,
                ambient: cap_mask("process.capabilities.ambient", c.ambient().as_ref())?,
            },
            None => {
                let d = caps::default_mask();
                CapSets {
                    bounding: d,
                    effective: d,
                    permitted: d,
                    inheritable: 0,
                    ambient: 0,
                }
            }
        };
        if caps.effective & !caps.permitted != 0 {
            return Err(invalid(
                "process.capabilities.effective",
                "not a subset of permitted",
            ));
        }
        if caps.ambient & !(caps.permitted & caps.inheritable) != 0 {
            return Err(invalid(
                "process.capabilities.ambient",
                "not a subset of permitted and inheritable",
            ));
        }
        let mut rlimits = Vec::new();
        for (i, r) in p.rlimits().iter().flatten().enumerate() {
            let n = serde_name(&r.typ());
            let num = rlimit_number(&n).ok_or_else(|| {
                invalid(
                    format!("process.rlimits[{i}].type"),
                    format!("unknown rlimit {n}"),
                )
            })?;
            if r.soft() > r.hard() {
                return Err(invalid(
                    format!("process.rlimits[{i}]"),
                    format!("soft {} above hard {}", r.soft(), r.hard()),
                ));
            }
            rlimits.push((num, r.soft(), r.hard()));
        }
        let user = p.user();
        let process = ProcessSpec {
            args,
            env,
            cwd,
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            caps,
            rlimits,
            no_new_privs: p.no_new_privileges().unwrap_or(true),
        };

        // Mounts. /proc, /sys, /dev, /dev/pts, /dev/shm and /dev/mqueue are
        // set up by berth-init itself; the spec's entries for them are
        // dropped so a default OCI config works unchanged.
        const OWN: [&str; 6] = [
            "/proc",
            "/sys",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
        ];
        let mut mounts = Vec::new();
        for (i, m) in spec.mounts().iter().flatten().enumerate() {
            let field = format!("mounts[{i}]");
            let dest = m.destination().to_string_lossy().into_owned();
            check_jail_path(&format!("{field}.destination"), &dest)?;
            if OWN.contains(&dest.trim_end_matches('/')) {
                continue;
            }
            let (flags, propagation, data) =
                parse_mount_options(m.options().as_deref().unwrap_or(&[]));
            let is_bind = flags & libc::MS_BIND as u64 != 0;
            let fstype = m.typ().clone().unwrap_or_else(|| {
                if is_bind {
                    "bind".into()
                } else {
                    String::new()
                }
            });
            if fstype.is_empty() {
                return Err(invalid(
                    format!("{field}.type"),
                    "missing and not a bind mount",
                ));
            }
            let source = m
                .source()
                .as_ref()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| fstype.clone());
            if (is_bind || fstype == "bind") && !source.starts_with('/') {
                return Err(invalid(
                    format!("{field}.source"),
                    format!("bind source {source:?} is not absolute"),
                ));
            }
            let flags = if fstype == "bind" {
                flags | libc::MS_BIND as u64
            } else {
                flags
            };
            mounts.push(MountSpec {
                destination: dest,
                fstype,
                source,
                flags,
                propagation,
                data,
            });
        }

        let linux = spec.linux().as_ref();

        // Namespaces: Berth always makes pid, mount, uts, ipc and net
        // namespaces; joining existing ones is refused.
        let mut want_userns = false;
        for (i, ns) in linux
            .and_then(|l| l.namespaces().as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            if ns.path().is_some() {
                return Err(invalid(
                    format!("linux.namespaces[{i}].path"),
                    "joining an existing namespace is not supported",
                ));
            }
            if serde_name(&ns.typ()) == "user" {
                want_userns = true;
            }
        }
        let conv = |v: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| -> Vec<IdMap> {
            v.iter()
                .flatten()
                .map(|m| IdMap {
                    inside: m.container_id(),
                    outside: m.host_id(),
                    count: m.size(),
                })
                .collect()
        };
        let user_ns = if let Some(m) = opts.user_ns {
            if m.count == 0 {
                return Err(invalid("user_ns.count", "must be at least 1"));
            }
            Some((vec![m], vec![m]))
        } else if want_userns {
            let l = linux.ok_or(SpecError::Missing("linux"))?;
            let u = conv(l.uid_mappings());
            let g = conv(l.gid_mappings());
            if u.is_empty() {
                return Err(invalid(
                    "linux.uidMappings",
                    "a user namespace needs at least one mapping",
                ));
            }
            if g.is_empty() {
                return Err(invalid(
                    "linux.gidMappings",
                    "a user namespace needs at least one mapping",
                ));
            }
            Some((u, g))
        } else {
            None
        };
        if let Some((u, g)) = &user_ns {
            let inside = |maps: &[IdMap], id: u32| {
                maps.iter()
                    .any(|m| id >= m.inside && id - m.inside < m.count)
            };
            if !inside(u, process.uid) {
                return Err(invalid(
                    "process.user.uid",
                    format!("{} is not mapped in the user namespace", process.uid),
                ));
            }
            if !inside(g, process.gid) {
                return Err(invalid(
                    "process.user.gid",
                    format!("{} is not mapped in the user namespace", process.gid),
                ));
            }
        }

        // Resources.
        let mut resources = ResourceSpec::default();
        if let Some(r) = linux.and_then(|l| l.resources().as_ref()) {
            if let Some(m) = r.memory() {
                if let Some(l) = m.limit() {
                    if l > 0 {
                        resources.memory_max = Some(l as u64);
                        resources.swap_off = m.swap() == Some(l);
                    }
                }
            }
            if let Some(c) = r.cpu() {
                if let Some(s) = c.shares() {
                    if s < 2 {
                        return Err(invalid(
                            "linux.resources.cpu.shares",
                            format!("{s} is below 2"),
                        ));
                    }
                    // The runc conversion from shares to cgroup v2 weight.
                    resources.cpu_weight = Some(1 + ((s.min(262_144) - 2) * 9999) / 262_142);
                }
                if let Some(q) = c.quota() {
                    if q > 0 {
                        let period = c.period().unwrap_or(100_000);
                        if period == 0 {
                            return Err(invalid("linux.resources.cpu.period", "is 0"));
                        }
                        resources.cpu_quota = Some(CpuQuotaSpec {
                            quota_us: q as u64,
                            period_us: period,
                        });
                    }
                }
            }
            if let Some(p) = r.pids() {
                if p.limit() > 0 {
                    resources.pids_max = Some(p.limit() as u64);
                }
            }
            if let Some(b) = r.block_io() {
                resources.io_weight = b.weight();
            }
            for (i, d) in r.devices().iter().flatten().enumerate() {
                let kind = match d.typ().map(|t| serde_name(&t)).as_deref() {
                    None | Some("a") => 'a',
                    Some("c") | Some("u") => 'c',
                    Some("b") => 'b',
                    Some(o) => {
                        return Err(invalid(
                            format!("linux.resources.devices[{i}].type"),
                            format!("{o:?} is not a, c or b"),
                        ))
                    }
                };
                let access = d.access().clone().unwrap_or_else(|| "rwm".into());
                if access.is_empty() || !access.chars().all(|c| "rwm".contains(c)) {
                    return Err(invalid(
                        format!("linux.resources.devices[{i}].access"),
                        format!("{access:?} is not a subset of \"rwm\""),
                    ));
                }
                let num = |v: Option<i64>, f: &str| -> Result<Option<u32>, SpecError> {
                    match v {
                        None | Some(-1) => Ok(None),
                        Some(n) => u32::try_from(n).map(Some).map_err(|_| {
                            invalid(
                                format!("linux.resources.devices[{i}].{f}"),
                                format!("{n} out of range"),
                            )
                        }),
                    }
                };
                resources.devices.push(DeviceRuleSpec {
                    allow: d.allow(),
                    kind,
                    major: num(d.major(), "major")?,
                    minor: num(d.minor(), "minor")?,
                    access,
                });
            }
        }
        if let Some(m) = opts.memory_max {
            resources.memory_max = Some(m);
            resources.swap_off = true;
        }
        if let Some(p) = opts.pids_max {
            resources.pids_max = Some(p);
        }
        if let Some(c) = opts.cpus {
            if !(c > 0.0 && c <= 1024.0) {
                return Err(invalid("cpus", format!("{c} is not in (0, 1024]")));
            }
            resources.cpu_quota = Some(CpuQuotaSpec {
                quota_us: ((c * 100_000.0) as u64).max(1000),
                period_us: 100_000,
            });
        }
        if resources.memory_max.is_some_and(|m| m < 4 << 20) {
            return Err(invalid(
                "linux.resources.memory.limit",
                "below 4 MiB: init and the payload cannot start",
            ));
        }
        if resources.pids_max.is_some_and(|p| p < 2) {
            return Err(invalid(
                "linux.resources.pids.limit",
                "below 2: init and the payload need two",
            ));
        }

        // Devices passed through.
        let mut devices = Vec::new();
        for (i, d) in linux
            .and_then(|l| l.devices().as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            let path = d.path().to_string_lossy().into_owned();
            check_jail_path(&format!("linux.devices[{i}].path"), &path)?;
            if !path.starts_with("/dev/") {
                return Err(invalid(
                    format!("linux.devices[{i}].path"),
                    format!("{path:?} is not under /dev"),
                ));
            }
            let kind = match serde_name(&d.typ()).as_str() {
                "c" | "u" => 'c',
                "b" => 'b',
                o => {
                    return Err(invalid(
                        format!("linux.devices[{i}].type"),
                        format!("{o:?} is not c or b"),
                    ))
                }
            };
            let major = u32::try_from(d.major())
                .map_err(|_| invalid(format!("linux.devices[{i}].major"), "out of range"))?;
            let minor = u32::try_from(d.minor())
                .map_err(|_| invalid(format!("linux.devices[{i}].minor"), "out of range"))?;
            devices.push(DeviceSpec {
                path,
                kind,
                major,
                minor,
            });
        }

        let masked_paths = linux
            .and_then(|l| l.masked_paths().clone())
            .unwrap_or_else(default_masked);
        for (i, p) in masked_paths.iter().enumerate() {
            check_jail_path(&format!("linux.maskedPaths[{i}]"), p)?;
        }
        let readonly_paths = linux
            .and_then(|l| l.readonly_paths().clone())
            .unwrap_or_else(default_readonly);
        for (i, p) in readonly_paths.iter().enumerate() {
            check_jail_path(&format!("linux.readonlyPaths[{i}]"), p)?;
        }

        let seccomp = match linux.and_then(|l| l.seccomp().as_ref()) {
            Some(s) => Some(seccomp_spec(s)?),
            None => None,
        };

        let parent = opts
            .cgroup_parent
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CGROUP_PARENT));
        if parent.is_absolute() || parent.components().any(|c| c == Component::ParentDir) {
            return Err(invalid(
                "cgroup_parent",
                format!("{} must be relative without '..'", parent.display()),
            ));
        }
        let cgroup_path = parent.join(vendor.as_str()).join(name.as_str());

        if let Some(n) = &opts.network {
            if n.bridge.is_empty() || n.bridge.len() > 15 {
                return Err(invalid(
                    "network.bridge",
                    format!("{:?} is not 1 to 15 bytes", n.bridge),
                ));
            }
            if !(8..=30).contains(&n.prefix_len) {
                return Err(invalid(
                    "network.prefix_len",
                    format!("{} is not in 8..=30", n.prefix_len),
                ));
            }
        }

        Ok(JailSpec {
            name,
            vendor,
            rootfs,
            readonly_root,
            hostname,
            process,
            mounts,
            devices,
            masked_paths,
            readonly_paths,
            resources,
            user_ns,
            seccomp,
            cgroup_path,
            network: opts.network.clone(),
            state_root: opts
                .state_root
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_ROOT)),
            init_path: opts.init_path.clone(),
            console: opts.console,
        })
    }
}

/// runc's default masked paths.
pub fn default_masked() -> Vec<String> {
    [
        "/proc/acpi",
        "/proc/asound",
        "/proc/kcore",
        "/proc/keys",
        "/proc/latency_stats",
        "/proc/timer_list",
        "/proc/timer_stats",
        "/proc/sched_debug",
        "/proc/scsi",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// runc's default read-only paths.
pub fn default_readonly() -> Vec<String> {
    [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oci(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "/srv/rootfs"},
            "process": {"args": ["/bin/sh", "-c", "true"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                        "env": ["PATH=/bin"]},
            "hostname": "meter",
            "linux": {"resources": {"memory": {"limit": 67108864}, "pids": {"limit": 64},
                                    "cpu": {"quota": 50000, "period": 100000, "shares": 1024}}}
        })
    }

    fn opts() -> JailOptions {
        JailOptions {
            name: "j1".into(),
            vendor: "acme".into(),
            ..JailOptions::default()
        }
    }

    fn err(v: serde_json::Value, o: &JailOptions) -> String {
        JailSpec::from_oci(&oci(v), o).unwrap_err().to_string()
    }

    #[test]
    fn good_spec_validates() {
        let s = JailSpec::from_oci(&oci(base()), &opts()).unwrap();
        assert_eq!(s.name.as_str(), "j1");
        assert_eq!(s.cgroup_path, PathBuf::from("berth/acme/j1"));
        assert_eq!(
            s.rootfs,
            RootfsOptions::Bind {
                path: "/srv/rootfs".into()
            }
        );
        assert_eq!(s.hostname.as_deref(), Some("meter"));
        assert_eq!(s.resources.memory_max, Some(64 << 20));
        assert_eq!(s.resources.pids_max, Some(64));
        assert_eq!(
            s.resources.cpu_quota,
            Some(CpuQuotaSpec {
                quota_us: 50_000,
                period_us: 100_000
            })
        );
        assert_eq!(s.resources.cpu_weight, Some(39));
        assert_eq!(s.process.caps.bounding, caps::default_mask());
        assert!(s.process.no_new_privs);
        assert!(s.user_ns.is_none());
        assert_eq!(s.state_root, PathBuf::from(DEFAULT_STATE_ROOT));
        assert!(s.masked_paths.contains(&"/proc/kcore".to_string()));
    }

    #[test]
    fn options_override_the_spec() {
        let mut o = opts();
        o.memory_max = Some(32 << 20);
        o.pids_max = Some(10);
        o.cpus = Some(0.25);
        o.hostname = Some("other".into());
        o.user_ns = Some(IdMap {
            inside: 0,
            outside: 100_000,
            count: 65_536,
        });
        let s = JailSpec::from_oci(&oci(base()), &o).unwrap();
        assert_eq!(s.resources.memory_max, Some(32 << 20));
        assert!(s.resources.swap_off);
        assert_eq!(s.resources.pids_max, Some(10));
        assert_eq!(
            s.resources.cpu_quota,
            Some(CpuQuotaSpec {
                quota_us: 25_000,
                period_us: 100_000
            })
        );
        assert_eq!(s.hostname.as_deref(), Some("other"));
        assert_eq!(s.user_ns.unwrap().0[0].outside, 100_000);
    }

    #[test]
    fn bad_specs_have_exact_errors() {
        let mut o = opts();
        o.name = "Bad".into();
        assert_eq!(
            err(base(), &o),
            "jail name: name \"Bad\" has 'B' at byte 0: only a-z, 0-9 and '-' are allowed"
        );
        let mut v = base();
        v["process"]["args"] = serde_json::json!([]);
        assert_eq!(err(v, &opts()), "process.args: empty: nothing to run");
        let mut v = base();
        v["process"]["cwd"] = serde_json::json!("/a/../..");
        assert_eq!(err(v, &opts()), "process.cwd: \"/a/../..\" contains '..'");
        let mut v = base();
        v["process"]["env"] = serde_json::json!(["NOEQUALS"]);
        assert_eq!(
            err(v, &opts()),
            "process.env[0]: \"NOEQUALS\" is not KEY=VALUE"
        );
        let mut v = base();
        v["mounts"] =
            serde_json::json!([{"destination": "data", "type": "tmpfs", "source": "tmpfs"}]);
        assert_eq!(
            err(v, &opts()),
            "mounts[0].destination: \"data\" is not absolute"
        );
        let mut v = base();
        v["mounts"] =
            serde_json::json!([{"destination": "/data", "source": "rel", "options": ["bind"]}]);
        assert_eq!(
            err(v, &opts()),
            "mounts[0].source: bind source \"rel\" is not absolute"
        );
        let mut v = base();
        v["linux"]["namespaces"] =
            serde_json::json!([{"type": "network", "path": "/proc/1/ns/net"}]);
        assert_eq!(
            err(v, &opts()),
            "linux.namespaces[0].path: joining an existing namespace is not supported"
        );
        let mut v = base();
        v["linux"]["namespaces"] = serde_json::json!([{"type": "user"}]);
        assert_eq!(
            err(v, &opts()),
            "linux.uidMappings: a user namespace needs at least one mapping"
        );
        let mut v = base();
        v["linux"]["resources"]["pids"]["limit"] = serde_json::json!(1);
        assert_eq!(
            err(v, &opts()),
            "linux.resources.pids.limit: below 2: init and the payload need two"
        );
        let mut v = base();
        v["linux"]["devices"] =
            serde_json::json!([{"path": "/etc/x", "type": "c", "major": 1, "minor": 3}]);
        assert_eq!(
            err(v, &opts()),
            "linux.devices[0].path: \"/etc/x\" is not under /dev"
        );
        let mut v = base();
        v["hostname"] = serde_json::json!("bad host");
        assert_eq!(
            err(v, &opts()),
            "hostname: \"bad host\" is not a valid host name (1-64 of a-z, 0-9, '-', '.')"
        );
        let mut v = base();
        v["process"]["capabilities"] =
            serde_json::json!({"effective": ["CAP_SYS_ADMIN"], "permitted": []});
        assert_eq!(
            err(v, &opts()),
            "process.capabilities.effective: not a subset of permitted"
        );
        let mut v = base();
        v["process"]["user"]["uid"] = serde_json::json!(70000);
        let mut o = opts();
        o.user_ns = Some(IdMap {
            inside: 0,
            outside: 100_000,
            count: 65_536,
        });
        assert_eq!(
            err(v, &o),
            "process.user.uid: 70000 is not mapped in the user namespace"
        );
        let mut o = opts();
        o.rootfs = Some(RootfsOptions::Overlay {
            lowers: vec![],
            upper: "/u".into(),
            work: "/w".into(),
        });
        assert_eq!(
            err(base(), &o),
            "rootfs.overlay.lowers: needs at least one layer"
        );
        let mut o = opts();
        o.rootfs = Some(RootfsOptions::Overlay {
            lowers: vec!["/l".into()],
            upper: "/u".into(),
            work: "/u/w".into(),
        });
        assert_eq!(
            err(base(), &o),
            "rootfs.overlay.work: must be a separate directory beside upper, not inside it"
        );
        let mut o = opts();
        o.cpus = Some(0.0);
        assert_eq!(err(base(), &o), "cpus: 0 is not in (0, 1024]");
        let mut v = base();
        v["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["reboot"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["keyctl"], "action": "SCMP_ACT_KILL_PROCESS"}]});
        assert_eq!(
            err(v, &opts()),
            "linux.seccomp.syscalls[1].action: KillProcess differs from Errno(1) of an earlier rule: only one action besides the default is supported"
        );
    }

    #[test]
    fn own_mounts_are_dropped_and_options_parsed() {
        let mut v = base();
        v["mounts"] = serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "ro", "mode=755", "size=1m"]},
            {"destination": "/cfg", "type": "bind", "source": "/etc", "options": ["rbind", "rprivate"]}
        ]);
        let s = JailSpec::from_oci(&oci(v), &opts()).unwrap();
        assert_eq!(s.mounts.len(), 2);
        assert_eq!(
            s.mounts[0].flags,
            (libc::MS_NOSUID | libc::MS_RDONLY) as u64
        );
        assert_eq!(s.mounts[0].data, "mode=755,size=1m");
        assert_eq!(s.mounts[1].flags, (libc::MS_BIND | libc::MS_REC) as u64);
        assert_eq!(
            s.mounts[1].propagation,
            (libc::MS_PRIVATE | libc::MS_REC) as u64
        );
    }

    #[test]
    fn seccomp_profile_is_reduced() {
        let mut v = base();
        v["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
            {"names": ["mount"], "action": "SCMP_ACT_ERRNO"}]});
        let s = JailSpec::from_oci(&oci(v), &opts())
            .unwrap()
            .seccomp
            .unwrap();
        assert_eq!(s.default_action, SeccompActionSpec::Errno(1));
        assert_eq!(s.rule_action, SeccompActionSpec::Allow);
        assert_eq!(s.rules.len(), 2);
        assert_eq!(s.rules[1].args, vec![(0, "EQ".to_string(), 8, 0)]);
    }
}

//! `berth jail ...`: checks the input, recovers stale leftovers, then drives
//! the `jail` runtime on a current-thread tokio runtime, with the blocking
//! steps run inline (nothing else runs on that runtime).
//!
//! Every check that can refuse a command runs before anything is created:
//! the rootfs and layers, root, the name. A refused command exits with 2 and
//! leaves no state dir, cgroup or link behind.
//!
//! State dir layout (`--state-dir`, default `/run/berth`):
//!
//! ```text
//! jails/<name>/       the jail runtime's per-jail state
//! net/<bridge>.addrs  address allocator of each vendor bridge
//! overlay/<name>/     upper and work dirs of an overlay rootfs
//! ```
//!
//! Concurrency: every command that changes the state dir holds an exclusive
//! `flock(2)` on the state dir while it recovers, creates or removes, so a
//! create in progress is never mistaken for an abandoned one. The payload's
//! run is outside the lock.

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use jail::{Console, ExecOptions, ExecStdio, IdMap, Jail, JailOptions, JailSpec, NetOptions};
use jail::{Phase, RootfsOptions};
use serde::Serialize;

use crate::cli::{signal_name, JailCommand, JailOpts};
use crate::error::CliError;
use crate::net;

/// Sub-directory of the state dir holding the jail runtime's state.
pub const JAILS_DIR: &str = "jails";
/// Sub-directory holding the vendor bridges' address allocators.
pub const NET_DIR: &str = "net";
/// Sub-directory holding overlay upper and work dirs.
pub const OVERLAY_DIR: &str = "overlay";
/// First host uid/gid of the ranges given to `--user-ns` jails.
pub const USERNS_BASE: u32 = 1_000_000;
/// Size of one jail's uid/gid range.
pub const USERNS_SIZE: u32 = 65_536;
/// Environment of a payload.
const PAYLOAD_ENV: &[&str] = &[
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "TERM=xterm",
];

/// Runs a parsed command line and returns the process exit code; errors are
/// printed as one `berth: error: ...` line.
pub fn main(state_dir: &Path, cgroup_parent: &str, cmd: JailCommand) -> ExitCode {
    match run(state_dir, cgroup_parent, cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(state_dir: &Path, cgroup_parent: &str, cmd: JailCommand) -> Result<ExitCode, CliError> {
    check_input(&cmd, state_dir)?;
    check_root()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    // One command, one jail, nothing else on this runtime: see `blocking`.
    jail::set_inline_blocking(true);
    let ctx = Ctx::new(state_dir, cgroup_parent);
    rt.block_on(dispatch(&ctx, cmd))
}

/// Refuses unless running as root (jails need namespaces and cgroups).
fn check_root() -> Result<(), CliError> {
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        Ok(())
    } else {
        Err(CliError::NotRoot(euid.as_raw()))
    }
}

/// The checks that need no runtime: rootfs, layers, state dir.
fn check_input(cmd: &JailCommand, state_dir: &Path) -> Result<(), CliError> {
    if state_dir.exists() && !state_dir.is_dir() {
        return Err(CliError::StateDirNotDir(state_dir.to_path_buf()));
    }
    match cmd {
        JailCommand::Run(a) => check_opts(&a.opts),
        JailCommand::Create(a) => check_opts(&a.opts),
        _ => Ok(()),
    }
}

/// Checks the rootfs and every `--layer` are directories.
pub fn check_opts(opts: &JailOpts) -> Result<(), CliError> {
    match std::fs::metadata(&opts.rootfs) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(CliError::RootfsNotDir(opts.rootfs.clone())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::RootfsMissing(opts.rootfs.clone()))
        }
        Err(source) => {
            return Err(CliError::RootfsUnreadable {
                path: opts.rootfs.clone(),
                source,
            })
        }
    }
    for layer in &opts.layers {
        if !layer.is_dir() {
            return Err(CliError::LayerNotDir(layer.clone()));
        }
    }
    Ok(())
}

/// Paths and names every command works with.
#[derive(Debug, Clone)]
struct Ctx {
    state_dir: PathBuf,
    cgroup_parent: String,
}

impl Ctx {
    fn new(state_dir: &Path, cgroup_parent: &str) -> Ctx {
        // The jail runtime checks absolute host paths: anchor a relative
        // state dir at the current directory.
        let state_dir = std::path::absolute(state_dir).unwrap_or(state_dir.to_path_buf());
        Ctx {
            state_dir,
            cgroup_parent: cgroup_parent.to_owned(),
        }
    }
    fn jails(&self) -> PathBuf {
        self.state_dir.join(JAILS_DIR)
    }
    fn net(&self) -> PathBuf {
        self.state_dir.join(NET_DIR)
    }
    fn overlay(&self, name: &str) -> PathBuf {
        self.state_dir.join(OVERLAY_DIR).join(name)
    }
    fn jail_exists(&self, name: &str) -> bool {
        jail::state::jail_dir(&self.jails(), name)
            .join(jail::state::STATE_FILE)
            .exists()
            || jail::state::jail_dir(&self.jails(), name).exists()
    }
    fn unknown(&self, name: &str) -> CliError {
        CliError::UnknownJail {
            name: name.to_string(),
            state_dir: self.state_dir.clone(),
        }
    }
}

/// An exclusive `flock(2)` on the state dir, released on drop.
#[derive(Debug)]
struct StateLock(#[allow(dead_code)] nix::fcntl::Flock<File>);

/// Locks the state dir, creating it first when `create` (else `None` if it
/// does not exist).
async fn lock_state(ctx: &Ctx, create: bool) -> Result<Option<StateLock>, CliError> {
    let dir = ctx.state_dir.clone();
    blocking(move || {
        if create {
            std::fs::create_dir_all(&dir).map_err(|e| CliError::Io {
                what: format!("create state dir {}", dir.display()),
                source: e,
            })?;
        } else if !dir.is_dir() {
            return Ok(None);
        }
        let f = File::open(&dir).map_err(|e| CliError::Io {
            what: format!("open state dir {}", dir.display()),
            source: e,
        })?;
        // Blocking until a concurrent create in this state dir finishes.
        let lock =
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
                CliError::Io {
                    what: format!("lock state dir {}", dir.display()),
                    source: e.into(),
                }
            })?;
        Ok(Some(StateLock(lock)))
    })
    .await
}

/// Runs a blocking step. Inline: this command's runtime drives one jail
/// and runs nothing else meanwhile, and a hand-off to tokio's blocking
/// pool costs two thread switches (milliseconds on a loaded machine); the
/// jail library is told the same by [`jail::set_inline_blocking`].
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CliError> + Send + 'static,
) -> Result<T, CliError> {
    f()
}

fn jail_err(e: jail::Error) -> CliError {
    CliError::Jail(e.to_string())
}

async fn dispatch(ctx: &Ctx, cmd: JailCommand) -> Result<ExitCode, CliError> {
    match cmd {
        // The berth binary sends it to berthd before it gets here.
        JailCommand::Reset { name, .. } => Err(CliError::Jail(format!(
            "jail '{name}' is berthd's: reset it through berthd (berth jail reset)"
        ))),
        JailCommand::Run(a) => {
            let name = a.name.clone().unwrap_or_else(generated_name);
            cmd_run(ctx, &name, &a.opts, &a.cmd).await
        }
        JailCommand::Create(a) => cmd_create(ctx, &a.name, &a.opts, &a.cmd).await,
        JailCommand::Start { name } => {
            let _lock = recover_locked(ctx).await?;
            let mut j = adopt(ctx, &name).await?;
            if j.state().phase != Phase::Created || !j.is_alive() {
                return Err(wrong_state(&j, "only a created jail can be started"));
            }
            j.start().await.map_err(jail_err)?;
            Ok(ExitCode::SUCCESS)
        }
        JailCommand::Exec { name, cmd } => {
            let j = {
                let _lock = recover_locked(ctx).await?;
                adopt(ctx, &name).await?
            };
            if !j.is_alive() || j.state().phase != Phase::Running {
                return Err(wrong_state(&j, "start it first"));
            }
            let mut opts = ExecOptions::new(to_strings(&cmd)?);
            opts.stdio = ExecStdio::Inherit;
            let out = j.exec(opts).await.map_err(jail_err)?;
            Ok(exit_code(out.code))
        }
        JailCommand::Stop { name, time } => {
            let mut j = {
                let _lock = recover_locked(ctx).await?;
                adopt(ctx, &name).await?
            };
            if j.is_alive() {
                j.stop(Duration::from_secs(time)).await.map_err(jail_err)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        JailCommand::Kill { name, signal } => {
            let _lock = recover_locked(ctx).await?;
            let j = adopt(ctx, &name).await?;
            if !j.is_alive() {
                return Err(wrong_state(&j, "nothing to signal"));
            }
            j.kill(signal).map_err(jail_err)?;
            Ok(ExitCode::SUCCESS)
        }
        JailCommand::Rm { name, force } => {
            let _lock = recover_locked(ctx).await?;
            let j = adopt(ctx, &name).await?;
            if j.is_alive() && !force {
                return Err(wrong_state(&j, "stop it first or use --force"));
            }
            let vendor = j.state().vendor.to_string();
            let res = j.delete().await.map_err(jail_err);
            remove_overlay(ctx, &name);
            let tidy = tidy(ctx, &[vendor]).await;
            res.and(tidy)?;
            Ok(ExitCode::SUCCESS)
        }
        JailCommand::Ls { json } => {
            let _lock = recover_locked(ctx).await?;
            let infos = if ctx.state_dir.is_dir() {
                jail::list(&ctx.jails()).await.map_err(jail_err)?
            } else {
                Vec::new()
            };
            let rows: Vec<LsRow> = infos
                .into_iter()
                .map(|i| {
                    let exit =
                        jail::state::read_exit(&jail::state::jail_dir(&ctx.jails(), &i.name));
                    LsRow {
                        state: phase_name(i.phase),
                        pid: if i.alive { i.pid } else { None },
                        address: i.address,
                        exit_code: if i.alive { None } else { exit.map(|e| e.code) },
                        vendor: i.vendor,
                        name: i.name,
                    }
                })
                .collect();
            print_ls(&rows, json)?;
            Ok(ExitCode::SUCCESS)
        }
        JailCommand::Stats { name, json } => {
            let j = {
                let _lock = recover_locked(ctx).await?;
                adopt(ctx, &name).await?
            };
            let s = j.stats().await.map_err(jail_err)?;
            let r = &j.state().spec.resources;
            let row = StatsRow {
                name: name.clone(),
                state: phase_name(s.phase),
                pid: s.pid,
                memory_bytes: s.cgroup.memory_current,
                memory_peak: s.cgroup.memory_peak,
                memory_max: r.memory_max,
                pids: s.cgroup.pids_current,
                pids_max: r.pids_max,
                cpu_ns: s.cgroup.cpu_usage_us.saturating_mul(1000),
                oom_kills: s.cgroup.oom_kills,
            };
            print_stats(&row, json)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Locks the state dir (if it exists) and removes the leftovers of jails
/// whose creator died. The returned lock is held by the caller.
async fn recover_locked(ctx: &Ctx) -> Result<Option<StateLock>, CliError> {
    let Some(lock) = lock_state(ctx, false).await? else {
        return Ok(None);
    };
    recover(ctx, true).await?;
    Ok(Some(lock))
}

/// Recovery under the state lock: jails still in phase `creating` (their
/// creator died mid-create; a live create holds the lock) are deleted with
/// everything they own, then the vendor bridges, cgroups and overlays
/// nobody owns any more. Stopped jails are kept for `ls` and `rm`.
///
/// `always_tidy: false` skips that last [`tidy`] when no jail was removed,
/// for a caller that tidies itself soon after (`run` does when its jail
/// ends).
async fn recover(ctx: &Ctx, always_tidy: bool) -> Result<(), CliError> {
    let jails = jail::list_creating(&ctx.jails()).await.map_err(jail_err)?;
    let mut first_err = None;
    let mut vendors = Vec::new();
    for info in &jails {
        tracing::warn!(
            jail = info.name.as_str(),
            "removing a jail whose create never finished"
        );
        vendors.push(info.vendor.clone());
        let r = match Jail::adopt(&ctx.jails(), &info.name).await {
            Ok(j) => j.delete().await.map_err(jail_err),
            Err(e) => Err(jail_err(e)),
        };
        if let Err(e) = r {
            first_err.get_or_insert(e);
        }
        remove_overlay(ctx, &info.name);
    }
    // Directories without a readable record: create writes the record
    // before it makes any kernel object, so there is nothing else.
    if let Ok(rd) = std::fs::read_dir(ctx.jails()) {
        for e in rd.flatten() {
            let dir = e.path();
            if dir.is_dir() && !dir.join(jail::state::STATE_FILE).exists() {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    // Temp files of an allocator write cut short (netns writes temp, fsync,
    // rename): no writer runs while we hold the lock.
    if let Ok(rd) = std::fs::read_dir(ctx.net()) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    // Overlay dirs of jails that never got a state dir.
    if let Ok(rd) = std::fs::read_dir(ctx.state_dir.join(OVERLAY_DIR)) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !ctx.jail_exists(&name) {
                remove_overlay(ctx, &name);
            }
        }
    }
    let t = if always_tidy || !vendors.is_empty() {
        tidy(ctx, &vendors).await
    } else {
        Ok(())
    };
    match first_err {
        Some(e) => Err(e),
        None => t,
    }
}

/// Removes every vendor bridge of this state dir that no jail uses any
/// more, the empty cgroups of `vendors`; re-applies the firewall; removes
/// empty sub-directories of the state dir. Call under the state lock.
async fn tidy(ctx: &Ctx, vendors: &[String]) -> Result<(), CliError> {
    let mut first_err = None;
    let mut bridges = Vec::new();
    if let Ok(rd) = std::fs::read_dir(ctx.net()) {
        for e in rd.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if let Some(b) = f.strip_suffix(".addrs") {
                bridges.push(b.to_string());
            }
        }
    }
    for bridge in &bridges {
        if let Err(e) = gc_bridge(ctx, bridge).await {
            first_err.get_or_insert(e);
        }
    }
    for vendor in vendors {
        for h in jail::cgroup_roots() {
            // rmdir(2) refuses a cgroup with tasks or children: only an
            // empty vendor cgroup goes.
            let _ = std::fs::remove_dir(h.join(&ctx.cgroup_parent).join(vendor));
        }
    }
    if let Err(e) = sync_firewall(ctx, None).await {
        first_err.get_or_insert(e);
    }
    for sub in [JAILS_DIR, NET_DIR, OVERLAY_DIR] {
        let _ = std::fs::remove_dir(ctx.state_dir.join(sub));
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Deletes `bridge` if this state dir's allocator has no lease on it and no
/// port is attached. Returns whether it was removed.
async fn gc_bridge(ctx: &Ctx, bridge: &str) -> Result<bool, CliError> {
    let alloc_file = ctx.net().join(format!("{bridge}.addrs"));
    if !alloc_file.exists() {
        return Ok(false);
    }
    // The allocator's file lists one `lease ADDR OWNER` line per address
    // handed out and one `quarantine ADDR LINK` line per address waiting
    // for the veth of a jail that ended to go (netns::alloc); an
    // unreadable file counts as in use.
    let text = std::fs::read_to_string(&alloc_file).ok();
    let leases = text
        .as_deref()
        .map(|t| t.lines().filter(|l| l.starts_with("lease ")).count())
        .unwrap_or(usize::MAX);
    let dying: Vec<&str> = text
        .as_deref()
        .map(|t| {
            t.lines()
                .filter_map(|l| l.strip_prefix("quarantine "))
                .filter_map(|l| l.split(' ').nth(1))
                .collect()
        })
        .unwrap_or_default();
    // Ports other than those dying veths (which the kernel is removing
    // with their jails' namespaces) keep the bridge.
    let foreign_ports = std::fs::read_dir(Path::new("/sys/class/net").join(bridge).join("brif"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| !dying.iter().any(|d| e.file_name() == *d))
                .count()
        })
        .unwrap_or(0);
    if leases > 0 || foreign_ports > 0 {
        return Ok(false);
    }
    let c = netns::Net::connect().await.map_err(|e| CliError::Net {
        what: "connect to netlink".into(),
        source: Box::new(e),
    })?;
    c.delete_bridge(bridge).await.map_err(|e| CliError::Net {
        what: format!("delete bridge {bridge}"),
        source: Box::new(e),
    })?;
    std::fs::remove_file(&alloc_file).map_err(|e| CliError::Io {
        what: format!("remove {}", alloc_file.display()),
        source: e,
    })?;
    Ok(true)
}

/// The nftables table of this state dir: `berth` for the default one, else
/// `berth-` and a hash of the path (so that test state dirs do not clash).
pub fn table_name(state_dir: &Path) -> String {
    if state_dir == Path::new(crate::cli::DEFAULT_STATE_DIR) {
        "berth".to_string()
    } else {
        format!(
            "berth-{:08x}",
            net::fnv1a(state_dir.as_os_str().as_encoded_bytes())
        )
    }
}

/// File in the net dir recording the bridges the firewall table was last
/// written for, so that an unchanged policy is not sent again.
pub const FIREWALL_RECORD: &str = "firewall.applied";

/// Brings the state dir's nftables table (NAT egress, isolation between
/// vendor bridges) in line with the bridges it allocates on, plus `extra`
/// (a bridge about to be created); removes the table when there is none.
///
/// The bridges last applied are recorded in [`FIREWALL_RECORD`]; nothing is
/// sent when they did not change. The record is written before the table
/// and removed after it, so a crash in between leaves a record that differs
/// from the truth and the next command rewrites the table.
async fn sync_firewall(ctx: &Ctx, extra: Option<&NetOptions>) -> Result<(), CliError> {
    let routes = net::host_routes().map_err(|e| CliError::Io {
        what: "read /proc/net/route".into(),
        source: e,
    })?;
    let mut bridges: Vec<netns::BridgePolicy> = Vec::new();
    let policy_of = |bridge: &str, gateway: Ipv4Addr, prefix_len: u8| {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0);
        netns::BridgePolicy {
            bridge: bridge.to_string(),
            subnet: Ipv4Addr::from(u32::from(gateway) & mask),
            prefix_len,
            gateway,
            host_ports: Vec::new(),
            allow_to: Vec::new(),
        }
    };
    if let Ok(rd) = std::fs::read_dir(ctx.net()) {
        for e in rd.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            let Some(bridge) = f.strip_suffix(".addrs") else {
                continue;
            };
            if let Some(r) = routes.iter().find(|r| r.iface == bridge && r.mask != 0) {
                let gateway = Ipv4Addr::from(u32::from(r.dest) + 1);
                bridges.push(policy_of(bridge, gateway, r.mask.count_ones() as u8));
            }
        }
    }
    if let Some(n) = extra {
        if !bridges.iter().any(|b| b.bridge == n.bridge) {
            bridges.push(policy_of(&n.bridge, n.gateway, n.prefix_len));
        }
    }
    bridges.sort_by(|a, b| a.bridge.cmp(&b.bridge));
    let record: String = bridges
        .iter()
        .map(|b| format!("{} {}/{}\n", b.bridge, b.gateway, b.prefix_len))
        .collect();
    let record_path = ctx.net().join(FIREWALL_RECORD);
    let recorded = std::fs::read_to_string(&record_path).unwrap_or_default();
    if record == recorded {
        return Ok(());
    }
    let fw = netns::Firewall::new(&table_name(&ctx.state_dir));
    let policy = netns::Policy {
        uplink_masquerade: !bridges.is_empty(),
        bridges,
    };
    let net_dir = ctx.net();
    blocking(move || {
        let net_err = |what: String| {
            move |e| CliError::Net {
                what,
                source: Box::new(e),
            }
        };
        if policy.bridges.is_empty() {
            fw.remove()
                .map_err(net_err(format!("remove firewall table {}", fw.table())))?;
            return match std::fs::remove_file(&record_path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CliError::Io {
                    what: format!("remove {}", record_path.display()),
                    source: e,
                }),
                _ => Ok(()),
            };
        }
        std::fs::create_dir_all(&net_dir).map_err(|e| CliError::Io {
            what: format!("create {}", net_dir.display()),
            source: e,
        })?;
        jail::state::write_atomic(&record_path, record.as_bytes())
            .map_err(|e| CliError::Jail(e.to_string()))?;
        if !netns::ipv4_forwarding().unwrap_or(false) {
            // NAT egress needs forwarding (ip(7), ip_forward).
            netns::set_ipv4_forwarding(true)
                .map_err(net_err("enable ipv4 forwarding".to_string()))?;
        }
        fw.apply(&policy)
            .map_err(net_err(format!("firewall table {}", fw.table())))
    })
    .await
}

fn remove_overlay(ctx: &Ctx, name: &str) {
    let dir = ctx.overlay(name);
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove overlay dir");
        }
    }
}

async fn adopt(ctx: &Ctx, name: &str) -> Result<Jail, CliError> {
    if !ctx.jail_exists(name) {
        return Err(ctx.unknown(name));
    }
    Jail::adopt(&ctx.jails(), name).await.map_err(|e| match e {
        jail::Error::NotFound(_) => ctx.unknown(name),
        other => jail_err(other),
    })
}

fn wrong_state(j: &Jail, hint: &'static str) -> CliError {
    let state = if j.is_alive() {
        phase_name(j.state().phase)
    } else if j.state().phase == Phase::Creating {
        "creating"
    } else {
        "stopped"
    };
    CliError::WrongState {
        name: j.name().to_string(),
        state: state.to_string(),
        hint,
    }
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Creating => "creating",
        Phase::Created => "created",
        Phase::Running => "running",
        Phase::Stopped => "stopped",
    }
}

fn generated_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("run-{}-{:x}", std::process::id(), nanos & 0xfffff)
}

fn to_strings(cmd: &[std::ffi::OsString]) -> Result<Vec<String>, CliError> {
    cmd.iter()
        .map(|a| {
            a.to_str()
                .map(str::to_string)
                .ok_or_else(|| CliError::NotUtf8(a.to_string_lossy().into_owned()))
        })
        .collect()
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(255))
}

/// Builds the spec of a new jail.
fn build_spec(
    ctx: &Ctx,
    name: &str,
    opts: &JailOpts,
    cmd: &[std::ffi::OsString],
    console: Console,
) -> Result<JailSpec, CliError> {
    let args = to_strings(cmd)?;
    let rootfs_abs = std::path::absolute(&opts.rootfs).unwrap_or(opts.rootfs.clone());
    let env = PAYLOAD_ENV.iter().map(|e| e.to_string()).collect();
    let oci = jail::oci::spec(
        jail::oci::root(&rootfs_abs, false),
        jail::oci::process(args, env, "/", 0, 0),
    );
    let rootfs = if opts.overlay || !opts.layers.is_empty() {
        let dir = ctx.overlay(name);
        // Topmost first: the last --layer, down to the rootfs.
        let mut lowers: Vec<PathBuf> = opts
            .layers
            .iter()
            .rev()
            .map(|l| std::path::absolute(l).unwrap_or(l.clone()))
            .collect();
        lowers.push(rootfs_abs);
        Some(RootfsOptions::Overlay {
            lowers,
            upper: dir.join("upper"),
            work: dir.join("work"),
        })
    } else {
        None
    };
    let network = if opts.net {
        let bridge = net::bridge_name(&opts.vendor);
        let routes = net::host_routes().map_err(|e| CliError::Io {
            what: "read /proc/net/route".into(),
            source: e,
        })?;
        let subnet = net::pick_subnet(&opts.vendor, &bridge, &routes).ok_or_else(|| {
            CliError::Jail(format!(
                "no free subnet for bridge {bridge} in {}/16",
                net::POOL
            ))
        })?;
        Some(NetOptions {
            bridge,
            gateway: subnet.gateway,
            prefix_len: subnet.prefix_len,
            allocator_dir: ctx.net(),
        })
    } else {
        None
    };
    let user_ns = opts.user_ns.then(|| IdMap {
        inside: 0,
        outside: USERNS_BASE + (net::fnv1a(name.as_bytes()) % 1000) * USERNS_SIZE,
        count: USERNS_SIZE,
    });
    let jopts = JailOptions {
        name: name.to_string(),
        vendor: opts.vendor.clone(),
        rootfs,
        network,
        cgroup_parent: Some(PathBuf::from(&ctx.cgroup_parent)),
        state_root: Some(ctx.jails()),
        init_path: None,
        memory_max: opts.memory,
        pids_max: opts.pids,
        cpus: opts.cpus,
        hostname: Some(opts.hostname.clone().unwrap_or_else(|| name.to_string())),
        user_ns,
        console,
    };
    JailSpec::from_oci(&oci, &jopts).map_err(|e| CliError::BadSpec(e.to_string()))
}

/// Under the state lock: recovery, the name check, the overlay dirs, the
/// runtime's create and the firewall. `run`: the jail is started at once
/// ([`Jail::create_started`]) and the caller tidies the state dir when it
/// ends, so recovery need not unless it removed something.
async fn create_locked(
    ctx: &Ctx,
    name: &str,
    opts: &JailOpts,
    cmd: &[std::ffi::OsString],
    console: Console,
    run: bool,
) -> Result<Jail, CliError> {
    let t0 = std::time::Instant::now();
    let spec = build_spec(ctx, name, opts, cmd, console)?;
    let _lock = lock_state(ctx, true).await?;
    mark(t0, "locked");
    recover(ctx, !run).await?;
    mark(t0, "recovered");
    if ctx.jail_exists(name) {
        return Err(CliError::NameClash {
            name: name.to_string(),
            state_dir: ctx.state_dir.clone(),
        });
    }
    if let RootfsOptions::Overlay { upper, work, .. } = &spec.rootfs {
        for d in [upper, work] {
            std::fs::create_dir_all(d).map_err(|e| CliError::Io {
                what: format!("create overlay dir {}", d.display()),
                source: e,
            })?;
        }
    }
    let vendors = [opts.vendor.clone()];
    // The rules go in before the bridge and the jail exist, so that no
    // crash can leave a jail on a bridge outside them.
    if let Some(n) = &spec.network {
        if let Err(e) = sync_firewall(ctx, Some(n)).await {
            remove_overlay(ctx, name);
            let _ = tidy(ctx, &vendors).await;
            return Err(e);
        }
    }
    mark(t0, "firewall synced");
    let created = if run {
        Jail::create_started(spec).await
    } else {
        Jail::create(spec).await
    };
    match created {
        Ok(j) => Ok(j),
        Err(e) => {
            remove_overlay(ctx, name);
            let _ = tidy(ctx, &vendors).await;
            Err(jail_err(e))
        }
    }
}

async fn cmd_create(
    ctx: &Ctx,
    name: &str,
    opts: &JailOpts,
    cmd: &[std::ffi::OsString],
) -> Result<ExitCode, CliError> {
    create_locked(ctx, name, opts, cmd, Console::LogFile, false).await?;
    Ok(ExitCode::SUCCESS)
}

/// Phase timings for profiling, as debug events of target `berth::timing`
/// (`RUST_LOG=berth::timing=debug,jail::timing=debug`).
fn mark(t0: std::time::Instant, phase: &'static str) {
    tracing::debug!(
        target: "berth::timing",
        phase,
        us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX)
    );
}

async fn cmd_run(
    ctx: &Ctx,
    name: &str,
    opts: &JailOpts,
    cmd: &[std::ffi::OsString],
) -> Result<ExitCode, CliError> {
    let t0 = std::time::Instant::now();
    // Before the jail exists: its payload starts as soon as it is set up.
    let signals = Forwarded::install()?;
    let mut jail = create_locked(ctx, name, opts, cmd, Console::Inherit, true).await?;
    mark(t0, "created");
    let outcome = signals.wait(&mut jail).await;
    mark(t0, "payload ended");
    // Memory accounting survives the payload until the cgroup goes.
    let oom_kills = jail.oom_kills().await.unwrap_or(0);
    let vendor = opts.vendor.clone();
    let removed = {
        let _lock = lock_state(ctx, true).await?;
        mark(t0, "locked for delete");
        let r = jail.delete().await.map_err(jail_err);
        mark(t0, "deleted");
        remove_overlay(ctx, name);
        let t = tidy(ctx, &[vendor]).await;
        mark(t0, "tidied");
        r.and(t)
    };
    let rec = outcome?;
    if oom_kills > 0 {
        let limit = opts.memory.map(human_size).unwrap_or_else(|| "?".into());
        eprintln!(
            "berth: jail {name}: out of memory: the kernel killed {oom_kills} process(es) at the --memory limit of {limit}"
        );
    } else if let Some(sig) = rec.signal {
        let sname = signal_name(sig)
            .map(|s| format!("SIG{s}"))
            .unwrap_or(format!("signal {sig}"));
        tracing::info!(jail = name, "payload killed by {sname}");
    }
    removed?;
    Ok(exit_code(rec.code))
}

/// SIGINT, SIGTERM and SIGHUP sent to berth, forwarded to the jail by
/// `run`, which deletes the jail after.
struct Forwarded {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Forwarded {
    fn install() -> Result<Forwarded, CliError> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Forwarded {
            int: signal(SignalKind::interrupt()).map_err(CliError::Runtime)?,
            term: signal(SignalKind::terminate()).map_err(CliError::Runtime)?,
            hup: signal(SignalKind::hangup()).map_err(CliError::Runtime)?,
        })
    }

    /// Waits for the payload of the started `jail`, forwarding the
    /// signals (also those that came while it was being created).
    async fn wait(mut self, jail: &mut Jail) -> Result<jail::ExitRecord, CliError> {
        loop {
            let sig = tokio::select! {
                // Cancel-safe: the signal streams lose nothing when another
                // branch wins, and a cancelled wait() is simply called again.
                _ = self.int.recv() => libc_sig::INT,
                _ = self.term.recv() => libc_sig::TERM,
                _ = self.hup.recv() => libc_sig::HUP,
                // The jail is deleted right after: no phase to save.
                rec = jail.wait_before_delete() => return rec.map_err(jail_err),
            };
            if let Err(e) = jail.kill(sig) {
                tracing::debug!(error = %e, "forwarding a signal to the jail");
            }
        }
    }
}

/// Signal numbers forwarded by `run` (Linux values).
mod libc_sig {
    pub const HUP: i32 = 1;
    pub const INT: i32 = 2;
    pub const TERM: i32 = 15;
}

fn human_size(bytes: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// One line of `berth jail ls`.
#[derive(Debug, Serialize)]
struct LsRow {
    name: String,
    vendor: String,
    state: &'static str,
    pid: Option<i32>,
    address: Option<Ipv4Addr>,
    exit_code: Option<i32>,
}

fn print_ls(rows: &[LsRow], json: bool) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    if json {
        let text = serde_json::to_string_pretty(rows)
            .map_err(|e| CliError::Jail(format!("encode json: {e}")))?;
        writeln!(out, "{text}").map_err(CliError::Output)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<32} {:<16} {:<9} {:>8} {:<15}",
        "NAME", "VENDOR", "STATE", "PID", "ADDRESS"
    )
    .map_err(CliError::Output)?;
    for r in rows {
        let pid = r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let addr = r
            .address
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{:<32} {:<16} {:<9} {:>8} {:<15}",
            r.name, r.vendor, r.state, pid, addr
        )
        .map_err(CliError::Output)?;
    }
    Ok(())
}

/// `berth jail stats`.
#[derive(Debug, Serialize)]
struct StatsRow {
    name: String,
    state: &'static str,
    pid: Option<i32>,
    memory_bytes: u64,
    memory_peak: Option<u64>,
    memory_max: Option<u64>,
    pids: u64,
    pids_max: Option<u64>,
    cpu_ns: u64,
    oom_kills: u64,
}

fn print_stats(s: &StatsRow, json: bool) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    if json {
        let text = serde_json::to_string_pretty(s)
            .map_err(|e| CliError::Jail(format!("encode json: {e}")))?;
        writeln!(out, "{text}").map_err(CliError::Output)?;
        return Ok(());
    }
    let limit = |v: Option<u64>, f: fn(u64) -> String| v.map(f).unwrap_or_else(|| "none".into());
    let lines = [
        format!("name:      {}", s.name),
        format!("state:     {}", s.state),
        format!(
            "memory:    {} (limit {})",
            human_size(s.memory_bytes),
            limit(s.memory_max, human_size)
        ),
        format!(
            "pids:      {} (limit {})",
            s.pids,
            limit(s.pids_max, |v| v.to_string())
        ),
        format!("cpu:       {:.3} s", s.cpu_ns as f64 / 1e9),
        format!("oom kills: {}", s.oom_kills),
    ];
    for l in lines {
        writeln!(out, "{l}").map_err(CliError::Output)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn opts(rootfs: &Path, layers: &[&Path]) -> JailOpts {
        let mut args = vec![
            "berth".to_string(),
            "jail".into(),
            "run".into(),
            "--rootfs".into(),
            rootfs.display().to_string(),
        ];
        for l in layers {
            args.push("--layer".into());
            args.push(l.display().to_string());
        }
        args.extend(["--".into(), "true".into()]);
        match Cli::try_parse_from(args).unwrap().command {
            Command::Jail(JailCommand::Run(r)) => r.opts,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rootfs_checks_name_the_path() {
        let d = tempfile::tempdir().unwrap();
        assert!(check_opts(&opts(d.path(), &[])).is_ok());
        let missing = d.path().join("nope");
        let e = check_opts(&opts(&missing, &[])).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("rootfs {} does not exist", missing.display())
        );
        let file = d.path().join("f");
        std::fs::write(&file, "").unwrap();
        let e = check_opts(&opts(&file, &[])).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("rootfs {} is not a directory", file.display())
        );
        let e = check_opts(&opts(d.path(), &[&missing])).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("layer {} is not a directory", missing.display())
        );
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn spec_from_options() {
        let d = tempfile::tempdir().unwrap();
        let l1 = d.path().join("l1");
        let l2 = d.path().join("l2");
        let ctx = Ctx::new(Path::new("/tmp/st"), "cgp");
        let mut o = opts(d.path(), &[&l1, &l2]);
        o.memory = Some(8 << 20);
        o.user_ns = true;
        let spec = build_spec(&ctx, "j1", &o, &["/bin/true".into()], Console::Null).unwrap();
        match &spec.rootfs {
            RootfsOptions::Overlay { lowers, upper, .. } => {
                assert_eq!(
                    lowers,
                    &vec![l2.clone(), l1.clone(), d.path().to_path_buf()]
                );
                assert_eq!(upper, &PathBuf::from("/tmp/st/overlay/j1/upper"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(spec.resources.memory_max, Some(8 << 20));
        // Values the runtime refuses are bad input (exit 2), said as such.
        o.memory = Some(1 << 20);
        let e = build_spec(&ctx, "j1", &o, &["/bin/true".into()], Console::Null).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().starts_with("invalid jail options: "), "{e}");
        assert_eq!(spec.cgroup_path, PathBuf::from("cgp/default/j1"));
        assert_eq!(spec.state_root, PathBuf::from("/tmp/st/jails"));
        let (uid, _) = spec.user_ns.clone().unwrap();
        assert!(uid[0].outside >= USERNS_BASE && uid[0].count == USERNS_SIZE);
    }

    #[test]
    fn table_names() {
        assert_eq!(table_name(Path::new("/run/berth")), "berth");
        let t = table_name(Path::new("/tmp/x/state"));
        assert!(t.starts_with("berth-") && t.len() == 14, "{t}");
        assert_ne!(t, table_name(Path::new("/tmp/y/state")));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(64 << 20), "64 MiB");
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(1000), "1000 bytes");
    }
}

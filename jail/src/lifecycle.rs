//! Jail lifecycle without a monitor process: create, start, exec, stop,
//! kill, delete, stats, adopt, list, run and recover.
//!
//! The caller keeps a pidfd of each jail's init; the state file keeps pid
//! and start time so that a restarted caller can adopt the jail
//! (pidfd_open + start-time check). Blocking work (clone, file syncs, pipe
//! reads, waits) runs in `spawn_blocking`; waiting for exit polls the pidfd
//! through tokio's `AsyncFd`.
//!
//! Create order: state directory and `state.json` with phase `creating`
//! first (so a crash at any later point leaves a record that
//! [`recover`] can clean up), then the cgroup, then init is
//! cloned (born in the v2 cgroup; it writes itself into the v1 ones); the
//! parent writes id maps and lets it go, then allocates the address,
//! ensures the bridge and creates the veth pair into init's network
//! namespace while init sets up its mounts; init then configures its end
//! (address, route, loopback) from the record the parent sends, and
//! reports. The next durable write is phase `created` with pid, start time
//! and address (`running` for [`Jail::create_started`], which opens the
//! start FIFO before init reports): a creator that dies before it leaves
//! nothing that `recover` cannot find from the `creating` record (init
//! dies with its cgroup).

use std::fs;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::error::Error;
use crate::name::host_veth;
use crate::plan::{
    CreatePlan, ExecPlan, InitPlan, Mode, NetPlan, ProcessPlan, RootfsPlan, PLAN_VERSION,
};
use crate::spec::{Console, JailSpec, NetOptions, RootfsOptions, DEFAULT_PATH};
use crate::state::{
    jail_dir, list_names, proc_start_time, read_exit, ExitRecord, JailState, Phase, CONSOLE_FILE,
    FIFO_FILE, STATE_VERSION, STATUS_FILE,
};
use crate::sys;

/// Interface name of the jail side of the veth.
pub const JAIL_IF: &str = "eth0";
/// How long create waits for init to report its setup.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Directory (inside the state dir) where init mounts the new root.
pub const ROOT_DIR: &str = "root";

/// Phase timings for profiling, as debug events of target `jail::timing`
/// (`RUST_LOG=jail::timing=debug`): microseconds since `t0`.
fn mark(t0: std::time::Instant, phase: &'static str) {
    tracing::debug!(
        target: "jail::timing",
        phase,
        us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX)
    );
}

/// See [`set_inline_blocking`].
static INLINE_BLOCKING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs the library's blocking steps (file writes, clone, the short waits
/// for init's report and the start FIFO) on the calling thread instead of
/// tokio's blocking pool.
///
/// Only for a one-shot command whose runtime runs nothing else while it
/// drives one jail (the `berth jail` command line): every step then saves
/// two thread hand-offs, which on a loaded machine cost milliseconds each
/// (a `run` takes about twenty steps). Never for a daemon: its other tasks
/// would stall behind the steps. Off by default.
///
/// It also tells create that this process has no other threads to worry
/// about (checked again at the clone): the cloned child then runs init's
/// code itself, without an exec of `berth-init`, unless the jail has a
/// user namespace.
pub fn set_inline_blocking(on: bool) {
    INLINE_BLOCKING.store(on, std::sync::atomic::Ordering::Relaxed);
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    if INLINE_BLOCKING.load(std::sync::atomic::Ordering::Relaxed) {
        return f();
    }
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Join(e.to_string()))?
}

/// A jail this process created or adopted.
#[derive(Debug)]
pub struct Jail {
    dir: PathBuf,
    state: JailState,
    pidfd: Option<Arc<OwnedFd>>,
}

/// A jail as [`list`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailInfo {
    /// Name.
    pub name: String,
    /// Vendor.
    pub vendor: String,
    /// Persisted phase.
    pub phase: Phase,
    /// Init pid.
    pub pid: Option<i32>,
    /// Whether init is alive (same pid and start time).
    pub alive: bool,
    /// Address.
    pub address: Option<Ipv4Addr>,
}

/// What [`Jail::stats`] returns.
#[derive(Debug, Clone)]
pub struct JailStats {
    /// Phase (Stopped when init is gone).
    pub phase: Phase,
    /// Init pid.
    pub pid: Option<i32>,
    /// Cgroup usage.
    pub cgroup: cgroup::Stats,
}

/// Stdio of an exec'd command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecStdio {
    /// stdin /dev/null, stdout and stderr captured.
    Capture,
    /// The caller's stdio.
    Inherit,
}

/// A command to run in a running jail.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// argv.
    pub args: Vec<String>,
    /// Environment; `None` uses the jail's payload environment.
    pub env: Option<Vec<String>>,
    /// Working directory; `None` uses the payload's.
    pub cwd: Option<String>,
    /// Stdio.
    pub stdio: ExecStdio,
}

impl ExecOptions {
    /// Captured run of `args` with the jail's environment.
    pub fn new<S: Into<String>>(args: impl IntoIterator<Item = S>) -> Self {
        ExecOptions {
            args: args.into_iter().map(Into::into).collect(),
            env: None,
            cwd: None,
            stdio: ExecStdio::Capture,
        }
    }
}

/// Result of an exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code (128 + signal when killed).
    pub code: i32,
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
}

impl Jail {
    /// Name.
    pub fn name(&self) -> &str {
        self.state.name.as_str()
    }
    /// Persisted state.
    pub fn state(&self) -> &JailState {
        &self.state
    }
    /// State directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Init's pid in the caller's pid namespace.
    pub fn pid(&self) -> Option<i32> {
        self.state.pid
    }
    /// The jail's address, when networked.
    pub fn address(&self) -> Option<Ipv4Addr> {
        self.state.address
    }
    /// Path of the payload console log.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join(CONSOLE_FILE)
    }

    /// Creates the jail: everything set up, init waiting for [`start`].
    ///
    /// On failure every object made so far is removed; a cleanup failure is
    /// reported beside the original error. Not cancel-safe: a future
    /// dropped midway leaves a `creating` record (and what it names),
    /// which [`recover`] removes.
    ///
    /// [`start`]: Jail::start
    pub async fn create(spec: JailSpec) -> Result<Jail, Error> {
        Self::create_inner(spec, false).await
    }

    /// [`Jail::create`] and [`Jail::start`] in one, for a jail that runs at
    /// once (`berth jail run`): the start FIFO is opened before init
    /// reports, so init goes on to the payload right after its setup,
    /// without waiting for a separate start; the record says `running`
    /// when this returns. Until then it says `creating`, so a creator
    /// killed meanwhile leaves a jail that [`recover`] removes, payload and
    /// all.
    pub async fn create_started(spec: JailSpec) -> Result<Jail, Error> {
        Self::create_inner(spec, true).await
    }

    async fn create_inner(spec: JailSpec, start: bool) -> Result<Jail, Error> {
        let dir = jail_dir(&spec.state_root, spec.name.as_str());
        let state = {
            let dir = dir.clone();
            let spec = spec.clone();
            blocking(move || begin_create(&dir, spec)).await?
        };
        let mut jail = Jail {
            dir: dir.clone(),
            state,
            pidfd: None,
        };
        match create_rest(&mut jail, start).await {
            Ok(()) => Ok(jail),
            Err(e) => {
                if let Some(fd) = &jail.pidfd {
                    let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
                    let fd = fd.clone();
                    let _ = blocking(move || {
                        let _ = sys::waitid_pidfd(fd.as_fd(), false);
                        Ok(())
                    })
                    .await;
                }
                let errs = cleanup(&jail.state, &dir).await;
                Err(e.with_cleanup(errs))
            }
        }
    }

    /// Lets the payload run (opens the start FIFO init blocks on).
    pub async fn start(&mut self) -> Result<(), Error> {
        if self.state.phase != Phase::Created {
            return Err(Error::Phase {
                name: self.name().to_owned(),
                phase: self.state.phase,
                op: "start",
                want: "created",
            });
        }
        let pidfd = self.check_alive()?.clone();
        let dir = self.dir.clone();
        let state = self.state.clone();
        self.state = blocking(move || {
            let f = open_start_fifo(&dir)?;
            take_start(&dir, f, &pidfd, state)
        })
        .await?;
        Ok(())
    }

    fn check_alive(&self) -> Result<&Arc<OwnedFd>, Error> {
        match &self.pidfd {
            Some(fd) if self.is_alive() => Ok(fd),
            _ => Err(Error::NotRunning(self.name().to_owned())),
        }
    }

    /// True while init runs.
    pub fn is_alive(&self) -> bool {
        match &self.pidfd {
            // Signal 0 through the pidfd: ESRCH once the process exited.
            Some(fd) => sys::pidfd_send_signal(fd.as_fd(), 0).is_ok() && !self.exited_zombie(),
            None => false,
        }
    }

    fn exited_zombie(&self) -> bool {
        // A zombie still accepts signal 0; /proc/PID/stat says 'Z'.
        let Some(pid) = self.state.pid else {
            return true;
        };
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) => s
                .rfind(')')
                .and_then(|i| s.get(i + 2..i + 3))
                .map(|st| st == "Z" || st == "X")
                .unwrap_or(true),
            Err(_) => true,
        }
    }

    /// Sends `signal` to init (which forwards TERM, INT, HUP, USR1, USR2
    /// and QUIT to the payload; KILL ends the whole jail).
    pub fn kill(&self, signal: i32) -> Result<(), Error> {
        let fd = self.check_alive()?;
        sys::pidfd_send_signal(fd.as_fd(), signal).map_err(Error::io(format!(
            "signal {signal} to jail {}",
            self.name()
        )))
    }

    /// Waits until init exits; returns the payload's exit record (from the
    /// status file init wrote, else from init's own exit).
    pub async fn wait(&mut self) -> Result<ExitRecord, Error> {
        self.wait_inner(true).await
    }

    /// [`Jail::wait`] for a caller that deletes the jail right after (as
    /// `berth jail run` does): phase `stopped` is not saved. Nothing is
    /// lost if the caller dies before the delete: liveness is judged from
    /// the pid and its start time, and [`recover`] removes the jail.
    pub async fn wait_before_delete(&mut self) -> Result<ExitRecord, Error> {
        self.wait_inner(false).await
    }

    /// [`Jail::wait`]; `persist` saves phase `stopped` (durably). [`run`]
    /// deletes the jail right after, and liveness is always judged from
    /// the pid and its start time, never from the phase alone, so it skips
    /// the save.
    async fn wait_inner(&mut self, persist: bool) -> Result<ExitRecord, Error> {
        let Some(fd) = self.pidfd.clone() else {
            return read_exit(&self.dir).ok_or_else(|| Error::NotRunning(self.name().to_owned()));
        };
        let dup = fd.try_clone().map_err(Error::io("dup pidfd"))?;
        let afd = sys::async_pidfd(dup).map_err(Error::io("register pidfd"))?;
        // Readable once the process has exited (pidfd_open(2)).
        let guard = afd.readable().await.map_err(Error::io("wait pidfd"))?;
        drop(guard);
        let reaped = sys::waitid_pidfd(fd.as_fd(), true).ok();
        self.state.phase = Phase::Stopped;
        if persist {
            let dir = self.dir.clone();
            let state = self.state.clone();
            let _ = blocking(move || state.save(&dir).map_err(Error::from)).await;
        }
        if let Some(rec) = read_exit(&self.dir) {
            return Ok(rec);
        }
        Ok(match reaped {
            Some(sys::Reaped::Exited(code)) => ExitRecord { code, signal: None },
            Some(sys::Reaped::Signaled(sig)) => ExitRecord {
                code: 128 + sig,
                signal: Some(sig),
            },
            _ => ExitRecord {
                code: 255,
                signal: None,
            },
        })
    }

    /// SIGTERM to init, up to `grace` for it to end, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration) -> Result<ExitRecord, Error> {
        if !self.is_alive() {
            if self.pidfd.is_some() {
                return self.wait().await;
            }
            return Err(Error::NotRunning(self.name().to_owned()));
        }
        self.kill(libc::SIGTERM)?;
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(r) => r,
            Err(_) => {
                // Init may have ended right at the deadline: ESRCH then is
                // no error, the wait below still returns its exit record.
                if let Some(fd) = &self.pidfd {
                    match sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL) {
                        Ok(()) => {}
                        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                        Err(e) => {
                            return Err(Error::io(format!("SIGKILL jail {}", self.name()))(e))
                        }
                    }
                }
                self.wait().await
            }
        }
    }

    /// Tasks the OOM killer has killed in the jail's cgroup (only that
    /// counter, cheaper than [`Jail::stats`]).
    pub async fn oom_kills(&self) -> Result<u64, Error> {
        let spec = self.state.spec.clone();
        blocking(move || {
            open_cgroup(&spec)?
                .oom_kills()
                .map_err(|source| Error::Cgroup {
                    path: spec.cgroup_path.clone(),
                    source,
                })
        })
        .await
    }

    /// Cgroup usage plus pid and phase.
    pub async fn stats(&self) -> Result<JailStats, Error> {
        let spec = self.state.spec.clone();
        let cg = blocking(move || {
            let cg = open_cgroup(&spec)?;
            cg.stats().map_err(|source| Error::Cgroup {
                path: spec.cgroup_path.clone(),
                source,
            })
        })
        .await?;
        Ok(JailStats {
            phase: if self.is_alive() {
                self.state.phase
            } else {
                Phase::Stopped
            },
            pid: self.state.pid,
            cgroup: cg,
        })
    }

    /// Stops init if it runs (SIGKILL) and removes everything of the
    /// jail: cgroup, veth, address, overlay work files, state. Idempotent.
    pub async fn delete(mut self) -> Result<(), Error> {
        if self.is_alive() {
            if let Some(fd) = &self.pidfd {
                let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), self.wait()).await;
        }
        let errs = cleanup(&self.state, &self.dir).await;
        match errs.into_iter().reduce(|a, b| a.with_cleanup(vec![b])) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    /// Adopts jail `name` after a restart: reads its state and, when init
    /// is still the same process (pid and start time), opens a pidfd.
    pub async fn adopt(state_root: &Path, name: &str) -> Result<Jail, Error> {
        let dir = jail_dir(state_root, name);
        let n = name.to_owned();
        blocking(move || {
            if !dir.join(crate::state::STATE_FILE).exists() {
                return Err(Error::NotFound(n));
            }
            let mut state = JailState::load(&dir)?;
            let pidfd = open_verified(&state).map(Arc::new);
            if pidfd.is_none() && state.phase != Phase::Creating {
                state.phase = Phase::Stopped;
            }
            Ok(Jail { dir, state, pidfd })
        })
        .await
    }

    /// Runs a command inside the running jail (its namespaces, cgroup,
    /// credentials, capabilities, no_new_privs and seccomp).
    pub async fn exec(&self, opts: ExecOptions) -> Result<ExecOutput, Error> {
        let fd = self.check_alive()?.clone();
        if opts.args.is_empty() {
            return Err(Error::Spec(crate::spec::SpecError::Invalid {
                field: "exec.args".into(),
                why: "empty: nothing to run".into(),
            }));
        }
        let spec = self.state.spec.clone();
        blocking(move || exec_blocking(&spec, &fd, opts)).await
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Makes the state directory and persists phase `creating`.
fn begin_create(dir: &Path, spec: JailSpec) -> Result<JailState, Error> {
    fs::create_dir_all(&spec.state_root)
        .map_err(Error::io(format!("mkdir {}", spec.state_root.display())))?;
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::Exists(spec.name.to_string()))
        }
        Err(e) => return Err(Error::io(format!("mkdir {}", dir.display()))(e)),
    }
    let state = JailState {
        version: STATE_VERSION,
        name: spec.name.clone(),
        vendor: spec.vendor.clone(),
        phase: Phase::Creating,
        pid: None,
        start_time: None,
        host_veth: spec
            .network
            .as_ref()
            .map(|_| host_veth(&spec.vendor, &spec.name)),
        address: None,
        spec,
        created_unix: now_unix(),
    };
    if let Err(e) = state.save(dir) {
        let _ = fs::remove_dir_all(dir);
        return Err(e.into());
    }
    Ok(state)
}

fn hierarchy(spec: &JailSpec) -> Result<cgroup::Hierarchy, Error> {
    let err = |source| Error::Cgroup {
        path: spec.cgroup_path.clone(),
        source,
    };
    detected_hierarchy()
        .and_then(|h| h.with_prefix(cgroup_parent(spec)))
        .map_err(err)
}

/// The host's cgroup layout. A one-shot command (see
/// [`set_inline_blocking`]) reads the mount table once, not at each of
/// create, stats and delete; a daemon reads it each time, as cgroup mounts
/// may change over its life.
fn detected_hierarchy() -> Result<cgroup::Hierarchy, cgroup::Error> {
    static ONCE: std::sync::OnceLock<cgroup::Hierarchy> = std::sync::OnceLock::new();
    if !INLINE_BLOCKING.load(std::sync::atomic::Ordering::Relaxed) {
        return cgroup::Hierarchy::detect();
    }
    if let Some(h) = ONCE.get() {
        return Ok(h.clone());
    }
    let h = cgroup::Hierarchy::detect()?;
    Ok(ONCE.get_or_init(|| h).clone())
}

/// The cgroup hierarchy roots jails get directories in (see
/// [`cgroup::Hierarchy::roots`]); empty when the host's layout cannot be
/// read.
pub fn cgroup_roots() -> Vec<PathBuf> {
    detected_hierarchy().map(|h| h.roots()).unwrap_or_default()
}

fn cgroup_parent(spec: &JailSpec) -> PathBuf {
    // cgroup_path is <parent>/<vendor>/<name>.
    spec.cgroup_path
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(crate::spec::DEFAULT_CGROUP_PARENT))
}

fn open_cgroup(spec: &JailSpec) -> Result<cgroup::Cgroup, Error> {
    let h = hierarchy(spec)?;
    cgroup::Cgroup::open(&h, &spec.cgroup_path).map_err(|source| Error::Cgroup {
        path: spec.cgroup_path.clone(),
        source,
    })
}

/// The device allow-list of a jail without its own: the nodes berth-init
/// provides (null, zero, full, random, urandom, tty, ptmx and the pts
/// terminals), plus every device the spec passes through.
fn limits(spec: &JailSpec) -> cgroup::Limits {
    use cgroup::{DeviceAccess, DeviceKind, DeviceRule};
    let r = &spec.resources;
    let access = |s: &str| DeviceAccess {
        read: s.contains('r'),
        write: s.contains('w'),
        mknod: s.contains('m'),
    };
    let kind = |c: char| match c {
        'c' => DeviceKind::Char,
        'b' => DeviceKind::Block,
        _ => DeviceKind::All,
    };
    let devices = if r.devices.is_empty() {
        let mut v: Vec<DeviceRule> = [
            (1, Some(3)),
            (1, Some(5)),
            (1, Some(7)),
            (1, Some(8)),
            (1, Some(9)),
            (5, Some(0)),
            (5, Some(2)),
            (136, None),
        ]
        .iter()
        .map(|&(major, minor)| DeviceRule {
            allow: true,
            kind: DeviceKind::Char,
            major: Some(major),
            minor,
            access: DeviceAccess::ALL,
        })
        .collect();
        for d in &spec.devices {
            v.push(DeviceRule {
                allow: true,
                kind: kind(d.kind),
                major: Some(d.major),
                minor: Some(d.minor),
                access: DeviceAccess::ALL,
            });
        }
        v
    } else {
        r.devices
            .iter()
            .map(|d| DeviceRule {
                allow: d.allow,
                kind: kind(d.kind),
                major: d.major,
                minor: d.minor,
                access: access(&d.access),
            })
            .collect()
    };
    cgroup::Limits {
        memory_max: r.memory_max,
        swap_off: r.swap_off,
        cpu_weight: r.cpu_weight,
        cpu_quota: r.cpu_quota.map(|q| cgroup::CpuQuota {
            quota_us: q.quota_us,
            period_us: q.period_us,
        }),
        pids_max: r.pids_max,
        devices: Some(devices),
        io_weight: r.io_weight,
    }
}

/// Opens the start FIFO for reading (without blocking): init, which opens
/// it for writing once set up, then writes its byte and goes on.
fn open_start_fifo(dir: &Path) -> Result<fs::File, Error> {
    let fifo = dir.join(FIFO_FILE);
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&fifo)
        .map_err(Error::io(format!("open {}", fifo.display())))
}

/// Waits for init's byte on the start FIFO `f` (init is then past it, on
/// its way to the payload), removes the FIFO and saves `state` as
/// `running`; returns it.
fn take_start(
    dir: &Path,
    f: fs::File,
    pidfd: &OwnedFd,
    mut state: JailState,
) -> Result<JailState, Error> {
    let fifo = dir.join(FIFO_FILE);
    // Init's pidfd too: a FIFO whose writer never came reports nothing, so
    // an init that died would cost the whole timeout.
    let mut pfd = [
        PollFd::new(f.as_fd(), PollFlags::POLLIN),
        PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
    ];
    let n = poll(&mut pfd, PollTimeout::from(10_000u16))
        .map_err(Error::nix(format!("poll {}", fifo.display())))?;
    if n == 0 {
        return Err(Error::Timeout(format!("start {}", fifo.display())));
    }
    let fifo_ready = pfd[0]
        .revents()
        .is_some_and(|r| r.contains(PollFlags::POLLIN));
    if !fifo_ready {
        return Err(Error::NotRunning(state.name.to_string()));
    }
    let mut b = [0u8; 1];
    let _ = (&f).read(&mut b);
    drop(f);
    let _ = fs::remove_file(&fifo);
    state.phase = Phase::Running;
    state.save(dir)?;
    Ok(state)
}

/// Everything of create after the state record exists.
async fn create_rest(jail: &mut Jail, start: bool) -> Result<(), Error> {
    let t0 = std::time::Instant::now();
    let spec = jail.state.spec.clone();

    // Cgroup with limits.
    let h = {
        let spec = spec.clone();
        blocking(move || create_cgroup(&spec)).await?
    };
    mark(t0, "cgroup created");

    // Files in the state directory and the init process. Init joins the
    // cgroup itself, writing "0" to the v1 `tasks` files (a thread moving
    // itself skips the kernel's global threadgroup lock, whose write side
    // waits for an RCU grace period), and is born in the v2 directory.
    let dir = jail.dir.clone();
    let spec2 = spec.clone();
    let mut spawned = blocking(move || spawn_create(&dir, &spec2, &h)).await?;
    mark(t0, "init cloned");
    jail.pidfd = Some(spawned.pidfd.clone());
    jail.state.pid = Some(spawned.pid);
    jail.state.start_time = proc_start_time(spawned.pid);
    // Pid, start time and address are persisted with phase `created`
    // below, not here: until then a dead creator is cleaned up without
    // them. Before the go byte init exits on its own (EOF on the sync
    // pipe); after it, init is in the jail's cgroup, which cleanup
    // destroys, killing it (two fsyncs less per create).

    // Id maps, then go. (Init joined its cgroup itself.)
    if let Some((u, g)) = spec.user_ns.clone() {
        let pid = spawned.pid;
        blocking(move || {
            write_map(pid, "uid_map", &u)?;
            write_map(pid, "gid_map", &g)
        })
        .await?;
    }
    // Released before its plan is built: the exec of berth-init (or, for
    // an inline init, its wait for the plan) runs meanwhile.
    let dir = jail.dir.clone();
    let spec2 = spec.clone();
    let mut spawned = blocking(move || {
        spawned.release()?;
        let plan = create_plan(&dir, &spec2)?;
        spawned.send_plan(&plan, spec2.network.is_some());
        Ok(spawned)
    })
    .await?;
    mark(t0, "init released");

    // While init execs and sets up the jail's mounts, the host side of
    // the network: address, bridge, and the veth into init's network
    // namespace, whose end init then configures itself. Nothing in the
    // jail runs before `start`, which comes after both are done.
    match create_net(jail, spawned.pid, t0).await {
        Ok(Some(net)) => spawned.send_net(&net),
        Ok(None) => spawned.close_plan(),
        Err(e) => {
            // An init that failed meanwhile (its namespace gone with it)
            // explains the network error: report its failure first; one
            // still waiting for the veth gives up on the closed pipe.
            spawned.close_plan();
            return Err(match blocking(move || spawned.wait_setup()).await {
                Err(Error::Setup(m)) if !m.contains(crate::init::NET_ABANDONED) => {
                    tracing::debug!(error = %e, "network setup failed after init's");
                    Error::Setup(m)
                }
                _ => e,
            });
        }
    }
    // Started at once: the FIFO's reader is there before init reports,
    // so init does not wait for the `created` record and a start.
    let early = if start {
        let dir = jail.dir.clone();
        Some(blocking(move || open_start_fifo(&dir)).await?)
    } else {
        None
    };
    blocking(move || spawned.wait_setup()).await?;
    mark(t0, "init set up");
    let r = match (early, &jail.pidfd) {
        (Some(f), Some(pidfd)) => {
            let (dir, pidfd) = (jail.dir.clone(), pidfd.clone());
            let state = jail.state.clone();
            blocking(move || take_start(&dir, f, &pidfd, state))
                .await
                .map(|st| jail.state = st)
        }
        _ => {
            jail.state.phase = Phase::Created;
            save(jail).await
        }
    };
    mark(t0, "created");
    r
}

/// Creates the cgroup of `spec` with its limits.
fn create_cgroup(spec: &JailSpec) -> Result<cgroup::Hierarchy, Error> {
    let h = hierarchy(spec)?;
    let err = |source| Error::Cgroup {
        path: spec.cgroup_path.clone(),
        source,
    };
    let cg = cgroup::Cgroup::create(&h, &spec.cgroup_path).map_err(err)?;
    cg.apply(&limits(spec)).map_err(err)?;
    Ok(h)
}

/// The host side of a networked jail whose init is `pid`: an address from
/// the bridge's allocator, the bridge, and the veth pair with its jail end
/// in init's network namespace; returns what init configures there.
async fn create_net(
    jail: &mut Jail,
    pid: i32,
    t0: std::time::Instant,
) -> Result<Option<NetPlan>, Error> {
    let Some(n) = jail.state.spec.network.clone() else {
        return Ok(None);
    };
    let owner = owner(&jail.state.spec);
    let n2 = n.clone();
    let addr = blocking(move || {
        let mut a = open_allocator(&n2)?;
        a.allocate(&owner).map_err(|source| Error::Net {
            what: format!("allocate address on {}", n2.bridge),
            source: Box::new(source),
        })
    })
    .await?;
    // Persisted with the pid: cleanup releases the address by owner, so
    // a crash before then loses nothing (one fsync less).
    jail.state.address = Some(addr);
    mark(t0, "address allocated");
    let c = netns::Net::connect().await.map_err(|source| Error::Net {
        what: "connect".into(),
        source: Box::new(source),
    })?;
    let b = c
        .ensure_bridge(&n.bridge, n.gateway, n.prefix_len)
        .await
        .map_err(|source| Error::Net {
            what: format!("bridge {}", n.bridge),
            source: Box::new(source),
        })?;
    mark(t0, "bridge ensured");
    if let Some(host_if) = jail.state.host_veth.clone() {
        clear_stale_veth(&c, &host_if).await?;
        // Init is our unreaped child: its pid cannot be reused meanwhile.
        c.add_veth_pair(&b, &host_if, JAIL_IF, netns::NsRef::Pid(pid), addr)
            .await
            .map_err(|source| Error::Net {
                what: format!("veth {host_if}"),
                source: Box::new(source),
            })?;
        mark(t0, "veth created");
    }
    Ok(Some(NetPlan {
        ifname: JAIL_IF.to_string(),
        addr,
        prefix_len: b.prefix_len,
        gateway: b.gateway,
    }))
}

/// How long a create waits for the kernel to remove a veth of the same
/// name left by an earlier jail of that name, before deleting it.
pub const STALE_VETH_WAIT: Duration = Duration::from_secs(2);

/// Whether link `name` exists on the host (one stat of sysfs, no netlink).
pub fn host_link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// A jail re-created under the same name (same host veth name) right
/// after the old one ended may find the old veth still there: the kernel
/// removes it asynchronously with the old network namespace. Waits up to
/// [`STALE_VETH_WAIT`] for it to go, then deletes it.
async fn clear_stale_veth(c: &netns::Net, host_if: &str) -> Result<(), Error> {
    if !host_link_exists(host_if) {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + STALE_VETH_WAIT;
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if !host_link_exists(host_if) {
            return Ok(());
        }
    }
    tracing::warn!(link = host_if, "stale veth still there; deleting it");
    c.delete_link(host_if).await.map_err(|source| Error::Net {
        what: format!("delete stale {host_if}"),
        source: Box::new(source),
    })
}

/// The address allocator of a jail's bridge.
fn open_allocator(n: &NetOptions) -> Result<netns::Allocator, Error> {
    netns::Allocator::open(&n.allocator_dir, &n.bridge, n.gateway, n.prefix_len).map_err(|source| {
        Error::Net {
            what: format!("allocator {}", n.allocator_dir.display()),
            source: Box::new(source),
        }
    })
}

fn owner(spec: &JailSpec) -> String {
    format!("{}/{}", spec.vendor, spec.name)
}

async fn save(jail: &Jail) -> Result<(), Error> {
    let dir = jail.dir.clone();
    let state = jail.state.clone();
    blocking(move || state.save(&dir).map_err(Error::from)).await
}

fn write_map(pid: i32, file: &str, maps: &[crate::spec::IdMap]) -> Result<(), Error> {
    let body: String = maps
        .iter()
        .map(|m| format!("{} {} {}\n", m.inside, m.outside, m.count))
        .collect();
    let path = format!("/proc/{pid}/{file}");
    fs::write(&path, body.as_bytes()).map_err(Error::io(format!("write {path}")))
}

/// The berth-init binary: the option, beside the current executable, then
/// `$BERTH_INIT`.
pub fn find_init(opt: Option<&Path>) -> Result<PathBuf, Error> {
    let mut tried = Vec::new();
    if let Some(p) = opt {
        if p.is_file() {
            return Ok(p.to_owned());
        }
        tried.push(p.to_owned());
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(d) = exe.parent() {
            for cand in [d.join("berth-init"), d.join("../berth-init")] {
                if cand.is_file() {
                    return Ok(cand);
                }
                tried.push(cand);
            }
        }
    }
    if let Some(p) = std::env::var_os("BERTH_INIT") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        tried.push(p);
    }
    Err(Error::InitNotFound { tried })
}

/// Moves `fd` to a number >= FD_SOURCE_MIN (close-on-exec).
fn high(fd: impl AsFd) -> Result<OwnedFd, Error> {
    let n = fcntl(fd.as_fd(), FcntlArg::F_DUPFD_CLOEXEC(sys::FD_SOURCE_MIN))
        .map_err(Error::nix("dup fd"))?;
    Ok(sys::own_fd(n))
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(Error::nix("pipe"))
}

/// An init process cloned but not yet released.
struct Spawned {
    pid: i32,
    pidfd: Arc<OwnedFd>,
    sync_w: Option<OwnedFd>,
    plan_w: Option<OwnedFd>,
    report_r: Option<OwnedFd>,
}

impl Spawned {
    /// Releases init, sends the plan and waits for `ok` or an error.
    fn go(&mut self, plan: &[u8]) -> Result<(), Error> {
        self.release()?;
        self.send_plan(plan, false);
        self.wait_setup()
    }

    /// Releases init (the go byte): it execs berth-init, which waits for
    /// the plan from [`Spawned::send_plan`].
    fn release(&mut self) -> Result<(), Error> {
        let sync = self.sync_w.take();
        let mut released = Ok(());
        if let Some(s) = &sync {
            released = nix::unistd::write(s, b"g").map(|_| ());
        }
        drop(sync);
        if let Err(e) = released {
            // The child died before the go byte: its report says why.
            return match self.report_r.take() {
                Some(r) => {
                    parse_report(&read_report(r, SETUP_TIMEOUT)?)?;
                    Err(Error::nix("release init")(e))
                }
                None => Err(Error::nix("release init")(e)),
            };
        }
        Ok(())
    }

    /// Sends the (framed) plan; init then sets the jail up on its own, and
    /// [`Spawned::wait_setup`] collects its report. The plan pipe closes
    /// unless `more` (a networked jail: [`Spawned::send_net`] follows).
    fn send_plan(&mut self, plan: &[u8], more: bool) {
        if let Some(p) = self.plan_w.take() {
            let mut f = fs::File::from(p);
            // A failed write means init died; its report says why.
            if f.write_all(plan).is_ok() && more {
                self.plan_w = Some(f.into());
            }
        }
    }

    /// Sends the jail end of the veth and closes the plan pipe; init
    /// configures it before it reports.
    fn send_net(&mut self, net: &NetPlan) {
        if let Some(p) = self.plan_w.take() {
            let _ = fs::File::from(p).write_all(&net.encode());
        }
    }

    /// Closes the plan pipe without the network: an init waiting for it
    /// gives up.
    fn close_plan(&mut self) {
        self.plan_w = None;
    }

    /// Waits for init's report: `ok` or the error of its setup.
    fn wait_setup(&mut self) -> Result<(), Error> {
        let Some(r) = self.report_r.take() else {
            return Ok(());
        };
        let report = read_report(r, SETUP_TIMEOUT)?;
        parse_report(&report)
    }
}

fn read_report(r: OwnedFd, timeout: Duration) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + timeout;
    let mut f = fs::File::from(r);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout("waiting for berth-init to report".into()));
        }
        let ms = left.as_millis().min(u128::from(u16::MAX)) as u16;
        let mut pfd = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        match poll(&mut pfd, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::nix("poll report pipe")(e)),
        }
        let mut buf = [0u8; 4096];
        let n = f.read(&mut buf).map_err(Error::io("read report pipe"))?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        let tagged = matches!(out.first(), Some(&b'X') | Some(&sys::JOIN_FAILED));
        if out.ends_with(b"ok\n") || tagged && out.len() >= 5 {
            return Ok(out);
        }
    }
}

fn parse_report(r: &[u8]) -> Result<(), Error> {
    if matches!(r.first(), Some(&b'X') | Some(&sys::JOIN_FAILED)) && r.len() >= 5 {
        let errno = i32::from_ne_bytes([r[1], r[2], r[3], r[4]]);
        let what = if r[0] == b'X' {
            "exec berth-init"
        } else {
            "join the jail's cgroup"
        };
        return Err(Error::Setup(format!(
            "{what}: {}",
            std::io::Error::from_raw_os_error(errno)
        )));
    }
    let s = String::from_utf8_lossy(r);
    if s.starts_with("ok\n") {
        return Ok(());
    }
    if let Some(msg) = s.strip_prefix("error ") {
        return Err(Error::Setup(msg.trim_end().to_owned()));
    }
    Err(Error::Setup(format!(
        "berth-init exited without a report ({:?})",
        s.trim_end()
    )))
}

struct ChildFds {
    stdio: [OwnedFd; 3],
    extra: OwnedFd,
}

/// How a new child joins its jail's cgroup without being moved into it
/// from outside (see [`sys::ChildExec::join_tasks`]): it writes itself to
/// the v1 hierarchies' `tasks` files and is born in the v2 directory.
struct CgroupJoin {
    /// `tasks` files of the v1 hierarchies, open for writing.
    tasks: Vec<OwnedFd>,
    /// The cgroup v2 directory: an fd for `CLONE_INTO_CGROUP`, and its path
    /// for the fallback of moving the child from here.
    v2: Option<(OwnedFd, PathBuf)>,
}

/// Opens what a child needs to join the cgroup of `spec` (in `h`, its
/// [`hierarchy`]).
fn cgroup_join(spec: &JailSpec, h: &cgroup::Hierarchy) -> Result<CgroupJoin, Error> {
    let cg = cgroup::Cgroup::open(h, &spec.cgroup_path).map_err(|source| Error::Cgroup {
        path: spec.cgroup_path.clone(),
        source,
    })?;
    let unified = h.unified_mount().map(Path::to_path_buf);
    let mut join = CgroupJoin {
        tasks: Vec::new(),
        v2: None,
    };
    for d in cg.dirs() {
        if unified.as_deref().is_some_and(|u| d.starts_with(u)) {
            let f = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open(&d)
                .map_err(Error::io(format!("open {}", d.display())))?;
            join.v2 = Some((high(&f)?, d));
        } else {
            let p = d.join("tasks");
            let f = fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&p)
                .map_err(Error::io(format!("open {}", p.display())))?;
            join.tasks.push(high(&f)?);
        }
    }
    Ok(join)
}

/// Clones berth-init with `ns_flags`, fds 0-2 and 5 from `fds`, into the
/// cgroup `join` opens. `inline`: the child runs init's code itself
/// instead of exec'ing `init` (see [`sys::ChildExec::inline_main`]).
fn spawn_init(
    init: &Path,
    ns_flags: u64,
    fds: ChildFds,
    join: &CgroupJoin,
    inline: bool,
) -> Result<Spawned, Error> {
    let exe = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(init)
        .map_err(Error::io(format!("open {}", init.display())))?;
    let exe = high(&exe)?;
    let (plan_r, plan_w) = pipe()?;
    let (report_r, report_w) = pipe()?;
    let (sync_r, sync_w) = pipe()?;
    let plan_r = high(plan_r)?;
    let report_w = high(report_w)?;
    let sync_r = high(sync_r)?;
    let stdio: Vec<OwnedFd> = fds.stdio.into_iter().map(high).collect::<Result<_, _>>()?;
    let extra = high(fds.extra)?;
    let map: Vec<(RawFd, RawFd)> = vec![
        (stdio[0].as_raw_fd(), 0),
        (stdio[1].as_raw_fd(), 1),
        (stdio[2].as_raw_fd(), 2),
        (plan_r.as_raw_fd(), crate::plan::FD_PLAN),
        (report_w.as_raw_fd(), crate::plan::FD_REPORT),
        (extra.as_raw_fd(), crate::plan::FD_EXTRA),
    ];
    let close_first = [plan_w.as_raw_fd(), report_r.as_raw_fd(), sync_w.as_raw_fd()];
    let join_tasks: Vec<RawFd> = join.tasks.iter().map(AsRawFd::as_raw_fd).collect();
    let arg0 = c"berth-init";
    let argv: [*const libc::c_char; 2] = [arg0.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let exec = sys::ChildExec {
        exe: exe.as_fd(),
        argv: &argv,
        envp: &envp,
        sync_read: sync_r.as_raw_fd(),
        close_first: &close_first,
        fds: &map,
        err_fd: report_w.as_raw_fd(),
        become_root: ns_flags & libc::CLONE_NEWUSER as u64 != 0,
        join_tasks: &join_tasks,
        inline_main: inline.then_some(crate::init::main as fn() -> i32),
    };
    let into = join.v2.as_ref().map(|(fd, _)| fd.as_fd());
    let child = sys::clone_exec(ns_flags, into, &exec)
        .map_err(Error::io(format!("clone {}", init.display())))?;
    if let (Some((_, dir)), false) = (&join.v2, child.in_cgroup) {
        // A kernel without CLONE_INTO_CGROUP: move it from here.
        let procs = dir.join("cgroup.procs");
        if let Err(e) = fs::write(&procs, child.pid.to_string()) {
            let _ = sys::pidfd_send_signal(child.pidfd.as_fd(), libc::SIGKILL);
            let _ = sys::waitid_pidfd(child.pidfd.as_fd(), false);
            return Err(Error::io(format!("write {}", procs.display()))(e));
        }
    }
    Ok(Spawned {
        pid: child.pid,
        pidfd: Arc::new(child.pidfd),
        sync_w: Some(sync_w),
        plan_w: Some(plan_w),
        report_r: Some(report_r),
    })
}

fn dev_null(write: bool) -> Result<OwnedFd, Error> {
    let f = fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map_err(Error::io("open /dev/null"))?;
    Ok(f.into())
}

fn dup_std(n: RawFd) -> Result<OwnedFd, Error> {
    let fd = fcntl(
        sys::borrow_fd(n),
        FcntlArg::F_DUPFD_CLOEXEC(sys::FD_SOURCE_MIN),
    )
    .map_err(Error::nix(format!("dup fd {n}")))?;
    Ok(sys::own_fd(fd))
}

fn process_plan(spec: &JailSpec) -> Result<ProcessPlan, Error> {
    let p = &spec.process;
    let arch = crate::seccomp::native_arch().ok_or_else(|| {
        Error::Seccomp(crate::seccomp::SeccompError::Compile(
            "no syscall table for this architecture".into(),
        ))
    })?;
    Ok(ProcessPlan {
        args: p.args.clone(),
        env: p.env.clone(),
        cwd: p.cwd.clone(),
        uid: p.uid,
        gid: p.gid,
        groups: p.additional_gids.clone(),
        caps: p.caps,
        rlimits: p.rlimits.clone(),
        no_new_privs: p.no_new_privs,
        seccomp: crate::seccomp::programs(spec.seccomp.as_ref(), arch)?,
    })
}

fn ns_flags(userns: bool) -> u64 {
    let mut f = (libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET) as u64;
    if userns {
        f |= libc::CLONE_NEWUSER as u64;
    }
    f
}

/// Whether this process has one thread (`/proc/self/task`).
fn single_threaded() -> bool {
    fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

/// Host uid/gid of root inside the jail's user namespace.
fn mapped_root(spec: &JailSpec) -> Option<(u32, u32)> {
    let (u, g) = spec.user_ns.as_ref()?;
    let f = |m: &[crate::spec::IdMap]| m.iter().find(|m| m.inside == 0).map(|m| m.outside);
    Some((f(u)?, f(g)?))
}

fn chown(path: &Path, ids: Option<(u32, u32)>) -> Result<(), Error> {
    if let Some((u, g)) = ids {
        std::os::unix::fs::chown(path, Some(u), Some(g))
            .map_err(Error::io(format!("chown {}", path.display())))?;
    }
    Ok(())
}

fn spawn_create(dir: &Path, spec: &JailSpec, h: &cgroup::Hierarchy) -> Result<Spawned, Error> {
    let init = find_init(spec.init_path.as_deref())?;
    let owner = mapped_root(spec);
    let fifo = dir.join(FIFO_FILE);
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(Error::nix(format!("mkfifo {}", fifo.display())))?;
    let root = dir.join(ROOT_DIR);
    fs::create_dir_all(&root).map_err(Error::io(format!("mkdir {}", root.display())))?;
    // In a user namespace, init is root only inside it: let it reach its
    // own state files and the writable overlay layer.
    chown(dir, owner)?;
    chown(&fifo, owner)?;
    chown(&root, owner)?;
    if let RootfsOptions::Overlay { upper, work, .. } = &spec.rootfs {
        chown(upper, owner)?;
        chown(work, owner)?;
    }
    if owner.is_some() {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    }
    let status_path = dir.join(STATUS_FILE);
    let status = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&status_path)
        .map_err(Error::io(format!("create {}", status_path.display())))?;
    let stdio = match spec.console {
        Console::LogFile => {
            let p = dir.join(CONSOLE_FILE);
            let log = fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o640)
                .open(&p)
                .map_err(Error::io(format!("create {}", p.display())))?;
            let log2 = log.try_clone().map_err(Error::io("dup console log"))?;
            [dev_null(false)?, log.into(), log2.into()]
        }
        Console::Null => [dev_null(false)?, dev_null(true)?, dev_null(true)?],
        Console::Inherit => [dup_std(0)?, dup_std(1)?, dup_std(2)?],
    };
    let join = cgroup_join(spec, h)?;
    spawn_init(
        &init,
        ns_flags(spec.user_ns.is_some()),
        ChildFds {
            stdio,
            extra: status.into(),
        },
        &join,
        // In a user namespace init needs the exec: it is what gives the
        // namespace's root its capabilities after the switch to uid 0.
        spec.user_ns.is_none()
            && INLINE_BLOCKING.load(std::sync::atomic::Ordering::Relaxed)
            && single_threaded(),
    )
}

/// The encoded create plan of `spec` for the init of state dir `dir`
/// (seccomp filters compiled here: init carries no compiler).
fn create_plan(dir: &Path, spec: &JailSpec) -> Result<Vec<u8>, Error> {
    let plan = InitPlan {
        version: PLAN_VERSION,
        mode: Mode::Create(Box::new(CreatePlan {
            rootfs: match &spec.rootfs {
                RootfsOptions::Bind { path } => RootfsPlan::Bind(path.clone()),
                RootfsOptions::Overlay {
                    lowers,
                    upper,
                    work,
                } => RootfsPlan::Overlay(lowers.clone(), upper.clone(), work.clone()),
            },
            root_mount: dir.join(ROOT_DIR),
            readonly_root: spec.readonly_root,
            mounts: spec.mounts.clone(),
            devices: spec.devices.clone(),
            masked_paths: spec.masked_paths.clone(),
            readonly_paths: spec.readonly_paths.clone(),
            hostname: spec.hostname.clone(),
            fifo: dir.join(FIFO_FILE),
            userns: spec.user_ns.is_some(),
            network: spec.network.is_some(),
            process: process_plan(spec)?,
        })),
    };
    Ok(plan.framed())
}

fn exec_blocking(
    spec: &JailSpec,
    jail_pidfd: &Arc<OwnedFd>,
    opts: ExecOptions,
) -> Result<ExecOutput, Error> {
    let init = find_init(spec.init_path.as_deref())?;
    let mut process = process_plan(spec)?;
    process.args = opts.args;
    if let Some(env) = opts.env {
        process.env = env;
    }
    if !process.env.iter().any(|e| e.starts_with("PATH=")) {
        process.env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if let Some(cwd) = opts.cwd {
        process.cwd = cwd;
    }
    let (out_pipe, err_pipe, stdio) = match opts.stdio {
        ExecStdio::Capture => {
            let (or, ow) = pipe()?;
            let (er, ew) = pipe()?;
            (Some(or), Some(er), [dev_null(false)?, ow, ew])
        }
        ExecStdio::Inherit => (None, None, [dup_std(0)?, dup_std(1)?, dup_std(2)?]),
    };
    let pidfd = jail_pidfd.try_clone().map_err(Error::io("dup pidfd"))?;
    let plan = InitPlan {
        version: PLAN_VERSION,
        mode: Mode::Exec(ExecPlan {
            userns: spec.user_ns.is_some(),
            process,
        }),
    };
    let join = cgroup_join(spec, &hierarchy(spec)?)?;
    let mut s = spawn_init(
        &init,
        0,
        ChildFds {
            stdio,
            extra: pidfd,
        },
        &join,
        false,
    )?;
    let kill = |s: &Spawned| {
        let _ = sys::pidfd_send_signal(s.pidfd.as_fd(), libc::SIGKILL);
        let _ = sys::waitid_pidfd(s.pidfd.as_fd(), false);
    };
    if let Err(e) = s.go(&plan.framed()) {
        kill(&s);
        return Err(e);
    }
    let (stdout, stderr) = match (out_pipe, err_pipe) {
        (Some(o), Some(e)) => match drain(o, e) {
            Ok(out) => out,
            Err(err) => {
                // Leave no helper (or zombie) behind the error.
                kill(&s);
                return Err(err);
            }
        },
        _ => (Vec::new(), Vec::new()),
    };
    let code = match sys::waitid_pidfd(s.pidfd.as_fd(), false).map_err(Error::io("wait exec"))? {
        sys::Reaped::Exited(c) => c,
        sys::Reaped::Signaled(sig) => 128 + sig,
        sys::Reaped::Running => 255,
    };
    Ok(ExecOutput {
        code,
        stdout,
        stderr,
    })
}

/// Reads two pipes to EOF without deadlocking on either.
fn drain(o: OwnedFd, e: OwnedFd) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let mut files = [Some(fs::File::from(o)), Some(fs::File::from(e))];
    let mut bufs = [Vec::new(), Vec::new()];
    while files.iter().any(Option::is_some) {
        let mut idx = Vec::new();
        let mut pfds = Vec::new();
        for (i, f) in files.iter().enumerate() {
            if let Some(f) = f {
                idx.push(i);
                pfds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
            }
        }
        match poll(&mut pfds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::nix("poll exec output")(e)),
        }
        let ready: Vec<usize> = pfds
            .iter()
            .zip(&idx)
            .filter(|(p, _)| p.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, &i)| i)
            .collect();
        drop(pfds);
        for i in ready {
            let mut buf = [0u8; 8192];
            let n = match files[i].as_mut().map(|f| f.read(&mut buf)) {
                Some(Ok(n)) => n,
                _ => 0,
            };
            if n == 0 {
                files[i] = None;
            } else {
                bufs[i].extend_from_slice(&buf[..n]);
            }
        }
    }
    let [a, b] = bufs;
    Ok((a, b))
}

/// A pidfd of the recorded init if it is still the same process.
fn open_verified(state: &JailState) -> Option<OwnedFd> {
    let pid = state.pid?;
    let fd = sys::pidfd_open(pid).ok()?;
    // Check the start time after opening the pidfd: if it matches now, the
    // pidfd refers to the recorded process (pid reuse would change it).
    let st = proc_start_time(pid)?;
    if Some(st) != state.start_time {
        return None;
    }
    Some(fd)
}

/// Removes every object a jail may own. Idempotent: missing objects are
/// fine. Returns the failures (empty when all is gone).
async fn cleanup(state: &JailState, dir: &Path) -> Vec<Error> {
    let t0 = std::time::Instant::now();
    let mut errs = Vec::new();
    let spec = state.spec.clone();
    // Cgroup (kills whatever still runs in it).
    let r = {
        let spec = spec.clone();
        blocking(move || {
            let h = hierarchy(&spec)?;
            cgroup::Cgroup::destroy_at(&h, &spec.cgroup_path).map_err(|source| Error::Cgroup {
                path: spec.cgroup_path.clone(),
                source,
            })
        })
        .await
    };
    if let Err(e) = r {
        errs.push(e);
    }
    mark(t0, "cgroup destroyed");
    // The veth is not deleted here: it lives in the jail's network
    // namespace, which the kernel tears down (deleting both ends) once the
    // last process in it is gone, i.e. after the cgroup destroy above.
    // That teardown is asynchronous and slow (tens of ms: it waits for RCU
    // grace periods); deleting the host end ourselves would wait for it.
    // So the address is parked until the host end is gone, and a create
    // that finds a stale end of the same name waits for it (see
    // `clear_stale_veth`).
    if let Some(n) = &spec.network {
        let n = n.clone();
        let owner = owner(&spec);
        let host_if = state.host_veth.clone();
        let r = blocking(move || {
            let mut a = open_allocator(&n)?;
            match &host_if {
                Some(link) => a.release_after_link(&owner, link),
                None => a.release(&owner),
            }
            .map_err(|source| Error::Net {
                what: format!("release address on {}", n.bridge),
                source: Box::new(source),
            })
        })
        .await;
        if let Err(e) = r {
            errs.push(e);
        }
        mark(t0, "address released");
    }
    // Overlay work files (the kernel's `work/work`, mode 000) and the
    // state directory. Mounts live only in the jail's mount namespace and
    // went with it.
    let dir = dir.to_owned();
    let r = blocking(move || {
        if let RootfsOptions::Overlay { work, .. } = &spec.rootfs {
            if let Ok(rd) = fs::read_dir(work) {
                for e in rd.flatten() {
                    let p = e.path();
                    let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o700));
                    let r = if p.is_dir() {
                        fs::remove_dir_all(&p)
                    } else {
                        fs::remove_file(&p)
                    };
                    r.map_err(Error::io(format!("remove {}", p.display())))?;
                }
            }
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", dir.display()))(e)),
        }
    })
    .await;
    if let Err(e) = r {
        errs.push(e);
    }
    mark(t0, "state removed");
    errs
}

/// Every jail under `state_root`.
pub async fn list(state_root: &Path) -> Result<Vec<JailInfo>, Error> {
    list_where(state_root, false).await
}

/// The jails of `state_root` whose create never finished (phase
/// `creating`): what a recovery removes. Unlike [`list`] it checks no
/// other jail's process, so its cost does not grow with the running jails
/// beyond reading their records.
pub async fn list_creating(state_root: &Path) -> Result<Vec<JailInfo>, Error> {
    list_where(state_root, true).await
}

async fn list_where(state_root: &Path, only_creating: bool) -> Result<Vec<JailInfo>, Error> {
    let root = state_root.to_owned();
    blocking(move || {
        let mut out = Vec::new();
        for name in list_names(&root)? {
            let dir = jail_dir(&root, &name);
            if only_creating && !matches!(JailState::load_phase(&dir), Ok(Phase::Creating)) {
                continue;
            }
            let Ok(st) = JailState::load(&dir) else {
                continue;
            };
            let alive = open_verified(&st).is_some();
            out.push(JailInfo {
                name,
                vendor: st.vendor.to_string(),
                phase: if alive || st.phase == Phase::Creating {
                    st.phase
                } else {
                    Phase::Stopped
                },
                pid: st.pid,
                alive,
                address: st.address,
            });
        }
        Ok(out)
    })
    .await
}

/// Create, start, wait, delete: a one-shot jail. Returns the payload's
/// exit record.
pub async fn run(spec: JailSpec) -> Result<ExitRecord, Error> {
    let mut jail = Jail::create_started(spec).await?;
    let res = jail.wait_inner(false).await;
    let del = jail.delete().await;
    match (res, del) {
        (Ok(r), Ok(())) => Ok(r),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(d)) => Err(e.with_cleanup(vec![d])),
    }
}

/// Removes the leftovers of jails whose init is gone or whose create never
/// finished (a creator killed mid-create): cgroup, veth, address, state.
/// Jails whose init still runs are kept. Call at startup, before creating
/// jails (a create in progress looks like an abandoned one). Returns the
/// names removed.
pub async fn recover(state_root: &Path) -> Result<Vec<String>, Error> {
    let root = state_root.to_owned();
    let names = {
        let root = root.clone();
        blocking(move || list_names(&root).map_err(Error::from)).await?
    };
    let mut removed = Vec::new();
    let mut errs = Vec::new();
    for name in names {
        let dir = jail_dir(&root, &name);
        let loaded = {
            let dir = dir.clone();
            blocking(move || Ok(JailState::load(&dir))).await?
        };
        match loaded {
            Ok(st) => {
                let alive = open_verified(&st).is_some();
                if alive && st.phase != Phase::Creating {
                    continue;
                }
                if alive {
                    if let Some(fd) = open_verified(&st) {
                        let _ = sys::pidfd_send_signal(fd.as_fd(), libc::SIGKILL);
                    }
                }
                let e = cleanup(&st, &dir).await;
                if e.is_empty() {
                    removed.push(name);
                } else {
                    errs.extend(e);
                }
            }
            Err(_) => {
                // No readable record: create writes it before making any
                // kernel object, so there is nothing but the directory.
                match fs::remove_dir_all(&dir) {
                    Ok(()) => removed.push(name),
                    Err(e) => errs.push(Error::io(format!("remove {}", dir.display()))(e)),
                }
            }
        }
    }
    match errs.into_iter().reduce(|a, b| a.with_cleanup(vec![b])) {
        None => Ok(removed),
        Some(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_parsing() {
        assert!(parse_report(b"ok\n").is_ok());
        assert_eq!(
            parse_report(b"error mount overlay on /x: EINVAL: Invalid argument\n")
                .unwrap_err()
                .to_string(),
            "setup failed: mount overlay on /x: EINVAL: Invalid argument"
        );
        let mut x = vec![b'X'];
        x.extend_from_slice(&libc::ENOENT.to_ne_bytes());
        assert_eq!(
            parse_report(&x).unwrap_err().to_string(),
            "setup failed: exec berth-init: No such file or directory (os error 2)"
        );
        assert_eq!(
            parse_report(b"").unwrap_err().to_string(),
            "setup failed: berth-init exited without a report (\"\")"
        );
    }

    #[test]
    fn find_init_reports_what_it_tried() {
        let e = find_init(Some(Path::new("/nonexistent/berth-init"))).map(|_| ());
        if let Err(Error::InitNotFound { tried }) = e {
            assert_eq!(tried[0], PathBuf::from("/nonexistent/berth-init"));
        }
    }

    #[test]
    fn cgroup_parent_is_two_up() {
        let oci = crate::oci::spec(
            crate::oci::root("/r", false),
            crate::oci::process(vec!["/bin/true".into()], Vec::new(), "/", 0, 0),
        );
        let spec = JailSpec::from_oci(
            &oci,
            &crate::spec::JailOptions {
                name: "n".into(),
                vendor: "v".into(),
                cgroup_parent: Some("berth-test/x".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(cgroup_parent(&spec), PathBuf::from("berth-test/x"));
        let l = limits(&spec);
        assert_eq!(l.devices.as_ref().unwrap().len(), 8);
    }
}

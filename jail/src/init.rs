//! The runtime of `berth-init`: the code that runs inside a jail.
//!
//! `berth-init` is a fresh, single-threaded process (the library execs it
//! from a raw clone child), so ordinary Rust is fine here. Create mode:
//! read the plan, set up the jail (cgroup namespace, mounts, rootfs, /proc,
//! /sys, /dev, pivot_root, masked and read-only paths, hostname), for a
//! networked jail wait for its veth and configure the jail's end, report
//! `ok`, block on the start FIFO, then fork the payload and exec the
//! reaper (`src/reaper.c`), which stays PID 1: it forwards signals to the
//! payload, reaps every zombie, records the payload's exit status and exits
//! with it. Where the reaper cannot be exec'd, init does that itself.
//! Exec mode: enter the jail's namespaces through a pidfd, fork (to land in
//! its pid namespace), run one command and relay its exit.
//!
//! Every failure is reported as `error <step> <path>: <cause>` on the
//! report pipe, which the parent turns into a
//! [`crate::Error::Setup`] message.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::stat::{mkdirat, mknodat, Mode as FileMode, SFlag};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};

use crate::plan::{
    CreatePlan, ExecPlan, InitPlan, Mode, NetPlan, ProcessPlan, RootfsPlan, FD_EXTRA, FD_PLAN,
    FD_REPORT, MAX_NET_PLAN, MAX_PLAN,
};
use crate::spec::DEFAULT_PATH;
use crate::state::ExitRecord;
use crate::sys;

/// Signals init forwards to the payload.
pub const FORWARDED: [i32; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGQUIT,
];

/// A setup step that failed.
#[derive(Debug)]
pub struct StepError(pub String);

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn step<T, E: std::fmt::Display>(
    r: Result<T, E>,
    what: impl FnOnce() -> String,
) -> Result<T, StepError> {
    r.map_err(|e| StepError(format!("{}: {e}", what())))
}

/// Entry point of the `berth-init` binary; returns the process exit code.
pub fn main() -> i32 {
    let mut report = std::fs::File::from(sys::own_fd(FD_REPORT));
    let mut plan_pipe = std::fs::File::from(sys::own_fd(FD_PLAN));
    let plan = match read_plan(&mut plan_pipe) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(report, "error {e}");
            return 125;
        }
    };
    match plan.mode {
        Mode::Create(c) => run_create(*c, plan_pipe, report),
        Mode::Exec(x) => {
            drop(plan_pipe);
            run_exec(x, report)
        }
    }
}

/// The plan: its length (four bytes, little endian), then its JSON.
fn read_plan(f: &mut fs::File) -> Result<InitPlan, StepError> {
    let mut len = [0u8; 4];
    step(f.read_exact(&mut len), || "read plan length".into())?;
    let len = u64::from(u32::from_le_bytes(len));
    if len > MAX_PLAN {
        return Err(StepError(format!(
            "read plan: {len} bytes, more than {MAX_PLAN}"
        )));
    }
    let mut buf = Vec::new();
    step(f.take(len).read_to_end(&mut buf), || "read plan".into())?;
    if buf.len() as u64 != len {
        return Err(StepError(format!(
            "read plan: {} of {len} bytes before the pipe closed",
            buf.len()
        )));
    }
    InitPlan::decode(&buf).map_err(StepError)
}

/// Init's report when the parent closed the plan pipe without sending the
/// network (its own network setup failed, and it says why).
pub(crate) const NET_ABANDONED: &str = "network: the plan pipe closed before the veth came";

/// The jail end of the veth, once the parent has created the pair: the
/// rest of the plan pipe. EOF without one means the parent gave up.
fn configure_network(plan_pipe: fs::File) -> Result<(), StepError> {
    let mut buf = Vec::new();
    step(plan_pipe.take(MAX_NET_PLAN).read_to_end(&mut buf), || {
        "read network plan".into()
    })?;
    if buf.is_empty() {
        return Err(StepError(NET_ABANDONED.into()));
    }
    let n = NetPlan::decode(&buf).map_err(StepError)?;
    step(
        netns::configure_current(&n.ifname, n.addr, n.prefix_len, n.gateway),
        || "configure network".into(),
    )
}

fn run_create(plan: CreatePlan, plan_pipe: fs::File, mut report: fs::File) -> i32 {
    // Lead a session of its own: a signal aimed at the creator's process
    // group (Ctrl-C in a terminal, `kill -- -PGID` of the agent) must not
    // reach the jail. `berth jail run` forwards the signals it gets itself.
    let _ = nix::unistd::setsid();
    let status = fs::File::from(sys::own_fd(FD_EXTRA));
    // The payload must not inherit (and forge) its own exit record.
    if let Err(e) = nix::fcntl::fcntl(
        &status,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    ) {
        let _ = writeln!(report, "error close-on-exec status fd: {e}");
        return 125;
    }
    let fifo = match setup(&plan) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(report, "error {e}");
            return 125;
        }
    };
    // Last: the parent creates the veth while init sets up its mounts,
    // and both take the kernel's rtnl lock.
    let net = if plan.network {
        configure_network(plan_pipe)
    } else {
        drop(plan_pipe);
        Ok(())
    };
    if let Err(e) = net {
        let _ = writeln!(report, "error {e}");
        return 125;
    }
    let _ = report.write_all(b"ok\n");
    drop(report);

    // Block until `start` opens the FIFO for reading (runc's exec.fifo).
    let path = format!("/proc/self/fd/{}", fifo.as_raw_fd());
    match fs::OpenOptions::new().write(true).open(&path) {
        Ok(mut f) => {
            let _ = f.write_all(b"0");
        }
        Err(_) => return 125,
    }
    drop(fifo);

    let rec = supervise(&plan.process, &status);
    let mut status = status;
    let _ = status.write_all(&serde_json::to_vec(&rec).unwrap_or_default());
    if !on_tmpfs(&status) {
        let _ = status.sync_all();
    }
    rec.code
}

/// Whether the status file is on tmpfs. The exit record is made durable
/// unless it is (a power cut takes a tmpfs anyway).
fn on_tmpfs(status: &fs::File) -> bool {
    nix::sys::statfs::fstatfs(status)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// The reaper PID 1 becomes once the payload runs: `src/reaper.c`, a
/// static executable of about 1 KiB that `build.rs` compiles for the
/// target. Empty for an architecture it has no system calls for.
static REAPER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth-reaper"));

/// Replaces this process with the reaper, which from here on forwards
/// signals to `child`, reaps zombies and writes the exit record to
/// `status` exactly as [`supervise`] and [`run_create`] do. What the jail
/// keeps is then a page of code and a page of stack, instead of this
/// process's libc, heap and page tables (about 130 KiB per jail).
///
/// execve(2) keeps what the job needs: the pid (PID 1 of the jail, so the
/// host's pidfd and recorded start time still name it), the session, the
/// children, the signal mask and pending signals (init blocked the
/// forwarded signals and SIGCHLD before the fork, so none is lost across
/// the exec), and fds without close-on-exec: stdio and, cleared below,
/// the status fd (the payload was forked while it still closed on exec).
/// Returns only when the exec could not be done (no memfd, an executable
/// memfd refused by `vm.memfd_noexec`, no reaper for this architecture);
/// init then supervises the payload itself.
fn become_reaper(child: Pid, status: &fs::File) {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    if REAPER.is_empty() {
        return;
    }
    let Ok(image) = sys::sealed_exec_memfd(c"berth-init", REAPER) else {
        return;
    };
    let sync = if on_tmpfs(status) { c"0" } else { c"1" };
    let (Ok(pid), Ok(fd)) = (
        CString::new(child.as_raw().to_string()),
        CString::new(status.as_raw_fd().to_string()),
    ) else {
        return;
    };
    if fcntl(status, FcntlArg::F_SETFD(FdFlag::empty())).is_err() {
        return;
    }
    let argv = [c"berth-init", pid.as_c_str(), fd.as_c_str(), sync];
    let _ = sys::execveat_fd(image.as_fd(), &argv, &[]);
    let _ = fcntl(status, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
}

/// The signals the payload gets back at their default: those init
/// forwards and SIGCHLD (`all`), and SIGPIPE, which the Rust runtime
/// ignores in init and an exec would pass on as ignored (a payload like
/// `yes | head` would then loop on EPIPE instead of ending).
fn payload_signals(all: &[i32]) -> Vec<i32> {
    let mut v = all.to_vec();
    v.push(libc::SIGPIPE);
    v
}

/// Starts the process `p` (see [`sys::spawn_shared`]) with the signals
/// init took over (`all`) back at their defaults; returns its pid.
fn spawn_payload(p: &ProcessPlan, all: &[i32]) -> std::io::Result<i32> {
    sys::spawn_shared(&mut || {
        let _ = sys::reset_signals(&payload_signals(all));
        let e = exec_process(p);
        let _ = writeln!(std::io::stderr(), "berth-init: {e}");
        127
    })
}

/// Forks the payload, then becomes the reaper; where that cannot be done,
/// forwards signals and reaps zombies itself and returns how the payload
/// ended.
fn supervise(p: &ProcessPlan, status: &fs::File) -> ExitRecord {
    let mut all = FORWARDED.to_vec();
    all.push(libc::SIGCHLD);
    if sys::install_forwarding(&all).is_err() {
        return ExitRecord {
            code: 125,
            signal: None,
        };
    }
    let child = match spawn_payload(p, &all) {
        Ok(pid) => Pid::from_raw(pid),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "berth-init: fork payload: {e}");
            return ExitRecord {
                code: 125,
                signal: None,
            };
        }
    };
    become_reaper(child, status);
    loop {
        let sig = match sys::wait_signal(&all) {
            Ok(s) => s,
            Err(_) => continue,
        };
        if sig != libc::SIGCHLD {
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::try_from(sig).ok());
            continue;
        }
        // Reap every zombie; stop when the payload is among them.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                    return ExitRecord { code, signal: None };
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                    return ExitRecord {
                        code: 128 + sig as i32,
                        signal: Some(sig as i32),
                    };
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
}

fn run_exec(plan: ExecPlan, mut report: fs::File) -> i32 {
    let pidfd = sys::own_fd(FD_EXTRA);
    // Entering a running jail: until the command's execve, processes of
    // the jail must not ptrace or open /proc of this host-made helper
    // (runc's CVE-2016-9962 fix does the same).
    if let Err(e) = sys::set_not_dumpable() {
        let _ = writeln!(report, "error PR_SET_DUMPABLE: {e}");
        return 125;
    }
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWCGROUP;
    if plan.userns {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    if let Err(e) = setns(pidfd.as_fd(), flags) {
        let _ = writeln!(report, "error setns into jail: {e}");
        return 125;
    }
    drop(pidfd);
    let mut all = FORWARDED.to_vec();
    all.push(libc::SIGCHLD);
    let _ = sys::install_forwarding(&all);
    let _ = report.write_all(b"ok\n");
    drop(report);
    match spawn_payload(&plan.process, &all) {
        Ok(pid) => {
            let child = Pid::from_raw(pid);
            loop {
                let sig = match sys::wait_signal(&all) {
                    Ok(s) => s,
                    Err(_) => continue,
                };
                if sig != libc::SIGCHLD {
                    let _ =
                        nix::sys::signal::kill(child, nix::sys::signal::Signal::try_from(sig).ok());
                    continue;
                }
                match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(_, code)) => return code,
                    Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
                    _ => continue,
                }
            }
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "berth-init: fork: {e}");
            125
        }
    }
}

/// Applies credentials and confinement, then execs. Returns only on error.
fn exec_process(p: &ProcessPlan) -> StepError {
    match apply_and_exec(p) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

fn apply_and_exec(p: &ProcessPlan) -> Result<Never, StepError> {
    let _ = nix::unistd::setsid();
    for &(res, soft, hard) in &p.rlimits {
        step(sys::setrlimit(res, soft, hard), || {
            format!("setrlimit {res}")
        })?;
    }
    let _ = nix::unistd::chdir(p.cwd.as_str());
    if !p.no_new_privs {
        // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN:
        // do it while init still has it (as runc does).
        for prog in &p.seccomp {
            step(sys::install_seccomp(prog), || {
                "install seccomp filter".into()
            })?;
        }
    }
    let last = crate::caps::last_cap();
    for cap in 0..=last {
        if p.caps.bounding & (1 << cap) == 0 {
            step(sys::drop_bounding(cap), || {
                format!("drop bounding capability {cap}")
            })?;
        }
    }
    step(sys::set_keepcaps(true), || "PR_SET_KEEPCAPS".into())?;
    let groups: Vec<Gid> = p.groups.iter().map(|&g| Gid::from_raw(g)).collect();
    // setgroups fails with EPERM in a user namespace whose gid map was
    // written with setgroups denied; the parent never denies it.
    step(nix::unistd::setgroups(&groups), || {
        format!("setgroups {:?}", p.groups)
    })?;
    let gid = Gid::from_raw(p.gid);
    step(nix::unistd::setresgid(gid, gid, gid), || {
        format!("setresgid {}", p.gid)
    })?;
    let uid = Uid::from_raw(p.uid);
    step(nix::unistd::setresuid(uid, uid, uid), || {
        format!("setresuid {}", p.uid)
    })?;
    step(sys::set_keepcaps(false), || "PR_SET_KEEPCAPS".into())?;
    step(
        sys::capset(p.caps.effective, p.caps.permitted, p.caps.inheritable),
        || "capset".into(),
    )?;
    step(sys::set_ambient(p.caps.ambient), || {
        "ambient capabilities".into()
    })?;
    if p.no_new_privs {
        step(sys::set_no_new_privs(), || "PR_SET_NO_NEW_PRIVS".into())?;
    }
    step(nix::unistd::chdir(p.cwd.as_str()), || {
        format!("chdir {}", p.cwd)
    })?;

    let Some(arg0) = p.args.first() else {
        return Err(StepError("exec: empty argv".into()));
    };
    let path = resolve(arg0, &p.env);
    let cpath = step(CString::new(path.clone()), || format!("exec {path}"))?;
    let argv: Vec<CString> = p
        .args
        .iter()
        .filter_map(|a| CString::new(a.as_str()).ok())
        .collect();
    let envp: Vec<CString> = p
        .env
        .iter()
        .filter_map(|a| CString::new(a.as_str()).ok())
        .collect();
    if p.no_new_privs {
        // As late as possible, so the filter sees only the payload.
        for prog in &p.seccomp {
            step(sys::install_seccomp(prog), || {
                "install seccomp filter".into()
            })?;
        }
    }
    let a: Vec<&std::ffi::CStr> = argv.iter().map(|c| c.as_c_str()).collect();
    let e: Vec<&std::ffi::CStr> = envp.iter().map(|c| c.as_c_str()).collect();
    let err = sys::execve(&cpath, &a, &e);
    Err(StepError(format!("exec {path}: {err}")))
}

/// Resolves argv[0] on the PATH of the payload's environment.
fn resolve(arg0: &str, env: &[String]) -> String {
    if arg0.contains('/') {
        return arg0.to_owned();
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let cand = format!("{dir}/{arg0}");
        if let Ok(m) = fs::metadata(&cand) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return cand;
            }
        }
    }
    arg0.to_owned()
}

fn ms(bits: u64) -> MsFlags {
    MsFlags::from_bits_truncate(bits as libc::c_ulong)
}

/// What [`ensure_in_root`] creates when the last component is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

/// A path inside the new root, held as an `O_PATH` fd. Mount through
/// [`InRoot::path`] (`/proc/self/fd/N`): the kernel then uses the object
/// the fd refers to and resolves nothing again, so a symlink swapped in
/// after the check cannot redirect the mount (runc's approach).
#[derive(Debug)]
struct InRoot {
    /// Keeps `path` valid.
    _fd: OwnedFd,
    /// `/proc/self/fd/N`.
    path: PathBuf,
    /// The in-jail path, for messages.
    name: String,
}

impl InRoot {
    fn new(fd: OwnedFd, name: &str) -> InRoot {
        let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        InRoot {
            _fd: fd,
            path,
            name: name.to_owned(),
        }
    }
}

/// openat2(2) of `rel` below `root` with `RESOLVE_IN_ROOT`: every symlink
/// (absolute ones included) and `..` resolve as if `root` were `/`, so a
/// hostile image holding `data -> /etc` leads to `<root>/etc`, never to
/// the host's `/etc`.
fn resolve_in(root: &OwnedFd, rel: &str) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root.as_fd(), if rel.is_empty() { "." } else { rel }, how)
}

/// Opens in-jail path `p` below `root`, creating what is missing (every
/// directory, and the last component as `kind`) one component at a time
/// inside the root, like `mkdir -p` confined by `RESOLVE_IN_ROOT`. A
/// dangling symlink on the way is refused rather than followed.
fn ensure_in_root(root: &OwnedFd, p: &str, kind: Kind) -> Result<InRoot, StepError> {
    let comps: Vec<&str> = p
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    match resolve_in(root, &comps.join("/")) {
        Ok(fd) => return Ok(InRoot::new(fd, p)),
        Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(StepError(format!("resolve {p} in the jail root: {e}"))),
    }
    let mut parent = step(resolve_in(root, ""), || "open the jail root".into())?;
    for (i, c) in comps.iter().enumerate() {
        let prefix = comps[..=i].join("/");
        match resolve_in(root, &prefix) {
            Ok(fd) => {
                parent = fd;
                continue;
            }
            Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                return Err(StepError(format!(
                    "resolve /{prefix} in the jail root: {e}"
                )))
            }
        }
        let made = if kind == Kind::File && i + 1 == comps.len() {
            openat(
                parent.as_fd(),
                *c,
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_WRONLY
                    | OFlag::O_CLOEXEC,
                FileMode::from_bits_truncate(0o644),
            )
            .map(drop)
        } else {
            mkdirat(parent.as_fd(), *c, FileMode::from_bits_truncate(0o755))
        };
        match made {
            Ok(()) => {}
            // ENOENT above but EEXIST here: a dangling symlink.
            Err(nix::errno::Errno::EEXIST) => {
                return Err(StepError(format!(
                    "create /{prefix} in the jail root: a dangling symlink is in the way"
                )))
            }
            Err(e) => return Err(StepError(format!("create /{prefix} in the jail root: {e}"))),
        }
        parent = step(resolve_in(root, &prefix), || {
            format!("resolve /{prefix} in the jail root")
        })?;
    }
    Ok(InRoot::new(parent, p))
}

/// Reopens `p` below `root` (after a mount on it, to get the new mount's
/// root rather than the covered directory).
fn reopen_in_root(root: &OwnedFd, p: &str) -> Result<InRoot, StepError> {
    let rel = p.trim_start_matches('/');
    let fd = step(resolve_in(root, rel), || {
        format!("resolve {p} in the jail root")
    })?;
    Ok(InRoot::new(fd, p))
}

fn mnt(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    what: &str,
) -> Result<(), StepError> {
    step(mount(src, target, fstype, flags, data), || {
        format!("mount {what} on {}", target.display())
    })
}

/// [`mnt`] onto a path held by an [`InRoot`]; messages name the in-jail
/// path.
fn mnt_at(
    src: Option<&str>,
    target: &InRoot,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    what: &str,
) -> Result<(), StepError> {
    step(mount(src, &target.path, fstype, flags, data), || {
        format!("mount {what} on {}", target.name)
    })
}

/// The whole create-mode setup; returns an O_PATH fd of the start FIFO.
fn setup(plan: &CreatePlan) -> Result<OwnedFd, StepError> {
    // Now that the parent put us in our cgroup, a cgroup namespace rooted
    // there hides the host's hierarchy (cgroup_namespaces(7)).
    step(unshare(CloneFlags::CLONE_NEWCGROUP), || {
        "unshare cgroup namespace".into()
    })?;
    // The jail's own network namespace: loopback up (a networked jail's
    // comes with its veth, after the rest of the setup).
    if !plan.network {
        step(sys::loopback_up(), || "bring up lo".into())?;
    }
    // Nothing we mount may propagate back to the host.
    mnt(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
        "private propagation",
    )?;

    // The FIFO lives in the host's state dir, which is gone after
    // pivot_root: keep an O_PATH handle to it.
    let fifo = step(
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(&plan.fifo),
        || format!("open fifo {}", plan.fifo.display()),
    )?;
    let fifo = OwnedFd::from(fifo);

    let root = plan.root_mount.clone();
    step(fs::create_dir_all(&root), || {
        format!("mkdir {}", root.display())
    })?;
    match &plan.rootfs {
        RootfsPlan::Bind(dir) => mnt(
            Some(&dir.to_string_lossy()),
            &root,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            &format!("bind {}", dir.display()),
        )?,
        RootfsPlan::Overlay(lowers, upper, work) => {
            let lower: Vec<String> = lowers
                .iter()
                .map(|l| l.to_string_lossy().into_owned())
                .collect();
            let data = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.join(":"),
                upper.display(),
                work.display()
            );
            mnt(
                Some("overlay"),
                &root,
                Some("overlay"),
                MsFlags::empty(),
                Some(&data),
                "overlay",
            )?;
        }
    }
    // Every later mount point is resolved inside the new root through
    // this fd (RESOLVE_IN_ROOT), never by a path string.
    let rootfd = step(
        nix::fcntl::open(
            &root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            FileMode::empty(),
        ),
        || format!("open {}", root.display()),
    )?;

    for m in &plan.mounts {
        let flags = ms(m.flags);
        let is_bind = flags.contains(MsFlags::MS_BIND);
        let kind = if is_bind
            && fs::metadata(&m.source)
                .map(|md| !md.is_dir())
                .unwrap_or(false)
        {
            Kind::File
        } else {
            Kind::Dir
        };
        let target = ensure_in_root(&rootfd, &m.destination, kind)?;
        let data = (!m.data.is_empty()).then_some(m.data.as_str());
        if is_bind {
            mnt_at(
                Some(&m.source),
                &target,
                None,
                flags & !MsFlags::MS_RDONLY,
                None,
                &format!("bind {}", m.source),
            )?;
        } else {
            mnt_at(
                Some(&m.source),
                &target,
                Some(&m.fstype),
                flags,
                data,
                &m.fstype,
            )?;
        }
        // The fd still names the covered directory: reopen to reach the
        // new mount for the remount and the propagation change.
        let mounted = reopen_in_root(&rootfd, &m.destination)?;
        if is_bind && flags.contains(MsFlags::MS_RDONLY) {
            mnt_at(
                None,
                &mounted,
                None,
                MsFlags::MS_REMOUNT
                    | MsFlags::MS_BIND
                    | MsFlags::MS_RDONLY
                    | (flags & (MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC)),
                None,
                "read-only remount",
            )?;
        }
        if m.propagation != 0 {
            mnt_at(None, &mounted, None, ms(m.propagation), None, "propagation")?;
        }
    }

    // /proc of the new pid namespace.
    let proc_dir = ensure_in_root(&rootfd, "/proc", Kind::Dir)?;
    mnt_at(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
        "proc",
    )?;
    // /sys read-only. In a user namespace sysfs may be refused: fall back
    // to a read-only recursive bind.
    let sys_dir = ensure_in_root(&rootfd, "/sys", Kind::Dir)?;
    let ro = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
    if mount(
        Some("sysfs"),
        &sys_dir.path,
        Some("sysfs"),
        ro,
        None::<&str>,
    )
    .is_err()
    {
        mnt_at(
            Some("/sys"),
            &sys_dir,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            "bind /sys",
        )?;
        let sys_dir = reopen_in_root(&rootfd, "/sys")?;
        mnt_at(
            None,
            &sys_dir,
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | ro,
            None,
            "read-only /sys",
        )?;
    }

    setup_dev(&rootfd, plan)?;

    // pivot_root(".", ".") then detach the old root: the runc idiom that
    // needs no scratch directory (pivot_root(2), NOTES).
    step(nix::unistd::chdir(&root), || {
        format!("chdir {}", root.display())
    })?;
    step(nix::unistd::pivot_root(".", "."), || {
        format!("pivot_root {}", root.display())
    })?;
    step(umount2(".", MntFlags::MNT_DETACH), || {
        "detach old root".into()
    })?;
    step(nix::unistd::chdir("/"), || "chdir /".into())?;

    for p in &plan.masked_paths {
        let path = Path::new(p);
        match fs::metadata(path) {
            Ok(md) if md.is_dir() => mnt(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                Some("size=0"),
                &format!("mask {p}"),
            )?,
            Ok(_) => mnt(
                Some("/dev/null"),
                path,
                None,
                MsFlags::MS_BIND,
                None,
                &format!("mask {p}"),
            )?,
            Err(_) => {}
        }
    }
    for p in &plan.readonly_paths {
        let path = Path::new(p);
        if path.exists() {
            mnt(
                Some(p),
                path,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
                &format!("bind {p}"),
            )?;
            mnt(
                None,
                path,
                None,
                MsFlags::MS_REMOUNT
                    | MsFlags::MS_BIND
                    | MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC,
                None,
                &format!("read-only {p}"),
            )?;
        }
    }
    if plan.readonly_root {
        mnt(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None,
            "read-only root",
        )?;
    }
    if let Some(h) = &plan.hostname {
        step(nix::unistd::sethostname(h), || format!("sethostname {h}"))?;
    }
    Ok(fifo)
}

/// The standard nodes of a jail's /dev: name, major, minor (the kernel's
/// Documentation/admin-guide/devices.txt).
const STD_NODES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Minimal /dev on tmpfs: the standard nodes (made with mknod, or bound
/// from the host in a user namespace, where mknod is refused), devpts
/// with its own ptmx, /dev/shm, the std symlinks, and the spec's devices.
fn setup_dev(root: &OwnedFd, plan: &CreatePlan) -> Result<(), StepError> {
    let dev = ensure_in_root(root, "/dev", Kind::Dir)?;
    mnt_at(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
        "tmpfs",
    )?;
    // The fresh tmpfs holds only what we make below, so plain joins onto
    // its fd path are safe.
    let dev = reopen_in_root(root, "/dev")?;
    let at = |name: &str| dev.path.join(name);
    let bind_host = |name: &str| {
        let host = format!("/dev/{name}");
        step(fs::File::create(at(name)), || format!("create /dev/{name}"))?;
        step(
            mount(
                Some(host.as_str()),
                &at(name),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            ),
            || format!("mount bind {host} on /dev/{name}"),
        )
    };
    for (name, major, minor) in STD_NODES {
        if plan.userns {
            // mknod is refused in a user namespace: bind the host node.
            bind_host(name)?;
            continue;
        }
        // A node of our own: one mknod instead of a file and a bind mount
        // (less setup time, and no mount charged to the jail).
        let path = at(name);
        match nix::sys::stat::mknod(
            &path,
            SFlag::S_IFCHR,
            FileMode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(major, minor),
        ) {
            Ok(()) => {
                // mknod(2) applies the umask; these nodes are for everyone.
                step(
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)),
                    || format!("chmod /dev/{name}"),
                )?;
            }
            // A device cgroup whose rules deny mknod: bind the host node.
            Err(nix::errno::Errno::EPERM) => bind_host(name)?,
            Err(e) => return Err(StepError(format!("mknod /dev/{name}: {e}"))),
        }
    }
    step(fs::create_dir(at("pts")), || "mkdir /dev/pts".into())?;
    step(
        mount(
            Some("devpts"),
            &at("pts"),
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
        || "mount devpts on /dev/pts".into(),
    )?;
    step(fs::create_dir(at("shm")), || "mkdir /dev/shm".into())?;
    step(
        mount(
            Some("shm"),
            &at("shm"),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        ),
        || "mount tmpfs on /dev/shm".into(),
    )?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        step(std::os::unix::fs::symlink(to, at(link)), || {
            format!("symlink /dev/{link}")
        })?;
    }
    for d in &plan.devices {
        if plan.userns {
            // mknod is refused in a user namespace: bind the host node.
            let target = ensure_in_root(root, &d.path, Kind::File)?;
            mnt_at(
                Some(&d.path),
                &target,
                None,
                MsFlags::MS_BIND,
                None,
                &format!("bind {}", d.path),
            )?;
        } else {
            let (parent, name) = match d.path.rsplit_once('/') {
                Some((p, n)) if !n.is_empty() => (p, n),
                _ => return Err(StepError(format!("mknod {}: not a file path", d.path))),
            };
            let dir = ensure_in_root(
                root,
                if parent.is_empty() { "/" } else { parent },
                Kind::Dir,
            )?;
            // A node of the rootfs at that path is replaced (never
            // followed: unlinkat removes a symlink itself).
            let dirfd = step(
                nix::fcntl::open(
                    &dir.path,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    FileMode::empty(),
                ),
                || format!("open {parent}"),
            )?;
            let _ = nix::unistd::unlinkat(&dirfd, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
            let kind = if d.kind == 'b' {
                SFlag::S_IFBLK
            } else {
                SFlag::S_IFCHR
            };
            step(
                mknodat(
                    &dirfd,
                    name,
                    kind,
                    FileMode::from_bits_truncate(0o666),
                    nix::sys::stat::makedev(d.major.into(), d.minor.into()),
                ),
                || format!("mknod {}", d.path),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_uses_payload_path() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_string()];
        let r = resolve("sh", &env);
        assert!(r == "/bin/sh" || r == "/usr/bin/sh", "{r}");
        assert_eq!(resolve("/x/y", &env), "/x/y");
        assert_eq!(resolve("no-such-binary-here", &env), "no-such-binary-here");
    }

    /// The embedded reaper is a static executable of this target that
    /// fits in one page: no interpreter, no writable segment.
    #[test]
    fn reaper_is_one_static_page_for_this_target() {
        assert!(
            !REAPER.is_empty(),
            "build.rs builds a reaper for this target"
        );
        assert_eq!(&REAPER[..4], b"\x7fELF");
        let wide = REAPER[4] == 2;
        assert_eq!(wide, cfg!(target_pointer_width = "64"));
        let u16_at = |o: usize| u16::from_le_bytes([REAPER[o], REAPER[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(REAPER[o..o + 4].try_into().unwrap());
        let machine = match std::env::consts::ARCH {
            "x86_64" => 62,
            "aarch64" => 183,
            "arm" => 40,
            other => panic!("no reaper expected for {other}"),
        };
        assert_eq!(u16_at(16), 2, "ET_EXEC");
        assert_eq!(u16_at(18), machine);
        let (phoff, phentsize, phnum) = if wide {
            (
                u64::from_le_bytes(REAPER[32..40].try_into().unwrap()) as usize,
                u16_at(54) as usize,
                u16_at(56) as usize,
            )
        } else {
            (
                u32_at(28) as usize,
                u16_at(42) as usize,
                u16_at(44) as usize,
            )
        };
        let mut loads = 0;
        for i in 0..phnum {
            let ph = phoff + i * phentsize;
            let (kind, flags) = if wide {
                (u32_at(ph), u32_at(ph + 4))
            } else {
                (u32_at(ph), u32_at(ph + 24))
            };
            assert_ne!(kind, 3, "PT_INTERP: the reaper must be static");
            if kind == 1 {
                loads += 1;
                assert_eq!(flags & 2, 0, "a writable PT_LOAD");
            }
        }
        assert_eq!(loads, 1);
        assert!(REAPER.len() <= 4096, "{} bytes", REAPER.len());
    }

    /// Runs the reaper as a shell's exec with `script`'s children, the
    /// last one started being the payload; returns the exit code and what
    /// it wrote to stdout (its status fd here).
    fn run_reaper(script: &str) -> (Option<i32>, String) {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("reaper");
        fs::write(&exe, REAPER).unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
        let full = format!("{script}\nexec \"$R\" $! 1 0");
        // Another test's fork may briefly hold the new file open for
        // writing (ETXTBSY, sh exits 126): try again.
        for _ in 0..20 {
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(&full)
                .env("R", &exe)
                .output()
                .unwrap();
            if out.status.code() != Some(126) {
                return (
                    out.status.code(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the reaper could not be run");
    }

    #[test]
    fn reaper_records_the_payload_and_reaps_other_children() {
        // A child that is not the payload ends first: reaped, not taken
        // for the payload.
        let (code, out) = run_reaper("sh -c 'exit 9' &\nsh -c 'sleep 0.3; exit 3' &");
        assert_eq!(
            (code, out.as_str()),
            (Some(3), r#"{"code":3,"signal":null}"#)
        );
        let (code, out) = run_reaper("sh -c 'kill -KILL $$' &");
        assert_eq!(
            (code, out.as_str()),
            (Some(137), r#"{"code":137,"signal":9}"#)
        );
    }

    #[test]
    fn reaper_forwards_term_to_the_payload() {
        // TERM to the reaper's pid (the shell's $$ survives the exec)
        // reaches the payload, which dies of it.
        let (code, out) = run_reaper("(sleep 0.3; kill -TERM $$) &\nsleep 10 &");
        assert_eq!(
            (code, out.as_str()),
            (Some(143), r#"{"code":143,"signal":15}"#)
        );
        let (code, out) = run_reaper(
            "(sleep 0.3; kill -USR1 $$) &\nsh -c 'trap \"exit 5\" USR1; while :; do sleep 0.05; done' &",
        );
        assert_eq!(
            (code, out.as_str()),
            (Some(5), r#"{"code":5,"signal":null}"#)
        );
    }

    fn open_dir(p: &Path) -> OwnedFd {
        nix::fcntl::open(
            p,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            FileMode::empty(),
        )
        .unwrap()
    }

    #[test]
    fn mount_points_never_leave_the_root_through_symlinks() {
        let host = tempfile::tempdir().unwrap();
        let host = fs::canonicalize(host.path()).unwrap();
        let d = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(d.path()).unwrap();
        // A hostile image: absolute and relative links aimed at the host.
        // The image has the same directory, so the link resolves in it.
        let inside = root.join(host.strip_prefix("/").unwrap());
        fs::create_dir_all(&inside).unwrap();
        std::os::unix::fs::symlink(&host, root.join("data")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("up")).unwrap();
        let rootfd = open_dir(&root);

        let t = ensure_in_root(&rootfd, "/data/sub", Kind::Dir).unwrap();
        assert_eq!(t.name, "/data/sub");
        let t = ensure_in_root(&rootfd, "/up/etc/berth-probe", Kind::File).unwrap();
        assert!(fs::metadata(&t.path).unwrap().is_file());

        // Nothing appeared on the host side; both landed inside the root.
        assert_eq!(fs::read_dir(&host).unwrap().count(), 0);
        let inside = inside.join("sub");
        assert!(inside.is_dir(), "{}", inside.display());
        assert!(root.join("etc/berth-probe").is_file());
        // The fd path names the object inside the root.
        let t = ensure_in_root(&rootfd, "/data/sub", Kind::Dir).unwrap();
        assert_eq!(fs::read_link(&t.path).unwrap(), inside);
    }

    #[test]
    fn dangling_symlink_in_the_way_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(d.path()).unwrap();
        std::os::unix::fs::symlink("/nowhere/x", root.join("dangling")).unwrap();
        let rootfd = open_dir(&root);
        let e = ensure_in_root(&rootfd, "/dangling", Kind::Dir)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "create /dangling in the jail root: a dangling symlink is in the way"
        );
        assert!(!Path::new("/nowhere").exists());
        // Existing paths resolve; "." and empty components are skipped.
        fs::create_dir(root.join("ok")).unwrap();
        let t = ensure_in_root(&rootfd, "//./ok/", Kind::Dir).unwrap();
        assert_eq!(fs::read_link(&t.path).unwrap(), root.join("ok"));
    }
}

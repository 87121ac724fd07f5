//! Raw system calls that `nix` does not wrap (or wraps in a way that
//! allocates), and the only place in this crate with `unsafe`.
//!
//! Layout: process creation (`clone3` with `CLONE_PIDFD`, fallback to
//! `clone` + `pidfd_open`) and the async-signal-safe child path that ends in
//! `execveat`; pidfd helpers (`pidfd_open`, `pidfd_send_signal`,
//! `waitid(P_PIDFD)`); the pieces `berth-init` needs (fork, signal handlers,
//! rlimits, capabilities, seccomp).

use std::ffi::{c_char, CStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Everything the cloned child needs, prepared by the parent so that the
/// child allocates nothing and takes no lock before `execveat` (the parent
/// may be a multi-threaded tokio process: see clone(2), "the child ... only
/// async-signal-safe functions").
#[derive(Debug)]
pub struct ChildExec<'a> {
    /// O_PATH fd of the `berth-init` binary.
    pub exe: BorrowedFd<'a>,
    /// NULL-terminated argv.
    pub argv: &'a [*const c_char],
    /// NULL-terminated envp.
    pub envp: &'a [*const c_char],
    /// The child blocks on one byte from this fd before anything else, so
    /// the parent can write id maps first.
    pub sync_read: RawFd,
    /// Descriptors the child closes before waiting (its copies of the
    /// parent's pipe ends, so that a dead parent gives EOF).
    pub close_first: &'a [RawFd],
    /// `(source, target)` pairs: sources are all >= [`FD_SOURCE_MIN`],
    /// targets below it, so no `dup2` clobbers a later source.
    pub fds: &'a [(RawFd, RawFd)],
    /// Where the child writes errno (4 bytes) if it cannot exec.
    pub err_fd: RawFd,
    /// New user namespace: after the parent wrote the id maps, switch to
    /// uid/gid 0 of the namespace (the clone keeps the host ids, which the
    /// maps do not cover) so that the exec'd init is root there.
    pub become_root: bool,
    /// Write-only fds of cgroup v1 `tasks` files: the child writes `0`
    /// (itself) to each before anything else. A task moving itself skips
    /// the kernel's global threadgroup lock, whose write side waits for an
    /// RCU grace period (10-20 ms measured) when the parent moves it
    /// instead (`cgroup_procs_write_start`, kernel/cgroup/cgroup.c).
    pub join_tasks: &'a [RawFd],
    /// Run this instead of exec'ing `exe`: the child closes every fd that
    /// is not one of the targets of `fds`, names itself `berth-init`, and
    /// exits with what it returns. Only when the parent is single-threaded, so that the
    /// child, a copy of it, may allocate and take locks like any forked
    /// process; it saves the exec of a second binary on every create.
    pub inline_main: Option<fn() -> i32>,
}

/// Tag of the child's error report when joining a cgroup failed (the
/// exec failure tag is `X`).
pub const JOIN_FAILED: u8 = b'C';

/// Lowest number the parent moves child fds to before cloning.
pub const FD_SOURCE_MIN: RawFd = 100;

/// Targets are below this; everything from here up closes on exec.
pub const FD_TARGET_END: RawFd = 10;

/// Result of a clone: the pid (in the caller's pid namespace) and a pidfd.
#[derive(Debug)]
pub struct Child {
    /// Pid in the caller's pid namespace.
    pub pid: i32,
    /// A pidfd referring to the child.
    pub pidfd: OwnedFd,
    /// Born in the cgroup passed as `into_cgroup`.
    pub in_cgroup: bool,
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `CLONE_INTO_CGROUP` (clone(2), Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Clones a child with the given namespace flags (`CLONE_NEW*`) which runs
/// [`ChildExec`] and never returns into Rust code.
///
/// `into_cgroup`: an fd of a cgroup v2 directory the child is born in
/// (`CLONE_INTO_CGROUP`), so it never has to be moved there. The returned
/// [`Child::in_cgroup`] says whether that happened: kernels before 5.7
/// refuse the flag and the child is cloned without it.
pub fn clone_exec(
    ns_flags: u64,
    into_cgroup: Option<BorrowedFd<'_>>,
    exec: &ChildExec<'_>,
) -> io::Result<Child> {
    if let Some(cg) = into_cgroup {
        match clone3(ns_flags | CLONE_INTO_CGROUP, cg.as_raw_fd() as u64, exec) {
            Ok(mut c) => {
                c.in_cgroup = true;
                return Ok(c);
            }
            // Unknown flag or clone_args size (kernel < 5.7): without it.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::E2BIG)) => {}
            Err(e) => return Err(e),
        }
    }
    clone3(ns_flags, 0, exec)
}

fn clone3(flags: u64, cgroup: u64, exec: &ChildExec<'_>) -> io::Result<Child> {
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: flags | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 with no stack behaves like fork: the child runs on a
    // copy of this stack. `args` is a valid clone_args of the size passed.
    // The child only calls `child_path`, which uses raw async-signal-safe
    // syscalls on memory prepared before the clone, and ends in
    // execveat or _exit.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret == 0 {
        child_path(exec);
    }
    if ret > 0 {
        // SAFETY: the kernel stored a new pidfd that nothing else owns.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
        return Ok(Child {
            pid: ret as i32,
            pidfd,
            in_cgroup: false,
        });
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(err);
    }
    let ns_flags = flags & !CLONE_INTO_CGROUP;
    // Fallback for kernels before 5.3: clone(2) then pidfd_open.
    // SAFETY: as above, a fork-like clone (null stack); the child never
    // returns from `child_path`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (ns_flags as libc::c_ulong) | libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if ret == 0 {
        child_path(exec);
    }
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let pid = ret as i32;
    let pidfd = pidfd_open(pid)?;
    Ok(Child {
        pid,
        pidfd,
        in_cgroup: false,
    })
}

// 32-bit ARM keeps the 16-bit id calls under the plain names; the 32-bit
// ones carry a suffix (arch/arm/tools/syscall.tbl).
#[cfg(target_arch = "arm")]
const SYS_SETGROUPS: libc::c_long = libc::SYS_setgroups32;
#[cfg(target_arch = "arm")]
const SYS_SETRESGID: libc::c_long = libc::SYS_setresgid32;
#[cfg(target_arch = "arm")]
const SYS_SETRESUID: libc::c_long = libc::SYS_setresuid32;
#[cfg(not(target_arch = "arm"))]
const SYS_SETGROUPS: libc::c_long = libc::SYS_setgroups;
#[cfg(not(target_arch = "arm"))]
const SYS_SETRESGID: libc::c_long = libc::SYS_setresgid;
#[cfg(not(target_arch = "arm"))]
const SYS_SETRESUID: libc::c_long = libc::SYS_setresuid;

/// The child side: raw syscalls only, no allocation, no locks, up to the
/// exec (or to [`ChildExec::inline_main`], for a single-threaded parent).
fn child_path(exec: &ChildExec<'_>) -> ! {
    // SAFETY: every call below is an async-signal-safe raw syscall on fds
    // and pointers that the parent prepared and that stay valid in this
    // copy of its address space; the function ends in execveat or _exit.
    unsafe {
        for &fd in exec.close_first {
            libc::close(fd);
        }
        // Join the cgroups first: from here on, whoever destroys the
        // jail's cgroup also ends this child.
        for &fd in exec.join_tasks {
            if libc::write(fd, b"0".as_ptr() as *const libc::c_void, 1) != 1 {
                child_fail_tagged(exec.err_fd, JOIN_FAILED);
            }
        }
        let mut go = 0u8;
        let n = libc::read(exec.sync_read, &mut go as *mut u8 as *mut libc::c_void, 1);
        if n != 1 || go != b'g' {
            libc::_exit(126);
        }
        // Raw syscalls, not the libc wrappers: glibc's set*id broadcast to
        // the parent's other threads, which do not exist in this child.
        if exec.become_root
            && (libc::syscall(SYS_SETGROUPS, 0usize, std::ptr::null::<libc::gid_t>()) < 0
                || libc::syscall(SYS_SETRESGID, 0u32, 0u32, 0u32) < 0
                || libc::syscall(SYS_SETRESUID, 0u32, 0u32, 0u32) < 0)
        {
            child_fail(exec.err_fd);
        }
        for &(src, dst) in exec.fds {
            if libc::dup2(src, dst) < 0 {
                child_fail(exec.err_fd);
            }
        }
        if let Some(main) = exec.inline_main {
            // No exec to close them: close the parent's descriptors now,
            // also those below FD_TARGET_END that are no target (the
            // parent's own low fds: an flock on the state dir held by
            // init would block every later command).
            for fd in 0..FD_TARGET_END {
                if !exec.fds.iter().any(|&(_, dst)| dst == fd) {
                    libc::close(fd);
                }
            }
            if libc::syscall(
                libc::SYS_close_range,
                FD_TARGET_END as libc::c_uint,
                libc::c_uint::MAX,
                0 as libc::c_uint,
            ) < 0
            {
                child_fail(exec.err_fd);
            }
            libc::prctl(libc::PR_SET_NAME, c"berth-init".as_ptr());
            let code = std::panic::catch_unwind(main).unwrap_or(125);
            libc::_exit(code);
        }
        // Everything else closes on exec (close_range(2), kernel 5.11).
        // Fail closed: without it the parent's descriptors (sockets,
        // other jails' pidfds) would reach the jail.
        if libc::syscall(
            libc::SYS_close_range,
            FD_TARGET_END as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        ) < 0
        {
            child_fail(exec.err_fd);
        }
        libc::syscall(
            libc::SYS_execveat,
            exec.exe.as_raw_fd(),
            c"".as_ptr(),
            exec.argv.as_ptr(),
            exec.envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
        child_fail(exec.err_fd)
    }
}

/// Writes errno to `err_fd` and exits (child side; async-signal-safe).
unsafe fn child_fail(err_fd: RawFd) -> ! {
    // SAFETY: as `child_fail_tagged`.
    unsafe { child_fail_tagged(err_fd, b'X') }
}

/// Writes `tag` and errno to `err_fd` and exits (child side;
/// async-signal-safe).
unsafe fn child_fail_tagged(err_fd: RawFd, tag: u8) -> ! {
    // SAFETY: errno location and write/_exit are async-signal-safe.
    unsafe {
        let e: i32 = *libc::__errno_location();
        let n = e.to_ne_bytes();
        let b = [tag, n[0], n[1], n[2], n[3]];
        libc::write(err_fd, b.as_ptr() as *const libc::c_void, 5);
        libc::_exit(127)
    }
}

/// pidfd_open(2).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

/// pidfd_send_signal(2).
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: plain syscall; a null siginfo means "as kill(2)".
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How a reaped process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    /// Still running (only with `nohang`).
    Running,
    /// Exited with a code.
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
}

/// waitid(P_PIDFD, ..., WEXITED) — reaps the child behind `pidfd`.
pub fn waitid_pidfd(pidfd: BorrowedFd<'_>, nohang: bool) -> io::Result<Reaped> {
    // SAFETY: zeroed siginfo_t is a valid out-parameter.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | if nohang { libc::WNOHANG } else { 0 };
    // SAFETY: valid pointer to `info`; P_PIDFD (3) takes the fd as id.
    let ret = unsafe { libc::waitid(3, pidfd.as_raw_fd() as libc::id_t, &mut info, flags) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid filled `info` (or left it zeroed when nothing exited).
    let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if pid == 0 {
        return Ok(Reaped::Running);
    }
    Ok(if code == libc::CLD_EXITED {
        Reaped::Exited(status)
    } else {
        Reaped::Signaled(status)
    })
}

/// Starts the payload for the single-threaded `berth-init`: runs `child`
/// in a new process that shares this one's memory until it execs, on a
/// stack of its own (clone(2) with `CLONE_VM | CLONE_VFORK`, as glibc's
/// posix_spawn does); the caller is suspended until then. Returns the
/// child's pid. `child` ends in an exec; if it returns, or panics, the
/// child exits (with its value, or 127).
///
/// A fork would copy init's page tables and have the exec tear the copy
/// down again. When init is the cloned image of the `berth` command (see
/// `ChildExec::inline_main`) that is a few megabytes of mappings, both on
/// the path from `start` to the payload running.
pub fn spawn_shared(child: &mut dyn FnMut() -> i32) -> io::Result<i32> {
    const STACK: usize = 256 * 1024;
    extern "C" fn trampoline(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` points at the `&mut dyn FnMut` below, which lives
        // on the suspended parent's stack until this child execs or exits.
        let f = unsafe { &mut *(arg as *mut &mut dyn FnMut() -> i32) };
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(127);
        exit_now(code)
    }
    // SAFETY: a fresh anonymous private mapping; checked below.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let mut f: &mut dyn FnMut() -> i32 = child;
    // SAFETY: the stack grows down from the end of the mapping (page
    // aligned, so 16-byte aligned); CLONE_VFORK suspends this thread until
    // the child no longer uses the stack or `f`, so both outlive its use.
    // The caller is single-threaded: the child sees consistent memory.
    let pid = unsafe {
        libc::clone(
            trampoline,
            (stack as *mut u8).add(STACK) as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &mut f as *mut &mut dyn FnMut() -> i32 as *mut libc::c_void,
        )
    };
    let err = io::Error::last_os_error();
    // SAFETY: the child has exec'd or exited: nothing uses the stack.
    unsafe { libc::munmap(stack, STACK) };
    if pid < 0 {
        return Err(err);
    }
    Ok(pid)
}

extern "C" fn noop_handler(_: libc::c_int) {}

/// Installs a no-op handler for `signals` (so that, as PID 1 of a pid
/// namespace, the signals are delivered at all: pid_namespaces(7) drops
/// signals to init that have the default disposition) and blocks them so
/// they are taken with `sigwaitinfo`.
pub fn install_forwarding(signals: &[i32]) -> io::Result<()> {
    for &sig in signals {
        // SAFETY: zeroed sigaction plus a valid extern "C" handler; the
        // handler does nothing, so it is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = noop_handler as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    set_mask(signals, libc::SIG_BLOCK)
}

/// Restores default dispositions and unblocks `signals` (payload side).
pub fn reset_signals(signals: &[i32]) -> io::Result<()> {
    for &sig in signals {
        // SAFETY: resetting to SIG_DFL with a zeroed sigaction.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    set_mask(signals, libc::SIG_UNBLOCK)
}

fn set_mask(signals: &[i32], how: libc::c_int) -> io::Result<()> {
    // SAFETY: sigset manipulation on a local, then sigprocmask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        if libc::sigprocmask(how, &set, std::ptr::null_mut()) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// sigwaitinfo(2) over `signals` (which must be blocked); returns the
/// signal number.
pub fn wait_signal(signals: &[i32]) -> io::Result<i32> {
    // SAFETY: local sigset and siginfo out-parameter.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let ret = libc::sigwaitinfo(&set, &mut info);
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ret)
    }
}

/// setrlimit(2) with a raw resource number.
pub fn setrlimit(resource: u32, soft: u64, hard: u64) -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: valid pointer to a local rlimit.
    let ret = unsafe { libc::setrlimit(resource as _, &lim) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn prctl(op: libc::c_int, a: libc::c_ulong, b: libc::c_ulong) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let ret = unsafe { libc::prctl(op, a, b, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// PR_CAPBSET_DROP for one capability.
pub fn drop_bounding(cap: u32) -> io::Result<()> {
    prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0)
}

/// PR_SET_KEEPCAPS.
pub fn set_keepcaps(on: bool) -> io::Result<()> {
    prctl(libc::PR_SET_KEEPCAPS, on as libc::c_ulong, 0)
}

/// PR_SET_DUMPABLE 0: /proc/PID of this process becomes root-owned and
/// ptrace needs CAP_SYS_PTRACE in its user namespace's owner; execve of
/// the payload resets it (prctl(2)).
pub fn set_not_dumpable() -> io::Result<()> {
    prctl(libc::PR_SET_DUMPABLE, 0, 0)
}

/// PR_SET_NO_NEW_PRIVS.
pub fn set_no_new_privs() -> io::Result<()> {
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0)
}

/// Clears the ambient set, then raises `caps` in it.
pub fn set_ambient(caps: u64) -> io::Result<()> {
    prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
    )?;
    for cap in 0..64u32 {
        if caps & (1 << cap) != 0 {
            // SAFETY: prctl with integer arguments only.
            let ret = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            };
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// capset(2) for this thread (version 3, 64-bit sets).
pub fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    let mut hdr = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [
        CapData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: header and a two-element data array as capset(2) expects for
    // version 3.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Installs a classic BPF seccomp filter on this thread
/// (`PR_SET_SECCOMP`, `SECCOMP_MODE_FILTER`); needs no_new_privs or
/// CAP_SYS_ADMIN. Instructions are `(code, jt, jf, k)`.
pub fn install_seccomp(prog: &[(u16, u8, u8, u32)]) -> io::Result<()> {
    let filters: Vec<libc::sock_filter> = prog
        .iter()
        .map(|&(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
        .collect();
    let fprog = libc::sock_fprog {
        len: filters.len() as u16,
        filter: filters.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points at `filters`, which outlives the call; the
    // kernel copies the program.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Borrows a raw fd number this process owns for the duration of the call.
///
/// Used by berth-init for the fixed fd numbers it inherited.
pub fn borrow_fd<'a>(fd: RawFd) -> BorrowedFd<'a> {
    // SAFETY: callers pass fds that stay open for the whole process (the
    // inherited plan/error/status fds of berth-init).
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Takes ownership of an inherited raw fd.
pub fn own_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: berth-init owns its inherited descriptors and takes each once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// The NULL-terminated array of pointers execve(2) takes for argv and envp;
/// it borrows `items`, which must outlive the call.
fn c_array(items: &[&CStr]) -> Vec<*const c_char> {
    let mut v: Vec<*const c_char> = items.iter().map(|s| s.as_ptr()).collect();
    v.push(std::ptr::null());
    v
}

/// execve(2) with prepared NUL-terminated strings (berth-init side,
/// single-threaded, so allocation here is fine).
pub fn execve(path: &CStr, argv: &[&CStr], envp: &[&CStr]) -> io::Error {
    let (a, e) = (c_array(argv), c_array(envp));
    // SAFETY: NULL-terminated arrays of pointers to live C strings.
    unsafe { libc::execve(path.as_ptr(), a.as_ptr(), e.as_ptr()) };
    io::Error::last_os_error()
}

/// A sealed, executable memfd holding `image` (memfd_create(2) with
/// `MFD_EXEC` where the kernel knows it, 6.3 and later; then write, and
/// seals against any change, as runc's memfd-bind does for its binary).
/// Close-on-exec; `execveat(fd, "", AT_EMPTY_PATH)` runs it without any
/// path, so neither the jail's root nor a masked /proc matters.
pub fn sealed_exec_memfd(name: &CStr, image: &[u8]) -> io::Result<OwnedFd> {
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create with a NUL-terminated name; the fd is owned below.
    let mut fd = unsafe { libc::memfd_create(name.as_ptr(), flags | libc::MFD_EXEC) };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // Before 6.3 the flag is unknown and memfds are executable.
        // SAFETY: as above.
        fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    }
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = std::fs::File::from(fd);
    std::io::Write::write_all(&mut f, image)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl(F_ADD_SEALS) on an fd this function owns.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(f))
}

/// execveat(2) of the file `fd` refers to (`AT_EMPTY_PATH`). Returns only
/// on failure.
pub fn execveat_fd(fd: BorrowedFd<'_>, argv: &[&CStr], envp: &[&CStr]) -> io::Error {
    let (a, e) = (c_array(argv), c_array(envp));
    // SAFETY: a valid fd, an empty NUL-terminated path, and NULL-terminated
    // arrays of pointers to C strings that outlive the call.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd.as_raw_fd(),
            c"".as_ptr(),
            a.as_ptr(),
            e.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    io::Error::last_os_error()
}

/// _exit(2): ends a forked child of berth-init without running the
/// parent's atexit handlers or flushing its buffers a second time.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Registers an owned pidfd with tokio's reactor for readability (a pidfd
/// polls readable once its process exits, pidfd_open(2)).
pub fn async_pidfd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `fd` is an `OwnedFd` moved into the AsyncFd: it stays open and
    // refers to the same description until the AsyncFd drops it, and its
    // `as_raw_fd` never changes.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into())
}

/// Brings the loopback interface of the current network namespace up
/// (netdevice(7): SIOCGIFFLAGS / SIOCSIFFLAGS with IFF_UP).
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let sock = own_fd(fd);
    // SAFETY: a zeroed ifreq is valid; the name is NUL-terminated ("lo\0"
    // in a 16-byte array); the ioctls read and write only that struct.
    unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &ifr) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

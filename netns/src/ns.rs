//! Network namespaces: named persistent ones, and netlink sockets bound to
//! any namespace.
//!
//! A named namespace is a bind mount of `/proc/thread-self/ns/net` onto a
//! file under a runtime directory (default [`DEFAULT_RUNTIME_DIR`]), the way
//! ip-netns(8) keeps them under `/run/netns`: the mount keeps the namespace
//! alive with no process in it. The directory is made a shared mount so that
//! removing the namespace also unmounts it in mount namespaces created later.
//!
//! Namespace changes are per thread (setns(2), unshare(2)), so they happen
//! only on a short-lived dedicated thread, never on a tokio worker. A socket
//! stays bound to the namespace it was created in, so to configure links
//! inside a namespace we create a netlink socket on such a thread and hand
//! it back to the async code.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use netlink_sys::{protocols::NETLINK_ROUTE, Socket};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::name::validate_netns_name;
use crate::{Error, NsRef};

/// Where named namespaces live unless the caller chooses another directory.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/berth/netns";

/// A named, persistent network namespace (a bind-mounted nsfs file).
///
/// Holds the namespace file open, so [`Netns::ns_ref`] can be passed to
/// [`crate::Net::add_veth`].
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    file: File,
}

fn ns_err(namespace: &Path, op: &'static str, source: io::Error) -> Error {
    Error::Namespace {
        namespace: namespace.display().to_string(),
        op,
        source,
    }
}

impl Netns {
    /// Creates the namespace `name` under [`DEFAULT_RUNTIME_DIR`].
    ///
    /// Blocking (spawns and joins a thread, mounts): call it off the async
    /// runtime, e.g. in `spawn_blocking`.
    pub fn create(name: &str) -> Result<Netns, Error> {
        Self::create_in(Path::new(DEFAULT_RUNTIME_DIR), name)
    }

    /// Creates the namespace `name` under `dir`; fails if it exists.
    pub fn create_in(dir: &Path, name: &str) -> Result<Netns, Error> {
        validate_netns_name(name)?;
        fs::create_dir_all(dir).map_err(|e| ns_err(dir, "creating the runtime directory", e))?;
        make_shared_mount(dir)?;
        let path = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(Error::NamespaceExists(path))
            }
            Err(e) => return Err(ns_err(&path, "creating the mount point", e)),
        }
        if let Err(e) = bind_new_netns(&path) {
            let cleanup = fs::remove_file(&path)
                .map_err(|c| ns_err(&path, "removing the mount point after a failure", c));
            return Err(Error::with_cleanup(e, cleanup));
        }
        tracing::debug!(path = %path.display(), "created network namespace");
        Self::open_in(dir, name)
    }

    /// Opens the existing namespace `name` under [`DEFAULT_RUNTIME_DIR`].
    pub fn open(name: &str) -> Result<Netns, Error> {
        Self::open_in(Path::new(DEFAULT_RUNTIME_DIR), name)
    }

    /// Opens the existing namespace `name` under `dir`.
    pub fn open_in(dir: &Path, name: &str) -> Result<Netns, Error> {
        validate_netns_name(name)?;
        let path = dir.join(name);
        let file = File::open(&path).map_err(|e| ns_err(&path, "opening", e))?;
        // A plain file left behind (not a mounted nsfs file) is no namespace:
        // setns on it would fail later with a less clear error.
        let nsfs = nix::sys::statfs::fstatfs(&file)
            .map_err(|e| ns_err(&path, "fstatfs", e.into()))?
            .filesystem_type();
        if nsfs != nix::sys::statfs::NSFS_MAGIC {
            return Err(ns_err(
                &path,
                "opening",
                io::Error::new(io::ErrorKind::InvalidInput, "not a mounted namespace file"),
            ));
        }
        Ok(Netns {
            name: name.to_string(),
            path,
            file,
        })
    }

    /// Whether a namespace file `name` exists under `dir`.
    pub fn exists_in(dir: &Path, name: &str) -> bool {
        dir.join(name).exists()
    }

    /// Unmounts and removes this namespace. The namespace itself lives on
    /// while a process or an open fd still refers to it.
    pub fn remove(self) -> Result<(), Error> {
        let Netns { path, file, .. } = self;
        drop(file);
        remove_path(&path)
    }

    /// Unmounts and removes the namespace `name` under `dir`; `Ok` if absent.
    pub fn remove_in(dir: &Path, name: &str) -> Result<(), Error> {
        validate_netns_name(name)?;
        remove_path(&dir.join(name))
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file (usable with `nsenter --net=PATH`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A reference to this namespace for [`crate::Net::add_veth`], valid while
    /// `self` lives.
    pub fn ns_ref(&self) -> NsRef {
        NsRef::Fd(self.file.as_raw_fd())
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

fn remove_path(path: &Path) -> Result<(), Error> {
    match umount2(path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (a half-created namespace); ENOENT: gone.
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(ns_err(path, "unmounting", e.into())),
    }
    match fs::remove_file(path) {
        Ok(()) => {
            tracing::debug!(path = %path.display(), "removed network namespace");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ns_err(path, "removing the mount point", e)),
    }
}

/// Makes `dir` a shared mount, bind-mounting it onto itself first if it is
/// not a mount point yet (what ip-netns(8) does for `/run/netns`).
fn make_shared_mount(dir: &Path) -> Result<(), Error> {
    let shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => return Ok(()),
        Err(Errno::EINVAL) => {}
        Err(e) => {
            return Err(ns_err(
                dir,
                "making the runtime directory a shared mount",
                e.into(),
            ))
        }
    }
    mount(
        Some(dir),
        dir,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        ns_err(
            dir,
            "bind-mounting the runtime directory onto itself",
            e.into(),
        )
    })?;
    shared().map_err(|e| ns_err(dir, "making the runtime directory a shared mount", e.into()))
}

/// Creates a new network namespace on a dedicated thread and bind-mounts it
/// onto `path` (which must exist).
fn bind_new_netns(path: &Path) -> Result<(), Error> {
    let target = path.to_path_buf();
    let worker = std::thread::Builder::new()
        .name("berth-netns-new".into())
        .spawn(move || -> Result<(), Error> {
            // This thread alone moves into the new namespace and then ends.
            unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| ns_err(&target, "unshare(CLONE_NEWNET)", e.into()))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| ns_err(&target, "bind-mounting the new namespace", e.into()))
        })
        .map_err(|e| ns_err(path, "spawning the namespace thread", e))?;
    match worker.join() {
        Ok(r) => r,
        Err(_) => Err(ns_err(
            path,
            "creating",
            io::Error::other("namespace thread panicked"),
        )),
    }
}

/// Human-readable name of a namespace reference, for errors and logs.
pub(crate) fn describe(ns: &NsRef) -> String {
    match ns {
        NsRef::Pid(pid) => format!("the network namespace of pid {pid}"),
        NsRef::Fd(fd) => format!("the network namespace of fd {fd}"),
    }
}

/// Opens an fd we own on the network namespace `ns` refers to: an nsfs
/// file, whatever the caller passed (a pid, a namespace file or a pidfd).
///
/// Resolving once, up front, means the veth's peer and the configuring
/// socket cannot end up in two different namespaces if a pid is reused
/// meanwhile. `IFLA_NET_NS_FD` only takes namespace files (rtnetlink(7),
/// `get_net_ns_by_fd`), so a pidfd is turned into one here.
pub(crate) fn open_ns(ns: &NsRef) -> Result<OwnedFd, Error> {
    let err = |op, source| Error::Namespace {
        namespace: describe(ns),
        op,
        source,
    };
    let by_pid = |pid: i32| {
        if pid <= 0 {
            return Err(err(
                "checking the pid",
                io::Error::new(io::ErrorKind::InvalidInput, "pid must be positive"),
            ));
        }
        File::open(format!("/proc/{pid}/ns/net"))
            .map(OwnedFd::from)
            .map_err(|e| err("opening /proc/PID/ns/net", e))
    };
    match *ns {
        NsRef::Pid(pid) => by_pid(pid),
        NsRef::Fd(fd) => {
            let owned = crate::sys::dup_raw_fd(fd).map_err(|e| err("duplicating the fd", e))?;
            let fs = nix::sys::statfs::fstatfs(&owned)
                .map_err(|e| err("fstatfs", e.into()))?
                .filesystem_type();
            if fs == nix::sys::statfs::NSFS_MAGIC {
                return Ok(owned);
            }
            // Not a namespace file: a pidfd names its process in fdinfo
            // (proc(5), "Pid:"; -1 once the process has exited).
            let pid_now = || pidfd_pid(&owned);
            let pid = match pid_now() {
                Some(pid) if pid > 0 => pid,
                Some(_) => {
                    return Err(err(
                        "resolving the pidfd",
                        io::Error::new(io::ErrorKind::NotFound, "the process has exited"),
                    ))
                }
                None => {
                    return Err(err(
                        "checking the fd",
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "neither a network namespace file nor a pidfd",
                        ),
                    ))
                }
            };
            let ns_fd = by_pid(pid)?;
            // The pidfd pins the pid while its process lives: if it still
            // names the same pid, /proc/PID was that process.
            if pid_now() != Some(pid) {
                return Err(err(
                    "resolving the pidfd",
                    io::Error::new(io::ErrorKind::NotFound, "the process has exited"),
                ));
            }
            Ok(ns_fd)
        }
    }
}

/// The pid a pidfd refers to, from `/proc/self/fdinfo/FD` (-1 once its
/// process has exited); `None` if `fd` is no pidfd.
fn pidfd_pid(fd: &OwnedFd) -> Option<i32> {
    let info = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse()
        .ok()
}

/// Opens a blocking netlink route socket inside `ns`, on a short-lived
/// dedicated thread that setns(2)es into it; the socket stays bound to that
/// namespace after the thread ends. The thread is waited for asynchronously.
pub(crate) async fn route_socket_in(ns: &NsRef, fd: OwnedFd) -> Result<Socket, Error> {
    let what = describe(ns);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_what = what.clone();
    std::thread::Builder::new()
        .name("berth-netns-sock".into())
        .spawn(move || {
            let r = setns(&fd, CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::Namespace {
                    namespace: thread_what.clone(),
                    op: "setns(CLONE_NEWNET)",
                    source: e.into(),
                })
                .and_then(|()| {
                    Socket::new(NETLINK_ROUTE).map_err(|e| Error::Socket {
                        namespace: thread_what,
                        source: e,
                    })
                });
            // The receiver only goes away if the caller's future was dropped;
            // then the socket is simply closed.
            let _ = tx.send(r);
        })
        .map_err(|e| Error::Namespace {
            namespace: what.clone(),
            op: "spawning the namespace thread",
            source: e,
        })?;
    rx.await.map_err(|_| Error::Namespace {
        namespace: what,
        op: "opening a netlink socket",
        source: io::Error::other("namespace thread ended without an answer"),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_names_before_touching_the_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Netns::create_in(dir.path(), "../escape"),
            Err(Error::InvalidName { .. })
        ));
        assert!(matches!(
            Netns::open_in(dir.path(), ""),
            Err(Error::InvalidName { .. })
        ));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn open_refuses_a_plain_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("plain"), b"").unwrap();
        let err = Netns::open_in(dir.path(), "plain").unwrap_err();
        assert!(
            err.to_string().contains("not a mounted namespace file"),
            "{err}"
        );
    }

    #[test]
    fn remove_of_absent_namespace_is_ok() {
        let dir = tempfile::tempdir().unwrap();
        Netns::remove_in(dir.path(), "absent").unwrap();
    }

    #[test]
    fn own_namespace_resolves_by_pid_and_by_file() {
        let me = std::process::id() as i32;
        let a = open_ns(&NsRef::Pid(me)).unwrap();
        let file = File::open("/proc/self/ns/net").unwrap();
        let b = open_ns(&NsRef::Fd(file.as_raw_fd())).unwrap();
        let ino = |fd: &OwnedFd| nix::sys::stat::fstat(fd).unwrap().st_ino;
        assert_eq!(ino(&a), ino(&b));
    }

    #[test]
    fn bad_pid_is_refused() {
        let err = open_ns(&NsRef::Pid(0)).unwrap_err();
        assert!(err.to_string().contains("pid 0"), "{err}");
        let err = open_ns(&NsRef::Fd(-1)).unwrap_err();
        assert!(err.to_string().contains("fd -1"), "{err}");
        let file = File::open("/proc/self/status").unwrap();
        let err = open_ns(&NsRef::Fd(file.as_raw_fd())).unwrap_err();
        assert!(
            err.to_string()
                .contains("neither a network namespace file nor a pidfd"),
            "{err}"
        );
    }
}

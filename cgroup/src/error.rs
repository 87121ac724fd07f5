//! The one error type of the crate. Every variant names the path (or the
//! pid and path) it was about, so a message read in a log says what failed
//! and where.

use std::io;
use std::path::PathBuf;

use crate::Controller;

/// What went wrong while detecting or managing a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No cgroup v1 or v2 filesystem appears in the mount table.
    #[error("no cgroup filesystem is mounted according to {path}")]
    NoCgroupFs { path: PathBuf },
    /// The mount table could not be parsed.
    #[error("cannot parse {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    /// A control file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// A control file refused a value.
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    /// A cgroup directory could not be created.
    #[error("cannot create cgroup directory {path}: {source}")]
    Mkdir { path: PathBuf, source: io::Error },
    /// A cgroup directory could not be removed.
    #[error("cannot remove cgroup directory {path}: {source}")]
    Rmdir { path: PathBuf, source: io::Error },
    /// `create` found the cgroup already there; use `open` to adopt it.
    #[error("cgroup {path} already exists")]
    AlreadyExists { path: PathBuf },
    /// `open` found no such cgroup.
    #[error("cgroup {path} does not exist")]
    NotFound { path: PathBuf },
    /// The relative cgroup path is malformed.
    #[error("invalid cgroup path {path:?}: {reason}")]
    InvalidName { path: PathBuf, reason: &'static str },
    /// The cgroup lies outside the prefix this hierarchy was set up to own.
    #[error("cgroup {path} is outside {prefix}, the prefix Berth manages; refusing to touch it")]
    NotOwned { path: PathBuf, prefix: PathBuf },
    /// A limit was asked for a controller this cgroup cannot use.
    #[error("controller {controller} is not available for cgroup {path}")]
    Unavailable {
        controller: Controller,
        path: PathBuf,
    },
    /// A limit value is out of the range the kernel accepts.
    #[error("invalid {what} {value} for cgroup {path}")]
    InvalidValue {
        path: PathBuf,
        what: &'static str,
        value: String,
    },
    /// A bounded wait (freeze, emptying before removal) ran out.
    #[error("timed out waiting for {what} in {path}")]
    Timeout { path: PathBuf, what: &'static str },
    /// A task in the cgroup could not be signalled.
    #[error("cannot kill pid {pid} in {path}: {source}")]
    Kill {
        path: PathBuf,
        pid: i32,
        source: nix::errno::Errno,
    },
    /// Loading or attaching the eBPF device program failed.
    #[error("bpf {op} for {path} failed: {source}{}", if log.is_empty() { String::new() } else { format!("; verifier log: {log}") })]
    Bpf {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
        log: String,
    },
    /// An operation failed and so did the cleanup after it; both are kept.
    #[error("{source}; cleaning up {path} also failed: {cleanup}")]
    Cleanup {
        path: PathBuf,
        source: Box<Error>,
        cleanup: Box<Error>,
    },
}

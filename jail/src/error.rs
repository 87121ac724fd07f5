//! The crate's error type: one enum rolled up from the modules' errors,
//! every variant carrying the object it was about.

use std::path::PathBuf;

use crate::seccomp::SeccompError;
use crate::spec::SpecError;
use crate::state::{Phase, StateError};

/// A jail operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec was refused.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// State file trouble.
    #[error(transparent)]
    State(#[from] StateError),
    /// Seccomp compile failure.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// A cgroup operation failed.
    #[error("cgroup {path}: {source}")]
    Cgroup {
        /// Cgroup path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: cgroup::Error,
    },
    /// A network operation failed.
    #[error("network {what}: {source}")]
    Net {
        /// What was being done (link, bridge, address).
        what: String,
        /// Cause.
        #[source]
        source: Box<netns::Error>,
    },
    /// A syscall or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// Operation and object.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// berth-init reported a setup failure.
    #[error("setup failed: {0}")]
    Setup(String),
    /// The berth-init binary was not found.
    #[error("berth-init not found (tried {tried:?}); set JailOptions::init_path or $BERTH_INIT")]
    InitNotFound {
        /// Paths tried.
        tried: Vec<PathBuf>,
    },
    /// A jail of that name already has a state directory.
    #[error("jail {0} already exists")]
    Exists(String),
    /// No such jail.
    #[error("jail {0} not found")]
    NotFound(String),
    /// The operation needs another phase.
    #[error("jail {name} is {phase:?}, {op} needs {want}")]
    Phase {
        /// Jail.
        name: String,
        /// Current phase.
        phase: Phase,
        /// Operation.
        op: &'static str,
        /// Needed phase.
        want: &'static str,
    },
    /// Init is gone.
    #[error("jail {0}: init is not running")]
    NotRunning(String),
    /// A wait timed out.
    #[error("{0}: timed out")]
    Timeout(String),
    /// An operation failed and so did (part of) the cleanup after it.
    #[error("{source}; cleanup also failed: {}", cleanup.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Cleanup {
        /// The original failure.
        source: Box<Error>,
        /// Cleanup failures.
        cleanup: Vec<Error>,
    },
    /// A blocking task died.
    #[error("blocking task failed: {0}")]
    Join(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    pub(crate) fn nix(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
        let what = what.into();
        move |e| Error::Io {
            what,
            source: std::io::Error::from(e),
        }
    }

    /// Attaches cleanup failures to an original error (none: unchanged).
    pub(crate) fn with_cleanup(self, cleanup: Vec<Error>) -> Error {
        if cleanup.is_empty() {
            self
        } else {
            Error::Cleanup {
                source: Box::new(self),
                cleanup,
            }
        }
    }
}

//! Errors of `berth` commands and the exit code each maps to.
//!
//! Bad input (a missing rootfs, a name clash, an unknown jail, no root) is
//! refused before anything is created and exits with 2; a failure while
//! acting exits with 1. Messages are one lowercase line naming the thing.

use std::path::PathBuf;

/// An error a `berth` command reports on stderr as `berth: error: ...`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command needs root.
    #[error("jail commands need root (running as uid {0})")]
    NotRoot(u32),
    /// The rootfs does not exist.
    #[error("rootfs {0} does not exist")]
    RootfsMissing(PathBuf),
    /// The rootfs is not a directory.
    #[error("rootfs {0} is not a directory")]
    RootfsNotDir(PathBuf),
    /// A `--layer` does not exist or is not a directory.
    #[error("layer {0} is not a directory")]
    LayerNotDir(PathBuf),
    /// The rootfs cannot be inspected.
    #[error("cannot read rootfs {path}: {source}")]
    RootfsUnreadable {
        /// The rootfs.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A jail of that name exists already.
    #[error("jail '{name}' already exists in {state_dir}")]
    NameClash {
        /// The name.
        name: String,
        /// Where jails are kept.
        state_dir: PathBuf,
    },
    /// No jail of that name.
    #[error("no jail named '{name}' in {state_dir}")]
    UnknownJail {
        /// The name.
        name: String,
        /// Where jails are kept.
        state_dir: PathBuf,
    },
    /// The state directory exists but is not a directory.
    #[error("state dir {0} is not a directory")]
    StateDirNotDir(PathBuf),
    /// The jail is in the wrong state for the command.
    #[error("jail '{name}' is {state}: {hint}")]
    WrongState {
        /// The name.
        name: String,
        /// Its state.
        state: String,
        /// What to do.
        hint: &'static str,
    },
    /// The jail runtime refused the options (e.g. a memory limit too small
    /// to start).
    #[error("invalid jail options: {0}")]
    BadSpec(String),
    /// An argument is not UTF-8.
    #[error("argument {0:?} is not valid UTF-8")]
    NotUtf8(String),
    /// A file operation failed.
    #[error("cannot {what}: {source}")]
    Io {
        /// Operation and path.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A network operation failed.
    #[error("network: {what}: {source}")]
    Net {
        /// Operation and object.
        what: String,
        /// Cause (boxed: it is large and rare).
        source: Box<netns::Error>,
    },
    /// The jail runtime failed.
    #[error("{0}")]
    Jail(String),
    /// The async runtime could not be built.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
}

impl CliError {
    /// The exit code for this error: 2 for bad input (nothing changed), 1
    /// for a failure while acting.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::NotRoot(_)
            | CliError::RootfsMissing(_)
            | CliError::RootfsNotDir(_)
            | CliError::LayerNotDir(_)
            | CliError::RootfsUnreadable { .. }
            | CliError::NameClash { .. }
            | CliError::UnknownJail { .. }
            | CliError::StateDirNotDir(_)
            | CliError::WrongState { .. }
            | CliError::NotUtf8(_)
            | CliError::BadSpec(_) => crate::EXIT_USAGE,
            CliError::Jail(_)
            | CliError::Io { .. }
            | CliError::Net { .. }
            | CliError::Runtime(_)
            | CliError::Output(_) => crate::EXIT_FAILURE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_thing_and_codes_split_input_from_failure() {
        let e = CliError::RootfsMissing(PathBuf::from("/nope"));
        assert_eq!(e.to_string(), "rootfs /nope does not exist");
        assert_eq!(e.exit_code(), 2);
        let e = CliError::NameClash {
            name: "a".into(),
            state_dir: PathBuf::from("/s"),
        };
        assert_eq!(e.to_string(), "jail 'a' already exists in /s");
        assert_eq!(CliError::Jail("x".into()).exit_code(), 1);
    }
}

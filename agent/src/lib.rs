//! agent: `berthd` (the daemon) and `berth` (the command line).
//!
//! - [`cli`]: the `berth` grammar and its value parsers;
//! - [`jailcmd`]: `berth jail ...`, turning parsed options into a
//!   `jail::JailSpec` and driving the `jail` runtime;
//! - [`detect`]: `berth detect`, the detection sources' events printed;
//! - [`board`]: board configurations and `berth check-board`;
//! - [`http`]: the HTTP/1.1 client of registries and vendor servers;
//! - [`error`]: the errors a command reports, each with its exit code.
#![forbid(unsafe_code)]

pub mod board;
pub mod cli;
pub mod daemon;
pub mod detect;
pub mod error;
pub mod http;
pub mod image;
pub mod jailcmd;
pub mod net;

pub use error::CliError;

/// Exit code of a command refused for bad input; nothing was changed.
pub const EXIT_USAGE: u8 = 2;
/// Exit code of a command that failed while acting.
pub const EXIT_FAILURE: u8 = 1;

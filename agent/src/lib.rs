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

/// Logs to stderr at `default` level and up, or as `RUST_LOG` says, given
/// as `level` or `target=level,...` (tracing's `Targets`: no span or field
/// filters, so no regex engine in the binaries).
pub fn init_logging(default: tracing::Level) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::filter::Targets>().ok())
        .unwrap_or_else(|| tracing_subscriber::filter::Targets::new().with_default(default));
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .finish()
        .with(filter)
        .init();
}

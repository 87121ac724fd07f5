//! `berthd`: the Berth daemon.
//!
//! Thin: parse `--config FILE` (or `--check-config`), set up logging to
//! stderr (`RUST_LOG`, default `info`), build a current-thread runtime, run
//! [`agent::daemon::run`] until SIGTERM or SIGINT asks for a graceful stop.
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: berthd [--config FILE] [--check-config] | --version";
const DEFAULT_CONFIG: &str = "/etc/berth/berthd.toml";

fn main() -> ExitCode {
    let mut config = PathBuf::from(DEFAULT_CONFIG);
    let mut check_only = false;
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--version") | Some("-V") => {
                println!("berthd {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            Some("--help") | Some("-h") => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            Some("--check-config") => check_only = true,
            Some("--config") | Some("-c") => match args.next() {
                Some(p) => config = PathBuf::from(p),
                None => {
                    eprintln!("berthd: error: --config needs a file\n{USAGE}");
                    return ExitCode::from(agent::EXIT_USAGE);
                }
            },
            _ => {
                eprintln!("berthd: error: unexpected argument {a:?}\n{USAGE}");
                return ExitCode::from(agent::EXIT_USAGE);
            }
        }
    }
    let config = match agent::daemon::Config::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berthd: error: {e}");
            return ExitCode::from(agent::EXIT_USAGE);
        }
    };
    if check_only {
        println!(
            "{}: ok ({} vendors)",
            config.path.display(),
            config.vendors.len()
        );
        return ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthd: error: cannot start the runtime: {e}");
            return ExitCode::from(agent::EXIT_FAILURE);
        }
    };
    let result = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                // Cancel-safe: signal streams lose nothing.
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            let _ = tx.send(true);
        });
        agent::daemon::run(config, rx)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berthd: error: {e}");
            ExitCode::from(agent::EXIT_FAILURE)
        }
    }
}

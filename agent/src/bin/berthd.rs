//! `berthd`: the Berth daemon.
//!
//! Thin: parse `--config FILE` (or `--check-config`), set up logging to
//! stderr (`RUST_LOG`, default `info`), build a current-thread runtime, run
//! [`agent::daemon::run`] until SIGTERM or SIGINT asks for a graceful stop.
//!
//! With `--board FILE` berthd first validates the board configuration: a bad
//! file is refused with its line, column and reason (exit 2, nothing
//! starts). Then it compares the host with the board, as `berth check-board`
//! does: mismatches Berth lives with are logged as warnings, and a missing
//! requirement (a namespace, a cgroup controller the board lists, veth,
//! bridge, nftables, overlayfs, seccomp, a BLE adapter the board marks
//! required) refuses the start (exit 1), before any state is touched.
use std::path::PathBuf;
use std::process::ExitCode;

use agent::board::host::{check_host, Host, Status};
use agent::board::Board;

const USAGE: &str = "usage: berthd [--config FILE] [--board FILE] [--check-config] | --version";
const DEFAULT_CONFIG: &str = "/etc/berth/berthd.toml";

fn main() -> ExitCode {
    let mut config = PathBuf::from(DEFAULT_CONFIG);
    let mut check_only = false;
    let mut board_file: Option<PathBuf> = None;
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
            Some("--board") => match args.next() {
                Some(p) => board_file = Some(PathBuf::from(p)),
                None => {
                    eprintln!("berthd: error: --board needs a file\n{USAGE}");
                    return ExitCode::from(agent::EXIT_USAGE);
                }
            },
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
    let board = match board_file.as_deref().map(Board::load).transpose() {
        Ok(b) => b,
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
        if let Some(b) = &board {
            println!("{}: ok (board {})", b.path.display(), b.name);
        }
        return ExitCode::SUCCESS;
    }
    agent::init_logging(tracing::Level::INFO);
    if let Some(board) = &board {
        if let Err(missing) = check_board(board, &config) {
            eprintln!("berthd: error: {missing}");
            return ExitCode::from(agent::EXIT_FAILURE);
        }
    }
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

/// Compares this host (and the daemon's configuration) with the board: logs
/// every mismatch, and fails with one line naming what is missing when the
/// host lacks something the board requires.
fn check_board(board: &Board, config: &agent::daemon::Config) -> Result<(), String> {
    let report = check_host(board, &Host::real());
    for c in &report.checks {
        match c.status {
            Status::Ok => tracing::debug!(check = %c.what, "board: {}", c.why),
            Status::Warn => tracing::warn!(check = %c.what, "board: {}", c.why),
            Status::Missing => tracing::error!(check = %c.what, "board: missing: {}", c.why),
        }
    }
    if config.state_dir != board.storage.state_dir {
        tracing::warn!(
            state_dir = %config.state_dir.display(),
            board = %board.storage.state_dir.display(),
            "board: the configured state_dir is not the board's storage.state_dir"
        );
    }
    if config.detect.ble && !board.ble.enabled {
        tracing::warn!("board: BLE detection is on, but the board has BLE disabled");
    }
    tracing::info!(board = %board.path.display(), "{}", report.summary());
    let missing: Vec<String> = report
        .missing()
        .map(|c| format!("{} ({})", c.what, c.why))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "this host lacks what board {} requires: {}; `berth check-board {}` lists every check",
            board.name,
            missing.join("; "),
            board.path.display()
        ))
    }
}

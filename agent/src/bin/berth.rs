//! `berth`: the command line of a Berth gateway.
//!
//! Thin: parse the arguments, set up logging to stderr (`RUST_LOG`), hand
//! over to the command's module, which builds the runtime it needs.
use std::process::ExitCode;

use agent::cli::Command;
use clap::error::ErrorKind;
use clap::Parser;

fn main() -> ExitCode {
    let cli = match agent::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    // Help goes where clap sends it; a write error to a
                    // closed pipe is no reason to fail differently.
                    let _ = e.print();
                    ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(agent::EXIT_USAGE))
                }
                _ => {
                    eprintln!("berth: error: {}", agent::cli::render_parse_error(&e));
                    ExitCode::from(agent::EXIT_USAGE)
                }
            };
        }
    };
    agent::init_logging(tracing::Level::WARN);
    let agent::cli::Cli {
        state_dir,
        cgroup_parent,
        command,
    } = cli;
    match command {
        // A jail of berthd's: berthd disposes of it and provisions anew.
        Command::Jail(agent::cli::JailCommand::Reset { name, json }) => {
            let state_dir =
                state_dir.unwrap_or_else(|| agent::daemon::config::DEFAULT_STATE_DIR.into());
            let cmd = agent::daemon::cli::DaemonCommand::JailReset { jail: name, json };
            agent::daemon::cli::main(cmd, &state_dir)
        }
        Command::Jail(cmd) => {
            let state_dir = state_dir.unwrap_or_else(|| agent::cli::DEFAULT_STATE_DIR.into());
            agent::jailcmd::main(&state_dir, &cgroup_parent, cmd)
        }
        Command::Detect(args) => match agent::detect::run(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("berth: error: {e:#}");
                ExitCode::from(agent::EXIT_FAILURE)
            }
        },
        Command::CheckBoard(args) => agent::board::host::main(args),
        Command::Daemon(cmd) => {
            let state_dir =
                state_dir.unwrap_or_else(|| agent::daemon::config::DEFAULT_STATE_DIR.into());
            agent::daemon::cli::main(cmd, &state_dir)
        }
    }
}

//! `berthd`: the Berth daemon (for now it only answers `--version`).
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-V") => {
            println!("berthd {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("berthd: error: the daemon is not built yet; only --version is supported");
            ExitCode::from(2)
        }
    }
}

//! `berth jail ...`: checks the input, recovers stale leftovers, then drives
//! the `jail` runtime on a current-thread tokio runtime.
//!
//! Every check that can refuse a command runs before anything is created:
//! root, the rootfs and layers, the name. A refused command exits with 2 and
//! leaves no state dir, cgroup or link behind.

use std::path::Path;
use std::process::ExitCode;

use crate::cli::{Cli, Command, JailCommand, JailOpts};
use crate::error::CliError;

/// Runs a parsed command line and returns the process exit code; errors are
/// printed as one `berth: error: ...` line.
pub fn main(cli: Cli) -> ExitCode {
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, CliError> {
    let Command::Jail(cmd) = &cli.command;
    check_input(cmd, &cli.state_dir)?;
    check_root()?;
    Err(CliError::Jail(
        "the jail runtime is not linked into this build".to_string(),
    ))
}

/// Refuses unless running as root (jails need namespaces and cgroups).
fn check_root() -> Result<(), CliError> {
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        Ok(())
    } else {
        Err(CliError::NotRoot(euid.as_raw()))
    }
}

/// The checks that need no runtime: rootfs, layers, state dir.
fn check_input(cmd: &JailCommand, state_dir: &Path) -> Result<(), CliError> {
    if state_dir.exists() && !state_dir.is_dir() {
        return Err(CliError::StateDirNotDir(state_dir.to_path_buf()));
    }
    match cmd {
        JailCommand::Run(a) => check_opts(&a.opts),
        JailCommand::Create(a) => check_opts(&a.opts),
        _ => Ok(()),
    }
}

/// Checks the rootfs and every `--layer` are directories.
pub fn check_opts(opts: &JailOpts) -> Result<(), CliError> {
    match std::fs::metadata(&opts.rootfs) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(CliError::RootfsNotDir(opts.rootfs.clone())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::RootfsMissing(opts.rootfs.clone()))
        }
        Err(source) => {
            return Err(CliError::RootfsUnreadable {
                path: opts.rootfs.clone(),
                source,
            })
        }
    }
    for layer in &opts.layers {
        if !layer.is_dir() {
            return Err(CliError::LayerNotDir(layer.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn opts(rootfs: &Path, layers: &[&Path]) -> JailOpts {
        let mut args = vec![
            "berth".to_string(),
            "jail".into(),
            "run".into(),
            "--rootfs".into(),
            rootfs.display().to_string(),
        ];
        for l in layers {
            args.push("--layer".into());
            args.push(l.display().to_string());
        }
        args.extend(["--".into(), "true".into()]);
        match Cli::try_parse_from(args).unwrap().command {
            Command::Jail(JailCommand::Run(r)) => r.opts,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rootfs_checks_name_the_path() {
        let d = tempfile::tempdir().unwrap();
        assert!(check_opts(&opts(d.path(), &[])).is_ok());
        let missing = d.path().join("nope");
        let e = check_opts(&opts(&missing, &[])).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("rootfs {} does not exist", missing.display())
        );
        let file = d.path().join("f");
        std::fs::write(&file, "").unwrap();
        let e = check_opts(&opts(&file, &[])).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("rootfs {} is not a directory", file.display())
        );
        let e = check_opts(&opts(d.path(), &[&missing])).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("layer {} is not a directory", missing.display())
        );
        assert_eq!(e.exit_code(), 2);
    }
}

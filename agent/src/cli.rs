//! Command-line grammar of `berth` and the parsers of its values.
//!
//! The grammar is a clap derive tree (`Cli` → `Command` → `JailCommand`);
//! the value parsers (`parse_size`, `parse_cpus`, `parse_signal`,
//! `parse_name`) turn text into checked values so that a bad value is refused
//! before anything is created. `render_parse_error` folds clap's multi-line
//! report into the single `berth: error: ...` line a user sees.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Default directory holding the state of named jails.
pub const DEFAULT_STATE_DIR: &str = "/run/berth";
/// Default cgroup, in every hierarchy, under which jails are created.
pub const DEFAULT_CGROUP_PARENT: &str = "berth";
/// Largest accepted `--cpus`: more than any gateway has.
pub const MAX_CPUS: f64 = 1024.0;
/// Longest accepted jail or vendor name.
pub const MAX_NAME_LEN: usize = 32;

/// `berth`: the command line of a Berth gateway.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about = "The command line of a Berth gateway")]
pub struct Cli {
    /// State directory: of named jails for `berth jail` (default /run/berth),
    /// of the running berthd for its commands (default /var/lib/berth).
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Cgroup (in every hierarchy) under which jails are created.
    #[arg(long, global = true, value_name = "NAME", default_value = DEFAULT_CGROUP_PARENT,
          value_parser = parse_cgroup_parent)]
    pub cgroup_parent: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run and manage jails.
    #[command(subcommand)]
    Jail(JailCommand),
    /// Show the devices this gateway detects, as they come and go.
    Detect(crate::detect::DetectArgs),
    /// Show what on this host does not match a board configuration.
    CheckBoard(crate::board::host::CheckBoardArgs),
    /// Talk to the running berthd: approvals, pairing, devices, jails.
    #[command(flatten)]
    Daemon(crate::daemon::cli::DaemonCommand),
}

/// `berth jail ...`.
#[derive(Debug, Subcommand)]
pub enum JailCommand {
    /// Run a command in a fresh jail and remove the jail when it exits.
    Run(RunArgs),
    /// Create a named jail without starting it.
    Create(CreateArgs),
    /// Start a created jail.
    Start {
        /// Jail name.
        #[arg(value_parser = parse_name)]
        name: String,
    },
    /// Run a command inside a running jail.
    Exec {
        /// Jail name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Command and arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        cmd: Vec<OsString>,
    },
    /// Stop a jail: SIGTERM, then SIGKILL after the grace time.
    Stop {
        /// Jail name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Seconds to wait after SIGTERM before SIGKILL.
        #[arg(long, short = 't', value_name = "SECS", default_value_t = 10)]
        time: u64,
    },
    /// Send a signal to a jail's init.
    Kill {
        /// Jail name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Signal name (TERM, SIGKILL, ...) or number.
        #[arg(long, short = 's', value_name = "SIG", default_value = "KILL",
              value_parser = parse_signal)]
        signal: i32,
    },
    /// Remove a stopped jail (with --force, a running one too).
    Rm {
        /// Jail name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Kill the jail first if it is running.
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// List named jails.
    Ls {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Dispose of a jail berthd manages and provision it anew from the
    /// current plan (asks berthd; the same as `berth jail-reset`).
    Reset {
        /// Jail name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show a jail's resource usage.
    Stats {
        /// Jail name.
        #[arg(value_parser = parse_name)]
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `berth jail run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Jail name (default: generated).
    #[arg(long, value_name = "N", value_parser = parse_name)]
    pub name: Option<String>,
    /// Jail options.
    #[command(flatten)]
    pub opts: JailOpts,
    /// Command and arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<OsString>,
}

/// `berth jail create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Jail name.
    #[arg(value_parser = parse_name)]
    pub name: String,
    /// Jail options.
    #[command(flatten)]
    pub opts: JailOpts,
    /// Command and arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub cmd: Vec<OsString>,
}

/// Options shared by `run` and `create`.
#[derive(Debug, Clone, Args)]
pub struct JailOpts {
    /// Root filesystem directory of the jail.
    #[arg(long, value_name = "DIR")]
    pub rootfs: PathBuf,
    /// Vendor owning the jail (selects its bridge with --net).
    #[arg(long, value_name = "V", default_value = "default", value_parser = parse_name)]
    pub vendor: String,
    /// Memory limit: bytes, or K/M/G (KiB/MiB/GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub memory: Option<u64>,
    /// Largest number of tasks.
    #[arg(long, value_name = "N", value_parser = parse_pids)]
    pub pids: Option<u64>,
    /// CPU limit in CPUs (0.5 = half of one CPU).
    #[arg(long, value_name = "CPUS", value_parser = parse_cpus)]
    pub cpus: Option<f64>,
    /// Put the jail on its vendor's bridge with an address and NAT egress.
    #[arg(long)]
    pub net: bool,
    /// Hostname inside the jail (default: the jail name).
    #[arg(long, value_name = "H", value_parser = parse_hostname)]
    pub hostname: Option<String>,
    /// Map root in the jail to an unprivileged user on the host.
    #[arg(long)]
    pub user_ns: bool,
    /// Run on a throwaway overlay of the rootfs instead of the rootfs itself.
    #[arg(long)]
    pub overlay: bool,
    /// Extra read-only lower layer (repeatable, topmost last); implies --overlay.
    #[arg(long = "layer", value_name = "DIR")]
    pub layers: Vec<PathBuf>,
}

/// Parses a size: plain bytes, or K/M/G, KiB/MiB/GiB (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    if digits.is_empty() {
        return Err(
            "expected a number of bytes with an optional K, M, G, KiB, MiB or GiB suffix"
                .to_string(),
        );
    }
    let shift = match suffix {
        "" | "B" | "b" => 0,
        "K" | "k" | "KiB" | "KB" | "kB" => 10,
        "M" | "m" | "MiB" | "MB" => 20,
        "G" | "g" | "GiB" | "GB" => 30,
        other => {
            return Err(format!(
                "unknown size suffix '{other}' (use K, M, G, KiB, MiB, GiB or plain bytes)"
            ))
        }
    };
    let n: u64 = digits.parse().map_err(|_| "number too large".to_string())?;
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| "size too large".to_string())?;
    if bytes == 0 {
        return Err("size must be greater than 0".to_string());
    }
    Ok(bytes)
}

/// Parses a task limit: a whole number of at least 1.
pub fn parse_pids(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a whole number of tasks".to_string()),
    }
}

/// Parses a CPU count: a positive decimal up to [`MAX_CPUS`].
pub fn parse_cpus(text: &str) -> Result<f64, String> {
    let v: f64 = text
        .trim()
        .parse()
        .map_err(|_| "expected a number of CPUs such as 0.5 or 2".to_string())?;
    if !v.is_finite() || v <= 0.0 {
        return Err("must be greater than 0".to_string());
    }
    if v > MAX_CPUS {
        return Err(format!("must be at most {MAX_CPUS}"));
    }
    // Below 1 ms per 100 ms period the kernel refuses the quota.
    if v < 0.01 {
        return Err("must be at least 0.01".to_string());
    }
    Ok(v)
}

/// Parses a jail or vendor name: 1 to 32 of `[a-z0-9-]`, not starting
/// with `-` (it becomes a directory, cgroup and interface name part; the
/// same rule as `jail::Name`).
pub fn parse_name(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("name is empty".to_string());
    }
    if text.len() > MAX_NAME_LEN {
        return Err(format!("name longer than {MAX_NAME_LEN} bytes"));
    }
    if let Some(c) = text
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "character '{c}' not allowed (use a-z, 0-9 and '-')"
        ));
    }
    if text.starts_with('-') {
        return Err("name must not start with '-'".to_string());
    }
    Ok(text.to_string())
}

/// Parses a cgroup parent: one or more `/`-separated names of
/// `[A-Za-z0-9_.-]` (not `.` or `..`).
pub fn parse_cgroup_parent(text: &str) -> Result<String, String> {
    let trimmed = text.trim_matches('/');
    if trimmed.is_empty() {
        return Err("cgroup parent is empty".to_string());
    }
    for part in trimmed.split('/') {
        if part.is_empty() || part == ".." || part == "." {
            return Err("empty, '.' and '..' components are not allowed".to_string());
        }
        if let Some(c) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            return Err(format!("character '{c}' not allowed in a cgroup name"));
        }
    }
    Ok(trimmed.to_string())
}

/// Parses a hostname (RFC 1123 label characters, at most 64 bytes).
pub fn parse_hostname(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 64 {
        return Err("hostname must be 1 to 64 bytes".to_string());
    }
    if text.starts_with('-')
        || !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err("hostname may hold only A-Z, a-z, 0-9, '-' and '.'".to_string());
    }
    Ok(text.to_string())
}

/// Signal names known to `--signal`, with their Linux numbers.
const SIGNALS: &[(&str, i32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ABRT", 6),
    ("KILL", 9),
    ("USR1", 10),
    ("USR2", 12),
    ("ALRM", 14),
    ("TERM", 15),
    ("CONT", 18),
    ("STOP", 19),
    ("WINCH", 28),
];

/// Parses a signal: `TERM`, `SIGTERM`, `term` or a number 1..=64.
pub fn parse_signal(text: &str) -> Result<i32, String> {
    if let Ok(n) = text.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err("signal number must be 1 to 64".to_string())
        };
    }
    let upper = text.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(name, _)| *name == bare)
        .map(|(_, n)| *n)
        .ok_or_else(|| format!("unknown signal '{text}'"))
}

/// Name of a signal number, for messages (`"KILL"` for 9).
pub fn signal_name(n: i32) -> Option<&'static str> {
    SIGNALS.iter().find(|(_, v)| *v == n).map(|(name, _)| *name)
}

/// Folds a clap parse error into the one line berth prints after
/// `berth: error: `: clap's first line without its `error: ` prefix.
pub fn render_parse_error(err: &clap::Error) -> String {
    let text = err.to_string();
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let msg = first.strip_prefix("error: ").unwrap_or(first).trim();
    let mut out = msg.to_string();
    // Make the first letter lowercase, as every berth message is.
    if let Some(c) = out.chars().next() {
        if c.is_ascii_uppercase() {
            out.replace_range(..1, &c.to_ascii_lowercase().to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2K"), Ok(2048));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("12Q")
            .unwrap_err()
            .contains("unknown size suffix 'Q'"));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("-5M").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
        assert!(parse_size("17179869184G").is_err());
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5"), Ok(0.5));
        assert_eq!(parse_cpus("2"), Ok(2.0));
        assert_eq!(parse_cpus("0"), Err("must be greater than 0".to_string()));
        assert!(parse_cpus("-1").is_err());
        assert!(parse_cpus("nan").is_err());
        assert!(parse_cpus("inf").is_err());
        assert!(parse_cpus("abc").is_err());
        assert!(parse_cpus("0.001").is_err());
        assert!(parse_cpus("4096").is_err());
    }

    #[test]
    fn names() {
        assert!(parse_name("web-1").is_ok());
        assert!(parse_name("").is_err());
        assert!(parse_name("../x").is_err());
        assert!(parse_name("a/b").is_err());
        assert!(parse_name("Web").is_err());
        assert!(parse_name("a_b").is_err());
        assert!(parse_name("-x").is_err());
        assert!(parse_name(&"a".repeat(32)).is_ok());
        assert!(parse_name(&"a".repeat(33)).is_err());
        assert_eq!(parse_cgroup_parent("/berth/x/"), Ok("berth/x".to_string()));
        assert!(parse_cgroup_parent("berth/../x").is_err());
        assert!(parse_cgroup_parent("/").is_err());
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("KILL"), Ok(9));
        assert_eq!(parse_signal("sigterm"), Ok(15));
        assert_eq!(parse_signal("SIGUSR1"), Ok(10));
        assert_eq!(parse_signal("2"), Ok(2));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("FOO").is_err());
        assert_eq!(signal_name(9), Some("KILL"));
    }

    #[test]
    fn run_parses_full_option_set() {
        let cli = Cli::try_parse_from([
            "berth",
            "--state-dir",
            "/tmp/s",
            "jail",
            "run",
            "--rootfs",
            "/r",
            "--name",
            "n",
            "--vendor",
            "acme",
            "--memory",
            "64M",
            "--pids",
            "20",
            "--cpus",
            "0.5",
            "--net",
            "--hostname",
            "h",
            "--user-ns",
            "--layer",
            "/l1",
            "--layer",
            "/l2",
            "--",
            "echo",
            "-n",
            "hi",
        ])
        .unwrap();
        assert_eq!(cli.state_dir, Some(PathBuf::from("/tmp/s")));
        assert_eq!(cli.cgroup_parent, "berth");
        let Command::Jail(JailCommand::Run(run)) = cli.command else {
            panic!("not run");
        };
        assert_eq!(run.name.as_deref(), Some("n"));
        assert_eq!(run.opts.memory, Some(64 << 20));
        assert_eq!(run.opts.pids, Some(20));
        assert_eq!(run.opts.cpus, Some(0.5));
        assert!(run.opts.net && run.opts.user_ns && !run.opts.overlay);
        assert_eq!(run.opts.layers.len(), 2);
        assert_eq!(run.cmd, vec!["echo", "-n", "hi"]);
    }

    #[test]
    fn global_options_after_subcommand() {
        let cli = Cli::try_parse_from([
            "berth",
            "jail",
            "ls",
            "--state-dir",
            "/x",
            "--cgroup-parent",
            "p/q",
        ])
        .unwrap();
        assert_eq!(cli.state_dir, Some(PathBuf::from("/x")));
        assert_eq!(cli.cgroup_parent, "p/q");
    }

    #[test]
    fn jail_reset_names_a_jail() {
        let cli = Cli::try_parse_from(["berth", "jail", "reset", "acme-meter", "--json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Jail(JailCommand::Reset { ref name, json: true }) if name == "acme-meter"
        ));
        assert!(Cli::try_parse_from(["berth", "jail", "reset", "Bad/Name"]).is_err());
        assert!(Cli::try_parse_from(["berth", "jail", "reset"]).is_err());
    }

    #[test]
    fn errors_are_one_lowercase_line() {
        let cases: &[&[&str]] = &[
            &[
                "berth", "jail", "run", "--rootfs", "/r", "--memory", "12Q", "--", "true",
            ],
            &[
                "berth", "jail", "run", "--rootfs", "/r", "--cpus", "0", "--", "true",
            ],
            &[
                "berth", "jail", "run", "--rootfs", "/r", "--bogus", "--", "true",
            ],
            &["berth", "jail", "run", "--rootfs", "/r"],
            &["berth", "jail", "run", "--", "true"],
            &["berth", "jail", "kill", "x", "--signal", "FOO"],
        ];
        for args in cases {
            let err = Cli::try_parse_from(*args).unwrap_err();
            let line = render_parse_error(&err);
            assert!(!line.is_empty() && !line.contains('\n'), "{args:?}: {line}");
            assert!(!line.starts_with("error"), "{line}");
        }
        let err = Cli::try_parse_from(cases[0]).unwrap_err();
        assert_eq!(
            render_parse_error(&err),
            "invalid value '12Q' for '--memory <SIZE>': unknown size suffix 'Q' (use K, M, G, KiB, MiB, GiB or plain bytes)"
        );
        let err = Cli::try_parse_from(cases[1]).unwrap_err();
        assert_eq!(
            render_parse_error(&err),
            "invalid value '0' for '--cpus <CPUS>': must be greater than 0"
        );
        let err = Cli::try_parse_from(cases[2]).unwrap_err();
        assert_eq!(
            render_parse_error(&err),
            "unexpected argument '--bogus' found"
        );
    }
}

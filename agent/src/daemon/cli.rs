//! `berth pending | approve | deny | pair | devices | jails | status | logs |
//! jail-reset`: the technician's commands, sent to `berthd` over its local
//! API socket ([`super::api`]).
//!
//! Exit codes follow `berth`'s convention: 0 done, 2 refused for bad input
//! (unknown request id, a vendor not in the registry, …), 1 failed (daemon
//! not running, socket refused). Errors are one `berth: error: ...` line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use super::api::{read_frame, write_frame, Request, Response};

/// How long the client waits for the daemon.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The daemon commands of `berth`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum DaemonCommand {
    /// List provisioning requests waiting for approval
    Pending {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Approve a provisioning request
    Approve {
        /// Request id (from `berth pending`)
        id: u64,
    },
    /// Deny a provisioning request
    Deny {
        /// Request id (from `berth pending`)
        id: u64,
        /// Why (kept in the audit log and sent to the vendor)
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Approve a vendor's new devices automatically for a while
    Pair {
        /// Vendor id
        #[arg(long, value_name = "VENDOR")]
        vendor: String,
        /// How long: e.g. 10m, 1h, 90s
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_window)]
        window: Duration,
    },
    /// List known devices and their provisioning state
    Devices {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// List the jails berthd manages
    Jails {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show the daemon's status
    Status {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Print a jail's console log
    Logs {
        /// Jail name
        jail: String,
        /// Print JSON (the log as one string) instead of the text
        #[arg(long)]
        json: bool,
    },
    /// Remove a jail and forget its plan (the device is provisioned anew)
    JailReset {
        /// Jail name
        jail: String,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

fn parse_window(text: &str) -> Result<Duration, String> {
    super::config::parse_duration(text)
}

/// Why a daemon command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// berthd is not there.
    #[error("cannot reach berthd at {path}: {source} (is berthd running?)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("talking to berthd at {path}: {reason}")]
    Exchange {
        /// The socket.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// berthd refused the request (bad input).
    #[error("{0}")]
    Refused(String),
    /// berthd failed to act.
    #[error("{0}")]
    Failed(String),
    /// Output could not be written.
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
}

impl ClientError {
    /// 2 for a refusal, 1 for a failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Refused(_) => crate::EXIT_USAGE,
            _ => crate::EXIT_FAILURE,
        }
    }
}

/// Runs a daemon command against the berthd of `state_dir`, printing its
/// result on stdout and any error as one `berth: error: ...` line.
pub fn main(cmd: DaemonCommand, state_dir: &Path) -> ExitCode {
    match run_client(cmd, state_dir) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berth: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Runs a daemon command; the caller prints the error.
pub fn run_client(cmd: DaemonCommand, state_dir: &Path) -> Result<ExitCode, ClientError> {
    let path = super::config::socket_path(state_dir);
    let req = request_of(&cmd);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Exchange {
            path: path.clone(),
            reason: format!("cannot start the runtime: {e}"),
        })?;
    let resp = rt.block_on(exchange(&path, &req))?;
    match resp {
        Response::Ok { data } => {
            let mut out = std::io::stdout().lock();
            render(&cmd, &data, &mut out).map_err(ClientError::Output)?;
            Ok(ExitCode::SUCCESS)
        }
        Response::Error {
            usage: true,
            message,
        } => Err(ClientError::Refused(message)),
        Response::Error {
            usage: false,
            message,
        } => Err(ClientError::Failed(message)),
    }
}

/// The API request of a command.
pub fn request_of(cmd: &DaemonCommand) -> Request {
    match cmd {
        DaemonCommand::Pending { .. } => Request::Pending,
        DaemonCommand::Approve { id } => Request::Approve { id: *id },
        DaemonCommand::Deny { id, reason } => Request::Deny {
            id: *id,
            reason: reason.clone(),
        },
        DaemonCommand::Pair { vendor, window } => Request::Pair {
            vendor: vendor.clone(),
            secs: window.as_secs().max(1),
        },
        DaemonCommand::Devices { .. } => Request::Devices,
        DaemonCommand::Jails { .. } => Request::Jails,
        DaemonCommand::Status { .. } => Request::Status,
        DaemonCommand::Logs { jail, .. } => Request::Logs { jail: jail.clone() },
        DaemonCommand::JailReset { jail, .. } => Request::JailReset { jail: jail.clone() },
    }
}

/// Sends one request and reads the response, each bounded in time.
pub async fn exchange(path: &Path, req: &Request) -> Result<Response, ClientError> {
    let io = |reason: String| ClientError::Exchange {
        path: path.to_path_buf(),
        reason,
    };
    let mut s = tokio::time::timeout(CLIENT_TIMEOUT, tokio::net::UnixStream::connect(path))
        .await
        .map_err(|_| io("timed out connecting".into()))?
        .map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    tokio::time::timeout(CLIENT_TIMEOUT, async {
        write_frame(&mut s, req).await?;
        read_frame::<Response, _>(&mut s).await
    })
    .await
    .map_err(|_| io(format!("no answer within {}s", CLIENT_TIMEOUT.as_secs())))?
    .map_err(|e| io(e.to_string()))
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn table(out: &mut dyn Write, data: &Value, cols: &[(&str, &str, usize)]) -> std::io::Result<()> {
    let header: Vec<String> = cols.iter().map(|(h, _, w)| format!("{h:<w$}")).collect();
    writeln!(out, "{}", header.join(" ").trim_end())?;
    for row in data.as_array().into_iter().flatten() {
        let line: Vec<String> = cols
            .iter()
            .map(|(_, k, w)| format!("{:<w$}", s(row, k)))
            .collect();
        writeln!(out, "{}", line.join(" ").trim_end())?;
    }
    Ok(())
}

/// Prints a command's result.
pub fn render(cmd: &DaemonCommand, data: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    let json = |out: &mut dyn Write| -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(data).unwrap_or_else(|_| data.to_string());
        writeln!(out, "{text}")
    };
    match cmd {
        DaemonCommand::Pending { json: true }
        | DaemonCommand::Devices { json: true }
        | DaemonCommand::Jails { json: true }
        | DaemonCommand::Status { json: true }
        | DaemonCommand::Logs { json: true, .. }
        | DaemonCommand::JailReset { json: true, .. } => json(out),
        DaemonCommand::Pending { .. } => table(
            out,
            data,
            &[
                ("ID", "id", 5),
                ("VENDOR", "vendor", 12),
                ("MODEL", "model", 14),
                ("SERIAL", "serial", 16),
                ("PLAN", "plan_id", 16),
                ("VERSION", "version", 7),
                ("JAIL", "jail", 16),
            ],
        ),
        DaemonCommand::Devices { .. } => table(
            out,
            data,
            &[
                ("ID", "id", 5),
                ("VENDOR", "vendor", 12),
                ("SERIAL", "serial", 16),
                ("TRANSPORT", "transport", 9),
                ("STATE", "stage", 17),
                ("PLAN", "plan_id", 16),
                ("VERSION", "version", 7),
                ("JAIL", "jail", 16),
                ("PULL", "pull", 22),
                ("ERROR", "error", 0),
            ],
        ),
        DaemonCommand::Jails { .. } => table(
            out,
            data,
            &[
                ("NAME", "name", 24),
                ("VENDOR", "vendor", 12),
                ("STATE", "state", 9),
                ("PID", "pid", 8),
                ("ADDRESS", "address", 15),
                ("PLAN", "plan_id", 16),
                ("VERSION", "version", 0),
            ],
        ),
        DaemonCommand::Status { .. } => {
            if let Some(m) = data.as_object() {
                for (k, v) in m {
                    let v = match v {
                        Value::String(t) => t.clone(),
                        other => other.to_string(),
                    };
                    writeln!(out, "{k}: {v}")?;
                }
            }
            Ok(())
        }
        DaemonCommand::Logs { .. } => write!(out, "{}", data.as_str().unwrap_or("")),
        DaemonCommand::Approve { id } => writeln!(out, "approved request {id}"),
        DaemonCommand::Deny { id, .. } => writeln!(out, "denied request {id}"),
        DaemonCommand::Pair { vendor, .. } => {
            writeln!(out, "pairing {vendor} until {}", s(data, "until_rfc3339"))
        }
        DaemonCommand::JailReset { jail, .. } => writeln!(out, "reset jail {jail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        cmd: DaemonCommand,
    }

    fn parse(args: &[&str]) -> Result<DaemonCommand, clap::Error> {
        let mut v = vec!["berth"];
        v.extend_from_slice(args);
        T::try_parse_from(v).map(|t| t.cmd)
    }

    #[test]
    fn grammar() {
        assert_eq!(
            parse(&["pending", "--json"]).unwrap(),
            DaemonCommand::Pending { json: true }
        );
        assert_eq!(
            parse(&["approve", "7"]).unwrap(),
            DaemonCommand::Approve { id: 7 }
        );
        assert_eq!(
            parse(&["deny", "7", "--reason", "not ours"]).unwrap(),
            DaemonCommand::Deny {
                id: 7,
                reason: Some("not ours".into())
            }
        );
        let p = parse(&["pair", "--vendor", "acme", "--for", "10m"]).unwrap();
        assert_eq!(
            request_of(&p),
            Request::Pair {
                vendor: "acme".into(),
                secs: 600
            }
        );
        assert!(parse(&["pair", "--vendor", "acme", "--for", "soon"]).is_err());
        assert!(parse(&["approve", "x"]).is_err());
        assert_eq!(
            request_of(&parse(&["jail-reset", "acme-meter"]).unwrap()),
            Request::JailReset {
                jail: "acme-meter".into()
            }
        );
        assert_eq!(
            parse(&["logs", "acme-meter", "--json"]).unwrap(),
            DaemonCommand::Logs {
                jail: "acme-meter".into(),
                json: true
            }
        );
    }

    #[test]
    fn logs_and_reset_print_json_when_asked() {
        let mut out = Vec::new();
        let cmd = parse(&["logs", "m", "--json"]).unwrap();
        render(&cmd, &Value::String("a\"b\n".into()), &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "\"a\\\"b\\n\"\n");
        let mut out = Vec::new();
        let cmd = parse(&["jail-reset", "m", "--json"]).unwrap();
        let data = serde_json::json!({"jail": "m", "request": 3});
        render(&cmd, &data, &mut out).unwrap();
        let back: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, data);
        let mut out = Vec::new();
        render(&parse(&["jail-reset", "m"]).unwrap(), &data, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "reset jail m\n");
    }

    #[test]
    fn tables_show_rows() {
        let data = serde_json::json!([{"id": 3, "vendor": "acme", "model": "M", "serial": "S1",
            "plan_id": "p", "version": 2, "jail": "acme-m"}]);
        let mut out = Vec::new();
        render(&DaemonCommand::Pending { json: false }, &data, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID    VENDOR"), "{text}");
        assert!(lines[1].starts_with("3     acme"), "{text}");
    }

    /// A one-shot fake berthd on `<dir>/berthd.sock` answering `resp`;
    /// returns what it was asked.
    fn fake_daemon(dir: &Path, resp: Response) -> std::thread::JoinHandle<Request> {
        use std::io::{Read, Write as _};
        let l =
            std::os::unix::net::UnixListener::bind(super::super::config::socket_path(dir)).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut len = [0u8; 4];
            s.read_exact(&mut len).unwrap();
            let mut buf = vec![0; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut buf).unwrap();
            let out = serde_json::to_vec(&resp).unwrap();
            s.write_all(&(out.len() as u32).to_be_bytes()).unwrap();
            s.write_all(&out).unwrap();
            serde_json::from_slice(&buf).unwrap()
        })
    }

    #[test]
    fn refusals_exit_2_and_failures_exit_1() {
        let d = tempfile::tempdir().unwrap();
        let srv = fake_daemon(d.path(), Response::usage("no request 9"));
        let e = run_client(DaemonCommand::Approve { id: 9 }, d.path()).unwrap_err();
        assert_eq!(srv.join().unwrap(), Request::Approve { id: 9 });
        assert_eq!(
            (e.exit_code(), e.to_string()),
            (2, "no request 9".to_string())
        );
        std::fs::remove_file(d.path().join("berthd.sock")).unwrap();
        let srv = fake_daemon(d.path(), Response::failure("state store broke"));
        let e = run_client(DaemonCommand::Status { json: true }, d.path()).unwrap_err();
        srv.join().unwrap();
        assert_eq!(e.exit_code(), 1);
        std::fs::remove_file(d.path().join("berthd.sock")).unwrap();
        let srv = fake_daemon(
            d.path(),
            Response::Ok {
                data: serde_json::json!({"id": 4, "stage": "denied"}),
            },
        );
        let code = run_client(
            DaemonCommand::Deny {
                id: 4,
                reason: Some("wrong site".into()),
            },
            d.path(),
        )
        .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        assert_eq!(
            srv.join().unwrap(),
            Request::Deny {
                id: 4,
                reason: Some("wrong site".into())
            }
        );
    }

    #[test]
    fn no_daemon_is_a_failure_naming_the_socket() {
        let d = tempfile::tempdir().unwrap();
        let e = run_client(DaemonCommand::Status { json: false }, d.path()).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "cannot reach berthd at {}/berthd.sock",
                d.path().display()
            )),
            "{msg}"
        );
    }
}

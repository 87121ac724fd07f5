//! The plan's validation checks, run against a started jail (in the spirit
//! of InSpec): each retries until it passes or its timeout runs out, and
//! reports what it saw.
//!
//! - process running: the `comm` of every process in the jail's pid
//!   namespace (found through `/proc/<pid>/ns/pid`, proc(5));
//! - TCP port listening: `/proc/<jail init>/net/tcp{,6}`, which show the
//!   jail's network namespace (state `0A` is LISTEN);
//! - HTTP GET: a plain HTTP/1.0 request from the host to the jail's address;
//! - command exit status: [`jail::Jail::exec`];
//! - file exists: resolved inside `/proc/<jail init>/root` with
//!   `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS` (openat2(2)), so a symlink in
//!   the jail can never point the check at a host file.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use protocol::provision::report::MAX_CHECK_OUTPUT;
use protocol::provision::{App, CheckKind, CheckResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Pause between tries of a failing check.
const RETRY: Duration = Duration::from_millis(200);

/// What a check needs of the jail.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The jail.
    pub jail: &'a jail::Jail,
    /// Host pid of the jail's init.
    pub pid: i32,
    /// The jail's address, when it has a network.
    pub address: Option<Ipv4Addr>,
}

/// Runs every check of every app, in order; returns all results (it does
/// not stop at the first failure, so the vendor sees the whole picture).
pub async fn run_all(apps: &[App], t: Target<'_>) -> Vec<CheckResult> {
    let mut out = Vec::new();
    for app in apps {
        for (i, c) in app.checks.iter().enumerate() {
            let timeout = Duration::from_millis(u64::from(c.timeout_ms.max(1)));
            let start = Instant::now();
            let (passed, output) = run_one(&c.kind, t, timeout).await;
            let output = protocol::provision::report::truncate(&output, MAX_CHECK_OUTPUT);
            out.push(CheckResult {
                app: app.name.clone(),
                index: u32::try_from(i).unwrap_or(u32::MAX),
                passed,
                output: output.to_string(),
                elapsed_ms: u32::try_from(start.elapsed().as_millis()).unwrap_or(u32::MAX),
            });
        }
    }
    out
}

/// One check, retried until it passes or `timeout` runs out.
pub async fn run_one(kind: &CheckKind, t: Target<'_>, timeout: Duration) -> (bool, String) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (ok, out) =
            match tokio::time::timeout(left.max(Duration::from_millis(1)), once(kind, t)).await {
                Ok(r) => r,
                Err(_) => (false, format!("timed out after {} ms", timeout.as_millis())),
            };
        if ok || Instant::now() + RETRY >= deadline {
            return (ok, out);
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn once(kind: &CheckKind, t: Target<'_>) -> (bool, String) {
    match kind {
        CheckKind::ProcessRunning { name } => {
            let pid = t.pid;
            let name = name.clone();
            blocking(move || match processes_in_pidns(Path::new("/proc"), pid) {
                Ok(comms) if comms.contains(&name) => (true, format!("process {name} is running")),
                Ok(comms) => (
                    false,
                    format!("no process {name}; running: {}", comms.join(" ")),
                ),
                Err(e) => (false, format!("cannot list the jail's processes: {e}")),
            })
            .await
        }
        CheckKind::TcpListening { port } => {
            let (pid, port) = (t.pid, *port);
            blocking(move || {
                let mut text = String::new();
                for f in ["tcp", "tcp6"] {
                    let p = format!("/proc/{pid}/net/{f}");
                    match std::fs::read_to_string(&p) {
                        Ok(t) => text.push_str(&t),
                        Err(e) if f == "tcp" => return (false, format!("cannot read {p}: {e}")),
                        Err(_) => {}
                    }
                }
                if listening_ports(&text).contains(&port) {
                    (true, format!("tcp port {port} is listening"))
                } else {
                    (false, format!("nothing listens on tcp port {port}"))
                }
            })
            .await
        }
        CheckKind::HttpGet { port, path, status } => {
            let Some(addr) = t.address else {
                return (false, "the jail has no network address".into());
            };
            match http_status(addr, *port, path).await {
                Ok(got) if got == *status => (true, format!("GET {path}: {got}")),
                Ok(got) => (false, format!("GET {path}: {got}, expected {status}")),
                Err(e) => (false, format!("GET http://{addr}:{port}{path}: {e}")),
            }
        }
        CheckKind::CommandExit { argv, code } => {
            let mut opts = jail::ExecOptions::new(argv.clone());
            opts.stdio = jail::ExecStdio::Capture;
            match t.jail.exec(opts).await {
                Ok(o) => {
                    let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&o.stderr));
                    let ok = o.code == *code;
                    (
                        ok,
                        format!("exit {} (expected {code}): {}", o.code, text.trim()),
                    )
                }
                Err(e) => (false, format!("cannot run {argv:?}: {e}")),
            }
        }
        CheckKind::FileExists { path } => {
            let (pid, path) = (t.pid, path.clone());
            blocking(move || {
                let root = format!("/proc/{pid}/root");
                match file_exists_in_root(Path::new(&root), &path) {
                    Ok(true) => (true, format!("{path} exists")),
                    Ok(false) => (false, format!("{path} does not exist")),
                    Err(e) => (false, format!("cannot look up {path}: {e}")),
                }
            })
            .await
        }
    }
}

async fn blocking(f: impl FnOnce() -> (bool, String) + Send + 'static) -> (bool, String) {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| (false, format!("check task failed: {e}")))
}

/// The `comm` of every process in the pid namespace of `pid`, under the
/// proc root `proc`.
pub fn processes_in_pidns(proc: &Path, pid: i32) -> std::io::Result<Vec<String>> {
    let ns = std::fs::read_link(proc.join(pid.to_string()).join("ns/pid"))?;
    let mut out = Vec::new();
    for e in std::fs::read_dir(proc)?.flatten() {
        let name = e.file_name();
        let Some(p) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        // A process may exit while we look: skip it.
        match std::fs::read_link(e.path().join("ns/pid")) {
            Ok(n) if n == ns => {}
            _ => continue,
        }
        if let Ok(comm) = std::fs::read_to_string(proc.join(p).join("comm")) {
            out.push(comm.trim_end().to_string());
        }
    }
    Ok(out)
}

/// Local ports in state LISTEN (`0A`) in `/proc/net/tcp{,6}` text.
pub fn listening_ports(text: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || f[3] != "0A" {
            continue;
        }
        if let Some((_, port)) = f[1].rsplit_once(':') {
            if let Ok(p) = u16::from_str_radix(port, 16) {
                out.push(p);
            }
        }
    }
    out
}

/// Whether `path` (absolute, inside the jail) exists under `root`, resolved
/// as if `root` were `/` and without following magic links.
pub fn file_exists_in_root(root: &Path, path: &str) -> std::io::Result<bool> {
    use rustix::fs::{openat2, Mode, OFlags, ResolveFlags, CWD};
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let _ = CWD;
    match openat2(
        &dir,
        rel,
        OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(_) => Ok(true),
        Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `GET path` over HTTP/1.0 to `addr:port`; returns the status code.
pub async fn http_status(addr: Ipv4Addr, port: u16, path: &str) -> std::io::Result<u16> {
    let mut s = tokio::net::TcpStream::connect((addr, port)).await?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}:{port}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    // The status line is all we need; read until its end (bounded).
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not an HTTP status line: {line:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_sockets() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 10 0 0 10 0\n\
   1: 0100007F:0050 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 10 0 0 10 0\n";
        assert_eq!(listening_ports(text), vec![8080]);
    }

    #[test]
    fn file_checks_stay_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/app.conf"), "x").unwrap();
        let outside = d.path().join("secret");
        std::fs::write(&outside, "x").unwrap();
        // An absolute symlink resolves inside the root, not on the host.
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("etc/up")).unwrap();
        assert!(file_exists_in_root(&root, "/etc/app.conf").unwrap());
        assert!(!file_exists_in_root(&root, "/etc/missing").unwrap());
        assert!(!file_exists_in_root(&root, "/escape/x").unwrap());
        // `..` is clamped at the root: /etc/up -> /secret inside the root.
        assert!(!file_exists_in_root(&root, "/etc/up/x").unwrap());
    }

    #[test]
    fn lists_processes_of_a_fake_proc() {
        let d = tempfile::tempdir().unwrap();
        for (pid, ns, comm) in [
            ("1", "pid:[1]", "init"),
            ("7", "pid:[2]", "app"),
            ("9", "pid:[2]", "web"),
        ] {
            let p = d.path().join(pid);
            std::fs::create_dir_all(p.join("ns")).unwrap();
            std::os::unix::fs::symlink(ns, p.join("ns/pid")).unwrap();
            std::fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
        }
        std::fs::create_dir_all(d.path().join("self")).unwrap();
        let mut got = processes_in_pidns(d.path(), 7).unwrap();
        got.sort();
        assert_eq!(got, vec!["app", "web"]);
    }

    #[tokio::test]
    async fn http_status_of_a_local_server() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 512];
            let _ = s.read(&mut b).await;
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
        });
        assert_eq!(
            http_status(Ipv4Addr::LOCALHOST, port, "/health")
                .await
                .unwrap(),
            204
        );
    }
}

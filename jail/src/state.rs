//! Persisted state of a jail: one directory per jail under the state root.
//!
//! ```text
//! <state_root>/<name>/state.json   JailState, written atomically
//! <state_root>/<name>/exec.fifo    init blocks on it until `start`
//! <state_root>/<name>/status       payload exit status, written by init
//! <state_root>/<name>/console.log  payload stdout/stderr (Console::LogFile)
//! ```
//!
//! `state.json` is written temp file → fsync → rename → fsync directory, so
//! a power cut leaves either the old or the new record (rename(2)); on
//! tmpfs, which a power cut empties anyway, without the fsyncs. The
//! record is versioned; readers accept every version up to
//! [`STATE_VERSION`].

use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::name::Name;
use crate::spec::JailSpec;

/// Current version of [`JailState`].
pub const STATE_VERSION: u32 = 1;

/// File names inside a jail's state directory.
pub const STATE_FILE: &str = "state.json";
/// FIFO that gates the payload start.
pub const FIFO_FILE: &str = "exec.fifo";
/// Exit status written by init.
pub const STATUS_FILE: &str = "status";
/// Console log.
pub const CONSOLE_FILE: &str = "console.log";

/// State I/O failure.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O on a path.
    #[error("state {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not valid JSON of a known version.
    #[error("state {path}: {why}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where a jail is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Create began; kernel objects may exist and init may be half set up.
    Creating,
    /// Init set up and waiting on the FIFO.
    Created,
    /// Payload started.
    Running,
    /// Init exited.
    Stopped,
}

/// Payload exit as written by init.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Exit code (128 + signal when killed).
    pub code: i32,
    /// Signal that killed the payload.
    pub signal: Option<i32>,
}

/// The persisted record of one jail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JailState {
    /// Record version.
    pub version: u32,
    /// Jail name.
    pub name: Name,
    /// Vendor.
    pub vendor: Name,
    /// Phase.
    pub phase: Phase,
    /// Pid of init in the host pid namespace.
    pub pid: Option<i32>,
    /// Start time of init (field 22 of /proc/PID/stat), to tell it from a
    /// later process with a recycled pid.
    pub start_time: Option<u64>,
    /// Host veth name (when networked).
    pub host_veth: Option<String>,
    /// Address given to the jail.
    pub address: Option<Ipv4Addr>,
    /// The validated spec (exec reuses its process settings).
    pub spec: JailSpec,
    /// Seconds since the epoch at create.
    pub created_unix: u64,
}

/// Directory of jail `name`.
pub fn jail_dir(state_root: &Path, name: &str) -> PathBuf {
    state_root.join(name)
}

/// Whether `dir` is on tmpfs, whose contents do not survive a power cut
/// whatever we do: there fsync buys nothing (the default state dir,
/// `/run/berth`, is tmpfs on systemd systems, file-hierarchy(7)).
pub fn on_tmpfs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .map(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
        .unwrap_or(false)
}

/// Writes `bytes` to `path` atomically (temp file and rename(2)) and, on
/// a filesystem that outlives a power cut, durably (fsync of the file and
/// the directory). On tmpfs the fsyncs are skipped (see [`on_tmpfs`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let durable = !on_tmpfs(dir);
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    {
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        if durable {
            f.sync_all().map_err(io(&tmp))?;
        }
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    if durable {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

impl JailState {
    /// Persists to `<dir>/state.json`.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| StateError::Corrupt {
            path: dir.join(STATE_FILE),
            why: e.to_string(),
        })?;
        write_atomic(&dir.join(STATE_FILE), &bytes)
    }

    /// The phase in the record of state dir `dir`, without the rest (a
    /// scan for recovery, which needs the whole record of few jails).
    pub fn load_phase(dir: &Path) -> Result<Phase, StateError> {
        #[derive(Deserialize)]
        struct Peek {
            version: u64,
            phase: Phase,
        }
        let path = dir.join(STATE_FILE);
        let bytes = fs::read(&path).map_err(io(&path))?;
        let p: Peek = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            why: e.to_string(),
        })?;
        if p.version == 0 || p.version > u64::from(STATE_VERSION) {
            return Err(StateError::Corrupt {
                path,
                why: format!(
                    "version {} is not supported (this build reads 1..={STATE_VERSION})",
                    p.version
                ),
            });
        }
        Ok(p.phase)
    }

    /// Reads `<dir>/state.json`.
    pub fn load(dir: &Path) -> Result<JailState, StateError> {
        let path = dir.join(STATE_FILE);
        let bytes = fs::read(&path).map_err(io(&path))?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path: path.clone(),
                why: e.to_string(),
            })?;
        let version = v.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version == 0 || version > u64::from(STATE_VERSION) {
            return Err(StateError::Corrupt {
                path,
                why: format!(
                    "version {version} is not supported (this build reads 1..={STATE_VERSION})"
                ),
            });
        }
        serde_json::from_value(v).map_err(|e| StateError::Corrupt {
            path,
            why: e.to_string(),
        })
    }
}

/// Reads the exit record init wrote, if any.
pub fn read_exit(dir: &Path) -> Option<ExitRecord> {
    let bytes = fs::read(dir.join(STATUS_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Start time of a process (field 22 of /proc/PID/stat, clock ticks since
/// boot), or `None` when it is gone.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = s.get(s.rfind(')')? + 2..)?;
    // rest starts at field 3; start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Names of all jail directories under `state_root` (sorted).
pub fn list_names(state_root: &Path) -> Result<Vec<String>, StateError> {
    let rd = match fs::read_dir(state_root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(state_root)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(io(state_root))?;
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            if let Some(n) = e.file_name().to_str() {
                if Name::new(n).is_ok() {
                    out.push(n.to_owned());
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{JailOptions, JailSpec};

    fn sample() -> JailState {
        let oci = crate::oci::spec(
            crate::oci::root("/r", false),
            crate::oci::process(vec!["/bin/true".into()], Vec::new(), "/", 0, 0),
        );
        let spec = JailSpec::from_oci(
            &oci,
            &JailOptions {
                name: "s1".into(),
                vendor: "v".into(),
                ..Default::default()
            },
        )
        .unwrap();
        JailState {
            version: STATE_VERSION,
            name: spec.name.clone(),
            vendor: spec.vendor.clone(),
            phase: Phase::Creating,
            pid: Some(42),
            start_time: Some(7),
            host_veth: Some("bj0123456789ab".into()),
            address: Some(Ipv4Addr::new(10, 1, 0, 2)),
            spec,
            created_unix: 1,
        }
    }

    #[test]
    fn round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = sample();
        s.save(d.path()).unwrap();
        assert_eq!(JailState::load(d.path()).unwrap(), s);
        // No temp file left behind.
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATE_FILE)]);
    }

    #[test]
    fn overwrite_is_atomic_replace() {
        let d = tempfile::tempdir().unwrap();
        let mut s = sample();
        s.save(d.path()).unwrap();
        assert_eq!(JailState::load_phase(d.path()).unwrap(), s.phase);
        s.phase = Phase::Running;
        s.save(d.path()).unwrap();
        assert_eq!(JailState::load(d.path()).unwrap().phase, Phase::Running);
        assert_eq!(JailState::load_phase(d.path()).unwrap(), Phase::Running);
    }

    #[test]
    fn refuses_unknown_version_and_garbage() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(STATE_FILE);
        fs::write(&p, br#"{"version": 99}"#).unwrap();
        assert_eq!(
            JailState::load(d.path()).unwrap_err().to_string(),
            format!(
                "state {}: version 99 is not supported (this build reads 1..=1)",
                p.display()
            )
        );
        fs::write(&p, br#"{"version": 99, "phase": "creating"}"#).unwrap();
        assert!(JailState::load_phase(d.path())
            .unwrap_err()
            .to_string()
            .contains("version 99 is not supported"));
        fs::write(&p, b"{half").unwrap();
        assert!(JailState::load(d.path())
            .unwrap_err()
            .to_string()
            .starts_with(&format!("state {}: ", p.display())));
        assert!(JailState::load_phase(d.path()).is_err());
    }

    #[test]
    fn lists_only_valid_names() {
        let d = tempfile::tempdir().unwrap();
        for n in ["b", "a", "Not-Valid"] {
            fs::create_dir(d.path().join(n)).unwrap();
        }
        fs::write(d.path().join("c"), b"file").unwrap();
        assert_eq!(list_names(d.path()).unwrap(), vec!["a", "b"]);
        assert!(list_names(&d.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn start_time_of_self() {
        let me = std::process::id() as i32;
        let t = proc_start_time(me).unwrap();
        assert_eq!(proc_start_time(me), Some(t));
        assert_eq!(proc_start_time(i32::MAX), None);
    }
}

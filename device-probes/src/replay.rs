//! Replay protection for native announces: the last counter accepted from
//! each device (vendor and serial), and the rule that refuses an older one.
//!
//! The rule (docs/announce.md §4): an announce whose `counter` is below the
//! last one accepted from that vendor and serial is a replay and is dropped
//! (counted as [`DropReason::Replay`]). An announce with the *same* counter
//! passes only when it is the very same announce again (same signature,
//! which covers every field): BLE advertisements and retained MQTT messages
//! repeat one announce many times, and those repeats are not attacks. The
//! same counter with other content is a replay.
//!
//! [`ReplayGuard`] is shared by every source of one gateway (a device seen
//! on two transports has one counter). It is bounded: past
//! [`DEFAULT_CAPACITY`] devices the least recently accepted ones are
//! forgotten. With a state file ([`ReplayGuard::open`]) the table survives
//! a restart: [`ReplayGuard::flush`] writes it atomically (temp file, fsync,
//! rename, fsync of the directory) when it changed, and [`persist`] runs
//! that periodically off the async runtime and once more at shutdown.
//! Counters accepted after the last flush are lost by a power cut; at most
//! those announces can be accepted once more after the reboot.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::event::DropReason;

/// Devices remembered before the least recently accepted are forgotten.
pub const DEFAULT_CAPACITY: usize = 16_384;

/// How often [`persist`] writes a changed table, by default.
pub const DEFAULT_FLUSH_EVERY: Duration = Duration::from_secs(1);

/// First line of the state file; later versions change it.
const HEADER: &str = "berth-announce-counters v1";

/// Why the counter table could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot read announce counters {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad announce counters file {path}, line {line}: {reason}")]
    Invalid {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("cannot write announce counters {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the guard said about one announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// A counter above the last one: accepted and remembered.
    New,
    /// The last accepted announce once more (same counter and signature).
    Repeat,
    /// An older counter, or the same counter on other content.
    Replay,
}

/// Enough of the signature to tell two announces apart: 16 bytes of an
/// Ed25519 signature collide with probability 2^-128.
type SigPrefix = [u8; 16];

#[derive(Clone, Debug, PartialEq, Eq)]
struct Last {
    counter: u64,
    sig: SigPrefix,
    /// When it was last accepted, in the guard's own sequence.
    touched: u64,
}

#[derive(Debug, Default)]
struct Table {
    last: HashMap<(String, String), Last>,
    seq: u64,
    dirty: bool,
}

/// The last accepted counter per device. Cheap to share (`Arc`); every
/// method takes `&self`.
#[derive(Debug)]
pub struct ReplayGuard {
    table: Mutex<Table>,
    path: Option<PathBuf>,
    capacity: usize,
}

fn prefix(signature: &[u8]) -> SigPrefix {
    let mut p = [0u8; 16];
    let n = signature.len().min(16);
    p[..n].copy_from_slice(&signature[..n]);
    p
}

/// The rule itself, free of state: how an announce with `counter` and
/// `sig` compares with the last one accepted.
pub fn judge(last: Option<(u64, &[u8])>, counter: u64, signature: &[u8]) -> Freshness {
    match last {
        None => Freshness::New,
        Some((c, _)) if counter > c => Freshness::New,
        Some((c, s)) if counter == c && prefix(s) == prefix(signature) => Freshness::Repeat,
        Some(_) => Freshness::Replay,
    }
}

impl ReplayGuard {
    /// A guard kept in memory only (lost on restart).
    pub fn in_memory() -> ReplayGuard {
        ReplayGuard {
            table: Mutex::new(Table::default()),
            path: None,
            capacity: DEFAULT_CAPACITY,
        }
    }

    /// A guard persisted in `path` (e.g. `/var/lib/berth/announce-counters`);
    /// loads it when it exists. A missing file is an empty table; a
    /// damaged one is an error, not silently emptied (that would reopen
    /// every replay).
    pub fn open(path: &Path) -> Result<ReplayGuard, ReplayError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(ReplayError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let mut table = Table::default();
        if let Some(text) = text {
            parse(&text, path, &mut table)?;
        }
        Ok(ReplayGuard {
            table: Mutex::new(table),
            path: Some(path.to_owned()),
            capacity: DEFAULT_CAPACITY,
        })
    }

    /// Changes how many devices are remembered (at least 1).
    pub fn with_capacity(mut self, capacity: usize) -> ReplayGuard {
        self.capacity = capacity.max(1);
        self
    }

    /// The state file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock leaves a consistent map (every
        // update is one insert); keep using it.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks an announce of `vendor`/`serial` and, when it is new,
    /// remembers its counter.
    pub fn check(&self, vendor: &str, serial: &str, counter: u64, signature: &[u8]) -> Freshness {
        let mut t = self.lock();
        t.seq += 1;
        let seq = t.seq;
        let key = (vendor.to_owned(), serial.to_owned());
        let verdict = judge(
            t.last.get(&key).map(|l| (l.counter, &l.sig[..])),
            counter,
            signature,
        );
        match verdict {
            Freshness::New => {
                if !t.last.contains_key(&key) && t.last.len() >= self.capacity {
                    evict(&mut t, self.capacity);
                }
                t.last.insert(
                    key,
                    Last {
                        counter,
                        sig: prefix(signature),
                        touched: seq,
                    },
                );
                t.dirty = true;
            }
            Freshness::Repeat => {
                if let Some(l) = t.last.get_mut(&key) {
                    l.touched = seq;
                }
            }
            Freshness::Replay => {}
        }
        verdict
    }

    /// [`check`](Self::check) as a drop decision: `Err(Replay)` for a
    /// replay.
    pub fn admit(
        &self,
        vendor: &str,
        serial: &str,
        counter: u64,
        signature: &[u8],
    ) -> Result<(), DropReason> {
        match self.check(vendor, serial, counter, signature) {
            Freshness::Replay => Err(DropReason::Replay),
            Freshness::New | Freshness::Repeat => Ok(()),
        }
    }

    /// The last accepted counter of a device.
    pub fn last(&self, vendor: &str, serial: &str) -> Option<u64> {
        self.lock()
            .last
            .get(&(vendor.to_owned(), serial.to_owned()))
            .map(|l| l.counter)
    }

    /// How many devices are remembered.
    pub fn len(&self) -> usize {
        self.lock().last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether counters changed since the last flush.
    pub fn dirty(&self) -> bool {
        self.lock().dirty
    }

    /// Writes the table to its file when it changed since the last flush;
    /// `Ok(false)` when there was nothing to write (or no file). Blocks on
    /// fsync: call it off the async runtime ([`persist`] does).
    pub fn flush(&self) -> Result<bool, ReplayError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let body = {
            let mut t = self.lock();
            if !t.dirty {
                return Ok(false);
            }
            t.dirty = false;
            let mut rows: Vec<(&(String, String), &Last)> = t.last.iter().collect();
            rows.sort_by_key(|(_, l)| l.touched);
            let mut body = String::with_capacity(64 * rows.len() + 32);
            body.push_str(HEADER);
            body.push('\n');
            for ((vendor, serial), l) in rows {
                body.push_str(&format!(
                    "{vendor} {serial} {} {}\n",
                    l.counter,
                    hex(&l.sig)
                ));
            }
            body
        };
        write_atomic(path, body.as_bytes()).map_err(|source| {
            // Not written: the next flush must try again.
            self.lock().dirty = true;
            ReplayError::Write {
                path: path.clone(),
                source,
            }
        })?;
        Ok(true)
    }
}

/// Forgets the least recently accepted eighth of the table (at least one
/// device), so eviction costs one scan per many insertions.
fn evict(t: &mut Table, capacity: usize) {
    let n = (capacity / 8).max(1);
    let mut ages: Vec<u64> = t.last.values().map(|l| l.touched).collect();
    ages.sort_unstable();
    let cutoff = ages.get(n - 1).copied().unwrap_or(0);
    t.last.retain(|_, l| l.touched > cutoff);
    tracing::debug!(
        capacity,
        "announce counter table full; oldest devices forgotten"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<SigPrefix> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn parse(text: &str, path: &Path, t: &mut Table) -> Result<(), ReplayError> {
    let invalid = |line: usize, reason: &str| ReplayError::Invalid {
        path: path.to_owned(),
        line,
        reason: reason.to_owned(),
    };
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h == HEADER => {}
        _ => return Err(invalid(1, &format!("first line must be {HEADER:?}"))),
    }
    for (i, line) in lines {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(' ').collect();
        let [vendor, serial, counter, sig] = f[..] else {
            return Err(invalid(
                n,
                "expected: vendor serial counter signature-prefix",
            ));
        };
        protocol::announce::check_vendor(vendor).map_err(|e| invalid(n, &e.to_string()))?;
        protocol::announce::check_serial(serial).map_err(|e| invalid(n, &e.to_string()))?;
        let counter: u64 = counter
            .parse()
            .map_err(|_| invalid(n, "counter is not a number"))?;
        let sig = unhex(sig).ok_or_else(|| invalid(n, "signature prefix is not 32 hex digits"))?;
        t.seq += 1;
        let touched = t.seq;
        t.last.insert(
            (vendor.to_owned(), serial.to_owned()),
            Last {
                counter,
                sig,
                touched,
            },
        );
    }
    Ok(())
}

fn write_atomic(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Flushes `guard` every `every` while it changed, and once more when
/// `shutdown` turns true (or its sender goes away). The writes run on the
/// blocking pool, never on the runtime's worker. Errors are logged and
/// retried at the next tick.
pub async fn persist(
    guard: Arc<ReplayGuard>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Cancel-safe: both branches only wait.
        let last = tokio::select! {
            _ = tick.tick() => false,
            r = shutdown.changed() => r.is_err() || *shutdown.borrow(),
        };
        if guard.dirty() {
            let g = guard.clone();
            match tokio::task::spawn_blocking(move || g.flush()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "announce counters not saved"),
                Err(e) => tracing::warn!(error = %e, "announce counter flush did not finish"),
            }
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: [u8; 64] = [1; 64];
    const S2: [u8; 64] = [2; 64];

    #[test]
    fn older_counter_is_a_replay_same_announce_is_a_repeat() {
        let g = ReplayGuard::in_memory();
        assert_eq!(g.check("acme", "SN-1", 5, &S1), Freshness::New);
        assert_eq!(g.check("acme", "SN-1", 5, &S1), Freshness::Repeat);
        assert_eq!(g.check("acme", "SN-1", 5, &S2), Freshness::Replay);
        assert_eq!(g.check("acme", "SN-1", 4, &S2), Freshness::Replay);
        assert_eq!(g.check("acme", "SN-1", 6, &S2), Freshness::New);
        assert_eq!(g.last("acme", "SN-1"), Some(6));
        // Counters are per vendor and serial.
        assert_eq!(g.check("acme", "SN-2", 1, &S1), Freshness::New);
        assert_eq!(g.check("other", "SN-1", 1, &S1), Freshness::New);
        assert_eq!(g.admit("acme", "SN-1", 3, &S1), Err(DropReason::Replay));
        assert_eq!(g.admit("acme", "SN-1", 7, &S1), Ok(()));
    }

    #[test]
    fn table_is_bounded_and_forgets_the_oldest() {
        let g = ReplayGuard::in_memory().with_capacity(16);
        for i in 0..16 {
            g.check("acme", &format!("D{i}"), 1, &S1);
        }
        // Touch D0 so it is recent.
        assert_eq!(g.check("acme", "D0", 1, &S1), Freshness::Repeat);
        for i in 16..100 {
            g.check("acme", &format!("D{i}"), 1, &S1);
            assert!(g.len() <= 16, "{}", g.len());
        }
        assert_eq!(g.last("acme", "D1"), None);
        assert_eq!(g.last("acme", "D99"), Some(1));
    }

    #[test]
    fn persisted_table_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("announce-counters");
        let g = ReplayGuard::open(&path).unwrap();
        assert!(g.is_empty());
        assert!(!g.flush().unwrap(), "nothing to write yet");
        g.check("acme", "SN-1", 41, &S1);
        g.check("acme", "SN-2", 7, &S2);
        assert!(g.flush().unwrap());
        assert!(!g.flush().unwrap(), "clean after a flush");
        drop(g);
        let g = ReplayGuard::open(&path).unwrap();
        assert_eq!(g.last("acme", "SN-1"), Some(41));
        assert_eq!(g.check("acme", "SN-1", 40, &S1), Freshness::Replay);
        assert_eq!(g.check("acme", "SN-1", 41, &S1), Freshness::Repeat);
        assert_eq!(g.check("acme", "SN-2", 7, &S1), Freshness::Replay);
        // No temp file left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn damaged_file_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        std::fs::write(
            &path,
            format!("{HEADER}\nacme SN-1 12 {}\nacme SN-2 x 00\n", hex(&[0; 16])),
        )
        .unwrap();
        let e = ReplayGuard::open(&path).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("counter"), "{e}");
        std::fs::write(&path, "something else\n").unwrap();
        let e = ReplayGuard::open(&path).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[tokio::test]
    async fn persist_flushes_periodically_and_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("announce-counters");
        let g = Arc::new(ReplayGuard::open(&path).unwrap());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(persist(g.clone(), Duration::from_millis(50), stop_rx));
        g.check("acme", "A", 1, &S1);
        tokio::time::timeout(Duration::from_secs(5), async {
            while !path.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        g.check("acme", "A", 2, &S1);
        stop.send(true).unwrap();
        task.await.unwrap();
        assert!(!g.dirty());
        assert_eq!(ReplayGuard::open(&path).unwrap().last("acme", "A"), Some(2));
    }
}

//! Serial detection: which ports exist ([`sysfs`]), when that changes
//! ([`uevent`] netlink, with the [`watch`] inotify fallback), and what
//! answers on the ports that are ours ([`port`]).
//!
//! [`run`] rescans sysfs at start and on every tty uevent or change in a
//! watched directory. A USB port that an allow rule matches exactly is
//! opened and spoken to; a port named explicitly (`--serial PATH`) is
//! opened whatever its ids. Without any allow rule, USB ports are reported
//! with their USB ids but never opened: opening a stranger's port could
//! reset or confuse it.

pub mod port;
pub mod sysfs;
pub mod uevent;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch as tokio_watch;
use tokio::task::JoinSet;

use crate::announce::KeyRing;
use crate::event::{DropReason, Identity, Observation, Transport};
use crate::merger::Emitter;
use crate::rules::{Rules, Verdict, DEFAULT_BAUD};

/// How the serial source runs.
#[derive(Clone, Debug)]
pub struct SerialConfig {
    pub sysfs_root: PathBuf,
    pub dev_dir: PathBuf,
    /// Directories watched with inotify (e.g. `/dev/serial/by-id`); the
    /// parent directories of `explicit` ports are added.
    pub watch_dirs: Vec<PathBuf>,
    /// Ports to open whatever their ids (`--serial PATH`).
    pub explicit: Vec<PathBuf>,
    /// Listen for uevents on netlink.
    pub uevents: bool,
    /// Rescan this often besides events; `None` for events only.
    pub poll: Option<Duration>,
    pub hello_every: Duration,
    pub identify_timeout: Duration,
    /// Wait before reopening a port that closed.
    pub reopen_after: Duration,
    pub baud: u32,
    pub rules: Arc<Rules>,
    pub keys: KeyRing,
}

impl Default for SerialConfig {
    fn default() -> Self {
        SerialConfig {
            sysfs_root: PathBuf::from("/sys"),
            dev_dir: PathBuf::from("/dev"),
            watch_dirs: vec![PathBuf::from("/dev/serial/by-id")],
            explicit: Vec::new(),
            uevents: true,
            poll: Some(Duration::from_secs(10)),
            hello_every: Duration::from_secs(1),
            identify_timeout: Duration::from_secs(3),
            reopen_after: Duration::from_secs(2),
            baud: DEFAULT_BAUD,
            rules: Arc::new(Rules::default()),
            keys: KeyRing::default(),
        }
    }
}

/// Why the serial source could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("no way to notice serial hotplug: {uevent}; {inotify}")]
    NoHotplug { uevent: String, inotify: String },
}

#[derive(Debug)]
struct Source {
    cfg: SerialConfig,
    emitter: Emitter,
    shutdown: tokio_watch::Receiver<bool>,
    tasks: JoinSet<PathBuf>,
    /// Ports with a running task.
    open: HashSet<PathBuf>,
    /// When each port last closed.
    closed_at: HashMap<PathBuf, Instant>,
    /// USB ports reported without opening, and those already counted as
    /// refused (so a rescan does not count them again).
    listed: HashSet<PathBuf>,
    refused: HashSet<PathBuf>,
    scan_error: Option<String>,
}

impl Source {
    async fn rescan(&mut self) -> bool {
        let ports = match sysfs::scan(&self.cfg.sysfs_root, &self.cfg.dev_dir) {
            Ok(p) => {
                self.scan_error = None;
                p
            }
            Err(e) => {
                let msg = e.to_string();
                if self.scan_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(error = %msg, "serial scan failed");
                    self.scan_error = Some(msg);
                }
                Vec::new()
            }
        };
        let mut present = HashSet::new();
        for p in &ports {
            let exists = p.path.exists();
            if exists {
                present.insert(p.path.clone());
            }
            let explicit = self.cfg.explicit.contains(&p.path);
            match self.cfg.rules.match_usb(&p.usb) {
                Verdict::Allow { vendor, baud } if exists => {
                    self.start(p.path.clone(), Some(p.usb.clone()), Some(vendor), baud);
                }
                // Counted once per port, not once per rescan.
                Verdict::Deny if !explicit && self.refused.insert(p.path.clone()) => {
                    self.emitter.drop_input(DropReason::Denied);
                }
                Verdict::NoMatch if exists && !explicit => {
                    if self.cfg.rules.narrows() {
                        if self.refused.insert(p.path.clone()) {
                            self.emitter.drop_input(DropReason::UnknownVendor);
                        }
                    } else if self.listed.insert(p.path.clone()) {
                        let obs = Observation {
                            transport: Transport::Serial,
                            address: p.path.to_string_lossy().into_owned(),
                            identity: Identity {
                                usb: Some(p.usb.clone()),
                                manufacturer: p.usb.manufacturer.clone(),
                                model: p.usb.product.clone(),
                                ..Identity::default()
                            },
                            announce: None,
                        };
                        if !self.emitter.seen(obs).await {
                            return false;
                        }
                    }
                }
                _ => {}
            }
        }
        for path in self.cfg.explicit.clone() {
            if path.exists() {
                let usb = ports.iter().find(|p| p.path == path).map(|p| p.usb.clone());
                self.start(path, usb, None, None);
            }
        }
        // Listed-only ports that vanished.
        let gone: Vec<PathBuf> = self
            .listed
            .iter()
            .filter(|p| !present.contains(*p))
            .cloned()
            .collect();
        for p in gone {
            self.listed.remove(&p);
            if !self
                .emitter
                .gone(Transport::Serial, p.to_string_lossy().into_owned())
                .await
            {
                return false;
            }
        }
        self.refused.retain(|p| present.contains(p));
        true
    }

    fn start(
        &mut self,
        path: PathBuf,
        usb: Option<crate::event::UsbIds>,
        vendor: Option<String>,
        baud: Option<u32>,
    ) {
        if self.open.contains(&path) {
            return;
        }
        if let Some(t) = self.closed_at.get(&path) {
            if t.elapsed() < self.cfg.reopen_after {
                return;
            }
        }
        if self.listed.remove(&path) {
            // It was reported unopened; the task reports it again.
            let emitter = self.emitter.clone();
            let addr = path.to_string_lossy().into_owned();
            self.tasks.spawn(async move {
                emitter.gone(Transport::Serial, addr).await;
                PathBuf::new()
            });
        }
        let spec = port::PortSpec {
            path: path.clone(),
            baud: baud.unwrap_or(self.cfg.baud),
            usb,
            vendor,
            hello_every: self.cfg.hello_every,
            identify_timeout: self.cfg.identify_timeout,
            keys: self.cfg.keys.clone(),
        };
        let emitter = self.emitter.clone();
        let shutdown = self.shutdown.clone();
        self.open.insert(path.clone());
        self.tasks.spawn(async move {
            if let Err(e) = port::run_port(spec, emitter, shutdown).await {
                tracing::warn!(error = %e, "serial port not used");
            }
            path
        });
    }
}

/// Runs the serial source until `shutdown` turns true or the merger goes
/// away; waits for its port tasks before returning.
pub async fn run(
    cfg: SerialConfig,
    emitter: Emitter,
    mut shutdown: tokio_watch::Receiver<bool>,
) -> Result<(), SerialError> {
    let monitor = if cfg.uevents {
        match uevent::UeventMonitor::open() {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::info!(error = %e, "no uevents, using inotify only");
                None
            }
        }
    } else {
        None
    };
    let mut dirs = cfg.watch_dirs.clone();
    for p in &cfg.explicit {
        if let Some(parent) = p.parent() {
            if !dirs.iter().any(|d| d == parent) {
                dirs.push(parent.to_owned());
            }
        }
    }
    let dir_watch = match watch::DirWatch::new(&dirs) {
        Ok(w) => Some(w),
        Err(e) if monitor.is_some() => {
            tracing::info!(error = %e, "no inotify");
            None
        }
        Err(e) => {
            return Err(SerialError::NoHotplug {
                uevent: "uevents off or unavailable".into(),
                inotify: e.to_string(),
            })
        }
    };
    let mut src = Source {
        cfg: cfg.clone(),
        emitter,
        shutdown: shutdown.clone(),
        tasks: JoinSet::new(),
        open: HashSet::new(),
        closed_at: HashMap::new(),
        listed: HashSet::new(),
        refused: HashSet::new(),
        scan_error: None,
    };
    let mut poll = tokio::time::interval(cfg.poll.unwrap_or(Duration::from_secs(3600)));
    poll.tick().await;
    let mut alive = src.rescan().await;
    // Ports that closed are retried after `reopen_after`: a short timer
    // runs while any is waiting.
    let mut retry = tokio::time::interval(cfg.reopen_after.max(Duration::from_millis(100)));
    let mut uevents_ok = monitor.is_some();
    while alive {
        // Cancel-safe: monitor and watch consume a message only inside the
        // synchronous read after readiness; join_next and timers lose
        // nothing.
        tokio::select! {
            ev = async { match &monitor { Some(m) => m.next().await, None => std::future::pending().await } }, if uevents_ok => {
                match ev {
                    Ok(Some(Ok(ev))) if uevent::is_tty_change(&ev) => {
                        tracing::debug!(action = %ev.action, devpath = %ev.devpath, "tty uevent");
                        alive = src.rescan().await;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "uevent socket failed, using inotify and polling");
                        uevents_ok = false;
                    }
                }
            }
            names = async { match &dir_watch { Some(w) => w.changed().await, None => std::future::pending().await } } => {
                if let Ok(names) = names {
                    tracing::debug!(?names, "watched directory changed");
                }
                alive = src.rescan().await;
            }
            done = src.tasks.join_next(), if !src.tasks.is_empty() => {
                if let Some(Ok(path)) = done {
                    if !path.as_os_str().is_empty() {
                        src.open.remove(&path);
                        src.closed_at.insert(path, Instant::now());
                    }
                }
            }
            _ = poll.tick(), if cfg.poll.is_some() => {
                alive = src.rescan().await;
            }
            _ = retry.tick(), if !src.closed_at.is_empty() => {
                src.closed_at.retain(|_, t| t.elapsed() < cfg.reopen_after * 4);
                alive = src.rescan().await;
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
            }
        }
    }
    // Port tasks see the same shutdown signal and report their Gone; when
    // the merger is gone there is no one to report to.
    if !alive {
        src.tasks.abort_all();
    }
    while src.tasks.join_next().await.is_some() {}
    Ok(())
}

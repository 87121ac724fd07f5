//! The daemon proper: detection, per-vendor work queues that drive each
//! device through the state machine, the local API server, update polling
//! and restart recovery.
//!
//! Tasks (all on one current-thread runtime; blocking work goes through
//! `spawn_blocking`):
//! - one worker per vendor of the registry, fed by a bounded queue of
//!   [`Job`]s: a slow or failing vendor only delays its own devices;
//! - the detection sources and a task turning their announces into items;
//! - the API server, one task per connection;
//! - the update poller, which queues a poll per running plan every
//!   `poll_interval`;
//! - the reporter, which delivers the reports owed to vendors.
//!
//! Durability rule: a stage is committed to the store before any side
//! effect of that stage, and the jail a stage will create is named in the
//! item before it is created. So on restart every jail on the host is
//! either named by an item (adopted) or an orphan (removed), and every item
//! caught in `building`, `delivering` or `validating` has its candidate
//! jail removed and goes back to `approved`: approval is never lost and
//! never asked twice. A report is committed as owed in the same
//! transaction as the transition it describes, and forgotten only once the
//! vendor acknowledged (or refused) it: a crash between the two re-sends
//! it after the restart, the same bytes, until the vendor takes it.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use protocol::provision::{
    CborMessage, CgroupLayout, CheckResult, DeviceIdentity, GatewayCapabilities, GatewayIdentity,
    JailState, Plan, ProvisionRequest, Report, SignedPlan, FORMAT,
};
use serde_json::json;
use tokio::sync::{mpsc, watch, Notify};

use super::api::{read_frame, write_frame, Peer, Request, Response};
use super::backoff::Backoff;
use super::checks;
use super::client::{self, Fetched, VendorClient};
use super::config::{Approval, Config, VendorSpec};
use super::jails::{self, Layout};
use super::state::{now_secs, transition, AuditEntry, DeviceRecord, Item, Stage, RECORD_VERSION};
use super::store::{Store, StoreError};
use crate::image::{ImageStore, PullOptions, Reference};

/// Depth of each vendor's queue.
const QUEUE: usize = 64;
/// Failed build attempts before an approved plan is given up.
const MAX_ATTEMPTS: u32 = 5;
/// Tries of a provisioning request before the item fails.
const MAX_REQUEST_TRIES: u32 = 6;
/// Least time between two retries of a failed first request.
const RETRY_FAILED: Duration = Duration::from_secs(30);

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A file or directory operation failed.
    #[error("cannot {what}: {source}")]
    Io {
        /// Operation and path.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A vendor client could not be built.
    #[error(transparent)]
    Client(#[from] client::ClientError),
    /// The image store failed to open.
    #[error("image store: {0}")]
    Images(String),
}

/// Work for a vendor's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Move an item on as far as it goes.
    Drive(u64),
    /// Look for a newer version of an item's plan.
    Poll(u64),
}

/// Everything the tasks share.
#[derive(Debug)]
pub struct Daemon {
    config: Config,
    store: Store,
    layout: Layout,
    images: ImageStore,
    clients: BTreeMap<String, VendorClient>,
    queues: BTreeMap<String, mpsc::Sender<Job>>,
    shutdown: watch::Receiver<bool>,
    started: u64,
    /// Wakes the reporter when a report is owed.
    report_wake: Notify,
    /// Image pulls in progress, for `berth devices`.
    pulls: super::pulls::Pulls,
}

/// Runs the daemon until `shutdown` turns true; then stops every task and
/// returns. Jails keep running (they belong to the host, not to berthd).
pub async fn run(config: Config, mut shutdown: watch::Receiver<bool>) -> Result<(), DaemonError> {
    let state_dir = config.state_dir.clone();
    std::fs::create_dir_all(&state_dir).map_err(|source| DaemonError::Io {
        what: format!("create state dir {}", state_dir.display()),
        source,
    })?;
    let sd = state_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&sd))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
    let images = ImageStore::open(state_dir.join("images"))
        .map_err(|e| DaemonError::Images(e.to_string()))?;
    let mut clients = BTreeMap::new();
    for (id, spec) in &config.vendors {
        clients.insert(id.clone(), VendorClient::new(spec, config.request_timeout)?);
    }
    let mut receivers = Vec::new();
    let mut queues = BTreeMap::new();
    for id in config.vendors.keys() {
        let (tx, rx) = mpsc::channel(QUEUE);
        queues.insert(id.clone(), tx);
        receivers.push((id.clone(), rx));
    }
    let layout = Layout {
        state_dir: state_dir.clone(),
        cgroup_parent: config.cgroup_parent.clone(),
        broker_port: config
            .mqtt_routing
            .as_ref()
            .and_then(|r| jails::broker_port(&r.broker)),
    };
    let d = Arc::new(Daemon {
        config,
        store,
        layout,
        images,
        clients,
        queues,
        shutdown: shutdown.clone(),
        started: now_secs(),
        report_wake: Notify::new(),
        pulls: super::pulls::Pulls::default(),
    });

    recover(&d).await?;
    let listener = bind_socket(&d.config.socket())?;

    let mut tasks = tokio::task::JoinSet::new();
    for (vendor, rx) in receivers {
        tasks.spawn(worker(d.clone(), vendor, rx));
    }
    tasks.spawn(serve(d.clone(), listener));
    tasks.spawn(poller(d.clone()));
    tasks.spawn(reporter(d.clone()));
    tasks.spawn(super::detect::run(d.clone()));
    // Queue what recovery left to do.
    for it in d.store.call(|s| s.items()).await? {
        // `requested` waits for the device's next announce (see
        // `device_seen`): the stored one may have been spent already.
        if matches!(it.stage, Stage::Detected | Stage::Approved) {
            d.enqueue(&it.device.vendor, Job::Drive(it.id)).await;
        }
    }
    tracing::info!(state_dir = %state_dir.display(), vendors = d.config.vendors.len(), "berthd running");
    super::notify::notify("READY=1");
    let watchdog = super::notify::watchdog_interval();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let tick = watchdog.unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            // Cancel-safe: `changed` only reads the watch; the timer is
            // made anew each turn.
            r = shutdown.changed() => if r.is_err() { break },
            _ = tokio::time::sleep(tick) => {
                if watchdog.is_some() {
                    super::notify::notify("WATCHDOG=1");
                }
            }
        }
    }
    tracing::info!("shutting down");
    super::notify::notify("STOPPING=1");
    let wait = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .is_err()
    {
        tracing::warn!("tasks did not stop in 10s; aborting them");
    }
    let _ = std::fs::remove_file(d.config.socket());
    Ok(())
}

/// Resolves once `rx` reads true (or its sender is gone).
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener, DaemonError> {
    let io = |what: String| move |source| DaemonError::Io { what, source };
    if path.exists() {
        std::fs::remove_file(path)
            .map_err(io(format!("remove stale socket {}", path.display())))?;
    }
    let l = tokio::net::UnixListener::bind(path).map_err(io(format!("bind {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("chmod {}", path.display())))?;
    Ok(l)
}

impl Daemon {
    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A clone of the shutdown watch.
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Queues a job on its vendor's worker (waits while the queue is full).
    pub async fn enqueue(&self, vendor: &str, job: Job) {
        if let Some(q) = self.queues.get(vendor) {
            let _ = q.send(job).await;
        }
    }

    async fn put(&self, it: &Item, audit: Option<AuditEntry>) -> Result<(), StoreError> {
        let it = it.clone();
        self.store.call(move |s| s.put(&it, audit)).await
    }

    /// Commits `it` (and `audit`) only while it is still stored; see
    /// [`Store::put_existing`]. Returns whether it was written.
    async fn put_update(&self, it: &Item, audit: Option<AuditEntry>) -> Result<bool, StoreError> {
        let it = it.clone();
        let (id, written) = (
            it.id,
            self.store.call(move |s| s.put_existing(&it, audit)).await?,
        );
        if !written {
            tracing::info!(
                id,
                "device removed while its plan was fetched; update dropped"
            );
        }
        Ok(written)
    }

    /// Commits `it` (and `audit`) with `report` owed to its vendor, in one
    /// transaction, then wakes the reporter.
    async fn put_owing(
        &self,
        it: &Item,
        audit: Option<AuditEntry>,
        report: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let owes = report.is_some();
        let it = it.clone();
        self.store
            .call(move |s| s.put_owing(&it, audit, report))
            .await?;
        if owes {
            self.report_wake.notify_one();
        }
        Ok(())
    }

    async fn load(&self, id: u64) -> Result<Option<Item>, StoreError> {
        self.store.call(move |s| s.item_by_id(id)).await
    }

    /// Sleeps `d`, or less if shutdown comes; true when shutting down.
    async fn sleep(&self, d: Duration) -> bool {
        let mut s = self.shutdown.clone();
        tokio::select! {
            // Cancel-safe: both are plain waits.
            _ = tokio::time::sleep(d) => false,
            _ = stopped(&mut s) => true,
        }
    }

    /// A device seen by a detection source: creates its item when new and
    /// queues it. A device of a vendor not in the registry is ignored: the
    /// gateway never asks a server the registry does not list.
    pub async fn device_seen(&self, dev: DeviceRecord, endpoint: &str) -> Result<(), StoreError> {
        let Some(spec) = self.config.vendors.get(&dev.vendor) else {
            tracing::info!(
                vendor = dev.vendor.as_str(),
                serial = dev.serial.as_str(),
                "device of a vendor not in the registry; ignored"
            );
            return Ok(());
        };
        if !endpoint.is_empty() && endpoint.trim_end_matches('/') != spec.url {
            tracing::warn!(
                vendor = dev.vendor.as_str(),
                announced = endpoint,
                registry = spec.url.as_str(),
                "device announces another provisioning endpoint; using the registry's"
            );
        }
        let key = super::state::device_key(&dev.vendor, &dev.serial);
        let existing = self.store.call(move |s| s.item(&key)).await?;
        let vendor = dev.vendor.clone();
        match existing {
            None => {
                let id = self.store.call(|s| s.next_id()).await?;
                let it = Item::new(id, dev);
                self.put(&it, None).await?;
                tracing::info!(
                    id,
                    vendor = vendor.as_str(),
                    serial = it.device.serial.as_str(),
                    "new device"
                );
                self.enqueue(&vendor, Job::Drive(id)).await;
            }
            Some(it) => {
                // Keep where the device is now (its serial port may change)
                // and its latest announce: vendors refuse a replayed
                // announce counter, so a new request must carry a fresh one.
                let d2 = dev.clone();
                self.store.call(move |s| s.update_device(&d2)).await?;
                match it.stage {
                    // A request interrupted by a restart goes again with
                    // this fresh announce (the old one's counter is spent).
                    Stage::Detected | Stage::Requested => {
                        self.enqueue(&vendor, Job::Drive(it.id)).await;
                    }
                    // A failed first request is retried when the device
                    // shows again, at most every RETRY_FAILED.
                    Stage::Failed
                        if it.current.is_none()
                            && now_secs().saturating_sub(it.updated) >= RETRY_FAILED.as_secs() =>
                    {
                        let id = it.id;
                        let moved = self
                            .store
                            .call(move |s| {
                                let Some(mut it) = s.item_by_id(id)? else {
                                    return Ok(false);
                                };
                                if it.stage != Stage::Failed {
                                    return Ok(false);
                                }
                                it.stage = Stage::Requested;
                                it.updated = now_secs();
                                s.put(&it, None)?;
                                Ok(true)
                            })
                            .await?;
                        if moved {
                            self.enqueue(&vendor, Job::Drive(id)).await;
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- recovery

/// Brings host and store back in line after a (possibly unclean) stop.
async fn recover(d: &Arc<Daemon>) -> Result<(), DaemonError> {
    let items = d.store.call(|s| s.items()).await?;
    // Jails whose create never finished go first (the runtime's recovery).
    if d.layout.jails().is_dir() {
        match jail::recover(&d.layout.jails()).await {
            Ok(removed) if !removed.is_empty() => {
                tracing::warn!(?removed, "removed half-created jails")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "jail recovery failed"),
        }
    }
    let mut owned = std::collections::BTreeSet::new();
    for mut it in items {
        if it.stage.in_flight() {
            // Roll back the candidate: its jail goes, the approval stays.
            if let Some(name) = it.candidate_jail.take() {
                tracing::warn!(
                    id = it.id,
                    jail = name.as_str(),
                    stage = it.stage.name(),
                    "rolling back an interrupted build"
                );
                jails::remove(&d.layout, &name).await;
            }
            it.attempts += 1;
            let to = if it.attempts >= MAX_ATTEMPTS {
                Stage::Failed
            } else {
                Stage::Approved
            };
            if to == Stage::Failed {
                it.error = Some(format!(
                    "gave up after {} interrupted attempts",
                    it.attempts
                ));
            }
            transition(&mut it, to).map_err(|e| StoreError::Task(e.to_string()))?;
            d.put(&it, None).await?;
        } else if it.candidate_jail.is_some() {
            // A finished stage that had not yet cleared its candidate.
            let name = it.candidate_jail.take().unwrap_or_default();
            if it.current_jail.as_deref() != Some(name.as_str()) {
                jails::remove(&d.layout, &name).await;
            }
            d.put(&it, None).await?;
        }
        if let Some(j) = &it.current_jail {
            owned.insert(j.clone());
        }
    }
    // Every jail of this state dir not owned by an item is an orphan.
    let infos = if d.layout.jails().is_dir() {
        jail::list(&d.layout.jails()).await.unwrap_or_default()
    } else {
        Vec::new()
    };
    for info in infos {
        if !owned.contains(&info.name) {
            tracing::warn!(jail = info.name.as_str(), "removing a jail no request owns");
            jails::remove(&d.layout, &info.name).await;
        }
    }
    // Overlay dirs without a jail.
    if let Ok(rd) = std::fs::read_dir(d.layout.state_dir.join(crate::jailcmd::OVERLAY_DIR)) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !owned.contains(&name) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    jails::gc_bridges(&d.layout).await;
    // Running plans whose jail is gone (a reboot) are rebuilt.
    for mut it in d.store.call(|s| s.items()).await? {
        if it.stage != Stage::Running {
            continue;
        }
        let alive = match &it.current_jail {
            Some(name) => match jail::Jail::adopt(&d.layout.jails(), name).await {
                Ok(j) => j.is_alive(),
                Err(_) => false,
            },
            None => false,
        };
        if !alive {
            tracing::warn!(id = it.id, "the running plan's jail is gone; rebuilding it");
            if let Some(name) = it.current_jail.take() {
                jails::remove(&d.layout, &name).await;
            }
            it.candidate = it.current.clone();
            it.candidate_version = it.current_version.clone();
            transition(&mut it, Stage::Approved).map_err(|e| StoreError::Task(e.to_string()))?;
            d.put(&it, None).await?;
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ worker

async fn worker(d: Arc<Daemon>, vendor: String, mut rx: mpsc::Receiver<Job>) {
    let mut stop = d.shutdown();
    loop {
        let job = tokio::select! {
            // Cancel-safe: a job not received stays queued.
            j = rx.recv() => match j { Some(j) => j, None => return },
            _ = stopped(&mut stop) => return,
        };
        let r = match job {
            Job::Drive(id) => drive(&d, id).await,
            Job::Poll(id) => poll(&d, id).await,
        };
        if let Err(e) = r {
            tracing::error!(vendor = vendor.as_str(), ?job, error = %e, "job failed");
        }
    }
}

fn audit(who: &str, it: &Item, decision: &str, detail: &str) -> AuditEntry {
    AuditEntry {
        v: RECORD_VERSION,
        time: now_secs(),
        who: who.to_string(),
        item: it.id,
        plan: it
            .candidate_version
            .clone()
            .or_else(|| it.current_version.clone()),
        decision: decision.to_string(),
        detail: detail.to_string(),
    }
}

fn bad(e: super::state::BadTransition) -> StoreError {
    StoreError::Task(e.to_string())
}

/// Moves an item on until it rests (awaiting approval, running, denied,
/// failed, rolled back) or berthd stops.
async fn drive(d: &Arc<Daemon>, id: u64) -> Result<(), StoreError> {
    loop {
        if d.stopping() {
            return Ok(());
        }
        let Some(mut it) = d.load(id).await? else {
            return Ok(());
        };
        let Some(spec) = d.config.vendors.get(&it.device.vendor).cloned() else {
            return Ok(());
        };
        match it.stage {
            Stage::Detected => {
                transition(&mut it, Stage::Requested).map_err(bad)?;
                d.put(&it, None).await?;
            }
            Stage::Requested => request(d, &spec, it).await?,
            Stage::Approved => {
                let Some((plan_id, version)) = it.candidate_version.clone() else {
                    it.error = Some("approved without a plan".into());
                    transition(&mut it, Stage::Failed).map_err(bad)?;
                    d.put(&it, None).await?;
                    continue;
                };
                let plan = match candidate_plan(&it, &spec) {
                    Ok(p) => p,
                    Err(e) => {
                        it.error = Some(e);
                        transition(&mut it, Stage::Failed).map_err(bad)?;
                        d.put(&it, None).await?;
                        continue;
                    }
                };
                let name = jails::jail_name(&plan.vendor, &plan.jail.name, version);
                if it.current_jail.as_deref() == Some(name.as_str()) {
                    // Same version already running (a re-approval): done.
                    it.candidate = None;
                    it.candidate_version = None;
                    transition(&mut it, Stage::Building).map_err(bad)?;
                    transition(&mut it, Stage::Delivering).map_err(bad)?;
                    transition(&mut it, Stage::Validating).map_err(bad)?;
                    transition(&mut it, Stage::Running).map_err(bad)?;
                    d.put(&it, None).await?;
                    continue;
                }
                tracing::info!(
                    id,
                    plan = plan_id.as_str(),
                    version,
                    jail = name.as_str(),
                    "building"
                );
                it.candidate_jail = Some(name);
                transition(&mut it, Stage::Building).map_err(bad)?;
                // Committed before the jail exists: a restart removes it.
                d.put(&it, None).await?;
                apply(d, it, plan).await?;
            }
            Stage::Building | Stage::Delivering | Stage::Validating => {
                // Only reached if a previous pass stopped midway without a
                // restart (berthd stopping): leave it to recovery.
                return Ok(());
            }
            Stage::AwaitingApproval
            | Stage::Running
            | Stage::Denied
            | Stage::Failed
            | Stage::RolledBack => return Ok(()),
        }
    }
}

fn candidate_plan(it: &Item, spec: &VendorSpec) -> Result<Plan, String> {
    let bytes = it.candidate.as_ref().ok_or("no candidate plan")?;
    // Re-verified from the stored bytes: the store is not a trust anchor.
    client::verify(bytes, spec, &it.device.model, &it.device.serial)
        .map(|sp| sp.plan)
        .map_err(|e| format!("stored plan does not verify: {e}"))
}

fn gateway_capabilities() -> GatewayCapabilities {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        "arm" => "arm.v7",
        "aarch64" => "arm64",
        other => other,
    };
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_free = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024);
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let v1 = Path::new("/sys/fs/cgroup/memory").is_dir();
    let cgroup = match (v1, v2) {
        (true, false) => CgroupLayout::V1,
        (false, true) => CgroupLayout::V2,
        _ => CgroupLayout::Hybrid,
    };
    GatewayCapabilities {
        arch: arch.to_string(),
        memory_free,
        disk_free: 0,
        cgroup,
    }
}

async fn request(d: &Arc<Daemon>, spec: &VendorSpec, mut it: Item) -> Result<(), StoreError> {
    let Some(client) = d.clients.get(&spec.id) else {
        return Ok(());
    };
    let announce = it.device.announce.clone();
    let device = match protocol::Announce::decode(&announce) {
        Ok(a) => DeviceIdentity::of(&a),
        Err(e) => {
            it.error = Some(format!("announce cannot be decoded: {e}"));
            transition(&mut it, Stage::Failed).map_err(bad)?;
            return d.put(&it, None).await;
        }
    };
    let existing = existing_jails(d, spec).await?;
    let req = ProvisionRequest {
        format: FORMAT,
        announce,
        device,
        gateway: GatewayIdentity {
            id: d.config.gateway_id.clone(),
            public_key: [0; 32],
        },
        capabilities: gateway_capabilities(),
        jails: existing,
    };
    let mut backoff = Backoff::from_clock(Duration::from_millis(500), Duration::from_secs(60));
    let mut tries = 0;
    let bytes = loop {
        match client.provision(&req).await {
            Ok(b) => break b,
            Err(e) if e.retryable() && tries + 1 < MAX_REQUEST_TRIES => {
                let wait = backoff.delay(tries);
                tries += 1;
                tracing::warn!(id = it.id, error = %e, retry_in_ms = wait.as_millis() as u64, "provisioning request failed");
                if d.sleep(wait).await {
                    return Ok(());
                }
            }
            Err(e) => {
                it.error = Some(e.to_string());
                transition(&mut it, Stage::Failed).map_err(bad)?;
                return d
                    .put(
                        &it,
                        Some(audit("berthd", &it, "request-failed", &e.to_string())),
                    )
                    .await;
            }
        }
    };
    accept_plan(d, spec, it, &bytes, None, false).await
}

/// Verifies and stores a plan as the item's candidate, then decides its
/// approval: an update of a plan approved before, the vendor's `auto`
/// policy and an open pairing window approve; otherwise a technician must.
async fn accept_plan(
    d: &Arc<Daemon>,
    spec: &VendorSpec,
    mut it: Item,
    bytes: &[u8],
    etag: Option<String>,
    update: bool,
) -> Result<(), StoreError> {
    let sp: SignedPlan = match client::verify(bytes, spec, &it.device.model, &it.device.serial) {
        Ok(sp) => sp,
        Err(e) => {
            tracing::warn!(id = it.id, error = %e, "plan refused");
            let a = audit("berthd", &it, "plan-refused", &e.to_string());
            if update {
                return d.store.call(move |s| s.audit(&a)).await;
            }
            it.error = Some(format!("plan refused: {e}"));
            transition(&mut it, Stage::Failed).map_err(bad)?;
            return d.put(&it, Some(a)).await;
        }
    };
    let plan = &sp.plan;
    let (pid, ver) = (plan.plan_id.clone(), plan.version);
    if let Err(e) = d.store.call(move |s| s.check_version(&pid, ver)).await {
        tracing::warn!(id = it.id, error = %e, "plan refused");
        let a = audit("berthd", &it, "plan-refused", &e.to_string());
        if update {
            return d.store.call(move |s| s.audit(&a)).await;
        }
        it.error = Some(format!("plan refused: {e}"));
        transition(&mut it, Stage::Failed).map_err(bad)?;
        return d.put(&it, Some(a)).await;
    }
    if update {
        let cur = it.current_version.as_ref().map_or(0, |(_, v)| *v);
        if plan.version <= cur {
            // Same version (or the guard's own): remember the ETag only.
            it.etag = etag;
            return d.put_update(&it, None).await.map(drop);
        }
    }
    it.candidate = Some(sp.bytes.clone());
    it.candidate_version = Some((plan.plan_id.clone(), plan.version));
    if etag.is_some() {
        it.etag = etag;
    }
    it.error = None;
    let pairing = {
        let v = spec.id.clone();
        d.store
            .call(move |s| s.pairing_open(&v, now_secs()))
            .await?
    };
    let who = if update {
        Some("update".to_string())
    } else if spec.approval == Approval::Auto {
        Some("policy:auto".to_string())
    } else if pairing {
        Some(format!("pairing:{}", spec.id))
    } else {
        None
    };
    match who {
        Some(who) => {
            transition(&mut it, Stage::Approved).map_err(bad)?;
            let a = audit(&who, &it, "approve", "");
            tracing::info!(
                id = it.id,
                plan = plan.plan_id.as_str(),
                version = plan.version,
                who = who.as_str(),
                "approved"
            );
            if update {
                d.put_update(&it, Some(a)).await?;
            } else {
                d.put(&it, Some(a)).await?;
            }
        }
        None => {
            transition(&mut it, Stage::AwaitingApproval).map_err(bad)?;
            tracing::info!(
                id = it.id,
                plan = plan.plan_id.as_str(),
                version = plan.version,
                "waiting for approval (berth approve {})",
                it.id
            );
            d.put(&it, None).await?;
        }
    }
    Ok(())
}

async fn existing_jails(
    d: &Arc<Daemon>,
    spec: &VendorSpec,
) -> Result<Vec<protocol::provision::ExistingJail>, StoreError> {
    let items = d.store.call(|s| s.items()).await?;
    Ok(items
        .into_iter()
        .filter(|i| i.device.vendor == spec.id)
        .filter_map(|i| {
            let (plan_id, version) = i.current_version.clone()?;
            // The vendor's own name of the jail, from the plan in force.
            let sp = client::verify(i.current.as_ref()?, spec, &i.device.model, &i.device.serial)
                .ok()?;
            Some(protocol::provision::ExistingJail {
                name: sp.plan.jail.name,
                plan_id,
                version,
            })
        })
        .take(protocol::provision::request::MAX_EXISTING_JAILS)
        .collect())
}

/// Build, deliver, validate; then commit or roll back, and report.
async fn apply(d: &Arc<Daemon>, mut it: Item, plan: Plan) -> Result<(), StoreError> {
    let name = it.candidate_jail.clone().unwrap_or_default();
    let version = plan.version;
    let outcome = build_and_check(d, &mut it, &plan, &name).await;
    match outcome {
        Ok((checks, address)) => {
            // Commit: the candidate becomes current, the old jail goes after.
            let old = it.current_jail.take();
            it.current = it.candidate.take();
            it.current_version = it.candidate_version.take();
            it.current_jail = it.candidate_jail.take();
            it.attempts = 0;
            it.error = None;
            transition(&mut it, Stage::Running).map_err(bad)?;
            let a = audit("berthd", &it, "running", "");
            let report = encode_report(d, &plan, JailState::Running, checks, None, address);
            d.put_owing(&it, Some(a), report).await?;
            tracing::info!(id = it.id, jail = name.as_str(), version, "running");
            if let Some(old) = old.filter(|o| *o != name) {
                jails::remove(&d.layout, &old).await;
            }
            super::routing::refresh(d).await;
        }
        Err((stage_err, checks)) => {
            let had_current = it.current.is_some();
            let to = if had_current {
                Stage::RolledBack
            } else {
                Stage::Failed
            };
            it.error = Some(stage_err.clone());
            transition(&mut it, to).map_err(bad)?;
            let st = if had_current {
                JailState::RolledBack
            } else {
                JailState::Failed
            };
            let report = encode_report(d, &plan, st, checks, Some(&stage_err), None);
            // Committed with the candidate jail still named, then removed.
            d.put_owing(
                &it,
                Some(audit(
                    "berthd",
                    &it,
                    if had_current { "rollback" } else { "failed" },
                    &stage_err,
                )),
                report,
            )
            .await?;
            tracing::warn!(
                id = it.id,
                jail = name.as_str(),
                version,
                error = stage_err.as_str(),
                "plan failed; rolling back"
            );
            jails::remove(&d.layout, &name).await;
            it.candidate_jail = None;
            it.candidate = None;
            d.put(&it, None).await?;
        }
    }
    Ok(())
}

/// The canonical CBOR of a report on `plan`; `None` (logged) when it
/// cannot be encoded, which only a bug makes happen.
fn encode_report(
    d: &Daemon,
    plan: &Plan,
    state: JailState,
    checks: Vec<CheckResult>,
    error: Option<&str>,
    address: Option<std::net::Ipv4Addr>,
) -> Option<Vec<u8>> {
    let report = Report {
        format: FORMAT,
        plan_id: plan.plan_id.clone(),
        version: plan.version,
        gateway_id: d.config.gateway_id.clone(),
        serial: plan.serial.clone(),
        jail: plan.jail.name.clone(),
        address: address.map(|a| format!("{a}/24")),
        state,
        checks,
        error: error.map(|e| {
            protocol::provision::report::truncate(e, protocol::provision::report::MAX_ERROR)
                .to_string()
        }),
    };
    match report.to_cbor() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::error!(plan = plan.plan_id.as_str(), version = plan.version, error = %e, "report cannot be encoded; not sent");
            None
        }
    }
}

type Checked = (Vec<CheckResult>, Option<std::net::Ipv4Addr>);

async fn build_and_check(
    d: &Arc<Daemon>,
    it: &mut Item,
    plan: &Plan,
    name: &str,
) -> Result<Checked, (String, Vec<CheckResult>)> {
    let e0 = |e: String| (e, Vec::new());
    // Building: pull every app's image (their layers make the jail's
    // rootfs), create.
    if plan.apps.is_empty() {
        return Err(e0("the plan has no app".into()));
    }
    let opts = PullOptions {
        progress: Some(d.pulls.meter(it.id)),
        ..PullOptions::default()
    };
    let pulled = async {
        let mut images: Vec<crate::image::ImageRootfs> = Vec::with_capacity(plan.apps.len());
        for (i, app) in plan.apps.iter().enumerate() {
            if let Some(j) = plan.apps[..i].iter().position(|a| a.image == app.image) {
                let same = images[j].clone();
                images.push(same);
                continue;
            }
            let reference = Reference::parse(app.image.as_str())
                .map_err(|e| e0(format!("image {} of app {}: {e}", app.image, app.name)))?;
            let image =
                tokio::time::timeout(Duration::from_secs(600), d.images.pull(&reference, &opts))
                    .await
                    .map_err(|_| e0(format!("pulling {} timed out", app.image)))?
                    .map_err(|e| e0(format!("pull {} (app {}): {e}", app.image, app.name)))?;
            images.push(image);
        }
        Ok(images)
    }
    .await;
    d.pulls.finish(it.id);
    let images = pulled?;
    let serial = if plan.jail.devices.serial && it.device.transport == "serial" {
        Some(
            jails::host_device(Path::new(&it.device.address))
                .map_err(|e| e0(format!("serial device {}: {e}", it.device.address)))?,
        )
    } else {
        None
    };
    let spec = jails::build_spec(&d.layout, name, plan, &images, serial).map_err(e0)?;
    jails::prepare_dirs(&d.layout, name, plan)
        .map_err(|e| e0(format!("prepare dirs of {name}: {e}")))?;
    let gateway = spec.network.as_ref().map(|n| n.gateway);
    super::routing::write_credentials(d, plan, name, gateway).map_err(e0)?;
    let mut j = jail::Jail::create(spec)
        .await
        .map_err(|e| e0(format!("create jail {name}: {e}")))?;
    // The plan's port forwards, checked again against the other jails'
    // now that the jail has its address.
    jails::record_forwards(&d.layout, name, plan, j.address()).map_err(e0)?;
    // Isolation from other vendors' bridges, NAT egress and port forwards,
    // before the app runs.
    jails::refresh_firewall(&d.layout).await;
    // Delivering: start the app.
    transition(it, Stage::Delivering).map_err(|e| e0(e.to_string()))?;
    d.put(it, None).await.map_err(|e| e0(e.to_string()))?;
    j.start()
        .await
        .map_err(|e| e0(format!("start jail {name}: {e}")))?;
    // The further apps, in the running jail.
    let mut ends = Vec::new();
    for (app, image) in plan.apps.iter().zip(&images).skip(1) {
        let opts = jails::app_exec(app, image).map_err(e0)?;
        let rx = jails::start_app(d.layout.jails(), name.to_string(), app.name.clone(), opts)
            .map_err(e0)?;
        ends.push(rx);
    }
    // Validating.
    transition(it, Stage::Validating).map_err(|e| e0(e.to_string()))?;
    d.put(it, None).await.map_err(|e| e0(e.to_string()))?;
    let pid = j
        .pid()
        .ok_or_else(|| e0(format!("jail {name} has no init")))?;
    let target = checks::Target {
        jail: &j,
        pid,
        address: j.address(),
    };
    let results = checks::run_all(&plan.apps, target).await;
    if !j.is_alive() {
        let log = tail(&j.console_log(), 512);
        return Err((
            format!("jail {name} stopped during validation; console: {log}"),
            results,
        ));
    }
    if let Some(f) = results.iter().find(|r| !r.passed) {
        return Err((
            format!("check {} of app {} failed: {}", f.index, f.app, f.output),
            results,
        ));
    }
    // A further app that already ended fails the version like a stopped
    // jail does.
    for rx in &ends {
        if let Ok(line) = rx.try_recv() {
            return Err((format!("jail {name}: {line} during validation"), results));
        }
    }
    Ok((results, j.address()))
}

/// The last `max` bytes of a file, lossy.
pub fn tail(path: &Path, max: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// The report of a technician's refusal of `it`'s candidate plan.
fn refused_report(d: &Daemon, it: &Item, spec: &VendorSpec) -> Option<Vec<u8>> {
    let plan = candidate_plan(it, spec).ok()?;
    encode_report(
        d,
        &plan,
        JailState::Refused,
        Vec::new(),
        it.error.as_deref(),
        None,
    )
}

/// Delivers the owed reports: at start (what a crash left owed), whenever
/// a transition owes one, and after a failed delivery with backoff.
async fn reporter(d: Arc<Daemon>) {
    let mut backoff = Backoff::from_clock(Duration::from_secs(1), Duration::from_secs(60));
    let mut failed_rounds = 0u32;
    let mut stop = d.shutdown();
    loop {
        let retry = deliver_owed(&d).await;
        let wait = if retry {
            failed_rounds = failed_rounds.saturating_add(1);
            backoff.delay(failed_rounds - 1)
        } else {
            failed_rounds = 0;
            // Nothing owed: only a new report wakes us.
            Duration::from_secs(24 * 3600)
        };
        tokio::select! {
            // Cancel-safe: a notification that finds no waiter is kept as a
            // permit for the next `notified`; the sleep is made anew.
            _ = d.report_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}

/// One round over the owed reports, oldest first. A vendor that cannot be
/// reached keeps its reports (and their order) for the next round; one
/// that refuses a report for good (4xx) has it dropped and audited.
/// Returns whether any report is left to retry.
async fn deliver_owed(d: &Arc<Daemon>) -> bool {
    let owed = match d.store.call(|s| s.owed_reports()).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "reporter cannot read the store");
            return true;
        }
    };
    let mut unreachable = BTreeSet::new();
    for (seq, o) in owed {
        if d.stopping() {
            return false;
        }
        if unreachable.contains(&o.vendor) {
            continue;
        }
        let settle = |detail: Option<String>, plan: Option<(String, u64)>| {
            let a = detail.map(|detail| AuditEntry {
                v: RECORD_VERSION,
                time: now_secs(),
                who: "berthd".into(),
                item: o.item,
                plan,
                decision: "report-dropped".into(),
                detail,
            });
            d.store.call(move |s| s.report_settled(seq, a))
        };
        let Some(client) = d.clients.get(&o.vendor) else {
            let why = format!("vendor {} is no longer in the registry", o.vendor);
            tracing::warn!(seq, reason = why.as_str(), "owed report dropped");
            if let Err(e) = settle(Some(why), None).await {
                tracing::warn!(error = %e, "cannot settle a report");
            }
            continue;
        };
        let report = match Report::from_cbor(&o.report) {
            Ok(r) => r,
            Err(e) => {
                let why = format!("stored report does not decode: {e}");
                tracing::error!(seq, reason = why.as_str(), "owed report dropped");
                if let Err(e) = settle(Some(why), None).await {
                    tracing::warn!(error = %e, "cannot settle a report");
                }
                continue;
            }
        };
        let plan = Some((report.plan_id.clone(), report.version));
        let r = match client.report(&report).await {
            Ok(()) => {
                tracing::info!(
                    vendor = o.vendor.as_str(),
                    plan = report.plan_id.as_str(),
                    version = report.version,
                    state = ?report.state,
                    "report delivered"
                );
                settle(None, plan).await
            }
            Err(e) if e.retryable() => {
                tracing::warn!(
                    vendor = o.vendor.as_str(),
                    plan = report.plan_id.as_str(),
                    version = report.version,
                    error = %e,
                    "report not delivered; kept for a retry"
                );
                unreachable.insert(o.vendor.clone());
                continue;
            }
            Err(e) => {
                let why = format!("the vendor refused the report: {e}");
                tracing::warn!(
                    vendor = o.vendor.as_str(),
                    plan = report.plan_id.as_str(),
                    version = report.version,
                    reason = why.as_str(),
                    "owed report dropped"
                );
                settle(Some(why), plan).await
            }
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot settle a report");
            return true;
        }
    }
    !unreachable.is_empty()
}

/// Fetches a running plan and converges to a newer version.
async fn poll(d: &Arc<Daemon>, id: u64) -> Result<(), StoreError> {
    let Some(it) = d.load(id).await? else {
        return Ok(());
    };
    if !matches!(it.stage, Stage::Running | Stage::RolledBack) {
        return Ok(());
    }
    let Some(spec) = d.config.vendors.get(&it.device.vendor).cloned() else {
        return Ok(());
    };
    let Some(client) = d.clients.get(&spec.id) else {
        return Ok(());
    };
    let Some((plan_id, _)) = it.current_version.clone() else {
        return Ok(());
    };
    match client.fetch_plan(&plan_id, it.etag.as_deref()).await {
        Ok(Fetched::Unchanged) => Ok(()),
        Ok(Fetched::Plan { bytes, etag }) => {
            // After a rollback, the version that failed is not retried
            // until the vendor publishes a newer one.
            let failed = it.stage == Stage::RolledBack && it.etag.is_some() && it.etag == etag;
            if failed {
                return Ok(());
            }
            accept_plan(d, &spec, it, &bytes, etag, true).await?;
            drive(d, id).await
        }
        Err(e) => {
            tracing::warn!(id, error = %e, "update poll failed");
            Ok(())
        }
    }
}

async fn poller(d: Arc<Daemon>) {
    loop {
        if d.sleep(d.config.poll_interval).await {
            return;
        }
        let items = match d.store.call(|s| s.items()).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "poller cannot read the store");
                continue;
            }
        };
        for it in items {
            if matches!(it.stage, Stage::Running | Stage::RolledBack) {
                // try_send: a vendor whose queue is full is already busy;
                // its next poll comes at the next interval.
                if let Some(q) = d.queues.get(&it.device.vendor) {
                    let _ = q.try_send(Job::Poll(it.id));
                }
            }
        }
    }
}

// --------------------------------------------------------------------- API

async fn serve(d: Arc<Daemon>, listener: tokio::net::UnixListener) {
    let mut stop = d.shutdown();
    loop {
        let (stream, _) = tokio::select! {
            // Cancel-safe: accept loses no connection when cancelled.
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the api socket");
                    if d.sleep(Duration::from_millis(100)).await { return; }
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let d = d.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(&d, stream).await {
                tracing::debug!(error = %e, "api connection");
            }
        });
    }
}

async fn connection(
    d: &Arc<Daemon>,
    mut s: tokio::net::UnixStream,
) -> Result<(), super::api::FrameError> {
    let cred = s.peer_cred()?;
    let peer = Peer {
        uid: cred.uid(),
        pid: cred.pid(),
    };
    let req: Request = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut s))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    let resp = if peer.uid != 0 {
        Response::usage(format!("only root may use berthd (peer uid {})", peer.uid))
    } else {
        handle(d, peer, req).await
    };
    write_frame(&mut s, &resp).await
}

fn item_json(it: &Item) -> serde_json::Value {
    let (plan_id, version) = it
        .candidate_version
        .clone()
        .or_else(|| it.current_version.clone())
        .map_or((None, None), |(p, v)| (Some(p), Some(v)));
    json!({
        "id": it.id,
        "vendor": it.device.vendor,
        "model": it.device.model,
        "serial": it.device.serial,
        "firmware": it.device.firmware,
        "transport": it.device.transport,
        "address": it.device.address,
        "stage": it.stage.name(),
        "plan_id": plan_id,
        "version": version,
        "running_version": it.current_version.as_ref().map(|(_, v)| *v),
        "jail": it.current_jail.clone().or_else(|| it.candidate_jail.clone()),
        "error": it.error,
        "updated": it.updated,
    })
}

async fn handle(d: &Arc<Daemon>, peer: Peer, req: Request) -> Response {
    match handle_inner(d, peer, req).await {
        Ok(r) => r,
        Err(e) => Response::failure(e.to_string()),
    }
}

async fn handle_inner(d: &Arc<Daemon>, peer: Peer, req: Request) -> Result<Response, StoreError> {
    let ok = |data| Ok(Response::Ok { data });
    match req {
        Request::Pending => {
            let items = d.store.call(|s| s.items()).await?;
            let rows: Vec<_> = items
                .iter()
                .filter(|i| i.stage == Stage::AwaitingApproval)
                .map(|i| {
                    let mut v = item_json(i);
                    let spec = d.config.vendors.get(&i.device.vendor);
                    if let Some(p) = spec.and_then(|s| candidate_plan(i, s).ok()) {
                        v["jail"] = json!(p.jail.name);
                        v["memory"] = json!(p.jail.resources.memory);
                        v["images"] = json!(p
                            .apps
                            .iter()
                            .map(|a| a.image.to_string())
                            .collect::<Vec<_>>());
                    }
                    v
                })
                .collect();
            ok(json!(rows))
        }
        Request::Approve { id } | Request::Deny { id, .. } => {
            let deny = matches!(req, Request::Deny { .. });
            let reason = match &req {
                Request::Deny { reason, .. } => reason.clone().unwrap_or_default(),
                _ => String::new(),
            };
            let Some(mut it) = d.load(id).await? else {
                return Ok(Response::usage(format!("no request {id}")));
            };
            if it.stage != Stage::AwaitingApproval {
                return Ok(Response::usage(format!(
                    "request {id} is {}, not awaiting approval",
                    it.stage.name()
                )));
            }
            let to = if deny { Stage::Denied } else { Stage::Approved };
            transition(&mut it, to).map_err(bad)?;
            if deny {
                it.error = Some(if reason.is_empty() {
                    "denied by a technician".into()
                } else {
                    format!("denied: {reason}")
                });
            }
            let a = audit(
                &peer.who(),
                &it,
                if deny { "deny" } else { "approve" },
                &reason,
            );
            let report = if deny {
                d.config
                    .vendors
                    .get(&it.device.vendor)
                    .and_then(|spec| refused_report(d, &it, spec))
            } else {
                None
            };
            d.put_owing(&it, Some(a), report).await?;
            tracing::info!(
                id,
                who = peer.who().as_str(),
                decision = if deny { "deny" } else { "approve" },
                "technician decision"
            );
            if !deny {
                let vendor = it.device.vendor.clone();
                // Queue without holding up the answer to the technician.
                let d2 = d.clone();
                tokio::spawn(async move { d2.enqueue(&vendor, Job::Drive(id)).await });
            }
            ok(json!({ "id": id, "stage": it.stage.name() }))
        }
        Request::Pair { vendor, secs } => {
            if !d.config.vendors.contains_key(&vendor) {
                return Ok(Response::usage(format!(
                    "vendor {vendor:?} is not in the registry of {}",
                    d.config.path.display()
                )));
            }
            let until = now_secs().saturating_add(secs);
            let a = AuditEntry {
                v: RECORD_VERSION,
                time: now_secs(),
                who: peer.who(),
                item: 0,
                plan: None,
                decision: "pair".into(),
                detail: format!("vendor {vendor} for {secs}s"),
            };
            let v = vendor.clone();
            d.store.call(move |s| s.pair(&v, until, &a)).await?;
            ok(
                json!({ "vendor": vendor, "until": until, "until_rfc3339": format!("unix time {until}") }),
            )
        }
        Request::Devices => {
            let items = d.store.call(|s| s.items()).await?;
            let rows: Vec<_> = items
                .iter()
                .map(|i| {
                    let mut v = item_json(i);
                    if let Some((done, total)) = d.pulls.get(i.id) {
                        v["pull"] = json!(super::pulls::describe(done, total));
                        v["pull_bytes"] = json!({ "done": done, "total": total });
                    }
                    v
                })
                .collect();
            ok(json!(rows))
        }
        Request::Jails => {
            let items = d.store.call(|s| s.items()).await?;
            let infos = if d.layout.jails().is_dir() {
                jail::list(&d.layout.jails()).await.unwrap_or_default()
            } else {
                Vec::new()
            };
            let rows: Vec<_> = infos
                .into_iter()
                .map(|i| {
                    let owner = items.iter().find(|it| {
                        it.current_jail.as_deref() == Some(i.name.as_str())
                            || it.candidate_jail.as_deref() == Some(i.name.as_str())
                    });
                    let (plan_id, version) = owner
                        .and_then(|o| {
                            if o.current_jail.as_deref() == Some(i.name.as_str()) {
                                o.current_version.clone()
                            } else {
                                o.candidate_version.clone()
                            }
                        })
                        .map_or((None, None), |(p, v)| (Some(p), Some(v)));
                    json!({
                        "name": i.name,
                        "vendor": i.vendor,
                        "state": if i.alive { format!("{:?}", i.phase).to_lowercase() } else { "stopped".into() },
                        "pid": if i.alive { i.pid } else { None },
                        "address": i.address.map(|a| a.to_string()),
                        "plan_id": plan_id,
                        "version": version,
                        "request": owner.map(|o| o.id),
                    })
                })
                .collect();
            ok(json!(rows))
        }
        Request::Status => {
            let items = d.store.call(|s| s.items()).await?;
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for i in &items {
                *counts.entry(i.stage.name()).or_default() += 1;
            }
            let pairings = d.store.call(|s| s.pairings()).await?;
            let now = now_secs();
            ok(json!({
                "version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
                "gateway_id": d.config.gateway_id,
                "state_dir": d.config.state_dir.display().to_string(),
                "uptime_secs": now.saturating_sub(d.started),
                "vendors": d.config.vendors.keys().collect::<Vec<_>>(),
                "devices": counts,
                "pairing": pairings.into_iter().filter(|(_, u)| *u > now).map(|(v, _)| v).collect::<Vec<_>>(),
            }))
        }
        Request::Logs { jail } => {
            if jail::Name::new(&jail).is_err()
                || !jail::state::jail_dir(&d.layout.jails(), &jail).is_dir()
            {
                return Ok(Response::usage(format!("no jail named '{jail}'")));
            }
            match jail::Jail::adopt(&d.layout.jails(), &jail).await {
                Ok(j) => ok(json!(tail(&j.console_log(), 64 * 1024))),
                Err(e) => Ok(Response::failure(format!("jail {jail}: {e}"))),
            }
        }
        Request::JailReset { jail } => {
            let items = d.store.call(|s| s.items()).await?;
            let Some(it) = items.into_iter().find(|i| {
                i.current_jail.as_deref() == Some(jail.as_str())
                    || i.candidate_jail.as_deref() == Some(jail.as_str())
            }) else {
                return Ok(Response::usage(format!(
                    "no jail named '{jail}' managed by berthd"
                )));
            };
            if it.stage.in_flight() {
                return Ok(Response::usage(format!(
                    "jail '{jail}' is being {}; try again when it settles",
                    it.stage.name()
                )));
            }
            let a = audit(&peer.who(), &it, "reset", &jail);
            let it2 = it.clone();
            // Forget first: a crash after this leaves an orphan jail, which
            // the next start removes.
            d.store.call(move |s| s.remove(&it2, a)).await?;
            jails::remove(&d.layout, &jail).await;
            super::routing::refresh(d).await;
            ok(json!({ "jail": jail, "request": it.id }))
        }
    }
}

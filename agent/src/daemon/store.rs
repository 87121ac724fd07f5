//! The daemon's persisted state in one `redb` file (`<state dir>/berthd.redb`):
//! every write is one transaction committed with immediate durability
//! (fsync before `commit` returns), so `kill -9` or a power cut at any
//! instant loses no decided state.
//!
//! Tables:
//! - `items`: `vendor/serial` → [`Item`] (JSON, versioned);
//! - `ids`: item id → `vendor/serial`;
//! - `versions`: plan id → highest plan version accepted (the replay guard);
//! - `audit`: sequence → [`AuditEntry`] (append-only);
//! - `pairing`: vendor → unix time the pairing window ends;
//! - `reports`: sequence → [`OwedReport`] (JSON): reports committed with
//!   the transition they describe and not yet acknowledged by the vendor;
//! - `meta`: `schema`, `next_id`, `next_audit`, `next_report`.
//!
//! A table added later (`reports`) is created when a store is opened, so
//! stores written before it stay readable without a schema change.
//!
//! All calls block (they fsync): async code runs them through
//! [`Store::call`], which moves them off the runtime.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::state::{AuditEntry, Item, OwedReport, Stage, RECORD_VERSION};

const ITEMS: TableDefinition<&str, &[u8]> = TableDefinition::new("items");
const IDS: TableDefinition<u64, &str> = TableDefinition::new("ids");
const VERSIONS: TableDefinition<&str, u64> = TableDefinition::new("versions");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const PAIRING: TableDefinition<&str, u64> = TableDefinition::new("pairing");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REPORTS: TableDefinition<u64, &[u8]> = TableDefinition::new("reports");

/// Schema of the tables above.
pub const SCHEMA: u64 = 1;

/// How long opening waits for a lock held by another process.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// File name of the store in the state dir.
pub const STORE_FILE: &str = "berthd.redb";

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("state store {path}: {what}: {source}")]
    Db {
        /// The store file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// Cause.
        source: Box<redb::Error>,
    },
    /// A record cannot be decoded.
    #[error("state store {path}: record {key} is unreadable: {reason}")]
    Record {
        /// The store file.
        path: PathBuf,
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The store was written by a newer berthd.
    #[error("state store {path} has schema {found}; this berthd reads up to {SCHEMA}")]
    Schema {
        /// The store file.
        path: PathBuf,
        /// Its schema.
        found: u64,
    },
    /// A plan version older than one accepted before.
    #[error("plan {plan_id} version {version} is older than version {current} already accepted")]
    Replayed {
        /// Plan id.
        plan_id: String,
        /// Offered version.
        version: u64,
        /// Highest accepted.
        current: u64,
    },
    /// The blocking task died.
    #[error("state store task failed: {0}")]
    Task(String),
}

/// The store; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the store in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(STORE_FILE);
        // After a `kill -9` the store's lock can outlive the daemon for a
        // moment: a jail child cloned just before the kill holds the file
        // until it execs (the fd is close-on-exec) or exits. Wait for it.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match Database::create(&path) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(StoreError::Db {
                        path: path.clone(),
                        what: "open",
                        source: Box::new(e.into()),
                    })
                }
            }
        };
        let s = Store {
            db: Arc::new(db),
            path,
        };
        s.init()?;
        Ok(s)
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err<E: Into<redb::Error>>(&self, what: &'static str) -> impl FnOnce(E) -> StoreError + '_ {
        move |e| StoreError::Db {
            path: self.path.clone(),
            what,
            source: Box::new(e.into()),
        }
    }

    fn init(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(self.err("begin"))?;
        {
            let mut meta = tx.open_table(META).map_err(self.err("open meta"))?;
            let found = meta
                .get("schema")
                .map_err(self.err("read schema"))?
                .map(|g| g.value());
            match found {
                Some(v) if v > SCHEMA => {
                    return Err(StoreError::Schema {
                        path: self.path.clone(),
                        found: v,
                    })
                }
                Some(_) => {}
                None => {
                    meta.insert("schema", SCHEMA)
                        .map_err(self.err("write schema"))?;
                }
            }
            // Create every table so readers never meet a missing one.
            tx.open_table(ITEMS).map_err(self.err("open items"))?;
            tx.open_table(IDS).map_err(self.err("open ids"))?;
            tx.open_table(VERSIONS).map_err(self.err("open versions"))?;
            tx.open_table(AUDIT).map_err(self.err("open audit"))?;
            tx.open_table(PAIRING).map_err(self.err("open pairing"))?;
            tx.open_table(REPORTS).map_err(self.err("open reports"))?;
        }
        tx.commit().map_err(self.err("commit"))?;
        Ok(())
    }

    /// Runs `f` on a blocking thread.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let s = self.clone();
        tokio::task::spawn_blocking(move || f(&s))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
    }

    fn decode_item(&self, key: &str, bytes: &[u8]) -> Result<Item, StoreError> {
        let it: Item = serde_json::from_slice(bytes).map_err(|e| StoreError::Record {
            path: self.path.clone(),
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        if it.v > RECORD_VERSION {
            return Err(StoreError::Record {
                path: self.path.clone(),
                key: key.to_string(),
                reason: format!("format {} is newer than {RECORD_VERSION}", it.v),
            });
        }
        Ok(it)
    }

    /// The item of a device, if any.
    pub fn item(&self, key: &str) -> Result<Option<Item>, StoreError> {
        let tx = self.db.begin_read().map_err(self.err("begin read"))?;
        let t = tx.open_table(ITEMS).map_err(self.err("open items"))?;
        let got = t.get(key).map_err(self.err("read item"))?;
        got.map(|g| self.decode_item(key, g.value())).transpose()
    }

    /// The item with this id, if any.
    pub fn item_by_id(&self, id: u64) -> Result<Option<Item>, StoreError> {
        let key = {
            let tx = self.db.begin_read().map_err(self.err("begin read"))?;
            let t = tx.open_table(IDS).map_err(self.err("open ids"))?;
            let got = t.get(id).map_err(self.err("read id"))?;
            match got {
                Some(g) => g.value().to_string(),
                None => return Ok(None),
            }
        };
        self.item(&key)
    }

    /// Every item, by id.
    pub fn items(&self) -> Result<Vec<Item>, StoreError> {
        let tx = self.db.begin_read().map_err(self.err("begin read"))?;
        let t = tx.open_table(ITEMS).map_err(self.err("open items"))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(self.err("list items"))? {
            let (k, v) = row.map_err(self.err("list items"))?;
            out.push(self.decode_item(k.value(), v.value())?);
        }
        out.sort_by_key(|i| i.id);
        Ok(out)
    }

    /// A fresh item id (committed, so ids are never reused).
    pub fn next_id(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_write().map_err(self.err("begin"))?;
        let id = {
            let mut meta = tx.open_table(META).map_err(self.err("open meta"))?;
            let id = meta
                .get("next_id")
                .map_err(self.err("read next_id"))?
                .map_or(1, |g| g.value());
            meta.insert("next_id", id + 1)
                .map_err(self.err("write next_id"))?;
            id
        };
        tx.commit().map_err(self.err("commit"))?;
        Ok(id)
    }

    /// Writes `item`, and `audit` with it when given, in one transaction.
    /// When the item carries a plan version that moves into force
    /// (`current_version`), the replay guard advances with it.
    pub fn put(&self, item: &Item, audit: Option<AuditEntry>) -> Result<(), StoreError> {
        self.put_owing(item, audit, None).map(|_| ())
    }

    /// [`Store::put`], and in the same transaction records `report` as
    /// owed to the item's vendor; returns the report's sequence number.
    pub fn put_owing(
        &self,
        item: &Item,
        audit: Option<AuditEntry>,
        report: Option<Vec<u8>>,
    ) -> Result<Option<u64>, StoreError> {
        self.write_item(item, audit, report, false)
            .map(Option::flatten)
    }

    /// [`Store::put`], but only while the item is still stored: a writer
    /// holding a copy read before an `await` (the update poller) must not
    /// bring back an item that was removed meanwhile (`berth jail reset`).
    /// Returns whether it was written.
    pub fn put_existing(&self, item: &Item, audit: Option<AuditEntry>) -> Result<bool, StoreError> {
        self.write_item(item, audit, None, true)
            .map(|w| w.is_some())
    }

    /// Writes `item` (with `audit` and an owed `report`) in one
    /// transaction; `None` when `must_exist` and the item is not stored,
    /// in which case nothing is written.
    fn write_item(
        &self,
        item: &Item,
        audit: Option<AuditEntry>,
        report: Option<Vec<u8>>,
        must_exist: bool,
    ) -> Result<Option<Option<u64>>, StoreError> {
        let key = item.key();
        let bytes = serde_json::to_vec(item).map_err(|e| StoreError::Record {
            path: self.path.clone(),
            key: key.clone(),
            reason: e.to_string(),
        })?;
        let mut seq = None;
        let tx = self.db.begin_write().map_err(self.err("begin"))?;
        {
            let mut items = tx.open_table(ITEMS).map_err(self.err("open items"))?;
            if must_exist
                && items
                    .get(key.as_str())
                    .map_err(self.err("read item"))?
                    .is_none()
            {
                // Dropping the transaction aborts it: nothing is written.
                return Ok(None);
            }
            items
                .insert(key.as_str(), bytes.as_slice())
                .map_err(self.err("write item"))?;
            let mut ids = tx.open_table(IDS).map_err(self.err("open ids"))?;
            ids.insert(item.id, key.as_str())
                .map_err(self.err("write id"))?;
            for (plan_id, version) in [&item.current_version, &item.candidate_version]
                .into_iter()
                .flatten()
            {
                // The guard remembers the highest version ever accepted for
                // a plan id, candidate or current: a verified plan is
                // accepted when it is stored.
                let mut vt = tx.open_table(VERSIONS).map_err(self.err("open versions"))?;
                let seen = vt
                    .get(plan_id.as_str())
                    .map_err(self.err("read version"))?
                    .map(|g| g.value());
                if seen.is_none_or(|s| s < *version) {
                    vt.insert(plan_id.as_str(), *version)
                        .map_err(self.err("write version"))?;
                }
            }
            if let Some(a) = audit {
                append_audit(&tx, &a, &self.path).map_err(|e| self.err("write audit")(e))?;
            }
            if let Some(report) = report {
                let owed = OwedReport {
                    v: RECORD_VERSION,
                    vendor: item.device.vendor.clone(),
                    item: item.id,
                    report,
                    since: super::state::now_secs(),
                };
                seq = Some(append_report(&tx, &owed).map_err(|e| self.err("write report")(e))?);
            }
        }
        tx.commit().map_err(self.err("commit"))?;
        Ok(Some(seq))
    }

    /// Reports owed to vendors, oldest first, with their sequence numbers.
    pub fn owed_reports(&self) -> Result<Vec<(u64, OwedReport)>, StoreError> {
        let tx = self.db.begin_read().map_err(self.err("begin read"))?;
        let t = tx.open_table(REPORTS).map_err(self.err("open reports"))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(self.err("list reports"))? {
            let (k, v) = row.map_err(self.err("list reports"))?;
            let r: OwedReport =
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Record {
                    path: self.path.clone(),
                    key: format!("report {}", k.value()),
                    reason: e.to_string(),
                })?;
            out.push((k.value(), r));
        }
        Ok(out)
    }

    /// Forgets an owed report (the vendor acknowledged or refused it), with
    /// an audit entry when given, in one transaction.
    pub fn report_settled(&self, seq: u64, audit: Option<AuditEntry>) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(self.err("begin"))?;
        {
            let mut t = tx.open_table(REPORTS).map_err(self.err("open reports"))?;
            t.remove(seq).map_err(self.err("remove report"))?;
            if let Some(a) = audit {
                append_audit(&tx, &a, &self.path).map_err(|e| self.err("write audit")(e))?;
            }
        }
        tx.commit().map_err(self.err("commit"))?;
        Ok(())
    }

    /// Updates where a device is and its latest announce, reading and
    /// writing the item in one transaction so that a concurrent stage
    /// change is never overwritten. Returns whether anything changed.
    pub fn update_device(&self, dev: &super::state::DeviceRecord) -> Result<bool, StoreError> {
        let key = super::state::device_key(&dev.vendor, &dev.serial);
        let tx = self.db.begin_write().map_err(self.err("begin"))?;
        let changed = {
            let mut items = tx.open_table(ITEMS).map_err(self.err("open items"))?;
            let cur = items
                .get(key.as_str())
                .map_err(self.err("read item"))?
                .map(|g| self.decode_item(&key, g.value()))
                .transpose()?;
            match cur {
                Some(mut it)
                    if it.device.address != dev.address
                        || it.device.transport != dev.transport
                        || (it.device.announce != dev.announce
                            && matches!(
                                it.stage,
                                Stage::Detected | Stage::Requested | Stage::Failed
                            )) =>
                {
                    it.device.address = dev.address.clone();
                    it.device.transport = dev.transport.clone();
                    it.device.announce = dev.announce.clone();
                    let bytes = serde_json::to_vec(&it).map_err(|e| StoreError::Record {
                        path: self.path.clone(),
                        key: key.clone(),
                        reason: e.to_string(),
                    })?;
                    items
                        .insert(key.as_str(), bytes.as_slice())
                        .map_err(self.err("write item"))?;
                    true
                }
                _ => false,
            }
        };
        tx.commit().map_err(self.err("commit"))?;
        Ok(changed)
    }

    /// Removes a device's item (`berth jail-reset` of its last jail).
    pub fn remove(&self, item: &Item, audit: AuditEntry) -> Result<(), StoreError> {
        let key = item.key();
        let tx = self.db.begin_write().map_err(self.err("begin"))?;
        {
            let mut items = tx.open_table(ITEMS).map_err(self.err("open items"))?;
            items
                .remove(key.as_str())
                .map_err(self.err("remove item"))?;
            let mut ids = tx.open_table(IDS).map_err(self.err("open ids"))?;
            ids.remove(item.id).map_err(self.err("remove id"))?;
            append_audit(&tx, &audit, &self.path).map_err(|e| self.err("write audit")(e))?;
        }
        tx.commit().map_err(self.err("commit"))?;
        Ok(())
    }

    /// The highest version of `plan_id` accepted so far.
    pub fn accepted_version(&self, plan_id: &str) -> Result<Option<u64>, StoreError> {
        let tx = self.db.begin_read().map_err(self.err("begin read"))?;
        let t = tx.open_table(VERSIONS).map_err(self.err("open versions"))?;
        let v = t.get(plan_id).map_err(self.err("read version"))?;
        Ok(v.map(|g| g.value()))
    }

    /// Refuses `version` of `plan_id` when a higher one was accepted.
    pub fn check_version(&self, plan_id: &str, version: u64) -> Result<(), StoreError> {
        match self.accepted_version(plan_id)? {
            Some(current) if current > version => Err(StoreError::Replayed {
                plan_id: plan_id.to_string(),
                version,
                current,
            }),
            _ => Ok(()),
        }
    }

    /// Appends one audit entry on its own.
    pub fn audit(&self, a: &AuditEntry) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(self.err("begin"))?;
        append_audit(&tx, a, &self.path).map_err(|e| self.err("write audit")(e))?;
        tx.commit().map_err(self.err("commit"))?;
        Ok(())
    }

    /// The audit log, oldest first.
    pub fn audit_log(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let tx = self.db.begin_read().map_err(self.err("begin read"))?;
        let t = tx.open_table(AUDIT).map_err(self.err("open audit"))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(self.err("list audit"))? {
            let (k, v) = row.map_err(self.err("list audit"))?;
            let e: AuditEntry =
                serde_json::from_slice(v.value()).map_err(|e| StoreError::Record {
                    path: self.path.clone(),
                    key: format!("audit {}", k.value()),
                    reason: e.to_string(),
                })?;
            out.push(e);
        }
        Ok(out)
    }

    /// Opens a pairing window for `vendor` until `until` (unix seconds),
    /// audited.
    pub fn pair(&self, vendor: &str, until: u64, audit: &AuditEntry) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(self.err("begin"))?;
        {
            let mut t = tx.open_table(PAIRING).map_err(self.err("open pairing"))?;
            t.insert(vendor, until).map_err(self.err("write pairing"))?;
            append_audit(&tx, audit, &self.path).map_err(|e| self.err("write audit")(e))?;
        }
        tx.commit().map_err(self.err("commit"))?;
        Ok(())
    }

    /// Whether `vendor` has a pairing window open at `now`.
    pub fn pairing_open(&self, vendor: &str, now: u64) -> Result<bool, StoreError> {
        let tx = self.db.begin_read().map_err(self.err("begin read"))?;
        let t = tx.open_table(PAIRING).map_err(self.err("open pairing"))?;
        let v = t.get(vendor).map_err(self.err("read pairing"))?;
        Ok(v.is_some_and(|g| g.value() > now))
    }

    /// Every pairing window: vendor and end time.
    pub fn pairings(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let tx = self.db.begin_read().map_err(self.err("begin read"))?;
        let t = tx.open_table(PAIRING).map_err(self.err("open pairing"))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(self.err("list pairing"))? {
            let (k, v) = row.map_err(self.err("list pairing"))?;
            out.push((k.value().to_string(), v.value()));
        }
        Ok(out)
    }
}

fn append_audit(
    tx: &redb::WriteTransaction,
    a: &AuditEntry,
    _path: &Path,
) -> Result<(), redb::Error> {
    let mut meta = tx.open_table(META)?;
    let seq = meta.get("next_audit")?.map_or(1, |g| g.value());
    meta.insert("next_audit", seq + 1)?;
    // Serialising a struct of strings and integers cannot fail.
    let bytes = serde_json::to_vec(a).unwrap_or_default();
    let mut t = tx.open_table(AUDIT)?;
    t.insert(seq, bytes.as_slice())?;
    Ok(())
}

fn append_report(tx: &redb::WriteTransaction, r: &OwedReport) -> Result<u64, redb::Error> {
    let mut meta = tx.open_table(META)?;
    let seq = meta.get("next_report")?.map_or(1, |g| g.value());
    meta.insert("next_report", seq + 1)?;
    // Serialising a struct of strings and integers cannot fail.
    let bytes = serde_json::to_vec(r).unwrap_or_default();
    let mut t = tx.open_table(REPORTS)?;
    t.insert(seq, bytes.as_slice())?;
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::state::tests::device;
    use crate::daemon::state::{now_secs, transition};

    fn entry(item: u64, decision: &str) -> AuditEntry {
        AuditEntry {
            v: 1,
            time: now_secs(),
            who: "uid=0 pid=1".into(),
            item,
            plan: Some(("p1".into(), 3)),
            decision: decision.into(),
            detail: String::new(),
        }
    }

    #[test]
    fn transitions_persist_across_reopen() {
        let d = tempfile::tempdir().unwrap();
        let id;
        {
            let s = Store::open(d.path()).unwrap();
            id = s.next_id().unwrap();
            let mut it = Item::new(id, device("s1"));
            transition(&mut it, Stage::Requested).unwrap();
            s.put(&it, None).unwrap();
            transition(&mut it, Stage::AwaitingApproval).unwrap();
            it.candidate = Some(vec![1, 2]);
            it.candidate_version = Some(("p1".into(), 3));
            s.put(&it, None).unwrap();
            transition(&mut it, Stage::Approved).unwrap();
            s.put(&it, Some(entry(id, "approve"))).unwrap();
        }
        let s = Store::open(d.path()).unwrap();
        let it = s.item_by_id(id).unwrap().unwrap();
        assert_eq!(it.stage, Stage::Approved);
        assert_eq!(it.candidate, Some(vec![1, 2]));
        assert_eq!(s.item("acme/s1").unwrap().unwrap().id, id);
        assert_eq!(s.items().unwrap().len(), 1);
        assert_eq!(s.next_id().unwrap(), id + 1, "ids are never reused");
        let log = s.audit_log().unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].decision, "approve");
        assert_eq!(log[0].who, "uid=0 pid=1");
    }

    #[test]
    fn a_removed_item_is_not_brought_back_by_a_stale_copy() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let id = s.next_id().unwrap();
        let mut it = Item::new(id, device("s1"));
        transition(&mut it, Stage::Requested).unwrap();
        s.put(&it, None).unwrap();
        let mut stale = s.item_by_id(id).unwrap().unwrap();
        assert!(
            s.put_existing(&stale, None).unwrap(),
            "a stored item is updated"
        );
        s.remove(&it, entry(id, "reset")).unwrap();
        stale.etag = Some("\"v1\"".into());
        assert!(!s.put_existing(&stale, Some(entry(id, "approve"))).unwrap());
        assert!(
            s.item_by_id(id).unwrap().is_none(),
            "the removed item stays removed"
        );
        assert!(s.items().unwrap().is_empty());
        let log = s.audit_log().unwrap();
        assert_eq!(log.len(), 1, "nothing of the refused write lands: {log:?}");
        assert_eq!(log[0].decision, "reset");
    }

    #[test]
    fn version_guard_refuses_replays_and_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path()).unwrap();
            let mut it = Item::new(s.next_id().unwrap(), device("s1"));
            it.current_version = Some(("plan-a".into(), 5));
            s.put(&it, None).unwrap();
            // A lower version written later does not lower the guard.
            it.current_version = Some(("plan-a".into(), 2));
            s.put(&it, None).unwrap();
        }
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.accepted_version("plan-a").unwrap(), Some(5));
        assert!(s.check_version("plan-a", 5).is_ok());
        assert!(s.check_version("plan-a", 6).is_ok());
        let e = s.check_version("plan-a", 4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "plan plan-a version 4 is older than version 5 already accepted"
        );
        assert!(s.check_version("plan-b", 1).is_ok());
    }

    #[test]
    fn audit_is_append_only_and_ordered() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        for (i, what) in ["approve", "deny", "pair"].iter().enumerate() {
            s.audit(&entry(i as u64, what)).unwrap();
        }
        let it = Item::new(7, device("s7"));
        s.put(&it, None).unwrap();
        s.remove(&it, entry(7, "reset")).unwrap();
        let log: Vec<String> = s
            .audit_log()
            .unwrap()
            .into_iter()
            .map(|e| e.decision)
            .collect();
        assert_eq!(log, ["approve", "deny", "pair", "reset"]);
        assert!(s.item_by_id(7).unwrap().is_none());
    }

    #[test]
    fn device_updates_keep_the_stage_written_meanwhile() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let mut it = Item::new(1, device("s1"));
        s.put(&it, None).unwrap();
        // A worker moves the item on after the detection task loaded it.
        transition(&mut it, Stage::Requested).unwrap();
        s.put(&it, None).unwrap();
        let mut seen = device("s1");
        seen.announce = vec![9, 9];
        assert!(s.update_device(&seen).unwrap());
        let got = s.item("acme/s1").unwrap().unwrap();
        assert_eq!(got.stage, Stage::Requested, "stage not overwritten");
        assert_eq!(got.device.announce, vec![9, 9]);
        assert!(!s.update_device(&seen).unwrap(), "nothing new");
    }

    #[test]
    fn an_owed_report_is_committed_with_its_transition_and_kept_until_settled() {
        let d = tempfile::tempdir().unwrap();
        let id;
        {
            let s = Store::open(d.path()).unwrap();
            id = s.next_id().unwrap();
            let mut it = Item::new(id, device("s1"));
            s.put(&it, None).unwrap();
            transition(&mut it, Stage::Requested).unwrap();
            let seq = s
                .put_owing(&it, Some(entry(id, "failed")), Some(vec![0xa1, 0x00]))
                .unwrap();
            assert_eq!(seq, Some(1));
            // Another one for the same vendor, later.
            s.put_owing(&it, None, Some(vec![0xa0])).unwrap();
            assert_eq!(s.put_owing(&it, None, None).unwrap(), None);
        }
        // Reopened as after a crash: both are still owed, in order, with
        // the transition they came with.
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.item_by_id(id).unwrap().unwrap().stage, Stage::Requested);
        let owed = s.owed_reports().unwrap();
        assert_eq!(owed.len(), 2);
        assert_eq!((owed[0].0, owed[1].0), (1, 2));
        assert_eq!(owed[0].1.report, vec![0xa1, 0x00]);
        assert_eq!((owed[0].1.vendor.as_str(), owed[0].1.item), ("acme", id));
        s.report_settled(1, Some(entry(id, "report-refused")))
            .unwrap();
        let owed = s.owed_reports().unwrap();
        assert_eq!(owed.len(), 1);
        assert_eq!(owed[0].0, 2);
        assert_eq!(
            s.audit_log().unwrap().last().unwrap().decision,
            "report-refused"
        );
        // Sequence numbers are never reused.
        let it = s.item_by_id(id).unwrap().unwrap();
        assert_eq!(s.put_owing(&it, None, Some(vec![0xa0])).unwrap(), Some(3));
    }

    #[test]
    fn pairing_windows_expire() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        s.pair("acme", 1000, &entry(0, "pair")).unwrap();
        assert!(s.pairing_open("acme", 999).unwrap());
        assert!(!s.pairing_open("acme", 1000).unwrap());
        assert!(!s.pairing_open("globex", 0).unwrap());
        assert_eq!(s.pairings().unwrap(), vec![("acme".to_string(), 1000)]);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = Store::open(d.path()).unwrap();
            let tx = s.db.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("schema", SCHEMA + 1)
                .unwrap();
            tx.commit().unwrap();
        }
        let e = Store::open(d.path()).unwrap_err();
        assert!(e.to_string().contains("has schema 2"), "{e}");
    }
}

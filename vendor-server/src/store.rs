//! The vendor server's store: one SQLite file holding the device registry,
//! plan templates and their published versions, signed plans and reports.
//!
//! The schema is versioned with `PRAGMA user_version`; [`Store::open`]
//! applies the migrations a file lacks, in one transaction each, and refuses
//! a file written by a newer berth-vendor. The CLI and a running server may
//! use one file at the same time (WAL mode, a busy timeout): a version the
//! CLI publishes is what the server hands out on the next poll.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use protocol::ed25519_dalek::VerifyingKey;
use protocol::provision::{CheckResult, Report};
use ring::rand::{SecureRandom, SystemRandom};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::keys::encode_hex;

/// Each entry moves the schema one version up; the index + 1 is the
/// version it produces. Never edit an entry once released: add one.
const MIGRATIONS: &[&str] = &[
    // 1: registry, templates, publications, signed plans, reports.
    "CREATE TABLE devices (
        model TEXT NOT NULL,
        serial TEXT NOT NULL,
        public_key BLOB NOT NULL,
        plan_id TEXT NOT NULL UNIQUE,
        last_counter INTEGER,
        last_announce BLOB,
        added_at INTEGER NOT NULL,
        PRIMARY KEY (model, serial)
    );
    CREATE TABLE templates (
        model TEXT PRIMARY KEY,
        template TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE publications (
        model TEXT NOT NULL,
        version INTEGER NOT NULL,
        template TEXT NOT NULL,
        published_at INTEGER NOT NULL,
        PRIMARY KEY (model, version)
    );
    CREATE TABLE signed_plans (
        plan_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        cose BLOB NOT NULL,
        PRIMARY KEY (plan_id, version)
    );
    CREATE TABLE reports (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at INTEGER NOT NULL,
        plan_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        gateway_id TEXT NOT NULL,
        serial TEXT NOT NULL,
        body BLOB NOT NULL
    );",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {path} has schema version {found}, newer than this berth-vendor's {SCHEMA_VERSION}; upgrade berth-vendor")]
    TooNew { path: PathBuf, found: u32 },
    #[error("database {path}: {what}")]
    Sql {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("device {model}/{serial} is already registered")]
    DeviceExists { model: String, serial: String },
    #[error(
        "no template set for model `{model}`: run `berth-vendor template set --model {model} FILE`"
    )]
    NoTemplate { model: String },
    #[error("database {path}: stored report {id} is unreadable")]
    BadReport { path: PathBuf, id: i64 },
    #[error("the system random number generator failed")]
    Random,
}

/// A registered device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub model: String,
    pub serial: String,
    pub public_key: [u8; 32],
    /// The id of this device's plan (random, 32 hex digits).
    pub plan_id: String,
    /// The highest announce counter accepted from it.
    pub last_counter: Option<u64>,
}

/// What [`Store::accept_announce`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterCheck {
    /// Higher than any before: recorded.
    Fresh,
    /// The very announce accepted last (a gateway retrying).
    Repeat,
    /// Not above the last accepted counter: a replay.
    Replayed { last: u64 },
}

/// A report as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredReport {
    pub id: i64,
    /// Seconds since the Unix epoch.
    pub received_at: u64,
    pub report: Report,
}

/// The SQLite store. Calls block (SQLite syncs to disk); async callers run
/// them with `spawn_blocking`.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        let store = Store {
            path: path.to_owned(),
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self, what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sql {
            path: self.path.clone(),
            what,
            source,
        }
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite itself consistent
        // (an open transaction rolls back when dropped), so a poisoned lock
        // is safe to keep using.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let mut c = self.conn();
        c.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(self.sql("set busy timeout"))?;
        c.pragma_update(None, "journal_mode", "WAL")
            .map_err(self.sql("enable WAL"))?;
        c.pragma_update(None, "synchronous", "FULL")
            .map_err(self.sql("set synchronous"))?;
        c.pragma_update(None, "foreign_keys", "ON")
            .map_err(self.sql("enable foreign keys"))?;
        loop {
            let tx = c
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(self.sql("begin migration"))?;
            let found: u32 = tx
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(self.sql("read schema version"))?;
            if found > SCHEMA_VERSION {
                return Err(StoreError::TooNew {
                    path: self.path.clone(),
                    found,
                });
            }
            if found == SCHEMA_VERSION {
                return Ok(());
            }
            tx.execute_batch(MIGRATIONS[found as usize])
                .map_err(self.sql("migrate schema"))?;
            tx.pragma_update(None, "user_version", found + 1)
                .map_err(self.sql("write schema version"))?;
            tx.commit().map_err(self.sql("commit migration"))?;
        }
    }

    /// Registers a device and gives it a fresh plan id.
    pub fn add_device(
        &self,
        model: &str,
        serial: &str,
        public_key: &VerifyingKey,
    ) -> Result<Device, StoreError> {
        let mut id = [0u8; 16];
        SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| StoreError::Random)?;
        let plan_id = encode_hex(&id);
        let c = self.conn();
        let res = c.execute(
            "INSERT INTO devices (model, serial, public_key, plan_id, added_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![model, serial, &public_key.as_bytes()[..], plan_id, now()],
        );
        match res {
            Ok(_) => Ok(Device {
                model: model.into(),
                serial: serial.into(),
                public_key: public_key.to_bytes(),
                plan_id,
                last_counter: None,
            }),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::DeviceExists {
                    model: model.into(),
                    serial: serial.into(),
                })
            }
            Err(e) => Err(self.sql("add device")(e)),
        }
    }

    fn device_where(
        &self,
        clause: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Device>, StoreError> {
        let c = self.conn();
        let mut st = c
            .prepare(&format!(
                "SELECT model, serial, public_key, plan_id, last_counter FROM devices {clause} ORDER BY model, serial"
            ))
            .map_err(self.sql("read devices"))?;
        let rows = st
            .query_map(args, |r| {
                let pk: Vec<u8> = r.get(2)?;
                let last: Option<i64> = r.get(4)?;
                Ok(Device {
                    model: r.get(0)?,
                    serial: r.get(1)?,
                    public_key: <[u8; 32]>::try_from(pk).unwrap_or([0; 32]),
                    plan_id: r.get(3)?,
                    // Counters are u64, stored bit for bit in SQLite's i64.
                    last_counter: last.map(|v| v as u64),
                })
            })
            .map_err(self.sql("read devices"))?;
        rows.collect::<Result<_, _>>()
            .map_err(self.sql("read devices"))
    }

    pub fn device(&self, model: &str, serial: &str) -> Result<Option<Device>, StoreError> {
        Ok(self
            .device_where("WHERE model = ?1 AND serial = ?2", &[&model, &serial])?
            .pop())
    }

    pub fn device_by_plan(&self, plan_id: &str) -> Result<Option<Device>, StoreError> {
        Ok(self.device_where("WHERE plan_id = ?1", &[&plan_id])?.pop())
    }

    pub fn devices(&self) -> Result<Vec<Device>, StoreError> {
        self.device_where("", &[])
    }

    /// Records an announce's counter if it is above the last one accepted
    /// from the device; the same announce again (a retry) is let through.
    pub fn accept_announce(
        &self,
        model: &str,
        serial: &str,
        counter: u64,
        announce: &[u8],
    ) -> Result<CounterCheck, StoreError> {
        let mut c = self.conn();
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql("begin announce"))?;
        let last: Option<(Option<i64>, Option<Vec<u8>>)> = tx
            .query_row(
                "SELECT last_counter, last_announce FROM devices WHERE model = ?1 AND serial = ?2",
                params![model, serial],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.sql("read announce counter"))?;
        let (last, last_bytes) = last.unwrap_or((None, None));
        let last = last.map(|v| v as u64);
        match last {
            Some(l) if counter == l && last_bytes.as_deref() == Some(announce) => {
                return Ok(CounterCheck::Repeat)
            }
            Some(l) if counter <= l => return Ok(CounterCheck::Replayed { last: l }),
            _ => {}
        }
        tx.execute(
            "UPDATE devices SET last_counter = ?3, last_announce = ?4 WHERE model = ?1 AND serial = ?2",
            params![model, serial, counter as i64, announce],
        )
        .map_err(self.sql("record announce counter"))?;
        tx.commit().map_err(self.sql("commit announce"))?;
        Ok(CounterCheck::Fresh)
    }

    /// Sets the draft template of a model (checked by the caller).
    pub fn set_template(&self, model: &str, text: &str) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO templates (model, template, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(model) DO UPDATE SET template = excluded.template, updated_at = excluded.updated_at",
                params![model, text, now()],
            )
            .map_err(self.sql("set template"))?;
        Ok(())
    }

    /// The draft template of a model.
    pub fn template(&self, model: &str) -> Result<Option<String>, StoreError> {
        self.conn()
            .query_row(
                "SELECT template FROM templates WHERE model = ?1",
                params![model],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("read template"))
    }

    /// Publishes the model's draft template as its next version and returns
    /// that version. Devices of the model get a plan of this version on
    /// their next request or poll.
    pub fn publish(&self, model: &str) -> Result<u64, StoreError> {
        let mut c = self.conn();
        let tx = c
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql("begin publish"))?;
        let text: Option<String> = tx
            .query_row(
                "SELECT template FROM templates WHERE model = ?1",
                params![model],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("read template"))?;
        let text = text.ok_or_else(|| StoreError::NoTemplate {
            model: model.into(),
        })?;
        let last: Option<i64> = tx
            .query_row(
                "SELECT MAX(version) FROM publications WHERE model = ?1",
                params![model],
                |r| r.get(0),
            )
            .map_err(self.sql("read versions"))?;
        let version = last.unwrap_or(0) + 1;
        tx.execute(
            "INSERT INTO publications (model, version, template, published_at) VALUES (?1, ?2, ?3, ?4)",
            params![model, version, text, now()],
        )
        .map_err(self.sql("publish"))?;
        tx.commit().map_err(self.sql("commit publish"))?;
        Ok(version as u64)
    }

    /// The model's current published version and its template.
    pub fn published(&self, model: &str) -> Result<Option<(u64, String)>, StoreError> {
        self.conn()
            .query_row(
                "SELECT version, template FROM publications WHERE model = ?1 ORDER BY version DESC LIMIT 1",
                params![model],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
            )
            .optional()
            .map_err(self.sql("read publication"))
    }

    /// A plan signed earlier.
    pub fn signed_plan(&self, plan_id: &str, version: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.conn()
            .query_row(
                "SELECT cose FROM signed_plans WHERE plan_id = ?1 AND version = ?2",
                params![plan_id, version as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("read signed plan"))
    }

    /// Keeps a signed plan so every request for that version gets the same
    /// bytes. The first one stored wins.
    pub fn put_signed_plan(
        &self,
        plan_id: &str,
        version: u64,
        cose: &[u8],
    ) -> Result<Vec<u8>, StoreError> {
        let c = self.conn();
        c.execute(
            "INSERT OR IGNORE INTO signed_plans (plan_id, version, cose) VALUES (?1, ?2, ?3)",
            params![plan_id, version as i64, cose],
        )
        .map_err(self.sql("store signed plan"))?;
        c.query_row(
            "SELECT cose FROM signed_plans WHERE plan_id = ?1 AND version = ?2",
            params![plan_id, version as i64],
            |r| r.get(0),
        )
        .map_err(self.sql("read signed plan"))
    }

    /// Stores a report (already decoded and checked) with its raw body.
    /// Gateways deliver reports at least once (one that crashed after the
    /// vendor took a report but before it noted that sends it again): the
    /// very same body from the same gateway again is the report already
    /// stored, whose id is returned.
    pub fn add_report(&self, report: &Report, body: &[u8]) -> Result<i64, StoreError> {
        let c = self.conn();
        let seen: Option<i64> = c
            .query_row(
                "SELECT id FROM reports WHERE plan_id = ?1 AND version = ?2 AND gateway_id = ?3 AND body = ?4 ORDER BY id LIMIT 1",
                params![report.plan_id, report.version as i64, report.gateway_id, body],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("look up report"))?;
        if let Some(id) = seen {
            return Ok(id);
        }
        c.execute(
            "INSERT INTO reports (received_at, plan_id, version, gateway_id, serial, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![now(), report.plan_id, report.version as i64, report.gateway_id, report.serial, body],
        )
        .map_err(self.sql("store report"))?;
        Ok(c.last_insert_rowid())
    }

    /// Every report, oldest first.
    pub fn reports(&self) -> Result<Vec<StoredReport>, StoreError> {
        use protocol::provision::CborMessage;
        let c = self.conn();
        let mut st = c
            .prepare("SELECT id, received_at, body FROM reports ORDER BY id")
            .map_err(self.sql("read reports"))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(self.sql("read reports"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at, body) = row.map_err(self.sql("read reports"))?;
            let report = Report::from_cbor(&body).map_err(|_| StoreError::BadReport {
                path: self.path.clone(),
                id,
            })?;
            out.push(StoredReport {
                id,
                received_at: at.max(0) as u64,
                report,
            });
        }
        Ok(out)
    }
}

/// One line per check result, for people.
pub fn describe_check(c: &CheckResult) -> String {
    format!(
        "{}#{} {} ({} ms): {}",
        c.app,
        c.index,
        if c.passed { "passed" } else { "FAILED" },
        c.elapsed_ms,
        c.output
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ed25519_dalek::SigningKey;
    use protocol::provision::{CborMessage, JailState, FORMAT};

    fn key() -> VerifyingKey {
        SigningKey::from_bytes(&[4; 32]).verifying_key()
    }

    #[test]
    fn devices_and_counters() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("v.db")).unwrap();
        let d = s.add_device("Meter 2", "SN-1", &key()).unwrap();
        assert_eq!(d.plan_id.len(), 32);
        assert!(matches!(
            s.add_device("Meter 2", "SN-1", &key()),
            Err(StoreError::DeviceExists { .. })
        ));
        let other = s.add_device("Meter 2", "SN-2", &key()).unwrap();
        assert_ne!(other.plan_id, d.plan_id);
        assert_eq!(
            s.device_by_plan(&d.plan_id).unwrap().unwrap().serial,
            "SN-1"
        );
        assert!(s.device("Meter 2", "SN-3").unwrap().is_none());
        assert_eq!(s.devices().unwrap().len(), 2);

        assert_eq!(
            s.accept_announce("Meter 2", "SN-1", 5, b"a5").unwrap(),
            CounterCheck::Fresh
        );
        assert_eq!(
            s.accept_announce("Meter 2", "SN-1", 5, b"a5").unwrap(),
            CounterCheck::Repeat
        );
        assert_eq!(
            s.accept_announce("Meter 2", "SN-1", 5, b"other").unwrap(),
            CounterCheck::Replayed { last: 5 }
        );
        assert_eq!(
            s.accept_announce("Meter 2", "SN-1", 4, b"a4").unwrap(),
            CounterCheck::Replayed { last: 5 }
        );
        assert_eq!(
            s.accept_announce("Meter 2", "SN-1", u64::MAX, b"m")
                .unwrap(),
            CounterCheck::Fresh
        );
        assert_eq!(
            s.device("Meter 2", "SN-1").unwrap().unwrap().last_counter,
            Some(u64::MAX)
        );
    }

    #[test]
    fn publish_bumps_versions() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("v.db")).unwrap();
        assert!(matches!(s.publish("M"), Err(StoreError::NoTemplate { .. })));
        assert!(s.published("M").unwrap().is_none());
        s.set_template("M", "one").unwrap();
        assert_eq!(s.publish("M").unwrap(), 1);
        s.set_template("M", "two").unwrap();
        assert_eq!(s.published("M").unwrap(), Some((1, "one".into())));
        assert_eq!(s.publish("M").unwrap(), 2);
        assert_eq!(s.published("M").unwrap(), Some((2, "two".into())));
        assert_eq!(s.template("M").unwrap().as_deref(), Some("two"));
        assert_eq!(s.put_signed_plan("p", 2, b"first").unwrap(), b"first");
        assert_eq!(s.put_signed_plan("p", 2, b"second").unwrap(), b"first");
        assert_eq!(s.signed_plan("p", 2).unwrap().unwrap(), b"first");
        assert!(s.signed_plan("p", 1).unwrap().is_none());
    }

    #[test]
    fn schema_is_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.db");
        {
            let s = Store::open(&p).unwrap();
            s.set_template("M", "t").unwrap();
        }
        // Reopening keeps the data and the version.
        let s = Store::open(&p).unwrap();
        assert_eq!(s.template("M").unwrap().as_deref(), Some("t"));
        let v: u32 = s
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        s.conn()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(s);
        let e = Store::open(&p).unwrap_err();
        assert!(matches!(e, StoreError::TooNew { .. }), "{e}");
        assert!(e.to_string().contains("upgrade berth-vendor"));
    }

    #[test]
    fn reports_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("v.db")).unwrap();
        let r = Report {
            format: FORMAT,
            plan_id: "p1".into(),
            version: 3,
            gateway_id: "gw".into(),
            serial: "SN-1".into(),
            jail: "acme".into(),
            address: Some("10.0.0.2/24".into()),
            state: JailState::Running,
            checks: vec![CheckResult {
                app: "a".into(),
                index: 0,
                passed: true,
                output: "ok".into(),
                elapsed_ms: 3,
            }],
            error: None,
        };
        let body = r.to_cbor().unwrap();
        let id = s.add_report(&r, &body).unwrap();
        // The same report delivered again is not stored twice; another
        // gateway's is.
        assert_eq!(s.add_report(&r, &body).unwrap(), id);
        let all = s.reports().unwrap();
        assert_eq!(all.len(), 1);
        let mut other = r.clone();
        other.gateway_id = "gw2".into();
        let body2 = other.to_cbor().unwrap();
        assert_ne!(s.add_report(&other, &body2).unwrap(), id);
        s.conn()
            .execute("DELETE FROM reports WHERE gateway_id = 'gw2'", [])
            .unwrap();
        let all = s.reports().unwrap();
        assert_eq!(all[0].id, id);
        assert_eq!(all[0].report, r);
        assert_eq!(describe_check(&r.checks[0]), "a#0 passed (3 ms): ok");
    }
}

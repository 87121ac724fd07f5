//! Progress of the image pulls berthd is running, per device request, so
//! that `berth devices` shows a technician how far a long pull over a slow
//! uplink has come. In memory only: a pull cut short by a restart starts
//! its report again with the pull.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::image::{Phase, Progress, ProgressFn};

/// One pull: bytes done and in all, by blob digest.
type Blobs = BTreeMap<String, (u64, u64)>;

/// The pulls in progress, by request id; cheap to clone (shared).
#[derive(Debug, Default, Clone)]
pub struct Pulls(Arc<Mutex<BTreeMap<u64, Blobs>>>);

impl Pulls {
    /// A progress callback recording the pull of request `id`.
    pub fn meter(&self, id: u64) -> ProgressFn {
        let me = self.clone();
        Arc::new(move |p: &Progress| me.record(id, p))
    }

    fn record(&self, id: u64, p: &Progress) {
        let done = match p.phase {
            Phase::Download => p.done.min(p.total),
            Phase::Unpack | Phase::Done | Phase::Cached => p.total,
        };
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.entry(id)
            .or_default()
            .insert(p.digest.to_string(), (done, p.total));
    }

    /// Bytes fetched and bytes in all of the blobs seen so far in request
    /// `id`'s pull, while it runs.
    pub fn get(&self, id: u64) -> Option<(u64, u64)> {
        let all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.get(&id).map(|blobs| {
            blobs
                .values()
                .fold((0, 0), |(d, t), (bd, bt)| (d + bd, t + bt))
        })
    }

    /// Forgets request `id`'s pull (it ended, either way).
    pub fn finish(&self, id: u64) {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        all.remove(&id);
    }
}

/// "12.3 of 29.0 MB (42%)".
pub fn describe(done: u64, total: u64) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    let pct = (done.saturating_mul(100)).checked_div(total).unwrap_or(0);
    format!("{:.1} of {:.1} MB ({pct}%)", mb(done), mb(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{BlobKind, Digest};

    fn progress(hex: char, phase: Phase, done: u64, total: u64) -> Progress {
        let digest: Digest = format!("sha256:{}", hex.to_string().repeat(64))
            .parse()
            .unwrap();
        Progress {
            digest,
            kind: BlobKind::Layer,
            phase,
            done,
            total,
        }
    }

    #[test]
    fn a_pull_sums_its_blobs_until_it_is_finished() {
        let pulls = Pulls::default();
        let m = pulls.meter(7);
        assert_eq!(pulls.get(7), None);
        m(&progress('a', Phase::Download, 1_000_000, 4_000_000));
        m(&progress('b', Phase::Cached, 0, 2_000_000));
        assert_eq!(pulls.get(7), Some((3_000_000, 6_000_000)));
        m(&progress('a', Phase::Download, 3_000_000, 4_000_000));
        assert_eq!(pulls.get(7), Some((5_000_000, 6_000_000)));
        m(&progress('a', Phase::Unpack, 4_000_000, 4_000_000));
        assert_eq!(pulls.get(7), Some((6_000_000, 6_000_000)));
        assert_eq!(pulls.get(8), None, "other requests are apart");
        pulls.finish(7);
        assert_eq!(pulls.get(7), None);
    }

    #[test]
    fn descriptions_read_as_megabytes_and_percent() {
        assert_eq!(describe(12_300_000, 29_000_000), "12.3 of 29.0 MB (42%)");
        assert_eq!(describe(0, 0), "0.0 of 0.0 MB (0%)");
        assert_eq!(describe(5, 5), "0.0 of 0.0 MB (100%)");
    }
}

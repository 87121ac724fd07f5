//! What limits, statistics and freezing mean in a cgroup v1 hierarchy
//! (Documentation/admin-guide/cgroup-v1/ in the kernel tree). Each function
//! takes the cgroup's directory in the hierarchy of the controller concerned.

use std::path::Path;
use std::time::Duration;

use crate::fsutil::{self, keyed, read_u64, read_u64_opt};
use crate::{CpuQuota, DeviceRule, Error, Stats};

/// How long a freeze or thaw may take to settle.
pub(crate) const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// A new cpuset child starts with empty `cpuset.cpus` and `cpuset.mems`,
/// and no task can join it until both are set: copy them from the parent.
pub(crate) fn init_cpuset(parent: &Path, child: &Path) -> Result<(), Error> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let c = child.join(file);
        let Some(current) = fsutil::read_opt(&c)? else {
            continue;
        };
        if !current.trim().is_empty() {
            continue;
        }
        let value = fsutil::read(&parent.join(file))?;
        fsutil::write(&c, value.trim())?;
    }
    Ok(())
}

/// Memory limit and swap. With swap off the memory+swap limit equals the
/// memory limit (written after it, as the kernel requires memsw >= limit)
/// and swappiness is 0.
pub(crate) fn memory(dir: &Path, max: Option<u64>, swap_off: bool) -> Result<(), Error> {
    let limit = dir.join("memory.limit_in_bytes");
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    let has_memsw = memsw.exists();
    if let Some(max) = max {
        let value = max.to_string();
        if let Err(err) = fsutil::write(&limit, &value) {
            // Raising the limit above the current memsw limit is refused
            // (EINVAL): raise memsw first, then retry.
            let einval = matches!(&err, Error::Write { source, .. }
                if source.raw_os_error() == Some(libc::EINVAL));
            if !(einval && has_memsw) {
                return Err(err);
            }
            let sw = if swap_off { value.clone() } else { "-1".into() };
            fsutil::write(&memsw, &sw)?;
            fsutil::write(&limit, &value)?;
        }
        if swap_off && has_memsw {
            fsutil::write(&memsw, &value)?;
        }
    }
    if swap_off {
        fsutil::write(&dir.join("memory.swappiness"), "0")?;
    }
    Ok(())
}

/// v2 `cpu.weight` (1..=10000) to v1 `cpu.shares` (2..=262144): the inverse
/// of runc's and crun's shares-to-weight conversion.
pub(crate) fn weight_to_shares(weight: u64) -> u64 {
    2 + (weight.saturating_sub(1) * 262_142) / 9_999
}

/// v2 `io.weight` (1..=10000) to v1 `blkio.weight` (10..=1000), the
/// inverse of runc's blkio-to-io conversion.
pub(crate) fn io_weight_to_blkio(weight: u16) -> u64 {
    10 + (u64::from(weight).saturating_sub(1) * 990) / 9_999
}

pub(crate) fn cpu(dir: &Path, weight: Option<u64>, quota: Option<CpuQuota>) -> Result<(), Error> {
    if let Some(w) = weight {
        fsutil::write(&dir.join("cpu.shares"), &weight_to_shares(w).to_string())?;
    }
    if let Some(q) = quota {
        fsutil::write(&dir.join("cpu.cfs_period_us"), &q.period_us.to_string())?;
        fsutil::write(&dir.join("cpu.cfs_quota_us"), &q.quota_us.to_string())?;
    }
    Ok(())
}

pub(crate) fn pids(dir: &Path, max: u64) -> Result<(), Error> {
    fsutil::write(&dir.join("pids.max"), &max.to_string())
}

/// Deny everything, then apply the rules in order (devices.txt). The
/// kernel takes one rule per write(2): each file is opened once and gets
/// one write per rule.
pub(crate) fn devices(dir: &Path, rules: &[DeviceRule]) -> Result<(), Error> {
    let mut deny = fsutil::Writer::open(&dir.join("devices.deny"))?;
    let mut allow = None;
    deny.write("a")?;
    for rule in rules.iter().filter(|r| !r.access.is_empty()) {
        let line = rule.v1_line();
        if rule.allow {
            if allow.is_none() {
                allow = Some(fsutil::Writer::open(&dir.join("devices.allow"))?);
            }
            if let Some(w) = allow.as_mut() {
                w.write(&line)?;
            }
        } else {
            deny.write(&line)?;
        }
    }
    Ok(())
}

/// Writes the weight to `blkio.weight` or `blkio.bfq.weight`, whichever the
/// io scheduler provides; false when neither exists.
pub(crate) fn io(dir: &Path, weight: u16) -> Result<bool, Error> {
    let value = io_weight_to_blkio(weight).to_string();
    for file in ["blkio.weight", "blkio.bfq.weight"] {
        let p = dir.join(file);
        if p.exists() {
            fsutil::write(&p, &value)?;
            return Ok(true);
        }
    }
    Ok(false)
}

pub(crate) fn memory_stats(dir: &Path, s: &mut Stats) -> Result<(), Error> {
    s.memory_current = read_u64(&dir.join("memory.usage_in_bytes"))?;
    s.memory_peak = read_u64_opt(&dir.join("memory.max_usage_in_bytes")).unwrap_or(None);
    s.oom_kills = oom_kills(dir)?;
    Ok(())
}

/// The `oom_kill` count of `memory.oom_control` (since Linux 4.13; 0
/// before).
pub(crate) fn oom_kills(dir: &Path) -> Result<u64, Error> {
    let oc = dir.join("memory.oom_control");
    match fsutil::read_opt(&oc)? {
        Some(text) => Ok(keyed(&oc, &text, "oom_kill")?.unwrap_or(0)),
        None => Ok(0),
    }
}

/// `cpuacct.usage` is in nanoseconds.
pub(crate) fn cpu_usage_us(dir: &Path) -> Result<u64, Error> {
    Ok(read_u64(&dir.join("cpuacct.usage"))? / 1_000)
}

pub(crate) fn pids_current(dir: &Path) -> Result<u64, Error> {
    read_u64(&dir.join("pids.current"))
}

/// Freezes or thaws and waits until `freezer.state` settles (it reads
/// FREEZING while tasks are still being stopped).
pub(crate) fn set_frozen(dir: &Path, frozen: bool) -> Result<(), Error> {
    let state = dir.join("freezer.state");
    let want = if frozen { "FROZEN" } else { "THAWED" };
    fsutil::write(&state, want)?;
    crate::cgroup::wait_until(&state, "freezer.state to settle", FREEZE_TIMEOUT, || {
        Ok(fsutil::read(&state)?.trim() == want)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_and_shares_conversions_match_runc() {
        assert_eq!(weight_to_shares(1), 2);
        assert_eq!(weight_to_shares(10_000), 262_144);
        // runc maps the default 1024 shares to weight 39; back it comes
        // to within one weight step (about 26 shares) of 1024.
        let w = 1 + ((1024 - 2) * 9_999) / 262_142;
        assert_eq!(w, 39);
        let s = weight_to_shares(w);
        assert!((1_024 - 27..=1_024).contains(&s), "{s}");
        assert_eq!(io_weight_to_blkio(1), 10);
        assert_eq!(io_weight_to_blkio(10_000), 1_000);
    }
}

//! What limits, statistics and freezing mean in the unified hierarchy
//! (Documentation/admin-guide/cgroup-v2.rst). Each function takes the
//! cgroup's directory in the cgroup2 mount.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::fsutil::{self, keyed, read_u64, read_u64_opt};
use crate::v1::{io_weight_to_blkio, FREEZE_TIMEOUT};
use crate::{bpf, sys, CpuQuota, DeviceRule, Error, Stats};

/// True when the cgroup's `cgroup.controllers` lists `name`, i.e. the
/// parent has it enabled in `cgroup.subtree_control`.
pub(crate) fn has_controller(dir: &Path, name: &str) -> Result<bool, Error> {
    let text = fsutil::read_opt(&dir.join("cgroup.controllers"))?.unwrap_or_default();
    Ok(text.split_whitespace().any(|c| c == name))
}

/// Enables the `wanted` controllers that `dir` itself has for its children.
/// Called only on directories Berth owns; the others stay as they are and
/// a controller they lack is reported unavailable later.
pub(crate) fn enable_subtree(dir: &Path, wanted: &[&str]) -> Result<(), Error> {
    let avail = fsutil::read_opt(&dir.join("cgroup.controllers"))?.unwrap_or_default();
    let enabled = fsutil::read_opt(&dir.join("cgroup.subtree_control"))?.unwrap_or_default();
    let todo: Vec<String> = wanted
        .iter()
        .filter(|w| avail.split_whitespace().any(|a| a == **w))
        .filter(|w| !enabled.split_whitespace().any(|e| e == **w))
        .map(|w| format!("+{w}"))
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    let ctl = dir.join("cgroup.subtree_control");
    if fsutil::write(&ctl, &todo.join(" ")).is_ok() {
        return Ok(());
    }
    // One at a time, so one the kernel refuses (e.g. cpuset with tasks in a
    // threaded subtree) does not keep the others off.
    for t in &todo {
        if let Err(err) = fsutil::write(&ctl, t) {
            tracing::warn!(%err, "controller not enabled");
        }
    }
    Ok(())
}

pub(crate) fn memory(dir: &Path, max: Option<u64>, swap_off: bool) -> Result<(), Error> {
    if let Some(max) = max {
        fsutil::write(&dir.join("memory.max"), &max.to_string())?;
    }
    if swap_off {
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            fsutil::write(&swap, "0")?;
        } else {
            // No swap accounting in this kernel: there is no swap to use.
            tracing::debug!(path = %swap.display(), "no swap control file");
        }
    }
    Ok(())
}

pub(crate) fn cpu(dir: &Path, weight: Option<u64>, quota: Option<CpuQuota>) -> Result<(), Error> {
    if let Some(w) = weight {
        fsutil::write(&dir.join("cpu.weight"), &w.to_string())?;
    }
    if let Some(q) = quota {
        fsutil::write(
            &dir.join("cpu.max"),
            &format!("{} {}", q.quota_us, q.period_us),
        )?;
    }
    Ok(())
}

pub(crate) fn pids(dir: &Path, max: u64) -> Result<(), Error> {
    fsutil::write(&dir.join("pids.max"), &max.to_string())
}

/// `io.weight` takes the v2 scale; `io.bfq.weight` the v1 one (1..=1000).
pub(crate) fn io(dir: &Path, weight: u16) -> Result<bool, Error> {
    let p = dir.join("io.weight");
    if p.exists() {
        fsutil::write(&p, &format!("default {weight}"))?;
        return Ok(true);
    }
    let p = dir.join("io.bfq.weight");
    if p.exists() {
        fsutil::write(&p, &io_weight_to_blkio(weight).to_string())?;
        return Ok(true);
    }
    Ok(false)
}

/// Loads the device program for `rules` and attaches it to the cgroup,
/// replacing the one a previous call attached.
pub(crate) fn devices(dir: &Path, rules: &[DeviceRule]) -> Result<(), Error> {
    let prog = bpf::device_program(rules).map_err(|bad| Error::InvalidValue {
        path: dir.to_path_buf(),
        what: bad.what,
        value: bad.value,
    })?;
    let code = bpf::encode(&prog);
    let fd = sys::load_device_program(&code).map_err(|(source, log)| Error::Bpf {
        path: dir.to_path_buf(),
        op: "prog load",
        source,
        log,
    })?;
    let cg = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .map_err(|source| Error::Read {
            path: dir.to_path_buf(),
            source,
        })?;
    sys::attach_device_program(cg.as_fd(), fd.as_fd()).map_err(|source| Error::Bpf {
        path: dir.to_path_buf(),
        op: "prog attach",
        source,
        log: String::new(),
    })
}

pub(crate) fn memory_stats(dir: &Path, s: &mut Stats) -> Result<(), Error> {
    s.memory_current = read_u64(&dir.join("memory.current"))?;
    // memory.peak exists since Linux 5.19.
    s.memory_peak = read_u64_opt(&dir.join("memory.peak")).unwrap_or(None);
    s.oom_kills = oom_kills(dir)?;
    Ok(())
}

/// The `oom_kill` count of `memory.events`.
pub(crate) fn oom_kills(dir: &Path) -> Result<u64, Error> {
    let ev = dir.join("memory.events");
    match fsutil::read_opt(&ev)? {
        Some(text) => Ok(keyed(&ev, &text, "oom_kill")?.unwrap_or(0)),
        None => Ok(0),
    }
}

/// `usage_usec` in `cpu.stat`, a core file present without the cpu
/// controller.
pub(crate) fn cpu_usage_us(dir: &Path) -> Result<u64, Error> {
    let p = dir.join("cpu.stat");
    let text = fsutil::read(&p)?;
    keyed(&p, &text, "usage_usec")?.ok_or_else(|| Error::Parse {
        path: p.clone(),
        reason: "no usage_usec line".into(),
    })
}

pub(crate) fn pids_current(dir: &Path) -> Result<u64, Error> {
    read_u64(&dir.join("pids.current"))
}

/// Writes `cgroup.freeze` and waits for `frozen` in `cgroup.events` to
/// follow (freezing is asynchronous in v2).
pub(crate) fn set_frozen(dir: &Path, frozen: bool) -> Result<(), Error> {
    fsutil::write(&dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
    let ev = dir.join("cgroup.events");
    let want = u64::from(frozen);
    crate::cgroup::wait_until(&ev, "cgroup.events frozen", FREEZE_TIMEOUT, || {
        let text = fsutil::read(&ev)?;
        Ok(keyed(&ev, &text, "frozen")?.unwrap_or(0) == want)
    })
}

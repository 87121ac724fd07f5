//! The [`Cgroup`] handle: one cgroup, with a directory in every hierarchy
//! that manages one of its controllers (and in the cgroup2 mount on hybrid
//! hosts). It creates, adopts, limits, attaches to, reads, freezes and
//! destroys that cgroup, choosing per controller between `v1` and `v2`.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::hierarchy::{validate_rel, Backend};
use crate::{fsutil, v1, v2, Controller, Error, Hierarchy, Limits, Stats};

/// How long destroy waits for killed tasks to leave.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long destroy retries a removal the kernel calls busy (a task that
/// has just been reaped may still be leaving).
const RMDIR_TIMEOUT: Duration = Duration::from_secs(2);

/// Polls `done` every few milliseconds until it holds or `timeout` passes.
pub(crate) fn wait_until(
    path: &Path,
    what: &'static str,
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool, Error>,
) -> Result<(), Error> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if done()? {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(Error::Timeout {
                path: path.to_path_buf(),
                what,
            });
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Where one controller of this cgroup is managed.
enum Target {
    V1(PathBuf),
    V2(PathBuf),
}

/// A cgroup Berth created (or adopted) below its prefix.
#[derive(Clone, Debug)]
pub struct Cgroup {
    h: Hierarchy,
    rel: PathBuf,
}

impl Cgroup {
    /// Creates the cgroup, and any missing parents, in every managed
    /// hierarchy. Fails if it already exists anywhere. On v1 cpuset the new
    /// directories get their parent's cpus and mems; on v2 the needed
    /// controllers are enabled in the parents Berth owns.
    pub fn create(h: &Hierarchy, rel: &Path) -> Result<Cgroup, Error> {
        h.check_owned(rel)?;
        let cg = Cgroup {
            h: h.clone(),
            rel: rel.to_path_buf(),
        };
        // No existence check first: mkdir(2) of the last component fails
        // with EEXIST, and what was made by then is removed below.
        let mut created = Vec::new();
        if let Err(err) = cg.make_dirs(&mut created) {
            let mut cleanup = None;
            for d in created.iter().rev() {
                if let Err(source) = fs::remove_dir(d) {
                    cleanup.get_or_insert(Error::Rmdir {
                        path: d.clone(),
                        source,
                    });
                }
            }
            return Err(match cleanup {
                None => err,
                Some(c) => Error::Cleanup {
                    path: cg.rel.clone(),
                    source: Box::new(err),
                    cleanup: Box::new(c),
                },
            });
        }
        tracing::debug!(cgroup = %cg.rel.display(), "created");
        Ok(cg)
    }

    /// Adopts an existing cgroup below the prefix, e.g. after a restart.
    pub fn open(h: &Hierarchy, rel: &Path) -> Result<Cgroup, Error> {
        h.check_owned(rel)?;
        let cg = Cgroup {
            h: h.clone(),
            rel: rel.to_path_buf(),
        };
        let dirs = cg.dirs();
        if !dirs.iter().any(|d| d.is_dir()) {
            return Err(Error::NotFound {
                path: rel.to_path_buf(),
            });
        }
        for d in dirs.iter().filter(|d| !d.is_dir()) {
            // A crash between two mkdirs; destroy still cleans up the rest.
            tracing::warn!(path = %d.display(), "cgroup directory missing in one hierarchy");
        }
        Ok(cg)
    }

    /// Destroys the cgroup at `rel` (as [`Cgroup::destroy`]) if it has a
    /// directory in any hierarchy; nothing to do is success. Without the
    /// existence checks of [`Cgroup::open`]: an empty cgroup goes in one
    /// `rmdir(2)` per hierarchy.
    pub fn destroy_at(h: &Hierarchy, rel: &Path) -> Result<(), Error> {
        h.check_owned(rel)?;
        Cgroup {
            h: h.clone(),
            rel: rel.to_path_buf(),
        }
        .destroy()
    }

    /// True when the cgroup has a directory in any managed hierarchy.
    pub fn exists(h: &Hierarchy, rel: &Path) -> bool {
        validate_rel(rel).is_ok() && h.roots().iter().any(|r| r.join(rel).is_dir())
    }

    /// The path relative to the hierarchy roots, as given to `create`.
    pub fn rel_path(&self) -> &Path {
        &self.rel
    }

    /// This cgroup's directory in every hierarchy it lives in.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.h
            .roots()
            .into_iter()
            .map(|r| r.join(&self.rel))
            .collect()
    }

    /// The controllers this cgroup can use: those of the hierarchy, less
    /// the v2 ones a parent Berth does not own left disabled.
    pub fn controllers(&self) -> Result<Vec<Controller>, Error> {
        let mut out = Vec::new();
        for c in Controller::ALL {
            if self.target(c)?.is_some() {
                out.push(c);
            }
        }
        Ok(out)
    }

    fn make_dirs(&self, created: &mut Vec<PathBuf>) -> Result<(), Error> {
        let wanted = self.h.v2_wanted();
        let cpuset = self.h.backend(Controller::Cpuset);
        let comps: Vec<_> = self.rel.components().collect();
        for root in self.h.roots() {
            let unified = self.h.unified_mount() == Some(root.as_path());
            let is_cpuset = cpuset == Some(Backend::V1(root.clone()));
            // The parents usually exist (a vendor's earlier jails): one
            // mkdir of the leaf, and the walk only when it finds none. Not
            // where v2 controllers are enabled on the way down.
            if !unified || wanted.is_empty() {
                let leaf = root.join(&self.rel);
                match fs::create_dir(&leaf) {
                    Ok(()) => {
                        created.push(leaf.clone());
                        if let (true, Some(parent)) = (is_cpuset, leaf.parent()) {
                            v1::init_cpuset(parent, &leaf)?;
                        }
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Err(Error::AlreadyExists { path: leaf });
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => return Err(Error::Mkdir { path: leaf, source }),
                }
            }
            let mut rel = PathBuf::new();
            let mut cur = root.clone();
            for (i, comp) in comps.iter().enumerate() {
                let parent = cur.clone();
                if unified && !wanted.is_empty() && self.h.owns_dir(&rel) {
                    v2::enable_subtree(&parent, &wanted)?;
                }
                rel.push(comp);
                cur.push(comp);
                match fs::create_dir(&cur) {
                    Ok(()) => {
                        created.push(cur.clone());
                        if is_cpuset {
                            v1::init_cpuset(&parent, &cur)?;
                            if i + 1 < comps.len() {
                                // Children made later get cpus and mems
                                // from the kernel (an optimization: the
                                // leaf's are checked either way).
                                let _ = fsutil::write(&cur.join("cgroup.clone_children"), "1");
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && i + 1 < comps.len() => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return Err(Error::AlreadyExists { path: cur });
                    }
                    Err(source) => return Err(Error::Mkdir { path: cur, source }),
                }
            }
        }
        Ok(())
    }

    /// Where controller `c` is managed for this cgroup, or `None` when it
    /// cannot be (not on this host, or not enabled by a parent that is not
    /// Berth's on v2).
    fn target(&self, c: Controller) -> Result<Option<Target>, Error> {
        Ok(match self.h.backend(c) {
            None => None,
            Some(Backend::V1(root)) => Some(Target::V1(root.join(&self.rel))),
            Some(Backend::V2) => {
                let Some(u) = self.h.unified_mount() else {
                    return Ok(None);
                };
                let dir = u.join(&self.rel);
                match c.v2_name() {
                    // cpu.stat is a core file: usage is there without `cpu`.
                    Some(_) if c == Controller::Cpuacct => Some(Target::V2(dir)),
                    Some(name) if !v2::has_controller(&dir, name)? => None,
                    _ => Some(Target::V2(dir)),
                }
            }
        })
    }

    fn require(&self, c: Controller) -> Result<Target, Error> {
        self.target(c)?.ok_or_else(|| Error::Unavailable {
            controller: c,
            path: self.rel.clone(),
        })
    }

    fn invalid(&self, what: &'static str, value: impl ToString) -> Error {
        Error::InvalidValue {
            path: self.rel.clone(),
            what,
            value: value.to_string(),
        }
    }

    fn validate(&self, l: &Limits) -> Result<(), Error> {
        if let Some(w) = l.cpu_weight {
            if !(1..=10_000).contains(&w) {
                return Err(self.invalid("cpu weight (1..=10000)", w));
            }
        }
        if let Some(q) = l.cpu_quota {
            // CFS bounds: period 1 ms..=1 s, quota at least 1 ms.
            if !(1_000..=1_000_000).contains(&q.period_us) {
                return Err(self.invalid("cpu period in µs (1000..=1000000)", q.period_us));
            }
            if q.quota_us < 1_000 || q.quota_us > i64::MAX as u64 / 1_000 {
                return Err(self.invalid("cpu quota in µs (>= 1000)", q.quota_us));
            }
        }
        if let Some(w) = l.io_weight {
            if !(1..=10_000).contains(&w) {
                return Err(self.invalid("io weight (1..=10000)", w));
            }
        }
        if l.pids_max == Some(0) {
            return Err(self.invalid("pids max", 0));
        }
        Ok(())
    }

    /// Applies `limits`. A limit asked of a controller this cgroup cannot
    /// use is an error, except the io weight, which needs a proportional io
    /// scheduler and is skipped where there is none.
    pub fn apply(&self, limits: &Limits) -> Result<(), Error> {
        self.validate(limits)?;
        if limits.memory_max.is_some() || limits.swap_off {
            match self.require(Controller::Memory)? {
                Target::V1(d) => v1::memory(&d, limits.memory_max, limits.swap_off)?,
                Target::V2(d) => v2::memory(&d, limits.memory_max, limits.swap_off)?,
            }
        }
        if limits.cpu_weight.is_some() || limits.cpu_quota.is_some() {
            match self.require(Controller::Cpu)? {
                Target::V1(d) => v1::cpu(&d, limits.cpu_weight, limits.cpu_quota)?,
                Target::V2(d) => v2::cpu(&d, limits.cpu_weight, limits.cpu_quota)?,
            }
        }
        if let Some(max) = limits.pids_max {
            match self.require(Controller::Pids)? {
                Target::V1(d) => v1::pids(&d, max)?,
                Target::V2(d) => v2::pids(&d, max)?,
            }
        }
        if let Some(rules) = &limits.devices {
            match self.require(Controller::Devices)? {
                Target::V1(d) => v1::devices(&d, rules)?,
                Target::V2(d) => v2::devices(&d, rules)?,
            }
        }
        if let Some(w) = limits.io_weight {
            let applied = match self.target(Controller::Io)? {
                None => false,
                Some(Target::V1(d)) => v1::io(&d, w)?,
                Some(Target::V2(d)) => v2::io(&d, w)?,
            };
            if !applied {
                tracing::info!(cgroup = %self.rel.display(), "no io weight control here; io weight skipped");
            }
        }
        Ok(())
    }

    /// Moves `pid` into this cgroup in every hierarchy.
    pub fn attach(&self, pid: i32) -> Result<(), Error> {
        if pid <= 0 {
            return Err(self.invalid("pid", pid));
        }
        let value = pid.to_string();
        for d in self.dirs() {
            fsutil::write(&d.join("cgroup.procs"), &value)?;
        }
        Ok(())
    }

    /// The processes in this cgroup (not its descendants), in any
    /// hierarchy, sorted.
    pub fn procs(&self) -> Result<Vec<i32>, Error> {
        let mut all = BTreeSet::new();
        for d in self.dirs() {
            if d.is_dir() {
                read_procs(&d, &mut all)?;
            }
        }
        Ok(all.into_iter().collect())
    }

    /// Current usage. Files a kernel may lack (peak memory, OOM counts) do
    /// not fail the call; a controller the cgroup cannot use reads as zero.
    pub fn stats(&self) -> Result<Stats, Error> {
        let mut s = Stats::default();
        match self.target(Controller::Memory)? {
            Some(Target::V1(d)) => v1::memory_stats(&d, &mut s)?,
            Some(Target::V2(d)) => v2::memory_stats(&d, &mut s)?,
            None => {}
        }
        s.cpu_usage_us = match self.target(Controller::Cpuacct)? {
            Some(Target::V1(d)) => v1::cpu_usage_us(&d)?,
            Some(Target::V2(d)) => v2::cpu_usage_us(&d)?,
            None => 0,
        };
        s.pids_current = match self.target(Controller::Pids)? {
            Some(Target::V1(d)) => v1::pids_current(&d)?,
            Some(Target::V2(d)) => v2::pids_current(&d)?,
            None => self.procs()?.len() as u64,
        };
        Ok(s)
    }

    /// Tasks the OOM killer has killed in the cgroup: [`crate::Stats::oom_kills`]
    /// alone, one file read instead of every counter.
    pub fn oom_kills(&self) -> Result<u64, Error> {
        match self.target(Controller::Memory)? {
            Some(Target::V1(d)) => v1::oom_kills(&d),
            Some(Target::V2(d)) => v2::oom_kills(&d),
            None => Ok(0),
        }
    }

    /// Stops every task in the cgroup; returns once they are all frozen.
    pub fn freeze(&self) -> Result<(), Error> {
        self.set_frozen(true)
    }

    /// Lets the tasks run again.
    pub fn thaw(&self) -> Result<(), Error> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), Error> {
        match self.require(Controller::Freezer)? {
            Target::V1(d) => v1::set_frozen(&d, frozen),
            Target::V2(d) => v2::set_frozen(&d, frozen),
        }
    }

    /// Kills every task left in the cgroup and its descendants, removes its
    /// directories in every hierarchy, then the parents Berth created that
    /// are now empty (parents shared with other cgroups stay).
    pub fn destroy(self) -> Result<(), Error> {
        self.h.check_owned(&self.rel)?;
        if self.remove_if_empty() {
            self.remove_parents();
            tracing::debug!(cgroup = %self.rel.display(), "destroyed (was empty)");
            return Ok(());
        }
        self.kill_all()?;
        let mut first_err = None;
        for d in self.dirs() {
            if let Err(e) = remove_tree(&d) {
                tracing::warn!(%e, "cgroup directory not removed");
                first_err.get_or_insert(e);
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        self.remove_parents();
        tracing::debug!(cgroup = %self.rel.display(), "destroyed");
        Ok(())
    }

    /// The common case of a jail whose tasks are all gone: one `rmdir(2)`
    /// per hierarchy, without listing tasks or children first. The kernel
    /// refuses to remove a cgroup that still has tasks or child cgroups
    /// (EBUSY, ENOTEMPTY), so a busy cgroup is never lost here; any
    /// refusal returns false and leaves the rest to the full path (kill,
    /// walk, remove), which skips the directories already gone.
    fn remove_if_empty(&self) -> bool {
        for d in self.dirs() {
            match fs::remove_dir(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// Every pid in the cgroup and its descendants, in any hierarchy.
    fn procs_recursive(&self) -> Result<BTreeSet<i32>, Error> {
        let mut all = BTreeSet::new();
        for d in self.dirs() {
            walk(&d, &mut |dir| read_procs(dir, &mut all))?;
        }
        Ok(all)
    }

    fn kill_all(&self) -> Result<(), Error> {
        let pids = self.procs_recursive()?;
        if pids.is_empty() {
            return Ok(());
        }
        // Never take the caller down with the jail.
        let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        if pids.contains(&me) {
            return Err(self.invalid("task to kill (the calling process)", me));
        }
        // v2 (Linux 5.14+): one write kills the whole subtree.
        if let Some(u) = self.h.unified_mount() {
            let kill_file = u.join(&self.rel).join("cgroup.kill");
            if kill_file.exists() {
                if let Err(e) = fsutil::write(&kill_file, "1") {
                    tracing::warn!(%e, "cgroup.kill failed; killing task by task");
                }
            }
        }
        let freezer = self.target(Controller::Freezer)?.is_some();
        let start = Instant::now();
        loop {
            let pids = self.procs_recursive()?;
            if pids.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= EMPTY_TIMEOUT {
                return Err(Error::Timeout {
                    path: self.rel.clone(),
                    what: "the killed tasks to leave",
                });
            }
            // Frozen tasks cannot fork while the list is walked; a frozen
            // task dies of SIGKILL once thawed.
            if freezer {
                if let Err(e) = self.freeze() {
                    tracing::warn!(%e, "freeze before kill failed; killing anyway");
                }
            }
            let mut kill_err = None;
            for pid in self.procs_recursive()? {
                match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(source) => {
                        kill_err.get_or_insert(Error::Kill {
                            path: self.rel.clone(),
                            pid,
                            source,
                        });
                    }
                }
            }
            if freezer {
                if let Err(e) = self.thaw() {
                    tracing::warn!(%e, "thaw after kill failed");
                }
            }
            if let Some(e) = kill_err {
                return Err(e);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Removes the now-empty parents of this cgroup that are Berth's, from
    /// the deepest up. A busy or non-empty parent is shared with another
    /// cgroup and stays.
    fn remove_parents(&self) {
        for root in self.h.roots() {
            let mut rel = self.rel.parent();
            while let Some(p) = rel {
                if p.as_os_str().is_empty() || !self.h.owns_dir(p) {
                    break;
                }
                let dir = root.join(p);
                match fs::remove_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EBUSY) | Some(libc::ENOTEMPTY)
                        ) =>
                    {
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(path = %dir.display(), %e, "parent cgroup not removed");
                        break;
                    }
                }
                rel = p.parent();
            }
        }
    }
}

fn read_procs(dir: &Path, into: &mut BTreeSet<i32>) -> Result<(), Error> {
    let p = dir.join("cgroup.procs");
    let text = match fsutil::read_opt(&p)? {
        Some(t) => t,
        None => return Ok(()),
    };
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let pid = line.parse::<i32>().map_err(|_| Error::Parse {
            path: p.clone(),
            reason: format!("bad pid {line:?}"),
        })?;
        into.insert(pid);
    }
    Ok(())
}

/// Calls `f` on `dir` and every cgroup directory below it, deepest last.
/// A directory that is gone is skipped.
fn walk(dir: &Path, f: &mut dyn FnMut(&Path) -> Result<(), Error>) -> Result<(), Error> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    f(dir)?;
    for entry in entries {
        let entry = entry.map_err(|source| Error::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&entry.path(), f)?;
        }
    }
    Ok(())
}

/// Removes a cgroup directory and the child cgroups below it, children
/// first. cgroupfs removes a directory with its control files in one
/// `rmdir(2)`; a brief EBUSY while exiting tasks leave is retried.
fn remove_tree(dir: &Path) -> Result<(), Error> {
    let mut dirs = Vec::new();
    walk(dir, &mut |d| {
        dirs.push(d.to_path_buf());
        Ok(())
    })?;
    for d in dirs.iter().rev() {
        let start = Instant::now();
        loop {
            match fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < RMDIR_TIMEOUT =>
                {
                    thread::sleep(Duration::from_millis(10));
                }
                Err(source) => {
                    return Err(Error::Rmdir {
                        path: d.clone(),
                        source,
                    })
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hierarchy::tests::{HYBRID, V1, V2};
    use crate::{CpuQuota, DeviceAccess, DeviceKind, DeviceRule, Layout};
    use tempfile::TempDir;

    /// A fake host: `root` stands for `/`, with every cgroup mount point of
    /// `mountinfo` created and `unified_controllers` in the cgroup2 root.
    fn fake(mountinfo: &str, unified_controllers: &str) -> (TempDir, Hierarchy) {
        let root = tempfile::tempdir().unwrap();
        for line in mountinfo.lines() {
            if line.contains(" - cgroup") {
                let mp = line.split(' ').nth(4).unwrap();
                let dir = root.path().join(mp.trim_start_matches('/'));
                fs::create_dir_all(&dir).unwrap();
                if line.contains(" - cgroup2 ") {
                    fs::write(dir.join("cgroup.controllers"), unified_controllers).unwrap();
                    fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
                }
            }
        }
        let h = Hierarchy::detect_with_root(mountinfo, root.path()).unwrap();
        (root, h)
    }

    /// Writes control files the way the kernel would populate them.
    fn files(dir: &Path, list: &[(&str, &str)]) {
        for (name, value) in list {
            fs::write(dir.join(name), value).unwrap();
        }
    }

    fn read(p: PathBuf) -> String {
        fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .trim()
            .to_string()
    }

    fn limits() -> Limits {
        Limits {
            memory_max: Some(64 << 20),
            swap_off: true,
            cpu_weight: Some(100),
            cpu_quota: Some(CpuQuota {
                quota_us: 50_000,
                period_us: 100_000,
            }),
            pids_max: Some(32),
            devices: Some(vec![
                DeviceRule {
                    allow: true,
                    kind: DeviceKind::Char,
                    major: Some(1),
                    minor: Some(3),
                    access: DeviceAccess::ALL,
                },
                DeviceRule {
                    allow: true,
                    kind: DeviceKind::Char,
                    major: Some(136),
                    minor: None,
                    access: DeviceAccess::RW,
                },
            ]),
            io_weight: Some(100),
        }
    }

    #[test]
    fn v1_create_makes_one_dir_per_hierarchy_and_apply_writes_values() {
        let (root, h) = fake(V1, "");
        let rel = Path::new("berth/vendorA/jail1");
        let cg = Cgroup::create(&h, rel).unwrap();
        let m = |c: &str| root.path().join("sys/fs/cgroup").join(c).join(rel);
        let dirs = cg.dirs();
        assert_eq!(dirs.len(), 7, "{dirs:?}");
        for d in &dirs {
            assert!(d.is_dir(), "{}", d.display());
        }
        assert!(!root.path().join("sys/fs/cgroup/systemd/berth").exists());
        assert!(!root.path().join("sys/fs/cgroup/hugetlb/berth").exists());

        let zero = "0\n";
        files(
            &m("memory"),
            &[
                ("memory.limit_in_bytes", zero),
                ("memory.memsw.limit_in_bytes", zero),
                ("memory.swappiness", "60\n"),
            ],
        );
        files(
            &m("cpu,cpuacct"),
            &[
                ("cpu.shares", "1024\n"),
                ("cpu.cfs_period_us", zero),
                ("cpu.cfs_quota_us", "-1\n"),
            ],
        );
        files(&m("pids"), &[("pids.max", "max\n")]);
        files(
            &m("devices"),
            &[("devices.allow", ""), ("devices.deny", "")],
        );
        files(&m("blkio"), &[("blkio.bfq.weight", "100\n")]);
        cg.apply(&limits()).unwrap();

        assert_eq!(read(m("memory").join("memory.limit_in_bytes")), "67108864");
        assert_eq!(
            read(m("memory").join("memory.memsw.limit_in_bytes")),
            "67108864"
        );
        assert_eq!(read(m("memory").join("memory.swappiness")), "0");
        assert_eq!(read(m("cpu,cpuacct").join("cpu.shares")), "2597");
        assert_eq!(read(m("cpu,cpuacct").join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(m("cpu,cpuacct").join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read(m("pids").join("pids.max")), "32");
        // A fake file keeps the last value written on each open; devices.*
        // get one open and one write per rule (the kernel's unit), in order.
        assert_eq!(read(m("devices").join("devices.deny")), "a");
        assert_eq!(
            read(m("devices").join("devices.allow")),
            "c 1:3 rwmc 136:* rw"
        );
        assert_eq!(read(m("blkio").join("blkio.bfq.weight")), "19");
    }

    #[test]
    fn v1_memory_without_memsw_and_missing_files_fail_loudly() {
        let (root, h) = fake(V1, "");
        let cg = Cgroup::create(&h, Path::new("berth/j")).unwrap();
        let mem = root.path().join("sys/fs/cgroup/memory/berth/j");
        files(
            &mem,
            &[("memory.limit_in_bytes", "0"), ("memory.swappiness", "60")],
        );
        let l = Limits {
            memory_max: Some(1 << 30),
            swap_off: true,
            ..Limits::default()
        };
        cg.apply(&l).unwrap();
        assert_eq!(read(mem.join("memory.limit_in_bytes")), "1073741824");
        assert!(!mem.join("memory.memsw.limit_in_bytes").exists());
        // No pids.max in the fake: the write error names the file.
        let err = cg
            .apply(&Limits {
                pids_max: Some(3),
                ..Limits::default()
            })
            .unwrap_err();
        match err {
            Error::Write { path, value, .. } => {
                assert!(
                    path.ends_with("pids/berth/j/pids.max"),
                    "{}",
                    path.display()
                );
                assert_eq!(value, "3");
            }
            other => panic!("unexpected {other}"),
        }
        // io weight without any weight file is skipped, not an error.
        cg.apply(&Limits {
            io_weight: Some(500),
            ..Limits::default()
        })
        .unwrap();
    }

    #[test]
    fn v1_siblings_reuse_the_parents() {
        let (root, h) = fake(V1, "");
        let cpuset = root.path().join("sys/fs/cgroup/cpuset");
        let a = Cgroup::create(&h, Path::new("berth/v/a")).unwrap();
        // (cgroup.clone_children, which the kernel provides, is checked by
        // tests/real.rs.)
        assert!(cpuset.join("berth/v/a").is_dir());
        // A sibling under the existing parents, in every hierarchy.
        let b = Cgroup::create(&h, Path::new("berth/v/b")).unwrap();
        assert_eq!(b.dirs().len(), a.dirs().len());
        assert!(b
            .dirs()
            .iter()
            .all(|d| d.is_dir() && d.ends_with("berth/v/b")));
        let err = Cgroup::create(&h, Path::new("berth/v/b")).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        assert!(
            b.dirs().iter().all(|d| d.is_dir()),
            "a refused create removed the first"
        );
    }

    #[test]
    fn v1_cpuset_children_get_parent_cpus_and_mems() {
        let dir = tempfile::tempdir().unwrap();
        let (parent, child) = (dir.path().join("p"), dir.path().join("p/c"));
        fs::create_dir_all(&child).unwrap();
        files(&parent, &[("cpuset.cpus", "0-3\n"), ("cpuset.mems", "0\n")]);
        files(&child, &[("cpuset.cpus", "\n"), ("cpuset.mems", "1\n")]);
        v1::init_cpuset(&parent, &child).unwrap();
        assert_eq!(read(child.join("cpuset.cpus")), "0-3");
        // Already set: left alone.
        assert_eq!(read(child.join("cpuset.mems")), "1");
    }

    #[test]
    fn invalid_limits_are_refused_before_any_write() {
        let (_root, h) = fake(V1, "");
        let cg = Cgroup::create(&h, Path::new("berth/j")).unwrap();
        let bad = [
            Limits {
                cpu_weight: Some(0),
                ..Limits::default()
            },
            Limits {
                cpu_quota: Some(CpuQuota {
                    quota_us: 10,
                    period_us: 100_000,
                }),
                ..Limits::default()
            },
            Limits {
                io_weight: Some(20_000),
                ..Limits::default()
            },
            Limits {
                pids_max: Some(0),
                ..Limits::default()
            },
        ];
        for l in bad {
            let err = cg.apply(&l).unwrap_err();
            assert!(matches!(err, Error::InvalidValue { .. }), "{err}");
        }
    }

    #[test]
    fn v2_enables_controllers_only_in_dirs_berth_owns() {
        let (root, h) = fake(V2, "cpuset cpu io memory pids\n");
        let u = root.path().join("sys/fs/cgroup");
        assert_eq!(h.layout(), Layout::V2);
        // `berth` left over from an earlier run: Berth's own.
        fs::create_dir(u.join("berth")).unwrap();
        files(
            &u.join("berth"),
            &[
                ("cgroup.controllers", "cpu memory pids\n"),
                ("cgroup.subtree_control", ""),
            ],
        );
        let cg = Cgroup::create(&h, Path::new("berth/j")).unwrap();
        assert_eq!(cg.dirs(), vec![u.join("berth/j")]);
        // The root is never written; the owned parent gets what it has.
        assert_eq!(read(u.join("cgroup.subtree_control")), "");
        assert_eq!(
            read(u.join("berth/cgroup.subtree_control")),
            "+cpu +memory +pids"
        );

        let leaf = u.join("berth/j");
        files(
            &leaf,
            &[
                ("cgroup.controllers", "cpu memory pids\n"),
                ("memory.max", "max\n"),
                ("memory.swap.max", "max\n"),
                ("cpu.weight", "100\n"),
                ("cpu.max", "max 100000\n"),
                ("pids.max", "max\n"),
            ],
        );
        let mut l = limits();
        l.devices = None; // the eBPF program is a privileged test
        l.cpu_weight = Some(250);
        cg.apply(&l).unwrap();
        assert_eq!(read(leaf.join("memory.max")), "67108864");
        assert_eq!(read(leaf.join("memory.swap.max")), "0");
        assert_eq!(read(leaf.join("cpu.weight")), "250");
        assert_eq!(read(leaf.join("cpu.max")), "50000 100000");
        assert_eq!(read(leaf.join("pids.max")), "32");
        assert!(!leaf.join("io.weight").exists());
        assert_eq!(
            cg.controllers().unwrap(),
            vec![
                Controller::Cpu,
                Controller::Cpuacct,
                Controller::Memory,
                Controller::Pids,
                Controller::Devices,
                Controller::Freezer
            ]
        );
    }

    #[test]
    fn v2_controller_missing_under_a_foreign_parent_is_unavailable() {
        let (root, h) = fake(V2, "cpu memory pids\n");
        let h = h.with_prefix("system.slice/berth").unwrap();
        let u = root.path().join("sys/fs/cgroup");
        fs::create_dir(u.join("system.slice")).unwrap();
        files(
            &u.join("system.slice"),
            &[
                ("cgroup.controllers", "cpu memory pids\n"),
                ("cgroup.subtree_control", "pids\n"),
            ],
        );
        let cg = Cgroup::create(&h, Path::new("system.slice/berth/j")).unwrap();
        // Not Berth's: untouched even though memory is missing there.
        assert_eq!(read(u.join("system.slice/cgroup.subtree_control")), "pids");
        files(
            &u.join("system.slice/berth/j"),
            &[("cgroup.controllers", "")],
        );
        let err = cg
            .apply(&Limits {
                memory_max: Some(1 << 20),
                ..Limits::default()
            })
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Unavailable {
                    controller: Controller::Memory,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn hybrid_attach_writes_every_hierarchy_and_procs_reads_them() {
        let (root, h) = fake(HYBRID, "hugetlb\n");
        assert_eq!(h.layout(), Layout::Hybrid);
        let cg = Cgroup::create(&h, Path::new("berth/v/j")).unwrap();
        let dirs = cg.dirs();
        assert_eq!(dirs.len(), 9);
        assert!(root.path().join("sys/fs/cgroup/unified/berth/v/j").is_dir());
        assert!(!root.path().join("sys/fs/cgroup/systemd/berth").exists());
        for d in &dirs {
            files(d, &[("cgroup.procs", "")]);
        }
        cg.attach(4242).unwrap();
        for d in &dirs {
            assert_eq!(read(d.join("cgroup.procs")), "4242", "{}", d.display());
        }
        files(&dirs[0], &[("cgroup.procs", "7\n4242\n")]);
        assert_eq!(cg.procs().unwrap(), vec![7, 4242]);
        assert!(cg.attach(0).is_err());
    }

    #[test]
    fn v1_stats_parse_and_tolerate_missing_optional_files() {
        let (root, h) = fake(HYBRID, "");
        let cg = Cgroup::create(&h, Path::new("berth/j")).unwrap();
        let d = |c: &str| root.path().join("sys/fs/cgroup").join(c).join("berth/j");
        files(
            &d("memory"),
            &[
                ("memory.usage_in_bytes", "1234\n"),
                ("memory.max_usage_in_bytes", "5678\n"),
                (
                    "memory.oom_control",
                    "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
                ),
            ],
        );
        files(&d("cpuacct"), &[("cpuacct.usage", "2500000\n")]);
        files(&d("pids"), &[("pids.current", "4\n")]);
        let want = Stats {
            memory_current: 1234,
            memory_peak: Some(5678),
            cpu_usage_us: 2500,
            pids_current: 4,
            oom_kills: 3,
        };
        assert_eq!(cg.stats().unwrap(), want);
        assert_eq!(cg.oom_kills().unwrap(), 3);
        fs::remove_file(d("memory").join("memory.max_usage_in_bytes")).unwrap();
        fs::remove_file(d("memory").join("memory.oom_control")).unwrap();
        assert_eq!(cg.oom_kills().unwrap(), 0);
        let s = cg.stats().unwrap();
        assert_eq!(
            (s.memory_peak, s.oom_kills, s.memory_current),
            (None, 0, 1234)
        );
        // A required file that is garbage is an error naming it.
        files(&d("pids"), &[("pids.current", "lots\n")]);
        let err = cg.stats().unwrap_err();
        assert!(err.to_string().contains("pids.current"), "{err}");
    }

    #[test]
    fn v2_stats_parse() {
        let (root, h) = fake(V2, "cpu memory pids\n");
        let cg = Cgroup::create(&h, Path::new("berth/j")).unwrap();
        let d = root.path().join("sys/fs/cgroup/berth/j");
        files(
            &d,
            &[
                ("cgroup.controllers", "cpu memory pids\n"),
                ("memory.current", "4096\n"),
                (
                    "memory.events",
                    "low 0\nhigh 0\nmax 9\noom 2\noom_kill 2\noom_group_kill 0\n",
                ),
                (
                    "cpu.stat",
                    "usage_usec 777\nuser_usec 700\nsystem_usec 77\n",
                ),
                ("pids.current", "3\n"),
            ],
        );
        let want = Stats {
            memory_current: 4096,
            memory_peak: None,
            cpu_usage_us: 777,
            pids_current: 3,
            oom_kills: 2,
        };
        assert_eq!(cg.stats().unwrap(), want);
        assert_eq!(cg.oom_kills().unwrap(), 2);
        files(&d, &[("memory.peak", "8192\n")]);
        assert_eq!(cg.stats().unwrap().memory_peak, Some(8192));
    }

    #[test]
    fn freeze_and_thaw_write_and_wait_for_the_state() {
        let (root, h) = fake(HYBRID, "");
        let cg = Cgroup::create(&h, Path::new("berth/j")).unwrap();
        let d = root.path().join("sys/fs/cgroup/freezer/berth/j");
        files(&d, &[("freezer.state", "THAWED\n")]);
        cg.freeze().unwrap();
        assert_eq!(read(d.join("freezer.state")), "FROZEN");
        cg.thaw().unwrap();
        assert_eq!(read(d.join("freezer.state")), "THAWED");

        let (root, h) = fake(V2, "");
        let cg = Cgroup::create(&h, Path::new("berth/j")).unwrap();
        let d = root.path().join("sys/fs/cgroup/berth/j");
        files(
            &d,
            &[
                ("cgroup.freeze", "0\n"),
                ("cgroup.events", "populated 1\nfrozen 1\n"),
            ],
        );
        cg.freeze().unwrap();
        assert_eq!(read(d.join("cgroup.freeze")), "1");
    }

    #[test]
    fn paths_berth_did_not_create_are_refused() {
        let (root, h) = fake(HYBRID, "");
        // Someone else's cgroup, present in every hierarchy.
        for c in ["memory", "pids", "unified"] {
            fs::create_dir_all(
                root.path()
                    .join("sys/fs/cgroup")
                    .join(c)
                    .join("system.slice/x"),
            )
            .unwrap();
        }
        for rel in ["system.slice/x", "system.slice", "berth", "berthx/j"] {
            let err = Cgroup::open(&h, Path::new(rel)).unwrap_err();
            assert!(matches!(err, Error::NotOwned { .. }), "{rel}: {err}");
            let err = Cgroup::create(&h, Path::new(rel)).unwrap_err();
            assert!(matches!(err, Error::NotOwned { .. }), "{rel}: {err}");
        }
        for rel in ["berth/../system.slice/x", "/berth/j", "berth//j", ""] {
            let err = Cgroup::create(&h, Path::new(rel)).unwrap_err();
            assert!(matches!(err, Error::InvalidName { .. }), "{rel}: {err}");
            assert!(!Cgroup::exists(&h, Path::new(rel)));
        }
        let err = Cgroup::open(&h, Path::new("berth/none")).unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");

        let rel = Path::new("berth/j");
        assert!(!Cgroup::exists(&h, rel));
        let cg = Cgroup::create(&h, rel).unwrap();
        assert!(Cgroup::exists(&h, rel));
        let err = Cgroup::create(&h, rel).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        let again = Cgroup::open(&h, rel).unwrap();
        assert_eq!(again.rel_path(), cg.rel_path());
        // The other cgroup is still there, untouched.
        assert!(root
            .path()
            .join("sys/fs/cgroup/memory/system.slice/x")
            .is_dir());
    }

    #[test]
    fn destroy_refuses_to_kill_the_calling_process() {
        let (_root, h) = fake(HYBRID, "");
        let cg = Cgroup::create(&h, Path::new("berth/j")).unwrap();
        let me = std::process::id().to_string();
        files(&cg.dirs()[0], &[("cgroup.procs", me.as_str())]);
        let err = cg.clone().destroy().unwrap_err();
        assert!(matches!(err, Error::InvalidValue { .. }), "{err}");
        assert!(cg.dirs().iter().all(|d| d.is_dir()));
    }

    #[test]
    fn failed_create_removes_what_it_made() {
        let (root, h) = fake(HYBRID, "");
        // The pids hierarchy refuses: a file sits where `berth` would go.
        fs::write(root.path().join("sys/fs/cgroup/pids/berth"), "").unwrap();
        let err = Cgroup::create(&h, Path::new("berth/j")).unwrap_err();
        assert!(matches!(err, Error::Mkdir { .. }), "{err}");
        for c in [
            "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio",
        ] {
            let p = root.path().join("sys/fs/cgroup").join(c).join("berth");
            assert!(!p.exists(), "{} left behind", p.display());
        }
    }
}

//! Detection of the host's cgroup layout from `/proc/self/mountinfo`
//! (proc(5)), and the per-controller choice between v1 and v2.
//!
//! Detection only reads: the mount table and the cgroup2 root's
//! `cgroup.controllers`. [`Hierarchy::detect_with_root`] takes the mount
//! table as text and a directory that stands for `/`, so tests build fake
//! trees in temp dirs and run unprivileged.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::{fsutil, Controller, Error, Layout};

/// The prefix a [`Hierarchy`] owns unless told otherwise.
pub const DEFAULT_PREFIX: &str = "berth";

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Where a controller is managed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// In the v1 hierarchy mounted at this path.
    V1(PathBuf),
    /// In the unified hierarchy.
    V2,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct V1Mount {
    path: PathBuf,
    controllers: Vec<Controller>,
}

/// The detected cgroup layout of a host, and the prefix below which Berth
/// owns cgroups.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    layout: Layout,
    v1: Vec<V1Mount>,
    unified: Option<PathBuf>,
    /// Controllers the cgroup2 root lists in `cgroup.controllers`.
    v2_listed: BTreeSet<Controller>,
    /// Core v2 features used on the unified mount even where v1 has the
    /// controller (see [`Hierarchy::with_v2`]).
    forced_v2: BTreeSet<Controller>,
    prefix: PathBuf,
}

impl Hierarchy {
    /// Detects the layout of the running host.
    pub fn detect() -> Result<Hierarchy, Error> {
        let text = fsutil::read(Path::new(MOUNTINFO))?;
        Hierarchy::detect_with_root(&text, Path::new("/"))
    }

    /// Detects the layout described by `mountinfo` (the text of a
    /// `/proc/<pid>/mountinfo`), with every mount point looked up below
    /// `root` instead of `/`.
    pub fn detect_with_root(mountinfo: &str, root: &Path) -> Result<Hierarchy, Error> {
        let mut v1: Vec<V1Mount> = Vec::new();
        let mut unified: Option<PathBuf> = None;
        for (lineno, line) in mountinfo.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let m = parse_line(line).ok_or_else(|| Error::Parse {
                path: PathBuf::from(MOUNTINFO),
                reason: format!("malformed line {}: {line:?}", lineno + 1),
            })?;
            let path = root.join(m.mount_point.trim_start_matches('/'));
            match m.fstype.as_str() {
                // The first cgroup2 mount wins; later ones are bind mounts
                // of the same single hierarchy.
                "cgroup2" if unified.is_none() => unified = Some(path),
                "cgroup" => {
                    let controllers: Vec<Controller> = m
                        .super_opts
                        .split(',')
                        .filter_map(Controller::from_v1_name)
                        .collect();
                    // Named hierarchies (`name=systemd`) and controllers Berth
                    // does not manage (net_cls, hugetlb, ...) are left alone.
                    if controllers.is_empty() {
                        continue;
                    }
                    // The same hierarchy mounted twice: keep the first.
                    if v1.iter().any(|e| e.controllers == controllers) {
                        continue;
                    }
                    v1.push(V1Mount { path, controllers });
                }
                _ => {}
            }
        }
        let layout = match (v1.is_empty(), unified.is_some()) {
            (true, false) => {
                return Err(Error::NoCgroupFs {
                    path: PathBuf::from(MOUNTINFO),
                })
            }
            (false, false) => Layout::V1,
            (true, true) => Layout::V2,
            (false, true) => Layout::Hybrid,
        };
        let mut v2_listed = BTreeSet::new();
        if let Some(u) = &unified {
            let text = fsutil::read_opt(&u.join("cgroup.controllers"))?.unwrap_or_default();
            for name in text.split_whitespace() {
                for c in Controller::ALL {
                    if c.v2_name() == Some(name) {
                        v2_listed.insert(c);
                    }
                }
            }
        }
        Ok(Hierarchy {
            layout,
            v1,
            unified,
            v2_listed,
            forced_v2: BTreeSet::new(),
            prefix: PathBuf::from(DEFAULT_PREFIX),
        })
    }

    /// Which cgroup versions the host mounts.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The controllers that can be managed on this host, each in v1 or v2.
    pub fn controllers(&self) -> Vec<Controller> {
        Controller::ALL
            .into_iter()
            .filter(|c| self.backend(*c).is_some())
            .collect()
    }

    /// Where `c` is managed: in v2 when the cgroup2 root lists it, else in
    /// its v1 mount. Devices and freezer have no v2 controller: they are
    /// managed in v1 where mounted, else through eBPF and `cgroup.freeze`.
    pub fn controller_version(&self, c: Controller) -> Option<Layout> {
        match self.backend(c)? {
            Backend::V1(_) => Some(Layout::V1),
            Backend::V2 => Some(Layout::V2),
        }
    }

    /// Sets the prefix below which Berth owns cgroups (default `berth`).
    /// It must be a valid relative cgroup path.
    pub fn with_prefix(mut self, prefix: impl AsRef<Path>) -> Result<Hierarchy, Error> {
        let prefix = prefix.as_ref();
        validate_rel(prefix)?;
        self.prefix = prefix.to_path_buf();
        Ok(self)
    }

    /// The prefix below which Berth owns cgroups.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// Manages the device allow-list with an eBPF program on the cgroup2
    /// mount even where a v1 devices hierarchy exists (hybrid hosts). Fails
    /// where there is no cgroup2 mount.
    pub fn with_v2_devices(self) -> Result<Hierarchy, Error> {
        self.with_v2(Controller::Devices)
    }

    /// Manages `c` on the cgroup2 mount even where a v1 hierarchy has it.
    /// Only for what v2 provides without a controller in
    /// `cgroup.controllers`: the device allow-list (eBPF), freezing
    /// (`cgroup.freeze`, Linux 5.2+) and cpu accounting (`cpu.stat`).
    pub fn with_v2(mut self, c: Controller) -> Result<Hierarchy, Error> {
        let core = matches!(
            c,
            Controller::Devices | Controller::Freezer | Controller::Cpuacct
        );
        if !core || self.unified.is_none() {
            return Err(Error::Unavailable {
                controller: c,
                path: PathBuf::from(MOUNTINFO),
            });
        }
        self.forced_v2.insert(c);
        Ok(self)
    }

    /// The cgroup2 mount point, if any.
    pub fn unified_mount(&self) -> Option<&Path> {
        self.unified.as_deref()
    }

    /// The v1 mount that holds `c`, whether or not `c` is managed there.
    pub fn v1_mount(&self, c: Controller) -> Option<&Path> {
        self.v1
            .iter()
            .find(|m| m.controllers.contains(&c))
            .map(|m| m.path.as_path())
    }

    pub(crate) fn backend(&self, c: Controller) -> Option<Backend> {
        let v1 = self.v1_mount(c).map(|p| Backend::V1(p.to_path_buf()));
        let has_unified = self.unified.is_some();
        match c {
            _ if self.forced_v2.contains(&c) && has_unified => Some(Backend::V2),
            Controller::Devices | Controller::Freezer => {
                v1.or(if has_unified { Some(Backend::V2) } else { None })
            }
            _ if self.v2_listed.contains(&c) => Some(Backend::V2),
            _ => v1,
        }
    }

    /// The v2 controller names Berth enables for its cgroups.
    pub(crate) fn v2_wanted(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for c in Controller::ALL {
            if self.backend(c) == Some(Backend::V2) {
                if let Some(n) = c.v2_name() {
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
            }
        }
        names
    }

    /// The hierarchy roots a cgroup gets a directory in: every v1 mount
    /// that manages at least one controller, and the cgroup2 mount (on a
    /// hybrid host too, so that `cgroup.kill`, eBPF and process tracking
    /// work there).
    pub fn roots(&self) -> Vec<PathBuf> {
        let mut roots: Vec<PathBuf> = Vec::new();
        for m in &self.v1 {
            let used = m
                .controllers
                .iter()
                .any(|c| self.backend(*c) == Some(Backend::V1(m.path.clone())));
            if used {
                roots.push(m.path.clone());
            }
        }
        if let Some(u) = &self.unified {
            roots.push(u.clone());
        }
        roots
    }

    /// Checks `rel` is a valid cgroup path strictly below the prefix.
    pub(crate) fn check_owned(&self, rel: &Path) -> Result<(), Error> {
        validate_rel(rel)?;
        if !rel.starts_with(&self.prefix) || rel == self.prefix {
            return Err(Error::NotOwned {
                path: rel.to_path_buf(),
                prefix: self.prefix.clone(),
            });
        }
        Ok(())
    }

    /// True when the directory at `rel` (relative to a hierarchy root) is one
    /// Berth created: the prefix itself or below it.
    pub(crate) fn owns_dir(&self, rel: &Path) -> bool {
        rel.starts_with(&self.prefix) && !rel.as_os_str().is_empty()
    }
}

/// Validates a relative cgroup path: not empty, not absolute, only plain
/// components (no `.`, `..`, empty or doubled separators), no NUL and no
/// newline (the kernel's control files are line based).
pub fn validate_rel(rel: &Path) -> Result<(), Error> {
    let bad = |reason| {
        Err(Error::InvalidName {
            path: rel.to_path_buf(),
            reason,
        })
    };
    let Some(s) = rel.to_str() else {
        return bad("not valid UTF-8");
    };
    if s.is_empty() {
        return bad("empty path");
    }
    if s.starts_with('/') {
        return bad("absolute path");
    }
    if s.contains('\0') || s.contains('\n') {
        return bad("contains a NUL or newline");
    }
    for comp in s.split('/') {
        match comp {
            "" => return bad("empty component"),
            "." | ".." => return bad("`.` or `..` component"),
            _ => {}
        }
    }
    Ok(())
}

struct MountLine {
    mount_point: String,
    fstype: String,
    super_opts: String,
}

/// Parses one mountinfo line: `id parent maj:min root mountpoint opts
/// [optional...] - fstype source superopts`.
fn parse_line(line: &str) -> Option<MountLine> {
    let fields: Vec<&str> = line.split(' ').collect();
    let sep = fields.iter().skip(6).position(|f| *f == "-")? + 6;
    let mount_point = unescape(fields.get(4)?);
    let fstype = (*fields.get(sep + 1)?).to_string();
    let super_opts = (*fields.get(sep + 3)?).to_string();
    Some(MountLine {
        mount_point,
        fstype,
        super_opts,
    })
}

/// Undoes the octal escapes (`\040` for a space) of mountinfo fields.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let digits = &b[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;

    /// This development host: v1 controllers each on their own, a named
    /// systemd hierarchy, and a cgroup2 mount with no controllers.
    pub(crate) const HYBRID: &str = "\
23 1 0:21 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A systemd-era pure v1 host with co-mounted controllers.
    pub(crate) const V1: &str = "\
25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
26 25 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
27 26 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,name=systemd
30 26 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
31 26 0:28 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpuset
32 26 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
33 26 0:30 / /sys/fs/cgroup/devices rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,devices
34 26 0:31 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,freezer
35 26 0:32 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,net_cls,net_prio
36 26 0:33 / /sys/fs/cgroup/blkio rw,nosuid,nodev,noexec,relatime shared:19 - cgroup cgroup rw,blkio
37 26 0:34 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:20 - cgroup cgroup rw,pids
38 26 0:35 / /sys/fs/cgroup/hugetlb rw,nosuid,nodev,noexec,relatime shared:21 - cgroup cgroup rw,hugetlb
";

    /// A current pure v2 host.
    pub(crate) const V2: &str = "\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
28 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn detects_this_hybrid_host_with_empty_unified() {
        let root = tempfile::tempdir().unwrap();
        let u = root.path().join("sys/fs/cgroup/unified");
        fs::create_dir_all(&u).unwrap();
        fs::write(u.join("cgroup.controllers"), "\n").unwrap();
        let h = Hierarchy::detect_with_root(HYBRID, root.path()).unwrap();
        assert_eq!(h.layout(), Layout::Hybrid);
        assert_eq!(h.controllers(), Controller::ALL.to_vec());
        for c in Controller::ALL {
            assert_eq!(h.controller_version(c), Some(Layout::V1), "{c}");
        }
        assert_eq!(
            h.backend(Controller::Io),
            Some(Backend::V1(root.path().join("sys/fs/cgroup/blkio")))
        );
        assert_eq!(h.unified_mount(), Some(u.as_path()));
        // One directory per v1 controller mount plus unified; never systemd.
        let roots = h.roots();
        assert_eq!(roots.len(), 9);
        assert!(!roots.iter().any(|r| r.ends_with("systemd")));
        assert!(h.v2_wanted().is_empty());
    }

    #[test]
    fn hybrid_controller_listed_in_unified_is_managed_in_v2() {
        let root = tempfile::tempdir().unwrap();
        let u = root.path().join("sys/fs/cgroup/unified");
        fs::create_dir_all(&u).unwrap();
        // hugetlb is not ours; memory moved to v2 is.
        fs::write(u.join("cgroup.controllers"), "hugetlb memory\n").unwrap();
        let h = Hierarchy::detect_with_root(HYBRID, root.path()).unwrap();
        assert_eq!(h.controller_version(Controller::Memory), Some(Layout::V2));
        assert_eq!(h.controller_version(Controller::Pids), Some(Layout::V1));
        assert_eq!(h.v2_wanted(), vec!["memory"]);
        // The v1 memory mount no longer gets a directory.
        assert!(!h.roots().iter().any(|r| r.ends_with("memory")));
    }

    #[test]
    fn devices_can_move_to_ebpf_on_hybrid() {
        let root = tempfile::tempdir().unwrap();
        let h = Hierarchy::detect_with_root(HYBRID, root.path())
            .unwrap()
            .with_v2_devices()
            .unwrap();
        assert_eq!(h.controller_version(Controller::Devices), Some(Layout::V2));
        assert!(!h.roots().iter().any(|r| r.ends_with("devices")));
        let h = h
            .with_v2(Controller::Freezer)
            .unwrap()
            .with_v2(Controller::Cpuacct)
            .unwrap();
        assert_eq!(h.controller_version(Controller::Freezer), Some(Layout::V2));
        assert_eq!(h.controller_version(Controller::Cpuacct), Some(Layout::V2));
        assert_eq!(h.controller_version(Controller::Cpu), Some(Layout::V1));
        // v2 has no memory without the memory controller.
        let err = h.with_v2(Controller::Memory).unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
    }

    #[test]
    fn detects_v1_with_comounted_cpu_cpuacct() {
        let root = tempfile::tempdir().unwrap();
        let h = Hierarchy::detect_with_root(V1, root.path()).unwrap();
        assert_eq!(h.layout(), Layout::V1);
        let cpu = root.path().join("sys/fs/cgroup/cpu,cpuacct");
        assert_eq!(h.v1_mount(Controller::Cpu), Some(cpu.as_path()));
        assert_eq!(h.v1_mount(Controller::Cpuacct), Some(cpu.as_path()));
        assert_eq!(h.unified_mount(), None);
        // cpu,cpuacct is one directory; net_cls and hugetlb are not managed.
        let roots = h.roots();
        assert_eq!(roots.len(), 7, "{roots:?}");
        assert_eq!(h.controllers(), Controller::ALL.to_vec());
        assert!(Hierarchy::detect_with_root(V1, root.path())
            .unwrap()
            .with_v2_devices()
            .is_err());
    }

    #[test]
    fn detects_v2_controllers_from_root() {
        let root = tempfile::tempdir().unwrap();
        let u = root.path().join("sys/fs/cgroup");
        fs::create_dir_all(&u).unwrap();
        fs::write(
            u.join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )
        .unwrap();
        let h = Hierarchy::detect_with_root(V2, root.path()).unwrap();
        assert_eq!(h.layout(), Layout::V2);
        assert_eq!(h.controllers(), Controller::ALL.to_vec());
        assert_eq!(h.roots(), vec![u]);
        assert_eq!(h.v2_wanted(), vec!["cpu", "cpuset", "memory", "pids", "io"]);

        // Without memory listed, memory is not manageable at all.
        fs::write(
            root.path().join("sys/fs/cgroup/cgroup.controllers"),
            "cpu pids\n",
        )
        .unwrap();
        let h = Hierarchy::detect_with_root(V2, root.path()).unwrap();
        assert!(!h.controllers().contains(&Controller::Memory));
        assert!(h.controllers().contains(&Controller::Devices));
        assert!(h.controllers().contains(&Controller::Freezer));
    }

    #[test]
    fn no_cgroup_mount_and_bad_lines_are_errors() {
        let root = tempfile::tempdir().unwrap();
        let err = Hierarchy::detect_with_root("23 1 0:21 / / rw - ext4 /dev/vda rw\n", root.path())
            .unwrap_err();
        assert!(matches!(err, Error::NoCgroupFs { .. }), "{err}");
        let err = Hierarchy::detect_with_root("garbage line\n", root.path()).unwrap_err();
        assert!(matches!(err, Error::Parse { .. }), "{err}");
    }

    #[test]
    fn mount_points_with_escaped_spaces() {
        let line = "41 31 0:38 / /mnt/cg\\040two rw - cgroup2 cgroup2 rw";
        let m = parse_line(line).unwrap();
        assert_eq!(m.mount_point, "/mnt/cg two");
        assert_eq!(m.fstype, "cgroup2");
    }

    #[test]
    fn name_validation() {
        for ok in ["berth/a", "berth/vendorA/jail1", "x"] {
            validate_rel(Path::new(ok)).unwrap();
        }
        for bad in [
            "",
            "/berth/a",
            "berth/../etc",
            "berth//a",
            "berth/./a",
            "berth/a/",
            "..",
            "berth/a\nb",
        ] {
            let err = validate_rel(Path::new(bad)).unwrap_err();
            assert!(matches!(err, Error::InvalidName { .. }), "{bad:?}: {err}");
        }
    }

    #[test]
    fn ownership_is_strictly_below_the_prefix() {
        let root = tempfile::tempdir().unwrap();
        let h = Hierarchy::detect_with_root(V1, root.path()).unwrap();
        h.check_owned(Path::new("berth/vendorA/jail1")).unwrap();
        for bad in ["berth", "berthx/a", "system.slice/foo", "user.slice"] {
            let err = h.check_owned(Path::new(bad)).unwrap_err();
            assert!(matches!(err, Error::NotOwned { .. }), "{bad}: {err}");
        }
        let h = h.with_prefix("machine/berth").unwrap();
        h.check_owned(Path::new("machine/berth/j")).unwrap();
        assert!(h.check_owned(Path::new("berth/j")).is_err());
        assert!(h.owns_dir(Path::new("machine/berth")));
        assert!(!h.owns_dir(Path::new("machine")));
        assert!(Hierarchy::detect_with_root(V1, root.path())
            .unwrap()
            .with_prefix("../x")
            .is_err());
    }
}

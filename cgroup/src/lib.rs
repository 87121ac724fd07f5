//! Resource control for Berth jails: create a cgroup, limit it (memory,
//! swap, cpu, pids, devices, io), attach processes, read statistics, freeze
//! and thaw it, and destroy it with whatever still runs inside.
//!
//! The crate works on the three layouts a gateway may boot with: pure cgroup
//! v2, pure v1 (one mount per controller, possibly co-mounted like
//! `cpu,cpuacct`), and hybrid (v1 controllers plus a cgroup2 mount, often at
//! `/sys/fs/cgroup/unified`, that holds few or no controllers). On a hybrid
//! host a controller is managed in v2 when the cgroup2 root lists it in
//! `cgroup.controllers`, and in its v1 mount otherwise.
//!
//! Why a thin layer of our own rather than `cgroups-rs`: that crate decides
//! between v1 and v2 for the whole host, so on the hybrid layout it either
//! ignores the v1 controllers or the cgroup2 mount (crun refuses such hosts
//! outright); here the choice is per controller. It is also smaller: the
//! whole crate is a few plain file writes plus one eBPF program that it
//! assembles itself for the v2 device allow-list (no libbpf, no C).
//!
//! Layout:
//! - [`hierarchy`]: detection from `/proc/self/mountinfo`, with an injectable
//!   root so tests run on fake trees built in temp dirs.
//! - `cgroup`: the [`Cgroup`] handle; lifecycle, attach, procs, destroy.
//! - `v1` and `v2`: what each limit, statistic and freeze means in each
//!   cgroup version.
//! - `bpf`: the BPF_PROG_TYPE_CGROUP_DEVICE program for v2; `sys`: the two
//!   `bpf(2)` calls, the only unsafe code here.
//!
//! Ownership: a [`Hierarchy`] carries a prefix (`berth` unless set with
//! [`Hierarchy::with_prefix`]). Berth creates, adopts and destroys only
//! cgroups strictly below that prefix, and treats the prefix directory and
//! everything under it as its own (it enables v2 controllers there and
//! removes those directories once empty), never the root or anyone else's.
//!
//! Tests: unit tests at the bottom of each module run unprivileged on fake
//! trees. `tests/real.rs` holds privileged tests on the host's real cgroup
//! filesystems (marked ignored): as root,
//! `cargo test -p cgroup -- --include-ignored`. They also run in a pure v2
//! guest with `tests/vm/run` as cargo runner, where the two tests about v1
//! specifics report a missing precondition.

#![deny(unsafe_code)]

mod bpf;
mod cgroup;
mod error;
mod fsutil;
pub mod hierarchy;
mod sys;
mod v1;
mod v2;

use std::fmt;

pub use cgroup::Cgroup;
pub use error::Error;
pub use hierarchy::Hierarchy;

/// Which cgroup versions the host mounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// Only v1 hierarchies.
    V1,
    /// Only the unified (v2) hierarchy.
    V2,
    /// v1 controller hierarchies and a cgroup2 mount side by side.
    Hybrid,
}

/// A resource controller, named by what it does rather than by the file
/// names of one cgroup version (`Io` is `blkio` on v1 and `io` on v2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Controller {
    Cpu,
    Cpuacct,
    Cpuset,
    Memory,
    Pids,
    Devices,
    Freezer,
    Io,
}

impl Controller {
    /// Every controller, in a stable order.
    pub const ALL: [Controller; 8] = [
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Cpuset,
        Controller::Memory,
        Controller::Pids,
        Controller::Devices,
        Controller::Freezer,
        Controller::Io,
    ];

    /// The name of the v1 hierarchy option (`blkio` for [`Controller::Io`]).
    pub fn v1_name(self) -> &'static str {
        match self {
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Cpuset => "cpuset",
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Devices => "devices",
            Controller::Freezer => "freezer",
            Controller::Io => "blkio",
        }
    }

    /// The name in v2 `cgroup.controllers`, if the controller is one there
    /// (v2 has no devices or freezer controller: those are an eBPF program
    /// and the core `cgroup.freeze` file; cpu accounting is part of `cpu`).
    pub fn v2_name(self) -> Option<&'static str> {
        match self {
            Controller::Cpu | Controller::Cpuacct => Some("cpu"),
            Controller::Cpuset => Some("cpuset"),
            Controller::Memory => Some("memory"),
            Controller::Pids => Some("pids"),
            Controller::Io => Some("io"),
            Controller::Devices | Controller::Freezer => None,
        }
    }

    fn from_v1_name(name: &str) -> Option<Controller> {
        Controller::ALL.into_iter().find(|c| c.v1_name() == name)
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Controller::Io => "io",
            other => other.v1_name(),
        };
        f.write_str(name)
    }
}

/// Resource limits; `None` leaves the kernel's value alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory limit in bytes.
    pub memory_max: Option<u64>,
    /// No swap for the cgroup's memory.
    pub swap_off: bool,
    /// CPU weight on the v2 scale, 1..=10000 (100 is the default share);
    /// converted to `cpu.shares` on v1 the way runc and crun do.
    pub cpu_weight: Option<u64>,
    /// CFS bandwidth limit.
    pub cpu_quota: Option<CpuQuota>,
    /// Maximum number of tasks (processes and threads).
    pub pids_max: Option<u64>,
    /// Device allow-list: everything is denied, then the rules apply in
    /// order, a later rule overriding an earlier one.
    pub devices: Option<Vec<DeviceRule>>,
    /// IO weight on the v2 scale, 1..=10000; skipped where the host has no
    /// weight file (no proportional io scheduler).
    pub io_weight: Option<u16>,
}

/// At most `quota_us` of CPU time in every `period_us`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuQuota {
    pub quota_us: u64,
    pub period_us: u64,
}

/// The kind of device a rule is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// Every device, character and block.
    All,
    Char,
    Block,
}

/// Which accesses a device rule grants or denies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceAccess {
    pub read: bool,
    pub write: bool,
    pub mknod: bool,
}

impl DeviceAccess {
    /// Read, write and mknod.
    pub const ALL: DeviceAccess = DeviceAccess {
        read: true,
        write: true,
        mknod: true,
    };

    /// Read and write, no mknod.
    pub const RW: DeviceAccess = DeviceAccess {
        read: true,
        write: true,
        mknod: false,
    };

    /// The `rwm` letters v1 `devices.allow` takes.
    pub fn letters(self) -> String {
        let mut s = String::new();
        if self.read {
            s.push('r');
        }
        if self.write {
            s.push('w');
        }
        if self.mknod {
            s.push('m');
        }
        s
    }

    fn is_empty(self) -> bool {
        !(self.read || self.write || self.mknod)
    }
}

/// One entry of the device allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRule {
    /// Grant (`true`) or deny the access.
    pub allow: bool,
    pub kind: DeviceKind,
    /// `None` matches every major number.
    pub major: Option<u32>,
    /// `None` matches every minor number.
    pub minor: Option<u32>,
    pub access: DeviceAccess,
}

impl DeviceRule {
    /// The rule in the `type major:minor access` form of v1
    /// `devices.allow` (devices.txt in the kernel docs).
    pub fn v1_line(&self) -> String {
        let kind = match self.kind {
            DeviceKind::All => 'a',
            DeviceKind::Char => 'c',
            DeviceKind::Block => 'b',
        };
        let num = |n: Option<u32>| n.map_or_else(|| "*".to_string(), |n| n.to_string());
        format!(
            "{kind} {}:{} {}",
            num(self.major),
            num(self.minor),
            self.access.letters()
        )
    }
}

/// A snapshot of a cgroup's usage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Memory in use now, bytes.
    pub memory_current: u64,
    /// Highest memory use seen, bytes, where the kernel keeps it.
    pub memory_peak: Option<u64>,
    /// CPU time used, microseconds.
    pub cpu_usage_us: u64,
    /// Tasks in the cgroup now.
    pub pids_current: u64,
    /// Tasks the OOM killer has killed in the cgroup.
    pub oom_kills: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_rule_v1_lines() {
        let r = DeviceRule {
            allow: true,
            kind: DeviceKind::Char,
            major: Some(1),
            minor: Some(3),
            access: DeviceAccess::ALL,
        };
        assert_eq!(r.v1_line(), "c 1:3 rwm");
        let r = DeviceRule {
            allow: false,
            kind: DeviceKind::All,
            major: None,
            minor: None,
            access: DeviceAccess {
                read: false,
                write: true,
                mknod: false,
            },
        };
        assert_eq!(r.v1_line(), "a *:* w");
    }

    #[test]
    fn controller_names() {
        assert_eq!(Controller::Io.v1_name(), "blkio");
        assert_eq!(Controller::Io.v2_name(), Some("io"));
        assert_eq!(Controller::Cpuacct.v2_name(), Some("cpu"));
        assert_eq!(Controller::Devices.v2_name(), None);
        assert_eq!(Controller::from_v1_name("blkio"), Some(Controller::Io));
        assert_eq!(Controller::from_v1_name("net_cls"), None);
        assert_eq!(Controller::Io.to_string(), "io");
    }
}

//! The setup plan the library hands to `berth-init`, and the fixed fd
//! layout of a freshly executed init.
//!
//! The parent builds an [`InitPlan`] (everything already validated and the
//! seccomp filters already compiled, so init carries no compiler) and
//! writes it to the plan pipe as JSON after its length (four bytes, little
//! endian). For a networked jail a [`NetPlan`] follows once the veth exists
//! (JSON up to EOF); otherwise the pipe closes after the plan. Init reports on the error pipe:
//! `ok\n` when setup finished, or `error <step>: <detail>\n`. A child that
//! could not even exec init writes `X` and four bytes of errno there.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::caps::CapSets;
use crate::seccomp::Program;
use crate::spec::{DeviceSpec, MountSpec};

/// Plan pipe (read end) in init.
pub const FD_PLAN: i32 = 3;
/// Error/report pipe (write end) in init.
pub const FD_REPORT: i32 = 4;
/// Create mode: the status file; exec mode: a pidfd of the jail's init.
pub const FD_EXTRA: i32 = 5;

/// Largest plan init accepts (a hostile plan cannot make init allocate
/// without bound; real plans are a few KiB).
pub const MAX_PLAN: u64 = 1 << 20;

/// Current plan format.
pub const PLAN_VERSION: u32 = 2;

/// Largest [`NetPlan`] init accepts.
pub const MAX_NET_PLAN: u64 = 4096;

/// Root filesystem setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RootfsPlan {
    /// Bind a directory.
    Bind(PathBuf),
    /// Overlay: lowers (top first), upper, work.
    Overlay(Vec<PathBuf>, PathBuf, PathBuf),
}

/// What the payload (or the exec'd command) runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessPlan {
    /// argv.
    pub args: Vec<String>,
    /// env.
    pub env: Vec<String>,
    /// cwd inside the jail.
    pub cwd: String,
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Capabilities.
    pub caps: CapSets,
    /// `(resource, soft, hard)`.
    pub rlimits: Vec<(u32, u64, u64)>,
    /// no_new_privs.
    pub no_new_privs: bool,
    /// Seccomp programs, installed in order.
    pub seccomp: Vec<Program>,
}

/// Setup of a new jail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatePlan {
    /// Rootfs.
    pub rootfs: RootfsPlan,
    /// Scratch directory on the host for the new root's mount point.
    pub root_mount: PathBuf,
    /// Remount root read-only.
    pub readonly_root: bool,
    /// Spec mounts.
    pub mounts: Vec<MountSpec>,
    /// Devices passed through (bind-mounted from the host's /dev).
    pub devices: Vec<DeviceSpec>,
    /// Hidden paths.
    pub masked_paths: Vec<String>,
    /// Read-only paths.
    pub readonly_paths: Vec<String>,
    /// Hostname.
    pub hostname: Option<String>,
    /// Host path of the start FIFO.
    pub fifo: PathBuf,
    /// Whether the jail has a user namespace (mknod is impossible then;
    /// init binds device nodes either way).
    pub userns: bool,
    /// Whether a [`NetPlan`] follows on the plan pipe: init configures the
    /// jail end of its veth (and loopback) after the rest of its setup.
    pub network: bool,
    /// The payload.
    pub process: ProcessPlan,
}

/// The jail end of a networked jail's veth, sent once the pair exists: init
/// brings up loopback and the link, assigns the address and adds the
/// default route via the gateway (`netns::configure_current`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetPlan {
    /// The link inside the jail.
    pub ifname: String,
    /// Its address.
    pub addr: std::net::Ipv4Addr,
    /// The bridge subnet's prefix length.
    pub prefix_len: u8,
    /// The bridge's address: the default route's gateway.
    pub gateway: std::net::Ipv4Addr,
}

impl NetPlan {
    /// JSON.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// From JSON.
    pub fn decode(bytes: &[u8]) -> Result<NetPlan, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("decode network plan: {e}"))
    }
}

/// Exec of a command into a running jail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecPlan {
    /// Enter the jail's user namespace too.
    pub userns: bool,
    /// The command.
    pub process: ProcessPlan,
}

/// What init is asked to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// Set up a new jail and become its PID 1.
    Create(Box<CreatePlan>),
    /// Enter a running jail and run one command.
    Exec(ExecPlan),
}

/// The plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitPlan {
    /// [`PLAN_VERSION`].
    pub version: u32,
    /// The work.
    pub mode: Mode,
}

impl InitPlan {
    /// Encodes as JSON.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail (no maps with
        // non-string keys, no custom Serialize impls).
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// [`InitPlan::encode`] after its length, as the plan pipe carries it.
    pub fn framed(&self) -> Vec<u8> {
        let json = self.encode();
        let mut out = Vec::with_capacity(4 + json.len());
        out.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&json);
        out
    }

    /// Decodes the JSON (without its length) and checks the version.
    pub fn decode(bytes: &[u8]) -> Result<InitPlan, String> {
        let p: InitPlan = serde_json::from_slice(bytes).map_err(|e| format!("decode plan: {e}"))?;
        if p.version != PLAN_VERSION {
            return Err(format!("plan version {} is not {PLAN_VERSION}", p.version));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process() -> ProcessPlan {
        ProcessPlan {
            args: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 1000,
            gid: 1000,
            groups: vec![10],
            caps: CapSets {
                bounding: 5,
                effective: 1,
                permitted: 1,
                inheritable: 0,
                ambient: 0,
            },
            rlimits: vec![(7, 1024, 4096)],
            no_new_privs: true,
            seccomp: vec![vec![(0x20, 0, 0, 4), (0x06, 0, 0, 0x7fff_0000)]],
        }
    }

    #[test]
    fn create_plan_round_trips() {
        let p = InitPlan {
            version: PLAN_VERSION,
            mode: Mode::Create(Box::new(CreatePlan {
                rootfs: RootfsPlan::Overlay(
                    vec!["/l1".into(), "/l2".into()],
                    "/u".into(),
                    "/w".into(),
                ),
                root_mount: "/run/berth/jails/x/root".into(),
                readonly_root: false,
                mounts: vec![MountSpec {
                    destination: "/data".into(),
                    fstype: "tmpfs".into(),
                    source: "tmpfs".into(),
                    flags: 2,
                    propagation: 0,
                    data: "size=1m".into(),
                }],
                devices: vec![DeviceSpec {
                    path: "/dev/ttyUSB0".into(),
                    kind: 'c',
                    major: 188,
                    minor: 0,
                }],
                masked_paths: vec!["/proc/kcore".into()],
                readonly_paths: vec!["/proc/sys".into()],
                hostname: Some("h".into()),
                fifo: "/run/berth/jails/x/exec.fifo".into(),
                userns: true,
                network: true,
                process: process(),
            })),
        };
        assert_eq!(InitPlan::decode(&p.encode()).unwrap(), p);
        let framed = p.framed();
        let len = u32::from_le_bytes(framed[..4].try_into().unwrap()) as usize;
        assert_eq!(len, framed.len() - 4);
        assert_eq!(InitPlan::decode(&framed[4..]).unwrap(), p);
    }

    #[test]
    fn net_plan_round_trips() {
        let n = NetPlan {
            ifname: "eth0".into(),
            addr: "10.88.0.5".parse().unwrap(),
            prefix_len: 24,
            gateway: "10.88.0.1".parse().unwrap(),
        };
        assert_eq!(NetPlan::decode(&n.encode()).unwrap(), n);
        assert!(NetPlan::decode(b"")
            .unwrap_err()
            .starts_with("decode network plan: "));
    }

    #[test]
    fn exec_plan_round_trips_and_version_is_checked() {
        let mut p = InitPlan {
            version: PLAN_VERSION,
            mode: Mode::Exec(ExecPlan {
                userns: false,
                process: process(),
            }),
        };
        assert_eq!(InitPlan::decode(&p.encode()).unwrap(), p);
        p.version = 9;
        assert_eq!(
            InitPlan::decode(&p.encode()).unwrap_err(),
            "plan version 9 is not 2"
        );
        assert!(InitPlan::decode(b"{")
            .unwrap_err()
            .starts_with("decode plan: "));
    }
}

//! jail: the Berth jail runtime.
//!
//! One isolated jail per device vendor, built directly from namespaces,
//! cgroups and a veth bridge: no container daemon and no monitor process.
//!
//! Layout:
//! - [`spec`]: `JailSpec`, validated from an OCI runtime spec plus
//!   [`JailOptions`];
//! - [`oci`]: OCI runtime specs built in code, without the deserialiser;
//! - [`plan`]: the setup plan handed to `berth-init` and its fd layout;
//! - [`init`]: the code of `berth-init` (setup, PID 1, exec mode);
//! - [`seccomp`]: the baseline policy (data) and the spec's profile,
//!   compiled with seccompiler;
//! - [`caps`]: capability names and masks;
//! - [`state`]: persisted per-jail state, atomic writes;
//! - `lifecycle`: [`Jail`] and the free functions [`list`], [`run`] and
//!   [`recover`];
//! - [`name`]: names and derived kernel object names;
//! - `sys`: every `unsafe` system call of the crate;
//! - `testing` (feature `testing`): busybox rootfs builder and leak checks
//!   for privileged tests.
//!
//! Process model: [`Jail::create`] clones `berth-init` (the `berth-init`
//! binary of this crate; found through [`JailOptions::init_path`], beside
//! the current executable, or `$BERTH_INIT`) into new pid, mount, uts, ipc
//! and net namespaces (plus a user namespace when asked). A single-threaded
//! caller without a user namespace (the `berth` command line, see
//! [`set_inline_blocking`]) skips that exec: the cloned child runs init's
//! code itself. Init sets the jail up and waits on a FIFO until
//! [`Jail::start`]; it then stays PID 1,
//! forwards signals to the payload, reaps zombies and records the payload's
//! exit in the jail's state directory. The caller only keeps a pidfd;
//! [`Jail::adopt`] gets it back after a restart and [`recover`] removes
//! what a crashed creator left.
//!
//! The API is async (tokio); every blocking step runs in `spawn_blocking`.
//!
//! ```no_run
//! # async fn demo(oci: oci_spec::runtime::Spec) -> Result<(), jail::Error> {
//! use std::time::Duration;
//! let opts = jail::JailOptions {
//!     name: "meter-1".into(),
//!     vendor: "acme".into(),
//!     memory_max: Some(64 << 20),
//!     pids_max: Some(64),
//!     cpus: Some(0.5),
//!     ..Default::default()
//! };
//! let spec = jail::JailSpec::from_oci(&oci, &opts)?;
//! let mut j = jail::Jail::create(spec).await?;
//! j.start().await?;
//! let out = j.exec(jail::ExecOptions::new(["/bin/sh", "-c", "hostname"])).await?;
//! assert_eq!(out.code, 0);
//! let stats = j.stats().await?;
//! println!("{} bytes", stats.cgroup.memory_current);
//! j.stop(Duration::from_secs(10)).await?;
//! j.delete().await?;
//! # Ok(()) }
//! ```

// `jail::` paths inside the crate, so that `testing.rs` compiles both as
// the feature-gated module and when the privileged tests include it by
// path (they must run in a plain `cargo test --workspace`, without the
// feature).
extern crate self as jail;

pub mod caps;
mod error;
pub mod init;
mod lifecycle;
pub mod name;
pub mod oci;
pub mod plan;
pub mod seccomp;
pub mod spec;
pub mod state;
mod sys;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::Error;
pub use lifecycle::{
    cgroup_roots, find_init, list, list_creating, recover, run, set_inline_blocking, ExecOptions,
    ExecOutput, ExecStdio, Jail, JailInfo, JailStats, JAIL_IF,
};
pub use name::{Name, NameError};
pub use spec::{Console, IdMap, JailOptions, JailSpec, NetOptions, RootfsOptions, SpecError};
pub use state::{ExitRecord, JailState, Phase};

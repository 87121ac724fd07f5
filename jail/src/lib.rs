//! jail: the Berth jail runtime.
//!
//! One isolated jail per device vendor, built directly from namespaces,
//! cgroups and a veth bridge: no container daemon and no monitor process.
//!
//! Layout:
//! - [`spec`]: `JailSpec`, validated from an OCI runtime spec plus
//!   [`JailOptions`];
//! - [`plan`]: the setup plan handed to `berth-init` and its fd layout;
//! - [`init`]: the code of `berth-init` (setup, PID 1, exec mode);
//! - [`seccomp`]: the baseline policy (data) and the spec's profile,
//!   compiled with seccompiler;
//! - [`caps`]: capability names and masks;
//! - [`state`]: persisted per-jail state, atomic writes;
//! - `lifecycle`: [`Jail`] and the free functions [`list`], [`run`] and
//!   [`recover`];
//! - [`name`]: names and derived kernel object names;
//! - `sys`: every `unsafe` system call of the crate.

pub mod caps;
mod error;
pub mod init;
mod lifecycle;
pub mod name;
pub mod plan;
pub mod seccomp;
pub mod spec;
pub mod state;
mod sys;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::Error;
pub use lifecycle::{
    find_init, list, recover, run, ExecOptions, ExecOutput, ExecStdio, Jail, JailInfo, JailStats,
    JAIL_IF,
};
pub use name::{Name, NameError};
pub use spec::{Console, IdMap, JailOptions, JailSpec, NetOptions, RootfsOptions, SpecError};
pub use state::{ExitRecord, JailState, Phase};

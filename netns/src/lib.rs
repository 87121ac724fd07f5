//! netns: Berth's network plumbing, spoken over netlink from inside the
//! process (no `ip`, `brctl` or `nft` subprocess).
//!
//! The crate manages Linux bridges, veth pairs whose peer lives in another
//! network namespace, addresses and routes inside that namespace, per-bridge
//! address allocation and an nftables table for NAT egress, port forwards and isolation. It
//! knows nothing of jails or vendors: callers decide which bridge serves whom.
//!
//! Layout:
//! - [`link`]: [`Net`], the rtnetlink handle for bridges, veths and links.
//! - [`ns`]: named persistent namespaces ([`Netns`]) and per-namespace
//!   netlink sockets opened on a short-lived dedicated thread.
//! - [`alloc`]: the persisted per-bridge address [`Allocator`].
//! - [`firewall`]: [`Policy`] → ruleset, applied atomically by [`Firewall`].
//! - [`nft`]: the nf_tables netlink wire encoding and socket.
//! - [`name`]: interface and namespace name rules.
//! - [`sysctl`]: the IPv4 forwarding switch.
//! - `sys`: the only `unsafe` code (raw-fd adoption), kept small.

pub mod alloc;
mod error;
pub mod firewall;
pub mod link;
pub mod name;
pub mod nft;
pub mod ns;
mod sys;
pub mod sysctl;

pub use alloc::Allocator;
pub use error::Error;
pub use firewall::{BridgePolicy, Firewall, Forward, Policy, Proto};
pub use link::{configure_current, Bridge, Net, NsRef, Veth};
pub use ns::{Netns, DEFAULT_RUNTIME_DIR};
pub use sysctl::{enable_ipv4_forwarding, ipv4_forwarding, set_ipv4_forwarding};

//! `berthd`: the gateway daemon. It notices devices, asks their vendors for
//! a signed plan, waits for a technician's approval, builds the vendor's
//! jail, delivers the app, validates it with the plan's checks, routes the
//! device to it, and keeps it on the newest plan version.
//!
//! Layout:
//! - [`config`]: the TOML configuration, validated once;
//! - [`state`]: the per-device state machine and audit records;
//! - [`store`]: their persistence in an embedded ACID store (`redb`);
//! - [`backoff`]: retry delays with jitter;
//! - [`client`]: the HTTPS/CBOR provisioning client and plan verification;
//! - [`jails`]: plan and image to `jail::JailSpec`, jail housekeeping;
//! - [`checks`]: the plan's validation checks;
//! - [`routing`]: serial passthrough and per-vendor MQTT ACLs;
//! - [`detect`]: the detection sources feeding the daemon;
//! - [`engine`]: the per-vendor workers, recovery, polling, API server;
//! - [`notify`]: the systemd readiness and watchdog protocol;
//! - [`api`]: the local API (root-only unix socket, framed JSON);
//! - [`cli`]: the technician commands of `berth` that use it.
#![forbid(unsafe_code)]

pub mod api;
pub mod backoff;
pub mod checks;
pub mod cli;
pub mod client;
pub mod config;
pub mod detect;
pub mod engine;
pub mod jails;
pub mod notify;
pub mod pulls;
pub mod routing;
pub mod state;
pub mod store;

pub use cli::{run_client, DaemonCommand};
pub use config::{Config, ConfigError};
pub use engine::{run, DaemonError};

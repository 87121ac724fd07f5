//! `berth-vendor`, Berth's reference vendor server: what a device vendor
//! runs so that Berth gateways can provision its devices.
//!
//! It keeps a registry of the vendor's devices with their Ed25519 public
//! keys, a plan template per device model, and the versions published from
//! those templates. A gateway that sees one of the devices sends its
//! announce (`POST /v1/provision`); the server checks the announce's
//! signature against the registry and answers the device's plan, signed
//! with the vendor's key. Gateways poll `GET /v1/plans/<id>` for newer
//! versions and send reports (`POST /v1/reports`), which the server stores.
//! `docs/provisioning.md` is the protocol.
//!
//! Layout:
//! - [`store`]: the SQLite store ([`Store`]), versioned schema.
//! - [`template`]: plan templates in TOML ([`Template`]), checked on load
//!   with line numbers.
//! - [`server`]: the HTTP(S) endpoints ([`Server`]).
//! - [`keys`]: the signing key file and hex helpers.
//!
//! The binary (`src/main.rs`) only parses arguments and calls into these.
#![forbid(unsafe_code)]

pub mod keys;
pub mod server;
pub mod store;
pub mod template;

pub use server::{Server, ServerConfig, ServerError, TlsFiles};
pub use store::{Device, Store, StoreError, StoredReport};
pub use template::{Template, TemplateError};

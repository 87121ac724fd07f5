//! device-probes: Berth's detection sources (serial, BLE, MQTT) and the one
//! merged stream of device events they feed.
//!
//! Each source turns what its transport shows into [`event::SourceEvent`]s
//! and sends them on a bounded channel; the merger gives each device a
//! stable id, de-duplicates a device seen on two transports and emits
//! [`event::DeviceEvent`]s. Malformed input is dropped and counted in
//! [`event::Drops`], never a panic.
//!
//! Layout: [`event`] (shared types), [`rules`] (vendor rules and the ignore
//! list), [`merger`] (the merged stream), [`announce`] (native announces
//! to identities), [`replay`] (announce counters and replay drops),
//! [`serial`], [`ble`] and [`mqtt`] (the sources).
//!
//! Tests run against real peers, no hardware: socat pty pairs with a fake
//! device, a fake sysfs tree, udev-format uevents in a private network
//! namespace (root only, marked ignored), mosquitto on a loopback port, and
//! python-dbusmock's bluez5 template on a private dbus-daemon. They need
//! the Debian packages socat, mosquitto, dbus and python3-dbusmock; a
//! missing one fails the test with `precondition missing: ...`.
//! `examples/probe-bench.rs` measures detection latency and MQTT
//! throughput against the same peers.
#![forbid(unsafe_code)]

pub mod announce;
pub mod ble;
pub mod event;
pub mod merger;
pub mod mqtt;
pub mod replay;
pub mod rules;
pub mod serial;

//! device-probes: Berth's detection sources (serial, BLE, MQTT) and the one
//! merged stream of device events they feed.
//!
//! Each source turns what its transport shows into [`event::SourceEvent`]s
//! and sends them on a bounded channel; the merger gives each device a
//! stable id, de-duplicates a device seen on two transports and emits
//! [`event::DeviceEvent`]s. Malformed input is dropped and counted in
//! [`event::Drops`], never a panic.
#![forbid(unsafe_code)]

pub mod event;

//! device-probes: placeholder, filled in by its own change.

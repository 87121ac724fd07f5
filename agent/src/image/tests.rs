//! Pulls from a real registry on loopback.

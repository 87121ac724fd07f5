//! The device side builds without `std` and without an allocator: the crate
//! compiles with `--no-default-features`, and nothing in its dependency
//! graph then turns on a `std` or `alloc` feature. (No bare-metal target is
//! installed here; CI for a device would add
//! `cargo build --target thumbv7em-none-eabihf --no-default-features`.)

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn cargo(args: &[&str]) -> String {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-std-check");
    let out = Command::new(env!("CARGO"))
        .args(args)
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap_or_else(|e| panic!("precondition missing: cargo at {} ({e})", env!("CARGO")));
    assert!(
        out.status.success(),
        "cargo {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Lines of `cargo tree` naming an enabled `std` or `alloc` feature.
fn std_features(extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "tree",
        "-p",
        "protocol",
        "-e",
        "normal,features",
        "--prefix",
        "none",
        "--offline",
    ];
    args.extend_from_slice(extra);
    cargo(&args)
        .lines()
        .filter(|l| l.contains("feature \"std\"") || l.contains("feature \"alloc\""))
        .map(String::from)
        .collect()
}

#[test]
fn device_side_builds_without_std_or_alloc() {
    cargo(&[
        "check",
        "-p",
        "protocol",
        "--lib",
        "--no-default-features",
        "--offline",
        "--quiet",
    ]);
    let leaks = std_features(&["--no-default-features"]);
    assert!(leaks.is_empty(), "std/alloc enabled without std: {leaks:?}");
    // The same query does see std when it is on, so it can fail.
    assert!(!std_features(&[]).is_empty());
}

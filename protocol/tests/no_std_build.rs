//! The device side builds without `std` and without an allocator.
//!
//! No bare-metal target is installed here, so the proof is a `#![no_std]`
//! static library, generated below, that builds and frames an announce with
//! `protocol` (default features off) and brings its own panic handler: if
//! anything in the graph linked `std`, its panic handler would clash and the
//! build would fail. And nothing in the dependency graph then turns on a
//! `std` or `alloc` feature. (A device build would add
//! `cargo build --target thumbv7em-none-eabihf --no-default-features`.)

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

const DEVICE_MANIFEST: &str = r#"[package]
name = "nostd-device"
version = "0.0.0"
edition = "2021"
publish = false

[lib]
crate-type = ["staticlib"]

[dependencies]
protocol = { path = "PROTOCOL", default-features = false }

[profile.dev]
panic = "abort"

[workspace]
"#;

const DEVICE_LIB: &str = r#"#![no_std]
use protocol::announce::AnnounceBuilder;
use protocol::frame::{write_frame, FrameError, MAX_MESSAGE};
use protocol::message::encode_signed_announce;

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Builds, signs and frames an announce, handing the wire bytes to `uart`.
pub fn announce(seed: &[u8; 32], counter: u64, uart: &mut dyn FnMut(&[u8])) -> bool {
    let b = AnnounceBuilder::new("acme", "Meter", "SN1", "1.0", "https://p.acme.example", counter);
    let mut msg = [0u8; MAX_MESSAGE];
    let Ok(n) = encode_signed_announce(&b, seed, &mut msg) else {
        return false;
    };
    write_frame(&msg[..n], |c| {
        uart(c);
        Ok::<(), FrameError>(())
    })
    .is_ok()
}
"#;

fn cargo(args: &[&str]) -> String {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    cargo_in(&manifest, args)
}

fn cargo_in(manifest: &Path, args: &[&str]) -> String {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-std-check");
    let out = Command::new(env!("CARGO"))
        .args(args)
        .arg("--manifest-path")
        .arg(manifest)
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
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nostd-device");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let manifest = dir.join("Cargo.toml");
    std::fs::write(
        &manifest,
        DEVICE_MANIFEST.replace("PROTOCOL", env!("CARGO_MANIFEST_DIR")),
    )
    .unwrap();
    std::fs::write(dir.join("src/lib.rs"), DEVICE_LIB).unwrap();
    cargo_in(&manifest, &["build", "--offline", "--quiet"]);

    let leaks = std_features(&["--no-default-features"]);
    assert!(leaks.is_empty(), "std/alloc enabled without std: {leaks:?}");
    // The same query does see std when it is on, so it can fail.
    assert!(!std_features(&[]).is_empty());
}

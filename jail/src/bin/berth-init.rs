//! berth-init: PID 1 of a Berth jail (and the helper that enters a running
//! jail for `exec`). Started by the `jail` library through `execveat`; it
//! reads its plan from fd 3. See `jail::init` for what it does.
//!
//! Footprint: one copy runs per jail, so its private memory is the per-jail
//! cost of Berth. The build script links it non-PIE (private dirty memory
//! per init 136 -> 120 KiB on x86_64). Linked statically as well there are
//! no relocated pages of ld.so, libc and libgcc_s to keep per process:
//! measured on x86_64 with 20 idle jails, private dirty memory per init
//! falls to 76 KiB and the jail's cgroup charge from 411 KiB to 338 KiB.
//! Build it that way with
//! `cargo rustc --release -p jail --bin berth-init -- -C target-feature=+crt-static -C relocation-model=static`
//! (flags for this binary only; the daemon stays dynamic).

fn main() {
    std::process::exit(jail::init::main());
}

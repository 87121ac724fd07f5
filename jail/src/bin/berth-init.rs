//! berth-init: PID 1 of a Berth jail (and the helper that enters a running
//! jail for `exec`). Started by the `jail` library through `execveat`; it
//! reads its plan from fd 3. See `jail::init` for what it does.
//!
//! Footprint: one copy runs per jail, so its private memory is the per-jail
//! cost of Berth. Once the payload runs, init execs the reaper embedded in
//! it (`jail/src/reaper.c`, about 1 KiB, no libc), and what stays of PID 1
//! is a page of code and a page of stack: per idle jail the cgroup charge
//! fell from 396-421 to 272-276 KiB (`bench/jail-start`, 50 jails, x86_64).
//! Until then, the build script links it non-PIE, so its relocated data
//! stays shared page cache.

fn main() {
    std::process::exit(jail::init::main());
}

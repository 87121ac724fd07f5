//! berth-init: PID 1 of a Berth jail (and the helper that enters a running
//! jail for `exec`). Started by the `jail` library through `execveat`; it
//! reads its plan from fd 3. See `jail::init` for what it does.

fn main() {
    std::process::exit(jail::init::main());
}

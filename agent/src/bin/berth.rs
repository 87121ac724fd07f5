//! `berth`: the command line of a Berth gateway.
fn main() {
    println!("berth {}", env!("CARGO_PKG_VERSION"));
}

//! `berthd`: the Berth daemon.
fn main() {
    println!("berthd {}", env!("CARGO_PKG_VERSION"));
}

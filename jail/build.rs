//! Links `berth-init` as a position-dependent executable (`-no-pie`).
//!
//! One init runs per jail, so its private memory is Berth's per-jail cost.
//! A PIE init has the dynamic loader relocate its own data (vtables and
//! other pointers in `.data.rel.ro`, the GOT) at every start: those pages
//! become private copies in each jail (16 KiB per idle jail measured on
//! x86_64, and the relocation work on every create). Linked at a fixed
//! address they stay clean, shared page cache. Init parses nothing from
//! the jail; its input is the plan from the host. The other binaries stay
//! PIE.
//!
//! The flag goes to the C compiler driver that links (gcc or clang), which
//! every Linux GNU target of Berth uses (cross/, the Yocto recipe).

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bin=berth-init=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
}

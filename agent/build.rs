//! Link options for `berthd` and `berth`.
//!
//! Both are position-independent executables, so every pointer in their
//! read-only data (vtables, string tables) needs a relative relocation at
//! load time. In the classic `.rela.dyn` format that is 24 bytes per
//! pointer on x86_64: about 260 KiB for berthd, all of it read by ld.so at
//! start and then kept mapped, so it counts in berthd's resident memory for
//! its whole life. `-z pack-relative-relocs` stores the same relocations as
//! DT_RELR bitmaps (a few KiB) and keeps ASLR. It needs glibc 2.36 or musl
//! 1.2.4 at run time (an older glibc refuses to load the binary, naming
//! GLIBC_ABI_DT_RELR) and GNU ld 2.38 or lld 15 at link time. GNU ld 2.40
//! knows it for x86_64 only (for armv7 it warns and ignores it), so it is
//! asked for on x86_64 only.
//!
//! berthd also links with `berthd-hot.ld`, a linker script that gathers the
//! functions berthd runs from start to idle (listed by
//! `bench/berthd-run-order`) in an output section `.text.hot` before
//! `.text`. Code is otherwise laid out in crate order, so the few pages
//! berthd runs are spread over its whole text, and read-ahead and
//! fault-around keep nearly all of it mapped (docs/footprint.md). The script
//! only adds to the default one (`INSERT BEFORE .text`), which GNU ld and
//! lld both honour; `BERTH_HOT_TEXT=0` leaves it out, for a linker that
//! does not.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=berthd-hot.ld");
    println!("cargo:rerun-if-env-changed=BERTH_HOT_TEXT");
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" && arch == "x86_64" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    let hot = std::env::var("BERTH_HOT_TEXT").as_deref() != Ok("0");
    if os == "linux" && hot {
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        println!("cargo:rustc-link-arg-bin=berthd=-Wl,-T,{dir}/berthd-hot.ld");
    }
}

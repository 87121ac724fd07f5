//! Build steps of `berth-init`, whose per-process memory is Berth's
//! per-jail cost.
//!
//! 1. Links `berth-init` as a position-dependent executable (`-no-pie`).
//!    One init runs per jail. A PIE init has the dynamic loader relocate
//!    its own data (vtables and other pointers in `.data.rel.ro`, the GOT)
//!    at every start: those pages become private copies in each jail (16
//!    KiB per idle jail measured on x86_64, and the relocation work on
//!    every create). Linked at a fixed address they stay clean, shared page
//!    cache. Init parses nothing from the jail; its input is the plan from
//!    the host. The other binaries stay PIE. The flag goes to the C
//!    compiler driver that links (gcc or clang), which every Linux GNU
//!    target of Berth uses (cross/, the Yocto recipe).
//!
//! 2. Compiles the reaper (`src/reaper.c`) that init execs once the
//!    payload runs: a static executable of about 1 KiB without libc, built
//!    with the target's C compiler as the `cc` crate finds it (`CC_<target>`,
//!    `TARGET_CC`, `CC`, and `CFLAGS` the same way, as Yocto's cargo class
//!    and cross/ set them). `berth-init` embeds it (`OUT_DIR/berth-reaper`).
//!    On an architecture the reaper has no system calls for, the file is
//!    empty and init stays PID 1 itself.

use std::path::PathBuf;

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bin=berth-init=-no-pie");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/reaper.c");

    let Some(out_dir) = std::env::var_os("OUT_DIR") else {
        panic!("OUT_DIR is not set: build.rs runs under cargo");
    };
    let out = PathBuf::from(out_dir).join("berth-reaper");
    if os != "linux" || !matches!(arch.as_str(), "x86_64" | "aarch64" | "arm") {
        if let Err(e) = std::fs::write(&out, b"") {
            panic!("write {}: {e}", out.display());
        }
        return;
    }
    let compiler = cc::Build::new()
        .opt_level_str("s")
        .debug(false)
        .pic(false)
        .force_frame_pointer(false)
        .cargo_metadata(false)
        .try_get_compiler()
        .unwrap_or_else(|e| panic!("no C compiler for the reaper (src/reaper.c): {e}"));
    let mut cmd = compiler.to_command();
    cmd.args([
        "-Os",
        "-static",
        "-nostdlib",
        "-fno-pie",
        "-no-pie",
        "-ffreestanding",
        "-fno-builtin",
        "-fno-stack-protector",
        "-fomit-frame-pointer",
        "-fno-asynchronous-unwind-tables",
        "-fno-unwind-tables",
        "-Wall",
        "-Wextra",
        // One read-execute segment of headers and code: a single page.
        "-Wl,-z,noseparate-code",
        "-Wl,-z,norelro",
        "-Wl,-z,noexecstack",
        "-Wl,--build-id=none",
        "-s",
        "-o",
    ]);
    cmd.arg(&out).arg("src/reaper.c");
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("run the C compiler for the reaper ({cmd:?}): {e}"));
    if !status.success() {
        panic!("compiling the reaper (src/reaper.c) failed: {cmd:?}");
    }
}

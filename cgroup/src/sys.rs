//! The two `bpf(2)` calls the v2 device allow-list needs, which neither
//! `nix` nor `libc` wrap: load a `BPF_PROG_TYPE_CGROUP_DEVICE` program and
//! attach it to a cgroup directory. The only unsafe code of the crate.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const LICENSE: &[u8] = b"Apache-2.0\0";
const LOG_SIZE: usize = 64 * 1024;

/// The leading fields of `union bpf_attr` used by `BPF_PROG_LOAD`; the
/// kernel zero-fills the fields past the size passed in.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// The fields of `union bpf_attr` used by `BPF_PROG_ATTACH`.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, exclusively borrowed `#[repr(C)]` prefix of
    // `union bpf_attr` for `cmd`, and the size passed is its exact size, so
    // the kernel reads and writes only inside it. Pointers stored in it are
    // kept alive by the callers for the duration of the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Loads an encoded device program. On failure returns the error and the
/// verifier's log, fetched by a second, logging attempt.
pub(crate) fn load_device_program(code: &[u8]) -> Result<OwnedFd, (io::Error, String)> {
    let attempt = |log: Option<&mut Vec<u8>>| -> io::Result<OwnedFd> {
        let insn_cnt = u32::try_from(code.len() / 8)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt,
            insns: code.as_ptr() as u64,
            license: LICENSE.as_ptr() as u64,
            ..ProgLoadAttr::default()
        };
        attr.prog_name[..5].copy_from_slice(b"berth");
        if let Some(buf) = log {
            attr.log_level = 1;
            attr.log_size = LOG_SIZE as u32;
            attr.log_buf = buf.as_mut_ptr() as u64;
        }
        let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
        let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        // SAFETY: a successful BPF_PROG_LOAD returns a new file descriptor
        // that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    match attempt(None) {
        Ok(fd) => Ok(fd),
        Err(err) => {
            let mut buf = vec![0u8; LOG_SIZE];
            let _ = attempt(Some(&mut buf));
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            Err((err, String::from_utf8_lossy(&buf[..end]).trim().to_string()))
        }
    }
}

/// Attaches a device program to the cgroup directory open as `cgroup`.
/// Without `BPF_F_ALLOW_MULTI` a second attach replaces the first, which is
/// what applying new limits means.
pub(crate) fn attach_device_program(
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
) -> io::Result<()> {
    let fd = |f: BorrowedFd<'_>| u32::try_from(f.as_raw_fd()).unwrap_or(u32::MAX);
    let mut attr = ProgAttachAttr {
        target_fd: fd(cgroup),
        attach_bpf_fd: fd(prog),
        attach_type: BPF_CGROUP_DEVICE,
        ..ProgAttachAttr::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(|_| ())
}

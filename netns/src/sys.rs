//! The crate's only `unsafe` code: adopting raw file descriptors.
//!
//! Kept to two tiny functions so each invariant is checked in one place.

use std::io;
use std::os::fd::{BorrowedFd, IntoRawFd, OwnedFd, RawFd};

use netlink_sys::{Socket, TokioSocket};

/// Duplicates a caller-owned raw fd into an fd we own (`F_DUPFD_CLOEXEC`).
///
/// The caller of the public API promises `fd` stays open for the duration
/// of the call that received it (documented on [`crate::NsRef::Fd`]); we
/// only borrow it here for the `dup`.
pub(crate) fn dup_raw_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(
            nix::errno::Errno::EBADF as i32,
        ));
    }
    // SAFETY: `borrow_raw` requires `fd` to be open for the lifetime of the
    // borrow. The borrow lives only for the `try_clone_to_owned` (fcntl
    // F_DUPFD_CLOEXEC) call below, during which the caller keeps it open per
    // the `NsRef::Fd` contract; a closed fd makes fcntl fail with EBADF, it
    // cannot corrupt memory.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned()
}

/// Turns a blocking netlink socket (opened in another namespace on another
/// thread) into a tokio socket registered with the current runtime.
///
/// Must be called from within a tokio runtime with the IO driver enabled:
/// `TokioSocket::from_raw_fd` panics otherwise. Every caller is one of
/// [`crate::Net`]'s async methods, which only run on such a runtime (the
/// host connection made by `Net::connect` already needed the IO driver).
pub(crate) fn into_tokio_socket(socket: Socket) -> TokioSocket {
    use std::os::fd::FromRawFd;
    let fd = socket.into_raw_fd();
    // SAFETY: `from_raw_fd` requires an open fd that nobody else owns:
    // `into_raw_fd` just released our sole ownership of this open netlink
    // socket, so the TokioSocket becomes its only owner.
    unsafe { TokioSocket::from_raw_fd(fd) }
}

//! The device path allocates nothing: building, signing, encoding and
//! framing an announce, and on the other side unframing, decoding and
//! verifying it, all run from caller buffers and the stack. Proven with a
//! counting global allocator that counts only on the measuring thread.
//!
//! Run it with `--no-default-features` too: then the crate itself is built
//! without `std` or `alloc`.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::Cell;

use protocol::announce::{public_key, verify, AnnounceBuilder};
use protocol::frame::{
    encode_frame, write_frame, FrameDecoder, FrameError, MAX_FRAME, MAX_MESSAGE, MAX_WIRE,
};
use protocol::message::{encode_signed_announce, Message};

mod sys {
    //! The counting allocator: the only unsafe code of this crate's tests.
    use std::alloc::{GlobalAlloc, Layout, System};

    pub struct Counting;

    // SAFETY: every method forwards to `System` with the caller's own
    // arguments, so `System`'s guarantees are ours; the counting touches
    // only a const-initialised thread-local `Cell`, which never allocates.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            super::note();
            // SAFETY: forwarded unchanged; the caller upholds `alloc`'s
            // contract (non-zero size layout).
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `System` with this layout, since every
            // allocation of this process goes through `alloc` above.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            super::note();
            // SAFETY: as in `dealloc`; the caller upholds `realloc`'s
            // contract for `new_size`.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}

#[global_allocator]
static ALLOC: sys::Counting = sys::Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    if COUNTING.with(Cell::get) {
        COUNT.with(|c| c.set(c.get() + 1));
    }
}

/// Allocations `f` makes on this thread.
fn allocations<T>(f: impl FnOnce() -> T) -> (usize, T) {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (COUNT.with(Cell::get), out)
}

#[test]
fn the_counter_sees_allocations() {
    let (n, v) = allocations(|| Vec::<u8>::with_capacity(10));
    assert_eq!(n, 1);
    drop(v);
}

#[test]
fn device_and_gateway_paths_allocate_nothing() {
    const SEED: [u8; 32] = [0x5a; 32];
    let (n, ok) = allocations(|| {
        // Device: build, sign, encode as a message, frame.
        let caps = ["temp", "relay"];
        let b = AnnounceBuilder::new(
            "acme",
            "Meter 3000",
            "SN-0042",
            "2.1.0",
            "https://provision.acme.example/berth",
            41,
        )
        .capabilities(&caps)
        .challenge(0x0123_4567_89ab_cdef)
        .include_public_key(true);
        let mut msg = [0u8; MAX_MESSAGE];
        let Ok(ml) = encode_signed_announce(&b, &SEED, &mut msg) else {
            return false;
        };
        let mut wire = [0u8; MAX_WIRE];
        let Ok(wl) = encode_frame(&msg[..ml], &mut wire) else {
            return false;
        };
        // Or straight to the UART, without the wire buffer.
        let mut uart = [0u8; MAX_WIRE];
        let mut sent = 0;
        let streamed = write_frame(&msg[..ml], |chunk| {
            uart[sent..sent + chunk.len()].copy_from_slice(chunk);
            sent += chunk.len();
            Ok::<(), FrameError>(())
        });
        if streamed.is_err() || uart[..sent] != wire[..wl] {
            return false;
        }
        // Gateway: unframe, decode, verify.
        let mut dec = FrameDecoder::<MAX_FRAME>::new();
        let mut verified = false;
        for &byte in &wire[..wl] {
            if let Some(Ok(frame)) = dec.push(byte) {
                let Ok(Message::Announce(a)) = Message::decode(frame) else {
                    return false;
                };
                let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&public_key(&SEED)) else {
                    return false;
                };
                verified = verify(&a, &key).is_ok() && a.counter == 41;
            }
        }
        // Hello, the other way.
        let mut hello = [0u8; 16];
        let Ok(hl) = (Message::Hello { nonce: 9 }).encode(&mut hello) else {
            return false;
        };
        verified
            && matches!(
                Message::decode(&hello[..hl]),
                Ok(Message::Hello { nonce: 9 })
            )
    });
    assert!(ok, "the device path did not work");
    assert_eq!(n, 0, "the device path allocated {n} times");
}

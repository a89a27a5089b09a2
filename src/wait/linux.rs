//! Linux: the futex syscall on a word in shared memory.
//!
//! `FUTEX_PRIVATE_FLAG` is deliberately absent: a private futex is keyed by the
//! (mm, virtual address) pair and only wakes threads of the same process; without the flag
//! the kernel keys the futex by the backing page and offset, so every process that maps
//! the header wakes and sleeps on the same word (futex(2), "shared futexes").

use super::Futex;
use crate::sync::AtomicU32;
use std::time::Duration;

/// The shared futex of the running OS.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFutex;

impl Futex for OsFutex {
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        let ts = timeout.map(|d| libc::timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // Errors (EAGAIN: the word changed; EINTR; ETIMEDOUT) all mean "re-check", which
        // every caller does.
        // SAFETY: `word` is a valid, 4-byte aligned u32 for the duration of the call (it
        // borrows the mapping); the timeout pointer is null or points to `ts` on our stack.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),    // uaddr: the shared word
                libc::FUTEX_WAIT, // op: shared (no FUTEX_PRIVATE_FLAG)
                expected,         // val: sleep only while *uaddr == val
                ts_ptr,           // timeout: relative, or null for none
            );
        }
    }

    fn wake_all(&self, word: &AtomicU32) {
        // SAFETY: `word` is a valid u32 in the mapping; FUTEX_WAKE only reads the address.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),    // uaddr
                libc::FUTEX_WAKE, // op: shared
                i32::MAX,         // val: wake them all
            );
        }
    }

    fn wake_one(&self, word: &AtomicU32) {
        // SAFETY: as in `wake_all`.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),    // uaddr
                libc::FUTEX_WAKE, // op: shared
                1,                // val: one sleeper
            );
        }
    }
}

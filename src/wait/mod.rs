//! Blocking: an eventcount over a cross-process futex word.
//!
//! # Contract of a [`Futex`]
//!
//! * `wait(word, expected, timeout)` sleeps while `*word == expected`, until a `wake` on
//!   the same word from any process, or the timeout. It may return early for any reason
//!   (spurious wake-ups, signals): callers re-check their condition and their deadline.
//! * `wake_all(word)` wakes every process sleeping on `word`.
//!
//! The words live in the shared header, so the futex must be the *shared* kind (Linux:
//! `SYS_futex` without `FUTEX_PRIVATE_FLAG`, keyed by the physical page, see `linux.rs`).
//! Other targets get `fallback.rs`, a bounded spin then short sleeps, until a native shared
//! primitive is written for them.
//!
//! # The eventcount
//!
//! ```text
//! waiter                                   waker
//!   poll(); spin a little                    change the state (CAS, AcqRel)
//!   set my bit in `waiters`                  fence(SeqCst)
//!   loop:                                    if any bit in `waiters`:
//!     fence(SeqCst)                              seq += 1
//!     s = seq                                    futex_wake(seq)
//!     if poll() is ready: clear bit; done
//!     futex_wait(seq, s, remaining time)
//! ```
//!
//! The two SeqCst fences order "my bit is set" against "the state changed": either the
//! waker sees the bit (and bumps `seq`, so a waiter that loaded the old `s` does not
//! sleep, or is woken), or the waiter's `poll` sees the new state. No syscall is made when
//! nobody waits. The bit lives in a per-queue bitmap indexed by participant so a waker
//! tests 64 waiters with one load, and so recovery can clear a dead waiter's bit
//! (`recovery.rs` V3). Modelled in `loom-tests/tests/eventcount.rs`.

use crate::sync::{fence, spin_hint, AtomicU32, AtomicU64, LocalMutex, Ordering};
use std::time::Duration;

#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod imp;

#[cfg(not(target_os = "linux"))]
#[path = "fallback.rs"]
mod imp;

pub use imp::OsFutex;

/// A futex-like primitive on a `u32` word (see the module doc for the contract).
pub trait Futex {
    /// Sleeps while `*word == expected`, at most `timeout` (`None`: no limit). May return
    /// early.
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>);
    /// Wakes every sleeper on `word`.
    fn wake_all(&self, word: &AtomicU32);
    /// Wakes at least one sleeper on `word` (waking them all is a correct, slower
    /// implementation).
    fn wake_one(&self, word: &AtomicU32) {
        self.wake_all(word)
    }
}

/// Spins before sleeping: enough to catch a peer that is mid-operation on another core,
/// short enough to stay cheap (well under a microsecond).
///
/// Kept short for a reason measured, not guessed: the kernel often queues a task woken by
/// a futex on the *waker's* CPU, so a waker that then spins (a pinger waiting for its
/// reply) delays the very task it woke until its spin ends. In a back-to-back comparison
/// on the 2-core benchmark VM, one-way latency with the receiver asleep was 9–10 µs with
/// 64 spins + 32 yields, 5.2–5.5 µs with 16 + 16 (a pipe: 4.5–4.9 µs), and 40 µs with
/// 1000 spins; throughput at 64 B and 64 KiB did not change beyond the noise.
pub const SPIN_ROUNDS: u32 = 16;

/// Polls with a yield in between after the spin, before sleeping: a `sched_yield` costs
/// far less than the futex wait + wake pair a sleep implies (the waker's syscall
/// included), a peer that is mid-stream usually delivers within these few microseconds,
/// and a yield lets a task just woken onto this CPU run at once.
pub const YIELD_ROUNDS: u32 = 16;

fn yield_hint() {
    #[cfg(not(shmq_loom))]
    std::thread::yield_now();
    #[cfg(shmq_loom)]
    spin_hint();
}

/// The outcome of [`block_on`].
#[derive(Debug, PartialEq, Eq)]
pub enum Wait<T> {
    /// `poll` returned a value.
    Ready(T),
    /// `remaining` said the time is up.
    TimedOut,
}

/// Waits until `poll` returns `Some`, sleeping on `seq` with participant `me`'s bit set in
/// `waiters`. `remaining()` gives the time left (`Some(None)` = forever, `None` = expired);
/// it is asked before every sleep, so it may also cap the sleep (a slice after which the
/// caller checks on its peers).
pub fn block_on<T, F: Futex>(
    futex: &F,
    seq: &AtomicU32,
    waiters: &[AtomicU64],
    me: u16,
    poll: impl FnMut() -> Option<T>,
    remaining: impl FnMut() -> Option<Option<Duration>>,
) -> Wait<T> {
    let alone = LocalMutex::new(0);
    block_on_counted(futex, seq, waiters, me, &alone, poll, remaining)
}

/// [`block_on`] for a participant that several threads of this process may block on at
/// once (a handle and its loans on other threads). `local` counts this process's threads
/// blocked on this participant's bit, and every change of the count and of the bit happens
/// under its lock: the first thread in sets the bit, the last one out clears it, so the bit
/// is set from before any of them fences and polls until after the last one has left.
///
/// (An earlier lock-free version, count then bit, had a window: a leaver clearing the bit
/// and re-setting it after seeing a newcomer's count left the newcomer, already asleep,
/// without its bit for a moment, and a waker reading the bitmap then skipped the wake;
/// the newcomer slept to the end of its slice. The lock is taken only on the way into and
/// out of a sleep, never on the fast path. `loom-tests/tests/eventcount.rs` models two
/// threads on one participant, and the lock-free version as a negative control.)
pub fn block_on_counted<T, F: Futex>(
    futex: &F,
    seq: &AtomicU32,
    waiters: &[AtomicU64],
    me: u16,
    local: &LocalMutex<u32>,
    mut poll: impl FnMut() -> Option<T>,
    mut remaining: impl FnMut() -> Option<Option<Duration>>,
) -> Wait<T> {
    for i in 0..SPIN_ROUNDS + YIELD_ROUNDS {
        if let Some(v) = poll() {
            return Wait::Ready(v);
        }
        if i < SPIN_ROUNDS {
            spin_hint();
        } else {
            yield_hint();
        }
    }
    let (word, bit) = (&waiters[me as usize / 64], 1u64 << (me % 64));
    let count = || local.lock().unwrap_or_else(|p| p.into_inner());
    {
        let mut n = count();
        if *n == 0 {
            word.fetch_or(bit, Ordering::SeqCst);
        }
        *n += 1;
    }
    let out = loop {
        // SYNC POINT: eventcount (pairs with the fence in `notify`).
        fence(Ordering::SeqCst);
        let s = seq.load(Ordering::Acquire);
        if let Some(v) = poll() {
            break Wait::Ready(v);
        }
        match remaining() {
            None => break Wait::TimedOut,
            Some(left) => futex.wait(seq, s, left),
        }
    };
    {
        let mut n = count();
        *n -= 1;
        if *n == 0 {
            word.fetch_and(!bit, Ordering::SeqCst);
        }
    }
    out
}

/// Wakes a waiter of `seq` if any bit in `waiters` is set. Call after the state change
/// the waiters poll for, once per unit made available (a message).
///
/// One wake per unit is enough when every waiter of the word waits for the same kind of
/// unit: a woken waiter always polls before it can give up (it only leaves `block_on`
/// when `poll` succeeds or, after polling, when its time is up), so the unit is taken by
/// the woken waiter or by someone already awake. Words whose waiters wait for different
/// things use [`notify_all`]; peers leaving and recovery use [`bump`].
pub fn notify<F: Futex>(futex: &F, seq: &AtomicU32, waiters: &[AtomicU64]) {
    // SYNC POINT: eventcount (pairs with the fence in `block_on`).
    fence(Ordering::SeqCst);
    notify_fenced(futex, seq, waiters, false)
}

/// [`notify`] that wakes every waiter: for a word whose waiters poll for different
/// things (`not_full`: a free ring cell for a loan being sent, a free payload slot for a
/// new loan), where the one woken might not be one the change helps.
pub fn notify_all<F: Futex>(futex: &F, seq: &AtomicU32, waiters: &[AtomicU64]) {
    // SYNC POINT: eventcount (pairs with the fence in `block_on`).
    fence(Ordering::SeqCst);
    notify_fenced(futex, seq, waiters, true)
}

/// [`notify`] (or, with `all`, [`notify_all`]) without the fence, for a caller that
/// notifies several words after one state change and has issued `fence(SeqCst)` itself
/// after that change.
pub fn notify_fenced<F: Futex>(futex: &F, seq: &AtomicU32, waiters: &[AtomicU64], all: bool) {
    if waiters.iter().any(|w| w.load(Ordering::Relaxed) != 0) {
        seq.fetch_add(1, Ordering::Release);
        if all {
            futex.wake_all(seq);
        } else {
            futex.wake_one(seq);
        }
    }
}

/// Wakes every sleeper on `seq` unconditionally (after a peer left or was recovered).
pub fn bump<F: Futex>(futex: &F, seq: &AtomicU32) {
    seq.fetch_add(1, Ordering::Release);
    futex.wake_all(seq);
}

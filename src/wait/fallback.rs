//! Portable fallback for targets without a shared futex wrapper here yet: spin briefly,
//! then sleep in short steps re-reading the word. Correct (the contract allows early
//! returns and the eventcount re-checks), but a sleeper notices a change only at the next
//! step, so latency is up to `STEP`.

use super::Futex;
use crate::sync::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const STEP: Duration = Duration::from_micros(200);

/// Sleep-and-poll stand-in for a shared futex.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFutex;

impl Futex for OsFutex {
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        let start = Instant::now();
        while word.load(Ordering::Acquire) == expected {
            let step = match timeout {
                Some(t) => match t.checked_sub(start.elapsed()) {
                    Some(left) => left.min(STEP),
                    None => return,
                },
                None => STEP,
            };
            std::thread::sleep(step);
        }
    }

    fn wake_all(&self, _word: &AtomicU32) {}
}

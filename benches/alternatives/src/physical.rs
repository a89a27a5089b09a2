//! The physical limits, one thread: `memcpy` bandwidth (glibc's, through
//! `ptr::copy_nonoverlapping`), and the two halves of the loan-API work, filling a
//! payload in place with the pattern and reading it back (the word sum).

use crate::proto::*;
use serde::{Deserialize, Serialize};
use std::hint::black_box;

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Phys {
    pub size: usize,
    pub run: u32,
    /// Nanoseconds per operation on `size` bytes.
    pub memcpy_ns: f64,
    pub fill_ns: f64,
    pub sum_ns: f64,
    pub memcpy_gbps: f64,
}

/// Times `f` over enough repetitions to last about `budget_ns` (after one warm-up call),
/// reading the clock once per batch of `batch` calls so small sizes time the work, not
/// the clock.
fn time_per_op(budget_ns: u64, batch: u64, mut f: impl FnMut()) -> f64 {
    f();
    let t0 = now_ns();
    let mut n = 0u64;
    loop {
        for _ in 0..batch {
            f();
        }
        n += batch;
        let dt = now_ns() - t0;
        if dt >= budget_ns {
            return dt as f64 / n as f64;
        }
    }
}

/// `words` u64s starting on a page boundary (inside a slightly larger allocation).
struct PageAligned {
    buf: Vec<u64>,
    start: usize,
    words: usize,
}

impl PageAligned {
    fn new(words: usize) -> PageAligned {
        let buf = vec![0u64; words + 512];
        let start = (4096 - buf.as_ptr() as usize % 4096) % 4096 / 8;
        PageAligned { buf, start, words }
    }
    fn get_mut(&mut self) -> &mut [u64] {
        &mut self.buf[self.start..self.start + self.words]
    }
}

pub fn measure(size: usize, run: u32, budget_ns: u64) -> Phys {
    let words = size / 8;
    // Both buffers page-aligned, like shmq's payload segments. Not incidental: with
    // malloc's placement a 64 KiB destination lands 16 bytes past the source modulo
    // 4 KiB, and on AMD Zen glibc's memcpy (`rep movsb`) then runs at ~3 GB/s instead of
    // ~47 (measured here for destinations 1-63 bytes past the source modulo 4 KiB, at
    // 4 KiB to 256 KiB), which made the "physical limit" at 64 KiB 1.5-2.7 GB/s.
    let mut src_buf = PageAligned::new(words);
    let src = src_buf.get_mut();
    fill(src, 1);
    let src: &[u64] = src;
    let mut dst_buf = PageAligned::new(words);
    let dst = dst_buf.get_mut();
    fill(dst, 2); // touch every page before timing
    let batch = (1 << 20) / size.max(1) as u64 + 1;
    let memcpy_ns = time_per_op(budget_ns, batch, || {
        // SAFETY: two distinct allocations, each with `words` u64 from its pointer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                black_box(src.as_ptr()),
                black_box(dst.as_mut_ptr()),
                words,
            )
        };
        black_box(&dst);
    });
    // Correctness of the copy (a benchmark checks its answer).
    assert_eq!(
        sum_words(&dst),
        expected_sum(words, 1),
        "memcpy produced wrong bytes"
    );
    let mut st = 0;
    let fill_ns = time_per_op(budget_ns, batch, || {
        st += 1;
        fill(black_box(&mut *dst), st);
        black_box(&dst);
    });
    let mut bad = 0;
    let sum_ns = time_per_op(budget_ns, batch, || {
        if sum_words(black_box(&dst)) != expected_sum(words, st) {
            bad += 1;
        }
    });
    assert_eq!(bad, 0, "fill/sum disagree");
    Phys {
        size,
        run,
        memcpy_ns,
        fill_ns,
        sum_ns,
        memcpy_gbps: size as f64 / memcpy_ns,
    }
}

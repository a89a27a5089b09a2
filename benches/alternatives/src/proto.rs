//! What every case shares: the payload pattern and its check, the clock, the child-process
//! protocol, percentiles, and the memory probes.
//!
//! ## Payload pattern (how a receiver checks what arrived)
//!
//! A payload of `n` bytes is `n / 8` little-endian `u64` words:
//!
//! ```text
//!   word 0      = stamp = producer << 48 | seq      (seq counts from 0 per producer)
//!   word i ≥ 1  = i * K                             (K = 0x9E37_79B9_7F4A_7C15)
//! ```
//!
//! The receiver reads **every** word and adds them up (wrapping); the sum must equal
//! `stamp + K * (n/8 - 1) * (n/8) / 2`. That is the "read every byte" work of a consumer
//! and a content check in one pass. Per producer the receiver also checks that `seq` only
//! grows (FIFO per producer), counts messages and sums their `seq`s; the orchestrator then
//! checks that every producer's count is exactly what it sent and that the `seq` sums
//! match `0 + 1 + … + (count - 1)` (each message exactly once). The first message from each
//! producer is also compared word by word against a regenerated pattern.
//!
//! An **end marker** has producer field `END` (0xFFFF); it is used only by transports
//! without a native end-of-stream (iceoryx2, shaq, crossbeam).

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};

/// The pattern multiplier (odd, so `i * K` differs for every word index).
pub const K: u64 = 0x9E37_79B9_7F4A_7C15;
/// Producer field of an end marker.
pub const END: u64 = 0xFFFF;

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the host, so a
/// timestamp written by one process can be compared with a read in another.
#[inline]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The stamp word of message `seq` from producer `p`.
#[inline]
pub fn stamp(p: u32, seq: u64) -> u64 {
    (p as u64) << 48 | seq
}

/// The end-marker stamp.
pub fn end_stamp(p: u32) -> u64 {
    END << 48 | p as u64
}

/// Writes the pattern in place (the "loan" way to produce a payload: no source buffer).
#[inline]
pub fn fill(words: &mut [u64], stamp: u64) {
    if let Some(w0) = words.first_mut() {
        *w0 = stamp;
    }
    for (i, w) in words.iter_mut().enumerate().skip(1) {
        *w = (i as u64).wrapping_mul(K);
    }
}

/// The word sum a correct payload of `nwords` words with `stamp` has.
#[inline]
pub fn expected_sum(nwords: usize, stamp: u64) -> u64 {
    let n = nwords as u128;
    let tri = if n == 0 { 0 } else { (n - 1) * n / 2 };
    stamp.wrapping_add(K.wrapping_mul(tri as u64))
}

/// Wrapping sum of all words.
#[inline]
pub fn sum_words(words: &[u64]) -> u64 {
    // Four independent accumulators so the loop is bound by loads, not by one add chain.
    let mut acc = [0u64; 4];
    let chunks = words.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        acc[0] = acc[0].wrapping_add(c[0]);
        acc[1] = acc[1].wrapping_add(c[1]);
        acc[2] = acc[2].wrapping_add(c[2]);
        acc[3] = acc[3].wrapping_add(c[3]);
    }
    let mut s = acc[0]
        .wrapping_add(acc[1])
        .wrapping_add(acc[2])
        .wrapping_add(acc[3]);
    for w in rest {
        s = s.wrapping_add(*w);
    }
    s
}

/// Views bytes as words (the aligned middle) or copies through unaligned reads if the
/// buffer is not 8-byte aligned (ipc-channel hands back a `Vec<u8>`).
pub fn with_words<R>(bytes: &[u8], f: impl FnOnce(&[u64]) -> R) -> R {
    // SAFETY: u64 has no invalid bit patterns; align_to only reinterprets aligned middles.
    let (pre, mid, post) = unsafe { bytes.align_to::<u64>() };
    if pre.is_empty() && post.is_empty() {
        f(mid)
    } else {
        let v: Vec<u64> = bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        f(&v)
    }
}

/// A source buffer holding the pattern, for copy APIs: only word 0 changes per message.
pub struct Source {
    pub words: Vec<u64>,
}

impl Source {
    pub fn new(size: usize) -> Source {
        let mut words = vec![0u64; size / 8];
        fill(&mut words, 0);
        Source { words }
    }
    #[inline]
    pub fn stamped(&mut self, stamp: u64) -> &[u8] {
        self.words[0] = stamp;
        bytemuck::cast_slice(&self.words)
    }
}

/// What a consumer saw, per producer.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Seen {
    pub count: Vec<u64>,
    pub seq_sum: Vec<u64>,
    pub bad_sum: u64,
    pub bad_order: u64,
    pub bad_stamp: u64,
    pub bad_len: u64,
    pub full_compared: u64,
    pub ends: u64,
}

/// What one message turned out to be.
#[derive(PartialEq, Eq, Debug)]
pub enum Got {
    Data,
    End,
}

/// Checks every message a consumer receives (see the module doc).
pub struct Verifier {
    size: usize,
    last: Vec<Option<u64>>,
    pub seen: Seen,
}

impl Verifier {
    pub fn new(size: usize, producers: usize) -> Verifier {
        Verifier {
            size,
            last: vec![None; producers],
            seen: Seen {
                count: vec![0; producers],
                seq_sum: vec![0; producers],
                ..Seen::default()
            },
        }
    }

    #[inline]
    pub fn bytes(&mut self, b: &[u8]) -> Got {
        if b.len() != self.size {
            self.seen.bad_len += 1;
            return Got::Data;
        }
        with_words(b, |w| self.words(w))
    }

    /// For payloads whose middle is deliberately left alone (the `touch` API): checks the
    /// length, word 0 (the stamp) and the last word (`stamp ^ K`), then counts as `words`.
    pub fn ends_only(&mut self, w: &[u64]) -> Got {
        if w.len() * 8 != self.size || w.is_empty() {
            self.seen.bad_len += 1;
            return Got::Data;
        }
        let st = w[0];
        let want_last = if w.len() == 1 { st } else { st ^ K };
        if w[w.len() - 1] != want_last {
            self.seen.bad_sum += 1;
        }
        let p = (st >> 48) as usize;
        let seq = st & ((1 << 48) - 1);
        let Some(last) = self.last.get_mut(p) else {
            self.seen.bad_stamp += 1;
            return Got::Data;
        };
        if last.is_none() {
            self.seen.full_compared += 1; // both ends compared: all there is to compare
        }
        if matches!(*last, Some(l) if seq <= l) {
            self.seen.bad_order += 1;
        }
        *last = Some(seq);
        self.seen.count[p] += 1;
        self.seen.seq_sum[p] = self.seen.seq_sum[p].wrapping_add(seq);
        Got::Data
    }

    #[inline]
    pub fn words(&mut self, w: &[u64]) -> Got {
        if w.len() * 8 != self.size || w.is_empty() {
            self.seen.bad_len += 1;
            return Got::Data;
        }
        let st = w[0];
        let p = st >> 48;
        if p == END {
            self.seen.ends += 1;
            return Got::End;
        }
        let s = sum_words(w);
        if s != expected_sum(w.len(), st) {
            self.seen.bad_sum += 1;
        }
        let seq = st & ((1 << 48) - 1);
        let Some(last) = self.last.get_mut(p as usize) else {
            self.seen.bad_stamp += 1;
            return Got::Data;
        };
        if last.is_none() {
            let mut want = vec![0u64; w.len()];
            fill(&mut want, st);
            if want != w {
                self.seen.bad_sum += 1;
            }
            self.seen.full_compared += 1;
        }
        if matches!(*last, Some(l) if seq <= l) {
            self.seen.bad_order += 1;
        }
        *last = Some(seq);
        self.seen.count[p as usize] += 1;
        self.seen.seq_sum[p as usize] = self.seen.seq_sum[p as usize].wrapping_add(seq);
        Got::Data
    }
}

// ---------------------------------------------------------------------------------------
// Child processes

/// Everything a child needs to play its role (passed as one JSON argument).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Spec {
    /// System under test (`shmq`, `uds`, `pipe`, `ipc-channel`, `iceoryx2`, `shaq`).
    pub sys: String,
    /// `prod`, `cons`, `ping`, `pong`.
    pub role: String,
    /// `copy` or `loan` (throughput); `spin` or `sleep` (latency).
    pub mode: String,
    pub idx: u32,
    pub producers: u32,
    pub consumers: u32,
    pub size: usize,
    /// Messages per producer before timing starts.
    pub warm: u64,
    /// Timed messages per producer (or round trips for latency).
    pub n: u64,
    /// Queue/ring capacity where the transport has one.
    pub capacity: usize,
    /// Transport-specific names (queue names, services, paths).
    pub names: Vec<String>,
    /// Inherited file descriptors (pipes, sockets).
    pub fds: Vec<i32>,
    /// For `ping` in `sleep` mode: pause before each ping, µs.
    pub gap_us: u64,
}

/// What a child reports back (one `RESULT {json}` line on stdout).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Report {
    pub role: String,
    pub idx: u32,
    pub t_start: u64,
    pub t_end: u64,
    pub sent: u64,
    pub seen: Option<Seen>,
    pub rss_start: u64,
    pub rss_end: u64,
    pub shmem_end: u64,
    pub lat: Option<LatReport>,
    pub error: Option<String>,
}

/// Latency samples summarised in the child.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct LatReport {
    /// Round trips (ping side).
    pub rtt: Option<Pct>,
    /// One-way by timestamp, measured on the side that received.
    pub oneway: Option<Pct>,
    pub samples: u64,
    pub bad: u64,
}

/// Percentiles in nanoseconds.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct Pct {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

pub fn pct(v: &mut [u64]) -> Option<Pct> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1] as f64;
    Some(Pct {
        p50: at(0.5),
        p99: at(0.99),
        p999: at(0.999),
        min: v[0] as f64,
        max: v[v.len() - 1] as f64,
        mean: v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64,
    })
}

/// The child's side of the handshake with the orchestrator: `READY`, wait for `GO`, run,
/// `RESULT`, then wait for `EXIT` (or end of stdin) before dropping anything, so the
/// orchestrator can measure shared memory at steady state.
pub struct Ctl {
    stdin: std::io::StdinLock<'static>,
}

impl Ctl {
    pub fn new() -> Ctl {
        Ctl {
            stdin: std::io::stdin().lock(),
        }
    }
    /// Prints a line to the orchestrator.
    pub fn say(&mut self, line: &str) {
        let mut o = std::io::stdout().lock();
        writeln!(o, "{line}").unwrap();
        o.flush().unwrap();
    }
    pub fn ready_then_wait_go(&mut self) {
        self.say("READY");
        let mut l = String::new();
        self.stdin.read_line(&mut l).unwrap();
        assert_eq!(l.trim(), "GO", "expected GO, got {l:?}");
    }
    pub fn report_then_wait_exit(&mut self, r: &Report) {
        self.say(&format!("RESULT {}", serde_json::to_string(r).unwrap()));
        let mut l = String::new();
        let _ = self.stdin.read_line(&mut l);
    }
}

thread_local! {
    static KEEP: std::cell::RefCell<Vec<Box<dyn std::any::Any>>> = Default::default();
}

/// Keeps a transport handle alive until the child exits (after `EXIT`), so the
/// orchestrator measures memory with the queue still open.
pub fn keep<T: 'static>(x: T) {
    KEEP.with(|k| k.borrow_mut().push(Box::new(x)));
}

/// (VmRSS, RssShmem) of this process in bytes, from /proc/self/status.
pub fn rss() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (get("VmRSS:"), get("RssShmem:"))
}

/// Bytes allocated under /dev/shm (st_blocks, so sparse files count what they use) by
/// objects whose names start with one of `prefixes`, and their number.
pub fn dev_shm_usage(prefixes: &[String]) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut bytes = 0;
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir("/dev/shm") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                continue;
            }
            if let Ok(m) = e.metadata() {
                if m.is_file() {
                    bytes += m.blocks() * 512;
                    n += 1;
                }
            }
        }
    }
    (bytes, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_payload_passes_and_a_flipped_byte_fails() {
        for nw in [1usize, 2, 8, 129] {
            let mut w = vec![0u64; nw];
            fill(&mut w, stamp(3, 7));
            let mut v = Verifier::new(nw * 8, 4);
            assert_eq!(v.words(&w), Got::Data);
            assert_eq!(v.seen.bad_sum, 0);
            assert_eq!(v.seen.count[3], 1);
            let mut b: Vec<u8> = bytemuck::cast_slice(&w).to_vec();
            *b.last_mut().unwrap() ^= 1;
            let mut v = Verifier::new(nw * 8, 4);
            v.bytes(&b);
            // With one word the payload is the stamp alone: damage shows as a bad stamp.
            let caught = v.seen.bad_sum + v.seen.bad_stamp + v.seen.bad_order;
            assert!(caught >= 1, "nw {nw}");
        }
    }

    #[test]
    fn reordering_and_unknown_producers_are_counted() {
        let mut v = Verifier::new(64, 1);
        let mut w = vec![0u64; 8];
        for seq in [0, 2, 1] {
            fill(&mut w, stamp(0, seq));
            v.words(&w);
        }
        assert_eq!(v.seen.bad_order, 1);
        fill(&mut w, stamp(5, 0));
        v.words(&w);
        assert_eq!(v.seen.bad_stamp, 1);
        fill(&mut w, end_stamp(0));
        assert_eq!(v.words(&w), Got::End);
    }

    #[test]
    fn unaligned_bytes_are_read_as_words() {
        let mut w = vec![0u64; 5];
        fill(&mut w, stamp(0, 0));
        let mut b = vec![0u8; 41];
        b[1..].copy_from_slice(bytemuck::cast_slice(&w));
        let mut v = Verifier::new(40, 1);
        v.bytes(&b[1..]);
        assert_eq!(v.seen.bad_sum, 0);
    }

    #[test]
    fn percentiles_pick_ranks() {
        let mut v: Vec<u64> = (1..=1000).collect();
        let p = pct(&mut v).unwrap();
        assert_eq!((p.p50, p.p99, p.p999, p.max), (500.0, 990.0, 999.0, 1000.0));
    }
}

// ---------------------------------------------------------------------------------------
// Latency: ping-pong over any two-way transport

/// Latency payload: word 0 = round number, word 1 = CLOCK_MONOTONIC at send, then i * K.
pub fn lat_fill(w: &mut [u64], seq: u64, t: u64) {
    fill(w, 0);
    w[0] = seq;
    w[1] = t;
}

/// Whether a latency payload is intact and is round `seq`.
pub fn lat_ok(w: &[u64], seq: u64) -> bool {
    w.len() >= 2
        && w[0] == seq
        && sum_words(w)
            == expected_sum(w.len(), 0)
                .wrapping_add(w[0])
                .wrapping_add(w[1])
                .wrapping_sub(K)
}

/// One end of a two-way transport, as the latency driver sees it.
pub trait Duplex {
    fn send(&mut self, w: &[u64]);
    /// Receives one message (busy-polling if `spin`, else blocking in the kernel or on the
    /// transport's futex) and hands its words to `f`.
    fn recv(&mut self, spin: bool, f: &mut dyn FnMut(&[u64]));
}

/// The pinging side: `warm + n` rounds, timing the last `n`.
pub fn ping(spec: &Spec, d: &mut dyn Duplex) -> LatReport {
    let spin = spec.mode == "spin";
    let mut w = vec![0u64; spec.size / 8];
    let mut rtt = Vec::with_capacity(spec.n as usize);
    let mut back = Vec::with_capacity(spec.n as usize);
    let mut bad = 0;
    for i in 0..spec.warm + spec.n {
        if spec.gap_us > 0 {
            std::thread::sleep(std::time::Duration::from_micros(spec.gap_us));
        }
        let t0 = now_ns();
        lat_fill(&mut w, i, t0);
        d.send(&w);
        d.recv(spin, &mut |r| {
            let t1 = now_ns();
            if !lat_ok(r, i) {
                bad += 1;
            }
            if i >= spec.warm {
                rtt.push(t1 - t0);
                back.push(t1.saturating_sub(r[1]));
            }
        });
    }
    LatReport {
        rtt: pct(&mut rtt),
        oneway: pct(&mut back),
        samples: spec.n,
        bad,
    }
}

/// The answering side: receives round `i`, timestamps its arrival, answers at once.
pub fn pong(spec: &Spec, d: &mut dyn Duplex) -> LatReport {
    let spin = spec.mode == "spin";
    let mut w = vec![0u64; spec.size / 8];
    let mut oneway = Vec::with_capacity(spec.n as usize);
    let mut bad = 0;
    for i in 0..spec.warm + spec.n {
        d.recv(spin, &mut |r| {
            let t = now_ns();
            if !lat_ok(r, i) {
                bad += 1;
            }
            if i >= spec.warm {
                oneway.push(t.saturating_sub(r[1]));
            }
        });
        lat_fill(&mut w, i, now_ns());
        d.send(&w);
    }
    LatReport {
        rtt: None,
        oneway: pct(&mut oneway),
        samples: spec.n,
        bad,
    }
}

/// Runs a latency role over `d` with the READY/GO/RESULT handshake.
pub fn run_latency(spec: &Spec, ctl: &mut Ctl, d: &mut dyn Duplex) -> Report {
    let (rss_start, _) = rss();
    ctl.ready_then_wait_go();
    let t_start = now_ns();
    let lat = if spec.role == "ping" {
        ping(spec, d)
    } else {
        pong(spec, d)
    };
    let (rss_end, shmem_end) = rss();
    Report {
        role: spec.role.clone(),
        idx: spec.idx,
        t_start,
        t_end: now_ns(),
        lat: Some(lat),
        rss_start,
        rss_end,
        shmem_end,
        ..Report::default()
    }
}

/// Runs a producer: `warm` untimed then `n` timed messages through `one(stamp)`.
pub fn run_producer(spec: &Spec, ctl: &mut Ctl, mut one: impl FnMut(u64)) -> Report {
    let (rss_start, _) = rss();
    ctl.ready_then_wait_go();
    for s in 0..spec.warm {
        one(stamp(spec.idx, s));
    }
    let t_start = now_ns();
    for s in spec.warm..spec.warm + spec.n {
        one(stamp(spec.idx, s));
    }
    let t_end = now_ns();
    let (rss_end, shmem_end) = rss();
    Report {
        role: "prod".into(),
        idx: spec.idx,
        t_start,
        t_end,
        sent: spec.warm + spec.n,
        rss_start,
        rss_end,
        shmem_end,
        ..Report::default()
    }
}

/// Builds a consumer's report. `t_last` is the clock read when the consumer last found
/// nothing to read after a message (the end of its useful work).
pub fn consumer_report(
    spec: &Spec,
    v: Verifier,
    rss_start: u64,
    t_start: u64,
    t_last: u64,
) -> Report {
    let (rss_end, shmem_end) = rss();
    Report {
        role: "cons".into(),
        idx: spec.idx,
        t_start,
        t_end: t_last,
        seen: Some(v.seen),
        rss_start,
        rss_end,
        shmem_end,
        ..Report::default()
    }
}

//! The message format: a 64-byte header, then the f32 tensor.
//!
//! ```text
//! word (u32)  0      1      2..4   4        5      6..8      8..10        10..16
//!             MAGIC  actor  seq    n_elems  0      checksum  sent_at_ns   0
//! ```
//!
//! All words are native-endian (every process is on this host). `checksum` covers the f32
//! bit patterns of the tensor; `sent_at_ns` is wall-clock time (ns since the Unix epoch)
//! just before the send, for latency. Every payload starts 64-byte aligned in shared
//! memory, so both sides view it as `[u32]`/`[f32]` in place.

use std::time::{SystemTime, UNIX_EPOCH};

pub const MAGIC: u32 = u32::from_le_bytes(*b"RLq1");
/// Header length in 32-bit words.
pub const HEADER_WORDS: usize = 16;

/// Bytes of one message carrying `elems` f32 values.
pub fn message_bytes(elems: usize) -> usize {
    (HEADER_WORDS + elems) * 4
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What a learner makes of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub actor: u32,
    pub seq: u64,
    pub sent_at_ns: u64,
}

/// Fletcher-style checksum of 32-bit words: position-sensitive (swapped or shifted data
/// changes it) and cheap enough not to dominate a learner.
pub fn checksum(words: &[u32]) -> u64 {
    let (mut a, mut b) = (0u64, 0u64);
    for &w in words {
        a = a.wrapping_add(w as u64);
        b = b.wrapping_add(a);
    }
    a ^ b.rotate_left(32)
}

/// The observation an actor "renders": deterministic in (actor, seq, index), values in
/// [0, 1) like normalized pixels. Stands in for an environment step.
pub fn render(actor: u32, seq: u64, out: &mut [f32]) {
    let key = (seq as u32).wrapping_mul(0x85EB_CA6B) ^ actor.wrapping_mul(0xC2B2_AE35);
    for (i, v) in out.iter_mut().enumerate() {
        let x = (i as u32).wrapping_mul(0x9E37_79B1) ^ key;
        *v = (x >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
    }
}

/// Writes message `seq` of `actor` in place into `msg` (a whole message, as `u32` words).
pub fn write(msg: &mut [u32], actor: u32, seq: u64) {
    let (head, body) = msg.split_at_mut(HEADER_WORDS);
    render(actor, seq, shmq::typed::bytemuck::cast_slice_mut(body));
    let sum = checksum(body);
    head.fill(0);
    head[0] = MAGIC;
    head[1] = actor;
    head[2..4].copy_from_slice(&split(seq));
    head[4] = body.len() as u32;
    head[6..8].copy_from_slice(&split(sum));
    head[8..10].copy_from_slice(&split(now_ns()));
}

/// Checks a received message of the expected number of elements; `Err` says what is wrong.
pub fn verify(msg: &[u32], elems: usize) -> Result<Stamp, String> {
    if msg.len() != HEADER_WORDS + elems {
        return Err(format!(
            "length {} words, expected {}",
            msg.len(),
            HEADER_WORDS + elems
        ));
    }
    let (head, body) = msg.split_at(HEADER_WORDS);
    if head[0] != MAGIC {
        return Err(format!("bad magic {:#x}", head[0]));
    }
    if head[4] as usize != elems {
        return Err(format!(
            "header says {} elements, expected {elems}",
            head[4]
        ));
    }
    let stamp = Stamp {
        actor: head[1],
        seq: join(&head[2..4]),
        sent_at_ns: join(&head[8..10]),
    };
    let (want, got) = (join(&head[6..8]), checksum(body));
    if want != got {
        return Err(format!(
            "checksum mismatch in actor {} seq {}: header {want:#x}, data {got:#x}",
            stamp.actor, stamp.seq
        ));
    }
    Ok(stamp)
}

fn split(v: u64) -> [u32; 2] {
    [v as u32, (v >> 32) as u32]
}

fn join(w: &[u32]) -> u64 {
    w[0] as u64 | (w[1] as u64) << 32
}

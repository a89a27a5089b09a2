//! The two message formats, both arrays of 32-bit words viewed in place in shared memory
//! (every payload starts 64-byte aligned, so `Message::cast::<u32>()` and
//! `Loan::cast_mut::<u32>()` never copy). All words are native-endian: every process is
//! on this host.
//!
//! A **trajectory** (actor → replay buffer): a 64-byte header, then `steps` observations
//! of `obs` f32 each, `steps` actions (u32) and `steps` rewards (f32).
//!
//! ```text
//! word  0           1      2    3    4      5    6..8      8..10        10..16
//!       TRAJ_MAGIC  actor  inc  seq  steps  obs  checksum  sent_at_ns   0
//! ```
//!
//! `(actor, inc, seq)` names it: actor id, incarnation of that actor's process (0, then +1
//! per restart) and sequence number within the incarnation. `checksum` covers every word
//! after the header.
//!
//! A **batch** (replay buffer → learner): a 64-byte header, then `n` whole trajectories
//! copied verbatim (headers and checksums included), so a learner can check every one.
//!
//! ```text
//! word  0            1           2    3  4           5..8  8..10        10..16
//!       BATCH_MAGIC  replay inc  seq  n  traj words  0     made_at_ns   0
//! ```

use std::time::{SystemTime, UNIX_EPOCH};

pub const TRAJ_MAGIC: u32 = u32::from_le_bytes(*b"RLt1");
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"RLb1");
/// Header length in 32-bit words (64 bytes).
pub const HEADER_WORDS: usize = 16;

/// Words of one trajectory of `steps` steps of `obs` f32 each.
pub fn traj_words(steps: usize, obs: usize) -> usize {
    HEADER_WORDS + steps * (obs + 2)
}

pub fn traj_bytes(steps: usize, obs: usize) -> usize {
    traj_words(steps, obs) * 4
}

/// Words of a batch of `n` trajectories of `traj_words` words each.
pub fn batch_words(n: usize, traj_words: usize) -> usize {
    HEADER_WORDS + n * traj_words
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The name of a trajectory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrajId {
    pub actor: u32,
    pub inc: u32,
    pub seq: u32,
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

/// What an actor's "environment" produces: observations in [0, 1) like normalized
/// pixels, one of 18 actions (Atari's action set) and a sparse reward per step, all
/// deterministic in (id, index). Stands in for stepping a real environment.
fn render(id: &TrajId, obs: &mut [f32], actions: &mut [u32], rewards: &mut [f32]) {
    let key = id.seq.wrapping_mul(0x85EB_CA6B)
        ^ id.actor.wrapping_mul(0xC2B2_AE35)
        ^ id.inc.wrapping_mul(0x27D4_EB2F);
    for (i, v) in obs.iter_mut().enumerate() {
        let x = (i as u32).wrapping_mul(0x9E37_79B1) ^ key;
        *v = (x >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
    }
    for (t, (a, r)) in actions.iter_mut().zip(rewards.iter_mut()).enumerate() {
        let x = (t as u32 ^ key).wrapping_mul(0x9E37_79B1);
        *a = (x >> 16) % 18;
        *r = match x % 16 {
            0 => 1.0,
            1 => -1.0,
            _ => 0.0,
        };
    }
}

/// Writes trajectory `id` in place into `msg` (exactly `traj_words(steps, obs)` words).
pub fn write_traj(msg: &mut [u32], id: &TrajId, steps: usize, obs: usize) {
    assert_eq!(msg.len(), traj_words(steps, obs));
    let (head, body) = msg.split_at_mut(HEADER_WORDS);
    let (o, rest) = body.split_at_mut(steps * obs);
    let (actions, rewards) = rest.split_at_mut(steps);
    let o: &mut [f32] = shmq::typed::bytemuck::cast_slice_mut(o);
    let rewards: &mut [f32] = shmq::typed::bytemuck::cast_slice_mut(rewards);
    render(id, o, actions, rewards);
    let sum = checksum(body);
    head.fill(0);
    head[..6].copy_from_slice(&[
        TRAJ_MAGIC,
        id.actor,
        id.inc,
        id.seq,
        steps as u32,
        obs as u32,
    ]);
    head[6..8].copy_from_slice(&split(sum));
    head[8..10].copy_from_slice(&split(now_ns()));
}

/// Checks a trajectory's length and header, not its data (cheap: the replay buffer does
/// this for every trajectory, the learners check the data of those they sample).
pub fn traj_header(msg: &[u32], steps: usize, obs: usize) -> Result<TrajId, String> {
    if msg.len() != traj_words(steps, obs) {
        return Err(format!(
            "trajectory of {} words, expected {}",
            msg.len(),
            traj_words(steps, obs)
        ));
    }
    if msg[0] != TRAJ_MAGIC {
        return Err(format!("bad trajectory magic {:#x}", msg[0]));
    }
    if msg[4] as usize != steps || msg[5] as usize != obs {
        return Err(format!(
            "trajectory header says {}x{}, expected {steps}x{obs}",
            msg[4], msg[5]
        ));
    }
    Ok(TrajId {
        actor: msg[1],
        inc: msg[2],
        seq: msg[3],
    })
}

/// Checks a whole trajectory, data included.
pub fn verify_traj(msg: &[u32], steps: usize, obs: usize) -> Result<TrajId, String> {
    let id = traj_header(msg, steps, obs)?;
    let (want, got) = (join(&msg[6..8]), checksum(&msg[HEADER_WORDS..]));
    if want != got {
        return Err(format!(
            "checksum mismatch in trajectory {id:?}: header {want:#x}, data {got:#x}"
        ));
    }
    Ok(id)
}

/// Writes the header of batch `seq` of replay incarnation `inc`, holding `n` trajectories
/// of `traj_words` words each (the caller copies them in after the header).
pub fn write_batch_header(head: &mut [u32], inc: u32, seq: u32, n: usize, traj_words: usize) {
    head.fill(0);
    head[..5].copy_from_slice(&[BATCH_MAGIC, inc, seq, n as u32, traj_words as u32]);
    head[8..10].copy_from_slice(&split(now_ns()));
}

/// What a learner makes of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchInfo {
    pub inc: u32,
    pub seq: u32,
    pub n: u32,
    pub made_at_ns: u64,
}

/// Checks a batch and every trajectory in it, data included.
pub fn verify_batch(msg: &[u32], n: usize, steps: usize, obs: usize) -> Result<BatchInfo, String> {
    let tw = traj_words(steps, obs);
    if msg.len() != batch_words(n, tw) {
        return Err(format!(
            "batch of {} words, expected {}",
            msg.len(),
            batch_words(n, tw)
        ));
    }
    let (head, body) = msg.split_at(HEADER_WORDS);
    if head[0] != BATCH_MAGIC || head[3] as usize != n || head[4] as usize != tw {
        return Err(format!("bad batch header {:x?}", &head[..5]));
    }
    for t in body.chunks_exact(tw) {
        verify_traj(t, steps, obs)?;
    }
    Ok(BatchInfo {
        inc: head[1],
        seq: head[2],
        n: head[3],
        made_at_ns: join(&head[8..10]),
    })
}

fn split(v: u64) -> [u32; 2] {
    [v as u32, (v >> 32) as u32]
}

fn join(w: &[u32]) -> u64 {
    w[0] as u64 | (w[1] as u64) << 32
}

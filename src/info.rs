//! Inspection of queues from outside: what `shmq list` and `shmq inspect` show. Reading a
//! queue this way takes no participant record and no lock; every figure is a racy
//! snapshot.

use crate::error::Error;
use crate::layout::{part_role, Role, SlotState};
use crate::queue;
use crate::sync::Ordering::{Acquire, Relaxed};

/// A snapshot of one queue.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QueueInfo {
    /// The queue's name.
    pub name: String,
    /// Exact capacity.
    pub capacity: u32,
    /// Payload slots.
    pub slots: u32,
    /// Participant records.
    pub max_participants: u32,
    /// Largest message in bytes.
    pub max_message_size: u64,
    /// Bound on all payload segments, bytes.
    pub max_payload_bytes: u64,
    /// Whether held messages of dead consumers are dropped (else redelivered).
    pub at_most_once: bool,
    /// Deliveries after which a message whose consumer died is set aside
    /// ([`Builder::max_deliveries`](crate::Builder::max_deliveries)).
    pub max_deliveries: u32,
    /// Ring position hints.
    pub head: u64,
    /// Ring position hints.
    pub tail: u64,
    /// Messages waiting (in the ring or orphaned for redelivery).
    pub depth: u64,
    /// Slots by state: free, loaned (being written or queued), held (received, not
    /// acked), orphan (waiting for redelivery).
    pub slot_states: [u64; 4],
    /// Bytes of payload segments in `/dev/shm`.
    pub payload_bytes: u64,
    /// Bytes of the header object.
    pub header_bytes: u64,
    /// The participant running recovery, if any.
    pub lease_holder: Option<u16>,
    /// Participants recovered after dying.
    pub recoveries: u64,
    /// Held messages of dead consumers made redeliverable.
    pub orphaned: u64,
    /// Held messages of dead consumers dropped (at-most-once).
    pub dropped: u64,
    /// Messages set aside (discarded) after `max_deliveries` deliveries.
    pub dead_letters: u64,
    /// Unsent loans of dead producers discarded.
    pub discarded: u64,
    /// Every taken participant record.
    pub participants: Vec<ParticipantInfo>,
    /// Every participant record, free or taken, in index order. A record's generation
    /// grows by one each time a participant leaves it, and its pid stays the last
    /// occupant's, so comparing two snapshots shows who attached (and maybe left) between
    /// them.
    pub records: Vec<RecordInfo>,
    /// Words of the queue's memory that no correct participant writes, each naming the
    /// structure and where: empty for a healthy queue. A queue with problems answers
    /// `Corrupt` where a participant meets them; see [`RECOVER_ADVICE`].
    pub problems: Vec<String>,
}

/// What to do with a queue whose memory is corrupt (printed by `shmq inspect`).
pub const RECOVER_ADVICE: &str = "the queue's shared memory holds values no correct \
participant writes (a process wrote over it?): drain what the receivers can still read \
(they get `Corrupt` where the damage is), then create a new queue and move the producers \
to it; once every process has left, `shmq gc --force` removes the old one";

/// One participant record, as [`QueueInfo::records`] lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordInfo {
    /// Times the record was left (by its owner or by a recovery), modulo 2³².
    pub generation: u32,
    /// Whether a participant holds it now.
    pub active: bool,
    /// The pid of its current or last occupant (0 if never used).
    pub pid: u32,
}

/// A snapshot of one participant (an ACTIVE record).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ParticipantInfo {
    /// Record index.
    pub index: u16,
    /// `"sender"`, `"receiver"` or `"monitor"` (a process's supervisor record).
    pub role: &'static str,
    /// Process id.
    pub pid: u32,
    /// Whether its process is alive (its lock is held); a dead one awaits recovery.
    pub alive: bool,
    /// Messages sent (senders).
    pub sent: u64,
    /// Slots it holds LOANED (sender: being written, or queued and unclaimed).
    pub loaned: u64,
    /// Slots it holds HELD (receiver: received, not yet acknowledged).
    pub held: u64,
}

impl QueueInfo {
    /// Participants with this role that are alive.
    pub fn alive(&self, role: &str) -> usize {
        self.participants
            .iter()
            .filter(|p| p.alive && p.role == role)
            .count()
    }
    /// Participants that are dead and not yet recovered.
    pub fn dead(&self) -> usize {
        self.participants.iter().filter(|p| !p.alive).count()
    }
}

/// Reads a snapshot of queue `name`.
///
/// # Errors
/// As [`Sender::open`](crate::Sender::open) for a missing, foreign or corrupt queue.
pub fn inspect(name: &str) -> Result<QueueInfo, Error> {
    let (map, probe, dims) = queue::peek(name)?;
    let q = queue::view(&map, &dims);
    let c = &q.ctl.counters;
    let mut loaned = vec![0u64; q.parts.len()];
    let mut held = vec![0u64; q.parts.len()];
    for rec in q.slots {
        let w = rec.word.load(Relaxed);
        let owner = crate::layout::slot_owner(w) as usize;
        match crate::layout::slot_state(w) {
            Some(SlotState::Loaned) if owner < loaned.len() => loaned[owner] += 1,
            Some(SlotState::Held) if owner < held.len() => held[owner] += 1,
            _ => {}
        }
    }
    let mut participants = Vec::new();
    let mut records = Vec::with_capacity(q.parts.len());
    for (i, rec) in q.parts.iter().enumerate() {
        let w = rec.state.load(Acquire);
        records.push(RecordInfo {
            generation: crate::layout::part_gen(w),
            active: part_role(w).is_some(),
            pid: rec.pid.load(Relaxed),
        });
        let Some(role) = part_role(w) else { continue };
        let locked =
            crate::os::is_locked(&probe, crate::os::part_lock_byte(i as u16)).unwrap_or(true);
        participants.push(ParticipantInfo {
            index: i as u16,
            role: match role {
                Role::Sender => "sender",
                Role::Receiver => "receiver",
                Role::Monitor => "monitor",
            },
            pid: rec.pid.load(Relaxed),
            alive: locked,
            sent: rec.sent.load(Relaxed),
            loaned: loaned[i],
            held: held[i],
        });
    }
    let slot_states = crate::slots::census(&q);
    let lease = c.lease.load(Relaxed);
    Ok(QueueInfo {
        name: name.to_string(),
        capacity: dims.geometry.capacity,
        slots: dims.geometry.slot_count,
        max_participants: dims.geometry.max_participants,
        max_message_size: dims.max_message_size,
        max_payload_bytes: dims.max_payload_bytes,
        at_most_once: dims.at_most_once,
        max_deliveries: dims.max_deliveries as u32,
        head: q.ctl.head.load(Relaxed),
        tail: q.ctl.tail.load(Relaxed),
        depth: crate::ring::len(&q) + slot_states[SlotState::Orphan as usize],
        slot_states,
        payload_bytes: crate::segment::pool_bytes(
            &q,
            crate::segment::segment_size_for(dims.max_message_size),
        ),
        header_bytes: dims.geometry.total_size,
        lease_holder: (lease != 0).then(|| crate::layout::lease_idx(lease)),
        recoveries: c.recoveries.load(Relaxed),
        orphaned: c.orphaned.load(Relaxed),
        dropped: c.dropped.load(Relaxed),
        dead_letters: c.dead_letters.load(Relaxed),
        discarded: c.discarded.load(Relaxed),
        participants,
        records,
        problems: problems(&q, &dims),
    })
}

/// One entry of [`list`]: a queue's name and its snapshot (or why it cannot be read).
pub type Listed = (String, Result<QueueInfo, Error>);

/// Snapshots of every queue in `/dev/shm`, each with its name (a queue that cannot be
/// read, e.g. a foreign file named like one, gives its error instead).
///
/// # Errors
/// If `/dev/shm` cannot be listed.
pub fn list() -> Result<Vec<Listed>, Error> {
    let names = crate::os::list_queue_names().map_err(|e| Error::io("cannot list /dev/shm", e))?;
    Ok(names
        .into_iter()
        .map(|n| {
            let info = inspect(&n);
            (n, info)
        })
        .collect())
}

/// The words of `q` that no correct participant writes (a snapshot of a live queue: only
/// conditions that stay impossible whatever the timing, so a busy healthy queue reports
/// none). The same conditions make the ring or a receiver answer `Corrupt`.
fn problems(q: &crate::layout::Shared<'_>, dims: &queue::Dims) -> Vec<String> {
    use crate::layout::{
        cell_is_full, cell_lap, cell_slot, lap_diff, slot_owner, slot_state, KIND_INLINE,
        KIND_SEGMENT,
    };
    let mut out = Vec::new();
    let (h, t) = (q.ctl.head.load(Acquire), q.ctl.tail.load(Acquire));
    // The hints lag the real positions by a little, never by laps; the real tail is at
    // most `cap` past the real head.
    let lag = 4 * q.cap;
    if t.wrapping_sub(h) > q.cap + lag && h.wrapping_sub(t) > lag {
        out.push(format!(
            "ring positions: head {h} and tail {t} are further apart than a ring of {} cells allows",
            q.cap
        ));
    }
    let lh = q.lap(h);
    for (i, c) in q.cells.iter().enumerate() {
        let x = c.load(Acquire);
        let d = lap_diff(cell_lap(x), lh);
        if !(-2..=4).contains(&d) {
            out.push(format!(
                "ring cell {i}: word {x:#x} is {d} laps from the head's lap {lh}"
            ));
        } else if cell_is_full(x) && cell_slot(x) as usize >= q.slots.len() {
            out.push(format!(
                "ring cell {i}: word {x:#x} names slot {}, of {}",
                cell_slot(x),
                q.slots.len()
            ));
        }
    }
    let parts = q.parts.len();
    for (i, rec) in q.slots.iter().enumerate() {
        let w = rec.word.load(Acquire);
        match slot_state(w) {
            None => out.push(format!("slot {i}: word {w:#x} has no valid state")),
            Some(SlotState::Loaned) | Some(SlotState::Held) if slot_owner(w) as usize >= parts => {
                out.push(format!(
                    "slot {i}: word {w:#x} names owner {}, of {parts} participant records",
                    slot_owner(w)
                ))
            }
            Some(SlotState::Free) => {}
            Some(_) => {
                let (len, kind) = (rec.len.load(Relaxed), rec.kind.load(Relaxed));
                if len > dims.max_message_size {
                    out.push(format!(
                        "slot {i}: message length {len} exceeds the maximum {}",
                        dims.max_message_size
                    ));
                } else if kind != KIND_INLINE && kind != KIND_SEGMENT {
                    out.push(format!(
                        "slot {i}: storage kind {kind} is not one shmq writes"
                    ));
                } else if kind == KIND_INLINE && len > crate::layout::INLINE_BYTES as u64 {
                    out.push(format!(
                        "slot {i}: inline message of {len} bytes (at most {})",
                        crate::layout::INLINE_BYTES
                    ));
                }
            }
        }
    }
    for (i, rec) in q.parts.iter().enumerate() {
        let w = rec.state.load(Acquire);
        if part_role(w).is_none() && w & 0xFFFF != 0 {
            out.push(format!(
                "participant record {i}: word {w:#x} is neither free nor taken"
            ));
        }
    }
    out
}

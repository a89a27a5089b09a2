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
}

/// A snapshot of one participant record.
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
    for (i, rec) in q.parts.iter().enumerate() {
        let w = rec.state.load(Acquire);
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

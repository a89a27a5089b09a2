//! The shared-memory layout of a queue's header mapping, and the packing of every shared
//! word.
//!
//! One queue is one header object (`/dev/shm/shmq.<name>`) plus one payload object per
//! payload slot that ever carried a message too big to live inline
//! (`/dev/shm/shmq.<name>.<slot>`, see `segment.rs`). The header is:
//!
//! ```text
//! offset 0      Control           identity, options, then head / tail / futex words /
//!                                 waiter bitmaps / counters, each group on its own
//!                                 128-byte line
//! parts_off     [PartRec; P]      one 128-byte record per participant (handle)
//! cells_off     [AtomicU64; cap]  the ring: one word per cell (see ring.rs)
//! slots_off     [SlotRec; S]      one 256-byte record per payload slot
//! ```
//!
//! Every field is fixed-width (`u32`/`u64` or their atomics), so a 32-bit and a 64-bit
//! process agree; `const` asserts below pin every size and offset. `init` is written
//! last, with `Release`, after every other field: an opener that reads `INIT_READY` with
//! `Acquire` sees a complete header (SYNC POINT: header-init).
//!
//! # Word packing and widths
//!
//! | word | bits (high → low) | wraps after |
//! |---|---|---|
//! | ring cell | `lap:41 \| FULL:1 \| slot:22` | 2^40 laps of one cell |
//! | slot state | `gen:44 \| state:4 \| owner:16` | 2^44 reuses of one slot |
//! | participant state | `gen:32 \| status:8 \| role:8` (low 48 bits) | 2^32 registrations |
//! | sender stamp (slot `sender`) | `part gen:32 \| index:16` | 2^32 registrations of a record |
//!
//! Laps are compared modulo 2^41 as signed differences, so a thread would have to stall
//! between two of its own steps while one cell is reused 2^40 times (at 10^8 messages/s
//! through a capacity-1 queue: three hours) to be fooled; and even then its stale CAS must
//! also match the whole word, slot index included. A slot generation is compared whole;
//! wrapping it needs 2^44 messages through one slot during one stall (two days at 10^8/s).
//!
//! Nothing read from shared memory is trusted: every slot index, participant index and
//! length is bounds-checked before use (`open()` validates the identity line and the
//! table geometry; the algorithms check every index they read from a word).

use crate::sync::{AtomicU32, AtomicU64, UnsafeCell};

/// `"SHMQueue"` in little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"SHMQueue");
/// Bumped on any change to this file's layout or word packing (2: `max_deliveries`,
/// `dead_letters`, the slot's storage `kind` and delivery count, the ORPHAN word's count;
/// 3: the `orphans` hint's version, `PartRec::id_check`).
pub const LAYOUT_VERSION: u32 = 3;
/// The value of `Control::init` once the header is complete.
pub const INIT_READY: u32 = 0x5944_4552; // "REDY"

/// Bytes of payload carried inline in a slot record (no segment object needed).
pub const INLINE_BYTES: usize = 192;
/// Largest capacity (ring cells).
pub const MAX_CAPACITY: u32 = 1 << 20;
/// Largest number of payload slots (the slot field of a cell word is 22 bits).
pub const MAX_SLOTS: u32 = (1 << 22) - 1;
/// Largest number of participant records (the owner field of a slot word is 16 bits;
/// the waiter bitmaps hold 1024 bits).
pub const MAX_PARTICIPANTS: u32 = 1024;
/// `u64` words in each waiter bitmap.
pub const BITMAP_WORDS: usize = (MAX_PARTICIPANTS as usize) / 64;

/// `SlotRec::kind`: the payload is in the slot record's inline bytes.
pub const KIND_INLINE: u64 = 0;
/// `SlotRec::kind`: the payload is at offset 0 of the slot's segment object.
pub const KIND_SEGMENT: u64 = 1;
/// Largest `max_deliveries` (the count rides in the 16-bit owner field of an ORPHAN word).
pub const MAX_DELIVERIES: u32 = 0xFFFE;
/// The default `max_deliveries`.
pub const DEFAULT_MAX_DELIVERIES: u32 = 10;

/// `Control::flags` bit: at-most-once delivery (held messages of a dead consumer are
/// dropped instead of redelivered).
pub const FLAG_AT_MOST_ONCE: u32 = 1;

/// A value on its own 128-byte line (two 64-byte lines: the adjacent-line prefetcher pairs
/// them, so 64 is not enough to stop false sharing on x86).
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct Line<T>(pub T);

impl<T> std::ops::Deref for Line<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The fixed part of the header.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Control {
    // ---- identity and options: written once, before `init` ----
    /// [`MAGIC`].
    pub magic: u64,
    /// [`LAYOUT_VERSION`].
    pub layout_version: u32,
    /// 0 while the creator builds the header; [`INIT_READY`] once it is complete.
    pub init: AtomicU32,
    /// Ring cells = exact capacity.
    pub capacity: u32,
    /// Payload slots.
    pub slot_count: u32,
    /// Participant records.
    pub max_participants: u32,
    /// [`INLINE_BYTES`] at creation.
    pub inline_bytes: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Deliveries a message may have: one whose consumer dies (or hands it back) holding
    /// it for the `max_deliveries`-th time is set aside instead of redelivered
    /// (1..=[`MAX_DELIVERIES`]).
    pub max_deliveries: u32,
    /// Largest message in bytes.
    pub max_message_size: u64,
    /// Bound on the bytes of all payload segments together.
    pub max_payload_bytes: u64,
    /// Bytes of the header mapping.
    pub total_size: u64,
    /// Offset of the participant table.
    pub parts_off: u64,
    /// Offset of the ring.
    pub cells_off: u64,
    /// Offset of the slot table.
    pub slots_off: u64,
    /// The slot with a payload segment freed most recently (a hint): producers of
    /// segment-sized payloads try it first, so a steady stream reuses a few warm slots
    /// (their segments mapped and faulted in everywhere) instead of rotating through the
    /// whole table. Inline payloads neither write nor read it (it would cross between
    /// cores twice per small message). It lives on the identity line, which nothing reads
    /// after `open()`, so its writes disturb no other hot word.
    pub free_hint: AtomicU64,
    /// Reserved, zero.
    pub reserved1: [u64; 4],

    // ---- hot words, each on its own line ----
    /// Hint: every position below it has been committed. Anyone may advance it.
    pub tail: Line<AtomicU64>,
    /// Hint: every position below it has been claimed or removed. Anyone may advance it.
    pub head: Line<AtomicU64>,
    /// Futex word bumped when a message becomes available (or a peer leaves).
    pub not_empty: Line<AtomicU32>,
    /// Futex word bumped when ring space or a slot becomes free (or a peer leaves).
    pub not_full: Line<AtomicU32>,
    /// One bit per participant asleep (or about to sleep) on `not_empty`.
    pub not_empty_waiters: Line<[AtomicU64; BITMAP_WORDS]>,
    /// One bit per participant asleep (or about to sleep) on `not_full`.
    pub not_full_waiters: Line<[AtomicU64; BITMAP_WORDS]>,
    /// Slow-changing words: see [`Counters`].
    pub counters: Line<Counters>,
}

/// Words that change rarely.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Counters {
    /// Bumped after every registration and every release of a participant record.
    pub roster_epoch: AtomicU64,
    /// Upper-bound hint of the number of ORPHAN slots (receivers scan while non-zero):
    /// the count in the low 32 bits ([`hint_count`]), and in the high 32 bits a version
    /// that every raise ([`HINT_RAISE`]) and every reset bumps, so that a receiver's reset
    /// of a stale hint fails if anything was orphaned since it read the hint, and a
    /// claimer's decrement does not outlive a reset (see `slots::claim_orphan`).
    pub orphans: AtomicU64,
    /// The recovery lease: 0 = free, else a participant's [`lease_word`].
    pub lease: AtomicU64,
    /// Participants recovered so far.
    pub recoveries: AtomicU64,
    /// Messages a dead consumer held that were made ORPHAN for redelivery.
    pub orphaned: AtomicU64,
    /// Messages a dead consumer held that were dropped (at-most-once).
    pub dropped: AtomicU64,
    /// Unsent loans of dead producers that were freed.
    pub discarded: AtomicU64,
    /// Messages set aside (discarded) after `max_deliveries` deliveries.
    pub dead_letters: AtomicU64,
    /// Reserved, zero.
    pub reserved: [AtomicU64; 8],
}

/// One participant (a `Sender`, a `Receiver`, or a process's monitor for a queue).
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct PartRec {
    /// [`part_word`]: generation, status, role.
    pub state: AtomicU64,
    /// The owner's pid (in the pid namespace `pid_ns`).
    pub pid: AtomicU32,
    /// Futex word bumped after each ack of this sender's messages.
    pub ack_seq: AtomicU32,
    /// The owner's start time, field 22 of `/proc/<pid>/stat` (clock ticks since boot).
    pub start_time: AtomicU64,
    /// Inode of the owner's pid namespace (`/proc/self/ns/pid`), 0 if unknown.
    pub pid_ns: AtomicU64,
    /// Non-zero while the owner sleeps (or is about to) in `wait_for_acks`.
    pub ack_waiting: AtomicU64,
    /// [`id_check`] of `pid`, `start_time`, `pid_ns` and the record's generation, written
    /// with them: a liveness check that finds it wrong (the identity scribbled over, or
    /// torn) does not judge by the pid.
    pub id_check: AtomicU64,
    /// Reserved, zero.
    pub reserved0: [AtomicU64; 2],
    // ---- second 64-byte line: written by the owner on every send, read by nobody
    // on the hot path (kept apart from `ack_waiting`, which every ack reads) ----
    /// Messages this sender committed (written by the owner only; a statistic).
    pub sent: AtomicU64,
    /// Reserved, zero.
    pub reserved1: [AtomicU64; 7],
}

/// One payload slot.
#[repr(C, align(256))]
#[derive(Debug)]
pub struct SlotRec {
    /// [`slot_word`]: generation, state, owner.
    pub word: AtomicU64,
    /// The ring position this slot is being or was published at, or [`POS_NONE`].
    pub pos: AtomicU64,
    /// Payload length (owner-written, published by the ring commit).
    pub len: AtomicU64,
    /// The sender's [`sender_word`], for acknowledgements (owner-written).
    pub sender: AtomicU64,
    /// Bytes of this slot's segment object as last sized by an owner (a hint: the file's
    /// own size is checked before any access).
    pub seg_size: AtomicU64,
    /// Bumped whenever the segment object is recreated or resized.
    pub epoch: AtomicU64,
    /// Where the payload lives: [`KIND_INLINE`] or [`KIND_SEGMENT`] (owner-written with
    /// `len`, published by the ring commit). Never derived from `len`, which
    /// `Loan::truncate` may lower below the inline limit after the storage was chosen.
    pub kind: AtomicU64,
    /// How many times the message in this slot has been delivered, counting the
    /// delivery of its current holder (written by the producer as 1 before the commit,
    /// and by each consumer that claims it from ORPHAN; owner-only while HELD).
    pub deliveries: AtomicU64,
    /// Inline payload bytes (64-byte aligned within the mapping).
    pub inline: UnsafeCell<[u8; INLINE_BYTES]>,
}

impl Default for SlotRec {
    fn default() -> Self {
        SlotRec {
            word: AtomicU64::new(slot_word(0, SlotState::Free, OWNER_NONE)),
            pos: AtomicU64::new(POS_NONE),
            len: AtomicU64::new(0),
            sender: AtomicU64::new(0),
            seg_size: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            kind: AtomicU64::new(KIND_INLINE),
            deliveries: AtomicU64::new(0),
            inline: UnsafeCell::new([0; INLINE_BYTES]),
        }
    }
}

// SAFETY: every field is an atomic except `inline`, whose accesses are serialised by the
// slot protocol (only the slot's current owner touches it; ownership moves by CAS).
unsafe impl Sync for SlotRec {}

#[cfg(not(shmq_loom))]
mod asserts {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};
    const _: () = assert!(offset_of!(Control, init) == 12);
    const _: () = assert!(offset_of!(Control, max_message_size) == 40);
    const _: () = assert!(offset_of!(Control, tail) == 128);
    const _: () = assert!(offset_of!(Control, head) == 256);
    const _: () = assert!(offset_of!(Control, not_empty) == 384);
    const _: () = assert!(offset_of!(Control, not_full) == 512);
    const _: () = assert!(offset_of!(Control, not_empty_waiters) == 640);
    const _: () = assert!(offset_of!(Control, not_full_waiters) == 768);
    const _: () = assert!(offset_of!(Control, counters) == 896);
    const _: () = assert!(size_of::<Control>() == 1024);
    const _: () = assert!(size_of::<Counters>() == 128);
    const _: () = assert!(size_of::<PartRec>() == 128);
    const _: () = assert!(offset_of!(PartRec, ack_waiting) == 32);
    const _: () = assert!(offset_of!(PartRec, sent) == 64);
    const _: () = assert!(size_of::<SlotRec>() == 256 && align_of::<SlotRec>() == 256);
    const _: () = assert!(offset_of!(SlotRec, inline) == 64);
    const _: () = assert!(size_of::<AtomicU64>() == 8 && align_of::<AtomicU64>() == 8);
}

// ---------------------------------------------------------------------------------------
// Geometry

/// Where the tables sit in a header of the given dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Ring cells.
    pub capacity: u32,
    /// Payload slots.
    pub slot_count: u32,
    /// Participant records.
    pub max_participants: u32,
    /// Offset of the participant table.
    pub parts_off: u64,
    /// Offset of the ring.
    pub cells_off: u64,
    /// Offset of the slot table.
    pub slots_off: u64,
    /// Bytes of the whole header, page-aligned.
    pub total_size: u64,
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

impl Geometry {
    /// The layout for these dimensions (assumed within the `MAX_*` bounds).
    pub fn new(capacity: u32, slot_count: u32, max_participants: u32) -> Geometry {
        let parts_off = 1024u64;
        let cells_off = parts_off + 128 * max_participants as u64;
        let slots_off = round_up(cells_off + 8 * capacity as u64, 256);
        let total_size = round_up(slots_off + 256 * slot_count as u64, 4096);
        Geometry {
            capacity,
            slot_count,
            max_participants,
            parts_off,
            cells_off,
            slots_off,
            total_size,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Ring cell words: lap:41 | FULL:1 | slot:22

const SLOT_BITS: u32 = 22;
const FULL_BIT: u64 = 1 << SLOT_BITS;
const LAP_SHIFT: u32 = SLOT_BITS + 1;
/// Laps are kept modulo 2^41.
pub const LAP_MASK: u64 = (1 << (64 - LAP_SHIFT)) - 1;

/// `E(lap)`: an empty cell waiting for a producer of lap `lap`.
#[inline]
pub fn cell_empty(lap: u64) -> u64 {
    (lap & LAP_MASK) << LAP_SHIFT
}
/// `F(lap, slot)`: a cell holding payload slot `slot`, committed at lap `lap`.
#[inline]
pub fn cell_full(lap: u64, slot: u32) -> u64 {
    ((lap & LAP_MASK) << LAP_SHIFT) | FULL_BIT | slot as u64
}
/// The lap stamped in a cell word (modulo 2^41).
#[inline]
pub fn cell_lap(x: u64) -> u64 {
    x >> LAP_SHIFT
}
/// Whether a cell word is `F(..)`.
#[inline]
pub fn cell_is_full(x: u64) -> bool {
    x & FULL_BIT != 0
}
/// The slot index of an `F(..)` word (not yet bounds-checked).
#[inline]
pub fn cell_slot(x: u64) -> u32 {
    (x & (FULL_BIT - 1)) as u32
}
/// `a - b` for laps modulo 2^41, as a signed number.
#[inline]
pub fn lap_diff(a: u64, b: u64) -> i64 {
    let d = a.wrapping_sub(b) & LAP_MASK;
    // Sign-extend the 41-bit difference.
    ((d << LAP_SHIFT) as i64) >> LAP_SHIFT
}

// ---------------------------------------------------------------------------------------
// Slot words: gen:44 | state:4 | owner:16

/// The state of a payload slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SlotState {
    /// Nobody owns it.
    Free = 0,
    /// A producer owns it: writing, or published and not yet claimed.
    Loaned = 1,
    /// A consumer claimed it and has not acked yet.
    Held = 2,
    /// Its consumer died; waiting for redelivery.
    Orphan = 3,
}

/// The owner field of a FREE or ORPHAN slot.
pub const OWNER_NONE: u16 = u16::MAX;
/// `pos` of a slot that is not being published.
pub const POS_NONE: u64 = u64::MAX;
const GEN_MASK: u64 = (1 << 44) - 1;

/// Packs a slot word.
#[inline]
pub fn slot_word(gen: u64, state: SlotState, owner: u16) -> u64 {
    ((gen & GEN_MASK) << 20) | ((state as u64) << 16) | owner as u64
}
/// The generation of a slot word.
#[inline]
pub fn slot_gen(w: u64) -> u64 {
    w >> 20
}
/// The state of a slot word; `None` for a value no version of shmq writes (corruption).
#[inline]
pub fn slot_state(w: u64) -> Option<SlotState> {
    match (w >> 16) & 0xF {
        0 => Some(SlotState::Free),
        1 => Some(SlotState::Loaned),
        2 => Some(SlotState::Held),
        3 => Some(SlotState::Orphan),
        _ => None,
    }
}
/// The owner (participant index) of a slot word.
#[inline]
pub fn slot_owner(w: u64) -> u16 {
    w as u16
}
/// The check word of a participant's identity (`PartRec::id_check`): a mix of its fields
/// and the record generation `gen` (so a stale identity of an earlier owner never checks).
pub fn id_check(pid: u32, start_time: u64, pid_ns: u64, gen: u32) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64 ^ (u64::from(pid) << 32 | u64::from(gen));
    for v in [start_time, pid_ns] {
        h = (h ^ v).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 31;
    }
    h
}

/// What a raise of the `orphans` hint adds: one to the count, one to the version.
pub const HINT_RAISE: u64 = 1 | 1 << 32;

/// The count of an `orphans` hint word.
#[inline]
pub fn hint_count(h: u64) -> u64 {
    h & 0xFFFF_FFFF
}

/// `ORPHAN(gen, n)`: a message of generation `gen` delivered `n` times, waiting for
/// redelivery. The count rides in the owner field (an ORPHAN slot has no owner), so the
/// hand-back and the count are one CAS.
#[inline]
pub fn slot_orphan(gen: u64, n: u64) -> u64 {
    slot_word(gen, SlotState::Orphan, n.min(MAX_DELIVERIES as u64) as u16)
}
/// The delivery count of an `ORPHAN` word.
#[inline]
pub fn orphan_count(w: u64) -> u64 {
    slot_owner(w) as u64
}
/// The FREE word that follows `w` (next generation).
#[inline]
pub fn slot_freed(w: u64) -> u64 {
    slot_word(slot_gen(w).wrapping_add(1), SlotState::Free, OWNER_NONE)
}

// ---------------------------------------------------------------------------------------
// Participant words: gen:32 | status:8 | role:8

/// What a participant record stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// A `Sender` handle.
    Sender = 1,
    /// A `Receiver` handle.
    Receiver = 2,
    /// A process's supervisor for this queue (holds the recovery lease).
    Monitor = 3,
}

const STATUS_ACTIVE: u64 = 1;

/// A FREE participant word of generation `gen`.
#[inline]
pub fn part_free(gen: u32) -> u64 {
    (gen as u64) << 16
}
/// An ACTIVE participant word.
#[inline]
pub fn part_active(gen: u32, role: Role) -> u64 {
    ((gen as u64) << 16) | (STATUS_ACTIVE << 8) | role as u64
}
/// The generation of a participant word.
#[inline]
pub fn part_gen(w: u64) -> u32 {
    (w >> 16) as u32
}
/// The role of an ACTIVE participant word (`None` if FREE or corrupt).
#[inline]
pub fn part_role(w: u64) -> Option<Role> {
    if (w >> 8) & 0xFF != STATUS_ACTIVE {
        return None;
    }
    match w & 0xFF {
        1 => Some(Role::Sender),
        2 => Some(Role::Receiver),
        3 => Some(Role::Monitor),
        _ => None,
    }
}

/// The lease word naming participant `idx` of generation `gen` (never 0).
#[inline]
pub fn lease_word(idx: u16, gen: u32) -> u64 {
    ((gen as u64) << 16) | (idx as u64 + 1)
}
/// The participant index a non-zero lease word names.
#[inline]
pub fn lease_idx(w: u64) -> u16 {
    ((w & 0xFFFF) as u16).wrapping_sub(1)
}

/// A sender's identity as stamped in the slots it publishes: index and record generation.
#[inline]
pub fn sender_word(idx: u16, gen: u32) -> u64 {
    ((gen as u64) << 16) | idx as u64
}
/// The participant index of a sender stamp.
#[inline]
pub fn sender_idx(w: u64) -> u16 {
    w as u16
}

// ---------------------------------------------------------------------------------------
// The view the algorithms work on

/// Borrowed views of one queue's shared tables, plus the dimensions validated at open
/// (kept here, never re-read from shared memory). The pure algorithms (`ring`, `slots`,
/// `recovery`) take this; it points into the mapping in production and into heap
/// allocations under loom.
#[derive(Clone, Copy)]
pub struct Shared<'a> {
    /// The control block.
    pub ctl: &'a Control,
    /// Participant records.
    pub parts: &'a [PartRec],
    /// Ring cells.
    pub cells: &'a [AtomicU64],
    /// Slot records.
    pub slots: &'a [SlotRec],
    /// `cells.len()` as u64.
    pub cap: u64,
    /// Whether held messages of dead consumers are dropped rather than redelivered.
    pub at_most_once: bool,
    /// Deliveries a message may have before it is set aside (≥ 1).
    pub max_deliveries: u64,
}

impl Shared<'_> {
    /// `l(x)`: the lap of position `x`.
    #[inline]
    pub fn lap(&self, x: u64) -> u64 {
        x / self.cap
    }
    /// `i(x)`: the cell index of position `x`.
    #[inline]
    pub fn idx(&self, x: u64) -> usize {
        (x % self.cap) as usize
    }
}

/// A queue's tables on the heap: what the loom models and unit tests run on.
pub struct HeapQueue {
    ctl: Box<Control>,
    parts: Vec<PartRec>,
    cells: Vec<AtomicU64>,
    slots: Vec<SlotRec>,
    at_most_once: bool,
    max_deliveries: u64,
}

impl HeapQueue {
    /// Tables for a queue of this capacity, slot count and participant count, initialised
    /// as `create()` initialises a mapping.
    pub fn new(capacity: u32, slot_count: u32, max_participants: u32, at_most_once: bool) -> Self {
        assert!(capacity >= 1 && slot_count >= 1 && max_participants >= 1);
        let ctl = Box::<Control>::default();
        let g = Geometry::new(capacity, slot_count, max_participants);
        let mut q = HeapQueue {
            ctl,
            parts: (0..max_participants).map(|_| PartRec::default()).collect(),
            cells: (0..capacity)
                .map(|i| AtomicU64::new(init_cell(i)))
                .collect(),
            slots: (0..slot_count).map(|_| SlotRec::default()).collect(),
            at_most_once,
            max_deliveries: DEFAULT_MAX_DELIVERIES as u64,
        };
        let c = &mut *q.ctl;
        c.magic = MAGIC;
        c.layout_version = LAYOUT_VERSION;
        c.capacity = g.capacity;
        c.slot_count = g.slot_count;
        c.max_participants = g.max_participants;
        c.inline_bytes = INLINE_BYTES as u32;
        c.flags = if at_most_once { FLAG_AT_MOST_ONCE } else { 0 };
        c.max_deliveries = DEFAULT_MAX_DELIVERIES;
        c.total_size = g.total_size;
        c.parts_off = g.parts_off;
        c.cells_off = g.cells_off;
        c.slots_off = g.slots_off;
        q
    }

    /// The same tables with another delivery limit (1..=[`MAX_DELIVERIES`]).
    pub fn with_max_deliveries(mut self, n: u32) -> Self {
        assert!((1..=MAX_DELIVERIES).contains(&n));
        self.max_deliveries = n as u64;
        self.ctl.max_deliveries = n;
        self
    }

    /// The view the algorithms take.
    pub fn shared(&self) -> Shared<'_> {
        Shared {
            ctl: &self.ctl,
            parts: &self.parts,
            cells: &self.cells,
            slots: &self.slots,
            cap: self.cells.len() as u64,
            at_most_once: self.at_most_once,
            max_deliveries: self.max_deliveries,
        }
    }
}

/// The initial word of cell `i`: `E(0)` (every cell waits for lap 0).
#[inline]
pub fn init_cell(_i: u32) -> u64 {
    cell_empty(0)
}

#[cfg(all(test, not(shmq_loom)))]
mod tests {
    use super::*;

    #[test]
    fn lap_diff_is_signed_modulo_2_pow_41() {
        assert_eq!(lap_diff(5, 3), 2);
        assert_eq!(lap_diff(3, 5), -2);
        assert_eq!(lap_diff(0, LAP_MASK), 1);
        assert_eq!(lap_diff(LAP_MASK, 0), -1);
    }

    #[test]
    fn cell_words_round_trip() {
        let x = cell_full(LAP_MASK + 7, 12345);
        assert!(cell_is_full(x));
        assert_eq!(cell_lap(x), 6); // (2^41 - 1 + 7) mod 2^41
        assert_eq!(cell_slot(x), 12345);
        assert!(!cell_is_full(cell_empty(9)));
        assert_eq!(cell_lap(cell_empty(9)), 9);
    }

    #[test]
    fn slot_words_round_trip() {
        let w = slot_word(99, SlotState::Held, 7);
        assert_eq!(slot_gen(w), 99);
        assert_eq!(slot_state(w), Some(SlotState::Held));
        assert_eq!(slot_owner(w), 7);
        let f = slot_freed(w);
        assert_eq!(slot_gen(f), 100);
        assert_eq!(slot_state(f), Some(SlotState::Free));
        assert_eq!(slot_state(0xF << 16), None);
        let o = slot_orphan(99, 3);
        assert_eq!(slot_state(o), Some(SlotState::Orphan));
        assert_eq!((slot_gen(o), orphan_count(o)), (99, 3));
        assert_eq!(
            orphan_count(slot_orphan(1, u64::MAX)),
            MAX_DELIVERIES as u64
        );
    }

    #[test]
    fn geometry_is_aligned() {
        let g = Geometry::new(5, 17, 3);
        assert_eq!(g.slots_off % 256, 0);
        assert_eq!(g.total_size % 4096, 0);
        assert!(g.total_size >= g.slots_off + 17 * 256);
    }
}

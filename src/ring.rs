//! The ring: a bounded MPMC queue of payload-slot indices, one `u64` word per cell, that
//! stays consistent whatever instruction a participant is killed at.
//!
//! It descends from [Vyukov's bounded MPMC queue][vyukov] (as in crossbeam's
//! `ArrayQueue`): positions `x = 0, 1, 2, …` map to cell `i(x) = x % cap` and lap
//! `l(x) = x / cap`, and a cell's stamp says which lap may use it next. Textbook Vyukov
//! claims a position with a CAS on `tail`, writes the value, then publishes it with a store
//! to the cell's stamp: a producer killed between the two leaves a claimed cell that nobody
//! will ever publish, and the queue stops there. Here the stamp and the value are **one
//! word** (`lap | FULL | slot`), so claiming and publishing a position is one CAS, and
//! `head`/`tail` are mere hints that anyone may advance. The consumer side claims the
//! *slot* (one CAS on the slot's own word, see `slots.rs`) and anyone may then clear the
//! cell. See DESIGN.md §3; the loom models in `loom-tests/` check every step below with a
//! crash injected before it.
//!
//! [vyukov]: https://www.1024cores.net/home/lock-free-algorithms/queues/bounded-mpmc-queue
//!
//! # Words
//!
//! * cell: `E(l)` empty, waiting for the producer of lap `l`; `F(l, s)` holds payload slot
//!   `s` committed at lap `l` (see `layout.rs` for the bits).
//! * slot word: `gen | state | owner`, `state` ∈ FREE, LOANED, HELD, ORPHAN; slot `pos`: the
//!   position the slot is being or was published at, or NONE.
//!
//! # Send (producer P, slot `s` already `LOANED(g, P)` and its payload written)
//!
//! ```text
//! loop:
//!   t = tail; x = cell[i(t)]                                   { lap: l(t), index: i(t) }
//!   if x == E(l(t)):
//!       pos[s] = t                                             (S4)
//!       if CAS cell[i(t)]: x -> F(l(t), s):                    (S5: the commit)
//!           CAS tail: t -> t+1                                 (S6)
//!           return Ok(t)
//!       continue
//!   if lap(x) >= l(t): CAS tail: t -> t+1; continue            (tail lags: help)
//!   if x == F(l(t)-1, s2):                                     (previous lap still there)
//!       if word[s2] is LOANED and pos[s2] == t - cap: return Full
//!       else (s2 was claimed already, or the cell is stale):
//!           CAS cell: x -> E(l(t)); CAS head: t-cap -> t-cap+1; continue   (help)
//!   else: corrupt
//! ```
//!
//! Killed after… | leaves | repaired by
//! ---|---|---
//! S4 (`pos` set, no commit) | slot LOANED by the dead, `pos` names a cell that does not hold it | recovery frees the slot (the send never returned `Ok`)
//! S5 (commit) | the cell holds the slot, LOANED by the dead | nothing: the message is delivered; consumers claim it as usual
//! S6 | `tail` lags | the next producer helps `tail` forward
//! a help step | a cell cleared or a hint advanced (each is one CAS, complete or not done) | nothing
//!
//! # Receive (consumer C)
//!
//! ```text
//! loop:
//!   h = head; x = cell[i(h)]                                   { lap: l(h), index: i(h) }
//!   if x == E(l(h)): return Empty
//!   if lap(x) > l(h): CAS head: h -> h+1; continue             (head lags: help)
//!   if x != F(l(h), s) or s out of bounds: corrupt
//!   w = word[s]; p = pos[s]                                    (R2: word FIRST, then pos)
//!   if w is LOANED and p == h:
//!       if CAS word[s]: w -> HELD(gen(w), C):                  (R3: the claim)
//!           CAS cell: x -> E(l(h)+1)                           (R4)
//!           CAS head: h -> h+1                                 (R5)
//!           return s
//!       continue
//!   else (claimed by someone else, or stale):
//!       CAS cell: x -> E(l(h)+1); CAS head: h -> h+1; continue (help)
//! ```
//!
//! Killed after… | leaves | repaired by
//! ---|---|---
//! R2 (read only) | nothing | nothing
//! R3 (claim) | slot HELD by the dead; the cell still `F` | any consumer or producer finds the cell stale and clears it (helping); recovery turns the slot ORPHAN (redelivered) or frees it (at-most-once)
//! R4 | slot HELD by the dead, cell cleared, `head` lags | helpers advance `head`; recovery as after R3
//! R5 | as R4 with `head` advanced | recovery as after R3
//!
//! Why each rule (every one has a loom negative control):
//! * **the `pos` check in R2**: a consumer that read `F(l, s)` and stalled may see `s`
//!   already acked and loaned again to a producer that is writing it; the slot word alone
//!   (LOANED) cannot tell the two apart, `pos` can: a slot is only published at a position
//!   whose cell was `E` when its producer looked, which a position already used never is.
//! * **word before `pos`**: the ack resets `pos` *before* freeing the word, so a reader
//!   that sees `LOANED(g)` and then `pos == h` knows both belong to the publication of
//!   generation `g`; read in the other order, `pos` can be the old publication's and the
//!   word the new loan's.
//! * **helping**: a consumer killed after R3 never clears its cell; without the others
//!   clearing stale cells, `head` would stay behind it forever.
//!
//! # Exact capacity
//!
//! The ring has exactly `capacity` cells and a position is only reused once the message
//! committed there has been claimed, so `capacity` messages fit and the next `try_send`
//! sees `F(l(t)-1, s2)` with `s2` unclaimed: `Full`. Consumers claim positions in order
//! (nobody can get past `head` without claiming or clearing its cell), so an unclaimed
//! message at `t - cap` means all of `t-cap .. t` are in the ring.
//!
//! # Orderings
//!
//! CAS is `AcqRel`, loads `Acquire`. SYNC POINT: cell-commit — the producer's commit CAS
//! (Release) pairs with the consumer's cell load (Acquire), which makes the payload and
//! `len`/`sender` visible. SYNC POINT: slot-claim — see `slots.rs`.

use crate::layout::{
    cell_empty, cell_full, cell_is_full, cell_lap, cell_slot, lap_diff, slot_gen, slot_state,
    slot_word, Shared, SlotState,
};
use crate::sync::mutation::{self, Mutation};
use crate::sync::Ordering::{AcqRel, Acquire, Relaxed, Release};

/// How many laps a cell may be ahead of the `head`/`tail` hint that points at it. A hint
/// lags the truth only by the few advances that stalled or killed participants skipped
/// (each helper moves it on by one), never by a whole lap of the ring, so a cell is at
/// most one lap ahead of a current hint (two, with slack). More means the hint or the
/// cell is garbage, and following it one position at a time would take ~2^40 steps:
/// report corruption instead. (A thread whose *copy* of the hint is stale sees the hint
/// itself move on and simply retries.)
const MAX_LAG_LAPS: i64 = 2;

/// Why a ring operation could not go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// `capacity` unclaimed messages are in the ring.
    Full,
    /// No committed, unclaimed message is in the ring.
    Empty,
    /// A word held a value no correct participant writes (foreign or corrupted mapping).
    Corrupt,
}

/// Publishes slot `s` (which the caller holds `LOANED`, payload written): S3–S6 above.
/// Returns the position it was committed at.
///
/// # Errors
/// [`RingError::Full`] when the ring holds `capacity` unclaimed messages (the slot stays
/// loaned to the caller); [`RingError::Corrupt`] on an impossible word.
pub fn publish(q: &Shared<'_>, s: u32) -> Result<u64, RingError> {
    let rec = &q.slots[s as usize];
    loop {
        let t = q.ctl.tail.load(Acquire);
        let lt = q.lap(t);
        let cell = &q.cells[q.idx(t)];
        // SYNC POINT: cell-commit / cell-clear (Acquire: pairs with the CAS that wrote x).
        let x = cell.load(Acquire);
        if x == cell_empty(lt) {
            // S4: record where we publish, before the commit makes the slot visible.
            rec.pos.store_cas_safe(t, Release);
            crate::fault::point("send.pos");
            // S5: the commit.                                   { lap: l(t), index: i(t) }
            // SYNC POINT: cell-commit (Release: payload, len, sender, pos).
            if cell
                .compare_exchange(x, cell_full(lt, s), AcqRel, Acquire)
                .is_ok()
            {
                crate::fault::point("send.commit");
                // S6: advance the hint; failure means someone helped.
                let _ = q
                    .ctl
                    .tail
                    .compare_exchange(t, t.wrapping_add(1), AcqRel, Relaxed);
                return Ok(t);
            }
            continue;
        }
        let d = lap_diff(cell_lap(x), lt);
        if d > MAX_LAG_LAPS && q.ctl.tail.load(Acquire) == t {
            // The hint cannot lag this far behind a cell (see MAX_LAG_LAPS).
            return Err(RingError::Corrupt);
        }
        if d >= 0 {
            // Position t is already committed: the hint lags; help it.
            let _ = q
                .ctl
                .tail
                .compare_exchange(t, t.wrapping_add(1), AcqRel, Relaxed);
            continue;
        }
        if d == -1 && cell_is_full(x) {
            // The message of lap l(t)-1 is still in the cell.   { lap: l(t)-1, index: i(t) }
            let prev = t.wrapping_sub(q.cap);
            match is_live(q, x, prev)? {
                true => return Err(RingError::Full),
                false if mutation::on(Mutation::NoHelping) => return Err(RingError::Full),
                false => {
                    help_remove(q, prev, x);
                    continue;
                }
            }
        }
        if q.ctl.tail.load(Acquire) != t {
            continue; // our t was stale; look again
        }
        return Err(RingError::Corrupt);
    }
}

/// Whether a producer at `tail` would find the ring full right now (a racy pre-check
/// that spares copying a payload that cannot be sent; `publish` decides).
pub fn looks_full(q: &Shared<'_>) -> bool {
    let t = q.ctl.tail.load(Acquire);
    let x = q.cells[q.idx(t)].load(Acquire);
    cell_is_full(x)
        && lap_diff(cell_lap(x), q.lap(t)) == -1
        && is_live(q, x, t.wrapping_sub(q.cap)) == Ok(true)
}

/// A message claimed from the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    /// The slot.
    pub slot: u32,
    /// The slot word after the claim: `HELD(gen, me)`.
    pub word: u64,
    /// The position it was committed at.
    pub pos: u64,
}

/// Claims the oldest message for participant `me`: R1–R5 above.
///
/// # Errors
/// [`RingError::Empty`] when no unclaimed message is committed; [`RingError::Corrupt`] on an
/// impossible word.
pub fn claim(q: &Shared<'_>, me: u16) -> Result<Claimed, RingError> {
    loop {
        let h = q.ctl.head.load(Acquire);
        let lh = q.lap(h);
        let cell = &q.cells[q.idx(h)];
        // SYNC POINT: cell-commit (Acquire: the payload of the slot in x is visible).
        let x = cell.load(Acquire); //                           { lap: l(h), index: i(h) }
        if x == cell_empty(lh) {
            return Err(RingError::Empty);
        }
        let d = lap_diff(cell_lap(x), lh);
        if d > MAX_LAG_LAPS && q.ctl.head.load(Acquire) == h {
            return Err(RingError::Corrupt);
        }
        if d > 0 {
            // Position h was consumed already: the hint lags; help it.
            let _ = q
                .ctl
                .head
                .compare_exchange(h, h.wrapping_add(1), AcqRel, Relaxed);
            continue;
        }
        if d < 0 || !cell_is_full(x) {
            if q.ctl.head.load(Acquire) != h {
                continue;
            }
            return Err(RingError::Corrupt);
        }
        let s = cell_slot(x);
        if s as usize >= q.slots.len() {
            return Err(RingError::Corrupt);
        }
        let rec = &q.slots[s as usize];
        // R2: the word first, then pos (see the module doc).
        let (w, p) = if mutation::on(Mutation::PosBeforeWord) {
            let p = rec.pos.load(Acquire);
            (rec.word.load(Acquire), p)
        } else {
            let w = rec.word.load(Acquire);
            (w, rec.pos.load(Acquire))
        };
        if slot_state(w) == Some(SlotState::Loaned)
            && (p == h || mutation::on(Mutation::NoPosCheck))
        {
            // R3: the claim. SYNC POINT: slot-claim.
            let held = slot_word(slot_gen(w), SlotState::Held, me);
            if rec.word.compare_exchange(w, held, AcqRel, Acquire).is_ok() {
                crate::fault::point("recv.claim");
                help_remove(q, h, x); // R4, R5
                return Ok(Claimed {
                    slot: s,
                    word: held,
                    pos: h,
                });
            }
            continue;
        }
        // Claimed by someone else (or stale): help clear the cell and move on.
        if mutation::on(Mutation::NoHelping) {
            return Err(RingError::Empty);
        }
        help_remove(q, h, x);
    }
}

/// Whether slot `s` is committed in the ring at the position its `pos` names.
pub fn is_committed(q: &Shared<'_>, s: u32) -> bool {
    holds(q, q.slots[s as usize].pos.load(Acquire), s)
}

/// Whether the cell of position `p` (a `pos` the caller read) holds slot `s` committed at
/// `p`: `p != NONE` and `cell[i(p)] == F(l(p), s)`. Recovery's V1a test.
pub fn holds(q: &Shared<'_>, p: u64, s: u32) -> bool {
    p != crate::layout::POS_NONE && q.cells[q.idx(p)].load(Acquire) == cell_full(q.lap(p), s)
}

/// Whether the message in cell word `x`, committed at position `at`, is still unclaimed.
fn is_live(q: &Shared<'_>, x: u64, at: u64) -> Result<bool, RingError> {
    let s = cell_slot(x) as usize;
    let rec = q.slots.get(s).ok_or(RingError::Corrupt)?;
    // Word first, then pos (see R2).
    let w = rec.word.load(Acquire);
    let p = rec.pos.load(Acquire);
    Ok(slot_state(w) == Some(SlotState::Loaned) && (p == at || mutation::on(Mutation::NoPosCheck)))
}

/// Clears cell word `x` at position `at` (its message is claimed or stale) and advances
/// `head` past it. Each CAS may fail harmlessly: someone else did it.
fn help_remove(q: &Shared<'_>, at: u64, x: u64) {
    let next = cell_empty(q.lap(at).wrapping_add(1)); //          { lap: l(at)+1, index: i(at) }
    let _ = q.cells[q.idx(at)].compare_exchange(x, next, AcqRel, Relaxed);
    crate::fault::point("recv.cleared");
    let _ = q
        .ctl
        .head
        .compare_exchange(at, at.wrapping_add(1), AcqRel, Relaxed);
}

/// The number of committed, unremoved positions (a racy snapshot: exact only when no
/// one is sending or receiving).
pub fn len(q: &Shared<'_>) -> u64 {
    loop {
        let t = q.ctl.tail.load(Acquire);
        let h = q.ctl.head.load(Acquire);
        if q.ctl.tail.load(Acquire) == t {
            return t.saturating_sub(h).min(q.cap);
        }
    }
}

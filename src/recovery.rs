//! Recovery of a participant proven dead (pure: no syscalls; the caller proves death and
//! holds the lease, see `supervisor.rs`).
//!
//! Recovery **never writes a ring cell**: a cell is only ever changed by the commit CAS of
//! its producer or by a "help remove" CAS that any live participant may do once the
//! cell's message is claimed. Every repair is a CAS from the exact word just read, so a
//! recovery killed halfway is simply run again (by whoever takes the lease over next),
//! and a live participant racing it makes the CAS fail harmlessly.
//!
//! ```text
//! recover(d, its ACTIVE word a):
//!   if state[d] != a: return (recovered already; the index may be someone else's now) (V0)
//!   for each slot s whose word w names owner d:
//!     LOANED(g, d):
//!       p = pos[s]; if word[s] != w: skip (claimed, acked, re-loaned since)
//!       if p != NONE and cell[i(p)] == F(l(p), s): leave it                      (V1a)
//!       else: CAS pos[s]: p -> NONE; CAS w -> FREE(g+1)                            (V1b)
//!     HELD(g, d), at-least-once: CAS w -> ORPHAN(g); orphans += 1               (V2a)
//!     HELD(g, d), at-most-once:  CAS pos[s]: p -> NONE; CAS w -> FREE(g+1)         (V2b)
//!   clear d's bits in both waiter bitmaps; ack_waiting[d] = 0                    (V3)
//!   CAS state[d]: a -> FREE(gen(a)+1); roster_epoch += 1                          (V4)
//!   bump not_empty and not_full (the caller issues the futex wakes)             (V5)
//! ```
//!
//! | crash window (DESIGN §3) | what the dead left | step that repairs it |
//! |---|---|---|
//! | producer killed after alloc / while writing | LOANED(d), `pos` NONE | V1b frees it |
//! | producer killed after S4 (`pos` set), before the commit | LOANED(d), cell at `pos` does not hold it | V1b frees it |
//! | producer killed after the commit | LOANED(d), cell holds it | V1a leaves it: it is delivered |
//! | consumer killed after its claim (R3), before or after clearing the cell | HELD(d); maybe a stale `F` cell | V2a: ORPHAN → redelivered (or V2b: dropped); helpers clear the cell |
//! | consumer killed mid-ack (after K1) | HELD(d), `pos` NONE | V2a/V2b as above |
//! | anyone killed while asleep or about to sleep | its waiter bits set | V3, so nobody pays a wake-up syscall for it forever |
//! | anyone | an ACTIVE record, counted as a live peer | V4 (so `Disconnected` can be seen) |
//! | recovery itself killed after any step | a prefix of the above done | the next lease holder reruns it: each step is a CAS from the word it reads, or a store of a value that is already right |
//!
//! Why V1 reads `pos` and then the word again (a loom crash sweep found the loss without
//! it): between the first read of `w` and the read of `pos`, a live consumer may claim
//! and ack d's committed message and a live producer may loan the slot again and store its
//! own `pos`; resetting *that* `pos` would make every consumer take the new message's cell
//! for stale and clear it. Re-reading the word after `pos` proves `p` is still d's
//! (generations never repeat). The cell can then only change from `F(l(p), s)` after a
//! consumer claims `s`, which changes the word and makes V1b's final CAS fail, so "leave
//! it" and "free it" are each right at the moment the CAS decides.
//!
//! V2a raises the `orphans` hint *after* the slot becomes ORPHAN. In the other order a
//! receiver could read the raised hint, scan before the slot changes, find nothing and
//! reset the hint to 0 (`slots::claim_orphan`), stranding the message. In this order a
//! receiver that reset the hint did so before the raise, or its reset CAS fails. A
//! recovery killed between the two leaves an ORPHAN slot with the hint too low; every
//! repair pass recounts ORPHAN slots and raises the hint to match ([`heal_orphan_hint`]).

use crate::layout::{
    cell_full, part_role, slot_gen, slot_owner, slot_state, slot_word, Shared, SlotState, POS_NONE,
};
use crate::sync::Ordering::{AcqRel, Acquire, Relaxed, Release};

/// What a recovery run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Unsent loans freed (V1b).
    pub discarded: u64,
    /// Committed messages left for delivery (V1a).
    pub kept: u64,
    /// Held messages made ORPHAN for redelivery (V2a).
    pub orphaned: u64,
    /// Held messages dropped (V2b).
    pub dropped: u64,
    /// Whether this run released the record (V4): false if a previous run had.
    pub released: bool,
}

/// Recovers participant `d`, whose record word was `active` when it was proven dead.
/// Also used by a handle leaving cleanly (it recovers itself, which frees whatever it
/// still owned).
///
/// `dead` says whether `d` died (the run counts in the queue's recovery statistics) or is
/// leaving cleanly.
pub fn recover(q: &Shared<'_>, d: u16, active: u64, dead: bool) -> Report {
    let mut r = Report::default();
    // V0: recover only the incarnation that was judged dead (the record may have been
    // recovered and taken by a live participant since).
    if part_role(active).is_none() || q.parts[d as usize].state.load(Acquire) != active {
        return r;
    }
    for (s, rec) in q.slots.iter().enumerate() {
        let w = rec.word.load(Acquire);
        if slot_owner(w) != d {
            continue;
        }
        match slot_state(w) {
            Some(SlotState::Loaned) => {
                // Read pos, then make sure the slot is still the dead one's: a consumer
                // may have claimed and acked d's committed message since we read `w`, and
                // a new producer may own the slot (and its pos) now. Generations never
                // repeat, so an unchanged word means `p` is d's pos.
                let p = rec.pos.load(Acquire);
                if rec.word.load(Acquire) != w {
                    continue;
                }
                let committed = p != POS_NONE
                    && q.cells[q.idx(p)].load(Acquire) == cell_full(q.lap(p), s as u32);
                if committed {
                    r.kept += 1; // V1a
                    continue;
                }
                // V1b: uncommitted and its producer dead, so nobody else can touch it now;
                // pos by CAS from `p` all the same, so a rerun never clobbers a later pos.
                let _ = rec.pos.compare_exchange(p, POS_NONE, AcqRel, Relaxed);
                if rec
                    .word
                    .compare_exchange(w, crate::layout::slot_freed(w), AcqRel, Relaxed)
                    .is_ok()
                {
                    r.discarded += 1;
                }
            }
            Some(SlotState::Held) if !q.at_most_once => {
                // V2a: the slot first, then the hint (see the module doc).
                let orphan = slot_word(slot_gen(w), SlotState::Orphan, crate::layout::OWNER_NONE);
                if rec
                    .word
                    .compare_exchange(w, orphan, AcqRel, Relaxed)
                    .is_ok()
                {
                    q.ctl.counters.orphans.fetch_add(1, AcqRel);
                    r.orphaned += 1;
                }
            }
            Some(SlotState::Held) => {
                let p = rec.pos.load(Acquire); // V2b
                let _ = rec.pos.compare_exchange(p, POS_NONE, AcqRel, Relaxed);
                if rec
                    .word
                    .compare_exchange(w, crate::layout::slot_freed(w), AcqRel, Relaxed)
                    .is_ok()
                {
                    r.dropped += 1;
                }
            }
            _ => continue,
        }
        crate::fault::point("recover.slot");
    }
    // V3.
    let (word, bit) = (d as usize / 64, 1u64 << (d % 64));
    if let Some(b) = q.ctl.not_empty_waiters.get(word) {
        b.fetch_and(!bit, AcqRel);
    }
    if let Some(b) = q.ctl.not_full_waiters.get(word) {
        b.fetch_and(!bit, AcqRel);
    }
    q.parts[d as usize].ack_waiting.store(0, Relaxed);
    // V4.
    r.released = crate::roster::release(q, d, active);
    if dead {
        let c = &q.ctl.counters;
        c.discarded.fetch_add(r.discarded, Relaxed);
        c.orphaned.fetch_add(r.orphaned, Relaxed);
        c.dropped.fetch_add(r.dropped, Relaxed);
        if r.released {
            c.recoveries.fetch_add(1, Relaxed);
        }
    }
    crate::fault::point("recover.release");
    // V5: the caller wakes.
    q.ctl.not_empty.fetch_add(1, Release);
    q.ctl.not_full.fetch_add(1, Release);
    r
}

/// Hands back the messages live participant `d` holds (HELD by `d`): ORPHAN for
/// redelivery, or FREE under at-most-once. For a process on its way out
/// (`shutdown::release_all`): its records stay ACTIVE, and its loans are left for the
/// recovery that follows its death, because a thread of it may still be writing into
/// them. Only `d` itself may call this (nobody else changes `HELD(_, d)` while `d` lives).
///
/// Killed while running it (the process is exiting anyway): each slot is one CAS
/// `HELD(g, d) -> ORPHAN(g)` (then the hint, as V2a) or `-> FREE(g+1)`; the slots not yet
/// handed back are still HELD by `d`, and the recovery that follows `d`'s death does the
/// rest.
pub fn return_held(q: &Shared<'_>, d: u16) -> u64 {
    let mut n = 0;
    for rec in q.slots {
        let w = rec.word.load(Acquire);
        if slot_owner(w) != d || slot_state(w) != Some(SlotState::Held) {
            continue;
        }
        let next = if q.at_most_once {
            let p = rec.pos.load(Acquire);
            let _ = rec.pos.compare_exchange(p, POS_NONE, AcqRel, Relaxed);
            crate::layout::slot_freed(w)
        } else {
            slot_word(slot_gen(w), SlotState::Orphan, crate::layout::OWNER_NONE)
        };
        if rec.word.compare_exchange(w, next, AcqRel, Relaxed).is_ok() {
            if !q.at_most_once {
                q.ctl.counters.orphans.fetch_add(1, AcqRel);
            }
            n += 1;
        }
    }
    q.ctl.not_empty.fetch_add(1, Release);
    q.ctl.not_full.fetch_add(1, Release);
    n
}

/// Raises the `orphans` hint to at least the number of ORPHAN slots (a recovery killed
/// between V2a's two steps leaves it low). Only raises: a hint above the truth heals by
/// itself at the next empty scan.
pub fn heal_orphan_hint(q: &Shared<'_>) {
    let n = crate::slots::census(q)[SlotState::Orphan as usize];
    let h = q.ctl.counters.orphans.load(Acquire);
    if n > h {
        q.ctl.counters.orphans.fetch_add(n - h, AcqRel);
        q.ctl.not_empty.fetch_add(1, Release);
    }
}

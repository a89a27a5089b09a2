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
//!       else: CAS w -> FREE(g+1), pos left (slots::discard_uncommitted)          (V1b)
//!     HELD(g, d): slots::give_up, n = deliveries[s]:
//!       at-least-once, n < max_deliveries: CAS w -> ORPHAN(g, n); orphans += 1  (V2a)
//!       at-most-once:   K1; CAS w -> FREE(g+1)                                   (V2b)
//!       n >= max_deliveries: K1; CAS w -> FREE(g+1); dead_letters += 1           (V2c)
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
//! | consumer killed holding a message for the `max_deliveries`-th time (a poison message that kills every consumer) | HELD(d) | V2c sets it aside: freed and counted, not redelivered |
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
//! **One runner at a time, and safe if two run anyway.** Runners are serialised per queue:
//! across processes by the lease (`roster.rs`), within a process by a process-local lock
//! (`Queue::recovering`, because every runner of one process shares its lease word). Each
//! step is still written to be right if two runners repair the same participant at once
//! (a runner whose lease was stolen because it was wrongly judged dead, a rerun racing a
//! late first run): every `pos` reset of a held message goes through `slots::reset_pos`,
//! which re-reads the slot word after `pos` and resets by CAS from the value read (a
//! committed position never comes back, so that CAS cannot hit a later owner's `pos`).
//! The old V2b read `pos` and reset it without the re-read: runner A freed the slot, a
//! producer loaned it and stored its `pos`, and runner B, which had read the dead
//! consumer's HELD word, wiped that `pos`; the producer's committed message was then
//! cleared as stale (loom: two runners beside a live producer, `Mutation::NoPosRecheck`).
//! An uncommitted loan (V1b) is freed without touching `pos` at all: its position may
//! still be open and be filled by the slot's next owner with the same `pos` value, which
//! no re-read can tell apart (`Mutation::ResetUncommittedPos`).
//!
//! V2a raises the `orphans` hint *after* the slot becomes ORPHAN. In the other order a
//! receiver could read the raised hint, scan before the slot changes, find nothing and
//! reset the hint to 0 (`slots::claim_orphan`), stranding the message. In this order a
//! receiver that reset the hint did so before the raise, or its reset CAS fails. A
//! recovery killed between the two leaves an ORPHAN slot with the hint too low; every
//! repair pass recounts ORPHAN slots and raises the hint to match ([`heal_orphan_hint`]).

use crate::layout::{part_role, slot_owner, slot_state, Shared, SlotState};
use crate::slots::GaveUp;
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
    /// Held messages set aside after `max_deliveries` deliveries (V2c).
    pub set_aside: u64,
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
        let s = s as u32;
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
                if crate::ring::holds(q, p, s) {
                    r.kept += 1; // V1a
                    continue;
                }
                // V1b: uncommitted and its producer dead: free the slot, `pos` left as
                // it is (`slots::discard_uncommitted` says why a reset would be wrong).
                if crate::slots::discard_uncommitted(q, s, w) {
                    r.discarded += 1;
                }
            }
            Some(SlotState::Held) => match crate::slots::give_up(q, s, w, true) {
                GaveUp::Orphaned => r.orphaned += 1,  // V2a
                GaveUp::Dropped => r.dropped += 1,    // V2b
                GaveUp::SetAside => r.set_aside += 1, // V2c
                GaveUp::Gone => {}
            },
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
        // (`dead_letters` is counted by `slots::give_up` itself.)
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

/// Raises the `orphans` hint to at least the number of ORPHAN slots (a recovery killed
/// between V2a's two steps leaves it low). Only raises: a hint above the truth heals by
/// itself at the next empty scan.
pub fn heal_orphan_hint(q: &Shared<'_>) {
    let n = crate::slots::census(q)[SlotState::Orphan as usize];
    let h = crate::layout::hint_count(q.ctl.counters.orphans.load(Acquire));
    if n > h {
        crate::slots::raise_orphan_hint(q, n - h);
        q.ctl.not_empty.fetch_add(1, Release);
    }
}

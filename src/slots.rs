//! Payload-slot ownership: allocation, acknowledgement and redelivery, each one CAS on the
//! slot's state word `gen | state | owner` (see `layout.rs`).
//!
//! ```text
//! alloc (producer P):   CAS word: FREE(g) -> LOANED(g, P)                       (A1)
//! write:                payload, len, sender (owner-only fields)                 (A2)
//! publish:              ring.rs S4-S6
//! claim (consumer C):   ring.rs R3: LOANED(g, P) -> HELD(g, C)
//!   or redelivery:      CAS word: ORPHAN(g) -> HELD(g, C); orphans -= 1           (O1, O2)
//! ack (C):              pos = NONE                                               (K1)
//!                       CAS word: HELD(g, C) -> FREE(g+1)                        (K2)
//!                       wake the sender if it sleeps in wait_for_acks           (K3)
//! discard (P, unsent):  pos = NONE; CAS word: LOANED(g, P) -> FREE(g+1)
//! ```
//!
//! Killed after… | leaves | repaired by
//! ---|---|---
//! A1 / A2 | slot LOANED by the dead, `pos` NONE | recovery frees it
//! O1 | slot HELD by the dead; `orphans` one too high | recovery (ORPHAN again); the hint heals when a scan finds nothing
//! K1 | slot HELD by the dead with `pos` NONE | recovery: ORPHAN (the ack did not happen, so at-least-once redelivers)
//! K2 | slot FREE, the sender not woken | nothing: `wait_for_acks` derives "all acked" from the slot table (see [`has_pending`]) and re-checks at least every 100 ms
//!
//! Why `pos = NONE` comes before the free (a loom negative control fails without it):
//! a stale consumer that read `F(l, s)` checks `word` then `pos` (ring.rs R2). If the slot
//! were freed with its old `pos` and loaned again, the stale reader could see `LOANED` (the
//! new loan) and the old `pos` (still the position of its cell) and claim a slot that is
//! being written.
//!
//! Orderings: SYNC POINT: slot-claim — the claim CAS (AcqRel) reads the producer's loan;
//! SYNC POINT: slot-free — the ack CAS (Release) pairs with the next alloc CAS (Acquire),
//! so the consumer's reads of the payload happen before the next producer's writes.

use crate::layout::{
    slot_freed, slot_gen, slot_owner, slot_state, slot_word, Shared, SlotState, POS_NONE,
};
use crate::sync::Ordering::{AcqRel, Acquire, Relaxed, Release};

/// Takes a FREE slot for participant `me`, scanning the table once from `start` (the
/// caller's cursor: the slot after the one it took last, so a producer that takes several
/// slots in a row finds each in a step or two instead of rescanning what it took).
/// `fits(s)` ranks a candidate: slots for which it returns true are preferred (their
/// segment is already big enough); if none within the table fits, the first FREE slot is
/// taken.
///
/// Returns `(slot, LOANED word)` or `None` if every slot is in use.
pub fn alloc(
    q: &Shared<'_>,
    me: u16,
    start: usize,
    mut fits: impl FnMut(u32) -> bool,
) -> Option<(u32, u64)> {
    let n = q.slots.len();
    let start = if start < n { start } else { 0 };
    let mut fallback = None;
    let mut s = start;
    for _ in 0..n {
        let w = q.slots[s].word.load(Relaxed);
        if slot_state(w) == Some(SlotState::Free) {
            if !fits(s as u32) {
                fallback.get_or_insert(s);
            } else if let Some(got) = try_take(q, me, s, w) {
                return Some(got);
            }
        }
        s += 1;
        if s == n {
            s = 0;
        }
    }
    // Nothing that fits is free: take any free slot (it will be resized).
    let mut s = fallback?;
    for _ in 0..n {
        let w = q.slots[s].word.load(Relaxed);
        if slot_state(w) == Some(SlotState::Free) {
            if let Some(got) = try_take(q, me, s, w) {
                return Some(got);
            }
        }
        s += 1;
        if s == n {
            s = 0;
        }
    }
    None
}

/// Takes slot `s` for participant `me` if it is FREE and `fits`: the one-step attempt a
/// producer makes on the shared `free_hint` before it scans.
pub fn take_if_free(
    q: &Shared<'_>,
    me: u16,
    s: usize,
    fits: impl FnOnce(u32) -> bool,
) -> Option<(u32, u64)> {
    let w = q.slots.get(s)?.word.load(Relaxed);
    if slot_state(w) != Some(SlotState::Free) || !fits(s as u32) {
        return None;
    }
    try_take(q, me, s, w)
}

fn try_take(q: &Shared<'_>, me: u16, s: usize, w: u64) -> Option<(u32, u64)> {
    let loaned = slot_word(slot_gen(w), SlotState::Loaned, me);
    // A1. SYNC POINT: slot-free (Acquire: the previous owner is done with the bytes).
    q.slots[s]
        .word
        .compare_exchange(w, loaned, AcqRel, Relaxed)
        .ok()
        .map(|_| (s as u32, loaned))
}

/// Frees slot `s`, which the caller owns with word `w` (HELD after a receive, or LOANED
/// and never published): K1, K2. Returns false if the word was not `w` any more, which
/// only happens if recovery wrongly judged the caller dead.
pub fn free(q: &Shared<'_>, s: u32, w: u64) -> bool {
    let rec = &q.slots[s as usize];
    // K1: pos first (see the module doc).
    if !crate::sync::mutation::on(crate::sync::mutation::Mutation::NoPosReset) {
        rec.pos.store_cas_safe(POS_NONE, Release);
    }
    crate::fault::point("ack.pos");
    // K2. SYNC POINT: slot-free (Release).
    rec.word
        .compare_exchange(w, slot_freed(w), AcqRel, Relaxed)
        .is_ok()
}

/// Whether any message stamped with sender word `sender` is still unacknowledged:
/// published and unclaimed, held by a consumer, or orphaned. The sender's own unsent
/// loans (LOANED by `me`, not committed in the ring) do not count.
///
/// This is derived from the slot table rather than kept in a counter because a counter
/// cannot be made crash-exact: a consumer killed between freeing a slot and counting the
/// ack would leave it short forever. A slot being re-loaned by another producer may still
/// show the old stamp for a moment; that only makes the caller look again.
pub fn has_pending(q: &Shared<'_>, sender: u64, me: u16) -> bool {
    q.slots.iter().enumerate().any(|(s, rec)| {
        let w = rec.word.load(Acquire);
        match slot_state(w) {
            Some(SlotState::Held) | Some(SlotState::Orphan) => rec.sender.load(Relaxed) == sender,
            Some(SlotState::Loaned) if rec.sender.load(Relaxed) == sender => {
                slot_owner(w) != me || crate::ring::is_committed(q, s as u32)
            }
            _ => false,
        }
    })
}

/// Claims an ORPHAN slot (a message whose consumer died) for participant `me`: O1, O2.
/// Only scans while the `orphans` hint is non-zero; resets the hint when a full scan finds
/// nothing (so a hint left high by a killed claimer heals).
pub fn claim_orphan(q: &Shared<'_>, me: u16, start: usize) -> Option<(u32, u64)> {
    let hint = q.ctl.counters.orphans.load(Acquire);
    if hint == 0 {
        return None;
    }
    let n = q.slots.len();
    for k in 0..n {
        let s = (start + k) % n;
        let w = q.slots[s].word.load(Acquire);
        if slot_state(w) != Some(SlotState::Orphan) {
            continue;
        }
        let held = slot_word(slot_gen(w), SlotState::Held, me);
        // O1. SYNC POINT: slot-claim (Acquire: the payload written before the orphaning).
        if q.slots[s]
            .word
            .compare_exchange(w, held, AcqRel, Relaxed)
            .is_ok()
        {
            crate::fault::point("orphan.claim");
            // O2: saturating decrement of the hint.
            let mut c = q.ctl.counters.orphans.load(Relaxed);
            while c > 0 {
                match q
                    .ctl
                    .counters
                    .orphans
                    .compare_exchange(c, c - 1, AcqRel, Relaxed)
                {
                    Ok(_) => break,
                    Err(now) => c = now,
                }
            }
            return Some((s as u32, held));
        }
    }
    // Nothing found: the hint is stale. Reset it unless it changed meanwhile (recovery
    // raises it *after* it makes a slot ORPHAN, so an orphaning our scan missed raised it
    // after our load, and this CAS fails).
    let _ = q
        .ctl
        .counters
        .orphans
        .compare_exchange(hint, 0, AcqRel, Relaxed);
    None
}

/// Counts slots by state: `[free, loaned, held, orphan]` (a racy snapshot).
pub fn census(q: &Shared<'_>) -> [u64; 4] {
    let mut c = [0u64; 4];
    for rec in q.slots {
        if let Some(st) = slot_state(rec.word.load(Relaxed)) {
            c[st as usize] += 1;
        }
    }
    c
}

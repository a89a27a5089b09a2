//! Payload-slot ownership: allocation, acknowledgement and redelivery, each one CAS on the
//! slot's state word `gen | state | owner` (see `layout.rs`).
//!
//! ```text
//! alloc (producer P):   CAS word: FREE(g) -> LOANED(g, P)                       (A1)
//! write:                payload, len, sender (owner-only fields)                 (A2)
//! publish:              ring.rs S4-S6
//! claim (consumer C):   ring.rs R3: LOANED(g, P) -> HELD(g, C)   (deliveries = 1, set by P)
//!   or redelivery:      CAS word: ORPHAN(g, n) -> HELD(g, C)                     (O1)
//!                       deliveries = n + 1                                       (O2)
//!                       orphans -= 1                                             (O3)
//! ack (C):              p = pos; if word != HELD(g, C): stop; CAS pos: p -> NONE (K1)
//!                       CAS word: HELD(g, C) -> FREE(g+1)                        (K2)
//!                       wake the sender if it sleeps in wait_for_acks           (K3)
//! discard (P, unsent):  K1; CAS word: LOANED(g, P) -> FREE(g+1)
//! discard (P dead, not committed, recovery V1b): CAS word: LOANED(g, P) -> FREE(g+1)
//!                       (`pos` left: see discard_uncommitted)
//! hand back (C cannot map the payload):
//!                       CAS word: HELD(g, C) -> ORPHAN(g, n - 1); orphans += 1   (H1, see give_up)
//! ```
//!
//! Killed after… | leaves | repaired by
//! ---|---|---
//! A1 / A2 | slot LOANED by the dead, `pos` NONE | recovery frees it
//! O1 | slot HELD by the dead, `deliveries` still the previous holder's count; `orphans` one too high | recovery (ORPHAN again, the count one low: see [`give_up`]); the hint heals when a scan finds nothing
//! O2 | as O1 with the count right | as O1
//! K1 | slot HELD by the dead with `pos` NONE | recovery: ORPHAN (the ack did not happen, so at-least-once redelivers)
//! H1, or recovery V2a (`giveup.orphaned`) | slot ORPHAN, the hint not raised | every repair pass raises the hint (`recovery::heal_orphan_hint`); kill test: `tests/crash.rs`, a recovery runner killed there
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
    hint_count, orphan_count, slot_freed, slot_gen, slot_orphan, slot_owner, slot_state, slot_word,
    Shared, SlotState, HINT_RAISE, MAX_DELIVERIES, POS_NONE,
};
use crate::sync::mutation::{self, Mutation};
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

/// K1 for slot `s`, which the caller believes it owns with word `w`: reads `pos`, checks
/// that the slot still holds `w`, and only then resets `pos` to NONE, by CAS from the value
/// it read. Returns false, having written nothing, if the slot no longer holds `w`.
///
/// Why not a plain store: a caller that was wrongly judged dead, or a second recovery
/// runner repairing the same slot, may come here after the slot was freed and loaned
/// again; a store would wipe the *new* producer's `pos`, every consumer would then take
/// its committed cell for stale and clear it, and an `Ok` send would be lost. Read after
/// `pos`, an unchanged word proves `p` is still this owner's (generations never repeat);
/// and once the slot moves on, its next `pos` is a later ring position (positions never
/// repeat) or NONE, so the CAS from `p` fails. Loom: `acks_and_roster.rs` (the ack racing
/// recovery) and `crash.rs` (two recoverers beside a producer), each with a negative
/// control ([`Mutation::PosStore`](crate::sync::mutation::Mutation)).
pub fn reset_pos(q: &Shared<'_>, s: u32, w: u64) -> bool {
    let rec = &q.slots[s as usize];
    let p = rec.pos.load(Acquire);
    let recheck = !mutation::on(Mutation::NoPosRecheck) && !mutation::on(Mutation::PosStore);
    if recheck && rec.word.load(Acquire) != w {
        return false;
    }
    if mutation::on(Mutation::NoPosReset) {
        return true;
    }
    if mutation::on(Mutation::PosStore) {
        rec.pos.store_cas_safe(POS_NONE, Release);
    } else if p != POS_NONE {
        let _ = rec.pos.compare_exchange(p, POS_NONE, AcqRel, Relaxed);
    }
    true
}

/// Frees slot `s`, which the caller owns with word `w` (HELD after a receive, or LOANED
/// and never published): K1, K2. Returns false, having changed nothing of the slot, if
/// the word was not `w` any more (recovery judged the owner dead and repaired it).
pub fn free(q: &Shared<'_>, s: u32, w: u64) -> bool {
    // K1: pos first (see the module doc), and only while the slot is still ours.
    reset_pos(q, s, w) && release(q, s, w)
}

/// K2. SYNC POINT: slot-free (Release).
fn release(q: &Shared<'_>, s: u32, w: u64) -> bool {
    q.slots[s as usize]
        .word
        .compare_exchange(w, slot_freed(w), AcqRel, Relaxed)
        .is_ok()
}

/// Frees slot `s`, LOANED with word `w` by a dead producer whose message is not committed
/// at the position its `pos` names (recovery V1b): the word CAS alone (K2), `pos` left as
/// it is.
///
/// Why not reset `pos` first, as every other free does: that reset exists for a stale
/// consumer that read a full cell naming this slot at `pos` (see the module doc), and no
/// consumer can have read one here: the message was never committed at `pos`. And the
/// reset would be wrong if two recovery runners ever ran at once: runner A frees the
/// slot, a producer loans it and publishes it at the very position the dead producer had
/// reserved and never filled (it is still open, so `pos` takes the same value again), and
/// runner B's CAS of `pos` from the value it read (that same value) to NONE succeeds,
/// after its re-read of the word had passed. The committed cell is then taken for stale
/// and an `Ok` send is lost. The stale `pos` is harmless: it names a position where this
/// slot is not committed, and the next owner overwrites it (ring.rs S4) before it commits.
/// Loom: `crash.rs` (two recoverers of a producer killed after S4, beside a producer),
/// negative control `Mutation::ResetUncommittedPos`.
pub fn discard_uncommitted(q: &Shared<'_>, s: u32, w: u64) -> bool {
    if mutation::on(Mutation::ResetUncommittedPos) {
        return free(q, s, w);
    }
    release(q, s, w)
}

/// The acknowledgement of a received message in slot `s` held with word `w`: reads the
/// sender stamp while the slot is still ours (the next producer restamps it), then frees
/// the slot (K1, K2). Returns the stamp (to wake that sender's `wait_for_acks`, K3), or
/// `None` if the slot had been recovered from under the caller (nothing was changed).
pub fn ack(q: &Shared<'_>, s: u32, w: u64) -> Option<u64> {
    let stamp = q.slots[s as usize].sender.load(Relaxed);
    if !reset_pos(q, s, w) {
        return None;
    }
    crate::fault::point("ack.pos");
    release(q, s, w).then_some(stamp)
}

/// What became of a held message whose holder gave it up ([`give_up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// ORPHAN, for another consumer (at-least-once).
    Orphaned,
    /// FREE: dropped (at-most-once).
    Dropped,
    /// FREE: delivered `max_deliveries` times, set aside and counted in `dead_letters`.
    SetAside,
    /// The slot no longer held `w`: someone else repaired it; nothing changed.
    Gone,
}

/// Gives up slot `s`, held with word `w = HELD(g, holder)`, on behalf of a holder that
/// died (recovery V2) or could
/// not take it (a receiver that cannot map the payload, H1). `delivered` says whether the
/// holder's delivery counts toward `max_deliveries` (false for H1: the holder never saw
/// the bytes).
///
/// ```text
/// n = deliveries[s] (this holder's count), minus one if !delivered
/// at-most-once and delivered:  K1 (reset_pos); CAS w -> FREE(g+1)               -> Dropped
/// n >= max_deliveries:        K1 (reset_pos); CAS w -> FREE(g+1); dead_letters += 1 -> SetAside
/// else:                       CAS w -> ORPHAN(g, n); orphans += 1               -> Orphaned
/// ```
///
/// Killed after the CAS to ORPHAN, before the hint: an ORPHAN slot with the hint too low;
/// every repair pass raises it (`recovery::heal_orphan_hint`). Killed after the CAS to
/// FREE, before `dead_letters`: the message is set aside but not counted (a statistic).
/// A consumer killed between its claim of an ORPHAN and its store of the new count
/// (`orphan.claim`) leaves `deliveries` one low: that message may be delivered once more
/// than the limit.
pub fn give_up(q: &Shared<'_>, s: u32, w: u64, delivered: bool) -> GaveUp {
    let rec = &q.slots[s as usize];
    let n = rec.deliveries.load(Relaxed).clamp(1, MAX_DELIVERIES as u64);
    let n = if delivered { n } else { n - 1 };
    let set_aside = delivered && n >= q.max_deliveries && !mutation::on(Mutation::NoDeliveryLimit);
    if (delivered && q.at_most_once) || set_aside {
        if !free(q, s, w) {
            return GaveUp::Gone;
        }
        if set_aside && !(delivered && q.at_most_once) {
            q.ctl.counters.dead_letters.fetch_add(1, Relaxed);
            return GaveUp::SetAside;
        }
        return GaveUp::Dropped;
    }
    // The slot first, then the hint (recovery.rs, V2a).
    if rec
        .word
        .compare_exchange(w, slot_orphan(slot_gen(w), n), AcqRel, Relaxed)
        .is_err()
    {
        return GaveUp::Gone;
    }
    crate::fault::point("giveup.orphaned");
    raise_orphan_hint(q, 1);
    GaveUp::Orphaned
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
    pending_upto(q, sender, me, 1) > 0
}

/// How many messages of sender word `sender` are unacknowledged (as [`has_pending`]
/// counts them), counting no further than `limit`. A racy snapshot, read-only.
pub fn pending_upto(q: &Shared<'_>, sender: u64, me: u16, limit: usize) -> usize {
    let pending = q.slots.iter().enumerate().filter(|&(s, rec)| {
        let w = rec.word.load(Acquire);
        match slot_state(w) {
            Some(SlotState::Held) | Some(SlotState::Orphan) => rec.sender.load(Relaxed) == sender,
            Some(SlotState::Loaned) if rec.sender.load(Relaxed) == sender => {
                slot_owner(w) != me || crate::ring::is_committed(q, s as u32)
            }
            _ => false,
        }
    });
    pending.take(limit).count()
}

/// Claims an ORPHAN slot (a message whose consumer died, or that a receiver handed back)
/// for participant `me`: O1, O2, O3. Only scans while the `orphans` hint is non-zero;
/// resets the hint when a full scan finds nothing (so a hint left high by a killed claimer
/// heals). `skip(slot, word)` passes over orphans this receiver cannot take right now (it
/// failed to map them, see `Receiver::take`): they stay for other receivers, and the hint
/// is then not reset.
///
/// Returns `(slot, HELD word, delivery count)`, the count including this delivery.
pub fn claim_orphan(
    q: &Shared<'_>,
    me: u16,
    start: usize,
    mut skip: impl FnMut(u32, u64) -> bool,
) -> Option<(u32, u64, u64)> {
    let hint = q.ctl.counters.orphans.load(Acquire);
    if hint_count(hint) == 0 {
        return None;
    }
    let n = q.slots.len();
    let mut skipped = false;
    for k in 0..n {
        let s = (start + k) % n;
        let w = q.slots[s].word.load(Acquire);
        if slot_state(w) != Some(SlotState::Orphan) {
            continue;
        }
        if skip(s as u32, w) {
            skipped = true;
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
            // O2: the count of this delivery (owner-only while HELD; see `give_up`).
            let count = (orphan_count(w) + 1).min(MAX_DELIVERIES as u64);
            q.slots[s].deliveries.store(count, Relaxed);
            // O3.
            lower_orphan_hint(q, hint);
            return Some((s as u32, held, count));
        }
    }
    // Nothing found: the hint is stale. Reset its count unless it changed meanwhile (every
    // orphaning raises it *after* it makes a slot ORPHAN, so one our scan missed raised it
    // after our load, and this CAS fails) or we passed over orphans that are still there.
    // The version makes "changed meanwhile" exact: without it, a raise and a claimer's
    // decrement in between would bring the word back to `hint` (an ABA). The reset bumps
    // the version too, so that a claimer that read the hint before it does not then
    // decrement the count of an orphaning that came after it (`lower_orphan_hint`).
    if !skipped {
        let next = if mutation::on(Mutation::HintWithoutVersion) {
            hint & !0xFFFF_FFFF
        } else {
            (hint & !0xFFFF_FFFF).wrapping_add(HINT_RAISE - 1)
        };
        let _ = q
            .ctl
            .counters
            .orphans
            .compare_exchange(hint, next, AcqRel, Relaxed);
    }
    None
}

/// O3: a claimer of an ORPHAN slot, which read the hint as `seen` before its claim,
/// lowers the hint's count by one, unless the version moved since `seen`. A moved
/// version means a reset (which zeroed the count our claim was part of: lowering it again
/// could take away the count of an orphaning that came after the reset and hide it) or a
/// raise (harmless to lower, but not told apart); skipping leaves the count too high,
/// which the next receiver that scans and finds nothing resets. (Loom:
/// `orphan_hint_reset_beside_a_raise`, negative control `Mutation::HintWithoutVersion`.)
pub fn lower_orphan_hint(q: &Shared<'_>, seen: u64) {
    let versioned = !mutation::on(Mutation::HintWithoutVersion);
    let mut c = q.ctl.counters.orphans.load(Relaxed);
    while hint_count(c) > 0 && (!versioned || c >> 32 == seen >> 32) {
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
}

/// Raises the `orphans` hint's count by `n` and bumps its version (the version not under
/// `Mutation::HintWithoutVersion`).
pub fn raise_orphan_hint(q: &Shared<'_>, n: u64) {
    let add = if mutation::on(Mutation::HintWithoutVersion) {
        n
    } else {
        n + (HINT_RAISE - 1)
    };
    q.ctl.counters.orphans.fetch_add(add, AcqRel);
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

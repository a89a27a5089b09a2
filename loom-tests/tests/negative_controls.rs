//! Negative controls: each switches off one rule of the protocol
//! (`shmq::sync::mutation`) or of the crash repair, and asserts that the model then
//! FAILS. A control that passes would mean the rule is not needed as stated, or the
//! scenario is too weak to show it.
//!
//! The mutation switch is process-wide, so the controls of this file run one at a time
//! (a lock), and no positive model lives in this test binary.
#![cfg(shmq_loom)]

use shmq::sync::mutation::{self, Mutation};
use shmq_loom_tests::{model_failure, run_script, Op, Script};
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Runs `f` (a solo step count, say) with no mutation switched on: the switch is
/// process-wide, and another control of this binary may be running.
fn unmutated<R>(f: impl FnOnce() -> R) -> R {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    mutation::set(None);
    f()
}

/// Runs `f` as a model with `m` switched off and returns why it failed (panics if it
/// passed).
fn must_fail<F>(m: Option<Mutation>, what: &str, f: F) -> String
where
    F: Fn() + Sync + Send + 'static,
{
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    mutation::set(m);
    let r = model_failure(f);
    mutation::set(None);
    match r {
        Some(why) => {
            eprintln!("{what}: failed as it must: {why}");
            why
        }
        None => panic!("{what}: the model PASSED with {m:?}: the rule is not shown to be needed"),
    }
}

/// The scenario of `ring.rs`'s `a_stale_consumer_never_claims_a_recycled_slot`.
fn stale_consumer() -> Script {
    Script {
        cap: 1,
        pre: vec![0x01],
        threads: vec![vec![Op::Recv], vec![Op::Recv, Op::Send(0x21)]],
    }
}

#[test]
fn without_the_pos_check_a_stale_consumer_claims_a_slot_being_written() {
    let s = stale_consumer();
    must_fail(Some(Mutation::NoPosCheck), "NoPosCheck", move || {
        run_script(&s)
    });
}

#[test]
fn without_resetting_pos_on_free_a_stale_consumer_claims_a_slot_being_written() {
    let s = stale_consumer();
    must_fail(Some(Mutation::NoPosReset), "NoPosReset", move || {
        run_script(&s)
    });
}

#[test]
fn reading_pos_before_the_slot_word_lets_a_stale_consumer_claim_a_slot_being_written() {
    let s = stale_consumer();
    must_fail(Some(Mutation::PosBeforeWord), "PosBeforeWord", move || {
        run_script(&s)
    });
}

// ---- crash repair ------------------------------------------------------------------------

use shmq_loom_tests::{Crash, Live, Victim};

fn crash_case(victim: Victim, recover: bool) -> Crash {
    Crash {
        victim,
        cap: 1,
        at_most_once: false,
        recover,
        live: Live::Split,
    }
}

#[test]
fn without_recovery_a_message_held_by_a_killed_consumer_is_lost() {
    // The victim claimed and read 0x01 and is killed before the first step of its ack.
    shmq_loom_tests::assert_crash_hook_is_per_thread();
    let c = crash_case(Victim::Ack, false);
    must_fail(None, "no recovery, killed consumer", move || c.run(0));
}

#[test]
fn without_recovery_the_loan_of_a_killed_producer_leaks() {
    // Killed right after its alloc and write, before the first step of its publish.
    shmq_loom_tests::assert_crash_hook_is_per_thread();
    let c = crash_case(Victim::Send, false);
    let k = unmutated(|| c.steps_until_publish());
    must_fail(None, "no recovery, killed producer", move || c.run(k));
}

#[test]
fn without_helping_the_head_stays_stuck_behind_a_killed_consumers_cell() {
    // The victim's claim CAS (R3) succeeded and it is killed before clearing its cell
    // (R4): recovery makes the slot ORPHAN, but nobody may clear the cell, so the ring
    // stays full of a claimed message and `head` never passes it.
    shmq_loom_tests::assert_crash_hook_is_per_thread();
    let c = crash_case(Victim::Recv, true);
    let k = unmutated(|| c.steps_until_cell_clear());
    must_fail(Some(Mutation::NoHelping), "NoHelping", move || c.run(k));
}

// ---- issue 11: the ack racing recovery, trimming, the delivery limit, two recoverers ----

use shmq_loom_tests::{AckRace, DeliveryLimit, Left, TrimRace, TwoRecoverers};

fn pos_store(at_most_once: bool) -> String {
    shmq_loom_tests::assert_crash_hook_is_per_thread();
    let c = AckRace { at_most_once };
    let k = unmutated(|| c.steps()); // C alive, judged dead
    let why = must_fail(Some(Mutation::PosStore), "PosStore", move || c.run(k));
    assert!(
        why.contains("P's committed message was received 0 times"),
        "failed for another reason: {why}"
    );
    why
}

#[test]
fn a_reset_that_stores_pos_after_losing_the_slot_wipes_the_next_producers_pos() {
    // `PosStore`: the old K1, `pos = NONE` stored whether or not the slot is still the
    // caller's. At-most-once, C's ack and recovery's drop (V2b) both reset `pos`: whichever
    // loses the slot stores NONE after P loaned the freed slot and stored its own `pos`,
    // and P's committed cell is cleared as stale.
    pos_store(true);
}

#[test]
fn an_ack_that_stores_pos_after_losing_its_slot_wipes_the_next_producers_pos() {
    // `PosStore`, at-least-once: recovery orphans C's message without touching `pos`
    // (V2a), R redelivers and acks it, P loans the slot and stores its `pos`; only C's
    // stale ack can then wipe it (issue 11 defect 4 exactly).
    pos_store(false);
}

#[test]
fn a_recoverer_without_the_recheck_wipes_the_pos_of_the_slots_next_producer() {
    // `NoPosRecheck` (issue 11 defect 5): runner B read D's HELD word; runner A drops the
    // message and frees the slot; P loans it and stores `pos`; B reads that `pos` and,
    // without re-reading the word, resets it; P's committed cell is cleared as stale.
    shmq_loom_tests::assert_crash_hook_is_per_thread();
    let c = TwoRecoverers {
        left: Left::Held,
        at_most_once: true,
    };
    let k = unmutated(|| c.steps());
    let why = must_fail(Some(Mutation::NoPosRecheck), "NoPosRecheck", move || {
        c.run(k)
    });
    assert!(
        why.contains("P's committed message was received 0 times"),
        "failed for another reason: {why}"
    );
}

#[test]
fn a_recoverer_that_resets_an_uncommitted_pos_wipes_the_pos_of_the_slots_next_producer() {
    // `ResetUncommittedPos`: V1b resets `pos` before freeing a dead producer's uncommitted
    // loan. D died after S4 (`pos = 0`, position 0 still open); runner B reads `pos` 0 and
    // the unchanged word; runner A frees the slot; P loans it and publishes at position 0
    // (`pos = 0` again); B's CAS 0 -> NONE succeeds and P's committed cell is cleared as
    // stale. Found by the sweep of `crash.rs` (killing runner A at step 8).
    shmq_loom_tests::assert_crash_hook_is_per_thread();
    let c = TwoRecoverers {
        left: Left::LoanAfterPos,
        at_most_once: false,
    };
    let steps = unmutated(|| c.steps());
    // The first kill point (of runner A) at which the mutated model fails.
    let why = (0..=steps)
        .find_map(|k| {
            let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
            mutation::set(Some(Mutation::ResetUncommittedPos));
            let r = model_failure(move || c.run(k));
            mutation::set(None);
            r.map(|why| format!("k {k}: {why}"))
        })
        .unwrap_or_else(|| {
            panic!("ResetUncommittedPos: the model PASSED at every kill point 0..={steps}")
        });
    eprintln!("ResetUncommittedPos: failed as it must: {why}");
    assert!(
        why.contains("P's committed message was received 0 times"),
        "failed for another reason: {why}"
    );
}

#[test]
fn without_the_delivery_limit_a_message_is_delivered_a_third_time() {
    // `NoDeliveryLimit`: C2 holds 0x01 for its second delivery (max 2) and is killed
    // before its ack; recovery orphans it again instead of setting it aside.
    shmq_loom_tests::assert_crash_hook_is_per_thread();
    let c = DeliveryLimit;
    let k = unmutated(|| c.steps_until_ack());
    let why = must_fail(
        Some(Mutation::NoDeliveryLimit),
        "NoDeliveryLimit",
        move || c.run(k),
    );
    assert!(
        why.contains("delivered a third time"),
        "failed for another reason: {why}"
    );
}

#[test]
fn a_trimmer_that_uses_a_free_slot_without_taking_it_overlaps_an_allocation() {
    // Not a protocol mutation: a trimmer that checks FREE and trims without the CAS of
    // `take_if_free` shows that the model sees two owners of one slot (loom's race
    // detector on the slot bytes, or the ghost owner flag).
    shmq_loom_tests::assert_crash_hook_is_per_thread();
    let c = TrimRace { take: false };
    let k = unmutated(|| c.steps());
    must_fail(None, "trimming without taking the slot", move || c.run(k));
}

#[test]
fn without_the_hints_version_a_stale_reset_hides_an_orphan() {
    // `HintWithoutVersion` (issue 12, the hint's ABA): A loads the hint (count 1), passes
    // slot 0 while X holds it; X orphans it and raises the count to 2; B's decrement
    // brings it back to 1; A's reset CAS 1 -> 0 succeeds: X's orphan is hidden.
    let why = must_fail(
        Some(Mutation::HintWithoutVersion),
        "HintWithoutVersion",
        shmq_loom_tests::orphan_hint_reset_beside_a_raise,
    );
    assert!(
        why.contains("left with the hint's count at 0"),
        "failed for another reason: {why}"
    );
}

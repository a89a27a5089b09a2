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
    let k = c.steps_until_publish();
    must_fail(None, "no recovery, killed producer", move || c.run(k));
}

#[test]
fn without_helping_the_head_stays_stuck_behind_a_killed_consumers_cell() {
    // The victim's claim CAS (R3) succeeded and it is killed before clearing its cell
    // (R4): recovery makes the slot ORPHAN, but nobody may clear the cell, so the ring
    // stays full of a claimed message and `head` never passes it.
    shmq_loom_tests::assert_crash_hook_is_per_thread();
    let c = crash_case(Victim::Recv, true);
    let k = c.steps_until_cell_clear();
    must_fail(Some(Mutation::NoHelping), "NoHelping", move || c.run(k));
}

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

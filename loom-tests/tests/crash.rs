//! Crash injection (DESIGN §4, §7): a victim thread is killed before each of its
//! shared-memory steps in turn (`shmq::sync::crash`), recovery runs beside live threads,
//! and the invariants are checked after joining. See `shmq_loom_tests::Crash`.
#![cfg(shmq_loom)]

use shmq_loom_tests::{
    sweep, sweep_points, Crash, DeliveryLimit, Left, Live, TwoRecoverers, Victim,
};

fn crash(victim: Victim, cap: u32, at_most_once: bool) -> u64 {
    let live = match victim {
        // Recovery is the longest victim (and runs twice): one live thread keeps its
        // sweep within budget.
        Victim::Recovery => Live::Combined,
        _ => Live::Split,
    };
    let n = sweep(Crash {
        victim,
        cap,
        at_most_once,
        recover: true,
        live,
    });
    eprintln!("{victim:?} cap {cap} at_most_once {at_most_once}: {n} crash points");
    n
}

#[test]
fn the_crash_hook_kills_only_the_armed_thread_and_the_kill_can_be_caught() {
    // A kill is a panic caught by `catch_unwind` inside the loom thread (loom threads are
    // coroutines; a panic caught within one never reaches loom): this model checks both
    // that it can be caught and that it hits the armed thread only, at the right step.
    shmq_loom_tests::assert_crash_hook_is_per_thread();
}

#[test]
fn a_send_killed_at_any_step_is_delivered_once_or_discarded() {
    crash(Victim::Send, 1, false);
}

#[test]
fn a_receive_killed_at_any_step_loses_and_duplicates_nothing() {
    crash(Victim::Recv, 1, false);
}

#[test]
fn a_receive_killed_at_any_step_under_at_most_once_drops_only_what_it_held() {
    crash(Victim::Recv, 1, true);
}

#[test]
fn an_ack_killed_at_any_step_redelivers_the_message_once() {
    crash(Victim::Ack, 1, false);
}

#[test]
fn an_ack_killed_at_any_step_under_at_most_once_never_redelivers() {
    crash(Victim::Ack, 1, true);
}

#[test]
fn a_recovery_killed_at_any_step_and_run_again_repairs_everything_once() {
    crash(Victim::Recovery, 1, false);
}

#[test]
fn a_recovery_killed_at_any_step_under_at_most_once_drops_the_held_message_once() {
    crash(Victim::Recovery, 1, true);
}

#[test]
fn a_send_killed_at_any_step_in_a_two_cell_ring_is_delivered_once_or_discarded() {
    crash(Victim::Send, 2, false);
}

#[test]
fn a_receive_killed_at_any_step_in_a_two_cell_ring_loses_and_duplicates_nothing() {
    crash(Victim::Recv, 2, false);
}

// ---- the delivery limit (issue 11, defect 7) -----------------------------------------------

#[test]
fn a_message_whose_consumers_die_holding_it_is_set_aside_at_the_limit() {
    // max_deliveries = 2: C1 died holding 0x01 (orphaned with count 1); C2 claims it (count
    // 2), reads and acks it, killed before each step in turn; its recovery sets 0x01 aside
    // instead of redelivering it, while another message flows.
    let c = DeliveryLimit;
    let n = sweep_points("delivery limit", c.steps(), move |k| c.run(k));
    eprintln!("delivery limit: {n} crash points");
}

// ---- two recoverers of one dead participant beside a live producer (issue 11, defect 5) ---

fn two_recoverers(left: Left, at_most_once: bool) -> u64 {
    let c = TwoRecoverers { left, at_most_once };
    let n = sweep_points(&format!("{c:?}"), c.steps(), move |k| c.run(k));
    eprintln!("{c:?}: {n} crash points");
    n
}

#[test]
fn two_recoverers_of_a_dead_consumer_beside_a_producer_drop_its_message_once() {
    two_recoverers(Left::Held, true);
}

#[test]
fn two_recoverers_of_a_dead_consumer_beside_a_producer_orphan_its_message_once() {
    two_recoverers(Left::Held, false);
}

#[test]
fn two_recoverers_of_a_dead_producer_beside_a_producer_discard_its_loan_once() {
    two_recoverers(Left::Loan, false);
}

#[test]
fn two_recoverers_of_a_producer_killed_after_s4_beside_a_producer_discard_its_loan_once() {
    // D stored `pos = 0` (S4) and died before its commit, so position 0 is still open.
    // When V1b reset `pos` (as `slots::free` does): B reads `pos` (0) and the unchanged
    // word in `reset_pos`; A frees the slot; P loans it and publishes at the same position
    // 0 (`pos = 0` again); B's CAS 0 -> NONE then succeeds (the re-read of the word cannot
    // close this window, and a CAS from the value read cannot tell D's uncommitted 0 from
    // P's), and P's committed message is cleared as stale: an `Ok` send lost. V1b now
    // frees without touching `pos` (`slots::discard_uncommitted`); the negative control
    // `Mutation::ResetUncommittedPos` puts the reset back and fails this way.
    two_recoverers(Left::LoanAfterPos, false);
}

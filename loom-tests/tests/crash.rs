//! Crash injection (DESIGN §4, §7): a victim thread is killed before each of its
//! shared-memory steps in turn (`shmq::sync::crash`), recovery runs beside live threads,
//! and the invariants are checked after joining. See `shmq_loom_tests::Crash`.
#![cfg(shmq_loom)]

use shmq_loom_tests::{sweep, Crash, Live, Victim};

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

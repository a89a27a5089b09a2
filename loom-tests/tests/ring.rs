//! The ring (`ring.rs` with `slots.rs` alloc/free around it), checked by loom at
//! preemption bound 2: exactly-once delivery, per-producer FIFO, `Full` and `Empty` only
//! when true, and afterwards exact capacity and no leaked slot (see
//! `shmq_loom_tests::run_script` for every check).
#![cfg(shmq_loom)]

use shmq_loom_tests::{model, run_script, Op, Script};

fn check(cap: u32, pre: &[u8], threads: &[&[Op]]) {
    let script = Script {
        cap,
        pre: pre.to_vec(),
        threads: threads.iter().map(|t| t.to_vec()).collect(),
    };
    model(move || run_script(&script));
}

#[test]
fn two_producers_and_one_consumer_deliver_each_message_once_in_order() {
    check(
        1,
        &[],
        &[
            &[Op::Send(0x11), Op::Send(0x12)],
            &[Op::Send(0x21)],
            &[Op::Recv, Op::Recv],
        ],
    );
}

#[test]
fn one_producer_and_two_consumers_deliver_each_message_once_in_order() {
    check(
        1,
        &[],
        &[&[Op::Send(0x11), Op::Send(0x12)], &[Op::Recv], &[Op::Recv]],
    );
}

#[test]
fn two_producers_and_two_consumers_deliver_each_message_once() {
    check(
        2,
        &[],
        &[
            &[Op::Send(0x11)],
            &[Op::Send(0x21)],
            &[Op::Recv],
            &[Op::Recv],
        ],
    );
}

#[test]
fn a_thread_that_sends_then_receives_sees_full_and_empty_only_when_true() {
    // Each thread knows its own message is in until someone claims it, so a wrong
    // `Empty` (or a `Full` with only the other thread's message in a capacity-2 ring)
    // is caught here.
    check(
        2,
        &[],
        &[&[Op::Send(0x11), Op::Recv], &[Op::Send(0x21), Op::Recv]],
    );
}

#[test]
fn a_stale_consumer_never_claims_a_recycled_slot() {
    // Capacity 1, one message in slot 0 before the threads start. Thread 0 claims it;
    // thread 1 receives it first, acks it and sends a new message, which reuses the slot
    // (the lowest free one) at the next lap. Preempted between its reads of R1/R2, thread
    // 0 holds the cell word, `pos` or the slot word of the old publication while the
    // slot is loaned again and being written. The `pos` rules keep it from claiming
    // (their negative controls in `negative_controls.rs` fail on this very scenario).
    check(1, &[0x01], &[&[Op::Recv], &[Op::Recv, Op::Send(0x21)]]);
}

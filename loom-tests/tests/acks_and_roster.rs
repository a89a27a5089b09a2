//! What `wait_for_acks` and disconnection are built on: `slots::has_pending` (derived from
//! the slot table) and `roster::count_roles` (ACTIVE participant records); and the ack
//! racing a recovery of its consumer (`shmq_loom_tests::AckRace`).
#![cfg(shmq_loom)]

use shmq::layout::Role;
use shmq::{recovery, roster, slots};
use shmq_loom_tests::{
    ack, assert_all_free, claim_and_read, claim_orphan_and_read, drain, model, queue, recv,
    register, send, sweep_points, write, AckRace,
};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

#[test]
fn has_pending_turns_false_only_once_every_message_is_acked() {
    // A sender sends two messages and then asks whether any is pending, while a consumer
    // receives and acks. A `false` must mean both acks happened (the ghost count is
    // bumped right after each ack's CAS, with no shared-memory step in between, so loom
    // never runs the sender between the two). After both are joined it must be false.
    model(|| {
        let hq = Arc::new(queue(2, 4, false));
        let acked = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = {
            let q = hq.shared();
            (
                register(&q, 1, Role::Sender),
                register(&q, 2, Role::Receiver),
            )
        };
        let (hq2, acked2) = (hq.clone(), acked.clone());
        let consumer = loom::thread::spawn(move || {
            let q = hq2.shared();
            for _ in 0..2 {
                if recv(&q, rx.idx).is_some() {
                    acked2.fetch_add(1, SeqCst);
                }
            }
        });
        let q = hq.shared();
        let mut sent = 0;
        for v in [0x11, 0x12] {
            send(&q, &tx, v).expect("capacity 2 refused one of two messages");
            sent += 1;
            if !slots::has_pending(&q, tx.stamp(), tx.idx) {
                assert_eq!(
                    acked.load(SeqCst),
                    sent,
                    "has_pending said false with {sent} sent"
                );
            }
        }
        consumer.join().unwrap();
        let rest = drain(&q, rx.idx).len();
        assert_eq!(acked.load(SeqCst) + rest, 2);
        assert!(!slots::has_pending(&q, tx.stamp(), tx.idx));
        assert_all_free(&q);
    });
}

#[test]
fn has_pending_counts_queued_held_and_orphaned_messages_but_not_unsent_loans() {
    // One thread, step by step: every state a message of this sender can be in.
    model(|| {
        let hq = queue(2, 4, false);
        let q = hq.shared();
        let tx = register(&q, 1, Role::Sender);
        let rx = register(&q, 2, Role::Receiver);
        let dead = register(&q, 3, Role::Receiver);
        let pending = || slots::has_pending(&q, tx.stamp(), tx.idx);
        assert!(!pending());
        // An unsent loan of the sender's own is not pending.
        let (s, w) = slots::alloc(&q, tx.idx, 0, |_| true).unwrap();
        write(&q, s, 0x10, tx.stamp());
        assert!(!pending(), "an unsent loan counted as pending");
        assert!(slots::free(&q, s, w));
        // Committed and unclaimed.
        send(&q, &tx, 0x11).unwrap();
        assert!(pending(), "a queued message is not pending");
        // Held by a consumer.
        let g = claim_and_read(&q, rx.idx).unwrap();
        assert!(pending(), "a held message is not pending");
        ack(&q, &g);
        assert!(!pending(), "an acked message is still pending");
        // Held by a consumer that dies: ORPHAN, still pending until redelivered and acked.
        send(&q, &tx, 0x12).unwrap();
        let held = claim_and_read(&q, dead.idx).unwrap();
        let r = recovery::recover(&q, dead.idx, dead.active, true);
        assert_eq!(r.orphaned, 1);
        assert!(pending(), "an orphaned message is not pending");
        let again = claim_orphan_and_read(&q, rx.idx).unwrap();
        assert_eq!(again.value, held.value);
        assert!(pending());
        ack(&q, &again);
        assert!(!pending());
        assert_all_free(&q);
    });
}

#[test]
fn count_roles_sees_participants_until_they_leave_or_are_recovered() {
    // A sender leaves cleanly (recovers itself, which releases its record) while a dead
    // receiver is recovered by someone else, and a third thread counts: it may see each
    // one or not, never more than there are; afterwards nobody is counted, a rerun of
    // recovery does nothing, and the freed record can be taken again.
    model(|| {
        let hq = Arc::new(queue(1, 2, false));
        let (tx, rx) = {
            let q = hq.shared();
            let p = (
                register(&q, 1, Role::Sender),
                register(&q, 2, Role::Receiver),
            );
            assert_eq!(roster::count_roles(&q), (1, 1));
            p
        };
        let hq2 = hq.clone();
        let leaver = loom::thread::spawn(move || {
            let q = hq2.shared();
            let r = recovery::recover(&q, tx.idx, tx.active, false);
            assert!(r.released);
        });
        let hq3 = hq.clone();
        let recoverer = loom::thread::spawn(move || {
            let q = hq3.shared();
            let r = recovery::recover(&q, rx.idx, rx.active, true);
            assert!(r.released);
        });
        let q = hq.shared();
        let (t, r) = roster::count_roles(&q);
        assert!(t <= 1 && r <= 1, "counted ({t}, {r})");
        leaver.join().unwrap();
        recoverer.join().unwrap();
        assert_eq!(roster::count_roles(&q), (0, 0));
        assert_eq!(
            recovery::recover(&q, rx.idx, rx.active, true),
            recovery::Report::default(),
            "a rerun of a finished recovery did something"
        );
        assert!(!roster::release(&q, tx.idx, tx.active));
        let again = register(&q, rx.idx, Role::Sender);
        assert_ne!(
            again.active, rx.active,
            "a new registration reused the generation"
        );
        assert_eq!(roster::count_roles(&q), (1, 0));
        assert_eq!(
            recovery::recover(&q, rx.idx, rx.active, true),
            recovery::Report::default(),
            "recovering a dead incarnation touched its successor"
        );
        assert_eq!(roster::count_roles(&q), (1, 0));
    });
}

// ---- the ack racing recovery (issue 11, defect 4) -----------------------------------------

fn ack_race(at_most_once: bool) -> u64 {
    let c = AckRace { at_most_once };
    let n = sweep_points(&format!("{c:?}"), c.steps(), move |k| c.run(k));
    eprintln!("{c:?}: {n} crash points");
    n
}

#[test]
fn an_ack_racing_recovery_never_wipes_the_pos_of_the_slots_next_producer() {
    // C acks 0x01 while the supervisor, judging C dead, drops it (at-most-once: V2b frees
    // the slot) and P loans slot 0 again and publishes. C is killed before each step of its
    // ack in turn, or not at all (wrongly judged dead: its ack finds the slot gone).
    ack_race(true);
}

#[test]
fn an_ack_racing_recovery_is_acked_or_redelivered_once_and_loses_nothing() {
    // The same at-least-once: recovery orphans 0x01, a receiver takes and acks it, and P
    // then reuses slot 0.
    ack_race(false);
}

//! Deterministic crash tests: a producer or consumer process is SIGKILLed at each named
//! crash point of `shmq::fault::POINTS` (feature `fault-injection`: the child sets
//! `SHMQ_CRASH_AT`/`SHMQ_CRASH_SKIP` and kills itself there, mid-stream), the survivors
//! finish the stream, and the accounting is exact:
//!
//! * every message whose `send` returned `Ok` (each producer child appends the seq to a
//!   report before its next send) is received;
//! * the message in flight when a producer died is delivered iff the kill came after the
//!   commit, and the producer's later messages never appear;
//! * a message appears twice only if a killed consumer held it, and then the second copy
//!   is marked `is_redelivery()`; under at-most-once it is dropped instead;
//! * payloads are intact (checksummed, regenerated and compared);
//! * afterwards every payload slot is free, capacity is exact, and `/dev/shm` holds
//!   nothing of the queue once every handle is dropped.
//!
//! Also: recovery itself killed halfway (at `recover.slot` / `giveup.orphaned` /
//! `recover.release`) and
//! finished by another process, and blocked senders and receivers getting `Disconnected`
//! when their last peer is SIGKILLed, with a supervisor thread and in manual mode with no
//! other process alive.
//!
//! Children re-execute this test binary (`--exact <test>`), see `crash_support`.

mod crash_support;

use crash_support::*;
use shmq::{Builder, Delivery, Receiver, Sender, Supervision};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Ring capacity of every queue here: small, so the ring wraps many laps and producers
/// block on a full queue.
const CAP: usize = 4;
/// The default payload slot count for `CAP`.
const SLOTS: usize = 2 * CAP + 16;
/// Messages per producer child.
const COUNT: u64 = 60;
/// Watchdog per test, seconds (the tests take about a second each).
const LIMIT: u64 = 120;

fn env(name: &str, kv: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut v = vec![(NAME_VAR, name.to_string())];
    v.extend_from_slice(kv);
    v
}

fn crash_env(point: &str, skip: u64) -> [(&'static str, String); 2] {
    [
        ("SHMQ_CRASH_AT", point.to_string()),
        ("SHMQ_CRASH_SKIP", skip.to_string()),
    ]
}

/// Children of this file.
fn child(role: &str) -> ! {
    match role {
        "producer" => producer_child(),
        "consumer" => consumer_child(),
        "holder" => holder_child(),
        "loaner" => loaner_child(),
        "recoverer" => recoverer_child(),
        "cloning-receiver" => cloning_receiver_child(),
        r => panic!("unknown role {r}"),
    }
}

/// Runs recovery on the queue (`SHMQ_T_MODE` = `supervisor`: `Supervisor::open` +
/// `run_once`; `open`: `Receiver::open`, which repairs before it returns), where a crash
/// point is expected to kill it. Emits `survived` if it was not killed.
fn recoverer_child() -> ! {
    let name = queue_name();
    match param("SHMQ_T_MODE").as_str() {
        "supervisor" => {
            let s = shmq::Supervisor::open(&name).unwrap();
            let n = s.run_once().unwrap();
            emit(&format!("survived {n}"));
            drop(s);
        }
        "open" => {
            let rx = Receiver::open(&name).unwrap();
            emit("survived");
            drop(rx);
        }
        m => panic!("bad mode {m}"),
    }
    child_exit()
}

/// Opens a receiver, emits `ready`, waits for the go file, clones the receiver (where
/// `register.cas` kills it), emits `survived` if not killed, sleeps.
fn cloning_receiver_child() -> ! {
    let rx = Builder::new()
        .name(queue_name())
        .supervision(supervision())
        .open_receiver()
        .unwrap();
    emit("ready");
    wait_for_file(std::path::Path::new(&param("SHMQ_T_GO")));
    let rx2 = rx.try_clone().unwrap();
    emit("survived");
    let _keep = (rx, rx2);
    sleep_forever()
}

// ---------------------------------------------------------------------------------------
// Coverage

/// The crash points this file kills a process at (each with at least one test below).
const COVERED: &[&str] = &[
    "send.alloc",
    "send.trim",
    "send.grow",
    "send.written",
    "send.pos",
    "send.commit",
    "send.published",
    "recv.claim",
    "recv.cleared",
    "recv.claimed",
    "orphan.claim",
    "giveup.orphaned",
    "ack.pos",
    "ack.freed",
    "register.cas",
    "recover.slot",
    "recover.release",
];

#[test]
fn every_named_crash_point_has_a_crash_test() {
    let missing: Vec<&str> = shmq::fault::POINTS
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !COVERED.contains(p))
        .collect();
    assert!(
        missing.is_empty(),
        "crash points without a test in tests/crash.rs: {missing:?}"
    );
    for p in COVERED {
        assert!(
            shmq::fault::POINTS.iter().any(|(q, _)| q == p),
            "tests/crash.rs covers {p:?}, which is no longer a crash point"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Producers killed

/// What must become of the message a producer was sending when it was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InFlight {
    /// Killed before the commit: never delivered, its slot freed.
    Discarded,
    /// Killed after the commit: delivered exactly once.
    Delivered,
    /// Killed between messages (while cloning its sender before seq `n`): no message in
    /// flight, exactly `n` sent.
    None(u64),
}

struct ProducerCase {
    test: &'static str,
    point: &'static str,
    skip: u64,
    /// Sizes of the killed producer and of the surviving one.
    sizes: (&'static str, &'static str),
    clone_at: Option<u64>,
    fate: InFlight,
    /// `max_message_size` and `max_payload_bytes` of the queue, when not the defaults.
    limits: Option<(u64, u64)>,
}

/// Producer P1 is killed at `point` while producer P2 and consumers C1 + the parent run;
/// P2 sends half its messages before the kill and half after; then exact accounting.
fn producer_killed(c: ProducerCase) {
    let _wd = Watchdog::new(c.test, LIMIT);
    let g = ShmGuard::new("crash");
    let dir = LogDir::new(&g.name);
    let mut b = Builder::new().name(&g.name).capacity(CAP);
    if let Some((message, pool)) = c.limits {
        b = b.max_message_size(message).max_payload_bytes(pool);
    }
    let (tx, rx) = b.create().unwrap();
    let mut c1 = Proc::spawn_test(
        c.test,
        "c1",
        "consumer",
        &env(&g.name, &[("SHMQ_T_LOG", dir.file_str("c1"))]),
    );
    c1.expect("ready");
    let mut p1_env = env(
        &g.name,
        &[
            ("SHMQ_T_ID", "1".into()),
            ("SHMQ_T_COUNT", COUNT.to_string()),
            ("SHMQ_T_SIZES", c.sizes.0.into()),
            ("SHMQ_T_LOG", dir.file_str("p1")),
        ],
    );
    p1_env.extend(crash_env(c.point, c.skip));
    if let Some(n) = c.clone_at {
        p1_env.push(("SHMQ_T_CLONE_AT", n.to_string()));
    }
    let mut p1 = Proc::spawn_test(c.test, "p1", "producer", &p1_env);
    p1.expect("ready");
    let mut p2 = Proc::spawn_test(
        c.test,
        "p2",
        "producer",
        &env(
            &g.name,
            &[
                ("SHMQ_T_ID", "2".into()),
                ("SHMQ_T_COUNT", COUNT.to_string()),
                ("SHMQ_T_SIZES", c.sizes.1.into()),
                ("SHMQ_T_LOG", dir.file_str("p2")),
                ("SHMQ_T_GO_AT", (COUNT / 2).to_string()),
                ("SHMQ_T_GO", dir.file_str("go")),
            ],
        ),
    );
    p2.expect("ready");
    drop(tx);
    p1.expect_killed(&format!(
        "at crash point {} after skipping {} hits",
        c.point, c.skip
    ));
    // The second half of P2's stream goes through the queue after the death.
    dir.touch("go");
    let mut bad = Vec::new();
    let mut all = drain(&rx, "parent", &mut bad);
    p2.expect_success();
    c1.expect_success();
    all.extend(read_consumer_log(&dir.file("c1"), "c1", &mut bad));
    assert!(bad.is_empty(), "corrupt payloads: {bad:?}");

    let n1 = contiguous("p1", &read_producer_log(&dir.file("p1")));
    let n2 = contiguous("p2", &read_producer_log(&dir.file("p2")));
    assert_eq!(n2, COUNT, "the surviving producer sent everything");
    assert!(
        n1 >= 1,
        "p1 was killed before any message went through: the kill is not mid-stream"
    );
    let mut expect: BTreeSet<(u64, u64)> = (0..n1).map(|s| (1, s)).collect();
    expect.extend((0..COUNT).map(|s| (2, s)));
    match c.fate {
        InFlight::Delivered => {
            expect.insert((1, n1));
        }
        InFlight::None(n) => assert_eq!(n1, n, "p1 died while cloning before seq {n}"),
        InFlight::Discarded => {}
    }
    let t = tally(&all);
    for (k, v) in &t {
        assert_eq!(
            v.len(),
            1,
            "message {k:?} delivered {} times: {v:?}",
            v.len()
        );
        assert!(
            !v[0].redelivered,
            "no consumer died, yet {k:?} is marked redelivered"
        );
    }
    let got: BTreeSet<(u64, u64)> = t.keys().copied().collect();
    let lost: Vec<_> = expect.difference(&got).collect();
    let extra: Vec<_> = got.difference(&expect).collect();
    assert!(
        lost.is_empty(),
        "messages lost (p1 had {n1} sends return Ok before dying at {}; {:?}): {lost:?}",
        c.point,
        c.fate
    );
    assert!(
        extra.is_empty(),
        "messages delivered that should not have been (p1 had {n1} Ok sends, died at {}; {:?}): {extra:?}",
        c.point,
        c.fate
    );
    eprintln!(
        "{}: p1 killed at {} after {n1} sends; {} messages delivered exactly once",
        c.test,
        c.point,
        got.len()
    );

    let tx = Sender::open(&g.name).unwrap();
    assert_all_slots_free(&tx, &rx, CAP, SLOTS);
    drop((tx, rx));
    g.assert_clean();
}

macro_rules! producer_tests {
    ($($name:ident: $point:literal skip $skip:literal sizes $s1:literal / $s2:literal clone $clone:expr => $fate:expr;)*) => {$(
        #[test]
        fn $name() {
            if let Some(r) = role() {
                child(&r)
            }
            producer_killed(ProducerCase {
                test: stringify!($name),
                point: $point,
                skip: $skip,
                sizes: ($s1, $s2),
                clone_at: $clone,
                fate: $fate,
                limits: None,
            });
        }
    )*};
}

producer_tests! {
    producer_killed_after_taking_a_slot_has_its_message_discarded:
        "send.alloc" skip 20 sizes "mixed" / "mixed" clone None => InFlight::Discarded;
    producer_killed_while_growing_a_segment_has_its_message_discarded:
        "send.grow" skip 2 sizes "grow" / "small" clone None => InFlight::Discarded;
    producer_killed_after_writing_the_payload_has_its_message_discarded:
        "send.written" skip 10 sizes "mixed" / "mixed" clone None => InFlight::Discarded;
    producer_killed_after_setting_pos_before_the_commit_has_its_message_discarded:
        "send.pos" skip 20 sizes "mixed" / "mixed" clone None => InFlight::Discarded;
    producer_killed_after_setting_pos_of_a_loan_has_its_message_discarded:
        "send.pos" skip 21 sizes "mixed" / "mixed" clone None => InFlight::Discarded;
    producer_killed_right_after_the_commit_has_its_message_delivered:
        "send.commit" skip 20 sizes "mixed" / "mixed" clone None => InFlight::Delivered;
    producer_killed_right_after_committing_a_loan_has_its_message_delivered:
        "send.commit" skip 21 sizes "mixed" / "mixed" clone None => InFlight::Delivered;
    producer_killed_before_waking_readers_has_its_message_delivered:
        "send.published" skip 20 sizes "mixed" / "mixed" clone None => InFlight::Delivered;
    producer_killed_while_registering_a_cloned_sender_is_recovered:
        "register.cas" skip 2 sizes "mixed" / "mixed" clone Some(10) => InFlight::None(10);
}

/// Both producers send growing messages (1,000 + 500·seq bytes, 4–32 KiB segments) into a
/// payload pool of 128 KiB, so allocations keep trimming FREE slots' segments; P1 dies at
/// the third segment it empties, with the victim slot LOANED by it, the object truncated
/// and `seg_size` still the old size. Recovery frees the victim and P1's own slot; P2's
/// second half then can reuse a slot whose recorded size says more than the object holds
/// (it does in practice: with the size check before mapping removed, P2 dies of SIGBUS).
#[test]
fn producer_killed_while_trimming_a_segment_has_its_message_discarded() {
    let test = "producer_killed_while_trimming_a_segment_has_its_message_discarded";
    if let Some(r) = role() {
        child(&r)
    }
    producer_killed(ProducerCase {
        test,
        point: "send.trim",
        skip: 2,
        sizes: ("grow", "grow"),
        clone_at: None,
        fate: InFlight::Discarded,
        limits: Some((64 << 10, 128 << 10)),
    });
}

/// A producer killed while registering (monitor record: skip 0; sender record: skip 1)
/// while another producer streams: before its birth, and after its death.
fn producer_killed_while_opening(test: &str, skip: u64) {
    let _wd = Watchdog::new(test, LIMIT);
    let g = ShmGuard::new("crash");
    let dir = LogDir::new(&g.name);
    let (tx, rx) = Builder::new().name(&g.name).capacity(CAP).create().unwrap();
    let mut c1 = Proc::spawn_test(
        test,
        "c1",
        "consumer",
        &env(&g.name, &[("SHMQ_T_LOG", dir.file_str("c1"))]),
    );
    c1.expect("ready");
    let mut p2 = Proc::spawn_test(
        test,
        "p2",
        "producer",
        &env(
            &g.name,
            &[
                ("SHMQ_T_ID", "2".into()),
                ("SHMQ_T_COUNT", COUNT.to_string()),
                ("SHMQ_T_LOG", dir.file_str("p2")),
                ("SHMQ_T_GO_AT", (COUNT / 2).to_string()),
                ("SHMQ_T_GO", dir.file_str("go")),
            ],
        ),
    );
    p2.expect("ready");
    drop(tx);
    wait_until("p2 to send its first half", || {
        read_producer_log(&dir.file("p2")).len() as u64 == COUNT / 2
    });
    let mut p1_env = env(
        &g.name,
        &[
            ("SHMQ_T_ID", "1".into()),
            ("SHMQ_T_COUNT", COUNT.to_string()),
            ("SHMQ_T_LOG", dir.file_str("p1")),
        ],
    );
    p1_env.extend(crash_env("register.cas", skip));
    let mut p1 = Proc::spawn_test(test, "p1", "producer", &p1_env);
    p1.expect_killed("at register.cas while opening");
    dir.touch("go");
    let mut bad = Vec::new();
    let mut all = drain(&rx, "parent", &mut bad);
    p2.expect_success();
    c1.expect_success();
    all.extend(read_consumer_log(&dir.file("c1"), "c1", &mut bad));
    assert!(bad.is_empty(), "corrupt payloads: {bad:?}");
    assert!(read_producer_log(&dir.file("p1")).is_empty());
    let t = tally(&all);
    let expect: BTreeSet<(u64, u64)> = (0..COUNT).map(|s| (2, s)).collect();
    assert_eq!(t.keys().copied().collect::<BTreeSet<_>>(), expect);
    for (k, v) in &t {
        assert_eq!(v.len(), 1, "message {k:?} delivered {} times", v.len());
    }
    let tx = Sender::open(&g.name).unwrap();
    assert_all_slots_free(&tx, &rx, CAP, SLOTS);
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn producer_killed_while_registering_its_monitor_record_is_recovered() {
    if let Some(r) = role() {
        child(&r)
    }
    producer_killed_while_opening(
        "producer_killed_while_registering_its_monitor_record_is_recovered",
        0,
    );
}

#[test]
fn producer_killed_while_registering_its_sender_record_is_recovered() {
    if let Some(r) = role() {
        child(&r)
    }
    producer_killed_while_opening(
        "producer_killed_while_registering_its_sender_record_is_recovered",
        1,
    );
}

// ---------------------------------------------------------------------------------------
// Consumers killed

/// What the killed consumer held when it died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// A claimed message it had not reported yet (killed inside `recv`).
    Unreported,
    /// The message it had reported and was acking (killed before the slot was freed).
    Reported,
    /// Nothing (the ack completed).
    Nothing,
}

/// Consumer C1 alone consumes from producers P1, P2 and is killed at `point` (its
/// `skip + 1`-th hit); then consumer C2 and the parent finish the stream.
fn consumer_killed(test: &str, point: &str, skip: u64, delivery: Delivery, held: Held) {
    let _wd = Watchdog::new(test, LIMIT);
    let g = ShmGuard::new("crash");
    let dir = LogDir::new(&g.name);
    let (tx, rx) = Builder::new()
        .name(&g.name)
        .capacity(CAP)
        .delivery(delivery)
        .create()
        .unwrap();
    let mut c1_env = env(&g.name, &[("SHMQ_T_LOG", dir.file_str("c1"))]);
    c1_env.extend(crash_env(point, skip));
    let mut c1 = Proc::spawn_test(test, "c1", "consumer", &c1_env);
    c1.expect("ready");
    let mut ps: Vec<Proc> = (1..=2u64)
        .map(|id| {
            let mut p = Proc::spawn_test(
                test,
                &format!("p{id}"),
                "producer",
                &env(
                    &g.name,
                    &[
                        ("SHMQ_T_ID", id.to_string()),
                        ("SHMQ_T_COUNT", COUNT.to_string()),
                        ("SHMQ_T_LOG", dir.file_str(&format!("p{id}"))),
                    ],
                ),
            );
            p.expect("ready");
            p
        })
        .collect();
    drop(tx);
    c1.expect_killed(&format!(
        "at crash point {point} after skipping {skip} hits"
    ));
    let mut c2 = Proc::spawn_test(
        test,
        "c2",
        "consumer",
        &env(&g.name, &[("SHMQ_T_LOG", dir.file_str("c2"))]),
    );
    c2.expect("ready");
    let mut bad = Vec::new();
    let mut all = drain(&rx, "parent", &mut bad);
    for p in &mut ps {
        p.expect_success();
    }
    c2.expect_success();
    let c1_got = read_consumer_log(&dir.file("c1"), "c1", &mut bad);
    all.extend(c1_got.iter().cloned());
    all.extend(read_consumer_log(&dir.file("c2"), "c2", &mut bad));
    assert!(bad.is_empty(), "corrupt payloads: {bad:?}");

    // C1 was killed at its (skip+1)-th hit: inside its (skip+1)-th receive, or in the ack
    // of the (skip+1)-th message it had reported.
    let c1_expected = if point.starts_with("ack.") {
        skip + 1
    } else {
        skip
    };
    assert_eq!(
        c1_got.len() as u64,
        c1_expected,
        "c1 should have reported {c1_expected} messages before dying at {point}"
    );
    for id in 1..=2 {
        let n = contiguous(
            &format!("p{id}"),
            &read_producer_log(&dir.file(&format!("p{id}"))),
        );
        assert_eq!(n, COUNT, "producer {id} sent everything");
    }
    let ok: BTreeSet<(u64, u64)> = (1..=2u64)
        .flat_map(|id| (0..COUNT).map(move |s| (id, s)))
        .collect();
    let t = tally(&all);
    let extra: Vec<_> = t.keys().filter(|k| !ok.contains(k)).collect();
    assert!(extra.is_empty(), "messages nobody sent: {extra:?}");
    let flagged: Vec<&Got> = all.iter().filter(|g| g.redelivered).collect();
    let lost: Vec<&(u64, u64)> = ok.iter().filter(|k| !t.contains_key(k)).collect();
    let dups: Vec<(&(u64, u64), &Vec<Got>)> = t.iter().filter(|(_, v)| v.len() > 1).collect();
    eprintln!(
        "{test}: c1 killed at {point} ({delivery:?}) after reporting {}; redelivered {:?}; lost {lost:?}; duplicates {dups:?}",
        c1_got.len(),
        flagged
    );
    match delivery {
        Delivery::AtLeastOnce => {
            assert!(lost.is_empty(), "Ok-sent messages never received: {lost:?}");
            match held {
                Held::Nothing => {
                    assert!(
                        flagged.is_empty(),
                        "nothing was held, yet redelivered: {flagged:?}"
                    );
                    assert!(dups.is_empty(), "duplicates: {dups:?}");
                }
                Held::Unreported => {
                    assert_eq!(
                        flagged.len(),
                        1,
                        "the one held message is redelivered once: {flagged:?}"
                    );
                    let k = (flagged[0].id, flagged[0].seq);
                    assert_ne!(flagged[0].by, "c1");
                    assert!(
                        !c1_got.iter().any(|g| (g.id, g.seq) == k),
                        "c1 finished {k:?}, yet it was redelivered"
                    );
                    assert!(dups.is_empty(), "duplicates: {dups:?}");
                }
                Held::Reported => {
                    assert_eq!(
                        flagged.len(),
                        1,
                        "the one held message is redelivered once: {flagged:?}"
                    );
                    let k = (flagged[0].id, flagged[0].seq);
                    let last = c1_got
                        .last()
                        .expect("c1 reported the message it was acking");
                    assert_eq!(
                        (last.id, last.seq),
                        k,
                        "the redelivered message is the one c1 was acking"
                    );
                    assert_eq!(
                        dups.len(),
                        1,
                        "only the held message is duplicated: {dups:?}"
                    );
                    assert_eq!(*dups[0].0, k);
                    assert_eq!(dups[0].1.len(), 2);
                }
            }
        }
        Delivery::AtMostOnce => {
            assert!(
                flagged.is_empty(),
                "at-most-once never redelivers: {flagged:?}"
            );
            assert!(dups.is_empty(), "duplicates under at-most-once: {dups:?}");
            match held {
                Held::Unreported => assert_eq!(
                    lost.len(),
                    1,
                    "exactly the message c1 held is dropped: lost {lost:?}"
                ),
                Held::Reported | Held::Nothing => {
                    assert!(lost.is_empty(), "Ok-sent messages never received: {lost:?}")
                }
            }
        }
    }
    let info = shmq::info::inspect(&g.name).unwrap();
    eprintln!(
        "{test}: recoveries {} orphaned {} dropped {} discarded {}",
        info.recoveries, info.orphaned, info.dropped, info.discarded
    );
    let tx = Sender::open(&g.name).unwrap();
    assert_all_slots_free(&tx, &rx, CAP, SLOTS);
    drop((tx, rx));
    g.assert_clean();
}

macro_rules! consumer_tests {
    ($($name:ident: $point:literal skip $skip:literal $delivery:ident => $held:ident;)*) => {$(
        #[test]
        fn $name() {
            if let Some(r) = role() {
                child(&r)
            }
            consumer_killed(stringify!($name), $point, $skip, Delivery::$delivery, Held::$held);
        }
    )*};
}

consumer_tests! {
    consumer_killed_right_after_its_claim_has_the_message_redelivered:
        "recv.claim" skip 10 AtLeastOnce => Unreported;
    consumer_killed_after_clearing_the_cell_has_the_message_redelivered:
        "recv.cleared" skip 10 AtLeastOnce => Unreported;
    consumer_killed_before_returning_the_message_has_it_redelivered:
        "recv.claimed" skip 10 AtLeastOnce => Unreported;
    consumer_killed_in_the_middle_of_its_ack_has_the_message_redelivered:
        "ack.pos" skip 10 AtLeastOnce => Reported;
    consumer_killed_after_its_ack_freed_the_slot_has_nothing_redelivered:
        "ack.freed" skip 10 AtLeastOnce => Nothing;
    at_most_once_consumer_killed_right_after_its_claim_has_the_message_dropped:
        "recv.claim" skip 10 AtMostOnce => Unreported;
    at_most_once_consumer_killed_after_clearing_the_cell_has_the_message_dropped:
        "recv.cleared" skip 10 AtMostOnce => Unreported;
    at_most_once_consumer_killed_before_returning_the_message_has_it_dropped:
        "recv.claimed" skip 10 AtMostOnce => Unreported;
    at_most_once_consumer_killed_in_the_middle_of_its_ack_is_not_redelivered:
        "ack.pos" skip 10 AtMostOnce => Reported;
    at_most_once_consumer_killed_after_its_ack_is_not_redelivered:
        "ack.freed" skip 10 AtMostOnce => Nothing;
}

#[test]
fn consumer_killed_while_reclaiming_an_orphan_has_it_redelivered_again() {
    const TEST: &str = "consumer_killed_while_reclaiming_an_orphan_has_it_redelivered_again";
    if let Some(r) = role() {
        child(&r)
    }
    let _wd = Watchdog::new(TEST, LIMIT);
    let g = ShmGuard::new("crash");
    let dir = LogDir::new(&g.name);
    let (tx, rx) = Builder::new().name(&g.name).capacity(CAP).create().unwrap();
    let orphans = || shmq::info::inspect(&g.name).unwrap().slot_states[3];
    // C0 dies holding a message (recv.claimed) ...
    let mut c0_env = env(&g.name, &[("SHMQ_T_LOG", dir.file_str("c0"))]);
    c0_env.extend(crash_env("recv.claimed", 3));
    let mut c0 = Proc::spawn_test(TEST, "c0", "consumer", &c0_env);
    c0.expect("ready");
    let mut p1 = Proc::spawn_test(
        TEST,
        "p1",
        "producer",
        &env(
            &g.name,
            &[
                ("SHMQ_T_ID", "1".into()),
                ("SHMQ_T_COUNT", COUNT.to_string()),
                ("SHMQ_T_LOG", dir.file_str("p1")),
            ],
        ),
    );
    p1.expect("ready");
    drop(tx);
    c0.expect_killed("at recv.claimed");
    // ... which the supervisors make ORPHAN ...
    wait_until("the held message to become ORPHAN", || orphans() == 1);
    // ... C1 reclaims it first thing and dies right there ...
    let mut c1_env = env(&g.name, &[("SHMQ_T_LOG", dir.file_str("c1"))]);
    c1_env.extend(crash_env("orphan.claim", 0));
    let mut c1 = Proc::spawn_test(TEST, "c1", "consumer", &c1_env);
    c1.expect_killed("at orphan.claim");
    // ... so it is ORPHAN again, and C2 and the parent finish.
    wait_until("the held message to become ORPHAN", || orphans() == 1);
    let mut c2 = Proc::spawn_test(
        TEST,
        "c2",
        "consumer",
        &env(&g.name, &[("SHMQ_T_LOG", dir.file_str("c2"))]),
    );
    c2.expect("ready");
    let mut bad = Vec::new();
    let mut all = drain(&rx, "parent", &mut bad);
    p1.expect_success();
    c2.expect_success();
    let c0_got = read_consumer_log(&dir.file("c0"), "c0", &mut bad);
    assert_eq!(
        c0_got.len(),
        3,
        "c0 reported 3 messages before dying in its 4th receive"
    );
    assert!(
        read_consumer_log(&dir.file("c1"), "c1", &mut bad).is_empty(),
        "c1 died in its first receive"
    );
    all.extend(c0_got);
    all.extend(read_consumer_log(&dir.file("c2"), "c2", &mut bad));
    assert!(bad.is_empty(), "corrupt payloads: {bad:?}");
    assert_eq!(contiguous("p1", &read_producer_log(&dir.file("p1"))), COUNT);
    let t = tally(&all);
    let expect: BTreeSet<(u64, u64)> = (0..COUNT).map(|s| (1, s)).collect();
    assert_eq!(
        t.keys().copied().collect::<BTreeSet<_>>(),
        expect,
        "every message, nothing else"
    );
    for (k, v) in &t {
        assert_eq!(
            v.len(),
            1,
            "message {k:?} delivered {} times: {v:?}",
            v.len()
        );
    }
    let flagged: Vec<&Got> = all.iter().filter(|g| g.redelivered).collect();
    assert_eq!(
        flagged.len(),
        1,
        "the orphan is redelivered once more: {flagged:?}"
    );
    assert_eq!(
        (flagged[0].id, flagged[0].seq),
        (1, 3),
        "c0 held seq 3 (single producer, single consumer: FIFO)"
    );
    let tx = Sender::open(&g.name).unwrap();
    assert_all_slots_free(&tx, &rx, CAP, SLOTS);
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn at_most_once_drops_the_message_a_sigkilled_consumer_held() {
    const TEST: &str = "at_most_once_drops_the_message_a_sigkilled_consumer_held";
    if let Some(r) = role() {
        child(&r)
    }
    let _wd = Watchdog::new(TEST, LIMIT);
    let g = ShmGuard::new("crash");
    let (tx, rx) = Builder::new()
        .name(&g.name)
        .capacity(CAP)
        .delivery(Delivery::AtMostOnce)
        .create()
        .unwrap();
    let mut c = Proc::spawn_test(
        TEST,
        "holder",
        "holder",
        &env(&g.name, &[("SHMQ_T_HOLD", "1".into())]),
    );
    c.expect("ready");
    tx.send(&payload(0, 0, 5000)).unwrap();
    assert_eq!(c.expect("holding"), "0 0");
    for seq in 1..=3 {
        tx.send(&payload(0, seq, mixed_size(0, seq))).unwrap();
    }
    c.kill();
    c.expect_killed("by the test");
    // The parent's supervisor thread recovers it.
    wait_until("the killed consumer to be recovered", || {
        shmq::info::inspect(&g.name).unwrap().participants.len() == 3
    });
    let info = shmq::info::inspect(&g.name).unwrap();
    assert_eq!(info.dropped, 1, "the held message is counted as dropped");
    assert_eq!(
        info.slot_states[2..],
        [0, 0],
        "nothing held, nothing orphaned"
    );
    for seq in 1..=3 {
        let m = rx.try_recv().unwrap();
        assert_eq!(check(&m), Ok((0, seq)));
        assert!(!m.is_redelivery());
    }
    assert!(
        matches!(rx.try_recv(), Err(shmq::TryRecvError::Empty)),
        "the held message must not come back under at-most-once"
    );
    assert_all_slots_free(&tx, &rx, CAP, SLOTS);
    drop((tx, rx));
    g.assert_clean();
}

// ---------------------------------------------------------------------------------------
// Recovery killed halfway

/// A consumer holding two messages and a producer with three committed messages and two
/// unsent loans are SIGKILLed (nobody recovers them: everyone is in manual mode); a
/// process that recovers them (`killer`) is killed at `point`; a fresh consumer then
/// opens the queue, finishes the recovery (taking the lease over from the dead) and
/// drains it.
fn recovery_killed(test: &str, killer: &str, point: &str, skip: u64) {
    let _wd = Watchdog::new(test, LIMIT);
    let g = ShmGuard::new("crash");
    let dir = LogDir::new(&g.name);
    let (tx, rx) = Builder::new()
        .name(&g.name)
        .capacity(CAP)
        .supervision(Supervision::Manual)
        .create()
        .unwrap();
    let manual = ("SHMQ_T_SUP", "manual".to_string());
    let mut holder = Proc::spawn_test(
        test,
        "holder",
        "holder",
        &env(&g.name, &[("SHMQ_T_HOLD", "2".into()), manual.clone()]),
    );
    holder.expect("ready");
    for seq in 0..2 {
        tx.send(&payload(0, seq, mixed_size(0, seq))).unwrap();
    }
    assert_eq!(holder.expect("holding"), "0 0 0 1");
    let mut loaner = Proc::spawn_test(
        test,
        "loaner",
        "loaner",
        &env(
            &g.name,
            &[
                ("SHMQ_T_ID", "1".into()),
                ("SHMQ_T_SENDS", "3".into()),
                ("SHMQ_T_LOANS", "2".into()),
                ("SHMQ_T_LOG", dir.file_str("p1")),
                manual,
            ],
        ),
    );
    loaner.expect("loaned");
    drop(tx);
    holder.kill();
    loaner.kill();
    holder.expect_killed("by the test");
    loaner.expect_killed("by the test");
    let info = shmq::info::inspect(&g.name).unwrap();
    assert_eq!(
        info.slot_states,
        [SLOTS as u64 - 7, 5, 2, 0],
        "before recovery: 3 committed + 2 loaned, 2 held"
    );
    assert_eq!(
        info.dead(),
        4,
        "two monitors, a sender and a receiver died: {:?}",
        info.participants
    );

    let mut s_env = env(&g.name, &[("SHMQ_T_MODE", killer.to_string())]);
    s_env.extend(crash_env(point, skip));
    let mut s = Proc::spawn_test(test, "recoverer", "recoverer", &s_env);
    s.expect_killed(&format!("at {point} (skip {skip}) while recovering"));
    let info = shmq::info::inspect(&g.name).unwrap();
    let holder_idx = info
        .lease_holder
        .expect("the recoverer died holding the recovery lease");
    let lease_rec = info
        .participants
        .iter()
        .find(|p| p.index == holder_idx)
        .expect("the lease names a taken record");
    assert!(!lease_rec.alive, "the lease holder is dead");
    eprintln!(
        "{test}: after the recoverer died at {point}: slots {:?}, {} dead records, lease held by dead record {holder_idx}",
        info.slot_states,
        info.dead()
    );

    // Another process finishes the recovery: its open() repairs, stealing the lease.
    let mut c2 = Proc::spawn_test(
        test,
        "c2",
        "consumer",
        &env(&g.name, &[("SHMQ_T_LOG", dir.file_str("c2"))]),
    );
    c2.expect("ready");
    c2.expect_success();
    let mut bad = Vec::new();
    let got = read_consumer_log(&dir.file("c2"), "c2", &mut bad);
    assert!(bad.is_empty(), "corrupt payloads: {bad:?}");
    assert_eq!(contiguous("p1", &read_producer_log(&dir.file("p1"))), 3);
    let mut got: Vec<(u64, u64, bool)> = got.iter().map(|g| (g.id, g.seq, g.redelivered)).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (0, 0, true),
            (0, 1, true),
            (1, 0, false),
            (1, 1, false),
            (1, 2, false)
        ],
        "the held messages redelivered, the committed ones delivered, the loans discarded"
    );
    let tx = Sender::open(&g.name).unwrap();
    assert_all_slots_free(&tx, &rx, CAP, SLOTS);
    drop((tx, rx));
    g.assert_clean();
}

macro_rules! recovery_tests {
    ($($name:ident: $killer:literal $point:literal skip $skip:literal;)*) => {$(
        #[test]
        fn $name() {
            if let Some(r) = role() {
                child(&r)
            }
            recovery_killed(stringify!($name), $killer, $point, $skip);
        }
    )*};
}

recovery_tests! {
    supervisor_killed_after_its_first_slot_repair_is_finished_by_another_process:
        "supervisor" "recover.slot" skip 0;
    supervisor_killed_after_its_last_slot_repair_is_finished_by_another_process:
        "supervisor" "recover.slot" skip 3;
    supervisor_killed_after_releasing_a_dead_record_is_finished_by_another_process:
        "supervisor" "recover.release" skip 0;
    supervisor_killed_after_releasing_the_third_dead_record_is_finished_by_another_process:
        "supervisor" "recover.release" skip 2;
    supervisor_killed_between_orphaning_a_held_message_and_raising_the_hint_is_finished_by_another_process:
        "supervisor" "giveup.orphaned" skip 0;
    supervisor_killed_after_orphaning_the_second_held_message_is_finished_by_another_process:
        "supervisor" "giveup.orphaned" skip 1;
    receiver_killed_while_its_open_repairs_a_slot_is_finished_by_another_process:
        "open" "recover.slot" skip 1;
    receiver_killed_while_its_open_releases_a_dead_record_is_finished_by_another_process:
        "open" "recover.release" skip 1;
}

// ---------------------------------------------------------------------------------------
// Blocked peers of a killed process

fn sup_env(s: Supervision) -> (&'static str, String) {
    (
        "SHMQ_T_SUP",
        match s {
            Supervision::Thread => "thread",
            Supervision::Manual => "manual",
        }
        .to_string(),
    )
}

/// The parent blocks in `recv` on an empty queue whose only sender is a child; the child
/// is SIGKILLed; `recv` must return `Disconnected` (the child is left a zombie until
/// afterwards: nothing but the blocked call itself can notice in manual mode).
fn blocked_receiver_disconnected(test: &str, sup: Supervision) {
    let _wd = Watchdog::new(test, LIMIT);
    let g = ShmGuard::new("crash");
    let dir = LogDir::new(&g.name);
    let (tx, rx) = Builder::new()
        .name(&g.name)
        .capacity(CAP)
        .supervision(sup)
        .create()
        .unwrap();
    drop(tx);
    let mut p = Proc::spawn_test(
        test,
        "loaner",
        "loaner",
        &env(
            &g.name,
            &[
                ("SHMQ_T_ID", "1".into()),
                ("SHMQ_T_SENDS", "2".into()),
                ("SHMQ_T_LOANS", "1".into()),
                ("SHMQ_T_LOG", dir.file_str("p1")),
                sup_env(sup),
            ],
        ),
    );
    p.expect("loaned");
    for seq in 0..2 {
        let m = rx.recv().unwrap();
        assert_eq!(check(&m), Ok((1, seq)));
    }
    let waiter = std::thread::spawn(move || {
        let r = rx.recv();
        (r.map(|m| check(&m)), Instant::now(), rx)
    });
    std::thread::sleep(Duration::from_millis(250));
    assert!(
        !waiter.is_finished(),
        "recv returned while the sender was alive"
    );
    let t0 = Instant::now();
    p.kill();
    let (r, t1, rx) = waiter.join().unwrap();
    assert!(
        matches!(r, Err(shmq::RecvError::Disconnected)),
        "blocked recv after its last sender was killed: {r:?}"
    );
    eprintln!(
        "{test}: recv returned Disconnected {:.1} ms after the kill ({sup:?})",
        ms(t1.duration_since(t0))
    );
    p.expect_killed("by the test");
    let tx = Sender::open(&g.name).unwrap();
    assert_all_slots_free(&tx, &rx, CAP, SLOTS);
    drop((tx, rx));
    g.assert_clean();
}

/// The parent blocks in `send` on a full queue whose only receiver is a child holding a
/// message; the child is SIGKILLed; `send` must return `Disconnected`. Then the held
/// message comes back as a redelivery to a new receiver.
fn blocked_sender_disconnected(test: &str, sup: Supervision) {
    let _wd = Watchdog::new(test, LIMIT);
    let g = ShmGuard::new("crash");
    let (tx, rx) = Builder::new()
        .name(&g.name)
        .capacity(CAP)
        .supervision(sup)
        .create()
        .unwrap();
    drop(rx);
    let mut c = Proc::spawn_test(
        test,
        "holder",
        "holder",
        &env(&g.name, &[("SHMQ_T_HOLD", "1".into()), sup_env(sup)]),
    );
    c.expect("ready");
    tx.send(&payload(0, 0, 300)).unwrap();
    assert_eq!(c.expect("holding"), "0 0");
    for seq in 1..=CAP as u64 {
        tx.try_send(&payload(0, seq, mixed_size(0, seq))).unwrap();
    }
    assert!(matches!(
        tx.try_send(&payload(0, 99, 40)),
        Err(shmq::TrySendError::Full)
    ));
    let waiter = std::thread::spawn(move || {
        let r = tx.send(&payload(0, 99, 40));
        (r, Instant::now(), tx)
    });
    std::thread::sleep(Duration::from_millis(250));
    assert!(
        !waiter.is_finished(),
        "send returned while the queue was full"
    );
    let t0 = Instant::now();
    c.kill();
    let (r, t1, tx) = waiter.join().unwrap();
    assert!(
        matches!(r, Err(shmq::SendError::Disconnected)),
        "blocked send after its last receiver was killed: {r:?}"
    );
    eprintln!(
        "{test}: send returned Disconnected {:.1} ms after the kill ({sup:?})",
        ms(t1.duration_since(t0))
    );
    c.expect_killed("by the test");
    let rx = Receiver::open(&g.name).unwrap();
    let m = rx.try_recv().unwrap();
    assert_eq!(check(&m), Ok((0, 0)));
    assert!(
        m.is_redelivery(),
        "the killed receiver's message comes back"
    );
    drop(m);
    for seq in 1..=CAP as u64 {
        let m = rx.try_recv().unwrap();
        assert_eq!(check(&m), Ok((0, seq)));
        assert!(!m.is_redelivery());
    }
    assert_all_slots_free(&tx, &rx, CAP, SLOTS);
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn blocked_receiver_gets_disconnected_when_its_last_sender_is_killed_with_a_supervisor_thread() {
    if let Some(r) = role() {
        child(&r)
    }
    blocked_receiver_disconnected(
        "blocked_receiver_gets_disconnected_when_its_last_sender_is_killed_with_a_supervisor_thread",
        Supervision::Thread,
    );
}

#[test]
fn blocked_receiver_gets_disconnected_when_its_last_sender_is_killed_in_manual_mode() {
    if let Some(r) = role() {
        child(&r)
    }
    blocked_receiver_disconnected(
        "blocked_receiver_gets_disconnected_when_its_last_sender_is_killed_in_manual_mode",
        Supervision::Manual,
    );
}

#[test]
fn blocked_sender_gets_disconnected_when_its_last_receiver_is_killed_with_a_supervisor_thread() {
    if let Some(r) = role() {
        child(&r)
    }
    blocked_sender_disconnected(
        "blocked_sender_gets_disconnected_when_its_last_receiver_is_killed_with_a_supervisor_thread",
        Supervision::Thread,
    );
}

#[test]
fn blocked_sender_gets_disconnected_when_its_last_receiver_is_killed_in_manual_mode() {
    if let Some(r) = role() {
        child(&r)
    }
    blocked_sender_disconnected(
        "blocked_sender_gets_disconnected_when_its_last_receiver_is_killed_in_manual_mode",
        Supervision::Manual,
    );
}

#[test]
fn blocked_sender_gets_disconnected_when_its_last_receiver_dies_registering_a_clone() {
    const TEST: &str =
        "blocked_sender_gets_disconnected_when_its_last_receiver_dies_registering_a_clone";
    if let Some(r) = role() {
        child(&r)
    }
    let _wd = Watchdog::new(TEST, LIMIT);
    let g = ShmGuard::new("crash");
    let dir = LogDir::new(&g.name);
    let (tx, rx) = Builder::new().name(&g.name).capacity(CAP).create().unwrap();
    let mut c_env = env(&g.name, &[("SHMQ_T_GO", dir.file_str("go"))]);
    // Hits: 0 the monitor record, 1 the receiver, 2 its clone.
    c_env.extend(crash_env("register.cas", 2));
    let mut c = Proc::spawn_test(TEST, "cloner", "cloning-receiver", &c_env);
    c.expect("ready");
    drop(rx);
    for seq in 0..CAP as u64 {
        tx.try_send(&payload(0, seq, 100)).unwrap();
    }
    let waiter = std::thread::spawn(move || {
        let r = tx.send(&payload(0, 99, 40));
        (r, tx)
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !waiter.is_finished(),
        "send returned while the queue was full"
    );
    dir.touch("go");
    c.expect_killed("at register.cas while cloning its receiver");
    let (r, tx) = waiter.join().unwrap();
    assert!(
        matches!(r, Err(shmq::SendError::Disconnected)),
        "a half-registered dead receiver must not keep the sender connected: {r:?}"
    );
    let rx = Receiver::open(&g.name).unwrap();
    for seq in 0..CAP as u64 {
        assert_eq!(check(&rx.try_recv().unwrap()), Ok((0, seq)));
    }
    assert_all_slots_free(&tx, &rx, CAP, SLOTS);
    drop((tx, rx));
    g.assert_clean();
}

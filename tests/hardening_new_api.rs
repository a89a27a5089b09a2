//! Issue 11, defect 7: the API the fix adds (this file does not compile against main at
//! 2c7ff0e, which has none of it):
//!
//! * `Message::delivery_count() -> u32`: 1 on the first delivery, 2 once the message was
//!   redelivered after its first holder was SIGKILLed;
//! * `Builder::max_deliveries(n: u32)`: a message delivered `n` times without being
//!   acknowledged (a poison message that crashes every consumer taking it) is set aside,
//!   and the messages behind it keep flowing;
//! * `shmq::info::QueueInfo::dead_letters: u64`: how many messages were set aside (shown
//!   by `shmq inspect`).

mod common;

use common::{as_child, param, wait_for_file, write_atomic, Child, ShmGuard, TempDir, Watchdog};
use shmq::{Builder, RecvTimeoutError};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(90);
const T: Duration = Duration::from_secs(5);

fn dir_file(name: &str) -> PathBuf {
    PathBuf::from(param("DIR")).join(name)
}

fn child_role(role: &str) {
    let name = param("NAME");
    match role {
        // Receives one message, writes its delivery count, and holds it until killed.
        "holder" => {
            let rx = shmq::Receiver::open(&name).unwrap();
            let m = rx.recv_timeout(T).expect("holder recv");
            write_atomic(
                dir_file("held"),
                format!("{} {}", m.delivery_count(), m.is_redelivery()),
            );
            std::thread::sleep(Duration::from_secs(60));
            panic!("holder was not killed");
        }
        // Receives until the queue stays empty for a second. Appends each message's text
        // and delivery count to `log` (flushed) before acknowledging it; aborts on a
        // message that starts with POISON, as a consumer that crashes on bad input.
        "consumer" => {
            let rx = shmq::Receiver::open(&name).unwrap();
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir_file("log"))
                .unwrap();
            loop {
                match rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(m) => {
                        if m.starts_with(b"POISON") {
                            writeln!(log, "poison {}", m.delivery_count()).unwrap();
                            log.sync_all().unwrap();
                            std::process::abort();
                        }
                        writeln!(
                            log,
                            "{} {}",
                            String::from_utf8_lossy(&m),
                            m.delivery_count()
                        )
                        .unwrap();
                        log.sync_all().unwrap();
                        drop(m);
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(e) => panic!("consumer recv: {e:?}"),
                }
            }
        }
        r => panic!("unknown role {r}"),
    }
}

/// A message's delivery count is 1 on its first delivery and 2 after its holder was
/// SIGKILLed and it was redelivered.
#[test]
fn delivery_count_counts_redeliveries_after_a_holder_is_killed() {
    as_child(child_role);
    let _wd = Watchdog::new("delivery_count", LIMIT);
    let g = ShmGuard::new("dcount");
    let dir = TempDir::new("dcount");
    let (tx, rx) = Builder::new().name(g.name()).capacity(4).create().unwrap();
    // A message received and acked at once was delivered once.
    tx.send(b"plain").unwrap();
    let m = rx.recv_timeout(T).unwrap();
    assert_eq!((m.delivery_count(), m.is_redelivery()), (1, false));
    drop(m);

    tx.send(b"held-then-killed").unwrap();
    let mut holder = Child::spawn(
        "delivery_count_counts_redeliveries_after_a_holder_is_killed",
        "holder",
        &[("NAME", &g.name()), ("DIR", &dir.path().display())],
    );
    wait_for_file(dir.join("held"), Some(&mut holder));
    assert_eq!(
        std::fs::read_to_string(dir.join("held")).unwrap(),
        "1 false",
        "first delivery: delivery_count 1, not a redelivery"
    );
    holder.kill();
    let m = rx.recv_timeout(T).expect("the redelivered message");
    assert_eq!(&*m, b"held-then-killed");
    assert!(m.is_redelivery());
    assert_eq!(m.delivery_count(), 2, "second delivery");
    drop(m);
    drop((tx, rx));
    g.assert_clean();
}

/// A poison message (every consumer that takes it aborts) is delivered `max_deliveries`
/// times, then set aside and counted in `dead_letters`; every other message is delivered
/// exactly once, in order. The consumer is restarted after each crash, at most
/// `max_deliveries + 1` times.
#[test]
fn a_poison_message_is_set_aside_after_max_deliveries_and_the_rest_flow() {
    as_child(child_role);
    let _wd = Watchdog::new("poison", LIMIT);
    const MAX: u32 = 3;
    let g = ShmGuard::new("poison");
    let dir = TempDir::new("poison");
    let (tx, rx) = Builder::new()
        .name(g.name())
        .capacity(16)
        .max_deliveries(MAX)
        .create()
        .unwrap();
    // Consumers are the children; `_rx` (never used) keeps sends from being
    // `Disconnected` before the first consumer attaches.
    let _rx = rx;
    for i in 0..5 {
        tx.send(format!("msg-{i}").as_bytes()).unwrap();
    }
    tx.send(b"POISON pill").unwrap();
    for i in 5..10 {
        tx.send(format!("msg-{i}").as_bytes()).unwrap();
    }
    let mut aborts = 0u32;
    let mut clean_exit = false;
    for run in 0..=MAX {
        let mut c = Child::spawn(
            "a_poison_message_is_set_aside_after_max_deliveries_and_the_rest_flow",
            "consumer",
            &[("NAME", &g.name()), ("DIR", &dir.path().display())],
        );
        let st = c.wait();
        if st.signal() == Some(libc::SIGABRT) {
            aborts += 1;
            continue;
        }
        assert_eq!(
            st.code(),
            Some(common::CHILD_OK),
            "consumer run {run} failed: {st:?}"
        );
        clean_exit = true;
        break;
    }
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let poison: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("poison"))
        .collect();
    let others: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.starts_with("poison"))
        .collect();
    assert!(
        clean_exit,
        "the consumer still crashed on its {}th start: the poison message was never set \
         aside (deliveries: {poison:?})",
        MAX + 1
    );
    assert_eq!(aborts, MAX, "consumer crashes, log:\n{log}");
    assert_eq!(
        poison,
        (1..=MAX).map(|k| format!("poison {k}")).collect::<Vec<_>>(),
        "the poison message's deliveries, with their counts"
    );
    let want: Vec<String> = (0..10).map(|i| format!("msg-{i} 1")).collect();
    assert_eq!(
        others, want,
        "every other message exactly once, in order, on its first delivery"
    );
    let info = shmq::info::inspect(g.name()).unwrap();
    assert_eq!(info.dead_letters, 1, "messages set aside");
    assert_eq!(info.depth, 0, "nothing left queued");
    drop((tx, _rx));
    g.assert_clean();
}

/// Without `max_deliveries`, the default limit is finite: a poison message does not
/// crash consumers forever (at most this many restarts are tried).
#[test]
fn the_default_delivery_limit_is_finite() {
    as_child(child_role);
    let _wd = Watchdog::new("default_limit", Duration::from_secs(300));
    const TRIES: u32 = 20;
    let g = ShmGuard::new("deflimit");
    let dir = TempDir::new("deflimit");
    let (tx, rx) = Builder::new().name(g.name()).capacity(4).create().unwrap();
    let _rx = rx; // see above
    tx.send(b"POISON pill").unwrap();
    tx.send(b"msg-after").unwrap();
    let mut runs = 0;
    loop {
        runs += 1;
        assert!(
            runs <= TRIES,
            "the poison message was still delivered after {TRIES} crashes"
        );
        let mut c = Child::spawn(
            "the_default_delivery_limit_is_finite",
            "consumer",
            &[("NAME", &g.name()), ("DIR", &dir.path().display())],
        );
        if c.wait().signal() != Some(libc::SIGABRT) {
            break;
        }
    }
    let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
    assert!(
        log.lines().any(|l| l == "msg-after 1"),
        "the message behind the poison one was delivered once, log:\n{log}"
    );
    assert_eq!(shmq::info::inspect(g.name()).unwrap().dead_letters, 1);
    drop((tx, _rx));
    g.assert_clean();
}

/// `unacked` counts this sender's messages until each is dropped by a receiver (queued and
/// held alike), not another sender's; `wait_for_acks_below(n)` returns once fewer than
/// `n` are left, woken by the ack in another thread, and times out while `n` remain.
#[test]
fn unacked_counts_this_senders_messages_and_wait_for_acks_below_wakes_on_an_ack() {
    let (tx, rx) = shmq::channel(8).unwrap();
    let _guard = ShmGuard::for_name(tx.name());
    let other = tx.try_clone().unwrap();
    other.send(b"not mine").unwrap();
    for i in 0..3u8 {
        tx.send(&[i; 300]).unwrap();
    }
    assert_eq!(tx.unacked(), 3);
    assert_eq!(other.unacked(), 1);
    let held = rx.recv().unwrap(); // other's message, held
    let mine = rx.recv().unwrap(); // tx's first, held: still unacknowledged
    assert_eq!(tx.unacked(), 3);
    assert!(tx
        .wait_for_acks_below(3, Some(Duration::from_millis(20)))
        .is_err());
    assert!(tx.wait_for_acks_below(4, Some(Duration::ZERO)).is_ok());
    assert!(tx.wait_for_acks_below(3, Some(Duration::ZERO)).is_err()); // looks once
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        drop(mine);
    });
    tx.wait_for_acks_below(3, Some(Duration::from_secs(30)))
        .expect("the ack in the other thread wakes the wait");
    t.join().unwrap();
    assert_eq!(tx.unacked(), 2);
    drop(held);
    assert_eq!(other.unacked(), 0);
    while let Ok(m) = rx.try_recv() {
        drop(m);
    }
    assert_eq!(tx.unacked(), 0);
    assert!(tx.wait_for_acks_below(0, Some(Duration::ZERO)).is_ok());
}

/// `QueueInfo::records` lists every participant record, free ones too: a handle that
/// attached and left leaves its pid and a new generation behind, so two snapshots show
/// that someone came and went between them (what the Python binding's hand-over holds
/// rely on).
#[test]
fn records_show_a_participant_that_came_and_went_between_two_snapshots() {
    let (tx, _rx) = shmq::channel(4).unwrap();
    let _guard = ShmGuard::for_name(tx.name());
    let before = shmq::info::inspect(tx.name()).unwrap().records;
    assert_eq!(before.len(), 64); // the default max_participants
    let extra = shmq::Receiver::open(tx.name()).unwrap();
    let during = shmq::info::inspect(tx.name()).unwrap().records;
    drop(extra);
    let after = shmq::info::inspect(tx.name()).unwrap().records;
    let changed: Vec<usize> = (0..before.len())
        .filter(|&i| before[i] != after[i])
        .collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    let i = changed[0];
    assert!(during[i].active && !after[i].active);
    assert_eq!(after[i].generation, before[i].generation.wrapping_add(1));
    assert_eq!(after[i].pid, std::process::id());
}

//! Blocking and non-blocking behaviour: `Full`/`Empty`, timeouts that never return before
//! their deadline, wake-ups across processes (blocked receivers by a send, blocked senders
//! by a receive), `wait_for_acks`, and disconnection (clean exits and SIGKILL).
//!
//! Times are only ever checked from below (elapsed >= deadline): an upper bound would make
//! the suite flaky on a loaded CI machine. Anything that could hang runs under a watchdog.

mod common;

use common::{
    as_child, mix, param, param_as, touch, wait_for_file, write_atomic, Child, ShmGuard, TempDir,
    Watchdog,
};
use shmq::{RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError, TrySendError};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);
const DEADLINES: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(1),
    Duration::from_millis(50),
    Duration::from_millis(250),
];

fn create(g: &ShmGuard, capacity: usize) -> (shmq::Sender, shmq::Receiver) {
    shmq::Builder::new()
        .name(g.name())
        .capacity(capacity)
        .create()
        .expect("create queue")
}

fn num(i: u64) -> [u8; 8] {
    i.to_le_bytes()
}

fn as_num(m: &[u8]) -> u64 {
    u64::from_le_bytes(m.try_into().expect("an 8-byte message"))
}

/// A short pause now and then so the other side really goes to sleep on the futex.
fn jitter(i: u64) {
    let r = mix(i) % 8;
    if r == 0 {
        std::thread::sleep(Duration::from_micros(300 + mix(!i) % 1000));
    } else if r == 1 {
        std::thread::yield_now();
    }
}

fn dir_file(name: &str) -> PathBuf {
    PathBuf::from(param("DIR")).join(name)
}

fn child_role(role: &str) {
    let name = param("NAME");
    match role {
        // Echoes N numbers from NAME to BACK, after an initial pause.
        "pong" => {
            let rx = shmq::Receiver::open(&name).unwrap();
            let tx = shmq::Sender::open(&param("BACK")).unwrap();
            let n: u64 = param_as("N");
            std::thread::sleep(Duration::from_millis(300));
            for i in 0..n {
                let m = rx.recv().expect("pong recv");
                assert_eq!(as_num(&m), i, "pong got message out of order");
                drop(m);
                jitter(i);
                tx.send(&num(i)).expect("pong send");
            }
        }
        // Receives N numbers slowly, after an initial pause.
        "slow_receiver" => {
            let rx = shmq::Receiver::open(&name).unwrap();
            let n: u64 = param_as("N");
            touch(dir_file("attached"));
            std::thread::sleep(Duration::from_millis(300));
            for i in 0..n {
                jitter(i);
                let m = rx.recv().expect("slow receiver recv");
                assert_eq!(as_num(&m), i, "slow receiver got message out of order");
            }
        }
        // Receives K messages, holds them until told, then drops them one by one, writing
        // how many drops have begun before each.
        "holder" => {
            let rx = shmq::Receiver::open(&name).unwrap();
            let k: u64 = param_as("K");
            let held: Vec<_> = (0..k)
                .map(|i| {
                    let m = rx.recv().expect("holder recv");
                    assert_eq!(as_num(&m), i);
                    m
                })
                .collect();
            touch(dir_file("held"));
            wait_for_file(dir_file("release"), None);
            for (i, m) in held.into_iter().enumerate() {
                std::thread::sleep(Duration::from_millis(100));
                write_atomic(dir_file("started"), (i + 1).to_string());
                drop(m);
            }
        }
        // Sends "first"; on GO sends two more; lingers, then exits cleanly.
        "sender_exits" => {
            let tx = shmq::Sender::open(&name).unwrap();
            tx.send(b"first").unwrap();
            wait_for_file(dir_file("go"), None);
            tx.send(b"second").unwrap();
            tx.send(b"third").unwrap();
            std::thread::sleep(Duration::from_millis(300));
        }
        // Attaches as a receiver, on GO lingers and exits cleanly without receiving.
        "receiver_exits" => {
            let rx = shmq::Receiver::open(&name).unwrap();
            touch(dir_file("attached"));
            wait_for_file(dir_file("go"), None);
            std::thread::sleep(Duration::from_millis(300));
            drop(rx);
        }
        // Receives two messages and holds them; on GO drops the first (saying so just
        // before), then receives the rest.
        "slot_holder" => {
            let rx = shmq::Receiver::open(&name).unwrap();
            let m0 = rx.recv().unwrap();
            let m1 = rx.recv().unwrap();
            assert_eq!((as_num(&m0), as_num(&m1)), (0, 1));
            touch(dir_file("held"));
            wait_for_file(dir_file("go"), None);
            std::thread::sleep(Duration::from_millis(300));
            touch(dir_file("dropping"));
            drop(m0);
            assert_eq!(as_num(&rx.recv().unwrap()), 2);
            assert_eq!(as_num(&rx.recv().unwrap()), 3);
            drop(m1);
        }
        // Attaches a sender; exits cleanly once EXIT appears.
        "sender_lingers" => {
            let tx = shmq::Sender::open(&name).unwrap();
            let id = param("ID");
            touch(dir_file(&format!("attached-{id}")));
            wait_for_file(dir_file(&format!("exit-{id}")), None);
            drop(tx);
        }
        // Attaches a sender, then forks a grandchild that closes every inherited
        // descriptor but keeps the inherited mapping of the header for 1.5 s (as a
        // fork-then-exec child does until its exec); waits to be killed.
        "victim_with_lingering_mapping" => {
            let _tx = shmq::Sender::open(&name).unwrap();
            // SAFETY: the child calls only async-signal-safe functions, then _exit.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: plain syscalls in the forked child.
                unsafe {
                    libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                    let ts = libc::timespec {
                        tv_sec: 1,
                        tv_nsec: 500_000_000,
                    };
                    libc::nanosleep(&ts, std::ptr::null_mut());
                    libc::_exit(0);
                }
            }
            assert!(pid > 0, "fork failed");
            write_atomic(dir_file("grandchild"), pid.to_string());
            touch(dir_file("attached"));
            std::thread::sleep(Duration::from_secs(60));
            panic!("victim was not killed");
        }
        // Attaches (as ROLE) and waits to be killed.
        "victim" => {
            let _h: Box<dyn std::any::Any> = match param("AS").as_str() {
                "sender" => Box::new(shmq::Sender::open(&name).unwrap()),
                _ => Box::new(shmq::Receiver::open(&name).unwrap()),
            };
            touch(dir_file("attached"));
            std::thread::sleep(Duration::from_secs(60));
            panic!("victim was not killed");
        }
        r => panic!("unknown role {r}"),
    }
}

#[test]
fn try_send_on_a_full_queue_returns_full_until_a_recv_makes_room() {
    let _wd = Watchdog::new("try_send_full", LIMIT);
    let g = ShmGuard::new("full");
    let (tx, rx) = create(&g, 5);
    assert_eq!(tx.capacity(), 5);
    for i in 0..5 {
        tx.try_send(&num(i))
            .unwrap_or_else(|e| panic!("try_send #{i} of 5: {e}"));
    }
    assert!(tx.is_full() && rx.is_full());
    assert_eq!(tx.len(), 5);
    assert!(matches!(tx.try_send(&num(5)), Err(TrySendError::Full)));
    assert!(matches!(tx.try_send(b""), Err(TrySendError::Full)));
    // A loan that cannot be sent comes back to the caller, contents intact.
    let mut loan = tx.try_loan(3000).expect("a payload slot is free");
    loan.fill(0xab);
    let loan = match loan.try_send() {
        Err(u) => {
            assert!(matches!(u.error, TrySendError::Full), "{}", u.error);
            u.loan
        }
        Ok(()) => panic!("loan sent into a full queue"),
    };
    // One recv makes room for exactly one more (a held message takes no ring space).
    let first = rx.try_recv().expect("recv from a full queue");
    assert_eq!(as_num(&first), 0);
    loan.try_send().map_err(|u| u.error).expect("one more fits");
    assert!(matches!(tx.try_send(&num(6)), Err(TrySendError::Full)));
    drop(first);
    assert!(matches!(tx.try_send(&num(6)), Err(TrySendError::Full)));
    for i in 1..5 {
        assert_eq!(as_num(&rx.try_recv().unwrap()), i);
    }
    let m = rx.try_recv().unwrap();
    assert!(m.len() == 3000 && m.iter().all(|&b| b == 0xab));
    drop(m);
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn capacity_is_exact_whatever_its_value() {
    let _wd = Watchdog::new("capacity_exact", LIMIT);
    for cap in [1usize, 2, 3, 7, 63, 64, 65, 100, 1000] {
        let g = ShmGuard::new("cap");
        let (tx, rx) = create(&g, cap);
        assert_eq!((tx.capacity(), rx.capacity()), (cap, cap));
        for i in 0..cap as u64 {
            tx.try_send(&num(i))
                .unwrap_or_else(|e| panic!("capacity {cap}: try_send #{i}: {e}"));
        }
        assert!(
            matches!(tx.try_send(&num(0)), Err(TrySendError::Full)),
            "capacity {cap}: one more than capacity fit"
        );
        assert_eq!(rx.len(), cap);
        // Around the ring a few times, full each time.
        for lap in 0..3u64 {
            for i in 0..cap as u64 {
                assert_eq!(as_num(&rx.try_recv().unwrap()), lap * 1_000_000 + i);
                tx.try_send(&num((lap + 1) * 1_000_000 + i)).unwrap();
            }
            assert!(matches!(tx.try_send(&num(0)), Err(TrySendError::Full)));
        }
        drop((tx, rx));
        g.assert_clean();
    }
}

#[test]
fn try_send_is_full_when_every_payload_slot_is_in_use_until_an_ack() {
    let _wd = Watchdog::new("slots_full", LIMIT);
    let g = ShmGuard::new("slots");
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(4)
        .slots(6)
        .create()
        .unwrap();
    for i in 0..4 {
        tx.try_send(&num(i)).unwrap();
    }
    let held: Vec<_> = (0..2).map(|_| rx.try_recv().unwrap()).collect();
    // Ring 2 of 4, held 2: two more slots.
    tx.try_send(&num(4)).unwrap();
    tx.try_send(&num(5)).unwrap();
    let third = rx.try_recv().unwrap();
    // Ring 3 of 4 but all 6 slots in use (3 queued, 3 held).
    assert!(!tx.is_full());
    assert!(
        matches!(tx.try_send(&num(6)), Err(TrySendError::Full)),
        "every payload slot is in use"
    );
    assert!(matches!(tx.try_loan(10), Err(TrySendError::Full)));
    let d = Duration::from_millis(50);
    let t = Instant::now();
    assert!(matches!(
        tx.send_timeout(&num(6), d),
        Err(SendTimeoutError::Timeout)
    ));
    assert!(t.elapsed() >= d);
    // An ack frees a slot.
    drop(third);
    tx.try_send(&num(6)).unwrap();
    assert!(matches!(tx.try_send(&num(7)), Err(TrySendError::Full)));
    drop(held);
    for i in 3..7 {
        assert_eq!(as_num(&rx.try_recv().unwrap()), i);
    }
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn try_send_is_full_when_payload_memory_is_exhausted_until_an_ack() {
    let _wd = Watchdog::new("payload_full", LIMIT);
    let g = ShmGuard::new("bytes");
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(8)
        .max_message_size(512 << 10)
        .max_payload_bytes(1 << 20)
        .create()
        .unwrap();
    let big = vec![5u8; 512 << 10];
    tx.try_send(&big).unwrap();
    tx.try_send(&big).unwrap();
    assert!(
        matches!(tx.try_send(&big), Err(TrySendError::Full)),
        "payload memory is at its bound"
    );
    // Small messages live inline and need no payload memory.
    tx.try_send(b"inline").unwrap();
    let m = rx.recv().unwrap();
    assert!(
        matches!(tx.try_send(&big), Err(TrySendError::Full)),
        "held, not acked"
    );
    drop(m);
    tx.try_send(&big).expect("the ack freed payload memory");
    for want in [big.len(), 6, big.len()] {
        let m = rx.recv().unwrap();
        assert_eq!(m.len(), want);
    }
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn try_recv_on_an_empty_queue_returns_empty() {
    let _wd = Watchdog::new("try_recv_empty", LIMIT);
    let g = ShmGuard::new("empty");
    let (tx, rx) = create(&g, 3);
    assert!(rx.is_empty() && tx.is_empty());
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    tx.send(b"x").unwrap();
    assert_eq!(&*rx.try_recv().unwrap(), b"x");
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn recv_timeout_returns_timeout_no_earlier_than_the_deadline() {
    let _wd = Watchdog::new("recv_timeout", LIMIT);
    let g = ShmGuard::new("rto");
    let (tx, rx) = create(&g, 2);
    for d in DEADLINES {
        let t = Instant::now();
        let r = rx.recv_timeout(d);
        let el = t.elapsed();
        assert!(matches!(r, Err(RecvTimeoutError::Timeout)), "{r:?}");
        assert!(el >= d, "recv_timeout({d:?}) returned after only {el:?}");
    }
    // A message that is there is returned, whatever the timeout.
    tx.send(b"here").unwrap();
    assert_eq!(&*rx.recv_timeout(Duration::ZERO).unwrap(), b"here");
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn send_timeout_on_a_full_queue_returns_timeout_no_earlier_than_the_deadline() {
    let _wd = Watchdog::new("send_timeout", LIMIT);
    let g = ShmGuard::new("sto");
    let (tx, rx) = create(&g, 1);
    tx.send(b"fill").unwrap();
    for d in DEADLINES {
        let t = Instant::now();
        let r = tx.send_timeout(b"more", d);
        let el = t.elapsed();
        assert!(matches!(r, Err(SendTimeoutError::Timeout)), "{r:?}");
        assert!(el >= d, "send_timeout({d:?}) returned after only {el:?}");

        let mut loan = tx.loan(500).unwrap();
        loan.fill(d.as_millis() as u8);
        let t = Instant::now();
        let r = loan.send_timeout(d);
        let el = t.elapsed();
        let u = r.expect_err("loan sent into a full queue");
        assert!(matches!(u.error, SendTimeoutError::Timeout), "{}", u.error);
        assert!(
            el >= d,
            "Loan::send_timeout({d:?}) returned after only {el:?}"
        );
        assert!(u.loan.len() == 500 && u.loan.iter().all(|&b| b == d.as_millis() as u8));
    }
    // Space appears: the returned loan goes through, intact.
    let mut loan = tx.loan(500).unwrap();
    loan.fill(7);
    let u = loan.send_timeout(Duration::from_millis(10)).unwrap_err();
    assert_eq!(&*rx.recv().unwrap(), b"fill");
    u.loan
        .send_timeout(Duration::from_millis(10))
        .map_err(|u| u.error)
        .expect("room for the returned loan");
    let m = rx.recv().unwrap();
    assert!(m.len() == 500 && m.iter().all(|&b| b == 7));
    drop(m);
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn blocked_recv_is_woken_by_a_send_from_another_process() {
    const TEST: &str = "blocked_recv_is_woken_by_a_send_from_another_process";
    as_child(child_role);
    let _wd = Watchdog::new(TEST, LIMIT);
    let (ga, gb) = (ShmGuard::new("ping"), ShmGuard::new("pong"));
    let (tx, rx_a) = create(&ga, 1);
    let (tx_b, rx) = create(&gb, 1);
    let n = 400u64;
    let mut child = Child::spawn(
        TEST,
        "pong",
        &[("NAME", &ga.name()), ("BACK", &gb.name()), ("N", &n)],
    );
    for i in 0..n {
        tx.send(&num(i)).unwrap();
        // The child pauses 300 ms before its first receive and now and then later: this
        // recv blocks until the child's send wakes it.
        let m = rx.recv().unwrap();
        assert_eq!(as_num(&m), i);
    }
    child.wait_ok();
    drop((tx, rx_a, tx_b, rx));
    ga.assert_clean();
    gb.assert_clean();
}

#[test]
fn blocked_send_is_woken_when_another_process_receives() {
    const TEST: &str = "blocked_send_is_woken_when_another_process_receives";
    as_child(child_role);
    let _wd = Watchdog::new(TEST, LIMIT);
    let g = ShmGuard::new("bsend");
    let dir = TempDir::new("bsend");
    let (tx, rx) = create(&g, 1);
    let n = 400u64;
    let mut child = Child::spawn(
        TEST,
        "slow_receiver",
        &[
            ("NAME", &g.name()),
            ("N", &n),
            ("DIR", &dir.path().display()),
        ],
    );
    wait_for_file(dir.join("attached"), Some(&mut child));
    // Capacity 1 and a receiver that pauses 300 ms first: the second send blocks until
    // the child receives, and so on.
    for i in 0..n {
        tx.send(&num(i)).unwrap();
    }
    child.wait_ok();
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn blocked_send_is_woken_when_another_process_acks_a_held_message() {
    const TEST: &str = "blocked_send_is_woken_when_another_process_acks_a_held_message";
    as_child(child_role);
    let _wd = Watchdog::new(TEST, LIMIT);
    let g = ShmGuard::new("ackwake");
    let dir = TempDir::new("ackwake");
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(2)
        .slots(3)
        .create()
        .unwrap();
    let mut child = Child::spawn(
        TEST,
        "slot_holder",
        &[("NAME", &g.name()), ("DIR", &dir.path().display())],
    );
    tx.send(&num(0)).unwrap();
    tx.send(&num(1)).unwrap();
    wait_for_file(dir.join("held"), Some(&mut child));
    tx.send(&num(2)).unwrap();
    // Ring 1 of 2, but the third and last slot is taken.
    assert!(matches!(tx.try_send(&num(3)), Err(TrySendError::Full)));
    touch(dir.join("go"));
    tx.send(&num(3)).unwrap();
    assert!(
        dir.join("dropping").exists(),
        "send went through before the child acked a message"
    );
    child.wait_ok();
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn recv_is_not_disconnected_while_any_sender_process_lives() {
    const TEST: &str = "recv_is_not_disconnected_while_any_sender_process_lives";
    as_child(child_role);
    let _wd = Watchdog::new(TEST, LIMIT);
    let g = ShmGuard::new("twosend");
    let dir = TempDir::new("twosend");
    let (tx, rx) = create(&g, 2);
    let mut kids: Vec<Child> = (0..2)
        .map(|i| {
            Child::spawn(
                TEST,
                "sender_lingers",
                &[
                    ("NAME", &g.name()),
                    ("DIR", &dir.path().display()),
                    ("ID", &i),
                ],
            )
        })
        .collect();
    for (i, k) in kids.iter_mut().enumerate() {
        wait_for_file(dir.join(format!("attached-{i}")), Some(k));
    }
    drop(tx);
    touch(dir.join("exit-0"));
    kids[0].wait_ok();
    let d = Duration::from_millis(200);
    let t = Instant::now();
    let r = rx.recv_timeout(d);
    assert!(
        matches!(r, Err(RecvTimeoutError::Timeout)),
        "one sender process is still attached: {r:?}"
    );
    assert!(t.elapsed() >= d);
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    touch(dir.join("exit-1"));
    let r = rx.recv();
    assert!(matches!(r, Err(RecvError::Disconnected)), "{r:?}");
    kids[1].wait_ok();
    drop(rx);
    g.assert_clean();
}

#[test]
fn handles_have_the_documented_auto_traits() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn send<T: Send + 'static>() {}
    fn clone<T: Clone>() {}
    send_sync::<shmq::Sender>();
    send_sync::<shmq::Receiver>();
    clone::<shmq::Sender>();
    clone::<shmq::Receiver>();
    send::<shmq::Loan>();
    send::<shmq::Message>();
    send_sync::<shmq::Error>();
}

#[test]
fn wait_for_acks_returns_only_after_the_receiver_dropped_every_message() {
    const TEST: &str = "wait_for_acks_returns_only_after_the_receiver_dropped_every_message";
    as_child(child_role);
    let _wd = Watchdog::new(TEST, LIMIT);
    let g = ShmGuard::new("acks");
    let dir = TempDir::new("acks");
    let (tx, rx) = create(&g, 8);
    let other = tx.clone();
    // Nothing sent: nothing to wait for.
    tx.wait_for_acks(Some(Duration::ZERO))
        .expect("a fresh sender has nothing unacknowledged");
    tx.wait_for_acks(None)
        .expect("a fresh sender has nothing unacknowledged");
    let k = 3u64;
    for i in 0..k {
        tx.send(&num(i)).unwrap();
    }
    // Queued but not received: not acknowledged.
    let d = Duration::from_millis(100);
    let t = Instant::now();
    assert!(tx.wait_for_acks(Some(d)).is_err());
    assert!(t.elapsed() >= d, "wait_for_acks timed out early");

    let mut child = Child::spawn(
        TEST,
        "holder",
        &[
            ("NAME", &g.name()),
            ("K", &k),
            ("DIR", &dir.path().display()),
        ],
    );
    wait_for_file(dir.join("held"), Some(&mut child));
    // Another sender's message, which nobody receives yet, must not count for `tx`.
    other.send(b"other").unwrap();
    // Received and held: not acknowledged either.
    let d = Duration::from_millis(200);
    let t = Instant::now();
    let r = tx.wait_for_acks(Some(d));
    let el = t.elapsed();
    assert!(
        r.is_err(),
        "wait_for_acks returned while the child holds every message"
    );
    assert!(el >= d, "wait_for_acks timed out after only {el:?}");

    touch(dir.join("release"));
    tx.wait_for_acks(Some(Duration::from_secs(30)))
        .expect("every message was acknowledged within 30 s");
    let started: u64 = std::fs::read_to_string(dir.join("started"))
        .expect("the child began dropping")
        .parse()
        .unwrap();
    assert_eq!(
        started, k,
        "wait_for_acks returned before the child began dropping the last message"
    );
    tx.wait_for_acks(Some(Duration::ZERO))
        .expect("still all acked");
    child.wait_ok();

    // `other` still has its message queued.
    assert!(other
        .wait_for_acks(Some(Duration::from_millis(20)))
        .is_err());
    let m = rx.recv().unwrap();
    assert_eq!(&*m, b"other");
    assert!(
        other.wait_for_acks(Some(Duration::ZERO)).is_err(),
        "held, not acked yet"
    );
    m.ack();
    other
        .wait_for_acks(Some(Duration::from_secs(5)))
        .expect("acked by Message::ack");
    drop((tx, other, rx));
    g.assert_clean();
}

#[test]
fn recv_returns_disconnected_once_empty_and_every_sender_is_dropped() {
    let _wd = Watchdog::new("recv_disconnected", LIMIT);
    let g = ShmGuard::new("rdisc");
    let (tx, rx) = create(&g, 4);
    let tx2 = tx.clone();
    tx.send(b"a").unwrap();
    tx2.send(b"b").unwrap();
    drop(tx);
    assert!(matches!(rx.try_recv().as_deref(), Ok(b"a")));
    drop(tx2);
    // Messages sent before the last sender went are still delivered.
    assert_eq!(&*rx.recv().unwrap(), b"b");
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(10)),
        Err(RecvTimeoutError::Disconnected)
    ));
    assert!(matches!(rx.recv(), Err(RecvError::Disconnected)));
    drop(rx);
    g.assert_clean();
}

#[test]
fn recv_returns_disconnected_after_the_last_sender_process_exits_cleanly() {
    const TEST: &str = "recv_returns_disconnected_after_the_last_sender_process_exits_cleanly";
    as_child(child_role);
    let _wd = Watchdog::new(TEST, LIMIT);
    let g = ShmGuard::new("rdx");
    let dir = TempDir::new("rdx");
    let (tx, rx) = create(&g, 4);
    let mut child = Child::spawn(
        TEST,
        "sender_exits",
        &[("NAME", &g.name()), ("DIR", &dir.path().display())],
    );
    // The child is attached once its first message is here; then ours can go.
    assert_eq!(&*rx.recv().unwrap(), b"first");
    drop(tx);
    touch(dir.join("go"));
    assert_eq!(&*rx.recv().unwrap(), b"second");
    assert_eq!(&*rx.recv().unwrap(), b"third");
    // Blocks until the child has exited, then reports the disconnection.
    let r = rx.recv();
    assert!(matches!(r, Err(RecvError::Disconnected)), "{r:?}");
    child.wait_ok();
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Disconnected)));
    drop(rx);
    g.assert_clean();
}

#[test]
fn send_returns_disconnected_when_every_receiver_is_dropped() {
    let _wd = Watchdog::new("send_disconnected", LIMIT);
    let g = ShmGuard::new("sdisc");
    let (tx, rx) = create(&g, 4);
    let rx2 = rx.clone();
    drop(rx);
    tx.send(b"still one receiver").unwrap();
    drop(rx2);
    assert!(matches!(tx.try_send(b"x"), Err(TrySendError::Disconnected)));
    assert!(matches!(tx.send(b"x"), Err(SendError::Disconnected)));
    assert!(matches!(
        tx.send_timeout(b"x", Duration::from_millis(10)),
        Err(SendTimeoutError::Disconnected)
    ));
    match tx.loan(10) {
        Err(SendError::Disconnected) => {}
        Ok(loan) => {
            let u = loan.send().expect_err("loan sent with no receiver");
            assert!(matches!(u.error, SendError::Disconnected), "{}", u.error);
        }
        Err(e) => panic!("loan: {e}"),
    }
    drop(tx);
    g.assert_clean();
}

#[test]
fn blocked_send_returns_disconnected_when_the_last_receiver_process_exits() {
    const TEST: &str = "blocked_send_returns_disconnected_when_the_last_receiver_process_exits";
    as_child(child_role);
    let _wd = Watchdog::new(TEST, LIMIT);
    let g = ShmGuard::new("sdx");
    let dir = TempDir::new("sdx");
    let (tx, rx) = create(&g, 1);
    let mut child = Child::spawn(
        TEST,
        "receiver_exits",
        &[("NAME", &g.name()), ("DIR", &dir.path().display())],
    );
    wait_for_file(dir.join("attached"), Some(&mut child));
    drop(rx);
    tx.send(b"fills the queue").unwrap();
    touch(dir.join("go"));
    // Full, and the only receiver leaves without receiving.
    let r = tx.send(b"blocked");
    assert!(matches!(r, Err(SendError::Disconnected)), "{r:?}");
    child.wait_ok();
    assert!(matches!(tx.try_send(b"x"), Err(TrySendError::Disconnected)));
    drop(tx);
    g.assert_clean();
}

/// A blocked call returns `Disconnected` when the only peer process is SIGKILLed (and
/// stays an unreaped zombie meanwhile), with the default supervisor thread and without.
fn blocked_call_sees_a_killed_peer(test: &str, victim_is_sender: bool) {
    for supervision in [shmq::Supervision::Thread, shmq::Supervision::Manual] {
        let g = ShmGuard::new("kill");
        let dir = TempDir::new("kill");
        let (tx, rx) = shmq::Builder::new()
            .name(g.name())
            .capacity(1)
            .supervision(supervision)
            .create()
            .unwrap();
        let mut child = Child::spawn(
            test,
            "victim",
            &[
                ("NAME", &g.name()),
                ("DIR", &dir.path().display()),
                (
                    "AS",
                    &if victim_is_sender {
                        "sender"
                    } else {
                        "receiver"
                    },
                ),
            ],
        );
        wait_for_file(dir.join("attached"), Some(&mut child));
        let pid = child.pid() as libc::pid_t;
        let killed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let k = killed.clone();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            k.store(true, std::sync::atomic::Ordering::SeqCst);
            // SAFETY: plain syscall on our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        let early = || {
            if killed.load(std::sync::atomic::Ordering::SeqCst) {
                String::new()
            } else {
                format!(
                    "{supervision:?}: Disconnected while the peer process {pid} was alive \
                     (it is killed 300 ms after the call began)"
                )
            }
        };
        if victim_is_sender {
            drop(tx);
            let r = rx.recv();
            assert!(
                matches!(r, Err(RecvError::Disconnected)),
                "{supervision:?}: {r:?}"
            );
            let e = early();
            assert!(e.is_empty(), "{e}");
            drop(rx);
        } else {
            drop(rx);
            tx.send(b"fill").unwrap();
            let r = tx.send(b"blocked");
            assert!(
                matches!(r, Err(SendError::Disconnected)),
                "{supervision:?}: {r:?}"
            );
            let e = early();
            assert!(e.is_empty(), "{e}");
            drop(tx);
        }
        killer.join().unwrap();
        // Reaped only now: the peer was a zombie while we waited.
        let st = child.wait();
        assert!(!st.success());
        g.assert_clean();
    }
}

/// The last process out unlinks the queue even when a killed peer's header mapping
/// outlives it for a moment. Here a forked grandchild of the peer holds the mapping (with
/// no descriptor and no handle) for 1.5 s; the same window opens, briefly, whenever the
/// kernel tears a killed multi-threaded process down, and made
/// `blocked_recv_returns_disconnected_when_the_last_sender_process_is_killed` leak its
/// header now and then under load.
#[test]
fn the_last_process_out_unlinks_even_while_a_killed_peers_mapping_lingers() {
    const TEST: &str = "the_last_process_out_unlinks_even_while_a_killed_peers_mapping_lingers";
    as_child(child_role);
    let _wd = Watchdog::new(TEST, LIMIT);
    let g = ShmGuard::new("linger");
    let dir = TempDir::new("linger");
    let (tx, rx) = create(&g, 1);
    let mut child = Child::spawn(
        TEST,
        "victim_with_lingering_mapping",
        &[("NAME", &g.name()), ("DIR", &dir.path().display())],
    );
    wait_for_file(dir.join("attached"), Some(&mut child));
    let gpid: u32 = std::fs::read_to_string(dir.join("grandchild"))
        .unwrap()
        .parse()
        .unwrap();
    drop(tx);
    child.kill();
    let r = rx.recv();
    assert!(matches!(r, Err(RecvError::Disconnected)), "{r:?}");
    drop(rx);
    // Wait for the grandchild to be gone (or a zombie, which maps nothing).
    common::wait_until(|| {
        std::fs::read_to_string(format!("/proc/{gpid}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
    });
    g.assert_clean();
}

#[test]
fn blocked_recv_returns_disconnected_when_the_last_sender_process_is_killed() {
    const TEST: &str = "blocked_recv_returns_disconnected_when_the_last_sender_process_is_killed";
    as_child(child_role);
    let _wd = Watchdog::new(TEST, LIMIT);
    blocked_call_sees_a_killed_peer(TEST, true);
}

#[test]
fn blocked_send_returns_disconnected_when_the_last_receiver_process_is_killed() {
    const TEST: &str = "blocked_send_returns_disconnected_when_the_last_receiver_process_is_killed";
    as_child(child_role);
    let _wd = Watchdog::new(TEST, LIMIT);
    blocked_call_sees_a_killed_peer(TEST, false);
}

/// `Duration::MAX` (Python's `math.inf` will arrive as one) means "no limit" for every
/// timeout: a call that can go on at once does, one that must wait waits for its peer.
/// On 2c7ff0e every one of these panicked ("overflow when adding duration to instant").
#[test]
fn duration_max_waits_without_limit_and_never_panics() {
    let _wd = Watchdog::new("duration_max", LIMIT);
    let (tx, rx) = shmq::Builder::new().capacity(1).create().unwrap();
    let forever = Duration::MAX;
    tx.send_timeout(b"a", forever).unwrap();
    assert_eq!(&*rx.recv_timeout(forever).unwrap(), b"a");
    let l = tx.loan_timeout(4, forever).unwrap();
    l.send_timeout(forever).unwrap();
    drop(rx.recv_timeout(forever).unwrap());
    tx.wait_for_acks(Some(forever)).unwrap();
    // Both sides of a wait that must block until the other thread acts.
    std::thread::scope(|sc| {
        sc.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            tx.send_timeout(b"b", forever).unwrap();
            tx.send_timeout(b"c", forever).unwrap(); // blocks until "b" is taken
        });
        assert_eq!(&*rx.recv_timeout(forever).unwrap(), b"b");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(&*rx.recv_timeout(forever).unwrap(), b"c");
    });
    tx.wait_for_acks(Some(forever)).unwrap();
}

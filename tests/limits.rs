//! Limits the edges issue (12) measured and asked to keep true: descriptors per queue,
//! creation at the descriptor limit, 1000 unread messages under 256 descriptors, a full
//! participant table, 64 + 64 threads, `process::exit` beside a blocked send, and a
//! `posix_fallocate` interrupted by signals. Each runs in a child process of its own
//! where it counts or limits this process's descriptors or installs a signal handler.

mod common;

use common::{ShmGuard, Watchdog};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

/// This process's descriptors: (those of `/dev/shm` objects, all the others).
fn descriptors_by_kind() -> (usize, usize) {
    let mut shm = 0;
    let mut other = 0;
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        match std::fs::read_link(e.path()) {
            Ok(p) if p.starts_with("/dev/shm") => shm += 1,
            _ => other += 1,
        }
    }
    (shm, other)
}

fn set_nofile(soft: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = soft.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

fn run_role(test: &str, role: &str) {
    let _wd = Watchdog::new(role, LIMIT);
    common::Child::spawn(test, role, &[]).wait_ok();
}

/// Child role: 100 queues (a sender and a receiver each) hold at most 4 descriptors each
/// (the issue measured 4 with 500 queues); the others this process opens (its supervisor
/// thread's epoll, inotify and eventfd, a `/proc` file it reads) do not grow with them.
fn descriptors_role() {
    let (shm0, other0) = descriptors_by_kind();
    let mut guards = Vec::new();
    let mut queues = Vec::new();
    for i in 0..100u8 {
        let g = ShmGuard::new("fds");
        let (tx, rx) = shmq::Builder::new()
            .name(g.name())
            .capacity(2)
            .create()
            .unwrap();
        // A segment message too: its object is mapped, and its descriptor closed.
        tx.send(&[i; 100_000]).unwrap();
        let m = rx.recv().unwrap();
        assert!(m.iter().all(|&b| b == i));
        drop(m);
        queues.push((tx, rx));
        guards.push(g);
    }
    let (shm, other) = descriptors_by_kind();
    assert_eq!(shm0, 0);
    assert!(
        shm <= 4 * 100,
        "100 queues hold {shm} descriptors, more than 4 each"
    );
    assert!(
        other <= other0 + 8,
        "other descriptors grew from {other0} to {other} with 100 queues"
    );
    drop(queues);
    for g in &guards {
        g.assert_clean();
    }
}

#[test]
fn a_queue_costs_at_most_four_descriptors() {
    common::as_child(|_| descriptors_role());
    run_role("a_queue_costs_at_most_four_descriptors", "fds");
}

/// Child role: with `RLIMIT_NOFILE` at 256, queues are created until one fails; the
/// failure is a clean `Io` error that names the cause, every queue made so far still
/// works, and nothing is left in `/dev/shm` (not even a creator's temporary header).
fn nofile_role() {
    set_nofile(256);
    let mut guards = Vec::new();
    let mut queues = Vec::new();
    let err = loop {
        let g = ShmGuard::new("nofile");
        match shmq::Builder::new().name(g.name()).capacity(2).create() {
            Ok(q) => queues.push(q),
            Err(e) => {
                guards.push(g);
                break e;
            }
        }
        guards.push(g);
        assert!(
            queues.len() < 256,
            "256 queues under a limit of 256 descriptors"
        );
    };
    assert_eq!(err.kind(), shmq::ErrorKind::Io, "{err}");
    let src = std::error::Error::source(&err).map(|s| s.to_string());
    assert!(
        src.as_deref().unwrap_or("").contains("Too many open files"),
        "the error does not say why: {err} (source {src:?})"
    );
    // At most 4 descriptors each (the issue saw creation stop at 62).
    assert!(
        queues.len() >= 55,
        "only {} queues under 256 descriptors",
        queues.len()
    );
    // Nothing of the failed create is left, and every queue made works.
    guards.last().unwrap().assert_clean();
    for (i, (tx, rx)) in queues.iter().enumerate() {
        tx.send(&[i as u8; 8]).unwrap();
        assert_eq!(&*rx.recv().unwrap(), &[i as u8; 8]);
    }
    drop(queues);
    for g in &guards {
        g.assert_clean();
    }
}

#[test]
fn creating_queues_at_the_descriptor_limit_stops_with_a_clean_error() {
    common::as_child(|_| nofile_role());
    run_role(
        "creating_queues_at_the_descriptor_limit_stops_with_a_clean_error",
        "nofile",
    );
}

/// Child role: 1000 unread segment messages under `RLIMIT_NOFILE` 256 (py-sharedmemory's
/// own tests expect this of a queue): a segment's descriptor is closed once it is mapped.
fn unread_role() {
    set_nofile(256);
    let g = ShmGuard::new("unread");
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(1000)
        .create()
        .unwrap();
    for i in 0..1000u32 {
        let mut m = vec![(i % 251) as u8; 8192];
        m[..4].copy_from_slice(&i.to_le_bytes());
        tx.try_send(&m).unwrap();
    }
    for i in 0..1000u32 {
        let m = rx.try_recv().unwrap();
        assert_eq!(u32::from_le_bytes(m[..4].try_into().unwrap()), i);
        assert!(m[4..].iter().all(|&b| b == (i % 251) as u8));
    }
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn a_thousand_unread_messages_fit_under_256_descriptors() {
    common::as_child(|_| unread_role());
    run_role(
        "a_thousand_unread_messages_fit_under_256_descriptors",
        "unread",
    );
}

/// Every participant record taken: `try_clone` and `open` say `TooManyParticipants` (and
/// `clone` would panic, as documented); a record freed by a dropped handle is taken
/// again.
#[test]
fn a_full_participant_table_says_too_many_participants() {
    let _wd = Watchdog::new("participants", LIMIT);
    let g = ShmGuard::new("parts");
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(2)
        .create()
        .unwrap();
    let mut txs = Vec::new();
    let err = loop {
        match tx.try_clone() {
            Ok(t) => txs.push(t),
            Err(e) => break e,
        }
        assert!(txs.len() < 64, "more than 64 participants");
    };
    // Every one of the 64 records taken (clones, the first sender and receiver, and
    // this process's supervisor record).
    let info = shmq::info::inspect(g.name()).unwrap();
    assert_eq!(info.participants.len(), 64, "{:?}", info.participants);
    assert!(txs.len() >= 61, "{}", txs.len());
    assert_eq!(err.kind(), shmq::ErrorKind::TooManyParticipants, "{err}");
    common::assert_error_style("TooManyParticipants", &err.to_string());
    let e = shmq::Receiver::open(g.name()).unwrap_err();
    assert_eq!(e.kind(), shmq::ErrorKind::TooManyParticipants, "{e}");
    let e = shmq::Sender::open(g.name()).unwrap_err();
    assert_eq!(e.kind(), shmq::ErrorKind::TooManyParticipants, "{e}");
    // Nothing is disturbed: the queue works, and a freed record is taken again.
    txs.pop().unwrap().send(b"one").unwrap();
    let rx2 = shmq::Receiver::open(g.name()).unwrap();
    assert_eq!(&*rx2.recv().unwrap(), b"one");
    assert_eq!(
        tx.try_clone().unwrap_err().kind(),
        shmq::ErrorKind::TooManyParticipants
    );
    drop((txs, rx2, tx, rx));
    g.assert_clean();
}

/// Child role: a send blocks (the queue is full) in one thread while the main thread
/// calls `process::exit`. The parent waits for that, then the queue works on.
fn exit_role() {
    let tx = shmq::Sender::open(&common::param("name")).unwrap();
    tx.send(b"first").unwrap();
    tx.send(b"second").unwrap();
    let blocked = std::thread::spawn(move || {
        let r = tx.send(b"blocked");
        panic!("the blocked send returned before the exit: {r:?}");
    });
    // Until the send is asleep (the thread cannot be observed; it has had its time).
    std::thread::sleep(Duration::from_millis(200));
    assert!(!blocked.is_finished());
    std::process::exit(common::CHILD_OK);
}

#[test]
fn process_exit_beside_a_blocked_send_leaves_the_peers_working() {
    common::as_child(|_| exit_role());
    let _wd = Watchdog::new("exit_blocked", LIMIT);
    let g = ShmGuard::new("exitblk");
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(2)
        .create()
        .unwrap();
    let name = g.name().to_string();
    common::Child::spawn(
        "process_exit_beside_a_blocked_send_leaves_the_peers_working",
        "exit",
        &[("name", &name)],
    )
    .wait_ok();
    assert_eq!(&*rx.recv().unwrap(), b"first");
    assert_eq!(&*rx.recv().unwrap(), b"second");
    // The blocked send never committed; the queue has room and works on both sides.
    assert!(matches!(rx.try_recv(), Err(shmq::TryRecvError::Empty)));
    for i in 0..10u8 {
        tx.send(&[i; 3]).unwrap();
        tx.send(&vec![i; 70_000]).unwrap();
        assert_eq!(&*rx.recv().unwrap(), &[i; 3]);
        assert!(rx.recv().unwrap().iter().all(|&b| b == i));
    }
    // Its participant record is recovered: only ours are left.
    let me = std::process::id();
    common::wait_until(|| {
        shmq::info::inspect(&name)
            .unwrap()
            .participants
            .iter()
            .all(|p| p.pid == me)
    });
    drop((tx, rx));
    g.assert_clean();
}

/// Child role: `posix_fallocate` on tmpfs returns `EINTR` when a signal arrives while it
/// allocates a large object (simulated: the first 5 calls of this process say so, see
/// `shmq::fault`); sends must retry rather than fail.
#[cfg(feature = "fault-injection")]
fn eintr_role() {
    std::env::set_var("SHMQ_FAULT_FALLOCATE_EINTR", "5");
    const MIB: usize = 1 << 20;
    let g = ShmGuard::new("eintr");
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(4)
        .max_message_size(16 << 20)
        .create()
        .unwrap();
    // Every message held, so each send sizes a fresh segment.
    let mut held = Vec::new();
    for i in 0..4u8 {
        let r = tx.try_send(&vec![i; (i as usize + 1) * MIB]);
        assert!(r.is_ok(), "send {i}: {r:?}");
        held.push(rx.try_recv().unwrap());
    }
    for (i, m) in held.iter().enumerate() {
        assert!(m.len() == (i + 1) * MIB && m.iter().all(|&b| b == i as u8));
    }
    drop((held, tx, rx));
    g.assert_clean();
}

#[cfg(feature = "fault-injection")]
#[test]
fn an_interrupted_allocation_is_retried() {
    common::as_child(|_| eintr_role());
    run_role("an_interrupted_allocation_is_retried", "eintr");
}

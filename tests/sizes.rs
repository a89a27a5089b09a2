//! Payload sizes: 0 B, 1 B, around the 192-byte inline limit, 4 KiB, 1 MiB, 64 MiB, 1 GiB
//! (in one process and across processes) and, ignored by default, over 4 GiB; plus loans
//! written in place. Contents are verified: small and medium payloads byte for byte,
//! large ones by three stamped u64s per 4 KiB page and fully patterned 64 KiB ends.

mod common;

use common::{
    as_child, check, check_stamps, fill, param, param_as, stamp, Child, ShmGuard, Watchdog,
};
use std::time::Duration;

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const GIB: usize = 1 << 30;
/// The inline limit: payloads up to this size live in the slot record.
const INLINE: usize = 192;
/// Sizes verified byte for byte.
const SIZES: &[usize] = &[
    0,
    1,
    2,
    63,
    64,
    65,
    INLINE - 1,
    INLINE,
    INLINE + 1,
    4 * KIB,
    4 * KIB + 1,
    MIB,
    64 * MIB,
];

fn seed_of(i: usize, len: usize) -> u64 {
    0x5eed_0000 ^ ((i as u64) << 40) ^ len as u64
}

#[track_caller]
fn assert_aligned(p: *const u8, what: &str) {
    assert_eq!(
        p as usize % 64,
        0,
        "{what}: payload start {p:p} is not 64-byte aligned"
    );
}

fn child_role(role: &str) {
    match role {
        // Receives each of SIZES on DOWN, checks it, and sends it back (from a loan, with
        // another pattern) on UP.
        "echo" => {
            let rx = shmq::Receiver::open(&param("DOWN")).expect("open down");
            let tx = shmq::Sender::open(&param("UP")).expect("open up");
            for (i, &len) in SIZES.iter().enumerate() {
                let m = rx.recv().expect("child recv");
                assert_eq!(m.len(), len, "size #{i}: length");
                if len > 0 {
                    assert_aligned(m.as_ptr(), "child's received message");
                }
                if let Err(e) = check(&m, seed_of(i, len)) {
                    panic!("size {len} parent -> child: {e}");
                }
                drop(m);
                let mut loan = tx.loan(len).expect("child loan");
                assert_eq!(loan.len(), len);
                fill(&mut loan, !seed_of(i, len));
                loan.send().expect("child send");
            }
        }
        // Receives one large stamped message and checks it.
        "big" => {
            let size: usize = param_as("SIZE");
            let rx = shmq::Receiver::open(&param("NAME")).expect("open");
            let m = rx.recv().expect("child recv");
            assert_eq!(m.len(), size, "length of the large message");
            assert_aligned(m.as_ptr(), "large message");
            if let Err(e) = check_stamps(&m, size as u64) {
                panic!("{size}-byte message parent -> child: {e}");
            }
        }
        r => panic!("unknown role {r}"),
    }
}

#[test]
fn small_and_medium_sizes_round_trip_intact() {
    let _wd = Watchdog::new(
        "small_and_medium_sizes_round_trip_intact",
        Duration::from_secs(60),
    );
    let g = ShmGuard::new("sizes");
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(4)
        .create()
        .unwrap();
    for (i, &len) in SIZES.iter().enumerate() {
        let mut buf = vec![0u8; len];
        fill(&mut buf, seed_of(i, len));
        tx.send(&buf)
            .unwrap_or_else(|e| panic!("send {len} bytes: {e}"));
        drop(buf);
        let m = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(m.len(), len);
        assert_eq!((*m).len(), len);
        assert!(!m.is_redelivery());
        if len > 0 {
            assert_aligned(m.as_ptr(), "received message");
        }
        if let Err(e) = check(&m, seed_of(i, len)) {
            panic!("size {len}: {e}");
        }
    }
    assert!(matches!(rx.try_recv(), Err(shmq::TryRecvError::Empty)));
    drop((tx, rx));
    g.assert_clean();
}

/// The copy API from sources at every offset that puts the page-aligned segment 0–64
/// bytes past them modulo 4 KiB (where `send` copies in pieces to dodge a slow `memcpy`
/// path) and a few others, at lengths around the piece size: the bytes arrive intact.
#[test]
fn sends_from_any_source_alignment_arrive_intact() {
    let _wd = Watchdog::new(
        "sends_from_any_source_alignment_arrive_intact",
        Duration::from_secs(60),
    );
    let g = ShmGuard::new("align");
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(4)
        .create()
        .unwrap();
    let longest = 64 * KIB + 3;
    let mut buf = vec![0u8; longest + 3 * 4096];
    let page = (4096 - buf.as_ptr() as usize % 4096) % 4096 + 4096;
    let offsets = (0..=64).map(|d| page - d).chain([page + 16, page + 1000]);
    for (i, start) in offsets.enumerate() {
        for &len in &[2047, 2048, 2049, 4096 + 7, longest] {
            let seed = seed_of(i, len);
            fill(&mut buf[start..start + len], seed);
            tx.send(&buf[start..start + len]).unwrap_or_else(|e| {
                panic!("send {len} bytes from page offset -{}: {e}", page - start)
            });
            let m = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(m.len(), len);
            if let Err(e) = check(&m, seed) {
                panic!("{len} bytes from {start} (page at {page}): {e}");
            }
        }
    }
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn every_size_round_trips_across_processes_both_ways() {
    const TEST: &str = "every_size_round_trips_across_processes_both_ways";
    as_child(child_role);
    let _wd = Watchdog::new(TEST, Duration::from_secs(60));
    let down = ShmGuard::new("down");
    let up = ShmGuard::new("up");
    let (tx, rx_d) = shmq::Builder::new()
        .name(down.name())
        .capacity(2)
        .create()
        .unwrap();
    let (tx_u, rx) = shmq::Builder::new()
        .name(up.name())
        .capacity(2)
        .create()
        .unwrap();
    let mut child = Child::spawn(TEST, "echo", &[("DOWN", &down.name()), ("UP", &up.name())]);
    for (i, &len) in SIZES.iter().enumerate() {
        let mut buf = vec![0u8; len];
        fill(&mut buf, seed_of(i, len));
        tx.send(&buf).unwrap();
        drop(buf);
        let m = rx.recv().unwrap();
        assert_eq!(m.len(), len);
        if len > 0 {
            assert_aligned(m.as_ptr(), "echoed message");
        }
        if let Err(e) = check(&m, !seed_of(i, len)) {
            panic!("size {len} child -> parent: {e}");
        }
    }
    child.wait_ok();
    drop((tx, rx_d, tx_u, rx));
    down.assert_clean();
    up.assert_clean();
}

#[test]
fn loan_is_aligned_written_in_place_and_arrives_intact() {
    let _wd = Watchdog::new(
        "loan_is_aligned_written_in_place_and_arrives_intact",
        Duration::from_secs(60),
    );
    let g = ShmGuard::new("loan");
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(4)
        .create()
        .unwrap();
    for (i, &len) in [0, 1, INLINE - 1, INLINE, INLINE + 1, 4 * KIB, MIB, 16 * MIB]
        .iter()
        .enumerate()
    {
        let mut loan = tx.loan(len).unwrap();
        assert_eq!(loan.len(), len);
        if len > 0 {
            assert_aligned(loan.as_ptr(), "loan");
        }
        fill(&mut loan, seed_of(i, len));
        loan.send().unwrap();
        let m = rx.recv().unwrap();
        assert_eq!(m.len(), len);
        if len > 0 {
            assert_aligned(m.as_ptr(), "message sent from a loan");
        }
        if let Err(e) = check(&m, seed_of(i, len)) {
            panic!("loan of {len}: {e}");
        }
    }
    // A truncated loan sends only its first bytes.
    let mut loan = tx.try_loan(4000).unwrap();
    fill(&mut loan, 77);
    loan.truncate(1000);
    assert_eq!(loan.len(), 1000);
    loan.send().unwrap();
    let m = rx.recv().unwrap();
    assert_eq!(m.len(), 1000);
    let mut want = vec![0u8; 4000];
    fill(&mut want, 77);
    assert!(*m == want[..1000], "truncated loan arrived changed");
    drop(m);
    // A loan dropped unsent sends nothing.
    let mut loan = tx.loan(300).unwrap();
    loan.fill(1);
    drop(loan);
    assert!(matches!(rx.try_recv(), Err(shmq::TryRecvError::Empty)));
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn one_gib_message_round_trips_in_one_process() {
    let _wd = Watchdog::new(
        "one_gib_message_round_trips_in_one_process",
        Duration::from_secs(120),
    );
    let g = ShmGuard::new("gib");
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(2)
        .create()
        .unwrap();
    assert!(tx.max_message_size() >= GIB as u64, "default max is 1 GiB");
    let mut buf = vec![0u8; GIB];
    stamp(&mut buf, GIB as u64);
    tx.send(&buf).unwrap();
    drop(buf);
    let m = rx.recv().unwrap();
    assert_eq!(m.len(), GIB);
    assert_aligned(m.as_ptr(), "1 GiB message");
    if let Err(e) = check_stamps(&m, GIB as u64) {
        panic!("1 GiB in one process: {e}");
    }
    drop(m);
    drop((tx, rx));
    g.assert_clean();
}

/// Sends one `size`-byte loan, stamped, to a child process that checks it.
fn big_across_processes(test: &str, size: usize, max: u64) {
    let _wd = Watchdog::new(test, Duration::from_secs(300));
    let g = ShmGuard::new("big");
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(2)
        .max_message_size(max)
        .max_payload_bytes(4 * max)
        .create()
        .unwrap();
    let mut child = Child::spawn(test, "big", &[("NAME", &g.name()), ("SIZE", &size)]);
    let mut loan = tx.loan(size).unwrap();
    assert_eq!(loan.len(), size);
    assert_aligned(loan.as_ptr(), "large loan");
    stamp(&mut loan, size as u64);
    loan.send().unwrap();
    child.wait_ok();
    tx.wait_for_acks(Some(Duration::from_secs(30)))
        .expect("the child acked the message before it exited");
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn one_gib_message_round_trips_across_processes() {
    const TEST: &str = "one_gib_message_round_trips_across_processes";
    as_child(child_role);
    big_across_processes(TEST, GIB, GIB as u64);
}

#[test]
#[ignore = "needs about 8 GiB of /dev/shm and a minute"]
fn message_over_4_gib_round_trips_across_processes() {
    const TEST: &str = "message_over_4_gib_round_trips_across_processes";
    as_child(child_role);
    let size = (4 * GIB) + 4 * KIB;
    big_across_processes(TEST, size, (4 * GIB + 64 * KIB) as u64);
}

#[test]
fn messages_and_loans_outlive_their_handles() {
    let _wd = Watchdog::new("outlive", Duration::from_secs(60));
    let g = ShmGuard::new("outlive");
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(4)
        .create()
        .unwrap();
    let rx2 = shmq::Receiver::open(g.name()).unwrap();
    let mut big = vec![0u8; 100_000];
    fill(&mut big, 1);
    tx.send(&big).unwrap();
    tx.send(b"small").unwrap();
    let m_big = rx.recv().unwrap();
    let m_small = rx.recv().unwrap();
    let mut loan = tx.loan(5000).unwrap();
    drop(rx);
    drop(tx);
    // The message views stay valid (and movable to another thread) without their handle.
    let t = std::thread::spawn(move || {
        assert_eq!(&*m_small, b"small");
        check(&m_big, 1).expect("big message intact after its receiver went");
    });
    t.join().unwrap();
    // The loan can still be filled and sent without its sender.
    fill(&mut loan, 2);
    let loan = std::thread::spawn(move || loan).join().unwrap();
    loan.send()
        .map_err(|u| u.error)
        .expect("send a loan whose sender was dropped");
    let m = rx2.recv().unwrap();
    check(&m, 2).expect("loan sent after its sender went");
    drop(m);
    drop(rx2);
    g.assert_clean();
}

/// A message just above a power of two does not take a segment twice its size: a pickled
/// 32 MiB array (32 MiB plus a small header, the common case from Python) occupied a 64 MiB
/// segment, all of it reserved in `/dev/shm`. Above 1 MiB, segments are sized to the next
/// eighth of the octave: at most 12.5% over the message.
#[test]
fn a_message_just_above_a_power_of_two_takes_at_most_an_eighth_more() {
    for (len, most) in [
        (32 * MIB + 24, 36 * MIB),
        (MIB + 1, MIB + MIB / 8),
        (100 * MIB, 112 * MIB),
        (MIB, MIB),
        (5000, 8 * KIB),
    ] {
        // A fresh queue per size: segments are reused by later, smaller messages.
        let (tx, rx) = shmq::Builder::new()
            .capacity(2)
            .max_message_size(256 * MIB as u64)
            .create()
            .unwrap();
        let _g = ShmGuard::for_name(tx.name());
        tx.send(&vec![7u8; len]).unwrap();
        let m = rx.recv().unwrap();
        assert_eq!(m.len(), len);
        let seg: u64 = std::fs::read_dir("/dev/shm")
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with(&format!("shmq.{}.", tx.name()))
            })
            .map(|e| e.metadata().unwrap().len())
            .max()
            .unwrap();
        assert!(
            seg <= most as u64 && seg >= len as u64,
            "a {len}-byte message sits in a segment of {seg} bytes (at most {most} expected)"
        );
    }
}

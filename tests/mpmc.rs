//! Multi-process MPMC with exact accounting: producer and consumer *processes* share one
//! queue; the parent checks that every message arrived exactly once, intact, and that each
//! consumer saw each producer's messages in increasing order.
//!
//! Each message is `producer id (u32) | length (u32) | sequence (u64) | checksum (u64) |
//! body`, where the length and the body are functions of (producer, sequence): lengths
//! range over header-only, around the 192-byte inline limit and a few KiB. Producers send
//! with `send`, `send_timeout` and `loan` in turn. Consumers (even ones with `recv`, odd
//! ones with short `recv_timeout`s) check each message, keep a few
//! unacknowledged for a while (acking out of order), and write one 16-byte record per
//! message to a file that the parent reads after they exit. After the producers exit the
//! parent sends one stop marker per consumer (FIFO puts them behind every data message).

mod common;

use common::{
    as_child, check, fill, fnv1a, mix, param, param_as, Child, ShmGuard, TempDir, Watchdog,
};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const HDR: usize = 24;
const LENS: [usize; 12] = [
    24, 25, 100, 191, 192, 193, 256, 1000, 2048, 4096, 4097, 6000,
];
const STOP: &[u8] = b"SHMQSTOP";
/// Messages a consumer keeps unacknowledged at most.
const HOLD: usize = 3;

// Record flags.
const BAD_LEN: u32 = 1;
const BAD_SUM: u32 = 2;
const BAD_BODY: u32 = 4;
const MISALIGNED: u32 = 8;
const REDELIVERED: u32 = 16;
const BAD_PRODUCER: u32 = 32;

fn seed(p: u32, seq: u64) -> u64 {
    ((p as u64) << 40) ^ seq ^ 0x6d70_6d63
}

fn msg_len(p: u32, seq: u64) -> usize {
    LENS[(mix(seed(p, seq)) % LENS.len() as u64) as usize]
}

fn encode(buf: &mut [u8], p: u32, seq: u64) {
    assert_eq!(buf.len(), msg_len(p, seq));
    buf[0..4].copy_from_slice(&p.to_le_bytes());
    let len = buf.len() as u32;
    buf[4..8].copy_from_slice(&len.to_le_bytes());
    buf[8..16].copy_from_slice(&seq.to_le_bytes());
    fill(&mut buf[HDR..], seed(p, seq));
    let sum = fnv1a(&[&buf[..16], &buf[HDR..]]);
    buf[16..24].copy_from_slice(&sum.to_le_bytes());
}

/// (producer, sequence, flags) of a received message.
fn verify(m: &[u8], producers: u32) -> (u32, u64, u32) {
    let mut flags = 0;
    if (m.as_ptr() as usize) % 64 != 0 {
        flags |= MISALIGNED;
    }
    if m.len() < HDR {
        return (u32::MAX, u64::MAX, flags | BAD_LEN);
    }
    let p = u32::from_le_bytes(m[0..4].try_into().unwrap());
    let len = u32::from_le_bytes(m[4..8].try_into().unwrap()) as usize;
    let seq = u64::from_le_bytes(m[8..16].try_into().unwrap());
    let sum = u64::from_le_bytes(m[16..24].try_into().unwrap());
    if p >= producers {
        return (p, seq, flags | BAD_PRODUCER);
    }
    if len != m.len() || len != msg_len(p, seq) {
        flags |= BAD_LEN;
    }
    if sum != fnv1a(&[&m[..16], &m[HDR..]]) {
        flags |= BAD_SUM;
    }
    if check(&m[HDR..], seed(p, seq)).is_err() {
        flags |= BAD_BODY;
    }
    (p, seq, flags)
}

fn child_role(role: &str) {
    let name = param("NAME");
    match role {
        "producer" => {
            let id: u32 = param_as("ID");
            let count: u64 = param_as("COUNT");
            let tx = shmq::Sender::open(&name).expect("producer opens the queue");
            let mut buf = Vec::new();
            for seq in 0..count {
                let len = msg_len(id, seq);
                match seq % 4 {
                    0 => {
                        let mut loan = tx.loan(len).expect("loan");
                        assert_eq!(loan.len(), len);
                        encode(&mut loan, id, seq);
                        loan.send().expect("loan send");
                    }
                    1 => {
                        buf.resize(len, 0);
                        encode(&mut buf, id, seq);
                        tx.send_timeout(&buf, Duration::from_secs(60))
                            .expect("send_timeout");
                    }
                    _ => {
                        buf.resize(len, 0);
                        encode(&mut buf, id, seq);
                        tx.send(&buf).expect("send");
                    }
                }
            }
        }
        "consumer" => {
            let id: u64 = param_as("ID");
            let producers: u32 = param_as("PRODUCERS");
            let out = param("OUT");
            let rx = shmq::Receiver::open(&name).expect("consumer opens the queue");
            let mut held = VecDeque::new();
            let mut records = Vec::new();
            let mut n = 0u64;
            loop {
                // Odd consumers poll with short timeouts, even ones block.
                let m = if id % 2 == 1 {
                    match rx.recv_timeout(Duration::from_micros(mix(n) % 3000)) {
                        Ok(m) => m,
                        Err(shmq::RecvTimeoutError::Timeout) => continue,
                        Err(e) => panic!("consumer recv_timeout: {e}"),
                    }
                } else {
                    rx.recv().expect("consumer recv")
                };
                if &*m == STOP {
                    break;
                }
                let (p, seq, mut flags) = verify(&m, producers);
                if m.is_redelivery() {
                    flags |= REDELIVERED;
                }
                records.extend_from_slice(&p.to_le_bytes());
                records.extend_from_slice(&flags.to_le_bytes());
                records.extend_from_slice(&seq.to_le_bytes());
                // Keep a few messages unacknowledged; ack a pseudo-random one of them.
                held.push_back(m);
                if held.len() > HOLD {
                    let i = (mix(id ^ n) % held.len() as u64) as usize;
                    drop(held.remove(i));
                }
                n += 1;
            }
            drop(held);
            drop(rx);
            common::write_atomic(out, records);
        }
        r => panic!("unknown role {r}"),
    }
}

/// Runs `producers` → `consumers` processes over a queue of `capacity`.
fn run(test: &str, producers: u32, consumers: u32, per_producer: u64, capacity: usize) {
    let _wd = Watchdog::new(test, Duration::from_secs(150));
    let guard = ShmGuard::new("mpmc");
    let dir = TempDir::new("mpmc");
    let start = Instant::now();
    let (tx, rx) = shmq::Builder::new()
        .name(guard.name())
        .capacity(capacity)
        .create()
        .expect("create queue");
    let name = guard.name().to_string();
    // The parent keeps `rx` attached throughout (it never receives), so a producer that
    // starts before any consumer has attached does not see `Disconnected`.
    let mut cons: Vec<Child> = (0..consumers)
        .map(|c| {
            let out = dir.join(format!("consumer-{c}.bin")).display().to_string();
            Child::spawn(
                test,
                "consumer",
                &[
                    ("NAME", &name),
                    ("ID", &c),
                    ("OUT", &out),
                    ("PRODUCERS", &producers),
                ],
            )
        })
        .collect();
    let mut prods: Vec<Child> = (0..producers)
        .map(|p| {
            Child::spawn(
                test,
                "producer",
                &[("NAME", &name), ("ID", &p), ("COUNT", &per_producer)],
            )
        })
        .collect();
    for p in &mut prods {
        p.wait_ok();
    }
    // Every data message was committed before these: FIFO delivers them last.
    for _ in 0..consumers {
        tx.send(STOP).expect("send stop marker");
    }
    for c in &mut cons {
        c.wait_ok();
    }
    let elapsed = start.elapsed();

    // Exact accounting.
    let total = producers as u64 * per_producer;
    let mut seen = vec![vec![0u32; per_producer as usize]; producers as usize];
    let mut problems = Vec::new();
    let mut received = 0u64;
    for c in 0..consumers {
        let recs = std::fs::read(dir.join(format!("consumer-{c}.bin"))).expect("consumer records");
        assert_eq!(recs.len() % 16, 0);
        let mut last = vec![None::<u64>; producers as usize];
        for r in recs.chunks_exact(16) {
            received += 1;
            let p = u32::from_le_bytes(r[0..4].try_into().unwrap());
            let flags = u32::from_le_bytes(r[4..8].try_into().unwrap());
            let seq = u64::from_le_bytes(r[8..16].try_into().unwrap());
            if flags != 0 {
                problems.push(format!(
                    "consumer {c}: message (producer {p}, seq {seq}) flags {flags:#x} \
                     (1 len, 2 checksum, 4 body, 8 misaligned, 16 redelivered, 32 producer)"
                ));
            }
            if p >= producers || seq >= per_producer {
                continue;
            }
            seen[p as usize][seq as usize] += 1;
            if let Some(l) = last[p as usize] {
                if seq <= l {
                    problems.push(format!(
                        "consumer {c}: producer {p} out of order: seq {seq} after {l}"
                    ));
                }
            }
            last[p as usize] = Some(seq);
        }
    }
    for (p, s) in seen.iter().enumerate() {
        for (seq, &n) in s.iter().enumerate() {
            if n != 1 {
                problems.push(format!("producer {p} seq {seq} received {n} times"));
            }
        }
    }
    let n_problems = problems.len();
    problems.truncate(20);
    assert!(
        problems.is_empty(),
        "{n_problems} problems ({received} received of {total}), first ones:\n{}",
        problems.join("\n")
    );
    assert_eq!(received, total);
    assert!(
        matches!(rx.try_recv(), Err(shmq::TryRecvError::Empty)),
        "the queue must be empty after every message and marker was received"
    );
    eprintln!(
        "{test}: {producers} -> {consumers} processes, {total} messages, capacity {capacity}: {elapsed:?}"
    );
    drop(tx);
    drop(rx);
    guard.assert_clean();
}

#[test]
fn one_producer_to_one_consumer_delivers_every_message_once_in_order() {
    as_child(child_role);
    run(
        "one_producer_to_one_consumer_delivers_every_message_once_in_order",
        1,
        1,
        50_000,
        8,
    );
}

#[test]
fn three_producers_to_three_consumers_deliver_every_message_exactly_once() {
    as_child(child_role);
    run(
        "three_producers_to_three_consumers_deliver_every_message_exactly_once",
        3,
        3,
        15_000,
        16,
    );
}

#[test]
fn four_producers_to_one_consumer_keep_each_producers_order() {
    as_child(child_role);
    run(
        "four_producers_to_one_consumer_keep_each_producers_order",
        4,
        1,
        10_000,
        4,
    );
}

#[test]
fn capacity_one_with_three_producers_and_three_consumers_loses_nothing() {
    as_child(child_role);
    run(
        "capacity_one_with_three_producers_and_three_consumers_loses_nothing",
        3,
        3,
        4_000,
        1,
    );
}

//! In-process stress: many sender and receiver handles on threads, exact accounting.
//! Each thread has a handle (a participant) of its own, or, in the `shared` runs, all
//! consumer threads block on one `Receiver` and all producer threads on one `Sender`
//! (one participant bit that several sleeping threads of one process share:
//! `wait::block_on_counted`). Quick to run; the cross-process versions are in mpmc.rs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn run(
    producers: usize,
    consumers: usize,
    per_producer: u64,
    capacity: usize,
    size: usize,
    shared: bool,
) {
    let (tx, rx) = shmq::Builder::new()
        .capacity(capacity)
        .max_participants((producers + consumers + 4).max(64))
        .create()
        .unwrap();
    let (tx, rx) = (Arc::new(tx), Arc::new(rx));
    let name = tx.name().to_string();
    let got: Arc<Mutex<HashMap<(u64, u64), usize>>> = Default::default();
    let mut hs = Vec::new();
    for c in 0..consumers {
        let rx = if shared {
            rx.clone()
        } else {
            Arc::new(rx.try_clone().unwrap())
        };
        let got = got.clone();
        hs.push(std::thread::spawn(move || {
            let mut last: HashMap<u64, u64> = HashMap::new();
            loop {
                match rx.recv_timeout(Duration::from_secs(20)) {
                    Ok(m) => {
                        let p = u64::from_le_bytes(m[0..8].try_into().unwrap());
                        let i = u64::from_le_bytes(m[8..16].try_into().unwrap());
                        assert!(
                            m[16..].iter().all(|&b| b == (p ^ i) as u8),
                            "payload corrupt"
                        );
                        if let Some(&l) = last.get(&p) {
                            assert!(
                                i > l,
                                "consumer {c}: producer {p} out of order: {i} after {l}"
                            );
                        }
                        last.insert(p, i);
                        *got.lock().unwrap().entry((p, i)).or_default() += 1;
                    }
                    Err(shmq::RecvTimeoutError::Disconnected) => return,
                    Err(e) => panic!("consumer {c}: {e}"),
                }
            }
        }));
    }
    drop(rx);
    let mut ps = Vec::new();
    for p in 0..producers as u64 {
        let tx = if shared {
            tx.clone()
        } else {
            Arc::new(tx.try_clone().unwrap())
        };
        ps.push(std::thread::spawn(move || {
            for i in 0..per_producer {
                let len = 16 + (size + i as usize * 7) % (size + 1);
                // Timeouts as the watchdog: a lost wake-up fails the test, never hangs it.
                let mut loan = tx.loan_timeout(len, Duration::from_secs(20)).unwrap();
                loan[0..8].copy_from_slice(&p.to_le_bytes());
                loan[8..16].copy_from_slice(&i.to_le_bytes());
                loan[16..].fill((p ^ i) as u8);
                loan.send_timeout(Duration::from_secs(20)).unwrap();
            }
        }));
    }
    drop(tx);
    for h in ps {
        h.join().unwrap();
    }
    for h in hs {
        h.join().unwrap();
    }
    let got = got.lock().unwrap();
    assert_eq!(got.len() as u64, producers as u64 * per_producer);
    assert!(
        got.values().all(|&n| n == 1),
        "a message was delivered twice"
    );
    assert!(!std::path::Path::new(&format!("/dev/shm/shmq.{name}")).exists());
}

#[test]
fn threads_4_by_4_small_messages_arrive_exactly_once_in_order() {
    run(4, 4, 20_000, 8, 100, false);
}

#[test]
fn threads_sharing_one_receiver_and_one_sender_arrive_exactly_once_in_order() {
    // Capacity 1: producer threads sleep on the shared sender's `not_full` bit, consumer
    // threads on the shared receiver's `not_empty` bit, over and over.
    run(3, 3, 5_000, 1, 100, true);
}

#[test]
fn threads_2_by_3_capacity_one_segments_arrive_exactly_once_in_order() {
    run(2, 3, 3_000, 1, 5000, false);
}

/// 64 sender and 64 receiver handles on as many threads (the edges issue measured this:
/// 128,000 messages, each delivered exactly once).
#[test]
fn threads_64_by_64_arrive_exactly_once_in_order() {
    run(64, 64, 2_000, 16, 100, false);
}

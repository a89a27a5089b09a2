//! In-process stress: many sender and receiver handles on threads (each a participant),
//! exact accounting. Quick to run; the cross-process versions are in mpmc.rs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn run(producers: usize, consumers: usize, per_producer: u64, capacity: usize, size: usize) {
    let (tx, rx) = shmq::Builder::new().capacity(capacity).create().unwrap();
    let name = tx.name().to_string();
    let got: Arc<Mutex<HashMap<(u64, u64), usize>>> = Default::default();
    let mut hs = Vec::new();
    for c in 0..consumers {
        let rx = rx.try_clone().unwrap();
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
        let tx = tx.try_clone().unwrap();
        ps.push(std::thread::spawn(move || {
            for i in 0..per_producer {
                let len = 16 + (size + i as usize * 7) % (size + 1);
                let mut loan = tx.loan(len).unwrap();
                loan[0..8].copy_from_slice(&p.to_le_bytes());
                loan[8..16].copy_from_slice(&i.to_le_bytes());
                loan[16..].fill((p ^ i) as u8);
                loan.send().unwrap();
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
    run(4, 4, 20_000, 8, 100);
}

#[test]
fn threads_2_by_3_capacity_one_segments_arrive_exactly_once_in_order() {
    run(2, 3, 3_000, 1, 5000);
}

//! Recovery runners of one process: every thread of a process takes the recovery lease
//! with the same word, so the lease alone cannot keep two of them from repairing the same
//! dead participant at once; `Queue::recovering`, a process-local lock, does. Four
//! threads repair one dead consumer process together: each of its records is recovered
//! once, and each of the messages it held is redelivered once.

mod common;

use common::{ShmGuard, Watchdog};
use std::sync::{Arc, Barrier};
use std::time::Duration;

const TEST: &str = "threads_of_one_process_recover_a_dead_consumer_once";
const HELD: u32 = 200;

/// Child role: takes every message and holds them until killed.
fn holder() {
    let rx = shmq::Receiver::open(&common::param("name")).unwrap();
    let held: Vec<_> = (0..HELD).map(|_| rx.recv().unwrap()).collect();
    common::touch(common::param("ready"));
    std::thread::sleep(Duration::from_secs(60));
    drop(held);
}

#[test]
fn threads_of_one_process_recover_a_dead_consumer_once() {
    common::as_child(|_| holder());
    let _wd = Watchdog::new("runners", Duration::from_secs(120));
    let g = ShmGuard::new("runners");
    let dir = common::TempDir::new("runners");
    let ready = dir.join("ready");
    // Manual supervision: no supervisor thread of ours repairs behind the test's back.
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(HELD as usize)
        .supervision(shmq::Supervision::Manual)
        .create()
        .unwrap();
    for i in 0..HELD {
        tx.send(&i.to_le_bytes()).unwrap();
    }
    let name = g.name().to_string();
    let mut c = common::Child::spawn(
        TEST,
        "holder",
        &[("name", &name), ("ready", &ready.display())],
    );
    common::wait_for_file(&ready, Some(&mut c));
    // Its receiver's record and its supervisor thread's.
    let records = shmq::info::inspect(&name)
        .unwrap()
        .participants
        .iter()
        .filter(|p| p.pid == c.pid())
        .count();
    assert_eq!(records, 2);
    c.kill();
    let start = Arc::new(Barrier::new(4));
    let runners: Vec<_> = (0..4)
        .map(|_| {
            let sup = shmq::Supervisor::open(&name).unwrap();
            let start = start.clone();
            let name = name.clone();
            std::thread::spawn(move || {
                start.wait();
                let mut n = 0;
                // Until the dead consumer is recovered (a busy runner makes the others
                // skip it for now).
                for _ in 0..1000 {
                    n += sup.run_once().unwrap();
                    if shmq::info::inspect(&name)
                        .unwrap()
                        .participants
                        .iter()
                        .all(|p| p.alive)
                    {
                        break;
                    }
                    std::thread::yield_now();
                }
                n
            })
        })
        .collect();
    let recovered: usize = runners.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(
        recovered, records,
        "{records} dead records counted {recovered} times"
    );
    let mut seen = vec![0u32; HELD as usize];
    while let Ok(m) = rx.try_recv() {
        assert!(m.is_redelivery());
        seen[u32::from_le_bytes(m[..4].try_into().unwrap()) as usize] += 1;
    }
    assert!(
        seen.iter().all(|&n| n == 1),
        "redeliveries per message: {:?}",
        seen.iter()
            .enumerate()
            .filter(|(_, &n)| n != 1)
            .collect::<Vec<_>>()
    );
    drop((tx, rx));
    g.assert_clean();
}

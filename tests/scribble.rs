//! A process scribbles random words over a live queue's header while a producer and two
//! consumers (processes of their own) work through it (issue 12, item 7). Whatever the
//! scribbles do to the queue, no participant may die by a signal, panic or hang: every
//! call returns (a message, an error, a timeout). The scribbling stops before the
//! verification phase, in which each participant must notice the stop and exit normally.
//! The seed of each round is printed, to replay one.

mod common;

use common::{ShmGuard, Watchdog};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);
const TEST: &str = "scribbles_never_crash_hang_or_panic_a_participant";

fn stopped(stop: &Path) -> bool {
    stop.exists()
}

/// Child role: sends messages of every storage kind (inline and segment sizes) until the
/// stop file appears; every outcome other than a panic or a signal is acceptable.
fn producer(name: &str, stop: &Path) {
    let tx = shmq::Sender::open(name).unwrap();
    let mut seq = 0u64;
    let mut outcomes = [0u64; 2];
    while !stopped(stop) {
        let len = [16usize, 200, 5_000, 70_000][(seq % 4) as usize];
        let mut m = vec![seq as u8; len];
        m[..8].copy_from_slice(&seq.to_le_bytes());
        match tx.send_timeout(&m, Duration::from_millis(50)) {
            Ok(()) => outcomes[0] += 1,
            Err(_) => {
                outcomes[1] += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        seq += 1;
    }
    eprintln!(
        "scribble producer: {} sent, {} failed",
        outcomes[0], outcomes[1]
    );
}

/// Child role: receives and reads every byte of what it gets until the stop file appears.
fn consumer(name: &str, stop: &Path) {
    let rx = shmq::Receiver::open(name).unwrap();
    let mut outcomes = [0u64; 2];
    let mut sum = 0u64;
    while !stopped(stop) {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(m) => {
                outcomes[0] += 1;
                sum = m.iter().fold(sum, |s, &b| s.wrapping_add(u64::from(b)));
            }
            Err(_) => {
                outcomes[1] += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    eprintln!(
        "scribble consumer: {} received, {} errors or timeouts (sum {sum})",
        outcomes[0], outcomes[1]
    );
}

/// One round: the queue, three participant processes, `writes_per_s` random 8-byte words
/// written over the header from byte `from` on during `for_how_long`, then the stop.
fn round(writes_per_s: u64, for_how_long: Duration, from: u64) {
    let g = ShmGuard::new("scribble");
    let dir = common::TempDir::new("scribble");
    let stop = dir.join("stop");
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(8)
        .max_message_size(1 << 20)
        .create()
        .unwrap();
    let name = g.name().to_string();
    let spawn =
        |role| common::Child::spawn(TEST, role, &[("name", &name), ("stop", &stop.display())]);
    let mut children = vec![spawn("producer"), spawn("consumer"), spawn("consumer")];
    // The creator's handles go: only the children (and the scribbler) are left.
    common::wait_until(|| shmq::info::inspect(&name).unwrap().participants.len() >= 4);
    drop((tx, rx));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(g.header_path())
        .unwrap();
    let (first, words) = (from / 8, f.metadata().unwrap().len() / 8 - from / 8);
    let seed: u64 = rand::random();
    eprintln!(
        "scribble round: {writes_per_s} writes/s from byte {from} for {for_how_long:?}, seed {seed:#x}"
    );
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < for_how_long {
        let r = common::mix(seed ^ n);
        let value = common::mix(r);
        // Small values as often as random ones: indices, lengths, states, pids.
        let value = if r & 1 == 0 { value % 1024 } else { value };
        let _ = f.write_all_at(&value.to_ne_bytes(), (first + (r >> 1) % words) * 8);
        n += 1;
        let due = Duration::from_secs_f64(n as f64 / writes_per_s as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    drop(f);
    // Verification: nobody scribbles any more. Whatever state the queue is in, looking
    // at it answers (a report, or a typed error that says what is wrong).
    let report = match shmq::info::inspect(&name) {
        Ok(info) => format!(
            "inspect: {} participants, problems {:?}",
            info.participants.len(),
            info.problems
        ),
        Err(e) => {
            assert!(
                matches!(
                    e.kind(),
                    shmq::ErrorKind::Corrupt
                        | shmq::ErrorKind::NotAQueue
                        | shmq::ErrorKind::VersionMismatch
                ),
                "inspect after the scribbles (seed {seed:#x}): {e}"
            );
            format!("inspect: {e}")
        }
    };
    eprintln!("scribble round {seed:#x}: {report}");
    // Every participant must see the stop and end its role normally (not by a signal, a
    // panic, or the child watchdog), and the last one out removes the queue.
    common::touch(&stop);
    for c in &mut children {
        c.wait_ok();
    }
    g.assert_clean();
}

#[test]
fn scribbles_never_crash_hang_or_panic_a_participant() {
    common::as_child(|role| {
        let name = common::param("name");
        let stop = PathBuf::from(common::param("stop"));
        match role {
            "producer" => producer(&name, &stop),
            "consumer" => consumer(&name, &stop),
            r => panic!("unknown role {r}"),
        }
    });
    let _wd = Watchdog::new("scribble", LIMIT);
    // A slow scribbler over the whole header (a working queue, or one whose identity is
    // gone: magic, version, dimensions), and a fast one over everything past the identity
    // and options (positions, ring cells, wait words, participant and slot records), so
    // the participants go on working through a header that still opens.
    round(200, Duration::from_millis(1500), 0);
    round(10_000, Duration::from_millis(1500), 128);
}

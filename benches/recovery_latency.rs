//! Recovery latency: how long after a participant's SIGKILL its resources are reclaimed
//! and blocked waiters are woken.
//!
//! * `disconnect`: the parent is blocked in `recv` on an empty queue whose only sender is
//!   a child process; time from `kill(child, SIGKILL)` to `recv` returning
//!   `Disconnected` (the child's records recovered, the waiter woken).
//! * `redeliver`: a child consumer holds a message; the parent is blocked in `recv`; time
//!   from the kill to `recv` returning that message marked `is_redelivery()` (the held
//!   slot orphaned, the waiter woken).
//!
//! Each with
//!
//! * `Supervision::Thread`, peer `watched`: the kill comes once the parent's supervisor
//!   thread holds a pidfd for the child, so the pidfd wakes it;
//! * `Supervision::Thread`, peer `young`: the kill comes 5–105 ms after the child
//!   attached, without waiting for the supervisor to watch it (it hears of new peers
//!   through an inotify watch on the header, which registration touches; without that it
//!   found them at its 250 ms rescan, and this case measured p50 25–36 ms, p99 93–98 ms);
//! * `Supervision::Manual`: no thread and no other process; the blocked call repairs at
//!   the end of each 100 ms slice, so expect a uniform 0–100 ms (the kill comes a random
//!   5–105 ms after the waiter blocked).
//!
//! Every iteration checks what arrived; the queue is checked (every slot free, exact
//! capacity, clean `/dev/shm`) at the end of each case. `SHMQ_BENCH_VERBOSE=1` prints
//! every kill.
//!
//! `SHMQ_BENCH_KILLS` sets the kills per case (default 100).

#[path = "../tests/crash_support/mod.rs"]
mod crash_support;

use crash_support::*;
use shmq::{Builder, Sender, Supervision};
use std::time::{Duration, Instant};

const CAP: usize = 4;
const SLOTS: usize = 2 * CAP + 16;

fn sup_name(s: Supervision) -> &'static str {
    match s {
        Supervision::Thread => "thread",
        Supervision::Manual => "manual",
    }
}

/// Child: opens a sender, emits `ready`, sleeps until killed.
fn sender_child() -> ! {
    let tx = Builder::new()
        .name(queue_name())
        .supervision(supervision())
        .open_sender()
        .unwrap();
    emit("ready");
    let _keep = tx;
    sleep_forever()
}

fn env(name: &str, sup: Supervision) -> Vec<(&'static str, String)> {
    vec![
        (NAME_VAR, name.to_string()),
        ("SHMQ_T_SUP", sup_name(sup).to_string()),
        ("SHMQ_T_HOLD", "1".to_string()),
    ]
}

/// With `SHMQ_BENCH_VERBOSE=1`, prints every kill's latency.
fn verbose(case: &str, sup: Supervision, watched: bool, i: u64, d: Duration) {
    if std::env::var("SHMQ_BENCH_VERBOSE").as_deref() == Ok("1") {
        println!(
            "  {case} {} watched={watched} kill {i}: {:.3} ms",
            sup_name(sup),
            ms(d)
        );
    }
}

fn pause_before_kill() -> Duration {
    Duration::from_micros(5_000 + rand::random::<u64>() % 100_000)
}

/// Whether this process holds a pidfd for `pid` (what the supervisor thread watches):
/// read from `/proc/self/fdinfo` (`Pid:` line of each pidfd).
fn watching(pid: i32) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc/self/fd") else {
        return false;
    };
    rd.flatten().any(|e| {
        let is_pidfd =
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("pidfd"));
        is_pidfd
            && std::fs::read_to_string(format!(
                "/proc/self/fdinfo/{}",
                e.file_name().to_string_lossy()
            ))
            .is_ok_and(|info| {
                info.lines()
                    .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Pid:", &pid.to_string()])
            })
    })
}

/// Before the kill: with `watched`, until the supervisor thread holds a pidfd for the
/// child, then a little more; else a random 5–105 ms.
fn before_kill(watched: bool, child: i32) {
    if watched {
        let t0 = Instant::now();
        while !watching(child) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the supervisor never watched the child"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(
            2_000 + rand::random::<u64>() % 10_000,
        ));
    } else {
        std::thread::sleep(pause_before_kill());
    }
}

fn disconnect(kills: usize, sup: Supervision, watched: bool) -> Vec<Duration> {
    let g = ShmGuard::new("bench");
    let (tx, rx) = Builder::new()
        .name(&g.name)
        .capacity(CAP)
        .supervision(sup)
        .create()
        .unwrap();
    drop(tx);
    let mut lat = Vec::with_capacity(kills);
    for i in 0..kills {
        let mut child = Proc::spawn(&[], &format!("sender{i}"), "sender", &env(&g.name, sup));
        child.expect("ready");
        let (t0, (r, t1)) = std::thread::scope(|s| {
            let h = s.spawn(|| {
                let r = rx.recv();
                (r.map(|m| m.len()), Instant::now())
            });
            before_kill(watched, child.pid());
            assert!(!h.is_finished(), "recv returned while the sender lived");
            let t0 = Instant::now();
            child.kill();
            (t0, h.join().unwrap())
        });
        assert!(
            matches!(r, Err(shmq::RecvError::Disconnected)),
            "kill {i}: recv gave {r:?}"
        );
        lat.push(t1.duration_since(t0));
        verbose("disconnect", sup, watched, i as u64, t1.duration_since(t0));
        child.expect_killed("by the benchmark");
    }
    let tx = Sender::open(&g.name).unwrap();
    assert_all_slots_free(&tx, &rx, CAP, SLOTS);
    drop((tx, rx));
    g.assert_clean();
    lat
}

fn redeliver(kills: usize, sup: Supervision, watched: bool) -> Vec<Duration> {
    let g = ShmGuard::new("bench");
    let (tx, rx) = Builder::new()
        .name(&g.name)
        .capacity(CAP)
        .supervision(sup)
        .create()
        .unwrap();
    let mut lat = Vec::with_capacity(kills);
    for i in 0..kills as u64 {
        let mut child = Proc::spawn(&[], &format!("holder{i}"), "holder", &env(&g.name, sup));
        child.expect("ready");
        tx.send(&payload(0, i, 1000)).unwrap();
        assert_eq!(child.expect("holding"), format!("0 {i}"));
        let (t0, (r, t1)) = std::thread::scope(|s| {
            let h = s.spawn(|| {
                let r = rx.recv();
                (r.map(|m| (check(&m), m.is_redelivery())), Instant::now())
            });
            before_kill(watched, child.pid());
            assert!(!h.is_finished(), "recv returned while the holder lived");
            let t0 = Instant::now();
            child.kill();
            (t0, h.join().unwrap())
        });
        assert_eq!(
            r.ok(),
            Some((Ok((0, i)), true)),
            "kill {i}: the held message comes back"
        );
        lat.push(t1.duration_since(t0));
        verbose("redeliver", sup, watched, i, t1.duration_since(t0));
        child.expect_killed("by the benchmark");
    }
    assert_all_slots_free(&tx, &rx, CAP, SLOTS);
    drop((tx, rx));
    g.assert_clean();
    lat
}

fn main() {
    if let Some(r) = role() {
        match r.as_str() {
            "sender" => sender_child(),
            "holder" => holder_child(),
            r => panic!("unknown role {r}"),
        }
    }
    let kills: usize = std::env::var("SHMQ_BENCH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    println!("command: cargo bench --features fault-injection --bench recovery_latency   (SHMQ_BENCH_KILLS={kills})");
    println!(
        "host: {} cpus; recovery latency = time from kill(SIGKILL) to the blocked waiter's return",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _wd = Watchdog::new("recovery_latency", 600 + kills as u64 * 6);
    println!(
        "{:<11} {:<8} {:<7} {:>6} {:>10} {:>10} {:>10}",
        "case", "superv.", "peer", "kills", "p50 ms", "p99 ms", "max ms"
    );
    type Case = fn(usize, Supervision, bool) -> Vec<Duration>;
    for (case, f) in [("disconnect", disconnect as Case), ("redeliver", redeliver)] {
        for (sup, watched) in [
            (Supervision::Thread, true),
            (Supervision::Thread, false),
            (Supervision::Manual, false),
        ] {
            let mut v = f(kills, sup, watched);
            let (p50, p99, max) = percentiles(&mut v);
            println!(
                "{case:<11} {:<8} {:<7} {:>6} {:>10.3} {:>10.3} {:>10.3}",
                sup_name(sup),
                match (sup, watched) {
                    (Supervision::Manual, _) => "-",
                    (_, true) => "watched",
                    _ => "young",
                },
                v.len(),
                ms(p50),
                ms(p99),
                ms(max)
            );
        }
    }
}

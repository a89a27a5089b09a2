//! An actor → learner pipeline across processes over one shmq queue, the shape of a
//! distributed reinforcement-learning setup: N actor processes render batches of f32
//! observations (default 8×84×84×4, Atari-style stacked frames, 903 kB a message) straight
//! into shared memory through a [`shmq::Loan`] and send them; M learner processes take
//! them (each message goes to exactly one learner), read them in place and verify them.
//!
//! ```sh
//! cargo run --release --example rl_pipeline                      # 3 actors, 2 learners, 3 s
//! cargo run --release --example rl_pipeline -- --actors 4 --learners 1 --seconds 1 \
//!     --capacity 8 --frames 32x84x84x4
//! ```
//!
//! The parent creates the queue, starts every child by re-executing this program with
//! `--role actor|learner`, starts them together, then checks the accounting: for every
//! actor, the sequence numbers the learners received are exactly `0..sent` (count, sum and
//! sum of squares), every checksum matched, and each learner saw each actor's messages in
//! order. It prints the throughput and exits non-zero on any mismatch, on a child failure
//! or on a leftover object in `/dev/shm`. Children are killed and reaped on every failure
//! path, Ctrl-C included.
//!
//! Files: `cli.rs` options, `payload.rs` message format, `child.rs` the actor and learner
//! loops, `report.rs` the child → parent protocol, `parent.rs` process management. A
//! replay-buffer role, periodic stats lines for a live display and a chaos mode (killing
//! children at random, which `Children` and the at-least-once accounting are ready for)
//! slot into these without changing the others' shape.

mod child;
mod cli;
mod parent;
mod payload;
mod report;

use cli::{Options, Role};
use report::{Report, SeqTally};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Set by the Ctrl-C handler, which then exits the process itself.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    let o = match cli::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}\n");
            }
            eprintln!("{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match o.role {
        Role::Parent => parent_main(&o),
        Role::Actor | Role::Learner => {
            // SIGINT (Ctrl-C reaches the whole process group) and SIGTERM (sent by the
            // kernel if the parent dies, however it dies) ask the child to wind down the
            // ordinary way: actors stop sending and drop their senders, learners drain the
            // queue until `Disconnected`. Every handle is dropped by the thread using it, so
            // the queue leaves /dev/shm with the last process. (Not `shmq::shutdown::
            // exit_on_signals`: it releases the handles from its own thread while this one
            // may still be sending or receiving with them.)
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
                    eprintln!("warning: cannot handle signal {sig}: {e}");
                }
            }
            let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
            if nix::unistd::getppid().as_raw() == 1 {
                eprintln!("[{} {}] the parent is already gone", o.role.as_str(), o.id);
                return ExitCode::FAILURE;
            }
            let r = match o.role {
                Role::Actor => child::actor(&o, &stop),
                _ => child::learner(&o),
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("[{} {}] error: {e}", o.role.as_str(), o.id);
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn parent_main(o: &Options) -> ExitCode {
    let len = payload::message_bytes(o.elems());
    println!(
        "rl_pipeline: {} actors -> {} learners, {:.1} s, capacity {}, messages of {} f32 ({})",
        o.actors,
        o.learners,
        o.seconds,
        o.capacity,
        o.shape(),
        human(len as f64)
    );
    let pids = Arc::new(Mutex::new(Vec::new()));
    {
        // On Ctrl-C: kill and reap the children first, so that this process is the last
        // one attached and `exit_on_signals` unlinks the queue on its way out. (Safe here,
        // unlike in the children: the main thread only waits on the children meanwhile,
        // and parks once it sees `INTERRUPTED`.)
        let pids = pids.clone();
        if let Err(e) = shmq::shutdown::exit_on_signals(move || {
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("interrupted: stopping the children");
            parent::kill_pids(&pids);
        }) {
            eprintln!("warning: {e}");
        }
    }
    let mut queue = String::new();
    let outcome = parent::run(o, pids, &mut queue);
    if INTERRUPTED.load(Ordering::SeqCst) {
        // The children died of the Ctrl-C, not of a bug: let the handler finish and exit.
        loop {
            std::thread::park();
        }
    }
    let clean = check_clean(&queue);
    let mut ok = match outcome {
        Ok(out) => account(o, &out),
        Err(e) => {
            eprintln!("error: {e}");
            false
        }
    };
    if let Err(e) = clean {
        eprintln!("error: {e}");
        ok = false;
    }
    if ok {
        println!("OK");
        ExitCode::SUCCESS
    } else {
        println!("FAILED");
        ExitCode::FAILURE
    }
}

/// Prints the per-child figures and the totals; `false` on any mismatch.
fn account(o: &Options, out: &parent::Outcome) -> bool {
    let mut sent = BTreeMap::new();
    let mut got: BTreeMap<u32, SeqTally> = BTreeMap::new();
    let (mut received, mut bytes, mut corrupt, mut reordered, mut redelivered) = (0, 0, 0, 0, 0);
    let (mut lat_sum, mut lat_max) = (0u64, 0u64);
    // Actors first, then learners.
    let (actors, learners): (Vec<&Report>, Vec<&Report>) = out
        .reports
        .iter()
        .partition(|r| matches!(r, Report::Actor(_)));
    for r in actors.into_iter().chain(learners) {
        match r {
            Report::Actor(a) => {
                println!(
                    "  actor {:>2}: sent {:>8} msgs, {:>9} in {:.2} s ({:.0} msgs/s)",
                    a.id,
                    a.sent,
                    human(a.bytes as f64),
                    a.secs,
                    a.sent as f64 / a.secs
                );
                sent.insert(a.id, a.sent);
            }
            Report::Learner(l) => {
                println!(
                    "  learner {:>2}: received {:>8} msgs, {:>9}, corrupt {}, out of order {}, \
                     mean latency {:.0} µs",
                    l.id,
                    l.received,
                    human(l.bytes as f64),
                    l.corrupt,
                    l.reordered,
                    l.lat_sum_ns as f64 / l.received.max(1) as f64 / 1e3
                );
                received += l.received;
                bytes += l.bytes;
                corrupt += l.corrupt;
                reordered += l.reordered;
                redelivered += l.redelivered;
                lat_sum += l.lat_sum_ns;
                lat_max = lat_max.max(l.lat_max_ns);
                for (a, t) in &l.per_actor {
                    got.entry(*a).or_default().merge(t);
                }
            }
        }
    }
    let total_sent: u64 = sent.values().sum();
    println!("queue: {} (now removed from /dev/shm)", out.queue);
    let secs = out.elapsed.as_secs_f64();
    println!(
        "throughput: {:.0} msgs/s, {}/s ({} msgs, {} in {secs:.2} s from start to last \
         report); latency mean {:.0} µs, max {:.1} ms",
        received as f64 / secs,
        human(bytes as f64 / secs),
        received,
        human(bytes as f64),
        lat_sum as f64 / received.max(1) as f64 / 1e3,
        lat_max as f64 / 1e6
    );
    let mut ok = true;
    let mut fail = |what: String| {
        eprintln!("MISMATCH: {what}");
        ok = false;
    };
    if sent.len() != o.actors as usize {
        fail(format!(
            "{} actor reports for {} actors",
            sent.len(),
            o.actors
        ));
    }
    for (&a, &n) in &sent {
        let t = got.remove(&a).unwrap_or_default();
        if t != SeqTally::exact(n) {
            fail(format!(
                "actor {a} sent seq 0..{n}, learners got {} messages (seq sum {}, expected {})",
                t.count,
                t.sum,
                SeqTally::exact(n).sum
            ));
        }
    }
    for (a, t) in got {
        fail(format!(
            "{} messages from actor {a}, which did not report",
            t.count
        ));
    }
    if received != total_sent {
        fail(format!("sent {total_sent} messages, received {received}"));
    }
    if corrupt > 0 {
        fail(format!("{corrupt} corrupt messages"));
    }
    if reordered > 0 {
        fail(format!("{reordered} messages out of per-actor order"));
    }
    if redelivered > 0 {
        // Nobody died, so nothing should have been redelivered.
        fail(format!("{redelivered} redeliveries without any crash"));
    }
    println!(
        "accounting: sent {total_sent} == received {received}, {corrupt} corrupt, {reordered} \
         out of order: {}",
        if ok { "exact" } else { "MISMATCH" }
    );
    ok
}

/// Every object of queue `name` is gone from `/dev/shm`; leftovers are removed and reported.
fn check_clean(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Ok(()); // the queue was never created
    }
    let header = format!("shmq.{name}");
    let segment = format!("shmq.{name}.");
    let mut left = Vec::new();
    for e in std::fs::read_dir("/dev/shm").map_err(|e| format!("/dev/shm: {e}"))? {
        let f = e.map_err(|e| format!("/dev/shm: {e}"))?.file_name();
        let f = f.to_string_lossy();
        if f == header || f.starts_with(&segment) {
            let _ = std::fs::remove_file(format!("/dev/shm/{f}"));
            left.push(f.into_owned());
        }
    }
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "left in /dev/shm (now removed): {}",
            left.join(" ")
        ))
    }
}

fn human(bytes: f64) -> String {
    match bytes {
        b if b >= 1e9 => format!("{:.2} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        b => format!("{b:.0} B"),
    }
}

//! A multi-process reinforcement-learning pipeline over two shmq queues, the shape of a
//! distributed RL setup (Ape-X, R2D2, IMPALA-with-replay):
//!
//! ```text
//!  actor 0 ─┐                                              ┌─> learner 0
//!  actor 1 ─┼─> trajectory queue ─> replay buffer ─> batch queue ─┤
//!  actor 2 ─┘   (N producers)      (keeps the last K,  (M consumers)  └─> learner 1
//!                                   samples batches)
//! ```
//!
//! * **actors** render trajectories (T steps of f32 observations, e.g. 8×84×84×4 stacked
//!   Atari frames, plus actions and rewards) straight into shared memory through a typed
//!   loan (`Sender::loan_slice`, `Loan::cast_mut`) and send them;
//! * the **replay buffer** holds the last K trajectories as received messages (zero-copy;
//!   acked when evicted, redelivered to its next incarnation if it is killed) and serves
//!   batches of B trajectories sampled uniformly at random;
//! * **learners** view each batch in place (`Message::cast`) and check the checksum of
//!   every trajectory in it, standing in for a training step.
//!
//! ```sh
//! cargo run --release --example rl_pipeline                          # 3 actors, 2 learners, 3 s
//! cargo run --release --example rl_pipeline -- --chaos --seconds 10  # random SIGKILLs + restarts
//! cargo run --release --example rl_pipeline -- --help
//! ```
//!
//! The parent creates both queues, starts every child by re-executing this program with
//! `--role actor|replay|learner`, starts them together, shows a live display (rates, queue
//! depths, the replay buffer's fill, redeliveries and recoveries; plain lines when stdout
//! is not a terminal), and at the end checks the accounting from the children's journals:
//! every trajectory and every batch whose `send` returned `Ok` was received at least once,
//! and duplicates are only redeliveries (see `ledger.rs`). With `--chaos` it SIGKILLs a
//! random actor, learner or the replay buffer every 0.2–0.8 s and restarts it, and the
//! accounting must still add up. Exit status: 0 if it does and `/dev/shm` is clean, 1
//! otherwise, 128+signal after Ctrl-C (with the same checks).
//!
//! Files: `cli.rs` options, `payload.rs` message formats, `child.rs` the actors and
//! learners, `replay.rs` the replay buffer, `journal.rs` the children's durable records,
//! `ledger.rs` the accounting, `parent.rs` process management and chaos, `display.rs` the
//! live display, `report.rs` the summary.

mod child;
mod cli;
mod display;
mod journal;
mod ledger;
mod parent;
mod payload;
mod replay;
mod report;

use cli::{Options, Role};
use report::human;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;

/// SIGINT/SIGTERM received by the parent, and the first one's number.
static SIGNALS: AtomicUsize = AtomicUsize::new(0);
static FIRST_SIGNAL: AtomicI32 = AtomicI32::new(0);

fn main() -> ExitCode {
    let o = match cli::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{}", cli::USAGE); // --help
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match o.role {
        Role::Parent => parent_main(o),
        _ => child_main(&o),
    }
}

fn child_main(o: &Options) -> ExitCode {
    // SIGTERM (from the parent at the end of the run, or from the kernel when the parent
    // dies, however it dies) and a first Ctrl-C (which reaches the whole process group)
    // set `stop`: actors stop sending and leave; the replay buffer and the learners
    // ignore it and drain until `Disconnected`, so that whatever was sent is received.
    // Every handle is dropped by the thread that uses it, and the last process out
    // unlinks the queues. A second Ctrl-C kills at once. (Not `shmq::shutdown::
    // exit_on_signals`: it releases the handles from its own thread while the working
    // thread may still be sending or receiving with them.)
    let stop = Arc::new(AtomicBool::new(false));
    let sigint = signal_hook::consts::SIGINT;
    let r = signal_hook::flag::register_conditional_default(sigint, stop.clone())
        .and_then(|_| signal_hook::flag::register(sigint, stop.clone()))
        .and_then(|_| signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone()));
    if let Err(e) = r {
        eprintln!("warning: cannot handle signals: {e}");
    }
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
    if nix::unistd::getppid().as_raw() == 1 {
        eprintln!("[{} {}] the parent is already gone", o.role.as_str(), o.id);
        return ExitCode::FAILURE;
    }
    let r = match o.role {
        Role::Actor => child::actor(o, &stop),
        Role::Replay => replay::replay(o),
        _ => child::learner(o),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("[{} {}.{}] error: {e}", o.role.as_str(), o.id, o.inc);
            ExitCode::FAILURE
        }
    }
}

fn parent_main(mut o: Options) -> ExitCode {
    let seed = *o.seed.get_or_insert_with(rand::random);
    let base = format!("rlp-{}-{:08x}", std::process::id(), rand::random::<u32>());
    o.queues = [format!("{base}-traj"), format!("{base}-batch")];
    let dir = match parent::make_dir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    o.dir = dir.to_string_lossy().into_owned();
    let traj = payload::traj_bytes(o.steps(), o.obs_elems()) as u64;
    let batch = payload::batch_words(
        o.batch as usize,
        payload::traj_words(o.steps(), o.obs_elems()),
    ) as u64
        * 4;
    println!(
        "rl_pipeline: {} actors -> replay buffer (last {} trajectories) -> {} learners, {:.1} s{}",
        o.actors,
        o.buffer,
        o.learners,
        o.seconds,
        if o.chaos { ", chaos on" } else { "" }
    );
    println!(
        "  trajectory: {} f32 observations + actions + rewards ({}); batch: {} sampled \
         trajectories ({}); queue capacity {}",
        o.shape(),
        human(traj as f64),
        o.batch,
        human(batch as f64),
        o.capacity
    );
    println!(
        "  queues: {} {}; journals: {}; seed {seed}",
        o.queues[0], o.queues[1], o.dir
    );
    if let Err(e) = count_signals() {
        eprintln!("warning: cannot handle signals: {e}");
    }
    let mut display = display::Display::new();
    let outcome = parent::run(&o, &SIGNALS, &mut display);
    display.finish();
    let sig = FIRST_SIGNAL.load(Ordering::SeqCst);
    let killed = SIGNALS.load(Ordering::SeqCst) >= 2;
    let mut ok = match &outcome {
        Ok(out) => report::summary(&o, out, traj, batch),
        // Asked for: no accounting, but the queues must still be gone.
        Err(e) if killed => {
            println!("stopped: {e}");
            true
        }
        Err(e) => {
            println!("error: {e}");
            false
        }
    };
    match check_clean(&o.queues) {
        Ok(()) => println!("/dev/shm: clean"),
        Err(e) => {
            println!("error: {e}");
            ok = false;
        }
    }
    if ok {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("journals kept in {}", dir.display());
    }
    match (ok, sig) {
        (true, 0) => {
            println!("OK");
            ExitCode::SUCCESS
        }
        (true, s) => {
            println!("OK (interrupted)");
            ExitCode::from(128 + s as u8)
        }
        (false, _) => {
            println!("FAILED");
            ExitCode::FAILURE
        }
    }
}

/// Counts SIGINT/SIGTERM in [`SIGNALS`] from a thread of its own; the main loop reads the
/// count (one: stop cleanly; two: kill the children at once). The thread touches no
/// shmq handle.
fn count_signals() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                let _ = FIRST_SIGNAL.compare_exchange(0, s, Ordering::SeqCst, Ordering::SeqCst);
                if SIGNALS.fetch_add(1, Ordering::SeqCst) == 0 {
                    eprintln!("\ninterrupted: stopping cleanly (again to kill at once)");
                }
            }
        })?;
    Ok(())
}

/// Every object of the queues `names` is gone from `/dev/shm`; leftovers are removed and
/// reported.
fn check_clean(names: &[String]) -> Result<(), String> {
    let mut left = Vec::new();
    for e in std::fs::read_dir("/dev/shm").map_err(|e| format!("/dev/shm: {e}"))? {
        let f = e.map_err(|e| format!("/dev/shm: {e}"))?.file_name();
        let f = f.to_string_lossy();
        let ours = names.iter().any(|n| {
            let header = format!("shmq.{n}");
            f == header || f.starts_with(&format!("{header}."))
        });
        if ours {
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

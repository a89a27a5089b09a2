//! The actor and learner processes (the replay buffer is in `replay.rs`), and what every
//! child does first: attach, open its journal, say `ready` on stdout, wait for `go` on
//! stdin. Diagnostics go to stderr; stdout is the protocol with the parent, the journal
//! is the record of what was done (see `journal.rs`).

use crate::cli::{Options, Role};
use crate::journal::{self, Journal, Rec};
use crate::payload::{self, TrajId};
use shmq::{Receiver, RecvError, SendError, Sender};
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// Tells the parent this child is attached, then blocks until it says `go`.
pub fn ready_then_wait_for_go() -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")
        .and_then(|_| out.flush())
        .map_err(|e| format!("cannot talk to the parent: {e}"))?;
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(_) if line.trim() == "go" => Ok(()),
        Ok(0) => Err("the parent went away before the start".into()),
        Ok(_) => Err(format!(
            "unexpected word from the parent: {:?}",
            line.trim()
        )),
        Err(e) => Err(format!("cannot read from the parent: {e}")),
    }
}

/// Sends trajectories until `stop` (SIGTERM from the parent at the end of the run, or
/// Ctrl-C), each rendered in place in a loan and journaled once its send returned `Ok`.
pub fn actor(o: &Options, stop: &AtomicBool) -> Result<(), String> {
    let tx =
        Sender::open(&o.queues[0]).map_err(|e| format!("cannot open the trajectory queue: {e}"))?;
    let journal = Journal::create(&o.dir, Role::Actor, o.id, o.inc)?;
    let (steps, obs) = (o.steps(), o.obs_elems());
    let words = payload::traj_words(steps, obs);
    ready_then_wait_for_go()?;
    // Without a replay buffer (it is being restarted) the parent's own receiver keeps the
    // queue connected: sends block while it is full, and go on once a new one drains it.
    // `Disconnected` therefore means the parent is gone too, and so is the run.
    let gone = || {
        if stop.load(Relaxed) {
            Ok(())
        } else {
            Err("nobody receives trajectories any more".to_string())
        }
    };
    let mut seq = 0u32;
    while !stop.load(Relaxed) {
        let mut loan = match tx.loan_slice::<u32>(words) {
            Ok(l) => l,
            Err(SendError::Disconnected) => return gone(),
            Err(e) => return Err(format!("loan: {e}")),
        };
        let id = TrajId {
            actor: o.id,
            inc: o.inc,
            seq,
        };
        let w = loan.cast_mut::<u32>().map_err(|e| e.to_string())?;
        payload::write_traj(w, &id, steps, obs);
        match loan.send() {
            Ok(()) => journal.append(Rec::new(journal::SENT_TRAJ, o.id, o.inc, seq))?,
            Err(u) if matches!(u.error, SendError::Disconnected) => return gone(),
            Err(u) => return Err(format!("send: {}", u.error)),
        }
        seq += 1;
    }
    // Dropping `tx` on this thread, the one that used it, leaves the queue.
    Ok(())
}

/// Receives batches until the replay buffer is gone and the queue is empty
/// (`Disconnected`), checks every trajectory in each (the stand-in for a training step),
/// journals it, then acks it by dropping it. A learner ignores Ctrl-C and SIGTERM: it
/// drains what the replay buffer sent, so that nothing whose send returned `Ok` is left
/// behind.
pub fn learner(o: &Options) -> Result<(), String> {
    let rx =
        Receiver::open(&o.queues[1]).map_err(|e| format!("cannot open the batch queue: {e}"))?;
    let journal = Journal::create(&o.dir, Role::Learner, o.id, o.inc)?;
    let (n, steps, obs) = (o.batch as usize, o.steps(), o.obs_elems());
    ready_then_wait_for_go()?;
    let mut complaints = 0;
    loop {
        let msg = match rx.recv() {
            Ok(m) => m,
            Err(RecvError::Disconnected) => break,
            Err(e) => return Err(format!("recv: {e}")),
        };
        let flag = if msg.is_redelivery() {
            journal::REDELIVERED
        } else {
            0
        };
        let checked = msg
            .cast::<u32>()
            .map_err(|e| e.to_string())
            .and_then(|w| payload::verify_batch(w, n, steps, obs));
        let rec = match checked {
            Ok(b) => {
                let lat_us = payload::now_ns().saturating_sub(b.made_at_ns) / 1000;
                Rec::new(
                    journal::GOT_BATCH | flag,
                    b.inc,
                    b.seq,
                    lat_us.min(u32::MAX as u64) as u32,
                )
            }
            Err(e) => {
                if complaints < 5 {
                    eprintln!("[learner {}] corrupt batch: {e}", o.id);
                }
                complaints += 1;
                Rec::new(journal::BAD_BATCH | flag, 0, 0, 0)
            }
        };
        journal.append(rec)?;
        // Dropping `msg` is the ack: its slot goes back to the replay buffer. A kill
        // before this line has the batch redelivered to another learner.
        drop(msg);
    }
    Ok(())
}

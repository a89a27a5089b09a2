//! The two child roles. Each attaches to the queue, says `ready`, waits for `go`, works,
//! then prints its report line (see `report.rs`). Diagnostics go to stderr; stdout is
//! the protocol.

use crate::cli::Options;
use crate::payload;
use crate::report::{ActorReport, LearnerReport};
use shmq::{Receiver, RecvError, SendError, Sender};
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

/// Tells the parent we are attached, then blocks until it says `go`.
fn ready_then_wait_for_go() -> Result<(), String> {
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

fn say(line: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|_| out.flush())
        .map_err(|e| format!("cannot send the report: {e}"))
}

/// Sends batches for `--seconds` (or until `stop`), each rendered in place in a loan.
pub fn actor(o: &Options, stop: &AtomicBool) -> Result<(), String> {
    let tx = Sender::open(&o.queue).map_err(|e| format!("cannot open queue {:?}: {e}", o.queue))?;
    let elems = o.elems();
    let len = payload::message_bytes(elems);
    ready_then_wait_for_go()?;
    let start = Instant::now();
    let deadline = start + o.duration();
    let mut seq = 0u64;
    while Instant::now() < deadline && !stop.load(Relaxed) {
        let mut loan = tx.loan(len).map_err(|e| match e {
            SendError::Disconnected => "every learner is gone".to_string(),
            e => format!("loan: {e}"),
        })?;
        let words = loan
            .cast_mut::<u32>()
            .map_err(|e| format!("loan as u32: {e}"))?;
        payload::write(words, o.id, seq);
        loan.send().map_err(|u| format!("send: {}", u.error))?;
        seq += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    // Leave before reporting: once every actor is gone, learners see `Disconnected`.
    drop(tx);
    say(&ActorReport {
        id: o.id,
        sent: seq,
        bytes: seq * len as u64,
        secs,
    }
    .to_line())
}

/// Receives and verifies batches until every actor is gone and the queue is empty (also
/// after a signal: the actors stop, and the learners drain what they sent).
pub fn learner(o: &Options) -> Result<(), String> {
    let rx =
        Receiver::open(&o.queue).map_err(|e| format!("cannot open queue {:?}: {e}", o.queue))?;
    let elems = o.elems();
    ready_then_wait_for_go()?;
    let mut r = LearnerReport {
        id: o.id,
        ..Default::default()
    };
    // Per actor: the next sequence number this learner may see (FIFO per producer).
    let mut next_seq = vec![0u64; o.actors as usize];
    loop {
        let msg = match rx.recv() {
            Ok(m) => m,
            Err(RecvError::Disconnected) => break,
            Err(e) => return Err(format!("recv: {e}")),
        };
        r.received += 1;
        r.bytes += msg.len() as u64;
        r.redelivered += msg.is_redelivery() as u64;
        let checked = msg
            .cast::<u32>()
            .map_err(|e| e.to_string())
            .and_then(|w| payload::verify(w, elems));
        match checked {
            Ok(st) if (st.actor as usize) < next_seq.len() => {
                let lat = payload::now_ns().saturating_sub(st.sent_at_ns);
                r.lat_sum_ns += lat;
                r.lat_max_ns = r.lat_max_ns.max(lat);
                let next = &mut next_seq[st.actor as usize];
                if st.seq < *next {
                    r.reordered += 1;
                }
                *next = st.seq + 1;
                r.per_actor.entry(st.actor).or_default().add(st.seq);
            }
            Ok(st) => {
                eprintln!("[learner {}] message from unknown actor {}", o.id, st.actor);
                r.corrupt += 1;
            }
            Err(e) => {
                if r.corrupt < 5 {
                    eprintln!("[learner {}] corrupt message: {e}", o.id);
                }
                r.corrupt += 1;
            }
        }
        // Dropping `msg` is the ack: its slot goes back to the actors.
    }
    drop(rx);
    say(&r.to_line())
}

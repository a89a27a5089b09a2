//! The replay buffer process: takes trajectories from the actors' queue, keeps the last
//! `--buffer` K of them, and serves batches of `--batch` B trajectories sampled uniformly
//! at random (with replacement, as in DQN) into the learners' queue.
//!
//! The buffer does not copy trajectories out: it **holds the received [`Message`]s**
//! (zero-copy views into shared memory) and acks each one by dropping it when it is
//! evicted. So the buffer survives its own process: when the replay buffer is killed, the
//! queue hands every message it held to the next incarnation as a redelivery, and the new
//! process starts with the old buffer's contents. (Holding messages takes payload slots:
//! the parent sizes the trajectory queue with K slots more than the default.)
//!
//! Two threads share the buffer:
//!
//! * **intake** (the main thread) receives, checks the header, journals `GOT_TRAJ` (before
//!   the message can be acked: see `journal.rs`), pushes it, evicts the oldest beyond K;
//!   it ends at `Disconnected` (every actor gone, and the parent's own sender dropped);
//! * **server** waits until the buffer holds B trajectories (or K if smaller), picks B at
//!   random, copies them into a loan on the batch queue, sends it and journals
//!   `SENT_BATCH`; it blocks while the learners are behind (the queue is full), which is
//!   the back-pressure. It stops when the intake ends. (A production buffer would also
//!   cap samples per insert; here the learners' pace is the only limit.)
//!
//! Like the learners, the replay buffer ignores Ctrl-C and SIGTERM and winds down through
//! `Disconnected`, so that every trajectory sent `Ok` reaches it.

use crate::cli::{Options, Role};
use crate::journal::{self, Journal, Rec};
use crate::payload;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shmq::{Message, Receiver, RecvTimeoutError, SendError, Sender};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    ring: VecDeque<Arc<Message>>,
    /// The intake ended (or failed): the server stops.
    done: bool,
    /// The server failed: the intake stops.
    failed: bool,
}

struct Buffer {
    state: Mutex<State>,
    changed: Condvar,
}

impl Buffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.changed.notify_all();
    }
}

pub fn replay(o: &Options) -> Result<(), String> {
    let rx = Receiver::open(&o.queues[0])
        .map_err(|e| format!("cannot open the trajectory queue: {e}"))?;
    let tx = Sender::open(&o.queues[1]).map_err(|e| format!("cannot open the batch queue: {e}"))?;
    let journal = Journal::create(&o.dir, Role::Replay, o.id, o.inc)?;
    let buf = Buffer {
        state: Mutex::default(),
        changed: Condvar::new(),
    };
    crate::child::ready_then_wait_for_go()?;
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            let r = serve(o, &tx, &buf, &journal);
            if r.is_err() {
                buf.set(|st| st.failed = true);
            }
            r
        });
        let r = intake(o, &rx, &buf, &journal);
        // Also on error: the server must not wait for trajectories forever.
        buf.set(|st| st.done = true);
        let served = server
            .join()
            .unwrap_or_else(|_| Err("the server panicked".into()));
        // Drop the buffer's messages (the acks) on this thread, before the handles.
        buf.lock().ring.clear();
        r.and(served)
    })
}

fn intake(o: &Options, rx: &Receiver, buf: &Buffer, journal: &Journal) -> Result<(), String> {
    let (steps, obs) = (o.steps(), o.obs_elems());
    // Stops when the server failed (its error is the one reported); timed receives so
    // that this is noticed when no trajectory comes either.
    while !buf.lock().failed {
        let msg = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
            Err(e) => return Err(format!("recv: {e}")),
        };
        let flag = if msg.is_redelivery() {
            journal::REDELIVERED
        } else {
            0
        };
        let header = msg
            .cast::<u32>()
            .map_err(|e| e.to_string())
            .and_then(|w| payload::traj_header(w, steps, obs));
        let id = match header {
            Ok(id) => id,
            Err(e) => {
                eprintln!("[replay] corrupt trajectory: {e}");
                journal.append(Rec::new(journal::BAD_TRAJ | flag, 0, 0, 0))?;
                continue; // dropped: acked
            }
        };
        // Journaled before the message can be acked (evicted): a kill between recv and
        // here has the queue redeliver it to the next incarnation.
        journal.append(Rec::new(journal::GOT_TRAJ | flag, id.actor, id.inc, id.seq))?;
        let evicted = {
            let mut st = buf.lock();
            st.ring.push_back(Arc::new(msg));
            let excess = st.ring.len().saturating_sub(o.buffer);
            st.ring.drain(..excess).collect::<Vec<_>>()
        };
        buf.changed.notify_all();
        // The acks of the evicted messages (unless the server still copies one: then the
        // last `Arc` to go, in the server, acks it).
        drop(evicted);
    }
    Ok(())
}

fn serve(o: &Options, tx: &Sender, buf: &Buffer, journal: &Journal) -> Result<(), String> {
    let (n, steps, obs) = (o.batch as usize, o.steps(), o.obs_elems());
    let tw = payload::traj_words(steps, obs);
    let words = payload::batch_words(n, tw);
    let mut rng = match o.seed {
        Some(s) => StdRng::seed_from_u64(s),
        None => StdRng::from_entropy(),
    };
    let min_fill = n.min(o.buffer);
    for seq in 0u32.. {
        let picks: Vec<Arc<Message>> = {
            let mut st = buf.lock();
            while st.ring.len() < min_fill && !st.done {
                st = buf.changed.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.done {
                return Ok(());
            }
            (0..n)
                .map(|_| st.ring[rng.gen_range(0..st.ring.len())].clone())
                .collect()
        };
        let mut loan = match tx.loan_slice::<u32>(words) {
            Ok(l) => l,
            Err(SendError::Disconnected) => return Err("nobody receives batches any more".into()),
            Err(e) => return Err(format!("loan: {e}")),
        };
        let w = loan.cast_mut::<u32>().map_err(|e| e.to_string())?;
        let (head, body) = w.split_at_mut(payload::HEADER_WORDS);
        payload::write_batch_header(head, o.inc, seq, n, tw);
        for (dst, m) in body.chunks_exact_mut(tw).zip(&picks) {
            let src = m.cast::<u32>().map_err(|e| e.to_string())?;
            dst.copy_from_slice(src); // length checked by the intake
        }
        drop(picks);
        match loan.send() {
            Ok(()) => journal.append(Rec::new(journal::SENT_BATCH, o.inc, seq, n as u32))?,
            Err(u) => return Err(format!("send: {}", u.error)),
        }
    }
    Err("more than 2^32 batches".into())
}

//! The accounting, from the journals (see `journal.rs`).
//!
//! A *flow* is what one producer incarnation sent into one queue: an actor incarnation's
//! trajectories, or a replay-buffer incarnation's batches, each numbered 0, 1, 2, … Its
//! producer journals `SENT` after each `Ok`; its consumers journal `GOT` before they ack.
//! For every flow the ledger checks:
//!
//! * **nothing lost**: every sequence number journaled `SENT` was journaled `GOT` at least
//!   once (a send that returned `Ok` is delivered, whoever dies afterwards);
//! * **duplicates only as redeliveries**: at most one `GOT` of each message is not flagged
//!   `is_redelivery()` (a consumer killed holding it causes the others);
//! * **nothing invented**: a message journaled `GOT` but never `SENT` is allowed only for
//!   a producer incarnation the parent killed, and only the one right after its last
//!   `SENT` record (its `send` may have returned `Ok` just before the kill, leaving no
//!   time to journal it): counted as *unconfirmed*;
//! * **intact**: no message failed its checks (lengths, headers, checksums of every
//!   trajectory a learner received), and producers journaled in sequence.

use crate::cli::Role;
use crate::journal::{self, Rec, Tailer};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One producer incarnation's messages.
#[derive(Debug, Default)]
struct Flow {
    /// `SENT` records so far (they must come as sequence numbers 0, 1, 2, …).
    sent: u32,
    /// `SENT` records out of sequence.
    disorder: u64,
    /// Per sequence number: `GOT` records `[not flagged, flagged redelivery]`.
    got: Vec<[u32; 2]>,
}

impl Flow {
    fn sent(&mut self, seq: u32) {
        if seq == self.sent {
            self.sent += 1;
        } else {
            self.disorder += 1;
        }
    }

    fn got(&mut self, seq: u32, redelivered: bool) {
        let i = seq as usize;
        if self.got.len() <= i {
            self.got.resize(i + 1, [0, 0]);
        }
        self.got[i][redelivered as usize] += 1;
    }

    fn tally(&self, killed: bool, t: &mut Tally) {
        t.sent_ok += u64::from(self.sent);
        t.disorder += self.disorder;
        for (seq, &[first, again]) in self.got.iter().enumerate() {
            let n = first + again;
            if n == 0 {
                if seq < self.sent as usize {
                    t.lost += 1;
                }
                continue;
            }
            t.received += u64::from(n);
            t.unique += 1;
            t.redelivered += u64::from(again);
            t.dup_unflagged += u64::from(first.saturating_sub(1));
            if seq >= self.sent as usize {
                if killed && seq == self.sent as usize {
                    t.unconfirmed += 1;
                } else {
                    t.invented += 1;
                }
            }
        }
        t.lost += u64::from(self.sent).saturating_sub(self.got.len() as u64);
    }
}

/// The accounting of one queue, over all its flows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Sends that returned `Ok` (journaled).
    pub sent_ok: u64,
    /// Receipts journaled, duplicates included.
    pub received: u64,
    /// Distinct messages received.
    pub unique: u64,
    /// Receipts flagged `is_redelivery()`.
    pub redelivered: u64,
    /// Received, sent by a killed producer that could not journal the `Ok` (allowed).
    pub unconfirmed: u64,
    /// Journaled `SENT`, never received (must be 0).
    pub lost: u64,
    /// Extra receipts not flagged as redeliveries (must be 0).
    pub dup_unflagged: u64,
    /// Received, never sent, not explained by a kill (must be 0).
    pub invented: u64,
    /// Messages that failed their checks (must be 0).
    pub corrupt: u64,
    /// `SENT` records out of sequence (must be 0).
    pub disorder: u64,
}

impl Tally {
    /// The machine-readable accounting line (the test parses it).
    pub fn line(&self) -> String {
        format!(
            "sent_ok={} received={} unique={} redelivered={} unconfirmed={} lost={} \
             dup_unflagged={} invented={} corrupt={}",
            self.sent_ok,
            self.received,
            self.unique,
            self.redelivered,
            self.unconfirmed,
            self.lost,
            self.dup_unflagged,
            self.invented,
            self.corrupt + self.disorder
        )
    }
}

/// Running counts for the live display (duplicates included).
#[derive(Debug, Default, Clone, Copy)]
pub struct Live {
    pub traj_sent: u64,
    pub traj_got: u64,
    pub traj_redelivered: u64,
    pub batch_sent: u64,
    pub batch_got: u64,
    pub batch_redelivered: u64,
    pub corrupt: u64,
}

/// What one child (all its incarnations) journaled.
#[derive(Debug, Default, Clone)]
pub struct PerChild {
    pub incarnations: BTreeSet<u32>,
    pub sent: u64,
    pub got: u64,
    pub redelivered: u64,
    pub lat_sum_us: u64,
    pub lat_max_us: u64,
}

#[derive(Default)]
pub struct Ledger {
    tailer: Tailer,
    /// Trajectory flows by (actor, incarnation).
    traj: BTreeMap<(u32, u32), Flow>,
    /// Batch flows by replay-buffer incarnation.
    batch: BTreeMap<u32, Flow>,
    bad_traj: u64,
    bad_batch: u64,
    /// Records a child of that role never writes.
    strange: u64,
    pub live: Live,
    pub per_child: BTreeMap<(Role, u32), PerChild>,
}

impl Ledger {
    /// Reads what the journals in `dir` gained since the last call.
    pub fn ingest(&mut self, dir: &Path) -> Result<(), String> {
        for ((role, id, inc), r) in self.tailer.read_new(dir)? {
            self.record(role, id, inc, r);
        }
        Ok(())
    }

    fn record(&mut self, role: Role, id: u32, inc: u32, r: Rec) {
        let who = self.per_child.entry((role, id)).or_default();
        who.incarnations.insert(inc);
        let again = r.redelivered();
        let l = &mut self.live;
        match (role, r.base_kind()) {
            (Role::Actor, journal::SENT_TRAJ) if (r.a, r.b) == (id, inc) => {
                self.traj.entry((id, inc)).or_default().sent(r.c);
                l.traj_sent += 1;
                who.sent += 1;
            }
            (Role::Replay, journal::GOT_TRAJ) => {
                self.traj.entry((r.a, r.b)).or_default().got(r.c, again);
                l.traj_got += 1;
                l.traj_redelivered += again as u64;
                who.got += 1;
                who.redelivered += again as u64;
            }
            (Role::Replay, journal::SENT_BATCH) if r.a == inc => {
                self.batch.entry(inc).or_default().sent(r.b);
                l.batch_sent += 1;
                who.sent += 1;
            }
            (Role::Learner, journal::GOT_BATCH) => {
                self.batch.entry(r.a).or_default().got(r.b, again);
                l.batch_got += 1;
                l.batch_redelivered += again as u64;
                who.got += 1;
                who.redelivered += again as u64;
                who.lat_sum_us += u64::from(r.c);
                who.lat_max_us = who.lat_max_us.max(u64::from(r.c));
            }
            (Role::Replay, journal::BAD_TRAJ) => {
                self.bad_traj += 1;
                l.corrupt += 1;
            }
            (Role::Learner, journal::BAD_BATCH) => {
                self.bad_batch += 1;
                l.corrupt += 1;
            }
            _ => {
                self.strange += 1;
                l.corrupt += 1;
            }
        }
    }

    /// The accounting of the trajectory queue and of the batch queue. `killed` lists the
    /// `(role, id, incarnation)` the parent SIGKILLed.
    pub fn check(&self, killed: &BTreeSet<(Role, u32, u32)>) -> (Tally, Tally) {
        let mut t = Tally {
            corrupt: self.bad_traj + self.strange,
            ..Tally::default()
        };
        for (&(actor, inc), f) in &self.traj {
            f.tally(killed.contains(&(Role::Actor, actor, inc)), &mut t);
        }
        let mut b = Tally {
            corrupt: self.bad_batch,
            ..Tally::default()
        };
        for (&inc, f) in &self.batch {
            f.tally(killed.contains(&(Role::Replay, 0, inc)), &mut b);
        }
        (t, b)
    }
}

//! What children tell the parent, one line each on their stdout:
//!
//! ```text
//! ready                                   after attaching to the queue
//! report actor <id> sent=<n> bytes=<b> secs=<s>
//! report learner <id> received=<n> bytes=<b> corrupt=<n> reordered=<n> redelivered=<n>
//!        lat_sum_ns=<ns> lat_max_ns=<ns> a<actor>=<count>:<seq sum>:<seq² sum> ...
//! ```
//!
//! The parent answers `go` on the child's stdin once every child is ready. Sums are
//! wrapping `u64`: with the counts they tell the parent, per actor, whether the multiset of
//! sequence numbers received is exactly `0..sent` (nothing lost, nothing twice).

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct ActorReport {
    pub id: u32,
    pub sent: u64,
    pub bytes: u64,
    pub secs: f64,
}

/// What one learner received from one actor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqTally {
    pub count: u64,
    pub sum: u64,
    pub sum_sq: u64,
}

impl SeqTally {
    pub fn add(&mut self, seq: u64) {
        self.count += 1;
        self.sum = self.sum.wrapping_add(seq);
        self.sum_sq = self.sum_sq.wrapping_add(seq.wrapping_mul(seq));
    }

    pub fn merge(&mut self, o: &SeqTally) {
        self.count += o.count;
        self.sum = self.sum.wrapping_add(o.sum);
        self.sum_sq = self.sum_sq.wrapping_add(o.sum_sq);
    }

    /// The tally of exactly the sequence numbers `0..n`.
    pub fn exact(n: u64) -> SeqTally {
        let n = n as u128; // the closed forms fit in u128 for any n below 2^40
        SeqTally {
            count: n as u64,
            sum: (n * n.saturating_sub(1) / 2) as u64,
            sum_sq: (n.saturating_sub(1) * n * (2 * n).saturating_sub(1) / 6) as u64,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct LearnerReport {
    pub id: u32,
    pub received: u64,
    pub bytes: u64,
    /// Messages that failed verification (length, magic, checksum, unknown actor).
    pub corrupt: u64,
    /// Messages of one actor that arrived at this learner with a sequence number not above
    /// the previous one (per-producer FIFO is guaranteed without crashes).
    pub reordered: u64,
    pub redelivered: u64,
    pub lat_sum_ns: u64,
    pub lat_max_ns: u64,
    pub per_actor: BTreeMap<u32, SeqTally>,
}

impl ActorReport {
    pub fn to_line(&self) -> String {
        format!(
            "report actor {} sent={} bytes={} secs={}",
            self.id, self.sent, self.bytes, self.secs
        )
    }
}

impl LearnerReport {
    pub fn to_line(&self) -> String {
        let mut s = format!(
            "report learner {} received={} bytes={} corrupt={} reordered={} redelivered={} \
             lat_sum_ns={} lat_max_ns={}",
            self.id,
            self.received,
            self.bytes,
            self.corrupt,
            self.reordered,
            self.redelivered,
            self.lat_sum_ns,
            self.lat_max_ns
        );
        for (a, t) in &self.per_actor {
            s += &format!(" a{a}={}:{}:{}", t.count, t.sum, t.sum_sq);
        }
        s
    }
}

/// A child's final report.
#[derive(Debug, Clone)]
pub enum Report {
    Actor(ActorReport),
    Learner(LearnerReport),
}

impl Report {
    pub fn parse(line: &str) -> Result<Report, String> {
        let bad = || format!("malformed report line {line:?}");
        let mut words = line.split_whitespace();
        if words.next() != Some("report") {
            return Err(bad());
        }
        let role = words.next().ok_or_else(bad)?;
        let id: u32 = words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
        let mut fields = BTreeMap::new();
        let mut per_actor = BTreeMap::new();
        for w in words {
            let (k, v) = w.split_once('=').ok_or_else(bad)?;
            if let Some(a) = k.strip_prefix('a').and_then(|a| a.parse::<u32>().ok()) {
                let n: Vec<u64> = v.split(':').filter_map(|x| x.parse().ok()).collect();
                let [count, sum, sum_sq] = n[..] else {
                    return Err(bad());
                };
                per_actor.insert(a, SeqTally { count, sum, sum_sq });
            } else {
                fields.insert(k, v);
            }
        }
        let num = |k: &str| -> Result<u64, String> {
            fields.get(k).and_then(|v| v.parse().ok()).ok_or_else(bad)
        };
        Ok(match role {
            "actor" => Report::Actor(ActorReport {
                id,
                sent: num("sent")?,
                bytes: num("bytes")?,
                secs: fields
                    .get("secs")
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(bad)?,
            }),
            "learner" => Report::Learner(LearnerReport {
                id,
                received: num("received")?,
                bytes: num("bytes")?,
                corrupt: num("corrupt")?,
                reordered: num("reordered")?,
                redelivered: num("redelivered")?,
                lat_sum_ns: num("lat_sum_ns")?,
                lat_max_ns: num("lat_max_ns")?,
                per_actor,
            }),
            _ => return Err(bad()),
        })
    }
}

//! The live progress display. On a terminal: a block of four lines redrawn once a second
//! in place, with lasting lines (chaos kills, the stop) printed above it. Otherwise (a
//! pipe, a log file, a test): one plain line per second.

use crate::ledger::Live;
use shmq::info::QueueInfo;
use std::io::{IsTerminal, Write};

/// What the display shows at one moment.
pub struct Snapshot {
    pub secs: f64,
    pub of_secs: f64,
    pub phase: &'static str,
    /// Trajectories received by the replay buffer per second, and their bytes.
    pub traj_rate: f64,
    pub traj_gbps: f64,
    /// Batches received by learners per second, and their bytes.
    pub batch_rate: f64,
    pub batch_gbps: f64,
    pub live: Live,
    pub kills: usize,
    /// `(running, of)` actors, replay buffers, learners.
    pub alive: [(usize, usize); 3],
    pub buffer: usize,
    pub traj_q: Option<QueueInfo>,
    pub batch_q: Option<QueueInfo>,
}

pub struct Display {
    tty: bool,
    /// The live block last drawn (terminal only).
    block: Vec<String>,
    /// Lines of the live block now on the screen.
    drawn: usize,
}

impl Display {
    pub fn new() -> Display {
        Display {
            tty: std::io::stdout().is_terminal(),
            block: Vec::new(),
            drawn: 0,
        }
    }

    /// A lasting line (above the live block on a terminal).
    pub fn line(&mut self, s: &str) {
        self.erase();
        println!("{s}");
        self.draw();
    }

    /// Shows a new snapshot: redraws the block, or prints a plain line.
    pub fn status(&mut self, s: &Snapshot) {
        if self.tty {
            self.erase();
            self.block = block(s);
            self.draw();
        } else {
            println!("{}", plain(s));
            let _ = std::io::stdout().flush();
        }
    }

    /// Removes the live block for good (before the summary).
    pub fn finish(&mut self) {
        self.erase();
        self.block.clear();
    }

    fn draw(&mut self) {
        for l in &self.block {
            println!("{l}");
        }
        self.drawn = self.block.len();
        let _ = std::io::stdout().flush();
    }

    fn erase(&mut self) {
        if self.drawn > 0 {
            // Up to the block's first line, then clear to the end of the screen.
            print!("\x1b[{}F\x1b[J", self.drawn);
            self.drawn = 0;
        }
    }
}

/// `depth/capacity` of a queue, `?` if it could not be read.
fn depth(q: &Option<QueueInfo>) -> String {
    q.as_ref()
        .map_or("?".into(), |q| format!("{}/{}", q.depth, q.capacity))
}

/// Trajectories in the replay buffer, from the trajectory queue's slots in state HELD
/// (up to `--batch` more are evicted ones a batch is still being copied from).
fn held(q: &Option<QueueInfo>, buffer: usize) -> String {
    q.as_ref().map_or("?".into(), |q| {
        q.slot_states[2].min(buffer as u64).to_string()
    })
}

/// Recoveries of dead participants, over both queues.
fn recoveries(s: &Snapshot) -> u64 {
    [&s.traj_q, &s.batch_q]
        .iter()
        .filter_map(|q| q.as_ref())
        .map(|q| q.recoveries)
        .sum()
}

fn block(s: &Snapshot) -> Vec<String> {
    let [a, r, l] = s.alive;
    let mut head = format!(
        "rl_pipeline  {:5.1} s of {:.1} s  {}",
        s.secs, s.of_secs, s.phase
    );
    if s.kills > 0 {
        head += &format!("  chaos: {} kills", s.kills);
    }
    vec![
        head,
        format!(
            "  actors -> replay    {:7.0} traj/s   {:5.2} GB/s   queue {:>7}   buffer {}/{}",
            s.traj_rate,
            s.traj_gbps,
            depth(&s.traj_q),
            held(&s.traj_q, s.buffer),
            s.buffer
        ),
        format!(
            "  replay -> learners  {:7.0} batch/s  {:5.2} GB/s   queue {:>7}",
            s.batch_rate,
            s.batch_gbps,
            depth(&s.batch_q)
        ),
        format!(
            "  redelivered {} traj, {} batches   recoveries {}   corrupt {}   running: \
             {}/{} actors, {}/{} replay, {}/{} learners",
            s.live.traj_redelivered,
            s.live.batch_redelivered,
            recoveries(s),
            s.live.corrupt,
            a.0,
            a.1,
            r.0,
            r.1,
            l.0,
            l.1
        ),
    ]
}

fn plain(s: &Snapshot) -> String {
    let [a, r, l] = s.alive;
    format!(
        "[{:5.1} s {}] traj {:.0}/s {:.2} GB/s q1 {} buffer {}/{} | batch {:.0}/s {:.2} GB/s q2 {} \
         | redelivered {}+{} recoveries {} kills {} corrupt {} | running {}a {}r {}l",
        s.secs,
        s.phase,
        s.traj_rate,
        s.traj_gbps,
        depth(&s.traj_q),
        held(&s.traj_q, s.buffer),
        s.buffer,
        s.batch_rate,
        s.batch_gbps,
        depth(&s.batch_q),
        s.live.traj_redelivered,
        s.live.batch_redelivered,
        recoveries(s),
        s.kills,
        s.live.corrupt,
        a.0,
        r.0,
        l.0
    )
}

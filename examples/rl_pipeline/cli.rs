//! Command-line options, shared by the parent and its children (a child gets the parent's
//! options back on its command line, plus `--role`, `--id`, `--inc`, `--queues` and
//! `--dir`).

use std::time::Duration;

pub const USAGE: &str =
    "usage: rl_pipeline [--actors N] [--learners M] [--seconds S] [--frames TxHxWxC]
                   [--capacity C] [--buffer K] [--batch B] [--chaos] [--seed X]

N actor processes send trajectories (T steps of f32 observations, actions, rewards) through
one shmq queue to a replay-buffer process, which keeps the last K of them and serves
batches of B trajectories sampled at random through a second queue to M learner processes.
A live display shows the rates, queue depths and recoveries; at the end the parent checks
from every process's journal that every trajectory and batch whose send returned Ok was
received at least once, and that duplicates are only redeliveries, then exits non-zero on
any mismatch or on anything left in /dev/shm.

  --actors N      actor processes (default 3)
  --learners M    learner processes (default 2)
  --seconds S     how long the actors send, may be fractional (default 3)
  --frames SHAPE  one trajectory's observations, dimensions joined by x: T steps of
                  HxWxC f32 each (default 8x84x84x4: 8 steps of stacked 84x84 Atari
                  frames, 903 kB with actions and rewards)
  --capacity C    capacity of each queue in messages (default 16)
  --buffer K      trajectories the replay buffer keeps (default 64)
  --batch B       trajectories per sampled batch (default 4)
  --chaos         SIGKILL a random actor, learner or the replay buffer every 0.2-0.8 s and
                  restart it; the accounting must still add up
  --seed X        seed of the chaos schedule and of the replay buffer's sampling
                  (default: random, printed)

Ctrl-C stops the pipeline cleanly (accounting included); a second Ctrl-C kills the
children at once (the queues are still removed).";

/// Which process this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Creates the queues, starts, kills and restarts the children, displays, accounts.
    Parent,
    /// Sends trajectories into the trajectory queue.
    Actor,
    /// Keeps the last K trajectories, sends sampled batches into the batch queue.
    Replay,
    /// Receives and verifies batches.
    Learner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Parent => "parent",
            Role::Actor => "actor",
            Role::Replay => "replay",
            Role::Learner => "learner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        [Role::Parent, Role::Actor, Role::Replay, Role::Learner]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub actors: u32,
    pub learners: u32,
    pub seconds: f64,
    /// Observations of one trajectory: `[steps, per-step dimensions...]`.
    pub frames: Vec<u32>,
    pub capacity: usize,
    pub buffer: usize,
    pub batch: u32,
    pub chaos: bool,
    /// `None`: pick one at random (the parent does, and passes it on).
    pub seed: Option<u64>,
    pub role: Role,
    /// Child index within its role.
    pub id: u32,
    /// Incarnation of this child: 0 for the first process, +1 per restart.
    pub inc: u32,
    /// Names of the trajectory queue and of the batch queue (children only).
    pub queues: [String; 2],
    /// Directory of the journals (children only).
    pub dir: String,
}

impl Options {
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }

    /// Steps per trajectory (the first dimension of `--frames`).
    pub fn steps(&self) -> usize {
        self.frames[0] as usize
    }

    /// f32 elements of one step's observation (the product of the other dimensions).
    pub fn obs_elems(&self) -> usize {
        self.frames[1..].iter().map(|&d| d as usize).product()
    }

    pub fn shape(&self) -> String {
        let dims: Vec<String> = self.frames.iter().map(|d| d.to_string()).collect();
        dims.join("x")
    }

    /// The command line of incarnation `inc` of child `role` `id`.
    pub fn child_args(&self, role: Role, id: u32, inc: u32) -> Vec<String> {
        let mut a: Vec<String> = [
            "--role",
            role.as_str(),
            "--id",
            &id.to_string(),
            "--inc",
            &inc.to_string(),
            "--queues",
            &format!("{},{}", self.queues[0], self.queues[1]),
            "--dir",
            &self.dir,
            "--actors",
            &self.actors.to_string(),
            "--learners",
            &self.learners.to_string(),
            "--seconds",
            &self.seconds.to_string(),
            "--frames",
            &self.shape(),
            "--capacity",
            &self.capacity.to_string(),
            "--buffer",
            &self.buffer.to_string(),
            "--batch",
            &self.batch.to_string(),
        ]
        .map(String::from)
        .into();
        if let Some(seed) = self.seed {
            // Each incarnation samples differently, reproducibly.
            let s =
                seed ^ (u64::from(id) << 32 | u64::from(inc)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            a.extend(["--seed".to_string(), s.to_string()]);
        }
        a
    }
}

/// `Err("")` asks for the usage text alone (`--help`).
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        actors: 3,
        learners: 2,
        seconds: 3.0,
        frames: vec![8, 84, 84, 4],
        capacity: 16,
        buffer: 64,
        batch: 4,
        chaos: false,
        seed: None,
        role: Role::Parent,
        id: 0,
        inc: 0,
        queues: Default::default(),
        dir: String::new(),
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--actors" => o.actors = number(&a, &value()?)?,
            "--learners" => o.learners = number(&a, &value()?)?,
            "--seconds" => o.seconds = number(&a, &value()?)?,
            "--frames" => o.frames = shape(&value()?)?,
            "--capacity" => o.capacity = number(&a, &value()?)?,
            "--buffer" => o.buffer = number(&a, &value()?)?,
            "--batch" => o.batch = number(&a, &value()?)?,
            "--chaos" => o.chaos = true,
            "--seed" => o.seed = Some(number(&a, &value()?)?),
            "--id" => o.id = number(&a, &value()?)?,
            "--inc" => o.inc = number(&a, &value()?)?,
            "--dir" => o.dir = value()?,
            "--queues" => {
                let v = value()?;
                let (t, b) = v.split_once(',').ok_or("--queues needs two names")?;
                o.queues = [t.to_string(), b.to_string()];
            }
            "--role" => {
                let v = value()?;
                o.role = Role::parse(&v).ok_or(format!("unknown role {v:?}"))?;
            }
            _ => return Err(format!("unexpected argument {a:?}")),
        }
    }
    if o.actors == 0 || o.learners == 0 || o.actors > 64 || o.learners > 64 {
        return Err("--actors and --learners must be between 1 and 64".into());
    }
    if o.capacity == 0 || o.buffer == 0 || o.batch == 0 {
        return Err("--capacity, --buffer and --batch must be at least 1".into());
    }
    if o.buffer > 4096 || o.capacity > 4096 || o.batch > 4096 {
        return Err("--capacity, --buffer and --batch are limited to 4096".into());
    }
    if !(o.seconds.is_finite() && o.seconds > 0.0 && o.seconds < 1e6) {
        return Err(format!(
            "--seconds: {} is not a positive duration",
            o.seconds
        ));
    }
    let traj = crate::payload::traj_bytes(o.steps(), o.obs_elems()) as u64;
    if traj * u64::from(o.batch) > 1 << 30 {
        return Err(format!(
            "a batch of {} trajectories of {} bytes is above the 1 GiB message limit",
            o.batch, traj
        ));
    }
    Ok(o)
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: {v:?} is not a valid number"))
}

fn shape(s: &str) -> Result<Vec<u32>, String> {
    let bad = || format!("--frames: {s:?} is not a shape like 8x84x84x4");
    let dims: Vec<u32> = s
        .split(['x', 'X', ','])
        .map(|d| d.trim().parse::<u32>().ok().filter(|&d| d > 0))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    let elems = dims.iter().try_fold(1u64, |p, &d| p.checked_mul(d as u64));
    match elems {
        None => Err(bad()),
        Some(n) if n > 1 << 27 => Err(format!(
            "--frames: {s:?} is above 2^27 elements (512 MiB) per trajectory"
        )),
        // A one-dimensional shape is one step of that many elements.
        Some(n) if dims.len() == 1 => Ok(vec![1, n as u32]),
        Some(_) => Ok(dims),
    }
}

//! Command-line options, shared by the parent and its children (a child gets the parent's
//! options back on its command line, plus `--role`, `--id` and `--queue`).

use std::time::Duration;

pub const USAGE: &str = "usage: rl_pipeline [--actors N] [--learners M] [--seconds S]
                   [--capacity C] [--frames BxHxWxC]

N actor processes send batches of f32 frames for S seconds through one shmq queue to M
learner processes, which verify every batch; the parent checks that every batch sent was
received exactly once and intact, prints the throughput and exits non-zero otherwise.

  --actors N         actor processes (default 3)
  --learners M       learner processes (default 2)
  --seconds S        how long the actors send, may be fractional (default 3)
  --capacity C       queue capacity in messages (default 32)
  --frames SHAPE     f32 tensor per message, dimensions joined by x (default 8x84x84x4:
                     a batch of 8 stacked 84x84 4-frame Atari observations, 903 kB)";

/// Which process this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Creates the queue, starts and reaps the children, does the accounting.
    Parent,
    /// Sends batches.
    Actor,
    /// Receives and verifies batches.
    Learner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Parent => "parent",
            Role::Actor => "actor",
            Role::Learner => "learner",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub actors: u32,
    pub learners: u32,
    pub seconds: f64,
    pub capacity: usize,
    /// Tensor shape of one message's payload (f32 elements).
    pub frames: Vec<u32>,
    pub role: Role,
    /// Child index within its role.
    pub id: u32,
    /// Queue name (children only).
    pub queue: String,
}

impl Options {
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }

    /// f32 elements per message.
    pub fn elems(&self) -> usize {
        self.frames.iter().map(|&d| d as usize).product()
    }

    pub fn shape(&self) -> String {
        let dims: Vec<String> = self.frames.iter().map(|d| d.to_string()).collect();
        dims.join("x")
    }

    /// The command line of a child in `role` with index `id`.
    pub fn child_args(&self, role: Role, id: u32, queue: &str) -> Vec<String> {
        vec![
            "--role".into(),
            role.as_str().into(),
            "--id".into(),
            id.to_string(),
            "--queue".into(),
            queue.into(),
            "--actors".into(),
            self.actors.to_string(),
            "--learners".into(),
            self.learners.to_string(),
            "--seconds".into(),
            self.seconds.to_string(),
            "--capacity".into(),
            self.capacity.to_string(),
            "--frames".into(),
            self.shape(),
        ]
    }
}

/// `Err("")` asks for the usage text alone (`--help`).
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        actors: 3,
        learners: 2,
        seconds: 3.0,
        capacity: 32,
        frames: vec![8, 84, 84, 4],
        role: Role::Parent,
        id: 0,
        queue: String::new(),
    };
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--actors" => o.actors = number(&a, &value()?)?,
            "--learners" => o.learners = number(&a, &value()?)?,
            "--seconds" => o.seconds = number(&a, &value()?)?,
            "--capacity" => o.capacity = number(&a, &value()?)?,
            "--frames" => o.frames = shape(&value()?)?,
            "--id" => o.id = number(&a, &value()?)?,
            "--queue" => o.queue = value()?,
            "--role" => {
                o.role = match value()?.as_str() {
                    "parent" => Role::Parent,
                    "actor" => Role::Actor,
                    "learner" => Role::Learner,
                    r => return Err(format!("unknown role {r:?}")),
                }
            }
            _ => return Err(format!("unexpected argument {a:?}")),
        }
    }
    if o.actors == 0 || o.learners == 0 {
        return Err("--actors and --learners must be at least 1".into());
    }
    if o.capacity == 0 {
        return Err("--capacity must be at least 1".into());
    }
    if !(o.seconds.is_finite() && o.seconds > 0.0 && o.seconds < 1e6) {
        return Err(format!(
            "--seconds: {} is not a positive duration",
            o.seconds
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
        Some(n) if !dims.is_empty() && n <= (1 << 28) => Ok(dims),
        Some(_) => Err(format!(
            "--frames: {s:?} is above 2^28 elements (1 GiB) per message"
        )),
        None => Err(bad()),
    }
}

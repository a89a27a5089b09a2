//! The parent: creates the two queues and the journal directory, starts the children by
//! re-executing this program with a role, starts them all at once, kills and restarts
//! them under `--chaos`, shows the progress, stops the pipeline, reaps every child and
//! leaves `/dev/shm` clean. Children are SIGKILLed and reaped on every failure path (an
//! error, a timeout, a panic, a second Ctrl-C).
//!
//! **Stopping.** At the end of `--seconds` (or on Ctrl-C / SIGTERM) the parent first
//! stops the chaos and waits until every killed child has been restarted and is running,
//! then:
//!
//! 1. drops its own four handles (see below) and sends SIGTERM to the actors, which finish
//!    the trajectory they are sending, journal it and leave;
//! 2. once every actor is gone, the replay buffer's `recv` says `Disconnected`: it stops
//!    serving batches and leaves (its buffered messages are acked as it goes);
//! 3. once the replay buffer is gone, the learners drain the batch queue until
//!    `Disconnected` and leave;
//! 4. the parent reaps them all, reads the journals, takes a last look at the queues
//!    (`shmq::info::inspect`), and drops its `Supervisor`s: the last process out unlinks
//!    the queues.
//!
//! **The parent's handles.** During the run the parent holds a sender and a receiver on
//! each queue, and never uses them. They keep every queue "connected" while a role is
//! being restarted: with the replay buffer dead, actors block on a full queue instead of
//! getting `Disconnected`, and learners wait instead of concluding that the batches are
//! over. The parent's `Supervisor` on each queue keeps the queue in `/dev/shm` until the
//! parent has read its final counters.

use crate::cli::{Options, Role};
use crate::display::{Display, Snapshot};
use crate::ledger::Ledger;
use crate::payload;
use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long children get to attach and say `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the wind-down may take once the actors were told to stop.
const WIND_DOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// The main loop's period.
const TICK: Duration = Duration::from_millis(50);

/// A line from a child incarnation's stdout: slot, incarnation, line.
struct Event(usize, u32, String);

/// One running child process.
struct Proc {
    inc: u32,
    child: Child,
    stdin: Option<ChildStdin>,
    ready: bool,
    started: bool,
}

/// A place in the pipeline (a role and an index), filled by successive incarnations.
struct Slot {
    role: Role,
    id: u32,
    proc: Option<Proc>,
    next_inc: u32,
    /// Killed; to be restarted at this time.
    restart_at: Option<Instant>,
}

impl Slot {
    fn label(&self) -> String {
        format!("{} {}", self.role.as_str(), self.id)
    }
}

/// Every child of this run. Dropping it SIGKILLs and reaps whichever are still running.
pub struct Children {
    slots: Vec<Slot>,
    events: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
    /// Whether `go` was given: children that say `ready` later get it at once.
    go: bool,
    /// `(role, id, incarnation)` of every child the parent SIGKILLed.
    pub killed: BTreeSet<(Role, u32, u32)>,
}

impl Children {
    pub fn new() -> Children {
        let (events_tx, events) = mpsc::channel();
        Children {
            slots: Vec::new(),
            events,
            events_tx,
            go: false,
            killed: BTreeSet::new(),
        }
    }

    fn add(&mut self, o: &Options, role: Role, id: u32) -> Result<(), String> {
        self.slots.push(Slot {
            role,
            id,
            proc: None,
            next_inc: 0,
            restart_at: None,
        });
        self.spawn(self.slots.len() - 1, o)
    }

    /// Starts the next incarnation of slot `i`: this program again, with a role.
    fn spawn(&mut self, i: usize, o: &Options) -> Result<(), String> {
        let slot = &mut self.slots[i];
        let inc = slot.next_inc;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        let mut child = Command::new(exe)
            .args(o.child_args(slot.role, slot.id, inc))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", slot.label()))?;
        let out = child.stdout.take().expect("piped stdout");
        let events = self.events_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if events.send(Event(i, inc, line)).is_err() {
                    return;
                }
            }
        });
        slot.next_inc += 1;
        slot.restart_at = None;
        slot.proc = Some(Proc {
            inc,
            stdin: child.stdin.take(),
            child,
            ready: false,
            started: false,
        });
        Ok(())
    }

    /// Handles the children's lines until `until`: `ready` is answered with `go` once the
    /// run has started; anything else is shown.
    fn pump(&mut self, until: Instant) {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            // (An exit is noticed by `reap`.)
            let Ok(Event(i, inc, line)) = self.events.recv_timeout(left) else {
                return;
            };
            let go = self.go;
            let slot = &mut self.slots[i];
            let label = slot.label();
            match &mut slot.proc {
                Some(p) if p.inc == inc && line == "ready" => {
                    p.ready = true;
                    if go {
                        start(p, &label);
                    }
                }
                _ => eprintln!("[{label}.{inc}] {line}"),
            }
        }
    }

    /// Waits until every child is ready (attached, journal open), then starts them all.
    fn start_all(&mut self, signals: &AtomicUsize) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.all_ready() {
            if signals.load(Ordering::SeqCst) >= 2 {
                return Err("interrupted twice: children killed".into());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "timed out waiting for {} to attach",
                    self.not_ready().join(", ")
                ));
            }
            self.pump(Instant::now() + TICK);
            if let Some((_, s, inc, status)) = self.reap().into_iter().next() {
                return Err(format!(
                    "{s} (incarnation {inc}) exited at the start: {status}"
                ));
            }
        }
        self.go = true;
        for slot in &mut self.slots {
            let label = slot.label();
            if let Some(p) = &mut slot.proc {
                start(p, &label);
            }
        }
        Ok(())
    }

    fn all_ready(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.proc.as_ref().is_some_and(|p| p.ready))
    }

    fn not_ready(&self) -> Vec<String> {
        let slots = self.slots.iter();
        slots
            .filter(|s| !s.proc.as_ref().is_some_and(|p| p.ready))
            .map(Slot::label)
            .collect()
    }

    /// No restart is pending and every running child has been started.
    fn settled(&self) -> bool {
        self.slots
            .iter()
            .all(|s| s.restart_at.is_none() && s.proc.as_ref().map_or(true, |p| p.started))
    }

    /// Collects the children that exited: `(role, label, incarnation, status)`.
    fn reap(&mut self) -> Vec<(Role, String, u32, ExitStatus)> {
        let mut out = Vec::new();
        for slot in &mut self.slots {
            let label = slot.label();
            let Some(p) = &mut slot.proc else { continue };
            match p.child.try_wait() {
                Ok(Some(status)) => {
                    out.push((slot.role, label, p.inc, status));
                    slot.proc = None;
                }
                Ok(None) => {}
                Err(e) => eprintln!("warning: waiting for {label}: {e}"),
            }
        }
        out
    }

    /// SIGKILLs slot `i`'s process, reaps it, and schedules its restart after `delay`.
    /// Returns a line saying what was done.
    fn kill(&mut self, i: usize, delay: Duration) -> String {
        let slot = &mut self.slots[i];
        let Some(mut p) = slot.proc.take() else {
            return String::new();
        };
        let pid = p.child.id();
        let _ = p.child.kill();
        let _ = p.child.wait();
        self.killed.insert((slot.role, slot.id, p.inc));
        slot.restart_at = Some(Instant::now() + delay);
        format!(
            "chaos: SIGKILL {} (incarnation {}, pid {pid}), restart in {} ms",
            slot.label(),
            p.inc,
            delay.as_millis()
        )
    }

    /// Restarts the killed children whose time has come (all of them if `now_all`).
    fn restart_due(&mut self, o: &Options, now_all: bool) -> Result<(), String> {
        let now = Instant::now();
        for i in 0..self.slots.len() {
            if self.slots[i]
                .restart_at
                .is_some_and(|t| now_all || t <= now)
            {
                self.spawn(i, o)?;
            }
        }
        Ok(())
    }

    /// A random running child to kill: an actor or a learner mostly, the replay buffer
    /// now and then.
    fn pick_victim(&self, rng: &mut StdRng) -> Option<usize> {
        let role = match rng.gen_range(0..100) {
            0..=44 => Role::Actor,
            45..=84 => Role::Learner,
            _ => Role::Replay,
        };
        let alive: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].role == role && self.slots[i].proc.is_some())
            .collect();
        (!alive.is_empty()).then(|| alive[rng.gen_range(0..alive.len())])
    }

    fn signal(&self, role: Role, sig: Signal) {
        for s in self.slots.iter().filter(|s| s.role == role) {
            if let Some(p) = &s.proc {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.child.id() as i32), sig);
            }
        }
    }

    fn running(&self) -> usize {
        self.slots.iter().filter(|s| s.proc.is_some()).count()
    }

    /// `(running, slots)` of `role`.
    fn alive(&self, role: Role) -> (usize, usize) {
        let of_role = self.slots.iter().filter(|s| s.role == role);
        let running = of_role.clone().filter(|s| s.proc.is_some()).count();
        (running, of_role.count())
    }

    /// Incarnations started per slot, keyed by `(role, id)`.
    pub fn incarnations(&self) -> BTreeMap<(Role, u32), u32> {
        self.slots
            .iter()
            .map(|s| ((s.role, s.id), s.next_inc))
            .collect()
    }

    /// SIGKILLs and reaps every child still running (the failure path).
    pub fn kill_all(&mut self) {
        for slot in &mut self.slots {
            if let Some(p) = &mut slot.proc {
                let _ = p.child.kill();
            }
        }
        for slot in &mut self.slots {
            if let Some(mut p) = slot.proc.take() {
                let _ = p.child.wait();
            }
            slot.restart_at = None;
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Sends `go` to a ready child.
fn start(p: &mut Proc, label: &str) {
    if p.started {
        return;
    }
    p.started = true;
    if let Some(stdin) = &mut p.stdin {
        if let Err(e) = stdin.write_all(b"go\n").and_then(|_| stdin.flush()) {
            // It died meanwhile: `reap` will say so.
            eprintln!("warning: cannot start {label}: {e}");
        }
    }
    p.stdin = None; // nothing more to say
}

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Stopping: chaos over, waiting for the last restarts to be running.
    Settling,
    /// The actors were told to stop; waiting for every child to leave.
    WindDown,
}

/// What a run measured.
pub struct Outcome {
    pub ledger: Ledger,
    pub killed: BTreeSet<(Role, u32, u32)>,
    pub incarnations: BTreeMap<(Role, u32), u32>,
    /// From `go` to the stop.
    pub running: Duration,
    /// From `go` to the last child's exit.
    pub total: Duration,
    pub stopped_by: String,
    /// The queues' last snapshots, after every child left.
    pub traj_q: Option<shmq::info::QueueInfo>,
    pub batch_q: Option<shmq::info::QueueInfo>,
}

/// A fresh directory for the journals.
pub fn make_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!(
        "rl_pipeline-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// Runs the pipeline with `o.queues` and `o.dir` set by the caller. The queues are gone
/// from `/dev/shm` when this returns, `Ok` or not (checked by the caller). `signals`
/// counts SIGINT/SIGTERM: one stops the run cleanly, two kill the children at once.
pub fn run(o: &Options, signals: &AtomicUsize, display: &mut Display) -> Result<Outcome, String> {
    let (steps, obs) = (o.steps(), o.obs_elems());
    let traj = payload::traj_bytes(steps, obs) as u64;
    let batch =
        (payload::batch_words(o.batch as usize, payload::traj_words(steps, obs)) * 4) as u64;
    let participants = 2 * (o.actors + o.learners + 1) as usize + 16;
    // The replay buffer holds up to `buffer` messages on top of the ring and the loans.
    let traj_slots = o.buffer + 2 * o.capacity + 16;
    let batch_slots = 2 * o.capacity + 16;
    // Payload memory for every slot at once, so that the bound never makes anyone wait
    // (the replay buffer holding K messages while waiting for more would otherwise wait
    // for ever). A slot's segment is sized by power-of-two class of at least 4 KiB, so
    // this is an upper bound (see src/segment.rs): 112 MiB for the trajectory queue and
    // 192 MiB for the batch queue by default, of which only what is used is allocated.
    let pool = |msg: u64, slots: usize| msg.max(4096).next_power_of_two() * slots as u64;
    let traj_pair = shmq::Builder::new()
        .name(o.queues[0].clone())
        .capacity(o.capacity)
        .slots(traj_slots)
        .max_message_size(traj)
        .max_payload_bytes(pool(traj, traj_slots))
        .max_participants(participants)
        .create()
        .map_err(|e| format!("cannot create the trajectory queue: {e}"))?;
    let batch_pair = shmq::Builder::new()
        .name(o.queues[1].clone())
        .capacity(o.capacity)
        .slots(batch_slots)
        .max_message_size(batch)
        .max_payload_bytes(pool(batch, batch_slots))
        .max_participants(participants)
        .create()
        .map_err(|e| format!("cannot create the batch queue: {e}"))?;
    let supervise = |q: &str| shmq::Supervisor::open(q).map_err(|e| format!("supervisor: {e}"));
    let _sups = (supervise(&o.queues[0])?, supervise(&o.queues[1])?);
    let mut handles = Some((traj_pair, batch_pair));
    // Declared after the handles, dropped before them: children are killed and reaped
    // before the queues can go.
    let mut kids = Children::new();

    kids.add(o, Role::Replay, 0)?;
    for id in 0..o.learners {
        kids.add(o, Role::Learner, id)?;
    }
    for id in 0..o.actors {
        kids.add(o, Role::Actor, id)?;
    }
    kids.start_all(signals)?;
    let t_go = Instant::now();
    let dir = PathBuf::from(&o.dir);
    let mut ledger = Ledger::default();
    let mut rng = match o.seed {
        Some(s) => StdRng::seed_from_u64(s),
        None => StdRng::from_entropy(),
    };
    let chaos_gap = |rng: &mut StdRng| Duration::from_millis(rng.gen_range(200..=800));
    let mut next_kill = o.chaos.then(|| t_go + chaos_gap(&mut rng));
    let mut phase = Phase::Running;
    let mut stopped_by = String::new();
    let (mut t_stop, mut t_phase) = (t_go, t_go);
    let mut status = Status::new(t_go, traj, batch);
    loop {
        kids.pump(Instant::now() + TICK);
        let now = Instant::now();
        let sigs = signals.load(Ordering::SeqCst);
        if sigs >= 2 {
            kids.kill_all();
            return Err("interrupted twice: children killed".into());
        }
        for (role, who, inc, st) in kids.reap() {
            let clean = st.success();
            if phase == Phase::WindDown && clean {
                continue;
            }
            if role == Role::Actor && clean {
                // Only a signal stops an actor: one the parent did not get (Ctrl-C sent
                // to the children alone?). Stop the run the same way.
                if stopped_by.is_empty() {
                    stopped_by = format!("a signal ({who} stopped)");
                }
                continue;
            }
            return Err(format!(
                "{who} (incarnation {inc}) exited unexpectedly: {st}"
            ));
        }
        if phase == Phase::Running {
            if sigs >= 1 && stopped_by.is_empty() {
                stopped_by = "a signal".into();
            }
            if now >= t_go + o.duration() && stopped_by.is_empty() {
                stopped_by = "time".into();
            }
            if !stopped_by.is_empty() {
                display.line(&format!(
                    "stopping ({stopped_by}) after {:.1} s: chaos off, actors stop, queues drain",
                    now.duration_since(t_go).as_secs_f64()
                ));
                phase = Phase::Settling;
                (t_stop, t_phase) = (now, now);
                next_kill = None;
            }
        }
        if let Some(t) = next_kill.filter(|&t| now >= t) {
            if let Some(i) = kids.pick_victim(&mut rng) {
                let delay = Duration::from_millis(rng.gen_range(50..=250));
                display.line(&kids.kill(i, delay));
            }
            next_kill = Some(t + chaos_gap(&mut rng));
        }
        kids.restart_due(o, phase != Phase::Running)?;
        match phase {
            Phase::Running => {}
            Phase::Settling if kids.settled() => {
                // Step 1 of the stop (see the module doc).
                handles = None;
                kids.signal(Role::Actor, Signal::SIGTERM);
                phase = Phase::WindDown;
                t_phase = now;
            }
            Phase::Settling if now > t_phase + READY_TIMEOUT => {
                return Err(format!(
                    "timed out waiting for restarted children: {}",
                    kids.not_ready().join(", ")
                ))
            }
            Phase::Settling => {}
            Phase::WindDown if kids.running() == 0 => break,
            Phase::WindDown if now > t_phase + WIND_DOWN_TIMEOUT => {
                return Err(format!(
                    "{} children still running {WIND_DOWN_TIMEOUT:?} after the stop",
                    kids.running()
                ))
            }
            Phase::WindDown => {}
        }
        if now >= status.next {
            if let Err(e) = ledger.ingest(&dir) {
                eprintln!("warning: journals: {e}");
            }
            let snap = status.snapshot(o, &ledger, &kids, phase, now);
            display.status(&snap);
        }
    }
    let total = t_go.elapsed();
    drop(handles);
    ledger.ingest(&dir)?;
    let traj_q = shmq::info::inspect(&o.queues[0]).ok();
    let batch_q = shmq::info::inspect(&o.queues[1]).ok();
    Ok(Outcome {
        ledger,
        killed: std::mem::take(&mut kids.killed),
        incarnations: kids.incarnations(),
        running: t_stop.duration_since(t_go),
        total,
        stopped_by,
        traj_q,
        batch_q,
    })
}

/// Builds the live display's snapshots, with rates since the previous one.
struct Status {
    t_go: Instant,
    next: Instant,
    last: Option<(Instant, crate::ledger::Live)>,
    traj_bytes: u64,
    batch_bytes: u64,
}

impl Status {
    fn new(t_go: Instant, traj_bytes: u64, batch_bytes: u64) -> Status {
        Status {
            t_go,
            next: t_go + Duration::from_secs(1),
            last: Some((t_go, Default::default())),
            traj_bytes,
            batch_bytes,
        }
    }

    fn snapshot(
        &mut self,
        o: &Options,
        ledger: &Ledger,
        kids: &Children,
        phase: Phase,
        now: Instant,
    ) -> Snapshot {
        self.next += Duration::from_secs(1);
        if self.next < now {
            self.next = now + Duration::from_secs(1);
        }
        let live = ledger.live;
        let (t0, prev) = self.last.replace((now, live)).unwrap_or((now, live));
        let dt = now.duration_since(t0).as_secs_f64().max(1e-3);
        let traj_rate = (live.traj_got - prev.traj_got) as f64 / dt;
        let batch_rate = (live.batch_got - prev.batch_got) as f64 / dt;
        let traj_q = shmq::info::inspect(&o.queues[0]).ok();
        let batch_q = shmq::info::inspect(&o.queues[1]).ok();
        Snapshot {
            secs: now.duration_since(self.t_go).as_secs_f64(),
            of_secs: o.seconds,
            phase: match phase {
                Phase::Running => "running",
                Phase::Settling => "stopping",
                Phase::WindDown => "draining",
            },
            traj_rate,
            traj_gbps: traj_rate * self.traj_bytes as f64 / 1e9,
            batch_rate,
            batch_gbps: batch_rate * self.batch_bytes as f64 / 1e9,
            live,
            kills: kids.killed.len(),
            alive: [Role::Actor, Role::Replay, Role::Learner].map(|r| kids.alive(r)),
            buffer: o.buffer,
            traj_q,
            batch_q,
        }
    }
}

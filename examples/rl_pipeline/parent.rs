//! The parent: creates the queue, starts the children by re-executing this program with a
//! role, starts them all at once, collects their reports, reaps them, and leaves
//! `/dev/shm` clean. Children are killed and reaped on every failure path (an error, a
//! timeout, a panic, Ctrl-C).

use crate::cli::{Options, Role};
use crate::payload;
use crate::report::Report;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long children get to attach and say `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long after the actors' sending time the parent waits for every report.
const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// One started child.
struct Proc {
    role: Role,
    id: u32,
    child: Child,
    stdin: Option<ChildStdin>,
    ready: bool,
    report: Option<Report>,
    status: Option<ExitStatus>,
}

impl Proc {
    fn label(&self) -> String {
        format!("{} {}", self.role.as_str(), self.id)
    }
}

/// A line from a child's stdout, or its end.
enum Event {
    Line(usize, String),
    Eof(usize),
}

/// Every child of this run. Dropping it kills and reaps whichever are still running.
pub struct Children {
    procs: Vec<Proc>,
    /// Pids of unreaped children, for the Ctrl-C handler (which cannot reach `procs`).
    pids: Arc<Mutex<Vec<u32>>>,
    events: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
}

impl Children {
    pub fn new(pids: Arc<Mutex<Vec<u32>>>) -> Children {
        let (events_tx, events) = mpsc::channel();
        Children {
            procs: Vec::new(),
            pids,
            events,
            events_tx,
        }
    }

    /// Starts `role` number `id`: this program again, with a role on its command line.
    pub fn spawn(&mut self, o: &Options, role: Role, id: u32, queue: &str) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        let mut child = Command::new(exe)
            .args(o.child_args(role, id, queue))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {} {id}: {e}", role.as_str()))?;
        self.pids.lock().unwrap().push(child.id());
        let idx = self.procs.len();
        let out = child.stdout.take().expect("piped stdout");
        let events = self.events_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if events.send(Event::Line(idx, line)).is_err() {
                    return;
                }
            }
            let _ = events.send(Event::Eof(idx));
        });
        self.procs.push(Proc {
            role,
            id,
            stdin: child.stdin.take(),
            child,
            ready: false,
            report: None,
            status: None,
        });
        Ok(())
    }

    /// Waits until every child has said `ready`.
    pub fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.procs.iter().all(|p| p.ready) {
            match self.next_event(deadline, "to attach to the queue")? {
                Event::Line(i, l) if l == "ready" => self.procs[i].ready = true,
                Event::Line(i, l) => {
                    return Err(format!(
                        "{} said {l:?} before `ready`",
                        self.procs[i].label()
                    ))
                }
                Event::Eof(i) => return Err(self.died(i, "before it was ready")),
            }
        }
        Ok(())
    }

    /// Tells every child to start.
    pub fn go(&mut self) -> Result<(), String> {
        for p in &mut self.procs {
            let stdin = p.stdin.as_mut().expect("stdin kept until go");
            stdin
                .write_all(b"go\n")
                .and_then(|_| stdin.flush())
                .map_err(|e| format!("cannot start {}: {e}", p.label()))?;
        }
        Ok(())
    }

    /// Waits for every child's report; returns them in spawn order.
    pub fn collect_reports(&mut self, deadline: Instant) -> Result<Vec<Report>, String> {
        while self.procs.iter().any(|p| p.report.is_none()) {
            match self.next_event(deadline, "to finish and report")? {
                Event::Line(i, l) if l.starts_with("report ") => {
                    let r = Report::parse(&l)?;
                    self.procs[i].report = Some(r);
                }
                // Room for later protocol lines (periodic stats for a live display).
                Event::Line(i, l) => eprintln!("[{}] {l}", self.procs[i].label()),
                Event::Eof(i) if self.procs[i].report.is_none() => {
                    return Err(self.died(i, "without a report"))
                }
                Event::Eof(_) => {}
            }
        }
        Ok(self
            .procs
            .iter()
            .map(|p| p.report.clone().unwrap())
            .collect())
    }

    fn next_event(&mut self, deadline: Instant, what: &str) -> Result<Event, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.events.recv_timeout(left).map_err(|_| {
            let late: Vec<String> = self
                .procs
                .iter()
                .filter(|p| !p.ready || p.report.is_none())
                .map(Proc::label)
                .collect();
            format!("timed out waiting for {} {what}", late.join(", "))
        })
    }

    /// An error for child `i`, whose stdout closed early, with its exit status.
    fn died(&mut self, i: usize, when: &str) -> String {
        let status = self.reap_one(i, Instant::now() + Duration::from_secs(2));
        format!("{} exited {when} ({status})", self.procs[i].label())
    }

    /// Waits for child `i` until `deadline`, then kills it. Returns how it ended.
    fn reap_one(&mut self, i: usize, deadline: Instant) -> String {
        let p = &mut self.procs[i];
        if p.status.is_none() {
            p.stdin = None; // EOF: a child still waiting for `go` gives up
            let status = loop {
                match p.child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Ok(None) => {
                        let _ = p.child.kill();
                        break p.child.wait().ok();
                    }
                    Err(_) => break None,
                }
            };
            self.pids.lock().unwrap().retain(|&pid| pid != p.child.id());
            p.status = status;
        }
        match p.status {
            Some(s) => s.to_string(),
            None => "exit status unknown".into(),
        }
    }

    /// Reaps every child (killing any still running at `deadline`). `Err` lists the
    /// children that did not exit successfully.
    pub fn reap_all(&mut self, deadline: Instant) -> Result<(), String> {
        let mut bad = Vec::new();
        for i in 0..self.procs.len() {
            let how = self.reap_one(i, deadline);
            if !self.procs[i].status.is_some_and(|s| s.success()) {
                bad.push(format!("{} ({how})", self.procs[i].label()));
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("children failed: {}", bad.join(", ")))
        }
    }

    /// Kills and reaps every child still running (the failure path).
    pub fn kill_all(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
        }
        let now = Instant::now();
        for i in 0..self.procs.len() {
            self.reap_one(i, now);
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Kills and reaps the children listed in `pids` (the Ctrl-C path, from the signal thread).
pub fn kill_pids(pids: &Mutex<Vec<u32>>) {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::waitpid;
    use nix::unistd::Pid;
    let pids = std::mem::take(&mut *pids.lock().unwrap_or_else(|e| e.into_inner()));
    for &pid in &pids {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    for &pid in &pids {
        let _ = waitpid(Pid::from_raw(pid as i32), None);
    }
}

/// What a successful run measured.
pub struct Outcome {
    pub queue: String,
    pub reports: Vec<Report>,
    /// From `go` to the last report.
    pub elapsed: Duration,
}

/// Runs the pipeline. The queue is gone from `/dev/shm` when this returns, `Ok` or not
/// (see `check_clean` in main.rs).
pub fn run(o: &Options, pids: Arc<Mutex<Vec<u32>>>, queue: &mut String) -> Result<Outcome, String> {
    let elems = o.elems();
    let len = payload::message_bytes(elems) as u64;
    let (tx, rx) = shmq::Builder::new()
        .capacity(o.capacity)
        .max_message_size(len)
        .create()
        .map_err(|e| format!("cannot create the queue: {e}"))?;
    *queue = tx.name().to_string();
    // The parent's own attachment: it keeps the queue in /dev/shm until the children are
    // reaped, without counting as a sender or receiver, and can repair the queue.
    let sup = shmq::Supervisor::open(tx.name()).map_err(|e| format!("supervisor: {e}"))?;
    let mut handles = Some((tx, rx));
    // Declared last, dropped first: children are killed and reaped before the queue goes.
    let mut kids = Children::new(pids);

    for id in 0..o.learners {
        kids.spawn(o, Role::Learner, id, queue)?;
    }
    for id in 0..o.actors {
        kids.spawn(o, Role::Actor, id, queue)?;
    }
    kids.wait_ready()?;
    // Every child is attached: drop our sender and receiver so that the learners see
    // `Disconnected` once the actors are done (and the actors, if every learner dies).
    handles.take();
    let start = Instant::now();
    kids.go()?;
    let reports = kids.collect_reports(start + o.duration() + DRAIN_GRACE)?;
    let elapsed = start.elapsed();
    kids.reap_all(Instant::now() + Duration::from_secs(5))?;
    // Every child left cleanly, so there is nothing to recover; a record left behind
    // would mean a handle was not released on exit.
    match sup.run_once() {
        Ok(0) => {}
        Ok(n) => eprintln!("warning: {n} participant records were left behind by the children"),
        Err(e) => eprintln!("warning: recovery: {e}"),
    }
    drop(kids);
    drop(sup);
    Ok(Outcome {
        queue: queue.clone(),
        reports,
        elapsed,
    })
}

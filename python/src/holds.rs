//! Hand-over holds: what keeps a queue alive while an endpoint travels to a process that
//! has not attached yet (the policy is described in `shmq/_lifecycle.py`).
//!
//! A hold is an attachment that neither sends nor receives (a `shmq::Supervisor`). This
//! module keeps them, counts this process's open endpoints per queue, and runs one watcher
//! thread (Rust only: it never takes the GIL) while a hold exists. Every 20 ms the watcher
//! lets go of each hold whose queue has no open endpoint in this process any more and
//! either has seen as many other processes attach since the first hand-over as there were
//! hand-overs (each pickle of an endpoint, each fork with one open: participant records
//! that changed under other pids, [`attached_since`]; so a queue handed to two children
//! outlives the first one's leaving), or has no live child process left that could still
//! attach (`/proc/self/task/*/children`, multiprocessing's resource tracker aside), or was
//! handed over [`GRACE`] ago. A hand-over that never reaches a process (an endpoint
//! pickled twice for one child, a fork whose child does not use the queue) therefore
//! keeps the hold until the children are gone or the grace period ends. Python's sweep (`_lifecycle.sweep`) does the same at once when an
//! endpoint is opened or closed, with `multiprocessing`'s view of its children.
//!
//! **Fork.** All of it lives in a per-process state found through an atomic pointer and
//! tagged with its pid: a forked child (where the watcher thread does not exist, and whose
//! copy of a mutex may have been inherited locked) starts a fresh state on first use and
//! never touches the parent's. The parent's holds are then leaked in the child, which is
//! what dropping them would amount to anyway (an inherited core handle changes nothing
//! shared when dropped), without the risk of a lock held at the fork.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a hold outlives its last hand-over when no other process has attached.
pub const GRACE: Duration = Duration::from_secs(60);
const WATCH_EVERY: Duration = Duration::from_millis(20);

struct Held {
    /// Held for its attachment alone; dropping it detaches.
    _sup: shmq::Supervisor,
    since: Instant,
    /// The queue's participant records when the hold was taken.
    before: Vec<shmq::info::RecordInfo>,
    /// Hand-overs since then (pickles of an endpoint, forks with one open).
    handovers: usize,
}

fn records(name: &str) -> Vec<shmq::info::RecordInfo> {
    shmq::info::inspect(name)
        .map(|i| i.records)
        .unwrap_or_default()
}

/// How many other processes attached to the queue (and maybe left again) since `before`:
/// the distinct pids of records that changed and whose occupant is not us. Immune to
/// timing: a child that attached and left between two looks still left its pid and a new
/// generation behind. It can only undercount (a record reused twice shows its last
/// occupant), which keeps a hold longer, never shorter.
fn attached_since(before: &[shmq::info::RecordInfo], name: &str) -> usize {
    let me = std::process::id();
    let mut pids: Vec<u32> = records(name)
        .iter()
        .zip(before)
        .filter(|(now, then)| now != then && now.pid != me && now.pid != 0)
        .map(|(now, _)| now.pid)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids.len()
}

#[derive(Default)]
struct Tables {
    holds: HashMap<String, Held>,
    /// Open endpoints (native handles, drop-in endpoints included) per queue name.
    local: HashMap<String, usize>,
}

struct PerProcess {
    pid: u32,
    tables: Mutex<Tables>,
    watching: AtomicBool,
}

static STATE: AtomicPtr<PerProcess> = AtomicPtr::new(std::ptr::null_mut());

fn state() -> &'static PerProcess {
    let me = std::process::id();
    loop {
        let p = STATE.load(Ordering::Acquire);
        // SAFETY: a non-null pointer in STATE comes from `Box::into_raw` below and is never
        // freed (a replaced state is leaked on purpose: it may be the parent's, in a child).
        if let Some(s) = unsafe { p.as_ref() } {
            if s.pid == me {
                return s;
            }
        }
        let fresh = Box::into_raw(Box::new(PerProcess {
            pid: me,
            tables: Mutex::new(Tables::default()),
            watching: AtomicBool::new(false),
        }));
        match STATE.compare_exchange(p, fresh, Ordering::AcqRel, Ordering::Acquire) {
            // SAFETY: just stored; never freed (see above).
            Ok(_) => return unsafe { &*fresh },
            // SAFETY: `fresh` was never shared.
            Err(_) => drop(unsafe { Box::from_raw(fresh) }),
        }
    }
}

fn tables(s: &PerProcess) -> MutexGuard<'_, Tables> {
    s.tables.lock().unwrap_or_else(|p| p.into_inner())
}

/// Counts an endpoint of queue `name` opened in this process.
pub fn opened(name: &str) {
    *tables(state()).local.entry(name.to_string()).or_insert(0) += 1;
}

/// Uncounts it (called once per [`opened`], by the process that counted it).
pub fn closed(name: &str) {
    let s = state();
    let mut t = tables(s);
    if let Some(n) = t.local.get_mut(name) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            t.local.remove(name);
        }
    }
}

/// Open endpoints of queue `name` in this process.
pub fn local(name: &str) -> usize {
    tables(state()).local.get(name).copied().unwrap_or(0)
}

/// Takes (or refreshes) the hold on queue `name`.
pub fn hold(name: &str) -> Result<(), shmq::Error> {
    let s = state();
    let refresh = tables(s).holds.contains_key(name);
    let sup = if refresh {
        None
    } else {
        Some(shmq::Supervisor::open(name)?)
    };
    // The records after our own hold joined: every process that attaches later shows.
    let before = if refresh { Vec::new() } else { records(name) };
    let mut t = tables(s);
    match (t.holds.get_mut(name), sup) {
        (Some(h), _) => {
            h.since = Instant::now();
            h.handovers += 1;
        }
        (None, Some(sup)) => {
            t.holds.insert(
                name.to_string(),
                Held {
                    _sup: sup,
                    since: Instant::now(),
                    before,
                    handovers: 1,
                },
            );
        }
        (None, None) => {} // let go meanwhile by the watcher: the queue is in use
    }
    drop(t);
    if !s.watching.swap(true, Ordering::AcqRel) {
        let started = std::thread::Builder::new()
            .name("shmq-holds".into())
            .spawn(move || watch(s));
        if started.is_err() {
            s.watching.store(false, Ordering::Release); // Python's sweep still runs
        }
    }
    Ok(())
}

/// Whether this process holds queue `name`.
pub fn held(name: &str) -> bool {
    tables(state()).holds.contains_key(name)
}

/// Whether this process holds any queue.
pub fn held_any() -> bool {
    !tables(state()).holds.is_empty()
}

/// Whether this process has a child process that is not a zombie (one that could still
/// attach a queue handed to it), from `/proc/self/task/*/children`. Unknown means yes.
fn live_children() -> bool {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return true;
    };
    for task in tasks {
        let Ok(task) = task else { return true };
        let Ok(list) = std::fs::read_to_string(task.path().join("children")) else {
            return true;
        };
        for pid in list.split_whitespace() {
            // multiprocessing's resource tracker never attaches a queue.
            if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
                if cmd
                    .windows(b"multiprocessing.resource_tracker".len())
                    .any(|w| w == b"multiprocessing.resource_tracker")
                {
                    continue;
                }
            }
            // Gone meanwhile: not alive. The state follows the command name's ")".
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                match stat.rsplit_once(')') {
                    Some((_, rest)) if rest.trim_start().starts_with(['Z', 'X']) => {}
                    _ => return true,
                }
            }
        }
    }
    false
}

/// Lets go of the holds no longer needed: no open endpoint here, and as many other
/// processes attached as there were hand-overs, or no child process can still attach
/// (`no_children`, from Python's `multiprocessing`, or no live child at all), or the grace
/// period over.
pub fn sweep(no_children: bool) {
    let s = state();
    type Candidate = (String, Instant, Vec<shmq::info::RecordInfo>, usize);
    let candidates: Vec<Candidate> = {
        let t = tables(s);
        t.holds
            .iter()
            .filter(|(name, _)| !t.local.contains_key(*name))
            .map(|(name, h)| (name.clone(), h.since, h.before.clone(), h.handovers))
            .collect()
    };
    if candidates.is_empty() {
        return;
    }
    let no_children = no_children || !live_children();
    for (name, since, before, handovers) in candidates {
        let gone = shmq::info::inspect(&name).is_err();
        if gone
            || no_children
            || since.elapsed() >= GRACE
            || attached_since(&before, &name) >= handovers
        {
            let h = {
                let mut t = tables(s);
                if t.local.contains_key(&name) {
                    continue; // reopened meanwhile
                }
                t.holds.remove(&name)
            };
            drop(h); // detaches: the last process out removes the queue
        }
    }
}

/// Lets go of every hold (at exit).
pub fn release_all() {
    let s = state();
    let all: Vec<Held> = tables(s).holds.drain().map(|(_, h)| h).collect();
    drop(all);
}

fn watch(s: &'static PerProcess) {
    loop {
        std::thread::sleep(WATCH_EVERY);
        sweep(false);
        let t = tables(s);
        if t.holds.is_empty() {
            s.watching.store(false, Ordering::Release);
            drop(t);
            return;
        }
    }
}

//! Loom model tests for shmq; the models are in `tests/`, see `README.md`.
//!
//! This library holds what the models share: the loom builder with the suite's preemption
//! bound, a runner for negative controls (a model that must fail), the queue operations
//! written exactly as the process side composes them (alloc → write → publish;
//! claim → read → free), crash injection around a victim operation, a futex made of loom
//! primitives, and the post-run checks of DESIGN §4 (drain, census, exact capacity).
//!
//! Everything here exists only under `--cfg shmq_loom`; a normal build of this crate is
//! empty, so `cargo test --workspace` compiles it to nothing.
#![cfg(shmq_loom)]

pub use loom;

use shmq::layout::{
    part_gen, sender_word, HeapQueue, Role, Shared, SlotState, INLINE_BYTES, OWNER_NONE,
};
use shmq::ring::{self, Claimed, RingError};
use shmq::sync::crash::{self, Killed};
use shmq::sync::AtomicU32;
use shmq::wait::Futex;
use shmq::{roster, slots};

use loom::sync::atomic::Ordering::Relaxed;
use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Once;
use std::time::Duration;

/// The preemption bound of every model in the suite (loom's `LOOM_MAX_PREEMPTIONS`).
pub const PREEMPTION_BOUND: usize = 2;

/// Runs `f` under loom with the suite's preemption bound (the environment variable is
/// not needed, and is overridden if set). Returns how many executions loom explored (also
/// printed, which `cargo test -- --nocapture` shows).
pub fn model<F>(f: F) -> usize
where
    F: Fn() + Sync + Send + 'static,
{
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    install_panic_hook();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(PREEMPTION_BOUND);
    b.check(move || {
        r.fetch_add(1, SeqCst);
        f()
    });
    let n = runs.load(SeqCst);
    eprintln!("loom explored {n} executions");
    n
}

std::thread_local! {
    // Set while a negative control runs on this (OS) thread: its expected panic is
    // recorded here instead of printed. Loom runs a model's threads as coroutines on the
    // OS thread that called `model`, so one std thread-local covers all of them.
    static EXPECTING_FAILURE: Cell<bool> = const { Cell::new(false) };
    static FAILURE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Runs a model that is expected to FAIL (a negative control) and returns loom's (or the
/// model's) panic message, or `None` if every explored execution passed.
pub fn model_failure<F>(f: F) -> Option<String>
where
    F: Fn() + Sync + Send + 'static,
{
    install_panic_hook();
    EXPECTING_FAILURE.with(|e| e.set(true));
    FAILURE.with(|m| m.borrow_mut().take());
    let r = catch_unwind(AssertUnwindSafe(|| {
        model(f);
    }));
    EXPECTING_FAILURE.with(|e| e.set(false));
    let msg = FAILURE.with(|m| m.borrow_mut().take());
    match r {
        Ok(()) => None,
        Err(p) => Some(msg.unwrap_or_else(|| payload_text(&*p))),
    }
}

fn payload_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// Silences the panic message of a simulated kill ([`Killed`]) and records (rather than
/// prints) the first panic of a negative control; everything else goes to the previous
/// hook.
pub fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().is::<Killed>() {
                return;
            }
            if EXPECTING_FAILURE.with(|e| e.get()) {
                FAILURE.with(|m| {
                    let mut m = m.borrow_mut();
                    if m.is_none() {
                        let at = info
                            .location()
                            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
                            .unwrap_or_default();
                        *m = Some(format!("{}{at}", payload_text(info.payload())));
                    }
                });
                return;
            }
            prev(info)
        }));
    });
}

// ---------------------------------------------------------------------------------------
// Queues and participants

/// A queue of `capacity` cells and `slots` payload slots, with room for 8 participants.
pub fn queue(capacity: u32, slots: u32, at_most_once: bool) -> HeapQueue {
    HeapQueue::new(capacity, slots, 8, at_most_once)
}

/// A registered participant: its record index (the owner field of the slots it holds) and
/// its ACTIVE word (what recovery is given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// Record index.
    pub idx: u16,
    /// ACTIVE word returned by `roster::register`.
    pub active: u64,
}

impl Part {
    /// The sender stamp this participant writes into the slots it publishes.
    pub fn stamp(&self) -> u64 {
        sender_word(self.idx, part_gen(self.active))
    }
}

/// Registers record `idx` with `role` (default identity), as `queue.rs` does once it
/// holds the record's lock.
pub fn register(q: &Shared<'_>, idx: u16, role: Role) -> Part {
    let active = roster::register(q, idx, role, roster::Identity::default())
        .expect("record is free at registration");
    Part { idx, active }
}

// ---------------------------------------------------------------------------------------
// Operations, composed as the process side composes them

/// Why a send did not commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFail {
    /// No FREE payload slot.
    NoSlot,
    /// The ring holds `capacity` unclaimed messages (the loan was discarded).
    Full,
}

/// Writes the one-byte payload `v` into slot `s` (owned by the caller): inline bytes,
/// then `len` and `sender` (A2 in `slots.rs`).
pub fn write(q: &Shared<'_>, s: u32, v: u8, stamp: u64) {
    let rec = &q.slots[s as usize];
    // SAFETY: the caller owns slot `s` (LOANED to it), so nobody else touches its bytes;
    // loom's UnsafeCell checks exactly that.
    rec.inline.with_mut(|p| unsafe { (*p)[0] = v });
    rec.len.store(1, Relaxed);
    rec.sender.store(stamp, Relaxed);
}

/// Reads the payload of slot `s` (owned by the caller after a claim).
pub fn read(q: &Shared<'_>, s: u32) -> u8 {
    let rec = &q.slots[s as usize];
    let len = rec.len.load(Relaxed);
    assert_eq!(len, 1, "slot {s}: length {len} is not the one written");
    // SAFETY: the caller holds slot `s` (HELD by it); loom checks that the producer's
    // write happens-before this read.
    rec.inline.with(|p| unsafe { (*p)[0] })
}

/// A send: alloc (A1), write (A2), publish (S3–S6). On `Full` the loan is discarded.
/// The slot scan starts at slot 0 for everyone, so that producers compete for the same
/// slots and a freed slot is reused at once (the interleavings the models are after).
pub fn send(q: &Shared<'_>, p: &Part, v: u8) -> Result<u64, SendFail> {
    let (s, w) = slots::alloc(q, p.idx, 0, |_| true).ok_or(SendFail::NoSlot)?;
    write(q, s, v, p.stamp());
    match ring::publish(q, s) {
        Ok(t) => Ok(t),
        Err(RingError::Full) => {
            assert!(slots::free(q, s, w), "discarding our own loan failed");
            Err(SendFail::Full)
        }
        Err(e) => panic!("publish: {e:?}"),
    }
}

/// A message taken by a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Got {
    /// Its payload byte.
    pub value: u8,
    /// The slot and the HELD word.
    pub claimed: Claimed,
    /// Whether it came from the ORPHAN pool (a redelivery) rather than the ring.
    pub redelivered: bool,
}

/// Claims the oldest message from the ring (R1–R5) and reads it. `None` on `Empty`.
pub fn claim_and_read(q: &Shared<'_>, me: u16) -> Option<Got> {
    match ring::claim(q, me) {
        Ok(c) => Some(Got {
            value: read(q, c.slot),
            claimed: c,
            redelivered: false,
        }),
        Err(RingError::Empty) => None,
        Err(e) => panic!("claim: {e:?}"),
    }
}

/// Claims an ORPHAN message (O1, O2) and reads it.
pub fn claim_orphan_and_read(q: &Shared<'_>, me: u16) -> Option<Got> {
    let (s, w) = slots::claim_orphan(q, me, 0)?;
    Some(Got {
        value: read(q, s),
        claimed: Claimed {
            slot: s,
            word: w,
            pos: u64::MAX,
        },
        redelivered: true,
    })
}

/// The ack (K1, K2): frees the slot of `g`; it must succeed (its owner is alive).
pub fn ack(q: &Shared<'_>, g: &Got) {
    assert!(
        slots::free(q, g.claimed.slot, g.claimed.word),
        "ack of slot {} failed: someone else changed a word we held",
        g.claimed.slot
    );
}

/// A whole receive as an application sees it: claim, read, ack.
pub fn recv(q: &Shared<'_>, me: u16) -> Option<Got> {
    let g = claim_and_read(q, me)?;
    ack(q, &g);
    Some(g)
}

// ---------------------------------------------------------------------------------------
// Crash injection

/// Runs `op` as a victim that is killed just before its `k`-th shared-memory step (see
/// `shmq::sync::crash`). Returns `Some(result)` if `op` finished first, `None` if it was
/// killed. A panic other than the kill (a failed check, a loom report) goes on unwinding.
///
/// The kill is a panic caught here, inside the loom thread: loom runs model threads as
/// coroutines, and a panic caught within the coroutine never reaches loom (checked by
/// `crash_hook_kills_only_the_armed_thread` in `tests/crash.rs`). The kill happens before
/// the step's loom operation starts, so loom's own state is never left half-updated.
pub fn as_victim<R>(k: u64, op: impl FnOnce() -> R) -> Option<R> {
    crash::arm(k);
    let r = catch_unwind(AssertUnwindSafe(op));
    crash::disarm();
    match r {
        Ok(v) => Some(v),
        Err(p) if p.is::<Killed>() => None,
        Err(p) => resume_unwind(p),
    }
}

/// The shared-memory steps `op` takes (run un-armed on the calling model thread).
pub fn steps_of(op: impl FnOnce()) -> u64 {
    crash::arm(u64::MAX); // resets the count without arming
    op();
    crash::disarm()
}

/// Runs `f` (a single-threaded model that returns a step count, see [`steps_of`]) and
/// returns that count. A crash sweep measures its victim's operation this way, alone,
/// from the same starting state, and kills it before each of those steps in turn.
pub fn solo_steps<F>(f: F) -> u64
where
    F: Fn() -> u64 + Sync + Send + 'static,
{
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;
    let out = Arc::new(AtomicU64::new(0));
    let o = out.clone();
    let runs = model(move || o.store(f(), SeqCst));
    assert_eq!(runs, 1, "a solo run must be a single execution");
    out.load(SeqCst)
}

// ---------------------------------------------------------------------------------------
// Post-run checks (every thread joined: the calling thread sees everything)

/// Receives everything left: ring messages first, then ORPHANs. Returns them in order.
pub fn drain(q: &Shared<'_>, me: u16) -> Vec<Got> {
    let mut out = Vec::new();
    while let Some(g) = recv(q, me) {
        out.push(g);
    }
    while let Some(g) = claim_orphan_and_read(q, me) {
        ack(q, &g);
        out.push(g);
    }
    assert!(
        claim_and_read(q, me).is_none(),
        "the ring is not empty after a drain"
    );
    out
}

/// `slots::census`, asserting that no slot is LOANED or HELD (a leak or a stuck owner).
pub fn assert_no_owned_slot(q: &Shared<'_>) {
    let c = slots::census(q);
    assert_eq!(
        (c[SlotState::Loaned as usize], c[SlotState::Held as usize]),
        (0, 0),
        "census [free, loaned, held, orphan] = {c:?}: a slot is leaked or doubly owned"
    );
    for (s, rec) in q.slots.iter().enumerate() {
        let w = rec.word.load(Relaxed);
        if shmq::layout::slot_state(w) == Some(SlotState::Free) {
            assert_eq!(shmq::layout::slot_owner(w), OWNER_NONE, "slot {s}");
        }
    }
}

/// `slots::census` is all FREE.
pub fn assert_all_free(q: &Shared<'_>) {
    let c = slots::census(q);
    assert_eq!(
        c,
        [q.slots.len() as u64, 0, 0, 0],
        "census [free, loaned, held, orphan]: a slot is leaked"
    );
}

/// The queue (drained, quiescent) takes exactly `capacity` messages, then reports
/// `Full`; they come out in order, then `Empty`; every slot is FREE again.
pub fn assert_exact_capacity(q: &Shared<'_>, p: &Part, me: u16) {
    let cap = q.cap as u8;
    for i in 0..cap {
        assert!(
            send(q, p, 0xC0 + i).is_ok(),
            "message {i} of capacity {cap} was refused: a cell is stuck"
        );
    }
    assert_eq!(
        send(q, p, 0xCF),
        Err(SendFail::Full),
        "the queue took more than its capacity {cap}"
    );
    for i in 0..cap {
        let g = recv(q, me).expect("a message sent after the run is missing");
        assert_eq!(
            g.value,
            0xC0 + i,
            "messages sent after the run came out of order"
        );
    }
    assert!(claim_and_read(q, me).is_none(), "a message appeared twice");
    assert_all_free(q);
}

/// Counts `v` in `got`.
pub fn times(got: &[Got], v: u8) -> usize {
    got.iter().filter(|g| g.value == v).count()
}

// ---------------------------------------------------------------------------------------
// Scripted ring models

/// One operation of a thread's script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Send this payload byte (a `Full` is recorded, not retried).
    Send(u8),
    /// Try to receive once (an `Empty` is recorded, not retried); ack at once.
    Recv,
}

/// A ring model: a queue of capacity `cap`, messages `pre` sent before the threads start,
/// then one model thread per script, then (after joining them) a drain and the exact
/// capacity check.
#[derive(Debug, Clone)]
pub struct Script {
    /// Ring capacity.
    pub cap: u32,
    /// Payloads sent (and committed) before any thread starts.
    pub pre: Vec<u8>,
    /// One script per model thread.
    pub threads: Vec<Vec<Op>>,
}

/// What a model thread did, in the order loom ran it (loom runs one thread at a time, so
/// appending to a std `Mutex<Vec>` between two shared-memory steps records the real
/// interleaving without adding any synchronisation to the model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    SendBegin(usize),
    SendEnd(usize, u8, Result<u64, SendFail>),
    RecvBegin(usize),
    RecvEnd(usize, Option<(u8, u64)>),
}

/// Runs `script` (call it inside [`model`]) and checks, over every execution:
///
/// * every committed message is delivered exactly once, at the position it was committed
///   at, and a refused one (`Full`) never;
/// * FIFO: each producer's commits and each consumer's claims have increasing positions;
/// * `Full` only if `capacity` messages could be in the ring: at least `cap` sends that
///   committed had begun by then, beyond those the producer itself had already received;
/// * `Empty` only if nothing the consumer itself had sent could still be in the ring;
/// * afterwards the queue drains, takes exactly `cap` more messages, reports `Full`, and
///   every slot is FREE.
///
/// The `Full`/`Empty` checks count only what the thread provably knows (its own earlier
/// operations happen-before its later ones). Real-time order is not enough under loom,
/// which, like the C++ memory model, lets an `Acquire` load return an older value when
/// nothing orders it after the newer store: a consumer may still see `E` in a cell that
/// another thread committed "earlier" in loom's schedule, and that is not a bug.
pub fn run_script(script: &Script) {
    use std::sync::{Arc, Mutex};
    let nthreads = script.threads.len() as u32;
    // Slots: the ring's content, plus one loan or held message per thread at a time.
    let hq = Arc::new(queue(script.cap, script.cap + nthreads.max(1), false));
    let log: Arc<Mutex<Vec<Ev>>> = Arc::default();
    let main = {
        let q = hq.shared();
        let main = register(&q, 0, Role::Sender);
        for &v in &script.pre {
            assert!(send(&q, &main, v).is_ok(), "pre-sent message refused");
        }
        main
    };
    let pre_pos: Vec<(u8, u64)> = script
        .pre
        .iter()
        .enumerate()
        .map(|(i, &v)| (v, i as u64))
        .collect();
    let handles: Vec<_> = script
        .threads
        .iter()
        .enumerate()
        .map(|(th, ops)| {
            let me = {
                let q = hq.shared();
                let role = if ops.iter().any(|o| matches!(o, Op::Send(_))) {
                    Role::Sender
                } else {
                    Role::Receiver
                };
                register(&q, th as u16 + 1, role)
            };
            let (hq, log, ops) = (hq.clone(), log.clone(), ops.clone());
            loom::thread::spawn(move || {
                let q = hq.shared();
                for op in ops {
                    match op {
                        Op::Send(v) => {
                            log.lock().unwrap().push(Ev::SendBegin(th));
                            let r = send(&q, &me, v);
                            assert_ne!(r, Err(SendFail::NoSlot), "the model ran out of slots");
                            log.lock().unwrap().push(Ev::SendEnd(th, v, r));
                        }
                        Op::Recv => {
                            log.lock().unwrap().push(Ev::RecvBegin(th));
                            let r = recv(&q, me.idx).map(|g| (g.value, g.claimed.pos));
                            log.lock().unwrap().push(Ev::RecvEnd(th, r));
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let q = hq.shared();
    let drained = drain(&q, main.idx);
    let log = log.lock().unwrap().clone();
    check_log(script, &pre_pos, &log, &drained);
    assert_no_owned_slot(&q);
    assert_all_free(&q);
    assert_exact_capacity(&q, &main, main.idx);
}

fn check_log(script: &Script, pre: &[(u8, u64)], log: &[Ev], drained: &[Got]) {
    let cap = script.cap as usize;
    // Committed messages (value -> position) and deliveries (value, position, by).
    let mut committed: Vec<(u8, u64)> = pre.to_vec();
    let mut delivered: Vec<(u8, u64)> = Vec::new();
    for e in log {
        match *e {
            Ev::SendEnd(_, v, Ok(t)) => committed.push((v, t)),
            Ev::RecvEnd(_, Some(d)) => delivered.push(d),
            _ => {}
        }
    }
    for g in drained {
        assert!(!g.redelivered, "an ORPHAN appeared without any crash");
        delivered.push((g.value, g.claimed.pos));
    }
    for &(v, t) in &committed {
        let n = delivered.iter().filter(|d| d.0 == v).count();
        assert_eq!(
            n, 1,
            "message {v:#x} committed at {t} was delivered {n} times; log {log:?}"
        );
        assert!(
            delivered.contains(&(v, t)),
            "message {v:#x} committed at {t} was claimed at another position: {delivered:?}"
        );
    }
    for &(v, _) in &delivered {
        assert!(
            committed.iter().any(|c| c.0 == v),
            "message {v:#x} was delivered but never committed (refused or invented)"
        );
    }
    // FIFO: per thread, commits and claims at increasing positions.
    for th in 0..script.threads.len() {
        for (what, ps) in [
            (
                "commits",
                log.iter()
                    .filter_map(|e| match *e {
                        Ev::SendEnd(t, _, Ok(p)) if t == th => Some(p),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            (
                "claims",
                log.iter()
                    .filter_map(|e| match *e {
                        Ev::RecvEnd(t, Some((_, p))) if t == th => Some(p),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
        ] {
            assert!(
                ps.windows(2).all(|w| w[0] < w[1]),
                "thread {th}: {what} out of order: {ps:?}"
            );
        }
    }
    // Full and Empty against what the thread itself knows (see `run_script`): the
    // pre-sent messages (they happen-before every thread) and its own operations.
    let thread_of = |e: &Ev| match *e {
        Ev::SendBegin(t) | Ev::SendEnd(t, ..) | Ev::RecvBegin(t) | Ev::RecvEnd(t, _) => t,
    };
    // The end event of the begin event at `j`.
    let end_of = |j: usize| {
        let th = thread_of(&log[j]);
        log[j + 1..]
            .iter()
            .find(|e| thread_of(e) == th)
            .copied()
            .expect("a begin without an end")
    };
    let begin_of = |i: usize| {
        let th = thread_of(&log[i]);
        (0..i)
            .rev()
            .find(|&j| thread_of(&log[j]) == th)
            .expect("an end without a begin")
    };
    // Operations that began before index `i` and turned out to succeed.
    let succeeded_before = |i: usize, sends: bool, pred: &dyn Fn(usize) -> bool| {
        (0..i)
            .filter(|&j| matches!(log[j], Ev::SendBegin(_) | Ev::RecvBegin(_)))
            .filter(|&j| pred(thread_of(&log[j])))
            .filter(|&j| match (log[j], end_of(j)) {
                (Ev::SendBegin(_), Ev::SendEnd(_, _, Ok(_))) => sends,
                (Ev::RecvBegin(_), Ev::RecvEnd(_, Some(_))) => !sends,
                _ => false,
            })
            .count()
    };
    for (i, e) in log.iter().enumerate() {
        match *e {
            Ev::SendEnd(th, v, Err(SendFail::Full)) => {
                let b = begin_of(i);
                let committed = pre.len() + succeeded_before(i, true, &|_| true);
                let own_received = succeeded_before(b, false, &|t| t == th);
                assert!(
                    committed >= cap + own_received,
                    "thread {th} got Full for {v:#x} with at most {committed} committed, \
                     {own_received} of them received by itself, capacity {cap}; log {log:?}"
                );
            }
            Ev::RecvEnd(th, None) => {
                let b = begin_of(i);
                let known_in = pre.len() + succeeded_before(b, true, &|t| t == th);
                let claims = succeeded_before(b, false, &|t| t == th)
                    + succeeded_before(i, false, &|t| t != th);
                assert!(
                    known_in <= claims,
                    "thread {th} got Empty although {known_in} messages it knows of were \
                     committed and at most {claims} claims had begun; log {log:?}"
                );
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------
// A futex made of loom primitives

/// A futex for the models: `wait` checks the word under a loom mutex and sleeps on a
/// condvar; `wake_all` takes the mutex, then notifies everyone. Because the waker changes
/// the word *before* `wake_all` and the waiter checks it under the same mutex, a waiter is
/// either already asleep when the notification comes (and wakes) or sees the new word
/// (and does not sleep): exactly the atomic check-and-sleep of `FUTEX_WAIT`.
///
/// Time does not exist in loom (its `Condvar::wait_timeout` simply waits), so a wait *with*
/// a timeout returns at once, as if the timeout had expired: a behaviour the real futex
/// also has, and one that `block_on` must handle by asking `remaining()` again.
#[derive(Debug, Default)]
pub struct LoomFutex {
    lock: loom::sync::Mutex<()>,
    cv: loom::sync::Condvar,
}

impl LoomFutex {
    /// A futex with no sleeper.
    pub fn new() -> Self {
        LoomFutex {
            lock: loom::sync::Mutex::new(()),
            cv: loom::sync::Condvar::new(),
        }
    }
}

impl Futex for LoomFutex {
    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        if timeout.is_some() {
            return;
        }
        let g = self.lock.lock().unwrap();
        if word.load(loom::sync::atomic::Ordering::SeqCst) == expected {
            drop(self.cv.wait(g).unwrap());
        }
    }

    fn wake_all(&self, _word: &AtomicU32) {
        let _g = self.lock.lock().unwrap();
        self.cv.notify_all();
    }
}

/// The payload size the models use fits inline.
const _: () = assert!(INLINE_BYTES >= 1);

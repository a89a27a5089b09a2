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

/// Loom's limit on the branches (scheduling and load choices) of one execution.
pub const MAX_BRANCHES: usize = 10_000;

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
    // Per execution, not a bound on the exploration: two waiters polling 32 times each (`SPIN_ROUNDS + YIELD_ROUNDS`)
    // before they sleep (`wait::block_on`) take more than loom's default 1000.
    b.max_branches = MAX_BRANCHES;
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
/// then `len`, the delivery count (1: the first delivery will be this message's first)
/// and `sender` (A2 in `slots.rs`, as `handles.rs` writes them).
pub fn write(q: &Shared<'_>, s: u32, v: u8, stamp: u64) {
    let rec = &q.slots[s as usize];
    // SAFETY: the caller owns slot `s` (LOANED to it), so nobody else touches its bytes;
    // loom's UnsafeCell checks exactly that.
    rec.inline.with_mut(|p| unsafe { (*p)[0] = v });
    rec.len.store(1, Relaxed);
    rec.deliveries.store(1, Relaxed);
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

/// Claims an ORPHAN message (O1–O3) and reads it.
pub fn claim_orphan_and_read(q: &Shared<'_>, me: u16) -> Option<Got> {
    let (s, w, _count) = slots::claim_orphan(q, me, 0, |_, _| false)?;
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

/// The ack (K1, K2, `slots::ack`): frees the slot of `g`; it must succeed (its owner is
/// alive).
pub fn ack(q: &Shared<'_>, g: &Got) {
    assert!(
        slots::ack(q, g.claimed.slot, g.claimed.word).is_some(),
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

/// Panics unless `shmq::sync::crash` kills exactly the armed loom thread, after exactly
/// `k` steps of its own (checked once per test binary, in a two-thread model). Every crash
/// sweep and crash control calls this first: with a broken hook a kill lands on whichever
/// thread takes the next step, and a sweep would fail, or a control "fail as it must",
/// for the wrong reason.
///
/// Loom runs a model's threads as coroutines on one OS thread, so the hook's counters must
/// be loom thread-locals (`loom::thread_local!`); `std::thread_local!` counters are shared
/// by all threads of a model.
pub fn assert_crash_hook_is_per_thread() {
    use std::sync::OnceLock;
    static RESULT: OnceLock<Option<String>> = OnceLock::new();
    let r = RESULT.get_or_init(|| {
        model_failure(|| {
            use std::sync::Arc;
            let a = Arc::new(shmq::sync::AtomicU64::new(0));
            let b = a.clone();
            let other = loom::thread::spawn(move || {
                for _ in 0..3 {
                    b.load(Relaxed);
                }
            });
            let killed = as_victim(2, || {
                for _ in 0..3 {
                    a.fetch_add(1, Relaxed);
                }
            })
            .is_none();
            if other.join().is_err() {
                panic!("an unarmed loom thread was killed");
            }
            assert!(killed, "the armed thread was not killed");
            assert_eq!(
                a.load(Relaxed),
                2,
                "the armed thread died after a wrong step count"
            );
        })
    });
    if let Some(why) = r {
        panic!(
            "shmq::sync::crash does not kill exactly the armed loom thread ({why}); its \
             counters must be `loom::thread_local!` (see loom-tests/README.md)"
        );
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

/// The shared state, for failure messages: head, tail, cells, and each slot's word
/// (generation, state, owner) and `pos`.
pub fn dump(q: &Shared<'_>) -> String {
    use shmq::layout::{cell_is_full, cell_lap, cell_slot, slot_gen, slot_owner, slot_state};
    let cells: Vec<String> = q
        .cells
        .iter()
        .map(|c| {
            let x = c.load(Relaxed);
            if cell_is_full(x) {
                format!("F({}, s{})", cell_lap(x), cell_slot(x))
            } else {
                format!("E({})", cell_lap(x))
            }
        })
        .collect();
    let slots: Vec<String> = q
        .slots
        .iter()
        .map(|r| {
            let w = r.word.load(Relaxed);
            let p = r.pos.load(Relaxed);
            let st = slot_state(w).map_or("?".into(), |s| format!("{s:?}"));
            let pos = if p == shmq::layout::POS_NONE {
                "NONE".into()
            } else {
                p.to_string()
            };
            format!(
                "{st}(g{}, o{}) pos {pos}",
                slot_gen(w),
                slot_owner(w) as i32
            )
        })
        .collect();
    format!(
        "head {} tail {} cells {cells:?} slots {slots:?}",
        q.ctl.head.load(Relaxed),
        q.ctl.tail.load(Relaxed)
    )
}

/// `slots::census`, asserting that no slot is LOANED or HELD (a leak or a stuck owner).
pub fn assert_no_owned_slot(q: &Shared<'_>) {
    let c = slots::census(q);
    assert_eq!(
        (c[SlotState::Loaned as usize], c[SlotState::Held as usize]),
        (0, 0),
        "census [free, loaned, held, orphan] = {c:?}: a slot is leaked or doubly owned; {}",
        dump(q)
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
    assert_all_free_in(q, "");
}

/// [`assert_all_free`], the failure prefixed with `ctx` and followed by a [`dump`].
pub fn assert_all_free_in(q: &Shared<'_>, ctx: &str) {
    let c = slots::census(q);
    assert_eq!(
        c,
        [q.slots.len() as u64, 0, 0, 0],
        "{ctx}: census [free, loaned, held, orphan]: a slot is leaked; now {}",
        dump(q)
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
// Crash sweeps

/// The operation a crash sweep kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Victim {
    /// A producer's send of `0xA1`: alloc, write, publish.
    Send,
    /// A consumer's receive: claim, read, ack (free).
    Recv,
    /// A consumer's ack (free) of `0x01`, which it claimed and read before the threads
    /// start.
    Ack,
    /// The supervisor's recovery of a dead participant `D` (lease, recover, lease back).
    /// `D` died holding `0x01` (claimed and read), having committed `0xD1` and with
    /// `0xD2` written into a loan it never published.
    Recovery,
}

/// One crash scenario: the victim, the queue, and whether recovery runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crash {
    /// What is killed.
    pub victim: Victim,
    /// Ring capacity (1 or 2).
    pub cap: u32,
    /// Held messages of a dead consumer are dropped (`true`) or redelivered.
    pub at_most_once: bool,
    /// Whether the supervisor runs recovery for the victim (false only in a negative
    /// control). For [`Victim::Recovery`], whether the killed recovery is run again.
    pub recover: bool,
    /// The live threads beside the victim.
    pub live: Live,
}

/// The live participants of a crash scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Two threads: a consumer (one receive, then one redelivery attempt) and a producer
    /// (one send of `0xB1`).
    Split,
    /// One thread doing the same in sequence: receive, send, redelivery attempt. Cheaper
    /// (two running threads instead of three); it still claims and acks a message and then
    /// reuses the freed slot while recovery runs.
    Combined,
}

/// The participants of a crash scenario.
#[derive(Debug, Clone, Copy)]
struct Cast {
    /// Sends the messages that exist before the threads start; drains at the end.
    main: Part,
    /// The victim (for `Victim::Recovery`, the first lease holder).
    v: Part,
    /// A live consumer (the model's main thread during the run).
    l1: Part,
    /// A live producer.
    l2: Part,
    /// The participant that died before the run (`Victim::Recovery` only).
    d: Part,
    /// The lease holder that reruns a killed recovery (`Victim::Recovery` only).
    r2: Part,
}

/// What the victim's thread reports.
#[derive(Debug, Clone, Copy, Default)]
struct VictimOutcome {
    killed: bool,
    /// `Send`: the publish result, if the send returned.
    sent: Option<Result<u64, SendFail>>,
    /// `Recv`: the message, if the whole receive (ack included) returned.
    received: Option<u8>,
    /// What the recovery of the victim (or, for `Victim::Recovery`, of `D`: both runs
    /// added up) did.
    report: shmq::recovery::Report,
}

/// The messages of a scenario (one byte each).
mod msg {
    pub const PRE: u8 = 0x01; // sent before the threads start
    pub const VICTIM: u8 = 0xA1; // the victim's send
    pub const LIVE: u8 = 0xB1; // the live producer's send
    pub const D_SENT: u8 = 0xD1; // committed by D before it died
    pub const D_LOAN: u8 = 0xD2; // written into D's unsent loan
}

impl Crash {
    fn slots(&self) -> u32 {
        // Ring content + one slot each for the victim, the live consumer, the live
        // producer. For `Victim::Recovery` the victim holds none, and D holds two beside
        // its message in the ring (a held message and an unsent loan).
        match self.victim {
            Victim::Recovery => self.cap + 4,
            _ => self.cap + 3,
        }
    }

    /// Registers the cast and builds the state before the threads start.
    fn setup(&self, q: &Shared<'_>) -> (Cast, Option<Got>) {
        let role = match self.victim {
            Victim::Send => Role::Sender,
            Victim::Recv | Victim::Ack => Role::Receiver,
            Victim::Recovery => Role::Monitor,
        };
        let main = register(q, 0, Role::Sender);
        let cast = Cast {
            main,
            v: register(q, 1, role),
            l1: register(q, 2, Role::Receiver),
            l2: register(q, 3, Role::Sender),
            d: if self.victim == Victim::Recovery {
                register(q, 4, Role::Sender)
            } else {
                main
            },
            r2: if self.victim == Victim::Recovery {
                register(q, 5, Role::Monitor)
            } else {
                main
            },
        };
        let mut held = None;
        match self.victim {
            Victim::Send => {}
            Victim::Recv => send(q, &main, msg::PRE).map(drop).unwrap(),
            Victim::Ack => {
                send(q, &main, msg::PRE).unwrap();
                held = Some(claim_and_read(q, cast.v.idx).unwrap());
            }
            Victim::Recovery => {
                send(q, &main, msg::PRE).unwrap();
                claim_and_read(q, cast.d.idx).unwrap(); // held by D when it died
                send(q, &cast.d, msg::D_SENT).unwrap();
                let (s, _) = slots::alloc(q, cast.d.idx, 0, |_| true).unwrap();
                write(q, s, msg::D_LOAN, cast.d.stamp());
            }
        }
        (cast, held)
    }

    /// The victim's operation (what is killed).
    fn victim_op(&self, q: &Shared<'_>, c: &Cast, held: Option<Got>, out: &mut VictimOutcome) {
        match self.victim {
            Victim::Send => out.sent = Some(send(q, &c.v, msg::VICTIM)),
            Victim::Recv => {
                if let Some(g) = recv(q, c.v.idx) {
                    out.received = Some(g.value);
                }
            }
            Victim::Ack => ack(q, &held.expect("the victim holds a message")),
            Victim::Recovery => {
                let me = lease_of(c.v);
                roster::take_lease(q, me).expect("the lease is free");
                let r = shmq::recovery::recover(q, c.d.idx, c.d.active, true);
                add_report(&mut out.report, &r);
                roster::release_lease(q, me);
            }
        }
    }

    /// The supervisor, once the victim is dead.
    fn after_death(&self, q: &Shared<'_>, c: &Cast, out: &mut VictimOutcome) {
        if !self.recover {
            return;
        }
        match self.victim {
            Victim::Recovery => {
                // The next repair pass (`supervisor::repair`): heals the orphans hint (a
                // recovery killed between V2a's CAS and its raise leaves it low), then the
                // next lease holder takes the lease over from the dead one (or takes it,
                // if the dead one had handed it back) and runs recovery again.
                shmq::recovery::heal_orphan_hint(q);
                let me = lease_of(c.r2);
                if let Err(holder) = roster::take_lease(q, me) {
                    assert_eq!(holder, lease_of(c.v), "the lease names a stranger");
                    assert!(roster::steal_lease(q, holder, me), "lease takeover failed");
                }
                let r = shmq::recovery::recover(q, c.d.idx, c.d.active, true);
                add_report(&mut out.report, &r);
                roster::release_lease(q, me);
            }
            _ => out.report = shmq::recovery::recover(q, c.v.idx, c.v.active, true),
        }
    }

    /// The shared-memory steps of the victim's operation run alone from the same state.
    pub fn steps(&self) -> u64 {
        let this = *self;
        solo_steps(move || {
            let hq = HeapQueue::new(this.cap, this.slots(), 8, this.at_most_once);
            let q = hq.shared();
            let (cast, held) = this.setup(&q);
            let mut out = VictimOutcome::default();
            steps_of(|| this.victim_op(&q, &cast, held, &mut out))
        })
    }

    /// For [`Victim::Send`]: the steps of its alloc and write (killed at this `k`, the
    /// victim holds a written loan and has not started to publish).
    pub fn steps_until_publish(&self) -> u64 {
        assert_eq!(self.victim, Victim::Send);
        let this = *self;
        solo_steps(move || {
            let hq = HeapQueue::new(this.cap, this.slots(), 8, this.at_most_once);
            let q = hq.shared();
            let (cast, _) = this.setup(&q);
            steps_of(|| {
                let (s, _) = slots::alloc(&q, cast.v.idx, 0, |_| true).unwrap();
                write(&q, s, msg::VICTIM, cast.v.stamp());
            })
        })
    }

    /// For [`Victim::Recv`]: the steps of its claim up to and including the claim CAS
    /// (R3), that is, all of `ring::claim` but the two CASes of `help_remove` (R4, R5).
    /// Killed at this `k`, the victim holds the slot and its cell is still full.
    pub fn steps_until_cell_clear(&self) -> u64 {
        assert_eq!(self.victim, Victim::Recv);
        let this = *self;
        solo_steps(move || {
            let hq = HeapQueue::new(this.cap, this.slots(), 8, this.at_most_once);
            let q = hq.shared();
            let (cast, _) = this.setup(&q);
            steps_of(|| {
                ring::claim(&q, cast.v.idx).unwrap();
            }) - 2
        })
    }

    /// The model (run it inside [`model`]): the victim is killed before its `k`-th step
    /// (`k` = [`Crash::steps`]: right after its operation returned), then recovery runs,
    /// while the live threads ([`Live`]) run beside both; after joining them, the checks
    /// of DESIGN §4.
    pub fn run(&self, k: u64) {
        use std::sync::Arc;
        let this = *self;
        let hq = Arc::new(HeapQueue::new(this.cap, this.slots(), 8, this.at_most_once));
        let (cast, held) = this.setup(&hq.shared());
        let hv = hq.clone();
        let victim = loom::thread::spawn(move || {
            let q = hv.shared();
            let mut out = VictimOutcome::default();
            out.killed = as_victim(k, || this.victim_op(&q, &cast, held, &mut out)).is_none();
            this.after_death(&q, &cast, &mut out);
            out
        });
        let live_thread = |hq: Arc<HeapQueue>, receive: bool, do_send: bool, orphan: bool| {
            loom::thread::spawn(move || {
                let q = hq.shared();
                let mut got: Vec<Got> = Vec::new();
                if receive {
                    got.extend(recv(&q, cast.l1.idx));
                }
                let sent = do_send.then(|| {
                    let r = send(&q, &cast.l2, msg::LIVE);
                    assert_ne!(r, Err(SendFail::NoSlot), "the model ran out of slots");
                    r
                });
                if orphan {
                    if let Some(g) = claim_orphan_and_read(&q, cast.l1.idx) {
                        ack(&q, &g);
                        got.push(g);
                    }
                }
                (got, sent)
            })
        };
        let (producer, consumer) = match this.live {
            Live::Split => (
                Some(live_thread(hq.clone(), false, true, false)),
                live_thread(hq.clone(), true, false, true),
            ),
            Live::Combined => (None, live_thread(hq.clone(), true, true, true)),
        };
        // The model's main thread only waits (it is not a fourth running thread); loom
        // may start any of the three first without spending a preemption.
        let out = victim.join().unwrap();
        let (live, mut live_sent) = consumer.join().unwrap();
        if let Some(p) = producer {
            live_sent = p.join().unwrap().1;
        }
        let live_sent = live_sent.expect("the live producer sent");
        let q = hq.shared();
        this.check(&q, &cast, held, &out, live_sent, live);
    }

    fn check(
        &self,
        q: &Shared<'_>,
        c: &Cast,
        held: Option<Got>,
        out: &VictimOutcome,
        live_sent: Result<u64, SendFail>,
        mut got: Vec<Got>,
    ) {
        let ctx = format!(
            "{self:?}, victim {out:?}, live producer {live_sent:?}, live consumer {got:?}; \
             before the drain: {}",
            dump(q)
        );
        // Drain the ring: afterwards nothing may be LOANED or HELD (a leak, or an owner
        // that is dead and was not recovered); then redeliver the ORPHANs.
        while let Some(g) = recv(q, c.main.idx) {
            got.push(g);
        }
        let c0 = slots::census(q);
        assert_eq!(
            (c0[SlotState::Loaned as usize], c0[SlotState::Held as usize]),
            (0, 0),
            "{ctx}: after draining the ring, census [free, loaned, held, orphan] = {c0:?}; \
             now {}",
            dump(q)
        );
        while let Some(g) = claim_orphan_and_read(q, c.main.idx) {
            ack(q, &g);
            got.push(g);
        }
        assert!(
            claim_and_read(q, c.main.idx).is_none(),
            "{ctx}: ring not empty"
        );
        let c1 = slots::census(q);
        assert_eq!(
            c1,
            [q.slots.len() as u64, 0, 0, 0],
            "{ctx}: after redelivering the orphans, census [free, loaned, held, orphan] = \
             {c1:?} with the orphans hint at {}: a message is stranded; now {}",
            q.ctl.counters.orphans.load(Relaxed),
            dump(q)
        );
        let n = |v: u8| times(&got, v);
        let r = &out.report;
        let redelivered = got.iter().filter(|g| g.redelivered).count() as u64;
        let dead_consumer_held =
            matches!(self.victim, Victim::Recv | Victim::Ack | Victim::Recovery);
        if self.at_most_once || !dead_consumer_held {
            assert_eq!(
                redelivered, 0,
                "{ctx}: a redelivery without an orphan: {got:?}"
            );
        }
        // The live producer's message: delivered exactly once if committed (unless the
        // victim is a consumer under at-most-once, see below), else never.
        let live_n = n(msg::LIVE);
        match live_sent {
            Ok(_) if self.victim == Victim::Recv => {}
            Ok(_) => assert_eq!(live_n, 1, "{ctx}: live message delivered {live_n} times"),
            Err(_) => assert_eq!(live_n, 0, "{ctx}: a refused message was delivered"),
        }
        match self.victim {
            Victim::Send => {
                let v = n(msg::VICTIM);
                match out.sent {
                    // Returned Ok (maybe killed right after): delivered exactly once.
                    Some(Ok(_)) => assert_eq!(v, 1, "{ctx}: acked send delivered {v} times"),
                    Some(Err(_)) => assert_eq!(v, 0, "{ctx}: a refused send was delivered"),
                    // Killed inside: delivered or discarded, and as recovery said.
                    None => {
                        assert!(v <= 1, "{ctx}: an unfinished send delivered {v} times");
                        if r.discarded == 1 {
                            assert_eq!(v, 0, "{ctx}: discarded yet delivered");
                        }
                        if r.kept == 1 {
                            assert_eq!(v, 1, "{ctx}: kept for delivery yet lost");
                        }
                    }
                }
                assert_eq!(r.orphaned + r.dropped, 0, "{ctx}");
            }
            Victim::Recv => {
                // Counting the victim's receive only if it returned (ack done), each
                // committed message (the pre-sent one, the live one if it was committed)
                // is delivered exactly once, except that at-most-once drops the one a
                // killed victim held (whichever it was).
                let mut committed = vec![msg::PRE];
                if live_sent.is_ok() {
                    committed.push(msg::LIVE);
                }
                let mut missing = 0;
                for &m in &committed {
                    let total = n(m) + usize::from(out.received == Some(m));
                    assert!(total <= 1, "{ctx}: {m:#x} delivered {total} times: {got:?}");
                    missing += 1 - total;
                }
                let dropped = if self.at_most_once { r.dropped } else { 0 };
                assert_eq!(missing as u64, dropped, "{ctx}: lost messages: {got:?}");
                assert!(
                    r.dropped <= 1 && r.orphaned <= 1 && r.discarded == 0,
                    "{ctx}"
                );
                assert_eq!(redelivered, r.orphaned, "{ctx}: redeliveries vs orphans");
            }
            Victim::Ack => {
                // The victim received it (its claim returned), so the application saw it
                // once; an ack that did not finish means one redelivery (at-least-once)
                // or none (at-most-once).
                let held = held.unwrap().value;
                let again = n(held);
                let expect = usize::from(out.killed && !self.at_most_once);
                assert_eq!(again, expect, "{ctx}: {got:?}");
                assert_eq!(r.orphaned as usize, expect, "{ctx}");
                assert_eq!(
                    r.dropped,
                    u64::from(out.killed && self.at_most_once),
                    "{ctx}"
                );
            }
            Victim::Recovery => {
                // D received 0x01 and died: redelivered once, or dropped. D committed
                // 0xD1: delivered once. D never published 0xD2: never delivered.
                let expect = usize::from(!self.at_most_once);
                assert_eq!(n(msg::PRE), expect, "{ctx}: D's held message: {got:?}");
                assert_eq!(n(msg::D_SENT), 1, "{ctx}: D's committed message: {got:?}");
                assert_eq!(n(msg::D_LOAN), 0, "{ctx}: D's unsent loan was delivered");
                assert_eq!(
                    q.ctl.counters.lease.load(Relaxed),
                    0,
                    "{ctx}: the lease was not handed back"
                );
                let d_word = q.parts[c.d.idx as usize].state.load(Relaxed);
                assert_ne!(d_word, c.d.active, "{ctx}: D's record is still ACTIVE");
            }
        }
        // Every delivered value is one that was sent.
        for g in &got {
            assert!(
                [msg::PRE, msg::VICTIM, msg::LIVE, msg::D_SENT].contains(&g.value),
                "{ctx}: an unknown message {:#x}",
                g.value
            );
        }
        if self.victim != Victim::Recovery {
            let v_word = q.parts[c.v.idx as usize].state.load(Relaxed);
            assert_ne!(
                v_word, c.v.active,
                "{ctx}: the victim's record is still ACTIVE"
            );
        }
        assert_exact_capacity(q, &c.main, c.main.idx);
    }
}

fn lease_of(p: Part) -> u64 {
    shmq::layout::lease_word(p.idx, part_gen(p.active))
}

fn add_report(into: &mut shmq::recovery::Report, r: &shmq::recovery::Report) {
    into.discarded += r.discarded;
    into.kept += r.kept;
    into.orphaned += r.orphaned;
    into.dropped += r.dropped;
    into.set_aside += r.set_aside;
    into.released |= r.released;
}

/// Sweeps `k` over every step of the victim's operation (and `k` = its step count: killed
/// right after it returned), one loom model per `k`. Returns the number of crash points.
pub fn sweep(c: Crash) -> u64 {
    assert_crash_hook_is_per_thread();
    let steps = c.steps();
    for k in 0..=steps {
        eprintln!("{c:?}: crash point {k} of {steps}");
        model(move || c.run(k));
    }
    steps + 1
}

// ---------------------------------------------------------------------------------------
// Races with recovery (issue 11): the ack racing recovery, trimming racing an allocation,
// the delivery limit, two recoverers beside a live producer. Each scenario has a victim
// that a sweep kills before each of its steps in turn ([`sweep_points`]); `k` = its step
// count means it finished (for the ack: it was alive and wrongly judged dead).

/// Runs `run(k)` as one loom model per crash point `k` in `0..=steps`, after checking
/// the crash hook. Returns the number of crash points.
pub fn sweep_points<F>(what: &str, steps: u64, run: F) -> u64
where
    F: Fn(u64) + Sync + Send + 'static,
{
    use std::sync::Arc;
    assert_crash_hook_is_per_thread();
    let run = Arc::new(run);
    for k in 0..=steps {
        eprintln!("{what}: crash point {k} of {steps}");
        let r = run.clone();
        model(move || r(k));
    }
    steps + 1
}

fn total(reports: &[shmq::recovery::Report]) -> shmq::recovery::Report {
    let mut t = shmq::recovery::Report::default();
    for r in reports {
        add_report(&mut t, r);
    }
    t
}

/// The ack racing recovery (`slots::ack` against `recovery::recover`; issue 11 defect 4).
///
/// Consumer C claimed and read `0x01` (slot 0) before the threads start. Three threads:
/// C acks it (the victim: killed before its `k`-th step, or, at `k` = [`AckRace::steps`],
/// alive and wrongly judged dead); the supervisor recovers C at the same time and then,
/// at-least-once, redelivers whatever it orphaned to receiver R, which acks it; producer P
/// sends `0xB1`, taking slot 0 again if it is FREE by then (the slot scan starts at 0).
///
/// Checks: P's send commits and `0xB1` is received exactly once (an ack that wrote `pos`
/// after losing the slot would wipe P's `pos`, and P's committed cell would be cleared as
/// stale); `0x01` is acked by C or taken by recovery, exactly one of the two, and then
/// redelivered exactly once (at-least-once) or never (at-most-once); C's record is
/// released; no slot leaks; the queue then takes exactly its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckRace {
    /// Recovery drops (`true`) or orphans the held message.
    pub at_most_once: bool,
}

#[derive(Debug, Clone, Copy)]
struct AckCast {
    main: Part,
    c: Part,
    r: Part,
    p: Part,
}

impl AckRace {
    fn new_queue(&self) -> HeapQueue {
        // Slot 0 for C's message, slot 1 for P when slot 0 is not free yet.
        queue(1, 2, self.at_most_once)
    }

    fn setup(&self, q: &Shared<'_>) -> (AckCast, Got) {
        let cast = AckCast {
            main: register(q, 0, Role::Sender),
            c: register(q, 1, Role::Receiver),
            r: register(q, 2, Role::Receiver),
            p: register(q, 3, Role::Sender),
        };
        send(q, &cast.main, msg::PRE).unwrap();
        let held = claim_and_read(q, cast.c.idx).unwrap();
        assert_eq!(held.claimed.slot, 0);
        (cast, held)
    }

    /// The steps of C's ack alone.
    pub fn steps(&self) -> u64 {
        let this = *self;
        solo_steps(move || {
            let hq = this.new_queue();
            let q = hq.shared();
            let (_, held) = this.setup(&q);
            steps_of(|| {
                assert!(slots::ack(&q, held.claimed.slot, held.claimed.word).is_some());
            })
        })
    }

    /// The model (run it inside [`model`]), C killed before its `k`-th step.
    pub fn run(&self, k: u64) {
        use std::sync::Arc;
        let this = *self;
        let hq = Arc::new(this.new_queue());
        let (cast, held) = this.setup(&hq.shared());
        let h = hq.clone();
        let consumer = loom::thread::spawn(move || {
            let q = h.shared();
            as_victim(k, || slots::ack(&q, held.claimed.slot, held.claimed.word))
        });
        let h = hq.clone();
        let supervisor = loom::thread::spawn(move || {
            let q = h.shared();
            let r = shmq::recovery::recover(&q, cast.c.idx, cast.c.active, true);
            let again = if this.at_most_once {
                None
            } else {
                claim_orphan_and_read(&q, cast.r.idx)
            };
            if let Some(g) = &again {
                ack(&q, g);
            }
            (r, again)
        });
        let h = hq.clone();
        let producer = loom::thread::spawn(move || send(&h.shared(), &cast.p, msg::LIVE));
        let acked = consumer.join().unwrap();
        let (r, again) = supervisor.join().unwrap();
        let sent = producer.join().unwrap();
        let q = hq.shared();
        let ctx = format!(
            "{this:?}, k {k}: C's ack {acked:?} (None: killed), recovery {r:?}, \
             redelivered {again:?}, P's send {sent:?}; before the drain: {}",
            dump(&q)
        );
        assert!(sent.is_ok(), "{ctx}: P's send did not commit");
        let mut got: Vec<Got> = again.into_iter().collect();
        got.extend(drain(&q, cast.main.idx));
        let n_live = times(&got, msg::LIVE);
        assert_eq!(
            n_live,
            1,
            "{ctx}: P's committed message was received {n_live} times: {got:?}; now {}",
            dump(&q)
        );
        assert_no_owned_slot(&q);
        assert_all_free_in(&q, &ctx);
        if let Some(Some(stamp)) = acked {
            assert_eq!(
                stamp,
                cast.main.stamp(),
                "{ctx}: the ack read a wrong stamp"
            );
        }
        let acked_ok = u64::from(matches!(acked, Some(Some(_))));
        let taken = if this.at_most_once {
            r.dropped
        } else {
            r.orphaned
        };
        assert_eq!(
            acked_ok + taken,
            1,
            "{ctx}: 0x01 must be acked by C or taken by recovery, exactly one of the two"
        );
        assert_eq!(r.orphaned + r.dropped + r.set_aside, taken, "{ctx}");
        assert_eq!(r.discarded + r.kept, 0, "{ctx}");
        let again_n = times(&got, msg::PRE) as u64;
        assert_eq!(
            again_n, r.orphaned,
            "{ctx}: 0x01 redelivered {again_n} times, orphaned {} times: {got:?}",
            r.orphaned
        );
        assert!(got.iter().all(|g| [msg::PRE, msg::LIVE].contains(&g.value)));
        assert!(r.released, "{ctx}: recovery did not release C's record");
        assert_ne!(
            q.parts[cast.c.idx as usize].state.load(Relaxed),
            cast.c.active
        );
        assert_exact_capacity(&q, &cast.main, cast.main.idx);
    }
}

/// A byte the trimmer writes into the slots it takes (standing in for the segment it
/// empties: only a slot's owner may touch either).
pub const TRIMMED: u8 = 0x7E;

/// Segment trimming racing an allocation (`segment.rs` `trim`; issue 11, "Verification").
///
/// Three threads on a queue of capacity 1 with two slots: the trimmer T (a producer making
/// room in the pool) takes every FREE slot in turn exactly like an allocation
/// (`slots::take_if_free`), writes its bytes, and frees it (`slots::free`); producer P
/// sends `0xB1` (alloc from slot 0, write, publish); consumer C receives once. T is the
/// victim; after its death its thread runs recovery of T (which must free a slot T died
/// holding: LOANED, `pos` NONE).
///
/// Checks: one owner at a time (a ghost owner flag, and loom's `UnsafeCell` race detector
/// on the slot bytes, which T, P and C all touch); `0xB1` committed and received exactly
/// once, with the bytes P wrote; recovery discards exactly the slot T died holding; no
/// slot leaks; exact capacity afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrimRace {
    /// `false` only in a negative control: T checks that a slot is FREE and uses it without
    /// taking it (no CAS), so it can overlap with P's loan.
    pub take: bool,
}

#[derive(Debug, Clone, Copy)]
struct TrimCast {
    main: Part,
    t: Part,
    p: Part,
    c: Part,
}

type Ghost = std::sync::Arc<Vec<std::sync::atomic::AtomicBool>>;

impl TrimRace {
    fn setup(q: &Shared<'_>) -> TrimCast {
        TrimCast {
            main: register(q, 0, Role::Sender),
            t: register(q, 1, Role::Sender),
            p: register(q, 2, Role::Sender),
            c: register(q, 3, Role::Receiver),
        }
    }

    fn new_ghost(n: usize) -> Ghost {
        std::sync::Arc::new(
            (0..n)
                .map(|_| std::sync::atomic::AtomicBool::new(false))
                .collect(),
        )
    }

    /// The trimmer's pass; `holding` says which slot it owns at each moment (for the
    /// accounting after a kill).
    fn trim(&self, q: &Shared<'_>, t: &Part, ghost: &Ghost, holding: &mut Option<u32>) {
        use std::sync::atomic::Ordering::SeqCst;
        for i in 0..q.slots.len() {
            let taken = if self.take {
                slots::take_if_free(q, t.idx, i, |_| true)
            } else {
                let w = q.slots[i].word.load(Relaxed);
                (shmq::layout::slot_state(w) == Some(SlotState::Free)).then_some((i as u32, w))
            };
            let Some((s, w)) = taken else {
                continue;
            };
            *holding = Some(s);
            let was = ghost[s as usize].swap(true, SeqCst);
            assert!(!was, "the trimmer took slot {s} twice");
            // SAFETY: T owns slot `s` (LOANED to it); loom reports any overlap.
            q.slots[s as usize]
                .inline
                .with_mut(|p| unsafe { (*p)[0] = TRIMMED });
            ghost[s as usize].store(false, SeqCst);
            if self.take {
                assert!(slots::free(q, s, w), "the trimmer could not free slot {s}");
            }
            *holding = None;
        }
    }

    /// The steps of T's pass alone.
    pub fn steps(&self) -> u64 {
        let this = *self;
        solo_steps(move || {
            let hq = queue(1, 2, false);
            let q = hq.shared();
            let cast = Self::setup(&q);
            let ghost = Self::new_ghost(q.slots.len());
            steps_of(|| this.trim(&q, &cast.t, &ghost, &mut None))
        })
    }

    /// The model (run it inside [`model`]), T killed before its `k`-th step.
    pub fn run(&self, k: u64) {
        use std::sync::atomic::Ordering::SeqCst;
        use std::sync::Arc;
        let this = *self;
        let hq = Arc::new(queue(1, 2, false));
        let cast = Self::setup(&hq.shared());
        let ghost = Self::new_ghost(2);
        let (h, g) = (hq.clone(), ghost.clone());
        let trimmer = loom::thread::spawn(move || {
            let q = h.shared();
            let mut holding = None;
            let killed = as_victim(k, || this.trim(&q, &cast.t, &g, &mut holding)).is_none();
            // Dead: it touches nothing any more (its slot is the recovery's to free).
            if let Some(s) = holding {
                g[s as usize].store(false, SeqCst);
            }
            let r = shmq::recovery::recover(&q, cast.t.idx, cast.t.active, true);
            (killed, holding, r)
        });
        let (h, g) = (hq.clone(), ghost.clone());
        let producer = loom::thread::spawn(move || {
            let q = h.shared();
            // A scan can miss (T frees slot 0 behind it and holds slot 1 when it looks;
            // or a relaxed load returns the older LOANED word): scan again after a yield,
            // as a producer that found no slot waits and retries. T holds one slot at a
            // time and passes each once, so a later scan finds one.
            let (s, w) = (0..3)
                .find_map(|i| {
                    if i > 0 {
                        loom::thread::yield_now();
                    }
                    slots::alloc(&q, cast.p.idx, 0, |_| true)
                })
                .expect("no FREE slot for P in three scans");
            assert!(
                !g[s as usize].load(SeqCst),
                "slot {s} loaned to P while the trimmer holds it"
            );
            write(&q, s, msg::LIVE, cast.p.stamp());
            (s, w, ring::publish(&q, s))
        });
        let h = hq.clone();
        let consumer = loom::thread::spawn(move || recv(&h.shared(), cast.c.idx));
        let (killed, holding, r) = trimmer.join().unwrap();
        let (s, w, sent) = producer.join().unwrap();
        let first = consumer.join().unwrap();
        let q = hq.shared();
        let ctx = format!(
            "{this:?}, k {k}: T killed {killed} holding {holding:?}, recovery {r:?}; P's \
             loan ({s}, {w:#x}) sent {sent:?}; C got {first:?}; before the drain: {}",
            dump(&q)
        );
        assert!(sent.is_ok(), "{ctx}: P's send did not commit");
        let mut got: Vec<Got> = first.into_iter().collect();
        got.extend(drain(&q, cast.main.idx));
        assert_eq!(
            got.iter().map(|g| g.value).collect::<Vec<_>>(),
            vec![msg::LIVE],
            "{ctx}: P's message must be received exactly once, intact"
        );
        assert_eq!(
            r.discarded,
            u64::from(holding.is_some()),
            "{ctx}: recovery must free exactly the slot T died holding"
        );
        assert_eq!(r.kept + r.orphaned + r.dropped + r.set_aside, 0, "{ctx}");
        assert!(r.released, "{ctx}");
        assert_all_free_in(&q, &ctx);
        assert_exact_capacity(&q, &cast.main, cast.main.idx);
    }
}

/// The delivery limit (`max_deliveries` = 2, at-least-once; issue 11 defect 7).
///
/// Before the threads start: main sends `0x01`; consumer C1 claims and reads it and dies
/// holding it; recovery of C1 makes it ORPHAN with count 1 (V2a). Then two threads:
/// consumer C2 (the victim) claims the orphan (`claim_orphan` returns count 2), reads it
/// and acks it, killed before its `k`-th step (or not at all), after which its thread runs
/// recovery of C2; a live participant L sends `0xB1` and receives once (other messages
/// keep flowing). After joining, main drains the ring and the orphans.
///
/// Checks: a C2 claim returns count 2; `0x01` ends exactly one way: acked by C2, set aside
/// by recovery (V2c: `Report::set_aside`, `dead_letters` = 1), or (C2 killed before it
/// stored its count) redelivered once more with count 2, never a third delivery once C2
/// got its second; `0xB1` received exactly once by L; no slot leaks; exact capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryLimit;

#[derive(Debug, Clone, Copy)]
struct LimitCast {
    main: Part,
    c2: Part,
    l: Part,
}

/// What C2 did before it was killed (or finished).
#[derive(Debug, Clone, Copy, Default)]
struct C2Outcome {
    /// `claim_orphan` returned: (slot, HELD word, count).
    claimed: Option<(u32, u64, u64)>,
    /// The ack returned.
    acked: Option<Option<u64>>,
}

impl DeliveryLimit {
    /// The limit of the model.
    pub const MAX: u32 = 2;

    fn new_queue() -> HeapQueue {
        queue(1, 2, false).with_max_deliveries(Self::MAX)
    }

    fn setup(q: &Shared<'_>) -> LimitCast {
        let main = register(q, 0, Role::Sender);
        let c1 = register(q, 1, Role::Receiver);
        let cast = LimitCast {
            main,
            c2: register(q, 2, Role::Receiver),
            l: register(q, 3, Role::Sender),
        };
        send(q, &main, msg::PRE).unwrap();
        let first = claim_and_read(q, c1.idx).unwrap();
        let r = shmq::recovery::recover(q, c1.idx, c1.active, true);
        assert_eq!(r.orphaned, 1, "C1's held message was not orphaned: {r:?}");
        let w = q.slots[first.claimed.slot as usize].word.load(Relaxed);
        assert_eq!(shmq::layout::slot_state(w), Some(SlotState::Orphan));
        assert_eq!(
            shmq::layout::orphan_count(w),
            1,
            "the orphan word counts C1's delivery"
        );
        cast
    }

    fn c2_op(q: &Shared<'_>, c2: &Part, out: &mut C2Outcome, ack_too: bool) {
        let Some((s, w, n)) = slots::claim_orphan(q, c2.idx, 0, |_, _| false) else {
            return;
        };
        out.claimed = Some((s, w, n));
        assert_eq!(read(q, s), msg::PRE);
        if ack_too {
            out.acked = Some(slots::ack(q, s, w));
        }
    }

    fn solo(ack_too: bool) -> u64 {
        solo_steps(move || {
            let hq = Self::new_queue();
            let q = hq.shared();
            let cast = Self::setup(&q);
            let mut out = C2Outcome::default();
            steps_of(|| Self::c2_op(&q, &cast.c2, &mut out, ack_too))
        })
    }

    /// The steps of C2's claim, read and ack alone.
    pub fn steps(&self) -> u64 {
        Self::solo(true)
    }

    /// The steps of C2's claim and read (killed at this `k`, C2 holds its second delivery
    /// and has not started to ack).
    pub fn steps_until_ack(&self) -> u64 {
        Self::solo(false)
    }

    /// The model (run it inside [`model`]), C2 killed before its `k`-th step.
    pub fn run(&self, k: u64) {
        use std::sync::Arc;
        let hq = Arc::new(Self::new_queue());
        let cast = Self::setup(&hq.shared());
        let h = hq.clone();
        let victim = loom::thread::spawn(move || {
            let q = h.shared();
            let mut out = C2Outcome::default();
            let killed = as_victim(k, || Self::c2_op(&q, &cast.c2, &mut out, true)).is_none();
            let r = shmq::recovery::recover(&q, cast.c2.idx, cast.c2.active, true);
            (killed, out, r)
        });
        let h = hq.clone();
        let live = loom::thread::spawn(move || {
            let q = h.shared();
            let sent = send(&q, &cast.l, msg::LIVE);
            (sent, recv(&q, cast.l.idx).map(|g| g.value))
        });
        let (killed, out, r) = victim.join().unwrap();
        let (sent, live_got) = live.join().unwrap();
        let q = hq.shared();
        let dead_letters = q.ctl.counters.dead_letters.load(Relaxed);
        let ctx = format!(
            "k {k}: C2 killed {killed}, {out:?}, its recovery {r:?}, dead letters \
             {dead_letters}; L sent {sent:?} got {live_got:?}; before the drain: {}",
            dump(&q)
        );
        assert!(sent.is_ok(), "{ctx}");
        assert_eq!(
            live_got,
            Some(msg::LIVE),
            "{ctx}: the other message is stuck"
        );
        assert!(claim_and_read(&q, cast.main.idx).is_none(), "{ctx}");
        // The orphans left, with their delivery counts.
        let mut again = Vec::new();
        while let Some((s, w, n)) = slots::claim_orphan(&q, cast.main.idx, 0, |_, _| false) {
            again.push((read(&q, s), n));
            assert!(slots::ack(&q, s, w).is_some(), "{ctx}");
        }
        if let Some((_, _, n)) = out.claimed {
            assert_eq!(n, 2, "{ctx}: C2's claim is the second delivery");
        }
        if !killed {
            assert!(
                out.claimed.is_some() && matches!(out.acked, Some(Some(_))),
                "{ctx}"
            );
        }
        let acked = u64::from(matches!(out.acked, Some(Some(_))));
        let redelivered = again.iter().filter(|a| a.0 == msg::PRE).count() as u64;
        assert_eq!(
            acked + r.set_aside + redelivered,
            1,
            "{ctx}: 0x01 must end exactly one way (acked, set aside, redelivered once); \
             redelivered {again:?}"
        );
        assert_eq!(
            dead_letters, r.set_aside,
            "{ctx}: dead_letters vs set aside"
        );
        if out.claimed.is_some() {
            assert_eq!(
                redelivered,
                0,
                "{ctx}: delivered a third time with max_deliveries = {}: {again:?}",
                Self::MAX
            );
        }
        for &(v, n) in &again {
            assert_eq!((v, n), (msg::PRE, 2), "{ctx}: redelivered {again:?}");
        }
        assert_eq!(r.discarded + r.kept + r.dropped, 0, "{ctx}");
        assert!(r.released, "{ctx}");
        assert_all_free_in(&q, &ctx);
        assert_exact_capacity(&q, &cast.main, cast.main.idx);
    }
}

/// What the dead participant D left for [`TwoRecoverers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// D claimed and read `0x01`: its slot is HELD (`pos` = the committed position 0).
    Held,
    /// D loaned a slot and wrote `0xD2`, never published (`pos` NONE).
    Loan,
    /// As `Loan`, and its publish was killed right after S4: `pos` = the tail (0), the
    /// cell there still empty.
    LoanAfterPos,
}

/// Two concurrent recoverers beside a live producer (issue 11 defect 5).
///
/// D died before the threads start, leaving [`Left`] in the queue's only slot. Three
/// threads: runners A (the victim) and B both run `recovery::recover` for D; producer P
/// sends `0xB1`, which it can only do once a runner freed the slot (else `NoSlot`). A
/// killed runner owns nothing and B always runs to the end, so after A's death only the
/// next repair pass's `heal_orphan_hint` follows (a killed recovery rerun in sequence is
/// `Victim::Recovery`'s sweep).
///
/// Checks: if P's send commits, `0xB1` is received exactly once (a runner that resets a
/// newer owner's `pos` makes P's committed cell look stale); D's held message is dropped
/// (at-most-once) or orphaned and redelivered exactly once, D's loan discarded and never
/// delivered, and the record released, each exactly once over all runs (at most once
/// where a killed runner's report is lost); no slot leaks; a message still goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TwoRecoverers {
    /// What D left.
    pub left: Left,
    /// Held messages of a dead consumer are dropped (`true`) or redelivered.
    pub at_most_once: bool,
}

#[derive(Debug, Clone, Copy)]
struct RecCast {
    main: Part,
    d: Part,
    p: Part,
}

impl TwoRecoverers {
    fn new_queue(&self) -> HeapQueue {
        // One slot: P can only send once a runner freed D's slot (else `NoSlot`), so every
        // committed send of P reuses the slot the runners are repairing.
        queue(1, 1, self.at_most_once)
    }

    fn setup(&self, q: &Shared<'_>) -> RecCast {
        let cast = RecCast {
            main: register(q, 0, Role::Sender),
            d: register(q, 1, Role::Sender),
            p: register(q, 2, Role::Sender),
        };
        match self.left {
            Left::Held => {
                send(q, &cast.main, msg::PRE).unwrap();
                let g = claim_and_read(q, cast.d.idx).unwrap();
                assert_eq!((g.claimed.slot, g.claimed.pos), (0, 0));
            }
            Left::Loan | Left::LoanAfterPos => {
                let (s, _) = slots::alloc(q, cast.d.idx, 0, |_| true).unwrap();
                assert_eq!(s, 0);
                write(q, s, msg::D_LOAN, cast.d.stamp());
                if self.left == Left::LoanAfterPos {
                    // S4 is the third step of `publish` (tail, cell, pos): killed before
                    // the fourth, the commit.
                    assert!(as_victim(3, || ring::publish(q, s)).is_none());
                    assert_eq!(q.slots[0].pos.load(Relaxed), 0, "S4 not done");
                    assert!(!ring::holds(q, 0, 0), "the commit was done");
                }
            }
        }
        cast
    }

    /// The steps of runner A's recovery alone.
    pub fn steps(&self) -> u64 {
        let this = *self;
        solo_steps(move || {
            let hq = this.new_queue();
            let q = hq.shared();
            let cast = this.setup(&q);
            steps_of(|| {
                shmq::recovery::recover(&q, cast.d.idx, cast.d.active, true);
            })
        })
    }

    /// The model (run it inside [`model`]), runner A killed before its `k`-th step.
    pub fn run(&self, k: u64) {
        use std::sync::Arc;
        let this = *self;
        let hq = Arc::new(this.new_queue());
        let cast = this.setup(&hq.shared());
        let h = hq.clone();
        let a = loom::thread::spawn(move || {
            let q = h.shared();
            as_victim(k, || {
                shmq::recovery::recover(&q, cast.d.idx, cast.d.active, true)
            })
        });
        let h = hq.clone();
        let b = loom::thread::spawn(move || {
            let q = h.shared();
            shmq::recovery::recover(&q, cast.d.idx, cast.d.active, true)
        });
        let h = hq.clone();
        let producer = loom::thread::spawn(move || send(&h.shared(), &cast.p, msg::LIVE));
        let ra = a.join().unwrap();
        let rb = b.join().unwrap();
        let sent = producer.join().unwrap();
        let q = hq.shared();
        let killed = ra.is_none();
        let reports: Vec<_> = ra.into_iter().chain([rb]).collect();
        let t = total(&reports);
        let released = reports.iter().filter(|r| r.released).count() as u64;
        let ctx = format!(
            "{this:?}, k {k}: A {ra:?} (None: killed), B {rb:?}, P's send \
             {sent:?}; before the drain: {}",
            dump(&q)
        );
        assert!(
            matches!(sent, Ok(_) | Err(SendFail::NoSlot)),
            "{ctx}: P's send failed"
        );
        if killed {
            // The next repair pass: A killed between V2a's CAS and its raise of the
            // orphans hint leaves the hint low (B's run found the slot ORPHAN already).
            shmq::recovery::heal_orphan_hint(&q);
        }
        let got = drain(&q, cast.main.idx);
        let n = |v: u8| times(&got, v) as u64;
        assert_eq!(
            n(msg::LIVE),
            u64::from(sent.is_ok()),
            "{ctx}: P's committed message was received {} times: {got:?}; now {}",
            n(msg::LIVE),
            dump(&q)
        );
        assert_all_free_in(&q, &ctx);
        // Exactly once over all runs, or at most once where A's report died with it.
        let once = |what: &str, count: u64| {
            if killed {
                assert!(count <= 1, "{ctx}: {what} {count} times");
            } else {
                assert_eq!(count, 1, "{ctx}: {what} {count} times");
            }
        };
        once("released D's record", released);
        assert_ne!(
            q.parts[cast.d.idx as usize].state.load(Relaxed),
            cast.d.active
        );
        match self.left {
            Left::Held if self.at_most_once => {
                once("dropped D's held message", t.dropped);
                assert_eq!(n(msg::PRE), 0, "{ctx}: a dropped message was delivered");
                assert_eq!(t.orphaned + t.discarded + t.kept + t.set_aside, 0, "{ctx}");
            }
            Left::Held => {
                once("orphaned D's held message", t.orphaned);
                assert_eq!(n(msg::PRE), 1, "{ctx}: D's held message: {got:?}");
                assert_eq!(t.dropped + t.discarded + t.kept + t.set_aside, 0, "{ctx}");
            }
            Left::Loan | Left::LoanAfterPos => {
                once("discarded D's loan", t.discarded);
                assert_eq!(n(msg::D_LOAN), 0, "{ctx}: D's unsent loan was delivered");
                assert_eq!(t.orphaned + t.dropped + t.set_aside, 0, "{ctx}");
                // A runner may report `kept` for a slot it changed nothing of: after its
                // re-read of D's word, the other runner freed the slot and P committed it
                // at the very position D had left open, so V1a's check sees P's message.
                // Only with `pos` stored by D (S4), and only a statistic.
                let spurious = u64::from(self.left == Left::LoanAfterPos);
                assert!(t.kept <= spurious, "{ctx}: kept {} times", t.kept);
            }
        }
        assert_eq!(
            got.len() as u64,
            n(msg::LIVE) + n(msg::PRE),
            "{ctx}: {got:?}"
        );
        // The ring still works (the exact-capacity check needs a slot more than the
        // capacity): one more message goes through, and every slot is FREE after.
        assert!(send(&q, &cast.main, 0xC0).is_ok(), "{ctx}: a cell is stuck");
        let after = recv(&q, cast.main.idx).map(|g| g.value);
        assert_eq!(after, Some(0xC0), "{ctx}");
        assert!(claim_and_read(&q, cast.main.idx).is_none(), "{ctx}");
        assert_all_free(&q);
    }
}

// ---------------------------------------------------------------------------------------
// A futex made of loom primitives

/// A futex for the models: `wait` checks the word under a loom mutex and sleeps on a
/// condvar; `wake_all` / `wake_one` take the mutex, then notify everyone / one sleeper. Because the waker changes
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

    fn wake_one(&self, _word: &AtomicU32) {
        let _g = self.lock.lock().unwrap();
        self.cv.notify_one();
    }
}

/// The payload size the models use fits inline.
const _: () = assert!(INLINE_BYTES >= 1);

/// A receiver's reset of a stale `orphans` hint beside an orphaning and another claimer's
/// decrement (issue 12: the hint's ABA).
///
/// Before the threads start: X holds `0x01` (slot 0); B holds `0x02` (slot 1) and the
/// hint's count is 1, the state of a claimer B that took an orphan (O1) and has not yet
/// lowered the hint (O3). Threads: A looks for an orphan from slot 0 (`claim_orphan`:
/// finding none, it resets the hint); X gives its message up (ORPHAN, then the raise); B
/// lowers the hint and acks. Loom found (with the version bumped by raises only): A loads
/// the hint (count 1: B's claim), scans while X and B still hold their slots, finds
/// nothing and resets the count to 0; X orphans slot 0 and raises the count to 1; B's
/// decrement for its earlier claim takes it back to 0: X's orphan is hidden until the
/// next repair pass. Without any version, the ABA (a raise and a decrement between A's
/// load and its reset) hides it the same way.
///
/// Checks: no ORPHAN slot is left with the hint's count at 0; `0x01` is received exactly
/// once (by A or by the drain after), `0x02` acked by B; every slot FREE at the end.
pub fn orphan_hint_reset_beside_a_raise() {
    use shmq::layout::hint_count;
    use std::sync::Arc;
    let hq = Arc::new(queue(2, 2, false));
    let (tx, x, b, a, main) = {
        let q = hq.shared();
        (
            register(&q, 1, Role::Sender),
            register(&q, 2, Role::Receiver),
            register(&q, 3, Role::Receiver),
            register(&q, 4, Role::Receiver),
            register(&q, 5, Role::Receiver),
        )
    };
    let (gx, gb, b_seen) = {
        let q = hq.shared();
        send(&q, &tx, 0x01).expect("send 0x01");
        send(&q, &tx, 0x02).expect("send 0x02");
        let gx = claim_and_read(&q, x.idx).expect("X claims 0x01");
        let gb = claim_and_read(&q, b.idx).expect("B claims 0x02");
        assert_eq!((gx.value, gb.value), (0x01, 0x02));
        slots::raise_orphan_hint(&q, 1); // B's claim before its O3
                                         // What B read of the hint before its claim (O1).
        let seen = q.ctl.counters.orphans.load(Relaxed);
        (gx, gb, seen)
    };
    let hx = hq.clone();
    let tx_ = loom::thread::spawn(move || {
        let q = hx.shared();
        let r = slots::give_up(&q, gx.claimed.slot, gx.claimed.word, true);
        assert_eq!(r, slots::GaveUp::Orphaned);
    });
    let hb = hq.clone();
    let tb = loom::thread::spawn(move || {
        let q = hb.shared();
        slots::lower_orphan_hint(&q, b_seen);
        ack(&q, &gb);
    });
    let a_got = {
        let q = hq.shared();
        slots::claim_orphan(&q, a.idx, 0, |_, _| false).map(|(s, w, _)| {
            let v = read(&q, s);
            assert!(slots::ack(&q, s, w).is_some(), "A's ack failed");
            v
        })
    };
    tx_.join().unwrap();
    tb.join().unwrap();
    let q = hq.shared();
    let orphans = slots::census(&q)[SlotState::Orphan as usize];
    let h = q.ctl.counters.orphans.load(Relaxed);
    assert!(
        orphans == 0 || hint_count(h) > 0,
        "{orphans} ORPHAN slot(s) left with the hint's count at 0 (hint word {h:#x}, A got \
         {a_got:?}): hidden until the next repair pass; now {}",
        dump(&q)
    );
    let mut drained = Vec::new();
    while let Some(g) = claim_orphan_and_read(&q, main.idx) {
        ack(&q, &g);
        drained.push(g.value);
    }
    let n01 = usize::from(a_got == Some(0x01)) + drained.iter().filter(|&&v| v == 0x01).count();
    assert_eq!(
        n01, 1,
        "0x01 received {n01} times (A {a_got:?}, drain {drained:?})"
    );
    assert!(a_got.is_none() || a_got == Some(0x01), "A got {a_got:?}");
    assert_all_free(&q);
}

//! The eventcount of `wait/mod.rs` (`block_on` / `notify`) over a futex made of loom
//! primitives ([`LoomFutex`]): no lost wake-up, timeouts end the wait, and negative
//! controls showing that the waker's fence and the waiter's bit are both needed.
//!
//! Only the first bitmap word is passed (`&waiters[..1]`), as the process side passes
//! only the words that cover `max_participants` (`queue.rs`, `bitmap`): the models have
//! fewer than 64 participants.
#![cfg(shmq_loom)]

use loom::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};
use shmq::layout::{HeapQueue, Role};
use shmq::sync::AtomicU32;
use shmq::wait::{self, Futex, Wait};
use shmq_loom_tests::{
    ack, assert_all_free, claim_and_read, model, model_failure, queue, register, send, Got,
    LoomFutex, Part,
};
use std::sync::Arc;
use std::time::Duration;

struct World {
    hq: HeapQueue,
    futex: LoomFutex,
}

fn world() -> Arc<World> {
    Arc::new(World {
        hq: queue(1, 2, false),
        futex: LoomFutex::new(),
    })
}

/// The poll of a waiting consumer, which also starts the producer (`0x42`, then
/// `waker`) at the end of its `SPIN_ROUNDS + YIELD_ROUNDS`-th call: the last poll of
/// `block_on`'s spin-and-yield phase, right before its last yield.
///
/// Why so late: loom's `yield_now` (our `spin_hint`) assumes fairness: a yielding thread
/// lets the others run, and after a yield its loads may not return again a value it saw
/// before the yield if a newer one exists. A producer started together with the waiter
/// therefore gets through its send during the 32 spin and yield rounds unless it is preempted at
/// every one of them, and at preemption bound 2 the waiter never reaches the bit, the
/// fence and the sleep: the eventcount is not exercised at all (5 executions, and both
/// negative controls pass). Even a spawn at the *start* of the last poll is too early
/// (the producer then runs during that poll and its yield). Starting the producer at the
/// end of the spin models a producer that comes late; what the eventcount must order
/// (the waiter's bit against the commit, its cell load against the waker's bit load)
/// stays unordered: the spawn orders only the spin polls before the producer.
/// The polls `block_on_counted` makes before it sets the waiter's bit.
const PRE_SLEEP_POLLS: usize = (wait::SPIN_ROUNDS + wait::YIELD_ROUNDS) as usize;
const _: () = assert!(
    PRE_SLEEP_POLLS >= 1,
    "the model needs one poll before the bit"
);

struct LatePoll<N> {
    world: Arc<World>,
    tx: Part,
    me: u16,
    waker: N,
    calls: usize,
    producer: Option<loom::thread::JoinHandle<()>>,
}

impl<N: Fn(&World) + Send + Copy + 'static> LatePoll<N> {
    fn poll(&mut self) -> Option<Got> {
        self.calls += 1;
        let r = claim_and_read(&self.world.hq.shared(), self.me);
        if self.calls == PRE_SLEEP_POLLS {
            let (w, tx, waker) = (self.world.clone(), self.tx, self.waker);
            self.producer = Some(loom::thread::spawn(move || {
                let q = w.hq.shared();
                send(&q, &tx, 0x42).expect("an empty queue refused a message");
                waker(&w);
            }));
        }
        r
    }
}

/// A consumer that blocks for a message with `waiter` while a producer sends `0x42` and
/// wakes `not_empty` with `waker`: the consumer must get it (a lost wake-up leaves it
/// asleep forever, which loom reports as a deadlock). The body of a model.
fn producer_wakes_blocked_consumer<W, N>(waiter: W, waker: N)
where
    W: Fn(&World, u16, &mut dyn FnMut() -> Option<Got>) -> Wait<Got> + Sync + Send + Copy + 'static,
    N: Fn(&World) + Sync + Send + Copy + 'static,
{
    {
        let w = world();
        let (tx, rx) = {
            let q = w.hq.shared();
            (
                register(&q, 1, Role::Sender),
                register(&q, 2, Role::Receiver),
            )
        };
        let mut late = LatePoll {
            world: w.clone(),
            tx,
            me: rx.idx,
            waker,
            calls: 0,
            producer: None,
        };
        let got = waiter(&w, rx.idx, &mut || late.poll());
        late.producer
            .take()
            .expect("producer started")
            .join()
            .unwrap();
        let q = w.hq.shared();
        match got {
            Wait::Ready(g) => {
                assert_eq!(g.value, 0x42);
                ack(&q, &g);
            }
            Wait::TimedOut => panic!("a wait without a deadline timed out"),
        }
        assert_eq!(
            q.ctl.not_empty_waiters[0].load(Relaxed),
            0,
            "a waiter bit was left set"
        );
        assert_all_free(&q);
    }
}

/// `block_on` as `Receiver::recv` uses it, with no deadline.
fn real_waiter(w: &World, me: u16, poll: &mut dyn FnMut() -> Option<Got>) -> Wait<Got> {
    let q = w.hq.shared();
    wait::block_on(
        &w.futex,
        &q.ctl.not_empty,
        &q.ctl.not_empty_waiters[..1],
        me,
        poll,
        || Some(None),
    )
}

fn real_waker(w: &World) {
    let q = w.hq.shared();
    wait::notify(&w.futex, &q.ctl.not_empty, &q.ctl.not_empty_waiters[..1]);
}

#[test]
fn a_consumer_blocked_on_an_empty_queue_is_woken_by_the_next_send() {
    model(|| producer_wakes_blocked_consumer(real_waiter, real_waker));
}

#[test]
fn a_wait_whose_time_is_up_ends_with_timed_out_and_loses_no_message() {
    // `remaining` grants one (timed) sleep, then says the time is up; the producer comes
    // at the end of the spin (see `LatePoll`) and may be anywhere when the time is up:
    // the consumer gets the message or times out, and in the second case the message is
    // still in the queue.
    model(|| {
        let w = world();
        let (tx, rx) = {
            let q = w.hq.shared();
            (
                register(&q, 1, Role::Sender),
                register(&q, 2, Role::Receiver),
            )
        };
        let mut late = LatePoll {
            world: w.clone(),
            tx,
            me: rx.idx,
            waker: real_waker,
            calls: 0,
            producer: None,
        };
        let q = w.hq.shared();
        let mut asked = 0;
        let r = wait::block_on(
            &w.futex,
            &q.ctl.not_empty,
            &q.ctl.not_empty_waiters[..1],
            rx.idx,
            || late.poll(),
            || {
                asked += 1;
                (asked == 1).then_some(Some(Duration::from_millis(1)))
            },
        );
        late.producer
            .take()
            .expect("producer started")
            .join()
            .unwrap();
        let left = match r {
            Wait::Ready(g) => {
                assert_eq!(g.value, 0x42);
                ack(&q, &g);
                None
            }
            Wait::TimedOut => {
                assert_eq!(asked, 2, "timed out before the time was up");
                claim_and_read(&q, rx.idx)
            }
        };
        if let Some(g) = left {
            assert_eq!(g.value, 0x42, "the message of a timed-out wait was lost");
            ack(&q, &g);
        }
        assert!(claim_and_read(&q, rx.idx).is_none());
        assert_eq!(
            q.ctl.not_empty_waiters[0].load(Relaxed),
            0,
            "a waiter bit was left set"
        );
        assert_all_free(&q);
    });
}

#[test]
fn a_wait_on_a_queue_that_stays_empty_times_out() {
    model(|| {
        let w = world();
        let q = w.hq.shared();
        let rx = register(&q, 2, Role::Receiver);
        let mut asked = 0;
        let r = wait::block_on(
            &w.futex,
            &q.ctl.not_empty,
            &q.ctl.not_empty_waiters[..1],
            rx.idx,
            || claim_and_read(&q, rx.idx),
            || {
                asked += 1;
                (asked == 1).then_some(Some(Duration::from_millis(1)))
            },
        );
        assert!(matches!(r, Wait::TimedOut));
        assert_eq!(asked, 2);
        assert_eq!(q.ctl.not_empty_waiters[0].load(Relaxed), 0);
    });
}

// ---- negative controls -----------------------------------------------------------------

/// `wait::notify` without its SeqCst fence (`notify_fenced` is exactly the rest).
fn waker_without_fence(w: &World) {
    let q = w.hq.shared();
    wait::notify_fenced(
        &w.futex,
        &q.ctl.not_empty,
        &q.ctl.not_empty_waiters[..1],
        false,
    );
}

/// `wait::block_on_counted` with the same spin-and-yield, fence, sequence load, poll and
/// sleep, but without setting (or clearing) the waiter's bit.
fn waiter_without_bit(w: &World, _me: u16, poll: &mut dyn FnMut() -> Option<Got>) -> Wait<Got> {
    let q = w.hq.shared();
    let seq: &AtomicU32 = &q.ctl.not_empty;
    for _ in 0..PRE_SLEEP_POLLS {
        if let Some(g) = poll() {
            return Wait::Ready(g);
        }
        shmq::sync::spin_hint();
    }
    loop {
        shmq::sync::fence(SeqCst);
        let s = seq.load(Acquire);
        if let Some(g) = poll() {
            return Wait::Ready(g);
        }
        w.futex.wait(seq, s, None);
    }
}

fn assert_fails(what: &str, f: impl Fn() + Sync + Send + 'static) {
    match model_failure(f) {
        Some(why) => eprintln!("{what}: failed as it must: {why}"),
        None => panic!("{what}: the model PASSED: the rule is not shown to be needed"),
    }
}

#[test]
fn a_waker_without_the_fence_loses_a_wake_up() {
    assert_fails("waker without fence", || {
        producer_wakes_blocked_consumer(real_waiter, waker_without_fence)
    });
}

#[test]
fn a_waiter_that_does_not_set_its_bit_is_never_woken() {
    assert_fails("waiter without bit", || {
        producer_wakes_blocked_consumer(waiter_without_bit, real_waker)
    });
}

/// How the two blocked consumers of [`two_blocked_consumers`] wait.
#[derive(Clone, Copy, PartialEq)]
enum Pair {
    /// Two participants (two processes, or two handles), each with its own bit.
    TwoParticipants,
    /// Two threads of one process on one participant's bit, counted under the shared
    /// `LocalMutex` (`block_on_counted`, as two threads in `Receiver::recv` on one handle).
    OneParticipant,
    /// As `OneParticipant`, with the count kept lock-free (count, then bit), as an earlier
    /// version of `block_on_counted` did: a negative control.
    OneParticipantLockFree,
}

/// The lock-free count of the negative control: the first thread in sets the bit; the
/// last one out clears it and sets it again if it then sees a newcomer's count.
fn waiter_with_lock_free_count(
    w: &World,
    me: u16,
    count: &loom::sync::atomic::AtomicU32,
    poll: &mut dyn FnMut() -> Option<Got>,
) -> Wait<Got> {
    let q = w.hq.shared();
    let (seq, word, bit) = (&q.ctl.not_empty, &q.ctl.not_empty_waiters[0], 1u64 << me);
    for _ in 0..PRE_SLEEP_POLLS {
        if let Some(g) = poll() {
            return Wait::Ready(g);
        }
        shmq::sync::spin_hint();
    }
    if count.fetch_add(1, SeqCst) == 0 {
        word.fetch_or(bit, SeqCst);
    }
    let got = loop {
        shmq::sync::fence(SeqCst);
        let s = seq.load(Acquire);
        if let Some(g) = poll() {
            break g;
        }
        w.futex.wait(seq, s, None);
    };
    if count.fetch_sub(1, SeqCst) == 1 {
        word.fetch_and(!bit, SeqCst);
        if count.load(SeqCst) != 0 {
            word.fetch_or(bit, SeqCst);
        }
    }
    Wait::Ready(got)
}

/// Two consumers block on an empty queue; the one that finishes its pre-sleep polls
/// second starts the producer (see `LatePoll` for why so late), which sends two messages,
/// each followed by `notify`. Each consumer must get one: a wake-up spent on a consumer
/// that then finds nothing, or skipped because no bit was set at that moment, with the
/// other left asleep beside a message, would be a deadlock. The body of a model.
fn two_blocked_consumers(pair: Pair) {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst as StdSeqCst};
    use std::sync::Mutex;
    struct Gate {
        spun: AtomicUsize,
        producer: Mutex<Option<loom::thread::JoinHandle<()>>>,
        // The one participant's thread count (`OneParticipant*`).
        local: shmq::sync::LocalMutex<u32>,
        lock_free: loom::sync::atomic::AtomicU32,
    }
    fn consumer(w: Arc<World>, tx: Part, me: u16, gate: Arc<Gate>, pair: Pair) -> u8 {
        let q = w.hq.shared();
        let mut calls = 0;
        let mut poll = || {
            calls += 1;
            let r = claim_and_read(&q, me);
            if calls == PRE_SLEEP_POLLS && gate.spun.fetch_add(1, StdSeqCst) == 1 {
                let w2 = w.clone();
                let p = loom::thread::spawn(move || {
                    let q = w2.hq.shared();
                    for v in [0x41, 0x42] {
                        send(&q, &tx, v).expect("capacity 2 refused a message");
                        real_waker(&w2);
                    }
                });
                *gate.producer.lock().unwrap() = Some(p);
            }
            r
        };
        let (seq, waiters) = (&q.ctl.not_empty, &q.ctl.not_empty_waiters[..1]);
        let r = match pair {
            Pair::TwoParticipants => {
                wait::block_on(&w.futex, seq, waiters, me, &mut poll, || Some(None))
            }
            Pair::OneParticipant => {
                wait::block_on_counted(&w.futex, seq, waiters, me, &gate.local, &mut poll, || {
                    Some(None)
                })
            }
            Pair::OneParticipantLockFree => {
                waiter_with_lock_free_count(&w, me, &gate.lock_free, &mut poll)
            }
        };
        match r {
            Wait::Ready(g) => {
                ack(&q, &g);
                g.value
            }
            Wait::TimedOut => panic!("a wait without a deadline timed out"),
        }
    }
    let w = Arc::new(World {
        hq: queue(2, 4, false),
        futex: LoomFutex::new(),
    });
    let (tx, c1, c2) = {
        let q = w.hq.shared();
        (
            register(&q, 1, Role::Sender),
            register(&q, 2, Role::Receiver),
            register(&q, 3, Role::Receiver),
        )
    };
    let other_idx = if pair == Pair::TwoParticipants {
        c2.idx
    } else {
        c1.idx
    };
    let gate = Arc::new(Gate {
        spun: AtomicUsize::new(0),
        producer: Mutex::new(None),
        local: shmq::sync::LocalMutex::new(0),
        lock_free: loom::sync::atomic::AtomicU32::new(0),
    });
    let (w2, g2) = (w.clone(), gate.clone());
    let other = loom::thread::spawn(move || consumer(w2, tx, other_idx, g2, pair));
    let a = consumer(w.clone(), tx, c1.idx, gate.clone(), pair);
    let b = other.join().unwrap();
    let p = gate.producer.lock().unwrap().take();
    p.expect("producer started").join().unwrap();
    let mut got = [a, b];
    got.sort();
    assert_eq!(got, [0x41, 0x42]);
    let q = w.hq.shared();
    assert_eq!(
        q.ctl.not_empty_waiters[0].load(Relaxed),
        0,
        "a waiter bit was left set"
    );
    assert_eq!(*gate.local.lock().unwrap(), 0, "a thread is still counted");
    assert_all_free(&q);
}

#[test]
fn two_blocked_consumers_are_each_woken_by_one_of_two_sends() {
    model(|| two_blocked_consumers(Pair::TwoParticipants));
}

#[test]
fn two_threads_blocked_on_one_participant_are_each_woken_by_one_of_two_sends() {
    model(|| two_blocked_consumers(Pair::OneParticipant));
}

#[test]
fn two_threads_on_one_participant_counted_lock_free_lose_a_wake_up() {
    assert_fails("lock-free count", || {
        two_blocked_consumers(Pair::OneParticipantLockFree)
    });
}

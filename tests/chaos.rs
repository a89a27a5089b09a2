//! Chaos: 3 producer processes and 3 consumer processes share a queue (at-least-once,
//! and again at-most-once) while the test
//! SIGKILLs (and sometimes SIGSTOPs for a moment) random ones and restarts them; a
//! quarter of the incarnations also carry a random fault-injection point
//! (`SHMQ_CRASH_AT` / `SHMQ_CRASH_SKIP`) so they die inside the protocol's windows on
//! their own. Randomness is seeded; the seed is printed (`SHMQ_CHAOS_SEED=<n>` replays
//! the same choices, though not the same timing). The run lasts `SHMQ_CHAOS_SECS`
//! seconds (default 6) and then drains.
//!
//! Accounting at the end, over every incarnation's reports:
//!
//! * every message whose `send` returned `Ok` (reported before the next send) was
//!   received at least once, with an intact payload (at-most-once: except at most one per
//!   killed consumer incarnation, and nothing is ever received twice or marked
//!   redelivered);
//! * no message was received that its producer never attempted: a producer incarnation
//!   that reported `n` sends can have seq `n` delivered (committed, then killed before
//!   reporting) only if it was killed, and nothing beyond;
//! * a message received `k > 1` times has at most one copy not marked `is_redelivery()`,
//!   and at least `k - 1` of its copies went to consumer incarnations that were killed;
//! * afterwards every slot is free, capacity is exact, no dead participant is left, and
//!   `/dev/shm` holds nothing of the queue once every handle is dropped.

mod crash_support;

use crash_support::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shmq::{Builder, Delivery, Sender, Supervision};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

const PRODUCERS: usize = 3;
const CONSUMERS: usize = 3;
const CAP: usize = 8;
const SLOTS: usize = 2 * CAP + 16;

fn chaos_secs() -> u64 {
    std::env::var("SHMQ_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6)
}

fn random_supervision(rng: &mut StdRng) -> Supervision {
    if rng.gen_bool(0.3) {
        Supervision::Manual
    } else {
        Supervision::Thread
    }
}

/// A producer incarnation: sends seqs 0, 1, … of producer `SHMQ_T_ID` by a random mix of
/// `send`, `try_send` (retried), `loan` and `send_timeout` (retried), reporting each `Ok`
/// before the next send, until the stop file exists.
fn chaos_producer() -> ! {
    let id = param_u64("SHMQ_T_ID");
    let mut rng = StdRng::seed_from_u64(param_u64("SHMQ_T_SEED"));
    let stop = std::path::PathBuf::from(param("SHMQ_T_STOP"));
    let mut log = Report::open(Path::new(&param("SHMQ_T_LOG")));
    let tx = Builder::new()
        .name(queue_name())
        .supervision(random_supervision(&mut rng))
        .open_sender()
        .unwrap_or_else(|e| panic!("producer {id}: open: {e}"));
    let mut seq = 0u64;
    while !stop.exists() {
        let len = mixed_size(id, seq);
        let r = match rng.gen_range(0..4) {
            0 => tx.send(&payload(id, seq, len)),
            1 => loop {
                match tx.try_send(&payload(id, seq, len)) {
                    Err(shmq::TrySendError::Full) => {
                        std::thread::sleep(Duration::from_micros(rng.gen_range(20..300)))
                    }
                    Err(shmq::TrySendError::Disconnected) => {
                        break Err(shmq::SendError::Disconnected)
                    }
                    Err(e) => panic!("producer {id}: try_send: {e}"),
                    Ok(()) => break Ok(()),
                }
            },
            2 => tx.loan(len).and_then(|mut l| {
                fill_payload(&mut l[..], id, seq);
                l.send().map_err(|u| u.error)
            }),
            _ => loop {
                match tx.send_timeout(&payload(id, seq, len), Duration::from_millis(20)) {
                    Err(shmq::SendTimeoutError::Timeout) => {}
                    Err(shmq::SendTimeoutError::Disconnected) => {
                        break Err(shmq::SendError::Disconnected)
                    }
                    Err(e) => panic!("producer {id}: send_timeout: {e}"),
                    Ok(()) => break Ok(()),
                }
            },
        };
        match r {
            Ok(()) => log.line(&format!("{seq}\n")),
            // The parent keeps a receiver attached all along.
            Err(e) => panic!("producer {id}: send of seq {seq}: {e}"),
        }
        seq += 1;
        if rng.gen_bool(0.05) {
            std::thread::sleep(Duration::from_micros(rng.gen_range(0..500)));
        }
    }
    drop(tx);
    child_exit()
}

/// A consumer incarnation: receives by a random mix of `recv`, `recv_timeout` and
/// `try_recv`, reports each message (checked) before acking it, sometimes holds it a
/// little first; exits on `Disconnected`.
fn chaos_consumer() -> ! {
    let mut rng = StdRng::seed_from_u64(param_u64("SHMQ_T_SEED"));
    let mut log = Report::open(Path::new(&param("SHMQ_T_LOG")));
    let rx = Builder::new()
        .name(queue_name())
        .supervision(random_supervision(&mut rng))
        .open_receiver()
        .unwrap_or_else(|e| panic!("consumer: open: {e}"));
    loop {
        let m = match rng.gen_range(0..3) {
            0 => match rx.recv() {
                Ok(m) => m,
                Err(shmq::RecvError::Disconnected) => break,
                Err(e) => panic!("consumer: recv: {e}"),
            },
            1 => match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(m) => m,
                Err(shmq::RecvTimeoutError::Timeout) => continue,
                Err(shmq::RecvTimeoutError::Disconnected) => break,
                Err(e) => panic!("consumer: recv_timeout: {e}"),
            },
            _ => match rx.try_recv() {
                Ok(m) => m,
                Err(shmq::TryRecvError::Empty) => {
                    std::thread::sleep(Duration::from_micros(100));
                    continue;
                }
                Err(shmq::TryRecvError::Disconnected) => break,
                Err(e) => panic!("consumer: try_recv: {e}"),
            },
        };
        log.line(&report_line(&m));
        if rng.gen_bool(0.1) {
            std::thread::sleep(Duration::from_micros(rng.gen_range(0..2000)));
        }
        drop(m);
    }
    drop(rx);
    child_exit()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Producer,
    Consumer,
}

/// One incarnation of a producer or consumer slot.
struct Life {
    kind: Kind,
    label: String,
    /// Producer id (producers only).
    id: u64,
    log: std::path::PathBuf,
    crash: Option<(&'static str, u64)>,
    status: Option<ExitStatus>,
    /// Killed by the test (as opposed to by its own crash point).
    killed_by_us: bool,
}

impl Life {
    fn died(&self) -> bool {
        self.status.and_then(|s| s.signal()) == Some(libc::SIGKILL)
    }
}

struct Chaos<'a> {
    test: &'static str,
    rng: StdRng,
    name: &'a str,
    dir: &'a LogDir,
    lives: Vec<Life>,
    /// The running incarnation of each slot: (index into `lives`, process).
    slots: Vec<Option<(usize, Proc)>>,
    failures: Vec<String>,
    stop_path: String,
}

impl Chaos<'_> {
    fn kind_of(slot: usize) -> Kind {
        if slot < PRODUCERS {
            Kind::Producer
        } else {
            Kind::Consumer
        }
    }

    /// Starts a new incarnation in `slot`, with a random crash point if `faults`.
    fn start(&mut self, slot: usize, faults: bool) {
        let kind = Self::kind_of(slot);
        let n = self.lives.len();
        let label = match kind {
            Kind::Producer => format!("p{slot}.{n}"),
            Kind::Consumer => format!("c{}.{n}", slot - PRODUCERS),
        };
        let id = (slot as u64 + 1) * 1_000_000 + n as u64;
        let log = self.dir.file(&label);
        let crash = (faults && self.rng.gen_bool(0.25)).then(|| {
            let points = shmq::fault::POINTS;
            (
                points[self.rng.gen_range(0..points.len())].0,
                self.rng.gen_range(0..40u64),
            )
        });
        let mut env: Vec<(&'static str, String)> = vec![
            (NAME_VAR, self.name.to_string()),
            ("SHMQ_T_ID", id.to_string()),
            ("SHMQ_T_SEED", self.rng.gen::<u64>().to_string()),
            ("SHMQ_T_LOG", log.to_string_lossy().into_owned()),
            ("SHMQ_T_STOP", self.stop_path.clone()),
            (CHILD_LIFETIME_VAR, (chaos_secs() + 150).to_string()),
        ];
        if let Some((p, s)) = crash {
            env.push(("SHMQ_CRASH_AT", p.to_string()));
            env.push(("SHMQ_CRASH_SKIP", s.to_string()));
        }
        let role = match kind {
            Kind::Producer => "chaos-producer",
            Kind::Consumer => "chaos-consumer",
        };
        let proc = Proc::spawn_test(self.test, &label, role, &env);
        self.lives.push(Life {
            kind,
            label,
            id,
            log,
            crash,
            status: None,
            killed_by_us: false,
        });
        self.slots[slot] = Some((n, proc));
    }

    /// Records how the incarnation in `slot` ended (it has been reaped); `expect_exit`
    /// says whether a clean exit is expected now.
    fn ended(&mut self, slot: usize, st: ExitStatus, expect_exit: bool) {
        let (i, _) = self.slots[slot].take().unwrap();
        let life = &mut self.lives[i];
        life.status = Some(st);
        let ok = match (st.code(), st.signal()) {
            (_, Some(s)) if s == libc::SIGKILL => true,
            (Some(0), _) => expect_exit,
            _ => false,
        };
        if !ok {
            self.failures.push(format!(
                "{} (crash point {:?}) {} unexpectedly (its stderr is above)",
                life.label,
                life.crash,
                describe(&st)
            ));
        }
    }

    /// Reaps incarnations that ended on their own; returns their slots and lives.
    fn reap_exited(&mut self, expect_exit: bool) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for slot in 0..self.slots.len() {
            let st = match &mut self.slots[slot] {
                Some((i, p)) => p.try_wait().map(|st| (*i, st)),
                None => None,
            };
            if let Some((i, st)) = st {
                self.ended(slot, st, expect_exit);
                out.push((slot, i));
            }
        }
        out
    }

    fn kill(&mut self, slot: usize) {
        if let Some((i, p)) = &mut self.slots[slot] {
            p.kill();
            let st = p.wait();
            self.lives[*i].killed_by_us = true;
            self.ended(slot, st, false);
        }
    }
}

fn child(role: &str) -> ! {
    match role {
        "chaos-producer" => chaos_producer(),
        "chaos-consumer" => chaos_consumer(),
        r => panic!("unknown role {r}"),
    }
}

#[test]
fn random_sigkills_and_restarts_lose_nothing_acknowledged() {
    if let Some(r) = role() {
        child(&r)
    }
    chaos(
        "random_sigkills_and_restarts_lose_nothing_acknowledged",
        Delivery::AtLeastOnce,
    );
}

#[test]
fn at_most_once_random_sigkills_lose_only_messages_held_by_killed_consumers() {
    if let Some(r) = role() {
        child(&r)
    }
    chaos(
        "at_most_once_random_sigkills_lose_only_messages_held_by_killed_consumers",
        Delivery::AtMostOnce,
    );
}

fn chaos(test: &'static str, delivery: Delivery) {
    let secs = chaos_secs();
    let _wd = Watchdog::new(test, secs + 180);
    let seed: u64 = std::env::var("SHMQ_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!(
        "chaos ({delivery:?}): seed {seed} (replay its choices with SHMQ_CHAOS_SEED={seed}), {secs} s (SHMQ_CHAOS_SECS)"
    );
    let g = ShmGuard::new("chaos");
    let dir = LogDir::new(&g.name);
    let (tx, rx) = Builder::new()
        .name(&g.name)
        .capacity(CAP)
        .delivery(delivery)
        .create()
        .unwrap();
    let mut c = Chaos {
        test,
        rng: StdRng::seed_from_u64(seed),
        name: &g.name,
        dir: &dir,
        lives: Vec::new(),
        slots: (0..PRODUCERS + CONSUMERS).map(|_| None).collect(),
        failures: Vec::new(),
        stop_path: dir.file_str("stop"),
    };
    for slot in 0..PRODUCERS + CONSUMERS {
        c.start(slot, true);
    }

    // Chaos phase.
    let t0 = Instant::now();
    let mut next = t0 + Duration::from_millis(c.rng.gen_range(20..150));
    let mut stopped: Vec<(usize, Instant)> = Vec::new(); // (slot, when to continue)
    let (mut kills, mut pauses) = (0, 0);
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(3));
        for (slot, _) in c.reap_exited(false) {
            stopped.retain(|s| s.0 != slot);
            c.start(slot, true);
        }
        let now = Instant::now();
        stopped.retain(|&(slot, until)| {
            if now >= until {
                if let Some((_, p)) = &c.slots[slot] {
                    p.signal(libc::SIGCONT);
                }
                false
            } else {
                true
            }
        });
        if now >= next {
            next = now + Duration::from_millis(c.rng.gen_range(20..150));
            let slot = c.rng.gen_range(0..PRODUCERS + CONSUMERS);
            if c.rng.gen_bool(0.15) {
                if let Some((_, p)) = &c.slots[slot] {
                    if !stopped.iter().any(|s| s.0 == slot) {
                        p.signal(libc::SIGSTOP);
                        stopped.push((slot, now + Duration::from_millis(c.rng.gen_range(20..300))));
                        pauses += 1;
                    }
                }
            } else {
                stopped.retain(|s| s.0 != slot);
                c.kill(slot);
                kills += 1;
                c.start(slot, true);
            }
        }
    }
    for (slot, _) in stopped.drain(..) {
        if let Some((_, p)) = &c.slots[slot] {
            p.signal(libc::SIGCONT);
        }
    }

    // Drain phase: producers stop; killed consumers are restarted (without faults) until
    // every consumer has seen Disconnected.
    dir.touch("stop");
    while (0..PRODUCERS).any(|s| c.slots[s].is_some()) {
        std::thread::sleep(Duration::from_millis(2));
        for (slot, _) in c.reap_exited(true) {
            if slot >= PRODUCERS {
                c.start(slot, false);
            }
        }
    }
    drop(tx);
    while (PRODUCERS..PRODUCERS + CONSUMERS).any(|s| c.slots[s].is_some()) {
        std::thread::sleep(Duration::from_millis(2));
        for (slot, life) in c.reap_exited(true) {
            if c.lives[life].died() {
                c.start(slot, false);
            }
        }
    }
    // Whatever a consumer killed last held comes back to us once it is recovered.
    wait_until("every dead participant to be recovered", || {
        shmq::info::inspect(&g.name).unwrap().dead() == 0
    });
    let mut bad = Vec::new();
    let mut all = drain(&rx, "parent", &mut bad);
    let leftovers = all.len();

    // Accounting.
    let killed_consumers: std::collections::BTreeSet<String> = c
        .lives
        .iter()
        .filter(|l| l.kind == Kind::Consumer && l.died())
        .map(|l| l.label.clone())
        .collect();
    for l in c.lives.iter().filter(|l| l.kind == Kind::Consumer) {
        all.extend(read_consumer_log(&l.log, &l.label, &mut bad));
    }
    let t = tally(&all);
    let mut errors = c.failures.clone();
    errors.extend(bad.iter().map(|b| format!("corrupt payload: {b}")));
    let mut ok_sent = 0u64;
    let mut lost = Vec::new();
    let mut producers: BTreeMap<u64, (&Life, u64)> = BTreeMap::new();
    for l in c.lives.iter().filter(|l| l.kind == Kind::Producer) {
        let seqs = read_producer_log(&l.log);
        let n = contiguous(&l.label, &seqs);
        ok_sent += n;
        producers.insert(l.id, (l, n));
        for s in 0..n {
            if !t.contains_key(&(l.id, s)) {
                lost.push(format!("{} seq {s}", l.label));
            }
        }
    }
    let mut redelivered = 0;
    let mut in_flight_delivered = 0;
    for ((id, seq), copies) in &t {
        let Some(&(life, n)) = producers.get(id) else {
            errors.push(format!("message from unknown producer {id} seq {seq}"));
            continue;
        };
        if *seq == n {
            if life.died() {
                in_flight_delivered += 1; // committed, killed before reporting it
            } else {
                errors.push(format!("{} seq {seq} delivered but never sent", life.label));
            }
        } else if *seq > n {
            errors.push(format!(
                "{} seq {seq} delivered, but it reported only {n} sends",
                life.label
            ));
        }
        let k = copies.len();
        redelivered += copies.iter().filter(|g| g.redelivered).count();
        if delivery == Delivery::AtMostOnce && (k > 1 || copies[0].redelivered) {
            errors.push(format!(
                "{} seq {seq}: redelivered under at-most-once: {copies:?}",
                life.label
            ));
        } else if k > 1 {
            let unflagged = copies.iter().filter(|g| !g.redelivered).count();
            let by_killed = copies
                .iter()
                .filter(|g| killed_consumers.contains(&g.by))
                .count();
            if unflagged > 1 || by_killed < k - 1 {
                errors.push(format!(
                    "{} seq {seq} delivered {k} times, {unflagged} not marked as redelivery, {by_killed} to killed consumers: {copies:?}",
                    life.label
                ));
            }
        }
    }
    let by_point = c.lives.iter().filter(|l| l.died() && !l.killed_by_us).fold(
        BTreeMap::<&str, u32>::new(),
        |mut m, l| {
            *m.entry(l.crash.map_or("?", |c| c.0)).or_default() += 1;
            m
        },
    );
    eprintln!(
        "chaos: {} incarnations, {kills} SIGKILLs and {pauses} SIGSTOPs by the test, self-kills at crash points {by_point:?}",
        c.lives.len()
    );
    eprintln!(
        "chaos: {ok_sent} sends acknowledged Ok, {} distinct messages received ({in_flight_delivered} committed by producers killed before reporting), {} deliveries, {redelivered} marked redelivered, {leftovers} left for the parent",
        t.len(),
        all.len()
    );
    let killed = killed_consumers.len();
    match delivery {
        Delivery::AtLeastOnce => errors.extend(
            lost.iter()
                .map(|l| format!("{l}: send returned Ok but it was never received")),
        ),
        // Each consumer holds one message at a time: a killed one drops at most that one.
        Delivery::AtMostOnce if lost.len() > killed => errors.push(format!(
            "{} Ok-sent messages never received, but only {killed} consumers were killed: {lost:?}",
            lost.len()
        )),
        Delivery::AtMostOnce => {}
    }
    let info = shmq::info::inspect(&g.name).unwrap();
    eprintln!(
        "chaos: {} Ok-sent messages never received (dropped with a killed consumer; {killed} consumers killed); counters: recoveries {}, orphaned {}, dropped {}, discarded {}",
        lost.len(),
        info.recoveries,
        info.orphaned,
        info.dropped,
        info.discarded
    );
    assert!(
        errors.is_empty(),
        "chaos (seed {seed}) found {} problems:\n{}",
        errors.len(),
        errors.join("\n")
    );
    assert!(ok_sent > 0, "nothing was sent");

    let tx = Sender::open(&g.name).unwrap();
    assert_all_slots_free(&tx, &rx, CAP, SLOTS);
    drop((tx, rx));
    g.assert_clean();
}

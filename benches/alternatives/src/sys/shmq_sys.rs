//! shmq, the system under test: copy API (`send(&[u8])`) and loan API (fill in place).

use crate::proto::*;
use shmq::{Receiver, Sender, TryRecvError};

/// Queue options per payload size: the default builder, with capacity and slot counts
/// scaled down for big payloads so the payload segments fit in memory (see BENCHMARKS.md).
pub fn builder(size: usize, capacity: usize, producers: u32, consumers: u32) -> shmq::Builder {
    let mut b = shmq::Builder::new().capacity(capacity);
    if size >= 16 << 20 {
        // Every slot in flight gets its own segment of the payload's size class: keep just
        // enough slots for the ring plus one loan per producer and one hold per consumer.
        let slots = capacity + producers as usize + consumers as usize + 2;
        b = b
            .slots(slots)
            .max_payload_bytes((slots as u64 + 1) * size as u64)
            .max_message_size((size as u64).max(1 << 20));
    }
    b
}

pub fn producer(spec: &Spec, ctl: &mut Ctl) -> Report {
    let tx = Sender::open(&spec.names[0]).expect("open sender");
    let size = spec.size;
    let r = if spec.mode == "touch" {
        // The loan API's own per-message cost: only the first and last words are written.
        let last = size / 8 - 1;
        run_producer(spec, ctl, |st| {
            let mut loan = tx.loan(size).expect("loan");
            let w = loan.cast_mut::<u64>().expect("cast");
            w[0] = st;
            if last > 0 {
                w[last] = st ^ K;
            }
            loan.send().expect("send");
        })
    } else if spec.mode == "loan" {
        run_producer(spec, ctl, |st| {
            let mut loan = tx.loan(size).expect("loan");
            fill(loan.cast_mut::<u64>().expect("cast"), st);
            loan.send().expect("send");
        })
    } else {
        let mut src = Source::new(size);
        run_producer(spec, ctl, |st| tx.send(src.stamped(st)).expect("send"))
    };
    keep(tx);
    r
}

pub fn consumer(spec: &Spec, ctl: &mut Ctl) -> Report {
    let rx = Receiver::open(&spec.names[0]).expect("open receiver");
    let (rss_start, _) = rss();
    let mut v = Verifier::new(spec.size, spec.producers as usize);
    ctl.ready_then_wait_go();
    let t_start = now_ns();
    let mut t_last = t_start;
    let mut fresh = false; // a message was handled since `t_last` was read
    loop {
        let m = match rx.try_recv() {
            Ok(m) => m,
            Err(TryRecvError::Empty) => {
                t_last = now_ns();
                fresh = false;
                match rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                }
            }
            Err(_) => break,
        };
        let w = m.cast::<u64>().expect("cast");
        if spec.mode == "touch" {
            v.ends_only(w);
        } else {
            v.words(w);
        }
        drop(m); // the ack
        fresh = true;
    }
    if fresh {
        t_last = now_ns();
    }
    let r = consumer_report(spec, v, rss_start, t_start, t_last);
    keep(rx);
    r
}

struct Duplex2 {
    tx: Sender,
    rx: Receiver,
}

impl Duplex for Duplex2 {
    fn send(&mut self, w: &[u64]) {
        self.tx.send_slice(w).expect("send");
    }
    fn recv(&mut self, spin: bool, f: &mut dyn FnMut(&[u64])) {
        let m = if spin {
            loop {
                match self.rx.try_recv() {
                    Ok(m) => break m,
                    Err(TryRecvError::Empty) => std::hint::spin_loop(),
                    Err(e) => panic!("try_recv: {e}"),
                }
            }
        } else {
            self.rx.recv().expect("recv")
        };
        f(m.cast::<u64>().expect("cast"));
    }
}

pub fn latency(spec: &Spec, ctl: &mut Ctl) -> Report {
    // names[0]: ping → pong queue; names[1]: pong → ping queue.
    let (a, b) = if spec.role == "ping" { (0, 1) } else { (1, 0) };
    let mut d = Duplex2 {
        tx: Sender::open(&spec.names[a]).expect("open"),
        rx: Receiver::open(&spec.names[b]).expect("open"),
    };
    run_latency(spec, ctl, &mut d)
}

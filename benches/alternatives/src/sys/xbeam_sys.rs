//! The in-process upper bound of a ring: crossbeam-queue's `ArrayQueue` (Vyukov's bounded
//! MPMC) between threads of one process, passing boxed buffers from a recycled pool (so
//! the payload is produced and consumed in place, like a loan), or copying into them
//! from a source buffer (`copy`). Threads poll with `yield_now` when empty/full; no
//! process boundary, no crash safety, no blocking primitive.

use crate::proto::*;
use crossbeam_queue::ArrayQueue;
use std::sync::Arc;

type Buf = Box<[u64]>;

fn push_spin(q: &ArrayQueue<Buf>, mut b: Buf) {
    loop {
        match q.push(b) {
            Ok(()) => return,
            Err(back) => {
                b = back;
                std::thread::yield_now();
            }
        }
    }
}

fn pop_spin(q: &ArrayQueue<Buf>) -> Buf {
    loop {
        if let Some(b) = q.pop() {
            return b;
        }
        std::thread::yield_now();
    }
}

/// Runs one throughput case in threads; returns reports shaped like the child processes'.
pub fn throughput(spec: &Spec) -> Vec<Report> {
    let (p, c) = (spec.producers, spec.consumers);
    let full = Arc::new(ArrayQueue::<Buf>::new(spec.capacity));
    let free = Arc::new(ArrayQueue::<Buf>::new(spec.capacity + (p + c) as usize + 1));
    for _ in 0..free.capacity() {
        free.push(vec![0u64; spec.size / 8].into_boxed_slice())
            .unwrap();
    }
    let go = Arc::new(std::sync::Barrier::new((p + c + 1) as usize));
    let mut prods = Vec::new();
    for i in 0..p {
        let (full, free, go) = (full.clone(), free.clone(), go.clone());
        let mut s = spec.clone();
        s.idx = i;
        prods.push(std::thread::spawn(move || {
            let mut src = (s.mode == "copy").then(|| Source::new(s.size));
            let one = |st: u64, src: &mut Option<Source>| {
                let mut b = pop_spin(&free);
                match src {
                    Some(src) => {
                        src.words[0] = st;
                        b.copy_from_slice(&src.words);
                    }
                    None => fill(&mut b, st),
                }
                push_spin(&full, b);
            };
            go.wait();
            for q in 0..s.warm {
                one(stamp(i, q), &mut src);
            }
            let t_start = now_ns();
            for q in s.warm..s.warm + s.n {
                one(stamp(i, q), &mut src);
            }
            Report {
                role: "prod".into(),
                idx: i,
                t_start,
                t_end: now_ns(),
                sent: s.warm + s.n,
                ..Report::default()
            }
        }));
    }
    let mut cons = Vec::new();
    for j in 0..c {
        let (full, free, go) = (full.clone(), free.clone(), go.clone());
        let mut s = spec.clone();
        s.idx = j;
        cons.push(std::thread::spawn(move || {
            let mut v = Verifier::new(s.size, s.producers as usize);
            go.wait();
            let t_start = now_ns();
            let mut t_last = t_start;
            let mut fresh = false;
            loop {
                match full.pop() {
                    Some(b) => {
                        let got = v.words(&b);
                        push_spin(&free, b);
                        if got == Got::End {
                            break;
                        }
                        fresh = true;
                    }
                    None => {
                        if fresh {
                            t_last = now_ns();
                            fresh = false;
                        }
                        std::thread::yield_now();
                    }
                }
            }
            if fresh {
                t_last = now_ns();
            }
            Report {
                role: "cons".into(),
                idx: j,
                t_start,
                t_end: t_last,
                seen: Some(v.seen),
                ..Report::default()
            }
        }));
    }
    go.wait();
    let mut out: Vec<Report> = prods.into_iter().map(|h| h.join().unwrap()).collect();
    for j in 0..c {
        let mut b = pop_spin(&free);
        fill(&mut b, end_stamp(j));
        push_spin(&full, b);
    }
    out.extend(cons.into_iter().map(|h| h.join().unwrap()));
    out
}

struct XDuplex {
    out: Arc<ArrayQueue<[u64; 8]>>,
    inn: Arc<ArrayQueue<[u64; 8]>>,
}

impl Duplex for XDuplex {
    fn send(&mut self, w: &[u64]) {
        let mut v = [0u64; 8];
        v.copy_from_slice(w);
        while let Err(back) = self.out.push(v) {
            v = back;
            std::hint::spin_loop();
        }
    }
    fn recv(&mut self, _spin: bool, f: &mut dyn FnMut(&[u64])) {
        loop {
            if let Some(v) = self.inn.pop() {
                f(&v);
                return;
            }
            std::hint::spin_loop();
        }
    }
}

/// Ping-pong between two threads (spinning only).
pub fn latency(spec: &Spec) -> (LatReport, LatReport) {
    let a = Arc::new(ArrayQueue::new(spec.capacity));
    let b = Arc::new(ArrayQueue::new(spec.capacity));
    let s2 = spec.clone();
    let (a2, b2) = (a.clone(), b.clone());
    let pong = std::thread::spawn(move || pong(&s2, &mut XDuplex { out: b2, inn: a2 }));
    let p = ping(spec, &mut XDuplex { out: a, inn: b });
    (p, pong.join().unwrap())
}

//! `altbench solo`: shmq's per-operation cost in one thread, no other process, so no
//! cache line moves between cores. Subtracting it from the cross-process cost separates
//! the instructions shmq executes from the coherence traffic and wake-ups between cores.
//! Each phase checks what it received, like every other case.

use crate::proto::*;
use shmq::TryRecvError;

fn per_op(n: u64, f: impl FnMut()) -> f64 {
    let mut f = f;
    let t0 = now_ns();
    for _ in 0..n {
        f();
    }
    (now_ns() - t0) as f64 / n as f64
}

pub fn main(args: &[String]) {
    let sizes: Vec<usize> = if args.is_empty() {
        vec![8, 64, 1024, 65536, 1 << 20]
    } else {
        args.iter()
            .map(|a| a.parse().expect("size in bytes"))
            .collect()
    };
    let cap = 64usize;
    println!("shmq, one thread, capacity {cap}: ns per operation (median of 5 batches)");
    println!(
        "{:>9} {:>10} {:>12} {:>10} {:>12} {:>10} {:>12}",
        "size", "send", "recv+drop", "loan+fill+send", "recv+sum+drop", "fill", "sum"
    );
    for size in sizes {
        let (tx, rx) = shmq::channel(cap).expect("channel");
        let mut src = Source::new(size);
        let mut v = Verifier::new(size, 1);
        let mut seq = 0u64;
        let mut res: Vec<[f64; 6]> = vec![];
        let batches = if size >= 1 << 20 { 5 } else { 50 };
        for _ in 0..5 {
            let mut r = [0f64; 6];
            let mut acc = [0f64; 6];
            for _ in 0..batches {
                let s0 = seq;
                r[0] = per_op(cap as u64, || {
                    tx.try_send(src.stamped(stamp(0, seq))).expect("send");
                    seq += 1;
                });
                r[1] = per_op(cap as u64, || {
                    let m = rx.try_recv().expect("recv");
                    v.bytes(&m);
                });
                seq = seq.max(s0 + cap as u64);
                r[2] = per_op(cap as u64, || {
                    let mut l = tx.try_loan(size).expect("loan");
                    fill(l.cast_mut::<u64>().expect("cast"), stamp(0, seq));
                    l.try_send().expect("send");
                    seq += 1;
                });
                r[3] = per_op(cap as u64, || {
                    let m = rx.try_recv().expect("recv");
                    v.words(m.cast::<u64>().expect("cast"));
                });
                let mut w = vec![0u64; size / 8];
                r[4] = per_op(cap as u64, || fill(std::hint::black_box(&mut w), 1));
                r[5] = per_op(cap as u64, || {
                    std::hint::black_box(sum_words(std::hint::black_box(&w)));
                });
                for i in 0..6 {
                    acc[i] += r[i] / batches as f64;
                }
            }
            res.push(acc);
        }
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
        let s = &v.seen;
        assert_eq!(
            (s.bad_sum, s.bad_order, s.bad_stamp, s.bad_len, s.count[0]),
            (0, 0, 0, 0, seq),
            "solo: what arrived is wrong"
        );
        let med = |i: usize| {
            let mut x: Vec<f64> = res.iter().map(|r| r[i]).collect();
            x.sort_by(|a, b| a.partial_cmp(b).unwrap());
            x[x.len() / 2]
        };
        println!(
            "{:>9} {:>10.0} {:>12.0} {:>10.0} {:>12.0} {:>10.0} {:>12.0}",
            size,
            med(0),
            med(1),
            med(2),
            med(3),
            med(4),
            med(5)
        );
    }
}

//! The summary at the end of a run: per-process figures, throughput, the library's
//! recovery counters, and the accounting (see `ledger.rs`), whose lines
//! `trajectories: key=value ...`, `batches: key=value ...` and `accounting: exact` are
//! what tests/rl_pipeline.rs checks.

use crate::cli::{Options, Role};
use crate::parent::Outcome;
use shmq::info::QueueInfo;

/// Prints the summary; `false` if the accounting does not add up.
pub fn summary(o: &Options, out: &Outcome, traj_bytes: u64, batch_bytes: u64) -> bool {
    let (t, b) = out.ledger.check(&out.killed);
    let kills = |role: Role, id: Option<u32>| {
        out.killed
            .iter()
            .filter(|k| k.0 == role && id.map_or(true, |i| k.1 == i))
            .count()
    };
    let secs = out.total.as_secs_f64();
    println!(
        "summary: {:.2} s running (stopped by {}), {:.2} s to drain and exit",
        out.running.as_secs_f64(),
        out.stopped_by,
        secs - out.running.as_secs_f64()
    );
    for (&(role, id), c) in &out.ledger.per_child {
        let incs = out
            .incarnations
            .get(&(role, id))
            .copied()
            .unwrap_or(c.incarnations.len() as u32);
        let life = format!(
            "{incs} incarnation{}, {} killed",
            if incs == 1 { "" } else { "s" },
            kills(role, Some(id))
        );
        match role {
            Role::Actor => println!("  actor {id:>2}    {life}: {} trajectories sent", c.sent),
            Role::Replay => println!(
                "  replay {id:>2}   {life}: {} trajectories received ({} redelivered), {} \
                 batches sent",
                c.got, c.redelivered, c.sent
            ),
            Role::Learner => println!(
                "  learner {id:>2}  {life}: {} batches received ({} redelivered), latency mean \
                 {:.1} ms, max {:.1} ms",
                c.got,
                c.redelivered,
                c.lat_sum_us as f64 / c.got.max(1) as f64 / 1e3,
                c.lat_max_us as f64 / 1e3
            ),
            Role::Parent => {}
        }
    }
    println!(
        "  throughput: actors -> replay {:.0} traj/s, {:.2} GB/s; replay -> learners {:.0} \
         batches/s, {:.2} GB/s (received, over {secs:.2} s)",
        t.received as f64 / secs,
        (t.received * traj_bytes) as f64 / secs / 1e9,
        b.received as f64 / secs,
        (b.received * batch_bytes) as f64 / secs / 1e9,
    );
    let lib = |q: &Option<QueueInfo>| {
        q.as_ref().map_or("not readable".to_string(), |q| {
            format!(
                "{} recoveries, {} orphaned (to redeliver), {} loans discarded",
                q.recoveries, q.orphaned, q.discarded
            )
        })
    };
    println!(
        "  shmq recovery: trajectory queue {}; batch queue {}",
        lib(&out.traj_q),
        lib(&out.batch_q)
    );
    if o.chaos {
        println!(
            "  chaos: kills={} actors={} learners={} replay={}",
            out.killed.len(),
            kills(Role::Actor, None),
            kills(Role::Learner, None),
            kills(Role::Replay, None)
        );
    }
    println!("trajectories: {}", t.line());
    println!("batches: {}", b.line());

    let mut problems = Vec::new();
    for (what, x) in [("trajectories", &t), ("batches", &b)] {
        if x.lost > 0 {
            problems.push(format!("{} {what} sent Ok were never received", x.lost));
        }
        if x.dup_unflagged > 0 {
            problems.push(format!(
                "{} {what} received twice without the redelivery flag",
                x.dup_unflagged
            ));
        }
        if x.invented > 0 {
            problems.push(format!(
                "{} {what} received that no live producer sent",
                x.invented
            ));
        }
        if x.corrupt + x.disorder > 0 {
            problems.push(format!(
                "{} corrupt {what} or journal records out of order",
                x.corrupt + x.disorder
            ));
        }
        if out.killed.is_empty() && (x.redelivered > 0 || x.unconfirmed > 0) {
            problems.push(format!(
                "{} redelivered / {} unconfirmed {what} although nobody was killed",
                x.redelivered, x.unconfirmed
            ));
        }
    }
    // The library's side: each journaled redelivery is a distinct redelivery, and each
    // redelivery follows a distinct orphaning; and after every child left, both queues
    // are empty with every payload slot free.
    for (what, x, q) in [("trajectory", &t, &out.traj_q), ("batch", &b, &out.batch_q)] {
        let Some(q) = q else {
            problems.push(format!(
                "the {what} queue could not be inspected at the end"
            ));
            continue;
        };
        if x.redelivered > q.orphaned {
            problems.push(format!(
                "{} {what} redeliveries journaled, but the queue orphaned only {}",
                x.redelivered, q.orphaned
            ));
        }
        if q.depth != 0 || q.slot_states[0] != u64::from(q.slots) {
            problems.push(format!(
                "the {what} queue is not empty at the end: depth {}, slots free/loaned/held/\
                 orphaned {:?}",
                q.depth, q.slot_states
            ));
        }
    }
    if problems.is_empty() {
        println!(
            "accounting: exact (every trajectory and every batch whose send returned Ok was \
             received at least once; duplicates only as redeliveries)"
        );
        true
    } else {
        for p in &problems {
            println!("MISMATCH: {p}");
        }
        println!("accounting: MISMATCH");
        false
    }
}

pub fn human(bytes: f64) -> String {
    match bytes {
        b if b >= 1e9 => format!("{:.2} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        b => format!("{b:.0} B"),
    }
}

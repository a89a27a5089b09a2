//! The participant table and the recovery lease (pure: no syscalls).
//!
//! Every handle (`Sender`, `Receiver`, each clone) and every process's monitor of a queue
//! owns one record. A record's *index* is guarded by an OFD lock on byte `index` of the
//! header file (see `os.rs`): a process first takes that lock, then the record, so holding
//! the lock proves that whoever held the record before is dead. The kernel drops the lock
//! when the process dies, zombie or not, which is what liveness is judged on (`liveness.rs`).
//!
//! ```text
//! register (lock on byte i held):
//!   pid, start_time, pid_ns, sent := ...                               (G1)
//!   CAS state: FREE(g) -> ACTIVE(g, role)                                    (G2)
//!   roster_epoch += 1                                                        (G3)
//! leave (clean drop; the handle owns no slot any more):
//!   run recovery for oneself (frees anything left), which ends with
//!   CAS state: ACTIVE(g, role) -> FREE(g+1); roster_epoch += 1
//! ```
//!
//! Killed after… | leaves | repaired by
//! ---|---|---
//! G1 | a FREE record with stale fields; the lock dies with the process | nothing: the next owner rewrites them
//! G2 | an ACTIVE record of the dead; others' cached counts miss it | recovery releases it and bumps the epoch
//! G3 | as G2 without the gap | recovery as for any dead participant
//!
//! The lease (`Counters::lease`) names the participant running recovery: taken by CAS
//! from 0, handed back by CAS to 0, and taken over by CAS from a holder only after the
//! holder is proven dead (invariant 4 of DESIGN §4).

use crate::layout::{part_active, part_free, part_gen, part_role, Role, Shared};
use crate::sync::Ordering::{AcqRel, Acquire, Relaxed, Release};

/// Identity facts written into a record at registration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Identity {
    /// The process id.
    pub pid: u32,
    /// Its start time in clock ticks since boot.
    pub start_time: u64,
    /// Its pid namespace inode, 0 if unknown.
    pub pid_ns: u64,
}

/// Takes record `idx` (the caller holds its lock). Returns the ACTIVE word, or
/// `Err(word)` if the record still belongs to a dead participant that must be recovered
/// first.
pub fn register(q: &Shared<'_>, idx: u16, role: Role, id: Identity) -> Result<u64, u64> {
    let rec = &q.parts[idx as usize];
    let w = rec.state.load(Acquire);
    if part_role(w).is_some() || w & 0xFFFF != 0 {
        return Err(w);
    }
    // G1: only the lock holder writes these.
    rec.pid.store(id.pid, Relaxed);
    rec.start_time.store(id.start_time, Relaxed);
    rec.pid_ns.store(id.pid_ns, Relaxed);
    rec.id_check.store(
        crate::layout::id_check(id.pid, id.start_time, id.pid_ns, part_gen(w)),
        Relaxed,
    );
    rec.sent.store(0, Relaxed);
    rec.ack_waiting.store(0, Relaxed);
    let active = part_active(part_gen(w), role);
    // G2. SYNC POINT: roster (Release: the fields above; pairs with the Acquire loads of
    // `state` in `count_roles` and liveness checks).
    rec.state.compare_exchange(w, active, AcqRel, Acquire)?;
    crate::fault::point("register.cas");
    // G3.
    q.ctl.counters.roster_epoch.fetch_add(1, Release);
    Ok(active)
}

/// Releases record `idx` whose word is `active` (after its owner left or was recovered).
/// Returns false if it was released already (a recovery rerun).
pub fn release(q: &Shared<'_>, idx: u16, active: u64) -> bool {
    let free = part_free(part_gen(active).wrapping_add(1));
    let ok = q.parts[idx as usize]
        .state
        .compare_exchange(active, free, AcqRel, Relaxed)
        .is_ok();
    if ok {
        q.ctl.counters.roster_epoch.fetch_add(1, Release);
    }
    ok
}

/// `(senders, receivers)` with ACTIVE records (dead-but-unrecovered ones included).
pub fn count_roles(q: &Shared<'_>) -> (u32, u32) {
    let (mut tx, mut rx) = (0, 0);
    for rec in q.parts {
        match part_role(rec.state.load(Acquire)) {
            Some(Role::Sender) => tx += 1,
            Some(Role::Receiver) => rx += 1,
            _ => {}
        }
    }
    (tx, rx)
}

/// Tries to take the lease for `me` (a [`crate::layout::lease_word`]). `Err(holder)` if
/// someone holds it.
pub fn take_lease(q: &Shared<'_>, me: u64) -> Result<(), u64> {
    let l = &q.ctl.counters.lease;
    match l.compare_exchange(0, me, AcqRel, Acquire) {
        Ok(_) => Ok(()),
        Err(h) if h == me => Ok(()),
        Err(h) => Err(h),
    }
}

/// Takes the lease over from `holder`, whom the caller has proven dead.
pub fn steal_lease(q: &Shared<'_>, holder: u64, me: u64) -> bool {
    q.ctl
        .counters
        .lease
        .compare_exchange(holder, me, AcqRel, Acquire)
        .is_ok()
}

/// Hands the lease back.
pub fn release_lease(q: &Shared<'_>, me: u64) {
    let _ = q
        .ctl
        .counters
        .lease
        .compare_exchange(me, 0, AcqRel, Relaxed);
}

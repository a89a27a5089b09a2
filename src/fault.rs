//! Fault injection for tests: with the `fault-injection` feature, the environment variable
//! `SHMQ_CRASH_AT=<point>` makes the process SIGKILL itself when it reaches that named
//! crash point (after skipping the first `SHMQ_CRASH_SKIP` hits, default 0). Without the
//! feature, [`point`] is an empty inline function and the names below are all that remain.

/// Every named crash point, in protocol order, with the window it opens.
pub const POINTS: &[(&str, &str)] = &[
    (
        "send.alloc",
        "producer holds a LOANED slot, nothing written (slots A1)",
    ),
    (
        "send.trim",
        "producer emptied a FREE slot's segment to make room: slot LOANED by it, object truncated, seg_size stale (segment trim)",
    ),
    (
        "send.grow",
        "producer bumped a segment's epoch, object not resized yet (segment G1)",
    ),
    ("send.written", "payload written, not published"),
    ("send.pos", "pos set, commit not done (ring S4)"),
    ("send.commit", "committed, tail not advanced (ring S5)"),
    ("send.published", "committed, readers not woken"),
    ("recv.claim", "slot HELD, cell not cleared (ring R3)"),
    ("recv.cleared", "cell cleared, head not advanced (ring R4)"),
    (
        "recv.claimed",
        "message claimed, not yet handed to the caller",
    ),
    (
        "orphan.claim",
        "ORPHAN slot reclaimed, hint not lowered (slots O1)",
    ),
    (
        "giveup.orphaned",
        "a held message handed back as ORPHAN, the orphans hint not raised (slots give_up: recovery V2a, or a receiver that cannot map it, H1)",
    ),
    ("ack.pos", "pos reset, slot still HELD (slots K1)"),
    ("ack.freed", "slot FREE, sender not woken (slots K2)"),
    (
        "register.cas",
        "record ACTIVE, roster epoch not bumped (roster G2)",
    ),
    (
        "recover.slot",
        "recovery repaired one slot of a dead participant",
    ),
    (
        "recover.release",
        "recovery released the dead record, waiters not woken (V4)",
    ),
];

/// Kills the process here if the environment asks for this point.
#[inline(always)]
pub fn point(name: &'static str) {
    #[cfg(all(feature = "fault-injection", not(shmq_loom)))]
    imp::point(name);
    #[cfg(not(all(feature = "fault-injection", not(shmq_loom))))]
    let _ = name;
}

/// Fault injection (feature `fault-injection`): `SHMQ_FAULT_SHM_LIMIT=<bytes>` makes
/// `/dev/shm` look full to this process once a queue's objects (its header and segments)
/// would take more than that many bytes: sizing an object then fails with `ENOSPC`, as on
/// a small tmpfs. Read once per process. Tests use it to exercise a full `/dev/shm`
/// without filling the machine's.
pub fn shm_limit() -> Option<u64> {
    #[cfg(all(feature = "fault-injection", not(shmq_loom)))]
    {
        static LIMIT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
        *LIMIT.get_or_init(|| std::env::var("SHMQ_FAULT_SHM_LIMIT").ok()?.parse().ok())
    }
    #[cfg(not(all(feature = "fault-injection", not(shmq_loom))))]
    None
}

/// Fault injection (feature `fault-injection`): `SHMQ_FAULT_FALLOCATE_EINTR=<n>` makes the
/// first `n` `posix_fallocate` calls of this process fail with `EINTR` without calling the
/// kernel, as tmpfs does when a signal arrives while it allocates a large object. (The
/// 6.18 kernel of the test machines never returned it under a 10 kHz signal storm, so a
/// test cannot rely on a real signal.) Returns whether this call is one of them.
pub fn fallocate_interrupted() -> bool {
    #[cfg(all(feature = "fault-injection", not(shmq_loom)))]
    {
        use std::sync::atomic::{AtomicU64, Ordering};
        static LEFT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
        let left = LEFT.get_or_init(|| {
            AtomicU64::new(
                std::env::var("SHMQ_FAULT_FALLOCATE_EINTR")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
            )
        });
        left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
    #[cfg(not(all(feature = "fault-injection", not(shmq_loom))))]
    false
}

#[cfg(all(feature = "fault-injection", not(shmq_loom)))]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    static CONFIG: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);

    pub fn point(name: &'static str) {
        let cfg = CONFIG.get_or_init(|| {
            let at = std::env::var("SHMQ_CRASH_AT").ok()?;
            let skip = std::env::var("SHMQ_CRASH_SKIP")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            Some((at, skip))
        });
        if let Some((at, skip)) = cfg {
            if at == name && HITS.fetch_add(1, Ordering::SeqCst) >= *skip {
                // SAFETY: plain syscalls; SIGKILL cannot be caught, so nothing after runs.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
            }
        }
    }
}

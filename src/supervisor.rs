//! Supervision: noticing dead participants and running recovery for them.
//!
//! **Liveness** (DESIGN §4) is judged by the kernel, not by a timeout: participant `i` holds
//! an OFD write lock on byte `1 + i` of the header through a descriptor of its own, and the
//! kernel drops it when the process dies, before the process is even reaped (a zombie holds
//! no locks). A lock byte that is free while the record is still ACTIVE means its owner is
//! dead. Pid reuse cannot fool this (a new process with the old pid holds no lock of
//! ours), and a SIGSTOPped process keeps its lock, so it stays alive however long it
//! sleeps. The one way a dead participant's lock can survive is a child that inherited the
//! descriptor without shmq's fork handler running (a raw `clone`; after `fork()` the handler
//! closes them, see `fork.rs`); that case is caught by cross-checking the recorded pid and
//! start time in `/proc` (same pid namespace only: across namespaces the lock alone
//! decides, never a doubtful pid). Only positive evidence counts (`Queue::is_dead`): any
//! failure to look in `/proc` or to test a lock means alive.
//!
//! **Notification**: the watcher holds a `pidfd` per peer process in an epoll set, so it
//! wakes as soon as a peer exits, and an inotify watch on each header, which every
//! registration touches, so it starts watching a new peer at once; it also rescans every
//! 250 ms (other pid namespaces, kernels without pidfd or inotify).
//!
//! **Recovery** runs under the queue's lease (`roster.rs`): one runner at a time, taken
//! over from a holder only once that holder is proven dead. The runner re-checks under the
//! lease that the record still holds the very word judged dead (recovery.rs V0).
//!
//! **Who runs it**: by default one background thread per process (for all its queues, see
//! [`Supervision::Thread`](crate::Supervision)); also every `open()` before it returns,
//! every blocked call of a [`Supervision::Manual`](crate::Supervision) process once per
//! 100 ms slice, and a [`Supervisor`] that a user runs in a process of its own.

use crate::error::Error;
use crate::layout::{lease_idx, part_gen, part_role};
use crate::queue::{Queue, Supervision};
use crate::sync::Ordering;
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

/// Recovers every dead participant of `q`. Returns how many records were released.
pub(crate) fn repair(q: &Queue) -> Result<usize, Error> {
    if q.foreign() {
        // Inherited by fork: its descriptors are /dev/null now, and nothing of it may
        // change shared memory (`fork.rs`).
        return Err(Error::new(
            crate::ErrorKind::Forked,
            format!(
                "the attachment to queue {:?} was inherited from the parent process by fork",
                q.name
            ),
        ));
    }
    let s = q.shared();
    let mut dead = Vec::new();
    for (i, rec) in s.parts.iter().enumerate() {
        let w = rec.state.load(Ordering::Acquire);
        if part_role(w).is_some() && q.is_dead(i as u16, w) {
            dead.push((i as u16, w));
        }
    }
    crate::recovery::heal_orphan_hint(&s);
    let mut n = 0;
    for (i, w) in dead {
        if recover_one(q, i, w) {
            n += 1;
        }
    }
    Ok(n)
}

/// Recovers participant `i` (record word `w`, proven dead) under the lease. Returns true
/// if the record is free afterwards; false if the lease is busy with a live runner.
pub(crate) fn recover_one(q: &Queue, i: u16, w: u64) -> bool {
    // One runner per process at a time (the lease admits its holder again, and every
    // thread of this process holds the same lease word): a busy lock is a busy lease.
    if q.foreign() {
        return false;
    }
    let _running = match q.recovering.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return false,
    };
    let s = q.shared();
    let Some(me) = q.lease_word() else {
        return false;
    };
    if let Err(holder) = crate::roster::take_lease(&s, me) {
        let hi = lease_idx(holder);
        let alive = match s.parts.get(hi as usize) {
            Some(rec) => {
                let hw = rec.state.load(Ordering::Acquire);
                part_role(hw).is_some()
                    && part_gen(hw) == (holder >> 16) as u32
                    && !q.is_dead(hi, hw)
            }
            None => false, // a corrupt lease word names nobody
        };
        if alive || !crate::roster::steal_lease(&s, holder, me) {
            return false;
        }
    }
    let r = crate::recovery::recover(&s, i, w, true);
    crate::roster::release_lease(&s, me);
    crate::wait::bump(&q.futex, &s.ctl.not_empty);
    crate::wait::bump(&q.futex, &s.ctl.not_full);
    r.released || part_role(s.parts[i as usize].state.load(Ordering::Acquire)).is_none()
}

/// An eventfd in the watcher thread's epoll set: written when this process attaches to
/// another queue, so the watcher starts watching that queue's header (and its peers) at
/// once rather than at its next rescan. -1 until made. Per process: a forked child's copy
/// is closed by the fork handler (`forget_nudge_in_child`), so the child's watcher gets
/// its own rather than sharing the parent's counter.
static NUDGE: AtomicI32 = AtomicI32::new(-1);

fn nudge_fd() -> Option<BorrowedFd<'static>> {
    let mut fd = NUDGE.load(SeqCst);
    if fd < 0 {
        // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
        let new = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if new < 0 {
            return None;
        }
        fd = match NUDGE.compare_exchange(-1, new, SeqCst, SeqCst) {
            Ok(_) => new,
            Err(other) => {
                // SAFETY: `new` is ours and unused.
                unsafe { libc::close(new) };
                other
            }
        };
    }
    // SAFETY: once installed, the eventfd stays open for the life of this process image
    // (only a forked child's copy is closed, before any thread of the child runs).
    Some(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// The fork child handler's part (async-signal-safe): closes the child's copy of the
/// parent's eventfd.
pub(crate) fn forget_nudge_in_child() {
    let fd = NUDGE.swap(-1, SeqCst);
    if fd >= 0 {
        // SAFETY: our copy of the parent's eventfd; nothing else in the child uses it.
        unsafe { libc::close(fd) };
    }
}

/// Starts this process's watcher thread (once per process: a forked child starts its
/// own) for queues in [`Supervision::Thread`] mode, and tells it that the set of attached
/// queues changed.
pub(crate) fn watch() {
    if let Some(fd) = nudge_fd() {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd (best effort).
        unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
    // The epoch (plus one, so 0 means "never") of the process that started the thread.
    static STARTED: AtomicU64 = AtomicU64::new(0);
    let me = crate::fork::epoch() + 1;
    if STARTED.swap(me, SeqCst) == me {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("shmq-supervisor".into())
        .spawn(|| {
            let never = AtomicBool::new(false);
            watch_loop(
                || {
                    crate::queue::attached()
                        .into_iter()
                        .filter(|q| q.supervision == Supervision::Thread)
                        .collect()
                },
                nudge_fd(),
                &never,
            )
        });
}

/// How often the watcher rescans every record without being woken by a pidfd: it finds
/// new peers to watch, peers in other pid namespaces, and deaths on kernels without
/// pidfd. Not shorter: each wake-up takes a core from a spinning process for a moment,
/// which on a small machine shows in the latency tail.
const RESCAN: Duration = Duration::from_millis(250);

/// The watcher: pidfds of peer processes in an epoll set, plus a rescan every [`RESCAN`].
///
/// New peers: a process that registers a participant touches the queue's header
/// (`Queue::announce`), and the watcher holds an inotify watch on every header it
/// supervises in the same epoll set, so it rescans at once and starts watching the
/// newcomer's pidfd within about a millisecond of its registration, instead of at the
/// next rescan. A peer that dies before that is still found by the rescan, by a blocked
/// waiter's slice, or by `open()`. Without inotify (or epoll) the rescan alone remains.
fn watch_loop(
    mut queues: impl FnMut() -> Vec<Arc<Queue>>,
    nudge: Option<BorrowedFd<'_>>,
    stop: &AtomicBool,
) {
    let ep = Epoll::new();
    if let (Some(ep), Some(fd)) = (&ep, nudge) {
        ep.add(fd);
    }
    let ino = ep.as_ref().and_then(|ep| {
        let ino = crate::os::Inotify::new()?;
        ep.add(ino.fd());
        Some(ino)
    });
    // (attachment address, header inode) -> inotify watch descriptor
    let mut roster_watches: HashMap<(usize, u64), i32> = HashMap::new();
    // pid -> (start time, pidfd)
    let mut watched: HashMap<u32, (u64, OwnedFd)> = HashMap::new();
    let me = std::process::id();
    let my_ns = crate::os::pid_namespace().unwrap_or(0);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let qs = queues();
        if let Some(ino) = &ino {
            let key = |q: &Arc<Queue>| (Arc::as_ptr(q) as usize, q.ino);
            roster_watches.retain(|k, wd| {
                let keep = qs.iter().any(|q| key(q) == *k);
                if !keep {
                    ino.unwatch(*wd);
                }
                keep
            });
            for q in &qs {
                if let std::collections::hash_map::Entry::Vacant(e) = roster_watches.entry(key(q)) {
                    if let Some(wd) = q.watch_roster(ino) {
                        e.insert(wd);
                    }
                }
            }
        }
        for q in &qs {
            let _ = repair(q);
            // Watch every peer process we do not watch yet.
            for rec in q.shared().parts {
                if part_role(rec.state.load(Ordering::Acquire)).is_none() {
                    continue;
                }
                let (pid, start) = (
                    rec.pid.load(Ordering::Relaxed),
                    rec.start_time.load(Ordering::Relaxed),
                );
                if pid == me
                    || rec.pid_ns.load(Ordering::Relaxed) != my_ns
                    || watched.get(&pid).is_some_and(|w| w.0 == start)
                {
                    continue;
                }
                if let Some(fd) = crate::os::pidfd_open(pid) {
                    // The pid may have been reused between the record and the open: keep
                    // the fd only if it is the recorded process.
                    if matches!(crate::os::proc_stat(pid), Ok(Some(st)) if st.start_time == start) {
                        if let Some(ep) = &ep {
                            ep.add(&fd);
                        }
                        watched.insert(pid, (start, fd));
                    }
                }
            }
        }
        drop(qs);
        let fired = match &ep {
            Some(ep) => ep.wait(RESCAN),
            None => {
                std::thread::sleep(Duration::from_millis(20));
                Vec::new()
            }
        };
        if let Some(ino) = &ino {
            if fired.contains(&ino.fd().as_raw_fd()) {
                ino.drain(); // a roster changed: the loop rescans now
            }
        }
        if let Some(fd) = nudge.filter(|fd| fired.contains(&fd.as_raw_fd())) {
            let mut n = 0u64;
            // SAFETY: reads 8 bytes into a valid u64 from our eventfd (resets it).
            unsafe { libc::read(fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
        }
        // Forget exited processes (their pidfds stay readable).
        if !fired.is_empty() {
            watched.retain(|_, (_, fd)| {
                let gone = fired.contains(&fd.as_raw_fd());
                if gone {
                    if let Some(ep) = &ep {
                        ep.del(fd);
                    }
                }
                !gone
            });
        }
    }
}

/// A minimal epoll set of pidfds.
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> Option<Epoll> {
        // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is fresh and owned by nobody else.
        Some(Epoll(unsafe {
            <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }))
    }
    fn add(&self, fd: impl AsFd) {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd.as_fd().as_raw_fd() as u64,
        };
        // SAFETY: both descriptors are valid; `ev` outlives the call.
        unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_fd().as_raw_fd(),
                &mut ev,
            )
        };
    }
    fn del(&self, fd: &OwnedFd) {
        // SAFETY: both descriptors are valid; a null event is allowed for EPOLL_CTL_DEL.
        unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd.as_raw_fd(),
                std::ptr::null_mut(),
            )
        };
    }
    fn wait(&self, t: Duration) -> Vec<i32> {
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 16];
        // SAFETY: `evs` is a valid buffer of 16 events for the call.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                evs.as_mut_ptr(),
                16,
                t.as_millis() as i32,
            )
        };
        evs[..n.max(0) as usize]
            .iter()
            .map(|e| e.u64 as i32)
            .collect()
    }
}

/// Supervision of one queue from a process of its own (or from any thread).
///
/// Attaching does not count as a sender or receiver. Use it when handles run in
/// [`Supervision::Manual`](crate::Supervision) mode, or to keep a queue repaired while no
/// handle is blocked in it.
///
/// ```
/// # fn main() -> Result<(), shmq::Error> {
/// let (tx, _rx) = shmq::channel(4)?;
/// let sup = shmq::Supervisor::open(tx.name())?;
/// assert_eq!(sup.run_once()?, 0); // nobody has died
/// # Ok(()) }
/// ```
pub struct Supervisor {
    q: crate::queue::User,
}

impl Supervisor {
    /// Attaches to queue `name` for supervision.
    ///
    /// # Errors
    /// As [`Sender::open`](crate::Sender::open).
    pub fn open(name: &str) -> Result<Supervisor, Error> {
        Ok(Supervisor {
            q: Queue::open(name, Supervision::Manual)?,
        })
    }

    /// Recovers every participant that has died since the last run. Returns how many.
    ///
    /// # Errors
    /// None today; reserved for OS failures.
    pub fn run_once(&self) -> Result<usize, Error> {
        repair(&self.q)
    }

    /// Watches the queue until `stop` is set, repairing within milliseconds of a death.
    pub fn run(&self, stop: &AtomicBool) {
        let q = self.q.arc().clone();
        watch_loop(move || vec![q.clone()], None, stop)
    }
}

/// Payload segments whose queue header is gone: the last process out of a queue removes
/// its header and then its segments, and leaves segments behind when it is killed between
/// the two, or when they belong to another user (a queue opened to several users by hand;
/// it reports that on stderr). They are removed (or, in a dry run, listed) under the
/// queue's name, or skipped with the reason. A segment changed less than 100 ms before
/// this `gc` started is left alone: it may belong to a queue of the same name created
/// since the header was found missing (sizing a segment sets its change time; the margin
/// covers the file system's coarse clock, a few milliseconds behind).
fn gc_orphan_segments(started: std::time::SystemTime, remove: bool, r: &mut GcReport) {
    use std::os::unix::fs::MetadataExt;
    let Ok(segments) = crate::os::list_segments() else {
        return;
    };
    let cutoff = started
        .checked_sub(Duration::from_millis(100))
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    let mut failed: Vec<String> = Vec::new();
    let mut done: Vec<String> = Vec::new();
    for (name, path) in segments {
        if std::fs::symlink_metadata(crate::os::header_path(&name)).is_ok() {
            continue; // its queue is there: the queue's own gc (or its last user) decides
        }
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let changed = Duration::new(
            m.ctime().max(0) as u64,
            m.ctime_nsec().clamp(0, 999_999_999) as u32,
        );
        if !m.file_type().is_file() || changed >= cutoff {
            continue;
        }
        if remove {
            match crate::os::unlink(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    if !failed.contains(&name) {
                        r.skipped.push((
                            name.clone(),
                            Error::io(
                                format!(
                                    "cannot remove {}, a payload segment whose queue header is gone",
                                    path.display()
                                ),
                                e,
                            ),
                        ));
                        failed.push(name);
                    }
                    continue;
                }
            }
        }
        if !done.contains(&name) {
            done.push(name);
        }
    }
    for name in done {
        if !failed.contains(&name) && !r.removed.contains(&name) {
            r.removed.push(name);
        }
    }
}

/// What [`gc`] did: the queues it removed (or, from [`gc_dry_run`], would remove), and
/// every entry named like a queue that it left alone, with why (not a regular file, not a
/// queue, another user's, a removal that failed). One such entry never stops the rest.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Names of the queues removed (would be removed).
    pub removed: Vec<String>,
    /// Names left alone, each with the reason.
    pub skipped: Vec<(String, Error)>,
}

/// Removes every queue in `/dev/shm` that no live process is attached to, with its payload
/// segments, and stale half-created headers. Entries it cannot open, lock or remove, and
/// files named like a queue that are not one, are skipped and listed in the report.
///
/// # Errors
/// Only if `/dev/shm` cannot be listed.
pub fn gc() -> Result<GcReport, Error> {
    gc_impl(true)
}

/// What [`gc`] would do now, removing nothing.
///
/// # Errors
/// If `/dev/shm` cannot be read.
pub fn gc_dry_run() -> Result<GcReport, Error> {
    gc_impl(false)
}

fn gc_impl(remove: bool) -> Result<GcReport, Error> {
    let started = std::time::SystemTime::now();
    let mut r = GcReport::default();
    for name in crate::os::list_queue_names().map_err(|e| Error::io("cannot list /dev/shm", e))? {
        match crate::queue::gc_one(&name, remove) {
            Ok(true) => r.removed.push(name),
            Ok(false) => {}
            Err(e) => r.skipped.push((name, e)),
        }
    }
    gc_orphan_segments(started, remove, &mut r);
    if !remove {
        return Ok(r);
    }
    // Half-created headers whose creator died before linking them (a live creator holds
    // its lock from just after creating one, and starts over if we got there first).
    if let Ok(rd) = std::fs::read_dir(crate::os::SHM_DIR) {
        for e in rd.flatten() {
            let regular = e.file_type().is_ok_and(|t| t.is_file());
            if regular && e.file_name().to_string_lossy().starts_with(".shmq-new.") {
                if let Ok(f) = crate::os::open_rw(&e.path()) {
                    if let Ok(true) = crate::os::try_lock(
                        &f,
                        crate::os::LIFECYCLE_BYTE,
                        libc::F_WRLCK as libc::c_short,
                    ) {
                        let _ = crate::os::unlink(&e.path());
                    }
                }
            }
        }
    }
    Ok(r)
}

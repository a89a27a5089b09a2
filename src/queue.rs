//! One process's attachment to one queue: the header mapping, the segment cache, this
//! process's monitor record, participant registration, and the send / receive / ack paths
//! that tie the pure algorithms (`ring`, `slots`, `recovery`) to the OS (`os`, `segment`,
//! `wait`).
//!
//! # Lifecycle
//!
//! * **create**: the header is built under a temporary name (`/dev/shm/.shmq-new.…`), its
//!   `init` word published last, and only then `link`ed to `shmq.<name>`, so an opener can
//!   never see a half-built header, and `link` fails atomically if the name is taken.
//! * **attach**: every attached process holds a *shared* OFD lock on byte 0 of the header
//!   (the lifecycle lock) through its probe descriptor, then checks that the path still
//!   names the same file.
//! * **detach**: when the last handle of a process goes, the process releases its monitor
//!   record and tries to upgrade its lifecycle lock to *exclusive*. That succeeds only if
//!   no other process is attached (dead processes hold no locks), and then it unlinks the
//!   header and every segment object. An opener that loses this race sees the path gone
//!   (or a new inode) and reports `NotFound`.

use crate::error::{Error, ErrorKind};
use crate::fork::LockFile;
use crate::layout::{
    self, part_gen, part_role, Control, Geometry, PartRec, Role, Shared, SlotRec, BITMAP_WORDS,
    INIT_READY, INLINE_BYTES, LAYOUT_VERSION, MAGIC, MAX_CAPACITY, MAX_PARTICIPANTS, MAX_SLOTS,
};
use crate::os;
use crate::segment::Segments;
use crate::sync::{AtomicU64, Ordering};
use crate::wait::OsFutex;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64 as LocalU64, Ordering as LocalOrdering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// How a process watches a queue's participants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Supervision {
    /// A background thread (one per process, for all its queues) notices dead participants
    /// within milliseconds and repairs what they left. The default.
    #[default]
    Thread,
    /// No thread. Dead participants are repaired when a handle opens the queue, when
    /// [`Supervisor::run_once`](crate::Supervisor::run_once) is called, and by a blocked
    /// call of this process every 100 ms while it waits.
    Manual,
}

/// What happens to a message whose consumer died before acknowledging it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// It is delivered again to another consumer (at-least-once). The default.
    #[default]
    AtLeastOnce,
    /// It is dropped (at-most-once).
    AtMostOnce,
}

/// Creation options (validated).
#[derive(Debug, Clone)]
pub(crate) struct CreateOptions {
    pub name: Option<String>,
    pub capacity: usize,
    pub slots: Option<usize>,
    pub max_participants: usize,
    pub max_message_size: u64,
    pub max_payload_bytes: u64,
    pub delivery: Delivery,
    pub max_deliveries: u32,
}

/// Dimensions read once at attach, validated, and never re-read from shared memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub geometry: Geometry,
    pub max_message_size: u64,
    pub max_payload_bytes: u64,
    pub at_most_once: bool,
    pub max_deliveries: u64,
    pub bitmap_words: usize,
}

/// A participant record this process holds: its index, ACTIVE word, and the descriptor
/// whose OFD lock on byte `1 + idx` proves it alive.
pub(crate) struct Reg {
    pub idx: u16,
    pub word: u64,
    _lock: LockFile,
}

/// One process's attachment to one queue.
pub(crate) struct Queue {
    pub name: String,
    map: os::Mapping,
    /// Holds the shared lifecycle lock; used to probe other participants' locks.
    probe: LockFile,
    /// The fork epoch of the process that attached (`fork.rs`): in a forked child this
    /// attachment is foreign, and nothing of it may change shared memory.
    epoch: u64,
    pub(crate) ino: u64,
    pub dims: Dims,
    pub segs: Segments,
    pub futex: OsFutex,
    monitor: Mutex<Option<Reg>>,
    pub supervision: Supervision,
    /// Process-local cache of the roster, one word so it is never torn:
    /// `epoch (low 32 bits) << 32 | senders << 16 | receivers`.
    peers: LocalU64,
    /// A per-process spread for slot scans.
    cursor: LocalU64,
    /// [`User`]s of this attachment; changed only under the `REGISTRY` lock.
    users: std::sync::atomic::AtomicUsize,
    /// Set (under the `REGISTRY` lock) when the last user left; never reused after.
    detached: std::sync::atomic::AtomicBool,
    /// Set when this process leaves on a signal (see `abandon`).
    abandoned: std::sync::atomic::AtomicBool,
    /// Operations of this process's handles under way (see `enter`).
    ops: std::sync::atomic::AtomicUsize,
    /// Held while this process runs recovery on this queue (`supervisor::recover_one`):
    /// the lease admits its holder again and every runner of a process shares one lease
    /// word, so this is what keeps two threads of one process from repairing at once.
    pub(crate) recovering: Mutex<()>,
}

/// A counted use of a process's attachment (held by every participant and by a
/// [`Supervisor`](crate::Supervisor)). When the last one goes, the process detaches right
/// there, synchronously: releases its monitor record and, if no other process is
/// attached, unlinks the queue. (Plain `Arc` counting would not do: the supervisor thread
/// briefly holds `Arc`s too, and the last handle's drop must leave `/dev/shm` clean before
/// it returns.)
pub(crate) struct User(Arc<Queue>);

impl User {
    /// The attachment itself (for the supervisor thread, which does not count as a user).
    pub fn arc(&self) -> &Arc<Queue> {
        &self.0
    }
}

impl std::ops::Deref for User {
    type Target = Queue;
    fn deref(&self) -> &Queue {
        &self.0
    }
}

impl Clone for User {
    fn clone(&self) -> User {
        let _g = lock(&REGISTRY);
        self.0.users.fetch_add(1, LocalOrdering::Relaxed);
        User(self.0.clone())
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let mut g = lock(&REGISTRY);
        if self.0.users.fetch_sub(1, LocalOrdering::Relaxed) == 1 {
            self.0.detached.store(true, LocalOrdering::Relaxed);
            g.retain(|w| !std::ptr::eq(w.as_ptr(), Arc::as_ptr(&self.0)) && w.strong_count() > 0);
            drop(g);
            self.0.detach();
        }
    }
}

static REGISTRY: Mutex<Vec<Weak<Queue>>> = Mutex::new(Vec::new());

/// The registry lock, for the fork prepare handler (`fork.rs`).
pub(crate) fn lock_registry() -> std::sync::MutexGuard<'static, Vec<Weak<Queue>>> {
    lock(&REGISTRY)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh name: `q-<pid>-<random>`.
pub(crate) fn unique_name() -> String {
    format!("q-{}-{:016x}", std::process::id(), rand::random::<u64>())
}

impl Queue {
    /// The algorithms' view of the tables.
    pub fn shared(&self) -> Shared<'_> {
        view(&self.map, &self.dims)
    }

    /// The first `bitmap_words` words of a waiter bitmap.
    pub fn bitmap<'a>(&self, b: &'a [AtomicU64; BITMAP_WORDS]) -> &'a [AtomicU64] {
        &b[..self.dims.bitmap_words]
    }

    /// Creates a queue and attaches to it.
    ///
    /// `handles` makes the creator's handles *before* the queue gets its name, so that an
    /// opener never finds a new queue without its creator's sender and receiver (a
    /// receiver would see `Disconnected` in that moment).
    pub fn create<T>(
        o: &CreateOptions,
        supervision: Supervision,
        handles: impl FnOnce(User) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let name = match &o.name {
            Some(n) => n.clone(),
            None => unique_name(),
        };
        os::validate_name(&name)?;
        let bad = |m: String| Err(Error::new(ErrorKind::InvalidArgument, m));
        if o.capacity == 0 || o.capacity > MAX_CAPACITY as usize {
            return bad(format!(
                "capacity must be between 1 and {MAX_CAPACITY}, not {}",
                o.capacity
            ));
        }
        let slots = o.slots.unwrap_or(2 * o.capacity + 16);
        if slots < o.capacity + 1 || slots > MAX_SLOTS as usize {
            return bad(format!(
                "slots must be between capacity + 1 ({}) and {MAX_SLOTS}, not {slots}",
                o.capacity + 1
            ));
        }
        if o.max_participants < 2 || o.max_participants > MAX_PARTICIPANTS as usize - 1 {
            return bad(format!(
                "max_participants must be between 2 and {}, not {}",
                MAX_PARTICIPANTS - 1,
                o.max_participants
            ));
        }
        if o.max_deliveries == 0 || o.max_deliveries > layout::MAX_DELIVERIES {
            return bad(format!(
                "max_deliveries must be between 1 and {}, not {}",
                layout::MAX_DELIVERIES,
                o.max_deliveries
            ));
        }
        let max_msg = crate::segment::MAX_MESSAGE_SIZE;
        if o.max_message_size == 0 || o.max_message_size > max_msg {
            return bad(format!(
                "max_message_size must be between 1 and {max_msg} bytes, not {}",
                o.max_message_size
            ));
        }
        let need = crate::segment::segment_size_for(o.max_message_size);
        if o.max_payload_bytes < need {
            return bad(format!(
                "max_payload_bytes ({}) must be at least {need}: a message of max_message_size ({}) bytes occupies a segment of {need} bytes (whole pages; messages up to {INLINE_BYTES} bytes need none)",
                o.max_payload_bytes, o.max_message_size
            ));
        }
        let g = Geometry::new(o.capacity as u32, slots as u32, o.max_participants as u32);
        // Removes the temporary name however we leave.
        struct Tmp(std::path::PathBuf);
        impl Drop for Tmp {
            fn drop(&mut self) {
                let _ = os::unlink(&self.0);
            }
        }
        // Create the header under a temporary name and take our shared lifecycle lock on
        // it. `gc` removes a temporary header it can lock exclusively (its creator died
        // before linking it), so in the instant between our create and our lock it may
        // remove ours: then (the lock refused, or the name no longer ours) start over
        // with a new temporary name. Once we hold the lock, `gc` leaves it alone.
        let mut attempt = 0;
        let (file, tmp) = loop {
            attempt += 1;
            let path = std::path::PathBuf::from(format!(
                "{}/.shmq-new.{name}.{}.{:08x}",
                os::SHM_DIR,
                std::process::id(),
                rand::random::<u32>()
            ));
            let file = match LockFile::open(|| os::create_new(&path)) {
                Ok(f) => f,
                // Someone else's name (another thread of ours drew the same number).
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                    continue
                }
                Err(e) => {
                    return Err(Error::io(
                        "cannot create a shared-memory object in /dev/shm",
                        e,
                    ))
                }
            };
            let tmp = Tmp(path);
            let locked = os::try_lock(&file, os::LIFECYCLE_BYTE, libc::F_RDLCK as libc::c_short)
                .map_err(|e| Error::io("cannot lock the queue header", e))?;
            let ours = locked
                && matches!(
                    (std::fs::metadata(&tmp.0), file.metadata()),
                    (Ok(a), Ok(b)) if a.ino() == b.ino()
                );
            if ours {
                break (file, tmp);
            }
            if attempt >= 100 {
                return Err(Error::new(
                    ErrorKind::Io,
                    "cannot create a shared-memory object in /dev/shm: something keeps removing it (100 attempts)",
                ));
            }
        };
        os::size_and_reserve(&file, g.total_size).map_err(|e| {
            Error::io(
                format!(
                    "cannot reserve {} bytes in /dev/shm for the queue header",
                    g.total_size
                ),
                e,
            )
        })?;
        let map = map_header(&file, g.total_size)
            .map_err(|e| Error::io("cannot map the queue header", e))?;
        init_header(&map, &g, o);
        let ino = file
            .metadata()
            .map_err(|e| Error::io("cannot stat the queue header", e))?
            .ino();
        let dims = validate(&map, g.total_size)?;
        let q = Queue::finish_attach(name.clone(), map, file, ino, dims, supervision)?;
        let out = handles(q)?;
        // Publish the name last. If it is taken, `out` is dropped: the handles leave and
        // the detach finds that the path is not our inode, so it unlinks nothing.
        let final_path = os::header_path(&name);
        std::fs::hard_link(&tmp.0, &final_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::new(
                    ErrorKind::AlreadyExists,
                    format!("a queue named {name:?} exists already"),
                )
            } else {
                Error::io(format!("cannot create {}", final_path.display()), e)
            }
        })?;
        Ok(out)
    }

    /// Attaches to an existing queue (or reuses this process's attachment).
    pub fn open(name: &str, supervision: Supervision) -> Result<User, Error> {
        os::validate_name(name)?;
        let path = os::header_path(name);
        let msg = || {
            format!("no queue named {name:?} (is the name right, and is the queue's creator still running?)")
        };
        let not_found = || Error::io(msg(), std::io::Error::from(std::io::ErrorKind::NotFound));
        for _attempt in 0..50 {
            let file = match LockFile::open(|| os::open_rw(&path)) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::io(msg(), e))
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(Error::io(
                        format!("no permission to open queue {name:?} ({})", path.display()),
                        e,
                    ))
                }
                Err(e) => return Err(Error::io(format!("cannot open {}", path.display()), e)),
            };
            let ino = file
                .metadata()
                .map_err(|e| Error::io("cannot stat the queue header", e))?
                .ino();
            if let Some(q) = find_attached(name, ino) {
                return Ok(q);
            }
            let locked = os::try_lock(&file, os::LIFECYCLE_BYTE, libc::F_RDLCK as libc::c_short)
                .map_err(|e| Error::io("cannot lock the queue header", e))?;
            if !locked {
                // Someone is destroying it right now: look again shortly.
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            match std::fs::metadata(&path) {
                Ok(m) if m.ino() == ino => {}
                _ => continue, // destroyed (and maybe recreated) meanwhile
            }
            let len =
                os::file_len(&file).map_err(|e| Error::io("cannot stat the queue header", e))?;
            if len < std::mem::size_of::<Control>() as u64 {
                return Err(Error::new(
                    ErrorKind::NotAQueue,
                    format!(
                        "{} is not an shmq queue (only {len} bytes long)",
                        path.display()
                    ),
                ));
            }
            let map =
                map_header(&file, len).map_err(|e| Error::io("cannot map the queue header", e))?;
            let dims = validate(&map, len)
                .map_err(|e| Error::new(e.kind(), format!("{}: {}", path.display(), e)))?;
            return Queue::finish_attach(name.to_string(), map, file, ino, dims, supervision);
        }
        Err(not_found())
    }

    fn finish_attach(
        name: String,
        map: os::Mapping,
        probe: LockFile,
        ino: u64,
        dims: Dims,
        supervision: Supervision,
    ) -> Result<User, Error> {
        let q = Arc::new(Queue {
            segs: Segments::new(&name, dims.geometry.slot_count as usize),
            name,
            map,
            probe,
            epoch: crate::fork::epoch(),
            ino,
            dims,
            futex: OsFutex,
            monitor: Mutex::new(None),
            supervision,
            peers: LocalU64::new(u64::MAX),
            cursor: LocalU64::new(rand::random::<u32>() as u64),
            users: std::sync::atomic::AtomicUsize::new(1),
            detached: std::sync::atomic::AtomicBool::new(false),
            abandoned: std::sync::atomic::AtomicBool::new(false),
            ops: std::sync::atomic::AtomicUsize::new(0),
            recovering: Mutex::new(()),
        });
        let q = User(q);
        let mon = q.register(Role::Monitor)?;
        *lock(&q.monitor) = Some(mon);
        // open() repairs what dead participants left before it returns.
        crate::supervisor::repair(&q)?;
        lock(&REGISTRY).push(Arc::downgrade(q.arc()));
        if supervision == Supervision::Thread {
            crate::supervisor::watch();
        }
        Ok(q)
    }

    /// This process's monitor record's lease word.
    pub fn lease_word(&self) -> Option<u64> {
        lock(&self.monitor)
            .as_ref()
            .map(|m| layout::lease_word(m.idx, part_gen(m.word)))
    }

    /// Whether participant `i`, whose record word was `w`, is dead. Only positive evidence
    /// counts: its lock byte is free while the record still holds `w`, or its recorded
    /// process is gone (`/proc` says no such pid, or the pid belongs to a process with
    /// another start time, or to a zombie with no live thread; same pid namespace only)
    /// although some other process holds the lock (a forked child that inherited the
    /// descriptor before it was closed, see `fork.rs`). Any failure to look (EMFILE,
    /// ENFILE, ENOMEM, EACCES, EINTR, …) means alive: a live participant judged dead would
    /// have its messages redelivered while it reads them and its loans freed under it.
    pub fn is_dead(&self, i: u16, w: u64) -> bool {
        if self.foreign() {
            return false; // our probe is /dev/null in a forked child (`fork.rs`)
        }
        let q = self.shared();
        let rec = &q.parts[i as usize];
        match os::is_locked(&self.probe, os::part_lock_byte(i)) {
            Ok(false) => return rec.state.load(Ordering::Acquire) == w,
            Ok(true) => {}
            Err(_) => return false, // cannot tell: never judge dead on doubt
        }
        let ns = rec.pid_ns.load(Ordering::Relaxed);
        let pid = rec.pid.load(Ordering::Relaxed);
        let start = rec.start_time.load(Ordering::Relaxed);
        // The identity must be the one its owner wrote for this very generation of the
        // record: a process scribbling over the header (or a torn read) must not get a
        // live participant, whose lock is held, judged dead by a made-up pid.
        let check = rec.id_check.load(Ordering::Relaxed);
        if check != layout::id_check(pid, start, ns, part_gen(w)) {
            return false;
        }
        if ns == 0 || !matches!(os::pid_namespace(), Ok(mine) if mine == ns) {
            return false;
        }
        if start == 0 {
            return false; // recorded without a start time: the pid alone proves nothing
        }
        // A zombie *leader* is not a dead process while other threads of it run (the
        // leader shows `Z` as soon as the main thread exits): count its live tasks.
        let gone = match os::proc_stat(pid) {
            Ok(None) => true,
            Ok(Some(st)) if st.start_time != start => true,
            Ok(Some(st)) if st.state == b'Z' || st.state == b'X' => {
                matches!(os::live_tasks(pid), Ok(0))
            }
            Ok(Some(_)) | Err(_) => false,
        };
        gone && rec.state.load(Ordering::Acquire) == w
    }

    /// Tells the other processes' watchers that the roster changed (a new participant,
    /// possibly of a process they do not watch yet), so they look now rather than at
    /// their next rescan: a touch of the header, which they watch with inotify.
    fn announce(&self) {
        os::touch(&self.probe);
    }

    /// Adds an inotify watch on this queue's header (see `announce`).
    pub fn watch_roster(&self, ino: &os::Inotify) -> Option<i32> {
        ino.watch_attrib(&self.probe)
    }

    /// Takes a participant record for `role`.
    pub fn register(&self, role: Role) -> Result<Reg, Error> {
        let q = self.shared();
        let id = os::my_identity().map_err(|e| {
            Error::io(
                "cannot read this process's identity in /proc (needed to register)",
                e,
            )
        })?;
        let parts = self.dims.geometry.max_participants as u16;
        for round in 0..20 {
            for i in 0..parts {
                // A description of our own for this record's lock: reopen the very file
                // we mapped (not the path, which may name a newer queue by now).
                let fd = LockFile::open(|| os::reopen(&self.probe))
                    .map_err(|e| Error::io("cannot reopen the queue header", e))?;
                let byte = os::part_lock_byte(i);
                if !os::try_lock(&fd, byte, libc::F_WRLCK as libc::c_short)
                    .map_err(|e| Error::io("cannot lock a participant record", e))?
                {
                    continue;
                }
                match crate::roster::register(&q, i, role, id) {
                    Ok(word) => {
                        self.announce();
                        return Ok(Reg {
                            idx: i,
                            word,
                            _lock: fd,
                        });
                    }
                    Err(w) if part_role(w).is_some() => {
                        // We hold its lock: its owner is dead. Recover it, if nobody else is
                        // recovering right now, then take it.
                        if crate::supervisor::recover_one(self, i, w) {
                            if let Ok(word) = crate::roster::register(&q, i, role, id) {
                                self.announce();
                                return Ok(Reg {
                                    idx: i,
                                    word,
                                    _lock: fd,
                                });
                            }
                        }
                    }
                    Err(_) => {}
                }
                // Dropping `fd` releases the lock.
            }
            std::thread::sleep(Duration::from_millis(1 + round));
        }
        Err(Error::new(
            ErrorKind::TooManyParticipants,
            format!(
                "all {parts} participant records of queue {:?} are taken by live handles (raise Builder::max_participants)",
                self.name
            ),
        ))
    }

    /// Leaves cleanly: frees whatever the record still owns, clears its waiter bits,
    /// releases the record, and wakes everyone so they re-check disconnection.
    pub fn leave(&self, reg: Reg) {
        if self.foreign() {
            return; // the parent's record (`fork.rs`); dropping `reg` closes our copy
        }
        let q = self.shared();
        crate::recovery::recover(&q, reg.idx, reg.word, false);
        crate::wait::bump(&self.futex, &q.ctl.not_empty);
        crate::wait::bump(&self.futex, &q.ctl.not_full);
        drop(reg); // closes the lock descriptor last
    }

    /// `(senders, receivers)` attached, from a cache refreshed whenever the roster epoch
    /// moves.
    pub fn peers(&self) -> (u32, u32) {
        let q = self.shared();
        // SYNC POINT: roster (Acquire: pairs with the epoch bump after a record changes).
        let epoch = q.ctl.counters.roster_epoch.load(Ordering::Acquire) as u32;
        let v = self.peers.load(LocalOrdering::Relaxed);
        if (v >> 32) as u32 == epoch && v != u64::MAX {
            return (((v >> 16) & 0xFFFF) as u32, (v & 0xFFFF) as u32);
        }
        let (tx, rx) = crate::roster::count_roles(&q);
        let packed = (epoch as u64) << 32 | (tx.min(0xFFFF) as u64) << 16 | rx.min(0xFFFF) as u64;
        self.peers.store(packed, LocalOrdering::Relaxed);
        (tx, rx)
    }

    /// Whether this attachment was inherited from an ancestor process by `fork`
    /// (`fork.rs`): then it must not change shared memory.
    #[inline]
    pub fn foreign(&self) -> bool {
        self.epoch != crate::fork::epoch()
    }

    /// A starting point for slot scans.
    pub fn next_cursor(&self) -> usize {
        self.cursor.fetch_add(1, LocalOrdering::Relaxed) as usize
    }

    /// How long one futex sleep may last before the waiter looks at its peers itself.
    ///
    /// 100 ms in both modes: in `Thread` mode the supervisor hears of a death at once
    /// through pidfds, but only for peers it has started watching (it hears of new ones
    /// through inotify within about a millisecond, or at its 250 ms rescan where inotify
    /// is missing), so a blocked waiter also checks on a peer that died younger than that.
    pub fn wait_slice(&self) -> Duration {
        Duration::from_millis(100)
    }
}

impl Queue {
    /// Leaves the queue for this process: releases the monitor record and, if no other
    /// process is attached (our shared lifecycle lock upgrades to exclusive), unlinks the
    /// header and every segment object. Idempotent.
    fn detach(&self) {
        if self.foreign() {
            return; // the parent's: a forked child forgets it (`fork.rs`)
        }
        let Some(mon) = lock(&self.monitor).take() else {
            return;
        };
        self.leave(mon);
        self.segs.clear();
        // Upgrade our shared lifecycle lock to exclusive: that succeeds only if no other
        // process holds the lock (see `wait_until_last`).
        if self.wait_until_last(Duration::from_secs(5)) {
            destroy_or_report(&self.name, self.ino);
        }
        let _ = os::try_lock(
            &self.probe,
            os::LIFECYCLE_BYTE,
            libc::F_UNLCK as libc::c_short,
        );
    }
}

impl Queue {
    /// Whether this process is the last one attached: takes the lifecycle lock
    /// exclusively (and keeps it; the caller unlinks, then unlocks).
    ///
    /// The exclusive lock is granted only once no other process holds its shared one. If
    /// the first attempt fails, we drop our own shared lock (so that when several
    /// processes leave at once, whoever tries last after all have dropped theirs wins) and
    /// keep trying, every millisecond, for as long as every other participant record
    /// belongs to a process on its way out, up to `limit`. Why wait at all: a process
    /// killed an instant ago releases its descriptors, and so its locks, only at the end
    /// of its exit (after its mappings, which can take a while), and its records may
    /// already be recovered; a last process that gave up at once would leave the queue in
    /// `/dev/shm` for good. A live peer's record (or a newcomer's) ends the wait at once:
    /// then the queue is not ours to remove. Evidence of "on its way out" is positive:
    /// `/proc` says the process is exiting (`PF_EXITING`), a zombie, or gone; a record of
    /// another pid namespace, or one we cannot check, counts as live.
    fn wait_until_last(&self, limit: Duration) -> bool {
        let (wr, un) = (
            libc::F_WRLCK as libc::c_short,
            libc::F_UNLCK as libc::c_short,
        );
        if matches!(os::try_lock(&self.probe, os::LIFECYCLE_BYTE, wr), Ok(true)) {
            return true;
        }
        let _ = os::try_lock(&self.probe, os::LIFECYCLE_BYTE, un);
        let t0 = std::time::Instant::now();
        loop {
            if matches!(os::try_lock(&self.probe, os::LIFECYCLE_BYTE, wr), Ok(true)) {
                return true;
            }
            let still_ours = matches!(
                std::fs::metadata(os::header_path(&self.name)),
                Ok(m) if m.ino() == self.ino
            );
            if !still_ours || t0.elapsed() >= limit || !self.only_leavers_remain() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Whether every participant record of another process belongs to a process that is
    /// exiting or gone (see [`wait_until_last`](Self::wait_until_last)).
    fn only_leavers_remain(&self) -> bool {
        let q = self.shared();
        let me = std::process::id();
        let my_ns = os::pid_namespace().ok();
        q.parts.iter().all(|rec| {
            if part_role(rec.state.load(Ordering::Acquire)).is_none() {
                return true;
            }
            let ns = rec.pid_ns.load(Ordering::Relaxed);
            if ns == 0 || Some(ns) != my_ns {
                return false;
            }
            let pid = rec.pid.load(Ordering::Relaxed);
            if pid == me {
                return true; // our own (an abandoning process keeps its records)
            }
            match os::proc_stat(pid) {
                Ok(None) => true,
                Ok(Some(st)) if st.start_time != rec.start_time.load(Ordering::Relaxed) => true,
                // A zombie leader whose other threads still run is alive.
                Ok(Some(st)) if st.state == b'Z' => matches!(os::live_tasks(pid), Ok(0)),
                Ok(Some(st)) => st.exiting(),
                Err(_) => false,
            }
        })
    }

    /// Leaves the queue on the way out of the process (`shutdown::release_all`): from
    /// now on every operation of this process's handles fails with `Disconnected`;
    /// operations already under way finish (a send that commits is delivered); then, if
    /// no other process is attached, the queue is unlinked.
    ///
    /// The records themselves stay ACTIVE, loans LOANED and held messages HELD until the
    /// process exits and the others' supervisors recover it: another thread of ours may
    /// still be writing into a loan or reading a `Message`, and handing its slot on
    /// under it would let that write land in someone else's message, or let the next
    /// producer overwrite bytes behind a live `&[u8]`. (Until 2c7ff0e this handed held
    /// messages back at once, including those another thread was still reading.)
    pub fn abandon(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.abandoned.store(true, SeqCst);
        let s = self.shared();
        // Wake our own blocked threads: their next poll sees `abandoned`.
        crate::wait::bump(&self.futex, &s.ctl.not_empty);
        crate::wait::bump(&self.futex, &s.ctl.not_full);
        let t0 = std::time::Instant::now();
        while self.ops.load(SeqCst) != 0 && t0.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_micros(100));
        }
        crate::wait::bump(&self.futex, &s.ctl.not_empty);
        crate::wait::bump(&self.futex, &s.ctl.not_full);
        if self.wait_until_last(Duration::from_secs(1)) {
            destroy_or_report(&self.name, self.ino);
        }
        let _ = os::try_lock(
            &self.probe,
            os::LIFECYCLE_BYTE,
            libc::F_UNLCK as libc::c_short,
        );
    }

    /// Marks the start of an operation on shared memory by a handle of this process;
    /// `None` once the process is leaving (see [`abandon`](Self::abandon)).
    pub fn enter(&self) -> Option<OpGuard<'_>> {
        use std::sync::atomic::Ordering::SeqCst;
        self.ops.fetch_add(1, SeqCst);
        if self.abandoned.load(SeqCst) {
            self.ops.fetch_sub(1, SeqCst);
            return None;
        }
        Some(OpGuard(self))
    }
}

/// An operation under way (see [`Queue::enter`]).
pub(crate) struct OpGuard<'a>(&'a Queue);

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        self.0.ops.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Unlinks the header of `name` (if it is still inode `ino`) and its segment objects.
///
/// # Errors
/// The first failure to unlink (the rest is still attempted): another user's objects in
/// the sticky `/dev/shm` cannot be removed by us.
fn destroy_objects(name: &str, ino: u64) -> std::io::Result<()> {
    let path = os::header_path(name);
    if !matches!(std::fs::metadata(&path), Ok(m) if m.ino() == ino) {
        return Ok(());
    }
    let a = match os::unlink(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    let b = os::unlink_segments(name);
    a.and(b)
}

/// [`destroy_objects`] for the last process out (in a `Drop`, with nobody to return an
/// error to): a failure is reported on stderr, since the queue would otherwise stay in
/// `/dev/shm` unnoticed.
fn destroy_or_report(name: &str, ino: u64) {
    if let Err(e) = destroy_objects(name, ino) {
        eprintln!(
            "shmq: cannot remove queue {name:?} from /dev/shm ({e}); its owner can remove it with `shmq gc --force`"
        );
    }
}

fn find_attached(name: &str, ino: u64) -> Option<User> {
    let g = lock(&REGISTRY);
    let q = g.iter().filter_map(Weak::upgrade).find(|q| {
        q.name == name && q.ino == ino && !q.detached.load(LocalOrdering::Relaxed) && !q.foreign()
    })?;
    q.users.fetch_add(1, LocalOrdering::Relaxed);
    Some(User(q))
}

/// Every queue this process is attached to.
pub(crate) fn attached() -> Vec<Arc<Queue>> {
    lock(&REGISTRY)
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|q| !q.detached.load(LocalOrdering::Relaxed) && !q.foreign())
        .collect()
}

/// Maps the header through a description of its own, never through `probe`, the one that
/// holds our lifecycle lock: a mapping keeps its description alive, and OFD locks live as
/// long as their description, so a header mapped through `probe` would keep our lock
/// alive after we are gone for as long as any copy of the mapping lingers (a killed
/// multi-threaded process being torn down, a forked child), and the last process out
/// would fail to unlink.
fn map_header(probe: &File, len: u64) -> std::io::Result<os::Mapping> {
    os::Mapping::new(&os::reopen(probe)?, len)
}

/// The algorithms' view of a validated header mapping.
pub(crate) fn view<'a>(map: &'a os::Mapping, dims: &Dims) -> Shared<'a> {
    let g = &dims.geometry;
    let base = map.ptr();
    // Every type in the tables is valid for any bit pattern (atomics, integers, bytes),
    // and shared mutation goes through atomics or the slot protocol.
    // SAFETY: `validate` checked the mapping is at least `g.total_size` bytes, page-aligned,
    // with the tables at these offsets (multiples of their alignment); `map` outlives them.
    unsafe {
        Shared {
            ctl: &*(base as *const Control),
            parts: std::slice::from_raw_parts(
                base.add(g.parts_off as usize) as *const PartRec,
                g.max_participants as usize,
            ),
            cells: std::slice::from_raw_parts(
                base.add(g.cells_off as usize) as *const AtomicU64,
                g.capacity as usize,
            ),
            slots: std::slice::from_raw_parts(
                base.add(g.slots_off as usize) as *const SlotRec,
                g.slot_count as usize,
            ),
            cap: g.capacity as u64,
            at_most_once: dims.at_most_once,
            max_deliveries: dims.max_deliveries,
        }
    }
}

/// Maps the header of `name` for inspection only: no lock, no participant record.
pub(crate) fn peek(name: &str) -> Result<(os::Mapping, File, Dims), Error> {
    os::validate_name(name)?;
    let path = os::header_path(name);
    let file = os::open_rw(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::io(
            format!("no queue named {name:?} (is the name right? `shmq list` shows the queues)"),
            e,
        ),
        _ => Error::io(format!("cannot open {}", path.display()), e),
    })?;
    let len = os::file_len(&file).map_err(|e| Error::io("cannot stat the queue header", e))?;
    if len < std::mem::size_of::<Control>() as u64 {
        return Err(Error::new(
            ErrorKind::NotAQueue,
            format!(
                "{} is not an shmq queue (only {len} bytes long)",
                path.display()
            ),
        ));
    }
    let map =
        os::Mapping::new(&file, len).map_err(|e| Error::io("cannot map the queue header", e))?;
    let dims = validate(&map, len)
        .map_err(|e| Error::new(e.kind(), format!("{}: {}", path.display(), e)))?;
    Ok((map, file, dims))
}

fn init_header(map: &os::Mapping, g: &Geometry, o: &CreateOptions) {
    let base = map.ptr();
    // SAFETY: the mapping is `g.total_size` bytes, freshly created and zero-filled, not yet
    // visible to any other process (it is under a temporary name), page-aligned; the
    // offsets come from `Geometry` and are multiples of each table's alignment.
    unsafe {
        let c = &mut *(base as *mut Control);
        c.magic = MAGIC;
        c.layout_version = LAYOUT_VERSION;
        c.capacity = g.capacity;
        c.slot_count = g.slot_count;
        c.max_participants = g.max_participants;
        c.inline_bytes = INLINE_BYTES as u32;
        c.flags = match o.delivery {
            Delivery::AtMostOnce => layout::FLAG_AT_MOST_ONCE,
            Delivery::AtLeastOnce => 0,
        };
        c.max_deliveries = o.max_deliveries;
        c.max_message_size = o.max_message_size;
        c.max_payload_bytes = o.max_payload_bytes;
        c.total_size = g.total_size;
        c.parts_off = g.parts_off;
        c.cells_off = g.cells_off;
        c.slots_off = g.slots_off;
        let cells = base.add(g.cells_off as usize) as *mut AtomicU64;
        for i in 0..g.capacity {
            cells
                .add(i as usize)
                .write(AtomicU64::new(layout::init_cell(i)));
        }
        let slots = base.add(g.slots_off as usize) as *mut SlotRec;
        for i in 0..g.slot_count as usize {
            slots.add(i).write(SlotRec::default());
        }
        // SYNC POINT: header-init (Release: every field above; pairs with the Acquire
        // load in `validate`).
        c.init.store(INIT_READY, Ordering::Release);
    }
}

/// Checks a mapped header of `len` bytes and reads its dimensions.
pub(crate) fn validate(map: &os::Mapping, len: u64) -> Result<Dims, Error> {
    let not_queue = |m: &str| Error::new(ErrorKind::NotAQueue, format!("not an shmq queue: {m}"));
    // SAFETY: the caller mapped at least size_of::<Control>() bytes (checked), page-aligned;
    // every field of Control is valid for any bit pattern.
    let c = unsafe { &*(map.ptr() as *const Control) };
    if c.magic != MAGIC {
        return Err(not_queue("bad magic number"));
    }
    if c.layout_version != LAYOUT_VERSION {
        return Err(Error::new(
            ErrorKind::VersionMismatch,
            format!(
                "queue has shared layout version {}, this shmq uses version {LAYOUT_VERSION} (all processes must use compatible shmq versions)",
                c.layout_version
            ),
        ));
    }
    // SYNC POINT: header-init (Acquire).
    if c.init.load(Ordering::Acquire) != INIT_READY {
        return Err(Error::corrupt("queue header was never completed"));
    }
    let (cap, slots, parts) = (c.capacity, c.slot_count, c.max_participants);
    if cap == 0
        || cap > MAX_CAPACITY
        || slots == 0
        || slots > MAX_SLOTS
        || parts == 0
        || parts >= MAX_PARTICIPANTS
    {
        return Err(Error::corrupt(format!(
            "queue header has impossible dimensions (capacity {cap}, slots {slots}, participants {parts})"
        )));
    }
    if c.inline_bytes != INLINE_BYTES as u32 {
        return Err(Error::corrupt("queue header has a foreign inline size"));
    }
    let g = Geometry::new(cap, slots, parts);
    if (c.parts_off, c.cells_off, c.slots_off, c.total_size)
        != (g.parts_off, g.cells_off, g.slots_off, g.total_size)
    {
        return Err(Error::corrupt(
            "queue header's table offsets do not match its dimensions",
        ));
    }
    if len < g.total_size || map.len() < g.total_size as usize {
        return Err(Error::new(
            ErrorKind::NotAQueue,
            format!(
                "queue header is truncated ({len} bytes, needs {})",
                g.total_size
            ),
        ));
    }
    if c.max_message_size == 0
        || c.max_message_size > crate::segment::MAX_MESSAGE_SIZE
        || c.max_payload_bytes < crate::segment::segment_size_for(c.max_message_size)
    {
        return Err(Error::corrupt("queue header has impossible size limits"));
    }
    if c.max_deliveries == 0 || c.max_deliveries > layout::MAX_DELIVERIES {
        return Err(Error::corrupt(format!(
            "queue header has an impossible max_deliveries ({})",
            c.max_deliveries
        )));
    }
    Ok(Dims {
        geometry: g,
        max_message_size: c.max_message_size,
        max_payload_bytes: c.max_payload_bytes,
        at_most_once: c.flags & layout::FLAG_AT_MOST_ONCE != 0,
        max_deliveries: c.max_deliveries as u64,
        bitmap_words: (parts as usize).div_ceil(64),
    })
}

/// Removes the queue `name` if no process is attached to it (only says whether it would,
/// if `remove` is false). Returns whether it did (would).
///
/// # Errors
/// Why it left `shmq.<name>` alone although it may be no live queue: not a regular file
/// (a directory, symlink, socket, FIFO: never opened), too short or without our magic
/// number (`NotAQueue`), not ours to open or lock (`PermissionDenied`), or removing it
/// failed (another user's file in the sticky `/dev/shm`).
pub(crate) fn gc_one(name: &str, remove: bool) -> Result<bool, Error> {
    let path = os::header_path(name);
    let stranger = |what: &str| {
        Err(Error::new(
            ErrorKind::NotAQueue,
            format!("{} {what}; left alone", path.display()),
        ))
    };
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_file() => {}
        Ok(m) => return stranger(&format!("is not a regular file (a {})", file_kind(&m))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("cannot stat {}", path.display()), e)),
    }
    let file = match os::open_rw(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("cannot open {}", path.display()), e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("cannot stat {}", path.display()), e))?;
    if !meta.file_type().is_file() {
        return stranger("is not a regular file");
    }
    if meta.len() < std::mem::size_of::<Control>() as u64 {
        return stranger("is too short to be an shmq queue");
    }
    let map = os::Mapping::new(&file, std::mem::size_of::<Control>() as u64)
        .map_err(|e| Error::io(format!("cannot map {}", path.display()), e))?;
    // SAFETY: mapped size_of::<Control>() bytes, page-aligned; plain integers.
    let magic = unsafe { (*(map.ptr() as *const Control)).magic };
    if magic != MAGIC {
        return stranger("is not an shmq queue (no magic number)");
    }
    if !os::try_lock(&file, os::LIFECYCLE_BYTE, libc::F_WRLCK as libc::c_short)
        .map_err(|e| Error::io(format!("cannot lock {}", path.display()), e))?
    {
        return Ok(false); // a live process is attached
    }
    if remove {
        destroy_objects(name, meta.ino()).map_err(|e| {
            Error::io(
                format!("cannot remove {} or its segments", path.display()),
                e,
            )
        })?;
    }
    Ok(true)
}

/// What kind of file `m` describes, for messages.
fn file_kind(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_symlink() {
        "symbolic link"
    } else if t.is_socket() {
        "socket"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_block_device() || t.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

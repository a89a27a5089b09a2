//! The public handles: [`Sender`], [`Loan`], [`Receiver`], [`Message`].

use crate::error::{
    AckTimeoutError, Error, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError,
    TrySendError,
};
use crate::layout::{
    part_gen, sender_idx, sender_word, slot_gen, Role, SlotState, INLINE_BYTES, KIND_INLINE,
    KIND_SEGMENT,
};
use crate::queue::{Queue, Reg, User};
use crate::ring::{self, RingError};
use crate::segment::{self, GrowError, Seg};
use crate::slots;
use crate::sync::Ordering::Relaxed;
use crate::wait::{self, Wait};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One participant record held by a handle (and by its loans and messages, which keep
/// the record alive until they are gone).
pub(crate) struct Participant {
    pub q: User,
    reg: Option<Reg>,
    /// Threads of this process blocked on this participant's bit, per word:
    /// `[not_empty, not_full, acks]` (see `wait::block_on_counted`).
    blocked: [crate::sync::LocalMutex<u32>; 3],
    /// A sender's slot-scan cursor: the slot after the one it took last. Threads sharing
    /// the handle may overwrite each other's value; that only moves where a scan starts.
    cursor: std::sync::atomic::AtomicU32,
    /// A receiver's hand-backs: messages it failed to map (slot, generation, when), which
    /// it passes over for [`SKIP_FOR`] so that other receivers take them and its own
    /// later receives are not stuck behind them.
    skipped: std::sync::Mutex<Vec<(u32, u64, Instant)>>,
}

/// How long a receiver passes over a message it could not map before it tries again.
const SKIP_FOR: Duration = Duration::from_secs(1);

impl Participant {
    pub fn new(q: User, role: Role) -> Result<Arc<Participant>, Error> {
        let reg = q.register(role)?;
        Ok(Arc::new(Participant {
            q,
            reg: Some(reg),
            blocked: Default::default(),
            cursor: std::sync::atomic::AtomicU32::new(0),
            skipped: Default::default(),
        }))
    }
    fn reg(&self) -> &Reg {
        self.reg.as_ref().expect("registered until dropped")
    }
    fn idx(&self) -> u16 {
        self.reg().idx
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        if let Some(reg) = self.reg.take() {
            self.q.leave(reg); // nothing but closing its descriptor in a forked child
        }
    }
}

/// The sender and receiver operations, on the participant of the calling process (see
/// [`Handle`]).
impl Participant {
    fn disconnected(self: &Arc<Self>) -> bool {
        self.q.peers().1 == 0
    }

    fn check_len(self: &Arc<Self>, len: usize) -> Result<u64, TrySendError> {
        let max = self.q.dims.max_message_size;
        let len = len as u64;
        if len > max {
            return Err(TrySendError::TooLarge { len, max });
        }
        Ok(len)
    }

    /// One attempt to take a payload slot of `len` bytes. `Ok(None)`: none free (or the
    /// payload bound is reached) right now.
    fn alloc(self: &Arc<Self>, len: u64) -> Result<Option<Loan>, Error> {
        let q = &self.q;
        let _op = q.enter().ok_or_else(Error::closed)?;
        let s = q.shared();
        let me = self.idx();
        // Slots whose segment object this process may not open (another user's, in a
        // queue opened to several users by hand: outside the trust model, but a sender
        // must not be stuck on them): passed over in this call. Empty, and not
        // allocated, on every ordinary send.
        let mut denied: Vec<u32> = Vec::new();
        let mut denial: Option<Error> = None;
        let (slot, word, ptr, seg) = loop {
            let fits = |i: u32| {
                (segment::is_inline(len) || s.slots[i as usize].seg_size.load(Relaxed) >= len)
                    && !denied.contains(&i)
            };
            // A payload in a segment tries the slot whose segment was freed last first
            // (mapped and warm everywhere), then scans from this sender's cursor; an
            // inline payload only scans: the hint line is written by every segment ack,
            // and reading it on every small send would move it between cores twice per
            // message.
            let cursor = &self.cursor;
            let hinted = || {
                let hint = s.ctl.free_hint.load(Relaxed) as usize;
                slots::take_if_free(&s, me, hint, fits)
            };
            let got = (!segment::is_inline(len))
                .then(hinted)
                .flatten()
                .or_else(|| slots::alloc(&s, me, cursor.load(Relaxed) as usize, fits));
            let Some((slot, word)) = got else {
                // Only slots we may not open are free: say so rather than wait on them.
                return denial.map_or(Ok(None), Err);
            };
            cursor.store(slot.wrapping_add(1), Relaxed);
            crate::fault::point("send.alloc");
            if segment::is_inline(len) {
                let p = s.slots[slot as usize].inline.with_mut(|p| p as *mut u8);
                break (slot, word, p, None);
            }
            let d = &q.dims;
            match q
                .segs
                .for_write(&s, slot, len, me, d.max_message_size, d.max_payload_bytes)
            {
                Ok(seg) => break (slot, word, seg.ptr(), Some(seg)),
                Err(e) => {
                    slots::free(&s, slot, word);
                    match e {
                        GrowError::PoolFull => return Ok(None),
                        GrowError::Failed(e)
                            if e.kind() == crate::ErrorKind::PermissionDenied
                                && denied.len() < s.slots.len() =>
                        {
                            denied.push(slot);
                            denial.get_or_insert(e);
                        }
                        GrowError::Failed(e) => return Err(e),
                    }
                }
            }
        };
        let rec = &s.slots[slot as usize];
        // Owner-only fields (A2), published by the ring's commit. The storage kind is
        // recorded, never re-derived from `len`: `Loan::truncate` may shrink a segment
        // message to the inline size, and its bytes are still in the segment.
        rec.len.store(len, Relaxed);
        rec.kind.store(
            if seg.is_some() {
                KIND_SEGMENT
            } else {
                KIND_INLINE
            },
            Relaxed,
        );
        rec.deliveries.store(1, Relaxed);
        rec.sender
            .store(sender_word(me, part_gen(self.reg().word)), Relaxed);
        Ok(Some(Loan {
            p: self.clone(),
            slot,
            word,
            ptr,
            len: len as usize,
            _seg: seg,
            sent: false,
        }))
    }

    fn loan_until(
        self: &Arc<Self>,
        len: usize,
        deadline: Option<Instant>,
    ) -> Result<Loan, SendTimeoutError> {
        let len = self.check_len(len)?;
        if self.disconnected() {
            return Err(SendTimeoutError::Disconnected);
        }
        let q = &self.q;
        let s = q.shared();
        let r = wait::block_on_counted(
            &q.futex,
            &s.ctl.not_full,
            q.bitmap(&s.ctl.not_full_waiters),
            self.idx(),
            &self.blocked[1],
            || match self.alloc(len) {
                Ok(Some(l)) => Some(Ok(l)),
                Err(e) => Some(Err(SendTimeoutError::from(e))),
                Ok(None) if self.disconnected() => Some(Err(SendTimeoutError::Disconnected)),
                Ok(None) => None,
            },
            remaining(q, deadline),
        );
        match r {
            Wait::Ready(r) => r,
            Wait::TimedOut => Err(SendTimeoutError::Timeout),
        }
    }

    fn send_until(
        self: &Arc<Self>,
        msg: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), SendTimeoutError> {
        let mut loan = self.loan_until(msg.len(), deadline)?;
        copy_payload(&mut loan, msg);
        crate::fault::point("send.written");
        loan.publish_until(deadline).map_err(|u| u.error)
    }

    fn no_senders(self: &Arc<Self>) -> bool {
        self.q.peers().0 == 0
    }

    /// One attempt: a redelivery first (they are older), then the ring.
    fn take(self: &Arc<Self>) -> Result<Option<Message>, Error> {
        let q = &self.q;
        let _op = q.enter().ok_or_else(Error::closed)?;
        let s = q.shared();
        let me = self.idx();
        // (The hint is read once more inside; this test only spares the common case the
        // cursor's read-modify-write.)
        if crate::layout::hint_count(s.ctl.counters.orphans.load(Relaxed)) != 0 {
            let mut skipped = crate::queue::lock(&self.skipped);
            if !skipped.is_empty() {
                let now = Instant::now();
                skipped.retain(|e| now.duration_since(e.2) < SKIP_FOR);
            }
            let got = slots::claim_orphan(&s, me, q.next_cursor(), |slot, w| {
                skipped.iter().any(|e| e.0 == slot && e.1 == slot_gen(w))
            });
            drop(skipped);
            if let Some((slot, word, n)) = got {
                return self.build(slot, word, n).map(Some);
            }
        }
        match ring::claim(&s, me) {
            Ok(c) => {
                crate::fault::point("recv.claimed");
                wait::notify_all(&q.futex, &s.ctl.not_full, q.bitmap(&s.ctl.not_full_waiters));
                self.build(c.slot, c.word, 1).map(Some)
            }
            Err(RingError::Empty) | Err(RingError::Full) => Ok(None),
            Err(RingError::Corrupt) => Err(Error::corrupt(format!(
                "the ring of queue {:?} holds an impossible word",
                q.name
            ))),
        }
    }

    /// The message in slot `slot`, just claimed with word `word` for its `count`-th
    /// delivery. Bounds-checks what it reads: a length or storage kind no producer
    /// writes drops the slot (rather than wedge the queue) and reports `Corrupt`.
    fn build(self: &Arc<Self>, slot: u32, word: u64, count: u64) -> Result<Message, Error> {
        let q = &self.q;
        let s = q.shared();
        let rec = &s.slots[slot as usize];
        let len = rec.len.load(Relaxed);
        let kind = rec.kind.load(Relaxed);
        let max = q.dims.max_message_size;
        let bad = if len > max {
            Some(segment::bad_len(len, max))
        } else if kind == KIND_INLINE && len > INLINE_BYTES as u64 {
            Some(Error::corrupt(format!(
                "message length {len} in shared memory exceeds the inline size {INLINE_BYTES}"
            )))
        } else if kind != KIND_INLINE && kind != KIND_SEGMENT {
            Some(Error::corrupt(format!(
                "message storage kind {kind} in shared memory is not one shmq writes"
            )))
        } else {
            None
        };
        if let Some(e) = bad {
            slots::free(&s, slot, word);
            return Err(e);
        }
        let (ptr, seg) = if kind == KIND_INLINE {
            (rec.inline.with(|p| p as *const u8), None)
        } else {
            match q.segs.for_read(&s, slot, len) {
                Ok(seg) => (seg.ptr() as *const u8, Some(seg)),
                Err(e) => {
                    // Could not map it here (out of descriptors, memory, or permission):
                    // hand it back for another receiver (H1; not counted as a delivery)
                    // and pass over it ourselves for a while, so neither this message nor
                    // the ones behind it wait on us.
                    if slots::give_up(&s, slot, word, false) == slots::GaveUp::Orphaned {
                        crate::queue::lock(&self.skipped).push((
                            slot,
                            slot_gen(word),
                            Instant::now(),
                        ));
                        wait::notify_all(
                            &q.futex,
                            &s.ctl.not_empty,
                            q.bitmap(&s.ctl.not_empty_waiters),
                        );
                    }
                    return Err(e);
                }
            }
        };
        Ok(Message {
            p: self.clone(),
            slot,
            word,
            ptr,
            len: len as usize,
            _seg: seg,
            count: count.min(u32::MAX as u64) as u32,
        })
    }

    fn recv_until(
        self: &Arc<Self>,
        deadline: Option<Instant>,
    ) -> Result<Message, RecvTimeoutError> {
        let q = &self.q;
        let s = q.shared();
        let r = wait::block_on_counted(
            &q.futex,
            &s.ctl.not_empty,
            q.bitmap(&s.ctl.not_empty_waiters),
            self.idx(),
            &self.blocked[0],
            || {
                self.try_recv_inner().map_or_else(
                    |e| match e {
                        TryRecvError::Empty => None,
                        TryRecvError::Disconnected => Some(Err(RecvTimeoutError::Disconnected)),
                        TryRecvError::Failed(e) => Some(Err(RecvTimeoutError::Failed(e))),
                    },
                    |m| Some(Ok(m)),
                )
            },
            remaining(q, deadline),
        );
        match r {
            Wait::Ready(r) => r,
            Wait::TimedOut => Err(RecvTimeoutError::Timeout),
        }
    }

    fn try_recv_inner(self: &Arc<Self>) -> Result<Message, TryRecvError> {
        if let Some(m) = self.take()? {
            return Ok(m);
        }
        if self.no_senders() {
            // The last sender may have sent just before leaving: look once more, after
            // seeing it gone.
            return match self.take()? {
                Some(m) => Ok(m),
                None => Err(TryRecvError::Disconnected),
            };
        }
        Err(TryRecvError::Empty)
    }
}

/// A `Sender`'s or `Receiver`'s participant, per process. In the process that made the
/// handle that is `home`. A forked child that inherited the handle (`fork.rs`) must not
/// act as the parent's participant: on first use it attaches to the queue afresh, by
/// name, and makes a participant of its own (`local`), as if it had called `open`.
pub(crate) struct Handle {
    home: Arc<Participant>,
    role: Role,
    /// A leaked `Box<Local>` (null until a forked child first uses the handle), freed by
    /// `drop`; replaced only by a process of a later epoch (a grandchild), whose new one
    /// keeps the old one in `prev` (another thread may still be reading its epoch), so
    /// `drop` frees the chain (dropping a foreign participant changes nothing).
    local: std::sync::atomic::AtomicPtr<Local>,
}

pub(crate) struct Local {
    epoch: u64,
    p: Arc<Participant>,
    prev: *mut Local,
}

impl Handle {
    fn new(q: User, role: Role) -> Result<Handle, Error> {
        Ok(Handle {
            home: Participant::new(q, role)?,
            role,
            local: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
        })
    }

    /// The participant of the calling process.
    ///
    /// # Errors
    /// In a forked child, what attaching afresh returns; a queue that is gone (or whose
    /// name now names another queue) is `Closed` (handles report `Disconnected`).
    #[inline]
    fn get(&self) -> Result<&Arc<Participant>, Error> {
        if !self.home.q.foreign() {
            return Ok(&self.home);
        }
        self.get_forked()
    }

    #[cold]
    fn get_forked(&self) -> Result<&Arc<Participant>, Error> {
        use std::sync::atomic::Ordering::SeqCst;
        let epoch = crate::fork::epoch();
        loop {
            let cur = self.local.load(SeqCst);
            // SAFETY: a non-null `local` points to a live `Local`: it is freed only by
            // `drop` (which has `&mut self`) or replaced below by a later epoch, which
            // is never this one again.
            if !cur.is_null() && unsafe { (*cur).epoch } == epoch {
                // SAFETY: as above; it stays installed as long as `self` lives.
                return Ok(unsafe { &(*cur).p });
            }
            let home = &self.home.q;
            let gone = || {
                Error::new(
                    crate::ErrorKind::Closed,
                    format!(
                        "queue {:?} (inherited across fork) no longer exists",
                        home.name
                    ),
                )
            };
            let q = match Queue::open(&home.name, home.supervision) {
                Ok(q) => q,
                Err(e) if e.kind() == crate::ErrorKind::NotFound => return Err(gone()),
                Err(e) => return Err(e),
            };
            if q.ino != home.ino {
                return Err(gone());
            }
            let p = Participant::new(q, self.role)?;
            let new = Box::into_raw(Box::new(Local {
                epoch,
                p,
                prev: cur,
            }));
            match self.local.compare_exchange(cur, new, SeqCst, SeqCst) {
                // SAFETY: just installed; lives as long as `self`.
                Ok(_) => return Ok(unsafe { &(*new).p }),
                // Another thread of ours installed one first: use it.
                // SAFETY: `new` was never shared.
                Err(_) => drop(unsafe { Box::from_raw(new) }),
            }
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut cur = *self.local.get_mut();
        while !cur.is_null() {
            // SAFETY: the chain is ours alone now (`&mut self`); made by `get_forked`.
            let l = unsafe { Box::from_raw(cur) };
            cur = l.prev;
        }
    }
}

/// The deadline `timeout` from now; `None` (no deadline: wait as long as it takes) for a
/// timeout too large to represent, such as `Duration::MAX`.
fn deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// The time-left callback of `wait::block_on` for a deadline: sleeps are capped at the
/// queue's wait slice, and once per slice of waiting the waiter runs a repair pass itself,
/// so a dead peer is noticed even when nobody else supervises (and, in `Thread` mode,
/// before the supervisor has started watching a young peer).
fn remaining(
    q: &Queue,
    deadline: Option<Instant>,
) -> impl FnMut() -> Option<Option<Duration>> + '_ {
    let slice = q.wait_slice();
    // Read the clock only once the waiter is about to sleep (this callback is not called
    // before): a send or receive that succeeds at once reads no clock.
    let mut last_repair: Option<Instant> = None;
    move || {
        match last_repair {
            None => last_repair = Some(Instant::now()),
            Some(t) if t.elapsed() >= slice => {
                let _ = crate::supervisor::repair(q);
                last_repair = Some(Instant::now());
            }
            Some(_) => {}
        }
        match deadline {
            None => Some(Some(slice)),
            Some(d) => {
                let left = d.checked_duration_since(Instant::now())?;
                if left.is_zero() {
                    return None;
                }
                Some(Some(left.min(slice)))
            }
        }
    }
}

/// What `Sender` and `Receiver` share: construction, cloning (a new participant each),
/// the queue's name and the racy size snapshots.
macro_rules! handle_common {
    ($ty:ident, $role:expr, $what:literal) => {
        impl $ty {
            pub(crate) fn from_queue(q: User) -> Result<$ty, Error> {
                Ok($ty {
                    h: Handle::new(q, $role)?,
                })
            }

            #[doc = concat!("Another ", $what, " on the same queue, as a participant of its own.")]
            ///
            /// # Errors
            /// `TooManyParticipants` if every record is taken.
            pub fn try_clone(&self) -> Result<$ty, Error> {
                $ty::from_queue(self.h.get()?.q.clone())
            }

            /// The queue's name (what other processes pass to `open`).
            pub fn name(&self) -> &str {
                &self.h.home.q.name
            }

            /// Messages in the queue right now (a racy snapshot: exact only when nobody is
            /// sending or receiving). Redelivered messages waiting for a new consumer count
            /// too.
            pub fn len(&self) -> usize {
                queue_len(&self.h.home.q)
            }

            /// Whether [`len`](Self::len) is 0 (racy, as `len`).
            pub fn is_empty(&self) -> bool {
                self.len() == 0
            }

            /// Whether [`len`](Self::len) is at least the capacity (racy, as `len`).
            pub fn is_full(&self) -> bool {
                self.len() >= self.capacity()
            }

            /// The exact number of messages the queue holds before `try_send` says `Full`.
            pub fn capacity(&self) -> usize {
                self.h.home.q.dims.geometry.capacity as usize
            }
        }

        impl Clone for $ty {
            #[doc = concat!("Another ", $what, " on the same queue, as a participant of its own.")]
            ///
            /// # Panics
            /// If every participant record of the queue is taken; see `try_clone`.
            fn clone(&self) -> $ty {
                self.try_clone()
                    .unwrap_or_else(|e| panic!("cannot clone shmq::{}: {e}", stringify!($ty)))
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("queue", &self.h.home.q.name)
                    .field("participant", &self.h.home.idx())
                    .finish()
            }
        }
    };
}

handle_common!(Sender, Role::Sender, "sender");
handle_common!(Receiver, Role::Receiver, "receiver");

// ---------------------------------------------------------------------------------------
// Sender

/// The sending side of a queue. Each clone is a participant of its own: `clone` panics if
/// every participant record of the queue is taken, [`try_clone`](Self::try_clone) returns
/// the error (`TooManyParticipants`) instead.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (tx, rx) = shmq::channel(8)?;
/// tx.send(b"hello")?;
/// assert_eq!(&*rx.recv()?, b"hello");
/// # Ok(()) }
/// ```
pub struct Sender {
    h: Handle,
}

impl Sender {
    /// Attaches a new sender to the existing queue `name` (from any process).
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound) if there is no such queue;
    /// `NotAQueue`, `VersionMismatch` or `Corrupt` if the object is not a queue this
    /// version can use; `InvalidName`; `PermissionDenied`; `TooManyParticipants`.
    pub fn open(name: &str) -> Result<Sender, Error> {
        crate::Builder::new().name(name).open_sender()
    }

    /// The largest message this queue takes, in bytes.
    pub fn max_message_size(&self) -> u64 {
        self.h.home.q.dims.max_message_size
    }

    /// Takes a payload buffer of `len` bytes to fill in place, then [`Loan::send`]. Blocks
    /// while every payload slot is in use (messages queued, held by receivers, or loaned).
    ///
    /// # Errors
    /// `TooLarge` above [`max_message_size`](Self::max_message_size); `Disconnected` if no
    /// receiver is attached; `Failed` if shared memory cannot be sized (e.g. `/dev/shm`
    /// full).
    pub fn loan(&self, len: usize) -> Result<Loan, SendError> {
        self.h
            .get()?
            .loan_until(len, None)
            .map_err(SendError::untimed)
    }

    /// Like [`loan`](Self::loan), waiting at most `timeout` for a payload slot.
    /// A `timeout` too large to represent as a deadline (`Duration::MAX`) waits without
    /// limit.
    ///
    /// # Errors
    /// `Timeout` if no slot freed up in time; otherwise as [`loan`](Self::loan).
    pub fn loan_timeout(&self, len: usize, timeout: Duration) -> Result<Loan, SendTimeoutError> {
        self.h.get()?.loan_until(len, deadline(timeout))
    }

    /// Like [`loan`](Self::loan) but never blocks: `Full` if no payload slot is free.
    ///
    /// # Errors
    /// As [`loan`](Self::loan), plus `Full`.
    pub fn try_loan(&self, len: usize) -> Result<Loan, TrySendError> {
        let p = self.h.get()?;
        let len = p.check_len(len)?;
        if p.disconnected() {
            return Err(TrySendError::Disconnected);
        }
        match p.alloc(len)? {
            Some(l) => Ok(l),
            None => Err(TrySendError::Full),
        }
    }

    /// Sends a copy of `msg`, blocking while the queue is full.
    ///
    /// # Errors
    /// `Disconnected` if no receiver is attached; `TooLarge`; `Failed` on an OS failure.
    pub fn send(&self, msg: &[u8]) -> Result<(), SendError> {
        self.h
            .get()?
            .send_until(msg, None)
            .map_err(SendError::untimed)
    }

    /// Sends a copy of `msg`, waiting at most `timeout` for space.
    /// A `timeout` too large to represent as a deadline (`Duration::MAX`) waits without
    /// limit.
    ///
    /// # Errors
    /// `Timeout` if the queue stayed full; otherwise as [`send`](Self::send).
    pub fn send_timeout(&self, msg: &[u8], timeout: Duration) -> Result<(), SendTimeoutError> {
        self.h.get()?.send_until(msg, deadline(timeout))
    }

    /// Sends a copy of `msg` if there is room right now.
    ///
    /// # Errors
    /// `Full` if `capacity` messages are queued or no payload slot is free; otherwise as
    /// [`send`](Self::send).
    pub fn try_send(&self, msg: &[u8]) -> Result<(), TrySendError> {
        let p = self.h.get()?;
        p.check_len(msg.len())?;
        // Spare the copy when it could not be sent anyway (racy; `publish` decides).
        if ring::looks_full(&p.q.shared()) {
            return Err(if p.disconnected() {
                TrySendError::Disconnected
            } else {
                TrySendError::Full
            });
        }
        let mut loan = self.try_loan(msg.len())?;
        copy_payload(&mut loan, msg);
        crate::fault::point("send.written");
        loan.try_send().map_err(|u| u.error)
    }

    /// Waits until every message this sender has sent has been acknowledged (its
    /// [`Message`] dropped by a receiver), at most `timeout` (`None`, or a timeout too large
    /// to represent such as `Duration::MAX`: no limit). A message
    /// redelivered after its first receiver died counts once its second receiver acks it.
    ///
    /// # Errors
    /// [`AckTimeoutError`] if messages are still unacknowledged at the deadline.
    pub fn wait_for_acks(&self, timeout: Option<Duration>) -> Result<(), AckTimeoutError> {
        self.wait_for_acks_below(1, timeout)
    }

    /// How many messages this sender has sent that are not acknowledged yet (queued, held
    /// by a receiver, or waiting for redelivery). A racy snapshot.
    pub fn unacked(&self) -> usize {
        let Ok(p) = self.h.get() else {
            return 0;
        };
        let s = p.q.shared();
        let me = p.idx();
        slots::pending_upto(&s, sender_word(me, part_gen(p.reg().word)), me, usize::MAX)
    }

    /// Waits until fewer than `n` messages this sender has sent are unacknowledged (see
    /// [`unacked`](Self::unacked)), at most `timeout` (as in
    /// [`wait_for_acks`](Self::wait_for_acks), which is `wait_for_acks_below(1, timeout)`).
    /// A producer bounds its own messages in flight with it, whatever other producers do
    /// (`n = 0` is taken as 1):
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (tx, rx) = shmq::channel(64)?;
    /// for _ in 0..3 {
    ///     tx.wait_for_acks_below(2, None)?; // at most 2 of ours in flight
    ///     tx.send(b"step")?;
    ///     drop(rx.recv()?);
    /// }
    /// assert_eq!(tx.unacked(), 0);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`AckTimeoutError`] if `n` or more are still unacknowledged at the deadline.
    pub fn wait_for_acks_below(
        &self,
        n: usize,
        timeout: Option<Duration>,
    ) -> Result<(), AckTimeoutError> {
        // A forked child that cannot attach this handle has sent nothing through it.
        let Ok(p) = self.h.get() else {
            return Ok(());
        };
        let limit = n.max(1);
        if timeout == Some(Duration::ZERO) {
            // A zero timeout looks once: no spinning, no yielding (a caller that polls,
            // as the Python binding does between its slices, holds a lock meanwhile).
            let stamp = sender_word(p.idx(), part_gen(p.reg().word));
            let s = p.q.shared();
            return match slots::pending_upto(&s, stamp, p.idx(), limit) < limit {
                true => Ok(()),
                false => Err(AckTimeoutError),
            };
        }
        let q = &p.q;
        let s = q.shared();
        let me = p.idx();
        let stamp = sender_word(me, part_gen(p.reg().word));
        let rec = &s.parts[me as usize];
        let deadline = timeout.and_then(deadline);
        // Sleep in 100 ms slices at most: a consumer killed between freeing a slot and
        // waking us leaves no other trace (slots.rs K2).
        let mut left = remaining(q, deadline);
        let r = wait::block_on_counted(
            &q.futex,
            &rec.ack_seq,
            std::slice::from_ref(&rec.ack_waiting),
            0,
            &p.blocked[2],
            || (slots::pending_upto(&s, stamp, me, limit) < limit).then_some(()),
            || left().map(|l| Some(l.unwrap_or(Duration::MAX).min(Duration::from_millis(100)))),
        );
        match r {
            Wait::Ready(()) => Ok(()),
            Wait::TimedOut => Err(AckTimeoutError),
        }
    }
}

/// Copies a message into its loan (`dst.len() == src.len()`), dodging one pathology of
/// glibc's `memcpy`: on AMD Zen its `rep movsb` path runs at ~3 GB/s instead of ~40 when
/// the destination lies 1–63 bytes past the source modulo 4 KiB (4K aliasing; measured
/// here with glibc 2.36 for 4 KiB–256 KiB copies; larger copies take another path).
/// Segments are page-aligned, so a source buffer that happens to start 1–63 bytes before
/// a page boundary hit it on every send. Copying such a pair in 2 KiB pieces keeps each
/// call below `rep movsb`'s threshold and runs at full speed; every other pair goes to
/// `memcpy` whole.
fn copy_payload(dst: &mut [u8], src: &[u8]) {
    const PIECE: usize = 2048;
    let dist = (dst.as_ptr() as usize).wrapping_sub(src.as_ptr() as usize) & 4095;
    if src.len() <= PIECE || !(1..64).contains(&dist) {
        dst.copy_from_slice(src);
        return;
    }
    for (d, s) in dst.chunks_mut(PIECE).zip(src.chunks(PIECE)) {
        d.copy_from_slice(s);
    }
}

fn queue_len(q: &Queue) -> usize {
    let s = q.shared();
    let orphans = slots::census(&s)[SlotState::Orphan as usize];
    (ring::len(&s) + orphans) as usize
}

// ---------------------------------------------------------------------------------------
// Loan

/// A payload buffer in shared memory, loaned to a sender: fill it in place, then send it.
/// Dropping an unsent loan gives its slot back.
///
/// The buffer starts 64-byte aligned.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (tx, rx) = shmq::channel(2)?;
/// let mut loan = tx.loan(4096)?;
/// loan.fill(7);
/// loan.send()?;
/// assert!(rx.recv()?.iter().all(|&b| b == 7));
/// # Ok(()) }
/// ```
pub struct Loan {
    p: Arc<Participant>,
    slot: u32,
    word: u64,
    ptr: *mut u8,
    len: usize,
    _seg: Option<Arc<Seg>>,
    sent: bool,
}

// SAFETY: the loan exclusively owns its slot (LOANED to its participant) until it is sent
// or dropped; `ptr` points into a mapping kept alive by `_seg` or by the queue (inline),
// and the bytes are touched by no one else meanwhile.
unsafe impl Send for Loan {}
// SAFETY: shared access only reads the bytes (Deref); mutation needs `&mut`.
unsafe impl Sync for Loan {}

/// A loan that could not be sent, handed back with the reason.
pub struct Unsent<E> {
    /// The loan, still filled, to retry or drop.
    pub loan: Loan,
    /// Why it was not sent.
    pub error: E,
}

impl<E: fmt::Debug> fmt::Debug for Unsent<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unsent")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}
impl<E: fmt::Display> fmt::Display for Unsent<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "loan not sent: {}", self.error)
    }
}
impl<E: std::error::Error + 'static> std::error::Error for Unsent<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl Loan {
    /// Shortens the message to `len` bytes (no effect if it is not shorter).
    ///
    /// # Panics
    /// In a process that inherited the loan by `fork` (it is the parent's).
    pub fn truncate(&mut self, len: usize) {
        self.native();
        if len < self.len {
            self.len = len;
            let s = self.p.q.shared();
            s.slots[self.slot as usize].len.store(len as u64, Relaxed);
        }
    }

    /// Panics unless this process made the loan (see `fork.rs`).
    #[inline]
    #[track_caller]
    fn native(&self) {
        if self.p.q.foreign() {
            crate::fork::inherited("Loan");
        }
    }

    /// The error of sending a loan inherited by fork.
    fn forked() -> Error {
        Error::new(
            crate::ErrorKind::Forked,
            "this loan was inherited from the parent process by fork; it is the parent's",
        )
    }

    fn unsent<E>(self, error: E) -> Unsent<E> {
        Unsent { loan: self, error }
    }

    fn publish_once(&self) -> Result<bool, Error> {
        if self.p.q.foreign() {
            return Err(Loan::forked());
        }
        let _op = self.p.q.enter().ok_or_else(Error::closed)?;
        let s = self.p.q.shared();
        match ring::publish(&s, self.slot) {
            Ok(_) => Ok(true),
            Err(RingError::Full) | Err(RingError::Empty) => Ok(false),
            Err(RingError::Corrupt) => Err(Error::corrupt(format!(
                "the ring of queue {:?} holds an impossible word",
                self.p.q.name
            ))),
        }
    }

    fn published(mut self) {
        crate::fault::point("send.published");
        self.sent = true;
        let q = &self.p.q;
        let s = q.shared();
        s.parts[self.p.idx() as usize].sent.fetch_add(1, Relaxed);
        wait::notify(
            &q.futex,
            &s.ctl.not_empty,
            q.bitmap(&s.ctl.not_empty_waiters),
        );
    }

    fn publish_until(self, deadline: Option<Instant>) -> Result<(), Unsent<SendTimeoutError>> {
        if self.p.q.foreign() {
            return Err(self.unsent(SendTimeoutError::Failed(Loan::forked())));
        }
        // A borrow, not a `User` clone: cloning one takes the process-wide registry lock.
        let q: &Queue = &self.p.q;
        let s = q.shared();
        let r = wait::block_on_counted(
            &q.futex,
            &s.ctl.not_full,
            q.bitmap(&s.ctl.not_full_waiters),
            self.p.idx(),
            &self.p.blocked[1],
            || match self.publish_once() {
                Ok(true) => Some(Ok(())),
                Err(e) => Some(Err(SendTimeoutError::from(e))),
                Ok(false) if q.peers().1 == 0 => Some(Err(SendTimeoutError::Disconnected)),
                Ok(false) => None,
            },
            remaining(q, deadline),
        );
        match r {
            Wait::Ready(Ok(())) => {
                self.published();
                Ok(())
            }
            Wait::Ready(Err(e)) => Err(self.unsent(e)),
            Wait::TimedOut => Err(self.unsent(SendTimeoutError::Timeout)),
        }
    }

    /// Sends the message, blocking while the queue is full.
    ///
    /// # Errors
    /// `Disconnected` if no receiver is attached, with the loan handed back.
    pub fn send(self) -> Result<(), Unsent<SendError>> {
        self.publish_until(None).map_err(|u| Unsent {
            loan: u.loan,
            error: SendError::untimed(u.error),
        })
    }

    /// Sends the message, waiting at most `timeout` for space.
    /// A `timeout` too large to represent as a deadline (`Duration::MAX`) waits without
    /// limit.
    ///
    /// # Errors
    /// `Timeout` or `Disconnected`, with the loan handed back.
    pub fn send_timeout(self, timeout: Duration) -> Result<(), Unsent<SendTimeoutError>> {
        self.publish_until(deadline(timeout))
    }

    /// Sends the message if there is room right now.
    ///
    /// # Errors
    /// `Full` or `Disconnected`, with the loan handed back.
    pub fn try_send(self) -> Result<(), Unsent<TrySendError>> {
        match self.publish_once() {
            Ok(true) => {
                self.published();
                Ok(())
            }
            Ok(false) => {
                let e = if self.p.q.peers().1 == 0 {
                    TrySendError::Disconnected
                } else {
                    TrySendError::Full
                };
                Err(self.unsent(e))
            }
            Err(e) => Err(self.unsent(TrySendError::from(e))),
        }
    }
}

impl std::ops::Deref for Loan {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.native();
        // SAFETY: see `unsafe impl Send for Loan`: `ptr..ptr+len` is mapped, ours alone.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for Loan {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.native();
        // SAFETY: as in `deref`, and `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl fmt::Debug for Loan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loan")
            .field("slot", &self.slot)
            .field("len", &self.len)
            .finish()
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        // A forked child's copy of the parent's loan: forget it (`fork.rs`).
        if !self.sent && !self.p.q.foreign() {
            let q = &self.p.q;
            let s = q.shared();
            slots::free(&s, self.slot, self.word);
            wait::notify_all(&q.futex, &s.ctl.not_full, q.bitmap(&s.ctl.not_full_waiters));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Receiver

/// The receiving side of a queue. Each message goes to exactly one receiver; each clone
/// is a participant of its own: `clone` panics if every participant record of the queue is
/// taken, [`try_clone`](Self::try_clone) returns the error instead.
pub struct Receiver {
    h: Handle,
}

impl Receiver {
    /// Attaches a new receiver to the existing queue `name` (from any process).
    ///
    /// # Errors
    /// As [`Sender::open`].
    pub fn open(name: &str) -> Result<Receiver, Error> {
        crate::Builder::new().name(name).open_receiver()
    }

    /// Takes a message if one is waiting.
    ///
    /// # Errors
    /// `Empty`; `Disconnected` if the queue is empty and no sender is attached; `Failed`
    /// if the message's payload cannot be mapped (it is then redelivered) or the queue's
    /// memory is corrupt.
    pub fn try_recv(&self) -> Result<Message, TryRecvError> {
        self.h.get()?.try_recv_inner()
    }

    /// Takes a message, blocking until one arrives.
    ///
    /// # Errors
    /// `Disconnected` once the queue is empty and no live sender is attached; `Failed` as
    /// in [`try_recv`](Self::try_recv).
    pub fn recv(&self) -> Result<Message, RecvError> {
        self.h.get()?.recv_until(None).map_err(RecvError::untimed)
    }

    /// Takes a message, waiting at most `timeout`.
    /// A `timeout` too large to represent as a deadline (`Duration::MAX`) waits without
    /// limit.
    ///
    /// # Errors
    /// `Timeout`; otherwise as [`recv`](Self::recv).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Message, RecvTimeoutError> {
        self.h.get()?.recv_until(deadline(timeout))
    }
}

// ---------------------------------------------------------------------------------------
// Message

/// A received message: a zero-copy view of its payload in shared memory (64-byte
/// aligned). Dropping it is the acknowledgement: the slot is free again and the sender's
/// [`wait_for_acks`](Sender::wait_for_acks) may return.
pub struct Message {
    p: Arc<Participant>,
    slot: u32,
    word: u64,
    ptr: *const u8,
    len: usize,
    _seg: Option<Arc<Seg>>,
    count: u32,
}

// SAFETY: the message exclusively holds its slot (HELD by its participant) until dropped;
// `ptr` points into a mapping kept alive by `_seg` or the queue; nobody writes the bytes
// while the slot is HELD.
unsafe impl Send for Message {}
// SAFETY: only shared reads of the bytes are offered.
unsafe impl Sync for Message {}

impl Message {
    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Whether this message was delivered before, to a consumer that died holding it
    /// (`delivery_count() > 1`).
    pub fn is_redelivery(&self) -> bool {
        self.count > 1
    }
    /// Which delivery of this message this is: 1 the first time; `n` after `n - 1`
    /// consumers died holding it (or left their process without dropping it). Once a
    /// message reaches the queue's [`max_deliveries`](crate::Builder::max_deliveries) and
    /// its consumer dies again, it is set aside instead of redelivered.
    pub fn delivery_count(&self) -> u32 {
        self.count
    }
    /// Acknowledges the message (the same as dropping it).
    pub fn ack(self) {}
}

impl std::ops::Deref for Message {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        if self.p.q.foreign() {
            crate::fork::inherited("Message");
        }
        // SAFETY: see `unsafe impl Send for Message`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl AsRef<[u8]> for Message {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("len", &self.len)
            .field("delivery_count", &self.count)
            .finish()
    }
}

impl Drop for Message {
    fn drop(&mut self) {
        let q = &self.p.q;
        if q.foreign() {
            return; // a forked child's copy of the parent's message (`fork.rs`)
        }
        let s = q.shared();
        let stamp = slots::ack(&s, self.slot, self.word);
        let Some(stamp) = stamp else {
            return; // recovered from under us: someone judged this process dead
        };
        if self._seg.is_some() {
            // Only segment slots are worth steering producers to (see `Sender::alloc`).
            s.ctl.free_hint.store(self.slot as u64, Relaxed);
        }
        crate::fault::point("ack.freed");
        // One fence for both notifications (SYNC POINT: eventcount).
        crate::sync::fence(crate::sync::Ordering::SeqCst);
        if let Some(sr) = s.parts.get(sender_idx(stamp) as usize) {
            // Every thread waiting for this sender's acks re-checks: wake them all.
            if sr.ack_waiting.load(crate::sync::Ordering::Relaxed) != 0 {
                wait::bump(&q.futex, &sr.ack_seq);
            }
        }
        wait::notify_fenced(
            &q.futex,
            &s.ctl.not_full,
            q.bitmap(&s.ctl.not_full_waiters),
            true,
        );
    }
}

//! # shmq: a crash-safe multi-process work queue over shared memory
//!
//! Several producer **processes** and several consumer **processes** on one Linux host
//! share one bounded queue; each message goes to exactly one consumer. Payloads of any
//! size (0 B to beyond 4 GiB) travel through shared memory, zero-copy on both sides (fill
//! a [`Loan`] in place; read a [`Message`] in place), and the queue keeps working, losing
//! nothing that was accepted, when any participant is killed with SIGKILL at any
//! instruction.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (tx, rx) = shmq::channel(64)?;          // a fresh, uniquely named queue
//! let name = tx.name().to_string();           // give this to other processes:
//! let tx2 = shmq::Sender::open(&name)?;       //   they attach by name
//! tx2.send(b"trajectory")?;
//! let msg = rx.recv()?;                       // zero-copy view
//! assert_eq!(&*msg, b"trajectory");
//! drop(msg);                                  // the ack: the slot is free again
//! # Ok(()) }
//! ```
//!
//! ## How it is built (one file per concept, dependencies pointing down)
//!
//! * [`Sender`], [`Receiver`], [`Loan`], [`Message`] (`handles.rs`) — the public handles;
//! * `supervisor.rs` — liveness by kernel-released OFD locks, pidfd notification, recovery
//!   runs under a lease; [`Supervisor`], [`gc`];
//! * `queue.rs` — one process's attachment: creation, validation, registration, lifecycle;
//! * `segment.rs` — payload objects per slot, sized by class and reused;
//! * `ring.rs`, `slots.rs`, `roster.rs`, `recovery.rs` — the pure protocol (no syscalls),
//!   model-checked with loom in `loom-tests/`, each module listing its crash windows;
//! * `wait/` — the eventcount over a shared (not private) futex;
//! * `layout.rs` — the `#[repr(C)]` shared layout and word packing; `sync.rs` — the one door
//!   to atomics (std or loom).
//!
//! ## Guarantees
//!
//! * A `send` that returned `Ok` is delivered, at least once, whoever dies afterwards.
//! * A send whose process died before the commit is discarded, its slot freed.
//! * A message held (received, not yet dropped) by a consumer that dies is redelivered to
//!   another consumer ([`Delivery::AtLeastOnce`], the default; [`Message::is_redelivery`]
//!   tells) or dropped ([`Delivery::AtMostOnce`]), up to [`Builder::max_deliveries`]
//!   deliveries ([`Message::delivery_count`]), after which it is set aside and counted.
//!   Nothing else is lost or duplicated.
//! * Capacity is exact: with capacity 5, five `try_send` succeed and the sixth is `Full`.
//!   Redelivered messages come out of FIFO order, on top of capacity.
//! * A participant is judged dead only on positive evidence (its lock free, or its pid
//!   gone or reused); a failure to look means alive.
//! * Handles survive `fork`: an inherited `Sender`/`Receiver` attaches afresh in the child
//!   on first use; inherited handles, loans and messages dropped in the child change
//!   nothing; an inherited `Loan`/`Message` cannot be used there (`fork.rs`).
#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

macro_rules! model_visible {
    ($($(#[$m:meta])* mod $name:ident;)*) => {$(
        $(#[$m])*
        #[cfg(shmq_loom)]
        pub mod $name;
        $(#[$m])*
        #[cfg(not(shmq_loom))]
        #[allow(dead_code)]
        mod $name;
    )*};
}

// The pure protocol: public under `--cfg shmq_loom` so `loom-tests/` checks this very code.
model_visible! {
    /// Atomics and cells (std or loom).
    mod sync;
    /// Shared layout and word packing.
    mod layout;
    /// The crash-safe ring.
    mod ring;
    /// Payload-slot ownership.
    mod slots;
    /// Participant records and the recovery lease.
    mod roster;
    /// Recovery of dead participants.
    mod recovery;
    /// Blocking: eventcount over a shared futex.
    mod wait;
}

mod error;
pub mod fault;
#[cfg(not(shmq_loom))]
mod fork;
#[cfg(not(shmq_loom))]
mod handles;
#[cfg(not(shmq_loom))]
pub mod info;
#[cfg(not(shmq_loom))]
mod iter;
#[cfg(not(shmq_loom))]
mod os;
#[cfg(not(shmq_loom))]
mod queue;
#[cfg(not(shmq_loom))]
mod segment;
#[cfg(not(shmq_loom))]
pub mod shutdown;
#[cfg(not(shmq_loom))]
mod supervisor;
#[cfg(not(shmq_loom))]
pub mod typed;

pub use error::{
    AckTimeoutError, Error, ErrorKind, RecvError, RecvTimeoutError, SendError, SendTimeoutError,
    TryRecvError, TrySendError,
};
#[cfg(not(shmq_loom))]
pub use handles::{Loan, Message, Receiver, Sender, Unsent};
#[cfg(not(shmq_loom))]
pub use iter::{IntoIter, Iter, TryIter};
#[cfg(not(shmq_loom))]
pub use queue::{Delivery, Supervision};
#[cfg(not(shmq_loom))]
pub use segment::MAX_MESSAGE_SIZE;
#[cfg(not(shmq_loom))]
pub use supervisor::{gc, gc_dry_run, GcReport, Supervisor};
#[cfg(not(shmq_loom))]
pub use typed::{CastError, Pod, Zeroable};

/// A new queue of exact capacity `capacity` with default options and a fresh unique name;
/// returns its first sender and receiver. Other processes attach with
/// [`Sender::open`]/[`Receiver::open`] and [`Sender::name`].
///
/// # Errors
/// `InvalidArgument` for a zero capacity; `NoSpace` if `/dev/shm` is full; see [`Builder::create`].
#[cfg(not(shmq_loom))]
pub fn channel(capacity: usize) -> Result<(Sender, Receiver), Error> {
    Builder::new().capacity(capacity).create()
}

/// Options for creating a queue (or for attaching to one with per-process options).
///
/// ```
/// # fn main() -> Result<(), shmq::Error> {
/// let (tx, rx) = shmq::Builder::new()
///     .capacity(64)
///     .max_message_size(1 << 20)
///     .delivery(shmq::Delivery::AtLeastOnce)
///     .create()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[cfg(not(shmq_loom))]
pub struct Builder {
    create: queue::CreateOptions,
    supervision: Supervision,
}

#[cfg(not(shmq_loom))]
impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

#[cfg(not(shmq_loom))]
impl Builder {
    /// Default options: capacity 64, messages up to 1 GiB, payload segments up to 4 GiB in
    /// all, `2 × capacity + 16` payload slots, 64 participants, at-least-once delivery, a
    /// supervisor thread.
    pub fn new() -> Builder {
        Builder {
            create: queue::CreateOptions {
                name: None,
                capacity: 64,
                slots: None,
                max_participants: 64,
                max_message_size: 1 << 30,
                max_payload_bytes: 4 << 30,
                delivery: Delivery::AtLeastOnce,
                max_deliveries: layout::DEFAULT_MAX_DELIVERIES,
            },
            supervision: Supervision::Thread,
        }
    }

    /// Exact capacity: how many messages the queue holds before senders wait.
    pub fn capacity(mut self, n: usize) -> Self {
        self.create.capacity = n;
        self
    }

    /// The queue's name (`A-Za-z0-9_-`, at most 200 characters); by default a fresh
    /// unique one. Its header is `/dev/shm/shmq.<name>`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.create.name = Some(name.into());
        self
    }

    /// The largest message, in bytes: 1 to [`MAX_MESSAGE_SIZE`]. Raises
    /// [`max_payload_bytes`](Self::max_payload_bytes) if it is below what one message of
    /// this size occupies (the size rounded up to a page).
    pub fn max_message_size(mut self, bytes: u64) -> Self {
        self.create.max_message_size = bytes;
        let need = segment::segment_size_for(bytes);
        if self.create.max_payload_bytes < need {
            self.create.max_payload_bytes = need;
        }
        self
    }

    /// A bound on the shared memory of all payload segments together; when it is reached,
    /// senders wait (or get `Full`) until acknowledged messages free some.
    ///
    /// It counts segment sizes, not message sizes: a message above 192 bytes (the inline
    /// limit) occupies a segment of at least 4 KiB, rounded up to a power of two up to
    /// 1 MiB and to an eighth of one above (at most 12.5% over the message; never more
    /// than `max_message_size` rounded up to a page). So `n` messages of size `m` in
    /// flight need about `n × m` (up to `n × 2m` below 1 MiB); a bound below what your
    /// consumers hold at once makes producers (and a consumer waiting for more) wait.
    /// It must be at least `max_message_size` rounded up to a page (unless messages are
    /// at most 192 bytes), or `create` says `InvalidArgument`.
    pub fn max_payload_bytes(mut self, bytes: u64) -> Self {
        self.create.max_payload_bytes = bytes;
        self
    }

    /// Payload slots: messages in flight at once (queued, held by receivers before they
    /// drop them, and loaned to senders). At least `capacity + 1`.
    pub fn slots(mut self, n: usize) -> Self {
        self.create.slots = Some(n);
        self
    }

    /// Participant records: every `Sender`/`Receiver` handle and clone takes one, and each
    /// attached process one more for its supervisor.
    pub fn max_participants(mut self, n: usize) -> Self {
        self.create.max_participants = n;
        self
    }

    /// What happens to messages held by a consumer that dies.
    pub fn delivery(mut self, d: Delivery) -> Self {
        self.create.delivery = d;
        self
    }

    /// How many times a message may be delivered (under [`Delivery::AtLeastOnce`]) before
    /// it is set aside: a message whose consumer died holding it for the `n`-th time is
    /// discarded and counted (`dead_letters` in [`QueueInfo`](crate::info::QueueInfo) and `shmq
    /// inspect`) instead of being redelivered, so a payload that crashes every consumer
    /// that takes it cannot stop the queue. [`Message::delivery_count`] tells a consumer
    /// which delivery it holds. Between 1 (never redeliver; like at-most-once for crashed
    /// consumers) and 65534; default 10.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.create.max_deliveries = n;
        self
    }

    /// How this process watches for dead participants (applies to this process only).
    pub fn supervision(mut self, s: Supervision) -> Self {
        self.supervision = s;
        self
    }

    /// Creates the queue; returns its first sender and receiver.
    ///
    /// # Errors
    /// `AlreadyExists`, `InvalidName`, `InvalidArgument` (zero capacity, too few slots, …),
    /// `NoSpace` (`/dev/shm` full), `PermissionDenied`.
    pub fn create(self) -> Result<(Sender, Receiver), Error> {
        queue::Queue::create(&self.create, self.supervision, |q| {
            Ok((Sender::from_queue(q.clone())?, Receiver::from_queue(q)?))
        })
    }

    fn attach(&self) -> Result<queue::User, Error> {
        let name = self.create.name.as_deref().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidName,
                "a queue name is needed to open a queue",
            )
        })?;
        queue::Queue::open(name, self.supervision)
    }

    /// Attaches a sender to the existing queue named with [`name`](Self::name).
    ///
    /// # Errors
    /// As [`Sender::open`].
    pub fn open_sender(self) -> Result<Sender, Error> {
        Sender::from_queue(self.attach()?)
    }

    /// Attaches a receiver to the existing queue named with [`name`](Self::name).
    ///
    /// # Errors
    /// As [`Sender::open`].
    pub fn open_receiver(self) -> Result<Receiver, Error> {
        Receiver::from_queue(self.attach()?)
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

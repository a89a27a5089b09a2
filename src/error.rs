//! Error types: small hand-written enums for the hot path, one opaque [`Error`] for setup
//! and OS failures that keeps its `io::Error` source.

use std::fmt;
use std::io;

/// What kind of setup or OS failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No queue of that name exists.
    NotFound,
    /// A queue of that name exists already.
    AlreadyExists,
    /// The name is empty, too long, or has a character other than `A-Za-z0-9_-`.
    InvalidName,
    /// An option is out of range (zero capacity, too many slots, …).
    InvalidArgument,
    /// The shared-memory object is not an shmq queue (foreign or truncated file).
    NotAQueue,
    /// The queue was made by a version of shmq with another shared layout.
    VersionMismatch,
    /// The queue's shared memory holds values no correct participant writes.
    Corrupt,
    /// `/dev/shm` (or memory) is full.
    NoSpace,
    /// The OS refused access to a shared-memory object.
    PermissionDenied,
    /// Every participant record of the queue is taken by a live handle.
    TooManyParticipants,
    /// Another OS error (see the source).
    Io,
    /// A [`Loan`](crate::Loan) or [`Message`](crate::Message) used in a process that
    /// inherited it by `fork`: it belongs to the parent.
    Forked,
    /// This process is leaving the queue ([`shutdown`](crate::shutdown)); handles report
    /// it as `Disconnected`.
    Closed,
}

/// A setup or OS failure: creating, opening, mapping, or growing shared memory.
pub struct Error {
    kind: ErrorKind,
    msg: String,
    source: Option<io::Error>,
}

#[cfg_attr(shmq_loom, allow(dead_code))]
impl Error {
    pub(crate) fn new(kind: ErrorKind, msg: impl Into<String>) -> Error {
        Error {
            kind,
            msg: msg.into(),
            source: None,
        }
    }

    /// An OS error while doing `what`; the kind follows the errno.
    pub(crate) fn io(what: impl Into<String>, e: io::Error) -> Error {
        let kind = match e.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            _ => match e.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::ENOMEM) | Some(libc::EFBIG) => ErrorKind::NoSpace,
                _ => ErrorKind::Io,
            },
        };
        Error {
            kind,
            msg: what.into(),
            source: Some(e),
        }
    }

    /// The error of an operation started after this process began leaving the queue.
    pub(crate) fn closed() -> Error {
        Error::new(ErrorKind::Closed, "this process is leaving the queue")
    }

    pub(crate) fn corrupt(what: impl Into<String>) -> Error {
        Error::new(ErrorKind::Corrupt, what)
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("msg", &self.msg)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(e) => write!(f, "{}: {}", self.msg, e),
            None => f.write_str(&self.msg),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e as _)
    }
}

macro_rules! hot_error {
    (
        $(#[$m:meta])* $name:ident {
            $($(#[$vm:meta])* $var:ident $({ $($f:ident : $t:ty),* })? => $msg:literal $(, $arg:ident)*;)*
        }
    ) => {
        $(#[$m])*
        #[derive(Debug)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vm])* $var $({ $(#[allow(missing_docs)] $f: $t),* })?,)*
            /// An OS or shared-memory failure (mapping a payload segment, a corrupt word).
            Failed(Error),
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $($name::$var $({ $($f),* })? => write!(f, $msg $(, $arg)*),)*
                    $name::Failed(e) => write!(f, "{}", e),
                }
            }
        }

        impl std::error::Error for $name {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                match self {
                    $name::Failed(e) => Some(e),
                    _ => None,
                }
            }
        }

        impl From<Error> for $name {
            fn from(e: Error) -> Self {
                if e.kind() == ErrorKind::Closed {
                    return $name::Disconnected;
                }
                $name::Failed(e)
            }
        }
    };
}

hot_error! {
    /// Why [`Sender::try_send`](crate::Sender::try_send) did not send.
    TrySendError {
        /// The queue holds `capacity` messages, or every payload slot is in use.
        Full => "queue is full";
        /// No live receiver is attached.
        Disconnected => "no receiver is attached";
        /// The message is larger than the queue's maximum.
        TooLarge { len: u64, max: u64 } => "message of {} bytes exceeds the maximum of {} bytes", len, max;
    }
}

hot_error! {
    /// Why [`Sender::send_timeout`](crate::Sender::send_timeout) did not send.
    SendTimeoutError {
        /// The queue stayed full until the deadline.
        Timeout => "timed out waiting for space in the queue";
        /// No live receiver is attached.
        Disconnected => "no receiver is attached";
        /// The message is larger than the queue's maximum.
        TooLarge { len: u64, max: u64 } => "message of {} bytes exceeds the maximum of {} bytes", len, max;
    }
}

hot_error! {
    /// Why [`Sender::send`](crate::Sender::send) did not send.
    ///
    /// There is no conversion from [`SendTimeoutError`] (it would have to invent an answer
    /// for `Timeout`, or panic):
    ///
    /// ```compile_fail
    /// let e: shmq::SendError = shmq::SendTimeoutError::Timeout.into();
    /// ```
    SendError {
        /// No live receiver is attached.
        Disconnected => "no receiver is attached";
        /// The message is larger than the queue's maximum.
        TooLarge { len: u64, max: u64 } => "message of {} bytes exceeds the maximum of {} bytes", len, max;
    }
}

hot_error! {
    /// Why [`Receiver::try_recv`](crate::Receiver::try_recv) returned no message.
    TryRecvError {
        /// No message is waiting.
        Empty => "queue is empty";
        /// The queue is empty and no live sender is attached.
        Disconnected => "queue is empty and no sender is attached";
    }
}

hot_error! {
    /// Why [`Receiver::recv_timeout`](crate::Receiver::recv_timeout) returned no message.
    RecvTimeoutError {
        /// No message arrived before the deadline.
        Timeout => "timed out waiting for a message";
        /// The queue is empty and no live sender is attached.
        Disconnected => "queue is empty and no sender is attached";
    }
}

hot_error! {
    /// Why [`Receiver::recv`](crate::Receiver::recv) returned no message.
    ///
    /// There is no conversion from [`RecvTimeoutError`] (it would have to invent an answer
    /// for `Timeout`, or panic):
    ///
    /// ```compile_fail
    /// let e: shmq::RecvError = shmq::RecvTimeoutError::Timeout.into();
    /// ```
    RecvError {
        /// The queue is empty and no live sender is attached.
        Disconnected => "queue is empty and no sender is attached";
    }
}

/// [`Sender::wait_for_acks`](crate::Sender::wait_for_acks) reached its deadline with
/// messages still unacknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckTimeoutError;

impl fmt::Display for AckTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("timed out waiting for acknowledgements")
    }
}

impl std::error::Error for AckTimeoutError {}

// Conversions between the flavours, used by the shared send/receive paths.
impl From<TrySendError> for SendTimeoutError {
    fn from(e: TrySendError) -> Self {
        match e {
            TrySendError::Full => SendTimeoutError::Timeout,
            TrySendError::Disconnected => SendTimeoutError::Disconnected,
            TrySendError::TooLarge { len, max } => SendTimeoutError::TooLarge { len, max },
            TrySendError::Failed(e) => SendTimeoutError::Failed(e),
        }
    }
}

#[cfg_attr(shmq_loom, allow(dead_code))]
impl SendError {
    /// For a wait without deadline, where `Timeout` cannot happen. (Not a public `From`:
    /// that would have to invent an answer for `Timeout`, or panic, for any caller.)
    pub(crate) fn untimed(e: SendTimeoutError) -> Self {
        match e {
            SendTimeoutError::Timeout => SendError::Failed(Error::new(
                ErrorKind::Io,
                "internal error: a send without deadline timed out",
            )),
            SendTimeoutError::Disconnected => SendError::Disconnected,
            SendTimeoutError::TooLarge { len, max } => SendError::TooLarge { len, max },
            SendTimeoutError::Failed(e) => SendError::Failed(e),
        }
    }
}

impl From<TryRecvError> for RecvTimeoutError {
    fn from(e: TryRecvError) -> Self {
        match e {
            TryRecvError::Empty => RecvTimeoutError::Timeout,
            TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
            TryRecvError::Failed(e) => RecvTimeoutError::Failed(e),
        }
    }
}

#[cfg_attr(shmq_loom, allow(dead_code))]
impl RecvError {
    /// For a wait without deadline, where `Timeout` cannot happen (see
    /// [`SendError::untimed`]).
    pub(crate) fn untimed(e: RecvTimeoutError) -> Self {
        match e {
            RecvTimeoutError::Timeout => RecvError::Failed(Error::new(
                ErrorKind::Io,
                "internal error: a receive without deadline timed out",
            )),
            RecvTimeoutError::Disconnected => RecvError::Disconnected,
            RecvTimeoutError::Failed(e) => RecvError::Failed(e),
        }
    }
}

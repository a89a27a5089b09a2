//! Iterating over a [`Receiver`], and deadlines (an [`Instant`]) for the blocking calls:
//! the shapes crossbeam-channel offers, built on the receive and send paths alone (no
//! shared-memory step of their own).
//!
//! The iterators yield `Result<Message, Error>`, not `Message`: a receive can fail
//! without the queue being finished (a payload this process cannot map is handed to
//! another receiver; a corrupt word), and an iterator that ended there would look like
//! a disconnected queue. They end when the queue is empty and no sender is attached
//! ([`iter`](Receiver::iter)), or, for [`try_iter`](Receiver::try_iter), also when it is
//! empty. After an `Err` the iterator goes on; break out of the loop to stop.

use crate::error::{Error, RecvError, RecvTimeoutError, SendTimeoutError, TryRecvError};
use crate::handles::{Loan, Message, Receiver, Sender};
use std::time::Instant;

/// Blocking iterator over a receiver's messages ([`Receiver::iter`]).
#[derive(Debug)]
pub struct Iter<'a> {
    rx: &'a Receiver,
}

/// Non-blocking iterator over the messages waiting now ([`Receiver::try_iter`]).
#[derive(Debug)]
pub struct TryIter<'a> {
    rx: &'a Receiver,
}

/// Blocking iterator that owns its receiver (`for m in rx`).
#[derive(Debug)]
pub struct IntoIter {
    rx: Receiver,
}

impl Iterator for Iter<'_> {
    type Item = Result<Message, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.rx.recv() {
            Ok(m) => Some(Ok(m)),
            Err(RecvError::Disconnected) => None,
            Err(RecvError::Failed(e)) => Some(Err(e)),
        }
    }
}

impl Iterator for TryIter<'_> {
    type Item = Result<Message, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.rx.try_recv() {
            Ok(m) => Some(Ok(m)),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
            Err(TryRecvError::Failed(e)) => Some(Err(e)),
        }
    }
}

impl Iterator for IntoIter {
    type Item = Result<Message, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        Iter { rx: &self.rx }.next()
    }
}

impl<'a> IntoIterator for &'a Receiver {
    type Item = Result<Message, Error>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl IntoIterator for Receiver {
    type Item = Result<Message, Error>;
    type IntoIter = IntoIter;

    fn into_iter(self) -> IntoIter {
        IntoIter { rx: self }
    }
}

impl Receiver {
    /// An iterator that blocks for each message and ends once the queue is empty and no
    /// live sender is attached. Each item is what [`recv`](Self::recv) returned
    /// (`Disconnected` ends it; `Failed` is yielded as `Err` and the iteration goes on).
    ///
    /// ```
    /// # fn main() -> Result<(), shmq::Error> {
    /// let (tx, rx) = shmq::channel(4)?;
    /// for i in 0..3u8 {
    ///     tx.send(&[i]).unwrap();
    /// }
    /// drop(tx); // the last sender: the iteration ends after the three messages
    /// let got: Vec<u8> = rx.iter().map(|m| m.map(|m| m[0])).collect::<Result<_, _>>()?;
    /// assert_eq!(got, [0, 1, 2]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn iter(&self) -> Iter<'_> {
        Iter { rx: self }
    }

    /// An iterator over the messages waiting now: it ends at the first `Empty` (or
    /// `Disconnected`), never blocks.
    ///
    /// ```
    /// # fn main() -> Result<(), shmq::Error> {
    /// let (tx, rx) = shmq::channel(4)?;
    /// tx.send(b"a").unwrap();
    /// tx.send(b"b").unwrap();
    /// assert_eq!(rx.try_iter().count(), 2); // and the sender is still attached
    /// # Ok(())
    /// # }
    /// ```
    pub fn try_iter(&self) -> TryIter<'_> {
        TryIter { rx: self }
    }

    /// Takes a message, waiting until `deadline` at most.
    ///
    /// # Errors
    /// As [`recv_timeout`](Self::recv_timeout); a deadline already past looks once.
    pub fn recv_deadline(&self, deadline: Instant) -> Result<Message, RecvTimeoutError> {
        self.recv_timeout(deadline.saturating_duration_since(Instant::now()))
    }
}

impl Sender {
    /// Sends `msg`, waiting for space until `deadline` at most.
    ///
    /// # Errors
    /// As [`send_timeout`](Self::send_timeout); a deadline already past tries once.
    pub fn send_deadline(&self, msg: &[u8], deadline: Instant) -> Result<(), SendTimeoutError> {
        self.send_timeout(msg, deadline.saturating_duration_since(Instant::now()))
    }

    /// Borrows a payload slot of `len` bytes, waiting for one until `deadline` at most.
    ///
    /// # Errors
    /// As [`loan_timeout`](Self::loan_timeout).
    pub fn loan_deadline(&self, len: usize, deadline: Instant) -> Result<Loan, SendTimeoutError> {
        self.loan_timeout(len, deadline.saturating_duration_since(Instant::now()))
    }
}

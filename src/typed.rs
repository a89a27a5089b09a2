//! Typed payloads: send a `&[T]` and read a `&[T]` view for plain-old-data `T` (`f32`,
//! `i64`, `u8`, `#[derive(Pod)]` structs, …) without hand-casting bytes.
//!
//! The rules a type must follow are those of [`bytemuck::Pod`] (no padding, no pointers,
//! every bit pattern valid, `Copy + 'static`); the trait is re-exported as
//! [`shmq::Pod`](Pod). To derive it for a `#[repr(C)]` struct of your own, add `bytemuck`
//! (feature `derive`) to your dependencies, or point the derive at our re-export with
//! `#[bytemuck(crate = "shmq::typed::bytemuck")]`. Every payload starts 64-byte aligned in shared
//! memory (inline and segment alike), so any `T` with alignment ≤ 64 can be viewed in
//! place; only the length must be a multiple of `size_of::<T>()`.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (tx, rx) = shmq::channel(4)?;
//! let frame: Vec<f32> = (0..84 * 84).map(|i| i as f32).collect();
//! tx.send_slice(&frame)?;
//! let msg = rx.recv()?;
//! let view: &[f32] = msg.cast()?; // zero-copy
//! assert_eq!(view, &frame[..]);
//!
//! let mut loan = tx.loan_slice::<i64>(3)?; // write typed, in place
//! loan.cast_mut::<i64>()?.copy_from_slice(&[1, 2, 3]);
//! loan.send()?;
//! assert_eq!(rx.recv()?.cast::<i64>()?, &[1, 2, 3]);
//! # Ok(()) }
//! ```

use crate::{Loan, Message, SendError, Sender};
pub use bytemuck;
pub use bytemuck::{Pod, Zeroable};
use std::fmt;

/// A payload cannot be viewed as `[T]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CastError {
    /// Payload length in bytes.
    pub len: usize,
    /// `size_of::<T>()`.
    pub size: usize,
    /// `align_of::<T>()`.
    pub align: usize,
    /// The payload's address modulo `align` (0 unless `align > 64`).
    pub misalignment: usize,
}

impl fmt::Display for CastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.misalignment != 0 {
            write!(
                f,
                "payload is not aligned to {} bytes (type alignment above 64 is not supported)",
                self.align
            )
        } else {
            write!(
                f,
                "payload of {} bytes is not a whole number of {}-byte elements",
                self.len, self.size
            )
        }
    }
}

impl std::error::Error for CastError {}

fn cast_err<T>(bytes: &[u8]) -> CastError {
    let align = std::mem::align_of::<T>();
    CastError {
        len: bytes.len(),
        size: std::mem::size_of::<T>(),
        align,
        misalignment: bytes.as_ptr() as usize % align,
    }
}

fn cast<T: Pod>(bytes: &[u8]) -> Result<&[T], CastError> {
    if std::mem::size_of::<T>() == 0 {
        return Err(cast_err::<T>(bytes));
    }
    bytemuck::try_cast_slice(bytes).map_err(|_| cast_err::<T>(bytes))
}

fn cast_mut<T: Pod>(bytes: &mut [u8]) -> Result<&mut [T], CastError> {
    if std::mem::size_of::<T>() == 0 {
        return Err(cast_err::<T>(bytes));
    }
    let e = cast_err::<T>(bytes);
    bytemuck::try_cast_slice_mut(bytes).map_err(|_| e)
}

impl Message {
    /// The payload as a `&[T]`, in place.
    ///
    /// # Errors
    /// [`CastError`] if the length is not a multiple of `size_of::<T>()` (or `T` is
    /// zero-sized, or needs alignment above 64).
    pub fn cast<T: Pod>(&self) -> Result<&[T], CastError> {
        cast(self)
    }
}

impl Loan {
    /// The buffer as a `&mut [T]`, to fill in place.
    ///
    /// # Errors
    /// As [`Message::cast`].
    pub fn cast_mut<T: Pod>(&mut self) -> Result<&mut [T], CastError> {
        cast_mut(self)
    }
}

impl Sender {
    /// Sends a copy of `data` (blocking while the queue is full); receivers view it with
    /// [`Message::cast`].
    ///
    /// # Errors
    /// As [`Sender::send`].
    pub fn send_slice<T: Pod>(&self, data: &[T]) -> Result<(), SendError> {
        self.send(bytemuck::cast_slice(data))
    }

    /// A loan of `n` elements of `T` (see [`Sender::loan`]); fill it through
    /// [`Loan::cast_mut`].
    ///
    /// # Errors
    /// As [`Sender::loan`]; `TooLarge` also if `n * size_of::<T>()` overflows.
    pub fn loan_slice<T: Pod>(&self, n: usize) -> Result<Loan, SendError> {
        let len = n
            .checked_mul(std::mem::size_of::<T>())
            .ok_or(SendError::TooLarge {
                len: u64::MAX,
                max: self.max_message_size(),
            })?;
        self.loan(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cast_rejects_a_ragged_length_with_a_clear_error() {
        let (tx, rx) = crate::channel(2).unwrap();
        tx.send(&[0u8; 10]).unwrap();
        let m = rx.recv().unwrap();
        let e = m.cast::<f32>().unwrap_err();
        assert_eq!((e.len, e.size), (10, 4));
        assert_eq!(
            e.to_string(),
            "payload of 10 bytes is not a whole number of 4-byte elements"
        );
        assert!(m.cast::<u16>().is_ok());
    }

    #[test]
    fn payloads_are_64_byte_aligned_inline_and_in_segments() {
        let (tx, rx) = crate::channel(4).unwrap();
        for len in [8usize, 192, 193, 1 << 16] {
            tx.send(&vec![1u8; len]).unwrap();
            let m = rx.recv().unwrap();
            assert_eq!(m.as_ptr() as usize % 64, 0, "len {len}");
            #[derive(Clone, Copy, Pod, Zeroable)]
            #[repr(C, align(64))]
            struct Line([u8; 64]);
            if len % 64 == 0 {
                assert_eq!(m.cast::<Line>().unwrap().len(), len / 64);
            }
        }
    }
}

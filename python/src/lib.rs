//! `shmq._shmq`: the Python binding of shmq (the compiled half of the `shmq` package).
//!
//! What it owns: one Python class per core handle ([`PySender`], [`PyReceiver`],
//! [`PyLoan`], [`PyMessage`]), the conversion of Python timeouts to waits, the waits
//! themselves, the mapping of core errors to the exceptions of `shmq/_errors.py`, and the
//! layout of a pickled message. Pickling, the drop-in API and process hand-over live in
//! Python (`shmq/__init__.py`, `shmq/_dropin.py`); every byte copy lives here, with the GIL
//! released above [`DETACH_BYTES`].
//!
//! **Waiting.** The core's futex wait re-sleeps on `EINTR`, so one long wait would ignore
//! Ctrl-C. Every blocking call waits in slices of [`SLICE`] with the GIL released and, between
//! slices, checks Python's signals (`KeyboardInterrupt` on the main thread) and whether
//! the handle was closed by another thread (then `BrokenPipeError`). A slice that ends
//! early costs one futex call; nothing is lost or duplicated by a slice boundary because
//! every core call either completes or changes nothing.
//!
//! **Zero copy.** A [`PyMessage`] exports its payload read-only through the buffer
//! protocol; every `memoryview`/NumPy view holds a reference to it, so the core `Message`
//! is dropped (the acknowledgement) only when the last view is gone. Views stay
//! read-only: a message held by a consumer that dies is redelivered, and a consumer that
//! wrote into it first would pass corrupted data on. A [`PyLoan`] exports its buffer
//! writable and refuses to be sent while views of it are alive (as `bytearray` refuses to
//! resize), so no Python object can write into a payload after it was committed.
//!
//! **Fork.** Python's `multiprocessing` forks with the parent's objects. The core makes
//! inherited `Sender`/`Receiver` handles attach afresh on first use and inherited loans and
//! messages inert when dropped; here, an inherited message or loan refuses to export its
//! bytes (`BufferError`) and to be sent, instead of reaching the core's panic.
//!
//! **Pickled message layout** (written by [`PySender::send_parts`], read by
//! [`PyMessage::pickle_layout`]; all little-endian):
//!
//! ```text
//! 0   magic  "shmqPK5\0"            8 bytes
//! 8   nbufs  u32, reserved u32      out-of-band buffer count
//! 16  stream_len u64                the in-band pickle stream
//! 24  nbufs × (offset u64, len u64) each out-of-band buffer, 64-byte aligned
//! 24 + 16·nbufs                     the in-band stream
//! ```
//!
//! Shared memory is untrusted: the reader checks the magic, the count and every range
//! against the message length before slicing.
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyBufferError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyList, PyTuple};

mod holds;

/// The longest a blocking call sleeps without checking signals and `close()`.
const SLICE: Duration = Duration::from_millis(50);
/// Copies at least this long run with the GIL released.
const DETACH_BYTES: usize = 64 * 1024;
/// Out-of-band buffers start at multiples of this (NumPy's and SIMD's alignment).
const ALIGN: usize = 64;
const MAGIC: &[u8; 8] = b"shmqPK5\0";
const HEADER: usize = 24;

// ---------------------------------------------------------------------------------------
// This process's id

/// `getpid` is a system call (~0.15 µs here), and a received message checked it three or
/// four times, so it is cached: cleared in a forked child by a `pthread_atfork` handler
/// (installed when the module loads; until then, and if that fails, nothing is cached).
static PID: AtomicU32 = AtomicU32::new(0);
static PID_CACHE: AtomicBool = AtomicBool::new(false);

extern "C" fn forget_pid() {
    PID.store(0, Ordering::Relaxed);
}

fn install_pid_cache() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a function without arguments that only stores to an atomic
        // (async-signal-safe, as a handler running in a forked child must be).
        if unsafe { libc::pthread_atfork(None, None, Some(forget_pid)) } == 0 {
            PID_CACHE.store(true, Ordering::Relaxed);
        }
    });
}

/// This process's id (as `std::process::id()`).
fn pid() -> u32 {
    if !PID_CACHE.load(Ordering::Relaxed) {
        return std::process::id();
    }
    match PID.load(Ordering::Relaxed) {
        0 => {
            let p = std::process::id();
            PID.store(p, Ordering::Relaxed);
            p
        }
        p => p,
    }
}

// ---------------------------------------------------------------------------------------
// Exceptions (defined in Python, `shmq/_errors.py`, so they can subclass `queue.Full` etc.)

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn raise<'py, A: pyo3::call::PyCallArgs<'py>>(py: Python<'py>, class: &str, args: A) -> PyErr {
    let make = || -> PyResult<PyErr> {
        let m = ERRORS.get_or_try_init(py, || py.import("shmq._errors").map(Bound::unbind))?;
        let cls = m.bind(py).getattr(class)?;
        Ok(PyErr::from_value(cls.call1(args)?))
    };
    make().unwrap_or_else(|e| e)
}

fn closed_err(py: Python<'_>, what: &str) -> PyErr {
    raise(py, "Closed", (format!("{what} is closed"),))
}

/// A core error as its Python exception: OS-flavoured kinds subclass the matching
/// `OSError` and carry an errno.
fn core_err(py: Python<'_>, e: shmq::Error) -> PyErr {
    use shmq::ErrorKind as K;
    let msg = e.to_string();
    let os = |class: &str, errno: i32| raise(py, class, (errno, msg.clone()));
    match e.kind() {
        K::NotFound => os("NotFound", libc_errno::ENOENT),
        K::AlreadyExists => os("AlreadyExists", libc_errno::EEXIST),
        K::PermissionDenied => os("PermissionDenied", libc_errno::EACCES),
        K::NoSpace => os("NoSpace", libc_errno::ENOSPC),
        K::Io => {
            let errno = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .and_then(std::io::Error::raw_os_error)
                .unwrap_or(libc_errno::EIO);
            os("IOFailure", errno)
        }
        K::InvalidName => raise(py, "InvalidName", (msg,)),
        K::InvalidArgument => raise(py, "InvalidArgument", (msg,)),
        K::NotAQueue => raise(py, "NotAQueue", (msg,)),
        K::VersionMismatch => raise(py, "VersionMismatch", (msg,)),
        K::Corrupt => raise(py, "Corrupt", (msg,)),
        K::TooManyParticipants => raise(py, "TooManyParticipants", (msg,)),
        K::Forked => raise(py, "Forked", (msg,)),
        K::Closed => raise(py, "Disconnected", (msg,)),
        _ => raise(py, "ShmqError", (msg,)),
    }
}

/// The errnos used above (the values Linux uses on every architecture shmq supports).
mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const EACCES: i32 = 13;
    pub const EEXIST: i32 = 17;
    pub const ENOSPC: i32 = 28;
}

fn too_large(py: Python<'_>, len: u64, max: u64) -> PyErr {
    raise(
        py,
        "TooLarge",
        (format!(
            "message of {len} bytes exceeds the queue's maximum of {max} bytes \
             (max_message_size when the queue was created)"
        ),),
    )
}

fn send_err(py: Python<'_>, e: shmq::SendTimeoutError) -> PyErr {
    use shmq::SendTimeoutError as E;
    match e {
        E::Timeout => raise(py, "Full", ("queue is full",)),
        E::Disconnected => raise(
            py,
            "Disconnected",
            ("no receiver is attached to the queue",),
        ),
        E::TooLarge { len, max } => too_large(py, len, max),
        E::Failed(e) => core_err(py, e),
        other => raise(py, "ShmqError", (other.to_string(),)),
    }
}

fn recv_err(py: Python<'_>, e: shmq::RecvTimeoutError) -> PyErr {
    use shmq::RecvTimeoutError as E;
    match e {
        E::Timeout => raise(py, "Empty", ("queue is empty",)),
        E::Disconnected => raise(
            py,
            "Disconnected",
            ("the queue is empty and no sender is attached",),
        ),
        E::Failed(e) => core_err(py, e),
        other => raise(py, "ShmqError", (other.to_string(),)),
    }
}

// ---------------------------------------------------------------------------------------
// Timeouts and waiting

/// What a Python `(block, timeout)` pair asks for.
#[derive(Clone, Copy)]
enum Wait {
    /// Try once (`block=False`, `timeout <= 0`).
    Once,
    /// Until this instant.
    Until(Instant),
    /// Without limit (`timeout=None`, `math.inf`, or too large to represent).
    Forever,
}

impl Wait {
    fn from_py(block: bool, timeout: Option<f64>) -> PyResult<Wait> {
        if !block {
            return Ok(Wait::Once);
        }
        let Some(t) = timeout else {
            return Ok(Wait::Forever);
        };
        if t.is_nan() {
            return Err(PyValueError::new_err("timeout must not be NaN"));
        }
        if t <= 0.0 {
            return Ok(Wait::Once);
        }
        Ok(Duration::try_from_secs_f64(t)
            .ok()
            .and_then(|d| Instant::now().checked_add(d))
            .map_or(Wait::Forever, Wait::Until))
    }

    /// The next slice to sleep, or `None` once the deadline has passed.
    fn slice(self) -> Option<Duration> {
        match self {
            Wait::Once => None,
            Wait::Forever => Some(SLICE),
            Wait::Until(d) => {
                let left = d.saturating_duration_since(Instant::now());
                (!left.is_zero()).then(|| left.min(SLICE))
            }
        }
    }
}

/// Runs `attempt` (given the slice to wait, `None` = do not wait) until it returns
/// `Some`, between slices checking signals and `closed`. `timed_out` builds the error for
/// a deadline that passed.
fn wait_loop<T, E: Send>(
    py: Python<'_>,
    wait: Wait,
    closed: &AtomicBool,
    what: &str,
    mut attempt: impl FnMut(Option<Duration>) -> Result<Option<T>, E> + Send,
    err: impl Fn(Python<'_>, E) -> PyErr,
    timed_out: impl Fn(Python<'_>) -> PyErr,
) -> PyResult<T>
where
    T: Send,
{
    // The first attempt never waits: it is the whole of a `try_` call and the fast path
    // of a blocking one.
    if let Some(v) = attempt(None).map_err(|e| err(py, e))? {
        return Ok(v);
    }
    loop {
        if closed.load(Ordering::Acquire) {
            return Err(closed_err(py, what));
        }
        let Some(slice) = wait.slice() else {
            return Err(timed_out(py));
        };
        if let Some(v) = py.detach(|| attempt(Some(slice))).map_err(|e| err(py, e))? {
            return Ok(v);
        }
        py.check_signals()?;
    }
}

// ---------------------------------------------------------------------------------------
// Handles shared by Sender and Receiver

/// A core handle behind a lock, so `close()` in one thread can take it while another
/// thread waits with its own `Arc` (the handle detaches when that wait returns). It counts
/// itself among this process's open endpoints of its queue (`holds::opened`) from creation
/// to `close` or drop, in the process that created it only.
struct Slot<T> {
    inner: Mutex<Option<Arc<T>>>,
    closed: AtomicBool,
    name: String,
    pid: u32,
}

impl<T> Slot<T> {
    fn new(v: T, name: &str) -> Slot<T> {
        holds::opened(name);
        Slot {
            inner: Mutex::new(Some(Arc::new(v))),
            closed: AtomicBool::new(false),
            name: name.to_string(),
            pid: pid(),
        }
    }
    fn lock(&self) -> MutexGuard<'_, Option<Arc<T>>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn get(&self, py: Python<'_>, what: &str) -> PyResult<Arc<T>> {
        self.lock().clone().ok_or_else(|| closed_err(py, what))
    }
    /// Returns the handle (the first time) so the caller can drop it with the GIL released.
    fn close(&self) -> Option<Arc<T>> {
        self.closed.store(true, Ordering::Release);
        let h = self.lock().take();
        if h.is_some() && self.pid == pid() {
            holds::closed(&self.name);
        }
        h
    }
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

impl<T> Drop for Slot<T> {
    fn drop(&mut self) {
        self.close();
    }
}

#[allow(clippy::too_many_arguments)]
fn create_options(
    capacity: usize,
    name: Option<String>,
    max_message_size: Option<u64>,
    max_payload_bytes: Option<u64>,
    slots: Option<usize>,
    max_participants: Option<usize>,
    delivery: Option<&str>,
    max_deliveries: Option<u32>,
) -> PyResult<shmq::Builder> {
    let mut b = shmq::Builder::new().capacity(capacity);
    if let Some(n) = name {
        b = b.name(n);
    }
    if let Some(n) = max_message_size {
        b = b.max_message_size(n);
    }
    if let Some(n) = max_payload_bytes {
        b = b.max_payload_bytes(n);
    }
    if let Some(n) = slots {
        b = b.slots(n);
    }
    if let Some(n) = max_participants {
        b = b.max_participants(n);
    }
    if let Some(d) = delivery {
        b = b.delivery(match d {
            "at_least_once" => shmq::Delivery::AtLeastOnce,
            "at_most_once" => shmq::Delivery::AtMostOnce,
            other => {
                return Err(PyValueError::new_err(format!(
                    "delivery must be 'at_least_once' or 'at_most_once', not {other:?}"
                )))
            }
        });
    }
    if let Some(n) = max_deliveries {
        b = b.max_deliveries(n);
    }
    Ok(b)
}

/// Creates a queue; returns its first sender and receiver (as the given Python classes,
/// which may be subclasses of [`PySender`]/[`PyReceiver`]).
#[pyfunction]
#[pyo3(signature = (sender_cls, receiver_cls, capacity, *, name=None, max_message_size=None,
    max_payload_bytes=None, slots=None, max_participants=None, delivery=None,
    max_deliveries=None))]
#[allow(clippy::too_many_arguments)]
fn create<'py>(
    py: Python<'py>,
    sender_cls: &Bound<'py, PyAny>,
    receiver_cls: &Bound<'py, PyAny>,
    capacity: usize,
    name: Option<String>,
    max_message_size: Option<u64>,
    max_payload_bytes: Option<u64>,
    slots: Option<usize>,
    max_participants: Option<usize>,
    delivery: Option<&str>,
    max_deliveries: Option<u32>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let b = create_options(
        capacity,
        name,
        max_message_size,
        max_payload_bytes,
        slots,
        max_participants,
        delivery,
        max_deliveries,
    )?;
    let (tx, rx) = py.detach(|| b.create()).map_err(|e| core_err(py, e))?;
    let tx = sender_cls.call1((Wrapped::new(WrappedInner::Sender(tx)),))?;
    let rx = receiver_cls.call1((Wrapped::new(WrappedInner::Receiver(rx)),))?;
    Ok((tx, rx))
}

/// A core handle in transit from [`create`] to a Python class's constructor.
#[pyclass(module = "shmq._shmq")]
struct Wrapped {
    inner: Mutex<Option<WrappedInner>>,
}

enum WrappedInner {
    Sender(shmq::Sender),
    Receiver(shmq::Receiver),
}

impl Wrapped {
    fn new(w: WrappedInner) -> Wrapped {
        Wrapped {
            inner: Mutex::new(Some(w)),
        }
    }
    fn take(&self) -> Option<WrappedInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// `Sender(name)` / `Receiver(name)` attach to a queue by name; given a handle from
/// [`create`] instead, they wrap it (`take` picks the right kind out of it).
fn attach<T>(
    py: Python<'_>,
    arg: &Bound<'_, PyAny>,
    take: impl FnOnce(WrappedInner) -> Option<T>,
    open: impl FnOnce(&str) -> Result<T, shmq::Error> + Send,
) -> PyResult<T>
where
    T: Send,
{
    if let Ok(w) = arg.cast::<Wrapped>() {
        return w
            .borrow()
            .take()
            .and_then(take)
            .ok_or_else(|| PyValueError::new_err("this handle was already used"));
    }
    let name: String = arg
        .extract()
        .map_err(|_| PyTypeError::new_err("a queue name (str) is needed"))?;
    py.detach(|| open(&name)).map_err(|e| core_err(py, e))
}

// ---------------------------------------------------------------------------------------
// Sender

/// A contiguous byte range of a Python buffer, held (its export open) while we copy.
struct Piece {
    buf: PyUntypedBuffer,
}

impl Piece {
    fn get(obj: &Bound<'_, PyAny>) -> PyResult<Piece> {
        let buf = PyUntypedBuffer::get(obj)?;
        if !buf.is_c_contiguous() {
            return Err(PyBufferError::new_err(
                "a C-contiguous buffer is needed (numpy.ascontiguousarray makes one)",
            ));
        }
        Ok(Piece { buf })
    }
    fn len(&self) -> usize {
        self.buf.len_bytes()
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: the export is open while `self.buf` lives, and it is C-contiguous, so
        // `buf_ptr..+len_bytes` is readable; the exporter may be written by other Python
        // threads meanwhile (as with any buffer copy in CPython), which changes bytes,
        // never the range.
        unsafe { std::slice::from_raw_parts(self.buf.buf_ptr() as *const u8, self.len()) }
    }
}

/// Where each part of a pickled message goes.
struct Layout {
    stream_at: usize,
    /// `(offset, len)` of each out-of-band buffer.
    at: Vec<(usize, usize)>,
    total: usize,
}

fn pickled_layout(stream_len: usize, bufs: &[usize]) -> Option<Layout> {
    let stream_at = HEADER.checked_add(bufs.len().checked_mul(16)?)?;
    let mut end = stream_at.checked_add(stream_len)?;
    let mut at = Vec::with_capacity(bufs.len());
    for &len in bufs {
        let off = end.checked_add(ALIGN - 1)? / ALIGN * ALIGN;
        at.push((off, len));
        end = off.checked_add(len)?;
    }
    Some(Layout {
        stream_at,
        at,
        total: end,
    })
}

fn write_pickled(dst: &mut [u8], stream: &[Piece], bufs: &[Piece], layout: &Layout) {
    let Layout { stream_at, at, .. } = layout;
    let stream_len: usize = stream.iter().map(Piece::len).sum();
    dst[..8].copy_from_slice(MAGIC);
    dst[8..12].copy_from_slice(&(bufs.len() as u32).to_le_bytes());
    dst[12..16].copy_from_slice(&0u32.to_le_bytes());
    dst[16..24].copy_from_slice(&(stream_len as u64).to_le_bytes());
    for (i, &(off, len)) in at.iter().enumerate() {
        let h = HEADER + 16 * i;
        dst[h..h + 8].copy_from_slice(&(off as u64).to_le_bytes());
        dst[h + 8..h + 16].copy_from_slice(&(len as u64).to_le_bytes());
    }
    let mut pos = *stream_at;
    for p in stream {
        dst[pos..pos + p.len()].copy_from_slice(p.bytes());
        pos += p.len();
    }
    for (p, &(off, len)) in bufs.iter().zip(at) {
        // Zero the alignment gap: no stale bytes of an earlier message go out.
        dst[pos..off].fill(0);
        dst[off..off + len].copy_from_slice(p.bytes());
        pos = off + len;
    }
}

/// A new `bytearray` of `n` bytes whose contents are not initialised (the caller fills
/// all of them). Not zero-filling halves the cost of a large receive copy; and a large
/// one is marked for transparent huge pages first, so filling it takes one page fault per
/// 2 MiB instead of one per 4 KiB (where THP is `madvise`, as on this project's machines:
/// 100 MB copied in 37 ms instead of 117).
fn uninit_bytearray(py: Python<'_>, n: usize) -> PyResult<Bound<'_, PyByteArray>> {
    // SAFETY: a NULL source asks CPython for an uninitialised buffer of `n` bytes.
    let out = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyByteArray_FromStringAndSize(std::ptr::null(), n as ffi::Py_ssize_t),
        )?
    };
    let out = out.cast_into::<PyByteArray>()?;
    const HUGE: usize = 2 << 20;
    if n >= 2 * HUGE {
        // Only the address is used, to advise the kernel about whole 2 MiB pages inside
        // the buffer.
        let start = out.data() as usize;
        let first = start.div_ceil(HUGE) * HUGE;
        let end = (start + n) / HUGE * HUGE;
        if end > first {
            // SAFETY: `first..end` lies within the buffer just allocated; MADV_HUGEPAGE
            // changes no contents. A failure only means small pages.
            unsafe { libc::madvise(first as *mut _, end - first, libc::MADV_HUGEPAGE) };
        }
    }
    Ok(out)
}

/// Reads a pickled message's layout (see the module doc), checking every range against
/// the message: shared memory is untrusted. `total` is where the stream ends.
fn parse_layout(b: &[u8]) -> Result<Layout, &'static str> {
    if b.len() < HEADER || &b[..8] != MAGIC {
        return Err("no pickle header");
    }
    let word = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let nbufs = u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")) as usize;
    let stream_len = word(16);
    let stream_at = nbufs
        .checked_mul(16)
        .and_then(|n| n.checked_add(HEADER))
        .filter(|&s| s <= b.len())
        .ok_or("buffer count out of range")?;
    let stream_end = (stream_at as u64)
        .checked_add(stream_len)
        .filter(|&e| e <= b.len() as u64)
        .ok_or("stream out of range")?;
    let mut at = Vec::with_capacity(nbufs);
    let mut prev = stream_end;
    for i in 0..nbufs {
        let (off, len) = (word(HEADER + 16 * i), word(HEADER + 16 * i + 8));
        let end = off
            .checked_add(len)
            .filter(|&e| off >= prev && e <= b.len() as u64)
            .ok_or("buffer out of range")?;
        at.push((off as usize, len as usize));
        prev = end;
    }
    Ok(Layout {
        stream_at,
        at,
        total: stream_end as usize,
    })
}

fn not_pickled(py: Python<'_>, why: &str) -> PyErr {
    raise(
        py,
        "NotPickled",
        (format!(
            "this message was not sent by Sender.send (a pickled object): {why}; \
             read it with recv_bytes()"
        ),),
    )
}

/// The sending side of a queue (`shmq.Sender` subclasses it).
#[pyclass(subclass, module = "shmq._shmq", name = "Sender")]
struct PySender {
    h: Slot<shmq::Sender>,
}

impl PySender {
    fn handle(&self, py: Python<'_>) -> PyResult<Arc<shmq::Sender>> {
        self.h.get(py, "Sender")
    }

    /// Takes a loan of `len` bytes, waiting as `wait` says.
    fn loan_wait(&self, py: Python<'_>, len: usize, wait: Wait) -> PyResult<shmq::Loan> {
        let tx = self.handle(py)?;
        wait_loop(
            py,
            wait,
            &self.h.closed,
            "Sender",
            |slice| match slice {
                None => match tx.try_loan(len) {
                    Ok(l) => Ok(Some(l)),
                    Err(shmq::TrySendError::Full) => Ok(None),
                    Err(e) => Err(shmq::SendTimeoutError::from(e)),
                },
                Some(d) => match tx.loan_timeout(len, d) {
                    Ok(l) => Ok(Some(l)),
                    Err(shmq::SendTimeoutError::Timeout) => Ok(None),
                    Err(e) => Err(e),
                },
            },
            send_err,
            |py| raise(py, "Full", ("queue is full",)),
        )
    }

    /// Commits a filled loan, waiting as `wait` says for a place in the ring.
    fn commit(&self, py: Python<'_>, loan: shmq::Loan, wait: Wait) -> PyResult<()> {
        commit(py, loan, wait, &self.h.closed)
    }
}

/// Commits a filled loan, waiting as `wait` says for a place in the ring (the loan comes
/// back from every attempt that found the ring full), until `closed` is set.
fn commit(py: Python<'_>, loan: shmq::Loan, wait: Wait, closed: &AtomicBool) -> PyResult<()> {
    let mut loan = Some(loan);
    wait_loop(
        py,
        wait,
        closed,
        "Sender",
        |slice| {
            let l = loan.take().expect("a loan to commit");
            let r = match slice {
                None => l.try_send().map_err(|u| (u.loan, u.error.into())),
                Some(d) => l.send_timeout(d).map_err(|u| (u.loan, u.error)),
            };
            match r {
                Ok(()) => Ok(Some(())),
                Err((l, shmq::SendTimeoutError::Timeout)) => {
                    loan = Some(l);
                    Ok(None)
                }
                Err((_, e)) => Err(e),
            }
        },
        send_err,
        |py| raise(py, "Full", ("queue is full",)),
    )
}

fn fill(py: Python<'_>, total: usize, loan: &mut shmq::Loan, f: impl FnOnce(&mut [u8]) + Send) {
    if total >= DETACH_BYTES {
        py.detach(|| f(&mut loan[..]));
    } else {
        f(&mut loan[..]);
    }
}

#[pymethods]
impl PySender {
    /// `Sender(name)`: attaches a new sender to the existing queue `name`.
    #[new]
    fn new(py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<Self> {
        let take = |w| match w {
            WrappedInner::Sender(tx) => Some(tx),
            WrappedInner::Receiver(_) => None,
        };
        let tx = attach(py, name, take, shmq::Sender::open)?;
        let name = tx.name().to_string();
        Ok(PySender {
            h: Slot::new(tx, &name),
        })
    }

    /// The queue's name: give it to other processes, which attach with `Sender(name)` /
    /// `Receiver(name)`.
    #[getter]
    fn name(&self) -> &str {
        &self.h.name
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.h.is_closed()
    }

    /// The queue's capacity (messages queued before senders wait).
    #[getter]
    fn capacity(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.handle(py)?.capacity())
    }

    /// The largest message the queue takes, in bytes.
    #[getter]
    fn max_message_size(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self.handle(py)?.max_message_size())
    }

    /// Messages queued now (a racy snapshot).
    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.handle(py)?.len())
    }

    /// Sends one copy of the bytes of `data` (any C-contiguous buffer: bytes, bytearray,
    /// memoryview, a NumPy array), without pickling.
    #[pyo3(signature = (data, block=true, timeout=None))]
    fn send_bytes(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let wait = Wait::from_py(block, timeout)?;
        let piece = Piece::get(data)?;
        let len = piece.len();
        let mut loan = self.loan_wait(py, len, wait)?;
        fill(py, len, &mut loan, |dst| dst.copy_from_slice(piece.bytes()));
        self.commit(py, loan, wait)
    }

    /// Sends a pickled object: `stream` the in-band pieces (as the pickler wrote them),
    /// `buffers` its out-of-band buffers; one loan, one copy of each.
    #[pyo3(signature = (stream, buffers, block=true, timeout=None))]
    fn send_parts(
        &self,
        py: Python<'_>,
        stream: &Bound<'_, PyList>,
        buffers: &Bound<'_, PyList>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let wait = Wait::from_py(block, timeout)?;
        let stream: Vec<Piece> = stream
            .iter()
            .map(|o| Piece::get(&o))
            .collect::<PyResult<_>>()?;
        let bufs: Vec<Piece> = buffers
            .iter()
            .map(|o| Piece::get(&o))
            .collect::<PyResult<_>>()?;
        let stream_len = stream.iter().map(Piece::len).sum();
        let lens: Vec<usize> = bufs.iter().map(Piece::len).collect();
        let layout = pickled_layout(stream_len, &lens)
            .ok_or_else(|| PyValueError::new_err("the pickled object is too large"))?;
        let total = layout.total;
        let mut loan = self.loan_wait(py, total, wait)?;
        fill(py, total, &mut loan, |dst| {
            write_pickled(dst, &stream, &bufs, &layout)
        });
        self.commit(py, loan, wait)
    }

    /// A writable buffer of `nbytes` in shared memory to fill in place, then `send()`.
    #[pyo3(signature = (nbytes, block=true, timeout=None))]
    fn loan(
        &self,
        py: Python<'_>,
        nbytes: usize,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<PyLoan> {
        let wait = Wait::from_py(block, timeout)?;
        let mut loan = self.loan_wait(py, nbytes, wait)?;
        let ptr = loan.as_mut_ptr() as usize;
        let len = loan.len();
        Ok(PyLoan {
            loan: Mutex::new(Some(loan)),
            ptr,
            len: AtomicUsize::new(len),
            exports: AtomicUsize::new(0),
            pid: pid(),
        })
    }

    /// Waits until fewer than `below` messages this sender sent are unacknowledged (by
    /// default: until all are); `False` if that had not happened when `timeout` passed
    /// (`None`: no limit). `BrokenPipeError` if the sender is closed meanwhile.
    #[pyo3(signature = (timeout=None, *, below=1))]
    fn wait_for_acks(&self, py: Python<'_>, timeout: Option<f64>, below: usize) -> PyResult<bool> {
        let wait = Wait::from_py(true, timeout)?;
        let tx = self.handle(py)?;
        if tx.wait_for_acks_below(below, Some(Duration::ZERO)).is_ok() {
            return Ok(true);
        }
        loop {
            if self.h.is_closed() {
                return Err(closed_err(py, "Sender"));
            }
            let Some(slice) = wait.slice() else {
                return Ok(false);
            };
            if py
                .detach(|| tx.wait_for_acks_below(below, Some(slice)))
                .is_ok()
            {
                return Ok(true);
            }
            py.check_signals()?;
        }
    }

    /// How many messages this sender sent that are not acknowledged yet.
    fn unacked(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.handle(py)?.unacked())
    }

    /// Detaches this sender (idempotent). Messages it sent stay queued for receivers.
    fn close(&self, py: Python<'_>) {
        if let Some(h) = self.h.close() {
            py.detach(|| drop(h));
        }
    }

    fn __repr__(&self) -> String {
        let state = if self.h.is_closed() { "closed" } else { "open" };
        format!("<shmq.Sender {:?} {state}>", self.h.name)
    }
}

// ---------------------------------------------------------------------------------------
// Loan

/// A payload buffer in shared memory, loaned to a sender: fill it through the buffer
/// protocol (`memoryview(loan)`, `numpy.frombuffer(loan, ...)`), then `send()`.
#[pyclass(module = "shmq._shmq", name = "Loan")]
struct PyLoan {
    loan: Mutex<Option<shmq::Loan>>,
    /// The loan's bytes (stable while the core `Loan` lives).
    ptr: usize,
    len: AtomicUsize,
    exports: AtomicUsize,
    pid: u32,
}

impl PyLoan {
    fn take(&self, py: Python<'_>) -> PyResult<shmq::Loan> {
        if self.pid != pid() {
            return Err(raise(
                py,
                "Forked",
                ("this loan belongs to the parent process",),
            ));
        }
        let n = self.exports.load(Ordering::Acquire);
        if n > 0 {
            return Err(PyBufferError::new_err(format!(
                "cannot send a loan while {n} buffer view(s) of it exist; release them first \
                 (del the arrays, memoryview.release())"
            )));
        }
        self.loan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| raise(py, "Closed", ("this loan was already sent or released",)))
    }
}

#[pymethods]
impl PyLoan {
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let me = slf.borrow();
        if me.pid != pid() {
            return Err(PyBufferError::new_err(
                "this loan belongs to the parent process",
            ));
        }
        let guard = me.loan.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Err(PyBufferError::new_err(
                "this loan was already sent or released",
            ));
        }
        let len = me.len.load(Ordering::Acquire);
        // SAFETY: `view` is the caller's Py_buffer; `ptr..ptr+len` lies in the loan's
        // mapping, which lives while the core `Loan` does, and the `Loan` is not sent or
        // dropped while an export is open (`exports`), since the export holds a reference
        // to this object and `take` refuses with exports open.
        let r = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                me.ptr as *mut _,
                len as ffi::Py_ssize_t,
                0,
                flags,
            )
        };
        if r != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        me.exports.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.exports.fetch_sub(1, Ordering::AcqRel);
    }

    fn __len__(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Shortens the message to its first `nbytes` (no views may be open).
    fn truncate(&self, py: Python<'_>, nbytes: usize) -> PyResult<()> {
        let mut l = self.take(py)?;
        l.truncate(nbytes);
        self.len.store(l.len(), Ordering::Release);
        *self.loan.lock().unwrap_or_else(|p| p.into_inner()) = Some(l);
        Ok(())
    }

    /// Sends the filled buffer (no views of it may be open: `BufferError`).
    #[pyo3(signature = (block=true, timeout=None))]
    fn send(&self, py: Python<'_>, block: bool, timeout: Option<f64>) -> PyResult<()> {
        let wait = Wait::from_py(block, timeout)?;
        let loan = self.take(py)?;
        // The core loan keeps its participant (and so the queue) attached by itself.
        commit(py, loan, wait, &AtomicBool::new(false))
    }

    /// Gives the buffer back unsent (no views may be open).
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let l = self.take(py)?;
        py.detach(|| drop(l));
        Ok(())
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    /// Leaving a `with` block releases an unsent loan.
    fn __exit__(
        &self,
        py: Python<'_>,
        _a: &Bound<'_, PyAny>,
        _b: &Bound<'_, PyAny>,
        _c: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let pending = self
            .loan
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if pending {
            self.release(py)?;
        }
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("<shmq.Loan {} bytes>", self.len.load(Ordering::Acquire))
    }
}

// ---------------------------------------------------------------------------------------
// Receiver

/// The receiving side of a queue (`shmq.Receiver` subclasses it).
#[pyclass(subclass, module = "shmq._shmq", name = "Receiver")]
struct PyReceiver {
    h: Slot<shmq::Receiver>,
}

#[pymethods]
impl PyReceiver {
    /// `Receiver(name)`: attaches a new receiver to the existing queue `name`.
    #[new]
    fn new(py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<Self> {
        let take = |w| match w {
            WrappedInner::Receiver(rx) => Some(rx),
            WrappedInner::Sender(_) => None,
        };
        let rx = attach(py, name, take, shmq::Receiver::open)?;
        let name = rx.name().to_string();
        Ok(PyReceiver {
            h: Slot::new(rx, &name),
        })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.h.name
    }

    #[getter]
    fn closed(&self) -> bool {
        self.h.is_closed()
    }

    #[getter]
    fn capacity(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.h.get(py, "Receiver")?.capacity())
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self.h.get(py, "Receiver")?.len())
    }

    /// The next message as a zero-copy, read-only buffer; dropping it (or `release()`)
    /// is the acknowledgement.
    #[pyo3(signature = (block=true, timeout=None))]
    fn recv_bytes(&self, py: Python<'_>, block: bool, timeout: Option<f64>) -> PyResult<PyMessage> {
        let wait = Wait::from_py(block, timeout)?;
        let rx = self.h.get(py, "Receiver")?;
        let m = wait_loop(
            py,
            wait,
            &self.h.closed,
            "Receiver",
            |slice| match slice {
                None => match rx.try_recv() {
                    Ok(m) => Ok(Some(m)),
                    Err(shmq::TryRecvError::Empty) => Ok(None),
                    Err(e) => Err(shmq::RecvTimeoutError::from(e)),
                },
                Some(d) => match rx.recv_timeout(d) {
                    Ok(m) => Ok(Some(m)),
                    Err(shmq::RecvTimeoutError::Timeout) => Ok(None),
                    Err(e) => Err(e),
                },
            },
            recv_err,
            |py| raise(py, "Empty", ("queue is empty",)),
        )?;
        Ok(PyMessage::new(m))
    }

    /// Detaches this receiver (idempotent).
    fn close(&self, py: Python<'_>) {
        if let Some(h) = self.h.close() {
            py.detach(|| drop(h));
        }
    }

    fn __repr__(&self) -> String {
        let state = if self.h.is_closed() { "closed" } else { "open" };
        format!("<shmq.Receiver {:?} {state}>", self.h.name)
    }
}

// ---------------------------------------------------------------------------------------
// Message

/// A received message: a read-only buffer over its payload in shared memory. It is
/// acknowledged when it is released: by `release()`, at the end of a `with` block, or
/// when the last reference (including every view of it) is gone.
#[pyclass(module = "shmq._shmq", name = "Message", frozen)]
struct PyMessage {
    m: Mutex<Option<shmq::Message>>,
    ptr: usize,
    len: usize,
    delivery_count: u32,
    exports: AtomicUsize,
    pid: u32,
}

impl PyMessage {
    fn new(m: shmq::Message) -> PyMessage {
        PyMessage {
            ptr: m.as_ptr() as usize,
            len: m.len(),
            delivery_count: m.delivery_count(),
            m: Mutex::new(Some(m)),
            exports: AtomicUsize::new(0),
            pid: pid(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<shmq::Message>> {
        self.m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The payload, if this process may read it.
    fn bytes(&self) -> PyResult<&[u8]> {
        if self.pid != pid() {
            return Err(PyBufferError::new_err(
                "this message belongs to the parent process",
            ));
        }
        if self.lock().is_none() {
            return Err(PyValueError::new_err("this message was released"));
        }
        // SAFETY: the core `Message` is present, so its bytes are mapped and not written
        // by anyone; it stays present while `&self` is borrowed here only if no `release()`
        // runs concurrently: callers use the slice under the GIL (`release` needs it too)
        // or while an export is open (which makes `release` refuse).
        Ok(unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) })
    }
}

#[pymethods]
impl PyMessage {
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        let me = slf.get();
        let bytes = me.bytes()?;
        // SAFETY: `view` is the caller's; the bytes stay mapped and unwritten while the
        // core `Message` lives, which is at least as long as this export: the export holds
        // a reference to this object, and `release()` refuses while exports are open.
        let r = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                bytes.as_ptr() as *mut _,
                bytes.len() as ffi::Py_ssize_t,
                1,
                flags,
            )
        };
        if r != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        me.exports.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.exports.fetch_sub(1, Ordering::AcqRel);
    }

    fn __len__(&self) -> usize {
        self.len
    }

    /// Which delivery of this message this is (1 the first time; more after consumers died
    /// holding it).
    #[getter]
    fn delivery_count(&self) -> u32 {
        self.delivery_count
    }

    /// Whether an earlier consumer died holding this message.
    #[getter]
    fn is_redelivery(&self) -> bool {
        self.delivery_count > 1
    }

    /// Whether the message was released (acknowledged).
    #[getter]
    fn released(&self) -> bool {
        self.lock().is_none()
    }

    /// A copy of the payload as `bytes`.
    fn tobytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        Ok(pyo3::types::PyBytes::new(py, self.bytes()?))
    }

    /// A copy of `nbytes` at `offset` as a new `bytearray` (the copy runs with the GIL
    /// released).
    fn copy_range<'py>(
        &self,
        py: Python<'py>,
        offset: usize,
        nbytes: usize,
    ) -> PyResult<Bound<'py, PyByteArray>> {
        let bytes = self.bytes()?;
        let src = offset
            .checked_add(nbytes)
            .and_then(|end| bytes.get(offset..end))
            .ok_or_else(|| PyValueError::new_err("range outside the message"))?;
        let out = uninit_bytearray(py, nbytes)?;
        // SAFETY: a fresh bytearray of `nbytes` that no other code has seen yet.
        let dst = unsafe { out.as_bytes_mut() };
        let (sp, dp) = (src.as_ptr() as usize, dst.as_mut_ptr() as usize);
        let copy = move || {
            // SAFETY: `src` stays mapped and unwritten while the core `Message` lives,
            // which the pin below guarantees for the copy (`release` refuses while it is
            // held, and dropping this object needs `&self` to be gone); `dst` belongs to
            // `out`, which no other code can reach yet.
            unsafe { std::ptr::copy_nonoverlapping(sp as *const u8, dp as *mut u8, nbytes) }
        };
        if nbytes >= DETACH_BYTES {
            // Another thread may run while the GIL is released: pin the message the way
            // an open export does, so its `release()` cannot drop it under the copy.
            self.exports.fetch_add(1, Ordering::AcqRel);
            py.detach(copy);
            self.exports.fetch_sub(1, Ordering::AcqRel);
        } else {
            copy();
        }
        Ok(out)
    }

    /// Where the parts of a pickled message are: `(stream_offset, stream_len,
    /// [(offset, len), ...])`, each range checked against the message.
    fn pickle_layout<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let l = parse_layout(self.bytes()?).map_err(|why| not_pickled(py, why))?;
        let list = PyList::empty(py);
        for (off, len) in l.at {
            list.append((off, len))?;
        }
        PyTuple::new(
            py,
            [
                l.stream_at.into_pyobject(py)?.into_any(),
                (l.total - l.stream_at).into_pyobject(py)?.into_any(),
                list.into_any(),
            ],
        )
    }

    /// Unpickles the message with `loads` (``pickle.loads``) and acknowledges it, when that
    /// needs no view of shared memory to outlive the call: with `copy` (out-of-band
    /// buffers copied into new `bytearray` objects) or when there are none. Returns
    /// `(True, obj)`, or `(False, None)` for the caller to build zero-copy views. The
    /// message is acknowledged also when `loads` raises (the error propagates).
    fn unpickle<'py>(
        slf: &Bound<'py, Self>,
        loads: &Bound<'py, PyAny>,
        copy: bool,
    ) -> PyResult<(bool, Bound<'py, PyAny>)> {
        let py = slf.py();
        let me = slf.get();
        let l = parse_layout(me.bytes()?).map_err(|why| not_pickled(py, why))?;
        if !copy && !l.at.is_empty() {
            return Ok((false, py.None().into_bound(py)));
        }
        let r = (|| {
            let bufs = PyList::empty(py);
            for &(off, len) in &l.at {
                bufs.append(me.copy_range(py, off, len)?)?;
            }
            let stream = &me.bytes()?[l.stream_at..l.total];
            // SAFETY: a read-only memoryview over the stream, which stays mapped and
            // unwritten while the message is held: it is released below, before the
            // message, and pickle keeps no reference to its input.
            let view = unsafe {
                Bound::from_owned_ptr_or_err(
                    py,
                    ffi::PyMemoryView_FromMemory(
                        stream.as_ptr() as *mut _,
                        stream.len() as ffi::Py_ssize_t,
                        ffi::PyBUF_READ,
                    ),
                )?
            };
            let kw = pyo3::types::PyDict::new(py);
            kw.set_item("buffers", bufs)?;
            let out = loads.call((&view,), Some(&kw));
            view.call_method0("release")?;
            out
        })();
        me.release(py)?;
        Ok((true, r?))
    }

    /// Acknowledges the message now. Refused (`BufferError`) while views of it are open.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        let n = self.exports.load(Ordering::Acquire);
        if n > 0 {
            return Err(PyBufferError::new_err(format!(
                "cannot release a message while {n} buffer view(s) of it exist"
            )));
        }
        let m = self.lock().take();
        if let Some(m) = m {
            py.detach(|| drop(m));
        }
        Ok(())
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _a: &Bound<'_, PyAny>,
        _b: &Bound<'_, PyAny>,
        _c: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        self.release(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "<shmq.Message {} bytes, delivery {}>",
            self.len, self.delivery_count
        )
    }
}

// ---------------------------------------------------------------------------------------
// Administration

/// Keeps queue `name` alive for a hand-over (see `holds.rs`); refreshes an existing hold.
/// A queue that cannot be opened is left alone (the receiving side will say why).
#[pyfunction]
fn hold(py: Python<'_>, name: String) {
    let _ = py.detach(|| holds::hold(&name));
}

/// Whether this process holds queue `name` for a hand-over.
#[pyfunction]
fn held(name: &str) -> bool {
    holds::held(name)
}

/// Whether this process holds any queue for a hand-over.
#[pyfunction]
fn held_any() -> bool {
    holds::held_any()
}

/// Open endpoints of queue `name` in this process.
#[pyfunction]
fn local_open(name: &str) -> usize {
    holds::local(name)
}

/// Lets go of the holds no longer needed (`no_children`: no child can still attach).
#[pyfunction]
fn sweep_holds(py: Python<'_>, no_children: bool) {
    py.detach(|| holds::sweep(no_children));
}

/// Lets go of every hold (at exit).
#[pyfunction]
fn release_holds(py: Python<'_>) {
    py.detach(holds::release_all);
}

/// How many live processes other than this one are attached to queue `name`, and how many
/// messages are queued or held (`(others, unread)`). A racy snapshot, no record taken.
#[pyfunction]
fn peers(py: Python<'_>, name: String) -> PyResult<(usize, u64)> {
    let info = py
        .detach(|| shmq::info::inspect(&name))
        .map_err(|e| core_err(py, e))?;
    let me = pid();
    let mut pids: Vec<u32> = info
        .participants
        .iter()
        .filter(|p| p.alive && p.pid != me)
        .map(|p| p.pid)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    let held: u64 = info.participants.iter().map(|p| p.held).sum();
    Ok((pids.len(), info.depth + held))
}

/// Removes queues whose every participant is dead; returns `(removed, skipped)` names.
#[pyfunction]
fn gc(py: Python<'_>) -> PyResult<(Vec<String>, Vec<String>)> {
    let r = py.detach(shmq::gc).map_err(|e| core_err(py, e))?;
    Ok((
        r.removed,
        r.skipped
            .into_iter()
            .map(|(n, why)| format!("{n}: {why}"))
            .collect(),
    ))
}

/// Stops every handle of this process and removes the queues it was the last to use
/// (`shmq::shutdown::release_all`); for the exit.
#[pyfunction]
fn release_all(py: Python<'_>) {
    py.detach(shmq::shutdown::release_all);
}

#[pymodule]
fn _shmq(m: &Bound<'_, PyModule>) -> PyResult<()> {
    install_pid_cache();
    m.add_class::<PySender>()?;
    m.add_class::<PyReceiver>()?;
    m.add_class::<PyLoan>()?;
    m.add_class::<PyMessage>()?;
    m.add_class::<Wrapped>()?;
    m.add_function(wrap_pyfunction!(create, m)?)?;
    m.add_function(wrap_pyfunction!(peers, m)?)?;
    m.add_function(wrap_pyfunction!(gc, m)?)?;
    m.add_function(wrap_pyfunction!(release_all, m)?)?;
    m.add_function(wrap_pyfunction!(hold, m)?)?;
    m.add_function(wrap_pyfunction!(held, m)?)?;
    m.add_function(wrap_pyfunction!(held_any, m)?)?;
    m.add_function(wrap_pyfunction!(local_open, m)?)?;
    m.add_function(wrap_pyfunction!(sweep_holds, m)?)?;
    m.add_function(wrap_pyfunction!(release_holds, m)?)?;
    m.add("MAX_MESSAGE_SIZE", shmq::MAX_MESSAGE_SIZE)?;
    m.add("SLICE_SECONDS", SLICE.as_secs_f64())?;
    Ok(())
}

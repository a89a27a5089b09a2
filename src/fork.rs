//! `fork` safety: what a forked child may do with the handles it inherited.
//!
//! Python's `multiprocessing` (the `fork` start method), torch's `DataLoader` and plain
//! `fork()` hand every object of the parent to the child: its `Sender`s, `Receiver`s,
//! loans and messages, and this process's own state (the registry of attachments, the
//! supervisor thread's "started" flag, the descriptors that carry its liveness locks).
//! Shared memory is shared with the parent; the child's copies of process-local state
//! describe the *parent's* participants. The rules:
//!
//! * Everything a process attaches is stamped with the **fork epoch** of the process that
//!   made it ([`epoch`]: a counter that the `pthread_atfork` child handler bumps, so an
//!   object is the current process's own exactly when its stamp equals `epoch()`; a pid
//!   could be reused by a grandchild, the epoch cannot).
//! * A *foreign* object (inherited from an ancestor) never changes shared memory: its
//!   drop forgets its process-local parts (the parent still owns its records, loans and
//!   messages); its participant records, loans and messages stay the parent's.
//! * An inherited `Sender` or `Receiver` used in the child attaches afresh, by name, as a
//!   participant of the child (`handles.rs`), so `fork` + use works like `spawn` +
//!   `open`. An inherited `Loan` or `Message` is the parent's: sending it fails with
//!   [`ErrorKind::Forked`](crate::ErrorKind::Forked), touching its bytes panics.
//! * The child handler closes every descriptor that carries a liveness lock (the
//!   lifecycle lock of each attachment, the lock of each participant record) by `dup3`ing
//!   `/dev/null` over it: OFD locks live as long as their open file description, so a
//!   child holding a copy would keep the parent "alive" after its death, and keep its
//!   lifecycle lock, so nobody could ever unlink the queue. The descriptor numbers stay
//!   valid (now `/dev/null`), so the child closing them later closes nothing else.
//! * Locks the child could inherit held: the prepare handler takes the registry lock and
//!   the lock-descriptor list (in that order, the order every other path takes them in),
//!   so no other thread holds them at the instant of the fork; the parent and child
//!   handlers release them. The supervisor thread is started per epoch, and its eventfd is
//!   per epoch too (the child's copy of the parent's is closed).
//!
//! A `vfork` or raw `clone` bypasses `pthread_atfork`; with those, exec at once (every
//! descriptor shmq opens is close-on-exec).

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard, Once};

static EPOCH: AtomicU64 = AtomicU64::new(0);

/// This process's fork epoch: 0 in the process that first loaded shmq, one more in each
/// generation of forked children.
#[inline]
pub fn epoch() -> u64 {
    // Relaxed: it changes only in the child handler, before the child has other threads.
    EPOCH.load(std::sync::atomic::Ordering::Relaxed)
}

/// Descriptors that carry liveness locks, to be neutralised in a forked child.
static LOCK_FDS: Mutex<Vec<RawFd>> = Mutex::new(Vec::new());
/// A `/dev/null` descriptor to `dup3` over them (opened before the first is tracked).
static DEVNULL: AtomicI32 = AtomicI32::new(-1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Guards taken by the prepare handler, released by the parent or child handler.
struct Held {
    _registry: MutexGuard<'static, Vec<std::sync::Weak<crate::queue::Queue>>>,
    fds: MutexGuard<'static, Vec<RawFd>>,
}
static mut HELD: Option<Held> = None;

extern "C" fn prepare() {
    let registry = crate::queue::lock_registry();
    let fds = lock(&LOCK_FDS);
    // SAFETY: the atfork handlers of one fork run in the forking thread, and glibc runs
    // the handlers of concurrent forks one fork at a time; nobody else touches `HELD`.
    unsafe {
        *std::ptr::addr_of_mut!(HELD) = Some(Held {
            _registry: registry,
            fds,
        })
    };
}

extern "C" fn parent() {
    // SAFETY: as in `prepare`.
    drop(unsafe { (*std::ptr::addr_of_mut!(HELD)).take() });
}

extern "C" fn child() {
    EPOCH.fetch_add(1, SeqCst);
    // SAFETY: as in `prepare`; the child has one thread.
    let held = unsafe { (*std::ptr::addr_of_mut!(HELD)).take() };
    if let Some(h) = held {
        let null = DEVNULL.load(SeqCst);
        for &fd in h.fds.iter() {
            // SAFETY: async-signal-safe syscalls on descriptors of this process: `fd` is
            // open (tracked fds are untracked before they are closed, under this lock),
            // `null` is open for the life of the process.
            unsafe {
                while libc::dup3(null, fd, libc::O_CLOEXEC) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
            }
        }
        drop(h);
    }
    crate::supervisor::forget_nudge_in_child();
}

/// Installs the fork handlers (once per process image; a forked child inherits them).
fn install() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    static mut RESULT: i32 = 0;
    ONCE.call_once(|| {
        // SAFETY: opens a descriptor we keep for the life of the process.
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        let r = if fd < 0 {
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        } else {
            DEVNULL.store(fd, SeqCst);
            // SAFETY: registers three `extern "C"` functions with no arguments.
            unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) }
        };
        // SAFETY: written once, inside `call_once`, read only after it.
        unsafe { *std::ptr::addr_of_mut!(RESULT) = r };
    });
    // SAFETY: `call_once` returned, so the write above happened-before this read.
    match unsafe { *std::ptr::addr_of!(RESULT) } {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// A descriptor that carries a liveness lock (see the module doc): tracked from before
/// it exists until after it is closed, so that a fork never copies it untracked.
#[derive(Debug)]
pub(crate) struct LockFile(Option<File>);

impl LockFile {
    /// Opens a descriptor with `open` and tracks it, both under the list's lock (so no
    /// fork sees the descriptor open and untracked).
    pub fn open(open: impl FnOnce() -> std::io::Result<File>) -> std::io::Result<LockFile> {
        install()?;
        let mut fds = lock(&LOCK_FDS);
        let f = open()?;
        fds.push(f.as_raw_fd());
        Ok(LockFile(Some(f)))
    }

    pub fn file(&self) -> &File {
        self.0.as_ref().expect("open until dropped")
    }
}

impl std::ops::Deref for LockFile {
    type Target = File;
    fn deref(&self) -> &File {
        self.file()
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let mut fds = lock(&LOCK_FDS);
        if let Some(f) = self.0.take() {
            let fd = f.as_raw_fd();
            if let Some(i) = fds.iter().position(|&x| x == fd) {
                fds.swap_remove(i);
            }
            drop(f); // closed under the lock: a fork never sees it tracked and closed
        }
    }
}

/// A panic for a `Loan` or `Message` used in a process that inherited it by `fork`.
#[cold]
#[track_caller]
pub(crate) fn inherited(what: &str) -> ! {
    panic!(
        "this shmq::{what} was inherited from the parent process by fork: it belongs to the \
         parent and cannot be used here (senders and receivers can: they attach afresh)"
    )
}

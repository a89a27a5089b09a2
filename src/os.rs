//! The OS edge: shared-memory objects, mappings, OFD locks and `/proc`.
//!
//! Objects live in `/dev/shm` (what `shm_open(3)` uses on Linux), are created with mode
//! 0600 and `O_CLOEXEC`, and are sized with `ftruncate` + `posix_fallocate`, so that a full
//! `/dev/shm` is an `ENOSPC` error here rather than a `SIGBUS` on first touch later.
//!
//! Locks are OFD locks (`F_OFD_SETLK`): owned by an open file description, not by a
//! process, so two handles of one process hold independent locks (each opens its own
//! description), and the kernel drops them when the last descriptor of that description
//! closes, which happens when a process dies, before it becomes a zombie.

use crate::error::{Error, ErrorKind};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

/// Where the shared-memory objects live.
pub const SHM_DIR: &str = "/dev/shm";
/// Prefix of every object of ours.
pub const PREFIX: &str = "shmq.";

/// Longest queue name.
pub const MAX_NAME: usize = 200;

/// Checks a queue name: 1–200 characters of `A-Za-z0-9_-`.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidName,
            format!(
                "invalid queue name {name:?}: use 1 to {MAX_NAME} characters of A-Z, a-z, 0-9, '_' and '-'"
            ),
        ))
    }
}

/// Path of the header object of queue `name`.
pub fn header_path(name: &str) -> PathBuf {
    PathBuf::from(format!("{SHM_DIR}/{PREFIX}{name}"))
}

/// Path of the payload segment of `slot` of queue `name`.
pub fn segment_path(name: &str, slot: u32) -> PathBuf {
    PathBuf::from(format!("{SHM_DIR}/{PREFIX}{name}.{slot}"))
}

/// Opens an existing object read-write.
pub fn open_rw(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
}

/// Opens the file behind descriptor `fd` again, as a new open file description (so it can
/// hold OFD locks of its own).
pub fn reopen(file: &File) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Creates a new object (fails if it exists), mode 0600.
pub fn create_new(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
}

/// Opens or creates an object, mode 0600.
pub fn open_or_create(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
}

/// Sizes `file` to `len` bytes and reserves its pages.
///
/// `posix_fallocate` on tmpfs returns `EINTR` when a signal arrives while it allocates a
/// large object: it is retried, not reported.
pub fn size_and_reserve(file: &File, len: u64) -> io::Result<()> {
    if let Some(limit) = crate::fault::shm_limit() {
        if queue_objects_bytes(file).saturating_add(len) > limit {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
    }
    file.set_len(len)?;
    if len == 0 {
        return Ok(());
    }
    loop {
        let r = if crate::fault::fallocate_interrupted() {
            libc::EINTR
        } else {
            // SAFETY: plain syscall on a descriptor we own.
            unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) }
        };
        match r {
            0 => return Ok(()),
            libc::EINTR => continue,
            // tmpfs always supports it; other filesystems may not: the size is set anyway.
            libc::EOPNOTSUPP | libc::EINVAL => return Ok(()),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// For `SHMQ_FAULT_SHM_LIMIT` (fault injection): bytes of the objects of the queue that
/// `file` belongs to (`shmq.<name>`, `shmq.<name>.<slot>`, `.shmq-new.<name>.…`), not
/// counting `file` itself.
fn queue_objects_bytes(file: &File) -> u64 {
    let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) else {
        return 0;
    };
    let base = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let rest = base
        .strip_prefix(PREFIX)
        .or_else(|| base.strip_prefix(".shmq-new."))
        .unwrap_or("");
    let name = rest.split('.').next().unwrap_or("");
    if name.is_empty() {
        return 0;
    }
    let mine = file.metadata().map(|m| m.ino()).unwrap_or(0);
    let Ok(rd) = std::fs::read_dir(SHM_DIR) else {
        return 0;
    };
    rd.flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            let r = n
                .strip_prefix(PREFIX)
                .or_else(|| n.strip_prefix(".shmq-new."));
            r.is_some_and(|r| r == name || r.starts_with(&format!("{name}.")))
        })
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.ino() != mine)
        .map(|m| m.len())
        .sum()
}

/// Size of the object behind `file`.
pub fn file_len(file: &File) -> io::Result<u64> {
    Ok(file.metadata()?.len())
}

/// Removes an object; a missing one is fine.
pub fn unlink(path: &std::path::Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A shared read-write mapping of a whole object.
pub struct Mapping {
    map: memmap2::MmapRaw,
}

impl Mapping {
    /// Maps `len` bytes of `file` shared, read-write.
    pub fn new(file: &File, len: u64) -> io::Result<Mapping> {
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        let map = memmap2::MmapOptions::new().len(len).map_raw(file)?;
        Ok(Mapping { map })
    }
    /// Start of the mapping (page-aligned).
    pub fn ptr(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

// ---------------------------------------------------------------------------------------
// OFD locks. Byte 0 of the header: the lifecycle lock (shared by every attached process,
// exclusive for whoever destroys the queue). Byte 1 + i: participant i.

/// The byte guarding participant `i`.
pub fn part_lock_byte(i: u16) -> u64 {
    1 + i as u64
}
/// The lifecycle byte.
pub const LIFECYCLE_BYTE: u64 = 0;

fn flock(kind: libc::c_short, byte: u64) -> libc::flock {
    // SAFETY: `flock` is plain old data; all-zero is a valid value (l_pid must be 0 for OFD).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte as libc::off_t;
    fl.l_len = 1;
    fl
}

/// Tries to take a lock of `kind` (`F_RDLCK`/`F_WRLCK`/`F_UNLCK`) on `byte` without
/// blocking. `Ok(false)` if another description holds a conflicting lock.
pub fn try_lock(file: &File, byte: u64, kind: libc::c_short) -> io::Result<bool> {
    let fl = flock(kind, byte);
    // SAFETY: valid descriptor and a valid pointer to `fl` for the call.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

/// Whether any description other than `probe`'s holds a lock on `byte` that would
/// conflict with a write lock.
pub fn is_locked(probe: &File, byte: u64) -> io::Result<bool> {
    let mut fl = flock(libc::F_WRLCK as libc::c_short, byte);
    // SAFETY: valid descriptor and a valid pointer to `fl`, which the kernel fills in.
    let r = unsafe { libc::fcntl(probe.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

// ---------------------------------------------------------------------------------------
// Process identity

/// This process's id, start time and pid namespace.
///
/// # Errors
/// Whatever stops us from reading `/proc/self` (out of descriptors, memory, …): a record
/// registered without its owner's start time could later be judged dead by mistake, so
/// registration fails instead. A system without pid namespaces gives namespace 0
/// ("unknown": nobody judges such a record by its pid).
pub fn my_identity() -> io::Result<crate::roster::Identity> {
    let pid = std::process::id();
    let st = proc_stat(pid)?.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    let pid_ns = match pid_namespace() {
        Ok(ns) => ns,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    Ok(crate::roster::Identity {
        pid,
        start_time: st.start_time,
        pid_ns,
    })
}

/// The inode of our pid namespace.
pub fn pid_namespace() -> io::Result<u64> {
    std::fs::metadata("/proc/self/ns/pid").map(|m| m.ino())
}

/// What `/proc/<pid>/stat` says of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `Z`, …
    pub state: u8,
    /// Field 9: the kernel's `PF_*` flags.
    pub flags: u64,
    /// Field 22: start time in clock ticks since boot.
    pub start_time: u64,
}

/// `PF_EXITING` in [`ProcStat::flags`]: the process is in `exit()` (set first thing;
/// its descriptors, and so its locks, are released a moment later).
pub const PF_EXITING: u64 = 0x4;

impl ProcStat {
    /// Whether the process is on its way out: exiting, a zombie, or dead.
    pub fn exiting(&self) -> bool {
        self.flags & PF_EXITING != 0 || self.state == b'Z' || self.state == b'X'
    }
}

/// Whether an error reading `/proc/<pid>/…` says the process (or task) does not exist:
/// the only answer that is evidence of death. Anything else (EMFILE, ENFILE, ENOMEM,
/// EACCES, EINTR, …) says nothing about the process.
fn no_such_process(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// Reads `/proc/<pid>/stat`: `Ok(None)` only if there is no such process.
///
/// # Errors
/// Any other failure to read or parse it: the caller cannot tell, and must not take that
/// for "gone".
pub fn proc_stat(pid: u32) -> io::Result<Option<ProcStat>> {
    let s = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(e) if no_such_process(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/<pid>/stat");
    // The command name (field 2) is in parentheses and may hold anything: parse after the
    // last ')'.
    let rest = &s[s.rfind(')').ok_or_else(bad)? + 1..];
    // Field 3 (the state) is the first token after it, field n the (n - 3)th.
    let f: Vec<&str> = rest.split_ascii_whitespace().take(20).collect();
    let state = f.first().and_then(|x| x.bytes().next()).ok_or_else(bad)?;
    let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).ok_or_else(bad);
    Ok(Some(ProcStat {
        state,
        flags: num(9 - 3)?,
        start_time: num(22 - 3)?,
    }))
}

/// Threads of process `pid` that are not zombies (0 if it is gone).
///
/// # Errors
/// As [`proc_stat`]: any failure other than "no such process/task".
pub fn live_tasks(pid: u32) -> io::Result<usize> {
    let rd = match std::fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(rd) => rd,
        Err(e) if no_such_process(&e) => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for e in rd {
        let e = e?;
        let stat = match std::fs::read_to_string(e.path().join("stat")) {
            Ok(s) => s,
            Err(e) if no_such_process(&e) => continue, // that task is gone
            Err(e) => return Err(e),
        };
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().bytes().next());
        if !matches!(state, None | Some(b'Z') | Some(b'X')) {
            n += 1;
        }
    }
    Ok(n)
}

/// Opens a pidfd for `pid` (Linux ≥ 5.3); `None` if unsupported or gone.
pub fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    // SAFETY: plain syscall; on success it returns a new descriptor we take ownership of.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    Some(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// Sets the access and modification times of `file` to now: how a process announces a
/// change of a queue's roster to the other processes' watchers, which have an inotify
/// watch on the header (see `supervisor.rs`). Best effort.
pub fn touch(file: &File) {
    let now = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_NOW,
    };
    // [access, modification], both: the kernel reports a change of both as IN_ATTRIB (of
    // the modification time alone, as IN_MODIFY).
    let times = [now, now];
    // SAFETY: `file` is an open descriptor; `times` is two valid timespecs for the call.
    unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) };
}

/// An inotify instance (non-blocking), or `None` where unavailable.
pub struct Inotify(std::os::fd::OwnedFd);

impl Inotify {
    /// A new instance; `None` if the kernel refuses (not built in, or out of instances).
    pub fn new() -> Option<Inotify> {
        // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` is fresh and owned by nobody else.
        Some(Inotify(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        }))
    }
    /// The descriptor (readable when an event is pending).
    pub fn fd(&self) -> &std::os::fd::OwnedFd {
        &self.0
    }
    /// Watches the file open as `file` (by inode, through `/proc/self/fd`, so a newer
    /// object under the same name is not watched instead) for attribute changes.
    /// Returns the watch descriptor.
    pub fn watch_attrib(&self, file: &File) -> Option<i32> {
        let path = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).ok()?;
        // SAFETY: both arguments are valid for the call; `path` is NUL-terminated.
        let wd =
            unsafe { libc::inotify_add_watch(self.0.as_raw_fd(), path.as_ptr(), libc::IN_ATTRIB) };
        (wd >= 0).then_some(wd)
    }
    /// Stops watch `wd` (ignores a watch the kernel already removed).
    pub fn unwatch(&self, wd: i32) {
        // SAFETY: plain syscall on our descriptor.
        unsafe { libc::inotify_rm_watch(self.0.as_raw_fd(), wd) };
    }
    /// Reads and discards every pending event.
    pub fn drain(&self) {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return;
            }
        }
    }
}

/// Lists the names of the queue headers in `/dev/shm` (`shmq.<name>` without a further dot).
pub fn list_queue_names() -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(SHM_DIR)? {
        let e = e?;
        let n = e.file_name();
        let Some(n) = n.to_str() else { continue };
        if let Some(name) = n.strip_prefix(PREFIX) {
            if validate_name(name).is_ok() {
                out.push(name.to_string());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Lists the payload segment objects in `/dev/shm` (`shmq.<name>.<digits>`) as (queue
/// name, path).
pub fn list_segments() -> io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(SHM_DIR)? {
        let e = e?;
        let n = e.file_name();
        let Some(n) = n.to_str() else { continue };
        let Some((name, slot)) = n.strip_prefix(PREFIX).and_then(|r| r.rsplit_once('.')) else {
            continue;
        };
        if validate_name(name).is_ok()
            && !slot.is_empty()
            && slot.bytes().all(|b| b.is_ascii_digit())
        {
            out.push((name.to_string(), e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Removes every segment object of queue `name` (`shmq.<name>.<digits>`).
/// Tries every one; returns the first failure (one already gone is no failure).
pub fn unlink_segments(name: &str) -> io::Result<()> {
    let prefix = format!("{PREFIX}{name}.");
    let mut first = Ok(());
    for e in std::fs::read_dir(SHM_DIR)? {
        let e = e?;
        let n = e.file_name();
        let Some(n) = n.to_str() else { continue };
        if let Some(rest) = n.strip_prefix(&prefix) {
            if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
                match unlink(&e.path()) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound && first.is_ok() => {
                        first = Err(e)
                    }
                    _ => {}
                }
            }
        }
    }
    first
}

//! Regression tests for issue 11 ("Hardening"): each test here failed on main at 2c7ff0e
//! (the commit that added them quotes what each printed there).
//!
//! * Defect 1: `Loan::truncate` across the inline limit delivers the wrong bytes.
//! * Defect 2: handles inherited across `fork` (dropped in the child, used in the child,
//!   forked from a multi-threaded parent, the parent killed while the child lives, an
//!   inherited loan or message used in the child).
//! * Defect 3: the last process out leaves the queue in `/dev/shm` when a killed peer is
//!   still exiting.
//! * Defect 6: a process out of file descriptors must not judge live participants dead.
//! * Defect 7: a message one receiver cannot map must not block the others, nor hide the
//!   messages behind it.
//!
//! Every test runs under a watchdog; forked children are bounded by `alarm` (and
//! `PR_SET_PDEATHSIG` where they must not outlive the test), and reaped. The tests that
//! check several properties collect every violation and report them together, so one
//! failure message says everything that went wrong.

mod common;

use common::{
    as_child, check, fill, leftovers, param, touch, wait_for_file, write_atomic, Child, ShmGuard,
    TempDir, Watchdog,
};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use shmq::{Builder, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LIMIT: Duration = Duration::from_secs(60);
/// A generous bound for a single receive or send that should succeed at once.
const T: Duration = Duration::from_secs(2);
/// Seconds a forked child may live before SIGALRM ends it (a hang in the child).
const FORK_ALARM: u32 = 20;

fn create(g: &ShmGuard, capacity: usize) -> (Sender, Receiver) {
    Builder::new()
        .name(g.name())
        .capacity(capacity)
        .create()
        .expect("create queue")
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill(&mut v, seed);
    v
}

fn num(i: u64) -> [u8; 8] {
    i.to_le_bytes()
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis()
}

/// A short description of a received message (its first bytes and length).
fn show(b: &[u8]) -> String {
    if !b.is_empty() && b.len() <= 40 && b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
        return format!("{:?}", String::from_utf8_lossy(b));
    }
    format!("{} bytes {:02x?}…", b.len(), &b[..b.len().min(8)])
}

fn describe_recv(r: &Result<shmq::Message, RecvTimeoutError>) -> String {
    match r {
        Ok(m) => format!("message {}", show(m)),
        Err(RecvTimeoutError::Timeout) => "timeout".into(),
        Err(RecvTimeoutError::Disconnected) => "disconnected".into(),
        Err(e) => format!("failed: {e}"),
    }
}

/// Violations collected by a test, reported together at the end.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn push(&mut self, what: String) {
        self.0.push(what);
    }

    #[track_caller]
    fn assert_none(self, what: &str) {
        assert!(
            self.0.is_empty(),
            "{what}: {} problem(s):\n  - {}",
            self.0.len(),
            self.0.join("\n  - ")
        );
    }
}

// ---------------------------------------------------------------------------------------
// Forked children

/// Runs `f` as the body of a forked child and exits with its result; never returns. A
/// panic is written straight to fd 2 (the test harness's capture would swallow it) and
/// exits 101; unwinding must never reach the test harness, which would go on running
/// tests in the child. `alarm` bounds a child that hangs (on a lock inherited held, say).
fn in_child(die_with_parent: bool, alarm: u32, f: impl FnOnce() -> i32) -> ! {
    // SAFETY: plain syscalls in the child.
    unsafe {
        if die_with_parent {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
        }
        libc::alarm(alarm);
    }
    let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(c) => c,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let _ = writeln!(std::io::stderr(), "forked child panicked: {msg}");
            101
        }
    };
    // SAFETY: ends the child without running the parent's atexit handlers or destructors.
    unsafe { libc::_exit(code) }
}

/// Forks; the child runs `body` (see [`in_child`]). Returns the child's pid in the parent.
macro_rules! fork_child {
    ($die_with_parent:expr, $alarm:expr, $body:expr) => {
        // SAFETY: the child runs only the body given (our own code, which drops or uses
        // shmq handles) and then `_exit`s; it never returns into the test harness.
        match unsafe { fork() }.expect("fork") {
            ForkResult::Parent { child } => child,
            ForkResult::Child => in_child($die_with_parent, $alarm, $body),
        }
    };
}

/// Waits for our child `pid` (bounded by its alarm and the test's watchdog).
fn reap(pid: Pid) -> WaitStatus {
    loop {
        match waitpid(pid, None) {
            Ok(st) => return st,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => panic!("waitpid({pid}): {e}"),
        }
    }
}

fn exited_0(st: &WaitStatus) -> bool {
    matches!(st, WaitStatus::Exited(_, 0))
}

/// What a forked child left in its report file, if anything.
fn report(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|_| "(no report)".into())
}

// ---------------------------------------------------------------------------------------
// Child roles (re-executed test binary)

fn dir_file(name: &str) -> PathBuf {
    PathBuf::from(param("DIR")).join(name)
}

fn child_role(role: &str) {
    match role {
        "fork_parent" => fork_parent_role(),
        "fd_exhauster" => fd_exhauster_role(),
        "starved_receiver" => starved_receiver_role(),
        r => panic!("unknown role {r}"),
    }
}

// ---------------------------------------------------------------------------------------
// Defect 3: the last one out while a killed peer is still exiting

/// A peer attached to the queue (here: holding the lifecycle lock, as every attached
/// process does) is SIGKILLed with a large address space, so its exit spends a while
/// tearing down its memory before it closes its descriptors and so releases its lock.
/// The last live process leaves in that moment. It must still unlink the queue: the peer
/// is on its way out (`PF_EXITING`), not attached. On 2c7ff0e the last process tried the
/// upgrade twice at once, failed, and left the queue in `/dev/shm` for good.
#[test]
fn the_last_process_out_unlinks_while_a_killed_peer_is_still_exiting() {
    as_child(child_role);
    let _wd = Watchdog::new("last_out_while_peer_exits", LIMIT);
    let g = ShmGuard::new("last-out");
    let (tx, rx) = create(&g, 4);
    let path = std::ffi::CString::new(g.header_path().to_str().unwrap()).unwrap();
    let (ready_r, ready_w) = nix::unistd::pipe().expect("pipe");
    const BIG: usize = 1 << 30;
    // The child makes raw syscalls only (the parent has other threads).
    let pid = fork_child!(true, FORK_ALARM, move || {
        // SAFETY: plain syscalls on our own descriptors and a fresh private mapping.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            if fd < 0 {
                return 11;
            }
            let mut fl: libc::flock = std::mem::zeroed();
            fl.l_type = libc::F_RDLCK as libc::c_short;
            fl.l_whence = libc::SEEK_SET as libc::c_short;
            fl.l_start = 0;
            fl.l_len = 1;
            if libc::fcntl(fd, libc::F_OFD_SETLK, &fl) != 0 {
                return 12;
            }
            // Small pages, all touched: tearing them down takes a while.
            let p = libc::mmap(
                std::ptr::null_mut(),
                BIG,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                return 13;
            }
            libc::madvise(p, BIG, libc::MADV_NOHUGEPAGE);
            let mut off = 0;
            while off < BIG {
                *(p as *mut u8).add(off) = 1;
                off += 4096;
            }
            libc::write(ready_w.as_raw_fd(), b"r".as_ptr().cast(), 1);
            loop {
                libc::pause();
            }
        }
    });
    let mut b = [0u8; 1];
    assert_eq!(
        nix::unistd::read(ready_r.as_raw_fd(), &mut b),
        Ok(1),
        "child ready"
    );
    // SAFETY: our own child, not yet reaped.
    unsafe { libc::kill(pid.as_raw(), libc::SIGKILL) };
    // Leave at once, while the child is still tearing down its memory.
    drop((tx, rx));
    let left = leftovers(g.name());
    let st = reap(pid);
    assert!(
        matches!(
            st,
            WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)
        ),
        "child: {st:?}"
    );
    assert!(
        left.is_empty(),
        "the last process out left {left:?} in /dev/shm while a killed peer was exiting"
    );
    g.assert_clean();
}

// ---------------------------------------------------------------------------------------
// Descriptor exhaustion

/// This process at its descriptor limit: `RLIMIT_NOFILE` lowered to one above the highest
/// open descriptor, and every free number below it taken by `/dev/null`, so the next
/// `open` fails with `EMFILE`. Dropping it frees them and restores the limit.
struct Exhausted {
    old: libc::rlimit,
    files: Vec<std::fs::File>,
}

impl Exhausted {
    fn new() -> Exhausted {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `old` is a valid rlimit for the call to fill.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) },
            0,
            "getrlimit"
        );
        let max_fd = std::fs::read_dir("/proc/self/fd")
            .expect("list /proc/self/fd")
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .expect("some descriptor is open");
        let low = libc::rlimit {
            rlim_cur: max_fd + 1,
            rlim_max: old.rlim_max,
        };
        // SAFETY: `low` is a valid rlimit.
        assert_eq!(
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) },
            0,
            "setrlimit"
        );
        let mut files = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => files.push(f),
                Err(e) => {
                    assert_eq!(
                        e.raw_os_error(),
                        Some(libc::EMFILE),
                        "filling the descriptor table ended with {e}, not EMFILE"
                    );
                    break;
                }
            }
            assert!(files.len() < 100_000, "descriptor limit not effective");
        }
        Exhausted { old, files }
    }
}

impl Drop for Exhausted {
    fn drop(&mut self) {
        self.files.clear();
        // SAFETY: restores the limit read at construction.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.old) };
    }
}

// =======================================================================================
// Defect 1: Loan::truncate

/// A message truncated from a segment-sized loan to the inline limit or below, or from an
/// inline loan to fewer bytes, must deliver exactly the bytes written before the
/// truncation. Every slot's inline area first holds stale bytes of an earlier message
/// (`Z` × 150), so bytes read from the wrong storage show.
#[test]
fn loan_truncate_delivers_the_written_prefix_across_the_inline_limit() {
    as_child(child_role);
    let _wd = Watchdog::new("loan_truncate", LIMIT);
    let g = ShmGuard::new("trunc");
    const SLOTS: usize = 4;
    let (tx, rx) = Builder::new()
        .name(g.name())
        .capacity(2)
        .slots(SLOTS)
        .create()
        .expect("create queue");
    let cases: [(usize, usize); 6] = [
        (4096, 4095),
        (4096, 193),
        (4096, 192),
        (4096, 5),
        (4096, 0),
        (100, 5),
    ];
    let mut f = Findings::default();
    for (k, &(loan_len, keep)) in cases.iter().enumerate() {
        // Stale bytes in every slot's inline area: each send takes the next slot.
        for _ in 0..2 * SLOTS {
            tx.send_timeout(&[b'Z'; 150], T)
                .expect("send stale message");
            let m = rx.recv_timeout(T).expect("recv stale message");
            assert_eq!(&*m, &[b'Z'; 150][..]);
        }
        let seed = 0x7000 + k as u64;
        let want = pattern(loan_len, seed);
        let mut loan = tx.loan_timeout(loan_len, T).expect("loan");
        loan.copy_from_slice(&want);
        loan.truncate(keep);
        assert_eq!(loan.len(), keep, "Loan::len after truncate({keep})");
        assert_eq!(
            &loan[..],
            &want[..keep],
            "the loan's own view after truncate"
        );
        loan.send_timeout(T)
            .map_err(|u| u.error)
            .expect("send truncated loan");
        let m = rx.recv_timeout(T).expect("recv truncated message");
        if m.len() != keep || m[..] != want[..keep] {
            let first_bad = m.iter().zip(&want).position(|(a, b)| a != b);
            f.push(format!(
                "loan {loan_len} -> truncate({keep}): received {} bytes {:02x?}…, want {keep} \
                 bytes {:02x?}… (first difference at {first_bad:?}; {})",
                m.len(),
                &m[..m.len().min(8)],
                &want[..keep.min(8)],
                if m.iter().all(|&b| b == b'Z' || b == 0) && !m.is_empty() {
                    "stale bytes of an earlier message"
                } else {
                    "wrong bytes"
                }
            ));
        }
    }
    f.assert_none("Loan::truncate");
    drop((tx, rx));
    g.assert_clean();
}

// =======================================================================================
// Defect 2: fork

/// What a parent checks after its forked child is gone: its queue is intact, its loan is
/// still its own and delivered, its held messages are still held (not freed under it,
/// not redelivered), the queue still exists in `/dev/shm` and can be opened, and a new
/// message round-trips with nothing lost or duplicated.
struct ParentState {
    tx: Sender,
    rx: Receiver,
    loan: shmq::Loan,
    loan_seed: u64,
    held: Vec<(shmq::Message, Vec<u8>)>,
    /// Messages queued before the fork, in order.
    queued: Vec<Vec<u8>>,
}

fn check_parent_after_fork(f: &mut Findings, g: &ShmGuard, st: ParentState) {
    let ParentState {
        tx,
        rx,
        loan,
        loan_seed,
        held,
        queued,
    } = st;
    let name = g.name().to_string();
    f.check(g.header_path().exists(), || {
        format!("{} is gone from /dev/shm", g.header_path().display())
    });
    match shmq::info::inspect(&name) {
        Ok(info) => {
            f.check(info.dead() == 0 && info.recoveries == 0, || {
                format!(
                    "the parent's participants were treated as gone: {} dead, {} recoveries, \
                     participants {:?}",
                    info.dead(),
                    info.recoveries,
                    info.participants
                )
            });
            let want_held = held.len() as u64;
            f.check(info.slot_states[2] == want_held, || {
                format!(
                    "slots HELD = {} after the fork, want {want_held} (the parent's held \
                     messages); slot states [free, loaned, held, orphan] = {:?}",
                    info.slot_states[2], info.slot_states
                )
            });
        }
        Err(e) => f.push(format!("inspect failed: {e}")),
    }
    for (i, (m, want)) in held.iter().enumerate() {
        f.check(m[..] == want[..], || {
            format!(
                "held message #{i} changed under the parent: now {}",
                show(m)
            )
        });
    }
    let loan_len = loan.len();
    if let Err(u) = loan.send_timeout(T) {
        f.push(format!("sending the parent's loan failed: {}", u.error));
    }
    let mut expect: Vec<Vec<u8>> = queued;
    expect.push(pattern(loan_len, loan_seed));
    for (i, want) in expect.iter().enumerate() {
        match rx.recv_timeout(T) {
            Ok(m) => f.check(m[..] == want[..], || {
                format!(
                    "message #{i} after the fork: got {}, want {}",
                    show(&m),
                    show(want)
                )
            }),
            Err(e) => f.push(format!(
                "message #{i} after the fork ({}) not received: {e:?}",
                show(want)
            )),
        }
    }
    match rx.try_recv() {
        Err(TryRecvError::Empty) => {}
        Ok(m) => f.push(format!(
            "an extra message (a duplicate?) after the expected ones: {} (redelivery: {})",
            show(&m),
            m.is_redelivery()
        )),
        Err(e) => f.push(format!("try_recv on the drained queue: {e:?}, want Empty")),
    }
    match Sender::open(&name) {
        Ok(tx2) => {
            let r = tx2.send_timeout(b"after-fork", T);
            f.check(r.is_ok(), || {
                format!("send by a newly opened sender: {r:?}")
            });
            match rx.recv_timeout(T) {
                Ok(m) => f.check(&m[..] == b"after-fork", || {
                    format!("round trip after the fork: got {}", show(&m))
                }),
                Err(e) => f.push(format!("round trip after the fork: recv: {e:?}")),
            }
        }
        Err(e) => f.push(format!("Sender::open({name:?}) after the fork: {e}")),
    }
    let r = tx.send_timeout(b"old-sender", T);
    f.check(r.is_ok(), || {
        format!("send on the parent's own sender after the fork: {r:?}")
    });
    if r.is_ok() {
        match rx.recv_timeout(T) {
            Ok(m) => f.check(&m[..] == b"old-sender", || {
                format!("parent's own round trip: got {}", show(&m))
            }),
            Err(e) => f.push(format!("parent's own round trip: recv: {e:?}")),
        }
    }
    // The held messages are still intact after the new traffic (their slots were not
    // freed and reused under them).
    for (i, (m, want)) in held.iter().enumerate() {
        f.check(m[..] == want[..], || {
            format!(
                "held message #{i} was overwritten by later traffic: now {}",
                show(m)
            )
        });
    }
    drop(held);
    drop((tx, rx));
    let left = leftovers(&name);
    f.check(left.is_empty(), || {
        format!("left in /dev/shm after every handle was dropped: {left:?}")
    });
}

/// A forked child drops every inherited handle, loan and message and exits normally; the
/// parent's queue must be untouched.
#[test]
fn fork_child_dropping_inherited_handles_leaves_the_parent_queue_intact() {
    as_child(child_role);
    let _wd = Watchdog::new("fork_child_drops", LIMIT);
    let g = ShmGuard::new("fork-drop");
    let (tx, rx) = create(&g, 8);
    let small = pattern(100, 1);
    let big = pattern(8192, 2);
    tx.send(&small).unwrap();
    let held_small = rx.recv_timeout(T).unwrap();
    tx.send(&big).unwrap();
    let held_big = rx.recv_timeout(T).unwrap();
    tx.send(b"queued-before-fork").unwrap();
    let mut loan = tx.loan(4096).unwrap();
    fill(&mut loan, 3);

    let pid = fork_child!(true, FORK_ALARM, move || {
        drop(held_small);
        drop(held_big);
        drop(loan);
        drop(tx);
        drop(rx);
        0
    });
    let st = reap(pid);
    let mut f = Findings::default();
    f.check(exited_0(&st), || format!("forked child: {st:?}"));
    check_parent_after_fork(
        &mut f,
        &g,
        ParentState {
            tx,
            rx,
            loan,
            loan_seed: 3,
            held: vec![(held_small, small), (held_big, big)],
            queued: vec![b"queued-before-fork".to_vec()],
        },
    );
    f.assert_none("after a forked child dropped its inherited handles");
}

/// A forked child cannot use the parent's loan or message: sending the loan fails with
/// `ErrorKind::Forked` (the loan handed back, then dropped without effect), touching the
/// bytes of either panics with a message saying why; the parent's loan and message stay
/// the parent's (checked by `check_parent_after_fork`).
#[test]
fn fork_child_cannot_use_an_inherited_loan_or_message() {
    as_child(child_role);
    let _wd = Watchdog::new("fork_child_loan_message", LIMIT);
    let g = ShmGuard::new("fork-loan");
    let (tx, rx) = create(&g, 8);
    let big = pattern(8192, 5);
    tx.send(&big).unwrap();
    let held = rx.recv_timeout(T).unwrap();
    let mut loan = tx.loan(4096).unwrap();
    fill(&mut loan, 6);
    let dir = TempDir::new("fork-loan");
    let out = dir.join("report");
    let out2 = out.clone();
    let pid = fork_child!(true, FORK_ALARM, move || {
        let mut problems = Vec::new();
        let bytes = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| held[0]));
        match bytes {
            Err(p) => {
                let msg = p.downcast_ref::<String>().cloned().unwrap_or_default();
                if !msg.contains("inherited from the parent process by fork") {
                    problems.push(format!(
                        "message deref panicked without saying why: {msg:?}"
                    ));
                }
            }
            Ok(b) => problems.push(format!("the parent's message was readable: {b}")),
        }
        let mut loan = loan;
        let w = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loan[0] = 0xEE));
        if w.is_ok() {
            problems.push("the parent's loan was writable".into());
        }
        match loan.try_send() {
            Err(u) => match &u.error {
                shmq::TrySendError::Failed(e) if e.kind() == shmq::ErrorKind::Forked => {
                    drop(u);
                }
                e => problems.push(format!("send of the inherited loan: {e:?}, want Forked")),
            },
            Ok(()) => problems.push("the inherited loan was sent".into()),
        }
        drop(held);
        drop((tx, rx));
        std::fs::write(&out2, problems.join("\n")).unwrap();
        if problems.is_empty() {
            0
        } else {
            10
        }
    });
    let st = reap(pid);
    let mut f = Findings::default();
    f.check(exited_0(&st), || {
        format!("forked child: {st:?}: {}", report(&out))
    });
    // The loan's and the message's bytes are as the parent left them.
    f.check(held[..] == big[..], || {
        format!("held message changed: {}", show(&held))
    });
    f.check(check(&loan, 6).is_ok(), || {
        "the parent's loan changed".to_string()
    });
    check_parent_after_fork(
        &mut f,
        &g,
        ParentState {
            tx,
            rx,
            loan,
            loan_seed: 6,
            held: vec![(held, big)],
            queued: vec![],
        },
    );
    f.assert_none("after a forked child tried the inherited loan and message");
}

/// As above, but the parent has other threads at work when it forks (one sending and
/// receiving in a loop on clones of its handles, one cloning and dropping a handle in a
/// loop, which takes the process-wide registry lock), and it forks five times. Each child
/// drops what it inherited; the parent's threads go on with exact accounting.
#[test]
fn fork_from_multithreaded_parent() {
    as_child(child_role);
    let _wd = Watchdog::new("fork_multithreaded", Duration::from_secs(150));
    let g = ShmGuard::new("fork-mt");
    let (tx, rx) = create(&g, 8);
    let small = pattern(150, 11);
    tx.send(&small).unwrap();
    let held = rx.recv_timeout(T).unwrap();
    let mut loan = tx.loan(4096).unwrap();
    fill(&mut loan, 12);

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let worker = {
        let (tx2, rx2) = (tx.clone(), rx.clone());
        let (stop, progress) = (stop.clone(), progress.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && errors.len() < 10 {
                if let Err(e) = tx2.send_timeout(&num(i), T) {
                    errors.push(format!("worker send #{i}: {e:?}"));
                    continue;
                }
                match rx2.recv_timeout(T) {
                    Ok(m) if m[..] == num(i) => {}
                    Ok(m) => errors.push(format!(
                        "worker recv #{i}: got {} (redelivery {})",
                        show(&m),
                        m.is_redelivery()
                    )),
                    Err(e) => errors.push(format!("worker recv #{i}: {e:?}")),
                }
                i += 1;
                progress.store(i, Ordering::Relaxed);
            }
            (i, errors)
        })
    };
    let cloner = {
        let tx3 = tx.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                drop(tx3.try_clone().expect("clone a sender"));
                n += 1;
            }
            n
        })
    };
    let mut f = Findings::default();
    let wait_progress = |from: u64, what: &str, f: &mut Findings| {
        let t0 = Instant::now();
        while progress.load(Ordering::Relaxed) < from + 200 {
            if t0.elapsed() > Duration::from_secs(5) {
                f.push(format!(
                    "the worker thread made no progress {what} ({} round trips)",
                    progress.load(Ordering::Relaxed) - from
                ));
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_progress(0, "before the first fork", &mut f);
    for k in 0..5 {
        let at = progress.load(Ordering::Relaxed);
        // Each child gets its own copies of these; the parent keeps its own.
        // The child drops its copies; the parent keeps its own (the child's arm never
        // returns, so the moves below do not reach the parent's code).
        let pid = fork_child!(true, 10, move || {
            drop(held);
            drop(loan);
            drop(tx);
            drop(rx);
            0
        });
        let st = reap(pid);
        f.check(exited_0(&st), || {
            format!("forked child #{k}: {st:?} (SIGALRM: it hung, e.g. on a lock inherited held)")
        });
        wait_progress(at, &format!("after fork #{k}"), &mut f);
    }
    stop.store(true, Ordering::Relaxed);
    let (rounds, errors) = worker.join().expect("worker thread");
    let clones = cloner.join().expect("cloner thread");
    for e in errors {
        f.push(e);
    }
    f.check(rounds > 0 && clones > 0, || {
        format!("threads did nothing: {rounds} round trips, {clones} clones")
    });
    check_parent_after_fork(
        &mut f,
        &g,
        ParentState {
            tx,
            rx,
            loan,
            loan_seed: 12,
            held: vec![(held, small)],
            queued: Vec::new(),
        },
    );
    f.assert_none("after forks from a multi-threaded parent");
}

/// A forked child receives the M messages the parent queued before the fork on the
/// inherited receiver, sends N on the inherited sender, and drops both. The parent then
/// receives exactly the child's N messages, in order, nothing lost or duplicated, and its
/// queue is intact.
#[test]
fn fork_child_uses_inherited_handles() {
    as_child(child_role);
    let _wd = Watchdog::new("fork_child_uses", LIMIT);
    let g = ShmGuard::new("fork-use");
    let dir = TempDir::new("fork-use");
    let rep = dir.join("report");
    const M: u64 = 5;
    const N: u64 = 7;
    let (tx, rx) = create(&g, 16);
    for i in 0..M {
        tx.send(format!("pre-{i}").as_bytes()).unwrap();
    }
    let rep_child = rep.clone();
    let pid = fork_child!(true, FORK_ALARM, move || {
        let mut log = Vec::new();
        let mut code = 0;
        for i in 0..M {
            let r = rx.recv_timeout(Duration::from_secs(5));
            let d = describe_recv(&r);
            let want = format!("pre-{i}");
            if !matches!(&r, Ok(m) if m[..] == *want.as_bytes()) {
                log.push(format!("child recv #{i}: {d}, want {want:?}"));
                code = 10;
            }
        }
        for j in 0..N {
            if let Err(e) = tx.send_timeout(format!("child-{j}").as_bytes(), Duration::from_secs(5))
            {
                log.push(format!("child send #{j}: {e:?}"));
                code = 20;
            }
        }
        drop(tx);
        drop(rx);
        write_atomic(&rep_child, log.join("\n"));
        code
    });
    let st = reap(pid);
    let mut f = Findings::default();
    f.check(exited_0(&st), || {
        format!("forked child: {st:?}; its report: {}", report(&rep))
    });
    for j in 0..N {
        match rx.recv_timeout(T) {
            Ok(m) => f.check(m[..] == *format!("child-{j}").as_bytes(), || {
                format!(
                    "parent recv #{j}: got {} (redelivery {}), want \"child-{j}\"",
                    show(&m),
                    m.is_redelivery()
                )
            }),
            Err(e) => f.push(format!("parent recv #{j} (\"child-{j}\"): {e:?}")),
        }
    }
    match rx.try_recv() {
        Err(TryRecvError::Empty) => {}
        Ok(m) => f.push(format!(
            "an extra message after the child's {N}: {} (redelivery {})",
            show(&m),
            m.is_redelivery()
        )),
        Err(e) => f.push(format!(
            "try_recv after the child's messages: {e:?}, want Empty"
        )),
    }
    let loan = tx.loan_timeout(300, T);
    match loan {
        Ok(mut loan) => {
            fill(&mut loan, 21);
            check_parent_after_fork(
                &mut f,
                &g,
                ParentState {
                    tx,
                    rx,
                    loan,
                    loan_seed: 21,
                    held: Vec::new(),
                    queued: Vec::new(),
                },
            );
        }
        Err(e) => {
            f.push(format!(
                "the parent cannot loan after the child left: {e:?}"
            ));
            f.check(g.header_path().exists(), || {
                format!("{} is gone from /dev/shm", g.header_path().display())
            });
        }
    }
    f.assert_none("after a forked child used its inherited handles");
}

/// Role: creates the queue (a sender and a receiver), forks a grandchild that drops the
/// inherited sender and blocks in `recv`, then waits to be killed. The grandchild first
/// checks that its `recv` blocks (500 ms: the parent's sender is alive), says `ready`,
/// then blocks in `recv` for up to 20 s and writes what it returned and when.
fn fork_parent_role() {
    let name = param("NAME");
    let (tx, rx) = Builder::new()
        .name(&name)
        .capacity(4)
        .create()
        .expect("create queue");
    let (phase1, ready, result) = (dir_file("phase1"), dir_file("ready"), dir_file("result"));
    // Not killed with its parent: it must outlive it. Its alarm bounds it.
    let gpid = fork_child!(false, 40, move || {
        drop(tx);
        let t0 = Instant::now();
        let r = rx.recv_timeout(Duration::from_millis(500));
        write_atomic(
            &phase1,
            format!(
                "{} after {} ms",
                describe_recv(&r),
                t0.elapsed().as_millis()
            ),
        );
        drop(r);
        touch(&ready);
        let r = rx.recv_timeout(Duration::from_secs(20));
        let at = unix_ms();
        write_atomic(&result, format!("{}\n{at}", describe_recv(&r)));
        drop(r);
        drop(rx);
        0
    });
    write_atomic(dir_file("gpid"), gpid.to_string());
    std::thread::sleep(Duration::from_secs(60));
    panic!("fork_parent was not killed");
}

/// The process that created the queue forks a child, which drops its inherited sender and
/// blocks in `recv`; the parent is SIGKILLed. The child's `recv` must block while the
/// parent lives and return `Disconnected` once it is dead (no sender is left).
#[test]
fn parent_killed_while_child_lives_child_recv_disconnected() {
    as_child(child_role);
    let _wd = Watchdog::new("parent_killed_child_lives", LIMIT);
    let g = ShmGuard::new("fork-orphan");
    let dir = TempDir::new("fork-orphan");
    // Become the grandchild's parent once its parent dies, so we can reap it.
    // SAFETY: plain prctl on this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    struct Unsubreaper;
    impl Drop for Unsubreaper {
        fn drop(&mut self) {
            // SAFETY: plain prctl on this process.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) };
        }
    }
    let _unsub = Unsubreaper;
    let mut parent = Child::spawn(
        "parent_killed_while_child_lives_child_recv_disconnected",
        "fork_parent",
        &[("NAME", &g.name()), ("DIR", &dir.path().display())],
    );
    wait_for_file(dir.join("gpid"), Some(&mut parent));
    let gpid: i32 = std::fs::read_to_string(dir.join("gpid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let gpid = Pid::from_raw(gpid);
    /// Kills the grandchild if the test ends early.
    struct KillOnDrop(Pid, bool);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if !self.1 {
                let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGKILL);
                let _ = waitpid(self.0, Some(WaitPidFlag::WNOHANG));
            }
        }
    }
    let mut gguard = KillOnDrop(gpid, false);
    wait_for_file(dir.join("ready"), Some(&mut parent));
    let killed_at = unix_ms();
    parent.kill();
    // The grandchild is ours now: wait for its result or its exit (its alarm bounds it).
    let t0 = Instant::now();
    let mut status = None;
    while !dir.join("result").exists() && status.is_none() {
        match waitpid(gpid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(st) => status = Some(st),
            Err(e) => panic!("waitpid(grandchild {gpid}): {e}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(45), "grandchild hung");
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = status.unwrap_or_else(|| reap(gpid));
    gguard.1 = true;
    let phase1 = report(&dir.join("phase1"));
    let result = report(&dir.join("result"));
    let mut lines = result.lines();
    let outcome = lines.next().unwrap_or("").to_string();
    let returned_at: Option<u128> = lines.next().and_then(|l| l.parse().ok());
    let mut f = Findings::default();
    f.check(exited_0(&status), || format!("grandchild: {status:?}"));
    f.check(phase1.starts_with("timeout"), || {
        format!(
            "while the parent (and its sender) lived, the child's recv returned {phase1:?}, \
             want a timeout (it must block)"
        )
    });
    f.check(outcome == "disconnected", || {
        format!("after the parent was killed, the child's recv returned {outcome:?}, want \"disconnected\"")
    });
    f.check(returned_at.is_some_and(|t| t >= killed_at), || {
        format!(
            "the child's blocked recv returned at {returned_at:?} ms, before the parent was \
             killed at {killed_at} ms ({} ms earlier)",
            returned_at.map_or(0, |t| killed_at as i128 - t as i128)
        )
    });
    let left = leftovers(g.name());
    f.check(left.is_empty(), || {
        format!("left in /dev/shm after the parent was killed and the child left: {left:?}")
    });
    f.assert_none("parent killed while its forked child lives");
}

// =======================================================================================
// Defect 6: out of file descriptors is not evidence of death

const HELD6: &[u8] = b"held-by-the-exhausted-process";
const LOAN6: &[u8] = b"loan-of-the-exhausted-process";
const AFTER6: &[u8] = b"sent-after-recovery";
const FROM_T6: &[u8] = b"sent-by-the-test-process";

/// Role: a sender and a receiver; receives and holds HELD6, takes a loan; then runs out
/// of descriptors for 1.5 s, blocked in `recv` meanwhile (its supervisor thread and its
/// blocked recv check liveness); then frees them, sends the loan and AFTER6, and reports.
fn fd_exhauster_role() {
    let name = param("NAME");
    let tx = Sender::open(&name).unwrap();
    let rx = Receiver::open(&name).unwrap();
    let held = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("recv HELD6");
    assert_eq!(&held[..], HELD6);
    let mut loan = tx.loan(LOAN6.len()).unwrap();
    loan.copy_from_slice(LOAN6);
    touch(dir_file("ready"));
    let ex = Exhausted::new();
    let opened = ex.files.len();
    let mut during = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        let r = rx.recv_timeout(Duration::from_millis(200));
        during.push(describe_recv(&r));
        if r.is_err() && !matches!(r, Err(RecvTimeoutError::Timeout)) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(ex);
    let mut rep = vec![format!("opened {opened} descriptors until EMFILE")];
    rep.push(format!("during: {}", during.join(", ")));
    rep.push(format!("held intact: {}", held[..] == *HELD6));
    rep.push(format!(
        "loan send: {}",
        match loan.send_timeout(T) {
            Ok(()) => "ok".to_string(),
            Err(u) => format!("{:?}", u.error),
        }
    ));
    rep.push(format!(
        "after send: {}",
        match tx.send_timeout(AFTER6, T) {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("{e:?}"),
        }
    ));
    drop(held);
    write_atomic(dir_file("report"), rep.join("\n"));
    wait_for_file(dir_file("exit"), None);
    drop((tx, rx));
}

/// A process runs out of file descriptors (`RLIMIT_NOFILE` reached) for 1.5 s while its
/// handles check liveness. Nobody may be judged dead for it: the test process's handles
/// stay connected, the message the exhausted process holds is not redelivered, and what
/// that process sends afterwards (a loan taken before, a new message) is delivered.
#[test]
fn fd_exhaustion_does_not_make_live_participants_dead() {
    as_child(child_role);
    let _wd = Watchdog::new("fd_exhaustion", LIMIT);
    let g = ShmGuard::new("emfile");
    let dir = TempDir::new("emfile");
    let (tx, rx) = create(&g, 8);
    tx.send(HELD6).unwrap();
    let mut c = Child::spawn(
        "fd_exhaustion_does_not_make_live_participants_dead",
        "fd_exhauster",
        &[("NAME", &g.name()), ("DIR", &dir.path().display())],
    );
    wait_for_file(dir.join("ready"), Some(&mut c));
    wait_for_file(dir.join("report"), Some(&mut c));
    let rep = report(&dir.join("report"));
    let mut f = Findings::default();
    let line = |k: &str| {
        rep.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or("(missing)")
            .to_string()
    };
    let during = line("during: ");
    f.check(during.split(", ").all(|d| d == "timeout"), || {
        format!(
            "the exhausted process's blocked recv returned something other than a timeout \
             ({}): {during}",
            line("opened ")
        )
    });
    f.check(line("held intact: ") == "true", || {
        "the exhausted process's held message changed".into()
    });
    f.check(line("loan send: ") == "ok", || {
        format!(
            "the exhausted process's loan, sent after recovery: {}",
            line("loan send: ")
        )
    });
    f.check(line("after send: ") == "ok", || {
        format!(
            "the exhausted process's send after recovery: {}",
            line("after send: ")
        )
    });
    let r = tx.send_timeout(FROM_T6, T);
    f.check(r.is_ok(), || format!("the test process's send: {r:?}"));
    let mut got = Vec::new();
    for _ in 0..6 {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(m) => got.push(m.to_vec()),
            Err(RecvTimeoutError::Timeout) => break,
            Err(e) => {
                f.push(format!("the test process's recv: {e:?}"));
                break;
            }
        }
    }
    let mut want: Vec<&[u8]> = Vec::new();
    if line("loan send: ") == "ok" {
        want.push(LOAN6);
    }
    if line("after send: ") == "ok" {
        want.push(AFTER6);
    }
    if r.is_ok() {
        want.push(FROM_T6);
    }
    let want_all: Vec<&[u8]> = vec![LOAN6, AFTER6, FROM_T6];
    f.check(got == want_all, || {
        format!(
            "the test process received [{}], want [{}] (sends that returned Ok: [{}])",
            got.iter().map(|m| show(m)).collect::<Vec<_>>().join(", "),
            want_all
                .iter()
                .map(|m| show(m))
                .collect::<Vec<_>>()
                .join(", "),
            want.iter().map(|m| show(m)).collect::<Vec<_>>().join(", ")
        )
    });
    f.check(!got.iter().any(|m| m == HELD6), || {
        "the message the exhausted process still held was redelivered (a duplicate)".into()
    });
    match shmq::info::inspect(g.name()) {
        Ok(info) => f.check(info.recoveries == 0 && info.dead() == 0, || {
            format!(
                "participants recovered as dead although every process lived: {} recoveries, \
                 {} dead now",
                info.recoveries,
                info.dead()
            )
        }),
        Err(e) => f.push(format!("inspect: {e}")),
    }
    touch(dir.join("exit"));
    c.wait_ok();
    drop((tx, rx));
    let left = leftovers(g.name());
    f.check(left.is_empty(), || format!("left in /dev/shm: {left:?}"));
    f.assert_none("a process ran out of descriptors");
}

// =======================================================================================
// Defect 7: a message one receiver cannot map

const SEG_LEN: usize = 4096;
const INLINE7: &[u8] = b"inline-behind-the-unmappable-one";

/// Names a message of the defect-7 test: `M0`, `M2`, `M3` (segment patterns) or `M1`.
fn ident7(b: &[u8]) -> String {
    if b == INLINE7 {
        return "M1".into();
    }
    for k in [0u64, 2, 3] {
        if b.len() == SEG_LEN && check(b, 0x700 + k).is_ok() {
            return format!("M{k}");
        }
    }
    format!("unknown {}", show(b))
}

/// The messages a status line of the starved receiver lists as received: `got=[M1+M2]`.
fn got_list(line: &str) -> Vec<String> {
    line.split_once("got=[")
        .and_then(|(_, rest)| rest.split_once(']'))
        .map(|(g, _)| {
            g.split('+')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Role: a receiver (no supervisor thread) that runs out of descriptors, so it cannot map
/// payload segments. Phase A: up to 200 `try_recv`s, until it gets the inline M1 queued
/// behind the unmappable M0. Phase B: two threads retry `try_recv` in a loop (as a
/// consumer's receive loop would) until the test says stop. Reports through a file it
/// opened beforehand.
fn starved_receiver_role() {
    let name = param("NAME");
    let rx = Builder::new()
        .name(&name)
        .supervision(shmq::Supervision::Manual)
        .open_receiver()
        .unwrap();
    let mut status = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir_file("status"))
        .unwrap();
    let stop = dir_file("stop");
    let ex = Exhausted::new();
    let (mut fails, mut empties) = (0, 0);
    let mut got = Vec::new();
    let mut first_err = None;
    for _ in 0..200 {
        match rx.try_recv() {
            Ok(m) => {
                got.push(ident7(&m));
                if m[..] == *INLINE7 {
                    break;
                }
            }
            Err(TryRecvError::Failed(e)) => {
                fails += 1;
                first_err.get_or_insert_with(|| e.to_string());
            }
            Err(TryRecvError::Empty) => empties += 1,
            Err(e) => {
                first_err.get_or_insert_with(|| format!("{e:?}"));
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = writeln!(
        status,
        "A failed={fails} empty={empties} got=[{}] first_error={:?} (after filling {} descriptors)",
        got.join("+"),
        first_err,
        ex.files.len()
    );
    let _ = writeln!(status, "B-start");
    let fails_b = AtomicU64::new(0);
    let got_b = std::sync::Mutex::new(Vec::new());
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.exists() && t0.elapsed() < Duration::from_secs(10) {
                    match rx.try_recv() {
                        Ok(m) => got_b.lock().unwrap().push(ident7(&m)),
                        Err(TryRecvError::Failed(_)) => {
                            fails_b.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => std::thread::yield_now(),
                    }
                }
            });
        }
    });
    drop(ex);
    let _ = writeln!(
        status,
        "B failed={} got=[{}]",
        fails_b.load(Ordering::Relaxed),
        got_b.lock().unwrap().join("+")
    );
    let _ = writeln!(status, "end");
    drop(rx);
}

/// One receiver process runs out of descriptors and cannot map M0's payload segment;
/// its `try_recv` fails. It must still reach the inline M1 queued behind M0, and another
/// receiver (this test process) must get M0 and the segment messages sent later (M2, M3)
/// within 5 s, while the starved receiver keeps retrying. Every message exactly once.
#[test]
fn a_receiver_that_cannot_map_a_message_leaves_it_and_those_behind_to_others() {
    as_child(child_role);
    let _wd = Watchdog::new("unmappable", LIMIT);
    let g = ShmGuard::new("unmappable");
    let dir = TempDir::new("unmappable");
    let (tx, rx) = create(&g, 8);
    tx.send(&pattern(SEG_LEN, 0x700)).unwrap();
    tx.send(INLINE7).unwrap();
    let mut c = Child::spawn(
        "a_receiver_that_cannot_map_a_message_leaves_it_and_those_behind_to_others",
        "starved_receiver",
        &[("NAME", &g.name()), ("DIR", &dir.path().display())],
    );
    let status = || std::fs::read_to_string(dir.join("status")).unwrap_or_default();
    while !status().contains("B-start") {
        assert!(
            c.is_running(),
            "starved receiver exited early: {}",
            status()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    tx.send(&pattern(SEG_LEN, 0x702)).unwrap();
    tx.send(&pattern(SEG_LEN, 0x703)).unwrap();
    let r1_got_m1 = status()
        .lines()
        .next()
        .is_some_and(|l| got_list(l).iter().any(|g| g == "M1"));
    let mut got_t = Vec::new();
    let mut errors = Vec::new();
    let t0 = Instant::now();
    let deadline = Duration::from_secs(5);
    let done = |got: &Vec<String>| {
        ["M0", "M2", "M3"]
            .iter()
            .all(|k| got.iter().any(|g| g == k))
            && (r1_got_m1 || got.iter().any(|g| g == "M1"))
    };
    while !done(&got_t) && t0.elapsed() < deadline {
        let left = deadline.saturating_sub(t0.elapsed());
        match rx.recv_timeout(left.min(Duration::from_millis(500))) {
            Ok(m) => got_t.push(ident7(&m)),
            Err(RecvTimeoutError::Timeout) => {}
            Err(e) => {
                errors.push(format!("{e:?}"));
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let waited = t0.elapsed();
    touch(dir.join("stop"));
    c.wait_ok();
    let st = status();
    let mut f = Findings::default();
    let line_a = st
        .lines()
        .find(|l| l.starts_with("A "))
        .unwrap_or("(missing)");
    let line_b = st
        .lines()
        .find(|l| l.starts_with("B "))
        .unwrap_or("(missing)");
    f.check(got_list(line_a).iter().any(|g| g == "M1"), || {
        format!(
            "the starved receiver never reached M1 (inline, queued behind the M0 it cannot \
             map) in 200 try_recv: {line_a}; later, while retrying: {line_b}; the test \
             process got [{}]",
            got_t.join(", ")
        )
    });
    f.check(got_t.iter().any(|g| g == "M0"), || {
        format!(
            "the other receiver (the test process) did not get M0 in {waited:?} while the \
             starved one kept retrying; it got [{}], errors {errors:?}; starved receiver: {line_b}",
            got_t.join(", ")
        )
    });
    // Whatever is left is received now, with the starved receiver gone.
    let mut late = Vec::new();
    while let Ok(m) = rx.recv_timeout(Duration::from_millis(300)) {
        late.push(ident7(&m));
    }
    f.check(late.is_empty(), || {
        format!("only once the starved receiver had left did the test process get {late:?}")
    });
    // Every message exactly once, across both receivers.
    let mut all: Vec<String> = got_t.clone();
    all.extend(late.iter().cloned());
    for l in [line_a, line_b] {
        all.extend(got_list(l));
    }
    all.sort();
    f.check(all == ["M0", "M1", "M2", "M3"], || {
        format!(
            "messages received across both receivers: {all:?}, want each of M0..M3 once \
             (test process got {got_t:?})"
        )
    });
    drop((tx, rx));
    let left = leftovers(g.name());
    f.check(left.is_empty(), || format!("left in /dev/shm: {left:?}"));
    f.assert_none("a receiver cannot map a message");
}

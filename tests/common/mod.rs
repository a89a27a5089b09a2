//! Shared harness for the multi-process integration tests.
//!
//! * [`ShmGuard`] owns a unique queue name (`t-<tag>-<pid>-<n>-<random>`); on drop it
//!   removes `/dev/shm/shmq.<name>`, every `/dev/shm/shmq.<name>.*` and any other entry
//!   naming it (see [`leftovers`]), so a failing test
//!   leaves no trace. [`ShmGuard::assert_clean`] is the check a passing test makes after
//!   dropping its handles and reaping its children: the library must have removed
//!   everything itself.
//! * Child processes re-execute the current test binary on one test
//!   (`--exact <test> --include-ignored --nocapture --test-threads 1`) with `SHMQ_TEST_CHILD=<role>` and
//!   parameters in `SHMQ_TEST_P_<KEY>` variables. A test function starts with
//!   [`as_child`], which runs the role and exits when the variable is set. [`Child`]
//!   SIGKILLs and reaps its process on drop; children also get `PR_SET_PDEATHSIG` and their
//!   own watchdog, so nothing outlives the test.
//! * [`Watchdog`]: every test that can block runs under a deadline. When it expires the
//!   watchdog says which test hung, SIGKILLs every child, removes every guarded queue's
//!   files and aborts the test process. There is no upper bound on run time otherwise:
//!   speed belongs in benchmarks.
//! * Byte patterns ([`fill`], [`check`], [`stamp`], [`check_stamps`]) to verify payloads
//!   cheaply.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Environment variable naming the role a re-executed test binary plays.
pub const CHILD_ENV: &str = "SHMQ_TEST_CHILD";
/// Prefix of the environment variables carrying a child's parameters.
const PARAM_PREFIX: &str = "SHMQ_TEST_P_";
/// A child's own deadline, in seconds.
const CHILD_DEADLINE_ENV: &str = "SHMQ_TEST_CHILD_DEADLINE";
/// Exit status of a child whose role ran to the end. Not 0: a child that exits 0 did not
/// run its role at all (the harness found no test of that name, or skipped it).
pub const CHILD_OK: i32 = 42;
/// Default deadline of a child process.
pub const CHILD_DEADLINE: Duration = Duration::from_secs(90);

static COUNTER: AtomicU64 = AtomicU64::new(0);
/// Pids of live children (of every test in this binary), for the watchdog.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Names guarded by a live [`ShmGuard`], for the watchdog.
static GUARDED: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------
// Names and /dev/shm

/// A queue name no other test (in this or another process) uses:
/// `t-<tag>-<pid>-<counter>-<random>`.
pub fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "t-{tag}-{}-{n}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// The header object of queue `name`.
pub fn header_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/shmq.{name}"))
}

/// Every object in `/dev/shm` that belongs to queue `name`: `shmq.<name>`,
/// `shmq.<name>.*`, and any other entry naming it as a dot-separated component (such as a
/// creator's temporary file). Names cannot contain `.`, so no other queue matches.
pub fn leftovers(name: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/dev/shm") {
        for e in dir.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if f.split('.').any(|part| part == name) {
                found.push(f);
            }
        }
    }
    found.sort();
    found
}

fn remove_leftovers(name: &str) -> Vec<String> {
    let found = leftovers(name);
    for f in &found {
        let _ = std::fs::remove_file(Path::new("/dev/shm").join(f));
    }
    found
}

/// Asserts that nothing of queue `name` is left in `/dev/shm`.
#[track_caller]
pub fn assert_nothing_left(name: &str) {
    let left = leftovers(name);
    if !left.is_empty() {
        let diag: Vec<String> = left.iter().map(|f| who_holds(f)).collect();
        panic!(
            "queue {name:?} left objects in /dev/shm after every handle was dropped: \
             {left:?}\n{}",
            diag.join("\n")
        );
    }
}

/// Which processes have `/dev/shm/<file>` open or mapped, and its locks in /proc/locks:
/// for the message of a failed cleanliness check.
fn who_holds(file: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    let path = Path::new("/dev/shm").join(file);
    let mut out = format!("  {}:", path.display());
    let Ok(meta) = std::fs::metadata(&path) else {
        return out + " (gone meanwhile)";
    };
    let ino = meta.ino();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let fds = std::fs::read_dir(p.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == path))
            .count();
        let mapped = std::fs::read_to_string(p.path().join("maps"))
            .is_ok_and(|m| m.lines().any(|l| l.ends_with(&path.display().to_string())));
        if fds > 0 || mapped {
            let comm = std::fs::read_to_string(p.path().join("stat")).unwrap_or_default();
            out += &format!(
                "\n    pid {pid}: {fds} fds, mapped {mapped}; stat {}",
                comm.split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    for l in locks.lines() {
        if l.split_whitespace()
            .nth(5)
            .and_then(|d| d.rsplit(':').next())
            .is_some_and(|i| i == ino.to_string())
        {
            out += &format!("\n    lock: {l}");
        }
    }
    out
}

/// Owns a unique queue name; removes whatever of it is left in `/dev/shm` on drop (also
/// when the test panics).
pub struct ShmGuard {
    name: String,
}

impl ShmGuard {
    /// A fresh unique name with `tag` in it.
    pub fn new(tag: &str) -> ShmGuard {
        ShmGuard::for_name(unique_name(tag))
    }

    /// Guards a name chosen elsewhere (for example by `shmq::channel`).
    pub fn for_name(name: impl Into<String>) -> ShmGuard {
        let name = name.into();
        lock(&GUARDED).push(name.clone());
        ShmGuard { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn header_path(&self) -> PathBuf {
        header_path(&self.name)
    }

    /// Asserts that the library left nothing of this queue in `/dev/shm`.
    #[track_caller]
    pub fn assert_clean(&self) {
        assert_nothing_left(&self.name);
    }
}

impl Drop for ShmGuard {
    fn drop(&mut self) {
        let removed = remove_leftovers(&self.name);
        if !removed.is_empty() && !std::thread::panicking() {
            // Not an assertion (a test asserts with `assert_clean`); tells a reader which
            // test left something when it did not check.
            eprintln!("ShmGuard: removed leftovers of {}: {removed:?}", self.name);
        }
        let mut g = lock(&GUARDED);
        if let Some(i) = g.iter().position(|n| *n == self.name) {
            g.swap_remove(i);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Watchdog

/// Aborts the test process (after killing every child and removing every guarded queue)
/// if it is still alive after the deadline. Disarmed on drop, also while unwinding.
pub struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn new(what: &str, limit: Duration) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let what = what.to_string();
        let thread = std::thread::Builder::new()
            .name(format!("watchdog {what}"))
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                    // Straight to fd 2: `eprintln!` would go to the test harness's
                    // capture buffer (inherited by spawned threads), lost on abort.
                    let _ = writeln!(
                        std::io::stderr(),
                        "\nWATCHDOG: {what} still running after {limit:?} (hung?): \
                         killing children, cleaning /dev/shm, aborting"
                    );
                    kill_all_children();
                    remove_all_guarded();
                    std::process::abort();
                }
            })
            .expect("spawn watchdog");
        Watchdog {
            disarm: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.disarm.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Removes what is left in /dev/shm of every name a live [`ShmGuard`] holds: for paths
/// that end the process without unwinding (a watchdog, `process::exit`).
pub fn remove_all_guarded() {
    for name in lock(&GUARDED).iter() {
        remove_leftovers(name);
    }
}

fn kill_all_children() {
    for &pid in lock(&CHILDREN).iter() {
        // SAFETY: plain syscall; the pid is a child we have not reaped yet (deregistered
        // before reaping), so it cannot have been reused.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Child processes

/// When this process is a child (`SHMQ_TEST_CHILD` set), runs `role` with the role's name
/// under the child's own watchdog, then exits with status [`CHILD_OK`] (after `role` dropped its
/// handles). A panic in `role` makes the test harness exit non-zero. Returns at once in
/// the parent.
pub fn as_child(role: impl FnOnce(&str)) {
    let Ok(r) = std::env::var(CHILD_ENV) else {
        return;
    };
    let limit = std::env::var(CHILD_DEADLINE_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(CHILD_DEADLINE);
    let wd = Watchdog::new(&format!("child role {r:?}"), limit);
    role(&r);
    drop(wd);
    std::process::exit(CHILD_OK);
}

/// A parameter the parent passed to this child.
#[track_caller]
pub fn param(key: &str) -> String {
    std::env::var(format!("{PARAM_PREFIX}{key}"))
        .unwrap_or_else(|_| panic!("child parameter {key} missing"))
}

/// A parameter parsed.
#[track_caller]
pub fn param_as<T: std::str::FromStr>(key: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    param(key).parse().expect("child parameter parses")
}

/// A child process running `test` in the role `role`; SIGKILLed and reaped on drop.
pub struct Child {
    inner: Option<std::process::Child>,
    label: String,
}

impl Child {
    /// Re-executes this test binary on test `test` (its exact name) as `role`, with
    /// `params` readable with [`param`]. Its stdout (the harness chatter) is discarded;
    /// its stderr (panic messages) is inherited.
    pub fn spawn(test: &str, role: &str, params: &[(&str, &dyn std::fmt::Display)]) -> Child {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        // `--include-ignored`: an `#[ignore]`d test's children must run too (without it
        // the harness skips the test and the child exits 0 having done nothing).
        cmd.args([
            test,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD_ENV, role)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        for (k, v) in params {
            cmd.env(format!("{PARAM_PREFIX}{k}"), v.to_string());
        }
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                Ok(())
            });
        }
        // Hold the registry lock across the spawn so the watchdog cannot miss this pid.
        let mut reg = lock(&CHILDREN);
        let child = cmd.spawn().expect("spawn child test process");
        reg.push(child.id());
        drop(reg);
        Child {
            inner: Some(child),
            label: format!("child {role:?} of {test}"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.inner.as_ref().expect("child already reaped").id()
    }

    fn deregister(pid: u32) {
        let mut reg = lock(&CHILDREN);
        if let Some(i) = reg.iter().position(|&p| p == pid) {
            reg.swap_remove(i);
        }
    }

    /// Waits for the child to exit and reaps it.
    pub fn wait(&mut self) -> ExitStatus {
        let mut c = self.inner.take().expect("child already reaped");
        let status = c.wait().expect("wait for child");
        Self::deregister(c.id());
        status
    }

    /// Waits for the child and asserts that it ran its role to the end (exit status
    /// [`CHILD_OK`]).
    #[track_caller]
    pub fn wait_ok(&mut self) {
        let label = self.label.clone();
        let status = self.wait();
        assert!(
            status.code() != Some(0),
            "{label} exited 0 without running its role (wrong test name, or skipped?)"
        );
        assert_eq!(
            status.code(),
            Some(CHILD_OK),
            "{label} failed: {status:?} (signal {:?})",
            status.signal()
        );
    }

    /// Whether the child is still running (does not reap it).
    pub fn is_running(&mut self) -> bool {
        let c = self.inner.as_mut().expect("child already reaped");
        // SAFETY: waitid with WNOWAIT only peeks at the child's state; the siginfo
        // buffer is zeroed and ours.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let r = libc::waitid(
                libc::P_PID,
                c.id() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            );
            r == 0 && info.si_pid() == 0
        }
    }

    /// SIGKILLs the child and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        let c = self.inner.as_mut().expect("child already reaped");
        let _ = c.kill();
        self.wait()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut c) = self.inner.take() {
            let _ = c.kill();
            let _ = c.wait();
            Self::deregister(c.id());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Files as signals between processes

/// A temporary directory, removed (with its contents) on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique_name(tag));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, f: impl AsRef<Path>) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `contents` to `path` atomically (write a temp file, rename), so a reader polling
/// for `path` never sees it half written.
pub fn write_atomic(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) {
    let path = path.as_ref();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(OsStr::new(".tmp"));
    std::fs::write(&tmp, contents).expect("write signal file");
    std::fs::rename(&tmp, path).expect("rename signal file");
}

/// Creates `path` (a signal to another process).
pub fn touch(path: impl AsRef<Path>) {
    write_atomic(path, b"");
}

/// Polls until `path` exists; bounded by the caller's watchdog. Panics if `child` (when
/// given) exits first, which would otherwise mean waiting forever.
#[track_caller]
pub fn wait_for_file(path: impl AsRef<Path>, mut child: Option<&mut Child>) {
    let path = path.as_ref();
    loop {
        if path.exists() {
            return;
        }
        if let Some(c) = child.as_deref_mut() {
            if !c.is_running() {
                let label = c.label.clone();
                let st = c.wait();
                panic!("{label} exited ({st:?}) before creating {}", path.display());
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Polls `cond` every 2 ms until it holds; bounded by the caller's watchdog.
pub fn wait_until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Time since `start`, for "no earlier than the deadline" checks.
pub fn since(start: Instant) -> Duration {
    start.elapsed()
}

// ---------------------------------------------------------------------------------------
// Byte patterns

/// SplitMix64: a cheap, well-mixed function of its input.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `buf` with a pattern of `seed` in which every 8-byte word differs (word `k` is
/// `mix(seed ^ mix(k))`), so a shifted, truncated, zeroed or foreign range shows.
pub fn fill(buf: &mut [u8], seed: u64) {
    let mut chunks = buf.chunks_exact_mut(8);
    let mut k = 0u64;
    for c in &mut chunks {
        c.copy_from_slice(&word(seed, k).to_le_bytes());
        k += 1;
    }
    let rest = chunks.into_remainder();
    let n = rest.len();
    rest.copy_from_slice(&word(seed, k).to_le_bytes()[..n]);
}

fn word(seed: u64, k: u64) -> u64 {
    mix(seed ^ mix(k))
}

/// Checks a buffer written by [`fill`]; the error names the first differing offset.
pub fn check(buf: &[u8], seed: u64) -> Result<(), String> {
    let mut chunks = buf.chunks_exact(8);
    let mut k = 0u64;
    for c in &mut chunks {
        if c != word(seed, k).to_le_bytes() {
            return Err(format!(
                "pattern differs at byte offset {} of {}: got {:02x?}, want {:02x?}",
                k * 8,
                buf.len(),
                c,
                word(seed, k).to_le_bytes()
            ));
        }
        k += 1;
    }
    let rest = chunks.remainder();
    if rest != &word(seed, k).to_le_bytes()[..rest.len()] {
        return Err(format!(
            "pattern differs in the final {} bytes of {}",
            rest.len(),
            buf.len()
        ));
    }
    Ok(())
}

const PAGE: usize = 4096;
/// Mixed into the seed of stamped words ("STAMP").
const STAMP_SALT: u64 = 0x0053_5441_4d50;
/// Bytes fully patterned at each end of a stamped buffer.
const STAMP_EDGE: usize = 64 * 1024;

/// Offsets a stamped buffer of `len` bytes carries a u64 at: the start, middle and last
/// word of every 4 KiB page.
fn stamp_offsets(len: usize) -> impl Iterator<Item = usize> {
    (0..len.div_ceil(PAGE)).flat_map(move |p| {
        let base = p * PAGE;
        let end = (base + PAGE).min(len);
        [base, base + PAGE / 2, end.saturating_sub(8)]
            .into_iter()
            .filter(move |&o| o + 8 <= end && o >= base)
    })
}

/// Marks a large buffer cheaply: three u64s per 4 KiB page (functions of seed and offset)
/// and the first and last 64 KiB filled entirely (see [`fill`]). Every page is touched, so
/// a missing or misplaced page shows.
pub fn stamp(buf: &mut [u8], seed: u64) {
    let len = buf.len();
    for o in stamp_offsets(len) {
        buf[o..o + 8].copy_from_slice(&word(seed ^ STAMP_SALT, o as u64).to_le_bytes());
    }
    let edge = STAMP_EDGE.min(len);
    fill(&mut buf[..edge], seed);
    fill(&mut buf[len - edge..], !seed);
}

/// Checks a buffer written by [`stamp`]; also hashes a sample (the edges and every
/// stamped word) so the failure message is short.
pub fn check_stamps(buf: &[u8], seed: u64) -> Result<(), String> {
    let len = buf.len();
    let edge = STAMP_EDGE.min(len);
    check(&buf[..edge], seed).map_err(|e| format!("head: {e}"))?;
    check(&buf[len - edge..], !seed).map_err(|e| format!("tail: {e}"))?;
    for o in stamp_offsets(len) {
        if o + 8 <= edge || o + 8 > len - edge {
            continue; // covered by the edges, which overwrote the stamp
        }
        let want = word(seed ^ STAMP_SALT, o as u64).to_le_bytes();
        if buf[o..o + 8] != want {
            return Err(format!(
                "stamp at byte offset {o} of {len}: got {:02x?}, want {want:02x?}",
                &buf[o..o + 8]
            ));
        }
    }
    Ok(())
}

/// FNV-1a over `parts`, in order.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// Asserts that a Display string is lowercase-initial with no final period.
#[track_caller]
pub fn assert_error_style(what: &str, s: &str) {
    assert!(!s.is_empty(), "{what}: empty Display");
    let first = s.chars().next().unwrap();
    assert!(
        !first.is_uppercase(),
        "{what}: Display should start lowercase: {s:?}"
    );
    assert!(
        !s.ends_with('.'),
        "{what}: Display should not end with a period: {s:?}"
    );
}

/// Byte offset in a queue's header of field `field_off` of slot record `slot`, for a queue
/// made with `max_participants` and `capacity` (layout.rs `Geometry::new`: participant
/// records at 1024, 128 bytes each, then 8 bytes per ring cell, rounded up to 256; slot
/// records of 256 bytes from there). For tests that scribble over one field.
pub fn slot_field_offset(max_participants: u64, capacity: u64, slot: u64, field_off: u64) -> u64 {
    (1024 + 128 * max_participants + 8 * capacity).div_ceil(256) * 256 + 256 * slot + field_off
}

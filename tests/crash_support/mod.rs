//! Harness of the crash, chaos and liveness tests (and of `benches/recovery_latency.rs`):
//!
//! * child processes that re-execute the current binary with a role in the environment
//!   ([`Proc`]), killed and reaped on drop, talking back through `@@ <event>` lines on
//!   their stdout and through report files (one `write(2)` per line, so a SIGKILL never
//!   leaves half a line behind);
//! * a [`Watchdog`] that kills every child, removes the test's shared-memory objects and
//!   aborts with a clear message when a test hangs;
//! * [`ShmGuard`]: a unique queue name whose `/dev/shm` objects are removed even when the
//!   test fails, and [`ShmGuard::assert_clean`] for the end of a test;
//! * self-checking payloads ([`payload`], [`check`]) and report parsing for the accounting.
//!
//! A child runs inside the very test function that spawned it: every test starts with
//! `if let Some(role) = crash_support::role() { child(&role) }`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The environment variable that names a child's role.
pub const ROLE_VAR: &str = "SHMQ_T_ROLE";
/// The queue name given to a child.
pub const NAME_VAR: &str = "SHMQ_T_NAME";
/// Seconds after which a child exits on its own whatever happens (a safety net if its
/// parent vanished without killing it).
pub const CHILD_LIFETIME_VAR: &str = "SHMQ_T_CHILD_SECS";

// ---------------------------------------------------------------------------------------
// Child side

/// This process's role if it is a child, else `None`.
pub fn role() -> Option<String> {
    let r = std::env::var(ROLE_VAR).ok()?;
    start_child_safety_timer();
    Some(r)
}

/// A parameter given to this child.
pub fn param(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| panic!("child parameter {key} missing"))
}

/// An optional parameter given to this child.
pub fn param_opt(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|s| !s.is_empty())
}

/// A numeric parameter given to this child.
pub fn param_u64(key: &str) -> u64 {
    let v = param(key);
    v.parse()
        .unwrap_or_else(|_| panic!("child parameter {key}={v:?} is not a number"))
}

/// The queue name given to this child.
pub fn queue_name() -> String {
    param(NAME_VAR)
}

/// The supervision mode given to this child (`SHMQ_T_SUP`: `thread` (default) or
/// `manual`).
pub fn supervision() -> shmq::Supervision {
    match param_opt("SHMQ_T_SUP").as_deref() {
        None | Some("thread") => shmq::Supervision::Thread,
        Some("manual") => shmq::Supervision::Manual,
        Some(o) => panic!("bad SHMQ_T_SUP {o:?}"),
    }
}

/// Tells the parent about `event` (a line `@@ <event>` on stdout).
pub fn emit(event: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "@@ {event}");
    let _ = out.flush();
}

/// Ends a child: exit code 0 (handles must have been dropped by the caller).
pub fn child_exit() -> ! {
    let _ = std::io::stdout().flush();
    std::process::exit(0)
}

/// Sleeps until killed (the parent SIGKILLs us; the safety timer ends us otherwise).
pub fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Waits until file `path` exists (a go signal from the parent).
pub fn wait_for_file(path: &Path) {
    while !path.exists() {
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn start_child_safety_timer() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let secs: u64 = std::env::var(CHILD_LIFETIME_VAR)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(180);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            eprintln!(
                "test child {} (role {:?}) still running after {secs} s: exiting",
                std::process::id(),
                std::env::var(ROLE_VAR)
            );
            // SAFETY: plain syscall; ends the process without running anything else.
            unsafe { libc::_exit(99) }
        });
    });
}

/// An append-only report file written one line per `write(2)`.
pub struct Report(File);

impl Report {
    /// Opens (creates) the report at `path` for appending.
    pub fn open(path: &Path) -> Report {
        Report(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap_or_else(|e| panic!("cannot open report {}: {e}", path.display())),
        )
    }
    /// Appends one line (`line` must end with `\n`) with a single `write(2)`.
    pub fn line(&mut self, line: &str) {
        debug_assert!(line.ends_with('\n'));
        // `File` is unbuffered: one write_all of a short line is one syscall.
        self.0
            .write_all(line.as_bytes())
            .unwrap_or_else(|e| panic!("cannot write report: {e}"));
    }
}

// ---------------------------------------------------------------------------------------
// Parent side: children, watchdog, /dev/shm guards

static CHILDREN: Mutex<Vec<i32>> = Mutex::new(Vec::new());
static QUEUES: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers a process (not necessarily our child) for the watchdog to kill.
pub fn register_pid(pid: i32) {
    lock(&CHILDREN).push(pid);
}

/// Forgets a process registered with [`register_pid`].
pub fn unregister_pid(pid: i32) {
    lock(&CHILDREN).retain(|&p| p != pid);
}

/// Aborts the whole test process if it is not dropped within `secs` seconds: first
/// SIGKILLs every child process of this binary and removes every registered queue's
/// `/dev/shm` objects, then prints what hung.
pub struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
}

impl Watchdog {
    /// Arms a watchdog for `what` (printed if it fires).
    pub fn new(what: &str, secs: u64) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        let what = what.to_string();
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) =
                    rx.recv_timeout(Duration::from_secs(secs))
                {
                    eprintln!(
                        "\nWATCHDOG: {what} did not finish within {secs} s (something is blocked); killing the child processes and aborting"
                    );
                    for &pid in lock(&CHILDREN).iter() {
                        // SAFETY: plain syscall; the pids are our unreaped children (or
                        // grandchildren we adopted), which cannot have been reused.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                    for q in lock(&QUEUES).iter() {
                        remove_queue_objects(q);
                    }
                    std::process::abort();
                }
            })
            .expect("spawn watchdog");
        Watchdog { disarm: Some(tx) }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.disarm.take());
    }
}

/// The `/dev/shm` objects of queue `name`: the header `shmq.<name>`, segments
/// `shmq.<name>.<slot>`, and half-created headers `.shmq-new.<name>.*`.
pub fn queue_objects(name: &str) -> Vec<PathBuf> {
    let header = format!("shmq.{name}");
    let seg = format!("shmq.{name}.");
    let tmp = format!(".shmq-new.{name}.");
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/dev/shm") {
        for e in rd.flatten() {
            let f = e.file_name();
            let f = f.to_string_lossy();
            if *f == header || f.starts_with(&seg) || f.starts_with(&tmp) {
                v.push(e.path());
            }
        }
    }
    v.sort();
    v
}

fn remove_queue_objects(name: &str) {
    for p in queue_objects(name) {
        let _ = std::fs::remove_file(p);
    }
}

/// A unique queue name whose `/dev/shm` objects are removed on drop, even if the test
/// fails.
pub struct ShmGuard {
    /// The queue name.
    pub name: String,
}

impl ShmGuard {
    /// A fresh name `t<tag>-<pid>-<random>`.
    pub fn new(tag: &str) -> ShmGuard {
        let name = format!(
            "t{tag}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        lock(&QUEUES).push(name.clone());
        ShmGuard { name }
    }

    /// Asserts that no object of the queue is left in `/dev/shm` (call after dropping
    /// every handle and reaping every child).
    pub fn assert_clean(&self) {
        let left = queue_objects(&self.name);
        assert!(
            left.is_empty(),
            "queue {} left objects in /dev/shm after every handle was dropped: {left:?}",
            self.name
        );
    }
}

impl Drop for ShmGuard {
    fn drop(&mut self) {
        remove_queue_objects(&self.name);
        lock(&QUEUES).retain(|q| *q != self.name);
    }
}

/// A scratch directory for report files; removed on drop unless the test failed (then
/// its path is printed for the post-mortem).
pub struct LogDir {
    /// The directory.
    pub path: PathBuf,
}

impl LogDir {
    /// A fresh directory named after the queue.
    pub fn new(name: &str) -> LogDir {
        let path = std::env::temp_dir().join(format!("shmq-test-{name}"));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create log dir");
        LogDir { path }
    }
    /// A file in it.
    pub fn file(&self, f: &str) -> PathBuf {
        self.path.join(f)
    }
    /// Its path as a string (for the environment of a child).
    pub fn file_str(&self, f: &str) -> String {
        self.file(f).to_string_lossy().into_owned()
    }
    /// Creates the (empty) file `f`: a go signal.
    pub fn touch(&self, f: &str) {
        File::create(self.file(f)).expect("touch");
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("reports kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A child process running this binary in a role; SIGKILLed and reaped on drop.
pub struct Proc {
    /// A label for messages.
    pub label: String,
    child: Child,
    out: Option<BufReader<ChildStdout>>,
    status: Option<ExitStatus>,
}

impl Proc {
    /// Runs this test binary's test `test` alone, as role `role`, with `env`.
    pub fn spawn_test(test: &str, label: &str, role: &str, env: &[(&str, String)]) -> Proc {
        Proc::spawn(
            &["--exact", test, "--nocapture", "--test-threads", "1"],
            label,
            role,
            env,
        )
    }

    /// Runs the current executable with `args` as role `role`, with `env`. Fault
    /// injection variables are not inherited: a child gets them only from `env`.
    pub fn spawn(args: &[&str], label: &str, role: &str, env: &[(&str, String)]) -> Proc {
        let exe = std::env::current_exe().expect("current_exe");
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .env_remove("SHMQ_CRASH_AT")
            .env_remove("SHMQ_CRASH_SKIP")
            .env(ROLE_VAR, role)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // SAFETY: prctl is async-signal-safe; the child dies with the thread that spawned
        // it (the test), so a crashed test leaves no process behind.
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
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn child {label}: {e}"));
        register_pid(child.id() as i32);
        let out = child.stdout.take().map(BufReader::new);
        Proc {
            label: label.to_string(),
            child,
            out,
            status: None,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Reads the child's stdout until it emits `event`; returns the rest of that line.
    /// Panics if the child exits first.
    pub fn expect(&mut self, event: &str) -> String {
        let out = self.out.as_mut().expect("stdout");
        let mut line = String::new();
        loop {
            line.clear();
            let n = out.read_line(&mut line).expect("read child stdout");
            if n == 0 {
                let st = self.wait();
                panic!(
                    "child {} exited ({}) before emitting {event:?}",
                    self.label,
                    describe(&st)
                );
            }
            // libtest may have written "test <name> ... " without a newline before us.
            if let Some(rest) = line.trim_end().split_once("@@ ").map(|(_, r)| r) {
                if rest == event {
                    return String::new();
                }
                if let Some(r) = rest.strip_prefix(event).and_then(|r| r.strip_prefix(' ')) {
                    return r.to_string();
                }
                panic!(
                    "child {} emitted {rest:?} while {event:?} was expected",
                    self.label
                );
            }
        }
    }

    /// Sends `sig` to the child if it is not reaped yet.
    pub fn signal(&self, sig: i32) {
        if self.status.is_none() {
            // SAFETY: plain syscall; an unreaped child's pid cannot have been reused.
            unsafe { libc::kill(self.pid(), sig) };
        }
    }

    /// SIGKILLs the child (without reaping it).
    pub fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    /// Reaps the child (blocking: run under a [`Watchdog`]).
    pub fn wait(&mut self) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let s = self.child.wait().expect("waitpid");
        self.status = Some(s);
        unregister_pid(self.pid());
        s
    }

    /// Reaps the child if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if let Some(s) = self.status {
            return Some(s);
        }
        let s = self.child.try_wait().expect("waitpid")?;
        self.status = Some(s);
        unregister_pid(self.pid());
        Some(s)
    }

    /// Whether the child has been reaped.
    pub fn reaped(&self) -> bool {
        self.status.is_some()
    }

    /// Reaps the child and asserts it exited with code 0.
    pub fn expect_success(&mut self) {
        let st = self.wait();
        assert!(
            st.success(),
            "child {} failed: {} (its stderr is above)",
            self.label,
            describe(&st)
        );
    }

    /// Reaps the child and asserts it died of SIGKILL (`why` explains what should have
    /// killed it).
    pub fn expect_killed(&mut self, why: &str) {
        let st = self.wait();
        assert_eq!(
            st.signal(),
            Some(libc::SIGKILL),
            "child {} should have been killed ({why}) but {}",
            self.label,
            describe(&st)
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.kill();
            let _ = self.wait();
        }
    }
}

/// "exited with code N" / "was killed by signal N".
pub fn describe(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (_, Some(s)) => format!("was killed by signal {s}"),
        _ => format!("{st:?}"),
    }
}

/// Polls `cond` every millisecond until it holds; panics naming `what` if it still does
/// not after a minute (far beyond anything expected: this only turns a hang into a
/// clear failure).
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "still waiting after 60 s for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `/proc/<pid>/stat`: (state, start time in clock ticks), `None` if no such process.
pub fn proc_stat(pid: i32) -> Option<(u8, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace();
    let state = f.next()?.bytes().next()?;
    let start = f.nth(18)?.parse().ok()?;
    Some((state, start))
}

// ---------------------------------------------------------------------------------------
// Payloads

/// The shortest payload [`payload`] makes: id, seq, len, checksum.
pub const MIN_LEN: usize = 32;

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn fnv1a(b: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Message `seq` of producer `id`, `len` bytes (at least [`MIN_LEN`]):
/// `id | seq | len | pseudo-random body from (id, seq) | FNV-1a checksum of the rest`.
pub fn payload(id: u64, seq: u64, len: usize) -> Vec<u8> {
    let len = len.max(MIN_LEN);
    let mut v = vec![0u8; len];
    fill_payload(&mut v, id, seq);
    v
}

/// Writes message `seq` of producer `id` into `buf` (whose length is the message's).
pub fn fill_payload(buf: &mut [u8], id: u64, seq: u64) {
    let len = buf.len();
    assert!(len >= MIN_LEN);
    buf[0..8].copy_from_slice(&id.to_le_bytes());
    buf[8..16].copy_from_slice(&seq.to_le_bytes());
    buf[16..24].copy_from_slice(&(len as u64).to_le_bytes());
    let mut x = mix(id.rotate_left(32) ^ seq);
    for c in buf[24..len - 8].chunks_mut(8) {
        x = mix(x);
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    let sum = fnv1a(&buf[..len - 8]);
    buf[len - 8..].copy_from_slice(&sum.to_le_bytes());
}

/// Checks a received payload end to end; returns its (producer id, seq).
pub fn check(b: &[u8]) -> Result<(u64, u64), String> {
    if b.len() < MIN_LEN {
        return Err(format!("payload of {} bytes is too short", b.len()));
    }
    let id = u64::from_le_bytes(b[0..8].try_into().unwrap());
    let seq = u64::from_le_bytes(b[8..16].try_into().unwrap());
    let len = u64::from_le_bytes(b[16..24].try_into().unwrap());
    if len != b.len() as u64 {
        return Err(format!(
            "id {id} seq {seq}: length field {len} but {} bytes arrived",
            b.len()
        ));
    }
    let sum = u64::from_le_bytes(b[b.len() - 8..].try_into().unwrap());
    if sum != fnv1a(&b[..b.len() - 8]) {
        return Err(format!("id {id} seq {seq} len {len}: checksum mismatch"));
    }
    if b != payload(id, seq, b.len()).as_slice() {
        return Err(format!("id {id} seq {seq} len {len}: body differs"));
    }
    Ok((id, seq))
}

/// A varied size for message `seq` of producer `id`: inline (≤ 192 bytes), small
/// segments, and up to ~40 KiB.
pub fn mixed_size(id: u64, seq: u64) -> usize {
    let r = mix(id ^ seq.rotate_left(17));
    let k = (r >> 32) as usize;
    match r % 10 {
        0..=4 => MIN_LEN + k % 161,
        5..=7 => 193 + k % 4000,
        8 => 4097 + k % 12000,
        _ => 16384 + k % 24000,
    }
}

/// A small size, always inline in the slot record (32..=192 bytes).
pub fn small_size(id: u64, seq: u64) -> usize {
    MIN_LEN + (mix(id ^ seq.rotate_left(17)) % 161) as usize
}

/// A size that grows with `seq` (1000 + 500·seq bytes), so the slots' segments keep being
/// regrown (crash point `send.grow`), and, in a small payload pool, trimmed (`send.trim`).
pub fn growing_size(_id: u64, seq: u64) -> usize {
    1000 + 500 * seq as usize
}

// ---------------------------------------------------------------------------------------
// Shared child roles

/// Child role "producer": opens a sender on `SHMQ_T_NAME` (supervision `SHMQ_T_SUP`),
/// emits `ready`, then sends `SHMQ_T_COUNT` messages of producer `SHMQ_T_ID` (sizes
/// `SHMQ_T_SIZES` = `mixed` | `small` | `grow`), even seqs with `send`, odd seqs through a `loan`,
/// appending each seq whose send returned `Ok` to `SHMQ_T_LOG` before the next send.
/// With `SHMQ_T_GO_AT=n` and `SHMQ_T_GO=<file>` it waits for the file before seq `n`;
/// with `SHMQ_T_CLONE_AT=n` it clones its sender before seq `n` (crash point
/// `register.cas`). Emits `done` and exits 0.
pub fn producer_child() -> ! {
    let name = queue_name();
    let id = param_u64("SHMQ_T_ID");
    let count = param_u64("SHMQ_T_COUNT");
    let size: fn(u64, u64) -> usize = match param_opt("SHMQ_T_SIZES").as_deref() {
        Some("grow") => growing_size,
        Some("small") => small_size,
        _ => mixed_size,
    };
    let go_at = param_opt("SHMQ_T_GO_AT").map(|s| s.parse::<u64>().unwrap());
    let go = param_opt("SHMQ_T_GO").map(PathBuf::from);
    let clone_at = param_opt("SHMQ_T_CLONE_AT").map(|s| s.parse::<u64>().unwrap());
    let mut log = Report::open(Path::new(&param("SHMQ_T_LOG")));
    let tx = shmq::Builder::new()
        .name(&name)
        .supervision(supervision())
        .open_sender()
        .unwrap_or_else(|e| panic!("producer {id}: cannot open {name}: {e}"));
    emit("ready");
    let mut extra = None;
    for seq in 0..count {
        if go_at == Some(seq) {
            wait_for_file(go.as_deref().expect("SHMQ_T_GO"));
        }
        if clone_at == Some(seq) {
            extra = Some(tx.try_clone().expect("clone sender"));
        }
        let len = size(id, seq);
        let r = if seq % 2 == 0 {
            tx.send(&payload(id, seq, len))
        } else {
            match tx.loan(len) {
                Ok(mut loan) => {
                    fill_payload(&mut loan[..], id, seq);
                    loan.send().map_err(|u| u.error)
                }
                Err(e) => Err(e),
            }
        };
        match r {
            Ok(()) => log.line(&format!("{seq}\n")),
            Err(e) => panic!("producer {id}: send of seq {seq} failed: {e}"),
        }
    }
    drop(extra);
    drop(tx);
    emit("done");
    child_exit()
}

/// Child role "consumer": opens a receiver on `SHMQ_T_NAME`, emits `ready`, then
/// receives until `Disconnected`, checking each payload and appending
/// `<id> <seq> <redelivered 0|1>` (or `BAD <reason>`) to `SHMQ_T_LOG` *before* acking it.
/// With `SHMQ_T_HOLD_US=n` it keeps each message that long before acking. Exits 0.
pub fn consumer_child() -> ! {
    let name = queue_name();
    let mut log = Report::open(Path::new(&param("SHMQ_T_LOG")));
    let hold = param_opt("SHMQ_T_HOLD_US").map(|s| Duration::from_micros(s.parse().unwrap()));
    let rx = shmq::Builder::new()
        .name(&name)
        .supervision(supervision())
        .open_receiver()
        .unwrap_or_else(|e| panic!("consumer: cannot open {name}: {e}"));
    emit("ready");
    loop {
        match rx.recv() {
            Ok(m) => {
                log.line(&report_line(&m));
                if let Some(h) = hold {
                    std::thread::sleep(h);
                }
                drop(m);
            }
            Err(shmq::RecvError::Disconnected) => break,
            Err(e) => panic!("consumer: recv failed: {e}"),
        }
    }
    drop(rx);
    child_exit()
}

/// Child role "holder": opens a receiver, emits `ready`, receives `SHMQ_T_HOLD` messages
/// and keeps them (emitting `holding <id> <seq> ...`), then sleeps until killed.
pub fn holder_child() -> ! {
    let rx = shmq::Builder::new()
        .name(queue_name())
        .supervision(supervision())
        .open_receiver()
        .unwrap();
    emit("ready");
    let mut held = Vec::new();
    let mut what = String::new();
    for _ in 0..param_u64("SHMQ_T_HOLD") {
        let m = rx.recv().unwrap();
        let (id, seq) = check(&m).unwrap();
        what += &format!("{id} {seq} ");
        held.push(m);
    }
    emit(&format!("holding {}", what.trim_end()));
    sleep_forever()
}

/// Child role "loaner": opens a sender, sends `SHMQ_T_SENDS` messages of producer
/// `SHMQ_T_ID` (reporting each `Ok` to `SHMQ_T_LOG`), takes `SHMQ_T_LOANS` loans filled
/// with the next seqs and keeps them unsent, emits `loaned`, then sleeps until killed.
/// With `SHMQ_T_FORK=1` it first makes a child that inherits its descriptors, and so its
/// participant locks, and pauses forever; the event is then `loaned <pid of that child>`.
/// The child is made by the raw `clone` syscall, which runs no `pthread_atfork` handlers:
/// after a `fork()` shmq's child handler closes the inherited lock descriptors
/// (`src/fork.rs`), but a process made without it (a raw `clone`, a runtime that does not
/// use glibc's `fork`) keeps them, and only the start-time cross-check can then tell.
pub fn loaner_child() -> ! {
    let tx = shmq::Builder::new()
        .name(queue_name())
        .supervision(supervision())
        .open_sender()
        .unwrap();
    let id = param_u64("SHMQ_T_ID");
    let sends = param_u64("SHMQ_T_SENDS");
    let mut log = Report::open(Path::new(&param("SHMQ_T_LOG")));
    for seq in 0..sends {
        tx.send(&payload(id, seq, mixed_size(id, seq))).unwrap();
        log.line(&format!("{seq}\n"));
    }
    let mut loans = Vec::new();
    for k in 0..param_u64("SHMQ_T_LOANS") {
        let seq = sends + k;
        let mut l = tx.loan(mixed_size(id, seq)).unwrap();
        fill_payload(&mut l[..], id, seq);
        loans.push(l);
    }
    if param_opt("SHMQ_T_FORK").as_deref() == Some("1") {
        // SAFETY: a fork without atfork handlers (`clone(SIGCHLD)` with no other flags is
        // what `fork()` does underneath); the child only makes raw syscalls (pause) until
        // killed.
        let pid = unsafe {
            libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_long, 0, 0, 0, 0) as i32
        };
        if pid == 0 {
            loop {
                // SAFETY: async-signal-safe.
                unsafe { libc::pause() };
            }
        }
        assert!(pid > 0, "fork failed");
        emit(&format!("loaned {pid}"));
    } else {
        emit("loaned");
    }
    sleep_forever()
}

/// The report line of a received message.
pub fn report_line(m: &shmq::Message) -> String {
    match check(m) {
        Ok((id, seq)) => format!("{id} {seq} {}\n", m.is_redelivery() as u8),
        Err(e) => format!("BAD {e}\n"),
    }
}

// ---------------------------------------------------------------------------------------
// Accounting

/// One delivery of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    /// Producer id.
    pub id: u64,
    /// Sequence number.
    pub seq: u64,
    /// `Message::is_redelivery()`.
    pub redelivered: bool,
    /// Which consumer (incarnation) got it.
    pub by: String,
}

/// Reads a consumer report; corrupt payloads go to `bad`.
pub fn read_consumer_log(path: &Path, by: &str, bad: &mut Vec<String>) -> Vec<Got> {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let mut v = Vec::new();
    for l in s.split_inclusive('\n') {
        let Some(l) = l.strip_suffix('\n') else {
            bad.push(format!("{by}: torn report line {l:?}"));
            continue;
        };
        if let Some(e) = l.strip_prefix("BAD ") {
            bad.push(format!("{by}: {e}"));
            continue;
        }
        let f: Vec<u64> = l
            .split(' ')
            .map(|x| x.parse().expect("report field"))
            .collect();
        assert_eq!(f.len(), 3, "bad report line {l:?} of {by}");
        v.push(Got {
            id: f[0],
            seq: f[1],
            redelivered: f[2] != 0,
            by: by.to_string(),
        });
    }
    v
}

/// Reads a producer report: the seqs whose send returned `Ok`, in order.
pub fn read_producer_log(path: &Path) -> Vec<u64> {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    s.lines()
        .map(|l| l.parse().expect("producer report"))
        .collect()
}

/// Asserts a producer report is exactly `0..n` and returns `n`.
pub fn contiguous(label: &str, seqs: &[u64]) -> u64 {
    for (i, &s) in seqs.iter().enumerate() {
        assert_eq!(s, i as u64, "{label}: report not contiguous: {seqs:?}");
    }
    seqs.len() as u64
}

/// Every delivery of each message, by (id, seq).
pub fn tally(all: &[Got]) -> BTreeMap<(u64, u64), Vec<Got>> {
    let mut t: BTreeMap<(u64, u64), Vec<Got>> = BTreeMap::new();
    for g in all {
        t.entry((g.id, g.seq)).or_default().push(g.clone());
    }
    t
}

/// Receives on `rx` until `Disconnected`, checking payloads; returns what arrived.
pub fn drain(rx: &shmq::Receiver, by: &str, bad: &mut Vec<String>) -> Vec<Got> {
    let mut v = Vec::new();
    loop {
        match rx.recv() {
            Ok(m) => match check(&m) {
                Ok((id, seq)) => v.push(Got {
                    id,
                    seq,
                    redelivered: m.is_redelivery(),
                    by: by.to_string(),
                }),
                Err(e) => bad.push(format!("{by}: {e}")),
            },
            Err(shmq::RecvError::Disconnected) => return v,
            Err(e) => panic!("{by}: recv failed: {e}"),
        }
    }
}

/// After a run: asserts that every payload slot of the queue is free and that capacity
/// is exact, through the public API (exactly `slots` loans can be taken at once, then
/// exactly `capacity` `try_send`s succeed and they come back intact and in order) and
/// through `shmq::info` (every slot FREE, no dead participant, no lease held). `tx` and
/// `rx` must be the only handles left.
pub fn assert_all_slots_free(
    tx: &shmq::Sender,
    rx: &shmq::Receiver,
    capacity: usize,
    slots: usize,
) {
    let name = tx.name().to_string();
    let info = shmq::info::inspect(&name).expect("inspect");
    assert_eq!(
        info.slot_states,
        [slots as u64, 0, 0, 0],
        "slots [free, loaned, held, orphan] after the run (a leaked slot?)"
    );
    assert_eq!(
        info.dead(),
        0,
        "dead participants left unrecovered: {:?}",
        info.participants
    );
    assert_eq!(info.lease_holder, None, "recovery lease still held");
    match rx.try_recv() {
        Err(shmq::TryRecvError::Empty) => {}
        Ok(m) => panic!("queue not empty after the run: got {:?}", check(&m)),
        Err(e) => panic!("try_recv after the run: {e}"),
    }
    let mut loans = Vec::new();
    for i in 0..slots {
        match tx.try_loan(64) {
            Ok(l) => loans.push(l),
            Err(e) => {
                panic!("only {i} of {slots} payload slots could be loaned ({e}): leaked slots")
            }
        }
    }
    assert!(
        matches!(tx.try_loan(64), Err(shmq::TrySendError::Full)),
        "more than {slots} slots could be loaned"
    );
    drop(loans);
    for i in 0..capacity {
        if let Err(e) = tx.try_send(&payload(999, i as u64, 40 + i)) {
            panic!("capacity {capacity}: try_send {i} failed: {e}");
        }
    }
    assert!(
        matches!(
            tx.try_send(&payload(999, capacity as u64, 40)),
            Err(shmq::TrySendError::Full)
        ),
        "capacity {capacity}: try_send number {} did not say Full",
        capacity + 1
    );
    for i in 0..capacity {
        let m = rx.try_recv().expect("capacity message back");
        assert_eq!(check(&m), Ok((999, i as u64)), "capacity message {i}");
        assert!(!m.is_redelivery());
    }
    assert!(matches!(rx.try_recv(), Err(shmq::TryRecvError::Empty)));
    let info = shmq::info::inspect(&name).expect("inspect");
    assert_eq!(info.slot_states, [slots as u64, 0, 0, 0]);
}

/// Percentiles of durations (for printing, never for asserting).
pub fn percentiles(v: &mut [Duration]) -> (Duration, Duration, Duration) {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (at(0.5), at(0.99), *v.last().unwrap())
}

/// Milliseconds with a fraction.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Time since `t0`, in ms.
pub fn since(t0: Instant) -> f64 {
    ms(t0.elapsed())
}

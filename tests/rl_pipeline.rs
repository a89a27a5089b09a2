//! Runs the main example, `examples/rl_pipeline`, as its users do: briefly, without and
//! with `--chaos`, and stopped by SIGINT. Each run must exit as expected, print exact
//! accounting (every trajectory and batch whose send returned `Ok` received at least
//! once, duplicates only as redeliveries), leave nothing of its queues in `/dev/shm`, no
//! process of its own running and no journal directory behind.
//!
//! The example is built once with `cargo build --release --example rl_pipeline` (the
//! features of this test build passed on) and its binary run directly, so that the test
//! holds the pipeline's parent process itself: a watchdog SIGKILLs it after a generous
//! limit (its children follow through `PR_SET_PDEATHSIG`), and the SIGINT goes to it, not
//! to cargo. Runs are serialized: the machine may have two cores. No run time is asserted.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Longest a single run may take before the watchdog kills it (the runs take 2–4 s; the
/// example gives up by itself, with a diagnosis, 30 s after a stop that does not finish).
const RUN_LIMIT: Duration = Duration::from_secs(90);
/// Longest the build of the example may take.
const BUILD_LIMIT: Duration = Duration::from_secs(600);

/// One run at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `cmd` to completion with a watchdog; returns its status and stdout. `on_start`
/// gets the child's pid and a view of its stdout so far, polled every 20 ms until it
/// returns `true`.
fn run_with_watchdog(
    mut cmd: Command,
    limit: Duration,
    mut on_start: impl FnMut(u32, &str) -> bool,
) -> (std::process::ExitStatus, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cannot start the command");
    let pid = child.id();
    let mut out = child.stdout.take().unwrap();
    let text = std::sync::Arc::new(Mutex::new(String::new()));
    let reader = {
        let text = text.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut t = text.lock().unwrap();
                t.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let deadline = Instant::now() + limit;
    let mut started = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let t = text.lock().unwrap().clone();
            panic!("WATCHDOG: still running after {limit:?}, killed; its output:\n{t}");
        }
        if !started {
            started = on_start(pid, &text.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    reader.join().unwrap();
    let t = text.lock().unwrap().clone();
    (status, t)
}

/// The example's binary, built once.
fn example() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "--release",
            "--example",
            "rl_pipeline",
            "--message-format=json-render-diagnostics",
        ]);
        if cfg!(feature = "fault-injection") {
            // The same features as this build: cargo then rebuilds nothing of the library.
            cmd.args(["--features", "fault-injection"]);
        }
        let t0 = Instant::now();
        let (status, out) = run_with_watchdog(cmd, BUILD_LIMIT, |_, _| true);
        assert!(
            status.success(),
            "cargo build of the example failed: {status}"
        );
        eprintln!("built the example in {:.1} s", t0.elapsed().as_secs_f64());
        // One JSON message per line; the example's artifact names its executable.
        let line = out
            .lines()
            .find(|l| {
                l.contains("\"reason\":\"compiler-artifact\"")
                    && l.contains("\"name\":\"rl_pipeline\"")
                    && l.contains("\"executable\":\"")
            })
            .unwrap_or_else(|| panic!("no executable in cargo's output:\n{out}"));
        let start = line.find("\"executable\":\"").unwrap() + "\"executable\":\"".len();
        let end = start + line[start..].find('"').unwrap();
        PathBuf::from(&line[start..end])
    })
}

/// A finished run of the example.
struct Run {
    status: std::process::ExitStatus,
    out: String,
}

impl Run {
    /// The `key=value` pairs of the output line starting with `prefix`.
    fn fields(&self, prefix: &str) -> BTreeMap<String, u64> {
        let line = self
            .out
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in the output:\n{}", self.out));
        line[prefix.len()..]
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                let v = v
                    .parse()
                    .unwrap_or_else(|_| panic!("{prefix}: bad value in {kv:?}", kv = (k, v)));
                (k.to_string(), v)
            })
            .collect()
    }

    fn has_line(&self, prefix: &str) -> bool {
        self.out.lines().any(|l| l.starts_with(prefix))
    }

    /// The two queue names and the journal directory from the header lines.
    fn names(&self) -> (Vec<String>, String) {
        let line = self
            .out
            .lines()
            .find_map(|l| l.trim().strip_prefix("queues: "))
            .unwrap_or_else(|| panic!("no queues line in:\n{}", self.out));
        let (queues, rest) = line.split_once(';').unwrap();
        let dir = rest.trim().strip_prefix("journals: ").unwrap();
        let dir = dir.split(';').next().unwrap().trim();
        let queues = queues.split_whitespace().map(String::from).collect();
        (queues, dir.to_string())
    }

    /// The checks every run must pass, whatever happened during it: exact accounting,
    /// nothing left in /dev/shm, no process of the run alive, no journal directory.
    fn assert_clean_and_exact(&self) {
        let out = &self.out;
        for q in ["trajectories: ", "batches: "] {
            let f = self.fields(q);
            for must_be_zero in ["lost", "dup_unflagged", "invented", "corrupt"] {
                assert_eq!(f[must_be_zero], 0, "{q}{must_be_zero} in:\n{out}");
            }
            assert!(f["sent_ok"] > 0, "nothing sent? {q} in:\n{out}");
            // Every Ok send arrived; the only messages beyond them are those a killed
            // producer sent without the time to journal them.
            assert_eq!(
                f["unique"],
                f["sent_ok"] + f["unconfirmed"],
                "{q} in:\n{out}"
            );
            // Every extra receipt is a redelivery.
            assert!(
                f["received"] - f["unique"] <= f["redelivered"],
                "{q} in:\n{out}"
            );
        }
        assert!(self.has_line("accounting: exact"), "{out}");
        assert!(self.has_line("/dev/shm: clean"), "{out}");
        let (queues, dir) = self.names();
        assert_eq!(queues.len(), 2, "{out}");
        // The example removes leftovers it finds (and fails): look again anyway.
        let shm: Vec<String> = std::fs::read_dir("/dev/shm")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for q in &queues {
            let header = format!("shmq.{q}");
            let left: Vec<&String> = shm
                .iter()
                .filter(|f| **f == header || f.starts_with(&format!("{header}.")))
                .collect();
            assert!(left.is_empty(), "left in /dev/shm: {left:?}");
        }
        assert!(
            !Path::new(&dir).exists(),
            "journal directory {dir} left behind"
        );
        // Every child was reaped: no process is left with the run's queue on its command
        // line (children get `--queues <names>`).
        let alive = processes_mentioning(&queues[0]);
        assert!(
            alive.is_empty(),
            "processes of the run still alive: {alive:?}"
        );
    }
}

/// Pids whose command line contains `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                found.push(pid);
            }
        }
    }
    found
}

/// Runs the example with `args`; `interrupt_after` sends SIGINT to it (only to it, not
/// to its children) once it printed that many progress lines.
fn run_example(args: &[&str], interrupt_after: Option<usize>) -> Run {
    let mut cmd = Command::new(example());
    cmd.args(args);
    let (status, out) = run_with_watchdog(cmd, RUN_LIMIT, |pid, out| {
        let Some(n) = interrupt_after else {
            return true;
        };
        if out.lines().filter(|l| l.starts_with('[')).count() < n {
            return false;
        }
        // SAFETY: kill(2) has no memory-safety preconditions.
        let r = unsafe { libc::kill(pid as i32, libc::SIGINT) };
        assert_eq!(r, 0, "cannot send SIGINT");
        true
    });
    eprintln!("{out}");
    Run { status, out }
}

#[test]
fn pipeline_accounts_exactly_without_chaos() {
    let _serial = serial();
    let r = run_example(&["--seconds", "2"], None);
    assert_eq!(r.status.code(), Some(0), "{}", r.out);
    assert!(r.has_line("OK"), "{}", r.out);
    r.assert_clean_and_exact();
    for q in ["trajectories: ", "batches: "] {
        let f = r.fields(q);
        // Nobody died: no redelivery, no duplicate, nothing unconfirmed.
        assert_eq!(f["redelivered"], 0, "{q}");
        assert_eq!(f["unconfirmed"], 0, "{q}");
        assert_eq!(f["received"], f["sent_ok"], "{q}");
    }
    assert!(r.out.contains(" 0 recoveries, 0 orphaned"), "{}", r.out);
}

#[test]
fn pipeline_accounts_exactly_while_children_are_killed_and_restarted() {
    let _serial = serial();
    let seed = rand::random::<u32>().to_string();
    let r = run_example(&["--seconds", "3", "--chaos", "--seed", &seed], None);
    assert_eq!(r.status.code(), Some(0), "seed {seed}: {}", r.out);
    r.assert_clean_and_exact();
    let kills = r.fields("  chaos: ");
    assert!(
        kills["kills"] >= 1,
        "seed {seed}: nothing was killed:\n{}",
        r.out
    );
}

#[test]
fn pipeline_stops_cleanly_on_sigint_with_exact_accounting() {
    let _serial = serial();
    let r = run_example(&["--seconds", "60", "--chaos"], Some(1));
    // 128 + SIGINT: interrupted, and everything checked out.
    assert_eq!(r.status.code(), Some(130), "{}", r.out);
    assert!(r.has_line("OK (interrupted)"), "{}", r.out);
    assert!(r.out.contains("stopped by a signal"), "{}", r.out);
    r.assert_clean_and_exact();
}

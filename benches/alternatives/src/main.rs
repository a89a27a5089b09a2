//! `altbench`: shmq against the alternatives a user would pick, in one run, on one machine.
//!
//! ```text
//! altbench run [--quick] [--runs N] [--sizes 8,64,1K,...] [--systems shmq,uds,...]
//!              [--topos 1-1,2-2,4-1] [--no-throughput] [--no-latency] [--no-phys]
//!              [--out results.json]
//! altbench child '<json spec>'        (internal: one process of a case)
//! ```
//!
//! Every throughput case runs producers and consumers as **separate processes** (this
//! binary re-executed with `child`), checks what arrived (count per producer, each
//! message exactly once, FIFO per producer, every byte through a word sum; see
//! `proto.rs`), and only then reports its timing. A case that fails its check is
//! reported as failed and the run exits non-zero. Runs are interleaved (run 1 of every
//! case, then run 2, …) so slow drifts of a shared machine hit every system alike.

mod physical;
mod proto;
mod solo;
mod sys {
    pub mod fd_sys;
    pub mod iox_sys;
    pub mod ipc_sys;
    pub mod shaq_sys;
    pub mod shmq_sys;
    pub mod xbeam_sys;
}

use proto::*;
use serde::Serialize;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::RawFd;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// The matrix

/// One payload size and how much to move at it.
#[derive(Clone, Copy, Debug)]
struct SizeCfg {
    size: usize,
    /// Timed messages across all producers (full mode, quick mode). From 64 KiB up, the
    /// full mode moves about 2 GB or more per case, so a fast case lasts a tenth of a second or
    /// more: with 48 messages at 16 MiB (0.8 GB, 45 ms at the fastest), each consumer's
    /// first mapping of a segment it had not seen during the warm-up was a visible part of
    /// the window, and shmq 2->2 read 0.79x iceoryx2 where 480 messages read 1.03-1.09x.
    total: (u64, u64),
    /// Ring capacity (shmq capacity, iceoryx2 subscriber buffer, shaq/crossbeam ring).
    capacity: usize,
}

const KI: usize = 1024;
const MI: usize = 1024 * 1024;
const GI: usize = 1024 * 1024 * 1024;

const SIZES: &[SizeCfg] = &[
    SizeCfg {
        size: 8,
        total: (300_000, 50_000),
        capacity: 64,
    },
    SizeCfg {
        size: 64,
        total: (300_000, 50_000),
        capacity: 64,
    },
    SizeCfg {
        size: KI,
        total: (200_000, 20_000),
        capacity: 64,
    },
    SizeCfg {
        size: 64 * KI,
        total: (30_000, 2_000),
        capacity: 64,
    },
    SizeCfg {
        size: MI,
        total: (2_000, 100),
        capacity: 16,
    },
    SizeCfg {
        size: 16 * MI,
        total: (320, 16),
        capacity: 4,
    },
    SizeCfg {
        size: 256 * MI,
        total: (32, 4),
        capacity: 2,
    },
    SizeCfg {
        size: GI,
        total: (8, 4),
        capacity: 2,
    },
];

/// (system, api, label)
const SYSTEMS: &[(&str, &str, &str)] = &[
    ("shmq", "copy", "shmq copy"),
    ("shmq", "loan", "shmq loan"),
    ("shmq", "touch", "shmq loan, payload untouched"),
    ("uds", "copy", "Unix socket"),
    ("pipe", "copy", "pipe"),
    ("ipc-channel", "copy", "ipc-channel"),
    ("iceoryx2", "copy", "iceoryx2 copy"),
    ("iceoryx2", "loan", "iceoryx2 loan"),
    ("shaq", "loan", "shaq (in place)"),
    ("crossbeam", "copy", "crossbeam copy (threads)"),
    ("crossbeam", "loan", "crossbeam in place (threads)"),
];

const LAT_SYSTEMS: &[&str] = &[
    "shmq",
    "uds",
    "pipe",
    "ipc-channel",
    "iceoryx2",
    "shaq",
    "crossbeam",
];

fn size_label(s: usize) -> String {
    if s >= GI {
        format!("{} GiB", s / GI)
    } else if s >= MI {
        format!("{} MiB", s / MI)
    } else if s >= KI {
        format!("{} KiB", s / KI)
    } else {
        format!("{s} B")
    }
}

fn parse_size(s: &str) -> usize {
    let s = s.trim();
    let (n, m) = match s.chars().last() {
        Some('K') => (&s[..s.len() - 1], KI),
        Some('M') => (&s[..s.len() - 1], MI),
        Some('G') => (&s[..s.len() - 1], GI),
        _ => (s, 1),
    };
    n.parse::<usize>().expect("size") * m
}

struct Opts {
    quick: bool,
    runs: u32,
    sizes: Vec<SizeCfg>,
    systems: Vec<String>,
    topos: Vec<(u32, u32)>,
    throughput: bool,
    latency: bool,
    phys: bool,
    out: String,
}

fn parse_opts(args: &[String]) -> Opts {
    let mut o = Opts {
        quick: false,
        runs: 0,
        sizes: SIZES.to_vec(),
        systems: vec![],
        topos: vec![(1, 1), (2, 2), (4, 1)],
        throughput: true,
        latency: true,
        phys: true,
        out: "results.json".into(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--runs" => o.runs = it.next().unwrap().parse().unwrap(),
            "--sizes" => {
                let want: Vec<usize> = it.next().unwrap().split(',').map(parse_size).collect();
                o.sizes.retain(|c| want.contains(&c.size));
            }
            "--systems" => o.systems = it.next().unwrap().split(',').map(String::from).collect(),
            "--topos" => {
                o.topos = it
                    .next()
                    .unwrap()
                    .split(',')
                    .map(|t| {
                        let (p, c) = t.split_once('-').expect("topology P-C");
                        (p.parse().unwrap(), c.parse().unwrap())
                    })
                    .collect()
            }
            "--no-throughput" => o.throughput = false,
            "--no-latency" => o.latency = false,
            "--no-phys" => o.phys = false,
            "--out" => o.out = it.next().unwrap().clone(),
            other => panic!("unknown option {other}"),
        }
    }
    if o.runs == 0 {
        o.runs = if o.quick { 1 } else { 3 };
    }
    o
}

/// `--systems` names systems (`shmq`) or one API of a system (`shmq-touch`). The
/// `touch` API (shmq's per-message cost with the payload left alone) runs only when
/// asked for by name.
fn wanted(o: &Opts, sys: &str, api: &str) -> bool {
    let full = format!("{sys}-{api}");
    if o.systems.iter().any(|s| *s == full) {
        return true;
    }
    api != "touch" && (o.systems.is_empty() || o.systems.iter().any(|s| s == sys))
}

/// Whether a system runs a case at all (and why not, for the log).
fn applicable(sys: &str, sc: &SizeCfg, (p, c): (u32, u32)) -> Result<(), &'static str> {
    match sys {
        "shaq" if !sys::shaq_sys::supports(sc.size) => {
            Err("fixed-size items: no item type above 16 MiB (a ring of capacity x size is preallocated)")
        }
        "shaq" if (p, c) != (1, 1) => Err(
            "1->1 only: with several producers/consumers on 2 cores shaq 4.0.0 stalled (lost futex wake-ups, one hang; see BENCHMARKS.md)",
        ),
        "iceoryx2" if sc.size >= GI && p * c > 2 => {
            Err("1 GiB x (buffer + borrowed + loaned) samples per publisher exceeds memory")
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// Children

static CASE: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!(
        "altb{}x{}{}",
        std::process::id(),
        CASE.fetch_add(1, Ordering::Relaxed),
        tag
    )
}

struct Kid {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
    role: String,
}

fn set_cloexec(fd: RawFd, on: bool) {
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFD);
        let fl = if on {
            fl | libc::FD_CLOEXEC
        } else {
            fl & !libc::FD_CLOEXEC
        };
        libc::fcntl(fd, libc::F_SETFD, fl);
    }
}

/// Kills every registered child if a case takes longer than its deadline.
#[derive(Clone)]
struct Watchdog {
    pids: Arc<Mutex<Vec<u32>>>,
    done: Arc<AtomicBool>,
    fired: Arc<AtomicBool>,
}

impl Watchdog {
    fn new(limit: Duration) -> Watchdog {
        let w = Watchdog {
            pids: Arc::default(),
            done: Arc::default(),
            fired: Arc::default(),
        };
        let w2 = w.clone();
        std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            while !w2.done.load(Ordering::Relaxed) {
                if t0.elapsed() > limit {
                    w2.fired.store(true, Ordering::Relaxed);
                    for &p in w2.pids.lock().unwrap().iter() {
                        // SAFETY: plain kill(2) of a child we spawned.
                        unsafe { libc::kill(p as i32, libc::SIGKILL) };
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        w
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

fn spawn(spec: &Spec, keep: &[RawFd], wd: &Watchdog) -> Kid {
    for &fd in keep {
        set_cloexec(fd, false);
    }
    let exe = std::env::current_exe().unwrap();
    // ALTBENCH_WRAP="valgrind --tool=callgrind" runs every child under a tool (profiling).
    let wrap = std::env::var("ALTBENCH_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut cmd = match words.next() {
        Some(tool) => {
            let mut c = Command::new(tool);
            c.args(words).arg(&exe);
            c
        }
        None => Command::new(&exe),
    };
    cmd.arg("child")
        .arg(serde_json::to_string(spec).unwrap())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().expect("spawn child");
    for &fd in keep {
        set_cloexec(fd, true);
    }
    wd.pids.lock().unwrap().push(child.id());
    Kid {
        stdin: child.stdin.take(),
        out: BufReader::new(child.stdout.take().unwrap()),
        child,
        role: spec.role.clone(),
    }
}

impl Kid {
    /// Reads lines until `READY`, handing any other line to `other`.
    fn until_ready(&mut self, mut other: impl FnMut(&str)) -> Result<(), String> {
        loop {
            let mut l = String::new();
            if self.out.read_line(&mut l).map_err(|e| e.to_string())? == 0 {
                return Err(format!("{} child ended before READY", self.role));
            }
            let l = l.trim();
            if l == "READY" {
                return Ok(());
            }
            other(l);
        }
    }
    fn tell(&mut self, s: &str) {
        if let Some(i) = self.stdin.as_mut() {
            let _ = writeln!(i, "{s}");
            let _ = i.flush();
        }
    }
    fn result(&mut self) -> Result<Report, String> {
        loop {
            let mut l = String::new();
            if self.out.read_line(&mut l).map_err(|e| e.to_string())? == 0 {
                return Err(format!("{} child ended without a result", self.role));
            }
            if let Some(j) = l.trim().strip_prefix("RESULT ") {
                return serde_json::from_str(j).map_err(|e| e.to_string());
            }
        }
    }
    fn finish(mut self) {
        self.stdin.take(); // EOF: the child drops its handles and exits
        let _ = self.child.wait();
    }
}

fn child_main(json: &str) {
    let spec: Spec = serde_json::from_str(json).expect("child spec");
    let mut ctl = Ctl::new();
    use sys::*;
    let r = match (spec.sys.as_str(), spec.role.as_str()) {
        ("shmq", "prod") => shmq_sys::producer(&spec, &mut ctl),
        ("shmq", "cons") => shmq_sys::consumer(&spec, &mut ctl),
        ("shmq", _) => shmq_sys::latency(&spec, &mut ctl),
        ("uds" | "pipe", "prod") => fd_sys::producer(&spec, &mut ctl),
        ("uds" | "pipe", "cons") => fd_sys::consumer(&spec, &mut ctl),
        ("uds" | "pipe", _) => fd_sys::latency(&spec, &mut ctl),
        ("ipc-channel", "prod") => ipc_sys::producer(&spec, &mut ctl),
        ("ipc-channel", "cons") => ipc_sys::consumer(&spec, &mut ctl),
        ("ipc-channel", _) => ipc_sys::latency(&spec, &mut ctl),
        ("iceoryx2", "prod") => iox_sys::producer(&spec, &mut ctl),
        ("iceoryx2", "cons") => iox_sys::consumer(&spec, &mut ctl),
        ("iceoryx2", _) => iox_sys::latency(&spec, &mut ctl),
        ("shaq", "prod") => shaq_sys::producer(&spec, &mut ctl),
        ("shaq", "cons") => shaq_sys::consumer(&spec, &mut ctl),
        ("shaq", _) => shaq_sys::latency(&spec, &mut ctl),
        (s, r) => panic!("no child role {s}/{r}"),
    };
    ctl.report_then_wait_exit(&r);
}

// ---------------------------------------------------------------------------------------
// Throughput

#[derive(Serialize, Debug, Clone)]
struct Tput {
    sys: String,
    api: String,
    label: String,
    size: usize,
    producers: u32,
    consumers: u32,
    run: u32,
    capacity: usize,
    warm_per_producer: u64,
    timed_msgs: u64,
    secs: f64,
    msgs_per_s: f64,
    gbps: f64,
    ns_per_msg: f64,
    ok: bool,
    errors: Vec<String>,
    /// Bytes allocated in /dev/shm at the end of the case (queue still open), minus before.
    shm_bytes: i64,
    /// Per child: (role, idx, VmRSS at start, VmRSS at end, RssShmem at end).
    rss: Vec<(String, u32, u64, u64, u64)>,
}

fn warm_per_producer(sys: &str, sc: &SizeCfg, p: u32, c: u32, n: u64) -> u64 {
    let pooled = matches!(sys, "shmq" | "iceoryx2" | "shaq" | "crossbeam");
    let w = if sc.size >= 16 * MI {
        if pooled {
            // Touch every buffer of the pool once: ring + one loan per producer + one
            // held message per consumer + 2 spare (see shmq_sys::builder).
            (sc.capacity as u64 + p as u64 + c as u64 + 2).div_ceil(p as u64)
        } else {
            1
        }
    } else {
        // Small and medium sizes: 10% of the timed messages, and enough to cycle
        // through shmq's default slot count (2 * capacity + 16) twice.
        (n / 10).max((2 * (2 * sc.capacity as u64 + 16)).div_ceil(p as u64))
    };
    w.max(1)
}

fn verify(reports: &[Report], p: u32, per_producer: u64) -> Vec<String> {
    let mut errs = vec![];
    let mut count = vec![0u64; p as usize];
    let mut seq_sum = vec![0u64; p as usize];
    let mut compared = 0;
    for r in reports {
        if let Some(e) = &r.error {
            errs.push(format!("{} {}: {e}", r.role, r.idx));
        }
        if r.role == "prod" && r.sent != per_producer {
            errs.push(format!(
                "producer {} sent {} of {per_producer}",
                r.idx, r.sent
            ));
        }
        if let Some(s) = &r.seen {
            for i in 0..p as usize {
                count[i] += s.count.get(i).copied().unwrap_or(0);
                seq_sum[i] = seq_sum[i].wrapping_add(s.seq_sum.get(i).copied().unwrap_or(0));
            }
            compared += s.full_compared;
            for (what, n) in [
                ("wrong contents", s.bad_sum),
                ("out of order", s.bad_order),
                ("unknown producer", s.bad_stamp),
                ("wrong length", s.bad_len),
            ] {
                if n > 0 {
                    errs.push(format!("consumer {}: {n} messages {what}", r.idx));
                }
            }
        }
    }
    for i in 0..p as usize {
        if count[i] != per_producer {
            errs.push(format!(
                "producer {i}: {} of {per_producer} messages arrived",
                count[i]
            ));
        }
        let want = (per_producer as u128 * (per_producer as u128).saturating_sub(1) / 2) as u64;
        if seq_sum[i] != want {
            errs.push(format!(
                "producer {i}: sequence sum {} != {want} (duplicates or losses)",
                seq_sum[i]
            ));
        }
    }
    if compared < p as u64 {
        errs.push(format!(
            "only {compared} first messages compared word by word"
        ));
    }
    errs
}

/// A file (a shaq queue) removed however the case ends.
struct RemoveOnDrop(String);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn close_fd(fd: RawFd) {
    // SAFETY: closing a descriptor this process owns and no longer uses.
    unsafe { libc::close(fd) };
}

fn throughput_case(
    sys: &str,
    api: &str,
    label: &str,
    sc: &SizeCfg,
    topo: (u32, u32),
    run: u32,
    quick: bool,
) -> Tput {
    let (p, c) = topo;
    let mut total = if quick { sc.total.1 } else { sc.total.0 };
    if api == "touch" {
        // The payload is left alone, so a message costs about a microsecond at any size:
        // enough messages for the window to be milliseconds, not the few hundred the
        // big-payload copy cases can afford (48 at 16 MiB, as this case once ran, timed
        // mostly the consumer's first mapping of each segment).
        total = total.max(if quick { 5_000 } else { 20_000 });
    }
    let n = (total / p as u64).max(1);
    let mut warm = warm_per_producer(sys, sc, p, c, n);
    if api == "touch" {
        // Cycle through every slot twice (both sides have mapped every segment), and
        // 10% of the timed messages.
        warm = warm.max(2 * (2 * sc.capacity as u64 + 16)).max(n / 10);
    }
    let base = Spec {
        sys: sys.into(),
        mode: api.into(),
        producers: p,
        consumers: c,
        size: sc.size,
        warm,
        n,
        capacity: sc.capacity,
        ..Spec::default()
    };
    // Only this case's objects: other processes on the machine use /dev/shm too.
    let prefixes: Vec<String> = match sys {
        "iceoryx2" => vec!["iox2_".into()],
        "shmq" => vec![format!("shmq.altb{}x", std::process::id())],
        "shaq" => vec![format!("altb{}x", std::process::id())],
        _ => vec![],
    };
    let (shm0, _) = dev_shm_usage(&prefixes);
    let mut shm_end = shm0;
    let mut errors = vec![];
    let reports: Vec<Report> = if sys == "crossbeam" {
        sys::xbeam_sys::throughput(&base)
    } else {
        match run_children(&base, &prefixes, &mut shm_end) {
            Ok(r) => r,
            Err(e) => {
                errors.push(e);
                vec![]
            }
        }
    };
    if errors.is_empty() {
        errors = verify(&reports, p, warm + n);
    }
    let t0 = reports
        .iter()
        .filter(|r| r.role == "prod")
        .map(|r| r.t_start)
        .min()
        .unwrap_or(0);
    let t1 = reports
        .iter()
        .filter(|r| r.role == "cons")
        .map(|r| r.t_end)
        .max()
        .unwrap_or(0);
    let secs = t1.saturating_sub(t0) as f64 / 1e9;
    let timed = n * p as u64;
    let ok = errors.is_empty() && secs > 0.0;
    Tput {
        sys: sys.into(),
        api: api.into(),
        label: label.into(),
        size: sc.size,
        producers: p,
        consumers: c,
        run,
        capacity: sc.capacity,
        warm_per_producer: warm,
        timed_msgs: timed,
        secs,
        msgs_per_s: if ok { timed as f64 / secs } else { 0.0 },
        gbps: if ok {
            (timed as f64 * sc.size as f64) / secs / 1e9
        } else {
            0.0
        },
        ns_per_msg: if ok { secs * 1e9 / timed as f64 } else { 0.0 },
        ok,
        errors,
        shm_bytes: shm_end as i64 - shm0 as i64,
        rss: reports
            .iter()
            .map(|r| (r.role.clone(), r.idx, r.rss_start, r.rss_end, r.shmem_end))
            .collect(),
    }
}

/// Sets up the transport, runs consumers and producers as processes, collects reports.
fn run_children(
    base: &Spec,
    prefixes: &[String],
    shm_end: &mut u64,
) -> Result<Vec<Report>, String> {
    let (p, c) = (base.producers, base.consumers);
    let sys = base.sys.as_str();
    let limit = Duration::from_secs(if base.size >= 256 * MI { 300 } else { 180 });
    let wd = Watchdog::new(limit);
    let mut spec = base.clone();
    // Transport state the orchestrator holds until every child is attached.
    let mut shmq_keep = None;
    let mut shaq_end: Option<Box<dyn FnOnce(u32)>> = None;
    let mut shaq_path = None;
    let mut prod_fds: Vec<RawFd> = vec![];
    let mut cons_fds: Vec<Vec<RawFd>> = vec![vec![]; c as usize];
    let mut ipc_tx = None;
    let mut ipc_rx: Vec<Option<ipc_channel::ipc::IpcBytesReceiver>> = vec![];
    let mut ipc_txs: Vec<ipc_channel::ipc::IpcBytesSender> = vec![];
    match sys {
        "shmq" => {
            let name = unique("q");
            let b = sys::shmq_sys::builder(base.size, base.capacity, p, c).name(&name);
            shmq_keep = Some(b.create().map_err(|e| format!("create: {e}"))?);
            spec.names = vec![name];
        }
        "shaq" => {
            let path = format!("/dev/shm/{}", unique("shaq"));
            shaq_end = Some(sys::shaq_sys::create_for(base.size, &path, base.capacity));
            spec.names = vec![path.clone()];
            shaq_path = Some(RemoveOnDrop(path));
        }
        "iceoryx2" => spec.names = (0..c).map(|j| unique(&format!("svc{j}"))).collect(),
        "uds" | "pipe" => {
            for i in 0..p {
                let mut fds = [0i32; 2];
                // SAFETY: `fds` has room for the two descriptors either call returns.
                let rc = unsafe {
                    if sys == "uds" {
                        libc::socketpair(
                            libc::AF_UNIX,
                            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                            0,
                            fds.as_mut_ptr(),
                        )
                    } else {
                        libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC)
                    }
                };
                if rc != 0 {
                    return Err(format!("{sys}: {}", std::io::Error::last_os_error()));
                }
                // pipe: [read, write]; socketpair: either way round, use [0] to read.
                prod_fds.push(fds[1]);
                cons_fds[(i % c) as usize].push(fds[0]);
            }
        }
        "ipc-channel" => {
            for _ in 0..c {
                let (tx, rx) = ipc_channel::ipc::bytes_channel().map_err(|e| e.to_string())?;
                ipc_txs.push(tx);
                ipc_rx.push(Some(rx));
            }
            ipc_tx = Some(());
        }
        _ => return Err(format!("unknown system {sys}")),
    }
    let give_ipc = |line: &str, ends: sys::ipc_sys::Ends| {
        if let Some(name) = line.strip_prefix("IPC ") {
            let s = ipc_channel::ipc::IpcSender::<sys::ipc_sys::Ends>::connect(name.to_string())
                .expect("connect to child");
            s.send(ends).expect("hand endpoints to child");
        }
    };
    let mut kids_c = vec![];
    for j in 0..c {
        let mut s = spec.clone();
        s.role = "cons".into();
        s.idx = j;
        s.fds = cons_fds[j as usize].clone();
        let mut k = spawn(&s, &s.fds, &wd);
        let mut rx = ipc_rx.get_mut(j as usize).and_then(|r| r.take());
        k.until_ready(|l| {
            if let Some(rx) = rx.take() {
                give_ipc(
                    l,
                    sys::ipc_sys::Ends {
                        tx: None,
                        rx: Some(rx),
                    },
                );
            }
        })?;
        kids_c.push(k);
    }
    let mut kids_p = vec![];
    for i in 0..p {
        let mut s = spec.clone();
        s.role = "prod".into();
        s.idx = i;
        s.fds = prod_fds
            .get(i as usize)
            .map(|&f| vec![f])
            .unwrap_or_default();
        let mut k = spawn(&s, &s.fds, &wd);
        let mut tx = ipc_tx.map(|_| ipc_txs[(i % c) as usize].clone());
        k.until_ready(|l| {
            if let Some(tx) = tx.take() {
                give_ipc(
                    l,
                    sys::ipc_sys::Ends {
                        tx: Some(tx),
                        rx: None,
                    },
                );
            }
        })?;
        kids_p.push(k);
    }
    // Every child is attached: let go of the orchestrator's ends (so end of stream and
    // disconnection depend on the producers alone).
    drop(shmq_keep.take());
    ipc_txs.clear();
    for fd in prod_fds.iter().chain(cons_fds.iter().flatten()) {
        close_fd(*fd);
    }
    for k in kids_c.iter_mut().chain(kids_p.iter_mut()) {
        k.tell("GO");
    }
    let mut reports = vec![];
    for k in kids_p.iter_mut() {
        reports.push(k.result()?);
    }
    if let Some(end) = shaq_end.take() {
        end(c);
    }
    for k in kids_p {
        k.finish();
    }
    for k in kids_c.iter_mut() {
        reports.push(k.result()?);
    }
    *shm_end = dev_shm_usage(prefixes).0;
    for k in kids_c {
        k.finish();
    }
    drop(shaq_path);
    if wd.fired.load(Ordering::Relaxed) {
        return Err("watchdog: case took too long, children killed".into());
    }
    Ok(reports)
}

// ---------------------------------------------------------------------------------------
// Latency

#[derive(Serialize, Debug, Clone)]
struct Lat {
    sys: String,
    mode: String,
    size: usize,
    run: u32,
    samples: u64,
    gap_us: u64,
    rtt: Option<Pct>,
    /// Ping → pong, by the CLOCK_MONOTONIC timestamp in the payload.
    oneway: Option<Pct>,
    /// Pong → ping, same method.
    oneway_back: Option<Pct>,
    ok: bool,
    errors: Vec<String>,
}

fn latency_case(sys: &str, mode: &str, run: u32, quick: bool) -> Lat {
    let spin = mode == "spin";
    let n = match (spin, quick) {
        (true, false) => 50_000,
        (true, true) => 10_000,
        (false, false) => 5_000,
        (false, true) => 1_000,
    };
    let spec = Spec {
        sys: sys.into(),
        mode: mode.into(),
        size: 64,
        warm: n / 10,
        n,
        capacity: 64,
        gap_us: if spin { 0 } else { 100 },
        ..Spec::default()
    };
    let (ping, pong) = if sys == "crossbeam" {
        let (a, b) = sys::xbeam_sys::latency(&spec);
        (Ok(a), Ok(b))
    } else {
        match latency_children(&spec) {
            Ok((a, b)) => (Ok(a), Ok(b)),
            Err(e) => (Err(e.clone()), Err(e)),
        }
    };
    let mut errors = vec![];
    for r in [&ping, &pong] {
        match r {
            Err(e) => errors.push(e.clone()),
            Ok(l) if l.bad > 0 => errors.push(format!("{} replies wrong", l.bad)),
            _ => {}
        }
    }
    let ping = ping.ok();
    let pong = pong.ok();
    errors.dedup();
    Lat {
        sys: sys.into(),
        mode: mode.into(),
        size: spec.size,
        run,
        samples: n,
        gap_us: spec.gap_us,
        rtt: ping.as_ref().and_then(|l| l.rtt.clone()),
        oneway: pong.as_ref().and_then(|l| l.oneway.clone()),
        oneway_back: ping.as_ref().and_then(|l| l.oneway.clone()),
        ok: errors.is_empty(),
        errors,
    }
}

fn latency_children(base: &Spec) -> Result<(LatReport, LatReport), String> {
    let wd = Watchdog::new(Duration::from_secs(120));
    let mut spec = base.clone();
    let mut fds: [Vec<RawFd>; 2] = [vec![], vec![]]; // [ping, pong]
    let mut to_close = vec![];
    let mut shmq_keep = vec![];
    let mut shaq_paths = vec![];
    let mut ipc: [Option<sys::ipc_sys::Ends>; 2] = [None, None];
    match base.sys.as_str() {
        "shmq" => {
            for _ in 0..2 {
                let name = unique("lat");
                shmq_keep.push(
                    shmq::Builder::new()
                        .capacity(base.capacity)
                        .name(&name)
                        .create()
                        .map_err(|e| e.to_string())?,
                );
                spec.names.push(name);
            }
        }
        "iceoryx2" => spec.names = vec![unique("lat0"), unique("lat1")],
        "shaq" => {
            for _ in 0..2 {
                let path = format!("/dev/shm/{}", unique("shaqlat"));
                drop(sys::shaq_sys::create_for(base.size, &path, base.capacity));
                spec.names.push(path.clone());
                shaq_paths.push(RemoveOnDrop(path));
            }
        }
        "uds" => {
            let mut s = [0i32; 2];
            // SAFETY: room for two descriptors.
            if unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                    0,
                    s.as_mut_ptr(),
                )
            } != 0
            {
                return Err(std::io::Error::last_os_error().to_string());
            }
            fds = [vec![s[0], s[0]], vec![s[1], s[1]]];
            to_close = s.to_vec();
        }
        "pipe" => {
            let (mut a, mut b) = ([0i32; 2], [0i32; 2]);
            // SAFETY: room for two descriptors each.
            unsafe {
                libc::pipe2(a.as_mut_ptr(), libc::O_CLOEXEC);
                libc::pipe2(b.as_mut_ptr(), libc::O_CLOEXEC);
            }
            // a: ping → pong; b: pong → ping. fds = [read, write].
            fds = [vec![b[0], a[1]], vec![a[0], b[1]]];
            to_close = vec![a[0], a[1], b[0], b[1]];
        }
        "ipc-channel" => {
            let (t1, r1) = ipc_channel::ipc::bytes_channel().map_err(|e| e.to_string())?;
            let (t2, r2) = ipc_channel::ipc::bytes_channel().map_err(|e| e.to_string())?;
            ipc = [
                Some(sys::ipc_sys::Ends {
                    tx: Some(t1),
                    rx: Some(r2),
                }),
                Some(sys::ipc_sys::Ends {
                    tx: Some(t2),
                    rx: Some(r1),
                }),
            ];
        }
        s => return Err(format!("unknown system {s}")),
    }
    let mut kids = vec![];
    for (i, role) in [(1usize, "pong"), (0usize, "ping")] {
        let mut s = spec.clone();
        s.role = role.into();
        s.fds = fds[i].clone();
        let mut k = spawn(&s, &s.fds, &wd);
        let mut ends = ipc[i].take();
        k.until_ready(|l| {
            if let (Some(name), Some(e)) = (l.strip_prefix("IPC "), ends.take()) {
                ipc_channel::ipc::IpcSender::<sys::ipc_sys::Ends>::connect(name.to_string())
                    .expect("connect")
                    .send(e)
                    .expect("send ends");
            }
        })?;
        kids.push(k);
    }
    shmq_keep.clear();
    for fd in to_close {
        close_fd(fd);
    }
    for k in kids.iter_mut() {
        k.tell("GO");
    }
    let pong = kids[0].result()?;
    let ping = kids[1].result()?;
    for k in kids {
        k.finish();
    }
    drop(shaq_paths);
    if wd.fired.load(Ordering::Relaxed) {
        return Err("watchdog fired".into());
    }
    Ok((
        ping.lat.ok_or("no ping result")?,
        pong.lat.ok_or("no pong result")?,
    ))
}

// ---------------------------------------------------------------------------------------
// The run

#[derive(Serialize)]
struct Output {
    machine: serde_json::Value,
    command: String,
    quick: bool,
    runs: u32,
    started_unix: u64,
    duration_s: f64,
    skipped: Vec<String>,
    throughput: Vec<Tput>,
    latency: Vec<Lat>,
    physical: Vec<physical::Phys>,
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> serde_json::Value {
    serde_json::json!({
        "cpu": sh("lscpu | sed -n 's/^Model name: *//p'"),
        "cpus": sh("nproc"),
        "lscpu": sh("lscpu | grep -E '^(Architecture|CPU\\(s\\)|Model name|Thread|Core|Socket|L1d|L2|L3|Hypervisor|NUMA node\\(s\\))'"),
        "kernel": sh("uname -srm"),
        "mem": sh("free -h | sed -n 2p"),
        "dev_shm": sh("df -h /dev/shm | sed -n 2p"),
        "rustc": sh("rustc --version"),
        "shmq_commit": sh("git -C \"$(dirname \"$0\")\" rev-parse --short HEAD 2>/dev/null || git rev-parse --short HEAD"),
    })
}

/// Names in /dev/shm that iceoryx2 creates on its own (its global management segment,
/// `iox2_*`), not tied to a service we remove.
fn iox2_objects() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("iox2_"))
                .collect()
        })
        .unwrap_or_default()
}

/// On drop, removes the `iox2_*` objects that appeared in /dev/shm since `new` (after
/// every iceoryx2 process of the run has ended), leaving other users' alone.
struct Iox2Cleanup(std::collections::BTreeSet<String>);
impl Drop for Iox2Cleanup {
    fn drop(&mut self) {
        for n in iox2_objects().difference(&self.0) {
            let _ = std::fs::remove_file(format!("/dev/shm/{n}"));
        }
    }
}

fn run(args: &[String]) {
    let o = parse_opts(args);
    let cleanup = Iox2Cleanup(iox2_objects());
    let t_begin = now_ns();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut out = Output {
        machine: machine(),
        command: std::iter::once("altbench run".to_string())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" "),
        quick: o.quick,
        runs: o.runs,
        started_unix,
        duration_s: 0.0,
        skipped: vec![],
        throughput: vec![],
        latency: vec![],
        physical: vec![],
    };
    eprintln!("machine: {}", out.machine["cpu"]);
    let mut failed = 0;
    // One untimed case first, its result thrown away: the first case of an invocation ran
    // on a machine still settling from whatever came before (at 256 MiB, shmq copy, the
    // first case, read 3.8-4.1 GB/s in two full runs and 6.4-7.7 GB/s when run alone).
    if o.throughput {
        let first = o.sizes.iter().find_map(|sc| {
            let topo = *o.topos.first()?;
            SYSTEMS
                .iter()
                .find(|&&(sys, api, _)| wanted(&o, sys, api) && applicable(sys, sc, topo).is_ok())
                .map(|&(sys, api, label)| (sys, api, label, sc, topo))
        });
        if let Some((sys, api, label, sc, topo)) = first {
            let t = throughput_case(sys, api, label, sc, topo, 0, o.quick);
            eprintln!(
                "[settle] {} {}->{} {label}: {:.3} GB/s (not recorded)",
                size_label(sc.size),
                topo.0,
                topo.1,
                t.gbps
            );
        }
    }
    for run in 0..o.runs {
        if o.phys {
            for sc in &o.sizes {
                let budget = if o.quick { 50_000_000 } else { 200_000_000 };
                let ph = physical::measure(sc.size, run, budget);
                eprintln!(
                    "[run {run}] physical {:>8}: memcpy {:.2} GB/s, fill {:.0} ns, sum {:.0} ns",
                    size_label(sc.size),
                    ph.memcpy_gbps,
                    ph.fill_ns,
                    ph.sum_ns
                );
                out.physical.push(ph);
            }
        }
        if o.throughput {
            for sc in &o.sizes {
                for &topo in &o.topos {
                    for &(sys, api, label) in SYSTEMS {
                        if !wanted(&o, sys, api) {
                            continue;
                        }
                        if let Err(why) = applicable(sys, sc, topo) {
                            let s = format!(
                                "{label} {} {}->{}: {why}",
                                size_label(sc.size),
                                topo.0,
                                topo.1
                            );
                            if run == 0 {
                                eprintln!("skip {s}");
                                out.skipped.push(s);
                            }
                            continue;
                        }
                        let t = throughput_case(sys, api, label, sc, topo, run, o.quick);
                        eprintln!(
                            "[run {run}] {:>8} {}->{} {:<30} {:>12.0} msg/s {:>8.3} GB/s {}",
                            size_label(sc.size),
                            topo.0,
                            topo.1,
                            label,
                            t.msgs_per_s,
                            t.gbps,
                            if t.ok {
                                "ok".to_string()
                            } else {
                                format!("FAILED {:?}", t.errors)
                            }
                        );
                        if !t.ok {
                            failed += 1;
                        }
                        out.throughput.push(t);
                    }
                }
            }
        }
        if o.latency {
            for mode in ["spin", "sleep"] {
                for &sys in LAT_SYSTEMS {
                    if !wanted(&o, sys, "lat") {
                        continue;
                    }
                    if mode == "sleep" && matches!(sys, "iceoryx2" | "crossbeam") {
                        if run == 0 {
                            let s = format!("{sys} latency asleep: not measured (iceoryx2 needs a separate event service to block; crossbeam has no blocking pop)");
                            eprintln!("skip {s}");
                            out.skipped.push(s);
                        }
                        continue;
                    }
                    let l = latency_case(sys, mode, run, o.quick);
                    let f = |p: &Option<Pct>| {
                        p.as_ref()
                            .map(|p| format!("{:.0}/{:.0}/{:.0}", p.p50, p.p99, p.p999))
                            .unwrap_or("-".into())
                    };
                    eprintln!(
                        "[run {run}] latency {sys:<12} {mode:<5} rtt {} one-way {} ns {}",
                        f(&l.rtt),
                        f(&l.oneway),
                        if l.ok {
                            "ok".to_string()
                        } else {
                            format!("FAILED {:?}", l.errors)
                        }
                    );
                    if !l.ok {
                        failed += 1;
                    }
                    out.latency.push(l);
                }
            }
        }
        // Written after every run, so an interrupted invocation keeps its finished runs.
        out.runs = run + 1;
        out.duration_s = (now_ns() - t_begin) as f64 / 1e9;
        std::fs::write(&o.out, serde_json::to_string_pretty(&out).unwrap()).expect("write results");
    }
    eprintln!(
        "wrote {} ({:.0} s, {failed} failed cases)",
        o.out, out.duration_s
    );
    drop(cleanup); // exit() below skips destructors
    if failed > 0 {
        std::process::exit(1);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("child") => child_main(&args[2]),
        Some("run") => run(&args[2..]),
        Some("solo") => solo::main(&args[2..]),
        _ => {
            eprintln!("usage: altbench run [--quick] [--runs N] [--sizes 8,64,1K,64K,1M,16M,256M,1G] [--systems shmq,uds,pipe,ipc-channel,iceoryx2,shaq,crossbeam] [--topos 1-1,2-2,4-1] [--no-throughput] [--no-latency] [--no-phys] [--out FILE]");
            std::process::exit(2);
        }
    }
}

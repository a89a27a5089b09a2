//! The receiving half of a two-terminal demo; start it first.
//!
//! ```sh
//! cargo run --release --example consumer -- NAME      # terminal 1: creates (or opens) NAME
//! cargo run --release --example producer -- NAME      # terminal 2: sends into it
//! ```
//!
//! Creates the queue `NAME` (or attaches to it if it exists), then prints every second how
//! many messages and bytes arrived and at what rate, until Ctrl-C or until the producers
//! are gone (the queue is empty and no sender is attached: `RecvError::Disconnected`).
//! Several consumers may share one queue: each message goes to exactly one of them.
//!
//! Messages written by `examples/producer.rs` carry a 16-byte header
//! (`magic: u32, pid: u32, seq: u64`, little-endian) and are filled with the byte
//! `seq as u8`; the consumer checks the header and the last byte of each, and counts the
//! messages that do not match (any other sender's messages are counted as foreign).
//!
//! Options: `--capacity N` (default 64) and `--max-size BYTES` (default 1G) apply only
//! when this consumer creates the queue.

use shmq::{ErrorKind, RecvTimeoutError};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The producer example's header magic (`"shmq"` as a little-endian `u32`).
const MAGIC: u32 = u32::from_le_bytes(*b"shmq");

const USAGE: &str = "usage: consumer NAME [--capacity N] [--max-size BYTES]

Creates (or opens) the shmq queue NAME and prints what arrives, once a second, until
Ctrl-C or until the producers are gone. Then run in another terminal:
    cargo run --release --example producer -- NAME

  --capacity N        messages the queue holds (default 64; only when creating it)
  --max-size BYTES    largest message, e.g. 4096, 64K, 1M, 1G (default 1G; only when creating)";

struct Args {
    name: String,
    capacity: usize,
    max_size: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut name = None;
    let mut capacity = 64;
    let mut max_size = 1 << 30;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().ok_or(format!("{flag} needs a value"));
        match a.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--capacity" => {
                let v = value("--capacity")?;
                capacity = v
                    .parse()
                    .map_err(|_| format!("--capacity: {v:?} is not a number"))?;
            }
            "--max-size" => max_size = parse_bytes("--max-size", &value("--max-size")?)?,
            s if s.starts_with('-') => return Err(format!("unknown option {s:?}")),
            s if name.is_none() => name = Some(s.to_string()),
            s => return Err(format!("unexpected argument {s:?}")),
        }
    }
    let name = name.ok_or("missing the queue NAME")?;
    Ok(Args {
        name,
        capacity,
        max_size,
    })
}

/// `4096`, `64K`, `1M`, `1G` (powers of 1024).
fn parse_bytes(flag: &str, s: &str) -> Result<u64, String> {
    let (digits, shift) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 20),
        Some(b'g' | b'G') => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or(format!(
            "{flag}: {s:?} is not a byte count (e.g. 4096, 64K, 1M)"
        ))
}

#[derive(Default)]
struct Totals {
    msgs: u64,
    bytes: u64,
    bad: u64,
    foreign: u64,
    /// When the first message arrived, after `start`. Rates count from there, not from the
    /// wait for a producer.
    first: Option<Duration>,
}

impl Totals {
    fn summary(&self, start: Instant) -> String {
        let first = self.first.unwrap_or_default();
        let secs = start.elapsed().saturating_sub(first).as_secs_f64();
        let (m, b) = (self.msgs, self.bytes);
        let mut s = format!(
            "received {m} messages, {} in {secs:.1} s ({:.0} msgs/s, {}/s)",
            human(b as f64),
            m as f64 / secs,
            human(b as f64 / secs)
        );
        let (bad, foreign) = (self.bad, self.foreign);
        if bad > 0 {
            s += &format!("; {bad} CORRUPT");
        }
        if foreign > 0 {
            s += &format!("; {foreign} not from the producer example (unchecked)");
        }
        s
    }
}

/// Ctrl-C (SIGINT) and SIGTERM set the returned flag; the receive loop (which wakes at
/// least once a second) checks it, prints the totals and leaves the ordinary way, dropping
/// the receiver on the thread that uses it (and with it the queue, if nobody else uses
/// it). A second Ctrl-C kills the process outright.
///
/// Not `shmq::shutdown::exit_on_signals`: it releases the handles from its own thread
/// while this one may still be receiving with them.
fn stop_on_signals() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // This order: the first signal sets the flag, the second finds it set and dies.
        let r = signal_hook::flag::register_conditional_default(sig, stop.clone())
            .and_then(|_| signal_hook::flag::register(sig, stop.clone()));
        if let Err(e) = r {
            eprintln!("warning: cannot handle signal {sig}: {e}");
        }
    }
    stop
}

fn human(bytes: f64) -> String {
    match bytes {
        b if b >= 1e9 => format!("{:.2} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        b => format!("{b:.0} B"),
    }
}

/// Checks a message written by the producer example. `None`: not one of its messages.
fn check(m: &[u8]) -> Option<bool> {
    if m.len() < 16 || u32::from_le_bytes(m[0..4].try_into().unwrap()) != MAGIC {
        return None;
    }
    let seq = u64::from_le_bytes(m[8..16].try_into().unwrap());
    Some(m.len() == 16 || m[m.len() - 1] == seq as u8)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}\n");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let name = args.name.as_str();

    let created = shmq::Builder::new()
        .name(name)
        .capacity(args.capacity)
        .max_message_size(args.max_size)
        .create();
    let rx = match created {
        Ok((tx, rx)) => {
            // Our own sender would keep the queue "connected" forever: let it go.
            drop(tx);
            eprintln!(
                "created queue {name:?} (/dev/shm/shmq.{name}, capacity {}, messages up to {})",
                args.capacity,
                human(args.max_size as f64)
            );
            rx
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => match shmq::Receiver::open(name) {
            Ok(rx) => {
                eprintln!(
                    "opened existing queue {name:?} (capacity {})",
                    rx.capacity()
                );
                rx
            }
            Err(e) => return fail(name, &e),
        },
        Err(e) => return fail(name, &e),
    };

    let mut totals = Totals::default();
    let stop = stop_on_signals();
    let start = Instant::now();

    let tick = Duration::from_secs(1);
    let mut next_tick = start + tick;
    let (mut last_msgs, mut last_bytes, mut last_t) = (0, 0, start);
    let mut producer_seen = false;
    let mut said_waiting = false;
    loop {
        if stop.load(Relaxed) {
            eprintln!("\ninterrupted: {}", totals.summary(start));
            break;
        }
        let now = Instant::now();
        if now >= next_tick {
            let (m, b) = (totals.msgs, totals.bytes);
            let dt = now.duration_since(last_t).as_secs_f64();
            if producer_seen {
                println!(
                    "[{:6.1} s] {m:>10} msgs {:>10}  | {:>9.0} msgs/s {:>10}/s",
                    now.duration_since(start).as_secs_f64(),
                    human(b as f64),
                    (m - last_msgs) as f64 / dt,
                    human((b - last_bytes) as f64 / dt),
                );
            }
            (last_msgs, last_bytes, last_t) = (m, b, now);
            while next_tick <= now {
                next_tick += tick;
            }
        }
        match rx.recv_timeout(next_tick.saturating_duration_since(now)) {
            Ok(msg) => {
                totals.first.get_or_insert_with(|| start.elapsed());
                producer_seen = true;
                totals.msgs += 1;
                totals.bytes += msg.len() as u64;
                match check(&msg) {
                    Some(true) => {}
                    Some(false) => totals.bad += 1,
                    None => totals.foreign += 1,
                }
                // Dropping `msg` here is the ack: its slot is free for the producer again.
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) if !producer_seen => {
                // No sender has attached yet: `Disconnected` only means "nobody yet".
                if !said_waiting {
                    eprintln!(
                        "waiting for a producer; in another terminal run:\n    \
                         cargo run --release --example producer -- {name}"
                    );
                    said_waiting = true;
                }
                producer_seen = shmq::info::inspect(name)
                    .map(|i| i.alive("sender") > 0)
                    .unwrap_or(false);
                if !producer_seen {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                eprintln!("the producers are gone: {}", totals.summary(start));
                break;
            }
            Err(e) => {
                eprintln!("error: receiving from {name:?}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if totals.bad > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn fail(name: &str, e: &shmq::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::InvalidName => eprintln!(
            "error: {name:?} is not a valid queue name (1 to 200 of A-Z a-z 0-9 _ -): {e}"
        ),
        ErrorKind::InvalidArgument => eprintln!("error: bad queue option: {e}"),
        ErrorKind::NotAQueue | ErrorKind::VersionMismatch | ErrorKind::Corrupt => eprintln!(
            "error: /dev/shm/shmq.{name} exists but is not a queue this program can use: {e}\n\
             (if nothing uses it, remove it with `cargo run --bin shmq -- gc --force` or pick \
             another name)"
        ),
        _ => eprintln!("error: cannot create or open queue {name:?}: {e}"),
    }
    ExitCode::FAILURE
}

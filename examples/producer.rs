//! The sending half of a two-terminal demo; start `examples/consumer.rs` first.
//!
//! ```sh
//! cargo run --release --example consumer -- NAME                          # terminal 1
//! cargo run --release --example producer -- NAME --size 64K --count 100000  # terminal 2
//! ```
//!
//! Attaches to the existing queue `NAME` and sends `--count` messages of `--size` bytes,
//! each written in place in shared memory through a [`shmq::Loan`] (no intermediate
//! buffer), then waits until the consumers have acknowledged every one. Prints its rate
//! once a second. Several producers may send into one queue at once.
//!
//! Message format (what the consumer checks): a 16-byte header `magic: u32 = "shmq"`,
//! `pid: u32`, `seq: u64` (little-endian), then the byte `seq as u8` up to the end.
//! Messages shorter than 16 bytes are just filled with `seq as u8`.

use shmq::{ErrorKind, SendError};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAGIC: u32 = u32::from_le_bytes(*b"shmq");

const USAGE: &str = "usage: producer NAME [--size BYTES] [--count N]

Sends messages into the shmq queue NAME, which must exist: start the consumer first with
    cargo run --release --example consumer -- NAME

  --size BYTES    bytes per message, e.g. 64, 4096, 64K, 1M (default 64K)
  --count N       messages to send (default 100000; 0 = until Ctrl-C)";

struct Args {
    name: String,
    size: usize,
    count: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut name = None;
    let mut size = 64 << 10;
    let mut count = 100_000;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().ok_or(format!("{flag} needs a value"));
        match a.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--size" => {
                let v = parse_bytes("--size", &value("--size")?)?;
                size = usize::try_from(v).map_err(|_| format!("--size: {v} is too large"))?;
            }
            "--count" => {
                let v = value("--count")?;
                count = v
                    .parse()
                    .map_err(|_| format!("--count: {v:?} is not a number"))?;
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s:?}")),
            s if name.is_none() => name = Some(s.to_string()),
            s => return Err(format!("unexpected argument {s:?}")),
        }
    }
    let name = name.ok_or("missing the queue NAME")?;
    Ok(Args { name, size, count })
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

fn human(bytes: f64) -> String {
    match bytes {
        b if b >= 1e9 => format!("{:.2} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        b => format!("{b:.0} B"),
    }
}

/// Writes message `seq` of this process in place (see the module docs for the format).
fn fill(buf: &mut [u8], pid: u32, seq: u64) {
    buf.fill(seq as u8);
    if buf.len() >= 16 {
        buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        buf[4..8].copy_from_slice(&pid.to_le_bytes());
        buf[8..16].copy_from_slice(&seq.to_le_bytes());
    }
}

/// Ctrl-C (SIGINT) and SIGTERM set the returned flag; the send loop checks it and leaves
/// the ordinary way, dropping the sender on the thread that uses it, so the consumer sees
/// the producer go at once. A second Ctrl-C kills the process outright (needed if it is
/// blocked on a full queue); the consumer's supervisor then repairs what it left.
///
/// Not `shmq::shutdown::exit_on_signals`: it releases the handles from its own thread
/// while this one may still be sending with them.
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

fn summary(sent: u64, size: usize, secs: f64) -> String {
    let bytes = sent as f64 * size as f64;
    format!(
        "sent {sent} messages of {size} B, {} in {secs:.1} s ({:.0} msgs/s, {}/s)",
        human(bytes),
        sent as f64 / secs,
        human(bytes / secs)
    )
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
    let (name, size) = (args.name.as_str(), args.size);

    let tx = match shmq::Sender::open(name) {
        Ok(tx) => tx,
        Err(e) => {
            match e.kind() {
                ErrorKind::NotFound => eprintln!(
                    "error: there is no queue named {name:?} (no /dev/shm/shmq.{name}).\n\
                     Start the consumer first, in another terminal:\n    \
                     cargo run --release --example consumer -- {name}"
                ),
                ErrorKind::InvalidName => eprintln!(
                    "error: {name:?} is not a valid queue name (1 to 200 of A-Z a-z 0-9 _ -)"
                ),
                ErrorKind::TooManyParticipants => {
                    eprintln!("error: queue {name:?} has no free participant record: {e}")
                }
                _ => eprintln!("error: cannot open queue {name:?}: {e}"),
            }
            return ExitCode::FAILURE;
        }
    };
    if size as u64 > tx.max_message_size() {
        eprintln!(
            "error: --size {size} is above the queue's largest message ({} B); restart the \
             consumer with a larger --max-size",
            tx.max_message_size()
        );
        return ExitCode::FAILURE;
    }
    let count = if args.count == 0 {
        u64::MAX
    } else {
        args.count
    };
    eprintln!(
        "sending {} messages of {size} B into {name:?} (capacity {})",
        if args.count == 0 {
            "unlimited".to_string()
        } else {
            count.to_string()
        },
        tx.capacity()
    );

    let stop = stop_on_signals();
    let start = Instant::now();

    let pid = std::process::id();
    let tick = Duration::from_secs(1);
    let mut next_tick = start + tick;
    let (mut last_sent, mut last_t) = (0, start);
    let mut sent = 0;
    for seq in 0..count {
        if stop.load(Relaxed) {
            eprintln!("\ninterrupted");
            break;
        }
        // Blocks while every payload slot is in use (queue full, or consumers slow to ack).
        let result = tx.loan(size).and_then(|mut loan| {
            fill(&mut loan, pid, seq);
            loan.send().map_err(|unsent| unsent.error)
        });
        match result {
            Ok(()) => {}
            Err(SendError::Disconnected) => {
                eprintln!(
                    "error: the consumer is gone (no receiver attached to {name:?}); {}",
                    summary(seq, size, start.elapsed().as_secs_f64())
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("error: sending into {name:?}: {e}");
                return ExitCode::FAILURE;
            }
        }
        sent = seq + 1;
        if seq % 64 == 0 {
            let now = Instant::now();
            if now >= next_tick {
                let dt = now.duration_since(last_t).as_secs_f64();
                let n = seq + 1 - last_sent;
                println!(
                    "[{:6.1} s] {:>10} msgs sent | {:>9.0} msgs/s {:>10}/s",
                    now.duration_since(start).as_secs_f64(),
                    seq + 1,
                    n as f64 / dt,
                    human(n as f64 * size as f64 / dt)
                );
                (last_sent, last_t) = (seq + 1, now);
                while next_tick <= now {
                    next_tick += tick;
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("{}", summary(sent, size, secs));
    // Every message sent is in the queue or with a consumer: wait until all are acked.
    match tx.wait_for_acks(Some(Duration::from_secs(30))) {
        Ok(()) => {
            eprintln!("all {sent} messages acknowledged by the consumers");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("warning: {e} after 30 s; the consumers may be stalled or gone");
            ExitCode::FAILURE
        }
    }
}

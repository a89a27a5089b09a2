//! 1 → 1 cross-process throughput: shmq against a Unix domain socket, 64 B to 1 MiB.
//!
//! ```sh
//! cargo bench --bench throughput               # about a minute
//! cargo bench --bench throughput -- 64KiB      # one size (criterion filter)
//! cargo test --benches                         # the sanity checks alone, each case once
//! ```
//!
//! For each transport and size, the bench binary starts **itself** again as the receiving
//! process (role in the `SHMQ_THROUGHPUT_CHILD` environment variable), and this process
//! sends. Both sides do the same work per message whatever the transport:
//!
//! * sender: stamps the message's sequence number into its first and last 8 bytes of a
//!   prepared buffer and sends it: `Sender::send(&buf)` (one copy into shared memory) or
//!   one `writev` of a 4-byte length prefix and the buffer (one copy into the kernel);
//! * receiver: takes the next message — shmq `Receiver::recv` (a view in place, no copy;
//!   dropping it is the ack), the socket a length-prefixed `read_exact` through a 256 KiB
//!   `BufReader` (one copy out of the kernel) — and checks its length and both stamps,
//!   which also proves nothing was lost, duplicated or reordered.
//!
//! Like rebar and memchr's benchmarks, every case checks its answer: before timing, a
//! sanity pass sends messages whose every byte is derived from the sequence number, and
//! the receiver compares them in full; during timing, each batch ends with the receiver
//! confirming the count and that every stamp matched (a mismatch panics the bench).
//!
//! A timed batch of `n` messages is: tell the receiver `n` (one line on its stdin), send
//! `n` messages, read its `ok` line. The constant cost of those two lines is removed by
//! criterion's slope estimate (linear sampling: samples of 1·d, 2·d, … 10·d messages).
//!
//! Queue: `shmq::channel(64)` (default options: 144 payload slots, segments reused). Socket:
//! default buffer sizes, one `SOCK_STREAM` connection over an abstract address. Both
//! receivers block when there is nothing to read (futex / `read`), neither spins.

use criterion::{BenchmarkId, Criterion, Throughput};
use std::io::{BufRead, BufReader, IoSlice, Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// Message sizes measured.
const SIZES: [(usize, &str); 3] = [(64, "64B"), (64 << 10, "64KiB"), (1 << 20, "1MiB")];
/// Environment variable naming the receiving role of a child: `shmq <queue> <size>` or
/// `uds <abstract socket name> <size>`.
const CHILD_ENV: &str = "SHMQ_THROUGHPUT_CHILD";
/// Messages in the sanity pass.
const SANITY_MSGS: u64 = 100;
/// Queue capacity.
const CAPACITY: usize = 64;

fn main() {
    if let Ok(role) = std::env::var(CHILD_ENV) {
        if let Err(e) = child_main(&role) {
            eprintln!("throughput bench receiver ({role}): {e}");
            std::process::exit(1);
        }
        return;
    }
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    throughput(&mut c);
    c.final_summary();
}

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("throughput_1to1");
    for (size, label) in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        for kind in [Kind::Shmq, Kind::UnixSocket] {
            let id = BenchmarkId::new(kind.name(), label);
            // Set the receiver up only if criterion's filter selects this case.
            let mut pair: Option<Pair> = None;
            g.bench_function(id, |b| {
                let p = pair.get_or_insert_with(|| Pair::start(kind, size));
                b.iter_custom(|n| p.timed_batch(n));
            });
            if let Some(p) = pair {
                p.finish();
            }
        }
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Message contents (shared by both sides)

const STAMP_KEY: u64 = 0x5EED_0F5E_9ABC_DEF1;

/// Writes `seq`'s stamps: the first 8 bytes, and the last 8 xor a key.
fn stamp(buf: &mut [u8], seq: u64) {
    let n = buf.len();
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    buf[n - 8..].copy_from_slice(&(seq ^ STAMP_KEY).to_le_bytes());
}

/// Whether `msg` is message `seq` of `size` bytes, by its length and stamps.
fn stamped(msg: &[u8], size: usize, seq: u64) -> bool {
    let n = msg.len();
    n == size && msg[..8] == seq.to_le_bytes() && msg[n - 8..] == (seq ^ STAMP_KEY).to_le_bytes()
}

/// The full contents of sanity message `seq`: every byte from an xorshift stream seeded
/// by `seq`, then the stamps.
fn sanity_contents(buf: &mut [u8], seq: u64) {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    stamp(buf, seq);
}

// ---------------------------------------------------------------------------------------
// Sending side (this process)

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Shmq,
    UnixSocket,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Shmq => "shmq",
            Kind::UnixSocket => "unix_socket",
        }
    }
}

enum Link {
    Shmq(shmq::Sender),
    Uds(UnixStream),
}

impl Link {
    fn send(&mut self, msg: &[u8]) {
        match self {
            Link::Shmq(tx) => tx.send(msg).expect("shmq send"),
            Link::Uds(s) => {
                let len = (msg.len() as u32).to_le_bytes();
                write_all_vectored(s, &len, msg).expect("socket write");
            }
        }
    }
}

/// The receiver's connection; panics if it exits or takes over 10 s to connect.
fn accept_from(listener: &UnixListener, child: &mut Child) -> UnixStream {
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).expect("blocking stream");
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("the receiver exited with {status} before connecting");
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the receiver did not connect within 10 s");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// One `writev` of `head` then `body` in the common case; finishes a short write.
fn write_all_vectored(s: &mut UnixStream, head: &[u8], body: &[u8]) -> std::io::Result<()> {
    let total = head.len() + body.len();
    let mut done = s.write_vectored(&[IoSlice::new(head), IoSlice::new(body)])?;
    if done < head.len() {
        s.write_all(&head[done..])?;
        done = head.len();
    }
    if done < total {
        s.write_all(&body[done - head.len()..])?;
    }
    Ok(())
}

/// This process's sender and the receiving child for one (transport, size) case.
struct Pair {
    kind: Kind,
    size: usize,
    link: Link,
    child: Child,
    to_child: Option<ChildStdin>,
    from_child: BufReader<ChildStdout>,
    buf: Vec<u8>,
    seq: u64,
}

impl Pair {
    /// Starts the receiver, connects, and runs the sanity pass.
    fn start(kind: Kind, size: usize) -> Pair {
        assert!(size >= 16, "messages carry two 8-byte stamps");
        let exe = std::env::current_exe().expect("current_exe");
        let spawn = |role: String| {
            Command::new(&exe)
                .env(CHILD_ENV, role)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start the receiving process")
        };
        let p = match kind {
            Kind::Shmq => {
                let (tx, rx) = shmq::channel(CAPACITY).expect("create queue");
                let child = spawn(format!("shmq {} {size}", tx.name()));
                let mut p = Pair::new(kind, size, Link::Shmq(tx), child);
                p.expect_line("ready");
                // Our receiver kept the queue connected until the child's was attached (a
                // sender with no receiver gets `Disconnected`); now it would only be in
                // the way.
                drop(rx);
                p
            }
            Kind::UnixSocket => {
                let name = format!("shmq-throughput-{}-{size}", std::process::id());
                let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("address");
                let listener = UnixListener::bind_addr(&addr).expect("bind socket");
                let mut child = spawn(format!("uds {name} {size}"));
                let stream = accept_from(&listener, &mut child);
                let mut p = Pair::new(kind, size, Link::Uds(stream), child);
                p.expect_line("ready");
                p
            }
        };
        p.sanity()
    }

    fn new(kind: Kind, size: usize, link: Link, mut child: Child) -> Pair {
        let to_child = child.stdin.take();
        let from_child = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut buf = vec![0u8; size];
        sanity_contents(&mut buf, u64::MAX); // arbitrary non-zero bytes for timed runs
        Pair {
            kind,
            size,
            link,
            child,
            to_child,
            from_child,
            buf,
            seq: 0,
        }
    }

    fn tell(&mut self, line: &str) {
        let w = self.to_child.as_mut().expect("child stdin");
        writeln!(w, "{line}")
            .and_then(|_| w.flush())
            .expect("write to the receiver");
    }

    fn expect_line(&mut self, want: &str) {
        let mut line = String::new();
        self.from_child
            .read_line(&mut line)
            .expect("read from the receiver");
        assert_eq!(
            line.trim_end(),
            want,
            "{} {} B: the receiver said {line:?} (exited: {:?})",
            self.kind.name(),
            self.size,
            self.child.try_wait()
        );
    }

    /// Sends `SANITY_MSGS` fully patterned messages; the receiver compares every byte.
    fn sanity(mut self) -> Pair {
        self.tell(&format!("sanity {SANITY_MSGS}"));
        let mut buf = vec![0u8; self.size];
        for _ in 0..SANITY_MSGS {
            sanity_contents(&mut buf, self.seq);
            self.link.send(&buf);
            self.seq += 1;
        }
        self.expect_line(&format!("ok {SANITY_MSGS}"));
        self
    }

    /// Sends `n` stamped messages and waits until the receiver has taken and checked all
    /// of them.
    fn timed_batch(&mut self, n: u64) -> Duration {
        let start = Instant::now();
        self.tell(&format!("batch {n}"));
        for _ in 0..n {
            stamp(&mut self.buf, self.seq);
            self.link.send(&self.buf);
            self.seq += 1;
        }
        self.expect_line(&format!("ok {n}"));
        start.elapsed()
    }

    /// Stops the receiver (end of its stdin) and checks it exited cleanly; then drops our
    /// end, which for shmq removes the queue from /dev/shm (we are the last user).
    fn finish(mut self) {
        self.to_child = None;
        let status = self.child.wait().expect("wait for the receiver");
        assert!(status.success(), "receiver exited with {status}");
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // A panic mid-case (a failed check) must not leave the receiver running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Receiving side (the child)

/// The receiving end of either transport.
enum Inbox {
    Shmq(shmq::Receiver),
    /// The stream, and the buffer each frame is read into.
    Uds(BufReader<UnixStream>, Vec<u8>),
}

impl Inbox {
    /// Takes the next message and returns what `check` says of it.
    fn next(&mut self, check: impl FnOnce(&[u8]) -> bool) -> Result<bool, String> {
        match self {
            Inbox::Shmq(rx) => {
                let msg = rx.recv().map_err(|e| format!("recv: {e}"))?;
                Ok(check(&msg))
                // `msg` is dropped here: the ack.
            }
            Inbox::Uds(r, buf) => {
                let mut len = [0u8; 4];
                r.read_exact(&mut len).map_err(|e| format!("read: {e}"))?;
                let len = u32::from_le_bytes(len) as usize;
                if len > buf.len() {
                    return Err(format!("frame of {len} bytes, expected {}", buf.len()));
                }
                r.read_exact(&mut buf[..len])
                    .map_err(|e| format!("read: {e}"))?;
                Ok(check(&buf[..len]))
            }
        }
    }
}

/// Reads commands on stdin until its end: `sanity N` (compare every byte) or `batch N`
/// (compare the stamps); answers `ok N` after N messages, or exits with an error.
fn child_main(role: &str) -> Result<(), String> {
    let words: Vec<&str> = role.split_whitespace().collect();
    let [kind, name, size] = words[..] else {
        return Err("malformed role".into());
    };
    let size: usize = size.parse().map_err(|_| "malformed size")?;
    let mut rx = match kind {
        "shmq" => Inbox::Shmq(shmq::Receiver::open(name).map_err(|e| format!("open: {e}"))?),
        "uds" => {
            let addr = SocketAddr::from_abstract_name(name.as_bytes())
                .map_err(|e| format!("address: {e}"))?;
            let s = UnixStream::connect_addr(&addr).map_err(|e| format!("connect: {e}"))?;
            Inbox::Uds(BufReader::with_capacity(256 << 10, s), vec![0u8; size])
        }
        _ => return Err(format!("unknown transport {kind:?}")),
    };
    let mut out = std::io::stdout().lock();
    let say = |out: &mut std::io::StdoutLock, s: String| {
        writeln!(out, "{s}")
            .and_then(|_| out.flush())
            .map_err(|e| format!("write to the parent: {e}"))
    };
    say(&mut out, "ready".into())?;
    let mut expected = vec![0u8; size];
    let mut seq = 0u64;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("read from the parent: {e}"))?;
        let (cmd, n) = line.split_once(' ').ok_or("malformed command")?;
        let n: u64 = n.parse().map_err(|_| "malformed count")?;
        let full = match cmd {
            "sanity" => true,
            "batch" => false,
            _ => return Err(format!("unknown command {cmd:?}")),
        };
        for _ in 0..n {
            let ok = rx.next(|msg: &[u8]| {
                if full {
                    sanity_contents(&mut expected, seq);
                    msg == &expected[..]
                } else {
                    stamped(msg, size, seq)
                }
            })?;
            if !ok {
                return Err(format!(
                    "message {seq} is wrong ({} check)",
                    if full { "full" } else { "stamp" }
                ));
            }
            seq += 1;
        }
        say(&mut out, format!("ok {n}"))?;
    }
    Ok(())
}

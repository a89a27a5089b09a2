//! Unix domain stream sockets and pipes (std/libc, default buffer sizes): one stream per
//! producer; a consumer reads its streams with non-blocking `read` and sleeps in `poll`.
//! Message boundaries are implicit (every message has the case's size), and each `read`
//! asks for at most the rest of one message, so each message costs at least one `write`
//! and one `read` system call, as it would for a user who frames messages.

use crate::proto::*;

fn set_nonblocking(fd: i32, on: bool) {
    // SAFETY: fcntl on a descriptor this process owns; flags are read before being set.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        let fl = if on {
            fl | libc::O_NONBLOCK
        } else {
            fl & !libc::O_NONBLOCK
        };
        libc::fcntl(fd, libc::F_SETFL, fl);
    }
}

/// Writes all of `b` to a blocking descriptor.
pub fn write_all(fd: i32, mut b: &[u8]) {
    while !b.is_empty() {
        // SAFETY: `b` is a valid readable buffer of `b.len()` bytes.
        let n = unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("write: {e}");
        }
        b = &b[n as usize..];
    }
}

/// One `read` into `buf`; `Some(0)` is end of stream, `None` would block.
fn read_some(fd: i32, buf: &mut [u8]) -> Option<usize> {
    loop {
        // SAFETY: `buf` is a valid writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Some(n as usize);
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => return None,
            _ => panic!("read: {e}"),
        }
    }
}

pub fn producer(spec: &Spec, ctl: &mut Ctl) -> Report {
    let fd = spec.fds[0];
    let mut src = Source::new(spec.size);
    let r = run_producer(spec, ctl, |st| write_all(fd, src.stamped(st)));
    // SAFETY: our descriptor; closing it is the end of stream for the consumer.
    unsafe { libc::close(fd) };
    r
}

pub fn consumer(spec: &Spec, ctl: &mut Ctl) -> Report {
    let (rss_start, _) = rss();
    let words = spec.size / 8;
    struct Stream {
        fd: i32,
        buf: Vec<u64>,
        pos: usize,
    }
    let mut streams: Vec<Stream> = spec
        .fds
        .iter()
        .map(|&fd| {
            set_nonblocking(fd, true);
            Stream {
                fd,
                buf: vec![0u64; words],
                pos: 0,
            }
        })
        .collect();
    let mut v = Verifier::new(spec.size, spec.producers as usize);
    ctl.ready_then_wait_go();
    let t_start = now_ns();
    let mut t_last = t_start;
    let mut fresh = false;
    while !streams.is_empty() {
        let mut progress = false;
        let mut i = 0;
        while i < streams.len() {
            let s = &mut streams[i];
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut s.buf);
            match read_some(s.fd, &mut bytes[s.pos..]) {
                Some(0) => {
                    // SAFETY: our descriptor, at end of stream.
                    unsafe { libc::close(s.fd) };
                    streams.swap_remove(i);
                    continue;
                }
                Some(n) => {
                    progress = true;
                    s.pos += n;
                    if s.pos == spec.size {
                        s.pos = 0;
                        v.words(&s.buf);
                        fresh = true;
                    }
                }
                None => {}
            }
            i += 1;
        }
        if !progress && !streams.is_empty() {
            if fresh {
                t_last = now_ns();
                fresh = false;
            }
            let mut pfds: Vec<libc::pollfd> = streams
                .iter()
                .map(|s| libc::pollfd {
                    fd: s.fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: `pfds` is a valid array of pollfd of the given length.
            unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as _, -1) };
        }
    }
    if fresh {
        t_last = now_ns();
    }
    consumer_report(spec, v, rss_start, t_start, t_last)
}

struct FdDuplex {
    rfd: i32,
    wfd: i32,
    buf: Vec<u64>,
    spin: bool,
}

impl Duplex for FdDuplex {
    fn send(&mut self, w: &[u64]) {
        write_all(self.wfd, bytemuck::cast_slice(w));
    }
    fn recv(&mut self, spin: bool, f: &mut dyn FnMut(&[u64])) {
        if spin != self.spin {
            set_nonblocking(self.rfd, spin);
            self.spin = spin;
        }
        let mut pos = 0;
        let len = self.buf.len() * 8;
        while pos < len {
            let b: &mut [u8] = bytemuck::cast_slice_mut(&mut self.buf);
            match read_some(self.rfd, &mut b[pos..]) {
                Some(0) => panic!("unexpected end of stream"),
                Some(n) => pos += n,
                None => std::hint::spin_loop(),
            }
        }
        f(&self.buf);
    }
}

/// fds: [read, write] (a socket uses the same descriptor twice).
pub fn latency(spec: &Spec, ctl: &mut Ctl) -> Report {
    let mut d = FdDuplex {
        rfd: spec.fds[0],
        wfd: spec.fds[1],
        buf: vec![0u64; spec.size / 8],
        spin: false,
    };
    run_latency(spec, ctl, &mut d)
}

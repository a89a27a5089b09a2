//! Setup errors and hostile shared memory: missing queues, foreign files, another layout
//! version, truncated and corrupt headers, bad arguments and names, existing names,
//! oversized messages. Every error is also checked for the house style of its `Display`
//! (lowercase first letter, no final period).
//!
//! Files planted in `/dev/shm` are removed by the test (and by the [`ShmGuard`] if it
//! fails); the test then asserts that the library added nothing of its own.

mod common;

use common::{as_child, assert_error_style, mix, param, Child, ShmGuard, Watchdog};
use shmq::{ErrorKind, RecvError, SendError, SendTimeoutError, TrySendError};
use std::os::unix::fs::FileExt;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// Byte offset of the layout version in the header (after the 8-byte magic), a
/// little-endian u32.
const VERSION_OFFSET: u64 = 8;

/// Tries every way of attaching to `name`; returns the error kinds (panics on success).
#[track_caller]
fn open_errors(name: &str) -> Vec<(&'static str, shmq::Error)> {
    open_errors_in(name, "")
}

/// As [`open_errors`], naming `context` if an open succeeds.
#[track_caller]
fn open_errors_in(name: &str, context: &str) -> Vec<(&'static str, shmq::Error)> {
    let mut errs = Vec::new();
    match shmq::Sender::open(name) {
        Ok(_) => panic!("{context}: Sender::open({name:?}) succeeded"),
        Err(e) => errs.push(("Sender::open", e)),
    }
    match shmq::Receiver::open(name) {
        Ok(_) => panic!("{context}: Receiver::open({name:?}) succeeded"),
        Err(e) => errs.push(("Receiver::open", e)),
    }
    match shmq::Builder::new().name(name).open_sender() {
        Ok(_) => panic!("{context}: Builder::open_sender({name:?}) succeeded"),
        Err(e) => errs.push(("Builder::open_sender", e)),
    }
    match shmq::Builder::new()
        .name(name)
        .supervision(shmq::Supervision::Manual)
        .open_receiver()
    {
        Ok(_) => panic!("{context}: Builder::open_receiver({name:?}) succeeded"),
        Err(e) => errs.push(("Builder::open_receiver", e)),
    }
    for (what, e) in &errs {
        assert_error_style(what, &e.to_string());
    }
    errs
}

#[track_caller]
fn assert_kinds(name: &str, allowed: &[ErrorKind], context: &str) {
    for (what, e) in open_errors_in(name, context) {
        assert!(
            allowed.contains(&e.kind()),
            "{context}: {what}: kind {:?} ({e}), want one of {allowed:?}",
            e.kind()
        );
    }
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(n + 8);
    let mut k = 0;
    while v.len() < n {
        v.extend_from_slice(&mix(seed ^ mix(k)).to_le_bytes());
        k += 1;
    }
    v.truncate(n);
    v
}

/// Plants `bytes` as the header of queue `g`.
fn plant(g: &ShmGuard, bytes: &[u8]) {
    std::fs::write(g.header_path(), bytes).expect("write a file into /dev/shm");
}

/// Removes the planted header (checking the library left it as it was) and asserts that
/// nothing else of the name is in /dev/shm.
#[track_caller]
fn unplant(g: &ShmGuard, bytes: &[u8]) {
    let now = std::fs::read(g.header_path()).expect("a foreign file must not be removed");
    assert!(now == bytes, "opening a foreign file changed it");
    std::fs::remove_file(g.header_path()).unwrap();
    g.assert_clean();
}

/// Bytes of a freshly created queue's header (the queue is gone afterwards).
fn real_header() -> Vec<u8> {
    let g = ShmGuard::new("model");
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(4)
        .create()
        .unwrap();
    let bytes = std::fs::read(g.header_path()).unwrap();
    drop((tx, rx));
    g.assert_clean();
    bytes
}

#[test]
fn opening_a_queue_that_does_not_exist_is_not_found() {
    let _wd = Watchdog::new("not_found", LIMIT);
    let g = ShmGuard::new("missing");
    for (what, e) in open_errors(g.name()) {
        assert_eq!(e.kind(), ErrorKind::NotFound, "{what}: {e}");
    }
    match shmq::Supervisor::open(g.name()) {
        Ok(_) => panic!("Supervisor::open of a missing queue succeeded"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "Supervisor::open: {e}"),
    }
    // Opening must not create anything.
    g.assert_clean();
}

/// API.md: `Error` is an "opaque setup/OS error ... source() gives the io::Error"; a
/// missing queue is `shm_open` failing with ENOENT.
#[test]
fn a_not_found_error_keeps_its_io_error_source() {
    let _wd = Watchdog::new("not_found_source", LIMIT);
    let g = ShmGuard::new("missing");
    for (what, e) in open_errors(g.name()) {
        let src = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>());
        assert!(
            src.is_some_and(|s| s.kind() == std::io::ErrorKind::NotFound),
            "{what}: a NotFound error should keep its io::Error source: {e:?}"
        );
    }
    g.assert_clean();
}

#[test]
fn a_file_of_random_bytes_is_not_a_queue() {
    let _wd = Watchdog::new("random_bytes", LIMIT);
    let len = real_header().len();
    for (i, n) in [1, 7, 8, 12, 100, 4096, len - 1, len, len + 4096, 1 << 20]
        .into_iter()
        .enumerate()
    {
        let g = ShmGuard::new("random");
        let bytes = random_bytes(n, 0xf00d + i as u64);
        plant(&g, &bytes);
        // Too short to hold a magic number: "truncated" is fair too.
        let allowed: &[ErrorKind] = if n < 8 {
            &[ErrorKind::NotAQueue, ErrorKind::Corrupt]
        } else {
            &[ErrorKind::NotAQueue]
        };
        assert_kinds(g.name(), allowed, &format!("{n} random bytes"));
        unplant(&g, &bytes);
    }
}

#[test]
fn an_empty_file_is_not_a_queue() {
    let _wd = Watchdog::new("empty_file", LIMIT);
    let g = ShmGuard::new("emptyf");
    plant(&g, b"");
    assert_kinds(
        g.name(),
        &[ErrorKind::NotAQueue, ErrorKind::Corrupt],
        "empty file",
    );
    unplant(&g, b"");
}

#[test]
fn a_header_with_another_layout_version_is_a_version_mismatch() {
    let _wd = Watchdog::new("version", LIMIT);
    let model = real_header();
    let version = u32::from_le_bytes(model[8..12].try_into().unwrap());
    for other in [version.wrapping_add(1), version.wrapping_sub(1), u32::MAX] {
        let g = ShmGuard::new("version");
        let mut bytes = model.clone();
        bytes[8..12].copy_from_slice(&other.to_le_bytes());
        plant(&g, &bytes);
        for (what, e) in open_errors_in(g.name(), &format!("version {other}")) {
            assert_eq!(
                e.kind(),
                ErrorKind::VersionMismatch,
                "{what} with version {other} (ours {version}): {e}"
            );
        }
        unplant(&g, &bytes);
    }
    // A broken magic number: not a queue at all.
    let g = ShmGuard::new("magic");
    let mut bytes = model.clone();
    bytes[0] ^= 0xff;
    plant(&g, &bytes);
    assert_kinds(g.name(), &[ErrorKind::NotAQueue], "bad magic");
    unplant(&g, &bytes);
}

#[test]
fn a_live_queue_patched_to_another_layout_version_is_a_version_mismatch_for_a_new_process() {
    const TEST: &str =
        "a_live_queue_patched_to_another_layout_version_is_a_version_mismatch_for_a_new_process";
    as_child(child_role);
    let _wd = Watchdog::new(TEST, LIMIT);
    let g = ShmGuard::new("liveversion");
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(4)
        .create()
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(g.header_path())
        .unwrap();
    let mut orig = [0u8; 4];
    f.read_exact_at(&mut orig, VERSION_OFFSET).unwrap();
    let other = u32::from_le_bytes(orig).wrapping_add(1);
    // (This process is attached already and keeps using its validated mapping, so the
    // check is made by a fresh process.)
    f.write_all_at(&other.to_le_bytes(), VERSION_OFFSET)
        .unwrap();
    Child::spawn(
        TEST,
        "expect_open",
        &[("NAME", &g.name()), ("EXPECT", &"version-mismatch")],
    )
    .wait_ok();
    // Restored, a new process attaches and sends.
    f.write_all_at(&orig, VERSION_OFFSET).unwrap();
    Child::spawn(
        TEST,
        "expect_open",
        &[("NAME", &g.name()), ("EXPECT", &"ok")],
    )
    .wait_ok();
    assert_eq!(&*rx.recv().unwrap(), b"ok");
    drop(f);
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn a_truncated_header_is_not_a_queue_or_corrupt() {
    let _wd = Watchdog::new("truncated", LIMIT);
    let full = real_header();
    let len = full.len();
    for n in [4, 8, 12, 16, 64, 128, 1000, len / 2, len - 64, len - 1] {
        let g = ShmGuard::new("trunc");
        plant(&g, &full[..n]);
        assert_kinds(
            g.name(),
            &[ErrorKind::NotAQueue, ErrorKind::Corrupt],
            &format!("header truncated to {n} of {len} bytes"),
        );
        unplant(&g, &full[..n]);
    }
}

/// Fields of the identity line: (name, offset, width in bytes).
const FIELDS: &[(&str, usize, usize)] = &[
    ("init", 12, 4),
    ("capacity", 16, 4),
    ("slot_count", 20, 4),
    ("max_participants", 24, 4),
    ("inline_bytes", 28, 4),
    ("total_size", 56, 8),
    ("parts_off", 64, 8),
    ("cells_off", 72, 8),
    ("slots_off", 80, 8),
];

/// Exit status of the fuzz child when a case made no progress for [`FUZZ_STALL`].
const FUZZ_HUNG: i32 = 3;
/// How long one library call on a fuzzed queue may take before it counts as a hang.
const FUZZ_STALL: Duration = Duration::from_secs(10);

/// Opens copies of a real header with hostile words written over it, and uses whatever
/// opens. Anything but a panic, a signal or a hang is fine. The case being run is in
/// `DIR/current` (for a crash); a call that makes no progress for [`FUZZ_STALL`] is
/// reported in `DIR/hang` and the child exits with [`FUZZ_HUNG`].
fn fuzz_child() {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use std::sync::{Arc, Mutex};
    let model = std::fs::read(param("MODEL")).unwrap();
    let dir = std::path::PathBuf::from(param("DIR"));
    let progress = Arc::new(AtomicU64::new(0));
    let current = Arc::new(Mutex::new((String::new(), "")));
    {
        let (progress, current, dir) = (progress.clone(), current.clone(), dir.clone());
        std::thread::spawn(move || {
            let (mut last, mut since) = (u64::MAX, std::time::Instant::now());
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let p = progress.load(Relaxed);
                if p != last {
                    (last, since) = (p, std::time::Instant::now());
                } else if since.elapsed() >= FUZZ_STALL {
                    let c = current.lock().unwrap_or_else(|e| e.into_inner());
                    let msg = format!("{} hung in {} for {FUZZ_STALL:?}", c.0, c.1);
                    common::write_atomic(dir.join("hang"), msg);
                    common::remove_all_guarded();
                    std::process::exit(FUZZ_HUNG);
                }
            }
        });
    }
    let step = |s: &'static str| {
        current.lock().unwrap().1 = s;
        progress.fetch_add(1, Relaxed);
    };
    let (mut opened, mut received, mut refused) = (0, 0, 0);
    for iter in 0..3000u64 {
        let g = ShmGuard::new("fuzz");
        let mut bytes = model.clone();
        let words = 1 + mix(iter) % 8;
        let mut what = Vec::new();
        for w in 0..words {
            let r = mix(iter << 8 | w);
            // Past the magic/version/init words, aligned to 8.
            let off = 16 + (r as usize % ((bytes.len() - 16) / 8)) * 8;
            let val = match r >> 60 {
                0 => 0,
                1 => u64::MAX,
                2 => u32::MAX as u64,
                3 => 1 << 40,
                4..=6 => mix(r) % 4096,
                _ => mix(r),
            };
            bytes[off..off + 8].copy_from_slice(&val.to_le_bytes());
            what.push(format!("[{off}]={val:#x}"));
        }
        let case = format!("fuzz #{iter}: {}", what.join(" "));
        std::fs::write(dir.join("current"), &case).unwrap();
        current.lock().unwrap().0 = case;
        std::fs::write(g.header_path(), &bytes).unwrap();
        step("Builder::open_receiver");
        let r = shmq::Builder::new()
            .name(g.name())
            .supervision(shmq::Supervision::Manual)
            .open_receiver();
        match r {
            Ok(rx) => {
                opened += 1;
                for _ in 0..4 {
                    step("Receiver::try_recv");
                    match rx.try_recv() {
                        Ok(m) => {
                            received += 1;
                            std::hint::black_box(m.iter().map(|&b| b as u64).sum::<u64>());
                        }
                        Err(e) => assert_error_style("try_recv on a fuzzed queue", &e.to_string()),
                    }
                }
                step("Receiver::recv_timeout");
                let _ = rx.recv_timeout(Duration::from_millis(1));
                step("Sender::open");
                if let Ok(tx) = shmq::Sender::open(g.name()) {
                    step("Sender::try_send (inline)");
                    let _ = tx.try_send(b"fuzz");
                    step("Sender::try_send (1000 bytes)");
                    let _ = tx.try_send(&[7u8; 1000]);
                    step("Receiver::try_recv after sending");
                    let _ = rx.try_recv();
                    step("dropping the Sender");
                }
                step("dropping the Receiver");
            }
            Err(e) => {
                refused += 1;
                assert_error_style("open of a fuzzed queue", &e.to_string());
                std::fs::remove_file(g.header_path()).unwrap();
            }
        }
        // The guard removes whatever is left (possibly nothing: the library unlinks a
        // queue it opened once its last handle goes).
        step("next case");
    }
    std::fs::write(
        dir.join("stats"),
        format!("{opened} opened ({received} messages received), {refused} refused"),
    )
    .unwrap();
}

fn child_role(role: &str) {
    match role {
        // Opens copies of a real header with hostile words written over it, and uses
        // whatever opens. Anything but a panic, a signal or a hang is fine.
        "fuzz" => fuzz_child(),
        // Opens each of NAMES as soon as it exists (a sender for even ones, a receiver
        // for odd ones) and exchanges one message with the creator. Anything but NotFound
        // before that is a half-built queue showing; Disconnected after it, a queue shown
        // before its creator's handles were attached.
        "eager_opener" => {
            for (i, name) in param("NAMES").split(',').enumerate() {
                let open = || {
                    if i % 2 == 0 {
                        shmq::Sender::open(name).map(|h| Box::new(h) as Box<dyn std::any::Any>)
                    } else {
                        shmq::Receiver::open(name).map(|h| Box::new(h) as Box<dyn std::any::Any>)
                    }
                };
                let h = loop {
                    match open() {
                        Ok(h) => break h,
                        Err(e) if e.kind() == ErrorKind::NotFound => std::hint::spin_loop(),
                        Err(e) => panic!("opening {name:?} while it is created: {e:?}"),
                    }
                };
                if let Some(tx) = h.downcast_ref::<shmq::Sender>() {
                    tx.send(b"hi").unwrap_or_else(|e| {
                        panic!("send on {name:?} right after it appeared (its creator holds a receiver): {e}")
                    });
                } else {
                    let rx = h.downcast_ref::<shmq::Receiver>().unwrap();
                    let m = rx.recv().unwrap_or_else(|e| {
                        panic!("recv on {name:?} right after it appeared (its creator holds a sender): {e}")
                    });
                    assert_eq!(&*m, b"hi");
                }
            }
        }
        "expect_open" => {
            let name = param("NAME");
            if param("EXPECT") == "ok" {
                let tx = shmq::Sender::open(&name).expect("open the restored queue");
                tx.send(b"ok").unwrap();
            } else {
                for (what, e) in open_errors_in(&name, "patched version") {
                    assert_eq!(e.kind(), ErrorKind::VersionMismatch, "{what}: {e}");
                }
            }
        }
        r => panic!("unknown role {r}"),
    }
}

#[test]
fn a_header_with_impossible_dimensions_is_corrupt() {
    let _wd = Watchdog::new("dimensions", LIMIT);
    let model = real_header();
    for &(field, off, width) in FIELDS {
        for val in [0u64, u32::MAX as u64, u64::MAX, 0x7fff_ffff] {
            let g = ShmGuard::new("dims");
            let mut bytes = model.clone();
            let old = bytes[off..off + width].to_vec();
            bytes[off..off + width].copy_from_slice(&val.to_le_bytes()[..width]);
            if bytes[off..off + width] == old[..] {
                continue;
            }
            plant(&g, &bytes);
            assert_kinds(
                g.name(),
                &[ErrorKind::NotAQueue, ErrorKind::Corrupt],
                &format!("{field} = {val:#x}"),
            );
            unplant(&g, &bytes);
        }
    }
}

#[test]
fn hostile_words_in_a_copied_header_give_errors_not_crashes() {
    const TEST: &str = "hostile_words_in_a_copied_header_give_errors_not_crashes";
    as_child(child_role);
    let _wd = Watchdog::new(TEST, Duration::from_secs(120));
    // A model with a queued inline message, a held one and a queued segment-backed one.
    let g = ShmGuard::new("fmodel");
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(4)
        .create()
        .unwrap();
    tx.send(b"held").unwrap();
    let held = rx.recv().unwrap();
    tx.send(b"queued").unwrap();
    tx.send(&[1u8; 5000]).unwrap();
    let dir = common::TempDir::new("fuzz");
    let model = dir.join("model");
    std::fs::copy(g.header_path(), &model).unwrap();
    drop(held);
    drop((tx, rx));
    g.assert_clean();
    let mut child = Child::spawn(
        TEST,
        "fuzz",
        &[("MODEL", &model.display()), ("DIR", &dir.path().display())],
    );
    let st = child.wait();
    if st.code() == Some(FUZZ_HUNG) {
        panic!(
            "a library call on a corrupt header hung: {}",
            std::fs::read_to_string(dir.join("hang")).unwrap_or_default()
        );
    }
    assert_eq!(
        st.code(),
        Some(common::CHILD_OK),
        "fuzz child failed ({st:?}) at {}",
        std::fs::read_to_string(dir.join("current")).unwrap_or_default()
    );
    eprintln!(
        "fuzz: {}",
        std::fs::read_to_string(dir.join("stats")).unwrap_or_default()
    );
}

#[test]
fn a_queue_being_created_is_never_seen_half_built() {
    const TEST: &str = "a_queue_being_created_is_never_seen_half_built";
    as_child(child_role);
    let _wd = Watchdog::new(TEST, LIMIT);
    let guards: Vec<ShmGuard> = (0..200).map(|_| ShmGuard::new("eager")).collect();
    let names: Vec<&str> = guards.iter().map(|g| g.name()).collect();
    let mut child = Child::spawn(TEST, "eager_opener", &[("NAMES", &names.join(","))]);
    for (i, g) in guards.iter().enumerate() {
        std::thread::sleep(Duration::from_micros(mix(i as u64) % 3000));
        let (tx, rx) = shmq::Builder::new()
            .name(g.name())
            .capacity(2)
            .slots(8 + i)
            .create()
            .unwrap();
        if i % 2 == 0 {
            let m = loop {
                match rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(m) => break m,
                    Err(shmq::RecvTimeoutError::Timeout) if child.is_running() => {}
                    Err(e) => {
                        child.wait_ok();
                        panic!("queue #{i}: {e}");
                    }
                }
            };
            assert_eq!(&*m, b"hi");
        } else {
            tx.send(b"hi").unwrap();
            while tx.wait_for_acks(Some(Duration::from_millis(20))).is_err() {
                if !child.is_running() {
                    child.wait_ok();
                    panic!("queue #{i}: the child exited before receiving");
                }
            }
        }
        drop((tx, rx));
    }
    child.wait_ok();
    for g in &guards {
        g.assert_clean();
    }
}

#[test]
fn max_deliveries_out_of_range_is_an_invalid_argument() {
    let _wd = Watchdog::new("max_deliveries_range", LIMIT);
    let g = ShmGuard::new("maxdel");
    for n in [0, 65535, u32::MAX] {
        let e = shmq::Builder::new()
            .name(g.name())
            .max_deliveries(n)
            .create()
            .expect_err("max_deliveries out of range");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains("max_deliveries"), "{e}");
        assert_error_style("max_deliveries(n)", &e.to_string());
        g.assert_clean();
    }
    for n in [1, 65534] {
        let (tx, rx) = shmq::Builder::new()
            .name(g.name())
            .max_deliveries(n)
            .create()
            .unwrap();
        assert_eq!(shmq::info::inspect(g.name()).unwrap().max_deliveries, n);
        drop((tx, rx));
        g.assert_clean();
    }
}

#[test]
fn zero_capacity_is_an_invalid_argument() {
    let _wd = Watchdog::new("zero_capacity", LIMIT);
    let e = shmq::channel(0).expect_err("channel(0)");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_error_style("channel(0)", &e.to_string());
    let g = ShmGuard::new("zero");
    let e = shmq::Builder::new()
        .name(g.name())
        .capacity(0)
        .create()
        .expect_err("capacity(0)");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_error_style("capacity(0)", &e.to_string());
    g.assert_clean();
    // The name is still free.
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(1)
        .create()
        .unwrap();
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn a_message_above_max_message_size_is_too_large_and_the_queue_still_works() {
    let _wd = Watchdog::new("too_large", LIMIT);
    let g = ShmGuard::new("large");
    let max = 1024u64;
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(2)
        .max_message_size(max)
        .create()
        .unwrap();
    assert_eq!(tx.max_message_size(), max);
    let big = vec![9u8; max as usize + 1];
    let bad = |len: u64, m: u64, what: &str| {
        assert_eq!((len, m), (max + 1, max), "{what}: TooLarge fields");
    };
    match tx.try_send(&big) {
        Err(e @ TrySendError::TooLarge { len, max: m }) => {
            bad(len, m, "try_send");
            assert_error_style("TrySendError::TooLarge", &e.to_string());
        }
        r => panic!("try_send: {r:?}"),
    }
    match tx.send(&big) {
        Err(e @ SendError::TooLarge { len, max: m }) => {
            bad(len, m, "send");
            assert_error_style("SendError::TooLarge", &e.to_string());
        }
        r => panic!("send: {r:?}"),
    }
    match tx.send_timeout(&big, Duration::from_millis(10)) {
        Err(e @ SendTimeoutError::TooLarge { len, max: m }) => {
            bad(len, m, "send_timeout");
            assert_error_style("SendTimeoutError::TooLarge", &e.to_string());
        }
        r => panic!("send_timeout: {r:?}"),
    }
    match tx.loan(max as usize + 1) {
        Err(SendError::TooLarge { len, max: m }) => bad(len, m, "loan"),
        r => panic!("loan: {r:?}"),
    }
    match tx.try_loan(max as usize + 1) {
        Err(TrySendError::TooLarge { len, max: m }) => bad(len, m, "try_loan"),
        r => panic!("try_loan: {r:?}"),
    }
    // The queue is unharmed: the largest allowed message and a small one go through.
    tx.send(&big[..max as usize]).unwrap();
    tx.send(b"small").unwrap();
    let m = rx.recv().unwrap();
    assert!(m.len() == max as usize && m.iter().all(|&b| b == 9));
    drop(m);
    assert_eq!(&*rx.recv().unwrap(), b"small");
    // From another handle too.
    let tx2 = shmq::Sender::open(g.name()).unwrap();
    assert_eq!(tx2.max_message_size(), max);
    assert!(matches!(
        tx2.try_send(&big),
        Err(TrySendError::TooLarge { .. })
    ));
    tx2.send(b"again").unwrap();
    assert_eq!(&*rx.recv().unwrap(), b"again");
    drop((tx, tx2, rx));
    g.assert_clean();
}

#[test]
fn invalid_names_are_rejected() {
    let _wd = Watchdog::new("invalid_names", LIMIT);
    let long300 = "a".repeat(300);
    let long201 = "b".repeat(201);
    for name in [
        "",
        "a/b",
        "a.b",
        long300.as_str(),
        long201.as_str(),
        "/",
        "..",
        ".",
        "a b",
        "a\0b",
        "ä",
        "a\nb",
    ] {
        let e = shmq::Builder::new()
            .name(name)
            .create()
            .expect_err(&format!("create {name:?}"));
        assert_eq!(e.kind(), ErrorKind::InvalidName, "create {name:?}: {e}");
        for (what, e) in open_errors(name) {
            assert_eq!(e.kind(), ErrorKind::InvalidName, "{what} {name:?}: {e}");
        }
        // Nothing was created under the invalid name.
        if !name.contains(['/', '\0']) && !name.is_empty() {
            let p = common::header_path(name);
            assert!(
                std::fs::symlink_metadata(&p).is_err(),
                "{} exists after a rejected create",
                p.display()
            );
        }
    }
    // The longest valid name, and every allowed character, work.
    let prefix = common::unique_name("n");
    let g = ShmGuard::for_name(format!("{prefix}{}", "_".repeat(200 - prefix.len())));
    assert_eq!(g.name().len(), 200);
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(1)
        .create()
        .unwrap();
    assert_eq!(tx.name(), g.name());
    let rx2 = shmq::Receiver::open(g.name()).unwrap();
    tx.send(b"x").unwrap();
    assert_eq!(&*rx2.recv().unwrap(), b"x");
    drop((tx, rx, rx2));
    g.assert_clean();
    let g = ShmGuard::for_name(format!("{}-AZaz09_-", common::unique_name("c")));
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(1)
        .create()
        .unwrap();
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn creating_a_name_that_exists_is_already_exists() {
    let _wd = Watchdog::new("already_exists", LIMIT);
    let g = ShmGuard::new("exists");
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(2)
        .create()
        .unwrap();
    tx.send(b"before").unwrap();
    for cap in [2, 8] {
        let e = shmq::Builder::new()
            .name(g.name())
            .capacity(cap)
            .create()
            .expect_err("second create");
        assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
        assert_error_style("AlreadyExists", &e.to_string());
    }
    // The existing queue is untouched.
    assert_eq!(tx.capacity(), 2);
    tx.send(b"after").unwrap();
    assert_eq!(&*rx.recv().unwrap(), b"before");
    assert_eq!(&*rx.recv().unwrap(), b"after");
    // A planted foreign file also blocks creation (and is left alone).
    drop((tx, rx));
    g.assert_clean();
    let foreign = random_bytes(4096, 1);
    plant(&g, &foreign);
    let e = shmq::Builder::new()
        .name(g.name())
        .create()
        .expect_err("create over a foreign file");
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    unplant(&g, &foreign);
    // Once gone, the name can be created again.
    let (tx, rx) = shmq::Builder::new().name(g.name()).create().unwrap();
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn every_error_displays_lowercase_without_a_final_period() {
    let _wd = Watchdog::new("display", LIMIT);
    let mut shown: Vec<(String, String)> = Vec::new();
    let mut add = |what: &str, e: &dyn std::fmt::Display| shown.push((what.into(), e.to_string()));

    // Setup errors of every kind a test can provoke.
    let g = ShmGuard::new("disp");
    add("NotFound", &shmq::Sender::open(g.name()).unwrap_err());
    add("InvalidName", &shmq::Sender::open("a/b").unwrap_err());
    add("InvalidArgument", &shmq::channel(0).unwrap_err());
    let (tx, rx) = shmq::Builder::new()
        .name(g.name())
        .capacity(1)
        .max_message_size(16)
        .create()
        .unwrap();
    add(
        "AlreadyExists",
        &shmq::Builder::new().name(g.name()).create().unwrap_err(),
    );

    // Hot-path errors, as returned.
    add(
        "RecvTimeoutError::Timeout",
        &rx.recv_timeout(Duration::ZERO).unwrap_err(),
    );
    add("TryRecvError::Empty", &rx.try_recv().unwrap_err());
    add(
        "TrySendError::TooLarge",
        &tx.try_send(&[0; 17]).unwrap_err(),
    );
    tx.send(b"x").unwrap();
    add("TrySendError::Full", &tx.try_send(b"y").unwrap_err());
    add(
        "SendTimeoutError::Timeout",
        &tx.send_timeout(b"y", Duration::ZERO).unwrap_err(),
    );
    let loan = tx.loan(4).unwrap();
    let u = loan.try_send().unwrap_err();
    add("Unsent<TrySendError>", &u);
    add(
        "Unsent<SendTimeoutError>",
        &u.loan.send_timeout(Duration::ZERO).unwrap_err(),
    );
    add(
        "AckTimeoutError",
        &tx.wait_for_acks(Some(Duration::ZERO)).unwrap_err(),
    );
    drop(rx);
    add(
        "TrySendError::Disconnected",
        &tx.try_send(b"z").unwrap_err(),
    );
    add("SendError::Disconnected", &tx.send(b"z").unwrap_err());
    add(
        "SendTimeoutError::Disconnected",
        &tx.send_timeout(b"z", Duration::ZERO).unwrap_err(),
    );
    let rx = shmq::Receiver::open(g.name()).unwrap();
    drop(tx);
    assert_eq!(&*rx.recv().unwrap(), b"x");
    add("TryRecvError::Disconnected", &rx.try_recv().unwrap_err());
    add(
        "RecvTimeoutError::Disconnected",
        &rx.recv_timeout(Duration::ZERO).unwrap_err(),
    );
    add("RecvError::Disconnected", &rx.recv().unwrap_err());
    drop(rx);
    g.assert_clean();

    // Variants no quick test provokes, built directly.
    add(
        "SendError::TooLarge",
        &SendError::TooLarge { len: 2, max: 1 },
    );
    let foreign = random_bytes(4096, 2);
    plant(&g, &foreign);
    add("NotAQueue", &shmq::Sender::open(g.name()).unwrap_err());
    unplant(&g, &foreign);
    add(
        "RecvError (Failed)",
        &RecvError::Failed(shmq::channel(0).unwrap_err()),
    );

    for (what, s) in &shown {
        assert_error_style(what, s);
    }
    assert!(shown.len() >= 20);
}

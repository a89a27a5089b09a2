//! A real, small `/dev/shm` (issue 12): each role runs in a mount namespace of its own
//! (`unshare -m`, root here; `unshare -Urm` would do for an unprivileged user) on a tmpfs
//! of a few MiB or a handful of inodes, so it fills up for real without touching the
//! machine's `/dev/shm`. Out of space or inodes, every call says `NoSpace` (never SIGBUS),
//! nothing accepted is lost, nothing half-made stays, and space given back is used again.
//! Without `unshare` or the right to mount, the test says so and checks nothing.

mod common;

use common::Watchdog;
use std::process::{Command, Stdio};
use std::time::Duration;

const MIB: usize = 1 << 20;

/// What is in this namespace's `/dev/shm`.
fn entries() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn is_no_space(e: &shmq::Error) -> bool {
    e.kind() == shmq::ErrorKind::NoSpace
}

/// Child role, on a tmpfs of 8 MiB: 1 MiB messages held until the space is gone.
fn space_role() {
    let (tx, rx) = shmq::Builder::new()
        .name("space")
        .capacity(32)
        .max_message_size(MIB as u64)
        .max_payload_bytes(64 << 20)
        .supervision(shmq::Supervision::Manual)
        .create()
        .unwrap();
    let mut held = Vec::new();
    let err = loop {
        let i = held.len() as u8;
        match tx.try_send(&vec![i; MIB]) {
            Ok(()) => held.push(rx.try_recv().unwrap()),
            Err(shmq::TrySendError::Failed(e)) => break e,
            Err(e) => panic!("send {i} on a filling /dev/shm: {e:?}"),
        }
        assert!(held.len() < 32, "32 MiB sent into an 8 MiB /dev/shm");
    };
    assert!(is_no_space(&err), "{err}");
    common::assert_error_style("NoSpace", &err.to_string());
    assert!(held.len() >= 4, "only {} MiB fit", held.len());
    // A second queue cannot be made either, and leaves nothing behind.
    let before = entries();
    match shmq::Builder::new().name("second").capacity(4).create() {
        Err(e) => assert!(is_no_space(&e), "{e}"),
        Ok(_) => {
            // Its header fit in what was left; then nothing is lost either.
        }
    }
    assert!(
        entries().iter().all(|e| before.contains(e)),
        "{:?}",
        entries()
    );
    // Inline messages need no new object: they still go.
    tx.try_send(b"small").unwrap();
    assert_eq!(&*rx.try_recv().unwrap(), b"small");
    // Everything accepted is intact; the space comes back when the messages are consumed.
    for (i, m) in held.iter().enumerate() {
        assert!(
            m.len() == MIB && m.iter().all(|&b| b == i as u8),
            "message {i}"
        );
    }
    held.clear();
    for i in 0..8u8 {
        tx.try_send(&vec![i; MIB]).unwrap();
        assert!(rx.try_recv().unwrap().iter().all(|&b| b == i));
    }
    drop((tx, rx));
    assert_eq!(entries(), Vec::<String>::new());
}

/// Child role, on a tmpfs of 6 inodes (its root directory takes one): queues and
/// segments until the inodes are gone.
fn inodes_role() {
    let mut queues = Vec::new();
    let err = loop {
        match shmq::Builder::new()
            .name(format!("q{}", queues.len()))
            .capacity(2)
            .supervision(shmq::Supervision::Manual)
            .create()
        {
            Ok(q) => queues.push(q),
            Err(e) => break e,
        }
        assert!(queues.len() < 10, "10 queues on 6 inodes");
    };
    assert!(is_no_space(&err), "{err}");
    assert!(!queues.is_empty());
    // Nothing half-made: one header per queue, no temporary header.
    assert_eq!(entries().len(), queues.len(), "{:?}", entries());
    // Messages that need a segment object take what is left (tmpfs counts a hard link as
    // an inode: creating a header needs two for an instant, so one may be free), then
    // cannot get one; an inline one goes.
    let (tx, rx) = &queues[0];
    let mut held = Vec::new();
    let err = loop {
        match tx.try_send(&vec![1u8; 100_000]) {
            Ok(()) => held.push(rx.try_recv().unwrap()),
            Err(shmq::TrySendError::Failed(e)) => break e,
            Err(e) => panic!("a segment send without inodes: {e:?}"),
        }
        assert!(held.len() < 3, "{} segments on no inodes", held.len());
    };
    assert!(is_no_space(&err), "{err}");
    tx.try_send(b"inline").unwrap();
    assert_eq!(&*rx.try_recv().unwrap(), b"inline");
    assert!(held.iter().all(|m| m.iter().all(|&b| b == 1)));
    drop(held);
    // One queue gone, its inode serves a segment.
    let last = queues.pop().unwrap();
    drop(last);
    let (tx, rx) = &queues[0];
    tx.try_send(&vec![2u8; 100_000]).unwrap();
    assert!(rx.try_recv().unwrap().iter().all(|&b| b == 2));
    drop(queues);
    assert_eq!(entries(), Vec::<String>::new());
}

/// Runs `role` of this test in a new mount namespace whose `/dev/shm` is a tmpfs mounted
/// with `opts`. `None` if this machine cannot do that (says why).
fn in_small_tmpfs(test: &str, role: &str, opts: &str) -> Option<std::process::ExitStatus> {
    let probe = Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"])
        .stderr(Stdio::null())
        .status();
    if !matches!(probe, Ok(s) if s.success()) {
        eprintln!("{test}: cannot mount a tmpfs in a mount namespace here; nothing checked");
        return None;
    }
    let exe = std::env::current_exe().unwrap();
    let script = format!("mount -t tmpfs -o {opts},mode=1777 tmpfs /dev/shm && exec \"$@\"");
    let mut child = Command::new("unshare")
        .args(["-m", "sh", "-c", &script, "sh"])
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env(common::CHILD_ENV, role)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _wd = Watchdog::new(role, Duration::from_secs(120));
    Some(child.wait().unwrap())
}

#[test]
fn a_full_small_dev_shm_says_no_space_and_loses_nothing() {
    const TEST: &str = "a_full_small_dev_shm_says_no_space_and_loses_nothing";
    common::as_child(|_| space_role());
    if let Some(st) = in_small_tmpfs(TEST, "space", "size=8m") {
        assert_eq!(st.code(), Some(common::CHILD_OK), "{st:?}");
    }
}

#[test]
fn a_dev_shm_out_of_inodes_says_no_space_and_leaves_nothing_half_made() {
    const TEST: &str = "a_dev_shm_out_of_inodes_says_no_space_and_leaves_nothing_half_made";
    common::as_child(|_| inodes_role());
    if let Some(st) = in_small_tmpfs(TEST, "inodes", "size=64m,nr_inodes=6") {
        assert_eq!(st.code(), Some(common::CHILD_OK), "{st:?}");
    }
}

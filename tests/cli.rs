//! The `shmq` command-line tool, driven as a user would.

use std::process::Command;

fn shmq(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shmq"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn list_and_inspect_show_a_live_queue_with_its_participants() {
    let (tx, rx) = shmq::Builder::new()
        .capacity(8)
        .max_deliveries(4)
        .create()
        .unwrap();
    tx.send(b"one").unwrap();
    tx.send(b"two").unwrap();
    let held = rx.recv().unwrap();
    let name = tx.name().to_string();

    let (ok, out, _) = shmq(&["list"]);
    assert!(ok);
    let line = out
        .lines()
        .find(|l| l.starts_with(&name))
        .expect("queue listed");
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&cols[1..6], &["8", "1", "1", "1", "0"], "{line}");

    let (ok, out, _) = shmq(&["inspect", &name]);
    assert!(ok);
    assert!(out.contains("capacity     8 (depth 1"), "{out}");
    assert!(out.contains("1 held"), "{out}");
    assert!(out.contains("sender") && out.contains("receiver"), "{out}");
    assert!(out.contains("at most 4 deliveries"), "{out}");
    assert!(out.contains("0 set aside"), "{out}");

    let (ok, json, _) = shmq(&["inspect", &name, "--json"]);
    assert!(ok);
    assert!(
        json.starts_with('{') && json.trim_end().ends_with('}'),
        "{json}"
    );
    assert!(json.contains(&format!("\"name\":\"{name}\"")));
    assert!(json.contains("\"held\":1,\"orphan\":0"), "{json}");
    assert!(json.contains("\"max_deliveries\":4,"), "{json}");
    assert!(json.contains("\"dead_letters\":0,"), "{json}");
    assert!(json.contains("\"problems\":[]"), "{json}");
    drop(held);
}

#[test]
fn inspect_of_a_missing_queue_says_how_to_find_the_right_name() {
    let (ok, _, err) = shmq(&["inspect", "no-such-queue-here"]);
    assert!(!ok);
    assert!(
        err.contains("no queue named \"no-such-queue-here\""),
        "{err}"
    );
    assert!(err.contains("`shmq list` shows the queues"), "{err}");
}

#[test]
fn gc_is_a_dry_run_unless_forced_and_leaves_live_queues_alone() {
    let (tx, _rx) = shmq::channel(2).unwrap();
    // A queue whose only process "died": a header nobody holds a lock on.
    let dead = format!("t-gc-{}-{}", std::process::id(), rand::random::<u32>());
    {
        let (t, _r) = shmq::Builder::new().name(&dead).create().unwrap();
        let src = format!("/dev/shm/shmq.{}", t.name());
        std::fs::copy(&src, format!("{src}-copy")).unwrap();
    }
    let orphan = format!("{dead}-copy");
    let (ok, out, _) = shmq(&["gc"]);
    assert!(ok);
    assert!(out.contains(&format!("would remove {orphan}")), "{out}");
    assert!(
        !out.contains(tx.name()),
        "a live queue must not be collected: {out}"
    );
    assert!(std::path::Path::new(&format!("/dev/shm/shmq.{orphan}")).exists());
    let (ok, out, _) = shmq(&["gc", "--force"]);
    assert!(ok);
    assert!(out.contains(&format!("removed {orphan}")), "{out}");
    assert!(!std::path::Path::new(&format!("/dev/shm/shmq.{orphan}")).exists());
    assert!(std::path::Path::new(&format!("/dev/shm/shmq.{}", tx.name())).exists());
}

#[test]
fn bench_reports_a_rate_and_leaves_nothing_behind() {
    let (ok, out, err) = shmq(&["bench", "--size", "4096", "--count", "2000"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("2000 messages of 4.0 KiB across processes"),
        "{out}"
    );
    assert!(out.contains("msg/s"), "{out}");
}

#[test]
fn unknown_commands_print_usage() {
    let (ok, _, err) = shmq(&["frobnicate"]);
    assert!(!ok);
    assert!(
        err.contains("unknown command") && err.contains("usage: shmq"),
        "{err}"
    );
}

/// A queue whose ring a process wrote over: receivers get `Corrupt`, and `shmq inspect`
/// (and `list`) say it is corrupt, where, and what to do. (On c3c2b59 inspect printed
/// the numbers as if nothing were wrong, and nothing said what to do.)
#[test]
fn inspect_says_a_scribbled_queue_is_corrupt_where_and_what_to_do() {
    use std::os::unix::fs::FileExt;
    let (tx, rx) = shmq::Builder::new()
        .capacity(4)
        .max_participants(4)
        .supervision(shmq::Supervision::Manual)
        .create()
        .unwrap();
    let name = tx.name().to_string();
    tx.send(b"one").unwrap();
    // Ring cells start at 1024 + 128 per participant record (layout.rs Geometry::new).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/shmq.{name}"))
        .unwrap();
    f.write_all_at(&u64::MAX.to_ne_bytes(), 1024 + 128 * 4)
        .unwrap();
    match rx.try_recv() {
        Err(shmq::TryRecvError::Failed(e)) => assert_eq!(e.kind(), shmq::ErrorKind::Corrupt),
        r => panic!("try_recv on a scribbled ring: {r:?}"),
    }
    let (ok, out, _) = shmq(&["inspect", &name]);
    assert!(ok);
    assert!(out.contains("CORRUPT"), "{out}");
    assert!(out.contains("ring cell 0"), "{out}");
    assert!(out.contains("create a new queue"), "{out}");
    let (ok, json, _) = shmq(&["inspect", &name, "--json"]);
    assert!(ok);
    assert!(json.contains("\"problems\":[\"ring cell 0"), "{json}");
    let (ok, out, _) = shmq(&["list"]);
    assert!(ok);
    let line = out.lines().find(|l| l.starts_with(&name)).expect("listed");
    assert!(line.contains("CORRUPT"), "{line}");
    drop((tx, rx));
}

//! Two users on one queue (issue 12, item 6). shmq's trust model is one user: objects are
//! created mode 0600. A queue made accessible to another user by hand is outside it, but
//! at its border nothing may get stuck or leak silently: another user opening a private
//! queue is refused with `PermissionDenied`, a receiver that cannot open a
//! segment the other user created passes over it (another receiver takes it), a sender
//! whose slot holds the other user's segment sends through another slot, the last one
//! out reports what it could not remove, and `gc` run by the owner of what is left
//! removes it.
//!
//! The roles run as two unprivileged users (uids 61001 and 61002, set by the child
//! itself), so the test needs root; run by another user it says so and passes without
//! checking anything.

mod common;

use common::{ShmGuard, Watchdog};
use std::path::{Path, PathBuf};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);
const TEST: &str = "a_queue_shared_by_two_users_by_hand_never_gets_stuck_or_leaks_silently";
const OWNER: u32 = 61001;
const GUEST: u32 = 61002;
const SEG: usize = 70_000;

/// Becomes user `uid` (and group `uid`) for the rest of this child process.
fn become_user(uid: u32) {
    // SAFETY: plain syscalls on this process's own credentials; prctl re-arms the parent
    // death signal that a change of credentials clears.
    unsafe {
        assert_eq!(libc::setgroups(0, std::ptr::null()), 0);
        assert_eq!(libc::setgid(uid), 0);
        assert_eq!(libc::setuid(uid), 0);
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
    }
}

/// Sends this process's stderr to `path` (for the parent to read).
fn stderr_to(path: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::create(path).unwrap();
    // SAFETY: dup2 onto fd 2, which stays open for the life of the process.
    assert_eq!(unsafe { libc::dup2(f.as_raw_fd(), 2) }, 2);
}

fn wait_file(dir: &Path, f: &str) {
    common::wait_for_file(dir.join(f), None);
}

/// The creator: makes the queue, opens its header to everyone by hand, then receives.
fn owner(name: &str, dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    become_user(OWNER);
    stderr_to(&dir.join("owner.stderr"));
    let (tx, rx) = shmq::Builder::new()
        .name(name)
        .capacity(4)
        .max_message_size(1 << 20)
        .create()
        .unwrap();
    // Private first (mode 0600): the guest must be refused.
    common::touch(dir.join("private"));
    wait_file(dir, "refused");
    std::fs::set_permissions(
        common::header_path(name),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    common::touch(dir.join("created"));
    wait_file(dir, "sent");
    // First in the ring: the guest's segment message, which we cannot open.
    match rx.recv_timeout(Duration::from_secs(10)) {
        Err(shmq::RecvTimeoutError::Failed(e)) => {
            assert_eq!(e.kind(), shmq::ErrorKind::PermissionDenied, "{e}")
        }
        r => panic!("receiving another user's segment message: {r:?}"),
    }
    // Not stuck behind it: the next message comes.
    let m = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(&*m, b"after");
    drop(m);
    common::touch(dir.join("owner-got"));
    wait_file(dir, "guest-got");
    // The guest's segments sit in slots we may be given: sends still go through.
    for i in 0..12u8 {
        let r = tx.send_timeout(&vec![i; SEG], Duration::from_secs(10));
        assert!(
            r.is_ok(),
            "owner's send {i} beside the guest's segments: {r:?}"
        );
        let m = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(m.len() == SEG && m.iter().all(|&b| b == i));
    }
    wait_file(dir, "guest-gone");
    // Last one out: the guest's segments cannot be removed by us (sticky /dev/shm).
}

/// The other user: attaches through the opened header, sends, receives what the owner
/// could not.
fn guest(name: &str, dir: &Path) {
    become_user(GUEST);
    wait_file(dir, "private");
    let e = shmq::Sender::open(name).unwrap_err();
    assert_eq!(e.kind(), shmq::ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("no permission"), "{e}");
    common::touch(dir.join("refused"));
    wait_file(dir, "created");
    let tx = shmq::Sender::open(name).unwrap();
    let rx = shmq::Receiver::open(name).unwrap();
    tx.send(&vec![5u8; SEG]).unwrap();
    tx.send(b"after").unwrap();
    common::touch(dir.join("sent"));
    wait_file(dir, "owner-got");
    // The message the owner passed over is ours to take.
    let m = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(m.len() == SEG && m.iter().all(|&b| b == 5));
    drop(m);
    common::touch(dir.join("guest-got"));
    drop((tx, rx));
    common::touch(dir.join("guest-gone"));
}

/// `gc` as `uid`, with what it said written to `gc-<uid>` in the directory.
fn gc_as(uid: u32, name: &str, dir: &Path) {
    become_user(uid);
    let r = shmq::gc().unwrap();
    let removed = r.removed.iter().any(|n| n == name);
    let skipped: Vec<String> = r
        .skipped
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, e)| format!("{:?}: {e}", e.kind()))
        .collect();
    std::fs::write(
        dir.join(format!("gc-{uid}")),
        format!("removed {removed}\nskipped {skipped:?}\n"),
    )
    .unwrap();
}

fn run(role: &str, name: &str, dir: &Path) -> common::Child {
    common::Child::spawn(TEST, role, &[("name", &name), ("dir", &dir.display())])
}

#[test]
fn a_queue_shared_by_two_users_by_hand_never_gets_stuck_or_leaks_silently() {
    common::as_child(|role| {
        let name = common::param("name");
        let dir = PathBuf::from(common::param("dir"));
        match role {
            "owner" => owner(&name, &dir),
            "guest" => guest(&name, &dir),
            "gc-owner" => gc_as(OWNER, &name, &dir),
            "gc-guest" => gc_as(GUEST, &name, &dir),
            r => panic!("unknown role {r}"),
        }
    });
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("{TEST}: not root, cannot run roles as two users; nothing checked");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let _wd = Watchdog::new("two users", LIMIT);
    let g = ShmGuard::new("users");
    let name = g.name().to_string();
    let tmp = common::TempDir::new("users");
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut o = run("owner", &name, dir);
    let mut gu = run("guest", &name, dir);
    gu.wait_ok();
    let st = o.wait();
    let said = std::fs::read_to_string(dir.join("owner.stderr")).unwrap_or_default();
    assert_eq!(
        st.code(),
        Some(common::CHILD_OK),
        "owner: {st:?}, said {said}"
    );
    // The owner, last out, removed its header and said what it could not remove.
    assert!(
        said.contains(&format!("cannot remove queue {name:?}")) && said.contains("shmq gc"),
        "the last one out did not report the objects it left: {said:?}"
    );
    let left = common::leftovers(&name);
    assert!(
        !left.is_empty() && !left.contains(&format!("shmq.{name}")),
        "{left:?}"
    );
    // gc by a user who does not own them says why it leaves them; by their owner, removes
    // them. (gc leaves segments changed within 100 ms of its start alone: they may be a
    // new queue's.)
    std::thread::sleep(Duration::from_millis(300));
    run("gc-owner", &name, dir).wait_ok();
    let said = std::fs::read_to_string(dir.join(format!("gc-{OWNER}"))).unwrap();
    assert!(
        said.contains("PermissionDenied"),
        "gc by another user: {said}"
    );
    assert_eq!(common::leftovers(&name), left);
    run("gc-guest", &name, dir).wait_ok();
    let said = std::fs::read_to_string(dir.join(format!("gc-{GUEST}"))).unwrap();
    assert!(
        said.starts_with("removed true"),
        "gc by their owner: {said}"
    );
    g.assert_clean();
}

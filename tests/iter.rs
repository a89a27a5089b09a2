//! Iteration over a receiver and deadlines (issue 16, items 1 and 2).

mod common;

use common::{ShmGuard, Watchdog};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);

fn queue(g: &ShmGuard, capacity: usize) -> (shmq::Sender, shmq::Receiver) {
    shmq::Builder::new()
        .name(g.name())
        .capacity(capacity)
        .slots(2 * capacity)
        .max_participants(4)
        .create()
        .unwrap()
}

/// Child role: sends `n` numbered messages and leaves.
fn sender_role() {
    let tx = shmq::Sender::open(&common::param("name")).unwrap();
    for i in 0..common::param_as::<u32>("n") {
        tx.send(&i.to_le_bytes()).unwrap();
    }
}

/// `for m in &rx` drains what another process sent and ends once that process has left
/// (its sender detached) and the queue is empty.
#[test]
fn iter_ends_when_the_last_sender_has_left_and_the_queue_is_drained() {
    common::as_child(|_| sender_role());
    let _wd = Watchdog::new("iter", LIMIT);
    let g = ShmGuard::new("iter");
    let (tx, rx) = queue(&g, 8);
    drop(tx);
    let name = g.name().to_string();
    let mut c = common::Child::spawn(
        "iter_ends_when_the_last_sender_has_left_and_the_queue_is_drained",
        "sender",
        &[("name", &name), ("n", &100)],
    );
    // Until the child is attached (an iteration before that would end at once).
    common::wait_until(|| {
        shmq::info::inspect(&name)
            .unwrap()
            .participants
            .iter()
            .any(|p| p.role == "sender")
    });
    let mut got = Vec::new();
    for m in &rx {
        got.push(u32::from_le_bytes(m.unwrap()[..4].try_into().unwrap()));
    }
    c.wait_ok();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
    drop(rx);
    g.assert_clean();
}

/// `try_iter` takes what is waiting and stops at `Empty` with the sender still there;
/// the owning iterator (`for m in rx`) ends at `Disconnected`.
#[test]
fn try_iter_stops_at_empty_and_into_iter_at_disconnected() {
    let _wd = Watchdog::new("try_iter", LIMIT);
    let g = ShmGuard::new("tryiter");
    let (tx, rx) = queue(&g, 4);
    for i in 0..3u8 {
        tx.send(&[i]).unwrap();
    }
    let got: Vec<u8> = rx.try_iter().map(|m| m.unwrap()[0]).collect();
    assert_eq!(got, [0, 1, 2]);
    assert_eq!(rx.try_iter().count(), 0);
    tx.send(&[3]).unwrap();
    drop(tx);
    let mut n = 0;
    for m in rx {
        assert_eq!(m.unwrap()[0], 3);
        n += 1;
    }
    assert_eq!(n, 1);
    g.assert_clean();
}

/// A receive that fails (here: a message whose recorded storage kind was scribbled over)
/// is yielded as an `Err`, and the iteration goes on to the next message.
#[test]
fn a_failed_receive_is_yielded_and_the_iteration_goes_on() {
    use std::os::unix::fs::FileExt;
    let _wd = Watchdog::new("iter_failed", LIMIT);
    let g = ShmGuard::new("iterfail");
    let (tx, rx) = queue(&g, 4);
    tx.send(b"scribbled").unwrap();
    // The storage kind is at +48 of a slot record.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(g.header_path())
        .unwrap();
    for s in 0..8u64 {
        f.write_all_at(&99u64.to_ne_bytes(), common::slot_field_offset(4, 4, s, 48))
            .unwrap();
    }
    tx.send(b"intact").unwrap(); // its sender writes its own slot's kind
    drop(tx);
    let got: Vec<Result<Vec<u8>, shmq::ErrorKind>> = rx
        .iter()
        .map(|m| m.map(|m| m.to_vec()).map_err(|e| e.kind()))
        .collect();
    assert_eq!(got, [Err(shmq::ErrorKind::Corrupt), Ok(b"intact".to_vec())]);
    drop(rx);
    g.assert_clean();
}

/// Deadlines: one already past looks (tries) once; one ahead waits until it passes.
#[test]
fn deadlines_look_once_when_past_and_wait_until_they_pass() {
    let _wd = Watchdog::new("deadlines", LIMIT);
    let g = ShmGuard::new("deadline");
    let (tx, rx) = queue(&g, 1);
    let past = Instant::now();
    assert!(matches!(
        rx.recv_deadline(past),
        Err(shmq::RecvTimeoutError::Timeout)
    ));
    tx.send_deadline(b"one", past).unwrap();
    assert!(matches!(
        tx.send_deadline(b"two", past),
        Err(shmq::SendTimeoutError::Timeout)
    ));
    assert_eq!(&*rx.recv_deadline(past).unwrap(), b"one");
    let ahead = Instant::now() + Duration::from_millis(50);
    assert!(matches!(
        rx.recv_deadline(ahead),
        Err(shmq::RecvTimeoutError::Timeout)
    ));
    assert!(
        Instant::now() >= ahead,
        "returned Timeout before the deadline"
    );
    let mut loan = tx.loan_deadline(3, ahead).unwrap();
    loan.copy_from_slice(b"abc");
    loan.send().unwrap();
    assert_eq!(&*rx.recv_deadline(ahead).unwrap(), b"abc");
    drop((tx, rx));
    g.assert_clean();
}

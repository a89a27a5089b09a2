//! `shmq::shutdown`: a process that gets SIGTERM leaves its queues at once, its held
//! message redelivered, without waiting for anyone to detect its death.

use std::process::{Command, Stdio};
use std::time::Duration;

const ROLE: &str = "SHMQ_SHUTDOWN_CHILD";

/// Kills and reaps the child on drop (also when the test fails).
struct Reaped(std::process::Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn child(name: &str) -> ! {
    shmq::shutdown::exit_on_signals(|| {}).unwrap();
    let rx = shmq::Receiver::open(name).unwrap();
    let held = rx.recv().unwrap();
    assert_eq!(&*held, b"held");
    println!("holding");
    std::thread::sleep(Duration::from_secs(60));
    drop(held);
    std::process::exit(3)
}

#[test]
fn sigterm_returns_held_message_at_once_and_releases_the_record() {
    if let Ok(name) = std::env::var(ROLE) {
        child(&name);
    }
    // Manual supervision and no other watcher: only the child's own shutdown path can
    // return the message quickly (a blocked call would otherwise notice within 100 ms).
    let (tx, rx) = shmq::Builder::new()
        .capacity(4)
        .supervision(shmq::Supervision::Manual)
        .create()
        .unwrap();
    let name = tx.name().to_string();
    tx.send(b"held").unwrap();
    let mut c = Reaped(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigterm_returns_held_message_at_once_and_releases_the_record",
                "--nocapture",
            ])
            .env(ROLE, &name)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = std::io::BufReader::new(c.0.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("holding") {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "child exited early"
        );
    }
    // SAFETY: plain syscall on our own child's pid (not yet reaped, so not reused).
    unsafe { libc::kill(c.0.id() as i32, libc::SIGTERM) };
    let status = c.0.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), None);
    assert_eq!(status.code(), Some(128 + 15));
    // The message is back before we look, with no supervisor of ours involved.
    let m = rx
        .try_recv()
        .expect("the held message was returned by the exiting child");
    assert!(m.is_redelivery());
    assert_eq!(&*m, b"held");
    drop(m);
    drop((tx, rx));
    assert!(!std::path::Path::new(&format!("/dev/shm/shmq.{name}")).exists());
}

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
fn sigterm_leaves_a_held_message_to_recovery_after_the_exit() {
    if let Ok(name) = std::env::var(ROLE) {
        child(&name);
    }
    // Manual supervision and no other watcher: the child's shutdown path must not hand
    // back the message its main thread still reads (its `&[u8]` is live while the
    // process exits); the recovery after its exit does.
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
                "sigterm_leaves_a_held_message_to_recovery_after_the_exit",
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
    // Nothing was handed back while the child's `Message` was alive...
    assert!(matches!(rx.try_recv(), Err(shmq::TryRecvError::Empty)));
    // ... and the recovery after its exit redelivers it.
    shmq::Supervisor::open(&name).unwrap().run_once().unwrap();
    let m = rx
        .try_recv()
        .expect("the held message was redelivered after the child's exit");
    assert!(m.is_redelivery());
    assert_eq!(&*m, b"held");
    drop(m);
    drop((tx, rx));
    assert!(!std::path::Path::new(&format!("/dev/shm/shmq.{name}")).exists());
}

const ROLE2: &str = "SHMQ_SHUTDOWN_SENDER";

#[test]
fn release_all_while_another_thread_sends_loses_no_accepted_message() {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;
    if let Ok(name) = std::env::var(ROLE2) {
        let tx = shmq::Sender::open(&name).unwrap();
        let ok = Arc::new(AtomicU64::new(0));
        let ok2 = ok.clone();
        std::thread::spawn(move || loop {
            let sent = tx
                .loan(4096)
                .map_err(|_| ())
                .and_then(|l| l.send().map_err(|_| ()));
            match sent {
                Ok(()) => {
                    ok2.fetch_add(1, SeqCst);
                }
                Err(()) => std::thread::sleep(Duration::from_millis(1)),
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        shmq::shutdown::release_all();
        std::thread::sleep(Duration::from_millis(100));
        // Exit status = how many sends returned Ok, modulo nothing: print it.
        println!("sent-ok {}", ok.load(SeqCst));
        std::process::exit(0);
    }
    let (tx, rx) = shmq::Builder::new()
        .capacity(8)
        .max_message_size(4096)
        .create()
        .unwrap();
    let name = tx.name().to_string();
    let c = Reaped(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "release_all_while_another_thread_sends_loses_no_accepted_message",
                "--nocapture",
            ])
            .env(ROLE2, &name)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Keep our sender until the child's is attached, so the receiver does not see a
    // queue without senders before the child starts.
    let t0 = std::time::Instant::now();
    while shmq::info::inspect(&name).unwrap().alive("sender") < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "child never attached"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(tx);
    let mut got = 0u64;
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(_) => got += 1,
            Err(shmq::RecvTimeoutError::Disconnected) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let mut c = c;
    let out = c.0.wait_with_output_ref();
    let sent: u64 = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("sent-ok ")
                .map(|n| n.trim().parse().unwrap())
        })
        .expect("child reported");
    assert_eq!(
        got, sent,
        "every send that returned Ok is received, nothing more"
    );
    drop(rx);
    assert!(!std::path::Path::new(&format!("/dev/shm/shmq.{name}")).exists());
}

trait WaitOutput {
    fn wait_with_output_ref(&mut self) -> String;
}
impl WaitOutput for std::process::Child {
    fn wait_with_output_ref(&mut self) -> String {
        let mut s = String::new();
        std::io::Read::read_to_string(self.stdout.as_mut().unwrap(), &mut s).unwrap();
        let _ = self.wait();
        s
    }
}

//! Liveness judgement (DESIGN §4): a participant is dead when the kernel has dropped its
//! OFD lock, cross-checked with the pid and start time recorded at registration. These
//! tests check that
//!
//! * pid reuse cannot make a dead participant look alive: the dead process's pid is
//!   really handed to another process (through `/proc/sys/kernel/ns_last_pid`, or by
//!   cycling through the pid space when `pid_max` is small) and recovery still happens,
//!   also when a child made without `fork` handlers (a raw `clone`) inherited the dead
//!   process's lock so that only the start-time cross-check can tell;
//! * a zombie (SIGKILLed, not reaped) is dead, and recovered before it is reaped;
//! * a SIGSTOPped participant is alive however long it is stopped: nothing of it is
//!   recovered while others use the queue, and after SIGCONT it goes on with its loan and
//!   its held message intact;
//! * a stopped producer holding a loan blocks nobody and takes no ring capacity.

mod crash_support;

use crash_support::*;
use shmq::{Builder, Sender, Supervision};
use std::time::{Duration, Instant};

const CAP: usize = 4;
const SLOTS: usize = 2 * CAP + 16;
const LIMIT: u64 = 120;

fn env(name: &str, kv: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut v = vec![(NAME_VAR, name.to_string())];
    v.extend_from_slice(kv);
    v
}

fn child(role: &str) -> ! {
    match role {
        "holder" => holder_child(),
        "loaner" => loaner_child(),
        "resuming-producer" => resuming_producer_child(),
        "resuming-consumer" => resuming_consumer_child(),
        "producer" => producer_child(),
        "headless-holder" => headless_holder_child(),
        r => panic!("unknown role {r}"),
    }
}

/// Sends seqs 0..3 of producer 1, fills a loan with seq 3, emits `loaned`, waits for the
/// go file (the parent stops and continues it meanwhile), sends the loan, then seqs 4, 5.
fn resuming_producer_child() -> ! {
    let tx = Builder::new().name(queue_name()).open_sender().unwrap();
    for seq in 0..3 {
        tx.send(&payload(1, seq, mixed_size(1, seq))).unwrap();
    }
    let mut loan = tx.loan(5000).unwrap();
    fill_payload(&mut loan[..], 1, 3);
    emit("loaned");
    wait_for_file(std::path::Path::new(&param("SHMQ_T_GO")));
    assert_eq!(
        check(&loan),
        Ok((1, 3)),
        "the loan's bytes changed while stopped"
    );
    loan.send().unwrap();
    for seq in 4..6 {
        tx.send(&payload(1, seq, mixed_size(1, seq))).unwrap();
    }
    drop(tx);
    child_exit()
}

/// Receives one message and keeps it (emits `holding <id> <seq>`), waits for the go
/// file, checks the message is intact and was not taken away, acks it.
fn resuming_consumer_child() -> ! {
    let rx = Builder::new().name(queue_name()).open_receiver().unwrap();
    emit("ready");
    let m = rx.recv().unwrap();
    let (id, seq) = check(&m).unwrap();
    emit(&format!("holding {id} {seq}"));
    wait_for_file(std::path::Path::new(&param("SHMQ_T_GO")));
    assert_eq!(
        check(&m),
        Ok((id, seq)),
        "the held message changed while stopped"
    );
    assert!(!m.is_redelivery());
    drop(m); // the ack must still work: the slot is still ours
    drop(rx);
    child_exit()
}

extern "C" fn exit_this_thread(_: libc::c_int) {
    // SAFETY: a raw exit of the calling thread only (not exit_group); async-signal-safe.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
}

/// Receives one message and keeps it, then ends the process's *main* thread (the thread
/// group leader, whose `/proc/<pid>/stat` then says `Z`) while this thread goes on;
/// emits `headless`, waits for the go file, checks its message, acks it and exits.
fn headless_holder_child() -> ! {
    let rx = Builder::new().name(queue_name()).open_receiver().unwrap();
    emit("ready");
    let m = rx.recv().unwrap();
    let pid = std::process::id() as i32;
    // SAFETY: installs a handler that only makes a raw syscall, then signals the main
    // thread (tid == pid), which is parked in the test harness and holds no lock of ours.
    unsafe {
        libc::signal(
            libc::SIGUSR1,
            exit_this_thread as *const () as libc::sighandler_t,
        );
        libc::syscall(libc::SYS_tgkill, pid, pid, libc::SIGUSR1);
    }
    wait_until("the main thread to exit", || {
        proc_stat(pid).map(|s| s.0) == Some(b'Z')
    });
    emit("headless");
    wait_for_file(std::path::Path::new(&param("SHMQ_T_GO")));
    assert_eq!(check(&m), Ok((0, 0)));
    drop(m);
    // The ack must have freed the slot: nobody took the message away meanwhile.
    emit("acked");
    drop(rx);
    child_exit()
}

#[test]
fn process_whose_main_thread_exited_is_alive_while_another_thread_runs() {
    const TEST: &str = "process_whose_main_thread_exited_is_alive_while_another_thread_runs";
    if let Some(r) = role() {
        child(&r)
    }
    let _wd = Watchdog::new(TEST, LIMIT);
    let g = ShmGuard::new("live");
    let dir = LogDir::new(&g.name);
    let (tx, rx) = Builder::new().name(&g.name).capacity(CAP).create().unwrap();
    let mut c = Proc::spawn_test(
        TEST,
        "headless",
        "headless-holder",
        &env(&g.name, &[("SHMQ_T_GO", dir.file_str("go"))]),
    );
    c.expect("ready");
    tx.send(&payload(0, 0, 3000)).unwrap();
    c.expect("headless");
    assert_eq!(
        proc_stat(c.pid()).map(|s| s.0),
        Some(b'Z'),
        "the leader shows as a zombie"
    );
    // Give the supervisor thread (pidfd + 100 ms rescans) time to misjudge it.
    std::thread::sleep(Duration::from_millis(500));
    let sup = shmq::Supervisor::open(&g.name).unwrap();
    let recovered = sup.run_once().unwrap();
    let info = shmq::info::inspect(&g.name).unwrap();
    let early = rx.try_recv();
    assert!(
        recovered == 0 && info.recoveries == 0 && early.is_err(),
        "a live process (its main thread gone, another thread holding a message) was judged \
         dead: run_once recovered {recovered}, recoveries {}, its message redelivered: {:?}",
        info.recoveries,
        early.map(|m| (check(&m), m.is_redelivery()))
    );
    assert_eq!(info.slot_states[2], 1, "it still holds its message");
    dir.touch("go");
    c.expect("acked");
    c.expect_success();
    drop(sup);
    assert_all_slots_free(&tx, &rx, CAP, SLOTS);
    drop((tx, rx));
    g.assert_clean();
}

// ---------------------------------------------------------------------------------------
// Pid reuse

/// A process that now has a dead participant's pid.
enum Squatter {
    /// A paused child of ours (killed and reaped on drop).
    Ours(i32),
    /// Some other process of the system took the pid first.
    Foreign,
}

impl Drop for Squatter {
    fn drop(&mut self) {
        if let Squatter::Ours(pid) = *self {
            // SAFETY: plain syscalls on our own unreaped child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            unregister_pid(pid);
        }
    }
}

/// Forks a child that keeps pausing if its pid is `target` and exits at once otherwise.
/// Returns its pid (reaped already if it is not `target`).
fn fork_probe(target: i32) -> i32 {
    // SAFETY: the child only makes async-signal-safe calls (getpid, close_range, pause,
    // _exit) before it ends.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: as above.
        unsafe {
            if libc::getpid() == target {
                // Hold none of our descriptors (and so none of our locks).
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
                loop {
                    libc::pause();
                }
            }
            libc::_exit(0);
        }
    }
    assert!(pid > 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid != target {
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    } else {
        register_pid(pid);
    }
    pid
}

/// Makes a process with pid `target` (which must be free: its process died and was
/// reaped). `Err` explains why it could not be done here.
fn squat_pid(target: i32) -> Result<Squatter, String> {
    let taken = || std::path::Path::new(&format!("/proc/{target}")).exists();
    // 1. ns_last_pid: the next fork gets last + 1 (needs CAP_CHECKPOINT_RESTORE or
    //    CAP_SYS_ADMIN; other processes forking meanwhile make us retry).
    let mut why = String::new();
    for _ in 0..200 {
        if taken() {
            return Ok(Squatter::Foreign);
        }
        if let Err(e) = std::fs::write("/proc/sys/kernel/ns_last_pid", (target - 1).to_string()) {
            why = format!("cannot write /proc/sys/kernel/ns_last_pid ({e})");
            break;
        }
        if fork_probe(target) == target {
            return Ok(Squatter::Ours(target));
        }
    }
    // 2. Cycle through the pid space, if it is small enough to do in seconds.
    let pid_max: i64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(i64::MAX);
    if pid_max > 1 << 17 {
        return Err(format!(
            "{why}; and pid_max is {pid_max}, too many pids to cycle through in a test"
        ));
    }
    let t0 = Instant::now();
    for _ in 0..2 * pid_max {
        if taken() {
            return Ok(Squatter::Foreign);
        }
        if fork_probe(target) == target {
            return Ok(Squatter::Ours(target));
        }
        if t0.elapsed() > Duration::from_secs(40) {
            break;
        }
    }
    Err(format!(
        "{why}; cycling through {pid_max} pids did not reach {target} in time"
    ))
}

/// A producer child (Manual supervision) sends two messages and keeps a loan; the test
/// SIGKILLs and reaps it, makes another process take its pid, and only then runs
/// recovery, which must still judge it dead: its messages are delivered, its loan freed,
/// its records released (the receiver sees `Disconnected`).
///
/// With `inherit`, the producer forked a child first that inherited its descriptors, so
/// its participant locks outlive it: the lock alone would say "alive", and only the
/// recorded pid and start time, compared with `/proc`, can tell the process is gone.
fn pid_reuse(test: &str, inherit: bool) {
    let _wd = Watchdog::new(test, LIMIT);
    let g = ShmGuard::new("live");
    let dir = LogDir::new(&g.name);
    let (tx, rx) = Builder::new()
        .name(&g.name)
        .capacity(CAP)
        .supervision(Supervision::Manual)
        .create()
        .unwrap();
    drop(tx);
    if inherit {
        // Orphaned grandchildren come to us, so we can reap the one that inherits.
        // SAFETY: plain prctl on ourselves.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    let mut a = Proc::spawn_test(
        test,
        "a",
        "loaner",
        &env(
            &g.name,
            &[
                ("SHMQ_T_ID", "1".into()),
                ("SHMQ_T_SENDS", "2".into()),
                ("SHMQ_T_LOANS", "1".into()),
                ("SHMQ_T_LOG", dir.file_str("a")),
                ("SHMQ_T_SUP", "manual".into()),
                ("SHMQ_T_FORK", if inherit { "1" } else { "0" }.into()),
            ],
        ),
    );
    let heir: Option<i32> = match a.expect("loaned") {
        s if inherit => {
            let pid: i32 = s.parse().expect("heir pid");
            register_pid(pid);
            Some(pid)
        }
        _ => None,
    };
    // Kills the heir however this test ends (it holds our stdout, so a heir left running
    // after a failed assertion would hold up whoever reads the test's output).
    struct KillHeir(Option<i32>);
    impl Drop for KillHeir {
        fn drop(&mut self) {
            if let Some(h) = self.0 {
                // SAFETY: plain syscalls on a process this test made; a no-op if it is gone.
                unsafe {
                    libc::kill(h, libc::SIGKILL);
                    libc::waitpid(h, std::ptr::null_mut(), libc::WNOHANG);
                }
            }
        }
    }
    let mut kill_heir = KillHeir(heir);
    let a_pid = a.pid();
    let (_, a_start) = proc_stat(a_pid).expect("a is running");
    let sup = shmq::Supervisor::open(&g.name).unwrap();
    assert_eq!(
        sup.run_once().unwrap(),
        0,
        "a live producer must not be recovered"
    );
    if heir.is_some() {
        // The inherited lock alone already answers "alive" for a's records.
        let info = shmq::info::inspect(&g.name).unwrap();
        assert!(info.participants.iter().all(|p| p.alive));
    }

    a.kill();
    a.expect_killed("by the test");
    if let Some(h) = heir {
        // SAFETY: probing a process we registered; signal 0 sends nothing.
        assert_eq!(unsafe { libc::kill(h, 0) }, 0, "the heir keeps running");
        let info = shmq::info::inspect(&g.name).unwrap();
        assert!(
            info.participants.iter().all(|p| p.alive),
            "the heir holds the dead producer's locks, so the lock alone says alive: {:?}",
            info.participants
        );
    }
    // Start times are in clock ticks (1/100 s): make sure a new process gets a later one.
    std::thread::sleep(Duration::from_millis(30));
    let squatter = match squat_pid(a_pid) {
        Ok(s) => {
            let (_, start) = proc_stat(a_pid).expect("the squatter runs with a's pid");
            assert_ne!(start, a_start, "the new process with a's pid started later");
            eprintln!(
                "{test}: pid {a_pid} of the dead producer now belongs to {} (start time {start} vs {a_start})",
                match s {
                    Squatter::Ours(_) => "a process of ours",
                    Squatter::Foreign => "another task (process or thread) of the system",
                }
            );
            Some(s)
        }
        Err(why) => {
            eprintln!(
                "{test}: could not make another process take pid {a_pid} ({why}); checking recovery with the pid unused instead"
            );
            None
        }
    };

    let n = sup.run_once().unwrap();
    assert_eq!(
        n, 2,
        "the dead producer's monitor and sender records are recovered"
    );
    for seq in 0..2 {
        let m = rx.recv().unwrap();
        assert_eq!(check(&m), Ok((1, seq)));
    }
    assert!(
        matches!(rx.recv(), Err(shmq::RecvError::Disconnected)),
        "the dead sender no longer counts"
    );
    drop(squatter);
    if let Some(h) = heir {
        // SAFETY: our adopted grandchild: kill and reap it, which drops the locks it
        // inherited (and its share of the queue's lifecycle lock).
        unsafe {
            libc::kill(h, libc::SIGKILL);
            if libc::waitpid(h, std::ptr::null_mut(), 0) != h {
                // Not adopted after all: wait until the kernel has ended it.
                wait_until("the heir to die", || {
                    proc_stat(h).map_or(true, |(s, _)| s == b'Z')
                });
            }
        }
        unregister_pid(h);
        kill_heir.0 = None; // reaped: its pid may be anyone's now
    }
    drop(sup);
    let tx = Sender::open(&g.name).unwrap();
    assert_all_slots_free(&tx, &rx, CAP, SLOTS);
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn dead_participant_is_recovered_even_though_its_pid_now_belongs_to_another_process() {
    if let Some(r) = role() {
        child(&r)
    }
    pid_reuse(
        "dead_participant_is_recovered_even_though_its_pid_now_belongs_to_another_process",
        false,
    );
}

#[test]
fn dead_participant_whose_lock_a_forked_child_inherited_is_recovered_once_its_pid_is_reused() {
    if let Some(r) = role() {
        child(&r)
    }
    pid_reuse(
        "dead_participant_whose_lock_a_forked_child_inherited_is_recovered_once_its_pid_is_reused",
        true,
    );
}

// ---------------------------------------------------------------------------------------
// Zombies

/// A consumer child holding a message is SIGKILLed and left unreaped; its message must be
/// redelivered while it is still a zombie.
fn zombie(test: &str, sup: Supervision) {
    let _wd = Watchdog::new(test, LIMIT);
    let g = ShmGuard::new("live");
    let (tx, rx) = Builder::new()
        .name(&g.name)
        .capacity(CAP)
        .supervision(sup)
        .create()
        .unwrap();
    let mut h = Proc::spawn_test(
        test,
        "holder",
        "holder",
        &env(
            &g.name,
            &[
                ("SHMQ_T_HOLD", "1".into()),
                (
                    "SHMQ_T_SUP",
                    if sup == Supervision::Manual {
                        "manual"
                    } else {
                        "thread"
                    }
                    .into(),
                ),
            ],
        ),
    );
    h.expect("ready");
    tx.send(&payload(0, 0, 3000)).unwrap();
    assert_eq!(h.expect("holding"), "0 0");
    h.kill();
    let is_zombie = || proc_stat(h.pid()).map(|s| s.0) == Some(b'Z');
    // The leader shows Z as soon as it has exited; wait until every thread of the killed
    // process is gone too (the last one out closes its files and so drops its locks).
    let tasks = |pid: i32| std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    wait_until("the killed child to be a zombie", || {
        is_zombie() && tasks(h.pid()) == 1
    });
    let m = match sup {
        Supervision::Thread => {
            // The supervisor thread alone must notice and recover it.
            loop {
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(m) => break m,
                    Err(shmq::RecvTimeoutError::Timeout) => assert!(is_zombie()),
                    Err(e) => panic!("recv: {e}"),
                }
            }
        }
        Supervision::Manual => {
            let s = shmq::Supervisor::open(&g.name).unwrap();
            let info = shmq::info::inspect(&g.name).unwrap();
            assert_eq!(
                info.dead(),
                2,
                "the zombie's records are seen dead: {:?}",
                info.participants
            );
            assert_eq!(
                s.run_once().unwrap(),
                2,
                "the zombie's monitor and receiver are recovered"
            );
            rx.try_recv().expect("the held message is back")
        }
    };
    assert!(is_zombie(), "recovered while still a zombie");
    assert_eq!(check(&m), Ok((0, 0)));
    assert!(m.is_redelivery());
    drop(m);
    h.expect_killed("by the test");
    assert_all_slots_free(&tx, &rx, CAP, SLOTS);
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn zombie_is_recovered_before_it_is_reaped_with_a_supervisor_thread() {
    if let Some(r) = role() {
        child(&r)
    }
    zombie(
        "zombie_is_recovered_before_it_is_reaped_with_a_supervisor_thread",
        Supervision::Thread,
    );
}

#[test]
fn zombie_is_recovered_before_it_is_reaped_in_manual_mode() {
    if let Some(r) = role() {
        child(&r)
    }
    zombie(
        "zombie_is_recovered_before_it_is_reaped_in_manual_mode",
        Supervision::Manual,
    );
}

// ---------------------------------------------------------------------------------------
// Stopped processes

fn stopped(pid: i32) -> bool {
    proc_stat(pid).map(|s| s.0) == Some(b'T')
}

#[test]
fn stopped_participants_are_not_recovered_and_resume_with_their_loan_and_message_intact() {
    const TEST: &str =
        "stopped_participants_are_not_recovered_and_resume_with_their_loan_and_message_intact";
    if let Some(r) = role() {
        child(&r)
    }
    let _wd = Watchdog::new(TEST, LIMIT);
    let g = ShmGuard::new("live");
    let dir = LogDir::new(&g.name);
    let (tx, rx) = Builder::new().name(&g.name).capacity(CAP).create().unwrap();
    let go = [("SHMQ_T_GO", dir.file_str("go"))];
    let mut c = Proc::spawn_test(TEST, "consumer", "resuming-consumer", &env(&g.name, &go));
    c.expect("ready");
    let mut p = Proc::spawn_test(TEST, "producer", "resuming-producer", &env(&g.name, &go));
    p.expect("loaned");
    assert_eq!(
        c.expect("holding"),
        "1 0",
        "the only consumer got the first message"
    );
    p.signal(libc::SIGSTOP);
    c.signal(libc::SIGSTOP);
    wait_until("both children to stop", || {
        stopped(p.pid()) && stopped(c.pid())
    });

    // Two seconds of traffic (and supervision) around the stopped pair.
    let sup = shmq::Supervisor::open(&g.name).unwrap();
    let t0 = Instant::now();
    let (mut sent, mut got_p) = (0u64, Vec::new());
    // At least 2 s, and at least 10 laps of the ring, however slow the machine.
    while t0.elapsed() < Duration::from_secs(2) || sent < 10 * CAP as u64 {
        for _ in 0..CAP {
            if tx.try_send(&payload(0, sent, mixed_size(0, sent))).is_ok() {
                sent += 1;
            }
        }
        while let Ok(m) = rx.try_recv() {
            assert!(
                !m.is_redelivery(),
                "nothing may be redelivered while its holder is stopped"
            );
            match check(&m).unwrap() {
                (1, s) => got_p.push(s),
                (0, _) => {}
                k => panic!("unexpected message {k:?}"),
            }
        }
        assert_eq!(sup.run_once().unwrap(), 0, "a stopped process is alive");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(stopped(p.pid()) && stopped(c.pid()));
    let info = shmq::info::inspect(&g.name).unwrap();
    assert_eq!(
        info.dead(),
        0,
        "stopped participants look alive: {:?}",
        info.participants
    );
    assert_eq!(info.recoveries, 0);
    assert_eq!(
        info.slot_states[1..],
        [1, 1, 0],
        "the loan and the held message are still theirs"
    );
    assert_eq!(
        got_p,
        vec![1, 2],
        "the producer's queued messages went to the others"
    );
    eprintln!(
        "{TEST}: {sent} messages went through while the pair was stopped for {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    p.signal(libc::SIGCONT);
    c.signal(libc::SIGCONT);
    dir.touch("go");
    p.expect_success();
    c.expect_success();
    for seq in 3..6 {
        let m = rx.recv().unwrap();
        assert_eq!(
            check(&m),
            Ok((1, seq)),
            "the loan is sent after SIGCONT, then the rest"
        );
        assert!(!m.is_redelivery());
    }
    drop(sup);
    assert_all_slots_free(&tx, &rx, CAP, SLOTS);
    drop((tx, rx));
    g.assert_clean();
}

#[test]
fn stopped_producer_holding_a_loan_blocks_no_one_and_takes_no_ring_capacity() {
    const TEST: &str = "stopped_producer_holding_a_loan_blocks_no_one_and_takes_no_ring_capacity";
    if let Some(r) = role() {
        child(&r)
    }
    let _wd = Watchdog::new(TEST, LIMIT);
    let g = ShmGuard::new("live");
    let dir = LogDir::new(&g.name);
    let (tx, rx) = Builder::new().name(&g.name).capacity(CAP).create().unwrap();
    let go = [("SHMQ_T_GO", dir.file_str("go"))];
    let mut p = Proc::spawn_test(TEST, "stopped", "resuming-producer", &env(&g.name, &go));
    p.expect("loaned");
    p.signal(libc::SIGSTOP);
    wait_until("the producer to stop", || stopped(p.pid()));
    for seq in 0..3 {
        assert_eq!(check(&rx.recv().unwrap()), Ok((1, seq)));
    }
    // Exact capacity, lap after lap, beside the stopped loan.
    for lap in 0..20u64 {
        for i in 0..CAP as u64 {
            tx.try_send(&payload(0, lap * 100 + i, 100)).unwrap();
        }
        assert!(
            matches!(
                tx.try_send(&payload(0, 99, 40)),
                Err(shmq::TrySendError::Full)
            ),
            "lap {lap}: capacity is exactly {CAP} beside a stopped loan"
        );
        for i in 0..CAP as u64 {
            assert_eq!(check(&rx.try_recv().unwrap()), Ok((0, lap * 100 + i)));
        }
    }
    // Every slot but the stopped loan's can be loaned.
    let loans: Vec<_> = (0..SLOTS - 1).map(|_| tx.try_loan(64).unwrap()).collect();
    assert!(matches!(tx.try_loan(64), Err(shmq::TrySendError::Full)));
    drop(loans);
    // A whole other producer process streams through meanwhile.
    let mut q = Proc::spawn_test(
        TEST,
        "other",
        "producer",
        &env(
            &g.name,
            &[
                ("SHMQ_T_ID", "2".into()),
                ("SHMQ_T_COUNT", "200".into()),
                ("SHMQ_T_LOG", dir.file_str("q")),
            ],
        ),
    );
    q.expect("ready");
    for seq in 0..200 {
        assert_eq!(check(&rx.recv().unwrap()), Ok((2, seq)));
    }
    q.expect_success();
    assert!(stopped(p.pid()), "the loan's owner was stopped all along");
    p.signal(libc::SIGCONT);
    dir.touch("go");
    p.expect_success();
    for seq in 3..6 {
        assert_eq!(check(&rx.recv().unwrap()), Ok((1, seq)));
    }
    assert_all_slots_free(&tx, &rx, CAP, SLOTS);
    drop((tx, rx));
    g.assert_clean();
}

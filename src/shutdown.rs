//! Graceful shutdown on SIGINT / SIGTERM.
//!
//! By default a signal kills the process like any crash, and the other participants'
//! supervisors repair what it left within milliseconds. [`exit_on_signals`] does the same
//! repair *before* the process exits, so nothing waits for detection: every handle of this
//! process is released (unsent loans discarded, held messages redelivered or dropped per
//! the queue's [`Delivery`](crate::Delivery)), and a queue this process was the last to use
//! is unlinked from `/dev/shm`.

use crate::error::Error;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Releases every shmq participant record of this process, in every queue it is attached
/// to, as recovery would after its death, and unlinks the queues it was the last to use.
/// Handles still held afterwards are inert: their later drops are no-ops, and using them
/// is a logic error (messages they held may have been redelivered). Call it only on the
/// way out of the process.
pub fn release_all() {
    for q in crate::queue::attached() {
        q.abandon();
    }
}

/// Starts a thread that, on the first SIGINT or SIGTERM, runs `before_exit`, then
/// [`release_all`], then exits the process with status `128 + signal`.
///
/// ```no_run
/// shmq::shutdown::exit_on_signals(|| eprintln!("shutting down")).unwrap();
/// ```
///
/// # Errors
/// If the signal handlers cannot be installed.
pub fn exit_on_signals(before_exit: impl FnOnce() + Send + 'static) -> Result<(), Error> {
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Error::io("cannot install signal handlers", e))?;
    std::thread::Builder::new()
        .name("shmq-shutdown".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                before_exit();
                release_all();
                std::process::exit(128 + sig);
            }
        })
        .map_err(|e| Error::io("cannot start the shutdown thread", e))?;
    Ok(())
}

//! Graceful shutdown on SIGINT / SIGTERM.
//!
//! By default a signal kills the process like any crash, and the other participants'
//! supervisors repair what it left within milliseconds. [`exit_on_signals`] leaves
//! cleanly instead, before the process exits:
//!
//! 1. every handle of this process stops: operations fail with `Disconnected` (blocked
//!    calls are woken), and operations already under way finish, so a send that commits
//!    is delivered;
//! 2. a queue no other process is attached to is unlinked from `/dev/shm`.
//!
//! Unsent loans, held messages and the participant records themselves are left to the
//! recovery that follows the exit (within milliseconds where peers run a supervisor
//! thread): a thread may still be writing into a loan or reading a [`Message`](crate::Message),
//! and handing its slot on under it would let that write land in another message, or
//! the next producer overwrite bytes behind a live `&[u8]`. Held messages are then
//! redelivered (or dropped under [`Delivery::AtMostOnce`](crate::Delivery)).

use crate::error::Error;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Stops every shmq handle of this process, in every queue it is attached to, and unlinks
/// the queues it was the last to use (see the module
/// doc). Handles used afterwards report `Disconnected`. Call it only on the way out of
/// the process.
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

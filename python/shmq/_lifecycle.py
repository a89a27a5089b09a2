"""What keeps a queue alive across a hand-over to another process, and what runs at exit.

**Hand-over.** A queue is removed from ``/dev/shm`` when the last process attached to it
leaves. A parent that passes an endpoint to a child (pickled under ``spawn`` /
``forkserver``, inherited under ``fork``) and then closes its own copies before the child
has attached would remove the queue under the child. So whenever an endpoint is pickled,
and before every ``fork``, this process takes a *hold* on the queue: an attachment that
neither sends nor receives (a supervisor record in the core), so it changes nothing a peer
can observe (receivers still see ``Disconnected`` when the last sender leaves). A hold is
let go once this process has no endpoint of the queue left **and** either as many other
processes have attached since the first hand-over as there were hand-overs (each pickle,
each fork with an endpoint open), or no child process of this process is alive any more
(none can still attach), or 60 seconds have passed since the last hand-over; and at exit.
The binding's watcher thread (``python/src/holds.rs``, Rust only, never taking the GIL)
checks every 20 ms while a hold exists; Python checks too whenever this process creates,
opens, pickles or closes an endpoint (with ``multiprocessing``'s view of its children). So
a queue handed to two children and closed here survives the first child's leaving before
the second attached, and goes when the last of them leaves. A hand-over that reaches no
process (an endpoint pickled twice for one child, a fork whose child never uses the queue)
keeps the hold until the children are gone or the 60 seconds are over.

**Exit.** Python does not promise to finalize module globals, ``multiprocessing`` children
end with ``os._exit``, and a SIGTERM with Python's default handler ends the process without
``atexit`` (the core treats that exactly like a SIGKILL: peers recover what it held). At a
normal exit (see :func:`_register_exit` for when), :func:`_at_exit` closes every open
endpoint (the drop-in's closing warning included), lets go of every hold, then asks the
core to release everything this process still has (held messages and unsent loans go to
the recovery that follows the exit), so the last process out removes the queue.

**Fork.** Objects inherited by a forked child are the parent's: the child never closes
them on the parent's behalf. Endpoints remember the pid that opened them; in another
process their ``close()`` only forgets them (the core attaches the child afresh on first
use, and that attachment is the child's own).
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from multiprocessing import util as mp_util

from . import _shmq

_lock = threading.RLock()
# Every open endpoint of this process (native and drop-in), for the exit and the sweep.
_endpoints: "weakref.WeakSet[object]" = weakref.WeakSet()
_exiting = False


def register(endpoint: object) -> None:
    """Tracks an open endpoint (it must have ``name`` and ``_close_at_exit()``)."""
    with _lock:
        _endpoints.add(endpoint)
    sweep()


def local_open(name: str, besides: object = None) -> int:
    """How many open endpoints of queue ``name`` this process has, not counting ``besides``."""
    with _lock:
        return sum(
            1
            for e in list(_endpoints)
            if e is not besides and getattr(e, "name", None) == name and not e.closed
            and getattr(e, "_pid", None) == _pid
        )


def hold(name: str) -> None:
    """Keeps queue ``name`` alive while it is handed to another process (see the module)."""
    _shmq.hold(name)


def held(name: str) -> bool:
    return _shmq.held(name)


def sweep() -> None:
    """Lets go of holds that are no longer needed (see the module doc); the watcher
    thread of the binding does the same every 20 ms, except for the children check."""
    if _shmq.held_any():
        _shmq.sweep_holds(not _children_alive())


def _children_alive() -> bool:
    """Whether a child process that could still attach a handed-over queue runs: any live
    ``multiprocessing`` child (reaping those that ended, as ``multiprocessing`` itself does
    whenever it starts a process)."""
    try:
        import multiprocessing

        return bool(multiprocessing.active_children())
    except Exception:
        return True


def _before_fork() -> None:
    # Runs in the parent just before os.fork(): a child may use any endpoint it inherits,
    # so hold every queue this process has an open endpoint of. Never raise from here.
    try:
        with _lock:
            names = {e.name for e in list(_endpoints) if not e.closed and e._pid == _pid}
        for name in names:
            hold(name)
    except Exception:
        pass


def _after_fork_in_child() -> None:
    # The inherited holds are the parent's; the binding starts a state of its own in the
    # child (holds.rs) and never touches them.
    global _lock
    _lock = threading.RLock()
    _register_exit()


def _at_exit() -> None:
    global _exiting
    if _exiting or _pid != os.getpid():
        return
    _exiting = True
    # Receivers first: a drop-in sender closing last sees whether its unread messages
    # really go with the queue (and then warns, as py-sharedmemory does at exit).
    for e in sorted(_endpoints, key=lambda e: hasattr(e, "put")):
        try:
            if getattr(e, "_pid", None) == _pid:
                e._close_at_exit()
        except Exception:
            pass
    _shmq.release_holds()
    _shmq.release_all()


def exiting() -> bool:
    return _exiting


def _register_exit() -> None:
    """Runs :func:`_at_exit` once, as late as possible, in every process: ``atexit`` for
    plain programs, and a ``multiprocessing`` finalizer of negative priority, because
    ``multiprocessing`` children end with ``os._exit`` (no ``atexit``) after running their
    finalizers, and a parent's finalizers of negative priority run only after its daemonic
    children were terminated and the others joined (so the last process out, the one that
    removes the queues, is the one that stays longest)."""
    global _pid, _exiting
    _pid = os.getpid()
    _exiting = False
    mp_util.Finalize(None, _at_exit, exitpriority=-100)


_pid = os.getpid()


def pid() -> int:
    """This process's pid, kept current across ``fork`` (no system call per use)."""
    return _pid


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
atexit.register(_at_exit)
# `multiprocessing` clears its finalizers in a forked child: register again there.
mp_util.register_after_fork(_register_exit, lambda _: _register_exit())
_register_exit()

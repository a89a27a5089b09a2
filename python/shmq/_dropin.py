"""A drop-in for py-sharedmemory 4.3.1: ``create_shared_memory_pair``,
``SharedMemorySender``, ``SharedMemoryReceiver``, with its documented behaviour (names,
arguments, exceptions and their messages, timeouts, closing, the closing warning) on shmq.

Where shmq does better, it does so without being asked (README, "Python: differences from
py-sharedmemory"): any number of producer processes may share a pair, a sender may be
passed on after it has put, a killed producer or consumer loses nothing that was accepted,
closing a sender discards nothing receivers can still read, and nothing is left in
``/dev/shm``.

**Capacity.** ``capacity`` bounds the messages a producing process has put (counting a put
from before it pickles) and that are not acknowledged yet, as in py-sharedmemory, whose
single producer makes that the pair's bound. With several producer processes each one is
bounded so, and the queue holds at most ``capacity`` unread messages in all. The
``capacity`` attribute may be lowered later (py-sharedmemory's is a plain attribute);
raising it above the value the pair was created with has no effect, since the queue was
sized then. ``0``/``None``
is "unbounded": up to :data:`UNBOUNDED` unread messages (py-sharedmemory: ``SEM_VALUE_MAX``),
then ``put`` waits (or raises ``queue.Full``).

**No "disconnected".** py-sharedmemory's ``put`` queues whether or not a receiver is
attached yet, and its ``get`` waits whether or not a sender is; the core reports
``Disconnected`` instead. So each drop-in endpoint also attaches a handle of the other
kind that is never used (a *companion*: a ``Receiver`` beside each sender, a ``Sender``
beside each receiver), which keeps the core from ever seeing the other side gone while a
drop-in endpoint is open. It costs one participant record per endpoint and process (the
pair has :data:`MAX_PARTICIPANTS`).

**Acknowledgement.** ``get`` acknowledges a message after it was unpickled (a consumer
killed while decoding gets it redelivered); the ack is immediate, so ``put_nowait`` right
after a ``get`` finds the room (py-sharedmemory's ack travels through a thread and a pipe).
"""

from __future__ import annotations

import math
import pickle
import queue
import threading
import time
import warnings
from typing import Any

from . import _errors, _lifecycle, _pickling, _shmq

_pickle_loads = pickle.loads

#: Unread messages an "unbounded" pair holds before ``put`` waits. Each costs a 256-byte
#: slot record in the queue's header, all initialised at creation: 8192 make a 2.2 MB
#: header created in a few milliseconds (65536 took 17 MB and 23 ms).
UNBOUNDED = 1 << 13

#: Participant records of a pair: every endpoint, in every process, takes two (see
#: "No disconnected"), and every process one more for its supervisor.
MAX_PARTICIPANTS = 512

_SLICE = 0.05


def _check_timeout(timeout: float | None) -> float | None:
    # As py-sharedmemory: `math.isnan` takes real numbers only (TypeError otherwise).
    if timeout is not None and math.isnan(timeout):
        raise ValueError("timeout must be a number of seconds, not NaN")
    return timeout


def _deadline(block: bool, timeout: float | None) -> float | None:
    """Monotonic deadline; ``None`` = no limit; a past value = one immediate try."""
    if not block:
        return -math.inf
    if timeout is None or timeout == math.inf or timeout > threading.TIMEOUT_MAX:
        return None
    return time.monotonic() + max(timeout, 0.0)


def _left(deadline: float | None) -> float | None:
    """Seconds left (``None`` = no limit; ``0`` = try once more, then give up)."""
    if deadline is None:
        return None
    return max(deadline - time.monotonic(), 0.0)


def create_shared_memory_pair(
    capacity: int | None = 0, *, ctx: Any = None
) -> tuple["SharedMemorySender", "SharedMemoryReceiver"]:
    """A new pair: ``(sender, receiver)``.

    ``capacity``: how many messages a producer may have put and not yet seen acknowledged
    (``0``/``None``: unbounded). ``ctx`` is accepted for compatibility and not needed: the
    endpoints pass to processes of any start method, and to any number of them.
    """
    if capacity is not None:
        if isinstance(capacity, bool) or not isinstance(capacity, int):
            raise TypeError("capacity must be an integer or None")
        if capacity < 0:
            raise ValueError("capacity must not be negative")
    ring = min(capacity, UNBOUNDED) if capacity else UNBOUNDED
    slots = ring + 16 if not capacity else 2 * ring + 16
    tx, rx = _shmq.create(
        _shmq.Sender,
        _shmq.Receiver,
        ring,
        max_message_size=_shmq.MAX_MESSAGE_SIZE,
        slots=min(slots, (1 << 22) - 1),
        max_participants=MAX_PARTICIPANTS,
    )
    return SharedMemorySender(tx, capacity), SharedMemoryReceiver(rx, capacity)


class SharedMemorySender:
    """The producing end of a pair (py-sharedmemory's API). Thread-safe; pass it to any
    number of processes (as ``Process`` arguments, pool ``initargs`` or inherited by
    ``fork``), before or after it has put."""

    def __init__(self, handle: Any, capacity: int | None = 0) -> None:
        if isinstance(handle, str):
            handle = _shmq.Sender(handle)
        self._h = handle
        self.name: str = handle.name
        self.capacity = capacity
        self._closed = False
        self._start_in_this_process()

    def _start_in_this_process(self) -> None:
        """This process's state of the sender: at creation, and again in a forked child
        whose inherited sender is used (the core attaches its handle afresh there)."""
        self._pid = _lifecycle.pid()
        self._companion = _shmq.Receiver(self.name)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiting = 0  # threads waiting on _cond (for their own process's puts)
        self._reserved = 0
        _lifecycle.register(self)

    # -- state --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def _ensure_open(self) -> None:
        if self._closed:
            raise BrokenPipeError("Sender is closed")

    def _fresh(self) -> None:
        if self._pid != _lifecycle.pid():
            self._start_in_this_process()

    # -- put ------------------------------------------------------------------------------

    def _reserve(self, deadline: float | None) -> None:
        """Counts a put against ``capacity`` before it pickles (see the module doc), waiting
        as ``deadline`` allows; the fast case is inlined in :meth:`put`."""
        while True:
            limit = self.capacity
            with self._lock:
                self._ensure_open()
                mine = self._reserved
                if not limit or (mine < limit and mine + self._h.unacked() < limit):
                    self._reserved = mine + 1
                    return
            left = _left(deadline)
            if left is not None and left <= 0:
                raise queue.Full
            step = _SLICE if left is None else min(left, _SLICE)
            if mine < limit:
                # Wake at the first ack that makes room (the futex, not a poll).
                try:
                    self._h.wait_for_acks(step, below=limit - mine)
                except _errors.Closed:
                    self._ensure_open()
                    raise
            else:
                # Room held by this process's own puts in progress: wait for them.
                with self._lock:
                    self._waiting += 1
                    try:
                        self._cond.wait(step)
                    finally:
                        self._waiting -= 1

    def _send_slow(self, stream: list[Any], raws: list[Any], deadline: float | None) -> None:
        """Sends a pickled message once the queue has room, as ``deadline`` allows."""
        while True:
            self._ensure_open()
            left = _left(deadline)
            step = _SLICE if left is None else min(left, _SLICE)
            try:
                self._h.send_parts(stream, raws, step > 0, step)
                return
            except _errors.Full:
                if left is not None and left <= 0:
                    raise queue.Full from None
            except (_errors.Closed, _errors.Disconnected):
                # Our own close() (in another thread) detached the companion receiver
                # before this handle: report it as closed.
                self._ensure_open()
                if left is not None and left <= 0:
                    raise queue.Full from None
                time.sleep(min(step, 0.01))

    def put(self, data: Any, block: bool = True, timeout: float | None = None) -> None:
        """Puts ``data`` (any picklable object). ``queue.Full`` if there is no room in time
        (at once with ``block=False`` or ``timeout <= 0``); ``BrokenPipeError`` if closed;
        ``OSError`` (``errno.ENOSPC``) if ``/dev/shm`` is full; pickling errors unchanged.
        Nothing is taken from the capacity when a put fails."""
        if timeout is not None and math.isnan(timeout):
            raise ValueError("timeout must be a number of seconds, not NaN")
        if self._pid != _lifecycle._pid:
            self._start_in_this_process()
        if self._closed:
            raise BrokenPipeError("Sender is closed")
        deadline: float | None = None
        started = False
        # Fast path: room at once (one uncontended lock, no clock read).
        limit = self.capacity
        with self._lock:
            mine = self._reserved
            if not limit or (mine < limit and mine + self._h.unacked() < limit):
                self._reserved = mine + 1
                started = True
        if not started:
            deadline = _deadline(block, timeout)
            self._reserve(deadline)
        try:
            stream, raws, bufs = _pickling.dumps(data)
            try:
                try:
                    self._h.send_parts(stream, raws, False)
                except _errors.Full:
                    if deadline is None:
                        deadline = _deadline(block, timeout)
                    self._send_slow(stream, raws, deadline)
                except (_errors.Closed, _errors.Disconnected):
                    self._ensure_open()
                    if deadline is None:
                        deadline = _deadline(block, timeout)
                    self._send_slow(stream, raws, deadline)
            finally:
                if raws:
                    _pickling.release(raws, bufs)
        finally:
            with self._lock:
                self._reserved -= 1
                if self._waiting:
                    self._cond.notify_all()

    def put_nowait(self, data: Any) -> None:
        """``put(data, block=False)``."""
        self.put(data, block=False)

    def wait_for_all_ack(self, timeout: float | None = None) -> bool:
        """Waits until every message this sender put was received and acknowledged;
        ``True`` then, ``False`` if ``timeout`` passed first. ``BrokenPipeError`` if the
        sender is (or gets) closed."""
        timeout = _check_timeout(timeout)
        self._fresh()
        self._ensure_open()
        deadline = _deadline(True, timeout)
        while True:
            with self._lock:
                busy = self._reserved > 0
            left = _left(deadline)
            if not busy:
                try:
                    if self._h.wait_for_acks(left):
                        with self._lock:
                            if self._reserved == 0:
                                return True
                        continue
                except _errors.Closed:
                    self._ensure_open()
                    raise
                self._ensure_open()
                return False
            if left is not None and left <= 0:
                return False
            with self._lock:
                self._waiting += 1
                try:
                    self._cond.wait(_SLICE if left is None else min(left, _SLICE))
                finally:
                    self._waiting -= 1
            self._ensure_open()

    # -- close ------------------------------------------------------------------------------

    def _discarded(self) -> int:
        """Unread messages that go with the queue if this sender leaves now (0 if another
        handle, here or in another process, keeps the queue)."""
        if _lifecycle.local_open(self.name, besides=self) or _lifecycle.held(self.name):
            return 0
        try:
            others, unread = _shmq.peers(self.name)
        except Exception:
            return 0
        return 0 if others else unread

    def _close(self, warn: bool, stacklevel: int) -> None:
        if self._closed:
            return
        if self._pid != _lifecycle.pid():
            # Inherited from the parent and never used here: it is not ours to detach.
            self._closed = True
            return
        try:
            if warn:
                n = self._discarded()
                if n:
                    word = "message" if n == 1 else "messages"
                    warnings.warn(
                        f"Closing the sender discards {n} unacknowledged {word} that "
                        "receivers may not have read; call wait_for_all_ack() first",
                        RuntimeWarning,
                        stacklevel=stacklevel + 1,
                    )
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._h.close()
            self._companion.close()
            _lifecycle.sweep()

    def close(self) -> None:
        """Detaches the sender (idempotent). Messages it put stay readable by the
        receivers; blocked calls in other threads get ``BrokenPipeError``."""
        self._close(False, 2)

    def _close_at_exit(self) -> None:
        self._close(True, 2)

    def __enter__(self) -> "SharedMemorySender":
        self._ensure_open()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # A clean exit with messages nobody can read any more warns, pointing at the
        # user's `with` line.
        self._close(exc_type is None, 2)

    def __reduce__(self) -> tuple[Any, tuple[str, int | None]]:
        self._ensure_open()
        _lifecycle.hold(self.name)
        return (SharedMemorySender, (self.name, self.capacity))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<shmq.SharedMemorySender {self.name!r} capacity={self.capacity} {state}>"


class SharedMemoryReceiver:
    """The consuming end of a pair (py-sharedmemory's API). Thread-safe; any number of
    processes may consume from one pair, each message going to exactly one of them."""

    def __init__(self, handle: Any, capacity: int | None = 0) -> None:
        if isinstance(handle, str):
            handle = _shmq.Receiver(handle)
        self._h = handle
        self.name: str = handle.name
        self._capacity = capacity
        self._closed = False
        self._start_in_this_process()

    def _start_in_this_process(self) -> None:
        """As the sender's: at creation, and in a forked child that uses it."""
        self._pid = _lifecycle.pid()
        self._companion = _shmq.Sender(self.name)
        _lifecycle.register(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """The next object, an independent copy (NumPy arrays writable where they were
        sent writable). ``queue.Empty`` if none arrives in time (at once with
        ``block=False`` or ``timeout <= 0``); ``BrokenPipeError`` if closed."""
        if self._closed:
            raise BrokenPipeError("Receiver is closed")
        if timeout is not None and math.isnan(timeout):
            raise ValueError("timeout must be a number of seconds, not NaN")
        if self._pid != _lifecycle._pid:
            self._start_in_this_process()
        try:
            msg = self._h.recv_bytes(False)  # the fast path: a message is waiting
        except (_errors.Empty, _errors.Closed, _errors.Disconnected):
            msg = self._get_slow(_deadline(block, timeout))
        # Decoded (copying out-of-band buffers), then acknowledged, in one call.
        return msg.unpickle(_pickle_loads, True)[1]

    def _get_slow(self, deadline: float | None) -> Any:
        while True:
            left = _left(deadline)
            step = _SLICE if left is None else min(left, _SLICE)
            try:
                return self._h.recv_bytes(step > 0, step)
            except _errors.Empty:
                if left is not None and left <= 0:
                    raise queue.Empty from None
            except (_errors.Closed, _errors.Disconnected):
                # Closed by another thread (the companion sender goes with it); a
                # Disconnected without that is a moment of a concurrent close: look again.
                if self._closed:
                    raise BrokenPipeError("Receiver is closed") from None
                if left is not None and left <= 0:
                    raise queue.Empty from None
                time.sleep(min(step, 0.01))

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(block=False)

    def close(self) -> None:
        """Detaches the receiver (idempotent); blocked ``get`` calls in other threads get
        ``BrokenPipeError``."""
        if self._closed:
            return
        self._closed = True
        if self._pid == _lifecycle.pid():
            self._h.close()
            self._companion.close()
            _lifecycle.sweep()

    _close_at_exit = close

    def __enter__(self) -> "SharedMemoryReceiver":
        if self._closed:
            raise BrokenPipeError("Receiver is closed")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[str, int | None]]:
        if self._closed:
            raise BrokenPipeError("Receiver is closed")
        _lifecycle.hold(self.name)
        return (SharedMemoryReceiver, (self.name, self._capacity))

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<shmq.SharedMemoryReceiver {self.name!r} {state}>"

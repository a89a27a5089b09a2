"""shmq: a crash-safe multi-process work queue over shared memory, for Python.

Several producer processes and several consumer processes share one bounded queue; each
message goes to exactly one consumer; payloads of any size travel through shared memory
(NumPy arrays zero-copy on receive); a process killed at any moment loses nothing that was
accepted, and nothing is left in ``/dev/shm`` once the last process has left.

Two APIs:

* the **native** one, following the Rust crate: :func:`channel`, :class:`Sender`,
  :class:`Receiver` (``send``/``recv`` of any picklable object, ``send_bytes``/``recv_bytes``
  of raw buffers, ``loan`` to fill a message in place);
* a **drop-in for py-sharedmemory**: :func:`create_shared_memory_pair`,
  :class:`SharedMemorySender`, :class:`SharedMemoryReceiver`.

>>> import shmq
>>> tx, rx = shmq.channel(8)
>>> tx.send({"step": 1})
>>> rx.recv()
{'step': 1}
>>> tx.close(); rx.close()
"""

from __future__ import annotations

from typing import Any, Iterator

from . import _lifecycle, _pickling, _shmq
from ._dropin import SharedMemoryReceiver, SharedMemorySender, create_shared_memory_pair
from ._errors import (
    AlreadyExists,
    Closed,
    Corrupt,
    Disconnected,
    Empty,
    Forked,
    Full,
    InvalidArgument,
    InvalidName,
    IOFailure,
    NoSpace,
    NotAQueue,
    NotFound,
    NotPickled,
    PermissionDenied,
    ShmqError,
    TooLarge,
    TooManyParticipants,
    VersionMismatch,
)

Loan = _shmq.Loan
Message = _shmq.Message
MAX_MESSAGE_SIZE: int = _shmq.MAX_MESSAGE_SIZE

__version__ = "0.1.0"

__all__ = [
    "channel",
    "Sender",
    "Receiver",
    "Loan",
    "Message",
    "gc",
    "MAX_MESSAGE_SIZE",
    "create_shared_memory_pair",
    "SharedMemorySender",
    "SharedMemoryReceiver",
    "ShmqError",
    "Full",
    "Empty",
    "Disconnected",
    "Closed",
    "TooLarge",
    "NotPickled",
    "InvalidName",
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "NoSpace",
    "IOFailure",
    "NotAQueue",
    "VersionMismatch",
    "Corrupt",
    "TooManyParticipants",
    "Forked",
]


class _Endpoint:
    """What Sender and Receiver share: lifecycle, context manager, hand-over by name."""

    name: str
    closed: bool

    def __init__(self, name_or_handle: Any) -> None:  # the native __new__ attached it
        self._pid = _lifecycle.pid()
        _lifecycle.register(self)

    @classmethod
    def open(cls, name: str) -> Any:
        """Attaches a new handle of this kind to the existing queue ``name``."""
        return cls(name)

    def close(self) -> None:
        """Detaches this handle (idempotent). Messages stay queued for the other handles."""
        super().close()  # type: ignore[misc]
        _lifecycle.sweep()

    def _close_at_exit(self) -> None:
        super().close()  # type: ignore[misc]

    def __enter__(self) -> Any:
        if self.closed:
            raise Closed(f"{type(self).__name__} is closed")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # Handed to another process by name; hold the queue until that process attached.
        if self.closed:
            raise Closed(f"{type(self).__name__} is closed")
        _lifecycle.hold(self.name)
        return (type(self), (self.name,))


class Sender(_Endpoint, _shmq.Sender):
    """The sending side of a queue. ``Sender(name)`` attaches to an existing queue.

    Thread-safe; pickles by name (under ``spawn``/``forkserver``) and survives ``fork``
    (a child's first use attaches it afresh).
    """

    def send(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Sends ``obj`` (pickled, protocol 5; NumPy arrays and large bytes copied once,
        straight into shared memory). Blocks while the queue is full: at most ``timeout``
        seconds (``None``/``math.inf``: no limit), not at all with ``block=False``.

        Raises :class:`Full`, :class:`Disconnected` (no receiver attached),
        :class:`TooLarge`, :class:`NoSpace`, :class:`Closed`; a pickling error propagates
        unchanged and leaves the queue untouched.
        """
        stream, raws, bufs = _pickling.dumps(obj)
        if not bufs:
            self.send_parts(stream, raws, block, timeout)
            return
        try:
            self.send_parts(stream, raws, block, timeout)
        finally:
            _pickling.release(raws, bufs)

    def try_send(self, obj: Any) -> None:
        """Sends ``obj`` if there is room now; :class:`Full` otherwise."""
        self.send(obj, block=False)

    def send_timeout(self, obj: Any, timeout: float) -> None:
        """Sends ``obj``, waiting at most ``timeout`` seconds for room."""
        self.send(obj, True, timeout)


class Receiver(_Endpoint, _shmq.Receiver):
    """The receiving side of a queue. ``Receiver(name)`` attaches to an existing queue.

    Iterating over a receiver yields objects until the queue is empty and no sender is
    attached.
    """

    def recv(self, block: bool = True, timeout: float | None = None, *, copy: bool = False) -> Any:
        """The next object. NumPy arrays in it are **read-only views of shared memory**
        (zero copy; the message is acknowledged when the last of them is gone) unless
        ``copy=True``, which returns independent, owned arrays and acknowledges at once.

        Raises :class:`Empty` (nothing in time), :class:`Disconnected` (empty and no sender
        attached), :class:`Closed`, :class:`NotPickled` (a ``send_bytes`` message: use
        :meth:`recv_bytes`); an error raised while unpickling propagates unchanged (the
        message is then acknowledged).
        """
        return _pickling.loads(self.recv_bytes(block, timeout), copy)

    def try_recv(self, *, copy: bool = False) -> Any:
        """The next object if one is waiting; :class:`Empty` otherwise."""
        return self.recv(False, copy=copy)

    def recv_timeout(self, timeout: float, *, copy: bool = False) -> Any:
        """The next object, waiting at most ``timeout`` seconds."""
        return self.recv(True, timeout, copy=copy)

    def __iter__(self) -> Iterator[Any]:
        return self.iter()

    def iter(self, *, copy: bool = False) -> Iterator[Any]:
        """Yields objects as they arrive; ends when the queue is empty and no sender is
        attached (as iterating over the receiver does)."""
        while True:
            try:
                yield self.recv(copy=copy)
            except Disconnected:
                return

    def try_iter(self, *, copy: bool = False) -> Iterator[Any]:
        """Yields the objects waiting now; ends at the first :class:`Empty`."""
        while True:
            try:
                yield self.recv(False, copy=copy)
            except (Empty, Disconnected):
                return


def channel(capacity: int = 64, **options: Any) -> tuple[Sender, Receiver]:
    """A new queue of exact ``capacity`` and a fresh unique name (or ``name=``); returns
    its first sender and receiver. Other processes attach with ``Sender(tx.name)`` /
    ``Receiver(tx.name)``, or get the handles pickled or inherited.

    Options (as the Rust ``Builder``): ``name``, ``max_message_size`` (bytes, default
    1 GiB), ``max_payload_bytes``, ``slots``, ``max_participants``, ``delivery``
    (``"at_least_once"``, the default, or ``"at_most_once"``), ``max_deliveries``.
    """
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError("capacity must be an integer")
    if capacity < 1:
        raise ValueError("capacity must be at least 1")
    return _shmq.create(Sender, Receiver, capacity, **options)


def gc() -> tuple[list[str], list[str]]:
    """Removes queues no live process is attached to; returns ``(removed, skipped)``
    (each skipped entry says why)."""
    return _shmq.gc()

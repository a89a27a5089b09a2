"""The exceptions of shmq's native API.

Each core error kind is its own class under :class:`ShmqError`; where one means what a
standard exception means, it subclasses that too, so ``except queue.Full``,
``except FileNotFoundError`` or ``except OSError as e: e.errno == errno.ENOSPC`` work.
"""

from __future__ import annotations

import queue


class ShmqError(Exception):
    """Base class of every shmq error."""


class Full(ShmqError, queue.Full):
    """The queue stayed full (no room in time, or at once for a non-blocking call)."""


class Empty(ShmqError, queue.Empty):
    """No message arrived (in time, or at once for a non-blocking call)."""


class Disconnected(ShmqError):
    """The other side is gone: no receiver is attached (on send), or the queue is empty
    and no sender is attached (on receive)."""


class Closed(ShmqError, BrokenPipeError):
    """This handle (or loan) was closed, sent or released: it cannot be used again."""


class TooLarge(ShmqError, ValueError):
    """The message exceeds the queue's ``max_message_size``."""


class NotPickled(ShmqError, ValueError):
    """``recv()`` met a message not sent by ``send()`` (read it with ``recv_bytes()``)."""


class InvalidName(ShmqError, ValueError):
    """A queue name outside ``A-Za-z0-9_-`` or longer than 200 characters."""


class InvalidArgument(ShmqError, ValueError):
    """A configuration that cannot work (the message says why)."""


class NotFound(ShmqError, FileNotFoundError):
    """No queue of that name exists."""


class AlreadyExists(ShmqError, FileExistsError):
    """A queue of that name exists already."""


class PermissionDenied(ShmqError, PermissionError):
    """The queue belongs to another user (shmq's trust model is one user, mode 0600)."""


class NoSpace(ShmqError, OSError):
    """``/dev/shm`` is full (``errno.ENOSPC``); nothing was sent, the queue is usable."""


class IOFailure(ShmqError, OSError):
    """An operating-system call failed (``errno`` tells which way)."""


class NotAQueue(ShmqError):
    """The object of that name is not a shmq queue."""


class VersionMismatch(ShmqError):
    """The queue was made by an incompatible version of shmq."""


class Corrupt(ShmqError):
    """The queue's shared memory holds values no correct participant writes; ``shmq
    inspect`` says where and what to do."""


class TooManyParticipants(ShmqError):
    """Every participant record of the queue is taken."""


class Forked(ShmqError):
    """A loan or message inherited from the parent process cannot be used in a child."""

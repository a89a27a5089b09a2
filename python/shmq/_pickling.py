"""Objects to messages and back: pickle protocol 5 with out-of-band buffers.

Sending: the pickler writes its in-band stream to a collector that keeps each piece it is
handed (CPython hands ``bytes``/``bytearray`` of 64 KiB or more over whole, uncopied), and
NumPy arrays (any C- or F-contiguous, non-object array) and ``PickleBuffer`` objects come
out of band. The binding then takes **one** loan of the exact size and copies every piece
into it once, with the GIL released for large ones (layout: ``python/src/lib.rs``).

Receiving: the in-band stream is unpickled straight from shared memory. Out-of-band
buffers are either slices of the message (zero copy: read-only NumPy arrays that view
shared memory, and the message is acknowledged when the last of them is gone) or copied
into fresh ``bytearray`` objects (``copy=True``: independent, writable where the sent
array was writable, read-only where it was read-only, through pickle's READONLY_BUFFER).
The message is acknowledged only after unpickling finished, so a consumer killed while
decoding gets it redelivered.
"""

from __future__ import annotations

import pickle
import threading
from typing import Any


class _Collector:
    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: list[Any] = []

    def write(self, b: Any) -> int:
        self.parts.append(b)
        return len(b)


class _Reusable(threading.local):
    """One pickler per thread, reused: creating a ``pickle.Pickler`` costs ~2 µs, five
    times a whole small dump. Its memo is cleared before and after each dump (so it holds
    no object of the caller's), and a dump nested in another one on the same thread (a
    ``__reduce__`` that sends) gets a fresh pickler."""

    def __init__(self) -> None:
        self.out = _Collector()
        self.bufs: list[pickle.PickleBuffer] = []
        self.pickler = pickle.Pickler(self.out, protocol=5, buffer_callback=self._buffer)
        self.busy = False

    def _buffer(self, b: pickle.PickleBuffer) -> None:
        self.bufs.append(b)


_local = _Reusable()


def dumps(obj: Any) -> tuple[list[Any], list[memoryview], list[pickle.PickleBuffer]]:
    """``(stream pieces, raw out-of-band views, their PickleBuffers)``; release the views
    and buffers (:func:`release`) once sent."""
    r = _local
    if r.busy:
        out = _Collector()
        bufs: list[pickle.PickleBuffer] = []
        pickler = pickle.Pickler(out, protocol=5, buffer_callback=bufs.append)
        try:
            pickler.dump(obj)
        except BaseException:
            # Let go of the buffers collected so far now, not when the traceback goes (a
            # caller that keeps the exception could not resize a bytearray it had put).
            release([], bufs)
            raise
        parts = out.parts
    else:
        r.busy = True
        out, bufs = r.out, r.bufs
        out.parts = []
        r.bufs = []
        bufs = r.bufs
        try:
            r.pickler.clear_memo()
            r.pickler.dump(obj)
        except BaseException:
            release([], bufs)
            raise
        finally:
            r.pickler.clear_memo()
            r.bufs = []
            r.busy = False
        parts, out.parts = out.parts, []
    raws: list[memoryview] = []
    try:
        for b in bufs:
            raws.append(b.raw())
    except BaseException:
        release(raws, bufs)
        raise
    return parts, raws, bufs


def release(raws: list[memoryview], bufs: list[pickle.PickleBuffer]) -> None:
    for r in raws:
        r.release()
    for b in bufs:
        b.release()


def loads(msg: Any, copy: bool) -> Any:
    """Unpickles a received message (a ``shmq._shmq.Message``) and acknowledges it: now
    when ``copy`` or when nothing views it, else when the last view is gone."""
    done, obj = msg.unpickle(_pickle_loads, copy)
    if done:
        return obj
    # Zero copy: out-of-band buffers are slices of the message; each keeps it alive.
    try:
        soff, slen, layout = msg.pickle_layout()
        mv = memoryview(msg)
        views = [mv[off : off + n] for off, n in layout]
        with mv[soff : soff + slen] as stream:
            obj = pickle.loads(stream, buffers=views)
        mv.release()
        return obj
    finally:
        # Without views left, acknowledge now; otherwise the last view's release does.
        try:
            msg.release()
        except BufferError:
            pass


_pickle_loads = pickle.loads

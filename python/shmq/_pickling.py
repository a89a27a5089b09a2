"""Objects to messages and back: pickle protocol 5 with out-of-band buffers.

Sending: the pickler writes its in-band stream to a list that keeps each piece it is
handed (CPython hands ``bytes``/``bytearray`` of 64 KiB or more over whole, uncopied), and
NumPy arrays (any C- or F-contiguous, non-object array) and ``PickleBuffer`` objects come
out of band. The binding then takes **one** loan of the exact size and copies every piece
into it once, with the GIL released for large ones (layout: ``python/src/lib.rs``).

A plain ``ndarray`` (not a subclass) that is C- or F-contiguous and whose dtype is a
simple one (no fields, subarray, objects or metadata; it round-trips through its
``dtype.str``) is reduced here rather than by NumPy: to ``_nd(PickleBuffer(a), dtype.str,
shape[, "F"])``. What arrives is what NumPy's own protocol-5 reduction gives
(``frombuffer(buf, dtype).reshape(shape, order)``: same dtype, shape, order, read-only
flag, zero copy), for a third of the cost at 1 KB: NumPy's pickles the dtype object (its
class by reference, an argument tuple and a state tuple) and names two globals, each of
which costs the pickler and the unpickler an import lookup of about 1 µs. Other arrays
(subclasses, structured or object dtypes, non-contiguous) go NumPy's way.

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
from typing import Any

# -- NumPy arrays ------------------------------------------------------------------------

_ndarray: Any = None  # numpy.ndarray, once an array has been seen (numpy is optional)
_TOKENS: dict[int, tuple[Any, str | None]] = {}  # id(dtype) -> (dtype, its str or None)
_DTYPES: dict[str, Any] = {}  # dtype str -> dtype, on the receiving side
_CACHE_MAX = 256


def _token(dt: Any) -> str | None:
    """``dt.str`` if ``numpy.dtype(dt.str)`` is exactly ``dt``; else None (NumPy's own
    reduction then handles the array)."""
    try:
        if (
            dt.hasobject
            or dt.names is not None
            or dt.subdtype is not None
            or dt.metadata is not None
            or dt.itemsize == 0
        ):
            return None
        tok = dt.str
        import numpy

        back = numpy.dtype(tok)
        if back != dt or back.str != tok or type(back) is not type(dt) or back.metadata:
            return None
        # Arrays of this dtype must export a buffer (datetime64 and timedelta64 do not:
        # NumPy pickles those in band).
        memoryview(numpy.zeros(1, dt)).release()
        return tok
    except Exception:
        return None


def _nd(buf: Any, tok: str, shape: tuple[int, ...], order: str = "C") -> Any:
    """Rebuilds an array reduced by :meth:`_Pickler.reducer_override` (as NumPy's
    ``_frombuffer`` does)."""
    import numpy

    dt = _DTYPES.get(tok)
    if dt is None:
        dt = numpy.dtype(tok)
        if len(_DTYPES) >= _CACHE_MAX:
            _DTYPES.clear()  # bounded; the dtypes in use come back at once
        _DTYPES[tok] = dt
    a = numpy.frombuffer(buf, dt)
    if len(shape) != 1:
        a = a.reshape(shape, order=order)
    return a


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        # Called for objects of non-builtin types only; anything but a plain ndarray
        # returns at the first test.
        global _ndarray
        t = type(obj)
        if t is not _ndarray:
            if _ndarray is not None or t.__name__ != "ndarray" or t.__module__ != "numpy":
                return NotImplemented
            import numpy

            _ndarray = numpy.ndarray
            if t is not _ndarray:
                return NotImplemented
        dt = obj.dtype
        known = _TOKENS.get(id(dt))
        if known is None:
            known = (dt, _token(dt))  # the dtype is kept, so its id is not reused
            if len(_TOKENS) >= _CACHE_MAX:
                _TOKENS.clear()  # bounded (arrays of str/bytes/datetime may each have
                # their own dtype object); the dtypes in use come back at once
            _TOKENS[id(dt)] = known
        tok = known[1]
        if tok is None:
            return NotImplemented
        flags = obj.flags
        try:
            if flags.c_contiguous:
                return _nd, (pickle.PickleBuffer(obj), tok, obj.shape)
            if flags.f_contiguous:
                return _nd, (pickle.PickleBuffer(obj), tok, obj.shape, "F")
        except (ValueError, TypeError, BufferError):
            pass  # no buffer export: NumPy's way
        return NotImplemented


# -- dumps / loads -------------------------------------------------------------------------


class _Sink:
    """The pickler's file: ``write`` is the ``append`` of a list (called from C, no Python
    frame); the pickler ignores what it returns."""

    __slots__ = ("write",)

    def __init__(self, write: Any) -> None:
        self.write = write


# Idle picklers with their output lists, reused: creating a ``pickle.Pickler`` costs
# ~2 µs, five times a whole small dump. A dump pops one (or makes one when every one is in
# use: another thread's dump, or a dump nested in this one through a ``__reduce__`` that
# sends) and puts it back after; ``list.pop``/``append`` are atomic, so no lock. Its memo
# is cleared after each dump (so it holds no object of the caller's).
_IDLE: list[tuple[list[Any], list[pickle.PickleBuffer], _Pickler]] = []
_IDLE_MAX = 8


def _new_pickler() -> tuple[list[Any], list[pickle.PickleBuffer], _Pickler]:
    parts: list[Any] = []
    bufs: list[pickle.PickleBuffer] = []
    return parts, bufs, _Pickler(_Sink(parts.append), protocol=5, buffer_callback=bufs.append)


def dumps(obj: Any) -> tuple[list[Any], list[memoryview], list[pickle.PickleBuffer]]:
    """``(stream pieces, raw out-of-band views, their PickleBuffers)``; release the views
    and buffers (:func:`release`) once sent."""
    try:
        state = _IDLE.pop()
    except IndexError:
        state = _new_pickler()
    parts, pending, pickler = state
    try:
        pickler.dump(obj)
    except BaseException:
        pickler.clear_memo()
        bufs = pending[:]
        del parts[:], pending[:]
        if len(_IDLE) < _IDLE_MAX:
            _IDLE.append(state)
        # Let go of the buffers collected so far now, not when the traceback goes (a
        # caller that keeps the exception could not resize a bytearray it had put).
        release([], bufs)
        raise
    pickler.clear_memo()
    stream = parts[:]
    del parts[:]
    if not pending:
        if len(_IDLE) < _IDLE_MAX:
            _IDLE.append(state)
        return stream, [], []
    bufs = pending[:]
    del pending[:]
    if len(_IDLE) < _IDLE_MAX:
        _IDLE.append(state)
    raws: list[memoryview] = []
    try:
        for b in bufs:
            raws.append(b.raw())
    except BaseException:
        release(raws, bufs)
        raise
    return stream, raws, bufs


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
    # Zero copy: out-of-band buffers are slices of the message; each keeps it alive, and
    # the message is acknowledged when the last of them is gone (a `release()` here could
    # only refuse: `views` holds every one of them until this function returns).
    soff, slen, layout = msg.pickle_layout()
    mv = memoryview(msg)
    views = [mv[off : off + n] for off, n in layout]
    try:
        with mv[soff : soff + slen] as stream:
            return _pickle_loads(stream, buffers=views)
    except BaseException:
        # Acknowledge now if no view outlived the failed unpickling, not when the
        # traceback goes.
        for v in views:
            try:
                v.release()
            except BufferError:
                pass
        mv.release()
        try:
            msg.release()
        except BufferError:
            pass
        raise
    finally:
        mv.release()


_pickle_loads = pickle.loads

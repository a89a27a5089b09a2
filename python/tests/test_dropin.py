"""The py-sharedmemory drop-in (``create_shared_memory_pair``, ``SharedMemorySender``,
``SharedMemoryReceiver``) in one process, with threads: capacity, timeouts, closing, the
closing warning, objects and arrays, failed puts and gets, concurrency, sizes.

The behaviour checked is py-sharedmemory 4.3.1's (names, exception types and messages),
plus what shmq promises on top (closing a sender discards nothing a receiver can still
read; ``get`` acknowledges at once).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import queue
import sys
import threading
import time
import warnings

import numpy as np
import pytest

from shmq import SharedMemoryReceiver, SharedMemorySender, create_shared_memory_pair

NAN_MESSAGE = "timeout must be a number of seconds, not NaN"
WARNING_1 = (
    "Closing the sender discards 1 unacknowledged message that receivers may not have "
    "read; call wait_for_all_ack() first"
)
WARNING_2 = (
    "Closing the sender discards 2 unacknowledged messages that receivers may not have "
    "read; call wait_for_all_ack() first"
)
JOIN = 30.0  # generous upper bound for anything that should end "soon"


# -- helpers ----------------------------------------------------------------------------


@pytest.fixture
def make_pair():
    """``make_pair(capacity=1)`` -> ``(sender, receiver)``; ``make_pair.keep(endpoint)``
    tracks an extra endpoint. Every tracked endpoint is closed at teardown."""
    opened: list = []

    def make(capacity=1, **kw):
        tx, rx = create_shared_memory_pair(capacity, **kw)
        opened.extend([tx, rx])
        return tx, rx

    def keep(endpoint):
        opened.append(endpoint)
        return endpoint

    make.keep = keep
    try:
        yield make
    finally:
        for e in opened:
            e.close()


class Background:
    """Runs ``fn(*args)`` in a daemon thread; keeps its result or exception."""

    def __init__(self, fn, *args, **kwargs):
        self.started = threading.Event()
        self.value = None
        self.error: BaseException | None = None

        def target():
            self.started.set()
            try:
                self.value = fn(*args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - reported by the test
                self.error = e

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()
        assert self.started.wait(JOIN)

    def join(self, timeout=JOIN):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "background thread did not finish in time"
        return self

    def result(self):
        self.join()
        if self.error is not None:
            raise self.error
        return self.value


def later(delay, fn, *args):
    """``fn(*args)`` in a thread after ``delay`` seconds (``delay`` <= 0.5)."""
    assert delay <= 0.5

    def run():
        time.sleep(delay)
        return fn(*args)

    return Background(run)


def assert_blocked(bg: Background, for_seconds=0.2):
    time.sleep(for_seconds)
    assert bg.thread.is_alive(), f"expected a blocked call, it ended: {bg.value!r} / {bg.error!r}"


def assert_exact(excinfo, exc_type, message):
    assert excinfo.type is exc_type, f"{excinfo.type!r} is not {exc_type!r}: {excinfo.value!r}"
    assert str(excinfo.value) == message


def my_queues() -> set[str]:
    """This process's queues in /dev/shm (names carry the creating pid)."""
    tag = f"-{os.getpid()}-"
    return {n for n in os.listdir("/dev/shm") if n.startswith("shmq.") and tag in n}


def queue_files(name: str) -> set[str]:
    return {n for n in os.listdir("/dev/shm") if name in n}


def drain(rx, n):
    return [rx.get(timeout=JOIN) for _ in range(n)]


def boom():
    raise ValueError("boom")


class ExplodesOnLoad:
    __reduce__ = lambda self: (boom, ())  # noqa: E731


@dataclasses.dataclass
class Point:
    x: int
    y: float
    tags: list


class BlocksWhilePickling:
    """Its ``__reduce__`` waits for ``release``; unpickles as 7."""

    def __init__(self, entered: threading.Event, release: threading.Event):
        self.entered = entered
        self.release = release

    def __reduce__(self):
        self.entered.set()
        assert self.release.wait(JOIN)
        return (int, (7,))


class ExplodingCtx:
    """A multiprocessing context stand-in whose every attribute access raises."""

    accessed: list = []

    def __getattribute__(self, name):
        ExplodingCtx.accessed.append(name)
        raise AssertionError(f"ctx.{name} was accessed")


# -- capacity validation ------------------------------------------------------------------


@pytest.mark.parametrize("capacity", [-1, -10])
def test_negative_capacity_is_value_error(capacity):
    before = my_queues()
    with pytest.raises(ValueError) as ei:
        create_shared_memory_pair(capacity)
    assert_exact(ei, ValueError, "capacity must not be negative")
    assert my_queues() == before


@pytest.mark.parametrize(
    "capacity", [1.5, "1", True, False, np.int64(2)], ids=["float", "str", "True", "False", "np.int64"]
)
def test_non_integer_capacity_is_type_error(capacity):
    before = my_queues()
    with pytest.raises(TypeError) as ei:
        create_shared_memory_pair(capacity)
    assert_exact(ei, TypeError, "capacity must be an integer or None")
    assert my_queues() == before


@pytest.mark.parametrize(
    "capacity, exc_type, message",
    [
        (-1, ValueError, "capacity must not be negative"),
        (-10, ValueError, "capacity must not be negative"),
        (1.5, TypeError, "capacity must be an integer or None"),
        ("1", TypeError, "capacity must be an integer or None"),
        (True, TypeError, "capacity must be an integer or None"),
        (False, TypeError, "capacity must be an integer or None"),
        (np.int64(2), TypeError, "capacity must be an integer or None"),
    ],
)
def test_capacity_is_validated_before_ctx_is_touched(capacity, exc_type, message):
    ExplodingCtx.accessed.clear()
    before = my_queues()
    with pytest.raises(exc_type) as ei:
        create_shared_memory_pair(capacity, ctx=ExplodingCtx())
    assert_exact(ei, exc_type, message)
    assert ExplodingCtx.accessed == []
    assert my_queues() == before


def test_good_capacity_does_not_need_ctx(make_pair):
    ExplodingCtx.accessed.clear()
    tx, rx = make_pair(2, ctx=ExplodingCtx())
    assert ExplodingCtx.accessed == []
    assert isinstance(tx, SharedMemorySender)
    assert isinstance(rx, SharedMemoryReceiver)
    tx.put("hello")
    assert rx.get(timeout=JOIN) == "hello"
    assert tx.wait_for_all_ack(JOIN) is True


def test_capacity_is_keyword_ctx_only():
    with pytest.raises(TypeError):
        create_shared_memory_pair(1, None)  # ctx is keyword-only


@pytest.mark.parametrize("capacity", [0, None])
def test_zero_and_none_are_unbounded(make_pair, capacity):
    tx, rx = make_pair(capacity)
    for i in range(1000):
        tx.put_nowait(i)
    assert tx.wait_for_all_ack(0) is False
    assert drain(rx, 1000) == list(range(1000))
    with pytest.raises(queue.Empty):
        rx.get_nowait()
    assert tx.wait_for_all_ack(JOIN) is True


def test_default_capacity_is_unbounded(make_pair):
    tx, rx = create_shared_memory_pair()
    make_pair.keep(tx)
    make_pair.keep(rx)
    for i in range(200):
        tx.put_nowait(i)
    assert drain(rx, 200) == list(range(200))


def test_huge_capacity_is_accepted(make_pair):
    tx, rx = make_pair(2**40)
    for i in range(10):
        tx.put_nowait(i)
    assert drain(rx, 10) == list(range(10))


@pytest.mark.parametrize("capacity", [1, 5, 0, None])
def test_capacity_attribute_reads_back(make_pair, capacity):
    tx, rx = make_pair(capacity)
    assert tx.capacity == capacity
    assert type(tx.capacity) is type(capacity)


def test_capacity_attribute_can_be_lowered_but_not_raised_past_creation(make_pair):
    # py-sharedmemory's capacity is a plain attribute that its put reads every time. shmq's
    # put reads it too, but the queue was sized at creation: lowering works, raising
    # above the creation value has no effect (documented in the README and _dropin.py).
    tx, rx = make_pair(3)
    tx.capacity = 1
    tx.put_nowait("a")
    with pytest.raises(queue.Full):
        tx.put_nowait("b")
    assert rx.get(timeout=JOIN) == "a"
    tx.capacity = 10
    for i in range(3):
        tx.put_nowait(i)
    with pytest.raises(queue.Full):
        tx.put_nowait(3)
    assert drain(rx, 3) == [0, 1, 2]


# -- capacity counts put-but-unacknowledged --------------------------------------------------


def test_capacity_one_put_then_full_then_room_after_get(make_pair):
    tx, rx = make_pair(1)
    tx.put("a")
    with pytest.raises(queue.Full):
        tx.put_nowait("b")
    assert rx.get(timeout=JOIN) == "a"
    tx.put_nowait("b")  # the ack of a get is immediate
    with pytest.raises(queue.Full):
        tx.put_nowait("c")
    assert rx.get(timeout=JOIN) == "b"
    with pytest.raises(queue.Empty):
        rx.get_nowait()


def test_capacity_three(make_pair):
    tx, rx = make_pair(3)
    for i in range(3):
        tx.put_nowait(i)
    with pytest.raises(queue.Full):
        tx.put_nowait(3)
    assert rx.get(timeout=JOIN) == 0
    tx.put_nowait(3)
    with pytest.raises(queue.Full):
        tx.put_nowait(4)
    assert drain(rx, 3) == [1, 2, 3]
    assert tx.wait_for_all_ack(JOIN) is True


def test_put_still_pickling_counts_against_capacity(make_pair):
    tx, rx = make_pair(1)
    entered, release = threading.Event(), threading.Event()
    bg = Background(tx.put, BlocksWhilePickling(entered, release))
    try:
        assert entered.wait(JOIN)
        with pytest.raises(queue.Full):
            tx.put_nowait("other")
        assert tx.wait_for_all_ack(0.05) is False
        with pytest.raises(queue.Empty):
            rx.get_nowait()
    finally:
        release.set()
    assert bg.result() is None
    assert rx.get(timeout=JOIN) == 7
    assert tx.wait_for_all_ack(JOIN) is True
    tx.put_nowait("other")
    assert rx.get(timeout=JOIN) == "other"


def test_close_while_pickling_fails_that_put(make_pair):
    tx, rx = make_pair(1)
    entered, release = threading.Event(), threading.Event()
    bg = Background(tx.put, BlocksWhilePickling(entered, release))
    try:
        assert entered.wait(JOIN)
        tx.close()
    finally:
        release.set()
    bg.join()
    assert type(bg.error) is BrokenPipeError, repr(bg.error)
    assert str(bg.error) == "Sender is closed"
    with pytest.raises(queue.Empty):
        rx.get(timeout=0.1)


# -- timeouts -----------------------------------------------------------------------------

IMMEDIATE = [
    dict(block=False),
    dict(block=False, timeout=10),
    dict(block=False, timeout=-10),
    dict(block=False, timeout=None),
    dict(timeout=0),
    dict(timeout=0.0),
    dict(timeout=-10),
    dict(block=True, timeout=-0.5),
]


@pytest.mark.parametrize("kwargs", IMMEDIATE, ids=repr)
def test_put_full_at_once(make_pair, kwargs):
    tx, rx = make_pair(1)
    tx.put("first")
    t0 = time.monotonic()
    with pytest.raises(queue.Full) as ei:
        tx.put("second", **kwargs)
    assert time.monotonic() - t0 < 5
    assert ei.type is queue.Full
    assert str(ei.value) == ""
    assert not tx.closed
    assert rx.get(timeout=JOIN) == "first"
    tx.put("second", **kwargs)  # room now: the same call succeeds
    assert rx.get(timeout=JOIN) == "second"
    with pytest.raises(queue.Empty):
        rx.get_nowait()


def test_put_with_short_timeout_raises_full(make_pair):
    tx, rx = make_pair(1)
    tx.put("first")
    t0 = time.monotonic()
    with pytest.raises(queue.Full) as ei:
        tx.put("second", timeout=0.05)
    assert ei.type is queue.Full
    assert time.monotonic() - t0 < JOIN
    assert rx.get(timeout=JOIN) == "first"
    with pytest.raises(queue.Empty):
        rx.get_nowait()


@pytest.mark.parametrize("kwargs", IMMEDIATE, ids=repr)
def test_get_empty_at_once(make_pair, kwargs):
    tx, rx = make_pair(1)
    t0 = time.monotonic()
    with pytest.raises(queue.Empty) as ei:
        rx.get(**kwargs)
    assert time.monotonic() - t0 < 5
    assert ei.type is queue.Empty
    assert str(ei.value) == ""
    assert not rx.closed
    tx.put("x")
    assert rx.get(**kwargs) == "x"  # ready now: the same call succeeds


def test_get_nowait_empty(make_pair):
    tx, rx = make_pair(1)
    with pytest.raises(queue.Empty) as ei:
        rx.get_nowait()
    assert ei.type is queue.Empty
    tx.put(1)
    assert rx.get_nowait() == 1


def test_get_with_short_timeout_raises_empty(make_pair):
    tx, rx = make_pair(1)
    t0 = time.monotonic()
    with pytest.raises(queue.Empty) as ei:
        rx.get(timeout=0.05)
    assert ei.type is queue.Empty
    assert time.monotonic() - t0 < JOIN


@pytest.mark.parametrize("timeout", [None, math.inf, 1e300], ids=["None", "inf", "1e300"])
def test_put_unlimited_timeout_waits_for_room(make_pair, timeout):
    tx, rx = make_pair(1)
    tx.put("first")
    freer = later(0.2, rx.get, True, JOIN)
    t0 = time.monotonic()
    tx.put("second", timeout=timeout)
    assert time.monotonic() - t0 < JOIN
    assert freer.result() == "first"
    assert rx.get(timeout=JOIN) == "second"


@pytest.mark.parametrize("timeout", [None, math.inf, 1e300], ids=["None", "inf", "1e300"])
def test_get_unlimited_timeout_waits_for_message(make_pair, timeout):
    tx, rx = make_pair(1)
    putter = later(0.2, tx.put, "late")
    assert rx.get(timeout=timeout) == "late"
    assert putter.result() is None


@pytest.mark.parametrize("timeout", [None, math.inf, 1e300], ids=["None", "inf", "1e300"])
def test_wait_for_all_ack_unlimited_timeout_waits(make_pair, timeout):
    tx, rx = make_pair(1)
    tx.put("x")
    getter = later(0.2, rx.get, True, JOIN)
    assert tx.wait_for_all_ack(timeout) is True
    assert getter.result() == "x"


@pytest.mark.parametrize(
    "call",
    [
        lambda tx, rx: tx.put(1, timeout=math.nan),
        lambda tx, rx: tx.put(1, block=False, timeout=math.nan),
        lambda tx, rx: tx.put(1, True, float("nan")),
        lambda tx, rx: tx.put(1, timeout=np.float64("nan")),
        lambda tx, rx: rx.get(timeout=math.nan),
        lambda tx, rx: rx.get(block=False, timeout=math.nan),
        lambda tx, rx: tx.wait_for_all_ack(math.nan),
        lambda tx, rx: tx.wait_for_all_ack(timeout=math.nan),
    ],
    ids=["put", "put-nonblocking", "put-positional", "put-np-nan", "get", "get-nonblocking",
         "wait", "wait-kw"],
)
def test_nan_timeout_is_value_error(make_pair, call):
    tx, rx = make_pair(1)
    with pytest.raises(ValueError) as ei:
        call(tx, rx)
    assert_exact(ei, ValueError, NAN_MESSAGE)
    # Nothing was put, nothing taken, both ends still usable.
    assert not tx.closed and not rx.closed
    with pytest.raises(queue.Empty):
        rx.get_nowait()
    assert tx.wait_for_all_ack(0) is True
    tx.put_nowait("ok")
    assert rx.get(timeout=JOIN) == "ok"


def test_nan_timeout_on_closed_sender_is_still_value_error(make_pair):
    # py-sharedmemory checks the timeout before the open state on the sender.
    tx, rx = make_pair(1)
    tx.close()
    with pytest.raises(ValueError) as ei:
        tx.put(1, timeout=math.nan)
    assert_exact(ei, ValueError, NAN_MESSAGE)
    with pytest.raises(ValueError) as ei:
        tx.wait_for_all_ack(math.nan)
    assert_exact(ei, ValueError, NAN_MESSAGE)


def test_nan_timeout_on_closed_receiver_is_broken_pipe(make_pair):
    tx, rx = make_pair(1)
    rx.close()
    with pytest.raises(BrokenPipeError) as ei:
        rx.get(timeout=math.nan)
    assert_exact(ei, BrokenPipeError, "Receiver is closed")
    with pytest.raises(BrokenPipeError) as ei:
        rx.get(block=False, timeout=math.nan)
    assert_exact(ei, BrokenPipeError, "Receiver is closed")


@pytest.mark.parametrize(
    "call",
    [
        lambda tx, rx: tx.put(1, timeout="1"),
        lambda tx, rx: rx.get(timeout="1"),
        lambda tx, rx: tx.wait_for_all_ack("1"),
    ],
    ids=["put", "get", "wait"],
)
def test_string_timeout_is_type_error(make_pair, call):
    # py-sharedmemory's normalize_timeout calls math.isnan(timeout): a str gives
    # TypeError("must be real number, not str").
    tx, rx = make_pair(1)
    with pytest.raises(TypeError) as ei:
        call(tx, rx)
    assert_exact(ei, TypeError, "must be real number, not str")
    with pytest.raises(queue.Empty):
        rx.get_nowait()


def test_wait_for_all_ack_states(make_pair):
    tx, rx = make_pair(2)
    assert tx.wait_for_all_ack() is True  # before any put
    assert tx.wait_for_all_ack(0) is True
    assert tx.wait_for_all_ack(-1) is True
    tx.put("x")
    t0 = time.monotonic()
    assert tx.wait_for_all_ack(0.05) is False  # never raises on timeout
    assert tx.wait_for_all_ack(0) is False
    assert tx.wait_for_all_ack(-10) is False
    assert time.monotonic() - t0 < JOIN
    assert rx.get(timeout=JOIN) == "x"
    assert tx.wait_for_all_ack(5) is True
    assert tx.wait_for_all_ack(0) is True
    assert tx.wait_for_all_ack() is True
    tx.put("y")
    tx.put("z")
    assert tx.wait_for_all_ack(0.05) is False
    assert rx.get(timeout=JOIN) == "y"
    assert tx.wait_for_all_ack(0.05) is False
    assert rx.get(timeout=JOIN) == "z"
    assert tx.wait_for_all_ack(5) is True


# -- close ----------------------------------------------------------------------------------


def test_close_is_idempotent_and_sets_closed(make_pair):
    tx, rx = make_pair(1)
    assert tx.closed is False and rx.closed is False
    tx.close()
    assert tx.closed is True and rx.closed is False
    tx.close()
    assert tx.closed is True
    rx.close()
    assert rx.closed is True
    rx.close()
    assert rx.closed is True


@pytest.mark.parametrize(
    "call",
    [
        lambda tx: tx.put(1),
        lambda tx: tx.put(1, block=False),
        lambda tx: tx.put(1, timeout=0),
        lambda tx: tx.put_nowait(1),
        lambda tx: tx.wait_for_all_ack(),
        lambda tx: tx.wait_for_all_ack(0),
        lambda tx: tx.__enter__(),
        lambda tx: pickle.dumps(tx),
    ],
    ids=["put", "put-nonblocking", "put-timeout0", "put_nowait", "wait", "wait0", "enter",
         "pickle"],
)
def test_closed_sender_raises_broken_pipe(make_pair, call):
    tx, rx = make_pair(1)
    tx.close()
    with pytest.raises(BrokenPipeError) as ei:
        call(tx)
    assert_exact(ei, BrokenPipeError, "Sender is closed")


def test_closed_sender_with_statement_raises(make_pair):
    tx, rx = make_pair(1)
    tx.close()
    with pytest.raises(BrokenPipeError) as ei:
        with tx:
            pytest.fail("entered a closed sender")
    assert_exact(ei, BrokenPipeError, "Sender is closed")


@pytest.mark.parametrize(
    "call",
    [
        lambda rx: rx.get(),
        lambda rx: rx.get(timeout=0),
        lambda rx: rx.get(block=False),
        lambda rx: rx.get_nowait(),
        lambda rx: rx.__enter__(),
        lambda rx: pickle.dumps(rx),
    ],
    ids=["get", "get-timeout0", "get-nonblocking", "get_nowait", "enter", "pickle"],
)
def test_closed_receiver_raises_broken_pipe(make_pair, call):
    tx, rx = make_pair(1)
    tx.put("unread")
    rx.close()
    with pytest.raises(BrokenPipeError) as ei:
        call(rx)
    assert_exact(ei, BrokenPipeError, "Receiver is closed")


def test_closed_receiver_with_statement_raises(make_pair):
    tx, rx = make_pair(1)
    rx.close()
    with pytest.raises(BrokenPipeError) as ei:
        with rx:
            pytest.fail("entered a closed receiver")
    assert_exact(ei, BrokenPipeError, "Receiver is closed")


def test_with_statement_returns_self_and_closes(make_pair):
    tx, rx = make_pair(1)
    with tx as s, rx as r:
        assert s is tx and r is rx
        tx.put("x")
        assert rx.get(timeout=JOIN) == "x"
    assert tx.closed and rx.closed


def test_with_statement_closes_on_exception(make_pair):
    tx, rx = make_pair(1)
    with pytest.raises(KeyError):
        with tx, rx:
            raise KeyError("k")
    assert tx.closed and rx.closed


@pytest.mark.parametrize("timeout", [None, 20], ids=["no-timeout", "timeout"])
def test_close_wakes_blocked_get(make_pair, timeout):
    tx, rx = make_pair(1)
    bg = Background(rx.get, timeout=timeout)
    assert_blocked(bg)
    rx.close()
    bg.join()
    assert type(bg.error) is BrokenPipeError, repr(bg.error)
    assert str(bg.error) == "Receiver is closed"


@pytest.mark.parametrize("timeout", [None, 20], ids=["no-timeout", "timeout"])
def test_close_wakes_capacity_blocked_put(make_pair, timeout):
    tx, rx = make_pair(1)
    tx.put("first")
    bg = Background(tx.put, "second", timeout=timeout)
    assert_blocked(bg)
    tx.close()
    bg.join()
    assert type(bg.error) is BrokenPipeError, repr(bg.error)
    assert str(bg.error) == "Sender is closed"
    # The message put before the close is still readable, the blocked one was not put.
    assert rx.get(timeout=JOIN) == "first"
    with pytest.raises(queue.Empty):
        rx.get(timeout=0.1)


@pytest.mark.parametrize("timeout", [None, 20], ids=["no-timeout", "timeout"])
def test_close_wakes_blocked_wait_for_all_ack(make_pair, timeout):
    tx, rx = make_pair(1)
    tx.put("unread")
    bg = Background(tx.wait_for_all_ack, timeout)
    assert_blocked(bg)
    tx.close()
    bg.join()
    assert type(bg.error) is BrokenPipeError, repr(bg.error)
    assert str(bg.error) == "Sender is closed"
    assert rx.get(timeout=JOIN) == "unread"


def test_blocked_get_survives_sender_close(make_pair):
    # Closing the only sender is not "disconnected" for the drop-in: get keeps waiting.
    tx, rx = make_pair(1)
    bg = Background(rx.get, timeout=JOIN)
    assert_blocked(bg)
    tx.close()
    assert_blocked(bg)
    rx.close()
    bg.join()
    assert type(bg.error) is BrokenPipeError, repr(bg.error)
    assert str(bg.error) == "Receiver is closed"


def test_blocked_get_receives_message_put_just_before_sender_close(make_pair):
    tx, rx = make_pair(1)
    bg = Background(rx.get, timeout=JOIN)
    assert_blocked(bg)
    tx.put("last words")
    tx.close()
    assert bg.result() == "last words"


def test_close_wakes_put_blocked_on_full_queue(make_pair):
    # Two senders of one pair (capacity 1 each): the queue holds at most 1 unread message,
    # so the second sender's put waits for room in the queue itself.
    tx, rx = make_pair(1)
    tx2 = make_pair.keep(pickle.loads(pickle.dumps(tx)))
    tx.put("first")
    bg = Background(tx2.put, "second", timeout=JOIN)
    assert_blocked(bg)
    tx2.close()
    bg.join()
    assert type(bg.error) is BrokenPipeError, repr(bg.error)
    assert str(bg.error) == "Sender is closed"
    assert rx.get(timeout=JOIN) == "first"


def test_close_wakes_put_blocked_on_full_queue_after_receiver_closed(make_pair):
    tx, rx = make_pair(1)
    tx2 = make_pair.keep(pickle.loads(pickle.dumps(tx)))
    tx.put("first")
    bg = Background(tx2.put, "second", timeout=JOIN)
    assert_blocked(bg)
    rx.close()
    tx.close()
    assert_blocked(bg)
    tx2.close()
    bg.join()
    assert type(bg.error) is BrokenPipeError, repr(bg.error)
    assert str(bg.error) == "Sender is closed"


def test_closing_receiver_leaves_sender_working(make_pair):
    tx, rx = make_pair(0)
    rx.close()
    tx.put(1)
    tx.put_nowait(2)
    tx.put(3, block=False)
    assert tx.wait_for_all_ack(0.05) is False
    assert not tx.closed
    tx.close()  # explicit close: silent (pytest turns warnings into errors)


def test_closing_sender_leaves_receiver_working(make_pair):
    tx, rx = make_pair(0)
    tx.put("a")
    tx.put("b")
    tx.close()
    assert rx.get(timeout=JOIN) == "a"
    assert rx.get_nowait() == "b"
    with pytest.raises(queue.Empty) as ei:
        rx.get(timeout=0.1)  # empty, not "disconnected"
    assert ei.type is queue.Empty
    assert not rx.closed


def test_pickled_receiver_keeps_working_after_original_closes(make_pair):
    tx, rx = make_pair(2)
    rx2 = make_pair.keep(pickle.loads(pickle.dumps(rx)))
    assert isinstance(rx2, SharedMemoryReceiver)
    assert rx2.name == rx.name
    rx.close()
    tx.put("x")
    assert rx2.get(timeout=JOIN) == "x"
    assert tx.wait_for_all_ack(JOIN) is True


def test_pickled_sender_keeps_working_after_original_closes(make_pair):
    tx, rx = make_pair(2)
    tx2 = make_pair.keep(pickle.loads(pickle.dumps(tx)))
    assert isinstance(tx2, SharedMemorySender)
    assert tx2.name == tx.name
    assert tx2.capacity == 2
    tx.close()
    tx2.put("y")
    assert rx.get(timeout=JOIN) == "y"
    assert tx2.wait_for_all_ack(JOIN) is True


def test_pickled_endpoints_queue_removed_once_all_closed():
    # Pickling in-process (copy.deepcopy, a pool that never started, ...) must not keep
    # the queue in /dev/shm once every endpoint of this process is closed.
    tx, rx = create_shared_memory_pair(1)
    name = tx.name
    try:
        rx2 = pickle.loads(pickle.dumps(rx))
        tx2 = pickle.loads(pickle.dumps(tx))
        tx2.put(1)
        assert rx2.get(timeout=JOIN) == 1
    finally:
        for e in (tx, rx):
            e.close()
    rx2.close()
    tx2.close()
    deadline = time.monotonic() + 5
    while queue_files(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert queue_files(name) == set(), "queue left in /dev/shm after closing every endpoint"


# -- the closing warning ------------------------------------------------------------------


def _with_exit_warnings(tx):
    """Runs ``with tx: pass``; returns (warnings caught, line of the with statement)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = sys._getframe().f_lineno + 1
        with tx:
            pass
    return caught, line


@pytest.mark.parametrize("n, text", [(1, WARNING_1), (2, WARNING_2)])
def test_with_exit_warns_when_unread_messages_are_discarded(make_pair, n, text):
    tx, rx = make_pair(0)
    for i in range(n):
        tx.put(i)
    rx.close()
    caught, line = _with_exit_warnings(tx)
    assert [str(w.message) for w in caught] == [text]
    w = caught[0]
    assert w.category is RuntimeWarning
    assert w.filename == __file__
    assert w.lineno == line
    assert tx.closed


def test_with_exit_warning_with_put_inside_block(make_pair):
    tx, rx = make_pair(0)
    rx.close()
    with pytest.warns(RuntimeWarning) as record:
        with tx:
            tx.put("lost")
    assert [str(w.message) for w in record] == [WARNING_1]
    assert record[0].filename == __file__
    assert tx.closed


def test_with_exit_warning_as_error_still_closes(make_pair):
    tx, rx = make_pair(0)
    tx.put(1)
    rx.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning) as ei:
            with tx:
                pass
    assert str(ei.value) == WARNING_1
    assert tx.closed


def test_no_warning_when_drained(make_pair):
    tx, rx = make_pair(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with tx:
            tx.put(1)
            tx.put(2)
            assert drain(rx, 2) == [1, 2]
            rx.close()
    assert tx.closed


def test_no_warning_when_exception_leaves_with_block(make_pair):
    tx, rx = make_pair(0)
    tx.put(1)
    rx.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ZeroDivisionError):
            with tx:
                tx.put(2)
                1 / 0  # noqa: B018
    assert tx.closed


def test_no_warning_on_explicit_close(make_pair):
    tx, rx = make_pair(0)
    tx.put(1)
    tx.put(2)
    rx.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tx.close()
    assert tx.closed


def test_no_warning_while_receiver_open_and_messages_survive(make_pair):
    tx, rx = make_pair(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with tx:
            tx.put("a")
            tx.put(["b"])
    assert tx.closed
    # Not discarded: the receiver still reads them after the sender closed.
    assert rx.get(timeout=JOIN) == "a"
    assert rx.get(timeout=JOIN) == ["b"]
    with pytest.raises(queue.Empty):
        rx.get(timeout=0.1)


def test_no_warning_on_second_with_exit(make_pair):
    tx, rx = make_pair(0)
    tx.put(1)
    rx.close()
    with pytest.warns(RuntimeWarning):
        with tx:
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tx.__exit__(None, None, None)  # already closed: nothing to say
        tx.close()


# -- objects ------------------------------------------------------------------------------


def test_put_snapshots_at_call_time(make_pair):
    tx, rx = make_pair(0)
    lst = [1, 2, 3]
    arr = np.arange(10)
    ba = bytearray(b"abc" * 30000)
    tx.put(lst)
    tx.put(arr)
    tx.put(ba)
    lst.append(4)
    arr[:] = -1
    ba[:3] = b"XYZ"
    assert rx.get(timeout=JOIN) == [1, 2, 3]
    np.testing.assert_array_equal(rx.get(timeout=JOIN), np.arange(10))
    assert rx.get(timeout=JOIN) == bytearray(b"abc" * 30000)


def test_received_objects_are_independent_and_outlive_close(make_pair):
    tx, rx = make_pair(0)
    arr = np.arange(1000, dtype=np.float64)
    tx.put({"a": arr, "b": [1, 2]})
    tx.put(arr)
    tx.put(bytes(range(256)) * 1000)
    got1 = rx.get(timeout=JOIN)
    got2 = rx.get(timeout=JOIN)
    got3 = rx.get(timeout=JOIN)
    tx.close()
    rx.close()
    import gc

    gc.collect()
    np.testing.assert_array_equal(got1["a"], arr)
    np.testing.assert_array_equal(got2, arr)
    assert got3 == bytes(range(256)) * 1000
    got1["a"][:] = 5  # writable and private
    got2 += 1
    assert got1["a"].sum() == 5000
    np.testing.assert_array_equal(got2, arr + 1)
    assert not np.shares_memory(got1["a"], got2)


def _recursive_list():
    r: list = [1]
    r.insert(0, r)
    return r


ROUND_TRIP = {
    "None": None,
    "True": True,
    "False": False,
    "zero": 0,
    "int": -17,
    "bigint": 2**1000 + 12345,
    "neg-bigint": -(2**70),
    "float": 1.5,
    "inf": math.inf,
    "neg-zero": -0.0,
    "complex": complex(1.5, -2.25),
    "str": "",
    "unicode": "héllo wörld ✓ 🚀 \u0000 末",
    "bytes0": b"",
    "bytes1": b"\x00",
    "bytes100k": bytes(range(256)) * 400,
    "bytearray": bytearray(b"\x01\x02\x03"),
    "bytearray100k": bytearray(os.urandom(100_000)),
    "list": [1, "a", None, 2.5],
    "dict": {"a": 1, 2: "b", (3, 4): [5, {"x": b"y"}]},
    "tuple": (1, (2, (3, ())), []),
    "set": {1, 2, "three", (4, 5)},
    "frozenset": frozenset({1, 2}),
    "nested": {"l": [{"s": {1, 2}}, (b"", bytearray(b"z"))], "t": ({"k": [None]},)},
    "dataclass": Point(1, 2.5, ["a", "b"]),
    "range": range(3, 30, 3),
}


@pytest.mark.parametrize("key", list(ROUND_TRIP))
def test_round_trip_values(make_pair, key):
    value = ROUND_TRIP[key]
    tx, rx = make_pair(1)
    tx.put(value)
    got = rx.get(timeout=JOIN)
    assert type(got) is type(value)
    assert got == value
    if isinstance(value, float):
        assert math.copysign(1.0, got) == math.copysign(1.0, value)
    assert tx.wait_for_all_ack(5) is True


def test_round_trip_recursive_list(make_pair):
    tx, rx = make_pair(1)
    tx.put(_recursive_list())
    got = rx.get(timeout=JOIN)
    assert type(got) is list and len(got) == 2
    assert got[0] is got
    assert got[1] == 1


def test_round_trip_keeps_shared_references(make_pair):
    tx, rx = make_pair(1)
    a = [1, 2]
    arr = np.arange(5)
    tx.put([a, a, arr, arr, {"x": a}])
    x = rx.get(timeout=JOIN)
    assert x[0] == [1, 2]
    assert x[0] is x[1]
    assert x[2] is x[3]
    assert x[4]["x"] is x[0]
    np.testing.assert_array_equal(x[2], arr)


def _array_root(arr):
    """The end of an array's base chain (through arrays and memoryviews)."""
    obj = arr
    while True:
        if isinstance(obj, np.ndarray):
            if obj.base is None:
                return obj
            obj = obj.base
        elif isinstance(obj, memoryview):
            obj = obj.obj
        else:
            return obj


def _arrays():
    c2 = np.arange(24, dtype=np.float64).reshape(4, 6)
    structured = np.array(
        [(1, 2.5, b"ab"), (-3, 4.0, b"cd")],
        dtype=[("i", "<i4"), ("f", "<f8"), ("s", "S2")],
    )
    sub = np.zeros(3, dtype=[("a", "<i2"), ("v", "<f4", (2,))])
    sub["a"] = [1, 2, 3]
    sub["v"] = [[1, 2], [3, 4], [5, 6]]
    return {
        "float32": np.linspace(-1, 1, 17, dtype=np.float32),
        "float64": np.linspace(-1, 1, 33),
        "int8": np.arange(-128, 128, dtype=np.int8),
        "uint64": np.array([0, 1, 2**64 - 1, 2**63], dtype=np.uint64),
        "complex128": np.array([1 + 2j, -3.5j, 0], dtype=np.complex128),
        "bool": np.array([True, False, True, True]),
        "big-endian": np.arange(10, dtype=">i4"),
        "fortran": np.asfortranarray(c2),
        "0-d": np.array(3.25),
        "0-d-int": np.array(7, dtype=np.int16),
        "empty": np.empty((0, 3)),
        "empty-1d": np.array([], dtype=np.int64),
        "structured": structured,
        "structured-subarray": sub,
        "object": np.array([1, "two", None, [3], {"f": 4.0}], dtype=object),
        "unicode": np.array(["a", "héllo", "✓🚀", ""]),
        "bytes-dtype": np.array([b"ab", b"", b"xyz"]),
        "3-d": np.arange(60, dtype=np.int32).reshape(3, 4, 5),
        "strided": np.arange(20)[::2],
        "negative-stride": np.arange(20, dtype=np.float32)[::-1],
        "transposed": c2.T,
        "2-d-slice": c2[1:3, ::2],
        "datetime": np.array(["2024-01-01", "2025-06-30"], dtype="datetime64[D]"),
    }


@pytest.mark.parametrize("key", list(_arrays()))
def test_round_trip_arrays(make_pair, key):
    a = _arrays()[key]
    tx, rx = make_pair(0)
    tx.put(a)
    tx.put({"nested": [a]})
    b = rx.get(timeout=JOIN)
    c = rx.get(timeout=JOIN)["nested"][0]
    for got in (b, c):
        assert type(got) is np.ndarray
        assert got.dtype == a.dtype
        assert got.shape == a.shape
        if a.dtype == object:
            assert got.tolist() == a.tolist()
        else:
            np.testing.assert_array_equal(got, a)
        assert got.flags.c_contiguous or got.flags.f_contiguous
        if a.flags.f_contiguous and not a.flags.c_contiguous:
            assert got.flags.f_contiguous
        assert got.flags.writeable
        assert got.flags.aligned
        root = _array_root(got)
        assert isinstance(root, bytearray) or (
            isinstance(root, np.ndarray) and root.flags.owndata
        ), f"array memory ends in {type(root)!r}"
        assert not np.shares_memory(got, a)
    assert not np.shares_memory(b, c)
    # Writable and private.
    if a.dtype != object and a.size:
        b[...] = c[...]  # still works
        flat = b.reshape(-1)
        flat[0] = flat[-1]
        if a.dtype.names is None:
            np.testing.assert_array_equal(c, a)


@pytest.mark.parametrize("key", ["float64", "fortran", "0-d", "structured", "unicode", "big-endian"])
def test_read_only_array_arrives_read_only(make_pair, key):
    a = _arrays()[key].copy(order="K")
    a.flags.writeable = False
    tx, rx = make_pair(0)
    tx.put(a)
    w = a.copy(order="K")
    tx.put(w)
    ro = rx.get(timeout=JOIN)
    rw = rx.get(timeout=JOIN)
    np.testing.assert_array_equal(ro, a)
    np.testing.assert_array_equal(rw, a)
    assert ro.flags.writeable is False
    assert rw.flags.writeable is True
    with pytest.raises(ValueError):
        ro[...] = rw
    root = _array_root(ro)
    assert isinstance(root, bytearray) or (isinstance(root, np.ndarray) and root.flags.owndata)


def test_received_arrays_share_no_memory(make_pair):
    tx, rx = make_pair(1)
    a = np.arange(1 << 16, dtype=np.int64)
    received = []
    for _ in range(4):  # the same slot / segment is likely reused every time
        tx.put(a)
        received.append(rx.get(timeout=JOIN))
    for i, x in enumerate(received):
        np.testing.assert_array_equal(x, a)
        assert not np.shares_memory(x, a)
        for y in received[i + 1 :]:
            assert not np.shares_memory(x, y)
    received[0][:] = 0
    for y in received[1:]:
        np.testing.assert_array_equal(y, a)


def test_pickle_buffer_round_trip(make_pair):
    tx, rx = make_pair(0)
    tx.put(pickle.PickleBuffer(bytearray(b"writable")))
    tx.put(pickle.PickleBuffer(b"read-only"))
    w = rx.get(timeout=JOIN)
    r = rx.get(timeout=JOIN)
    assert bytes(w) == b"writable"
    assert bytes(r) == b"read-only"
    assert memoryview(w).readonly is False
    assert memoryview(r).readonly is True


# -- failed puts and gets ---------------------------------------------------------------


@pytest.mark.parametrize(
    "make_bad",
    [lambda: (lambda x: x), lambda: threading.Lock(), lambda: [1, {"k": threading.Lock()}]],
    ids=["lambda", "lock", "nested-lock"],
)
def test_failed_put_raises_pickling_error_unchanged(make_pair, make_bad):
    bad = make_bad()
    with pytest.raises(Exception) as expected:
        pickle.dumps(bad, protocol=5)
    tx, rx = make_pair(1)
    with pytest.raises(Exception) as ei:
        tx.put(bad)
    assert ei.type is expected.type
    assert str(ei.value) == str(expected.value)
    with pytest.raises(expected.type):
        tx.put_nowait(bad)
    assert not tx.closed
    assert tx.wait_for_all_ack(0) is True
    tx.put_nowait("good")  # capacity 1: the failed puts took nothing
    assert rx.get(timeout=JOIN) == "good"
    with pytest.raises(queue.Empty):
        rx.get(timeout=0.1)


def _try_put(tx, obj):
    try:
        tx.put(obj)
    except TypeError:
        return True
    return False


def test_failed_put_releases_buffer_exports(make_pair):
    tx, rx = make_pair(1)
    small = bytearray(b"s" * 100)
    big = bytearray(b"b" * (1 << 20))
    arr = np.arange(1000)
    assert _try_put(tx, (pickle.PickleBuffer(small), big, arr, threading.Lock()))
    small.extend(b"more")  # BufferError if an export is left
    big.extend(b"more")
    del big[:10]
    arr.resize(2000, refcheck=False)
    tx.put_nowait(small)
    assert rx.get(timeout=JOIN) == small


def test_failed_put_releases_buffer_exports_while_error_is_alive(make_pair):
    # The caught exception (kept by a log, a list of errors, pytest.raises...) must not
    # keep the sent buffers exported: py-sharedmemory releases its views on every path.
    tx, rx = make_pair(1)
    ba = bytearray(b"x" * 100)
    with pytest.raises(TypeError) as ei:
        tx.put((pickle.PickleBuffer(ba), threading.Lock()))
    assert ei.value is not None  # still referenced here
    ba.extend(b"y")
    assert len(ba) == 101


def test_unpickling_error_propagates_and_acks(make_pair):
    tx, rx = make_pair(1)
    tx.put(ExplodesOnLoad())
    with pytest.raises(ValueError) as ei:
        rx.get(timeout=JOIN)
    assert_exact(ei, ValueError, "boom")
    assert tx.wait_for_all_ack(5) is True
    with pytest.raises(queue.Empty):
        rx.get_nowait()  # acknowledged: not redelivered
    assert not tx.closed and not rx.closed
    tx.put_nowait("after")  # capacity 1: the room is back
    assert rx.get(timeout=JOIN) == "after"
    assert tx.wait_for_all_ack(5) is True


def test_unpickling_error_between_good_messages(make_pair):
    tx, rx = make_pair(0)
    tx.put(1)
    tx.put([ExplodesOnLoad()])
    tx.put(np.arange(3))
    assert rx.get(timeout=JOIN) == 1
    with pytest.raises(ValueError, match="^boom$"):
        rx.get(timeout=JOIN)
    np.testing.assert_array_equal(rx.get(timeout=JOIN), np.arange(3))
    assert tx.wait_for_all_ack(5) is True


# -- threads ----------------------------------------------------------------------------


def test_threads_four_producers_four_consumers(make_pair):
    tx, rx = make_pair(3)
    producers, per_producer = 4, 50
    results: list[list] = [[] for _ in range(4)]

    def produce(p):
        for i in range(per_producer):
            tx.put((p, i), timeout=JOIN)

    def consume(c):
        while True:
            m = rx.get(timeout=JOIN)
            if m is None:
                return
            results[c].append(m)

    prod = [Background(produce, p) for p in range(producers)]
    cons = [Background(consume, c) for c in range(4)]
    for b in prod:
        assert b.result() is None
    for _ in cons:
        tx.put(None, timeout=JOIN)
    for b in cons:
        assert b.result() is None
    everything = [m for r in results for m in r]
    assert len(everything) == producers * per_producer
    assert sorted(everything) == [(p, i) for p in range(producers) for i in range(per_producer)]
    # FIFO: what one consumer got from one producer is in that producer's order.
    for r in results:
        for p in range(producers):
            seq = [i for q, i in r if q == p]
            assert seq == sorted(seq)
    assert tx.wait_for_all_ack(JOIN) is True


def test_threads_producer_order_kept(make_pair):
    tx, rx = make_pair(3)
    producers, per_producer = 4, 50

    def produce(p):
        for i in range(per_producer):
            tx.put((p, i), timeout=JOIN)

    prod = [Background(produce, p) for p in range(producers)]
    got = drain(rx, producers * per_producer)
    for b in prod:
        assert b.result() is None
    for p in range(producers):
        assert [i for q, i in got if q == p] == list(range(per_producer))
    with pytest.raises(queue.Empty):
        rx.get(timeout=0.1)


# -- sizes ------------------------------------------------------------------------------


def test_large_numpy_array_64mib(make_pair):
    tx, rx = make_pair(1)
    a = np.arange(8 << 20, dtype=np.float64)  # 64 MiB
    assert a.nbytes == 64 << 20
    tx.put(a)
    b = rx.get(timeout=JOIN)
    assert b.dtype == a.dtype and b.shape == a.shape
    assert np.array_equal(a, b)
    assert b.flags.writeable
    assert tx.wait_for_all_ack(JOIN) is True


def test_large_bytes_64mib(make_pair):
    tx, rx = make_pair(1)
    data = os.urandom(64 << 20)
    tx.put(data)
    got = rx.get(timeout=JOIN)
    assert type(got) is bytes
    assert got == data
    assert tx.wait_for_all_ack(JOIN) is True


SIZES = sorted(
    {0, 1, 2, 7, 8, 9, 63, 64, 65, 255, 256, 257, 4095, 4096, 4097, 65535, 65536, 65537,
     (1 << 20) - 1, 1 << 20, (1 << 20) + 1, (4 << 20) + 3, (16 << 20) - 1, 16 << 20}
)


def _payload(n, seed):
    if n == 0:
        return b""
    block = bytes((seed * 31 + i * 7) & 0xFF for i in range(min(n, 4099)))
    return (block * (n // len(block) + 1))[:n]


def test_size_sweep_one_at_a_time(make_pair):
    tx, rx = make_pair(1)
    for k, n in enumerate(SIZES):
        data = _payload(n, k)
        tx.put(data, timeout=JOIN)
        got = rx.get(timeout=JOIN)
        assert type(got) is bytes
        assert len(got) == n
        assert got == data, f"size {n}"
    assert tx.wait_for_all_ack(JOIN) is True


def test_size_sweep_all_queued(make_pair):
    tx, rx = make_pair(0)
    payloads = [_payload(n, k) for k, n in enumerate(SIZES)]
    for p in payloads:
        tx.put_nowait(p)
    for p in payloads:
        got = rx.get(timeout=JOIN)
        assert len(got) == len(p)
        assert got == p
    assert tx.wait_for_all_ack(JOIN) is True


def test_size_sweep_bytearray_and_arrays(make_pair):
    tx, rx = make_pair(2)
    for k, n in enumerate(SIZES):
        tx.put((bytearray(_payload(n, k)), np.frombuffer(_payload(n, k + 1), dtype=np.uint8)))
        ba, arr = rx.get(timeout=JOIN)
        assert type(ba) is bytearray and ba == _payload(n, k)
        assert arr.tobytes() == _payload(n, k + 1)
        assert arr.flags.writeable is False  # np.frombuffer(bytes) is read-only
    assert tx.wait_for_all_ack(JOIN) is True

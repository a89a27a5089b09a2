"""Helpers for test_processes.py and test_crash.py: child-process targets (module level,
so that ``spawn`` and ``forkserver`` children can import them), message encoding, and a
context manager that always kills and reaps the children it started."""

from __future__ import annotations

import os
import queue
import signal
import time
from typing import Any, Callable

import numpy as np

SHM = "/dev/shm"


# ---------------------------------------------------------------------------------------
# Messages: ints and small NumPy arrays, each naming its producer (tag) and sequence number.


def make_msg(tag: int, seq: int, big: bool = False) -> Any:
    """Message ``seq`` of producer ``tag``: a bare int every third message, otherwise a
    tuple with a small NumPy array derived from (tag, seq) (or a 256 KiB one if ``big``)."""
    if seq % 3 == 0 and not big:
        return tag * 1_000_000 + seq
    n = 32768 if big else seq % 7 + 1
    arr = np.arange(n, dtype=np.int64) + (tag * 1_000_000 + seq)
    return (tag, seq, arr)


def decode(obj: Any) -> tuple[int, int]:
    """(tag, seq) of a message made by :func:`make_msg`, checking its array."""
    if isinstance(obj, int):
        return divmod(obj, 1_000_000)
    tag, seq, arr = obj
    assert isinstance(arr, np.ndarray), type(arr)
    expected = np.arange(len(arr), dtype=np.int64) + (tag * 1_000_000 + seq)
    assert arr.dtype == np.int64 and np.array_equal(arr, expected), (tag, seq, arr)
    return tag, seq


def queue_files(name: str) -> list[str]:
    """The entries of /dev/shm that belong to queue ``name``."""
    return sorted(n for n in os.listdir(SHM) if name in n)


def wait_until(pred: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def recv_conn(conn: Any, timeout: float = 60.0, proc: Any = None) -> Any:
    """One object from a multiprocessing connection, failing instead of hanging (at once
    if ``proc``, the child that reports, died without reporting)."""
    deadline = time.monotonic() + timeout
    while not conn.poll(0.05):
        if proc is not None and not proc.is_alive() and not conn.poll(0):
            raise AssertionError(
                f"child {proc.pid} exited with {proc.exitcode} without reporting"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"no report from the child within {timeout}s")
    return conn.recv()


class Children:
    """Starts processes of one context; on exit kills (SIGKILL) every one still alive and
    reaps them all."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.procs: list[Any] = []

    def start(self, target: Callable[..., Any], *args: Any) -> Any:
        p = self.ctx.Process(target=target, args=args, daemon=True)
        self.procs.append(p)
        p.start()
        return p

    def join(self, p: Any, timeout: float = 60.0) -> int:
        p.join(timeout)
        assert not p.is_alive(), f"child {p.pid} did not finish within {timeout}s"
        return p.exitcode

    def join_all(self, timeout: float = 60.0) -> list[int]:
        return [self.join(p, timeout) for p in self.procs]

    def kill(self, p: Any, sig: int = signal.SIGKILL) -> int:
        os.kill(p.pid, sig)
        return self.join(p, 30)

    def __enter__(self) -> "Children":
        return self

    def __exit__(self, *exc: Any) -> None:
        for p in self.procs:
            if p._popen is None:  # never started
                continue
            if p.is_alive():
                try:
                    p.kill()
                except OSError:
                    pass
            p.join(30)


# ---------------------------------------------------------------------------------------
# Child targets: drop-in API


def dropin_produce(tx: Any, tag: int, n: int, wait_ack: bool, conn: Any = None) -> None:
    """Puts messages 0..n-1 of producer ``tag``; optionally waits until all were read."""
    for i in range(n):
        tx.put(make_msg(tag, i))
    if wait_ack:
        assert tx.wait_for_all_ack(60), "messages not acknowledged within 60 s"
    if conn is not None:
        conn.send("done")
        conn.close()
    tx.close()


def dropin_consume(rx: Any, n: int | None, conn: Any) -> None:
    """Gets ``n`` messages (or until a ``None`` sentinel); reports their (tag, seq)."""
    got = []
    while n is None or len(got) < n:
        obj = rx.get(timeout=60)
        if obj is None:
            break
        got.append(decode(obj))
    conn.send(got)
    conn.close()
    rx.close()


# ---------------------------------------------------------------------------------------
# Child targets: native API


def native_produce(tx: Any, tag: int, n: int) -> None:
    for i in range(n):
        tx.send(make_msg(tag, i))
    tx.close()


def native_consume(rx: Any, conn: Any) -> None:
    """Iterates until every sender is gone; reports (tag, seq) of what it got."""
    got = [decode(obj) for obj in rx]
    conn.send(got)
    conn.close()
    rx.close()


# ---------------------------------------------------------------------------------------
# Pool initializer and module globals


_RX: Any = None
GLOBAL_RX: Any = None
GLOBAL_TX: Any = None


def pool_init(rx: Any) -> None:
    global _RX
    _RX = rx


def pool_get(_: int) -> tuple[int, tuple[int, int]]:
    return os.getpid(), decode(_RX.get(timeout=60))


def pool_recv(_: int) -> tuple[int, tuple[int, int]]:
    return os.getpid(), decode(_RX.recv(timeout=60))


def global_consume(n: int, conn: Any) -> None:
    got = [decode(GLOBAL_RX.get(timeout=60)) for _ in range(n)]
    conn.send(got)
    conn.close()


def global_native_produce(tag: int, n: int) -> None:
    for i in range(n):
        GLOBAL_TX.send(make_msg(tag, i))
    GLOBAL_TX.close()


# ---------------------------------------------------------------------------------------
# Late attachment


class Delay:
    """Sleeps ``seconds`` when unpickled, so that the arguments after it (unpickled in
    order under spawn/forkserver) attach that much later."""

    def __init__(self, seconds: float, slept: bool = False) -> None:
        self.seconds = seconds
        self.slept = slept

    def __reduce__(self) -> tuple[Any, tuple[float]]:
        return (_delayed, (self.seconds,))


def _delayed(seconds: float) -> Delay:
    time.sleep(seconds)
    return Delay(seconds, slept=True)


def attach_then_wait(rx: Any, native: bool, attached: Any, go: Any) -> None:
    """Attaches (by using the receiver once), says so, and leaves when told to."""
    try:
        rx.try_recv() if native else rx.get_nowait()
    except queue.Empty:
        pass
    attached.set()
    assert go.wait(60)
    rx.close()


def late_get(delay: Delay, rx: Any, native: bool, conn: Any) -> None:
    """Uses the receiver only after ``delay`` (while unpickling, or here under fork)."""
    if not delay.slept:
        time.sleep(delay.seconds)
    try:
        conn.send(("got", rx.recv(timeout=30) if native else rx.get(timeout=30)))
    except BaseException as e:
        conn.send(("error", repr(e)))


# ---------------------------------------------------------------------------------------
# SIGINT


def sigint_get(rx: Any, native: bool, ready: Any, conn: Any) -> None:
    """Blocks in a 60 s get; reports how it ended; then gets one more message."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    get = (lambda t: rx.recv(timeout=t)) if native else (lambda t: rx.get(timeout=t))
    ready.set()
    t0 = time.monotonic()
    try:
        obj = get(60)
    except KeyboardInterrupt:
        conn.send(("interrupted", time.monotonic() - t0))
    except BaseException as e:  # report anything else to the parent
        conn.send(("error", repr(e)))
        return
    else:
        conn.send(("got", repr(obj)))
        return
    try:
        conn.send(("after", get(30)))
    except BaseException as e:
        conn.send(("error", repr(e)))
    rx.close()


# ---------------------------------------------------------------------------------------
# Crash helpers


def produce_counting(tx: Any, native: bool, done: Any, big_every: int, tag: int = 7) -> None:
    """Puts messages 0, 1, 2, ... of producer ``tag`` forever; after each put *returned*
    records ``done.value = seq + 1`` (so ``done`` counts acknowledged puts only)."""
    put = tx.send if native else tx.put
    i = 0
    while True:
        put(make_msg(tag, i, big=bool(big_every) and i % big_every == big_every - 1))
        done.value = i + 1
        i += 1


def hold_bytes(rx: Any, conn: Any) -> None:
    """Receives one raw message, reports it, and holds it until killed."""
    m = rx.recv_bytes(timeout=60)
    conn.send((m.tobytes(), m.delivery_count))
    time.sleep(120)


def hold_views(rx: Any, conn: Any) -> None:
    """Receives one NumPy array (a zero-copy view of the message) and keeps it until
    killed."""
    arr = rx.recv(timeout=60)
    conn.send((arr.tolist(), arr.flags.writeable))
    time.sleep(120)


def idle_get(rx: Any, ready: Any, conn: Any) -> None:
    """A drop-in consumer that waits in get and reports every message it gets."""
    ready.set()
    while True:
        conn.send(decode(rx.get(timeout=60)))


class Slow:
    """Unpickles through :func:`make_slow`, which blocks in processes that set BLOCK."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return (make_slow, (self.payload,))


BLOCK: Any = None  # an Event in the child that must block while decoding


def make_slow(payload: bytes) -> Slow:
    if BLOCK is not None:
        BLOCK.set()
        time.sleep(120)
    return Slow(payload)


def decode_blocking(rx: Any, event: Any) -> None:
    """A drop-in consumer that blocks forever while unpickling its message."""
    global BLOCK
    BLOCK = event
    rx.get(timeout=60)


def send_then_wait(tx: Any, native: bool, n: int, conn: Any) -> None:
    """Sends n messages, reports, and waits to be killed."""
    for i in range(n):
        (tx.send if native else tx.put)(make_msg(3, i))
    conn.send("sent")
    time.sleep(120)


def consume_forever(rx: Any, conn: Any) -> None:
    """A drop-in consumer that reports its first message, then consumes until killed."""
    first = True
    while True:
        try:
            obj = rx.get(timeout=1)
        except queue.Empty:
            continue
        msg = decode(obj)
        if first:
            conn.send(msg)
            first = False

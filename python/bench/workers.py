"""What runs in the benchmark's child processes (imported by ``spawn`` children, so it
imports only the standard library at the top; each system's package is imported by the
child that uses it).

Every child gets a ``spec`` dict, its queue handle(s) and a duplex ``Connection``. It
builds its payload and says ``ready``; then, for every ``go``, it warms up, meets the other
children at a barrier, runs the timed phase and reports (a producer ``produced``, a
consumer ``done`` with what it received); ``stop`` ends it.

Messages: a pickling system sends ``(producer, seq, payload)``; ``shmq raw`` sends the
payload itself with ``(producer, seq)`` as two int64 stamped into its first 16 bytes
(the raw API has no object around the buffer). The payload of producer ``p`` repeats a
65521-byte random block seeded by ``p``, so a consumer checks a few 8-byte samples of
every message against what they must be, and the full payload (adler32 of bytes 16…) of
the first warm-up message of each producer it sees.
"""

from __future__ import annotations

import time
import traceback
import zlib
from typing import Any

TILE = 65521  # prime: a payload shifted by whole tiles is the only undetected corruption
STAMP = 16  # bytes at the front of a payload that the raw system overwrites
SAMPLES = 6  # 8-byte windows checked in every message

PICKLING = ("mpq", "ff", "pysm", "dropin", "native")


# -- payloads --------------------------------------------------------------------------------


def tile(p: int):
    import numpy as np

    return np.random.default_rng(1000 + p).integers(0, 256, TILE, dtype=np.uint8)


def sample_index(size: int):
    """Byte offsets of the sampled windows (all past the stamp, the last at the end)."""
    import numpy as np

    starts = [STAMP + (size - STAMP - 8) * k // (SAMPLES - 1) for k in range(SAMPLES)]
    return np.array([s + i for s in starts for i in range(8)], dtype=np.intp)


def expected_sample(p: int, size: int) -> bytes:
    return tile(p)[sample_index(size) % TILE].tobytes()


def make_payload(p: int, kind: str, size: int, mutable: bool):
    """Producer ``p``'s payload: ``bytes`` (``bytearray`` when ``mutable``, for the raw
    system that stamps it) or a float32 array of ``size`` bytes."""
    import numpy as np

    a = np.resize(tile(p), size)  # repeats the tile
    if kind == "f32":
        return a.view(np.float32)
    if mutable:
        b = bytearray(size)
        b[:] = memoryview(a)
        del a
        return b
    b = a.tobytes()
    del a
    return b


def as_u8(obj: Any):
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj.reshape(-1).view(np.uint8)
    return np.frombuffer(obj, np.uint8)


def adler(u8) -> int:
    return zlib.adler32(memoryview(u8[STAMP:]))


def proc_mem(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / RssAnon / RssShmem / VmHWM in bytes."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "RssShmem", "RssFile", "VmHWM"):
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


# -- per-system endpoints ----------------------------------------------------------------


def _ff_retry(call, timeout: float, *args: Any) -> Any:
    """faster-fifo's blocking ``get``/``put`` can raise ``Empty``/``Full`` long before their
    timeout when another process took the message (or the room) it was woken for (seen
    here with 2 consumers); retry until the timeout really passed."""
    import queue

    deadline = time.monotonic() + timeout
    while True:
        try:
            return call(*args, True, max(deadline - time.monotonic(), 0.001))
        except (queue.Empty, queue.Full):
            if time.monotonic() >= deadline:
                raise


class _Put:
    """The producing side of one system, for one producer."""

    def __init__(self, system: str, handle: Any, spec: dict) -> None:
        self.system = system
        self.h = handle
        self.timeout = spec["bound"]
        if system == "ff":
            self.put = lambda m: _ff_retry(handle.put, self.timeout, m)
        elif system in ("mpq", "pysm", "dropin"):
            self.put = lambda m: handle.put(m, True, self.timeout)
        elif system == "native":
            self.put = lambda m: handle.send(m, True, self.timeout)
        elif system == "raw":
            self.put = lambda m: handle.send_bytes(m, True, self.timeout)
        else:
            raise ValueError(system)

    def drain(self) -> None:
        """After a repetition: waits until the consumers acknowledged everything (the
        systems that count unacknowledged messages: py-sharedmemory and the drop-in)."""
        if self.system in ("pysm", "dropin"):
            if not self.h.wait_for_all_ack(timeout=self.timeout):
                raise TimeoutError("wait_for_all_ack timed out")

    def flush(self) -> None:
        """At the end: mp.Queue's feeder thread has written everything."""
        if self.system == "mpq":
            self.h.close()
            self.h.join_thread()

    def finish(self) -> None:
        if self.system in ("pysm", "dropin", "native", "raw"):
            self.h.close()


class _Get:
    """The consuming side: ``get()`` returns ``(p, seq, u8 view, keep)``; ``done(keep)``
    lets the message go (zero-copy systems acknowledge it then)."""

    def __init__(self, system: str, handle: Any, spec: dict) -> None:
        self.system = system
        self.h = handle
        self.timeout = spec["bound"]
        self.kind = spec["kind"]
        self.size = spec["size"]

    def get(self):
        s = self.system
        if s == "raw":
            import numpy as np

            m = self.h.recv_bytes(True, self.timeout)
            u8 = np.frombuffer(m, np.uint8)
            p, seq = (int(x) for x in u8[:STAMP].view(np.int64))
            if self.kind == "f32":
                u8 = np.frombuffer(m, np.float32).view(np.uint8)  # the zero-copy array
            return p, seq, u8, m
        if s == "ff":
            msg = _ff_retry(self.h.get, self.timeout)
        elif s in ("mpq", "pysm", "dropin"):
            msg = self.h.get(True, self.timeout)
        else:  # native: zero-copy arrays (read-only views of shared memory)
            msg = self.h.recv(True, self.timeout)
        p, seq, payload = msg
        self._check_type(payload)
        return p, seq, as_u8(payload), payload

    def _check_type(self, payload: Any) -> None:
        if self.kind == "bytes":
            if type(payload) is not bytes:
                raise AssertionError(f"payload arrived as {type(payload).__name__}, not bytes")
        else:
            import numpy as np

            if not isinstance(payload, np.ndarray) or payload.dtype != np.float32:
                raise AssertionError(f"payload arrived as {type(payload).__name__}")
            if payload.shape != (self.size // 4,):
                raise AssertionError(f"payload shape {payload.shape}")

    def done(self, keep: Any) -> None:
        if self.system == "raw" and keep is not None:
            keep.release()

    def finish(self) -> None:
        if self.system in ("pysm", "dropin", "native", "raw"):
            self.h.close()


# -- child entry points ----------------------------------------------------------------------
#
# A child serves one system in one cell (topology, payload kind, size): it prepares, says
# "ready", then runs one repetition per "go" it receives until "stop". So the systems of a
# cell keep their processes and queues across the repetitions (idle ones sleep on their
# pipe), and a repetition costs no process start. Each repetition: warm-up, barrier, timed
# phase, report.


def producer(spec: dict, p: int, handle: Any, barrier: Any, conn: Any) -> None:
    try:
        _producer(spec, p, handle, barrier, conn)
    except BaseException as e:  # reported, then the process exits non-zero
        try:
            conn.send({"event": "error", "role": f"producer {p}", "error": repr(e),
                       "trace": traceback.format_exc()})
        finally:
            raise SystemExit(1)


def _producer(spec: dict, p: int, handle: Any, barrier: Any, conn: Any) -> None:
    import numpy as np

    system, kind, size = spec["system"], spec["kind"], spec["size"]
    raw = system == "raw"
    payload = make_payload(p, kind, size, mutable=raw)
    full = adler(as_u8(payload))
    stamp = as_u8(payload)[:STAMP].view(np.int64) if raw else None
    q = _Put(system, handle, spec)
    put = q.put
    n, warm = spec["count"][p], spec["warm"]
    conn.send({"event": "ready", "mem": proc_mem()})
    while conn.recv() == "go":
        base = proc_mem()
        for i in range(warm):
            if raw:
                stamp[0], stamp[1] = p, -1 - i
                put(payload)
            else:
                put((p, -1 - i, payload))
        barrier.wait(spec["bound"])
        t0 = time.perf_counter()
        if raw:
            for seq in range(n):
                stamp[0], stamp[1] = p, seq
                put(payload)
        else:
            for seq in range(n):
                put((p, seq, payload))
        t1 = time.perf_counter()
        mem = proc_mem()
        q.drain()
        conn.send({"event": "produced", "p": p, "t0": t0, "t_put": t1, "adler": full,
                   "mem": mem, "mem_base": base})
    q.flush()
    q.finish()
    del stamp


def consumer(spec: dict, c: int, handles: list, barrier: Any, conn: Any) -> None:
    try:
        _consumer(spec, c, handles, barrier, conn)
    except BaseException as e:
        try:
            conn.send({"event": "error", "role": f"consumer {c}", "error": repr(e),
                       "trace": traceback.format_exc()})
        finally:
            raise SystemExit(1)


def _share(total: int, parts: int, i: int) -> int:
    return total // parts + (i < total % parts)


def _consumer(spec: dict, c: int, handles: list, barrier: Any, conn: Any) -> None:
    import numpy as np

    system, size = spec["system"], spec["size"]
    nprod, ncons = spec["producers"], spec["consumers"]
    idx = sample_index(size)
    expect = [expected_sample(p, size) for p in range(nprod)]
    gets = [_Get(system, h, spec) for h in handles]
    fully_checked: set[int] = set()

    def check(p: int, seq: int, u8: Any, adlers: dict | None) -> None:
        if u8 is None or not 0 <= p < nprod:
            raise AssertionError(f"unexpected message p={p} seq={seq}")
        if len(u8) != size:
            raise AssertionError(f"message of {len(u8)} bytes, expected {size}")
        if u8[idx].tobytes() != expect[p]:
            raise AssertionError(f"content of message p={p} seq={seq} differs")
        if adlers is not None and p not in fully_checked:
            fully_checked.add(p)
            adlers[f"{p}:{seq}"] = adler(u8)

    if spec["static"]:
        # py-sharedmemory with one pair per producer: this consumer reads its pairs
        # alternately, each for exactly its producer's messages.
        plans_warm = [(g, spec["warm"]) for g in gets]
        plans = [(g, n) for g, n in zip(gets, spec["static_counts"][c])]
    else:
        # One shared queue: each consumer takes its exact share (no end-of-stream marker
        # needed; whichever consumer is faster simply stops first).
        plans_warm = [(gets[0], _share(spec["warm"] * nprod, ncons, c))]
        plans = [(gets[0], _share(sum(spec["count"]), ncons, c))]

    def take(plan, on_msg) -> None:
        rounds = max((n for _, n in plan), default=0)
        for r in range(rounds):
            for g, n in plan:
                if r < n:
                    p, seq, u8, keep = g.get()
                    on_msg(p, seq, u8)
                    del u8
                    g.done(keep)
                    del keep

    conn.send({"event": "ready", "mem": proc_mem()})
    while conn.recv() == "go":
        base = proc_mem()
        adlers: dict[str, int] = {}

        def on_warm(p: int, seq: int, u8: Any) -> None:
            if seq >= 0:
                raise AssertionError(f"timed message p={p} seq={seq} during warm-up")
            check(p, seq, u8, adlers)

        take(plans_warm, on_warm)
        barrier.wait(spec["bound"])

        seen = [np.zeros(n, dtype=bool) for n in spec["count"]]
        last = [-1] * nprod
        st = {"got": 0, "order": 0, "t_first": None, "t_end": None}

        def on_msg(p: int, seq: int, u8: Any) -> None:
            t = time.perf_counter()
            if st["t_first"] is None:
                st["t_first"] = t
            check(p, seq, u8, None)
            if seq < 0 or seq >= len(seen[p]) or seen[p][seq]:
                raise AssertionError(f"bad or repeated seq p={p} seq={seq}")
            seen[p][seq] = True
            if seq < last[p]:
                st["order"] += 1
            last[p] = seq
            st["got"] += 1

        take(plans, on_msg)
        st["t_end"] = time.perf_counter()
        conn.send({"event": "done", "role": f"consumer {c}", "c": c, "got": st["got"],
                   "t_first": st["t_first"], "t_end": st["t_end"] if st["got"] else None,
                   "seen": [s.tobytes() for s in seen], "order_errors": st["order"],
                   "adlers": adlers, "mem": proc_mem(), "mem_base": base})
    for g in gets:
        g.finish()


# -- both ends in one process: per-message cost ----------------------------------------------


def pingpong(spec: dict, conn: Any) -> None:
    """``put`` then ``get`` of a 1 KB message, ``n`` times, both ends in this process."""
    try:
        conn.send(_pingpong(spec))
    except BaseException as e:
        conn.send({"event": "error", "role": "pingpong", "error": repr(e),
                   "trace": traceback.format_exc()})
        raise SystemExit(1)


def _pingpong(spec: dict) -> dict:
    import multiprocessing as mp

    system, kind, size, n, warm = (spec[k] for k in ("system", "kind", "size", "count", "warm"))
    cap = spec["capacity"]
    ctx = mp.get_context("spawn")
    close = []
    if system == "mpq":
        q = ctx.Queue(cap)
        tx = rx = q
    elif system == "ff":
        import faster_fifo

        q = faster_fifo.Queue(max_size_bytes=cap * (size + 1024), maxsize=cap)
        tx = rx = q
    elif system == "pysm":
        import py_sharedmemory

        tx, rx = py_sharedmemory.create_shared_memory_pair(cap, ctx=ctx)
        close = [tx, rx]
    elif system == "dropin":
        import shmq

        tx, rx = shmq.create_shared_memory_pair(cap)
        close = [tx, rx]
    else:
        import shmq

        tx, rx = shmq.channel(cap, max_message_size=size + 4096)
        close = [tx, rx]
    spec = dict(spec, bound=spec["bound"], producers=1, consumers=1)
    put = _Put(system, tx, spec).put
    getter = _Get(system, rx, spec)
    payload = make_payload(0, kind, size, mutable=system == "raw")
    idx = sample_index(size)
    expect = expected_sample(0, size)
    import numpy as np

    stamp = as_u8(payload)[:STAMP].view(np.int64) if system == "raw" else None

    def one(seq: int) -> None:
        if stamp is not None:
            stamp[0], stamp[1] = 0, seq
            put(payload)
        else:
            put((0, seq, payload))
        p, got, u8, keep = getter.get()
        if got != seq or u8[idx].tobytes() != expect or len(u8) != size:
            raise AssertionError(f"message {seq} arrived as {got} or with other content")
        del u8
        getter.done(keep)

    for i in range(warm):
        one(i)
    t0 = time.perf_counter()
    for i in range(n):
        one(warm + i)
    dt = time.perf_counter() - t0
    del stamp
    for h in close:
        h.close()
    if system == "mpq":
        q.close()
        q.join_thread()
    return {"event": "done", "seconds": dt, "count": n, "us_per_msg": dt / n * 1e6}

#!/usr/bin/env python3
"""shmq against multiprocessing.Queue, py-sharedmemory and faster-fifo, side by side.

Every case: producer and consumer processes started with ``spawn``; a warm-up through the
same queue; a barrier; the timed phase (from the first producer's start to the last data
message a consumer received and checked); every message checked (producer, sequence
number, 8-byte samples of the payload; the whole payload of warm-up messages) and the
count and coverage of sequence numbers checked before the time counts. Systems alternate
within each repetition (in a rotated order); the median of the repetitions is reported
with its min–max and interquartile range. See README.md next to this file.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import workers  # noqa: E402  (stdlib-only at import; children import it too)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

SYSTEMS = ["mpq", "pysm", "ff", "dropin", "native", "raw"]
LABELS = {
    "mpq": "mp.Queue",
    "pysm": "py-sharedmemory 4.3.1",
    "ff": "faster-fifo",
    "dropin": "shmq drop-in",
    "native": "shmq native (zero-copy recv)",
    "raw": "shmq send_bytes/recv_bytes",
}
SHORT = {"mpq": "mp.Queue", "pysm": "py-shm", "ff": "faster-fifo", "dropin": "shmq drop-in",
         "native": "shmq native", "raw": "shmq raw"}
KINDS = {"bytes": "bytes", "f32": "float32 ndarray"}


@dataclass(frozen=True)
class Topology:
    key: str
    producers: int
    consumers: int
    capacity: int
    title: str


TOPOLOGIES = {
    t.key: t
    for t in (
        Topology("1to1-cap2", 1, 1, 2, "1 producer → 1 consumer, capacity 2"),
        Topology("1to1-cap64", 1, 1, 64, "1 producer → 1 consumer, capacity 64"),
        Topology("4to2-cap16", 4, 2, 16, "4 producers → 2 consumers, capacity 16"),
    )
}
KEEP_BELOW = GiB  # from this size on, every repetition starts its processes afresh
DEFAULT_SIZES = [KiB, 10 * KiB, 100 * KiB, MiB, 10 * MiB, 100 * MiB, GiB]
QUICK_SIZES = [KiB, 100 * KiB, 10 * MiB]


def parse_size(s: str) -> int:
    s = s.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": KiB, "M": MiB, "G": GiB}.get(s[-1:], 1)
    return int(float(s[:-1] if s[-1:] in "KMG" else s) * mult)


def fmt_size(n: int) -> str:
    for unit, m in (("GB", GiB), ("MB", MiB), ("KB", KiB)):
        if n >= m and n % m == 0:
            return f"{n // m} {unit}"
    return f"{n} B"


# -- machine ------------------------------------------------------------------------------


def shm_used() -> int:
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def shm_free() -> int:
    st = os.statvfs("/dev/shm")
    return st.f_bavail * st.f_frsize


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def loadavg() -> list[float]:
    return list(os.getloadavg())


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("numpy", "py-sharedmemory", "faster-fifo", "shmq", "matplotlib"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    try:
        import shmq

        out["shmq_path"] = os.path.dirname(shmq.__file__)
    except ImportError:
        pass
    repo = os.path.dirname(os.path.dirname(HERE))
    try:
        rev = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--", "python", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        out["shmq_git"] = rev + ("+dirty" if dirty else "")
    except Exception:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            models = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
        out["cpu"] = f"{len(models)} × {models[0]}" if models else None
    except OSError:
        pass
    out["nproc"] = os.cpu_count()
    out["mem_total"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return out


# -- /dev/shm leftovers ----------------------------------------------------------------------


def _mapped_anywhere(entries: set[str]) -> set[str]:
    """Which of these /dev/shm entries some live process maps or holds open."""
    found: set[str] = set()
    paths = {"/dev/shm/" + e: e for e in entries}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    i = line.find("/dev/shm/")
                    if i >= 0:
                        path = line[i:].rstrip("\n").removesuffix(" (deleted)")
                        if path in paths:
                            found.add(paths[path])
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    t = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if t in paths:
                    found.add(paths[t])
        except OSError:
            continue
    return found


def clean_leftovers(before: set[str], shmq_names: list[str]) -> list[str]:
    """Removes what a case left in /dev/shm once every object of it is gone: new entries
    that are ours by name (the case's shmq queues and their segments; ``psm_*`` blocks,
    which only py-sharedmemory in this benchmark creates) and that no live process maps or
    holds open. Returns what it removed; ``sem.mp-*`` semaphores still there are reported
    only (glibc maps them under a temporary name, so whether they are in use cannot be
    told; Python's resource tracker removes its own at exit)."""
    new = set(os.listdir("/dev/shm")) - before
    sems = {e for e in new if e.startswith("sem.mp-")}
    ours = {
        e for e in new
        if e.startswith("psm_")
        or any(e == f"shmq.{n}" or e.startswith(f"shmq.{n}.") for n in shmq_names)
    }
    sem_note = [f"{e} (mp semaphore, left)" for e in sorted(sems)]
    if not ours:
        return sem_note
    # Give shmq's last-one-out removal and finalizers a moment, then look again.
    for _ in range(20):
        time.sleep(0.05)
        ours &= set(os.listdir("/dev/shm"))
        if not ours:
            return sem_note
    busy = _mapped_anywhere(ours)
    removed = []
    for e in sorted(ours - busy):
        try:
            os.unlink("/dev/shm/" + e)
            removed.append(e)
        except FileNotFoundError:
            continue
        if e.startswith("psm_"):
            # Registered by the (killed) child with the resource tracker this process
            # shares with its children: forget it there too, or the tracker warns at exit.
            try:
                from multiprocessing import resource_tracker

                resource_tracker.unregister("/" + e, "shared_memory")
            except Exception:
                pass
    return removed + [f"{e} (still in use, left)" for e in sorted(busy)] + sem_note


# -- the systems, parent side ----------------------------------------------------------------


class Setup:
    """One system's queue(s) for one cell: what each child gets, and the parent's close."""

    def __init__(self, system: str, topo: Topology, size: int, cap: int, args, ctx) -> None:
        self.system = system
        self.shmq_names: list[str] = []
        self.static = False
        self.static_counts = None
        self.keep: list = []
        P, C = topo.producers, topo.consumers
        self.depth = cap
        if system == "mpq":
            q = ctx.Queue(cap)
            self.prod = [q] * P
            self.cons = [[q]] * C

            def close(ok: bool) -> None:
                q.close()
                q.cancel_join_thread()  # the parent never put anything

            self._close = close
        elif system == "ff":
            import faster_fifo

            need = size + 1024
            buf = min(args.ff_buffer, cap * need)
            self.depth = min(cap, buf // need)
            q = faster_fifo.Queue(max_size_bytes=buf, maxsize=cap)
            self.prod = [q] * P
            self.cons = [[q]] * C
            self._close = lambda ok: None
            self.keep.append(q)
        elif system == "pysm":
            import py_sharedmemory

            if P == 1:
                s, r = py_sharedmemory.create_shared_memory_pair(cap, ctx=ctx)
                self.prod, self.cons = [s], [[r]] * C
                pairs = [(s, r)]
            else:
                # py-sharedmemory allows one producing process per pair: one pair per
                # producer (as its README says), consumer c reads pairs c, c+C, ...
                per = max(1, cap // P)
                self.depth = per * P
                pairs = [py_sharedmemory.create_shared_memory_pair(per, ctx=ctx) for _ in range(P)]
                self.prod = [s for s, _ in pairs]
                self.cons = [[pairs[i][1] for i in range(c, P, C)] for c in range(C)]
                self.static = True

            def close(ok: bool) -> None:
                for s, r in pairs:
                    s.close()
                    r.close()

            self._close = close
        elif system == "dropin":
            import shmq

            s, r = shmq.create_shared_memory_pair(cap)
            self.shmq_names.append(s.name)
            self.prod, self.cons = [s] * P, [[r]] * C

            def close(ok: bool) -> None:
                r.close()
                s.close()

            self._close = close
        elif system in ("native", "raw"):
            import shmq

            seg = size + size // 8 + 2 * MiB
            tx, rx = shmq.channel(cap, max_message_size=size + 64 * KiB,
                                  max_payload_bytes=max(4 * GiB, (cap + 4) * seg))
            self.shmq_names.append(tx.name)
            self.prod, self.cons = [tx] * P, [[rx]] * C

            def close(ok: bool) -> None:
                tx.close()
                rx.close()

            self._close = close
        else:
            raise ValueError(system)

    def close(self, ok: bool) -> None:
        try:
            self._close(ok)
        finally:
            self.keep.clear()


# -- one run ---------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Samples RSS of the active system's children and /dev/shm use every 10 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.pids: dict[int, str] = {}
        self.samples: list[tuple[float, dict, int]] = []
        self.stop = threading.Event()
        self.active = threading.Event()

    def watch(self, pids: dict[int, str]) -> None:
        self.pids = dict(pids)
        self.samples = []
        self.active.set()

    def pause(self) -> list:
        self.active.clear()
        return self.samples

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.active.wait(0.1):
                continue
            t = time.perf_counter()
            mem = {role: workers.proc_mem(pid) for pid, role in self.pids.items()}
            self.samples.append((t, mem, shm_used()))
            self.stop.wait(0.01)


class Runner:
    """One system in one cell: its queue(s) and its producer and consumer processes,
    started once and run for one repetition per :meth:`rep`. A failed or timed-out
    repetition kills the processes (the runner is then dead)."""

    def __init__(self, ctx, args, topo: Topology, system: str, kind: str, size: int,
                 count: int, warm: int, cap: int, bound: float) -> None:
        P, C = topo.producers, topo.consumers
        self.topo, self.system, self.size, self.bound = topo, system, size, bound
        self.counts = [count // P + (p < count % P) for p in range(P)]
        self.base = {"system": system, "topology": topo.key, "kind": kind, "size": size,
                     "count": sum(self.counts), "warm_per_producer": warm, "capacity": cap}
        self.procs: list = []
        self.setup = None
        self.dead: str | None = None
        self.names: list[str] = []
        self.shm0 = shm_used()
        t = time.perf_counter()
        try:
            self.setup = Setup(system, topo, size, cap, args, ctx)
            self.names = list(self.setup.shmq_names)
            self.base["depth"] = self.setup.depth
            spec = {"system": system, "kind": kind, "size": size, "count": self.counts,
                    "warm": warm, "producers": P, "consumers": C, "bound": bound,
                    "static": self.setup.static}
            if self.setup.static:
                spec["static_counts"] = [[self.counts[i] for i in range(c, P, C)]
                                         for c in range(C)]
            barrier = ctx.Barrier(P + C)
            for role, target, i, h in (
                [("producer", workers.producer, p, self.setup.prod[p]) for p in range(P)]
                + [("consumer", workers.consumer, c, self.setup.cons[c]) for c in range(C)]
            ):
                mine, theirs = ctx.Pipe()
                pr = ctx.Process(target=target, args=(spec, i, h, barrier, theirs),
                                 name=f"bench-{system}-{role}-{i}", daemon=True)
                self.procs.append((pr, mine, theirs, f"{role} {i}"))
            for pr, _, theirs, _ in self.procs:
                pr.start()
                theirs.close()
            msgs, err = self._collect({"ready"}, time.monotonic() + bound)
            if err:
                self._kill(err)
        except Exception as e:
            import traceback

            self._kill(f"parent: {e!r}")
            self.trace = traceback.format_exc()
        self.start_s = time.perf_counter() - t

    def pids(self) -> dict[int, str]:
        return {pr.pid: role for pr, _, _, role in self.procs if pr.pid}

    def _collect(self, events: set[str], deadline: float) -> tuple[list, str | None]:
        """One message of ``events`` from every child (or the first error / timeout)."""
        from multiprocessing.connection import wait

        pending = {mine: role for _, mine, _, role in self.procs}
        got = []
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return got, (f"timeout: exceeded its bound of {self.bound:.0f} s "
                             f"(killed; waiting for {', '.join(pending.values())})")
            for r in wait(list(pending), timeout=min(left, 0.5)):
                role = pending.pop(r)
                try:
                    msg = r.recv()
                except (EOFError, OSError):
                    return got, f"{role} exited without reporting"
                if msg.get("event") == "error":
                    self.trace = msg.get("trace")
                    return got, f"{msg['role']}: {msg['error']}"
                if msg.get("event") not in events:
                    return got, f"{role}: unexpected {msg.get('event')!r}"
                got.append(msg)
        return got, None

    def rep(self, rep: int, sampler: Sampler) -> dict:
        res = dict(self.base, rep=rep, ok=False)
        if self.dead:
            res["error"] = self.dead
            return res
        shm0 = shm_used()
        t = time.perf_counter()
        sampler.watch(self.pids())
        try:
            for _, mine, _, _ in self.procs:
                mine.send("go")
            msgs, err = self._collect({"produced", "done"}, time.monotonic() + self.bound)
        except Exception as e:
            msgs, err = [], f"parent: {e!r}"
        samples = sampler.pause()
        res["wall_s"] = time.perf_counter() - t
        produced = [m for m in msgs if m["event"] == "produced"]
        cons = [m for m in msgs if m["event"] == "done"]
        if err is None:
            err = verify(res, self.counts, produced, cons, self.topo)
        if err is not None:
            res["error"] = err
            if getattr(self, "trace", None):
                res["trace"] = self.trace
            self._kill(err)
            return res
        t0 = min(m["t0"] for m in produced)
        t_end = max(d["t_end"] for d in cons if d["t_end"] is not None)
        secs = t_end - t0
        n = sum(self.counts)
        res.update(ok=True, seconds=secs, msg_per_s=n / secs, mb_per_s=n * self.size / secs / 1e6)
        res["memory"] = memory_summary(samples, t0, t_end, produced, cons, min(shm0, self.shm0))
        return res

    def _kill(self, why: str) -> None:
        self.dead = self.dead or why
        for pr, _, _, _ in self.procs:
            if pr.is_alive():
                pr.kill()
        for pr, _, _, _ in self.procs:
            pr.join(5)

    def close(self) -> list[str]:
        """Stops the children (killing any that do not exit), closes the parent's handles;
        returns problems."""
        problems = []
        if not self.dead:
            for _, mine, _, _ in self.procs:
                try:
                    mine.send("stop")
                except OSError:
                    pass
            deadline = time.monotonic() + min(self.bound, 30)
            for pr, _, _, role in self.procs:
                pr.join(max(deadline - time.monotonic(), 0.1))
                if pr.exitcode is None:
                    problems.append(f"{role} did not exit after stop (killed)")
                elif pr.exitcode != 0:
                    problems.append(f"{role} exit code {pr.exitcode} after stop")
        self._kill(self.dead or "closed")
        for _, mine, _, _ in self.procs:
            mine.close()
        if self.setup is not None:
            try:
                self.setup.close(not problems and self.dead is None)
            except Exception as e:
                problems.append(f"parent close: {e!r}")
        self.procs = []
        self.setup = None
        return problems


class CellRun:
    """The runners of one cell (topology, kind, size), and the /dev/shm check after it."""

    def __init__(self, ctx, args, topo, kind, size, count, warm, cap, bound) -> None:
        self.ctx, self.args, self.topo, self.kind, self.size = ctx, args, topo, kind, size
        self.count, self.warm, self.cap, self.bound = count, warm, cap, bound
        self.before = set(os.listdir("/dev/shm"))
        self.runners: dict[str, Runner] = {}
        self.names: list[str] = []
        self.problems: list[tuple[str, str]] = []
        self.leftovers: list[str] = []
        self.failed: dict[str, str] = {}
        self.restarts = 0

    def _runner(self, system: str) -> Runner:
        r = Runner(self.ctx, self.args, self.topo, system, self.kind, self.size, self.count,
                   self.warm, self.cap, self.bound)
        self.names += r.names
        return r

    def run(self, system: str, rep: int, sampler: Sampler) -> dict:
        """One repetition of ``system``. Its processes stay for the next repetition as long
        as memory allows: before a repetition, idle systems' processes are stopped until
        the available memory covers this case's estimated peak plus ``--mem-margin`` (they
        start afresh when their turn comes again)."""
        failed = self.failed.get(system)
        if failed:
            return {"system": system, "topology": self.topo.key, "kind": self.kind,
                    "size": self.size, "rep": rep, "ok": False,
                    "error": f"not run: an earlier repetition failed ({failed[:80]})"}
        need = mem_estimate(self.topo, self.size, self.cap) + self.args.mem_margin
        for other in sorted(self.runners, key=lambda x: x != system):
            if mem_available() >= need:
                break
            if other != system:
                self._stop(other)
                self.restarts += 1
        r = self.runners.get(system)
        fresh = r is None
        if fresh:
            r = self.runners[system] = self._runner(system)
        res = r.rep(rep, sampler)
        res["start_s"] = r.start_s if fresh else 0.0
        if r.dead:
            self.failed[system] = r.dead
            self._stop(system)
        elif self.size >= KEEP_BELOW:
            self._stop(system)  # huge payloads: no idle processes holding gigabytes
        return res

    def _stop(self, system: str) -> None:
        r = self.runners.pop(system)
        self.problems += [(system, p) for p in r.close()]

    def close(self) -> tuple[list[tuple[str, str]], list[str]]:
        for system, r in self.runners.items():
            self.problems += [(system, p) for p in r.close()]
        self.runners.clear()
        gc.collect()
        self.leftovers += clean_leftovers(self.before, self.names)
        return self.problems, self.leftovers


def verify(res: dict, counts: list[int], produced: list, cons: list, topo: "Topology") -> str | None:
    """Count, coverage (each sequence number exactly once) and full-payload checksums."""
    import numpy as np

    if len(produced) != topo.producers:
        return f"{len(produced)} of {topo.producers} producers reported"
    if len(cons) != topo.consumers:
        return f"{len(cons)} of {topo.consumers} consumers reported"
    got = sum(d["got"] for d in cons)
    if got != sum(counts):
        return f"received {got} messages, sent {sum(counts)}"
    for p, n in enumerate(counts):
        seen = np.zeros(n, dtype=np.int64)
        for d in cons:
            seen += np.frombuffer(d["seen"][p], dtype=bool)
        if not (seen == 1).all():
            return f"producer {p}: {int((seen == 0).sum())} missing, {int((seen > 1).sum())} repeated"
    if topo.consumers == 1 and cons[0]["order_errors"]:
        return f"{cons[0]['order_errors']} messages out of order"
    want = {m["p"]: m["adler"] for m in produced}
    checked = 0
    for d in cons:
        for key, a in d["adlers"].items():
            p = int(key.split(":")[0])
            if a != want[p]:
                return f"full-payload checksum of warm-up message {key} differs"
            checked += 1
    res["full_checks"] = checked
    res["order_errors"] = sum(d["order_errors"] for d in cons)
    return None


def memory_summary(samples, t0, t_end, produced, cons, shm0) -> dict:
    """Peak RSS of a producer and of a consumer, and peak /dev/shm growth, while timed
    (sampled every 10 ms; a case shorter than that uses the children's own readings at the
    end of their timed phase)."""
    window = [s for s in samples if t0 <= s[0] <= t_end]
    out = {"samples": len(window)}
    if not window and samples:  # shorter than a sampling period: the nearest sample
        window = [min(samples, key=lambda s: abs(s[0] - t_end))]

    def peak(role_prefix: str, key: str, own: list) -> int:
        vals = [m.get(key, 0) for _, mem, _ in window for role, m in mem.items()
                if role.startswith(role_prefix) and m]
        vals += [o["mem"].get(key, 0) for o in own]
        return max(vals) if vals else 0

    for key in ("VmRSS", "RssAnon", "RssShmem"):
        out[f"producer_{key}"] = peak("producer", key, produced)
        out[f"consumer_{key}"] = peak("consumer", key, cons)
    shm = [s[2] for s in window]
    out["dev_shm_bytes"] = max(shm) - shm0 if shm else None
    out["producer_base_VmRSS"] = max(o["mem_base"].get("VmRSS", 0) for o in produced)
    out["consumer_base_VmRSS"] = max(o["mem_base"].get("VmRSS", 0) for o in cons)
    return out


# -- both ends in one process -------------------------------------------------------------------


def run_pingpong(ctx, system: str, kind: str, n: int, bound: float) -> dict:
    spec = {"system": system, "kind": kind, "size": KiB, "count": n, "warm": max(50, n // 10),
            "capacity": 2, "bound": bound}
    before = set(os.listdir("/dev/shm"))
    r, w = ctx.Pipe(duplex=False)
    pr = ctx.Process(target=workers.pingpong, args=(spec, w), daemon=True)
    pr.start()
    w.close()
    res = {"system": system, "kind": kind, "count": n, "ok": False}
    try:
        if r.poll(bound):
            msg = r.recv()
            if msg.get("event") == "done":
                res.update(ok=True, us_per_msg=msg["us_per_msg"], seconds=msg["seconds"])
            else:
                res["error"] = msg.get("error")
                res["trace"] = msg.get("trace")
        else:
            res["error"] = f"timeout: exceeded its bound of {bound:.0f} s (killed)"
    except EOFError:
        res["error"] = "exited without reporting"
    finally:
        pr.join(5 if res["ok"] else 0.1)
        if pr.is_alive():
            pr.kill()
            pr.join(5)
    left = clean_leftovers(before, [])
    if left:
        res["leftovers_removed"] = left
    return res


# -- plan ----------------------------------------------------------------------------------


def plan_count(size: int, args, topo: Topology) -> int:
    """Messages per case (all producers together): about ``--bytes-per-case``, at least
    ``--min-count`` and 4 per producer, at most ``--max-count``; a multiple of the
    number of producers."""
    n = args.bytes_per_case // size
    n = int(min(max(n, args.min_count, 4 * topo.producers), args.max_count))
    return n - n % topo.producers


def plan_warm(count_per_producer: int, size: int) -> int:
    lo = 1 if size >= 10 * MiB else 2
    return int(min(max(count_per_producer // 8, lo), 100))


def run_bound(args, topo: Topology, size: int, count: int, warm: int) -> float:
    total = (count + warm * topo.producers) * size
    return args.timeout_scale * (30 + 2 * (topo.producers + topo.consumers)
                                 + total / 50e6 + count * 3e-3)


def mem_estimate(topo: Topology, size: int, depth: int) -> int:
    """Rough peak memory of a case: every producer holding its payload and a pickled copy,
    every consumer a received buffer and the object, the queue ``depth`` messages."""
    return (2 * topo.producers + 2 * topo.consumers + depth) * size


def skip_reason(args, topo: Topology, system: str, size: int, cap: int) -> str | None:
    if system == "ff":
        need = size + 1024
        if min(args.ff_buffer, cap * need) < 2 * need:
            return (f"faster-fifo's ring buffer (allocated and zero-filled at creation) would "
                    f"exceed --ff-buffer {fmt_size(args.ff_buffer)} for 2 messages")
    return None


def cell_skip(args, topo: Topology, size: int, cap: int) -> str | None:
    if topo.producers == 1 and topo.capacity > 2 and cap <= 2:
        return (f"capacity × size limited to --queue-bytes {fmt_size(args.queue_bytes)}: "
                f"the depth would be 2, the capacity-2 case")
    est = mem_estimate(topo, size, cap)
    if est > args.mem_budget:
        return (f"estimated peak memory {est / GiB:.1f} GiB exceeds --mem-budget "
                f"{args.mem_budget / GiB:.1f} GiB")
    if cap * size * 1.2 > shm_free() * 0.8:
        return "not enough room in /dev/shm"
    return None


# -- summaries and output ------------------------------------------------------------------


def short_list(xs: list[str], n: int = 4) -> str:
    return ", ".join(xs[:n]) + (f" and {len(xs) - n} more" if len(xs) > n else "")


def quartiles(xs: list[float]) -> tuple[float, float]:
    if len(xs) < 2:
        return xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], q[2]


def summarize(runs: list[dict], systems: list[str]) -> list[dict]:
    cells: dict[tuple, dict] = {}
    for r in runs:
        key = (r["topology"], r["kind"], r["size"])
        cells.setdefault(key, {}).setdefault(r["system"], []).append(r)
    out = []
    for (topo, kind, size), by in cells.items():
        base = {r["rep"]: r["seconds"] for r in by.get("mpq", []) if r.get("ok")}
        for system in systems:
            rs = by.get(system)
            if not rs:
                continue
            good = [r for r in rs if r.get("ok")]
            s = {"topology": topo, "kind": kind, "size": size, "system": system,
                 "runs": len(rs), "ok_runs": len(good),
                 "errors": sorted({r["error"] for r in rs if r.get("error")}),
                 "skipped": next((r["skipped"] for r in rs if r.get("skipped")), None)}
            if good:
                secs = [r["seconds"] for r in good]
                n = good[0]["count"]
                med = statistics.median(secs)
                q1, q3 = quartiles(secs)
                s.update(count=n, depth=good[0].get("depth"), median_s=med,
                         min_s=min(secs), max_s=max(secs), q1_s=q1, q3_s=q3,
                         msg_per_s=n / med, mb_per_s=n * size / med / 1e6,
                         msg_per_s_range=[n / max(secs), n / min(secs)],
                         us_per_msg=med / n * 1e6)
                ratios = [base[r["rep"]] / r["seconds"] for r in good if r["rep"] in base]
                if ratios:
                    s.update(speedup=statistics.median(ratios), speedup_min=min(ratios),
                             speedup_max=max(ratios))
                mems = [r["memory"] for r in good if r.get("memory")]
                if mems:
                    s["memory"] = {k: statistics.median([m[k] for m in mems if m.get(k) is not None])
                                   for k in mems[0] if k != "samples" and
                                   any(m.get(k) is not None for m in mems)}
            out.append(s)
    return out


def fmt_rate(s: dict) -> str:
    if s.get("ok_runs"):
        mb = s["mb_per_s"]
        rate = f"{mb:,.0f} MB/s" if mb >= 100 else f"{mb:,.1f} MB/s"
        sp = s.get("speedup")
        if sp is None:
            return rate
        return f"{rate} · **{sp:.2f}×** ({s['speedup_min']:.2f}–{s['speedup_max']:.2f})"
    if s.get("skipped"):
        return "skipped¹"
    return "failed²"


def write_markdown(path: str, meta: dict, summary: list[dict], pingpong: list[dict],
                   systems: list[str], plots: list[str]) -> None:
    L = []
    v = meta["versions"]
    L.append("# shmq Python benchmark\n")
    L.append(f"Run {meta['started']} · {meta['elapsed_s'] / 60:.1f} min · `{meta['command']}`  ")
    L.append(f"{v.get('cpu')} · {v.get('mem_total', 0) / GiB:.0f} GiB RAM · "
             f"Python {v['python']} · numpy {v.get('numpy')} · py-sharedmemory "
             f"{v.get('py-sharedmemory')} · faster-fifo {v.get('faster-fifo')} · shmq "
             f"{v.get('shmq')} ({v.get('shmq_git', '?')})  ")
    L.append(f"Load average at start {meta['load_start']}, at end {meta['load_end']}"
             " (a shared machine makes absolute numbers noisy; compare ratios within one run).\n")
    L.append("Each cell: median throughput over the repetitions, then **the median speedup over "
             "`mp.Queue`** (the ratio of each repetition's times, systems alternating within a "
             "repetition) with its min–max. Sizes are binary (1 KB = 1024 bytes). "
             f"Repetitions: {meta['args']['reps']}. `spawn` start method.\n")
    skips: dict[str, int] = {}
    fails: list[str] = []
    by = {(s["topology"], s["kind"], s["size"], s["system"]): s for s in summary}
    sizes = sorted({s["size"] for s in summary})
    for tkey, topo in TOPOLOGIES.items():
        for kind in KINDS:
            rows = [sz for sz in sizes if any((tkey, kind, sz, x) in by for x in systems)]
            if not rows:
                continue
            L.append(f"## {topo.title}: {KINDS[kind]}\n")
            if tkey.startswith("4to2"):
                L.append("py-sharedmemory allows one producing process per pair, so it runs as "
                         "**4 pairs** (one per producer, capacity 4 each), consumer *c* reading "
                         "pairs *c* and *c*+2 alternately; every other system is one queue "
                         "shared by all six processes, each consumer taking its exact share "
                         "of the messages.\n")
            L.append("| size | msgs | " + " | ".join(SHORT[x] for x in systems) + " |")
            L.append("|---|---:|" + "---:|" * len(systems))
            for sz in rows:
                cells = []
                n = None
                for x in systems:
                    s = by.get((tkey, kind, sz, x))
                    if s is None:
                        cells.append("–")
                        continue
                    n = n or s.get("count")
                    cell = fmt_rate(s)
                    if s.get("skipped"):
                        skips.setdefault(f"{SHORT[x]} at {fmt_size(sz)} ({topo.title}): "
                                         f"{s['skipped']}", 0)
                    elif not s.get("ok_runs") or s.get("errors"):
                        fails.extend(f"{SHORT[x]}, {fmt_size(sz)}, {topo.title}, {kind}: {e}"
                                     for e in s["errors"])
                        if s.get("ok_runs"):
                            cell += "²"
                    d = s.get("depth")
                    if d is not None and d != topo.capacity and s.get("ok_runs"):
                        cell += f" (depth {d})"
                    cells.append(cell)
                L.append(f"| {fmt_size(sz)} | {n or ''} | " + " | ".join(cells) + " |")
            L.append("")
            name = f"speedup_{tkey}_{kind}.png"
            if name in plots:
                L.append(f"![speedup over mp.Queue, {topo.title}, {KINDS[kind]}]({name})\n")
    if pingpong:
        L.append("## Per-message cost, 1 KB, both ends in one process\n")
        L.append("`put` then `get` of one message, repeated; median µs per message (min–max).\n")
        L.append("| system | " + " | ".join(KINDS[k] for k in KINDS) + " |")
        L.append("|---|" + "---:|" * len(KINDS))
        for x in systems:
            row = []
            for k in KINDS:
                rs = [r for r in pingpong if r["system"] == x and r["kind"] == k]
                good = [r["us_per_msg"] for r in rs if r.get("ok")]
                if good:
                    row.append(f"{statistics.median(good):.1f} ({min(good):.1f}–{max(good):.1f})")
                elif rs:
                    row.append("failed²")
                    fails.extend(f"{SHORT[x]} one-process {k}: {r.get('error')}" for r in rs
                                 if not r.get("ok"))
                else:
                    row.append("–")
            L.append(f"| {LABELS[x]} | " + " | ".join(row) + " |")
        L.append("")
    L.append("## Memory while timed\n")
    L.append("Peak RSS of a producer / a consumer process (sampled every 10 ms while timed; "
             "shared-memory pages mapped count in both), and the peak growth of `/dev/shm` use "
             "(statvfs, so other work on the machine shows up too), in MB; medians over the "
             "repetitions. The producer holds its payload; a consumer holds at most one message.\n")
    for tkey, topo in TOPOLOGIES.items():
        for kind in KINDS:
            rows = [sz for sz in sizes if any((tkey, kind, sz, x) in by for x in systems)]
            if not rows:
                continue
            L.append(f"**{topo.title}: {KINDS[kind]}** — producer RSS / consumer RSS / /dev/shm\n")
            L.append("| size | " + " | ".join(SHORT[x] for x in systems) + " |")
            L.append("|---|" + "---:|" * len(systems))
            for sz in rows:
                cells = []
                for x in systems:
                    m = (by.get((tkey, kind, sz, x)) or {}).get("memory")
                    if not m:
                        cells.append("–")
                        continue
                    shm = m.get("dev_shm_bytes")
                    cells.append(f"{m['producer_VmRSS'] / 1e6:,.0f} / {m['consumer_VmRSS'] / 1e6:,.0f}"
                                 f" / {'?' if shm is None else f'{shm / 1e6:,.0f}'}")
                L.append(f"| {fmt_size(sz)} | " + " | ".join(cells) + " |")
            L.append("")
    L.append("## Notes\n")
    L.append(f"- Messages per case: about {fmt_size(meta['args']['bytes_per_case'])}, at least "
             f"{meta['args']['min_count']} (and 4 per producer), at most "
             f"{meta['args']['max_count']}; before each repetition, a warm-up of an eighth of "
             "that per producer (2–100; 1–100 from 10 MB) through the same queue.")
    L.append("- Each system's processes are started once per cell and kept between "
             "repetitions (idle while the others run), except at 1 GB and when memory runs "
             "short; the start is never timed.")
    L.append("- Depth: a queue deeper than 2 is limited so that depth × size ≤ "
             f"{fmt_size(meta['args']['queue_bytes'])} (`--queue-bytes`); faster-fifo's ring "
             f"buffer to {fmt_size(meta['args']['ff_buffer'])} (`--ff-buffer`), which bounds "
             "its depth in bytes (shown as \"depth\").")
    for k in skips:
        L.append(f"- ¹ Skipped: {k}.")
    for f in fails:
        L.append(f"- ² {f}")
    if meta.get("leftovers"):
        L.append(f"- /dev/shm after cases (removed unless marked): "
                 f"{short_list(meta['leftovers'])}")
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")


def make_plots(outdir: str, summary: list[dict], systems: list[str]) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        print("matplotlib not installed: no plots", file=sys.stderr)
        return []
    made = []
    for tkey, topo in TOPOLOGIES.items():
        for kind in KINDS:
            pts = [s for s in summary if s["topology"] == tkey and s["kind"] == kind]
            if not pts:
                continue
            fig, ax = plt.subplots(figsize=(7.5, 4.5))
            for x in systems:
                ser = sorted((s for s in pts if s["system"] == x and s.get("speedup")),
                             key=lambda s: s["size"])
                if not ser:
                    continue
                xs = [s["size"] for s in ser]
                ys = [s["speedup"] for s in ser]
                err = [[y - s["speedup_min"] for y, s in zip(ys, ser)],
                       [s["speedup_max"] - y for y, s in zip(ys, ser)]]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=LABELS[x],
                            linestyle="--" if x == "mpq" else "-")
            ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            sizes = sorted({s["size"] for s in pts})
            ax.set_xticks(sizes)
            ax.set_xticklabels([fmt_size(s) for s in sizes])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
            ax.set_xlabel("message size")
            ax.set_ylabel("speedup over multiprocessing.Queue")
            ax.set_title(f"{topo.title}, {KINDS[kind]} (median, min–max)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            name = f"speedup_{tkey}_{kind}.png"
            fig.savefig(os.path.join(outdir, name), dpi=110)
            plt.close(fig)
            made.append(name)
    return made


def write_outputs(outdir: str, meta: dict, runs: list[dict], pingpong: list[dict],
                  systems: list[str]) -> list[dict]:
    os.makedirs(outdir, exist_ok=True)
    summary = summarize(runs, systems)
    plots = make_plots(outdir, summary, systems)
    with open(os.path.join(outdir, "results.json"), "w") as f:
        # Compact (no indentation): a full run (~1,100 repetitions) is ~860 KB, not 1.1 MB.
        json.dump({"meta": meta, "summary": summary, "runs": runs, "pingpong": pingpong}, f,
                  separators=(",", ":"), default=str)
    write_markdown(os.path.join(outdir, "results.md"), meta, summary, pingpong, systems, plots)
    return summary


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: sizes 1K,100K,10M, 1 repetition, fewer messages")
    ap.add_argument("--sizes", help="comma-separated sizes, e.g. 1K,10K,1M,1G (binary units)")
    ap.add_argument("--reps", type=int, help="repetitions (default 5; --quick: 1)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="output directory")
    ap.add_argument("--topologies", default=",".join(TOPOLOGIES),
                    help=f"comma-separated, of {', '.join(TOPOLOGIES)}")
    ap.add_argument("--kinds", default="bytes,f32", help="payload kinds: bytes,f32")
    ap.add_argument("--big-kinds", default="f32",
                    help="payload kinds at sizes of 1 GB and more (default f32 only: on a "
                         "2-core machine each such cell takes ~8 min, mostly mp.Queue's)")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help=f"comma-separated, of {', '.join(SYSTEMS)} (mpq is the baseline)")
    ap.add_argument("--no-pingpong", action="store_true",
                    help="skip the 1 KB both-ends-in-one-process measurement")
    ap.add_argument("--bytes-per-case", type=parse_size, default=None,
                    help="bytes moved per timed case (default 512M; --quick: 64M)")
    ap.add_argument("--min-count", type=int, default=8, help="fewest messages per case")
    ap.add_argument("--max-count", type=int, default=None,
                    help="most messages per case (default 5000; --quick: 2000)")
    ap.add_argument("--queue-bytes", type=parse_size, default=2 * GiB,
                    help="deeper queues are limited to depth × size ≤ this (default 2G)")
    ap.add_argument("--ff-buffer", type=parse_size, default=GiB,
                    help="largest faster-fifo ring buffer (default 1G)")
    ap.add_argument("--mem-budget", type=parse_size, default=None,
                    help="skip cases whose estimated peak memory exceeds this "
                         "(default: 60%% of MemAvailable at start)")
    ap.add_argument("--mem-margin", type=parse_size, default=4 * GiB,
                    help="memory to leave free beyond a case's estimated peak; idle "
                         "systems' processes are stopped to keep it (default 4G)")
    ap.add_argument("--timeout-scale", type=float, default=1.0,
                    help="multiplies every case's time bound")
    args = ap.parse_args(argv)

    if args.reps is None:
        args.reps = 1 if args.quick else 5
    if args.bytes_per_case is None:
        args.bytes_per_case = 64 * MiB if args.quick else 512 * MiB
    if args.max_count is None:
        args.max_count = 2000 if args.quick else 5000
    sizes = ([parse_size(s) for s in args.sizes.split(",")] if args.sizes
             else QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if any(s < 64 for s in sizes):
        ap.error("sizes must be at least 64 bytes")
    sizes = sorted(s - s % 8 for s in sizes)
    topos = [TOPOLOGIES[t] for t in args.topologies.split(",")]
    kinds = args.kinds.split(",")
    systems = [s for s in SYSTEMS if s in args.systems.split(",")]
    if args.mem_budget is None:
        args.mem_budget = int(mem_available() * 0.6)

    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t_start = time.perf_counter()
    meta = {"started": started, "command": " ".join(["python", "run.py"] + sys.argv[1:]),
            "args": vars(args), "versions": versions(), "load_start": loadavg()}
    print(f"shmq bench: {len(topos)} topologies × {len(kinds)} kinds × {len(sizes)} sizes × "
          f"{args.reps} reps × {len(systems)} systems → {args.out}", flush=True)

    runs: list[dict] = []
    leftovers: list[str] = []
    big_kinds = args.big_kinds.split(",")
    cells = [(t, k, s) for t in topos for k in kinds for s in sizes
             if s < GiB or k in big_kinds]
    sampler = Sampler()
    sampler.start()
    try:
        for ci, (topo, kind, size) in enumerate(cells):
            cap = topo.capacity
            if cap > 2:
                cap = max(2, min(cap, args.queue_bytes // size))
            count = plan_count(size, args, topo)
            warm = plan_warm(count // topo.producers, size)
            bound = run_bound(args, topo, size, count, warm)
            t_cell = time.perf_counter()
            why = cell_skip(args, topo, size, cap)
            head = f"[{ci + 1}/{len(cells)}] {topo.key} {kind} {fmt_size(size)}"
            if why:
                print(f"{head}: skipped ({why})", flush=True)
                for x in systems:
                    runs.append({"system": x, "topology": topo.key, "kind": kind, "size": size,
                                 "rep": 0, "ok": False, "skipped": why})
                continue
            active = []
            for x in systems:
                why = skip_reason(args, topo, x, size, cap)
                if why:
                    runs.append({"system": x, "topology": topo.key, "kind": kind, "size": size,
                                 "rep": 0, "ok": False, "skipped": why})
                else:
                    active.append(x)
            print(f"{head}: {count} msgs, depth {cap}, bound {bound:.0f} s", flush=True)
            cell = CellRun(ctx, args, topo, kind, size, count, warm, cap, bound)
            try:
                for rep in range(args.reps):
                    order = active[rep % len(active):] + active[:rep % len(active)]
                    for x in order:
                        r = cell.run(x, rep, sampler)
                        r["load"] = loadavg()[0]
                        runs.append(r)
                        if not r["ok"] and not r.get("error", "").startswith("not run"):
                            print(f"    {SHORT[x]:<13} rep {rep}: FAILED {r.get('error')}",
                                  flush=True)
                            if r.get("trace"):
                                print("      " + r["trace"].strip().replace("\n", "\n      "),
                                      flush=True)
            finally:
                problems, left = cell.close()
                leftovers += left
                for x, p in problems:
                    print(f"    {SHORT[x]}: {p}", flush=True)
                    for r in runs[::-1]:
                        if r["system"] == x and r["topology"] == topo.key and \
                                r["kind"] == kind and r["size"] == size:
                            r.setdefault("warnings", []).append(p)
                            break
                if left:
                    print(f"    /dev/shm: {short_list(left)}", flush=True)
            cell_runs = [r for r in runs if r["topology"] == topo.key and r["kind"] == kind
                         and r["size"] == size and r.get("ok")]
            base = statistics.median([r["seconds"] for r in cell_runs if r["system"] == "mpq"]
                                     or [math.nan])
            parts = []
            for x in systems:
                secs = [r["seconds"] for r in cell_runs if r["system"] == x]
                if secs:
                    med = statistics.median(secs)
                    parts.append(f"{SHORT[x]} {count * size / med / 1e6:,.0f} MB/s"
                                 f" ({base / med:.2f}×)")
            print(f"    {' | '.join(parts)}  [{time.perf_counter() - t_cell:.0f} s"
                  + (f", {cell.restarts} restarts for memory" if cell.restarts else "")
                  + f", total {(time.perf_counter() - t_start) / 60:.1f} min]", flush=True)

        pingpong: list[dict] = []
        if not args.no_pingpong:
            n = 500 if args.quick else 3000
            print(f"one process, 1 KB put+get × {n}:", flush=True)
            for kind in kinds:
                for rep in range(args.reps):
                    order = systems[rep % len(systems):] + systems[:rep % len(systems)]
                    for x in order:
                        r = run_pingpong(ctx, x, kind, n, 60 * args.timeout_scale)
                        r["rep"] = rep
                        pingpong.append(r)
                        leftovers += r.get("leftovers_removed", [])
                for x in systems:
                    us = [r["us_per_msg"] for r in pingpong
                          if r["system"] == x and r["kind"] == kind and r.get("ok")]
                    errs = [r.get("error") for r in pingpong
                            if r["system"] == x and r["kind"] == kind and not r.get("ok")]
                    print(f"    {kind:<5} {SHORT[x]:<13} "
                          + (f"{statistics.median(us):8.1f} µs" if us else "")
                          + (f"  FAILED {errs[0]}" if errs else ""), flush=True)
    except KeyboardInterrupt:
        print("interrupted: writing what was measured", file=sys.stderr)
        pingpong = locals().get("pingpong", [])
    sampler.stop.set()
    meta["elapsed_s"] = time.perf_counter() - t_start
    meta["load_end"] = loadavg()
    removed = [e for e in leftovers if "(" not in e]
    # Noted entries (not ours to remove) that are gone by now were not leaks.
    noted = [e for e in leftovers if "(" in e
             and os.path.exists("/dev/shm/" + e.split(" (")[0])]
    meta["leftovers"] = removed + noted
    write_outputs(args.out, meta, runs, pingpong, systems)
    print(f"done in {meta['elapsed_s'] / 60:.1f} min → {args.out}/results.md"
          + (f"; removed from /dev/shm: {short_list(removed)}" if removed else "")
          + (f"; noted in /dev/shm: {short_list(noted)}" if noted else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

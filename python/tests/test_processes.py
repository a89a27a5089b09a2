"""Real processes on one queue, under every start method: the drop-in pair and the native
channel handed to children (as Process arguments, pool initargs, inherited globals), several
producer and consumer processes with exact accounting, Ctrl-C in a blocked child, and whole
programs run in fresh interpreters (clean stderr, the closing warning, descriptor limits,
a full /dev/shm)."""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import _procutil as pu
import shmq
from conftest import run_python

TESTS = os.path.dirname(os.path.abspath(__file__))
METHODS = ["spawn", "fork", "forkserver"]


@pytest.fixture(params=METHODS)
def ctx(request):
    return multiprocessing.get_context(request.param)


def _drop(obj_holder: dict, key: str, how: str) -> None:
    """Closes or deletes the parent's copy ``obj_holder[key]`` (the last reference)."""
    obj = obj_holder.pop(key)
    if how == "close":
        obj.close()
    del obj


def _check_order(got: list[tuple[int, int]]) -> None:
    """Each producer's messages, as one consumer saw them, are in order."""
    last: dict[int, int] = {}
    for tag, seq in got:
        assert seq > last.get(tag, -1), f"producer {tag}: {seq} after {last[tag]}"
        last[tag] = seq


# ---------------------------------------------------------------------------------------
# The drop-in pair between the parent and children


N = 60


@pytest.mark.parametrize("how", ["close", "del"])
def test_dropin_producer_child(ctx, how):
    tx, rx = shmq.create_shared_memory_pair(8)
    mine = {"tx": tx}
    del tx
    with pu.Children(ctx) as ch:
        p = ch.start(pu.dropin_produce, mine["tx"], 1, N, False)
        _drop(mine, "tx", how)
        got = [pu.decode(rx.get(timeout=60)) for _ in range(N)]
        assert got == [(1, i) for i in range(N)]
        assert ch.join(p) == 0
    with pytest.raises(queue.Empty):
        rx.get(timeout=0.2)
    rx.close()


@pytest.mark.parametrize("how", ["close", "del"])
def test_dropin_consumer_child(ctx, how):
    tx, rx = shmq.create_shared_memory_pair(8)
    mine = {"rx": rx}
    del rx
    r, w = ctx.Pipe(duplex=False)
    with pu.Children(ctx) as ch:
        p = ch.start(pu.dropin_consume, mine["rx"], N, w)
        _drop(mine, "rx", how)
        for i in range(N):  # 60 messages through capacity 8: the child must keep up
            tx.put(pu.make_msg(2, i), timeout=60)
        assert pu.recv_conn(r, 60, p) == [(2, i) for i in range(N)]
        assert tx.wait_for_all_ack(30)
        assert ch.join(p) == 0
    tx.close()


@pytest.mark.parametrize("how", ["close", "del"])
def test_dropin_both_children(ctx, how):
    tx, rx = shmq.create_shared_memory_pair(8)
    mine = {"tx": tx, "rx": rx}
    del tx, rx
    r, w = ctx.Pipe(duplex=False)
    with pu.Children(ctx) as ch:
        c = ch.start(pu.dropin_consume, mine["rx"], N, w)
        p = ch.start(pu.dropin_produce, mine["tx"], 3, N, True)
        _drop(mine, "rx", how)
        _drop(mine, "tx", how)
        assert pu.recv_conn(r, 60, c) == [(3, i) for i in range(N)]
        assert ch.join(p) == 0
        assert ch.join(c) == 0


@pytest.mark.parametrize("api", ["dropin", "native"])
def test_queue_leaves_dev_shm_when_parent_closes_after_child_left(ctx, api):
    """The hold the parent took to hand the queue over must not outlive the hand-over: a
    child attached, produced and exited; the parent then closes its last endpoint, and
    no process is attached any more, so the queue must be gone from /dev/shm."""
    native = api == "native"
    tx, rx = shmq.channel(8) if native else shmq.create_shared_memory_pair(8)
    name = tx.name
    with pu.Children(ctx) as ch:
        if native:
            p = ch.start(pu.native_produce, tx, 1, 3)
            assert ch.join(p) == 0
            tx.close()
            got = [pu.decode(o) for o in rx]
        else:
            p = ch.start(pu.dropin_produce, tx, 1, 3, False)
            tx.close()
            got = [pu.decode(rx.get(timeout=60)) for _ in range(3)]
            assert ch.join(p) == 0
    assert got == [(1, i) for i in range(3)]
    rx.close()
    deadline = time.monotonic() + 10
    while pu.queue_files(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pu.queue_files(name) == [], "still in /dev/shm 10 s after the last close"


@pytest.mark.parametrize("api", ["dropin", "native"])
def test_handover_to_two_children_survives_the_first_leaving(ctx, api):
    """The parent hands its receiver to two children and closes its copies. The first
    child attaches and leaves before the second one has attached (its arguments take
    2 s to unpickle). The second must still find the queue, and the job waiting in it."""
    native = api == "native"
    tx, rx = shmq.channel(4) if native else shmq.create_shared_memory_pair(4)
    attached, go = ctx.Event(), ctx.Event()
    r, w = ctx.Pipe(duplex=False)
    with pu.Children(ctx) as ch:
        first = ch.start(pu.attach_then_wait, rx, native, attached, go)
        assert attached.wait(60)
        (tx.send if native else tx.put)("job")
        second = ch.start(pu.late_get, pu.Delay(2.0), rx, native, w)
        tx.close()
        rx.close()
        go.set()
        assert ch.join(first) == 0
        assert pu.recv_conn(r, 60, second) == ("got", "job")
        assert ch.join(second) == 0


def test_dropin_three_producers_two_consumers(ctx):
    M = 120
    tx, rx = shmq.create_shared_memory_pair(16)
    conns = []
    with pu.Children(ctx) as ch:
        consumers = []
        for _ in range(2):
            r, w = ctx.Pipe(duplex=False)
            conns.append(r)
            consumers.append(ch.start(pu.dropin_consume, rx, None, w))
        producers = [ch.start(pu.dropin_produce, tx, tag, M, False) for tag in range(3)]
        rx.close()
        for p in producers:
            assert ch.join(p) == 0
        for _ in consumers:  # one sentinel per consumer, behind every message
            tx.put(None, timeout=60)
        results = [pu.recv_conn(r, 60, c) for r, c in zip(conns, consumers)]
        for c in consumers:
            assert ch.join(c) == 0
    assert tx.wait_for_all_ack(30)
    tx.close()
    counts = collections.Counter(m for got in results for m in got)
    assert counts == collections.Counter((t, s) for t in range(3) for s in range(M))
    for got in results:
        _check_order(got)


def test_native_three_producers_two_consumers(ctx):
    M = 120
    tx, rx = shmq.channel(16)
    conns = []
    with pu.Children(ctx) as ch:
        consumers = []
        for _ in range(2):
            r, w = ctx.Pipe(duplex=False)
            conns.append(r)
            consumers.append(ch.start(pu.native_consume, rx, w))
        producers = [ch.start(pu.native_produce, tx, tag, M) for tag in range(3)]
        for p in producers:
            assert ch.join(p) == 0
        # The parent's endpoints kept the producers from seeing "no receiver" and the
        # consumers from seeing "no sender" while the children started (a child that
        # attached before the others would rightly get Disconnected). With the parent's
        # sender gone, the consumers' iteration ends once the queue is empty. (The
        # parent's receiver stays open until both consumers are done: closing it here
        # too is test_handover_to_two_children_survives_the_first_leaving.)
        tx.close()
        results = [pu.recv_conn(r, 60, c) for r, c in zip(conns, consumers)]
        for c in consumers:
            assert ch.join(c) == 0
        rx.close()
    counts = collections.Counter(m for got in results for m in got)
    assert counts == collections.Counter((t, s) for t in range(3) for s in range(M))
    for got in results:
        _check_order(got)


def test_receiver_as_pool_initarg(ctx):
    n = 24
    tx, rx = shmq.create_shared_memory_pair(0)
    for i in range(n):
        tx.put(pu.make_msg(4, i))
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=2, mp_context=ctx, initializer=pu.pool_init, initargs=(rx,)
    ) as ex:
        results = list(ex.map(pu.pool_get, range(n), timeout=60))
    assert sorted(m for _, m in results) == [(4, i) for i in range(n)]
    assert os.getpid() not in {pid for pid, _ in results}
    assert tx.wait_for_all_ack(30)
    tx.close()
    rx.close()


def test_native_receiver_as_pool_initarg(ctx):
    n = 24
    tx, rx = shmq.channel(n)
    for i in range(n):
        tx.send(pu.make_msg(5, i))
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=2, mp_context=ctx, initializer=pu.pool_init, initargs=(rx,)
    ) as ex:
        results = list(ex.map(pu.pool_recv, range(n), timeout=60))
    assert sorted(m for _, m in results) == [(5, i) for i in range(n)]
    tx.close()
    rx.close()


def test_inherited_module_globals_under_fork():
    ctx = multiprocessing.get_context("fork")
    n = 30
    tx, rx = shmq.create_shared_memory_pair(4)
    ntx, nrx = shmq.channel(64)
    r, w = ctx.Pipe(duplex=False)
    pu.GLOBAL_RX, pu.GLOBAL_TX = rx, ntx
    try:
        with pu.Children(ctx) as ch:
            c = ch.start(pu.global_consume, n, w)
            p = ch.start(pu.global_native_produce, 6, n)
            for i in range(n):
                tx.put(pu.make_msg(1, i), timeout=60)
            assert pu.recv_conn(r, 60, c) == [(1, i) for i in range(n)]
            assert ch.join(c) == 0
            assert ch.join(p) == 0
    finally:
        pu.GLOBAL_RX = pu.GLOBAL_TX = None
    ntx.close()  # the child's copy is gone too: iteration ends after the messages
    assert [pu.decode(o) for o in nrx] == [(6, i) for i in range(n)]
    assert tx.wait_for_all_ack(30)
    for e in (tx, rx, nrx):
        e.close()


def test_sender_used_then_passed_to_child(ctx):
    """py-sharedmemory refuses this (RuntimeError); shmq takes puts from both processes."""
    n = 40
    tx, rx = shmq.create_shared_memory_pair(0)
    tx.put(pu.make_msg(0, 0))
    tx.put(pu.make_msg(0, 1))
    with pu.Children(ctx) as ch:
        p = ch.start(pu.dropin_produce, tx, 1, n, False)
        for i in range(2, 6):
            tx.put(pu.make_msg(0, i))
        got = [pu.decode(rx.get(timeout=60)) for _ in range(n + 6)]
        assert ch.join(p) == 0
    tx.put(pu.make_msg(0, 6))
    got.append(pu.decode(rx.get(timeout=60)))
    assert collections.Counter(got) == collections.Counter(
        [(0, i) for i in range(7)] + [(1, i) for i in range(n)]
    )
    _check_order(got)
    assert tx.wait_for_all_ack(30)
    tx.close()
    rx.close()


@pytest.mark.parametrize("api", ["dropin", "native"])
def test_sigint_interrupts_blocked_get_in_child(ctx, api):
    native = api == "native"
    tx, rx = shmq.channel(4) if native else shmq.create_shared_memory_pair(4)
    ready = ctx.Event()
    r, w = ctx.Pipe(duplex=False)
    with pu.Children(ctx) as ch:
        p = ch.start(pu.sigint_get, rx, native, ready, w)
        assert ready.wait(60)
        time.sleep(0.3)  # let it enter the blocking get (an earlier signal is fine too)
        os.kill(p.pid, signal.SIGINT)
        kind, detail = pu.recv_conn(r, 60, p)
        assert kind == "interrupted", (kind, detail)
        assert detail < 30, f"KeyboardInterrupt came only after {detail:.1f}s"
        (tx.send if native else tx.put)("after the interrupt")
        assert pu.recv_conn(r, 60, p) == ("after", "after the interrupt")
        assert ch.join(p) == 0
    tx.close()
    rx.close()


# ---------------------------------------------------------------------------------------
# Whole programs in fresh interpreters


def _assert_ok(r: subprocess.CompletedProcess) -> None:
    """Exit status 0, stdout exactly "ok", and nothing at all on stderr."""
    assert r.returncode == 0 and r.stderr == "", f"rc={r.returncode}\n{r.stderr}"
    assert r.stdout == "ok\n"


@pytest.mark.parametrize("method", METHODS)
def test_program_with_child_producer_has_clean_stderr(method):
    code = f"""
        import multiprocessing, sys
        sys.path.insert(0, {TESTS!r})
        import shmq, _procutil

        if __name__ == "__main__":
            ctx = multiprocessing.get_context({method!r})
            tx, rx = shmq.create_shared_memory_pair(4)
            p = ctx.Process(target=_procutil.dropin_produce, args=(tx, 5, 10, True))
            p.start()
            got = [_procutil.decode(rx.get(timeout=60)) for _ in range(10)]
            p.join(60)
            assert p.exitcode == 0, p.exitcode
            assert got == [(5, i) for i in range(10)], got
            tx.close()
            rx.close()
            print("ok")
    """
    r = run_python(code)
    _assert_ok(r)


def test_program_exiting_with_unread_message_warns():
    code = """
        import shmq
        tx, rx = shmq.create_shared_memory_pair(4)
        tx.put({"unread": 1})
        rx.close()
        print("exiting")
    """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "exiting\n"
    assert ("RuntimeWarning: Closing the sender discards 1 unacknowledged message"
            in r.stderr), r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_program_1000_unread_messages_under_fd_limit_256():
    code = """
        import os, resource
        import numpy as np
        import shmq

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        payload = bytes(range(256)) * 40  # 10 KiB
        tx, rx = shmq.create_shared_memory_pair(0)
        for i in range(1000):
            tx.put((i, payload))
        for i in range(1000):
            j, p = rx.get(timeout=30)
            assert j == i and p == payload, j
        assert tx.wait_for_all_ack(30)
        tx.close(); rx.close()

        # The native API, keeping every received array (a zero-copy view) alive at once.
        ntx, nrx = shmq.channel(1000)
        for i in range(1000):
            ntx.send(np.full(1280, i, dtype=np.int64))  # 10 KiB
        views = [nrx.recv(timeout=30) for _ in range(1000)]
        assert all(int(v[0]) == i and int(v[-1]) == i for i, v in enumerate(views))
        assert len(os.listdir("/proc/self/fd")) < 256
        del views
        ntx.close(); nrx.close()
        print("ok")
    """
    r = run_python(code)
    _assert_ok(r)


def test_program_200_pairs_keep_fds_and_dev_shm_bounded():
    code = """
        import os
        import shmq

        def ours():
            return {n for n in os.listdir("/dev/shm") if str(os.getpid()) in n}

        def fds():
            return len(os.listdir("/proc/self/fd"))

        before = ours()
        names = []
        counts = []
        for i in range(200):
            tx, rx = shmq.create_shared_memory_pair(4)
            names.append(tx.name)
            tx.put(bytes(10_000) if i % 2 else i)
            rx.get(timeout=30)
            assert tx.wait_for_all_ack(30)
            tx.close(); rx.close()
            del tx, rx
            counts.append(fds())
        base = counts[9]
        assert max(counts[10:]) <= base + 4, (base, counts)
        left = [n for n in os.listdir("/dev/shm") if any(q in n for q in names)]
        assert not left, left
        assert ours() == before, (before, ours())
        print("ok", base, max(counts))
    """
    r = run_python(code)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith("ok "), r.stdout


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_program_handover_rounds_keep_fds_and_dev_shm_bounded(method):
    """Rounds of: a new pair, its sender handed to a child that puts one message and
    exits, the parent gets it and closes both. Nothing may accumulate across rounds."""
    code = f"""
        import multiprocessing, os, sys
        sys.path.insert(0, {TESTS!r})
        import shmq, _procutil

        def entries():
            return set(os.listdir("/dev/shm"))

        if __name__ == "__main__":
            ctx = multiprocessing.get_context({method!r})
            before = entries()
            names, counts = [], []
            for i in range(30):
                tx, rx = shmq.create_shared_memory_pair(4)
                names.append(tx.name)
                p = ctx.Process(target=_procutil.dropin_produce, args=(tx, 1, 1, False))
                p.start()
                tx.close()
                assert _procutil.decode(rx.get(timeout=60)) == (1, 0)
                p.join(60)
                assert p.exitcode == 0, p.exitcode
                rx.close()
                del tx, rx
                counts.append(len(os.listdir("/proc/self/fd")))
            left = sorted(n for n in entries() if any(q in n for q in names))
            assert max(counts[10:]) <= counts[9] + 4, ("fds", counts)
            assert not left, ("left in /dev/shm", len(left), left[:4])
            print("ok")
    """
    r = run_python(code)
    _assert_ok(r)


def _unshare_usable() -> str | None:
    """None if we may mount a private tmpfs on /dev/shm, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare binary"
    try:
        r = subprocess.run(
            ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=16m tmpfs /dev/shm"],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare -m failed: {e!r}"
    if r.returncode != 0:
        return f"unshare -m / mount tmpfs not permitted: {r.stderr.strip()}"
    return None


def test_program_full_dev_shm_raises_enospc_not_sigbus():
    why = _unshare_usable()
    if why is not None:
        pytest.skip(why)
    code = """
        import errno
        import numpy as np
        import shmq

        tx, rx = shmq.create_shared_memory_pair()
        try:
            tx.put(bytes(32 << 20))
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        else:
            raise AssertionError("a 32 MiB put fit in a 16 MiB /dev/shm")
        mib = bytes(range(256)) * 4096
        tx.put(mib)
        assert rx.get(timeout=30) == mib
        assert tx.wait_for_all_ack(30)
        tx.close(); rx.close()

        ntx, nrx = shmq.channel(4)
        try:
            ntx.send(np.ones(32 << 20, dtype=np.uint8))
        except shmq.NoSpace as e:
            assert e.errno == errno.ENOSPC, e
        else:
            raise AssertionError("a 32 MiB send fit in a 16 MiB /dev/shm")
        ntx.send(np.arange(1 << 17, dtype=np.int64))  # 1 MiB
        assert np.array_equal(nrx.recv(timeout=30), np.arange(1 << 17, dtype=np.int64))
        ntx.close(); nrx.close()
        print("ok")
    """
    r = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         'mount -t tmpfs -o size=16m tmpfs /dev/shm && exec "$0" -W error -c "$1"',
         sys.executable, textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode != -signal.SIGBUS and r.returncode != 128 + signal.SIGBUS, r
    _assert_ok(r)

"""Processes killed at awkward moments (SIGKILL, and SIGTERM with Python's default handler,
which ends the process without atexit): nothing a put accepted is lost or duplicated, a
message a dead consumer held is redelivered, nobody waits forever for a dead peer, and
nothing is left in /dev/shm once the survivors closed."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time

import pytest

import _procutil as pu
import shmq

FORK = multiprocessing.get_context("fork")


def _drain_dropin(rx, quiet: float = 2.0) -> list:
    """Everything the drop-in receiver gets until it stays empty for ``quiet`` seconds."""
    out = []
    while True:
        try:
            out.append(rx.get(timeout=quiet))
        except queue.Empty:
            return out


# ---------------------------------------------------------------------------------------
# A producer killed mid-stream


@pytest.mark.parametrize("api", ["dropin", "native"])
@pytest.mark.parametrize("kill_after", [1, 150])
def test_producer_killed_mid_stream_loses_and_duplicates_nothing(api, kill_after):
    native = api == "native"
    tx, rx = shmq.channel(8) if native else shmq.create_shared_memory_pair(8)
    done = FORK.Value("q", 0, lock=False)  # puts that *returned* in the child
    got = []
    recv = (lambda t: rx.recv(timeout=t)) if native else (lambda t: rx.get(timeout=t))
    with pu.Children(FORK) as ch:
        # Every 5th message is 256 KiB, so the kill may land in a large copy too.
        p = ch.start(pu.produce_counting, tx, native, done, 5)
        got.append(pu.decode(recv(60)))
        if native:
            # The child is attached (it sent): with the parent's sender gone, iteration
            # ends exactly when the killed producer is seen gone.
            tx.close()
        while len(got) < kill_after:
            got.append(pu.decode(recv(60)))
        assert ch.kill(p) == -signal.SIGKILL
    n = done.value
    assert n >= kill_after - 1
    if native:
        got += [pu.decode(o) for o in rx]
    else:
        got += [pu.decode(o) for o in _drain_dropin(rx)]
    # Every acknowledged put exactly once, in order; at most the one put that may have
    # completed without the child recording it; nothing else.
    assert got == [(7, i) for i in range(len(got))]
    assert n <= len(got) <= n + 1, (n, len(got))

    # The queue keeps working, with its whole capacity.
    if native:
        tx = shmq.Sender(rx.name)
        for i in range(8):
            tx.try_send(i)
        with pytest.raises(shmq.Full):
            tx.try_send(8)
        assert [rx.recv(timeout=10) for _ in range(8)] == list(range(8))
    else:
        for i in range(8):
            tx.put(i, timeout=10)
        with pytest.raises(queue.Full):
            tx.put_nowait(8)
        assert [rx.get(timeout=10) for _ in range(8)] == list(range(8))
        with pu.Children(FORK) as ch:
            p = ch.start(pu.dropin_produce, tx, 8, 20, False)
            assert [pu.decode(rx.get(timeout=30)) for _ in range(20)] == [
                (8, i) for i in range(20)
            ]
            assert ch.join(p) == 0
        assert tx.wait_for_all_ack(30)
    tx.close()
    rx.close()


@pytest.mark.parametrize("api", ["dropin", "native"])
def test_repeated_producer_kills_account_exactly(api):
    """Five producers in turn on one queue, each killed at another point (the first before
    or while it attaches); then every acknowledged put of each is there exactly once."""
    native = api == "native"
    tx, rx = shmq.channel(8) if native else shmq.create_shared_memory_pair(8)
    recv = (lambda t: rx.recv(timeout=t)) if native else (lambda t: rx.get(timeout=t))
    got = []
    acked = {}
    with pu.Children(FORK) as ch:
        for tag, kill_after in enumerate([0, 3, 60, 1, 25]):
            done = FORK.Value("q", 0, lock=False)
            p = ch.start(pu.produce_counting, tx, native, done, 4, tag)
            mine = 0
            while mine < kill_after:
                t, s = pu.decode(recv(60))
                got.append((t, s))
                mine += t == tag
            assert ch.kill(p) == -signal.SIGKILL
            acked[tag] = done.value
    if native:
        tx.close()  # every other sender is dead: iteration ends when the queue is empty
        got += [pu.decode(o) for o in rx]
    else:
        got += [pu.decode(o) for o in _drain_dropin(rx)]
    # FIFO: each producer's messages in order, and producers one after another.
    assert got == sorted(got)
    for tag, n in acked.items():
        seqs = [s for t, s in got if t == tag]
        assert seqs == list(range(len(seqs))), tag
        assert n <= len(seqs) <= n + 1, (tag, n, len(seqs))
    assert {t for t, _ in got} <= set(acked)
    if not native:
        assert tx.wait_for_all_ack(30)
    tx.close()
    rx.close()


@pytest.mark.parametrize("api", ["dropin", "native"])
def test_producer_killed_while_blocked_on_a_full_queue(api):
    native = api == "native"
    tx, rx = shmq.channel(4) if native else shmq.create_shared_memory_pair(4)
    done = FORK.Value("q", 0, lock=False)
    with pu.Children(FORK) as ch:
        p = ch.start(pu.produce_counting, tx, native, done, 0, 1)
        pu.wait_until(lambda: done.value == 4, 60, "four puts")
        time.sleep(0.2)  # let it block on the fifth (an earlier kill is fine too)
        assert ch.kill(p) == -signal.SIGKILL
    assert done.value == 4
    if native:
        tx.close()
        got = [pu.decode(o) for o in rx]
    else:
        got = [pu.decode(o) for o in _drain_dropin(rx, 1.0)]
    assert got == [(1, i) for i in range(4)]
    tx.close()
    rx.close()


# ---------------------------------------------------------------------------------------
# A consumer killed holding a message


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_consumer_killed_holding_message_is_redelivered(sig):
    tx, rx = shmq.channel(4)
    payload = b"held by a consumer that dies" * 100
    tx.send_bytes(payload)
    r, w = FORK.Pipe(duplex=False)
    with pu.Children(FORK) as ch:
        p = ch.start(pu.hold_bytes, rx, w)
        assert pu.recv_conn(r, 60, p) == (payload, 1)
        with pytest.raises(shmq.Empty):
            rx.try_recv()  # the child holds it: nothing for anyone else
        assert ch.kill(p, sig) == -sig
    m = rx.recv_bytes(timeout=30)
    assert m.tobytes() == payload
    assert m.delivery_count == 2
    assert m.is_redelivery
    m.release()
    with pytest.raises(shmq.Empty):
        rx.try_recv()  # exactly one redelivery
    tx.close()
    rx.close()


def test_consumer_killed_holding_numpy_views_is_redelivered():
    """A message held only through the zero-copy arrays ``recv`` returned."""
    np = pytest.importorskip("numpy")
    tx, rx = shmq.channel(4)
    tx.send(np.arange(1000, dtype=np.int32))
    tx.send("second")
    r, w = FORK.Pipe(duplex=False)
    with pu.Children(FORK) as ch:
        p = ch.start(pu.hold_views, rx, w)
        values, writeable = pu.recv_conn(r, 60, p)
        assert values == list(range(1000)) and writeable is False
        assert ch.kill(p) == -signal.SIGKILL
    got = [rx.recv_bytes(timeout=30) for _ in range(2)]
    redelivered = [m for m in got if m.is_redelivery]
    assert [m.delivery_count for m in got].count(2) == 1 and len(redelivered) == 1
    arr = shmq._pickling.loads(redelivered[0], True)
    assert np.array_equal(arr, np.arange(1000, dtype=np.int32))
    rest = [m for m in got if not m.is_redelivery]
    assert shmq._pickling.loads(rest[0], True) == "second"
    with pytest.raises(shmq.Empty):
        rx.try_recv()
    tx.close()
    rx.close()


def test_killing_an_idle_consumer_does_not_starve_the_other():
    tx, rx = shmq.create_shared_memory_pair(4)
    conns, children = [], []
    with pu.Children(FORK) as ch:
        for _ in range(2):
            ready = FORK.Event()
            r, w = FORK.Pipe(duplex=False)
            children.append(ch.start(pu.idle_get, rx, ready, w))
            conns.append(r)
            assert ready.wait(60)
        time.sleep(0.2)  # both waiting in get
        assert ch.kill(children[0]) == -signal.SIGKILL
        for i in range(20):
            tx.put(pu.make_msg(5, i), timeout=60)
        got = [pu.recv_conn(conns[1], 60, children[1]) for _ in range(20)]
        assert got == [(5, i) for i in range(20)]  # all of them: none went to the dead one
        assert tx.wait_for_all_ack(30)
    tx.close()
    rx.close()


def test_consumer_killed_while_decoding_gets_redelivered():
    tx, rx = shmq.create_shared_memory_pair(4)
    tx.put(pu.Slow(b"decode me"))
    decoding = FORK.Event()
    with pu.Children(FORK) as ch:
        p = ch.start(pu.decode_blocking, rx, decoding)
        assert decoding.wait(60), "the child never started decoding"
        with pytest.raises(queue.Empty):
            rx.get_nowait()
        assert ch.kill(p) == -signal.SIGKILL
    obj = rx.get(timeout=30)
    assert isinstance(obj, pu.Slow) and obj.payload == b"decode me"
    with pytest.raises(queue.Empty):
        rx.get(timeout=0.2)
    assert tx.wait_for_all_ack(30)
    tx.close()
    rx.close()


def test_wait_for_all_ack_survives_consumer_death():
    tx, rx = shmq.create_shared_memory_pair(4)
    tx.put(pu.Slow(b"acked at last"))
    decoding = FORK.Event()
    result = []
    waiter = threading.Thread(target=lambda: result.append(tx.wait_for_all_ack(60)))
    with pu.Children(FORK) as ch:
        p = ch.start(pu.decode_blocking, rx, decoding)
        assert decoding.wait(60), "the child never started decoding"
        waiter.start()  # waits across the consumer's death
        try:
            assert ch.kill(p) == -signal.SIGKILL
            # Dead holding it: not acknowledged, and back in the queue.
            assert tx.wait_for_all_ack(0) is False
            obj = rx.get(timeout=30)
            assert obj.payload == b"acked at last"
            assert tx.wait_for_all_ack(30) is True
        finally:
            waiter.join(90)
    assert not waiter.is_alive()
    assert result == [True]
    tx.close()
    rx.close()


# ---------------------------------------------------------------------------------------
# The only producer dies


@pytest.mark.parametrize("when", ["while_blocked", "before_recv"])
def test_native_recv_raises_disconnected_when_only_producer_dies(when):
    tx, rx = shmq.channel(8)
    r, w = FORK.Pipe(duplex=False)
    with pu.Children(FORK) as ch:
        p = ch.start(pu.send_then_wait, tx, True, 3, w)
        assert pu.recv_conn(r, 60, p) == "sent"
        tx.close()  # the parent holds no sender
        assert [pu.decode(rx.recv(timeout=30)) for _ in range(3)] == [(3, i) for i in range(3)]
        if when == "before_recv":
            assert ch.kill(p) == -signal.SIGKILL
            t0 = time.monotonic()
            with pytest.raises(shmq.Disconnected):
                rx.recv(timeout=60)
        else:
            killer = threading.Timer(0.3, os.kill, (p.pid, signal.SIGKILL))
            killer.start()
            try:
                t0 = time.monotonic()
                with pytest.raises(shmq.Disconnected):
                    rx.recv(timeout=60)
            finally:
                killer.cancel()
                killer.join()
            assert ch.join(p, 30) == -signal.SIGKILL
        assert time.monotonic() - t0 < 30
        with pytest.raises(shmq.Disconnected):
            rx.recv(timeout=5)
        assert list(rx) == []
    rx.close()


def test_dropin_get_after_only_producer_dies_returns_its_messages_then_empty():
    tx, rx = shmq.create_shared_memory_pair(8)
    r, w = FORK.Pipe(duplex=False)
    with pu.Children(FORK) as ch:
        p = ch.start(pu.send_then_wait, tx, False, 3, w)
        assert pu.recv_conn(r, 60, p) == "sent"
        tx.close()
        assert ch.kill(p) == -signal.SIGKILL
    assert [pu.decode(rx.get(timeout=30)) for _ in range(3)] == [(3, i) for i in range(3)]
    with pytest.raises(queue.Empty):
        rx.get(timeout=1)
    rx.close()


# ---------------------------------------------------------------------------------------
# Nothing left behind


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_nothing_left_after_killed_and_exited_children(method, sig):
    ctx = multiprocessing.get_context(method)
    tx, rx = shmq.create_shared_memory_pair(8)
    ntx, nrx = shmq.channel(8)
    names = [tx.name, ntx.name]
    done = ctx.Value("q", 0, lock=False)
    hr, hw = ctx.Pipe(duplex=False)
    cr, cw = ctx.Pipe(duplex=False)
    ntx.send_bytes(b"held when killed")
    with pu.Children(ctx) as ch:
        holder = ch.start(pu.hold_bytes, nrx, hw)
        consumer = ch.start(pu.consume_forever, rx, cw)
        producer = ch.start(pu.produce_counting, tx, False, done, 0)
        quiet = [ch.start(pu.dropin_produce, tx, 9, 5, False),
                 ch.start(pu.native_produce, ntx, 2, 3)]
        assert pu.recv_conn(hr, 60, holder) == (b"held when killed", 1)
        pu.wait_until(lambda: done.value >= 50, 60, "50 puts")
        pu.recv_conn(cr, 60, consumer)  # the consumer has taken at least one message
        for q in quiet:
            assert ch.join(q) == 0
        for child in (producer, consumer, holder):
            assert ch.kill(child, sig) == -sig
    # The survivor gets what the dead consumer held, and the quiet children's messages.
    # (A redelivered message comes out of FIFO order: take all four, then sort them out.)
    msgs = [nrx.recv_bytes(timeout=30) for _ in range(4)]
    held = [m for m in msgs if m.tobytes() == b"held when killed"]
    assert [m.delivery_count for m in held] == [2]
    others = [m for m in msgs if m.tobytes() != b"held when killed"]
    assert [m.delivery_count for m in others] == [1, 1, 1]
    assert [pu.decode(shmq._pickling.loads(m, True)) for m in others] == [(2, i) for i in range(3)]
    for m in held:
        m.release()
    with pytest.raises(shmq.Empty):
        nrx.try_recv()
    rest = [pu.decode(o) for o in _drain_dropin(rx, 1.0)]
    assert sum(1 for t, _ in rest if t == 9) <= 5
    for e in (tx, rx, ntx, nrx):
        e.close()
    deadline = time.monotonic() + 10
    while any(pu.queue_files(n) for n in names) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [f for n in names for f in pu.queue_files(n)], "left after everything closed"

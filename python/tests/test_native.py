"""The native API: shmq.channel, Sender/Receiver, send/recv of objects, send_bytes /
recv_bytes / loan (zero copy), errors, iteration, timeouts, Ctrl-C."""

from __future__ import annotations

import gc
import math
import os
import pickle
import queue
import signal
import threading
import time
import uuid

import numpy as np
import pytest

import shmq


@pytest.fixture
def pair():
    tx, rx = shmq.channel(8)
    try:
        yield tx, rx
    finally:
        tx.close()
        rx.close()


def test_objects_round_trip_and_arrays_are_read_only_views_of_shared_memory(pair):
    tx, rx = pair
    a = np.arange(1000, dtype=np.float32).reshape(10, 100)
    tx.send({"obs": a, "reward": 1.5, "done": False})
    got = rx.recv()
    assert got["reward"] == 1.5 and got["done"] is False
    np.testing.assert_array_equal(got["obs"], a)
    assert got["obs"].dtype == np.float32 and got["obs"].shape == (10, 100)
    assert not got["obs"].flags.writeable
    # Zero copy: the array's memory is the message's (a memoryview of it, 64-byte aligned).
    base = got["obs"]
    while isinstance(getattr(base, "base", None), np.ndarray):
        base = base.base
    assert isinstance(base.base, memoryview) and base.base.readonly
    assert isinstance(base.base.obj, shmq.Message)
    assert got["obs"].ctypes.data % 64 == 0


def test_two_arrays_of_one_message_share_its_memory_and_the_ack_waits_for_both(pair):
    tx, rx = pair
    tx.send([np.ones(4096, np.uint8), np.zeros(4096, np.uint8)])
    x, y = rx.recv()
    msg = x.base.base.obj if isinstance(x.base, np.ndarray) else x.base.obj
    assert isinstance(msg, shmq.Message)
    assert not msg.released
    assert tx.unacked() == 1
    del x
    gc.collect()
    assert tx.unacked() == 1  # y still views the message
    del y, msg
    gc.collect()
    assert tx.unacked() == 0
    assert tx.wait_for_acks(5)


def test_the_slot_is_not_reused_while_a_view_lives():
    tx, rx = shmq.channel(2, slots=3)
    try:
        tx.send(np.full(100_000, 7, np.uint8))
        held = rx.recv()
        # The producer cycles through the two other slots; the held bytes never change.
        for i in range(50):
            tx.send(np.full(100_000, i % 250, np.uint8))
            got = rx.recv(copy=True)
            assert got[0] == i % 250
        assert (held == 7).all()
        # Hold a second message and queue a third: every slot is taken although the queue
        # has room, so a send must wait for a slot...
        tx.send(b"second")
        second = rx.recv_bytes()
        tx.send(b"queued")
        assert len(rx) == 1
        with pytest.raises(shmq.Full):
            tx.try_send(b"no slot")
        # ...until the view of the first is gone.
        del held
        gc.collect()
        tx.try_send(b"a slot again")
        second.release()
    finally:
        tx.close()
        rx.close()


def test_copy_true_returns_owned_writable_arrays_and_acks_at_once(pair):
    tx, rx = pair
    ro = np.arange(10.0)
    ro.flags.writeable = False
    tx.send((np.arange(10.0), ro))
    w, r = rx.recv(copy=True)
    assert tx.unacked() == 0
    assert w.flags.writeable and not r.flags.writeable
    w[0] = 42.0
    np.testing.assert_array_equal(r, ro)


def test_send_bytes_and_recv_bytes_are_raw_and_release_is_the_ack(pair):
    tx, rx = pair
    arr = np.arange(256, dtype=np.uint16)
    tx.send_bytes(arr)
    tx.send_bytes(b"")
    tx.send_bytes(memoryview(b"abc"))
    m = rx.recv_bytes()
    assert isinstance(m, shmq.Message) and len(m) == 512
    np.testing.assert_array_equal(np.frombuffer(m, np.uint16), arr)
    assert memoryview(m).readonly
    with pytest.raises(TypeError):
        memoryview(m)[0] = 1  # read-only
    v = memoryview(m)
    with pytest.raises(BufferError):
        m.release()  # a view is open
    v.release()
    m.release()
    assert m.released
    with pytest.raises(ValueError):
        memoryview(m)
    with rx.recv_bytes() as e:
        assert len(e) == 0 and e.tobytes() == b""
    assert e.released
    assert rx.recv_bytes().tobytes() == b"abc"
    assert tx.wait_for_acks(5)


def test_send_bytes_refuses_non_contiguous_buffers_and_sends_nothing(pair):
    tx, rx = pair
    with pytest.raises(BufferError, match="C-contiguous"):
        tx.send_bytes(np.arange(10)[::2])
    with pytest.raises(TypeError):
        tx.send_bytes(12)
    assert len(rx) == 0


def test_a_loan_is_filled_in_place_and_refuses_to_send_while_viewed(pair):
    tx, rx = pair
    loan = tx.loan(4000)
    assert len(loan) == 4000
    a = np.frombuffer(loan, np.float32)
    a[:] = np.arange(1000)
    with pytest.raises(BufferError, match="view"):
        loan.send()
    del a
    loan.truncate(400)
    loan.send()
    with pytest.raises(shmq.Closed):
        loan.send()
    got = np.frombuffer(rx.recv_bytes(), np.float32)
    np.testing.assert_array_equal(got, np.arange(100))
    del got
    # A loan released unsent (or left by a with block) gives its slot back.
    with tx.loan(100):
        pass
    assert len(rx) == 0 and tx.unacked() == 0


def test_recv_of_a_raw_message_says_to_use_recv_bytes(pair):
    tx, rx = pair
    tx.send_bytes(b"not a pickle at all")
    with pytest.raises(shmq.NotPickled, match="recv_bytes"):
        rx.recv()
    assert tx.wait_for_acks(5)  # acknowledged all the same


def test_corrupt_pickle_headers_are_rejected_not_trusted(pair):
    tx, rx = pair
    good = shmq._pickling.dumps(np.ones(10))
    # Forge headers: huge buffer count, out-of-range offsets.
    import struct

    for forged in [
        b"shmqPK5\0" + struct.pack("<IIQ", 1 << 30, 0, 0),
        b"shmqPK5\0" + struct.pack("<IIQ", 1, 0, 0) + struct.pack("<QQ", 1 << 60, 8),
        b"shmqPK5\0" + struct.pack("<IIQ", 0, 0, 1 << 62),
    ]:
        tx.send_bytes(forged)
        with pytest.raises(shmq.NotPickled):
            rx.recv()
    shmq._pickling.release(good[1], good[2])


def test_iteration_ends_when_every_sender_is_gone(pair):
    tx, rx = pair
    for i in range(5):
        tx.send(i)
    tx.close()
    assert list(rx) == [0, 1, 2, 3, 4]
    with pytest.raises(shmq.Disconnected):
        rx.recv(timeout=1)


def test_try_iter_ends_at_empty(pair):
    tx, rx = pair
    for i in range(3):
        tx.send(i)
    assert list(rx.try_iter()) == [0, 1, 2]


def test_full_empty_and_timeouts(pair):
    tx, rx = pair
    assert issubclass(shmq.Full, queue.Full) and issubclass(shmq.Empty, queue.Empty)
    for _ in range(8):
        tx.try_send(b"x")
    for call in (
        lambda: tx.try_send(b"x"),
        lambda: tx.send(b"x", timeout=0),
        lambda: tx.send(b"x", timeout=-1),
        lambda: tx.send(b"x", block=False),
        lambda: tx.send_timeout(b"x", 0.05),
    ):
        with pytest.raises(queue.Full):
            call()
    assert len(tx) == 8 and tx.capacity == 8
    for _ in range(8):
        rx.recv()
    with pytest.raises(queue.Empty):
        rx.try_recv()
    with pytest.raises(queue.Empty):
        rx.recv_timeout(0.05)
    with pytest.raises(ValueError, match="NaN"):
        rx.recv(timeout=math.nan)
    with pytest.raises(ValueError, match="NaN"):
        tx.send(1, timeout=math.nan)
    with pytest.raises(ValueError, match="NaN"):
        tx.wait_for_acks(math.nan)
    # Infinite and unrepresentable timeouts wait without limit (no panic).
    t = threading.Timer(0.2, lambda: tx.send("late"))
    t.start()
    try:
        assert rx.recv(timeout=math.inf) == "late"
        t2 = threading.Timer(0.2, lambda: tx.send("later"))
        t2.start()
        assert rx.recv(timeout=1e300) == "later"
        t2.join(30)
    finally:
        t.join(30)
    assert tx.wait_for_acks(math.inf)


def test_close_wakes_blocked_calls_in_other_threads_with_closed():
    tx, rx = shmq.channel(1)
    try:
        tx.send(0)
        errors = []

        def blocked(f):
            try:
                f()
            except BaseException as e:  # noqa: BLE001 - recorded for the assertion
                errors.append(e)

        threads = [
            threading.Thread(target=blocked, args=(lambda: tx.send(1),)),
            threading.Thread(target=blocked, args=(lambda: tx.wait_for_acks(None),)),
        ]
        for t in threads:
            t.start()
        time.sleep(0.2)
        tx.close()
        for t in threads:
            t.join(30)
            assert not t.is_alive()
        assert len(errors) == 2 and all(isinstance(e, shmq.Closed) for e in errors), errors
        assert all(isinstance(e, BrokenPipeError) and "Sender is closed" in str(e) for e in errors)
        rx.recv()  # the receiver is independent: the queued message is still there
        r = threading.Thread(target=blocked, args=(lambda: rx.recv(),))
        errors.clear()
        tx2 = shmq.Sender(rx.name)  # keeps the receiver from seeing Disconnected
        r.start()
        time.sleep(0.2)
        rx.close()
        r.join(30)
        assert not r.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], shmq.Closed), errors
        tx2.close()
    finally:
        tx.close()
        rx.close()


def test_closed_handles_refuse_everything(pair):
    tx, rx = pair
    tx.close()
    tx.close()
    rx.close()
    assert tx.closed and rx.closed
    for call in (lambda: tx.send(1), lambda: tx.send_bytes(b""), lambda: tx.loan(1),
                 lambda: len(tx), lambda: rx.recv(), lambda: rx.recv_bytes(block=False),
                 lambda: pickle.dumps(tx)):
        with pytest.raises(shmq.Closed):
            call()
    with pytest.raises(shmq.Closed):
        with tx:
            pass


def test_handles_attach_by_name_and_pickle_by_name(pair):
    tx, rx = pair
    tx2 = shmq.Sender.open(tx.name)
    rx2 = pickle.loads(pickle.dumps(rx))
    try:
        assert isinstance(rx2, shmq.Receiver) and rx2.name == rx.name
        tx2.send("from tx2")
        assert rx2.recv() == "from tx2"
    finally:
        tx2.close()
        rx2.close()


def test_bad_names_and_foreign_files_give_clear_errors():
    name = f"pytest-{uuid.uuid4().hex[:12]}"
    with pytest.raises(shmq.NotFound) as e:
        shmq.Sender(name)
    assert isinstance(e.value, FileNotFoundError) and name in str(e.value)
    with pytest.raises(shmq.InvalidName):
        shmq.Receiver("no/slashes here")
    with pytest.raises(TypeError):
        shmq.Sender(42)
    path = f"/dev/shm/shmq.{name}"
    with open(path, "wb") as f:
        f.write(b"this is not a queue" * 100)
    try:
        with pytest.raises((shmq.NotAQueue, shmq.Corrupt, shmq.VersionMismatch)):
            shmq.Receiver(name)
    finally:
        os.unlink(path)
    with pytest.raises(TypeError):
        shmq.channel(1.5)
    with pytest.raises(ValueError):
        shmq.channel(0)
    with pytest.raises(shmq.InvalidArgument):
        shmq.channel(4, slots=2)
    with pytest.raises(ValueError, match="delivery"):
        shmq.channel(4, delivery="sometimes")


def test_a_queue_name_in_use_is_refused(pair):
    tx, _ = pair
    with pytest.raises(shmq.AlreadyExists) as e:
        shmq.channel(4, name=tx.name)
    assert isinstance(e.value, FileExistsError)


def test_too_large_messages_are_refused_and_nothing_is_sent():
    tx, rx = shmq.channel(4, max_message_size=1000)
    try:
        with pytest.raises(shmq.TooLarge, match="1001"):
            tx.send_bytes(bytes(1001))
        with pytest.raises(shmq.TooLarge):
            tx.send(bytes(2000))
        tx.send_bytes(bytes(1000))
        assert len(rx.recv_bytes()) == 1000
        assert len(rx) == 0
    finally:
        tx.close()
        rx.close()


def test_unpicklable_objects_fail_like_pickle_and_leave_the_queue_alone(pair):
    tx, rx = pair
    buf = bytearray(100_000)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        tx.send((buf, lambda: 1))
    buf.extend(b"x")  # no export left open
    with pytest.raises(TypeError):
        tx.send(threading.Lock())
    assert len(rx) == 0 and tx.unacked() == 0
    tx.send("still fine")
    assert rx.recv() == "still fine"


def _boom():
    raise ValueError("boom while unpickling")


class _Bomb:
    def __reduce__(self):
        return (_boom, ())


def test_an_error_while_unpickling_propagates_and_acknowledges(pair):
    tx, rx = pair
    tx.send(_Bomb())
    with pytest.raises(ValueError, match="boom while unpickling"):
        rx.recv()
    assert tx.wait_for_acks(5)
    tx.send(1)
    assert rx.recv() == 1


@pytest.mark.parametrize("size", [0, 1, 191, 192, 193, 4095, 4096, 65536, 1 << 20, 16 << 20])
def test_sizes(pair, size):
    tx, rx = pair
    payload = os.urandom(size)
    tx.send(payload)
    tx.send_bytes(payload)
    assert rx.recv() == payload
    assert rx.recv_bytes().tobytes() == payload


def test_one_gib_array_round_trips_zero_copy():
    tx, rx = shmq.channel(2, max_message_size=(1 << 30) + 4096)
    try:
        a = np.empty(1 << 28, np.float32)  # 1 GiB
        a[:: 1 << 20] = np.arange(256, dtype=np.float32)
        a[-1] = 7.0
        tx.send(a)
        del a
        b = rx.recv()
        assert b.nbytes == 1 << 30 and b[-1] == 7.0
        np.testing.assert_array_equal(b[:: 1 << 20], np.arange(256, dtype=np.float32))
        del b
    finally:
        tx.close()
        rx.close()


@pytest.fixture
def ctrl_c():
    """Python's own SIGINT handler, whatever this process inherited: a shell starts
    background jobs with SIGINT ignored, and Python then leaves it ignored."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def test_ctrl_c_interrupts_a_blocked_recv_and_the_queue_stays_usable(pair, ctrl_c):
    tx, rx = pair
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        rx.recv(timeout=60)
    timer.join(30)
    assert time.monotonic() - t0 < 30
    tx.send("after ctrl-c")
    assert rx.recv(timeout=30) == "after ctrl-c"


def test_delivery_count_and_gc_are_exposed(pair):
    tx, rx = pair
    tx.send_bytes(b"x")
    m = rx.recv_bytes()
    assert m.delivery_count == 1 and not m.is_redelivery
    m.release()
    removed, skipped = shmq.gc()
    assert tx.name not in removed  # alive: never collected


def _in_fork(child) -> int:
    """Runs ``child()`` in a forked child; its exit status (0 = it returned)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child()
            code = 0
        except BaseException:  # noqa: BLE001 - reported through the exit status
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("forked child hung")
        time.sleep(0.01)


def test_a_forked_child_cannot_touch_the_parents_message_or_loan_and_harms_nothing(pair):
    tx, rx = pair
    tx.send_bytes(b"parent's message")
    msg = rx.recv_bytes()
    loan = tx.loan(10)

    def child():
        with pytest.raises(BufferError, match="parent"):
            memoryview(msg)
        with pytest.raises(shmq.Forked):
            loan.send()
        with pytest.raises(BufferError, match="parent"):
            memoryview(loan)
        # Dropping them here changes nothing in the parent's queue.
        del_msg, del_loan = msg, loan
        del del_msg, del_loan

    assert _in_fork(child) == 0
    assert msg.tobytes() == b"parent's message"
    loan.send()
    msg.release()
    assert rx.recv_bytes().tobytes() == bytes(10)
    assert tx.wait_for_acks(5)


def test_a_forked_child_uses_inherited_handles_as_its_own(pair):
    tx, rx = pair

    def child():
        tx.send("from the child")  # attaches the child afresh on first use
        tx.close()

    assert _in_fork(child) == 0
    assert rx.recv(timeout=30) == "from the child"
    tx.send("parent still sends")
    assert rx.recv(timeout=30) == "parent still sends"

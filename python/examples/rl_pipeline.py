"""A multi-process reinforcement-learning pipeline over two shmq queues, in Python: the
twin of the Rust example (``cargo run --release --example rl_pipeline``).

    actor 0 ─┐                                                    ┌─> learner 0
    actor 1 ─┼─> trajectory queue ─> replay buffer ─> batch queue ─┤
    actor 2 ─┘   (N producers)       (keeps the last K,  (M consumers) └─> learner 1
                                      samples batches)

* **actors** fill NumPy trajectories (T steps of float32 observations, stacked 4×84×84
  frames, plus actions and rewards) and ``send`` them as dicts of arrays (pickle protocol
  5: the arrays are copied once, straight into shared memory);
* the **replay buffer** keeps the last K trajectories as received, zero-copy (read-only
  arrays viewing shared memory: each message is acknowledged when evicted, and redelivered
  to the next incarnation if the buffer is killed first), and serves batches of B sampled
  trajectories, built with ``np.stack`` into a loan-free ``send``;
* **learners** check every trajectory's checksum in each batch, standing in for a
  training step.

Accounting: every process appends what it did to a journal (a file per incarnation,
written before the acknowledgement), and the parent checks at the end that every
trajectory and every batch whose ``send`` returned was received at least once.

    python python/examples/rl_pipeline.py                       # 3 actors, 2 learners, 5 s
    python python/examples/rl_pipeline.py --chaos --seconds 10  # random SIGKILLs + restarts

Exit status 0 if the accounting adds up and nothing is left in /dev/shm; Ctrl-C ends it
cleanly (with the same checks).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import signal
import sys
import tempfile
import time
import zlib

import numpy as np

import shmq

T, FRAME = 8, (4, 84, 84)  # steps per trajectory, stacked frames per step


def checksum(obs: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(obs)).cast("B"))


def journal(dirname: str, role: str, i: int):
    path = os.path.join(dirname, f"{role}-{i}-{os.getpid()}.log")
    return open(path, "a", buffering=1)  # line-buffered: each record reaches the file


def actor(i: int, tx: shmq.Sender, dirname: str, stop, count) -> None:
    slot = i
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends us
    rng = np.random.default_rng(os.getpid())
    j = journal(dirname, "actor", i)
    seq = 0
    obs = np.empty((T, *FRAME), np.float32)
    while not stop.is_set():
        obs[:, 0, 0, :] = rng.random((T, FRAME[2]), dtype=np.float32)  # vary it cheaply
        obs[:, 1:, :8] = seq % 251
        tid = f"{i}.{os.getpid()}.{seq}"
        traj = {"id": tid, "obs": obs, "actions": rng.integers(0, 18, T, dtype=np.int8),
                "rewards": rng.random(T, dtype=np.float32), "crc": checksum(obs)}
        try:
            tx.send(traj, timeout=0.2)
        except shmq.Full:
            continue
        except shmq.Disconnected:
            return
        j.write(f"sent {tid}\n")
        seq += 1
        count[slot] += 1  # this process's own counter: no lock a SIGKILL could strand


def replay(rx: shmq.Receiver, tx: shmq.Sender, dirname: str, stop, capacity: int,
           batch: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    j = journal(dirname, "replay", 0)
    rng = random.Random(os.getpid())
    buf: list[dict] = []
    nb = 0
    while not stop.is_set():
        try:
            for _ in range(4):
                t = rx.recv(timeout=0.05)  # zero copy: read-only views of shared memory
                j.write(f"got {t['id']}\n")  # before it can be acknowledged (evicted)
                buf.append(t)
                if len(buf) > capacity:
                    buf.pop(rng.randrange(len(buf)))  # evicted: its message is acknowledged
        except shmq.Empty:
            pass
        except shmq.Disconnected:
            break
        if len(buf) >= batch:
            pick = rng.sample(buf, batch)
            bid = f"{os.getpid()}.{nb}"
            b = {"id": bid, "ids": [t["id"] for t in pick], "crc": [t["crc"] for t in pick],
                 "obs": np.stack([t["obs"] for t in pick])}
            try:
                tx.send(b, timeout=0.05)
            except (shmq.Full, shmq.Disconnected):
                continue
            j.write(f"batch {bid}\n")
            nb += 1


def learner(i: int, rx: shmq.Receiver, dirname: str, stop, count) -> None:
    slot = i
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    j = journal(dirname, "learner", i)
    while not stop.is_set():
        try:
            b = rx.recv(timeout=0.1)
        except shmq.Empty:
            continue
        except shmq.Disconnected:
            return
        bad = sum(checksum(o) != c for o, c in zip(b["obs"], b["crc"]))
        j.write(f"learned {b['id']} {bad}\n")  # then `b` goes: the acknowledgement
        count[slot] += 1  # this process's own counter: no lock a SIGKILL could strand


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--actors", type=int, default=3)
    ap.add_argument("--learners", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--replay-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--chaos", action="store_true", help="SIGKILL and restart children")
    args = ap.parse_args()

    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    dirname = tempfile.mkdtemp(prefix="shmq-rl-")
    traj_tx, traj_rx = shmq.channel(32, max_message_size=64 << 20)
    batch_tx, batch_rx = shmq.channel(8, max_message_size=256 << 20)
    names = [traj_tx.name, batch_tx.name]
    # Progress counters, one per actor / learner slot, without locks: a process killed
    # while holding a lock would stall whoever takes it next.
    sent, learned = ctx.RawArray("q", args.actors), ctx.RawArray("q", args.learners)
    specs = {}
    for i in range(args.actors):
        specs[f"actor {i}"] = (actor, (i, traj_tx, dirname, stop, sent))
    specs["replay"] = (replay, (traj_rx, batch_tx, dirname, stop, args.replay_size, args.batch))
    for i in range(args.learners):
        specs[f"learner {i}"] = (learner, (i, batch_rx, dirname, stop, learned))
    procs = {}

    def start(name):
        f, a = specs[name]
        p = ctx.Process(target=f, args=a, name=name, daemon=True)
        p.start()
        procs[name] = p

    for name in specs:
        start(name)

    interrupted = False
    kills = 0
    t0 = time.monotonic()
    next_kill = t0 + random.uniform(0.2, 0.8)
    tty = sys.stdout.isatty()
    last = 0.0
    try:
        while time.monotonic() - t0 < args.seconds:
            time.sleep(0.05)
            now = time.monotonic()
            if args.chaos and now >= next_kill:
                victim = random.choice(list(specs))
                if procs[victim].is_alive():
                    os.kill(procs[victim].pid, signal.SIGKILL)
                procs[victim].join(10)
                kills += 1
                start(victim)
                next_kill = now + random.uniform(0.2, 0.8)
            if now - last >= (0.25 if tty else 1.0):
                last = now
                el = now - t0
                ns, nl = sum(sent), sum(learned)
                line = (f"{el:5.1f}s  trajectories sent {ns} ({ns / el:.0f}/s)  "
                         f"batches learned {nl} ({nl / el:.0f}/s)  "
                         f"queued {len(traj_rx)}+{len(batch_rx)}  kills {kills}")
                print(("\r" if tty else "") + line, end="" if tty else "\n", flush=True)
    except KeyboardInterrupt:
        interrupted = True
    stop.set()
    for p in procs.values():
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(10)
    if tty:
        print()
    # What is still queued was accepted too: the parent drains it into its own journal.
    with journal(dirname, "drain", 0) as j:
        for t in traj_rx.try_iter(copy=True):
            j.write(f"got {t['id']}\n")
        for b in batch_rx.try_iter(copy=True):
            j.write(f"learned {b['id']} 0\n")
    # The parent kept its endpoints to hand them to restarted children; the queues go
    # when the last process attached to them leaves.
    for h in (traj_tx, traj_rx, batch_tx, batch_rx):
        h.close()
    return report(dirname, names, kills, time.monotonic() - t0, interrupted)


def report(dirname: str, names: list[str], kills: int, secs: float, interrupted: bool) -> int:
    sent, got, batches, learned, bad, redone = set(), set(), set(), set(), 0, 0
    for f in os.listdir(dirname):
        with open(os.path.join(dirname, f)) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 2:
                    continue  # a line cut short by a SIGKILL
                kind, ident = parts[0], parts[1]
                if kind == "sent":
                    sent.add(ident)
                elif kind == "got":
                    redone += ident in got
                    got.add(ident)
                elif kind == "batch":
                    batches.add(ident)
                elif kind == "learned" and len(parts) == 3:
                    redone += ident in learned
                    learned.add(ident)
                    bad += int(parts[2])
        os.unlink(os.path.join(dirname, f))
    os.rmdir(dirname)
    lost_t = sent - got
    lost_b = batches - learned
    mb = len(got) * T * int(np.prod(FRAME)) * 4 / 1e6
    print(f"{secs:.1f} s: {len(sent)} trajectories sent, {len(got)} received by the replay "
          f"buffer ({mb / secs:.0f} MB/s), {len(batches)} batches sent, {len(learned)} "
          f"learned; {kills} processes killed, {redone} redeliveries; checksum errors: {bad}")
    ok = not lost_t and not lost_b and not bad and len(got) > 0
    if lost_t or lost_b:
        print(f"LOST: {len(lost_t)} trajectories, {len(lost_b)} batches", file=sys.stderr)
    if interrupted:
        print("interrupted (Ctrl-C): children stopped cleanly")
    print("accounting: " + ("every accepted message arrived" if ok else "FAILED"))
    # Each queue goes with the last process attached to it (peers of a killed child
    # recover it within milliseconds); give the last exits a moment.
    deadline = time.monotonic() + 5
    left = names
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [n for n in names if os.path.exists(f"/dev/shm/shmq.{n}")]
    if left:
        print(f"left in /dev/shm: {left}", file=sys.stderr)
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

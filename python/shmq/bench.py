"""``python -m shmq.bench``: a quick throughput check of shmq against
``multiprocessing.Queue`` at a few sizes (one producer process, one consumer process,
spawn), each case checking what arrived. The full comparison (py-sharedmemory,
faster-fifo, every size, several runs) is ``python/bench/``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import shmq


def _produce(kind: str, q, size: int, count: int) -> None:
    payload = bytes(size)
    put = q.put if kind != "shmq native" else q.send_bytes
    for _ in range(count):
        put(payload)
    if kind == "shmq native":
        q.close()


def _run(ctx, kind: str, size: int, count: int) -> float:
    if kind == "mp.Queue":
        tx = rx = ctx.Queue(16)
        get = rx.get
    elif kind == "shmq drop-in":
        tx, rx = shmq.create_shared_memory_pair(16)
        get = rx.get
    else:
        tx, rx = shmq.channel(16, max_message_size=max(size, 1))

        def get():
            with rx.recv_bytes() as m:
                return len(m)

    p = ctx.Process(target=_produce, args=(kind, tx, size, count))
    t0 = time.perf_counter()
    p.start()
    total = 0
    for _ in range(count):
        got = get()
        total += got if isinstance(got, int) else len(got)
    dt = time.perf_counter() - t0
    p.join()
    if kind != "mp.Queue":
        tx.close()
        rx.close()
    if total != size * count:
        raise SystemExit(f"{kind}: received {total} bytes, expected {size * count}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bytes", type=int, default=256 << 20, help="bytes per case")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    print(f"{'size':>8}  {'system':<14}{'msg/s':>12}{'MB/s':>10}  (1 producer -> 1 consumer process)")
    for size in (1 << 10, 64 << 10, 1 << 20, 16 << 20):
        count = max(200, min(20000, args.bytes // size))
        for kind in ("mp.Queue", "shmq drop-in", "shmq native"):
            dt = _run(ctx, kind, size, count)
            print(f"{size:>8}  {kind:<14}{count / dt:>12.0f}{size * count / dt / 1e6:>10.0f}")


if __name__ == "__main__":
    main()

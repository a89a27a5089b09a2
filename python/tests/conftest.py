"""Shared fixtures: every test leaves ``/dev/shm`` as it found it, and child processes
are run with a watchdog and always reaped."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import time

import pytest

SHM = "/dev/shm"


def _ours() -> set[str]:
    """Queue objects created by this test process (auto names are ``q-<creator pid>-...``;
    tests that name queues themselves use this prefix too, see :func:`unique_name`).
    Other processes' queues on a shared machine are none of our business."""
    tag = f"q-{os.getpid()}-"
    try:
        return {n for n in os.listdir(SHM) if tag in n}
    except FileNotFoundError:
        return set()


def unique_name(tag: str = "t") -> str:
    """A fresh queue name the leftover check covers."""
    return f"q-{os.getpid()}-{tag}-{os.urandom(6).hex()}"


@pytest.fixture(autouse=True)
def no_shm_leftovers():
    """Fails a test that leaves a queue (or a payload segment) of its own in /dev/shm,
    after giving killed processes' peers time to recover. What is left is then removed
    with ``shmq.gc()``, which only removes queues no live process is attached to."""
    before = _ours()
    yield
    gc.collect()
    deadline = time.monotonic() + 10
    left = _ours() - before
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        gc.collect()
        left = _ours() - before
    if left:
        import shmq

        shmq.gc()
    assert not left, f"left in /dev/shm: {sorted(left)}"


def run_python(code: str, *args: str, timeout: float = 60, env: dict | None = None,
               preexec_fn=None) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter with warnings as errors; returns the finished
    process (killed and reaped at ``timeout``: the test then fails)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        return subprocess.run(
            [sys.executable, "-W", "error", "-c", textwrap.dedent(code), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            preexec_fn=preexec_fn,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"child python timed out after {timeout}s; stderr: {e.stderr!r}")

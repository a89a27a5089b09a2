"""The README's Python examples run as written (warnings as errors, empty stderr, and
nothing left in /dev/shm although they do not close everything themselves)."""

from __future__ import annotations

import os
import re

from conftest import run_python

README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def _blocks() -> list[str]:
    with open(README) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_the_readme_python_examples_run_cleanly():
    blocks = _blocks()
    assert len(blocks) >= 2
    before = set(os.listdir("/dev/shm"))
    for code in blocks:
        # Each block stands alone except for the imports of the first.
        r = run_python("import numpy as np\nimport shmq\n" + code, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stderr == "", r.stderr
    left = {n for n in set(os.listdir("/dev/shm")) - before if n.startswith("shmq.")}
    assert not left, left

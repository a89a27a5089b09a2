#!/usr/bin/env bash
# Builds the Python package into a fresh virtual environment (pip, maturin, numpy, pytest
# from the package index) and runs its tests (python/tests), warnings as errors, a timeout
# on every test. pytest's "nothing collected" (exit 5) fails too.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SHMQ_PY_VENV:-target/py-venv}"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check numpy pytest pytest-timeout
"$venv/bin/pip" install -q --disable-pip-version-check ./python
"$venv/bin/python" -m pytest python/tests -q -p no:cacheprovider "$@"

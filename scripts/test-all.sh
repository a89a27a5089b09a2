#!/usr/bin/env bash
# Runs every test of shmq: unit, integration (real processes, including the crash tests
# that SIGKILL processes at named points), doctests, the loom model checks of the
# shared-memory protocol (preemption bound 2, set in the models), and the Python package's
# tests (scripts/python-tests.sh: a fresh venv, the wheel built from python/, pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --release --features fault-injection
RUSTFLAGS="--cfg shmq_loom" cargo test -p shmq-loom-tests --release --target-dir target/loom
bash scripts/python-tests.sh

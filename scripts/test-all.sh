#!/usr/bin/env bash
# Runs every test of shmq: unit, integration (real processes, including the crash tests
# that SIGKILL processes at named points), doctests, and the loom model checks of the
# shared-memory protocol (preemption bound 2, set in the models).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --release --features fault-injection
RUSTFLAGS="--cfg shmq_loom" cargo test -p shmq-loom-tests --release --target-dir target/loom

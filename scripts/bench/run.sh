#!/usr/bin/env bash
# Runs the comparative benchmarks (benches/alternatives) and regenerates the tables in
# BENCHMARKS.md and the plots in docs/bench/*.png from that fresh run.
#
#   bash scripts/bench/run.sh            # full matrix, 3 interleaved runs (~10-15 min on 2 cores)
#   bash scripts/bench/run.sh --quick    # 1 run, fewer messages (~2 min)
#   bash scripts/bench/run.sh --sizes 64,1M --systems shmq,uds --topos 1-1   # a slice
#
# The previous results file is kept as previous.json and compared with the new one for
# the "between invocations" noise line. Every case verifies what arrived before it is
# timed; the run exits non-zero if any case failed its check.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=benches/alternatives/results
mkdir -p "$R"
cargo build --release --manifest-path benches/alternatives/Cargo.toml
[ -f "$R/latest.json" ] && mv "$R/latest.json" "$R/previous.json"
status=0
benches/alternatives/target/release/altbench run "$@" --out "$R/latest.json" || status=$?
python3 -c 'import matplotlib' 2>/dev/null || pip install --quiet matplotlib
prev=()
[ -f "$R/previous.json" ] && prev=("$R/previous.json")
python3 scripts/bench/report.py "$R/latest.json" "${prev[@]}"
exit $status

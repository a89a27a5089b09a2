#!/usr/bin/env bash
# Runs the comparative benchmarks (benches/alternatives) and regenerates the tables in
# BENCHMARKS.md and the plots in docs/bench/*.png from that fresh run.
#
#   bash scripts/bench/run.sh            # what BENCHMARKS.md shows (~9 min on 2 cores):
#                                        #   8 B..16 MiB, 3 interleaved runs, + latency
#                                        #   256 MiB and 1 GiB, 1 run (slow: GiBs per case)
#                                        #   the loan API with the payload untouched, 1->1
#                                        #   memory per queue (1->1, queue held open)
#   bash scripts/bench/run.sh --quick    # everything once, fewer messages (~3 min)
#   bash scripts/bench/run.sh --sizes 64,1M --systems shmq,uds --topos 1-1   # a slice
#
# The previous results file is kept as previous.json and compared with the new one for
# the "between invocations" noise line. Every case verifies what arrived before it is
# timed; the script exits non-zero if any case failed its check.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=benches/alternatives/results
B=benches/alternatives/target/release/altbench
mkdir -p "$R"
cargo build --release --manifest-path benches/alternatives/Cargo.toml
python3 -c 'import matplotlib' 2>/dev/null || pip install --quiet matplotlib
[ -f "$R/latest.json" ] && mv "$R/latest.json" "$R/previous.json"
prev=()
[ -f "$R/previous.json" ] && prev=("$R/previous.json")
status=0
if [ $# -gt 0 ]; then
    "$B" run "$@" --out "$R/latest.json" || status=$?
    python3 scripts/bench/report.py "$R/latest.json" "${prev[@]}"
else
    "$B" run --sizes 8,64,1K,64K,1M,16M --out "$R/latest.json" || status=$?
    "$B" run --runs 1 --sizes 256M,1G --out "$R/big.json" || status=$?
    "$B" run --runs 3 --systems shmq-touch --topos 1-1 --no-latency --no-phys \
        --out "$R/touch.json" || status=$?
    "$B" run --runs 1 --topos 1-1 --sizes 64,1K,64K,1M,16M --systems shmq,iceoryx2,shaq,uds \
        --no-latency --no-phys --out "$R/memory.json" || status=$?
    python3 scripts/bench/report.py "$R/latest.json" "${prev[@]}" \
        --merge "$R/big.json" --touch "$R/touch.json" --memory "$R/memory.json"
fi
exit $status

#!/usr/bin/env bash
# The configuration experiments behind BENCHMARKS.md's "What limits us": the same scenario run
# with one knob changed at a time, none of which touches the code. Prints one JSON line per run
# (label first). Usage: scripts/bench-experiments.sh [scenario, default burst] [extra bench args...]
# e.g.   scripts/bench-experiments.sh burst --burst 5000 --runs 1
#        scripts/bench-experiments.sh raw --raw-jobs 20000 --runs 1
set -euo pipefail
cd "$(dirname "$0")/.."
scenario="${1:-burst}"
shift || true
cargo build -q --release -p dashlight-worker -p dashlight-bench
bench=target/release/bench
run() {
  local label="$1"
  shift
  "$bench" "$scenario" --no-write "$@" 2>/dev/null | sed "s/^/{\"experiment\":\"$label\",\"result\":/; s/\$/}/"
}
run baseline "$@"
run sslmode-disable --sslmode disable "$@"
run synchronous-commit-off --db-setting synchronous_commit=off "$@"
run both --sslmode disable --db-setting synchronous_commit=off "$@"
run concurrency-128 --concurrency 128 "$@"
run both+concurrency-128 --sslmode disable --db-setting synchronous_commit=off --concurrency 128 "$@"
run two-processes --workers 2 "$@"
# The database's ceiling for the proposed batched path (no sending): same reminders and rows.
if [ "$scenario" = burst ]; then
  "$bench" ceiling --no-write "$@" 2>/dev/null | sed 's/^/{"experiment":"ceiling-batch-500","result":/; s/$/}/'
fi

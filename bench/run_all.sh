#!/usr/bin/env bash
# Run the benchmarks one after another (about 7 minutes in all),
# then repeat their one-line summaries. Exit status: non-zero if any failed.
# Usage: bench/run_all.sh            (from anywhere; uses the project's .venv)
#        PYTHON=/path/to/python bench/run_all.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
for bench in agent_memory console_throughput console_proxy start_overhead poller_throughput backup_throughput upload_throughput; do
    echo "=== $bench"
    args=()
    # httpx is measured on request (--clients aiohttp,httpx): at 5,000 instances it takes minutes.
    [ "$bench" = poller_throughput ] && args=(--clients aiohttp)
    if ! "$PY" "bench/$bench.py" "${args[@]}" 2>&1 | tee -a "$log"; then
        echo "=== $bench FAILED"
        echo "SUMMARY $bench: FAILED" >>"$log"
        status=1
    fi
    echo
done
echo "=== summaries"
grep '^SUMMARY ' "$log"
exit "$status"

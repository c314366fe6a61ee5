#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 120), one after another, and
# prints executions and findings per target. Needs the nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz --locked`). Crashes land in
# fuzz/artifacts/TARGET/; corpora in fuzz/corpus/TARGET/ (not committed).
#
#     scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-120}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build -O >/dev/null
printf '%-14s %8s %14s %10s %s\n' target seconds executions exec/s result
for target in "${targets[@]}"; do
    log="$(mktemp)"
    status=0
    cargo +nightly fuzz run -O "$target" -- -max_total_time="$seconds" -print_final_stats=1 \
        -rss_limit_mb=2048 >"$log" 2>&1 || status=$?
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
    speed="$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
    if [ "$status" -eq 0 ]; then result=ok; else result="FOUND (exit $status, see fuzz/artifacts/$target)"; fi
    printf '%-14s %8s %14s %10s %s\n' "$target" "$seconds" "$runs" "$speed" "$result"
    rm -f "$log"
done

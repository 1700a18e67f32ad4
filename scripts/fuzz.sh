#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time and prints, per target, the time,
# the executions, executions per second and the crashes. Exits non-zero if any target crashed
# (panic, failed property, timeout, out of memory); the input is kept in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [-t SECONDS_PER_TARGET] [TARGET...]
#
# Works on the stable toolchain: `-s none` builds without a sanitizer, so no -Z flag (and no
# nightly) is needed; libFuzzer's coverage instrumentation uses stable -C llvm-args. The code is
# safe Rust, so AddressSanitizer would add little; debug assertions (integer overflow) are on.
# JSON and TOML targets use the dictionaries in fuzz/dict/ (tokens, field names, huge numbers).
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a C++ compiler (libFuzzer is built from C++).
set -euo pipefail

seconds=60
while getopts "t:h" opt; do
    case $opt in
        t) seconds=$OPTARG ;;
        *) sed -n '2,11p' "$0"; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: cargo-fuzz is missing (cargo install cargo-fuzz)" >&2; exit 2; }

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

echo "fuzz.sh: building ${#targets[@]} targets (release, no sanitizer)..." >&2
if ! build_log=$(cargo fuzz build -s none 2>&1); then
    echo "$build_log" >&2
    exit 2
fi

logs=$root/fuzz/target/fuzz-logs
mkdir -p "$logs"
failed=0
printf '%-14s %8s %14s %10s %8s %9s\n' target seconds executions exec/s crashes corpus
for t in "${targets[@]}"; do
    work=$root/fuzz/target/corpus/$t
    artifacts=$root/fuzz/artifacts/$t
    mkdir -p "$work" "$artifacts" "$root/fuzz/corpus/$t"
    log=$logs/$t.log
    touch "$log.start"
    start=$(date +%s)
    dict=()
    [ -e "$root/fuzz/dict/$t.dict" ] && dict=(-dict="$root/fuzz/dict/$t.dict")
    set +e
    # New inputs go to the scratch corpus; the committed seeds are only read.
    cargo fuzz run -s none "$t" "$work" "$root/fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" "${dict[@]}" >"$log" 2>&1
    rc=$?
    set -e
    took=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corpus=$(find "$work" -type f | wc -l)
    crashes=0
    if [ $rc -ne 0 ]; then
        crashes=$(find "$artifacts" -type f -newer "$log.start" 2>/dev/null | wc -l)
        [ "$crashes" -gt 0 ] || crashes=1
        failed=1
    fi
    printf '%-14s %8s %14s %10s %8s %9s\n' "$t" "$took" "${execs:-?}" "${rate:-?}" "$crashes" "$corpus"
    if [ $rc -ne 0 ]; then
        echo "  crashed (exit $rc); log: $log" >&2
        grep -m3 -E "panicked at|ERROR: libFuzzer|Test unit written" "$log" | sed 's/^/  /' >&2 || true
    fi
done
exit $failed

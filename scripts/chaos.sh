#!/usr/bin/env bash
# The long form of the fault suite (tests/faults.rs): every provider's emulator behind the TCP
# fault proxy (resets, stalls, trickles, truncations, body byte flips) and its own 429/500/503
# answers, mounted by the release binary, read by `cp -r` and many random-range readers, every
# byte compared with the source. Bounded: -t SECONDS (default 180) is split between providers.
#
#   scripts/chaos.sh [-t SECONDS] [-p http,b2,onedata,smh,doris,huawei] [-r READERS] [-f FILES_PER_DIR]
#                    [-x RATE_MULTIPLIER] [-s SEED]
#
# It drives the ignored test `chaos_all_providers` (release build) rather than re-implementing
# the suite in shell: the test already compares every byte, times every syscall against the
# bound, watches for hangs and checks errno values; this script sets the knobs, bounds the
# whole run, and prints the totals. Exit status: non-zero if any wrong byte, any hang, a daemon
# death, any other contract violation, or the run overran its bound.
# Needs root and /dev/fuse (it mounts). Leaves no mount behind (the test's guards unmount).
set -euo pipefail

secs=180 providers=http,b2,onedata,smh,doris,huawei readers=8 files=10 rate=1 seed=8
while getopts "t:p:r:f:x:s:h" o; do
    case $o in
        t) secs=$OPTARG ;;
        p) providers=$OPTARG ;;
        r) readers=$OPTARG ;;
        f) files=$OPTARG ;;
        x) rate=$OPTARG ;;
        s) seed=$OPTARG ;;
        *) sed -n '2,17p' "$0"; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
echo "== building (release)"
cargo test --release --test faults --no-run 2>&1 | tail -1

log=$(mktemp /tmp/fetchfs-chaos.XXXXXX.log)
echo "== chaos: ${secs}s over $providers, $readers readers, $files files per dir, rates x$rate, seed $seed (log: $log)"
# The test bounds itself; this outer limit only catches a suite that hangs as a whole.
limit=$((secs * 2 + 300))
set +e
CHAOS_SECONDS=$secs CHAOS_PROVIDERS=$providers CHAOS_READERS=$readers CHAOS_FILES=$files \
CHAOS_RATE=$rate CHAOS_SEED=$seed \
    timeout -k 10 "$limit" cargo test --release --test faults chaos_all_providers -- \
    --ignored --nocapture --test-threads=1 >"$log" 2>&1
rc=$?
set -e
grep -E '^(CHAOS|FAULTS)' "$log" || true

awk '
/^FIGURES / {
    n++
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    for (k in v) if (k != "provider" && k != "hwm_kb" && k != "alive") sum[k] += v[k]
    if (v["alive"] != 1) dead++
    if (v["hwm_kb"] > hwm) { hwm = v["hwm_kb"]; hwm_p = v["provider"] }
}
END {
    printf "\n== chaos figures (%d providers)\n", n
    printf "reads checked      %d\n", sum["reads"]
    printf "bytes checked      %d (%.1f MiB)\n", sum["bytes"], sum["bytes"] / 1048576
    printf "faults injected    reset=%d stall=%d trickle=%d truncate=%d flip=%d http429=%d http500=%d http503=%d\n", \
        sum["reset"], sum["stall"], sum["trickle"], sum["truncate"], sum["flip"], sum["http429"], sum["http500"], sum["http503"]
    printf "EIOs               %d\n", sum["eio"]
    printf "wrong bytes        %d\n", sum["wrong"]
    printf "hangs              %d\n", sum["hangs"]
    printf "daemons died       %d\n", dead
    printf "daemon peak RSS    %d kB (VmHWM, %s)\n", hwm, hwm_p
}' "$log" | tee "$log.summary"

if grep -q "contract violations" "$log"; then
    echo "== contract violations:"
    grep -A30 "contract violations" "$log" | head -80
fi
bad=$(awk '/^wrong bytes|^hangs|^daemons died/ { s += $NF } END { print s + 0 }' "$log.summary")
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "FAIL: the run did not finish within ${limit}s (overran its bound; a hung read would show as a HANG line above)"
    exit 1
fi
if [ "$rc" -ne 0 ] || [ "$bad" -ne 0 ]; then
    echo "FAIL (test exit $rc, wrong bytes + hangs + deaths = $bad); full log: $log"
    exit 1
fi
echo "PASS"

#!/usr/bin/env bash
# scripts/bench.sh — fetchfs beside curl, httpdirfs and rclone mount on a local nginx.
#
#   scripts/bench.sh [-r REPS] [-w WORKLOADS] [MOUNTER...]
#
# Runs the workloads of the benchmark harness (default ../shared/bench, or $BENCH_HARNESS):
# time to first byte, cold sequential 1 GiB read, warm re-read, 4 KiB random reads (IOPS,
# p50/p99), find over 10,000 files, reading all 10,000 small files (tar), 4 parallel readers,
# a byte-for-byte verification, and the daemon's peak RSS for each — against nginx on
# 127.0.0.1 over generated data (a 1 GiB file, 64 MiB file, 100 x 100 small files).
# Mounters default to: direct (curl, the ceiling), fetchfs, and httpdirfs-cache / rclone-off
# when those tools are installed. Medians of REPS runs (default 3) are printed with their
# ratio to curl, all from the same run.
#
# Then scripts/bench_extra.py runs the workloads of issue 4 (8 parallel readers, skip-ahead,
# scattered reads over a 16 GiB sparse file, warm read from the disk tier after a remount,
# peak RSS of each) for direct, fetchfs with its disk tier (scripts/bench/fetchfs-disk.sh) and
# the caching anchors httpdirfs --cache and rclone --vfs-cache-mode full. EXTRA=0 skips them;
# EXTRA_ONLY=1 runs only them; EXTRA_WORKLOADS picks some (par8,skip,sparse,warm_disk).
#
# Needs root (drop_caches, mounting), nginx-light, fio, time: `apt-get install -y nginx-light
# fio time` (+ httpdirfs rclone for the anchors). Builds target/release/fetchfs first.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HARNESS=${BENCH_HARNESS:-$ROOT/../shared/bench}
[ -x "$HARNESS/run.sh" ] || { echo "bench: harness not found at $HARNESS (set BENCH_HARNESS)" >&2; exit 2; }
REPS=3 WL=
while getopts "r:w:h" o; do
  case $o in r) REPS=$OPTARG ;; w) WL=$OPTARG ;; *) sed -n '2,18p' "$0"; exit 0 ;; esac
done
shift $((OPTIND - 1))
cd "$ROOT"
cargo build --release --quiet
for t in nginx fio; do command -v $t >/dev/null || { echo "bench: $t missing (apt-get install -y nginx-light fio time)" >&2; exit 2; }; done
[ -f /tmp/bench/data/big.bin ] || "$HARNESS/gen_data.py"
if (($# == 0)); then
  set -- direct "$ROOT/scripts/bench/fetchfs.sh"
  command -v httpdirfs >/dev/null && set -- "$@" httpdirfs-cache
  command -v rclone >/dev/null && set -- "$@" rclone-off
fi
export RUN_ID=${RUN_ID:-fetchfs-$(date +%Y%m%d-%H%M%S)}
extra() {
  [ "${EXTRA:-1}" = 1 ] || return 0
  # fetchfs twice: without a disk tier (sequential reads spliced, src/splice.rs) and with one.
  local m=(direct "$ROOT/scripts/bench/fetchfs.sh" "$ROOT/scripts/bench/fetchfs-disk.sh")
  command -v httpdirfs >/dev/null && m+=(httpdirfs-cache)
  command -v rclone >/dev/null && m+=(rclone-full)
  echo
  BENCH_HARNESS=$HARNESS python3 "$ROOT/scripts/bench_extra.py" -r "$REPS" \
    -w "${EXTRA_WORKLOADS:-par8,skip,sparse,warm_disk}" "${m[@]}"
}
if [ "${EXTRA_ONLY:-0}" = 1 ]; then extra; exit; fi
OUT=${OUT:-/tmp/bench/results/fetchfs-bench.tsv}
mkdir -p "$(dirname "$OUT")"
"$HARNESS/run.sh" -r "$REPS" ${WL:+-w "$WL"} -o "$OUT" "$@"
echo
python3 "$HARNESS/tools/summarize.py" table "$OUT" --run-id "$RUN_ID" || true
echo
python3 - "$OUT" "$RUN_ID" <<'PY'
import csv, statistics, sys
path, run = sys.argv[1], sys.argv[2]
rows = [r for r in csv.DictReader(open(path), delimiter="\t") if r["run_id"] == run and r["status"] in ("ok", "capped")]
med = {}
for r in rows:
    med.setdefault((r["mounter"], r["workload"]), []).append(r)
def m(mounter, wl, key="value"):
    rs = med.get((mounter, wl), [])
    vals = [float(r[key]) for r in rs if r.get(key) not in (None, "", "-")]
    return statistics.median(vals) if vals else None
wls = sorted({w for (_, w) in med})
mounters = sorted({k for (k, _) in med} - {"direct"})
lower_better = {"ttfb", "find", "mount"}
print("ratio to curl (direct), medians of this run; >1 = better than curl for rates")
for mo in mounters:
    for wl in wls:
        a, d = m(mo, wl), m("direct", wl)
        if a is None or d is None or d == 0 or a == 0:
            continue
        ratio = d / a if wl in lower_better else a / d
        extra = ""
        if wl == "rand4k":
            extra = f"  p50 {m(mo, wl, 'p50_ms')} ms vs curl {m('direct', wl, 'p50_ms')} ms"
        hwm = m(mo, wl, "daemon_hwm_MB")
        print(f"  {mo:<16} {wl:<10} {a:>12.3f}  curl {d:>12.3f}  ratio {ratio:6.2f}{extra}  peak RSS {hwm} MB")
PY
extra

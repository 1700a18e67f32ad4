#!/usr/bin/env bash
# scripts/bench-providers.sh — each provider's emulator: fetchfs beside curl, and find over a
# large tree.
#
#   scripts/bench-providers.sh [-r REPS] [PROVIDER...]      (b2 onedata smh; default all)
#
# For each provider: starts `fetchfs emulate <p>` (release build) over a generated tree holding
# a 1 GiB file (a hard link to /tmp/bench/data/big.bin when present) and N small entries
# (20,000 names across nested prefixes for b2, 10,000 in one directory for onedata and smh),
# then per repetition: curl downloads the 1 GiB file straight from the emulator (the ceiling),
# a fresh fetchfs mount reads it with dd, and a fresh mount runs `find` over the tree.
# Prints medians and the fetchfs/curl ratio. Caches are dropped between runs (root).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/fetchfs
REPS=3
while getopts "r:h" o; do case $o in r) REPS=$OPTARG ;; *) sed -n '2,13p' "$0"; exit 0 ;; esac; done
shift $((OPTIND - 1))
(($# > 0)) || set -- b2 onedata smh
cd "$ROOT" && cargo build --release --quiet
WORK=${WORK:-/tmp/fetchfs-bench-providers}
mkdir -p "$WORK"
PORT=19400
EMU_PID= MNT=$WORK/mnt
cleanup() {
  mountpoint -q "$MNT" 2>/dev/null && { fusermount3 -u "$MNT" 2>/dev/null || umount -l "$MNT"; }
  [ -n "$EMU_PID" ] && kill "$EMU_PID" 2>/dev/null || true
}
trap cleanup EXIT INT TERM
mkdir -p "$MNT"
big_src=/tmp/bench/data/big.bin
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

make_tree() { # $1 dir, $2 layout (nested|flat), $3 count
  local d=$1
  [ -f "$d/.done-$3" ] && return
  rm -rf "$d"; mkdir -p "$d"
  python3 - "$d" "$2" "$3" <<'PY'
import os, sys
d, layout, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    p = os.path.join(d, f"p{i % 20:02d}", f"q{(i // 20) % 10}", f"f{i:05d}.txt") if layout == "nested" else os.path.join(d, f"f{i:05d}.txt")
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        f.write(str(i))
PY
  touch "$d/.done-$3"
}

for p in "$@"; do
  data=$WORK/$p
  case $p in
    b2) sub=$data/bench; tree=$sub/tree; make_tree "$tree" nested 20000 ;;
    onedata) sub=$data/space; tree=$sub/tree; make_tree "$tree" flat 10000 ;;
    smh) sub=$data; tree=$sub/tree; make_tree "$tree" flat 10000 ;;
    *) echo "unknown provider $p" >&2; exit 2 ;;
  esac
  mkdir -p "$sub"
  if [ -f "$big_src" ]; then ln -f "$big_src" "$sub/big.bin" 2>/dev/null || cp "$big_src" "$sub/big.bin"; else head -c 1G /dev/urandom > "$sub/big.bin"; fi
  PORT=$((PORT + 1))   # a fresh port per provider: the previous emulator may still be closing
  "$BIN" emulate "$p" --root "$data" --port $PORT > "$WORK/$p-emu.log" 2>&1 &
  EMU_PID=$!
  # Emulators index (and hash) their tree before listening: wait until one says it serves.
  for _ in $(seq 1 240); do grep -q serving "$WORK/$p-emu.log" && break; sleep 0.5; done
  grep -q serving "$WORK/$p-emu.log" || { echo "$p emulator did not start: $(cat "$WORK/$p-emu.log")" >&2; exit 1; }
  base=http://127.0.0.1:$PORT
  cfg=$WORK/$p.toml
  case $p in
    b2)
      printf '[[source]]\nname = "%s"\ntype = "b2"\nendpoint = "%s"\nkey_id = "emu-key-id"\napplication_key = "emu-application-key"\nbucket = "bench"\n' "$p" "$base" > "$cfg"
      curl_big() {
        local a; a=$(curl -s -u emu-key-id:emu-application-key "$base/b2api/v4/b2_authorize_account")
        local tok dl; tok=$(echo "$a" | json 'd["authorizationToken"]'); dl=$(echo "$a" | json 'd["apiInfo"]["storageApi"]["downloadUrl"]')
        curl -s -o /dev/null -H "Authorization: $tok" -w '%{speed_download}' "$dl/file/bench/big.bin"
      } ;;
    onedata)
      printf '[[source]]\nname = "%s"\ntype = "onedata"\nendpoint = "%s"\ntoken = "demo-token"\nspace = "space"\n' "$p" "$base" > "$cfg"
      curl_big() {
        local api=$base/api/v3/oneprovider sid
        sid=$(curl -s -H 'X-Auth-Token: demo-token' "$api/spaces" | json '[s["spaceId"] for s in d if s["name"]=="space"][0]')
        curl -s -o /dev/null -H 'X-Auth-Token: demo-token' -w '%{speed_download}' "$api/data/$sid/path/big.bin"
      } ;;
    smh)
      printf '[[source]]\nname = "%s"\ntype = "smh"\nendpoint = "%s"\nlibrary_id = "smhdemo"\nlibrary_secret = "demo-secret"\n' "$p" "$base" > "$cfg"
      curl_big() {
        local tok; tok=$(curl -s "$base/api/v1/token?library_id=smhdemo&library_secret=demo-secret" | json 'd["accessToken"]')
        curl -s -L -o /dev/null -w '%{speed_download}' "$base/api/v1/file/smhdemo/-/big.bin?access_token=$tok"
      } ;;
  esac
  chmod 600 "$cfg"
  # The SMH emulator hashes a file (MD5 for its ETag) at its first request: not in a timed run.
  curl_big > /dev/null
  : > "$WORK/$p.rows"
  for r in $(seq "$REPS"); do
    drop; cat "$sub/big.bin" > /dev/null
    c=$(curl_big)
    drop; cat "$sub/big.bin" > /dev/null
    "$BIN" mount --config "$cfg" "$MNT" --log-level warn
    f=$(dd if="$MNT/$p/big.bin" of=/dev/null bs=1M 2>&1 | awk '/copied/ {for (i=1;i<=NF;i++) if ($i=="copied,") print $1/$(i+1)/1e6}')
    umount "$MNT"
    "$BIN" mount --config "$cfg" "$MNT" --log-level warn
    t0=$(date +%s%N); n=$(find "$MNT/$p/tree" -type f | wc -l); t1=$(date +%s%N)
    umount "$MNT"
    echo "$c $f $(( (t1 - t0) / 1000000 )) $n" >> "$WORK/$p.rows"
    sleep 0.5
  done
  kill "$EMU_PID"; wait "$EMU_PID" 2>/dev/null || true; EMU_PID=
  cm=$(awk '{print $1/1e6}' "$WORK/$p.rows" | median)
  fm=$(awk '{print $2}' "$WORK/$p.rows" | median)
  tm=$(awk '{print $3}' "$WORK/$p.rows" | median)
  n=$(awk '{print $4}' "$WORK/$p.rows" | tail -1)
  printf '%-8s curl %8.0f MB/s   fetchfs %8.0f MB/s   ratio %5.2f   find %6d ms (%s files)   [%s reps]\n' \
    "$p" "$cm" "$fm" "$(echo "$fm / $cm" | bc -l)" "$tm" "$n" "$REPS"
done

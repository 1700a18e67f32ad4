#!/usr/bin/env python3
"""Extra workloads of scripts/bench.sh (issue 4), beside curl and the caching anchors.

    scripts/bench_extra.py [-r REPS] [-w par8,skip,sparse,warm_disk] [--cap S] MOUNTER...

MOUNTER is a mounter file of the shared harness (bench/mounters/*.sh, or a path): its
`mounter_argv`, `mounter_prepare` and `mounter_cleanup` are used as they are, so every tool is
mounted exactly the way the main harness mounts it. `direct` means curl straight to the server.

Workloads (each on a fresh mount, kernel page cache dropped, the tool's own cache cleared):
  par8       8 parallel `dd bs=1M count=64` readers at offsets 0,128,...,896 MiB of big.bin
             (MB/s aggregate: all bytes / slowest reader); direct: 8 parallel ranged curls.
  skip       skip-ahead: read 4 MiB, skip 1 MiB, over big.bin (MB/s of bytes read);
             direct: the same ranges as one curl over one kept-alive connection.
  sparse     256 reads of 1 MiB at seeded random 4 KiB-aligned offsets of a 16 GiB sparse file
             (1 MiB of random data every 64 MiB, holes elsewhere), QD1 (MB/s, p50 ms per read).
  warm_disk  read big.bin, unmount, drop the page cache, mount again with the same cache
             directory, read it again: MB/s of the second read and the data requests it made
             (must be 0 for a tool whose cache survives a restart). Not for direct.

Every read of skip and sparse is checked against the origin file (first and last 4 KiB of each
read). Each row has the daemon's peak RSS (VmHWM) and the HTTP requests/bytes nginx logged
during the workload. It runs its own nginx (the harness's server.sh with BENCH_ROOT=/tmp/bench-x,
port 18081) whose data directory links big.bin from the main data set and holds the sparse
file, so the main harness's tree (and its `find` count) is untouched.
"""
import argparse
import os
import random
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HARNESS = os.environ.get("BENCH_HARNESS", os.path.join(HERE, "..", "..", "shared", "bench"))
XROOT = "/tmp/bench-x"
PORT = 18081
URL = f"http://127.0.0.1:{PORT}"
DATA = os.path.join(XROOT, "data")
ACCESS_LOG = os.path.join(XROOT, "logs", "nginx-access.log")
BIG = "big.bin"
BIG_SIZE = 1 << 30
SPARSE = "sparse16g.bin"
SPARSE_SIZE = 16 << 30
MiB = 1 << 20


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=False, **kw)


# ------------------------------------------------------------------ origin
def prepare_origin():
    os.makedirs(DATA, exist_ok=True)
    src = "/tmp/bench/data/big.bin"
    if not os.path.exists(src):
        sh(f"{shlex.quote(os.path.join(HARNESS, 'gen_data.py'))}")
    link = os.path.join(DATA, BIG)
    if not os.path.islink(link):
        os.symlink(src, link)
    sparse = os.path.join(DATA, SPARSE)
    if not os.path.exists(sparse) or os.path.getsize(sparse) != SPARSE_SIZE:
        rng = random.Random(7)
        with open(sparse + ".tmp", "wb") as f:
            f.truncate(SPARSE_SIZE)
            for off in range(0, SPARSE_SIZE, 64 * MiB):
                f.seek(off)
                f.write(rng.randbytes(MiB))
        os.rename(sparse + ".tmp", sparse)
    env = dict(os.environ, BENCH_ROOT=XROOT, BENCH_PORT=str(PORT))
    if sh(f"{shlex.quote(os.path.join(HARNESS, 'server.sh'))} status", env=env, capture_output=True).returncode != 0:
        r = sh(f"{shlex.quote(os.path.join(HARNESS, 'server.sh'))} start", env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"bench_extra: cannot start nginx: {r.stderr.strip()}")
        return True
    return False


def stop_origin():
    env = dict(os.environ, BENCH_ROOT=XROOT, BENCH_PORT=str(PORT))
    sh(f"{shlex.quote(os.path.join(HARNESS, 'server.sh'))} stop", env=env, capture_output=True)


def log_mark():
    try:
        with open(ACCESS_LOG, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def http_since(mark, needle=None):
    """(requests, MB) nginx logged since `mark`; only lines containing `needle` if given."""
    n = b = 0
    try:
        with open(ACCESS_LOG, errors="replace") as f:
            for i, line in enumerate(f):
                if i < mark or (needle and needle not in line):
                    continue
                parts = line.split()
                n += 1
                b += int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 0
    except FileNotFoundError:
        pass
    return n, round(b / 1e6, 1)


def drop_caches():
    sh("sync")
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    # the origin stays warm: we measure the client, not nginx's disk
    sh(f"cat {DATA}/{BIG} > /dev/null")
    with open(os.path.join(DATA, SPARSE), "rb") as f:
        for off in range(0, SPARSE_SIZE, 64 * MiB):
            os.pread(f.fileno(), MiB, off)


# ------------------------------------------------------------------ mounters
class Mounter:
    def __init__(self, spec):
        path = spec if os.path.isfile(spec) else os.path.join(HARNESS, "mounters", spec + ".sh")
        if not os.path.isfile(path):
            sys.exit(f"bench_extra: no such mounter: {spec}")
        self.file = os.path.abspath(path)
        self.name = self._bash('printf %s "$MOUNTER_NAME"').strip()
        self.kind = self._bash('printf %s "${MOUNTER_KIND:-fuse}"').strip()
        self.mnt = os.path.join(XROOT, "mnt", self.name)
        self.pid = None
        self.proc = None

    def _bash(self, body, check=True):
        script = f'source {shlex.quote(self.file)}; {body}'
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=os.path.join(HERE, ".."))
        if check and r.returncode != 0:
            sys.exit(f"bench_extra: {self.file}: {r.stderr.strip()}")
        return r.stdout

    def prepare(self):
        self._bash("declare -F mounter_prepare >/dev/null && mounter_prepare || true")

    def cleanup(self):
        self._bash("declare -F mounter_cleanup >/dev/null && mounter_cleanup || true", check=False)

    def mounted(self):
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == self.mnt for line in f)

    def mount(self, timeout=30):
        os.makedirs(self.mnt, exist_ok=True)
        argv = self._bash(
            f'mounter_argv {shlex.quote(self.mnt)} {shlex.quote(URL + "/")}; printf "%s\\0" "${{MOUNT_ARGV[@]}}"'
        ).split("\0")[:-1]
        logf = open(os.path.join(XROOT, "logs", f"{self.name}.daemon.log"), "ab")
        self.proc = subprocess.Popen(argv, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
                                     cwd=os.path.join(HERE, ".."))
        self.pid = self.proc.pid
        t0 = time.monotonic()
        while not (self.mounted() and os.path.exists(os.path.join(self.mnt, BIG))):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited before mounting")
            if time.monotonic() - t0 > timeout:
                self.unmount()
                raise RuntimeError(f"{self.name} not mounted after {timeout}s")
            time.sleep(0.02)

    def hwm_mb(self):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) // 1024
        except (FileNotFoundError, TypeError):
            return None
        return None

    def unmount(self):
        if self.proc is None:
            return
        for _ in range(20):
            if not self.mounted() or sh(f"fusermount3 -u {shlex.quote(self.mnt)} 2>/dev/null").returncode == 0:
                break
            time.sleep(0.25)
        if self.mounted():
            sh(f"umount -l {shlex.quote(self.mnt)}")
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# ------------------------------------------------------------------ readers
def check_piece(origin_fd, off, data):
    """The first and last 4 KiB of a read compared with the origin file."""
    n = len(data)
    for o in {0, max(0, n - 4096)}:
        want = os.pread(origin_fd, min(4096, n - o), off + o)
        if data[o:o + len(want)] != want:
            return False
    return True


def read_ranges(path, ranges, cap):
    """QD1 preads of (offset, length); returns bytes, wall, per-read latencies, wrong reads."""
    origin = os.open(os.path.join(DATA, os.path.basename(path)), os.O_RDONLY)
    fd = os.open(path, os.O_RDONLY)
    lat, total, wrong = [], 0, 0
    t0 = time.monotonic()
    try:
        for off, ln in ranges:
            s = time.monotonic()
            data = os.pread(fd, ln, off)
            lat.append(time.monotonic() - s)
            total += len(data)
            if len(data) != ln or not check_piece(origin, off, data):
                wrong += 1
            if time.monotonic() - t0 > cap:
                break
    finally:
        os.close(fd)
        os.close(origin)
    return total, time.monotonic() - t0, lat, wrong


def curl_ranges(name, ranges, cap):
    """The same ranges as one curl process over one kept-alive connection."""
    args = ["curl", "-sS", "--max-time", str(cap)]
    for i, (off, ln) in enumerate(ranges):
        if i:
            args.append("-:")
        args += ["-r", f"{off}-{off + ln - 1}", "-o", "/dev/null", "-w", "%{size_download} %{time_total}\\n",
                 f"{URL}/{name}"]
    t0 = time.monotonic()
    out = subprocess.run(args, capture_output=True, text=True).stdout.split("\n")
    wall = time.monotonic() - t0
    rows = [line.split() for line in out if line.strip()]
    total = sum(int(r[0]) for r in rows)
    lat = [float(r[1]) for r in rows]
    return total, wall, lat, 0 if len(rows) == len(ranges) else len(ranges) - len(rows)


SKIP_RANGES = [(off, 4 * MiB) for off in range(0, BIG_SIZE, 5 * MiB) if off + 4 * MiB <= BIG_SIZE]
_rng = random.Random(11)
SPARSE_RANGES = [(_rng.randrange(0, (SPARSE_SIZE - MiB) // 4096) * 4096, MiB) for _ in range(256)]


def dd_parallel(path, readers, count_mib, stride_mib, cap):
    procs = [subprocess.Popen(["timeout", "-k", "5", str(cap), "dd", f"if={path}", "of=/dev/null", "bs=1M",
                               f"count={count_mib}", f"skip={i * stride_mib}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(readers)]
    t0 = time.monotonic()
    total, slowest = 0, 0.0
    for p in procs:
        err = p.communicate()[1]
        for line in err.splitlines():
            if "copied" in line:
                total += int(line.split()[0])
                slowest = max(slowest, float(line.split(", ")[-2].split()[0]))
    return total, slowest or time.monotonic() - t0


def curl_parallel(readers, count_mib, stride_mib, cap):
    t0 = time.monotonic()
    procs = [subprocess.Popen(["curl", "-sS", "--max-time", str(cap), "-r",
                               f"{i * stride_mib * MiB}-{(i * stride_mib + count_mib) * MiB - 1}", "-o", "/dev/null",
                               "-w", "%{size_download}", f"{URL}/{BIG}"], stdout=subprocess.PIPE, text=True)
             for i in range(readers)]
    total = sum(int(p.communicate()[0] or 0) for p in procs)
    return total, time.monotonic() - t0


# ------------------------------------------------------------------ workloads
def run_workload(m, wl, cap):
    """One repetition of one workload; returns a result dict."""
    row = {"mounter": m.name, "workload": wl, "status": "ok", "note": ""}
    direct = m.kind == "direct"
    if wl == "warm_disk" and direct:
        return None
    if not direct:
        m.prepare()
    drop_caches()
    if not direct:
        m.mount()
    try:
        mark = log_mark()
        if wl == "par8":
            if direct:
                b, t = curl_parallel(8, 64, 128, cap)
            else:
                b, t = dd_parallel(os.path.join(m.mnt, BIG), 8, 64, 128, cap)
            row.update(value=b / 1e6 / t, unit="MB/s")
            if b != 8 * 64 * MiB:
                row.update(status="short", note=f"read {b} bytes")
        elif wl in ("skip", "sparse"):
            name, ranges = (BIG, SKIP_RANGES) if wl == "skip" else (SPARSE, SPARSE_RANGES)
            if direct:
                b, t, lat, wrong = curl_ranges(name, ranges, cap)
            else:
                b, t, lat, wrong = read_ranges(os.path.join(m.mnt, name), ranges, cap)
            row.update(value=b / 1e6 / t, unit="MB/s", p50_ms=statistics.median(lat) * 1000 if lat else None)
            want = sum(ln for _, ln in ranges)
            if wrong:
                row.update(status="WRONG", note=f"{wrong} reads with wrong bytes")
            elif b != want:
                row.update(status="capped" if t >= cap else "short", note=f"read {b} of {want} bytes")
        elif wl == "warm_disk":
            path = os.path.join(m.mnt, BIG)
            b1, t1 = dd_parallel(path, 1, 1024, 0, cap)
            row["hwm_first"] = m.hwm_mb()
            m.unmount()
            drop_caches()
            m.mount()
            mark = log_mark()
            b, t = dd_parallel(path, 1, 1024, 0, cap)
            data_reqs, _ = http_since(mark, needle="GET /" + BIG)
            row.update(value=b / 1e6 / t, unit="MB/s", data_requests=data_reqs, first_read=b1 / 1e6 / t1)
            if b != BIG_SIZE:
                row.update(status="capped" if t >= cap else "short", note=f"read {b} bytes")
        row["requests"], row["http_mb"] = http_since(mark)
        row["hwm_mb"] = None if direct else max(filter(None, [m.hwm_mb(), row.get("hwm_first")]), default=None)
        if not direct and m.proc is not None and m.proc.poll() is not None:
            row.update(status="crash", note="daemon exited during the workload")
    except Exception as e:  # a mount or read failure is a result, not a reason to stop the run
        row.update(status="fail", note=str(e)[:200], value=0.0, unit="-")
    finally:
        if not direct:
            m.unmount()
            m.cleanup()
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("-w", "--workloads", default="par8,skip,sparse,warm_disk")
    ap.add_argument("--cap", type=int, default=int(os.environ.get("CAP_S", 60)))
    ap.add_argument("-o", "--out", default="/tmp/bench/results/fetchfs-extra.tsv")
    ap.add_argument("mounters", nargs="+")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_extra: needs root (drop_caches, mounting)")
    os.makedirs(os.path.join(XROOT, "logs"), exist_ok=True)
    started = prepare_origin()
    mounters = [Mounter(s) for s in a.mounters]
    rows = []
    try:
        for rep in range(1, a.reps + 1):
            for wl in a.workloads.split(","):
                for m in mounters:
                    r = run_workload(m, wl, a.cap)
                    if r is None:
                        continue
                    r["rep"] = rep
                    rows.append(r)
                    log(f"{r['mounter']} rep {rep} {wl}: {r['status']} {r.get('value', 0):.1f} {r.get('unit', '')}"
                        f" p50 {r.get('p50_ms') or '-'} data_req {r.get('data_requests', '-')}"
                        f" http {r.get('requests')} req {r.get('http_mb')} MB peak RSS {r.get('hwm_mb')} MB {r['note']}")
    finally:
        for m in mounters:
            m.unmount()
        if started:
            stop_origin()
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    keys = ["rep", "mounter", "workload", "status", "value", "unit", "p50_ms", "data_requests", "requests", "http_mb",
            "hwm_mb", "note"]
    new = not os.path.exists(a.out)
    with open(a.out, "a") as f:
        if new:
            f.write("run_id\t" + "\t".join(keys) + "\n")
        run_id = os.environ.get("RUN_ID", time.strftime("%Y%m%d-%H%M%S"))
        for r in rows:
            f.write(run_id + "\t" + "\t".join("" if r.get(k) is None else str(r.get(k)) for k in keys) + "\n")
    summarize(rows, [m.name for m in mounters], a.workloads.split(","))


def summarize(rows, names, workloads):
    def med(name, wl, key):
        vals = [r[key] for r in rows if r["mounter"] == name and r["workload"] == wl
                and r["status"] in ("ok", "capped") and r.get(key) is not None]
        return statistics.median(vals) if vals else None

    print("\n| workload | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for wl in workloads:
        cells = []
        for n in names:
            v = med(n, wl, "value")
            if v is None:
                bad = [r["status"] for r in rows if r["mounter"] == n and r["workload"] == wl]
                cells.append(("/".join(sorted(set(bad))) if bad else "n/a"))
                continue
            c = f"{v:,.0f} MB/s"
            p = med(n, wl, "p50_ms")
            if p is not None:
                c += f", p50 {p:.2f} ms"
            d = med(n, wl, "data_requests")
            if d is not None:
                c += f", {d:.0f} data req"
            h = med(n, wl, "hwm_mb")
            if h is not None:
                c += f", RSS {h:.0f} MB"
            cells.append(c)
        print(f"| {wl} | " + " | ".join(cells) + " |")
    if "direct" in names:
        print("\nratio to curl (direct), medians of this run:")
        for n in names:
            if n == "direct":
                continue
            for wl in workloads:
                a, d = med(n, wl, "value"), med("direct", wl, "value")
                if a and d:
                    print(f"  {n:<16} {wl:<10} {a:10.1f}  curl {d:10.1f}  ratio {a / d:5.2f}")


if __name__ == "__main__":
    main()

//! Load through a real mount: 64 concurrent readers over 1,000 files of varied sizes for a
//! bounded time, every byte compared with the source. The daemon must answer every read
//! without an error, keep its peak RSS under the cache budget plus 64 MiB, and give back its
//! file descriptors and tokio tasks once the readers are gone.
//!
//! `FETCHFS_LOAD_SECS` sets the duration (default 12 s, the CI form); e.g.
//! `FETCHFS_LOAD_SECS=180 cargo test --test load -- --nocapture` for a longer run.

mod common;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

const READERS: usize = 64;
/// `[cache] memory` of the daemon under load.
const BUDGET_MIB: u64 = 32;
/// The README's promise: RSS stays under the budget plus about 64 MiB.
const RSS_SLACK_MIB: u64 = 64;
/// reqwest's idle pool keeps at most this many connections per host (`pool_idle_per_host`).
const POOL_IDLE_PER_HOST: usize = 32;

fn gauge(text: &str, name: &str) -> u64 {
    metric(text, name).unwrap_or_else(|| panic!("{name} missing from /metrics")) as u64
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} missing from /proc/{pid}/status"))
}

/// (socket fds, other fds) of `pid`.
fn fds(pid: u32) -> (usize, usize) {
    let mut sockets = 0;
    let mut other = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        match std::fs::read_link(e.path()) {
            Ok(t) if t.to_string_lossy().starts_with("socket:") => sockets += 1,
            Ok(_) => other += 1,
            Err(_) => {}
        }
    }
    (sockets, other)
}

/// TCP connections in state ESTABLISHED whose remote end is 127.0.0.1:`port` (the daemon's
/// connections to the emulator; the test process itself never connects to it).
fn connections_to(port: u16) -> usize {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let want = format!("0100007F:{port:04X}");
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2] == want && f[3] == "01"
        })
        .count()
}

struct Totals {
    reads: AtomicU64,
    bytes: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

#[test]
fn sixty_four_readers_over_a_thousand_files_get_exact_bytes_within_budget_and_leak_nothing() {
    if !can_mount() {
        return;
    }
    let secs: u64 = std::env::var("FETCHFS_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let rt = runtime();
    let data = tempfile::tempdir().unwrap();
    // 1,000 files: 995 of 0..192 KiB (one block or less) and 5 of 2-6 MiB (several blocks,
    // prefetched), 110 MiB in all: more than three times the memory budget.
    let mut files = make_tree(data.path(), 20, 50, 192 << 10, 8);
    for (p, _) in files.split_off(995) {
        std::fs::remove_file(p).unwrap();
    }
    for i in 0..5usize {
        let p = data.path().join("d00").join(format!("big{i}.bin"));
        let v = pseudo_random((2 + i) << 20, 100 + i as u64);
        std::fs::write(&p, &v).unwrap();
        files.push((p, v));
    }
    assert_eq!(files.len(), 1000);
    let total_bytes: usize = files.iter().map(|(_, v)| v.len()).sum();
    let (server, url) = serve_http(&rt, data.path());
    let emu_port = server.addr.port();
    let mport = free_port();
    let maddr = format!("127.0.0.1:{mport}");
    let m = MountGuard::start(&[
        &url,
        "--cache-memory",
        &format!("{BUDGET_MIB}MiB"),
        "--metrics-addr",
        &maddr,
    ]);
    let pid = m.pid();
    let baseline_tasks = gauge(&scrape_metrics(mport), "fetchfs_runtime_alive_tasks");
    let baseline_conns = connections_to(emu_port);
    let (baseline_sockets, baseline_other) = fds(pid);
    let baseline_rss_kib = proc_status_kib(pid, "VmRSS:");

    let mnt = m.mnt();
    let files: Arc<Vec<(PathBuf, Vec<u8>)>> = Arc::new(
        files
            .into_iter()
            .map(|(p, v)| (mnt.join(p.strip_prefix(data.path()).unwrap()), v))
            .collect(),
    );
    let totals = Arc::new(Totals {
        reads: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        errors: Default::default(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    for r in 0..READERS {
        let (files, totals, stop, done_tx) = (files.clone(), totals.clone(), stop.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (r as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d);
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let (path, want) = &files[(next() % files.len() as u64) as usize];
                let res = (|| -> Result<usize, String> {
                    let f = std::fs::File::open(path).map_err(|e| format!("open: {e}"))?;
                    // Drop this file's pages from the kernel's cache now and then, so that
                    // reads keep reaching the daemon instead of the page cache.
                    if next() % 2 == 0 {
                        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
                    }
                    if next() % 3 == 0 || want.is_empty() {
                        let mut got = Vec::with_capacity(want.len());
                        (&f).read_to_end(&mut got).map_err(|e| format!("read: {e}"))?;
                        if got != *want {
                            return Err(format!("whole read: {} bytes, want {}", got.len(), want.len()));
                        }
                        Ok(got.len())
                    } else {
                        let off = (next() % want.len() as u64) as usize;
                        let len = ((next() % (512 << 10)) as usize + 1).min(want.len() - off);
                        let mut got = vec![0u8; len];
                        f.read_exact_at(&mut got, off as u64)
                            .map_err(|e| format!("pread {off}+{len}: {e}"))?;
                        if got[..] != want[off..off + len] {
                            return Err(format!("pread {off}+{len}: wrong bytes"));
                        }
                        Ok(len)
                    }
                })();
                match res {
                    Ok(n) => {
                        totals.reads.fetch_add(1, Ordering::Relaxed);
                        totals.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) => totals.errors.lock().unwrap().push(format!("{}: {e}", path.display())),
                }
            }
            let _ = done_tx.send(());
        });
    }
    drop(done_tx);
    let mut peak_conns = 0;
    let mut finished = 0;
    let hard = deadline + Duration::from_secs(60);
    while finished < READERS {
        match done_rx.recv_timeout(Duration::from_millis(250)) {
            Ok(()) => finished += 1,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                peak_conns = peak_conns.max(connections_to(emu_port));
                if Instant::now() > hard {
                    stop.store(true, Ordering::Relaxed);
                    panic!(
                        "{} of {READERS} readers still blocked 60 s after the deadline: a read hangs\n{}",
                        READERS - finished,
                        m.log_text()
                    );
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let errors = totals.errors.lock().unwrap().clone();
    let reads = totals.reads.load(Ordering::Relaxed);
    let bytes = totals.bytes.load(Ordering::Relaxed);
    let hwm_kib = proc_status_kib(pid, "VmHWM:");
    let requests = server.harness.stats.total();
    eprintln!(
        "load: {READERS} readers, {secs} s, {} files ({} MiB), {reads} reads checked, {} MiB, \
         {} errors, {requests} HTTP requests, peak RSS {} MiB (budget {BUDGET_MIB} MiB, {} MiB after mounting), \
         peak connections to the emulator {peak_conns}",
        files.len(),
        total_bytes >> 20,
        bytes >> 20,
        errors.len(),
        hwm_kib / 1024,
        baseline_rss_kib / 1024
    );
    assert!(
        errors.is_empty(),
        "{} failed reads, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(reads >= READERS as u64, "only {reads} reads in {secs} s");
    assert!(
        requests > 100,
        "the load never reached the emulator ({requests} requests)"
    );
    // Measured from the RSS right after mounting: the debug binary alone maps about 26 MiB
    // of code and runtime (a release build far less), which is not memory the load can grow.
    // What the load adds (cached blocks, the recycled-buffer pool, reads and bodies in
    // flight) must stay within the budget plus the README's 64 MiB.
    assert!(
        hwm_kib.saturating_sub(baseline_rss_kib) <= (BUDGET_MIB + RSS_SLACK_MIB) << 10,
        "peak RSS {} MiB ({} MiB after mounting): the load added more than the budget {BUDGET_MIB} MiB \
         + {RSS_SLACK_MIB} MiB",
        hwm_kib / 1024,
        baseline_rss_kib / 1024
    );

    // Leaks: every reader closed its files. Fetches started for them (prefetch, checksum
    // verification, disk puts) finish within the I/O timeout; wait, bounded, for the counts
    // to settle back.
    let settle = Instant::now() + Duration::from_secs(20);
    loop {
        let tasks = gauge(&scrape_metrics(mport), "fetchfs_runtime_alive_tasks") as i64;
        let conns = connections_to(emu_port);
        let (sockets, other) = fds(pid);
        let open = gauge(&scrape_metrics(mport), "fetchfs_open_handles");
        // Each connection kept alive in reqwest's idle pool is driven by one hyper task and
        // holds one socket: tasks and sockets above the baseline must be exactly those
        // connections. One more task of slack: the scrape's own connection task may not have
        // ended yet from the previous scrape.
        let pooled = conns as i64 - baseline_conns as i64;
        let extra_tasks = tasks - baseline_tasks as i64 - pooled;
        let extra_sockets = sockets as i64 - baseline_sockets as i64 - pooled;
        let ok = open == 0
            && other == baseline_other
            && conns <= POOL_IDLE_PER_HOST
            && extra_tasks <= 1
            && extra_sockets <= 1;
        if ok {
            eprintln!(
                "settled: tasks {baseline_tasks} -> {tasks}, connections {baseline_conns} -> {conns}, \
                 socket fds {baseline_sockets} -> {sockets}, other fds {baseline_other} -> {other}"
            );
            break;
        }
        assert!(
            Instant::now() < settle,
            "leak after the load: open handles {open}; tasks {baseline_tasks} -> {tasks}; connections to \
             the emulator {baseline_conns} -> {conns} (pool keeps <= {POOL_IDLE_PER_HOST}); socket fds \
             {baseline_sockets} -> {sockets}; other fds {baseline_other} -> {other}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

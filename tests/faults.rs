//! Fault suite: real mounts of each provider's emulator behind the TCP fault proxy
//! (`fetchfs::emulate::proxy`) plus the emulators' own 429/500/503 answers, read by `cp -r` and
//! by threads doing random-range `pread`s, every byte compared with the source.
//!
//! The contract checked, for every read:
//! * it returns exactly the source's bytes, or fails with EIO (errno 5), nothing else;
//! * each syscall (`open`, `pread`) returns within `BOUND` = 2 × (io_timeout + 1 s) + 3 s of
//!   slack for a shared machine: the FUSE adapter bounds each operation by io_timeout +
//!   `OP_GRACE` (1 s), and one syscall may wait on two operations in a row (`open` = lookup +
//!   open; a `pread` = the kernel's read of its page, then of the readahead it waits on). The
//!   chaos run measured at most 8.7 s with io_timeout = 4 s;
//! * none hangs: a watchdog fails the test when a syscall is still running after `HANG`;
//! * the daemon is alive at the end, and once every fault is switched off every file reads
//!   correctly again, on the same mount.
//!
//! Byte flips, honestly: a flipped body byte cannot be told from the real content by any
//! client unless the provider publishes a whole-file checksum, and even then only a read that
//! covers the whole file (a sequential read from 0 to EOF) can check it. So the transport
//! phase (resets, stalls, trickles, truncations, error statuses) runs against every provider
//! with random-range readers and `cp -r`, and must deliver zero wrong bytes; the flip phase
//! runs only against providers with a checksum (B2 SHA-1, SMH CRC-64; HTTP and Onedata carry
//! none), only with whole-file sequential readers (`cp -r`), and there the contract is: each
//! copied file is either identical or `cp` reported an EIO for it (DESIGN §Integrity: the final
//! read fails). A file whose checksum failed has its blocks dropped, and the next open downloads
//! and verifies it afresh, so the recovery phase expects every file, those included, to read
//! right again on the same mount.
//!
//! `chaos_all_providers` (ignored) is the long form driven by `scripts/chaos.sh` with the
//! `CHAOS_*` variables: more files, more readers, higher rates, a longer bounded run.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use fetchfs::emulate::proxy::{self, Proxy, ProxyConfig, ProxyCounts};
use fetchfs::emulate::{self, FaultSpec, Harness, Server};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const IO_TIMEOUT: Duration = Duration::from_secs(4);
const STALL_TIMEOUT: Duration = Duration::from_secs(1);
const BOUND: Duration = Duration::from_secs(2 * (4 + 1) + 3);
const HANG: Duration = Duration::from_secs(45);
const EIO: i32 = 5;

/// Mount tests of this file run one at a time: they time every read.
static SERIAL: Mutex<()> = Mutex::new(());

/// Sizes and rates of one run.
#[derive(Debug, Clone)]
struct Knobs {
    dirs: usize,
    files_per_dir: usize,
    max_size: usize,
    big: usize,
    flip_files: usize,
    readers: usize,
    /// Minimum time the random readers run under transport faults.
    read_for: Duration,
    /// Multiplies every fault rate.
    rate: f64,
    fail_every: u64,
    seed: u64,
}

impl Knobs {
    fn ci() -> Knobs {
        Knobs {
            dirs: 2,
            files_per_dir: 6,
            max_size: 400_000,
            big: 3 << 20,
            flip_files: 8,
            readers: 4,
            read_for: Duration::from_secs(5),
            rate: 1.0,
            fail_every: 11,
            seed: 20261122,
        }
    }

    fn transport(&self) -> ProxyConfig {
        ProxyConfig {
            seed: self.seed,
            reset_rate: 0.12 * self.rate,
            stall_rate: 0.06 * self.rate,
            trickle_rate: 0.05 * self.rate,
            truncate_rate: 0.08 * self.rate,
            flip_rate: 0.0,
            // Stalls last 0.6 to 2.5 s: some shorter than the daemon's 1 s stall timeout.
            stall_ms: 2500,
            max_offset: 256 * 1024,
            // A slow trickle (~3 KB/s for up to 32 KiB) that never trips the stall timeout:
            // only the I/O deadline can bound a read caught in it.
            trickle_bytes: 32 * 1024,
            trickle_delay_ms: 10,
        }
    }

    fn flips(&self) -> ProxyConfig {
        ProxyConfig {
            seed: self.seed ^ 0xf11b,
            // Per response: with 8 flip files, 0.4 left all 8 unflipped in ~1.7 % of runs (seen
            // once in CI: "the flip phase flipped no byte"); 0.6 leaves it at 0.07 %.
            flip_rate: (0.6 * self.rate).min(1.0),
            max_offset: 1 << 20,
            ..ProxyConfig::default()
        }
    }
}

/// Totals of one provider's run.
#[derive(Default)]
struct Tally {
    reads: AtomicU64,
    bytes: AtomicU64,
    eio: AtomicU64,
    wrong_bytes: AtomicU64,
    hangs: AtomicU64,
    max_ms: AtomicU64,
    slowest: Mutex<String>,
    problems: Mutex<Vec<String>>,
}

impl Tally {
    fn problem(&self, p: String) {
        let mut v = self.problems.lock().unwrap();
        if v.len() < 50 {
            v.push(p);
        }
    }
    fn timed<T>(&self, what: &str, f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
        let t = Instant::now();
        let out = f();
        let d = t.elapsed();
        if self.max_ms.fetch_max(d.as_millis() as u64, Ordering::Relaxed) < d.as_millis() as u64 {
            *self.slowest.lock().unwrap() = what.to_string();
        }
        if d > BOUND {
            let result = match &out {
                Ok(_) => "succeeded".to_string(),
                Err(e) => format!("failed: {e}"),
            };
            self.problem(format!("{what} took {d:?}, over the bound {BOUND:?} ({result})"));
        }
        out
    }
}

/// What one reader thread is doing, for the watchdog.
type Beat = Arc<Mutex<Option<(Instant, String)>>>;

enum Outcome {
    Exact,
    Eio,
    Failed,
}

/// Opens `path` and reads `[off, off + want.len())` in ≤128 KiB `pread`s, each timed and
/// checked: exact bytes, or EIO. Anything else is recorded as a problem.
fn check_range(
    path: &Path,
    off: u64,
    want: &[u8],
    file_len: usize,
    direct: bool,
    tally: &Tally,
    beat: &Beat,
) -> Outcome {
    let name = path.display().to_string();
    let start = |what: String| *beat.lock().unwrap() = Some((Instant::now(), what));
    let errno = |e: &std::io::Error, what: &str| -> Outcome {
        if e.raw_os_error() == Some(EIO) {
            tally.eio.fetch_add(1, Ordering::Relaxed);
            Outcome::Eio
        } else {
            tally.problem(format!("{what} {name}: {e} (expected EIO)"));
            Outcome::Failed
        }
    };
    start(format!("open {name}"));
    let open = || {
        use std::os::unix::fs::OpenOptionsExt;
        // O_DIRECT: every read reaches the daemon instead of the kernel's page cache.
        let flags = if direct { libc::O_DIRECT } else { 0 };
        std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path)
    };
    let f = match tally.timed(&format!("open {name}"), open) {
        Ok(f) => f,
        Err(e) => {
            *beat.lock().unwrap() = None;
            return errno(&e, "open");
        }
    };
    let mut got = 0usize;
    let mut buf = vec![0u8; 128 * 1024];
    let outcome = loop {
        if got == want.len() {
            break Outcome::Exact;
        }
        let n = (want.len() - got).min(buf.len());
        let at = off + got as u64;
        start(format!("pread {name} @{at}+{n}"));
        match tally.timed(&format!("pread {name} @{at}+{n}"), || f.read_at(&mut buf[..n], at)) {
            Err(e) => break errno(&e, "pread"),
            Ok(0) => {
                tally.problem(format!("pread {name} @{at}: early EOF, file is {file_len} bytes"));
                tally
                    .wrong_bytes
                    .fetch_add((want.len() - got) as u64, Ordering::Relaxed);
                break Outcome::Failed;
            }
            Ok(k) => {
                let wrong = buf[..k].iter().zip(&want[got..got + k]).filter(|(a, b)| a != b).count();
                tally.reads.fetch_add(1, Ordering::Relaxed);
                tally.bytes.fetch_add(k as u64, Ordering::Relaxed);
                if wrong > 0 {
                    tally.wrong_bytes.fetch_add(wrong as u64, Ordering::Relaxed);
                    tally.problem(format!("pread {name} @{at}+{k}: {wrong} wrong bytes"));
                    break Outcome::Failed;
                }
                got += k;
            }
        }
    };
    if matches!(outcome, Outcome::Exact) && off as usize + want.len() == file_len {
        // At EOF a further read must return 0 bytes.
        if let Ok(k) = f.read_at(&mut buf[..1], file_len as u64)
            && k != 0
        {
            tally.problem(format!("{name}: {k} bytes past EOF"));
            tally.wrong_bytes.fetch_add(k as u64, Ordering::Relaxed);
        }
    }
    *beat.lock().unwrap() = None;
    outcome
}

/// A source file as seen through the mount.
#[derive(Clone)]
struct File {
    rel: String,
    mounted: PathBuf,
    data: Arc<Vec<u8>>,
}

/// Runs `jobs` on threads, each with its own beat, and watches them: a syscall running longer
/// than `HANG` counts as a hang and ends the wait (the test then fails; dropping the mount kills
/// the daemon, which releases the stuck threads).
fn run_watched(tally: &Arc<Tally>, jobs: Vec<Box<dyn FnOnce(Beat) + Send>>) {
    let beats: Vec<Beat> = jobs.iter().map(|_| Arc::new(Mutex::new(None))).collect();
    let done = Arc::new(AtomicU64::new(0));
    for (job, beat) in jobs.into_iter().zip(&beats) {
        let (beat, done) = (beat.clone(), done.clone());
        std::thread::spawn(move || {
            job(beat);
            done.fetch_add(1, Ordering::SeqCst);
        });
    }
    while done.load(Ordering::SeqCst) < beats.len() as u64 {
        for b in &beats {
            if let Some((t, what)) = b.lock().unwrap().as_ref()
                && t.elapsed() > HANG
            {
                tally.hangs.fetch_add(1, Ordering::SeqCst);
                tally.problem(format!("HANG: {what} still running after {:?}", t.elapsed()));
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `cp -r SRC/. DEST/` under `timeout`: (files cp reported EIO for, other error lines, hung).
fn cp_r(src: &Path, dest: &Path, limit: Duration) -> (Vec<PathBuf>, Vec<String>, bool) {
    let out = Command::new("timeout")
        .args(["-k", "2", &limit.as_secs().to_string(), "cp", "-r"])
        .arg(format!("{}/.", src.display()))
        .arg(format!("{}/", dest.display()))
        .output()
        .expect("run cp");
    let hung = out.status.code() == Some(124) || out.status.code() == Some(137);
    let mut eio = Vec::new();
    let mut other = Vec::new();
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        let quoted = line.split('\'').nth(1).map(PathBuf::from);
        match quoted {
            Some(p) if line.ends_with("Input/output error") => eio.push(p),
            _ => other.push(line.to_string()),
        }
    }
    (eio, other, hung)
}

/// Checks a `cp -r` copy: every file cp did not report is identical to the source.
fn check_copy(files: &[File], src_in_mount: &Path, dest: &Path, eio: &[PathBuf], tally: &Tally) -> Vec<String> {
    let mut failed = Vec::new();
    for f in files {
        let rel = f.mounted.strip_prefix(src_in_mount).unwrap();
        let reported = eio.iter().any(|p| p.ends_with(rel));
        if reported {
            tally.eio.fetch_add(1, Ordering::Relaxed);
            failed.push(f.rel.clone());
            continue;
        }
        let copy = std::fs::read(dest.join(rel)).unwrap_or_else(|e| {
            tally.problem(format!(
                "cp: {} missing in the copy ({e}) though cp reported no error",
                f.rel
            ));
            Vec::new()
        });
        tally.reads.fetch_add(1, Ordering::Relaxed);
        tally.bytes.fetch_add(copy.len() as u64, Ordering::Relaxed);
        if copy != *f.data {
            let wrong =
                copy.iter().zip(f.data.iter()).filter(|(a, b)| a != b).count() + copy.len().abs_diff(f.data.len());
            tally.wrong_bytes.fetch_add(wrong as u64, Ordering::Relaxed);
            tally.problem(format!(
                "cp: {} copied with {wrong} wrong bytes and no error ({} vs {} bytes)",
                f.rel,
                copy.len(),
                f.data.len()
            ));
        }
    }
    failed
}

struct Fixture {
    _rt: tokio::runtime::Runtime,
    data: tempfile::TempDir,
    _server: Server,
    harness: Harness,
    proxy: Proxy,
    /// `[[source]]` table pointing at the proxy.
    source_toml: String,
    /// Where the provider's tree lives on disk.
    root: PathBuf,
    name: &'static str,
    checksummed: bool,
}

/// Fills the provider's tree with `fill(root)`, starts its emulator and the proxy in front.
fn fixture(name: &'static str, fill: impl FnOnce(&Path)) -> Fixture {
    let rt = runtime();
    let data = tempfile::tempdir().unwrap();
    let (root, serve_dir) = match name {
        "http" => (data.path().join("www"), data.path().join("www")),
        "b2" => (data.path().join("b2/bkt"), data.path().join("b2")),
        "onedata" => (data.path().join("od/space1"), data.path().join("od")),
        "smh" => (data.path().join("smh"), data.path().join("smh")),
        "doris" => (data.path().join("doris"), data.path().join("doris")),
        "huawei" => (data.path().join("hw"), data.path().join("hw")),
        other => panic!("no fixture for {other}"),
    };
    std::fs::create_dir_all(&root).unwrap();
    fill(&root);
    let (router, harness) = match name {
        "http" => {
            let e = emulate::http::router(&serve_dir);
            (e.router, e.harness)
        }
        "b2" => {
            let e = emulate::b2::router(&serve_dir, Default::default());
            (e.router, e.harness)
        }
        "onedata" => {
            let e = emulate::onedata::router(&serve_dir, Default::default());
            (e.router, e.harness)
        }
        "smh" => {
            let e = emulate::smh::router(&serve_dir, Default::default());
            (e.router, e.harness)
        }
        "huawei" => {
            let e = emulate::huawei::router(&serve_dir, Default::default());
            (e.router, e.harness)
        }
        _ => {
            let e = emulate::doris::router(&serve_dir, Default::default());
            (e.router, e.harness)
        }
    };
    let server = rt.block_on(emulate::serve(router, 0, harness.clone())).unwrap();
    let proxy = rt
        .block_on(proxy::start(server.addr, 0, ProxyConfig::default()))
        .unwrap();
    proxy.control.set_enabled(false);
    let url = proxy.base_url();
    let source_toml = match name {
        "http" => format!("type = \"http\"\nurl = \"{url}/\"\n"),
        "b2" => format!(
            "type = \"b2\"\nendpoint = \"{url}\"\nkey_id = \"{}\"\napplication_key = \"{}\"\nbucket = \"bkt\"\n",
            emulate::b2::DEFAULT_KEY_ID,
            emulate::b2::DEFAULT_APPLICATION_KEY
        ),
        "onedata" => format!("type = \"onedata\"\nendpoint = \"{url}\"\ntoken = \"demo-token\"\nspace = \"space1\"\n"),
        "smh" => format!(
            "type = \"smh\"\nendpoint = \"{url}\"\nlibrary_id = \"smhdemo\"\nlibrary_secret = \"demo-secret\"\n"
        ),
        "huawei" => {
            let mut tasks: Vec<String> = std::fs::read_dir(&root)
                .unwrap()
                .map(|e| format!("\"{}\"", e.unwrap().file_name().to_string_lossy()))
                .collect();
            tasks.sort();
            format!(
                "type = \"huawei\"\nendpoint = \"{url}\"\niam_endpoint = \"{url}\"\ndomain = \"demo-account\"\nuser = \"demo-user\"\npassword = \"demo-password\"\nregion = \"{}\"\nexport_tasks = [{}]\n",
                emulate::huawei::DEFAULT_REGION,
                tasks.join(", ")
            )
        }
        _ => format!(
            "type = \"doris\"\nendpoint = \"{url}\"\ntoken = \"{}\"\nuser = \"root\"\npassword = \"\"\n",
            emulate::doris::DEFAULT_TOKEN
        ),
    };
    Fixture {
        _rt: rt,
        data,
        _server: server,
        harness,
        proxy,
        source_toml,
        root,
        name,
        checksummed: matches!(name, "b2" | "smh" | "doris"),
    }
}

impl Fixture {
    /// Mounts the source (named after the provider) with short network timeouts and a small block
    /// cache, so reads keep reaching the network.
    fn mount(&self) -> MountGuard {
        let cfg = self.data.path().join("fetchfs.toml");
        std::fs::write(
            &cfg,
            format!(
                "[cache]\nmemory = \"4MiB\"\nblock_size = \"256KiB\"\n\n[network]\nconnect_timeout = \"2s\"\nrequest_timeout = \"3s\"\nstall_timeout = \"{}ms\"\nio_timeout = \"{}ms\"\n\n[[source]]\nname = \"{}\"\n{}",
                STALL_TIMEOUT.as_millis(),
                IO_TIMEOUT.as_millis(),
                self.name,
                self.source_toml
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
        MountGuard::start(&["--config", cfg.to_str().unwrap()])
    }

    fn files(&self, m: &MountGuard, list: Vec<(PathBuf, Vec<u8>)>) -> Vec<File> {
        list.into_iter()
            .map(|(p, data)| {
                let rel = p.strip_prefix(&self.root).unwrap().display().to_string();
                // Huawei shows each export task's file (TASK/FILE on disk) at the source root.
                let shown = if self.name == "huawei" {
                    p.file_name().unwrap().to_string_lossy().to_string()
                } else {
                    rel.clone()
                };
                File {
                    mounted: m.path(&format!("{}/{shown}", self.name)),
                    rel,
                    data: Arc::new(data),
                }
            })
            .collect()
    }
}

/// Switches the emulator's 429/500/503 answers on (every `every`th request, the status
/// rotating every 300 ms) until `stop`; returns the statuses answered per code.
fn rotate_http_errors(harness: Harness, every: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<[u64; 3]> {
    std::thread::spawn(move || {
        let codes = [429u16, 500, 503];
        let mut counts = [0u64; 3];
        let mut i = 0;
        while !stop.load(Ordering::SeqCst) {
            let k = i % 3;
            let before = harness.faults.injected();
            harness.faults.set(FaultSpec {
                fail_every: every,
                error_status: codes[k],
                retry_after: if codes[k] == 429 { Some(0) } else { None },
                ..FaultSpec::default()
            });
            std::thread::sleep(Duration::from_millis(300));
            counts[k] += harness.faults.injected() - before;
            i += 1;
        }
        let before = harness.faults.injected();
        harness.faults.clear();
        counts[(i + 2) % 3] += harness.faults.injected() - before;
        counts
    })
}

/// Peak resident set of a process, from /proc (kB).
fn vm_hwm_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The whole suite against one provider: transport faults, flips (checksummed providers),
/// recovery. Panics with every problem found; prints the figures.
fn run_provider(name: &'static str, k: &Knobs) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut transport_src = Vec::new();
    let mut flip_src = Vec::new();
    let fx = fixture(name, |root| {
        if name == "huawei" {
            // DIR/<task>/<file>: one export file per task, all shown at the source root.
            for (i, (_, data)) in make_tree(&root.join(".gen"), k.dirs, k.files_per_dir, k.max_size, k.seed)
                .into_iter()
                .enumerate()
            {
                let p = root.join(format!("task-{i:04}/x{i:04}.bin"));
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, &data).unwrap();
                transport_src.push((p, data));
            }
            std::fs::remove_dir_all(root.join(".gen")).unwrap();
            // Whole-file downloads (no Range): a faulted one starts over, so keep it smaller.
            let big = pseudo_random(k.big.min(1 << 20), k.seed ^ 7);
            std::fs::create_dir_all(root.join("task-big")).unwrap();
            std::fs::write(root.join("task-big/big.bin"), &big).unwrap();
            transport_src.push((root.join("task-big/big.bin"), big));
            return;
        }
        transport_src = make_tree(&root.join("t"), k.dirs, k.files_per_dir, k.max_size, k.seed);
        // Doris serves small files only (1 MiB by default), whole.
        let big = pseudo_random(if name == "doris" { k.big.min(1 << 20) } else { k.big }, k.seed ^ 7);
        std::fs::write(root.join("t/d00/big.bin"), &big).unwrap();
        transport_src.push((root.join("t/d00/big.bin"), big));
        flip_src = make_tree(&root.join("f"), 1, k.flip_files, k.max_size, k.seed ^ 3);
    });
    let mut m = fx.mount();
    let pid = m.pid();
    let transport = fx.files(&m, transport_src);
    let flips = fx.files(&m, flip_src);
    let tally = Arc::new(Tally::default());
    let t0 = Instant::now();

    // 1. Transport faults + HTTP error statuses: cp -r and random-range readers together.
    fx.proxy.control.set_config(k.transport());
    fx.proxy.control.set_enabled(true);
    let stop_http = Arc::new(AtomicBool::new(false));
    let http_errors = rotate_http_errors(fx.harness.clone(), k.fail_every, stop_http.clone());
    let copy_dir = tempfile::tempdir().unwrap();
    let cp_src = if name == "huawei" {
        m.path(name)
    } else {
        m.path(&format!("{name}/t"))
    };
    let cp_done = Arc::new(AtomicBool::new(false));
    let cp_result = Arc::new(Mutex::new(None));
    let mut jobs: Vec<Box<dyn FnOnce(Beat) + Send>> = Vec::new();
    {
        let (src, dest) = (cp_src.clone(), copy_dir.path().to_path_buf());
        let (cp_done, cp_result) = (cp_done.clone(), cp_result.clone());
        // Each file may legitimately take up to one bound before its EIO; beyond that, a hang.
        let limit = BOUND * (transport.len() as u32 + 4);
        jobs.push(Box::new(move |beat: Beat| {
            // cp is bounded by its own `timeout` (reported as a hang below), so its beat
            // starts `limit` in the future and the watchdog leaves it alone.
            *beat.lock().unwrap() = Some((Instant::now() + limit, "cp -r".into()));
            *cp_result.lock().unwrap() = Some(cp_r(&src, &dest, limit));
            *beat.lock().unwrap() = None;
            cp_done.store(true, Ordering::SeqCst);
        }));
    }
    for r in 0..k.readers {
        let (files, tally, cp_done) = (transport.clone(), tally.clone(), cp_done.clone());
        let (seed, read_for, direct) = (k.seed + r as u64, k.read_for, r % 2 == 0);
        jobs.push(Box::new(move |beat: Beat| {
            let mut rng = StdRng::seed_from_u64(seed);
            let start = Instant::now();
            while start.elapsed() < read_for || !cp_done.load(Ordering::SeqCst) {
                let f = &files[rng.random_range(0..files.len())];
                if f.data.is_empty() {
                    continue;
                }
                let len = f.data.len();
                let off = if rng.random_bool(0.2) {
                    len.saturating_sub(rng.random_range(1..=len.min(200_000)))
                } else {
                    rng.random_range(0..len)
                };
                let n = rng.random_range(1..=(len - off).min(300_000));
                check_range(
                    &f.mounted,
                    off as u64,
                    &f.data[off..off + n],
                    len,
                    direct,
                    &tally,
                    &beat,
                );
            }
        }));
    }
    run_watched(&tally, jobs);
    stop_http.store(true, Ordering::SeqCst);
    let http_counts = http_errors.join().unwrap();
    let transport_counts = fx.proxy.control.counts();
    fx.proxy.control.set_enabled(false);
    if let Some((eio, other, hung)) = cp_result.lock().unwrap().take() {
        if hung {
            tally.hangs.fetch_add(1, Ordering::SeqCst);
            tally.problem("HANG: cp -r under transport faults hit its time limit".into());
        }
        for l in other {
            tally.problem(format!("cp: {l}"));
        }
        check_copy(&transport, &cp_src, copy_dir.path(), &eio, &tally);
    }
    let t_transport = t0.elapsed();

    // 2. Flips, for providers with a whole-file checksum, read by cp -r only.
    let mut failed_checksum = Vec::new();
    let mut flip_counts = ProxyCounts::default();
    if fx.checksummed && tally.hangs.load(Ordering::SeqCst) == 0 {
        fx.proxy.control.set_config(k.flips());
        fx.proxy.control.set_enabled(true);
        let before = fx.proxy.control.counts();
        let dest = tempfile::tempdir().unwrap();
        let src = m.path(&format!("{name}/f"));
        let limit = BOUND * (flips.len() as u32 + 4);
        let (eio, other, hung) = cp_r(&src, dest.path(), limit);
        fx.proxy.control.set_enabled(false);
        let after = fx.proxy.control.counts();
        flip_counts.flip = after.flip - before.flip;
        flip_counts.connections = after.connections - before.connections;
        if hung {
            tally.hangs.fetch_add(1, Ordering::SeqCst);
            tally.problem("HANG: cp -r under byte flips hit its time limit".into());
        }
        for l in other {
            tally.problem(format!("cp: {l}"));
        }
        failed_checksum = check_copy(&flips, &src, dest.path(), &eio, &tally);
        assert!(
            flip_counts.flip > 0,
            "{name}: the flip phase flipped no byte ({} connections): nothing was tested",
            flip_counts.connections
        );
        // B2 and SMH: the daemon's whole-file verifier caught each failure. (Doris's reader
        // checks the MD5 itself before yielding a byte, so its failures are Integrity errors.)
        let mismatches = m.log_text().matches("checksum mismatch").count();
        assert!(
            name == "doris" || mismatches >= failed_checksum.len(),
            "{name}: {} files failed under flips but the daemon logged {mismatches} checksum mismatches",
            failed_checksum.len()
        );
    }

    // 3. Every fault off: every file reads right again on the same mount, those that failed
    //    their checksum under flips included (a new open downloads them afresh).
    fx.harness.faults.clear();
    fx.proxy.control.set_enabled(false);
    let recovery = Arc::new(Tally::default());
    {
        let all: Vec<File> = transport.iter().chain(flips.iter()).cloned().collect();
        let (recovery2, failed_sum2) = (recovery.clone(), failed_checksum.clone());
        run_watched(
            &recovery,
            vec![Box::new(move |beat: Beat| {
                for f in &all {
                    let out = check_range(&f.mounted, 0, &f.data, f.data.len(), false, &recovery2, &beat);
                    let q = if failed_sum2.contains(&f.rel) {
                        " (failed its checksum under flips)"
                    } else {
                        ""
                    };
                    match out {
                        Outcome::Exact | Outcome::Failed => {}
                        Outcome::Eio => recovery2.problem(format!("{}: EIO with every fault off{q}", f.rel)),
                    }
                }
            })],
        );
    }
    let alive = m.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none());
    let hwm = vm_hwm_kb(pid);
    let t = &tally;
    let r = &recovery;
    println!(
        "FAULTS {name}: reads_checked={} bytes_checked={} eio={} wrong_bytes={} hangs={} max_syscall_ms={} ({}) \
         | transport[{transport_counts}] http[429={} 500={} 503={}] flips[{}] failed_checksum={} \
         | recovery reads={} wrong_bytes={} eio={} | daemon alive={alive} VmHWM={}kB | {:.1}s (transport {:.1}s)",
        t.reads.load(Ordering::Relaxed) + r.reads.load(Ordering::Relaxed),
        t.bytes.load(Ordering::Relaxed) + r.bytes.load(Ordering::Relaxed),
        t.eio.load(Ordering::Relaxed),
        t.wrong_bytes.load(Ordering::Relaxed) + r.wrong_bytes.load(Ordering::Relaxed),
        t.hangs.load(Ordering::Relaxed) + r.hangs.load(Ordering::Relaxed),
        t.max_ms.load(Ordering::Relaxed),
        t.slowest.lock().unwrap(),
        http_counts[0],
        http_counts[1],
        http_counts[2],
        flip_counts.flip,
        failed_checksum.len(),
        r.reads.load(Ordering::Relaxed),
        r.wrong_bytes.load(Ordering::Relaxed),
        r.eio.load(Ordering::Relaxed),
        hwm,
        t0.elapsed().as_secs_f64(),
        t_transport.as_secs_f64(),
    );
    // One machine-readable line for scripts/chaos.sh.
    println!(
        "FIGURES provider={name} reads={} bytes={} eio={} wrong={} hangs={} reset={} stall={} trickle={} truncate={} flip={} http429={} http500={} http503={} alive={} hwm_kb={hwm}",
        t.reads.load(Ordering::Relaxed) + r.reads.load(Ordering::Relaxed),
        t.bytes.load(Ordering::Relaxed) + r.bytes.load(Ordering::Relaxed),
        t.eio.load(Ordering::Relaxed) + r.eio.load(Ordering::Relaxed),
        t.wrong_bytes.load(Ordering::Relaxed) + r.wrong_bytes.load(Ordering::Relaxed),
        t.hangs.load(Ordering::Relaxed) + r.hangs.load(Ordering::Relaxed),
        transport_counts.reset,
        transport_counts.stall,
        transport_counts.trickle,
        transport_counts.truncate,
        flip_counts.flip,
        http_counts[0],
        http_counts[1],
        http_counts[2],
        alive as u8,
    );
    let mut problems = t.problems.lock().unwrap().clone();
    problems.extend(r.problems.lock().unwrap().iter().map(|p| format!("recovery: {p}")));
    if !alive {
        problems.push("the daemon died".into());
    }
    assert!(
        problems.is_empty(),
        "{name}: {} contract violations:\n  {}\n--- daemon log (tail) ---\n{}",
        problems.len(),
        problems.join("\n  "),
        tail(&m.log_text(), 60)
    );
    assert!(
        transport_counts.total() > 0 && http_counts.iter().sum::<u64>() > 0,
        "{name}: no fault was injected: nothing was tested"
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn http_reads_are_exact_or_eio_under_transport_faults_and_recover() {
    if can_mount() {
        run_provider("http", &Knobs::ci());
    }
}

#[test]
fn b2_reads_are_exact_or_eio_under_faults_and_flips_never_pass_silently() {
    if can_mount() {
        run_provider("b2", &Knobs::ci());
    }
}

#[test]
fn onedata_reads_are_exact_or_eio_under_transport_faults_and_recover() {
    if can_mount() {
        run_provider("onedata", &Knobs::ci());
    }
}

#[test]
fn doris_reads_are_exact_or_eio_under_faults_and_flips_never_pass_silently() {
    if can_mount() {
        run_provider("doris", &Knobs::ci());
    }
}

#[test]
fn huawei_reads_are_exact_or_eio_under_transport_faults_and_recover() {
    if can_mount() {
        run_provider("huawei", &Knobs::ci());
    }
}

#[test]
fn smh_reads_are_exact_or_eio_under_faults_and_flips_never_pass_silently() {
    if can_mount() {
        run_provider("smh", &Knobs::ci());
    }
}

/// The long form (`scripts/chaos.sh`): `CHAOS_SECONDS` (total, split between providers),
/// `CHAOS_PROVIDERS` (comma list), `CHAOS_READERS`, `CHAOS_FILES` (per directory),
/// `CHAOS_RATE` (multiplies every rate), `CHAOS_SEED`.
#[test]
#[ignore = "long: run by scripts/chaos.sh"]
fn chaos_all_providers() {
    if !can_mount() {
        return;
    }
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let providers: Vec<&'static str> = std::env::var("CHAOS_PROVIDERS")
        .unwrap_or_else(|_| "http,b2,onedata,smh,doris,huawei".into())
        .split(',')
        .filter_map(|p| {
            ["http", "b2", "onedata", "smh", "doris", "huawei"]
                .into_iter()
                .find(|q| *q == p.trim())
        })
        .collect();
    let total = env("CHAOS_SECONDS", 180);
    let knobs = Knobs {
        dirs: 4,
        files_per_dir: env("CHAOS_FILES", 10) as usize,
        max_size: 600_000,
        big: 8 << 20,
        flip_files: 20,
        readers: env("CHAOS_READERS", 8) as usize,
        // Each provider's transport phase gets its share, minus time for mount and recovery.
        read_for: Duration::from_secs((total / providers.len().max(1) as u64).saturating_sub(15).max(5)),
        rate: std::env::var("CHAOS_RATE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1.0),
        fail_every: 7,
        seed: env("CHAOS_SEED", 8),
    };
    println!("CHAOS knobs: {knobs:?}");
    // Every provider runs even when an earlier one fails; the test fails at the end.
    let mut failed = Vec::new();
    for p in providers {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_provider(p, &knobs))).is_err() {
            failed.push(p);
        }
    }
    assert!(failed.is_empty(), "contract violated for: {failed:?}");
}

/// A random-access read is served by a direct ranged GET outside the block cache; a body that
/// trickles in slowly (never silent for a whole stall timeout, so the stall timeout never
/// fires) must still fail the read with EIO within io_timeout, and the same range reads right
/// once the trickle stops. (It does; this guards the direct path, which the random readers of
/// the suite only reach now and then.)
#[test]
fn a_random_read_caught_in_a_slow_trickle_fails_with_eio_within_io_timeout() {
    if !can_mount() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let data = pseudo_random(4 << 20, 99);
    let fx = fixture("http", |root| std::fs::write(root.join("big.bin"), &data).unwrap());
    let m = fx.mount();
    let path = m.path("http/big.bin");
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap();
    fx.proxy.control.set_config(ProxyConfig {
        trickle_rate: 1.0,
        max_offset: 1,
        trickle_bytes: 4 << 20,
        trickle_delay_ms: 10,
        ..ProxyConfig::default()
    });
    fx.proxy.control.set_enabled(true);
    let off = 3 << 20;
    let mut buf = vec![0u8; 128 * 1024];
    let t = Instant::now();
    let r = f.read_at(&mut buf, off as u64);
    let took = t.elapsed();
    fx.proxy.control.set_enabled(false);
    println!(
        "random read in a trickle: {:?} after {took:?}",
        r.as_ref().map_err(|e| e.raw_os_error())
    );
    assert!(fx.proxy.control.counts().trickle > 0, "no trickle happened");
    match r {
        Err(e) => assert_eq!(e.raw_os_error(), Some(EIO), "{e}"),
        Ok(n) => assert!(
            buf[..n] == data[off..off + n],
            "wrong bytes (and the read took {took:?})"
        ),
    }
    assert!(
        took < IO_TIMEOUT + Duration::from_secs(2),
        "the read took {took:?}; io_timeout is {IO_TIMEOUT:?}\n{}",
        tail(&m.log_text(), 20)
    );
    // Once the trickle stops, the same range reads right.
    let n = f.read_at(&mut buf, off as u64).unwrap();
    assert!(n == buf.len() && buf[..] == data[off..off + n]);
}

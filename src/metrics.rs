//! Process-wide counters, cheap enough for the read path (relaxed atomics).
//!
//! The fs core, cache and HTTP helpers bump these; `fetchfs cache stats`, tests and the
//! Prometheus endpoint ([`prom`]) read them. Per-source request counts, failures, bytes and
//! latency are kept by the [`source::Metered`] decorator every mounted source is wrapped in;
//! the HTTP-level counters (requests, bytes, retries, errors) stay process-wide because the
//! shared HTTP client does not know which source it serves.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one daemon.
#[derive(Default, Debug)]
pub struct Metrics {
    pub http_requests: AtomicU64,
    pub http_bytes: AtomicU64,
    /// Body bytes handed from the socket to FUSE by splice, never copied into the daemon.
    pub spliced_bytes: AtomicU64,
    /// Body bytes a verified stream read into the daemon and hashed in file order.
    pub stream_verified_bytes: AtomicU64,
    /// Body bytes a stream read into the daemon and handed, as whole blocks, to the disk tier.
    pub stream_kept_bytes: AtomicU64,
    pub http_retries: AtomicU64,
    pub http_errors: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub cache_evictions: AtomicU64,
    pub disk_hits: AtomicU64,
    pub disk_misses: AtomicU64,
    pub disk_evictions: AtomicU64,
    /// Blocks the disk tier's writer dropped because the disk could not keep up.
    pub disk_dropped_blocks: AtomicU64,
    pub open_handles: AtomicU64,
    pub fuse_ops: AtomicU64,
    pub fuse_errors: AtomicU64,
}

impl Metrics {
    pub fn retry(&self) {
        self.http_retries.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// The daemon's metrics.
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::default)
}

pub mod prom;
pub mod source;

/// FUSE operations counted one by one (`fetchfs_fuse_operations_total{op}`): those that reach
/// the core (release, statfs, opendir and the EROFS answers are not counted). Fixed, so
/// counting is an index and an atomic add, no lock.
pub const FUSE_OPS: [&str; 9] = [
    "lookup",
    "getattr",
    "readlink",
    "open",
    "read",
    "readdir",
    "readdirplus",
    "getxattr",
    "listxattr",
];

struct OpCounters {
    ops: [AtomicU64; FUSE_OPS.len()],
    errors: [AtomicU64; FUSE_OPS.len()],
}

fn op_counters() -> &'static OpCounters {
    static C: OnceLock<OpCounters> = OnceLock::new();
    C.get_or_init(|| OpCounters {
        ops: Default::default(),
        errors: Default::default(),
    })
}

fn op_index(op: &str) -> Option<usize> {
    FUSE_OPS.iter().position(|o| *o == op)
}

/// Counts one FUSE operation `op` (one of [`FUSE_OPS`]; others are ignored).
pub fn fuse_op(op: &str) {
    if let Some(i) = op_index(op) {
        op_counters().ops[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts one failed FUSE operation `op`.
pub fn fuse_error(op: &str) {
    if let Some(i) = op_index(op) {
        op_counters().errors[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// (op, operations, failures) for every op of [`FUSE_OPS`].
pub fn fuse_op_counts() -> Vec<(&'static str, u64, u64)> {
    let c = op_counters();
    FUSE_OPS
        .iter()
        .enumerate()
        .map(|(i, op)| (*op, Metrics::get(&c.ops[i]), Metrics::get(&c.errors[i])))
        .collect()
}

/// Upper bounds (seconds) of the latency buckets: from a LAN round trip (5 ms) to the default
/// I/O timeout (45 s), roughly ×2–2.5 apart as Prometheus' defaults are.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A latency histogram of relaxed atomics (non-cumulative buckets; rendered cumulative).
#[derive(Default, Debug)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// (cumulative count per bucket bound, total count, sum in seconds).
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut acc = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(b, n)| {
                acc += n.load(Ordering::Relaxed);
                (*b, acc)
            })
            .collect();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, self.count.load(Ordering::Relaxed), sum)
    }
}

/// Source operations measured by [`source::Metered`].
pub const SOURCE_OPS: [&str; 5] = ["root", "list", "open", "read", "readlink"];

/// Requests, failures and latency of one source operation.
#[derive(Default, Debug)]
pub struct OpStats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
    pub latency: Histogram,
}

/// Per-source counters (`source` label).
#[derive(Default, Debug)]
pub struct SourceMetrics {
    /// Indexed like [`SOURCE_OPS`].
    pub ops: [OpStats; SOURCE_OPS.len()],
    /// Body bytes received (file reads and bytes fetched while opening).
    pub bytes: AtomicU64,
}

/// The counters of source `name`, created on first use.
pub fn source_metrics(name: &str) -> std::sync::Arc<SourceMetrics> {
    let mut map = sources().lock().unwrap();
    map.entry(name.to_string()).or_default().clone()
}

/// Every source's counters, by name.
pub fn all_sources() -> Vec<(String, std::sync::Arc<SourceMetrics>)> {
    sources()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

type SourceMap = std::sync::Mutex<std::collections::BTreeMap<String, std::sync::Arc<SourceMetrics>>>;

fn sources() -> &'static SourceMap {
    static S: OnceLock<SourceMap> = OnceLock::new();
    S.get_or_init(Default::default)
}

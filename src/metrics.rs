//! Process-wide counters, cheap enough for the read path (relaxed atomics).
//!
//! The fs core, cache and HTTP helpers bump these; `fetchfs cache stats`, tests and the
//! Prometheus endpoint read them.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one daemon.
#[derive(Default, Debug)]
pub struct Metrics {
    pub http_requests: AtomicU64,
    pub http_bytes: AtomicU64,
    pub http_retries: AtomicU64,
    pub http_errors: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub cache_evictions: AtomicU64,
    pub disk_hits: AtomicU64,
    pub disk_misses: AtomicU64,
    pub disk_evictions: AtomicU64,
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

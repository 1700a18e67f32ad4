//! The Prometheus endpoint: `GET /metrics` in the text exposition format (version 0.0.4),
//! served by axum on the daemon's tokio runtime when `--metrics-addr` (or `[metrics] addr`) is
//! set.
//!
//! Written by hand rather than through a client crate: every value already lives in a relaxed
//! atomic (the read path never takes a lock for metrics), so a scrape is just a walk over those
//! atomics and the format is a few lines per family.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use super::{Metrics, SOURCE_OPS, all_sources, fuse_op_counts, global};
use crate::fs::FsCore;

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value (backslash, double quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Every metric of this process (and, with `core`, of its mount) in the text format.
pub fn render(core: Option<&FsCore>) -> String {
    let g = global();
    let mut o = Out(String::with_capacity(8192));
    o.family("fetchfs_build_info", "gauge", "Version of the running fetchfs.");
    o.sample("fetchfs_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);

    // HTTP layer: process-wide (the shared client does not know which source it serves).
    o.one(
        "fetchfs_http_requests_total",
        "counter",
        "HTTP requests sent to providers (all sources).",
        Metrics::get(&g.http_requests),
    );
    o.one(
        "fetchfs_http_bytes_total",
        "counter",
        "HTTP body bytes received from providers (all sources).",
        Metrics::get(&g.http_bytes),
    );
    o.one(
        "fetchfs_read_spliced_bytes_total",
        "counter",
        "HTTP body bytes moved from the socket to FUSE replies by splice (part of fetchfs_http_bytes_total).",
        Metrics::get(&g.spliced_bytes),
    );
    o.one(
        "fetchfs_read_stream_verified_bytes_total",
        "counter",
        "HTTP body bytes of checksummed files read by a stream and hashed as they arrived (part of fetchfs_http_bytes_total).",
        Metrics::get(&g.stream_verified_bytes),
    );
    o.one(
        "fetchfs_read_stream_kept_bytes_total",
        "counter",
        "HTTP body bytes read by a stream and handed, as whole blocks, to the disk cache's writer (part of fetchfs_http_bytes_total).",
        Metrics::get(&g.stream_kept_bytes),
    );
    o.one(
        "fetchfs_http_retries_total",
        "counter",
        "Requests retried and bodies resumed after a transient failure (all sources).",
        Metrics::get(&g.http_retries),
    );
    o.one(
        "fetchfs_http_errors_total",
        "counter",
        "Block fetches that failed after their retries (all sources).",
        Metrics::get(&g.http_errors),
    );

    // Per source, from the Metered decorator.
    let sources = all_sources();
    for (metric, help, errors) in [
        (
            "fetchfs_source_requests_total",
            "Source operations (root, list, open, read, readlink) per source.",
            false,
        ),
        (
            "fetchfs_source_errors_total",
            "Source operations that failed (a read also counts a body cut mid-stream) per source.",
            true,
        ),
    ] {
        o.family(metric, "counter", help);
        for (name, m) in &sources {
            for (i, op) in SOURCE_OPS.iter().enumerate() {
                let s = &m.ops[i];
                let v = if errors { &s.errors } else { &s.requests };
                o.sample(metric, &[("source", name), ("op", op)], Metrics::get(v));
            }
        }
    }
    o.family(
        "fetchfs_source_bytes_total",
        "counter",
        "File bytes received per source.",
    );
    for (name, m) in &sources {
        o.sample(
            "fetchfs_source_bytes_total",
            &[("source", name)],
            Metrics::get(&m.bytes),
        );
    }
    let hist = "fetchfs_source_request_duration_seconds";
    o.family(
        hist,
        "histogram",
        "Latency of source operations (for reads: until the body starts) per source.",
    );
    for (name, m) in &sources {
        for (i, op) in SOURCE_OPS.iter().enumerate() {
            let (buckets, count, sum) = m.ops[i].latency.snapshot();
            for (le, n) in buckets {
                let le = le.to_string();
                o.sample(
                    &format!("{hist}_bucket"),
                    &[("source", name), ("op", op), ("le", &le)],
                    n,
                );
            }
            o.sample(
                &format!("{hist}_bucket"),
                &[("source", name), ("op", op), ("le", "+Inf")],
                count,
            );
            o.sample(&format!("{hist}_sum"), &[("source", name), ("op", op)], sum);
            o.sample(&format!("{hist}_count"), &[("source", name), ("op", op)], count);
        }
    }

    // Cache tiers.
    let tiers = [
        ("memory", &g.cache_hits, &g.cache_misses, &g.cache_evictions),
        ("disk", &g.disk_hits, &g.disk_misses, &g.disk_evictions),
    ];
    for (metric, help, pick) in [
        ("fetchfs_cache_hits_total", "Blocks served from the cache, per tier.", 0),
        (
            "fetchfs_cache_misses_total",
            "Blocks that had to be fetched, per tier.",
            1,
        ),
        (
            "fetchfs_cache_evictions_total",
            "Blocks evicted to stay within budget, per tier.",
            2,
        ),
    ] {
        o.family(metric, "counter", help);
        for (tier, h, m, e) in tiers {
            let v = [h, m, e][pick];
            o.sample(metric, &[("tier", tier)], Metrics::get(v));
        }
    }
    o.one(
        "fetchfs_cache_disk_dropped_blocks_total",
        "counter",
        "Downloaded blocks not stored on disk because the disk could not keep up.",
        Metrics::get(&g.disk_dropped_blocks),
    );
    if let Some(core) = core {
        let s = core.cache().stats();
        o.one(
            "fetchfs_cache_memory_budget_bytes",
            "gauge",
            "Byte budget of the RAM block cache plus prefetch.",
            s.budget,
        );
        o.family(
            "fetchfs_cache_memory_used_bytes",
            "gauge",
            "Bytes of the budget in use: cached blocks and reservations of fetches in flight.",
        );
        o.sample("fetchfs_cache_memory_used_bytes", &[("kind", "cached")], s.cached_bytes);
        o.sample(
            "fetchfs_cache_memory_used_bytes",
            &[("kind", "reserved")],
            s.reserved_bytes,
        );
        o.one(
            "fetchfs_cache_memory_blocks",
            "gauge",
            "Blocks held by the RAM cache.",
            s.blocks,
        );
        o.one(
            "fetchfs_inodes",
            "gauge",
            "Inodes known to the mount.",
            core.inode_count() as u64,
        );
    }
    // Tasks alive on the runtime serving this scrape (the daemon's I/O runtime): a leak of
    // spawned fetches or prefetches shows as a count that keeps growing after the load stops.
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        o.one(
            "fetchfs_runtime_alive_tasks",
            "gauge",
            "Tasks alive on the daemon's I/O runtime (the scrape's own connection included).",
            rt.metrics().num_alive_tasks() as u64,
        );
    }
    o.one(
        "fetchfs_open_handles",
        "gauge",
        "Files open through the mount.",
        Metrics::get(&g.open_handles),
    );

    // FUSE.
    let ops = fuse_op_counts();
    for (metric, help, errors) in [
        (
            "fetchfs_fuse_operations_total",
            "FUSE operations served, per op.",
            false,
        ),
        (
            "fetchfs_fuse_errors_total",
            "FUSE operations answered with an error, per op.",
            true,
        ),
    ] {
        o.family(metric, "counter", help);
        for (op, n, failed) in &ops {
            o.sample(metric, &[("op", op)], if errors { failed } else { n });
        }
    }
    o.0
}

/// Binds `addr` now (so a busy port fails the mount with a sentence) and serves `/metrics` on
/// `rt` until the runtime stops.
pub fn start(rt: &tokio::runtime::Runtime, addr: SocketAddr, core: Arc<FsCore>) -> std::io::Result<SocketAddr> {
    use axum::routing::get;
    let listener = rt.block_on(tokio::net::TcpListener::bind(addr))?;
    let local = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let core = core.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], render(Some(&core))) }
        }),
    );
    rt.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(addr = %local, "serving Prometheus metrics at /metrics");
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_tasks_of_the_serving_runtime_are_reported() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert!(
            !render(None).contains("fetchfs_runtime_alive_tasks"),
            "no runtime, no gauge"
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let text = rt.block_on(async {
            let parked = tokio::spawn(async move {
                let _ = rx.await;
            });
            let text = render(None);
            drop(tx);
            parked.await.unwrap();
            text
        });
        assert!(text.contains("# TYPE fetchfs_runtime_alive_tasks gauge"), "{text}");
        assert!(text.contains("\nfetchfs_runtime_alive_tasks 1\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn every_family_is_typed_and_samples_follow_the_format() {
        super::super::source_metrics("unit-test-src").ops[1]
            .latency
            .observe(std::time::Duration::from_millis(30));
        super::super::fuse_op("read");
        let text = render(None);
        assert!(text.contains("# TYPE fetchfs_source_request_duration_seconds histogram"));
        assert!(text.contains(
            "fetchfs_source_request_duration_seconds_bucket{source=\"unit-test-src\",op=\"list\",le=\"0.05\"} 1"
        ));
        assert!(text.contains(
            "fetchfs_source_request_duration_seconds_bucket{source=\"unit-test-src\",op=\"list\",le=\"0.025\"} 0"
        ));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let base = name.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    base.strip_suffix(s)
                        .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
                })
                .unwrap_or(base);
            assert!(text.contains(&format!("# TYPE {family} ")), "untyped: {line}");
        }
    }
}

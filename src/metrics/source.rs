//! [`Metered`]: a [`Source`] decorator that counts each operation, its failures, its latency
//! and the body bytes read, under the source's name. The mount wraps every source in it, so
//! providers know nothing of metrics.
//!
//! Latency of a read is the time until the body starts (the stream is returned), not until its
//! last byte: that is what a slow or overloaded API shows, and bytes per second are in
//! `fetchfs_source_bytes_total`.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::{OpStats, SOURCE_OPS, SourceMetrics, source_metrics};
use crate::error::Result;
use crate::source::{Entry, FileReader, OpenRequest, Opened, Source};

/// A source whose operations are measured.
pub struct Metered {
    inner: Arc<dyn Source>,
    m: Arc<SourceMetrics>,
}

impl Metered {
    /// Wraps `inner`, counting under the label `source="<name>"`.
    pub fn wrap(name: &str, inner: Arc<dyn Source>) -> Arc<dyn Source> {
        Arc::new(Metered {
            inner,
            m: source_metrics(name),
        })
    }
}

fn op<'a>(m: &'a SourceMetrics, name: &str) -> &'a OpStats {
    let i = SOURCE_OPS.iter().position(|o| *o == name).expect("a SOURCE_OPS name");
    &m.ops[i]
}

/// Awaits `fut`, counting one request of `stats`, its latency and its failure.
async fn timed<T>(stats: &OpStats, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let start = Instant::now();
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let r = fut.await;
    stats.latency.observe(start.elapsed());
    if r.is_err() {
        stats.errors.fetch_add(1, Ordering::Relaxed);
    }
    r
}

#[async_trait]
impl Source for Metered {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn root(&self) -> Result<Entry> {
        timed(op(&self.m, "root"), self.inner.root()).await
    }

    async fn list(&self, dir: &Entry) -> Result<Vec<Entry>> {
        timed(op(&self.m, "list"), self.inner.list(dir)).await
    }

    async fn open(&self, file: &Entry, req: &OpenRequest) -> Result<Opened> {
        let mut opened = timed(op(&self.m, "open"), self.inner.open(file, req)).await?;
        if let Some(p) = &opened.prefix {
            self.m.bytes.fetch_add(p.len() as u64, Ordering::Relaxed);
        }
        opened.reader = Arc::new(MeteredReader {
            inner: opened.reader,
            m: self.m.clone(),
        });
        Ok(opened)
    }

    async fn readlink(&self, link: &Entry) -> Result<String> {
        timed(op(&self.m, "readlink"), self.inner.readlink(link)).await
    }
}

struct MeteredReader {
    inner: Arc<dyn FileReader>,
    m: Arc<SourceMetrics>,
}

#[async_trait]
impl FileReader for MeteredReader {
    fn ranges(&self) -> bool {
        self.inner.ranges()
    }

    async fn raw_http(&self) -> Option<crate::splice::RawHttp> {
        let m = self.m.clone();
        self.inner.raw_http().await.map(|mut raw| {
            raw.on_bytes = Some(Arc::new(move |n| {
                m.bytes.fetch_add(n, Ordering::Relaxed);
            }));
            raw
        })
    }

    async fn read_stream(&self, range: Range<u64>) -> Result<BoxStream<'static, Result<Bytes>>> {
        let stream = timed(op(&self.m, "read"), self.inner.read_stream(range)).await?;
        let m = self.m.clone();
        Ok(stream
            .inspect(move |chunk| match chunk {
                Ok(b) => {
                    m.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                }
                // A body cut mid-stream is a failed read too (the cache resumes it).
                Err(_) => {
                    op(&m, "read").errors.fetch_add(1, Ordering::Relaxed);
                }
            })
            .boxed())
    }
}

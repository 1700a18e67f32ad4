//! An in-memory [`Source`] for tests of the core and cache: a tree of byte buffers with
//! optional checksums, a request counter, and switchable faults (a stream cut after N bytes,
//! a delay per read). Like mountpoint-s3's mock client, it lets the fs core be tested
//! without a server or a kernel.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::{Checksum, Entry, FileReader, OpenRequest, Opened, Source};
use crate::error::{Result, SourceError};

/// Faults of a [`MemSource`].
#[derive(Debug, Clone, Default)]
pub struct MemFaults {
    /// Cut the next N streams after `cut_after` bytes (a transient error).
    pub cut_streams: u64,
    pub cut_after: u64,
    /// Sleep this long before answering each read.
    pub delay: Duration,
}

/// Counters and fault switches shared by a source and its readers.
#[derive(Default)]
pub struct MemShared {
    pub faults: Mutex<MemFaults>,
    /// Streams opened (requests a real server would have seen).
    pub requests: AtomicU64,
    /// Bytes streamed.
    pub bytes: AtomicU64,
}

type MemFile = (Bytes, Option<Checksum>, u64);

/// A file tree held in memory. Paths are `/`-separated, without a leading slash.
#[derive(Default)]
pub struct MemSource {
    /// path → (bytes, checksum, version number).
    files: Mutex<BTreeMap<String, MemFile>>,
    pub shared: Arc<MemShared>,
    whole_file: bool,
}

impl MemSource {
    pub fn new() -> Arc<MemSource> {
        Arc::new(MemSource::default())
    }

    /// A source whose readers only serve whole files (like Doris and Huawei).
    pub fn whole_file() -> Arc<MemSource> {
        Arc::new(MemSource {
            whole_file: true,
            ..MemSource::default()
        })
    }

    /// Adds or replaces a file; each replacement is a new version.
    pub fn put(&self, path: &str, data: impl Into<Bytes>, checksum: Option<Checksum>) {
        let mut f = self.files.lock().unwrap();
        let version = f.get(path).map_or(1, |(_, _, v)| v + 1);
        f.insert(path.to_string(), (data.into(), checksum, version));
    }

    fn child_entries(&self, dir: &str) -> Vec<Entry> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let files = self.files.lock().unwrap();
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for (path, (data, sum, version)) in files.iter() {
            let Some(rest) = path.strip_prefix(&prefix) else {
                continue;
            };
            match rest.split_once('/') {
                Some((d, _)) => {
                    if seen.insert(d.to_string()) {
                        out.push(Entry::dir(d, format!("{prefix}{d}")));
                    }
                }
                None => {
                    let mut e = Entry::file(rest, path.clone(), data.len() as u64);
                    e.mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
                    e.validator = Some(format!("v{version}"));
                    e.checksum = sum.clone();
                    out.push(e);
                }
            }
        }
        out
    }
}

#[async_trait]
impl Source for MemSource {
    fn kind(&self) -> &'static str {
        "mem"
    }
    async fn root(&self) -> Result<Entry> {
        Ok(Entry::dir("", ""))
    }
    async fn list(&self, dir: &Entry) -> Result<Vec<Entry>> {
        Ok(self.child_entries(&dir.remote))
    }
    async fn open(&self, file: &Entry, _req: &OpenRequest) -> Result<Opened> {
        let files = self.files.lock().unwrap();
        let (data, sum, version) = files
            .get(&file.remote)
            .cloned()
            .ok_or_else(|| SourceError::NotFound(file.remote.clone()))?;
        let mut entry = file.clone();
        entry.size = data.len() as u64;
        entry.validator = Some(format!("v{version}"));
        entry.checksum = sum;
        let reader = MemReader {
            data,
            shared: self.shared.clone(),
            whole: self.whole_file,
        };
        Ok(Opened {
            reader: Arc::new(reader),
            entry,
            prefix: None,
        })
    }
}

/// Reads one version.
struct MemReader {
    data: Bytes,
    shared: Arc<MemShared>,
    whole: bool,
}

#[async_trait]
impl FileReader for MemReader {
    fn ranges(&self) -> bool {
        !self.whole
    }

    async fn read_stream(&self, range: Range<u64>) -> Result<BoxStream<'static, Result<Bytes>>> {
        let src = &self.shared;
        src.requests.fetch_add(1, Ordering::SeqCst);
        let (cut, delay) = {
            let mut f = src.faults.lock().unwrap();
            let cut = if f.cut_streams > 0 {
                f.cut_streams -= 1;
                Some(f.cut_after)
            } else {
                None
            };
            (cut, f.delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if range.end > self.data.len() as u64 {
            return Err(SourceError::Changed("range beyond the end".into()));
        }
        let body = self.data.slice(range.start as usize..range.end as usize);
        src.bytes.fetch_add(body.len() as u64, Ordering::SeqCst);
        // Deliver in 64 KiB chunks like a socket would.
        let mut chunks: Vec<Result<Bytes>> = Vec::new();
        let mut off = 0usize;
        while off < body.len() {
            let end = (off + (64 << 10)).min(body.len());
            if let Some(limit) = cut
                && end as u64 > limit
            {
                if (limit as usize) > off {
                    chunks.push(Ok(body.slice(off..limit as usize)));
                }
                chunks.push(Err(SourceError::Connect("injected reset".into())));
                break;
            }
            chunks.push(Ok(body.slice(off..end)));
            off = end;
        }
        Ok(futures_util::stream::iter(chunks).boxed())
    }
}

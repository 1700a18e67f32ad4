//! The one trait every provider implements, and the values it speaks in.
//!
//! A [`Source`] answers three questions for the filesystem core: what is at the root, what is in
//! a directory (one level, all pages), and how to read a file. Opening returns a
//! [`FileReader`] pinned to one version of the file (B2 `fileId`, SMH `history_id`, an HTTP
//! ETag sent as `If-Range`), so blocks of one open file never mix versions.
//!
//! Providers never see FUSE, inodes or the cache; they turn provider IDs and paths into
//! [`Entry`] values whose `remote` field is an opaque handle only that provider reads back.
//! Retrying transient HTTP failures happens inside the shared [`crate::http`] helpers; resuming a
//! body cut mid-stream and single-flight block fetching happen in [`crate::cache`], so each
//! provider only has to describe its API.

use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::error::Result;

pub mod mem;

/// What kind of node an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// A whole-file checksum published by the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    /// B2 `X-Bz-Content-Sha1` / `large_file_sha1`.
    Sha1([u8; 20]),
    /// SMH `x-smh-crc64`: CRC-64/XZ of the whole object.
    Crc64Xz(u64),
    /// Doris `SHOW FILE` MD5.
    Md5([u8; 16]),
}

impl Checksum {
    /// Parses 40 hex digits (a `unverified:` prefix, as b2sdk writes, is accepted and stripped).
    pub fn sha1_hex(s: &str) -> Option<Checksum> {
        let s = s.strip_prefix("unverified:").unwrap_or(s);
        let mut out = [0u8; 20];
        hex::decode_to_slice(s.trim(), &mut out).ok()?;
        Some(Checksum::Sha1(out))
    }

    /// Parses 32 hex digits.
    pub fn md5_hex(s: &str) -> Option<Checksum> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s.trim(), &mut out).ok()?;
        Some(Checksum::Md5(out))
    }

    /// The value as users see it in xattrs and logs (hex, or decimal for CRC-64 as SMH writes it).
    pub fn display(&self) -> String {
        match self {
            Checksum::Sha1(b) => hex::encode(b),
            Checksum::Md5(b) => hex::encode(b),
            Checksum::Crc64Xz(v) => v.to_string(),
        }
    }
}

/// One file, directory or symlink as a provider describes it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The name shown in the mount (one path segment). Empty for a source root. The core
    /// skips, with a warning, names that cannot be POSIX names.
    pub name: String,
    pub kind: EntryKind,
    /// Size in bytes (0 for directories).
    pub size: u64,
    pub mtime: SystemTime,
    /// Permission bits the provider reports (Onedata `posixPermissions`); the core clears the
    /// write bits. `None` means the default 0444 / 0555.
    pub mode: Option<u32>,
    /// Opaque handle the provider needs to list or open this entry again (a URL, a fileId, a
    /// path…). Also part of the cache key, so it must identify the object, not the listing.
    pub remote: String,
    /// Version key (ETag, fileId, CRC, MD5, or size+mtime). When it changes, cached blocks and
    /// kernel pages of the old version are no longer used.
    pub validator: Option<String>,
    /// Whole-file checksum, verified when a handle reads the file sequentially to EOF.
    pub checksum: Option<Checksum>,
    /// Target of a symlink.
    pub symlink_target: Option<String>,
    /// Provider metadata shown as extended attributes (`user.b2.file_id` …).
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Entry {
    /// A directory entry with defaults for everything but the name and remote handle.
    pub fn dir(name: impl Into<String>, remote: impl Into<String>) -> Entry {
        Entry {
            name: name.into(),
            kind: EntryKind::Dir,
            size: 0,
            mtime: SystemTime::UNIX_EPOCH,
            mode: None,
            remote: remote.into(),
            validator: None,
            checksum: None,
            symlink_target: None,
            xattrs: Vec::new(),
        }
    }

    /// A file entry with defaults for everything but name, remote handle and size.
    pub fn file(name: impl Into<String>, remote: impl Into<String>, size: u64) -> Entry {
        Entry {
            kind: EntryKind::File,
            size,
            ..Entry::dir(name, remote)
        }
    }

    /// Adds one `user.*` extended attribute.
    pub fn with_xattr(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Entry {
        self.xattrs.push((name.into(), value.into()));
        self
    }
}

/// Parameters of an open.
#[derive(Debug, Clone)]
pub struct OpenRequest {
    /// Block size of the cache; a source that fetches while opening (HTTP learns the ETag from
    /// the first GET) fetches at most this many bytes from offset 0 and returns them.
    pub block_size: u64,
    /// The core's metadata for this entry is older than the TTL: confirm the version remotely.
    pub revalidate: bool,
}

/// A file opened at one version.
pub struct Opened {
    /// Reads bytes of exactly the version described by `entry`.
    pub reader: Arc<dyn FileReader>,
    /// Fresh metadata of the pinned version (size, validator, checksum may have changed).
    pub entry: Entry,
    /// Bytes `[0, prefix.len())` of that version, when opening already fetched them.
    pub prefix: Option<Bytes>,
}

/// Reads byte ranges of one pinned file version.
#[async_trait]
pub trait FileReader: Send + Sync {
    /// Whether this reader serves arbitrary ranges. When false (Doris, Huawei, an HTTP server
    /// that ignores Range) the cache always asks for `0..size` and keeps every block of it.
    fn ranges(&self) -> bool {
        true
    }

    /// Streams exactly the bytes of `range` (`range.end <= size`, never empty), in order. The
    /// stream may fail part-way; the cache then asks again for the bytes still missing.
    /// A reader whose `ranges()` is false is always asked for `0..size`.
    async fn read_stream(&self, range: Range<u64>) -> Result<BoxStream<'static, Result<Bytes>>>;

    /// A plain-`http://` URL and headers from which a ranged GET returns this version's bytes
    /// as they are, for the zero-copy stream of a sequential reader (`crate::splice`). `None`
    /// (the default) when the bytes need the provider's own handling.
    async fn raw_http(&self) -> Option<crate::splice::RawHttp> {
        None
    }
}

/// A remote file tree: a provider's API mapped to entries.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// The config `type` of this source (`http`, `b2`, …), for logs and metrics.
    fn kind(&self) -> &'static str;

    /// The root directory of the source. Called when mounting, so a bad credential or an
    /// unreachable endpoint fails the mount with a clear sentence instead of a later EIO.
    async fn root(&self) -> Result<Entry>;

    /// Every entry of one directory level (all pages).
    async fn list(&self, dir: &Entry) -> Result<Vec<Entry>>;

    /// Pins a version of `file` for reading.
    async fn open(&self, file: &Entry, req: &OpenRequest) -> Result<Opened>;

    /// Reads a symlink target that the listing did not include.
    async fn readlink(&self, link: &Entry) -> Result<String> {
        link.symlink_target
            .clone()
            .ok_or_else(|| crate::error::SourceError::Invalid(format!("{} is not a symlink", link.name)))
    }
}

/// A reader with its stream collected, for callers that want one `Bytes` (tests, small files).
pub async fn read_all(reader: &dyn FileReader, range: Range<u64>) -> Result<Bytes> {
    use futures_util::StreamExt;
    if range.is_empty() {
        return Ok(Bytes::new());
    }
    let want = (range.end - range.start) as usize;
    let mut stream = reader.read_stream(range).await?;
    let mut out = bytes::BytesMut::with_capacity(want);
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    if out.len() != want {
        return Err(crate::error::SourceError::Protocol(format!(
            "expected {want} bytes, got {}",
            out.len()
        )));
    }
    Ok(out.freeze())
}

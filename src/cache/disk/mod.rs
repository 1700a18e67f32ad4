//! The persistent disk tier of the block cache.
//!
//! Blocks that fell out of (or never fit in) the memory tier are kept in a directory, one file
//! per block, so a restarted daemon or a second pass over a data set reads them locally instead of
//! downloading them again. The memory tier above calls [`DiskCache::get`] on a miss and
//! [`DiskCache::put`] after a fetch; every method is synchronous and meant for
//! `tokio::task::spawn_blocking`. `fetchfs cache stats|clear` use [`DiskCache::stats_offline`] and
//! [`DiskCache::clear`] without a running daemon.
//!
//! # Invariants
//!
//! * **Never wrong bytes.** A block file is only ever created by renaming a fully written temp
//!   file over its final name, and every read checks magic, version, header CRC, the full key,
//!   the block size, the payload length and the payload CRC ([`mod@format`]). Anything else (a torn
//!   file after a power cut, a flipped bit, a file from another version of the format) is a miss
//!   and the file is removed. Blocks are not fsynced: the checksum already turns a torn write into
//!   a miss, and an fsync per block would cost milliseconds for data that can be downloaded again.
//! * **Hard byte cap.** The bytes of all block files (header and payload, as `stat` reports their
//!   length) never exceed `cap`: puts are serialised by one writer lock, and the writer evicts and
//!   unlinks the least recently used blocks *before* it writes the new one. Files another thread
//!   is about to unlink stay counted until they are gone. Filesystem allocation rounding is not
//!   counted (under 0.4 % for 1 MiB blocks on 4 KiB filesystem blocks).
//! * **LRU that survives restarts.** The order lives in each file's mtime: a put stamps the new
//!   file, a hit stamps the file it read (`futimens` on the descriptor already open for the read,
//!   one syscall), and [`DiskCache::open`] scans the 256 fan-out directories once and rebuilds the
//!   in-memory LRU sorted by mtime. Stamps come from one strictly increasing clock, so two events
//!   in the same clock tick still keep their order. The alternative, an append-only access log,
//!   would cost a write per hit too, need compaction and still need the scan to find blocks the
//!   log missed before a crash; the filesystem is already the one source of truth. Costs,
//!   measured with `examples/disk_cache_bench.rs` on the 2-core development VM (shared with
//!   other builds, so single runs vary by 2x): a warm hit on a 1 MiB block takes about 170 µs
//!   (get medians of three runs 4.7, 5.9 and 10 GB/s for one reader, 2 GB/s at worst under a
//!   load of 15), of which the stamp is about 2 µs, open + close 3 µs and the CRC32C about 50 µs
//!   (16-27 GB/s); the scan on open takes about 10 µs per block, so about 1 s for a 100 GiB
//!   cache of 1 MiB blocks.
//! * **Bounded writing.** Puts run at the disk's write speed (on the development VM the same
//!   0.1-2 GB/s as `dd`, depending on other writers), often below download and read speeds, so
//!   every put goes through one [`DiskWriter`] thread with a bounded queue: downloads wait
//!   (bounded) for the disk rather than drop blocks, a block is dropped only when the disk is
//!   stuck or far slower (counted in [`DiskStats::dropped_puts`]), and the queue is drained at
//!   exit (see [`writer`]).
//!
//! # Writing
//!
//! Block files are written with `O_DIRECT`, from one reused 4 KiB-aligned buffer owned by the
//! writer lock (the block is copied into it, zero-padded, written, and the file cut back to
//! its length). Through the page cache, every block would be copied into fresh page-cache
//! pages: the bytes are then cached twice in RAM (the kernel already holds them in the mount's
//! own pages), and on VMs whose host takes back freed guest memory (`page_reporting`, as on
//! the bench machine) each fresh page costs a host fault on first touch.
//! * `dd` to this machine's ext4 after `drop_caches`, three 1 GiB files in a row: buffered 4.4,
//!   0.78 and 0.12 GB/s; `oflag=direct` 0.97, 2.2 and 2.4 GB/s.
//! * `scripts/bench_extra.py -r 1 -w par8,skip,warm_disk` with the tier, old and new builds
//!   alternated 3 times: par8 109–219 → 534–621 MB/s, skip 137–208 → 600–707 MB/s, warm reads
//!   after a remount 1,337–1,430 against 817–1,567 MB/s (both from the device, caches dropped).
//!
//! A filesystem that refuses `O_DIRECT` (`EINVAL`: ramfs, older tmpfs, some FUSE
//! filesystems) is written through its page cache from then on, with one log line. Hits are
//! still read through the page cache, so a block read twice is served from RAM the second time.
//!
//! # Locks
//!
//! * `DirLock` (`flock` on `<dir>/lock`) for the lifetime of the `DiskCache`: one daemon per
//!   directory.
//! * `writer` serialises puts, held across the put's file IO (never taken by `get`); it owns
//!   the aligned buffer puts are written from.
//! * `state` guards the index (LRU order, sizes, byte count); held only for map operations,
//!   never across IO. Order: `writer` before `state`.

pub mod format;
mod layout;
mod lock;
pub mod writer;

pub use format::FormatError;
pub use writer::DiskWriter;

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use lru::LruCache;

use crate::cache::BlockKey;
use crate::cache::memory::BufPool;
use crate::metrics::{self, Metrics};
use layout::{BLOCKS_DIR, BlockId, FAN_OUT, TMP_DIR, VersionId, fan_dir_name};
use lock::DirLock;

/// Why the disk tier could not be opened, inspected or cleared. Each message is one sentence
/// naming the directory or file.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("the disk cache directory {} is in use by another fetchfs daemon{}; stop it or choose another cache directory", .dir.display(), pid_note(.pid))]
    InUse { dir: PathBuf, pid: Option<u32> },
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the disk cache cap of {cap} bytes is smaller than one block of {block_size} bytes")]
    CapTooSmall { cap: u64, block_size: u64 },
    #[error("the disk cache block size must be between 1 byte and 1 GiB, not {0}")]
    BlockSize(u64),
}

fn pid_note(pid: &Option<u32>) -> String {
    pid.map(|p| format!(" (PID {p})")).unwrap_or_default()
}

impl DiskError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> DiskError {
        DiskError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Largest block size accepted: a block is read into one buffer.
const MAX_BLOCK_SIZE: u64 = 1 << 30;
/// Read buffers kept for reuse (see `DiskCache::reads`): 8 MiB of 1 MiB blocks. Part of the 64
/// MiB beside the memory budget (see `crate::cache::memory::POOLED_BUFFERS`).
const READ_BUFFERS: usize = 8;
/// At most one "write failed" warning per this interval (a full disk fails every put).
const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Counters and sizes of a cache directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Bytes of all block files (headers included).
    pub bytes: u64,
    /// Number of block files.
    pub blocks: u64,
    /// The configured cap; `None` from [`DiskCache::stats_offline`], which does not know it.
    pub cap: Option<u64>,
    /// Hits, misses and evictions of this `DiskCache` since it was opened (0 offline).
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    /// Blocks not stored because the disk writer could not keep up (see [`writer`]).
    pub dropped_puts: u64,
    /// PID of the daemon holding the directory, as far as [`DiskCache::stats_offline`] can tell.
    pub daemon_pid: Option<u32>,
}

/// The disk tier. See the module docs.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    blocks: PathBuf,
    tmp: PathBuf,
    cap: u64,
    block_size: u64,
    state: Mutex<State>,
    /// Serialises puts, and holds the aligned buffer they are written from ("Writing").
    writer: Mutex<Staging>,
    /// Buffers hits are read into, recycled once the memory tier drops the block. A fresh
    /// 1 MiB buffer per hit (glibc maps and unmaps each) cost a fifth of the daemon's CPU when
    /// reading a cached file after a remount: page faults, zeroing, unmapping (`perf`).
    reads: Arc<BufPool>,
    tmp_seq: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    dropped_puts: AtomicU64,
    /// Puts waiting for or holding `writer`.
    warn: WarnLimiter,
    _lock: DirLock,
}

#[derive(Debug)]
struct State {
    /// Every block file we know of, least recently used first, with its length.
    lru: LruCache<BlockId, u64>,
    /// Lengths of the files in `lru` plus files taken out of it but not yet unlinked.
    bytes: u64,
    /// Last stamp handed out; stamps strictly increase.
    clock: SystemTime,
}

impl State {
    fn stamp(&mut self) -> SystemTime {
        let now = SystemTime::now();
        self.clock = if now > self.clock {
            now
        } else {
            self.clock + Duration::from_nanos(1)
        };
        self.clock
    }
}

/// Why a lookup missed after finding an index entry.
enum ReadFailure {
    Io(io::Error),
    Format(FormatError),
}

impl DiskCache {
    /// Opens (creating it 0700 if needed) and locks `dir`, removes leftovers of a crash, and
    /// rebuilds the LRU from the block files' mtimes. Blocks beyond `cap` (a smaller cap than
    /// last time) are evicted at once.
    pub fn open(dir: &Path, cap_bytes: u64, block_size: u64) -> Result<DiskCache, DiskError> {
        if block_size == 0 || block_size > MAX_BLOCK_SIZE {
            return Err(DiskError::BlockSize(block_size));
        }
        if cap_bytes < block_size {
            return Err(DiskError::CapTooSmall {
                cap: cap_bytes,
                block_size,
            });
        }
        make_private_dir(dir, true)?;
        let lock = DirLock::acquire(dir)?;
        let blocks = dir.join(BLOCKS_DIR);
        let tmp = dir.join(TMP_DIR);
        make_private_dir(&tmp, false)?;
        make_private_dir(&blocks, false)?;
        for fan in 0..FAN_OUT {
            make_private_dir(&blocks.join(fan_dir_name(fan as u8)), false)?;
        }
        remove_temp_files(&tmp)?;

        let started = Instant::now();
        let mut found = Vec::new();
        scan_blocks(&blocks, true, |id, len, mtime| found.push((mtime, id, len)))?;
        found.sort_unstable_by_key(|&(mtime, ..)| mtime);
        let mut lru = LruCache::unbounded();
        let mut bytes = 0;
        let mut clock = SystemTime::UNIX_EPOCH;
        for (mtime, id, len) in found {
            lru.put(id, len);
            bytes += len;
            clock = clock.max(mtime);
        }
        tracing::debug!(dir = %dir.display(), blocks = lru.len(), bytes, elapsed = ?started.elapsed(), "disk cache opened");

        let cache = DiskCache {
            dir: dir.to_path_buf(),
            blocks,
            tmp,
            cap: cap_bytes,
            block_size,
            state: Mutex::new(State { lru, bytes, clock }),
            writer: Mutex::new(Staging::default()),
            reads: BufPool::new(READ_BUFFERS),
            tmp_seq: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            dropped_puts: AtomicU64::new(0),
            warn: WarnLimiter::default(),
            _lock: lock,
        };
        // A smaller cap than last time: evict down to it now (no writer can race yet).
        cache.evict_for(0);
        Ok(cache)
    }

    /// The directory this cache lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The block size this cache was opened with (part of every block's identity).
    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// The payload stored for `key`, or `None`. Any IO error, header, key, length or checksum
    /// mismatch is a miss; a damaged file is removed. A hit marks the block most recently used,
    /// in memory and in the file's mtime.
    pub fn get(&self, key: &BlockKey) -> Option<Bytes> {
        let id = BlockId::new(key, self.block_size);
        let found = {
            let mut st = self.state();
            st.lru.get(&id).copied().map(|len| (len, st.stamp()))
        };
        let Some((len, stamp)) = found else {
            self.count_miss();
            return None;
        };
        match self.read_block(&id, key, len, stamp) {
            Ok(payload) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Metrics::add(&metrics::global().disk_hits, 1);
                Some(payload)
            }
            Err(failure) => {
                self.count_miss();
                match failure {
                    // Out of descriptors or memory says nothing about the file: keep it.
                    ReadFailure::Io(e) if is_resource_error(&e) => {
                        tracing::debug!(block = %id.file_name(), error = %e, "disk cache read failed");
                    }
                    ReadFailure::Io(e) => {
                        if e.kind() != io::ErrorKind::NotFound {
                            tracing::warn!(block = %id.file_name(), error = %e, "disk cache read failed; dropping the block");
                        }
                        self.discard(&[id]);
                    }
                    ReadFailure::Format(e) => {
                        tracing::warn!(block = %id.file_name(), error = %e, "damaged disk cache block; dropping it");
                        self.discard(&[id]);
                    }
                }
                None
            }
        }
    }

    /// Stores `data` as the block `key` (best effort: a failure is logged, rate-limited, and
    /// otherwise ignored). Evicts least recently used blocks first so the cap is never exceeded.
    /// A block already stored is not written again.
    pub fn put(&self, key: &BlockKey, data: &[u8]) {
        self.put_parts(key, &[data]);
    }

    /// [`DiskCache::put`] of a block given in pieces, in order (a block a stream assembled from
    /// its replies): they are copied once, straight into the block's write buffer.
    pub fn put_parts(&self, key: &BlockKey, parts: &[&[u8]]) {
        if let Err(e) = self.try_put(key, parts) {
            self.warn.warn(&e);
        }
    }

    /// Counts a block the writer could not queue (the disk was too slow or stuck).
    pub fn count_dropped(&self) {
        self.dropped_puts.fetch_add(1, Ordering::Relaxed);
        Metrics::add(&metrics::global().disk_dropped_blocks, 1);
    }

    /// Drops every block of one version of one file (after it failed its checksum). A put of the
    /// same version racing with this call may re-add its block: stop writing a version first.
    pub fn remove_version(&self, source: &str, remote: &str, validator: &str) {
        let version = VersionId::new(source, remote, validator, self.block_size);
        let ids: Vec<BlockId> = {
            let st = self.state();
            st.lru
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| id.version == version)
                .collect()
        };
        self.discard(&ids);
    }

    /// The first of `blocks` (indices) of one version of one file that is stored, without
    /// marking anything used: where a stream fetching those blocks should stop.
    pub fn first_stored(&self, source: &str, remote: &str, validator: &str, blocks: Range<u64>) -> Option<u64> {
        let version = VersionId::new(source, remote, validator, self.block_size);
        let st = self.state();
        if blocks.end.saturating_sub(blocks.start) > st.lru.len() as u64 {
            // Fewer stored blocks than indices to try (a huge file, a small cache).
            return st
                .lru
                .iter()
                .filter(|(id, _)| id.version == version && blocks.contains(&id.index))
                .map(|(id, _)| id.index)
                .min();
        }
        blocks
            .into_iter()
            .find(|&index| st.lru.contains(&BlockId { version, index }))
    }

    /// Sizes and counters of this cache.
    pub fn stats(&self) -> DiskStats {
        let st = self.state();
        DiskStats {
            bytes: st.bytes,
            blocks: st.lru.len() as u64,
            cap: Some(self.cap),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            dropped_puts: self.dropped_puts.load(Ordering::Relaxed),
            daemon_pid: Some(std::process::id()),
        }
    }

    /// Sizes of the cache in `dir` without locking it (works while a daemon uses it; the figures
    /// are then a snapshot). A missing directory is an empty cache.
    pub fn stats_offline(dir: &Path) -> Result<DiskStats, DiskError> {
        let mut stats = DiskStats {
            daemon_pid: lock::holder(dir),
            ..DiskStats::default()
        };
        let blocks = dir.join(BLOCKS_DIR);
        if !blocks.is_dir() {
            return Ok(stats);
        }
        scan_blocks(&blocks, false, |_, len, _| {
            stats.blocks += 1;
            stats.bytes += len;
        })?;
        Ok(stats)
    }

    /// Removes every block and temp file in `dir` and returns the bytes freed. Refused while a
    /// daemon holds the directory. Only files this module names are removed, so pointing it at
    /// the wrong directory deletes nothing else.
    pub fn clear(dir: &Path) -> Result<u64, DiskError> {
        let (tmp, blocks) = (dir.join(TMP_DIR), dir.join(BLOCKS_DIR));
        if !tmp.is_dir() && !blocks.is_dir() {
            // Not a cache (yet): leave no lock file behind in a directory that is not ours.
            return Ok(0);
        }
        let _lock = DirLock::acquire(dir)?;
        let mut freed = 0;
        if tmp.is_dir() {
            freed += remove_temp_files(&tmp)?;
        }
        if blocks.is_dir() {
            let mut ids = Vec::new();
            scan_blocks(&blocks, false, |id, len, _| ids.push((id, len)))?;
            for (id, len) in ids {
                let path = id.path(&blocks);
                match fs::remove_file(&path) {
                    Ok(()) => freed += len,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(DiskError::io("remove", &path, e)),
                }
            }
        }
        Ok(freed)
    }

    fn try_put(&self, key: &BlockKey, parts: &[&[u8]]) -> io::Result<()> {
        let payload: usize = parts.iter().map(|p| p.len()).sum();
        if payload as u64 > self.block_size {
            return Err(io::Error::other(format!(
                "a block of {payload} bytes is larger than the block size {}",
                self.block_size
            )));
        }
        let id = BlockId::new(key, self.block_size);
        // One key always names the same bytes: a block already stored is only marked used.
        if self.state().lru.get(&id).is_some() {
            return Ok(());
        }
        let header = format::encode_header_parts(key, self.block_size, parts).map_err(io::Error::other)?;
        let len = (header.len() + payload) as u64;
        if len > self.cap {
            tracing::debug!(len, cap = self.cap, "block larger than the disk cache cap; not stored");
            return Ok(());
        }
        let mut staging = lock_unpoisoned(&self.writer);
        if !self.evict_for(len) {
            tracing::debug!(
                len,
                "no room in the disk cache while other blocks are being removed; not stored"
            );
            return Ok(());
        }
        let stamp = self.state().stamp();
        let tmp = self
            .tmp
            .join(format!("{}.tmp", self.tmp_seq.fetch_add(1, Ordering::Relaxed)));
        let written = staging
            .write_block(&tmp, &header, parts, stamp)
            .and_then(|()| fs::rename(&tmp, id.path(&self.blocks)));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let mut st = self.state();
        if let Some(old) = st.lru.put(id, len) {
            st.bytes -= old;
        }
        st.bytes += len;
        Ok(())
    }

    /// Evicts least recently used blocks until `len` more bytes fit under the cap, unlinking
    /// them before returning. `false` if they cannot fit because the remaining bytes are files
    /// other threads are still unlinking. Caller holds `writer`.
    fn evict_for(&self, len: u64) -> bool {
        let mut victims = Vec::new();
        let fits = {
            let mut st = self.state();
            let mut freed = 0;
            while st.bytes - freed + len > self.cap {
                match st.lru.pop_lru() {
                    Some((id, l)) => {
                        freed += l;
                        victims.push((id, l));
                    }
                    None => break,
                }
            }
            st.bytes - freed + len <= self.cap
        };
        if !victims.is_empty() {
            self.evictions.fetch_add(victims.len() as u64, Ordering::Relaxed);
            Metrics::add(&metrics::global().disk_evictions, victims.len() as u64);
            self.unlink(&victims);
        }
        fits
    }

    /// Takes `ids` out of the index and unlinks their files.
    fn discard(&self, ids: &[BlockId]) {
        let victims: Vec<(BlockId, u64)> = {
            let mut st = self.state();
            ids.iter().filter_map(|id| st.lru.pop(id).map(|l| (*id, l))).collect()
        };
        self.unlink(&victims);
    }

    /// Unlinks files already taken out of the index, then stops counting them.
    fn unlink(&self, victims: &[(BlockId, u64)]) {
        let mut freed = 0;
        for (id, len) in victims {
            let path = id.path(&self.blocks);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Still counted as gone: the index no longer knows it and the next open's scan
                // finds it again if it really stayed.
                Err(e) => self.warn.warn(&format!("cannot remove {}: {e}", path.display())),
            }
            freed += len;
        }
        self.state().bytes -= freed;
    }

    fn read_block(&self, id: &BlockId, key: &BlockKey, len: u64, stamp: SystemTime) -> Result<Bytes, ReadFailure> {
        let file = File::open(id.path(&self.blocks)).map_err(ReadFailure::Io)?;
        let mut buf = self.reads.take(len as usize);
        read_exact_into(&file, &mut buf, len as usize).map_err(ReadFailure::Io)?;
        let at = format::check(&buf, key, self.block_size).map_err(ReadFailure::Format)?;
        let payload = self.reads.freeze(buf).slice(at..);
        // The LRU stamp that survives a restart; failing it only makes eviction less precise.
        if let Err(e) = file.set_modified(stamp) {
            tracing::debug!(block = %id.file_name(), error = %e, "cannot stamp disk cache block");
        }
        Ok(payload)
    }

    fn count_miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
        Metrics::add(&metrics::global().disk_misses, 1);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock_unpoisoned(&self.state)
    }
}

/// A panic while holding a guard cannot leave `State` inconsistent in a way that could return
/// wrong bytes (every read is checked against its header), so poisoning is ignored.
fn lock_unpoisoned<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::EINTR)
    )
}

/// Reads exactly `len` bytes into the empty `buf` (with room for them), usually in one `read(2)`.
///
/// The buffer is filled straight from the page cache without zeroing it first: zeroing 1 MiB
/// costs 8-20 µs, 5-10 % of a whole warm hit (`examples/disk_cache_bench.rs`).
fn read_exact_into(file: &File, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
    debug_assert!(buf.is_empty() && buf.capacity() >= len);
    while buf.len() < len {
        let want = len - buf.len();
        let spare = &mut buf.spare_capacity_mut()[..want];
        // SAFETY: `spare` is writable memory owned by `buf`, and read(2) writes at most
        // `spare.len()` bytes into it.
        let n = unsafe { libc::read(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
        match n {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            n => {
                let n = (n as usize).min(want);
                // SAFETY: the kernel initialised the first `n` bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + n) };
            }
        }
    }
    Ok(())
}

/// Alignment of `O_DIRECT` writes: buffer address, length and file offset. 4096 covers devices
/// with 512-byte and 4 KiB logical blocks.
const DIRECT_ALIGN: usize = 4096;

/// How block files are written ("Writing" in the module docs): from one reused, aligned buffer
/// with `O_DIRECT`, or buffered where the filesystem refuses `O_DIRECT` (ramfs, older tmpfs, some
/// FUSE filesystems).
#[derive(Default)]
struct Staging {
    /// Over-allocated by [`DIRECT_ALIGN`]; the aligned window starts at `align_offset`.
    buf: Vec<u8>,
    /// `O_DIRECT` was refused once: every later block is written buffered.
    buffered: bool,
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging")
            .field("buf_len", &self.buf.len())
            .field("buffered", &self.buffered)
            .finish()
    }
}

impl Staging {
    /// Writes header and payload into a new 0600 temp file and stamps its mtime.
    fn write_block(&mut self, tmp: &Path, header: &[u8], parts: &[&[u8]], stamp: SystemTime) -> io::Result<()> {
        if !self.buffered {
            match self.write_direct(tmp, header, parts) {
                Ok(file) => return file.set_modified(stamp),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::info!(dir = %tmp.parent().unwrap_or(tmp).display(),
                        "the disk cache's filesystem refuses O_DIRECT; writing through its page cache");
                    self.buffered = true;
                    let _ = fs::remove_file(tmp);
                }
                Err(e) => return Err(e),
            }
        }
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(tmp)?;
        let mut bufs: Vec<IoSlice<'_>> = std::iter::once(header)
            .chain(parts.iter().copied())
            .map(IoSlice::new)
            .collect();
        let mut bufs = &mut bufs[..];
        while !bufs.is_empty() {
            match file.write_vectored(bufs) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut bufs, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        file.set_modified(stamp)
    }

    /// The block copied into the aligned buffer, zero-padded to [`DIRECT_ALIGN`], written with
    /// `O_DIRECT`, then the file cut to the block's length.
    fn write_direct(&mut self, tmp: &Path, header: &[u8], parts: &[&[u8]]) -> io::Result<File> {
        let len = header.len() + parts.iter().map(|p| p.len()).sum::<usize>();
        let padded = len.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        if self.buf.len() < padded + DIRECT_ALIGN {
            self.buf = vec![0; padded + DIRECT_ALIGN];
        }
        let at = self.buf.as_ptr().align_offset(DIRECT_ALIGN);
        let out = &mut self.buf[at..at + padded];
        out[..header.len()].copy_from_slice(header);
        let mut at = header.len();
        for p in parts {
            out[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        out[len..].fill(0);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_DIRECT)
            .open(tmp)?;
        // One write: a short one (a full disk) would leave the rest unaligned, so it fails the
        // block like any other error.
        let n = loop {
            match file.write_at(out, 0) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => break r?,
            }
        };
        if n != padded {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("wrote {n} of {padded} bytes"),
            ));
        }
        if padded > len {
            file.set_len(len as u64)?;
        }
        Ok(file)
    }
}

/// Creates `dir` 0700 if missing. For the cache root (`fix_mode`), an existing directory that
/// group or others can enter is narrowed to 0700: the blocks are the user's data.
fn make_private_dir(dir: &Path, fix_mode: bool) -> Result<(), DiskError> {
    match DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) => return Err(DiskError::io("create the directory", dir, e)),
    }
    if fix_mode {
        let meta = fs::metadata(dir).map_err(|e| DiskError::io("inspect", dir, e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| DiskError::io("restrict the permissions of", dir, e))?;
        }
    }
    Ok(())
}

/// Removes the files in `tmp/` (only a crash leaves any) and returns their bytes.
fn remove_temp_files(tmp: &Path) -> Result<u64, DiskError> {
    let mut freed = 0;
    let entries = fs::read_dir(tmp).map_err(|e| DiskError::io("read", tmp, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DiskError::io("read", tmp, e))?;
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() {
            match fs::remove_file(entry.path()) {
                Ok(()) => freed += meta.len(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(DiskError::io("remove", &entry.path(), e)),
            }
        }
    }
    Ok(freed)
}

/// Calls `found(id, length, mtime)` for every block file under `blocks/`. With `tidy`, files
/// that are not blocks or sit in the wrong fan-out directory are removed (only the lock holder
/// may tidy). Files vanishing during the scan (a running daemon evicting) are skipped.
fn scan_blocks(blocks: &Path, tidy: bool, mut found: impl FnMut(BlockId, u64, SystemTime)) -> Result<(), DiskError> {
    for fan in 0..FAN_OUT {
        let dir = blocks.join(fan_dir_name(fan as u8));
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(DiskError::io("read", &dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| DiskError::io("read", &dir, e))?;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(DiskError::io("inspect", &entry.path(), e)),
            };
            if !meta.is_file() {
                continue;
            }
            let id = entry
                .file_name()
                .to_str()
                .and_then(BlockId::parse)
                .filter(|id| usize::from(id.fan()) == fan);
            match id {
                Some(id) => found(id, meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)),
                None if tidy => {
                    tracing::debug!(path = %entry.path().display(), "removing a stray file from the disk cache");
                    let _ = fs::remove_file(entry.path());
                }
                None => {}
            }
        }
    }
    Ok(())
}

/// Logs the first failure at once and then at most one per [`WARN_INTERVAL`], with the number
/// of failures not logged in between.
#[derive(Debug, Default)]
struct WarnLimiter {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl WarnLimiter {
    fn warn(&self, err: &dyn std::fmt::Display) {
        let mut last = lock_unpoisoned(&self.last);
        if last.is_some_and(|t| t.elapsed() < WARN_INTERVAL) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(suppressed, "disk cache write failed: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways of writing a block leave the same bytes, exactly `format::encode`'s, whatever
    /// the block's length (the direct write pads to 4 KiB, then cuts the file back) and
    /// whether it comes whole or in pieces (a block a stream assembled).
    #[test]
    fn direct_and_buffered_writes_leave_the_same_exact_bytes() {
        let t = tempfile::tempdir().unwrap();
        let key = BlockKey::new("src", "dir/f.bin", "v1", 3);
        let mut direct = Staging::default();
        let mut buffered = Staging {
            buffered: true,
            ..Staging::default()
        };
        for (i, len) in [0usize, 17, 4096 - 81, 4096, 1 << 20].into_iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|j| (j * 31 + i) as u8).collect();
            let header = format::encode_header(&key, 1 << 20, &data).unwrap();
            let want = format::encode(&key, 1 << 20, &data).unwrap();
            let stamp = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i as u64);
            let (a, b) = (len / 3, len / 3 + len / 2);
            let split: [&[u8]; 4] = [&data[..a], &[], &data[a..b], &data[b..]];
            assert_eq!(
                format::encode_header_parts(&key, 1 << 20, &split).unwrap(),
                header,
                "{len} bytes in pieces"
            );
            for (how, parts) in [("whole", &[&data[..]][..]), ("split", &split[..])] {
                for (name, staging) in [("direct", &mut direct), ("buffered", &mut buffered)] {
                    let path = t.path().join(format!("{name}-{how}-{i}"));
                    staging.write_block(&path, &header, parts, stamp).unwrap();
                    assert_eq!(fs::read(&path).unwrap(), want, "{name}, {how}, {len} bytes");
                    assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), stamp, "{name}");
                    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
                }
            }
        }
        assert!(buffered.buffered);
    }
}

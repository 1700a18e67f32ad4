//! The disk tier's write-behind: one thread that stores downloaded blocks, fed through a bounded
//! queue, drained before the daemon exits.
//!
//! Before this, every downloaded block spawned its own blocking task and a block arriving while
//! 32 others waited for the disk was dropped. Measured on the 2-core VM while other builds ran:
//! after one `dd` of a 1 GiB file at about 100 MB/s, 865 MiB of it was on disk, and a read after
//! a remount made 96 data requests. Two changes close that gap:
//!
//! * **Backpressure, bounded.** [`DiskWriter::submit`] waits for a queue slot for at most
//!   [`SUBMIT_WAIT`], so a download briefly slows to the disk's pace instead of losing blocks.
//!   If a wait runs out (a stuck or very slow disk), the writer is marked congested and later
//!   blocks are dropped without waiting until it has drained half its queue: a bad disk costs
//!   at most one wait, never a crawl.
//! * **Drained on exit.** [`DiskWriter::flush`] waits (bounded) until every queued block is
//!   written; the daemon calls it after unmounting, so "read, unmount, mount again" finds the
//!   whole file on disk.
//!
//! Memory: a queued block is a `Bytes` shared with the RAM tier, so it costs nothing extra while
//! it is also cached there; at most [`QUEUE_BLOCKS`] blocks can outlive their eviction (a
//! stream's blocks are never in the RAM tier), which is part of the slack the README allows
//! beside the memory budget. A download takes its place in the queue ([`DiskWriter::slot`])
//! before it hands the block on, so a disk that falls behind holds downloads back, not blocks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::DiskCache;
use crate::cache::BlockKey;

/// Blocks that may wait for the disk: 8 MiB of 1 MiB blocks, a few milliseconds of the disk's
/// writing. The tier's 8 parallel readers ran as fast with 8 as with 32 (see docs/benchmarks.md,
/// session 8), and 32 cost up to 32 MiB beside the memory budget.
pub const QUEUE_BLOCKS: usize = 8;
/// Longest a download waits for a free slot before dropping the block.
pub const SUBMIT_WAIT: Duration = Duration::from_millis(500);

/// Blocks queued or being written, with a condition variable for [`DiskWriter::flush`].
#[derive(Default)]
struct Pending {
    count: Mutex<usize>,
    idle: Condvar,
}

/// Handle of the writer thread; dropping it lets the thread finish the queue and exit.
pub struct DiskWriter {
    tx: mpsc::Sender<(BlockKey, Vec<Bytes>)>,
    disk: Arc<DiskCache>,
    pending: Arc<Pending>,
    congested: Arc<AtomicBool>,
}

impl DiskWriter {
    /// Starts the writer thread of `disk`; `None` (logged) if no thread can be started, and
    /// then nothing is written to the disk tier.
    pub fn spawn(disk: Arc<DiskCache>) -> Option<DiskWriter> {
        let (tx, mut rx) = mpsc::channel::<(BlockKey, Vec<Bytes>)>(QUEUE_BLOCKS);
        let pending = Arc::new(Pending::default());
        let congested = Arc::new(AtomicBool::new(false));
        let (d, p, c) = (disk.clone(), pending.clone(), congested.clone());
        let spawned = std::thread::Builder::new().name("fetchfs-disk".into()).spawn(move || {
            while let Some((key, parts)) = rx.blocking_recv() {
                let slices: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
                d.put_parts(&key, &slices);
                drop(slices);
                drop(parts);
                let mut n = p.count.lock().unwrap_or_else(|e| e.into_inner());
                *n -= 1;
                if *n <= QUEUE_BLOCKS / 2 {
                    c.store(false, Ordering::Release);
                }
                if *n == 0 {
                    p.idle.notify_all();
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the disk cache writer; blocks will not be stored");
            return None;
        }
        Some(DiskWriter {
            tx,
            disk,
            pending,
            congested,
        })
    }

    /// Queues one block for the disk, waiting at most [`SUBMIT_WAIT`] for room (none while the
    /// writer is congested). Returns whether the block was queued.
    pub async fn submit(&self, key: BlockKey, data: Bytes) -> bool {
        self.slot().await.send(key, vec![data])
    }

    /// Room in the queue for one block, waited for at most [`SUBMIT_WAIT`] (not at all while
    /// the writer is congested). Taken before the block is handed to anyone else, it keeps
    /// the block counted where it was made while the disk is behind: a fetch run waits with
    /// its block still reserved in the memory budget, instead of waiting with a block the
    /// LRU may already have evicted (32 readers with a 32 MiB budget peaked at 360–530 MB RSS
    /// that way, in blocks waiting for the writer).
    pub async fn slot(&self) -> Slot<'_> {
        let permit = if self.congested.load(Ordering::Acquire) {
            self.tx.try_reserve().ok()
        } else {
            match tokio::time::timeout(SUBMIT_WAIT, self.tx.reserve()).await {
                Ok(Ok(p)) => Some(p),
                Ok(Err(_)) => None,
                Err(_) => {
                    self.congested.store(true, Ordering::Release);
                    None
                }
            }
        };
        Slot { permit, writer: self }
    }

    /// Waits until every queued block is written, for at most `limit`. Returns whether the queue
    /// drained in time.
    pub fn flush(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        let mut n = self.pending.count.lock().unwrap_or_else(|e| e.into_inner());
        while *n > 0 {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = self
                .pending
                .idle
                .wait_timeout(n, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// A place in the writer's queue (or, when the disk was too slow, none): see [`DiskWriter::slot`].
pub struct Slot<'a> {
    permit: Option<mpsc::Permit<'a, (BlockKey, Vec<Bytes>)>>,
    writer: &'a DiskWriter,
}

impl Slot<'_> {
    /// Queues the block `key`, given in pieces in order (see [`DiskCache::put_parts`]).
    /// Returns whether it was queued; without room it is dropped and counted.
    pub fn send(self, key: BlockKey, parts: Vec<Bytes>) -> bool {
        let Some(permit) = self.permit else {
            self.writer.disk.count_dropped();
            tracing::debug!(remote = %key.remote, index = key.index, "disk cache writer busy; block not stored");
            return false;
        };
        *self.writer.pending.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        permit.send((key, parts));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::disk::DiskCache;

    fn key(i: u64) -> BlockKey {
        BlockKey::new("src", "remote", "v1", i)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_submitted_block_is_on_disk_after_flush() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(DiskCache::open(dir.path(), 64 << 20, 4096).unwrap());
        let w = DiskWriter::spawn(disk.clone()).unwrap();
        for i in 0..200 {
            assert!(
                w.submit(key(i), Bytes::from(vec![i as u8; 4096])).await,
                "block {i} dropped"
            );
        }
        assert!(w.flush(Duration::from_secs(10)), "queue did not drain");
        for i in 0..200 {
            assert_eq!(
                disk.get(&key(i)).as_deref(),
                Some(&vec![i as u8; 4096][..]),
                "block {i}"
            );
        }
        assert_eq!(disk.stats().dropped_puts, 0);
    }

    // Holding the disk's writer lock across the submits is the point: it is the stuck disk.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_disk_costs_one_wait_then_drops_until_the_queue_drains() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(DiskCache::open(dir.path(), 64 << 20, 4096).unwrap());
        let w = DiskWriter::spawn(disk.clone()).unwrap();
        let block = |i: u64| Bytes::from(vec![i as u8; 4096]);
        let stuck = super::super::lock_unpoisoned(&disk.writer);
        // One block in the writer's hands (blocked on the disk) and a full queue behind it.
        let mut accepted = 0;
        for i in 0..=QUEUE_BLOCKS as u64 {
            assert!(
                w.submit(key(i), block(i)).await,
                "block {i} refused before the queue was full"
            );
            accepted += 1;
        }
        let t = Instant::now();
        assert!(!w.submit(key(100), block(100)).await, "a full queue must not take more");
        assert!(t.elapsed() >= SUBMIT_WAIT, "the first refusal waits for room");
        let t = Instant::now();
        assert!(!w.submit(key(101), block(101)).await);
        assert!(t.elapsed() < SUBMIT_WAIT / 5, "while congested, refusals do not wait");
        assert_eq!(disk.stats().dropped_puts, 2);
        drop(stuck);
        assert!(w.flush(Duration::from_secs(10)));
        assert_eq!(disk.stats().blocks, accepted);
        // Drained: blocks are taken again.
        assert!(w.submit(key(102), block(102)).await);
        assert!(w.flush(Duration::from_secs(10)));
        assert_eq!(disk.get(&key(102)).as_deref(), Some(&block(102)[..]));
    }

    #[test]
    fn flush_of_an_idle_writer_returns_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(DiskCache::open(dir.path(), 1 << 20, 4096).unwrap());
        let w = DiskWriter::spawn(disk).unwrap();
        let t = Instant::now();
        assert!(w.flush(Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}

//! How far ahead to fetch for one open handle: a small state machine.
//!
//! ```text
//!            read at the expected offset (± SEQ_SLACK)        read elsewhere
//!   Random ───────────────────────────────────────► Seq(w) ─────────────────► Random
//!     ▲  first read at offset 0 starts in Seq(INITIAL)  │ each sequential read: w = min(2w, cap)
//!     └─────────────────────────────────────────────────┘
//! ```
//!
//! * **Random** reads fetch only what the kernel asked for (see [`Plan::direct`]): a 4 KiB
//!   random read costs one 4 KiB request, so random latency stays close to one small GET
//!   (the issue's target is p50 ≤ 2× a single ranged curl), and nothing is read that no one
//!   asked for. This departs from DESIGN §2 ("random reads fetch one block"): on loopback a
//!   1 MiB block costs ~0.35 ms to transfer against ~0.08 ms for 4 KiB, which alone breaks the
//!   latency target. Re-reads are served by the kernel's page cache.
//! * **Sequential** reads go through the block cache and schedule the window ahead of the read:
//!   it starts at [`INITIAL_WINDOW`] and doubles per sequential read up to the cap, so a
//!   `head -c 100` costs one block and a `cp` of a large file reaches full speed after a few
//!   reads. The cache cuts the window into requests of several blocks and shrinks it when the
//!   memory budget is short.
//! * The kernel's readahead reorders and overlaps requests (two or more reads in flight per
//!   reader), so a read counts as sequential when it lands within [`SEQ_SLACK`] of the expected
//!   offset in either direction; only a real seek resets the window.

//!
//! ## Where the time goes (measured on the 2-core bench machine, `perf record -g` on the
//! daemon during `dd bs=1M` of a 1 GiB file from nginx on loopback)
//!
//! * Steady-state prefetch once issued one block (1 MiB) per read, because each read moved
//!   the window's end by exactly its own length: 850 requests per GiB at ~330 MB/s. Issuing
//!   prefetch in whole request-sized batches (8 MiB) cut that to 134 requests and tripled
//!   throughput.
//! * The kernel keeps several readahead READs in flight (up to `read_ahead_kb`, 4 MiB here) and
//!   answers them out of order; reads landing past the window used to become 1-block demand
//!   fetches. A sequential miss now fetches the aligned request-sized run around it (within
//!   the memory budget), and a first read near offset 0 counts as sequential.
//! * About 10 % of the daemon's CPU went to page faults on fresh 1 MiB buffers (glibc `mmap`s
//!   each); the cache now recycles block buffers (`cache::memory`).
//! * What remains is copying: kernel→user for the socket, one copy from HTTP chunks into a
//!   contiguous block, and user→kernel for the FUSE reply (`__memcpy`, `_copy_to_iter`,
//!   `fuse_copy_*` lead the profile), plus thread wake-ups between hyper, tokio and the FUSE
//!   threads. curl from the same nginx does one copy and no wake-ups.
//! * That was the ceiling of this path (0.7–0.9 daemon CPU-s per GiB, ~1.7 GB/s with `dd`
//!   and nginx on the same 2 cores). Past it, a reader whose sequential run has reached
//!   [`crate::splice::STREAM_AFTER`] is handed to a zero-copy stream (`crate::splice`) where
//!   the source allows one; the prefetcher then only plans the blocks before the stream's
//!   start, and a seek it detects closes the stream.

use std::ops::Range;

/// First window of a sequential reader: two blocks is enough for `head`/`file`/`tar` headers.
pub const INITIAL_WINDOW: u64 = 2 << 20;
/// Contiguous bytes a run must have read since a seek before it is taken for sequential.
pub const SEQ_START: u64 = 2 << 20;
/// Distance from the expected offset still treated as sequential: the kernel keeps up to its
/// readahead (4 MiB when we raise it) of requests in flight and may answer them out of order.
pub const SEQ_SLACK: u64 = 8 << 20;

/// What to do for one read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Serve this read by a direct ranged request, bypassing the block cache (random access).
    pub direct: bool,
    /// Byte range to have fetched ahead (may be empty).
    pub prefetch: Range<u64>,
    /// The current window (0 while random): how far past the read a demand fetch may reach.
    pub window: u64,
}

/// Per-handle prefetch state.
#[derive(Debug, Clone)]
pub struct Prefetcher {
    expected: Option<u64>,
    window: u64,
    max_window: u64,
    /// Largest single request: prefetch is issued in batches of this size once the window
    /// allows, never one read's worth at a time (which made 1 MiB GETs in steady state).
    batch: u64,
    /// Bytes up to which prefetch has already been requested.
    scheduled_to: u64,
    /// Bytes the current run has read (since its last seek): the window never exceeds half of
    /// it, so a reader that stops after 64 MiB wastes at most ~50 %, not 100 %. Counted read by
    /// read, not as the span from the run's start: a random reader's next read lands within
    /// SEQ_SLACK of the last one now and then (1 read in ~60 over a 1 GiB file), and by span
    /// that was a 2–8 MiB run, so `fio` random 4 KiB reads started prefetches and streams
    /// (60.8 MB fetched for 8.4 MB read).
    run_bytes: u64,
}

impl Prefetcher {
    pub fn new(max_window: u64, batch: u64) -> Prefetcher {
        Prefetcher {
            expected: None,
            window: 0,
            max_window: max_window.max(INITIAL_WINDOW),
            batch: batch.max(1),
            scheduled_to: 0,
            run_bytes: 0,
        }
    }

    /// Current window (0 while random).
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Bytes read by the current sequential run (0 while random).
    pub fn streak(&self) -> u64 {
        if self.window > 0 { self.run_bytes } else { 0 }
    }

    /// Bytes up to which prefetch has been planned.
    pub fn scheduled_to(&self) -> u64 {
        self.scheduled_to
    }

    /// Records a read of `len` bytes at `offset` of a file of `size` bytes and returns the plan.
    pub fn on_read(&mut self, offset: u64, len: u64, size: u64) -> Plan {
        let end = (offset + len).min(size);
        let sequential = match self.expected {
            // The kernel may answer the first two readahead READs in either order: a first
            // read near the start still counts as the start of a sequential read.
            None => offset <= SEQ_SLACK,
            // Behind the furthest read by up to the window is the kernel answering its own
            // readahead out of order (seen 9 MiB behind with 4 MiB readahead), not a seek:
            // taking it for one would stop a stream and drop the checksum verifier.
            Some(exp) if offset < exp => exp - offset <= SEQ_SLACK.max(self.window),
            Some(exp) => offset - exp <= SEQ_SLACK,
        };
        if sequential {
            if self.expected.is_none() {
                self.run_bytes = 0;
            }
            self.run_bytes += end.saturating_sub(offset);
            let read_so_far = self.run_bytes;
            let cap = self.max_window.min((read_so_far / 2).max(INITIAL_WINDOW));
            self.window = if self.window == 0 {
                // After a seek, a run must reach SEQ_START before it is a sequential reader:
                // a 1 MiB read the kernel splits into 512 KiB READs is still a random one.
                if self.expected.is_none() || read_so_far >= SEQ_START {
                    INITIAL_WINDOW
                } else {
                    0
                }
            } else {
                (self.window * 2).min(cap)
            };
        } else {
            self.window = 0;
            self.scheduled_to = 0;
            self.run_bytes = end.saturating_sub(offset);
        }
        // Reads out of order must not move the expectation backwards.
        self.expected = Some(match self.expected {
            Some(exp) if sequential => exp.max(end),
            _ => end,
        });
        if self.window == 0 {
            return Plan {
                direct: true,
                prefetch: 0..0,
                window: 0,
            };
        }
        let from = self.scheduled_to.max(offset);
        let target = (offset + self.window).min(size);
        let batch = self.batch.min(self.window);
        // Schedule whole batches only (or the tail of the file).
        let to = if target >= size {
            size
        } else {
            from + (target.saturating_sub(from) / batch) * batch
        };
        if to > from {
            self.scheduled_to = to;
        }
        Plan {
            direct: false,
            prefetch: from..to.max(from),
            window: self.window,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const MB: u64 = 1 << 20;

    #[test]
    fn random_reads_that_land_near_each_other_are_not_a_run() {
        // Reads within SEQ_SLACK of the last one count as sequential, but a run is the bytes it
        // read: two 4 KiB reads 7 MiB apart are 8 KiB, not a 7 MiB run.
        let mut p = Prefetcher::new(16 * MB, 4 * MB);
        p.on_read(600 * MB, 4096, 1 << 30);
        let plan = p.on_read(607 * MB, 4096, 1 << 30);
        assert!(plan.direct && plan.prefetch.is_empty(), "{plan:?}");
        assert_eq!(p.streak(), 0);
        for i in 1..20 {
            let plan = p.on_read(607 * MB + i * 3 * MB, 4096, 1 << 30);
            assert!(plan.direct, "read {i}: {plan:?}");
        }
    }

    #[test]
    fn the_streak_counts_one_sequential_run_from_its_start() {
        let mut p = Prefetcher::new(16 * MB, 4 * MB);
        for i in 0..4 {
            p.on_read(i * 512 * 1024, 512 * 1024, 1 << 30);
        }
        assert_eq!(p.streak(), 2 * MB);
        // A seek: random until the new run has read SEQ_START, counted from the seek.
        p.on_read(500 * MB, 512 * 1024, 1 << 30);
        assert_eq!(p.streak(), 0, "random");
        for i in 1..4 {
            p.on_read(500 * MB + i * 512 * 1024, 512 * 1024, 1 << 30);
        }
        assert_eq!(p.streak(), 2 * MB, "the new run, from the seek");
        p.on_read(500 * MB + 2 * MB, MB, 1 << 30);
        assert_eq!(p.streak(), 3 * MB);
    }

    #[test]
    fn sequential_reader_window_doubles_to_the_cap() {
        let mut p = Prefetcher::new(16 * MB, 4 * MB);
        let mut windows = Vec::new();
        for i in 0..8 {
            let plan = p.on_read(i * 128 * 1024, 128 * 1024, 1 << 30);
            assert!(!plan.direct);
            windows.push(p.window() / MB);
        }
        assert_eq!(
            windows,
            vec![2, 2, 2, 2, 2, 2, 2, 2],
            "capped by half the streak at first"
        );
        for i in 8..400 {
            p.on_read(i * 128 * 1024, 128 * 1024, 1 << 30);
        }
        assert_eq!(p.window(), 16 * MB, "reaches the cap once the streak is long");
    }

    #[test]
    fn prefetch_ranges_do_not_overlap() {
        let mut p = Prefetcher::new(16 * MB, 4 * MB);
        let mut last_end = 0;
        for i in 0..64 {
            let plan = p.on_read(i * 128 * 1024, 128 * 1024, 1 << 30);
            if !plan.prefetch.is_empty() {
                assert!(plan.prefetch.start >= last_end, "{plan:?} overlaps {last_end}");
                last_end = plan.prefetch.end;
            }
        }
        assert!(last_end >= 8 * MB);
    }

    #[test]
    fn steady_state_prefetch_is_issued_in_whole_batches() {
        let mut p = Prefetcher::new(64 * MB, 8 * MB);
        let mut sizes = Vec::new();
        for i in 0..200 {
            let plan = p.on_read(i * MB, MB, 1 << 30);
            if !plan.prefetch.is_empty() {
                sizes.push(plan.prefetch.end - plan.prefetch.start);
            }
        }
        assert!(sizes.iter().skip(6).all(|s| *s >= 8 * MB), "{sizes:?}");
    }

    #[test]
    fn the_first_two_reads_out_of_order_still_count_as_sequential() {
        let mut p = Prefetcher::new(64 * MB, 8 * MB);
        assert!(!p.on_read(MB, MB, 1 << 30).direct);
        assert!(!p.on_read(0, MB, 1 << 30).direct);
    }

    #[test]
    fn random_reads_are_direct_and_fetch_nothing_ahead() {
        let mut p = Prefetcher::new(64 * MB, 8 * MB);
        for off in [500 * MB, 17 * MB, 900 * MB, 3 * MB + 4096 + 20 * MB] {
            let plan = p.on_read(off, 4096, 1 << 30);
            assert!(plan.direct, "{off}");
            assert!(plan.prefetch.is_empty());
        }
    }

    #[test]
    fn small_reorders_keep_the_window_and_a_seek_resets_it() {
        let mut p = Prefetcher::new(64 * MB, 8 * MB);
        p.on_read(0, MB, 1 << 30);
        p.on_read(MB, MB, 1 << 30);
        p.on_read(3 * MB, MB, 1 << 30); // the kernel sent 3 before 2
        p.on_read(2 * MB, MB, 1 << 30);
        assert!(p.window() >= 2 * MB, "the window survived the reorder");
        let plan = p.on_read(700 * MB, MB, 1 << 30);
        assert!(plan.direct);
        assert_eq!(p.window(), 0);
        // Two reads in a row at the new place make it sequential again.
        let plan = p.on_read(701 * MB, MB, 1 << 30);
        assert!(!plan.direct);
    }

    #[test]
    fn a_reader_that_stops_wastes_at_most_about_half_of_what_it_read() {
        let mut p = Prefetcher::new(64 * MB, 8 * MB);
        let start = 256 * MB;
        let mut furthest = 0;
        for i in 0..64 {
            let plan = p.on_read(start + i * MB, MB, 1 << 30);
            furthest = furthest.max(plan.prefetch.end);
        }
        let read = 64 * MB;
        assert!(
            furthest - (start + read) <= read / 2 + 8 * MB,
            "prefetched {} past the end",
            furthest - start - read
        );
    }

    #[test]
    fn prefetch_never_passes_the_end_of_the_file() {
        let mut p = Prefetcher::new(64 * MB, 8 * MB);
        let plan = p.on_read(0, 4096, 3 * MB / 2);
        assert!(plan.prefetch.end <= 3 * MB / 2);
    }

    #[test]
    fn readahead_answered_out_of_order_within_the_window_is_still_sequential() {
        let mut p = Prefetcher::new(64 * MB, 8 * MB);
        let mut off = 0;
        while off < 40 * MB {
            assert!(!p.on_read(off, MB, 1024 * MB).direct);
            off += MB;
        }
        assert!(p.window() >= 16 * MB);
        // A READ 12 MiB behind the furthest one: late readahead, not a seek.
        assert!(!p.on_read(28 * MB, MB, 1024 * MB).direct);
        // A jump back to the start is a seek.
        assert!(p.on_read(0, MB, 1024 * MB).direct);
    }

    #[test]
    fn after_a_seek_a_run_must_read_seq_start_before_it_prefetches() {
        let mut p = Prefetcher::new(64 * MB, 8 * MB);
        let half = MB / 2;
        assert!(p.on_read(500 * MB, half, 1024 * MB).direct, "a seek");
        // The second half of a 1 MiB read the kernel split in two is still random access.
        assert!(p.on_read(500 * MB + half, half, 1024 * MB).direct);
        assert!(p.on_read(501 * MB, half, 1024 * MB).direct);
        // 2 MiB read contiguously since the seek: now a sequential reader.
        let plan = p.on_read(501 * MB + half, half, 1024 * MB);
        assert!(!plan.direct && !plan.prefetch.is_empty(), "{plan:?}");
    }
}

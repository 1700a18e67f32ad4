//! Throughput of the disk tier's `get` for warm (page-cached) 1 MiB blocks.
//!
//! `cargo run --release --example disk_cache_bench -- [MiB=512] [passes=5] [threads=1]`
//!
//! Fills a temporary cache with MiB blocks of 1 MiB, then reads them all back `passes` times
//! and prints each pass's rate and the median. Also times the parts of a hit on their own (the
//! mtime stamp that keeps the LRU order across restarts, the CRC32C, zeroing the buffer) and the
//! scan on reopen.

use std::fs::File;
use std::time::{Instant, SystemTime};

use fetchfs::cache::BlockKey;
use fetchfs::cache::disk::DiskCache;

const BLOCK: u64 = 1 << 20;

fn main() {
    if std::env::args().nth(1).as_deref() == Some("scan") {
        return scan(std::env::args().nth(2).map_or(50_000, |n| n.parse().expect("a number")));
    }
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let mib = args.first().copied().unwrap_or(512);
    let passes = args.get(1).copied().unwrap_or(5);
    let threads = args.get(2).copied().unwrap_or(1).max(1);
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("cache");
    let key = |i| BlockKey::new("bench", "some/remote/file.bin", "etag-0123456789", i);

    let cache = DiskCache::open(&dir, (mib + 1) * (BLOCK + 4096), BLOCK).expect("open");
    let payload: Vec<u8> = (0..BLOCK).map(|i| (i * 31 % 251) as u8).collect();
    let t = Instant::now();
    for i in 0..mib {
        cache.put(&key(i), &payload);
    }
    let put_s = t.elapsed().as_secs_f64();
    println!(
        "put: {mib} MiB in {put_s:.2} s = {:.2} GB/s",
        (mib * BLOCK) as f64 / put_s / 1e9
    );
    assert_eq!(cache.stats().blocks, mib);

    let mut rates = Vec::new();
    for pass in 0..passes {
        let t = Instant::now();
        std::thread::scope(|s| {
            for th in 0..threads {
                let cache = &cache;
                s.spawn(move || {
                    for i in (th..mib).step_by(threads as usize) {
                        let b = cache.get(&key(i)).expect("hit");
                        assert_eq!(b.len() as u64, BLOCK);
                    }
                });
            }
        });
        let rate = (mib * BLOCK) as f64 / t.elapsed().as_secs_f64() / 1e9;
        println!("get pass {pass}: {rate:.2} GB/s");
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "get median over {passes} passes, {threads} thread(s): {:.2} GB/s",
        rates[rates.len() / 2]
    );

    // The parts of a hit on their own.
    let files: Vec<_> = walk(&dir.join("blocks"));
    let t = Instant::now();
    for p in &files {
        std::hint::black_box(File::open(p).unwrap());
    }
    let open_us = t.elapsed().as_secs_f64() * 1e6 / files.len() as f64;
    let t = Instant::now();
    for p in &files {
        File::open(p).unwrap().set_modified(SystemTime::now()).unwrap();
    }
    let stamp_us = t.elapsed().as_secs_f64() * 1e6 / files.len() as f64 - open_us;
    println!("open + close: {open_us:.1} us per block; mtime stamp: {stamp_us:.1} us per block");
    let t = Instant::now();
    for _ in 0..mib {
        std::hint::black_box(bytes::BytesMut::zeroed(BLOCK as usize));
    }
    println!(
        "zeroed 1 MiB buffer: {:.1} us per block",
        t.elapsed().as_secs_f64() * 1e6 / mib as f64
    );
    let t = Instant::now();
    let mut x = 0;
    for _ in 0..mib {
        x ^= fetchfs::cache::disk::format::crc32c(&payload);
    }
    std::hint::black_box(x);
    println!(
        "crc32c: {:.1} GB/s",
        (mib * BLOCK) as f64 / t.elapsed().as_secs_f64() / 1e9
    );

    drop(cache);
    let t = Instant::now();
    let cache = DiskCache::open(&dir, (mib + 1) * (BLOCK + 4096), BLOCK).expect("reopen");
    println!(
        "reopen (scan of {} blocks): {:.1} ms",
        cache.stats().blocks,
        t.elapsed().as_secs_f64() * 1e3
    );
}

/// `disk_cache_bench scan N`: time of the scan on open for N (tiny) blocks.
fn scan(n: u64) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("cache");
    let cache = DiskCache::open(&dir, u64::MAX, 4096).expect("open");
    for i in 0..n {
        cache.put(&BlockKey::new("bench", "f", "v", i), b"x");
    }
    drop(cache);
    for _ in 0..3 {
        let t = Instant::now();
        let cache = DiskCache::open(&dir, u64::MAX, 4096).expect("reopen");
        let ms = t.elapsed().as_secs_f64() * 1e3;
        println!(
            "reopen with {} blocks: {ms:.0} ms ({:.1} us per block)",
            cache.stats().blocks,
            ms * 1e3 / n as f64
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for fan in std::fs::read_dir(dir).unwrap() {
        for f in std::fs::read_dir(fan.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out
}

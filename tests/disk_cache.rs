//! The disk tier of the block cache: format, cap, LRU persistence, damage, crashes, locking.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use fetchfs::cache::BlockKey;
use fetchfs::cache::disk::{DiskCache, DiskError, format};
use proptest::prelude::*;

mod common;

const BS: u64 = 4096;

fn key(i: u64) -> BlockKey {
    BlockKey::new("src", "dir/file.bin", "etag-1", i)
}

/// Deterministic content of block `i` (a block's bytes never change under one key).
fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 7 + j * 13 % 251) as u8).collect()
}

/// On-disk size of a block of `len` bytes under `key(_)`.
fn file_len(len: usize) -> u64 {
    (format::header_len(&key(0)) + len) as u64
}

/// Every regular file under `dir/blocks` and `dir/tmp`, with its length.
fn files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("blocks"), dir.join("tmp")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), m.len()));
            }
        }
    }
    out
}

fn disk_bytes(dir: &Path) -> u64 {
    files(dir).iter().map(|(_, l)| l).sum()
}

fn only_block_file(dir: &Path) -> PathBuf {
    let f = files(dir);
    assert_eq!(f.len(), 1, "{f:?}");
    f[0].0.clone()
}

fn cache_dir() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("cache");
    (t, d)
}

/// Version 1 of the block format, field by field: `src` / `dir/file.bin` / `etag-1`, block 2
/// of a cache with 16-byte blocks, payload "hello, disk tier".
const GOLDEN_V1: &[&str] = &[
    "4645544348465342",                 // magic "FETCHFSB"
    "01000000",                         // format version 1
    "51000000",                         // header length 81
    "1000000000000000",                 // block size 16
    "0200000000000000",                 // block index 2
    "1000000000000000",                 // payload length 16
    "af164217",                         // CRC32C of the payload
    "03000000",                         // source length
    "0c000000",                         // remote length
    "06000000",                         // validator length
    "737263",                           // "src"
    "6469722f66696c652e62696e",         // "dir/file.bin"
    "657461672d31",                     // "etag-1"
    "b3e0e6c0",                         // CRC32C of the 77 header bytes above
    "68656c6c6f2c206469736b2074696572", // payload
];

#[test]
fn the_block_format_is_pinned_by_golden_bytes() {
    let golden = match format::FORMAT_VERSION {
        1 => hex::decode(GOLDEN_V1.concat()).unwrap(),
        v => panic!("format version {v} has no golden bytes yet: add them next to GOLDEN_V1"),
    };
    let k = key(2);
    assert_eq!(
        format::encode(&k, 16, b"hello, disk tier").unwrap(),
        golden,
        "the format changed: bump FORMAT_VERSION"
    );
    let decoded = format::decode(BytesMut::from(&golden[..]), &k, 16).unwrap();
    assert_eq!(&decoded[..], b"hello, disk tier");
}

#[test]
fn a_block_is_read_back_exactly_after_a_restart() {
    let (_t, dir) = cache_dir();
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    c.put(&key(0), &payload(0, 4096));
    c.put(&key(1), &payload(1, 17)); // a short last block
    assert_eq!(c.get(&key(0)).unwrap(), payload(0, 4096));
    drop(c);
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    assert_eq!(c.get(&key(0)).unwrap(), payload(0, 4096));
    assert_eq!(c.get(&key(1)).unwrap(), payload(1, 17));
    let s = c.stats();
    assert_eq!(
        (s.blocks, s.bytes, s.hits, s.misses),
        (2, file_len(4096) + file_len(17), 2, 0)
    );
}

#[test]
fn a_hit_reads_into_a_recycled_buffer_and_never_shares_one_in_use() {
    // Hits used to read into a fresh buffer each (glibc maps and unmaps 1 MiB): now a dropped
    // hit's buffer takes the next, while a hit still held keeps its own bytes.
    let (_t, dir) = cache_dir();
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    for i in 0..3 {
        c.put(&key(i), &payload(i, 4096));
    }
    let first = c.get(&key(0)).unwrap();
    let at = first.as_ptr();
    drop(first);
    let second = c.get(&key(1)).unwrap();
    assert_eq!(second.as_ptr(), at, "the dropped hit's buffer is reused");
    let third = c.get(&key(2)).unwrap();
    assert_ne!(third.as_ptr(), at, "a held hit's buffer is never handed out");
    assert_eq!(second, payload(1, 4096));
    assert_eq!(third, payload(2, 4096));
}

#[test]
fn putting_a_stored_block_again_does_not_rewrite_it() {
    use std::os::unix::fs::MetadataExt;
    let (_t, dir) = cache_dir();
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    c.put(&key(0), &payload(0, 4096));
    let inode = fs::metadata(only_block_file(&dir)).unwrap().ino();
    c.put(&key(0), &payload(0, 4096));
    assert_eq!(fs::metadata(only_block_file(&dir)).unwrap().ino(), inode);
    assert_eq!(c.get(&key(0)).unwrap(), payload(0, 4096));
}

#[test]
fn another_version_index_or_source_is_a_miss() {
    let (_t, dir) = cache_dir();
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    c.put(&key(3), b"abc");
    for other in [
        BlockKey::new("src", "dir/file.bin", "etag-2", 3),
        BlockKey::new("src", "dir/file.bin", "etag-1", 4),
        BlockKey::new("other", "dir/file.bin", "etag-1", 3),
        BlockKey::new("src", "dir/file.bim", "etag-1", 3),
    ] {
        assert_eq!(c.get(&other), None, "{other:?}");
    }
    assert_eq!(c.stats().misses, 4);
    assert_eq!(c.get(&key(3)).unwrap(), &b"abc"[..]);
}

#[test]
fn a_restart_with_another_block_size_never_serves_old_blocks() {
    let (_t, dir) = cache_dir();
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    c.put(&key(1), &payload(1, 4096));
    drop(c);
    let c = DiskCache::open(&dir, 1 << 20, 2 * BS).unwrap();
    assert_eq!(c.get(&key(1)), None);
}

#[test]
fn the_least_recently_used_block_is_evicted_first() {
    let (_t, dir) = cache_dir();
    let c = DiskCache::open(&dir, 3 * file_len(4096), BS).unwrap();
    for i in 0..3 {
        c.put(&key(i), &payload(i, 4096));
    }
    assert!(c.get(&key(0)).is_some());
    c.put(&key(3), &payload(3, 4096));
    assert_eq!(c.get(&key(1)), None, "block 1 was the least recently used");
    for i in [0, 2, 3] {
        assert_eq!(c.get(&key(i)).unwrap(), payload(i, 4096));
    }
    assert_eq!(c.stats().evictions, 1);
}

#[test]
fn lru_order_survives_a_restart() {
    let (_t, dir) = cache_dir();
    let cap = 4 * file_len(4096);
    let c = DiskCache::open(&dir, cap, BS).unwrap();
    for i in 0..4 {
        c.put(&key(i), &payload(i, 4096));
    }
    // Use order now: 1, 3, 0, 2 (oldest first).
    for i in [0, 2] {
        assert!(c.get(&key(i)).is_some());
    }
    drop(c);
    let c = DiskCache::open(&dir, cap, BS).unwrap();
    c.put(&key(10), &payload(10, 4096));
    c.put(&key(11), &payload(11, 4096));
    let present: Vec<u64> = [0, 1, 2, 3].into_iter().filter(|&i| c.get(&key(i)).is_some()).collect();
    assert_eq!(
        present,
        vec![0, 2],
        "blocks 1 and 3 were the least recently used before the restart"
    );
}

#[test]
fn a_smaller_cap_on_reopen_evicts_the_oldest_blocks_at_once() {
    let (_t, dir) = cache_dir();
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    for i in 0..6 {
        c.put(&key(i), &payload(i, 4096));
    }
    drop(c);
    let c = DiskCache::open(&dir, 2 * file_len(4096), BS).unwrap();
    assert_eq!(c.stats().blocks, 2);
    assert!(disk_bytes(&dir) <= 2 * file_len(4096));
    assert!(c.get(&key(4)).is_some() && c.get(&key(5)).is_some());
}

#[test]
fn a_block_larger_than_the_block_size_is_not_stored() {
    let (_t, dir) = cache_dir();
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    c.put(&key(0), &payload(0, BS as usize + 1));
    assert_eq!(c.get(&key(0)), None);
    assert_eq!(disk_bytes(&dir), 0);
}

#[test]
fn remove_version_drops_every_block_of_that_version_only() {
    let (_t, dir) = cache_dir();
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    let other = |i| BlockKey::new("src", "dir/file.bin", "etag-2", i);
    for i in 0..5 {
        c.put(&key(i), &payload(i, 100));
        c.put(&other(i), &payload(i, 100));
    }
    c.remove_version("src", "dir/file.bin", "etag-1");
    for i in 0..5 {
        assert_eq!(c.get(&key(i)), None);
        assert_eq!(c.get(&other(i)).unwrap(), payload(i, 100));
    }
    assert_eq!(c.stats().blocks, 5);
    assert_eq!(disk_bytes(&dir), 5 * file_len(100));
}

/// Damages the only block file with `damage`, then expects a miss that removes it.
fn damaged_block_is_a_miss(damage: impl FnOnce(&Path)) {
    let (_t, dir) = cache_dir();
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    c.put(&key(0), &payload(0, 4096));
    let path = only_block_file(&dir);
    damage(&path);
    assert_eq!(c.get(&key(0)), None);
    assert!(!path.exists(), "the damaged file is removed");
    assert_eq!(c.stats().misses, 1);
    assert_eq!((c.stats().blocks, c.stats().bytes), (0, 0));
    c.put(&key(0), &payload(0, 4096));
    assert_eq!(
        c.get(&key(0)).unwrap(),
        payload(0, 4096),
        "the block can be stored again"
    );
}

fn flip(path: &Path, at: usize) {
    let mut b = fs::read(path).unwrap();
    b[at] ^= 0x40;
    fs::write(path, b).unwrap();
}

#[test]
fn a_corrupted_header_is_a_miss_and_the_file_is_removed() {
    damaged_block_is_a_miss(|p| flip(p, 30));
}

#[test]
fn a_corrupted_key_in_the_header_is_a_miss() {
    damaged_block_is_a_miss(|p| flip(p, 57));
}

#[test]
fn a_corrupted_payload_is_a_miss_and_the_file_is_removed() {
    damaged_block_is_a_miss(|p| flip(p, format::header_len(&key(0)) + 1000));
}

#[test]
fn a_truncated_block_is_a_miss() {
    damaged_block_is_a_miss(|p| {
        let f = fs::OpenOptions::new().write(true).open(p).unwrap();
        f.set_len(2000).unwrap();
    });
}

#[test]
fn another_blocks_file_under_this_blocks_name_is_a_miss() {
    damaged_block_is_a_miss(|p| {
        let other = format::encode(&key(9), BS, &payload(0, 4096)).unwrap();
        fs::write(p, other).unwrap();
    });
}

#[test]
fn a_deleted_block_file_is_a_miss_and_leaves_the_index() {
    damaged_block_is_a_miss(|p| fs::remove_file(p).unwrap());
}

#[test]
fn leftover_temp_files_and_stray_files_are_removed_on_open() {
    let (_t, dir) = cache_dir();
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    c.put(&key(0), &payload(0, 4096));
    let good = only_block_file(&dir);
    drop(c);
    // What a crash mid-put leaves: a half-written temp file.
    fs::write(
        dir.join("tmp/17.tmp"),
        &format::encode(&key(1), BS, &payload(1, 4096)).unwrap()[..100],
    )
    .unwrap();
    // Files that are no block: a foreign name, and a valid name in the wrong fan-out directory.
    let fan = good.parent().unwrap();
    fs::write(fan.join("notes.txt"), b"x").unwrap();
    let wrong_fan = dir.join("blocks").join(if fan.ends_with("00") { "01" } else { "00" });
    fs::copy(&good, wrong_fan.join(good.file_name().unwrap())).unwrap();

    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    assert_eq!(files(&dir), vec![(good, file_len(4096))]);
    assert_eq!(c.get(&key(0)).unwrap(), payload(0, 4096));
    assert_eq!(c.get(&key(1)), None);
}

#[test]
fn a_half_written_block_under_a_final_name_is_a_miss_after_restart() {
    // A power cut after rename but before writeback can leave a short or zeroed file.
    let (_t, dir) = cache_dir();
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    c.put(&key(0), &payload(0, 4096));
    c.put(&key(1), &payload(1, 4096));
    drop(c);
    let mut fs_ = files(&dir);
    fs_.sort();
    let f = fs::OpenOptions::new().write(true).open(&fs_[0].0).unwrap();
    f.set_len(1000).unwrap();
    fs::write(&fs_[1].0, vec![0u8; 4096 + 100]).unwrap();
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    assert_eq!(c.get(&key(0)), None);
    assert_eq!(c.get(&key(1)), None);
    assert_eq!(disk_bytes(&dir), 0);
}

#[test]
fn a_second_open_of_a_locked_directory_fails_naming_the_directory_and_pid() {
    let (_t, dir) = cache_dir();
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    let err = DiskCache::open(&dir, 1 << 20, BS).unwrap_err();
    assert!(
        matches!(err, DiskError::InUse { pid: Some(p), .. } if p == std::process::id()),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "the disk cache directory {} is in use by another fetchfs daemon (PID {}); stop it or choose another cache directory",
            dir.display(),
            std::process::id()
        )
    );
    drop(c);
    DiskCache::open(&dir, 1 << 20, BS).expect("the lock is released with the cache");
}

#[test]
fn directories_are_0700_and_block_files_0600() {
    let (_t, dir) = cache_dir();
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    c.put(&key(0), b"secret");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "an existing directory is narrowed");
    assert_eq!(mode(&dir.join("blocks")), 0o700);
    assert_eq!(mode(&dir.join("tmp")), 0o700);
    let block = only_block_file(&dir);
    assert_eq!(mode(block.parent().unwrap()), 0o700);
    assert_eq!(mode(&block), 0o600);
    assert_eq!(mode(&dir.join("lock")), 0o600);
}

#[test]
fn a_cap_below_one_block_is_refused() {
    let (_t, dir) = cache_dir();
    let err = DiskCache::open(&dir, 100, BS).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the disk cache cap of 100 bytes is smaller than one block of 4096 bytes"
    );
}

#[test]
fn stats_offline_works_with_and_without_a_daemon() {
    let (_t, dir) = cache_dir();
    assert_eq!(
        DiskCache::stats_offline(&dir).unwrap().bytes,
        0,
        "no directory is an empty cache"
    );
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    for i in 0..3 {
        c.put(&key(i), &payload(i, 1000));
    }
    let live = DiskCache::stats_offline(&dir).unwrap();
    assert_eq!((live.blocks, live.bytes, live.cap), (3, 3 * file_len(1000), None));
    assert_eq!(live.daemon_pid, Some(std::process::id()));
    drop(c);
    let off = DiskCache::stats_offline(&dir).unwrap();
    assert_eq!((off.blocks, off.bytes, off.daemon_pid), (3, 3 * file_len(1000), None));
}

#[test]
fn clear_is_refused_while_a_daemon_holds_the_directory_and_frees_everything_after() {
    let (_t, dir) = cache_dir();
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    for i in 0..3 {
        c.put(&key(i), &payload(i, 1000));
    }
    let err = DiskCache::clear(&dir).unwrap_err();
    assert!(err.to_string().contains("is in use by another fetchfs daemon"), "{err}");
    assert_eq!(disk_bytes(&dir), 3 * file_len(1000));
    drop(c);
    fs::write(dir.join("tmp/3.tmp"), b"12345").unwrap();
    fs::write(dir.join("keep-me"), b"not ours").unwrap();
    assert_eq!(DiskCache::clear(&dir).unwrap(), 3 * file_len(1000) + 5);
    assert_eq!(disk_bytes(&dir), 0);
    assert!(dir.join("keep-me").exists(), "clear removes only cache files");
    assert_eq!(DiskCache::stats_offline(&dir).unwrap().blocks, 0);
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    assert_eq!(c.get(&key(0)), None);
}

#[test]
fn clear_of_a_directory_that_is_no_cache_touches_nothing() {
    let t = tempfile::tempdir().unwrap();
    fs::write(t.path().join("precious"), b"data").unwrap();
    assert_eq!(DiskCache::clear(t.path()).unwrap(), 0);
    let names: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec!["precious"]);
}

#[test]
fn concurrent_puts_and_gets_return_exact_bytes_and_respect_the_cap() {
    let (_t, dir) = cache_dir();
    let cap = 10 * file_len(4096);
    let c = DiskCache::open(&dir, cap, BS).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let c = &c;
            s.spawn(move || {
                for n in 0..300u64 {
                    let i = (n * 7 + t * 3) % 25;
                    let len = 1 + (i as usize * 397) % 4096;
                    if n % 3 == 0 {
                        c.put(&key(i), &payload(i, len));
                    } else if let Some(b) = c.get(&key(i)) {
                        assert_eq!(b, payload(i, len));
                    }
                    // A walk of the directory while others write can see a file twice (in
                    // tmp/, then renamed): check the accounting here and the files at rest.
                    assert!(c.stats().bytes <= cap);
                }
            });
        }
    });
    assert!(disk_bytes(&dir) <= cap);
    assert_eq!(c.stats().bytes, disk_bytes(&dir));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_cap_is_never_exceeded_under_random_puts(
        cap_blocks in 1u64..6,
        ops in prop::collection::vec((0u64..12, 0usize..=4096, any::<bool>()), 1..40),
    ) {
        let (_t, dir) = cache_dir();
        let cap = cap_blocks * file_len(4096);
        let c = DiskCache::open(&dir, cap, BS).unwrap();
        let mut lens = HashMap::new();
        for (i, len, read) in ops {
            // One key always has one content: its length is fixed by the first put.
            let len = *lens.entry(i).or_insert(len);
            if read {
                if let Some(b) = c.get(&key(i)) {
                    prop_assert_eq!(b, payload(i, len));
                }
            } else {
                c.put(&key(i), &payload(i, len));
                prop_assert!(c.get(&key(i)).is_some(), "a block that fits is stored");
                // Only puts add bytes, so checking after each put covers every state.
                let on_disk = disk_bytes(&dir);
                prop_assert!(on_disk <= cap, "{} bytes on disk, cap {}", on_disk, cap);
                prop_assert_eq!(c.stats().bytes, on_disk);
            }
        }
        let before = c.stats();
        drop(c);
        let c = DiskCache::open(&dir, cap, BS).unwrap();
        prop_assert_eq!((c.stats().blocks, c.stats().bytes), (before.blocks, before.bytes));
    }
}

const CRASH_ENV: &str = "FETCHFS_DISK_CRASH_DIR";
const CRASH_BS: u64 = 64 * 1024;
const CRASH_KEYS: u64 = 64;

fn crash_payload(i: u64) -> Vec<u8> {
    let len = if i % 5 == 4 {
        1 + (i as usize * 977) % CRASH_BS as usize
    } else {
        CRASH_BS as usize
    };
    payload(i, len)
}

/// Child half of `a_daemon_killed_mid_put_never_leaves_wrong_bytes`: puts and reads blocks in a
/// loop until it is killed. Does nothing when run on its own.
#[test]
#[ignore = "run by a_daemon_killed_mid_put_never_leaves_wrong_bytes in a child process"]
fn crash_child_put_loop() {
    let Some(dir) = std::env::var_os(CRASH_ENV) else { return };
    let c = DiskCache::open(Path::new(&dir), 16 * (CRASH_BS + 200), CRASH_BS).unwrap();
    for n in 0u64.. {
        let i = (n * 13) % CRASH_KEYS;
        c.put(&key(i), &crash_payload(i));
        if n % 3 == 0 {
            c.get(&key((n * 7) % CRASH_KEYS));
        }
    }
}

#[test]
fn a_daemon_killed_mid_put_never_leaves_wrong_bytes() {
    let (_t, dir) = cache_dir();
    for round in 0..8u64 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "crash_child_put_loop", "--test-threads=1"])
            .env(CRASH_ENV, &dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait until it holds the directory and has written, then kill it at a different moment
        // each round.
        let started = Instant::now();
        loop {
            let s = DiskCache::stats_offline(&dir).unwrap();
            if s.daemon_pid == Some(child.id()) && s.blocks >= 8 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "the child never wrote");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Another process holds the directory: a second daemon is refused, naming it.
        match DiskCache::open(&dir, 16 * (CRASH_BS + 200), CRASH_BS) {
            Err(DiskError::InUse { pid, .. }) => assert_eq!(pid, Some(child.id())),
            other => panic!("a second daemon was not refused: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(5 + 23 * round));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let leftovers = files(&dir)
            .iter()
            .filter(|(p, _)| p.starts_with(dir.join("tmp")))
            .count();
        eprintln!("round {round}: {leftovers} temp file(s) left by the kill");

        let c = DiskCache::open(&dir, 16 * (CRASH_BS + 200), CRASH_BS).unwrap();
        assert!(
            files(&dir).iter().all(|(p, _)| !p.starts_with(dir.join("tmp"))),
            "temp files are cleaned"
        );
        assert!(disk_bytes(&dir) <= 16 * (CRASH_BS + 200));
        let mut hits = 0;
        for i in 0..CRASH_KEYS {
            if let Some(b) = c.get(&key(i)) {
                assert_eq!(b, crash_payload(i), "block {i} after kill round {round}");
                hits += 1;
            }
        }
        assert!(hits > 0, "blocks written before the kill survive");
    }
}

/// A ramfs mounted for one test, unmounted when dropped (also when the test panics).
struct RamFs(PathBuf);

impl RamFs {
    fn mount(at: &Path) -> RamFs {
        fs::create_dir_all(at).unwrap();
        let (ok, _, err) = common::sh(
            &format!("mount -t ramfs ramfs '{}'", at.display()),
            Duration::from_secs(10),
        );
        assert!(ok, "mount -t ramfs: {err}");
        RamFs(at.to_path_buf())
    }
}

impl Drop for RamFs {
    fn drop(&mut self) {
        let _ = common::sh(&format!("umount '{}'", self.0.display()), Duration::from_secs(10));
    }
}

/// Blocks are written with O_DIRECT; a filesystem that refuses it (ramfs) still gets every
/// block, written through its page cache, and they read back exactly after a restart.
#[test]
fn a_filesystem_that_refuses_o_direct_still_stores_every_block() {
    if !common::can_mount() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let ram = RamFs::mount(&t.path().join("ram"));
    // Without the refusal this test would prove nothing.
    use std::os::unix::fs::OpenOptionsExt;
    let probe = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .custom_flags(libc::O_DIRECT)
        .open(ram.0.join("probe"));
    assert_eq!(
        probe.err().and_then(|e| e.raw_os_error()),
        Some(libc::EINVAL),
        "ramfs accepted O_DIRECT: this test needs another filesystem that refuses it"
    );
    let dir = ram.0.join("cache");
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    for i in 0..4 {
        c.put(&key(i), &payload(i, 4096));
    }
    c.put(&key(4), &payload(4, 17));
    drop(c);
    let c = DiskCache::open(&dir, 1 << 20, BS).unwrap();
    for i in 0..4 {
        assert_eq!(c.get(&key(i)).unwrap(), payload(i, 4096), "block {i}");
    }
    assert_eq!(c.get(&key(4)).unwrap(), payload(4, 17));
    assert_eq!(c.stats().bytes, 4 * file_len(4096) + file_len(17));
    drop(c);
    drop(ram);
}

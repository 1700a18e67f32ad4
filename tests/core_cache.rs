//! The fs core, block cache and prefetcher against the in-memory source: exact bytes for any
//! read pattern, resumed streams, checksum failures, the memory budget, whole-file sources.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::pseudo_random;
use fetchfs::fs::{CoreConfig, FsCore, FsError, Mounted};
use fetchfs::source::mem::{MemFaults, MemSource};
use fetchfs::source::{Checksum, Entry, Source};
use proptest::prelude::*;

const MB: u64 = 1 << 20;

fn cfg(memory: u64) -> CoreConfig {
    CoreConfig {
        ttl: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(5),
        uid: 0,
        gid: 0,
        file_mode: 0o444,
        dir_mode: 0o555,
        block_size: MB,
        memory,
        max_window: 16 * MB,
        max_request: 4 * MB,
        io_timeout: Duration::from_secs(10),
        splice: false,
    }
}

fn core_over(src: Arc<MemSource>, memory: u64) -> Arc<FsCore> {
    let s: Arc<dyn Source> = src;
    FsCore::new(
        cfg(memory),
        vec![Mounted {
            name: "m".into(),
            source: s,
            root: Entry::dir("", ""),
        }],
        true,
    )
}

async fn ino(core: &FsCore, name: &str) -> u64 {
    core.lookup(1, name).await.unwrap().ino
}

async fn read_all(core: &Arc<FsCore>, fh: u64, chunk: u32) -> Result<Vec<u8>, FsError> {
    let mut out = Vec::new();
    loop {
        let b = core.read(fh, out.len() as u64, chunk).await?;
        if b.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&b);
    }
}

fn sha1(data: &[u8]) -> Checksum {
    use sha1::Digest;
    Checksum::Sha1(sha1::Sha1::digest(data).into())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    /// Any sequence of (offset, length) reads through the cache and prefetcher returns exactly
    /// the source's bytes, whatever mix of sequential and random access it makes.
    #[test]
    fn random_reads_equal_the_source_bytes(
        size in 0u64..(9 * MB),
        reads in proptest::collection::vec((0u64..(10 * MB), 1u32..(3 * MB as u32)), 1..40),
        memory_blocks in 8u64..40,
    ) {
        let rt = rt();
        rt.block_on(async {
            let src = MemSource::new();
            let data = pseudo_random(size as usize, size ^ 77);
            src.put("f", data.clone(), None);
            let core = core_over(src, memory_blocks * MB);
            let (fh, _) = core.open(ino(&core, "f").await).await.unwrap();
            for (off, len) in reads {
                let got = core.read(fh, off, len).await.unwrap();
                let s = (off as usize).min(data.len());
                let e = ((off + len as u64) as usize).min(data.len());
                prop_assert_eq!(&got[..], &data[s..e], "read at {} len {}", off, len);
            }
            Ok(())
        })?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_read_survives_connection_resets_mid_block() {
    let src = MemSource::new();
    let data = pseudo_random((20 * MB + 333) as usize, 3);
    src.put("f", data.clone(), Some(sha1(&data)));
    *src.shared.faults.lock().unwrap() = MemFaults {
        cut_streams: 4,
        cut_after: 300_000,
        ..Default::default()
    };
    let core = core_over(src.clone(), 64 * MB);
    let (fh, _) = core.open(ino(&core, "f").await).await.unwrap();
    let got = read_all(&core, fh, 128 << 10).await.unwrap();
    assert!(got == data, "bytes differ");
    assert!(
        src.shared.requests.load(Ordering::SeqCst) > 4,
        "resumes made new requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_checksum_fails_the_last_read_and_a_new_open_verifies_afresh() {
    let src = MemSource::new();
    let data = pseudo_random((5 * MB + 10) as usize, 4);
    let mut wrong = data.clone();
    wrong[0] ^= 1;
    src.put("f", data.clone(), Some(sha1(&wrong)));
    let core = core_over(src.clone(), 64 * MB);
    let i = ino(&core, "f").await;
    let (fh, _) = core.open(i).await.unwrap();
    let err = read_all(&core, fh, 128 << 10).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    // The bytes before EOF were served; the last read failed, and the handle that saw the
    // mismatch keeps failing.
    let err = core.read(fh, 0, 4096).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    assert_eq!(
        core.cache().stats().cached_bytes,
        0,
        "blocks of the bad version were dropped"
    );
    // A new open downloads afresh (a one-off corruption on the wire would heal here); the
    // object is still corrupt at its origin, so its EOF fails again, and no page is kept.
    let before = src.shared.requests.load(Ordering::SeqCst);
    let (fh2, keep) = core.open(i).await.unwrap();
    assert!(!keep, "pages of a bad version must not be kept");
    assert!(core.read(fh2, 0, 4096).await.unwrap() == data[..4096]);
    assert!(src.shared.requests.load(Ordering::SeqCst) > before, "downloaded again");
    let err = read_all(&core, fh2, 128 << 10).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    // A new version with a correct checksum reads fine.
    src.put("f", data.clone(), Some(sha1(&data)));
    let (fh3, _) = core.open(i).await.unwrap();
    assert!(read_all(&core, fh3, 1 << 20).await.unwrap() == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_checksum_verifies_with_reads_out_of_order() {
    let src = MemSource::new();
    let data = pseudo_random((3 * MB + 5) as usize, 5);
    src.put("f", data.clone(), Some(sha1(&data)));
    let core = core_over(src, 64 * MB);
    let (fh, _) = core.open(ino(&core, "f").await).await.unwrap();
    // The kernel answers readahead out of order: 0, then 256K, then 128K, ...
    let order = [0u64, 2, 1, 3, 5, 4, 6, 8, 7, 9];
    let chunk = 128 << 10;
    for i in order {
        core.read(fh, i * chunk, chunk as u32).await.unwrap();
    }
    let mut off = 10 * chunk;
    loop {
        let b = core.read(fh, off, chunk as u32).await.unwrap();
        if b.is_empty() {
            break;
        }
        off += b.len() as u64;
    }
    assert_eq!(off, data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_looks_like_a_seek_keeps_the_checksum_unless_it_jumps_past_the_gap() {
    let src = MemSource::new();
    let data = pseudo_random((48 * MB) as usize, 6);
    let mut wrong = data.clone();
    wrong[7] ^= 1;
    src.put("f", data.clone(), Some(sha1(&wrong)));
    let core = core_over(src, 96 * MB);
    let i = ino(&core, "f").await;
    let from = |core: &Arc<FsCore>, fh: u64, mut off: u64| {
        let core = core.clone();
        async move {
            loop {
                let b = core.read(fh, off, MB as u32).await?;
                if b.is_empty() {
                    return Ok::<(), FsError>(());
                }
                off += b.len() as u64;
            }
        }
    };
    // A READ 20 MiB ahead (what a loaded machine's reordered readahead can look like) is
    // served as random access, yet the checksum still runs: the gap is filled from the cache
    // and the read that ends the file fails.
    let (fh, _) = core.open(i).await.unwrap();
    core.read(fh, 0, MB as u32).await.unwrap();
    core.read(fh, 20 * MB, MB as u32).await.unwrap();
    let err = from(&core, fh, MB).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    // A jump further than the gap bound is a real seek: that handle checks nothing.
    let (fh, _) = core.open(i).await.unwrap();
    core.read(fh, 0, MB as u32).await.unwrap();
    from(&core, fh, 40 * MB).await.unwrap();
    // Nor does a handle whose first read was random: it never fetches a gap to hash.
    let (fh, _) = core.open(i).await.unwrap();
    core.read(fh, 12 * MB, MB as u32).await.unwrap();
    from(&core, fh, 0).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_files_read_at_once_stay_under_the_memory_budget() {
    let src = MemSource::new();
    let budget = 32 * MB;
    let mut files = Vec::new();
    for i in 0..64 {
        let d = pseudo_random((3 * MB + i * 1000) as usize, i);
        src.put(&format!("f{i}"), d.clone(), None);
        files.push(d);
    }
    *src.shared.faults.lock().unwrap() = MemFaults {
        delay: Duration::from_millis(2),
        ..Default::default()
    };
    let core = core_over(src, budget);
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watcher = {
        let (core, peak) = (core.clone(), peak.clone());
        tokio::spawn(async move {
            loop {
                let s = core.cache().stats();
                peak.fetch_max(s.cached_bytes + s.reserved_bytes, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    for (i, want) in files.into_iter().enumerate() {
        let core = core.clone();
        tasks.push(tokio::spawn(async move {
            let (fh, _) = core.open(ino(&core, &format!("f{i}")).await).await.unwrap();
            let got = read_all(&core, fh, 128 << 10).await.unwrap();
            core.release(fh);
            assert!(got == want, "file {i} differs");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    watcher.abort();
    let peak = peak.load(Ordering::SeqCst);
    // Demand fetches may overshoot by one block per concurrent reader (documented).
    assert!(peak <= budget + 64 * MB, "peak {peak} over budget");
    assert!(core.cache().stats().cached_bytes <= budget);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_sequential_reader_leaves_only_its_recent_blocks_in_memory() {
    let src = MemSource::new();
    let big = pseudo_random((96 * MB + 7) as usize, 11);
    let short = pseudo_random((20 * MB) as usize, 12);
    // No checksum here: how far the hashing lags (it runs on tasks of its own, slowly in a
    // debug build) would move the peak. "summed" below has one.
    src.put("big", big.clone(), None);
    src.put("summed", big.clone(), Some(sha1(&big)));
    src.put("short", short.clone(), None);
    let mut wrong = big.clone();
    wrong[70 << 20] ^= 1;
    src.put("bad", big.clone(), Some(sha1(&wrong)));
    let core = core_over(src.clone(), 256 * MB);
    let (big_ino, short_ino) = (ino(&core, "big").await, ino(&core, "short").await);

    // Another reader's head of the file stays cached whatever a later reader does.
    let (fh, _) = core.open(big_ino).await.unwrap();
    assert!(core.read(fh, 0, 4 << 20).await.unwrap() == big[..4 << 20]);
    core.release(fh);

    // A reader from 8 MiB to EOF: what stays cached is the blocks near it, not the file.
    let (fh, _) = core.open(big_ino).await.unwrap();
    let mut peak = 0;
    let mut at = 8 * MB;
    loop {
        let b = core.read(fh, at, 512 << 10).await.unwrap();
        if b.is_empty() {
            break;
        }
        assert!(b[..] == big[at as usize..at as usize + b.len()], "bytes at {at}");
        at += b.len() as u64;
        peak = peak.max(core.cache().stats().cached_bytes);
    }
    core.release(fh);
    // 4 MiB head + 16 MiB behind the reader + 16 MiB window + 4 MiB request + a block or two;
    // without the release it is the whole file.
    assert!(peak <= 48 * MB, "peak cached {} MiB of a 96 MiB file", peak / MB);
    assert!(peak >= 20 * MB, "the blocks behind the reader are kept for a while");

    // A file shorter than the release run keeps all its blocks.
    let (fh, _) = core.open(short_ino).await.unwrap();
    assert!(read_all(&core, fh, 512 << 10).await.unwrap() == short);
    core.release(fh);
    let before = src.shared.requests.load(Ordering::SeqCst);
    let (fh, _) = core.open(short_ino).await.unwrap();
    assert!(read_all(&core, fh, 512 << 10).await.unwrap() == short);
    let (fh2, _) = core.open(big_ino).await.unwrap();
    assert!(core.read(fh2, 0, 4 << 20).await.unwrap() == big[..4 << 20]);
    assert_eq!(
        src.shared.requests.load(Ordering::SeqCst),
        before,
        "the short file and the head of the long one were read from memory"
    );

    // A checksummed file read in order verifies although its blocks are released behind the
    // reader (never before the verifier has hashed them: it fills its gaps from the cache).
    let summed = ino(&core, "summed").await;
    let before = src.shared.bytes.load(Ordering::SeqCst);
    let (fh, _) = core.open(summed).await.unwrap();
    assert!(read_all(&core, fh, 512 << 10).await.unwrap() == big);
    assert_eq!(
        src.shared.bytes.load(Ordering::SeqCst) - before,
        big.len() as u64,
        "downloaded once: no block was released before the hashing took it"
    );
    core.release(fh);

    // Released blocks never hide a bad checksum: the last read of a long file still fails.
    let (fh, _) = core.open(ino(&core, "bad").await).await.unwrap();
    let err = read_all(&core, fh, 512 << 10).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_file_source_is_downloaded_once_for_any_number_of_ranges() {
    let src = MemSource::whole_file();
    let data = pseudo_random((6 * MB + 1) as usize, 8);
    src.put("f", data.clone(), None);
    let core = core_over(src.clone(), 64 * MB);
    let (fh, _) = core.open(ino(&core, "f").await).await.unwrap();
    for off in [5 * MB, 123, 3 * MB + 7, 0, 6 * MB] {
        let got = core.read(fh, off, 4096).await.unwrap();
        let s = off as usize;
        let e = (s + 4096).min(data.len());
        assert_eq!(&got[..], &data[s..e]);
    }
    assert_eq!(src.shared.requests.load(Ordering::SeqCst), 1, "one download");
}

/// A fetch run stops its request at a block the disk tier has (`BlockCache::fetch_run`), but
/// a source that can only send the whole file gets one request for all the blocks missing
/// around it: each request there is a whole download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_file_source_with_a_block_on_disk_is_downloaded_once() {
    use fetchfs::cache::BlockKey;
    use fetchfs::cache::disk::DiskCache;
    use fetchfs::source::OpenRequest;
    let src = MemSource::whole_file();
    let data = pseudo_random((6 * MB + 1) as usize, 9);
    src.put("f", data.clone(), None);
    let dir = tempfile::tempdir().unwrap();
    let disk = Arc::new(DiskCache::open(dir.path(), 64 * MB, MB).unwrap());
    // Block 1 of this version is on disk; blocks 0 and 2.. are not.
    let req = OpenRequest {
        block_size: MB,
        revalidate: false,
    };
    let opened = src.open(&Entry::file("f", "f", data.len() as u64), &req).await.unwrap();
    let validator = opened.entry.validator.unwrap();
    disk.put(
        &BlockKey::new("m", "f", validator, 1),
        &data[MB as usize..2 * MB as usize],
    );
    let before = src.shared.requests.load(Ordering::SeqCst);
    let s: Arc<dyn Source> = src.clone();
    let mounted = Mounted {
        name: "m".into(),
        source: s,
        root: Entry::dir("", ""),
    };
    let core = FsCore::with_disk(cfg(64 * MB), vec![mounted], true, Some(disk));
    let (fh, _) = core.open(ino(&core, "f").await).await.unwrap();
    assert_eq!(read_all(&core, fh, 128 << 10).await.unwrap(), data);
    assert_eq!(
        src.shared.requests.load(Ordering::SeqCst) - before,
        1,
        "one download around the block on disk"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_readers_of_one_block_share_one_request() {
    let src = MemSource::new();
    let data = pseudo_random(MB as usize, 9);
    src.put("f", data.clone(), None);
    *src.shared.faults.lock().unwrap() = MemFaults {
        delay: Duration::from_millis(50),
        ..Default::default()
    };
    let core = core_over(src.clone(), 64 * MB);
    let i = ino(&core, "f").await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let core = core.clone();
        tasks.push(tokio::spawn(async move {
            let (fh, _) = core.open(i).await.unwrap();
            core.read(fh, 0, 4096).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(&t.await.unwrap()[..], &data[..4096]);
    }
    assert_eq!(src.shared.requests.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_cannot_be_file_names_are_skipped() {
    let src = MemSource::new();
    src.put("ok", &b"1"[..], None);
    src.put(&"x".repeat(300), &b"2"[..], None);
    src.put("a\0b", &b"3"[..], None);
    let core = core_over(src, 64 * MB);
    let items = core.readdir(1, 0, 100).await.unwrap();
    let names: Vec<_> = items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, vec![".", "..", "ok"]);
}

//! The disk tier through real mounts: a remount serves cached files with no data request,
//! a second daemon cannot share the directory, and `fetchfs cache stats|clear` see it.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn after_a_remount_cached_files_are_read_with_no_data_request() {
    if !can_mount() {
        return;
    }
    let rt = runtime();
    let data = tempfile::tempdir().unwrap();
    let big = pseudo_random(12 << 20, 42);
    std::fs::write(data.path().join("big.bin"), &big).unwrap();
    std::fs::write(data.path().join("small.txt"), b"hello disk").unwrap();
    let (server, url) = serve_http(&rt, data.path());
    let cache = tempfile::tempdir().unwrap();
    let cdir = cache.path().join("c");
    let cdir_s = cdir.display().to_string();
    {
        let m = MountGuard::start(&[&url, "--cache-dir", &cdir_s, "--disk-cache", "64MiB"]);
        // A second daemon on the same cache directory is refused with a clear sentence.
        let dir2 = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(BIN)
            .args(["mount", &url])
            .arg(dir2.path())
            .args(["--cache-dir", &cdir_s, "--foreground"])
            .env("FETCHFS_LOG", "off")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(&cdir_s), "{err}");
        let (ok, sum, _) = sh(
            &format!("md5sum < {}", m.path("big.bin").display()),
            Duration::from_secs(60),
        );
        assert!(ok && sum.starts_with(&md5_hex(&big)));
        assert_eq!(std::fs::read(m.path("small.txt")).unwrap(), b"hello disk");
        // No pause for the write-behind: the daemon drains it when it unmounts.
    }
    let (ok, stats, err) = sh(&format!("{BIN} cache stats --dir {cdir_s}"), Duration::from_secs(10));
    assert!(ok, "{err}");
    assert!(stats.contains("blocks      13"), "{stats}");
    server.harness.stats.reset();
    {
        let m = MountGuard::start(&[&url, "--cache-dir", &cdir_s]);
        let (ok, sum, _) = sh(
            &format!("md5sum < {}", m.path("big.bin").display()),
            Duration::from_secs(60),
        );
        assert!(ok && sum.starts_with(&md5_hex(&big)));
        assert_eq!(std::fs::read(m.path("small.txt")).unwrap(), b"hello disk");
        let gets = server
            .harness
            .stats
            .count(|k| k.starts_with("GET /big.bin") || k.starts_with("GET /small.txt"));
        assert_eq!(
            gets,
            0,
            "data requests after remount: {:?}",
            server.harness.stats.snapshot()
        );
    }
    let (ok, out, err) = sh(
        &format!("{BIN} cache clear --dir {cdir_s} && {BIN} cache stats --dir {cdir_s}"),
        Duration::from_secs(10),
    );
    assert!(ok, "{err}");
    assert!(out.contains("blocks      0"), "{out}");
}

/// The indices of the blocks in a disk cache directory (`blocks/<fan>/<version>-<index>`).
fn cached_indices(cdir: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for fan in std::fs::read_dir(std::path::Path::new(cdir).join("blocks")).unwrap() {
        for f in std::fs::read_dir(fan.unwrap().path()).unwrap() {
            let name = f.unwrap().file_name().into_string().unwrap();
            let (_, index) = name.rsplit_once('-').unwrap();
            out.push(u64::from_str_radix(index, 16).unwrap());
        }
    }
    out.sort();
    out
}

/// With a disk tier, a sequential reader's stream keeps what it reads (`src/splice.rs`, "Kept
/// streams"): every block of the file reaches the disk, and a stream never fetches a block
/// the disk already has, it stops there and the reader goes on from the disk.
#[test]
fn a_stream_keeps_every_block_it_reads_and_stops_at_blocks_the_disk_has() {
    if !can_mount() {
        return;
    }
    const MIB: u64 = 1 << 20;
    let rt = runtime();
    let data = tempfile::tempdir().unwrap();
    let file = pseudo_random(24 << 20, 77);
    std::fs::write(data.path().join("f.bin"), &file).unwrap();
    let (server, url) = serve_http(&rt, data.path());
    let cache = tempfile::tempdir().unwrap();
    let cdir = cache.path().join("c").display().to_string();
    let mount = || {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        // Debug lines say which blocks the disk's writer could not take, if any.
        let m = MountGuard::start_env(
            &[
                &url,
                "--cache-dir",
                &cdir,
                "--disk-cache",
                "256MiB",
                "--metrics-addr",
                &addr,
            ],
            &[("FETCHFS_LOG", "fetchfs=debug")],
        );
        (m, port)
    };
    // First, a reader of the middle of the file only: 12 to 18 MiB.
    {
        let (m, _) = mount();
        let (ok, sum, err) = sh(
            &format!(
                "dd if={} bs=1M skip=12 count=6 status=none | md5sum",
                m.path("f.bin").display()
            ),
            Duration::from_secs(60),
        );
        assert!(ok, "{err}");
        assert!(sum.starts_with(&md5_hex(&file[12 << 20..18 << 20])), "{sum}");
    }
    let cached = cached_indices(&cdir);
    let middle = cached.len() as u64;
    assert!(
        (3..24).contains(&middle),
        "{middle} blocks after reading 6 MiB of the middle"
    );
    // The origin's bytes of those blocks change, its size and mtime (so its ETag) do not: a
    // read that downloaded any of them again would get other bytes than the disk's.
    let origin = data.path().join("f.bin");
    let mtime = std::fs::metadata(&origin).unwrap().modified().unwrap();
    let mut changed = file.clone();
    for &i in &cached {
        for b in &mut changed[(i * MIB) as usize..((i + 1) * MIB) as usize] {
            *b ^= 0x5a;
        }
    }
    std::fs::write(&origin, &changed).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&origin)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    // Then the whole file: what the disk has is not fetched again, and all the rest is kept.
    let log = {
        let (m, port) = mount();
        let (ok, sum, err) = sh(
            &format!("md5sum < {}", m.path("f.bin").display()),
            Duration::from_secs(60),
        );
        assert!(ok, "{err}");
        assert!(
            sum.starts_with(&md5_hex(&file)),
            "blocks on disk ({cached:?}) were downloaded again\n{}",
            m.log_text()
        );
        let text = scrape_metrics(port);
        let kept = metric(&text, "fetchfs_read_stream_kept_bytes_total").unwrap();
        assert!(kept >= (4 * MIB) as f64, "only {kept} bytes were kept by a stream");
        assert_eq!(metric(&text, "fetchfs_read_spliced_bytes_total"), Some(0.0));
        // Each stream's first block may come twice: a READ behind the stream that reaches into
        // it goes the ordinary way.
        let fetched = metric(&text, "fetchfs_http_bytes_total").unwrap() as u64;
        let missing = (24 - middle) * MIB;
        assert!(
            fetched <= missing + 4 * MIB,
            "fetched {fetched} bytes where the disk lacked {missing}\n{}",
            m.log_text()
        );
        m.log_text()
    };
    assert_eq!(blocks_on_disk(&cdir), 24, "every block of the file is on disk\n{log}");
    // And a third read makes no data request at all.
    server.harness.stats.reset();
    {
        let (m, _) = mount();
        let (ok, sum, err) = sh(
            &format!("md5sum < {}", m.path("f.bin").display()),
            Duration::from_secs(60),
        );
        assert!(ok, "{err}");
        assert!(sum.starts_with(&md5_hex(&file)), "{sum}");
        let gets = server.harness.stats.count(|k| k.starts_with("GET /f.bin"));
        assert_eq!(gets, 0, "data requests: {:?}", server.harness.stats.snapshot());
    }
}

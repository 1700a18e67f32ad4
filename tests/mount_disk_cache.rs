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

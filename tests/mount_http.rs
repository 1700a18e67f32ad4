//! Real FUSE mounts of the plain-HTTP source against the in-process HTTP emulator, exercised
//! with the tools users run: cp, md5sum, dd, ls, find, cat.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fetchfs::emulate::{self, FaultSpec};

#[test]
fn cp_r_of_a_tree_gives_identical_md5sums() {
    if !can_mount() {
        return;
    }
    let fx = http_fixture();
    let files = make_tree(fx.data.path(), 5, 20, 300_000, 7);
    let m = MountGuard::start(&[&fx.url()]);
    cp_r_and_check_md5(&m, &m.mnt(), &files, fx.data.path(), Duration::from_secs(60));
}

#[test]
fn dd_at_random_offsets_returns_the_source_bytes() {
    if !can_mount() {
        return;
    }
    let fx = http_fixture();
    let big = pseudo_random(24 << 20, 99);
    std::fs::write(fx.data.path().join("big.bin"), &big).unwrap();
    let m = MountGuard::start(&[&fx.url()]);
    let mut state = 12345u64;
    for _ in 0..40 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let skip = (state >> 20) % (big.len() as u64 / 4096);
        let count = 1 + (state >> 50) % 16;
        let (ok, _, err) = sh(
            &format!(
                "dd if={} of=/dev/stdout bs=4096 skip={skip} count={count} status=none | md5sum",
                m.path("big.bin").display()
            ),
            Duration::from_secs(30),
        );
        assert!(ok, "{err}");
        let start = (skip * 4096) as usize;
        let end = (start + count as usize * 4096).min(big.len());
        let (_, sum, _) = sh(
            &format!(
                "dd if={} bs=4096 skip={skip} count={count} status=none | md5sum",
                m.path("big.bin").display()
            ),
            Duration::from_secs(30),
        );
        assert!(sum.starts_with(&md5_hex(&big[start..end])), "offset {start}");
    }
    // The whole file too, which also exercises the sequential path.
    let (_, sum, _) = sh(
        &format!("md5sum < {}", m.path("big.bin").display()),
        Duration::from_secs(60),
    );
    assert!(sum.starts_with(&md5_hex(&big)));
}

#[test]
fn ls_and_find_see_every_file_with_its_size() {
    if !can_mount() {
        return;
    }
    let fx = http_fixture();
    let files = make_tree(fx.data.path(), 4, 50, 5_000, 3);
    std::fs::write(fx.data.path().join("name with spaces & ü.txt"), b"x").unwrap();
    let m = MountGuard::start(&[&fx.url()]);
    let (ok, out, _) = sh(
        &format!("find {} -type f | wc -l", m.mnt().display()),
        Duration::from_secs(30),
    );
    assert!(ok);
    assert_eq!(out.trim(), (files.len() + 1).to_string());
    let (ok, out, _) = sh(
        &format!("find {} -type d | wc -l", m.mnt().display()),
        Duration::from_secs(30),
    );
    assert!(ok);
    assert_eq!(out.trim(), "5");
    let (_, out, _) = sh(
        &format!("stat -c %s {}", m.path("d01/f000.bin").display()),
        Duration::from_secs(10),
    );
    let want = files.iter().find(|(p, _)| p.ends_with("d01/f000.bin")).unwrap().1.len();
    assert_eq!(out.trim(), want.to_string());
    let (ok, out, _) = sh(
        &format!("cat '{}'", m.path("name with spaces & ü.txt").display()),
        Duration::from_secs(10),
    );
    assert!(ok);
    assert_eq!(out, "x");
    let (ok, out, _) = sh(
        &format!(
            "getfattr --only-values -n user.fetchfs.url {} 2>/dev/null || python3 -c \"import os;print(os.getxattr('{}','user.fetchfs.url').decode())\"",
            m.path("d00/f000.bin").display(),
            m.path("d00/f000.bin").display()
        ),
        Duration::from_secs(10),
    );
    assert!(ok);
    assert!(out.trim().ends_with("/d00/f000.bin"), "{out}");
}

#[test]
fn every_write_fails_with_erofs() {
    if !can_mount() {
        return;
    }
    let fx = http_fixture();
    std::fs::write(fx.data.path().join("a.txt"), b"hello").unwrap();
    let m = MountGuard::start(&[&fx.url()]);
    let mnt = m.mnt().display().to_string();
    for cmd in [
        format!("echo x > {mnt}/a.txt"),
        format!("echo x >> {mnt}/a.txt"),
        format!("touch {mnt}/new"),
        format!("mkdir {mnt}/d"),
        format!("rm {mnt}/a.txt"),
        format!("mv {mnt}/a.txt {mnt}/b.txt"),
        format!("chmod 777 {mnt}/a.txt"),
        format!("ln -s x {mnt}/l"),
    ] {
        let (ok, _, err) = sh(&cmd, Duration::from_secs(10));
        assert!(!ok, "{cmd} succeeded");
        assert!(err.contains("Read-only file system"), "{cmd}: {err}");
    }
    assert_eq!(std::fs::read(fx.data.path().join("a.txt")).unwrap(), b"hello");
}

#[test]
fn a_file_deleted_on_the_server_fails_quickly_instead_of_hanging() {
    if !can_mount() {
        return;
    }
    let fx = http_fixture();
    std::fs::write(fx.data.path().join("gone.bin"), pseudo_random(3 << 20, 5)).unwrap();
    let m = MountGuard::start(&[&fx.url(), "--ttl", "1s"]);
    let (ok, out, _) = sh(&format!("ls {}", m.mnt().display()), Duration::from_secs(10));
    assert!(ok && out.contains("gone.bin"));
    std::fs::remove_file(fx.data.path().join("gone.bin")).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let t = Instant::now();
    let (ok, _, err) = sh(
        &format!("cat {} > /dev/null", m.path("gone.bin").display()),
        Duration::from_secs(60),
    );
    assert!(!ok);
    assert!(
        err.contains("No such file") || err.contains("Input/output error"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
}

#[test]
fn a_stalled_server_makes_reads_fail_with_eio_within_the_timeout() {
    if !can_mount() {
        return;
    }
    let fx = http_fixture();
    std::fs::write(fx.data.path().join("slow.bin"), pseudo_random(4 << 20, 6)).unwrap();
    let m = MountGuard::start(&[&fx.url(), "--io-timeout", "4s"]);
    assert!(m.path("slow.bin").exists());
    fx.server.harness.faults.set(FaultSpec {
        stall_after: Some(0),
        stall_ms: 600_000,
        ..FaultSpec::default()
    });
    let t = Instant::now();
    let (ok, _, err) = sh(
        &format!("cat {} > /dev/null", m.path("slow.bin").display()),
        Duration::from_secs(60),
    );
    assert!(!ok, "cat of a stalled file succeeded");
    assert!(err.contains("Input/output error"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30), "took {:?}", t.elapsed());
    // Once the server behaves again, the same file reads fine without a remount.
    fx.server.harness.faults.clear();
    let (ok, sum, _) = sh(
        &format!("md5sum < {}", m.path("slow.bin").display()),
        Duration::from_secs(30),
    );
    assert!(ok);
    assert!(sum.starts_with(&md5_hex(&pseudo_random(4 << 20, 6))));
}

#[test]
fn misbehaving_servers_still_give_exact_bytes() {
    if !can_mount() {
        return;
    }
    let fx = http_fixture();
    let data = pseudo_random(5 << 20, 11);
    std::fs::write(fx.data.path().join("f.bin"), &data).unwrap();
    use emulate::http::{HttpBehaviour, ListingStyle};
    let cases: Vec<(&str, HttpBehaviour, FaultSpec)> = vec![
        (
            "no range",
            HttpBehaviour {
                no_range: true,
                ..Default::default()
            },
            FaultSpec::default(),
        ),
        (
            "no head + python listing",
            HttpBehaviour {
                no_head: true,
                style: ListingStyle::Python,
                ..Default::default()
            },
            FaultSpec::default(),
        ),
        (
            "apache listing",
            HttpBehaviour {
                style: ListingStyle::Apache,
                ..Default::default()
            },
            FaultSpec::default(),
        ),
        (
            "redirects",
            HttpBehaviour {
                redirect: true,
                ..Default::default()
            },
            FaultSpec::default(),
        ),
        (
            "no etag",
            HttpBehaviour {
                no_etag: true,
                ..Default::default()
            },
            FaultSpec::default(),
        ),
        (
            "chunked without length",
            HttpBehaviour {
                chunked: true,
                ..Default::default()
            },
            FaultSpec::default(),
        ),
        (
            "503 + retry-after",
            HttpBehaviour::default(),
            FaultSpec {
                fail_every: 3,
                error_status: 503,
                retry_after: Some(1),
                path_contains: "f.bin".into(),
                ..Default::default()
            },
        ),
        (
            "reset mid-body",
            HttpBehaviour::default(),
            FaultSpec {
                reset_after: Some(700_000),
                reset_count: 3,
                path_contains: "f.bin".into(),
                ..Default::default()
            },
        ),
    ];
    for (what, b, f) in cases {
        *fx.behaviour.lock().unwrap() = b;
        fx.server.harness.faults.set(f);
        let m = MountGuard::start(&[&fx.url()]);
        let (ok, sum, err) = sh(
            &format!("md5sum < {}", m.path("f.bin").display()),
            Duration::from_secs(60),
        );
        assert!(ok, "{what}: {err}\n{}", m.log_text());
        assert!(sum.starts_with(&md5_hex(&data)), "{what}: wrong bytes");
        let (ok, out, _) = sh(
            &format!("stat -c %s {}", m.path("f.bin").display()),
            Duration::from_secs(10),
        );
        assert!(ok && out.trim() == data.len().to_string(), "{what}: size {out}");
        drop(m);
        fx.server.harness.faults.clear();
    }
}

#[test]
fn a_warm_re_read_is_served_by_the_kernel_page_cache() {
    if !can_mount() {
        return;
    }
    let fx = http_fixture();
    let data = pseudo_random(8 << 20, 21);
    std::fs::write(fx.data.path().join("w.bin"), &data).unwrap();
    let m = MountGuard::start(&[&fx.url()]);
    let (ok, _, _) = sh(
        &format!("cat {} > /dev/null", m.path("w.bin").display()),
        Duration::from_secs(30),
    );
    assert!(ok);
    let before = fx.server.harness.stats.count(|k| k.contains("w.bin"));
    let (ok, sum, _) = sh(
        &format!("md5sum < {}", m.path("w.bin").display()),
        Duration::from_secs(30),
    );
    assert!(ok && sum.starts_with(&md5_hex(&data)));
    let after = fx.server.harness.stats.count(|k| k.contains("w.bin"));
    assert_eq!(before, after, "the re-read reached the server");
}

#[test]
fn sigterm_unmounts_and_the_daemon_exits() {
    if !can_mount() {
        return;
    }
    let fx = http_fixture();
    std::fs::write(fx.data.path().join("a"), b"a").unwrap();
    let mut m = MountGuard::start(&[&fx.url()]);
    m.signal(libc::SIGTERM);
    let st = m
        .wait_exit(Duration::from_secs(15))
        .expect("daemon did not exit on SIGTERM");
    assert!(st.success(), "{st}");
    assert!(!is_mounted(&m.mnt()));
}

#[test]
fn fusermount_u_stops_the_daemon() {
    if !can_mount() {
        return;
    }
    let fx = http_fixture();
    std::fs::write(fx.data.path().join("a"), b"a").unwrap();
    let mut m = MountGuard::start(&[&fx.url()]);
    let (ok, _, err) = sh(
        &format!("fusermount3 -u {} || umount {}", m.mnt().display(), m.mnt().display()),
        Duration::from_secs(10),
    );
    assert!(ok, "{err}");
    assert!(
        m.wait_exit(Duration::from_secs(15)).is_some(),
        "daemon still running after unmount"
    );
}

#[test]
fn background_mount_returns_when_ready_and_umount_stops_it() {
    if !can_mount() {
        return;
    }
    let fx = http_fixture();
    std::fs::write(fx.data.path().join("hello.txt"), b"hi").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["mount", &fx.url()])
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Ready means ready: no polling needed.
    assert_eq!(std::fs::read(mnt.join("hello.txt")).unwrap(), b"hi");
    let st = std::process::Command::new("umount").arg(&mnt).status().unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_mounted(&mnt) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!is_mounted(&mnt));
}

#[test]
fn mount_failures_exit_nonzero_with_one_sentence() {
    let fx = http_fixture();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let bad_cfg = dir.path().join("bad.toml");
    std::fs::write(&bad_cfg, "[cache]\nmemroy = 1\n").unwrap();
    let m = mnt.display().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![fx.url(), dir.path().join("missing").display().to_string()],
            "does not exist",
        ),
        (vec![fx.url(), file.display().to_string()], "not a directory"),
        (vec!["http://127.0.0.1:9/".into(), m.clone()], "127.0.0.1:9"),
        (vec!["not a url".into(), m.clone()], "not a URL"),
        (
            vec!["--config".into(), bad_cfg.display().to_string(), m.clone()],
            "memroy",
        ),
        (
            vec!["--config".into(), "/nonexistent.toml".into(), m.clone()],
            "cannot read config file",
        ),
        (vec![format!("{}missing/", fx.url()), m.clone()], "404"),
    ];
    for (args, want) in cases {
        let out = std::process::Command::new(BIN)
            .arg("mount")
            .args(&args)
            .arg("--foreground")
            .env("FETCHFS_LOG", "off")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    assert!(!is_mounted(&mnt));
}

//! Real FUSE mounts of the B2 source against the in-process B2 emulator, exercised with cp,
//! sha1sum, dd, ls, cat and getfattr.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use fetchfs::emulate::b2::{B2Control, B2EmuOptions, DEFAULT_APPLICATION_KEY, DEFAULT_KEY_ID};
use fetchfs::emulate::{self, Server};

struct Fixture {
    _rt: tokio::runtime::Runtime,
    data: tempfile::TempDir,
    server: Server,
    control: B2Control,
}

/// The emulator over `fill(bucket dir)`, on a runtime that lives as long as the test.
fn fixture(opts: B2EmuOptions, fill: impl FnOnce(&Path)) -> Fixture {
    let rt = runtime();
    let data = tempfile::tempdir().unwrap();
    let bucket = data.path().join("bkt");
    std::fs::create_dir_all(&bucket).unwrap();
    fill(&bucket);
    let emu = emulate::b2::router(data.path(), opts);
    let control = emu.control.clone();
    let server = rt.block_on(emulate::serve(emu.router, 0, emu.harness)).unwrap();
    Fixture {
        _rt: rt,
        data,
        server,
        control,
    }
}

impl Fixture {
    /// Mounts the bucket as source `b2` through a private config file.
    fn mount(&self) -> MountGuard {
        self.mount_with(&[])
    }

    /// [`Fixture::mount`] with more mount arguments.
    fn mount_with(&self, extra: &[&str]) -> MountGuard {
        let cfg = self.data.path().join("fetchfs.toml");
        std::fs::write(
            &cfg,
            format!(
                "[[source]]\nname = \"b2\"\ntype = \"b2\"\nendpoint = \"{}\"\nkey_id = \"{DEFAULT_KEY_ID}\"\napplication_key = \"{DEFAULT_APPLICATION_KEY}\"\nbucket = \"bkt\"\n",
                self.server.base_url()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut args = vec!["--config", cfg.to_str().unwrap()];
        args.extend_from_slice(extra);
        MountGuard::start(&args)
    }
}

fn sha1_hex(data: &[u8]) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(data))
}

#[test]
fn cp_r_of_a_bucket_gives_identical_sha1sums() {
    if !can_mount() {
        return;
    }
    let mut files = Vec::new();
    let fx = fixture(B2EmuOptions::default(), |b| {
        files = make_tree(b, 4, 15, 300_000, 11);
        let big = pseudo_random(6 << 20, 5);
        std::fs::write(b.join("big.bin"), &big).unwrap();
        files.push((b.join("big.bin"), big));
        std::fs::write(b.join("empty"), b"").unwrap();
        files.push((b.join("empty"), Vec::new()));
    });
    let m = fx.mount();
    let out = tempfile::tempdir().unwrap();
    let (ok, _, err) = sh(
        &format!("cp -r {}/b2/. {}/", m.mnt().display(), out.path().display()),
        Duration::from_secs(90),
    );
    assert!(ok, "cp failed: {err}\n{}", m.log_text());
    let (ok, sums, _) = sh(
        &format!("cd {} && find . -type f | sort | xargs sha1sum", out.path().display()),
        Duration::from_secs(30),
    );
    assert!(ok);
    assert_eq!(sums.lines().count(), files.len());
    let root = fx.data.path().join("bkt");
    for (path, data) in &files {
        let rel = path.strip_prefix(&root).unwrap().display().to_string();
        let line = sums
            .lines()
            .find(|l| l.ends_with(&format!("./{rel}")))
            .unwrap_or_else(|| panic!("{rel} missing"));
        assert!(line.starts_with(&sha1_hex(data)), "{rel}: {line}");
    }
}

#[test]
fn dd_at_offsets_and_xattrs_show_the_b2_object() {
    if !can_mount() {
        return;
    }
    let big = pseudo_random(5 << 20, 77);
    let fx = fixture(B2EmuOptions::default(), |b| {
        std::fs::write(b.join("big.bin"), &big).unwrap();
    });
    let m = fx.mount();
    let f = m.path("b2/big.bin");
    for (off, len) in [
        (0usize, 4096usize),
        (1_234_567, 10_000),
        ((5 << 20) - 100, 100),
        (3 << 20, 1 << 20),
    ] {
        let out = tempfile::NamedTempFile::new().unwrap();
        let (ok, _, err) = sh(
            &format!(
                "dd if={} of={} bs=1 skip={off} count={len} iflag=skip_bytes,count_bytes status=none",
                f.display(),
                out.path().display()
            ),
            Duration::from_secs(30),
        );
        assert!(ok, "{err}");
        assert!(std::fs::read(out.path()).unwrap() == big[off..off + len], "at {off}");
    }
    let (ok, sha, _) = sh(
        &format!("getfattr --only-values -n user.b2.content_sha1 {}", f.display()),
        Duration::from_secs(10),
    );
    assert!(ok);
    assert_eq!(sha.trim(), sha1_hex(&big));
    let (ok, id, _) = sh(
        &format!("getfattr --only-values -n user.b2.file_id {}", f.display()),
        Duration::from_secs(10),
    );
    assert!(ok && id.starts_with("4_z"), "{id}");
}

#[test]
fn a_wrong_sha1_makes_cp_fail_instead_of_copying_bad_bytes() {
    if !can_mount() {
        return;
    }
    let fx = fixture(
        B2EmuOptions {
            wrong_sha1: true,
            ..B2EmuOptions::default()
        },
        |b| {
            std::fs::write(b.join("f.bin"), pseudo_random(2 << 20, 3)).unwrap();
        },
    );
    let m = fx.mount();
    let out = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let (ok, _, err) = sh(
            &format!("cp {} {}/", m.path("b2/f.bin").display(), out.path().display()),
            Duration::from_secs(30),
        );
        assert!(!ok, "cp must fail on a SHA-1 mismatch");
        assert!(err.contains("Input/output error"), "{err}");
    }
}

#[test]
fn a_token_expiring_during_cat_of_a_large_file_is_renewed() {
    if !can_mount() {
        return;
    }
    let big = pseudo_random(12 << 20, 21);
    let fx = fixture(B2EmuOptions::default(), |b| {
        std::fs::write(b.join("large.bin"), &big).unwrap();
    });
    let m = fx.mount();
    fx.control.update(|o| o.token_max_requests = Some(3));
    let (ok, sum, err) = sh(
        &format!("cat {} | sha1sum", m.path("b2/large.bin").display()),
        Duration::from_secs(60),
    );
    assert!(ok, "{err}\n{}", m.log_text());
    assert!(sum.starts_with(&sha1_hex(&big)), "{sum}");
}

#[test]
fn ls_shows_a_name_that_is_both_file_and_folder_twice() {
    if !can_mount() {
        return;
    }
    let fx = fixture(B2EmuOptions::default(), |_| {});
    fx.control.upload("bkt", "a", &b"the file a\n"[..]);
    fx.control.upload("bkt", "a/inner.txt", &b"inner\n"[..]);
    let m = fx.mount();
    let (ok, ls, err) = sh(&format!("ls -1 {}", m.path("b2").display()), Duration::from_secs(10));
    assert!(ok, "{err}");
    assert_eq!(ls.lines().collect::<Vec<_>>(), ["a", "a~file"]);
    let (_, cat, _) = sh(
        &format!(
            "cat {} {}",
            m.path("b2/a~file").display(),
            m.path("b2/a/inner.txt").display()
        ),
        Duration::from_secs(10),
    );
    assert_eq!(cat, "the file a\ninner\n");
}

#[test]
fn a_large_file_without_any_sha1_is_spliced_with_the_token_and_exact() {
    if !can_mount() {
        return;
    }
    let big = pseudo_random(40 << 20, 17);
    let fx = fixture(
        B2EmuOptions {
            // contentSha1 "none" and no large_file_sha1: nothing to verify, so it may stream.
            large_file_threshold: Some(1 << 20),
            ..B2EmuOptions::default()
        },
        |b| std::fs::write(b.join("big.bin"), &big).unwrap(),
    );
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let m = fx.mount_with(&["--metrics-addr", &addr]);
    let (ok, out, err) = sh(
        &format!("sha1sum < {}", m.path("b2/big.bin").display()),
        Duration::from_secs(60),
    );
    assert!(ok, "{err}");
    assert!(out.starts_with(&sha1_hex(&big)), "{out}");
    let spliced = metric(&scrape_metrics(port), "fetchfs_read_spliced_bytes_total").unwrap();
    assert!(spliced > 0.0, "the download was not streamed\n{}", m.log_text());
}

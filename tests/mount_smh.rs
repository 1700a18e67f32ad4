//! Real FUSE mounts of the SMH source against the in-process SMH emulator, exercised with the
//! tools users run: cp, md5sum, cat, dd, ls, readlink, getfattr.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use fetchfs::emulate::smh::{SmhControl, SmhEmuOptions};
use fetchfs::emulate::{self, FaultSpec, Server};

const SECRET: &str = "mount-secret";

struct Fixture {
    _rt: tokio::runtime::Runtime,
    data: tempfile::TempDir,
    conf: tempfile::TempDir,
    server: Server,
    ctl: Arc<SmhControl>,
}

fn fixture() -> Fixture {
    let rt = runtime();
    let data = tempfile::tempdir().unwrap();
    let emu = emulate::smh::router(
        data.path(),
        SmhEmuOptions {
            library_secret: SECRET.into(),
            ..SmhEmuOptions::default()
        },
    );
    let ctl = emu.control.clone();
    let server = rt.block_on(emulate::serve(emu.router, 0, emu.harness)).unwrap();
    Fixture {
        _rt: rt,
        data,
        conf: tempfile::tempdir().unwrap(),
        server,
        ctl,
    }
}

impl Fixture {
    /// Writes a config naming the source `smh` (secret in a `_file`) and returns its path.
    fn config(&self, versions: bool) -> String {
        let secret = self.conf.path().join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        let path = self.conf.path().join("fetchfs.toml");
        std::fs::write(
            &path,
            format!(
                "[[source]]\nname = \"smh\"\ntype = \"smh\"\nendpoint = \"{}\"\nlibrary_id = \"smhdemo\"\nlibrary_secret_file = \"{}\"\nversions = {versions}\n",
                self.server.base_url(),
                secret.display()
            ),
        )
        .unwrap();
        path.display().to_string()
    }

    fn mount(&self, versions: bool) -> MountGuard {
        let cfg = self.config(versions);
        MountGuard::start(&["--config", &cfg])
    }
}

/// `md5sum` of `smh/NAME` under the mount: (success, stdout, stderr).
fn md5sum(m: &MountGuard, name: &str) -> (bool, String, String) {
    sh(
        &format!("md5sum < {}", m.path(&format!("smh/{name}")).display()),
        Duration::from_secs(60),
    )
}

/// With one byte flipped `at` bytes into every download of an object, `md5sum` of
/// `smh/flip.bin` fails with EIO; the wire is clean again after.
fn flip_in_the_stream_fails(fx: &Fixture, m: &MountGuard, at: u64) {
    fx.server.harness.faults.set(FaultSpec {
        flip_at: Some(at),
        path_contains: "/cos/".into(),
        ..FaultSpec::default()
    });
    let (ok, _, err) = md5sum(m, "flip.bin");
    fx.server.harness.faults.clear();
    assert!(!ok, "a byte flipped in the stream went unnoticed\n{}", m.log_text());
    assert!(err.contains("Input/output error"), "{err}");
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

#[test]
fn cp_r_of_a_library_gives_identical_md5sums() {
    if !can_mount() {
        return;
    }
    let fx = fixture();
    let files = make_tree(fx.data.path(), 4, 15, 400_000, 11);
    let m = fx.mount(false);
    cp_r_and_check_md5(&m, &m.path("smh"), &files, fx.data.path(), Duration::from_secs(90));
}

#[test]
fn a_published_crc64_that_does_not_match_fails_cat_with_eio() {
    if !can_mount() {
        return;
    }
    let fx = fixture();
    let data = pseudo_random(3 << 20, 5);
    write(fx.data.path(), "bad.bin", &data);
    write(fx.data.path(), "good.bin", &data);
    fx.ctl.publish_wrong_crc64("bad.bin");
    let m = fx.mount(false);
    let (ok, _, err) = sh(
        &format!("cat {} > /dev/null", m.path("smh/bad.bin").display()),
        Duration::from_secs(60),
    );
    assert!(
        !ok,
        "a file whose CRC-64 does not match must not read cleanly\n{}",
        m.log_text()
    );
    assert!(err.contains("Input/output error"), "{err}");
    let (ok, sum, err) = md5sum(&m, "good.bin");
    assert!(ok, "{err}");
    assert!(sum.starts_with(&md5_hex(&data)), "{sum}");
}

#[test]
fn expired_token_and_signed_url_mid_copy_still_give_identical_bytes() {
    if !can_mount() {
        return;
    }
    let fx = fixture();
    let data = pseudo_random(16 << 20, 9);
    write(fx.data.path(), "big.bin", &data);
    let m = fx.mount(false);
    let f = m.path("smh/big.bin");
    let (ok, _, err) = sh(
        &format!("dd if={} of=/dev/null bs=1M count=2 status=none", f.display()),
        Duration::from_secs(30),
    );
    assert!(ok, "{err}");
    fx.ctl.expire_tokens();
    fx.ctl.expire_signed_urls();
    let (ok, sum, err) = sh(&format!("md5sum < {}", f.display()), Duration::from_secs(60));
    assert!(ok, "{err}\n{}", m.log_text());
    assert!(sum.starts_with(&md5_hex(&data)), "{sum}");
}

#[test]
fn versions_symlinks_and_xattrs_are_visible_through_the_mount() {
    if !can_mount() {
        return;
    }
    let fx = fixture();
    write(fx.data.path(), "notes/hello.txt", b"current\n");
    write(fx.data.path(), ".history/notes/hello.txt.v1", b"first\n");
    write(fx.data.path(), ".meta/notes/hello.txt.json", br#"{"owner":"ann"}"#);
    std::os::unix::fs::symlink("notes/hello.txt", fx.data.path().join("latest")).unwrap();
    let m = fx.mount(true);
    let (ok, ls, err) = sh(
        &format!("ls {}", m.path("smh/.versions/notes/hello.txt").display()),
        Duration::from_secs(20),
    );
    assert!(ok, "{err}\n{}", m.log_text());
    assert_eq!(ls.split_whitespace().collect::<Vec<_>>(), ["1", "2"]);
    let (_, v1, _) = sh(
        &format!("cat {}", m.path("smh/.versions/notes/hello.txt/1").display()),
        Duration::from_secs(20),
    );
    assert_eq!(v1, "first\n");
    let (_, target, _) = sh(
        &format!("readlink {}", m.path("smh/latest").display()),
        Duration::from_secs(20),
    );
    assert_eq!(target.trim(), "notes/hello.txt");
    let (_, via_link, _) = sh(
        &format!("cat {}", m.path("smh/latest").display()),
        Duration::from_secs(20),
    );
    assert_eq!(via_link, "current\n");
    let (ok, attrs, err) = sh(
        &format!(
            "getfattr -d -m 'user\\.smh\\.' {}",
            m.path("smh/notes/hello.txt").display()
        ),
        Duration::from_secs(20),
    );
    assert!(ok, "{err}");
    let crc = fetchfs::provider::smh::crc64(b"current\n").to_string();
    assert!(attrs.contains(&format!("user.smh.crc64=\"{crc}\"")), "{attrs}");
    assert!(attrs.contains("user.smh.meta.owner=\"ann\""), "{attrs}");
    assert!(attrs.contains("user.smh.content_type=\"text/plain\""), "{attrs}");
}

#[test]
fn a_large_file_is_verified_on_its_stream_and_a_wrong_crc64_or_a_flipped_byte_fails_it() {
    if !can_mount() {
        return;
    }
    let fx = fixture();
    let data = pseudo_random(64 << 20, 13);
    for name in ["good.bin", "bad.bin", "flip.bin", "tail.bin"] {
        write(fx.data.path(), name, &data);
    }
    fx.ctl.publish_wrong_crc64("bad.bin");
    let cfg = fx.config(false);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let m = MountGuard::start(&["--config", &cfg, "--metrics-addr", &addr]);
    let (ok, sum, err) = md5sum(&m, "good.bin");
    assert!(ok, "{err}");
    assert!(sum.starts_with(&md5_hex(&data)), "{sum}");
    // After its first MiBs the reader is streamed (src/splice.rs, "Verified streams"): the
    // bytes pass through the daemon, hashed as they arrive, and are never spliced past it.
    let text = scrape_metrics(port);
    let verified = metric(&text, "fetchfs_read_stream_verified_bytes_total").unwrap();
    assert!(verified > (32 << 20) as f64, "only {verified} bytes came by the stream");
    assert_eq!(metric(&text, "fetchfs_read_spliced_bytes_total"), Some(0.0));
    // A reader that starts at 16 MiB has no checksum to follow (a first read within 8 MiB of
    // the start still counts as the start, `SEQ_SLACK`): its stream splices.
    let (ok, sum, err) = sh(
        &format!(
            "dd if={} bs=1M skip=16 status=none | md5sum",
            m.path("smh/tail.bin").display()
        ),
        Duration::from_secs(60),
    );
    assert!(ok, "{err}");
    assert!(sum.starts_with(&md5_hex(&data[16 << 20..])), "{sum}");
    let text = scrape_metrics(port);
    let spliced = metric(&text, "fetchfs_read_spliced_bytes_total").unwrap();
    assert!(spliced > (32 << 20) as f64, "only {spliced} bytes spliced");
    assert_eq!(
        metric(&text, "fetchfs_read_stream_verified_bytes_total"),
        Some(verified),
        "nothing of the tail is hashed"
    );
    // A wrong published CRC-64 fails the read that reaches EOF, at every open.
    for attempt in 0..2 {
        let (ok, _, err) = sh(
            &format!("cat {} > /dev/null", m.path("smh/bad.bin").display()),
            Duration::from_secs(60),
        );
        assert!(!ok, "attempt {attempt}: a wrong CRC-64 read cleanly\n{}", m.log_text());
        assert!(err.contains("Input/output error"), "attempt {attempt}: {err}");
    }
    // A byte flipped 40 MiB into a response: only the stream's GET (the rest of the file,
    // ~60 MiB) is that long, so only the stream's hashing can see it.
    flip_in_the_stream_fails(&fx, &m, 40 << 20);
    // Once the wire is clean again, the next open downloads and verifies afresh (issue 8).
    let (ok, sum, err) = md5sum(&m, "flip.bin");
    assert!(ok, "{err}\n{}", m.log_text());
    assert!(sum.starts_with(&md5_hex(&data)), "{sum}");
}

/// With a disk tier, a checksummed file's stream both verifies and keeps what it reads: the
/// good file's every block reaches the disk and a remount reads it with no download, and a
/// byte flipped in the stream fails the read and leaves no block of that version on disk.
#[test]
fn a_kept_stream_stores_verified_blocks_and_a_flipped_byte_leaves_none() {
    if !can_mount() {
        return;
    }
    let fx = fixture();
    let data = pseudo_random(24 << 20, 29);
    for name in ["good.bin", "flip.bin"] {
        write(fx.data.path(), name, &data);
    }
    let cfg = fx.config(false);
    let cache = tempfile::tempdir().unwrap();
    let cdir = cache.path().join("c").display().to_string();
    let tier = ["--cache-dir", cdir.as_str(), "--disk-cache", "256MiB"];
    {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let m = MountGuard::start(&[&["--config", &cfg, "--metrics-addr", &addr][..], &tier[..]].concat());
        let (ok, sum, err) = md5sum(&m, "good.bin");
        assert!(ok, "{err}");
        assert!(sum.starts_with(&md5_hex(&data)), "{sum}");
        let text = scrape_metrics(port);
        for name in ["verified", "kept"] {
            let n = metric(&text, &format!("fetchfs_read_stream_{name}_bytes_total")).unwrap();
            assert!(n >= (8 << 20) as f64, "only {n} bytes {name} by the stream");
        }
        // A byte flipped 12 MiB into a response: only the stream's GET (the rest of the file,
        // ~20 MiB) is that long, so only the stream's hashing can see it.
        flip_in_the_stream_fails(&fx, &m, 12 << 20);
    }
    assert_eq!(
        blocks_on_disk(&cdir),
        24,
        "the good file's 24 blocks, none of the flipped one"
    );
    fx.server.harness.stats.reset();
    let m = MountGuard::start(&[&["--config", &cfg][..], &tier[..]].concat());
    for name in ["good.bin", "flip.bin"] {
        let (ok, sum, err) = md5sum(&m, name);
        assert!(ok, "{name}: {err}\n{}", m.log_text());
        assert!(sum.starts_with(&md5_hex(&data)), "{name}: {sum}");
        if name == "good.bin" {
            let gets = fx.server.harness.stats.count(|k| k.starts_with("GET /cos/"));
            assert_eq!(
                gets,
                0,
                "downloads of a cached file: {:?}",
                fx.server.harness.stats.snapshot()
            );
        }
    }
}

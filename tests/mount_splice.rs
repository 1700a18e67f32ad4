//! The zero-copy stream (`src/splice.rs`) through real mounts: a sequential reader of a large
//! plain-HTTP file is answered by splice, and every way a stream can go wrong (a server that
//! ignores Range, chunked bodies, redirects, resets, 503s, readers that skip, seek, share a
//! file or are killed mid-read) still gives the exact bytes, by the ordinary path.

mod common;

use std::time::Duration;

use common::*;
use fetchfs::emulate::{self, FaultSpec};

const SPLICED: &str = "fetchfs_read_spliced_bytes_total";
const HTTP_BYTES: &str = "fetchfs_http_bytes_total";

/// A mount with a metrics endpoint; `args` are what goes before the mountpoint.
fn mount_with_metrics(args: &[&str]) -> (MountGuard, u16) {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut all = args.to_vec();
    all.extend_from_slice(&["--metrics-addr", addr.as_str()]);
    (MountGuard::start(&all), port)
}

/// A config file mounting `url` as the source `web`, with `source_extra` lines in its
/// `[[source]]` and `cache` lines in `[cache]`.
fn config_file(dir: &std::path::Path, url: &str, cache: &str, source_extra: &str) -> String {
    let path = dir.join("fetchfs.toml");
    std::fs::write(
        &path,
        format!("[cache]\n{cache}\n\n[[source]]\nname = \"web\"\ntype = \"http\"\nurl = \"{url}\"\n{source_extra}\n"),
    )
    .unwrap();
    // It may hold a password: fetchfs refuses a secret others can read.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path.to_string_lossy().into_owned()
}

fn md5_of(path: &std::path::Path) -> String {
    let (ok, out, err) = sh(&format!("md5sum < '{}'", path.display()), Duration::from_secs(120));
    assert!(ok, "{err}");
    out.split_whitespace().next().unwrap_or_default().to_string()
}

#[test]
fn a_sequential_reader_is_answered_by_splice_with_exact_bytes() {
    if !can_mount() {
        return;
    }
    let fx = http_fixture();
    let data = pseudo_random(48 << 20, 41);
    std::fs::write(fx.data.path().join("big.bin"), &data).unwrap();
    let (m, port) = mount_with_metrics(&[&fx.url()]);
    assert_eq!(md5_of(&m.path("big.bin")), md5_hex(&data));
    let after = scrape_metrics(port);
    let spliced = metric(&after, SPLICED).unwrap();
    // The first blocks go through the cache while the prefetcher learns the reader is
    // sequential; most of the rest is spliced.
    assert!(
        spliced >= (24 << 20) as f64,
        "only {spliced} bytes spliced:\n{}",
        m.log_text()
    );
    let fetched = metric(&after, HTTP_BYTES).unwrap();
    assert!(
        fetched <= data.len() as f64 * 1.25,
        "{fetched} bytes fetched for a {} byte file",
        data.len()
    );
    // `cp` and `cmp` too: another reader, another handle, the page cache now warm or not.
    let dst = tempfile::tempdir().unwrap();
    let (ok, _, err) = sh(
        &format!(
            "echo 3 > /proc/sys/vm/drop_caches; cp '{}' '{}/c.bin' && cmp '{}/c.bin' '{}'",
            m.path("big.bin").display(),
            dst.path().display(),
            dst.path().display(),
            fx.data.path().join("big.bin").display()
        ),
        Duration::from_secs(120),
    );
    assert!(ok, "{err}");
}

#[test]
fn streams_that_go_wrong_fall_back_to_exact_bytes() {
    if !can_mount() {
        return;
    }
    let fx = http_fixture();
    let data = pseudo_random(40 << 20, 43);
    std::fs::write(fx.data.path().join("f.bin"), &data).unwrap();
    use emulate::http::HttpBehaviour;
    let on_f = |f: FaultSpec| FaultSpec {
        path_contains: "f.bin".into(),
        ..f
    };
    // (what, server behaviour, faults, extra lines of the source's config, whether the stream
    // must be used)
    let cases: Vec<(&str, HttpBehaviour, FaultSpec, &str, bool)> = vec![
        (
            "basic auth",
            HttpBehaviour {
                basic_auth: Some("u:p w".into()),
                ..Default::default()
            },
            FaultSpec::default(),
            "username = \"u\"\npassword = \"p w\"",
            true,
        ),
        (
            "an API key header",
            HttpBehaviour {
                require_header: Some(("x-api-key".into(), "k1".into())),
                ..Default::default()
            },
            FaultSpec::default(),
            "headers = { x-api-key = \"k1\" }",
            true,
        ),
        (
            "no etag",
            HttpBehaviour {
                no_etag: true,
                ..Default::default()
            },
            FaultSpec::default(),
            "",
            true,
        ),
        (
            "no range",
            HttpBehaviour {
                no_range: true,
                ..Default::default()
            },
            FaultSpec::default(),
            "",
            false,
        ),
        (
            "chunked",
            HttpBehaviour {
                chunked: true,
                ..Default::default()
            },
            FaultSpec::default(),
            "",
            false,
        ),
        (
            "redirects",
            HttpBehaviour {
                redirect: true,
                ..Default::default()
            },
            FaultSpec::default(),
            "",
            false,
        ),
        (
            "resets mid-body",
            HttpBehaviour::default(),
            on_f(FaultSpec {
                reset_after: Some(9 << 20),
                reset_count: 4,
                ..Default::default()
            }),
            "",
            false,
        ),
        (
            "503 + retry-after",
            HttpBehaviour::default(),
            on_f(FaultSpec {
                fail_every: 3,
                error_status: 503,
                retry_after: Some(1),
                ..Default::default()
            }),
            "",
            false,
        ),
    ];
    for (what, b, f, extra, must_splice) in cases {
        *fx.behaviour.lock().unwrap() = b;
        fx.server.harness.faults.set(f);
        let dir = tempfile::tempdir().unwrap();
        let cfg = config_file(dir.path(), &fx.url(), "", extra);
        let (m, port) = mount_with_metrics(&["--config", &cfg]);
        assert_eq!(md5_of(&m.path("web/f.bin")), md5_hex(&data), "{what}: wrong bytes");
        let spliced = metric(&scrape_metrics(port), SPLICED).unwrap();
        if must_splice {
            assert!(spliced > 0.0, "{what}: the stream was not used:\n{}", m.log_text());
        }
        drop(m);
        fx.server.harness.faults.clear();
    }
}

#[test]
fn readers_that_skip_seek_share_or_die_get_exact_bytes() {
    if !can_mount() {
        return;
    }
    let fx = http_fixture();
    let data = pseudo_random(40 << 20, 47);
    std::fs::write(fx.data.path().join("s.bin"), &data).unwrap();
    let (m, port) = mount_with_metrics(&[&fx.url()]);
    let file = m.path("s.bin");
    let drop_caches = || sh("echo 3 > /proc/sys/vm/drop_caches", Duration::from_secs(30));

    // One handle reading 4 MiB and skipping 1 MiB, to the end.
    drop_caches();
    let (ok, out, err) = sh(
        &format!(
            "{{ for i in $(seq 8); do dd bs=1M count=4 status=none; dd bs=1M skip=1 count=0 status=none; done; }} < '{}' | md5sum",
            file.display()
        ),
        Duration::from_secs(120),
    );
    assert!(ok, "{err}");
    let mut want = Vec::new();
    for i in 0..8usize {
        want.extend_from_slice(&data[i * (5 << 20)..i * (5 << 20) + (4 << 20)]);
    }
    assert!(out.starts_with(&md5_hex(&want)), "skipping reader got wrong bytes");

    // One handle reading 12 MiB from the middle, then seeking back to the start.
    drop_caches();
    let (ok, out, err) = sh(
        &format!(
            "{{ dd bs=1M skip=20 count=12 status=none; dd bs=1M skip=0 count=0 status=none 2>/dev/null; }} < '{}' | md5sum",
            file.display()
        ),
        Duration::from_secs(120),
    );
    assert!(ok, "{err}");
    assert!(out.starts_with(&md5_hex(&data[20 << 20..32 << 20])), "seeking reader");

    // Two readers of one file at once (the kernel interleaves their readahead).
    drop_caches();
    let (ok, out, err) = sh(
        &format!("md5sum < '{0}' & md5sum < '{0}'; wait", file.display()),
        Duration::from_secs(120),
    );
    assert!(ok, "{err}");
    let sums: Vec<&str> = out.lines().collect();
    assert_eq!(sums.len(), 2, "{out}");
    for s in sums {
        assert!(s.starts_with(&md5_hex(&data)), "shared reader: {s}");
    }

    // Readers killed mid-stream leave READs interrupted; the next reader is still exact.
    for ms in [60, 120, 200] {
        drop_caches();
        let (_, _, _) = sh(
            &format!("timeout -s KILL 0.{ms:03} cat '{}' > /dev/null", file.display()),
            Duration::from_secs(30),
        );
    }
    drop_caches();
    assert_eq!(md5_of(&file), md5_hex(&data), "after killed readers");
    assert!(metric(&scrape_metrics(port), SPLICED).unwrap() > 0.0);
}

#[test]
fn splice_off_in_the_config_reads_the_ordinary_way() {
    if !can_mount() {
        return;
    }
    let fx = http_fixture();
    let data = pseudo_random(24 << 20, 53);
    std::fs::write(fx.data.path().join("o.bin"), &data).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), &fx.url(), "splice = false", "");
    let (m, port) = mount_with_metrics(&["--config", &cfg]);
    assert_eq!(md5_of(&m.path("web/o.bin")), md5_hex(&data));
    assert_eq!(metric(&scrape_metrics(port), SPLICED), Some(0.0));
}

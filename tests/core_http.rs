//! The filesystem core driven directly (no kernel) against the HTTP emulator: listing, reads
//! through the block cache and prefetcher, faults. Property test: random reads equal the source.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::pseudo_random;
use fetchfs::config::{Config, ConfigFile};
use fetchfs::emulate::http::{HttpBehaviour, ListingStyle};
use fetchfs::emulate::{self, FaultSpec};
use fetchfs::fs::{CoreConfig, FsCore};

struct Env {
    data: tempfile::TempDir,
    server: emulate::Server,
    behaviour: Arc<std::sync::Mutex<HttpBehaviour>>,
}

async fn env() -> Env {
    let data = tempfile::tempdir().unwrap();
    let emu = emulate::http::router(data.path());
    let behaviour = emu.behaviour.clone();
    let server = emulate::serve(emu.router, 0, emu.harness).await.unwrap();
    Env {
        data,
        server,
        behaviour,
    }
}

fn config(url: &str, extra: &str) -> Config {
    let text = format!("{extra}\n[[source]]\nname = \"s\"\ntype = \"http\"\nurl = \"{url}\"\n");
    let mut c = ConfigFile::parse(&text)
        .unwrap()
        .validate(std::path::Path::new("."))
        .unwrap();
    c.http.backoff_base = Duration::from_millis(10);
    c
}

async fn core(cfg: &Config) -> Arc<FsCore> {
    let sources = fetchfs::mount::build_sources(cfg).await.unwrap();
    FsCore::new(CoreConfig::from_config(cfg), sources, true)
}

async fn read_file(core: &Arc<FsCore>, name: &str, chunk: u32) -> Vec<u8> {
    let attr = core.lookup(1, name).await.unwrap();
    let (fh, _) = core.open(attr.ino).await.unwrap();
    let mut out = Vec::new();
    loop {
        let b = core.read(fh, out.len() as u64, chunk).await.unwrap();
        if b.is_empty() {
            break;
        }
        out.extend_from_slice(&b);
    }
    core.release(fh);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listing_style_gives_the_right_sizes_and_bytes() {
    let e = env().await;
    let data = pseudo_random(3 << 20 | 12345, 1);
    std::fs::write(e.data.path().join("f.bin"), &data).unwrap();
    for style in [ListingStyle::Nginx, ListingStyle::Apache, ListingStyle::Python] {
        *e.behaviour.lock().unwrap() = HttpBehaviour {
            style,
            ..Default::default()
        };
        let c = core(&config(&format!("{}/", e.server.base_url()), "")).await;
        let attr = c.lookup(1, "f.bin").await.unwrap();
        assert_eq!(attr.size, data.len() as u64, "{style:?}");
        let got = read_file(&c, "f.bin", 128 << 10).await;
        assert!(got == data, "{style:?}: wrong bytes ({} vs {})", got.len(), data.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_and_extra_headers_from_the_config_are_sent() {
    let e = env().await;
    std::fs::write(e.data.path().join("secret.txt"), b"s3cret").unwrap();
    *e.behaviour.lock().unwrap() = HttpBehaviour {
        basic_auth: Some("alice:pw".into()),
        require_header: Some(("x-api-key".into(), "k1".into())),
        ..Default::default()
    };
    let url = format!("{}/", e.server.base_url());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "pw\n").unwrap();
    let text = format!(
        "[[source]]\nname = \"s\"\ntype = \"http\"\nurl = \"{url}\"\nusername = \"alice\"\npassword_file = \"pw\"\nheaders = {{ \"X-Api-Key\" = \"k1\" }}\n"
    );
    let cfg = ConfigFile::parse(&text).unwrap().validate(dir.path()).unwrap();
    let c = core(&cfg).await;
    assert_eq!(read_file(&c, "secret.txt", 4096).await, b"s3cret");
    // Without the password the mount is refused with a clear error.
    let bad = config(&url, "");
    let err = fetchfs::mount::build_sources(&bad)
        .await
        .err()
        .expect("mount without credentials succeeded");
    assert!(err.0.contains("401") || err.0.contains("permission denied"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_never_sent_to_another_host() {
    let e = env().await;
    let other = env().await;
    std::fs::write(e.data.path().join("f.txt"), b"hello").unwrap();
    std::fs::write(other.data.path().join("f.txt"), b"there").unwrap();
    *e.behaviour.lock().unwrap() = HttpBehaviour {
        redirect_to: Some(other.server.base_url().replace("127.0.0.1", "localhost")),
        ..Default::default()
    };
    let url = format!("{}/", e.server.base_url());
    let text =
        format!("[[source]]\nname = \"s\"\ntype = \"http\"\nurl = \"{url}\"\nheaders = {{ \"X-Api-Key\" = \"k1\" }}\n");
    let cfg = ConfigFile::parse(&text)
        .unwrap()
        .validate(std::path::Path::new("."))
        .unwrap();
    let c = core(&cfg).await;
    let attr = c.lookup(1, "f.txt").await.unwrap();
    let err = c.open(attr.ino).await.unwrap_err();
    assert_eq!(err.errno(), libc::EACCES, "{err}");
    assert_eq!(other.server.harness.stats.total(), 0, "the other host saw a request");
    // Without credentials the redirect is followed.
    let c = core(&config(&url, "")).await;
    assert_eq!(read_file(&c, "f.txt", 4096).await, b"there");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_honour_retry_after_and_a_503_storm_completes() {
    let e = env().await;
    let data = pseudo_random(2 << 20, 4);
    std::fs::write(e.data.path().join("f.bin"), &data).unwrap();
    let url = format!("{}/", e.server.base_url());
    let c = core(&config(&url, "")).await;
    e.server.harness.faults.set(FaultSpec {
        fail_next: 3,
        error_status: 503,
        retry_after: Some(1),
        ..Default::default()
    });
    let t = std::time::Instant::now();
    assert!(read_file(&c, "f.bin", 1 << 20).await == data);
    assert!(
        t.elapsed() >= Duration::from_secs(3),
        "Retry-After was not honoured: {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_opening_one_file_at_once_learn_its_version_with_one_request() {
    // An autoindex lists no ETag, so the first open asks the server (one ranged GET). Eight
    // readers opening the file together, while that answer is slow in coming, must share it.
    let e = env().await;
    let data = pseudo_random(3 << 20, 7);
    std::fs::write(e.data.path().join("f.bin"), &data).unwrap();
    let c = core(&config(&format!("{}/", e.server.base_url()), "")).await;
    let attr = c.lookup(1, "f.bin").await.unwrap();
    let before = e.server.harness.stats.count(|k| k == "GET /f.bin");
    e.server.harness.faults.set(FaultSpec {
        stall_after: Some(0),
        stall_ms: 300,
        path_contains: "f.bin".into(),
        ..Default::default()
    });
    let opens: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.open(attr.ino).await })
        })
        .collect();
    let mut handles = Vec::new();
    for o in opens {
        handles.push(o.await.unwrap().expect("open").0);
    }
    assert_eq!(
        e.server.harness.stats.count(|k| k == "GET /f.bin") - before,
        1,
        "one request for eight opens"
    );
    e.server.harness.faults.set(FaultSpec::default());
    for fh in handles {
        let b = c.read(fh, 1 << 20, 4096).await.unwrap();
        assert_eq!(&b[..], &data[1 << 20..(1 << 20) + 4096]);
        c.release(fh);
    }
}

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

async fn read_file(core: &FsCore, name: &str, chunk: u32) -> Vec<u8> {
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

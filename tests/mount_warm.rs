//! `cache warm` through a real FUSE mount: it reads every file of the mount once, and afterwards
//! reading the files again costs no download.

mod common;

use common::*;
use fetchfs::cache::warm::{WarmReport, warm};
use fetchfs::emulate;

#[test]
fn warming_a_mount_reads_every_byte_and_later_reads_download_nothing() {
    if !can_mount() {
        return;
    }
    let rt = runtime();
    let data = tempfile::tempdir().unwrap();
    let emu = emulate::http::router(data.path());
    let stats = emu.harness.stats.clone();
    let server = rt.block_on(emulate::serve(emu.router, 0, emu.harness)).unwrap();
    let files = make_tree(data.path(), 3, 10, 400_000, 11);
    let m = MountGuard::start(&[&format!("{}/", server.base_url())]);

    let report = warm(&[m.mnt()], 4, false).unwrap();
    let bytes: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    assert_eq!(
        report,
        WarmReport {
            files: files.len() as u64,
            bytes,
            errors: 0
        },
        "{}",
        m.log_text()
    );

    stats.reset();
    for (path, expected) in &files {
        let rel = path.strip_prefix(data.path()).unwrap();
        let got = std::fs::read(m.mnt().join(rel)).unwrap();
        assert!(got == *expected, "{} differs after warming", rel.display());
    }
    assert_eq!(
        stats.count(|k| k.starts_with("GET /d")),
        0,
        "requests after warming: {:?}",
        stats.snapshot()
    );
}

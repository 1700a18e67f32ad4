//! Real mounts of the whole-file sources (Doris small files, Huawei HSS export files): `cp -r`
//! gives identical bytes with one listing per directory and one download per file; random
//! `dd` reads are all served from that one download; a wrong MD5 is an I/O error.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use fetchfs::emulate;

fn write_config(dir: &std::path::Path, body: &str) -> String {
    let p = dir.join("fetchfs.toml");
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

fn cp_and_compare(
    m: &MountGuard,
    sub: &str,
    files: &[(std::path::PathBuf, Vec<u8>)],
    strip: &std::path::Path,
    map: impl Fn(&str) -> String,
) {
    let out = tempfile::tempdir().unwrap();
    let (ok, _, err) = sh(
        &format!("cp -r {}/. {}/", m.path(sub).display(), out.path().display()),
        Duration::from_secs(60),
    );
    assert!(ok, "cp failed: {err}\n{}", m.log_text());
    for (path, data) in files {
        let rel = map(&path.strip_prefix(strip).unwrap().display().to_string());
        let got = std::fs::read(out.path().join(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(got == *data, "{rel} differs");
    }
}

#[test]
fn doris_tree_copies_exactly_with_one_download_per_file_and_bad_md5_is_eio() {
    if !can_mount() {
        return;
    }
    let rt = runtime();
    let data = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (db, cat, n) in [("db1", "c1", 3), ("db1", "c2", 2), ("db2", "c1", 4)] {
        let d = data.path().join(db).join(cat);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            let bytes = pseudo_random(1000 + i * 20_000, (i + 3) as u64 * 31 + db.len() as u64);
            std::fs::write(d.join(format!("f{i}.bin")), &bytes).unwrap();
            files.push((d.join(format!("f{i}.bin")), bytes));
        }
    }
    let emu = emulate::doris::router(data.path(), emulate::doris::DorisEmuOptions::default());
    let behaviour = emu.behaviour.clone();
    let server = rt.block_on(emulate::serve(emu.router, 0, emu.harness)).unwrap();
    let cfgdir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        cfgdir.path(),
        &format!(
            "[[source]]\nname = \"doris\"\ntype = \"doris\"\nendpoint = \"{}\"\ntoken = \"{}\"\nuser = \"root\"\npassword = \"\"\n",
            server.base_url(),
            emulate::doris::DEFAULT_TOKEN
        ),
    );
    let m = MountGuard::start(&["--config", &cfg]);
    server.harness.stats.reset();
    cp_and_compare(&m, "doris", &files, data.path(), |r| r.to_string());
    let downloads = server.harness.stats.count(|k| k.contains("get_small_file"));
    let listings = server.harness.stats.count(|k| k.contains("/api/query/"));
    eprintln!(
        "doris cp -r: {listings} listing requests, {downloads} downloads for {} files",
        files.len()
    );
    assert_eq!(downloads, files.len() as u64, "one download per file");
    // Random reads of a file already read: no new download.
    let before = server.harness.stats.count(|k| k.contains("get_small_file"));
    for skip in [0, 7, 3, 11] {
        let (ok, _, err) = sh(
            &format!(
                "dd if={} bs=1000 skip={skip} count=1 status=none > /dev/null",
                m.path("doris/db2/c1/f3.bin").display()
            ),
            Duration::from_secs(10),
        );
        assert!(ok, "{err}");
    }
    assert_eq!(server.harness.stats.count(|k| k.contains("get_small_file")), before);
    // Wrong bytes from the server: the MD5 check turns them into an I/O error.
    behaviour.lock().unwrap().corrupt = true;
    let m2 = MountGuard::start(&["--config", &cfg]);
    let (ok, _, err) = sh(
        &format!("cat {} > /dev/null", m2.path("doris/db1/c1/f1.bin").display()),
        Duration::from_secs(30),
    );
    assert!(!ok && err.contains("Input/output error"), "{err}");
}

#[test]
fn huawei_export_files_copy_exactly_and_random_reads_reuse_one_download() {
    if !can_mount() {
        return;
    }
    let rt = runtime();
    let data = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (task, name, size) in [("task-a", "a.csv", 300_000), ("task-b", "b.csv", 5_000)] {
        let d = data.path().join(task);
        std::fs::create_dir_all(&d).unwrap();
        let bytes = pseudo_random(size, size as u64);
        std::fs::write(d.join(name), &bytes).unwrap();
        files.push((d.join(name), bytes));
    }
    std::fs::create_dir_all(data.path().join("task-run")).unwrap();
    std::fs::write(data.path().join("task-run/.running"), "").unwrap();
    let opts = emulate::huawei::HuaweiEmuOptions::default();
    let emu = emulate::huawei::router(data.path(), opts.clone());
    let server = rt.block_on(emulate::serve(emu.router, 0, emu.harness)).unwrap();
    let cfgdir = tempfile::tempdir().unwrap();
    std::fs::write(cfgdir.path().join("pw"), format!("{}\n", opts.password)).unwrap();
    let cfg = write_config(
        cfgdir.path(),
        &format!(
            "[[source]]\nname = \"hss\"\ntype = \"huawei\"\nendpoint = \"{u}\"\niam_endpoint = \"{u}\"\nproject_id = \"{p}\"\ndomain = \"{d}\"\nuser = \"{us}\"\npassword_file = \"pw\"\nexport_tasks = [\"task-a\", \"task-b\", \"task-run\"]\n",
            u = server.base_url(),
            p = emulate::huawei::DEFAULT_PROJECT_ID,
            d = opts.domain,
            us = opts.user
        ),
    );
    let m = MountGuard::start(&["--config", &cfg]);
    let (ok, out, _) = sh(&format!("ls {}", m.path("hss").display()), Duration::from_secs(10));
    assert!(ok);
    assert!(out.contains("a.csv") && out.contains("b.csv"), "{out}");
    server.harness.stats.reset();
    let out_dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = sh(
        &format!(
            "cp {}/a.csv {}/b.csv {}/",
            m.path("hss").display(),
            m.path("hss").display(),
            out_dir.path().display()
        ),
        Duration::from_secs(30),
    );
    assert!(ok, "{err}");
    for (p, bytes) in &files {
        let name = p.file_name().unwrap();
        assert!(std::fs::read(out_dir.path().join(name)).unwrap() == *bytes);
    }
    let downloads = server.harness.stats.count(|k| k.contains("/download/"));
    eprintln!("huawei cp: {downloads} downloads for {} files", files.len());
    assert_eq!(downloads, files.len() as u64);
    for skip in [250, 3, 120, 17] {
        let (ok, _, _) = sh(
            &format!(
                "dd if={} bs=1000 skip={skip} count=1 status=none iflag=direct > /dev/null 2>&1 || dd if={} bs=1000 skip={skip} count=1 status=none > /dev/null",
                m.path("hss/a.csv").display(),
                m.path("hss/a.csv").display()
            ),
            Duration::from_secs(10),
        );
        assert!(ok);
    }
    assert_eq!(
        server.harness.stats.count(|k| k.contains("/download/")),
        downloads,
        "random reads downloaded again"
    );
}

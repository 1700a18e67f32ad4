//! Access through real mounts: another uid is refused without `--allow-other`; with it,
//! `default_permissions` enforces the modes the mount reports (configured or the provider's);
//! and no secret (configured, or issued by the server: tokens, URL signatures) reaches the log
//! at `trace`, through mounts, reads, token renewals and refused credentials.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use fetchfs::emulate;

/// Runs `cmd` as uid/gid 65534 (nobody) with no supplementary groups.
fn as_nobody(cmd: &str) -> (bool, String, String) {
    sh(
        &format!("setpriv --reuid=65534 --regid=65534 --clear-groups -- bash -c '{cmd}'"),
        Duration::from_secs(20),
    )
}

/// The mount's tempdir is 0700; open it so that uid 65534 reaches the mountpoint and any
/// refusal comes from the mount itself.
fn open_path_to(m: &MountGuard) {
    std::fs::set_permissions(m.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn http_fixture(rt: &tokio::runtime::Runtime) -> (tempfile::TempDir, emulate::Server) {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("hello.txt"), b"hello access\n").unwrap();
    let emu = emulate::http::router(data.path());
    let server = rt.block_on(emulate::serve(emu.router, 0, emu.harness)).unwrap();
    (data, server)
}

#[test]
fn without_allow_other_another_uid_gets_eacces_and_with_it_reads() {
    if !can_mount() {
        return;
    }
    let rt = runtime();
    let (_data, server) = http_fixture(&rt);
    let url = format!("{}/", server.base_url());
    {
        let m = MountGuard::start(&[&url]);
        open_path_to(&m);
        let mnt = m.mnt().display().to_string();
        // The control: uid 65534 reaches the directory holding the mountpoint.
        let (ok, _, e) = as_nobody(&format!("ls {}", m.dir.path().display()));
        assert!(ok, "uid 65534 cannot reach the mount's parent: {e}");
        for cmd in [format!("ls {mnt}"), format!("stat {mnt}/hello.txt"), format!("cat {mnt}/hello.txt")] {
            let (ok, out, e) = as_nobody(&cmd);
            assert!(!ok && e.contains("Permission denied"), "{cmd} as uid 65534: {out} {e}");
        }
        // The mounting user still reads.
        assert_eq!(std::fs::read(m.path("hello.txt")).unwrap(), b"hello access\n");
    }
    {
        // auto_unmount (allow_root under the hood) keeps other users out the same way.
        let m = MountGuard::start(&[&url, "-o", "auto_unmount"]);
        open_path_to(&m);
        let (ok, out, e) = as_nobody(&format!("cat {}/hello.txt", m.mnt().display()));
        assert!(!ok && e.contains("Permission denied"), "auto_unmount: {out} {e}");
        assert_eq!(std::fs::read(m.path("hello.txt")).unwrap(), b"hello access\n");
    }
    {
        let m = MountGuard::start(&[&url, "--allow-other"]);
        open_path_to(&m);
        let (ok, out, e) = as_nobody(&format!("ls {0} && cat {0}/hello.txt", m.mnt().display()));
        assert!(ok, "with --allow-other: {e}");
        assert_eq!(out, "hello.txt\nhello access\n");
    }
}

#[test]
fn with_allow_other_the_modes_the_mount_reports_are_enforced() {
    if !can_mount() {
        return;
    }
    let rt = runtime();
    // Configured modes (a plain HTTP source reports none): file_mode 0440 refuses "other".
    let (_data, server) = http_fixture(&rt);
    let conf = tempfile::tempdir().unwrap();
    let cfg = conf.path().join("fetchfs.toml");
    std::fs::write(
        &cfg,
        format!(
            "[mount]\nfile_mode = \"0440\"\n\n[[source]]\nname = \"web\"\ntype = \"http\"\nurl = \"{}/\"\n",
            server.base_url()
        ),
    )
    .unwrap();
    {
        let m = MountGuard::start(&["--config", &cfg.display().to_string(), "--allow-other"]);
        open_path_to(&m);
        let f = m.path("web/hello.txt").display().to_string();
        let (ok, out, _) = as_nobody(&format!("stat -c %a {f}"));
        assert!(ok && out.trim() == "440", "{out}");
        let (ok, _, e) = as_nobody(&format!("cat {f}"));
        assert!(!ok && e.contains("Permission denied"), "0440 file read by uid 65534: {e}");
        // --gid 65534 makes uid 65534's group the file's group: the g+r bit now lets it read.
        drop(m);
        let m = MountGuard::start(&["--config", &cfg.display().to_string(), "--allow-other", "--gid", "65534"]);
        open_path_to(&m);
        let (ok, out, e) = as_nobody(&format!("cat {}", m.path("web/hello.txt").display()));
        assert!(ok && out == "hello access\n", "group read: {e}");
    }

    // A provider that reports modes (Onedata posixPermissions): 0600 becomes 0400 (write bits
    // cleared) and is refused to uid 65534, 0644 becomes 0444 and is readable.
    let data = tempfile::tempdir().unwrap();
    let space = data.path().join("space1");
    std::fs::create_dir_all(&space).unwrap();
    std::fs::write(space.join("private.txt"), b"owner only\n").unwrap();
    std::fs::write(space.join("public.txt"), b"for everyone\n").unwrap();
    std::fs::set_permissions(space.join("private.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(space.join("public.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let emu = emulate::onedata::router(data.path(), emulate::onedata::OnedataEmuOptions::default());
    let server = rt.block_on(emulate::serve(emu.router, 0, emu.harness)).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "[[source]]\nname = \"od\"\ntype = \"onedata\"\nendpoint = \"{}\"\ntoken_file = \"{}\"\n",
            server.base_url(),
            conf.path().join("token").display()
        ),
    )
    .unwrap();
    std::fs::write(conf.path().join("token"), "demo-token").unwrap();
    let m = MountGuard::start(&["--config", &cfg.display().to_string(), "--allow-other"]);
    open_path_to(&m);
    let private = m.path("od/space1/private.txt").display().to_string();
    let public = m.path("od/space1/public.txt").display().to_string();
    let (ok, out, e) = as_nobody(&format!("stat -c %a {private} {public}"));
    assert!(ok && out == "400\n444\n", "{out} {e}");
    let (ok, _, e) = as_nobody(&format!("cat {private}"));
    assert!(!ok && e.contains("Permission denied"), "0400 file read by uid 65534: {e}");
    let (ok, out, e) = as_nobody(&format!("cat {public}"));
    assert!(ok && out == "for everyone\n", "{e}");
    // Root reads both (default_permissions grants root everything but exec).
    assert_eq!(std::fs::read(&private).unwrap(), b"owner only\n");
}

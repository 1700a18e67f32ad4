//! Running fetchfs as a system service: mount(8) and fstab through the helper link, systemd
//! units, readiness notification, credentials, logs, metrics, `fetchfs check`, completions and
//! man pages. Every test cleans up what it creates (mounts, daemons, the /sbin link, sockets)
//! in `Drop` guards, so a failing assertion leaves nothing behind.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use fetchfs::emulate::{self, FaultSpec};

struct Fixture {
    rt: tokio::runtime::Runtime,
    data: tempfile::TempDir,
    server: emulate::Server,
    /// Every `Authorization` header the emulator received.
    auth_seen: Arc<Mutex<Vec<String>>>,
}

fn fixture() -> Fixture {
    let rt = runtime();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("hello.txt"), b"hello from fetchfs\n").unwrap();
    std::fs::create_dir(data.path().join("sub")).unwrap();
    std::fs::write(data.path().join("sub/denied.bin"), b"x").unwrap();
    let emu = emulate::http::router(data.path());
    let auth_seen = Arc::new(Mutex::new(Vec::new()));
    let seen = auth_seen.clone();
    let router = emu.router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            if let Some(v) = req.headers().get("authorization") {
                seen.lock().unwrap().push(v.to_str().unwrap_or("").to_string());
            }
            next.run(req)
        },
    ));
    let server = rt.block_on(emulate::serve(router, 0, emu.harness)).unwrap();
    Fixture {
        rt,
        data,
        server,
        auth_seen,
    }
}

impl Fixture {
    fn url(&self) -> String {
        format!("{}/", self.server.base_url())
    }

    /// A config file with one http source named `files` (plus `extra` lines in it).
    fn config(&self, dir: &Path, extra: &str) -> PathBuf {
        let p = dir.join("media.toml");
        std::fs::write(
            &p,
            format!(
                "[network]\nio_timeout = \"10s\"\n\n[[source]]\nname = \"files\"\ntype = \"http\"\nurl = \"{}\"\n{extra}",
                self.url()
            ),
        )
        .unwrap();
        p
    }
}

/// `fetchfs mount WHAT... DIR/mnt --foreground`; callers add flags and environment.
fn foreground(dir: &Path, what: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("mount").args(what).arg(dir.join("mnt")).arg("--foreground");
    cmd
}

/// Spawns `cmd` (a foreground daemon mounting `guard.mnt()`), logging to `guard.log` unless
/// the caller redirected stderr, and waits until the mountpoint answers.
fn spawn_mounted(dir: tempfile::TempDir, mut cmd: Command) -> MountGuard {
    let log = dir.path().join("daemon.log");
    std::fs::create_dir_all(dir.path().join("mnt")).unwrap();
    cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    let child = cmd.spawn().expect("spawn fetchfs");
    let mut g = MountGuard {
        dir,
        child: Some(child),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !is_mounted(&g.mnt()) {
        if let Some(st) = g.child.as_mut().unwrap().try_wait().unwrap() {
            g.child = None;
            panic!("daemon exited with {st} before mounting:\n{}", g.log_text());
        }
        assert!(Instant::now() < deadline, "no mount within 30 s:\n{}", g.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    g
}

/// Pids of processes whose command line contains `needle` (to find a detached daemon).
fn pids_with_arg(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// A mount made by someone else (mount(8), a background `fetchfs mount`): unmounts it and
/// kills its daemon (found by the unique mountpoint in its command line) if it outlives that.
struct DetachedMount {
    mnt: PathBuf,
}

impl DetachedMount {
    fn daemons(&self) -> Vec<i32> {
        let me = std::process::id() as i32;
        pids_with_arg(&self.mnt.to_string_lossy())
            .into_iter()
            .filter(|p| *p != me)
            .collect()
    }

    /// Waits up to `limit` for the daemons to exit on their own; true if they did.
    fn wait_daemons_gone(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.daemons().is_empty() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for DetachedMount {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg(&self.mnt).stderr(Stdio::null()).status();
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        if !self.wait_daemons_gone(Duration::from_secs(5)) {
            for pid in self.daemons() {
                // SAFETY: a pid we found running with our own temp mountpoint as argument.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// `/sbin/mount.fuse.fetchfs` → the test binary, removed on drop (only if we created it).
struct HelperLink {
    path: PathBuf,
    created: bool,
}

impl HelperLink {
    /// `None` (skip) when another fetchfs's link is installed here, outside CI.
    fn install() -> Option<HelperLink> {
        let path = PathBuf::from("/sbin/mount.fuse.fetchfs");
        match std::fs::symlink_metadata(&path) {
            Err(_) => {
                std::os::unix::fs::symlink(BIN, &path).expect("create /sbin/mount.fuse.fetchfs");
                Some(HelperLink { path, created: true })
            }
            Ok(_) if std::fs::read_link(&path).ok().as_deref() == Some(Path::new(BIN)) => {
                Some(HelperLink { path, created: false })
            }
            Ok(_) => {
                let why = format!("{} exists and is not ours; not touching it", path.display());
                assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "{why}");
                eprintln!("skipping: {why}");
                None
            }
        }
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        if self.created {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn read_file(p: &Path) -> String {
    let (ok, out, err) = sh(&format!("cat '{}'", p.display()), Duration::from_secs(20));
    assert!(ok, "cat {}: {err}", p.display());
    out
}

#[test]
fn mount_8_and_an_fstab_line_mount_through_the_helper_link_and_umount_ends_the_daemon() {
    if !can_mount() {
        return;
    }
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let cfg = fx.config(dir.path(), "");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(_link) = HelperLink::install() else {
        return;
    };
    let m = DetachedMount { mnt: mnt.clone() };

    // mount -t fuse.fetchfs CONFIG MOUNTPOINT -o OPTIONS (mount(8) adds `rw` by itself too).
    let (ok, _, err) = sh(
        &format!(
            "mount -t fuse.fetchfs {} {} -o ro,_netdev,nofail,allow_other,uid=1234",
            cfg.display(),
            mnt.display()
        ),
        Duration::from_secs(60),
    );
    assert!(ok, "mount failed: {err}");
    assert!(is_mounted(&mnt), "mount returned before the mount existed");
    assert_eq!(read_file(&mnt.join("files/hello.txt")), "hello from fetchfs\n");
    let (_, owner, _) = sh(
        &format!("stat -c %u {}", mnt.join("files/hello.txt").display()),
        Duration::from_secs(10),
    );
    assert_eq!(owner.trim(), "1234");
    let (_, fsname, _) = sh(
        &format!("findmnt -n -o SOURCE {}", mnt.display()),
        Duration::from_secs(10),
    );
    assert_eq!(fsname.trim(), format!("fetchfs:{}", cfg.display()));
    let (ok, _, err) = sh(&format!("umount {}", mnt.display()), Duration::from_secs(20));
    assert!(ok, "umount: {err}");
    assert!(!is_mounted(&mnt));
    assert!(
        m.wait_daemons_gone(Duration::from_secs(10)),
        "the daemon outlived its mount"
    );

    // The same as an fstab line (read from a private fstab file, not /etc/fstab).
    let fstab = dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "{} {} fuse.fetchfs ro,_netdev,nofail,allow_other,uid=1000 0 0\n",
            cfg.display(),
            mnt.display()
        ),
    )
    .unwrap();
    let (ok, _, err) = sh(
        &format!("mount -T {} {}", fstab.display(), mnt.display()),
        Duration::from_secs(60),
    );
    assert!(ok, "mount from fstab failed: {err}");
    assert_eq!(read_file(&mnt.join("files/hello.txt")), "hello from fetchfs\n");
    let (ok, _, err) = sh(&format!("umount {}", mnt.display()), Duration::from_secs(20));
    assert!(ok, "umount: {err}");
    assert!(m.wait_daemons_gone(Duration::from_secs(10)));

    // An unknown option fails the mount with the sentence naming it, and nothing stays.
    let (ok, _, err) = sh(
        &format!(
            "mount -t fuse.fetchfs {} {} -o frobnicate",
            cfg.display(),
            mnt.display()
        ),
        Duration::from_secs(30),
    );
    assert!(!ok);
    assert!(err.contains("frobnicate"), "{err}");
    assert!(!is_mounted(&mnt));
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let have = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI must have systemd-analyze"
        );
        eprintln!("skipping: systemd-analyze is not installed");
        return;
    }
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let dir = tempfile::tempdir().unwrap();
    // The template as an instance; the binary path pointed at the one under test (verify
    // checks that every Exec*= program exists).
    let copies = [
        ("fetchfs@.service", "fetchfs@media.service"),
        ("mnt-media.mount", "mnt-media.mount"),
        ("mnt-media.automount", "mnt-media.automount"),
    ];
    for (from, to) in copies {
        let text = std::fs::read_to_string(scripts.join(from)).unwrap();
        std::fs::write(dir.path().join(to), text.replace("/usr/local/bin/fetchfs", BIN)).unwrap();
    }
    let service = std::fs::read_to_string(scripts.join("fetchfs@.service")).unwrap();
    for needed in [
        "Type=notify",
        "ExecStart=/usr/local/bin/fetchfs mount --foreground --config /etc/fetchfs/%i.toml /mnt/%i",
        "ExecStop=",
        "LoadCredential=",
        "DeviceAllow=/dev/fuse rw",
    ] {
        assert!(service.contains(needed), "the unit lacks {needed}");
    }
    for line in service.lines().filter(|l| !l.starts_with('#')) {
        for forbidden in [
            "ProtectSystem",
            "PrivateTmp",
            "ProtectHome",
            "PrivateDevices",
            "PrivateMounts",
        ] {
            assert!(
                !line.starts_with(forbidden),
                "{forbidden} hides the mount in a private namespace"
            );
        }
    }
    let out = Command::new("systemd-analyze")
        .current_dir(dir.path())
        .args([
            "verify",
            "--man=no",
            "./fetchfs@media.service",
            "./mnt-media.mount",
            "./mnt-media.automount",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and bad values and only prints them: check both.
    assert!(out.status.success(), "{stderr}");
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("fetchfs@media.service") || l.contains("mnt-media."))
        .collect();
    assert!(complaints.is_empty(), "systemd-analyze complains:\n{stderr}");
}

#[test]
fn the_daemon_runs_without_home_or_path() {
    if !can_mount() {
        return;
    }
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let url = fx.url();
    let mut cmd = foreground(dir.path(), &[url.as_ref()]);
    // What `env -i fetchfs mount ...` does: an empty environment.
    cmd.env_clear();
    let mut m = spawn_mounted(dir, cmd);
    assert_eq!(read_file(&m.path("hello.txt")), "hello from fetchfs\n");
    m.signal(libc::SIGTERM);
    let st = m
        .wait_exit(Duration::from_secs(20))
        .expect("daemon did not exit on SIGTERM");
    assert!(st.success(), "{st}:\n{}", m.log_text());
    assert!(!is_mounted(&m.mnt()), "SIGTERM left the mount behind");
}

/// Receives datagrams until one contains `want`; returns every message seen, in order.
fn recv_until(sock: &UnixDatagram, want: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want} within {limit:?}; got {seen:?}");
}

#[test]
fn systemd_hears_ready_only_once_the_mount_answers_and_stopping_on_sigterm() {
    if !can_mount() {
        return;
    }
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
    let log = dir.path().join("daemon.log");
    let url = fx.url();
    let child = foreground(dir.path(), &[url.as_ref()])
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut m = MountGuard {
        dir,
        child: Some(child),
        log,
    };
    // Poll the socket tightly and check the mount the moment READY=1 arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0u8; 4096];
    let mut before = Vec::new();
    let ready = loop {
        assert!(Instant::now() < deadline, "no READY=1: {before:?}\n{}", m.log_text());
        let Ok(n) = sock.recv(&mut buf) else { continue };
        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
        if msg.lines().any(|l| l == "READY=1") {
            break msg;
        }
        before.push(msg);
    };
    assert!(is_mounted(&m.mnt()), "READY=1 arrived before the mount existed");
    assert!(ready.contains("STATUS=Mounted"), "{ready}");
    assert!(before.iter().all(|b| !b.contains("READY")), "{before:?}");
    assert_eq!(read_file(&m.path("hello.txt")), "hello from fetchfs\n");

    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    m.signal(libc::SIGTERM);
    let msgs = recv_until(&sock, "STOPPING=1", Duration::from_secs(20));
    assert!(msgs.iter().all(|x| !x.contains("READY=1")), "{msgs:?}");
    let st = m.wait_exit(Duration::from_secs(20)).expect("no exit after SIGTERM");
    assert!(st.success());
    assert!(!is_mounted(&m.mnt()));
}

#[test]
fn a_secret_from_credentials_directory_is_used_and_never_shown() {
    if !can_mount() {
        return;
    }
    const SECRET: &str = "pw-9f2c1e7b-not-for-logs";
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    std::fs::write(creds.join("files.password"), format!("{SECRET}\n")).unwrap();
    let cfg = fx.config(dir.path(), "username = \"alice\"\n");
    let mut cmd = foreground(dir.path(), &["--config".as_ref(), cfg.as_ref()]);
    cmd.env("CREDENTIALS_DIRECTORY", &creds).env("FETCHFS_LOG", "trace");
    let m = spawn_mounted(dir, cmd);
    assert_eq!(read_file(&m.path("files/hello.txt")), "hello from fetchfs\n");

    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("alice:{SECRET}"));
    let seen = fx.auth_seen.lock().unwrap().clone();
    assert!(
        seen.contains(&format!("Basic {basic}")),
        "the credential was not sent: {seen:?}"
    );
    let pid = m.pid();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let (_, ps, _) = sh("ps -eo pid,args", Duration::from_secs(10));
    let log = m.log_text();
    assert!(log.len() > 1000, "expected a trace log, got:\n{log}");
    for (what, text) in [
        ("log", log),
        ("cmdline", String::from_utf8_lossy(&cmdline).to_string()),
        ("environ", String::from_utf8_lossy(&environ).to_string()),
        ("ps", ps),
    ] {
        assert!(!text.contains(SECRET), "the secret appears in {what}");
        assert!(!text.contains(&basic), "the encoded secret appears in {what}");
    }
}

/// A foreground daemon mounting `fx`, logging at info to its guard's log.
fn mount_logging_info(fx: &Fixture) -> MountGuard {
    let dir = tempfile::tempdir().unwrap();
    let url = fx.url();
    let mut cmd = foreground(dir.path(), &[url.as_ref()]);
    cmd.env("FETCHFS_LOG", "info");
    spawn_mounted(dir, cmd)
}

#[test]
fn a_failed_operation_is_logged_once_with_op_path_and_errno() {
    if !can_mount() {
        return;
    }
    let fx = fixture();
    let m = mount_logging_info(&fx);
    assert!(m.path("sub/denied.bin").exists());
    fx.server.harness.faults.set(FaultSpec {
        fail_every: 1,
        error_status: 403,
        path_contains: "denied".into(),
        ..FaultSpec::default()
    });
    let (ok, _, err) = sh(
        &format!("cat {}", m.path("sub/denied.bin").display()),
        Duration::from_secs(20),
    );
    assert!(!ok);
    assert!(err.contains("Permission denied"), "{err}");
    fx.server.harness.faults.clear();
    let log = m.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("operation failed")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    let l = lines[0];
    assert!(l.contains("op=\"open\"") || l.contains("op=open"), "{l}");
    assert!(l.contains("/sub/denied.bin"), "{l}");
    assert!(l.contains("errno=13"), "{l}");
}

#[test]
fn everyday_tools_and_an_outside_umount_leave_no_warning_in_the_log() {
    // fuser answers ops it has no code for with ENOSYS and a "[Not Implemented]" warning: the
    // first `close` (FLUSH) and `cp` (SEEK_DATA) of every mount printed one, and an outside
    // `umount` ended with "Failed to umount filesystem". A read-only mount has an answer for each.
    if !can_mount() {
        return;
    }
    use std::os::fd::AsRawFd;
    let fx = fixture();
    let mut m = mount_logging_info(&fx);
    let copy = m.dir.path().join("copy.txt");
    let (ok, _, err) = sh(
        &format!(
            "cp {} {} && cat {} >/dev/null && tar cf /dev/null -C {} . && lsattr {} ; true",
            m.path("hello.txt").display(),
            copy.display(),
            m.path("sub/denied.bin").display(),
            m.mnt().display(),
            m.path("hello.txt").display(),
        ),
        Duration::from_secs(20),
    );
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&copy).unwrap(), b"hello from fetchfs\n");
    let f = std::fs::File::open(m.path("hello.txt")).unwrap();
    let fd = f.as_raw_fd();
    // SAFETY: lseek and fsync on a descriptor this test holds open.
    unsafe {
        assert_eq!(libc::lseek(fd, 3, libc::SEEK_DATA), 3);
        assert_eq!(libc::lseek(fd, 3, libc::SEEK_HOLE), 19, "the one hole is at the end");
        assert_eq!(libc::lseek(fd, 19, libc::SEEK_DATA), -1);
        assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::ENXIO));
        assert_eq!(libc::fsync(fd), 0);
    }
    drop(f);
    let st = Command::new("umount").arg(m.mnt()).status().unwrap();
    assert!(st.success());
    assert!(
        m.wait_exit(Duration::from_secs(10)).is_some(),
        "the daemon outlived its mount"
    );
    let log = m.log_text();
    assert!(log.contains("unmounted"), "{log}");
    for bad in ["WARN", "ERROR", "Not Implemented"] {
        assert!(!log.contains(bad), "{bad} in the log:\n{log}");
    }
}

const SYSLOG: &str = "/dev/log";
const JOURNAL_DIR: &str = "/run/systemd/journal";
const JOURNAL: &str = "/run/systemd/journal/socket";

/// The daemon picks its log destination by which sockets exist: tests that create them run
/// one at a time.
static LOG_SOCKETS: Mutex<()> = Mutex::new(());

/// A bound datagram socket standing in for syslog or journald, created only where neither
/// exists (a real one is never intercepted) and removed on drop with any directory it made.
struct FakeLogSocket {
    sock: UnixDatagram,
    path: &'static str,
    made_dir: Option<&'static str>,
}

impl FakeLogSocket {
    fn bind(path: &'static str) -> Option<FakeLogSocket> {
        if Path::new(SYSLOG).exists() || Path::new(JOURNAL).exists() {
            eprintln!("skipping: a real journald or syslog listens here; not intercepting it");
            return None;
        }
        let made_dir = (path == JOURNAL && !Path::new(JOURNAL_DIR).exists()).then_some(JOURNAL_DIR);
        if let Some(d) = made_dir {
            std::fs::create_dir_all(d).unwrap();
        }
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        Some(FakeLogSocket { sock, path, made_dir })
    }

    /// Datagrams until one contains both `a` and `b` (lossy UTF-8), within 10 s.
    fn recv_containing(&self, a: &str, b: &str) -> String {
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                if msg.contains(a) && msg.contains(b) {
                    return msg;
                }
                seen.push(msg);
            }
        }
        panic!("no message with {a:?} and {b:?} on {}: {seen:?}", self.path);
    }
}

impl Drop for FakeLogSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.path);
        if let Some(d) = self.made_dir {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Mounts `fx` in the background (no --foreground, no --log-file) and returns the guard.
fn background_mount(fx: &Fixture, dir: &Path) -> DetachedMount {
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = DetachedMount { mnt: mnt.clone() };
    let out = Command::new(BIN)
        .arg("mount")
        .arg(fx.url())
        .arg(&mnt)
        .env("FETCHFS_LOG", "info")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    m
}

fn unmount_detached(m: &DetachedMount) {
    let (ok, _, err) = sh(&format!("umount {}", m.mnt.display()), Duration::from_secs(20));
    assert!(ok, "{err}");
    assert!(m.wait_daemons_gone(Duration::from_secs(10)));
}

#[test]
fn a_background_mount_logs_to_journald_as_fetchfs_with_the_whole_line() {
    if !can_mount() {
        return;
    }
    let _one = LOG_SOCKETS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(journal) = FakeLogSocket::bind(JOURNAL) else {
        return;
    };
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let m = background_mount(&fx, dir.path());
    let mnt = m.mnt.to_string_lossy().to_string();
    let msg = journal.recv_containing("mounted", &mnt);
    assert!(msg.starts_with("MESSAGE\n"), "{msg:?}");
    assert!(msg.contains("\nPRIORITY=6\n"), "{msg:?}");
    assert!(msg.contains("\nSYSLOG_IDENTIFIER=fetchfs\n"), "{msg:?}");
    // The fields are part of the message, as on stderr.
    assert!(msg.contains(&format!("mountpoint={mnt}")), "{msg:?}");
    unmount_detached(&m);
}

#[test]
fn a_background_mount_logs_to_syslog_as_fetchfs() {
    if !can_mount() {
        return;
    }
    let _one = LOG_SOCKETS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(syslog) = FakeLogSocket::bind(SYSLOG) else {
        return;
    };
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let m = background_mount(&fx, dir.path());
    let mnt = m.mnt.to_string_lossy().to_string();
    let line = syslog.recv_containing("mounted", &mnt);
    // <30> is facility daemon (3) * 8 + info (6).
    assert!(line.starts_with("<30>"), "{line}");
    assert!(line.contains("fetchfs["), "{line}");
    unmount_detached(&m);
}

#[test]
fn metrics_endpoint_reports_a_read_while_it_happens() {
    if !can_mount() {
        return;
    }
    let fx = fixture();
    let big = pseudo_random(32 << 20, 5);
    std::fs::write(fx.data.path().join("big.bin"), &big).unwrap();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let url = fx.url();
    let mut cmd = foreground(dir.path(), &[url.as_ref()]);
    cmd.arg("--metrics-addr").arg(format!("127.0.0.1:{port}"));
    let m = spawn_mounted(dir, cmd);
    let url = format!("http://127.0.0.1:{port}/metrics");
    let scrape = || {
        fx.rt.block_on(async {
            let r = reqwest::get(&url).await.expect("scrape");
            assert_eq!(r.status(), 200);
            let ct = r.headers()["content-type"].to_str().unwrap().to_string();
            assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
            r.text().await.unwrap()
        })
    };
    // Slow the body down so the read is still going when we scrape.
    fx.server.harness.faults.set(FaultSpec {
        stall_after: Some(4 << 20),
        stall_ms: 1500,
        path_contains: "big.bin".into(),
        ..FaultSpec::default()
    });
    let path = m.path("big.bin");
    let reader = std::thread::spawn(move || sh(&format!("md5sum < {}", path.display()), Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(300));
    let during = scrape();
    let still_reading = !reader.is_finished();
    let (ok, sum, err) = reader.join().unwrap();
    assert!(ok, "{err}");
    assert!(sum.starts_with(&md5_hex(&big)));
    assert!(still_reading, "the read finished before the first scrape");
    assert!(
        metric(&during, "fetchfs_open_handles").unwrap() >= 1.0,
        "no open handle during the read:\n{during}"
    );
    fx.server.harness.faults.clear();

    let after = scrape();
    let bytes = metric(&after, "fetchfs_source_bytes_total{source=\"root\"}").unwrap();
    assert!(bytes >= big.len() as f64, "{bytes}");
    assert!(metric(&after, "fetchfs_source_requests_total{source=\"root\",op=\"read\"}").unwrap() >= 1.0);
    assert!(
        metric(
            &after,
            "fetchfs_source_request_duration_seconds_count{source=\"root\",op=\"open\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert!(metric(&after, "fetchfs_fuse_operations_total{op=\"read\"}").unwrap() >= 1.0);
    assert!(metric(&after, "fetchfs_cache_misses_total{tier=\"memory\"}").unwrap() >= 1.0);
    assert!(metric(&after, "fetchfs_cache_memory_budget_bytes").unwrap() > 0.0);
    assert!(metric(&after, "fetchfs_http_requests_total").unwrap() >= 1.0);
    assert_eq!(metric(&after, "fetchfs_open_handles"), Some(0.0));
}

fn check(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).arg("check").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn check_lists_every_source_of_a_good_config_and_exits_zero() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let cfg = fx.config(dir.path(), "");
    let (ok, out, err) = check(&["--config", cfg.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    let row = out.lines().find(|l| l.starts_with("files")).expect(&out);
    let cols: Vec<&str> = row.split_whitespace().collect();
    // name, type, entries (hello.txt and sub/), latency "N ms", status.
    assert_eq!(cols[..3], ["files", "http", "2"], "{out}");
    assert_eq!(cols.last(), Some(&"ok"), "{out}");
    assert!(out.starts_with("SOURCE"), "{out}");
}

#[test]
fn check_fails_on_a_bad_key_and_on_an_unreachable_source() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("typo.toml");
    std::fs::write(&cfg, "[cache]\nmemroy = \"1GiB\"\n").unwrap();
    let (ok, _, err) = check(&["--config", cfg.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("memroy") && err.contains("line 2"), "{err}");

    // Port 1 on 127.0.0.1 refuses connections: the table shows both sources, one failed.
    let dead = format!(
        "[network]\nio_timeout = \"3s\"\nretries = 0\n\n[[source]]\nname = \"good\"\ntype = \"http\"\nurl = \"{}\"\n\n[[source]]\nname = \"dead\"\ntype = \"http\"\nurl = \"http://127.0.0.1:1/data/\"\n",
        fx.url()
    );
    std::fs::write(&cfg, dead).unwrap();
    let t = Instant::now();
    let (ok, out, err) = check(&["--config", cfg.to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(t.elapsed() < Duration::from_secs(20));
    let good = out.lines().find(|l| l.starts_with("good")).expect(&out);
    assert!(good.ends_with("ok"), "{out}");
    let dead = out.lines().find(|l| l.starts_with("dead")).expect(&out);
    assert!(dead.contains("FAILED"), "{out}");
    assert!(err.contains("1 of 2"), "{err}");
}

#[test]
fn completions_and_man_page_are_printed_from_the_cli_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN).args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let s = String::from_utf8_lossy(&out.stdout);
        assert!(s.contains("metrics-addr") && s.contains("mount"), "{shell}");
    }
    let out = Command::new(BIN).arg("man").output().unwrap();
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.contains(".TH fetchfs 1"), "{page}");
    assert!(page.contains("check"));
}

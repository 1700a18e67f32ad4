//! Helpers for tests that mount for real: emulators on 127.0.0.1 in a background runtime, the
//! `fetchfs` binary as a child process, and guards that unmount and kill in `Drop` so nothing is
//! left behind even when a test panics.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_fetchfs");

/// Whether real mounts can run here. Under `CI=true` a missing prerequisite is a failure.
pub fn can_mount() -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    let fuse = Path::new("/dev/fuse").exists();
    if root && fuse {
        return true;
    }
    let why = format!("cannot mount here (root: {root}, /dev/fuse: {fuse})");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}: CI must run mount tests");
    }
    eprintln!("skipping: {why}");
    false
}

/// A tokio runtime that lives as long as the test (emulators run on it).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The plain-HTTP emulator over `root` on 127.0.0.1, and the directory URL that mounts it.
pub fn serve_http(rt: &tokio::runtime::Runtime, root: &Path) -> (fetchfs::emulate::Server, String) {
    let emu = fetchfs::emulate::http::router(root);
    let server = rt
        .block_on(fetchfs::emulate::serve(emu.router, 0, emu.harness))
        .unwrap();
    let url = format!("{}/", server.base_url());
    (server, url)
}

/// The plain-HTTP emulator over a fresh temporary directory, with the switch for how it
/// behaves (no Range, chunked, redirects, auth, ...).
pub struct HttpFixture {
    pub rt: tokio::runtime::Runtime,
    pub data: tempfile::TempDir,
    pub server: fetchfs::emulate::Server,
    pub behaviour: std::sync::Arc<std::sync::Mutex<fetchfs::emulate::http::HttpBehaviour>>,
}

pub fn http_fixture() -> HttpFixture {
    let rt = runtime();
    let data = tempfile::tempdir().unwrap();
    let emu = fetchfs::emulate::http::router(data.path());
    let behaviour = emu.behaviour.clone();
    let server = rt
        .block_on(fetchfs::emulate::serve(emu.router, 0, emu.harness))
        .unwrap();
    HttpFixture {
        rt,
        data,
        server,
        behaviour,
    }
}

impl HttpFixture {
    /// The directory URL that mounts the emulator's root.
    pub fn url(&self) -> String {
        format!("{}/", self.server.base_url())
    }
}

/// A temporary directory tree with deterministic pseudo-random file contents.
pub fn make_tree(
    root: &Path,
    dirs: usize,
    files_per_dir: usize,
    max_size: usize,
    seed: u64,
) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut state = seed | 1;
    for d in 0..dirs {
        let dir = root.join(format!("d{d:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..files_per_dir {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let size = (state as usize) % (max_size + 1);
            let data = pseudo_random(size, state);
            let p = dir.join(format!("f{f:03}.bin"));
            std::fs::write(&p, &data).unwrap();
            out.push((p, data));
        }
    }
    out
}

/// `len` deterministic bytes.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut v = vec![0u8; len];
    for chunk in v.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    v
}

/// A mounted `fetchfs mount ... --foreground` child. Dropping it unmounts and reaps it.
pub struct MountGuard {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl MountGuard {
    /// Mounts with `args` (everything between `mount` and the mountpoint) and waits until the
    /// mountpoint answers.
    pub fn start(args: &[&str]) -> MountGuard {
        Self::try_start(args).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start(args: &[&str]) -> Result<MountGuard, String> {
        Self::try_start_env(args, &[])
    }

    /// [`MountGuard::start`] with extra environment variables for the daemon (e.g.
    /// `FETCHFS_LOG=trace`), set without touching the test process's environment.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> MountGuard {
        Self::try_start_env(args, env).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start_env(args: &[&str], env: &[(&str, &str)]) -> Result<MountGuard, String> {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let log = dir.path().join("daemon.log");
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("mount").args(args).arg(&mnt).arg("--foreground");
        cmd.env(
            "FETCHFS_LOG",
            std::env::var("FETCHFS_LOG").unwrap_or_else(|_| "info".into()),
        );
        cmd.envs(env.iter().copied());
        cmd.stdout(Stdio::null()).stderr(logf);
        let child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
        let mut g = MountGuard {
            dir,
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if is_mounted(&g.mnt()) {
                return Ok(g);
            }
            if let Some(st) = g.child.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(&g.log).unwrap_or_default();
                g.child = None;
                return Err(format!("daemon exited with {st} before mounting:\n{log}"));
            }
            if Instant::now() > deadline {
                return Err(format!("mount did not appear within 30 s:\n{}", g.log_text()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt().join(rel)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Waits for the daemon to exit (after an unmount or a signal); returns its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Some(st) = c.try_wait().unwrap()
            {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let mnt = self.mnt();
        if is_mounted(&mnt) {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg(&mnt)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&mnt)
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&mnt) {
            let _ = Command::new("umount").arg("-l").arg(&mnt).status();
        }
    }
}

/// Whether `path` is a mountpoint (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .any(|l| l.split(' ').nth(4).map(|p| p.replace("\\040", " ")) == Some(want.to_string_lossy().to_string()))
}

/// Runs a shell command, returning (status ok, stdout, stderr), killed after `limit`.
pub fn sh(cmd: &str, limit: Duration) -> (bool, String, String) {
    let out = Command::new("timeout")
        .arg("-k")
        .arg("2")
        .arg(format!("{}", limit.as_secs().max(1)))
        .arg("bash")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run bash");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// md5 of a local byte slice, hex.
pub fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}

/// `cp -r SRC/. DEST/` out of a mount, then checks with `md5sum` that the copy holds exactly
/// `files` (paths relative to `origin`) with their bytes.
pub fn cp_r_and_check_md5(m: &MountGuard, src: &Path, files: &[(PathBuf, Vec<u8>)], origin: &Path, limit: Duration) {
    let out = tempfile::tempdir().unwrap();
    let (ok, _, err) = sh(&format!("cp -r {}/. {}/", src.display(), out.path().display()), limit);
    assert!(ok, "cp failed: {err}\n{}", m.log_text());
    let (ok, sums, _) = sh(
        &format!("cd {} && find . -type f | sort | xargs md5sum", out.path().display()),
        Duration::from_secs(30),
    );
    assert!(ok);
    assert_eq!(sums.lines().count(), files.len());
    for (path, data) in files {
        let rel = path.strip_prefix(origin).unwrap().display().to_string();
        let line = sums
            .lines()
            .find(|l| l.ends_with(&format!("./{rel}")))
            .unwrap_or_else(|| panic!("{rel} missing"));
        assert!(line.starts_with(&md5_hex(data)), "{rel}: {line}");
    }
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One scrape of a daemon's Prometheus endpoint on 127.0.0.1:`port` (HTTP/1.0: the connection
/// closes after it).
pub fn scrape_metrics(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of the sample `name` (exact, labels included) in a scrape.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
}

/// The blocks in a disk cache directory, as `fetchfs cache stats --dir DIR` counts them.
pub fn blocks_on_disk(dir: &str) -> u64 {
    let (ok, stats, err) = sh(&format!("{BIN} cache stats --dir {dir}"), Duration::from_secs(10));
    assert!(ok, "{err}");
    stats
        .lines()
        .find_map(|l| l.strip_prefix("blocks"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no block count in: {stats}"))
}

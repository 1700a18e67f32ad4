//! Mounting, serving and unmounting: the daemon's life.
//!
//! `fetchfs mount` without `--foreground` starts itself again in the foreground as a detached
//! child (new session, stdio on /dev/null) and waits on a pipe until the child reports either
//! "ready" (the mountpoint answered a `stat` through FUSE) or the sentence explaining why it
//! could not mount; the parent then exits 0 or prints that sentence and exits 1. This is how
//! `mount-s3` and `s3fs` behave, and avoids forking a process that already runs threads.
//!
//! In the foreground the daemon: checks the mountpoint, builds each source and asks for its
//! root (so bad credentials and unreachable servers fail the mount, not a later read), mounts
//! with fuser, raises the bdi readahead when permitted, reports readiness (pipe and/or
//! systemd `READY=1`), and then waits for SIGINT/SIGTERM (unmount, lazily if busy) or for the
//! session to end (`umount`/`fusermount3 -u`).

use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{Config as FuseConfig, MountOption, SessionACL};

use crate::config::Config;
use crate::fs::{CoreConfig, FsCore, Mounted};
use crate::provider::BuildContext;

/// Environment variable carrying the readiness pipe's write end to the detached child.
pub const READY_FD_ENV: &str = "FETCHFS_READY_FD";

/// A mount failure: one sentence for the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MountError(pub String);

impl From<crate::config::ConfigError> for MountError {
    fn from(e: crate::config::ConfigError) -> Self {
        MountError(e.0)
    }
}

/// What to mount where.
pub struct MountRequest {
    pub config: Config,
    pub mountpoint: PathBuf,
    /// The single source is the mount root (quick form `fetchfs mount URL MNT`).
    pub single_root: bool,
    /// Label for `mount`/`df` (`fetchfs:<what>`).
    pub fsname: String,
}

/// Checks that `mp` can be mounted on: exists, is a directory, is not already a mount.
pub fn check_mountpoint(mp: &Path) -> Result<PathBuf, MountError> {
    let meta = std::fs::metadata(mp).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => MountError(format!("mountpoint {} does not exist", mp.display())),
        std::io::ErrorKind::NotConnected => dead_mount(mp),
        _ => MountError(format!("cannot use mountpoint {}: {e}", mp.display())),
    })?;
    if !meta.is_dir() {
        return Err(MountError(format!("mountpoint {} is not a directory", mp.display())));
    }
    let canon = std::fs::canonicalize(mp)
        .map_err(|e| MountError(format!("cannot resolve mountpoint {}: {e}", mp.display())))?;
    if is_mountpoint(&canon) {
        // The kernel answers `stat` of a dead mount's root from cached attributes until they
        // expire; listing it reaches the (gone) daemon and tells a dead mount apart.
        if probe_errno(&canon) == Some(libc::ENOTCONN) {
            return Err(dead_mount(mp));
        }
        return Err(MountError(format!(
            "mountpoint {} is busy: something is already mounted there",
            canon.display()
        )));
    }
    Ok(canon)
}

fn dead_mount(mp: &Path) -> MountError {
    MountError(format!(
        "mountpoint {} is a dead FUSE mount (Transport endpoint is not connected); run: fusermount3 -u -z {}",
        mp.display(),
        mp.display()
    ))
}

/// The errno of listing `dir`, from a thread given 2 s: a live but stuck mount must not hang
/// the command that only wanted to know whether it is dead.
fn probe_errno(dir: &Path) -> Option<i32> {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_dir(&dir).err().and_then(|e| e.raw_os_error()));
    });
    rx.recv_timeout(Duration::from_secs(2)).ok().flatten()
}

/// Whether `path` (canonical) is listed in /proc/self/mountinfo.
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .any(|l| l.split(' ').nth(4).map(unescape_mountinfo).as_deref() == Some(&*want))
}

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Opens (and locks) the disk tier when `[cache] dir` is set.
pub fn open_disk(cfg: &Config) -> Result<Option<Arc<crate::cache::disk::DiskCache>>, MountError> {
    let Some(dir) = &cfg.cache.dir else { return Ok(None) };
    crate::cache::disk::DiskCache::open(dir, cfg.cache.disk, cfg.cache.block_size)
        .map(|d| Some(Arc::new(d)))
        .map_err(|e| MountError(e.to_string()))
}

/// Builds every source of `cfg` and fetches its root.
pub async fn build_sources(cfg: &Config) -> Result<Vec<Mounted>, MountError> {
    let ctx = BuildContext::from_config(cfg);
    let mut out = Vec::new();
    for sc in &cfg.sources {
        let name = sc.name().to_string();
        let source = crate::metrics::source::Metered::wrap(&name, crate::provider::build(sc, &ctx).await?);
        let limit = cfg.http.op_timeout + Duration::from_secs(5);
        let root = match tokio::time::timeout(limit, source.root()).await {
            Err(_) => {
                return Err(MountError(format!(
                    "source '{name}' ({}) did not answer within {limit:?}",
                    sc.kind()
                )));
            }
            Ok(Err(e)) => return Err(MountError(format!("source '{name}' ({}): {e}", sc.kind()))),
            Ok(Ok(r)) => r,
        };
        out.push(Mounted { name, source, root });
    }
    Ok(out)
}

/// Sends one line to the parent waiting on the readiness pipe (if any) and closes it.
fn report(ready_fd: Option<RawFd>, line: &str) {
    if let Some(fd) = ready_fd {
        // SAFETY: the fd was passed to us by our parent for exactly this purpose, used once.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        let _ = writeln!(f, "{line}");
    }
}

fn ready_fd_from_env() -> Option<RawFd> {
    let fd = std::env::var(READY_FD_ENV).ok()?.parse().ok()?;
    // SAFETY: removing our own variable before any thread reads the environment concurrently.
    unsafe { std::env::remove_var(READY_FD_ENV) };
    Some(fd)
}

/// Runs a mount in this process until it is unmounted or signalled.
pub fn run_foreground(req: MountRequest) -> Result<(), MountError> {
    let ready_fd = ready_fd_from_env();
    match serve(req, ready_fd) {
        Ok(()) => Ok(()),
        Err(e) => {
            report(ready_fd, &format!("ERR {e}"));
            Err(e)
        }
    }
}

/// Makes every block-sized buffer its own `mmap`, returned to the kernel when freed. glibc
/// otherwise raises its mmap threshold after the first such free and serves later 1 MiB
/// blocks from per-thread arenas, whose freed space is not returned: measured, the daemon's
/// peak RSS then exceeded the cache budget by 100+ MiB after one sequential read of 1 GiB.
/// Fixing the threshold keeps RSS at what the cache holds (`cached + reserved`).
pub fn tune_allocator() {
    // SAFETY: mallopt only adjusts allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
}

/// Longest the daemon waits at exit for queued disk-cache writes (32 blocks even at 10 MB/s).
const DISK_FLUSH_LIMIT: Duration = Duration::from_secs(10);

fn serve(req: MountRequest, ready_fd: Option<RawFd>) -> Result<(), MountError> {
    tune_allocator();
    let mountpoint = check_mountpoint(&req.mountpoint)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fetchfs-io")
        .enable_all()
        .build()
        .map_err(|e| MountError(format!("cannot start the I/O runtime: {e}")))?;
    let mut signals = rt.block_on(async { Signals::install() })?;
    let cfg = &req.config;
    crate::notify::status("Reaching the sources");
    let disk = open_disk(cfg)?;
    // An unreachable source is retried for up to ~30 s before the mount fails; a stop asked
    // for meanwhile (Ctrl-C, `systemctl stop`) ends it at once.
    let sources = rt.block_on(async {
        tokio::select! {
            r = build_sources(cfg) => r,
            _ = signals.any() => Err(MountError("stopped by a signal while reaching the sources; nothing was mounted".into())),
        }
    })?;
    let core = FsCore::with_disk(CoreConfig::from_config(cfg), sources, req.single_root, disk);
    if let Some(addr) = cfg.metrics_addr {
        crate::metrics::prom::start(&rt, addr, core.clone())
            .map_err(|e| MountError(format!("cannot serve metrics on {addr}: {e}")))?;
    }
    let session = mount_core(core.clone(), &rt, &mountpoint, cfg, &req.fsname)?;
    let result = rt.block_on(async {
        after_mount(&mountpoint, cfg).await?;
        report(ready_fd, "READY");
        crate::notify::ready(&format!("Mounted {}", mountpoint.display()));
        tracing::info!(mountpoint = %mountpoint.display(), "mounted");
        wait_for_end(session, &mountpoint, signals).await
    });
    crate::notify::stopping();
    // Blocks downloaded before the unmount reach the disk tier, so a remount finds them.
    if !core.cache().flush_disk(DISK_FLUSH_LIMIT) {
        tracing::warn!("the disk cache writer did not finish within {DISK_FLUSH_LIMIT:?}; some blocks were not stored");
    }
    // Give in-flight replies a moment, then stop the runtime without waiting on stuck tasks.
    rt.shutdown_timeout(Duration::from_secs(2));
    result
}

/// A running FUSE session with its unmount switch. Dropping it unmounts (so a panic or an
/// early return never leaves a dead mount behind).
pub struct Running {
    unmounter: fuser::SessionUnmounter,
    done: tokio::sync::oneshot::Receiver<std::io::Result<()>>,
    mountpoint: PathBuf,
    finished: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.finished {
            unmount(&mut self.unmounter, &self.mountpoint);
        }
    }
}

/// Mounts `core` at `mountpoint` and starts serving it on FUSE threads.
pub fn mount_core(
    core: Arc<FsCore>,
    rt: &tokio::runtime::Runtime,
    mountpoint: &Path,
    cfg: &Config,
    fsname: &str,
) -> Result<Running, MountError> {
    let mut fc = FuseConfig::default();
    fc.mount_options = vec![
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::DefaultPermissions,
        MountOption::FSName(fsname.to_string()),
        MountOption::Subtype("fetchfs".to_string()),
    ];
    if cfg.auto_unmount {
        // fusermount3 mounts and then stays as a watcher: when this process dies (even by
        // SIGKILL) its socket closes and the watcher unmounts, so no dead mount is left.
        fc.mount_options.push(MountOption::AutoUnmount);
    }
    fc.acl = if cfg.allow_other {
        SessionACL::All
    } else if cfg.auto_unmount {
        // fusermount3 only takes auto_unmount with allow_other/allow_root; with allow_root
        // fuser itself answers EACCES to everyone but the owner and root, as without it.
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    // Requests are only parsed and handed to tokio on these threads; two keep the kernel queue
    // drained while one is busy copying a 1 MiB reply. Both read the one session descriptor
    // (no clone_fd): the kernel finds a request only on the descriptor that read it, and splice
    // streams answer READs on a duplicate of that descriptor (crate::splice).
    fc.n_threads = Some(2);
    fc.clone_fd = false;
    let mut fs = crate::fuse::FuseFs::new(core.clone(), rt.handle().clone());
    // Splice is never used with a disk tier (crate::splice, "When"): full-size READs then.
    if cfg.cache.splice && cfg.cache.dir.is_none() {
        match crate::splice::pipe_capacity() {
            // A reply must fit one pipe: READs of 1 MiB need a 2 MiB pipe (socket buffers of a
            // page or less each, plus the header's); an unprivileged 1 MiB pipe takes 512 KiB.
            Some(cap) if cap >= crate::splice::FULL_READ_PIPE => {}
            Some(_) => fs = fs.with_max_read(512 << 10),
            None => tracing::info!("splice streaming off: no pipe of 1 MiB can be made"),
        }
    }
    let mut session = fuser::Session::new(fs, mountpoint, &fc).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::EPERM) || e.kind() == std::io::ErrorKind::PermissionDenied {
            " (run as root, or install fuse3 so fusermount3 can mount for you; --allow-other needs user_allow_other in /etc/fuse.conf)"
        } else if e.kind() == std::io::ErrorKind::NotFound {
            " (is /dev/fuse present? install fuse3)"
        } else {
            ""
        };
        MountError(format!("cannot mount at {}: {e}{hint}", mountpoint.display()))
    })?;
    if cfg.cache.splice {
        use std::os::fd::AsFd;
        match session.as_fd().try_clone_to_owned() {
            Ok(fd) => core.set_fuse_dev(crate::splice::FuseDev::new(fd)),
            Err(e) => tracing::warn!("splice streaming off: cannot duplicate /dev/fuse: {e}"),
        }
    }
    let notifier = session.notifier();
    core.set_invalidate(Arc::new(move |ino| {
        // 0, 0: drop every cached page and the attributes.
        let _ = notifier.inval_inode(fuser::INodeNo(ino), 0, 0);
    }));
    let unmounter = session.unmount_callable();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || {
            let r = session.run();
            let _ = tx.send(r);
        })
        .map_err(|e| MountError(format!("cannot start the FUSE session thread: {e}")))?;
    Ok(Running {
        unmounter,
        done: rx,
        mountpoint: mountpoint.to_path_buf(),
        finished: false,
    })
}

/// Waits until the mount answers, then tunes the kernel readahead.
pub async fn after_mount(mountpoint: &Path, cfg: &Config) -> Result<(), MountError> {
    let mp = mountpoint.to_path_buf();
    let meta = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || std::fs::metadata(&mp)),
    )
    .await
    .map_err(|_| {
        MountError(format!(
            "the mount at {} did not answer within 30 s",
            mountpoint.display()
        ))
    })?
    .map_err(|e| MountError(format!("mount check failed: {e}")))?
    .map_err(|e| MountError(format!("the mount at {} does not answer: {e}", mountpoint.display())))?;
    if cfg.cache.read_ahead > 0 {
        set_read_ahead(&meta, cfg.cache.read_ahead);
    }
    Ok(())
}

/// Raises `/sys/class/bdi/<maj:min>/read_ahead_kb` (root only; silently skipped otherwise).
fn set_read_ahead(meta: &std::fs::Metadata, bytes: u64) {
    use std::os::unix::fs::MetadataExt;
    let dev = meta.dev();
    let (maj, min) = (libc::major(dev), libc::minor(dev));
    let path = format!("/sys/class/bdi/{maj}:{min}/read_ahead_kb");
    match std::fs::write(&path, format!("{}", bytes / 1024)) {
        Ok(()) => tracing::debug!(%path, kb = bytes / 1024, "raised kernel readahead"),
        Err(e) => tracing::debug!(%path, error = %e, "could not raise kernel readahead (needs root)"),
    }
}

/// SIGTERM, SIGINT and SIGHUP, caught from before the mount exists: a signal that arrives while
/// mounting must still lead to a clean unmount, not kill the daemon with a dead mount behind.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (inside a tokio runtime).
    pub fn install() -> Result<Signals, MountError> {
        use tokio::signal::unix::{SignalKind, signal};
        let get = |k: SignalKind, n: &str| signal(k).map_err(|e| MountError(format!("cannot watch {n}: {e}")));
        Ok(Signals {
            term: get(SignalKind::terminate(), "SIGTERM")?,
            int: get(SignalKind::interrupt(), "SIGINT")?,
            hup: get(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Waits for any of them.
    pub async fn any(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

/// Serves until SIGINT/SIGTERM (then unmounts) or until the session ends (external umount).
pub async fn wait_for_end(mut running: Running, mountpoint: &Path, mut signals: Signals) -> Result<(), MountError> {
    let ended = tokio::select! {
        r = &mut running.done => {
            running.finished = true;
            Some(r)
        }
        _ = signals.any() => None,
    };
    if let Some(r) = ended {
        tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
        return match r {
            Ok(Ok(())) | Err(_) => Ok(()),
            Ok(Err(e)) => Err(MountError(format!("FUSE session ended with an error: {e}"))),
        };
    }
    tracing::info!(mountpoint = %mountpoint.display(), "signal received, unmounting");
    unmount(&mut running.unmounter, mountpoint);
    running.finished = true;
    let _ = tokio::time::timeout(Duration::from_secs(10), &mut running.done).await;
    Ok(())
}

/// Unmounts; falls back to a lazy unmount when the mount is busy (an open file, a shell cwd).
pub fn unmount(unmounter: &mut fuser::SessionUnmounter, mountpoint: &Path) {
    if let Err(e) = unmounter.unmount() {
        tracing::warn!(error = %e, "unmount failed, detaching lazily");
        if let Ok(c) = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// `fetchfs mount` without `--foreground`: re-executes this binary in the foreground as a
/// detached child and waits for it to report readiness.
pub fn run_background(args: &[std::ffi::OsString]) -> Result<(), MountError> {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(MountError(format!(
            "cannot create a pipe: {}",
            std::io::Error::last_os_error()
        )));
    }
    let (rfd, wfd) = (fds[0], fds[1]);
    let exe = std::env::current_exe().map_err(|e| MountError(format!("cannot find my own executable: {e}")))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .arg("--foreground")
        .env(READY_FD_ENV, wfd.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            libc::close(rfd);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| MountError(format!("cannot start the daemon: {e}")))?;
    // SAFETY: closing our copy of the write end so EOF arrives if the child dies.
    unsafe { libc::close(wfd) };
    // SAFETY: we own rfd.
    let reader = BufReader::new(unsafe { std::fs::File::from_raw_fd(rfd) });
    let line = reader.lines().next();
    match line {
        Some(Ok(l)) if l == "READY" => Ok(()),
        Some(Ok(l)) => Err(MountError(l.strip_prefix("ERR ").unwrap_or(&l).to_string())),
        _ => Err(MountError(format!(
            "the daemon (pid {}) exited before the mount was ready; run with --foreground to see why",
            child.id()
        ))),
    }
}

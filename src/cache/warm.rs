//! `fetchfs cache warm PATH...`: read files through the mount so the daemon caches them.
//!
//! Reading a file through the mount is the one way to fill every tier (kernel page cache, memory
//! and disk) without a side channel to the daemon, and it exercises the same path a later reader
//! takes. Of a file longer than `crate::fs::RELEASE_AFTER` the memory tier keeps only the last
//! blocks read (the page cache and the disk tier hold the rest). The walker:
//!
//! 1. walks every PATH (a file or a whole tree) once to list regular files and their sizes, so
//!    the progress bar has a total and an ETA;
//! 2. reads each file to its end with `threads` readers pulling from one shared list, counting
//!    the bytes actually read (a file that changed size counts what was there).
//!
//! Symlinks inside a tree are not followed: one pointing out of the tree would warm something
//! else, and one pointing inside it names a file the walk reaches anyway. A PATH given on the
//! command line is followed (the user named it). A file reached twice (overlapping PATHs, hard
//! links) is read once. An error (unreadable directory, file that vanished, EIO from the daemon)
//! is reported with its path and counted; it never stops the walk.

use std::collections::HashSet;
use std::fmt::Display;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Read size: the largest READ the kernel sends to a FUSE daemon, so each `read` is one request.
const READ_CHUNK: usize = 1 << 20;

/// What one warm run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WarmReport {
    /// Files read to their end.
    pub files: u64,
    /// Bytes read (from files read fully or partly).
    pub bytes: u64,
    /// Files or directories that failed; each was reported.
    pub errors: u64,
}

/// Reads every regular file under `paths` with `threads` parallel readers (at least one),
/// showing a progress bar on stderr when `progress` is set. Per-file errors are reported on
/// stderr and counted, never returned; an `Err` means the readers could not be started.
pub fn warm(paths: &[PathBuf], threads: usize, progress: bool) -> io::Result<WarmReport> {
    let bar = if progress {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(spinner_style());
    bar.set_message("listing files");
    if progress {
        bar.enable_steady_tick(Duration::from_millis(200));
    }
    let report = Reporter {
        bar: bar.clone(),
        errors: AtomicU64::new(0),
    };

    let files = list_files(paths, &report);
    let total: u64 = files.iter().map(|(_, size)| size).sum();
    bar.set_length(total);
    bar.set_style(bar_style());
    bar.set_message(format!("{} files", files.len()));

    let next = AtomicUsize::new(0);
    let done = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let spawn_error = Mutex::new(None);
    std::thread::scope(|s| {
        for n in 0..threads.max(1) {
            let worker = || {
                let mut buf = vec![0u8; READ_CHUNK];
                while let Some((path, _)) = files.get(next.fetch_add(1, Ordering::Relaxed)) {
                    match read_to_end(path, &mut buf, &bar, &bytes) {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => report.error(path, &e),
                    }
                }
            };
            if let Err(e) = std::thread::Builder::new()
                .name(format!("warm-{n}"))
                .spawn_scoped(s, worker)
            {
                *spawn_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                break;
            }
        }
    });
    bar.finish_and_clear();
    // Without any reader nothing was read; with some, the others took over their share.
    if let Some(e) = spawn_error.into_inner().unwrap_or_else(|p| p.into_inner())
        && done.load(Ordering::Relaxed) == 0
        && !files.is_empty()
    {
        return Err(e);
    }
    Ok(WarmReport {
        files: done.into_inner(),
        bytes: bytes.into_inner(),
        errors: report.errors.into_inner(),
    })
}

/// Regular files under `paths` with their sizes, each (device, inode) once.
fn list_files(paths: &[PathBuf], report: &Reporter) -> Vec<(PathBuf, u64)> {
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    for root in paths {
        for entry in walkdir::WalkDir::new(root).follow_links(false).follow_root_links(true) {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let path = e.path().unwrap_or(root).to_path_buf();
                    // The io::Error alone: walkdir's own message repeats the path.
                    match e.io_error() {
                        Some(io) => report.error(&path, io),
                        None => report.error(&path, &e),
                    }
                    continue;
                }
            };
            if !entry.file_type().is_file() {
                continue;
            }
            match entry.metadata() {
                Ok(meta) => {
                    if seen.insert((meta.dev(), meta.ino())) {
                        files.push((entry.into_path(), meta.len()));
                    }
                }
                Err(e) => report.error(entry.path(), e.io_error().map_or(&e as &dyn Display, |io| io)),
            }
        }
    }
    files
}

fn read_to_end(path: &std::path::Path, buf: &mut [u8], bar: &ProgressBar, bytes: &AtomicU64) -> io::Result<()> {
    let mut file = File::open(path)?;
    loop {
        match file.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
                bar.inc(n as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Prints per-file errors above the progress bar and counts them.
struct Reporter {
    bar: ProgressBar,
    errors: AtomicU64,
}

impl Reporter {
    fn error(&self, path: &std::path::Path, e: &dyn Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let line = format!("fetchfs: cannot warm {}: {e}", path.display());
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.suspend(|| eprintln!("{line}"));
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {msg}").expect("valid template")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}")
        .expect("valid template")
        .progress_chars("=> ")
}

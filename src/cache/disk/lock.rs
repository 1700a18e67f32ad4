//! The exclusive lock that keeps two daemons out of one cache directory.
//!
//! `flock(2)` on `<dir>/lock` (through `File::try_lock`): the kernel drops it when the process
//! dies, however it dies, so a crashed daemon never leaves a stale lock behind. The holder writes
//! its PID into the file only so the refusal can name it; the PID is a hint, the lock is the
//! truth. `flock` locks belong to the open file description, so a second `open` in the same
//! process is refused too (which is what the tests rely on).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::DiskError;
use super::layout::LOCK_FILE;

/// Held for as long as a [`super::DiskCache`] (or a `clear`) uses the directory.
#[derive(Debug)]
pub struct DirLock {
    file: File,
}

impl DirLock {
    /// Takes the lock of `dir` (which must exist) or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, DiskError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| DiskError::io("open the lock file", &path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(DiskError::InUse {
                    dir: dir.to_path_buf(),
                    pid: read_pid(&mut file),
                });
            }
            Err(TryLockError::Error(e)) => return Err(DiskError::io("lock", &path, e)),
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(|e| DiskError::io("write the lock file", &path, e))?;
        Ok(DirLock { file })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Forget our PID so a later refusal never names a process that no longer holds the lock;
        // the lock itself goes with the file descriptor.
        let _ = self.file.set_len(0);
    }
}

/// The PID written into `dir`'s lock file, if the file names a live process. Does not lock.
pub fn holder(dir: &Path) -> Option<u32> {
    let mut file = File::open(dir.join(LOCK_FILE)).ok()?;
    let pid = read_pid(&mut file)?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.take(32).read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

//! `fetchfs cache stats|clear|warm`: the disk tier from the outside.
//!
//! `stats` and `clear` work on the directory named by `--dir` or by `[cache] dir` of
//! `--config`, whether or not a daemon is running (`clear` refuses while one holds the lock).
//! `warm` reads files or whole trees under a mount with a progress bar, which fills the
//! daemon's caches: the way to prepare a dataset before a training run.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::cache::disk::DiskCache;

/// `fetchfs cache`.
#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub action: CacheAction,
}

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// Size, blocks and hit ratio of the disk cache.
    Stats(CacheDirArgs),
    /// Delete every cached block (refused while a daemon uses the cache).
    Clear(CacheDirArgs),
    /// Read files or trees under a mount so the daemon caches them (progress bar on stderr).
    Warm {
        /// Files or directories under a fetchfs mount.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Parallel readers.
        #[arg(long, default_value_t = 4)]
        threads: usize,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
}

/// Which cache directory.
#[derive(Debug, Args)]
pub struct CacheDirArgs {
    /// The config file whose `[cache] dir` to use.
    #[arg(short, long, value_name = "FILE", conflicts_with = "dir")]
    pub config: Option<PathBuf>,
    /// The cache directory itself.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

impl CacheDirArgs {
    fn resolve(&self) -> Result<PathBuf, String> {
        if let Some(d) = &self.dir {
            return Ok(d.clone());
        }
        let Some(path) = &self.config else {
            return Err("give --dir DIR or --config FILE (with a [cache] dir)".into());
        };
        let file = crate::config::ConfigFile::load(path).map_err(|e| e.to_string())?;
        let base = path.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        let cfg = file.validate(&base).map_err(|e| e.to_string())?;
        cfg.cache
            .dir
            .ok_or_else(|| format!("{} has no [cache] dir: there is no disk cache", path.display()))
    }
}

fn human(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

/// Runs a `fetchfs cache` command, writing its report to stdout.
pub fn run(args: &CacheArgs) -> Result<(), String> {
    match &args.action {
        CacheAction::Stats(d) => {
            let dir = d.resolve()?;
            let s = DiskCache::stats_offline(&dir).map_err(|e| e.to_string())?;
            println!("cache dir   {}", dir.display());
            println!("size        {} ({} bytes)", human(s.bytes), s.bytes);
            println!("blocks      {}", s.blocks);
            match s.daemon_pid {
                Some(pid) => println!("in use by   pid {pid}"),
                None => println!("in use by   no daemon"),
            }
            let total = s.hits + s.misses;
            if total > 0 {
                println!(
                    "hit ratio   {:.1}% ({} hits, {} misses)",
                    100.0 * s.hits as f64 / total as f64,
                    s.hits,
                    s.misses
                );
            } else {
                println!("hit ratio   n/a (hits and misses are counted by the running daemon: see its /metrics)");
            }
            Ok(())
        }
        CacheAction::Clear(d) => {
            let dir = d.resolve()?;
            let freed = DiskCache::clear(&dir).map_err(|e| e.to_string())?;
            println!("cleared {} ({} freed)", dir.display(), human(freed));
            Ok(())
        }
        CacheAction::Warm { paths, threads, quiet } => {
            let r = crate::cache::warm::warm(paths, (*threads).max(1), !quiet).map_err(|e| e.to_string())?;
            println!("warmed {} files, {} ({} errors)", r.files, human(r.bytes), r.errors);
            if r.errors > 0 {
                Err(format!("{} files or directories could not be read", r.errors))
            } else {
                Ok(())
            }
        }
    }
}

//! Command line: clap structs only. [`MountArgs::to_config`] turns flags and `-o` options into
//! a validated [`crate::config::Config`]; nothing below this module sees clap.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::{ConfigError, ConfigFile, parse_duration, parse_size};

/// Mount remote file-download APIs as read-only directories.
#[derive(Debug, Parser)]
#[command(name = "fetchfs", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing EnvFilter like `fetchfs=debug`);
    /// FETCHFS_LOG overrides it.
    #[arg(long, global = true, value_name = "FILTER", help_heading = "Logging")]
    pub log_level: Option<String>,
    /// Write logs to this file instead of stderr.
    #[arg(long, global = true, value_name = "FILE", help_heading = "Logging")]
    pub log_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a URL, or every [[source]] of a config file, at MOUNTPOINT.
    Mount(MountArgs),
    /// Start the built-in emulators over sample files and mount them (try this first).
    Demo(DemoArgs),
    /// Serve a provider emulator on 127.0.0.1 (for tests, demos and your own CI).
    Emulate(EmulateArgs),
    /// Validate a config file, then reach and list every source (run this when a mount fails).
    Check(crate::check::CheckArgs),
    /// mount(8) helper: `CONFIG|URL MOUNTPOINT -o OPTIONS` (what /sbin/mount.fuse.fetchfs runs).
    MountHelper(crate::helper::MountHelperArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    Completions(crate::manual::CompletionsArgs),
    /// Print the man page (roff) to stdout.
    Man(crate::manual::ManArgs),
    /// Inspect, clear or warm the disk cache.
    Cache(crate::cache_cmd::CacheArgs),
}

/// `fetchfs mount`.
#[derive(Debug, Args, Clone)]
pub struct MountArgs {
    /// `URL MOUNTPOINT` (a directory URL ending in / or a file URL), or just `MOUNTPOINT` with --config.
    #[arg(value_name = "URL|MOUNTPOINT", num_args = 1..=2, required = true)]
    pub targets: Vec<String>,
    /// Mount every [[source]] of this TOML file, each as MOUNTPOINT/<name>.
    #[arg(short, long, value_name = "FILE", help_heading = "Sources")]
    pub config: Option<PathBuf>,
    /// Stay attached to the terminal (systemd, debugging); otherwise return once mounted.
    #[arg(short, long, help_heading = "Mount")]
    pub foreground: bool,
    /// Mount options, comma separated (as in fstab): allow_other, auto_unmount, uid=N, gid=N, ro,
    /// memory=SIZE, block_size=SIZE, read_ahead=SIZE, ttl=DUR, io_timeout=DUR.
    #[arg(short = 'o', value_name = "OPTIONS", help_heading = "Mount")]
    pub options: Vec<String>,
    /// Let other users (and root) access the mount (needs user_allow_other for non-root).
    #[arg(long, help_heading = "Access")]
    pub allow_other: bool,
    /// Owner of every file and directory (default: the mounting user).
    #[arg(long, help_heading = "Access")]
    pub uid: Option<u32>,
    /// Group of every file and directory (default: the mounting user's group).
    #[arg(long, help_heading = "Access")]
    pub gid: Option<u32>,
    /// Byte budget of the RAM block cache and prefetch (e.g. 256MiB).
    #[arg(long, value_name = "SIZE", help_heading = "Cache")]
    pub cache_memory: Option<String>,
    /// Block size of the cache (a power of two, e.g. 1MiB).
    #[arg(long, value_name = "SIZE", help_heading = "Cache")]
    pub block_size: Option<String>,
    /// Kernel readahead set on the mount when running as root (0 keeps the kernel's).
    #[arg(long, value_name = "SIZE", help_heading = "Cache")]
    pub read_ahead: Option<String>,
    /// Directory of the persistent disk cache (kept across restarts; locked by one daemon).
    #[arg(long, value_name = "DIR", help_heading = "Cache")]
    pub cache_dir: Option<PathBuf>,
    /// Hard byte cap of the disk cache (e.g. 10GiB).
    #[arg(long, value_name = "SIZE", help_heading = "Cache")]
    pub disk_cache: Option<String>,
    /// How long attributes and listings are trusted (e.g. 60s).
    #[arg(long, value_name = "DURATION", help_heading = "Cache")]
    pub ttl: Option<String>,
    /// Longest a read waits for the network, retries included, before failing with EIO.
    #[arg(long, value_name = "DURATION", help_heading = "Network")]
    pub io_timeout: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9101).
    #[arg(long, value_name = "IP:PORT", help_heading = "Monitoring")]
    pub metrics_addr: Option<String>,
}

/// `fetchfs demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to mount (created if missing).
    #[arg(default_value = "/tmp/fetchfs-demo")]
    pub mountpoint: PathBuf,
    /// Mount, print what is there, unmount and exit (for scripts and CI).
    #[arg(long)]
    pub once: bool,
}

/// `fetchfs emulate`.
#[derive(Debug, Args)]
pub struct EmulateArgs {
    #[command(subcommand)]
    pub provider: EmulateProvider,
}

#[derive(Debug, Subcommand)]
pub enum EmulateProvider {
    /// Plain HTTP server with Range and an nginx-style autoindex.
    Http {
        #[command(flatten)]
        common: EmuCommon,
        /// Listing style: nginx (exact sizes), apache (rounded sizes), python (no sizes).
        #[arg(long, value_enum, default_value = "nginx")]
        style: crate::emulate::http::ListingStyle,
    },
    /// Apache Doris FE small-file manager: DIR/<db>/<catalog>/<file>.
    Doris {
        #[command(flatten)]
        common: EmuCommon,
        #[command(flatten)]
        args: crate::emulate::doris::EmuArgs,
    },
    /// Huawei Cloud HSS export files (with IAM): DIR/<task_id>/<file_name>.
    Huawei {
        #[command(flatten)]
        common: EmuCommon,
        #[command(flatten)]
        args: crate::emulate::huawei::EmuArgs,
    },
    /// Backblaze B2 native API: each sub-directory of DIR is a bucket.
    B2 {
        #[command(flatten)]
        common: EmuCommon,
        #[command(flatten)]
        args: crate::emulate::b2::EmuArgs,
    },
    /// Onedata Oneprovider REST v3: each sub-directory of DIR is a space.
    Onedata {
        #[command(flatten)]
        common: EmuCommon,
        #[command(flatten)]
        args: crate::emulate::onedata::EmuArgs,
    },
    /// Tencent Cloud SMH with a signed-URL COS stub: DIR is one library space.
    Smh {
        #[command(flatten)]
        common: EmuCommon,
        #[command(flatten)]
        args: crate::emulate::smh::EmuArgs,
    },
    /// TCP fault proxy in front of an emulator: resets, stalls, trickles, truncates, flips.
    Proxy(crate::emulate::proxy::ProxyArgs),
}

impl EmulateProvider {
    /// Root, port, and the router of the chosen emulator.
    pub fn build(&self) -> Result<(&'static str, u16, axum::Router, crate::emulate::Harness), String> {
        let check = |c: &EmuCommon| {
            if c.root.is_dir() {
                Ok(())
            } else {
                Err(format!("--root {} is not a directory", c.root.display()))
            }
        };
        Ok(match self {
            EmulateProvider::Http { common, style } => {
                check(common)?;
                let emu = crate::emulate::http::router(&common.root);
                emu.behaviour.lock().unwrap().style = *style;
                ("http", common.port, emu.router, emu.harness)
            }
            EmulateProvider::Doris { common, args } => {
                check(common)?;
                let emu = crate::emulate::doris::router(&common.root, args.into());
                ("doris", common.port, emu.router, emu.harness)
            }
            EmulateProvider::Huawei { common, args } => {
                check(common)?;
                let emu = crate::emulate::huawei::router(&common.root, args.into());
                ("huawei", common.port, emu.router, emu.harness)
            }
            EmulateProvider::B2 { common, args } => {
                check(common)?;
                let emu = crate::emulate::b2::router(&common.root, args.options());
                ("b2", common.port, emu.router, emu.harness)
            }
            EmulateProvider::Onedata { common, args } => {
                check(common)?;
                let emu = crate::emulate::onedata::router(&common.root, args.options());
                ("onedata", common.port, emu.router, emu.harness)
            }
            EmulateProvider::Smh { common, args } => {
                check(common)?;
                let emu = crate::emulate::smh::router(&common.root, args.into());
                ("smh", common.port, emu.router, emu.harness)
            }
            EmulateProvider::Proxy(_) => return Err("the fault proxy is not an emulator".into()),
        })
    }
}

/// Options every emulator takes.
#[derive(Debug, Args, Clone)]
pub struct EmuCommon {
    /// Directory to serve.
    #[arg(long)]
    pub root: PathBuf,
    /// Port on 127.0.0.1 (0 = any free port, printed at start).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

/// Options of `-o`, split on commas; `key=value` or bare flags.
fn split_options(opts: &[String]) -> Vec<(String, Option<String>)> {
    opts.iter()
        .flat_map(|o| o.split(','))
        .filter(|s| !s.trim().is_empty())
        .map(|s| match s.split_once('=') {
            Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
            None => (s.trim().to_string(), None),
        })
        .collect()
}

impl MountArgs {
    /// (source URL if any, mountpoint).
    pub fn split_targets(&self) -> Result<(Option<String>, PathBuf), ConfigError> {
        match (self.targets.as_slice(), &self.config) {
            ([mp], Some(_)) => Ok((None, PathBuf::from(mp))),
            ([url, mp], None) => Ok((Some(url.clone()), PathBuf::from(mp))),
            ([_, _], Some(_)) => Err(ConfigError::new("give either a URL or --config, not both")),
            ([_], None) => Err(ConfigError::new(
                "missing MOUNTPOINT: use `fetchfs mount URL MOUNTPOINT` or `fetchfs mount --config FILE MOUNTPOINT`",
            )),
            _ => Err(ConfigError::new("expected URL MOUNTPOINT or --config FILE MOUNTPOINT")),
        }
    }

    /// Builds the validated configuration: the file (or the URL), then flags, then `-o`.
    pub fn to_config(&self) -> Result<(crate::config::Config, bool, String), ConfigError> {
        let (url, _) = self.split_targets()?;
        let (mut file, base_dir, single, fsname) = match (&url, &self.config) {
            (Some(u), _) => {
                let sc = crate::provider::from_url(u, "root")?;
                (
                    ConfigFile {
                        sources: vec![sc],
                        ..ConfigFile::default()
                    },
                    PathBuf::from("."),
                    true,
                    format!("fetchfs:{}", redact_url(u)),
                )
            }
            (None, Some(path)) => {
                let f = ConfigFile::load(path)?;
                let base = path
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from("."));
                let has_secret = f.sources.iter().any(crate::config::SourceConfig::has_inline_secret);
                crate::config::check_file_permissions(path, has_secret)?;
                if f.sources.is_empty() {
                    return Err(ConfigError::new(format!(
                        "{}: no [[source]] section: nothing to mount",
                        path.display()
                    )));
                }
                (f, base, false, format!("fetchfs:{}", path.display()))
            }
            (None, None) => unreachable!("split_targets checked"),
        };
        let set_size = |v: &str, key: &str| {
            parse_size(v)
                .map(crate::config::ByteSize)
                .map_err(|e| ConfigError::new(format!("{key}: {e}")))
        };
        let set_dur = |v: &str, key: &str| {
            parse_duration(v)
                .map(crate::config::Dur)
                .map_err(|e| ConfigError::new(format!("{key}: {e}")))
        };
        if self.allow_other {
            file.mount.allow_other = Some(true);
        }
        if let Some(u) = self.uid {
            file.mount.uid = Some(u);
        }
        if let Some(g) = self.gid {
            file.mount.gid = Some(g);
        }
        if let Some(v) = &self.cache_memory {
            file.cache.memory = Some(set_size(v, "--cache-memory")?);
        }
        if let Some(v) = &self.block_size {
            file.cache.block_size = Some(set_size(v, "--block-size")?);
        }
        if let Some(v) = &self.read_ahead {
            file.cache.read_ahead = Some(set_size(v, "--read-ahead")?);
        }
        if let Some(v) = &self.ttl {
            file.metadata.ttl = Some(set_dur(v, "--ttl")?);
        }
        if let Some(d) = &self.cache_dir {
            file.cache.dir = Some(d.clone());
        }
        if let Some(v) = &self.disk_cache {
            file.cache.disk = Some(set_size(v, "--disk-cache")?);
        }
        if let Some(v) = &self.io_timeout {
            file.network.io_timeout = Some(set_dur(v, "--io-timeout")?);
        }
        if let Some(v) = &self.metrics_addr {
            v.parse::<std::net::SocketAddr>().map_err(|_| {
                ConfigError::new(format!(
                    "--metrics-addr '{v}' is not an IP:PORT address like 127.0.0.1:9101"
                ))
            })?;
            file.metrics.addr = Some(v.clone());
        }
        for (k, v) in split_options(&self.options) {
            let need = |v: &Option<String>| {
                v.clone()
                    .ok_or_else(|| ConfigError::new(format!("-o {k} needs a value ({k}=...)")))
            };
            match k.as_str() {
                "allow_other" => file.mount.allow_other = Some(true),
                "auto_unmount" => file.mount.auto_unmount = Some(true),
                "ro" | "nosuid" | "nodev" | "noexec" | "exec" | "suid" | "dev" | "auto" | "noauto" | "user"
                | "nouser" | "users" | "_netdev" | "nofail" | "defaults" | "noatime" | "relatime" | "atime" => {}
                k if k.starts_with("x-systemd.") || k.starts_with("comment=") => {}
                "rw" => return Err(ConfigError::new("-o rw: fetchfs mounts are read-only")),
                "uid" => {
                    file.mount.uid = Some(
                        need(&v)?
                            .parse()
                            .map_err(|_| ConfigError::new("-o uid= needs a number"))?,
                    )
                }
                "gid" => {
                    file.mount.gid = Some(
                        need(&v)?
                            .parse()
                            .map_err(|_| ConfigError::new("-o gid= needs a number"))?,
                    )
                }
                "memory" | "cache_memory" => file.cache.memory = Some(set_size(&need(&v)?, "-o memory")?),
                "block_size" => file.cache.block_size = Some(set_size(&need(&v)?, "-o block_size")?),
                "request_size" => file.cache.request_size = Some(set_size(&need(&v)?, "-o request_size")?),
                "max_window" => file.cache.max_window = Some(set_size(&need(&v)?, "-o max_window")?),
                "read_ahead" => file.cache.read_ahead = Some(set_size(&need(&v)?, "-o read_ahead")?),
                "ttl" => file.metadata.ttl = Some(set_dur(&need(&v)?, "-o ttl")?),
                "io_timeout" => file.network.io_timeout = Some(set_dur(&need(&v)?, "-o io_timeout")?),
                "cache_dir" => file.cache.dir = Some(PathBuf::from(need(&v)?)),
                "disk_cache" => file.cache.disk = Some(set_size(&need(&v)?, "-o disk_cache")?),
                other => return Err(ConfigError::new(format!("unknown mount option '{other}'"))),
            }
        }
        let cfg = file.validate(&base_dir)?;
        Ok((cfg, single, fsname))
    }
}

/// A URL without user:password, for `mount` output and logs.
pub fn redact_url(u: &str) -> String {
    match url::Url::parse(u) {
        Ok(mut url) => {
            let _ = url.set_password(None);
            let _ = url.set_username("");
            url.set_query(None);
            url.to_string()
        }
        Err(_) => u.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> MountArgs {
        let cli = Cli::try_parse_from(std::iter::once("fetchfs").chain(args.iter().copied())).unwrap();
        match cli.command {
            Command::Mount(m) => m,
            _ => panic!("not mount"),
        }
    }

    #[test]
    fn url_and_mountpoint_give_a_single_http_source() {
        let m = parse(&[
            "mount",
            "http://127.0.0.1:1/data/",
            "/mnt/x",
            "--cache-memory",
            "64MiB",
            "-o",
            "allow_other,uid=7,auto_unmount",
        ]);
        let (cfg, single, fsname) = m.to_config().unwrap();
        assert!(single);
        assert!(cfg.auto_unmount);
        assert_eq!(cfg.cache.memory, 64 << 20);
        assert!(cfg.allow_other);
        assert_eq!(cfg.uid, 7);
        assert_eq!(fsname, "fetchfs:http://127.0.0.1:1/data/");
    }

    #[test]
    fn bad_inputs_get_one_sentence() {
        let e = parse(&["mount", "ftp://x/", "/mnt"]).to_config().unwrap_err();
        assert!(e.0.contains("ftp"), "{e}");
        let e = parse(&["mount", "http://x/", "/mnt", "-o", "frobnicate"])
            .to_config()
            .unwrap_err();
        assert!(e.0.contains("frobnicate"), "{e}");
        let e = parse(&["mount", "/mnt"]).to_config().unwrap_err();
        assert!(e.0.contains("MOUNTPOINT"), "{e}");
        let e = parse(&["mount", "http://x/", "/mnt", "--cache-memory", "huge"])
            .to_config()
            .unwrap_err();
        assert!(e.0.contains("--cache-memory"), "{e}");
        let e = parse(&["mount", "http://x/", "/mnt", "-o", "rw"])
            .to_config()
            .unwrap_err();
        assert!(e.0.contains("read-only"), "{e}");
    }

    #[test]
    fn credentials_are_redacted_from_the_fsname() {
        assert_eq!(redact_url("http://u:p@h/x/?sig=1"), "http://h/x/");
    }
}

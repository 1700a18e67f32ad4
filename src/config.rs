//! Validated configuration: what the core and the providers take, never clap's structs.
//!
//! Two stages (as ripgrep does): the CLI (`crate::cli`) and the TOML file are parsed into
//! [`ConfigFile`] (serde, `deny_unknown_fields` everywhere, so a typo is an error naming the
//! key), then [`ConfigFile::validate`] turns that into [`Config`], checking values and
//! resolving secrets. Every failure is a [`ConfigError`] whose message is one sentence naming
//! the key or value at fault.
//!
//! Secrets (keys, tokens, passwords) are resolved by [`resolve_secret`] in this order:
//! inline value, `<key>_file`, the provider's environment variable, then systemd's
//! `$CREDENTIALS_DIRECTORY/<source>.<key>` or `$CREDENTIALS_DIRECTORY/<key>`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::http::HttpOptions;

/// A bad configuration value, with the sentence to show the user.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    pub fn new(msg: impl Into<String>) -> Self {
        ConfigError(msg.into())
    }
}

/// A byte count written as `"256MiB"`, `"1 GiB"`, `"4096"` or an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_size(&s).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"256MiB"`, `"1GB"`, `"64k"`, `"4096"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("'{s}' is not a size (examples: 4096, 64KiB, 256MiB, 10GiB)"))
}

/// A duration written as `"60s"`, `"500ms"`, `"2m"` or an integer of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => bounded(Duration::from_secs(n), &n.to_string())
                .map(Dur)
                .map_err(serde::de::Error::custom),
            Raw::S(s) => parse_duration(&s).map(Dur).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"60s"`, `"1m 30s"`, `"250ms"`, `"0"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let d = match t.parse::<u64>() {
        Ok(n) => Duration::from_secs(n),
        Err(_) => {
            humantime::parse_duration(t).map_err(|_| format!("'{s}' is not a duration (examples: 60s, 500ms, 5m)"))?
        }
    };
    bounded(d, s)
}

/// Longest duration a setting may have: every timeout and TTL becomes an `Instant` deadline,
/// and `now + 500 years` overflows it (found by fuzzing the config parser).
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 86400);

fn bounded(d: Duration, s: &str) -> Result<Duration, String> {
    if d > MAX_DURATION {
        return Err(format!("'{s}' is longer than 10 years"));
    }
    Ok(d)
}

/// `[cache]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    /// Byte budget of the RAM block cache plus prefetch.
    pub memory: Option<ByteSize>,
    pub block_size: Option<ByteSize>,
    /// Directory of the persistent disk tier (absent = no disk tier).
    pub dir: Option<PathBuf>,
    /// Hard byte cap of the disk tier.
    pub disk: Option<ByteSize>,
    /// Largest prefetch window of one sequential reader.
    pub max_window: Option<ByteSize>,
    /// Largest single ranged GET (several blocks): fewer, larger requests cost less per byte.
    pub request_size: Option<ByteSize>,
    /// Kernel readahead set on the mount's bdi when running as root (0 = leave the kernel's).
    pub read_ahead: Option<ByteSize>,
    /// Stream sequential reads of plain-HTTP files with splice(2), without copying them
    /// through the daemon (default true; used only without a disk tier).
    pub splice: Option<bool>,
}

/// `[metadata]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetadataSection {
    /// How long attributes and listings are trusted.
    pub ttl: Option<Dur>,
    /// How long a missing name is remembered as missing.
    pub negative_ttl: Option<Dur>,
}

/// `[network]`: timeouts and retry budget shared by all sources.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    pub connect_timeout: Option<Dur>,
    pub request_timeout: Option<Dur>,
    pub stall_timeout: Option<Dur>,
    /// Longest a read waits for the network, retries included, before it fails with EIO.
    pub io_timeout: Option<Dur>,
    pub retries: Option<u32>,
}

/// `[mount]`: how the filesystem appears to local users.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MountSection {
    pub allow_other: Option<bool>,
    /// Let fusermount3 unmount the mountpoint when the daemon dies (even by `kill -9`).
    pub auto_unmount: Option<bool>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Permission bits of files (write bits are always cleared).
    pub file_mode: Option<String>,
    pub dir_mode: Option<String>,
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `IP:PORT` to serve Prometheus metrics on (`/metrics`); absent = no endpoint.
    pub addr: Option<String>,
}

/// The file given to `--config`, as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub cache: CacheSection,
    #[serde(default)]
    pub metadata: MetadataSection,
    #[serde(default)]
    pub network: NetworkSection,
    #[serde(default)]
    pub mount: MountSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
}

/// One `[[source]]`; the `type` key picks the provider, every provider's struct carries `name`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    Http(crate::provider::http::HttpConfig),
    B2(crate::provider::b2::B2Config),
    Doris(crate::provider::doris::DorisConfig),
    Huawei(crate::provider::huawei::HuaweiConfig),
    Smh(crate::provider::smh::SmhConfig),
    Onedata(crate::provider::onedata::OnedataConfig),
}

impl SourceConfig {
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Http(c) => &c.name,
            SourceConfig::B2(c) => &c.name,
            SourceConfig::Doris(c) => &c.name,
            SourceConfig::Huawei(c) => &c.name,
            SourceConfig::Smh(c) => &c.name,
            SourceConfig::Onedata(c) => &c.name,
        }
    }
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Http(_) => "http",
            SourceConfig::B2(_) => "b2",
            SourceConfig::Doris(_) => "doris",
            SourceConfig::Huawei(_) => "huawei",
            SourceConfig::Smh(_) => "smh",
            SourceConfig::Onedata(_) => "onedata",
        }
    }
    /// Whether the section holds a secret written inline (the file must then be private).
    pub fn has_inline_secret(&self) -> bool {
        match self {
            SourceConfig::Http(c) => c.has_inline_secret(),
            SourceConfig::B2(c) => c.has_inline_secret(),
            SourceConfig::Doris(c) => c.has_inline_secret(),
            SourceConfig::Huawei(c) => c.has_inline_secret(),
            SourceConfig::Smh(c) => c.has_inline_secret(),
            SourceConfig::Onedata(c) => c.has_inline_secret(),
        }
    }
}

/// Validated cache settings.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub memory: u64,
    pub block_size: u64,
    pub max_window: u64,
    pub request_size: u64,
    pub dir: Option<PathBuf>,
    pub disk: u64,
    pub read_ahead: u64,
    pub splice: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory: 256 << 20,
            block_size: 1 << 20,
            max_window: 64 << 20,
            // 8 MiB: on loopback a GET costs ~0.1 ms before its first byte; at 8 MiB that is
            // under 5 % of the transfer, and 8 requests fill the default 64 MiB window.
            request_size: 8 << 20,
            dir: None,
            disk: 10 << 30,
            // 4 MiB: measured on this machine kind, raising the bdi readahead from 128 KiB to
            // 4 MiB takes FUSE from ~2 to ~3 GB/s for one sequential reader (DESIGN §4).
            read_ahead: 4 << 20,
            splice: true,
        }
    }
}

/// Validated mount-wide settings the core uses.
#[derive(Debug, Clone)]
pub struct Config {
    pub cache: CacheConfig,
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub http: HttpOptions,
    pub allow_other: bool,
    /// `auto_unmount`: fusermount3 watches the daemon and unmounts when it dies.
    pub auto_unmount: bool,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u32,
    pub dir_mode: u32,
    /// Absent when the root is a single source (`fetchfs mount URL MNT`).
    pub sources: Vec<SourceConfig>,
    /// Directory of the config file (relative `*_file` paths are resolved against it).
    pub base_dir: PathBuf,
    /// Where to serve Prometheus metrics (`--metrics-addr`, `[metrics] addr`).
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Config {
            cache: CacheConfig::default(),
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            http: HttpOptions::default(),
            allow_other: false,
            auto_unmount: false,
            uid,
            gid,
            file_mode: 0o444,
            dir_mode: 0o555,
            sources: Vec::new(),
            base_dir: PathBuf::from("."),
            metrics_addr: None,
        }
    }
}

fn parse_mode(key: &str, v: &str) -> Result<u32, ConfigError> {
    u32::from_str_radix(v.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| ConfigError::new(format!("{key} = '{v}' is not an octal mode like 0444")))
}

impl ConfigFile {
    /// Reads and parses a TOML file. Errors name the file and the key.
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("cannot read config file {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ConfigError::new(format!("{}: {}", path.display(), e.0)))
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
        toml::from_str::<ConfigFile>(text).map_err(|e| {
            let msg = e.message().trim().to_string();
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    ConfigError::new(format!("line {line}: {msg}"))
                }
                None => ConfigError::new(msg),
            }
        })
    }

    /// Checks values and produces the configuration the core takes.
    pub fn validate(self, base_dir: &Path) -> Result<Config, ConfigError> {
        let mut c = Config {
            base_dir: base_dir.to_path_buf(),
            ..Config::default()
        };
        let cache = &self.cache;
        if let Some(ByteSize(b)) = cache.block_size {
            if !(4096..=64 << 20).contains(&b) || !b.is_power_of_two() {
                return Err(ConfigError::new(format!(
                    "[cache] block_size = {b} must be a power of two between 4KiB and 64MiB"
                )));
            }
            c.cache.block_size = b;
        }
        if let Some(ByteSize(m)) = cache.memory {
            if m < 8 * c.cache.block_size {
                return Err(ConfigError::new(format!(
                    "[cache] memory = {m} is too small: it must hold at least 8 blocks ({} bytes)",
                    8 * c.cache.block_size
                )));
            }
            c.cache.memory = m;
        }
        if let Some(ByteSize(w)) = cache.max_window {
            c.cache.max_window = w.max(c.cache.block_size);
        }
        c.cache.max_window = c.cache.max_window.min(c.cache.memory / 2);
        if let Some(ByteSize(r)) = cache.request_size {
            c.cache.request_size = r.max(c.cache.block_size);
        }
        if let Some(s) = cache.splice {
            c.cache.splice = s;
        }
        if let Some(ByteSize(r)) = cache.read_ahead {
            c.cache.read_ahead = r;
        }
        c.cache.dir = cache
            .dir
            .as_ref()
            .map(|d| if d.is_absolute() { d.clone() } else { base_dir.join(d) });
        if let Some(ByteSize(d)) = cache.disk {
            if d < c.cache.block_size {
                return Err(ConfigError::new(format!(
                    "[cache] disk = {d} is smaller than one block"
                )));
            }
            c.cache.disk = d;
        }
        if let Some(Dur(t)) = self.metadata.ttl {
            c.ttl = t;
        }
        if let Some(Dur(t)) = self.metadata.negative_ttl {
            c.negative_ttl = t;
        }
        let n = &self.network;
        if let Some(Dur(t)) = n.connect_timeout {
            c.http.connect_timeout = t;
        }
        if let Some(Dur(t)) = n.request_timeout {
            c.http.request_timeout = t;
        }
        if let Some(Dur(t)) = n.stall_timeout {
            c.http.stall_timeout = t;
        }
        if let Some(Dur(t)) = n.io_timeout {
            if t.is_zero() {
                return Err(ConfigError::new("[network] io_timeout must be greater than zero"));
            }
            c.http.op_timeout = t;
        }
        if let Some(r) = n.retries {
            c.http.max_attempts = r.saturating_add(1);
        }
        let m = &self.mount;
        if let Some(a) = m.allow_other {
            c.allow_other = a;
        }
        if let Some(a) = m.auto_unmount {
            c.auto_unmount = a;
        }
        if let Some(u) = m.uid {
            c.uid = u;
        }
        if let Some(g) = m.gid {
            c.gid = g;
        }
        if let Some(v) = &m.file_mode {
            c.file_mode = parse_mode("[mount] file_mode", v)? & !0o222;
        }
        if let Some(v) = &m.dir_mode {
            c.dir_mode = parse_mode("[mount] dir_mode", v)? & !0o222;
        }
        if let Some(a) = &self.metrics.addr {
            c.metrics_addr = Some(a.parse().map_err(|_| {
                ConfigError::new(format!(
                    "[metrics] addr = '{a}' is not an IP:PORT address like 127.0.0.1:9101"
                ))
            })?);
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.sources {
            let name = s.name();
            crate::fs::name::check_source_name(name)
                .map_err(|why| ConfigError::new(format!("[[source]] name = '{name}' {why}")))?;
            if !seen.insert(name.to_string()) {
                return Err(ConfigError::new(format!("two [[source]] sections are named '{name}'")));
            }
        }
        c.sources = self.sources;
        Ok(c)
    }
}

/// Where a secret may come from, in the documented order. Returns `Ok(None)` when none is set.
/// `source` and `key` name it in errors and in `$CREDENTIALS_DIRECTORY` look-ups;
/// `inline_in_file` tells whether the inline value came from a config file (checked for
/// permissions by [`check_file_permissions`]).
pub fn resolve_secret(
    source: &str,
    key: &str,
    inline: Option<&str>,
    file: Option<&Path>,
    env_var: Option<&str>,
) -> Result<Option<String>, ConfigError> {
    if let Some(v) = inline {
        return Ok(Some(v.to_string()));
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(format!(
                "source '{source}': cannot read {key}_file {}: {e}",
                path.display()
            ))
        })?;
        let v = text.trim_end_matches(['\n', '\r']).to_string();
        if v.is_empty() {
            return Err(ConfigError::new(format!(
                "source '{source}': {key}_file {} is empty",
                path.display()
            )));
        }
        return Ok(Some(v));
    }
    if let Some(var) = env_var
        && let Ok(v) = std::env::var(var)
        && !v.is_empty()
    {
        return Ok(Some(v));
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        for name in [format!("{source}.{key}"), key.to_string()] {
            let p = Path::new(&dir).join(name);
            if let Ok(text) = std::fs::read_to_string(&p) {
                return Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()));
            }
        }
    }
    Ok(None)
}

/// Refuses a config file holding an inline secret when group or others can read it.
pub fn check_file_permissions(path: &Path, has_inline_secret: bool) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    if !has_inline_secret {
        return Ok(());
    }
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfigError::new(format!("cannot stat config file {}: {e}", path.display())))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(ConfigError::new(format!(
            "config file {} holds a secret but is readable by group or others (mode {:o}); run chmod 600 on it or move the secret to a *_file",
            path.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_example_parses_and_validates() {
        let f = ConfigFile::parse(
            r#"
[cache]
memory = "256MiB"
block_size = "1MiB"
[metadata]
ttl = "60s"
[[source]]
name = "files"
type = "http"
url = "http://127.0.0.1:8080/data/"
"#,
        )
        .unwrap();
        let c = f.validate(Path::new("/etc")).unwrap();
        assert_eq!(c.cache.memory, 256 << 20);
        assert_eq!(c.cache.block_size, 1 << 20);
        assert_eq!(c.ttl, Duration::from_secs(60));
        assert_eq!(c.sources.len(), 1);
        assert_eq!(c.sources[0].name(), "files");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = ConfigFile::parse("[cache]\nmemroy = \"1GiB\"\n").unwrap_err();
        assert!(e.0.contains("memroy"), "{e}");
        let e = ConfigFile::parse("[cache]\nmemory = \"lots\"\n").unwrap_err();
        assert!(e.0.contains("lots"), "{e}");
        let e = ConfigFile::parse("[[source]]\nname='a'\ntype='ftp'\n").unwrap_err();
        assert!(e.0.contains("ftp"), "{e}");
        let e = ConfigFile::parse("[cache]\nblock_size = \"3000\"\n")
            .unwrap()
            .validate(Path::new("."))
            .unwrap_err();
        assert!(e.0.contains("block_size"), "{e}");
        let e = ConfigFile::parse("[[source]]\nname='a/b'\ntype='http'\nurl='http://x/'\n")
            .unwrap()
            .validate(Path::new("."))
            .unwrap_err();
        assert!(e.0.contains("a/b"), "{e}");
        let dup =
            "[[source]]\nname='a'\ntype='http'\nurl='http://x/'\n[[source]]\nname='a'\ntype='http'\nurl='http://y/'\n";
        let e = ConfigFile::parse(dup).unwrap().validate(Path::new(".")).unwrap_err();
        assert!(e.0.contains("two"), "{e}");
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("x").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(
            parse_duration("10years").unwrap_err(),
            "'10years' is longer than 10 years"
        );
    }

    #[test]
    fn durations_too_long_to_be_a_deadline_are_refused() {
        // Before the bound, these validated and the first request panicked computing
        // `Instant::now() + io_timeout` ("overflow when adding duration to instant").
        for v in ["9223372036854775807", "\"600000000years\"", "\"11y\""] {
            let e = ConfigFile::parse(&format!("[network]\nio_timeout = {v}\n")).unwrap_err();
            assert!(e.0.contains("longer than 10 years"), "{e}");
        }
        let ok = ConfigFile::parse("[metadata]\nttl = \"9y\"\n").unwrap();
        assert!(ok.validate(Path::new(".")).is_ok());
    }

    #[test]
    fn secrets_resolve_in_documented_order() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, "from-file\n").unwrap();
        assert_eq!(
            resolve_secret("s", "token", Some("inline"), Some(&f), None)
                .unwrap()
                .unwrap(),
            "inline"
        );
        assert_eq!(
            resolve_secret("s", "token", None, Some(&f), None).unwrap().unwrap(),
            "from-file"
        );
        let missing = dir.path().join("nope");
        let e = resolve_secret("s", "token", None, Some(&missing), None).unwrap_err();
        assert!(e.0.contains("token_file"), "{e}");
    }

    #[test]
    fn world_readable_file_with_inline_secret_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check_file_permissions(&f, true).is_err());
        assert!(check_file_permissions(&f, false).is_ok());
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_file_permissions(&f, true).is_ok());
    }
}

//! `fetchfs check --config FILE`: the first command to run when a mount fails.
//!
//! Validates the file exactly as `fetchfs mount` would (unknown keys, bad values, permissions
//! of a file holding a secret: each one sentence naming the key), then builds every source,
//! fetches its root and lists it, all sources at once, each within the configured I/O
//! timeout. Prints one row per source (name, type, entries at the root, latency, status) and
//! fails when any source does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::{Config, ConfigError, ConfigFile, SourceConfig};
use crate::provider::BuildContext;

/// `fetchfs check`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["config", "url"])))]
pub struct CheckArgs {
    /// The configuration file to check (as given to `fetchfs mount --config`).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Or check one URL, as `fetchfs mount URL MOUNTPOINT` would mount it.
    #[arg(value_name = "URL")]
    pub url: Option<String>,
}

/// The outcome for one source.
#[derive(Debug, Clone)]
pub struct SourceReport {
    pub name: String,
    pub kind: &'static str,
    /// Entries at the source's root (when it could be listed).
    pub entries: Option<usize>,
    /// Time to build the source, fetch its root and list it.
    pub latency: Duration,
    /// `Err(sentence)` when the source cannot be mounted.
    pub status: Result<(), String>,
}

/// Reads and validates `path` as `fetchfs mount --config` does.
pub fn load_config(path: &Path) -> Result<Config, ConfigError> {
    let file = ConfigFile::load(path)?;
    let has_secret = file.sources.iter().any(SourceConfig::has_inline_secret);
    crate::config::check_file_permissions(path, has_secret)?;
    if file.sources.is_empty() {
        return Err(ConfigError::new(format!(
            "{}: no [[source]] section: nothing to mount",
            path.display()
        )));
    }
    let base = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    file.validate(&base)
}

/// Checks every source of `cfg`.
pub async fn check_sources(cfg: &Config) -> Vec<SourceReport> {
    let ctx = BuildContext::from_config(cfg);
    // Root and listing each get the whole I/O timeout plus a margin for the connection.
    let limit = cfg.http.op_timeout + Duration::from_secs(5);
    let checks = cfg.sources.iter().map(|sc| check_one(sc, &ctx, limit));
    futures_util::future::join_all(checks).await
}

async fn check_one(sc: &SourceConfig, ctx: &BuildContext, limit: Duration) -> SourceReport {
    let start = Instant::now();
    let mut entries = None;
    let status = async {
        let source = crate::provider::build(sc, ctx).await.map_err(|e| e.to_string())?;
        let root = tokio::time::timeout(limit, source.root())
            .await
            .map_err(|_| format!("root did not answer within {limit:?}"))?
            .map_err(|e| format!("root: {e}"))?;
        let list = tokio::time::timeout(limit, source.list(&root))
            .await
            .map_err(|_| format!("listing the root did not finish within {limit:?}"))?
            .map_err(|e| format!("listing the root: {e}"))?;
        entries = Some(list.len());
        Ok(())
    }
    .await;
    SourceReport {
        name: sc.name().to_string(),
        kind: sc.kind(),
        entries,
        latency: start.elapsed(),
        status,
    }
}

/// The table `fetchfs check` prints.
pub fn table(reports: &[SourceReport]) -> String {
    let rows: Vec<[String; 5]> = reports
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.kind.to_string(),
                r.entries.map_or("-".to_string(), |n| n.to_string()),
                format!("{} ms", r.latency.as_millis()),
                match &r.status {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("FAILED: {e}"),
                },
            ]
        })
        .collect();
    let header = ["SOURCE", "TYPE", "ENTRIES", "LATENCY", "STATUS"].map(String::from);
    let mut widths = [0usize; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter().zip(row.iter()) {
            out.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(&row[4]);
        out.push('\n');
    }
    out
}

/// Runs `fetchfs check`: prints the table; `Err` (exit 1) when the file or any source fails.
pub fn run(args: &CheckArgs) -> Result<(), String> {
    let cfg = match (&args.url, &args.config) {
        (Some(url), _) => {
            let sc = crate::provider::from_url(url, "root").map_err(|e| e.to_string())?;
            ConfigFile {
                sources: vec![sc],
                ..ConfigFile::default()
            }
            .validate(Path::new("."))
            .map_err(|e| e.to_string())?
        }
        (None, Some(path)) => load_config(path).map_err(|e| e.to_string())?,
        (None, None) => return Err("give --config FILE or a URL".to_string()),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the I/O runtime: {e}"))?;
    let reports = rt.block_on(check_sources(&cfg));
    print!("{}", table(&reports));
    let failed = reports.iter().filter(|r| r.status.is_err()).count();
    if failed > 0 {
        return Err(format!("{failed} of {} source(s) failed", reports.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_config_names_the_bad_key_and_reads_the_metrics_address() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let source = "[[source]]\nname = \"a\"\ntype = \"http\"\nurl = \"http://127.0.0.1:1/\"\n";
        std::fs::write(&p, format!("[metrics]\naddr = \"127.0.0.1:9101\"\n{source}")).unwrap();
        let cfg = load_config(&p).unwrap();
        assert_eq!(cfg.metrics_addr, Some("127.0.0.1:9101".parse().unwrap()));
        std::fs::write(&p, format!("[metrics]\naddr = \"localhost\"\n{source}")).unwrap();
        let e = load_config(&p).unwrap_err();
        assert!(e.0.contains("[metrics] addr"), "{e}");
        std::fs::write(&p, "[cache]\nmemory = \"1GiB\"\n").unwrap();
        assert!(load_config(&p).unwrap_err().0.contains("no [[source]]"));
    }

    #[test]
    fn table_aligns_columns_and_shows_failures() {
        let t = table(&[
            SourceReport {
                name: "media".into(),
                kind: "http",
                entries: Some(12),
                latency: Duration::from_millis(8),
                status: Ok(()),
            },
            SourceReport {
                name: "b".into(),
                kind: "http",
                entries: None,
                latency: Duration::from_millis(1200),
                status: Err("root: connection refused".into()),
            },
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("SOURCE  TYPE  ENTRIES  LATENCY  STATUS"), "{t}");
        assert!(lines[1].starts_with("media   http  12       8 ms     ok"), "{t}");
        assert!(lines[2].ends_with("FAILED: root: connection refused"), "{t}");
    }
}

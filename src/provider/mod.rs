//! Providers: one module per remote API, each implementing [`crate::source::Source`].
//!
//! | module | API |
//! |---|---|
//! | [`http`] | any HTTP(S) server: HTML autoindex listings, Range GETs |
//! | [`b2`] | Backblaze B2 native API: `b2_list_file_names`, `b2_download_file_by_id` |
//! | [`doris`] | Apache Doris FE small-file manager: `SHOW FILE`, `/api/get_small_file` (whole files, MD5) |
//! | [`huawei`] | Huawei Cloud HSS export files: IAM token, export tasks, `/v5/{project_id}/download` |
//! | [`smh`] | Tencent Cloud Smart Media Hosting: token, directory listing, signed COS URLs |
//! | [`onedata`] | Onedata Oneprovider REST v3: spaces, paged children, content by id or path |
//!
//! A provider module exports its `[[source]]` config struct (serde, `deny_unknown_fields`,
//! with a `name` field) and an async `build` that checks credentials-independent values and
//! returns the source; [`build`] below dispatches on the config's `type`. Shared HTTP
//! mechanics (retry, ranges, token refresh) live in [`crate::http`]; providers only describe
//! their API.

pub mod autoindex;
pub mod b2;
pub mod doris;
pub mod http;
pub mod huawei;
pub mod onedata;
pub mod smh;

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{ConfigError, SourceConfig};
use crate::http::HttpOptions;
use crate::source::Source;

/// What every provider's `build` gets besides its own config.
#[derive(Debug, Clone)]
pub struct BuildContext {
    pub http: HttpOptions,
    /// Directory of the config file, for relative `*_file` paths.
    pub base_dir: PathBuf,
    pub block_size: u64,
    /// A persistent disk tier is configured: at open, prefer a metadata request (HEAD) over
    /// fetching the first block, so a remount serves cached files with no data request.
    pub disk_cache: bool,
}

impl BuildContext {
    /// The context of a validated configuration.
    pub fn from_config(cfg: &crate::config::Config) -> BuildContext {
        BuildContext {
            http: cfg.http.clone(),
            base_dir: cfg.base_dir.clone(),
            block_size: cfg.cache.block_size,
            disk_cache: cfg.cache.dir.is_some(),
        }
    }

    /// A relative path from the config resolved against the config's directory.
    pub fn path(&self, p: &std::path::Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

/// Builds the source a `[[source]]` section describes.
pub async fn build(cfg: &SourceConfig, ctx: &BuildContext) -> Result<Arc<dyn Source>, ConfigError> {
    match cfg {
        SourceConfig::Http(c) => Ok(Arc::new(http::HttpSource::new(c, ctx)?)),
        SourceConfig::B2(c) => b2::build(c, ctx).await,
        SourceConfig::Doris(c) => doris::build(c, ctx).await,
        SourceConfig::Huawei(c) => huawei::build(c, ctx).await,
        SourceConfig::Smh(c) => smh::build(c, ctx).await,
        SourceConfig::Onedata(c) => onedata::build(c, ctx).await,
    }
}

/// The quick form of `fetchfs mount WHAT MOUNTPOINT`: a URL whose scheme names the provider
/// (`http(s)://` plain HTTP, `b2://BUCKET/PREFIX`, …), turned into a source config named `name`.
pub fn from_url(url: &str, name: &str) -> Result<SourceConfig, ConfigError> {
    let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    match scheme.as_deref() {
        Some("http") | Some("https") => Ok(SourceConfig::Http(http::HttpConfig::from_url(url, name)?)),
        Some("b2") => Ok(SourceConfig::B2(b2::B2Config::from_url(url, name)?)),
        Some("smh") => Ok(SourceConfig::Smh(smh::SmhConfig::from_url(url, name)?)),
        Some("onedata") | Some("onedata+http") | Some("onedata+https") => {
            Ok(SourceConfig::Onedata(onedata::OnedataConfig::from_url(url, name)?))
        }
        Some(other) => Err(ConfigError::new(format!(
            "'{url}': unknown scheme '{other}://' (use http://, https://, b2://)"
        ))),
        None => Err(ConfigError::new(format!(
            "'{url}' is not a URL; give e.g. http://host/dir/ or --config FILE"
        ))),
    }
}

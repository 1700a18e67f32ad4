//! Backblaze B2 native API source (providers.md §1).
//!
//! * **Auth.** `b2_authorize_account` (v4 requested; v4, v3 and v1/v2 answers parsed, see
//!   [`api::parse_authorization`]) yields the account token, the `apiUrl` and the
//!   `downloadUrl`. The token lives in a [`TokenCache`]: fetched lazily, renewed an hour
//!   before its 24 h lifetime ends, and renewed once more when a call answers
//!   `401 expired_auth_token` / `bad_auth_token` or a body-less 401 (HEAD), with one renewal in
//!   flight. `401 unauthorized` is a permission problem: `EACCES`, never a loop.
//! * **Listing.** One directory level per call sequence: `b2_list_file_names` with
//!   `prefix=<dir>/`, `delimiter=/`, `maxFileCount=1000` (billing is per 1000 names), every
//!   page followed through `nextFileName`. `folder` entries become directories; `hide` and
//!   `start` entries are skipped. Buckets come from `b2_list_buckets`, or from the key's
//!   `allowed` buckets when it is restricted (listing all buckets would be `401`).
//! * **Name collisions.** B2 may hold an object `a` and objects under `a/`. The directory keeps
//!   the name `a`; the file is shown as `a~file` (`a~file2`, … if that name is taken too), so
//!   neither is lost and paths below the directory stay what B2 calls them.
//! * **Reading.** `b2_download_file_by_id` with the `fileId` of the listing: an open file is
//!   pinned to that version ([`Entry::remote`] and [`Entry::validator`] are the `fileId`).
//!   A range covering the whole object is sent without `Range` (B2 would answer 200 anyway),
//!   so a 0-byte file never gets a Range (B2 answers 416 to any). 200/206/416 go through
//!   [`range::plan`]. SSE-C headers are sent for files the listing marks `SSE-C`.
//!   Opening needs no request; a revalidating open (`OpenRequest::revalidate`) sends one
//!   `HEAD` on the by-id URL, which confirms the pinned version still exists and refreshes its
//!   metadata from the `X-Bz-*` headers. A newer upload of the same name has a new `fileId`
//!   and so reaches the core through the next listing as a new validator.
//! * **Integrity.** [`Entry::checksum`] is `contentSha1`, else `fileInfo.large_file_sha1`
//!   (`unverified:` stripped); the core verifies sequential reads against it.
//! * **Metadata.** `user.b2.file_id`, `content_sha1`, `content_type`, `upload_timestamp`,
//!   `server_side_encryption` and `user.b2.info.<key>` for each `fileInfo` key.
//! * **Versions** (`versions = true`). Every directory gets a `.versions/` directory (unless a
//!   real entry has that name, which then wins) listing, from `b2_list_file_versions`, one
//!   directory per file name — hidden names included — and in it one read-only file per
//!   uploaded version, named `<upload time, RFC 3339 ms>~<8 hex of SHA-1(fileId)>`. Their
//!   remote handle is `b2:version\t<fileId>`, so a revalidation never moves them to another
//!   version (they share no cache entries with the current file of the same `fileId`).
//! * **Retries.** 429 (honouring `Retry-After`), 5xx and transport errors are retried by
//!   [`Http::send`]; B2 asks for a first wait of 1 s growing ×1.5, so the default backoff base
//!   becomes 1 s unless the configuration changed it. Caps (`download_cap_exceeded`,
//!   `transaction_cap_exceeded`) are `403`s: reported as `QuotaExceeded` (EIO), not retried.
//!
//! A key restricted by `namePrefix` only lists below that prefix; set `prefix` accordingly,
//! otherwise listings fail with `EACCES` naming B2's reason.

pub mod api;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use reqwest::header::{AUTHORIZATION, HeaderValue, RANGE};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use url::Url;

use super::BuildContext;
use crate::config::{ConfigError, resolve_secret};
use crate::error::{Result, SourceError};
use crate::http::auth::{Token, TokenCache};
use crate::http::{Http, HttpOptions, range};
use crate::source::{Entry, FileReader, OpenRequest, Opened, Source};

/// The authorization realm of the public service.
pub const DEFAULT_ENDPOINT: &str = "https://api.backblazeb2.com";
/// API version of every call (b2sdk 2.9.1 moved to v4).
const API: &str = "v4";
/// "valid for at most 24 hours" (§1.2).
const TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Renew an hour early so a long read never starts with a token about to lapse.
const TOKEN_MARGIN: Duration = Duration::from_secs(3600);
/// Names per listing call: B2 bills per 1000 names returned, so larger pages cost the same.
const PAGE_SIZE: &str = "1000";
/// First retry wait b2sdk uses (then ×1.5).
const B2_BACKOFF_BASE: Duration = Duration::from_secs(1);

const ROOT: &str = "b2:root";
const DIR: &str = "b2:dir";
const VERSIONS_DIR: &str = "b2:versions";
const HISTORY: &str = "b2:history";
const VERSION_FILE: &str = "b2:version";
/// Name of the per-directory versions view.
pub const VERSIONS_NAME: &str = ".versions";

/// `[[source]] type = "b2"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct B2Config {
    pub name: String,
    /// Authorization realm (default `https://api.backblazeb2.com`).
    pub endpoint: Option<String>,
    /// Application key id (also `key_id_file`, or `B2_APPLICATION_KEY_ID`).
    pub key_id: Option<String>,
    pub key_id_file: Option<PathBuf>,
    /// Application key (also `application_key_file`, or `B2_APPLICATION_KEY`).
    pub application_key: Option<String>,
    pub application_key_file: Option<PathBuf>,
    /// One bucket at the source's root; absent = one directory per bucket the key may list.
    pub bucket: Option<String>,
    /// Only names below this directory (`photos/2024`).
    pub prefix: Option<String>,
    /// File holding the base64 AES-256 key of SSE-C encrypted files.
    pub sse_c_key_file: Option<PathBuf>,
    /// Add the read-only `.versions/` view.
    #[serde(default)]
    pub versions: bool,
}

impl B2Config {
    /// The quick form `b2://BUCKET[/PREFIX]`, credentials from the environment.
    pub fn from_url(url: &str, name: &str) -> Result<B2Config, ConfigError> {
        let rest = url
            .strip_prefix("b2://")
            .or_else(|| url.strip_prefix("B2://"))
            .ok_or_else(|| ConfigError::new(format!("'{url}' is not a b2://BUCKET[/PREFIX] URL")))?;
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b, Some(p.trim_matches('/')).filter(|p| !p.is_empty())),
            None => (rest, None),
        };
        if bucket.is_empty() {
            return Err(ConfigError::new(format!(
                "'{url}' names no bucket (b2://BUCKET[/PREFIX])"
            )));
        }
        Ok(B2Config {
            name: name.to_string(),
            endpoint: None,
            key_id: None,
            key_id_file: None,
            application_key: None,
            application_key_file: None,
            bucket: Some(bucket.to_string()),
            prefix: prefix.map(str::to_string),
            sse_c_key_file: None,
            versions: false,
        })
    }

    /// Whether the inline config holds a secret (for the file-permission check).
    pub fn has_inline_secret(&self) -> bool {
        self.application_key.is_some()
    }
}

/// Builds the source (checks every value that needs no network).
pub async fn build(cfg: &B2Config, ctx: &BuildContext) -> Result<Arc<dyn Source>, ConfigError> {
    Ok(Arc::new(B2Source::new(cfg, ctx)?))
}

/// SSE-C request headers (§1.5).
#[derive(Clone)]
struct SseC {
    key_b64: HeaderValue,
    key_md5_b64: HeaderValue,
}

impl SseC {
    fn load(name: &str, path: &std::path::Path) -> Result<SseC, ConfigError> {
        use base64::Engine;
        use md5::Digest;
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(format!(
                "source '{name}': cannot read sse_c_key_file {}: {e}",
                path.display()
            ))
        })?;
        let b64 = text.trim();
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| {
                ConfigError::new(format!(
                    "source '{name}': sse_c_key_file {} must hold a base64 AES-256 key (32 bytes)",
                    path.display()
                ))
            })?;
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&key));
        let mut key_b64 = HeaderValue::from_str(b64).expect("base64 is a header value");
        key_b64.set_sensitive(true);
        Ok(SseC {
            key_b64,
            key_md5_b64: HeaderValue::from_str(&md5).expect("base64 is a header value"),
        })
    }

    fn apply(&self, rb: RequestBuilder) -> RequestBuilder {
        rb.header("X-Bz-Server-Side-Encryption-Customer-Algorithm", "AES256")
            .header("X-Bz-Server-Side-Encryption-Customer-Key", self.key_b64.clone())
            .header("X-Bz-Server-Side-Encryption-Customer-Key-Md5", self.key_md5_b64.clone())
    }
}

/// An authorized session: the token and where to send calls.
struct Session {
    auth: HeaderValue,
    account_id: String,
    api_url: Url,
    download_url: Url,
    allowed: api::Allowed,
}

impl Session {
    fn api(&self, op: &str) -> Url {
        join(&self.api_url, &format!("b2api/{API}/{op}"))
    }
    fn download_by_id(&self) -> Url {
        join(&self.download_url, &format!("b2api/{API}/b2_download_file_by_id"))
    }
}

fn join(base: &Url, path: &str) -> Url {
    let mut u = base.clone();
    let p = format!("{}/{path}", base.path().trim_end_matches('/'));
    u.set_path(&p);
    u
}

struct Inner {
    name: String,
    http: Http,
    realm: Url,
    key_id: String,
    application_key: String,
    bucket: Option<String>,
    /// Empty, or a directory prefix ending in `/`.
    prefix: String,
    sse_c: Option<SseC>,
    versions: bool,
    tokens: TokenCache<Arc<Session>>,
    bucket_id: tokio::sync::OnceCell<String>,
}

/// The B2 source.
pub struct B2Source {
    inner: Arc<Inner>,
}

impl B2Source {
    pub fn new(cfg: &B2Config, ctx: &BuildContext) -> Result<B2Source, ConfigError> {
        let name = &cfg.name;
        let endpoint = cfg.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT);
        let realm = Url::parse(endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| ConfigError::new(format!("source '{name}': endpoint '{endpoint}' is not an http(s) URL")))?;
        let key_id = resolve_secret(
            name,
            "key_id",
            cfg.key_id.as_deref(),
            cfg.key_id_file.as_deref().map(|p| ctx.path(p)).as_deref(),
            Some("B2_APPLICATION_KEY_ID"),
        )?
        .ok_or_else(|| {
            ConfigError::new(format!(
                "source '{name}': key_id is not set (give key_id, key_id_file or B2_APPLICATION_KEY_ID)"
            ))
        })?;
        let application_key = resolve_secret(
            name,
            "application_key",
            cfg.application_key.as_deref(),
            cfg.application_key_file.as_deref().map(|p| ctx.path(p)).as_deref(),
            Some("B2_APPLICATION_KEY"),
        )?
        .ok_or_else(|| {
            ConfigError::new(format!(
                "source '{name}': application_key is not set (give application_key, application_key_file or B2_APPLICATION_KEY)"
            ))
        })?;
        if let Some(b) = &cfg.bucket
            && (b.is_empty() || b.contains('/'))
        {
            return Err(ConfigError::new(format!(
                "source '{name}': bucket = '{b}' is not a bucket name"
            )));
        }
        let prefix = match cfg.prefix.as_deref().map(|p| p.trim_matches('/')) {
            None | Some("") => String::new(),
            Some(p) if p.split('/').any(str::is_empty) => {
                return Err(ConfigError::new(format!(
                    "source '{name}': prefix = '{p}' contains '//'"
                )));
            }
            Some(p) => format!("{p}/"),
        };
        let sse_c = cfg
            .sse_c_key_file
            .as_deref()
            .map(|p| SseC::load(name, &ctx.path(p)))
            .transpose()?;
        let mut opts = ctx.http.clone();
        if opts.backoff_base == HttpOptions::default().backoff_base {
            opts.backoff_base = B2_BACKOFF_BASE;
        }
        // B2 never redirects; following one would carry the SSE-C key headers to another host.
        opts.max_redirects = 0;
        let http = Http::new(opts).map_err(|e| ConfigError::new(format!("source '{name}': {e}")))?;
        Ok(B2Source {
            inner: Arc::new(Inner {
                name: name.clone(),
                http,
                realm,
                key_id,
                application_key,
                bucket: cfg.bucket.clone(),
                prefix,
                sse_c,
                versions: cfg.versions,
                tokens: TokenCache::new(TOKEN_MARGIN),
                bucket_id: tokio::sync::OnceCell::new(),
            }),
        })
    }
}

fn count_request() {
    crate::metrics::Metrics::add(&crate::metrics::global().http_requests, 1);
}

impl Inner {
    async fn session(&self) -> Result<Token<Arc<Session>>> {
        self.tokens.get(|| self.authorize()).await
    }

    async fn authorize(&self) -> Result<(Arc<Session>, Option<Duration>)> {
        let what = "b2_authorize_account";
        let url = join(&self.realm, &format!("b2api/{API}/b2_authorize_account"));
        let resp = self
            .http
            .send(what, |c| {
                c.get(url.clone()).basic_auth(&self.key_id, Some(&self.application_key))
            })
            .await?;
        count_request();
        if !resp.status().is_success() {
            let (status, body) = api::read_error(resp).await;
            return Err(api::map_error(what, status, body.as_ref()));
        }
        let v: serde_json::Value = self.http.body_json(resp, what).await?;
        let a = api::parse_authorization(&v).map_err(|e| SourceError::Protocol(format!("{what}: {e}")))?;
        let mut auth = HeaderValue::from_str(&a.token)
            .map_err(|_| SourceError::Protocol(format!("{what}: the token is not a header value")))?;
        auth.set_sensitive(true);
        tracing::debug!(source = %self.name, api = %a.api_url, "authorized with B2");
        let session = Session {
            auth,
            account_id: a.account_id,
            api_url: a.api_url,
            download_url: a.download_url,
            allowed: a.allowed,
        };
        Ok((Arc::new(session), Some(TOKEN_LIFETIME)))
    }

    /// Sends `build(client, session)` with the current token; an expired or unknown token
    /// (or a body-less 401) is renewed once and the request sent again. Any other 401 is
    /// `PermissionDenied`. Other statuses are returned for the caller to interpret.
    async fn send_authed<F>(&self, what: &str, build: F) -> Result<Response>
    where
        F: Fn(&reqwest::Client, &Session) -> RequestBuilder,
    {
        let mut renewed = false;
        loop {
            let tok = self.session().await?;
            let session = tok.value.clone();
            let resp = self.http.send(what, |c| build(c, &session)).await?;
            count_request();
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let (status, body) = api::read_error(resp).await;
            if !renewed && api::is_reauth(status, body.as_ref()) {
                tracing::debug!(source = %self.name, %what, "B2 token rejected; authorizing again");
                self.tokens.invalidate(tok.generation).await;
                renewed = true;
                continue;
            }
            return Err(api::map_error(what, status, body.as_ref()));
        }
    }

    /// One JSON API call (GET with query parameters).
    async fn call<T: serde::de::DeserializeOwned>(&self, op: &str, query: &[(&str, &str)]) -> Result<T> {
        let resp = self
            .send_authed(op, |c, s| {
                c.get(s.api(op)).query(query).header(AUTHORIZATION, s.auth.clone())
            })
            .await?;
        if !resp.status().is_success() {
            let (status, body) = api::read_error(resp).await;
            return Err(api::map_error(op, status, body.as_ref()));
        }
        self.http.body_json(resp, op).await
    }

    /// Buckets the key may see, sorted by name.
    async fn buckets(&self) -> Result<Vec<api::Bucket>> {
        let session = self.session().await?.value;
        let mut out = match &session.allowed.buckets {
            Some(list) => list
                .iter()
                .filter_map(|b| {
                    Some(api::Bucket {
                        bucket_id: b.id.clone(),
                        bucket_name: b.name.clone()?,
                    })
                })
                .collect(),
            None => {
                let l: api::BucketList = self
                    .call("b2_list_buckets", &[("accountId", &session.account_id)])
                    .await?;
                l.buckets
            }
        };
        out.sort_by(|a, b| a.bucket_name.cmp(&b.bucket_name));
        Ok(out)
    }

    /// The id of the configured bucket (looked up once).
    async fn bucket_id(&self, name: &str) -> Result<String> {
        self.bucket_id
            .get_or_try_init(|| async {
                let session = self.session().await?.value;
                if let Some(list) = &session.allowed.buckets {
                    return list
                        .iter()
                        .find(|b| b.name.as_deref() == Some(name))
                        .map(|b| b.id.clone())
                        .ok_or_else(|| {
                            SourceError::PermissionDenied(format!("the application key is not allowed bucket '{name}'"))
                        });
                }
                let l: api::BucketList = self
                    .call(
                        "b2_list_buckets",
                        &[("accountId", &session.account_id), ("bucketName", name)],
                    )
                    .await?;
                l.buckets
                    .into_iter()
                    .find(|b| b.bucket_name == name)
                    .map(|b| b.bucket_id)
                    .ok_or_else(|| SourceError::NotFound(format!("bucket '{name}' does not exist")))
            })
            .await
            .cloned()
    }

    /// All pages of one `delimiter=/` level of `b2_list_file_names`.
    async fn list_names(&self, bucket_id: &str, prefix: &str) -> Result<Vec<api::FileVersion>> {
        let mut out = Vec::new();
        let mut start = (!prefix.is_empty()).then(|| prefix.to_string());
        loop {
            let mut q = vec![("bucketId", bucket_id), ("delimiter", "/"), ("maxFileCount", PAGE_SIZE)];
            if !prefix.is_empty() {
                q.push(("prefix", prefix));
            }
            if let Some(s) = &start {
                q.push(("startFileName", s.as_str()));
            }
            let page: api::FilePage = self.call("b2_list_file_names", &q).await?;
            out.extend(page.files);
            match page.next_file_name {
                Some(next) if start.as_ref().is_none_or(|s| next > *s) => start = Some(next),
                Some(next) => {
                    return Err(SourceError::Protocol(format!(
                        "b2_list_file_names: nextFileName '{next}' does not advance"
                    )));
                }
                None => return Ok(out),
            }
        }
    }

    /// All pages of `b2_list_file_versions` from `prefix`; `exact` stops after that one name.
    async fn list_versions(
        &self,
        bucket_id: &str,
        prefix: &str,
        delimiter: bool,
        exact: Option<&str>,
    ) -> Result<Vec<api::FileVersion>> {
        let mut out = Vec::new();
        let mut start: Option<(String, Option<String>)> = (!prefix.is_empty()).then(|| (prefix.to_string(), None));
        loop {
            let mut q = vec![("bucketId", bucket_id), ("maxFileCount", PAGE_SIZE)];
            if delimiter {
                q.push(("delimiter", "/"));
            }
            if !prefix.is_empty() {
                q.push(("prefix", prefix));
            }
            if let Some((name, id)) = &start {
                q.push(("startFileName", name.as_str()));
                if let Some(id) = id {
                    q.push(("startFileId", id.as_str()));
                }
            }
            let page: api::FilePage = self.call("b2_list_file_versions", &q).await?;
            let mut past = false;
            for f in page.files {
                if exact.is_some_and(|n| f.file_name != n) {
                    past = past || exact.is_some_and(|n| f.file_name.as_str() > n);
                    continue;
                }
                out.push(f);
            }
            let next = match page.next_file_name {
                Some(n) if !past => (n, page.next_file_id),
                _ => return Ok(out),
            };
            if start.as_ref().is_some_and(|s| *s == (next.0.clone(), next.1.clone())) {
                return Err(SourceError::Protocol(
                    "b2_list_file_versions: the next page starts where this one did".into(),
                ));
            }
            start = Some(next);
        }
    }

    /// Metadata of one version by a HEAD on its download URL.
    async fn head(&self, file_id: &str, sse: bool) -> Result<api::FileVersion> {
        let what = "HEAD b2_download_file_by_id";
        let resp = self
            .send_authed(what, |c, s| {
                let rb = c
                    .head(s.download_by_id())
                    .query(&[("fileId", file_id)])
                    .header(AUTHORIZATION, s.auth.clone());
                self.with_sse(rb, sse)
            })
            .await?;
        if !resp.status().is_success() {
            let (status, body) = api::read_error(resp).await;
            return Err(api::map_error(what, status, body.as_ref()));
        }
        Ok(api::version_from_headers(resp.headers()))
    }

    fn with_sse(&self, rb: RequestBuilder, sse: bool) -> RequestBuilder {
        match (&self.sse_c, sse) {
            (Some(k), true) => k.apply(rb),
            _ => rb,
        }
    }
}

/// Directory handles: `b2:dir\t<bucketId>\t<prefix>` and friends. Tabs cannot occur in B2
/// names (no code points below 0x20), so the split is unambiguous.
fn handle(kind: &str, bucket_id: &str, path: &str) -> String {
    format!("{kind}\t{bucket_id}\t{path}")
}

fn parse_handle(remote: &str) -> Option<(&str, &str, &str)> {
    let mut it = remote.splitn(3, '\t');
    Some((it.next()?, it.next()?, it.next()?))
}

/// A file entry from its listing object.
fn file_entry(name: &str, remote: String, f: &api::FileVersion) -> Entry {
    let mut e = Entry::file(name, remote, f.size());
    e.mtime = f.mtime();
    e.validator = f.file_id.clone();
    e.checksum = f.sha1();
    if let Some(id) = &f.file_id {
        e = e.with_xattr("user.b2.file_id", id.as_bytes());
    }
    let sha1 = e
        .checksum
        .as_ref()
        .map(|c| c.display())
        .or_else(|| f.content_sha1.clone());
    if let Some(s) = sha1 {
        e = e.with_xattr("user.b2.content_sha1", s.into_bytes());
    }
    if let Some(ct) = &f.content_type {
        e = e.with_xattr("user.b2.content_type", ct.as_bytes());
    }
    if let Some(ts) = f.upload_timestamp {
        e = e.with_xattr("user.b2.upload_timestamp", ts.to_string().into_bytes());
    }
    if let Some(mode) = f.encryption() {
        e = e.with_xattr("user.b2.server_side_encryption", mode.into_bytes());
    }
    for (k, v) in f.info() {
        e = e.with_xattr(format!("user.b2.info.{k}"), v.into_bytes());
    }
    e
}

/// `name~file`, or `name~file2`, … whichever is not in `taken`.
fn collision_name(name: &str, taken: &std::collections::HashSet<String>) -> String {
    let mut candidate = format!("{name}~file");
    let mut n = 2;
    while taken.contains(&candidate) {
        candidate = format!("{name}~file{n}");
        n += 1;
    }
    candidate
}

/// Entries of one `delimiter=/` listing level under `prefix` (see the collision policy in the
/// module docs). Adds the `.versions` view when asked.
pub(crate) fn entries_from_listing(
    bucket_id: &str,
    prefix: &str,
    files: &[api::FileVersion],
    versions: bool,
) -> Vec<Entry> {
    use std::collections::HashSet;
    let mut dirs: Vec<Entry> = Vec::new();
    let mut dir_names = HashSet::new();
    let mut plain = Vec::new();
    for f in files {
        let Some(rest) = f.file_name.strip_prefix(prefix) else {
            continue;
        };
        match f.action.as_str() {
            "folder" => {
                let name = rest.trim_end_matches('/');
                if !name.is_empty() && dir_names.insert(name.to_string()) {
                    dirs.push(Entry::dir(name, handle(DIR, bucket_id, &f.file_name)));
                }
            }
            "upload" if !rest.is_empty() && f.known_size().is_none() => {
                tracing::warn!(file = %f.file_name, "skipping a file listed without contentLength");
            }
            "upload" if !rest.is_empty() => plain.push((rest, f)),
            // `hide`, `start` (unfinished large files) and anything new are not files to read.
            _ => {}
        }
    }
    let mut taken: HashSet<String> = dir_names.clone();
    taken.extend(plain.iter().map(|(n, _)| n.to_string()));
    let mut out = dirs;
    for (name, f) in plain {
        let Some(id) = &f.file_id else { continue };
        let shown = if dir_names.contains(name) {
            let alt = collision_name(name, &taken);
            taken.insert(alt.clone());
            alt
        } else {
            name.to_string()
        };
        out.push(file_entry(&shown, id.clone(), f));
    }
    if versions && !taken.contains(VERSIONS_NAME) {
        out.push(Entry::dir(VERSIONS_NAME, handle(VERSIONS_DIR, bucket_id, prefix)));
    }
    out
}

/// The file name of one version in the versions view.
pub(crate) fn version_name(f: &api::FileVersion) -> String {
    use sha1::Digest;
    // humantime cannot write years past 9999 (its Display fails and `format!` panics).
    const LAST_MS: u64 = 253_402_300_799_999;
    let ts = humantime::format_rfc3339_millis(api::millis(f.upload_timestamp.unwrap_or(0).min(LAST_MS)));
    let id_hash = sha1::Sha1::digest(f.file_id.as_deref().unwrap_or("").as_bytes());
    format!("{ts}~{}", &hex::encode(id_hash)[..8])
}

#[async_trait]
impl Source for B2Source {
    fn kind(&self) -> &'static str {
        "b2"
    }

    async fn root(&self) -> Result<Entry> {
        let inner = &self.inner;
        match &inner.bucket {
            Some(name) => {
                let id = inner.bucket_id(name).await?;
                Ok(Entry::dir("", handle(DIR, &id, &inner.prefix)))
            }
            None => {
                inner.buckets().await?;
                Ok(Entry::dir("", ROOT))
            }
        }
    }

    async fn list(&self, dir: &Entry) -> Result<Vec<Entry>> {
        let inner = &self.inner;
        if dir.remote == ROOT {
            return Ok(inner
                .buckets()
                .await?
                .into_iter()
                .map(|b| Entry::dir(&b.bucket_name, handle(DIR, &b.bucket_id, &inner.prefix)))
                .collect());
        }
        let (kind, bucket_id, path) = parse_handle(&dir.remote)
            .ok_or_else(|| SourceError::NotADirectory(format!("{} is not a B2 directory", dir.name)))?;
        match kind {
            DIR => {
                let files = inner.list_names(bucket_id, path).await?;
                Ok(entries_from_listing(bucket_id, path, &files, inner.versions))
            }
            VERSIONS_DIR => {
                let files = inner.list_versions(bucket_id, path, true, None).await?;
                let mut seen = std::collections::HashSet::new();
                let mut out = Vec::new();
                for f in files {
                    if f.action == "folder" {
                        continue;
                    }
                    let Some(name) = f.file_name.strip_prefix(path).filter(|n| !n.is_empty()) else {
                        continue;
                    };
                    if seen.insert(name.to_string()) {
                        out.push(Entry::dir(name, handle(HISTORY, bucket_id, &f.file_name)));
                    }
                }
                Ok(out)
            }
            HISTORY => {
                let files = inner.list_versions(bucket_id, path, false, Some(path)).await?;
                Ok(files
                    .iter()
                    .filter(|f| f.action == "upload")
                    .filter(|f| {
                        let known = f.known_size().is_some();
                        if !known {
                            tracing::warn!(file = %f.file_name, "skipping a version listed without contentLength");
                        }
                        known
                    })
                    .filter_map(|f| {
                        let id = f.file_id.as_ref()?;
                        Some(file_entry(&version_name(f), format!("{VERSION_FILE}\t{id}"), f))
                    })
                    .collect())
            }
            _ => Err(SourceError::NotADirectory(format!(
                "{} is not a B2 directory",
                dir.name
            ))),
        }
    }

    async fn open(&self, file: &Entry, req: &OpenRequest) -> Result<Opened> {
        let inner = &self.inner;
        let file_id = file
            .remote
            .strip_prefix(VERSION_FILE)
            .and_then(|r| r.strip_prefix('\t'))
            .unwrap_or(&file.remote)
            .to_string();
        if file_id.starts_with("b2:") || file_id.contains('\t') {
            return Err(SourceError::Invalid(format!("{} is not a B2 file", file.name)));
        }
        let sse = file
            .xattrs
            .iter()
            .any(|(k, v)| k == "user.b2.server_side_encryption" && v == b"SSE-C");
        if sse && inner.sse_c.is_none() {
            return Err(SourceError::PermissionDenied(format!(
                "{} is encrypted with SSE-C; set sse_c_key_file for source '{}'",
                file.name, inner.name
            )));
        }
        let entry = if req.revalidate {
            let f = inner.head(&file_id, sse).await?;
            if f.file_id.as_deref().is_some_and(|id| id != file_id) {
                return Err(SourceError::Protocol(format!(
                    "{}: the download answered for another fileId",
                    file.name
                )));
            }
            let mut e = file_entry(&file.name, file.remote.clone(), &f);
            e.validator = Some(file_id.clone());
            e.xattrs.retain(|(k, _)| k != "user.b2.file_id");
            e = e.with_xattr("user.b2.file_id", file_id.as_bytes());
            e
        } else {
            file.clone()
        };
        let reader = B2Reader {
            inner: inner.clone(),
            file_id,
            name: file.name.clone(),
            size: entry.size,
            sse,
        };
        Ok(Opened {
            reader: Arc::new(reader),
            entry,
            prefix: None,
        })
    }
}

/// Reads one pinned file version with `b2_download_file_by_id`.
struct B2Reader {
    inner: Arc<Inner>,
    file_id: String,
    name: String,
    size: u64,
    sse: bool,
}

#[async_trait]
impl FileReader for B2Reader {
    async fn raw_http(&self) -> Option<crate::splice::RawHttp> {
        // SSE-C keys stay with the ordinary path; a token that has expired by the time the
        // stream opens answers 401 and the handle reads the ordinary way, which renews it.
        if self.sse || self.size == 0 {
            return None;
        }
        let session = self.inner.session().await.ok()?.value;
        let mut url = session.download_by_id();
        if url.scheme() != "http" {
            return None;
        }
        url.query_pairs_mut().append_pair("fileId", &self.file_id);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(AUTHORIZATION, session.auth.clone());
        let mut raw = crate::splice::RawHttp::new(url, headers);
        raw.pin = Some(("x-bz-file-id".into(), self.file_id.clone()));
        Some(raw)
    }

    async fn read_stream(&self, r: Range<u64>) -> Result<BoxStream<'static, Result<Bytes>>> {
        if r.is_empty() {
            return Ok(futures_util::stream::empty().boxed());
        }
        let inner = &self.inner;
        let what = format!("b2_download_file_by_id {}", self.name);
        // Whole-object ranges go without Range: B2 answers them with 200 anyway, and a
        // 0-byte object must never get one (B2 answers 416 to any range on it).
        let whole = r.start == 0 && r.end >= self.size;
        let range_value = HeaderValue::from_str(&range::header_value(&r)).expect("ascii");
        let file_id = self.file_id.as_str();
        let resp = inner
            .send_authed(&what, |c, s| {
                let mut rb = c
                    .get(s.download_by_id())
                    .query(&[("fileId", file_id)])
                    .header(AUTHORIZATION, s.auth.clone());
                if !whole {
                    rb = rb.header(RANGE, range_value.clone());
                }
                inner.with_sse(rb, self.sse)
            })
            .await?;
        let status = resp.status();
        if !matches!(status.as_u16(), 200 | 206 | 416) {
            let (status, body) = api::read_error(resp).await;
            return Err(api::map_error(&what, status, body.as_ref()));
        }
        if status.is_success()
            && let Some(id) = api::header(resp.headers(), "x-bz-file-id")
            && id != self.file_id
        {
            return Err(SourceError::Protocol(format!(
                "{what}: the server sent fileId {id}, not the pinned {}",
                self.file_id
            )));
        }
        inner.http.ranged_body(resp, &r, Some(self.size), &what)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_version_uploaded_after_year_9999_still_gets_a_name() {
        let f = api::FileVersion {
            file_id: Some("id".into()),
            upload_timestamp: Some(u64::MAX),
            ..Default::default()
        };
        assert!(version_name(&f).starts_with("9999-12-31T23:59:59.999Z~"));
    }

    use super::*;

    fn f(action: &str, name: &str, id: Option<&str>) -> api::FileVersion {
        api::FileVersion {
            action: action.into(),
            file_name: name.into(),
            file_id: id.map(str::to_string),
            content_length: Some(3),
            ..Default::default()
        }
    }

    #[test]
    fn quick_form_names_bucket_and_prefix() {
        let c = B2Config::from_url("b2://photos/2024/raw/", "p").unwrap();
        assert_eq!(c.bucket.as_deref(), Some("photos"));
        assert_eq!(c.prefix.as_deref(), Some("2024/raw"));
        let c = B2Config::from_url("b2://photos", "p").unwrap();
        assert_eq!(c.prefix, None);
        assert!(B2Config::from_url("b2:///x", "p").is_err());
        assert!(B2Config::from_url("s3://x", "p").is_err());
    }

    #[test]
    fn a_name_that_is_file_and_folder_keeps_both() {
        let files = [
            f("upload", "d/a", Some("id-a")),
            f("folder", "d/a/", None),
            f("upload", "d/a~file", Some("id-x")),
            f("hide", "d/gone", Some("id-h")),
            f("start", "d/big", Some("id-s")),
            f("upload", "d/b", Some("id-b")),
        ];
        let es = entries_from_listing("B", "d/", &files, false);
        let mut names: Vec<(&str, &str)> = es.iter().map(|e| (e.name.as_str(), e.remote.as_str())).collect();
        names.sort();
        assert_eq!(
            names,
            [
                ("a", "b2:dir\tB\td/a/"),
                ("a~file", "id-x"),
                ("a~file2", "id-a"),
                ("b", "id-b")
            ]
        );
    }

    #[test]
    fn versions_view_is_added_unless_a_real_entry_has_its_name() {
        let es = entries_from_listing("B", "", &[f("upload", "x", Some("1"))], true);
        assert!(
            es.iter()
                .any(|e| e.name == VERSIONS_NAME && e.remote == "b2:versions\tB\t")
        );
        let es = entries_from_listing("B", "", &[f("folder", ".versions/", None)], true);
        assert_eq!(es.len(), 1);
        assert_eq!(es[0].remote, "b2:dir\tB\t.versions/");
    }

    #[test]
    fn file_entries_carry_id_checksum_and_xattrs() {
        let v: api::FileVersion = serde_json::from_value(serde_json::json!({
            "action": "upload", "fileId": "4_zX", "fileName": "p/a.txt", "contentLength": 5,
            "contentSha1": "none", "contentType": "text/plain", "uploadTimestamp": 1700000000000u64,
            "fileInfo": {"large_file_sha1": "unverified:2aae6c35c94fcfb415dbe95f408b9ce91ee846ed", "author": "me"}
        }))
        .unwrap();
        let e = entries_from_listing("B", "p/", &[v], false).remove(0);
        assert_eq!(e.name, "a.txt");
        assert_eq!(e.remote, "4_zX");
        assert_eq!(e.validator.as_deref(), Some("4_zX"));
        assert_eq!(e.size, 5);
        let x = |k: &str| {
            e.xattrs
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(
            x("user.b2.content_sha1").as_deref(),
            Some("2aae6c35c94fcfb415dbe95f408b9ce91ee846ed")
        );
        assert_eq!(x("user.b2.file_id").as_deref(), Some("4_zX"));
        assert_eq!(x("user.b2.content_type").as_deref(), Some("text/plain"));
        assert_eq!(x("user.b2.upload_timestamp").as_deref(), Some("1700000000000"));
        assert_eq!(x("user.b2.info.author").as_deref(), Some("me"));
        assert!(e.checksum.is_some());
    }

    #[test]
    fn handles_round_trip() {
        let h = handle(DIR, "bid", "a b/c/");
        assert_eq!(parse_handle(&h), Some((DIR, "bid", "a b/c/")));
    }
}

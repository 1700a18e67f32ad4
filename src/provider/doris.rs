//! Apache Doris FE small-file manager (`CREATE FILE` / `SHOW FILE`), providers.md §4.
//!
//! * Listing: `SHOW FILE FROM <db>` through the FE's SQL endpoint `POST /api/query/{ns}/{db}`
//!   (HTTP Basic auth). The mount shows `<db>/<catalog>/<file name>` and `by-id/<file id>` for
//!   every file; rows with `IsContent=false` cannot be downloaded and are hidden. Without a
//!   configured `databases` list the root runs `SHOW DATABASES` once. Each directory level is one
//!   SQL request (the root with configured databases needs none; `by-id` needs one per
//!   database).
//! * Download: `GET /api/get_small_file?token=&file_id=`, always the whole file (Range is
//!   ignored by the FE), so [`FileReader::ranges`] is false and the cache asks for `0..size`
//!   once. Every error is an HTTP **200** with a `{msg, code, data, count}` JSON body; a file is
//!   told from an error by `Content-Disposition: attachment` (and, without it, by a JSON body
//!   with an integer `code` ≠ 0).
//! * Integrity: files are at most `max_small_file_size_bytes` (1 MiB by default), so the reader
//!   buffers the whole body, checks its length and the `MD5` column of `SHOW FILE`, and only then
//!   yields a byte: a corrupted download is an [`SourceError::Integrity`], never data.
//! * Versions: a file id is immutable (drop + create gives a new id); the validator is
//!   `<id>:<md5>`. No timestamp exists, so a file's mtime is the time this source first saw its
//!   id (constant per id for the life of the mount).
//!
//! The cluster token travels in the query string: no URL is ever put into an error or a log.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use md5::{Digest, Md5};
use reqwest::header::HeaderMap;
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::BuildContext;
use crate::config::{ConfigError, resolve_secret};
use crate::error::{Result, SourceError};
use crate::http::Http;
use crate::source::{Checksum, Entry, FileReader, OpenRequest, Opened, Source};

/// Namespace of `/api/query/{ns}/{db}`: `default_cluster` maps to the internal catalog.
const DEFAULT_NAMESPACE: &str = "default_cluster";
/// Rows asked of one `SHOW FILE`: the FE caps the cluster at `max_small_file_number` (100 by
/// default), so this is far above any real result.
const SHOW_LIMIT: u64 = 100_000;
/// Largest SQL answer accepted (100 000 rows of seven short strings fit easily).
const MAX_QUERY_BYTES: usize = 64 << 20;
/// Slack over the stated size when reading a download: room for a JSON error body sent instead
/// of a tiny file (error bodies are a few hundred bytes).
const ERROR_BODY_SLACK: usize = 64 << 10;
/// Databases that never hold small files.
const SYSTEM_DATABASES: [&str; 3] = ["information_schema", "mysql", "__internal_schema"];
/// Name of the directory listing every file by id.
const BY_ID: &str = "by-id";

/// `[[source]] type = "doris"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DorisConfig {
    pub name: String,
    /// FE HTTP address, e.g. `http://fe:8030`.
    pub endpoint: String,
    /// Cluster token (`token=` of `<meta_dir>/image/VERSION`); also `token_file` or `DORIS_TOKEN`.
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// Doris user for `SHOW FILE` (Basic auth on `/api/query`); default `root`.
    pub user: Option<String>,
    /// Its password (also `password_file` or `DORIS_PASSWORD`; empty when none is set).
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Databases to show; all non-system databases (`SHOW DATABASES`) when absent.
    pub databases: Option<Vec<String>>,
    /// `{ns}` of `/api/query/{ns}/{db}` (default `default_cluster`).
    pub namespace: Option<String>,
}

impl DorisConfig {
    /// Whether the inline config holds a secret (for the file-permission check).
    pub fn has_inline_secret(&self) -> bool {
        self.token.is_some() || self.password.is_some()
    }
}

/// Builds the Doris source.
pub async fn build(cfg: &DorisConfig, ctx: &BuildContext) -> Result<Arc<dyn Source>, ConfigError> {
    Ok(Arc::new(DorisSource::new(cfg, ctx)?))
}

/// One row of `SHOW FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmallFile {
    pub id: String,
    pub db: String,
    pub catalog: String,
    pub name: String,
    pub size: u64,
    pub is_content: bool,
    pub md5: String,
}

/// Where a directory entry points (the `remote` of directories).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dir {
    Root,
    ById,
    Db(String),
    Catalog(String, String),
}

const ENC: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'/').add(b'%');

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, ENC).to_string()
}

fn dec(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

impl Dir {
    pub(crate) fn remote(&self) -> String {
        match self {
            Dir::Root => "root".into(),
            Dir::ById => BY_ID.into(),
            Dir::Db(db) => format!("db/{}", enc(db)),
            Dir::Catalog(db, c) => format!("catalog/{}/{}", enc(db), enc(c)),
        }
    }

    pub(crate) fn parse(remote: &str) -> Option<Dir> {
        let parts: Vec<&str> = remote.split('/').collect();
        match parts.as_slice() {
            ["root"] => Some(Dir::Root),
            [BY_ID] => Some(Dir::ById),
            ["db", db] => Some(Dir::Db(dec(db))),
            ["catalog", db, c] => Some(Dir::Catalog(dec(db), dec(c))),
            _ => None,
        }
    }
}

/// The Doris small-file source.
pub struct DorisSource {
    http: Http,
    endpoint: Url,
    namespace: String,
    token: String,
    user: String,
    password: String,
    databases: Option<Vec<String>>,
    started: SystemTime,
    /// First time each file id was seen: its constant mtime.
    first_seen: Mutex<HashMap<String, SystemTime>>,
}

impl DorisSource {
    pub fn new(cfg: &DorisConfig, ctx: &BuildContext) -> Result<DorisSource, ConfigError> {
        let name = &cfg.name;
        let mut endpoint = Url::parse(&cfg.endpoint).map_err(|e| {
            ConfigError::new(format!(
                "source '{name}': endpoint '{}' is not a valid URL: {e}",
                cfg.endpoint
            ))
        })?;
        if !matches!(endpoint.scheme(), "http" | "https") || endpoint.host_str().is_none_or(str::is_empty) {
            return Err(ConfigError::new(format!(
                "source '{name}': endpoint '{}' must be an http:// or https:// address like http://fe:8030",
                cfg.endpoint
            )));
        }
        if !endpoint.path().ends_with('/') {
            let p = format!("{}/", endpoint.path());
            endpoint.set_path(&p);
        }
        let token = resolve_secret(
            name,
            "token",
            cfg.token.as_deref(),
            cfg.token_file.as_deref().map(|p| ctx.path(p)).as_deref(),
            Some("DORIS_TOKEN"),
        )?
        .ok_or_else(|| {
            ConfigError::new(format!(
                "source '{name}': token is missing (set token, token_file or DORIS_TOKEN to the cluster token of <meta_dir>/image/VERSION)"
            ))
        })?;
        let password = resolve_secret(
            name,
            "password",
            cfg.password.as_deref(),
            cfg.password_file.as_deref().map(|p| ctx.path(p)).as_deref(),
            Some("DORIS_PASSWORD"),
        )?
        .unwrap_or_default();
        if let Some(bad) = cfg
            .databases
            .iter()
            .flatten()
            .find(|d| d.is_empty() || d.contains('/') || d.as_str() == BY_ID)
        {
            return Err(ConfigError::new(format!(
                "source '{name}': databases entry '{bad}' is not a database name"
            )));
        }
        let http = Http::new(ctx.http.clone()).map_err(|e| ConfigError::new(format!("source '{name}': {e}")))?;
        Ok(DorisSource {
            http,
            endpoint,
            namespace: cfg.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
            token,
            user: cfg.user.clone().unwrap_or_else(|| "root".to_string()),
            password,
            databases: cfg.databases.clone(),
            started: SystemTime::now(),
            first_seen: Mutex::new(HashMap::new()),
        })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut u = self.endpoint.clone();
        {
            let mut s = u.path_segments_mut().expect("http URL has a path");
            s.pop_if_empty();
            s.extend(segments);
        }
        u
    }

    /// Runs one SQL statement against `db` and returns its rows as strings, keyed by column.
    async fn query(&self, db: &str, stmt: &str) -> Result<Vec<HashMap<String, String>>> {
        let url = self.url(&["api", "query", &self.namespace, db]);
        let what = format!("POST /api/query/{}/{db} ({stmt})", self.namespace);
        let body = serde_json::json!({ "stmt": stmt, "limit": SHOW_LIMIT });
        let resp = self
            .http
            .send(&what, |c| {
                c.post(url.clone())
                    .basic_auth(&self.user, Some(&self.password))
                    .json(&body)
            })
            .await?;
        crate::metrics::Metrics::add(&crate::metrics::global().http_requests, 1);
        let status = resp.status();
        let bytes = self.http.body_bytes(resp, &what, MAX_QUERY_BYTES).await?;
        if !status.is_success() {
            return Err(status_error(status, &bytes, &what));
        }
        parse_result_set(&bytes).map_err(|e| match e {
            QueryError::Doris(err) => err.into_source_error(&what),
            QueryError::Garbage(why) => SourceError::Protocol(format!("{what}: {why}")),
        })
    }

    /// The databases shown at the root.
    async fn databases(&self) -> Result<Vec<String>> {
        if let Some(dbs) = &self.databases {
            return Ok(dbs.clone());
        }
        let rows = self.query("information_schema", "SHOW DATABASES").await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.get("database").cloned())
            .filter(|d| !SYSTEM_DATABASES.contains(&d.as_str()) && !d.contains('/') && d != BY_ID)
            .collect())
    }

    /// `SHOW FILE FROM db`, downloadable rows only.
    async fn show_files(&self, db: &str) -> Result<Vec<SmallFile>> {
        let stmt = format!("SHOW FILE FROM `{}`", db.replace('`', "``"));
        let rows = self.query(db, &stmt).await?;
        let mut files = Vec::with_capacity(rows.len());
        for r in rows {
            let f = small_file(&r).map_err(|why| SourceError::Protocol(format!("SHOW FILE FROM {db}: {why}")))?;
            if !f.is_content {
                tracing::debug!(db, file = %f.name, id = %f.id, "hiding a small file stored as a URL only (IsContent=false)");
                continue;
            }
            files.push(f);
        }
        Ok(files)
    }

    fn mtime_of(&self, id: &str) -> SystemTime {
        *self
            .first_seen
            .lock()
            .unwrap()
            .entry(id.to_string())
            .or_insert_with(SystemTime::now)
    }

    fn file_entry(&self, f: &SmallFile, name: &str) -> Entry {
        let mut e = Entry::file(name, f.id.clone(), f.size);
        e.mtime = self.mtime_of(&f.id);
        e.validator = Some(format!("{}:{}", f.id, f.md5));
        e.checksum = Checksum::md5_hex(&f.md5);
        let e = e
            .with_xattr("user.doris.file_id", f.id.clone())
            .with_xattr("user.doris.database", f.db.clone())
            .with_xattr("user.doris.catalog", f.catalog.clone());
        if f.md5.is_empty() {
            e
        } else {
            e.with_xattr("user.doris.md5", f.md5.clone())
        }
    }

    fn dir_entry(&self, name: &str, dir: Dir) -> Entry {
        let mut e = Entry::dir(name, dir.remote());
        e.mtime = self.started;
        e
    }
}

#[async_trait]
impl Source for DorisSource {
    fn kind(&self) -> &'static str {
        "doris"
    }

    async fn root(&self) -> Result<Entry> {
        // Check both the SQL credentials and the reachability now, so a bad password fails
        // the mount rather than the first `ls`.
        let dbs = self.databases().await?;
        if let Some(db) = dbs.first() {
            self.show_files(db).await?;
        }
        Ok(self.dir_entry("", Dir::Root))
    }

    async fn list(&self, dir: &Entry) -> Result<Vec<Entry>> {
        let d = Dir::parse(&dir.remote)
            .ok_or_else(|| SourceError::NotADirectory(format!("{} is not a Doris directory", dir.name)))?;
        match d {
            Dir::Root => {
                let mut out: Vec<Entry> = self
                    .databases()
                    .await?
                    .into_iter()
                    .map(|db| self.dir_entry(&db, Dir::Db(db.clone())))
                    .collect();
                out.push(self.dir_entry(BY_ID, Dir::ById));
                Ok(out)
            }
            Dir::Db(db) => {
                let mut catalogs: Vec<String> = self.show_files(&db).await?.into_iter().map(|f| f.catalog).collect();
                catalogs.sort();
                catalogs.dedup();
                Ok(catalogs
                    .into_iter()
                    .map(|c| self.dir_entry(&c, Dir::Catalog(db.clone(), c.clone())))
                    .collect())
            }
            Dir::Catalog(db, catalog) => Ok(self
                .show_files(&db)
                .await?
                .iter()
                .filter(|f| f.catalog == catalog)
                .map(|f| self.file_entry(f, &f.name))
                .collect()),
            Dir::ById => {
                let mut out = Vec::new();
                for db in self.databases().await? {
                    match self.show_files(&db).await {
                        Ok(files) => out.extend(files.iter().map(|f| self.file_entry(f, &f.id))),
                        // A configured database dropped since: its files are gone, not an error.
                        Err(SourceError::NotFound(why)) => {
                            tracing::warn!(db, %why, "database is gone; its files are not listed");
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(out)
            }
        }
    }

    async fn open(&self, file: &Entry, _req: &OpenRequest) -> Result<Opened> {
        // A file id never changes content (drop + create gives a new id), so the listing's
        // metadata is the version; the download itself proves the id still exists.
        let md5 = match &file.checksum {
            Some(Checksum::Md5(b)) => Some(*b),
            _ => None,
        };
        let reader = DorisReader {
            http: self.http.clone(),
            url: self.url(&["api", "get_small_file"]),
            token: self.token.clone(),
            file_id: file.remote.clone(),
            size: file.size,
            md5,
        };
        Ok(Opened {
            reader: Arc::new(reader),
            entry: file.clone(),
            prefix: None,
        })
    }
}

/// Downloads one small file whole and verifies it before yielding it.
struct DorisReader {
    http: Http,
    /// `/api/get_small_file` without the query (the token is added per request).
    url: Url,
    token: String,
    file_id: String,
    size: u64,
    md5: Option<[u8; 16]>,
}

impl DorisReader {
    async fn download(&self) -> Result<Bytes> {
        let what = format!("GET /api/get_small_file (file id {})", self.file_id);
        let query = [("token", self.token.as_str()), ("file_id", self.file_id.as_str())];
        let resp = self.http.send(&what, |c| c.get(self.url.clone()).query(&query)).await?;
        crate::metrics::Metrics::add(&crate::metrics::global().http_requests, 1);
        let status = resp.status();
        let headers = resp.headers().clone();
        let limit = (self.size as usize).saturating_add(ERROR_BODY_SLACK);
        let body = self.http.body_bytes(resp, &what, limit).await?;
        crate::metrics::Metrics::add(&crate::metrics::global().http_bytes, body.len() as u64);
        if !status.is_success() {
            return Err(status_error(status, &body, &what));
        }
        if !is_attachment(&headers)
            && let Some(err) = parse_error(&body)
        {
            return Err(err.into_source_error(&what));
        }
        verify(&body, self.size, self.md5.as_ref()).map_err(|why| SourceError::Integrity(format!("{what}: {why}")))?;
        Ok(body)
    }
}

#[async_trait]
impl FileReader for DorisReader {
    fn ranges(&self) -> bool {
        false
    }

    async fn read_stream(&self, range: Range<u64>) -> Result<BoxStream<'static, Result<Bytes>>> {
        let body = self.download().await?;
        let end = range.end.min(body.len() as u64) as usize;
        let start = (range.start as usize).min(end);
        let part = body.slice(start..end);
        Ok(Box::pin(futures_util::stream::once(async move { Ok(part) })))
    }
}

/// A non-200 answer: the FE answers errors with HTTP 200, but a proxy in front, a Basic-auth
/// refusal or the old Netty action (real 4xx, plain-text body) can send a status.
fn status_error(status: reqwest::StatusCode, body: &[u8], what: &str) -> SourceError {
    let msg = match parse_error(body) {
        Some(e) => e.message,
        None => String::from_utf8_lossy(&body[..body.len().min(300)]).trim().to_string(),
    };
    crate::http::status_error(status, format!("{what}: {msg}"))
}

/// Whether a `get_small_file` answer is a file (`Content-Disposition: attachment;fileName=…`).
fn is_attachment(h: &HeaderMap) -> bool {
    h.get(reqwest::header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("attachment"))
}

/// Checks a downloaded body against `SHOW FILE`'s size and MD5.
fn verify(body: &[u8], size: u64, md5: Option<&[u8; 16]>) -> Result<(), String> {
    if body.len() as u64 != size {
        return Err(format!("got {} bytes, SHOW FILE says {size}", body.len()));
    }
    if let Some(want) = md5 {
        let got: [u8; 16] = Md5::digest(body).into();
        if &got != want {
            return Err(format!(
                "MD5 of the download is {}, SHOW FILE says {}",
                hex::encode(got),
                hex::encode(want)
            ));
        }
    }
    Ok(())
}

/// A `{msg, code, data, count}` error answer of the FE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DorisError {
    pub code: i64,
    /// The most specific text: `data` when it is a string, else `msg`.
    pub message: String,
}

impl DorisError {
    /// ENOENT for "not found / not content" and unknown databases, EACCES for a refused token or
    /// login, EIO for the rest (never retried: the FE answers these deliberately).
    pub(crate) fn into_source_error(self, what: &str) -> SourceError {
        let lower = self.message.to_ascii_lowercase();
        let text = format!("{what}: {} (code {})", self.message, self.code);
        if lower.contains("not found") || lower.contains("not content") || lower.contains("unknown database") {
            SourceError::NotFound(text)
        } else if self.code == 401
            || lower.contains("invalid token")
            || lower.contains("unauthorized")
            || lower.contains("access denied")
        {
            SourceError::PermissionDenied(text)
        } else {
            SourceError::Protocol(text)
        }
    }
}

/// Reads an FE error body; `None` when the body is not one (a file, a success answer).
pub fn parse_error(body: &[u8]) -> Option<DorisError> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let code = v.get("code")?.as_i64()?;
    if code == 0 {
        return None;
    }
    let msg = v.get("msg").and_then(Value::as_str).unwrap_or_default();
    let message = match v.get("data") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ if !msg.is_empty() => msg.to_string(),
        _ => "unknown error".to_string(),
    };
    Some(DorisError { code, message })
}

pub(crate) enum QueryError {
    Doris(DorisError),
    Garbage(String),
}

/// Parses `{"code":0,"data":{"type":"result_set","meta":[{"name":..}],"data":[[..]]}}` into rows
/// keyed by lower-case column name (values of any JSON type rendered as strings).
pub(crate) fn parse_result_set(body: &[u8]) -> Result<Vec<HashMap<String, String>>, QueryError> {
    if let Some(e) = parse_error(body) {
        return Err(QueryError::Doris(e));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| QueryError::Garbage(format!("bad JSON: {e}")))?;
    let data = v
        .get("data")
        .ok_or_else(|| QueryError::Garbage("answer without data".into()))?;
    let meta = data
        .get("meta")
        .and_then(Value::as_array)
        .ok_or_else(|| QueryError::Garbage("answer is not a result set".into()))?;
    let names: Vec<String> = meta
        .iter()
        .map(|m| {
            m.get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_ascii_lowercase()
        })
        .collect();
    let rows = data
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| QueryError::Garbage("result set without rows".into()))?;
    rows.iter()
        .map(|row| {
            let cells = row
                .as_array()
                .ok_or_else(|| QueryError::Garbage("a row is not an array".into()))?;
            Ok(names
                .iter()
                .zip(cells)
                .map(|(n, c)| {
                    let s = match c {
                        Value::String(s) => s.clone(),
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    (n.clone(), s)
                })
                .collect())
        })
        .collect()
}

/// One `SHOW FILE` row (columns `Id, DbName, Catalog, FileName, FileSize, IsContent, MD5`).
pub(crate) fn small_file(r: &HashMap<String, String>) -> Result<SmallFile, String> {
    let get = |k: &str| r.get(k).cloned().ok_or_else(|| format!("no {k} column"));
    let size = get("filesize")?;
    Ok(SmallFile {
        id: get("id")?,
        db: get("dbname").unwrap_or_default(),
        catalog: get("catalog")?,
        name: get("filename")?,
        size: size
            .trim()
            .parse()
            .map_err(|_| format!("FileSize '{size}' is not a number"))?,
        is_content: get("iscontent").map(|v| v.eq_ignore_ascii_case("true")).unwrap_or(true),
        md5: get("md5").unwrap_or_default().to_ascii_lowercase(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_documented_not_found_shapes_read_as_not_found() {
        let source = br#"{"msg":"Error","code":1,"data":"File not found or is not content","count":0}"#;
        let seed = br#"{"msg":"File not found or is not content","code":1,"data":null,"count":0}"#;
        for b in [&source[..], &seed[..]] {
            let e = parse_error(b).unwrap();
            assert_eq!(e.message, "File not found or is not content");
            assert!(matches!(e.into_source_error("x"), SourceError::NotFound(_)));
        }
    }

    #[test]
    fn invalid_token_is_permission_denied_and_bad_request_is_eio() {
        let e = parse_error(br#"{"msg":"Error","code":1,"data":"Invalid token","count":0}"#).unwrap();
        assert!(matches!(e.into_source_error("x"), SourceError::PermissionDenied(_)));
        let e =
            parse_error(br#"{"msg":"Bad Request","code":403,"data":"Invalid file id format: x","count":0}"#).unwrap();
        let err = e.into_source_error("x");
        assert!(matches!(err, SourceError::Protocol(_)), "{err}");
        assert!(err.to_string().contains("Invalid file id format"));
        assert_eq!(err.errno(), libc::EIO);
    }

    #[test]
    fn success_and_file_bodies_are_not_errors() {
        assert!(parse_error(br#"{"msg":"success","code":0,"data":{},"count":0}"#).is_none());
        assert!(parse_error(b"-----BEGIN CERTIFICATE-----").is_none());
        assert!(parse_error(br#"{"code":"1"}"#).is_none());
    }

    #[test]
    fn show_file_result_set_parses_into_rows() {
        let body = br#"{"msg":"success","code":0,"data":{"type":"result_set","meta":[{"name":"Id","type":"CHAR"},{"name":"DbName","type":"CHAR"},{"name":"Catalog","type":"CHAR"},{"name":"FileName","type":"CHAR"},{"name":"FileSize","type":"CHAR"},{"name":"IsContent","type":"CHAR"},{"name":"MD5","type":"CHAR"}],"data":[["11002","db1","kafka","ca.pem",1234,"true","0123456789ABCDEF0123456789abcdef"]],"time":3},"count":0}"#;
        let rows = parse_result_set(body).ok().unwrap();
        let f = small_file(&rows[0]).unwrap();
        assert_eq!(
            f,
            SmallFile {
                id: "11002".into(),
                db: "db1".into(),
                catalog: "kafka".into(),
                name: "ca.pem".into(),
                size: 1234,
                is_content: true,
                md5: "0123456789abcdef0123456789abcdef".into(),
            }
        );
    }

    #[test]
    fn md5_and_length_are_checked() {
        let md5: [u8; 16] = Md5::digest(b"abc").into();
        assert!(verify(b"abc", 3, Some(&md5)).is_ok());
        assert!(verify(b"abd", 3, Some(&md5)).unwrap_err().contains("MD5"));
        assert!(verify(b"abcd", 3, Some(&md5)).unwrap_err().contains("4 bytes"));
        assert!(verify(b"abc", 3, None).is_ok());
    }

    #[test]
    fn directory_handles_round_trip_names_with_slashes() {
        for d in [
            Dir::Root,
            Dir::ById,
            Dir::Db("db1".into()),
            Dir::Catalog("d b".into(), "a/b%c".into()),
        ] {
            assert_eq!(Dir::parse(&d.remote()), Some(d));
        }
    }
}

//! Plain HTTP(S) source: any server with Range support and an HTML autoindex (nginx, Apache,
//! lighttpd, `python -m http.server`), or a single file URL.
//!
//! * Listing: GET of the directory URL (always with a trailing `/`), parsed by
//!   [`super::autoindex`]. Entries without an exact size in the page are completed with a
//!   HEAD each (bounded concurrency); a server without HEAD (405/501) gets a `bytes=0-0` GET.
//! * Open: unless the core's metadata is fresh and carries an ETag, one GET of the first block
//!   (`Range: bytes=0-<block-1>`) both learns the version (ETag, else Last-Modified) and
//!   returns the bytes the reader wants first, so opening costs no extra round trip.
//! * Read: `Range` GETs pinned with `If-Range` (strong ETag or Last-Modified). A `200` to a
//!   pinned range means either the object changed (other ETag → ESTALE) or the server ignores
//!   Range; in the latter case the reader switches to whole-file mode and the cache fetches
//!   the file once.
//! * Credentials (basic auth, extra headers) are never sent to another host: a redirect that
//!   leaves the configured host is refused when any are configured.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use url::Url;

use super::BuildContext;
use super::autoindex;
use crate::config::{ConfigError, resolve_secret};
use crate::error::{Result, SourceError};
use crate::http::{Http, range};
use crate::source::{Entry, FileReader, OpenRequest, Opened, Source};

/// Largest listing page accepted (a hostile server cannot make us buffer more).
const MAX_LISTING_BYTES: usize = 64 << 20;
/// HEAD requests in flight while completing one listing.
const HEAD_CONCURRENCY: usize = 16;
/// Same-host redirects followed by hand when credentials are configured.
const MAX_MANUAL_REDIRECTS: usize = 10;
/// How long the listing fetched by the mount's probe stands in for the first listing.
const PROBE_REUSE: std::time::Duration = std::time::Duration::from_secs(30);
/// Remote handle of the synthetic root when the URL names a single file.
const SINGLE_ROOT: &str = "single-file-root";

/// `[[source]] type = "http"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub name: String,
    /// A directory URL (ending in `/`, listed by its autoindex) or a single file URL.
    pub url: String,
    /// Basic-auth user name.
    pub username: Option<String>,
    /// Basic-auth password (also `password_file`, or `FETCHFS_HTTP_PASSWORD`).
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Extra request headers (e.g. an API key header).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

impl HttpConfig {
    /// The quick form `fetchfs mount URL MOUNTPOINT`.
    pub fn from_url(url: &str, name: &str) -> Result<HttpConfig, ConfigError> {
        Ok(HttpConfig {
            name: name.to_string(),
            url: url.to_string(),
            username: None,
            password: None,
            password_file: None,
            headers: Default::default(),
        })
    }

    /// Whether the inline config holds a secret (for the file-permission check).
    pub fn has_inline_secret(&self) -> bool {
        self.password.is_some()
    }
}

/// The plain HTTP source.
pub struct HttpSource {
    http: Http,
    base: Url,
    single_file: bool,
    headers: HeaderMap,
    has_credentials: bool,
    /// Open with HEAD instead of a first-block GET (a disk tier may already hold the bytes).
    head_on_open: bool,
    /// The root listing fetched by [`Source::root`] to probe the URL, handed to the first
    /// `list` of the root (if it comes within [`PROBE_REUSE`]) so a mount does not download
    /// and parse a huge page twice.
    probed_root: std::sync::Mutex<Option<(std::time::Instant, Vec<Entry>)>>,
}

impl HttpSource {
    pub fn new(cfg: &HttpConfig, ctx: &BuildContext) -> Result<HttpSource, ConfigError> {
        let name = &cfg.name;
        let base = Url::parse(&cfg.url)
            .map_err(|e| ConfigError::new(format!("source '{name}': url '{}' is not a valid URL: {e}", cfg.url)))?;
        if base.scheme() != "http" && base.scheme() != "https" {
            return Err(ConfigError::new(format!(
                "source '{name}': url '{}' must start with http:// or https://",
                cfg.url
            )));
        }
        if base.host_str().is_none_or(str::is_empty) {
            return Err(ConfigError::new(format!(
                "source '{name}': url '{}' has no host",
                cfg.url
            )));
        }
        if base.query().is_some() && base.path().ends_with('/') {
            return Err(ConfigError::new(format!(
                "source '{name}': a directory url cannot carry a query string"
            )));
        }
        let single_file = !base.path().ends_with('/');
        let mut headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            let hn = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                ConfigError::new(format!("source '{name}': headers key '{k}' is not a valid header name"))
            })?;
            let hv = HeaderValue::from_str(v)
                .map_err(|_| ConfigError::new(format!("source '{name}': header '{k}' has an invalid value")))?;
            headers.insert(hn, hv);
        }
        let password = resolve_secret(
            name,
            "password",
            cfg.password.as_deref(),
            cfg.password_file.as_deref().map(|p| ctx.path(p)).as_deref(),
            Some("FETCHFS_HTTP_PASSWORD"),
        )?;
        let url_creds = !base.username().is_empty();
        if let Some(user) = &cfg.username {
            use base64::Engine;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", password.unwrap_or_default()));
            let mut hv = HeaderValue::from_str(&format!("Basic {token}"))
                .map_err(|_| ConfigError::new(format!("source '{name}': username contains invalid characters")))?;
            hv.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, hv);
        } else if password.is_some() {
            return Err(ConfigError::new(format!(
                "source '{name}': password is set but username is not"
            )));
        }
        let has_credentials = !headers.is_empty() || url_creds;
        let mut opts = ctx.http.clone();
        if has_credentials {
            // Redirects are followed only on the same host (checked per response below).
            opts.max_redirects = 0;
        }
        let http = Http::new(opts).map_err(|e| ConfigError::new(format!("source '{name}': {e}")))?;
        Ok(HttpSource {
            http,
            base,
            single_file,
            headers,
            has_credentials,
            head_on_open: ctx.disk_cache,
            probed_root: std::sync::Mutex::new(None),
        })
    }

    /// `GET http://host:port/path` for errors: never the query string or user info.
    fn what(method: &Method, url: &Url) -> String {
        format!("{method} {}", display_url(url))
    }

    /// Sends a request with the source's headers (see [`send_request`]).
    async fn request(&self, method: Method, url: &Url, extra: &HeaderMap) -> Result<reqwest::Response> {
        let mut h = self.headers.clone();
        h.extend(extra.clone());
        send_request(&self.http, &self.base, self.has_credentials, method, url, &h).await
    }

    /// Metadata of one file by HEAD (or a 1-byte GET when HEAD is not allowed).
    async fn head(&self, name: &str, url: &Url) -> Result<Entry> {
        let resp = self.request(Method::HEAD, url, &HeaderMap::new()).await?;
        let status = resp.status();
        if status.is_success() {
            // Not `resp.content_length()`: for a HEAD that is the (empty) body's length.
            if let Some(len) = header_u64(resp.headers(), "content-length") {
                return Ok(entry_from_headers(name, url, len, resp.headers()));
            }
        } else if !matches!(status.as_u16(), 405 | 501 | 403) {
            return Err(crate::http::status_error(status, Self::what(&Method::HEAD, url)));
        }
        // No HEAD, or HEAD without a length: a one-byte ranged GET tells the total.
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::RANGE, HeaderValue::from_static("bytes=0-0"));
        let resp = self.request(Method::GET, url, &h).await?;
        let st = resp.status();
        let headers = resp.headers().clone();
        let size = match st.as_u16() {
            206 => headers
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(range::parse_content_range)
                .and_then(|c| c.total),
            200 => resp.content_length(),
            416 => Some(0),
            _ => return Err(crate::http::status_error(st, Self::what(&Method::GET, url))),
        };
        drop(resp);
        let size = size.ok_or_else(|| {
            SourceError::Protocol(format!(
                "GET {}: the server states no size (chunked without length)",
                url.path()
            ))
        })?;
        Ok(entry_from_headers(name, url, size, &headers))
    }
}

/// Sends a request with `headers`, following same-host redirects by hand when credentials are
/// configured (reqwest follows the rest itself, dropping its own Authorization on the way).
async fn send_request(
    http: &Http,
    base: &Url,
    has_credentials: bool,
    method: Method,
    url: &Url,
    headers: &HeaderMap,
) -> Result<reqwest::Response> {
    let mut url = url.clone();
    for _ in 0..=MAX_MANUAL_REDIRECTS {
        let what = HttpSource::what(&method, &url);
        let u = url.clone();
        let resp = http
            .send(&what, |c| c.request(method.clone(), u.clone()).headers(headers.clone()))
            .await?;
        crate::metrics::Metrics::add(&crate::metrics::global().http_requests, 1);
        if !(has_credentials && resp.status().is_redirection()) {
            return Ok(resp);
        }
        let loc = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| SourceError::Protocol(format!("{what}: redirect without Location")))?;
        let next = url
            .join(loc)
            .map_err(|_| SourceError::Protocol(format!("{what}: bad redirect Location")))?;
        if next.host_str() != base.host_str()
            || next.port_or_known_default() != base.port_or_known_default()
            || next.scheme() != base.scheme()
        {
            return Err(SourceError::PermissionDenied(format!(
                "{what}: redirect to another host refused (credentials are never sent to another host)"
            )));
        }
        url = next;
    }
    Err(SourceError::Protocol(format!(
        "{} {}: too many redirects",
        method,
        url.path()
    )))
}

/// scheme://host[:port]/path of a URL, safe to show.
pub fn display_url(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The version key of a response: strong ETag, else Last-Modified (+size), else none.
fn validator_of(h: &HeaderMap, size: u64) -> Option<String> {
    if let Some(etag) = h.get(reqwest::header::ETAG).and_then(|v| v.to_str().ok()) {
        return Some(etag.to_string());
    }
    h.get(reqwest::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .map(|lm| format!("lm:{lm}:{size}"))
}

fn entry_from_headers(name: &str, url: &Url, size: u64, h: &HeaderMap) -> Entry {
    let mut e = Entry::file(name, url.as_str(), size);
    if let Some(lm) = h.get(reqwest::header::LAST_MODIFIED).and_then(|v| v.to_str().ok())
        && let Ok(t) = httpdate::parse_http_date(lm)
    {
        e.mtime = t;
    }
    e.validator = validator_of(h, size);
    decorate(e)
}

/// Adds the `user.fetchfs.*` xattrs.
fn decorate(mut e: Entry) -> Entry {
    let url = strip_userinfo(&e.remote);
    e.xattrs.retain(|(k, _)| !k.starts_with("user.fetchfs."));
    e.xattrs.push(("user.fetchfs.url".into(), url.into_bytes()));
    if let Some(v) = e.validator.as_ref().filter(|v| !v.starts_with("lm:")) {
        e.xattrs.push(("user.fetchfs.etag".into(), v.clone().into_bytes()));
    }
    e
}

fn strip_userinfo(u: &str) -> String {
    match Url::parse(u) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Err(_) => u.to_string(),
    }
}

#[async_trait]
impl Source for HttpSource {
    fn kind(&self) -> &'static str {
        "http"
    }

    async fn root(&self) -> Result<Entry> {
        if self.single_file {
            // Probe the file now so a bad URL fails the mount, not the first read.
            let name = file_name_of(&self.base);
            self.head(&name, &self.base).await?;
            let mut root = Entry::dir("", SINGLE_ROOT);
            root.mtime = SystemTime::now();
            return Ok(root);
        }
        let entries = self.list_url(&self.base).await?;
        *self.probed_root.lock().unwrap() = Some((std::time::Instant::now(), entries));
        Ok(decorate(Entry::dir("", self.base.as_str())))
    }

    async fn list(&self, dir: &Entry) -> Result<Vec<Entry>> {
        if dir.remote == SINGLE_ROOT {
            let name = file_name_of(&self.base);
            return Ok(vec![self.head(&name, &self.base).await?]);
        }
        let url = Url::parse(&dir.remote)
            .map_err(|_| SourceError::Invalid(format!("bad directory handle {}", dir.remote)))?;
        if url == self.base
            && let Some((at, entries)) = self.probed_root.lock().unwrap().take()
            && at.elapsed() < PROBE_REUSE
        {
            return Ok(entries);
        }
        self.list_url(&url).await
    }

    async fn open(&self, file: &Entry, req: &OpenRequest) -> Result<Opened> {
        let url =
            Url::parse(&file.remote).map_err(|_| SourceError::Invalid(format!("bad file handle {}", file.remote)))?;
        if !req.revalidate && file.validator.is_some() {
            let reader = Arc::new(HttpReader::new(self, url, file.size, file.validator.clone()));
            return Ok(Opened {
                reader,
                entry: file.clone(),
                prefix: None,
            });
        }
        if self.head_on_open {
            let mut entry = self.head(&file.name, &url).await?;
            if entry.mtime == SystemTime::UNIX_EPOCH {
                entry.mtime = file.mtime;
            }
            let reader = Arc::new(HttpReader::new(self, url, entry.size, entry.validator.clone()));
            return Ok(Opened {
                reader,
                entry,
                prefix: None,
            });
        }
        // One GET learns the version and brings the first block.
        let what = Self::what(&Method::GET, &url);
        let mut h = HeaderMap::new();
        let want = req.block_size.max(1);
        h.insert(
            reqwest::header::RANGE,
            HeaderValue::from_str(&range::header_value(&(0..want))).expect("ascii"),
        );
        let resp = self.request(Method::GET, &url, &h).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let (size, whole) = match status.as_u16() {
            206 => {
                let cr = headers
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(range::parse_content_range)
                    .filter(|c| c.span.is_some_and(|(a, _)| a == 0))
                    .ok_or_else(|| SourceError::Protocol(format!("{what}: 206 without a usable Content-Range")))?;
                let total = cr
                    .total
                    .ok_or_else(|| SourceError::Protocol(format!("{what}: Content-Range without total")))?;
                (total, false)
            }
            200 => (
                resp.content_length().ok_or_else(|| {
                    SourceError::Protocol(format!("{what}: the server ignores Range and states no length"))
                })?,
                true,
            ),
            416 => (0, false),
            _ => {
                return Err(crate::http::status_error(
                    status,
                    format!("{what}: {}", crate::http::error_text(resp).await),
                ));
            }
        };
        let first = want.min(size);
        let prefix = if first == 0 {
            drop(resp);
            Some(Bytes::new())
        } else {
            let body = self.http.body_stream(resp, &what);
            let mut s = range::cut(
                body,
                range::BodyPlan {
                    skip: 0,
                    take: first,
                    total: Some(size),
                },
            );
            let mut buf = bytes::BytesMut::with_capacity(first as usize);
            let mut cut = None;
            while let Some(c) = s.next().await {
                match c {
                    Ok(c) => buf.extend_from_slice(&c),
                    Err(e) => {
                        cut = Some(e);
                        break;
                    }
                }
            }
            match cut {
                None => Some(buf.freeze()),
                // The version is known from the headers; the cache fetches (and resumes) the
                // first block itself.
                Some(e) if e.is_transient() => None,
                Some(e) => return Err(e),
            }
        };
        if let Some(p) = &prefix {
            crate::metrics::Metrics::add(&crate::metrics::global().http_bytes, p.len() as u64);
        }
        let mut entry = entry_from_headers(&file.name, &url, size, &headers);
        if entry.mtime == SystemTime::UNIX_EPOCH {
            entry.mtime = file.mtime;
        }
        let reader = HttpReader::new(self, url, size, entry.validator.clone());
        reader.whole.store(whole, Ordering::Relaxed);
        Ok(Opened {
            reader: Arc::new(reader),
            entry,
            prefix,
        })
    }
}

fn file_name_of(url: &Url) -> String {
    let seg = url.path_segments().and_then(|mut s| s.next_back()).unwrap_or("file");
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(seg).collect();
    let name = String::from_utf8_lossy(&bytes).to_string();
    if crate::fs::name::check(&name).is_ok() {
        name
    } else {
        "file".to_string()
    }
}

impl HttpSource {
    async fn list_url(&self, url: &Url) -> Result<Vec<Entry>> {
        let what = Self::what(&Method::GET, url);
        let resp = self.request(Method::GET, url, &HeaderMap::new()).await?;
        let status = resp.status();
        if !status.is_success() {
            let msg = crate::http::error_text(resp).await;
            return Err(crate::http::status_error(status, format!("{what}: {msg}")));
        }
        let is_html = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|ct| ct.contains("html") || ct.contains("text/plain"));
        if !is_html {
            return Err(SourceError::NotADirectory(format!("{what} is not an HTML listing")));
        }
        let body = self.http.body_bytes(resp, &what, MAX_LISTING_BYTES).await?;
        let html = String::from_utf8_lossy(&body);
        let (links, skipped) = autoindex::parse(&html, url);
        for s in skipped {
            tracing::warn!(listing = %url.path(), href = %s.href, why = s.why, "skipping a name that cannot be a file name");
        }
        let mut entries = Vec::with_capacity(links.len());
        let mut pending = Vec::new();
        for l in links {
            if l.is_dir {
                let mut e = Entry::dir(&l.name, l.url.as_str());
                if let Some(t) = l.mtime {
                    e.mtime = t;
                }
                entries.push(decorate(e));
            } else if let Some(size) = l.size {
                let mut e = Entry::file(&l.name, l.url.as_str(), size);
                if let Some(t) = l.mtime {
                    e.mtime = t;
                }
                entries.push(decorate(e));
            } else {
                pending.push(l);
            }
        }
        // Sizes the page did not state exactly: ask the server, a few at a time.
        let heads = futures_util::stream::iter(pending.into_iter().map(|l| async move {
            let r = self.head(&l.name, &l.url).await;
            (l, r)
        }))
        .buffer_unordered(HEAD_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
        for (l, r) in heads {
            match r {
                Ok(mut e) => {
                    if e.mtime == SystemTime::UNIX_EPOCH {
                        e.mtime = l.mtime.unwrap_or(SystemTime::UNIX_EPOCH);
                    }
                    entries.push(e)
                }
                // A file listed but gone by the time we ask: leave it out.
                Err(SourceError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(entries)
    }
}

/// Reads one pinned version of an HTTP file.
struct HttpReader {
    http: Http,
    base: Url,
    has_credentials: bool,
    url: Url,
    size: u64,
    headers: HeaderMap,
    validator: Option<String>,
    /// The server ignored Range once: read whole bodies from now on.
    whole: AtomicBool,
}

impl HttpReader {
    fn new(src: &HttpSource, url: Url, size: u64, validator: Option<String>) -> HttpReader {
        let mut headers = src.headers.clone();
        // If-Range needs a strong ETag or a date; weak ETags (W/"…") cannot pin a range.
        if let Some(v) = &validator {
            let pin = if let Some(lm) = v.strip_prefix("lm:") {
                lm.rsplit_once(':').map(|(d, _)| d.to_string())
            } else if !v.starts_with("W/") {
                Some(v.clone())
            } else {
                None
            };
            if let Some(p) = pin.and_then(|p| HeaderValue::from_str(&p).ok()) {
                headers.insert(reqwest::header::IF_RANGE, p);
            }
        }
        HttpReader {
            http: src.http.clone(),
            base: src.base.clone(),
            has_credentials: src.has_credentials,
            url,
            size,
            headers,
            validator,
            whole: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl FileReader for HttpReader {
    fn ranges(&self) -> bool {
        !self.whole.load(Ordering::Relaxed)
    }

    async fn raw_http(&self) -> Option<crate::splice::RawHttp> {
        // A stream goes to one host without following redirects, like a credentialed GET.
        (self.url.scheme() == "http" && self.ranges())
            .then(|| crate::splice::RawHttp::new(self.url.clone(), self.headers.clone()))
    }

    async fn read_stream(&self, r: Range<u64>) -> Result<BoxStream<'static, Result<Bytes>>> {
        let what = format!("GET {}", display_url(&self.url));
        let mut h = self.headers.clone();
        let whole = self.whole.load(Ordering::Relaxed) || (r.start == 0 && r.end == self.size);
        if !whole {
            h.insert(
                reqwest::header::RANGE,
                HeaderValue::from_str(&range::header_value(&r)).expect("ascii"),
            );
        } else {
            h.remove(reqwest::header::IF_RANGE);
        }
        let resp = send_request(&self.http, &self.base, self.has_credentials, Method::GET, &self.url, &h).await?;
        let status = resp.status();
        if status == StatusCode::OK && !whole {
            // Either the object changed (If-Range failed) or the server ignores Range.
            let now = validator_of(resp.headers(), resp.content_length().unwrap_or(self.size));
            if self.validator.is_some() && now != self.validator {
                return Err(SourceError::Changed(format!("{what}: the file changed on the server")));
            }
            self.whole.store(true, Ordering::Relaxed);
        }
        if !(status == StatusCode::OK || status == StatusCode::PARTIAL_CONTENT || status.as_u16() == 416) {
            let msg = crate::http::error_text(resp).await;
            return Err(crate::http::status_error(status, format!("{what}: {msg}")));
        }
        if whole && status == StatusCode::OK {
            let now = validator_of(resp.headers(), resp.content_length().unwrap_or(self.size));
            if self.validator.is_some() && now.is_some() && now != self.validator {
                return Err(SourceError::Changed(format!("{what}: the file changed on the server")));
            }
        }
        self.http.ranged_body(resp, &r, Some(self.size), &what)
    }
}

//! Onedata source: a Oneprovider's REST API v3 (providers.md §2) mounted as
//! `<space name>/<path>`.
//!
//! * Auth: every request carries `X-Auth-Token`. Tokens are minted in Onezone and cannot be
//!   renewed from here, so any `401` is final: `EACCES` with the server's `authError` id.
//! * Root: without `space`, one directory per space from `GET /spaces` (two spaces with one
//!   name become `<name>@<spaceId>`, the official client's convention). With `space`, that
//!   space's root; with `space` and `path`, the directory or single file the path names
//!   (resolved with `POST /lookup-file-id/...`).
//! * Listing: `GET /data/{dirId}/children`, every page until `isLast` (a short or even empty
//!   page is not the end), with the attributes the mount needs requested explicitly. Servers
//!   from 21.02.5 on take the options as a JSON body; older ones only the legacy query style
//!   (`?attribute=file_id&...`, snake_case names) and ignore a body. The first listing that
//!   tells the two apart decides, and the answer is remembered for the life of the source.
//! * Download: `GET /data/{fileId}/content` with a `Range` for each block (`bytes=0-` gives
//!   206 here, 416 carries `Content-Range: bytes */N`), normalised by [`crate::http::range`].
//!   A file known only by its path (a `path` in the config naming a file) is read with
//!   `GET /data/{spaceId}/path/{seg}/{seg}...`, each segment percent-encoded.
//! * No version ids exist: the validator is `mtime:size`, and a download whose
//!   `Content-Range` total differs from the listed size fails with ESTALE.
//! * Redirects are never followed: only directory downloads redirect (to a TAR), which a mount
//!   never asks for, and `X-Auth-Token` must not travel to another host.
//!
//! Remote handles (`Entry.remote`): `spaces:` (the list of spaces), `id:<fileId>`,
//! `single:<spaceId>/<path>` (synthetic directory holding one configured file) and
//! `path:<spaceId>/<path>` (a file read by path).

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::HeaderValue;
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::BuildContext;
use crate::config::{ConfigError, resolve_secret};
use crate::error::{Result, SourceError};
use crate::http::{Http, range};
use crate::source::{Entry, EntryKind, FileReader, OpenRequest, Opened, Source};

/// REST base below the provider's host.
pub const API_PREFIX: &str = "/api/v3/oneprovider";
/// Environment variable holding the access token (the official clients' name).
pub const TOKEN_ENV: &str = "ONEDATA_ACCESS_TOKEN";
/// Largest page the API allows (`limit` 1..1000): fewest round trips per directory.
const PAGE_LIMIT: u32 = 1000;
/// Consecutive empty pages tolerated before the listing is declared broken. Empty pages are
/// legal (inter-provider sync delays), but a server that never advances must not hang `ls`.
const MAX_EMPTY_PAGES: u32 = 100;
/// Largest symlink target read by downloading the link itself (PATH_MAX).
const MAX_LINK_BYTES: usize = 4096;
/// Largest JSON answer accepted (a 1000-entry page is about 300 KiB).
const MAX_JSON_BYTES: usize = 64 << 20;

/// Attributes a listing asks for (providers.md §2.13), current names.
pub const ATTRS: &[&str] = &[
    "fileId",
    "name",
    "type",
    "size",
    "mtime",
    "atime",
    "ctime",
    "posixPermissions",
    "symlinkValue",
];
/// The same in the legacy (pre-21.02.5) spelling; legacy servers know no `symlinkValue`, so a
/// symlink's target is then read by downloading the link with `follow_symlinks=false`.
const LEGACY_ATTRS: &[&str] = &["file_id", "name", "type", "size", "mtime", "atime", "ctime", "mode"];

/// RFC 3986 unreserved characters stay, everything else is percent-encoded (§2.11).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `[[source]] type = "onedata"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnedataConfig {
    pub name: String,
    /// The Oneprovider base URL (`https://provider.example.org`); `/api/v3/oneprovider` is
    /// appended unless the URL already ends with it.
    pub endpoint: String,
    /// Access token (also `token_file`, or `ONEDATA_ACCESS_TOKEN`).
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// Mount one space (its name, `name@spaceId`, or its id) at the source root instead of one
    /// directory per space.
    pub space: Option<String>,
    /// A directory or file inside `space` to mount instead of the space root.
    pub path: Option<String>,
}

impl OnedataConfig {
    /// The quick form: `onedata://HOST[:PORT][/SPACE[/PATH...]]` (HTTPS), or
    /// `onedata+http://HOST:PORT/...` for plain HTTP (tests and emulators on 127.0.0.1).
    /// The token comes from `ONEDATA_ACCESS_TOKEN` (or systemd credentials).
    pub fn from_url(url: &str, name: &str) -> Result<OnedataConfig, ConfigError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| ConfigError::new(format!("'{url}' is not a onedata:// URL")))?;
        let http_scheme = match scheme.to_ascii_lowercase().as_str() {
            "onedata" | "onedata+https" => "https",
            "onedata+http" => "http",
            other => {
                return Err(ConfigError::new(format!(
                    "'{url}': scheme '{other}://' is not onedata://, onedata+https:// or onedata+http://"
                )));
            }
        };
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        if host.is_empty() || host.contains('@') {
            return Err(ConfigError::new(format!(
                "'{url}' names no provider host (give onedata://HOST[/SPACE]; the token comes from {TOKEN_ENV})"
            )));
        }
        let endpoint = format!("{http_scheme}://{host}");
        Url::parse(&endpoint).map_err(|e| ConfigError::new(format!("'{url}': bad host '{host}': {e}")))?;
        let segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().to_string())
            .collect();
        let space = segments.first().cloned();
        let path = (segments.len() > 1).then(|| segments[1..].join("/"));
        Ok(OnedataConfig {
            name: name.to_string(),
            endpoint,
            token: None,
            token_file: None,
            space,
            path,
        })
    }

    /// Whether the inline config holds a secret (for the file-permission check).
    pub fn has_inline_secret(&self) -> bool {
        self.token.is_some()
    }
}

/// Builds the source, checking everything that can be checked without the network.
pub async fn build(cfg: &OnedataConfig, ctx: &BuildContext) -> Result<Arc<dyn Source>, ConfigError> {
    Ok(Arc::new(OnedataSource::new(cfg, ctx)?))
}

/// Which listing option style the server accepts (decided once, see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Style {
    Unknown = 0,
    Body = 1,
    Legacy = 2,
}

/// The Onedata source.
pub struct OnedataSource {
    http: Http,
    /// `{endpoint}/api/v3/oneprovider`, no trailing slash.
    api: String,
    token: HeaderValue,
    space: Option<String>,
    path: Option<Vec<String>>,
    style: AtomicU8,
}

impl OnedataSource {
    pub fn new(cfg: &OnedataConfig, ctx: &BuildContext) -> Result<OnedataSource, ConfigError> {
        let name = &cfg.name;
        let url = Url::parse(&cfg.endpoint).map_err(|e| {
            ConfigError::new(format!(
                "source '{name}': endpoint '{}' is not a valid URL: {e}",
                cfg.endpoint
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err(ConfigError::new(format!(
                "source '{name}': endpoint '{}' must be an http:// or https:// URL with a host",
                cfg.endpoint
            )));
        }
        if url.query().is_some() {
            return Err(ConfigError::new(format!(
                "source '{name}': endpoint '{}' must not carry a query string",
                cfg.endpoint
            )));
        }
        let mut api = url.as_str().trim_end_matches('/').to_string();
        if !api.ends_with(API_PREFIX) {
            api.push_str(API_PREFIX);
        }
        let token = resolve_secret(
            name,
            "token",
            cfg.token.as_deref(),
            cfg.token_file.as_deref().map(|p| ctx.path(p)).as_deref(),
            Some(TOKEN_ENV),
        )?
        .ok_or_else(|| {
            ConfigError::new(format!(
                "source '{name}': no access token: set token, token_file or {TOKEN_ENV}"
            ))
        })?;
        let mut token = HeaderValue::from_str(token.trim()).map_err(|_| {
            ConfigError::new(format!(
                "source '{name}': token contains characters a header cannot carry"
            ))
        })?;
        token.set_sensitive(true);
        let space = cfg
            .space
            .as_ref()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let path = match &cfg.path {
            None => None,
            Some(p) => {
                if space.is_none() {
                    return Err(ConfigError::new(format!(
                        "source '{name}': path = '{p}' needs space to be set too"
                    )));
                }
                let segs: Vec<String> = p.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect();
                if segs.iter().any(|s| s == "." || s == "..") {
                    return Err(ConfigError::new(format!(
                        "source '{name}': path = '{p}' must not contain . or .. segments"
                    )));
                }
                (!segs.is_empty()).then_some(segs)
            }
        };
        let mut opts = ctx.http.clone();
        // Never follow redirects: X-Auth-Token is a custom header reqwest would forward to
        // any host, and only directory downloads (never used here) redirect.
        opts.max_redirects = 0;
        let http = Http::new(opts).map_err(|e| ConfigError::new(format!("source '{name}': {e}")))?;
        Ok(OnedataSource {
            http,
            api,
            token,
            space,
            path,
            style: AtomicU8::new(Style::Unknown as u8),
        })
    }

    fn style(&self) -> Style {
        match self.style.load(Ordering::Relaxed) {
            1 => Style::Body,
            2 => Style::Legacy,
            _ => Style::Unknown,
        }
    }

    fn set_style(&self, s: Style) {
        self.style.store(s as u8, Ordering::Relaxed);
    }

    /// Sends one request with the token, retried by [`Http::send`] (5xx, 408, 429 and
    /// connection errors); the caller maps a non-2xx answer with [`api_error`].
    async fn call(
        &self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let resp = self
            .http
            .send(what, |c| build(c).header("x-auth-token", self.token.clone()))
            .await?;
        crate::metrics::Metrics::add(&crate::metrics::global().http_requests, 1);
        Ok(resp)
    }

    /// A JSON GET/POST: 2xx parsed as `T`, anything else mapped by [`api_error`].
    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<T> {
        let resp = self.call(what, build).await?;
        if !resp.status().is_success() {
            return Err(self.error_of(resp, what).await);
        }
        let body = self.http.body_bytes(resp, what, MAX_JSON_BYTES).await?;
        crate::http::decode_json(&body, what)
    }

    async fn error_of(&self, resp: reqwest::Response, what: &str) -> SourceError {
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(Duration::from_secs(5), resp.bytes())
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        api_error(status, &body, what)
    }

    async fn spaces(&self) -> Result<Vec<SpaceInfo>> {
        let url = format!("{}/spaces", self.api);
        self.json("GET /spaces", |c| c.get(&url)).await
    }

    /// The configured space, matched by `name@spaceId`, id, or name (a name two spaces share is
    /// refused with the disambiguated names to pick from).
    async fn configured_space(&self, want: &str) -> Result<SpaceInfo> {
        let spaces = self.spaces().await?;
        if let Some(s) = spaces
            .iter()
            .find(|s| format!("{}@{}", s.name, s.space_id) == want || s.space_id == want)
        {
            return Ok(s.clone());
        }
        let named: Vec<&SpaceInfo> = spaces.iter().filter(|s| s.name == want).collect();
        match named.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(SourceError::NotFound(format!(
                "space '{want}' is not among the spaces this token can access"
            ))),
            many => Err(SourceError::Invalid(format!(
                "{} spaces are named '{want}'; set space to one of: {}",
                many.len(),
                many.iter()
                    .map(|s| format!("{}@{}", s.name, s.space_id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Attributes of one file by id (`GET /data/{id}`), in the style the server accepts.
    async fn attrs(&self, file_id: &str) -> Result<Attrs> {
        let url = format!("{}/data/{}", self.api, enc(file_id));
        let what = format!("GET /data/{file_id}");
        let v: Value = if self.style() == Style::Legacy {
            let q = legacy_query(None, None);
            self.json(&what, |c| c.get(format!("{url}?{q}"))).await?
        } else {
            let body = serde_json::json!({ "attributes": ATTRS });
            self.json(&what, |c| c.get(&url).json(&body)).await?
        };
        let a = Attrs::from_json(&v)
            .ok_or_else(|| SourceError::Protocol(format!("{what}: attributes without a fileId")))?;
        if a.kind.unwrap_or(EntryKind::File) == EntryKind::File && a.size.is_none() {
            return Err(SourceError::Protocol(format!("{what}: a file without a numeric size")));
        }
        Ok(a)
    }

    /// `POST /lookup-file-id/{space}/{path...}` → fileId.
    async fn lookup(&self, space: &SpaceInfo, path: &[String]) -> Result<String> {
        let mut url = format!(
            "{}/lookup-file-id/{}",
            self.api,
            enc(&format!("{}@{}", space.name, space.space_id))
        );
        for s in path {
            url.push('/');
            url.push_str(&enc(s));
        }
        let what = format!("POST /lookup-file-id/{}/{}", space.name, path.join("/"));
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Found {
            file_id: String,
        }
        let found: Found = self.json(&what, |c| c.post(&url)).await?;
        Ok(found.file_id)
    }

    /// One page of children in `style`.
    async fn page(&self, dir_id: &str, token: Option<&str>, style: Style) -> Result<Page> {
        let url = format!("{}/data/{}/children", self.api, enc(dir_id));
        let what = format!("GET /data/{dir_id}/children");
        if style == Style::Legacy {
            let q = legacy_query(Some(PAGE_LIMIT), token);
            self.json(&what, |c| c.get(format!("{url}?{q}"))).await
        } else {
            let mut body = serde_json::json!({ "limit": PAGE_LIMIT, "attributes": ATTRS });
            if let Some(t) = token {
                body["token"] = Value::String(t.to_string());
            }
            self.json(&what, |c| c.get(&url).json(&body)).await
        }
    }

    /// Every child of `dir_id`, all pages, as raw attributes.
    async fn children(&self, dir_id: &str) -> Result<Vec<Attrs>> {
        let mut style = self.style();
        'restart: loop {
            let mut out = Vec::new();
            let mut token: Option<String> = None;
            let mut empty_run = 0u32;
            loop {
                let page = match self.page(dir_id, token.as_deref(), style).await {
                    // A 400 that is not a POSIX error while the style is undecided: the server
                    // refused the JSON options, so it is a legacy one.
                    Err(SourceError::Invalid(_)) if style == Style::Unknown => {
                        style = Style::Legacy;
                        continue 'restart;
                    }
                    r => r?,
                };
                if style == Style::Unknown
                    && let Some(first) = page.children.first()
                {
                    if first.get("fileId").is_some() {
                        style = Style::Body;
                    } else {
                        // The body was ignored (default attributes came back): legacy server.
                        self.set_style(Style::Legacy);
                        style = Style::Legacy;
                        continue 'restart;
                    }
                }
                if style != Style::Unknown {
                    self.set_style(style);
                }
                if page.children.is_empty() {
                    empty_run += 1;
                } else {
                    empty_run = 0;
                }
                for c in &page.children {
                    match Attrs::from_json(c) {
                        // A regular file without a size would show as empty: leave it out.
                        Some(a) if a.kind.unwrap_or(EntryKind::File) == EntryKind::File && a.size.is_none() => {
                            tracing::warn!(dir = %dir_id, name = %a.name, "skipping a file listed without a numeric size");
                        }
                        Some(a) => out.push(a),
                        None => {
                            return Err(SourceError::Protocol(format!(
                                "GET /data/{dir_id}/children: an entry without fileId or name"
                            )));
                        }
                    }
                }
                if page.is_last {
                    return Ok(out);
                }
                match page.next_page_token {
                    Some(t) if empty_run < MAX_EMPTY_PAGES => token = Some(t),
                    Some(_) => {
                        return Err(SourceError::Protocol(format!(
                            "GET /data/{dir_id}/children: {MAX_EMPTY_PAGES} empty pages in a row without isLast"
                        )));
                    }
                    None => {
                        return Err(SourceError::Protocol(format!(
                            "GET /data/{dir_id}/children: isLast is false but nextPageToken is null"
                        )));
                    }
                }
            }
        }
    }

    fn content_url(&self, remote: &Remote) -> Result<(String, String)> {
        match remote {
            Remote::Id(id) => Ok((
                format!("{}/data/{}/content", self.api, enc(id)),
                format!("GET /data/{id}/content"),
            )),
            Remote::Path(space_id, path) => {
                let mut url = format!("{}/data/{}/path", self.api, enc(space_id));
                for s in path.split('/').filter(|s| !s.is_empty()) {
                    url.push('/');
                    url.push_str(&enc(s));
                }
                Ok((url, format!("GET /data/{space_id}/path/{path}")))
            }
            _ => Err(SourceError::Invalid("not a file handle".into())),
        }
    }

    /// The single file a `path` in the config names, as a listed entry read by path.
    async fn single(&self, space_id: &str, path: &str) -> Result<Entry> {
        let want = self.space.as_deref().unwrap_or(space_id);
        let space = self.configured_space(want).await?;
        let segs: Vec<String> = path.split('/').map(str::to_string).collect();
        let id = self.lookup(&space, &segs).await?;
        let attrs = self.attrs(&id).await?;
        let mut e = attrs.entry(space_id);
        e.remote = Remote::Path(space_id.to_string(), path.to_string()).encode();
        Ok(e)
    }
}

/// `limit`, `token` and the legacy `attribute=` list as a query string.
fn legacy_query(limit: Option<u32>, token: Option<&str>) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    if let Some(l) = limit {
        q.append_pair("limit", &l.to_string());
    }
    if let Some(t) = token {
        q.append_pair("token", t);
    }
    for a in LEGACY_ATTRS {
        q.append_pair("attribute", a);
    }
    q.finish()
}

/// Percent-encodes one path segment (or an id) for a URL.
pub fn enc(segment: &str) -> String {
    utf8_percent_encode(segment, SEGMENT).to_string()
}

/// One element of `GET /spaces`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpaceInfo {
    space_id: String,
    name: String,
    dir_id: Option<String>,
    /// Deprecated alias of `dirId`.
    file_id: Option<String>,
}

impl SpaceInfo {
    /// The root directory id (a space id also works wherever a directory id is expected).
    fn root_id(&self) -> &str {
        self.dir_id
            .as_deref()
            .or(self.file_id.as_deref())
            .unwrap_or(&self.space_id)
    }

    fn entry(&self, name: String) -> Entry {
        Entry::dir(name, Remote::Id(self.root_id().to_string()).encode())
            .with_xattr("user.onedata.file_id", self.root_id())
            .with_xattr("user.onedata.space_id", self.space_id.as_str())
    }
}

/// `{"children": [...], "isLast": bool, "nextPageToken": string|null}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Page {
    #[serde(default)]
    pub(crate) children: Vec<Value>,
    #[serde(default)]
    pub(crate) is_last: bool,
    pub(crate) next_page_token: Option<String>,
}

/// The attributes of one file, from either naming style.
#[derive(Debug, Clone, PartialEq)]
pub struct Attrs {
    pub file_id: String,
    pub name: String,
    pub kind: Option<EntryKind>,
    pub size: Option<u64>,
    pub mtime: Option<u64>,
    pub mode: Option<u32>,
    pub symlink: Option<String>,
}

impl Attrs {
    /// Reads current (`fileId`, `posixPermissions` "644") or legacy (`file_id`, `mode` 420)
    /// attribute names; unknown fields are ignored. `None` without an id or a name.
    pub fn from_json(v: &Value) -> Option<Attrs> {
        let get = |keys: &[&str]| keys.iter().find_map(|k| v.get(*k).filter(|x| !x.is_null()));
        let file_id = get(&["fileId", "file_id", "id"])?.as_str()?.to_string();
        let name = get(&["name"])?.as_str()?.to_string();
        let kind = get(&["type"]).and_then(Value::as_str).and_then(parse_type);
        let size = get(&["size"]).and_then(Value::as_u64);
        let mtime = get(&["mtime"]).and_then(as_seconds);
        let mode = get(&["posixPermissions", "mode"]).and_then(parse_mode);
        let symlink = get(&["symlinkValue", "symlink_value"])
            .and_then(Value::as_str)
            .map(str::to_string);
        Some(Attrs {
            file_id,
            name,
            kind,
            size,
            mtime,
            mode,
            symlink,
        })
    }

    /// The mount's view of these attributes; `space_id` is shown as an xattr.
    pub(crate) fn entry(&self, space_id: &str) -> Entry {
        let kind = self.kind.unwrap_or(EntryKind::File);
        let size = match kind {
            EntryKind::Symlink => self.symlink.as_ref().map(|s| s.len() as u64).or(self.size).unwrap_or(0),
            _ => self.size.unwrap_or(0),
        };
        // A time SystemTime cannot hold (a hostile `mtime: 1e40`) shows as the epoch.
        let mtime = SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(self.mtime.unwrap_or(0)))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Entry {
            name: self.name.clone(),
            kind,
            size,
            mtime,
            // Read-only mount: the write bits never show.
            mode: self.mode.map(|m| m & 0o777 & !0o222),
            remote: Remote::Id(self.file_id.clone()).encode(),
            validator: (kind == EntryKind::File).then(|| format!("{}:{}", self.mtime.unwrap_or(0), size)),
            checksum: None,
            symlink_target: self.symlink.clone(),
            xattrs: vec![
                ("user.onedata.file_id".into(), self.file_id.clone().into_bytes()),
                ("user.onedata.space_id".into(), space_id.as_bytes().to_vec()),
            ],
        }
    }
}

/// `REG`/`DIR`/`SYMLNK` (case-insensitive; `LNK`/`SYMLINK` accepted from old servers).
pub fn parse_type(t: &str) -> Option<EntryKind> {
    match t.to_ascii_uppercase().as_str() {
        "REG" | "REGULAR" | "FILE" => Some(EntryKind::File),
        "DIR" | "DIRECTORY" => Some(EntryKind::Dir),
        "SYMLNK" | "LNK" | "SYMLINK" => Some(EntryKind::Symlink),
        _ => None,
    }
}

/// `posixPermissions` is an octal string ("644", "0755"); legacy `mode` a number of the bits.
pub fn parse_mode(v: &Value) -> Option<u32> {
    match v {
        Value::String(s) => u32::from_str_radix(s.trim().trim_start_matches("0o"), 8)
            .ok()
            .map(|m| m & 0o7777),
        Value::Number(n) => n.as_u64().map(|m| (m & 0o7777) as u32),
        _ => None,
    }
}

/// Times are UNIX seconds (providers.md §2.5); a float or a numeric string is tolerated.
fn as_seconds(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Maps an error answer of the REST API to the errno-level error (providers.md §2.8).
/// The body is `{"error": {"id", "description", "details"?, "ctx"?}}`; unknown fields ignored.
pub fn api_error(status: u16, body: &[u8], what: &str) -> SourceError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let err = v.get("error").unwrap_or(&Value::Null);
    let id = err.get("id").and_then(Value::as_str).unwrap_or("");
    let desc = err.get("description").and_then(Value::as_str).unwrap_or("");
    let details = err.get("details").unwrap_or(&Value::Null);
    let said = match (id.is_empty(), desc.is_empty()) {
        (true, _) => format!("HTTP {status}"),
        (false, true) => id.to_string(),
        (false, false) => format!("{id}: {desc}"),
    };
    match status {
        401 => {
            let auth = details.get("authError").unwrap_or(&Value::Null);
            let auth_id = auth.get("id").and_then(Value::as_str);
            let auth_desc = auth.get("description").and_then(Value::as_str).unwrap_or("");
            let why = match auth_id {
                Some(a) if auth_desc.is_empty() => format!("authError {a}"),
                Some(a) => format!("authError {a}: {auth_desc}"),
                None => "no valid token was presented".to_string(),
            };
            SourceError::PermissionDenied(format!("{what}: the access token was refused (unauthorized, {why})"))
        }
        403 => SourceError::PermissionDenied(format!("{what}: {said}")),
        404 => SourceError::NotFound(format!("{what}: {said}")),
        400 if id == "posix" => {
            let errno = details.get("errno").and_then(Value::as_str).unwrap_or("");
            let msg = format!(
                "{what}: posix {errno}{}",
                if desc.is_empty() {
                    String::new()
                } else {
                    format!(" ({desc})")
                }
            );
            match errno {
                "enoent" => SourceError::NotFound(msg),
                "eacces" | "eperm" | "erofs" => SourceError::PermissionDenied(msg),
                "enotdir" => SourceError::NotADirectory(msg),
                "eisdir" | "einval" | "enametoolong" | "eloop" => SourceError::Invalid(msg),
                _ => SourceError::Http { status, message: msg },
            }
        }
        400 => SourceError::Invalid(format!("{what}: {said}")),
        // Only directory downloads redirect; the token must not follow a redirect anywhere.
        300..=399 => SourceError::Protocol(format!("{what}: unexpected redirect (HTTP {status}), not followed")),
        s => SourceError::Http {
            status: s,
            message: format!("{what}: {said}"),
        },
    }
}

/// A parsed `Entry.remote`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Remote {
    Spaces,
    Id(String),
    Single(String, String),
    Path(String, String),
}

impl Remote {
    fn encode(&self) -> String {
        match self {
            Remote::Spaces => "spaces:".to_string(),
            Remote::Id(id) => format!("id:{id}"),
            Remote::Single(s, p) => format!("single:{s}/{p}"),
            Remote::Path(s, p) => format!("path:{s}/{p}"),
        }
    }

    fn parse(s: &str) -> Result<Remote> {
        let bad = || SourceError::Invalid(format!("'{s}' is not a Onedata handle"));
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        match kind {
            "spaces" => Ok(Remote::Spaces),
            "id" if !rest.is_empty() => Ok(Remote::Id(rest.to_string())),
            "single" | "path" => {
                let (space, path) = rest.split_once('/').ok_or_else(bad)?;
                let (space, path) = (space.to_string(), path.to_string());
                Ok(if kind == "single" {
                    Remote::Single(space, path)
                } else {
                    Remote::Path(space, path)
                })
            }
            _ => Err(bad()),
        }
    }
}

/// The space id a directory entry carries in its xattrs.
fn space_of(e: &Entry) -> String {
    e.xattrs
        .iter()
        .find(|(k, _)| k == "user.onedata.space_id")
        .map(|(_, v)| String::from_utf8_lossy(v).to_string())
        .unwrap_or_default()
}

#[async_trait]
impl Source for OnedataSource {
    fn kind(&self) -> &'static str {
        "onedata"
    }

    async fn root(&self) -> Result<Entry> {
        let Some(want) = &self.space else {
            // Lists the spaces now so a bad token fails the mount with its authError.
            self.spaces().await?;
            return Ok(Entry::dir("", Remote::Spaces.encode()));
        };
        let space = self.configured_space(want).await?;
        let Some(path) = &self.path else {
            return Ok(space.entry(String::new()));
        };
        let id = self.lookup(&space, path).await?;
        let attrs = self.attrs(&id).await?;
        match attrs.kind {
            Some(EntryKind::Dir) => {
                let mut e = attrs.entry(&space.space_id);
                e.name = String::new();
                Ok(e)
            }
            _ => {
                // A file (or link): the root is a directory holding just it, read by path.
                Ok(
                    Entry::dir("", Remote::Single(space.space_id.clone(), path.join("/")).encode())
                        .with_xattr("user.onedata.space_id", space.space_id.as_str()),
                )
            }
        }
    }

    async fn list(&self, dir: &Entry) -> Result<Vec<Entry>> {
        match Remote::parse(&dir.remote)? {
            Remote::Spaces => {
                let spaces = self.spaces().await?;
                let mut count: HashMap<&str, usize> = HashMap::new();
                for s in &spaces {
                    *count.entry(s.name.as_str()).or_default() += 1;
                }
                Ok(spaces
                    .iter()
                    .map(|s| {
                        let name = if count[s.name.as_str()] > 1 {
                            format!("{}@{}", s.name, s.space_id)
                        } else {
                            s.name.clone()
                        };
                        s.entry(name)
                    })
                    .collect())
            }
            Remote::Id(id) => {
                let space = space_of(dir);
                let children = self.children(&id).await?;
                Ok(children.iter().map(|a| a.entry(&space)).collect())
            }
            Remote::Single(space, path) => Ok(vec![self.single(&space, &path).await?]),
            Remote::Path(..) => Err(SourceError::NotADirectory(format!("{} is a file", dir.name))),
        }
    }

    async fn open(&self, file: &Entry, req: &OpenRequest) -> Result<Opened> {
        let remote = Remote::parse(&file.remote)?;
        let entry = if req.revalidate {
            match &remote {
                Remote::Id(id) => {
                    let mut e = self.attrs(id).await?.entry(&space_of(file));
                    e.name = file.name.clone();
                    e
                }
                Remote::Path(space, path) => self.single(space, path).await?,
                _ => return Err(SourceError::Invalid(format!("{} is not a file", file.name))),
            }
        } else {
            file.clone()
        };
        if entry.kind == EntryKind::Dir {
            return Err(SourceError::Invalid(format!("{} is a directory", file.name)));
        }
        let (url, what) = self.content_url(&remote)?;
        let reader = OnedataReader {
            http: self.http.clone(),
            token: self.token.clone(),
            url,
            what,
            size: entry.size,
        };
        Ok(Opened {
            reader: Arc::new(reader),
            entry,
            prefix: None,
        })
    }

    async fn readlink(&self, link: &Entry) -> Result<String> {
        if let Some(t) = &link.symlink_target {
            return Ok(t.clone());
        }
        // Legacy servers do not list symlinkValue: download the link itself (§2.6).
        let (url, what) = self.content_url(&Remote::parse(&link.remote)?)?;
        let resp = self
            .call(&what, |c| c.get(format!("{url}?follow_symlinks=false")))
            .await?;
        if !resp.status().is_success() {
            return Err(self.error_of(resp, &what).await);
        }
        let body = self.http.body_bytes(resp, &what, MAX_LINK_BYTES).await?;
        String::from_utf8(body.to_vec()).map_err(|_| SourceError::Protocol(format!("{what}: link target is not UTF-8")))
    }
}

/// Reads one file by id or by path. Onedata has no version ids: a total in `Content-Range`
/// other than the size listed means the file changed (ESTALE).
struct OnedataReader {
    http: Http,
    token: HeaderValue,
    url: String,
    what: String,
    size: u64,
}

#[async_trait]
impl FileReader for OnedataReader {
    async fn raw_http(&self) -> Option<crate::splice::RawHttp> {
        let url = url::Url::parse(&self.url).ok().filter(|u| u.scheme() == "http")?;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-auth-token", self.token.clone());
        Some(crate::splice::RawHttp::new(url, headers))
    }

    async fn read_stream(&self, r: Range<u64>) -> Result<BoxStream<'static, Result<Bytes>>> {
        let what = &self.what;
        // Always a closed range: `bytes=0-` answers 206 here, and the end keeps a file that
        // grew from sending more than the block wants.
        let range = HeaderValue::from_str(&range::header_value(&r)).expect("ascii");
        let resp = self
            .http
            .send(what, |c| {
                c.get(&self.url)
                    .header("x-auth-token", self.token.clone())
                    .header(reqwest::header::RANGE, range.clone())
            })
            .await?;
        crate::metrics::Metrics::add(&crate::metrics::global().http_requests, 1);
        let status = resp.status().as_u16();
        if !matches!(status, 200 | 206 | 416) {
            let body = tokio::time::timeout(Duration::from_secs(5), resp.bytes())
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or_default();
            return Err(api_error(status, &body, what));
        }
        self.http.ranged_body(resp, &r, Some(self.size), what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn current_and_legacy_attribute_names_parse_alike() {
        let now = Attrs::from_json(&json!({
            "fileId": "AB12", "name": "a.txt", "type": "REG", "size": 5, "mtime": 1700000000,
            "posixPermissions": "644", "unknownNewField": [1, 2]
        }))
        .unwrap();
        let old = Attrs::from_json(&json!({
            "file_id": "AB12", "name": "a.txt", "type": "REG", "size": 5, "mtime": 1700000000, "mode": 420
        }))
        .unwrap();
        assert_eq!(now, old);
        assert_eq!(now.mode, Some(0o644));
        assert_eq!(now.kind, Some(EntryKind::File));
    }

    #[test]
    fn an_mtime_beyond_what_system_time_holds_shows_as_the_epoch() {
        // Found by fuzzing (fuzz/fuzz_targets/onedata_json.rs): this panicked with
        // "overflow when adding duration to instant".
        for mtime in [json!(3.4e40), json!(u64::MAX), json!("18446744073709551615")] {
            let a = Attrs::from_json(&json!({"fileId": "F", "name": "a", "type": "REG", "mtime": mtime})).unwrap();
            assert_eq!(a.entry("S").mtime, SystemTime::UNIX_EPOCH);
        }
    }

    #[test]
    fn entries_clear_write_bits_and_keep_seconds() {
        let a = Attrs::from_json(&json!({
            "fileId": "F", "name": "d", "type": "DIR", "size": null, "mtime": 10, "posixPermissions": "775"
        }))
        .unwrap();
        let e = a.entry("S");
        assert_eq!(e.kind, EntryKind::Dir);
        assert_eq!(e.mode, Some(0o555));
        assert_eq!(e.size, 0);
        assert_eq!(e.mtime, SystemTime::UNIX_EPOCH + Duration::from_secs(10));
        assert_eq!(e.remote, "id:F");
        assert!(e.xattrs.contains(&("user.onedata.space_id".into(), b"S".to_vec())));
    }

    #[test]
    fn symlinks_carry_their_target() {
        let a = Attrs::from_json(&json!({
            "fileId": "L", "name": "l", "type": "SYMLNK", "symlinkValue": "../x/y", "size": 0
        }))
        .unwrap();
        let e = a.entry("S");
        assert_eq!(e.kind, EntryKind::Symlink);
        assert_eq!(e.symlink_target.as_deref(), Some("../x/y"));
        assert_eq!(e.size, 6);
    }

    #[test]
    fn posix_errors_map_through_errno() {
        let body = |errno: &str| {
            serde_json::to_vec(&json!({"error": {"id": "posix", "description": "x", "details": {"errno": errno}}}))
                .unwrap()
        };
        assert!(matches!(api_error(400, &body("enoent"), "w"), SourceError::NotFound(_)));
        assert!(matches!(
            api_error(400, &body("eacces"), "w"),
            SourceError::PermissionDenied(_)
        ));
        assert!(matches!(
            api_error(400, &body("eperm"), "w"),
            SourceError::PermissionDenied(_)
        ));
        assert!(matches!(
            api_error(400, &body("enotdir"), "w"),
            SourceError::NotADirectory(_)
        ));
        assert!(matches!(api_error(404, b"", "w"), SourceError::NotFound(_)));
        assert!(matches!(
            api_error(400, b"{\"error\":{\"id\":\"badValueIdentifier\"}}", "w"),
            SourceError::Invalid(_)
        ));
        assert!(matches!(api_error(403, b"", "w"), SourceError::PermissionDenied(_)));
        assert!(matches!(api_error(302, b"", "w"), SourceError::Protocol(_)));
        assert!(matches!(
            api_error(501, b"", "w"),
            SourceError::Http { status: 501, .. }
        ));
    }

    #[test]
    fn unauthorized_names_the_auth_error_and_never_the_token() {
        let body = br#"{"error":{"id":"unauthorized","description":"You must authenticate yourself.",
            "details":{"authError":{"id":"tokenRevoked","description":"Provided token has been revoked."}}}}"#;
        let e = api_error(401, body, "GET /spaces");
        assert!(
            matches!(&e, SourceError::PermissionDenied(m) if m.contains("tokenRevoked")),
            "{e}"
        );
        let e = api_error(401, b"not json", "GET /spaces");
        assert!(matches!(e, SourceError::PermissionDenied(_)));
    }

    #[test]
    fn quick_form_urls() {
        let c = OnedataConfig::from_url("onedata://op.example.org/My%20Space/a/b", "od").unwrap();
        assert_eq!(c.endpoint, "https://op.example.org");
        assert_eq!(c.space.as_deref(), Some("My Space"));
        assert_eq!(c.path.as_deref(), Some("a/b"));
        let c = OnedataConfig::from_url("onedata+http://127.0.0.1:8443", "od").unwrap();
        assert_eq!(c.endpoint, "http://127.0.0.1:8443");
        assert_eq!(c.space, None);
        let c = OnedataConfig::from_url("onedata://op.example.org:9443/", "od").unwrap();
        assert_eq!(c.endpoint, "https://op.example.org:9443");
        assert!(OnedataConfig::from_url("onedata:///space", "od").is_err());
        assert!(OnedataConfig::from_url("ftp://x", "od").is_err());
    }

    #[test]
    fn handles_round_trip() {
        for r in [
            Remote::Spaces,
            Remote::Id("00AB".into()),
            Remote::Single("sp".into(), "a/b c".into()),
            Remote::Path("sp".into(), "x".into()),
        ] {
            assert_eq!(Remote::parse(&r.encode()).unwrap(), r);
        }
        assert!(Remote::parse("nonsense").is_err());
    }

    #[test]
    fn segments_are_encoded_outside_unreserved() {
        assert_eq!(enc("a b/c%d~e.f-g_h"), "a%20b%2Fc%25d~e.f-g_h");
        assert_eq!(enc("zaż"), "za%C5%BC");
    }
}

//! Emulator of the Tencent Cloud SMH business API and of the COS signed URLs it redirects to
//! (providers.md §3, checklist §3.11), over a directory tree.
//!
//! **Tree convention.** `--root DIR` is the one space (`--space-id`, default `-`) of the one
//! library (`--library-id`, `--library-secret`). Regular files are files, directories are
//! directories, symbolic links are `symlink` items whose `linkTo` is the target's path (as
//! segments) inside the root. Two hidden directories at the root are never listed nor served
//! as paths:
//!
//! * `.history/<path>.v<N>` (N = 1, 2, …) are the older versions of `<path>`; the current file
//!   is version `max(N) + 1`. A version's `history_id` is its number N (ids are unique per
//!   file, which is all the API needs since a `history_id` always comes with the path).
//! * `.meta/<path>.json` (optional) is a JSON object of string values: the file's `metaData`
//!   (`x-smh-meta-*` headers).
//!
//! **Endpoints.**
//! * `GET|POST /api/v1/token` checks library id and secret, clamps `period` to
//!   [`SmhEmuOptions::min_period`]..315360000 (default [`SmhEmuOptions::default_period`]),
//!   binds the token to `space_id` when given, answers `{accessToken, expiresIn}`; every valid
//!   use slides the expiry by the period. `POST /api/v1/token/{lib}/{token}` renews.
//!   A missing, unknown or expired token is 403 `InvalidAccessToken`; a token of another space
//!   is 403 `AccessTokenNotMatchSpace` (unless [`SmhEmuOptions::public_read`]).
//! * `GET /api/v1/directory/{lib}/{space}[/{dir}]`: `marker`+`limit` (`nextMarker` while more
//!   remain; the marker is an opaque offset) or `page`+`page_size` (`totalNum`), both at once is
//!   400; dirs first, then by name, or `order_by`/`orderBy` (`name`, `size`,
//!   `modificationTime`, `creationTime`) with `order_by_type`/`orderByType`; `filter`
//!   (`onlyDir`, `onlyFile`); `with_inode`; `?info` describes a directory or a file.
//! * `HEAD /api/v1/file/…` (x-smh-* headers, 404 without body), `GET /api/v1/file/…?info`
//!   (JSON with `cosUrl`; `pre_check` or [`SmhEmuOptions::omit_cos_url`] omits it), `GET /api/v1/file/…` (302 to the `cosUrl`, with
//!   the x-smh-* headers); `history_id` everywhere.
//! * `GET /api/v1/directory-history/{lib}/{space}/history-list/{path}`: versions, latest first.
//! * `GET|HEAD /cos/<object>?q-sign-time=<start>;<end>&q-url-id=<n>&q-signature=<hex>`: the COS
//!   stub. The signature is HMAC-SHA1 over method, object path, sign time and URL id with a
//!   per-emulator key, checked in constant time (403 `SignatureDoesNotMatch`); past `end`
//!   (lifetime [`SmhEmuOptions::url_ttl`]) or after [`SmhControl::expire_signed_urls`] the answer
//!   is 403 `AccessDenied` / `Request has expired`. Single ranges (`a-b`, `a-`, `-n`) → 206,
//!   start beyond the size → 416 `InvalidRange`, anything else → 200 whole object; `ETag`
//!   (quoted MD5), `Last-Modified`, `x-cos-hash-crc64ecma`, `x-cos-request-id`; errors are COS
//!   XML `<Error><Code/><Message/><RequestId/><TraceId/></Error>`.
//!
//! Paths are percent-decoded as a whole, so literal and `%2F`-encoded slashes both work.
//! Run-time switches: [`SmhControl`] in process, `POST /__fetchfs/smh` ([`SmhSwitches`]) from
//! another process.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Harness;
use super::http::{RangeAsk, parse_range};
use crate::provider::smh::{Crc64, encode_path};

/// Longest token period the API allows (§3.2).
const MAX_PERIOD: u64 = 315_360_000;
/// Hidden directory of older versions.
const HISTORY_DIR: &str = ".history";
/// Hidden directory of `metaData` sidecars.
const META_DIR: &str = ".meta";

type HmacSha1 = hmac::Hmac<sha1::Sha1>;

/// Configuration of one emulated library space.
#[derive(Debug, Clone)]
pub struct SmhEmuOptions {
    pub library_id: String,
    pub library_secret: String,
    /// `-` for a single-tenant library.
    pub space_id: String,
    /// Lifetime of signed COS URLs.
    pub url_ttl: Duration,
    /// Token period when the request names none, seconds.
    pub default_period: u64,
    /// Smallest period granted (the API's is 300 s; tests lower it).
    pub min_period: u64,
    /// Largest `limit`/`page_size` honoured (the real maximum is undocumented).
    pub max_limit: usize,
    /// Write `size` as a JSON string, as the Java SDK models it, instead of a number.
    pub sizes_as_strings: bool,
    /// Serve without an access token (a public-read space).
    pub public_read: bool,
    /// HMAC key of signed URLs (random when `None`).
    pub sign_key: Option<Vec<u8>>,
    /// Leave `cosUrl` out of `?info` answers (clients must use the 302 of the download API).
    pub omit_cos_url: bool,
}

impl Default for SmhEmuOptions {
    fn default() -> Self {
        SmhEmuOptions {
            library_id: "smhdemo".into(),
            library_secret: "demo-secret".into(),
            space_id: "-".into(),
            url_ttl: Duration::from_secs(900),
            default_period: 86_400,
            min_period: 300,
            max_limit: 1000,
            sizes_as_strings: false,
            public_read: false,
            sign_key: None,
            omit_cos_url: false,
        }
    }
}

/// Flags of `fetchfs emulate smh --root DIR --port N …`.
#[derive(clap::Args, Debug, Clone)]
pub struct EmuArgs {
    /// Library id clients must use.
    #[arg(long, default_value = "smhdemo")]
    pub library_id: String,
    /// Library secret clients must present to `GET /api/v1/token`.
    #[arg(long, default_value = "demo-secret")]
    pub library_secret: String,
    /// Space id (`-` = single-tenant library).
    #[arg(long, default_value = "-")]
    pub space_id: String,
    /// Lifetime of signed COS URLs (e.g. 15m, 30s).
    #[arg(long, default_value = "15m", value_parser = crate::config::parse_duration)]
    pub url_ttl: Duration,
    /// Token period in seconds when the client asks for none (values under the API's 300 s
    /// minimum are honoured here, to watch clients renew).
    #[arg(long, default_value_t = 86_400)]
    pub token_period: u64,
    /// Write `size` as a string in JSON (as the Java SDK models it).
    #[arg(long)]
    pub sizes_as_strings: bool,
    /// Serve without access tokens (public-read space).
    #[arg(long)]
    pub public_read: bool,
}

impl From<&EmuArgs> for SmhEmuOptions {
    fn from(a: &EmuArgs) -> SmhEmuOptions {
        SmhEmuOptions {
            library_id: a.library_id.clone(),
            library_secret: a.library_secret.clone(),
            space_id: a.space_id.clone(),
            url_ttl: a.url_ttl,
            default_period: a.token_period,
            min_period: 300.min(a.token_period),
            sizes_as_strings: a.sizes_as_strings,
            public_read: a.public_read,
            ..SmhEmuOptions::default()
        }
    }
}

/// Switches for `POST /__fetchfs/smh` (all optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmhSwitches {
    /// Expire every token issued so far.
    pub expire_tokens: bool,
    /// Expire every signed URL issued so far.
    pub expire_urls: bool,
    pub url_ttl_secs: Option<u64>,
    /// Paths (relative to the root) whose published CRC-64 is wrong from now on.
    pub wrong_crc64: Vec<String>,
    pub sizes_as_strings: Option<bool>,
    pub omit_cos_url: Option<bool>,
}

struct TokenState {
    expires: Instant,
    period: Duration,
    /// Space the token is bound to (`None`: any space of the library).
    space: Option<String>,
}

/// Cached digests of one file version.
#[derive(Clone)]
struct Digest {
    len: u64,
    mtime: SystemTime,
    crc: u64,
    md5: String,
}

/// Run-time state and switches of one emulator.
pub struct SmhControl {
    opts: SmhEmuOptions,
    key: Vec<u8>,
    tokens: Mutex<HashMap<String, TokenState>>,
    tokens_issued: AtomicU64,
    url_ttl_ms: AtomicU64,
    url_serial: AtomicU64,
    /// URLs with an id below this are expired.
    url_cutoff: AtomicU64,
    wrong_crc: Mutex<HashSet<String>>,
    sizes_as_strings: AtomicBool,
    omit_cos_url: AtomicBool,
    default_period: AtomicU64,
    min_period: AtomicU64,
    digests: Mutex<HashMap<PathBuf, Digest>>,
    listings: Mutex<HashMap<PathBuf, Arc<Listing>>>,
}

impl SmhControl {
    /// Every token issued so far answers `InvalidAccessToken` from now on.
    pub fn expire_tokens(&self) {
        self.tokens.lock().unwrap().clear();
    }

    /// Every signed URL issued so far answers `Request has expired` from now on.
    pub fn expire_signed_urls(&self) {
        let n = self.url_serial.load(Ordering::SeqCst);
        self.url_cutoff.store(n, Ordering::SeqCst);
    }

    /// Lifetime of signed URLs issued from now on.
    pub fn set_url_ttl(&self, ttl: Duration) {
        self.url_ttl_ms.store(ttl.as_millis() as u64, Ordering::SeqCst);
    }

    /// Publish a wrong `crc64` (listing, info, HEAD, history, COS header) for `path`.
    pub fn publish_wrong_crc64(&self, path: &str) {
        self.wrong_crc
            .lock()
            .unwrap()
            .insert(path.trim_matches('/').to_string());
    }

    pub fn set_sizes_as_strings(&self, on: bool) {
        self.sizes_as_strings.store(on, Ordering::SeqCst);
    }

    /// Leave `cosUrl` out of `?info` answers from now on.
    pub fn set_omit_cos_url(&self, on: bool) {
        self.omit_cos_url.store(on, Ordering::SeqCst);
    }

    /// Token period granted when the client asks for none, and the lower clamp.
    pub fn set_token_period(&self, default: u64, min: u64) {
        self.default_period.store(default, Ordering::SeqCst);
        self.min_period.store(min, Ordering::SeqCst);
    }

    /// Tokens issued so far (by `GET|POST /api/v1/token`).
    pub fn tokens_issued(&self) -> u64 {
        self.tokens_issued.load(Ordering::SeqCst)
    }

    fn apply(&self, s: SmhSwitches) {
        if s.expire_tokens {
            self.expire_tokens();
        }
        if s.expire_urls {
            self.expire_signed_urls();
        }
        if let Some(t) = s.url_ttl_secs {
            self.set_url_ttl(Duration::from_secs(t));
        }
        for p in &s.wrong_crc64 {
            self.publish_wrong_crc64(p);
        }
        if let Some(b) = s.sizes_as_strings {
            self.set_sizes_as_strings(b);
        }
        if let Some(b) = s.omit_cos_url {
            self.set_omit_cos_url(b);
        }
    }

    fn sign(&self, method: &str, object: &str, sign_time: &str, id: &str) -> String {
        let mut mac = HmacSha1::new_from_slice(&self.key).expect("any key length");
        mac.update(format!("{method}\n{object}\n{sign_time}\n{id}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    fn verify(&self, object: &str, sign_time: &str, id: &str, signature: &str) -> bool {
        let Ok(sig) = hex::decode(signature) else {
            return false;
        };
        let mut mac = HmacSha1::new_from_slice(&self.key).expect("any key length");
        mac.update(format!("get\n{object}\n{sign_time}\n{id}").as_bytes());
        mac.verify_slice(&sig).is_ok()
    }
}

/// The router, its fault/stats harness and the run-time switches.
pub struct SmhEmulator {
    pub router: Router,
    pub harness: Harness,
    pub control: Arc<SmhControl>,
}

#[derive(Clone)]
struct AppState {
    root: Arc<PathBuf>,
    ctl: Arc<SmhControl>,
}

/// Builds the emulator serving `root` as one library space.
pub fn router(root: &Path, opts: SmhEmuOptions) -> SmhEmulator {
    let key = opts
        .sign_key
        .clone()
        .unwrap_or_else(|| rand::random::<[u8; 20]>().to_vec());
    let ctl = Arc::new(SmhControl {
        key,
        tokens: Mutex::new(HashMap::new()),
        tokens_issued: AtomicU64::new(0),
        url_ttl_ms: AtomicU64::new(opts.url_ttl.as_millis() as u64),
        url_serial: AtomicU64::new(0),
        url_cutoff: AtomicU64::new(0),
        wrong_crc: Mutex::new(HashSet::new()),
        sizes_as_strings: AtomicBool::new(opts.sizes_as_strings),
        omit_cos_url: AtomicBool::new(opts.omit_cos_url),
        default_period: AtomicU64::new(opts.default_period),
        min_period: AtomicU64::new(opts.min_period),
        digests: Mutex::new(HashMap::new()),
        listings: Mutex::new(HashMap::new()),
        opts,
    });
    let state = AppState {
        root: Arc::new(root.to_path_buf()),
        ctl: ctl.clone(),
    };
    let harness = Harness::default();
    let r = Router::new()
        .route(
            "/__fetchfs/smh",
            axum::routing::post(
                |State(s): State<AppState>, axum::Json(sw): axum::Json<SmhSwitches>| async move {
                    s.ctl.apply(sw);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .fallback(dispatch)
        .with_state(state);
    let router = super::fault_layer(r, harness.clone(), |status| {
        let body = json!({
            "code": if status == 429 { "TooManyRequests" } else { "ServiceUnavailable" },
            "message": "injected fault",
            "requestId": request_id(),
        });
        (body.to_string(), "application/json")
    });
    SmhEmulator {
        router,
        harness,
        control: ctl,
    }
}

fn request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// An SMH JSON error.
fn smh_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({"code": code, "message": message, "requestId": request_id()});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// A COS XML error.
fn cos_error(status: StatusCode, code: &str, message: &str) -> Response {
    let rid = request_id();
    let body = format!(
        "<?xml version='1.0' encoding='utf-8' ?>\n<Error>\n\t<Code>{code}</Code>\n\t<Message>{message}</Message>\n\t<RequestId>{rid}</RequestId>\n\t<TraceId>{rid}</TraceId>\n</Error>"
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "application/xml".to_string()),
            (header::HeaderName::from_static("x-cos-request-id"), rid),
        ],
        body,
    )
        .into_response()
}

fn json_ok(v: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn iso(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Query pairs; a key without `=` (`?info`) has an empty value.
struct Query(Vec<(String, String)>);

impl Query {
    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }
    fn has(&self, k: &str) -> bool {
        self.0.iter().any(|(a, _)| a == k)
    }
    /// First of several spellings (`order_by` / `orderBy`).
    fn any(&self, keys: &[&str]) -> Option<&str> {
        keys.iter().find_map(|k| self.get(k))
    }
}

/// Everything is served from a blocking task: the handlers stat, read and hash files.
async fn dispatch(State(s): State<AppState>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let join = tokio::task::spawn_blocking(move || route(&s, &method, &uri, &headers, &host)).await;
    join.unwrap_or_else(|_| smh_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", "handler panicked"))
}

fn route(s: &AppState, method: &Method, uri: &Uri, headers: &HeaderMap, host: &str) -> Response {
    let q = Query(
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    );
    let raw = uri.path();
    if raw == "/api/v1/token" || raw == "/api/v1/token/" {
        if method != Method::GET && method != Method::POST {
            return smh_error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "use GET or POST");
        }
        return issue_token(s, &q);
    }
    if let Some(rest) = raw.strip_prefix("/api/v1/token/") {
        if method != Method::POST {
            return smh_error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "use POST");
        }
        let (lib, tok) = split_two(rest);
        return renew_token(s, &lib, &tok);
    }
    if let Some(rest) = raw.strip_prefix("/cos/") {
        if method != Method::GET && method != Method::HEAD {
            return cos_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "The specified method is not allowed.",
            );
        }
        return cos_get(s, method, rest, &q, headers);
    }
    for (prefix, kind) in [
        ("/api/v1/directory-history/", Api::History),
        ("/api/v1/directory/", Api::Directory),
        ("/api/v1/file/", Api::File),
    ] {
        let Some(rest) = raw.strip_prefix(prefix).or_else(|| {
            // `/api/v1/directory/{lib}/{space}` without the trailing slash is the root.
            raw.strip_prefix(prefix.trim_end_matches('/')).filter(|r| r.is_empty())
        }) else {
            continue;
        };
        let (lib, after_lib) = split_first(rest);
        let (space, path_raw) = split_first(&after_lib);
        if let Err(r) = authorize(s, &q, &lib, &space) {
            return r;
        }
        let mut path_raw = path_raw;
        if kind == Api::History {
            let Some(p) = path_raw.strip_prefix("history-list") else {
                return smh_error(StatusCode::NOT_FOUND, "NotFound", "no such API");
            };
            path_raw = p.trim_start_matches('/').to_string();
        }
        let Some(path) = clean_path(&path_raw) else {
            return smh_error(StatusCode::BAD_REQUEST, "InvalidPath", "the path is not valid");
        };
        return match kind {
            Api::Directory if q.has("info") => info_json(s, &path, q.get("history_id"), host, false),
            Api::Directory => list_dir(s, &path, &q),
            Api::File => file_api(s, method, &path, &q, host),
            Api::History => history_list(s, &path, &q),
        };
    }
    smh_error(StatusCode::NOT_FOUND, "NotFound", "no such API")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Directory,
    File,
    History,
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// `a/rest` → (`a` decoded, `rest` raw).
fn split_first(s: &str) -> (String, String) {
    match s.split_once('/') {
        Some((a, b)) => (decode(a), b.to_string()),
        None => (decode(s), String::new()),
    }
}

fn split_two(s: &str) -> (String, String) {
    let (a, b) = split_first(s);
    (a, decode(b.trim_end_matches('/')))
}

/// The decoded path as clean segments joined by `/` (`""` = root); `None` for `.`/`..` or a
/// hidden top-level directory of the tree convention.
fn clean_path(raw: &str) -> Option<String> {
    let decoded = decode(raw);
    let segs: Vec<&str> = decoded.split('/').filter(|s| !s.is_empty()).collect();
    if segs.iter().any(|s| *s == "." || *s == ".." || s.contains('\0')) {
        return None;
    }
    if segs.first().is_some_and(|f| *f == HISTORY_DIR || *f == META_DIR) {
        return None;
    }
    Some(segs.join("/"))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

// ---------------------------------------------------------------------------------------------
// Tokens

fn issue_token(s: &AppState, q: &Query) -> Response {
    let o = &s.ctl.opts;
    match q.get("library_id") {
        Some(l) if l == o.library_id => {}
        _ => return smh_error(StatusCode::NOT_FOUND, "LibraryNotFound", "library not found"),
    }
    if q.get("library_secret") != Some(o.library_secret.as_str()) {
        return smh_error(
            StatusCode::FORBIDDEN,
            "InvalidLibrarySecret",
            "the library secret is wrong",
        );
    }
    let space = q.get("space_id").filter(|v| !v.is_empty()).map(str::to_string);
    if let Some(sp) = &space
        && !sp.split(',').any(|x| x == o.space_id)
    {
        return smh_error(StatusCode::NOT_FOUND, "SpaceNotFound", "space not found");
    }
    let min = s.ctl.min_period.load(Ordering::SeqCst);
    let period = q
        .get("period")
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or_else(|| s.ctl.default_period.load(Ordering::SeqCst))
        .clamp(min, MAX_PERIOD);
    let token = format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
    let period_d = Duration::from_secs(period);
    s.ctl.tokens.lock().unwrap().insert(
        token.clone(),
        TokenState {
            expires: Instant::now() + period_d,
            period: period_d,
            space,
        },
    );
    s.ctl.tokens_issued.fetch_add(1, Ordering::SeqCst);
    json_ok(json!({"accessToken": token, "expiresIn": period}))
}

fn renew_token(s: &AppState, lib: &str, token: &str) -> Response {
    if lib != s.ctl.opts.library_id {
        return smh_error(StatusCode::NOT_FOUND, "LibraryNotFound", "library not found");
    }
    let mut tokens = s.ctl.tokens.lock().unwrap();
    match tokens.get_mut(token) {
        Some(t) if t.expires > Instant::now() => {
            t.expires = Instant::now() + t.period;
            json_ok(json!({"accessToken": token, "expiresIn": t.period.as_secs()}))
        }
        _ => smh_error(
            StatusCode::FORBIDDEN,
            "InvalidAccessToken",
            "the access token is invalid or expired",
        ),
    }
}

/// Library, space and token checks of every business call; a valid use slides the expiry.
/// (The error is the ready HTTP answer, built once per request: its size does not matter.)
#[allow(clippy::result_large_err)]
fn authorize(s: &AppState, q: &Query, lib: &str, space: &str) -> Result<(), Response> {
    let o = &s.ctl.opts;
    if lib != o.library_id {
        return Err(smh_error(StatusCode::NOT_FOUND, "LibraryNotFound", "library not found"));
    }
    let space_missing = || smh_error(StatusCode::NOT_FOUND, "SpaceNotFound", "space not found");
    if o.public_read {
        return if space == o.space_id {
            Ok(())
        } else {
            Err(space_missing())
        };
    }
    // The token is checked before the space exists: a token of one space used on another is
    // refused as such, whether or not that space exists.
    let invalid = || {
        smh_error(
            StatusCode::FORBIDDEN,
            "InvalidAccessToken",
            "the access token is invalid or expired",
        )
    };
    let Some(tok) = q.get("access_token").filter(|t| !t.is_empty()) else {
        return Err(invalid());
    };
    let mut tokens = s.ctl.tokens.lock().unwrap();
    let Some(t) = tokens.get_mut(tok) else {
        return Err(invalid());
    };
    if t.expires <= Instant::now() {
        return Err(invalid());
    }
    if t.space.as_deref().is_some_and(|sp| !sp.split(',').any(|x| x == space)) {
        return Err(smh_error(
            StatusCode::FORBIDDEN,
            "AccessTokenNotMatchSpace",
            "the access token does not match the space",
        ));
    }
    t.expires = Instant::now() + t.period;
    if space != o.space_id {
        return Err(space_missing());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tree

/// One node of the tree as the API describes it.
struct Node {
    /// Path relative to the root (`""` = root).
    path: String,
    name: String,
    /// Where the bytes are (a version file for historical versions).
    file: PathBuf,
    meta: std::fs::Metadata,
    kind: &'static str,
    link_to: Option<Vec<String>>,
}

fn kind_of(name: &str, meta: &std::fs::Metadata) -> &'static str {
    if meta.file_type().is_symlink() {
        return "symlink";
    }
    if meta.is_dir() {
        return "dir";
    }
    match ext(name).as_str() {
        "jpg" | "jpeg" | "png" | "gif" | "webp" | "bmp" | "heic" => "image",
        "mp4" | "mov" | "mkv" | "avi" | "webm" => "video",
        _ => "file",
    }
}

fn ext(name: &str) -> String {
    name.rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default()
}

fn content_type(name: &str) -> &'static str {
    match ext(name).as_str() {
        "txt" | "md" | "log" | "csv" => "text/plain",
        "json" => "application/json",
        "html" | "htm" => "text/html",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "mp4" => "video/mp4",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

fn file_type(name: &str) -> &'static str {
    match ext(name).as_str() {
        "doc" | "docx" => "word",
        "xls" | "xlsx" | "csv" => "excel",
        "ppt" | "pptx" => "powerpoint",
        "pdf" => "pdf",
        "txt" | "md" | "log" => "txt",
        _ => "other",
    }
}

impl AppState {
    fn node(&self, path: &str) -> Option<Node> {
        let file = self.root.join(path);
        let meta = std::fs::symlink_metadata(&file).ok()?;
        let name = path.rsplit('/').next().unwrap_or("").to_string();
        let kind = kind_of(&name, &meta);
        let link_to = if kind == "symlink" {
            self.link_target(path, &file)
        } else {
            None
        };
        Some(Node {
            path: path.to_string(),
            name,
            file,
            meta,
            kind,
            link_to,
        })
    }

    /// A symlink's target as segments inside the root, `None` if it leaves the root.
    fn link_target(&self, path: &str, file: &Path) -> Option<Vec<String>> {
        let target = std::fs::read_link(file).ok()?;
        let mut segs: Vec<String> = path.split('/').map(str::to_string).collect();
        segs.pop();
        if target.is_absolute() {
            let rel = target.strip_prefix(&*self.root).ok()?;
            segs.clear();
            segs.extend(rel.iter().map(|c| c.to_string_lossy().into_owned()));
            return Some(segs);
        }
        for c in target.iter() {
            match c.to_str()? {
                "." => {}
                ".." => {
                    segs.pop()?;
                }
                s => segs.push(s.to_string()),
            }
        }
        Some(segs)
    }

    /// The regular file a node's bytes come from (a symlink is followed inside the root).
    fn target_file(&self, node: &Node) -> Option<(String, PathBuf, std::fs::Metadata)> {
        if node.kind == "symlink" {
            let rel = node.link_to.as_ref()?.join("/");
            let file = self.root.join(&rel);
            let meta = std::fs::metadata(&file).ok()?;
            return meta.is_file().then_some((rel, file, meta));
        }
        node.meta
            .is_file()
            .then(|| (node.path.clone(), node.file.clone(), node.meta.clone()))
    }

    /// CRC-64/XZ and MD5 of a file, cached by (path, length, mtime).
    fn digest(&self, file: &Path, meta: &std::fs::Metadata) -> std::io::Result<Digest> {
        let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
        if let Some(d) = self.ctl.digests.lock().unwrap().get(file)
            && d.len == meta.len()
            && d.mtime == mtime
        {
            return Ok(d.clone());
        }
        use md5::Digest as _;
        let mut f = std::fs::File::open(file)?;
        let mut crc = Crc64::new();
        let mut md5 = md5::Md5::new();
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            crc.write(&buf[..n]);
            md5.update(&buf[..n]);
        }
        let d = Digest {
            len: meta.len(),
            mtime,
            crc: crc.sum64(),
            md5: hex::encode(md5.finalize()),
        };
        self.ctl.digests.lock().unwrap().insert(file.to_path_buf(), d.clone());
        Ok(d)
    }

    /// The CRC-64 the API publishes for `path` (wrong on purpose when switched so).
    fn published_crc(&self, path: &str, real: u64) -> u64 {
        if self.ctl.wrong_crc.lock().unwrap().contains(path) {
            real ^ 0x5a5a_5a5a_5a5a_5a5a
        } else {
            real
        }
    }

    /// Versions of `path`: `(history_id, file)`, oldest first; the last is the current file.
    fn versions(&self, path: &str) -> Vec<(u64, PathBuf)> {
        let hist = self.root.join(HISTORY_DIR).join(path);
        let mut out = Vec::new();
        if let (Some(dir), Some(name)) = (hist.parent(), hist.file_name()) {
            let prefix = format!("{}.v", name.to_string_lossy());
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if let Some(v) = n.strip_prefix(&prefix).and_then(|v| v.parse::<u64>().ok())
                        && v > 0
                    {
                        out.push((v, e.path()));
                    }
                }
            }
        }
        out.sort();
        let current = out.last().map_or(1, |(v, _)| v + 1);
        out.push((current, self.root.join(path)));
        out
    }

    fn meta_data(&self, path: &str) -> serde_json::Map<String, Value> {
        let f = self.root.join(META_DIR).join(format!("{path}.json"));
        std::fs::read(f)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Map<String, Value>>(&b).ok())
            .unwrap_or_default()
    }

    fn size_value(&self, n: u64) -> Value {
        if self.ctl.sizes_as_strings.load(Ordering::SeqCst) {
            Value::String(n.to_string())
        } else {
            json!(n)
        }
    }

    /// The JSON item of a listing / `?info` for `node` (a file's digests included).
    fn item(&self, node: &Node, with_inode: bool) -> Value {
        use std::os::unix::fs::MetadataExt;
        let mtime = node.meta.modified().unwrap_or(UNIX_EPOCH);
        let ctime = node.meta.created().unwrap_or(mtime);
        let mut v = json!({
            "name": node.name,
            "type": node.kind,
            "creationTime": iso(ctime),
            "modificationTime": iso(mtime),
            "path": node.path.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>(),
        });
        let m = v.as_object_mut().expect("object");
        if with_inode {
            m.insert("inode".into(), json!(node.meta.ino().to_string()));
        }
        if let Some(l) = &node.link_to {
            m.insert("linkTo".into(), json!(l));
        }
        if node.kind != "dir" && node.kind != "symlink" {
            let size = node.meta.len();
            m.insert("size".into(), self.size_value(size));
            m.insert("contentType".into(), json!(content_type(&node.name)));
            m.insert("fileType".into(), json!(file_type(&node.name)));
            m.insert("metaData".into(), Value::Object(self.meta_data(&node.path)));
            if let Ok(d) = self.digest(&node.file, &node.meta) {
                m.insert("crc64".into(), json!(self.published_crc(&node.path, d.crc).to_string()));
                m.insert("eTag".into(), json!(format!("\"{}\"", d.md5)));
            }
            let versions = self.versions(&node.path);
            let current = versions.last().map_or(1, |(v, _)| *v);
            m.insert("versionId".into(), json!(current));
        }
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Directory listing

/// Cheap description of a child, from `readdir` only.
#[derive(Clone)]
struct Child {
    name: String,
    is_dir: bool,
}

/// One directory's children in the default order (dirs first, then by name), cached until
/// the directory's mtime changes (adding, removing or renaming an entry changes it), so paging
/// through a 10,000-entry directory reads it once, not once per page.
struct Listing {
    mtime: SystemTime,
    children: Vec<Child>,
    sub_dirs: usize,
    files: usize,
    etag: String,
}

impl AppState {
    fn listing(&self, path: &str) -> Option<Arc<Listing>> {
        let dir = self.root.join(path);
        let meta = std::fs::metadata(&dir).ok().filter(|m| m.is_dir())?;
        let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
        if let Some(l) = self.ctl.listings.lock().unwrap().get(&dir)
            && l.mtime == mtime
        {
            return Some(l.clone());
        }
        let mut children: Vec<Child> = Vec::new();
        for e in std::fs::read_dir(&dir).ok()?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if path.is_empty() && (name == HISTORY_DIR || name == META_DIR) {
                continue;
            }
            let Ok(ft) = e.file_type() else { continue };
            children.push(Child {
                name,
                is_dir: ft.is_dir(),
            });
        }
        children.sort_by(|a, b| (!a.is_dir, &a.name).cmp(&(!b.is_dir, &b.name)));
        let sub_dirs = children.iter().filter(|c| c.is_dir).count();
        let mut d = Crc64::new();
        for c in &children {
            d.write(c.name.as_bytes());
            d.write(b"/");
        }
        let l = Arc::new(Listing {
            mtime,
            files: children.len() - sub_dirs,
            sub_dirs,
            etag: format!("\"{:x}\"", d.sum64()),
            children,
        });
        self.ctl.listings.lock().unwrap().insert(dir, l.clone());
        Some(l)
    }
}

fn list_dir(s: &AppState, path: &str, q: &Query) -> Response {
    let dir = s.root.join(path);
    let Some(listing) = s.listing(path) else {
        return smh_error(StatusCode::NOT_FOUND, "DirectoryNotFound", "directory not found");
    };
    let (sub_dirs, files) = (listing.sub_dirs, listing.files);
    let listing_etag = listing.etag.clone();
    let mut children: std::borrow::Cow<'_, [Child]> = std::borrow::Cow::Borrowed(&listing.children);
    match q.get("filter") {
        Some("onlyDir") => children = children.iter().filter(|c| c.is_dir).cloned().collect(),
        Some("onlyFile") => children = children.iter().filter(|c| !c.is_dir).cloned().collect(),
        _ => {}
    }
    let order = q.any(&["order_by", "orderBy"]).unwrap_or("name");
    if order != "name" {
        let key = order;
        let stat = |c: &Child| std::fs::symlink_metadata(dir.join(&c.name)).ok();
        let mut keyed: Vec<(u128, Child)> = children
            .iter()
            .cloned()
            .map(|c| {
                let m = stat(&c);
                let t = |f: fn(&std::fs::Metadata) -> std::io::Result<SystemTime>| {
                    m.as_ref()
                        .and_then(|m| f(m).ok())
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos())
                };
                let k = match key {
                    "size" => m.as_ref().map_or(0, |m| m.len() as u128),
                    "creationTime" | "localCreationTime" => t(std::fs::Metadata::created),
                    _ => t(std::fs::Metadata::modified),
                };
                (k, c)
            })
            .collect();
        keyed.sort_by(|(ka, a), (kb, b)| (!a.is_dir, *ka, &a.name).cmp(&(!b.is_dir, *kb, &b.name)));
        children = keyed.into_iter().map(|(_, c)| c).collect();
    }
    let desc = q.any(&["order_by_type", "orderByType"]) == Some("desc");
    if desc {
        // Directories stay first; each group is reversed.
        let split = children.iter().position(|c| !c.is_dir).unwrap_or(children.len());
        let v = children.to_mut();
        v[..split].reverse();
        v[split..].reverse();
    }
    let total = children.len();
    let (start, len, next) = match page_of(q, total, s.ctl.opts.max_limit) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let with_inode = q.get("with_inode").is_some_and(|v| v == "1" || v == "true");
    let mut contents = Vec::with_capacity(len);
    for c in &children[start..start + len] {
        if let Some(node) = s.node(&join_path(path, &c.name)) {
            contents.push(s.item(&node, with_inode));
        }
    }
    let mut body = json!({
        "path": path.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>(),
        "fileCount": files,
        "subDirCount": sub_dirs,
        "totalNum": total,
        "eTag": listing_etag,
        "contents": contents,
        "localSync": Value::Null,
        "authorityList": {"canView": true, "canPreview": true, "canDownload": true, "canUpload": false,
                          "canDelete": false, "canModify": false},
    });
    if let Some(n) = next {
        body["nextMarker"] = json!(n);
    }
    json_ok(body)
}

/// The slice a paged request asks for: `(start, len, nextMarker)`. `marker` (an opaque offset)
/// with `limit`, and `page` with `page_size` (default page 1 of 20), are exclusive (400 when
/// mixed); sizes are clamped to `1..=max`.
#[allow(clippy::result_large_err)]
fn page_of(q: &Query, total: usize, max: usize) -> Result<(usize, usize, Option<String>), Response> {
    let bad = |m: &str| smh_error(StatusCode::BAD_REQUEST, "InvalidParameter", m);
    let number = |k: &str, default: usize| match q.get(k).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v.parse::<usize>().map_err(|_| bad(&format!("{k} is not valid"))),
    };
    let max = max.max(1);
    let marker_mode = q.has("marker") || q.has("limit");
    if marker_mode && (q.has("page") || q.has("page_size")) {
        return Err(bad("marker/limit and page/page_size cannot be combined"));
    }
    if marker_mode {
        let start = number("marker", 0)?.min(total);
        let end = (start + number("limit", 20)?.clamp(1, max)).min(total);
        Ok((start, end - start, (end < total).then(|| end.to_string())))
    } else {
        let size = number("page_size", 20)?.clamp(1, max);
        let start = (number("page", 1)?.max(1) - 1).saturating_mul(size).min(total);
        Ok((start, size.min(total - start), None))
    }
}

fn join_path(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

// ---------------------------------------------------------------------------------------------
// Files

/// The stored object of `path` at `history_id` (current when `None`): (object path relative
/// to the root, file, id, is latest).
#[allow(clippy::result_large_err)]
fn version_of(s: &AppState, path: &str, history_id: Option<&str>) -> Result<(String, PathBuf, u64, bool), Response> {
    let versions = s.versions(path);
    let current = versions.last().map_or(1, |(v, _)| *v);
    let want = match history_id.filter(|h| !h.is_empty()) {
        None => current,
        Some(h) => h
            .parse::<u64>()
            .map_err(|_| smh_error(StatusCode::BAD_REQUEST, "InvalidParameter", "history_id is not valid"))?,
    };
    let (id, file) = versions
        .into_iter()
        .find(|(v, _)| *v == want)
        .ok_or_else(|| smh_error(StatusCode::NOT_FOUND, "HistoryNotFound", "no such version"))?;
    let object = if id == current {
        path.to_string()
    } else {
        format!("{HISTORY_DIR}/{path}.v{id}")
    };
    Ok((object, file, id, id == current))
}

/// A signed COS URL for `object` on this emulator.
fn sign_url(s: &AppState, host: &str, object: &str) -> String {
    let start = now_secs();
    let ttl_ms = s.ctl.url_ttl_ms.load(Ordering::SeqCst);
    let end = start + ttl_ms.div_ceil(1000).max(1);
    let id = s.ctl.url_serial.fetch_add(1, Ordering::SeqCst).to_string();
    let sign_time = format!("{start};{end}");
    let sig = s.ctl.sign("get", object, &sign_time, &id);
    format!(
        "http://{host}/cos/{}?q-sign-algorithm=sha1&q-sign-time={}&q-url-id={id}&q-signature={sig}",
        encode_path(object),
        percent_encoding::utf8_percent_encode(&sign_time, percent_encoding::NON_ALPHANUMERIC)
    )
}

/// The x-smh-* headers of a file version.
fn smh_headers(s: &AppState, node: &Node, file: &Path, meta: &std::fs::Metadata) -> Vec<(String, String)> {
    let ctime = meta.created().or_else(|_| meta.modified()).unwrap_or(UNIX_EPOCH);
    let mut h = vec![
        ("x-smh-type".to_string(), node.kind.to_string()),
        ("x-smh-creation-time".to_string(), iso(ctime)),
        ("x-smh-content-type".to_string(), content_type(&node.name).to_string()),
        ("x-smh-size".to_string(), meta.len().to_string()),
    ];
    if let Ok(d) = s.digest(file, meta) {
        h.push(("x-smh-etag".into(), format!("\"{}\"", d.md5)));
        h.push(("x-smh-crc64".into(), s.published_crc(&node.path, d.crc).to_string()));
    }
    for (k, v) in s.meta_data(&node.path) {
        let v = match v {
            Value::String(s) => s,
            other => other.to_string(),
        };
        h.push((format!("x-smh-meta-{}", k.to_ascii_lowercase()), v));
    }
    h
}

fn with_headers(mut resp: Response, headers: Vec<(String, String)>) -> Response {
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (header::HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

/// `HEAD /api/v1/file/…`, `GET …?info`, `GET …` (302).
fn file_api(s: &AppState, method: &Method, path: &str, q: &Query, host: &str) -> Response {
    let head = method == Method::HEAD;
    let not_found = || {
        if head {
            StatusCode::NOT_FOUND.into_response()
        } else {
            smh_error(StatusCode::NOT_FOUND, "FileNotFound", "file not found")
        }
    };
    if method != Method::GET && !head {
        return smh_error(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "read-only emulator");
    }
    let Some(node) = s.node(path).filter(|n| n.kind != "dir" && !path.is_empty()) else {
        return not_found();
    };
    if q.has("info") && !head {
        return info_json(s, path, q.get("history_id"), host, q.has("pre_check"));
    }
    let Some((target_path, _, _)) = s.target_file(&node) else {
        return not_found();
    };
    let (object, file, _, _) = match version_of(s, &target_path, q.get("history_id")) {
        Ok(v) => v,
        Err(r) => return if head { StatusCode::NOT_FOUND.into_response() } else { r },
    };
    let Ok(meta) = std::fs::metadata(&file) else {
        return not_found();
    };
    let headers = smh_headers(s, &node, &file, &meta);
    if head {
        return with_headers(StatusCode::OK.into_response(), headers);
    }
    let url = sign_url(s, host, &object);
    with_headers((StatusCode::FOUND, [(header::LOCATION, url)]).into_response(), headers)
}

/// `?info` of a file (with `cosUrl` unless `pre_check`) or a directory.
fn info_json(s: &AppState, path: &str, history_id: Option<&str>, host: &str, pre_check: bool) -> Response {
    let Some(node) = s.node(path) else {
        return smh_error(StatusCode::NOT_FOUND, "FileNotFound", "file not found");
    };
    let mut v = s.item(&node, false);
    if node.kind == "dir" {
        let mut total = 0u64;
        if let Ok(rd) = std::fs::read_dir(&node.file) {
            total = rd.flatten().count() as u64;
        }
        v["totalNum"] = json!(total);
        return json_ok(v);
    }
    let Some((target_path, _, _)) = s.target_file(&node) else {
        // A dangling or escaping link still has an info answer (without a URL).
        return json_ok(v);
    };
    let (object, file, id, latest) = match version_of(s, &target_path, history_id) {
        Ok(x) => x,
        Err(r) => return r,
    };
    if history_id.is_some() || node.kind == "symlink" {
        // Describe the stored version, not the current file.
        if let Ok(meta) = std::fs::metadata(&file) {
            v["size"] = s.size_value(meta.len());
            if let Ok(d) = s.digest(&file, &meta) {
                let crc = if latest {
                    s.published_crc(&target_path, d.crc)
                } else {
                    d.crc
                };
                v["crc64"] = json!(crc.to_string());
                v["eTag"] = json!(format!("\"{}\"", d.md5));
            }
            if let Ok(t) = meta.modified() {
                v["modificationTime"] = json!(iso(t));
            }
        }
        v["versionId"] = json!(id);
    }
    let versions = s.versions(&target_path);
    let history_size: u64 = versions
        .iter()
        .filter_map(|(_, f)| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    v["historySize"] = json!(history_size);
    v["previewByDoc"] = json!(false);
    v["previewByCI"] = json!(false);
    v["previewAsIcon"] = json!(false);
    if !pre_check && !s.ctl.omit_cos_url.load(Ordering::SeqCst) {
        v["cosUrl"] = json!(sign_url(s, host, &object));
    }
    json_ok(v)
}

/// `GET /api/v1/directory-history/{lib}/{space}/history-list/{path}`.
fn history_list(s: &AppState, path: &str, q: &Query) -> Response {
    let Some(node) = s.node(path).filter(|n| n.meta.is_file()) else {
        return smh_error(StatusCode::NOT_FOUND, "FileNotFound", "file not found");
    };
    let mut versions = s.versions(path);
    let current = versions.pop();
    let by_time = q.any(&["order_by", "orderBy"]) == Some("creationTime");
    let mtime = |f: &PathBuf| std::fs::metadata(f).and_then(|m| m.modified()).unwrap_or(UNIX_EPOCH);
    if by_time {
        versions.sort_by_key(|(v, f)| (mtime(f), *v));
    }
    if q.any(&["order_by_type", "orderByType"]) != Some("asc") {
        versions.reverse();
    }
    // The latest version always comes first.
    let all: Vec<(u64, PathBuf)> = current.into_iter().chain(versions).collect();
    let total = all.len();
    let (start, len, next) = match page_of(q, total, s.ctl.opts.max_limit) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut contents = Vec::new();
    for (i, (id, file)) in all.iter().enumerate().skip(start).take(len) {
        let Ok(meta) = std::fs::metadata(file) else { continue };
        let t = meta.modified().unwrap_or(UNIX_EPOCH);
        let mut item = json!({
            "id": id,
            "version": id,
            "isLatestVersion": i == 0,
            "name": node.name,
            "size": s.size_value(meta.len()),
            "contentType": content_type(&node.name),
            "createdBy": "emulator",
            "creationWay": 1,
            "creationTime": iso(t),
            "setLatestTime": iso(t),
        });
        if let Ok(d) = s.digest(file, &meta) {
            let crc = if i == 0 { s.published_crc(path, d.crc) } else { d.crc };
            item["crc64"] = json!(crc.to_string());
            item["eTag"] = json!(format!("\"{}\"", d.md5));
        }
        contents.push(item);
    }
    let mut body = json!({"totalNum": total, "contents": contents});
    if let Some(n) = next {
        body["nextMarker"] = json!(n);
    }
    json_ok(body)
}

// ---------------------------------------------------------------------------------------------
// COS stub

fn cos_get(s: &AppState, method: &Method, rest: &str, q: &Query, headers: &HeaderMap) -> Response {
    let object = decode(rest);
    let (Some(sign_time), Some(id), Some(sig)) = (q.get("q-sign-time"), q.get("q-url-id"), q.get("q-signature")) else {
        return cos_error(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied.");
    };
    if !s.ctl.verify(&object, sign_time, id, sig) {
        return cos_error(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The Signature you specified is invalid.",
        );
    }
    let end = sign_time
        .split_once(';')
        .and_then(|(_, e)| e.parse::<u64>().ok())
        .unwrap_or(0);
    let serial = id.parse::<u64>().unwrap_or(0);
    if now_secs() >= end || serial < s.ctl.url_cutoff.load(Ordering::SeqCst) {
        return cos_error(StatusCode::FORBIDDEN, "AccessDenied", "Request has expired");
    }
    if object.split('/').any(|seg| seg == ".." || seg == ".") {
        return cos_error(StatusCode::FORBIDDEN, "AccessDenied", "Access Denied.");
    }
    let file = s.root.join(&object);
    let Some(meta) = std::fs::metadata(&file).ok().filter(|m| m.is_file()) else {
        return cos_error(StatusCode::NOT_FOUND, "NoSuchKey", "The specified key does not exist.");
    };
    let size = meta.len();
    let Ok(d) = s.digest(&file, &meta) else {
        return cos_error(StatusCode::NOT_FOUND, "NoSuchKey", "The specified key does not exist.");
    };
    // The COS header carries the same CRC the SMH metadata publishes.
    let crc = if object.starts_with(HISTORY_DIR) {
        d.crc
    } else {
        s.published_crc(&object, d.crc)
    };
    let span = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(r) => match parse_range(r, size) {
            RangeAsk::Ignore => None,
            RangeAsk::Unsatisfiable => {
                let mut resp = cos_error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "InvalidRange",
                    "The requested range is not satisfiable",
                );
                resp.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
                );
                return resp;
            }
            RangeAsk::Span(a, b) => Some((a, b)),
        },
    };
    let (status, start, len) = match span {
        Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        None => (StatusCode::OK, 0, size),
    };
    let name = object.rsplit('/').next().unwrap_or("");
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type(name))
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{}\"", d.md5))
        .header(
            header::LAST_MODIFIED,
            httpdate::fmt_http_date(meta.modified().unwrap_or(UNIX_EPOCH)),
        )
        .header("x-cos-hash-crc64ecma", crc.to_string())
        .header("x-cos-request-id", request_id());
    if let Some((a, b)) = span {
        resp = resp.header(header::CONTENT_RANGE, format!("bytes {a}-{b}/{size}"));
    }
    if method == Method::HEAD || len == 0 {
        return resp.body(Body::empty()).expect("valid response");
    }
    let body = match super::file_body(&file, start, len) {
        Ok(b) => b,
        Err(_) => return cos_error(StatusCode::NOT_FOUND, "NoSuchKey", "The specified key does not exist."),
    };
    resp.body(body).expect("valid response")
}

// ---------------------------------------------------------------------------------------------
// Demo

/// Writes a few sample files (with an older version and metadata) under `dir`, serves them and
/// returns the source config that mounts them (with the `.versions` view on).
pub async fn demo(dir: &Path) -> std::io::Result<(super::Server, crate::config::SourceConfig)> {
    std::fs::create_dir_all(dir.join("docs"))?;
    std::fs::create_dir_all(dir.join("media"))?;
    std::fs::create_dir_all(dir.join(HISTORY_DIR))?;
    std::fs::create_dir_all(dir.join(META_DIR))?;
    std::fs::write(dir.join("hello.txt"), "Hello from the SMH emulator (version 2).\n")?;
    std::fs::write(dir.join(HISTORY_DIR).join("hello.txt.v1"), "Hello, version 1.\n")?;
    std::fs::write(
        dir.join(META_DIR).join("hello.txt.json"),
        r#"{"owner":"demo","project":"fetchfs"}"#,
    )?;
    std::fs::write(
        dir.join("docs/readme.md"),
        "# fetchfs SMH demo\n\nEvery read goes through a signed COS URL.\n",
    )?;
    let media: Vec<u8> = (0..(3u32 << 20) / 4)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    std::fs::write(dir.join("media/noise.bin"), media)?;
    let link = dir.join("readme-link.md");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("docs/readme.md", &link)?;
    }
    let opts = SmhEmuOptions::default();
    let emu = router(dir, opts.clone());
    let server = super::serve(emu.router, 0, emu.harness).await?;
    let cfg = crate::provider::smh::SmhConfig {
        name: "smh".into(),
        endpoint: Some(server.base_url()),
        library_id: opts.library_id,
        library_secret: Some(opts.library_secret),
        library_secret_file: None,
        access_token: None,
        access_token_file: None,
        space_id: None,
        user_id: None,
        versions: true,
    };
    Ok((server, crate::config::SourceConfig::Smh(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cos_ranges_follow_get_object() {
        assert!(matches!(parse_range("bytes=0-", 10), RangeAsk::Span(0, 9)));
        assert!(matches!(parse_range("bytes=2-4", 10), RangeAsk::Span(2, 4)));
        assert!(matches!(parse_range("bytes=-3", 10), RangeAsk::Span(7, 9)));
        assert!(matches!(parse_range("bytes=5-100", 10), RangeAsk::Span(5, 9)));
        assert!(matches!(parse_range("bytes=10-", 10), RangeAsk::Unsatisfiable));
        assert!(matches!(parse_range("bytes=0-1,3-4", 10), RangeAsk::Ignore));
        assert!(matches!(parse_range("items=0-1", 10), RangeAsk::Ignore));
    }

    #[test]
    fn paths_decode_whole_and_refuse_dot_dot_and_hidden_dirs() {
        assert_eq!(clean_path("a%2Fb/c.txt").as_deref(), Some("a/b/c.txt"));
        assert_eq!(clean_path("a/b/").as_deref(), Some("a/b"));
        assert_eq!(clean_path("").as_deref(), Some(""));
        assert_eq!(clean_path("a/../b"), None);
        assert_eq!(clean_path(".history/x.v1"), None);
    }

    #[test]
    fn signatures_verify_only_unchanged() {
        let emu = router(Path::new("/nonexistent"), SmhEmuOptions::default());
        let c = &emu.control;
        let sig = c.sign("get", "a/b.txt", "1;2", "7");
        assert!(c.verify("a/b.txt", "1;2", "7", &sig));
        assert!(!c.verify("a/b.txt", "1;3", "7", &sig));
        assert!(!c.verify("a/c.txt", "1;2", "7", &sig));
        assert!(!c.verify("a/b.txt", "1;2", "7", "00"));
    }
}

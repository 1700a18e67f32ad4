//! Emulator of the Backblaze B2 native API (providers.md §1, checklist §1.12).
//!
//! **Tree.** `--root DIR`: every sub-directory of `DIR` is a bucket, every regular file under
//! it an object named by its relative path. Names the emulator reads beside a file `X` add
//! B2 state (the side files themselves are not objects):
//!
//! | side file | effect |
//! |---|---|
//! | `X.b2v<N>` | an older version of `X` (higher `N` = newer; `X` itself is the newest) |
//! | `X.b2hidden` | a `hide` marker newer than every version: `X` leaves `b2_list_file_names` |
//! | `X.b2start` | an unfinished large file `X` (`action: "start"`) |
//! | `X.b2info.json` | `{"contentType": "...", "fileInfo": {"k": "v"}}` of the newest version |
//! | `X.b2ssec` | base64 AES-256 key: `X` is SSE-C encrypted and needs that key to download |
//!
//! The tree is read (and every SHA-1 computed) once, when the router is built. Tests add
//! objects, versions, hide markers and unfinished files at run time through [`B2Control`],
//! and switch behaviour with [`B2Control::update`] (token lifetime in seconds or in
//! requests, forced API response shape, large-file SHA-1 modes, wrong SHA-1, caps) or, from
//! another process, `POST /__fetchfs/b2` with a [`B2Switches`] JSON body. Generic faults
//! (429 + `Retry-After`, 500, 503, resets and stalls mid-body) come from
//! [`super::fault_layer`], rendered as B2 error JSON.
//!
//! **API.** `/b2api/v{1..4}/<operation>` for `b2_authorize_account` (Basic auth; response
//! shape by version: v4 `allowed` object, v3 flat `storageApi`, v1/v2 flat), `b2_list_buckets`,
//! `b2_list_file_names`, `b2_list_file_versions`, `b2_get_file_info`,
//! `b2_get_download_authorization` and `b2_download_file_by_id` (GET, HEAD, POST), each call as
//! GET with query parameters or POST with a JSON body; `/file/{bucket}/{name}` (GET, HEAD) with
//! the token in the header or as `?Authorization=`. Ranges follow the table of §1.6 exactly:
//! 206 for part of an object, 200 without `Content-Range` for ranges covering the object and
//! for malformed ranges (suffix and multi-ranges are treated as malformed), 416 for a start at
//! or past the end (so for any range on a 0-byte object). Error answers are
//! `{status, code, message}`, empty for HEAD.
//!
//! Locks: `store`, `opts` and `tokens` are plain mutexes held for map look-ups only, never
//! across an `.await`, and never two at once.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha1::Digest;

use super::{Harness, Server};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// B2's documented longest token life.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
const CAPABILITIES: &[&str] = &[
    "listKeys",
    "listBuckets",
    "listFiles",
    "readFiles",
    "shareFiles",
    "writeFiles",
    "deleteFiles",
    "readBuckets",
];

/// One application key the emulator accepts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmuKey {
    pub key_id: String,
    pub application_key: String,
    /// Bucket names the key is restricted to (`None`: all).
    pub buckets: Option<Vec<String>>,
    pub name_prefix: Option<String>,
    pub capabilities: Vec<String>,
}

impl EmuKey {
    /// A key for every bucket with every capability.
    pub fn master(key_id: &str, application_key: &str) -> EmuKey {
        EmuKey {
            key_id: key_id.into(),
            application_key: application_key.into(),
            buckets: None,
            name_prefix: None,
            capabilities: CAPABILITIES.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A key limited to `buckets` (and optionally to names under `prefix`).
    pub fn restricted(key_id: &str, application_key: &str, buckets: &[&str], prefix: Option<&str>) -> EmuKey {
        EmuKey {
            buckets: Some(buckets.iter().map(|s| s.to_string()).collect()),
            name_prefix: prefix.map(str::to_string),
            ..EmuKey::master(key_id, application_key)
        }
    }
}

/// Default credentials of the emulator (and of `fetchfs demo`).
pub const DEFAULT_KEY_ID: &str = "emu-key-id";
pub const DEFAULT_APPLICATION_KEY: &str = "emu-application-key";

/// Behaviour of the emulator; every field may be changed at run time.
#[derive(Debug, Clone)]
pub struct B2EmuOptions {
    pub account_id: String,
    pub keys: Vec<EmuKey>,
    /// Tokens expire this long after issue (default 24 h).
    pub token_ttl: Duration,
    /// Tokens expire after this many authorized requests.
    pub token_max_requests: Option<u64>,
    /// Answer every version's calls in the shape of this API version (1–4) instead of the
    /// version in the path (authorization response and `size`/`contentLength`).
    pub api_shape: Option<u8>,
    /// Objects at least this large are "large files": `contentSha1` is `none`.
    pub large_file_threshold: Option<u64>,
    /// Large files carry their SHA-1 in `fileInfo.large_file_sha1`.
    pub large_file_sha1: bool,
    /// Send SHA-1 values as `unverified:<hex>`.
    pub unverified_sha1: bool,
    /// Send a wrong SHA-1 (listings and download headers).
    pub wrong_sha1: bool,
    /// `download_cap_exceeded` (downloads) or `transaction_cap_exceeded` (every call but
    /// authorization) answered with 403.
    pub cap_exceeded: Option<String>,
    /// Buckets of type `allPublic` (downloads need no token).
    pub public_buckets: Vec<String>,
}

impl Default for B2EmuOptions {
    fn default() -> Self {
        B2EmuOptions {
            account_id: "emu-account".into(),
            keys: vec![EmuKey::master(DEFAULT_KEY_ID, DEFAULT_APPLICATION_KEY)],
            token_ttl: DEFAULT_TOKEN_TTL,
            token_max_requests: None,
            api_shape: None,
            large_file_threshold: None,
            large_file_sha1: false,
            unverified_sha1: false,
            wrong_sha1: false,
            cap_exceeded: None,
            public_buckets: Vec::new(),
        }
    }
}

/// `POST /__fetchfs/b2`: switches for another process (absent fields stay as they are).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct B2Switches {
    pub token_ttl_ms: Option<u64>,
    /// 0 = unlimited.
    pub token_max_requests: Option<u64>,
    /// 0 = by path.
    pub api_shape: Option<u8>,
    pub wrong_sha1: Option<bool>,
    pub unverified_sha1: Option<bool>,
    /// Empty string = none.
    pub cap_exceeded: Option<String>,
    pub expire_tokens: bool,
}

/// Flags of `fetchfs emulate b2`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EmuArgs {
    /// Application key id the emulator accepts.
    #[arg(long, default_value = DEFAULT_KEY_ID)]
    pub key_id: String,
    /// Application key the emulator accepts.
    #[arg(long, default_value = DEFAULT_APPLICATION_KEY)]
    pub application_key: String,
    /// Token lifetime in seconds.
    #[arg(long)]
    pub token_ttl: Option<u64>,
    /// Tokens expire after this many requests.
    #[arg(long)]
    pub token_max_requests: Option<u64>,
    /// Answer in the response shape of this API version (1-4) whatever the path says.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=4))]
    pub api_shape: Option<u8>,
    /// Objects at least this many bytes are large files (contentSha1 "none").
    #[arg(long)]
    pub large_file_threshold: Option<u64>,
    /// Large files carry fileInfo.large_file_sha1.
    #[arg(long)]
    pub large_file_sha1: bool,
    /// Send SHA-1 values as `unverified:HEX`.
    #[arg(long)]
    pub unverified_sha1: bool,
    /// Send wrong SHA-1 values.
    #[arg(long)]
    pub wrong_sha1: bool,
    /// Buckets downloadable without a token (repeatable).
    #[arg(long = "public-bucket")]
    pub public_buckets: Vec<String>,
}

impl EmuArgs {
    pub fn options(&self) -> B2EmuOptions {
        let d = B2EmuOptions::default();
        B2EmuOptions {
            keys: vec![EmuKey::master(&self.key_id, &self.application_key)],
            token_ttl: self.token_ttl.map(Duration::from_secs).unwrap_or(d.token_ttl),
            token_max_requests: self.token_max_requests,
            api_shape: self.api_shape,
            large_file_threshold: self.large_file_threshold,
            large_file_sha1: self.large_file_sha1,
            unverified_sha1: self.unverified_sha1,
            wrong_sha1: self.wrong_sha1,
            public_buckets: self.public_buckets.clone(),
            ..d
        }
    }
}

#[derive(Clone)]
enum Data {
    Mem(Bytes),
    Disk(PathBuf, u64),
}

impl Data {
    fn len(&self) -> u64 {
        match self {
            Data::Mem(b) => b.len() as u64,
            Data::Disk(_, n) => *n,
        }
    }
}

#[derive(Clone)]
struct Version {
    file_id: String,
    action: &'static str,
    data: Data,
    sha1: String,
    content_type: String,
    info: BTreeMap<String, String>,
    upload_ts: u64,
    /// Base64 MD5 of the SSE-C key, for SSE-C objects.
    sse_key_md5: Option<String>,
}

struct Bucket {
    id: String,
    name: String,
    /// Name → versions, newest first.
    files: BTreeMap<String, Vec<Version>>,
}

#[derive(Default)]
struct Store {
    buckets: BTreeMap<String, Bucket>,
    /// fileId → (bucket name, file name).
    by_id: HashMap<String, (String, String)>,
    next_id: u64,
}

/// What extra an upload carries.
#[derive(Debug, Clone, Default)]
pub struct UploadOpts {
    pub content_type: Option<String>,
    pub info: BTreeMap<String, String>,
    /// Base64 AES-256 key: the object is SSE-C encrypted.
    pub sse_c_key: Option<String>,
    /// Upload timestamp in ms (default now).
    pub upload_ts: Option<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

fn bucket_id_of(name: &str) -> String {
    hex::encode(sha1::Sha1::digest(format!("bucket:{name}").as_bytes()))[..24].to_string()
}

fn key_md5(key_b64: &str) -> Option<String> {
    let key = B64.decode(key_b64.trim()).ok()?;
    Some(B64.encode(md5::Md5::digest(&key)))
}

impl Store {
    fn bucket_mut(&mut self, name: &str) -> &mut Bucket {
        self.buckets.entry(name.to_string()).or_insert_with(|| Bucket {
            id: bucket_id_of(name),
            name: name.to_string(),
            files: BTreeMap::new(),
        })
    }

    /// Adds a version as the newest of `name`; returns its fileId.
    fn add(
        &mut self,
        bucket: &str,
        name: &str,
        action: &'static str,
        data: Data,
        sha1: String,
        o: UploadOpts,
    ) -> String {
        self.next_id += 1;
        let id = self.next_id;
        let b = self.bucket_mut(bucket);
        let file_id = format!("4_z{}_f{:016x}_d{}", b.id, id, now_ms() / 86_400_000);
        let content_type = match action {
            "hide" => "application/x-bz-hide-marker".to_string(),
            _ => o.content_type.clone().unwrap_or_else(|| guess_type(name).to_string()),
        };
        let v = Version {
            file_id: file_id.clone(),
            action,
            data,
            sha1,
            content_type,
            info: o.info,
            upload_ts: o.upload_ts.unwrap_or_else(now_ms),
            sse_key_md5: o.sse_c_key.as_deref().and_then(key_md5),
        };
        b.files.entry(name.to_string()).or_default().insert(0, v);
        self.by_id
            .insert(file_id.clone(), (bucket.to_string(), name.to_string()));
        file_id
    }

    fn find(&self, file_id: &str) -> Option<(&Bucket, &str, &Version)> {
        let (bn, name) = self.by_id.get(file_id)?;
        let b = self.buckets.get(bn)?;
        let v = b.files.get(name)?.iter().find(|v| v.file_id == file_id)?;
        Some((b, name.as_str(), v))
    }
}

fn guess_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "txt" | "md" => "text/plain",
        "html" => "text/html",
        "json" => "application/json",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        _ => "application/octet-stream",
    }
}

struct TokenRec {
    key: EmuKey,
    issued: Instant,
    requests: u64,
    expired: bool,
    /// Download-authorization tokens: (bucketId, fileNamePrefix, valid until).
    download: Option<(String, String, Instant)>,
}

struct Emu {
    store: Mutex<Store>,
    opts: Mutex<B2EmuOptions>,
    tokens: Mutex<HashMap<String, TokenRec>>,
    counter: AtomicU64,
}

/// Run-time handle on a B2 emulator.
#[derive(Clone)]
pub struct B2Control(Arc<Emu>);

impl B2Control {
    /// Changes behaviour (token lifetime, shapes, SHA-1 modes, caps, keys…).
    pub fn update(&self, f: impl FnOnce(&mut B2EmuOptions)) {
        f(&mut self.0.opts.lock().unwrap());
    }

    pub fn options(&self) -> B2EmuOptions {
        self.0.opts.lock().unwrap().clone()
    }

    /// Uploads `data` as the newest version of `bucket`/`name` (creating the bucket).
    pub fn upload(&self, bucket: &str, name: &str, data: impl Into<Bytes>) -> String {
        self.upload_with(bucket, name, data, UploadOpts::default())
    }

    pub fn upload_with(&self, bucket: &str, name: &str, data: impl Into<Bytes>, o: UploadOpts) -> String {
        let data: Bytes = data.into();
        let sha1 = hex::encode(sha1::Sha1::digest(&data));
        self.0
            .store
            .lock()
            .unwrap()
            .add(bucket, name, "upload", Data::Mem(data), sha1, o)
    }

    /// Hides `name` (a `hide` marker as its newest version).
    pub fn hide(&self, bucket: &str, name: &str) -> String {
        self.marker(bucket, name, "hide")
    }

    /// Starts a large file that is never finished (`action: "start"`).
    pub fn start_large_file(&self, bucket: &str, name: &str) -> String {
        self.marker(bucket, name, "start")
    }

    fn marker(&self, bucket: &str, name: &str, action: &'static str) -> String {
        self.0.store.lock().unwrap().add(
            bucket,
            name,
            action,
            Data::Mem(Bytes::new()),
            String::new(),
            UploadOpts::default(),
        )
    }

    /// Creates an empty bucket.
    pub fn create_bucket(&self, bucket: &str) {
        self.0.store.lock().unwrap().bucket_mut(bucket);
    }

    /// The id of a bucket.
    pub fn bucket_id(&self, bucket: &str) -> String {
        bucket_id_of(bucket)
    }

    /// Forgets every token issued so far (the next call answers `bad_auth_token`).
    pub fn forget_tokens(&self) {
        self.0.tokens.lock().unwrap().clear();
    }

    /// Makes every token issued so far expired.
    pub fn expire_tokens(&self) {
        for t in self.0.tokens.lock().unwrap().values_mut() {
            t.expired = true;
        }
    }
}

/// The emulator: router (faults included), harness and run-time control.
pub struct B2Emulator {
    pub router: Router,
    pub harness: Harness,
    pub control: B2Control,
}

/// Builds the emulator serving the buckets under `root` (see the module docs).
pub fn router(root: &Path, opts: B2EmuOptions) -> B2Emulator {
    let mut store = Store::default();
    if let Err(e) = load_tree(&mut store, root) {
        tracing::warn!(root = %root.display(), error = %e, "cannot read the B2 emulator tree");
    }
    let emu = Arc::new(Emu {
        store: Mutex::new(store),
        opts: Mutex::new(opts),
        tokens: Mutex::new(HashMap::new()),
        counter: AtomicU64::new(0),
    });
    let control = B2Control(emu.clone());
    let harness = Harness::default();
    let r = Router::new()
        .route("/b2api/{ver}/{op}", axum::routing::get(api).post(api).head(api))
        .route("/file/{bucket}/{*name}", axum::routing::get(by_name).head(by_name))
        .route(
            "/__fetchfs/b2",
            axum::routing::post(
                |State(e): State<Arc<Emu>>, axum::Json(s): axum::Json<B2Switches>| async move {
                    apply_switches(&e, s);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(emu);
    let router = super::fault_layer(r, harness.clone(), |status| {
        let code = match status {
            429 => "too_many_requests",
            500 => "internal_error",
            503 => "service_unavailable",
            401 => "bad_auth_token",
            403 => "access_denied",
            404 => "not_found",
            _ => "bad_request",
        };
        (
            json!({"status": status, "code": code, "message": "injected fault"}).to_string(),
            "application/json",
        )
    });
    B2Emulator {
        router,
        harness,
        control,
    }
}

fn apply_switches(e: &Emu, s: B2Switches) {
    {
        let mut o = e.opts.lock().unwrap();
        if let Some(ms) = s.token_ttl_ms {
            o.token_ttl = Duration::from_millis(ms);
        }
        if let Some(n) = s.token_max_requests {
            o.token_max_requests = (n > 0).then_some(n);
        }
        if let Some(v) = s.api_shape {
            o.api_shape = (v > 0).then_some(v);
        }
        if let Some(v) = s.wrong_sha1 {
            o.wrong_sha1 = v;
        }
        if let Some(v) = s.unverified_sha1 {
            o.unverified_sha1 = v;
        }
        if let Some(v) = s.cap_exceeded {
            o.cap_exceeded = (!v.is_empty()).then_some(v);
        }
    }
    if s.expire_tokens {
        for t in e.tokens.lock().unwrap().values_mut() {
            t.expired = true;
        }
    }
}

const SIDE_SUFFIXES: &[&str] = &[".b2hidden", ".b2start", ".b2info.json", ".b2ssec"];

fn is_side_file(name: &str) -> bool {
    SIDE_SUFFIXES.iter().any(|s| name.ends_with(s)) || version_suffix(name).is_some()
}

/// `X.b2v<N>` → (`X`, N).
fn version_suffix(name: &str) -> Option<(&str, u32)> {
    let (base, n) = name.rsplit_once(".b2v")?;
    Some((base, n.parse().ok()?))
}

fn sha1_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = sha1::Sha1::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn mtime_ms(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn load_tree(store: &mut Store, root: &Path) -> std::io::Result<()> {
    let mut buckets: Vec<_> = std::fs::read_dir(root)?.filter_map(|e| e.ok()).collect();
    buckets.sort_by_key(|e| e.file_name());
    for b in buckets {
        if !b.file_type()?.is_dir() {
            continue;
        }
        let bucket = b.file_name().to_string_lossy().to_string();
        store.bucket_mut(&bucket);
        let mut files = Vec::new();
        walk(&b.path(), "", &mut files)?;
        let names: std::collections::BTreeSet<String> = files.iter().map(|(n, _)| n.clone()).collect();
        // Objects: every name that is not a side file, plus names that only have versions.
        let mut objects: std::collections::BTreeSet<String> =
            names.iter().filter(|n| !is_side_file(n)).cloned().collect();
        for n in &names {
            if let Some((base, _)) = version_suffix(n) {
                objects.insert(base.to_string());
            }
            for s in [".b2hidden", ".b2start"] {
                if let Some(base) = n.strip_suffix(s) {
                    objects.insert(base.to_string());
                }
            }
        }
        let path_of = |n: &str| b.path().join(n);
        for obj in objects {
            let mut versions: Vec<(u32, String)> = names
                .iter()
                .filter_map(|n| {
                    version_suffix(n)
                        .filter(|(base, _)| *base == obj)
                        .map(|(_, v)| (v, n.clone()))
                })
                .collect();
            versions.sort();
            let mut uploads: Vec<String> = versions.into_iter().map(|(_, n)| n).collect();
            if names.contains(&obj) {
                uploads.push(obj.clone());
            }
            for (i, file) in uploads.iter().enumerate() {
                let p = path_of(file);
                let meta = std::fs::metadata(&p)?;
                let mut o = UploadOpts {
                    upload_ts: Some(mtime_ms(&meta)),
                    ..Default::default()
                };
                if i + 1 == uploads.len() {
                    if let Ok(text) = std::fs::read_to_string(path_of(&format!("{obj}.b2info.json"))) {
                        let v: Value = serde_json::from_str(&text).unwrap_or_default();
                        o.content_type = v["contentType"].as_str().map(str::to_string);
                        if let Some(m) = v["fileInfo"].as_object() {
                            for (k, v) in m {
                                o.info
                                    .insert(k.clone(), v.as_str().map(str::to_string).unwrap_or(v.to_string()));
                            }
                        }
                    }
                    o.sse_c_key = std::fs::read_to_string(path_of(&format!("{obj}.b2ssec")))
                        .ok()
                        .map(|s| s.trim().to_string());
                }
                let sha1 = sha1_file(&p)?;
                store.add(&bucket, &obj, "upload", Data::Disk(p, meta.len()), sha1, o);
            }
            for (suffix, action) in [(".b2start", "start"), (".b2hidden", "hide")] {
                if names.contains(&format!("{obj}{suffix}")) {
                    store.add(
                        &bucket,
                        &obj,
                        action,
                        Data::Mem(Bytes::new()),
                        String::new(),
                        UploadOpts::default(),
                    );
                }
            }
        }
    }
    Ok(())
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let t = e.file_type()?;
        if t.is_dir() {
            walk(&e.path(), &r, out)?;
        } else if t.is_file() {
            out.push((r, e.path()));
        }
    }
    Ok(())
}

/// A B2 error answer.
#[derive(Debug)]
struct ApiErr {
    status: u16,
    code: &'static str,
    message: String,
}

fn err(status: u16, code: &'static str, message: impl Into<String>) -> ApiErr {
    ApiErr {
        status,
        code,
        message: message.into(),
    }
}

impl ApiErr {
    fn render(&self, head: bool) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        if head {
            // HEAD errors carry no body: only the status is meaningful (§1.8).
            return status.into_response();
        }
        let body = json!({"status": self.status, "code": self.code, "message": self.message});
        (status, axum::Json(body)).into_response()
    }
}

type Params = HashMap<String, String>;

fn parse_params(query: Option<&str>, method: &Method, body: &[u8]) -> Result<Params, ApiErr> {
    let mut p: Params = query
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    if *method == Method::POST && !body.iter().all(u8::is_ascii_whitespace) {
        let v: Value = serde_json::from_slice(body).map_err(|e| err(400, "bad_json", format!("bad JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| err(400, "bad_json", "the body must be a JSON object"))?;
        for (k, v) in obj {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                other => other.to_string(),
            };
            p.insert(k.clone(), s);
        }
    }
    Ok(p)
}

fn required<'a>(p: &'a Params, key: &str) -> Result<&'a str, ApiErr> {
    p.get(key)
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| err(400, "bad_request", format!("required field {key} is missing")))
}

/// What an authorized request may do.
struct Grant {
    key: EmuKey,
    download: Option<(String, String)>,
}

impl Grant {
    fn need(&self, cap: &str) -> Result<(), ApiErr> {
        if self.download.is_none() && self.key.capabilities.iter().any(|c| c == cap) {
            Ok(())
        } else {
            Err(err(401, "unauthorized", format!("the key lacks capability {cap}")))
        }
    }
    fn bucket(&self, name: &str) -> Result<(), ApiErr> {
        match &self.key.buckets {
            Some(list) if !list.iter().any(|b| b == name) => Err(err(
                401,
                "unauthorized",
                format!("the key is not allowed bucket {name}"),
            )),
            _ => Ok(()),
        }
    }
    fn name(&self, name: &str) -> Result<(), ApiErr> {
        match &self.key.name_prefix {
            Some(p) if !name.starts_with(p.as_str()) => Err(err(
                401,
                "unauthorized",
                format!("the key is restricted to names under {p}"),
            )),
            _ => Ok(()),
        }
    }
}

impl Emu {
    fn opts(&self) -> B2EmuOptions {
        self.opts.lock().unwrap().clone()
    }

    /// Checks a token (§1.12 item 2) and counts the request against it.
    fn check(&self, token: Option<&str>, headers: &HeaderMap) -> Result<Grant, ApiErr> {
        let token = token.ok_or_else(|| err(401, "bad_auth_token", "no authorization token"))?;
        let o = self.opts();
        let test_mode = headers
            .get("x-bz-test-mode")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "expire_some_account_authorization_tokens");
        let mut tokens = self.tokens.lock().unwrap();
        let t = tokens
            .get_mut(token)
            .ok_or_else(|| err(401, "bad_auth_token", "invalid authorization token"))?;
        t.requests += 1;
        if test_mode && rand::random::<f64>() < 0.3 {
            t.expired = true;
        }
        let expired = t.expired
            || t.issued.elapsed() >= o.token_ttl
            || o.token_max_requests.is_some_and(|n| t.requests > n)
            || t.download
                .as_ref()
                .is_some_and(|(_, _, until)| Instant::now() >= *until);
        if expired {
            t.expired = true;
            return Err(err(401, "expired_auth_token", "authorization token has expired"));
        }
        Ok(Grant {
            key: t.key.clone(),
            download: t.download.as_ref().map(|(b, p, _)| (b.clone(), p.clone())),
        })
    }

    fn new_token(&self, key: EmuKey, download: Option<(String, String, Instant)>) -> String {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let token = format!("4_emu{n:06}_{:016x}", rand::random::<u64>());
        self.tokens.lock().unwrap().insert(
            token.clone(),
            TokenRec {
                key,
                issued: Instant::now(),
                requests: 0,
                expired: false,
                download,
            },
        );
        token
    }

    fn shape(&self, path_version: u8) -> u8 {
        self.opts().api_shape.unwrap_or(path_version)
    }

    fn authorize(&self, ver: u8, headers: &HeaderMap) -> Result<Value, ApiErr> {
        let bad = || err(401, "unauthorized", "invalid application key id or key");
        let basic = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .ok_or_else(bad)?;
        let decoded = B64.decode(basic.trim()).map_err(|_| bad())?;
        let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
        let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
        let o = self.opts();
        let key = o
            .keys
            .iter()
            .find(|k| (k.key_id == id || (id == o.account_id && k.buckets.is_none())) && k.application_key == secret)
            .cloned()
            .ok_or_else(bad)?;
        let base = host_base(headers);
        let buckets: Option<Vec<(String, String)>> = key
            .buckets
            .as_ref()
            .map(|l| l.iter().map(|n| (bucket_id_of(n), n.clone())).collect());
        let shape = self.shape(ver);
        if shape == 3 && buckets.as_ref().is_some_and(|b| b.len() > 1) {
            return Err(err(401, "unauthorized", "multi-bucket keys need API v4"));
        }
        let token = self.new_token(key.clone(), None);
        let caps = key.capabilities.clone();
        let prefix = key.name_prefix.clone();
        let first = buckets.as_ref().and_then(|b| b.first().cloned());
        let (bid, bname) = (first.as_ref().map(|b| b.0.clone()), first.map(|b| b.1));
        let common = json!({
            "apiUrl": base, "downloadUrl": base, "s3ApiUrl": format!("{base}/s3"),
            "recommendedPartSize": 100_000_000, "absoluteMinimumPartSize": 5_000_000,
        });
        let mut out = match shape {
            4 => {
                let mut storage = common;
                storage["allowed"] = json!({
                    "buckets": buckets.map(|l| l.into_iter().map(|(id, name)| json!({"id": id, "name": name})).collect::<Vec<_>>()),
                    "capabilities": caps, "namePrefix": prefix,
                });
                json!({"apiInfo": {"groupsApi": {"capabilities": [], "groupsApiUrl": base, "infoType": "groupsApi"}, "storageApi": storage}})
            }
            3 => {
                let mut storage = common;
                storage["bucketId"] = json!(bid);
                storage["bucketName"] = json!(bname);
                storage["namePrefix"] = json!(prefix);
                storage["capabilities"] = json!(caps);
                storage["infoType"] = json!("storageApi");
                json!({"apiInfo": {"groupsApi": {"capabilities": [], "groupsApiUrl": base, "infoType": "groupsApi"}, "storageApi": storage}})
            }
            _ => {
                let mut flat = common;
                flat["minimumPartSize"] = json!(100_000_000);
                flat["allowed"] =
                    json!({"bucketId": bid, "bucketName": bname, "capabilities": caps, "namePrefix": prefix});
                flat
            }
        };
        out["accountId"] = json!(o.account_id);
        out["authorizationToken"] = json!(token);
        out["applicationKeyExpirationTimestamp"] = Value::Null;
        Ok(out)
    }

    fn transaction_cap(&self) -> Result<(), ApiErr> {
        if self.opts().cap_exceeded.as_deref() == Some("transaction_cap_exceeded") {
            return Err(err(403, "transaction_cap_exceeded", "Transaction cap exceeded."));
        }
        Ok(())
    }

    fn list_buckets(&self, g: &Grant, p: &Params) -> Result<Value, ApiErr> {
        g.need("listBuckets")?;
        let o = self.opts();
        if required(p, "accountId")? != o.account_id {
            return Err(err(401, "unauthorized", "accountId does not match the token"));
        }
        let by_id = p.get("bucketId");
        let by_name = p.get("bucketName");
        if g.key.buckets.is_some() && by_id.is_none() && by_name.is_none() {
            // Since v2: a restricted key must name its bucket (§1.2).
            return Err(err(
                401,
                "unauthorized",
                "the key is restricted to buckets; give bucketId or bucketName",
            ));
        }
        let types: Option<Vec<String>> = p.get("bucketTypes").and_then(|t| serde_json::from_str(t).ok());
        let store = self.store.lock().unwrap();
        let mut out = Vec::new();
        for b in store.buckets.values() {
            if by_id.is_some_and(|id| *id != b.id) || by_name.is_some_and(|n| *n != b.name) {
                continue;
            }
            let btype = if o.public_buckets.contains(&b.name) {
                "allPublic"
            } else {
                "allPrivate"
            };
            if let Some(t) = &types
                && !t.iter().any(|t| t == "all" || t == btype)
            {
                continue;
            }
            g.bucket(&b.name)?;
            out.push(json!({
                "accountId": o.account_id, "bucketId": b.id, "bucketName": b.name, "bucketType": btype,
                "bucketInfo": {}, "corsRules": [], "lifecycleRules": [], "revision": 1, "options": [],
            }));
        }
        Ok(json!({"buckets": out}))
    }

    fn file_json(&self, o: &B2EmuOptions, shape: u8, b: &Bucket, name: &str, v: &Version) -> FileJson {
        let mut info = v.info.clone();
        let sha1 = match v.action {
            "upload" => {
                let sha = wire_sha1(o, &v.sha1);
                if o.large_file_threshold.is_some_and(|t| v.data.len() >= t) {
                    if o.large_file_sha1 {
                        info.insert("large_file_sha1".into(), sha);
                    }
                    Some("none".to_string())
                } else {
                    Some(sha)
                }
            }
            "start" => Some("none".to_string()),
            _ => None,
        };
        let len = if v.action == "upload" { v.data.len() } else { 0 };
        let mut f = FileJson {
            account_id: o.account_id.clone(),
            action: v.action,
            bucket_id: b.id.clone(),
            content_length: None,
            size: None,
            content_sha1: sha1,
            content_md5: None,
            content_type: Some(v.content_type.clone()),
            file_id: Some(v.file_id.clone()),
            file_info: info,
            file_name: name.to_string(),
            upload_timestamp: v.upload_ts,
            server_side_encryption: None,
            file_retention: None,
            legal_hold: None,
            replication_status: None,
        };
        f.set_v2_fields(shape, len, v.sse_key_md5.is_some());
        f
    }

    fn folder_json(&self, o: &B2EmuOptions, shape: u8, b: &Bucket, folder: &str) -> FileJson {
        let mut f = FileJson {
            account_id: o.account_id.clone(),
            action: "folder",
            bucket_id: b.id.clone(),
            content_length: None,
            size: None,
            content_sha1: None,
            content_md5: None,
            content_type: None,
            file_id: None,
            file_info: BTreeMap::new(),
            file_name: folder.to_string(),
            upload_timestamp: 0,
            server_side_encryption: None,
            file_retention: None,
            legal_hold: None,
            replication_status: None,
        };
        f.set_v2_fields(shape, 0, false);
        f
    }

    /// `b2_list_file_names` (`versions = false`) and `b2_list_file_versions`.
    fn list_files(&self, shape: u8, g: &Grant, p: &Params, versions: bool) -> Result<Response, ApiErr> {
        g.need("listFiles")?;
        let o = self.opts();
        let bucket_id = required(p, "bucketId")?;
        let prefix = p.get("prefix").cloned().unwrap_or_default();
        let delimiter = p.get("delimiter").filter(|d| !d.is_empty()).cloned();
        let max: usize = match p.get("maxFileCount") {
            None => 100,
            Some(s) => s
                .parse()
                .ok()
                .filter(|n| (1..=10_000).contains(n))
                .ok_or_else(|| err(400, "bad_request", "maxFileCount must be between 1 and 10000"))?,
        };
        g.name(&prefix)?;
        let start_name = p.get("startFileName").cloned();
        let start_id = p.get("startFileId").cloned();
        let store = self.store.lock().unwrap();
        let b = store
            .buckets
            .values()
            .find(|b| b.id == bucket_id)
            .ok_or_else(|| err(400, "bad_bucket_id", format!("invalid bucketId: {bucket_id}")))?;
        g.bucket(&b.name)?;
        let from = match &start_name {
            Some(s) if *s > prefix => s.clone(),
            _ => prefix.clone(),
        };
        let mut cursor = Bound::Included(from);
        let mut out = Vec::new();
        let mut next: Option<(String, Option<String>)> = None;
        'scan: while let Some((name, vers)) = b.files.range::<String, _>((cursor.clone(), Bound::Unbounded)).next() {
            if !name.starts_with(&prefix) {
                break;
            }
            let rest = &name[prefix.len()..];
            if let Some(d) = &delimiter
                && let Some(i) = rest.find(d.as_str())
            {
                let folder = &name[..prefix.len() + i + d.len()];
                if out.len() == max {
                    next = Some((folder.to_string(), None));
                    break;
                }
                let visible = versions || vers.first().is_some_and(|v| v.action != "hide") || {
                    // A folder shows only if some name under it is visible.
                    b.files
                        .range::<str, _>((Bound::Included(folder), Bound::Unbounded))
                        .take_while(|(n, _)| n.starts_with(folder))
                        .any(|(_, vs)| vs.first().is_some_and(|v| v.action != "hide"))
                };
                if visible && start_name.as_deref().is_none_or(|s| folder >= s) {
                    out.push(self.folder_json(&o, shape, b, folder));
                }
                cursor = Bound::Included(past_prefix(folder));
                continue;
            }
            if versions {
                let skip_to = match (&start_name, &start_id) {
                    (Some(s), Some(id)) if s == name => vers.iter().position(|v| v.file_id == *id).unwrap_or(0),
                    _ => 0,
                };
                for v in &vers[skip_to..] {
                    if out.len() == max {
                        next = Some((name.clone(), Some(v.file_id.clone())));
                        break 'scan;
                    }
                    out.push(self.file_json(&o, shape, b, name, v));
                }
            } else if let Some(v) = vers.first().filter(|v| v.action != "hide") {
                if out.len() == max {
                    next = Some((name.clone(), None));
                    break;
                }
                out.push(self.file_json(&o, shape, b, name, v));
            }
            cursor = Bound::Excluded(name.clone());
        }
        let next_file_id = versions.then(|| next.as_ref().and_then(|n| n.1.clone()));
        Ok(json_response(ListJson {
            files: out,
            next_file_name: next.map(|n| n.0),
            next_file_id,
        }))
    }

    fn get_file_info(&self, shape: u8, g: &Grant, p: &Params) -> Result<Response, ApiErr> {
        g.need("readFiles")?;
        let id = required(p, "fileId")?;
        let store = self.store.lock().unwrap();
        let (b, name, v) = store
            .find(id)
            .ok_or_else(|| err(404, "not_found", format!("file not present: {id}")))?;
        g.bucket(&b.name)?;
        g.name(name)?;
        Ok(json_response(self.file_json(&self.opts(), shape, b, name, v)))
    }

    fn get_download_authorization(&self, g: &Grant, p: &Params) -> Result<Value, ApiErr> {
        g.need("shareFiles")?;
        let bucket_id = required(p, "bucketId")?.to_string();
        let prefix = p.get("fileNamePrefix").cloned().unwrap_or_default();
        let secs: u64 = required(p, "validDurationInSeconds")?
            .parse()
            .ok()
            .filter(|s| (1..=604_800).contains(s))
            .ok_or_else(|| err(400, "bad_request", "validDurationInSeconds must be 1..604800"))?;
        let name = {
            let store = self.store.lock().unwrap();
            store
                .buckets
                .values()
                .find(|b| b.id == bucket_id)
                .map(|b| b.name.clone())
                .ok_or_else(|| err(400, "bad_bucket_id", format!("invalid bucketId: {bucket_id}")))?
        };
        g.bucket(&name)?;
        let token = self.new_token(
            g.key.clone(),
            Some((
                bucket_id.clone(),
                prefix.clone(),
                Instant::now() + Duration::from_secs(secs),
            )),
        );
        Ok(json!({"bucketId": bucket_id, "fileNamePrefix": prefix, "authorizationToken": token}))
    }
}

/// The smallest string greater than every string starting with `folder` (which ends with an
/// ASCII delimiter): the folder with its last byte incremented.
fn past_prefix(folder: &str) -> String {
    let mut s = folder.to_string();
    match s.pop() {
        Some(c) if (c as u32) < 0x7f => {
            s.push(char::from_u32(c as u32 + 1).expect("ascii"));
            s
        }
        Some(c) => format!("{s}{c}{}", char::MAX),
        None => s,
    }
}

fn wire_sha1(o: &B2EmuOptions, sha1: &str) -> String {
    let mut s = sha1.to_string();
    if o.wrong_sha1 && !s.is_empty() {
        // Flip the first hex digit: still 40 hex digits, never the right value.
        let first = if s.starts_with('0') { "1" } else { "0" };
        s.replace_range(0..1, first);
    }
    if o.unverified_sha1 {
        s = format!("unverified:{s}");
    }
    s
}

fn host_base(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    format!("http://{host}")
}

fn parse_version(ver: &str) -> Option<u8> {
    ver.strip_prefix('v')?.parse().ok().filter(|v| (1..=4).contains(v))
}

fn header_token(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
}

async fn api(
    State(e): State<Arc<Emu>>,
    UrlPath((ver, op)): UrlPath<(String, String)>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let head = method == Method::HEAD;
    let Some(v) = parse_version(&ver) else {
        return err(404, "not_found", format!("unknown API version {ver}")).render(head);
    };
    let params = match parse_params(query.as_deref(), &method, &body) {
        Ok(p) => p,
        Err(x) => return x.render(head),
    };
    if op == "b2_download_file_by_id" {
        return match download_by_id(&e, &method, &params, &headers) {
            Ok(r) => r.await,
            Err(x) => x.render(head),
        };
    }
    let shape = e.shape(v);
    let result = if op == "b2_authorize_account" {
        e.authorize(v, &headers).map(json_response)
    } else {
        e.check(header_token(&headers), &headers).and_then(|g| {
            e.transaction_cap()?;
            match op.as_str() {
                "b2_list_buckets" => e.list_buckets(&g, &params).map(json_response),
                "b2_list_file_names" => e.list_files(shape, &g, &params, false),
                "b2_list_file_versions" => e.list_files(shape, &g, &params, true),
                "b2_get_file_info" => e.get_file_info(shape, &g, &params),
                "b2_get_download_authorization" => e.get_download_authorization(&g, &params).map(json_response),
                other => Err(err(400, "bad_request", format!("unknown operation {other}"))),
            }
        })
    };
    match result {
        Ok(r) => r,
        Err(x) => x.render(head),
    }
}

fn json_response<T: Serialize>(v: T) -> Response {
    axum::Json(v).into_response()
}

/// A file object on the wire. Typed rather than `json!`: listings of thousands of names are
/// serialized per call.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileJson {
    account_id: String,
    action: &'static str,
    bucket_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_length: Option<u64>,
    /// v1 calls it `size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    content_sha1: Option<String>,
    content_md5: Option<String>,
    content_type: Option<String>,
    file_id: Option<String>,
    file_info: BTreeMap<String, String>,
    file_name: String,
    upload_timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_side_encryption: Option<SseJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_retention: Option<Unreadable>,
    #[serde(skip_serializing_if = "Option::is_none")]
    legal_hold: Option<Unreadable>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replication_status: Option<Option<String>>,
}

impl FileJson {
    /// `size` for v1; `contentLength` and the v2+ fields otherwise.
    fn set_v2_fields(&mut self, shape: u8, len: u64, sse_c: bool) {
        if shape <= 1 {
            self.size = Some(len);
            return;
        }
        self.content_length = Some(len);
        self.server_side_encryption = Some(SseJson {
            mode: sse_c.then_some("SSE-C"),
            algorithm: sse_c.then_some("AES256"),
        });
        self.file_retention = Some(Unreadable::default());
        self.legal_hold = Some(Unreadable::default());
        self.replication_status = Some(None);
    }
}

#[derive(Serialize)]
struct SseJson {
    mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    algorithm: Option<&'static str>,
}

/// `{"isClientAuthorizedToRead": false, "value": null}`.
#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct Unreadable {
    is_client_authorized_to_read: bool,
    value: Option<()>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListJson {
    files: Vec<FileJson>,
    next_file_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_file_id: Option<Option<String>>,
}

/// An object chosen for download, copied out of the store.
struct Chosen {
    bucket_id: String,
    bucket_name: String,
    name: String,
    v: Version,
}

fn download_by_id(
    e: &Arc<Emu>,
    method: &Method,
    params: &Params,
    headers: &HeaderMap,
) -> Result<impl Future<Output = Response> + use<>, ApiErr> {
    let id = required(params, "fileId")?.to_string();
    let chosen = {
        let store = e.store.lock().unwrap();
        let (b, name, v) = store
            .find(&id)
            .filter(|(_, _, v)| v.action == "upload")
            .ok_or_else(|| err(404, "not_found", format!("file not present: {id}")))?;
        Chosen {
            bucket_id: b.id.clone(),
            bucket_name: b.name.clone(),
            name: name.to_string(),
            v: v.clone(),
        }
    };
    let public = e.opts().public_buckets.contains(&chosen.bucket_name);
    let token = header_token(headers);
    if !(public && token.is_none()) {
        let g = e.check(token, headers)?;
        if g.download.is_some() {
            return Err(err(401, "unauthorized", "download authorizations work only by name"));
        }
        g.need("readFiles")?;
        g.bucket(&chosen.bucket_name)?;
        g.name(&chosen.name)?;
    }
    serve_download(e, chosen, method, params, headers, token.is_some())
}

async fn by_name(
    State(e): State<Arc<Emu>>,
    UrlPath((bucket, _)): UrlPath<(String, String)>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let head = method == Method::HEAD;
    let params: Params = query
        .as_deref()
        .map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    // The name is the raw path after /file/<bucket>/, %XX-decoded (a literal '+' stays '+').
    let raw = uri.path().splitn(4, '/').nth(3).unwrap_or("");
    let name = percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned();
    let result = (|| {
        let chosen = {
            let store = e.store.lock().unwrap();
            let b = store
                .buckets
                .get(&bucket)
                .ok_or_else(|| err(404, "not_found", format!("bucket {bucket} does not exist")))?;
            let v = b
                .files
                .get(&name)
                .and_then(|vs| vs.iter().find(|v| v.action != "start"))
                .filter(|v| v.action == "upload")
                .ok_or_else(|| err(404, "not_found", format!("file not present: {name}")))?;
            Chosen {
                bucket_id: b.id.clone(),
                bucket_name: b.name.clone(),
                name: name.clone(),
                v: v.clone(),
            }
        };
        let public = e.opts().public_buckets.contains(&chosen.bucket_name);
        let token = header_token(&headers).or(params.get("Authorization").map(String::as_str));
        if !(public && token.is_none()) {
            let g = e.check(token, &headers)?;
            match &g.download {
                Some((bid, prefix)) => {
                    if *bid != chosen.bucket_id || !chosen.name.starts_with(prefix.as_str()) {
                        return Err(err(
                            401,
                            "unauthorized",
                            "the download authorization does not cover this file",
                        ));
                    }
                }
                None => {
                    g.need("readFiles")?;
                    g.bucket(&chosen.bucket_name)?;
                    g.name(&chosen.name)?;
                }
            }
        }
        serve_download(&e, chosen, &method, &params, &headers, token.is_some())
    })();
    match result {
        Ok(f) => f.await,
        Err(x) => x.render(head),
    }
}

/// `fileInfo` keys B2 turns into standard response headers instead of `X-Bz-Info-*`.
const INFO_HEADERS: &[(&str, &str, &str)] = &[
    ("b2-content-disposition", "content-disposition", "b2ContentDisposition"),
    ("b2-content-language", "content-language", "b2ContentLanguage"),
    ("b2-expires", "expires", "b2Expires"),
    ("b2-cache-control", "cache-control", "b2CacheControl"),
    ("b2-content-encoding", "content-encoding", "b2ContentEncoding"),
];

/// Percent-encodes for `X-Bz-File-Name`/`X-Bz-Info-*` in B2's minimal form (space as `+`).
fn encode_header_value(s: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b'/')
        .remove(b' ');
    percent_encoding::utf8_percent_encode(s, SET)
        .to_string()
        .replace(' ', "+")
}

enum RangeAsk {
    Whole,
    Part(u64, u64),
    Unsatisfiable,
}

/// The Range table of §1.6.
fn range_ask(v: Option<&str>, size: u64) -> RangeAsk {
    let Some(v) = v else { return RangeAsk::Whole };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    let Some((a, b)) = spec.split_once('-') else {
        return RangeAsk::Whole;
    };
    // Suffix ranges and multiple ranges are not confirmed B2 behaviour: treat as malformed.
    let Ok(a) = a.trim().parse::<u64>() else {
        return RangeAsk::Whole;
    };
    let end = match b.trim() {
        "" => None,
        s => match s.parse::<u64>() {
            Ok(e) if e >= a => Some(e),
            _ => return RangeAsk::Whole,
        },
    };
    if a >= size {
        return RangeAsk::Unsatisfiable;
    }
    let last = end.unwrap_or(u64::MAX).min(size - 1);
    if a == 0 && last == size - 1 {
        return RangeAsk::Whole;
    }
    RangeAsk::Part(a, last)
}

fn serve_download(
    e: &Emu,
    c: Chosen,
    method: &Method,
    params: &Params,
    headers: &HeaderMap,
    has_token: bool,
) -> Result<impl Future<Output = Response> + use<>, ApiErr> {
    let o = e.opts();
    if o.cap_exceeded.as_deref() == Some("download_cap_exceeded") {
        return Err(err(
            403,
            "download_cap_exceeded",
            "Cannot download file, download bandwidth or transaction (Class B) cap exceeded.",
        ));
    }
    if o.cap_exceeded.as_deref() == Some("transaction_cap_exceeded") {
        return Err(err(403, "transaction_cap_exceeded", "Transaction cap exceeded."));
    }
    let v = &c.v;
    if let Some(want_md5) = &v.sse_key_md5 {
        let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let (Some(alg), Some(key)) = (
            h("x-bz-server-side-encryption-customer-algorithm"),
            h("x-bz-server-side-encryption-customer-key"),
        ) else {
            return Err(err(
                400,
                "bad_request",
                "The object was stored using SSE-C; the key must be provided",
            ));
        };
        let md5 = key_md5(key);
        let stated = h("x-bz-server-side-encryption-customer-key-md5");
        if alg != "AES256" || md5.is_none() || stated.is_some_and(|s| Some(s) != md5.as_deref()) {
            return Err(err(400, "bad_request", "invalid SSE-C headers"));
        }
        if md5.as_deref() != Some(want_md5.as_str()) {
            return Err(err(
                403,
                "access_denied",
                "The provided customer-managed encryption key is wrong.",
            ));
        }
    }
    let size = v.data.len();
    let ask = range_ask(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), size);
    let (status, start, len) = match ask {
        RangeAsk::Whole => (StatusCode::OK, 0, size),
        RangeAsk::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        RangeAsk::Unsatisfiable => {
            return Err(err(
                416,
                "range_not_satisfiable",
                format!("The range is not satisfiable for a file of {size} bytes"),
            ));
        }
    };
    let mut r = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header("x-bz-file-id", &v.file_id)
        .header("x-bz-file-name", encode_header_value(&c.name))
        .header("x-bz-upload-timestamp", v.upload_ts.to_string());
    let large = o.large_file_threshold.is_some_and(|t| size >= t);
    let sha = wire_sha1(&o, &v.sha1);
    r = r.header(
        "x-bz-content-sha1",
        if large { "none".to_string() } else { sha.clone() },
    );
    if large && o.large_file_sha1 {
        r = r.header("x-bz-info-large_file_sha1", sha);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        r = r.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", start, start + len - 1),
        );
    }
    let mut content_type = v.content_type.clone();
    for (k, val) in &v.info {
        if let Some((_, std_header, _)) = INFO_HEADERS.iter().find(|(key, _, _)| key == k) {
            r = r.header(*std_header, val);
        } else {
            r = r.header(format!("x-bz-info-{k}"), encode_header_value(val));
        }
    }
    // Response-header overrides need a token (§1.5).
    for (_, std_header, param) in INFO_HEADERS {
        if let Some(val) = params.get(*param) {
            if !has_token {
                return Err(err(
                    401,
                    "unauthorized",
                    format!("{param} requires an authorization token"),
                ));
            }
            r = r.header(*std_header, val);
        }
    }
    if let Some(ct) = params.get("b2ContentType") {
        if !has_token {
            return Err(err(
                401,
                "unauthorized",
                "b2ContentType requires an authorization token",
            ));
        }
        content_type = ct.clone();
    }
    r = r.header(header::CONTENT_TYPE, content_type);
    if let Some(md5) = &v.sse_key_md5 {
        r = r
            .header("x-bz-server-side-encryption-customer-algorithm", "AES256")
            .header("x-bz-server-side-encryption-customer-key-md5", md5);
    }
    let head = *method == Method::HEAD;
    let data = v.data.clone();
    Ok(async move {
        if head {
            return r.body(Body::empty()).unwrap();
        }
        let body = match data {
            Data::Mem(b) => Body::from(b.slice(start as usize..(start + len) as usize)),
            Data::Disk(path, _) => match super::file_body(&path, start, len) {
                Ok(b) => b,
                Err(x) => return err(500, "internal_error", format!("cannot read object: {x}")).render(false),
            },
        };
        r.body(body).unwrap()
    })
}

/// Sample objects for `fetchfs demo`: written under `dir/b2`, served on a free port.
pub async fn demo(dir: &Path) -> std::io::Result<(Server, crate::config::SourceConfig)> {
    let root = dir.join("b2");
    let bucket = root.join("demo-bucket");
    std::fs::create_dir_all(bucket.join("docs"))?;
    std::fs::create_dir_all(bucket.join("data"))?;
    std::fs::write(bucket.join("hello.txt"), b"Hello from the B2 emulator!\n")?;
    std::fs::write(bucket.join("hello.txt.b2v1"), b"An older version of hello.txt\n")?;
    std::fs::write(
        bucket.join("docs/readme.md"),
        b"# fetchfs demo\n\nThis bucket is served by `fetchfs emulate b2`.\n",
    )?;
    std::fs::write(
        bucket.join("docs/readme.md.b2info.json"),
        br#"{"contentType": "text/markdown", "fileInfo": {"author": "fetchfs demo"}}"#,
    )?;
    std::fs::write(bucket.join("docs/removed.txt"), b"hidden by a hide marker\n")?;
    std::fs::write(bucket.join("docs/removed.txt.b2hidden"), b"")?;
    let data: Vec<u8> = (0..(3u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(bucket.join("data/random.bin"), data)?;
    let emu = router(&root, B2EmuOptions::default());
    let server = super::serve(emu.router, 0, emu.harness).await?;
    let cfg = crate::provider::b2::B2Config {
        name: "b2".into(),
        endpoint: Some(server.base_url()),
        key_id: Some(DEFAULT_KEY_ID.into()),
        key_id_file: None,
        application_key: Some(DEFAULT_APPLICATION_KEY.into()),
        application_key_file: None,
        bucket: None,
        prefix: None,
        sse_c_key_file: None,
        versions: true,
    };
    Ok((server, crate::config::SourceConfig::B2(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_table_of_section_1_6() {
        let part = |v: &str, size| match range_ask(Some(v), size) {
            RangeAsk::Part(a, b) => Some((a, b)),
            _ => None,
        };
        assert!(matches!(range_ask(None, 10), RangeAsk::Whole));
        assert_eq!(part("bytes=2-5", 10), Some((2, 5)));
        assert!(matches!(range_ask(Some("bytes=0-"), 10), RangeAsk::Whole));
        assert!(matches!(range_ask(Some("bytes=0-9"), 10), RangeAsk::Whole));
        assert!(matches!(range_ask(Some("bytes=0-99"), 10), RangeAsk::Whole));
        assert!(matches!(range_ask(Some("bytes=abc"), 10), RangeAsk::Whole));
        assert!(matches!(range_ask(Some("bytes=5-2"), 10), RangeAsk::Whole));
        assert!(matches!(range_ask(Some("bytes=-3"), 10), RangeAsk::Whole));
        assert!(matches!(range_ask(Some("bytes=1-2,4-5"), 10), RangeAsk::Whole));
        assert!(matches!(range_ask(Some("bytes=10-12"), 10), RangeAsk::Unsatisfiable));
        assert!(matches!(range_ask(Some("bytes=0-0"), 0), RangeAsk::Unsatisfiable));
        assert_eq!(part("bytes=5-99", 10), Some((5, 9)), "clipped to the end");
    }

    #[test]
    fn header_values_use_the_minimal_encoding() {
        assert_eq!(encode_header_value("a b+c/é.txt"), "a+b%2Bc/%C3%A9.txt");
        assert_eq!(past_prefix("dir/"), "dir0");
    }

    #[test]
    fn side_files_are_recognised() {
        assert_eq!(version_suffix("a/b.txt.b2v12"), Some(("a/b.txt", 12)));
        assert!(is_side_file("x.b2hidden"));
        assert!(!is_side_file("x.b2vx"));
    }
}

//! A Oneprovider REST v3 emulator over a directory tree (providers.md §2.12, every item).
//!
//! Tree convention: each sub-directory of `--root DIR` is a space. The space name is the
//! directory name, up to an `@` if it has one, so `shared@a` and `shared@b` are two spaces
//! both named `shared` (duplicate names); the space id is derived from the directory name.
//! Files, directories and symlinks below are the space's contents; a real symlink is a
//! `SYMLNK` entry whose `symlinkValue` is its target (relative targets resolve inside the
//! space, `<__onedata_space_id:ID>/path` targets in space ID). A file without the owner's
//! read bit answers `posix eacces` (so the rule holds when the emulator runs as root).
//!
//! File ids are the upper-case hex of `guid#<spaceId>#<path>`: stable across restarts and
//! decodable without any table. A space id is also accepted wherever a directory id is.
//!
//! Served under `/api/v3/oneprovider`: `GET /spaces`, `POST /lookup-file-id/{space}/{path..}`,
//! `GET /data/{id}` (attributes), `GET /data/{id}/children` (paged, JSON-body options merged
//! with query options, query winning; legacy `?attribute=` snake_case names),
//! `GET /data/{id}/content` and `GET /data/{baseId}/path/{path..}` (exact Range rules of
//! §2.7, multipart for several ranges, `follow_symlinks`, directories → `302
//! /download/{code}` streaming a TAR that resumes with `Range: bytes=N-`). `HEAD` → 405.
//! Also the Onezone stub `POST /api/v3/onezone/tokens/infer_access_token_scope`.
//!
//! Switchable at run time through [`OnedataEmulator::behaviour`] or
//! `POST /__fetchfs/onedata` (JSON [`OnedataBehaviour`]): short (and sometimes empty) pages,
//! a legacy-only server that ignores JSON bodies, token rejection with a chosen `authError`,
//! and a forced POSIX errno on every data request. Generic faults come from
//! [`super::fault_layer`].

// Handlers bail out early with the finished error `Response` as the `Err` of small helpers;
// boxing it would only add noise to test-support code.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Harness;

const API: &str = "/api/v3/oneprovider";
/// Release the emulator claims to be (the seed's `ctx.serviceReleaseVersion`).
const RELEASE: &str = "25.0";
/// Release claimed in legacy-only mode (before the JSON-body options of 21.02.5).
const LEGACY_RELEASE: &str = "20.02.19";
/// Largest `limit` of a children page.
const MAX_LIMIT: u64 = 1000;
/// Symlinks followed before `eloop`, as Linux's MAXSYMLINKS.
const MAX_SYMLINK_HOPS: u32 = 40;

/// Behaviours switchable while the emulator runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OnedataBehaviour {
    /// Return pages shorter than `limit` (every fourth one empty) while `isLast` stays false.
    pub short_pages: bool,
    /// Behave as a pre-21.02.5 provider: ignore JSON bodies; only `?attribute=` (legacy
    /// snake_case names) selects attributes.
    pub legacy_only: bool,
    /// Reject every token (even the right one) with this `authError` id (`tokenRevoked`…).
    pub reject_token: Option<String>,
    /// Answer every `/data/...` request with `400 posix` and this errno (`eperm`, `eacces`…).
    pub force_errno: Option<String>,
}

/// Start-up options.
#[derive(Debug, Clone)]
pub struct OnedataEmuOptions {
    /// The one access token accepted.
    pub token: String,
    pub behaviour: OnedataBehaviour,
}

impl Default for OnedataEmuOptions {
    fn default() -> Self {
        OnedataEmuOptions {
            token: "demo-token".into(),
            behaviour: OnedataBehaviour::default(),
        }
    }
}

/// Flags of `fetchfs emulate onedata`.
#[derive(clap::Args, Debug, Clone)]
pub struct EmuArgs {
    /// The access token clients must send (X-Auth-Token or Authorization: Bearer).
    #[arg(long, default_value = "demo-token")]
    pub token: String,
    /// Serve children pages shorter than asked (some empty) until the last one.
    #[arg(long)]
    pub short_pages: bool,
    /// Act as an old provider: JSON-body options ignored, only ?attribute= legacy names.
    #[arg(long)]
    pub legacy_only: bool,
    /// Refuse every token with this authError id (e.g. tokenRevoked).
    #[arg(long, value_name = "AUTH_ERROR")]
    pub reject_token: Option<String>,
}

impl EmuArgs {
    pub fn options(&self) -> OnedataEmuOptions {
        OnedataEmuOptions {
            token: self.token.clone(),
            behaviour: OnedataBehaviour {
                short_pages: self.short_pages,
                legacy_only: self.legacy_only,
                reject_token: self.reject_token.clone(),
                force_errno: None,
            },
        }
    }
}

/// The router, its harness and the behaviour switch.
pub struct OnedataEmulator {
    pub router: Router,
    pub harness: Harness,
    pub behaviour: Arc<Mutex<OnedataBehaviour>>,
}

/// One directory-download session (`/download/{code}`).
#[derive(Debug, Clone)]
struct Download {
    space: Space,
    rel: String,
    follow: bool,
}

#[derive(Clone)]
struct St {
    root: Arc<PathBuf>,
    token: Arc<String>,
    behaviour: Arc<Mutex<OnedataBehaviour>>,
    downloads: Arc<Mutex<HashMap<String, Download>>>,
}

impl St {
    fn b(&self) -> OnedataBehaviour {
        self.behaviour.lock().unwrap().clone()
    }
}

/// Builds the emulator serving the spaces under `root`.
pub fn router(root: &Path, opts: OnedataEmuOptions) -> OnedataEmulator {
    let behaviour = Arc::new(Mutex::new(opts.behaviour));
    let st = St {
        root: Arc::new(root.to_path_buf()),
        token: Arc::new(opts.token),
        behaviour: behaviour.clone(),
        downloads: Arc::default(),
    };
    let api = Router::new()
        .route(&format!("{API}/spaces"), get(spaces))
        .route(&format!("{API}/lookup-file-id/{{*path}}"), post(lookup))
        .route(&format!("{API}/data/{{id}}"), get(attributes))
        .route(&format!("{API}/data/{{id}}/children"), get(children))
        .route(&format!("{API}/data/{{id}}/content"), get(content))
        .route(&format!("{API}/data/{{id}}/path/{{*path}}"), get(by_path))
        .layer(axum::middleware::from_fn_with_state(st.clone(), gate));
    let r = api
        .route("/download/{code}", get(download))
        .route("/api/v3/onezone/tokens/infer_access_token_scope", post(infer_scope))
        .route(
            "/__fetchfs/onedata",
            get(|State(s): State<St>| async move { axum::Json(s.b()) }).post(
                |State(s): State<St>, axum::Json(b): axum::Json<OnedataBehaviour>| async move {
                    *s.behaviour.lock().unwrap() = b;
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(st);
    let harness = Harness::default();
    let router = super::fault_layer(r, harness.clone(), injected_error);
    OnedataEmulator {
        router,
        harness,
        behaviour,
    }
}

/// An injected fault in Onedata's error shape.
fn injected_error(status: u16) -> (String, &'static str) {
    let (id, details) = match status {
        401 => (
            "unauthorized",
            json!({"authError": {"id": "tokenInvalid", "description": "Provided token is not valid."}}),
        ),
        403 => ("forbidden", Value::Null),
        404 => ("notFound", Value::Null),
        400 => ("badValue", Value::Null),
        s if s >= 500 => ("internalServerError", Value::Null),
        _ => ("unknownError", Value::Null),
    };
    (
        error_json(id, &format!("injected {status}"), details).to_string(),
        "application/json",
    )
}

/// `{"error": {"id", "description", "details"?, "ctx"}}` as release 25.x writes it.
fn error_json(id: &str, description: &str, details: Value) -> Value {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let mut e = json!({
        "id": id,
        "description": description,
        "ctx": {
            "timestamp": millis,
            "serviceReleaseVersion": RELEASE,
            "serviceId": provider_id(),
            "serviceDomain": "127.0.0.1",
            "serviceBuildVersion": "fetchfs-emulator",
            "service": "opw",
            "onedataErrorsRevision": "fetchfs",
            "module": "rest_handler",
            "line": 1
        }
    });
    if !details.is_null() {
        e["details"] = details;
    }
    json!({ "error": e })
}

fn err(status: StatusCode, id: &str, description: &str, details: Value) -> Response {
    (status, axum::Json(error_json(id, description, details))).into_response()
}

fn posix(errno: &str) -> Response {
    err(
        StatusCode::BAD_REQUEST,
        "posix",
        &format!("Operation failed with POSIX error: {errno}."),
        json!({ "errno": errno }),
    )
}

fn bad_value(id: &str, key: &str) -> Response {
    err(
        StatusCode::BAD_REQUEST,
        id,
        &format!("Bad value: provided \"{key}\" is not valid."),
        json!({ "key": key }),
    )
}

/// Method check (cowboy_rest answers unlisted methods before authenticating), token check,
/// then the forced errno.
async fn gate(State(st): State<St>, req: Request, next: Next) -> Response {
    if req.method() == Method::HEAD {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let h = req.headers();
    let presented = h
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            h.get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string)
        });
    let b = st.b();
    let auth_error = match (&presented, &b.reject_token) {
        (None, _) => Some(Value::Null),
        (Some(_), Some(id)) => Some(json!({"id": id, "description": format!("Token refused: {id}.")})),
        (Some(t), None) if t.trim() != st.token.as_str() => Some(json!({
            "id": "badToken", "description": "Provided token could not be understood by the server."
        })),
        _ => None,
    };
    if let Some(auth) = auth_error {
        return err(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "You must authenticate yourself to perform this operation.",
            json!({ "authError": auth }),
        );
    }
    if let Some(errno) = b.force_errno.as_deref()
        && req.uri().path().starts_with(&format!("{API}/data/"))
    {
        return posix(errno);
    }
    next.run(req).await
}

// ---- spaces and ids -------------------------------------------------------------------------

/// One space: a sub-directory of the root.
#[derive(Debug, Clone)]
struct Space {
    id: String,
    name: String,
    dir: PathBuf,
}

fn sha1_hex(s: &str) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(s.as_bytes()))
}

/// 32 lowercase hex digits, as real space ids, stable for a directory name.
fn space_id(dir_name: &str) -> String {
    sha1_hex(&format!("fetchfs-onedata-space:{dir_name}"))[..32].to_string()
}

fn provider_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| sha1_hex("fetchfs-onedata-provider")[..32].to_string())
        .clone()
}

fn spaces_of(root: &Path) -> Vec<Space> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if !e.path().is_dir() {
                continue;
            }
            let shown = name.split_once('@').map(|(n, _)| n).unwrap_or(&name).to_string();
            out.push(Space {
                id: space_id(&name),
                name: shown,
                dir: e.path(),
            });
        }
    }
    out.sort_by(|a, b| a.dir.cmp(&b.dir));
    out
}

/// The file id of `rel` (no leading slash, "" = space root) in `space_id`.
fn file_id(space_id: &str, rel: &str) -> String {
    hex::encode_upper(format!("guid#{space_id}#{rel}"))
}

/// A file id (or a bare space id) → its space and path.
fn locate(st: &St, id: &str) -> Result<(Space, String), Response> {
    let spaces = spaces_of(&st.root);
    if let Some(s) = spaces.iter().find(|s| s.id == id) {
        return Ok((s.clone(), String::new()));
    }
    let decoded = hex::decode(id)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| bad_value("badValueIdentifier", "id"))?;
    let (space, rel) = decoded
        .strip_prefix("guid#")
        .and_then(|r| r.split_once('#'))
        .ok_or_else(|| bad_value("badValueIdentifier", "id"))?;
    let Some(s) = spaces.iter().find(|s| s.id == space) else {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "spaceNotSupportedBy",
            "Space is not supported by this provider.",
            json!({"spaceId": space, "providerId": provider_id()}),
        ));
    };
    if rel.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err(bad_value("badValueIdentifier", "id"));
    }
    Ok((s.clone(), rel.to_string()))
}

fn join_rel(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

/// The local path of `rel` in `space`. Resolution never passes through a symlink (nor a
/// file) in the middle of the path, so no request reaches outside `--root`; only downloads
/// follow links, one checked hop at a time ([`resolve_link`]).
fn node(space: &Space, rel: &str) -> std::io::Result<PathBuf> {
    let mut p = space.dir.clone();
    let mut segs = rel.split('/').filter(|s| !s.is_empty()).peekable();
    while let Some(seg) = segs.next() {
        p.push(seg);
        if segs.peek().is_some() {
            let m = std::fs::symlink_metadata(&p)?;
            if m.file_type().is_symlink() {
                return Err(std::io::ErrorKind::NotFound.into());
            }
            if !m.is_dir() {
                return Err(std::io::ErrorKind::NotADirectory.into());
            }
        }
    }
    Ok(p)
}

async fn spaces(State(st): State<St>) -> Response {
    let pid = provider_id();
    let list: Vec<Value> = spaces_of(&st.root)
        .iter()
        .map(|s| {
            let root = file_id(&s.id, "");
            json!({
                "spaceId": s.id,
                "name": s.name,
                "dirId": root,
                "fileId": root,
                "trashDirId": file_id(&s.id, ".trash"),
                "archivesDirId": file_id(&s.id, ".__onedata__archive"),
                "providers": [{"providerId": pid, "providerName": "fetchfs-emulator"}]
            })
        })
        .collect();
    axum::Json(list).into_response()
}

/// Splits the raw URL path after `marker` into percent-decoded segments (cowboy `path_info`).
fn raw_segments(uri: &Uri, marker: &str) -> Result<Vec<String>, Response> {
    let path = uri.path();
    let rest = path.find(marker).map(|i| &path[i + marker.len()..]).unwrap_or("");
    let mut out = Vec::new();
    for seg in rest.split('/').filter(|s| !s.is_empty()) {
        let s = percent_encoding::percent_decode_str(seg)
            .decode_utf8()
            .map_err(|_| bad_value("badValueFilePath", "path"))?
            .to_string();
        if s == "." || s == ".." || s.contains('/') || s.contains('\0') {
            return Err(bad_value("badValueFilePath", "path"));
        }
        out.push(s);
    }
    Ok(out)
}

async fn lookup(State(st): State<St>, uri: Uri) -> Response {
    let segs = match raw_segments(&uri, "/lookup-file-id/") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some((first, rest)) = segs.split_first() else {
        return bad_value("badValueFilePath", "path");
    };
    let spaces = spaces_of(&st.root);
    // `name@spaceId` disambiguates; a bare name takes the first space of that name.
    let space = match first.rsplit_once('@') {
        Some((n, id)) if spaces.iter().any(|s| s.id == id) => spaces.iter().find(|s| s.id == id && s.name == n),
        _ => spaces.iter().find(|s| &s.name == first),
    };
    let Some(space) = space else {
        return posix("enoent");
    };
    let rel = rest.join("/");
    if let Err(e) = node(space, &rel).and_then(std::fs::symlink_metadata) {
        return io_posix(&e);
    }
    axum::Json(json!({ "fileId": file_id(&space.id, &rel) })).into_response()
}

// ---- attributes ---------------------------------------------------------------------------

/// Current attribute names the emulator knows, and their legacy spelling (if any).
const ATTRS: &[(&str, Option<&str>)] = &[
    ("fileId", Some("file_id")),
    ("index", Some("index")),
    ("type", Some("type")),
    ("activePermissionsType", None),
    ("posixPermissions", Some("mode")),
    ("name", Some("name")),
    ("conflictingName", None),
    ("path", None),
    ("parentFileId", Some("parent_id")),
    ("displayGid", Some("storage_group_id")),
    ("displayUid", Some("storage_user_id")),
    ("atime", Some("atime")),
    ("mtime", Some("mtime")),
    ("ctime", Some("ctime")),
    ("size", Some("size")),
    ("originProviderId", Some("provider_id")),
    ("directShareIds", Some("shares")),
    ("ownerUserId", Some("owner_id")),
    ("hardlinkCount", Some("hardlinks_count")),
    ("symlinkValue", None),
];

/// Which attributes to return and in which spelling.
#[derive(Debug, Clone)]
enum AttrSel {
    Current(Vec<String>),
    Legacy(Vec<String>),
}

/// Every attribute of one node, current names.
fn all_attrs(space: &Space, rel: &str, path: &Path) -> std::io::Result<serde_json::Map<String, Value>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        "SYMLNK"
    } else if ft.is_dir() {
        "DIR"
    } else {
        "REG"
    };
    let name = if rel.is_empty() {
        space.name.clone()
    } else {
        rel.rsplit('/').next().unwrap_or(rel).to_string()
    };
    let parent = if rel.is_empty() {
        Value::Null
    } else {
        Value::String(file_id(&space.id, rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("")))
    };
    let symlink = if ft.is_symlink() {
        std::fs::read_link(path)
            .ok()
            .map(|t| Value::String(t.to_string_lossy().to_string()))
            .unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let size = if ft.is_dir() { Value::Null } else { json!(meta.len()) };
    let mut m = serde_json::Map::new();
    let pid = provider_id();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put("fileId", json!(file_id(&space.id, rel)));
    put("index", json!(name));
    put("type", json!(kind));
    put("activePermissionsType", json!("posix"));
    put("posixPermissions", json!(format!("{:o}", meta.mode() & 0o7777)));
    put("name", json!(name));
    put("conflictingName", Value::Null);
    put("path", json!(format!("/{}/{}", space.name, rel).trim_end_matches('/')));
    put("parentFileId", parent);
    put("displayGid", json!(meta.gid()));
    put("displayUid", json!(meta.uid()));
    put("atime", json!(meta.atime().max(0)));
    put("mtime", json!(meta.mtime().max(0)));
    put("ctime", json!(meta.ctime().max(0)));
    put("size", size);
    put("originProviderId", json!(pid));
    put("directShareIds", json!([]));
    put("ownerUserId", json!("emulated-user"));
    put("hardlinkCount", json!(meta.nlink()));
    put("symlinkValue", symlink);
    Ok(m)
}

/// The selected attributes of one node.
fn select(all: &serde_json::Map<String, Value>, sel: &AttrSel) -> Value {
    let mut out = serde_json::Map::new();
    match sel {
        AttrSel::Current(names) => {
            for n in names {
                let v = if n.starts_with("xattr.") {
                    Value::Null
                } else {
                    all.get(n).cloned().unwrap_or(Value::Null)
                };
                out.insert(n.clone(), v);
            }
        }
        AttrSel::Legacy(names) => {
            for n in names {
                let Some((cur, _)) = ATTRS.iter().find(|(_, l)| *l == Some(n.as_str())) else {
                    continue;
                };
                let mut v = all.get(*cur).cloned().unwrap_or(Value::Null);
                if n == "mode" {
                    // Legacy `mode` is the number, not the octal string.
                    v = v
                        .as_str()
                        .and_then(|s| u32::from_str_radix(s, 8).ok())
                        .map(Value::from)
                        .unwrap_or(Value::Null);
                }
                out.insert(n.clone(), v);
            }
        }
    }
    Value::Object(out)
}

/// Options of `children` and `GET /data/{id}`, body merged with query (query wins).
#[derive(Debug, Default)]
struct Opts {
    limit: Option<u64>,
    token: Option<String>,
    index: Option<String>,
    offset: Option<i64>,
    attributes: Option<Vec<String>>,
    legacy_attributes: Vec<String>,
}

fn parse_opts(st: &St, query: Option<&str>, headers: &HeaderMap, body: &Bytes) -> Result<Opts, Response> {
    let mut o = Opts::default();
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !st.b().legacy_only && !body.is_empty() && is_json {
        let v: Value = serde_json::from_slice(body).map_err(|_| bad_value("badValueJSON", "body"))?;
        if !v.is_object() {
            return Err(bad_value("badValueJSON", "body"));
        }
        if let Some(l) = v.get("limit") {
            o.limit = Some(l.as_u64().ok_or_else(|| bad_value("badValueInteger", "limit"))?);
        }
        if let Some(t) = v.get("token").filter(|t| !t.is_null()) {
            o.token = Some(
                t.as_str()
                    .ok_or_else(|| bad_value("badValueToken", "token"))?
                    .to_string(),
            );
        }
        if let Some(i) = v.get("index").filter(|t| !t.is_null()) {
            o.index = Some(
                i.as_str()
                    .ok_or_else(|| bad_value("badValueBinary", "index"))?
                    .to_string(),
            );
        }
        if let Some(off) = v.get("offset") {
            o.offset = Some(off.as_i64().ok_or_else(|| bad_value("badValueInteger", "offset"))?);
        }
        if let Some(a) = v.get("attributes") {
            let list = a
                .as_array()
                .ok_or_else(|| bad_value("badValueListOfBinaries", "attributes"))?;
            let mut names = Vec::new();
            for x in list {
                names.push(
                    x.as_str()
                        .ok_or_else(|| bad_value("badValueListOfBinaries", "attributes"))?
                        .to_string(),
                );
            }
            o.attributes = Some(names);
        }
    }
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "limit" => o.limit = Some(v.parse().map_err(|_| bad_value("badValueInteger", "limit"))?),
            "token" => o.token = Some(v.to_string()),
            "index" => o.index = Some(v.to_string()),
            "offset" => o.offset = Some(v.parse().map_err(|_| bad_value("badValueInteger", "offset"))?),
            "attribute" => o.legacy_attributes.push(v.to_string()),
            _ => {}
        }
    }
    if let Some(l) = o.limit
        && !(1..=MAX_LIMIT).contains(&l)
    {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "badValueNotInRange",
            "Bad value: provided \"limit\" must be between 1 and 1000.",
            json!({"key": "limit", "low": 1, "high": MAX_LIMIT}),
        ));
    }
    if let Some(off) = o.offset
        && !(-500..=500).contains(&off)
    {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "badValueNotInRange",
            "Bad value: provided \"offset\" must be between -500 and 500.",
            json!({"key": "offset", "low": -500, "high": 500}),
        ));
    }
    Ok(o)
}

/// The attribute selection of a request, checked against the known names.
fn attr_sel(st: &St, o: &Opts, default: &[&str]) -> Result<AttrSel, Response> {
    let not_allowed = |legacy: bool| {
        let allowed: Vec<&str> = ATTRS
            .iter()
            .filter_map(|(c, l)| if legacy { *l } else { Some(*c) })
            .collect();
        err(
            StatusCode::BAD_REQUEST,
            "badValueListNotAllowed",
            "Bad value: provided \"attribute\" must be a list of allowed values.",
            json!({"key": "attribute", "allowed": allowed}),
        )
    };
    if !o.legacy_attributes.is_empty() {
        for a in &o.legacy_attributes {
            if !ATTRS.iter().any(|(_, l)| *l == Some(a.as_str())) {
                return Err(not_allowed(true));
            }
        }
        return Ok(AttrSel::Legacy(o.legacy_attributes.clone()));
    }
    if let Some(names) = &o.attributes {
        for a in names {
            if !a.starts_with("xattr.") && !ATTRS.iter().any(|(c, _)| c == a) {
                return Err(not_allowed(false));
            }
        }
        return Ok(AttrSel::Current(names.clone()));
    }
    if st.b().legacy_only {
        let legacy: Vec<String> = default
            .iter()
            .filter_map(|c| ATTRS.iter().find(|(n, _)| n == c).and_then(|(_, l)| *l))
            .map(str::to_string)
            .collect();
        return Ok(AttrSel::Legacy(legacy));
    }
    Ok(AttrSel::Current(default.iter().map(|s| s.to_string()).collect()))
}

fn io_posix(e: &std::io::Error) -> Response {
    match e.kind() {
        std::io::ErrorKind::NotFound => posix("enoent"),
        std::io::ErrorKind::PermissionDenied => posix("eacces"),
        std::io::ErrorKind::NotADirectory => posix("enotdir"),
        _ => posix("eio"),
    }
}

/// What an attribute or listing request is about: the node, the merged options and the
/// attribute selection (`default` when the request names none).
struct Ask {
    space: Space,
    rel: String,
    opts: Opts,
    sel: AttrSel,
}

fn ask(
    st: &St,
    id: &str,
    q: Option<&str>,
    headers: &HeaderMap,
    body: &Bytes,
    default: &[&str],
) -> Result<Ask, Response> {
    let (space, rel) = locate(st, id)?;
    let opts = parse_opts(st, q, headers, body)?;
    let sel = attr_sel(st, &opts, default)?;
    Ok(Ask { space, rel, opts, sel })
}

async fn attributes(
    State(st): State<St>,
    UrlPath(id): UrlPath<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let every: Vec<&str> = ATTRS.iter().map(|(c, _)| *c).collect();
    let a = match ask(&st, &id, q.as_deref(), &headers, &body, &every) {
        Ok(a) => a,
        Err(r) => return r,
    };
    match node(&a.space, &a.rel).and_then(|p| all_attrs(&a.space, &a.rel, &p)) {
        Ok(all) => axum::Json(select(&all, &a.sel)).into_response(),
        Err(e) => io_posix(&e),
    }
}

/// Page sizes of short-page mode: 1..limit/2 entries, every fourth page empty, never the
/// first (a client must see something before trusting `isLast` alone).
fn short_count(page_no: u64, limit: u64) -> u64 {
    if page_no % 4 == 3 {
        0
    } else {
        1 + (page_no * 131 + 17) % (limit / 2).max(1)
    }
}

/// A page token: the page number and the last name served, hex-encoded (opaque to clients).
fn encode_token(page_no: u64, after: &str) -> String {
    hex::encode(format!("{page_no}\n{after}"))
}

fn decode_token(t: &str) -> Option<(u64, String)> {
    let s = String::from_utf8(hex::decode(t).ok()?).ok()?;
    let (n, after) = s.split_once('\n')?;
    Some((n.parse().ok()?, after.to_string()))
}

async fn children(
    State(st): State<St>,
    UrlPath(id): UrlPath<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ask {
        space,
        rel,
        opts: o,
        sel,
    } = match ask(&st, &id, q.as_deref(), &headers, &body, &["fileId", "name"]) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let dir = match node(&space, &rel) {
        Ok(d) => d,
        Err(e) => return io_posix(&e),
    };
    let names = match std::fs::symlink_metadata(&dir) {
        Err(e) => return io_posix(&e),
        Ok(m) if !m.is_dir() => return posix("enotdir"),
        Ok(_) => match std::fs::read_dir(&dir) {
            Err(e) => return io_posix(&e),
            Ok(rd) => {
                let mut v: Vec<String> = rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
                v.sort();
                v
            }
        },
    };
    let (page_no, start) = match &o.token {
        Some(t) => {
            if o.index.is_some() || o.offset.is_some() {
                return bad_value("badValueToken", "token");
            }
            let Some((n, after)) = decode_token(t) else {
                return bad_value("badValueToken", "token");
            };
            (n, names.partition_point(|x| x.as_str() <= after.as_str()))
        }
        None => {
            let base = o
                .index
                .as_deref()
                .map(|i| names.partition_point(|x| x.as_str() < i))
                .unwrap_or(0) as i64;
            (0, (base + o.offset.unwrap_or(0)).clamp(0, names.len() as i64) as usize)
        }
    };
    let limit = o.limit.unwrap_or(MAX_LIMIT);
    let count = if st.b().short_pages {
        short_count(page_no, limit)
    } else {
        limit
    };
    let end = (start + count as usize).min(names.len());
    let mut out = Vec::with_capacity(end - start);
    for n in &names[start..end] {
        // An entry that vanished between read_dir and stat is left out, as on a live system.
        if let Ok(all) = all_attrs(&space, &join_rel(&rel, n), &dir.join(n)) {
            out.push(select(&all, &sel));
        }
    }
    let is_last = end >= names.len();
    let next = if is_last {
        Value::Null
    } else {
        let after = if end > 0 { names[end - 1].as_str() } else { "" };
        Value::String(encode_token(page_no + 1, after))
    };
    axum::Json(json!({ "children": out, "isLast": is_last, "nextPageToken": next })).into_response()
}

// ---- download -----------------------------------------------------------------------------

/// `follow_symlinks` (default true) of a content request.
fn follow_of(q: Option<&str>) -> bool {
    url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "follow_symlinks")
        .is_none_or(|(_, v)| v != "false")
}

async fn content(
    State(st): State<St>,
    UrlPath(id): UrlPath<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (space, rel) = match locate(&st, &id) {
        Ok(x) => x,
        Err(r) => return r,
    };
    serve_node(&st, space, rel, follow_of(q.as_deref()), &headers).await
}

async fn by_path(
    State(st): State<St>,
    UrlPath((id, _)): UrlPath<(String, String)>,
    uri: Uri,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let (space, base) = match locate(&st, &id) {
        Ok(x) => x,
        Err(r) => return r,
    };
    match node(&space, &base).and_then(std::fs::symlink_metadata) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return posix("enotdir"),
        Err(e) => return io_posix(&e),
    }
    let marker = format!("/data/{id}/path/");
    let segs = match raw_segments(&uri, &marker) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let rel = join_rel(&base, &segs.join("/"));
    serve_node(&st, space, rel, follow_of(q.as_deref()), &headers).await
}

/// Where a symlink at `rel` points: relative targets resolve in the same space,
/// `<__onedata_space_id:ID>/p` in space ID; anything leaving the space does not exist.
fn resolve_link(st: &St, space: &Space, rel: &str, target: &str) -> Option<(Space, String)> {
    let (space, base, t) = if let Some(rest) = target.strip_prefix("<__onedata_space_id:") {
        let (id, path) = rest.split_once('>')?;
        let s = spaces_of(&st.root).into_iter().find(|s| s.id == id)?;
        (s, String::new(), path.trim_start_matches('/').to_string())
    } else if target.starts_with('/') {
        return None;
    } else {
        let parent = rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("").to_string();
        (space.clone(), parent, target.to_string())
    };
    let mut parts: Vec<&str> = base.split('/').filter(|s| !s.is_empty()).collect();
    for seg in t.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    Some((space, parts.join("/")))
}

async fn serve_node(st: &St, mut space: Space, mut rel: String, follow: bool, headers: &HeaderMap) -> Response {
    let mut hops = 0;
    loop {
        let (path, meta) = match node(&space, &rel).and_then(|p| Ok((p.clone(), std::fs::symlink_metadata(p)?))) {
            Ok(x) => x,
            Err(e) => return io_posix(&e),
        };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)
                .map(|t| t.to_string_lossy().to_string())
                .unwrap_or_default();
            if !follow {
                return (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/octet-stream")],
                    target,
                )
                    .into_response();
            }
            hops += 1;
            if hops > MAX_SYMLINK_HOPS {
                return posix("eloop");
            }
            match resolve_link(st, &space, &rel, &target) {
                Some((s, r)) => {
                    space = s;
                    rel = r;
                    continue;
                }
                None => return posix("enoent"),
            }
        }
        if meta.is_dir() {
            return start_download(st, space, rel, follow, headers);
        }
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o400 == 0 {
            return posix("eacces");
        }
        let name = rel.rsplit('/').next().unwrap_or("").to_string();
        return file_response(&path, &name, meta.len(), headers).await;
    }
}

/// `302 Location: http://{host}/download/{code}` for a directory.
fn start_download(st: &St, space: Space, rel: String, follow: bool, headers: &HeaderMap) -> Response {
    let code = format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
    st.downloads
        .lock()
        .unwrap()
        .insert(code.clone(), Download { space, rel, follow });
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("http://{host}/download/{code}"))],
    )
        .into_response()
}

/// Content-Type from the file-name extension, as the provider guesses it.
fn mime_of(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "txt" | "md" | "log" => "text/plain",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "xml" => "application/xml",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "tar" => "application/x-tar",
        "gz" => "application/gzip",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

fn disposition(name: &str) -> HeaderValue {
    let n = if name.trim().is_empty() { "_" } else { name };
    let escaped = n.replace('\\', "\\\\").replace('"', "\\\"");
    HeaderValue::from_bytes(format!("attachment; filename=\"{escaped}\"").as_bytes())
        .unwrap_or_else(|_| HeaderValue::from_static("attachment; filename=\"_\""))
}

/// A parsed `Range` header (§2.7).
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// No `Range` header: the whole file, 200.
    Whole,
    /// Inclusive spans, each clamped to the file.
    Spans(Vec<(u64, u64)>),
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// `bytes=<spec>[,<spec>...]`, no spaces; `a-b` (end clamped), `a-`, `-n` (start floored at
/// 0); wrong unit or syntax, non-integers, start > end or start ≥ size make the whole header
/// unsatisfiable — so any range of a 0-byte file is.
pub fn parse_range(h: Option<&str>, size: u64) -> RangeAsk {
    let Some(h) = h else {
        return RangeAsk::Whole;
    };
    let Some(specs) = h.strip_prefix("bytes=") else {
        return RangeAsk::Unsatisfiable;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let mut spans = Vec::new();
    for spec in specs.split(',') {
        let Some((a, b)) = spec.split_once('-') else {
            return RangeAsk::Unsatisfiable;
        };
        let span = if a.is_empty() {
            num(b).map(|n| (size.saturating_sub(n), size.wrapping_sub(1)))
        } else if b.is_empty() {
            num(a).map(|a| (a, size.wrapping_sub(1)))
        } else {
            match (num(a), num(b)) {
                (Some(a), Some(b)) if a <= b => Some((a, b.min(size.saturating_sub(1)))),
                _ => None,
            }
        };
        match span {
            Some((a, e)) if size > 0 && a < size && a <= e => spans.push((a, e)),
            _ => return RangeAsk::Unsatisfiable,
        }
    }
    RangeAsk::Spans(spans)
}

async fn file_response(path: &Path, name: &str, size: u64, headers: &HeaderMap) -> Response {
    let ask = parse_range(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), size);
    let ctype = mime_of(name);
    let base = || {
        Response::builder()
            .header(header::CONTENT_TYPE, ctype)
            .header(header::CONTENT_DISPOSITION, disposition(name))
    };
    match ask {
        RangeAsk::Unsatisfiable => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{size}"))],
        )
            .into_response(),
        RangeAsk::Whole => match super::file_body(path, 0, size) {
            Ok(body) => base()
                .status(StatusCode::OK)
                .header(header::CONTENT_LENGTH, size)
                .body(body)
                .unwrap(),
            Err(e) => io_posix(&e),
        },
        RangeAsk::Spans(spans) if spans.len() == 1 => {
            let (a, e) = spans[0];
            match super::file_body(path, a, e - a + 1) {
                Ok(body) => base()
                    .status(StatusCode::PARTIAL_CONTENT)
                    .header(header::CONTENT_RANGE, format!("bytes {a}-{e}/{size}"))
                    .header(header::CONTENT_LENGTH, e - a + 1)
                    .body(body)
                    .unwrap(),
                Err(e) => io_posix(&e),
            }
        }
        RangeAsk::Spans(spans) => {
            let boundary = format!("{:016x}", rand::random::<u64>());
            let mut out = Vec::new();
            for (a, e) in spans {
                let mut part = vec![0u8; (e - a + 1) as usize];
                let read = std::fs::File::open(path).and_then(|mut f| {
                    use std::io::{Seek, SeekFrom};
                    f.seek(SeekFrom::Start(a))?;
                    f.read_exact(&mut part)
                });
                if let Err(err) = read {
                    return io_posix(&err);
                }
                out.extend_from_slice(
                    format!("--{boundary}\r\ncontent-type: {ctype}\r\ncontent-range: bytes {a}-{e}/{size}\r\n\r\n")
                        .as_bytes(),
                );
                out.extend_from_slice(&part);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
            Response::builder()
                .status(StatusCode::PARTIAL_CONTENT)
                .header(
                    header::CONTENT_TYPE,
                    format!("multipart/byteranges; boundary={boundary}"),
                )
                .header(header::CONTENT_LENGTH, out.len())
                .body(Body::from(out))
                .unwrap()
        }
    }
}

/// `GET /download/{code}`: the TAR of a directory; only `Range: bytes=N-` resumes it.
async fn download(State(st): State<St>, UrlPath(code): UrlPath<String>, headers: HeaderMap) -> Response {
    let Some(d) = st.downloads.lock().unwrap().get(&code).cloned() else {
        return err(
            StatusCode::NOT_FOUND,
            "notFound",
            "The resource could not be found.",
            Value::Null,
        );
    };
    let name = if d.rel.is_empty() {
        d.space.name.clone()
    } else {
        d.rel.rsplit('/').next().unwrap_or("").to_string()
    };
    let st2 = st.clone();
    let d2 = d.clone();
    let n2 = name.clone();
    let tar = match tokio::task::spawn_blocking(move || build_tar(&st2, &d2, &n2)).await {
        Ok(Ok(t)) => t,
        _ => return posix("eio"),
    };
    let len = tar.len() as u64;
    // Only a resume (`bytes=N-`, N inside the archive) is served; anything else is 416.
    let start: Result<Option<u64>, ()> = match headers.get(header::RANGE) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n < len)
            .map(Some)
            .ok_or(()),
    };
    let resp = Response::builder()
        .header(header::CONTENT_TYPE, "application/x-tar")
        .header(header::CONTENT_DISPOSITION, disposition(&format!("{name}.tar")));
    match start {
        Ok(None) => resp
            .status(StatusCode::OK)
            .header(header::CONTENT_LENGTH, len)
            .body(Body::from(tar))
            .unwrap(),
        Err(()) => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, "bytes */*")],
        )
            .into_response(),
        Ok(Some(n)) => resp
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_RANGE, format!("bytes {n}-{}/{len}", len - 1))
            .header(header::CONTENT_LENGTH, len - n)
            .body(Body::from(tar[n as usize..].to_vec()))
            .unwrap(),
    }
}

/// The TAR of a directory subtree: deterministic (sorted, metadata from the files) so a
/// resumed download continues the same bytes; unreadable files are omitted.
fn build_tar(st: &St, d: &Download, name: &str) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    add_tree(st, &mut b, &d.space, &d.rel, name, d.follow)?;
    b.into_inner()
}

fn header_for(meta: &std::fs::Metadata, kind: tar::EntryType, size: u64) -> tar::Header {
    use std::os::unix::fs::MetadataExt;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(meta.mode() & 0o7777);
    h.set_mtime(meta.mtime().max(0) as u64);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn add_tree(
    st: &St,
    b: &mut tar::Builder<Vec<u8>>,
    space: &Space,
    rel: &str,
    in_tar: &str,
    follow: bool,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = node(space, rel)?;
    let meta = std::fs::symlink_metadata(&path)?;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(&path)?.to_string_lossy().to_string();
        if follow {
            // A link to a readable file becomes that file; anything else is omitted.
            // Chains of links are not followed here (a second hop could leave the root).
            if let Some((s, r)) = resolve_link(st, space, rel, &target)
                && let Ok(p) = node(&s, &r)
                && let Ok(m) = std::fs::symlink_metadata(&p)
                && m.is_file()
                && m.permissions().mode() & 0o400 != 0
                && let Ok(f) = std::fs::File::open(&p)
            {
                let mut h = header_for(&m, tar::EntryType::Regular, m.len());
                b.append_data(&mut h, in_tar, f)?;
            }
            return Ok(());
        }
        let mut h = header_for(&meta, tar::EntryType::Symlink, 0);
        return b.append_link(&mut h, in_tar, target);
    }
    if meta.is_dir() {
        let mut h = header_for(&meta, tar::EntryType::Directory, 0);
        b.append_data(&mut h, format!("{in_tar}/"), std::io::empty())?;
        let mut names: Vec<String> = std::fs::read_dir(&path)?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for n in names {
            add_tree(st, b, space, &join_rel(rel, &n), &format!("{in_tar}/{n}"), follow)?;
        }
        return Ok(());
    }
    if meta.permissions().mode() & 0o400 == 0 {
        return Ok(());
    }
    // A file that cannot be opened is omitted, as inaccessible children are.
    if let Ok(f) = std::fs::File::open(&path) {
        let mut h = header_for(&meta, tar::EntryType::Regular, meta.len());
        b.append_data(&mut h, in_tar, f)?;
    }
    Ok(())
}

// ---- Onezone stub -------------------------------------------------------------------------

async fn infer_scope(State(st): State<St>, body: Bytes) -> Response {
    let token = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("token").and_then(Value::as_str).map(str::to_string));
    let b = st.b();
    match token {
        Some(t) if t == *st.token && b.reject_token.is_none() => {}
        _ => return bad_value("badValueToken", "token"),
    }
    let pid = provider_id();
    let version = if b.legacy_only { LEGACY_RELEASE } else { RELEASE };
    let mut spaces = serde_json::Map::new();
    for s in spaces_of(&st.root) {
        spaces.insert(
            s.id.clone(),
            json!({"name": s.name, "supports": { pid.clone(): {"readonly": false} }}),
        );
    }
    axum::Json(json!({
        "validUntil": null,
        "dataAccessScope": {
            "readonly": false,
            "spaces": spaces,
            "providers": { pid: {"name": "fetchfs-emulator", "domain": "127.0.0.1", "version": version, "online": true} }
        }
    }))
    .into_response()
}

// ---- demo ---------------------------------------------------------------------------------

/// Writes two small spaces under `dir`, serves them on a free port and returns the source
/// config that mounts them (`fetchfs demo`).
pub async fn demo(dir: &Path) -> std::io::Result<(super::Server, crate::config::SourceConfig)> {
    let demo = dir.join("demo");
    std::fs::create_dir_all(demo.join("docs"))?;
    std::fs::write(demo.join("hello.txt"), b"Hello from the Onedata emulator!\n")?;
    std::fs::write(
        demo.join("docs/readme.md"),
        b"# demo space\n\nFiles here are served by `fetchfs emulate onedata`.\n",
    )?;
    let numbers: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(demo.join("numbers.bin"), numbers)?;
    let link = demo.join("hello-link");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("hello.txt", &link)?;
    }
    let science = dir.join("science");
    std::fs::create_dir_all(&science)?;
    std::fs::write(science.join("results.csv"), b"run,value\n1,0.5\n2,0.75\n")?;
    let opts = OnedataEmuOptions::default();
    let token = opts.token.clone();
    let emu = router(dir, opts);
    let server = super::serve(emu.router, 0, emu.harness).await?;
    let cfg = crate::provider::onedata::OnedataConfig {
        name: "onedata".into(),
        endpoint: server.base_url(),
        token: Some(token),
        token_file: None,
        space: None,
        path: None,
    };
    Ok((server, crate::config::SourceConfig::Onedata(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_rules_of_the_spec() {
        use RangeAsk::*;
        let n = 100;
        assert_eq!(parse_range(None, n), Whole);
        assert_eq!(parse_range(Some("bytes=5-8"), n), Spans(vec![(5, 8)]));
        assert_eq!(parse_range(Some("bytes=90-200"), n), Spans(vec![(90, 99)]));
        assert_eq!(parse_range(Some("bytes=0-"), n), Spans(vec![(0, 99)]));
        assert_eq!(parse_range(Some("bytes=-10"), n), Spans(vec![(90, 99)]));
        assert_eq!(parse_range(Some("bytes=-500"), n), Spans(vec![(0, 99)]));
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), n), Spans(vec![(0, 1), (5, 6)]));
        for bad in [
            "unicorns",
            "bytes:5-10",
            "bytes=5=10",
            "bytes=10-5",
            "bytes=-5-",
            "bytes=a-b",
            "bytes=1.5-3",
            "bytes=100-",
            "bytes=100-200",
            "bytes= 0-5",
            "bytes=0-5, 7-8",
            "bytes=",
            "bytes=-0",
            "bytes=0-1,200-300",
        ] {
            assert_eq!(parse_range(Some(bad), n), Unsatisfiable, "{bad}");
        }
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-1"), 0), Unsatisfiable);
        assert_eq!(parse_range(None, 0), Whole);
    }

    #[test]
    fn file_ids_are_stable_and_decodable() {
        let sid = space_id("demo");
        assert_eq!(sid, space_id("demo"));
        assert_eq!(sid.len(), 32);
        assert_ne!(sid, space_id("demo@2"));
        let id = file_id(&sid, "a/b c.txt");
        assert_eq!(id, file_id(&sid, "a/b c.txt"));
        assert!(id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()));
    }

    #[test]
    fn page_tokens_round_trip_and_short_pages_never_start_empty() {
        assert_eq!(decode_token(&encode_token(3, "x y")), Some((3, "x y".into())));
        assert_eq!(decode_token("zz"), None);
        assert!(short_count(0, 1000) > 0);
        assert_eq!(short_count(3, 1000), 0);
        assert!((0..50).all(|p| short_count(p, 1000) < 1000));
    }

    #[test]
    fn symlink_targets_stay_inside_the_space() {
        let st = St {
            root: Arc::new(PathBuf::from("/nonexistent")),
            token: Arc::new(String::new()),
            behaviour: Arc::default(),
            downloads: Arc::default(),
        };
        let s = Space {
            id: "s".into(),
            name: "s".into(),
            dir: PathBuf::from("/x"),
        };
        assert_eq!(resolve_link(&st, &s, "a/l", "b").map(|x| x.1), Some("a/b".into()));
        assert_eq!(resolve_link(&st, &s, "a/l", "../c").map(|x| x.1), Some("c".into()));
        assert!(resolve_link(&st, &s, "l", "../../etc/passwd").is_none());
        assert!(resolve_link(&st, &s, "l", "/etc/passwd").is_none());
    }
}

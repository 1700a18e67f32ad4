//! Emulator of Huawei Cloud IAM tokens and HSS export files (providers.md §5.6).
//!
//! Tree: `--root DIR` holds `DIR/<task_id>/<file_name>`: each directory is an export task, its
//! first regular file (dot files ignored) is the task's file. Task state:
//! * no marker: `success` (after `--running-for` seconds counted from the first poll, so the
//!   `running → success` transition can be watched);
//! * `DIR/<task_id>/.running`: `running` for as long as the marker exists;
//! * `DIR/<task_id>/.failed`: `failure`; the marker's text is returned as `failed_reason`.
//!
//! A file id is derived from the task id, the file name, its length and mtime, so a rewritten
//! file gets a new id as a new export would. Tasks made with `POST /v5/{project_id}/vul/export`
//! live in memory (the tree is never written to) with a generated CSV report.
//!
//! Endpoints:
//! * `POST /v3/auth/tokens`: password identity with project scope (by id or by name) → 201,
//!   `X-Subject-Token` (a few KB, as real tokens), token JSON with `issued_at`, `expires_at`
//!   and `project.id`; lifetime from [`HuaweiEmuOptions::token_ttl`], changeable at run time.
//! * every `/v5/...` route checks `X-Auth-Token` → 401 (configurable) `APIG.0301` (or `APIGW.0301`) when
//!   missing, unknown, expired or revoked ([`HuaweiEmulator::expire_tokens`]); a wrong
//!   `project_id` → 403.
//! * `GET /v5/{project_id}/export-task/{task_id}`, `POST /v5/{project_id}/vul/export`,
//!   `GET /v5/{project_id}/download/{file_id}` (whole body, Range ignored, `Content-Length`,
//!   `Content-Disposition: attachment; filename="<name>"`; 404 JSON for an unknown id).
//!   `enterprise_project_id` is accepted and ignored (the last download's value and `region`
//!   header are kept for tests: [`HuaweiEmulator::last_download_params`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use md5::{Digest, Md5};
use serde_json::{Value, json};

use super::Harness;

/// Project id of the emulated account unless told otherwise.
pub const DEFAULT_PROJECT_ID: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
/// Region (= project name) of the emulated account.
pub const DEFAULT_REGION: &str = "cn-north-4";

/// Options of the emulator.
#[derive(Debug, Clone)]
pub struct HuaweiEmuOptions {
    pub domain: String,
    pub user: String,
    pub password: String,
    pub project_id: String,
    /// Project name accepted in a name-scoped token request.
    pub project_name: String,
    /// Lifetime of new tokens (real IAM: 24 h).
    pub token_ttl: Duration,
    /// How long a task without marker stays `running` after its first poll.
    pub running_for: Duration,
    /// Spell the expired-token code `APIGW.0301` (some regions) instead of `APIG.0301`.
    pub apigw_code: bool,
    /// Send downloads chunked, without `Content-Length`.
    pub no_content_length: bool,
    /// HTTP status of the `APIG.0301` answer (401 documented for the gateway, unconfirmed for
    /// HSS: providers.md §5.2).
    pub token_error_status: u16,
}

impl Default for HuaweiEmuOptions {
    fn default() -> Self {
        HuaweiEmuOptions {
            domain: "demo-account".into(),
            user: "demo-user".into(),
            password: "demo-password".into(),
            project_id: DEFAULT_PROJECT_ID.into(),
            project_name: DEFAULT_REGION.into(),
            token_ttl: Duration::from_secs(86400),
            running_for: Duration::ZERO,
            apigw_code: false,
            no_content_length: false,
            token_error_status: 401,
        }
    }
}

/// `fetchfs emulate huawei` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct EmuArgs {
    /// Account (domain) name accepted by IAM.
    #[arg(long, default_value = "demo-account")]
    pub domain: String,
    /// IAM user name accepted.
    #[arg(long, default_value = "demo-user")]
    pub user: String,
    /// IAM password accepted.
    #[arg(long, default_value = "demo-password")]
    pub password: String,
    /// Project id of the account.
    #[arg(long, default_value = DEFAULT_PROJECT_ID)]
    pub project_id: String,
    /// Project (region) name accepted in a name-scoped token request.
    #[arg(long, default_value = DEFAULT_REGION)]
    pub project_name: String,
    /// Token lifetime (e.g. 24h, 30s) to exercise renewal.
    #[arg(long, default_value = "24h", value_parser = crate::config::parse_duration)]
    pub token_ttl: Duration,
    /// How long a task stays running after its first poll (e.g. 10s).
    #[arg(long, default_value = "0s", value_parser = crate::config::parse_duration)]
    pub running_for: Duration,
    /// Use the APIGW.0301 spelling for expired tokens.
    #[arg(long)]
    pub apigw_code: bool,
    /// Send downloads chunked, without Content-Length.
    #[arg(long)]
    pub no_content_length: bool,
    /// HTTP status sent with APIG.0301 (expired or invalid token).
    #[arg(long, default_value_t = 401)]
    pub token_error_status: u16,
}

impl From<&EmuArgs> for HuaweiEmuOptions {
    fn from(a: &EmuArgs) -> Self {
        HuaweiEmuOptions {
            domain: a.domain.clone(),
            user: a.user.clone(),
            password: a.password.clone(),
            project_id: a.project_id.clone(),
            project_name: a.project_name.clone(),
            token_ttl: a.token_ttl,
            running_for: a.running_for,
            apigw_code: a.apigw_code,
            no_content_length: a.no_content_length,
            token_error_status: a.token_error_status,
        }
    }
}

/// An export task created through the API (kept in memory).
#[derive(Clone)]
struct MemTask {
    file_name: String,
    bytes: Bytes,
}

#[derive(Default)]
struct Live {
    /// token → expiry.
    tokens: HashMap<String, Instant>,
    /// task id → first poll.
    first_poll: HashMap<String, Instant>,
    mem_tasks: HashMap<String, MemTask>,
    /// `region` header and `enterprise_project_id` of the last download.
    last_download: (Option<String>, Option<String>),
}

#[derive(Clone)]
struct AppState {
    root: Arc<PathBuf>,
    opts: Arc<HuaweiEmuOptions>,
    ttl: Arc<Mutex<Duration>>,
    live: Arc<Mutex<Live>>,
    tokens_issued: Arc<AtomicU64>,
    tokens_rejected: Arc<AtomicU64>,
}

/// The emulator's router, its harness and run-time handles.
pub struct HuaweiEmulator {
    pub router: Router,
    pub harness: Harness,
    state: AppState,
}

impl HuaweiEmulator {
    /// Lifetime of tokens issued from now on.
    pub fn set_token_ttl(&self, ttl: Duration) {
        *self.state.ttl.lock().unwrap() = ttl;
    }
    /// Makes every token issued so far expire now (the next HSS call gets 401 APIG.0301).
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        for exp in self.state.live.lock().unwrap().tokens.values_mut() {
            *exp = now;
        }
    }
    /// Tokens issued by `POST /v3/auth/tokens`.
    pub fn tokens_issued(&self) -> u64 {
        self.state.tokens_issued.load(Ordering::SeqCst)
    }
    /// The `region` header and `enterprise_project_id` query of the last download request.
    pub fn last_download_params(&self) -> (Option<String>, Option<String>) {
        self.state.live.lock().unwrap().last_download.clone()
    }
    /// HSS requests refused with 401 for their token.
    pub fn tokens_rejected(&self) -> u64 {
        self.state.tokens_rejected.load(Ordering::SeqCst)
    }
}

/// Builds the router serving `root`.
pub fn router(root: &Path, opts: HuaweiEmuOptions) -> HuaweiEmulator {
    let state = AppState {
        root: Arc::new(root.to_path_buf()),
        ttl: Arc::new(Mutex::new(opts.token_ttl)),
        opts: Arc::new(opts),
        live: Arc::new(Mutex::new(Live::default())),
        tokens_issued: Arc::default(),
        tokens_rejected: Arc::default(),
    };
    let harness = Harness::default();
    let r = Router::new()
        .route("/v3/auth/tokens", axum::routing::post(auth_tokens))
        .route(
            "/v5/{project_id}/export-task/{task_id}",
            axum::routing::get(export_task),
        )
        .route("/v5/{project_id}/vul/export", axum::routing::post(create_export))
        .route("/v5/{project_id}/download/{file_id}", axum::routing::get(download))
        .with_state(state.clone());
    let router = super::fault_layer(r, harness.clone(), |status| {
        (
            json!({"error_code": format!("HSS.{status}"), "error_msg": format!("injected fault (HTTP {status})"), "request_id": "emulated"}).to_string(),
            "application/json",
        )
    });
    HuaweiEmulator { router, harness, state }
}

fn hw_error(status: StatusCode, code: &str, msg: &str) -> Response {
    let mut r = axum::Json(json!({ "error_code": code, "error_msg": msg, "request_id": request_id() })).into_response();
    *r.status_mut() = status;
    r
}

fn request_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

async fn auth_tokens(State(s): State<AppState>, body: Bytes) -> Response {
    let iam_error = |status: StatusCode, msg: &str| {
        let mut r =
            axum::Json(json!({"error": {"code": status.as_u16(), "message": msg, "title": status.canonical_reason()}}))
                .into_response();
        *r.status_mut() = status;
        r
    };
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return iam_error(StatusCode::BAD_REQUEST, "The request body is not valid JSON.");
    };
    let str_at = |p: &str| v.pointer(p).and_then(Value::as_str).unwrap_or_default().to_string();
    let methods = v.pointer("/auth/identity/methods").and_then(Value::as_array);
    if !methods.is_some_and(|m| m.iter().any(|x| x == "password")) {
        return iam_error(
            StatusCode::BAD_REQUEST,
            "Only the password identity method is emulated.",
        );
    }
    let o = &s.opts;
    let user_ok = str_at("/auth/identity/password/user/name") == o.user
        && str_at("/auth/identity/password/user/password") == o.password
        && str_at("/auth/identity/password/user/domain/name") == o.domain;
    if !user_ok {
        return iam_error(StatusCode::UNAUTHORIZED, "The username or password is wrong.");
    }
    let (pid, pname) = (str_at("/auth/scope/project/id"), str_at("/auth/scope/project/name"));
    if !(pid == o.project_id || (pid.is_empty() && pname == o.project_name)) {
        return iam_error(StatusCode::BAD_REQUEST, "The project in the scope does not exist.");
    }
    let ttl = *s.ttl.lock().unwrap();
    // Real tokens are several KB: a client must allow long header values.
    let token = format!(
        "MIIT{}",
        (0..96)
            .map(|_| hex::encode(rand::random::<[u8; 16]>()))
            .collect::<String>()
    );
    s.live
        .lock()
        .unwrap()
        .tokens
        .insert(token.clone(), Instant::now() + ttl);
    s.tokens_issued.fetch_add(1, Ordering::SeqCst);
    let now = SystemTime::now();
    let body = json!({"token": {
        "methods": ["password"],
        "issued_at": rfc3339(now),
        "expires_at": rfc3339(now + ttl),
        "project": {"id": o.project_id, "name": o.project_name, "domain": {"id": "d0", "name": o.domain}},
        "user": {"id": "u0", "name": o.user, "domain": {"id": "d0", "name": o.domain}, "password_expires_at": ""},
        "roles": [{"id": "r0", "name": "hss_adm"}],
        "catalog": []
    }});
    let mut r = axum::Json(body).into_response();
    *r.status_mut() = StatusCode::CREATED;
    r.headers_mut().insert("x-subject-token", token.parse().unwrap());
    r
}

/// `None` when the request may go on; the 401/403 answer otherwise.
fn check(s: &AppState, headers: &HeaderMap, project_id: &str) -> Option<Response> {
    let code = if s.opts.apigw_code { "APIGW.0301" } else { "APIG.0301" };
    let token = headers.get("x-auth-token").and_then(|v| v.to_str().ok());
    let exp = token.and_then(|t| s.live.lock().unwrap().tokens.get(t).copied());
    let msg = match (token, exp) {
        (None, _) => Some("Incorrect IAM authentication information: x-auth-token not found".to_string()),
        (Some(_), None) => Some("Incorrect IAM authentication information: decrypt token fail".to_string()),
        (Some(_), Some(e)) if e <= Instant::now() => Some(format!(
            "Incorrect IAM authentication information: token expires, expires_at: {}",
            rfc3339(SystemTime::now())
        )),
        _ => None,
    };
    if let Some(m) = msg {
        s.tokens_rejected.fetch_add(1, Ordering::SeqCst);
        let status = StatusCode::from_u16(s.opts.token_error_status).unwrap_or(StatusCode::UNAUTHORIZED);
        return Some(hw_error(status, code, &m));
    }
    if project_id != s.opts.project_id {
        return Some(hw_error(
            StatusCode::FORBIDDEN,
            "HSS.0004",
            "The token is not scoped to this project.",
        ));
    }
    None
}

/// One task of the tree or of memory.
struct Task {
    file_name: Option<String>,
    file_id: Option<String>,
    state: &'static str,
    reason: Option<String>,
    source: TaskFile,
}

enum TaskFile {
    Disk(PathBuf),
    Mem(Bytes),
    None,
}

fn file_id_of(task_id: &str, name: &str, len: u64, mtime_ns: u128) -> String {
    let d = Md5::digest(format!("{task_id}/{name}/{len}/{mtime_ns}").as_bytes());
    hex::encode(&d[..12])
}

fn load_task(s: &AppState, task_id: &str) -> Option<Task> {
    if let Some(m) = s.live.lock().unwrap().mem_tasks.get(task_id).cloned() {
        return Some(Task {
            file_id: Some(file_id_of(task_id, &m.file_name, m.bytes.len() as u64, 0)),
            file_name: Some(m.file_name),
            state: "success",
            reason: None,
            source: TaskFile::Mem(m.bytes),
        });
    }
    if task_id.is_empty() || task_id.starts_with('.') || task_id.contains('/') {
        return None;
    }
    let dir = s.root.join(task_id);
    if !dir.is_dir() {
        return None;
    }
    if let Ok(reason) = std::fs::read_to_string(dir.join(".failed")) {
        let reason = reason.trim();
        return Some(Task {
            file_name: None,
            file_id: None,
            state: "failure",
            reason: Some(if reason.is_empty() { "export failed" } else { reason }.to_string()),
            source: TaskFile::None,
        });
    }
    let running = Task {
        file_name: None,
        file_id: None,
        state: "running",
        reason: None,
        source: TaskFile::None,
    };
    if dir.join(".running").exists() {
        return Some(running);
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter(|e| e.path().is_file() && !e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    files.sort_by_key(|e| e.file_name());
    let Some(f) = files.first() else {
        // Nothing exported (yet).
        return Some(running);
    };
    let meta = f.metadata().ok()?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = f.file_name().to_string_lossy().into_owned();
    Some(Task {
        file_id: Some(file_id_of(task_id, &name, meta.len(), mtime)),
        file_name: Some(name),
        state: "success",
        reason: None,
        source: TaskFile::Disk(f.path()),
    })
}

/// Every task id known: the directories of the tree plus those created in memory.
fn all_task_ids(s: &AppState) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(&*s.root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.extend(s.live.lock().unwrap().mem_tasks.keys().cloned());
    ids
}

async fn export_task(
    State(s): State<AppState>,
    UrlPath((project_id, task_id)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = check(&s, &headers, &project_id) {
        return r;
    }
    let Some(mut t) = load_task(&s, &task_id) else {
        return hw_error(StatusCode::NOT_FOUND, "HSS.1053", "The export task does not exist.");
    };
    if t.state == "success" && !s.opts.running_for.is_zero() {
        let first = *s
            .live
            .lock()
            .unwrap()
            .first_poll
            .entry(task_id.clone())
            .or_insert_with(Instant::now);
        if first.elapsed() < s.opts.running_for {
            t = Task {
                file_name: None,
                file_id: None,
                state: "running",
                reason: None,
                source: TaskFile::None,
            };
        }
    }
    let mut body = json!({
        "task_id": task_id,
        "task_name": format!("export-{task_id}"),
        "task_status": t.state,
    });
    if let (Some(id), Some(name)) = (&t.file_id, &t.file_name) {
        body["file_id"] = json!(id);
        body["file_name"] = json!(name);
    }
    if let Some(r) = t.reason {
        body["failed_reason"] = json!(r);
    }
    axum::Json(body).into_response()
}

async fn create_export(
    State(s): State<AppState>,
    UrlPath(project_id): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = check(&s, &headers, &project_id) {
        return r;
    }
    let columns: Vec<String> = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("export_headers").cloned())
        .and_then(|h| serde_json::from_value::<Vec<Vec<String>>>(h).ok())
        .map(|h| h.into_iter().filter_map(|p| p.into_iter().next()).collect())
        .unwrap_or_else(|| vec!["vul_name".into(), "severity_level".into(), "host_num".into()]);
    let task_id = hex::encode(rand::random::<[u8; 8]>());
    let mut csv = columns.join(",");
    csv.push('\n');
    for i in 1..=20 {
        let row: Vec<String> = columns.iter().map(|c| format!("{c}-{i}")).collect();
        csv.push_str(&row.join(","));
        csv.push('\n');
    }
    s.live.lock().unwrap().mem_tasks.insert(
        task_id.clone(),
        MemTask {
            file_name: format!("hss-vul-vul-en-{task_id}.csv"),
            bytes: Bytes::from(csv),
        },
    );
    axum::Json(json!({ "task_id": task_id })).into_response()
}

async fn download(
    State(s): State<AppState>,
    UrlPath((project_id, file_id)): UrlPath<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = check(&s, &headers, &project_id) {
        return r;
    }
    let region = headers.get("region").and_then(|v| v.to_str().ok()).map(str::to_string);
    s.live.lock().unwrap().last_download = (region, q.get("enterprise_project_id").cloned());
    let found = all_task_ids(&s)
        .into_iter()
        .filter_map(|id| load_task(&s, &id))
        .find(|t| t.file_id.as_deref() == Some(file_id.as_str()));
    let Some(t) = found else {
        return hw_error(
            StatusCode::NOT_FOUND,
            "HSS.1054",
            "The export file does not exist or has expired.",
        );
    };
    let bytes = match t.source {
        TaskFile::Disk(p) => match tokio::fs::read(&p).await {
            Ok(b) => Bytes::from(b),
            Err(_) => return hw_error(StatusCode::NOT_FOUND, "HSS.1054", "The export file does not exist."),
        },
        TaskFile::Mem(b) => b,
        TaskFile::None => {
            return hw_error(StatusCode::NOT_FOUND, "HSS.1054", "The export file does not exist.");
        }
    };
    let name = t.file_name.unwrap_or_default();
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\""));
    let body = if s.opts.no_content_length {
        Body::from_stream(futures_util::stream::once(
            async move { Ok::<_, std::io::Error>(bytes) },
        ))
    } else {
        resp = resp.header(header::CONTENT_LENGTH, bytes.len());
        Body::from(bytes)
    };
    resp.body(body).unwrap()
}

/// Writes sample export tasks under `dir`, serves them, and returns the config that mounts them.
pub async fn demo(dir: &Path) -> std::io::Result<(super::Server, crate::config::SourceConfig)> {
    let done = dir.join("task-vul-0001");
    std::fs::create_dir_all(&done)?;
    let mut csv = String::from("vul_name,severity_level,host_num\n");
    for i in 1..=200 {
        csv.push_str(&format!(
            "CVE-2026-{i:05},{},{}\n",
            ["low", "medium", "high"][i % 3],
            i % 7 + 1
        ));
    }
    std::fs::write(done.join("hss-vul-vul-en-0001.csv"), csv)?;
    let hosts = dir.join("task-host-0002");
    std::fs::create_dir_all(&hosts)?;
    std::fs::write(
        hosts.join("hss-host-en-0002.csv"),
        "host_name,os_type,agent_status\nweb-1,Linux,online\ndb-1,Linux,offline\n",
    )?;
    let running = dir.join("task-running-0003");
    std::fs::create_dir_all(&running)?;
    std::fs::write(running.join(".running"), "")?;
    let failed = dir.join("task-failed-0004");
    std::fs::create_dir_all(&failed)?;
    std::fs::write(failed.join(".failed"), "export size exceeds the limit\n")?;
    let opts = HuaweiEmuOptions::default();
    let emu = router(dir, opts.clone());
    let server = super::serve(emu.router, 0, emu.harness).await?;
    let cfg = crate::provider::huawei::HuaweiConfig {
        name: "huawei".to_string(),
        endpoint: server.base_url(),
        iam_endpoint: Some(server.base_url()),
        project_id: None,
        domain: Some(opts.domain),
        user: Some(opts.user),
        password: Some(opts.password),
        password_file: None,
        token: None,
        token_file: None,
        region: Some(opts.project_name),
        enterprise_project_id: Some("all_granted_eps".to_string()),
        export_tasks: [
            "task-vul-0001",
            "task-host-0002",
            "task-running-0003",
            "task-failed-0004",
        ]
        .map(String::from)
        .to_vec(),
    };
    Ok((server, crate::config::SourceConfig::Huawei(cfg)))
}

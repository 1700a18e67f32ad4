//! Huawei Cloud Host Security Service (HSS) export files, providers.md §5.
//!
//! * Auth: an IAM user token from `POST /v3/auth/tokens` (password identity, project scope),
//!   read from the `X-Subject-Token` header and sent as `X-Auth-Token`. It lives in a
//!   [`TokenCache`]: fetched lazily, renewed at 90 % of its stated lifetime (at most 5 minutes
//!   before `expires_at`), and renewed once more when HSS answers 401 or an `APIG.0301` /
//!   `APIGW.0301` code (the status of that answer is unconfirmed for HSS), with one renewal in
//!   flight. A token given ready-made (`token`) is used as is and cannot be renewed.
//! * Listing: HSS has no "list exports" call, so the source shows the configured export tasks:
//!   each is polled with `GET /v5/{project_id}/export-task/{task_id}`; a finished task appears
//!   as `<file_name>` and `by-id/<file_id>`, a running or failed one is absent and explained in
//!   the log. The task record carries no size, so the first time a file id is seen its size is
//!   learnt from the `Content-Length` of a download whose body is dropped (or counted when no
//!   length is sent); export files never change, so this happens once per file id. mtime is the
//!   time the task was first seen finished.
//! * Download: `GET /v5/{project_id}/download/{file_id}`, whole file (Range is not documented),
//!   so [`FileReader::ranges`] is false and the cache asks for `0..size` once.
//! * Errors: `{error_code, error_msg}` bodies; 401/403 → EACCES, 404/410 → ENOENT (export files
//!   expire), the rest EIO, always with the server's message. Tokens never appear in messages.

use std::collections::HashMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Response, StatusCode};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::BuildContext;
use crate::config::{ConfigError, resolve_secret};
use crate::error::{Result, SourceError};
use crate::http::Http;
use crate::http::auth::TokenCache;
use crate::source::{Entry, FileReader, OpenRequest, Opened, Source};

/// Name of the directory listing every file by id.
const BY_ID: &str = "by-id";
/// Longest a token is kept before its stated expiry: renewing early keeps a long download from
/// starting with a token that dies mid-way.
const MAX_RENEW_MARGIN: Duration = Duration::from_secs(300);

/// `[[source]] type = "huawei"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HuaweiConfig {
    pub name: String,
    /// HSS endpoint, e.g. `https://hss.cn-north-4.myhuaweicloud.com`.
    pub endpoint: String,
    /// IAM endpoint, e.g. `https://iam.cn-north-4.myhuaweicloud.com` (needed unless `token`).
    pub iam_endpoint: Option<String>,
    /// Project id of the HSS paths; learnt from the token when absent (then `region` names the
    /// project to scope the token to).
    pub project_id: Option<String>,
    /// Account (domain) name of the IAM user.
    pub domain: Option<String>,
    /// IAM user name.
    pub user: Option<String>,
    /// IAM password (also `password_file` or `HUAWEI_PASSWORD`).
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// A ready token instead of user credentials (also `token_file` or `HUAWEI_AUTH_TOKEN`).
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// Region id, sent as the `region` header (e.g. `cn-north-4`).
    pub region: Option<String>,
    /// `enterprise_project_id` query parameter (`0`, `all_granted_eps`, or an id).
    pub enterprise_project_id: Option<String>,
    /// Export task ids whose files are shown.
    #[serde(default)]
    pub export_tasks: Vec<String>,
}

impl HuaweiConfig {
    /// Whether the inline config holds a secret (for the file-permission check).
    pub fn has_inline_secret(&self) -> bool {
        self.password.is_some() || self.token.is_some()
    }
}

/// Builds the HSS source.
pub async fn build(cfg: &HuaweiConfig, ctx: &BuildContext) -> Result<Arc<dyn Source>, ConfigError> {
    Ok(Arc::new(HuaweiSource::new(cfg, ctx)?))
}

/// How tokens are obtained.
enum Credentials {
    /// IAM password login.
    Password {
        iam: Url,
        domain: String,
        user: String,
        password: String,
    },
    /// A token from the configuration: used as is, never renewed.
    Fixed(String),
}

/// A token and the project id it is scoped to.
#[derive(Clone)]
struct Session {
    token: String,
    project_id: String,
}

/// What the source learnt about one export file (never changes: file ids are immutable).
#[derive(Debug, Clone, Copy)]
struct Known {
    size: u64,
    first_seen: SystemTime,
}

/// One finished export task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportFile {
    pub task_id: String,
    pub task_name: String,
    pub file_id: String,
    pub file_name: String,
}

/// The state of one export task as HSS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    Done(ExportFile),
    Running,
    Failed(String),
}

struct Inner {
    http: Http,
    endpoint: Url,
    creds: Credentials,
    project_id: Option<String>,
    region: Option<String>,
    enterprise_project_id: Option<String>,
    tokens: TokenCache<Session>,
    export_tasks: Vec<String>,
    known: Mutex<HashMap<String, Known>>,
    started: SystemTime,
}

/// The HSS export-file source.
pub struct HuaweiSource {
    inner: Arc<Inner>,
}

fn parse_http_url(name: &str, key: &str, v: &str) -> Result<Url, ConfigError> {
    let u =
        Url::parse(v).map_err(|e| ConfigError::new(format!("source '{name}': {key} '{v}' is not a valid URL: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(format!(
            "source '{name}': {key} '{v}' must be an http:// or https:// address"
        )));
    }
    Ok(u)
}

impl HuaweiSource {
    pub fn new(cfg: &HuaweiConfig, ctx: &BuildContext) -> Result<HuaweiSource, ConfigError> {
        let name = &cfg.name;
        let endpoint = parse_http_url(name, "endpoint", &cfg.endpoint)?;
        let token = resolve_secret(
            name,
            "token",
            cfg.token.as_deref(),
            cfg.token_file.as_deref().map(|p| ctx.path(p)).as_deref(),
            Some("HUAWEI_AUTH_TOKEN"),
        )?;
        let creds = match (&cfg.user, token) {
            (Some(user), _) => {
                let iam = cfg.iam_endpoint.as_deref().ok_or_else(|| {
                    ConfigError::new(format!(
                        "source '{name}': iam_endpoint is missing (e.g. https://iam.cn-north-4.myhuaweicloud.com)"
                    ))
                })?;
                let domain = cfg.domain.clone().ok_or_else(|| {
                    ConfigError::new(format!(
                        "source '{name}': domain (the account name of user '{user}') is missing"
                    ))
                })?;
                let password = resolve_secret(
                    name,
                    "password",
                    cfg.password.as_deref(),
                    cfg.password_file.as_deref().map(|p| ctx.path(p)).as_deref(),
                    Some("HUAWEI_PASSWORD"),
                )?
                .ok_or_else(|| {
                    ConfigError::new(format!(
                        "source '{name}': password is missing (set password, password_file or HUAWEI_PASSWORD)"
                    ))
                })?;
                if cfg.project_id.is_none() && cfg.region.is_none() {
                    return Err(ConfigError::new(format!(
                        "source '{name}': set project_id or region (the project the token is scoped to)"
                    )));
                }
                Credentials::Password {
                    iam: parse_http_url(name, "iam_endpoint", iam)?,
                    domain,
                    user: user.clone(),
                    password,
                }
            }
            (None, Some(t)) => {
                if cfg.project_id.is_none() {
                    return Err(ConfigError::new(format!(
                        "source '{name}': project_id is required with a ready token"
                    )));
                }
                Credentials::Fixed(t)
            }
            (None, None) => {
                return Err(ConfigError::new(format!(
                    "source '{name}': no credentials: set user, domain and password (or password_file, HUAWEI_PASSWORD), or token (token_file, HUAWEI_AUTH_TOKEN)"
                )));
            }
        };
        if cfg.export_tasks.is_empty() {
            tracing::warn!(source = %name, "no export_tasks configured: the directory will be empty");
        }
        if let Some(bad) = cfg.export_tasks.iter().find(|t| t.is_empty() || t.contains('/')) {
            return Err(ConfigError::new(format!(
                "source '{name}': export_tasks entry '{bad}' is not a task id"
            )));
        }
        // Never follow redirects: HSS serves bytes directly, X-Auth-Token is a custom header
        // reqwest would forward to any host, and a 307 would re-post the IAM password there.
        let mut opts = ctx.http.clone();
        opts.max_redirects = 0;
        let http = Http::new(opts).map_err(|e| ConfigError::new(format!("source '{name}': {e}")))?;
        Ok(HuaweiSource {
            inner: Arc::new(Inner {
                http,
                endpoint,
                creds,
                project_id: cfg.project_id.clone(),
                region: cfg.region.clone(),
                enterprise_project_id: cfg.enterprise_project_id.clone(),
                tokens: TokenCache::new(Duration::ZERO),
                export_tasks: cfg.export_tasks.clone(),
                known: Mutex::new(HashMap::new()),
                started: SystemTime::now(),
            }),
        })
    }
}

impl Inner {
    /// `POST /v3/auth/tokens`: the token, its project id and how long to keep it.
    async fn login(&self) -> Result<(Session, Option<Duration>)> {
        let (iam, domain, user, password) = match &self.creds {
            Credentials::Fixed(t) => {
                let project_id = self.project_id.clone().unwrap_or_default();
                return Ok((
                    Session {
                        token: t.clone(),
                        project_id,
                    },
                    None,
                ));
            }
            Credentials::Password {
                iam,
                domain,
                user,
                password,
            } => (iam, domain, user, password),
        };
        let scope = match (&self.project_id, &self.region) {
            (Some(id), _) => serde_json::json!({ "project": { "id": id } }),
            (None, Some(region)) => serde_json::json!({ "project": { "name": region } }),
            (None, None) => unreachable!("checked when building"),
        };
        let body = serde_json::json!({
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": { "user": { "name": user, "password": password, "domain": { "name": domain } } }
                },
                "scope": scope
            }
        });
        let mut url = iam.clone();
        {
            let mut s = url.path_segments_mut().expect("http URL");
            s.pop_if_empty().extend(["v3", "auth", "tokens"]);
        }
        url.query_pairs_mut().append_pair("nocatalog", "true");
        let what = "POST /v3/auth/tokens";
        let resp = self.http.send(what, |c| c.post(url.clone()).json(&body)).await?;
        crate::metrics::Metrics::add(&crate::metrics::global().http_requests, 1);
        let status = resp.status();
        if !status.is_success() {
            let msg = error_message(resp, what).await;
            return Err(match status.as_u16() {
                400 | 401 | 403 => SourceError::PermissionDenied(format!("IAM refused user '{user}': {msg}")),
                _ => crate::http::status_error(status, msg),
            });
        }
        let token = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| SourceError::Protocol(format!("{what}: answer without X-Subject-Token")))?;
        let v: Value = self.http.body_json(resp, what).await?;
        let t = v.get("token");
        let project_id = self
            .project_id
            .clone()
            .or_else(|| {
                t.and_then(|t| t.pointer("/project/id"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .ok_or_else(|| SourceError::Protocol(format!("{what}: token without project.id")))?;
        let lifetime = t.and_then(token_lifetime);
        Ok((Session { token, project_id }, lifetime.map(keep_for)))
    }

    async fn session(&self) -> Result<crate::http::auth::Token<Session>> {
        self.tokens.get(|| self.login()).await
    }

    fn url(&self, project_id: &str, segments: &[&str]) -> Url {
        let mut u = self.endpoint.clone();
        {
            let mut s = u.path_segments_mut().expect("http URL");
            s.pop_if_empty().extend(["v5", project_id]).extend(segments);
        }
        if let Some(ep) = &self.enterprise_project_id {
            u.query_pairs_mut().append_pair("enterprise_project_id", ep);
        }
        u
    }

    /// A GET on an HSS path with the token; on a 401 the token is renewed once and the request
    /// sent again. Returns the successful response or the mapped error.
    async fn get(&self, what: &str, segments: &[&str]) -> Result<Response> {
        let mut renewed = false;
        loop {
            let tok = self.session().await?;
            let url = self.url(&tok.value.project_id, segments);
            let mut h = HeaderMap::new();
            let mut hv = HeaderValue::from_str(&tok.value.token)
                .map_err(|_| SourceError::Invalid("the token contains characters not allowed in a header".into()))?;
            hv.set_sensitive(true);
            h.insert("x-auth-token", hv);
            if let Some(r) = self.region.as_deref().and_then(|r| HeaderValue::from_str(r).ok()) {
                h.insert("region", r);
            }
            let resp = self.http.send(what, |c| c.get(url.clone()).headers(h.clone())).await?;
            crate::metrics::Metrics::add(&crate::metrics::global().http_requests, 1);
            let status = resp.status();
            if status.is_success() {
                return Ok(resp);
            }
            let err = error_body(resp).await;
            let msg = format!("{what}: {}", err.text());
            // 401 is the documented status; the code is checked too because HSS's status for
            // APIG.0301 is unconfirmed (providers.md §5.2).
            let token_refused = status == StatusCode::UNAUTHORIZED || err.code.ends_with(".0301");
            if token_refused && !renewed && matches!(self.creds, Credentials::Password { .. }) {
                // Expired or revoked (APIG.0301 / APIGW.0301): log in again, once.
                tracing::debug!(%what, code = %err.code, "token refused; renewing it once");
                self.tokens.invalidate(tok.generation).await;
                renewed = true;
                continue;
            }
            if token_refused {
                return Err(SourceError::PermissionDenied(msg));
            }
            return Err(match status.as_u16() {
                401 | 403 => SourceError::PermissionDenied(msg),
                404 | 410 => SourceError::NotFound(msg),
                s => SourceError::Http {
                    status: s,
                    message: msg,
                },
            });
        }
    }

    /// `GET /v5/{project_id}/export-task/{task_id}`.
    async fn task(&self, task_id: &str) -> Result<TaskState> {
        let what = format!("GET export-task/{task_id}");
        let resp = self.get(&what, &["export-task", task_id]).await?;
        let v: Value = self.http.body_json(resp, &what).await?;
        parse_task(task_id, &v).map_err(|why| SourceError::Protocol(format!("{what}: {why}")))
    }

    /// The finished export files of the configured tasks, in configuration order. Running and
    /// failed tasks are logged; an unknown task id is logged and skipped.
    async fn files(&self) -> Result<Vec<(ExportFile, Known)>> {
        let mut out = Vec::new();
        for id in &self.export_tasks {
            match self.task(id).await {
                Ok(TaskState::Done(f)) => match self.known(&f).await {
                    Ok(known) => out.push((f, known)),
                    Err(SourceError::NotFound(why)) => {
                        tracing::warn!(task = %id, file_id = %f.file_id, %why, "export file is gone (expired?)");
                    }
                    Err(e) => return Err(e),
                },
                Ok(TaskState::Running) => {
                    tracing::info!(task = %id, "export task is still running; its file appears when it finishes");
                }
                Ok(TaskState::Failed(reason)) => {
                    tracing::warn!(task = %id, %reason, "export task failed; it has no file to show");
                }
                Err(SourceError::NotFound(why)) => {
                    tracing::warn!(task = %id, %why, "export task not found; check export_tasks");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Size and first-seen time of an export file, learnt once per file id.
    async fn known(&self, f: &ExportFile) -> Result<Known> {
        if let Some(k) = self.known.lock().unwrap().get(&f.file_id) {
            return Ok(*k);
        }
        let what = format!("GET download/{} (size)", f.file_id);
        let resp = self.get(&what, &["download", &f.file_id]).await?;
        let size = match resp.content_length() {
            Some(n) => n,
            None => {
                // No length: count the body (export files are reports, not huge).
                let mut n = 0u64;
                let mut body = self.http.body_stream(resp, &what);
                while let Some(chunk) = body.next().await {
                    n += chunk?.len() as u64;
                }
                n
            }
        };
        let k = Known {
            size,
            first_seen: SystemTime::now(),
        };
        Ok(*self.known.lock().unwrap().entry(f.file_id.clone()).or_insert(k))
    }

    fn entry(&self, f: &ExportFile, k: Known, name: &str) -> Entry {
        let mut e = Entry::file(name, f.file_id.clone(), k.size);
        e.mtime = k.first_seen;
        e.validator = Some(f.file_id.clone());
        e.with_xattr("user.huawei.file_id", f.file_id.clone())
            .with_xattr("user.huawei.task_id", f.task_id.clone())
            .with_xattr("user.huawei.task_name", f.task_name.clone())
            .with_xattr("user.huawei.file_name", f.file_name.clone())
    }
}

/// The token lifetime stated by IAM (`expires_at - issued_at`, or `expires_at - now`).
pub(crate) fn token_lifetime(t: &Value) -> Option<Duration> {
    let at = |k: &str| {
        t.get(k)
            .and_then(Value::as_str)
            .and_then(|s| humantime::parse_rfc3339_weak(s.trim()).ok())
    };
    let expires = at("expires_at")?;
    let from = at("issued_at").unwrap_or_else(SystemTime::now);
    Some(expires.duration_since(from).unwrap_or_default())
}

/// How long to keep a token of `lifetime`: 90 %, and at most [`MAX_RENEW_MARGIN`] less.
pub(crate) fn keep_for(lifetime: Duration) -> Duration {
    lifetime.saturating_sub((lifetime / 10).min(MAX_RENEW_MARGIN))
}

/// A Huawei error answer (`{error_code, error_msg}`, or IAM's `{"error":{code,message}}`).
struct HwError {
    code: String,
    msg: String,
    status: StatusCode,
}

impl HwError {
    fn text(&self) -> String {
        match (self.code.is_empty(), self.msg.is_empty()) {
            (false, false) => format!("{} {}", self.code, self.msg),
            (false, true) => self.code.clone(),
            (true, false) => self.msg.clone(),
            (true, true) => self.status.to_string(),
        }
    }
}

async fn error_body(resp: Response) -> HwError {
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(5), resp.bytes())
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    let (code, msg) = parse_error(&body).unwrap_or_else(|| {
        let s = String::from_utf8_lossy(&body[..body.len().min(300)]).trim().to_string();
        (String::new(), s.chars().filter(|c| !c.is_control()).collect())
    });
    HwError { code, msg, status }
}

async fn error_message(resp: Response, what: &str) -> String {
    format!("{what}: {}", error_body(resp).await.text())
}

/// `(error_code, error_msg)` of a Huawei error body.
pub fn parse_error(body: &[u8]) -> Option<(String, String)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let s = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    if v.get("error_code").is_some() || v.get("error_msg").is_some() {
        return Some((s(v.get("error_code")), s(v.get("error_msg"))));
    }
    let e = v.get("error")?;
    Some((s(e.get("code")), s(e.get("message"))))
}

/// Reads an export-task record (`task_status` `success|failure|running`).
pub fn parse_task(task_id: &str, v: &Value) -> Result<TaskState, String> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let status = s("task_status");
    match status.to_ascii_lowercase().as_str() {
        "success" | "succeeded" | "finished" => {
            let (file_id, file_name) = (s("file_id"), s("file_name"));
            if file_id.is_empty() {
                return Err("finished task without file_id".into());
            }
            let file_name = if file_name.is_empty() {
                file_id.clone()
            } else {
                file_name
            };
            Ok(TaskState::Done(ExportFile {
                task_id: task_id.to_string(),
                task_name: s("task_name"),
                file_id,
                file_name,
            }))
        }
        "running" | "waiting" | "pending" | "processing" => Ok(TaskState::Running),
        "failure" | "failed" | "fail" => {
            // The documented record has no reason field; take any the server adds.
            let reason = ["failed_reason", "fail_reason", "error_msg", "message"]
                .iter()
                .map(|k| s(k))
                .find(|r| !r.is_empty())
                .unwrap_or_else(|| "HSS gives no reason".to_string());
            Ok(TaskState::Failed(reason))
        }
        "" => Err("record without task_status".into()),
        other => Err(format!("unknown task_status '{other}'")),
    }
}

#[async_trait]
impl Source for HuaweiSource {
    fn kind(&self) -> &'static str {
        "huawei"
    }

    async fn root(&self) -> Result<Entry> {
        // Logging in now makes wrong credentials fail the mount with IAM's reason.
        self.inner.session().await?;
        let mut e = Entry::dir("", "root");
        e.mtime = self.inner.started;
        Ok(e)
    }

    async fn list(&self, dir: &Entry) -> Result<Vec<Entry>> {
        let files = self.inner.files().await?;
        let mut e = match dir.remote.as_str() {
            "root" => {
                let mut seen = std::collections::HashSet::new();
                let mut out = Vec::with_capacity(files.len() + 1);
                for (f, k) in &files {
                    if !seen.insert(f.file_name.clone()) {
                        tracing::warn!(task = %f.task_id, file = %f.file_name, file_id = %f.file_id,
                            "two export tasks made files of the same name; this one is only under by-id/");
                        continue;
                    }
                    out.push(self.inner.entry(f, *k, &f.file_name));
                }
                let mut by_id = Entry::dir(BY_ID, BY_ID);
                by_id.mtime = self.inner.started;
                out.push(by_id);
                out
            }
            BY_ID => files.iter().map(|(f, k)| self.inner.entry(f, *k, &f.file_id)).collect(),
            _ => {
                return Err(SourceError::NotADirectory(format!(
                    "{} is not an HSS directory",
                    dir.name
                )));
            }
        };
        e.shrink_to_fit();
        Ok(e)
    }

    async fn open(&self, file: &Entry, _req: &OpenRequest) -> Result<Opened> {
        // Export files never change under a file id; the download proves it still exists.
        Ok(Opened {
            reader: Arc::new(HuaweiReader {
                inner: self.inner.clone(),
                file_id: file.remote.clone(),
                size: file.size,
            }),
            entry: file.clone(),
            prefix: None,
        })
    }
}

/// Downloads one export file whole.
struct HuaweiReader {
    inner: Arc<Inner>,
    file_id: String,
    size: u64,
}

#[async_trait]
impl FileReader for HuaweiReader {
    fn ranges(&self) -> bool {
        false
    }

    async fn read_stream(&self, r: Range<u64>) -> Result<BoxStream<'static, Result<Bytes>>> {
        let what = format!("GET download/{}", self.file_id);
        let resp = self.inner.get(&what, &["download", &self.file_id]).await?;
        // A 206 is accepted if HSS ever sends one; `plan` checks its Content-Range.
        self.inner.http.ranged_body(resp, &r, Some(self.size), &what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_states_parse() {
        let done = serde_json::json!({"task_id":"t1","task_name":"vul","task_status":"success","file_id":"f1","file_name":"hss-vul.zip"});
        assert_eq!(
            parse_task("t1", &done).unwrap(),
            TaskState::Done(ExportFile {
                task_id: "t1".into(),
                task_name: "vul".into(),
                file_id: "f1".into(),
                file_name: "hss-vul.zip".into()
            })
        );
        let running = serde_json::json!({"task_id":"t1","task_status":"running"});
        assert_eq!(parse_task("t1", &running).unwrap(), TaskState::Running);
        let failed = serde_json::json!({"task_id":"t1","task_status":"failure","failed_reason":"disk full"});
        assert_eq!(
            parse_task("t1", &failed).unwrap(),
            TaskState::Failed("disk full".into())
        );
        assert!(parse_task("t1", &serde_json::json!({"task_status":"success"})).is_err());
        assert!(parse_task("t1", &serde_json::json!({})).is_err());
    }

    #[test]
    fn error_bodies_of_apig_and_iam_parse() {
        let apig = br#"{"error_msg":"Incorrect IAM authentication information: token expires","error_code":"APIG.0301","request_id":"x"}"#;
        assert_eq!(
            parse_error(apig).unwrap(),
            (
                "APIG.0301".to_string(),
                "Incorrect IAM authentication information: token expires".to_string()
            )
        );
        let iam = br#"{"error":{"code":401,"message":"The username or password is wrong.","title":"Unauthorized"}}"#;
        assert_eq!(parse_error(iam).unwrap().1, "The username or password is wrong.");
        assert!(parse_error(b"<html>").is_none());
    }

    #[test]
    fn token_is_kept_for_ninety_percent_and_at_most_five_minutes_less() {
        let t =
            serde_json::json!({"issued_at":"2020-01-03T09:05:22.701000Z","expires_at":"2020-01-04T09:05:22.701000Z"});
        let life = token_lifetime(&t).unwrap();
        assert_eq!(life, Duration::from_secs(86400));
        assert_eq!(keep_for(life), Duration::from_secs(86400 - 300));
        assert_eq!(keep_for(Duration::from_secs(10)), Duration::from_secs(9));
    }
}

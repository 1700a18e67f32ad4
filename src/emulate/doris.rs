//! Emulator of the Apache Doris FE small-file manager (providers.md §4.6).
//!
//! Tree: `--root DIR` holds `DIR/<db>/<catalog>/<file name>`; every directory directly under
//! `DIR` is a database. A file whose name ends in [`NOT_CONTENT_SUFFIX`] is listed without the
//! suffix with `IsContent=false` (a URL-only entry) and cannot be downloaded. The tree is
//! re-read on every request: a file id is assigned the first time (db, catalog, name) is seen
//! and a new id whenever its bytes change, as `DROP FILE` + `CREATE FILE` would do.
//!
//! Endpoints:
//! * `GET /api/get_small_file?token=&file_id=`: the whole file (Range ignored), chunked, with
//!   `Content-Disposition: attachment;fileName=<name>` and CORS `Vary` headers; every error is
//!   HTTP 200 with `{msg, code, data, count}`, in the FE source's style or the seed document's
//!   ([`ErrorStyle`]).
//! * `POST /api/query/{ns}/{db}` (Basic auth): `SHOW FILE [FROM db]` and `SHOW DATABASES` as
//!   the result-set JSON of §4.3.
//!
//! Run-time switches ([`DorisEmulator::behaviour`], or `POST /__fetchfs/doris` with the JSON of
//! [`DorisBehaviour`]): error style, the success Content-Type of old builds, and `corrupt`,
//! which flips one byte of every download so its MD5 no longer matches `SHOW FILE`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Harness;

/// Suffix marking a file stored as a URL only (`IsContent=false`).
pub const NOT_CONTENT_SUFFIX: &str = ".not-content";
/// Token of the emulated cluster unless `--token` says otherwise.
pub const DEFAULT_TOKEN: &str = "98e8c0a6-3a41-48b8-a72b-0432e42a7fe5";
/// First id handed out (ids come from the FE's global id generator, so they are large).
const FIRST_ID: u64 = 11002;

/// Which documented shape the "not found" error takes (providers.md §4.4).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorStyle {
    /// Current FE source: `{"msg":"Error","code":1,"data":"File not found or is not content"}`.
    #[default]
    Source,
    /// Seed document: `{"msg":"File not found or is not content","code":1,"data":null}`.
    SeedDoc,
}

/// Switchable behaviours of the Doris emulator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DorisBehaviour {
    pub error_style: ErrorStyle,
    /// Send `Content-Type: application/json;charset=UTF-8` with files, as the seed's older
    /// build did (clients must not rely on Content-Type).
    pub json_content_type: bool,
    /// Flip the first byte of every download: the MD5 no longer matches `SHOW FILE`.
    pub corrupt: bool,
}

/// Options of the emulator.
#[derive(Debug, Clone)]
pub struct DorisEmuOptions {
    /// Cluster token `/api/get_small_file` accepts.
    pub token: String,
    /// Basic-auth user and password `/api/query` accepts.
    pub user: String,
    pub password: String,
    pub behaviour: DorisBehaviour,
}

impl Default for DorisEmuOptions {
    fn default() -> Self {
        DorisEmuOptions {
            token: DEFAULT_TOKEN.to_string(),
            user: "root".to_string(),
            password: String::new(),
            behaviour: DorisBehaviour::default(),
        }
    }
}

/// `fetchfs emulate doris` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct EmuArgs {
    /// Cluster token accepted by /api/get_small_file.
    #[arg(long, default_value = DEFAULT_TOKEN)]
    pub token: String,
    /// User accepted by /api/query (HTTP Basic auth).
    #[arg(long, default_value = "root")]
    pub user: String,
    /// Password accepted by /api/query.
    #[arg(long, default_value = "")]
    pub password: String,
    /// Shape of the "file not found" error body.
    #[arg(long, value_enum, default_value_t = ErrorStyle::Source)]
    pub error_style: ErrorStyle,
    /// Send files with Content-Type application/json, as older FE builds did.
    #[arg(long)]
    pub json_content_type: bool,
    /// Serve every file with one byte flipped (MD5 mismatch).
    #[arg(long)]
    pub corrupt: bool,
}

impl From<&EmuArgs> for DorisEmuOptions {
    fn from(a: &EmuArgs) -> Self {
        DorisEmuOptions {
            token: a.token.clone(),
            user: a.user.clone(),
            password: a.password.clone(),
            behaviour: DorisBehaviour {
                error_style: a.error_style,
                json_content_type: a.json_content_type,
                corrupt: a.corrupt,
            },
        }
    }
}

/// The emulator's router, its harness and its switches.
pub struct DorisEmulator {
    pub router: Router,
    pub harness: Harness,
    pub behaviour: Arc<Mutex<DorisBehaviour>>,
}

/// One registered small file.
#[derive(Debug, Clone)]
struct SmallFile {
    id: u64,
    db: String,
    catalog: String,
    name: String,
    path: PathBuf,
    size: u64,
    is_content: bool,
    md5: String,
}

#[derive(Default)]
struct Registry {
    /// (db, catalog, name) → (id, md5 it was given for).
    ids: HashMap<(String, String, String), (u64, String)>,
    next: u64,
}

#[derive(Clone)]
struct AppState {
    root: Arc<PathBuf>,
    opts: Arc<DorisEmuOptions>,
    behaviour: Arc<Mutex<DorisBehaviour>>,
    registry: Arc<Mutex<Registry>>,
}

/// Builds the router serving `root`.
pub fn router(root: &Path, opts: DorisEmuOptions) -> DorisEmulator {
    let behaviour = Arc::new(Mutex::new(opts.behaviour.clone()));
    let state = AppState {
        root: Arc::new(root.to_path_buf()),
        opts: Arc::new(opts),
        behaviour: behaviour.clone(),
        registry: Arc::new(Mutex::new(Registry {
            ids: HashMap::new(),
            next: FIRST_ID,
        })),
    };
    let harness = Harness::default();
    let r = Router::new()
        .route("/api/get_small_file", axum::routing::get(get_small_file))
        .route("/api/query/{ns}/{db}", axum::routing::post(query))
        .route(
            "/__fetchfs/doris",
            axum::routing::post(
                |State(s): State<AppState>, axum::Json(b): axum::Json<DorisBehaviour>| async move {
                    *s.behaviour.lock().unwrap() = b;
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(state);
    let router = super::fault_layer(r, harness.clone(), |status| {
        (
            json!({"msg": "Internal Error", "code": 500, "data": format!("injected fault (HTTP {status})"), "count": 0})
                .to_string(),
            "application/json",
        )
    });
    DorisEmulator {
        router,
        harness,
        behaviour,
    }
}

/// `{msg, code, data, count}` with HTTP 200, as every FE REST error.
fn fe_body(msg: &str, code: i64, data: Value) -> Response {
    let mut resp = axum::Json(json!({ "msg": msg, "code": code, "data": data, "count": 0 })).into_response();
    add_vary(resp.headers_mut());
    resp
}

fn add_vary(h: &mut HeaderMap) {
    for v in [
        "Origin",
        "Access-Control-Request-Method",
        "Access-Control-Request-Headers",
    ] {
        h.append(header::VARY, v.parse().unwrap());
    }
}

/// Reads `DIR/<db>/<catalog>/<file>` and assigns ids.
fn scan(s: &AppState) -> (Vec<String>, Vec<SmallFile>) {
    let mut dbs = Vec::new();
    let mut found = Vec::new();
    let Ok(rd) = std::fs::read_dir(&*s.root) else {
        return (dbs, Vec::new());
    };
    for db in rd.flatten().filter(|e| e.path().is_dir()) {
        let db_name = db.file_name().to_string_lossy().into_owned();
        dbs.push(db_name.clone());
        for cat in std::fs::read_dir(db.path()).into_iter().flatten().flatten() {
            if !cat.path().is_dir() {
                continue;
            }
            let cat_name = cat.file_name().to_string_lossy().into_owned();
            for f in std::fs::read_dir(cat.path()).into_iter().flatten().flatten() {
                let path = f.path();
                if !path.is_file() {
                    continue;
                }
                let Ok(bytes) = std::fs::read(&path) else { continue };
                let raw = f.file_name().to_string_lossy().into_owned();
                let (name, is_content) = match raw.strip_suffix(NOT_CONTENT_SUFFIX) {
                    Some(n) => (n.to_string(), false),
                    None => (raw, true),
                };
                found.push((db_name.clone(), cat_name.clone(), name, path, bytes, is_content));
            }
        }
    }
    dbs.sort();
    found.sort_by(|a, b| (&a.0, &a.1, &a.2).cmp(&(&b.0, &b.1, &b.2)));
    let mut reg = s.registry.lock().unwrap();
    let files = found
        .into_iter()
        .map(|(db, catalog, name, path, bytes, is_content)| {
            let md5 = hex::encode(Md5::digest(&bytes));
            let key = (db.clone(), catalog.clone(), name.clone());
            let next = reg.next;
            let entry = reg.ids.entry(key).or_insert((next, md5.clone()));
            if entry.1 != md5 {
                // New bytes: a drop + create, which hands out a new id.
                *entry = (next, md5.clone());
            }
            let id = entry.0;
            if id == next {
                reg.next += 1;
            }
            SmallFile {
                id,
                db,
                catalog,
                name,
                path,
                size: bytes.len() as u64,
                is_content,
                md5,
            }
        })
        .collect();
    (dbs, files)
}

async fn get_small_file(State(s): State<AppState>, Query(q): Query<HashMap<String, String>>) -> Response {
    let b = s.behaviour.lock().unwrap().clone();
    let (Some(token), Some(file_id)) = (q.get("token"), q.get("file_id")) else {
        return fe_body("Bad Request", 403, json!("Missing parameter. Need token and file id"));
    };
    if *token != s.opts.token {
        return fe_body("Error", 1, json!("Invalid token"));
    }
    let Ok(id) = file_id.parse::<u64>() else {
        return fe_body("Bad Request", 403, json!(format!("Invalid file id format: {file_id}")));
    };
    let (_, files) = scan(&s);
    let Some(f) = files.into_iter().find(|f| f.id == id && f.is_content) else {
        const NF: &str = "File not found or is not content";
        return match b.error_style {
            ErrorStyle::Source => fe_body("Error", 1, json!(NF)),
            ErrorStyle::SeedDoc => fe_body(NF, 1, Value::Null),
        };
    };
    let mut bytes = match tokio::fs::read(&f.path).await {
        Ok(b) => b,
        Err(e) => return fe_body("Internal Error", 500, json!(e.to_string())),
    };
    if b.corrupt && !bytes.is_empty() {
        bytes[0] ^= 0xff;
    }
    let ctype = if b.json_content_type {
        "application/json;charset=UTF-8"
    } else {
        "application/octet-stream"
    };
    // A one-chunk stream: no Content-Length, Transfer-Encoding: chunked, as the FE sends.
    let body = Body::from_stream(futures_util::stream::once(async move {
        Ok::<_, std::io::Error>(Bytes::from(bytes))
    }));
    let mut resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, ctype)
        .header(header::CONTENT_DISPOSITION, format!("attachment;fileName={}", f.name))
        .body(body)
        .unwrap();
    add_vary(resp.headers_mut());
    resp
}

#[derive(Deserialize)]
struct QueryBody {
    stmt: String,
    limit: Option<u64>,
}

fn basic_auth_ok(h: &HeaderMap, user: &str, password: &str) -> bool {
    use base64::Engine;
    let Some(v) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(b64) = v.strip_prefix("Basic ") else {
        return false;
    };
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return false;
    };
    raw == format!("{user}:{password}").as_bytes()
}

fn result_set(columns: &[&str], rows: Vec<Vec<Value>>) -> Response {
    let meta: Vec<Value> = columns.iter().map(|c| json!({"name": c, "type": "CHAR"})).collect();
    fe_body(
        "success",
        0,
        json!({"type": "result_set", "meta": meta, "data": rows, "time": 1}),
    )
}

async fn query(
    State(s): State<AppState>,
    UrlPath((_ns, db)): UrlPath<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !basic_auth_ok(&headers, &s.opts.user, &s.opts.password) {
        let mut r = fe_body(
            "Unauthorized",
            401,
            json!("Access denied for user. Check your user name and password"),
        );
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    }
    let Ok(q) = serde_json::from_slice::<QueryBody>(&body) else {
        return fe_body(
            "Bad Request",
            403,
            json!("malformed request body; expected {\"stmt\": ...}"),
        );
    };
    let limit = q.limit.unwrap_or(1000) as usize;
    let words: Vec<&str> = q.stmt.split_whitespace().collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let (dbs, files) = scan(&s);
    let known = |d: &str| dbs.iter().any(|x| x == d) || d == "information_schema";
    match upper.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["SHOW", "DATABASES"] => {
            let mut rows: Vec<Vec<Value>> = vec![vec![json!("information_schema")], vec![json!("mysql")]];
            rows.extend(dbs.iter().map(|d| vec![json!(d)]));
            rows.truncate(limit);
            result_set(&["Database"], rows)
        }
        ["SHOW", "FILE"] | ["SHOW", "FILE", "FROM" | "IN", _] => {
            let target = words.get(3).map(|w| w.trim_matches('`').to_string()).unwrap_or(db);
            if !known(&target) {
                return fe_body(
                    "Error",
                    1,
                    json!(format!("errCode = 2, detailMessage = Unknown database '{target}'")),
                );
            }
            let rows: Vec<Vec<Value>> = files
                .iter()
                .filter(|f| f.db == target)
                .take(limit)
                .map(|f| {
                    vec![
                        json!(f.id.to_string()),
                        json!(f.db),
                        json!(f.catalog),
                        json!(f.name),
                        json!(f.size.to_string()),
                        json!(f.is_content.to_string()),
                        json!(f.md5),
                    ]
                })
                .collect();
            result_set(
                &["Id", "DbName", "Catalog", "FileName", "FileSize", "IsContent", "MD5"],
                rows,
            )
        }
        _ => fe_body(
            "Error",
            1,
            json!(format!(
                "errCode = 2, detailMessage = the emulator only runs SHOW FILE and SHOW DATABASES, not: {}",
                q.stmt
            )),
        ),
    }
}

/// Writes sample files under `dir`, serves them, and returns the config that mounts them.
pub async fn demo(dir: &Path) -> std::io::Result<(super::Server, crate::config::SourceConfig)> {
    let samples: [(&str, &str, &str, &[u8]); 4] = [
        (
            "kafka_db",
            "kafka",
            "ca.pem",
            b"-----BEGIN CERTIFICATE-----\nMIIBdemo\n-----END CERTIFICATE-----\n",
        ),
        (
            "kafka_db",
            "kafka",
            "client.key",
            b"-----BEGIN PRIVATE KEY-----\nMIIEdemo\n-----END PRIVATE KEY-----\n",
        ),
        (
            "kafka_db",
            "DEFAULT",
            "krb5.conf",
            b"[libdefaults]\n  default_realm = EXAMPLE.COM\n",
        ),
        (
            "sales",
            "jdbc",
            "mysql-connector.properties",
            b"useSSL=true\nserverTimezone=UTC\n",
        ),
    ];
    for (db, cat, name, bytes) in samples {
        let d = dir.join(db).join(cat);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(name), bytes)?;
    }
    let hidden = dir
        .join("sales")
        .join("jdbc")
        .join(format!("driver.jar{NOT_CONTENT_SUFFIX}"));
    std::fs::write(hidden, b"url-only entry")?;
    let opts = DorisEmuOptions::default();
    let token = opts.token.clone();
    let emu = router(dir, opts);
    let server = super::serve(emu.router, 0, emu.harness).await?;
    let cfg = crate::provider::doris::DorisConfig {
        name: "doris".to_string(),
        endpoint: server.base_url(),
        token: Some(token),
        token_file: None,
        user: Some("root".to_string()),
        password: Some(String::new()),
        password_file: None,
        databases: None,
        namespace: None,
    };
    Ok((server, crate::config::SourceConfig::Doris(cfg)))
}

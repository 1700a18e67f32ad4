//! A plain HTTP file server over a directory: Range, HEAD, ETag/If-Range and an nginx-style
//! autoindex — the stand-in for nginx in tests and `fetchfs demo`, with switchable
//! misbehaviours real servers show (no Range, no HEAD, chunked bodies without a length,
//! redirects, Apache/Python listing styles). Generic faults (503 + Retry-After, resets, stalls,
//! flipped bytes) come from [`super::fault_layer`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::Harness;

/// Listing page styles.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ListingStyle {
    /// `<pre>` with exact sizes, as nginx's default autoindex.
    #[default]
    Nginx,
    /// Apache fancy index table with rounded sizes (`1.2K`).
    Apache,
    /// `python -m http.server`: a bare `<ul>` of links.
    Python,
}

/// Switchable behaviours of the HTTP emulator.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpBehaviour {
    /// Ignore `Range` and always answer 200 with the whole file.
    pub no_range: bool,
    /// Answer HEAD with 405.
    pub no_head: bool,
    /// Send file bodies chunked, without `Content-Length`.
    pub chunked: bool,
    /// Send no ETag (Last-Modified only).
    pub no_etag: bool,
    /// Redirect every file request once through `/__redirect/…`.
    pub redirect: bool,
    /// Redirect every file request to this base URL (another host), same path.
    pub redirect_to: Option<String>,
    /// Require `Authorization: Basic base64(user:password)` with this `user:password`.
    pub basic_auth: Option<String>,
    /// Require this header (`name: value`) on every request, as an API key.
    pub require_header: Option<(String, String)>,
    pub style: ListingStyle,
}

#[derive(Clone)]
struct AppState {
    root: Arc<PathBuf>,
    behaviour: Arc<Mutex<HttpBehaviour>>,
}

/// The emulator's router and the handle to switch its behaviour.
pub struct HttpEmulator {
    pub router: Router,
    pub harness: Harness,
    pub behaviour: Arc<Mutex<HttpBehaviour>>,
}

/// Builds the router serving `root`.
pub fn router(root: &Path) -> HttpEmulator {
    let behaviour = Arc::new(Mutex::new(HttpBehaviour::default()));
    let state = AppState {
        root: Arc::new(root.to_path_buf()),
        behaviour: behaviour.clone(),
    };
    let harness = Harness::default();
    let r = Router::new()
        .route(
            "/__fetchfs/http",
            axum::routing::post(
                |State(s): State<AppState>, axum::Json(b): axum::Json<HttpBehaviour>| async move {
                    *s.behaviour.lock().unwrap() = b;
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .fallback(serve_path)
        .with_state(state);
    let router = super::fault_layer(r, harness.clone(), |status| {
        (format!("<html><body><h1>{status}</h1></body></html>"), "text/html")
    });
    HttpEmulator {
        router,
        harness,
        behaviour,
    }
}

async fn serve_path(State(s): State<AppState>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let b = s.behaviour.lock().unwrap().clone();
    if let Some(cred) = &b.basic_auth {
        use base64::Engine;
        let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(cred));
        if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"fetchfs\"")],
                "401 Unauthorized",
            )
                .into_response();
        }
    }
    if let Some((name, value)) = &b.require_header
        && headers.get(name.as_str()).and_then(|v| v.to_str().ok()) != Some(value.as_str())
    {
        return (StatusCode::FORBIDDEN, "403 Forbidden").into_response();
    }
    let raw = uri.path();
    let (redirected, raw) = match raw.strip_prefix("/__redirect") {
        Some(rest) => (true, rest.to_string()),
        None => (false, raw.to_string()),
    };
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(&raw).collect();
    let Ok(rel) = String::from_utf8(decoded) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if rel.split('/').any(|seg| seg == "..") {
        return StatusCode::FORBIDDEN.into_response();
    }
    let path = s.root.join(rel.trim_start_matches('/'));
    let Ok(meta) = tokio::fs::metadata(&path).await else {
        return (StatusCode::NOT_FOUND, "<html><body>404 Not Found</body></html>").into_response();
    };
    if meta.is_dir() {
        if !raw.ends_with('/') {
            return redirect(&format!("{raw}/"));
        }
        return listing(&path, &raw, b.style).await;
    }
    if let Some(base) = b.redirect_to.as_ref().filter(|_| !redirected) {
        return redirect(&format!("{}/__redirect{raw}", base.trim_end_matches('/')));
    }
    if b.redirect && !redirected {
        return redirect(&format!("/__redirect{raw}"));
    }
    if method == Method::HEAD && b.no_head {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    file(&path, &meta, &method, &headers, &b).await
}

fn redirect(to: &str) -> Response {
    (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, to.to_string())]).into_response()
}

fn etag_of(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("\"{:x}-{:x}-{:x}\"", meta.mtime(), meta.mtime_nsec(), meta.len())
}

async fn file(
    path: &Path,
    meta: &std::fs::Metadata,
    method: &Method,
    headers: &HeaderMap,
    b: &HttpBehaviour,
) -> Response {
    let size = meta.len();
    let etag = etag_of(meta);
    let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
    let last_modified = httpdate::fmt_http_date(mtime);
    let mut range = if b.no_range {
        None
    } else {
        headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if let Some(ir) = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok())
        && ir != etag
        && ir != last_modified
    {
        range = None;
    }
    let span = match range.as_deref().map(|r| parse_range(r, size)) {
        None | Some(RangeAsk::Ignore) => None,
        Some(RangeAsk::Unsatisfiable) => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response();
        }
        Some(RangeAsk::Span(a, e)) => Some((a, e)),
    };
    let (status, start, len) = match span {
        Some((a, e)) => (StatusCode::PARTIAL_CONTENT, a, e - a + 1),
        None => (StatusCode::OK, 0, size),
    };
    let mut resp = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, if b.no_range { "none" } else { "bytes" })
        .header(header::LAST_MODIFIED, last_modified);
    if !b.no_etag {
        resp = resp.header(header::ETAG, etag);
    }
    if let Some((a, e)) = span {
        resp = resp.header(header::CONTENT_RANGE, format!("bytes {a}-{e}/{size}"));
    }
    if !b.chunked {
        resp = resp.header(header::CONTENT_LENGTH, len);
    }
    if method == Method::HEAD {
        return resp.body(Body::empty()).unwrap();
    }
    let body = match super::file_body(path, start, len) {
        Ok(b) => b,
        Err(_) => return StatusCode::NOT_FOUND.into_response(),
    };
    resp.body(body).unwrap()
}

pub(crate) enum RangeAsk {
    Ignore,
    Unsatisfiable,
    Span(u64, u64),
}

/// One `bytes=a-b`, `bytes=a-` or `bytes=-n` range as RFC 9110 reads it; anything else ignored.
pub(crate) fn parse_range(v: &str, size: u64) -> RangeAsk {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return RangeAsk::Ignore;
    };
    if spec.contains(',') {
        return RangeAsk::Ignore;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeAsk::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return RangeAsk::Ignore;
        };
        if n == 0 || size == 0 {
            return RangeAsk::Unsatisfiable;
        }
        return RangeAsk::Span(size.saturating_sub(n), size - 1);
    }
    let Ok(a) = a.parse::<u64>() else {
        return RangeAsk::Ignore;
    };
    let e = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= a => e,
            _ => return RangeAsk::Ignore,
        }
    };
    if a >= size {
        return RangeAsk::Unsatisfiable;
    }
    RangeAsk::Span(a, e.min(size - 1))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn href(name: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(name, SET).to_string()
}

async fn listing(dir: &Path, url_path: &str, style: ListingStyle) -> Response {
    let mut rd = match tokio::fs::read_dir(dir).await {
        Ok(r) => r,
        Err(_) => return StatusCode::FORBIDDEN.into_response(),
    };
    let mut items = Vec::new();
    while let Ok(Some(e)) = rd.next_entry().await {
        let Ok(meta) = e.metadata().await else { continue };
        let name = e.file_name().to_string_lossy().to_string();
        items.push((
            name,
            meta.is_dir(),
            meta.len(),
            meta.modified().unwrap_or(std::time::UNIX_EPOCH),
        ));
    }
    items.sort_by(|a, b| (!a.1, &a.0).cmp(&(!b.1, &b.0)));
    let mut html = String::with_capacity(items.len() * 120 + 256);
    let title = esc(url_path);
    match style {
        ListingStyle::Nginx => {
            html.push_str(&format!("<html>\r\n<head><title>Index of {title}</title></head>\r\n<body>\r\n<h1>Index of {title}</h1><hr><pre><a href=\"../\">../</a>\r\n"));
            for (name, is_dir, len, mtime) in &items {
                let slash = if *is_dir { "/" } else { "" };
                let date = nginx_date(*mtime);
                let size = if *is_dir { "-".to_string() } else { len.to_string() };
                html.push_str(&format!(
                    "<a href=\"{}{slash}\">{}{slash}</a> {:>30} {:>19}\r\n",
                    href(name),
                    esc(name),
                    date,
                    size
                ));
            }
            html.push_str("</pre><hr></body>\r\n</html>\r\n");
        }
        ListingStyle::Apache => {
            html.push_str("<table><tr><th><a href=\"?C=N;O=D\">Name</a></th><th><a href=\"?C=S;O=A\">Size</a></th></tr>\n<tr><td><a href=\"../\">Parent Directory</a></td></tr>\n");
            for (name, is_dir, len, _) in &items {
                let slash = if *is_dir { "/" } else { "" };
                let size = if *is_dir {
                    "-".to_string()
                } else {
                    format!("{:.1}K", *len as f64 / 1024.0)
                };
                html.push_str(&format!(
                    "<tr><td><a href=\"{}{slash}\">{}{slash}</a></td><td align=\"right\">{size}</td></tr>\n",
                    href(name),
                    esc(name)
                ));
            }
            html.push_str("</table>\n");
        }
        ListingStyle::Python => {
            html.push_str(&format!(
                "<!DOCTYPE HTML>\n<html><body><h1>Directory listing for {title}</h1><hr><ul>\n"
            ));
            for (name, is_dir, _, _) in &items {
                let slash = if *is_dir { "/" } else { "" };
                html.push_str(&format!(
                    "<li><a href=\"{}{slash}\">{}{slash}</a></li>\n",
                    href(name),
                    esc(name)
                ));
            }
            html.push_str("</ul><hr></body></html>\n");
        }
    }
    ([(header::CONTENT_TYPE, "text/html")], html).into_response()
}

fn nginx_date(t: std::time::SystemTime) -> String {
    // "Sun, 22 Nov 2026 00:12:42 GMT" -> "22-Nov-2026 00:12"
    let s = httpdate::fmt_http_date(t);
    let p: Vec<&str> = s.split_whitespace().collect();
    format!("{}-{}-{} {}", p[1], p[2], p[3], &p[4][..5])
}

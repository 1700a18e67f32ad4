//! Entry points for the `cargo fuzz` targets in `fuzz/` (not a stable API).
//!
//! Each function feeds one input to a parser the daemon runs on untrusted data (HTML listings,
//! JSON answers, headers, names, the config file) and asserts the properties the rest of the
//! code relies on, so the fuzzer finds wrong results as well as panics. They live in the crate
//! because most of the parsers are private to their provider; the fuzz targets are thin.

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, HeaderMap, HeaderValue};
use serde_json::Value;
use url::Url;

use crate::fs::name::{NAME_MAX, check, check_source_name};
use crate::http::auth::TokenCache;
use crate::http::range::{self, BodyPlan};
use crate::provider::{autoindex, b2, doris, huawei, onedata, smh};
use crate::source::{Checksum, Entry, EntryKind};

/// The directory the autoindex targets list.
pub const AUTOINDEX_BASE: &str = "http://127.0.0.1:8080/data/";

/// `autoindex::parse`: every link is a valid, unique, direct child of the listed directory.
pub fn autoindex(html: &str) {
    let base = Url::parse(AUTOINDEX_BASE).unwrap();
    let (links, skipped) = autoindex::parse(html, &base);
    let mut seen = HashSet::new();
    for l in &links {
        assert!(check(&l.name).is_ok(), "invalid name {:?}", l.name);
        assert!(seen.insert(l.name.clone()), "duplicate {:?}", l.name);
        assert_eq!(l.url.host_str(), base.host_str());
        assert_eq!(l.url.port_or_known_default(), base.port_or_known_default());
        let rest = l.url.path().strip_prefix(base.path()).expect("child of the base");
        let seg = rest.strip_suffix('/').unwrap_or(rest);
        assert!(!seg.is_empty() && !seg.contains('/'), "not a direct child: {}", l.url);
        assert_eq!(l.is_dir, l.url.path().ends_with('/'));
        assert!(l.url.query().is_none() && l.url.fragment().is_none());
        if l.is_dir {
            assert_eq!(l.size, None);
        }
    }
    for s in &skipped {
        assert!(s.href.chars().count() <= 200);
    }
}

/// `parse_content_range`: a parsed value is consistent, and the values the client writes
/// read back.
pub fn content_range(text: &str, a: u64, len: u64, total: u64) {
    if let Some(cr) = range::parse_content_range(text) {
        assert!(cr.span.is_some() || cr.total.is_some());
        if let Some((first, last)) = cr.span {
            assert!(first <= last, "{text:?}");
            if let Some(t) = cr.total {
                assert!(last < t, "{text:?}");
            }
        }
    }
    // What a server writes for a range of an object of `total` bytes parses back exactly.
    let len = len.max(1);
    if let Some(end) = a.checked_add(len)
        && end <= total
    {
        let r = a..end;
        let header = range::header_value(&r);
        assert_eq!(header, format!("bytes={}-{}", a, end - 1));
        let cr = range::parse_content_range(&format!("bytes {}-{}/{total}", a, end - 1));
        assert_eq!(
            cr,
            Some(range::ContentRange {
                span: Some((a, end - 1)),
                total: Some(total)
            })
        );
    }
}

/// Runs `range::cut` over `body` split at `splits`; `Err` when the cut stream failed.
fn run_cut(body: &[u8], splits: &[u16], plan: BodyPlan) -> Result<Vec<u8>, String> {
    let mut chunks = Vec::new();
    let mut rest = body;
    for s in splits {
        if rest.is_empty() {
            break;
        }
        let n = (*s as usize % (rest.len() + 1)).max(1);
        chunks.push(Ok(Bytes::copy_from_slice(&rest[..n])));
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        chunks.push(Ok(Bytes::copy_from_slice(rest)));
    }
    let stream = futures_util::stream::iter(chunks).boxed();
    let items: Vec<_> = range::cut(stream, plan)
        .collect::<Vec<_>>()
        .now_or_never()
        .expect("an in-memory stream is always ready");
    let mut out = Vec::new();
    for item in items {
        match item {
            Ok(b) => out.extend_from_slice(&b),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(out)
}

/// A server's answer to `Range: bytes=requested`, for [`range_plan`].
pub struct RangeAnswer<'a> {
    pub status: u16,
    pub content_length: Option<&'a str>,
    pub content_range: Option<&'a str>,
    pub body: &'a [u8],
}

/// `range::plan` + `range::cut` against any answer: never a byte outside the requested range,
/// exactly the requested count or an error; and against an honest server (`honest` = the
/// object's bytes), exactly the object's bytes.
pub fn range_plan(requested: Range<u64>, expected: Option<u64>, answer: &RangeAnswer, splits: &[u16]) {
    if requested.is_empty() {
        return;
    }
    let Ok(status) = StatusCode::from_u16(answer.status) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for (name, v) in [
        (CONTENT_LENGTH, answer.content_length),
        (CONTENT_RANGE, answer.content_range),
    ] {
        if let Some(v) = v {
            let Ok(hv) = HeaderValue::from_str(v) else { return };
            headers.insert(name, hv);
        }
    }
    let want = requested.end - requested.start;
    let Ok(plan) = range::plan(status, &headers, &requested, expected) else {
        return;
    };
    assert_eq!(plan.take, want, "plan takes other than the requested count");
    match status.as_u16() {
        206 => assert_eq!(plan.skip, 0),
        200 => assert_eq!(plan.skip, requested.start),
        s => panic!("status {s} planned as a body"),
    }
    match run_cut(answer.body, splits, plan) {
        Ok(out) => {
            assert_eq!(out.len() as u64, want, "cut yielded a different count");
            let skip = plan.skip as usize;
            assert_eq!(&out[..], &answer.body[skip..skip + want as usize]);
        }
        Err(_) => assert!((answer.body.len() as u64) < plan.skip + plan.take),
    }
}

/// An honest server holding `object`: 200 with the whole object, or 206 with exactly the asked
/// span (clipped at EOF). The read returns the object's bytes or, past EOF, an error.
pub fn range_honest(object: &[u8], requested: Range<u64>, partial: bool, splits: &[u16]) {
    if requested.is_empty() {
        return;
    }
    let size = object.len() as u64;
    let mut headers = HeaderMap::new();
    let (status, body): (StatusCode, &[u8]) = if partial {
        if requested.start >= size {
            headers.insert(
                CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).unwrap(),
            );
            (StatusCode::RANGE_NOT_SATISFIABLE, &[])
        } else {
            let end = requested.end.min(size);
            let cr = format!("bytes {}-{}/{size}", requested.start, end - 1);
            headers.insert(CONTENT_RANGE, HeaderValue::from_str(&cr).unwrap());
            (
                StatusCode::PARTIAL_CONTENT,
                &object[requested.start as usize..end as usize],
            )
        }
    } else {
        (StatusCode::OK, object)
    };
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len() as u64));
    let result = range::plan(status, &headers, &requested, Some(size))
        .map_err(|e| e.to_string())
        .and_then(|plan| run_cut(body, splits, plan));
    if requested.end <= size {
        let out = result.expect("an honest answer inside the object reads");
        assert_eq!(&out[..], &object[requested.start as usize..requested.end as usize]);
    } else {
        assert!(result.is_err(), "a read past EOF must fail, not invent bytes");
    }
}

/// `fs::name::check`: accepted exactly when the kernel can take the name.
pub fn name(n: &str) {
    let valid = !n.is_empty() && n != "." && n != ".." && n.len() <= NAME_MAX && !n.contains('/') && !n.contains('\0');
    assert_eq!(check(n).is_ok(), valid, "{n:?}");
    assert_eq!(check_source_name(n).is_ok(), valid && !n.starts_with('.'), "{n:?}");
}

const B2_SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Percent-encoding round trips: what one side encodes, the other decodes to the same string.
pub fn percent(s: &str, raw: &str) {
    use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
    // B2 (§1.11): every byte as %XX, the minimal form, and the minimal form with `+` for space.
    let all: String = s.bytes().map(|b| format!("%{b:02X}")).collect();
    assert_eq!(b2::api::decode_header_value(&all), s);
    let minimal = utf8_percent_encode(s, B2_SET).to_string();
    assert_eq!(b2::api::decode_header_value(&minimal), s);
    const B2_PLUS: &percent_encoding::AsciiSet = &B2_SET.remove(b' ');
    let plus = utf8_percent_encode(s, B2_PLUS).to_string().replace(' ', "+");
    assert_eq!(b2::api::decode_header_value(&plus), s);
    // Any input decodes without panicking, to at most as many bytes.
    assert!(b2::api::decode_header_value(raw).len() <= raw.len() * 3);
    // Doris directory handles carry database and catalog names.
    for d in [
        doris::Dir::Db(s.to_string()),
        doris::Dir::Catalog(s.to_string(), raw.to_string()),
    ] {
        assert_eq!(doris::Dir::parse(&d.remote()), Some(d));
    }
    let _ = doris::Dir::parse(raw);
    // SMH paths and Onedata segments.
    let path = smh::encode_path(s);
    assert_eq!(percent_decode_str(&path).decode_utf8().unwrap(), s);
    assert_eq!(path.matches('/').count(), s.matches('/').count());
    let seg = onedata::enc(s);
    assert!(!seg.contains('/'));
    assert_eq!(percent_decode_str(&seg).decode_utf8().unwrap(), s);
    // An autoindex link to a valid name comes back as that name, file or directory.
    if check(s).is_ok() {
        let href = utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
        let html = format!("<a href=\"{href}\">x</a><a href=\"{href}/\">y</a>");
        let base = Url::parse(AUTOINDEX_BASE).unwrap();
        let (links, _) = autoindex::parse(&html, &base);
        // Same name twice: the first (file) wins.
        assert_eq!(links.len(), 1, "{s:?} -> {html}");
        assert_eq!(links[0].name, s);
        assert!(!links[0].is_dir);
    }
}

/// A symlink target must stay inside the mount: relative, and never climbing above the root
/// from the link at `link_path`.
fn assert_target_inside(link_path: &str, target: &str) {
    assert!(!target.starts_with('/'), "absolute target {target:?}");
    let mut depth = link_path.split('/').filter(|s| !s.is_empty()).count() as i64 - 1;
    for seg in target.split('/') {
        match seg {
            "" | "." => {}
            ".." => depth -= 1,
            _ => depth += 1,
        }
        assert!(depth >= 0, "target {target:?} of {link_path:?} leaves the mount");
    }
}

/// Checks an entry the way the core relies on it.
fn assert_entry(e: &Entry) {
    if let Some(m) = e.mode {
        assert_eq!(m & 0o222, 0, "write bits shown");
    }
    if e.kind == EntryKind::Symlink
        && let Some(t) = &e.symlink_target
    {
        assert_eq!(e.size, t.len() as u64);
    }
    assert!(e.mtime >= SystemTime::UNIX_EPOCH);
}

/// A token lifetime from a server becomes an expiry without overflowing and is reused.
fn token_ttl(ttl: Option<Duration>, margin: Duration) {
    let cache: TokenCache<u32> = TokenCache::new(margin);
    for _ in 0..2 {
        let tok = cache
            .get(|| async move { Ok((7u32, ttl)) })
            .now_or_never()
            .expect("an uncontended cache is ready")
            .expect("fetch succeeds");
        assert_eq!(tok.value, 7);
    }
}

/// B2 `b2_list_file_names`/`b2_list_file_versions` pages, authorization and error bodies.
pub fn b2_json(data: &[u8]) {
    if let Ok(page) = serde_json::from_slice::<b2::api::FilePage>(data) {
        let v: Value = serde_json::from_slice(data).unwrap_or_default();
        let prefix = v.get("prefix").and_then(Value::as_str).unwrap_or("");
        for versions in [false, true] {
            let entries = b2::entries_from_listing("bucket", prefix, &page.files, versions);
            let dirs: HashSet<&str> = entries
                .iter()
                .filter(|e| e.kind == EntryKind::Dir)
                .map(|e| e.name.as_str())
                .collect();
            let mut files = HashSet::new();
            for e in &entries {
                assert!(!e.name.is_empty());
                assert_entry(e);
                if e.kind == EntryKind::File {
                    assert!(!dirs.contains(e.name.as_str()), "file {:?} hides a directory", e.name);
                    files.insert(e.name.as_str());
                }
            }
            assert_eq!(
                entries.iter().filter(|e| e.name == ".versions").count() as u64,
                u64::from(versions && entries.iter().any(|e| e.name == ".versions"))
            );
        }
        for f in &page.files {
            let n = b2::version_name(f);
            assert!(check(&n).is_ok(), "version name {n:?}");
            let _ = (f.mtime(), f.sha1(), f.size(), f.info(), f.encryption());
        }
    }
    if let Ok(v) = serde_json::from_slice::<Value>(data)
        && let Ok(a) = b2::api::parse_authorization(&v)
    {
        assert!(matches!(a.api_url.scheme(), "http" | "https"));
        assert!(matches!(a.download_url.scheme(), "http" | "https"));
    }
    if let Ok(e) = serde_json::from_slice::<b2::api::ErrorBody>(data) {
        for s in [400, 401, 403, 404, 416, 503] {
            let status = StatusCode::from_u16(s).unwrap();
            let _ = b2::api::is_reauth(status, Some(&e));
            let _ = b2::api::map_error("x", status, Some(&e));
        }
    }
}

/// Onedata children pages, attributes and error bodies.
pub fn onedata_json(data: &[u8]) {
    if let Ok(page) = serde_json::from_slice::<onedata::Page>(data) {
        for c in &page.children {
            if let Some(a) = onedata::Attrs::from_json(c) {
                let e = a.entry("space");
                assert_entry(&e);
                if let Some(m) = e.mode {
                    assert!(m <= 0o777);
                }
            }
        }
        let _ = (page.is_last, page.next_page_token);
    }
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        if let Some(a) = onedata::Attrs::from_json(&v) {
            assert_entry(&a.entry("space"));
        }
        let _ = onedata::parse_mode(&v);
    }
    for s in [301, 400, 401, 403, 404, 500] {
        let _ = onedata::api_error(s, data, "x");
    }
}

/// SMH listing pages, `?info` items, token answers, error bodies and times.
pub fn smh_json(data: &[u8]) {
    if let Ok(page) = serde_json::from_slice::<smh::Page>(data) {
        for dir in ["", "a", "a/b/c"] {
            for item in &page.contents {
                let path = if dir.is_empty() {
                    item.name.clone()
                } else {
                    format!("{dir}/{}", item.name)
                };
                let e = smh::entry_of(item, &item.name, &path, String::new());
                assert_entry(&e);
                if let Some(t) = &e.symlink_target {
                    assert_target_inside(&path, t);
                }
            }
        }
        let _ = page.next_marker;
    }
    if let Ok(tok) = serde_json::from_slice::<smh::TokenResponse>(data) {
        token_ttl(tok.expires_in.map(Duration::from_secs), Duration::from_secs(30));
    }
    let e = smh::ErrorBody::parse(data);
    let _ = e.into_error("x", StatusCode::FORBIDDEN);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = smh::parse_time(s);
    }
}

/// Doris `SHOW FILE` result sets and FE error bodies.
pub fn doris_json(data: &[u8]) {
    if let Some(e) = doris::parse_error(data) {
        assert_ne!(e.code, 0);
        let _ = e.into_source_error("x");
    }
    if let Ok(rows) = doris::parse_result_set(data) {
        for r in &rows {
            if let Ok(f) = doris::small_file(r) {
                let _ = Checksum::md5_hex(&f.md5);
                let d = doris::Dir::Catalog(f.db.clone(), f.catalog.clone());
                assert_eq!(doris::Dir::parse(&d.remote()), Some(d));
            }
        }
    }
}

/// Huawei HSS export-task records, error bodies and IAM token lifetimes.
pub fn huawei_json(data: &[u8]) {
    let _ = huawei::parse_error(data);
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        if let Ok(huawei::TaskState::Done(f)) = huawei::parse_task("t1", &v) {
            assert!(!f.file_id.is_empty() && !f.file_name.is_empty());
        }
        let life = huawei::token_lifetime(&v);
        let keep = life.map(huawei::keep_for);
        if let (Some(l), Some(k)) = (life, keep) {
            assert!(k <= l);
        }
        token_ttl(keep, Duration::ZERO);
    }
}

/// The config file: TOML → `ConfigFile` → `Config`, and the quick URL forms. What validates
/// holds together, and every duration can be used as a deadline.
pub fn config(text: &str) {
    let _ = crate::config::parse_size(text);
    let _ = crate::config::parse_duration(text);
    let _ = crate::provider::from_url(text, "x");
    let Ok(file) = crate::config::ConfigFile::parse(text) else {
        return;
    };
    let Ok(c) = file.validate(Path::new("/etc/fetchfs")) else {
        return;
    };
    let k = &c.cache;
    assert!(k.block_size.is_power_of_two() && (4096..=64 << 20).contains(&k.block_size));
    assert!(k.memory >= 8 * k.block_size);
    assert!(k.max_window <= k.memory / 2);
    assert!(k.request_size >= k.block_size);
    assert!(k.disk >= k.block_size);
    assert!(k.dir.as_ref().is_none_or(|d| d.is_absolute()));
    assert_eq!(c.file_mode & !0o7555, 0);
    assert_eq!(c.dir_mode & !0o7555, 0);
    assert!(c.http.max_attempts >= 1);
    assert!(!c.http.op_timeout.is_zero());
    let now = Instant::now();
    for d in [
        c.ttl,
        c.negative_ttl,
        c.http.connect_timeout,
        c.http.request_timeout,
        c.http.stall_timeout,
        c.http.op_timeout,
    ] {
        // The daemon computes `now + timeout (+ 5 s of slack)` deadlines from these.
        assert!(
            d.checked_add(Duration::from_secs(5))
                .and_then(|d| now.checked_add(d))
                .is_some(),
            "{d:?} cannot be a deadline"
        );
    }
    let mut names = HashSet::new();
    for s in &c.sources {
        assert!(check_source_name(s.name()).is_ok());
        assert!(names.insert(s.name().to_string()));
    }
}

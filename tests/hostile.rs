//! Hostile input (issue 8 item 3): servers that send odd names, huge or broken listings, lying
//! `Content-Range` headers, too many or too few bytes, redirect loops and redirects to another
//! host, and provider JSON with wrong types or missing fields. The contract checked everywhere:
//! a clear error or a skipped entry with a warning — never a panic, a wrong byte, a hang, or
//! unbounded memory, and never a credential sent to another host.
//!
//! The plain-HTTP cases run against [`RawServer`], a tiny HTTP/1.1 server on a raw TCP socket
//! whose every byte on the wire is chosen by the test (hyper would fix up lengths). The provider
//! cases put [`Proxy`] in front of each provider's own emulator and rewrite its JSON answers.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fetchfs::http::HttpOptions;
use fetchfs::provider::BuildContext;
use fetchfs::source::{Entry, EntryKind, OpenRequest, Source, read_all};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 server: one request per connection, the answer's bytes chosen by the test.

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    /// The request body (lossy), for requests with a Content-Length.
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// `bytes=a-b` of the request as a half-open range.
    fn range(&self) -> Option<std::ops::Range<u64>> {
        let v = self.header("range")?.strip_prefix("bytes=")?;
        let (a, b) = v.split_once('-')?;
        Some(a.parse().ok()?..b.parse::<u64>().ok()? + 1)
    }
}

/// What to write back: a head (status line + headers, without the blank line) and a body,
/// possibly repeated `times` times so huge bodies cost the server no memory.
struct Reply {
    head: String,
    body: Vec<u8>,
    times: usize,
}

impl Reply {
    fn new(status: &str, headers: &[(&str, String)], body: impl Into<Vec<u8>>) -> Reply {
        let mut head = format!("HTTP/1.1 {status}\r\nconnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        Reply {
            head,
            body: body.into(),
            times: 1,
        }
    }
    /// A 200 HTML page with a correct Content-Length.
    fn html(body: impl Into<Vec<u8>>) -> Reply {
        let body = body.into();
        Reply::new(
            "200 OK",
            &[
                ("content-type", "text/html".into()),
                ("content-length", body.len().to_string()),
            ],
            body,
        )
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

struct RawServer {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawServer {
    async fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> RawServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let (handler, seen) = (handler.clone(), s2.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 << 10 {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map_or(buf.len(), |p| p + 4);
                    let text = String::from_utf8_lossy(&buf[..end]).to_string();
                    let mut lines = text.split("\r\n");
                    let mut first = lines.next().unwrap_or("").split(' ');
                    let req = Seen {
                        method: first.next().unwrap_or("").to_string(),
                        target: first.next().unwrap_or("").to_string(),
                        headers: lines
                            .take_while(|l| !l.is_empty())
                            .filter_map(|l| l.split_once(':'))
                            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                            .collect(),
                        body: String::new(),
                    };
                    let mut req = req;
                    if let Some(len) = req.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
                        let mut body = buf[end..].to_vec();
                        while body.len() < len.min(1 << 20) {
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => body.extend_from_slice(&chunk[..n]),
                            }
                        }
                        req.body = String::from_utf8_lossy(&body).to_string();
                    }
                    seen.lock().unwrap().push(req.clone());
                    let reply = handler(&req);
                    let mut out = reply.head.into_bytes();
                    out.extend_from_slice(b"\r\n");
                    if sock.write_all(&out).await.is_err() || req.method == "HEAD" {
                        return;
                    }
                    for _ in 0..reply.times {
                        if sock.write_all(&reply.body).await.is_err() {
                            return;
                        }
                    }
                    let _ = sock.shutdown().await;
                });
            }
        });
        RawServer { base, seen, task }
    }

    fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn ctx() -> BuildContext {
    BuildContext {
        http: HttpOptions {
            backoff_base: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
            max_attempts: 2,
            op_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            ..HttpOptions::default()
        },
        base_dir: ".".into(),
        block_size: 64 << 10,
        disk_cache: false,
    }
}

/// Builds the source and lists its root, as a mount does.
async fn http_mount(url: &str, extra: &str) -> Result<(Arc<dyn Source>, Entry), String> {
    let src = http_source(url, extra).await?;
    let root = src.root().await.map_err(|e| e.to_string())?;
    Ok((src, root))
}

async fn http_source(url: &str, extra: &str) -> Result<Arc<dyn Source>, String> {
    let text = format!("[[source]]\nname = \"s\"\ntype = \"http\"\nurl = \"{url}\"\n{extra}\n");
    let cfg = fetchfs::config::ConfigFile::parse(&text)
        .unwrap()
        .validate(std::path::Path::new("."))
        .unwrap();
    fetchfs::provider::build(&cfg.sources[0], &ctx())
        .await
        .map_err(|e| e.to_string())
}

/// An nginx-style listing line with an exact size.
fn nginx_line(href: &str, text: &str, size: Option<u64>) -> String {
    let size = size.map_or("-".to_string(), |s| s.to_string());
    format!("<a href=\"{href}\">{text}</a>                 21-Nov-2026 22:00    {size}\n")
}

fn nginx_page(lines: &str) -> String {
    format!(
        "<html><head><title>Index of /</title></head><body><pre><a href=\"../\">../</a>\n{lines}</pre></body></html>"
    )
}

/// Deterministic content of file `name` (`len` bytes).
fn content(name: &str, len: usize) -> Vec<u8> {
    common::pseudo_random(
        len,
        name.bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)),
    )
}

/// Serves a file honestly (ranges, HEAD), the way `reply` decides for the non-honest cases.
fn honest_file(req: &Seen, data: &[u8]) -> Reply {
    match req.range() {
        Some(r) if r.start < data.len() as u64 => {
            let end = r.end.min(data.len() as u64);
            Reply::new(
                "206 Partial Content",
                &[
                    ("content-length", (end - r.start).to_string()),
                    ("content-range", format!("bytes {}-{}/{}", r.start, end - 1, data.len())),
                    ("etag", "\"v1\"".into()),
                ],
                data[r.start as usize..end as usize].to_vec(),
            )
        }
        _ => Reply::new(
            "200 OK",
            &[("content-length", data.len().to_string()), ("etag", "\"v1\"".into())],
            data.to_vec(),
        ),
    }
}

fn names(entries: &[Entry]) -> Vec<String> {
    let mut v: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
    v.sort();
    v
}

async fn read_entry(src: &dyn Source, e: &Entry, range: std::ops::Range<u64>) -> fetchfs::error::Result<Vec<u8>> {
    let o = src
        .open(
            e,
            &OpenRequest {
                block_size: 64 << 10,
                revalidate: false,
            },
        )
        .await?;
    Ok(read_all(&*o.reader, range).await?.to_vec())
}

/// The hostile names of one listing, as hrefs, and the names the mount must show in their place.
fn hostile_listing() -> (String, Vec<String>) {
    let long = "n".repeat(300);
    let max = "m".repeat(255);
    let mut lines = String::new();
    for (href, size) in [
        ("ok.txt", Some(5)),
        ("a%2Fb", Some(5)),                  // '/' inside a name
        ("nul%00x", Some(5)),                // NUL
        (".", None),                         // the directory itself
        ("..", None),                        // the parent
        ("%2E%2E/", None),                   // '..' percent-encoded: the parent too
        ("..%2F..%2Fetc%2Fpasswd", Some(5)), // traversal inside one segment
        (&long, Some(5)),                    // 300 bytes
        (&max, Some(5)),                     // exactly NAME_MAX
        ("bad%FF%FE", Some(5)),              // invalid UTF-8
        ("ctl%01%1B%5B31m", Some(5)),        // control bytes (allowed, documented in fs/name.rs)
        ("dup", Some(5)),
        ("dup", Some(7)), // the same name twice: the first wins
        ("same", Some(5)),
        ("same/", None), // a file and a directory with one name: the first wins
        ("sub/", None),
    ] {
        lines.push_str(&nginx_line(href, "x", size));
    }
    let want = ["ok.txt", &max, "ctl\u{1}\u{1b}[31m", "dup", "same", "sub"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    (nginx_page(&lines), want)
}

fn hostile_server_handler(req: &Seen, page: &str) -> Reply {
    let path = req.target.split('?').next().unwrap_or("");
    if path == "/" || path == "/sub/" {
        return Reply::html(page.to_string());
    }
    let name = percent_encoding::percent_decode_str(path.trim_start_matches('/'))
        .decode_utf8_lossy()
        .to_string();
    // Every file is 5 bytes; the second `dup` line of the listing (7) is the lie.
    honest_file(req, &content(&name, 5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_in_an_autoindex_are_skipped_and_the_rest_is_listed_and_readable() {
    let (page, want) = hostile_listing();
    let server = RawServer::start(move |r| hostile_server_handler(r, &page)).await;
    let src = http_source(&format!("{}/", server.base), "").await.unwrap();
    let root = src.root().await.unwrap();
    let entries = src.list(&root).await.unwrap();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(names(&entries), want_sorted);
    let same = entries.iter().find(|e| e.name == "same").unwrap();
    assert_eq!(same.kind, EntryKind::File, "the first of two same-named entries wins");
    let dup = entries.iter().find(|e| e.name == "dup").unwrap();
    assert_eq!(dup.size, 5, "the first of two duplicates wins");
    for e in entries.iter().filter(|e| e.kind == EntryKind::File) {
        let got = read_entry(&*src, e, 0..e.size).await.unwrap();
        assert_eq!(got, content(&e.name, 5), "{:?}", e.name);
    }
    // No request ever left the listed directory (no `..`, no `/etc/passwd`).
    for r in server.requests() {
        assert!(!r.target.contains("..") && !r.target.contains("etc"), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_binary_and_truncated_listings_never_panic() {
    let mut garbage = common::pseudo_random(256 << 10, 3);
    // Bury one good link in the binary noise: markup is parsed forgivingly.
    garbage.extend_from_slice(b"<a href=\"found\">found</a>");
    garbage.extend(common::pseudo_random(1000, 4));
    let pages: Vec<Vec<u8>> = vec![
        garbage,
        b"<html><body><pre><a href=\"x\">x</a> 21-Nov-2026 22:00 5\n<a href=\"y\"".to_vec(),
        b"<a href=\"y\">y</a> 99-Foo-99999 25:61 18446744073709551616\n".to_vec(),
        "<table>".repeat(50_000).into_bytes(),
        b"<a href=\"%\">%</a><a href=\"%zz\">bad escape</a><a href=\"\xff\xfe\">raw bytes</a>".to_vec(),
        Vec::new(),
    ];
    for (i, page) in pages.into_iter().enumerate() {
        let server = RawServer::start(move |r| {
            if r.target == "/" {
                Reply::html(page.clone())
            } else {
                honest_file(r, b"12345")
            }
        })
        .await;
        let t = Instant::now();
        let src = http_source(&format!("{}/", server.base), "").await.unwrap();
        let entries = src.list(&src.root().await.unwrap()).await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(10), "page {i} took {:?}", t.elapsed());
        for e in &entries {
            assert!(fetchfs::fs::name::check(&e.name).is_ok(), "page {i}: {:?}", e.name);
        }
        if i == 0 {
            assert_eq!(names(&entries), vec!["found"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_to_parents_other_hosts_sort_orders_and_loops_are_not_entries() {
    let page = nginx_page(
        &[
            nginx_line("../", "parent", None),
            nginx_line("/", "root", None),
            nginx_line("/d/", "self absolute", None),
            nginx_line("./", "self", None),
            nginx_line("?C=M;O=A", "sort", None),
            nginx_line("?C=N;O=D", "sort", None),
            nginx_line("http://other.invalid/d/x", "other host", Some(1)),
            nginx_line("//other.invalid/d/y", "scheme-relative", Some(1)),
            nginx_line("https://127.0.0.1/d/z", "other scheme", Some(1)),
            nginx_line("javascript:alert(1)", "js", Some(1)),
            nginx_line("mailto:a@b", "mail", Some(1)),
            nginx_line("sub/../../d/", "self via sub", None),
            nginx_line("a/b/c", "grandchild", Some(1)),
            nginx_line("loop/", "loop", None),
        ]
        .concat(),
    );
    let server = RawServer::start(move |r| {
        // Every directory lists the same links: /d/loop/ links to loop/ again, endlessly deep.
        if r.target.ends_with('/') {
            Reply::html(page.clone())
        } else {
            Reply::new("404 Not Found", &[("content-length", "0".into())], "")
        }
    })
    .await;
    let src = http_source(&format!("{}/d/", server.base), "").await.unwrap();
    let root = src.root().await.unwrap();
    let mut dir = root;
    let mut remotes = BTreeSet::new();
    for depth in 0..5 {
        let entries = src.list(&dir).await.unwrap();
        assert_eq!(names(&entries), vec!["loop"], "depth {depth}");
        dir = entries.into_iter().next().unwrap();
        assert!(remotes.insert(dir.remote.clone()), "a loop came back to {}", dir.remote);
    }
    assert!(
        server.requests().iter().all(|r| r.target.starts_with("/d/")),
        "a link outside /d/ was followed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_larger_than_the_cap_fails_with_a_clear_error_and_bounded_memory() {
    // An endless listing (2 GiB announced, close-delimited): the source stops reading at its cap.
    let line = nginx_line("f", "f", Some(1)).into_bytes();
    let server = RawServer::start(move |r| {
        if r.target == "/" {
            let mut reply = Reply::new("200 OK", &[("content-type", "text/html".into())], line.clone());
            reply.times = (2usize << 30) / line.len();
            reply
        } else {
            honest_file(r, b"1")
        }
    })
    .await;
    let rss0 = rss_kib(std::process::id());
    let t = Instant::now();
    let err = http_mount(&format!("{}/", server.base), "")
        .await
        .err()
        .expect("listing accepted");
    assert!(err.contains("larger than"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    let grew = rss_kib(std::process::id()).saturating_sub(rss0);
    eprintln!(
        "listing over the cap: refused in {:?}, RSS grew {grew} KiB",
        t.elapsed()
    );
    assert!(grew < 400 << 10, "RSS grew {grew} KiB reading a capped listing");
}

/// Resident set of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Peak resident set of a process, in KiB.
fn hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Lying range answers.

const FILE_LEN: usize = 200_000;

/// How the server misbehaves on ranged reads of `/f` (reads of the first block are honest, so
/// the file opens).
#[derive(Clone, Copy, Debug)]
enum Lie {
    /// 206 whose Content-Range total differs from the real size.
    TotalSize,
    /// 206 for a range starting elsewhere than asked.
    OtherStart,
    /// 206 with the right Content-Range but more body bytes than the range.
    ExtraBytes206,
    /// 200 with the whole file and then garbage, without a Content-Length.
    LongerUnsized200,
    /// 200 with a Content-Length larger than the file.
    LongerSized200,
    /// Content-Length says the range, the connection closes halfway.
    ShortBody,
    /// A Content-Range that does not parse.
    GarbageContentRange,
    /// 206 whose Content-Range is shorter than asked but does not end at EOF.
    ShortSpan,
}

fn lying_file(req: &Seen, lie: Lie, data: &[u8]) -> Reply {
    let n = data.len();
    let Some(r) = req.range().filter(|r| r.start > 0) else {
        return honest_file(req, data);
    };
    let (a, b) = (r.start as usize, (r.end as usize).min(n));
    let part = data[a..b].to_vec();
    let cr = |s: String| ("content-range", s);
    match lie {
        Lie::TotalSize => Reply::new(
            "206 Partial Content",
            &[
                ("content-length", part.len().to_string()),
                cr(format!("bytes {a}-{}/{}", b - 1, n + 1000)),
            ],
            part,
        ),
        Lie::OtherStart => {
            let a2 = a - 1;
            Reply::new(
                "206 Partial Content",
                &[
                    ("content-length", (b - a2).to_string()),
                    cr(format!("bytes {a2}-{}/{n}", b - 1)),
                ],
                data[a2..b].to_vec(),
            )
        }
        Lie::ExtraBytes206 => {
            let mut body = part.clone();
            body.extend_from_slice(&[0xEE; 5000]);
            Reply::new(
                "206 Partial Content",
                &[
                    ("content-length", body.len().to_string()),
                    cr(format!("bytes {a}-{}/{n}", b - 1)),
                ],
                body,
            )
        }
        Lie::LongerUnsized200 => {
            let mut body = data.to_vec();
            body.extend_from_slice(&[0xEE; 5000]);
            Reply::new("200 OK", &[("etag", "\"v1\"".into())], body)
        }
        Lie::LongerSized200 => {
            let mut body = data.to_vec();
            body.extend_from_slice(&[0xEE; 5000]);
            Reply::new(
                "200 OK",
                &[("etag", "\"v1\"".into()), ("content-length", body.len().to_string())],
                body,
            )
        }
        Lie::ShortBody => Reply::new(
            "206 Partial Content",
            &[
                ("content-length", part.len().to_string()),
                cr(format!("bytes {a}-{}/{n}", b - 1)),
            ],
            part[..part.len() / 2].to_vec(),
        ),
        Lie::GarbageContentRange => Reply::new(
            "206 Partial Content",
            &[("content-length", part.len().to_string()), cr("bytes lots/many".into())],
            part,
        ),
        Lie::ShortSpan => {
            let b2 = a + (b - a) / 2;
            Reply::new(
                "206 Partial Content",
                &[
                    ("content-length", (b2 - a).to_string()),
                    cr(format!("bytes {a}-{}/{n}", b2 - 1)),
                ],
                data[a..b2].to_vec(),
            )
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_range_answers_give_the_exact_bytes_or_an_error_never_a_wrong_byte() {
    let data = content("f", FILE_LEN);
    let page = nginx_page(&nginx_line("f", "f", Some(FILE_LEN as u64)));
    let cases = [
        (Lie::TotalSize, Err(libc::ESTALE)),
        (Lie::OtherStart, Err(libc::EIO)),
        (Lie::ExtraBytes206, Ok(())),
        (Lie::LongerUnsized200, Ok(())),
        (Lie::LongerSized200, Err(libc::ESTALE)),
        (Lie::ShortBody, Err(libc::EIO)),
        (Lie::GarbageContentRange, Err(libc::EIO)),
        (Lie::ShortSpan, Err(libc::EIO)),
    ];
    for (lie, want) in cases {
        let (data2, page2) = (data.clone(), page.clone());
        let server = RawServer::start(move |r| {
            if r.target == "/" {
                Reply::html(page2.clone())
            } else {
                lying_file(r, lie, &data2)
            }
        })
        .await;
        let src = http_source(&format!("{}/", server.base), "").await.unwrap();
        let entries = src.list(&src.root().await.unwrap()).await.unwrap();
        let f = entries.iter().find(|e| e.name == "f").unwrap();
        for range in [1000..1100u64, 70_000..140_000, 150_000..FILE_LEN as u64] {
            let t = Instant::now();
            let got = read_entry(&*src, f, range.clone()).await;
            assert!(t.elapsed() < Duration::from_secs(10), "{lie:?} hung {:?}", t.elapsed());
            match (&got, want) {
                (Ok(bytes), Ok(())) => assert!(
                    bytes[..] == data[range.start as usize..range.end as usize],
                    "{lie:?} {range:?}: wrong bytes"
                ),
                (Err(e), Err(errno)) => assert_eq!(e.errno(), errno, "{lie:?} {range:?}: {e}"),
                _ => panic!(
                    "{lie:?} {range:?}: expected {want:?}, got {:?}",
                    got.as_ref().map(|b| b.len())
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Redirects.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_loops_fail_with_a_bounded_error_with_and_without_credentials() {
    let server = RawServer::start(|r| {
        // /a -> /b -> /a ...
        let next = if r.target.starts_with("/a") { "/b/" } else { "/a/" };
        Reply::new(
            "302 Found",
            &[("location", next.into()), ("content-length", "0".into())],
            "",
        )
    })
    .await;
    for extra in ["", "headers = { \"X-Api-Key\" = \"k1\" }"] {
        let t = Instant::now();
        let err = http_mount(&format!("{}/a/", server.base), extra)
            .await
            .err()
            .expect("a redirect loop mounted");
        assert!(err.contains("too many redirects"), "{extra}: {err}");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }
    assert!(
        server.requests().len() <= 2 * 12,
        "{} requests",
        server.requests().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_is_never_sent_to_another_host_by_a_redirect() {
    let trap = RawServer::start(|r| honest_file(r, b"trap!")).await;
    let trap_base = trap.base.replace("127.0.0.1", "localhost");
    let page = nginx_page(&nginx_line("f", "f", Some(5)));
    let server = RawServer::start(move |r| {
        if r.target == "/" {
            Reply::html(page.clone())
        } else {
            Reply::new(
                "307 Temporary Redirect",
                &[("location", format!("{trap_base}/f")), ("content-length", "0".into())],
                "",
            )
        }
    })
    .await;
    let src = http_source(
        &format!("{}/", server.base),
        "username = \"alice\"\npassword = \"s3cret-pw\"",
    )
    .await
    .unwrap();
    let entries = src.list(&src.root().await.unwrap()).await.unwrap();
    let err = read_entry(&*src, &entries[0], 0..5).await.unwrap_err();
    assert_eq!(err.errno(), libc::EACCES, "{err}");
    assert!(trap.requests().is_empty(), "the other host saw {:?}", trap.requests());
    assert!(server.requests().iter().all(|r| r.header("authorization").is_some()));
}

// ---------------------------------------------------------------------------------------------
// Real mounts: what users see with ls, find and cat.

/// A raw server on its own runtime, for the mount tests (the daemon is a child process).
fn mount_server(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> (tokio::runtime::Runtime, RawServer) {
    let rt = common::runtime();
    let server = rt.block_on(RawServer::start(handler));
    (rt, server)
}

#[test]
fn a_mount_lists_hostile_names_safely_and_logs_each_skipped_one() {
    if !common::can_mount() {
        return;
    }
    let (page, want) = hostile_listing();
    let (_rt, server) = mount_server(move |r| hostile_server_handler(r, &page));
    let m = common::MountGuard::start(&[&format!("{}/", server.base)]);
    let lim = Duration::from_secs(20);
    let mnt = m.mnt().display().to_string();
    // find -print0 keeps control bytes intact; the top level holds exactly the good names.
    let (ok, out, err) = common::sh(&format!("cd {mnt} && find . -maxdepth 1 -mindepth 1 -print0"), lim);
    assert!(ok, "{err}\n{}", m.log_text());
    let mut got: Vec<String> = out
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_start_matches("./").to_string())
        .collect();
    got.sort();
    let mut want = want;
    want.sort();
    assert_eq!(got, want);
    for name in want.iter().filter(|n| *n != "sub") {
        let bytes = std::fs::read(m.path(name)).unwrap_or_else(|e| panic!("{name:?}: {e}"));
        assert_eq!(bytes, content(name, 5), "{name:?}");
    }
    // The 300-byte name cannot even be asked for (ENAMETOOLONG from the kernel), `..` resolves
    // to the parent inside the mount, and an invalid name is simply absent.
    assert!(std::fs::metadata(m.path("nul")).is_err());
    let log = m.log_text();
    let skipped = log.matches("skipping a name").count();
    assert!(skipped >= 4, "expected a warning per skipped name, log:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn a_directory_of_100000_entries_lists_in_bounded_time_and_memory() {
    if !common::can_mount() {
        return;
    }
    const N: usize = 100_000;
    let mut lines = String::with_capacity(N * 80);
    for i in 0..N {
        lines.push_str(&nginx_line(&format!("f{i:06}"), &format!("f{i:06}"), Some(5)));
    }
    let page = Arc::new(nginx_page(&lines));
    let page_mb = page.len() as f64 / 1e6;
    let (_rt, server) = mount_server(move |r| {
        if r.target == "/" {
            Reply::html(page.as_bytes().to_vec())
        } else {
            honest_file(r, &content(r.target.trim_start_matches('/'), 5))
        }
    });
    let t = Instant::now();
    let m = common::MountGuard::start(&[&format!("{}/", server.base)]);
    let mount = t.elapsed();
    let mnt = m.mnt().display().to_string();
    let lim = Duration::from_secs(60);
    let t = Instant::now();
    let (ok, out, err) = common::sh(&format!("ls {mnt} | wc -l"), lim);
    let first = t.elapsed();
    assert!(ok, "{err}\n{}", m.log_text());
    assert_eq!(out.trim(), N.to_string());
    let t = Instant::now();
    let (ok, out, _) = common::sh(&format!("ls {mnt} | wc -l"), lim);
    let second = t.elapsed();
    assert!(ok && out.trim() == N.to_string());
    let t = Instant::now();
    let (ok, out, _) = common::sh(&format!("find {mnt} -type f -size 5c | wc -l"), lim);
    let find = t.elapsed();
    assert!(ok && out.trim() == N.to_string(), "{out}");
    assert_eq!(std::fs::read(m.path("f099999")).unwrap(), content("f099999", 5));
    let hwm = hwm_kib(m.pid());
    eprintln!(
        "100000 entries ({page_mb:.1} MB page): mount (fetches and parses it) {mount:?}, ls|wc -l {first:?} (again {second:?}), find -type f -size 5c {find:?}, daemon peak RSS {} MiB",
        hwm >> 10
    );
    assert!(first < Duration::from_secs(30), "{first:?}");
    assert!(hwm < 1 << 20, "daemon peak RSS {hwm} KiB");
    assert_eq!(
        server.requests().iter().filter(|r| r.target == "/").count(),
        1,
        "the listing was fetched more than once (the mount's probe is reused)"
    );
}

// ---------------------------------------------------------------------------------------------
// Providers: a proxy in front of each emulator rewrites its JSON or redirects its requests.

/// How the proxy spoils answers.
#[derive(Clone, Debug)]
enum Spoil {
    /// Forward faithfully.
    None,
    /// Remove `key` from every JSON object of every answer.
    Remove(String),
    /// Give `key` a value of another JSON type everywhere.
    Retype(String),
    /// Answer requests whose path contains `only` (if set) and not `except` (if set) with a
    /// redirect (`status`) to the same path on `to`.
    Redirect {
        to: String,
        status: u16,
        only: Option<String>,
        except: Option<String>,
    },
}

#[derive(Default)]
struct ProxyLog {
    /// Every JSON key seen in answers.
    keys: BTreeSet<String>,
    /// Credential values seen in requests (headers and query parameters).
    secrets: BTreeSet<String>,
}

struct Proxy {
    base: String,
    spoil: Arc<Mutex<Spoil>>,
    log: Arc<Mutex<ProxyLog>>,
    _server: fetchfs::emulate::Server,
}

fn walk_json(v: &mut serde_json::Value, f: &mut dyn FnMut(&mut serde_json::Map<String, serde_json::Value>)) {
    match v {
        serde_json::Value::Object(m) => {
            f(m);
            for (_, c) in m.iter_mut() {
                walk_json(c, f);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|c| walk_json(c, f)),
        _ => {}
    }
}

fn other_type(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::{Value, json};
    match v {
        Value::String(_) => json!(12345),
        Value::Number(_) => json!("not a number"),
        Value::Bool(_) => json!("yes"),
        Value::Array(_) => json!({"not": "a list"}),
        Value::Object(_) => json!(["not", "an", "object"]),
        Value::Null => json!(7),
    }
}

const CREDENTIAL_HEADERS: [&str; 3] = [
    "authorization",
    "x-auth-token",
    "x-bz-server-side-encryption-customer-key",
];
const CREDENTIAL_PARAMS: [&str; 2] = ["access_token", "token"];

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        use axum::body::Body;
        use axum::extract::Request;
        use axum::response::Response;
        let spoil = Arc::new(Mutex::new(Spoil::None));
        let log = Arc::new(Mutex::new(ProxyLog::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let (sp, lg, up, me) = (spoil.clone(), log.clone(), upstream.clone(), base.clone());
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .unwrap();
        let handler = move |req: Request| {
            let (sp, lg, up, me, client) = (sp.clone(), lg.clone(), up.clone(), me.clone(), client.clone());
            async move {
                let spoil = sp.lock().unwrap().clone();
                let (parts, body) = req.into_parts();
                let target = parts.uri.path_and_query().map_or("/".to_string(), |p| p.to_string());
                {
                    let mut l = lg.lock().unwrap();
                    for h in CREDENTIAL_HEADERS {
                        if let Some(v) = parts.headers.get(h).and_then(|v| v.to_str().ok()) {
                            l.secrets
                                .insert(v.trim_start_matches("Basic ").trim_start_matches("Bearer ").to_string());
                        }
                    }
                    if let Ok(u) = url::Url::parse(&format!("{me}{target}")) {
                        for (k, v) in u.query_pairs() {
                            if CREDENTIAL_PARAMS.contains(&k.as_ref()) {
                                l.secrets.insert(v.to_string());
                            }
                        }
                    }
                }
                if let Spoil::Redirect {
                    to,
                    status,
                    only,
                    except,
                } = &spoil
                    && only.as_ref().is_none_or(|o| parts.uri.path().contains(o.as_str()))
                    && except.as_ref().is_none_or(|e| !parts.uri.path().contains(e.as_str()))
                {
                    return Response::builder()
                        .status(*status)
                        // The path only: a query may hold a secret the server already has.
                        .header("location", format!("{to}{}", parts.uri.path()))
                        .body(Body::empty())
                        .unwrap();
                }
                let body = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
                let mut rb = client.request(parts.method.clone(), format!("{up}{target}"));
                for (k, v) in parts.headers.iter() {
                    if k != "host" && k != "content-length" {
                        rb = rb.header(k, v);
                    }
                }
                let resp = match rb.body(body).send().await {
                    Ok(r) => r,
                    Err(_) => return Response::builder().status(502).body(Body::empty()).unwrap(),
                };
                let status = resp.status();
                let headers = resp.headers().clone();
                let bytes = resp.bytes().await.unwrap_or_default();
                let mut out = Response::builder().status(status.as_u16());
                for (k, v) in headers.iter() {
                    if ["content-length", "transfer-encoding", "connection"].contains(&k.as_str()) {
                        continue;
                    }
                    if k == "location" {
                        out = out.header(k, v.to_str().unwrap_or("").replace(&up, &me));
                    } else {
                        out = out.header(k, v);
                    }
                }
                let is_json = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|c| c.contains("json"));
                let body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
                    Ok(mut v) if is_json => {
                        walk_json(&mut v, &mut |m| {
                            lg.lock().unwrap().keys.extend(m.keys().cloned());
                            match &spoil {
                                Spoil::Remove(k) => {
                                    m.remove(k);
                                }
                                Spoil::Retype(k) => {
                                    if let Some(x) = m.get_mut(k) {
                                        *x = other_type(x);
                                    }
                                }
                                _ => {}
                            }
                        });
                        serde_json::to_vec(&v).unwrap().into()
                    }
                    _ => bytes,
                };
                let body = match std::str::from_utf8(&body) {
                    Ok(s) if s.contains(&up) => s.replace(&up, &me).into_bytes().into(),
                    _ => body,
                };
                out.body(Body::from(body)).unwrap()
            }
        };
        let router = axum::Router::new().fallback(handler);
        let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
        let server = fetchfs::emulate::serve(router, port, fetchfs::emulate::Harness::default())
            .await
            .unwrap();
        Proxy {
            base,
            spoil,
            log,
            _server: server,
        }
    }
}

/// A provider's demo emulator behind a proxy, and its config pointed at the proxy.
async fn provider_behind_proxy(
    kind: &str,
    dir: &std::path::Path,
) -> (fetchfs::emulate::Server, Proxy, fetchfs::config::SourceConfig) {
    use fetchfs::config::SourceConfig as C;
    use fetchfs::emulate as e;
    // One SSE-C file in the B2 bucket (written before the emulator reads its tree), so the
    // customer key travels in headers too.
    let sse_key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    if kind == "b2" {
        std::fs::create_dir_all(dir.join("b2/demo-bucket")).unwrap();
        std::fs::write(dir.join("b2/demo-bucket/enc.txt"), "sse-c secret").unwrap();
        std::fs::write(dir.join("b2/demo-bucket/enc.txt.b2ssec"), sse_key).unwrap();
        std::fs::write(dir.join("sse-c.key"), sse_key).unwrap();
    }
    let (server, mut cfg) = match kind {
        "b2" => e::b2::demo(dir).await,
        "onedata" => e::onedata::demo(dir).await,
        "smh" => e::smh::demo(dir).await,
        "doris" => e::doris::demo(dir).await,
        "huawei" => e::huawei::demo(dir).await,
        _ => unreachable!(),
    }
    .unwrap();
    let proxy = Proxy::start(server.base_url()).await;
    let p = proxy.base.clone();
    match &mut cfg {
        C::B2(c) => {
            c.endpoint = Some(p);
            c.sse_c_key_file = Some(dir.join("sse-c.key"));
        }
        C::Onedata(c) => c.endpoint = p,
        C::Smh(c) => c.endpoint = Some(p),
        C::Doris(c) => c.endpoint = p,
        C::Huawei(c) => {
            c.endpoint = p.clone();
            c.iam_endpoint = Some(p);
        }
        C::Http(_) => unreachable!(),
    }
    (server, proxy, cfg)
}

/// What a walk of a source saw: path → (size, bytes read) and the errors met.
#[derive(Default, Debug)]
struct Walk {
    files: std::collections::BTreeMap<String, (u64, Vec<u8>)>,
    errors: Vec<(String, i32, String)>,
}

/// Mounts `cfg` in-process and reads everything (the first 64 KiB of each file), three levels deep.
async fn walk(cfg: &fetchfs::config::SourceConfig) -> Walk {
    let mut w = Walk::default();
    let src = match fetchfs::provider::build(cfg, &ctx()).await {
        Ok(s) => s,
        Err(e) => {
            w.errors.push(("build".into(), 0, e.to_string()));
            return w;
        }
    };
    let root = match src.root().await {
        Ok(r) => r,
        Err(e) => {
            w.errors.push(("root".into(), e.errno(), e.to_string()));
            return w;
        }
    };
    let mut queue = vec![(String::new(), root, 0)];
    while let Some((path, dir, depth)) = queue.pop() {
        let entries = match src.list(&dir).await {
            Ok(v) => v,
            Err(e) => {
                w.errors.push((format!("list {path}"), e.errno(), e.to_string()));
                continue;
            }
        };
        for e in entries.into_iter().take(50) {
            let p = format!("{path}/{}", e.name);
            match e.kind {
                EntryKind::Dir if depth < 3 => queue.push((p, e, depth + 1)),
                EntryKind::File => match read_entry(&*src, &e, 0..e.size.min(64 << 10)).await {
                    Ok(b) => {
                        w.files.insert(p, (e.size, b));
                    }
                    Err(err) => w.errors.push((format!("read {p}"), err.errno(), err.to_string())),
                },
                _ => {}
            }
        }
    }
    w
}

/// Every key of every JSON answer of `kind`, removed and then given a wrong type, one at a
/// time: the walk must end (no panic, no hang) with errors that have an errno and, for a
/// Protocol error, name the field; a file still listed must keep its size and bytes.
async fn json_sweep(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (_server, proxy, cfg) = provider_behind_proxy(kind, dir.path()).await;
    let baseline = walk(&cfg).await;
    assert!(baseline.errors.is_empty(), "{kind} baseline: {:?}", baseline.errors);
    assert!(!baseline.files.is_empty(), "{kind}: the demo has files");
    let keys = proxy.log.lock().unwrap().keys.clone();
    let mut unnamed = Vec::new();
    let mut runs = 0;
    for key in &keys {
        for spoil in [Spoil::Remove(key.clone()), Spoil::Retype(key.clone())] {
            *proxy.spoil.lock().unwrap() = spoil.clone();
            let cfg = cfg.clone();
            let t = Instant::now();
            let w = tokio::time::timeout(Duration::from_secs(30), tokio::spawn(async move { walk(&cfg).await }))
                .await
                .unwrap_or_else(|_| panic!("{kind} {spoil:?}: the walk hung"))
                .unwrap_or_else(|e| panic!("{kind} {spoil:?}: panicked: {e}"));
            runs += 1;
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "{kind} {spoil:?}: {:?}",
                t.elapsed()
            );
            for (path, (size, bytes)) in &w.files {
                if let Some((bsize, bbytes)) = baseline.files.get(path) {
                    let n = bytes.len().min(bbytes.len());
                    assert!(bytes[..n] == bbytes[..n], "{kind} {spoil:?}: {path}: wrong bytes");
                    if size != bsize {
                        unnamed.push(format!("{spoil:?}: {path} listed with size {size}, really {bsize}"));
                    }
                }
            }
            for (what, errno, msg) in &w.errors {
                assert!(*errno != 0 || what == "build", "{kind} {spoil:?}: {what}: {msg}");
                if msg.contains("JSON") && !msg.contains(key.as_str()) {
                    unnamed.push(format!("{spoil:?}: {what}: {msg}"));
                }
            }
        }
    }
    *proxy.spoil.lock().unwrap() = Spoil::None;
    eprintln!("{kind}: {} JSON keys, {runs} spoiled walks", keys.len());
    assert!(unnamed.is_empty(), "{kind}:\n{}", unnamed.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_json_with_missing_fields_or_wrong_types_is_an_error_not_a_panic() {
    json_sweep("b2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onedata_json_with_missing_fields_or_wrong_types_is_an_error_not_a_panic() {
    json_sweep("onedata").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smh_json_with_missing_fields_or_wrong_types_is_an_error_not_a_panic() {
    json_sweep("smh").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doris_json_with_missing_fields_or_wrong_types_is_an_error_not_a_panic() {
    json_sweep("doris").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huawei_json_with_missing_fields_or_wrong_types_is_an_error_not_a_panic() {
    json_sweep("huawei").await;
}

/// The secrets a provider config holds.
fn config_secrets(cfg: &fetchfs::config::SourceConfig) -> Vec<String> {
    use fetchfs::config::SourceConfig as C;
    let v = match cfg {
        C::B2(c) => vec![c.application_key.clone()],
        C::Onedata(c) => vec![c.token.clone()],
        C::Smh(c) => vec![c.library_secret.clone(), c.access_token.clone()],
        C::Doris(c) => vec![c.token.clone(), c.password.clone()],
        C::Huawei(c) => vec![c.password.clone(), c.token.clone()],
        C::Http(c) => vec![c.password.clone()],
    };
    v.into_iter().flatten().filter(|s| s.len() >= 4).collect()
}

/// Every request of `kind` redirected (307 and 302, auth call included or not) to another
/// host: that host never sees a key, password or token, and the walk ends with errors.
/// `cases` are (only, except) path filters of the redirected requests: everything, everything
/// but the login (so a token exists), only the downloads.
async fn redirect_sweep(kind: &str, cases: &[(Option<&str>, Option<&str>)]) {
    let dir = tempfile::tempdir().unwrap();
    let (_server, proxy, cfg) = provider_behind_proxy(kind, dir.path()).await;
    let trap = RawServer::start(|_| Reply::new("200 OK", &[("content-length", "2".into())], "{}")).await;
    let to = trap.base.replace("127.0.0.1", "localhost");
    let baseline = walk(&cfg).await;
    assert!(baseline.errors.is_empty(), "{kind}: {:?}", baseline.errors);
    for (only, except) in cases {
        for status in [307, 302] {
            *proxy.spoil.lock().unwrap() = Spoil::Redirect {
                to: to.clone(),
                status,
                only: only.map(str::to_string),
                except: except.map(str::to_string),
            };
            let cfg = cfg.clone();
            let w = tokio::time::timeout(Duration::from_secs(30), tokio::spawn(async move { walk(&cfg).await }))
                .await
                .unwrap_or_else(|_| panic!("{kind} {status}: the walk hung"))
                .unwrap_or_else(|e| panic!("{kind} {status}: panicked: {e}"));
            if only.is_none() {
                assert!(
                    w.files.is_empty(),
                    "{kind} {status}: read through a redirect: {:?}",
                    w.files.keys()
                );
            }
        }
    }
    *proxy.spoil.lock().unwrap() = Spoil::None;
    let mut secrets = config_secrets(&cfg);
    secrets.extend(
        proxy
            .log
            .lock()
            .unwrap()
            .secrets
            .iter()
            .filter(|s| s.len() >= 4)
            .cloned(),
    );
    assert!(!secrets.is_empty());
    let seen = trap.requests();
    for r in &seen {
        let all = format!("{} {} {:?} {}", r.method, r.target, r.headers, r.body);
        for s in &secrets {
            assert!(
                !all.contains(s.as_str()),
                "{kind}: a credential reached another host: {r:?}"
            );
        }
    }
    if std::env::var("HOSTILE_DEBUG").is_ok() {
        for r in &seen {
            eprintln!(
                "{} {} {:?}",
                r.method,
                r.target,
                r.headers.iter().map(|h| &h.0).collect::<Vec<_>>()
            );
        }
        eprintln!("secrets {:?}", secrets);
    }
    eprintln!(
        "{kind}: {} requests reached the other host, none with any of {} credentials",
        seen.len(),
        secrets.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b2_credentials_never_follow_a_redirect_to_another_host() {
    redirect_sweep(
        "b2",
        &[
            (None, None),
            (None, Some("b2_authorize_account")),
            (Some("download"), None),
            (Some("/file/"), None),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onedata_token_never_follows_a_redirect_to_another_host() {
    redirect_sweep("onedata", &[(None, None), (Some("/content"), None)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smh_secret_and_token_never_follow_a_redirect_to_another_host() {
    redirect_sweep(
        "smh",
        &[(None, None), (None, Some("/api/v1/token")), (Some("/file/"), None)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doris_password_and_token_never_follow_a_redirect_to_another_host() {
    redirect_sweep("doris", &[(None, None), (Some("get_small_file"), None)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huawei_password_and_token_never_follow_a_redirect_to_another_host() {
    redirect_sweep(
        "huawei",
        &[
            (None, None),
            (None, Some("/v3/auth/tokens")),
            (Some("/download/"), None),
        ],
    )
    .await;
}

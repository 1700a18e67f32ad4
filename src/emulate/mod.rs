//! Local emulators of every provider, served on 127.0.0.1 for `fetchfs demo`, the tests and
//! users' own CI (`fetchfs emulate <type> --root DIR --port N`).
//!
//! Each emulator is an axum `Router` over a directory tree, faithful to its section of
//! providers.md. This module holds what they share:
//!
//! * [`Faults`]: switchable faults (error statuses with `Retry-After`, bodies cut or stalled
//!   mid-stream, flipped bytes) applied by one middleware, [`fault_layer`], to any router;
//!   tests flip them at run time through the `Arc`, other processes through
//!   `POST /__fetchfs/faults` with the same JSON.
//! * [`Stats`]: every request counted by method and path, so tests can assert "one download
//!   per file" or "no data request after a remount".
//! * [`serve`]: binds, spawns, and returns a handle that stops the server when dropped.

pub mod b2;
pub mod doris;
pub mod http;
pub mod huawei;
pub mod onedata;
pub mod proxy;
pub mod smh;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

/// Faults applied to the responses of an emulator. All zero = a well-behaved server.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSpec {
    /// Answer this many of the next requests with `error_status` (then behave).
    pub fail_next: u64,
    /// Answer every Nth request with `error_status` (0 = never).
    pub fail_every: u64,
    /// Status for injected failures (default 503).
    pub error_status: u16,
    /// `Retry-After` seconds sent with injected failures.
    pub retry_after: Option<u64>,
    /// Cut the body of download responses after this many bytes (connection reset).
    pub reset_after: Option<u64>,
    /// Apply `reset_after` to this many responses only (0 = all).
    pub reset_count: u64,
    /// Stop sending a body after `stall_after` bytes for `stall_ms` milliseconds.
    pub stall_after: Option<u64>,
    pub stall_ms: u64,
    /// Flip the byte at this body offset of download responses.
    pub flip_at: Option<u64>,
    /// Only requests whose path contains this string are affected (empty = all).
    pub path_contains: String,
}

/// Live fault switches of one emulator.
#[derive(Debug, Default)]
pub struct Faults {
    spec: Mutex<FaultSpec>,
    seen: AtomicU64,
    resets_done: AtomicU64,
    injected: AtomicU64,
}

impl Faults {
    pub fn set(&self, spec: FaultSpec) {
        *self.spec.lock().unwrap() = spec;
        self.resets_done.store(0, Ordering::SeqCst);
    }
    pub fn clear(&self) {
        self.set(FaultSpec::default());
    }
    pub fn get(&self) -> FaultSpec {
        self.spec.lock().unwrap().clone()
    }
    /// Error statuses answered so far (`fail_next` + `fail_every`), never reset.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }
}

/// Requests counted by `METHOD path` (query stripped).
#[derive(Debug, Default)]
pub struct Stats {
    counts: Mutex<BTreeMap<String, u64>>,
    total: AtomicU64,
}

impl Stats {
    pub fn record(&self, method: &str, path: &str) {
        self.total.fetch_add(1, Ordering::SeqCst);
        *self
            .counts
            .lock()
            .unwrap()
            .entry(format!("{method} {path}"))
            .or_default() += 1;
    }
    /// All requests so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }
    /// Requests whose `METHOD path` key satisfies `pred`.
    pub fn count(&self, pred: impl Fn(&str) -> bool) -> u64 {
        self.counts
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| pred(k))
            .map(|(_, v)| v)
            .sum()
    }
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counts.lock().unwrap().clone()
    }
    pub fn reset(&self) {
        self.counts.lock().unwrap().clear();
        self.total.store(0, Ordering::SeqCst);
    }
}

/// The shared state every emulator router carries for the fault layer.
#[derive(Debug, Default, Clone)]
pub struct Harness {
    pub faults: Arc<Faults>,
    pub stats: Arc<Stats>,
}

/// Adds request counting, fault injection and the `/__fetchfs/faults` and `/__fetchfs/stats`
/// control endpoints to `router`. `error_body(status)` renders an injected error in the
/// provider's own error shape.
pub fn fault_layer(router: Router, harness: Harness, error_body: fn(u16) -> (String, &'static str)) -> Router {
    let control = Router::new()
        .route(
            "/__fetchfs/faults",
            axum::routing::get(|State(h): State<Harness>| async move { axum::Json(h.faults.get()) }).post(
                |State(h): State<Harness>, axum::Json(spec): axum::Json<FaultSpec>| async move {
                    h.faults.set(spec);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/__fetchfs/stats",
            axum::routing::get(|State(h): State<Harness>| async move { axum::Json(h.stats.snapshot()) }),
        )
        .with_state(harness.clone());
    router
        .layer(axum::middleware::from_fn_with_state((harness, error_body), inject))
        .merge(control)
}

/// Renders an injected error in a provider's own shape: (body, content type).
pub type ErrorBody = fn(u16) -> (String, &'static str);

async fn inject(State((h, error_body)): State<(Harness, ErrorBody)>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    h.stats.record(req.method().as_str(), &path);
    let spec = h.faults.get();
    let applies = spec.path_contains.is_empty() || path.contains(&spec.path_contains);
    if !applies {
        return next.run(req).await;
    }
    let n = h.faults.seen.fetch_add(1, Ordering::SeqCst) + 1;
    let fail = (spec.fail_next > 0 && {
        let mut s = h.faults.spec.lock().unwrap();
        if s.fail_next > 0 {
            s.fail_next -= 1;
            true
        } else {
            false
        }
    }) || (spec.fail_every > 0 && n % spec.fail_every == 0);
    if fail {
        h.faults.injected.fetch_add(1, Ordering::SeqCst);
        let status = if spec.error_status == 0 { 503 } else { spec.error_status };
        let (body, ctype) = error_body(status);
        let mut resp = (
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            body,
        )
            .into_response();
        resp.headers_mut()
            .insert("content-type", HeaderValue::from_static(ctype));
        if let Some(secs) = spec.retry_after {
            resp.headers_mut().insert("retry-after", HeaderValue::from(secs));
        }
        return resp;
    }
    let resp = next.run(req).await;
    let is_data = resp.status().is_success()
        && resp
            .headers()
            .get("content-type")
            .is_none_or(|v| v != "application/json");
    let wants_reset = spec.reset_after.is_some()
        && (spec.reset_count == 0 || h.faults.resets_done.fetch_add(1, Ordering::SeqCst) < spec.reset_count);
    if !is_data || (!wants_reset && spec.stall_after.is_none() && spec.flip_at.is_none()) {
        return resp;
    }
    let reset_after = if wants_reset { spec.reset_after } else { None };
    let (parts, body) = resp.into_parts();
    let body = mangle(
        body,
        reset_after,
        spec.stall_after,
        Duration::from_millis(spec.stall_ms),
        spec.flip_at,
    );
    Response::from_parts(parts, body)
}

/// Rewrites a body stream: flip one byte, stall once, or end with an error after a prefix
/// (the client sees a connection reset / incomplete body). A task pumps the original body
/// through a channel so each fault is a plain step of a loop.
fn mangle(
    body: Body,
    reset_after: Option<u64>,
    stall_after: Option<u64>,
    stall: Duration,
    flip_at: Option<u64>,
) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut stream = body.into_data_stream();
        let mut off = 0u64;
        let mut stalled = false;
        while let Some(item) = stream.next().await {
            let Ok(chunk) = item else {
                let _ = tx.send(Err(std::io::Error::other("upstream body error"))).await;
                return;
            };
            let mut v = chunk.to_vec();
            let end = off + v.len() as u64;
            if let Some(at) = flip_at
                && at >= off
                && at < end
            {
                v[(at - off) as usize] ^= 0xff;
            }
            let mut cut = reset_after
                .filter(|&limit| end > limit)
                .map(|limit| (limit.max(off) - off) as usize);
            if let Some(at) = stall_after.filter(|&at| !stalled && end > at) {
                stalled = true;
                let keep = ((at.max(off) - off) as usize).min(cut.unwrap_or(usize::MAX));
                if tx.send(Ok(Bytes::copy_from_slice(&v[..keep]))).await.is_err() {
                    return;
                }
                v.drain(..keep);
                cut = cut.map(|c| c - keep);
                tokio::time::sleep(stall).await;
            }
            if let Some(c) = cut {
                v.truncate(c);
                let _ = tx.send(Ok(Bytes::from(v))).await;
                let _ = tx.send(Err(std::io::Error::other("injected connection reset"))).await;
                return;
            }
            if tx.send(Ok(Bytes::from(v))).await.is_err() {
                return;
            }
            off = end;
        }
    });
    Body::from_stream(tokio_stream_from(rx))
}

/// Bytes a file body is read in, per `pread`.
const BODY_CHUNK: usize = 1 << 20;
/// Body buffers kept for reuse across responses (at most this many MiB of the emulator's RSS).
const BODY_BUFFERS: usize = 64;

/// The body of `len` bytes of `path` from `start`, as every emulator serves a file.
///
/// One blocking task reads the range with `pread` into 1 MiB buffers and hands them to hyper,
/// which writes them to the socket as they are; a buffer hyper has written goes back to a pool
/// for the next one. Each byte is copied twice in the emulator (page cache → buffer → socket).
/// `tokio::fs::File` under a `ReaderStream`, which this replaced, copied three times (into the
/// file's own buffer first), went to the blocking pool once per 256 KiB and allocated a fresh
/// buffer for each: `perf` of an emulator serving a mount put a quarter of its samples in
/// zeroing and faulting in new pages. The emulators run on the two cores of the client being
/// measured, so what they burn is taken from it.
///
/// A file that shrinks under the read ends the body early with an error (the client sees an
/// incomplete body), as a real server's connection reset would. The file is opened before the
/// response is built, so a missing one is the caller's error to render.
pub fn file_body(path: &std::path::Path, start: u64, len: u64) -> std::io::Result<Body> {
    use std::os::fd::AsRawFd;
    static POOL: std::sync::OnceLock<Arc<crate::cache::memory::BufPool>> = std::sync::OnceLock::new();
    let pool = POOL
        .get_or_init(|| crate::cache::memory::BufPool::new(BODY_BUFFERS))
        .clone();
    let file = std::fs::File::open(path)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(2);
    tokio::task::spawn_blocking(move || {
        let mut off = start;
        let end = start + len;
        while off < end {
            let n = (end - off).min(BODY_CHUNK as u64) as usize;
            let mut buf = pool.take(n);
            // SAFETY: `take` reserved room for `n` bytes; pread writes at most `n` bytes into
            // that spare capacity, and only the `got` bytes it wrote become the vector's length.
            let got = unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    buf.spare_capacity_mut().as_mut_ptr().cast(),
                    n,
                    off as libc::off_t,
                )
            };
            let item = match got {
                0 => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "file shorter than its announced length",
                )),
                got if got > 0 => {
                    // SAFETY: the first `got` bytes were written by pread just now.
                    unsafe { buf.set_len(got as usize) };
                    off += got as u64;
                    Ok(pool.freeze(buf))
                }
                _ => match std::io::Error::last_os_error() {
                    e if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    e => Err(e),
                },
            };
            let failed = item.is_err();
            // A closed receiver is a client that went away: stop reading.
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    Ok(Body::from_stream(tokio_stream_from(rx)))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A running emulator. Dropping it stops the server.
pub struct Server {
    pub addr: SocketAddr,
    pub harness: Harness,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// Stops accepting and waits for the server task.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Serves `router` on `127.0.0.1:port` (0 = any free port) in a tokio task.
pub async fn serve(router: Router, port: u16, harness: Harness) -> std::io::Result<Server> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = rx.await;
            })
            .await;
    });
    Ok(Server {
        addr,
        harness,
        shutdown: Some(tx),
        task: Some(task),
    })
}

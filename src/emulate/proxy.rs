//! A TCP fault proxy: listens on 127.0.0.1, forwards every connection to an upstream emulator
//! and damages the upstream → client direction of some connections. The fault suite
//! (`tests/faults.rs`, `scripts/chaos.sh`) puts it between the daemon and an emulator;
//! `fetchfs emulate proxy --upstream 127.0.0.1:PORT` runs it for your own experiments.
//!
//! Each accepted connection draws at most one fault from a seeded RNG, with the configured rate
//! of each kind (the rates add up to the chance that a connection is faulty):
//!
//! * **reset**: after N bytes of the response stream, the client socket is closed with
//!   `SO_LINGER 0`, so the client sees a TCP RST mid-body (or mid-header when N is small);
//! * **stall**: after N bytes, nothing is forwarded for a drawn time in
//!   `[stall_ms / 4, stall_ms]`; choose `stall_ms` above the daemon's stall timeout so that some
//!   stalls outlast it and some do not; forwarding then resumes;
//! * **trickle**: from byte N on, the next `trickle_bytes` bytes go out 1 to 64 bytes at a time
//!   with `trickle_delay_ms` between pieces, then forwarding is normal again;
//! * **truncate**: after N bytes the connection is closed cleanly (FIN), short of the
//!   announced `Content-Length`;
//! * **flip**: one byte of a response *body* is inverted. Headers are never touched (a damaged
//!   header is a different fault, left to the hostile-input suite): the proxy parses the
//!   head of the first response on the connection (up to `\r\n\r\n`) and flips only when that
//!   response is a `200`/`206` with a `Content-Length`, a non-textual content type (JSON, HTML,
//!   XML and text bodies are metadata, not file bytes) and is not the answer to a `HEAD`; the
//!   flipped offset is inside that body (`N mod Content-Length`). Keep-alive connections that
//!   carry several responses are handled by flipping only inside the first response's body:
//!   the bytes after its `Content-Length` belong to later responses, whose headers the proxy
//!   does not parse, so they are never flipped. A chunked first response is not flipped either
//!   (a flipped chunk-size line is a framing fault, not a data fault).
//!
//! N is drawn uniformly in `[0, max_offset)` over the bytes the upstream sent on the
//! connection, headers included. A fault is counted when it actually happens (a response that
//! ends before N is not damaged and not counted). Faults are switched on and off at run time
//! ([`ProxyControl::set_enabled`]; the CLI serves `POST /on`, `POST /off` and `GET /counters`
//! on `--control-port`); switching off takes effect at once, including on connections already
//! open with a fault drawn but not yet fired.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Rates (per connection, each in 0..=1) and shapes of the faults.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    pub seed: u64,
    pub reset_rate: f64,
    pub stall_rate: f64,
    pub trickle_rate: f64,
    pub truncate_rate: f64,
    pub flip_rate: f64,
    /// Longest stall; each stall lasts a drawn time in `[stall_ms / 4, stall_ms]`.
    pub stall_ms: u64,
    /// Faults fire after a drawn number of bytes in `[0, max_offset)`.
    pub max_offset: u64,
    /// How many bytes a trickle dribbles out before forwarding normally again.
    pub trickle_bytes: u64,
    pub trickle_delay_ms: u64,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            seed: 1,
            reset_rate: 0.0,
            stall_rate: 0.0,
            trickle_rate: 0.0,
            truncate_rate: 0.0,
            flip_rate: 0.0,
            stall_ms: 2000,
            max_offset: 256 * 1024,
            trickle_bytes: 8 * 1024,
            trickle_delay_ms: 2,
        }
    }
}

/// `fetchfs emulate proxy` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ProxyArgs {
    /// The emulator to forward to (IP:PORT).
    #[arg(long)]
    pub upstream: SocketAddr,
    /// Port on 127.0.0.1 (0 = any free port, printed at start).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Serve `POST /on`, `POST /off` and `GET /counters` on this port (0 = any free port).
    #[arg(long, default_value_t = 0)]
    pub control_port: u16,
    /// Seed of the fault RNG.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of connections reset mid-response (RST).
    #[arg(long, default_value_t = 0.0)]
    pub reset_rate: f64,
    /// Share of connections stalled once.
    #[arg(long, default_value_t = 0.0)]
    pub stall_rate: f64,
    /// Share of connections trickled for a while.
    #[arg(long, default_value_t = 0.0)]
    pub trickle_rate: f64,
    /// Share of connections closed cleanly too early.
    #[arg(long, default_value_t = 0.0)]
    pub truncate_rate: f64,
    /// Share of connections with one body byte flipped.
    #[arg(long, default_value_t = 0.0)]
    pub flip_rate: f64,
    /// Longest stall in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub stall_ms: u64,
    /// Faults fire within the first this-many bytes of a connection.
    #[arg(long, default_value_t = 256 * 1024)]
    pub max_offset: u64,
    /// Start with faults switched off.
    #[arg(long)]
    pub off: bool,
}

impl ProxyArgs {
    pub fn config(&self) -> ProxyConfig {
        ProxyConfig {
            seed: self.seed,
            reset_rate: self.reset_rate,
            stall_rate: self.stall_rate,
            trickle_rate: self.trickle_rate,
            truncate_rate: self.truncate_rate,
            flip_rate: self.flip_rate,
            stall_ms: self.stall_ms,
            max_offset: self.max_offset.max(1),
            ..ProxyConfig::default()
        }
    }
}

/// The kinds of fault, in the order the rates are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Reset,
    Stall,
    Trickle,
    Truncate,
    Flip,
}

/// Faults injected so far, per kind (and connections seen).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ProxyCounts {
    pub connections: u64,
    pub reset: u64,
    pub stall: u64,
    pub trickle: u64,
    pub truncate: u64,
    pub flip: u64,
}

impl ProxyCounts {
    pub fn total(&self) -> u64 {
        self.reset + self.stall + self.trickle + self.truncate + self.flip
    }
}

impl std::fmt::Display for ProxyCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "connections={} reset={} stall={} trickle={} truncate={} flip={}",
            self.connections, self.reset, self.stall, self.trickle, self.truncate, self.flip
        )
    }
}

/// The run-time handle: switch faults on and off, change rates, read counters.
#[derive(Debug)]
pub struct ProxyControl {
    enabled: AtomicBool,
    config: Mutex<ProxyConfig>,
    rng: Mutex<StdRng>,
    connections: AtomicU64,
    counts: [AtomicU64; 5],
}

impl ProxyControl {
    fn new(cfg: ProxyConfig) -> ProxyControl {
        ProxyControl {
            enabled: AtomicBool::new(true),
            rng: Mutex::new(StdRng::seed_from_u64(cfg.seed)),
            config: Mutex::new(cfg),
            connections: AtomicU64::new(0),
            counts: Default::default(),
        }
    }
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
    }
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }
    pub fn set_config(&self, cfg: ProxyConfig) {
        *self.config.lock().unwrap() = cfg;
    }
    pub fn config(&self) -> ProxyConfig {
        self.config.lock().unwrap().clone()
    }
    pub fn counts(&self) -> ProxyCounts {
        let c = |k: FaultKind| self.counts[k as usize].load(Ordering::SeqCst);
        ProxyCounts {
            connections: self.connections.load(Ordering::SeqCst),
            reset: c(FaultKind::Reset),
            stall: c(FaultKind::Stall),
            trickle: c(FaultKind::Trickle),
            truncate: c(FaultKind::Truncate),
            flip: c(FaultKind::Flip),
        }
    }
    fn count(&self, k: FaultKind) {
        self.counts[k as usize].fetch_add(1, Ordering::SeqCst);
    }

    /// The fault of a new connection, if any, with its shape drawn now.
    fn draw(&self) -> Option<Plan> {
        let cfg = self.config();
        let mut rng = self.rng.lock().unwrap();
        let roll: f64 = rng.random();
        let at = rng.random_range(0..cfg.max_offset.max(1));
        let stall = Duration::from_millis(rng.random_range(cfg.stall_ms / 4..=cfg.stall_ms));
        let seed: u64 = rng.random();
        if !self.enabled() {
            return None;
        }
        let kinds = [
            (FaultKind::Reset, cfg.reset_rate),
            (FaultKind::Stall, cfg.stall_rate),
            (FaultKind::Trickle, cfg.trickle_rate),
            (FaultKind::Truncate, cfg.truncate_rate),
            (FaultKind::Flip, cfg.flip_rate),
        ];
        let mut acc = 0.0;
        for (kind, rate) in kinds {
            acc += rate.max(0.0);
            if roll < acc {
                return Some(Plan {
                    kind,
                    at,
                    stall,
                    trickle_bytes: cfg.trickle_bytes,
                    trickle_delay: Duration::from_millis(cfg.trickle_delay_ms),
                    seed,
                });
            }
        }
        None
    }
}

/// One connection's fault.
#[derive(Debug, Clone)]
struct Plan {
    kind: FaultKind,
    at: u64,
    stall: Duration,
    trickle_bytes: u64,
    trickle_delay: Duration,
    seed: u64,
}

/// A running proxy. Dropping it stops accepting and closes every forwarded connection.
pub struct Proxy {
    pub addr: SocketAddr,
    pub control: Arc<ProxyControl>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a proxy on `127.0.0.1:port` (0 = any free port) forwarding to `upstream`.
pub async fn start(upstream: SocketAddr, port: u16, cfg: ProxyConfig) -> std::io::Result<Proxy> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let control = Arc::new(ProxyControl::new(cfg));
    let ctl = control.clone();
    let task = tokio::spawn(async move {
        // Aborting this task drops the set, which aborts every connection task.
        let mut conns = tokio::task::JoinSet::new();
        loop {
            while conns.try_join_next().is_some() {}
            let Ok((client, _)) = listener.accept().await else {
                continue;
            };
            ctl.connections.fetch_add(1, Ordering::SeqCst);
            let plan = ctl.draw();
            let ctl = ctl.clone();
            conns.spawn(async move {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = up.set_nodelay(true);
                forward(client, up, plan, ctl).await;
            });
        }
    });
    Ok(Proxy { addr, control, task })
}

/// What the head of the first response says about flipping its body.
#[derive(Debug, Default)]
struct FlipTarget {
    /// Absolute offset (in the connection's response stream) of the byte to flip.
    at: Option<u64>,
    decided: bool,
}

async fn forward(client: TcpStream, up: TcpStream, plan: Option<Plan>, ctl: Arc<ProxyControl>) {
    let (client_r, mut client_w) = client.into_split();
    let (mut up_r, up_w) = up.into_split();
    let first_is_head = Arc::new(Mutex::new(None::<bool>));
    let upstream_dir = tokio::spawn(pump_requests(client_r, up_w, first_is_head.clone()));
    let _ = pump_responses(&mut up_r, &mut client_w, plan, &ctl, &first_is_head).await;
    upstream_dir.abort();
    let _ = upstream_dir.await;
}

/// Client → upstream, untouched; notes whether the first request is a HEAD.
async fn pump_requests(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, first_is_head: Arc<Mutex<Option<bool>>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut g = first_is_head.lock().unwrap();
            if g.is_none() {
                *g = Some(buf[..n].starts_with(b"HEAD "));
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Upstream → client with the connection's fault. Returns when either side is done.
async fn pump_responses(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    plan: Option<Plan>,
    ctl: &ProxyControl,
    first_is_head: &Mutex<Option<bool>>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut sent = 0u64; // response bytes forwarded so far
    let mut fired = false;
    let mut head = Vec::new(); // the first response's head, while looking for its end
    let mut flip = FlipTarget::default();
    let mut rng = StdRng::seed_from_u64(plan.as_ref().map_or(0, |p| p.seed));
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        let chunk = &mut buf[..n];
        let Some(p) = plan.as_ref().filter(|_| !fired && ctl.enabled()) else {
            to.write_all(chunk).await?;
            sent += n as u64;
            continue;
        };
        if p.kind == FaultKind::Flip {
            if !flip.decided {
                head.extend_from_slice(&chunk[..chunk.len().min(64 * 1024)]);
                let is_head = first_is_head.lock().unwrap().unwrap_or(false);
                if let Some(end) = find_head_end(&head) {
                    flip.decided = true;
                    flip.at = flip_offset(&head[..end], is_head, p.at).map(|o| end as u64 + o);
                } else if head.len() >= 64 * 1024 {
                    flip.decided = true;
                }
            }
            if let Some(at) = flip.at
                && at >= sent
                && at < sent + n as u64
            {
                chunk[(at - sent) as usize] ^= 0xff;
                ctl.count(FaultKind::Flip);
                fired = true;
            }
            to.write_all(chunk).await?;
            sent += n as u64;
            if flip.decided && flip.at.is_none() {
                fired = true; // nothing to flip on this connection
            }
            continue;
        }
        if p.at >= sent + n as u64 {
            to.write_all(chunk).await?;
            sent += n as u64;
            continue;
        }
        // The fault fires inside this chunk.
        let cut = (p.at - sent.min(p.at)) as usize;
        to.write_all(&chunk[..cut]).await?;
        sent += cut as u64;
        fired = true;
        let rest = &chunk[cut..];
        match p.kind {
            FaultKind::Reset => {
                ctl.count(FaultKind::Reset);
                let _ = to.flush().await;
                let _ = to.as_ref().set_zero_linger();
                return Ok(()); // dropping both halves closes with RST
            }
            FaultKind::Truncate => {
                ctl.count(FaultKind::Truncate);
                return to.shutdown().await;
            }
            FaultKind::Stall => {
                ctl.count(FaultKind::Stall);
                tokio::time::sleep(p.stall).await;
                to.write_all(rest).await?;
                sent += rest.len() as u64;
            }
            FaultKind::Trickle => {
                ctl.count(FaultKind::Trickle);
                let mut budget = p.trickle_bytes;
                let mut pending: Vec<u8> = rest.to_vec();
                loop {
                    while !pending.is_empty() {
                        if budget == 0 || !ctl.enabled() {
                            to.write_all(&pending).await?;
                            sent += pending.len() as u64;
                            pending.clear();
                            break;
                        }
                        let k = rng.random_range(1..=64usize).min(pending.len()).min(budget as usize);
                        to.write_all(&pending[..k]).await?;
                        to.flush().await?;
                        pending.drain(..k);
                        sent += k as u64;
                        budget -= k as u64;
                        tokio::time::sleep(p.trickle_delay).await;
                    }
                    if budget == 0 || !ctl.enabled() {
                        break;
                    }
                    let n = from.read(&mut buf).await?;
                    if n == 0 {
                        return to.shutdown().await;
                    }
                    pending.extend_from_slice(&buf[..n]);
                }
            }
            FaultKind::Flip => unreachable!("handled above"),
        }
    }
}

/// Length of the head (status line + headers + `\r\n\r\n`), once complete.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Where in the first response's body to flip (`draw mod Content-Length`), or `None` when that
/// response is not a body of file bytes with a known length.
fn flip_offset(head: &[u8], is_head_request: bool, draw: u64) -> Option<u64> {
    if is_head_request {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    if status != 200 && status != 206 {
        return None;
    }
    let mut len = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" => len = v.parse::<u64>().ok(),
            "transfer-encoding" if v.contains("chunked") => return None,
            "content-type" if ["json", "html", "xml", "text/"].iter().any(|t| v.contains(t)) => return None,
            _ => {}
        }
    }
    len.filter(|&l| l > 0).map(|l| draw % l)
}

/// `fetchfs emulate proxy`: runs until Ctrl-C / SIGTERM, printing the counters at exit.
pub fn run(args: &ProxyArgs) -> Result<(), String> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let proxy = start(args.upstream, args.port, args.config())
            .await
            .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", args.port))?;
        proxy.control.set_enabled(!args.off);
        let ctl = proxy.control.clone();
        let router = axum::Router::new()
            .route(
                "/counters",
                axum::routing::get({
                    let c = ctl.clone();
                    move || async move { axum::Json(c.counts()) }
                }),
            )
            .route(
                "/on",
                axum::routing::post({
                    let c = ctl.clone();
                    move || async move { c.set_enabled(true) }
                }),
            )
            .route(
                "/off",
                axum::routing::post({
                    let c = ctl.clone();
                    move || async move { c.set_enabled(false) }
                }),
            );
        let listener = TcpListener::bind(("127.0.0.1", args.control_port))
            .await
            .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", args.control_port))?;
        let control_addr = listener.local_addr().map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        println!(
            "fetchfs fault proxy on {} -> {} (faults {}), control on http://{control_addr}/ (POST /on, POST /off, GET /counters)",
            proxy.base_url(),
            args.upstream,
            if args.off { "off" } else { "on" }
        );
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        println!("{}", proxy.control.counts());
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_only_inside_a_binary_body_of_known_length() {
        let h = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nContent-Type: application/octet-stream\r\n\r\n";
        assert_eq!(flip_offset(h, false, 23), Some(3));
        assert_eq!(flip_offset(h, true, 23), None, "a HEAD answer has no body");
        let json = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\ncontent-type: application/json\r\n\r\n";
        assert_eq!(flip_offset(json, false, 1), None);
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(flip_offset(chunked, false, 1), None);
        let err = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 10\r\n\r\n";
        assert_eq!(flip_offset(err, false, 1), None);
        assert_eq!(find_head_end(b"HTTP/1.1 200 OK\r\na: b\r\n\r\nxyz"), Some(25));
    }

    #[test]
    fn rates_pick_kinds_and_off_means_none() {
        let ctl = ProxyControl::new(ProxyConfig {
            reset_rate: 0.5,
            flip_rate: 0.5,
            ..ProxyConfig::default()
        });
        let kinds: Vec<_> = (0..200).map(|_| ctl.draw().map(|p| p.kind)).collect();
        assert!(kinds.iter().all(|k| matches!(k, Some(FaultKind::Reset | FaultKind::Flip))));
        assert!(kinds.contains(&Some(FaultKind::Reset)) && kinds.contains(&Some(FaultKind::Flip)));
        ctl.set_enabled(false);
        assert!((0..50).all(|_| ctl.draw().is_none()));
    }
}

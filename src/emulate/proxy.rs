//! A TCP fault proxy: listens on 127.0.0.1, forwards every connection to an upstream emulator
//! and damages the upstream → client direction of some connections. The fault suite
//! (`tests/faults.rs`, `scripts/chaos.sh`) puts it between the daemon and an emulator;
//! `fetchfs emulate proxy --upstream 127.0.0.1:PORT` runs it for your own experiments.
//!
//! Faults are drawn from one seeded RNG. The transport faults are drawn per *stretch* of a
//! connection: when a connection opens, and again after every `max_offset` response bytes while
//! no fault is pending, it draws at most one of them with the configured rates (the rates add
//! up to the chance that a stretch is faulty), due at a drawn byte N of that stretch. So a
//! keep-alive connection carrying many responses meets faults at the same rate per byte as many
//! short connections. Byte offsets count everything the upstream sent, headers included.
//!
//! * **reset**: at byte N the client socket is closed with `SO_LINGER 0`, so the client sees a
//!   TCP RST mid-body (or mid-header when N falls in a head);
//! * **stall**: at byte N nothing is forwarded for a drawn time in `[stall_ms / 4, stall_ms]`;
//!   choose `stall_ms` above the daemon's stall timeout so that some stalls outlast it and some
//!   do not; forwarding then resumes;
//! * **trickle**: from byte N on, the next `trickle_bytes` bytes go out 1 to 64 bytes at a time
//!   with `trickle_delay_ms` between pieces (slow, yet never silent for long enough to trip a
//!   stall timeout), then forwarding is normal again;
//! * **truncate**: at byte N the connection is closed cleanly (FIN), short of the announced
//!   `Content-Length`;
//! * **flip**: one byte of a response *body* is inverted, drawn per response with
//!   `flip_rate`. Headers are never touched (a damaged header is a different fault, left to the
//!   hostile-input suite). Keep-alive connections carry several responses, so the proxy follows
//!   HTTP/1.1 framing in both directions: it splits the request stream into requests (head up to
//!   `\r\n\r\n`, then `Content-Length` bytes) to know which ones are `HEAD`, and the response
//!   stream into responses the same way (no body for a `HEAD`, 204 or 304). Only bodies of
//!   `200`/`206` answers with a `Content-Length` and a non-textual content type are flipped
//!   (JSON, HTML, XML and text bodies are metadata, not file bytes), at a drawn offset inside
//!   that body; chunked bodies are followed chunk by chunk (size lines and CRLFs are framing
//!   and never flipped; a flip is drawn per chunk, at most one per response). When the framing
//!   cannot be followed (a response without a length that is not chunked, a 1xx, a bad chunk
//!   size) the proxy stops flipping on that connection rather than risk a header byte.
//!
//! A fault is counted when it actually happens (a stretch that ends before N is not damaged and
//! not counted). Faults are switched on and off at run time ([`ProxyControl::set_enabled`]; the
//! CLI serves `POST /on`, `POST /off` and `GET /counters` on `--control-port`); switching off
//! takes effect at once, including on connections with a fault drawn but not yet fired.

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
    /// Bytes a trickle dribbles out before forwarding normally again.
    #[arg(long, default_value_t = 8 * 1024)]
    pub trickle_bytes: u64,
    /// Pause between the 1-to-64-byte pieces of a trickle, milliseconds.
    #[arg(long, default_value_t = 2)]
    pub trickle_delay_ms: u64,
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
            trickle_bytes: self.trickle_bytes,
            trickle_delay_ms: self.trickle_delay_ms,
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
    /// Bumped by every switch or config change: open connections draw again at once.
    generation: AtomicU64,
}

impl ProxyControl {
    fn new(cfg: ProxyConfig) -> ProxyControl {
        ProxyControl {
            enabled: AtomicBool::new(true),
            rng: Mutex::new(StdRng::seed_from_u64(cfg.seed)),
            config: Mutex::new(cfg),
            connections: AtomicU64::new(0),
            counts: Default::default(),
            generation: AtomicU64::new(0),
        }
    }
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }
    pub fn set_config(&self, cfg: ProxyConfig) {
        *self.config.lock().unwrap() = cfg;
        self.generation.fetch_add(1, Ordering::SeqCst);
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

    /// The transport fault of the next `max_offset` bytes of a connection (`from` = bytes
    /// forwarded so far), if any, with its shape drawn now.
    fn draw(&self, from: u64) -> Option<Plan> {
        let cfg = self.config();
        let mut rng = self.rng.lock().unwrap();
        let roll: f64 = rng.random();
        let at = from + rng.random_range(0..cfg.max_offset.max(1));
        let stall = Duration::from_millis(rng.random_range(cfg.stall_ms / 4..=cfg.stall_ms));
        if !self.enabled() {
            return None;
        }
        let kinds = [
            (FaultKind::Reset, cfg.reset_rate),
            (FaultKind::Stall, cfg.stall_rate),
            (FaultKind::Trickle, cfg.trickle_rate),
            (FaultKind::Truncate, cfg.truncate_rate),
        ];
        let mut acc = 0.0;
        for (kind, rate) in kinds {
            acc += rate.max(0.0);
            if roll < acc {
                return Some(Plan { kind, at, stall });
            }
        }
        None
    }

    /// Where to flip a byte in a body of `len` bytes, if this body draws a flip.
    fn draw_flip(&self, len: u64) -> Option<u64> {
        let rate = self.config().flip_rate;
        let mut rng = self.rng.lock().unwrap();
        let (roll, at): (f64, u64) = (rng.random(), rng.random_range(0..len.max(1)));
        (self.enabled() && roll < rate).then_some(at)
    }

    /// Size of the next trickled piece (1 to 64 bytes).
    fn piece(&self) -> usize {
        self.rng.lock().unwrap().random_range(1..=64usize)
    }
}

/// A transport fault due at byte `at` of a connection's response stream.
#[derive(Debug, Clone)]
struct Plan {
    kind: FaultKind,
    at: u64,
    stall: Duration,
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
            let ctl = ctl.clone();
            conns.spawn(async move {
                let Ok(up) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = client.set_nodelay(true);
                let _ = up.set_nodelay(true);
                forward(client, up, ctl).await;
            });
        }
    });
    Ok(Proxy { addr, control, task })
}

/// Requests seen on a connection, in order, so the response side knows which answer a HEAD.
#[derive(Debug, Default)]
struct Requests {
    methods: std::collections::VecDeque<bool>,
    /// Request framing could not be followed (chunked body): stop flipping on this connection.
    lost: bool,
}

async fn forward(client: TcpStream, up: TcpStream, ctl: Arc<ProxyControl>) {
    let (client_r, mut client_w) = client.into_split();
    let (mut up_r, up_w) = up.into_split();
    let requests = Arc::new(Mutex::new(Requests::default()));
    let upstream_dir = tokio::spawn(pump_requests(client_r, up_w, requests.clone()));
    let _ = pump_responses(&mut up_r, &mut client_w, &ctl, &requests).await;
    upstream_dir.abort();
    let _ = upstream_dir.await;
}

/// Splits a byte stream into HTTP/1.1 messages: a head up to `\r\n\r\n`, then a body of
/// `Content-Length` bytes or in chunks (`SIZE\r\n DATA \r\n` … `0\r\n` trailers `\r\n`).
/// `Lost` once the framing cannot be followed.
#[derive(Debug)]
enum Framing {
    Head(Vec<u8>),
    Body(u64),
    /// A chunk-size line being read.
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    /// The CRLF after a chunk's data (bytes left).
    ChunkEnd(u8),
    /// Trailer lines after the last chunk, until an empty line.
    Trailer(Vec<u8>),
    Lost,
}

/// How the body after a head is framed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BodyKind {
    Length(u64),
    Chunked,
}

/// Something the framing found, with the offset within the fed chunk where it ends.
enum Event<'a> {
    /// A complete head; the answer says how its body is framed (`None` = framing lost).
    Head(&'a [u8], usize),
    /// The data of a chunk of this many bytes starts here.
    Chunk(u64, usize),
}

impl Framing {
    fn feed(&mut self, chunk: &[u8], mut on: impl FnMut(Event) -> Option<BodyKind>) {
        let mut i = 0;
        while i < chunk.len() {
            match self {
                Framing::Lost => return,
                Framing::Body(rem) | Framing::ChunkData(rem) => {
                    let k = (*rem).min((chunk.len() - i) as u64);
                    *rem -= k;
                    i += k as usize;
                    if *rem == 0 {
                        *self = match self {
                            Framing::Body(_) => Framing::Head(Vec::new()),
                            _ => Framing::ChunkEnd(2),
                        };
                    }
                }
                Framing::ChunkEnd(left) => {
                    *left -= 1;
                    i += 1;
                    if *left == 0 {
                        *self = Framing::ChunkSize(Vec::new());
                    }
                }
                Framing::Head(buf) | Framing::ChunkSize(buf) | Framing::Trailer(buf) => {
                    buf.push(chunk[i]);
                    i += 1;
                    if buf.len() > 64 * 1024 {
                        *self = Framing::Lost;
                        continue;
                    }
                    let done = match self {
                        Framing::Head(b) => b.ends_with(b"\r\n\r\n"),
                        Framing::ChunkSize(b) => b.ends_with(b"\r\n"),
                        Framing::Trailer(b) => b.ends_with(b"\r\n"),
                        _ => false,
                    };
                    if !done {
                        continue;
                    }
                    *self = match std::mem::replace(self, Framing::Lost) {
                        Framing::Head(head) => match on(Event::Head(&head, i)) {
                            None => Framing::Lost,
                            Some(BodyKind::Length(0)) => Framing::Head(Vec::new()),
                            Some(BodyKind::Length(n)) => Framing::Body(n),
                            Some(BodyKind::Chunked) => Framing::ChunkSize(Vec::new()),
                        },
                        Framing::ChunkSize(line) => {
                            let text = String::from_utf8_lossy(&line);
                            let size = text.trim().split(';').next().unwrap_or("");
                            match u64::from_str_radix(size.trim(), 16) {
                                Err(_) => Framing::Lost,
                                Ok(0) => Framing::Trailer(Vec::new()),
                                Ok(n) => {
                                    on(Event::Chunk(n, i));
                                    Framing::ChunkData(n)
                                }
                            }
                        }
                        Framing::Trailer(line) if line == b"\r\n" => Framing::Head(Vec::new()),
                        Framing::Trailer(_) => Framing::Trailer(Vec::new()),
                        other => other,
                    };
                }
            }
        }
    }
}

/// Client → upstream, untouched; notes each request's method (HEAD or not).
async fn pump_requests(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, requests: Arc<Mutex<Requests>>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut framing = Framing::Head(Vec::new());
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        framing.feed(&buf[..n], |ev| {
            let Event::Head(head, _) = ev else { return None };
            let h = parse_head(head);
            let mut r = requests.lock().unwrap();
            r.methods.push_back(head.starts_with(b"HEAD "));
            if h.chunked {
                return Some(BodyKind::Chunked);
            }
            Some(BodyKind::Length(h.length.unwrap_or(0)))
        });
        if matches!(framing, Framing::Lost) {
            requests.lock().unwrap().lost = true;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Upstream → client with the connection's faults. Returns when either side is done.
async fn pump_responses(
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    ctl: &ProxyControl,
    requests: &Mutex<Requests>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut sent = 0u64; // response bytes forwarded so far
    let mut epoch_end = 0u64;
    let mut plan: Option<Plan> = None;
    let mut framing = Framing::Head(Vec::new());
    let mut flips: Vec<u64> = Vec::new(); // absolute offsets still to flip
    let mut flippable = false; // the chunked body being read may still get a flip
    let mut trickle_left = 0u64;
    let mut generation = u64::MAX;
    loop {
        let g = ctl.generation.load(Ordering::SeqCst);
        if g != generation {
            // Switched or reconfigured: a new stretch starts now under the new settings.
            generation = g;
            plan = None;
            trickle_left = 0;
            epoch_end = sent;
        }
        if sent >= epoch_end {
            if plan.is_none() {
                plan = ctl.draw(sent);
            }
            epoch_end = sent + ctl.config().max_offset.max(1);
        }
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        let chunk = &mut buf[..n];
        framing.feed(chunk, |ev| match ev {
            Event::Head(head, after) => {
                let h = parse_head(head);
                let is_head = {
                    let mut r = requests.lock().unwrap();
                    if r.lost {
                        return None;
                    }
                    r.methods.pop_front()?
                };
                if h.status < 200 {
                    return None;
                }
                flippable = (h.status == 200 || h.status == 206) && !h.textual;
                if is_head || h.status == 204 || h.status == 304 {
                    return Some(BodyKind::Length(0));
                }
                if h.chunked {
                    return Some(BodyKind::Chunked);
                }
                let len = h.length?;
                if flippable
                    && len > 0
                    && let Some(at) = ctl.draw_flip(len)
                {
                    flips.push(sent + after as u64 + at);
                }
                flippable = false;
                Some(BodyKind::Length(len))
            }
            Event::Chunk(len, after) => {
                // Chunked bodies: a flip drawn per chunk, at most one per response.
                if flippable && let Some(at) = ctl.draw_flip(len) {
                    flips.push(sent + after as u64 + at);
                    flippable = false;
                }
                None
            }
        });
        if ctl.enabled() {
            flips.retain(|&at| {
                if at >= sent && at < sent + n as u64 {
                    chunk[(at - sent) as usize] ^= 0xff;
                    ctl.count(FaultKind::Flip);
                    false
                } else {
                    at >= sent
                }
            });
        } else {
            flips.clear();
        }
        let fire = plan
            .as_ref()
            .filter(|p| p.at < sent + n as u64 && ctl.enabled())
            .cloned();
        let Some(p) = fire else {
            if plan.as_ref().is_some_and(|p| p.at < sent + n as u64) {
                plan = None; // switched off meanwhile
            }
            emit(to, chunk, &mut trickle_left, ctl).await?;
            sent += n as u64;
            continue;
        };
        plan = None;
        let cut = (p.at.max(sent) - sent) as usize;
        emit(to, &chunk[..cut], &mut trickle_left, ctl).await?;
        sent += cut as u64;
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
            }
            FaultKind::Trickle => {
                ctl.count(FaultKind::Trickle);
                trickle_left = ctl.config().trickle_bytes;
            }
            FaultKind::Flip => unreachable!("flips are drawn per response"),
        }
        emit(to, rest, &mut trickle_left, ctl).await?;
        sent += rest.len() as u64;
    }
}

/// Writes `data`, dribbling the first `trickle_left` bytes out in small delayed pieces.
async fn emit(
    to: &mut OwnedWriteHalf,
    mut data: &[u8],
    trickle_left: &mut u64,
    ctl: &ProxyControl,
) -> std::io::Result<()> {
    let delay = Duration::from_millis(ctl.config().trickle_delay_ms);
    while !data.is_empty() && *trickle_left > 0 && ctl.enabled() {
        let k = ctl.piece().min(data.len()).min(*trickle_left as usize);
        to.write_all(&data[..k]).await?;
        to.flush().await?;
        data = &data[k..];
        *trickle_left -= k as u64;
        tokio::time::sleep(delay).await;
    }
    to.write_all(data).await
}

/// What a message head says about its framing and content.
#[derive(Debug, Default, PartialEq)]
struct Head {
    /// Status of a response (0 for a request or an unparsable line).
    status: u16,
    length: Option<u64>,
    chunked: bool,
    /// JSON, HTML, XML or text: metadata, not file bytes.
    textual: bool,
}

fn parse_head(head: &[u8]) -> Head {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut h = Head {
        status: if first.starts_with("HTTP/") {
            first.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
        } else {
            0
        },
        ..Head::default()
    };
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" => h.length = v.parse().ok(),
            "transfer-encoding" => h.chunked = v.contains("chunked"),
            "content-type" => h.textual = ["json", "html", "xml", "text/"].iter().any(|t| v.contains(t)),
            _ => {}
        }
    }
    h
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
    fn heads_tell_framing_and_content() {
        let h = parse_head(
            b"HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nContent-Type: application/octet-stream\r\n\r\n",
        );
        assert_eq!(
            (h.status, h.length, h.chunked, h.textual),
            (206, Some(10), false, false)
        );
        let j = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-type: application/json\r\n\r\n");
        assert!(j.textual);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").chunked);
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").status, 0);
    }

    #[test]
    fn framing_follows_keep_alive_responses() {
        let stream = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1 206 X\r\nContent-Length: 2\r\n\r\nde\
            HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\nHTTP/1.1 204 N\r\n\r\n";
        let mut f = Framing::Head(Vec::new());
        let mut heads = Vec::new();
        let mut chunks = Vec::new();
        // Fed in odd pieces: head boundaries are found wherever they fall.
        let mut base = 0;
        for piece in stream.chunks(7) {
            f.feed(piece, |ev| match ev {
                Event::Head(h, after) => {
                    heads.push((parse_head(h).status, base + after));
                    let h = parse_head(h);
                    Some(if h.chunked {
                        BodyKind::Chunked
                    } else {
                        BodyKind::Length(h.length.unwrap_or(0))
                    })
                }
                Event::Chunk(n, after) => {
                    chunks.push((n, base + after));
                    None
                }
            });
            base += piece.len();
        }
        assert_eq!(heads, vec![(200, 38), (206, 78), (200, 127), (204, 165)]);
        assert_eq!(chunks, vec![(10, 130)]);
        assert!(matches!(f, Framing::Head(ref b) if b.is_empty()));
    }

    #[test]
    fn rates_pick_kinds_and_off_means_none() {
        let ctl = ProxyControl::new(ProxyConfig {
            reset_rate: 0.5,
            truncate_rate: 0.5,
            ..ProxyConfig::default()
        });
        let kinds: Vec<_> = (0..200).map(|_| ctl.draw(0).map(|p| p.kind)).collect();
        assert!(
            kinds
                .iter()
                .all(|k| matches!(k, Some(FaultKind::Reset | FaultKind::Truncate)))
        );
        assert!(kinds.contains(&Some(FaultKind::Reset)) && kinds.contains(&Some(FaultKind::Truncate)));
        ctl.set_enabled(false);
        assert!((0..50).all(|_| ctl.draw(0).is_none()));
    }
}

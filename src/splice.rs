//! Zero-copy sequential reads: HTTP body → pipe → `/dev/fuse`, with `splice(2)`.
//!
//! ## Why
//!
//! Through the ordinary read path every byte a sequential reader gets is copied three times in
//! the daemon: socket → hyper's buffer (`recv`), HTTP chunk → contiguous block, block → the
//! kernel's page (`writev` of the FUSE reply). On the 2-core bench machine that was 0.7–0.9
//! CPU-seconds per GiB, and with `dd` and nginx on the same two cores it capped one reader at
//! about 1.7 GB/s where `curl` (one copy) reached 2.5–3 GB/s.
//!
//! Here the daemon never touches the bytes: `splice` moves the socket's buffers into a pipe by
//! reference, and a second `splice` hands the pipe to `/dev/fuse`, where the kernel copies them
//! once, into the reader's page-cache pages. That is the same number of copies as `curl`
//! writing to a file, plus the copy `dd` makes out of the page cache.
//!
//! ## When
//!
//! Only for what it suits, everything else takes the ordinary path:
//! * a reader the prefetcher has seen reading sequentially for a while ([`STREAM_AFTER`]);
//! * a source that hands out a plain `http://` URL for the file ([`RawHttp`]): plain HTTP,
//!   Onedata, SMH's signed object URL, B2's download by id with the current token (not with
//!   SSE-C keys);
//! * with a disk tier, the stream keeps what it reads ("Kept streams"), so it is not spliced;
//! * a pipe of at least [`MIN_PIPE`] bytes (the unprivileged default).
//!
//! ## Verified streams
//!
//! A file with a checksum (B2's SHA-1, SMH's CRC-64) is streamed as well, but its bytes must
//! be hashed, so they are not spliced: each reply is `recv`ed from the socket into a pooled
//! buffer and returned to be answered like any read (two copies in the daemon, against the
//! ordinary path's three, and none of its block bookkeeping), and the same buffer goes, in
//! file order, to a lane (`Lane`: a blocking task that feeds the handle's verifier). Every
//! body byte passes through the stream in order (into a reply or into the bytes passed over),
//! so the hash needs no gap filling; before the stream opens, the
//! verifier is brought up to the stream's start from the cache (`FsCore::hashed_to`). The
//! reply that reaches EOF waits for the lane's verdict: [`Served::Mismatch`] fails it with
//! EIO. A reader that did not start at the beginning has no checksum to follow, and its
//! stream splices; so does the rest of a stream whose checksum was given up.
//!
//! Measured with builds alternated against one emulator (1 GiB `dd`):
//! * SMH, hashing inline on the stream: 1.2–1.4 GB/s against 1.1–1.2 the ordinary way (3
//!   rounds), daemon CPU 0.55–0.67 s against 0.84–0.92. The lane adds nothing measurable for
//!   CRC-64 (0.06 CPU-s per GiB).
//! * B2's SHA-1 costs 0.6 CPU-s per GiB here. Inline it capped the stream at 0.77–0.93 GB/s,
//!   no faster than the ordinary path; on the lane, 0.89–1.2 GB/s (6 rounds, medians 0.81 and
//!   1.0). Without any hashing (a throwaway switch) the same stream ran at 1.5 GB/s.
//! * An earlier version that duplicated each spliced reply with `tee(2)` and hashed it on a
//!   task beside the stream ran at 0.8 GB/s on SMH.
//!
//! ## Kept streams
//!
//! With a disk tier the bytes must reach the disk, so they pass through the daemon as a
//! verified stream's do: each reply is received into a pooled buffer and the same buffer goes,
//! in file order, to the lane, which cuts the pieces into the cache's blocks (`Blocks`: held,
//! not copied) and hands each whole block to the disk tier's writer, which copies it once into
//! its `O_DIRECT` buffer. Before, a tier sent every read the ordinary way: three copies in the
//! daemon plus the writer's, block bookkeeping, and prefetch windows of half the run, which
//! fetched 787–814 MB for 8 readers of 64 MiB each. A kept stream fetches what is read (TCP
//! flow control is its prefetch).
//!
//! A stream starts at a block the tier lacks and stops at the next block it has (a bounded
//! `Range`); the READ across that end gets the stream's part of it ([`Served::Head`]) and the
//! rest from the cache. So a file whose middle is cached is downloaded around it, and a whole
//! cached file opens no stream at all. The lane's buffers count in the memory budget while
//! the stream is open ([`LANE_HOLD`]); when the budget cannot spare them, the reader goes the
//! ordinary way. A block the stream did not carry whole (where it began mid-block, or the
//! last one of a stream closed early) is not kept; the ordinary path fetches it if it is read.
//! When a checksum fails at the end, the lane has queued every earlier block and none of the
//! last piece; the version is then removed from the disk after the writer's queue drains.
//!
//! Measured with builds alternated (`scripts/bench_extra.py -r 1 -w par8,skip,warm_disk`, 3
//! rounds, nginx, with the tier): 8 readers of 64 MiB each 716–897 MB/s against 430–604 the
//! ordinary way, peak RSS 91–100 MB against 231–254, and nginx sent 254–265 MB for the
//! 512 MiB read (one round logged 725) against 772–802; read 4 MiB, skip 1 MiB 697–750 MB/s against
//! 501–675; the warm re-read from the tier unchanged. The daemon's I/O threads spent half the
//! CPU. One cold 1 GiB reader (`dd`, 3 rounds by hand) ran as fast (777–952 MB/s against
//! 789–937) on 20 % less daemon CPU.
//!
//! One stream is one HTTP/1.1 GET of the rest of the file (or up to a block the disk tier
//! has) on its own connection, pinned with `If-Range` like every other GET. Its response must
//! be exactly the `206` asked for (status, `Content-Range`, no transfer or content coding);
//! anything else and the handle goes back to the ordinary path, which knows every server
//! quirk. TCP flow control is the prefetch: the
//! server fills the socket buffers (several MiB on Linux) while the reader is busy, and what
//! is never read is lost with the connection when the file is closed.
//!
//! ## Order
//!
//! The socket gives bytes in order, the kernel's readahead READs arrive in any order. A READ
//! at the stream's position is answered at once; one a little ahead waits for the READs
//! between the stream and it that are in the daemon (announced as they arrive, in the
//! kernel's order), and at most [`ORDER_WAIT`] when none is, then reads the gap into memory,
//! where those READs find it if they come (at most [`PASSED_MAX`] is kept, and a READ may
//! take it from two pieces). Any other READ behind the stream takes the ordinary path; one
//! far ahead of it (a seek) closes the stream. Any failure (timeout, short body, a pipe that
//! cannot take a reply) closes the stream and the read is served by the ordinary path, with
//! its retries: splice only ever makes a read faster, never different.
//!
//! ## Replying outside fuser
//!
//! fuser 0.18 answers through `ReplyData`, which only takes bytes. The stream instead writes
//! the FUSE reply (`fuse_out_header` + data) itself, to a duplicate of the session's
//! `/dev/fuse` descriptor, and the `ReplyData` is forgotten (dropping it would send a second,
//! refused, EIO reply). This needs every fuser thread to read from that one descriptor, because
//! the kernel finds a request only on the descriptor that read it: the session runs without
//! `clone_fd`.

use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, OwnedMutexGuard};
use url::Url;

use crate::cache::memory::{BlockCache, BufPool, FileCtx, Hold};
use crate::fs::verify::{Verdict, Verifier};
use crate::metrics::{Metrics, global};

/// Bytes a reader must have read in one sequential run before its stream is opened: `head`,
/// `file` and small files never cost a connection. It was the prefetcher's window reaching
/// 4 MiB, which a run only reaches after ~11 MiB (the window is at most half the run): with
/// four readers of 64 MiB each (the bench's `par4`) a sixth of the bytes then took the ordinary
/// path, at twice the daemon CPU per byte. Opening at 2 MiB took `par4` from 1.36 to 1.62 GB/s
/// (medians of 5, by hand) and its daemon CPU from 0.22 to 0.16 s. A reader that stops soon
/// after costs what the server had already sent into the socket buffers, a few MiB.
pub const STREAM_AFTER: u64 = 2 << 20;
/// How long a READ ahead of the stream waits for the READs before it. The kernel sends a
/// readahead batch at once, so those are at most a scheduling delay behind; after this the
/// stream reads their bytes into memory (one copy, as the ordinary path would make) and serves
/// them from there if they come. A reader that skips (read 4 MiB, skip 1 MiB) pays this once
/// per gap.
pub const ORDER_WAIT: Duration = Duration::from_micros(500);
/// How far ahead of the stream a READ may be and still be served by it, the gap passed over
/// (when the READs for the gap are not in the daemon: those are always waited for). A reader's
/// real seeks are caught earlier, by the prefetcher (within 8 MiB); a READ this far ahead of a
/// sequential stream is one the kernel sent before the stream began.
pub const STREAM_SLACK: u64 = 32 << 20;
/// READs announced and not yet retired, at most (the kernel keeps far fewer in flight).
const ARRIVED_MAX: usize = 256;
/// Bytes a stream keeps of what it passed over, for READs that come late.
const PASSED_MAX: u64 = 4 << 20;
/// Smallest pipe used: the default `fs.pipe-max-size`, which needs no privilege. It holds a
/// 512 KiB reply; the mount asks for READs no larger than that when it cannot have
/// [`FULL_READ_PIPE`].
pub const MIN_PIPE: usize = 1 << 20;
/// A pipe that holds a 1 MiB reply.
pub const FULL_READ_PIPE: usize = 2 << 20;
/// Pipe size asked for: a 1 MiB reply plus its header, even when the socket's buffers are
/// smaller than pages (needs CAP_SYS_RESOURCE or a raised `fs.pipe-max-size`).
const WANT_PIPE: usize = 4 << 20;
/// Largest response head accepted.
const MAX_HEAD: usize = 64 << 10;
/// Reply buffers of streams that read into memory kept for reuse, for all streams together
/// (one stream has a few READs in flight). Part of the 64 MiB beside the memory budget (see
/// `crate::cache::memory::POOLED_BUFFERS`).
const COPY_BUFFERS: usize = 8;
/// `sizeof(struct fuse_out_header)`.
const OUT_HEADER: usize = 16;

/// A plain-HTTP location of a file's bytes, for a reader that can be streamed.
#[derive(Clone)]
pub struct RawHttp {
    /// `http://` only: TLS bytes cannot be spliced.
    pub url: Url,
    /// Headers every GET of this file carries (auth, `If-Range`, extra headers from config).
    pub headers: HeaderMap,
    /// Told the body bytes streamed (per-source metrics).
    pub on_bytes: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    /// A response header that, when present, must have this value (the pinned version).
    pub pin: Option<(String, String)>,
}

impl RawHttp {
    pub fn new(url: Url, headers: HeaderMap) -> RawHttp {
        RawHttp {
            url,
            headers,
            on_bytes: None,
            pin: None,
        }
    }
}

/// A duplicate of the session's `/dev/fuse` descriptor, on which streams write replies.
#[derive(Debug)]
pub struct FuseDev(OwnedFd);

impl FuseDev {
    pub fn new(fd: OwnedFd) -> FuseDev {
        FuseDev(fd)
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// A pipe big enough for one reply.
struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    capacity: usize,
}

/// The largest pipe this process may make (at least [`MIN_PIPE`]), `None` below that.
pub fn pipe_capacity() -> Option<usize> {
    Pipe::new().ok().map(|p| p.capacity)
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
        // SAFETY: pipe2 succeeded, so both are fresh descriptors we own.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut size = WANT_PIPE;
        loop {
            // SAFETY: F_SETPIPE_SZ on a pipe we own.
            match cvt(unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) }) {
                Ok(got) if got as usize >= MIN_PIPE => {
                    return Ok(Pipe {
                        r,
                        w,
                        capacity: got as usize,
                    });
                }
                Ok(_) => {}
                Err(e) if size <= MIN_PIPE => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("a {} KiB pipe is refused ({e})", MIN_PIPE >> 10),
                    ));
                }
                Err(_) => {}
            }
            size /= 2;
            if size < MIN_PIPE {
                return Err(io::Error::other("the pipe is smaller than 1 MiB"));
            }
        }
    }

    /// Bytes waiting in the pipe.
    fn queued(&self) -> io::Result<usize> {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        cvt(unsafe { libc::ioctl(self.r.as_raw_fd(), libc::FIONREAD, &mut n) })?;
        Ok(n as usize)
    }

    fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            // SAFETY: writes from a live slice.
            let n = cvt_size(unsafe { libc::write(self.w.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })?;
            buf = &buf[n..];
        }
        Ok(())
    }
}

fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize, flags: libc::c_uint) -> io::Result<usize> {
    // SAFETY: plain splice between two descriptors we hold; no offsets.
    cvt_size(unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            flags,
        )
    })
}

/// Bytes readable on a socket without blocking.
fn socket_pending(sock: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r < 0 { 0 } else { n as usize }
}

/// What became of a READ given to a stream.
#[derive(Debug)]
pub enum Served {
    /// Answered on `/dev/fuse`.
    Spliced,
    /// The kernel had already dropped the request (interrupted): nothing to answer.
    Gone,
    /// The stream's bytes, in memory: a reply that did not fit the pipe, or the reply of a
    /// stream with a lane.
    Data(Bytes),
    /// The first bytes of the READ, up to the end of a stream that stops short of the file's
    /// end (at a block the disk tier has): the rest is for the ordinary path.
    Head(Bytes),
    /// A verified stream's reply completed the file, and its checksum is not the one expected.
    Mismatch { expected: String, actual: String },
    /// Not the stream's: take the ordinary path.
    NotMine,
}

/// One HTTP/1.1 response body being read, in order, into FUSE replies.
struct Stream {
    sock: TcpStream,
    pipe: Pipe,
    /// File offset of the next body byte.
    pos: u64,
    end: u64,
    /// Body bytes that arrived with the response head.
    early: Vec<u8>,
    /// Bytes passed over for READs that came late (or not at all), oldest first.
    passed: std::collections::VecDeque<(u64, Bytes)>,
    /// Set while a reply is being assembled: a cancelled read leaves the pipe half full.
    torn: bool,
    on_bytes: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    /// For a file with a checksum ("Verified streams") or a mount with a disk tier ("Kept
    /// streams"): every body byte is read into memory and handed, in file order, to the lane
    /// that hashes and keeps it.
    lane: Option<Lane>,
    /// The lane's buffers, counted in the memory budget ([`LANE_HOLD`]) while the stream lives.
    _hold: Option<Hold>,
}

/// Pieces (replies or passed-over bytes, up to 1 MiB each) a stream may be ahead of its lane.
/// 2 reads as fast as 8 (B2, 4 alternating rounds: 0.92–1.1 GB/s either way) and bounds what
/// many streams hold outside the cache budget.
const LANE_PIECES: usize = 2;

/// Memory a stream with a lane holds, counted in the cache's budget while it is open: the
/// pieces in the lane and in the lane's hands, the block being assembled (its pieces may
/// straddle two buffers) and the reply being answered. Measured: 32 kept streams peaked at
/// 4.8 MB of such buffers each.
pub const LANE_HOLD: u64 = (LANE_PIECES as u64 + 3) << 20;

/// What a stream's bytes go to besides the replies, on a blocking task of its own: the stream
/// sends each piece as it reads it, and the task takes them in that order. It runs beside the
/// receiving and the replies instead of between them, on the other core.
///
/// * Hashing (a verified stream): the pieces feed the handle's verifier (B2's SHA-1 costs 0.6
///   CPU-s per GiB here). Hashing ends with the verdict, or when the checksum is given up.
/// * Keeping (a kept stream): the pieces are cut into the cache's blocks, which go to the disk
///   tier's writer. A block the stream did not carry whole is not kept.
///
/// The task ends when both have ended (a kept stream's, only with the stream), and then the
/// stream splices what is left.
struct Lane {
    tx: tokio::sync::mpsc::Sender<(u64, Bytes)>,
    /// The mismatch, if the file's last byte completed a bad checksum.
    task: tokio::task::JoinHandle<Option<(String, String)>>,
}

impl Lane {
    /// A lane for a stream with a checksum to follow, blocks to keep, or both (`None` without
    /// either: the stream splices).
    fn start(check: Option<Check>, keep: Option<Keep>) -> Option<Lane> {
        if check.is_none() && keep.is_none() {
            return None;
        }
        let rt = tokio::runtime::Handle::current();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, Bytes)>(LANE_PIECES);
        let task = tokio::task::spawn_blocking(move || {
            let mut check = check;
            let mut blocks = keep.map(Blocks::new);
            while let Some((at, data)) = rx.blocking_recv() {
                if let Some(c) = &check {
                    match hash_piece(c, at, &data) {
                        Hashed::Pending => {}
                        Hashed::Ended => check = None,
                        // Bad bytes: nothing more of them is kept.
                        Hashed::Mismatch(expected, actual) => return Some((expected, actual)),
                    }
                }
                if let Some(b) = &mut blocks {
                    b.push(&rt, at, data);
                }
                if check.is_none() && blocks.is_none() {
                    break;
                }
            }
            None
        });
        Some(Lane { tx, task })
    }
}

/// What one piece did to a lane's checksum.
enum Hashed {
    Pending,
    /// Verified, or given up: nothing more to hash.
    Ended,
    /// The file's last byte completed a wrong checksum (expected, actual).
    Mismatch(String, String),
}

/// Feeds one piece to the handle's verifier.
fn hash_piece(check: &Check, at: u64, data: &Bytes) -> Hashed {
    let mut guard = check.blocking_lock();
    let Some(v) = guard.as_mut() else {
        return Hashed::Ended;
    };
    // The checksum is behind the stream: ordinary reads it has not caught up with cannot be
    // followed from here. Given up, as the ordinary path gives up on a reader that jumps.
    // (One ahead skips what it has.)
    if v.pos < at {
        tracing::debug!(at, hashed = v.pos, "stream ahead of its checksum: not verified");
        *guard = None;
        return Hashed::Ended;
    }
    Metrics::add(&global().stream_verified_bytes, data.len() as u64);
    let verdict = v.feed(at, data);
    if verdict == Verdict::Pending {
        return Hashed::Pending;
    }
    *guard = None;
    match verdict {
        Verdict::Mismatch { expected, actual } => Hashed::Mismatch(expected, actual),
        _ => {
            tracing::debug!("checksum verified on the stream");
            Hashed::Ended
        }
    }
}

/// Where a kept stream's blocks go: the block cache, whose writer stores them in the disk
/// tier, and the file they are blocks of.
#[derive(Clone)]
pub struct Keep {
    pub cache: Arc<BlockCache>,
    pub file: Arc<FileCtx>,
}

/// A kept stream's pieces, cut into whole blocks for the disk tier. The pieces are held, not
/// copied: the disk tier's writer copies them once, into its write buffer.
struct Blocks {
    keep: Keep,
    block_size: u64,
    /// The block being assembled, and the bytes of it held in `parts`.
    index: u64,
    have: u64,
    parts: Vec<Bytes>,
}

impl Blocks {
    fn new(keep: Keep) -> Blocks {
        Blocks {
            block_size: keep.cache.block_size(),
            keep,
            index: 0,
            have: 0,
            parts: Vec::new(),
        }
    }

    /// Takes the bytes at `at`; every block they complete goes to the disk tier's writer
    /// (waiting for room there, as a fetch run does).
    fn push(&mut self, rt: &tokio::runtime::Handle, mut at: u64, mut data: Bytes) {
        let bs = self.block_size;
        while !data.is_empty() {
            let index = at / bs;
            let start = index * bs;
            if self.have > 0 && (index != self.index || start + self.have != at) {
                // Not the bytes the block needs next (a stream never skips; this is a guard).
                self.parts.clear();
                self.have = 0;
            }
            if self.have == 0 {
                if at != start {
                    // The middle of a block the stream did not carry from its start.
                    let skip = (start + bs - at).min(data.len() as u64);
                    let _ = data.split_to(skip as usize);
                    at += skip;
                    continue;
                }
                self.index = index;
            }
            let len = (self.keep.file.size - start).min(bs);
            let take = (len - self.have).min(data.len() as u64);
            self.parts.push(data.split_to(take as usize));
            self.have += take;
            at += take;
            if self.have == len {
                let parts = std::mem::take(&mut self.parts);
                self.have = 0;
                Metrics::add(&global().stream_kept_bytes, len);
                rt.block_on(self.keep.cache.keep(&self.keep.file, index, parts));
            }
        }
    }
}

/// A handle's verifier, shared between its stream and its ordinary reads.
pub type Check = Arc<Mutex<Option<Verifier>>>;

/// Work a stream waits for before it opens; `false`: do not open it.
pub type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>;

impl Stream {
    /// Sends `GET` for `range` of a file of `size` bytes and checks that the response is
    /// exactly that range.
    async fn open(
        target: &RawHttp,
        range: Range<u64>,
        size: u64,
        timeout: Duration,
        check: Option<Check>,
        keep: Option<Keep>,
        hold: Option<Hold>,
    ) -> io::Result<Stream> {
        let pipe = Pipe::new()?;
        let url = &target.url;
        if url.scheme() != "http" {
            return Err(io::Error::other("not plain http"));
        }
        let host = url.host_str().ok_or_else(|| io::Error::other("no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let sock = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        sock.set_nodelay(true)?;
        let mut head = format!(
            "GET {}{} HTTP/1.1\r\nHost: {}\r\nRange: bytes={}-{}\r\nAccept-Encoding: identity\r\nUser-Agent: fetchfs/{}\r\n",
            url.path(),
            url.query().map(|q| format!("?{q}")).unwrap_or_default(),
            match url.port() {
                Some(p) => format!("{host}:{p}"),
                None => host.to_string(),
            },
            range.start,
            range.end - 1,
            env!("CARGO_PKG_VERSION"),
        );
        for (name, value) in &target.headers {
            use reqwest::header::{ACCEPT_ENCODING, CONNECTION, HOST, RANGE, TRANSFER_ENCODING, USER_AGENT};
            if [
                &HOST,
                &RANGE,
                &ACCEPT_ENCODING,
                &CONNECTION,
                &TRANSFER_ENCODING,
                &USER_AGENT,
            ]
            .contains(&name)
            {
                continue;
            }
            let Ok(v) = value.to_str() else { continue };
            head.push_str(&format!("{name}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut stream = Stream {
            sock,
            pipe,
            pos: range.start,
            end: range.end,
            early: Vec::new(),
            passed: std::collections::VecDeque::new(),
            torn: false,
            on_bytes: target.on_bytes.clone(),
            lane: Lane::start(check, keep),
            _hold: hold,
        };
        tokio::time::timeout(
            timeout,
            stream.handshake(head.as_bytes(), &range, size, target.pin.as_ref()),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no response head in time"))??;
        Metrics::add(&global().http_requests, 1);
        Ok(stream)
    }

    async fn handshake(
        &mut self,
        request: &[u8],
        range: &Range<u64>,
        size: u64,
        pin: Option<&(String, String)>,
    ) -> io::Result<()> {
        self.sock.write_all(request).await?;
        let mut buf = Vec::with_capacity(8 << 10);
        let head_len = loop {
            if buf.len() >= MAX_HEAD {
                return Err(io::Error::other("response head too large"));
            }
            let mut chunk = [0u8; 8 << 10];
            let n = self.sock.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&buf).map_err(io::Error::other)? {
                httparse::Status::Partial => continue,
                httparse::Status::Complete(len) => {
                    check_response(&resp, range, size)?;
                    if let Some((name, want)) = pin
                        && let Some(h) = resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name))
                        && h.value.trim_ascii() != want.as_bytes()
                    {
                        return Err(io::Error::other(format!("{name} differs from the version opened")));
                    }
                    break len;
                }
            }
        };
        self.early = buf.split_off(head_len);
        if self.early.len() as u64 > range.end - range.start {
            return Err(io::Error::other("more body than asked for"));
        }
        Ok(())
    }

    /// Answers FUSE request `unique` with the next `len` body bytes.
    async fn reply(&mut self, dev: &FuseDev, unique: u64, len: usize, timeout: Duration) -> io::Result<Served> {
        debug_assert!(!self.torn);
        if self.lane.is_some() {
            let data = self.read_in(len, timeout).await?;
            if self.pos == self.end
                && let Some((expected, actual)) = self.finish_lane().await?
            {
                return Ok(Served::Mismatch { expected, actual });
            }
            return Ok(Served::Data(data));
        }
        self.torn = true;
        let mut out = [0u8; OUT_HEADER];
        out[0..4].copy_from_slice(&((OUT_HEADER + len) as u32).to_ne_bytes());
        out[8..16].copy_from_slice(&unique.to_ne_bytes());
        self.pipe.write_all(&out)?;
        let early = self.early.len().min(len);
        if early > 0 {
            self.pipe.write_all(&self.early[..early])?;
            self.early.drain(..early);
        }
        let want = len - early;
        let moved = self.fill(want, timeout).await?;
        if moved < want {
            // The pipe ran out of slots (the socket's buffers were smaller than pages): this
            // reply is finished in memory, the stream goes on.
            tracing::trace!(moved, want, "pipe full: reply copied");
            let data = self.copy_out(OUT_HEADER + early + moved, len, timeout).await?;
            self.pos += len as u64;
            self.torn = false;
            self.count(len as u64);
            return Ok(Served::Data(data));
        }
        let total = OUT_HEADER + len;
        let served = match splice(self.pipe.r.as_fd(), dev.0.as_fd(), total, 0) {
            Ok(n) if n == total => Served::Spliced,
            Ok(n) => return Err(io::Error::other(format!("/dev/fuse took {n} of {total} bytes"))),
            // Interrupted and already answered by the kernel; the pipe was consumed.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && self.pipe.queued()? == 0 => Served::Gone,
            Err(e) => return Err(e),
        };
        self.pos += len as u64;
        self.torn = false;
        self.count(len as u64);
        Metrics::add(&global().spliced_bytes, len as u64);
        Ok(served)
    }

    /// At the stream's end: waits until its lane has taken every byte (so its last block is
    /// queued for the disk and its checksum fed) and returns the lane's mismatch, if the
    /// file's last byte completed a bad checksum.
    async fn finish_lane(&mut self) -> io::Result<Option<(String, String)>> {
        let Some(lane) = self.lane.take() else {
            return Ok(None);
        };
        drop(lane.tx);
        lane.task.await.map_err(|e| io::Error::other(format!("lane: {e}")))
    }

    /// The reply being built (`queued` bytes in the pipe, header first) as `len` bytes in
    /// memory, the rest read from the socket.
    async fn copy_out(&mut self, queued: usize, len: usize, timeout: Duration) -> io::Result<Bytes> {
        let mut buf = vec![0u8; queued];
        let mut have = 0;
        while have < queued {
            // SAFETY: reads into the live, in-bounds part of `buf`.
            let n = cvt_size(unsafe {
                libc::read(self.pipe.r.as_raw_fd(), buf[have..].as_mut_ptr().cast(), queued - have)
            })?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            have += n;
        }
        self.recv_into(&mut buf, OUT_HEADER + len, timeout).await?;
        Ok(Bytes::from(buf).slice(OUT_HEADER..))
    }

    /// Waits until the socket has bytes. The syscalls here bypass tokio, whose readiness flag
    /// may be stale either way: it is cleared first, then the socket asked directly, so a byte
    /// that arrives in between is never missed.
    async fn wait_readable(&self, timeout: Duration) -> io::Result<()> {
        let _ = self
            .sock
            .try_io(Interest::READABLE, || Err::<(), _>(io::ErrorKind::WouldBlock.into()));
        if socket_pending(&self.sock) > 0 {
            return Ok(());
        }
        tokio::time::timeout(timeout, self.sock.readable())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "body stalled"))?
    }

    /// Moves up to `len` body bytes from the socket into the pipe; fewer only when the pipe is
    /// full.
    async fn fill(&mut self, len: usize, timeout: Duration) -> io::Result<usize> {
        let mut moved = 0;
        while moved < len {
            let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
            match splice(self.sock.as_fd(), self.pipe.w.as_fd(), len - moved, flags) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => moved += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if socket_pending(&self.sock) > 0 {
                        // The socket has bytes but the pipe took none: it is full.
                        return Ok(moved);
                    }
                    self.wait_readable(timeout).await?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(moved)
    }

    /// Counts `n` body bytes received.
    fn count(&self, n: u64) {
        Metrics::add(&global().http_bytes, n);
        if let Some(f) = &self.on_bytes {
            f(n);
        }
    }

    /// Reads the next `n` body bytes into memory, for READs of them still to come.
    /// In pieces of at most 1 MiB; only the last [`PASSED_MAX`] bytes are kept.
    async fn pass_over(&mut self, n: u64, timeout: Duration) -> io::Result<()> {
        let end = self.pos + n;
        while self.pos < end {
            let piece = (end - self.pos).min(1 << 20) as usize;
            let at = self.pos;
            let data = self.read_in(piece, timeout).await?;
            self.passed.push_back((at, data));
            let mut held: u64 = self.passed.iter().map(|(_, b)| b.len() as u64).sum();
            while held > PASSED_MAX
                && let Some((_, b)) = self.passed.pop_front()
            {
                held -= b.len() as u64;
            }
        }
        Ok(())
    }

    /// The next `len` body bytes, read into memory (a pooled buffer) and handed to the lane.
    /// The stream moves past them.
    async fn read_in(&mut self, len: usize, timeout: Duration) -> io::Result<Bytes> {
        static POOL: std::sync::OnceLock<Arc<BufPool>> = std::sync::OnceLock::new();
        let pool = POOL.get_or_init(|| BufPool::new(COPY_BUFFERS));
        let mut buf = pool.take(len);
        let early = self.early.len().min(len);
        buf.extend_from_slice(&self.early[..early]);
        self.early.drain(..early);
        self.recv_into(&mut buf, len, timeout).await?;
        let data = pool.freeze(buf);
        let at = self.pos;
        self.pos += len as u64;
        self.count(len as u64);
        self.send_to_lane(at, &data).await;
        Ok(data)
    }

    /// Receives from the socket until `buf` holds `len` bytes, into its spare capacity (no
    /// zeroing of a buffer about to be overwritten).
    async fn recv_into(&self, buf: &mut Vec<u8>, len: usize, timeout: Duration) -> io::Result<()> {
        buf.reserve_exact(len.saturating_sub(buf.len()));
        while buf.len() < len {
            let want = len - buf.len();
            let rest = &mut buf.spare_capacity_mut()[..want];
            // SAFETY: receives at most `rest.len()` bytes into the vector's spare capacity;
            // only the bytes received are added to its length, below.
            let r = unsafe {
                libc::recv(
                    self.sock.as_raw_fd(),
                    rest.as_mut_ptr().cast(),
                    rest.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            match cvt_size(r) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                // SAFETY: `n` bytes past the old length were just written by recv.
                Ok(n) => unsafe { buf.set_len(buf.len() + n) },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_readable(timeout).await?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Hands the bytes at `at` to the lane. Once the lane has ended (the checksum was given up,
    /// and there are no blocks to keep), the stream splices what is left.
    async fn send_to_lane(&mut self, at: u64, data: &Bytes) {
        let Some(lane) = &self.lane else { return };
        if lane.tx.send((at, data.clone())).await.is_err() {
            self.lane = None;
        }
    }

    /// The bytes of `range` if they were passed over.
    ///
    /// The pieces are cut where the stream was, not where READs are (the kernel's READs of a
    /// `dd bs=1M` sit 640 KiB past each MiB), so a READ may need two: it is then copied
    /// together. Taking such a READ for lost sent it the ordinary way, which fetched its
    /// blocks a second time.
    fn passed(&self, range: &Range<u64>) -> Option<Bytes> {
        let first = self
            .passed
            .iter()
            .position(|(at, b)| *at <= range.start && range.start < at + b.len() as u64)?;
        let (at, b) = &self.passed[first];
        if range.end <= at + b.len() as u64 {
            return Some(b.slice((range.start - at) as usize..(range.end - at) as usize));
        }
        let mut out = bytes::BytesMut::with_capacity((range.end - range.start) as usize);
        let mut pos = range.start;
        for (at, b) in self.passed.iter().skip(first) {
            if *at > pos {
                // A gap: a piece no longer held.
                return None;
            }
            let to = (range.end.min(at + b.len() as u64) - at) as usize;
            out.extend_from_slice(&b[(pos - at) as usize..to]);
            pos = at + to as u64;
            if pos == range.end {
                return Some(out.freeze());
            }
        }
        None
    }
}

/// The response must be exactly the `206` of `range` of a file of `size` bytes, with a plain
/// body.
fn check_response(resp: &httparse::Response<'_, '_>, range: &Range<u64>, size: u64) -> io::Result<()> {
    if resp.code != Some(206) {
        return Err(io::Error::other(format!("status {:?}, not 206", resp.code)));
    }
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    if header("transfer-encoding").is_some() {
        return Err(io::Error::other("a transfer-coded body"));
    }
    if header("content-encoding").is_some_and(|v| !v.eq_ignore_ascii_case("identity")) {
        return Err(io::Error::other("a content-coded body"));
    }
    let got = crate::http::range::parse_content_range(header("content-range").unwrap_or(""))
        .ok_or_else(|| io::Error::other("no usable Content-Range"))?;
    if got.span != Some((range.start, range.end - 1)) {
        return Err(io::Error::other("Content-Range differs from the range asked for"));
    }
    // Another total means the file changed.
    if got.total.is_some_and(|t| t != size) {
        return Err(io::Error::other("the file's size changed"));
    }
    if let Some(len) = header("content-length")
        && len.parse::<u64>().ok() != Some(range.end - range.start)
    {
        return Err(io::Error::other("Content-Length differs from the range asked for"));
    }
    Ok(())
}

impl Drop for Streamer {
    fn drop(&mut self) {
        let [spliced, in_memory, ordinary, wakes] = self.tally.each_ref().map(|t| t.load(Ordering::Relaxed));
        if spliced + in_memory + ordinary > 0 {
            tracing::debug!(
                url = %crate::provider::http::display_url(&self.target.url),
                spliced, in_memory, ordinary, wakes, "splice stream tally"
            );
        }
    }
}

/// A READ the stream does not answer, and why (at trace level).
fn not_mine(range: &Range<u64>, why: &str) -> Served {
    tracing::trace!(?range, "not the stream's: {why}");
    Served::NotMine
}

/// A READ registered as waiting at its offset; unregistered when dropped.
struct Waiter<'a> {
    streamer: &'a Streamer,
    offset: u64,
    notify: Arc<tokio::sync::Notify>,
}

impl<'a> Waiter<'a> {
    fn new(streamer: &'a Streamer, offset: u64) -> Waiter<'a> {
        let notify = Arc::new(tokio::sync::Notify::new());
        streamer.waiters.lock().unwrap().insert(offset, notify.clone());
        Waiter {
            streamer,
            offset,
            notify,
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut w = self.streamer.waiters.lock().unwrap();
        if w.get(&self.offset).is_some_and(|n| Arc::ptr_eq(n, &self.notify)) {
            w.remove(&self.offset);
        }
    }
}

/// Longest a waiting READ sleeps before it looks at the stream again.
const WAKE_SLICE: Duration = Duration::from_millis(20);

/// Position published when no stream is open.
const NONE: u64 = u64::MAX;

/// A handle's stream: opened once its reader is known to be sequential, shared by its READs.
pub struct Streamer {
    target: RawHttp,
    dev: Arc<FuseDev>,
    state: Arc<Mutex<Option<Stream>>>,
    /// The open stream's position ([`NONE`] when none), readable without the state lock.
    pos: AtomicU64,
    /// Set after a failure: this handle reads the ordinary way from then on.
    off: AtomicBool,
    timeout: Duration,
    /// Offsets of READs received from the kernel and not yet answered ([`Streamer::announce`]).
    arrived: std::sync::Mutex<Vec<u64>>,
    /// What became of this handle's READs, for the debug line when it closes: spliced,
    /// answered from memory (a full pipe, or bytes passed over), sent the ordinary way, and
    /// wake-ups of waiting READs.
    tally: [AtomicU64; 4],
    /// READs waiting for the stream to reach them, by offset.
    waiters: std::sync::Mutex<std::collections::BTreeMap<u64, Arc<tokio::sync::Notify>>>,
    /// The handle's checksum: set for a file that has one (a verified stream).
    check: Option<Check>,
    /// Where its blocks are kept: set with a disk tier (a kept stream).
    keep: Option<Keep>,
    /// The file's size: a stream may stop short of it (at a block the disk tier has).
    size: u64,
    /// Where the open (or opening) stream stops.
    end: AtomicU64,
}

impl Streamer {
    /// A streamer for one handle of a file of `size` bytes; `check` is its checksum, if the
    /// file has one, `keep` where its blocks are kept, if the mount has a disk tier.
    pub fn new(
        target: RawHttp,
        dev: Arc<FuseDev>,
        timeout: Duration,
        size: u64,
        check: Option<Check>,
        keep: Option<Keep>,
    ) -> Streamer {
        Streamer {
            check,
            keep,
            size,
            end: AtomicU64::new(size),
            target,
            dev,
            state: Arc::new(Mutex::new(None)),
            pos: AtomicU64::new(NONE),
            off: AtomicBool::new(false),
            timeout,
            arrived: std::sync::Mutex::new(Vec::new()),
            waiters: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            tally: Default::default(),
        }
    }

    /// Where the open stream is, if one is open.
    pub fn position(&self) -> Option<u64> {
        Some(self.pos.load(Ordering::Acquire)).filter(|&p| p != NONE)
    }

    /// Whether a stream may still be opened.
    pub fn available(&self) -> bool {
        !self.off.load(Ordering::Relaxed) && self.position().is_none()
    }

    fn give_up(&self, why: &dyn std::fmt::Display) {
        if !self.off.swap(true, Ordering::Relaxed) {
            tracing::debug!(url = %crate::provider::http::display_url(&self.target.url), "splice stream closed: {why}");
        }
        self.set_pos(NONE);
    }

    /// Whether its streams read into memory (a checksum to follow or blocks to keep), and so
    /// must hold [`LANE_HOLD`] of the memory budget while open.
    pub fn needs_hold(&self) -> bool {
        self.check.is_some() || self.keep.is_some()
    }

    /// Opens a stream of `range` in the background, once `ready` (if given) has run. READs at
    /// or past its start wait for it; the state lock is taken here, before the position is
    /// published, so none slips past. `hold` is its share of the memory budget, if it needs one.
    pub fn start(self: &Arc<Self>, range: Range<u64>, ready: Option<BoxFuture>, hold: Option<Hold>) {
        if !self.available() {
            return;
        }
        tracing::trace!(?range, "stream start");
        let Ok(guard) = self.state.clone().try_lock_owned() else {
            return;
        };
        self.end.store(range.end, Ordering::Release);
        self.set_pos(range.start);
        let me = self.clone();
        tokio::spawn(async move {
            if let Some(ready) = ready
                && !ready.await
            {
                drop(guard);
                me.give_up(&"not ready");
                return;
            }
            me.open(guard, range, hold).await
        });
    }

    async fn open(&self, mut guard: OwnedMutexGuard<Option<Stream>>, range: Range<u64>, hold: Option<Hold>) {
        // A handle whose checksum was given up (a reader that did not start at 0) splices.
        let check = match &self.check {
            Some(c) if c.lock().await.is_some() => Some(c.clone()),
            _ => None,
        };
        let opened = Stream::open(
            &self.target,
            range,
            self.size,
            self.timeout,
            check,
            self.keep.clone(),
            hold,
        );
        match opened.await {
            Ok(s) => *guard = Some(s),
            Err(e) => self.give_up(&format_args!("open: {e}")),
        }
    }

    /// Notes, on the FUSE thread that received it, that a READ at `offset` is on its way: READs
    /// ahead of it then wait for it instead of passing over its bytes. Tokio may run READ tasks
    /// in any order; the kernel queues them in order.
    pub fn announce(&self, offset: u64) {
        let mut a = self.arrived.lock().unwrap();
        if a.len() >= ARRIVED_MAX {
            a.remove(0);
        }
        a.push(offset);
    }

    /// The READ at `offset` announced earlier is answered (or went elsewhere).
    pub fn retire(&self, offset: u64) {
        let mut a = self.arrived.lock().unwrap();
        if let Some(i) = a.iter().position(|&o| o == offset) {
            a.swap_remove(i);
            drop(a);
            // A READ the next waiters waited for has gone elsewhere: the first looks again.
            if offset >= self.pos.load(Ordering::Acquire) {
                self.wake_from(offset);
            }
        }
    }

    /// Publishes the stream's position and wakes the READ that waits there (or, when the
    /// stream closes, every waiting READ).
    fn set_pos(&self, pos: u64) {
        self.pos.store(pos, Ordering::Release);
        if pos == NONE {
            for n in self.waiters.lock().unwrap().values() {
                n.notify_one();
            }
        } else {
            self.wake_from(pos);
        }
    }

    /// Wakes the first READ waiting at or after `pos`.
    fn wake_from(&self, pos: u64) {
        if let Some((_, n)) = self.waiters.lock().unwrap().range(pos..).next() {
            n.notify_one();
        }
    }

    /// Whether a READ at `from..to` is in the daemon.
    fn arrived_in(&self, from: u64, to: u64) -> bool {
        self.arrived.lock().unwrap().iter().any(|o| (from..to).contains(o))
    }

    /// The furthest offset of a READ in the daemon now.
    pub fn furthest_arrived(&self) -> Option<u64> {
        self.arrived.lock().unwrap().iter().copied().max()
    }

    /// Closes the open stream: its reader has started reading elsewhere. It may stream again
    /// once the prefetcher sees it sequential.
    pub async fn stop(&self) {
        if let Some(pos) = self.position() {
            tracing::debug!(pos, "a seek closes the stream");
            self.close(pos).await;
        }
    }

    /// Closes the stream if it is still the one at `pos`.
    async fn close(&self, pos: u64) {
        let mut state = self.state.lock().await;
        if state.as_ref().is_some_and(|s| s.pos == pos && !s.torn) {
            *state = None;
            self.set_pos(NONE);
        }
    }

    /// Offers READ `unique` of `range` to the stream.
    pub async fn serve(&self, unique: u64, range: Range<u64>) -> Served {
        let served = self.serve_inner(unique, range).await;
        let i = match &served {
            Served::Spliced | Served::Gone => 0,
            Served::Data(_) | Served::Head(_) | Served::Mismatch { .. } => 1,
            Served::NotMine => 2,
        };
        self.tally[i].fetch_add(1, Ordering::Relaxed);
        served
    }

    async fn serve_inner(&self, unique: u64, range: Range<u64>) -> Served {
        let mut deadline = tokio::time::Instant::now() + ORDER_WAIT;
        let patience = tokio::time::Instant::now() + self.timeout;
        // Woken only when the stream reaches this READ or the READ it waits for leaves (see
        // `wake_from`): with dozens of READs in flight, waking all of them at every reply cost
        // more CPU than the replies.
        let waiter = Waiter::new(self, range.start);
        loop {
            let pos = self.pos.load(Ordering::Acquire);
            if pos == NONE {
                return Served::NotMine;
            }
            if range.start >= self.end.load(Ordering::Acquire) {
                // Past a stream that stops short of the file's end: the ordinary path's. The
                // stream ends with the READ across its end; a reader far past it has moved on.
                if range.start - pos > STREAM_SLACK {
                    self.close(pos).await;
                }
                return not_mine(&range, "past the stream's end");
            }
            if range.start < pos {
                // A READ that came after the stream passed it (its bytes may be held), or one
                // answered from the cache before the stream began.
                let state = self.state.lock().await;
                return match state.as_ref().and_then(|s| s.passed(&range)) {
                    Some(bytes) => Served::Data(bytes),
                    None => not_mine(&range, "behind the stream"),
                };
            }
            if range.start == pos {
                break;
            }
            // A READ between the stream's position and this one is in the daemon: it will move
            // the stream (or retire), so wait for it however long it takes (the FUSE bound
            // still applies). Otherwise the bytes before this READ may never be asked for (a
            // reader that skips): wait only briefly, and not at all for a jump too far to pass
            // over. (Only a READ exactly at the position used to count: a stream that starts on
            // a block boundary, under READs 640 KiB past each MiB, then had every READ pass over
            // the ones before it after 0.5 ms, and those found the stream gone past them.)
            let now = tokio::time::Instant::now();
            let limit = if self.arrived_in(pos, range.start) {
                deadline = now + ORDER_WAIT;
                patience
            } else if range.start - pos > STREAM_SLACK {
                tracing::debug!(?range, pos, "a jump closes the stream");
                self.close(pos).await;
                return Served::NotMine;
            } else {
                deadline
            };
            if now >= limit {
                // Waited long enough for the READs before this one: pass over their bytes.
                break;
            }
            // Look again at least every WAKE_SLICE, so a lost wake-up costs that, not a stall.
            let _ = tokio::time::timeout_at(limit.min(now + WAKE_SLICE), waiter.notify.notified()).await;
            self.tally[3].fetch_add(1, Ordering::Relaxed);
        }
        drop(waiter);
        let mut state = self.state.lock().await;
        let Some(stream) = state.as_mut() else {
            return Served::NotMine;
        };
        if stream.torn {
            *state = None;
            self.give_up(&"a cancelled read left a reply half built");
            return Served::NotMine;
        }
        if range.start < stream.pos {
            return stream
                .passed(&range)
                .map_or_else(|| not_mine(&range, "passed while waiting"), Served::Data);
        }
        let result = async {
            if range.start > stream.pos {
                stream.pass_over(range.start - stream.pos, self.timeout).await?;
            }
            if range.end > stream.end {
                // Across the end of a stream that stops short of the file's end (at a block
                // the disk tier has): what the stream has of this READ, and the stream is done.
                let head = stream
                    .read_in((stream.end - range.start) as usize, self.timeout)
                    .await?;
                stream.finish_lane().await?;
                return Ok(Served::Head(head));
            }
            stream
                .reply(&self.dev, unique, (range.end - range.start) as usize, self.timeout)
                .await
        }
        .await;
        match result {
            Ok(served) => {
                let done = stream.pos >= stream.end;
                self.set_pos(if done { NONE } else { stream.pos });
                if done {
                    if stream.end == self.size {
                        // The whole rest of the file went through; nothing more to stream.
                        self.off.store(true, Ordering::Relaxed);
                    }
                    *state = None;
                }
                served
            }
            Err(e) => {
                *state = None;
                self.give_up(&e);
                Served::NotMine
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<'h, 'b>(raw: &'b [u8], headers: &'h mut [httparse::Header<'b>]) -> httparse::Response<'h, 'b> {
        let mut resp = httparse::Response::new(headers);
        assert!(resp.parse(raw).unwrap().is_complete());
        resp
    }

    #[test]
    fn only_the_exact_partial_response_is_streamed() {
        let ok = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 100-199/200\r\nContent-Length: 100\r\n\r\n";
        let mut h = [httparse::EMPTY_HEADER; 16];
        assert!(check_response(&parse(ok, &mut h), &(100..200), 200).is_ok());
        let mut h = [httparse::EMPTY_HEADER; 16];
        assert!(
            check_response(&parse(ok, &mut h), &(100..300), 300).is_err(),
            "another range"
        );
        let grown = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 100-199/1000\r\n\r\n";
        let mut h = [httparse::EMPTY_HEADER; 16];
        assert!(
            check_response(&parse(grown, &mut h), &(100..200), 200).is_err(),
            "another size"
        );
        // A stream that stops short of the end (at a block the disk tier has).
        let mut h = [httparse::EMPTY_HEADER; 16];
        assert!(check_response(&parse(grown, &mut h), &(100..200), 1000).is_ok());
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"[..],
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 100-199/200\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 100-199/200\r\nContent-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 100-199/200\r\nContent-Length: 99\r\n\r\n",
            b"HTTP/1.1 206 Partial Content\r\nContent-Length: 100\r\n\r\n",
        ] {
            let mut h = [httparse::EMPTY_HEADER; 16];
            assert!(
                check_response(&parse(bad, &mut h), &(100..200), 200).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Never asked for anything: the blocks come from the stream.
    struct NoReader;

    #[async_trait::async_trait]
    impl crate::source::FileReader for NoReader {
        async fn read_stream(
            &self,
            _: Range<u64>,
        ) -> crate::error::Result<futures_util::stream::BoxStream<'static, crate::error::Result<Bytes>>> {
            Err(crate::error::SourceError::Protocol("not in this test".into()))
        }
    }

    /// A kept stream's pieces, cut anywhere, become exactly the blocks they carried whole; the
    /// block the stream began in the middle of, and one with a gap, are not kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_streams_pieces_become_exactly_the_whole_blocks_it_carried() {
        use crate::cache::BlockKey;
        use crate::cache::disk::DiskCache;
        use crate::cache::memory::FileKey;
        let dir = tempfile::tempdir().unwrap();
        let bs = 4096u64;
        let disk = Arc::new(DiskCache::open(dir.path(), 1 << 20, bs).unwrap());
        let cache = BlockCache::with_disk(1 << 20, bs, 4 * bs, Duration::from_secs(5), Some(disk.clone()));
        // Eight blocks, the last one short.
        let size = 7 * bs + 100;
        let data: Bytes = (0..size).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>().into();
        let file = Arc::new(FileCtx {
            key: Arc::new(FileKey {
                source: "s".into(),
                remote: "f".into(),
                validator: "v1".into(),
            }),
            size,
            reader: Arc::new(NoReader),
        });
        let keep = Keep {
            cache: cache.clone(),
            file: file.clone(),
        };
        let sent = data.clone();
        tokio::task::spawn_blocking(move || {
            let (rt, data) = (tokio::runtime::Handle::current(), sent);
            let mut blocks = Blocks::new(keep);
            // From the middle of block 0 to the middle of block 3, in pieces of 1000 bytes;
            // then a gap of one byte; then from there to the end, in pieces of 3000.
            let mut at = 1000;
            while at < 3 * bs + 500 {
                let end = (at + 1000).min(3 * bs + 500);
                blocks.push(&rt, at, data.slice(at as usize..end as usize));
                at = end;
            }
            at += 1;
            while at < 4 * bs {
                let end = (at + 3000).min(4 * bs);
                blocks.push(&rt, at, data.slice(at as usize..end as usize));
                at = end;
            }
            while at < size {
                let end = (at + 3000).min(size);
                blocks.push(&rt, at, data.slice(at as usize..end as usize));
                at = end;
            }
        })
        .await
        .unwrap();
        assert!(cache.flush_disk(Duration::from_secs(10)));
        let block = |i: u64| disk.get(&BlockKey::new("s", "f", "v1", i));
        for i in [0, 3] {
            assert_eq!(block(i), None, "block {i} was not carried whole");
        }
        for i in [1, 2, 4, 5, 6, 7] {
            let want = data.slice((i * bs) as usize..((i + 1) * bs).min(size) as usize);
            assert_eq!(block(i), Some(want), "block {i}");
        }
    }

    #[test]
    fn a_pipe_holds_a_whole_reply_as_root() {
        // Tests run as root (README); an unprivileged run may be refused a 2 MiB pipe, which
        // only turns splicing off.
        match Pipe::new() {
            Ok(p) => {
                p.write_all(&[7u8; 1000]).unwrap();
                assert_eq!(p.queued().unwrap(), 1000);
            }
            Err(e) => assert!(unsafe { libc::geteuid() } != 0, "root was refused a pipe: {e}"),
        }
    }
}

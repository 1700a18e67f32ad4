//! HTTP helpers shared by every provider: one client, retries, timeouts, ranges, errors.
//!
//! * [`Http::send`] sends a request built fresh for every attempt and retries connection
//!   errors, timeouts and the retriable statuses of DESIGN §5 with exponential backoff and
//!   jitter, honouring `Retry-After`; the whole loop is bounded by [`HttpOptions::op_timeout`]
//!   so a dead server turns into `EIO` within that time, never a hang (fuser has no
//!   FUSE_INTERRUPT, so nothing else would ever cancel the request).
//! * [`body_stream`] wraps a response body so that each chunk must arrive within
//!   [`HttpOptions::stall_timeout`].
//! * [`range`] normalises the many ways servers answer a `Range` request (providers.md §0.1)
//!   into "exactly these bytes or an error".
//! * [`auth::TokenCache`] keeps one token per source, refreshed before expiry and once on an
//!   auth error, with one refresh in flight.
//!
//! Nothing here logs a request's URL query or headers: signed URLs and tokens live there.

pub mod auth;
pub mod range;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, Response, StatusCode};

use crate::error::{Result, SourceError, is_retriable_status};

/// Timeouts and retry budget of one source's HTTP traffic.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// TCP (and TLS) connect limit for one attempt.
    pub connect_timeout: Duration,
    /// Limit for one attempt to produce response headers.
    pub request_timeout: Duration,
    /// Longest silence allowed between two chunks of a body.
    pub stall_timeout: Duration,
    /// Bound on one logical operation including all retries and waits: the longest a `read()`
    /// can wait for one fetch before it fails with EIO.
    pub op_timeout: Duration,
    /// Attempts per operation (first try included).
    pub max_attempts: u32,
    /// First backoff wait; each later wait is ×1.5, capped at `backoff_max`, with jitter.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Redirects followed per request (bounded: loops fail instead of spinning).
    pub max_redirects: usize,
    /// Idle keep-alive connections kept per host: parallel prefetch reuses them.
    pub pool_idle_per_host: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(20),
            stall_timeout: Duration::from_secs(15),
            op_timeout: Duration::from_secs(45),
            max_attempts: 8,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(8),
            max_redirects: 10,
            pool_idle_per_host: 32,
        }
    }
}

/// A `reqwest::Client` with the options above. Cheap to clone.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    opts: HttpOptions,
}

impl Http {
    /// Builds a client; rustls only (no OpenSSL), HTTP/1.1 keep-alive pool.
    pub fn new(opts: HttpOptions) -> Result<Http> {
        let max_redirects = opts.max_redirects;
        let client = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .pool_max_idle_per_host(opts.pool_idle_per_host)
            .tcp_nodelay(true)
            .user_agent(concat!("fetchfs/", env!("CARGO_PKG_VERSION")))
            // reqwest drops Authorization/Cookie on a redirect to another host.
            // 0 = hand every 3xx back to the caller (sources with credentials follow by hand).
            .redirect(if max_redirects == 0 {
                reqwest::redirect::Policy::none()
            } else {
                reqwest::redirect::Policy::limited(max_redirects)
            })
            .no_proxy()
            // A Referer would carry the previous URL's query (SMH's library_secret and
            // access_token, Doris's token) to wherever a redirect points.
            .referer(false)
            .build()
            .map_err(|e| SourceError::Invalid(format!("cannot build HTTP client: {e}")))?;
        Ok(Http { client, opts })
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn options(&self) -> &HttpOptions {
        &self.opts
    }

    /// Sends `build(client)` until it yields a non-retriable answer, retrying transport errors
    /// and 408/429/5xx with backoff. Returns the final response whatever its status (callers
    /// map 4xx with their provider's error body), or the transport/timeout error.
    /// `what` names the operation in errors ("GET /data/big.bin"), never with query strings.
    pub async fn send<F>(&self, what: &str, build: F) -> Result<Response>
    where
        F: Fn(&reqwest::Client) -> RequestBuilder,
    {
        let deadline = Instant::now() + self.opts.op_timeout;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(SourceError::Timeout(self.opts.op_timeout, what.to_string()));
            }
            let per_try = remaining.min(self.opts.request_timeout);
            let outcome = tokio::time::timeout(per_try, build(&self.client).send()).await;
            let (err, wait_hint) = match outcome {
                Err(_) => (SourceError::Timeout(per_try, what.to_string()), None),
                Ok(Err(e)) => (transport_error(what, &e), None),
                Ok(Ok(resp)) => {
                    let status = resp.status().as_u16();
                    if !is_retriable_status(status) {
                        return Ok(resp);
                    }
                    let hint = retry_after(resp.headers());
                    let reason = error_text(resp).await;
                    (
                        SourceError::Http {
                            status,
                            message: format!("{what}: {reason}"),
                        },
                        hint,
                    )
                }
            };
            if !err.is_transient() || attempt >= self.opts.max_attempts {
                return Err(err);
            }
            let wait = wait_hint.unwrap_or_else(|| self.backoff(attempt));
            let remaining = deadline.saturating_duration_since(Instant::now());
            if wait >= remaining {
                return Err(err);
            }
            tracing::debug!(%what, attempt, ?wait, error = %err, "retrying");
            crate::metrics::global().retry();
            tokio::time::sleep(wait).await;
        }
    }

    /// Wait before attempt `attempt + 1`: base × 1.5^(attempt-1), capped, ±25 % jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self.opts.backoff_base.as_secs_f64() * 1.5f64.powi(attempt.saturating_sub(1) as i32);
        let capped = base.min(self.opts.backoff_max.as_secs_f64());
        let jitter = 0.75 + rand::random::<f64>() * 0.5;
        Duration::from_secs_f64(capped * jitter)
    }

    /// A body stream whose chunks must each arrive within the stall timeout.
    pub fn body_stream(&self, resp: Response, what: &str) -> BoxStream<'static, Result<Bytes>> {
        body_stream(resp, self.opts.stall_timeout, what.to_string())
    }

    /// Exactly the bytes of `requested` out of a response to a ranged GET (any of 200/206/416,
    /// see [`range::plan`]), each chunk within the stall timeout, counted in the metrics.
    pub fn ranged_body(
        &self,
        resp: Response,
        requested: &std::ops::Range<u64>,
        expected_size: Option<u64>,
        what: &str,
    ) -> Result<BoxStream<'static, Result<Bytes>>> {
        let plan = range::plan(resp.status(), resp.headers(), requested, expected_size)?;
        let counted = self.body_stream(resp, what).inspect(|c| {
            if let Ok(c) = c {
                crate::metrics::Metrics::add(&crate::metrics::global().http_bytes, c.len() as u64);
            }
        });
        Ok(range::cut(counted.boxed(), plan))
    }

    /// Reads a whole (small) body, failing if it is larger than `limit` bytes.
    pub async fn body_bytes(&self, resp: Response, what: &str, limit: usize) -> Result<Bytes> {
        let mut stream = self.body_stream(resp, what);
        let mut out = bytes::BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if out.len() + chunk.len() > limit {
                return Err(SourceError::Protocol(format!(
                    "{what}: response larger than {limit} bytes"
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }

    /// Reads a JSON body (bounded to 64 MiB).
    pub async fn body_json<T: serde::de::DeserializeOwned>(&self, resp: Response, what: &str) -> Result<T> {
        let body = self.body_bytes(resp, what, 64 << 20).await?;
        decode_json(&body, what)
    }
}

/// Decodes a JSON body; the error names the offending field by its path
/// (`bad JSON at files[3].contentLength: invalid type: string "x", expected u64`).
pub fn decode_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            SourceError::Protocol(format!("{what}: bad JSON: {}", e.inner()))
        } else {
            SourceError::Protocol(format!("{what}: bad JSON at {path}: {}", e.inner()))
        }
    })
}

/// Wraps a response body so every chunk must arrive within `stall`.
pub fn body_stream(resp: Response, stall: Duration, what: String) -> BoxStream<'static, Result<Bytes>> {
    let inner = resp.bytes_stream();
    futures_util::stream::unfold((inner, what, false), move |(mut inner, what, done)| async move {
        if done {
            return None;
        }
        match tokio::time::timeout(stall, inner.next()).await {
            Err(_) => Some((
                Err(SourceError::Timeout(stall, format!("{what}: body stalled"))),
                (inner, what, true),
            )),
            Ok(None) => None,
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), (inner, what, false))),
            Ok(Some(Err(e))) => {
                let err = transport_error(&what, &e);
                Some((Err(err), (inner, what, true)))
            }
        }
    })
    .boxed()
}

/// Classifies a reqwest error without leaking the URL's query string.
pub fn transport_error(what: &str, e: &reqwest::Error) -> SourceError {
    if e.is_timeout() {
        SourceError::Timeout(Duration::ZERO, format!("{what}: {}", error_chain(e)))
    } else if e.is_redirect() {
        SourceError::Protocol(format!("{what}: too many redirects"))
    } else if e.is_builder() {
        // reqwest's Display of a builder error ends with "for url (...)": the whole URL,
        // query and signature included.
        SourceError::Invalid(format!("{what}: {}", error_chain(e)))
    } else {
        // Connect, reset, body decode and incomplete-message errors are all transport faults.
        SourceError::Connect(format!("{what}: {}", error_chain(e)))
    }
}

/// `error: cause: cause` with the URL stripped (it may carry a signature).
fn error_chain(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = String::new();
    let mut cur: Option<&dyn Error> = e.source();
    if e.is_connect() {
        s.push_str("connect error");
    } else if e.is_body() || e.is_decode() {
        s.push_str("body error");
    } else {
        s.push_str("request error");
    }
    // The innermost cause is the one that says what happened ("Connection refused").
    let mut last = None;
    while let Some(c) = cur {
        last = Some(c.to_string());
        cur = c.source();
    }
    if let Some(l) = last {
        s.push_str(": ");
        s.push_str(&l);
    }
    s
}

/// The `Retry-After` header in seconds (HTTP-date form accepted too), at least 1 s when present
/// as B2 and rclone do; absurd values are capped at 10 minutes.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let when = httpdate::parse_http_date(v).ok()?;
        when.duration_since(std::time::SystemTime::now()).unwrap_or_default()
    };
    Some(d.clamp(Duration::from_secs(1), Duration::from_secs(600)))
}

/// A short description of an error response: status plus the first bytes of the body (at most
/// 512, lossily decoded). Used only for non-JSON bodies.
pub async fn error_text(resp: Response) -> String {
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(5), resp.bytes()).await;
    let snippet = match body {
        Ok(Ok(b)) => {
            let s = String::from_utf8_lossy(&b[..b.len().min(512)]).trim().to_string();
            s.chars().filter(|c| !c.is_control()).collect::<String>()
        }
        _ => String::new(),
    };
    if snippet.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {snippet}")
    }
}

/// The generic errno-level meaning of a status for providers without a richer error body.
pub fn status_error(status: StatusCode, message: String) -> SourceError {
    match status.as_u16() {
        404 | 410 => SourceError::NotFound(message),
        401 | 403 => SourceError::PermissionDenied(message),
        412 => SourceError::Changed(message),
        s => SourceError::Http { status: s, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_that_cannot_be_built_is_reported_without_its_url() {
        // A signed URL with a scheme reqwest refuses: the error carries the whole URL.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(
                reqwest::Client::new()
                    .get("ftp://127.0.0.1:1/cos/obj?q-signature=SECRETSIG")
                    .send(),
            )
            .unwrap_err();
        assert!(e.is_builder(), "{e:?}");
        assert!(
            e.to_string().contains("SECRETSIG"),
            "reqwest no longer prints the URL: {e}"
        );
        let text = transport_error("GET /cos/obj", &e).to_string();
        assert!(!text.contains("SECRETSIG"), "{text}");
        assert!(text.contains("GET /cos/obj") && text.contains("scheme"), "{text}");
    }

    #[test]
    fn bad_json_errors_name_the_field() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct F {
            #[serde(rename = "contentLength")]
            len: u64,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Page {
            files: Vec<F>,
        }
        let e = decode_json::<Page>(br#"{"files":[{"contentLength":1},{"contentLength":"x"}]}"#, "list")
            .unwrap_err()
            .to_string();
        assert!(e.contains("files[1].contentLength"), "{e}");
        let e = decode_json::<Page>(br#"{"files":[{}]}"#, "list")
            .unwrap_err()
            .to_string();
        assert!(e.contains("contentLength"), "{e}");
    }

    #[test]
    fn retry_after_reads_seconds_and_floors_at_one() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after", "0".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(1)));
        h.insert("retry-after", "garbage".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_grows_by_one_and_a_half_and_is_capped() {
        let http = Http::new(HttpOptions {
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(4),
            ..HttpOptions::default()
        })
        .unwrap();
        let b1 = http.backoff(1).as_secs_f64();
        let b3 = http.backoff(3).as_secs_f64();
        let b9 = http.backoff(9).as_secs_f64();
        assert!((0.75..=1.25).contains(&b1), "{b1}");
        assert!((1.68..=2.82).contains(&b3), "{b3}");
        assert!(b9 <= 5.0, "{b9}");
    }
}

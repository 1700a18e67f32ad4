//! Turning a server's answer to a `Range` request into exactly the requested bytes.
//!
//! providers.md §0.1: a `200` means the body starts at byte 0 (B2 answers 200 for ranges that
//! cover the whole object or are malformed; Doris and many plain servers ignore Range), so we
//! skip to the start locally; a `206` must start where we asked and its `Content-Range` total
//! must match the size we expect; `416` means the object is shorter than we believed, i.e. it
//! changed. Bytes beyond the requested end are never passed on, however many the server sends.

use std::ops::Range;

use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use crate::error::{Result, SourceError};

/// `bytes=a-b` for the half-open `range` (HTTP ranges are inclusive).
pub fn header_value(range: &Range<u64>) -> String {
    debug_assert!(!range.is_empty());
    format!("bytes={}-{}", range.start, range.end - 1)
}

/// A parsed `Content-Range: bytes a-b/total` (total `*` = unknown). `bytes */N` (the 416 form)
/// parses as `first/last = None` with the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub span: Option<(u64, u64)>,
    pub total: Option<u64>,
}

/// Parses a `Content-Range` value; `None` for anything malformed (including `b < a`).
pub fn parse_content_range(v: &str) -> Option<ContentRange> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok()?),
    };
    let span = match span.trim() {
        "*" => None,
        s => {
            let (a, b) = s.split_once('-')?;
            let (a, b) = (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?);
            if b < a || total.is_some_and(|t| b >= t) {
                return None;
            }
            Some((a, b))
        }
    };
    if span.is_none() && total.is_none() {
        return None;
    }
    Some(ContentRange { span, total })
}

/// How to cut the body of a response to get the requested range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPlan {
    /// Bytes of the body to drop before the requested range starts.
    pub skip: u64,
    /// Bytes to pass on.
    pub take: u64,
    /// Object size learned from the response, if any.
    pub total: Option<u64>,
}

/// Decides how to read `requested` out of a response with `status`/`headers`.
/// `expected_size` is the size the caller believes the object has; a different total means the
/// object changed. Errors: 416 and size mismatches → [`SourceError::Changed`]; a 206 that starts
/// elsewhere or a body too short by its own headers → [`SourceError::Protocol`].
pub fn plan(
    status: StatusCode,
    headers: &HeaderMap,
    requested: &Range<u64>,
    expected_size: Option<u64>,
) -> Result<BodyPlan> {
    let want = requested.end - requested.start;
    let content_length = headers
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let content_range = headers
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok());
    match status.as_u16() {
        206 => {
            let cr = content_range
                .and_then(parse_content_range)
                .ok_or_else(|| SourceError::Protocol("206 without a valid Content-Range".into()))?;
            let (a, b) = cr
                .span
                .ok_or_else(|| SourceError::Protocol("206 with Content-Range */N".into()))?;
            if let (Some(total), Some(exp)) = (cr.total, expected_size)
                && total != exp
            {
                return Err(SourceError::Changed(format!("size is now {total}, was {exp}")));
            }
            if a != requested.start {
                return Err(SourceError::Protocol(format!(
                    "asked for bytes from {}, server sent from {a}",
                    requested.start
                )));
            }
            let have = b - a + 1;
            if have < want && cr.total.is_none_or(|t| b + 1 < t) {
                // A shorter span is only legal when it ends at EOF (then the size changed).
                return Err(SourceError::Protocol(format!(
                    "asked for {want} bytes, server sent {have}"
                )));
            }
            if have < want {
                return Err(SourceError::Changed(format!("object ends at {}", b + 1)));
            }
            Ok(BodyPlan {
                skip: 0,
                take: want,
                total: cr.total,
            })
        }
        200 => {
            if let (Some(len), Some(exp)) = (content_length, expected_size)
                && len != exp
            {
                return Err(SourceError::Changed(format!("size is now {len}, was {exp}")));
            }
            if let Some(len) = content_length
                && len < requested.end
            {
                return Err(SourceError::Changed(format!(
                    "object is {len} bytes, read wants {}",
                    requested.end
                )));
            }
            Ok(BodyPlan {
                skip: requested.start,
                take: want,
                total: content_length,
            })
        }
        416 => {
            let total = content_range.and_then(parse_content_range).and_then(|c| c.total);
            Err(SourceError::Changed(match total {
                Some(t) => format!("range not satisfiable, object is {t} bytes"),
                None => "range not satisfiable".to_string(),
            }))
        }
        s => Err(SourceError::Http {
            status: s,
            message: "unexpected status for a ranged GET".to_string(),
        }),
    }
}

/// Applies a [`BodyPlan`] to a body stream: drops `skip` bytes, yields exactly `take` bytes,
/// and fails with a protocol error if the body ends early.
pub fn cut(body: BoxStream<'static, Result<Bytes>>, plan: BodyPlan) -> BoxStream<'static, Result<Bytes>> {
    struct St {
        body: BoxStream<'static, Result<Bytes>>,
        skip: u64,
        take: u64,
        done: bool,
    }
    let st = St {
        body,
        skip: plan.skip,
        take: plan.take,
        done: plan.take == 0,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            match st.body.next().await {
                None => {
                    st.done = true;
                    let missing = st.take;
                    return Some((
                        Err(SourceError::Connect(format!("body ended {missing} bytes early"))),
                        st,
                    ));
                }
                Some(Err(e)) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
                Some(Ok(mut chunk)) => {
                    if st.skip > 0 {
                        let n = st.skip.min(chunk.len() as u64);
                        st.skip -= n;
                        chunk = chunk.slice(n as usize..);
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    let n = st.take.min(chunk.len() as u64) as usize;
                    chunk.truncate(n);
                    st.take -= n as u64;
                    if st.take == 0 {
                        st.done = true;
                    }
                    return Some((Ok(chunk), st));
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdrs(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn content_range_forms() {
        assert_eq!(
            parse_content_range("bytes 0-99/1000"),
            Some(ContentRange {
                span: Some((0, 99)),
                total: Some(1000)
            })
        );
        assert_eq!(
            parse_content_range("bytes 5-9/*"),
            Some(ContentRange {
                span: Some((5, 9)),
                total: None
            })
        );
        assert_eq!(
            parse_content_range("bytes */42"),
            Some(ContentRange {
                span: None,
                total: Some(42)
            })
        );
        assert_eq!(parse_content_range("bytes 9-5/100"), None);
        assert_eq!(parse_content_range("bytes 0-100/100"), None, "end beyond total");
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes */*"), None);
        assert_eq!(parse_content_range(""), None);
    }

    #[test]
    fn partial_reply_must_start_where_asked_and_match_size() {
        let h = hdrs(&[("content-range", "bytes 10-19/100")]);
        let p = plan(StatusCode::PARTIAL_CONTENT, &h, &(10..20), Some(100)).unwrap();
        assert_eq!(
            p,
            BodyPlan {
                skip: 0,
                take: 10,
                total: Some(100)
            }
        );
        assert!(matches!(
            plan(StatusCode::PARTIAL_CONTENT, &h, &(11..20), Some(100)),
            Err(SourceError::Protocol(_))
        ));
        assert!(matches!(
            plan(StatusCode::PARTIAL_CONTENT, &h, &(10..20), Some(99)),
            Err(SourceError::Changed(_))
        ));
    }

    #[test]
    fn lying_partial_replies_are_refused() {
        // A shorter span that does not end at EOF is a protocol error, one that does is a change.
        let h = hdrs(&[("content-range", "bytes 10-14/100")]);
        assert!(matches!(
            plan(StatusCode::PARTIAL_CONTENT, &h, &(10..20), Some(100)),
            Err(SourceError::Protocol(_))
        ));
        let h = hdrs(&[("content-range", "bytes 10-14/15")]);
        assert!(matches!(
            plan(StatusCode::PARTIAL_CONTENT, &h, &(10..20), None),
            Err(SourceError::Changed(_))
        ));
        // A longer span is cut to what was asked.
        let h = hdrs(&[("content-range", "bytes 10-99/100")]);
        let p = plan(StatusCode::PARTIAL_CONTENT, &h, &(10..20), Some(100)).unwrap();
        assert_eq!(p.take, 10);
        // Garbage Content-Range, or none: refused.
        for cr in ["bytes lots/many", "bytes 10-/100", "bytes -5/100"] {
            let h = hdrs(&[("content-range", cr)]);
            assert!(plan(StatusCode::PARTIAL_CONTENT, &h, &(10..20), None).is_err(), "{cr}");
        }
        assert!(plan(StatusCode::PARTIAL_CONTENT, &HeaderMap::new(), &(10..20), None).is_err());
        // A 200 longer than the object is a changed object, not extra bytes to pass on.
        let h = hdrs(&[("content-length", "150")]);
        assert!(matches!(
            plan(StatusCode::OK, &h, &(10..20), Some(100)),
            Err(SourceError::Changed(_))
        ));
    }

    #[test]
    fn whole_object_reply_is_sliced_locally() {
        let h = hdrs(&[("content-length", "100")]);
        let p = plan(StatusCode::OK, &h, &(40..50), Some(100)).unwrap();
        assert_eq!(
            p,
            BodyPlan {
                skip: 40,
                take: 10,
                total: Some(100)
            }
        );
    }

    #[test]
    fn unsatisfiable_means_changed() {
        let h = hdrs(&[("content-range", "bytes */5")]);
        assert!(matches!(
            plan(StatusCode::RANGE_NOT_SATISFIABLE, &h, &(10..20), Some(100)),
            Err(SourceError::Changed(_))
        ));
    }

    #[tokio::test]
    async fn cut_skips_and_truncates_extra_bytes() {
        let chunks: Vec<Result<Bytes>> = vec![Ok(Bytes::from_static(b"0123")), Ok(Bytes::from_static(b"456789"))];
        let s = futures_util::stream::iter(chunks).boxed();
        let out: Vec<_> = cut(
            s,
            BodyPlan {
                skip: 3,
                take: 4,
                total: None,
            },
        )
        .collect()
        .await;
        let bytes: Vec<u8> = out.into_iter().flat_map(|c| c.unwrap().to_vec()).collect();
        assert_eq!(bytes, b"3456");
    }

    #[tokio::test]
    async fn cut_reports_a_short_body() {
        let chunks: Vec<Result<Bytes>> = vec![Ok(Bytes::from_static(b"01"))];
        let s = futures_util::stream::iter(chunks).boxed();
        let out: Vec<_> = cut(
            s,
            BodyPlan {
                skip: 0,
                take: 4,
                total: None,
            },
        )
        .collect()
        .await;
        assert!(out.last().unwrap().is_err());
    }
}

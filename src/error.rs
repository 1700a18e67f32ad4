//! Errors of the source layer and their one mapping to errno.
//!
//! Every provider and every HTTP helper reports failures as [`SourceError`]. The FUSE adapter
//! turns them into an errno with [`SourceError::errno`], an exhaustive `match` without a `_`
//! arm: adding a variant forces a decision about what `cat` will print. The adapter is also
//! the one place that logs a failed operation, so nothing below it logs errors it returns.
//!
//! Messages never contain secrets: providers put the server's own reason (B2 `code`, Onedata
//! `authError`, Doris `msg`…) in the message, never tokens, keys or signed-URL signatures.

use std::time::Duration;

/// What went wrong talking to a remote source, at the level the filesystem needs to decide.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// The remote object or directory does not exist (HTTP 404, B2 `not_found`, Onedata enoent…).
    #[error("not found: {0}")]
    NotFound(String),
    /// Credentials were refused or lack a permission (B2 `unauthorized`, SSE-C key wrong, 403).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The object changed remotely while it was being read (validator or size mismatch).
    #[error("changed remotely: {0}")]
    Changed(String),
    /// A request or a stalled body exceeded its time limit, after all retries.
    #[error("timed out after {0:?}: {1}")]
    Timeout(Duration, String),
    /// Connection refused/reset and similar transport failures, after all retries.
    #[error("connection failed: {0}")]
    Connect(String),
    /// The server answered with a status we cannot use (after retries for retriable ones).
    #[error("HTTP {status}: {message}")]
    Http { status: u16, message: String },
    /// A quota or cap refused the request (B2 `download_cap_exceeded`); not retried.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The server's answer broke the protocol (bad JSON, bad Content-Range, short body…).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Downloaded bytes did not match the provider's checksum.
    #[error("checksum mismatch: {0}")]
    Integrity(String),
    /// The operation is not valid for this entry (e.g. listing a file).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The object is not a regular file/directory as the caller assumed.
    #[error("not a directory: {0}")]
    NotADirectory(String),
    /// The configured memory budget could not be reserved in time.
    #[error("out of cache memory: {0}")]
    NoMemory(String),
}

impl SourceError {
    /// The errno a POSIX caller sees for this error. Exhaustive on purpose (no `_` arm).
    pub fn errno(&self) -> i32 {
        match self {
            SourceError::NotFound(_) => libc::ENOENT,
            SourceError::PermissionDenied(_) => libc::EACCES,
            SourceError::Changed(_) => libc::ESTALE,
            SourceError::Timeout(..) => libc::EIO,
            SourceError::Connect(_) => libc::EIO,
            SourceError::Http { .. } => libc::EIO,
            SourceError::QuotaExceeded(_) => libc::EIO,
            SourceError::Protocol(_) => libc::EIO,
            SourceError::Integrity(_) => libc::EIO,
            SourceError::Invalid(_) => libc::EINVAL,
            SourceError::NotADirectory(_) => libc::ENOTDIR,
            SourceError::NoMemory(_) => libc::ENOMEM,
        }
    }

    /// Whether repeating the same request later may succeed (used by the retry loop).
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Timeout(..) | SourceError::Connect(_) => true,
            SourceError::Http { status, .. } => is_retriable_status(*status),
            SourceError::NotFound(_)
            | SourceError::PermissionDenied(_)
            | SourceError::Changed(_)
            | SourceError::QuotaExceeded(_)
            | SourceError::Protocol(_)
            | SourceError::Integrity(_)
            | SourceError::Invalid(_)
            | SourceError::NotADirectory(_)
            | SourceError::NoMemory(_) => false,
        }
    }
}

/// Statuses retried with backoff (DESIGN §5): 408, 429, 500, 502, 503, 504.
pub fn is_retriable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

pub type Result<T, E = SourceError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_map_matches_design_table() {
        assert_eq!(SourceError::NotFound("x".into()).errno(), libc::ENOENT);
        assert_eq!(SourceError::PermissionDenied("x".into()).errno(), libc::EACCES);
        assert_eq!(SourceError::Changed("x".into()).errno(), libc::ESTALE);
        assert_eq!(
            SourceError::Timeout(Duration::from_secs(1), "x".into()).errno(),
            libc::EIO
        );
        assert_eq!(SourceError::Integrity("x".into()).errno(), libc::EIO);
        assert_eq!(SourceError::QuotaExceeded("x".into()).errno(), libc::EIO);
    }

    #[test]
    fn only_transport_and_retriable_statuses_are_transient() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(
                SourceError::Http {
                    status: s,
                    message: String::new()
                }
                .is_transient()
            );
        }
        for s in [400, 401, 403, 404, 416] {
            assert!(
                !SourceError::Http {
                    status: s,
                    message: String::new()
                }
                .is_transient()
            );
        }
        assert!(SourceError::Connect("reset".into()).is_transient());
        assert!(!SourceError::Integrity("sha1".into()).is_transient());
    }
}

//! fetchfs mounts remote file-download APIs as read-only directories.
pub mod cache;
pub mod config;
pub mod emulate;
pub mod error;
pub mod fs;
pub mod http;
pub mod metrics;
pub mod provider;
pub mod source;

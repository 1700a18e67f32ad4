//! fetchfs mounts remote file-download APIs as read-only directories.
pub mod cache;
pub mod cli;
pub mod config;
pub mod demo;
pub mod emulate;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod http;
pub mod metrics;
pub mod mount;
pub mod notify;
pub mod provider;
pub mod source;

//! fetchfs mounts remote file-download APIs as read-only directories.
pub mod cache;
pub mod cache_cmd;
pub mod check;
pub mod cli;
pub mod config;
pub mod demo;
pub mod emulate;
pub mod error;
pub mod fs;
pub mod fuse;
#[doc(hidden)]
pub mod fuzzing;
pub mod helper;
pub mod http;
pub mod logging;
pub mod manual;
pub mod metrics;
pub mod mount;
pub mod notify;
pub mod provider;
pub mod source;
pub mod splice;

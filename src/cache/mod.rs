//! The block cache: files cut into fixed-size blocks, kept in RAM (and, optionally, on disk).
//!
//! * [`memory`]: the RAM tier — an LRU bounded in bytes, a global byte budget that every fetch
//!   reserves from before it starts, and single-flight fetching (two readers of one block share
//!   one request). Fetches stream: a multi-block GET completes each block as its bytes arrive.
//! * [`prefetch`]: the per-handle state machine that decides how far ahead to fetch.
//!
//! Neighbours: the fs core (`crate::fs`) owns handles and calls [`memory::BlockCache`] for
//! bytes; providers (`crate::source::FileReader`) deliver byte streams. The cache never sees
//! inodes or FUSE.

pub mod memory;
pub mod prefetch;

//! The block cache: files cut into fixed-size blocks, kept in RAM (and, optionally, on disk).
//!
//! * [`memory`]: the RAM tier — an LRU bounded in bytes, a global byte budget that every fetch
//!   reserves from before it starts, and single-flight fetching (two readers of one block share
//!   one request). Fetches stream: a multi-block GET completes each block as its bytes arrive.
//! * [`prefetch`]: the per-handle state machine that decides how far ahead to fetch.
//! * [`disk`]: the optional persistent tier below RAM — one checksummed file per block in a
//!   locked 0700 directory, hard-capped in bytes, LRU-evicted with the order kept across
//!   restarts; a damaged block is a miss, never wrong data. Blocks are named by [`BlockKey`]
//!   (source, remote handle, validator, index), so versions never mix.
//! * [`warm`]: `fetchfs cache warm PATH...` — reads files through the mount so the daemon fills
//!   these tiers ahead of time.
//!
//! Neighbours: the fs core (`crate::fs`) owns handles and calls [`memory::BlockCache`] for
//! bytes; providers (`crate::source::FileReader`) deliver byte streams. The cache never sees
//! inodes or FUSE.

pub mod disk;
mod key;
pub mod memory;
pub mod prefetch;
pub mod warm;

pub use key::BlockKey;

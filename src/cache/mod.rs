//! The block cache: where the bytes of remote files are kept between a download and a read.
//!
//! A file is cut into fixed-size blocks (1 MiB by default) and each block is identified by a
//! [`BlockKey`]: the source, the provider's handle, the version (validator) the handle was opened
//! at, and the block index. Keys never mix versions, so a changed remote file simply has new keys
//! and its old blocks age out.
//!
//! Tiers, from the read path down:
//!
//! * the memory tier (an LRU bounded in bytes, with single-flight fetches) answers most reads;
//! * [`disk`] keeps blocks across restarts in a directory, hard-capped in bytes and LRU-evicted,
//!   every block checksummed so a damaged file is a miss, never wrong data;
//! * the source itself, through prefetch.
//!
//! [`warm`] is the `fetchfs cache warm PATH...` walker: it reads files through the mount so the
//! daemon fills these tiers ahead of time.

pub mod disk;
mod key;
pub mod warm;

pub use key::BlockKey;

//! The identity of one cached block, shared by the cache tiers.

use std::sync::Arc;

use super::memory::FileKey;

/// One block of one version of one remote file.
///
/// `source` is the source's configured name, `remote` the provider's opaque handle
/// (`Entry.remote`), `validator` the version the handle was opened at (`Entry.validator`), and
/// `index` the block number (`offset / block_size`). Two keys are the same block only if all four
/// fields are equal. The block size is not part of the key, but the disk tier records it with
/// every block, so a restart with another block size never serves a block cut differently.
///
/// The strings are shared (`Arc<str>`), so building a key for every block of an open file
/// ([`BlockKey::of`]) costs three reference-count increments, not three allocations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub source: Arc<str>,
    pub remote: Arc<str>,
    pub validator: Arc<str>,
    pub index: u64,
}

impl BlockKey {
    pub fn new(
        source: impl Into<Arc<str>>,
        remote: impl Into<Arc<str>>,
        validator: impl Into<Arc<str>>,
        index: u64,
    ) -> Self {
        BlockKey {
            source: source.into(),
            remote: remote.into(),
            validator: validator.into(),
            index,
        }
    }

    /// Block `index` of the file version the memory tier knows as `file`.
    pub fn of(file: &FileKey, index: u64) -> Self {
        BlockKey {
            source: file.source.clone(),
            remote: file.remote.clone(),
            validator: file.validator.clone(),
            index,
        }
    }
}

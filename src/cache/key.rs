//! The identity of one cached block, shared by every cache tier.

/// One block of one version of one remote file.
///
/// `source` is the source's configured name, `remote` the provider's opaque handle
/// (`Entry.remote`), `validator` the version the handle was opened at (`Entry.validator`), and
/// `index` the block number (`offset / block_size`). Two keys are the same block only if all four
/// fields are equal; the block size is not part of the key but every tier that persists blocks
/// also records it, so a restart with another block size never serves a block cut differently.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub source: String,
    pub remote: String,
    pub validator: String,
    pub index: u64,
}

impl BlockKey {
    pub fn new(source: impl Into<String>, remote: impl Into<String>, validator: impl Into<String>, index: u64) -> Self {
        BlockKey {
            source: source.into(),
            remote: remote.into(),
            validator: validator.into(),
            index,
        }
    }
}

//! Where things live inside a cache directory, and how a block's file is named.
//!
//! ```text
//! <dir>/              0700
//!   lock              flock(2)ed by the daemon using the directory; holds its PID
//!   tmp/              blocks being written (removed on open: only a crash leaves them)
//!   blocks/00 … ff/   256 fan-out directories
//!     <version id: 32 hex>-<block index: 16 hex>     one block, 0600
//! ```
//!
//! The version id is the first 128 bits of SHA-256 over (format version, block size, source,
//! remote, validator), so every block of one version shares a prefix and
//! [`super::DiskCache::remove_version`] needs no header reads. The fan-out directory is
//! `(first byte of the version id + block index) mod 256`: consecutive blocks of one large file
//! spread over all 256 directories instead of piling into one. Collisions of the id are harmless:
//! the header carries the full key and a mismatch is a miss.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::format::FORMAT_VERSION;
use crate::cache::BlockKey;

pub const LOCK_FILE: &str = "lock";
pub const TMP_DIR: &str = "tmp";
pub const BLOCKS_DIR: &str = "blocks";
/// Number of fan-out directories under `blocks/`: keeps each directory small enough that
/// lookups and the scan on open stay fast on any filesystem (100 GiB of 1 MiB blocks is about
/// 400 files per directory).
pub const FAN_OUT: usize = 256;
/// `<32 hex>-<16 hex>`.
const NAME_LEN: usize = 32 + 1 + 16;

/// Identifies the file of one block: a hash of the version plus the block index in clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockId {
    pub version: VersionId,
    pub index: u64,
}

/// 128-bit hash of one version of one remote file as cut by one block size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VersionId(pub [u8; 16]);

impl VersionId {
    pub fn new(source: &str, remote: &str, validator: &str, block_size: u64) -> VersionId {
        let mut h = Sha256::new();
        h.update(b"fetchfs disk block\0");
        h.update(FORMAT_VERSION.to_le_bytes());
        h.update(block_size.to_le_bytes());
        // Length prefixes keep ("ab", "c") and ("a", "bc") apart.
        for f in [source, remote, validator] {
            h.update((f.len() as u64).to_le_bytes());
            h.update(f.as_bytes());
        }
        let digest = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        VersionId(id)
    }
}

impl BlockId {
    pub fn new(key: &BlockKey, block_size: u64) -> BlockId {
        BlockId {
            version: VersionId::new(&key.source, &key.remote, &key.validator, block_size),
            index: key.index,
        }
    }

    /// Index of the fan-out directory holding this block.
    pub fn fan(&self) -> u8 {
        self.version.0[0].wrapping_add(self.index as u8)
    }

    /// File name inside its fan-out directory.
    pub fn file_name(&self) -> String {
        let mut s = String::with_capacity(NAME_LEN);
        for b in self.version.0 {
            let _ = write!(s, "{b:02x}");
        }
        let _ = write!(s, "-{:016x}", self.index);
        s
    }

    /// Path of the block file under the cache directory's `blocks/`.
    pub fn path(&self, blocks: &Path) -> PathBuf {
        blocks.join(fan_dir_name(self.fan())).join(self.file_name())
    }

    /// Reads a block file name back; `None` for anything this module did not write.
    pub fn parse(name: &str) -> Option<BlockId> {
        if name.len() != NAME_LEN || name.as_bytes()[32] != b'-' {
            return None;
        }
        let mut version = [0u8; 16];
        hex::decode_to_slice(&name[..32], &mut version).ok()?;
        let idx = &name[33..];
        // Lower-case hex only, as written, so one block has exactly one name.
        if !idx.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
            || !name[..32]
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            return None;
        }
        let index = u64::from_str_radix(idx, 16).ok()?;
        Some(BlockId {
            version: VersionId(version),
            index,
        })
    }
}

/// Name of fan-out directory `fan` (`00` … `ff`).
pub fn fan_dir_name(fan: u8) -> String {
    format!("{fan:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_parses_back_to_its_id() {
        let id = BlockId::new(&BlockKey::new("s", "r", "v", 0x1234), 1 << 20);
        assert_eq!(BlockId::parse(&id.file_name()), Some(id));
    }

    #[test]
    fn foreign_names_are_not_blocks() {
        for n in [
            "",
            "x",
            "lock",
            &"0".repeat(49),
            &format!("{}-{}", "A".repeat(32), "0".repeat(16)),
        ] {
            assert_eq!(BlockId::parse(n), None, "{n:?}");
        }
    }

    #[test]
    fn consecutive_blocks_spread_over_the_fan_out() {
        let fans: std::collections::HashSet<u8> = (0..256)
            .map(|i| BlockId::new(&BlockKey::new("s", "r", "v", i), 1 << 20).fan())
            .collect();
        assert_eq!(fans.len(), FAN_OUT);
    }

    #[test]
    fn the_version_id_separates_fields_and_block_sizes() {
        assert_ne!(VersionId::new("ab", "c", "v", 1), VersionId::new("a", "bc", "v", 1));
        assert_ne!(VersionId::new("a", "b", "v", 1), VersionId::new("a", "b", "v", 2));
    }
}

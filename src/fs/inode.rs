//! The inode table: stable inode numbers for (parent, name), and what is known about each.
//!
//! An inode number is allocated the first time a name is seen under a parent and kept for the
//! life of the mount, whatever the listings say later, so `find` and `rsync` see stable inode
//! numbers and open handles keep working when a listing drops their file. Nothing here talks to
//! the network; [`super::FsCore`] fills and refreshes it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::source::Entry;

/// The root of the mount (FUSE_ROOT_ID).
pub const ROOT: u64 = 1;

/// Which source a node belongs to: `None` for the synthetic root of a multi-source mount.
pub type SourceIdx = Option<usize>;

/// A directory's children as last listed.
#[derive(Debug, Clone)]
pub struct Listing {
    /// (name, ino) in the order the provider gave them.
    pub children: Vec<(String, u64)>,
    pub by_name: HashMap<String, u64>,
    pub fetched: Instant,
}

/// One inode.
#[derive(Debug, Clone)]
pub struct Node {
    pub ino: u64,
    pub parent: u64,
    pub source: SourceIdx,
    pub entry: Entry,
    /// When `entry` was last confirmed by the provider.
    pub confirmed: Instant,
    /// Shared so that readdir/lookup take a reference, not a copy (a directory may hold
    /// 100,000 entries and is consulted once per entry by `find`).
    pub listing: Option<Arc<Listing>>,
    /// Validator whose pages the kernel may hold (we replied FOPEN_KEEP_CACHE or served reads).
    pub kernel_validator: Option<String>,
    /// Validator of a version that failed its checksum: reads of it through the handles open
    /// at the time fail with EIO; the next open clears it and downloads the file afresh.
    pub bad_version: Option<String>,
}

impl Node {
    /// A node just confirmed by the provider, with no listing and no kernel pages yet.
    pub fn new(ino: u64, parent: u64, source: SourceIdx, entry: Entry, now: Instant) -> Node {
        Node {
            ino,
            parent,
            source,
            entry,
            confirmed: now,
            listing: None,
            kernel_validator: None,
            bad_version: None,
        }
    }
}

/// All inodes of the mount.
#[derive(Debug, Default)]
pub struct InodeTable {
    nodes: HashMap<u64, Node>,
    by_parent: HashMap<(u64, String), u64>,
    next: u64,
}

impl InodeTable {
    pub fn new(root: Node) -> InodeTable {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, root);
        InodeTable {
            nodes,
            by_parent: HashMap::new(),
            next: ROOT + 1,
        }
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(&ino)
    }

    /// The inode for `name` under `parent`, created (or updated with `entry`) as needed.
    pub fn upsert(&mut self, parent: u64, source: SourceIdx, entry: Entry, now: Instant) -> u64 {
        let key = (parent, entry.name.clone());
        if let Some(&ino) = self.by_parent.get(&key) {
            let node = self.nodes.get_mut(&ino).expect("by_parent points at a node");
            if node.entry.kind != entry.kind {
                // A file became a directory (or back): forget the old listing.
                node.listing = None;
            }
            node.entry = entry;
            node.confirmed = now;
            node.source = source;
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_parent.insert(key, ino);
        self.nodes.insert(ino, Node::new(ino, parent, source, entry, now));
        ino
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_name_keeps_its_inode_number() {
        let now = Instant::now();
        let mut t = InodeTable::new(Node::new(ROOT, ROOT, None, Entry::dir("", ""), now));
        let a = t.upsert(ROOT, Some(0), Entry::file("a", "r/a", 1), now);
        let b = t.upsert(ROOT, Some(0), Entry::file("b", "r/b", 1), now);
        let a2 = t.upsert(ROOT, Some(0), Entry::file("a", "r/a", 2), now);
        assert_eq!(a, a2);
        assert_ne!(a, b);
        assert_eq!(t.get(a).unwrap().entry.size, 2);
    }
}

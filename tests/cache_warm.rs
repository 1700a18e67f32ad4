//! `fetchfs cache warm`: the walker reads every file of a tree once, errors are counted.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use fetchfs::cache::warm::{WarmReport, warm};

/// A tree with nested directories, empty and multi-chunk files, a hard link, and symlinks that
/// point out of the tree. Returns (tree, bytes of its distinct regular files, their count).
fn tree(base: &Path) -> (PathBuf, u64, u64) {
    let root = base.join("tree");
    let outside = base.join("outside");
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("big"), vec![1u8; 3 << 20]).unwrap();
    let files: &[(&str, usize)] = &[
        ("empty", 0),
        ("one", 1),
        ("a/chunky", (2 << 20) + 3),
        ("a/b/small", 4096),
        ("a/b/c/deep", 123_457),
    ];
    for (name, len) in files {
        fs::write(root.join(name), (0..*len).map(|i| i as u8).collect::<Vec<_>>()).unwrap();
    }
    fs::hard_link(root.join("a/b/small"), root.join("a/small-again")).unwrap();
    symlink(outside.join("big"), root.join("link-to-outside-file")).unwrap();
    symlink(&outside, root.join("a/link-to-outside-dir")).unwrap();
    symlink(root.join("one"), root.join("link-inside")).unwrap();
    let bytes = files.iter().map(|(_, l)| *l as u64).sum();
    (root, bytes, files.len() as u64)
}

#[test]
fn warming_a_tree_reads_every_file_once_and_no_symlink_out_of_it() {
    let t = tempfile::tempdir().unwrap();
    let (root, bytes, files) = tree(t.path());
    for threads in [1, 4] {
        let report = warm(std::slice::from_ref(&root), threads, false).unwrap();
        assert_eq!(
            report,
            WarmReport {
                files,
                bytes,
                errors: 0
            },
            "{threads} threads"
        );
    }
}

#[test]
fn overlapping_paths_and_single_files_are_read_once() {
    let t = tempfile::tempdir().unwrap();
    let (root, bytes, files) = tree(t.path());
    let report = warm(&[root.join("a"), root.clone(), root.join("one")], 2, false).unwrap();
    assert_eq!(
        report,
        WarmReport {
            files,
            bytes,
            errors: 0
        }
    );
}

#[test]
fn zero_threads_still_reads_with_one() {
    let t = tempfile::tempdir().unwrap();
    let (root, bytes, files) = tree(t.path());
    assert_eq!(
        warm(&[root], 0, false).unwrap(),
        WarmReport {
            files,
            bytes,
            errors: 0
        }
    );
}

#[test]
fn a_missing_path_and_an_unreadable_file_are_counted_and_the_rest_is_read() {
    let t = tempfile::tempdir().unwrap();
    let (root, bytes, files) = tree(t.path());
    // /proc/self/mem is a regular file whose read at offset 0 fails with EIO, even for root.
    let paths = [t.path().join("no-such-file"), PathBuf::from("/proc/self/mem"), root];
    let report = warm(&paths, 2, false).unwrap();
    assert_eq!(
        report,
        WarmReport {
            files,
            bytes,
            errors: 2
        }
    );
}

#[test]
fn an_empty_list_warms_nothing() {
    assert_eq!(warm(&[], 2, false).unwrap(), WarmReport::default());
}

//! The Onedata source against its in-process emulator: every documented behaviour and error
//! of providers.md §2 and every item of the emulator checklist (§2.12).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fetchfs::config::SourceConfig;
use fetchfs::emulate::onedata::{self as emu, OnedataBehaviour, OnedataEmuOptions};
use fetchfs::emulate::{FaultSpec, Server, serve};
use fetchfs::error::SourceError;
use fetchfs::http::HttpOptions;
use fetchfs::provider::BuildContext;
use fetchfs::provider::onedata::OnedataConfig;
use fetchfs::source::{Entry, EntryKind, OpenRequest, Source, read_all};

mod common;

const TOKEN: &str = "s3cr3t-test-token";
const API: &str = "/api/v3/oneprovider";

struct Env {
    dir: tempfile::TempDir,
    server: Server,
    behaviour: Arc<Mutex<OnedataBehaviour>>,
}

impl Env {
    fn root(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
    fn set(&self, f: impl FnOnce(&mut OnedataBehaviour)) {
        f(&mut self.behaviour.lock().unwrap());
    }
    fn cfg(&self, space: Option<&str>, path: Option<&str>) -> OnedataConfig {
        OnedataConfig {
            name: "od".into(),
            endpoint: self.server.base_url(),
            token: Some(TOKEN.into()),
            token_file: None,
            space: space.map(str::to_string),
            path: path.map(str::to_string),
        }
    }
    async fn source(&self) -> Arc<dyn Source> {
        build(&self.cfg(None, None)).await
    }
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url())
    }
    fn count(&self, needle: &str) -> u64 {
        self.server.harness.stats.count(|k| k.contains(needle))
    }
}

/// The emulator over `root`, accepting [`TOKEN`].
fn emulator(root: &Path) -> emu::OnedataEmulator {
    emu::router(
        root,
        OnedataEmuOptions {
            token: TOKEN.into(),
            behaviour: OnedataBehaviour::default(),
        },
    )
}

async fn start(tree: impl FnOnce(&Path)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path());
    let e = emulator(dir.path());
    let behaviour = e.behaviour.clone();
    let server = serve(e.router, 0, e.harness).await.unwrap();
    Env { dir, server, behaviour }
}

fn ctx() -> BuildContext {
    BuildContext {
        http: HttpOptions {
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            op_timeout: Duration::from_secs(20),
            ..HttpOptions::default()
        },
        base_dir: PathBuf::from("."),
        block_size: 1 << 20,
        disk_cache: false,
    }
}

async fn build(cfg: &OnedataConfig) -> Arc<dyn Source> {
    fetchfs::provider::build(&SourceConfig::Onedata(cfg.clone()), &ctx())
        .await
        .unwrap()
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// `n` empty files `<prefix>00000`, `<prefix>00001`… in `dir`.
fn empty_files(dir: &Path, prefix: &str, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        std::fs::write(dir.join(format!("{prefix}{i:05}")), b"").unwrap();
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

fn xattr(e: &Entry, key: &str) -> String {
    let (_, v) = e
        .xattrs
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("{} has no {key}", e.name));
    String::from_utf8(v.clone()).unwrap()
}

async fn find(src: &dyn Source, dir: &Entry, name: &str) -> Entry {
    let all = src.list(dir).await.unwrap();
    all.iter()
        .find(|e| e.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in {:?}", all.iter().map(|e| &e.name).collect::<Vec<_>>()))
}

async fn walk(src: &dyn Source, path: &str) -> Entry {
    let mut e = src.root().await.unwrap();
    for seg in path.split('/') {
        e = find(src, &e, seg).await;
    }
    e
}

async fn read(src: &dyn Source, e: &Entry, r: Range<u64>) -> Result<Bytes, SourceError> {
    let o = src
        .open(
            e,
            &OpenRequest {
                block_size: 1 << 20,
                revalidate: false,
            },
        )
        .await?;
    read_all(&*o.reader, r).await
}

fn raw() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

async fn get(env: &Env, path: &str, range: Option<&str>) -> reqwest::Response {
    let mut r = raw().get(env.url(path)).header("x-auth-token", TOKEN);
    if let Some(v) = range {
        r = r.header("range", v);
    }
    r.send().await.unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn spaces_become_directories_and_duplicate_names_carry_the_space_id() {
    let env = start(|r| {
        write(r, "alpha/a.txt", b"a");
        write(r, "shared@one/x.txt", b"one");
        write(r, "shared@two/x.txt", b"two!");
    })
    .await;
    let src = env.source().await;
    let root = src.root().await.unwrap();
    let spaces = src.list(&root).await.unwrap();
    let mut names: Vec<String> = spaces.iter().map(|e| e.name.clone()).collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[0], "alpha");
    let dups: Vec<&Entry> = spaces.iter().filter(|e| e.name.starts_with("shared@")).collect();
    assert_eq!(dups.len(), 2);
    let mut contents = Vec::new();
    for d in dups {
        let id = xattr(d, "user.onedata.space_id");
        assert_eq!(d.name, format!("shared@{id}"));
        assert_eq!(d.kind, EntryKind::Dir);
        let x = find(&*src, d, "x.txt").await;
        assert_eq!(xattr(&x, "user.onedata.space_id"), id);
        contents.push(read(&*src, &x, 0..x.size).await.unwrap());
    }
    contents.sort();
    assert_eq!(contents, vec![Bytes::from_static(b"one"), Bytes::from_static(b"two!")]);
}

#[tokio::test(flavor = "multi_thread")]
async fn files_read_back_exactly_at_every_offset_with_their_attributes() {
    let data = pattern(100_000);
    let env = start(|r| {
        write(r, "sp/dir/big.bin", &data);
        write(r, "sp/empty", b"");
    })
    .await;
    let src = env.source().await;
    let f = walk(&*src, "sp/dir/big.bin").await;
    assert_eq!(f.kind, EntryKind::File);
    assert_eq!(f.size, 100_000);
    assert_eq!(f.mode, Some(0o444), "write bits cleared from 644");
    let mtime = std::fs::metadata(env.root().join("sp/dir/big.bin"))
        .unwrap()
        .modified()
        .unwrap();
    let secs = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(secs(f.mtime), secs(mtime), "times are seconds");
    assert!(f.validator.is_some());
    assert!(!xattr(&f, "user.onedata.file_id").is_empty());
    for r in [0..100_000u64, 0..1, 5..9, 99_999..100_000, 4096..65536, 70_000..100_000] {
        let got = read(&*src, &f, r.clone()).await.unwrap();
        assert_eq!(&got[..], &data[r.start as usize..r.end as usize], "{r:?}");
    }
    let e = walk(&*src, "sp/empty").await;
    assert_eq!(e.size, 0);
    let d = walk(&*src, "sp/dir").await;
    assert_eq!(d.kind, EntryKind::Dir);
    assert_eq!(d.mode, Some(0o555));
}

#[tokio::test(flavor = "multi_thread")]
async fn range_rules_of_section_2_7_hold_on_the_wire() {
    let data = pattern(100);
    let env = start(|r| {
        write(r, "sp/f.txt", &data);
        write(r, "sp/zero.bin", b"");
    })
    .await;
    let src = env.source().await;
    let id = xattr(&walk(&*src, "sp/f.txt").await, "user.onedata.file_id");
    let zero = xattr(&walk(&*src, "sp/zero.bin").await, "user.onedata.file_id");
    let path = format!("{API}/data/{id}/content");

    let r = get(&env, &path, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), "100");
    assert_eq!(header(&r, "content-type"), "text/plain");
    assert_eq!(header(&r, "content-disposition"), "attachment; filename=\"f.txt\"");
    assert_eq!(&r.bytes().await.unwrap()[..], &data[..]);

    for (ask, a, b) in [
        ("bytes=5-8", 5, 8),
        ("bytes=90-1000", 90, 99),
        ("bytes=0-", 0, 99),
        ("bytes=97-", 97, 99),
        ("bytes=-10", 90, 99),
        ("bytes=-1000", 0, 99),
    ] {
        let r = get(&env, &path, Some(ask)).await;
        assert_eq!(r.status(), 206, "{ask}");
        assert_eq!(header(&r, "content-range"), format!("bytes {a}-{b}/100"), "{ask}");
        assert_eq!(header(&r, "content-length"), (b - a + 1).to_string(), "{ask}");
        assert_eq!(&r.bytes().await.unwrap()[..], &data[a..=b], "{ask}");
    }
    for ask in [
        "unicorns",
        "bytes:5-10",
        "bytes=5=10",
        "bytes=10-5",
        "bytes=-5-",
        "bytes=x-5",
        "bytes=1.5-3",
        "bytes=100-",
        "bytes=100-200",
        "bytes= 1-2",
    ] {
        let r = get(&env, &path, Some(ask)).await;
        assert_eq!(r.status(), 416, "{ask}");
        assert_eq!(header(&r, "content-range"), "bytes */100", "{ask}");
    }
    for ask in ["bytes=0-", "bytes=0-0", "bytes=-1"] {
        let r = get(&env, &format!("{API}/data/{zero}/content"), Some(ask)).await;
        assert_eq!(r.status(), 416, "empty file, {ask}");
        assert_eq!(header(&r, "content-range"), "bytes */0");
    }

    let r = get(&env, &path, Some("bytes=0-1,10-12")).await;
    assert_eq!(r.status(), 206);
    let ct = header(&r, "content-type");
    let boundary = ct
        .strip_prefix("multipart/byteranges; boundary=")
        .expect(&ct)
        .to_string();
    let body = r.bytes().await.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(text.matches(&format!("--{boundary}\r\n")).count(), 2);
    assert!(text.contains("content-range: bytes 0-1/100"), "{text}");
    assert!(text.contains("content-range: bytes 10-12/100"), "{text}");
    assert!(text.contains("content-type: text/plain"), "{text}");
    assert!(text.ends_with(&format!("--{boundary}--\r\n")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_shorter_than_listed_reads_as_changed_never_as_short_data() {
    let env = start(|r| write(r, "sp/f.bin", &pattern(10_000))).await;
    let src = env.source().await;
    let f = walk(&*src, "sp/f.bin").await;
    std::fs::write(env.root().join("sp/f.bin"), pattern(5_000)).unwrap();
    // Past the new end: 416 with bytes */5000.
    assert!(matches!(
        read(&*src, &f, 6_000..8_000).await,
        Err(SourceError::Changed(_))
    ));
    // Inside it: the 206 total no longer matches the listed size.
    assert!(matches!(read(&*src, &f, 0..100).await, Err(SourceError::Changed(_))));
    // Reopening with revalidation picks up the new size.
    let o = src
        .open(
            &f,
            &OpenRequest {
                block_size: 1 << 20,
                revalidate: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(o.entry.size, 5_000);
    assert_eq!(&read_all(&*o.reader, 0..5_000).await.unwrap()[..], &pattern(5_000)[..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn posix_errors_map_through_their_errno() {
    let env = start(|r| {
        write(r, "sp/gone.txt", b"soon gone");
        write(r, "sp/secret.txt", b"no");
        write(r, "sp/ok.txt", b"fine");
    })
    .await;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.root().join("sp/secret.txt"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let src = env.source().await;
    let gone = walk(&*src, "sp/gone.txt").await;
    let secret = walk(&*src, "sp/secret.txt").await;
    let ok = walk(&*src, "sp/ok.txt").await;
    std::fs::remove_file(env.root().join("sp/gone.txt")).unwrap();

    let e = read(&*src, &gone, 0..gone.size).await.unwrap_err();
    assert!(matches!(&e, SourceError::NotFound(m) if m.contains("enoent")), "{e}");
    let e = read(&*src, &secret, 0..2).await.unwrap_err();
    assert!(
        matches!(&e, SourceError::PermissionDenied(m) if m.contains("eacces")),
        "{e}"
    );
    // Children of a regular file: enotdir.
    let as_dir = Entry::dir("ok.txt", ok.remote.clone());
    let e = src.list(&as_dir).await.unwrap_err();
    assert!(matches!(e, SourceError::NotADirectory(_)), "{e}");

    env.set(|b| b.force_errno = Some("eperm".into()));
    let e = read(&*src, &ok, 0..4).await.unwrap_err();
    assert!(
        matches!(&e, SourceError::PermissionDenied(m) if m.contains("eperm")),
        "{e}"
    );
    let sp = walk(&*src, "sp").await;
    assert!(matches!(src.list(&sp).await, Err(SourceError::PermissionDenied(_))));
    env.set(|b| b.force_errno = None);

    // A bare 404 is ENOENT too.
    env.server.harness.faults.set(FaultSpec {
        fail_next: 1,
        error_status: 404,
        ..FaultSpec::default()
    });
    assert!(matches!(read(&*src, &ok, 0..4).await, Err(SourceError::NotFound(_))));
    assert_eq!(&read(&*src, &ok, 0..4).await.unwrap()[..], b"fine");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_token_is_eacces_naming_the_auth_error_but_never_the_token() {
    let env = start(|r| write(r, "sp/a", b"a")).await;
    let mut cfg = env.cfg(None, None);
    cfg.token = Some("wrong-token-value".into());
    let src = build(&cfg).await;
    let e = src.root().await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, SourceError::PermissionDenied(_)), "{msg}");
    assert!(msg.contains("badToken"), "{msg}");
    assert!(!msg.contains("wrong-token-value"), "{msg}");

    let src = env.source().await;
    let a = walk(&*src, "sp/a").await;
    env.set(|b| b.reject_token = Some("tokenRevoked".into()));
    let e = read(&*src, &a, 0..1).await.unwrap_err();
    assert!(
        matches!(&e, SourceError::PermissionDenied(m) if m.contains("tokenRevoked")),
        "{e}"
    );
    assert!(!e.to_string().contains(TOKEN));
    // 401 is final: one request, no retry.
    let before = env.count("/content");
    let _ = read(&*src, &a, 0..1).await;
    assert_eq!(env.count("/content"), before + 1);

    // No token at all, and Authorization: Bearer also works.
    env.set(|b| b.reject_token = None);
    let r = raw().get(env.url(&format!("{API}/spaces"))).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["id"], "unauthorized");
    let r = raw()
        .get(env.url(&format!("{API}/spaces")))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn short_and_empty_pages_are_followed_until_is_last() {
    let n = 2_500;
    let env = start(|r| empty_files(&r.join("sp/many"), "f", n)).await;
    env.set(|b| b.short_pages = true);
    let src = env.source().await;
    let dir = walk(&*src, "sp/many").await;
    let before = env.count("/children");
    let entries = src.list(&dir).await.unwrap();
    let pages = env.count("/children") - before;
    let names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
    let want: Vec<String> = (0..n).map(|i| format!("f{i:05}")).collect();
    assert_eq!(names, want);
    assert!(pages > 5, "short pages must need several requests, took {pages}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_legacy_only_server_is_detected_once_and_remembered() {
    let env = start(|r| {
        write(r, "sp/d/a.txt", b"hello");
        write(r, "sp/d/b/c.txt", b"x");
        std::os::unix::fs::symlink("a.txt", r.join("sp/d/link")).unwrap();
    })
    .await;
    env.set(|b| b.legacy_only = true);
    let src = env.source().await;
    let d = walk(&*src, "sp/d").await;
    let before = env.count("/children");
    let entries = src.list(&d).await.unwrap();
    assert_eq!(env.count("/children") - before, 1, "the style is already known");
    let a = entries.iter().find(|e| e.name == "a.txt").unwrap();
    assert_eq!((a.kind, a.size, a.mode), (EntryKind::File, 5, Some(0o444)));
    assert_eq!(entries.iter().find(|e| e.name == "b").unwrap().kind, EntryKind::Dir);
    let link = entries.iter().find(|e| e.name == "link").unwrap();
    assert_eq!(link.kind, EntryKind::Symlink);
    assert_eq!(link.symlink_target, None, "legacy servers have no symlinkValue");
    assert_eq!(src.readlink(link).await.unwrap(), "a.txt");
    assert_eq!(&read(&*src, a, 0..5).await.unwrap()[..], b"hello");
    // The walk above listed "sp" first: that listing paid for the detection (2 requests).
    assert_eq!(env.count(&format!("GET {API}/data/")) - env.count("/content"), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_current_server_gets_one_request_per_page_with_the_json_body() {
    let env = start(|r| {
        write(r, "sp/a", b"1");
        write(r, "sp/b", b"22");
    })
    .await;
    let src = env.source().await;
    let root = src.root().await.unwrap();
    let sp = find(&*src, &root, "sp").await;
    let before = env.count("/children");
    let e = src.list(&sp).await.unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(env.count("/children") - before, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinks_list_with_their_target_and_download_follows_them() {
    let env = start(|r| {
        write(r, "sp/sub/file.txt", b"target bytes");
        std::os::unix::fs::symlink("sub/file.txt", r.join("sp/link")).unwrap();
        std::os::unix::fs::symlink("../../outside", r.join("sp/sub/escape")).unwrap();
    })
    .await;
    let src = env.source().await;
    let link = walk(&*src, "sp/link").await;
    assert_eq!(link.kind, EntryKind::Symlink);
    assert_eq!(link.symlink_target.as_deref(), Some("sub/file.txt"));
    assert_eq!(src.readlink(&link).await.unwrap(), "sub/file.txt");
    let id = xattr(&link, "user.onedata.file_id");
    let r = get(&env, &format!("{API}/data/{id}/content"), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(&r.bytes().await.unwrap()[..], b"target bytes");
    let r = get(&env, &format!("{API}/data/{id}/content?follow_symlinks=false"), None).await;
    assert_eq!(&r.bytes().await.unwrap()[..], b"sub/file.txt");
    let esc = xattr(&walk(&*src, "sp/sub/escape").await, "user.onedata.file_id");
    let r = get(&env, &format!("{API}/data/{esc}/content"), None).await;
    assert_eq!(r.status(), 400, "a link leaving the space does not resolve");
    // Path resolution never passes through a linked directory, which could leave the root.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"must not be served").unwrap();
    std::os::unix::fs::symlink(outside.path(), env.root().join("sp/linkdir")).unwrap();
    let space = xattr(&walk(&*src, "sp").await, "user.onedata.space_id");
    let r = get(&env, &format!("{API}/data/{space}/path/linkdir/secret"), None).await;
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["details"]["errno"], "enoent");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_path_with_odd_characters_is_read_by_path() {
    let odd_dir = "a b/ż#?%&+";
    let odd_file = "q?&=#%;'\".txt";
    let data = pattern(3_000);
    let env = start(|r| {
        write(r, &format!("odd space/{odd_dir}/{odd_file}"), &data);
        write(r, &format!("odd space/{odd_dir}/other"), b"other");
    })
    .await;
    // A path naming a file: a root holding just it, downloaded by path.
    let src = build(&env.cfg(Some("odd space"), Some(&format!("{odd_dir}/{odd_file}")))).await;
    let root = src.root().await.unwrap();
    let only = src.list(&root).await.unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].name, odd_file);
    assert_eq!(only[0].size, 3_000);
    let before = env.count("/path/");
    assert_eq!(&read(&*src, &only[0], 100..2_000).await.unwrap()[..], &data[100..2_000]);
    assert_eq!(env.count("/path/") - before, 1, "read by path");
    assert_eq!(env.count("/content"), 0);
    // A path naming a directory: the root is that directory.
    let src = build(&env.cfg(Some("odd space"), Some(odd_dir))).await;
    let root = src.root().await.unwrap();
    let mut names: Vec<String> = src.list(&root).await.unwrap().into_iter().map(|e| e.name).collect();
    names.sort();
    assert_eq!(names, vec!["other".to_string(), odd_file.to_string()]);
    // A missing path fails the mount with ENOENT.
    let src = build(&env.cfg(Some("odd space"), Some("no/such"))).await;
    assert!(matches!(src.root().await, Err(SourceError::NotFound(_))));
    let src = build(&env.cfg(Some("no such space"), None)).await;
    assert!(matches!(src.root().await, Err(SourceError::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_space_is_the_root_and_an_ambiguous_name_is_refused() {
    let env = start(|r| {
        write(r, "solo/x", b"x");
        write(r, "twin@1/y", b"y");
        write(r, "twin@2/z", b"z");
    })
    .await;
    let src = build(&env.cfg(Some("solo"), None)).await;
    let root = src.root().await.unwrap();
    assert_eq!(src.list(&root).await.unwrap()[0].name, "x");
    let src = build(&env.cfg(Some("twin"), None)).await;
    let e = src.root().await.unwrap_err();
    assert!(e.to_string().contains("twin@"), "{e}");
    // name@spaceId picks one.
    let all = env.source().await;
    let spaces = all.list(&all.root().await.unwrap()).await.unwrap();
    let pick = spaces.iter().find(|s| s.name.starts_with("twin@")).unwrap();
    let src = build(&env.cfg(Some(&pick.name), None)).await;
    let root = src.root().await.unwrap();
    assert_eq!(src.list(&root).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_download_redirects_to_a_resumable_tar() {
    let env = start(|r| {
        write(r, "sp/d/one.txt", b"first file");
        write(r, "sp/d/sub/two.bin", &pattern(5_000));
        std::os::unix::fs::symlink("one.txt", r.join("sp/d/ln")).unwrap();
    })
    .await;
    let src = env.source().await;
    let sp = walk(&*src, "sp").await;
    let space_id = xattr(&sp, "user.onedata.space_id");
    let r = get(&env, &format!("{API}/data/{space_id}/path/d"), None).await;
    assert_eq!(r.status(), 302);
    let loc = header(&r, "location");
    let code_path = loc
        .split_once("/download/")
        .map(|(_, c)| format!("/download/{c}"))
        .expect(&loc);
    let r = raw().get(env.url(&code_path)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let tar_bytes = r.bytes().await.unwrap();
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    let mut seen = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().to_string_lossy().to_string();
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut body).unwrap();
        seen.push((p, body.len()));
    }
    assert!(seen.contains(&("d/one.txt".into(), 10)), "{seen:?}");
    assert!(seen.contains(&("d/sub/two.bin".into(), 5_000)), "{seen:?}");
    assert!(
        seen.contains(&("d/ln".into(), 10)),
        "links are followed by default: {seen:?}"
    );
    // Resume from byte N; any other range is 416 bytes */*.
    let r = raw()
        .get(env.url(&code_path))
        .header("range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(&r.bytes().await.unwrap()[..], &tar_bytes[1000..]);
    let r = raw()
        .get(env.url(&code_path))
        .header("range", "bytes=0-10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "content-range"), "bytes */*");
    // By id too.
    let d = walk(&*src, "sp/d").await;
    let r = get(
        &env,
        &format!("{API}/data/{}/content", xattr(&d, "user.onedata.file_id")),
        None,
    )
    .await;
    assert_eq!(r.status(), 302);
    // The source never follows it: opening a directory is refused, and a by-path read that
    // meets the redirect stops there (the token must not travel with a redirect).
    assert!(read(&*src, &d, 0..1).await.is_err());
    let downloads = env.count("/download/");
    let by_path = Entry::file("d", format!("path:{space_id}/d"), 10);
    let e = read(&*src, &by_path, 0..10).await.unwrap_err();
    assert!(matches!(&e, SourceError::Protocol(m) if m.contains("redirect")), "{e}");
    assert_eq!(env.count("/download/"), downloads);
}

/// One authenticated API call: status and JSON body (`null` when there is none).
async fn call(
    env: &Env,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut r = raw().request(method, env.url(path)).header("x-auth-token", TOKEN);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn lookup_attributes_and_option_merging_follow_the_api() {
    use reqwest::Method;
    use serde_json::json;
    let env = start(|r| {
        write(r, "sp/dir/a", b"1");
        write(r, "sp/dir/b", b"22");
        write(r, "sp/dir/c", b"333");
    })
    .await;
    let (status, v) = call(&env, Method::POST, &format!("{API}/lookup-file-id/sp/dir/b"), None).await;
    assert_eq!(status, 200);
    let id = v["fileId"].as_str().unwrap().to_string();
    let (status, v) = call(&env, Method::POST, &format!("{API}/lookup-file-id/nospace/dir/b"), None).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["details"]["errno"], "enoent");
    assert!(
        v["error"]["ctx"]["serviceReleaseVersion"].is_string(),
        "errors carry ctx"
    );

    // Attributes: a JSON body selects current names, query `attribute=` legacy ones.
    let attrs = format!("{API}/data/{id}");
    let (_, v) = call(&env, Method::GET, &attrs, Some(json!({"attributes": ["name", "size"]}))).await;
    assert_eq!(v, json!({"name": "b", "size": 2}));
    let (_, v) = call(
        &env,
        Method::GET,
        &format!("{attrs}?attribute=file_id&attribute=mode"),
        None,
    )
    .await;
    assert_eq!(v["file_id"], id.as_str());
    assert_eq!(v["mode"], 0o644);
    let (_, all) = call(&env, Method::GET, &attrs, None).await;
    assert_eq!(all["type"], "REG");
    assert_eq!(all["posixPermissions"], "644");
    let (status, _) = call(&env, Method::GET, &attrs, Some(json!({"attributes": ["bogus"]}))).await;
    assert_eq!(status, 400);

    // Children: the query overrides the body; index/offset start inside the listing.
    let (_, v) = call(&env, Method::POST, &format!("{API}/lookup-file-id/sp/dir"), None).await;
    let children = format!("{API}/data/{}/children", v["fileId"].as_str().unwrap());
    let names = json!(["name"]);
    let q = format!("{children}?limit=2");
    let (_, v) = call(&env, Method::GET, &q, Some(json!({"limit": 1, "attributes": names}))).await;
    assert_eq!(v["children"], json!([{"name": "a"}, {"name": "b"}]));
    assert_eq!(v["isLast"], false);
    let tok = v["nextPageToken"].clone();
    let (_, v) = call(
        &env,
        Method::GET,
        &children,
        Some(json!({"token": tok, "attributes": names})),
    )
    .await;
    assert_eq!(v["children"], json!([{"name": "c"}]));
    assert_eq!(v["isLast"], true);
    assert!(v["nextPageToken"].is_null());
    let body = json!({"index": "b", "offset": 1, "attributes": names});
    let (_, v) = call(&env, Method::GET, &children, Some(body)).await;
    assert_eq!(v["children"], json!([{"name": "c"}]));
    let (status, _) = call(&env, Method::GET, &format!("{children}?limit=1001"), None).await;
    assert_eq!(status, 400);

    // HEAD is not a route.
    let (status, _) = call(&env, Method::HEAD, &format!("{API}/data/{id}/content"), None).await;
    assert_eq!(status, 405);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_onezone_stub_reports_the_spaces_of_the_token() {
    let env = start(|r| write(r, "sp/a", b"a")).await;
    let r = raw()
        .post(env.url("/api/v3/onezone/tokens/infer_access_token_scope"))
        .json(&serde_json::json!({ "token": TOKEN }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    let spaces = v["dataAccessScope"]["spaces"].as_object().unwrap();
    assert_eq!(spaces.values().next().unwrap()["name"], "sp");
    assert!(v["dataAccessScope"]["providers"].as_object().unwrap().len() == 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_are_retried_and_the_read_succeeds() {
    let env = start(|r| write(r, "sp/f", &pattern(1_000))).await;
    let src = env.source().await;
    let f = walk(&*src, "sp/f").await;
    env.server.harness.faults.set(FaultSpec {
        fail_next: 2,
        error_status: 503,
        ..FaultSpec::default()
    });
    assert_eq!(&read(&*src, &f, 10..900).await.unwrap()[..], &pattern(1_000)[10..900]);
    env.server.harness.faults.set(FaultSpec {
        fail_next: 2,
        error_status: 500,
        ..FaultSpec::default()
    });
    let sp = walk(&*src, "sp").await;
    assert_eq!(src.list(&sp).await.unwrap().len(), 1);
    // A body cut mid-stream is an error, never short data.
    env.server.harness.faults.set(FaultSpec {
        reset_after: Some(100),
        ..FaultSpec::default()
    });
    assert!(read(&*src, &f, 0..1_000).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quick_form_url_mounts_the_emulator_over_plain_http() {
    let env = start(|r| write(r, "my space/f.txt", b"quick")).await;
    let url = format!("onedata+http://{}/my%20space", env.server.addr);
    let SourceConfig::Onedata(mut cfg) = fetchfs::provider::from_url(&url, "od").unwrap() else {
        panic!("not a onedata config");
    };
    assert_eq!(cfg.space.as_deref(), Some("my space"));
    cfg.token = Some(TOKEN.into());
    let src = build(&cfg).await;
    let root = src.root().await.unwrap();
    let f = find(&*src, &root, "f.txt").await;
    assert_eq!(&read(&*src, &f, 0..5).await.unwrap()[..], b"quick");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_serves_its_sample_spaces() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cfg) = emu::demo(dir.path()).await.unwrap();
    let src = fetchfs::provider::build(&cfg, &ctx()).await.unwrap();
    let hello = walk(&*src, "demo/hello.txt").await;
    let got = read(&*src, &hello, 0..hello.size).await.unwrap();
    assert!(got.starts_with(b"Hello"));
    assert_eq!(walk(&*src, "demo/hello-link").await.kind, EntryKind::Symlink);
    assert_eq!(walk(&*src, "science/results.csv").await.kind, EntryKind::File);
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_entries_are_listed_completely() {
    let n = 10_000;
    let env = start(|r| empty_files(&r.join("sp/big"), "entry-", n)).await;
    let src = env.source().await;
    let dir = walk(&*src, "sp/big").await;
    let t = Instant::now();
    let entries = src.list(&dir).await.unwrap();
    let took = t.elapsed();
    assert_eq!(entries.len(), n);
    let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    names.dedup();
    assert_eq!(names.len(), n, "no duplicates across pages");
    // The same pages fetched raw (emulator + transfer only), to tell server from client time.
    let url = env.url(&format!("{API}/data/{}/children", xattr(&dir, "user.onedata.file_id")));
    let attrs = fetchfs::provider::onedata::ATTRS;
    let t = Instant::now();
    let mut token: Option<String> = None;
    loop {
        let mut body = serde_json::json!({"limit": 1000, "attributes": attrs});
        if let Some(t) = &token {
            body["token"] = serde_json::json!(t);
        }
        let r = raw()
            .get(&url)
            .header("x-auth-token", TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        match v["nextPageToken"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    let raw_took = t.elapsed();
    eprintln!(
        "listing {n} entries through OnedataSource took {took:?} ({} pages); the raw pages alone {raw_took:?}",
        env.count("/children") / 2
    );
}

// ---- real FUSE mounts (the `fetchfs` binary, helpers of tests/common) ----------------------

/// An emulator on a runtime of its own, for tests that mount with the real binary.
struct MountFixture {
    _rt: tokio::runtime::Runtime,
    data: tempfile::TempDir,
    server: Server,
    behaviour: Arc<Mutex<OnedataBehaviour>>,
    conf: tempfile::TempDir,
}

fn mount_fixture(tree: impl FnOnce(&Path)) -> MountFixture {
    let rt = common::runtime();
    let data = tempfile::tempdir().unwrap();
    tree(data.path());
    let e = emulator(data.path());
    let behaviour = e.behaviour.clone();
    let server = rt.block_on(serve(e.router, 0, e.harness)).unwrap();
    let conf = tempfile::tempdir().unwrap();
    std::fs::write(conf.path().join("token"), format!("{TOKEN}\n")).unwrap();
    MountFixture {
        _rt: rt,
        data,
        server,
        behaviour,
        conf,
    }
}

impl MountFixture {
    /// A config file with one onedata source named `od` (token from a file), plus `extra` lines.
    fn config(&self, extra: &str) -> String {
        let p = self.conf.path().join("fetchfs.toml");
        let text = format!(
            "[[source]]\nname = \"od\"\ntype = \"onedata\"\nendpoint = \"{}\"\ntoken_file = \"{}\"\n{extra}",
            self.server.base_url(),
            self.conf.path().join("token").display()
        );
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

fn shell(cmd: &str) -> String {
    let (ok, out, err) = common::sh(cmd, Duration::from_secs(60));
    assert!(ok, "{cmd}: {err}");
    out
}

fn getxattr(path: &Path, name: &str) -> Option<String> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the stated length.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| String::from_utf8_lossy(&buf[..len as usize]).to_string())
}

#[test]
fn a_mounted_onedata_tree_copies_byte_exact_with_cp_and_sha1sum() {
    if !common::can_mount() {
        return;
    }
    let big = pattern(5 << 20);
    let fx = mount_fixture(|d| {
        write(d, "sp/big.bin", &big);
        write(d, "sp/dir/a.txt", b"alpha\n");
        write(d, "sp/dir/sub/b.bin", &pattern(70_000));
        write(d, "sp/dir/empty", b"");
        write(d, "sp/secret.txt", b"hidden");
        for i in 0..1_500 {
            write(d, &format!("sp/many/n{i:04}"), format!("{i}").as_bytes());
        }
        std::os::unix::fs::symlink("dir/a.txt", d.join("sp/link")).unwrap();
        write(d, "twin@1/one.txt", b"1");
        write(d, "twin@2/two.txt", b"2");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("sp/secret.txt"), std::fs::Permissions::from_mode(0o000)).unwrap();
    });
    fx.behaviour.lock().unwrap().short_pages = true;
    let m = common::MountGuard::start(&["--config", &fx.config("")]);
    let od = m.path("od");

    // Spaces as directories, twins disambiguated by space id.
    let spaces = shell(&format!("ls {}", od.display()));
    let spaces: Vec<&str> = spaces.lines().collect();
    assert_eq!(spaces.len(), 3, "{spaces:?}");
    assert_eq!(spaces[0], "sp");
    assert!(
        spaces[1].starts_with("twin@") && spaces[2].starts_with("twin@"),
        "{spaces:?}"
    );

    // cp -r gives the same bytes; sha1sum through the mount matches the original.
    let copy = tempfile::tempdir().unwrap();
    shell(&format!(
        "cp -r {} {}/",
        od.join("sp/dir").display(),
        copy.path().display()
    ));
    for f in ["a.txt", "sub/b.bin", "empty"] {
        assert_eq!(
            std::fs::read(copy.path().join("dir").join(f)).unwrap(),
            std::fs::read(fx.data.path().join("sp/dir").join(f)).unwrap(),
            "{f}"
        );
    }
    let sum = |p: &Path| shell(&format!("sha1sum '{}'", p.display()))[..40].to_string();
    assert_eq!(sum(&od.join("sp/big.bin")), sum(&fx.data.path().join("sp/big.bin")));
    let out = std::process::Command::new("dd")
        .arg(format!("if={}", od.join("sp/big.bin").display()))
        .args(["bs=4096", "skip=300", "count=3", "status=none"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, big[300 * 4096..303 * 4096].to_vec(), "dd at an offset");

    // Short pages still list completely; modes lose their write bits; links and xattrs show.
    assert_eq!(
        shell(&format!("ls {} | wc -l", od.join("sp/many").display())).trim(),
        "1500"
    );
    assert_eq!(
        shell(&format!("stat -c %a {}", od.join("sp/dir/a.txt").display())).trim(),
        "444"
    );
    assert_eq!(
        shell(&format!("readlink {}", od.join("sp/link").display())).trim(),
        "dir/a.txt"
    );
    assert_eq!(shell(&format!("cat {}", od.join("sp/link").display())), "alpha\n");
    assert!(getxattr(&od.join("sp/dir/a.txt"), "user.onedata.file_id").is_some_and(|v| !v.is_empty()));
    assert!(getxattr(&od.join("sp/dir/a.txt"), "user.onedata.space_id").is_some_and(|v| v.len() == 32));

    // Errors reach the shell as errno: EACCES for a refused read, ENOENT for a missing name.
    let e = std::fs::read(od.join("sp/secret.txt")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    let e = std::fs::read(od.join("sp/nope")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}");
}

#[test]
fn a_configured_space_and_file_path_mount_through_a_legacy_server() {
    if !common::can_mount() {
        return;
    }
    let data = pattern(300_000);
    let fx = mount_fixture(|d| {
        write(d, "my space/dir x/f #1.bin", &data);
        write(d, "my space/dir x/other.txt", b"other");
    });
    fx.behaviour.lock().unwrap().legacy_only = true;
    let m = common::MountGuard::start(&[
        "--config",
        &fx.config("space = \"my space\"\npath = \"dir x/f #1.bin\"\n"),
    ]);
    let f = m.path("od/f #1.bin");
    assert_eq!(shell(&format!("ls '{}'", m.path("od").display())).trim(), "f #1.bin");
    assert_eq!(std::fs::read(&f).unwrap(), data);
    drop(m);
    let m = common::MountGuard::start(&["--config", &fx.config("space = \"my space\"\npath = \"dir x\"\n")]);
    assert_eq!(std::fs::read(m.path("od/other.txt")).unwrap(), b"other");
}

#[test]
fn a_refused_token_fails_the_mount_with_its_auth_error() {
    if !common::can_mount() {
        return;
    }
    let fx = mount_fixture(|d| write(d, "sp/a", b"a"));
    fx.behaviour.lock().unwrap().reject_token = Some("tokenRevoked".into());
    let err = match common::MountGuard::try_start(&["--config", &fx.config("")]) {
        Ok(_) => panic!("mounted with a revoked token"),
        Err(e) => e,
    };
    assert!(err.contains("tokenRevoked"), "{err}");
    assert!(!err.contains(TOKEN), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn config_mistakes_are_one_sentence_naming_the_key() {
    let env = start(|r| write(r, "sp/a", b"a")).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tok"), format!("{TOKEN}\n")).unwrap();
    let mut cfg = env.cfg(None, None);
    cfg.token = None;
    cfg.token_file = Some(dir.path().join("tok"));
    let src = build(&cfg).await;
    assert!(src.root().await.is_ok(), "token_file is read");

    let try_build = |cfg: OnedataConfig| async move {
        match fetchfs::provider::build(&SourceConfig::Onedata(cfg), &ctx()).await {
            Ok(_) => panic!("accepted"),
            Err(e) => e.0,
        }
    };
    if std::env::var_os("ONEDATA_ACCESS_TOKEN").is_none() && std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
        let mut c = env.cfg(None, None);
        c.token = None;
        let msg = try_build(c).await;
        assert!(
            msg.contains("token_file") && msg.contains("ONEDATA_ACCESS_TOKEN"),
            "{msg}"
        );
    }
    let mut c = env.cfg(None, None);
    c.endpoint = "ftp://example.org".into();
    assert!(try_build(c).await.contains("endpoint"));
    let msg = try_build(env.cfg(None, Some("a/b"))).await;
    assert!(msg.contains("path") && msg.contains("space"), "{msg}");
    let msg = try_build(env.cfg(Some("sp"), Some("a/../b"))).await;
    assert!(msg.contains(".."), "{msg}");
    // The endpoint may already name the API prefix.
    let mut c = env.cfg(None, None);
    c.endpoint = format!("{}/api/v3/oneprovider/", env.server.base_url());
    assert!(build(&c).await.root().await.is_ok());
}

//! The SMH source against the SMH emulator, in process: every documented behaviour and error
//! of providers.md §3 and every item of the emulator checklist §3.11.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fetchfs::config::SourceConfig;
use fetchfs::emulate::smh::{SmhControl, SmhEmuOptions, router};
use fetchfs::emulate::{FaultSpec, Harness, Server, serve};
use fetchfs::error::SourceError;
use fetchfs::http::HttpOptions;
use fetchfs::provider::BuildContext;
use fetchfs::provider::smh::{SmhConfig, crc64};
use fetchfs::source::{Checksum, Entry, EntryKind, OpenRequest, Source, read_all};
use serde_json::Value;

const LIB: &str = "smhdemo";
const SECRET: &str = "demo-secret";
const HELLO: &[u8] = b"hello world";

struct Env {
    dir: tempfile::TempDir,
    server: Server,
    ctl: Arc<SmhControl>,
    harness: Harness,
}

impl Env {
    fn base(&self) -> String {
        self.server.base_url()
    }
    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn config(&self) -> SmhConfig {
        SmhConfig {
            name: "smh".into(),
            endpoint: Some(self.base()),
            library_id: LIB.into(),
            library_secret: Some(SECRET.into()),
            library_secret_file: None,
            access_token: None,
            access_token_file: None,
            space_id: None,
            user_id: None,
            versions: false,
        }
    }
    async fn source(&self) -> Arc<dyn Source> {
        self.source_with(|_| {}).await
    }
    async fn source_with(&self, tweak: impl FnOnce(&mut SmhConfig)) -> Arc<dyn Source> {
        let mut cfg = self.config();
        tweak(&mut cfg);
        fetchfs::provider::build(&SourceConfig::Smh(cfg), &ctx()).await.unwrap()
    }
    fn requests(&self, prefix: &str) -> u64 {
        self.harness.stats.count(|k| k.starts_with(prefix))
    }
}

fn ctx() -> BuildContext {
    BuildContext {
        http: HttpOptions {
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            op_timeout: Duration::from_secs(20),
            ..HttpOptions::default()
        },
        base_dir: std::env::temp_dir(),
        block_size: 1 << 20,
        disk_cache: false,
    }
}

fn big_bytes() -> Vec<u8> {
    (0u32..(3 << 20) / 4 + 123)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect()
}

/// The sample tree: files, a nested dir, odd names, an image, an empty file, a symlink, two
/// older versions of hello.txt and a metadata sidecar.
fn write_tree(root: &Path) {
    let w = |p: &str, b: &[u8]| {
        let f = root.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, b).unwrap();
    };
    w("hello.txt", HELLO);
    w("big.bin", &big_bytes());
    w("empty.txt", b"");
    w("pic.jpg", b"\xff\xd8\xff not really a jpeg");
    w("docs/a b+c (1).txt", b"odd name");
    w("docs/sub/deep.txt", b"deep file");
    w("docs/zeta.txt", b"zzz");
    w(".history/hello.txt.v1", b"hello v1");
    w(".history/hello.txt.v2", b"hello v2!");
    w(".meta/hello.txt.json", br#"{"owner":"ann","n":"7"}"#);
    std::os::unix::fs::symlink("docs/sub/deep.txt", root.join("link")).unwrap();
}

async fn start_with(opts: SmhEmuOptions) -> Env {
    start_in(opts, tempfile::tempdir().unwrap()).await
}

async fn start_in(opts: SmhEmuOptions, dir: tempfile::TempDir) -> Env {
    write_tree(dir.path());
    let emu = router(dir.path(), opts);
    let server = serve(emu.router, 0, emu.harness.clone()).await.unwrap();
    Env {
        dir,
        server,
        ctl: emu.control,
        harness: emu.harness,
    }
}

async fn start() -> Env {
    start_with(SmhEmuOptions::default()).await
}

fn open_req() -> OpenRequest {
    OpenRequest {
        block_size: 1 << 20,
        revalidate: false,
    }
}

async fn list(src: &dyn Source, dir: &Entry) -> Vec<Entry> {
    let mut v = src.list(dir).await.unwrap();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

fn find<'a>(entries: &'a [Entry], name: &str) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{name} not listed"))
}

fn xattr<'a>(e: &'a Entry, key: &str) -> Option<&'a [u8]> {
    e.xattrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_slice())
}

async fn read_file(src: &dyn Source, e: &Entry) -> Vec<u8> {
    let opened = src.open(e, &open_req()).await.unwrap();
    read_all(&*opened.reader, 0..opened.entry.size).await.unwrap().to_vec()
}

/// Reads big.bin in two halves split at `at`, running `between` after the first; asserts the
/// bytes equal the file's.
async fn read_big_across(env: &Env, at: u64, between: impl FnOnce(&SmhControl)) {
    let src = env.source().await;
    let root = src.root().await.unwrap();
    let big = find(&list(&*src, &root).await, "big.bin").clone();
    let want = big_bytes();
    let n = want.len() as u64;
    let opened = src.open(&big, &open_req()).await.unwrap();
    let mut got = read_all(&*opened.reader, 0..at).await.unwrap().to_vec();
    between(&env.ctl);
    got.extend_from_slice(&read_all(&*opened.reader, at..n).await.unwrap());
    assert!(got == want, "bytes differ");
}

/// A client that does not follow redirects, for checking the raw API.
fn raw() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

async fn raw_token(env: &Env) -> String {
    let v: Value = raw()
        .get(format!("{}/api/v1/token", env.base()))
        .query(&[("library_id", LIB), ("library_secret", SECRET)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["accessToken"].as_str().unwrap().to_string()
}

async fn raw_json(env: &Env, path_and_query: &str) -> (u16, Value) {
    let tok = raw_token(env).await;
    let sep = if path_and_query.contains('?') { '&' } else { '?' };
    let resp = raw()
        .get(format!("{}{path_and_query}{sep}access_token={tok}", env.base()))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

// ---------------------------------------------------------------------------------------------
// Listing and metadata

#[tokio::test(flavor = "multi_thread")]
async fn listing_maps_types_sizes_times_checksums_and_xattrs() {
    let env = start().await;
    let src = env.source().await;
    let root = src.root().await.unwrap();
    let entries = list(&*src, &root).await;
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["big.bin", "docs", "empty.txt", "hello.txt", "link", "pic.jpg"],
        "hidden .history/.meta are never listed"
    );
    let hello = find(&entries, "hello.txt");
    assert_eq!(hello.kind, EntryKind::File);
    assert_eq!(hello.size, 11);
    assert_eq!(hello.checksum, Some(Checksum::Crc64Xz(5_981_764_153_023_615_706)));
    let on_disk = std::fs::metadata(env.root().join("hello.txt"))
        .unwrap()
        .modified()
        .unwrap();
    let diff = on_disk.duration_since(hello.mtime).unwrap_or_else(|e| e.duration());
    assert!(diff < Duration::from_millis(2), "mtime from modificationTime: {diff:?}");
    assert_eq!(xattr(hello, "user.smh.crc64"), Some(&b"5981764153023615706"[..]));
    assert_eq!(xattr(hello, "user.smh.content_type"), Some(&b"text/plain"[..]));
    assert_eq!(xattr(hello, "user.smh.meta.owner"), Some(&b"ann"[..]));
    assert!(xattr(hello, "user.smh.etag").is_some());
    assert!(hello.validator.is_some());
    assert_eq!(find(&entries, "docs").kind, EntryKind::Dir);
    assert_eq!(find(&entries, "pic.jpg").kind, EntryKind::File, "image → regular file");
    let link = find(&entries, "link");
    assert_eq!(link.kind, EntryKind::Symlink);
    assert_eq!(link.symlink_target.as_deref(), Some("docs/sub/deep.txt"));
    assert_eq!(find(&entries, "empty.txt").checksum, Some(Checksum::Crc64Xz(0)));
}

#[tokio::test(flavor = "multi_thread")]
async fn nested_directories_and_odd_names_round_trip() {
    let env = start().await;
    let src = env.source().await;
    let root = src.root().await.unwrap();
    let docs = find(&list(&*src, &root).await, "docs").clone();
    let inside = list(&*src, &docs).await;
    let names: Vec<&str> = inside.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a b+c (1).txt", "sub", "zeta.txt"]);
    assert_eq!(read_file(&*src, find(&inside, "a b+c (1).txt")).await, b"odd name");
    let sub = list(&*src, find(&inside, "sub")).await;
    assert_eq!(read_file(&*src, find(&sub, "deep.txt")).await, b"deep file");
    let link = find(&list(&*src, &root).await, "link").clone();
    let mut no_target = link.clone();
    no_target.symlink_target = None;
    assert_eq!(
        src.readlink(&no_target).await.unwrap(),
        "docs/sub/deep.txt",
        "readlink falls back to ?info linkTo"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sizes_written_as_strings_are_accepted() {
    let env = start().await;
    env.ctl.set_sizes_as_strings(true);
    let (_, v) = raw_json(&env, &format!("/api/v1/directory/{LIB}/-?limit=100")).await;
    let hello = v["contents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "hello.txt")
        .unwrap();
    assert_eq!(
        hello["size"],
        Value::String("11".into()),
        "the emulator really writes strings"
    );
    let src = env.source().await;
    let root = src.root().await.unwrap();
    let entries = list(&*src, &root).await;
    assert_eq!(find(&entries, "hello.txt").size, 11);
    assert_eq!(find(&entries, "big.bin").size, big_bytes().len() as u64);
    assert_eq!(read_file(&*src, find(&entries, "hello.txt")).await, HELLO);
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_entries_are_listed_completely() {
    // tmpfs when there is one: creating 10,000 files on a busy disk takes longer than listing.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let env = start_in(SmhEmuOptions::default(), dir).await;
    let many = env.root().join("many");
    std::fs::create_dir(&many).unwrap();
    for i in 0..10_000 {
        std::fs::write(many.join(format!("f{i:05}")), i.to_string()).unwrap();
    }
    let src = env.source().await;
    let root = src.root().await.unwrap();
    let dir = find(&list(&*src, &root).await, "many").clone();
    let t = Instant::now();
    let entries = src.list(&dir).await.unwrap();
    let cold = t.elapsed();
    let t = Instant::now();
    assert_eq!(src.list(&dir).await.unwrap().len(), 10_000);
    let warm = t.elapsed();
    eprintln!(
        "listed 10,000 SMH entries: {cold:?} (emulator hashing every file), then {warm:?}; {} pages each",
        (env.requests("GET /api/v1/directory/") - 2) / 2
    );
    assert_eq!(entries.len(), 10_000);
    let names: std::collections::HashSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names.len(), 10_000);
    assert!(names.contains("f00000") && names.contains("f09999"));
    let e = entries.iter().find(|e| e.name == "f01234").unwrap();
    assert_eq!(e.size, 4);
    assert_eq!(e.checksum, Some(Checksum::Crc64Xz(crc64(b"1234"))));
}

// ---------------------------------------------------------------------------------------------
// Reading

#[tokio::test(flavor = "multi_thread")]
async fn reads_return_exact_bytes_for_any_range() {
    let env = start().await;
    let src = env.source().await;
    let root = src.root().await.unwrap();
    let entries = list(&*src, &root).await;
    let big = find(&entries, "big.bin");
    let want = big_bytes();
    let opened = src.open(big, &open_req()).await.unwrap();
    assert_eq!(opened.entry.size, want.len() as u64);
    let n = want.len() as u64;
    for r in [
        0..n,
        0..1,
        1..2,
        1000..(1 << 20) + 17,
        n - 1..n,
        n - 4096..n,
        (2 << 20)..(3 << 20),
    ] {
        let got = read_all(&*opened.reader, r.clone()).await.unwrap();
        assert_eq!(&got[..], &want[r.start as usize..r.end as usize], "{r:?}");
    }
    assert_eq!(opened.entry.checksum, Some(Checksum::Crc64Xz(crc64(&want))));
    assert_eq!(
        env.requests("GET /api/v1/file/"),
        1,
        "one signed-URL resolution per open, blocks go to COS"
    );
    assert_eq!(env.requests("GET /cos/"), 7);
    assert_eq!(read_file(&*src, find(&entries, "hello.txt")).await, HELLO);
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_file_opens_with_size_zero() {
    let env = start().await;
    let src = env.source().await;
    let root = src.root().await.unwrap();
    let empty = find(&list(&*src, &root).await, "empty.txt").clone();
    let opened = src.open(&empty, &open_req()).await.unwrap();
    assert_eq!(opened.entry.size, 0);
    assert_eq!(opened.entry.checksum, Some(Checksum::Crc64Xz(0)));
    assert!(read_all(&*opened.reader, 0..0).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_files_and_directories_are_not_found() {
    let env = start().await;
    let src = env.source().await;
    let root = src.root().await.unwrap();
    let mut ghost = find(&list(&*src, &root).await, "hello.txt").clone();
    std::fs::remove_file(env.root().join("hello.txt")).unwrap();
    let err = src.open(&ghost, &open_req()).await.err().unwrap();
    assert!(matches!(err, SourceError::NotFound(_)), "{err}");
    ghost.kind = EntryKind::Dir;
    ghost.remote = "f:nowhere".into();
    let err = src.list(&ghost).await.unwrap_err();
    assert!(matches!(err, SourceError::NotFound(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn file_replaced_mid_read_is_reported_as_changed() {
    let env = start().await;
    let src = env.source().await;
    let root = src.root().await.unwrap();
    let big = find(&list(&*src, &root).await, "big.bin").clone();
    let opened = src.open(&big, &open_req()).await.unwrap();
    read_all(&*opened.reader, 0..4096).await.unwrap();
    let mut other = big_bytes();
    other[5000] ^= 1;
    std::fs::write(env.root().join("big.bin"), &other).unwrap();
    let err = read_all(&*opened.reader, 4096..8192).await.unwrap_err();
    assert!(matches!(err, SourceError::Changed(_)), "{err}");
    assert!(
        !err.to_string().contains("q-signature"),
        "no signature in errors: {err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[tokio::test(flavor = "multi_thread")]
async fn token_is_fetched_once_and_reused() {
    let env = start().await;
    let src = env.source().await;
    let root = src.root().await.unwrap();
    let entries = list(&*src, &root).await;
    list(&*src, find(&entries, "docs")).await;
    read_file(&*src, find(&entries, "hello.txt")).await;
    assert_eq!(env.ctl.tokens_issued(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_token_is_renewed_once_and_the_call_succeeds() {
    let env = start().await;
    let src = env.source().await;
    let root = src.root().await.unwrap();
    env.ctl.expire_tokens();
    let entries = list(&*src, &root).await;
    assert_eq!(entries.len(), 6);
    assert_eq!(env.ctl.tokens_issued(), 2);
    // Fifty parallel calls after an expiry still cause one renewal.
    env.ctl.expire_tokens();
    let calls = (0..50).map(|_| {
        let src = src.clone();
        let root = root.clone();
        tokio::spawn(async move { src.list(&root).await.map(|v| v.len()) })
    });
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap(), 6);
    }
    assert_eq!(env.ctl.tokens_issued(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_is_renewed_before_expires_in() {
    let env = start().await;
    // expiresIn = 31 s: inside the 30 s margin after one second.
    env.ctl.set_token_period(31, 1);
    let src = env.source().await;
    let root = src.root().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    list(&*src, &root).await;
    assert_eq!(env.ctl.tokens_issued(), 2);
    assert_eq!(
        env.requests("GET /api/v1/directory/"),
        2,
        "renewed ahead of time: no call was refused and repeated"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_library_secret_fails_the_mount_without_leaking_it() {
    let env = start().await;
    let src = env
        .source_with(|c| c.library_secret = Some("not-the-secret".into()))
        .await;
    let err = src.root().await.unwrap_err();
    assert!(matches!(err, SourceError::PermissionDenied(_)), "{err}");
    assert!(!err.to_string().contains("not-the-secret"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_library_or_space_is_not_found() {
    let env = start().await;
    let src = env.source_with(|c| c.library_id = "otherlib".into()).await;
    let err = src.root().await.unwrap_err();
    assert!(matches!(err, SourceError::NotFound(_)), "{err}");
    let src = env.source_with(|c| c.space_id = Some("space9".into())).await;
    let err = src.root().await.unwrap_err();
    assert!(matches!(err, SourceError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("SpaceNotFound"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_space_is_served_and_tokens_are_bound_to_it() {
    let env = start_with(SmhEmuOptions {
        space_id: "space1".into(),
        ..SmhEmuOptions::default()
    })
    .await;
    let src = env.source_with(|c| c.space_id = Some("space1".into())).await;
    let root = src.root().await.unwrap();
    assert_eq!(list(&*src, &root).await.len(), 6);
    // A token bound to space1 (the client asks for one) is refused on another space.
    let v: Value = raw()
        .get(format!("{}/api/v1/token", env.base()))
        .query(&[("library_id", LIB), ("library_secret", SECRET), ("space_id", "space1")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tok = v["accessToken"].as_str().unwrap();
    let r = raw()
        .get(format!(
            "{}/api/v1/directory/{LIB}/other?access_token={tok}",
            env.base()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "AccessTokenNotMatchSpace");
    let (status, _) = raw_json(&env, &format!("/api/v1/directory/{LIB}/-")).await;
    assert_eq!(status, 404, "an admin token on a space that does not exist");
}

#[tokio::test(flavor = "multi_thread")]
async fn emulator_tokens_slide_with_each_use_and_expire_when_idle() {
    let env = start().await;
    env.ctl.set_token_period(2, 1);
    let tok = raw_token(&env).await;
    let status = || async {
        raw()
            .get(format!(
                "{}/api/v1/directory/{LIB}/-?limit=1&access_token={tok}",
                env.base()
            ))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(status().await, 200, "each use extends the token by its period");
    }
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(status().await, 403, "an idle token expires after its period");
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_access_token_is_used_and_its_expiry_is_permission_denied() {
    let env = start().await;
    let tok = raw_token(&env).await;
    let src = env
        .source_with(|c| {
            c.library_secret = None;
            c.access_token = Some(tok.clone());
        })
        .await;
    let root = src.root().await.unwrap();
    assert_eq!(list(&*src, &root).await.len(), 6);
    env.ctl.expire_tokens();
    let err = src.list(&root).await.unwrap_err();
    assert!(matches!(err, SourceError::PermissionDenied(_)), "{err}");
    assert!(err.to_string().contains("InvalidAccessToken"), "{err}");
    assert!(
        !err.to_string().contains(&tok),
        "the token never appears in errors: {err}"
    );
    assert_eq!(env.ctl.tokens_issued(), 1, "a ready token is never renewed");
}

#[tokio::test(flavor = "multi_thread")]
async fn toml_config_with_a_secret_file_builds_a_working_source() {
    let env = start().await;
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let text = format!(
        "[[source]]\nname = \"media\"\ntype = \"smh\"\nendpoint = \"{}\"\nlibrary_id = \"{LIB}\"\nlibrary_secret_file = \"{}\"\n",
        env.base(),
        secret.display()
    );
    let cfg = fetchfs::config::ConfigFile::parse(&text).unwrap();
    let c = cfg.validate(Path::new("/")).unwrap();
    assert_eq!(c.sources[0].kind(), "smh");
    let src = fetchfs::provider::build(&c.sources[0], &ctx()).await.unwrap();
    let root = src.root().await.unwrap();
    assert_eq!(list(&*src, &root).await.len(), 6);
    let e = fetchfs::config::ConfigFile::parse("[[source]]\nname='m'\ntype='smh'\nlibrary='x'\n").unwrap_err();
    assert!(e.0.contains("library"), "{e}");
    let no_cred = SourceConfig::Smh(SmhConfig {
        library_secret: None,
        ..env.config()
    });
    let e = fetchfs::provider::build(&no_cred, &ctx()).await.err().unwrap();
    assert!(e.0.contains("library_secret"), "{e}");
    let q = fetchfs::provider::from_url("smh://lib7/space2", "q").unwrap();
    let SourceConfig::Smh(q) = q else { panic!("not smh") };
    assert_eq!((q.library_id.as_str(), q.space_id.as_deref()), ("lib7", Some("space2")));
}

// ---------------------------------------------------------------------------------------------
// Signed URLs

#[tokio::test(flavor = "multi_thread")]
async fn signed_url_expiry_mid_read_gets_a_new_url_and_completes() {
    let env = start().await;
    read_big_across(&env, 1 << 20, SmhControl::expire_signed_urls).await;
    assert_eq!(env.requests("GET /api/v1/file/"), 2, "one new signed URL");
    assert_eq!(env.ctl.tokens_issued(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_expiry_mid_read_completes_with_equal_bytes() {
    let env = start().await;
    // Both credentials die: COS refuses the URL, SMH refuses the token used to get a new one.
    read_big_across(&env, 1 << 20, |c| {
        c.expire_tokens();
        c.expire_signed_urls();
    })
    .await;
    assert_eq!(env.ctl.tokens_issued(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_cos_url_in_info_the_download_redirect_gives_the_signed_url() {
    let env = start().await;
    env.ctl.set_omit_cos_url(true);
    read_big_across(&env, 1 << 20, SmhControl::expire_signed_urls).await;
    assert_eq!(
        env.requests("GET /api/v1/file/"),
        4,
        "?info then the 302, at open and again after the URL expired"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_urls_really_expire_after_their_lifetime() {
    let env = start().await;
    // Valid for 2 to 3 s (COS sign times are whole seconds).
    env.ctl.set_url_ttl(Duration::from_secs(3));
    let tok = raw_token(&env).await;
    let info: Value = raw()
        .get(format!(
            "{}/api/v1/file/{LIB}/-/hello.txt?info&access_token={tok}",
            env.base()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = info["cosUrl"].as_str().unwrap().to_string();
    assert_eq!(raw().get(&url).send().await.unwrap().status(), 200);
    let src = env.source().await;
    let root = src.root().await.unwrap();
    let hello = find(&list(&*src, &root).await, "hello.txt").clone();
    let opened = src.open(&hello, &open_req()).await.unwrap();
    assert_eq!(&read_all(&*opened.reader, 0..5).await.unwrap()[..], b"hello");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let resp = raw().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["content-type"], "application/xml");
    let body = resp.text().await.unwrap();
    assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    assert!(body.contains("<Message>Request has expired</Message>"), "{body}");
    assert!(body.contains("<RequestId>") && body.contains("<TraceId>"), "{body}");
    assert_eq!(&read_all(&*opened.reader, 5..11).await.unwrap()[..], b" world");
    assert_eq!(env.requests("GET /api/v1/file/"), 3, "raw ?info + open + one renewal");
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_signed_urls_are_refused_with_cos_xml() {
    let env = start().await;
    let (_, info) = raw_json(&env, &format!("/api/v1/file/{LIB}/-/hello.txt?info")).await;
    let url = info["cosUrl"].as_str().unwrap().to_string();
    for bad in [
        url.replace("hello.txt", "big.bin"),
        url.replace("q-url-id=", "q-url-id=9"),
        format!("{}00", url),
        url.split('?').next().unwrap().to_string(),
    ] {
        let resp = raw().get(&bad).send().await.unwrap();
        assert_eq!(resp.status(), 403, "{bad}");
        let body = resp.text().await.unwrap();
        assert!(body.starts_with("<?xml") && body.contains("<Error>"), "{body}");
    }
    let body = raw()
        .get(format!("{}00", url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("SignatureDoesNotMatch"), "{body}");
}

// ---------------------------------------------------------------------------------------------
// Integrity

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_crc64_is_published_and_differs_from_the_bytes() {
    let env = start().await;
    env.ctl.publish_wrong_crc64("hello.txt");
    let src = env.source().await;
    let root = src.root().await.unwrap();
    let hello = find(&list(&*src, &root).await, "hello.txt").clone();
    let real = Checksum::Crc64Xz(crc64(HELLO));
    assert!(hello.checksum.is_some());
    assert_ne!(hello.checksum, Some(real.clone()), "listing publishes the wrong CRC");
    let opened = src.open(&hello, &open_req()).await.unwrap();
    assert_ne!(opened.entry.checksum, Some(real.clone()));
    let bytes = read_all(&*opened.reader, 0..11).await.unwrap();
    assert_eq!(
        &bytes[..],
        HELLO,
        "the bytes are right; only the published CRC is wrong"
    );
    assert_eq!(Checksum::Crc64Xz(crc64(&bytes)), real);
}

// ---------------------------------------------------------------------------------------------
// Versions

#[tokio::test(flavor = "multi_thread")]
async fn versions_view_lists_history_and_reads_each_version() {
    let env = start().await;
    let src = env.source_with(|c| c.versions = true).await;
    let root = src.root().await.unwrap();
    let top = list(&*src, &root).await;
    let view = find(&top, ".versions").clone();
    assert_eq!(view.kind, EntryKind::Dir);
    let mirrored = list(&*src, &view).await;
    let names: Vec<&str> = mirrored.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        ["big.bin", "docs", "empty.txt", "hello.txt", "pic.jpg"],
        "no symlinks"
    );
    assert!(mirrored.iter().all(|e| e.kind == EntryKind::Dir));
    let versions = list(&*src, find(&mirrored, "hello.txt")).await;
    let ids: Vec<&str> = versions.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3"]);
    for (id, want) in [("1", &b"hello v1"[..]), ("2", b"hello v2!"), ("3", HELLO)] {
        let v = find(&versions, id);
        assert_eq!(v.kind, EntryKind::File);
        assert_eq!(v.size, want.len() as u64);
        assert_eq!(v.checksum, Some(Checksum::Crc64Xz(crc64(want))));
        assert_eq!(xattr(v, "user.smh.history_id"), Some(id.as_bytes()));
        assert_eq!(read_file(&*src, v).await, want, "version {id}");
    }
    assert_eq!(xattr(find(&versions, "3"), "user.smh.latest"), Some(&b"true"[..]));
    let docs = list(&*src, find(&mirrored, "docs")).await;
    let sub = find(&docs, "sub");
    assert_eq!(sub.kind, EntryKind::Dir);
    let deep = list(&*src, &list(&*src, sub).await[0]).await;
    assert_eq!(deep.len(), 1);
    assert_eq!(read_file(&*src, &deep[0]).await, b"deep file");
    // A real `.versions` at the root is hidden by the view, not listed twice.
    std::fs::create_dir(env.root().join(".versions")).unwrap();
    let top = list(&*src, &root).await;
    assert_eq!(top.iter().filter(|e| e.name == ".versions").count(), 1);
    assert_eq!(find(&top, ".versions").remote, view.remote);
    // Without the option there is no view.
    let plain = env.source().await;
    let real = list(&*plain, &root).await;
    assert_ne!(find(&real, ".versions").remote, view.remote, "the real directory");
}

// ---------------------------------------------------------------------------------------------
// Faults

#[tokio::test(flavor = "multi_thread")]
async fn injected_server_errors_are_retried_on_api_and_cos() {
    let env = start().await;
    let src = env.source().await;
    let root = src.root().await.unwrap();
    let big = find(&list(&*src, &root).await, "big.bin").clone();
    env.harness.faults.set(FaultSpec {
        fail_next: 2,
        error_status: 503,
        ..FaultSpec::default()
    });
    let opened = src.open(&big, &open_req()).await.unwrap();
    env.harness.faults.set(FaultSpec {
        fail_next: 2,
        error_status: 500,
        path_contains: "/cos/".into(),
        ..FaultSpec::default()
    });
    let got = read_all(&*opened.reader, 0..opened.entry.size).await.unwrap();
    assert!(got[..] == big_bytes()[..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_cut_mid_stream_is_a_transient_error_and_the_range_reads_again() {
    let env = start().await;
    let src = env.source().await;
    let root = src.root().await.unwrap();
    let big = find(&list(&*src, &root).await, "big.bin").clone();
    let opened = src.open(&big, &open_req()).await.unwrap();
    env.harness.faults.set(FaultSpec {
        reset_after: Some(100_000),
        reset_count: 1,
        path_contains: "/cos/".into(),
        ..FaultSpec::default()
    });
    let r = 0..(1 << 20);
    let err = read_all(&*opened.reader, r.clone()).await.unwrap_err();
    assert!(err.is_transient(), "the cache resumes after this: {err}");
    let got = read_all(&*opened.reader, r.clone()).await.unwrap();
    assert!(got[..] == big_bytes()[..1 << 20]);
}

// ---------------------------------------------------------------------------------------------
// The emulator's API, checked raw (checklist §3.11)

#[tokio::test(flavor = "multi_thread")]
async fn emulator_token_endpoint_clamps_period_and_renews() {
    let env = start().await;
    let c = raw();
    let get = |q: Vec<(&'static str, String)>| {
        let c = c.clone();
        let url = format!("{}/api/v1/token", env.base());
        async move {
            let r = c.get(url).query(&q).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let base = || vec![("library_id", LIB.to_string()), ("library_secret", SECRET.to_string())];
    let (s, v) = get(base()).await;
    assert_eq!((s, v["expiresIn"].as_u64()), (200, Some(86_400)));
    let mut q = base();
    q.push(("period", "10".into()));
    assert_eq!(get(q).await.1["expiresIn"].as_u64(), Some(300));
    let mut q = base();
    q.push(("period", "999999999999".into()));
    assert_eq!(get(q).await.1["expiresIn"].as_u64(), Some(315_360_000));
    let (s, v) = get(vec![("library_id", LIB.into()), ("library_secret", "nope".into())]).await;
    assert_eq!(s, 403);
    assert!(v["code"].is_string() && v["requestId"].is_string());
    let post: Value = c
        .post(format!("{}/api/v1/token", env.base()))
        .query(&base())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tok = post["accessToken"].as_str().unwrap();
    let renew = c
        .post(format!("{}/api/v1/token/{LIB}/{tok}", env.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(renew.status(), 200);
    assert_eq!(renew.json::<Value>().await.unwrap()["accessToken"], tok);
    let r = c
        .get(format!("{}/api/v1/directory/{LIB}/-?access_token=wrong", env.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "InvalidAccessToken");
    env.ctl.expire_tokens();
    let r = c
        .post(format!("{}/api/v1/token/{LIB}/{tok}", env.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn emulator_lists_with_marker_page_order_and_filter() {
    let env = start().await;
    let names = |v: &Value| -> Vec<String> {
        v["contents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect()
    };
    // Root with and without the trailing slash; dirs first, then files by name.
    let (_, a) = raw_json(&env, &format!("/api/v1/directory/{LIB}/-?limit=100")).await;
    let (_, b) = raw_json(&env, &format!("/api/v1/directory/{LIB}/-/?limit=100")).await;
    assert_eq!(
        names(&a),
        ["docs", "big.bin", "empty.txt", "hello.txt", "link", "pic.jpg"]
    );
    assert_eq!(names(&a), names(&b));
    assert_eq!((a["fileCount"].as_u64(), a["subDirCount"].as_u64()), (Some(5), Some(1)));
    assert!(a.get("nextMarker").is_none());
    // marker/limit pages.
    let (_, p1) = raw_json(&env, &format!("/api/v1/directory/{LIB}/-?limit=4")).await;
    assert_eq!(names(&p1).len(), 4);
    let m = p1["nextMarker"].as_str().unwrap().to_string();
    let (_, p2) = raw_json(&env, &format!("/api/v1/directory/{LIB}/-?limit=4&marker={m}")).await;
    assert_eq!(names(&p2), ["link", "pic.jpg"]);
    assert!(p2.get("nextMarker").is_none());
    // page/page_size with totalNum.
    let (_, pg) = raw_json(&env, &format!("/api/v1/directory/{LIB}/-?page=2&page_size=5")).await;
    assert_eq!(names(&pg), ["pic.jpg"]);
    assert_eq!(pg["totalNum"].as_u64(), Some(6));
    let (s, e) = raw_json(&env, &format!("/api/v1/directory/{LIB}/-?page=1&limit=5")).await;
    assert_eq!(s, 400, "{e}");
    // filter and ordering (both spellings).
    let (_, d) = raw_json(&env, &format!("/api/v1/directory/{LIB}/-?limit=50&filter=onlyDir")).await;
    assert_eq!(names(&d), ["docs"]);
    let (_, f) = raw_json(&env, &format!("/api/v1/directory/{LIB}/-?limit=50&filter=onlyFile")).await;
    assert_eq!(names(&f).len(), 5);
    let (_, s1) = raw_json(
        &env,
        &format!("/api/v1/directory/{LIB}/-?limit=50&order_by=size&order_by_type=desc"),
    )
    .await;
    let (_, s2) = raw_json(
        &env,
        &format!("/api/v1/directory/{LIB}/-?limit=50&orderBy=size&orderByType=desc"),
    )
    .await;
    assert_eq!(names(&s1)[..2], ["docs".to_string(), "big.bin".to_string()]);
    assert_eq!(names(&s1), names(&s2));
    // Encoded slashes and encoded names.
    let (s, sub) = raw_json(&env, &format!("/api/v1/directory/{LIB}/-/docs%2Fsub?limit=10")).await;
    assert_eq!(s, 200);
    assert_eq!(names(&sub), ["deep.txt"]);
    let item = &sub["contents"][0];
    for k in [
        "crc64",
        "eTag",
        "contentType",
        "fileType",
        "creationTime",
        "modificationTime",
        "size",
    ] {
        assert!(item.get(k).is_some(), "{k} missing in {item}");
    }
    assert_eq!(item["crc64"], crc64(b"deep file").to_string());
    let (_, info) = raw_json(&env, &format!("/api/v1/directory/{LIB}/-/docs?info")).await;
    assert_eq!(info["type"], "dir");
    let (s, _) = raw_json(&env, &format!("/api/v1/directory/{LIB}/-/nope?limit=1")).await;
    assert_eq!(s, 404);
    let (s, _) = raw_json(&env, &format!("/api/v1/directory/{LIB}/-/.history?limit=1")).await;
    assert_ne!(s, 200, "the history store is not part of the tree");
}

#[tokio::test(flavor = "multi_thread")]
async fn emulator_head_info_and_download_redirect() {
    let env = start().await;
    let tok = raw_token(&env).await;
    let c = raw();
    let file_url = |p: &str| format!("{}/api/v1/file/{LIB}/-/{p}?access_token={tok}", env.base());
    let head = c.head(file_url("hello.txt")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let h = head.headers();
    assert_eq!(h["x-smh-size"], "11");
    assert_eq!(h["x-smh-crc64"], "5981764153023615706");
    assert_eq!(h["x-smh-type"], "file");
    assert_eq!(h["x-smh-content-type"], "text/plain");
    assert_eq!(h["x-smh-meta-owner"], "ann");
    assert!(h.contains_key("x-smh-etag") && h.contains_key("x-smh-creation-time"));
    let missing = c.head(file_url("nope.txt")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.bytes().await.unwrap().is_empty());
    // GET → 302 to the COS stub with the x-smh-* headers.
    let r = c.get(file_url("big.bin")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["x-smh-crc64"], crc64(&big_bytes()).to_string());
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    assert!(loc.contains("/cos/big.bin?") && loc.contains("q-signature="), "{loc}");
    let size = big_bytes().len();
    let ranged = |r: &'static str| c.get(&loc).header("range", r).send();
    let p = ranged("bytes=10-19").await.unwrap();
    assert_eq!(p.status(), 206);
    assert_eq!(p.headers()["content-range"], format!("bytes 10-19/{size}"));
    assert_eq!(p.headers()["x-cos-hash-crc64ecma"], crc64(&big_bytes()).to_string());
    assert!(p.headers()["etag"].to_str().unwrap().starts_with('"'));
    assert!(p.headers().contains_key("x-cos-request-id") && p.headers().contains_key("last-modified"));
    assert_eq!(&p.bytes().await.unwrap()[..], &big_bytes()[10..20]);
    let whole = ranged("bytes=0-").await.unwrap();
    assert_eq!(whole.status(), 206);
    assert_eq!(whole.bytes().await.unwrap().len(), size);
    let tail = ranged("bytes=-5").await.unwrap();
    assert_eq!(&tail.bytes().await.unwrap()[..], &big_bytes()[size - 5..]);
    let beyond = c
        .get(&loc)
        .header("range", format!("bytes={size}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), 416);
    assert!(beyond.text().await.unwrap().contains("<Code>InvalidRange</Code>"));
    let plain = c.get(&loc).send().await.unwrap();
    assert_eq!(plain.status(), 200);
    assert_eq!(plain.bytes().await.unwrap().len(), size);
    // ?info, pre_check, history_id.
    let info: Value = c
        .get(format!("{}&info", file_url("hello.txt")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(info["cosUrl"].is_string());
    assert_eq!(info["crc64"], "5981764153023615706");
    let pre: Value = c
        .get(format!("{}&info&pre_check", file_url("hello.txt")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(pre.get("cosUrl").is_none());
    let r = c
        .get(format!("{}&history_id=1", file_url("hello.txt")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let old = c.get(r.headers()["location"].to_str().unwrap()).send().await.unwrap();
    assert_eq!(&old.bytes().await.unwrap()[..], b"hello v1");
    let r = c
        .get(format!("{}&history_id=99", file_url("hello.txt")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn emulator_history_list_is_latest_first_and_paged() {
    let env = start().await;
    let path = format!("/api/v1/directory-history/{LIB}/-/history-list/hello.txt");
    let (s, all) = raw_json(&env, &path).await;
    assert_eq!(s, 200, "{all}");
    let ids: Vec<u64> = all["contents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [3, 2, 1]);
    assert_eq!(all["totalNum"].as_u64(), Some(3));
    assert_eq!(all["contents"][0]["isLatestVersion"], true);
    assert_eq!(all["contents"][2]["crc64"], crc64(b"hello v1").to_string());
    let (_, p1) = raw_json(&env, &format!("{path}?limit=2")).await;
    assert_eq!(p1["contents"].as_array().unwrap().len(), 2);
    let m = p1["nextMarker"].as_str().unwrap().to_string();
    let (_, p2) = raw_json(&env, &format!("{path}?limit=2&marker={m}")).await;
    assert_eq!(p2["contents"][0]["id"].as_u64(), Some(1));
    assert!(p2.get("nextMarker").is_none());
    let (s, _) = raw_json(&env, &format!("/api/v1/directory-history/{LIB}/-/history-list/nope")).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn emulator_public_read_space_needs_no_token() {
    let env = start_with(SmhEmuOptions {
        public_read: true,
        ..SmhEmuOptions::default()
    })
    .await;
    let r = raw()
        .get(format!("{}/api/v1/directory/{LIB}/-?limit=10", env.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn emulator_switches_work_over_http() {
    let env = start().await;
    let src = env.source().await;
    let root = src.root().await.unwrap();
    let r = raw()
        .post(format!("{}/__fetchfs/smh", env.base()))
        .json(&serde_json::json!({"expire_tokens": true, "wrong_crc64": ["hello.txt"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let hello = find(&list(&*src, &root).await, "hello.txt").clone();
    assert_ne!(hello.checksum, Some(Checksum::Crc64Xz(crc64(HELLO))));
    assert_eq!(env.ctl.tokens_issued(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_serves_a_mountable_source() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cfg) = fetchfs::emulate::smh::demo(dir.path()).await.unwrap();
    let src = fetchfs::provider::build(&cfg, &ctx()).await.unwrap();
    let root = src.root().await.unwrap();
    let entries = list(&*src, &root).await;
    let hello = find(&entries, "hello.txt");
    assert!(
        read_file(&*src, hello)
            .await
            .starts_with(b"Hello from the SMH emulator")
    );
    assert!(entries.iter().any(|e| e.name == ".versions"));
    drop(server);
}

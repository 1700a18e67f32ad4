//! The B2 source against the in-process B2 emulator (providers.md §1): listing, reads of every
//! Range row, the three authorization shapes, each error code, token renewal, rate limits
//! and faults, and the emulator checklist (§1.12) through raw HTTP.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fetchfs::emulate::b2::{B2Control, B2EmuOptions, EmuKey, UploadOpts};
use fetchfs::emulate::{FaultSpec, Server, serve};
use fetchfs::error::SourceError;
use fetchfs::http::HttpOptions;
use fetchfs::provider::BuildContext;
use fetchfs::provider::b2::{B2Config, B2Source};
use fetchfs::source::{Checksum, Entry, EntryKind, OpenRequest, Opened, Source, read_all};
use sha1::Digest;

const KEY_ID: &str = fetchfs::emulate::b2::DEFAULT_KEY_ID;
const KEY: &str = fetchfs::emulate::b2::DEFAULT_APPLICATION_KEY;

struct Env {
    server: Server,
    control: B2Control,
    _dir: tempfile::TempDir,
}

impl Env {
    fn stats(&self, what: &str) -> u64 {
        self.server.harness.stats.count(|k| k.contains(what))
    }
    fn faults(&self, spec: FaultSpec) {
        self.server.harness.faults.set(spec);
    }
    fn cfg(&self, bucket: Option<&str>) -> B2Config {
        B2Config {
            name: "b2".into(),
            endpoint: Some(self.server.base_url()),
            key_id: Some(KEY_ID.into()),
            key_id_file: None,
            application_key: Some(KEY.into()),
            application_key_file: None,
            bucket: bucket.map(str::to_string),
            prefix: None,
            sse_c_key_file: None,
            versions: false,
        }
    }
    fn source(&self, bucket: Option<&str>) -> Arc<dyn Source> {
        source_of(&self.cfg(bucket))
    }
    /// An authorization answer (v4) for raw requests.
    async fn token(&self) -> serde_json::Value {
        json(Raw::new(self, None).authorize("v4", KEY_ID, KEY).await).await
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
        base_dir: ".".into(),
        block_size: 1 << 20,
        disk_cache: false,
    }
}

fn source_of(cfg: &B2Config) -> Arc<dyn Source> {
    Arc::new(B2Source::new(cfg, &ctx()).unwrap())
}

async fn start_with(opts: B2EmuOptions, setup: impl FnOnce(&B2Control)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let emu = fetchfs::emulate::b2::router(dir.path(), opts);
    setup(&emu.control);
    let server = serve(emu.router, 0, emu.harness).await.unwrap();
    Env {
        server,
        control: emu.control,
        _dir: dir,
    }
}

/// Deterministic, non-repeating bytes.
fn pattern(n: usize) -> Vec<u8> {
    (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn sha1(b: &[u8]) -> Checksum {
    Checksum::Sha1(sha1::Sha1::digest(b).into())
}

async fn standard() -> Env {
    start_with(B2EmuOptions::default(), |c| {
        c.upload("photos", "a.txt", &b"alpha"[..]);
        c.upload("photos", "dir/b.txt", &b"bravo!"[..]);
        c.upload("photos", "dir/sub/c.bin", pattern(100_000));
        c.upload("photos", "empty", &b""[..]);
        c.upload("music", "song.mp3", &b"la la"[..]);
    })
    .await
}

/// The entry at `path` (`a/b/c`), walking listings from the root.
async fn find(src: &dyn Source, path: &str) -> Result<Entry, SourceError> {
    let mut cur = src.root().await?;
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        let list = src.list(&cur).await?;
        cur = list
            .into_iter()
            .find(|e| e.name == seg)
            .ok_or_else(|| SourceError::NotFound(format!("{seg} in {path}")))?;
    }
    Ok(cur)
}

fn names(list: &[Entry]) -> Vec<String> {
    let mut n: Vec<String> = list.iter().map(|e| e.name.clone()).collect();
    n.sort();
    n
}

fn req() -> OpenRequest {
    OpenRequest {
        block_size: 1 << 20,
        revalidate: false,
    }
}

async fn open(src: &dyn Source, path: &str) -> Opened {
    let e = find(src, path).await.unwrap();
    src.open(&e, &req()).await.unwrap()
}

fn xattr(e: &Entry, k: &str) -> Option<String> {
    e.xattrs
        .iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
}

/// Raw HTTP to the emulator, for checklist items the source never exercises.
struct Raw {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Raw {
    fn new(env: &Env, token: Option<&str>) -> Raw {
        Raw {
            base: env.server.base_url(),
            token: token.map(str::to_string),
            http: reqwest::Client::new(),
        }
    }
    fn with_token(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.header("authorization", t),
            None => rb,
        }
    }
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> reqwest::Response {
        self.get_with(path, query, &[]).await
    }
    async fn get_with(&self, path: &str, query: &[(&str, &str)], headers: &[(&str, &str)]) -> reqwest::Response {
        let mut rb = self.http.get(format!("{}{path}", self.base)).query(query);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        self.with_token(rb).send().await.unwrap()
    }
    async fn head(&self, path: &str, query: &[(&str, &str)]) -> reqwest::Response {
        let rb = self.http.head(format!("{}{path}", self.base)).query(query);
        self.with_token(rb).send().await.unwrap()
    }
    async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        let rb = self.http.post(format!("{}{path}", self.base)).json(&body);
        self.with_token(rb).send().await.unwrap()
    }
    async fn post_raw(&self, path: &str, body: &'static str) -> reqwest::Response {
        let rb = self.http.post(format!("{}{path}", self.base)).body(body);
        self.with_token(rb).send().await.unwrap()
    }
    async fn authorize(&self, version: &str, key_id: &str, key: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/b2api/{version}/b2_authorize_account", self.base))
            .basic_auth(key_id, Some(key))
            .send()
            .await
            .unwrap()
    }
}

async fn json(r: reqwest::Response) -> serde_json::Value {
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn buckets_folders_and_files_are_listed_with_b2_metadata() {
    let env = standard().await;
    let src = env.source(None);
    let root = src.root().await.unwrap();
    assert_eq!(names(&src.list(&root).await.unwrap()), ["music", "photos"]);
    let photos = find(&*src, "photos").await.unwrap();
    let list = src.list(&photos).await.unwrap();
    assert_eq!(names(&list), ["a.txt", "dir", "empty"]);
    let dir = list.iter().find(|e| e.name == "dir").unwrap();
    assert_eq!(dir.kind, EntryKind::Dir);
    let a = list.iter().find(|e| e.name == "a.txt").unwrap();
    assert_eq!((a.kind, a.size), (EntryKind::File, 5));
    assert_eq!(a.checksum, Some(sha1(b"alpha")));
    assert_eq!(a.validator.as_deref(), Some(a.remote.as_str()), "validator = fileId");
    assert_eq!(xattr(a, "user.b2.file_id").as_deref(), Some(a.remote.as_str()));
    assert_eq!(xattr(a, "user.b2.content_type").as_deref(), Some("text/plain"));
    assert_eq!(
        xattr(a, "user.b2.content_sha1"),
        Some(hex::encode(sha1::Sha1::digest(b"alpha")))
    );
    assert!(xattr(a, "user.b2.upload_timestamp").is_some());
    assert_eq!(names(&src.list(dir).await.unwrap()), ["b.txt", "sub"]);
    let c = find(&*src, "photos/dir/sub/c.bin").await.unwrap();
    assert_eq!(c.size, 100_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_bucket_and_prefix_sit_at_the_root() {
    let env = standard().await;
    let src = env.source(Some("photos"));
    assert_eq!(
        names(&src.list(&src.root().await.unwrap()).await.unwrap()),
        ["a.txt", "dir", "empty"]
    );
    let mut cfg = env.cfg(Some("photos"));
    cfg.prefix = Some("/dir/".into());
    let src = source_of(&cfg);
    assert_eq!(
        names(&src.list(&src.root().await.unwrap()).await.unwrap()),
        ["b.txt", "sub"]
    );
    let o = open(&*src, "sub/c.bin").await;
    assert_eq!(
        &read_all(&*o.reader, 10..20).await.unwrap()[..],
        &pattern(100_000)[10..20]
    );
    let missing = source_of(&env.cfg(Some("nope")));
    assert!(matches!(missing.root().await, Err(SourceError::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_range_row_reads_exactly_the_requested_bytes() {
    let env = standard().await;
    let src = env.source(Some("photos"));
    let data = pattern(100_000);
    let o = open(&*src, "dir/sub/c.bin").await;
    // Part of the object (206), the tail, one byte, and the whole object (sent without Range).
    for r in [
        10..20u64,
        99_000..100_000,
        0..1,
        99_999..100_000,
        0..100_000,
        1..100_000,
    ] {
        let got = read_all(&*o.reader, r.clone()).await.unwrap();
        assert_eq!(&got[..], &data[r.start as usize..r.end as usize], "{r:?}");
    }
    // A 0-byte file: nothing to read and no request at all (B2 would answer 416 to any range).
    let before = env.stats("b2_download_file_by_id");
    let e = open(&*src, "empty").await;
    assert_eq!(e.entry.size, 0);
    assert!(read_all(&*e.reader, 0..0).await.unwrap().is_empty());
    assert_eq!(env.stats("b2_download_file_by_id"), before);
    // A range past the real end (the listing was stale): 416 → Changed.
    let mut stale = find(&*src, "a.txt").await.unwrap();
    stale.size = 100;
    let s = src.open(&stale, &req()).await.unwrap();
    assert!(matches!(
        read_all(&*s.reader, 50..60).await,
        Err(SourceError::Changed(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn emulator_answers_the_range_table_of_section_1_6() {
    let env = standard().await;
    let tok = env.token().await;
    let api = Raw::new(&env, tok["authorizationToken"].as_str());
    let bucket_id = env.control.bucket_id("photos");
    let list = json(
        api.get(
            "/b2api/v2/b2_list_file_names",
            &[("bucketId", bucket_id.as_str()), ("prefix", "")],
        )
        .await,
    )
    .await;
    let id_of = |name: &str| {
        list["files"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["fileName"] == name)
            .unwrap()["fileId"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (a, empty) = (id_of("a.txt"), id_of("empty"));
    let get = |id: String, range: Option<&'static str>| {
        let api = &api;
        async move {
            let headers: Vec<(&str, &str)> = range.map(|r| ("range", r)).into_iter().collect();
            let r = api
                .get_with("/b2api/v3/b2_download_file_by_id", &[("fileId", id.as_str())], &headers)
                .await;
            let cr = r
                .headers()
                .get("content-range")
                .map(|v| v.to_str().unwrap().to_string());
            let status = r.status().as_u16();
            (status, cr, r.bytes().await.unwrap().to_vec())
        }
    };
    assert_eq!(get(a.clone(), None).await, (200, None, b"alpha".to_vec()));
    assert_eq!(
        get(a.clone(), Some("bytes=1-2")).await,
        (206, Some("bytes 1-2/5".into()), b"lp".to_vec())
    );
    assert_eq!(get(a.clone(), Some("bytes=0-")).await, (200, None, b"alpha".to_vec()));
    assert_eq!(get(a.clone(), Some("bytes=0-99")).await, (200, None, b"alpha".to_vec()));
    assert_eq!(get(a.clone(), Some("bytes=x-y")).await, (200, None, b"alpha".to_vec()));
    assert_eq!(
        get(a.clone(), Some("bytes=3-99")).await,
        (206, Some("bytes 3-4/5".into()), b"ha".to_vec())
    );
    let (status, _, body) = get(a.clone(), Some("bytes=5-9")).await;
    assert_eq!(status, 416);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], "range_not_satisfiable");
    assert_eq!(v["status"], 416);
    assert_eq!(get(empty.clone(), Some("bytes=0-0")).await.0, 416);
    assert_eq!(get(empty, None).await, (200, None, vec![]));
}

#[tokio::test(flavor = "multi_thread")]
async fn all_authorization_shapes_work() {
    for shape in [1u8, 2, 3, 4] {
        let env = start_with(
            B2EmuOptions {
                api_shape: Some(shape),
                ..B2EmuOptions::default()
            },
            |c| {
                c.upload("bkt", "d/x.txt", &b"shape"[..]);
            },
        )
        .await;
        let src = env.source(None);
        let e = find(&*src, "bkt/d/x.txt").await.unwrap();
        assert_eq!(e.size, 5, "v{shape}: size from contentLength or v1 size");
        let o = src.open(&e, &req()).await.unwrap();
        assert_eq!(&read_all(&*o.reader, 1..4).await.unwrap()[..], b"hap", "v{shape}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn restricted_keys_list_their_allowed_buckets_in_every_shape() {
    for shape in [1u8, 3, 4] {
        let mut opts = B2EmuOptions {
            api_shape: Some(shape),
            ..B2EmuOptions::default()
        };
        opts.keys
            .push(EmuKey::restricted("one-id", "one-key", &["photos"], None));
        let env = start_with(opts, |c| {
            c.upload("photos", "p.txt", &b"p"[..]);
            c.upload("secret", "s.txt", &b"s"[..]);
        })
        .await;
        let mut cfg = env.cfg(None);
        cfg.key_id = Some("one-id".into());
        cfg.application_key = Some("one-key".into());
        let src = source_of(&cfg);
        let root = src.root().await.unwrap();
        assert_eq!(names(&src.list(&root).await.unwrap()), ["photos"], "v{shape}");
        assert_eq!(env.stats("b2_list_buckets"), 0, "taken from allowed, not listed");
        cfg.bucket = Some("secret".into());
        let other = source_of(&cfg);
        assert!(matches!(other.root().await, Err(SourceError::PermissionDenied(_))));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_credentials_and_capabilities_are_permission_denied() {
    let mut opts = B2EmuOptions::default();
    let mut no_list = EmuKey::master("nolist-id", "nolist-key");
    no_list.capabilities.retain(|c| c != "listFiles");
    opts.keys.push(no_list);
    let mut prefixed = EmuKey::master("pre-id", "pre-key");
    prefixed.name_prefix = Some("dir/".into());
    opts.keys.push(prefixed);
    let env = start_with(opts, |c| {
        c.upload("photos", "dir/a", &b"a"[..]);
    })
    .await;
    let mut cfg = env.cfg(Some("photos"));
    cfg.application_key = Some("wrong".into());
    let e = source_of(&cfg).root().await.unwrap_err();
    assert!(
        matches!(&e, SourceError::PermissionDenied(m) if m.contains("unauthorized")),
        "{e}"
    );
    assert!(!e.to_string().contains("wrong"), "no secret in messages: {e}");
    assert_eq!(env.stats("b2_authorize_account"), 1, "a refused key is not retried");

    cfg.key_id = Some("nolist-id".into());
    cfg.application_key = Some("nolist-key".into());
    let src = source_of(&cfg);
    let root = src.root().await.unwrap();
    let e = src.list(&root).await.unwrap_err();
    assert!(
        matches!(&e, SourceError::PermissionDenied(m) if m.contains("listFiles")),
        "{e}"
    );

    cfg.key_id = Some("pre-id".into());
    cfg.application_key = Some("pre-key".into());
    let src = source_of(&cfg);
    let root = src.root().await.unwrap();
    assert!(matches!(src.list(&root).await, Err(SourceError::PermissionDenied(_))));
    cfg.prefix = Some("dir".into());
    let src = source_of(&cfg);
    let root = src.root().await.unwrap();
    assert_eq!(names(&src.list(&root).await.unwrap()), ["a"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_and_unknown_tokens_are_renewed_once_and_the_call_succeeds() {
    let env = standard().await;
    let src = env.source(Some("photos"));
    let o = open(&*src, "a.txt").await;
    assert_eq!(env.stats("b2_authorize_account"), 1);
    env.control.expire_tokens();
    assert_eq!(&read_all(&*o.reader, 0..5).await.unwrap()[..], b"alpha");
    assert_eq!(env.stats("b2_authorize_account"), 2);
    env.control.forget_tokens();
    let root = src.root().await.unwrap();
    assert_eq!(src.list(&root).await.unwrap().len(), 3);
    assert_eq!(env.stats("b2_authorize_account"), 3);
    // A HEAD (revalidating open) gets a body-less 401: renewed once as well.
    env.control.expire_tokens();
    let a = find(&*src, "a.txt").await.unwrap();
    let n = env.stats("b2_authorize_account");
    env.control.expire_tokens();
    let fresh = src
        .open(
            &a,
            &OpenRequest {
                block_size: 1 << 20,
                revalidate: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(fresh.entry.size, 5);
    assert_eq!(fresh.entry.checksum, Some(sha1(b"alpha")));
    assert_eq!(env.stats("b2_authorize_account"), n + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_that_keeps_failing_is_not_renewed_in_a_loop() {
    let env = standard().await;
    let src = env.source(Some("photos"));
    src.root().await.unwrap();
    env.control.update(|o| o.token_max_requests = Some(0));
    let root = src.root().await.unwrap();
    let e = src.list(&root).await.unwrap_err();
    assert!(
        matches!(&e, SourceError::PermissionDenied(m) if m.contains("expired_auth_token")),
        "{e}"
    );
    assert_eq!(env.stats("b2_authorize_account"), 2, "one renewal, then the error");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_expiring_mid_read_of_a_large_file_keeps_reads_working() {
    let data = pattern(8 << 20);
    let env = start_with(B2EmuOptions::default(), |c| {
        c.upload("big", "large.bin", data.clone());
    })
    .await;
    let src = env.source(Some("big"));
    let o = open(&*src, "large.bin").await;
    // Every token is good for 5 requests; the read below needs 32.
    env.control.update(|o| o.token_max_requests = Some(5));
    let mut out = Vec::with_capacity(data.len());
    let step = 256 << 10;
    for start in (0..data.len()).step_by(step) {
        let r = start as u64..(start + step).min(data.len()) as u64;
        out.extend_from_slice(&read_all(&*o.reader, r).await.unwrap());
    }
    assert!(out == data, "bytes differ");
    assert!(
        env.stats("b2_authorize_account") >= 7,
        "tokens were renewed along the way"
    );
    // And by time: a 300 ms token lapses between two reads.
    env.control.update(|o| {
        o.token_max_requests = None;
        o.token_ttl = Duration::from_millis(300);
    });
    let before = env.stats("b2_authorize_account");
    read_all(&*o.reader, 0..10).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(&read_all(&*o.reader, 100..200).await.unwrap()[..], &data[100..200]);
    assert!(env.stats("b2_authorize_account") > before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storm_of_429s_and_503s_is_ridden_out() {
    let data = pattern(1 << 20);
    let env = start_with(B2EmuOptions::default(), |c| {
        c.upload("b", "f.bin", data.clone());
        for i in 0..30 {
            c.upload("b", &format!("many/{i}"), vec![i as u8; 3]);
        }
    })
    .await;
    let src = env.source(Some("b"));
    let o = open(&*src, "f.bin").await;
    for status in [429u16, 503, 500] {
        env.faults(FaultSpec {
            fail_every: 2,
            error_status: status,
            ..FaultSpec::default()
        });
        let mut out = Vec::new();
        for start in (0..data.len()).step_by(64 << 10) {
            out.extend_from_slice(
                &read_all(&*o.reader, start as u64..(start + (64 << 10)) as u64)
                    .await
                    .unwrap(),
            );
        }
        assert!(out == data, "{status}: bytes differ");
        let many = find(&*src, "many").await.unwrap();
        assert_eq!(src.list(&many).await.unwrap().len(), 30, "{status}");
    }
    env.faults(FaultSpec::default());
    // Retry-After is honoured (the shared client floors it at 1 s).
    env.faults(FaultSpec {
        fail_next: 1,
        error_status: 429,
        retry_after: Some(1),
        ..FaultSpec::default()
    });
    let t = Instant::now();
    assert_eq!(&read_all(&*o.reader, 0..4).await.unwrap()[..], &data[..4]);
    assert!(t.elapsed() >= Duration::from_millis(900), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn caps_are_quota_errors_and_are_not_retried() {
    let env = standard().await;
    let src = env.source(Some("photos"));
    let o = open(&*src, "a.txt").await;
    env.control
        .update(|o| o.cap_exceeded = Some("download_cap_exceeded".into()));
    let before = env.stats("b2_download_file_by_id");
    let e = read_all(&*o.reader, 0..5).await.unwrap_err();
    assert!(
        matches!(&e, SourceError::QuotaExceeded(m) if m.contains("download_cap_exceeded")),
        "{e}"
    );
    assert_eq!(env.stats("b2_download_file_by_id"), before + 1);
    env.control
        .update(|o| o.cap_exceeded = Some("transaction_cap_exceeded".into()));
    let root = src.root().await.unwrap();
    let e = src.list(&root).await.unwrap_err();
    assert!(
        matches!(&e, SourceError::QuotaExceeded(m) if m.contains("transaction_cap_exceeded")),
        "{e}"
    );
    assert_eq!(e.errno(), libc::EIO);
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_files_and_buckets_are_not_found() {
    let env = standard().await;
    let src = env.source(Some("photos"));
    let mut a = find(&*src, "a.txt").await.unwrap();
    a.remote = "4_zdeadbeef_f0000".into();
    let o = src.open(&a, &req()).await.unwrap();
    assert!(matches!(
        read_all(&*o.reader, 0..2).await,
        Err(SourceError::NotFound(_))
    ));
    let again = OpenRequest {
        block_size: 1 << 20,
        revalidate: true,
    };
    assert!(matches!(src.open(&a, &again).await, Err(SourceError::NotFound(_))));
    let mut dir = src.root().await.unwrap();
    dir.remote = "b2:dir\tnot-a-bucket\t".into();
    assert!(matches!(src.list(&dir).await, Err(SourceError::NotFound(_))));
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_c_files_need_the_right_key() {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let wrong = base64::engine::general_purpose::STANDARD.encode([8u8; 32]);
    let env = start_with(B2EmuOptions::default(), |c| {
        c.upload_with(
            "enc",
            "secret.txt",
            &b"classified"[..],
            UploadOpts {
                sse_c_key: Some(key.clone()),
                ..UploadOpts::default()
            },
        );
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k");
    let no_key = env.source(Some("enc"));
    let e = find(&*no_key, "secret.txt").await.unwrap();
    assert_eq!(xattr(&e, "user.b2.server_side_encryption").as_deref(), Some("SSE-C"));
    assert!(matches!(
        no_key.open(&e, &req()).await,
        Err(SourceError::PermissionDenied(_))
    ));
    for (k, ok) in [(&wrong, false), (&key, true)] {
        std::fs::write(&path, format!("{k}\n")).unwrap();
        let mut cfg = env.cfg(Some("enc"));
        cfg.sse_c_key_file = Some(path.clone());
        let src = source_of(&cfg);
        let o = open(&*src, "secret.txt").await;
        let r = read_all(&*o.reader, 0..10).await;
        if ok {
            assert_eq!(&r.unwrap()[..], b"classified");
        } else {
            let e = r.unwrap_err();
            assert!(
                matches!(&e, SourceError::PermissionDenied(m) if m.contains("access_denied")),
                "{e}"
            );
            assert!(!e.to_string().contains(k.as_str()), "no key in messages");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_cut_mid_stream_fails_and_the_missing_bytes_can_be_asked_again() {
    let data = pattern(2 << 20);
    let env = start_with(B2EmuOptions::default(), |c| {
        c.upload("b", "f.bin", data.clone());
    })
    .await;
    let src = env.source(Some("b"));
    let o = open(&*src, "f.bin").await;
    env.faults(FaultSpec {
        reset_after: Some(300_000),
        reset_count: 1,
        ..FaultSpec::default()
    });
    let e = read_all(&*o.reader, 0..data.len() as u64).await.unwrap_err();
    assert!(matches!(e, SourceError::Connect(_) | SourceError::Protocol(_)), "{e}");
    assert!(read_all(&*o.reader, 300_000..data.len() as u64).await.unwrap() == data[300_000..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn checksums_follow_content_sha1_large_file_sha1_and_unverified() {
    let small = b"small file".to_vec();
    let big = pattern(300_000);
    let env = start_with(
        B2EmuOptions {
            large_file_threshold: Some(100_000),
            ..B2EmuOptions::default()
        },
        |c| {
            c.upload("b", "small", small.clone());
            c.upload("b", "big", big.clone());
        },
    )
    .await;
    let src = env.source(Some("b"));
    let get = |name: &'static str| {
        let src = src.clone();
        async move { find(&*src, name).await.unwrap() }
    };
    assert_eq!(get("small").await.checksum, Some(sha1(&small)));
    assert_eq!(get("big").await.checksum, None, "contentSha1 none, no large_file_sha1");
    assert_eq!(
        xattr(&get("big").await, "user.b2.content_sha1").as_deref(),
        Some("none")
    );
    env.control.update(|o| o.large_file_sha1 = true);
    assert_eq!(get("big").await.checksum, Some(sha1(&big)));
    env.control.update(|o| o.unverified_sha1 = true);
    assert_eq!(get("big").await.checksum, Some(sha1(&big)));
    assert_eq!(get("small").await.checksum, Some(sha1(&small)));
    env.control.update(|o| o.wrong_sha1 = true);
    let wrong = get("small").await.checksum.unwrap();
    assert_ne!(
        wrong,
        sha1(&small),
        "the emulator can lie so the core's check is exercised"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hidden_names_unfinished_large_files_and_collisions() {
    let env = start_with(B2EmuOptions::default(), |c| {
        c.upload("b", "gone.txt", &b"old"[..]);
        c.hide("b", "gone.txt");
        c.start_large_file("b", "unfinished.bin");
        c.upload("b", "a", &b"file a"[..]);
        c.upload("b", "a/inner", &b"inner"[..]);
        c.upload("b", "only-hidden/x", &b"x"[..]);
        c.hide("b", "only-hidden/x");
    })
    .await;
    let src = env.source(Some("b"));
    let root = src.root().await.unwrap();
    let list = src.list(&root).await.unwrap();
    assert_eq!(names(&list), ["a", "a~file"]);
    let a = list.iter().find(|e| e.name == "a").unwrap();
    assert_eq!(a.kind, EntryKind::Dir);
    let f = list.iter().find(|e| e.name == "a~file").unwrap();
    let o = src.open(f, &req()).await.unwrap();
    assert_eq!(&read_all(&*o.reader, 0..6).await.unwrap()[..], b"file a");
    assert_eq!(names(&src.list(a).await.unwrap()), ["inner"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_versions_view_reads_old_versions_and_hidden_names() {
    let env = start_with(B2EmuOptions::default(), |c| {
        c.upload_with(
            "b",
            "d/f.txt",
            &b"one"[..],
            UploadOpts {
                upload_ts: Some(1_000_000),
                ..UploadOpts::default()
            },
        );
        c.upload_with(
            "b",
            "d/f.txt",
            &b"two!"[..],
            UploadOpts {
                upload_ts: Some(2_000_000),
                ..UploadOpts::default()
            },
        );
        c.upload("b", "d/h.txt", &b"hidden"[..]);
        c.hide("b", "d/h.txt");
        c.upload("b", "d/f.txt.bak", &b"bak"[..]);
    })
    .await;
    let mut cfg = env.cfg(Some("b"));
    cfg.versions = true;
    let src = source_of(&cfg);
    let d = find(&*src, "d").await.unwrap();
    assert_eq!(names(&src.list(&d).await.unwrap()), [".versions", "f.txt", "f.txt.bak"]);
    let v = find(&*src, "d/.versions").await.unwrap();
    assert_eq!(names(&src.list(&v).await.unwrap()), ["f.txt", "f.txt.bak", "h.txt"]);
    let fv = find(&*src, "d/.versions/f.txt").await.unwrap();
    let versions = src.list(&fv).await.unwrap();
    assert_eq!(versions.len(), 2);
    let mut by_name: BTreeMap<String, Entry> = versions.into_iter().map(|e| (e.name.clone(), e)).collect();
    let (oldest, _) = by_name.pop_first().unwrap();
    assert!(oldest.starts_with("1970-01-01T00:16:40.000Z~"), "{oldest}");
    let old = find(&*src, &format!("d/.versions/f.txt/{oldest}")).await.unwrap();
    let o = src.open(&old, &req()).await.unwrap();
    assert_eq!(&read_all(&*o.reader, 0..3).await.unwrap()[..], b"one");
    let h = find(&*src, "d/.versions/h.txt").await.unwrap();
    let hv = src.list(&h).await.unwrap();
    assert_eq!(hv.len(), 1, "the hide marker is not a version to read");
    let o = src.open(&hv[0], &req()).await.unwrap();
    assert_eq!(&read_all(&*o.reader, 0..6).await.unwrap()[..], b"hidden");
}

#[tokio::test(flavor = "multi_thread")]
async fn unusual_names_and_info_values_survive_percent_encoding() {
    let mut info = BTreeMap::new();
    info.insert("author".to_string(), "Jürgen + Zoë".to_string());
    info.insert("src_last_modified_millis".to_string(), "1500000000000".to_string());
    let env = start_with(B2EmuOptions::default(), |c| {
        c.upload_with(
            "b",
            "dír/a b+c%20d.txt",
            &b"odd"[..],
            UploadOpts {
                info: info.clone(),
                ..UploadOpts::default()
            },
        );
    })
    .await;
    let src = env.source(Some("b"));
    let e = find(&*src, "dír/a b+c%20d.txt").await.unwrap();
    assert_eq!(xattr(&e, "user.b2.info.author").as_deref(), Some("Jürgen + Zoë"));
    assert_eq!(
        e.mtime,
        std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(1_500_000_000_000)
    );
    let fresh = src
        .open(
            &e,
            &OpenRequest {
                block_size: 1 << 20,
                revalidate: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        xattr(&fresh.entry, "user.b2.info.author").as_deref(),
        Some("Jürgen + Zoë")
    );
    assert_eq!(fresh.entry.mtime, e.mtime);
    assert_eq!(&read_all(&*fresh.reader, 0..3).await.unwrap()[..], b"odd");
    // By name, the path is %XX-encoded.
    let api = Raw::new(&env, env.token().await["authorizationToken"].as_str());
    let r = api.get("/file/b/d%C3%ADr/a%20b%2Bc%2520d.txt", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-bz-file-name"].to_str().unwrap(),
        "d%C3%ADr/a+b%2Bc%2520d.txt"
    );
    assert_eq!(
        r.headers()["x-bz-info-author"].to_str().unwrap(),
        "J%C3%BCrgen+%2B+Zo%C3%AB"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_thousand_names_across_nested_prefixes_are_all_listed() {
    let env = start_with(B2EmuOptions::default(), |c| {
        // 5,000 names in one directory (5 pages of 1000) and 15,000 nested two levels deep.
        for i in 0..5_000 {
            c.upload("big", &format!("flat/f{i:05}"), &b""[..]);
        }
        for a in 0..15 {
            for b in 0..10 {
                for f in 0..100 {
                    c.upload("big", &format!("nested/a{a:02}/b{b}/f{f:03}.txt"), &b"x"[..]);
                }
            }
        }
    })
    .await;
    let src = env.source(Some("big"));
    let t = Instant::now();
    let mut files = 0usize;
    let mut dirs = 0usize;
    let mut stack = vec![src.root().await.unwrap()];
    while let Some(d) = stack.pop() {
        for e in src.list(&d).await.unwrap() {
            match e.kind {
                EntryKind::Dir => {
                    dirs += 1;
                    stack.push(e)
                }
                _ => files += 1,
            }
        }
    }
    let took = t.elapsed();
    eprintln!(
        "recursive listing of 20,000 names: {took:?} ({} list calls)",
        env.stats("b2_list_file_names")
    );
    assert_eq!(files, 20_000);
    assert_eq!(dirs, 2 + 15 + 150);
    assert!(env.stats("b2_list_file_names") >= 5 + 167, "every page was fetched");
}

#[tokio::test(flavor = "multi_thread")]
async fn emulator_serves_the_rest_of_the_checklist() {
    let mut opts = B2EmuOptions {
        public_buckets: vec!["pub".into()],
        ..B2EmuOptions::default()
    };
    opts.keys.push(EmuKey::restricted("r-id", "r-key", &["priv"], None));
    let env = start_with(opts, |c| {
        c.upload("pub", "open.txt", &b"public"[..]);
        let mut info = BTreeMap::new();
        info.insert("b2-content-disposition".into(), "attachment".into());
        c.upload_with(
            "priv",
            "docs/x.txt",
            &b"private"[..],
            UploadOpts {
                info,
                ..UploadOpts::default()
            },
        );
        c.upload("priv", "docs/y.txt", &b"why"[..]);
        c.upload("priv", "other/z.txt", &b"zed"[..]);
        c.upload("priv", "docs/x.txt", &b"private v2"[..]);
    })
    .await;
    let auth = env.token().await;
    let t = auth["authorizationToken"].as_str().unwrap().to_string();
    assert!(auth["apiInfo"]["storageApi"]["allowed"]["buckets"].is_null());
    let priv_id = env.control.bucket_id("priv");
    let anon = Raw::new(&env, None);
    let api = Raw::new(&env, Some(&t));

    // Public bucket: no token needed; private: 401.
    assert_eq!(anon.get("/file/pub/open.txt", &[]).await.status(), 200);
    assert_eq!(anon.get("/file/priv/docs/y.txt", &[]).await.status(), 401);
    // ?Authorization= on by-name, with a download authorization scoped to docs/.
    let da = json(
        api.post(
            "/b2api/v4/b2_get_download_authorization",
            serde_json::json!({"bucketId": priv_id, "fileNamePrefix": "docs/", "validDurationInSeconds": 60}),
        )
        .await,
    )
    .await;
    let dt = da["authorizationToken"].as_str().unwrap();
    let r = anon.get("/file/priv/docs/y.txt", &[("Authorization", dt)]).await;
    assert_eq!(r.text().await.unwrap(), "why");
    let r = anon.get("/file/priv/other/z.txt", &[("Authorization", dt)]).await;
    assert_eq!(r.status(), 401);
    // Response-header overrides and b2-* info keys as standard headers.
    let r = api
        .get(
            "/file/priv/docs/x.txt",
            &[("b2ContentType", "text/x-test"), ("b2CacheControl", "max-age=5")],
        )
        .await;
    assert_eq!(r.headers()["content-type"], "text/x-test");
    assert_eq!(r.headers()["cache-control"], "max-age=5");
    assert!(
        r.headers().get("content-disposition").is_none(),
        "only the old version had it"
    );
    assert_eq!(r.text().await.unwrap(), "private v2");
    // POST with a JSON body; list_file_versions pages with nextFileId.
    let page = json(
        api.post(
            "/b2api/v2/b2_list_file_versions",
            serde_json::json!({"bucketId": priv_id, "maxFileCount": 1}),
        )
        .await,
    )
    .await;
    assert_eq!(page["files"][0]["fileName"], "docs/x.txt");
    assert_eq!(page["nextFileName"], "docs/x.txt");
    let query = [
        ("bucketId", priv_id.as_str()),
        ("maxFileCount", "10"),
        ("startFileName", "docs/x.txt"),
        ("startFileId", page["nextFileId"].as_str().unwrap()),
    ];
    let second = json(api.get("/b2api/v2/b2_list_file_versions", &query).await).await;
    assert_eq!(second["files"].as_array().unwrap().len(), 3);
    assert_ne!(second["files"][0]["fileId"], page["files"][0]["fileId"]);
    let old_id = second["files"][0]["fileId"].as_str().unwrap();
    // get_file_info as POST.
    let info = json(
        api.post("/b2api/v3/b2_get_file_info", serde_json::json!({"fileId": old_id}))
            .await,
    )
    .await;
    assert_eq!(info["contentLength"], 7);
    assert_eq!(info["fileInfo"]["b2-content-disposition"], "attachment");
    // Download by id: POST with JSON, HEAD, and an old version pinned by id.
    let by_id = "/b2api/v4/b2_download_file_by_id";
    let r = api.post(by_id, serde_json::json!({"fileId": old_id})).await;
    assert_eq!(r.headers()["content-disposition"], "attachment");
    assert_eq!(r.text().await.unwrap(), "private");
    let r = api.head(by_id, &[("fileId", old_id)]).await;
    assert_eq!(r.headers()["content-length"], "7");
    // Errors are JSON, HEAD errors are empty.
    let r = api.head(by_id, &[("fileId", "nope")]).await;
    assert_eq!(r.status(), 404);
    assert!(r.bytes().await.unwrap().is_empty());
    let list = "/b2api/v4/b2_list_file_names";
    let r = api
        .get(list, &[("bucketId", priv_id.as_str()), ("maxFileCount", "10001")])
        .await;
    assert_eq!(r.status(), 400);
    let v = json(r).await;
    assert_eq!(
        (v["status"].as_u64(), v["code"].as_str()),
        (Some(400), Some("bad_request"))
    );
    let garbage = Raw::new(&env, Some("garbage"));
    let v = json(garbage.get(list, &[("bucketId", priv_id.as_str())]).await).await;
    assert_eq!(v["code"], "bad_auth_token");
    // Restricted key: listing all buckets is 401, naming its bucket works.
    let ra = json(anon.authorize("v4", "r-id", "r-key").await).await;
    assert_eq!(ra["apiInfo"]["storageApi"]["allowed"]["buckets"][0]["name"], "priv");
    let restricted = Raw::new(&env, ra["authorizationToken"].as_str());
    let lb = "/b2api/v4/b2_list_buckets";
    assert_eq!(restricted.get(lb, &[("accountId", "emu-account")]).await.status(), 401);
    let ok = json(
        restricted
            .get(lb, &[("accountId", "emu-account"), ("bucketName", "priv")])
            .await,
    )
    .await;
    assert_eq!(ok["buckets"][0]["bucketId"], priv_id.as_str());
    // v1 authorization is flat; v1 listings say `size`.
    let v1 = json(anon.authorize("v1", KEY_ID, KEY).await).await;
    assert!(v1["apiUrl"].is_string() && v1["allowed"].is_object());
    let old_api = Raw::new(&env, v1["authorizationToken"].as_str());
    let l1 = json(
        old_api
            .get("/b2api/v1/b2_list_file_names", &[("bucketId", priv_id.as_str())])
            .await,
    )
    .await;
    assert_eq!(l1["files"][0]["size"], 10);
    assert!(l1["files"][0].get("contentLength").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_emulator_tree_convention_and_the_demo_work() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cfg) = fetchfs::emulate::b2::demo(dir.path()).await.unwrap();
    let fetchfs::config::SourceConfig::B2(cfg) = cfg else {
        panic!("not a B2 config")
    };
    let src = source_of(&cfg);
    let root = src.root().await.unwrap();
    assert_eq!(names(&src.list(&root).await.unwrap()), ["demo-bucket"]);
    let b = find(&*src, "demo-bucket").await.unwrap();
    assert_eq!(
        names(&src.list(&b).await.unwrap()),
        [".versions", "data", "docs", "hello.txt"]
    );
    let docs = find(&*src, "demo-bucket/docs").await.unwrap();
    let list = src.list(&docs).await.unwrap();
    assert_eq!(names(&list), [".versions", "readme.md"], "removed.txt is hidden");
    let readme = list.iter().find(|e| e.name == "readme.md").unwrap();
    assert_eq!(xattr(readme, "user.b2.content_type").as_deref(), Some("text/markdown"));
    assert_eq!(xattr(readme, "user.b2.info.author").as_deref(), Some("fetchfs demo"));
    let h = find(&*src, "demo-bucket/.versions/hello.txt").await.unwrap();
    assert_eq!(src.list(&h).await.unwrap().len(), 2);
    let o = open(&*src, "demo-bucket/data/random.bin").await;
    let disk = std::fs::read(dir.path().join("b2/demo-bucket/data/random.bin")).unwrap();
    assert_eq!(o.entry.checksum, Some(sha1(&disk)));
    let got = read_all(&*o.reader, 0..disk.len() as u64).await.unwrap();
    assert!(got == disk);
    drop(server);
}

#[test]
fn quick_form_and_credentials_resolve_or_name_the_missing_key() {
    let cfg = fetchfs::provider::from_url("b2://bucket/some/prefix", "q").unwrap();
    let fetchfs::config::SourceConfig::B2(c) = cfg else {
        panic!("not b2")
    };
    assert_eq!(
        (c.bucket.as_deref(), c.prefix.as_deref()),
        (Some("bucket"), Some("some/prefix"))
    );
    // SAFETY: this is the only test touching these variables.
    unsafe {
        std::env::remove_var("B2_APPLICATION_KEY_ID");
        std::env::remove_var("B2_APPLICATION_KEY");
    }
    let e = B2Source::new(&c, &ctx()).err().unwrap();
    assert!(e.0.contains("key_id"), "{e}");
    unsafe {
        std::env::set_var("B2_APPLICATION_KEY_ID", "id");
    }
    let e = B2Source::new(&c, &ctx()).err().unwrap();
    assert!(e.0.contains("application_key"), "{e}");
    unsafe {
        std::env::set_var("B2_APPLICATION_KEY", "k");
    }
    assert!(B2Source::new(&c, &ctx()).is_ok());
    let parsed = fetchfs::config::ConfigFile::parse(
        "[[source]]\nname='b'\ntype='b2'\nbucket='x'\nkey_id='i'\napplication_key_file='/nonexistent'\n",
    )
    .unwrap();
    let fetchfs::config::SourceConfig::B2(c) = &parsed.sources[0] else {
        panic!("not b2")
    };
    let e = B2Source::new(c, &ctx()).err().unwrap();
    assert!(e.0.contains("application_key_file"), "{e}");
    assert!(fetchfs::config::ConfigFile::parse("[[source]]\nname='b'\ntype='b2'\nbuckt='x'\n").is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_reads_after_expiry_share_one_renewal() {
    let data = pattern(1 << 20);
    let env = start_with(B2EmuOptions::default(), |c| {
        c.upload("b", "f.bin", data.clone());
    })
    .await;
    let src = env.source(Some("b"));
    let o = open(&*src, "f.bin").await;
    read_all(&*o.reader, 0..1).await.unwrap();
    env.control.expire_tokens();
    let reader = o.reader.clone();
    let tasks: Vec<_> = (0..16u64)
        .map(|i| {
            let reader = reader.clone();
            tokio::spawn(async move { read_all(&*reader, i * 65536..(i + 1) * 65536).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.extend_from_slice(&t.await.unwrap().unwrap());
    }
    assert!(out == data);
    assert_eq!(env.stats("b2_authorize_account"), 2, "sixteen 401s, one renewal");
}

#[tokio::test(flavor = "multi_thread")]
async fn side_files_in_the_tree_add_versions_hidden_names_and_sse_c() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("bkt");
    std::fs::create_dir_all(b.join("sub")).unwrap();
    std::fs::write(b.join("v.txt.b2v1"), "one").unwrap();
    std::fs::write(b.join("v.txt.b2v2"), "two").unwrap();
    std::fs::write(b.join("v.txt"), "three").unwrap();
    std::fs::write(b.join("sub/big.b2start"), "").unwrap();
    std::fs::write(b.join("sub/gone"), "x").unwrap();
    std::fs::write(b.join("sub/gone.b2hidden"), "").unwrap();
    std::fs::write(b.join("enc.txt"), "secret").unwrap();
    let key = base64::engine::general_purpose::STANDARD.encode([1u8; 32]);
    std::fs::write(b.join("enc.txt.b2ssec"), &key).unwrap();
    std::fs::write(dir.path().join("not-a-bucket.txt"), "ignored").unwrap();
    let emu = fetchfs::emulate::b2::router(dir.path(), B2EmuOptions::default());
    let server = serve(emu.router, 0, emu.harness).await.unwrap();
    let keyfile = dir.path().join("key");
    std::fs::write(&keyfile, &key).unwrap();
    let cfg = B2Config {
        name: "t".into(),
        endpoint: Some(server.base_url()),
        key_id: Some(KEY_ID.into()),
        key_id_file: None,
        application_key: Some(KEY.into()),
        application_key_file: None,
        bucket: None,
        prefix: None,
        sse_c_key_file: Some(keyfile),
        versions: true,
    };
    let src = source_of(&cfg);
    assert_eq!(names(&src.list(&src.root().await.unwrap()).await.unwrap()), ["bkt"]);
    let bkt = find(&*src, "bkt").await.unwrap();
    assert_eq!(
        names(&src.list(&bkt).await.unwrap()),
        [".versions", "enc.txt", "sub", "v.txt"]
    );
    // sub/ holds an unfinished large file (listed as `start`, skipped) and a hidden name.
    let sub = find(&*src, "bkt/sub").await.unwrap();
    assert_eq!(names(&src.list(&sub).await.unwrap()), [".versions"]);
    let sv = find(&*src, "bkt/sub/.versions").await.unwrap();
    assert_eq!(names(&src.list(&sv).await.unwrap()), ["big", "gone"]);
    let v = find(&*src, "bkt/.versions/v.txt").await.unwrap();
    let mut contents = Vec::new();
    for e in src.list(&v).await.unwrap() {
        let o = src.open(&e, &req()).await.unwrap();
        contents.push(String::from_utf8(read_all(&*o.reader, 0..e.size).await.unwrap().to_vec()).unwrap());
    }
    contents.sort();
    assert_eq!(contents, ["one", "three", "two"]);
    let o = open(&*src, "bkt/enc.txt").await;
    assert_eq!(&read_all(&*o.reader, 0..6).await.unwrap()[..], b"secret");
}

#[tokio::test(flavor = "multi_thread")]
async fn emulator_switches_and_bad_json_over_http() {
    let env = standard().await;
    let api = Raw::new(&env, env.token().await["authorizationToken"].as_str());
    let r = api.post_raw("/b2api/v4/b2_list_file_names", "{not json").await;
    assert_eq!(r.status(), 400);
    assert_eq!(json(r).await["code"], "bad_json");
    let switches = serde_json::json!({"expire_tokens": true, "api_shape": 1});
    assert_eq!(api.post("/__fetchfs/b2", switches).await.status(), 204);
    let r = api
        .get("/b2api/v4/b2_list_buckets", &[("accountId", "emu-account")])
        .await;
    assert_eq!(json(r).await["code"], "expired_auth_token");
    assert!(
        env.token().await["apiUrl"].is_string(),
        "v1 shape forced on the v4 path"
    );
    assert_eq!(env.control.options().api_shape, Some(1));
}

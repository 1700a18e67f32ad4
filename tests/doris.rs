//! The Doris small-file source against its in-process emulator (providers.md §4).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fetchfs::config::SourceConfig;
use fetchfs::emulate::doris::{self, DorisBehaviour, DorisEmuOptions, ErrorStyle};
use fetchfs::emulate::{FaultSpec, Server, serve};
use fetchfs::error::SourceError;
use fetchfs::http::HttpOptions;
use fetchfs::provider::doris::DorisConfig;
use fetchfs::provider::{BuildContext, build};
use fetchfs::source::{Checksum, Entry, EntryKind, OpenRequest, Opened, Source, read_all};
use md5::{Digest, Md5};

const TOKEN: &str = "0b7c2f4e-1111-2222-3333-444455556666";

struct Env {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    server: Server,
    behaviour: Arc<std::sync::Mutex<DorisBehaviour>>,
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// Two databases, three catalogs, a URL-only entry, a 300 KiB binary file, an empty database.
async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    write(&root, "db1/kafka/ca.pem", b"-----BEGIN CERTIFICATE-----\nabc\n");
    write(&root, "db1/kafka/client.key", b"secret key bytes");
    write(&root, "db1/DEFAULT/big.bin", &big());
    write(&root, "db1/kafka/driver.jar.not-content", b"url only");
    write(&root, "db2/jdbc/app.properties", b"a=b\n");
    std::fs::create_dir_all(root.join("empty_db")).unwrap();
    let emu = doris::router(
        &root,
        DorisEmuOptions {
            token: TOKEN.into(),
            user: "admin".into(),
            password: "pw".into(),
            ..Default::default()
        },
    );
    let behaviour = emu.behaviour.clone();
    let server = serve(emu.router, 0, emu.harness).await.unwrap();
    Env {
        _dir: dir,
        root,
        server,
        behaviour,
    }
}

fn big() -> Vec<u8> {
    (0..300 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn config(env: &Env) -> DorisConfig {
    DorisConfig {
        name: "doris".into(),
        endpoint: env.server.base_url(),
        token: Some(TOKEN.into()),
        token_file: None,
        user: Some("admin".into()),
        password: Some("pw".into()),
        password_file: None,
        databases: None,
        namespace: None,
    }
}

fn ctx() -> BuildContext {
    BuildContext {
        http: HttpOptions {
            backoff_base: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            op_timeout: Duration::from_secs(10),
            ..HttpOptions::default()
        },
        base_dir: std::env::temp_dir(),
        block_size: 1 << 20,
        disk_cache: false,
    }
}

async fn source(cfg: DorisConfig) -> Arc<dyn Source> {
    build(&SourceConfig::Doris(cfg), &ctx()).await.unwrap()
}

fn names(entries: &[Entry]) -> Vec<String> {
    let mut v: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
    v.sort();
    v
}

fn find<'a>(entries: &'a [Entry], name: &str) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{name} not listed"))
}

async fn list_path(src: &dyn Source, path: &[&str]) -> Vec<Entry> {
    let mut dir = src.root().await.unwrap();
    for seg in path {
        let entries = src.list(&dir).await.unwrap();
        dir = find(&entries, seg).clone();
    }
    src.list(&dir).await.unwrap()
}

/// Lists the directory at `path` and opens the file `name` in it.
async fn open_at(src: &dyn Source, path: &[&str], name: &str) -> (Entry, Opened) {
    let files = list_path(src, path).await;
    let f = find(&files, name).clone();
    let opened = src.open(&f, &open_req()).await.unwrap();
    (f, opened)
}

fn open_req() -> OpenRequest {
    OpenRequest {
        block_size: 1 << 20,
        revalidate: false,
    }
}

fn downloads(server: &Server) -> u64 {
    server.harness.stats.count(|k| k == "GET /api/get_small_file")
}

fn queries(server: &Server) -> u64 {
    server.harness.stats.count(|k| k.starts_with("POST /api/query/"))
}

#[tokio::test(flavor = "multi_thread")]
async fn tree_is_db_catalog_file_with_by_id_and_url_only_entries_hidden() {
    let env = env().await;
    let src = source(config(&env)).await;
    let root = src.root().await.unwrap();
    let top = src.list(&root).await.unwrap();
    assert_eq!(
        names(&top),
        ["by-id", "db1", "db2", "empty_db"],
        "system databases are hidden"
    );
    assert!(top.iter().all(|e| e.kind == EntryKind::Dir));
    assert_eq!(names(&list_path(&*src, &["db1"]).await), ["DEFAULT", "kafka"]);
    let kafka = list_path(&*src, &["db1", "kafka"]).await;
    assert_eq!(
        names(&kafka),
        ["ca.pem", "client.key"],
        "IsContent=false rows are hidden"
    );
    let ca = find(&kafka, "ca.pem");
    let body = b"-----BEGIN CERTIFICATE-----\nabc\n";
    assert_eq!(ca.kind, EntryKind::File);
    assert_eq!(ca.size, body.len() as u64);
    let md5: [u8; 16] = Md5::digest(body).into();
    assert_eq!(ca.checksum, Some(Checksum::Md5(md5)));
    assert_eq!(
        ca.validator.as_deref(),
        Some(format!("{}:{}", ca.remote, hex::encode(md5)).as_str())
    );
    let x: std::collections::HashMap<_, _> = ca.xattrs.iter().cloned().collect();
    assert_eq!(x["user.doris.file_id"], ca.remote.as_bytes());
    assert_eq!(x["user.doris.md5"], hex::encode(md5).as_bytes());
    let by_id = list_path(&*src, &["by-id"]).await;
    assert_eq!(
        by_id.len(),
        4,
        "every downloadable file of every database: {:?}",
        names(&by_id)
    );
    let same = find(&by_id, &ca.remote);
    assert_eq!(
        (same.size, &same.validator, &same.remote),
        (ca.size, &ca.validator, &ca.remote)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mtime_is_constant_per_file_id() {
    let env = env().await;
    let src = source(config(&env)).await;
    let a = list_path(&*src, &["db1", "kafka"]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let b = list_path(&*src, &["by-id"]).await;
    let ca = find(&a, "ca.pem");
    assert_eq!(ca.mtime, find(&b, &ca.remote).mtime);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_directory_level_costs_one_sql_request() {
    let env = env().await;
    let src = source(config(&env)).await;
    let root = src.root().await.unwrap();
    env.server.harness.stats.reset();
    let top = src.list(&root).await.unwrap();
    let root_q = queries(&env.server);
    let db1 = src.list(find(&top, "db1")).await.unwrap();
    let db_q = queries(&env.server) - root_q;
    src.list(find(&db1, "kafka")).await.unwrap();
    let cat_q = queries(&env.server) - root_q - db_q;
    src.list(find(&top, "by-id")).await.unwrap();
    let by_id_q = queries(&env.server) - root_q - db_q - cat_q;
    eprintln!("doris requests: root {root_q}, database {db_q}, catalog {cat_q}, by-id {by_id_q}");
    assert_eq!((root_q, db_q, cat_q), (1, 1, 1));
    assert_eq!(by_id_q, 1 + 3, "SHOW DATABASES, then SHOW FILE per database");
    assert_eq!(downloads(&env.server), 0, "listing downloads nothing");

    let mut cfg = config(&env);
    cfg.databases = Some(vec!["db1".into()]);
    let src = source(cfg).await;
    let root = src.root().await.unwrap();
    env.server.harness.stats.reset();
    let top = src.list(&root).await.unwrap();
    assert_eq!(names(&top), ["by-id", "db1"]);
    assert_eq!(
        queries(&env.server),
        0,
        "configured databases need no request at the root"
    );
    src.list(find(&top, "by-id")).await.unwrap();
    assert_eq!(queries(&env.server), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn random_offset_reads_come_from_one_whole_download_each() {
    let env = env().await;
    let src = source(config(&env)).await;
    let (f, opened) = open_at(&*src, &["db1", "DEFAULT"], "big.bin").await;
    assert!(
        !opened.reader.ranges(),
        "Doris ignores Range: the cache must ask for 0..size"
    );
    let want = big();
    env.server.harness.stats.reset();
    let all = read_all(&*opened.reader, 0..f.size).await.unwrap();
    assert_eq!(&all[..], &want[..]);
    assert_eq!(downloads(&env.server), 1, "one read_stream(0..size) is one request");
    // Any range is cut from a whole download (the cache only asks 0..size; this proves the
    // reader still answers exactly what was asked).
    let mut rng = 0x9e3779b97f4a7c15u64;
    for _ in 0..8 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let a = rng % f.size;
        let b = (a + 1 + (rng >> 20) % 50_000).min(f.size);
        let got = read_all(&*opened.reader, a..b).await.unwrap();
        assert_eq!(&got[..], &want[a as usize..b as usize], "range {a}..{b}");
    }
    assert_eq!(downloads(&env.server), 9);
    assert_eq!(
        env.server.harness.stats.total(),
        9,
        "reads send no SHOW FILE, only downloads"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_bytes_fail_the_md5_check_before_any_byte_is_served() {
    let env = env().await;
    let src = source(config(&env)).await;
    let (f, opened) = open_at(&*src, &["db1", "kafka"], "client.key").await;
    env.behaviour.lock().unwrap().corrupt = true;
    let err = match opened.reader.read_stream(0..f.size).await {
        Err(e) => e,
        Ok(_) => panic!("a corrupted download must not yield a stream"),
    };
    assert!(matches!(err, SourceError::Integrity(_)), "{err}");
    assert!(err.to_string().contains("MD5"), "{err}");
    assert_eq!(err.errno(), libc::EIO);
    env.behaviour.lock().unwrap().corrupt = false;
    assert_eq!(
        &read_all(&*opened.reader, 0..f.size).await.unwrap()[..],
        b"secret key bytes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_cut_mid_download_is_an_error_never_a_short_file() {
    let env = env().await;
    let src = source(config(&env)).await;
    let (f, opened) = open_at(&*src, &["db1", "DEFAULT"], "big.bin").await;
    env.server.harness.faults.set(FaultSpec {
        reset_after: Some(1000),
        ..Default::default()
    });
    let err = match opened.reader.read_stream(0..f.size).await {
        Err(e) => e,
        Ok(_) => panic!("a cut download must not yield a stream"),
    };
    assert_eq!(err.errno(), libc::EIO, "{err}");
    env.server.harness.faults.clear();
    assert_eq!(read_all(&*opened.reader, 0..f.size).await.unwrap().len() as u64, f.size);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_dropped_after_listing_is_not_found_in_both_error_styles() {
    for style in [ErrorStyle::Source, ErrorStyle::SeedDoc] {
        let env = env().await;
        env.behaviour.lock().unwrap().error_style = style;
        let src = source(config(&env)).await;
        let files = list_path(&*src, &["db2", "jdbc"]).await;
        let f = find(&files, "app.properties");
        let opened = src.open(f, &open_req()).await.unwrap();
        std::fs::remove_file(env.root.join("db2/jdbc/app.properties")).unwrap();
        let err = read_all(&*opened.reader, 0..f.size).await.unwrap_err();
        assert!(matches!(err, SourceError::NotFound(_)), "{style:?}: {err}");
        assert!(err.to_string().contains("File not found or is not content"), "{err}");
        assert_eq!(err.errno(), libc::ENOENT);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rewritten_bytes_get_a_new_id_and_the_old_id_is_gone() {
    let env = env().await;
    let src = source(config(&env)).await;
    let before = list_path(&*src, &["db2", "jdbc"]).await;
    let old = find(&before, "app.properties").clone();
    write(&env.root, "db2/jdbc/app.properties", b"a=c\nd=e\n");
    let after = list_path(&*src, &["db2", "jdbc"]).await;
    let new = find(&after, "app.properties");
    assert_ne!(new.remote, old.remote);
    assert_ne!(new.validator, old.validator);
    let opened = src.open(&old, &open_req()).await.unwrap();
    let err = read_all(&*opened.reader, 0..old.size).await.unwrap_err();
    assert!(matches!(err, SourceError::NotFound(_)), "{err}");
    let opened = src.open(new, &open_req()).await.unwrap();
    assert_eq!(
        &read_all(&*opened.reader, 0..new.size).await.unwrap()[..],
        b"a=c\nd=e\n"
    );
}

/// An entry for a file id the listing never showed (a URL-only row, a garbage id).
fn entry_for(id: &str, size: u64) -> Entry {
    Entry::file(id, id, size)
}

#[tokio::test(flavor = "multi_thread")]
async fn url_only_and_unknown_ids_are_not_found_and_a_bad_id_is_eio() {
    let env = env().await;
    let src = source(config(&env)).await;
    // The URL-only row is hidden from the listing but has an id: find it with SHOW FILE.
    let c = reqwest::Client::new();
    let v: serde_json::Value = c
        .post(format!("{}/api/query/default_cluster/db1", env.server.base_url()))
        .basic_auth("admin", Some("pw"))
        .json(&serde_json::json!({"stmt": "SHOW FILE FROM db1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = v["data"]["data"].as_array().unwrap();
    let row = rows.iter().find(|r| r[3] == "driver.jar").unwrap();
    assert_eq!(row[5], "false");
    let url_only = row[0].as_str().unwrap();
    for id in [url_only, "999999"] {
        let opened = src.open(&entry_for(id, 8), &open_req()).await.unwrap();
        let err = read_all(&*opened.reader, 0..8).await.unwrap_err();
        assert!(matches!(err, SourceError::NotFound(_)), "{id}: {err}");
    }
    let opened = src.open(&entry_for("abc", 8), &open_req()).await.unwrap();
    let err = read_all(&*opened.reader, 0..8).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    assert!(err.to_string().contains("Invalid file id format: abc"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_is_permission_denied_and_never_shown() {
    let env = env().await;
    let mut cfg = config(&env);
    cfg.token = Some("not-the-cluster-token".into());
    let src = source(cfg).await;
    let (f, opened) = open_at(&*src, &["db1", "kafka"], "ca.pem").await;
    let err = read_all(&*opened.reader, 0..f.size).await.unwrap_err();
    assert!(matches!(err, SourceError::PermissionDenied(_)), "{err}");
    assert!(err.to_string().contains("Invalid token"), "{err}");
    assert!(!err.to_string().contains("not-the-cluster-token"), "{err}");
    assert_eq!(err.errno(), libc::EACCES);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_fails_at_mount_time_with_permission_denied() {
    let env = env().await;
    let mut cfg = config(&env);
    cfg.password = Some("wrong".into());
    let src = source(cfg).await;
    let err = src.root().await.unwrap_err();
    assert!(matches!(err, SourceError::PermissionDenied(_)), "{err}");
    assert!(!err.to_string().contains("wrong"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_configured_database_is_not_found() {
    let env = env().await;
    let mut cfg = config(&env);
    cfg.databases = Some(vec!["nope".into()]);
    let src = source(cfg).await;
    let err = src.root().await.unwrap_err();
    assert!(matches!(err, SourceError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("Unknown database 'nope'"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn files_sent_as_json_content_type_by_old_builds_are_still_files() {
    let env = env().await;
    env.behaviour.lock().unwrap().json_content_type = true;
    let src = source(config(&env)).await;
    let (f, opened) = open_at(&*src, &["db1", "kafka"], "ca.pem").await;
    let got = read_all(&*opened.reader, 0..f.size).await.unwrap();
    assert_eq!(&got[..], b"-----BEGIN CERTIFICATE-----\nabc\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_503s_are_retried_and_json_errors_are_not() {
    let env = env().await;
    let src = source(config(&env)).await;
    let (f, opened) = open_at(&*src, &["db1", "kafka"], "ca.pem").await;
    env.server.harness.faults.set(FaultSpec {
        fail_next: 2,
        error_status: 503,
        ..Default::default()
    });
    env.server.harness.stats.reset();
    read_all(&*opened.reader, 0..f.size).await.unwrap();
    assert_eq!(downloads(&env.server), 3);
    let gone = src.open(&entry_for("424242", 3), &open_req()).await.unwrap();
    env.server.harness.stats.reset();
    read_all(&*gone.reader, 0..3).await.unwrap_err();
    assert_eq!(downloads(&env.server), 1, "an HTTP-200 JSON error is final");
}

#[tokio::test(flavor = "multi_thread")]
async fn emulator_answers_the_documented_error_bodies_and_headers() {
    let env = env().await;
    let c = reqwest::Client::new();
    let base = env.server.base_url();
    let get = |q: String| {
        let c = c.clone();
        let base = base.clone();
        async move {
            let r = c.get(format!("{base}/api/get_small_file{q}")).send().await.unwrap();
            assert_eq!(r.status(), 200, "every FE error is HTTP 200");
            let h = r.headers().clone();
            (h, r.text().await.unwrap())
        }
    };
    let (_, b) = get(String::new()).await;
    assert_eq!(
        b,
        r#"{"code":403,"count":0,"data":"Missing parameter. Need token and file id","msg":"Bad Request"}"#
    );
    let (_, b) = get("?token=x&file_id=1".into()).await;
    assert!(
        b.contains(r#""data":"Invalid token""#) && b.contains(r#""code":1"#),
        "{b}"
    );
    let (_, b) = get(format!("?token={TOKEN}&file_id=x1")).await;
    assert!(b.contains("Invalid file id format: x1"), "{b}");
    let (_, b) = get(format!("?token={TOKEN}&file_id=1")).await;
    assert!(b.contains(r#""data":"File not found or is not content""#), "{b}");
    env.behaviour.lock().unwrap().error_style = ErrorStyle::SeedDoc;
    let (_, b) = get(format!("?token={TOKEN}&file_id=1")).await;
    assert!(
        b.contains(r#""data":null"#) && b.contains(r#""msg":"File not found or is not content""#),
        "{b}"
    );
    let (h, b) = get(format!("?token={TOKEN}&file_id=11002")).await;
    assert!(!b.is_empty());
    assert!(
        h["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment;fileName="),
        "{h:?}"
    );
    assert_eq!(h["content-type"], "application/octet-stream");
    assert!(h.get("content-length").is_none(), "chunked, as the FE sends");
    assert_eq!(h.get_all("vary").iter().count(), 3);
    // Range is ignored.
    let r = c
        .get(format!("{base}/api/get_small_file?token={TOKEN}&file_id=11002"))
        .header("range", "bytes=0-0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().len() > 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_and_password_come_from_files_and_a_missing_token_is_named() {
    let env = env().await;
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("token"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(d.path().join("pw"), "pw\n").unwrap();
    let mut cfg = config(&env);
    cfg.token = None;
    cfg.password = None;
    cfg.token_file = Some(d.path().join("token"));
    cfg.password_file = Some(d.path().join("pw"));
    assert!(!cfg.has_inline_secret());
    let src = source(cfg.clone()).await;
    let files = list_path(&*src, &["db1", "kafka"]).await;
    let opened = src.open(find(&files, "ca.pem"), &open_req()).await.unwrap();
    read_all(&*opened.reader, 0..5).await.unwrap();

    cfg.token_file = None;
    if std::env::var_os("DORIS_TOKEN").is_none() && std::env::var_os("CREDENTIALS_DIRECTORY").is_none() {
        let err = build(&SourceConfig::Doris(cfg), &ctx()).await.err().unwrap();
        assert!(err.0.contains("token"), "{err}");
    }
    let toml = format!(
        "[[source]]\nname='d'\ntype='doris'\nendpoint='{}'\ntoken='t'\nuser='u'\npassword='p'\ndatabases=['db1']\n",
        env.server.base_url()
    );
    let parsed = fetchfs::config::ConfigFile::parse(&toml).unwrap();
    assert_eq!(parsed.sources[0].kind(), "doris");
    let e =
        fetchfs::config::ConfigFile::parse("[[source]]\nname='d'\ntype='doris'\nendpoint='x'\ntokn='t'\n").unwrap_err();
    assert!(e.0.contains("tokn"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_config_mounts_the_demo_emulator() {
    let d = tempfile::tempdir().unwrap();
    let (server, cfg) = doris::demo(d.path()).await.unwrap();
    let src = build(&cfg, &ctx()).await.unwrap();
    let files = list_path(&*src, &["kafka_db", "kafka"]).await;
    assert_eq!(names(&files), ["ca.pem", "client.key"]);
    let f = find(&files, "ca.pem");
    let opened = src.open(f, &open_req()).await.unwrap();
    let got = read_all(&*opened.reader, 0..f.size).await.unwrap();
    assert!(got.starts_with(b"-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        names(&list_path(&*src, &["sales", "jdbc"]).await),
        ["mysql-connector.properties"]
    );
    drop(server);
}

/// The filesystem core (no kernel) over one Doris source as its root.
async fn core_for(cfg: DorisConfig) -> Arc<fetchfs::fs::FsCore> {
    let c = fetchfs::config::Config {
        http: ctx().http,
        sources: vec![SourceConfig::Doris(cfg)],
        ..Default::default()
    };
    let sources = fetchfs::mount::build_sources(&c).await.unwrap();
    fetchfs::fs::FsCore::new(fetchfs::fs::CoreConfig::from_config(&c), sources, true)
}

async fn core_open(core: &fetchfs::fs::FsCore, path: &[&str]) -> (u64, u64) {
    let mut ino = 1;
    let mut size = 0;
    for seg in path {
        let a = core.lookup(ino, seg).await.unwrap();
        (ino, size) = (a.ino, a.size);
    }
    (core.open(ino).await.unwrap().0, size)
}

#[tokio::test(flavor = "multi_thread")]
async fn random_reads_through_the_core_download_each_file_once() {
    let env = env().await;
    let core = core_for(config(&env)).await;
    let (fh, size) = core_open(&core, &["db1", "DEFAULT", "big.bin"]).await;
    let want = big();
    env.server.harness.stats.reset();
    let mut rng = 0x51afd7ed558ccd1du64;
    for _ in 0..40 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let off = rng % size;
        let got = core.read(fh, off, 4096).await.unwrap();
        let end = (off as usize + 4096).min(want.len());
        assert_eq!(&got[..], &want[off as usize..end], "offset {off}");
    }
    assert_eq!(
        downloads(&env.server),
        1,
        "the whole small file once, every range from it"
    );
    core.release(fh);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_file_read_through_the_core_fails_with_eio() {
    let env = env().await;
    env.behaviour.lock().unwrap().corrupt = true;
    let core = core_for(config(&env)).await;
    let (fh, _) = core_open(&core, &["db1", "kafka", "client.key"]).await;
    let err = core.read(fh, 0, 4096).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    core.release(fh);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_failure_names_the_file_id_but_never_the_token() {
    let env = env().await;
    let src = source(config(&env)).await;
    let (f, opened) = open_at(&*src, &["db1", "kafka"], "ca.pem").await;
    let addr = env.server.addr;
    drop(env.server);
    // Dropping the server stops accepting at once, but a kept-alive connection of the client's
    // pool closes a moment later (the emulator's graceful shutdown): wait for both, bounded, so
    // the read cannot be served by the old connection.
    let t0 = std::time::Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "the emulator still accepts"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let err = read_all(&*opened.reader, 0..f.size).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    let text = err.to_string();
    assert!(text.contains(&f.remote), "{text}");
    assert!(!text.contains(TOKEN) && !text.contains("token="), "{text}");
}

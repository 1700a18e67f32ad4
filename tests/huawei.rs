//! The Huawei HSS export-file source against its in-process emulator (providers.md §5).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fetchfs::config::SourceConfig;
use fetchfs::emulate::huawei::{self, DEFAULT_PROJECT_ID, HuaweiEmuOptions, HuaweiEmulator};
use fetchfs::emulate::{FaultSpec, Server, serve};
use fetchfs::error::SourceError;
use fetchfs::http::HttpOptions;
use fetchfs::provider::huawei::HuaweiConfig;
use fetchfs::provider::{BuildContext, build};
use fetchfs::source::{Entry, EntryKind, OpenRequest, Opened, Source, read_all};

struct Env {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    server: Server,
    emu: Handles,
}

/// The run-time handles of the emulator (its router moved into the server).
struct Handles(HuaweiEmulator);

impl std::ops::Deref for Handles {
    type Target = HuaweiEmulator;
    fn deref(&self) -> &HuaweiEmulator {
        &self.0
    }
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn report() -> Vec<u8> {
    (0..200 * 1024u32)
        .map(|i| (i.wrapping_mul(2246822519) >> 11) as u8)
        .collect()
}

/// Two finished tasks, one running, one failed.
async fn env_with(opts: HuaweiEmuOptions) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    write(&root, "t-vul/hss-vul-vul-en-01.zip", &report());
    write(&root, "t-host/hss-host-en-02.csv", b"host,os\nweb-1,Linux\n");
    write(&root, "t-run/.running", b"");
    write(&root, "t-fail/.failed", b"export size exceeds the limit\n");
    let mut emu = huawei::router(&root, opts);
    let router = std::mem::replace(&mut emu.router, axum::Router::new());
    let server = serve(router, 0, emu.harness.clone()).await.unwrap();
    Env {
        _dir: dir,
        root,
        server,
        emu: Handles(emu),
    }
}

async fn env() -> Env {
    env_with(HuaweiEmuOptions::default()).await
}

fn config(env: &Env) -> HuaweiConfig {
    let o = HuaweiEmuOptions::default();
    HuaweiConfig {
        name: "hss".into(),
        endpoint: env.server.base_url(),
        iam_endpoint: Some(env.server.base_url()),
        project_id: Some(DEFAULT_PROJECT_ID.into()),
        domain: Some(o.domain),
        user: Some(o.user),
        password: Some(o.password),
        password_file: None,
        token: None,
        token_file: None,
        region: Some(o.project_name),
        enterprise_project_id: Some("all_granted_eps".into()),
        export_tasks: ["t-vul", "t-host", "t-run", "t-fail"].map(String::from).to_vec(),
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

async fn source(cfg: HuaweiConfig) -> Arc<dyn Source> {
    build(&SourceConfig::Huawei(cfg), &ctx()).await.unwrap()
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

async fn top(src: &dyn Source) -> Vec<Entry> {
    let root = src.root().await.unwrap();
    src.list(&root).await.unwrap()
}

/// Lists the root and opens the file `name` in it.
async fn open_top(src: &dyn Source, name: &str) -> (Entry, Opened) {
    let entries = top(src).await;
    let f = find(&entries, name).clone();
    let opened = src.open(&f, &open_req()).await.unwrap();
    (f, opened)
}

fn open_req() -> OpenRequest {
    OpenRequest {
        block_size: 1 << 20,
        revalidate: false,
    }
}

fn count(server: &Server, prefix: &str) -> u64 {
    server.harness.stats.count(|k| k.starts_with(prefix))
}

fn downloads(server: &Server) -> u64 {
    count(server, &format!("GET /v5/{DEFAULT_PROJECT_ID}/download/"))
}

fn polls(server: &Server) -> u64 {
    count(server, &format!("GET /v5/{DEFAULT_PROJECT_ID}/export-task/"))
}

fn logins(server: &Server) -> u64 {
    count(server, "POST /v3/auth/tokens")
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_tasks_show_their_files_and_running_or_failed_ones_are_absent() {
    let env = env().await;
    let src = source(config(&env)).await;
    let entries = top(&*src).await;
    assert_eq!(
        names(&entries),
        ["by-id", "hss-host-en-02.csv", "hss-vul-vul-en-01.zip"]
    );
    let zip = find(&entries, "hss-vul-vul-en-01.zip");
    assert_eq!(zip.kind, EntryKind::File);
    assert_eq!(zip.size, report().len() as u64, "size learnt from Content-Length");
    assert_eq!(zip.validator.as_deref(), Some(zip.remote.as_str()));
    let x: std::collections::HashMap<_, _> = zip.xattrs.iter().cloned().collect();
    assert_eq!(x["user.huawei.file_id"], zip.remote.as_bytes());
    assert_eq!(x["user.huawei.task_id"], b"t-vul");
    let by_id = src.list(find(&entries, "by-id")).await.unwrap();
    assert_eq!(by_id.len(), 2);
    let same = find(&by_id, &zip.remote);
    assert_eq!(
        (same.size, same.mtime, &same.remote),
        (zip.size, zip.mtime, &zip.remote)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_polls_each_task_once_and_learns_each_size_once() {
    let env = env().await;
    let src = source(config(&env)).await;
    let root = src.root().await.unwrap();
    assert_eq!(logins(&env.server), 1);
    env.server.harness.stats.reset();
    let entries = src.list(&root).await.unwrap();
    let (p1, d1) = (polls(&env.server), downloads(&env.server));
    eprintln!(
        "huawei first listing: {p1} task polls, {d1} size probes, total {}",
        env.server.harness.stats.total()
    );
    assert_eq!((p1, d1), (4, 2), "one poll per task, one size probe per new file id");
    env.server.harness.stats.reset();
    src.list(&root).await.unwrap();
    src.list(find(&entries, "by-id")).await.unwrap();
    eprintln!(
        "huawei later listings: {} requests for root + by-id",
        env.server.harness.stats.total()
    );
    assert_eq!(
        env.server.harness.stats.total(),
        8,
        "later listings: one poll per task, nothing else"
    );
    assert_eq!(logins(&env.server), 0, "the token is reused");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_download_serves_any_range_and_costs_one_request() {
    let env = env().await;
    let src = source(config(&env)).await;
    let (f, opened) = open_top(&*src, "hss-vul-vul-en-01.zip").await;
    assert!(!opened.reader.ranges());
    let want = report();
    env.server.harness.stats.reset();
    let all = read_all(&*opened.reader, 0..f.size).await.unwrap();
    assert_eq!(&all[..], &want[..]);
    assert_eq!(downloads(&env.server), 1);
    assert_eq!(
        env.server.harness.stats.total(),
        1,
        "no poll, no login: only the download"
    );
    let mut rng = 0x2545f4914f6cdd1du64;
    for _ in 0..6 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let a = rng % f.size;
        let b = (a + 1 + (rng >> 24) % 40_000).min(f.size);
        let got = read_all(&*opened.reader, a..b).await.unwrap();
        assert_eq!(&got[..], &want[a as usize..b as usize], "range {a}..{b}");
    }
    assert_eq!(downloads(&env.server), 7, "one request per read_stream");
    assert_eq!(
        env.emu.last_download_params(),
        (Some("cn-north-4".into()), Some("all_granted_eps".into())),
        "the region header and enterprise_project_id travel with the download"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_renewed_once_and_the_read_succeeds() {
    let env = env().await;
    let src = source(config(&env)).await;
    let (f, opened) = open_top(&*src, "hss-host-en-02.csv").await;
    assert_eq!(env.emu.tokens_issued(), 1);
    env.emu.expire_tokens();
    let got = read_all(&*opened.reader, 0..f.size).await.unwrap();
    assert_eq!(&got[..], b"host,os\nweb-1,Linux\n");
    assert_eq!(env.emu.tokens_issued(), 2);
    assert_eq!(env.emu.tokens_rejected(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_reads_after_expiry_share_one_renewal() {
    let env = env().await;
    let src = source(config(&env)).await;
    let entries = top(&*src).await;
    let f = find(&entries, "hss-vul-vul-en-01.zip").clone();
    let opened = src.open(&f, &open_req()).await.unwrap();
    env.emu.expire_tokens();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let r = opened.reader.clone();
        let size = f.size;
        tasks.push(tokio::spawn(async move {
            read_all(&*r, 0..size).await.unwrap().len() as u64
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), f.size);
    }
    assert_eq!(env.emu.tokens_issued(), 2, "eight 401s, one re-login");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_is_renewed_before_its_expires_at() {
    let env = env_with(HuaweiEmuOptions {
        token_ttl: Duration::from_millis(1500),
        ..Default::default()
    })
    .await;
    let src = source(config(&env)).await;
    let (f, opened) = open_top(&*src, "hss-host-en-02.csv").await;
    // Kept for 90 % of 1.5 s: after 1.4 s the token is still valid on the server, yet renewed.
    tokio::time::sleep(Duration::from_millis(1400)).await;
    read_all(&*opened.reader, 0..f.size).await.unwrap();
    assert_eq!(env.emu.tokens_issued(), 2);
    assert_eq!(env.emu.tokens_rejected(), 0, "renewed before the server refused it");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_apigw_spelling_of_token_expiry_renews_too() {
    let env = env_with(HuaweiEmuOptions {
        apigw_code: true,
        ..Default::default()
    })
    .await;
    let src = source(config(&env)).await;
    let entries = top(&*src).await;
    env.emu.expire_tokens();
    let by_id = src.list(find(&entries, "by-id")).await.unwrap();
    assert_eq!(by_id.len(), 2);
    assert_eq!(env.emu.tokens_issued(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_expiry_sent_with_403_renews_too() {
    let env = env_with(HuaweiEmuOptions {
        token_error_status: 403,
        ..Default::default()
    })
    .await;
    let src = source(config(&env)).await;
    let (f, opened) = open_top(&*src, "hss-host-en-02.csv").await;
    env.emu.expire_tokens();
    read_all(&*opened.reader, 0..f.size).await.unwrap();
    assert_eq!(env.emu.tokens_issued(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_refused_right_after_renewal_is_permission_denied_without_a_loop() {
    let env = env().await;
    let src = source(config(&env)).await;
    let (f, opened) = open_top(&*src, "hss-host-en-02.csv").await;
    env.emu.set_token_ttl(Duration::ZERO);
    env.emu.expire_tokens();
    let err = read_all(&*opened.reader, 0..f.size).await.unwrap_err();
    assert!(matches!(err, SourceError::PermissionDenied(_)), "{err}");
    assert!(err.to_string().contains("APIG.0301"), "{err}");
    assert!(!err.to_string().contains("MIIT"), "the token never appears: {err}");
    assert_eq!(env.emu.tokens_rejected(), 2, "one retry after one renewal");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_iam_password_fails_the_mount_with_iams_reason() {
    let env = env().await;
    let mut cfg = config(&env);
    cfg.password = Some("wrong-password".into());
    let src = source(cfg).await;
    let err = src.root().await.unwrap_err();
    assert!(matches!(err, SourceError::PermissionDenied(_)), "{err}");
    assert!(err.to_string().contains("The username or password is wrong."), "{err}");
    assert!(!err.to_string().contains("wrong-password"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ready_token_is_used_as_is_and_never_renewed() {
    let env = env().await;
    let mut cfg = config(&env);
    cfg.user = None;
    cfg.password = None;
    cfg.token = Some("MIITnot-a-real-token".into());
    let src = source(cfg).await;
    src.root().await.unwrap();
    let err = src.list(&src.root().await.unwrap()).await.unwrap_err();
    assert!(matches!(err, SourceError::PermissionDenied(_)), "{err}");
    assert!(!err.to_string().contains("MIITnot"), "{err}");
    assert_eq!(logins(&env.server), 0);
    assert_eq!(env.emu.tokens_rejected(), 1, "no retry with the same token");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_scoped_token_supplies_the_project_id() {
    let env = env().await;
    let mut cfg = config(&env);
    cfg.project_id = None;
    let src = source(cfg).await;
    let entries = top(&*src).await;
    assert_eq!(entries.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_export_file_is_not_found_with_the_servers_message() {
    let env = env().await;
    let src = source(config(&env)).await;
    let (f, opened) = open_top(&*src, "hss-host-en-02.csv").await;
    std::fs::remove_dir_all(env.root.join("t-host")).unwrap();
    let err = read_all(&*opened.reader, 0..f.size).await.unwrap_err();
    assert!(matches!(err, SourceError::NotFound(_)), "{err}");
    assert!(err.to_string().contains("HSS.1054"), "{err}");
    assert_eq!(err.errno(), libc::ENOENT);
    // The listing drops the vanished task with a warning instead of failing.
    let entries = top(&*src).await;
    assert_eq!(names(&entries), ["by-id", "hss-vul-vul-en-01.zip"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_task_appears_once_it_finishes() {
    let env = env_with(HuaweiEmuOptions {
        running_for: Duration::from_millis(600),
        ..Default::default()
    })
    .await;
    let mut cfg = config(&env);
    cfg.export_tasks = vec!["t-host".into()];
    let src = source(cfg).await;
    assert_eq!(names(&top(&*src).await), ["by-id"], "still running");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(names(&top(&*src).await), ["by-id", "hss-host-en-02.csv"]);
    // The marker form: a .running file keeps it running.
    write(&env.root, "t-host/.running", b"");
    assert_eq!(names(&top(&*src).await), ["by-id"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_task_id_is_skipped_and_the_rest_listed() {
    let env = env().await;
    let mut cfg = config(&env);
    cfg.export_tasks.insert(0, "no-such-task".into());
    let src = source(cfg).await;
    assert_eq!(names(&top(&*src).await).len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_content_length_the_size_is_counted_from_the_body() {
    let env = env_with(HuaweiEmuOptions {
        no_content_length: true,
        ..Default::default()
    })
    .await;
    let src = source(config(&env)).await;
    let entries = top(&*src).await;
    let f = find(&entries, "hss-vul-vul-en-01.zip");
    assert_eq!(f.size, report().len() as u64);
    let opened = src.open(f, &open_req()).await.unwrap();
    assert_eq!(&read_all(&*opened.reader, 0..f.size).await.unwrap()[..], &report()[..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_replaced_under_the_same_id_is_reported_changed() {
    let env = env().await;
    let src = source(config(&env)).await;
    let entries = top(&*src).await;
    let f = find(&entries, "hss-host-en-02.csv");
    // Pretend the listing knew another size (a server that reused a file id).
    let mut stale = f.clone();
    stale.size += 5;
    let opened = src.open(&stale, &open_req()).await.unwrap();
    let err = read_all(&*opened.reader, 0..stale.size).await.unwrap_err();
    assert!(matches!(err, SourceError::Changed(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn injected_503s_are_retried_and_error_bodies_keep_their_message() {
    let env = env().await;
    let src = source(config(&env)).await;
    let (f, opened) = open_top(&*src, "hss-host-en-02.csv").await;
    env.server.harness.faults.set(FaultSpec {
        fail_next: 2,
        error_status: 503,
        retry_after: None,
        ..Default::default()
    });
    read_all(&*opened.reader, 0..f.size).await.unwrap();
    env.server.harness.faults.set(FaultSpec {
        fail_next: 1,
        error_status: 400,
        ..Default::default()
    });
    let err = read_all(&*opened.reader, 0..f.size).await.unwrap_err();
    assert!(matches!(err, SourceError::Http { status: 400, .. }), "{err}");
    assert!(err.to_string().contains("HSS.400"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn emulator_creates_export_tasks_and_checks_tokens_and_projects() {
    let env = env().await;
    let c = reqwest::Client::new();
    let base = env.server.base_url();
    let o = HuaweiEmuOptions::default();
    let login = c
        .post(format!("{base}/v3/auth/tokens?nocatalog=true"))
        .json(
            &serde_json::json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": o.user, "password": o.password, "domain": {"name": o.domain}}}},
            "scope": {"project": {"name": o.project_name}}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 201);
    let token = login.headers()["x-subject-token"].to_str().unwrap().to_string();
    assert!(token.len() > 2000, "tokens are several KB");
    let body: serde_json::Value = login.json().await.unwrap();
    assert_eq!(body["token"]["project"]["id"], DEFAULT_PROJECT_ID);
    assert!(body["token"]["expires_at"].as_str().unwrap().ends_with('Z'));

    let r = c
        .get(format!("{base}/v5/{DEFAULT_PROJECT_ID}/export-task/t-vul"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error_code"], "APIG.0301");
    let r = c
        .get(format!("{base}/v5/other-project/export-task/t-vul"))
        .header("x-auth-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let failed: serde_json::Value = c
        .get(format!("{base}/v5/{DEFAULT_PROJECT_ID}/export-task/t-fail"))
        .header("x-auth-token", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(failed["task_status"], "failure");
    assert_eq!(failed["failed_reason"], "export size exceeds the limit");

    let created: serde_json::Value = c
        .post(format!(
            "{base}/v5/{DEFAULT_PROJECT_ID}/vul/export?export_size=100&category=vul&enterprise_project_id=0"
        ))
        .header("x-auth-token", &token)
        .json(&serde_json::json!({"export_headers": [["vul_name", "Vulnerability"], ["host_num", "Hosts"]]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let task_id = created["task_id"].as_str().unwrap().to_string();
    let mut cfg = config(&env);
    cfg.export_tasks = vec![task_id.clone()];
    let src = source(cfg).await;
    let entries = top(&*src).await;
    let f = entries.iter().find(|e| e.kind == EntryKind::File).unwrap();
    assert!(f.name.ends_with(".csv"), "{}", f.name);
    let opened = src.open(f, &open_req()).await.unwrap();
    let csv = read_all(&*opened.reader, 0..f.size).await.unwrap();
    assert!(csv.starts_with(b"vul_name,host_num\n"));

    let r = c
        .get(format!("{base}/v5/{DEFAULT_PROJECT_ID}/download/{}", f.remote))
        .header("x-auth-token", &token)
        .header("range", "bytes=0-0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "Range is ignored");
    assert_eq!(
        r.headers()["content-disposition"].to_str().unwrap(),
        format!("attachment; filename=\"{}\"", f.name)
    );
    assert_eq!(r.content_length(), Some(f.size));
    let r = c
        .get(format!("{base}/v5/{DEFAULT_PROJECT_ID}/download/nope"))
        .header("x-auth-token", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let e: serde_json::Value = r.json().await.unwrap();
    assert!(e["error_msg"].as_str().unwrap().contains("does not exist"));
}

#[tokio::test(flavor = "multi_thread")]
async fn config_errors_name_the_missing_key() {
    let env = env().await;
    let mut cfg = config(&env);
    cfg.iam_endpoint = None;
    let err = build(&SourceConfig::Huawei(cfg), &ctx()).await.err().unwrap();
    assert!(err.0.contains("iam_endpoint"), "{err}");
    let mut cfg = config(&env);
    cfg.domain = None;
    let err = build(&SourceConfig::Huawei(cfg), &ctx()).await.err().unwrap();
    assert!(err.0.contains("domain"), "{err}");
    let mut cfg = config(&env);
    cfg.project_id = None;
    cfg.region = None;
    let err = build(&SourceConfig::Huawei(cfg), &ctx()).await.err().unwrap();
    assert!(err.0.contains("project_id"), "{err}");
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("pw"), "demo-password\n").unwrap();
    let mut cfg = config(&env);
    cfg.password = None;
    cfg.password_file = Some(d.path().join("pw"));
    assert!(!cfg.has_inline_secret());
    let src = source(cfg).await;
    src.root().await.unwrap();
    let toml = "[[source]]\nname='h'\ntype='huawei'\nendpoint='http://x'\nexport_task=['a']\n";
    let e = fetchfs::config::ConfigFile::parse(toml).unwrap_err();
    assert!(e.0.contains("export_task"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_config_mounts_the_demo_emulator() {
    let d = tempfile::tempdir().unwrap();
    let (server, cfg) = huawei::demo(d.path()).await.unwrap();
    let src = build(&cfg, &ctx()).await.unwrap();
    let entries = top(&*src).await;
    assert_eq!(
        names(&entries),
        ["by-id", "hss-host-en-0002.csv", "hss-vul-vul-en-0001.csv"]
    );
    let f = find(&entries, "hss-vul-vul-en-0001.csv");
    let opened = src.open(f, &open_req()).await.unwrap();
    let got = read_all(&*opened.reader, 0..f.size).await.unwrap();
    assert!(got.starts_with(b"vul_name,severity_level,host_num\n"));
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn random_reads_through_the_core_download_each_file_once() {
    let env = env().await;
    let c = fetchfs::config::Config {
        http: ctx().http,
        sources: vec![SourceConfig::Huawei(config(&env))],
        ..Default::default()
    };
    let sources = fetchfs::mount::build_sources(&c).await.unwrap();
    let core = fetchfs::fs::FsCore::new(fetchfs::fs::CoreConfig::from_config(&c), sources, true);
    let a = core.lookup(1, "hss-vul-vul-en-01.zip").await.unwrap();
    let (fh, _) = core.open(a.ino).await.unwrap();
    let want = report();
    env.server.harness.stats.reset();
    let mut rng = 0x9e3779b97f4a7c15u64;
    for _ in 0..40 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let off = rng % a.size;
        let got = core.read(fh, off, 4096).await.unwrap();
        let end = (off as usize + 4096).min(want.len());
        assert_eq!(&got[..], &want[off as usize..end], "offset {off}");
    }
    assert_eq!(
        downloads(&env.server),
        1,
        "the whole export file once, every range from it"
    );
    core.release(fh);
}

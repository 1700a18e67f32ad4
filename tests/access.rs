//! Access through real mounts: another uid is refused without `--allow-other`; with it,
//! `default_permissions` enforces the modes the mount reports (configured or the provider's);
//! and no secret (configured, or issued by the server: tokens, URL signatures) reaches the log
//! at `trace`, through mounts, reads, token renewals and refused credentials.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use fetchfs::emulate;

/// Runs `cmd` as uid/gid 65534 (nobody) with no supplementary groups.
fn as_nobody(cmd: &str) -> (bool, String, String) {
    sh(
        &format!("setpriv --reuid=65534 --regid=65534 --clear-groups -- bash -c '{cmd}'"),
        Duration::from_secs(20),
    )
}

/// The mount's tempdir is 0700; open it so that uid 65534 reaches the mountpoint and any
/// refusal comes from the mount itself.
fn open_path_to(m: &MountGuard) {
    std::fs::set_permissions(m.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn http_fixture(rt: &tokio::runtime::Runtime) -> (tempfile::TempDir, emulate::Server) {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("hello.txt"), b"hello access\n").unwrap();
    let (server, _) = serve_http(rt, data.path());
    (data, server)
}

#[test]
fn without_allow_other_another_uid_gets_eacces_and_with_it_reads() {
    if !can_mount() {
        return;
    }
    let rt = runtime();
    let (_data, server) = http_fixture(&rt);
    let url = format!("{}/", server.base_url());
    {
        let m = MountGuard::start(&[&url]);
        open_path_to(&m);
        let mnt = m.mnt().display().to_string();
        // The control: uid 65534 reaches the directory holding the mountpoint.
        let (ok, _, e) = as_nobody(&format!("ls {}", m.dir.path().display()));
        assert!(ok, "uid 65534 cannot reach the mount's parent: {e}");
        for cmd in [
            format!("ls {mnt}"),
            format!("stat {mnt}/hello.txt"),
            format!("cat {mnt}/hello.txt"),
        ] {
            let (ok, out, e) = as_nobody(&cmd);
            assert!(!ok && e.contains("Permission denied"), "{cmd} as uid 65534: {out} {e}");
        }
        // The mounting user still reads.
        assert_eq!(std::fs::read(m.path("hello.txt")).unwrap(), b"hello access\n");
    }
    {
        // auto_unmount (allow_root under the hood) keeps other users out the same way.
        let m = MountGuard::start(&[&url, "-o", "auto_unmount"]);
        open_path_to(&m);
        let (ok, out, e) = as_nobody(&format!("cat {}/hello.txt", m.mnt().display()));
        assert!(!ok && e.contains("Permission denied"), "auto_unmount: {out} {e}");
        assert_eq!(std::fs::read(m.path("hello.txt")).unwrap(), b"hello access\n");
    }
    {
        let m = MountGuard::start(&[&url, "--allow-other"]);
        open_path_to(&m);
        let (ok, out, e) = as_nobody(&format!("ls {0} && cat {0}/hello.txt", m.mnt().display()));
        assert!(ok, "with --allow-other: {e}");
        assert_eq!(out, "hello.txt\nhello access\n");
    }
}

#[test]
fn with_allow_other_the_modes_the_mount_reports_are_enforced() {
    if !can_mount() {
        return;
    }
    let rt = runtime();
    // Configured modes (a plain HTTP source reports none): file_mode 0440 refuses "other".
    let (_data, server) = http_fixture(&rt);
    let conf = tempfile::tempdir().unwrap();
    let cfg = conf.path().join("fetchfs.toml");
    std::fs::write(
        &cfg,
        format!(
            "[mount]\nfile_mode = \"0440\"\n\n[[source]]\nname = \"web\"\ntype = \"http\"\nurl = \"{}/\"\n",
            server.base_url()
        ),
    )
    .unwrap();
    {
        let m = MountGuard::start(&["--config", &cfg.display().to_string(), "--allow-other"]);
        open_path_to(&m);
        let f = m.path("web/hello.txt").display().to_string();
        let (ok, out, _) = as_nobody(&format!("stat -c %a {f}"));
        assert!(ok && out.trim() == "440", "{out}");
        let (ok, _, e) = as_nobody(&format!("cat {f}"));
        assert!(
            !ok && e.contains("Permission denied"),
            "0440 file read by uid 65534: {e}"
        );
        // --gid 65534 makes uid 65534's group the file's group: the g+r bit now lets it read.
        drop(m);
        let m = MountGuard::start(&[
            "--config",
            &cfg.display().to_string(),
            "--allow-other",
            "--gid",
            "65534",
        ]);
        open_path_to(&m);
        let (ok, out, e) = as_nobody(&format!("cat {}", m.path("web/hello.txt").display()));
        assert!(ok && out == "hello access\n", "group read: {e}");
    }

    // A provider that reports modes (Onedata posixPermissions): 0600 becomes 0400 (write bits
    // cleared) and is refused to uid 65534, 0644 becomes 0444 and is readable.
    let data = tempfile::tempdir().unwrap();
    let space = data.path().join("space1");
    std::fs::create_dir_all(&space).unwrap();
    std::fs::write(space.join("private.txt"), b"owner only\n").unwrap();
    std::fs::write(space.join("public.txt"), b"for everyone\n").unwrap();
    std::fs::set_permissions(space.join("private.txt"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(space.join("public.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let emu = emulate::onedata::router(data.path(), emulate::onedata::OnedataEmuOptions::default());
    let server = rt.block_on(emulate::serve(emu.router, 0, emu.harness)).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "[[source]]\nname = \"od\"\ntype = \"onedata\"\nendpoint = \"{}\"\ntoken_file = \"{}\"\n",
            server.base_url(),
            conf.path().join("token").display()
        ),
    )
    .unwrap();
    std::fs::write(conf.path().join("token"), "demo-token").unwrap();
    let m = MountGuard::start(&["--config", &cfg.display().to_string(), "--allow-other"]);
    open_path_to(&m);
    let private = m.path("od/space1/private.txt").display().to_string();
    let public = m.path("od/space1/public.txt").display().to_string();
    let (ok, out, e) = as_nobody(&format!("stat -c %a {private} {public}"));
    assert!(ok && out == "400\n444\n", "{out} {e}");
    let (ok, _, e) = as_nobody(&format!("cat {private}"));
    assert!(
        !ok && e.contains("Permission denied"),
        "0400 file read by uid 65534: {e}"
    );
    let (ok, out, e) = as_nobody(&format!("cat {public}"));
    assert!(ok && out == "for everyone\n", "{e}");
    // Root reads both (default_permissions grants root everything but exec).
    assert_eq!(std::fs::read(&private).unwrap(), b"owner only\n");
}

/// Config text of one `[[source]]` per provider, with `secret` substituted where each takes
/// its credential. (name, TOML, the secrets it holds).
struct Provider {
    name: &'static str,
    toml: String,
    secrets: Vec<String>,
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn providers(urls: &[String; 5], wrong: bool) -> Vec<Provider> {
    let w = |s: &str| if wrong { format!("WRONG-{s}") } else { s.to_string() };
    let (b2_key, od_tok, smh_sec, doris_tok, doris_pw, hw_pw) = (
        w(emulate::b2::DEFAULT_APPLICATION_KEY),
        w("od-secret-7f3a9c"),
        w("smh-secret-5b1e"),
        w("doris-tok-a8c2"),
        w("doris-pw-91fe"),
        w("hw-pw-c4d7"),
    );
    let hw = emulate::huawei::HuaweiEmuOptions::default();
    vec![
        Provider {
            name: "b2",
            toml: format!(
                "[[source]]\nname = \"b2\"\ntype = \"b2\"\nendpoint = \"{}\"\nkey_id = \"{}\"\napplication_key = \"{b2_key}\"\nversions = true\n",
                urls[0],
                emulate::b2::DEFAULT_KEY_ID
            ),
            secrets: vec![
                b2_key.clone(),
                b64(&format!("{}:{b2_key}", emulate::b2::DEFAULT_KEY_ID)),
            ],
        },
        Provider {
            name: "onedata",
            toml: format!(
                "[[source]]\nname = \"onedata\"\ntype = \"onedata\"\nendpoint = \"{}\"\ntoken = \"{od_tok}\"\n",
                urls[1]
            ),
            secrets: vec![od_tok],
        },
        Provider {
            name: "smh",
            toml: format!(
                "[[source]]\nname = \"smh\"\ntype = \"smh\"\nendpoint = \"{}\"\nlibrary_id = \"{}\"\nlibrary_secret = \"{smh_sec}\"\nversions = true\n",
                urls[2],
                emulate::smh::SmhEmuOptions::default().library_id
            ),
            secrets: vec![smh_sec],
        },
        Provider {
            name: "doris",
            toml: format!(
                "[[source]]\nname = \"doris\"\ntype = \"doris\"\nendpoint = \"{}\"\ntoken = \"{doris_tok}\"\nuser = \"root\"\npassword = \"{doris_pw}\"\n",
                urls[3]
            ),
            secrets: vec![doris_tok, doris_pw.clone(), b64(&format!("root:{doris_pw}"))],
        },
        Provider {
            name: "huawei",
            toml: format!(
                "[[source]]\nname = \"huawei\"\ntype = \"huawei\"\nendpoint = \"{0}\"\niam_endpoint = \"{0}\"\ndomain = \"{1}\"\nuser = \"{2}\"\npassword = \"{hw_pw}\"\nregion = \"{3}\"\nenterprise_project_id = \"all_granted_eps\"\nexport_tasks = [\"task-vul-0001\", \"task-host-0002\", \"task-running-0003\", \"task-failed-0004\"]\n",
                urls[4], hw.domain, hw.user, hw.project_name
            ),
            secrets: vec![hw_pw],
        },
    ]
}

/// Every run of at least `min` lowercase hex digits in `text`.
fn hex_runs(text: &str, min: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        while i < b.len() && (b[i].is_ascii_digit() || (b'a'..=b'f').contains(&b[i])) {
            i += 1;
        }
        if i - start >= min {
            out.push(&text[start..i]);
        }
        i = i.max(start + 1);
    }
    out
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn no_secret_or_issued_token_or_url_signature_reaches_a_trace_log() {
    if !can_mount() {
        return;
    }
    let rt = runtime();
    let root = tempfile::tempdir().unwrap();
    let dir = |p: &str| {
        let d = root.path().join(p);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    // Each provider's demo tree, then its emulator with our secrets on that tree.
    let (b2d, odd, smhd, dord, hwd) = (dir("b2"), dir("od"), dir("smh"), dir("doris"), dir("hw"));
    rt.block_on(async {
        for d in [&b2d, &odd, &smhd, &dord, &hwd] {
            let n = d.file_name().unwrap().to_str().unwrap().to_string();
            let (server, _) = match n.as_str() {
                "b2" => emulate::b2::demo(d).await,
                "od" => emulate::onedata::demo(d).await,
                "smh" => emulate::smh::demo(d).await,
                "doris" => emulate::doris::demo(d).await,
                _ => emulate::huawei::demo(d).await,
            }
            .unwrap();
            server.stop().await;
        }
    });
    // The demo's B2 bucket lives under <dir>/<account or bucket>: serve the same root.
    let b2 = emulate::b2::router(&b2d, emulate::b2::B2EmuOptions::default());
    let b2ctl = b2.control.clone();
    let od = emulate::onedata::router(
        &odd,
        emulate::onedata::OnedataEmuOptions {
            token: "od-secret-7f3a9c".into(),
            ..Default::default()
        },
    );
    let smh = emulate::smh::router(
        &smhd,
        emulate::smh::SmhEmuOptions {
            library_secret: "smh-secret-5b1e".into(),
            ..Default::default()
        },
    );
    let smhctl = smh.control.clone();
    let doris = emulate::doris::router(
        &dord,
        emulate::doris::DorisEmuOptions {
            token: "doris-tok-a8c2".into(),
            user: "root".into(),
            password: "doris-pw-91fe".into(),
            ..Default::default()
        },
    );
    let hw = emulate::huawei::router(
        &hwd,
        emulate::huawei::HuaweiEmuOptions {
            password: "hw-pw-c4d7".into(),
            ..Default::default()
        },
    );
    let serve = |r, h| rt.block_on(emulate::serve(r, 0, h)).unwrap();
    let servers = [
        serve(b2.router, b2.harness),
        serve(od.router, od.harness),
        serve(smh.router, smh.harness),
        serve(doris.router, doris.harness),
        serve(hw.router.clone(), hw.harness.clone()),
    ];
    let urls = servers.each_ref().map(|s| s.base_url());
    let conf = tempfile::tempdir().unwrap();
    let mut secrets: Vec<String> = Vec::new();
    let mut logs = String::new();

    // 1. Every provider in one mount at trace level: list everything, read everything, with
    // B2's token expiring every 3 requests and SMH and Huawei tokens expired between passes.
    let good = providers(&urls, false);
    let cfg = conf.path().join("all.toml");
    write_private(
        &cfg,
        &good.iter().map(|p| p.toml.as_str()).collect::<Vec<_>>().join("\n"),
    );
    secrets.extend(good.iter().flat_map(|p| p.secrets.clone()));
    b2ctl.update(|o| o.token_max_requests = Some(3));
    let m = MountGuard::start_env(
        &["--config", &cfg.display().to_string(), "--ttl", "1s"],
        &[("FETCHFS_LOG", "trace")],
    );
    // Error paths log too: every server answers some requests 503 (retried) and cuts some
    // bodies mid-stream (resumed) during the first pass.
    for s in &servers {
        s.harness.faults.set(emulate::FaultSpec {
            fail_every: 25,
            error_status: 503,
            reset_after: Some(5000),
            reset_count: 2,
            ..Default::default()
        });
    }
    let pass = |label: &str| {
        let (ok, out, e) = sh(
            &format!(
                "cd {} && ls -laR . >/dev/null && find . -type f -print0 | xargs -0 -n1 sh -c 'cat \"$0\" > /dev/null || echo \"FAILED $0\"'",
                m.mnt().display()
            ),
            Duration::from_secs(60),
        );
        assert!(ok && !out.contains("FAILED"), "{label}: {out} {e}\n{}", m.log_text());
    };
    pass("first pass");
    for s in &servers {
        s.harness.faults.set(emulate::FaultSpec::default());
    }
    let (smh_tokens, hw_tokens) = (smhctl.tokens_issued(), hw.tokens_issued());
    smhctl.expire_tokens();
    smhctl.expire_signed_urls();
    hw.expire_tokens();
    std::thread::sleep(Duration::from_millis(1100)); // past the 1 s TTL: everything is listed again
    pass("second pass, after the tokens expired");
    assert!(smhctl.tokens_issued() > smh_tokens, "no SMH token renewal");
    assert!(hw.tokens_issued() > hw_tokens, "no Huawei token renewal");
    let b2_auths = servers[0].harness.stats.count(|k| k.contains("b2_authorize_account"));
    assert!(
        b2_auths >= 2,
        "no B2 re-authorization: {:?}",
        servers[0].harness.stats.snapshot()
    );
    logs.push_str(&m.log_text());
    drop(m);

    // 2. Each provider with a wrong credential: the mount is refused, and the log of that
    // refusal holds neither the wrong secret nor anything derived from it.
    for p in providers(&urls, true) {
        let cfg = conf.path().join(format!("bad-{}.toml", p.name));
        write_private(&cfg, &p.toml);
        let mnt = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("timeout")
            .args(["60", BIN, "mount", "--config"])
            .arg(&cfg)
            .arg(mnt.path())
            .arg("--foreground")
            .env("FETCHFS_LOG", "trace")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "{} mounted with a wrong credential", p.name);
        assert!(!is_mounted(mnt.path()));
        logs.push_str(&err);
        secrets.extend(p.secrets);
    }

    eprintln!(
        "trace log: {} lines, {} secrets checked",
        logs.lines().count(),
        secrets.len()
    );
    assert!(
        logs.lines().count() > 1000,
        "the trace log is too short to mean anything"
    );
    assert!(
        logs.contains("retrying"),
        "the injected faults left no trace in the log"
    );
    for s in &secrets {
        assert!(!logs.contains(s.as_str()), "secret '{s}' in the trace log");
    }
    // Credentials the servers issued: B2 tokens (4_emu...), Huawei X-Subject-Tokens (MIIT +
    // hex), SMH access tokens (32 hex digits) and COS URL signatures.
    for pat in ["4_emu", "MIIT", "q-signature", "access_token="] {
        let at = logs.find(pat);
        assert!(
            at.is_none(),
            "'{pat}' in the trace log: ...{}...",
            &logs[at.unwrap()..(at.unwrap() + 120).min(logs.len())]
        );
    }
    if let Ok(p) = std::env::var("FETCHFS_KEEP_LOG") {
        std::fs::write(p, &logs).unwrap();
    }
    // Long hex runs are legitimate in places (Onedata file ids, a service id in an error body);
    // one next to a credential's name is a leaked token or signature.
    for run in hex_runs(&logs, 16) {
        let at = run.as_ptr() as usize - logs.as_ptr() as usize;
        let before = String::from_utf8_lossy(&logs.as_bytes()[at.saturating_sub(24)..at]).to_ascii_lowercase();
        assert!(
            !["token", "signature", "secret", "authorization", "password", "key="]
                .iter()
                .any(|w| before.contains(w)),
            "a credential-like value in the trace log: ...{before}{run}"
        );
    }
}

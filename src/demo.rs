//! `fetchfs demo`: the first thing a newcomer runs. Generates sample files, serves them with
//! every built-in emulator on 127.0.0.1, mounts all of them side by side, prints what to try,
//! and cleans everything up on Ctrl-C (or right away with `--once`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, SourceConfig};
use crate::emulate::Server;
use crate::fs::{CoreConfig, FsCore};
use crate::mount::{MountError, Signals, after_mount, build_sources, mount_core, wait_for_end};

/// Writes the plain-HTTP sample tree: a few text files, nested directories, binary files.
pub fn write_http_samples(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("docs/guides"))?;
    std::fs::create_dir_all(dir.join("data"))?;
    std::fs::write(
        dir.join("hello.txt"),
        "Hello from fetchfs! This file came over HTTP through a block cache.\n",
    )?;
    std::fs::write(
        dir.join("docs/README.md"),
        "# Sample docs\n\nServed by `fetchfs emulate http`.\n",
    )?;
    std::fs::write(
        dir.join("docs/guides/mounting.txt"),
        "fetchfs mount http://host/dir/ /mnt/x\n",
    )?;
    std::fs::write(
        dir.join("docs/name with spaces & ümlauts.txt"),
        "odd names survive percent-encoding\n",
    )?;
    let mut state = 0x2545F4914F6CDD1Du64;
    for (name, size) in [("data/small.bin", 100_000usize), ("data/sample-16MiB.bin", 16 << 20)] {
        let mut buf = vec![0u8; size];
        for chunk in buf.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let b = state.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
        std::fs::write(dir.join(name), buf)?;
    }
    Ok(())
}

/// Runs the demo until Ctrl-C (or once).
pub fn run(mountpoint: &Path, once: bool) -> Result<(), MountError> {
    let data = std::env::temp_dir().join(format!("fetchfs-demo-data-{}", std::process::id()));
    let result = run_inner(mountpoint, once, &data);
    let _ = std::fs::remove_dir_all(&data);
    result
}

fn run_inner(mountpoint: &Path, once: bool, data: &Path) -> Result<(), MountError> {
    std::fs::create_dir_all(mountpoint)
        .map_err(|e| MountError(format!("cannot create mountpoint {}: {e}", mountpoint.display())))?;
    let mountpoint = crate::mount::check_mountpoint(mountpoint)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .map_err(|e| MountError(format!("cannot start the runtime: {e}")))?;
    let result = rt.block_on(async {
        let signals = Signals::install()?;
        let (servers, sources) = start_emulators(data).await?;
        let cfg = Config {
            sources,
            ..Config::default()
        };
        let mounted = build_sources(&cfg).await?;
        let core = FsCore::new(CoreConfig::from_config(&cfg), mounted, false);
        let running = mount_core(core, &rt, &mountpoint, &cfg, "fetchfs:demo")?;
        after_mount(&mountpoint, &cfg).await?;
        let names: Vec<String> = cfg.sources.iter().map(|s| s.name().to_string()).collect();
        print_intro(&mountpoint, &servers, &names);
        if once {
            let mp = mountpoint.clone();
            let listing = tokio::task::spawn_blocking(move || list_tree(&mp))
                .await
                .unwrap_or_default();
            let _ = writeln!(std::io::stdout(), "{listing}");
            // Same path as Ctrl-C: unmount through a signal to ourselves.
            // SAFETY: raising SIGTERM at our own process, which the handler below catches.
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                unsafe { libc::raise(libc::SIGTERM) };
            });
        } else {
            let _ = writeln!(std::io::stdout(), "Press Ctrl-C to unmount and stop the emulators.");
        }
        let _ = std::io::stdout().flush();
        let r = wait_for_end(running, &mountpoint, signals).await;
        for s in servers {
            s.1.stop().await;
        }
        r
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    if result.is_ok() {
        let _ = writeln!(std::io::stdout(), "Unmounted {}.", mountpoint.display());
    }
    result
}

async fn start_emulators(data: &Path) -> Result<(Vec<(String, Server)>, Vec<SourceConfig>), MountError> {
    let mut servers = Vec::new();
    let mut sources = Vec::new();
    let http_root = data.join("http");
    write_http_samples(&http_root).map_err(|e| MountError(format!("cannot write sample files: {e}")))?;
    let emu = crate::emulate::http::router(&http_root);
    let server = crate::emulate::serve(emu.router, 0, emu.harness)
        .await
        .map_err(|e| MountError(format!("cannot start the HTTP emulator: {e}")))?;
    let url = format!("{}/", server.base_url());
    sources.push(SourceConfig::Http(crate::provider::http::HttpConfig::from_url(
        &url, "http",
    )?));
    servers.push(("http".to_string(), server));
    type DemoFn = fn(
        &Path,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<(Server, SourceConfig)>> + Send + '_>,
    >;
    let providers: [(&str, DemoFn); 5] = [
        ("b2", |d| Box::pin(crate::emulate::b2::demo(d))),
        ("onedata", |d| Box::pin(crate::emulate::onedata::demo(d))),
        ("smh", |d| Box::pin(crate::emulate::smh::demo(d))),
        ("doris", |d| Box::pin(crate::emulate::doris::demo(d))),
        ("huawei", |d| Box::pin(crate::emulate::huawei::demo(d))),
    ];
    for (name, start) in providers {
        let dir = data.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| MountError(format!("cannot create {}: {e}", dir.display())))?;
        let (server, source) = start(&dir)
            .await
            .map_err(|e| MountError(format!("cannot start the {name} emulator: {e}")))?;
        servers.push((name.to_string(), server));
        sources.push(source);
    }
    Ok((servers, sources))
}

fn print_intro(mp: &Path, servers: &[(String, Server)], names: &[String]) {
    // A closed stdout (`fetchfs demo | head`) must not abort the demo with a mount left behind.
    let mut o = std::io::stdout();
    let _ = writeln!(
        o,
        "fetchfs demo: {} emulator(s) on 127.0.0.1, mounted read-only at {}",
        servers.len(),
        mp.display()
    );
    for (name, s) in servers {
        let _ = writeln!(o, "  {:<8} {}  ->  {}/{}", name, s.base_url(), mp.display(), name);
    }
    let first = names.first().cloned().unwrap_or_default();
    let _ = writeln!(o);
    let _ = writeln!(o, "Try, in another terminal:");
    let _ = writeln!(o, "  ls -l {}/{first}", mp.display());
    let _ = writeln!(o, "  cat {}/{first}/hello.txt", mp.display());
    let _ = writeln!(
        o,
        "  cp -r {}/{first}/data /tmp/copy && md5sum /tmp/copy/*",
        mp.display()
    );
    let _ = writeln!(o, "  getfattr -d {}/{first}/hello.txt", mp.display());
}

/// `find`-like listing of the mount (for `--once`).
fn list_tree(root: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![PathBuf::from(root)];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        let mut items: Vec<_> = rd.flatten().collect();
        items.sort_by_key(|e| e.file_name());
        for e in items {
            let p = e.path();
            let meta = e.metadata();
            let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
            match meta {
                Ok(m) if m.is_dir() => {
                    out.push_str(&format!("{rel}/\n"));
                    stack.push(p);
                }
                Ok(m) => out.push_str(&format!("{rel}  ({} bytes)\n", m.len())),
                Err(err) => out.push_str(&format!("{rel}  (error: {err})\n")),
            }
        }
    }
    out
}

//! The `fetchfs` command.

use std::process::ExitCode;

use clap::Parser;
use fetchfs::cli::{Cli, Command, EmulateProvider};

fn init_logging(cli: &Cli, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("FETCHFS_LOG")
        .ok()
        .or_else(|| cli.log_level.clone())
        .unwrap_or_else(|| default.to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| {
        eprintln!("fetchfs: ignoring bad log filter '{filter}', using '{default}'");
        EnvFilter::new(default)
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    if let Some(path) = &cli.log_file {
        match std::fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => {
                builder.with_ansi(false).with_writer(std::sync::Mutex::new(f)).init();
                return;
            }
            Err(e) => eprintln!(
                "fetchfs: cannot open log file {}: {e}; logging to stderr",
                path.display()
            ),
        }
    }
    builder.with_writer(std::io::stderr).init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), String> = match &cli.command {
        Command::Mount(args) => {
            init_logging(&cli, "info");
            mount(args)
        }
        Command::Demo(args) => {
            init_logging(&cli, "warn");
            fetchfs::demo::run(&args.mountpoint, args.once).map_err(|e| e.to_string())
        }
        Command::Emulate(args) => {
            init_logging(&cli, "info");
            emulate(&args.provider)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("fetchfs: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn mount(args: &fetchfs::cli::MountArgs) -> Result<(), String> {
    let (url, mountpoint) = args.split_targets().map_err(|e| e.to_string())?;
    let _ = url;
    let (config, single_root, fsname) = args.to_config().map_err(|e| e.to_string())?;
    if !args.foreground {
        // Check what can be checked before detaching, so the common mistakes print here.
        fetchfs::mount::check_mountpoint(&mountpoint).map_err(|e| e.to_string())?;
        let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        return fetchfs::mount::run_background(&argv).map_err(|e| e.to_string());
    }
    let req = fetchfs::mount::MountRequest {
        config,
        mountpoint,
        single_root,
        fsname,
    };
    fetchfs::mount::run_foreground(req).map_err(|e| e.to_string())
}

fn emulate(p: &EmulateProvider) -> Result<(), String> {
    let (name, port, router, harness) = p.build()?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let server = fetchfs::emulate::serve(router, port, harness)
            .await
            .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
        println!(
            "fetchfs {name} emulator serving on {}/ (Ctrl-C to stop)",
            server.base_url()
        );
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        server.stop().await;
        Ok(())
    })
}

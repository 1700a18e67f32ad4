//! The `fetchfs` command.

use std::process::ExitCode;

use clap::Parser;
use fetchfs::cli::{Cli, Command, EmulateProvider};

fn init_logging(cli: &Cli, default: &str) {
    fetchfs::logging::init_for(&cli.log_level, &cli.log_file, default);
}

fn main() -> ExitCode {
    // As /sbin/mount.fuse.fetchfs (or `fetchfs mount-helper`), mount(8)'s arguments become a
    // `fetchfs mount` command line; `argv` is also what a background mount re-executes.
    let argv = match fetchfs::helper::effective_args(std::env::args_os().collect()) {
        Ok(Some(argv)) => argv,
        Ok(None) => return ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("fetchfs: {msg}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse_from(&argv);
    let result: Result<(), String> = match &cli.command {
        Command::Mount(args) => {
            init_logging(&cli, "info");
            mount(args, &argv[1..])
        }
        Command::Demo(args) => {
            init_logging(&cli, "warn");
            fetchfs::demo::run(&args.mountpoint, args.once).map_err(|e| e.to_string())
        }
        Command::Emulate(args) => {
            init_logging(&cli, "info");
            emulate(&args.provider)
        }
        Command::Check(args) => {
            init_logging(&cli, "warn");
            fetchfs::check::run(args)
        }
        Command::MountHelper(_) => Err("mount-helper needs CONFIG|URL MOUNTPOINT [-o OPTIONS]".to_string()),
        Command::Completions(args) => {
            fetchfs::manual::completions(args.shell, &mut std::io::stdout());
            Ok(())
        }
        Command::Cache(args) => {
            init_logging(&cli, "warn");
            fetchfs::cache_cmd::run(args)
        }
        Command::Man(args) => fetchfs::manual::man(args.subcommand.as_deref(), &mut std::io::stdout()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("fetchfs: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn mount(args: &fetchfs::cli::MountArgs, argv: &[std::ffi::OsString]) -> Result<(), String> {
    let (_, mountpoint) = args.split_targets().map_err(|e| e.to_string())?;
    let (config, single_root, fsname) = args.to_config().map_err(|e| e.to_string())?;
    if !args.foreground {
        // Check what can be checked before detaching, so the common mistakes print here.
        fetchfs::mount::check_mountpoint(&mountpoint).map_err(|e| e.to_string())?;
        return fetchfs::mount::run_background(argv).map_err(|e| e.to_string());
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
    if let EmulateProvider::Proxy(args) = p {
        return fetchfs::emulate::proxy::run(args);
    }
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

//! Where the daemon's log lines go.
//!
//! * `--log-file FILE`: appended there.
//! * In the foreground (a terminal, or systemd with `--foreground`): stderr, which systemd
//!   already sends to the journal.
//! * In the background (`fetchfs mount` without `--foreground`, and every mount made through
//!   mount(8) or fstab), stderr is /dev/null, so lines go to journald with
//!   `SYSLOG_IDENTIFIER=fetchfs` when its socket exists, else to syslog (`/dev/log`, facility
//!   daemon, ident `fetchfs`), else nowhere.
//!
//! The filter is `FETCHFS_LOG`, else `--log-level`, else the command's default. Colours are
//! used only when stderr is a terminal.

use std::io::Write;
use std::path::{Path, PathBuf};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// journald's native socket.
const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";
/// The syslog socket glibc's syslog(3) writes to.
const SYSLOG_SOCKET: &str = "/dev/log";

/// Installs the global subscriber. `background`: this process is the detached daemon.
pub fn init(level: Option<&str>, log_file: Option<&Path>, default: &str, background: bool) {
    let spec = std::env::var("FETCHFS_LOG")
        .ok()
        .or_else(|| level.map(str::to_string))
        .unwrap_or_else(|| default.to_string());
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| {
        eprintln!("fetchfs: ignoring bad log filter '{spec}', using '{default}'");
        EnvFilter::new(default)
    });
    let fmt = || tracing_subscriber::fmt::layer().with_target(false);
    if let Some(path) = log_file {
        match std::fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => {
                let layer = fmt().with_ansi(false).with_writer(std::sync::Mutex::new(f));
                tracing_subscriber::registry().with(filter).with(layer).init();
                return;
            }
            Err(e) => eprintln!(
                "fetchfs: cannot open log file {}: {e}; logging to stderr",
                path.display()
            ),
        }
    }
    if !background {
        // Colours only for a terminal: under systemd stderr is the journal.
        use std::io::IsTerminal;
        let layer = fmt()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr);
        tracing_subscriber::registry().with(filter).with(layer).init();
        return;
    }
    match system_log() {
        SystemLog::Journald(layer) => tracing_subscriber::registry().with(filter).with(layer).init(),
        SystemLog::Syslog => {
            let layer = fmt().with_ansi(false).without_time().with_writer(Syslog::open());
            tracing_subscriber::registry().with(filter).with(layer).init();
        }
        // Nobody listens: stay silent rather than write to a closed stderr.
        SystemLog::None => {}
    }
}

enum SystemLog {
    Journald(tracing_journald::Layer),
    Syslog,
    None,
}

fn system_log() -> SystemLog {
    if Path::new(JOURNALD_SOCKET).exists()
        && let Ok(layer) = tracing_journald::layer()
    {
        return SystemLog::Journald(layer.with_syslog_identifier("fetchfs".to_string()));
    }
    if Path::new(SYSLOG_SOCKET).exists() {
        return SystemLog::Syslog;
    }
    SystemLog::None
}

/// Writes each formatted event as one syslog(3) message at the event's level.
#[derive(Clone, Copy)]
struct Syslog;

impl Syslog {
    fn open() -> Syslog {
        // SAFETY: the ident is a static C string (openlog keeps the pointer).
        unsafe { libc::openlog(c"fetchfs".as_ptr(), libc::LOG_PID | libc::LOG_NDELAY, libc::LOG_DAEMON) };
        Syslog
    }
}

/// One event being formatted; sent when dropped.
struct SyslogLine {
    priority: libc::c_int,
    buf: Vec<u8>,
}

impl Write for SyslogLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine {
    fn drop(&mut self) {
        let text: Vec<u8> = self.buf.iter().copied().filter(|b| *b != 0).collect();
        let text = text.trim_ascii_end();
        if text.is_empty() {
            return;
        }
        if let Ok(msg) = std::ffi::CString::new(text) {
            // SAFETY: a "%s" format with one NUL-terminated string argument.
            unsafe { libc::syslog(self.priority, c"%s".as_ptr(), msg.as_ptr()) };
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine;

    fn make_writer(&'a self) -> SyslogLine {
        SyslogLine {
            priority: libc::LOG_INFO,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> SyslogLine {
        let priority = match *meta.level() {
            tracing::Level::ERROR => libc::LOG_ERR,
            tracing::Level::WARN => libc::LOG_WARNING,
            tracing::Level::INFO => libc::LOG_INFO,
            _ => libc::LOG_DEBUG,
        };
        SyslogLine {
            priority,
            buf: Vec::new(),
        }
    }
}

/// Whether this process is the detached daemon of a background mount.
pub fn is_background_daemon() -> bool {
    std::env::var_os(crate::mount::READY_FD_ENV).is_some()
}

/// For callers that keep the path as `PathBuf`.
pub fn init_for(level: &Option<String>, log_file: &Option<PathBuf>, default: &str) {
    init(level.as_deref(), log_file.as_deref(), default, is_background_daemon());
}

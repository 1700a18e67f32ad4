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
//! Either way the message is the same formatted line as on stderr (fields included), so
//! `journalctl -t fetchfs` shows `operation failed op="open" path=... errno=13 error=...` and
//! not just "operation failed". That is why journald is spoken to here (its native protocol for
//! a few text fields is one datagram) rather than through `tracing-journald`, which keeps
//! the fields out of `MESSAGE`.
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

/// Caps for dependencies whose logs drown or repeat the daemon's own; a filter that names the
/// dependency keeps the user's choice. html5ever (the autoindex tokenizer) logs every step at
/// debug and trace. fuser announces the mount we already announce, and warns "Failed to umount
/// filesystem" after every `umount` from outside (it tries again on the way out); its errors
/// still show.
const QUIET: [(&str, &str); 2] = [("html5ever", "info"), ("fuser", "error")];

fn quiet_dependencies(mut spec: String) -> String {
    for (target, level) in QUIET {
        if !spec.contains(target) {
            spec = format!("{spec},{target}={level}");
        }
    }
    spec
}

/// Installs the global subscriber. `background`: this process is the detached daemon.
pub fn init(level: Option<&str>, log_file: Option<&Path>, default: &str, background: bool) {
    let spec = std::env::var("FETCHFS_LOG")
        .ok()
        .or_else(|| level.map(str::to_string))
        .unwrap_or_else(|| default.to_string());
    let spec = quiet_dependencies(spec);
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
        SystemLog::Journald(journal) => {
            let layer = fmt().with_ansi(false).without_time().with_writer(journal);
            tracing_subscriber::registry().with(filter).with(layer).init();
        }
        SystemLog::Syslog => {
            let layer = fmt().with_ansi(false).without_time().with_writer(Syslog::open());
            tracing_subscriber::registry().with(filter).with(layer).init();
        }
        // Nobody listens: stay silent rather than write to a closed stderr.
        SystemLog::None => {}
    }
}

enum SystemLog {
    Journald(Journald),
    Syslog,
    None,
}

fn system_log() -> SystemLog {
    if Path::new(JOURNALD_SOCKET).exists()
        && let Ok(sock) = std::os::unix::net::UnixDatagram::unbound()
    {
        return SystemLog::Journald(Journald {
            sock: std::sync::Arc::new(sock),
        });
    }
    if Path::new(SYSLOG_SOCKET).exists() {
        return SystemLog::Syslog;
    }
    SystemLog::None
}

/// Sends each formatted event to journald as one datagram of the native protocol:
/// `MESSAGE` (length-prefixed, so any byte is allowed), `PRIORITY` and `SYSLOG_IDENTIFIER`.
#[derive(Clone)]
struct Journald {
    sock: std::sync::Arc<std::os::unix::net::UnixDatagram>,
}

/// Longest message sent: journald refuses datagrams above its socket buffer, and a log line
/// longer than this is a bug to truncate, not to lose.
const MAX_JOURNAL_MESSAGE: usize = 48 * 1024;

/// One event being formatted for journald; sent when dropped.
struct JournalLine {
    sock: std::sync::Arc<std::os::unix::net::UnixDatagram>,
    priority: u8,
    buf: Vec<u8>,
}

impl Write for JournalLine {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for JournalLine {
    fn drop(&mut self) {
        let msg = self.buf.trim_ascii_end();
        if msg.is_empty() {
            return;
        }
        let msg = &msg[..msg.len().min(MAX_JOURNAL_MESSAGE)];
        let mut d = Vec::with_capacity(msg.len() + 64);
        d.extend_from_slice(b"MESSAGE\n");
        d.extend_from_slice(&(msg.len() as u64).to_le_bytes());
        d.extend_from_slice(msg);
        d.extend_from_slice(format!("\nPRIORITY={}\nSYSLOG_IDENTIFIER=fetchfs\n", self.priority).as_bytes());
        // A full or absent journal must never block or fail an operation: drop the line.
        let _ = self.sock.send_to(&d, JOURNALD_SOCKET);
    }
}

impl<'a> MakeWriter<'a> for Journald {
    type Writer = JournalLine;

    fn make_writer(&'a self) -> JournalLine {
        JournalLine {
            sock: self.sock.clone(),
            priority: libc::LOG_INFO as u8,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> JournalLine {
        JournalLine {
            sock: self.sock.clone(),
            priority: priority(meta.level()) as u8,
            buf: Vec::new(),
        }
    }
}

/// The syslog priority of a tracing level.
fn priority(level: &tracing::Level) -> libc::c_int {
    match *level {
        tracing::Level::ERROR => libc::LOG_ERR,
        tracing::Level::WARN => libc::LOG_WARNING,
        tracing::Level::INFO => libc::LOG_INFO,
        _ => libc::LOG_DEBUG,
    }
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
        SyslogLine {
            priority: priority(meta.level()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noisy_dependencies_are_capped_unless_the_filter_names_them() {
        assert_eq!(quiet_dependencies("trace".into()), "trace,html5ever=info,fuser=error");
        assert_eq!(
            quiet_dependencies("fetchfs=debug".into()),
            "fetchfs=debug,html5ever=info,fuser=error"
        );
        assert_eq!(
            quiet_dependencies("debug,html5ever=trace,fuser=debug".into()),
            "debug,html5ever=trace,fuser=debug"
        );
        // The result is still a filter tracing accepts.
        assert!(EnvFilter::try_new(quiet_dependencies("warn".into())).is_ok());
    }
}

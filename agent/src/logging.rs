//! The agent's log (stderr; the audit trail is elsewhere): plain text for a person, one JSON
//! object per line for a collector (`--log-format json`), and, when stderr is the journal
//! (systemd says so in `$JOURNAL_STREAM`), journald's native protocol: each line with its
//! priority (an error is an error) and fields of its own (`TIMEGUARD_MODULE`,
//! `TIMEGUARD_GENERATION`). `RUST_LOG` picks what is logged, as before; the default is info.

use std::{
    io::Write as _,
    os::unix::net::UnixDatagram,
    sync::atomic::{AtomicU32, Ordering},
};

use log::{Level, Log, Metadata, Record};

/// Where journald takes native-protocol messages.
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// How the log is written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One line per message, for a person (journald's own priorities under systemd).
    #[default]
    Text,
    /// One JSON object per line: level, target, message, timestamp.
    Json,
}

/// The policy generation in force, carried by every journal entry from the moment there is
/// one (0: none yet).
static GENERATION: AtomicU32 = AtomicU32::new(0);

/// The generation in force changed.
pub fn set_generation(generation: u32) {
    GENERATION.store(generation, Ordering::Relaxed);
}

enum Sink {
    Text,
    Json,
    /// Native entries; without journald's socket, `<N>`-prefixed lines on the stream.
    Journal(Option<UnixDatagram>),
}

struct Logger {
    filter: env_logger::Logger,
    sink: Sink,
}

/// Sets up the log for this process. The journal wins over the text format (it carries the
/// priority); JSON is written as asked, wherever stderr goes.
pub fn init(format: Format) {
    let filter =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
            .format_target(false)
            .build();
    let sink = match format {
        Format::Json => Sink::Json,
        Format::Text if stderr_is_journal() => Sink::Journal(journal_socket()),
        Format::Text => Sink::Text,
    };
    log::set_max_level(filter.filter());
    // Only fails when a logger is already set: then that one stays.
    let _ = log::set_boxed_logger(Box::new(Logger { filter, sink }));
}

/// Whether stderr is the stream systemd connected to the journal: `$JOURNAL_STREAM` is its
/// device and inode (sd_journal_stream_fd(3)); a redirected stderr is not.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    // SAFETY: fstat fills the struct it is given; fd 2 is only read.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

fn journal_socket() -> Option<UnixDatagram> {
    let socket = UnixDatagram::unbound().ok()?;
    socket.connect(JOURNAL_SOCKET).ok()?;
    Some(socket)
}

/// syslog's priority of a level (sd-daemon(3)): 3 err, 4 warning, 6 info, 7 debug.
fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// One field of a native journal message: `KEY=value\n`, or, when the value holds a
/// newline, the key, its length (64-bit little endian) and the value as they are.
fn field(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    out.extend_from_slice(key.as_bytes());
    if value.contains(&b'\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// A native journal message for `record`.
fn journal_entry(record: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    field(
        &mut out,
        "PRIORITY",
        priority(record.level()).to_string().as_bytes(),
    );
    field(&mut out, "MESSAGE", record.args().to_string().as_bytes());
    field(&mut out, "SYSLOG_IDENTIFIER", b"timeguard");
    field(&mut out, "TIMEGUARD_MODULE", record.target().as_bytes());
    let generation = GENERATION.load(Ordering::Relaxed);
    if generation > 0 {
        field(
            &mut out,
            "TIMEGUARD_GENERATION",
            generation.to_string().as_bytes(),
        );
    }
    if let Some(file) = record.file() {
        field(&mut out, "CODE_FILE", file.as_bytes());
    }
    if let Some(line) = record.line() {
        field(&mut out, "CODE_LINE", line.to_string().as_bytes());
    }
    out
}

/// One JSON line for `record`.
fn json_line(record: &Record) -> String {
    let line = serde_json::json!({
        "timestamp": crate::events::rfc3339(std::time::SystemTime::now()),
        "level": record.level().as_str().to_ascii_lowercase(),
        "target": record.target(),
        "message": record.args().to_string(),
    });
    format!("{line}\n")
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !self.filter.matches(record) {
            return;
        }
        match &self.sink {
            Sink::Text => self.filter.log(record),
            Sink::Json => {
                let _ = std::io::stderr().write_all(json_line(record).as_bytes());
            }
            Sink::Journal(socket) => {
                // Too large for a datagram, or journald's socket away: the stream still
                // takes it, with the priority as a prefix it understands.
                let sent = socket
                    .as_ref()
                    .is_some_and(|s| s.send(&journal_entry(record)).is_ok());
                if !sent {
                    let _ = writeln!(
                        std::io::stderr(),
                        "<{}>{}",
                        priority(record.level()),
                        record.args()
                    );
                }
            }
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_of<'a>(level: Level, args: std::fmt::Arguments<'a>) -> Record<'a> {
        Record::builder()
            .level(level)
            .target("timeguard_agent::daemon")
            .args(args)
            .build()
    }

    #[test]
    fn journal_entries_carry_the_priority_and_the_module() {
        set_generation(3);
        let entry = journal_entry(&record_of(Level::Error, format_args!("bad policy")));
        let text = String::from_utf8_lossy(&entry);
        assert!(text.contains("PRIORITY=3\n"), "{text}");
        assert!(text.contains("MESSAGE=bad policy\n"), "{text}");
        assert!(
            text.contains("TIMEGUARD_MODULE=timeguard_agent::daemon\n"),
            "{text}"
        );
        assert!(text.contains("TIMEGUARD_GENERATION=3\n"), "{text}");
        let warn = journal_entry(&record_of(Level::Warn, format_args!("w")));
        assert!(String::from_utf8_lossy(&warn).starts_with("PRIORITY=4\n"));
    }

    #[test]
    fn a_message_with_a_newline_is_sent_with_its_length() {
        let mut out = Vec::new();
        field(&mut out, "MESSAGE", b"two\nlines");
        let mut want = b"MESSAGE\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(out, want);
    }

    #[test]
    fn json_lines_are_one_object_each() {
        let line = json_line(&record_of(Level::Warn, format_args!("a \"quoted\"\nline")));
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(v["level"], "warn");
        assert_eq!(v["target"], "timeguard_agent::daemon");
        assert_eq!(v["message"], "a \"quoted\"\nline");
        assert!(
            v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{v}"
        );
    }
}

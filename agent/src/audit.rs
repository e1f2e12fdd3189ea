//! The audit trail: every record as one JSON line, in a file rotated by size (and on stdout
//! only when asked: under systemd stdout is the journal, where the log already is). A write
//! that fails (full disk, file removed, unwritable directory) is counted and reported, never
//! stops enforcement, and the records it missed go to stdout instead, not lost; the file is
//! reopened on the next record.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Seek as _, SeekFrom, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Where `timeguard run` writes the trail and `timeguard events` reads it, by default.
pub const DEFAULT_PATH: &str = "/var/log/timeguard/audit.jsonl";

/// How often a failing trail is reported in the log (each failure is counted).
const COMPLAINT_INTERVAL: Duration = Duration::from_secs(60);

/// Size-based rotation: `audit.jsonl` → `audit.jsonl.1` → … → `audit.jsonl.<keep>`.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub max_bytes: u64,
    pub keep: u32,
}

/// Where the trail is written.
#[derive(Debug, Clone)]
pub struct Sinks {
    /// The file (rotated); None: stdout only.
    pub file: Option<PathBuf>,
    /// Every record on stdout as well.
    pub stdout: bool,
}

pub struct AuditTrail {
    path: Option<PathBuf>,
    stdout: bool,
    rotation: Rotation,
    file: Option<File>,
    size: u64,
    /// Records that could not be written to the file.
    pub failures: u64,
    last_complaint: Option<Instant>,
    /// Records held back by `hold` until `release`: one write for a batch of events.
    held: Option<Vec<u8>>,
}

impl AuditTrail {
    /// A trail in its file, on stdout when asked (always, without a file).
    pub fn new(sinks: Sinks, rotation: Rotation) -> Self {
        AuditTrail {
            stdout: sinks.stdout || sinks.file.is_none(),
            path: sinks.file,
            rotation,
            file: None,
            size: 0,
            failures: 0,
            last_complaint: None,
            held: None,
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Writes one record (or holds it, between `hold` and `release`).
    pub fn write<T: serde::Serialize + ?Sized>(&mut self, record: &T) {
        let held = self.held.is_some();
        let mut buf = self.held.take().unwrap_or_default();
        let start = buf.len();
        match serde_json::to_writer(&mut buf, record) {
            Ok(()) => buf.push(b'\n'),
            Err(e) => {
                buf.truncate(start);
                self.failures += 1;
                log::error!("a record could not be written as JSON: {e}");
            }
        }
        if held {
            self.held = Some(buf);
        } else if !buf.is_empty() {
            self.emit(&buf);
        }
    }

    /// Holds records back until `release`: a batch of events read from the kernel costs
    /// two writes instead of two per record.
    pub fn hold(&mut self) {
        self.held.get_or_insert_with(Vec::new);
    }

    /// Writes what `hold` held back, and writes each record at once again.
    pub fn release(&mut self) {
        if let Some(held) = self.held.take() {
            if !held.is_empty() {
                self.emit(&held);
            }
        }
    }

    /// Writes whole lines to the file and, when asked, stdout.
    fn emit(&mut self, lines: &[u8]) {
        if self.stdout {
            to_stdout(lines);
        }
        if self.path.is_none() {
            return;
        }
        if let Err((e, unwritten)) = self.write_file(lines) {
            self.failures += unwritten;
            if !self.stdout {
                // Not lost: the journal keeps them while the file cannot.
                to_stdout(lines);
            }
            // Reopened on the next record: a removed or replaced file is followed.
            self.file = None;
            let due = self
                .last_complaint
                .is_none_or(|t| t.elapsed() >= COMPLAINT_INTERVAL);
            if due {
                self.last_complaint = Some(Instant::now());
                log::error!(
                    "audit trail {}: {e}; {} records not written to it so far (enforcement goes on; they go to stdout)",
                    self.path.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default(),
                    self.failures
                );
            }
        }
    }

    /// Appends whole lines to the file, rotating between two lines when the next would pass
    /// the size limit (a single record longer than the limit still goes in whole). On an
    /// error, how many records were not written.
    fn write_file(&mut self, mut lines: &[u8]) -> Result<(), (std::io::Error, u64)> {
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        let records = |b: &[u8]| b.iter().filter(|&&c| c == b'\n').count() as u64;
        let max = self.rotation.max_bytes;
        while !lines.is_empty() {
            let first = line_end(lines, 0);
            let step = (|| {
                if self.file.is_some() && self.size + first as u64 > max {
                    self.file = None;
                    rotate(&path, self.rotation.keep)?;
                }
                if self.file.is_none() {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
                    self.size = f.seek(SeekFrom::End(0))?;
                    self.file = Some(f);
                }
                let room = max.saturating_sub(self.size);
                let mut take = first;
                while take < lines.len() && line_end(lines, take) as u64 <= room {
                    take = line_end(lines, take);
                }
                let f = self.file.as_mut().ok_or(std::io::ErrorKind::NotFound)?;
                f.write_all(&lines[..take])?;
                self.size += take as u64;
                Ok(take)
            })();
            match step {
                Ok(take) => lines = &lines[take..],
                Err(e) => return Err((e, records(lines))),
            }
        }
        Ok(())
    }
}

/// Writes whole lines to stdout; a closed stdout must not stop enforcement.
fn to_stdout(lines: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(lines).and_then(|_| out.flush());
}

/// Where the line that starts at `from` ends (after its newline, or at the end).
fn line_end(lines: &[u8], from: usize) -> usize {
    lines[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(lines.len(), |i| from + i + 1)
}

/// Writes one record outside a running agent (`timeguard stop --unpin` with none running): on
/// stdout and appended to `path`, a failure said on stderr.
pub fn append_once(path: &Path, record: &Value) {
    let mut trail = AuditTrail::new(
        Sinks {
            file: Some(path.to_path_buf()),
            stdout: true,
        },
        Rotation {
            max_bytes: u64::MAX,
            keep: 0,
        },
    );
    trail.write(record);
}

/// Shifts `path.N` to `path.N+1` (dropping the oldest), then `path` to `path.1`.
fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    let numbered = |n: u32| PathBuf::from(format!("{}.{n}", path.display()));
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(numbered(keep));
    for n in (1..keep).rev() {
        if numbered(n).exists() {
            std::fs::rename(numbered(n), numbered(n + 1))?;
        }
    }
    std::fs::rename(path, numbered(1))
}

/// One record in a person's words, for `timeguard events`.
pub fn human(record: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let time = s(&record["time"]);
    if record["kind"] == "clock" {
        let who = &record["who"];
        let what = &record["what"];
        let ops: Vec<String> = what["operations"]
            .as_array()
            .map(|a| a.iter().map(s).collect())
            .unwrap_or_default();
        let reason = record["reason"].as_str().filter(|r| !r.is_empty());
        format!(
            "{time}  {:<8} {:<16} {}[{}] uid {} {}  via {} ({})  rule {}{}  gen {}",
            s(&record["verdict"]).to_uppercase(),
            ops.join("+"),
            s(&who["comm"]),
            who["pid"],
            who["uid"],
            who["exe"].as_str().unwrap_or("(exe gone)"),
            s(&what["syscall"]),
            s(&record["hook"]),
            s(&record["rule"]),
            reason.map(|r| format!(": {r}")).unwrap_or_default(),
            record["generation"]
        )
    } else {
        let mut rest = record.clone();
        if let Some(o) = rest.as_object_mut() {
            for k in ["time", "kind", "event", "host"] {
                o.remove(k);
            }
        }
        format!("{time}  agent    {:<16} {rest}", s(&record["event"]))
    }
}

/// `timeguard events`: prints the trail in a person's words; with `follow`, keeps printing
/// records as they are appended, and starts on the new file when the trail is rotated.
pub fn print_events(path: &Path, follow: bool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let open =
        || File::open(path).with_context(|| format!("reading the audit trail {}", path.display()));
    let mut reader = BufReader::new(open()?);
    // Bytes of whole records read so far from the current file.
    let mut position = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)? as u64;
        if n > 0 && line.ends_with('\n') {
            position += n;
            match serde_json::from_str::<Value>(&line) {
                Ok(v) => println!("{}", human(&v)),
                Err(_) => println!("(not a record) {}", line.trim_end()),
            }
            continue;
        }
        if !follow {
            return Ok(());
        }
        // At the end, or in the middle of a record being written: wait and look again.
        std::thread::sleep(Duration::from_millis(250));
        use std::os::unix::fs::MetadataExt as _;
        let reading = reader.get_ref().metadata()?.ino();
        let replaced =
            std::fs::metadata(path).map_or(true, |m| m.ino() != reading || m.len() < position);
        if replaced {
            // Between a rotation's rename and the agent's next record there is no file yet.
            if let Ok(f) = open() {
                reader = BufReader::new(f);
                position = 0;
            }
        } else {
            reader.seek(SeekFrom::Start(position))?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_only(path: PathBuf) -> Sinks {
        Sinks {
            file: Some(path),
            stdout: false,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tg-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn rotates_by_size_and_keeps_n() {
        let dir = temp_dir("rotate");
        let path = dir.join("audit.jsonl");
        let mut trail = AuditTrail::new(
            file_only(path.clone()),
            Rotation {
                max_bytes: 100,
                keep: 2,
            },
        );
        for i in 0..20 {
            trail.write(&serde_json::json!({"n": i, "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}));
        }
        assert_eq!(trail.failures, 0);
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        assert!(size(&path) <= 100 && size(&path) > 0);
        assert!(size(&dir.join("audit.jsonl.1")) > 0);
        assert!(size(&dir.join("audit.jsonl.2")) > 0);
        assert!(!dir.join("audit.jsonl.3").exists());
        // The newest record is in the live file.
        let live = std::fs::read_to_string(&path).expect("live file");
        assert!(live.contains("\"n\":19"), "{live}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwritable_trail_is_counted_not_fatal() {
        let dir = temp_dir("unwritable");
        // A directory where the file should be: every open fails.
        let path = dir.join("audit.jsonl");
        std::fs::create_dir_all(&path).expect("dir in the way");
        let mut trail = AuditTrail::new(
            file_only(path),
            Rotation {
                max_bytes: 1 << 20,
                keep: 1,
            },
        );
        trail.write(&serde_json::json!({"n": 1}));
        trail.write(&serde_json::json!({"n": 2}));
        assert_eq!(trail.failures, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn held_records_are_written_together_on_release() {
        let dir = temp_dir("held");
        let path = dir.join("audit.jsonl");
        let rotation = Rotation {
            max_bytes: 1 << 20,
            keep: 1,
        };
        let mut trail = AuditTrail::new(file_only(path.clone()), rotation.clone());
        let lines = |p: &Path| {
            std::fs::read_to_string(p)
                .map(|t| t.lines().count())
                .unwrap_or(0)
        };
        trail.hold();
        trail.write(&serde_json::json!({"n": 1}));
        trail.write(&serde_json::json!({"n": 2}));
        assert_eq!(lines(&path), 0, "held back until release");
        trail.release();
        assert_eq!(lines(&path), 2);
        // After release each record is written at once again.
        trail.write(&serde_json::json!({"n": 3}));
        assert_eq!(lines(&path), 3);
        // A held batch that cannot be written counts every record in it.
        let blocked = dir.join("blocked");
        std::fs::create_dir_all(&blocked).expect("dir in the way");
        let mut trail = AuditTrail::new(file_only(blocked), rotation);
        trail.hold();
        for n in 0..3 {
            trail.write(&serde_json::json!({"n": n}));
        }
        trail.release();
        assert_eq!(trail.failures, 3);
        // A held batch larger than the size limit rotates between two whole records.
        let rotated = dir.join("rotated.jsonl");
        let mut trail = AuditTrail::new(
            file_only(rotated.clone()),
            Rotation {
                max_bytes: 100,
                keep: 3,
            },
        );
        trail.hold();
        for n in 0..8 {
            trail.write(&serde_json::json!({"n": n, "pad": "xxxxxxxxxxxxxxxxxxxx"}));
        }
        trail.release();
        assert_eq!(trail.failures, 0);
        let mut seen = 0;
        // About 40 bytes a record: two to a file, in the live file and the three kept.
        let files = [rotated.clone()]
            .into_iter()
            .chain((1..=3).map(|i| dir.join(format!("rotated.jsonl.{i}"))));
        for p in files {
            let text = std::fs::read_to_string(&p).expect("a trail file");
            assert!(
                text.len() <= 100,
                "{} holds {} bytes",
                p.display(),
                text.len()
            );
            for line in text.lines() {
                serde_json::from_str::<Value>(line).expect("whole records only");
                seen += 1;
            }
        }
        assert_eq!(seen, 8);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn human_lines() {
        let v = serde_json::json!({"time": "2026-11-22T04:25:52Z", "kind": "clock", "verdict": "deny",
            "rule": "default", "reason": "operation not allowed", "generation": 1, "hook": "lsm/settime",
            "who": {"comm": "date", "pid": 154, "uid": 0, "exe": "/bin/busybox"},
            "what": {"operations": ["step"], "syscall": "clock_settime"}});
        let line = human(&v);
        assert!(line.contains("DENY"), "{line}");
        assert!(line.contains("date[154]"), "{line}");
        assert!(
            line.contains("rule default: operation not allowed"),
            "{line}"
        );
    }
}

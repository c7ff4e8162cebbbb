//! The audit sink (`audit.path`): where MinLog audit records (`crate::audit`) are written, one
//! JSON line each, before the answer they describe is sent. Not the logger: the log level and
//! the log redaction do not apply, and a failed write is reported to the caller, which then
//! refuses the answer (fail closed).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// Where records go.
pub enum AuditSink {
    /// Standard output (the log goes to standard error).
    Stdout,
    /// Standard error, between log lines.
    Stderr,
    /// A file, opened for appending for each record (so a file renamed by log rotation is
    /// followed by a new one), written and `fsync`ed before the write counts as done. The lock
    /// keeps two records from interleaving.
    File(PathBuf, Mutex<()>),
}

impl AuditSink {
    /// The sink `audit.path` names: `stdout`, `stderr` or a file.
    pub fn from_config(c: &crate::config::AuditConfig) -> AuditSink {
        match (c.path.as_str(), c.file()) {
            ("stderr", _) => AuditSink::Stderr,
            (_, Some(file)) => AuditSink::File(file.to_path_buf(), Mutex::new(())),
            _ => AuditSink::Stdout,
        }
    }

    /// Write one record and a newline, durably for a file. Blocking, but short: records are
    /// due only for supporters' answers, a small share of the traffic.
    pub fn write(&self, record: &[u8]) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(record.len() + 2);
        line.extend_from_slice(record);
        line.push(b'\n');
        match self {
            AuditSink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&line)?;
                out.flush()
            }
            AuditSink::Stderr => {
                let mut out = std::io::stderr().lock();
                out.write_all(&line)?;
                out.flush()
            }
            AuditSink::File(path, lock) => {
                let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                let open = |read| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .read(read)
                        .append(true)
                        .open(path)
                };
                // Readable where the file allows it (a write-only file is still written).
                let (mut file, readable) = match open(true) {
                    Ok(f) => (f, true),
                    Err(_) => (open(false)?, false),
                };
                // A write that failed part-way (a full disk) leaves a line without its end;
                // a record appended to it would be lost in a line no collector can parse. Such
                // a fragment is ended first, so every record is a line of its own.
                if readable && !ends_a_line(&file)? {
                    line.insert(0, b'\n');
                }
                file.write_all(&line)?;
                file.sync_data()
            }
        }
    }
}

/// Whether `file` is empty or ends with a newline.
fn ends_a_line(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let Some(last) = len.checked_sub(1) else {
        return Ok(true);
    };
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, last)?;
    Ok(byte == [b'\n'])
}

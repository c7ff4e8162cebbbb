//! The process logger: env_logger (filter from `RUST_LOG`, default `info`, format and output
//! unchanged) behind a `log::Log` that passes every record through
//! [`crate::redact::sanitize`] first. Every log line the process writes goes through here —
//! this crate's, Pingora's and every other dependency's — so no token, body, certificate, CPR
//! number or id from a path reaches a log, whatever level an operator sets. No target is
//! exempt: the MinLog audit records, which name CPRs on purpose, go to their own sink
//! (`audit.path`, `gateway::audit`), not through the logger.
//!
//! Lines reach stderr in batches ([`Batched`], env_logger's pipe target): a request appends
//! its formatted, redacted line to a shared buffer instead of making a write system call
//! under stderr's lock, and a background thread writes the buffer out at most
//! [`WRITE_DELAY`] after its first line. Nothing is dropped: a buffer that reaches
//! [`MAX_BUFFERED`] is written out by the logging thread itself, and [`flush`] writes out what
//! is buffered before the process exits (and when the main thread panics).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use log::{Log, Metadata, Record};

use crate::redact::{self, Source};

struct RedactingLogger {
    inner: env_logger::Logger,
}

impl Log for RedactingLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.inner.matches(record) {
            return;
        }
        let source = Source::of(record.target(), record.module_path());
        let fixed = record.args().as_str();
        let formatted;
        let message = match fixed {
            Some(s) => s,
            None => {
                formatted = record.args().to_string();
                formatted.as_str()
            }
        };
        // Only a withheld dependency line names its source location.
        let location = match (&source, fixed) {
            (Source::Dependency, None) => format!(
                "{}:{}",
                short_file(record.file().unwrap_or("?")),
                record.line().unwrap_or(0)
            ),
            _ => String::new(),
        };
        let text = redact::sanitize(source, fixed.is_some(), &location, message);
        self.inner.log(
            &Record::builder()
                .args(format_args!("{text}"))
                .level(record.level())
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// `…/pingora-core-0.9.1/src/protocols/http/v1/body.rs` → `pingora-core-0.9.1/src/…/body.rs`:
/// enough to find the line in the dependency's source, without the build machine's paths.
fn short_file(file: &str) -> &str {
    match file.rfind("/src/") {
        Some(at) => {
            let crate_start = file
                .get(..at)
                .and_then(|p| p.rfind('/'))
                .map_or(0, |s| s + 1);
            file.get(crate_start..).unwrap_or(file)
        }
        None => file,
    }
}

/// Longest a logged line waits in the buffer before the writer thread writes it out.
const WRITE_DELAY: Duration = Duration::from_millis(10);

/// Buffered bytes at which the logging thread writes the buffer out itself (back-pressure
/// rather than loss when stderr is slower than the lines come).
const MAX_BUFFERED: usize = 1 << 20;

/// The lines not yet written, and whether the writer thread waits for one.
struct Pending {
    lines: Vec<u8>,
    writer_waiting: bool,
}

/// The shared buffer. Lock order: [`OUTPUT`] before [`PENDING`], so batches reach stderr in
/// the order their lines were logged.
static PENDING: Mutex<Pending> = Mutex::new(Pending {
    lines: Vec::new(),
    writer_waiting: false,
});
/// Held while a batch is taken and written.
static OUTPUT: Mutex<()> = Mutex::new(());
/// Wakes the writer thread when a line arrives in an empty buffer.
static ARRIVED: Condvar = Condvar::new();
/// No writer thread: each line is written out as it is logged.
static DIRECT: AtomicBool = AtomicBool::new(false);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a line was appended leaves whole lines behind: keep logging.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Take what is buffered and write it to stderr (one `write` for the batch).
fn write_out() {
    let _order = lock(&OUTPUT);
    let batch = std::mem::take(&mut lock(&PENDING).lines);
    if !batch.is_empty() {
        let mut err = std::io::stderr().lock();
        // Nowhere to report a failing stderr.
        let _ = err.write_all(&batch);
        let _ = err.flush();
    }
}

/// env_logger's output: appends each formatted line to the shared buffer.
struct Batched;

impl Write for Batched {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        if lock(&PENDING).lines.len() + line.len() > MAX_BUFFERED {
            write_out();
        }
        let mut p = lock(&PENDING);
        p.lines.extend_from_slice(line);
        if DIRECT.load(Ordering::Relaxed) {
            drop(p);
            write_out();
        } else if p.writer_waiting {
            p.writer_waiting = false;
            ARRIVED.notify_one();
        }
        Ok(line.len())
    }

    /// env_logger flushes after every line: the batch is written by the writer thread.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The writer thread: waits for a line, lets more gather for [`WRITE_DELAY`], writes the
/// batch.
fn writer_loop() {
    loop {
        {
            let mut p = lock(&PENDING);
            while p.lines.is_empty() {
                p.writer_waiting = true;
                p = ARRIVED
                    .wait(p)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        }
        std::thread::sleep(WRITE_DELAY);
        write_out();
    }
}

/// Install the logger for the whole process (once, at start-up; later calls do nothing).
pub fn init() {
    let inner = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Pipe(Box::new(Batched)))
        .build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(RedactingLogger { inner })).is_ok() {
        // Without the writer thread every line is written as it is logged.
        if let Err(e) = std::thread::Builder::new()
            .name("eds-proxy-log".into())
            .spawn(writer_loop)
        {
            DIRECT.store(true, Ordering::Relaxed);
            eprintln!("eds-proxy: log writer thread not started ({:?})", e.kind());
        }
        log::set_max_level(max);
        // A panic's message would otherwise go to stderr past the redaction: route it through
        // the logger as this crate's own ERROR line (redacted like any other).
        std::panic::set_hook(Box::new(|info| {
            let place = info
                .location()
                .map(|l| format!("{}:{}", short_file(l.file()), l.line()))
                .unwrap_or_default();
            // This crate's files are relative (`src/…`); a dependency's panic text is withheld
            // like its log lines with values.
            let own = info
                .location()
                .is_some_and(|l| l.file().starts_with("src/"));
            let what = match own {
                true => info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default(),
                false => "[message withheld: may carry request data]".to_string(),
            };
            log::error!(target: "panic", "panic at {place}: {what}");
            // A panic on the main thread ends the process: its line is written first. (Other
            // threads' panics leave the process, and the writer, running.)
            if std::thread::current().name() == Some("main") {
                flush();
            }
        }));
    }
}

/// Write out every buffered log line now: called right before the process exits (`main`,
/// `server::run`, `lifecycle::exit_when_drained`) and when the main thread panics.
pub fn flush() {
    write_out();
}

#[cfg(test)]
mod tests {
    use super::short_file;

    #[test]
    fn source_locations_are_short() {
        assert_eq!(
            short_file("/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pingora-core-0.9.1/src/apps/http_app.rs"),
            "pingora-core-0.9.1/src/apps/http_app.rs"
        );
        assert_eq!(short_file("src/gateway/mod.rs"), "src/gateway/mod.rs");
        assert_eq!(short_file("lib.rs"), "lib.rs");
    }
}

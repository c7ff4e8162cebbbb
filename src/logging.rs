//! The process logger: env_logger (filter from `RUST_LOG`, default `info`, format and output
//! unchanged) behind a `log::Log` that passes every record through
//! [`crate::redact::sanitize`] first. Every log line the process writes goes through here —
//! this crate's, Pingora's and every other dependency's — so no token, body, certificate, CPR
//! number or id from a path reaches a log, whatever level an operator sets. No target is
//! exempt: the MinLog audit records, which name CPRs on purpose, go to their own sink
//! (`audit.path`, `gateway::audit`), not through the logger.
//!
//! Lines reach stderr through a writer thread (tracing-appender's non-blocking writer as
//! env_logger's pipe target): a request hands its formatted, redacted line to a queue instead
//! of making a write system call under stderr's lock (issue 10: the synchronous access log
//! cost reads 1.2-1.36x), and the thread writes what has queued up. Nothing is dropped: the
//! writer is not lossy, so a full queue (128,000 lines) makes the logging request wait, and
//! [`flush`] writes out what is queued before the process exits (and when the main thread
//! panics).

use std::sync::Mutex;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

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

/// The writer thread's guard: dropping it writes out every queued line ([`flush`]).
static WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

/// Install the logger for the whole process (once, at start-up; later calls do nothing).
pub fn init() {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("eds-proxy-log")
        .finish(std::io::stderr());
    let inner = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Pipe(Box::new(writer)))
        .build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(RedactingLogger { inner })).is_ok() {
        if let Ok(mut slot) = WRITER.lock() {
            *slot = Some(guard);
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

/// Write out every queued log line and stop the writer thread: called right before the
/// process exits (`main`, `server::run`, `lifecycle::exit_when_drained`) and when the main
/// thread panics. Lines logged afterwards are not written.
pub fn flush() {
    // Dropping the guard queues a shutdown behind the waiting lines and waits (up to 1 s, in
    // tracing-appender) until the thread has written them.
    let guard = WRITER.lock().ok().and_then(|mut slot| slot.take());
    drop(guard);
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

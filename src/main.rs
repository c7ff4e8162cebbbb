//! The `eds-proxy` command: run the proxy, check a configuration, and (with the default `dev`
//! feature) development tools.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use eds_proxy::{config, server};

/// jemalloc instead of glibc's malloc: it returns the memory of a load or of closed
/// connections to the system (glibc's arenas kept the peak), and allocates with fewer
/// instructions (PERFORMANCE.md, "Memory"; Cargo.toml). Only the binary: the library, its
/// tests and the fuzz targets keep the system allocator.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "eds-proxy",
    version,
    about = "Security sidecar for the EHMI Delivery Status service (EDS)"
)]
struct Cli {
    /// Configuration file (TOML) to run the proxy with.
    #[arg(long, global = false)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file: exit 0 if it is usable, 1 with every problem named.
    CheckConfig { file: PathBuf },
    /// Container health check: exit 0 if `GET URL` answers 2xx (`tcp://host:port`: if a
    /// connection is accepted), 1 otherwise. For images without curl (README, "Deploying").
    Health {
        /// What to check, e.g. http://127.0.0.1:9100/readyz (the admin listener).
        #[arg(long, default_value = "http://127.0.0.1:9100/readyz")]
        url: String,
        /// Seconds allowed for the whole check (connection, request and answer).
        #[arg(long, default_value_t = 3)]
        timeout_seconds: u64,
    },
    /// DEVELOPMENT ONLY tools: a throw-away PKI, a token issuer, token minting.
    #[cfg(feature = "dev")]
    #[command(subcommand)]
    Dev(eds_proxy::dev::cli::DevCommand),
}

fn main() -> ExitCode {
    // Every log line, Pingora's included, is redacted (see `eds_proxy::logging`).
    eds_proxy::logging::init();
    // Token signatures through ring, before any token is verified (auth::ring_verify).
    eds_proxy::auth::ring_verify::install();
    let cli = Cli::parse();
    let code = match (cli.command, cli.config) {
        (Some(Command::CheckConfig { file }), _) => check_config(&file),
        (
            Some(Command::Health {
                url,
                timeout_seconds,
            }),
            _,
        ) => health(&url, timeout_seconds),
        #[cfg(feature = "dev")]
        (Some(Command::Dev(cmd)), _) => match eds_proxy::dev::cli::run(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        (None, Some(file)) => run(&file),
        (None, None) => {
            // A production build (without the `dev` feature) has no `dev` subcommand.
            let dev = if cfg!(feature = "dev") {
                " | eds-proxy dev …"
            } else {
                ""
            };
            eprintln!(
                "usage: eds-proxy --config FILE | eds-proxy check-config FILE | eds-proxy health --url URL{dev}"
            );
            ExitCode::from(2)
        }
    };
    // The log's queued lines are written before the process ends (`logging::flush`).
    eds_proxy::logging::flush();
    code
}

fn check_config(file: &std::path::Path) -> ExitCode {
    // The checks of `server::preflight` too: a file that passes also starts (and reloads).
    match config::load(file).and_then(|c| {
        server::preflight(&c).map_err(|e| {
            vec![config::ConfigProblem {
                key: "<file>".into(),
                reason: e,
            }]
        })
    }) {
        Ok(()) => {
            println!("{}: OK", file.display());
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems {
                println!("{}: {p}", file.display());
            }
            println!("{}: {} problem(s)", file.display(), problems.len());
            ExitCode::FAILURE
        }
    }
}

fn health(url: &str, timeout_seconds: u64) -> ExitCode {
    let timeout = std::time::Duration::from_secs(timeout_seconds.max(1));
    match eds_proxy::health::parse_target(url).and_then(|t| eds_proxy::health::check(&t, timeout)) {
        Ok(what) => {
            println!("healthy: {what}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            println!("unhealthy: {why}");
            ExitCode::FAILURE
        }
    }
}

fn run(file: &std::path::Path) -> ExitCode {
    let config = match config::load(file) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                eprintln!("{}: {p}", file.display());
            }
            return ExitCode::FAILURE;
        }
    };
    log::info!(
        "eds-proxy listening on {} (FHIR, mTLS) and {} (admin), forwarding to {}; SIGHUP reloads {}",
        config.listen.address,
        config.admin.address,
        config.upstream.base_url,
        file.display()
    );
    match server::run(file, &config) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

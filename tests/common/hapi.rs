//! A real HAPI FHIR server for one test, started by `hapi-compose/hapi-native.sh` on a free
//! port with a fresh data directory and the EDS search parameters, stopped when dropped
//! (passed or failed). Tests that start one run under `flock /tmp/hapi-run.lock` when several
//! may run at once (scripts/test.sh runs them in one `cargo test`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{free_port, tmp_dir};

/// A running HAPI FHIR server; stopped on drop.
pub struct Hapi {
    port: u16,
    data_dir: PathBuf,
    /// Its FHIR base, `http://127.0.0.1:{port}/fhir`.
    pub base: String,
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

impl Hapi {
    fn script(&self, args: &[&str]) -> std::process::Output {
        Command::new("bash")
            .arg(repo().join("hapi-compose/hapi-native.sh"))
            .args(args)
            .env("HAPI_PORT", self.port.to_string())
            .env("HAPI_DATA_DIR", &self.data_dir)
            .output()
            .expect("bash runs")
    }

    /// Start HAPI (data directory tagged `tag`) and create the EDS search parameters.
    pub fn start(tag: &str) -> Hapi {
        let port = free_port();
        let hapi = Hapi {
            port,
            data_dir: tmp_dir(tag),
            base: format!("http://127.0.0.1:{port}/fhir"),
        };
        let out = hapi.script(&["start"]);
        assert!(
            out.status.success(),
            "HAPI FHIR could not be started by hapi-compose/hapi-native.sh:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let out = hapi.script(&["bootstrap-search-parameters", &hapi.base]);
        assert!(
            out.status.success(),
            "search parameter bootstrap failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        hapi
    }
}

impl Drop for Hapi {
    fn drop(&mut self) {
        let _ = self.script(&["stop"]);
    }
}

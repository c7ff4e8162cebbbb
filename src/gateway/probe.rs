//! The backend conformance probe's I/O (issue 13 item 4): a Pingora background service that
//! runs a round of `fhir::conformance` probes at start-up and every
//! `upstream.probe.interval_seconds` (a failed round again after at most
//! [`RETRY_AFTER_FAILURE`]), and publishes the verdict in a [`ProbeState`] shared with the
//! admin listener (`/readyz`) and the gateway (`on_nonconformant = "refuse"`), and in the
//! metrics `eds_proxy_backend_conformant` and `eds_proxy_backend_probe_failures_total{check}`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::OnNonconformant;
use crate::error::Refusal;
use crate::fhir::conformance::{self, Failure};
use crate::metrics;

/// Longest wait before a failed round is repeated: a server that was still starting, or was
/// fixed, is noticed soon.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    /// No round has finished yet.
    Pending,
    /// The last round passed.
    Conformant,
    /// The last round failed: `conformance::summary` of its failures.
    Nonconformant(String),
}

/// The probe's latest verdict, shared by the probe task, `/readyz` and the gateway.
#[derive(Debug)]
pub struct ProbeState {
    mode: OnNonconformant,
    status: RwLock<Status>,
    /// The checks of the last round's advisory failures, to log a change once.
    advisory: RwLock<Vec<String>>,
}

impl ProbeState {
    /// A state with no verdict yet, for `upstream.probe.on_nonconformant = mode`.
    pub fn new(mode: OnNonconformant) -> Self {
        ProbeState {
            mode,
            status: RwLock::new(Status::Pending),
            advisory: RwLock::new(Vec::new()),
        }
    }

    fn status(&self) -> Status {
        self.status
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Why `/readyz` must answer 503, if it must: the last round's failures, or (in `refuse`
    /// mode only) that no round has passed yet.
    pub fn not_ready_reason(&self) -> Option<String> {
        match (self.status(), self.mode) {
            (Status::Conformant, _) | (Status::Pending, OnNonconformant::Warn) => None,
            (Status::Pending, OnNonconformant::Refuse) => {
                Some("FHIR server conformance not yet verified".into())
            }
            (Status::Nonconformant(why), _) => Some(why),
        }
    }

    /// Whether a FHIR request may reach the FHIR server: always in `warn` mode; in `refuse`
    /// mode only after a round passed and while the last one did.
    ///
    /// Errors: 503 [`Refusal::BackendNonconformant`].
    pub fn admit(&self) -> Result<(), Refusal> {
        match (self.mode, self.status()) {
            (OnNonconformant::Warn, _) | (OnNonconformant::Refuse, Status::Conformant) => Ok(()),
            (OnNonconformant::Refuse, _) => Err(Refusal::BackendNonconformant),
        }
    }

    /// Publish one round's failures: state (conformant unless a non-advisory check failed),
    /// metrics (every failure counted), one log line when the verdict or the advisory failures
    /// change.
    pub fn record(&self, failures: &[Failure]) {
        let advisory: Vec<String> = failures
            .iter()
            .filter(|f| f.advisory)
            .map(|f| f.check.clone())
            .collect();
        {
            let mut last = self.advisory.write().unwrap_or_else(|e| e.into_inner());
            if *last != advisory {
                for f in failures.iter().filter(|f| f.advisory) {
                    log::warn!(
                        "FHIR server conformance (advisory): {}: {}",
                        f.check,
                        f.reason
                    );
                }
                *last = advisory;
            }
        }
        for f in failures {
            metrics::BACKEND_PROBE_FAILURES
                .with_label_values(&[f.check.as_str()])
                .inc();
        }
        let next = match conformance::summary(failures) {
            None => Status::Conformant,
            Some(why) => Status::Nonconformant(why),
        };
        metrics::BACKEND_CONFORMANT.set(f64::from(u8::from(next == Status::Conformant)));
        let mut slot = self.status.write().unwrap_or_else(|e| e.into_inner());
        if *slot != next {
            match &next {
                Status::Nonconformant(why) => log::error!("{why}"),
                _ => log::info!("FHIR server passed the conformance probe"),
            }
        }
        *slot = next;
    }
}

/// The background service that runs the probe rounds.
pub struct Prober {
    /// The live settings: each round probes the FHIR server the current snapshot forwards to,
    /// with its label systems (the `security` probe searches the device label system), so a
    /// reload that changes them is probed at the next round.
    pub(crate) live: Arc<crate::lifecycle::Live>,
    /// `upstream.probe.interval_seconds` (not 0: a 0 means no prober is started).
    pub interval: Duration,
    /// `upstream.probe.require_capability_listing`.
    pub require_capability_listing: bool,
    /// Where the verdict goes.
    pub state: Arc<ProbeState>,
}

/// 128 bits from the operating system's random source, in hex; `None` if it fails (the
/// round is then skipped and counted as a failure of the `random` check).
fn random_hex() -> Option<String> {
    let mut buf = [0u8; 16];
    getrandom::fill(&mut buf).ok()?;
    Some(buf.iter().map(|b| format!("{b:02x}")).collect())
}

impl Prober {
    /// One round: every probe in turn, judged; the failures.
    pub async fn round(&self) -> Vec<Failure> {
        let Some(random) = random_hex() else {
            return vec![Failure {
                check: "random".into(),
                reason: "no random value for the probe".into(),
                advisory: false,
            }];
        };
        let gateway = self.live.gateway.load_full();
        let mut results = Vec::new();
        for (i, probe) in
            conformance::probes(&gateway.labels, &random, self.require_capability_listing)
                .into_iter()
                .enumerate()
        {
            let request_id = format!("probe-{}-{i}", random.get(..8).unwrap_or_default());
            let answer = gateway
                .upstream
                .send("GET", &probe.target, None, &request_id)
                .await;
            let judged = conformance::judge(
                probe.kind,
                answer.as_ref().ok().map(|r| (r.status, r.body.as_slice())),
            );
            results.push((probe, judged));
        }
        conformance::verdict(results)
    }
}

#[async_trait]
impl BackgroundService for Prober {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let failures = self.round().await;
            self.state.record(&failures);
            let wait = if conformance::summary(&failures).is_none() {
                self.interval
            } else {
                self.interval.min(RETRY_AFTER_FAILURE)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure() -> Vec<Failure> {
        vec![Failure {
            check: "security".into(),
            reason: "ignored".into(),
            advisory: false,
        }]
    }

    #[test]
    fn an_advisory_failure_alone_is_conformant() {
        let s = ProbeState::new(OnNonconformant::Refuse);
        s.record(&[Failure {
            check: "capability".into(),
            reason: "not listed".into(),
            advisory: true,
        }]);
        assert_eq!(s.not_ready_reason(), None);
        assert_eq!(s.admit(), Ok(()));
    }

    #[test]
    fn warn_mode_reports_and_serves() {
        let s = ProbeState::new(OnNonconformant::Warn);
        assert_eq!(s.not_ready_reason(), None);
        assert_eq!(s.admit(), Ok(()));
        s.record(&failure());
        assert_eq!(
            s.not_ready_reason().as_deref(),
            Some("FHIR server not conformant: security: ignored")
        );
        assert_eq!(s.admit(), Ok(()));
        s.record(&[]);
        assert_eq!(s.not_ready_reason(), None);
    }

    #[test]
    fn refuse_mode_serves_only_after_a_passed_round() {
        let s = ProbeState::new(OnNonconformant::Refuse);
        assert_eq!(
            s.not_ready_reason().as_deref(),
            Some("FHIR server conformance not yet verified")
        );
        assert_eq!(s.admit(), Err(Refusal::BackendNonconformant));
        s.record(&[]);
        assert_eq!(s.not_ready_reason(), None);
        assert_eq!(s.admit(), Ok(()));
        s.record(&failure());
        assert_eq!(s.admit(), Err(Refusal::BackendNonconformant));
        assert!(s.not_ready_reason().is_some());
    }
}

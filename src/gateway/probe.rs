//! The backend conformance probe's I/O (issue 13 item 4): a Pingora background service that
//! runs a round of `fhir::conformance` probes at start-up and every
//! `upstream.probe.interval_seconds` (a failed round again after at most
//! [`RETRY_AFTER_FAILURE`]), and publishes the verdict in a [`ProbeState`] shared with the
//! admin listener (`/readyz`) and the gateway (`on_nonconformant = "refuse"`), and in the
//! metrics `eds_proxy_backend_conformant` and `eds_proxy_backend_probe_failures_total{check}`.

use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Raised by [`ProbeState::restart`]: a round that started under an earlier generation
    /// probed another FHIR server (or other label systems) and is not recorded.
    generation: AtomicU64,
    /// Wakes the prober for a round at once after a restart.
    wake: tokio::sync::Notify,
}

impl ProbeState {
    /// A state with no verdict yet, for `upstream.probe.on_nonconformant = mode`.
    pub fn new(mode: OnNonconformant) -> Self {
        ProbeState {
            mode,
            status: RwLock::new(Status::Pending),
            advisory: RwLock::new(Vec::new()),
            generation: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// The current generation, taken before a round starts ([`ProbeState::record_round`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Forget the verdict: a reload changed the FHIR server or the label systems
    /// (`lifecycle::conformance_must_restart`), so the last round says nothing about what is
    /// served now. The verdict is pending as at start-up (`refuse` mode answers 503 until a
    /// round passes), a round under way is not recorded, and the prober starts one at once.
    /// A reload calls it before and after swapping the snapshot: a round that starts in
    /// between may read the old snapshot, and the second call keeps it from being recorded.
    pub fn restart(&self) {
        {
            let mut slot = self.status.write().unwrap_or_else(|e| e.into_inner());
            self.generation.fetch_add(1, Ordering::SeqCst);
            *slot = Status::Pending;
        }
        metrics::BACKEND_CONFORMANT.set(0.0);
        self.wake.notify_one();
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

    /// [`ProbeState::record_round`] for a round of the current generation.
    #[cfg(test)]
    pub fn record(&self, failures: &[Failure]) {
        self.record_round(self.generation(), failures);
    }

    /// Publish the failures of a round that started at `generation`: state (conformant unless
    /// a non-advisory check failed), metrics (every failure counted), one log line when the
    /// verdict or the advisory failures change. Nothing if the state was restarted since the
    /// round started ([`ProbeState::restart`]: the round probed what is no longer served).
    pub fn record_round(&self, generation: u64, failures: &[Failure]) {
        let mut slot = self.status.write().unwrap_or_else(|e| e.into_inner());
        if self.generation() != generation {
            return;
        }
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
            let generation = self.state.generation();
            let failures = self.round().await;
            self.state.record_round(generation, &failures);
            let wait = if conformance::summary(&failures).is_none() {
                self.interval
            } else {
                self.interval.min(RETRY_AFTER_FAILURE)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.state.wake.notified() => {}
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

    /// A reload to another FHIR server (or other label systems) makes the verdict pending
    /// again: in `refuse` mode nothing is served until a round against the new settings
    /// passes, and a round that started before the restart cannot vouch for them.
    #[test]
    fn a_restarted_verdict_waits_for_a_round_of_its_own() {
        let s = ProbeState::new(OnNonconformant::Refuse);
        s.record(&[]);
        assert_eq!(s.admit(), Ok(()));
        let stale = s.generation();
        s.restart();
        assert_eq!(s.admit(), Err(Refusal::BackendNonconformant));
        assert_eq!(
            s.not_ready_reason().as_deref(),
            Some("FHIR server conformance not yet verified")
        );
        s.record_round(stale, &[]);
        assert_eq!(s.admit(), Err(Refusal::BackendNonconformant));
        s.record_round(s.generation(), &[]);
        assert_eq!(s.admit(), Ok(()));
        // In `warn` mode a pending verdict is ready, as at start-up.
        let w = ProbeState::new(OnNonconformant::Warn);
        w.record(&failure());
        w.restart();
        assert_eq!(w.not_ready_reason(), None);
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

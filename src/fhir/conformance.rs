//! The backend conformance probe's decisions (issue 13 item 4): which requests probe the FHIR
//! server, and the verdict from its answers. Pure; `gateway::probe` sends the requests on a
//! timer and publishes the verdict (`/readyz`, metrics, and with
//! `upstream.on_nonconformant = "refuse"` a 503 for FHIR requests).
//!
//! The security model relies on the server honouring what the proxy sends (the response
//! check is the second line: it drops what the server should not have returned). The probe
//! notices a server that would leave everything to that second line:
//!
//! | check | request (relative to the FHIR base) | conformant answer |
//! |---|---|---|
//! | `security` | `AuditEvent?_security=<device label system>\|<random>&_count=1` | 200 searchset with no entry (a server ignoring `_security` returns everything) |
//! | `param:<code>` (each EDS IG search parameter the proxy allows, [`IG_SEARCH_PARAMETERS`]) | `AuditEvent?<code>=<random>&_count=1` | 200 searchset with no entry (an ignored parameter returns everything); a 400 fails too: clients would get errors for a parameter the proxy allows |
//! | `capability` | `metadata` | 200 CapabilityStatement whose server `AuditEvent` resource lists every one of those parameters in `searchParam` |
//!
//! The `capability` check is *advisory* unless `upstream.probe.require_capability_listing` is
//! set: its failure is counted and logged but does not make the server nonconformant. The
//! searches prove what the security model needs; the listing only documents it, and HAPI 8.8
//! does not list SearchParameters created at run time in its CapabilityStatement (measured
//! against `hapi-compose/native`), so a required listing would fail the reference server.
//!
//! The random value is a fresh [`PROBE_PREFIX`]`<32 hex digits>` per round: it matches no
//! stored record, so an entry in the answer means the condition was ignored. On a server that
//! holds no AuditEvent at all a search check cannot fail (nothing to return); it becomes
//! meaningful with the first registration, and the probe repeats.
//!
//! Probe searches carry no caller's constraint and their answers are read for their shape
//! only: nothing of them is logged, kept or shown to anyone (`_count=1` bounds what is read).

use serde_json::Value;

use crate::fhir::labels::LabelSystems;
use crate::fhir::query;

/// The EDS implementation guide's AuditEvent search parameters (defined with the allowlist).
pub use crate::fhir::query::IG_SEARCH_PARAMETERS;

/// Start of every random probe value: recognisable in a FHIR server's request log.
pub const PROBE_PREFIX: &str = "eds-proxy-probe-";

/// One probe request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The check's name: `security`, `param:<code>` or `capability` (the `check` label of
    /// `eds_proxy_backend_probe_failures_total` and the reason `/readyz` names).
    pub check: String,
    /// `GET` target relative to the FHIR base.
    pub target: String,
    /// What its answer is judged by.
    pub kind: ProbeKind,
    /// A failure is counted and logged but does not make the server nonconformant.
    pub advisory: bool,
}

/// How a probe's answer is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    /// A search for a value that exists nowhere: no entry.
    Empty,
    /// The CapabilityStatement lists every IG search parameter.
    Capability,
}

/// A probe's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The check's name ([`Probe::check`]).
    pub check: String,
    /// Why it failed (fixed text and counts, never the server's content).
    pub reason: String,
    /// The probe was advisory ([`Probe::advisory`]).
    pub advisory: bool,
}

/// The probes of one round. `random` is the round's random part (hex; the caller draws it
/// from the OS's random source), appended to [`PROBE_PREFIX`]; `require_capability_listing`
/// makes the `capability` check count (else it is advisory).
pub fn probes(labels: &LabelSystems, random: &str, require_capability_listing: bool) -> Vec<Probe> {
    let value = format!("{PROBE_PREFIX}{random}");
    let mut out = vec![Probe {
        check: "security".into(),
        target: format!(
            "AuditEvent?_security={}&_count=1",
            query::encode(&format!("{}|{value}", labels.device))
        ),
        kind: ProbeKind::Empty,
        advisory: false,
    }];
    out.extend(IG_SEARCH_PARAMETERS.iter().map(|code| Probe {
        check: format!("param:{code}"),
        target: format!(
            "AuditEvent?{}={}&_count=1",
            query::encode(code),
            query::encode(&value)
        ),
        kind: ProbeKind::Empty,
        advisory: false,
    }));
    out.push(Probe {
        check: "capability".into(),
        target: "metadata".into(),
        kind: ProbeKind::Capability,
        advisory: !require_capability_listing,
    });
    out
}

/// Judge one answer (`None`: the FHIR server could not be reached or answered nothing
/// usable; `Some((status, body))` otherwise).
///
/// Errors: the reason the check failed.
pub fn judge(kind: ProbeKind, answer: Option<(u16, &[u8])>) -> Result<(), String> {
    let (status, body) = answer.ok_or_else(|| "the FHIR server did not answer".to_string())?;
    if status != 200 {
        return Err(format!("the FHIR server answered {status}"));
    }
    // Strict: a duplicate key could show the probe one answer and a client another.
    let v: Value = crate::fhir::strict_json::parse(body)
        .map_err(|_| "the answer is not JSON (or has duplicate keys)".to_string())?;
    match kind {
        ProbeKind::Empty => judge_empty(&v),
        ProbeKind::Capability => judge_capability(&v),
    }
}

fn judge_empty(v: &Value) -> Result<(), String> {
    if v.get("resourceType").and_then(Value::as_str) != Some("Bundle")
        || v.get("type").and_then(Value::as_str) != Some("searchset")
    {
        return Err("the answer is not a searchset".into());
    }
    // Entries other than the server's own OperationOutcome (search.mode `outcome`) are
    // records the condition should have excluded.
    let matches = v
        .get("entry")
        .and_then(Value::as_array)
        .map_or(0, |entries| {
            entries
                .iter()
                .filter(|e| e.pointer("/search/mode").and_then(Value::as_str) != Some("outcome"))
                .count()
        });
    let total = v.get("total").and_then(Value::as_u64).unwrap_or(0);
    if matches > 0 || total > 0 {
        return Err(format!(
            "a search for a value that exists nowhere returned records (ignored; total {total})"
        ));
    }
    Ok(())
}

fn judge_capability(v: &Value) -> Result<(), String> {
    if v.get("resourceType").and_then(Value::as_str) != Some("CapabilityStatement") {
        return Err("the answer is not a CapabilityStatement".into());
    }
    let listed: Vec<&str> = v
        .get("rest")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|r| r.get("mode").and_then(Value::as_str) == Some("server"))
        .filter_map(|r| r.get("resource").and_then(Value::as_array))
        .flatten()
        .filter(|r| r.get("type").and_then(Value::as_str) == Some("AuditEvent"))
        .filter_map(|r| r.get("searchParam").and_then(Value::as_array))
        .flatten()
        .filter_map(|p| p.get("name").and_then(Value::as_str))
        .collect();
    let missing: Vec<&str> = IG_SEARCH_PARAMETERS
        .iter()
        .copied()
        .filter(|p| !listed.contains(p))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the CapabilityStatement does not list AuditEvent search parameter(s) {}",
            missing.join(", ")
        ))
    }
}

/// One round's failures (empty: conformant), from each probe and its judged answer, in
/// probe order.
pub fn verdict(results: Vec<(Probe, Result<(), String>)>) -> Vec<Failure> {
    results
        .into_iter()
        .filter_map(|(p, r)| {
            r.err().map(|reason| Failure {
                check: p.check,
                reason,
                advisory: p.advisory,
            })
        })
        .collect()
}

/// The one-line reason `/readyz` gives for a round's failures: the first non-advisory
/// failure's check and reason, and how many other non-advisory checks failed; `None` when
/// only advisory checks (or none) failed: the server is conformant.
pub fn summary(failures: &[Failure]) -> Option<String> {
    let blocking: Vec<&Failure> = failures.iter().filter(|f| !f.advisory).collect();
    let first = blocking.first()?;
    let more = match blocking.len() - 1 {
        0 => String::new(),
        n => format!(" (and {n} other check(s))"),
    };
    Some(format!(
        "FHIR server not conformant: {}: {}{more}",
        first.check, first.reason
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn capability(params: &[&str]) -> Value {
        json!({"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "resource": [
            {"type": "Patient", "searchParam": [{"name": "cpr"}]},
            {"type": "AuditEvent", "searchParam": params.iter().map(|p| json!({"name": p, "type": "string"})).collect::<Vec<_>>()}
        ]}]})
    }

    #[test]
    fn the_ig_parameters_are_allowed_searches() {
        for p in IG_SEARCH_PARAMETERS {
            assert!(query::SEARCH_PARAMETERS.contains(p), "{p}");
        }
    }

    #[test]
    fn probes_search_for_a_random_value_with_every_check() {
        let p = probes(&LabelSystems::default(), "00ff", false);
        assert_eq!(p.len(), IG_SEARCH_PARAMETERS.len() + 2);
        assert_eq!(
            p[0],
            Probe {
                check: "security".into(),
                target: "AuditEvent?_security=urn%3Aeds-proxy%3Alabel%3Adevice-id%7Ceds-proxy-probe-00ff&_count=1".into(),
                kind: ProbeKind::Empty,
                advisory: false
            }
        );
        assert!(p.last().unwrap().advisory);
        assert!(
            !probes(&LabelSystems::default(), "00ff", true)
                .last()
                .unwrap()
                .advisory
        );
        assert_eq!(p[1].check, "param:cpr");
        assert_eq!(p[1].target, "AuditEvent?cpr=eds-proxy-probe-00ff&_count=1");
        assert_eq!(p.last().unwrap().target, "metadata");
        for probe in &p {
            assert!(query::check_upstream_target(&probe.target, 8192).is_ok());
        }
    }

    #[test]
    fn an_empty_searchset_passes_and_anything_else_fails() {
        let empty = body(json!({"resourceType": "Bundle", "type": "searchset", "total": 0}));
        assert_eq!(judge(ProbeKind::Empty, Some((200, &empty))), Ok(()));
        let outcome_only = body(
            json!({"resourceType": "Bundle", "type": "searchset", "entry": [
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}}]}),
        );
        assert_eq!(judge(ProbeKind::Empty, Some((200, &outcome_only))), Ok(()));
        let everything = body(
            json!({"resourceType": "Bundle", "type": "searchset", "total": 3,
            "entry": [{"resource": {"resourceType": "AuditEvent", "id": "a"}}]}),
        );
        let counted_only = body(json!({"resourceType": "Bundle", "type": "searchset", "total": 3}));
        let ignored =
            "a search for a value that exists nowhere returned records (ignored; total 3)";
        assert_eq!(
            judge(ProbeKind::Empty, Some((200, &everything))),
            Err(ignored.into())
        );
        assert_eq!(
            judge(ProbeKind::Empty, Some((200, &counted_only))),
            Err(ignored.into())
        );
        for (answer, why) in [
            (None, "the FHIR server did not answer"),
            (Some((400, &empty[..])), "the FHIR server answered 400"),
            (
                Some((200, &b"<html/>"[..])),
                "the answer is not JSON (or has duplicate keys)",
            ),
            (
                Some((
                    200,
                    &body(json!({"resourceType": "Bundle", "type": "batch"}))[..],
                )),
                "the answer is not a searchset",
            ),
        ] {
            assert_eq!(judge(ProbeKind::Empty, answer), Err(why.into()));
        }
    }

    #[test]
    fn the_capability_statement_must_list_every_ig_parameter() {
        let all = body(capability(IG_SEARCH_PARAMETERS));
        assert_eq!(judge(ProbeKind::Capability, Some((200, &all))), Ok(()));
        let some = body(capability(&["cpr", "message-id"]));
        let err = judge(ProbeKind::Capability, Some((200, &some))).unwrap_err();
        assert!(
            err.starts_with("the CapabilityStatement does not list AuditEvent search parameter(s) ehmiMessageType, entityIdentifier, orig-message-id"),
            "{err}"
        );
        assert!(!err.contains("cpr"), "{err}");
        let client_mode = body(
            json!({"resourceType": "CapabilityStatement", "rest": [{"mode": "client", "resource": [
            {"type": "AuditEvent", "searchParam": IG_SEARCH_PARAMETERS.iter().map(|p| json!({"name": p})).collect::<Vec<_>>()}]}]}),
        );
        assert!(judge(ProbeKind::Capability, Some((200, &client_mode))).is_err());
        assert_eq!(
            judge(
                ProbeKind::Capability,
                Some((200, &body(json!({"resourceType": "Bundle"}))))
            ),
            Err("the answer is not a CapabilityStatement".into())
        );
    }

    #[test]
    fn the_verdict_names_the_failed_checks() {
        let p = probes(&LabelSystems::default(), "1", false);
        let results: Vec<_> = p
            .into_iter()
            .map(|p| {
                let r =
                    if p.check == "security" || p.check == "param:cpr" || p.check == "capability" {
                        Err("ignored".to_string())
                    } else {
                        Ok(())
                    };
                (p, r)
            })
            .collect();
        let failures = verdict(results);
        assert_eq!(
            failures,
            vec![
                Failure {
                    check: "security".into(),
                    reason: "ignored".into(),
                    advisory: false
                },
                Failure {
                    check: "param:cpr".into(),
                    reason: "ignored".into(),
                    advisory: false
                },
                Failure {
                    check: "capability".into(),
                    reason: "ignored".into(),
                    advisory: true
                }
            ]
        );
        assert_eq!(
            summary(&failures).as_deref(),
            Some("FHIR server not conformant: security: ignored (and 1 other check(s))")
        );
        assert_eq!(summary(&[]), None);
        // Only the advisory check failed: conformant.
        assert_eq!(summary(&failures[2..]), None);
    }
}

//! The access plan: from (interaction, principal, policy) to either a refusal or exactly what
//! happens next — what goes to the FHIR server (method, target, body), which check its answer
//! gets (searchset, single resource, created resource, each with the caller's constraint), and
//! whether a MinLog audit record is due. Pure: the gateway only executes plans and does I/O.
//!
//! Rules, in the order they are applied (each refusal names its rule, see `error`):
//!
//! | interaction | rule |
//! |---|---|
//! | capabilities | answered by the proxy (token-free without a query: [`token_free`]) |
//! | search | grant letter `s` (SMART v2); `_summary=count` refused when `response.drop_totals`; the constraint (a supporter's CVR must be in the directory); forwarded as `GET AuditEvent?_security=<constraint>&…` |
//! | page | grant letter `s`; the constraint; the link's signature for this principal over the exact target (`fhir::paging`); forwarded as that target: `GET ?_getpages=…` or `GET AuditEvent?_security=<constraint>&…` |
//! | read, vread | grant letter `r`; the constraint; forwarded as `GET AuditEvent/{id}[/_history/{vid}]`; the answer must be that AuditEvent with the caller's label |
//! | create | stations only; grant letter `c`, org context, an inert EDS registration naming the station's device and organisation (`fhir::registration`); forwarded as `POST AuditEvent`; the answer must be the record created, with exactly the labels stamped |
//!
//! A supporter's answers are due a MinLog audit record (EHMI security page: citizens see in
//! MinLog when professionals read their data).
//!
//! Source: the EDS security page (`security-english.md`), DESIGN.md §1, SECURITY.md rules
//! 5, 10–16, 22–26.

use crate::auth::principal::Principal;
use crate::cvr_directory::CvrDirectory;
use crate::error::{Forbidden, Invalid, Refusal};
use crate::fhir::interaction::{check_metadata_query, Interaction};
use crate::fhir::labels::{Constraint, Label, LabelSystems};
use crate::fhir::paging::PageSigner;
use crate::fhir::registration;

/// Request headers that make a request conditional on something the FHIR server would
/// evaluate (RFC 9110 §13.1, FHIR conditional create/update): refused everywhere, since the
/// server would evaluate the condition over records the caller may not see.
pub const CONDITIONAL_HEADERS: &[&str] = &["if-none-exist", "if-match", "if-unmodified-since"];

/// Validator preconditions of a conditional read (RFC 9110 §13.1.2 If-None-Match, §13.1.3
/// If-Modified-Since). Never forwarded: on read and vread the proxy fetches the record
/// unconditionally, checks the label, and answers 304 itself
/// ([`crate::fhir::compat::not_modified`]), so a 304 only ever speaks of a record the caller
/// may see (others stay 404). Refused on every other interaction.
pub const VALIDATOR_HEADERS: &[&str] = &["if-none-match", "if-modified-since"];

/// True for the requests answered without a token: `GET` or `HEAD [base]/metadata` whose
/// query has only the parameters [`check_metadata_query`] accepts (mutual TLS is still
/// required). Nothing is forwarded for them: the statement is the proxy's own. `path` is the
/// request path, `base_path` the public base URL's path without a trailing slash.
pub fn token_free(method: &str, path: &str, query: Option<&str>, base_path: &str) -> bool {
    is_metadata(method, path, base_path) && query.is_none_or(|q| check_metadata_query(q).is_ok())
}

/// True for `GET` or `HEAD [base]/metadata` (with or without a query): the capabilities
/// interaction.
pub fn is_metadata(method: &str, path: &str, base_path: &str) -> bool {
    matches!(method, "GET" | "HEAD")
        && path.trim_end_matches('/').strip_prefix(base_path) == Some("/metadata")
}

/// What the plan is decided against: the operator's configuration.
pub struct Policy<'a> {
    /// Label systems of the access labels.
    pub labels: &'a LabelSystems,
    /// CVR → SOR codes, for supporters' constraints.
    pub directory: &'a CvrDirectory,
    /// Verifies paging handles.
    pub signer: &'a PageSigner,
    /// `response.drop_totals`: `_summary=count` is refused.
    pub drop_totals: bool,
}

/// One request to the FHIR server, relative to its base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRequest {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// Path and query under the FHIR base, e.g. `AuditEvent?_security=…` or `?_getpages=…`.
    pub target: String,
    /// The body (a create's labelled registration).
    pub body: Option<Vec<u8>>,
}

/// The check the FHIR server's answer gets (`fhir::response`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerCheck {
    /// A searchset: entries the constraint does not admit are dropped, links signed.
    Searchset {
        /// The caller's constraint.
        constraint: Constraint,
        /// Remove `total`: `response.drop_totals`, and always for a supporter ([`no_counts`]).
        drop_totals: bool,
    },
    /// A read or vread: the AuditEvent `id` with the caller's label, else 404 / 502.
    Resource {
        /// The caller's constraint.
        constraint: Constraint,
        /// The id asked for.
        id: String,
    },
    /// A create: the record just created, carrying exactly `stamped`.
    Created {
        /// The station's constraint (its device label).
        constraint: Constraint,
        /// The labels stamped on the registration.
        stamped: Vec<Label>,
    },
}

/// What happens to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The proxy answers itself with its CapabilityStatement.
    Capabilities,
    /// Send `upstream`, check the answer with `check`.
    Forward {
        /// What the FHIR server gets.
        upstream: UpstreamRequest,
        /// What its answer must pass.
        check: AnswerCheck,
        /// `Some(cvr)`: a supporter's answer, due a MinLog audit record naming the citizens
        /// shown.
        audit: Option<String>,
    },
}

/// Decide one request. `body` is the request body (a create's registration; ignored
/// otherwise).
///
/// Whether searchsets for `principal` go without `total` and `_summary=count` is refused:
/// with `response.drop_totals` for everyone, and always for a supporter. A supporter's view of
/// citizens' registrations must leave a MinLog record (rule 21), and records are written for
/// the registrations an answer shows; a count (`_summary=count`, or `total` beside
/// `_count=0`) would tell a supporter how many registrations a citizen has with nothing shown
/// and so nothing recorded.
pub fn no_counts(principal: &Principal, policy: &Policy<'_>) -> bool {
    policy.drop_totals || matches!(principal, Principal::Supporter { .. })
}

/// Errors: the [`Refusal`] of the first rule that refuses (see the module table).
pub fn plan(
    interaction: Interaction,
    principal: &Principal,
    body: &[u8],
    policy: &Policy<'_>,
) -> Result<Plan, Refusal> {
    let grants = principal.grants();
    let constraint = || Constraint::for_principal(principal, policy.labels, policy.directory);
    let audit = match principal {
        Principal::Supporter { cvr, .. } => Some(cvr.clone()),
        _ => None,
    };
    let (upstream, check) = match interaction {
        Interaction::Capabilities => return Ok(Plan::Capabilities),
        Interaction::Create => {
            let Principal::Station(station) = principal else {
                return Err(Refusal::Forbidden(Forbidden::NotAStation));
            };
            let labelled = registration::validate_and_label(body, station, policy.labels)?;
            (
                UpstreamRequest {
                    method: "POST",
                    target: "AuditEvent".to_string(),
                    body: Some(labelled.body),
                },
                AnswerCheck::Created {
                    constraint: constraint()?,
                    stamped: labelled.labels,
                },
            )
        }
        Interaction::Search(query) => {
            if !grants.search {
                return Err(Refusal::Forbidden(Forbidden::NoSearchGrant));
            }
            let drop_totals = no_counts(principal, policy);
            if drop_totals && query.counts_only() {
                return Err(Refusal::Invalid(Invalid::CountsNotOffered));
            }
            let constraint = constraint()?;
            let qs = query.to_query_string(&[("_security", constraint.search_value())]);
            (
                UpstreamRequest {
                    method: "GET",
                    target: format!("AuditEvent?{qs}"),
                    body: None,
                },
                AnswerCheck::Searchset {
                    constraint,
                    drop_totals,
                },
            )
        }
        Interaction::Page(page) => {
            if !grants.search {
                return Err(Refusal::Forbidden(Forbidden::NoSearchGrant));
            }
            // The exact target the link was signed over, with this caller's constraint put
            // back: another caller's link, or a link from before the caller's constraint
            // changed, fails the signature.
            let constraint = constraint()?;
            let target = page.target.upstream_target(&constraint);
            policy.signer.verify(
                &principal.binding_key(),
                &constraint,
                &target,
                &page.signature,
            )?;
            (
                UpstreamRequest {
                    method: "GET",
                    target,
                    body: None,
                },
                AnswerCheck::Searchset {
                    constraint,
                    drop_totals: no_counts(principal, policy),
                },
            )
        }
        Interaction::Read { id, version } => {
            if !grants.read {
                return Err(Refusal::Forbidden(Forbidden::NoReadGrant));
            }
            let constraint = constraint()?;
            let target = match &version {
                Some(v) => format!("AuditEvent/{id}/_history/{v}"),
                None => format!("AuditEvent/{id}"),
            };
            (
                UpstreamRequest {
                    method: "GET",
                    target,
                    body: None,
                },
                AnswerCheck::Resource { constraint, id },
            )
        }
    };
    Ok(Plan::Forward {
        upstream,
        check,
        audit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::principal::Station;
    use crate::auth::scope::Grants;
    use crate::auth::token::OrgContext;
    use crate::fhir::interaction::{classify, RequestParts};
    use crate::fhir::paging::parse_page_request;
    use serde_json::Value;

    const ALL: Grants = Grants {
        create: true,
        read: true,
        search: true,
    };

    fn station(grants: Grants, org: bool) -> Principal {
        Principal::Station(Station {
            device_id: "Cura-EUA".into(),
            org: org.then(|| OrgContext {
                name: None,
                sor: "937961000016000".into(),
                gln: "GLN-1234".into(),
            }),
            grants,
        })
    }

    fn citizen(grants: Grants) -> Principal {
        Principal::Citizen {
            cpr: "0101010001".into(),
            grants,
        }
    }

    fn supporter(cvr: &str) -> Principal {
        Principal::Supporter {
            cvr: cvr.into(),
            grants: Grants {
                create: false,
                read: true,
                search: true,
            },
        }
    }

    fn without(mut g: Grants, letter: char) -> Grants {
        match letter {
            'c' => g.create = false,
            'r' => g.read = false,
            _ => g.search = false,
        }
        g
    }

    fn directory() -> CvrDirectory {
        CvrDirectory::from_pairs([("29189846", vec!["937961000016000"])])
    }

    fn interaction(method: &str, path: &str, query: Option<&str>, body: &[u8]) -> Interaction {
        let content_type = match method {
            "POST" if path.ends_with("_search") => Some("application/x-www-form-urlencoded"),
            "POST" => Some("application/fhir+json"),
            _ => None,
        };
        classify(
            &RequestParts {
                method,
                path,
                query,
                content_type,
                conditional: false,
                validators: false,
                body,
            },
            "/fhir",
            50,
        )
        .unwrap()
    }

    fn registration() -> Vec<u8> {
        include_bytes!("../../tests/fixtures/AuditEvent-EDS-PDS-01.1.json").to_vec()
    }

    /// Every interaction for every kind of principal (and each missing grant): the exact plan
    /// or the exact refusal.
    #[test]
    fn every_interaction_for_every_principal() {
        let labels = LabelSystems::default();
        let directory = directory();
        let signer = PageSigner::new(vec![7; 32]);
        let policy = |drop_totals| Policy {
            labels: &labels,
            directory: &directory,
            signer: &signer,
            drop_totals,
        };
        let reg = registration();
        let dev = "urn%3Aeds-proxy%3Alabel%3Adevice-id%7CCura-EUA";
        let cpr = "urn%3Aeds-proxy%3Alabel%3Acpr%7C0101010001";
        let sor = "urn%3Aeds-proxy%3Alabel%3Asor%7C937961000016000";
        let page_for = |p: &Principal| {
            // Signed under the principal's constraint (a supporter of an unknown CVR has none
            // and is refused before the signature matters).
            let constraint = crate::fhir::labels::Constraint::for_principal(p, &labels, &directory)
                .unwrap_or_else(|_| {
                    crate::fhir::labels::Constraint::for_principal(
                        &station(ALL, false),
                        &labels,
                        &directory,
                    )
                    .unwrap()
                });
            let sig = signer.sign(
                &p.binding_key(),
                &constraint,
                "?_getpages=abc&_getpagesoffset=10&_count=10&_bundletype=searchset",
            );
            interaction(
                "GET",
                "/fhir",
                Some(&format!("_getpages=abc&_getpagesoffset=10&_count=10&_bundletype=searchset&_eds_sig={sig}")),
                b"",
            )
        };
        let forged_page = interaction(
            "GET",
            "/fhir",
            Some("_getpages=abc&_getpagesoffset=10&_count=10&_bundletype=searchset&_eds_sig=AAAA"),
            b"",
        );
        let search = || interaction("GET", "/fhir/AuditEvent", Some("message-id=m"), b"");
        let count = || interaction("GET", "/fhir/AuditEvent", Some("_summary=count"), b"");
        let read = || interaction("GET", "/fhir/AuditEvent/a1", None, b"");
        let vread = || interaction("GET", "/fhir/AuditEvent/a1/_history/2", None, b"");
        let create = || interaction("POST", "/fhir/AuditEvent", None, &reg);
        let principals = [
            ("station", station(ALL, true)),
            ("station without c", station(without(ALL, 'c'), true)),
            ("station without r", station(without(ALL, 'r'), true)),
            ("station without s", station(without(ALL, 's'), true)),
            ("station without org", station(ALL, false)),
            ("citizen", citizen(without(ALL, 'c'))),
            (
                "citizen without r",
                citizen(without(without(ALL, 'c'), 'r')),
            ),
            ("supporter", supporter("29189846")),
            ("supporter of an unknown cvr", supporter("99999999")),
        ];
        for (name, p) in &principals {
            let g = p.grants();
            let audit = matches!(p, Principal::Supporter { .. }).then(|| "29189846".to_string());
            let label = match p {
                Principal::Station(_) => dev,
                Principal::Citizen { .. } => cpr,
                Principal::Supporter { .. } => sor,
            };
            let unknown_cvr = *name == "supporter of an unknown cvr";
            let constraint = || Constraint::for_principal(p, &labels, &directory);
            let forward = |method, target: String, check| {
                Ok(Plan::Forward {
                    upstream: UpstreamRequest {
                        method,
                        target,
                        body: None,
                    },
                    check,
                    audit: audit.clone(),
                })
            };
            let search_want = if !g.search {
                Err(Refusal::Forbidden(Forbidden::NoSearchGrant))
            } else if unknown_cvr {
                Err(Refusal::Forbidden(Forbidden::UnknownCvr))
            } else {
                forward(
                    "GET",
                    format!("AuditEvent?_security={label}&message-id=m"),
                    AnswerCheck::Searchset {
                        constraint: constraint().unwrap(),
                        drop_totals: matches!(p, Principal::Supporter { .. }),
                    },
                )
            };
            assert_eq!(
                plan(search(), p, b"", &policy(false)),
                search_want,
                "{name}: search"
            );
            let count_want = if !g.search {
                Err(Refusal::Forbidden(Forbidden::NoSearchGrant))
            } else {
                Err(Refusal::Invalid(Invalid::CountsNotOffered))
            };
            assert_eq!(
                plan(count(), p, b"", &policy(true)),
                count_want,
                "{name}: count"
            );
            // A supporter is never offered counts, whatever `response.drop_totals` says.
            if g.search && matches!(p, Principal::Supporter { .. }) {
                assert_eq!(
                    plan(count(), p, b"", &policy(false)),
                    Err(Refusal::Invalid(Invalid::CountsNotOffered)),
                    "{name}: count"
                );
            }
            let page_want = if !g.search {
                Err(Refusal::Forbidden(Forbidden::NoSearchGrant))
            } else if unknown_cvr {
                Err(Refusal::Forbidden(Forbidden::UnknownCvr))
            } else {
                forward(
                    "GET",
                    "?_getpages=abc&_getpagesoffset=10&_count=10&_bundletype=searchset".into(),
                    AnswerCheck::Searchset {
                        constraint: constraint().unwrap(),
                        drop_totals: matches!(p, Principal::Supporter { .. }),
                    },
                )
            };
            assert_eq!(
                plan(page_for(p), p, b"", &policy(false)),
                page_want,
                "{name}: page"
            );
            if g.search {
                assert!(
                    matches!(
                        plan(forged_page.clone(), p, b"", &policy(false)),
                        Err(Refusal::Forbidden(_))
                    ),
                    "{name}: forged page"
                );
            }
            for (what, i, target) in [
                ("read", read(), "AuditEvent/a1"),
                ("vread", vread(), "AuditEvent/a1/_history/2"),
            ] {
                let want = if !g.read {
                    Err(Refusal::Forbidden(Forbidden::NoReadGrant))
                } else if unknown_cvr {
                    Err(Refusal::Forbidden(Forbidden::UnknownCvr))
                } else {
                    forward(
                        "GET",
                        target.to_string(),
                        AnswerCheck::Resource {
                            constraint: constraint().unwrap(),
                            id: "a1".into(),
                        },
                    )
                };
                assert_eq!(plan(i, p, b"", &policy(false)), want, "{name}: {what}");
            }
            let created = plan(create(), p, &reg, &policy(false));
            match (name, created) {
                (
                    &"station",
                    Ok(Plan::Forward {
                        upstream,
                        check,
                        audit: None,
                    }),
                ) => {
                    assert_eq!(
                        (upstream.method, upstream.target.as_str()),
                        ("POST", "AuditEvent")
                    );
                    let body: Value = serde_json::from_slice(&upstream.body.unwrap()).unwrap();
                    assert_eq!(body["meta"]["security"].as_array().unwrap().len(), 4);
                    let AnswerCheck::Created { stamped, .. } = check else {
                        panic!("{check:?}")
                    };
                    assert_eq!(stamped.len(), 4);
                }
                (&"station without c", got) => {
                    assert_eq!(got, Err(Refusal::Forbidden(Forbidden::NoCreateGrant)))
                }
                (&"station without org", got) => {
                    assert_eq!(got, Err(Refusal::Forbidden(Forbidden::NoOrgContext)))
                }
                (n, got) if n.starts_with("station") => assert!(got.is_ok(), "{n}: create"),
                (n, got) => assert_eq!(
                    got,
                    Err(Refusal::Forbidden(Forbidden::NotAStation)),
                    "{n}: create"
                ),
            }
            assert_eq!(
                plan(Interaction::Capabilities, p, b"", &policy(false)),
                Ok(Plan::Capabilities)
            );
        }
    }

    #[test]
    fn only_metadata_with_safe_parameters_is_token_free() {
        assert!(token_free("GET", "/fhir/metadata", None, "/fhir"));
        assert!(token_free("GET", "/fhir/metadata/", None, "/fhir"));
        assert!(token_free(
            "GET",
            "/fhir/metadata",
            Some("_format=json"),
            "/fhir"
        ));
        for q in [
            "_format=json&_pretty=true",
            "_summary=true",
            "mode=full",
            "mode=normal&_format=application/fhir%2Bjson",
        ] {
            assert!(token_free("GET", "/fhir/metadata", Some(q), "/fhir"), "{q}");
            assert!(
                token_free("HEAD", "/fhir/metadata", Some(q), "/fhir"),
                "{q}"
            );
        }
        for q in [
            "_format=xml",
            "mode=terminology",
            "_summary=count",
            "_pretty=yes",
            "x=1",
            "_elements=id",
        ] {
            assert!(
                !token_free("GET", "/fhir/metadata", Some(q), "/fhir"),
                "{q}"
            );
        }
        assert!(!token_free("POST", "/fhir/metadata", None, "/fhir"));
        assert!(!token_free("GET", "/fhir/AuditEvent", None, "/fhir"));
        assert!(!token_free("GET", "/metadata", None, "/fhir"));
        assert!(token_free("GET", "/metadata", None, ""));
        assert!(is_metadata("GET", "/fhir/metadata", "/fhir"));
    }

    /// A link is signed for the caller's constraint as it was when the link was issued, in
    /// both link forms: a supporter whose CVR lost a SOR code, or any caller after a reload
    /// changed the label systems, cannot page on through a search the FHIR server stored
    /// under the old constraint (a `_getpages` handle keeps it). c-any finding: the handle
    /// form was signed over the handle alone and kept working.
    #[test]
    fn a_link_stops_working_when_the_callers_constraint_changes() {
        use crate::fhir::labels::Constraint;
        use crate::fhir::paging::{signed_link, target_of_link};
        let signer = PageSigner::new(vec![7; 32]);
        let before = CvrDirectory::from_pairs([("29189846", vec!["A1", "B2"])]);
        let after = CvrDirectory::from_pairs([("29189846", vec!["A1"])]);
        let labels = LabelSystems::default();
        let moved = LabelSystems {
            sor: "urn:eds-proxy:label:sor-v2".into(),
            ..LabelSystems::default()
        };
        let who = supporter("29189846");
        let issued = Constraint::for_principal(&who, &labels, &before).unwrap();
        let sor = |code: &str| format!("urn%3Aeds-proxy%3Alabel%3Asor%7C{code}");
        for relative in [
            "?_getpages=abc&_getpagesoffset=10&_count=10&_bundletype=searchset".to_string(),
            format!(
                "/AuditEvent?_security={}%2C{}&_page=2",
                sor("A1"),
                sor("B2")
            ),
        ] {
            let target = target_of_link(&relative, &issued, 50).unwrap();
            let link = signed_link(
                "https://p/fhir",
                &target,
                &issued,
                &signer,
                &who.binding_key(),
                "/fhir",
                8192,
            )
            .unwrap();
            let query = link.strip_prefix("https://p/fhir?").unwrap();
            let page = || {
                Interaction::Page(
                    parse_page_request(&crate::fhir::query::decode_pairs(query), 50).unwrap(),
                )
            };
            let policy = |labels, directory| Policy {
                labels,
                directory,
                signer: &signer,
                drop_totals: false,
            };
            assert!(
                plan(page(), &who, b"", &policy(&labels, &before)).is_ok(),
                "{relative}"
            );
            for (why, labels, directory) in [
                ("a SOR code removed", &labels, &after),
                ("label systems changed", &moved, &before),
            ] {
                assert_eq!(
                    plan(page(), &who, b"", &policy(labels, directory))
                        .map(|_| ())
                        .map_err(|e| e.reason()),
                    Err("page_not_issued"),
                    "{why}: {relative}"
                );
            }
        }
    }

    #[test]
    fn a_page_handle_of_another_principal_is_refused() {
        let labels = LabelSystems::default();
        let directory = directory();
        let signer = PageSigner::new(vec![7; 32]);
        let policy = Policy {
            labels: &labels,
            directory: &directory,
            signer: &signer,
            drop_totals: false,
        };
        let owner = station(ALL, true);
        let other = citizen(without(ALL, 'c'));
        let sig = signer.sign(
            &owner.binding_key(),
            &crate::fhir::labels::Constraint::for_principal(&owner, &labels, &directory).unwrap(),
            "?_getpages=abc&_getpagesoffset=10&_count=10&_bundletype=searchset",
        );
        let pairs = crate::fhir::query::decode_pairs(&format!(
            "_getpages=abc&_getpagesoffset=10&_count=10&_bundletype=searchset&_eds_sig={sig}"
        ));
        let page = parse_page_request(&pairs, 50).unwrap();
        assert!(plan(Interaction::Page(page.clone()), &owner, b"", &policy).is_ok());
        assert!(matches!(
            plan(Interaction::Page(page), &other, b"", &policy),
            Err(Refusal::Forbidden(_))
        ));
    }
}

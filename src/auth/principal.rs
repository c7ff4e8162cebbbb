//! Who is calling: a Station, a Citizen or a Supporter, derived from validated claims by the
//! rules of the EDS security page. Anything that is not exactly one of them is refused.
//!
//! Fixed rules where a token could be read two ways:
//! - `system/` and `user/` AuditEvent scopes in one token: refused (403), the kinds of
//!   client are enrolled separately.
//! - A user token that qualifies as Supporter (a `cvr` and the granting role for that CVR in
//!   `priv`) is a Supporter even if it also carries a `cpr`: the role is an explicit grant by
//!   the user catalogue. Without the role, a `cpr` makes it a Citizen.

use super::privileges;
use super::scope::{self, Grants};
use super::token::{EdsClaims, OrgContext};
use crate::error::{Forbidden, Refusal};

/// What the principal rules are checked against (from configuration).
#[derive(Debug, Clone)]
pub struct PrincipalPolicy {
    /// `acr` values a user token must carry one of (NSIS Substantial or High).
    pub accepted_acr: Vec<String>,
    /// The `priv` role that makes a user with a `cvr` claim a Supporter.
    pub supporter_role: String,
}

/// A station (a system client enrolled with a device id in the EER): registers and reads its
/// own registrations (EDS security page, "Calls to EDS").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Station {
    /// The `ehmi:eer:device_id` claim: the EER device id the station is enrolled with.
    pub device_id: String,
    /// Present only if the token's `SOR:`/`GLN:` scopes agree with `ehmi:org_context`:
    /// a station can register only with an org context.
    pub org: Option<OrgContext>,
    /// What its `system/AuditEvent.*` scopes grant.
    pub grants: Grants,
}

/// Exactly one kind of caller, derived from a validated token by `principal_from_claims`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A system client with its device id.
    Station(Station),
    /// A citizen (user token with a `cpr` and an accepted `acr`): reads registrations about
    /// themself.
    Citizen {
        /// The `cpr` claim: the citizen's CPR number. Personal data, never logged.
        cpr: String,
        /// What the `user/AuditEvent.*` scopes grant (reads and searches only).
        grants: Grants,
    },
    /// A supporter (user token with an accepted `acr`, a `cvr` and the supporter role for it
    /// in `priv`): reads the registrations of its organisation's SOR codes.
    Supporter {
        /// The `cvr` claim: the organisation's CVR number.
        cvr: String,
        /// What the `user/AuditEvent.*` scopes grant (reads and searches only).
        grants: Grants,
    },
}

impl Principal {
    /// `station`, `citizen` or `supporter`: the `principal` label of metrics and the access log.
    pub fn kind(&self) -> &'static str {
        match self {
            Principal::Station(_) => "station",
            Principal::Citizen { .. } => "citizen",
            Principal::Supporter { .. } => "supporter",
        }
    }

    /// What the token's AuditEvent scopes grant this principal.
    pub fn grants(&self) -> Grants {
        match self {
            Principal::Station(s) => s.grants,
            Principal::Citizen { grants, .. } | Principal::Supporter { grants, .. } => *grants,
        }
    }

    /// A stable identity for binding page handles: kind and the identifier the constraint is
    /// built from. Never logged (a CPR is personal data).
    pub fn binding_key(&self) -> String {
        match self {
            Principal::Station(s) => format!("station\u{0}{}", s.device_id),
            Principal::Citizen { cpr, .. } => format!("citizen\u{0}{cpr}"),
            Principal::Supporter { cvr, .. } => format!("supporter\u{0}{cvr}"),
        }
    }
}

/// Longest identifier accepted in a claim; real ones are far shorter.
const MAX_IDENTIFIER_LEN: usize = 128;

fn identifier(name: &'static str, value: Option<&str>) -> Result<String, Refusal> {
    let v = value.map(str::trim).unwrap_or_default();
    if v.is_empty() {
        return Err(Refusal::Forbidden(Forbidden::MissingClaim { claim: name }));
    }
    if v.len() > MAX_IDENTIFIER_LEN || v.chars().any(char::is_control) {
        return Err(Refusal::Forbidden(Forbidden::InvalidClaim { claim: name }));
    }
    // Every identifier here becomes (or is compared with) an access-label code: plain tokens
    // only, so no FHIR server's reading of search escapes matters (`labels::is_plain_token`).
    if !crate::fhir::labels::is_plain_token(v) {
        return Err(Refusal::Forbidden(Forbidden::ClaimNotPlainToken {
            claim: name,
        }));
    }
    Ok(v.to_string())
}

/// The principal a validated token describes, by the rules of the module documentation.
///
/// Errors: 403 (`Refusal::Forbidden`) when the token is not for EDS, grants no or both kinds
/// of AuditEvent scope, or lacks what its kind needs (device id, NSIS `acr`, `cpr`, or `cvr`
/// with the supporter role).
pub fn principal_from_claims(
    claims: &EdsClaims,
    policy: &PrincipalPolicy,
) -> Result<Principal, Refusal> {
    let scopes = scope::parse(&claims.scope);
    if !scopes.eds {
        return Err(Refusal::Forbidden(Forbidden::NotForEds));
    }
    match (scopes.system.any(), scopes.user.any()) {
        (true, true) => Err(Refusal::Forbidden(Forbidden::MixedScopes)),
        (true, false) => station(claims, &scopes),
        (false, true) => user(claims, scopes.user, policy),
        (false, false) => Err(Refusal::Forbidden(Forbidden::NoAccessScope)),
    }
}

fn station(claims: &EdsClaims, scopes: &scope::Scopes) -> Result<Principal, Refusal> {
    let device_id = identifier("ehmi:eer:device_id", claims.device_id.as_deref())?;
    if scopes.sor.len() > 1 || scopes.gln.len() > 1 {
        return Err(Refusal::Forbidden(Forbidden::SeveralOrgScopes));
    }
    let org = match &claims.org_context {
        None => {
            if !scopes.sor.is_empty() || !scopes.gln.is_empty() {
                return Err(Refusal::Forbidden(Forbidden::OrgScopesWithoutContext));
            }
            None
        }
        Some(org) => {
            let sor = identifier("ehmi:org_context.sor", Some(&org.sor))?;
            let gln = identifier("ehmi:org_context.gln", Some(&org.gln))?;
            let scoped_sor = scopes.sor.first().map(String::as_str);
            let scoped_gln = scopes.gln.first().map(String::as_str);
            if scoped_sor.is_some_and(|s| s != sor) || scoped_gln.is_some_and(|g| g != gln) {
                return Err(Refusal::Forbidden(Forbidden::OrgScopesMismatch));
            }
            // Registration needs both scopes present and equal to the org context.
            (scoped_sor.is_some() && scoped_gln.is_some()).then(|| OrgContext {
                name: org.name.clone(),
                sor,
                gln,
            })
        }
    };
    Ok(Principal::Station(Station {
        device_id,
        org,
        grants: scopes.system,
    }))
}

fn user(
    claims: &EdsClaims,
    grants: Grants,
    policy: &PrincipalPolicy,
) -> Result<Principal, Refusal> {
    // User clients never register, whatever their scope letters say.
    let grants = Grants {
        create: false,
        ..grants
    };
    let acr_ok = claims
        .acr
        .as_deref()
        .is_some_and(|a| policy.accepted_acr.iter().any(|x| x == a));
    if !acr_ok {
        return Err(Refusal::Forbidden(Forbidden::AssuranceTooLow));
    }
    if claims.cvr.is_some() {
        let cvr = identifier("cvr", claims.cvr.as_deref())?;
        let role_granted = match &claims.privileges {
            Some(p) => privileges::parse(p)
                .map(|groups| privileges::grants(&groups, &cvr, &policy.supporter_role))
                .unwrap_or(false),
            None => false,
        };
        if role_granted {
            return Ok(Principal::Supporter { cvr, grants });
        }
        if claims.cpr.is_none() {
            return Err(Refusal::Forbidden(Forbidden::NoSupporterRole));
        }
    }
    let cpr = identifier("cpr", claims.cpr.as_deref())?;
    Ok(Principal::Citizen { cpr, grants })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NSIS_HIGH, NSIS_SUBSTANTIAL};
    use serde_json::json;

    const ROLE: &str = "urn:test:supporter";

    fn policy() -> PrincipalPolicy {
        PrincipalPolicy {
            accepted_acr: vec![NSIS_SUBSTANTIAL.into(), NSIS_HIGH.into()],
            supporter_role: ROLE.into(),
        }
    }

    fn claims(v: serde_json::Value) -> EdsClaims {
        let mut base = json!({"exp": 4_000_000_000i64});
        if let (Some(b), Some(extra)) = (base.as_object_mut(), v.as_object()) {
            b.extend(extra.clone());
        }
        serde_json::from_value(base).unwrap()
    }

    /// Issue 13 item 2: identifiers that become access-label codes are plain tokens.
    #[test]
    fn identifiers_with_search_specials_are_refused() {
        for special in [",", "|", "\\", "$"] {
            let v = format!("a{special}b");
            for (claim, extra) in [
                ("ehmi:eer:device_id", json!({"ehmi:eer:device_id": v})),
                (
                    "ehmi:org_context.sor",
                    json!({"scope": format!("EDS system/AuditEvent.crs SOR:{v} GLN:222"),
                           "ehmi:org_context": {"sor": v, "gln": "222"}}),
                ),
            ] {
                let mut c = station_claims();
                c.as_object_mut()
                    .unwrap()
                    .extend(extra.as_object().unwrap().clone());
                assert_eq!(
                    principal_from_claims(&claims(c), &policy()),
                    Err(Refusal::Forbidden(Forbidden::ClaimNotPlainToken { claim })),
                    "{claim} {v}"
                );
            }
            let citizen =
                json!({"scope": "EDS user/AuditEvent.rs", "cpr": v, "acr": NSIS_SUBSTANTIAL});
            assert_eq!(
                principal_from_claims(&claims(citizen), &policy()),
                Err(Refusal::Forbidden(Forbidden::ClaimNotPlainToken {
                    claim: "cpr"
                }))
            );
            let supporter =
                json!({"scope": "EDS user/AuditEvent.rs", "cvr": v, "acr": NSIS_SUBSTANTIAL});
            assert_eq!(
                principal_from_claims(&claims(supporter), &policy()),
                Err(Refusal::Forbidden(Forbidden::ClaimNotPlainToken {
                    claim: "cvr"
                }))
            );
        }
    }

    fn station_claims() -> serde_json::Value {
        json!({
            "scope": "EDS system/AuditEvent.crs SOR:111 GLN:222",
            "ehmi:eer:device_id": "dev-1",
            "ehmi:org_context": {"name": "Org", "sor": "111", "gln": "222"}
        })
    }

    #[test]
    fn station_with_matching_org_context_can_register() {
        let p = principal_from_claims(&claims(station_claims()), &policy()).unwrap();
        let Principal::Station(s) = p else {
            panic!("not a station")
        };
        assert_eq!(s.device_id, "dev-1");
        assert_eq!(s.org.unwrap().sor, "111");
        assert!(s.grants.create && s.grants.read && s.grants.search);
    }

    #[test]
    fn station_without_org_scopes_can_search_but_has_no_org() {
        let mut c = station_claims();
        c["scope"] = json!("EDS system/AuditEvent.rs");
        c.as_object_mut().unwrap().remove("ehmi:org_context");
        let Principal::Station(s) = principal_from_claims(&claims(c), &policy()).unwrap() else {
            panic!()
        };
        assert!(s.org.is_none());
        assert!(!s.grants.create);
    }

    #[test]
    fn station_refusals() {
        let cases: Vec<(&str, serde_json::Value, Forbidden)> = vec![
            (
                "no EDS scope",
                json!({"scope": "system/AuditEvent.crs SOR:111 GLN:222"}),
                Forbidden::NotForEds,
            ),
            (
                "no device id",
                json!({"ehmi:eer:device_id": null}),
                Forbidden::MissingClaim {
                    claim: "ehmi:eer:device_id",
                },
            ),
            (
                "empty device id",
                json!({"ehmi:eer:device_id": " "}),
                Forbidden::MissingClaim {
                    claim: "ehmi:eer:device_id",
                },
            ),
            (
                "SOR mismatch",
                json!({"scope": "EDS system/AuditEvent.crs SOR:999 GLN:222"}),
                Forbidden::OrgScopesMismatch,
            ),
            (
                "GLN mismatch",
                json!({"scope": "EDS system/AuditEvent.crs SOR:111 GLN:999"}),
                Forbidden::OrgScopesMismatch,
            ),
            (
                "two SOR scopes",
                json!({"scope": "EDS system/AuditEvent.crs SOR:111 SOR:112 GLN:222"}),
                Forbidden::SeveralOrgScopes,
            ),
            (
                "system and user",
                json!({"scope": "EDS system/AuditEvent.crs user/AuditEvent.rs SOR:111 GLN:222"}),
                Forbidden::MixedScopes,
            ),
            (
                "wildcard only",
                json!({"scope": "EDS system/*.crs"}),
                Forbidden::NoAccessScope,
            ),
        ];
        for (name, patch, why) in cases {
            let mut c = station_claims();
            for (k, v) in patch.as_object().unwrap() {
                c[k] = v.clone();
            }
            let r = principal_from_claims(&claims(c), &policy());
            assert_eq!(r, Err(Refusal::Forbidden(why)), "{name}");
        }
    }

    #[test]
    fn org_scopes_without_org_context_are_refused() {
        let mut c = station_claims();
        c.as_object_mut().unwrap().remove("ehmi:org_context");
        assert_eq!(
            principal_from_claims(&claims(c), &policy()),
            Err(Refusal::Forbidden(Forbidden::OrgScopesWithoutContext))
        );
    }

    #[test]
    fn citizen_needs_substantial_acr() {
        let ok = claims(
            json!({"scope": "EDS user/AuditEvent.rs", "cpr": "0101701234", "acr": NSIS_SUBSTANTIAL}),
        );
        assert_eq!(
            principal_from_claims(&ok, &policy()).unwrap(),
            Principal::Citizen {
                cpr: "0101701234".into(),
                grants: Grants {
                    create: false,
                    read: true,
                    search: true
                }
            }
        );
        for acr in [
            json!("https://data.gov.dk/concept/core/nsis/loa/Low"),
            json!(null),
            json!("substantial"),
        ] {
            let low =
                claims(json!({"scope": "EDS user/AuditEvent.rs", "cpr": "0101701234", "acr": acr}));
            assert_eq!(
                principal_from_claims(&low, &policy()),
                Err(Refusal::Forbidden(Forbidden::AssuranceTooLow))
            );
        }
    }

    #[test]
    fn user_tokens_never_create() {
        let c = claims(
            json!({"scope": "EDS user/AuditEvent.crs", "cpr": "0101701234", "acr": NSIS_HIGH}),
        );
        assert!(
            !principal_from_claims(&c, &policy())
                .unwrap()
                .grants()
                .create
        );
    }

    #[test]
    fn supporter_needs_role_for_own_cvr() {
        let priv_ok = json!([{"scope": "urn:dk:gov:saml:cvrNumberIdentifier:12345678", "privileges": [ROLE]}]);
        let c = claims(
            json!({"scope": "EDS user/AuditEvent.rs", "cvr": "12345678", "acr": NSIS_SUBSTANTIAL, "priv": priv_ok}),
        );
        assert!(matches!(
            principal_from_claims(&c, &policy()).unwrap(),
            Principal::Supporter { .. }
        ));

        let priv_other = json!([{"scope": "urn:dk:gov:saml:cvrNumberIdentifier:87654321", "privileges": [ROLE]}]);
        let c = claims(
            json!({"scope": "EDS user/AuditEvent.rs", "cvr": "12345678", "acr": NSIS_SUBSTANTIAL, "priv": priv_other}),
        );
        assert_eq!(
            principal_from_claims(&c, &policy()),
            Err(Refusal::Forbidden(Forbidden::NoSupporterRole))
        );

        let c = claims(
            json!({"scope": "EDS user/AuditEvent.rs", "cvr": "12345678", "acr": NSIS_SUBSTANTIAL}),
        );
        assert_eq!(
            principal_from_claims(&c, &policy()),
            Err(Refusal::Forbidden(Forbidden::NoSupporterRole))
        );
    }

    #[test]
    fn supporter_role_wins_over_cpr_and_without_role_cpr_makes_a_citizen() {
        let priv_ok = json!([{"scope": "urn:dk:gov:saml:cvrNumberIdentifier:12345678", "privileges": [ROLE]}]);
        let c = claims(
            json!({"scope": "EDS user/AuditEvent.rs", "cvr": "12345678", "cpr": "0101701234", "acr": NSIS_SUBSTANTIAL, "priv": priv_ok}),
        );
        assert_eq!(
            principal_from_claims(&c, &policy()).unwrap().kind(),
            "supporter"
        );
        let c = claims(
            json!({"scope": "EDS user/AuditEvent.rs", "cvr": "12345678", "cpr": "0101701234", "acr": NSIS_SUBSTANTIAL}),
        );
        assert_eq!(
            principal_from_claims(&c, &policy()).unwrap().kind(),
            "citizen"
        );
    }

    #[test]
    fn wrong_claim_types_make_the_token_malformed() {
        let r: Result<EdsClaims, _> = serde_json::from_value(json!({"exp": 1, "cpr": 101701234}));
        assert!(r.is_err());
        let r: Result<EdsClaims, _> = serde_json::from_value(json!({"exp": "1"}));
        assert!(r.is_err());
    }
}

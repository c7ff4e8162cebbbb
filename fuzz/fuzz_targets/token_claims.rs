//! Tokens and claims: `read_header` never accepts `none` or HMAC algorithms (even when a lax
//! configuration lists HS256), nor a header with `crit`, `b64`, `zip` or `enc`, nor a `typ`
//! other than a JWT access token's, and `principal_from_claims` makes a principal only from the
//! claims that entitle it: a Station's device_id is its `ehmi:eer:device_id` (trimmed), a
//! Citizen's cpr its `cpr` (trimmed), a Supporter exists only if `priv` grants the configured
//! role for exactly its `cvr`, and user principals never get the create grant.
//! `scope::parse` is checked against an independent model of the scope grammar, and
//! `privileges::parse` must survive any JSON and any base64/XML.
//!
//! Each input is used as: a raw JWT; the JSON header of a forged JWT; raw claims JSON; a
//! scope string; a `priv` claim (JSON, base64 of the bytes as XML, the string itself); and
//! structured bytes (`arbitrary`) for a generated claims set.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use eds_proxy::auth::principal::{principal_from_claims, Principal, PrincipalPolicy};
use eds_proxy::auth::privileges::{self, CVR_SCOPE_PREFIX};
use eds_proxy::auth::scope::{self, Grants};
use eds_proxy::auth::token::{read_header, EdsClaims, TokenPolicy};
use eds_proxy_fuzz::{NSIS_HIGH, NSIS_SUBSTANTIAL, SUPPORTER_ROLE};
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fn policies() -> [TokenPolicy; 2] {
    let strict = TokenPolicy {
        issuer: "https://issuer.test".into(),
        audiences: vec!["eds".into()],
        algorithms: vec![Algorithm::ES256, Algorithm::PS256, Algorithm::EdDSA],
        leeway_seconds: 30,
        max_lifetime_seconds: 3600,
    };
    // A misconfiguration that lists HMAC must still never accept it.
    let mut lax = strict.clone();
    lax.algorithms.extend([
        Algorithm::RS256,
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
    ]);
    [strict, lax]
}

fn principal_policy() -> PrincipalPolicy {
    PrincipalPolicy {
        accepted_acr: vec![NSIS_SUBSTANTIAL.into(), NSIS_HIGH.into()],
        supporter_role: SUPPORTER_ROLE.into(),
    }
}

fn check_header(token: &str) {
    for policy in policies() {
        let Ok(h) = read_header(token, &policy) else {
            continue;
        };
        assert!(
            !matches!(
                h.alg,
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
            ),
            "HMAC algorithm accepted: {token:?}"
        );
        assert!(
            policy.algorithms.contains(&h.alg),
            "unlisted algorithm accepted: {token:?}"
        );
        assert_eq!(
            token.split('.').count(),
            3,
            "accepted a token that is not three parts"
        );
        // Independently: the header segment is base64url JSON whose `alg` is what was read.
        let first = token.split('.').next().unwrap_or_default();
        let header: Value = URL_SAFE_NO_PAD
            .decode(first)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| panic!("accepted a header that is not base64url JSON: {token:?}"));
        let alg = header.get("alg").and_then(Value::as_str);
        let expected = serde_json::to_value(h.alg).unwrap();
        assert_eq!(
            alg,
            expected.as_str(),
            "header alg {alg:?} read as {:?}: {token:?}",
            h.alg
        );
        assert!(
            !alg.unwrap_or_default().eq_ignore_ascii_case("none"),
            "alg none accepted: {token:?}"
        );
        // Nothing that changes how the token must be processed (RFC 7515 §4.1.11, RFC 7797,
        // RFC 7516), and only a JWT access token type (RFC 8725 §3.11).
        for member in ["crit", "b64", "zip", "enc"] {
            assert!(
                header.get(member).is_none(),
                "header with {member} accepted: {token:?}"
            );
        }
        if let Some(typ) = header.get("typ") {
            let typ = typ
                .as_str()
                .unwrap_or_else(|| panic!("non-string typ accepted: {token:?}"))
                .to_ascii_lowercase();
            let bare = typ.strip_prefix("application/").unwrap_or(&typ);
            assert!(
                bare == "jwt" || bare == "at+jwt",
                "typ {typ:?} accepted: {token:?}"
            );
        }
    }
}

/// Independent model of the scope grammar (module docs of `src/auth/scope.rs`).
fn model_scopes(s: &str) -> scope::Scopes {
    fn letters(rest: &str) -> Grants {
        let Some(l) = rest.strip_prefix("AuditEvent.") else {
            return Grants::default();
        };
        let order = "cruds";
        let mut last = None;
        for c in l.chars() {
            match order.find(c) {
                Some(i) if last.is_none_or(|j| i > j) => last = Some(i),
                _ => return Grants::default(),
            }
        }
        if l.is_empty() {
            return Grants::default();
        }
        Grants {
            create: l.contains('c'),
            read: l.contains('r'),
            search: l.contains('s'),
        }
    }
    fn or(a: Grants, b: Grants) -> Grants {
        Grants {
            create: a.create || b.create,
            read: a.read || b.read,
            search: a.search || b.search,
        }
    }
    let mut out = scope::Scopes::default();
    for item in s
        .split(|c: char| c.is_ascii_whitespace())
        .filter(|i| !i.is_empty())
    {
        if item == "EDS" {
            out.eds = true;
        } else if let Some(v) = item.strip_prefix("SOR:") {
            out.sor.push(v.into());
        } else if let Some(v) = item.strip_prefix("GLN:") {
            out.gln.push(v.into());
        } else if let Some(r) = item.strip_prefix("system/") {
            out.system = or(out.system, letters(r));
        } else if let Some(r) = item.strip_prefix("user/") {
            out.user = or(out.user, letters(r));
        }
    }
    out
}

fn check_scope(s: &str) {
    let got = scope::parse(s);
    assert_eq!(
        got,
        model_scopes(s),
        "scope::parse disagrees with the model on {s:?}"
    );
}

fn check_privileges(claim: &Value) {
    let Ok(groups) = privileges::parse(claim) else {
        return;
    };
    for g in &groups {
        if let Some(cvr) = g.scope.strip_prefix(CVR_SCOPE_PREFIX) {
            for p in &g.privileges {
                assert!(privileges::grants(&groups, cvr, p));
            }
        }
    }
    // A grant names a group whose scope is the CVR URN and which lists the role, both up to
    // URN equivalence (independent model below).
    for cvr in ["12345678", "", "1234567"] {
        if privileges::grants(&groups, cvr, SUPPORTER_ROLE) {
            let urn = format!("{CVR_SCOPE_PREFIX}{cvr}");
            assert!(groups.iter().any(|g| same_urn(&g.scope, &urn)
                && g.privileges.iter().any(|p| same_urn(p, SUPPORTER_ROLE))));
        }
    }
}

/// Independent model of RFC 8141 §3.1 equivalence, looser than `eds_proxy::urn` (it ignores
/// the proxy's refusal of components): the `urn:` scheme and the NID in any case, `%xx` in
/// either case, the rest exact. Whatever the proxy calls equivalent, this does too.
fn same_urn(a: &str, b: &str) -> bool {
    fn key(s: &str) -> String {
        let Some(rest) = s
            .get(..4)
            .filter(|p| p.eq_ignore_ascii_case("urn:"))
            .and_then(|_| s.get(4..))
        else {
            return s.to_string();
        };
        let Some((nid, nss)) = rest.split_once(':') else {
            return s.to_string();
        };
        let mut out = format!("urn:{}:", nid.to_ascii_lowercase());
        let mut hex = 0;
        for c in nss.chars() {
            if hex > 0 && c.is_ascii_hexdigit() {
                out.push(c.to_ascii_uppercase());
                hex -= 1;
            } else {
                hex = if c == '%' { 2 } else { 0 };
                out.push(c);
            }
        }
        out
    }
    a == b || key(a) == key(b)
}

fn trimmed(v: Option<&str>) -> Option<&str> {
    v.map(str::trim)
}

fn check_principal(claims: &EdsClaims) {
    let Ok(p) = principal_from_claims(claims, &principal_policy()) else {
        return;
    };
    let scopes = scope::parse(&claims.scope);
    assert!(scopes.eds, "principal without the EDS scope: {claims:?}");
    let acr_ok = claims
        .acr
        .as_deref()
        .is_some_and(|a| a == NSIS_SUBSTANTIAL || a == NSIS_HIGH);
    let role_for = |cvr: &str| {
        claims
            .privileges
            .as_ref()
            .and_then(|v| privileges::parse(v).ok())
            .is_some_and(|groups| privileges::grants(&groups, cvr, SUPPORTER_ROLE))
    };
    let valid_identifier = |v: &str| {
        !v.is_empty() && v.len() <= 128 && !v.chars().any(char::is_control) && v.trim() == v
    };
    match &p {
        Principal::Station(s) => {
            assert!(
                scopes.system.any() && !scopes.user.any(),
                "station from scopes {:?}",
                claims.scope
            );
            assert_eq!(
                s.grants, scopes.system,
                "station grants differ from its scope"
            );
            assert_eq!(
                Some(s.device_id.as_str()),
                trimmed(claims.device_id.as_deref()),
                "station device_id is not the ehmi:eer:device_id claim"
            );
            assert!(
                valid_identifier(&s.device_id),
                "bad device_id {:?}",
                s.device_id
            );
            if let Some(org) = &s.org {
                let claim = claims
                    .org_context
                    .as_ref()
                    .expect("station org context without an ehmi:org_context claim");
                assert_eq!(org.sor, claim.sor.trim(), "org SOR differs from the claim");
                assert_eq!(org.gln, claim.gln.trim(), "org GLN differs from the claim");
                assert!(valid_identifier(&org.sor) && valid_identifier(&org.gln));
                assert_eq!(
                    scopes.sor,
                    std::slice::from_ref(&org.sor),
                    "org SOR not backed by its SOR: scope"
                );
                assert_eq!(
                    scopes.gln,
                    std::slice::from_ref(&org.gln),
                    "org GLN not backed by its GLN: scope"
                );
            }
        }
        Principal::Citizen { cpr, grants } => {
            assert!(
                scopes.user.any() && !scopes.system.any(),
                "citizen from {:?}",
                claims.scope
            );
            assert!(acr_ok, "citizen without accepted acr: {:?}", claims.acr);
            assert!(
                !grants.create,
                "user principal with the create grant: {claims:?}"
            );
            assert_eq!(
                *grants,
                Grants {
                    create: false,
                    ..scopes.user
                }
            );
            assert_eq!(
                Some(cpr.as_str()),
                trimmed(claims.cpr.as_deref()),
                "citizen cpr is not the cpr claim"
            );
            assert!(valid_identifier(cpr), "bad cpr {cpr:?}");
            // Documented rule: the supporter role wins over a cpr.
            if let Some(cvr) = trimmed(claims.cvr.as_deref()) {
                assert!(
                    !role_for(cvr),
                    "supporter-qualified token became a citizen: {claims:?}"
                );
            }
        }
        Principal::Supporter { cvr, grants } => {
            assert!(
                scopes.user.any() && !scopes.system.any(),
                "supporter from {:?}",
                claims.scope
            );
            assert!(acr_ok, "supporter without accepted acr: {:?}", claims.acr);
            assert!(
                !grants.create,
                "user principal with the create grant: {claims:?}"
            );
            assert_eq!(
                Some(cvr.as_str()),
                trimmed(claims.cvr.as_deref()),
                "supporter cvr is not the cvr claim"
            );
            assert!(valid_identifier(cvr), "bad cvr {cvr:?}");
            assert!(
                role_for(cvr),
                "supporter whose priv does not grant the role for exactly its cvr: {claims:?}"
            );
            // Independently of privileges::parse, for the JSON form: an OIO-BPP group OBJECT
            // whose scope is exactly the CVR URN lists the role (serde would also read a
            // group from an array, field by field).
            if let Some(Value::Array(items)) = &claims.privileges {
                let urn = format!("{CVR_SCOPE_PREFIX}{cvr}");
                assert!(
                    items.iter().any(|g| {
                        g.get("scope").and_then(Value::as_str).is_some_and(|s| same_urn(s, &urn))
                            && g.get("privileges")
                                .and_then(Value::as_array)
                                .is_some_and(|ps| ps.iter().any(|p| p.as_str().is_some_and(|p| same_urn(p, SUPPORTER_ROLE))))
                    }),
                    "supporter from a priv claim without a group object granting the role: {claims:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Structured claims.

const IDS: &[&str] = &[
    "dev-1",
    "111",
    "222",
    "12345678",
    "87654321",
    "0101701234",
    " 111",
    "12345678 ",
    "",
    " ",
    "a\u{0}b",
    "a\u{85}b",
    "x|y,z$",
];

#[derive(Arbitrary, Debug)]
enum Id {
    Known(u8),
    Long(u8),
    Raw(String),
}

impl Id {
    fn get(&self) -> String {
        match self {
            Id::Known(i) => IDS[*i as usize % IDS.len()].to_string(),
            Id::Long(n) => "9".repeat(120 + *n as usize % 16),
            Id::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Letters {
    Crs,
    Rs,
    C,
    R,
    S,
    Cruds,
    Raw(String),
}

impl Letters {
    fn get(&self) -> String {
        match self {
            Letters::Crs => "crs".into(),
            Letters::Rs => "rs".into(),
            Letters::C => "c".into(),
            Letters::R => "r".into(),
            Letters::S => "s".into(),
            Letters::Cruds => "cruds".into(),
            Letters::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum ScopeItem {
    Eds,
    System(Letters),
    User(Letters),
    Sor(Id),
    Gln(Id),
    Raw(String),
}

impl ScopeItem {
    fn get(&self) -> String {
        match self {
            ScopeItem::Eds => "EDS".into(),
            ScopeItem::System(l) => format!("system/AuditEvent.{}", l.get()),
            ScopeItem::User(l) => format!("user/AuditEvent.{}", l.get()),
            ScopeItem::Sor(i) => format!("SOR:{}", i.get()),
            ScopeItem::Gln(i) => format!("GLN:{}", i.get()),
            ScopeItem::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Role {
    Supporter,
    SupporterPadded,
    Other,
    Raw(String),
}

impl Role {
    fn get(&self) -> String {
        match self {
            Role::Supporter => SUPPORTER_ROLE.into(),
            Role::SupporterPadded => format!(" {SUPPORTER_ROLE} "),
            Role::Other => "urn:dk:some:other".into(),
            Role::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Group {
    /// Scope as CVR URN + id, or raw.
    cvr_urn: bool,
    scope: Id,
    roles: Vec<Role>,
}

impl Group {
    fn scope(&self) -> String {
        if self.cvr_urn {
            format!("{CVR_SCOPE_PREFIX}{}", self.scope.get())
        } else {
            self.scope.get()
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Priv {
    Json(Vec<Group>),
    /// Groups as arrays: `[[scope, [role, …]], …]`.
    JsonArrays(Vec<Group>),
    Xml {
        groups: Vec<Group>,
        url_safe: bool,
        wrap: bool,
    },
    Raw(String),
    Number(i64),
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('"', "&quot;")
}

impl Priv {
    fn get(&self) -> Value {
        match self {
            Priv::Json(groups) => Value::Array(
                groups
                    .iter()
                    .map(|g| {
                        json!({"scope": g.scope(), "privileges": g.roles.iter().map(Role::get).collect::<Vec<_>>()})
                    })
                    .collect(),
            ),
            Priv::JsonArrays(groups) => Value::Array(
                groups
                    .iter()
                    .map(|g| json!([g.scope(), g.roles.iter().map(Role::get).collect::<Vec<_>>()]))
                    .collect(),
            ),
            Priv::Xml { groups, url_safe, wrap } => {
                let mut xml = String::from(
                    r#"<?xml version="1.0" encoding="UTF-8"?><bpp:PrivilegeList xmlns:bpp="http://itst.dk/oiosaml/basic_privilege_profile">"#,
                );
                for g in groups {
                    xml.push_str(&format!(r#"<PrivilegeGroup Scope="{}">"#, xml_escape(&g.scope())));
                    for r in &g.roles {
                        xml.push_str(&format!("<Privilege>{}</Privilege>", xml_escape(&r.get())));
                    }
                    xml.push_str("</PrivilegeGroup>");
                }
                xml.push_str("</bpp:PrivilegeList>");
                let mut b64 = if *url_safe {
                    URL_SAFE_NO_PAD.encode(&xml)
                } else {
                    STANDARD.encode(&xml)
                };
                if *wrap && b64.len() > 76 {
                    b64.insert(76, '\n');
                }
                Value::String(b64)
            }
            Priv::Raw(s) => Value::String(s.clone()),
            Priv::Number(n) => json!(n),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Acr {
    Substantial,
    High,
    Low,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Claims {
    scope: Vec<ScopeItem>,
    scope_as_array: bool,
    device_id: Option<Id>,
    org: Option<(Option<String>, Id, Id)>,
    cpr: Option<Id>,
    acr: Option<Acr>,
    cvr: Option<Id>,
    privileges: Option<Priv>,
}

impl Claims {
    fn to_json(&self) -> Value {
        let items: Vec<String> = self.scope.iter().map(ScopeItem::get).collect();
        let mut v = json!({"exp": 4_000_000_000i64, "iss": "https://issuer.test", "aud": "eds"});
        v["scope"] = if self.scope_as_array {
            json!(items)
        } else {
            json!(items.join(" "))
        };
        if let Some(d) = &self.device_id {
            v["ehmi:eer:device_id"] = json!(d.get());
        }
        if let Some((name, sor, gln)) = &self.org {
            v["ehmi:org_context"] = json!({"name": name, "sor": sor.get(), "gln": gln.get()});
        }
        if let Some(c) = &self.cpr {
            v["cpr"] = json!(c.get());
        }
        if let Some(a) = &self.acr {
            v["acr"] = json!(match a {
                Acr::Substantial => NSIS_SUBSTANTIAL.to_string(),
                Acr::High => NSIS_HIGH.to_string(),
                Acr::Low => "https://data.gov.dk/concept/core/nsis/loa/Low".to_string(),
                Acr::Raw(s) => s.clone(),
            });
        }
        if let Some(c) = &self.cvr {
            v["cvr"] = json!(c.get());
        }
        if let Some(p) = &self.privileges {
            v["priv"] = p.get();
        }
        v
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    // JWT headers: the bytes as a token, and as the JSON header of a forged token.
    check_header(&text);
    check_header(&format!("{}.e30.AAAA", URL_SAFE_NO_PAD.encode(data)));

    // Claims JSON as the issuer signed it.
    if let Ok(claims) = serde_json::from_slice::<EdsClaims>(data) {
        check_principal(&claims);
    }

    // Scope strings.
    check_scope(&text);

    // priv claims in every encoding.
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        check_privileges(&v);
    }
    check_privileges(&Value::String(STANDARD.encode(data)));
    check_privileges(&Value::String(text.into_owned()));

    // Generated claims sets.
    let u = Unstructured::new(data);
    if let Ok(c) = Claims::arbitrary_take_rest(u) {
        let v = c.to_json();
        if let Some(p) = v.get("priv") {
            check_privileges(p);
        }
        if let Ok(claims) = serde_json::from_value::<EdsClaims>(v) {
            check_principal(&claims);
        }
    }
});

//! URN equivalence (RFC 8141 §3), for identifiers the proxy compares in security checks.
//!
//! Two URNs are equivalent when they are equal after normalising
//! - the `urn` scheme to lower case (RFC 3986 §3.1 schemes are case-insensitive),
//! - the namespace identifier (NID) to lower case (RFC 8141 §3.1), and
//! - the two hex digits of every percent-encoding to upper case (RFC 3986 §6.2.2.1),
//!
//! and the namespace-specific string (NSS) is otherwise compared exactly: RFC 8141 leaves
//! any further equivalence to each namespace's own rules, and the namespaces the proxy meets
//! (`urn:dk:…`, its own `urn:eds-proxy:…`) register none. Percent-encodings are not decoded
//! (`%2D` is not `-`), as RFC 8141 §3.1 says.
//!
//! RFC 8141 also ignores r-, q- and f-components (`?+`, `?=`, `#`) for equivalence. The
//! proxy does NOT: a string carrying one is compared only exactly. Where `equivalent` decides
//! a grant, recognising `<role>#anything` as the role would widen what the issuer granted;
//! where a refusal must catch every spelling (`fhir::labels::LabelSystems::is_reserved`) a
//! broader comparison is used instead.
//!
//! Strings that are not URNs are compared exactly (RFC 7519 StringOrURI, FHIR `uri`).

use std::borrow::Cow;

/// The parts of a URN that equivalence looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Urn<'a> {
    /// The namespace identifier, as written.
    pub nid: &'a str,
    /// The namespace-specific string, as written.
    pub nss: &'a str,
}

/// Parse `urn:<NID>:<NSS>` (RFC 8141 §2), scheme in any case. `None` for anything else,
/// including a URN with an r-, q- or f-component (see the module documentation).
pub fn parse(s: &str) -> Option<Urn<'_>> {
    let scheme = s.get(..4)?;
    if !scheme.eq_ignore_ascii_case("urn:") {
        return None;
    }
    let rest = s.get(4..)?;
    let (nid, nss) = rest.split_once(':')?;
    // NID = alphanum 0*30ldh alphanum: 2 to 32 letters, digits and hyphens, not at the ends.
    let nid_ok = (2..=32).contains(&nid.len())
        && nid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !nid.starts_with('-')
        && !nid.ends_with('-');
    let nss_ok = !nss.is_empty() && !nss.contains(['?', '#']);
    (nid_ok && nss_ok).then_some(Urn { nid, nss })
}

/// The normal form of a URN under the rules above, or `None` if `s` is not one.
pub fn normalize(s: &str) -> Option<String> {
    let urn = parse(s)?;
    Some(format!(
        "urn:{}:{}",
        urn.nid.to_ascii_lowercase(),
        upper_percent_hex(urn.nss)
    ))
}

/// True if `a` and `b` name the same URN (module rules), or, when either is not a URN
/// (or carries a component), if they are the same string.
pub fn equivalent(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (normalize(a), normalize(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// `%xx` → `%XX`; everything else unchanged.
fn upper_percent_hex(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut after_percent = 0u8;
    for c in s.chars() {
        if after_percent > 0 && c.is_ascii_hexdigit() {
            out.push(c.to_ascii_uppercase());
            after_percent -= 1;
            continue;
        }
        after_percent = if c == '%' { 2 } else { 0 };
        out.push(c);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "urn:dk:healthcare:ehmi:eds:role:supporter";

    #[test]
    fn scheme_and_nid_are_case_insensitive() {
        for other in [
            "URN:dk:healthcare:ehmi:eds:role:supporter",
            "urn:DK:healthcare:ehmi:eds:role:supporter",
            "Urn:Dk:healthcare:ehmi:eds:role:supporter",
        ] {
            assert!(equivalent(ROLE, other), "{other}");
            assert!(equivalent(other, ROLE), "{other}");
        }
        assert!(equivalent(
            "URN:EDS-PROXY:label:device-id",
            "urn:eds-proxy:label:device-id"
        ));
    }

    #[test]
    fn nss_is_case_sensitive_and_exact() {
        for other in [
            "urn:dk:HEALTHCARE:ehmi:eds:role:supporter",
            "urn:dk:healthcare:ehmi:eds:role:Supporter",
            "urn:dk:healthcare:ehmi:eds:role:supporter ",
            " urn:dk:healthcare:ehmi:eds:role:supporter",
            "urn:dk:healthcare:ehmi:eds:role:supporter-suspended",
            "urn:dk:healthcare:ehmi:eds:role:supporte",
            // Percent-encodings are not decoded.
            "urn:dk:healthcare:ehmi:eds:role:supp%6Frter",
        ] {
            assert!(!equivalent(ROLE, other), "{other}");
        }
    }

    #[test]
    fn percent_encoding_hex_case_is_normalised() {
        assert!(equivalent("urn:x-a:b%2fc", "urn:x-a:b%2Fc"));
        assert!(equivalent("URN:X-A:b%2fc%3a", "urn:x-a:b%2Fc%3A"));
        assert!(!equivalent("urn:x-a:b%2fc", "urn:x-a:b/c"));
        assert_eq!(
            normalize("urn:X-A:%aa%BB%c"),
            Some("urn:x-a:%AA%BB%C".into())
        );
    }

    #[test]
    fn components_are_compared_exactly() {
        let with_f = format!("{ROLE}#x");
        let with_q = format!("{ROLE}?=x");
        let with_r = format!("{ROLE}?+x");
        for other in [&with_f, &with_q, &with_r] {
            assert!(!equivalent(ROLE, other), "{other}");
            assert!(equivalent(other, other), "{other}");
            assert_eq!(parse(other), None);
        }
        assert!(!equivalent(&with_f, &with_f.to_uppercase()));
    }

    #[test]
    fn non_urns_compare_exactly() {
        assert!(equivalent("https://a.example/x", "https://a.example/x"));
        assert!(!equivalent("https://a.example/x", "HTTPS://a.example/x"));
        assert!(!equivalent("urn:", "URN:"));
        for not_urn in [
            "",
            "urn",
            "urn:",
            "urn:dk",
            "urn:dk:",
            "urn:d:x",
            "urn:-dk:x",
            "urn:dk-:x",
            "urn:a_b:x",
            "urn:abcdefghijklmnopqrstuvwxyz0123456:x",
            "urnx:dk:x",
            "ürn:dk:x",
        ] {
            assert_eq!(parse(not_urn), None, "{not_urn:?}");
        }
        assert_eq!(
            parse("urn:dk:gov:saml:cvrNumberIdentifier:1"),
            Some(Urn {
                nid: "dk",
                nss: "gov:saml:cvrNumberIdentifier:1"
            })
        );
    }
}

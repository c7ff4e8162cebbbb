//! OAuth scope parsing for EDS: the `EDS` scope, SMART v2 `system/`/`user/` AuditEvent
//! scopes, and the `SOR:`/`GLN:` organisation scopes.
//!
//! Only the exact resource type `AuditEvent` counts. Wildcards (`system/*.crs`), SMART v1
//! forms (`.read`, `.write`, `.*`), scopes with query constraints (`?category=…`) and letter
//! strings that are not an in-order subset of `cruds` grant nothing: the proxy could not
//! enforce what they would mean, and EDS enrols exact scopes. The letters `u` and `d` are
//! accepted in a well-formed string but grant nothing, since update and delete are never
//! allowed through the proxy.

/// The interactions a SMART v2 scope grants on AuditEvent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Grants {
    /// `c`: create (register) an AuditEvent.
    pub create: bool,
    /// `r`: read an AuditEvent by id.
    pub read: bool,
    /// `s`: search AuditEvents.
    pub search: bool,
}

impl Grants {
    /// Whether anything at all is granted.
    pub fn any(self) -> bool {
        self.create || self.read || self.search
    }

    fn union(self, other: Grants) -> Grants {
        Grants {
            create: self.create || other.create,
            read: self.read || other.read,
            search: self.search || other.search,
        }
    }
}

/// Everything the proxy reads from a token's `scope`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes {
    /// The bare `EDS` scope is present (the token is issued for EDS).
    pub eds: bool,
    /// What `system/AuditEvent.<letters>` scopes grant (system clients).
    pub system: Grants,
    /// What `user/AuditEvent.<letters>` scopes grant (user clients).
    pub user: Grants,
    /// Codes of the `SOR:<code>` scopes, in order.
    pub sor: Vec<String>,
    /// Numbers of the `GLN:<number>` scopes, in order.
    pub gln: Vec<String>,
}

/// Parse a space-separated scope string.
pub fn parse(scope: &str) -> Scopes {
    let mut out = Scopes::default();
    for item in scope.split_ascii_whitespace() {
        if item == "EDS" {
            out.eds = true;
        } else if let Some(v) = item.strip_prefix("SOR:") {
            out.sor.push(v.to_string());
        } else if let Some(v) = item.strip_prefix("GLN:") {
            out.gln.push(v.to_string());
        } else if let Some(rest) = item.strip_prefix("system/") {
            out.system = out.system.union(audit_event_grants(rest));
        } else if let Some(rest) = item.strip_prefix("user/") {
            out.user = out.user.union(audit_event_grants(rest));
        }
    }
    out
}

/// `AuditEvent.crs` → grants; anything else → nothing.
fn audit_event_grants(rest: &str) -> Grants {
    let Some(letters) = rest.strip_prefix("AuditEvent.") else {
        return Grants::default();
    };
    if letters.is_empty() || !is_ordered_subset(letters, "cruds") {
        return Grants::default();
    }
    Grants {
        create: letters.contains('c'),
        read: letters.contains('r'),
        search: letters.contains('s'),
    }
}

fn is_ordered_subset(letters: &str, order: &str) -> bool {
    let mut allowed = order.chars();
    letters.chars().all(|c| allowed.by_ref().any(|a| a == c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn station_scope_from_the_spec() {
        let s = parse("EDS system/AuditEvent.crs SOR:306861000016006 GLN:5790000173372");
        assert!(s.eds);
        assert_eq!(
            s.system,
            Grants {
                create: true,
                read: true,
                search: true
            }
        );
        assert!(!s.user.any());
        assert_eq!(s.sor, vec!["306861000016006"]);
        assert_eq!(s.gln, vec!["5790000173372"]);
    }

    #[test]
    fn user_scope_from_the_spec() {
        let s = parse("EDS user/AuditEvent.rs");
        assert_eq!(
            s.user,
            Grants {
                create: false,
                read: true,
                search: true
            }
        );
        assert!(!s.system.any());
    }

    #[test]
    fn subsets_grant_only_their_letters() {
        assert_eq!(
            parse("system/AuditEvent.c").system,
            Grants {
                create: true,
                ..Default::default()
            }
        );
        assert!(!parse("system/AuditEvent.rs").system.create);
        assert_eq!(
            parse("user/AuditEvent.cruds").user,
            Grants {
                create: true,
                read: true,
                search: true
            }
        );
    }

    #[test]
    fn wildcards_v1_forms_and_bad_letters_grant_nothing() {
        for s in [
            "system/*.crs",
            "system/AuditEvent.*",
            "system/AuditEvent.read",
            "system/AuditEvent.write",
            "system/AuditEvent.src",
            "system/AuditEvent.cc",
            "system/AuditEvent.",
            "system/AuditEvent.crs?category=x",
            "system/Patient.crs",
            "System/AuditEvent.crs",
            "patient/AuditEvent.rs",
        ] {
            let p = parse(s);
            assert!(!p.system.any() && !p.user.any(), "{s} granted something");
        }
    }

    #[test]
    fn eds_scope_is_exact() {
        assert!(!parse("eds").eds);
        assert!(!parse("EDS2").eds);
        assert!(parse("x EDS y").eds);
    }
}

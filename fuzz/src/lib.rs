//! Shared fixtures and invariant checks for the eds-proxy fuzz targets.
//!
//! Fixtures are built the way the unit tests in `src/fhir/*.rs` and `src/auth/*.rs` build
//! them. Every `assert_*` function panics (a libFuzzer crash) when a security invariant is
//! broken; refusals by the proxy are never failures.

use eds_proxy::auth::principal::{Principal, Station};
use eds_proxy::auth::scope::Grants;
use eds_proxy::auth::token::OrgContext;
use eds_proxy::cvr_directory::CvrDirectory;
use eds_proxy::fhir::labels::{Constraint, LabelSystems};
use eds_proxy::fhir::paging::PageSigner;
use eds_proxy::fhir::query::{decode_pairs, parse_search, SearchQuery, SEARCH_PARAMETERS};

/// Findings already reported can be tolerated so that a long run explores past them:
/// `EDS_FUZZ_KNOWN=array-form,other-id cargo fuzz run …`. Ids are listed in fuzz/README.md.
/// Without the variable every invariant is enforced.
pub fn known(id: &str) -> bool {
    static KNOWN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KNOWN
        .get_or_init(|| {
            std::env::var("EDS_FUZZ_KNOWN")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .iter()
        .any(|k| k == id)
}

/// `_count` limit used by every target.
pub const MAX_COUNT: u32 = 50;

pub const DEVICE_SYSTEM: &str = "urn:eds-proxy:label:device-id";
pub const SOR_SYSTEM: &str = "urn:eds-proxy:label:sor";
pub const CPR_SYSTEM: &str = "urn:eds-proxy:label:cpr";
pub const RESERVED_PREFIX: &str = "urn:eds-proxy:label:";

pub const PUBLIC_BASE: &str = "https://proxy:8443/fhir";
pub const UPSTREAM_BASE: &str = "http://hapi:8080/fhir";

pub const SUPPORTER_ROLE: &str = "urn:dk:healthcare:ehmi:eds:role:supporter";
pub const NSIS_SUBSTANTIAL: &str = "https://data.gov.dk/concept/core/nsis/loa/Substantial";
pub const NSIS_HIGH: &str = "https://data.gov.dk/concept/core/nsis/loa/High";

pub fn systems() -> LabelSystems {
    LabelSystems {
        device: DEVICE_SYSTEM.into(),
        sor: SOR_SYSTEM.into(),
        cpr: CPR_SYSTEM.into(),
        reserved_prefix: RESERVED_PREFIX.into(),
    }
}

pub fn signer() -> PageSigner {
    PageSigner::new(b"0123456789abcdef0123456789abcdef".to_vec())
}

pub fn directory() -> CvrDirectory {
    CvrDirectory::from_pairs([
        ("12345678", vec!["111", "222"]),
        ("87654321", vec!["937961000016000"]),
    ])
}

/// The three principals the response target checks against, one of each kind.
pub fn principals() -> Vec<Principal> {
    let grants = Grants {
        create: false,
        read: true,
        search: true,
    };
    vec![
        Principal::Station(Station {
            device_id: "dev-1".into(),
            org: None,
            grants,
        }),
        Principal::Citizen {
            cpr: "0101701234".into(),
            grants,
        },
        Principal::Supporter {
            cvr: "12345678".into(),
            grants,
        },
    ]
}

pub fn constraint_for(p: &Principal) -> Constraint {
    Constraint::for_principal(p, &systems(), &directory()).expect("fixture principal")
}

/// A station allowed to register, with the given identity and org context.
pub fn registering_station(device: &str, sor: &str, gln: &str) -> Station {
    Station {
        device_id: device.into(),
        org: Some(OrgContext {
            name: None,
            sor: sor.into(),
            gln: gln.into(),
        }),
        grants: Grants {
            create: true,
            read: true,
            search: true,
        },
    }
}

// ---------------------------------------------------------------------------------------
// Search rewrite invariants (query_rewrite target, and Search results of classify).

/// The constraint the query target injects, and how it must appear on the wire.
pub const CONSTRAINT_VALUE: &str = "urn:eds-proxy:label:device-id|dev-1";
pub const CONSTRAINT_WIRE: &str = "_security=urn%3Aeds-proxy%3Alabel%3Adevice-id%7Cdev-1";

/// Parameter-name prefixes that must never reach the FHIR server from a client.
const FORBIDDEN_PREFIXES: &[&str] = &[
    "_include",
    "_revinclude",
    "_has",
    "_filter",
    "_security",
    "_getpages",
    "_contained",
    "_query",
    "_list",
    "_text",
    "_content",
    "_source",
];

/// Result parameters the search model serialises itself.
const RESULT_PARAMETERS: &[&str] = &[
    "_count",
    "_offset",
    "_sort",
    "_summary",
    "_elements",
    "_total",
];

/// Serialise an accepted search with the proxy's constraint and check what the FHIR server
/// would see: the constraint first and alone, nothing forbidden, `_count` clamped, only
/// unreserved bytes and percent escapes on the wire, and a lossless round trip.
pub fn assert_search_is_constrained(q: &SearchQuery, max_count: u32, origin: &dyn std::fmt::Debug) {
    let wire = q.to_query_string(&[("_security", CONSTRAINT_VALUE.into())]);
    assert!(
        wire == CONSTRAINT_WIRE || wire.starts_with(&format!("{CONSTRAINT_WIRE}&")),
        "constraint is not first and intact: {wire:?} from {origin:?}"
    );
    assert!(
        wire.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"%&=-._*".contains(&b)),
        "upstream query has bytes a server could read differently: {wire:?} from {origin:?}"
    );
    let pairs = decode_pairs(&wire);
    assert_eq!(
        pairs.first().map(|(n, v)| (n.as_str(), v.as_str())),
        Some(("_security", CONSTRAINT_VALUE)),
        "first decoded pair is not the constraint: {wire:?} from {origin:?}"
    );
    let mut counts = 0;
    for (name, value) in &pairs[1..] {
        for p in FORBIDDEN_PREFIXES {
            assert!(
                !name.starts_with(p),
                "forbidden parameter `{name}` reaches the server: {wire:?} from {origin:?}"
            );
        }
        assert!(
            !name.contains('.'),
            "chained parameter `{name}` reaches the server: {wire:?} from {origin:?}"
        );
        let base = name.split(':').next().unwrap_or_default();
        assert!(
            SEARCH_PARAMETERS.contains(&base) || RESULT_PARAMETERS.contains(&base),
            "parameter `{name}` is not on the allowlist: {wire:?} from {origin:?}"
        );
        if RESULT_PARAMETERS.contains(&base) {
            assert_eq!(
                base, name,
                "result parameter with a modifier reaches the server: {wire:?} from {origin:?}"
            );
        }
        if name == "_count" {
            counts += 1;
            let n: u32 = value
                .parse()
                .unwrap_or_else(|_| panic!("_count `{value}` is not a number: {wire:?}"));
            assert!(
                n <= max_count,
                "_count {n} > {max_count}: {wire:?} from {origin:?}"
            );
        }
        if name == "_elements" {
            assert!(
                value.split(',').any(|e| e == "meta"),
                "_elements without meta would hide the labels: {wire:?} from {origin:?}"
            );
        }
    }
    assert!(
        counts <= 1,
        "_count appears {counts} times: {wire:?} from {origin:?}"
    );
    // What the server gets is exactly what was checked: re-parsing the forwarded query
    // (minus the constraint) gives the same model.
    let again = parse_search(&pairs[1..], max_count);
    assert_eq!(
        again.as_ref(),
        Ok(q),
        "forwarded query does not re-parse to the checked model: {wire:?} from {origin:?}"
    );
}

// ---------------------------------------------------------------------------------------
// JSON as a client might read it: duplicate object keys resolved first-wins or last-wins.

/// Parse JSON keeping the FIRST of duplicate keys (as some client parsers do).
pub fn parse_first_wins(bytes: &[u8]) -> Result<serde_json::Value, String> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Value};
    struct Seed;
    impl<'de> DeserializeSeed<'de> for Seed {
        type Value = Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(V)
        }
    }
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Value;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_string()))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = seq.next_element_seed(Seed)? {
                out.push(v);
            }
            Ok(Value::Array(out))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut out = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    map.next_value::<IgnoredAny>()?;
                } else {
                    let v = map.next_value_seed(Seed)?;
                    out.insert(key, v);
                }
            }
            Ok(Value::Object(out))
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = Seed.deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(v)
}

/// Parse JSON keeping the LAST of duplicate keys (serde_json's `Value`, many other parsers).
pub fn parse_last_wins(bytes: &[u8]) -> Result<serde_json::Value, String> {
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------
// A JSON Pointer setter that creates missing objects (used by the structured generators).

/// Set `pointer` (RFC 6901, `/a/0/b`) in `root` to `value`, creating missing object members.
/// An array index may address an element or one past the end (append). Returns false if the
/// path runs through a scalar or past the end of an array.
pub fn set_pointer(root: &mut serde_json::Value, pointer: &str, value: serde_json::Value) -> bool {
    use serde_json::Value;
    let segs: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    let Some((last, parents)) = segs.split_last() else {
        *root = value;
        return true;
    };
    let mut cur = root;
    for seg in parents {
        cur = match cur {
            Value::Object(m) => m
                .entry(seg.clone())
                .or_insert_with(|| Value::Object(Default::default())),
            Value::Array(a) => match seg.parse::<usize>() {
                Ok(i) if i < a.len() => &mut a[i],
                Ok(i) if i == a.len() => {
                    a.push(Value::Object(Default::default()));
                    &mut a[i]
                }
                _ => return false,
            },
            _ => return false,
        };
    }
    match cur {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            true
        }
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => {
                a[i] = value;
                true
            }
            Ok(i) if i == a.len() => {
                a.push(value);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// Remove the member or element at `pointer`, if there is one.
pub fn remove_pointer(root: &mut serde_json::Value, pointer: &str) {
    use serde_json::Value;
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match root.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.remove(&last);
        }
        Some(Value::Array(a)) => {
            if let Ok(i) = last.parse::<usize>() {
                if i < a.len() {
                    a.remove(i);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointer_setter() {
        let mut v = json!({"a": [1]});
        assert!(set_pointer(&mut v, "/a/1", json!(2)));
        assert!(set_pointer(&mut v, "/b/c", json!(3)));
        assert!(!set_pointer(&mut v, "/a/5", json!(3)));
        assert_eq!(v, json!({"a": [1, 2], "b": {"c": 3}}));
        remove_pointer(&mut v, "/a/0");
        assert_eq!(v, json!({"a": [2], "b": {"c": 3}}));
    }

    #[test]
    fn a_plain_search_passes_the_invariants() {
        let q = parse_search(
            &decode_pairs("message-id=x&_count=500&_elements=id"),
            MAX_COUNT,
        )
        .unwrap();
        assert_search_is_constrained(&q, MAX_COUNT, &"test");
    }
}

/// Insert `insert` into `text` at `pos` (wrapped to the text's length, moved back to a char
/// boundary): raw damage the structured generators cannot express.
pub fn splice(text: &mut String, pos: u64, insert: &str) {
    let mut at = (pos % (text.len() as u64 + 1)) as usize;
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    text.insert_str(at, insert);
}

//! JSON parsing that refuses duplicate object keys. `serde_json::Value` keeps the last of two
//! equal keys, while other parsers (the FHIR server's among them) may keep the first: a body
//! the proxy checked could then mean something else to the server.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Parse `bytes` as JSON, refusing duplicate keys at any depth. serde_json's recursion limit
/// (128 levels) turns deep nesting into an error, never a stack overflow.
pub fn parse(bytes: &[u8]) -> Result<Value, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// The members of a JSON object in order, values left unparsed; duplicate keys refused.
pub fn object_members(text: &str) -> Result<Vec<(String, &RawValue)>, String> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(String, &'de RawValue)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out: Vec<(String, &'de RawValue)> = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.iter().any(|(k, _)| *k == key) {
                    return Err(de::Error::custom(format!("duplicate key `{key}`")));
                }
                let value: &'de RawValue = map.next_value()?;
                out.push((key, value));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let members = de.deserialize_map(Members).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(members)
}

/// Parse `bytes` strictly (as [`parse`]: no duplicate key at any depth), then read the value
/// into `T`. For JSON whose target type could hold a duplicate (`Value`, a map, a struct with
/// `flatten`), read at startup or off the request path (JWKS, enrolment, directories).
///
/// Errors: the text is not JSON, a key is duplicated, or the value does not fit `T`.
pub(crate) fn parse_into<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_value(parse(bytes)?).map_err(|e| e.to_string())
}

/// A JSON string's value (escapes decoded); anything but one JSON string is an error. A
/// string holds no keys, so nothing here can be lenient.
pub fn string(text: &str) -> Result<String, String> {
    #[allow(clippy::disallowed_methods)] // the target is a `String`: no object, no duplicates
    serde_json::from_str::<String>(text).map_err(|e| e.to_string())
}

/// The elements of a JSON array, each left unparsed (for [`object_members`] or [`parse`]);
/// anything but an array is an error.
pub fn elements(text: &str) -> Result<Vec<&RawValue>, String> {
    #[allow(clippy::disallowed_methods)] // raw elements: nothing is read, so nothing is merged
    serde_json::from_str::<Vec<&RawValue>>(text).map_err(|e| e.to_string())
}

struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
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
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // One map lookup per member: the vacant slot found is where the value goes.
            match out.entry(key) {
                serde_json::map::Entry::Occupied(taken) => {
                    return Err(de::Error::custom(format!(
                        "duplicate key `{}`",
                        taken.key()
                    )));
                }
                serde_json::map::Entry::Vacant(slot) => {
                    slot.insert(map.next_value_seed(StrictValue)?);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(parse(br#"{"a":1,"a":2}"#).is_err());
        assert!(parse(br#"{"x":{"b":[{"c":1,"c":1}]}}"#).is_err());
        assert_eq!(
            parse(br#"{"a":[1,{"b":null}]}"#).unwrap()["a"][1]["b"],
            Value::Null
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn object_members_keep_order_and_refuse_duplicates() {
        let m = object_members(r#"{"b":[1,2],"a":{"x":1}}"#).unwrap();
        let keys: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "a"]);
        assert_eq!(m[1].1.get(), r#"{"x":1}"#);
        assert!(object_members(r#"{"a":1,"a":2}"#).is_err());
        assert!(object_members("[1]").is_err());
        assert!(object_members(r#"{"a":1} x"#).is_err());
    }

    #[test]
    fn typed_helpers_are_strict() {
        assert!(parse_into::<Vec<Value>>(br#"[{"url":"a","url":"b"}]"#).is_err());
        assert_eq!(
            parse_into::<Vec<Value>>(br#"[{"url":"a"}]"#).unwrap(),
            vec![serde_json::json!({"url": "a"})]
        );
        assert_eq!(string(r#""a\u0062""#).unwrap(), "ab");
        assert!(string(r#"{"a":1}"#).is_err());
        let e = elements(r#"[{"a":1,"a":2}, 3]"#).unwrap();
        assert_eq!(e.len(), 2);
        assert!(object_members(e[0].get()).is_err());
        assert!(elements(r#"{"a":1}"#).is_err());
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(parse(br#"{"a":1} x"#).is_err());
    }
}

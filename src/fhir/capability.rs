//! The CapabilityStatement the proxy answers `GET /metadata` with: only what the proxy lets
//! through, so clients never discover interactions they would be refused, and every search
//! parameter it does let through (with its definition), so they discover those. FHIR JSON
//! has no empty arrays (<https://hl7.org/fhir/R4/json.html>): what is not offered is left out.

use serde_json::{json, Value};

use crate::fhir::query::SEARCH_PARAMETERS;
use crate::fhir::registration::EDS_PROFILES;

/// The CapabilityStatement (FHIR R4, <https://hl7.org/fhir/R4/capabilitystatement.html>) for
/// `public_base`, as JSON: AuditEvent read, vread, search-type (the supported parameters) and
/// create (the EDS profiles), secured by OAuth access tokens bound to the mutual-TLS client
/// certificate (RFC 8705).
pub fn capability_statement(public_base: &str) -> Vec<u8> {
    let params: Vec<Value> = SEARCH_PARAMETERS
        .iter()
        .map(|p| json!({"name": p, "definition": definition(p), "type": param_type(p)}))
        .collect();
    let body = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "kind": "instance",
        "software": {"name": "eds-proxy", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "EHMI Delivery Status (EDS) behind eds-proxy", "url": public_base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": false,
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "OAuth"}]}],
                "description": "Mutual TLS and an OAuth access token bound to the client certificate (RFC 8705), scopes EDS plus system/AuditEvent.crs or user/AuditEvent.rs."
            },
            "resource": [{
                "type": "AuditEvent",
                "supportedProfile": EDS_PROFILES,
                "interaction": [
                    {"code": "read"}, {"code": "vread"}, {"code": "search-type"}, {"code": "create"}
                ],
                "versioning": "versioned",
                "readHistory": false,
                "updateCreate": false,
                "conditionalCreate": false,
                "conditionalRead": "full-support",
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
                "searchParam": params
            }]
        }]
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The canonical URL of a search parameter: the EDS IG's own
/// (`hapi-compose/search-parameters`), FHIR R4's common `Resource-*` ones, or R4's
/// `AuditEvent-*`.
fn definition(name: &str) -> String {
    const IG: &str = "http://medcomehmi.dk/ig/eds/SearchParameter/";
    let ig = match name {
        "cpr" => Some("SearchParameter-EDS-CPR"),
        "message-id" => Some("SearchParameter-EDS-EHMIMessage-Id"),
        "orig-message-id" => Some("SearchParameter-EDS-Original-EHMIMessage-Id"),
        "receiver-gln" => Some("SearchParameter-EDS-EHMIReceiver-GLN"),
        "receiver-name" => Some("SearchParameter-EDS-EHMIReceiver-Name"),
        "receiver-sor" => Some("SearchParameter-EDS-EHMIReceiver-SOR"),
        "sender-gln" => Some("SearchParameter-EDS-EHMISender-GLN"),
        "sender-name" => Some("SearchParameter-EDS-EHMISender-Name"),
        "sender-sor" => Some("SearchParameter-EDS-EHMISender-SOR"),
        "ehmiMessageType" => Some("SearchParameter-EDS-MessageType"),
        "participant-sor" => Some("SearchParameter-EDS-Participant-SOR"),
        "receiverOrg" => Some("SearchParameter-EHMI-ReceiverOrg"),
        "senderOrg" => Some("SearchParameter-EHMI-SenderOrg"),
        "entityIdentifier" => Some("SearchParameter-Entity-Identifier"),
        _ => None,
    };
    match (ig, name.strip_prefix('_')) {
        (Some(id), _) => format!("{IG}{id}"),
        (None, Some(common)) => format!("http://hl7.org/fhir/SearchParameter/Resource-{common}"),
        (None, None) => format!("http://hl7.org/fhir/SearchParameter/AuditEvent-{name}"),
    }
}

fn param_type(name: &str) -> &'static str {
    match name {
        "_lastUpdated" | "date" => "date",
        "agent" | "entity" | "patient" | "source" => "reference",
        "_id" | "_profile" | "_tag" | "action" | "agent-role" | "altid" | "entity-role"
        | "entity-type" | "outcome" | "policy" | "site" | "subtype" | "type"
        | "ehmiMessageType" => "token",
        _ => "string",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertises_only_audit_event_without_includes() {
        let v: Value = serde_json::from_slice(&capability_statement("https://p/fhir")).unwrap();
        let resources = v["rest"][0]["resource"].as_array().unwrap();
        assert_eq!(resources.len(), 1);
        assert_eq!(resources[0]["type"], "AuditEvent");
        assert!(resources[0].get("searchInclude").is_none());
        let interactions: Vec<&str> = resources[0]["interaction"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["code"].as_str().unwrap())
            .collect();
        assert_eq!(interactions, ["read", "vread", "search-type", "create"]);
        assert!(v["rest"][0].get("interaction").is_none());
    }

    /// FHIR JSON forbids empty arrays (and empty objects, empty strings) anywhere.
    #[test]
    fn nothing_empty_and_every_parameter_listed_with_its_definition() {
        fn walk(v: &Value, at: &str) {
            match v {
                Value::Array(a) => {
                    assert!(!a.is_empty(), "empty array at {at}");
                    a.iter().for_each(|x| walk(x, at));
                }
                Value::Object(o) => {
                    assert!(!o.is_empty(), "empty object at {at}");
                    o.iter().for_each(|(k, x)| walk(x, &format!("{at}.{k}")));
                }
                Value::String(s) => assert!(!s.is_empty(), "empty string at {at}"),
                _ => {}
            }
        }
        let v: Value = serde_json::from_slice(&capability_statement("https://p/fhir")).unwrap();
        walk(&v, "CapabilityStatement");
        let params = v["rest"][0]["resource"][0]["searchParam"]
            .as_array()
            .unwrap();
        let names: Vec<&str> = params.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, SEARCH_PARAMETERS);
        let by_name = |n: &str| params.iter().find(|p| p["name"] == n).unwrap().clone();
        assert_eq!(
            by_name("sender-sor"),
            json!({"name": "sender-sor", "type": "string", "definition": "http://medcomehmi.dk/ig/eds/SearchParameter/SearchParameter-EDS-EHMISender-SOR"})
        );
        assert_eq!(
            by_name("_lastUpdated")["definition"],
            "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated"
        );
        assert_eq!(
            by_name("agent")["definition"],
            "http://hl7.org/fhir/SearchParameter/AuditEvent-agent"
        );
        assert_eq!(
            v["rest"][0]["resource"][0]["conditionalRead"],
            "full-support"
        );
    }
}

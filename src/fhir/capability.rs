//! The CapabilityStatement the proxy answers `GET /metadata` with: only what the proxy lets
//! through, so clients never discover interactions they would be refused.

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
        .map(|p| json!({"name": p, "type": param_type(p)}))
        .collect();
    let body = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "kind": "instance",
        "software": {"name": "eds-proxy", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "EHMI Delivery Status (EDS) behind eds-proxy", "url": public_base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
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
                "conditionalRead": "not-supported",
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
                "searchInclude": [],
                "searchRevInclude": [],
                "searchParam": params
            }],
            "interaction": []
        }]
    });
    serde_json::to_vec(&body).unwrap_or_default()
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
        assert_eq!(resources[0]["searchInclude"], json!([]));
        let interactions: Vec<&str> = resources[0]["interaction"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["code"].as_str().unwrap())
            .collect();
        assert_eq!(interactions, ["read", "vread", "search-type", "create"]);
        assert_eq!(v["rest"][0]["interaction"], json!([]));
    }
}

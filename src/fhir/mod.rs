//! FHIR-level decisions: classify, constrain, validate, verify. Pure functions over plain
//! data; the gateway calls them.

pub mod capability;
pub mod compat;
pub mod conformance;
pub mod inert;
pub mod interaction;
pub mod json_path;
pub mod labels;
pub mod paging;
pub mod plan;
pub mod query;
pub mod registration;
pub mod response;
pub mod strict_json;

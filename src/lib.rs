//! eds-proxy: the security sidecar for the EHMI Delivery Status service (EDS).
//!
//! `auth` and `fhir` hold every security decision as pure functions; `gateway` and `server`
//! are the Pingora glue; `dev` holds development-only tools (PKI, token issuer). Without the
//! default `server` feature only the pure core is built.

#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod cvr_directory;
pub mod dev;
pub mod error;
pub mod fhir;
pub mod framing;
#[cfg(feature = "server")]
pub mod gateway;
#[cfg(feature = "server")]
pub mod logging;
pub mod metrics;
pub mod redact;
#[cfg(feature = "server")]
pub mod server;
pub mod urn;

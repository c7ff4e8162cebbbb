//! eds-proxy: the security sidecar for the EHMI Delivery Status service (EDS).
//!
//! `auth` and `fhir` hold every security decision as pure functions; `gateway` and `server`
//! are the Pingora glue; `dev` holds development-only tools (PKI, token issuer).

#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod cvr_directory;
pub mod dev;
pub mod error;
pub mod fhir;
pub mod gateway;
pub mod metrics;
pub mod server;

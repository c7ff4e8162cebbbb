//! eds-proxy: the security sidecar for the EHMI Delivery Status service (EDS).
//!
//! `auth` and `fhir` hold every security decision as pure functions; `gateway` and `server`
//! are the Pingora glue; `dev` holds development-only tools (PKI, token issuer). Without the
//! default `server` feature only the pure core is built; without the default `dev` feature
//! the development tools are left out (a production build: `--no-default-features --features
//! server`).

#![forbid(unsafe_code)]
// Unit tests read the JSON they assert on with plain serde_json; production code may not
// (clippy.toml `disallowed-methods`).
#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod audit;
pub mod auth;
pub mod config;
pub mod cvr_directory;
// The unit tests sign tokens with `dev::keys` whatever the features.
#[cfg(any(test, feature = "dev"))]
pub mod dev;
pub mod error;
pub mod fhir;
pub mod framing;
#[cfg(feature = "server")]
pub(crate) mod gateway;
#[cfg(feature = "server")]
pub mod health;
#[cfg(feature = "server")]
pub(crate) mod lifecycle;
#[cfg(feature = "server")]
pub mod logging;
#[cfg(feature = "server")]
pub(crate) mod metrics;
pub mod redact;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod tls;
pub mod urn;

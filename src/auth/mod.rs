//! Authentication: from a bearer token and a client certificate to a `Principal`.

#[cfg(feature = "server")]
pub mod jwks;
pub mod principal;
pub mod privileges;
#[cfg(feature = "server")]
pub mod ring_verify;
pub mod scope;
pub mod token;

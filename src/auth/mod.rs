//! Authentication: from a bearer token and a client certificate to a `Principal`.

#[cfg(feature = "server")]
pub mod jwks;
pub mod principal;
pub mod privileges;
pub mod scope;
pub mod token;

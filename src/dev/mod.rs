//! DEVELOPMENT ONLY: a throw-away PKI and a token signer for demos and tests. Nothing here
//! is used by the proxy itself, and none of it is fit for production keys.

#[cfg(feature = "dev")]
pub mod cli;
#[cfg(feature = "dev")]
pub mod issuer;
pub mod keys;
pub mod pki;

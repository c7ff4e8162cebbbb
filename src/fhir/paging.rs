//! Caller-bound page handles. A FHIR server's `_getpages` id is a bearer handle for a stored
//! search: whoever holds it gets the pages. The proxy signs each handle it hands out with an
//! HMAC over (principal, handle) and accepts `_getpages` only with a valid signature, so a
//! handle works for the principal that started the search and for no one else, on any
//! proxy replica that shares the secret, with no shared state.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Forbidden, Invalid, Refusal};
use crate::fhir::query;

/// Query parameter carrying a page handle's signature next to `_getpages`.
pub const SIGNATURE_PARAM: &str = "_eds_sig";

/// A secret of at least 32 bytes (checked by the configuration).
#[derive(Clone)]
pub struct PageSigner {
    secret: Vec<u8>,
}

/// A `GET base?_getpages=…` request, after its signature has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// The FHIR server's `_getpages` id.
    pub id: String,
    /// `_getpagesoffset`: index of the page's first entry.
    pub offset: Option<u32>,
    /// `_count`: entries per page, already lowered to `limits.max_count`.
    pub count: Option<u32>,
    /// The `_eds_sig` value: base64url (no padding) HMAC-SHA-256.
    pub signature: String,
}

impl PageSigner {
    /// A signer with this HMAC-SHA-256 key (`paging.secret_file`).
    pub fn new(secret: Vec<u8>) -> Self {
        PageSigner { secret }
    }

    fn mac(&self, principal_key: &str, page_id: &str) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).ok()?;
        mac.update(b"eds-proxy page v1\0");
        mac.update(principal_key.as_bytes());
        mac.update(b"\0");
        mac.update(page_id.as_bytes());
        Some(mac)
    }

    /// The signature of `page_id` for the principal with `principal_key`
    /// (`Principal::binding_key`): base64url (no padding) HMAC-SHA-256 over a version tag,
    /// the key and the id.
    pub fn sign(&self, principal_key: &str, page_id: &str) -> String {
        self.mac(principal_key, page_id)
            .map(|m| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
            })
            .unwrap_or_default()
    }

    /// Constant-time check of a handle's signature for this principal.
    pub fn verify(&self, principal_key: &str, page: &PageRequest) -> Result<(), Refusal> {
        let refused = || Refusal::Forbidden(Forbidden::PageNotIssued);
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&page.signature)
            .map_err(|_| refused())?;
        let mac = self.mac(principal_key, &page.id).ok_or_else(refused)?;
        mac.verify_slice(&sig).map_err(|_| refused())
    }
}

/// Parse the query of a paging request. Only the parameters a FHIR server's own paging
/// links use are allowed, plus the proxy's signature.
pub fn parse_page_request(
    pairs: &[(String, String)],
    max_count: u32,
) -> Result<PageRequest, Refusal> {
    let mut id = None;
    let mut offset = None;
    let mut count = None;
    let mut signature = None;
    for (name, value) in pairs {
        let slot_taken = || Refusal::Invalid(Invalid::RepeatedParameter { name: name.clone() });
        match name.as_str() {
            "_getpages" => {
                if id.replace(value.clone()).is_some() {
                    return Err(slot_taken());
                }
            }
            "_getpagesoffset" => {
                let v = value
                    .parse::<u32>()
                    .map_err(|_| Refusal::Invalid(Invalid::PageOffset))?;
                if offset.replace(v).is_some() {
                    return Err(slot_taken());
                }
            }
            "_count" => {
                if count
                    .replace(query::parse_count(value, max_count)?)
                    .is_some()
                {
                    return Err(slot_taken());
                }
            }
            SIGNATURE_PARAM => {
                if signature.replace(value.clone()).is_some() {
                    return Err(slot_taken());
                }
            }
            "_bundletype" if value == "searchset" => {}
            "_format" => query::check_format(value)?,
            "_pretty" => query::check_bool(name, value)?,
            _ => {
                return Err(Refusal::Invalid(Invalid::PageParameter {
                    name: name.clone(),
                }))
            }
        }
    }
    let id = id.ok_or(Refusal::Invalid(Invalid::PageHandleMissing))?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(Refusal::Invalid(Invalid::PageHandleMalformed));
    }
    let signature = signature.ok_or(Refusal::Forbidden(Forbidden::PageUnsigned))?;
    Ok(PageRequest {
        id,
        offset,
        count,
        signature,
    })
}

impl PageRequest {
    /// The query sent to the FHIR server: `_getpages`, `_getpagesoffset` and `_count`, without
    /// the signature.
    pub fn upstream_query(&self) -> String {
        let mut q = format!("_getpages={}", query::encode(&self.id));
        if let Some(o) = self.offset {
            q.push_str(&format!("&_getpagesoffset={o}"));
        }
        if let Some(c) = self.count {
            q.push_str(&format!("&_count={c}"));
        }
        q.push_str("&_bundletype=searchset");
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::query::decode_pairs;

    fn signer() -> PageSigner {
        PageSigner::new(b"0123456789abcdef0123456789abcdef".to_vec())
    }

    fn request(id: &str, sig: &str) -> PageRequest {
        parse_page_request(
            &decode_pairs(&format!(
                "_getpages={id}&_getpagesoffset=10&_count=10&_eds_sig={sig}"
            )),
            100,
        )
        .unwrap()
    }

    #[test]
    fn handle_works_only_for_its_principal() {
        let s = signer();
        let sig = s.sign("station\0dev-1", "abc-123");
        assert!(s
            .verify("station\0dev-1", &request("abc-123", &sig))
            .is_ok());
        assert!(
            s.verify("station\0dev-2", &request("abc-123", &sig))
                .map_err(|e| e.reason())
                == Err("page_not_issued")
        );
        assert!(
            s.verify("station\0dev-1", &request("abc-124", &sig))
                .map_err(|e| e.reason())
                == Err("page_not_issued")
        );
        assert!(
            s.verify("station\0dev-1", &request("abc-123", "AAAA"))
                .map_err(|e| e.reason())
                == Err("page_not_issued")
        );
        assert!(
            s.verify("station\0dev-1", &request("abc-123", "!!"))
                .map_err(|e| e.reason())
                == Err("page_not_issued")
        );
    }

    #[test]
    fn another_replica_with_the_same_secret_agrees() {
        let sig = signer().sign("citizen\u{0}0101701234", "p1");
        assert!(signer()
            .verify("citizen\u{0}0101701234", &request("p1", &sig))
            .is_ok());
        let other = PageSigner::new(b"another secret of thirty-two bytes!!".to_vec());
        assert!(
            other
                .verify("citizen\u{0}0101701234", &request("p1", &sig))
                .map_err(|e| e.reason())
                == Err("page_not_issued")
        );
    }

    #[test]
    fn paging_requests_are_strict() {
        for (q, why) in [
            ("_getpages=a", "page_unsigned"),
            ("_getpages=a&_eds_sig=x&_getpages=b", "repeated_parameter"),
            ("_getpages=a&_eds_sig=x&message-id=1", "page_parameter"),
            ("_getpages=a&_eds_sig=x&_security=x", "page_parameter"),
            ("_getpages=a/b&_eds_sig=x", "page_handle_malformed"),
            ("_getpages=&_eds_sig=x", "page_handle_malformed"),
            ("_getpages=a&_eds_sig=x&_bundletype=batch", "page_parameter"),
            ("_getpages=a&_eds_sig=x&_format=xml", "format"),
        ] {
            assert_eq!(
                parse_page_request(&decode_pairs(q), 100).map_err(|e| e.reason()),
                Err(why),
                "{q}"
            );
        }
    }

    #[test]
    fn upstream_query_is_canonical_and_unsigned() {
        let r = request("abc", "sig");
        assert_eq!(
            r.upstream_query(),
            "_getpages=abc&_getpagesoffset=10&_count=10&_bundletype=searchset"
        );
    }
}

//! The one error type for refused or failed requests, and its mapping to an HTTP status and
//! a FHIR OperationOutcome. Every refusal anywhere in the proxy ends up here.

use serde_json::json;

/// Why a token was not accepted. The names are the `reason` label of the token metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFailure {
    /// No `Authorization: Bearer` token (RFC 6750 §2.1).
    Missing,
    /// Not a well-formed JWS compact serialisation with JSON header and claims (RFC 7515 §7.1),
    /// or a claim of the wrong JSON type.
    Malformed,
    /// The `alg` is absent, not accepted by configuration, symmetric, or not the key's own `alg`
    /// (RFC 8725 §3.1).
    Algorithm,
    /// No key in the issuer's JWK Set has the token's `kid`.
    UnknownKey,
    /// The signature does not verify.
    Signature,
    /// `exp` has passed (RFC 7519 §4.1.4), beyond the leeway.
    Expired,
    /// `nbf` is in the future (RFC 7519 §4.1.5), beyond the leeway.
    NotYetValid,
    /// `iat` is in the future (RFC 7519 §4.1.6), beyond the leeway.
    IssuedInFuture,
    /// `iss` is not the configured issuer.
    Issuer,
    /// `aud` names none of the configured audiences.
    Audience,
    /// No `cnf` `x5t#S256` certificate binding (RFC 8705 §3.1).
    MissingBinding,
    /// `cnf.x5t#S256` is not the thumbprint of the presented client certificate (RFC 8705 §3.1).
    BindingMismatch,
    /// No key of the issuer could be loaded yet, so no token can be checked (a 401 too;
    /// `/readyz` answers 503 meanwhile).
    KeysUnavailable,
    /// The protected header names extensions (`crit`, RFC 7515 §4.1.11) or asks for processing
    /// the proxy does not implement (`b64: false` RFC 7797, nested JWT `cty`): must be refused.
    CriticalHeader,
    /// `typ` names something other than a JWT access token (RFC 8725 §3.11, RFC 9068 §2.1).
    TokenType,
    /// `exp − iat` (or `exp − now`) exceeds the configured `token.max_lifetime_seconds`.
    LifetimeTooLong,
    /// The client certificate the connection's handshake presented is no longer accepted by
    /// the reloaded client CA bundle or CRLs (`crate::tls::still_accepted`): the connection is
    /// closed after this answer, and a new handshake fails.
    CertificateNotAccepted,
}

impl TokenFailure {
    /// The failure's name: the `reason` label of `eds_proxy_token_failures_total` and of the
    /// access log.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenFailure::Missing => "missing",
            TokenFailure::Malformed => "malformed",
            TokenFailure::Algorithm => "algorithm",
            TokenFailure::UnknownKey => "unknown_key",
            TokenFailure::Signature => "signature",
            TokenFailure::Expired => "expired",
            TokenFailure::NotYetValid => "not_yet_valid",
            TokenFailure::IssuedInFuture => "issued_in_future",
            TokenFailure::Issuer => "issuer",
            TokenFailure::Audience => "audience",
            TokenFailure::MissingBinding => "missing_cnf",
            TokenFailure::BindingMismatch => "cnf_mismatch",
            TokenFailure::KeysUnavailable => "keys_unavailable",
            TokenFailure::CriticalHeader => "crit",
            TokenFailure::TokenType => "typ",
            TokenFailure::LifetimeTooLong => "lifetime_too_long",
            TokenFailure::CertificateNotAccepted => "certificate_not_accepted",
        }
    }

    /// The `error_description` of the 401's `WWW-Authenticate` and the OperationOutcome text.
    pub fn description(self) -> &'static str {
        match self {
            TokenFailure::Missing => "no bearer access token",
            TokenFailure::Malformed => "the access token is not a well-formed JWT",
            TokenFailure::Algorithm => "the token's signing algorithm is not accepted",
            TokenFailure::UnknownKey => "the token is signed with an unknown key",
            TokenFailure::Signature => "the token signature is invalid",
            TokenFailure::Expired => "the token has expired",
            TokenFailure::NotYetValid => "the token is not valid yet",
            TokenFailure::IssuedInFuture => "the token is issued in the future",
            TokenFailure::Issuer => "the token is from an untrusted issuer",
            TokenFailure::Audience => "the token is not issued for this service",
            TokenFailure::MissingBinding => "the token is not bound to a client certificate (cnf)",
            TokenFailure::BindingMismatch => {
                "the token is bound to another client certificate than the one presented"
            }
            TokenFailure::KeysUnavailable => "the issuer's signing keys are unavailable",
            TokenFailure::CriticalHeader => {
                "the token header requires processing this service does not support (crit)"
            }
            TokenFailure::TokenType => "the token is not a JWT access token (typ)",
            TokenFailure::LifetimeTooLong => "the token's lifetime exceeds the accepted maximum",
            TokenFailure::CertificateNotAccepted => {
                "the client certificate is no longer accepted (revoked, or its CA withdrawn)"
            }
        }
    }
}

/// Why an authenticated caller is refused (403): one variant per rule. The names
/// ([`Forbidden::as_str`]) are the `reason` label of `eds_proxy_requests_total` and of the
/// access log; the texts ([`Forbidden::message`]) the OperationOutcome's `diagnostics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forbidden {
    /// A registration by a user (not a station, system client) token.
    NotAStation,
    /// A search or paging request without the search grant (`s`).
    NoSearchGrant,
    /// A read without the read grant (`r`).
    NoReadGrant,
    /// A registration without `system/AuditEvent.c`.
    NoCreateGrant,
    /// A registration by a station token without `ehmi:org_context` and its SOR:/GLN: scopes.
    NoOrgContext,
    /// The token lacks the named claim (a static claim name, never a value).
    MissingClaim {
        /// The claim's name.
        claim: &'static str,
    },
    /// The named claim is too long or holds control characters.
    InvalidClaim {
        /// The claim's name.
        claim: &'static str,
    },
    /// The named claim holds `,` `|` `\` or `$`, so it cannot be an access-label code
    /// (`labels::is_plain_token`).
    ClaimNotPlainToken {
        /// The claim's name.
        claim: &'static str,
    },
    /// The token's scopes lack `EDS`.
    NotForEds,
    /// The token carries both system and user AuditEvent scopes.
    MixedScopes,
    /// The token grants neither system nor user AuditEvent access.
    NoAccessScope,
    /// A station token with more than one SOR: or GLN: scope.
    SeveralOrgScopes,
    /// SOR:/GLN: scopes without an `ehmi:org_context` claim.
    OrgScopesWithoutContext,
    /// SOR:/GLN: scopes that differ from `ehmi:org_context`.
    OrgScopesMismatch,
    /// A user token below NSIS Substantial (`acr`).
    AssuranceTooLow,
    /// A supporter token whose `priv` claim does not grant the EDS supporter role for its cvr.
    NoSupporterRole,
    /// The CVR directory knows no SOR codes for the supporter's cvr.
    UnknownCvr,
    /// The registration's observing device is not the token's `ehmi:eer:device_id`.
    DeviceMismatch,
    /// The token's organisational context is neither the sender nor the receiver.
    OrgNotParty,
    /// `source.observer`'s identifier and the contained Device's identifier disagree.
    ObserverDisagrees,
    /// A paging link whose signature is not the caller's.
    PageNotIssued,
    /// A paging link without the proxy's signature.
    PageUnsigned,
    /// A batch or transaction (POST to the base).
    Batch,
    /// A system-level interaction (search or history on the base).
    SystemInteraction,
    /// A conditional create (`If-None-Exist`).
    ConditionalCreate,
    /// Any `If-*` conditional request.
    Conditional,
    /// A FHIR operation (`$…`).
    Operation,
    /// A history interaction.
    History,
    /// Any other AuditEvent interaction.
    Interaction,
    /// A compartment search.
    Compartment,
    /// A resource type other than AuditEvent.
    ResourceType,
    /// A path outside the FHIR base.
    UnknownPath,
}

impl Forbidden {
    /// The rule's stable name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Forbidden::NotAStation => "not_a_station",
            Forbidden::NoSearchGrant => "no_search_grant",
            Forbidden::NoReadGrant => "no_read_grant",
            Forbidden::NoCreateGrant => "no_create_grant",
            Forbidden::NoOrgContext => "no_org_context",
            Forbidden::MissingClaim { .. } => "missing_claim",
            Forbidden::InvalidClaim { .. } => "invalid_claim",
            Forbidden::ClaimNotPlainToken { .. } => "claim_not_plain_token",
            Forbidden::NotForEds => "not_for_eds",
            Forbidden::MixedScopes => "mixed_scopes",
            Forbidden::NoAccessScope => "no_access_scope",
            Forbidden::SeveralOrgScopes => "several_org_scopes",
            Forbidden::OrgScopesWithoutContext => "org_scopes_without_context",
            Forbidden::OrgScopesMismatch => "org_scopes_mismatch",
            Forbidden::AssuranceTooLow => "assurance_too_low",
            Forbidden::NoSupporterRole => "no_supporter_role",
            Forbidden::UnknownCvr => "unknown_cvr",
            Forbidden::DeviceMismatch => "device_mismatch",
            Forbidden::OrgNotParty => "org_not_party",
            Forbidden::ObserverDisagrees => "observer_disagrees",
            Forbidden::PageNotIssued => "page_not_issued",
            Forbidden::PageUnsigned => "page_unsigned",
            Forbidden::Batch => "batch",
            Forbidden::SystemInteraction => "system_interaction",
            Forbidden::ConditionalCreate => "conditional_create",
            Forbidden::Conditional => "conditional",
            Forbidden::Operation => "operation",
            Forbidden::History => "history",
            Forbidden::Interaction => "interaction",
            Forbidden::Compartment => "compartment",
            Forbidden::ResourceType => "resource_type",
            Forbidden::UnknownPath => "unknown_path",
        }
    }

    /// The OperationOutcome's `diagnostics`.
    pub fn message(&self) -> String {
        let text = match self {
            Forbidden::NotAStation => "only stations (system clients) register delivery statuses",
            Forbidden::NoSearchGrant => "the token does not grant search (s) on AuditEvent",
            Forbidden::NoReadGrant => "the token does not grant read (r) on AuditEvent",
            Forbidden::NoCreateGrant => "the token does not grant system/AuditEvent.c",
            Forbidden::NoOrgContext => {
                "registrations need a token with ehmi:org_context and matching SOR:/GLN: scopes"
            }
            Forbidden::MissingClaim { claim } => return format!("the token has no {claim} claim"),
            Forbidden::InvalidClaim { claim } => {
                return format!("the token's {claim} claim is not a valid identifier")
            }
            Forbidden::ClaimNotPlainToken { claim } => {
                return format!(
                    "the token's {claim} claim holds , | \\ or $, which an access label may not"
                )
            }
            Forbidden::NotForEds => "the token is not issued for EDS (scope EDS missing)",
            Forbidden::MixedScopes => "the token carries both system and user AuditEvent scopes",
            Forbidden::NoAccessScope => {
                "the token grants no EDS AuditEvent access (system/AuditEvent.crs or user/AuditEvent.rs)"
            }
            Forbidden::SeveralOrgScopes => {
                "a station token is issued for one organisational context: at most one SOR: and one GLN: scope"
            }
            Forbidden::OrgScopesWithoutContext => {
                "SOR:/GLN: scopes without an ehmi:org_context claim"
            }
            Forbidden::OrgScopesMismatch => {
                "the token's SOR:/GLN: scopes do not match its ehmi:org_context"
            }
            Forbidden::AssuranceTooLow => {
                "user access to EDS requires NSIS assurance level Substantial or higher (acr)"
            }
            Forbidden::NoSupporterRole => {
                "the token's priv claim does not grant the EDS supporter role for its cvr"
            }
            Forbidden::UnknownCvr => {
                "no SOR codes are known for the token's cvr in the CVR directory"
            }
            Forbidden::DeviceMismatch => {
                "the registration's observing device is not the token's ehmi:eer:device_id"
            }
            Forbidden::OrgNotParty => {
                "the token's organisational context (SOR and GLN) is neither the sender nor the receiver"
            }
            Forbidden::ObserverDisagrees => {
                "source.observer's identifier and the contained Device's identifier disagree"
            }
            Forbidden::PageNotIssued => "this paging link was not issued to the caller",
            Forbidden::PageUnsigned => "paging links must carry the proxy's signature",
            Forbidden::Batch => {
                "batch and transaction bundles are not allowed; paging links are GET only"
            }
            Forbidden::SystemInteraction => "system-level interactions are not allowed",
            Forbidden::ConditionalCreate => "conditional create (If-None-Exist) is not allowed",
            Forbidden::Conditional => "conditional requests are not allowed",
            Forbidden::Operation => "FHIR operations ($…) are not allowed",
            Forbidden::History => "history interactions are not allowed",
            Forbidden::Interaction => "this AuditEvent interaction is not allowed",
            Forbidden::Compartment => "compartment searches are not allowed",
            Forbidden::ResourceType => "only AuditEvent is served here",
            Forbidden::UnknownPath => "unknown path",
        };
        text.to_string()
    }
}

/// Why a request's query, path, framing or body is not acceptable (400): one variant per
/// rule. Detail fields hold what today's text names: a parameter name, a JSON path, a role,
/// a limit; never a value from a body. Names and texts as for [`Forbidden`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// The request body could not be read from the client.
    BodyUnreadable,
    /// `/metadata?mode=` other than `full` or `normal` (`terminology` is not offered).
    CapabilitiesMode,
    /// `_summary=count` while totals are dropped.
    CountsNotOffered,
    /// The FHIR server answered 409 or 412.
    UpstreamConflict,
    /// The FHIR server answered 400 or 422; its own (checked, shortened) diagnostics if any.
    UpstreamRejected {
        /// The FHIR server's diagnostics, as passed on.
        diagnostics: Option<String>,
    },
    /// The registration body is not (strict) JSON.
    NotJson {
        /// The parser's error (a position and kind, no content).
        error: String,
    },
    /// The checked registration could not be serialised again.
    Unserialisable {
        /// The serialiser's error.
        error: String,
    },
    /// The body is not a JSON object.
    NotAnObject,
    /// The body is not an AuditEvent.
    NotAnAuditEvent,
    /// An element the rules read has the wrong FHIR JSON shape.
    Shape {
        /// The element's JSON path.
        path: String,
        /// What it must be: "an object", "a string", "an array".
        kind: &'static str,
    },
    /// `meta.profile` names no EDS profile.
    NoEdsProfile,
    /// `meta.profile` names another profile.
    ForeignProfile,
    /// `meta` is not an object.
    MetaNotObject,
    /// `meta.tag` present.
    MetaTag,
    /// `meta.security` set by the client.
    ClientSecurity,
    /// `meta.security` is not an array.
    SecurityNotArray,
    /// `meta.security` holds something other than Codings.
    SecurityNotCodings,
    /// A reserved access-label system in `meta.security`.
    ReservedLabel,
    /// A value the registration's access labels are made of (device id, SOR code, CPR) holds
    /// `,` `|` `\` or `$` (`labels::is_plain_token`).
    LabelCodeNotPlain {
        /// What it is: `device id`, `sender SOR code`, `receiver SOR code` or `patient CPR`.
        what: &'static str,
    },
    /// A reserved access-label system anywhere else in the registration.
    ReservedLabelSystem {
        /// The element's JSON path.
        path: String,
    },
    /// The ehmiPatient entity has no identifier value.
    PatientWithoutIdentifier,
    /// More than one ehmiPatient entity.
    SeveralPatients,
    /// An EdsPatientDeliveryStatus without an ehmiPatient entity.
    PatientMissing,
    /// No `source.observer`.
    ObserverMissing,
    /// `source.observer.identifier` without a value.
    ObserverIdentifierWithoutValue,
    /// `source.observer` neither a local Device reference nor an identifier.
    ObserverReference,
    /// `source.observer` references no single contained resource.
    ObserverNotContained,
    /// `source.observer` references something other than a Device.
    ObserverNotDevice,
    /// The observing Device has no identifier.
    DeviceWithoutIdentifier,
    /// `source.observer` identifies no station.
    ObserverUnidentified,
    /// Not exactly one agent of the role.
    AgentCount {
        /// The agent role code (ehmiSender, ehmiReceiver).
        role: String,
    },
    /// The agent of the role has no SOR.
    AgentWithoutSor {
        /// The agent role code.
        role: String,
    },
    /// The agent of the role has more than one GLN.
    AgentGlns {
        /// The agent role code.
        role: String,
    },
    /// `contained` is not an array of resources.
    ContainedNotArray,
    /// A contained resource of a type not allowed.
    ContainedType,
    /// A contained resource without an id.
    ContainedWithoutId,
    /// A contained resource whose id is not a FHIR id.
    ContainedIdMalformed,
    /// A contained resource with `meta`.
    ContainedMeta,
    /// Two contained resources with the same id.
    ContainedIdTwice,
    /// `contained` below the top level.
    NestedContained {
        /// The element's JSON path.
        path: String,
    },
    /// A number in decimal or exponent form.
    Decimal {
        /// The element's JSON path.
        path: String,
    },
    /// A `reference` that is not a string.
    NotAString {
        /// The element's JSON path.
        path: String,
    },
    /// A reference the FHIR server could resolve (anything but `#id` to a contained resource).
    ResolvableReference {
        /// The element's JSON path.
        path: String,
    },
    /// `extension` that is not an array.
    NotAnArray {
        /// The element's JSON path.
        path: String,
    },
    /// An extension other than the EDS IG's and HL7 core ones.
    ForeignExtension {
        /// The element's JSON path.
        path: String,
    },
    /// A parameter given twice.
    RepeatedParameter {
        /// The parameter's name.
        name: String,
    },
    /// `_getpagesoffset` not a number.
    PageOffset,
    /// A parameter not allowed on a paging request.
    PageParameter {
        /// The parameter's name.
        name: String,
    },
    /// A paging request without `_getpages`.
    PageHandleMissing,
    /// A malformed `_getpages` handle.
    PageHandleMalformed,
    /// A malformed `_eds_page` target (not base64url, not UTF-8, or a parameter a signed
    /// search link never carries).
    PageTarget,
    /// A search parameter that turns the search into more than a constrained search.
    RefusedParameter {
        /// The fixed text naming the parameter.
        why: &'static str,
    },
    /// A modifier on a parameter that takes none.
    ModifierOn {
        /// The parameter's name.
        name: String,
    },
    /// A modifier not allowed.
    Modifier {
        /// The modifier.
        modifier: String,
    },
    /// An unknown or unsupported search parameter.
    UnknownParameter {
        /// The parameter's name.
        name: String,
    },
    /// A chained parameter.
    Chained,
    /// `_has`.
    ReverseChained,
    /// A malformed parameter name.
    MalformedParameterName {
        /// The name, made printable.
        name: String,
    },
    /// A parameter that must be a non-negative integer.
    NotAnInteger {
        /// The parameter's name.
        name: String,
    },
    /// `_sort` by a key not offered.
    SortKey {
        /// The key, made printable.
        key: String,
    },
    /// A bad `_summary` value.
    Summary,
    /// A bad `_elements` entry.
    ElementsEntry {
        /// The entry, made printable.
        entry: String,
    },
    /// A bad `_total` value.
    Total,
    /// A `_format` other than JSON.
    Format,
    /// A boolean parameter that is not `true` or `false`.
    NotABoolean {
        /// The parameter's name.
        name: String,
    },
    /// More parameters than forwarded.
    TooManyParameters {
        /// The limit.
        limit: usize,
    },
    /// A parameter on a read, create or capabilities request.
    InteractionParameter {
        /// The parameter's name.
        name: String,
    },
    /// A search form body that is not UTF-8.
    FormNotUtf8,
    /// Empty or dot path segments.
    DotSegment,
    /// Encoded or special characters in the path.
    PathCharacters,
    /// A malformed resource id.
    MalformedId,
    /// Folded header lines (obs-fold, RFC 9112 §5.2).
    ObsFold,
    /// A header line without a colon.
    NoColon,
    /// Transfer-Encoding and Content-Length together (RFC 9112 §6.1).
    LengthAndChunked,
    /// A Transfer-Encoding other than a single `chunked`.
    TransferEncoding,
    /// Content-Length repeated or not a single number.
    ContentLength,
    /// A body on a method whose content has no defined meaning.
    BodyNotAllowed {
        /// The method.
        method: String,
    },
}

impl Invalid {
    /// The rule's stable name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Invalid::BodyUnreadable => "body_unreadable",
            Invalid::CountsNotOffered => "counts_not_offered",
            Invalid::UpstreamConflict => "upstream_conflict",
            Invalid::UpstreamRejected { .. } => "upstream_rejected",
            Invalid::NotJson { .. } => "not_json",
            Invalid::Unserialisable { .. } => "unserialisable",
            Invalid::NotAnObject => "not_an_object",
            Invalid::NotAnAuditEvent => "not_an_audit_event",
            Invalid::Shape { .. } => "shape",
            Invalid::NoEdsProfile => "no_eds_profile",
            Invalid::ForeignProfile => "foreign_profile",
            Invalid::MetaNotObject => "meta_not_object",
            Invalid::MetaTag => "meta_tag",
            Invalid::ClientSecurity => "client_security",
            Invalid::SecurityNotArray => "security_not_array",
            Invalid::SecurityNotCodings => "security_not_codings",
            Invalid::ReservedLabel => "reserved_label",
            Invalid::LabelCodeNotPlain { .. } => "label_code_not_plain",
            Invalid::ReservedLabelSystem { .. } => "reserved_label_system",
            Invalid::PatientWithoutIdentifier => "patient_without_identifier",
            Invalid::SeveralPatients => "several_patients",
            Invalid::PatientMissing => "patient_missing",
            Invalid::ObserverMissing => "observer_missing",
            Invalid::ObserverIdentifierWithoutValue => "observer_identifier_without_value",
            Invalid::ObserverReference => "observer_reference",
            Invalid::ObserverNotContained => "observer_not_contained",
            Invalid::ObserverNotDevice => "observer_not_device",
            Invalid::DeviceWithoutIdentifier => "device_without_identifier",
            Invalid::ObserverUnidentified => "observer_unidentified",
            Invalid::AgentCount { .. } => "agent_count",
            Invalid::AgentWithoutSor { .. } => "agent_without_sor",
            Invalid::AgentGlns { .. } => "agent_glns",
            Invalid::ContainedNotArray => "contained_not_array",
            Invalid::ContainedType => "contained_type",
            Invalid::ContainedWithoutId => "contained_without_id",
            Invalid::ContainedIdMalformed => "contained_id_malformed",
            Invalid::ContainedMeta => "contained_meta",
            Invalid::ContainedIdTwice => "contained_id_twice",
            Invalid::NestedContained { .. } => "nested_contained",
            Invalid::Decimal { .. } => "decimal",
            Invalid::NotAString { .. } => "not_a_string",
            Invalid::ResolvableReference { .. } => "resolvable_reference",
            Invalid::NotAnArray { .. } => "not_an_array",
            Invalid::ForeignExtension { .. } => "foreign_extension",
            Invalid::RepeatedParameter { .. } => "repeated_parameter",
            Invalid::PageOffset => "page_offset",
            Invalid::PageParameter { .. } => "page_parameter",
            Invalid::PageHandleMissing => "page_handle_missing",
            Invalid::PageHandleMalformed => "page_handle_malformed",
            Invalid::PageTarget => "page_target",
            Invalid::RefusedParameter { .. } => "refused_parameter",
            Invalid::ModifierOn { .. } => "modifier_on",
            Invalid::Modifier { .. } => "modifier",
            Invalid::UnknownParameter { .. } => "unknown_parameter",
            Invalid::Chained => "chained",
            Invalid::ReverseChained => "reverse_chained",
            Invalid::MalformedParameterName { .. } => "malformed_parameter_name",
            Invalid::NotAnInteger { .. } => "not_an_integer",
            Invalid::SortKey { .. } => "sort_key",
            Invalid::Summary => "summary",
            Invalid::ElementsEntry { .. } => "elements_entry",
            Invalid::Total => "total",
            Invalid::Format => "format",
            Invalid::NotABoolean { .. } => "not_a_boolean",
            Invalid::TooManyParameters { .. } => "too_many_parameters",
            Invalid::InteractionParameter { .. } => "interaction_parameter",
            Invalid::CapabilitiesMode => "capabilities_mode",
            Invalid::FormNotUtf8 => "form_not_utf8",
            Invalid::DotSegment => "dot_segment",
            Invalid::PathCharacters => "path_characters",
            Invalid::MalformedId => "malformed_id",
            Invalid::ObsFold => "obs_fold",
            Invalid::NoColon => "no_colon",
            Invalid::LengthAndChunked => "length_and_chunked",
            Invalid::TransferEncoding => "transfer_encoding",
            Invalid::ContentLength => "content_length",
            Invalid::BodyNotAllowed { .. } => "body_not_allowed",
        }
    }

    /// The OperationOutcome's `diagnostics`.
    pub fn message(&self) -> String {
        let text = match self {
            Invalid::BodyUnreadable => "the request body could not be read",
            Invalid::CountsNotOffered => {
                "_summary=count is not offered: this server does not hand out counts"
            }
            Invalid::UpstreamConflict => "the FHIR server refused the request as a conflict",
            Invalid::UpstreamRejected { diagnostics } => {
                return format!(
                    "the FHIR server rejected the request{}",
                    diagnostics
                        .as_ref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                )
            }
            Invalid::NotJson { error } => return format!("the body is not valid JSON: {error}"),
            Invalid::Unserialisable { error } => return error.clone(),
            Invalid::NotAnObject => "the body is not a JSON object",
            Invalid::NotAnAuditEvent => "the body is not an AuditEvent",
            Invalid::Shape { path, kind } => {
                return format!("{path} must be {kind} (FHIR R4 JSON)")
            }
            Invalid::NoEdsProfile => "meta.profile must name an EDS profile",
            Invalid::ForeignProfile => "meta.profile may only name the EDS profiles",
            Invalid::MetaNotObject => "meta must be an object",
            Invalid::MetaTag => {
                "meta.tag is not accepted: tags are shared server state, visible on other records"
            }
            Invalid::ClientSecurity => "meta.security is set by the proxy, not the client",
            Invalid::SecurityNotArray => "meta.security must be an array",
            Invalid::SecurityNotCodings => "meta.security may only hold Codings",
            Invalid::ReservedLabel => {
                "access labels in meta.security are set by the proxy, not the client"
            }
            Invalid::LabelCodeNotPlain { what } => {
                return format!("the registration's {what} holds , | \\ or $, which an access label may not")
            }
            Invalid::ReservedLabelSystem { path } => {
                return format!(
                    "{path}: the proxy's access label systems may not appear in a registration"
                )
            }
            Invalid::PatientWithoutIdentifier => "the ehmiPatient entity has no identifier value",
            Invalid::SeveralPatients => "more than one ehmiPatient entity",
            Invalid::PatientMissing => "an EdsPatientDeliveryStatus needs an ehmiPatient entity",
            Invalid::ObserverMissing => "source.observer is required",
            Invalid::ObserverIdentifierWithoutValue => "source.observer.identifier has no value",
            Invalid::ObserverReference => {
                "source.observer must reference a contained Device (#id) or carry an identifier"
            }
            Invalid::ObserverNotContained => {
                "source.observer references no single contained resource"
            }
            Invalid::ObserverNotDevice => "source.observer must reference a Device",
            Invalid::DeviceWithoutIdentifier => "the observing Device has no identifier",
            Invalid::ObserverUnidentified => "source.observer does not identify the station",
            Invalid::AgentCount { role } => {
                return format!("exactly one {role} agent is required")
            }
            Invalid::AgentWithoutSor { role } => {
                return format!("the {role} agent has no who.identifier.value (SOR)")
            }
            Invalid::AgentGlns { role } => {
                return format!("the {role} agent has more than one GLN")
            }
            Invalid::ContainedNotArray => "contained must be an array of resources",
            Invalid::ContainedType => {
                return format!(
                    "contained resources may only be of type {}",
                    crate::fhir::inert::ALLOWED_CONTAINED_TYPES.join(", ")
                )
            }
            Invalid::ContainedWithoutId => "every contained resource needs an id",
            Invalid::ContainedIdMalformed => {
                "a contained resource's id must be a FHIR id (1-64 of A-Z a-z 0-9 - .)"
            }
            Invalid::ContainedMeta => "contained resources may not carry meta",
            Invalid::ContainedIdTwice => "two contained resources have the same id",
            Invalid::NestedContained { path } => {
                return format!("{path}: contained resources may only appear at the top level")
            }
            Invalid::Decimal { path } => {
                return format!(
                    "{path}: numbers in decimal or exponent form are not accepted: they would not reach the FHIR server exactly"
                )
            }
            Invalid::NotAString { path } => return format!("{path} must be a string"),
            Invalid::ResolvableReference { path } => {
                return format!(
                    "{path}: only local references (#id) to a contained resource are accepted; \
                     the FHIR server would resolve any other reference outside the caller's access"
                )
            }
            Invalid::NotAnArray { path } => return format!("{path} must be an array"),
            Invalid::ForeignExtension { path } => {
                return format!(
                    "{path}: extensions other than the EDS IG's and HL7 core extensions are not accepted"
                )
            }
            Invalid::RepeatedParameter { name } => return format!("{name} may appear only once"),
            Invalid::PageOffset => "_getpagesoffset must be a number",
            Invalid::PageParameter { name } => {
                return format!("`{name}` is not allowed on a paging request")
            }
            Invalid::PageHandleMissing => "_getpages is missing",
            Invalid::PageHandleMalformed => "malformed _getpages handle",
            Invalid::PageTarget => "malformed _eds_page paging target",
            Invalid::RefusedParameter { why } => why,
            Invalid::ModifierOn { name } => return format!("modifiers are not allowed on {name}"),
            Invalid::Modifier { modifier } => return format!("modifier :{modifier} is not allowed"),
            Invalid::UnknownParameter { name } => {
                return format!("unknown or unsupported search parameter `{name}`")
            }
            Invalid::Chained => "chained search parameters are not allowed",
            Invalid::ReverseChained => "_has (reverse chaining) is not allowed",
            Invalid::MalformedParameterName { name } => {
                return format!("malformed search parameter name `{name}`")
            }
            Invalid::NotAnInteger { name } => {
                return format!("{name} must be a non-negative integer")
            }
            Invalid::SortKey { key } => return format!("cannot sort by `{key}`"),
            Invalid::Summary => "_summary must be true, false, data, text or count",
            Invalid::ElementsEntry { entry } => return format!("bad _elements entry `{entry}`"),
            Invalid::Total => "_total must be none, estimate or accurate",
            Invalid::Format => "only JSON (_format=json) is supported",
            Invalid::NotABoolean { name } => return format!("{name} must be true or false"),
            Invalid::TooManyParameters { limit } => {
                return format!("a search may carry at most {limit} parameters")
            }
            Invalid::CapabilitiesMode => {
                "/metadata mode must be full or normal (no terminology capabilities)"
            }
            Invalid::InteractionParameter { name } => {
                return format!("`{name}` is not allowed on this interaction")
            }
            Invalid::FormNotUtf8 => "the search form is not UTF-8",
            Invalid::DotSegment => "empty or dot segments are not allowed in the path",
            Invalid::PathCharacters => "encoded or special characters are not allowed in the path",
            Invalid::MalformedId => "malformed resource id",
            Invalid::ObsFold => "folded header lines (obs-fold) are not accepted",
            Invalid::NoColon => "a header line without a colon",
            Invalid::LengthAndChunked => {
                "Transfer-Encoding and Content-Length together are not accepted (RFC 9112 §6.1)"
            }
            Invalid::TransferEncoding => "only a single `Transfer-Encoding: chunked` is accepted",
            Invalid::ContentLength => "Content-Length must appear once, with a single number",
            Invalid::BodyNotAllowed { method } => {
                return format!("a {method} request may not carry a body here")
            }
        };
        text.to_string()
    }
}

/// Why a method is not allowed on a path the proxy knows (405). Names and texts as for
/// [`Forbidden`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodNotAllowed {
    /// Anything but GET on `/metadata`.
    Metadata,
    /// PUT, PATCH or DELETE on the type (conditional writes).
    ConditionalWrite,
    /// Another method on the type.
    OnType {
        /// The method.
        method: String,
    },
    /// Anything but GET, HEAD or POST on `_search`.
    Search,
    /// PUT, PATCH or DELETE on an instance.
    Write,
    /// Another method on an instance or version.
    OnInstance {
        /// The method.
        method: String,
    },
}

impl MethodNotAllowed {
    /// The rule's stable name.
    pub fn as_str(&self) -> &'static str {
        match self {
            MethodNotAllowed::Metadata => "metadata_get_only",
            MethodNotAllowed::ConditionalWrite => "conditional_write",
            MethodNotAllowed::OnType { .. } => "method_on_type",
            MethodNotAllowed::Search => "search_post_only",
            MethodNotAllowed::Write => "write",
            MethodNotAllowed::OnInstance { .. } => "method_on_instance",
        }
    }

    /// The OperationOutcome's `diagnostics`.
    pub fn message(&self) -> String {
        match self {
            MethodNotAllowed::Metadata => "only GET and HEAD are allowed on /metadata".to_string(),
            MethodNotAllowed::ConditionalWrite => {
                "conditional update, patch and delete are not allowed".to_string()
            }
            MethodNotAllowed::OnType { method } => format!("{method} is not allowed on AuditEvent"),
            MethodNotAllowed::Search => {
                "only GET, HEAD and POST are allowed on _search".to_string()
            }
            MethodNotAllowed::Write => "update, patch and delete are not allowed".to_string(),
            MethodNotAllowed::OnInstance { method } => format!("{method} is not allowed here"),
        }
    }

    /// The `Allow` header of this 405 (RFC 9110 §15.5.6, §10.2.1): the methods the proxy
    /// serves on the path that was asked for. HEAD is answered like GET (without a body).
    pub fn allow(&self) -> &'static str {
        match self {
            MethodNotAllowed::Metadata => "GET, HEAD",
            MethodNotAllowed::ConditionalWrite | MethodNotAllowed::OnType { .. } => {
                "GET, HEAD, POST"
            }
            MethodNotAllowed::Search => "GET, HEAD, POST",
            MethodNotAllowed::Write | MethodNotAllowed::OnInstance { .. } => "GET, HEAD",
        }
    }
}

/// Why a body's media type is refused (415). Names and texts as for [`Forbidden`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsupportedMediaType {
    /// A POST `_search` body that is not form-encoded.
    SearchForm,
    /// A registration that is not FHIR JSON.
    Registration,
}

impl UnsupportedMediaType {
    /// The rule's stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            UnsupportedMediaType::SearchForm => "search_not_form",
            UnsupportedMediaType::Registration => "registration_not_json",
        }
    }

    /// The OperationOutcome's `diagnostics`.
    pub fn message(self) -> &'static str {
        match self {
            UnsupportedMediaType::SearchForm => {
                "POST _search needs an application/x-www-form-urlencoded body"
            }
            UnsupportedMediaType::Registration => {
                "registrations must be sent as application/fhir+json"
            }
        }
    }
}

/// Why the FHIR server's answer (or its absence) is not passed on (502). Names and texts as
/// for [`Forbidden`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadGateway {
    /// The FHIR server could not be reached.
    Unavailable,
    /// The connection ended without a response.
    NoResponse,
    /// The response is above the configured limit.
    ResponseTooLarge,
    /// The upstream request could not be built.
    Request {
        /// The builder's error.
        error: String,
    },
    /// The FHIR server answered a status the proxy does not pass on.
    Status {
        /// The status.
        status: u16,
    },
    /// The response check found something that never belongs in this answer (an alarm).
    ForeignResource {
        /// What was found (a fixed text, never content).
        why: &'static str,
    },
    /// The answer is not JSON.
    NotJson,
    /// The answer is JSON but not a FHIR resource.
    NotAResource,
    /// A search was not answered with a searchset.
    NotASearchset,
    /// The searchset is malformed where the check reads.
    MalformedSearchset,
    /// The searchset holds something outside its entries.
    OutsideEntries {
        /// What was found (a fixed text, never content).
        why: &'static str,
    },
}

impl BadGateway {
    /// The rule's stable name.
    pub fn as_str(&self) -> &'static str {
        match self {
            BadGateway::Unavailable => "upstream_unavailable",
            BadGateway::NoResponse => "no_response",
            BadGateway::ResponseTooLarge => "response_too_large",
            BadGateway::Request { .. } => "upstream_request",
            BadGateway::Status { .. } => "upstream_status",
            BadGateway::ForeignResource { .. } => "foreign_resource",
            BadGateway::NotJson => "upstream_not_json",
            BadGateway::NotAResource => "not_a_resource",
            BadGateway::NotASearchset => "not_a_searchset",
            BadGateway::MalformedSearchset => "malformed_searchset",
            BadGateway::OutsideEntries { .. } => "outside_entries",
        }
    }

    /// The OperationOutcome's `diagnostics`.
    pub fn message(&self) -> String {
        match self {
            BadGateway::Unavailable => "the FHIR server is unavailable".to_string(),
            BadGateway::NoResponse => "the FHIR server sent no response".to_string(),
            BadGateway::ResponseTooLarge => "the FHIR server's response is too large".to_string(),
            BadGateway::Request { error } => format!("cannot build upstream request: {error}"),
            // Fixed text, whatever the status: which 5xx a server gives (500 for a duplicate id,
            // 503 when busy, …) can tell one caller about another's records (issue 13 item 3).
            BadGateway::Status { .. } => "the FHIR server could not answer".to_string(),
            BadGateway::ForeignResource { why } => format!("the FHIR server answered with {why}"),
            BadGateway::NotJson => {
                "the FHIR server answered with something that is not JSON".to_string()
            }
            BadGateway::NotAResource => {
                "the FHIR server answered with something that is not a FHIR resource".to_string()
            }
            BadGateway::NotASearchset => {
                "the FHIR server did not answer a search with a searchset".to_string()
            }
            BadGateway::MalformedSearchset => "malformed searchset".to_string(),
            BadGateway::OutsideEntries { why } => {
                format!("the FHIR server's searchset holds {why} outside its entries")
            }
        }
    }
}

/// A request the proxy refuses, or could not complete. Every variant that can have several
/// causes carries the rule that refused as an enum: [`Refusal::reason`] names it (the `reason`
/// label of `eds_proxy_requests_total` and of the access log), [`Refusal::message`] explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no valid, certificate-bound access token.
    Unauthenticated(TokenFailure),
    /// 403: authenticated, but not allowed to do this.
    Forbidden(Forbidden),
    /// 400: the query or body is not acceptable.
    Invalid(Invalid),
    /// 404: not there, or not the caller's (never tell which).
    NotFound,
    /// 405: method not allowed on a path the proxy knows.
    MethodNotAllowed(MethodNotAllowed),
    /// 413: request body above the configured limit.
    TooLarge(usize),
    /// 414: the request target is longer than the configured limit.
    UriTooLong(usize),
    /// 431: the request headers together are larger than the configured limit.
    HeadersTooLarge(usize),
    /// 415: only FHIR JSON (or form-encoded search) bodies are accepted.
    UnsupportedMediaType(UnsupportedMediaType),
    /// 406: the client's `Accept` admits no JSON (e.g. only `application/fhir+xml`); the
    /// proxy checks and serves FHIR JSON only (RFC 9110 §12.5.1, §15.5.7).
    NotAcceptable,
    /// 502: the FHIR server could not be reached or answered something the proxy rejects.
    BadGateway(BadGateway),
    /// 504: the FHIR server did not answer in time.
    GatewayTimeout,
    /// 503: the answer shows a supporter citizens' registrations, and its MinLog audit record
    /// could not be written to the audit sink (`audit.path`), so it is not sent (fail closed:
    /// no release without its record; `audit`).
    AuditUnavailable,
    /// 503: the FHIR server failed the conformance probe and `upstream.on_nonconformant` is
    /// `refuse` (`fhir::conformance`).
    BackendNonconformant,
}

impl Refusal {
    /// The HTTP status code this refusal is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Unauthenticated(_) => 401,
            Refusal::Forbidden(_) => 403,
            Refusal::Invalid(_) => 400,
            Refusal::NotFound => 404,
            Refusal::MethodNotAllowed(_) => 405,
            Refusal::TooLarge(_) => 413,
            Refusal::UriTooLong(_) => 414,
            Refusal::HeadersTooLarge(_) => 431,
            Refusal::UnsupportedMediaType(_) => 415,
            Refusal::NotAcceptable => 406,
            Refusal::BadGateway(_) => 502,
            Refusal::GatewayTimeout => 504,
            Refusal::AuditUnavailable => 503,
            Refusal::BackendNonconformant => 503,
        }
    }

    /// FHIR `IssueType` code (<https://hl7.org/fhir/R4/codesystem-issue-type.html>).
    pub fn issue_code(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(_) => "login",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::Invalid(_) => "invalid",
            Refusal::NotFound => "not-found",
            Refusal::MethodNotAllowed(_) => "not-supported",
            Refusal::TooLarge(_) => "too-costly",
            Refusal::UriTooLong(_) | Refusal::HeadersTooLarge(_) => "too-long",
            Refusal::UnsupportedMediaType(_) => "not-supported",
            Refusal::NotAcceptable => "not-supported",
            Refusal::BadGateway(_) => "transient",
            Refusal::GatewayTimeout => "timeout",
            Refusal::AuditUnavailable => "transient",
            Refusal::BackendNonconformant => "transient",
        }
    }

    /// The rule that refused, by its stable snake_case name: the `reason` label of
    /// `eds_proxy_requests_total` and the access log's `reason`. Names are unique across
    /// statuses, so a name alone tells the status too.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unauthenticated(f) => f.as_str(),
            Refusal::Forbidden(f) => f.as_str(),
            Refusal::Invalid(i) => i.as_str(),
            Refusal::NotFound => "not_found",
            Refusal::MethodNotAllowed(m) => m.as_str(),
            Refusal::TooLarge(_) => "too_large",
            Refusal::UriTooLong(_) => "uri_too_long",
            Refusal::HeadersTooLarge(_) => "headers_too_large",
            Refusal::UnsupportedMediaType(u) => u.as_str(),
            Refusal::NotAcceptable => "not_acceptable",
            Refusal::BadGateway(b) => b.as_str(),
            Refusal::GatewayTimeout => "gateway_timeout",
            Refusal::AuditUnavailable => "audit_write_failed",
            Refusal::BackendNonconformant => "backend_nonconformant",
        }
    }

    /// The text of the OperationOutcome's issue (`diagnostics`); never carries a token, a body or
    /// a CPR number.
    pub fn message(&self) -> String {
        match self {
            Refusal::Unauthenticated(f) => f.description().to_string(),
            Refusal::Forbidden(f) => f.message(),
            Refusal::Invalid(i) => i.message(),
            Refusal::MethodNotAllowed(m) => m.message(),
            Refusal::UnsupportedMediaType(u) => u.message().to_string(),
            Refusal::NotAcceptable => {
                "only FHIR JSON (application/fhir+json) is served; the Accept header admits none"
                    .to_string()
            }
            Refusal::BadGateway(b) => b.message(),
            Refusal::NotFound => "resource not found".to_string(),
            Refusal::TooLarge(limit) => format!("request body exceeds {limit} bytes"),
            Refusal::UriTooLong(limit) => format!("request URL exceeds {limit} bytes"),
            Refusal::HeadersTooLarge(limit) => format!("request headers exceed {limit} bytes"),
            Refusal::GatewayTimeout => "the FHIR server did not answer in time".to_string(),
            Refusal::AuditUnavailable => {
                "the answer cannot be released: its audit record could not be written".to_string()
            }
            // Which check failed is the operator's business (`/readyz`, metrics), not a caller's.
            Refusal::BackendNonconformant => {
                "the FHIR server behind the proxy failed its conformance check".to_string()
            }
        }
    }

    /// Extra response headers this refusal requires (RFC 6750 for 401).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            Refusal::Unauthenticated(TokenFailure::Missing) => {
                vec![("WWW-Authenticate", "Bearer".to_string())]
            }
            Refusal::Unauthenticated(f) => vec![(
                "WWW-Authenticate",
                format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    f.description()
                ),
            )],
            Refusal::MethodNotAllowed(m) => vec![("Allow", m.allow().to_string())],
            _ => Vec::new(),
        }
    }

    /// The answer body: a FHIR OperationOutcome (JSON) with one issue of severity `error`.
    pub fn outcome_json(&self) -> Vec<u8> {
        operation_outcome("error", self.issue_code(), &self.message())
    }
}

impl std::fmt::Display for Refusal {
    /// The [`Refusal::message`].
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for Refusal {}

/// A FHIR OperationOutcome with a single issue, serialised as JSON.
pub fn operation_outcome(severity: &str, code: &str, diagnostics: &str) -> Vec<u8> {
    let body = json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": severity, "code": code, "diagnostics": diagnostics }]
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_maps_to_status_and_outcome() {
        let cases = [
            (
                Refusal::Unauthenticated(TokenFailure::Expired),
                401,
                "login",
            ),
            (
                Refusal::Forbidden(Forbidden::NoSearchGrant),
                403,
                "forbidden",
            ),
            (Refusal::Invalid(Invalid::Chained), 400, "invalid"),
            (Refusal::NotFound, 404, "not-found"),
            (
                Refusal::MethodNotAllowed(MethodNotAllowed::Write),
                405,
                "not-supported",
            ),
            (Refusal::TooLarge(10), 413, "too-costly"),
            (Refusal::UriTooLong(10), 414, "too-long"),
            (Refusal::HeadersTooLarge(10), 431, "too-long"),
            (
                Refusal::UnsupportedMediaType(UnsupportedMediaType::SearchForm),
                415,
                "not-supported",
            ),
            (Refusal::BadGateway(BadGateway::NotJson), 502, "transient"),
            (Refusal::GatewayTimeout, 504, "timeout"),
            (Refusal::AuditUnavailable, 503, "transient"),
            (Refusal::BackendNonconformant, 503, "transient"),
        ];
        for (r, status, code) in cases {
            assert_eq!(r.status(), status);
            let v: serde_json::Value = serde_json::from_slice(&r.outcome_json()).unwrap();
            assert_eq!(v["resourceType"], "OperationOutcome");
            assert_eq!(v["issue"][0]["code"], code);
        }
    }

    /// Every rule once: its reason is a snake_case name used by no other rule (so the name
    /// alone tells the status and the rule), and it explains itself.
    #[test]
    fn every_reason_name_is_unique_snake_case() {
        use TokenFailure as T;
        let mut all = vec![
            Refusal::Forbidden(Forbidden::NotAStation),
            Refusal::Forbidden(Forbidden::NoSearchGrant),
            Refusal::Forbidden(Forbidden::NoReadGrant),
            Refusal::Forbidden(Forbidden::NoCreateGrant),
            Refusal::Forbidden(Forbidden::NoOrgContext),
            Refusal::Forbidden(Forbidden::MissingClaim { claim: "x" }),
            Refusal::Forbidden(Forbidden::InvalidClaim { claim: "x" }),
            Refusal::Forbidden(Forbidden::ClaimNotPlainToken { claim: "x" }),
            Refusal::Forbidden(Forbidden::NotForEds),
            Refusal::Forbidden(Forbidden::MixedScopes),
            Refusal::Forbidden(Forbidden::NoAccessScope),
            Refusal::Forbidden(Forbidden::SeveralOrgScopes),
            Refusal::Forbidden(Forbidden::OrgScopesWithoutContext),
            Refusal::Forbidden(Forbidden::OrgScopesMismatch),
            Refusal::Forbidden(Forbidden::AssuranceTooLow),
            Refusal::Forbidden(Forbidden::NoSupporterRole),
            Refusal::Forbidden(Forbidden::UnknownCvr),
            Refusal::Forbidden(Forbidden::DeviceMismatch),
            Refusal::Forbidden(Forbidden::OrgNotParty),
            Refusal::Forbidden(Forbidden::ObserverDisagrees),
            Refusal::Forbidden(Forbidden::PageNotIssued),
            Refusal::Forbidden(Forbidden::PageUnsigned),
            Refusal::Forbidden(Forbidden::Batch),
            Refusal::Forbidden(Forbidden::SystemInteraction),
            Refusal::Forbidden(Forbidden::ConditionalCreate),
            Refusal::Forbidden(Forbidden::Conditional),
            Refusal::Forbidden(Forbidden::Operation),
            Refusal::Forbidden(Forbidden::History),
            Refusal::Forbidden(Forbidden::Interaction),
            Refusal::Forbidden(Forbidden::Compartment),
            Refusal::Forbidden(Forbidden::ResourceType),
            Refusal::Forbidden(Forbidden::UnknownPath),
            Refusal::Invalid(Invalid::BodyUnreadable),
            Refusal::Invalid(Invalid::CountsNotOffered),
            Refusal::Invalid(Invalid::UpstreamConflict),
            Refusal::Invalid(Invalid::UpstreamRejected { diagnostics: None }),
            Refusal::Invalid(Invalid::NotJson { error: "x".into() }),
            Refusal::Invalid(Invalid::Unserialisable { error: "x".into() }),
            Refusal::Invalid(Invalid::NotAnObject),
            Refusal::Invalid(Invalid::NotAnAuditEvent),
            Refusal::Invalid(Invalid::Shape {
                path: "x".into(),
                kind: "x",
            }),
            Refusal::Invalid(Invalid::NoEdsProfile),
            Refusal::Invalid(Invalid::ForeignProfile),
            Refusal::Invalid(Invalid::MetaNotObject),
            Refusal::Invalid(Invalid::MetaTag),
            Refusal::Invalid(Invalid::ClientSecurity),
            Refusal::Invalid(Invalid::SecurityNotArray),
            Refusal::Invalid(Invalid::SecurityNotCodings),
            Refusal::Invalid(Invalid::ReservedLabel),
            Refusal::Invalid(Invalid::LabelCodeNotPlain { what: "x" }),
            Refusal::Invalid(Invalid::ReservedLabelSystem { path: "x".into() }),
            Refusal::Invalid(Invalid::PatientWithoutIdentifier),
            Refusal::Invalid(Invalid::SeveralPatients),
            Refusal::Invalid(Invalid::PatientMissing),
            Refusal::Invalid(Invalid::ObserverMissing),
            Refusal::Invalid(Invalid::ObserverIdentifierWithoutValue),
            Refusal::Invalid(Invalid::ObserverReference),
            Refusal::Invalid(Invalid::ObserverNotContained),
            Refusal::Invalid(Invalid::ObserverNotDevice),
            Refusal::Invalid(Invalid::DeviceWithoutIdentifier),
            Refusal::Invalid(Invalid::ObserverUnidentified),
            Refusal::Invalid(Invalid::AgentCount { role: "x".into() }),
            Refusal::Invalid(Invalid::AgentWithoutSor { role: "x".into() }),
            Refusal::Invalid(Invalid::AgentGlns { role: "x".into() }),
            Refusal::Invalid(Invalid::ContainedNotArray),
            Refusal::Invalid(Invalid::ContainedType),
            Refusal::Invalid(Invalid::ContainedWithoutId),
            Refusal::Invalid(Invalid::ContainedIdMalformed),
            Refusal::Invalid(Invalid::ContainedMeta),
            Refusal::Invalid(Invalid::ContainedIdTwice),
            Refusal::Invalid(Invalid::NestedContained { path: "x".into() }),
            Refusal::Invalid(Invalid::Decimal { path: "x".into() }),
            Refusal::Invalid(Invalid::NotAString { path: "x".into() }),
            Refusal::Invalid(Invalid::ResolvableReference { path: "x".into() }),
            Refusal::Invalid(Invalid::NotAnArray { path: "x".into() }),
            Refusal::Invalid(Invalid::ForeignExtension { path: "x".into() }),
            Refusal::Invalid(Invalid::RepeatedParameter { name: "x".into() }),
            Refusal::Invalid(Invalid::PageOffset),
            Refusal::Invalid(Invalid::PageParameter { name: "x".into() }),
            Refusal::Invalid(Invalid::PageHandleMissing),
            Refusal::Invalid(Invalid::PageHandleMalformed),
            Refusal::Invalid(Invalid::PageTarget),
            Refusal::Invalid(Invalid::RefusedParameter { why: "x" }),
            Refusal::Invalid(Invalid::ModifierOn { name: "x".into() }),
            Refusal::Invalid(Invalid::Modifier {
                modifier: "x".into(),
            }),
            Refusal::Invalid(Invalid::UnknownParameter { name: "x".into() }),
            Refusal::Invalid(Invalid::Chained),
            Refusal::Invalid(Invalid::ReverseChained),
            Refusal::Invalid(Invalid::MalformedParameterName { name: "x".into() }),
            Refusal::Invalid(Invalid::NotAnInteger { name: "x".into() }),
            Refusal::Invalid(Invalid::SortKey { key: "x".into() }),
            Refusal::Invalid(Invalid::Summary),
            Refusal::Invalid(Invalid::ElementsEntry { entry: "x".into() }),
            Refusal::Invalid(Invalid::Total),
            Refusal::Invalid(Invalid::Format),
            Refusal::Invalid(Invalid::NotABoolean { name: "x".into() }),
            Refusal::Invalid(Invalid::TooManyParameters { limit: 1 }),
            Refusal::Invalid(Invalid::InteractionParameter { name: "x".into() }),
            Refusal::Invalid(Invalid::FormNotUtf8),
            Refusal::Invalid(Invalid::DotSegment),
            Refusal::Invalid(Invalid::PathCharacters),
            Refusal::Invalid(Invalid::MalformedId),
            Refusal::Invalid(Invalid::ObsFold),
            Refusal::Invalid(Invalid::NoColon),
            Refusal::Invalid(Invalid::LengthAndChunked),
            Refusal::Invalid(Invalid::TransferEncoding),
            Refusal::Invalid(Invalid::ContentLength),
            Refusal::Invalid(Invalid::BodyNotAllowed { method: "x".into() }),
            Refusal::MethodNotAllowed(MethodNotAllowed::Metadata),
            Refusal::MethodNotAllowed(MethodNotAllowed::ConditionalWrite),
            Refusal::MethodNotAllowed(MethodNotAllowed::OnType { method: "x".into() }),
            Refusal::MethodNotAllowed(MethodNotAllowed::Search),
            Refusal::MethodNotAllowed(MethodNotAllowed::Write),
            Refusal::MethodNotAllowed(MethodNotAllowed::OnInstance { method: "x".into() }),
            Refusal::UnsupportedMediaType(UnsupportedMediaType::SearchForm),
            Refusal::UnsupportedMediaType(UnsupportedMediaType::Registration),
            Refusal::NotAcceptable,
            Refusal::Invalid(Invalid::CapabilitiesMode),
            Refusal::BadGateway(BadGateway::Unavailable),
            Refusal::BadGateway(BadGateway::NoResponse),
            Refusal::BadGateway(BadGateway::ResponseTooLarge),
            Refusal::BadGateway(BadGateway::Request { error: "x".into() }),
            Refusal::BadGateway(BadGateway::Status { status: 500 }),
            Refusal::BadGateway(BadGateway::ForeignResource { why: "x" }),
            Refusal::BadGateway(BadGateway::NotJson),
            Refusal::BadGateway(BadGateway::NotAResource),
            Refusal::BadGateway(BadGateway::NotASearchset),
            Refusal::BadGateway(BadGateway::MalformedSearchset),
            Refusal::BadGateway(BadGateway::OutsideEntries { why: "x" }),
            Refusal::NotFound,
            Refusal::TooLarge(1),
            Refusal::UriTooLong(1),
            Refusal::HeadersTooLarge(1),
            Refusal::GatewayTimeout,
            Refusal::AuditUnavailable,
            Refusal::BackendNonconformant,
        ];
        all.extend(
            [
                T::Missing,
                T::Malformed,
                T::Algorithm,
                T::UnknownKey,
                T::Signature,
                T::Expired,
                T::NotYetValid,
                T::IssuedInFuture,
                T::Issuer,
                T::Audience,
                T::MissingBinding,
                T::BindingMismatch,
                T::KeysUnavailable,
                T::CriticalHeader,
                T::TokenType,
                T::LifetimeTooLong,
                T::CertificateNotAccepted,
            ]
            .map(Refusal::Unauthenticated),
        );
        let mut seen = std::collections::HashMap::new();
        for r in all {
            let name = r.reason();
            assert!(
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
            assert!(!r.message().is_empty(), "{name}");
            assert_eq!(r.to_string(), r.message());
            assert!(
                include_str!("../README.md").contains(&format!("`{name}`")),
                "{name} is not in README.md's table of refusal reasons"
            );
            if let Some(earlier) = seen.insert(name, r.clone()) {
                panic!("{name} names both {earlier:?} and {r:?}");
            }
        }
        // The access-log reasons of requests refused before parsing (gateway::listener).
        for fixed in ["malformed_request", "ok"] {
            assert!(!seen.contains_key(fixed), "{fixed}");
        }
    }

    #[test]
    fn detail_stays_in_the_text() {
        let r = Refusal::Invalid(Invalid::ResolvableReference {
            path: "entity.what.reference".into(),
        });
        assert_eq!(r.reason(), "resolvable_reference");
        assert_eq!(
            r.to_string(),
            "entity.what.reference: only local references (#id) to a contained resource are \
             accepted; the FHIR server would resolve any other reference outside the caller's access"
        );
        assert_eq!(
            Refusal::Forbidden(Forbidden::MissingClaim { claim: "cvr" }).to_string(),
            "the token has no cvr claim"
        );
    }

    #[test]
    fn invalid_token_carries_rfc6750_header() {
        let h = Refusal::Unauthenticated(TokenFailure::BindingMismatch).headers();
        assert!(h[0]
            .1
            .starts_with("Bearer error=\"invalid_token\", error_description="));
    }
}

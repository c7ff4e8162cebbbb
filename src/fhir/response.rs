//! Response verification: nothing the FHIR server returns reaches the caller unless it carries
//! the caller's access label. Searchsets lose every entry that does not (fail closed: the
//! entry is dropped and counted); a read of a resource without it becomes 404. Links are
//! rewritten to the proxy's public base and paging handles are signed for the caller.

use std::borrow::Cow;

use jiter::{Jiter, Peek};
use serde::de::DeserializeSeed;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{BadGateway, Invalid, Refusal};
use crate::fhir::interaction::is_fhir_id;
use crate::fhir::labels::{Constraint, Label, LabelSystems};
use crate::fhir::paging::{self, PageSigner};
use crate::fhir::strict_json;

/// What a response is checked and rewritten against.
pub struct ResponseContext<'a> {
    /// The caller's constraint: an entry or resource must carry one of its labels.
    pub constraint: &'a Constraint,
    /// The proxy's public base URL, without a trailing slash.
    pub public_base: &'a str,
    /// The FHIR server's base URL, without a trailing slash.
    pub upstream_base: &'a str,
    /// Signs the rewritten paging links (`fhir::paging`).
    pub signer: &'a PageSigner,
    /// The caller's `Principal::binding_key`, which page handles are bound to.
    pub principal_key: &'a str,
    /// Remove `total` from every searchset (`response.drop_totals`): for a server not trusted
    /// to count only what `_security` admits.
    pub drop_totals: bool,
    /// `limits.max_count`: `_count` on a paging link is lowered to it.
    pub max_count: u32,
    /// `limits.max_uri_bytes`: a paging link (and its upstream target) longer than this is
    /// dropped rather than handed out.
    pub max_link_bytes: usize,
}

/// A searchset that passed the check, rewritten for the caller.
#[derive(Debug)]
pub struct CheckedBundle {
    /// The JSON body to answer with: links rebased and signed, withheld entries removed.
    pub body: Vec<u8>,
    /// Entries removed because they did not carry the caller's label.
    pub dropped: usize,
    /// Bundle links removed because the proxy cannot vouch for them (`rewrite_link`).
    pub links_dropped: usize,
    /// The `next` link was among them: a client sees no further page, and nothing tells it.
    pub next_dropped: bool,
}

/// Check a searchset: drop entries the caller may not see, rewrite and sign links.
///
/// Every entry is scanned once for every resource anywhere in it ([`find_resources`]); the
/// decision reads each resource's `resourceType`, `id` and `meta.security`, the entry's
/// `search.mode` and `fullUrl`. What is kept is carried through as the server wrote it (only
/// `fullUrl` and `link` are rewritten). Duplicate keys at the bundle level and in every member
/// that is read are refused; a resource in the envelope that does not pass fails the answer.
///
/// How the body is read (issue 10: one pass, no per-value allocation): jiter steps over the
/// top level and says where each member and each entry starts and ends, serde_json reads each
/// key and each entry (typed visitors that borrow every string they read) and, later, each
/// envelope member (`read_delimited`); the answer is written into one buffer sized from the
/// body. Anything that pass cannot read, and every refusal, goes to the serde_json-only path
/// (`read_plain`: each member and entry captured as raw text, each entry scanned after), so
/// refusals and their order do not depend on jiter: not JSON, not a searchset, the envelope
/// (member order), the entries, the links.
///
/// Errors: [`Refusal::BadGateway`] for an answer that is not a searchset, not JSON, malformed
/// where the check reads, or that holds a foreign resource outside its entries.
pub fn check_searchset(body: &[u8], ctx: &ResponseContext<'_>) -> Result<CheckedBundle, Refusal> {
    let not_json = || Refusal::BadGateway(BadGateway::NotJson);
    let text = std::str::from_utf8(body).map_err(|_| not_json())?;
    // The usual answer: delimited by jiter, read by serde_json, one pass. Whatever it cannot
    // read, and every refusal, is decided again by the serde_json-only path below, so that
    // what is refused and why never depend on the delimiter (see [`read_delimited`]).
    if let Some(bundle) = read_delimited(text) {
        if let Ok(checked) = decide(bundle, body.len(), ctx) {
            return Ok(checked);
        }
    }
    let bundle = read_plain(text).map_err(|()| not_json())?;
    decide(bundle, body.len(), ctx)
}

/// The searchset check proper, over a bundle read by [`read_delimited`] or [`read_plain`]
/// (the caller's order of refusals: not JSON is decided before).
fn decide(
    bundle: Bundle<'_>,
    body_len: usize,
    ctx: &ResponseContext<'_>,
) -> Result<CheckedBundle, Refusal> {
    let malformed = || Refusal::BadGateway(BadGateway::MalformedSearchset);
    let member = |name: &str| {
        bundle
            .members
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.get())
    };
    let as_string = |raw: Option<&str>| raw.and_then(|r| strict_json::string(r).ok());
    if as_string(member("resourceType")).as_deref() != Some("Bundle")
        || as_string(member("type")).as_deref() != Some("searchset")
    {
        return Err(Refusal::BadGateway(BadGateway::NotASearchset));
    }
    // Resources outside the entries (a server's own extensions, R5 `issues`, anything in
    // `link` or `meta`) have no place in a searchset's envelope unless they pass on their own.
    for (key, raw) in &bundle.members {
        if key == "entry" {
            continue;
        }
        let found = find_in(raw.get()).map_err(|_| malformed())?;
        if let Some(why) = found
            .iter()
            .find_map(|f| judge_nested(f, ctx.constraint).err())
        {
            return Err(Refusal::BadGateway(BadGateway::OutsideEntries {
                why: withheld_text(why),
            }));
        }
    }
    let mut dropped = 0;
    // What is kept: each entry's raw text, and the `fullUrl` that replaces the server's.
    let mut kept: Vec<(&str, Option<Option<String>>)> = Vec::new();
    match bundle.entries {
        None => {}
        Some(Err(())) => return Err(malformed()),
        Some(Ok(entries)) => {
            kept.reserve_exact(entries.len());
            for entry in entries {
                let scanned = match entry.scanned {
                    Some(scanned) => scanned,
                    None => scan_entry(entry.raw).map_err(|_| malformed())?,
                };
                if entry_visible(&scanned, ctx.constraint).is_err() {
                    dropped += 1;
                    continue;
                }
                let full_url = scanned.full_url;
                let rebased = full_url
                    .as_deref()
                    .and_then(|u| rebase(u, ctx.public_base, ctx.upstream_base));
                // A fullUrl outside both bases would reveal an internal address: it is removed.
                let replacement = match (&full_url, rebased) {
                    (None, _) => None,
                    (Some(old), Some(url)) if *old == url => None,
                    (Some(_), url) => Some(url),
                };
                kept.push((entry.raw, replacement));
            }
        }
    }
    let (mut links_dropped, mut next_dropped) = (0, false);
    let links = match member("link") {
        Some(raw) => {
            let mut links: Vec<Value> =
                strict_json::parse_into(raw.as_bytes()).map_err(|_| malformed())?;
            links.retain_mut(|link| {
                let rewritten = link
                    .get("url")
                    .and_then(Value::as_str)
                    .and_then(|u| rewrite_link(u, ctx));
                match rewritten {
                    Some(u) => {
                        link["url"] = Value::String(u);
                        true
                    }
                    None => {
                        links_dropped += 1;
                        next_dropped |=
                            link.get("relation").and_then(Value::as_str) == Some("next");
                        false
                    }
                }
            });
            serde_json::to_string(&links).map_err(|_| malformed())?
        }
        None => "[]".to_string(),
    };
    let mut out: Vec<u8> = Vec::with_capacity(body_len + links.len());
    out.push(b'{');
    for (key, raw) in &bundle.members {
        // The server's count included what the caller may not see.
        if key == "total" && (dropped > 0 || ctx.drop_totals) {
            continue;
        }
        if out.len() > 1 {
            out.push(b',');
        }
        serde_json::to_writer(&mut out, key.as_ref()).map_err(|_| malformed())?;
        out.push(b':');
        match key.as_ref() {
            "entry" => {
                out.push(b'[');
                for (i, (entry, replacement)) in kept.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    match replacement {
                        None => out.extend_from_slice(entry.as_bytes()),
                        Some(url) => replace_member(&mut out, entry, "fullUrl", url.as_deref())
                            .map_err(|_| malformed())?,
                    }
                }
                out.push(b']');
            }
            "link" => out.extend_from_slice(links.as_bytes()),
            _ => out.extend_from_slice(raw.get().as_bytes()),
        }
    }
    out.push(b'}');
    Ok(CheckedBundle {
        body: out,
        dropped,
        links_dropped,
        next_dropped,
    })
}

/// The top level of a searchset as read ([`read_delimited`], [`read_plain`]): every member in
/// order with its raw text (`entry` only marked: its elements are in `entries`, as raw text).
struct Bundle<'a> {
    /// (name, value) in the server's order; names decoded, values as written.
    members: Vec<(Cow<'a, str>, RawMember<'a>)>,
    /// `entry`'s elements; `Err` if `entry` is not an array; `None` without `entry`.
    entries: Option<Result<Vec<Entry<'a>>, ()>>,
}

/// One element of `entry`: its text as the server wrote it (what is written out if it is
/// kept), and its scan if the reader already made it (`read_delimited`).
struct Entry<'a> {
    raw: &'a str,
    scanned: Option<EntryScan<'a>>,
}

/// A top-level member's value: its raw text, except `entry`, which is read element by element.
#[derive(Clone, Copy)]
enum RawMember<'a> {
    Raw(&'a str),
    Entries,
}

impl<'a> RawMember<'a> {
    fn get(&self) -> &'a str {
        match self {
            RawMember::Raw(raw) => raw,
            // Never read: `entry` is skipped in the envelope and written from the entries.
            RawMember::Entries => "",
        }
    }
}

/// The serde_json-only read of a searchset's top level: the members as raw text, duplicates
/// refused ([`strict_json::object_members`]), `entry`'s elements as raw text
/// ([`strict_json::elements`]), nothing scanned yet. It decides every body the one-pass
/// reader does not accept, and every refusal. `Err` when the text is not one JSON object
/// without duplicate members (not JSON); `entry` not being an array is left to [`decide`],
/// which refuses it after the envelope.
fn read_plain(text: &str) -> Result<Bundle<'_>, ()> {
    let members = strict_json::object_members(text).map_err(|_| ())?;
    let mut entries = None;
    let members = members
        .into_iter()
        .map(|(key, raw)| {
            if key != "entry" {
                return (Cow::Owned(key), RawMember::Raw(raw.get()));
            }
            entries = Some(
                strict_json::elements(raw.get())
                    .map(|all| {
                        all.into_iter()
                            .map(|raw| Entry {
                                raw: raw.get(),
                                scanned: None,
                            })
                            .collect()
                    })
                    .map_err(|_| ()),
            );
            (Cow::Owned(key), RawMember::Entries)
        })
        .collect();
    Ok(Bundle { members, entries })
}

/// The usual searchset read in one pass over the body (issue 10), or `None` for anything it
/// does not read: jiter delimits, serde_json reads. jiter steps over the top level's
/// punctuation and whitespace (strict RFC 8259: the same four whitespace bytes as serde_json,
/// no trailing comma, no BOM, nothing after the object) and says where each member's value
/// and each entry starts and ends; serde_json decodes every key (the quoted text, so its
/// escapes, control characters and surrogates are judged by serde_json) and reads every entry
/// from where it starts to where it ends with the typed scan ([`ScannedEntry`], through a
/// `StreamDeserializer` whose `byte_offset` is where the entry ends). The envelope members'
/// values are read by serde_json later, in [`decide`], which scans every one of them.
///
/// So every byte of an accepted answer was read by serde_json except the top level's
/// `{`, `}`, `,`, `:`, `[`, `]` and whitespace, which jiter reads as strictly. `None` (jiter or
/// serde_json refused something, a duplicate member, `entry` not an array) sends the body to
/// [`read_plain`], which decides it as if this pass had not been made.
fn read_delimited(text: &str) -> Option<Bundle<'_>> {
    let bytes = text.as_bytes();
    // `jiter` reads from `at`: a fresh jiter is started at the end of each entry.
    let mut at = 0;
    let mut jiter = Jiter::new(bytes);
    let mut members: Vec<(Cow<'_, str>, RawMember<'_>)> = Vec::with_capacity(8);
    let mut entries = None;
    let mut key = jiter.next_object_bytes().ok()?;
    while let Some(name) = key {
        // The key as serde_json reads it: its quoted text, located from jiter's slice of it.
        let start = (name.as_ptr() as usize).checked_sub(bytes.as_ptr() as usize)?;
        let quoted = text.get(start.checked_sub(1)?..start.checked_add(name.len() + 1)?)?;
        #[allow(clippy::disallowed_methods)] // a string: it has no members to duplicate
        let Text(name) = serde_json::from_str(quoted).ok()?;
        if members.iter().any(|(k, _)| *k == name) {
            return None;
        }
        let peek = jiter.peek().ok()?;
        if name == "entry" {
            if peek != Peek::Array {
                return None;
            }
            let mut list = Vec::with_capacity(32);
            let mut next = jiter.known_array().ok()?;
            let mut from = at + jiter.current_index();
            while next.is_some() {
                let mut stream = serde_json::Deserializer::from_str(text.get(from..)?)
                    .into_iter::<ScannedEntry<'_>>();
                let ScannedEntry(scanned) = stream.next()?.ok()?;
                let end = from.checked_add(stream.byte_offset())?;
                list.push(Entry {
                    raw: text.get(from..end)?,
                    scanned: Some(scanned),
                });
                jiter = Jiter::new(bytes.get(end..)?);
                at = end;
                next = jiter.array_step().ok()?;
                from = at + jiter.current_index();
            }
            // Past the `]`: the rest of the object.
            jiter = Jiter::new(bytes.get(from..)?);
            at = from;
            entries = Some(Ok(list));
            members.push((name, RawMember::Entries));
        } else {
            let from = at + jiter.current_index();
            jiter.known_skip(peek).ok()?;
            let raw = text.get(from..at + jiter.current_index())?;
            members.push((name, RawMember::Raw(raw)));
        }
        key = jiter.next_key_bytes().ok()?;
    }
    jiter.finish().ok()?;
    Some(Bundle { members, entries })
}

/// A JSON string as read: borrowed from the body unless it holds escapes (then decoded). Any
/// other JSON value is an error, as for `String`.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> serde::de::Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(TextVisitor)
    }
}

/// Read one JSON string value into `slot`, refusing a second one (`what` names it).
fn read_once<'de, A: serde::de::MapAccess<'de>>(
    map: &mut A,
    slot: &mut Option<Cow<'de, str>>,
    what: &str,
) -> Result<(), A::Error> {
    let Text(value) = map.next_value()?;
    if slot.replace(value).is_some() {
        return Err(serde::de::Error::custom(format_args!("duplicate {what}")));
    }
    Ok(())
}

/// What the check reads of one searchset entry, from one pass over its text.
#[derive(Debug, Default)]
struct EntryScan<'a> {
    /// `resource`, scanned (an object, or the entry is malformed).
    resource: Option<Scanned<'a>>,
    /// `search.mode`.
    mode: Option<Cow<'a, str>>,
    /// `fullUrl`.
    full_url: Option<Cow<'a, str>>,
    /// Resources anywhere else in the entry (`search`, `response.outcome`, extensions).
    elsewhere: Vec<Res<'a>>,
}

/// Scan one entry in one pass. Duplicate `resource`, `search`, `mode` and `fullUrl` members
/// are refused (a client might read the other one); `resource` and `search` must be objects
/// and `fullUrl`/`mode` strings. Any other member is scanned for resources, duplicates and all.
fn scan_entry(text: &str) -> Result<EntryScan<'_>, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let scanned =
        serde::Deserializer::deserialize_map(&mut de, EntryVisitor).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(scanned)
}

/// An entry, scanned as [`scan_entry`] does, as a value serde_json can read from a stream
/// (`read_delimited`).
struct ScannedEntry<'a>(EntryScan<'a>);

impl<'de> Deserialize<'de> for ScannedEntry<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(EntryVisitor).map(ScannedEntry)
    }
}

/// [`scan_entry`]'s visitor.
struct EntryVisitor;

impl<'de> serde::de::Visitor<'de> for EntryVisitor {
    type Value = EntryScan<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a Bundle entry object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<EntryScan<'de>, A::Error> {
        use serde::de::Error;
        let mut out = EntryScan::default();
        let (mut saw_search, mut saw_resource) = (false, false);
        while let Some(Text(key)) = map.next_key()? {
            match key.as_ref() {
                "resource" => {
                    if std::mem::replace(&mut saw_resource, true) {
                        return Err(A::Error::custom("duplicate entry.resource"));
                    }
                    out.resource = Some(map.next_value_seed(ObjectScanSeed)?);
                }
                "search" => {
                    if std::mem::replace(&mut saw_search, true) {
                        return Err(A::Error::custom("duplicate entry.search"));
                    }
                    out.mode = map.next_value_seed(SearchSeed(&mut out.elsewhere))?;
                }
                "fullUrl" => read_once(&mut map, &mut out.full_url, "entry.fullUrl")?,
                _ => map.next_value_seed(ScanSeed(&mut out.elsewhere))?,
            }
        }
        Ok(out)
    }
}

/// One JSON object as a whole: a resource, or what it holds.
fn object<'de, A: serde::de::MapAccess<'de>>(map: A) -> Result<Scanned<'de>, A::Error> {
    let mut found = Vec::new();
    Ok(match scan_object(map, &mut found)? {
        Some(resource) => Scanned::Resource(resource),
        None => Scanned::Other(found),
    })
}

/// A value that must be a JSON object, scanned like any other.
struct ObjectScanSeed;

impl<'de> DeserializeSeed<'de> for ObjectScanSeed {
    type Value = Scanned<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Scanned<'de>, D::Error> {
        struct ObjectVisitor;
        impl<'de> serde::de::Visitor<'de> for ObjectVisitor {
            type Value = Scanned<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Scanned<'de>, A::Error> {
                object(map)
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

/// `entry.search`: an object; `mode` read (a string, once), everything else scanned (what it
/// holds goes to the entry's resources found elsewhere).
struct SearchSeed<'s, 'de>(&'s mut Vec<Res<'de>>);

impl<'de> DeserializeSeed<'de> for SearchSeed<'_, 'de> {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct SearchVisitor<'s, 'de>(&'s mut Vec<Res<'de>>);
        impl<'de> serde::de::Visitor<'de> for SearchVisitor<'_, 'de> {
            type Value = Option<Cow<'de, str>>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a Bundle entry search object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut mode = None;
                while let Some(Text(key)) = map.next_key()? {
                    if key == "mode" {
                        read_once(&mut map, &mut mode, "entry.search.mode")?;
                    } else {
                        map.next_value_seed(ScanSeed(&mut *self.0))?;
                    }
                }
                Ok(mode)
            }
        }
        d.deserialize_map(SearchVisitor(self.0))
    }
}

/// Decide one scanned searchset entry: `Ok(())` shows it, `Err` withholds it.
///
/// Shown: an AuditEvent with the caller's label and nothing foreign inside, or the server's
/// own OperationOutcome (`search.mode = outcome`) with nothing foreign inside; every resource
/// elsewhere in the entry (`response.outcome`, extensions) must pass as nested.
fn entry_visible(entry: &EntryScan<'_>, constraint: &Constraint) -> Result<(), Withheld> {
    entry
        .elsewhere
        .iter()
        .try_for_each(|f| judge_nested(f, constraint))?;
    let Some(Scanned::Resource(resource)) = &entry.resource else {
        return Err(Withheld::Foreign("an entry without a resource"));
    };
    match resource.resource_type.as_ref() {
        "AuditEvent" => judge_record(resource, constraint),
        "OperationOutcome" if entry.mode.as_deref() == Some("outcome") => resource
            .nested
            .iter()
            .try_for_each(|n| judge_nested(n, constraint)),
        _ => Err(Withheld::Foreign("an entry that is not an AuditEvent")),
    }
}

/// Words for a log line or a 502's diagnostics.
pub(crate) fn withheld_text(w: Withheld) -> &'static str {
    match w {
        Withheld::NotCallers => "an AuditEvent without the caller's label",
        Withheld::Foreign(why) => why,
    }
}

/// Write a JSON object to `out` with one member's value replaced by a string, or removed
/// (`None`): the members re-emitted in order, names re-encoded, every other value as written.
/// Any duplicate member name is refused. Only for the rare entry whose `fullUrl` changes.
fn replace_member(
    out: &mut Vec<u8>,
    object: &str,
    name: &str,
    value: Option<&str>,
) -> Result<(), String> {
    let members = strict_json::object_members(object)?;
    out.push(b'{');
    let mut first = true;
    for (k, raw) in &members {
        let replaced = k == name;
        if replaced && value.is_none() {
            continue;
        }
        if !std::mem::replace(&mut first, false) {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, k).map_err(|e| e.to_string())?;
        out.push(b':');
        match value {
            Some(value) if replaced => {
                serde_json::to_writer(&mut *out, value).map_err(|e| e.to_string())?
            }
            _ => out.extend_from_slice(raw.get().as_bytes()),
        }
    }
    out.push(b'}');
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Every resource anywhere in an answer
// ---------------------------------------------------------------------------------------------

/// A resource found somewhere in an answer, with what the check decides on. Every JSON object
/// with a `resourceType` member is a resource (FHIR JSON gives no other object that member).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// `resourceType`.
    pub resource_type: String,
    /// `id`, if present.
    pub id: Option<String>,
    /// (system, code) of the resource's own `meta.security` codings that carry both.
    pub security: Vec<(String, String)>,
    /// Resources anywhere inside this one: `contained`, Bundle entries, resources inside
    /// OperationOutcome or Parameters, or anywhere else a misbehaving server put them.
    pub nested: Vec<Found>,
}

/// [`Found`] as the check reads it: strings borrowed from the body where they hold no
/// escapes, so the scan allocates only for what it finds, never per value or member name.
#[derive(Debug, Default)]
struct Res<'a> {
    resource_type: Cow<'a, str>,
    id: Option<Cow<'a, str>>,
    security: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    nested: Vec<Res<'a>>,
}

impl From<Res<'_>> for Found {
    fn from(r: Res<'_>) -> Found {
        Found {
            resource_type: r.resource_type.into_owned(),
            id: r.id.map(Cow::into_owned),
            security: r
                .security
                .into_iter()
                .map(|(s, c)| (s.into_owned(), c.into_owned()))
                .collect(),
            nested: r.nested.into_iter().map(Found::from).collect(),
        }
    }
}

/// What one JSON value is: a resource, or something holding zero or more resources.
#[derive(Debug)]
enum Scanned<'a> {
    Resource(Res<'a>),
    Other(Vec<Res<'a>>),
}

impl<'a> Scanned<'a> {
    /// Add what this value is or holds to `found` (no allocation for a value holding nothing).
    fn push_into(self, found: &mut Vec<Res<'a>>) {
        match self {
            Scanned::Resource(f) => found.push(f),
            Scanned::Other(v) if v.is_empty() => {}
            Scanned::Other(v) if found.is_empty() => *found = v,
            Scanned::Other(mut v) => found.append(&mut v),
        }
    }

    fn into_found(self) -> Vec<Res<'a>> {
        let mut found = Vec::new();
        self.push_into(&mut found);
        found
    }
}

/// Scan a JSON text for resources in one pass, without building a `Value`. Duplicate
/// `resourceType`, `id`, `meta`, `security`, `system` and `code` members are refused (a client
/// might read the other one), `meta` must be an object and `meta.security` an array of
/// objects; serde_json's recursion limit bounds the depth.
fn scan(text: &str) -> Result<Scanned<'_>, String> {
    /// The top-level value: an object is returned as read (a resource or not), anything else
    /// as what it holds.
    struct TopVisitor;
    impl<'de> serde::de::Visitor<'de> for TopVisitor {
        type Value = Scanned<'de>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Scanned<'de>, E> {
            Ok(Scanned::Other(Vec::new()))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Scanned<'de>, E> {
            Ok(Scanned::Other(Vec::new()))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Scanned<'de>, E> {
            Ok(Scanned::Other(Vec::new()))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Scanned<'de>, E> {
            Ok(Scanned::Other(Vec::new()))
        }
        fn visit_str<E>(self, _: &str) -> Result<Scanned<'de>, E> {
            Ok(Scanned::Other(Vec::new()))
        }
        fn visit_unit<E>(self) -> Result<Scanned<'de>, E> {
            Ok(Scanned::Other(Vec::new()))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Scanned<'de>, A::Error> {
            let mut found = Vec::new();
            ScanVisitor(&mut found).visit_seq(seq)?;
            Ok(Scanned::Other(found))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Scanned<'de>, A::Error> {
            object(map)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let scanned =
        serde::Deserializer::deserialize_any(&mut de, TopVisitor).map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(scanned)
}

/// [`find_resources`], borrowing from `text`.
fn find_in(text: &str) -> Result<Vec<Res<'_>>, String> {
    scan(text).map(Scanned::into_found)
}

/// The resources found anywhere in `text` (a resource itself is one entry).
///
/// Errors: the text is not JSON, or a member the check decides on is duplicated or of the
/// wrong shape.
pub fn find_resources(text: &str) -> Result<Vec<Found>, String> {
    find_in(text).map(|found| found.into_iter().map(Found::from).collect())
}

/// Member names the scan treats specially; matched without allocating.
enum Key {
    ResourceType,
    Id,
    Meta,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "resourceType" => Key::ResourceType,
                    "id" => Key::Id,
                    "meta" => Key::Meta,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Scans any JSON value, adding every resource it is or holds to the sink, in document order.
struct ScanSeed<'s, 'de>(&'s mut Vec<Res<'de>>);

impl<'de> DeserializeSeed<'de> for ScanSeed<'_, 'de> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(ScanVisitor(self.0))
    }
}

struct ScanVisitor<'s, 'de>(&'s mut Vec<Res<'de>>);

impl<'de> serde::de::Visitor<'de> for ScanVisitor<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(ScanSeed(&mut *self.0))?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        if let Some(resource) = scan_object(map, &mut *self.0)? {
            self.0.push(resource);
        }
        Ok(())
    }
}

/// One JSON object. If it has `resourceType` it is a resource and returned, what it holds
/// being its `nested`; else what it holds is added to `found`, in document order.
fn scan_object<'de, A: serde::de::MapAccess<'de>>(
    mut map: A,
    found: &mut Vec<Res<'de>>,
) -> Result<Option<Res<'de>>, A::Error> {
    use serde::de::Error;
    // What this object holds goes straight to `found` and is taken back if it is a resource:
    // no list of its own for the many objects that hold nothing.
    let start = found.len();
    let mut resource_type = None;
    let mut id: Option<Cow<'de, str>> = None;
    let mut meta: Option<MetaScan<'de>> = None;
    while let Some(key) = map.next_key::<Key>()? {
        match key {
            Key::ResourceType => read_once(&mut map, &mut resource_type, "resourceType")?,
            // Resource ids are strings; any other value is scanned like any member.
            Key::Id => {
                if let Some(s) = map.next_value_seed(IdSeed(&mut *found))? {
                    if id.replace(s).is_some() {
                        return Err(A::Error::custom("duplicate id"));
                    }
                }
            }
            Key::Meta => {
                if meta.replace(map.next_value_seed(MetaSeed)?).is_some() {
                    return Err(A::Error::custom("duplicate meta"));
                }
            }
            Key::Other => map.next_value_seed(ScanSeed(&mut *found))?,
        }
    }
    // What `meta` holds comes after everything else the object holds (the order the
    // reasons for a refusal are looked for in).
    let (security, in_meta) = meta.unwrap_or_default();
    found.extend(in_meta);
    Ok(resource_type.map(|resource_type| Res {
        resource_type,
        id,
        security,
        nested: found.split_off(start),
    }))
}

/// What `meta` holds for the check: its security codings and any resources inside it.
type MetaScan<'a> = (Vec<(Cow<'a, str>, Cow<'a, str>)>, Vec<Res<'a>>);

/// `meta`: an object; its `security` is read, everything else scanned for resources.
struct MetaSeed;

impl<'de> DeserializeSeed<'de> for MetaSeed {
    type Value = MetaScan<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct MetaVisitor;
        impl<'de> serde::de::Visitor<'de> for MetaVisitor {
            type Value = MetaScan<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a meta object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                use serde::de::Error;
                let mut security: Option<MetaScan<'de>> = None;
                let mut inside = Vec::new();
                while let Some(Text(key)) = map.next_key()? {
                    if key == "security" {
                        if security
                            .replace(map.next_value_seed(SecuritySeed)?)
                            .is_some()
                        {
                            return Err(A::Error::custom("duplicate meta.security"));
                        }
                    } else {
                        map.next_value_seed(ScanSeed(&mut inside))?;
                    }
                }
                let (codings, in_codings) = security.unwrap_or_default();
                Scanned::Other(in_codings).push_into(&mut inside);
                Ok((codings, inside))
            }
        }
        d.deserialize_map(MetaVisitor)
    }
}

/// `meta.security`: an array of Coding objects. `system` and `code` are read (strings, once
/// each); every other member of a Coding is scanned for resources like anything else.
struct SecuritySeed;

impl<'de> DeserializeSeed<'de> for SecuritySeed {
    type Value = MetaScan<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct SecurityVisitor;
        impl<'de> serde::de::Visitor<'de> for SecurityVisitor {
            type Value = MetaScan<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of Codings")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut codings = Vec::new();
                let mut inside = Vec::new();
                while let Some(coding) = seq.next_element_seed(CodingSeed(&mut inside))? {
                    codings.extend(coding);
                }
                Ok((codings, inside))
            }
        }
        d.deserialize_seq(SecurityVisitor)
    }
}

/// One Coding of `meta.security`: `(system, code)` if it has both; the resources found in its
/// other members go to the sink.
struct CodingSeed<'s, 'de>(&'s mut Vec<Res<'de>>);

impl<'de> DeserializeSeed<'de> for CodingSeed<'_, 'de> {
    type Value = Option<(Cow<'de, str>, Cow<'de, str>)>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct CodingVisitor<'s, 'de>(&'s mut Vec<Res<'de>>);
        impl<'de> serde::de::Visitor<'de> for CodingVisitor<'_, 'de> {
            type Value = Option<(Cow<'de, str>, Cow<'de, str>)>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a Coding object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut system = None;
                let mut code = None;
                while let Some(Text(key)) = map.next_key()? {
                    match key.as_ref() {
                        "system" => read_once(&mut map, &mut system, "Coding.system")?,
                        "code" => read_once(&mut map, &mut code, "Coding.code")?,
                        _ => map.next_value_seed(ScanSeed(&mut *self.0))?,
                    }
                }
                Ok(system.zip(code))
            }
        }
        d.deserialize_map(CodingVisitor(self.0))
    }
}

/// A member named `id`: a string (a resource's or an element's id) is returned; anything
/// else is scanned like any member, what it holds going to the sink.
struct IdSeed<'s, 'de>(&'s mut Vec<Res<'de>>);

impl<'de> DeserializeSeed<'de> for IdSeed<'_, 'de> {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        struct IdVisitor<'s, 'de>(&'s mut Vec<Res<'de>>);
        impl<'de> serde::de::Visitor<'de> for IdVisitor<'_, 'de> {
            type Value = Option<Cow<'de, str>>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Some(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Some(Cow::Owned(v.to_string())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Self::Value, A::Error> {
                ScanVisitor(self.0).visit_seq(seq).map(|()| None)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                ScanVisitor(self.0).visit_map(map).map(|()| None)
            }
        }
        d.deserialize_any(IdVisitor(self.0))
    }
}

/// Why an answer, or one searchset entry, is withheld from the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withheld {
    /// An AuditEvent without the caller's label: a read of someone else's record (normal,
    /// answered 404), or, in a searchset, a server that ignored the constraint.
    NotCallers,
    /// Something that never belongs in this answer (another resource type, a foreign
    /// resource nested inside, a create answer that is not the created record): the server
    /// misbehaves. Fails closed and is counted as an alarm.
    Foreign(&'static str),
}

/// Resource types that carry no record data of their own and may wrap other resources.
const ENVELOPES: &[&str] = &["Bundle", "OperationOutcome", "Parameters"];

/// An AuditEvent in record position (a searchset entry, a read): it must carry one of the
/// caller's labels, and everything inside it must be a part of that record.
fn judge_record(f: &Res<'_>, constraint: &Constraint) -> Result<(), Withheld> {
    if f.resource_type != "AuditEvent" {
        return Err(Withheld::Foreign("a resource type other than AuditEvent"));
    }
    let codings = f.security.iter().map(|(s, c)| (s.as_ref(), c.as_ref()));
    if !constraint.admits_codings(codings) {
        return Err(Withheld::NotCallers);
    }
    f.nested.iter().try_for_each(|n| judge_part(n, constraint))
}

/// A resource inside one of the caller's AuditEvents: a contained resource of a type a
/// registration may hold, or an AuditEvent / envelope that passes on its own.
fn judge_part(f: &Res<'_>, constraint: &Constraint) -> Result<(), Withheld> {
    if crate::fhir::inert::ALLOWED_CONTAINED_TYPES.contains(&f.resource_type.as_ref()) {
        return f
            .nested
            .iter()
            .try_for_each(|n| judge_nested(n, constraint));
    }
    judge_nested(f, constraint)
}

/// A resource anywhere outside record position (inside an OperationOutcome, a Parameters, a
/// nested Bundle, a Bundle's envelope): an AuditEvent must carry the caller's label, envelopes
/// are looked into, anything else is foreign.
fn judge_nested(f: &Res<'_>, constraint: &Constraint) -> Result<(), Withheld> {
    match f.resource_type.as_ref() {
        "AuditEvent" => judge_record(f, constraint).map_err(|e| match e {
            Withheld::NotCallers => Withheld::Foreign("another caller's AuditEvent nested inside"),
            foreign => foreign,
        }),
        t if ENVELOPES.contains(&t) => f
            .nested
            .iter()
            .try_for_each(|n| judge_nested(n, constraint)),
        _ => Err(Withheld::Foreign(
            "a resource with record data nested inside",
        )),
    }
}

/// Outcome of checking a single resource (read, vread).
#[derive(Debug, PartialEq, Eq)]
pub enum ResourceCheck {
    /// The caller's: answer it.
    Visible,
    /// Present but not the caller's: answer 404, never 403.
    Hidden,
    /// The server answered something that is not the caller's record (502, alarm).
    Foreign(&'static str),
}

impl From<Result<(), Withheld>> for ResourceCheck {
    fn from(r: Result<(), Withheld>) -> Self {
        match r {
            Ok(()) => ResourceCheck::Visible,
            Err(Withheld::NotCallers) => ResourceCheck::Hidden,
            Err(Withheld::Foreign(why)) => ResourceCheck::Foreign(why),
        }
    }
}

/// Check the answer to a read or vread of `AuditEvent/{requested_id}`: one AuditEvent with
/// that id and one of the caller's labels, and nothing foreign inside it.
///
/// Errors: [`Refusal::BadGateway`] if the body is not JSON or malformed where the check reads.
pub fn check_resource(
    body: &[u8],
    constraint: &Constraint,
    requested_id: &str,
) -> Result<ResourceCheck, Refusal> {
    let f = single_resource(body)?;
    if f.resource_type == "AuditEvent" && f.id.as_deref() != Some(requested_id) {
        return Ok(ResourceCheck::Foreign(
            "a resource other than the one asked for",
        ));
    }
    Ok(judge_record(&f, constraint).into())
}

fn single_resource(body: &[u8]) -> Result<Res<'_>, Refusal> {
    let text = std::str::from_utf8(body).map_err(|_| not_json())?;
    match scan(text).map_err(|_| not_json())? {
        Scanned::Resource(f) => Ok(f),
        Scanned::Other(_) => Err(Refusal::BadGateway(BadGateway::NotAResource)),
    }
}

fn not_json() -> Refusal {
    Refusal::BadGateway(BadGateway::NotJson)
}

/// What a create answer is checked against: the record just sent.
pub struct CreatedContext<'a> {
    /// The creating station's constraint (its device label).
    pub constraint: &'a Constraint,
    /// Every label the proxy stamped on the registration.
    pub stamped: &'a [Label],
    /// The configured label systems (reserved systems may not come back unstamped).
    pub systems: &'a LabelSystems,
    /// The proxy's public base URL, without a trailing slash.
    pub public_base: &'a str,
    /// The FHIR server's base URL, without a trailing slash.
    pub upstream_base: &'a str,
}

/// Check the answer to a create: `Location` must be `{base}/AuditEvent/{id}[/_history/{vid}]`
/// on the server's or the proxy's base, and a body, if any, must be that AuditEvent carrying
/// exactly the labels the proxy stamped (so it is the record just created, not another), with
/// nothing foreign inside. Returns the rebased `Location` to hand out.
///
/// FHIR RESTful API, create (<https://hl7.org/fhir/R4/http.html#create>).
pub fn check_created(
    body: &[u8],
    location: Option<&str>,
    ctx: &CreatedContext<'_>,
) -> Result<String, Withheld> {
    let location = location
        .and_then(|l| rebase(l, ctx.public_base, ctx.upstream_base))
        .ok_or(Withheld::Foreign(
            "a create answer without a Location on the FHIR base",
        ))?;
    let id = location
        .strip_prefix(ctx.public_base)
        .and_then(|rest| rest.strip_prefix("/AuditEvent/"))
        .and_then(|rest| match rest.split_once("/_history/") {
            Some((id, vid)) if is_fhir_id(vid) => Some(id),
            Some(_) => None,
            None => Some(rest),
        })
        .filter(|id| is_fhir_id(id))
        .ok_or(Withheld::Foreign(
            "a create answer whose Location is not an AuditEvent",
        ))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(location);
    }
    let f = single_resource(body)
        .map_err(|_| Withheld::Foreign("a create answer that is not a FHIR resource"))?;
    if f.id.as_deref() != Some(id) {
        return Err(Withheld::Foreign(
            "a create answer that is not the created resource",
        ));
    }
    judge_record(&f, ctx.constraint).map_err(|e| match e {
        Withheld::NotCallers => Withheld::Foreign("a create answer without the station's label"),
        foreign => foreign,
    })?;
    let mut labels: Vec<Label> = f
        .security
        .iter()
        .filter(|(system, _)| ctx.systems.is_reserved(system))
        .map(|(system, code)| Label {
            system: system.to_string(),
            code: code.to_string(),
        })
        .collect();
    labels.sort();
    labels.dedup();
    let mut stamped = ctx.stamped.to_vec();
    stamped.sort();
    stamped.dedup();
    if labels != stamped {
        return Err(Withheld::Foreign(
            "a create answer whose labels are not the ones stamped",
        ));
    }
    Ok(location)
}

/// True for the media types a FHIR JSON answer may have: `application/fhir+json` and
/// `application/json` (type and subtype case-insensitive, RFC 9110 §8.3.1), parameters
/// ignored. Anything else (XML, HTML, missing) fails closed.
pub fn is_fhir_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        crate::fhir::interaction::is_media_type(ct, crate::fhir::interaction::FHIR_JSON_TYPES)
    })
}

/// Non-success answers from the FHIR server: "not there" stays 404 (410 too: a deleted
/// record's existence is nobody's business); the server's own validation outcome (400, 422)
/// for a caller's request is passed on, at most `MAX_DIAGNOSTICS` bytes of its first issue,
/// since it speaks of the caller's own body or query; a conflict (409, 412) speaks of what
/// else is stored and is answered without the server's words; anything else is the server's
/// failure (502, fixed text).
///
/// `status` and `body` are the FHIR server's non-2xx answer.
pub fn upstream_refusal(status: u16, body: &[u8]) -> Refusal {
    match status {
        404 | 410 => Refusal::NotFound,
        409 | 412 => Refusal::Invalid(Invalid::UpstreamConflict),
        400 | 422 => {
            let diagnostics = strict_json::parse(body)
                .ok()
                .filter(|v| {
                    v.get("resourceType").and_then(|t| t.as_str()) == Some("OperationOutcome")
                })
                .and_then(|v| {
                    v.pointer("/issue/0/diagnostics")
                        .and_then(|d| d.as_str())
                        .map(|d| d.chars().take(MAX_DIAGNOSTICS).collect::<String>())
                });
            Refusal::Invalid(Invalid::UpstreamRejected { diagnostics })
        }
        _ => Refusal::BadGateway(BadGateway::Status { status }),
    }
}

/// Longest piece of the FHIR server's own diagnostics passed on to a caller, in characters.
const MAX_DIAGNOSTICS: usize = 500;

/// Map a URL under the server's or the proxy's base onto the proxy's base. Anything else is
/// not ours to hand out.
pub(crate) fn rebase(url: &str, public_base: &str, upstream_base: &str) -> Option<String> {
    let rest = [public_base, upstream_base].iter().find_map(|base| {
        url.strip_prefix(base)
            .filter(|r| r.is_empty() || r.starts_with(['/', '?']))
    })?;
    Some(format!("{public_base}{rest}"))
}

/// Rewrite a Bundle link (any relation: `self`, `next`, `previous`, `first`, `last`): a
/// link the proxy can vouch for (`paging::target_of_link`: under the FHIR server's or the
/// proxy's base, a `_getpages` handle or a search on AuditEvent carrying exactly the
/// caller's constraint) becomes a link signed for the caller; anything else is `None` and
/// is dropped, never passed on unsigned.
pub(crate) fn rewrite_link(url: &str, ctx: &ResponseContext<'_>) -> Option<String> {
    let relative = [ctx.public_base, ctx.upstream_base]
        .iter()
        .find_map(|base| {
            url.strip_prefix(base)
                .filter(|r| r.is_empty() || r.starts_with(['/', '?']))
        })?;
    let target = paging::target_of_link(relative, ctx.constraint, ctx.max_count)?;
    // The path `gateway::upstream` puts before the target (the base URL is checked at load).
    let base_path = url::Url::parse(ctx.upstream_base).ok()?;
    paging::signed_link(
        ctx.public_base,
        &target,
        ctx.constraint,
        ctx.signer,
        ctx.principal_key,
        base_path.path().trim_end_matches('/'),
        ctx.max_link_bytes,
    )
}

#[cfg(test)]
mod reference;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::principal::{Principal, Station};
    use crate::auth::scope::Grants;
    use crate::cvr_directory::CvrDirectory;
    use crate::fhir::labels::LabelSystems;
    use serde_json::json;

    fn systems() -> LabelSystems {
        LabelSystems::default()
    }

    fn constraint() -> Constraint {
        let p = Principal::Station(Station {
            device_id: "dev-1".into(),
            org: None,
            grants: Grants::default(),
        });
        Constraint::for_principal(&p, &systems(), &CvrDirectory::default()).unwrap()
    }

    fn audit(id: &str, device: &str) -> Value {
        json!({"fullUrl": format!("http://hapi:8080/fhir/AuditEvent/{id}"),
               "resource": {"resourceType": "AuditEvent", "id": id,
                            "meta": {"security": [{"system": "urn:eds-proxy:label:device-id", "code": device}]}}})
    }

    fn with_ctx<T>(f: impl FnOnce(&ResponseContext<'_>) -> T) -> T {
        let c = constraint();
        let signer = PageSigner::new(vec![7; 32]);
        let ctx = ResponseContext {
            constraint: &c,
            public_base: "https://proxy:8443/fhir",
            upstream_base: "http://hapi:8080/fhir",
            signer: &signer,
            principal_key: "station\0dev-1",
            drop_totals: false,
            max_count: 50,
            max_link_bytes: 8192,
        };
        f(&ctx)
    }

    #[test]
    fn foreign_entries_are_dropped_and_counted() {
        let bundle = json!({"resourceType": "Bundle", "type": "searchset", "total": 3,
            "entry": [audit("a", "dev-1"), audit("b", "dev-2"),
                      {"resource": {"resourceType": "AuditEvent", "id": "c"}},
                      {"resource": {"resourceType": "Patient", "id": "p", "meta": {"security": [{"system": "urn:eds-proxy:label:device-id", "code": "dev-1"}]}}}]});
        let out =
            with_ctx(|ctx| check_searchset(&serde_json::to_vec(&bundle).unwrap(), ctx).unwrap());
        assert_eq!(out.dropped, 3);
        let v: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(v["entry"].as_array().unwrap().len(), 1);
        assert_eq!(v["entry"][0]["resource"]["id"], "a");
        assert_eq!(
            v["entry"][0]["fullUrl"],
            "https://proxy:8443/fhir/AuditEvent/a"
        );
        assert!(v.get("total").is_none());
    }

    /// Issue 13 item 3: any status the proxy does not pass on (every 5xx, and any other
    /// unmapped one) is the same 502 with the same fixed body, whatever the server said.
    #[test]
    fn unmapped_statuses_are_one_fixed_502() {
        let fixed = Refusal::BadGateway(BadGateway::Status { status: 500 }).outcome_json();
        let said = br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception","diagnostics":"AuditEvent/x of dev-2 exists"}]}"#;
        for status in (500..=599).chain([300, 301, 302, 304, 401, 403, 405, 406, 429]) {
            for body in [&said[..], b"", b"<html>"] {
                let r = upstream_refusal(status, body);
                assert_eq!(r.status(), 502, "{status}");
                assert_eq!(r.reason(), "upstream_status", "{status}");
                assert_eq!(r.outcome_json(), fixed, "{status}");
            }
        }
    }

    #[test]
    fn paging_links_are_signed_and_constraint_stripped() {
        let bundle = json!({"resourceType": "Bundle", "type": "searchset",
        "link": [
            {"relation": "self", "url": "https://proxy:8443/fhir/AuditEvent?_security=urn%3Aeds-proxy%3Alabel%3Adevice-id%7Cdev-1&message-id=x"},
            {"relation": "next", "url": "https://proxy:8443/fhir?_getpages=abc&_getpagesoffset=10&_count=10&_bundletype=searchset&_elements=x"},
            {"relation": "previous", "url": "http://hapi:8080/fhir?_getpages=abc&_getpagesoffset=0&_count=10&_bundletype=searchset"},
            {"relation": "last", "url": "http://hapi:8080/fhir/AuditEvent?message-id=x&_page=9"},
            {"relation": "other", "url": "https://evil.example/fhir?_getpages=abc"}
        ]});
        let (out, self_sig, next_sig, prev_sig) = with_ctx(|ctx| {
            (
                check_searchset(&serde_json::to_vec(&bundle).unwrap(), ctx).unwrap(),
                ctx.signer.sign(
                    ctx.principal_key,
                    ctx.constraint,
                    "AuditEvent?_security=urn%3Aeds-proxy%3Alabel%3Adevice-id%7Cdev-1&message-id=x",
                ),
                ctx.signer.sign(
                    ctx.principal_key,
                    ctx.constraint,
                    "?_getpages=abc&_getpagesoffset=10&_count=10&_bundletype=searchset",
                ),
                ctx.signer.sign(
                    ctx.principal_key,
                    ctx.constraint,
                    "?_getpages=abc&_getpagesoffset=0&_count=10&_bundletype=searchset",
                ),
            )
        });
        let v: Value = serde_json::from_slice(&out.body).unwrap();
        let links = v["link"].as_array().unwrap();
        // `next` loses `_elements` (not a paging parameter; HAPI's stored search keeps the
        // constraint); the constraint-less `last` and the foreign host are dropped.
        assert_eq!(
            links,
            &vec![
                json!({"relation": "self", "url": format!("https://proxy:8443/fhir?_eds_page=bWVzc2FnZS1pZD14&_eds_sig={self_sig}")}),
                json!({"relation": "next", "url": format!("https://proxy:8443/fhir?_getpages=abc&_getpagesoffset=10&_count=10&_bundletype=searchset&_eds_sig={next_sig}")}),
                json!({"relation": "previous", "url": format!("https://proxy:8443/fhir?_getpages=abc&_getpagesoffset=0&_count=10&_bundletype=searchset&_eds_sig={prev_sig}")}),
            ]
        );
        // Counted for the operator (a dropped `next` silently ends a client's paging).
        assert_eq!((out.links_dropped, out.next_dropped), (2, false));
        let next_elsewhere = json!({"resourceType": "Bundle", "type": "searchset", "link": [
            {"relation": "next", "url": "http://hapi-behind-another-name:8080/fhir?_getpages=abc"}]});
        let out = with_ctx(|ctx| {
            check_searchset(&serde_json::to_vec(&next_elsewhere).unwrap(), ctx).unwrap()
        });
        assert_eq!((out.links_dropped, out.next_dropped), (1, true));
    }

    #[test]
    fn non_searchset_or_non_json_fails_closed() {
        with_ctx(|ctx| {
            let gateway = |b: BadGateway| Err(Refusal::BadGateway(b));
            assert_eq!(
                check_searchset(b"<Bundle/>", ctx).map(|c| c.dropped),
                gateway(BadGateway::NotJson)
            );
            assert_eq!(
                check_searchset(br#"{"resourceType":"Bundle","type":"batch-response"}"#, ctx)
                    .map(|c| c.dropped),
                gateway(BadGateway::NotASearchset)
            );
            assert_eq!(
                check_searchset(
                    br#"{"resourceType":"Bundle","type":"searchset","entry":{}}"#,
                    ctx
                )
                .map(|c| c.dropped),
                gateway(BadGateway::MalformedSearchset)
            );
        });
    }

    #[test]
    fn ambiguous_entries_fail_closed() {
        with_ctx(|ctx| {
            // Two `meta` keys: a client might read the other one.
            let dup_meta = br#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"AuditEvent","meta":{"security":[{"system":"urn:eds-proxy:label:device-id","code":"dev-1"}]},"meta":{}}}]}"#;
            let malformed = Err(Refusal::BadGateway(BadGateway::MalformedSearchset));
            assert_eq!(check_searchset(dup_meta, ctx).map(|c| c.dropped), malformed);
            let dup_resource = br#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"AuditEvent"},"resource":{}}]}"#;
            assert_eq!(
                check_searchset(dup_resource, ctx).map(|c| c.dropped),
                malformed
            );
            // A duplicate member of the bundle itself: not even a JSON object to the check.
            let dup_entry =
                br#"{"resourceType":"Bundle","type":"searchset","entry":[],"entry":[]}"#;
            assert_eq!(
                check_searchset(dup_entry, ctx).map(|c| c.dropped),
                Err(Refusal::BadGateway(BadGateway::NotJson))
            );
            let security_object = br#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"AuditEvent","meta":{"security":{"system":"urn:eds-proxy:label:device-id","code":"dev-1"}}}}]}"#;
            assert_eq!(
                check_searchset(security_object, ctx).map(|c| c.dropped),
                malformed
            );
        });
    }

    #[test]
    fn unknown_full_urls_are_removed() {
        let body = br#"{"resourceType":"Bundle","type":"searchset","entry":[{"fullUrl":"http://internal:9999/fhir/AuditEvent/a","resource":{"resourceType":"AuditEvent","id":"a","meta":{"security":[{"system":"urn:eds-proxy:label:device-id","code":"dev-1"}]}}}]}"#;
        let out = with_ctx(|ctx| check_searchset(body, ctx).unwrap());
        let v: Value = serde_json::from_slice(&out.body).unwrap();
        assert!(v["entry"][0].get("fullUrl").is_none());
        assert_eq!(v["entry"][0]["resource"]["id"], "a");
    }

    #[test]
    fn arrays_never_stand_in_for_objects() {
        with_ctx(|ctx| {
            for body in [
                &br#"{"resourceType":"Bundle","type":"searchset","entry":[[null,["OperationOutcome"],["outcome"]]]}"#[..],
                br#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":["OperationOutcome"],"search":{"mode":"outcome"}}]}"#,
                br#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"OperationOutcome"},"search":["outcome"]}]}"#,
                br#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"AuditEvent","meta":[[{"system":"urn:eds-proxy:label:device-id","code":"dev-1"}]]}}]}"#,
                br#"{"resourceType":"Bundle","type":"searchset","entry":[{"resource":{"resourceType":"AuditEvent","meta":{"security":[["urn:eds-proxy:label:device-id","dev-1"]]}}}]}"#,
            ] {
                assert_eq!(
                    check_searchset(body, ctx).map(|c| c.dropped),
                    Err(Refusal::BadGateway(BadGateway::MalformedSearchset)),
                    "{}",
                    String::from_utf8_lossy(body)
                );
            }
        });
    }

    #[test]
    fn untouched_members_pass_through_verbatim() {
        let body = br#"{"resourceType":"Bundle","id":"x","meta":{"lastUpdated":"2025-01-01T00:00:00Z"},"type":"searchset","total":1,"entry":[{"resource":{"resourceType":"AuditEvent","id":"a","meta":{"security":[{"system":"urn:eds-proxy:label:device-id","code":"dev-1"}]}},"search":{"mode":"match"}}]}"#;
        let out = with_ctx(|ctx| check_searchset(body, ctx).unwrap());
        assert_eq!(out.dropped, 0);
        assert_eq!(
            String::from_utf8(out.body).unwrap(),
            String::from_utf8(body.to_vec()).unwrap()
        );
    }

    #[test]
    fn read_check() {
        let c = constraint();
        let mine = serde_json::to_vec(&audit("a", "dev-1")["resource"]).unwrap();
        let other = serde_json::to_vec(&audit("a", "dev-2")["resource"]).unwrap();
        assert_eq!(
            check_resource(&mine, &c, "a").unwrap(),
            ResourceCheck::Visible
        );
        assert_eq!(
            check_resource(&other, &c, "a").unwrap(),
            ResourceCheck::Hidden
        );
        assert_eq!(
            check_resource(&mine, &c, "b").unwrap(),
            ResourceCheck::Foreign("a resource other than the one asked for")
        );
        assert_eq!(
            check_resource(br#"{"resourceType":"Patient","id":"a"}"#, &c, "a").unwrap(),
            ResourceCheck::Foreign("a resource type other than AuditEvent")
        );
        let gateway = |b: BadGateway| Err(Refusal::BadGateway(b));
        assert_eq!(
            check_resource(b"nope", &c, "a"),
            gateway(BadGateway::NotJson)
        );
        assert_eq!(
            check_resource(br#"{"id":"a"}"#, &c, "a"),
            gateway(BadGateway::NotAResource)
        );
        assert_eq!(
            check_resource(br#"[{"resourceType":"AuditEvent"}]"#, &c, "a"),
            gateway(BadGateway::NotAResource)
        );
    }

    fn mine_with(nested_at: &str, nested: Value) -> Value {
        let mut r = audit("a", "dev-1")["resource"].clone();
        r[nested_at] = nested;
        r
    }

    /// Every place a resource can hide in a single-resource answer, and what the check says.
    #[test]
    fn every_resource_anywhere_in_a_read_is_checked() {
        let c = constraint();
        let foreign_ae = audit("z", "dev-2")["resource"].clone();
        let own_ae = audit("y", "dev-1")["resource"].clone();
        let cases: Vec<(Value, ResourceCheck)> = vec![
            (
                mine_with("contained", json!([{"resourceType": "Device", "id": "d"}])),
                ResourceCheck::Visible,
            ),
            (
                mine_with("contained", json!([foreign_ae.clone()])),
                ResourceCheck::Foreign("another caller's AuditEvent nested inside"),
            ),
            (
                mine_with("contained", json!([own_ae.clone()])),
                ResourceCheck::Visible,
            ),
            (
                mine_with("contained", json!([{"resourceType": "Patient", "id": "p"}])),
                ResourceCheck::Foreign("a resource with record data nested inside"),
            ),
            (
                mine_with(
                    "contained",
                    json!([{"resourceType": "Device", "id": "d", "contained": [foreign_ae.clone()]}]),
                ),
                ResourceCheck::Foreign("another caller's AuditEvent nested inside"),
            ),
            (
                mine_with(
                    "contained",
                    json!([{"resourceType": "OperationOutcome", "contained": [foreign_ae.clone()]}]),
                ),
                ResourceCheck::Foreign("another caller's AuditEvent nested inside"),
            ),
            (
                mine_with(
                    "contained",
                    json!([{"resourceType": "Bundle", "entry": [{"resource": foreign_ae.clone()}]}]),
                ),
                ResourceCheck::Foreign("another caller's AuditEvent nested inside"),
            ),
            (
                mine_with(
                    "contained",
                    json!([{"resourceType": "Parameters", "parameter": [{"name": "x", "resource": {"resourceType": "Patient"}}]}]),
                ),
                ResourceCheck::Foreign("a resource with record data nested inside"),
            ),
            (
                mine_with(
                    "extension",
                    json!([{"url": "http://x", "valueString": "s", "x": foreign_ae.clone()}]),
                ),
                ResourceCheck::Foreign("another caller's AuditEvent nested inside"),
            ),
            (
                mine_with(
                    "meta",
                    json!({"security": [{"system": "urn:eds-proxy:label:device-id", "code": "dev-1"}], "extension": [{"x": foreign_ae.clone()}]}),
                ),
                ResourceCheck::Foreign("another caller's AuditEvent nested inside"),
            ),
            (
                mine_with("id", foreign_ae.clone()),
                ResourceCheck::Foreign("a resource other than the one asked for"),
            ),
        ];
        for (i, (body, want)) in cases.into_iter().enumerate() {
            let got = check_resource(&serde_json::to_vec(&body).unwrap(), &c, "a").unwrap();
            assert_eq!(got, want, "case {i}: {body}");
        }
    }

    /// Critic findings: a resource inside a `meta.security` Coding, and inside a non-string
    /// `id`, is found like anywhere else; duplicates there are refused.
    #[test]
    fn resources_inside_codings_and_ids_are_found() {
        let c = constraint();
        let foreign_ae = audit("z", "dev-2")["resource"].clone();
        let mut r = audit("a", "dev-1")["resource"].clone();
        r["meta"]["security"][0]["_code"] = json!({"x": foreign_ae.clone()});
        assert_eq!(
            check_resource(&serde_json::to_vec(&r).unwrap(), &c, "a").unwrap(),
            ResourceCheck::Foreign("another caller's AuditEvent nested inside")
        );
        let bundle =
            json!({"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r}]});
        let out =
            with_ctx(|ctx| check_searchset(&serde_json::to_vec(&bundle).unwrap(), ctx).unwrap());
        assert_eq!(out.dropped, 1);
        let found = find_resources(
            r#"{"resourceType":"Bundle","id":{"x":{"resourceType":"AuditEvent","id":"q"}}}"#,
        )
        .unwrap();
        assert_eq!(found[0].nested[0].id.as_deref(), Some("q"));
        for body in [
            r#"{"resourceType":"AuditEvent","id":{"x":{"resourceType":"AuditEvent","meta":{},"meta":{}}}}"#,
            r#"{"resourceType":"AuditEvent","meta":{"security":[{"system":"a","code":"b","code":"c"}]}}"#,
            r#"{"resourceType":"AuditEvent","meta":{"security":[{"system":"a","sy\u0073tem":"b"}]}}"#,
            r#"{"resourceType":"AuditEvent","meta":{"security":{"system":"a"}}}"#,
            r#"{"resourceType":"AuditEvent","meta":{"security":[["a","b"]]}}"#,
            r#"{"resourceType":"AuditEvent","meta":{"security":[{"system":5}]}}"#,
        ] {
            assert!(find_resources(body).is_err(), "{body}");
        }
    }

    #[test]
    fn every_resource_anywhere_in_a_searchset_is_checked() {
        let foreign_ae = audit("z", "dev-2")["resource"].clone();
        let outcome_with = |inner: Value| {
            json!({"resource": {"resourceType": "OperationOutcome", "issue": [], "contained": [inner]},
                   "search": {"mode": "outcome"}})
        };
        let mut own_with_foreign_contained = audit("b", "dev-1");
        own_with_foreign_contained["resource"]["contained"] = json!([foreign_ae.clone()]);
        let mut own_with_foreign_outcome = audit("c", "dev-1");
        own_with_foreign_outcome["response"] = json!({"outcome": foreign_ae.clone()});
        let bundle = json!({"resourceType": "Bundle", "type": "searchset", "total": 6,
        "entry": [
            audit("a", "dev-1"),
            own_with_foreign_contained,
            own_with_foreign_outcome,
            outcome_with(foreign_ae.clone()),
            outcome_with(json!({"resourceType": "OperationOutcome"})),
            {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": foreign_ae.clone()}]}},
            {"resource": {"resourceType": "Parameters"}},
            {"search": {"mode": "match"}},
        ]});
        let out =
            with_ctx(|ctx| check_searchset(&serde_json::to_vec(&bundle).unwrap(), ctx).unwrap());
        let v: Value = serde_json::from_slice(&out.body).unwrap();
        let kept: Vec<&Value> = v["entry"].as_array().unwrap().iter().collect();
        assert_eq!(kept.len(), 2, "{v}");
        assert_eq!(kept[0]["resource"]["id"], "a");
        assert_eq!(kept[1]["resource"]["resourceType"], "OperationOutcome");
        assert!(kept[1]["resource"]["contained"][0]["resourceType"] == "OperationOutcome");
        assert_eq!(out.dropped, 7);
        assert!(v.get("total").is_none());
    }

    #[test]
    fn resources_in_the_envelope_fail_the_whole_searchset() {
        let foreign_ae = audit("z", "dev-2")["resource"].clone();
        for envelope in [
            json!({"extension": [{"url": "http://x", "valueString": "s", "x": foreign_ae.clone()}]}),
            json!({"issues": foreign_ae.clone()}),
            json!({"link": [{"relation": "self", "url": "http://hapi:8080/fhir/AuditEvent", "x": foreign_ae.clone()}]}),
            json!({"meta": {"tag": [foreign_ae.clone()]}}),
        ] {
            let mut bundle = json!({"resourceType": "Bundle", "type": "searchset", "entry": [audit("a", "dev-1")]});
            bundle
                .as_object_mut()
                .unwrap()
                .extend(envelope.as_object().unwrap().clone());
            let r = with_ctx(|ctx| check_searchset(&serde_json::to_vec(&bundle).unwrap(), ctx));
            assert_eq!(
                r.unwrap_err(),
                Refusal::BadGateway(BadGateway::OutsideEntries {
                    why: "another caller's AuditEvent nested inside"
                }),
                "{envelope}"
            );
        }
        // An OperationOutcome in the envelope is harmless.
        let bundle = json!({"resourceType": "Bundle", "type": "searchset", "issues": {"resourceType": "OperationOutcome"}, "entry": [audit("a", "dev-1")]});
        assert!(
            with_ctx(|ctx| check_searchset(&serde_json::to_vec(&bundle).unwrap(), ctx)).is_ok()
        );
    }

    #[test]
    fn totals_can_be_dropped_by_configuration() {
        let bundle = br#"{"resourceType":"Bundle","type":"searchset","total":1,"entry":[]}"#;
        let c = constraint();
        let signer = PageSigner::new(vec![7; 32]);
        let mut ctx = ResponseContext {
            constraint: &c,
            public_base: "https://proxy:8443/fhir",
            upstream_base: "http://hapi:8080/fhir",
            signer: &signer,
            principal_key: "k",
            drop_totals: false,
            max_count: 50,
            max_link_bytes: 8192,
        };
        let kept: Value =
            serde_json::from_slice(&check_searchset(bundle, &ctx).unwrap().body).unwrap();
        assert_eq!(kept["total"], 1);
        ctx.drop_totals = true;
        let dropped: Value =
            serde_json::from_slice(&check_searchset(bundle, &ctx).unwrap().body).unwrap();
        assert!(dropped.get("total").is_none());
    }

    fn created_ctx<T>(f: impl FnOnce(&CreatedContext<'_>) -> T) -> T {
        let c = constraint();
        let systems = systems();
        let stamped = vec![systems.device("dev-1"), systems.sor("111")];
        f(&CreatedContext {
            constraint: &c,
            stamped: &stamped,
            systems: &systems,
            public_base: "https://proxy:8443/fhir",
            upstream_base: "http://hapi:8080/fhir",
        })
    }

    fn created_body(id: &str, labels: &[(&str, &str)]) -> Vec<u8> {
        let security: Vec<Value> = labels
            .iter()
            .map(|(s, c)| json!({"system": s, "code": c}))
            .collect();
        serde_json::to_vec(
            &json!({"resourceType": "AuditEvent", "id": id, "meta": {"security": security}}),
        )
        .unwrap()
    }

    #[test]
    fn a_create_answer_must_be_the_created_record() {
        const DEV: &str = "urn:eds-proxy:label:device-id";
        const SOR: &str = "urn:eds-proxy:label:sor";
        let loc = Some("http://hapi:8080/fhir/AuditEvent/42/_history/1");
        let good = created_body("42", &[(DEV, "dev-1"), (SOR, "111"), ("http://other", "x")]);
        created_ctx(|ctx| {
            assert_eq!(
                check_created(&good, loc, ctx).unwrap(),
                "https://proxy:8443/fhir/AuditEvent/42/_history/1"
            );
            assert!(check_created(b"", loc, ctx).is_ok());
            assert!(check_created(b"", Some("http://hapi:8080/fhir/AuditEvent/42"), ctx).is_ok());
            let other_device = created_body("42", &[(DEV, "dev-2"), (SOR, "111")]);
            let fewer = created_body("42", &[(DEV, "dev-1")]);
            let more = created_body("42", &[(DEV, "dev-1"), (SOR, "111"), (SOR, "222")]);
            let fails: Vec<(&[u8], Option<&str>, &str)> = vec![
                (
                    &good,
                    None,
                    "a create answer without a Location on the FHIR base",
                ),
                (
                    &good,
                    Some("http://elsewhere/fhir/AuditEvent/42"),
                    "a create answer without a Location on the FHIR base",
                ),
                (
                    &good,
                    Some("http://hapi:8080/fhir/Patient/42"),
                    "a create answer whose Location is not an AuditEvent",
                ),
                (
                    &good,
                    Some("http://hapi:8080/fhir/AuditEvent/42/_history/"),
                    "a create answer whose Location is not an AuditEvent",
                ),
                (
                    &good,
                    Some("http://hapi:8080/fhir/AuditEvent/4%2F2"),
                    "a create answer whose Location is not an AuditEvent",
                ),
                (
                    &good,
                    Some("http://hapi:8080/fhir/AuditEvent/43/_history/1"),
                    "a create answer that is not the created resource",
                ),
                (
                    &other_device,
                    loc,
                    "a create answer without the station's label",
                ),
                (
                    &fewer,
                    loc,
                    "a create answer whose labels are not the ones stamped",
                ),
                (
                    &more,
                    loc,
                    "a create answer whose labels are not the ones stamped",
                ),
                (
                    br#"{"resourceType":"OperationOutcome","id":"42"}"#,
                    loc,
                    "a resource type other than AuditEvent",
                ),
                (
                    b"<AuditEvent/>",
                    loc,
                    "a create answer that is not a FHIR resource",
                ),
            ];
            for (body, location, why) in fails {
                assert_eq!(
                    check_created(body, location, ctx),
                    Err(Withheld::Foreign(why)),
                    "{} {location:?}",
                    String::from_utf8_lossy(body)
                );
            }
        });
    }

    #[test]
    fn only_fhir_json_answers_are_read() {
        for ct in [
            "application/fhir+json",
            "application/fhir+json;charset=UTF-8",
            "Application/FHIR+JSON; charset=utf-8",
            "application/json",
        ] {
            assert!(is_fhir_json(Some(ct)), "{ct}");
        }
        for ct in [
            "application/fhir+xml",
            "text/html",
            "application/fhir+json-seq",
            "text/plain; application/json",
            "",
        ] {
            assert!(!is_fhir_json(Some(ct)), "{ct}");
        }
        assert!(!is_fhir_json(None));
    }

    #[test]
    fn rebase_only_known_bases() {
        with_ctx(|ctx| {
            assert_eq!(
                rebase(
                    "http://hapi:8080/fhir/AuditEvent/1/_history/1",
                    ctx.public_base,
                    ctx.upstream_base
                )
                .unwrap(),
                "https://proxy:8443/fhir/AuditEvent/1/_history/1"
            );
            assert!(rebase(
                "http://hapi:8080/fhirX/AuditEvent/1",
                ctx.public_base,
                ctx.upstream_base
            )
            .is_none());
            assert!(rebase(
                "http://other/fhir/AuditEvent/1",
                ctx.public_base,
                ctx.upstream_base
            )
            .is_none());
        });
    }
}

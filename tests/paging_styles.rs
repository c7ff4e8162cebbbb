//! Issue 13 item 1: paging for any FHIR server. Whatever a server's paging links look like
//! (HAPI `_getpages` handle, offsets, an opaque cursor), the client gets a link the proxy
//! signed over the exact upstream target, and following it sends exactly that target with
//! the caller's constraint; a link the proxy cannot vouch for is dropped. Each case asserts
//! what the recording upstream saw.

// Runs the proxy: needs the `dev` feature (default).
#![cfg(feature = "dev")]
// Test code: a panic is a failure, and it reads JSON answers with plain serde_json.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![allow(clippy::disallowed_methods)]

mod common;

use common::upstream::Scripted;
use common::*;
use serde_json::{json, Value};

const DEV: &str = "paging-dev-1";
const LABEL: &str = "urn%3Aeds-proxy%3Alabel%3Adevice-id%7Cpaging-dev-1";

struct Station {
    client: reqwest::Client,
    token: String,
}

fn station(h: &Harness, name: &str, device: &str) -> Station {
    let cert = h.pki.client(name);
    Station {
        client: h.client(&cert),
        token: h.token(&cert, station_claims(device, "111", "GLN-1")),
    }
}

impl Station {
    async fn get(&self, url: &str) -> (u16, Value) {
        let resp = self
            .client
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

fn record(id: &str, device: &str) -> Value {
    json!({"resourceType": "AuditEvent", "id": id,
           "meta": {"versionId": "1", "security": [{"system": "urn:eds-proxy:label:device-id", "code": device}]}})
}

/// A searchset of one of `DEV`'s records with these links, as a scripted answer.
fn page(h: &Harness, target_prefix: &str, id: &str, links: Value) -> Scripted {
    let base = upstream_base(h);
    let body = json!({"resourceType": "Bundle", "type": "searchset", "link": links,
        "entry": [{"fullUrl": format!("{base}/AuditEvent/{id}"), "resource": record(id, DEV), "search": {"mode": "match"}}]});
    Scripted {
        method: "GET".into(),
        target_prefix: target_prefix.into(),
        status: 200,
        headers: vec![],
        body: serde_json::to_vec(&body).unwrap(),
    }
}

fn upstream_base(h: &Harness) -> String {
    format!("http://127.0.0.1:{}/fhir", h.upstream.port)
}

fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .and_then(|l| l["url"].as_str())
        .map(str::to_string)
}

fn ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_string))
        .collect()
}

/// The targets the upstream saw from `before` on.
fn seen_since(h: &Harness, before: usize) -> Vec<String> {
    h.upstream.requests()[before..]
        .iter()
        .map(|r| r.target.clone())
        .collect()
}

/// How many requests the proxy refused for `reason` (`eds_proxy_requests_total`).
async fn refused(h: &Harness, reason: &str) -> f64 {
    refusals(h.admin_port)
        .await
        .get(reason)
        .copied()
        .unwrap_or(0.0)
}

/// Stateless offsets and an opaque cursor: the signed link hides the constraint, and
/// following it sends exactly the server's target with the caller's constraint.
#[tokio::test]
async fn offset_and_cursor_links_are_signed_and_replayed_exactly() {
    let h = Harness::start("paging-styles", Options::default());
    let s = station(&h, "paging-station", DEV);
    let up = upstream_base(&h);
    for (style, server_next, replayed) in [
        (
            "offset",
            format!("{up}/AuditEvent?message-id=offset&_security={LABEL}&_page=2"),
            format!("/fhir/AuditEvent?_security={LABEL}&message-id=offset&_page=2"),
        ),
        (
            "offset-plain",
            // Unencoded `:`/`|` and `_offset`/`_count` as another server writes them.
            format!("{up}/AuditEvent?_security=urn:eds-proxy:label:device-id|{DEV}&message-id=offset-plain&_offset=1&_count=1"),
            format!("/fhir/AuditEvent?_security={LABEL}&message-id=offset-plain&_offset=1&_count=1"),
        ),
        (
            "cursor",
            format!("{up}/AuditEvent?_security={LABEL}&message-id=cursor&_cursor=b3BhcXVl%2Fx%3D%3D"),
            format!("/fhir/AuditEvent?_security={LABEL}&message-id=cursor&_cursor=b3BhcXVl%2Fx%3D%3D"),
        ),
    ] {
        h.upstream.clear_scripts();
        // Page 2 first: the first matching script wins, and page 1's prefix matches both.
        h.upstream
            .script(page(&h, &replayed, &format!("{style}-2"), json!([])));
        h.upstream.script(page(
            &h,
            &format!("/fhir/AuditEvent?_security={LABEL}&message-id={style}"),
            &format!("{style}-1"),
            json!([{"relation": "next", "url": server_next}]),
        ));
        let before = h.upstream.request_count();
        let (status, first) = s
            .get(&h.url(&format!("AuditEvent?message-id={style}")))
            .await;
        assert_eq!(status, 200, "{style}: {first}");
        assert_eq!(ids(&first), [format!("{style}-1")], "{style}");
        let next = link(&first, "next").unwrap_or_else(|| panic!("{style}: no next in {first}"));
        assert!(
            next.starts_with(&format!("{}?_eds_page=", h.base)) && next.contains("&_eds_sig="),
            "{style}: {next}"
        );
        assert!(
            !next.contains(DEV) && !next.contains("_security"),
            "{style}: the link shows the constraint: {next}"
        );
        let (status, second) = s.get(&next).await;
        assert_eq!(status, 200, "{style}: {second}");
        assert_eq!(ids(&second), [format!("{style}-2")], "{style}");
        // A client adding `_format`/`_pretty` to every request (as on a handle link): the same
        // target, the output parameters not forwarded.
        let (status, again) = s.get(&format!("{next}&_format=json&_pretty=true")).await;
        assert_eq!(status, 200, "{style}: {again}");
        assert_eq!(
            seen_since(&h, before),
            [
                format!("/fhir/AuditEvent?_security={LABEL}&message-id={style}"),
                replayed.clone(),
                replayed
            ],
            "{style}: what the upstream saw"
        );
    }
    h.upstream.clear_scripts();
}

/// HAPI's `_getpages` handles (the recording upstream's own paging): signed, replayed as
/// the exact handle target.
#[tokio::test]
async fn hapi_handles_are_signed_and_replayed_exactly() {
    let h = Harness::start("paging-hapi", Options::default());
    let s = station(&h, "paging-hapi-station", DEV);
    for i in 0..3 {
        h.upstream.seed(record(&format!("hapi-{i}"), DEV));
    }
    let before = h.upstream.request_count();
    let (status, first) = s.get(&h.url("AuditEvent?_count=1")).await;
    assert_eq!(status, 200, "{first}");
    let next = link(&first, "next").unwrap();
    assert!(
        next.starts_with(&format!("{}?_getpages=", h.base)) && next.contains("&_eds_sig="),
        "{next}"
    );
    let (status, second) = s.get(&next).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(ids(&second).len(), 1);
    let seen = seen_since(&h, before);
    assert_eq!(
        seen[0],
        format!("/fhir/AuditEvent?_security={LABEL}&_count=1")
    );
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[1].starts_with("/fhir?_getpages=search-")
            && seen[1].ends_with("&_getpagesoffset=1&_count=1&_bundletype=searchset"),
        "{seen:?}"
    );
}

/// Links the proxy cannot vouch for are dropped, never passed on: another host, another
/// base path, no constraint, another caller's constraint, a widened one, a non-search.
#[tokio::test]
async fn links_the_proxy_cannot_vouch_for_are_dropped() {
    let h = Harness::start("paging-dropped", Options::default());
    let s = station(&h, "paging-dropped-station", DEV);
    let up = upstream_base(&h);
    let other = "urn%3Aeds-proxy%3Alabel%3Adevice-id%7Cpaging-dev-2";
    let links = json!([
        {"relation": "self", "url": format!("{up}/AuditEvent?message-id=dropped")},
        {"relation": "next", "url": format!("https://evil.example/fhir/AuditEvent?_security={LABEL}&_page=2")},
        {"relation": "previous", "url": format!("{up}/AuditEvent?message-id=dropped&_page=0")},
        {"relation": "first", "url": format!("{up}/AuditEvent?_security={other}&_page=1")},
        {"relation": "last", "url": format!("{up}/AuditEvent?_security={LABEL}%2C{other}&_page=9")},
        {"relation": "alternate", "url": format!("http://127.0.0.1:{}/other/AuditEvent?_security={LABEL}", h.upstream.port)},
        {"relation": "related", "url": format!("{up}/Patient?_security={LABEL}")},
        {"relation": "describedby", "url": format!("{up}/AuditEvent?_security={LABEL}&_include=*")},
    ]);
    h.upstream.script(page(
        &h,
        &format!("/fhir/AuditEvent?_security={LABEL}&message-id=dropped"),
        "dropped-1",
        links,
    ));
    let (status, bundle) = s.get(&h.url("AuditEvent?message-id=dropped")).await;
    h.upstream.clear_scripts();
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(ids(&bundle), ["dropped-1"]);
    assert_eq!(bundle.get("link"), Some(&json!([])), "{bundle}");
}

/// A signed link works for its principal only, and only unchanged: another caller's replay
/// and a tampered link are refused before anything reaches the FHIR server.
#[tokio::test]
async fn another_callers_or_a_tampered_link_is_refused() {
    let h = Harness::start("paging-refused", Options::default());
    let s = station(&h, "paging-refused-station", DEV);
    let thief = station(&h, "paging-refused-thief", "paging-dev-2");
    let up = upstream_base(&h);
    h.upstream.script(page(
        &h,
        &format!("/fhir/AuditEvent?_security={LABEL}&message-id=refused"),
        "refused-1",
        json!([{"relation": "next", "url": format!("{up}/AuditEvent?_security={LABEL}&message-id=refused&_page=2")}]),
    ));
    let (status, first) = s.get(&h.url("AuditEvent?message-id=refused")).await;
    assert_eq!(status, 200, "{first}");
    let next = link(&first, "next").unwrap();
    let url = url::Url::parse(&next).unwrap();
    let param = |n: &str| {
        url.query_pairs()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.into_owned())
            .unwrap()
    };
    let (target, sig) = (param("_eds_page"), param("_eds_sig"));
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    assert_eq!(
        String::from_utf8(b64.decode(&target).unwrap()).unwrap(),
        "message-id=refused&_page=2"
    );
    let tampered_target = b64.encode("message-id=refused&_page=3");
    let widened = b64.encode("message-id=refused&_page=2&_include=*");
    let page_not_issued = refused(&h, "page_not_issued").await;
    let before = h.upstream.request_count();
    for (who, caller, url, status, message) in [
        (
            "another station",
            &thief,
            next.clone(),
            403,
            "this paging link was not issued to the caller",
        ),
        (
            "tampered target",
            &s,
            format!("{}?_eds_page={tampered_target}&_eds_sig={sig}", h.base),
            403,
            "this paging link was not issued to the caller",
        ),
        (
            "widened target",
            &s,
            format!("{}?_eds_page={widened}&_eds_sig={sig}", h.base),
            400,
            "malformed _eds_page paging target",
        ),
        (
            "no signature",
            &s,
            format!("{}?_eds_page={target}", h.base),
            403,
            "paging links must carry the proxy's signature",
        ),
        (
            "extra parameter",
            &s,
            format!("{next}&_page=3"),
            400,
            "`_page` is not allowed on a paging request",
        ),
    ] {
        let (got, body) = caller.get(&url).await;
        assert_eq!(got, status, "{who}: {body}");
        assert_eq!(body["issue"][0]["diagnostics"], message, "{who}: {body}");
    }
    assert_eq!(refused(&h, "page_not_issued").await - page_not_issued, 2.0);
    assert_eq!(
        seen_since(&h, before),
        Vec::<String>::new(),
        "nothing reached the upstream"
    );
    h.upstream.clear_scripts();
}

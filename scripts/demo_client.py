#!/usr/bin/env python3
"""The eds-proxy demo, as stations, a citizen and a supporter see it.

Stations register the IG's delivery-status chain over mTLS with tokens from the dev issuer;
then a station, a citizen and a supporter search and read, and some refused requests are
shown. Standard library only. Exits non-zero if anything behaves unexpectedly.
"""
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.environ.get("DEMO_DIR", os.path.join(ROOT, "demo-run"))
PKI = os.path.join(RUN, "pki")
PROXY = os.environ.get("PROXY_BASE", "https://localhost:8443/fhir")
ISSUER_TOKEN = os.environ.get("ISSUER_TOKEN_URL", "https://localhost:9443/token")
BIN = os.environ.get("EDS_PROXY_BIN", os.path.join(ROOT, "target", "debug", "eds-proxy"))
AARHUS = ("937961000016000", "GLN-1234")
STJERNEPLADSEN = ("698141000016008", "GLN-12345")
STATION_ORG = {
    "Cura-EUA": AARHUS, "Cura-MSH": AARHUS, "KvalitetsIT-AP": AARHUS,
    "MultiMed-MSH": STJERNEPLADSEN, "MultiMed-AP": STJERNEPLADSEN, "EGClinea-EUA": STJERNEPLADSEN,
}
NSIS_SUBSTANTIAL = "https://data.gov.dk/concept/core/nsis/loa/Substantial"
failures = []


def context(name):
    ctx = ssl.create_default_context(cafile=os.path.join(PKI, "ca.crt"))
    ctx.load_cert_chain(os.path.join(PKI, name + ".crt"), os.path.join(PKI, name + ".key"))
    return ctx


def call(method, url, cert, token=None, body=None, content_type="application/fhir+json"):
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = "Bearer " + token
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers["Content-Type"] = content_type
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, context=context(cert), timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def station_token(device, sor, gln):
    form = urllib.parse.urlencode({
        "grant_type": "client_credentials", "client_id": device.lower(),
        "scope": f"EDS system/AuditEvent.crs SOR:{sor} GLN:{gln}",
    }).encode()
    status, body = call("POST", ISSUER_TOKEN, device.lower(), body=form, content_type="application/x-www-form-urlencoded")
    if status != 200:
        sys.exit(f"token for {device} refused: {body}")
    return body["access_token"]


def user_token(cert, claims):
    out = subprocess.run([BIN, "dev", "mint-token", "--key", os.path.join(PKI, "issuer.key"),
                          "--cert", os.path.join(PKI, cert + ".crt"), "--issuer", "https://localhost:9443",
                          "--claims", json.dumps(claims)], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def expect(what, status, wanted):
    ok = status == wanted
    print(f"  {'ok ' if ok else 'BAD'} {what}: HTTP {status}" + ("" if ok else f" (expected {wanted})"))
    if not ok:
        failures.append(what)


def search(cert, token, query=""):
    """Every page of a search, following `next` links. Any page that fails ends the demo with
    a non-zero exit and says which page: a quiet stop would report a partial result as success
    (issue 13: a citizen saw 5 of 11 records while the demo passed)."""
    ids, url, page = [], f"{PROXY}/AuditEvent?{query}", 1
    while url:
        status, bundle = call("GET", url, cert, token)
        if status != 200:
            sys.exit(f"demo: page {page} of the search {query!r} by {cert} failed: HTTP {status} {outcome(bundle)}")
        ids += [e["resource"]["id"] for e in bundle.get("entry", [])]
        url = next((l["url"] for l in bundle.get("link", []) if l["relation"] == "next"), None)
        page += 1
    return 200, ids


def outcome(body):
    try:
        return body["issue"][0]["diagnostics"]
    except (KeyError, IndexError, TypeError):
        return ""


def main():
    manifest = json.load(open(os.path.join(ROOT, "tests", "fixtures", "ig", "manifest.json")))
    tokens = {d: station_token(d, *org) for d, org in STATION_ORG.items()}
    print(f"== Stations register the IG's {len(manifest)} delivery statuses through the proxy")
    server_ids = {}
    for entry in manifest:
        device = entry["device_id"]
        body = json.load(open(os.path.join(ROOT, "tests", "fixtures", "ig", entry["file"])))
        status, created = call("POST", f"{PROXY}/AuditEvent", device.lower(), tokens[device], body)
        if status != 201:
            failures.append(entry["id"])
            print(f"  BAD {entry['id']} by {device}: HTTP {status} {outcome(created)}")
            continue
        server_ids[created["id"]] = entry
        print(f"  {entry['id']:<13} by {device:<15} -> AuditEvent/{created['id']}")

    print("\n== What each caller sees")
    status, ids = search("cura-eua", tokens["Cura-EUA"])
    print(f"  station Cura-EUA sees {len(ids)}: {sorted(server_ids[i]['id'] for i in ids)}")
    if any(server_ids[i]["device_id"] != "Cura-EUA" for i in ids):
        failures.append("station isolation")
    citizen = user_token("citizen-app", {"scope": "EDS user/AuditEvent.rs", "cpr": "PAT1234567890", "acr": NSIS_SUBSTANTIAL})
    status, ids = search("citizen-app", citizen, "_count=5")
    print(f"  citizen PAT1234567890 sees {len(ids)} (paged 5 at a time): {sorted(server_ids[i]['id'] for i in ids)}")
    if any(server_ids[i]["cpr"] != "PAT1234567890" for i in ids):
        failures.append("citizen isolation")
    supporter = user_token("support-tool", {
        "scope": "EDS user/AuditEvent.rs", "cvr": "55133018", "acr": NSIS_SUBSTANTIAL,
        "priv": [{"scope": "urn:dk:gov:saml:cvrNumberIdentifier:55133018",
                  "privileges": ["urn:dk:healthcare:ehmi:eds:role:supporter"]}]})
    status, ids = search("support-tool", supporter, "message-id=MSG1234567890")
    print(f"  supporter of CVR 55133018 (Aarhus Kommune) finds message MSG1234567890 in {len(ids)} registrations")

    print("\n== What each caller is refused")
    other = next(i for i, e in server_ids.items() if e["device_id"] != "Cura-EUA")
    status, body = call("GET", f"{PROXY}/AuditEvent/{other}", "cura-eua", tokens["Cura-EUA"])
    expect(f"Cura-EUA reads {server_ids[other]['id']} of {server_ids[other]['device_id']}", status, 404)
    basic = next(i for i, e in server_ids.items() if e["cpr"] is None)
    status, body = call("GET", f"{PROXY}/AuditEvent/{basic}", "citizen-app", citizen)
    expect(f"citizen reads {server_ids[basic]['id']} (no patient)", status, 404)
    forged = json.load(open(os.path.join(ROOT, "tests", "fixtures", "ig", "EDS-PDS-04.1.json")))
    status, body = call("POST", f"{PROXY}/AuditEvent", "cura-eua", tokens["Cura-EUA"], forged)
    expect(f"Cura-EUA registers MultiMed-AP's status ({outcome(body)})", status, 403)
    status, body = call("POST", f"{PROXY}/AuditEvent", "citizen-app", citizen, forged)
    expect(f"citizen registers ({outcome(body)})", status, 403)
    status, body = call("GET", f"{PROXY}/AuditEvent?_include=AuditEvent:patient", "cura-eua", tokens["Cura-EUA"])
    expect(f"_include ({outcome(body)})", status, 400)
    status, body = call("GET", f"{PROXY}/Patient", "cura-eua", tokens["Cura-EUA"])
    expect(f"another resource type ({outcome(body)})", status, 403)
    status, body = call("GET", f"{PROXY}/AuditEvent", "cura-msh", tokens["Cura-EUA"])
    expect(f"Cura-EUA's token presented with Cura-MSH's certificate ({outcome(body)})", status, 401)
    no_role = user_token("support-tool", {"scope": "EDS user/AuditEvent.rs", "cvr": "55133018", "acr": NSIS_SUBSTANTIAL})
    status, body = call("GET", f"{PROXY}/AuditEvent", "support-tool", no_role)
    expect(f"supporter without the role ({outcome(body)})", status, 403)

    if failures:
        sys.exit(f"\ndemo: {len(failures)} unexpected result(s): {failures}")
    print("\ndemo: everything behaved as the EDS rules say")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Write the benchmark origin's answers (bench/run.sh) from the IG examples.

OUT/searchset.json  a 20-entry searchset of IG delivery statuses, each stored the way the FHIR
                    server holds a registration eds-proxy made for the benchmark station
                    (Cura-EUA): the proxy's labels in meta.security (device-id of the station,
                    SOR of sender and receiver, CPR for patient statuses), a server id and
                    versionId, compact JSON as HAPI writes it; links on the public base, a
                    `next` page link (which eds-proxy re-signs)
OUT/read.json       a ~1 KB AuditEvent with the same labels, id `bench-read`
OUT/create.json     the 12 KB registration the station POSTs: EDS-PDS-01.1 (observer Cura-EUA,
                    sender Aarhus = the station's organisation) with a generated XHTML narrative
                    (eds-proxy removes the narrative before forwarding, README "Interactions")
OUT/created.json    the server's answer to it: the record as stored, labelled exactly as the
                    proxy stamps it, id `bench-created`
OUT/expect.json     sizes and counts the run checks against

Usage: fixtures.py IG_DIR OUT_DIR PUBLIC_BASE
"""
import copy
import json
import os
import sys

DEVICE = "Cura-EUA"
PREFIX = "urn:eds-proxy:label:"


def compact(v):
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def labels(entry):
    """The labels eds-proxy stamps at create (src/fhir/labels.rs, README "Access labels")."""
    out = [{"system": PREFIX + "device-id", "code": DEVICE},
           {"system": PREFIX + "sor", "code": entry["sender"]["sor"]}]
    if entry["receiver"]["sor"] != entry["sender"]["sor"]:
        out.append({"system": PREFIX + "sor", "code": entry["receiver"]["sor"]})
    if entry.get("cpr"):
        out.append({"system": PREFIX + "cpr", "code": entry["cpr"]})
    return out


def stored(resource, entry, server_id):
    """The record as the FHIR server returns it after eds-proxy registered it."""
    r = copy.deepcopy(resource)
    r.pop("text", None)
    meta = {"versionId": "1", "lastUpdated": "2025-11-01T00:00:02.000+00:00"}
    meta.update({k: v for k, v in r.get("meta", {}).items() if k == "profile"})
    meta["security"] = labels(entry)
    r.pop("id", None)
    r.pop("meta", None)
    return {"resourceType": r.pop("resourceType"), "id": server_id, "meta": meta, **r}


def main():
    ig, out, base = sys.argv[1], sys.argv[2], sys.argv[3].rstrip("/")
    os.makedirs(out, exist_ok=True)
    manifest = json.load(open(os.path.join(ig, "manifest.json"), encoding="utf-8"))
    load = lambda e: json.load(open(os.path.join(ig, e["file"]), encoding="utf-8"))

    entries = []
    for i, e in enumerate(manifest[:20]):
        sid = f"bench-{i + 1}"
        entries.append({"fullUrl": f"{base}/AuditEvent/{sid}", "resource": stored(load(e), e, sid),
                        "search": {"mode": "match"}})
    bundle = {"resourceType": "Bundle", "id": "bench-searchset",
              "meta": {"lastUpdated": "2025-11-01T00:00:03.000+00:00"}, "type": "searchset",
              "total": 40,
              "link": [{"relation": "self", "url": f"{base}/AuditEvent?_count=20"},
                       {"relation": "next", "url": f"{base}?_getpages=bench-page-1&_getpagesoffset=20"
                                                   f"&_count=20&_pretty=false&_bundletype=searchset"}],
              "entry": entries}
    searchset = compact(bundle)

    pds = next(e for e in manifest if e["id"] == "EDS-PDS-01.1")
    # The read: the same record cut to ~1 KB (what a read check reads is all there).
    small = stored(load(pds), pds, "bench-read")
    for k in ("entity", "contained", "subtype"):
        small.pop(k, None)
    small["type"].pop("display", None)
    small["agent"] = [{"type": {"coding": [{"code": a["type"]["coding"][0]["code"]}]},
                       "who": a["who"], "requestor": False} for a in small["agent"]]
    small["source"] = {"observer": {"identifier": {"value": DEVICE}}}
    read = compact(small)

    # The create: the registration with a narrative, padded to 12 KB.
    reg = load(pds)
    reg.pop("id", None)
    rows = ""
    body = ""
    n = 0
    while True:
        rows += (f"<tr><td>step {n}</td><td>Message created and sent by Columna Cura (Cura-EUA), "
                 f"Aarhus Kommune - Sundhed og Omsorg to Lægerne Stjernepladsen I/S</td></tr>")
        n += 1
        reg["text"] = {"status": "generated",
                       "div": f"<div xmlns=\"http://www.w3.org/1999/xhtml\"><table>{rows}</table></div>"}
        body = compact(reg)
        if len(body.encode()) >= 12 * 1024:
            break
    created = compact(stored(load(pds), pds, "bench-created"))

    files = {"searchset.json": searchset, "read.json": read, "create.json": body, "created.json": created}
    for name, text in files.items():
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write(text)
    expect = {"entries": len(entries), "ids": [e["resource"]["id"] for e in entries],
              **{name: len(text.encode()) for name, text in files.items()}}
    with open(os.path.join(out, "expect.json"), "w") as f:
        json.dump(expect, f)
    print(f"fixtures: searchset {expect['searchset.json']} B ({len(entries)} entries), read "
          f"{expect['read.json']} B, create {expect['create.json']} B, created {expect['created.json']} B")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Checks that a HAPI FHIR server behaves the way the eds-proxy tests expect.
# Usage: smoke-test.sh [BASE_URL]   (default http://127.0.0.1:${HAPI_PORT:-8090}/fhir)
# Needs curl and python3. Writes test data (AuditEvents tagged with a random urn:test code and,
# unless a 'message-id' SearchParameter already exists, the test SearchParameter below).
set -euo pipefail

BASE="${1:-http://127.0.0.1:${HAPI_PORT:-8090}/fhir}"
BASE="${BASE%/}"
RUN="r$(date +%s)$RANDOM"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
passed=0
failed=0

ok() { echo "ok   - $*"; passed=$((passed + 1)); }
bad() { echo "FAIL - $*"; failed=$((failed + 1)); }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

# jget FILE PYTHON-EXPRESSION-ON-b  -> prints the result
jget() { python3 -c "import json,sys; b=json.load(open(sys.argv[1])); print($2)" "$1"; }

post() { # post TYPE FILE -> http code, body in $TMP/resp.json
  curl -s -o "$TMP/resp.json" -w '%{http_code}' -X POST -H 'Content-Type: application/fhir+json' \
    --data-binary @"$2" "$BASE/$1"
}

audit_event() { # audit_event SECURITY_CODE [MESSAGE_ID]
  python3 - "$@" <<'PY'
import json, sys
ae = {
    "resourceType": "AuditEvent",
    "meta": {"security": [{"system": "urn:test", "code": sys.argv[1]}]},
    "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110100"},
    "recorded": "2026-01-01T00:00:00Z",
    "agent": [{"requestor": True, "who": {"display": "smoke-test"}}],
    "source": {"observer": {"display": "smoke-test"}},
}
if len(sys.argv) > 2:
    ae["entity"] = [{"type": {"system": "http://medcomehmi.dk/ig/eds/CodeSystem/eds-entity-types",
                              "code": "ehmiMessage"},
                     "what": {"identifier": {"value": sys.argv[2]}}}]
print(json.dumps(ae))
PY
}

# 1. metadata
code="$(curl -s -o "$TMP/meta.json" -w '%{http_code}' "$BASE/metadata")"
if [[ "$code" == 200 ]]; then
  ok "GET /metadata -> 200 ($(jget "$TMP/meta.json" 'b["software"]["name"] + " " + b["software"]["version"]'))"
else
  bad "GET /metadata -> $code"; echo "$failed failed"; exit 1
fi

# 2. _security token search
audit_event "x" > "$TMP/ae.json"
code="$(post AuditEvent "$TMP/ae.json")"
id="$(jget "$TMP/resp.json" 'b["id"]')"
curl -s "$BASE/AuditEvent?_security=urn:test%7Cx&_count=200" -o "$TMP/s.json"
if [[ "$code" == 201 ]] && jget "$TMP/s.json" '[e["resource"]["id"] for e in b.get("entry", [])]' | grep -q "'$id'"; then
  ok "AuditEvent/$id with meta.security urn:test|x found by _security=urn:test|x"
else
  bad "_security search (create HTTP $code, id $id)"
fi

# 3. unknown search parameter -> 400
code="$(curl -s -o /dev/null -w '%{http_code}' "$BASE/AuditEvent?no-such-param=1")"
[[ "$code" == 400 ]] && ok "unknown search parameter -> 400" || bad "unknown search parameter -> $code"

# 4. paging
t0="$(now)"
for i in $(seq 1 45); do
  audit_event "$RUN" > "$TMP/p.json"
  code="$(post AuditEvent "$TMP/p.json")"
  [[ "$code" == 201 ]] || { bad "create #$i -> $code"; break; }
done
echo "     (45 creates took $(elapsed "$t0") s)"
Q="AuditEvent?_security=urn:test%7C$RUN&_count=10"
curl -s "$BASE/$Q" -o "$TMP/p1.json"
next="$(jget "$TMP/p1.json" 'next((l["url"] for l in b.get("link", []) if l["relation"] == "next"), "")')"
n1="$(jget "$TMP/p1.json" 'len(b.get("entry", []))')"
if [[ "$n1" == 10 && "$next" == *"_getpages="* ]]; then
  ok "_count=10 -> 10 entries and next link $next"
  curl -s "$next" -o "$TMP/p2.json"
  n2="$(jget "$TMP/p2.json" 'len(b.get("entry", []))')"
  [[ "$n2" == 10 ]] && ok "next page has 10 entries" || bad "next page has $n2 entries"
else
  bad "paging: $n1 entries, next='$next'"
fi

# 5. no reuse of cached searches: identical searches get distinct paging handles
curl -s "$BASE/$Q" -o "$TMP/p1b.json"
next_b="$(jget "$TMP/p1b.json" 'next((l["url"] for l in b.get("link", []) if l["relation"] == "next"), "")')"
uuid_a="$(sed -n 's/.*_getpages=\([^&]*\).*/\1/p' <<<"$next")"
uuid_b="$(sed -n 's/.*_getpages=\([^&]*\).*/\1/p' <<<"$next_b")"
if [[ -n "$uuid_a" && -n "$uuid_b" && "$uuid_a" != "$uuid_b" ]]; then
  ok "identical searches get different _getpages ids ($uuid_a vs $uuid_b)"
else
  bad "identical searches share _getpages id '$uuid_a' / '$uuid_b'"
fi

# 6. X-Forwarded-* -> links point at the proxy
curl -s -H 'X-Forwarded-Host: proxy.example:8443' -H 'X-Forwarded-Proto: https' "$BASE/$Q" -o "$TMP/fw.json"
bad_links="$(jget "$TMP/fw.json" '[u for u in [l["url"] for l in b.get("link", [])] + [e["fullUrl"] for e in b.get("entry", [])] if not (u + "/").startswith(("https://proxy.example:8443/fhir/", "https://proxy.example:8443/fhir?"))]')"
self_link="$(jget "$TMP/fw.json" 'b["link"][0]["url"]')"
if [[ "$bad_links" == "[]" ]]; then
  ok "X-Forwarded-Host/Proto: all links and fullUrls start with https://proxy.example:8443/fhir ($self_link)"
else
  bad "X-Forwarded links not rewritten: $bad_links"
fi
curl -s -H 'X-Forwarded-Host: proxy.example' -H 'X-Forwarded-Proto: https' -H 'X-Forwarded-Port: 9443' \
  -H 'X-Forwarded-Prefix: /eds/fhir' "$BASE/$Q" -o "$TMP/fw2.json"
self_link="$(jget "$TMP/fw2.json" 'b["link"][0]["url"]')"
[[ "$self_link" == https://proxy.example:9443/eds/fhir/AuditEvent* ]] \
  && ok "X-Forwarded-Port/Prefix honoured ($self_link)" || bad "X-Forwarded-Port/Prefix: $self_link"

# 7. custom SearchParameter
sp_exists="$(curl -s "$BASE/SearchParameter?code=message-id&base=AuditEvent&_summary=count" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("total", 0))')"
if [[ "$sp_exists" == 0 ]]; then
  cat > "$TMP/sp.json" <<'EOF'
{"resourceType": "SearchParameter", "url": "http://medcomehmi.dk/ig/eds/SearchParameter/test-message-id",
 "name": "TestMessageId", "status": "active", "description": "smoke test", "code": "message-id",
 "base": ["AuditEvent"], "type": "string",
 "expression": "AuditEvent.entity.where(type.code = 'ehmiMessage').what.identifier.value"}
EOF
  t0="$(now)"
  code="$(post SearchParameter "$TMP/sp.json")"
  [[ "$code" == 201 ]] && ok "SearchParameter message-id created" || bad "SearchParameter create -> $code"
  active=""
  misses=0
  for _ in $(seq 1 1200); do
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/AuditEvent?message-id=probe&_summary=count")" == 200 ]]; then
      active=1; break
    fi
    misses=$((misses + 1))
    sleep 0.1
  done
  [[ -n "$active" ]] && ok "message-id usable $(elapsed "$t0") s after POST SearchParameter ($misses probe(s) answered 400 first)" \
    || bad "message-id still 400 after 120 s"
else
  ok "a message-id SearchParameter already exists; not creating the test one"
fi
mid="msg-$RUN"
audit_event "$RUN-sp" "$mid" > "$TMP/m.json"
code="$(post AuditEvent "$TMP/m.json")"
mid_id="$(jget "$TMP/resp.json" 'b["id"]')"
curl -s "$BASE/AuditEvent?message-id=$mid" -o "$TMP/ms.json"
if jget "$TMP/ms.json" '[e["resource"]["id"] for e in b.get("entry", [])]' | grep -q "'$mid_id'"; then
  ok "AuditEvent/$mid_id found by ?message-id=$mid"
else
  bad "?message-id=$mid did not find AuditEvent/$mid_id: $(head -c 300 "$TMP/ms.json")"
fi

echo "$passed passed, $failed failed"
[[ "$failed" == 0 ]]

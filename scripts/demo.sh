#!/usr/bin/env bash
# Run eds-proxy in front of a real HAPI FHIR server with a demo set-up (DEVELOPMENT ONLY):
# dev PKI, dev token issuer, HAPI (native, from Maven Central), the proxy; then stations,
# a citizen and a supporter use it. `--keep` leaves everything running afterwards.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="$ROOT/demo-run"
KEEP=0
[[ "${1:-}" == "--keep" ]] && KEEP=1
export HAPI_PORT="${HAPI_PORT:-8090}" HAPI_DATA_DIR="$RUN/hapi"

stop_all() {
  for p in proxy issuer; do
    [[ -f "$RUN/$p.pid" ]] && kill "$(cat "$RUN/$p.pid")" 2>/dev/null || true
    rm -f "$RUN/$p.pid"
  done
  bash "$ROOT/hapi-compose/hapi-native.sh" stop >/dev/null 2>&1 || true
}
if [[ "${1:-}" == "--stop" ]]; then stop_all; echo "demo stopped"; exit 0; fi

cd "$ROOT"
(( KEEP )) || trap stop_all EXIT
echo "== Building eds-proxy"
cargo build --quiet
BIN="$ROOT/target/debug/eds-proxy"
stop_all
rm -rf "$RUN" && mkdir -p "$RUN"
"$BIN" dev pki --out "$RUN/pki"

echo "== Starting HAPI FHIR (native) on port $HAPI_PORT"
bash hapi-compose/hapi-native.sh start
bash hapi-compose/hapi-native.sh bootstrap-search-parameters "http://127.0.0.1:$HAPI_PORT/fhir" 2>/dev/null

cat > "$RUN/eds-proxy.toml" <<TOML
[listen]
address = "127.0.0.1:8443"
server_cert = "pki/server.crt"
server_key = "pki/server.key"
client_ca = "pki/ca.crt"
[admin]
address = "127.0.0.1:9100"
[upstream]
base_url = "http://127.0.0.1:$HAPI_PORT/fhir"
[public]
base_url = "https://localhost:8443/fhir"
[token]
issuer = "https://localhost:9443"
audience = ["eds"]
jwks_url = "https://localhost:9443/jwks"
jwks_ca = "pki/ca.crt"
[access]
cvr_directory = "$ROOT/config/cvr-directory.example.toml"
[paging]
secret_file = "pki/page-secret"
[audit]
# MinLog audit records (docs/audit-record.md): one JSON line per supporter answer about citizens.
path = "audit.jsonl"
TOML
cat > "$RUN/dev-issuer.toml" <<TOML
listen = "127.0.0.1:9443"
issuer = "https://localhost:9443"
audience = "eds"
server_cert = "pki/server.crt"
server_key = "pki/server.key"
client_ca = "pki/ca.crt"
signing_key = "pki/issuer.key"
enrolment = "enrolment.json"
TOML
python3 - "$RUN/enrolment.json" <<'PY'
import json, sys
aarhus = {"name": "Aarhus Kommune", "sor": "937961000016000", "gln": "GLN-1234"}
stjerne = {"name": "Lægerne Stjernepladsen I/S", "sor": "698141000016008", "gln": "GLN-12345"}
stations = [("Cura-EUA", "Systematic", aarhus), ("Cura-MSH", "Systematic", aarhus),
            ("KvalitetsIT-AP", "KvalitetsIT", aarhus), ("MultiMed-MSH", "MultiMed", stjerne),
            ("MultiMed-AP", "MultiMed", stjerne), ("EGClinea-EUA", "EG", stjerne)]
json.dump([{"client_id": d.lower(), "client_name": d, "token_endpoint_auth_method": "tls_client_auth",
            "grant_types": ["client_credentials"], "tls_client_auth_subject_dn": f"subject=CN={d}, O={o}",
            "scope": "EDS system/AuditEvent.crs", "ehmi:eer:device_id": d, "ehmi:org_context": [org]}
           for d, o, org in stations], open(sys.argv[1], "w"), indent=2, ensure_ascii=False)
PY

echo "== Starting the dev token issuer (https://localhost:9443) and eds-proxy (https://localhost:8443/fhir)"
"$BIN" dev issuer --config "$RUN/dev-issuer.toml" > "$RUN/issuer.log" 2>&1 & echo $! > "$RUN/issuer.pid"
for _ in $(seq 1 100); do
  curl -s --cacert "$RUN/pki/ca.crt" https://localhost:9443/jwks >/dev/null 2>&1 && break
  sleep 0.2
done
"$BIN" check-config "$RUN/eds-proxy.toml" >/dev/null
"$BIN" --config "$RUN/eds-proxy.toml" > "$RUN/proxy.log" 2>&1 & echo $! > "$RUN/proxy.pid"
for _ in $(seq 1 100); do
  curl -sf http://127.0.0.1:9100/readyz >/dev/null 2>&1 && break
  sleep 0.2
done
curl -sf http://127.0.0.1:9100/readyz >/dev/null || { tail -20 "$RUN/proxy.log"; exit 1; }

status=0
EDS_PROXY_BIN="$BIN" DEMO_DIR="$RUN" python3 scripts/demo_client.py || status=$?

if (( KEEP )); then
  cat <<MSG

The stack keeps running: HAPI http://127.0.0.1:$HAPI_PORT/fhir, issuer https://localhost:9443,
proxy https://localhost:8443/fhir, metrics http://127.0.0.1:9100/metrics, readiness
http://127.0.0.1:9100/readyz, MinLog audit records in demo-run/audit.jsonl, the log (access log
included) in demo-run/proxy.log. Try, for example:
  TOKEN=\$(curl -s --cacert demo-run/pki/ca.crt --cert demo-run/pki/cura-eua.crt --key demo-run/pki/cura-eua.key \\
    -d grant_type=client_credentials -d client_id=cura-eua \\
    --data-urlencode 'scope=EDS system/AuditEvent.crs SOR:937961000016000 GLN:GLN-1234' \\
    https://localhost:9443/token | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -s --cacert demo-run/pki/ca.crt --cert demo-run/pki/cura-eua.crt --key demo-run/pki/cura-eua.key \\
    -H "Authorization: Bearer \$TOKEN" 'https://localhost:8443/fhir/AuditEvent?message-id=MSG1234567890'
Stop it with: scripts/demo.sh --stop
MSG
else
  stop_all
  echo "(stack stopped; run scripts/demo.sh --keep to keep it running)"
fi
exit $status

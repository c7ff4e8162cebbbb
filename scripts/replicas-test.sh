#!/usr/bin/env bash
# Replicas fail over with nothing lost: HAPI FHIR on PostgreSQL, two eds-proxy replicas behind
# HAProxy (TLS passthrough), one stopped with SIGTERM mid-run and restarted (see
# scripts/replicas_test.py). Installs PostgreSQL and HAProxy (Debian packages) if missing;
# holds /tmp/hapi-run.lock so only one HAPI FHIR runs on the machine at a time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || missing+=(postgresql)
command -v haproxy >/dev/null || missing+=(haproxy)
command -v runuser >/dev/null || missing+=(util-linux)
if (( ${#missing[@]} )); then
  echo "== installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# The default build: the replicas run the proxy, the test also uses `dev pki` and `dev issuer`.
cargo build --quiet --bin eds-proxy
bash hapi-compose/hapi-native.sh build
exec flock /tmp/hapi-run.lock python3 scripts/replicas_test.py

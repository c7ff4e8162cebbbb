#!/bin/sh
# One-shot init container of docker-compose.yml (runs in curlimages/curl: POSIX sh + curl only).
# Waits until HAPI answers /metadata, then stores every SearchParameter JSON file with an
# idempotent PUT SearchParameter/<id> (or a POST when the file has no id).
# HAPI activates a SearchParameter stored through its own REST API before the 201/200 is sent
# (the local SearchParamRegistry is force-refreshed after commit), so nothing to wait for after.
# Usage: compose-init.sh BASE_URL DIR
set -eu

BASE="${1:?usage: compose-init.sh BASE_URL DIR}"
DIR="${2:?usage: compose-init.sh BASE_URL DIR}"
TIMEOUT="${HAPI_START_TIMEOUT:-600}"

echo "waiting for $BASE/metadata (up to $TIMEOUT s)"
waited=0
until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$BASE/metadata" || true)" = 200 ]; do
  if [ "$waited" -ge "$TIMEOUT" ]; then
    echo "HAPI did not answer within $TIMEOUT s" >&2
    exit 1
  fi
  sleep 5
  waited=$((waited + 5))
done
echo "HAPI is up after ~$waited s"

found=0
for f in "$DIR"/*.json; do
  [ -e "$f" ] || continue
  found=$((found + 1))
  # top-level "id" of the resource: the first "id" member in the file (files are written with
  # resourceType and id first)
  id="$(tr -d '\n\r' < "$f" | sed -n 's/^[^{]*{[^{}]*"id"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p')"
  if [ -n "$id" ]; then
    code="$(curl -s -o /tmp/resp.json -w '%{http_code}' -X PUT -H 'Content-Type: application/fhir+json' \
      --data-binary @"$f" "$BASE/SearchParameter/$id")"
  else
    code="$(curl -s -o /tmp/resp.json -w '%{http_code}' -X POST -H 'Content-Type: application/fhir+json' \
      --data-binary @"$f" "$BASE/SearchParameter")"
  fi
  case "$code" in
    200 | 201) echo "$(basename "$f"): HTTP $code" ;;
    *)
      echo "$(basename "$f"): HTTP $code" >&2
      cat /tmp/resp.json >&2
      exit 1
      ;;
  esac
done
echo "stored $found SearchParameter file(s) from $DIR"

#!/usr/bin/env bash
# Build, start, stop and seed the stock HAPI FHIR JPA server (R4) without Docker.
# See hapi-compose/README.md. Usage: hapi-native.sh {build|start|stop|status|bootstrap-search-parameters BASE_URL}
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NATIVE_DIR="$HERE/native"
JAR="$NATIVE_DIR/target/hapi-native.jar"
STAMP="$NATIVE_DIR/target/hapi-native.jar.srchash"
SP_DIR="$HERE/search-parameters"

HAPI_PORT="${HAPI_PORT:-8090}"
HAPI_START_TIMEOUT="${HAPI_START_TIMEOUT:-300}"
HAPI_SP_TIMEOUT="${HAPI_SP_TIMEOUT:-120}"
STATE_ROOT="${TMPDIR:-/tmp}"
# Remembers which data dir the server on a port uses, so stop/status work without HAPI_DATA_DIR.
PORT_STATE="$STATE_ROOT/hapi-native-$HAPI_PORT.datadir"
BASE_URL="http://127.0.0.1:$HAPI_PORT/fhir"

log() { printf 'hapi-native: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

usage() {
  cat >&2 <<EOF
usage: $(basename "$0") COMMAND
  build                              build native/target/hapi-native.jar if missing or sources changed
  start                              build if needed, start in background, wait for /fhir/metadata, print base URL
  stop                               stop the server (TERM, KILL after 20 s)
  status                             show whether the server runs (exit 0 up, 1 not answering, 3 stopped)
  bootstrap-search-parameters URL    create search-parameters/*.json on URL and wait until they are active
environment: HAPI_PORT (8090), HAPI_DATA_DIR (fresh dir under \${TMPDIR:-/tmp}), HAPI_START_TIMEOUT (300),
             HAPI_SP_TIMEOUT (120), HAPI_JAVA_OPTS (extra JVM options), HAPI_DB_URL / HAPI_DB_USER /
             HAPI_DB_PASSWORD, SPRING_PROFILES_ACTIVE=postgres
EOF
}

# ---------------------------------------------------------------- build
source_hash() {
  (cd "$NATIVE_DIR" && find pom.xml src -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
}

cmd_build() {
  mkdir -p "$NATIVE_DIR/target"
  # Several test processes may call start at once: build under a lock, in a subshell so the
  # lock's file descriptor is closed again before java is started.
  (
    if command -v flock >/dev/null; then
      exec 9>"$NATIVE_DIR/target/.build.lock"
      flock 9
    fi
    build_if_needed
  )
}

build_if_needed() {
  local want have=""
  want="$(source_hash)"
  [[ -f "$STAMP" ]] && have="$(cat "$STAMP")"
  if [[ -f "$JAR" && "$want" == "$have" ]]; then
    log "jar is up to date: $JAR"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (Maven 3.8+ and Java 17+ are needed to build)"
  log "building $JAR (first build downloads ~300 MB into ~/.m2) ..."
  local t0=$SECONDS
  local blog="$NATIVE_DIR/target/mvn-build.log"
  if ! (cd "$NATIVE_DIR" && mvn -q -B -Dstyle.color=never package -DskipTests) >"$blog" 2>&1; then
    tail -n 60 "$blog" >&2
    die "maven build failed (full output: $blog)"
  fi
  [[ -f "$JAR" ]] || die "maven finished but $JAR is missing"
  echo "$want" > "$STAMP"
  log "built in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------- helpers
data_dir_for_port() {
  if [[ -n "${HAPI_DATA_DIR:-}" ]]; then
    echo "$HAPI_DATA_DIR"
  elif [[ -f "$PORT_STATE" ]]; then
    cat "$PORT_STATE"
  fi
}

# pid of our server in data dir $1 if it is alive and really is hapi-native.jar
live_pid() {
  local dir="$1" pid
  [[ -n "$dir" && -f "$dir/hapi.pid" ]] || return 1
  pid="$(cat "$dir/hapi.pid")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r "/proc/$pid/cmdline" ]] && ! tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q 'hapi-native.jar'; then
    return 1 # pid was reused by something else
  fi
  echo "$pid"
}

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time "${2:-5}" "$1" || true; }

# ---------------------------------------------------------------- start
cmd_start() {
  cmd_build
  command -v java >/dev/null || die "java not found (Java 17+ needed)"
  command -v curl >/dev/null || die "curl not found"

  local old_dir old_pid
  old_dir="$(data_dir_for_port)"
  if old_pid="$(live_pid "$old_dir")"; then
    die "already running on port $HAPI_PORT (pid $old_pid, data $old_dir); run '$0 stop' first"
  fi
  if [[ "$(http_code "$BASE_URL/metadata" 2)" != "000" ]]; then
    die "something already answers on 127.0.0.1:$HAPI_PORT"
  fi

  local dir="${HAPI_DATA_DIR:-}"
  if [[ -z "$dir" ]]; then
    dir="$(mktemp -d "$STATE_ROOT/hapi-native.XXXXXX")"
  fi
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  local logf="$dir/hapi.log"

  log "starting HAPI FHIR on $BASE_URL (data: $dir, log: $logf)"
  # shellcheck disable=SC2086 # HAPI_JAVA_OPTS is a list of options
  HAPI_PORT="$HAPI_PORT" HAPI_DATA_DIR="$dir" nohup java -Xmx1g ${HAPI_JAVA_OPTS:-} -jar "$JAR" \
    </dev/null >"$logf" 2>&1 &
  local pid=$!
  disown "$pid" 2>/dev/null || true # no job-control chatter if we have to kill it below
  echo "$pid" > "$dir/hapi.pid"

  local t0=$SECONDS code
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      log "HAPI exited during start-up; last 80 log lines:"
      tail -n 80 "$logf" >&2 || true
      rm -f "$dir/hapi.pid"
      exit 1
    fi
    code="$(http_code "$BASE_URL/metadata" 10)"
    # The 200 must come from our process: another server may have taken the port meanwhile
    # (ours then exits with "Port ... already in use", caught above on the next pass).
    if [[ "$code" == "200" ]] && grep -q 'Started HapiLauncher' "$logf" && kill -0 "$pid" 2>/dev/null; then
      break
    fi
    if (( SECONDS - t0 >= HAPI_START_TIMEOUT )); then
      log "no 200 from $BASE_URL/metadata after ${HAPI_START_TIMEOUT} s (last status $code); last 80 log lines:"
      tail -n 80 "$logf" >&2 || true
      log "stopping pid $pid"
      stop_pid "$pid"
      rm -f "$dir/hapi.pid"
      exit 1
    fi
    sleep 1
  done
  echo "$dir" > "$PORT_STATE"
  log "up after $((SECONDS - t0)) s (pid $pid)"
  echo "$BASE_URL"
}

# ---------------------------------------------------------------- stop / status
stop_pid() {
  local pid="$1" i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 20; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 1
  done
  log "pid $pid still alive after 20 s, sending KILL"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 1
}

cmd_stop() {
  local dir pid
  dir="$(data_dir_for_port)"
  if ! pid="$(live_pid "$dir")"; then
    log "not running (port $HAPI_PORT${dir:+, data $dir})"
    [[ -n "$dir" ]] && rm -f "$dir/hapi.pid"
    return 0
  fi
  log "stopping pid $pid"
  stop_pid "$pid"
  rm -f "$dir/hapi.pid"
  if [[ -f "$PORT_STATE" && "$(cat "$PORT_STATE")" == "$dir" ]]; then
    rm -f "$PORT_STATE"
  fi
  log "stopped (data kept in $dir)"
}

cmd_status() {
  local dir pid
  dir="$(data_dir_for_port)"
  if ! pid="$(live_pid "$dir")"; then
    echo "stopped (port $HAPI_PORT)"
    return 3
  fi
  if [[ "$(http_code "$BASE_URL/metadata" 5)" == "200" ]]; then
    echo "running pid=$pid base=$BASE_URL data=$dir"
    return 0
  fi
  echo "starting or unresponsive pid=$pid base=$BASE_URL data=$dir"
  return 1
}

# ---------------------------------------------------------------- search parameters
# Prints "id<TAB>url<TAB>code<TAB>type<TAB>base1,base2" for a SearchParameter JSON file.
sp_fields() {
  python3 - "$1" <<'PY'
import json, sys
sp = json.load(open(sys.argv[1], encoding="utf-8"))
if sp.get("resourceType") != "SearchParameter":
    sys.exit("not a SearchParameter: " + sys.argv[1])
if not sp.get("code") or not sp.get("base"):
    sys.exit("SearchParameter without code/base: " + sys.argv[1])
print("\t".join([sp.get("id", ""), sp.get("url", ""), sp["code"], sp.get("type", ""), ",".join(sp["base"])]))
PY
}

# A syntactically valid value for a search of the given type (the result set does not matter).
probe_value() {
  case "$1" in
    token) echo "probe" ;;
    reference) echo "Basic/probe" ;;
    date) echo "2000-01-01" ;;
    number) echo "1" ;;
    quantity) echo "1" ;;
    uri) echo "urn:probe" ;;
    special) echo "probe" ;;
    *) echo "probe" ;;
  esac
}

cmd_bootstrap() {
  local base="${1:-}"
  [[ -n "$base" ]] || die "usage: $0 bootstrap-search-parameters BASE_URL"
  base="${base%/}"
  command -v curl >/dev/null || die "curl not found"
  command -v python3 >/dev/null || die "python3 not found (used to read the JSON files)"

  shopt -s nullglob
  local files=("$SP_DIR"/*.json)
  shopt -u nullglob
  if (( ${#files[@]} == 0 )); then
    log "no SearchParameter files in $SP_DIR; nothing to do"
    return 0
  fi

  local f fields id url code type bases code_http resp probes=()
  resp="$(mktemp)"
  trap 'rm -f "$resp"' RETURN
  for f in "${files[@]}"; do
    fields="$(sp_fields "$f")" || die "cannot read $f"
    IFS=$'\t' read -r id url code type bases <<<"$fields"
    if [[ -n "$id" ]]; then
      # update-as-create with the client-assigned id: idempotent
      code_http="$(curl -s -o "$resp" -w '%{http_code}' -X PUT \
        -H 'Content-Type: application/fhir+json' --data-binary @"$f" "$base/SearchParameter/$id")"
    elif [[ -n "$url" ]]; then
      # conditional create on the canonical url: idempotent
      code_http="$(curl -s -o "$resp" -w '%{http_code}' -X POST \
        -H 'Content-Type: application/fhir+json' -H "If-None-Exist: url=$url" \
        --data-binary @"$f" "$base/SearchParameter")"
    else
      code_http="$(curl -s -o "$resp" -w '%{http_code}' -X POST \
        -H 'Content-Type: application/fhir+json' --data-binary @"$f" "$base/SearchParameter")"
    fi
    case "$code_http" in
      200 | 201) log "$(basename "$f"): SearchParameter '$code' on $bases stored (HTTP $code_http)" ;;
      *)
        log "$(basename "$f"): HTTP $code_http"
        cat "$resp" >&2
        exit 1
        ;;
    esac
    local b
    IFS=',' read -r -a blist <<<"$bases"
    for b in "${blist[@]}"; do
      probes+=("$b?$code=$(probe_value "$type")&_summary=count")
    done
  done

  # The JPA SearchParamRegistry refreshes on its next scheduled pass (every 10 s locally).
  local t0=$SECONDS p pending
  while :; do
    pending=()
    for p in "${probes[@]}"; do
      [[ "$(http_code "$base/$p" 10)" == "200" ]] || pending+=("$p")
    done
    if (( ${#pending[@]} == 0 )); then
      log "all ${#probes[@]} search parameter(s) active after $((SECONDS - t0)) s"
      return 0
    fi
    if (( SECONDS - t0 >= HAPI_SP_TIMEOUT )); then
      log "still not usable after ${HAPI_SP_TIMEOUT} s: ${pending[*]}"
      exit 1
    fi
    probes=("${pending[@]}")
    sleep 1
  done
}

# ---------------------------------------------------------------- main
case "${1:-}" in
  build) cmd_build ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  bootstrap-search-parameters) shift; cmd_bootstrap "$@" ;;
  -h | --help | help) usage ;;
  *) usage; exit 2 ;;
esac

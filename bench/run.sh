#!/usr/bin/env bash
# The eds-proxy benchmark (issue 10; PERFORMANCE.md says how to read it). One command:
#
#   bash bench/run.sh            # full run: c = 1 16 64 256, 10 s per run, two rounds (≤ 15 min)
#   bash bench/run.sh --quick    # harness check: c = 16, 2 s per run, one round (~2 min)
#   --hapi                       # also the same search against real HAPI FHIR (native jar, under
#                                # flock /tmp/hapi-run.lock): eds-proxy's share of the p50
#   --perf                       # also profile eds-proxy (perf record -e cpu-clock, DWARF call
#                                # graphs) during its first search/read/create run at c = 16:
#                                # bench-run/perf-*.txt (share per kind of work, top symbols) and
#                                # bench-run/flame-*.svg (flamegraphs, inferno from crates.io)
#   EDS_PROXY_BIN=path           # measure another eds-proxy build (e.g. the one before a change);
#                                # the passthrough and the clients still come from target/release
#
# It starts, on this machine:
#   origin       nginx serving labelled FHIR JSON (bench/fixtures.py: a 20-entry searchset of
#                IG examples labelled for the benchmark station, a 1 KB read, a 201 for a
#                12 KB create)                                              127.0.0.1:18080
#   nginx        nginx (Debian package) as a plain mTLS reverse proxy       127.0.0.1:18441
#   passthrough  a plain Pingora 0.9.1 ProxyHttp passthrough with mTLS
#                (examples/passthrough.rs, the same Pingora as eds-proxy)   127.0.0.1:18442
#   eds-proxy    release build, every check on, token cache on, access log on,
#                JWKS from a file                                           127.0.0.1:18443
# pinned: origin and load generator on core 0, the proxy under test alone on core 1 (all
# three proxies run the whole time but only the one under load is busy; each has one
# worker). Load generator: oha (crates.io) with the station's client certificate and token,
# keep-alive, HTTP/1.1. Full handshakes and 1,000 idle connections: examples/bench_client.rs
# (oha resumes TLS sessions and cannot hold idle connections).
#
# Prints req/s, p50/p99, CPU per request (utime+stime from /proc/PID/stat over the run),
# the proxy core's busy share and RSS per proxy; the ratios eds-proxy/nginx and
# eds-proxy/passthrough; and met / not met per target. Checks before and after the load that
# eds-proxy answered 200/201 with every entry, that another station's token gets none of them
# (so the check runs), and that every answer during the load had the checked size.
# Results: bench-run/results.jsonl and bench-run/report.md (BENCH_DIR to change the folder).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="${BENCH_DIR:-$ROOT/bench-run}"
QUICK=0
BUILD=1
PERF=0
HAPI=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --no-build) BUILD=0 ;;
    --perf) PERF=1 ;;
    --hapi) HAPI=1 ;;
    *) echo "usage: bash bench/run.sh [--quick] [--perf] [--hapi] [--no-build]" >&2; exit 2 ;;
  esac
done
if (( QUICK )); then
  DURATION=2; CONCURRENCY="16"; ROUNDS=1; HS_SECONDS=2; TOKEN_ITERATIONS=200
else
  DURATION=10; CONCURRENCY="1 16 64 256"; ROUNDS=2; HS_SECONDS=10; TOKEN_ITERATIONS=2000
fi
# Overrides, e.g. BENCH_CONCURRENCY="64" BENCH_DURATION=5 BENCH_ROUNDS=3.
DURATION=${BENCH_DURATION:-$DURATION}
CONCURRENCY=${BENCH_CONCURRENCY:-$CONCURRENCY}
ROUNDS=${BENCH_ROUNDS:-$ROUNDS}
HS_SECONDS=${BENCH_DURATION:-$HS_SECONDS}
HOLD=1000
LOAD_CPU=0 PROXY_CPU=1
ORIGIN_PORT=18080
declare -A PORT=([nginx]=18441 [passthrough]=18442 [eds-proxy]=18443)
ADMIN=127.0.0.1:19100
PROXIES=(nginx passthrough eds-proxy)
export PATH="$HOME/.cargo/bin:$PATH"

if [[ "$(nproc)" -lt 2 ]]; then echo "needs 2 cores (origin+load on 0, proxy on 1)" >&2; exit 1; fi

# ---------------------------------------------------------------- what it needs
missing=()
command -v nginx >/dev/null || missing+=(nginx-light)
command -v python3 >/dev/null || missing+=(python3)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
command -v taskset >/dev/null || missing+=(util-linux)
(( PERF )) && ! command -v perf >/dev/null && missing+=(linux-perf)
if (( ${#missing[@]} )); then
  echo "== installing ${missing[*]} (Debian)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
OHA_VERSION=1.16.0
if ! command -v oha >/dev/null || [[ "$(oha --version 2>/dev/null)" != *"$OHA_VERSION"* ]]; then
  echo "== installing oha $OHA_VERSION (crates.io; presents client certificates: --cert/--key)"
  cargo install oha --version "$OHA_VERSION" --locked --quiet
fi
INFERNO_VERSION=0.12
if (( PERF )) && ! command -v inferno-flamegraph >/dev/null; then
  echo "== installing inferno $INFERNO_VERSION (crates.io; folds perf stacks, draws flamegraphs)"
  cargo install inferno --version "~$INFERNO_VERSION" --locked --quiet
fi

cd "$ROOT"
if (( BUILD )); then
  echo "== building eds-proxy, the passthrough and the bench client (release)"
  cargo build --release --quiet --bin eds-proxy --example passthrough --example bench_client
  cargo bench --quiet --bench tokens --no-run 2>/dev/null
fi
BIN="${EDS_PROXY_BIN:-$ROOT/target/release/eds-proxy}"
PASS="$ROOT/target/release/examples/passthrough"
CLIENT="$ROOT/target/release/examples/bench_client"

# ---------------------------------------------------------------- set-up
pids=()
# SIGINT: the fast stop of all three (Pingora waits out its grace period on SIGTERM).
stop_all() {
  local p
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
trap stop_all EXIT
rm -rf "$RUN" && mkdir -p "$RUN"/{origin,nginx-proxy,tmp}
ulimit -n 16384 2>/dev/null || ulimit -n 4096

"$BIN" dev pki --out "$RUN/pki" >/dev/null
PKI="$RUN/pki"
python3 bench/fixtures.py tests/fixtures/ig "$RUN/origin" "https://localhost:${PORT[eds-proxy]}/fhir"
ISSUER=https://localhost:9443
mint() { # CERT DEVICE SOR GLN ORG
  "$BIN" dev mint-token --key "$PKI/issuer.key" --cert "$PKI/$1.crt" --issuer "$ISSUER" --claims \
    "{\"scope\":\"EDS system/AuditEvent.crs SOR:$3 GLN:$4\",\"ehmi:eer:device_id\":\"$2\",\"ehmi:org_context\":{\"name\":\"$5\",\"sor\":\"$3\",\"gln\":\"$4\"}}"
}
TOKEN=$(mint cura-eua Cura-EUA 937961000016000 GLN-1234 "Aarhus Kommune")
OTHER_TOKEN=$(mint multimed-msh MultiMed-MSH 698141000016008 GLN-12345 "Lægerne Stjernepladsen I/S")

# The origin: static answers, the 201 through error_page (nginx's static handler answers
# POST with 405; error_page turns it into a GET of the stored record, status 201).
cat > "$RUN/origin.conf" <<NGINX
worker_processes 1;
daemon off;
pid $RUN/origin.pid;
error_log $RUN/origin.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  default_type application/fhir+json;
  keepalive_requests 1000000;
  client_body_temp_path $RUN/tmp/origin-body;
  client_body_buffer_size 16k;
  server {
    listen 127.0.0.1:$ORIGIN_PORT;
    root $RUN/origin;
    location = /fhir/AuditEvent { error_page 405 =201 /created; try_files /searchset.json =404; }
    location = /fhir/AuditEvent/bench-read { try_files /read.json =404; }
    location = /created {
      internal;
      add_header Location "http://127.0.0.1:$ORIGIN_PORT/fhir/AuditEvent/bench-created/_history/1";
      try_files /created.json =404;
    }
  }
}
NGINX

# nginx as a plain mTLS reverse proxy: one worker, upstream keep-alive, a body buffer that
# holds the 12 KB create and proxy buffers that hold the 80 KB searchset (else it spools
# to disk), access log on like eds-proxy's.
cat > "$RUN/nginx-proxy.conf" <<NGINX
worker_processes 1;
daemon off;
pid $RUN/nginx-proxy.pid;
error_log $RUN/nginx-proxy/error.log warn;
events { worker_connections 4096; }
http {
  access_log $RUN/nginx-proxy/access.log;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  client_body_temp_path $RUN/tmp/proxy-body;
  proxy_temp_path $RUN/tmp/proxy-temp;
  client_body_buffer_size 16k;
  client_max_body_size 1m;
  proxy_buffer_size 16k;
  proxy_buffers 32 8k;
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 256; }
  server {
    listen 127.0.0.1:${PORT[nginx]} ssl;
    ssl_certificate $PKI/server.crt;
    ssl_certificate_key $PKI/server.key;
    ssl_client_certificate $PKI/ca.crt;
    ssl_verify_client on;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX

# eds-proxy as in production: every check, token cache, access log (RUST_LOG=info), JWKS
# file, one worker thread (it has core 1 to itself).
cat > "$RUN/eds-proxy.toml" <<TOML
[listen]
address = "127.0.0.1:${PORT[eds-proxy]}"
server_cert = "pki/server.crt"
server_key = "pki/server.key"
client_ca = "pki/ca.crt"
[admin]
address = "$ADMIN"
[upstream]
base_url = "http://127.0.0.1:$ORIGIN_PORT/fhir"
# The origin serves static files whatever the query: not a FHIR server, it fails the backend
# conformance probe by design (and /readyz would say so). The benchmark measures the checks.
[upstream.probe]
interval_seconds = 0
[public]
base_url = "https://localhost:${PORT[eds-proxy]}/fhir"
[token]
issuer = "$ISSUER"
audience = ["eds"]
jwks_file = "pki/jwks.json"
[access]
cvr_directory = "$ROOT/config/cvr-directory.example.toml"
[paging]
secret_file = "pki/page-secret"
[server]
threads = 1
TOML
"$BIN" check-config "$RUN/eds-proxy.toml" >/dev/null

echo "== starting origin (core $LOAD_CPU) and the proxies (core $PROXY_CPU)"
taskset -c $LOAD_CPU nginx -e stderr -c "$RUN/origin.conf" -p "$RUN" 2>>"$RUN/origin.error.log" & pids+=($!)
taskset -c $PROXY_CPU nginx -e stderr -c "$RUN/nginx-proxy.conf" -p "$RUN" 2>>"$RUN/nginx-proxy/error.log" & pids+=($!)
NGINX_PID=$!
taskset -c $PROXY_CPU "$PASS" 127.0.0.1:${PORT[passthrough]} "$PKI/server.crt" "$PKI/server.key" "$PKI/ca.crt" \
  127.0.0.1:$ORIGIN_PORT 1 >"$RUN/passthrough.log" 2>&1 & pids+=($!)
PASS_PID=$!
RUST_LOG=info taskset -c $PROXY_CPU "$BIN" --config "$RUN/eds-proxy.toml" >"$RUN/eds-proxy.log" 2>&1 & pids+=($!)
EDS_PID=$!
for _ in $(seq 1 100); do curl -sf "http://$ADMIN/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "http://$ADMIN/readyz" >/dev/null || { tail -20 "$RUN/eds-proxy.log"; exit 1; }
for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$ORIGIN_PORT/" && break; sleep 0.1; done

# Every process of a proxy (nginx: master and its worker).
proc_pids() {
  case "$1" in
    nginx) echo "$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')" ;;
    passthrough) echo "$PASS_PID" ;;
    eds-proxy) echo "$EDS_PID" ;;
  esac
}
cpu_ticks() { # utime + stime (fields 14, 15 of /proc/PID/stat; comm may hold spaces)
  local t=0 p s
  for p in $(proc_pids "$1"); do
    s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    s=${s##*) }
    read -r -a f <<<"$s"
    t=$((t + f[11] + f[12]))
  done
  echo "$t"
}
rss_kib() { # VmRSS and VmHWM summed over the proxy's processes
  local r=0 h=0 p v
  for p in $(proc_pids "$1"); do
    v=$(awk '/^VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0); r=$((r + ${v:-0}))
    v=$(awk '/^VmHWM/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0); h=$((h + ${v:-0}))
  done
  echo "$r $h"
}
CLK_TCK=$(getconf CLK_TCK)
RESULTS="$RUN/results.jsonl"
python3 -c 'import json,sys; print(json.dumps({"kind": "run", "quick": sys.argv[1] == "1", "duration_s": int(sys.argv[2]),
  "concurrency": [int(c) for c in sys.argv[3].split()], "rounds": int(sys.argv[4]), "date": sys.argv[5],
  "commit": sys.argv[6], "cpu": sys.argv[7], "load_before": sys.argv[8]}))' \
  "$QUICK" "$DURATION" "$CONCURRENCY" "$ROUNDS" "$(date -u +%Y-%m-%dT%H:%MZ)" \
  "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  "$(nproc) x $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)" "$(cut -d' ' -f1-3 /proc/loadavg)" > "$RESULTS"
url() { echo "https://localhost:${PORT[$1]}/fhir/$2"; }
CURL=(curl -s --cacert "$PKI/ca.crt" --resolve "localhost:${PORT[eds-proxy]}:127.0.0.1"
      --resolve "localhost:${PORT[nginx]}:127.0.0.1" --resolve "localhost:${PORT[passthrough]}:127.0.0.1")
as_station() { "${CURL[@]}" --cert "$PKI/cura-eua.crt" --key "$PKI/cura-eua.key" -H "Authorization: Bearer $TOKEN" -H "Accept: application/fhir+json" "$@"; }
as_other() { "${CURL[@]}" --cert "$PKI/multimed-msh.crt" --key "$PKI/multimed-msh.key" -H "Authorization: Bearer $OTHER_TOKEN" -H "Accept: application/fhir+json" "$@"; }
metric() { curl -s "http://$ADMIN/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {print s + 0}'; }

# ---------------------------------------------------------------- correctness checks
echo "== checks: every proxy answers; eds-proxy returns every entry to the station, none to another"
declare -A SIZE
for p in "${PROXIES[@]}"; do
  as_station -o "$RUN/check-$p-search.json" -w '%{http_code} %{size_download}\n' "$(url "$p" 'AuditEvent?_count=20')" > "$RUN/check-$p-search.txt"
  as_station -o "$RUN/check-$p-read.json" -w '%{http_code} %{size_download}\n' "$(url "$p" AuditEvent/bench-read)" > "$RUN/check-$p-read.txt"
  as_station -o "$RUN/check-$p-create.json" -D "$RUN/check-$p-create.head" -w '%{http_code} %{size_download}\n' \
    -H "Content-Type: application/fhir+json" --data-binary "@$RUN/origin/create.json" "$(url "$p" AuditEvent)" > "$RUN/check-$p-create.txt"
  for w in search read create; do SIZE[$p-$w]=$(awk '{print $2}' "$RUN/check-$p-$w.txt"); done
done
DROPS_OWN=$(metric eds_proxy_response_check_drops_total)
as_other -o "$RUN/check-other-search.json" -w '%{http_code}\n' "$(url eds-proxy 'AuditEvent?_count=20')" > "$RUN/check-other-search.txt"
DROPS_SEARCH=$(metric eds_proxy_response_check_drops_total)
HIDDEN_BEFORE=$(metric eds_proxy_read_hidden_total)
as_other -o /dev/null -w '%{http_code}\n' "$(url eds-proxy AuditEvent/bench-read)" > "$RUN/check-other-read.txt"
DROPS_BEFORE_LOAD=$(metric eds_proxy_response_check_drops_total)
HIDDEN_AFTER=$(metric eds_proxy_read_hidden_total)
python3 - "$RUN" "${PORT[eds-proxy]}" <<'PY'
import json, sys
run, port = sys.argv[1], sys.argv[2]
expect = json.load(open(f"{run}/origin/expect.json"))
bad = []
def status(name):
    return open(f"{run}/check-{name}.txt").read().split()[0]
for p in ("nginx", "passthrough", "eds-proxy"):
    for w, want in (("search", "200"), ("read", "200"), ("create", "201")):
        if status(f"{p}-{w}") != want:
            bad.append(f"{p} {w}: HTTP {status(p + '-' + w)} (want {want})")
    b = json.load(open(f"{run}/check-{p}-search.json"))
    ids = [e["resource"]["id"] for e in b.get("entry", [])]
    if ids != expect["ids"]:
        bad.append(f"{p} search returned {len(ids)} of {expect['entries']} entries")
b = json.load(open(f"{run}/check-eds-proxy-search.json"))
nxt = [l["url"] for l in b.get("link", []) if l["relation"] == "next"]
if not nxt or "_eds_sig=" not in nxt[0] or not nxt[0].startswith(f"https://localhost:{port}/fhir"):
    bad.append(f"eds-proxy search: next link not re-signed on the public base: {nxt}")
head = open(f"{run}/check-eds-proxy-create.head").read().lower()
if f"location: https://localhost:{port}/fhir/auditevent/bench-created" not in head:
    bad.append("eds-proxy create: Location not rebased to the public base")
o = json.load(open(f"{run}/check-other-search.json"))
if status("other-search") != "200" or o.get("entry"):
    bad.append(f"another station's search: HTTP {status('other-search')}, {len(o.get('entry', []))} entries (want 200, 0)")
if status("other-read") != "404":
    bad.append(f"another station's read: HTTP {status('other-read')} (want 404)")
if bad:
    print("CHECK FAILED:\n  " + "\n  ".join(bad)); sys.exit(1)
print(f"  ok: all three proxies 200/200/201; eds-proxy: station sees {expect['entries']} of "
      f"{expect['entries']} entries, next link re-signed, Location rebased; another station: "
      f"search 200 with 0 entries, read 404")
PY
# The drop counter: nothing for the station's own answers, 20 for the other station's
# search (every entry); its read (answered 404) is a hidden read, counted apart.
if [[ "$DROPS_OWN $DROPS_SEARCH $DROPS_BEFORE_LOAD $HIDDEN_BEFORE $HIDDEN_AFTER" != "0 20 20 0 1" ]]; then
  echo "CHECK FAILED: eds_proxy_response_check_drops_total went $DROPS_OWN -> $DROPS_SEARCH -> $DROPS_BEFORE_LOAD (want 0 -> 20 -> 20), eds_proxy_read_hidden_total $HIDDEN_BEFORE -> $HIDDEN_AFTER (want 0 -> 1)"; exit 1
fi
echo "  ok: eds_proxy_response_check_drops_total 0 -> 20 (other station's search), eds_proxy_read_hidden_total 0 -> 1 (its read)"

record() { # JSON line into results.jsonl
  echo "$1" >> "$RESULTS"
}

# ---------------------------------------------------------------- idle connections
echo "== RSS with $HOLD idle keep-alive mTLS connections (one read each, then held)"
for p in "${PROXIES[@]}"; do
  read -r base_rss _ <<<"$(rss_kib "$p")"
  rm -f "$RUN/hold-$p.err"
  taskset -c $LOAD_CPU "$CLIENT" hold "127.0.0.1:${PORT[$p]}" "$PKI/ca.crt" "$PKI/cura-eua.crt" "$PKI/cura-eua.key" \
    /fhir/AuditEvent/bench-read "$TOKEN" "$HOLD" 4 >"$RUN/hold-$p.json" 2>"$RUN/hold-$p.err" &
  cpid=$!
  for _ in $(seq 1 600); do grep -q '^held' "$RUN/hold-$p.err" 2>/dev/null && break; sleep 0.1; done
  sleep 1
  read -r held_rss _ <<<"$(rss_kib "$p")"
  wait "$cpid"
  record "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(json.dumps({"kind":"hold","proxy":sys.argv[2],"base_rss_kib":int(sys.argv[3]),"held_rss_kib":int(sys.argv[4]),**d}))' \
    "$RUN/hold-$p.json" "$p" "$base_rss" "$held_rss")"
  printf '  %-12s RSS %6d KiB before, %6d KiB holding %s (still open at the end: %s)\n' "$p" "$base_rss" "$held_rss" \
    "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["held"])' "$RUN/hold-$p.json")" \
    "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["still_open"])' "$RUN/hold-$p.json")"
  sleep 1
done

# ---------------------------------------------------------------- load
oha_run() { # PROXY WORKLOAD CONCURRENCY SECONDS ROUND
  local p=$1 w=$2 c=$3 d=$4 round=$5 args=() t0 t1 start end
  case "$w" in
    search) args=("$(url "$p" 'AuditEvent?_count=20')") ;;
    read) args=("$(url "$p" AuditEvent/bench-read)") ;;
    create) args=(-m POST -T application/fhir+json -D "$RUN/origin/create.json" "$(url "$p" AuditEvent)") ;;
  esac
  local perf_pid=""
  if (( PERF )) && [[ "$p" == eds-proxy && "$c" == 16 && "$round" == 1 ]]; then
    # DWARF call graphs (Pingora and eds-proxy build without frame pointers); 499 Hz keeps the
    # stack copies small enough for perf to keep up on the load core.
    taskset -c $LOAD_CPU perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$EDS_PID" \
      -o "$RUN/perf-$w.data" >/dev/null 2>&1 & perf_pid=$!
  fi
  t0=$(cpu_ticks "$p"); start=$(date +%s.%N)
  # Identity answers everywhere (eds-proxy gzips when asked, nginx and the passthrough do not
  # compress proxied answers): the same bytes on the wire, and the size check below holds.
  taskset -c $LOAD_CPU oha -z "${d}s" -c "$c" --no-tui --output-format json --disable-compression \
    --cacert "$PKI/ca.crt" --cert "$PKI/cura-eua.crt" --key "$PKI/cura-eua.key" \
    -H "Authorization: Bearer $TOKEN" -H "Accept: application/fhir+json" \
    "${args[@]}" > "$RUN/oha.json" 2>"$RUN/oha.err" || { cat "$RUN/oha.err"; return 1; }
  end=$(date +%s.%N); t1=$(cpu_ticks "$p")
  if [[ -n "$perf_pid" ]]; then
    kill -INT "$perf_pid"; wait "$perf_pid" || true
    perf report -i "$RUN/perf-$w.data" --stdio --no-children -g none --sort dso,symbol 2>/dev/null \
      | python3 bench/perf_summary.py > "$RUN/perf-$w.txt" || true
    perf script -i "$RUN/perf-$w.data" 2>/dev/null | inferno-collapse-perf 2>/dev/null \
      | inferno-flamegraph --title "eds-proxy, $w, c = $c (perf -e cpu-clock)" > "$RUN/flame-$w.svg" 2>/dev/null || true
  fi
  read -r rss hwm <<<"$(rss_kib "$p")"
  record "$(python3 - "$RUN/oha.json" "$p" "$w" "$c" "$round" "$((t1 - t0))" "$CLK_TCK" "$start" "$end" "$rss" "$hwm" "${SIZE[$p-$w]}" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))
p, w, c, rnd, ticks, hz, start, end, rss, hwm, size = sys.argv[2:13]
s = o["summary"]
codes = {str(k): v for k, v in o.get("statusCodeDistribution", {}).items()}
answers = sum(codes.values())
lat = o.get("latencyPercentiles", {})
cpu_s = int(ticks) / int(hz)
wall = float(end) - float(start)
print(json.dumps({
    "kind": "load", "proxy": p, "workload": w, "c": int(c), "round": int(rnd),
    "rps": answers / s["total"] if s.get("total") else 0, "p50_ms": (lat.get("p50") or 0) * 1e3,
    "p99_ms": (lat.get("p99") or 0) * 1e3, "answers": answers, "statuses": codes,
    "errors": o.get("errorDistribution", {}), "size_per_answer": s.get("sizePerRequest"),
    "checked_size": int(size), "cpu_us_per_req": cpu_s / answers * 1e6 if answers else None,
    "proxy_busy": cpu_s / wall if wall else None, "rss_kib": int(rss), "hwm_kib": int(hwm)}))
PY
)"
}

handshake_run() { # PROXY ROUND
  local p=$1 round=$2 t0 t1 start end
  t0=$(cpu_ticks "$p"); start=$(date +%s.%N)
  taskset -c $LOAD_CPU "$CLIENT" handshakes "127.0.0.1:${PORT[$p]}" "$PKI/ca.crt" "$PKI/cura-eua.crt" "$PKI/cura-eua.key" \
    /fhir/AuditEvent/bench-read "$TOKEN" 16 "$HS_SECONDS" > "$RUN/hs.json"
  end=$(date +%s.%N); t1=$(cpu_ticks "$p")
  record "$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
cpu = int(sys.argv[4]) / int(sys.argv[5]); wall = float(sys.argv[7]) - float(sys.argv[6])
d.update({"kind": "handshakes", "proxy": sys.argv[2], "round": int(sys.argv[3]), "c": 16,
          "cpu_us_per_req": cpu / d["answers"] * 1e6 if d["answers"] else None, "proxy_busy": cpu / wall})
print(json.dumps(d))' "$RUN/hs.json" "$p" "$round" "$((t1 - t0))" "$CLK_TCK" "$start" "$end")"
}

runs=$(( ROUNDS * 3 * 3 * $(wc -w <<<"$CONCURRENCY") ))
echo "== load: $runs runs of ${DURATION}s (oha, keep-alive, HTTP/1.1), ${ROUNDS} round(s), proxies interleaved"
for round in $(seq 1 "$ROUNDS"); do
  for w in search read create; do
    for c in $CONCURRENCY; do
      for p in "${PROXIES[@]}"; do
        oha_run "$p" "$w" "$c" "$DURATION" "$round"
        tail -1 "$RESULTS" | python3 bench/report.py --row
        sleep 0.5
      done
    done
  done
  echo "== full mTLS handshakes, TLS resumption OFF (fresh client session store per connection), c=16, ${HS_SECONDS}s, one read per connection"
  for p in "${PROXIES[@]}"; do
    handshake_run "$p" "$round"
    tail -1 "$RESULTS" | python3 bench/report.py --row
  done
done
DROPS_AFTER_LOAD=$(metric eds_proxy_response_check_drops_total)
FOREIGN=$(metric eds_proxy_response_foreign_total)
record "{\"kind\":\"metrics\",\"drops_before_load\":$DROPS_BEFORE_LOAD,\"drops_after_load\":$DROPS_AFTER_LOAD,\"foreign\":$FOREIGN}"

stop_all

# ---------------------------------------------------------------- against HAPI
if (( HAPI )); then
  echo "== the same search against real HAPI FHIR: direct, and through eds-proxy"
  HP=18090 HAPI_PROXY=18444 HAPI_ADMIN=127.0.0.1:19101
  exec 8>/tmp/hapi-run.lock
  flock 8 # one HAPI on the machine at a time (house rule)
  stop_hapi() { HAPI_PORT=$HP HAPI_DATA_DIR="$RUN/hapi" bash "$ROOT/hapi-compose/hapi-native.sh" stop >/dev/null 2>&1 || true; }
  trap 'stop_all; stop_hapi' EXIT
  HAPI_PORT=$HP HAPI_DATA_DIR="$RUN/hapi" taskset -c $LOAD_CPU bash hapi-compose/hapi-native.sh start >/dev/null
  bash hapi-compose/hapi-native.sh bootstrap-search-parameters "http://127.0.0.1:$HP/fhir" >/dev/null 2>&1
  sed -e "s|127.0.0.1:${PORT[eds-proxy]}|127.0.0.1:$HAPI_PROXY|; s|localhost:${PORT[eds-proxy]}|localhost:$HAPI_PROXY|" \
      -e "s|$ADMIN|$HAPI_ADMIN|; s|127.0.0.1:$ORIGIN_PORT/fhir|127.0.0.1:$HP/fhir|" "$RUN/eds-proxy.toml" > "$RUN/eds-proxy-hapi.toml"
  RUST_LOG=info taskset -c $PROXY_CPU "$BIN" --config "$RUN/eds-proxy-hapi.toml" >"$RUN/eds-proxy-hapi.log" 2>&1 & pids+=($!)
  HAPI_EDS_PID=$!
  for _ in $(seq 1 100); do curl -sf "http://$HAPI_ADMIN/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  # 20 registrations by the benchmark station (EDS-PDS-01.1, observer Cura-EUA), through eds-proxy.
  HCURL=(curl -s --cacert "$PKI/ca.crt" --resolve "localhost:$HAPI_PROXY:127.0.0.1" --cert "$PKI/cura-eua.crt"
         --key "$PKI/cura-eua.key" -H "Authorization: Bearer $TOKEN" -H "Accept: application/fhir+json")
  for i in $(seq 1 20); do
    code=$("${HCURL[@]}" -o /dev/null -w '%{http_code}' -H "Content-Type: application/fhir+json" \
      --data-binary "@$RUN/origin/create.json" "https://localhost:$HAPI_PROXY/fhir/AuditEvent")
    [[ "$code" == 201 ]] || { echo "CHECK FAILED: registration $i through eds-proxy to HAPI: HTTP $code"; exit 1; }
  done
  "${HCURL[@]}" "https://localhost:$HAPI_PROXY/fhir/AuditEvent?_count=20" > "$RUN/hapi-check.json"
  n=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1])).get("entry", [])))' "$RUN/hapi-check.json")
  [[ "$n" == 20 ]] || { echo "CHECK FAILED: search through eds-proxy to HAPI returned $n of 20 entries"; exit 1; }
  # The query eds-proxy sends HAPI for this search: its _security constraint first.
  DIRECT="http://127.0.0.1:$HP/fhir/AuditEvent?_security=urn%3Aeds-proxy%3Alabel%3Adevice-id%7CCura-EUA&_count=20"
  for c in 1 16; do
    for via in hapi eds-proxy; do
      if [[ $via == hapi ]]; then
        taskset -c $LOAD_CPU oha -z "${DURATION}s" -c "$c" --no-tui --output-format json --disable-compression -H "Accept: application/fhir+json" "$DIRECT" > "$RUN/oha.json"
      else
        taskset -c $LOAD_CPU oha -z "${DURATION}s" -c "$c" --no-tui --output-format json --disable-compression --cacert "$PKI/ca.crt" \
          --cert "$PKI/cura-eua.crt" --key "$PKI/cura-eua.key" -H "Authorization: Bearer $TOKEN" \
          -H "Accept: application/fhir+json" "https://localhost:$HAPI_PROXY/fhir/AuditEvent?_count=20" > "$RUN/oha.json"
      fi
      python3 - "$RUN/oha.json" "$via" "$c" >> "$RESULTS" <<'PY2'
import json, sys
o = json.load(open(sys.argv[1])); lat = o.get("latencyPercentiles", {})
codes = {str(k): v for k, v in o.get("statusCodeDistribution", {}).items()}
print(json.dumps({"kind": "hapi", "via": sys.argv[2], "c": int(sys.argv[3]), "statuses": codes,
                  "rps": sum(codes.values()) / o["summary"]["total"], "p50_ms": (lat.get("p50") or 0) * 1e3,
                  "p99_ms": (lat.get("p99") or 0) * 1e3}))
PY2
      tail -1 "$RESULTS" | python3 bench/report.py --row
    done
  done
  kill "$HAPI_EDS_PID" 2>/dev/null || true
  stop_hapi
  flock -u 8
fi

# ---------------------------------------------------------------- token validation
echo "== token validation on a cache miss (cargo bench --bench tokens)"
TOKEN_BENCH_ITERATIONS=$TOKEN_ITERATIONS taskset -c $PROXY_CPU cargo bench --quiet --bench tokens 2>/dev/null | tee "$RUN/tokens.txt"
python3 - "$RUN/tokens.txt" >> "$RESULTS" <<'PY'
import json, re, sys
for line in open(sys.argv[1]):
    m = re.match(r"token miss (\S+)\s+([\d.]+) µs/op", line)
    if m:
        print(json.dumps({"kind": "token", "alg": m.group(1), "us": float(m.group(2))}))
PY

echo
python3 bench/report.py "$RESULTS" --quick="$QUICK" | tee "$RUN/report.md"

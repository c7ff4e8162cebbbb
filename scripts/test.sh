#!/usr/bin/env bash
# Every test eds-proxy has, from a fresh clone: formatting and lints, unit tests, integration
# tests (real proxy, real mTLS, recording upstream), CLI tests, the adversarial suite, the
# end-to-end test against a real HAPI FHIR server (built from Maven Central), HAPI's own Java
# client against the proxy and HAPI compared (tests/client_compat.rs; Maven builds
# tests/java-client inside the test), the fixture check against the IG, the deployment files
# (image build context, compose, Kubernetes), the replica failover test, and a short fuzz run.
# Installs what it needs first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v mvn >/dev/null || missing+=(maven)
command -v java >/dev/null || missing+=(openjdk-17-jdk-headless)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
command -v openssl >/dev/null || missing+=(openssl)
# prometheus + promtool: tests/prometheus.rs runs the dashboard and alert rules against them.
command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
if (( ${#missing[@]} )); then
  echo "== installing ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi

echo "== formatting and lints"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo clippy --lib --no-default-features --quiet -- -D warnings
cargo clippy --all-targets --no-default-features --features server --quiet -- -D warnings
# Every intra-doc link resolves, no bare URLs (public items are documented: Cargo.toml [lints]).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --lib --quiet
# The benchmark (bench/run.sh) is not run here; its script must at least parse.
bash -n bench/run.sh

echo "== boundaries: the decision core's dependencies"
# The pure core (no features: what the fuzz targets link) may not reach the network, the
# runtime, the metrics registry or the certificate generator; a production build may not
# carry the certificate generator.
banned=$(cargo tree --no-default-features -e normal --prefix none \
  | grep -E '^(tokio|pingora[a-z_-]*|prometheus|rcgen) ' | sort -u || true)
echo "checked: cargo tree --no-default-features -e normal has no tokio, pingora*, prometheus, rcgen"
if [[ -n "$banned" ]]; then echo "the decision core depends on: $banned"; exit 1; fi
banned=$(cargo tree --no-default-features --features server -e normal --prefix none \
  | grep -E '^rcgen ' | sort -u || true)
echo "checked: cargo tree --no-default-features --features server -e normal has no rcgen"
if [[ -n "$banned" ]]; then echo "the production build depends on: $banned"; exit 1; fi

echo "== production build (--no-default-features --features server) has no dev tools"
cargo build --no-default-features --features server --quiet --bin eds-proxy
prod_out=$(mktemp -d)
set +e
target/debug/eds-proxy dev pki --out "$prod_out/pki" >"$prod_out/stdout" 2>"$prod_out/stderr"
status=$?
set -e
if [[ $status -ne 2 ]] || ! grep -q "unrecognized subcommand 'dev'" "$prod_out/stderr" \
   || [[ -e "$prod_out/pki" ]]; then
  echo "a production build ran 'eds-proxy dev pki' (exit $status):"; cat "$prod_out/stderr"
  exit 1
fi
echo "checked: 'eds-proxy dev pki' is an unrecognized subcommand (exit 2), nothing written"
rm -rf "$prod_out"
# The tests below run the default build's binary (dev tools included): cargo test relinks it.

echo "== building HAPI FHIR (native launcher; cached after the first build)"
bash hapi-compose/hapi-native.sh build

echo "== IG fixtures are up to date"
IG_FSH="${IG_FSH:-../shared/eds-ig/fsh}"
if [[ -d "$IG_FSH" ]]; then
  python3 tests/fixtures/render_fsh.py "$IG_FSH" --check
else
  echo "skipping fixture check: $IG_FSH not found (set IG_FSH)"
fi

echo "== alert rules and Prometheus configuration (promtool; tests/prometheus.rs runs them live)"
bash scripts/prometheus-check.sh --config-only

echo "== cargo test (unit, integration, adversarial, end-to-end with HAPI)"
cargo test --no-fail-fast 2>&1 | tee target/cargo-test.log
grep -E "^test result:" target/cargo-test.log | awk '{p+=$4; f+=$6} END {print "tests: " p " passed, " f " failed"}'

echo "== deployment files, checked offline (no Docker engine, no cluster here)"
# docker-py's implementation of .dockerignore, the compose-spec validator, the Kubernetes schemas.
python3 -c 'import docker, jsonschema, yaml, kubernetes_validate' 2>/dev/null \
  || python3 -m pip install --quiet --disable-pip-version-check \
       'docker==7.1.0' 'jsonschema>=4' 'pyyaml>=6' 'kubernetes-validate==1.37.0'
# The image's build stage replayed in a context assembled as Docker would (release build;
# cargo cache in target/docker-context-check/cache, so only the first run builds everything).
python3 scripts/docker-context-check.py --unoptimised
python3 scripts/deploy-check.py --bin target/debug/eds-proxy

echo "== replicas fail over (HAPI on PostgreSQL, two replicas behind HAProxy, SIGTERM + restart)"
bash scripts/replicas-test.sh

if [[ -f scripts/fuzz-smoke.sh && "${SKIP_FUZZ:-0}" != 1 ]]; then
  echo "== fuzz smoke run"
  FUZZ_SECONDS="${FUZZ_SECONDS:-20}" bash scripts/fuzz-smoke.sh
fi

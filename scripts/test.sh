#!/usr/bin/env bash
# Every test eds-proxy has, from a fresh clone: formatting and lints, unit tests, integration
# tests (real proxy, real mTLS, recording upstream), CLI tests, the adversarial suite, the
# end-to-end test against a real HAPI FHIR server (built from Maven Central), the fixture
# check against the IG, and a short fuzz run. Installs what it needs first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v mvn >/dev/null || missing+=(maven)
command -v java >/dev/null || missing+=(openjdk-17-jdk-headless)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
command -v openssl >/dev/null || missing+=(openssl)
if (( ${#missing[@]} )); then
  echo "== installing ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi

echo "== formatting and lints"
cargo fmt --all -- --check
cargo clippy --all-targets --quiet -- -D warnings
cargo clippy --lib --no-default-features --quiet -- -D warnings

echo "== building HAPI FHIR (native launcher; cached after the first build)"
bash hapi-compose/hapi-native.sh build

echo "== IG fixtures are up to date"
IG_FSH="${IG_FSH:-../shared/eds-ig/fsh}"
if [[ -d "$IG_FSH" ]]; then
  python3 tests/fixtures/render_fsh.py "$IG_FSH" --check
else
  echo "skipping fixture check: $IG_FSH not found (set IG_FSH)"
fi

echo "== cargo test (unit, integration, adversarial, end-to-end with HAPI)"
cargo test --no-fail-fast 2>&1 | tee target/cargo-test.log
grep -E "^test result:" target/cargo-test.log | awk '{p+=$4; f+=$6} END {print "tests: " p " passed, " f " failed"}'

if [[ -f scripts/fuzz-smoke.sh && "${SKIP_FUZZ:-0}" != 1 ]]; then
  echo "== fuzz smoke run"
  FUZZ_SECONDS="${FUZZ_SECONDS:-20}" bash scripts/fuzz-smoke.sh
fi

#!/usr/bin/env bash
# The dashboard and alert rules against a real Prometheus (also part of scripts/test.sh):
# installs the Debian package `prometheus` (prometheus + promtool) if missing, checks the
# rules and the compose stack's Prometheus configuration with promtool, then runs
# tests/prometheus.rs: a proxy under generated traffic, scraped by Prometheus, with every
# dashboard expression and alert rule evaluated through Prometheus' HTTP API.
# --config-only: the promtool checks only (scripts/test.sh runs the test with the others).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "== installing prometheus (Debian package; promtool comes with it)"
  apt-get update -qq && apt-get install -y -qq prometheus
fi
# The Debian package enables a system service; this check starts its own instance only.
promtool check rules dashboards/alerts.yml
# The compose stack's configuration names the rules at their mount point; check a copy that
# points at the file in the repository.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s#/etc/prometheus/alerts.yml#$PWD/dashboards/alerts.yml#" hapi-compose/prometheus.yml > "$tmp/prometheus.yml"
promtool check config "$tmp/prometheus.yml"
[[ "${1:-}" == --config-only ]] && exit 0
cargo test --test prometheus

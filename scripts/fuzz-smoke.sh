#!/usr/bin/env bash
# Fuzz smoke run: build the cargo-fuzz targets in fuzz/ and run each one for a short time.
# Fails if any target crashes (a panic, a broken security invariant, a sanitizer report, a
# timeout or an out-of-memory).
#
#   scripts/fuzz-smoke.sh                 # every target, FUZZ_SECONDS (default 30) each
#   FUZZ_SECONDS=60 scripts/fuzz-smoke.sh query_rewrite token_claims
#
# Environment:
#   FUZZ_SECONDS    run time per target (libFuzzer -max_total_time), default 30
#   FUZZ_TIMEOUT    seconds one input may take before it counts as a hang, default 10
#   FUZZ_TOOLCHAIN  rustup toolchain with -Zsanitizer support, default nightly
#   FUZZ_SANITIZER  cargo fuzz --sanitizer (address, leak, memory, thread, none), default address
#
# Seeds in fuzz/corpus/<target>/ are read but never written; what a run discovers goes to
# fuzz/smoke/corpus/<target>/ and the libFuzzer output to fuzz/smoke/<target>.log.
# Crash inputs land in fuzz/artifacts/<target>/ (see fuzz/README.md to reproduce/minimise).
# The last line is always `fuzz: N passed, M failed`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/fuzz"

seconds="${FUZZ_SECONDS:-30}"
timeout="${FUZZ_TIMEOUT:-10}"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"
sanitizer="${FUZZ_SANITIZER:-address}"

if ! cargo +"$toolchain" fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is missing, installing it" >&2
    cargo install cargo-fuzz --locked
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +"$toolchain" fuzz list)
fi
if [[ ${#targets[@]} -eq 0 ]]; then
    echo "fuzz: no targets found" >&2
    echo "fuzz: 0 passed, 0 failed"
    exit 1
fi

work="$root/fuzz/smoke"
mkdir -p "$work/corpus"

# Build every target up front, so that each run's time is spent fuzzing. The first build
# compiles the proxy and all its dependencies with sanitizer and coverage flags (minutes).
echo "fuzz: building targets (the first build compiles the proxy and its dependencies; minutes)"
build_start=$(date +%s)
build() {
    if [[ $# -eq 0 ]]; then
        cargo +"$toolchain" fuzz build --sanitizer "$sanitizer"
    else
        local t
        for t in "$@"; do
            cargo +"$toolchain" fuzz build --sanitizer "$sanitizer" "$t" || return 1
        done
    fi
}
if ! build "$@" >"$work/build.log" 2>&1; then
    tail -n 40 "$work/build.log" >&2
    echo "fuzz: build failed (log: fuzz/smoke/build.log)" >&2
    echo "fuzz: 0 passed, ${#targets[@]} failed"
    exit 1
fi
echo "fuzz: build took $(( $(date +%s) - build_start ))s"

# `name value` from libFuzzer's final stats or last status line of a log.
stat() {
    grep -a "^stat::$1:" "$2" | tail -n 1 | awk '{print $2}' || true
}
status_field() {
    grep -aE '^#[0-9]+' "$2" | tail -n 1 | sed -nE "s/.* $1: ([^ ]+).*/\\1/p" || true
}

passed=0
failed=0
failed_targets=()
for t in "${targets[@]}"; do
    corpus="$work/corpus/$t"
    log="$work/$t.log"
    mkdir -p "$corpus"
    args=(
        "-max_total_time=$seconds"
        "-timeout=$timeout"
        "-print_final_stats=1"
    )
    if [[ -f "dicts/$t.dict" ]]; then
        args+=("-dict=dicts/$t.dict")
    fi
    case "$t" in
        registration | response_check) args+=("-max_len=16384") ;;
    esac
    seeds=()
    if [[ -d "corpus/$t" ]]; then
        seeds=("corpus/$t")
    fi

    echo "fuzz: $t: running for ${seconds}s"
    start=$(date +%s)
    if cargo +"$toolchain" fuzz run --sanitizer "$sanitizer" "$t" "$corpus" "${seeds[@]}" -- "${args[@]}" \
        >"$log" 2>&1; then
        result="ok"
        passed=$((passed + 1))
    else
        result="FAILED"
        failed=$((failed + 1))
        failed_targets+=("$t")
    fi
    took=$(( $(date +%s) - start ))
    echo "fuzz: $t: $result in ${took}s: runs=$(stat number_of_executed_units "$log")" \
        "exec/s=$(stat average_exec_per_sec "$log")" \
        "cov=$(status_field cov "$log") ft=$(status_field ft "$log")" \
        "corpus=$(status_field corp "$log") new=$(stat new_units_added "$log")" \
        "rss=$(stat peak_rss_mb "$log")MB"
    if [[ $result != ok ]]; then
        # The panic message (the broken invariant) and where libFuzzer saved the input.
        grep -aE "panicked at|^thread '|Test unit written to|ERROR: libFuzzer|SUMMARY:|^error" "$log" |
            head -n 12 | sed "s/^/fuzz: $t:   /" || true
        grep -aA3 "panicked at" "$log" | head -n 6 | sed "s/^/fuzz: $t:   /" || true
        artifact=$(sed -nE 's/.*Test unit written to (.*)$/\1/p' "$log" | tail -n 1)
        if [[ -n $artifact ]]; then
            echo "fuzz: $t:   reproduce: (cd fuzz && cargo +$toolchain fuzz run $t ${artifact#"$root/fuzz/"})"
            echo "fuzz: $t:   minimise:  (cd fuzz && cargo +$toolchain fuzz tmin $t ${artifact#"$root/fuzz/"})"
        fi
        echo "fuzz: $t:   full log: fuzz/smoke/$t.log"
    fi
done

if [[ $failed -gt 0 ]]; then
    echo "fuzz: failed: ${failed_targets[*]}" >&2
fi
echo "fuzz: $passed passed, $failed failed"
[[ $failed -eq 0 ]]

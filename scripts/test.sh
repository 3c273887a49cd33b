#!/usr/bin/env bash
# The whole test suite, with every service it needs: starts missing services, then runs
# format, lint, doc and test checks with OUTBOX_REQUIRE_SERVICES=1, so that a test whose
# service is missing fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
bash scripts/services.sh

export OUTBOX_REQUIRE_SERVICES=1
export PROPTEST_CASES="${PROPTEST_CASES:-512}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A one-off build gains nothing from incremental state, which would double the target
# directory on disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step() { printf '\n==> %s\n' "$*"; }

# The build needs about 6 GiB in target/ (a failed run once ran out of disk): say what there
# is, so such a failure reads as what it is.
step "free disk space"
df -h . | tail -n 1
avail_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [ "${avail_kib:-0}" -lt $((8 * 1024 * 1024)) ]; then
    echo "warning: less than 8 GiB free here; the build may run out of disk" >&2
fi

step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy (all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features -- -D warnings
step "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features --quiet
step "no OpenTelemetry crate in the tree with the feature off"
bash scripts/otel-tree.sh
step "cargo test (OUTBOX_REQUIRE_SERVICES=1, PROPTEST_CASES=$PROPTEST_CASES)"
cargo test --workspace --all-features
step "chaos run, reduced (10 000 events and 100 faults per database; the full run is in the README)"
OUTBOX_CHAOS_EVENTS=10000 OUTBOX_CHAOS_FAULTS=100 cargo test -p outbox-relay --test chaos
step "examples"
cargo run --quiet -p outbox-examples --example quickstart >/dev/null
cargo run --quiet -p outbox-examples --example seaorm_orders >/dev/null
cargo run --quiet -p outbox-examples --example diesel_orders >/dev/null
# These two check their own outcome against real services and exit non-zero on a mismatch.
cargo run --quiet -p outbox-examples --example order_shipping
cargo run --quiet -p outbox-examples --example ledger_kafka
cargo run --quiet -p outbox-relay --no-default-features --features sqlite -- demo >/dev/null
step "relay benchmark, smoke run (OUTBOX_BENCH_SCALE=0.01; figures at this scale mean nothing)"
OUTBOX_BENCH_SCALE=0.01 cargo run --quiet -p outbox-bench
echo "all checks passed"

#!/usr/bin/env bash
# With the `opentelemetry` feature off, no OpenTelemetry crate is in any crate's dependency
# tree (normal and build dependencies: what a user's build compiles). With it on, they are
# (so this check can fail).
set -euo pipefail
cd "$(dirname "$0")/.."

otel_crates() { cargo tree -q -e normal,build "$@" | grep -ciE 'opentelemetry' || true; }

failed=0
for crate in outbox-core outbox-sql outbox-sqlx outbox-diesel outbox-seaorm outbox-cdc \
    outbox-nats outbox-amqp outbox-kafka outbox-sqs; do
    n=$(otel_crates -p "$crate")
    printf '%-16s feature off: %s OpenTelemetry crates\n' "$crate" "$n"
    [ "$n" = 0 ] || failed=1
done
relay_off="postgres,mysql,sqlite,cdc,nats,amqp,kafka,sqs"
n=$(otel_crates -p outbox-relay --no-default-features --features "$relay_off")
printf '%-16s feature off: %s OpenTelemetry crates\n' outbox-relay "$n"
[ "$n" = 0 ] || failed=1
n=$(otel_crates -p outbox-core --features opentelemetry)
printf '%-16s feature on:  %s OpenTelemetry crates\n' outbox-core "$n"
[ "$n" != 0 ] || failed=1
if [ "$failed" != 0 ]; then
    echo "OpenTelemetry crates where the feature is off (or none where it is on)" >&2
    exit 1
fi

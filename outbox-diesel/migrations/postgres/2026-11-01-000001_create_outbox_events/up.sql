-- The canonical outbox table (outbox_core::schema). Generated: keep in sync with
-- `cargo test -p outbox-diesel --test migration_files`.

CREATE TABLE IF NOT EXISTS "outbox_events" (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id UUID NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    destination TEXT NOT NULL,
    ordering_key TEXT NOT NULL,
    payload BYTEA NOT NULL,
    content_type TEXT NOT NULL,
    headers TEXT NOT NULL,
    traceparent TEXT,
    tracestate TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    available_at TIMESTAMPTZ NOT NULL,
    status SMALLINT NOT NULL DEFAULT 0 CHECK (status BETWEEN 0 AND 3),
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_token BIGINT,
    lease_until TIMESTAMPTZ,
    last_error TEXT,
    processed_at TIMESTAMPTZ
);

CREATE UNIQUE INDEX IF NOT EXISTS "outbox_events_id_key" ON "outbox_events" (id);

CREATE INDEX IF NOT EXISTS "outbox_events_due_idx" ON "outbox_events" (seq) WHERE status IN (0, 1);

CREATE INDEX IF NOT EXISTS "outbox_events_key_idx" ON "outbox_events" (ordering_key, seq) WHERE status < 2;

CREATE INDEX IF NOT EXISTS "outbox_events_processed_idx" ON "outbox_events" (status, processed_at) WHERE status IN (2, 3);


-- The canonical outbox table (outbox_core::schema). Generated: keep in sync with
-- `cargo test -p outbox-diesel --test migration_files`.

CREATE TABLE IF NOT EXISTS "outbox_events" (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    destination TEXT NOT NULL,
    ordering_key TEXT NOT NULL,
    payload BLOB NOT NULL,
    content_type TEXT NOT NULL,
    headers TEXT NOT NULL,
    traceparent TEXT,
    tracestate TEXT,
    created_at INTEGER NOT NULL,
    available_at INTEGER NOT NULL,
    status INTEGER NOT NULL DEFAULT 0 CHECK (status BETWEEN 0 AND 3),
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_token INTEGER,
    lease_until INTEGER,
    last_error TEXT,
    processed_at INTEGER
);

CREATE UNIQUE INDEX IF NOT EXISTS "outbox_events_id_key" ON "outbox_events" (id);

CREATE INDEX IF NOT EXISTS "outbox_events_due_idx" ON "outbox_events" (seq) WHERE status IN (0, 1);

CREATE INDEX IF NOT EXISTS "outbox_events_key_idx" ON "outbox_events" (ordering_key, seq) WHERE status < 2;

CREATE INDEX IF NOT EXISTS "outbox_events_processed_idx" ON "outbox_events" (status, processed_at) WHERE status IN (2, 3);


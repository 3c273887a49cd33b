-- The canonical outbox table (outbox_core::schema). Generated: keep in sync with
-- `cargo test -p outbox-diesel --test migration_files`.

CREATE TABLE IF NOT EXISTS `outbox_events` (
    seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id CHAR(36) NOT NULL,
    aggregate_type VARCHAR(255) NOT NULL,
    aggregate_id VARCHAR(255) NOT NULL,
    event_type VARCHAR(255) NOT NULL,
    destination VARCHAR(512) NOT NULL,
    ordering_key VARCHAR(255) NOT NULL,
    payload LONGBLOB NOT NULL,
    content_type VARCHAR(255) NOT NULL,
    headers TEXT NOT NULL,
    traceparent VARCHAR(64),
    tracestate VARCHAR(512),
    created_at DATETIME(6) NOT NULL,
    available_at DATETIME(6) NOT NULL,
    status SMALLINT NOT NULL DEFAULT 0 CHECK (status BETWEEN 0 AND 3),
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_token BIGINT,
    lease_until DATETIME(6),
    last_error TEXT,
    processed_at DATETIME(6),
    UNIQUE INDEX `outbox_events_id_key` (id),
    INDEX `outbox_events_due_idx` (status, seq),
    INDEX `outbox_events_key_idx` (status, ordering_key, seq),
    INDEX `outbox_events_processed_idx` (status, processed_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;


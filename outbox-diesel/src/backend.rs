//! One module per backend, generated from one template: the `table!`, an `Insertable` row
//! built from an envelope, enqueue for synchronous diesel, and the embedded migration.

/// Rows per multi-row insert: 13 values each, under every backend's bind limit.
pub(crate) const CHUNK: usize = 1000;

/// `enqueue_async` / `enqueue_all_async` on a diesel-async connection type.
#[cfg(any(feature = "async-postgres", feature = "async-mysql"))]
macro_rules! async_fns {
    ($conn:ty) => {
        /// Writes `envelope` through a diesel-async connection; call it inside
        /// `conn.transaction(async |conn| { ...; enqueue_async(conn, &event).await })`.
        pub async fn enqueue_async(
            conn: &mut $conn,
            envelope: &outbox_core::Envelope,
        ) -> diesel::QueryResult<()> {
            enqueue_all_async(conn, std::slice::from_ref(envelope)).await
        }

        /// Writes `envelopes` through a diesel-async connection, one multi-row insert per
        /// thousand.
        pub async fn enqueue_all_async(
            conn: &mut $conn,
            envelopes: &[outbox_core::Envelope],
        ) -> diesel::QueryResult<()> {
            use diesel_async::RunQueryDsl as _;
            for chunk in envelopes.chunks($crate::backend::CHUNK) {
                let rows: Vec<NewEvent<'_>> = chunk.iter().map(NewEvent::from_envelope).collect();
                diesel::insert_into(outbox_events::table)
                    .values(&rows)
                    .execute(conn)
                    .await?;
            }
            Ok(())
        }
    };
}

macro_rules! backend {
    (
        $(#[$doc:meta])*
        mod $module:ident;
        types { id: $id_sql:ty, payload: $payload_sql:ty, time: $time_sql:ty, small: $small_sql:ty }
        rust { id: $id:ty, time: $time:ty }
        convert { id: $id_of:expr, time: $time_of:expr }
        sync { feature: $feature:literal, connection: $conn:ty, migrations: $dir:literal }
        $(async { feature: $afeature:literal, connection: $aconn:ty })?
        $(extra { $($extra:item)* })?
    ) => {
        $(#[$doc])*
        pub mod $module {
            use outbox_core::Envelope;

            diesel::table! {
                /// The canonical outbox table (`outbox_core::schema`), default name.
                outbox_events (seq) {
                    /// Commit order.
                    seq -> BigInt,
                    /// Event id.
                    id -> $id_sql,
                    /// Aggregate type.
                    aggregate_type -> Text,
                    /// Aggregate id.
                    aggregate_id -> Text,
                    /// Event type.
                    event_type -> Text,
                    /// Destination.
                    destination -> Text,
                    /// Ordering key.
                    ordering_key -> Text,
                    /// Payload.
                    payload -> $payload_sql,
                    /// Payload media type.
                    content_type -> Text,
                    /// User headers, a JSON object.
                    headers -> Text,
                    /// W3C traceparent.
                    traceparent -> Nullable<Text>,
                    /// W3C tracestate.
                    tracestate -> Nullable<Text>,
                    /// Creation time.
                    created_at -> $time_sql,
                    /// Earliest publish time.
                    available_at -> $time_sql,
                    /// 0 pending, 1 in flight, 2 published, 3 dead.
                    status -> $small_sql,
                    /// Failed attempts.
                    attempts -> Integer,
                    /// Fencing token of the current lease.
                    lease_token -> Nullable<BigInt>,
                    /// End of the current lease.
                    lease_until -> Nullable<$time_sql>,
                    /// Last failure.
                    last_error -> Nullable<Text>,
                    /// When published or dead-lettered.
                    processed_at -> Nullable<$time_sql>,
                }
            }

            /// The columns an enqueue writes; status, attempts and lease keep their defaults.
            #[derive(Debug, diesel::Insertable)]
            #[diesel(table_name = outbox_events)]
            pub struct NewEvent<'a> {
                /// Event id.
                pub id: $id,
                /// Aggregate type.
                pub aggregate_type: &'a str,
                /// Aggregate id.
                pub aggregate_id: &'a str,
                /// Event type.
                pub event_type: &'a str,
                /// Destination.
                pub destination: &'a str,
                /// Ordering key.
                pub ordering_key: &'a str,
                /// Payload.
                pub payload: &'a [u8],
                /// Payload media type.
                pub content_type: &'a str,
                /// User headers, a JSON object.
                pub headers: String,
                /// W3C traceparent.
                pub traceparent: Option<&'a str>,
                /// W3C tracestate.
                pub tracestate: Option<&'a str>,
                /// Creation time.
                pub created_at: $time,
                /// Earliest publish time.
                pub available_at: $time,
            }

            impl<'a> NewEvent<'a> {
                /// The row for `e`.
                pub fn from_envelope(e: &'a Envelope) -> Self {
                    let id_of = $id_of;
                    let time_of = $time_of;
                    NewEvent {
                        id: id_of(e),
                        aggregate_type: e.aggregate_type(),
                        aggregate_id: e.aggregate_id(),
                        event_type: e.event_type(),
                        destination: e.destination(),
                        ordering_key: e.ordering_key(),
                        payload: e.payload().as_ref(),
                        content_type: e.content_type(),
                        headers: e.headers_json(),
                        traceparent: e.trace().map(|t| t.traceparent()),
                        tracestate: e.trace().and_then(|t| t.tracestate()),
                        created_at: time_of(e.created_at()),
                        available_at: time_of(e.available_at()),
                    }
                }
            }

            /// Writes `envelope` through `conn`; call it inside
            /// `conn.transaction(|conn| { ...; enqueue(conn, &event) })` so the event commits
            /// or rolls back with your own writes. Returns diesel's own `QueryResult`, so `?`
            /// works inside the transaction closure; [`crate::map_diesel`] maps the error onto
            /// core's kinds.
            #[cfg(feature = $feature)]
            pub fn enqueue(conn: &mut $conn, envelope: &Envelope) -> diesel::QueryResult<()> {
                enqueue_all(conn, std::slice::from_ref(envelope))
            }

            /// Writes `envelopes` through `conn` (see [`enqueue`]), one multi-row insert per
            /// thousand.
            #[cfg(feature = $feature)]
            pub fn enqueue_all(conn: &mut $conn, envelopes: &[Envelope]) -> diesel::QueryResult<()> {
                use diesel::RunQueryDsl as _;
                for chunk in envelopes.chunks($crate::backend::CHUNK) {
                    let rows: Vec<NewEvent<'_>> = chunk.iter().map(NewEvent::from_envelope).collect();
                    diesel::insert_into(outbox_events::table)
                        .values(&rows)
                        .execute(conn)?;
                }
                Ok(())
            }

            /// The embedded migration that creates the canonical table.
            #[cfg(feature = $feature)]
            pub const MIGRATIONS: diesel_migrations::EmbeddedMigrations =
                diesel_migrations::embed_migrations!($dir);

            /// Runs the pending embedded migrations on `conn`.
            #[cfg(feature = $feature)]
            pub fn run_migrations(conn: &mut $conn) -> outbox_core::Result<()> {
                use diesel_migrations::MigrationHarness as _;
                conn.run_pending_migrations(MIGRATIONS).map(|_| ()).map_err(|e| {
                    outbox_core::Error::new(
                        outbox_core::ErrorKind::Other,
                        format!("running the outbox migration: {e}"),
                    )
                })
            }

            $(
                #[cfg(feature = $afeature)]
                async_fns!($aconn);
            )?

            $($($extra)*)?
        }
    };
}

#[cfg(any(feature = "postgres", feature = "async-postgres"))]
backend! {
    /// PostgreSQL: `id UUID`, times `TIMESTAMPTZ`.
    mod pg;
    types { id: diesel::sql_types::Uuid, payload: Binary, time: Timestamptz, small: SmallInt }
    rust { id: uuid::Uuid, time: chrono::DateTime<chrono::Utc> }
    convert { id: |e: &Envelope| e.id().as_uuid(), time: |t: chrono::DateTime<chrono::Utc>| t }
    sync { feature: "postgres", connection: diesel::PgConnection, migrations: "migrations/postgres" }
    async { feature: "async-postgres", connection: diesel_async::AsyncPgConnection }
    extra {
        #[cfg(feature = "postgres")]
        pub use crate::wal::{emit, emit_all, emit_with_prefix};
        #[cfg(feature = "async-postgres")]
        pub use crate::wal::{emit_async, emit_with_prefix_async};
    }
}

#[cfg(any(feature = "mysql", feature = "async-mysql"))]
backend! {
    /// MySQL / MariaDB: `id CHAR(36)`, times `DATETIME(6)` in UTC.
    mod mysql;
    types { id: Text, payload: Binary, time: Datetime, small: SmallInt }
    rust { id: String, time: chrono::NaiveDateTime }
    convert { id: |e: &Envelope| e.id().to_string(), time: |t: chrono::DateTime<chrono::Utc>| t.naive_utc() }
    sync { feature: "mysql", connection: diesel::MysqlConnection, migrations: "migrations/mysql" }
    async { feature: "async-mysql", connection: diesel_async::AsyncMysqlConnection }
}

#[cfg(feature = "sqlite")]
backend! {
    /// SQLite: `id TEXT`, times integer microseconds since the Unix epoch.
    mod sqlite;
    types { id: Text, payload: Binary, time: BigInt, small: Integer }
    rust { id: String, time: i64 }
    convert { id: |e: &Envelope| e.id().to_string(), time: |t: chrono::DateTime<chrono::Utc>| t.timestamp_micros() }
    sync { feature: "sqlite", connection: diesel::SqliteConnection, migrations: "migrations/sqlite" }
}

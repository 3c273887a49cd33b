//! The canonical outbox table as SeaORM entities, one per backend: the column types differ
//! (`id` is `UUID` on PostgreSQL and text elsewhere; SQLite keeps times as integer
//! microseconds), the table is the same. Table name `outbox_events`; on PostgreSQL, pick the
//! schema with the connection's search path.

macro_rules! outbox_entity {
    ($(#[$doc:meta])* $module:ident, id: $id:ty, time: $time:ty, id_of: $id_of:expr, time_of: $time_of:expr) => {
        $(#[$doc])*
        pub mod $module {
            use sea_orm::entity::prelude::*;

            /// One row of the outbox table.
            #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
            #[sea_orm(table_name = "outbox_events")]
            pub struct Model {
                /// Commit order.
                #[sea_orm(primary_key)]
                pub seq: i64,
                /// Event id.
                pub id: $id,
                /// Aggregate type.
                pub aggregate_type: String,
                /// Aggregate id.
                pub aggregate_id: String,
                /// Event type.
                pub event_type: String,
                /// Destination.
                pub destination: String,
                /// Ordering key.
                pub ordering_key: String,
                /// Payload.
                pub payload: Vec<u8>,
                /// Payload media type.
                pub content_type: String,
                /// User headers as a JSON object.
                pub headers: String,
                /// W3C traceparent.
                pub traceparent: Option<String>,
                /// W3C tracestate.
                pub tracestate: Option<String>,
                /// Creation time.
                pub created_at: $time,
                /// Earliest publish time.
                pub available_at: $time,
                /// Row status (0 pending, 1 in flight, 2 published, 3 dead).
                pub status: i16,
                /// Failed attempts.
                pub attempts: i32,
                /// Fencing token of the current lease.
                pub lease_token: Option<i64>,
                /// End of the current lease.
                pub lease_until: Option<$time>,
                /// Last failure.
                pub last_error: Option<String>,
                /// When published or dead-lettered.
                pub processed_at: Option<$time>,
            }

            /// No relations.
            #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
            pub enum Relation {}

            impl ActiveModelBehavior for ActiveModel {}

            /// The row that enqueues `envelope`; status, attempts and lease keep the
            /// table's defaults.
            pub fn active_model(e: &outbox_core::Envelope) -> ActiveModel {
                use sea_orm::ActiveValue::{NotSet, Set};
                let id_of = $id_of;
                let time_of = $time_of;
                ActiveModel {
                    seq: NotSet,
                    id: Set(id_of(e)),
                    aggregate_type: Set(e.aggregate_type().to_owned()),
                    aggregate_id: Set(e.aggregate_id().to_owned()),
                    event_type: Set(e.event_type().to_owned()),
                    destination: Set(e.destination().to_owned()),
                    ordering_key: Set(e.ordering_key().to_owned()),
                    payload: Set(e.payload().to_vec()),
                    content_type: Set(e.content_type().to_owned()),
                    headers: Set(e.headers_json()),
                    traceparent: Set(e.trace().map(|t| t.traceparent().to_owned())),
                    tracestate: Set(e.trace().and_then(|t| t.tracestate().map(str::to_owned))),
                    created_at: Set(time_of(e.created_at())),
                    available_at: Set(time_of(e.available_at())),
                    status: NotSet,
                    attempts: NotSet,
                    lease_token: NotSet,
                    lease_until: NotSet,
                    last_error: NotSet,
                    processed_at: NotSet,
                }
            }
        }
    };
}

outbox_entity!(
    /// PostgreSQL: `id UUID`, times `TIMESTAMPTZ`.
    postgres,
    id: Uuid,
    time: DateTimeUtc,
    id_of: |e: &outbox_core::Envelope| e.id().as_uuid(),
    time_of: |t: chrono::DateTime<chrono::Utc>| t
);
outbox_entity!(
    /// MySQL / MariaDB: `id CHAR(36)`, times `DATETIME(6)` in UTC.
    mysql,
    id: String,
    time: DateTimeUtc,
    id_of: |e: &outbox_core::Envelope| e.id().to_string(),
    time_of: |t: chrono::DateTime<chrono::Utc>| t
);
outbox_entity!(
    /// SQLite: `id TEXT`, times as integer microseconds since the Unix epoch.
    sqlite,
    id: String,
    time: i64,
    id_of: |e: &outbox_core::Envelope| e.id().to_string(),
    time_of: |t: chrono::DateTime<chrono::Utc>| t.timestamp_micros()
);

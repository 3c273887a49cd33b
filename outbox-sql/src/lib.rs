#![doc = include_str!("../README.md")]

pub mod admin;
pub mod claim;
pub mod ddl;
pub mod event_table;
pub mod inbox;
pub mod postgres;
pub mod quote;
pub mod row;

pub use admin::{AdminStatements, Bound, Value};
pub use claim::{ClaimCursor, KeyWalk, key_budget, new_lease, ready_keys, walk_keys};
pub use ddl::create_table_sql;
pub use event_table::read_plan_condition;
pub use inbox::{InboxSpec, InboxStatements, create_inbox_table_sql, event_id_text};
pub use postgres::{
    PG_CLAIM_SETTINGS, PG_EMIT_MESSAGES, PgCdcStatements, PgStatements, pg_claim, pg_emit_with,
};
pub use quote::{Quote, quote_ident};
pub use row::{INSERT_COLUMNS, SELECT_COLUMNS, StoredRow, split_rows};

//! The embedded migrations create exactly core's canonical table (regenerate the files with
//! `OUTBOX_WRITE_SQL=1 cargo test -p outbox-diesel --test migration_files`).

use outbox_core::TableName;
use outbox_core::schema::Dialect;
use outbox_sql::Quote;
use outbox_sql::create_table_sql;

const DIR: &str = "2026-11-01-000001_create_outbox_events";

fn up(dialect: Dialect) -> String {
    let mut out = String::from(
        "-- The canonical outbox table (outbox_core::schema). Generated: keep in sync with\n\
         -- `cargo test -p outbox-diesel --test migration_files`.\n\n",
    );
    for stmt in create_table_sql(&TableName::default(), dialect) {
        out.push_str(&stmt);
        out.push_str(";\n\n");
    }
    out
}

#[test]
fn migrations_match_the_schema() {
    for (backend, dialect) in [
        ("postgres", Dialect::Postgres),
        ("mysql", Dialect::MySql),
        ("sqlite", Dialect::Sqlite),
    ] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(backend)
            .join(DIR);
        let down = format!(
            "DROP TABLE IF EXISTS {};\n",
            TableName::default().quoted(dialect)
        );
        for (file, want) in [("up.sql", up(dialect)), ("down.sql", down)] {
            let path = dir.join(file);
            if std::env::var("OUTBOX_WRITE_SQL").is_ok() {
                std::fs::write(&path, &want).expect("write");
            }
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(
                have, want,
                "{backend}/{file} is out of date: run with OUTBOX_WRITE_SQL=1 to regenerate"
            );
        }
    }
}

//! The SQL files shipped for users who run their own migrations match core's schema.

use outbox_core::TableName;
use outbox_core::schema::Dialect;
use outbox_sql::create_table_sql;

fn expected(dialect: Dialect) -> String {
    let mut out = String::from(
        "-- The canonical outbox table (outbox_core::schema), default name `outbox_events`.\n\
         -- Generated: keep in sync with `cargo test -p outbox-sqlx --test sql_files`.\n\n",
    );
    for stmt in create_table_sql(&TableName::default(), dialect) {
        out.push_str(&stmt);
        out.push_str(";\n\n");
    }
    out
}

#[test]
fn shipped_sql_matches_the_schema() {
    for (file, dialect) in [
        ("postgres.sql", Dialect::Postgres),
        ("mysql.sql", Dialect::MySql),
        ("sqlite.sql", Dialect::Sqlite),
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("sql")
            .join(file);
        let want = expected(dialect);
        if std::env::var("OUTBOX_WRITE_SQL").is_ok() {
            std::fs::write(&path, &want).expect("write");
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            have, want,
            "{file} is out of date: run with OUTBOX_WRITE_SQL=1 to regenerate"
        );
    }
}

//! DDL rendered from the canonical schema description in `outbox_core::schema`.

use outbox_core::schema::{COLUMNS, Dialect, INDEXES, TableName};

use crate::quote::{Quote, quote_ident};

/// The statements that create the table and its indexes on `dialect`, idempotently
/// (`IF NOT EXISTS`), after the schema (PostgreSQL) or database (MySQL/MariaDB) the table
/// name has, if any (on SQLite a schema is an attached database, which must exist). Run
/// them in order.
pub fn create_table_sql(table: &TableName, dialect: Dialect) -> Vec<String> {
    let quoted = table.quoted(dialect);
    let mut out = Vec::new();
    match (dialect, table.schema()) {
        (Dialect::Postgres, Some(s)) => out.push(format!(
            "CREATE SCHEMA IF NOT EXISTS {}",
            quote_ident(dialect, s)
        )),
        (Dialect::MySql, Some(s)) => out.push(format!(
            "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4",
            quote_ident(dialect, s)
        )),
        _ => {}
    }
    let mut defs = Vec::new();
    for c in COLUMNS {
        if c.name == "seq" {
            defs.push(match dialect {
                Dialect::Postgres => {
                    "seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY".to_owned()
                }
                Dialect::MySql => "seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY".to_owned(),
                _ => "seq INTEGER PRIMARY KEY AUTOINCREMENT".to_owned(),
            });
            continue;
        }
        let mut def = format!("{} {}", c.name, c.sql_type(dialect));
        if !c.nullable {
            def.push_str(" NOT NULL");
        }
        if let Some(d) = c.default {
            def.push_str(" DEFAULT ");
            def.push_str(d);
        }
        if c.name == "status" {
            // Only the `RowStatus` codes: a row another tool writes with any other status
            // would be invisible to the claim (it reads `status < 2`) and never finish, so
            // the database refuses it, naming the constraint.
            def.push_str(" CHECK (status BETWEEN 0 AND 3)");
        }
        defs.push(def);
    }
    if dialect == Dialect::MySql {
        // MySQL 8 has no CREATE INDEX IF NOT EXISTS: indexes go inside CREATE TABLE.
        for idx in INDEXES {
            defs.push(format!(
                "{}INDEX `{}` ({})",
                if idx.unique { "UNIQUE " } else { "" },
                table.derived(idx.suffix),
                idx.mysql_columns.join(", ")
            ));
        }
    }
    out.push(format!(
        "CREATE TABLE IF NOT EXISTS {quoted} (\n    {}\n){}",
        defs.join(",\n    "),
        if dialect == Dialect::MySql {
            " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        } else {
            ""
        }
    ));
    if dialect != Dialect::MySql {
        for idx in INDEXES {
            // PostgreSQL and SQLite put an index in its table's schema; the name is bare.
            let schema_prefix = match (dialect, table.schema()) {
                (Dialect::Sqlite, Some(s)) => format!("{}.", quote_ident(dialect, s)),
                _ => String::new(),
            };
            let on = match dialect {
                Dialect::Sqlite => format!("\"{}\"", table.table()),
                _ => quoted.clone(),
            };
            let mut stmt = format!(
                "CREATE {}INDEX IF NOT EXISTS {schema_prefix}\"{}\" ON {on} ({})",
                if idx.unique { "UNIQUE " } else { "" },
                table.derived(idx.suffix),
                idx.columns_for(dialect).join(", ")
            );
            if let Some(filter) = idx.partial {
                stmt.push_str(" WHERE ");
                stmt.push_str(filter);
            }
            out.push(stmt);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_per_dialect() {
        let t = TableName::parse("app.outbox_events").expect("valid");
        assert_eq!(t.quoted(Dialect::Postgres), "\"app\".\"outbox_events\"");
        assert_eq!(t.quoted(Dialect::MySql), "`app`.`outbox_events`");
    }

    #[test]
    fn ddl_has_every_column_on_every_dialect() {
        for dialect in [Dialect::Postgres, Dialect::MySql, Dialect::Sqlite] {
            let sql = create_table_sql(&TableName::default(), dialect);
            assert_eq!(
                sql.len(),
                if dialect == Dialect::MySql {
                    1
                } else {
                    1 + INDEXES.len()
                }
            );
            for c in COLUMNS {
                assert!(
                    sql[0].contains(&format!("\n    {} ", c.name)),
                    "{dialect:?} {}",
                    c.name
                );
            }
        }
    }

    #[test]
    fn a_named_schema_or_database_is_created_first() {
        let t = TableName::parse("app.outbox_events").expect("valid");
        let pg = create_table_sql(&t, Dialect::Postgres);
        assert_eq!(pg[0], "CREATE SCHEMA IF NOT EXISTS \"app\"");
        assert!(pg[1].starts_with("CREATE TABLE IF NOT EXISTS \"app\".\"outbox_events\""));
        let my = create_table_sql(&t, Dialect::MySql);
        assert!(
            my[0].starts_with("CREATE DATABASE IF NOT EXISTS `app`"),
            "{}",
            my[0]
        );
        assert!(create_table_sql(&t, Dialect::Sqlite)[0].starts_with("CREATE TABLE"));
    }
}

//! What a migrated outbox table looks like in the database's catalog, so a table created by
//! any tool (diesel or SeaORM migrations, a team's own SQL) can be compared with the one
//! [`crate::postgres::migrate`] or [`crate::mysql::migrate`] creates.

/// One column as the catalog describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnShape {
    /// Name.
    pub name: String,
    /// Type as the catalog spells it (`bigint`, `timestamp with time zone`, `char(36)`).
    pub data_type: String,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// Default expression, if any.
    pub default: Option<String>,
}

/// A table's columns (in order) and index definitions (by name, schema names removed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableShape {
    /// Columns in ordinal order.
    pub columns: Vec<ColumnShape>,
    /// One line per index and indexed column, comparable across schemas.
    pub indexes: Vec<String>,
}

#[cfg(feature = "postgres")]
/// The shape of `schema.table` on PostgreSQL.
pub async fn postgres(
    pool: &sqlx::PgPool,
    schema: &str,
    table: &str,
) -> outbox_core::Result<TableShape> {
    use crate::error::map_sqlx;
    let cols: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text, is_nullable::text, column_default::text \
         FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 \
         ORDER BY ordinal_position",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(pool)
    .await
    .map_err(|e| map_sqlx("reading the table's columns", e))?;
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT replace(indexdef, $1, '') FROM pg_indexes WHERE schemaname = $2 \
         AND tablename = $3 ORDER BY indexname",
    )
    .bind(format!("\"{schema}\"."))
    .bind(schema)
    .bind(table)
    .fetch_all(pool)
    .await
    .map_err(|e| map_sqlx("reading the table's indexes", e))?;
    // Unquoted schema names appear too, depending on how the name was written.
    let indexes = indexes
        .into_iter()
        .map(|i| i.replace(&format!("{schema}."), ""))
        .collect();
    Ok(TableShape {
        columns: cols.into_iter().map(column).collect(),
        indexes,
    })
}

#[cfg(feature = "mysql")]
/// The shape of `database.table` on MySQL / MariaDB.
pub async fn mysql(
    pool: &sqlx::MySqlPool,
    database: &str,
    table: &str,
) -> outbox_core::Result<TableShape> {
    use crate::error::map_sqlx;
    let cols: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT CAST(column_name AS CHAR), CAST(column_type AS CHAR), CAST(is_nullable AS CHAR), \
                CAST(column_default AS CHAR) \
         FROM information_schema.columns WHERE table_schema = ? AND table_name = ? \
         ORDER BY ordinal_position",
    )
    .bind(database)
    .bind(table)
    .fetch_all(pool)
    .await
    .map_err(|e| map_sqlx("reading the table's columns", e))?;
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(CONCAT(index_name, ' ', seq_in_index, ' ', column_name, \
                IF(non_unique = 0, ' unique', '')) AS CHAR) \
         FROM information_schema.statistics WHERE table_schema = ? AND table_name = ? \
         ORDER BY index_name, seq_in_index",
    )
    .bind(database)
    .bind(table)
    .fetch_all(pool)
    .await
    .map_err(|e| map_sqlx("reading the table's indexes", e))?;
    Ok(TableShape {
        columns: cols.into_iter().map(column).collect(),
        indexes,
    })
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
fn column(
    (name, data_type, nullable, default): (String, String, String, Option<String>),
) -> ColumnShape {
    ColumnShape {
        name,
        data_type,
        nullable: nullable.eq_ignore_ascii_case("YES"),
        default,
    }
}

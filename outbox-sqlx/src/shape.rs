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

/// `pub async fn $name(pool, schema, table) -> (theirs, ours)` for one database.
macro_rules! beside_migrate {
    ($feature:literal, $name:ident, $pool:ty, $module:ident, $shape:ident, $kind:literal,
     $dialect:ident, $tail:literal, $doc:literal) => {
        #[cfg(feature = $feature)]
        #[doc = $doc]
        ///
        /// The reference is a scratch `<schema>_reference`, dropped again; equal shapes mean
        /// a table made by another tool's migration is one the relay claims as its own.
        pub async fn $name(
            pool: &$pool,
            schema: &str,
            table: &str,
        ) -> outbox_core::Result<(TableShape, TableShape)> {
            beside_reference(
                schema,
                table,
                async |name| crate::$module::migrate(pool, name).await,
                async |s| $shape(pool, s, table).await,
                async |s| drop_scratch(pool, $kind, outbox_core::Dialect::$dialect, s, $tail).await,
            )
            .await
        }
    };
}

beside_migrate!(
    "postgres",
    postgres_beside_migrate,
    sqlx::PgPool,
    postgres,
    postgres,
    "SCHEMA",
    Postgres,
    " CASCADE",
    "`schema.table` on PostgreSQL beside the table [`crate::postgres::migrate`] creates: \
     `(theirs, ours)`."
);
beside_migrate!(
    "mysql",
    mysql_beside_migrate,
    sqlx::MySqlPool,
    mysql,
    mysql,
    "DATABASE",
    MySql,
    "",
    "`database.table` on MySQL / MariaDB beside the table [`crate::mysql::migrate`] \
     creates: `(theirs, ours)`."
);

/// Migrates the scratch `<schema>_reference`, reads both shapes, and drops the scratch
/// namespace whether or not the reads worked.
#[cfg(any(feature = "postgres", feature = "mysql"))]
async fn beside_reference(
    schema: &str,
    table: &str,
    migrate: impl AsyncFnOnce(&outbox_core::TableName) -> outbox_core::Result<()>,
    shape: impl AsyncFn(&str) -> outbox_core::Result<TableShape>,
    drop: impl AsyncFnOnce(&str) -> outbox_core::Result<()>,
) -> outbox_core::Result<(TableShape, TableShape)> {
    let reference = format!("{schema}_reference");
    migrate(&outbox_core::TableName::with_schema(&reference, table)?).await?;
    let (theirs, ours) = (shape(schema).await, shape(&reference).await);
    drop(&reference).await?;
    Ok((theirs?, ours?))
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
async fn drop_scratch<'c, E>(
    executor: E,
    kind: &str,
    dialect: outbox_core::Dialect,
    name: &str,
    tail: &str,
) -> outbox_core::Result<()>
where
    E: sqlx::Executor<'c>,
{
    let text = format!(
        "DROP {kind} IF EXISTS {}{tail}",
        outbox_sql::quote_ident(dialect, name)
    );
    executor
        .execute(sqlx::AssertSqlSafe(text))
        .await
        .map(drop)
        .map_err(|e| crate::error::map_sqlx("dropping the scratch reference table", e))
}

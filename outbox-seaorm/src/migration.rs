//! The `sea-orm-migration` migration that creates the canonical outbox table.

use outbox_core::TableName;
use outbox_core::schema::Dialect;
use outbox_sql::Quote;
use sea_orm::{ConnectionTrait, DbBackend, DbErr};
use sea_orm_migration::{MigrationName, MigrationTrait, MigratorTrait, SchemaManager, async_trait};

/// Creates the outbox table and its indexes, exactly as `outbox_core::schema` defines them
/// (the same DDL `outbox-sqlx` and the shipped SQL files use). Add it to your migrator:
///
/// ```rust
/// use sea_orm_migration::{MigrationTrait, MigratorTrait};
///
/// struct Migrator;
///
/// impl MigratorTrait for Migrator {
///     fn migrations() -> Vec<Box<dyn MigrationTrait>> {
///         vec![Box::new(outbox_seaorm::CreateOutboxTable::default()) /* , yours */]
///     }
/// }
/// ```
#[derive(Clone, Debug, Default)]
pub struct CreateOutboxTable {
    table: TableName,
}

impl CreateOutboxTable {
    /// For a table other than `outbox_events` (the SeaORM entities use the default name).
    pub fn for_table(table: TableName) -> Self {
        CreateOutboxTable { table }
    }
}

fn dialect(backend: DbBackend) -> Result<Dialect, DbErr> {
    match backend {
        DbBackend::Postgres => Ok(Dialect::Postgres),
        DbBackend::MySql => Ok(Dialect::MySql),
        DbBackend::Sqlite => Ok(Dialect::Sqlite),
        #[allow(unreachable_patterns)]
        other => Err(DbErr::Migration(format!(
            "the outbox table has no DDL for backend {other:?}"
        ))),
    }
}

impl MigrationName for CreateOutboxTable {
    fn name(&self) -> &str {
        "m20261101_000001_create_outbox_events"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateOutboxTable {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let dialect = dialect(manager.get_database_backend())?;
        let conn = manager.get_connection();
        for stmt in outbox_sql::create_table_sql(&self.table, dialect) {
            conn.execute_unprepared(&stmt).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let dialect = dialect(manager.get_database_backend())?;
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "DROP TABLE IF EXISTS {}",
                self.table.quoted(dialect)
            ))
            .await?;
        Ok(())
    }
}

/// A migrator holding only [`CreateOutboxTable`], for services whose other tables are
/// migrated elsewhere: `OutboxMigrator::up(&db, None).await?`.
#[derive(Debug)]
pub struct OutboxMigrator;

impl MigratorTrait for OutboxMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateOutboxTable::default())]
    }
}

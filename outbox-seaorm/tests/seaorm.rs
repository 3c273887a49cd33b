//! outbox-seaorm against the machine's real PostgreSQL, MariaDB and SQLite. Each test works
//! in a schema, database or file of its own.

use std::collections::HashSet;
use std::time::Duration;

use outbox_core::testkit::{
    StoreHarness, TempDb, assert_relays_exactly, run_operations_suite, run_store_suite, unique_name,
};
use outbox_core::{Envelope, EventId, InMemoryPublisher, Relay, RelayConfig, Result, TableName};
use outbox_seaorm::{OutboxMigrator, SeaOrmStore, enqueue, enqueue_all, map_db_err};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

/// A database of its own: a PostgreSQL schema (through the search path), a MariaDB
/// database, or a SQLite file; migrated, with an `orders` business table.
struct Sea {
    db: DatabaseConnection,
    store: SeaOrmStore,
    _file: Option<TempDb>,
}

/// Drops the PostgreSQL schemas or MariaDB databases whose names start with `prefix`.
async fn drop_all(url: &str, prefix: &str) {
    let admin = connect(url, None).await;
    let backend = admin.get_database_backend();
    let (list, drop) = match backend {
        DbBackend::Postgres => (
            format!("SELECT nspname::text AS n FROM pg_namespace WHERE nspname LIKE '{prefix}%'"),
            "DROP SCHEMA \"{}\" CASCADE",
        ),
        _ => (
            format!(
                "SELECT schema_name AS n FROM information_schema.schemata WHERE schema_name LIKE '{prefix}%'"
            ),
            "DROP DATABASE `{}`",
        ),
    };
    let rows = admin
        .query_all_raw(sea_orm::Statement::from_string(backend, list))
        .await
        .expect("list");
    assert!(!rows.is_empty(), "the test's own schemas were found");
    for row in rows {
        let name: String = row.try_get("", "n").expect("name");
        admin
            .execute_unprepared(&drop.replace("{}", &name))
            .await
            .expect("drop");
    }
}

async fn connect(url: &str, schema: Option<&str>) -> DatabaseConnection {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(8).sqlx_logging(false);
    if let Some(s) = schema {
        opts.set_schema_search_path(s.to_owned());
    }
    Database::connect(opts).await.expect("connect")
}

impl Sea {
    async fn postgres(url: &str, prefix: &str) -> Sea {
        let schema = unique_name(prefix);
        let admin = connect(url, None).await;
        admin
            .execute_unprepared(&format!("CREATE SCHEMA \"{schema}\""))
            .await
            .expect("schema");
        Sea::migrated(connect(url, Some(&schema)).await).await
    }

    async fn mariadb(url: &str, prefix: &str) -> Sea {
        let name = unique_name(prefix);
        let admin = connect(url, None).await;
        admin
            .execute_unprepared(&format!("CREATE DATABASE `{name}`"))
            .await
            .expect("database");
        let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
        Sea::migrated(connect(&format!("{base}/{name}"), None).await).await
    }

    async fn sqlite() -> Sea {
        let file = TempDb::new("outbox_sea");
        let sea = Sea::migrated(connect(&file.url(), None).await).await;
        Sea {
            _file: Some(file),
            ..sea
        }
    }

    async fn migrated(db: DatabaseConnection) -> Sea {
        OutboxMigrator::up(&db, None).await.expect("migrate");
        // Applied once: running the migrator again is a no-op.
        OutboxMigrator::up(&db, None).await.expect("migrate again");
        db.execute_unprepared(
            "CREATE TABLE orders (id VARCHAR(64) PRIMARY KEY, total BIGINT NOT NULL)",
        )
        .await
        .expect("orders");
        Sea {
            store: outbox_seaorm::store(&db).expect("store"),
            db,
            _file: None,
        }
    }

    /// Writes an order per event and the events in one SeaORM transaction.
    async fn write(&self, events: &[Envelope], commit: bool) -> Result<()> {
        let txn = self.db.begin().await.map_err(|e| map_db_err("begin", e))?;
        for e in events {
            let sql = match txn.get_database_backend() {
                DbBackend::Postgres => "INSERT INTO orders (id, total) VALUES ($1, 100)",
                _ => "INSERT INTO orders (id, total) VALUES (?, 100)",
            };
            txn.execute_raw(sea_orm::Statement::from_sql_and_values(
                txn.get_database_backend(),
                sql,
                [e.id().to_string().into()],
            ))
            .await
            .map_err(|e| map_db_err("insert order", e))?;
        }
        enqueue_all(&txn, events).await?;
        if commit {
            txn.commit().await.map_err(|e| map_db_err("commit", e))
        } else {
            txn.rollback().await.map_err(|e| map_db_err("rollback", e))
        }
    }

    async fn orders(&self) -> i64 {
        let row = self
            .db
            .query_one_raw(sea_orm::Statement::from_string(
                self.db.get_database_backend(),
                "SELECT COUNT(*) AS n FROM orders",
            ))
            .await
            .expect("count")
            .expect("a row");
        row.try_get::<i64>("", "n").expect("n")
    }
}

impl StoreHarness for Sea {
    type Store = SeaOrmStore;
    fn store(&self) -> SeaOrmStore {
        self.store.clone()
    }
    async fn transact(&self, events: Vec<Envelope>, commit: bool) -> Result<()> {
        self.write(&events, commit).await
    }
}

/// An event whose times are whole microseconds (what every database keeps), with headers and
/// a trace, so a read-back compares equal.
fn ev(key: &str, n: usize) -> Envelope {
    outbox_core::testkit::round_trip_event(key, n, "orders")
}

fn config() -> RelayConfig {
    RelayConfig {
        lease: Duration::from_secs(10),
        publish_timeout: Duration::from_secs(5),
        ..RelayConfig::default()
    }
}

/// Commit and rollback in both SeaORM styles (`begin`/`commit` and `db.transaction(...)`):
/// exactly the committed events are relayed, with their business rows.
async fn committed_appear_rolled_back_do_not(sea: Sea) {
    let committed = vec![ev("a", 1), ev("b", 2)];
    sea.write(&committed, true).await.expect("commit");
    sea.write(&[ev("c", 3)], false).await.expect("rollback");
    let in_closure = ev("d", 4);
    let e = in_closure.clone();
    sea.db
        .transaction::<_, (), outbox_core::Error>(|txn| {
            Box::pin(async move { enqueue(txn, &e).await })
        })
        .await
        .expect("closure commits");
    let failed = ev("e", 5);
    let result = sea
        .db
        .transaction::<_, (), outbox_core::Error>(|txn| {
            Box::pin(async move {
                enqueue(txn, &failed).await?;
                Err(outbox_core::Error::new(
                    outbox_core::ErrorKind::Rejected,
                    "business rule failed",
                ))
            })
        })
        .await;
    assert!(
        result.is_err(),
        "the closure's error rolls the transaction back"
    );

    let publisher = InMemoryPublisher::new();
    let relay = Relay::new(sea.store.clone(), publisher.clone(), config()).expect("relay");
    assert_eq!(relay.drain().await.expect("drain").published, 3);
    let got: HashSet<EventId> = publisher.delivered_ids().into_iter().collect();
    let mut want: HashSet<EventId> = committed.iter().map(Envelope::id).collect();
    want.insert(in_closure.id());
    assert_eq!(got, want, "exactly the committed events");
    assert_eq!(sea.orders().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_commit_and_rollback() {
    let url = outbox_core::service_or_skip!("seaorm postgres_commit_and_rollback", Postgres);
    let prefix = unique_name("outbox_sea_pg");
    committed_appear_rolled_back_do_not(Sea::postgres(&url, &prefix).await).await;
    drop_all(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_commit_and_rollback() {
    let url = outbox_core::service_or_skip!("seaorm mariadb_commit_and_rollback", MySql);
    let prefix = unique_name("outbox_sea_my");
    committed_appear_rolled_back_do_not(Sea::mariadb(&url, &prefix).await).await;
    drop_all(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_commit_and_rollback() {
    committed_appear_rolled_back_do_not(Sea::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_on_postgres() {
    let url = outbox_core::service_or_skip!("seaorm conformance_suite_on_postgres", Postgres);
    let prefix = unique_name("outbox_sea_conf");
    run_store_suite(|| Sea::postgres(&url, &prefix)).await;
    run_operations_suite(|| Sea::postgres(&url, &prefix)).await;
    drop_all(&url, &prefix).await;
}

/// Events written through SeaORM are relayed by outbox-sqlx's own store (its own pool) and
/// read back identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_stack_seaorm_writes_sqlx_relays() {
    let url =
        outbox_core::service_or_skip!("seaorm mixed_stack_seaorm_writes_sqlx_relays", Postgres);
    let prefix = unique_name("outbox_sea_mix");
    let sea = Sea::postgres(&url, &prefix).await;
    let schema: String = {
        let row = sea
            .db
            .query_one_raw(sea_orm::Statement::from_string(
                DbBackend::Postgres,
                "SELECT current_schema() AS s",
            ))
            .await
            .expect("schema")
            .expect("row");
        row.try_get("", "s").expect("s")
    };
    let events: Vec<Envelope> = (0..50).map(|i| ev(&format!("k{}", i % 7), i)).collect();
    sea.write(&events, true).await.expect("commit");

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .expect("sqlx pool");
    let table = TableName::with_schema(&schema, "outbox_events").expect("name");
    assert_relays_exactly(outbox_sqlx::postgres::PgStore::new(pool, table), &events).await;
    drop_all(&url, &prefix).await;
}

/// The SeaORM migration and outbox-sqlx's create the same columns, types, defaults and
/// indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_parity_with_outbox_sqlx() {
    let url = outbox_core::service_or_skip!("seaorm schema_parity_with_outbox_sqlx", Postgres);
    let a = unique_name("outbox_par_sea");
    let admin = connect(&url, None).await;
    admin
        .execute_unprepared(&format!("CREATE SCHEMA \"{a}\""))
        .await
        .expect("schema");
    OutboxMigrator::up(&connect(&url, Some(&a)).await, None)
        .await
        .expect("seaorm migration");
    let pool = sqlx::postgres::PgPool::connect(&url).await.expect("pool");
    let (seaorm, sqlx) = outbox_sqlx::shape::postgres_beside_migrate(&pool, &a, "outbox_events")
        .await
        .expect("shapes");
    assert_eq!(seaorm.columns.len(), outbox_core::schema::COLUMNS.len());
    assert_eq!(
        seaorm.indexes.len(),
        outbox_core::schema::INDEXES.len() + 1,
        "{:?}",
        seaorm.indexes
    );
    assert_eq!(
        seaorm, sqlx,
        "columns, types, nullability, defaults and indexes"
    );
    admin
        .execute_unprepared(&format!("DROP SCHEMA \"{a}\" CASCADE"))
        .await
        .expect("drop");
}

/// `emit` writes committed events into PostgreSQL's WAL through a SeaORM transaction, in
/// order and field for field, and nothing for a rollback; on another database it refuses
/// with an error naming the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_writes_committed_events_into_the_wal() {
    let url = outbox_core::service_or_skip!("seaorm emit", Postgres);
    let name = unique_name("outbox_semit");
    let pool = sqlx::PgPool::connect(&url).await.expect("pool");
    let spec = outbox_cdc::slot::SlotSpec {
        slot: name.clone(),
        publication: format!("{name}_pub"),
        table: None,
    };
    spec.ensure(&pool).await.expect("slot");
    let db = Database::connect(&url).await.expect("connect");
    let events: Vec<Envelope> = (0..3).map(|n| ev("k", n)).collect();
    let txn = db.begin().await.expect("begin");
    outbox_seaorm::emit_with_prefix(&txn, &name, &events)
        .await
        .expect("emit");
    txn.commit().await.expect("commit");
    let txn = db.begin().await.expect("begin");
    outbox_seaorm::emit_with_prefix(&txn, &name, &[ev("k", 9)])
        .await
        .expect("emit");
    txn.rollback().await.expect("rollback");

    let got: Vec<Envelope> = outbox_cdc::pgoutput::read_events(&pool, &spec, &name)
        .await
        .expect("read the slot's events");
    assert_eq!(got, events, "field for field, no rollback");
    spec.drop_all(&pool).await.expect("drop");

    let lite = TempDb::new("outbox_semit");
    let sqlite = Database::connect(lite.url()).await.expect("sqlite");
    let err = outbox_seaorm::emit(&sqlite, &events[0])
        .await
        .expect_err("SQLite has no WAL messages");
    assert!(err.to_string().contains("Sqlite"), "{err}");
}

//! outbox-diesel against the machine's real PostgreSQL, MariaDB and SQLite. Each test works
//! in a schema, database or file of its own. Needs the `postgres` and `mysql` features (which
//! link libpq and the MariaDB client); `scripts/test.sh` builds with all features.
#![cfg(all(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "async"
))]

use diesel::prelude::*;
use outbox_core::testkit::{assert_relays_exactly, unique_name};
use outbox_core::{Envelope, TableName};
use outbox_diesel::{mysql as dmy, pg as dpg, sqlite as dlite};

/// An event with whole-microsecond times, a header and a trace, so read-backs compare equal.
fn ev(key: &str, n: usize) -> Envelope {
    outbox_core::testkit::round_trip_event(key, n, "orders")
}

diesel::table! {
    /// The business table the tests write beside the events.
    orders (id) {
        /// Order id.
        id -> Text,
        /// Total in cents.
        total -> BigInt,
    }
}

/// Commits two orders with their events, rolls one back (a business rule fails after both
/// writes), and evaluates to the committed events.
macro_rules! write_orders {
    ($conn:expr, $enqueue:path) => {{
        let conn = $conn;
        let committed = vec![ev("a", 1), ev("b", 2)];
        for e in &committed {
            let id = e.id().to_string();
            conn.transaction::<_, diesel::result::Error, _>(|conn| {
                diesel::insert_into(orders::table)
                    .values((orders::id.eq(&id), orders::total.eq(100_i64)))
                    .execute(conn)?;
                $enqueue(conn, std::slice::from_ref(e))
            })
            .expect("commit");
        }
        let doomed = ev("c", 3);
        let id = doomed.id().to_string();
        let failed = conn.transaction::<(), diesel::result::Error, _>(|conn| {
            diesel::insert_into(orders::table)
                .values((orders::id.eq(&id), orders::total.eq(0_i64)))
                .execute(conn)?;
            $enqueue(conn, std::slice::from_ref(&doomed))?;
            Err(diesel::result::Error::RollbackTransaction)
        });
        assert!(failed.is_err());
        let kept: i64 = orders::table
            .count()
            .get_result(conn)
            .expect("count orders");
        assert_eq!(
            kept, 2,
            "business rows commit and roll back with their events"
        );
        committed
    }};
}

/// PostgreSQL: a schema of its own, selected through the connection's search path.
fn pg_conn(url: &str, schema: &str) -> PgConnection {
    let mut conn = PgConnection::establish(url).expect("connect to PostgreSQL");
    diesel::sql_query(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
        .execute(&mut conn)
        .expect("schema");
    diesel::sql_query(format!("SET search_path TO \"{schema}\""))
        .execute(&mut conn)
        .expect("search path");
    conn
}

async fn drop_pg_schema(url: &str, schema: &str) {
    let pool = sqlx::PgPool::connect(url).await.expect("pool");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&pool)
    .await
    .expect("drop schema");
}

async fn pg_store(url: &str, schema: &str) -> outbox_sqlx::postgres::PgStore {
    let pool = sqlx::PgPool::connect(url).await.expect("pool");
    outbox_sqlx::postgres::PgStore::new(
        pool,
        TableName::with_schema(schema, "outbox_events").expect("name"),
    )
}

/// Diesel writes (committed and rolled back), outbox-sqlx's store relays: exactly the
/// committed events, read back field for field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_commit_rollback_and_mixed_stack() {
    let url =
        outbox_core::service_or_skip!("diesel postgres_commit_rollback_and_mixed_stack", Postgres);
    let schema = unique_name("outbox_diesel");
    let committed = {
        let mut conn = pg_conn(&url, &schema);
        dpg::run_migrations(&mut conn).expect("migrate");
        dpg::run_migrations(&mut conn).expect("migrate again");
        diesel::sql_query("CREATE TABLE orders (id TEXT PRIMARY KEY, total BIGINT NOT NULL)")
            .execute(&mut conn)
            .expect("orders");
        write_orders!(&mut conn, dpg::enqueue_all)
    };
    assert_relays_exactly(pg_store(&url, &schema).await, &committed).await;
    drop_pg_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_commit_and_rollback() {
    let path = std::env::temp_dir().join(format!("{}.db", unique_name("outbox_diesel")));
    let committed = {
        let mut conn = SqliteConnection::establish(&path.display().to_string()).expect("open");
        dlite::run_migrations(&mut conn).expect("migrate");
        diesel::sql_query("CREATE TABLE orders (id TEXT PRIMARY KEY, total BIGINT NOT NULL)")
            .execute(&mut conn)
            .expect("orders");
        write_orders!(&mut conn, dlite::enqueue_all)
    };
    let pool = outbox_sqlx::sqlite::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("pool");
    let store = outbox_sqlx::sqlite::SqliteStore::new(pool.clone(), TableName::default());
    assert_relays_exactly(store, &committed).await;
    pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// MariaDB: a database of its own.
fn my_conn(url: &str, db: &str) -> MysqlConnection {
    let mut admin = MysqlConnection::establish(url).expect("connect to MariaDB");
    diesel::sql_query(format!("CREATE DATABASE IF NOT EXISTS `{db}`"))
        .execute(&mut admin)
        .expect("database");
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    MysqlConnection::establish(&format!("{base}/{db}")).expect("connect to the test database")
}

async fn drop_my_db(url: &str, db: &str) {
    let pool = sqlx::MySqlPool::connect(url).await.expect("pool");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{db}`")))
        .execute(&pool)
        .await
        .expect("drop database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_commit_and_rollback() {
    let url = outbox_core::service_or_skip!("diesel mariadb_commit_and_rollback", MySql);
    let db = unique_name("outbox_diesel");
    let committed = {
        let mut conn = my_conn(&url, &db);
        dmy::run_migrations(&mut conn).expect("migrate");
        diesel::sql_query(
            "CREATE TABLE orders (id VARCHAR(64) PRIMARY KEY, total BIGINT NOT NULL)",
        )
        .execute(&mut conn)
        .expect("orders");
        write_orders!(&mut conn, dmy::enqueue_all)
    };
    let pool = sqlx::MySqlPool::connect(&url).await.expect("pool");
    let store = outbox_sqlx::mysql::MySqlStore::new(
        pool,
        TableName::with_schema(&db, "outbox_events").expect("name"),
    );
    assert_relays_exactly(store, &committed).await;
    drop_my_db(&url, &db).await;
}

/// A diesel-async PostgreSQL connection whose search path is `schema`.
async fn async_pg_conn(url: &str, schema: &str) -> diesel_async::AsyncPgConnection {
    use diesel_async::AsyncConnection as _;
    let mut conn = diesel_async::AsyncPgConnection::establish(url)
        .await
        .expect("connect");
    diesel_async::RunQueryDsl::execute(
        diesel::sql_query(format!("SET search_path TO \"{schema}\"")),
        &mut conn,
    )
    .await
    .expect("search path");
    conn
}

/// Through diesel-async's `transaction`: commits one event with `enqueue_async` and one with
/// `enqueue_all_async`, rolls a third back, and evaluates to the two committed.
macro_rules! async_commit_and_roll_back {
    ($conn:expr, $module:ident) => {{
        let kept = vec![ev("x", 1), ev("z", 3)];
        let k = kept.clone();
        $conn
            .transaction::<_, diesel::result::Error, _>(async move |c| {
                $module::enqueue_async(c, &k[0]).await?;
                $module::enqueue_all_async(c, &k[1..]).await
            })
            .await
            .expect("commit");
        let d = ev("y", 2);
        let failed = $conn
            .transaction::<(), diesel::result::Error, _>(async move |c| {
                $module::enqueue_async(c, &d).await?;
                Err(diesel::result::Error::RollbackTransaction)
            })
            .await;
        assert!(failed.is_err());
        kept
    }};
}

/// diesel-async on PostgreSQL and MySQL: commit and rollback inside `transaction`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_commit_and_rollback() {
    use diesel_async::{AsyncConnection, AsyncMysqlConnection};
    let [pg_url, my_url] =
        outbox_core::service_or_skip!("diesel async_commit_and_rollback", [Postgres, MySql]);
    // PostgreSQL.
    let schema = unique_name("outbox_diesel_async");
    dpg::run_migrations(&mut pg_conn(&pg_url, &schema)).expect("migrate");
    let mut conn = async_pg_conn(&pg_url, &schema).await;
    let kept = async_commit_and_roll_back!(conn, dpg);
    assert_relays_exactly(pg_store(&pg_url, &schema).await, &kept).await;
    drop_pg_schema(&pg_url, &schema).await;

    // MariaDB.
    let db = unique_name("outbox_diesel_async");
    dmy::run_migrations(&mut my_conn(&my_url, &db)).expect("migrate");
    let base = my_url.rsplit_once('/').map_or(my_url.as_str(), |(b, _)| b);
    let mut conn = AsyncMysqlConnection::establish(&format!("{base}/{db}"))
        .await
        .expect("connect");
    let kept = async_commit_and_roll_back!(conn, dmy);
    let pool = sqlx::MySqlPool::connect(&my_url).await.expect("pool");
    let table = TableName::with_schema(&db, "outbox_events").expect("name");
    assert_relays_exactly(outbox_sqlx::mysql::MySqlStore::new(pool, table), &kept).await;
    drop_my_db(&my_url, &db).await;
}

/// The diesel migration and outbox-sqlx's migrate create the same columns, types, defaults
/// and indexes, on PostgreSQL and on MariaDB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_parity_with_outbox_sqlx() {
    let [pg_url, my_url] = outbox_core::service_or_skip!("diesel schema_parity", [Postgres, MySql]);
    // A PostgreSQL schema and a MariaDB database by diesel's migrations, each beside
    // outbox-sqlx's reference.
    let (schema, db) = (
        unique_name("outbox_par_diesel"),
        unique_name("outbox_par_diesel"),
    );
    dpg::run_migrations(&mut pg_conn(&pg_url, &schema)).expect("diesel migration");
    dmy::run_migrations(&mut my_conn(&my_url, &db)).expect("diesel migration");
    let pg = sqlx::PgPool::connect(&pg_url).await.expect("pool");
    let my = sqlx::MySqlPool::connect(&my_url).await.expect("pool");
    use outbox_sqlx::shape::{mysql_beside_migrate, postgres_beside_migrate};
    let on_pg = postgres_beside_migrate(&pg, &schema, "outbox_events").await;
    assert_same_shape(on_pg, "PostgreSQL");
    assert_same_shape(
        mysql_beside_migrate(&my, &db, "outbox_events").await,
        "MariaDB",
    );
    drop_pg_schema(&pg_url, &schema).await;
    drop_my_db(&my_url, &db).await;
}

/// Diesel's table has every column and index, and equals outbox-sqlx's reference.
fn assert_same_shape(
    shapes: outbox_core::Result<(
        outbox_sqlx::shape::TableShape,
        outbox_sqlx::shape::TableShape,
    )>,
    database: &str,
) {
    let (diesel, sqlx) = shapes.expect("shapes");
    assert_eq!(diesel.columns.len(), outbox_core::schema::COLUMNS.len());
    // The primary key's index beside the described ones (one line per column on MariaDB).
    assert!(diesel.indexes.len() > outbox_core::schema::INDEXES.len());
    assert_eq!(
        diesel, sqlx,
        "{database}: columns, types, defaults and indexes"
    );
}

/// A PostgreSQL schema of its own, written through diesel-async, claimed by `DieselPgStore`.
struct DieselPg {
    writer: tokio::sync::Mutex<diesel_async::AsyncPgConnection>,
    store: outbox_diesel::DieselPgStore,
}

impl DieselPg {
    async fn new(url: &str, prefix: &str) -> DieselPg {
        let schema = unique_name(prefix);
        {
            let mut conn = pg_conn(url, &schema);
            dpg::run_migrations(&mut conn).expect("migrate");
            diesel::sql_query("CREATE TABLE orders (id TEXT PRIMARY KEY, total BIGINT NOT NULL)")
                .execute(&mut conn)
                .expect("orders");
        }
        let writer = async_pg_conn(url, &schema).await;
        let table = TableName::with_schema(&schema, "outbox_events").expect("name");
        DieselPg {
            writer: tokio::sync::Mutex::new(writer),
            store: outbox_diesel::DieselPgStore::connect(url, table, 4)
                .await
                .expect("store"),
        }
    }

    async fn write(&self, events: Vec<Envelope>, commit: bool) -> outbox_core::Result<()> {
        use diesel_async::AsyncConnection as _;
        let mut conn = self.writer.lock().await;
        let done = conn
            .transaction::<(), diesel::result::Error, _>(async move |c| {
                for e in &events {
                    diesel_async::RunQueryDsl::execute(
                        diesel::insert_into(orders::table)
                            .values((orders::id.eq(e.id().to_string()), orders::total.eq(100_i64))),
                        c,
                    )
                    .await?;
                }
                dpg::enqueue_all_async(c, &events).await?;
                if commit {
                    Ok(())
                } else {
                    Err(diesel::result::Error::RollbackTransaction)
                }
            })
            .await;
        match done {
            Ok(()) => Ok(()),
            Err(diesel::result::Error::RollbackTransaction) if !commit => Ok(()),
            Err(e) => Err(outbox_diesel::map_diesel("write", e)),
        }
    }
}

impl outbox_core::testkit::StoreHarness for DieselPg {
    type Store = outbox_diesel::DieselPgStore;
    fn store(&self) -> outbox_diesel::DieselPgStore {
        self.store.clone()
    }
    async fn transact(&self, events: Vec<Envelope>, commit: bool) -> outbox_core::Result<()> {
        self.write(events, commit).await
    }
}

async fn drop_pg_schemas(url: &str, prefix: &str) {
    let pool = sqlx::PgPool::connect(url).await.expect("pool");
    let names: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(prefix)
            .fetch_all(&pool)
            .await
            .expect("list");
    assert!(!names.is_empty(), "the test's own schemas were found");
    for n in names {
        drop_pg_schema(url, &n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diesel_store_passes_the_conformance_suite_on_postgres() {
    let url = outbox_core::service_or_skip!("diesel store conformance", Postgres);
    let prefix = unique_name("outbox_dconf");
    outbox_core::testkit::run_store_suite(|| DieselPg::new(&url, &prefix)).await;
    drop_pg_schemas(&url, &prefix).await;
}

/// The reverse mixed stack: events written through outbox-sqlx are relayed by the diesel
/// store and read back field for field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_stack_sqlx_writes_diesel_relays() {
    let url =
        outbox_core::service_or_skip!("diesel mixed_stack_sqlx_writes_diesel_relays", Postgres);
    let prefix = unique_name("outbox_dmix");
    let d = DieselPg::new(&url, &prefix).await;
    let events: Vec<Envelope> = (0..40).map(|i| ev(&format!("k{}", i % 6), i)).collect();
    let pool = sqlx::PgPool::connect(&url).await.expect("pool");
    let outbox = outbox_sqlx::postgres::PgOutbox::new(d.store.table().clone());
    let mut tx = pool.begin().await.expect("begin");
    outbox.enqueue_all(&mut tx, &events).await.expect("enqueue");
    tx.commit().await.expect("commit");
    assert_relays_exactly(d.store.clone(), &events).await;
    drop_pg_schemas(&url, &prefix).await;
}

/// A slot of its own for a message-mode test; the prefix is its name too, so other tests'
/// messages (every message reaches every slot) are left out.
async fn message_slot(url: &str, name: &str) -> (sqlx::PgPool, outbox_cdc::slot::SlotSpec) {
    let pool = sqlx::PgPool::connect(url).await.expect("pool");
    let spec = outbox_cdc::slot::SlotSpec {
        slot: name.to_owned(),
        publication: format!("{name}_pub"),
        table: None,
    };
    spec.ensure(&pool).await.expect("slot");
    (pool, spec)
}

/// The envelopes the slot holds under `prefix`, decoded.
async fn emitted(
    pool: &sqlx::PgPool,
    spec: &outbox_cdc::slot::SlotSpec,
    prefix: &str,
) -> Vec<Envelope> {
    outbox_cdc::pgoutput::read_events(pool, spec, prefix)
        .await
        .expect("read the slot's events")
}

/// `pg::emit` (diesel) and `pg::emit_with_prefix_async` (diesel-async) write committed
/// events into the WAL, in order, and nothing for a rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_writes_committed_events_into_the_wal() {
    let url = outbox_core::service_or_skip!("diesel emit", Postgres);
    let name = unique_name("outbox_demit");
    let (pool, spec) = message_slot(&url, &name).await;
    let events: Vec<Envelope> = (0..4).map(|n| ev("k", n)).collect();

    let mut conn = PgConnection::establish(&url).expect("connect");
    conn.transaction(|conn| dpg::emit_with_prefix(conn, &name, &events[..2]))
        .expect("commit");
    let rolled = conn.transaction(|conn| {
        dpg::emit_with_prefix(conn, &name, &[ev("k", 9)])?;
        Err::<(), _>(diesel::result::Error::RollbackTransaction)
    });
    assert!(rolled.is_err());
    {
        use diesel_async::AsyncConnection as _;
        let mut conn = diesel_async::AsyncPgConnection::establish(&url)
            .await
            .expect("connect");
        let (name, rest) = (name.clone(), events[2..].to_vec());
        conn.transaction::<(), diesel::result::Error, _>(async move |c| {
            dpg::emit_with_prefix_async(c, &name, &rest).await
        })
        .await
        .expect("commit");
    }
    // The default prefix is `outbox`; this test's own prefix keeps the rest apart.
    assert_eq!(
        emitted(&pool, &spec, &name).await,
        events,
        "field for field, no rollback"
    );
    spec.drop_all(&pool).await.expect("drop");
}

//! TLS for diesel's synchronous connections, through the URL as libpq and the MySQL client
//! library read it: PostgreSQL's `sslmode`/`sslrootcert`, MySQL's `ssl_mode`/`ssl_ca`.
//! Verified against the server's CA, refused with another, with the library's reason.
//! diesel-async's connections (`DieselPgStore::connect`, `outbox_diesel::pg_tls::establish`)
//! read the same PostgreSQL parameters and connect with rustls.

#![cfg(all(feature = "postgres", feature = "mysql"))]

use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    on: bool,
}

#[derive(QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    value: String,
}

/// The file of PostgreSQL's own certificate (self-signed here: its root too).
fn server_cert(admin: &mut PgConnection) -> String {
    diesel::sql_query("SELECT setting AS value FROM pg_settings WHERE name = 'ssl_cert_file'")
        .get_result::<Setting>(admin)
        .expect("ssl_cert_file")
        .value
}

fn with_query(url: &str, query: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    format!("{base}?{query}")
}

#[tokio::test]
async fn postgres_tls_verified_against_the_configured_ca() {
    let pg_url = outbox_core::service_or_skip!("diesel PostgreSQL TLS", Postgres);
    let mut admin =
        PgConnection::establish(&with_query(&pg_url, "sslmode=disable")).expect("postgres");
    let cert = server_cert(&mut admin);
    let mut conn = PgConnection::establish(&with_query(
        &pg_url,
        &format!("sslmode=verify-ca&sslrootcert={cert}"),
    ))
    .expect("TLS with the server's own certificate as root");
    let encrypted =
        diesel::sql_query("SELECT ssl AS on FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .get_result::<Flag>(&mut conn)
            .expect("pg_stat_ssl");
    assert!(encrypted.on, "the connection is encrypted");

    let other = outbox_tests::tls::pki("not the server's CA");
    let err = PgConnection::establish(&with_query(
        &pg_url,
        &format!("sslmode=verify-ca&sslrootcert={}", other.ca().display()),
    ))
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    println!("another CA: {err}");
    assert!(
        err.contains("certificate verify failed"),
        "refused: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_postgres_tls_verified_against_the_configured_ca() {
    use outbox_core::Store as _;

    let pg_url = outbox_core::service_or_skip!("diesel-async PostgreSQL TLS", Postgres);
    let mut admin =
        PgConnection::establish(&with_query(&pg_url, "sslmode=disable")).expect("postgres");
    let cert = server_cert(&mut admin);
    let schema = outbox_core::testkit::unique_name("dtls");
    let table = outbox_core::TableName::with_schema(&schema, "outbox_events").expect("name");
    diesel::sql_query(format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .expect("schema");
    for stmt in outbox_sql::create_table_sql(&table, outbox_core::Dialect::Postgres) {
        diesel::sql_query(stmt).execute(&mut admin).expect("table");
    }

    let trusted = with_query(&pg_url, &format!("sslmode=verify-ca&sslrootcert={cert}"));
    let mut conn = outbox_diesel::pg_tls::establish(&trusted)
        .await
        .expect("TLS with the server's own certificate as root");
    let encrypted: Flag = diesel_async::RunQueryDsl::get_result(
        diesel::sql_query("SELECT ssl AS on FROM pg_stat_ssl WHERE pid = pg_backend_pid()"),
        &mut conn,
    )
    .await
    .expect("pg_stat_ssl");
    assert!(encrypted.on, "the connection is encrypted");
    let store = outbox_diesel::DieselPgStore::connect(&trusted, table.clone(), 2)
        .await
        .expect("pool");
    let claim = store
        .claim(10, std::time::Duration::from_secs(5))
        .await
        .expect("a claim over TLS");
    assert!(claim.events.is_empty());

    let other = outbox_tests::tls::pki("not the server's CA");
    let untrusted = with_query(
        &pg_url,
        &format!("sslmode=verify-ca&sslrootcert={}", other.ca().display()),
    );
    let err = match outbox_diesel::pg_tls::establish(&untrusted).await {
        Ok(_) => panic!("a server certificate the CA did not sign is refused"),
        Err(e) => e.to_string(),
    };
    println!("another CA: {err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    let report = match outbox_diesel::DieselPgStore::connect(&untrusted, table, 2).await {
        Ok(_) => panic!("no pool with a foreign CA"),
        Err(e) => e.to_report(),
    };
    assert!(report.contains("UnknownIssuer"), "{report}");
    let _ = diesel::sql_query(format!("DROP SCHEMA {schema} CASCADE")).execute(&mut admin);
}

#[tokio::test]
async fn mysql_tls_verified_against_the_configured_ca() {
    let my_url = outbox_core::service_or_skip!("diesel MySQL TLS", MySql);
    let mut admin = MysqlConnection::establish(&my_url).expect("mariadb");
    let ca = diesel::sql_query("SELECT @@ssl_ca AS value")
        .get_result::<Setting>(&mut admin)
        .map(|s| s.value)
        .unwrap_or_default();
    if ca.is_empty() {
        assert!(
            !outbox_core::testkit::services_required(),
            "MariaDB runs without TLS; scripts/services.sh turns it on"
        );
        println!("skipped: MariaDB has no TLS here");
        return;
    }
    let mut conn = MysqlConnection::establish(&with_query(
        &my_url,
        &format!("ssl_mode=VERIFY_CA&ssl_ca={ca}"),
    ))
    .expect("TLS with the server's CA");
    let cipher = diesel::sql_query("SELECT VARIABLE_VALUE AS value FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'SSL_CIPHER'")
        .get_result::<Setting>(&mut conn)
        .map(|s| s.value)
        .unwrap_or_default();
    assert!(!cipher.is_empty(), "the connection is encrypted");

    let other = outbox_tests::tls::pki("not the server's CA");
    let err = MysqlConnection::establish(&with_query(
        &my_url,
        &format!("ssl_mode=VERIFY_CA&ssl_ca={}", other.ca().display()),
    ))
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    println!("another CA: {err}");
    assert!(
        !err.is_empty(),
        "a server certificate the CA did not sign is refused"
    );
}

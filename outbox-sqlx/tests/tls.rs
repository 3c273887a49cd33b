//! TLS to the databases, through the URL as every sqlx user (and the `outbox` binary)
//! writes it: PostgreSQL's `sslmode` and `sslrootcert` (the machine's PostgreSQL has TLS
//! with its own certificate), MySQL's `ssl-mode` and `ssl-ca` (scripts/services.sh gives
//! MariaDB a CA and a certificate of its own).
//! A server whose certificate the configured CA did not sign is refused, with an error
//! that says so.

#![cfg(all(feature = "postgres", feature = "mysql"))]

use outbox_core::TableName;
use outbox_core::store::StoreStats as _;
use outbox_core::testkit::unique_name;
use outbox_sqlx::AnyStore;

/// `url` with `query` as its query string.
fn with_query(url: &str, query: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    format!("{base}?{query}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_verifies_the_server_against_the_configured_ca() {
    let pg_url = outbox_core::service_or_skip!("PostgreSQL TLS", Postgres);
    let admin = sqlx::PgPool::connect(&with_query(&pg_url, "sslmode=disable"))
        .await
        .expect("postgres");
    let (cert_file,): (String,) = sqlx::query_as("SHOW ssl_cert_file")
        .fetch_one(&admin)
        .await
        .expect("ssl_cert_file");
    let (ssl_on,): (String,) = sqlx::query_as("SHOW ssl")
        .fetch_one(&admin)
        .await
        .expect("ssl");
    assert_eq!(ssl_on, "on", "this test needs PostgreSQL with TLS on");
    let table = TableName::with_schema(&unique_name("tls"), "outbox_events").expect("name");
    outbox_sqlx::postgres::migrate(&admin, &table)
        .await
        .expect("migrate");

    // The server's certificate as the trusted root: verified, encrypted, and the store works.
    let trusted = with_query(
        &pg_url,
        &format!("sslmode=verify-ca&sslrootcert={cert_file}"),
    );
    let store = AnyStore::connect(&trusted, table.clone(), 2)
        .await
        .expect("TLS with the server's own CA");
    store.stats().await.expect("a query over TLS");
    let pool = sqlx::PgPool::connect(&trusted).await.expect("pool");
    let (encrypted,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .expect("pg_stat_ssl");
    assert!(encrypted, "the connection is encrypted");
    pool.close().await;

    // A CA that did not sign the server's certificate: refused, and the error says why.
    let other = outbox_tests::tls::pki("not the server's CA");
    let untrusted = with_query(
        &pg_url,
        &format!("sslmode=verify-ca&sslrootcert={}", other.ca().display()),
    );
    let err = refused(
        AnyStore::connect(&untrusted, table.clone(), 2).await,
        "a server certificate the CA did not sign is refused",
    );
    let report = err.to_report();
    assert!(report.contains("certificate"), "{report}");
    // A root certificate file that is missing: named in the error.
    let missing = with_query(&pg_url, "sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem");
    let report = refused(
        AnyStore::connect(&missing, table.clone(), 2).await,
        "missing root file",
    )
    .to_report();
    assert!(report.contains("/nonexistent/ca.pem"), "{report}");

    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA {} CASCADE",
        table.schema().unwrap_or_default()
    )))
    .execute(&admin)
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_tls_verifies_the_server_against_the_configured_ca() {
    let my_url = outbox_core::service_or_skip!("MySQL TLS", MySql);
    let admin = sqlx::MySqlPool::connect(&with_query(&my_url, "ssl-mode=DISABLED"))
        .await
        .expect("mariadb");
    let (_, have_ssl): (String, String) = sqlx::query_as("SHOW VARIABLES LIKE 'have_ssl'")
        .fetch_one(&admin)
        .await
        .expect("have_ssl");
    let table = TableName::parse("outbox_events").expect("name");
    let other = outbox_tests::tls::pki("not the server's CA");
    if have_ssl != "YES" {
        // scripts/services.sh gives the machine's MariaDB TLS; without it, a server that
        // cannot do TLS must still refuse a verified connection clearly.
        assert!(
            !outbox_core::testkit::services_required(),
            "MariaDB runs without TLS (have_ssl = {have_ssl}); scripts/services.sh turns it on"
        );
        let url = with_query(
            &my_url,
            &format!("ssl-mode=VERIFY_CA&ssl-ca={}", other.ca().display()),
        );
        let report = refused(AnyStore::connect(&url, table.clone(), 2).await, "no TLS").to_report();
        assert!(report.to_ascii_lowercase().contains("tls"), "{report}");
        println!("MariaDB has no TLS here: checked the refusal only");
        return;
    }
    let (_, ca): (String, String) = sqlx::query_as("SHOW VARIABLES LIKE 'ssl_ca'")
        .fetch_one(&admin)
        .await
        .expect("ssl_ca");
    let table = TableName::with_schema(&unique_name("tls"), "outbox_events").expect("name");
    outbox_sqlx::mysql::migrate(&admin, &table)
        .await
        .expect("migrate");

    // The server's CA: verified (name included), encrypted, and the store works.
    let trusted = with_query(&my_url, &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"));
    let store = AnyStore::connect(&trusted, table.clone(), 2)
        .await
        .expect("TLS with the server's CA");
    store.stats().await.expect("a query over TLS");
    let pool = sqlx::MySqlPool::connect(&trusted).await.expect("pool");
    let (_, cipher): (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .fetch_one(&pool)
        .await
        .expect("Ssl_cipher");
    assert!(!cipher.is_empty(), "the connection is encrypted");
    pool.close().await;

    // Another CA: refused, and the error says why.
    let untrusted = with_query(
        &my_url,
        &format!("ssl-mode=VERIFY_CA&ssl-ca={}", other.ca().display()),
    );
    let report = refused(
        AnyStore::connect(&untrusted, table.clone(), 2).await,
        "a server certificate the CA did not sign is refused",
    )
    .to_report();
    println!("another CA: {report}");
    assert!(report.contains("certificate"), "{report}");
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE `{}`",
        table.schema().unwrap_or_default()
    )))
    .execute(&admin)
    .await;
}

/// The error of a connection that had to fail (`why` says why it had to).
fn refused<T>(result: outbox_core::Result<T>, why: &str) -> outbox_core::Error {
    match result {
        Ok(_) => panic!("connected, but {why}"),
        Err(e) => e,
    }
}

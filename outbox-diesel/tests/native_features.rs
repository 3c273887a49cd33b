//! Says so when the synchronous PostgreSQL/MySQL tests are compiled out (their features link
//! native client libraries and are off by default), instead of passing silently; under
//! `OUTBOX_REQUIRE_SERVICES=1` that is a failure.
#![cfg(not(all(
    feature = "postgres",
    feature = "mysql",
    feature = "sqlite",
    feature = "async"
)))]

use std::io::Write as _;

#[test]
fn native_backend_tests_need_their_features() {
    let msg = "SKIPPED outbox-diesel backend tests: build with --all-features (or --features postgres,mysql), as scripts/test.sh does";
    if outbox_core::testkit::services_required() {
        panic!("{msg}");
    }
    let _ = writeln!(std::io::stderr(), "{msg}");
}

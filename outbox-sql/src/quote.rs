//! Identifier quoting per dialect.

use outbox_core::schema::{Dialect, TableName};

/// An identifier (schema, table, column or index name) quoted for `dialect`: backticks on
/// MySQL/MariaDB, double quotes (the SQL standard's) everywhere else.
pub fn quote_ident(dialect: Dialect, ident: &str) -> String {
    match dialect {
        Dialect::MySql => format!("`{ident}`"),
        _ => format!("\"{ident}\""),
    }
}

/// Quotes a table name for a dialect: backticks on MySQL/MariaDB, double quotes (the SQL
/// standard's) everywhere else.
pub trait Quote {
    /// The name quoted for `dialect`, ready to interpolate.
    fn quoted(&self, dialect: Dialect) -> String;
}

impl Quote for TableName {
    fn quoted(&self, dialect: Dialect) -> String {
        let q = |s: &str| quote_ident(dialect, s);
        match &self.schema().map(str::to_owned) {
            Some(s) => format!("{}.{}", q(s), q(self.table())),
            None => q(self.table()),
        }
    }
}

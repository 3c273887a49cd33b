//! Identifier quoting per dialect.

use outbox_core::schema::{Dialect, TableName};

/// Quotes a table name for a dialect: backticks on MySQL/MariaDB, double quotes (the SQL
/// standard's) everywhere else.
pub trait Quote {
    /// The name quoted for `dialect`, ready to interpolate.
    fn quoted(&self, dialect: Dialect) -> String;
}

impl Quote for TableName {
    fn quoted(&self, dialect: Dialect) -> String {
        let q = |s: &str| match dialect {
            Dialect::MySql => format!("`{s}`"),
            _ => format!("\"{s}\""),
        };
        match &self.schema().map(str::to_owned) {
            Some(s) => format!("{}.{}", q(s), q(self.table())),
            None => q(self.table()),
        }
    }
}

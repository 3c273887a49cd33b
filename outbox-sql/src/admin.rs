//! The statements a store runs the same way on every database, apart from their text:
//! retention, backlog figures and dead-letter administration. Each comes as a [`Bound`]
//! statement, its text with the dialect's bind markers and the values to bind in order,
//! so a driver only has to encode the four kinds of [`Value`].

use chrono::{DateTime, Utc};
use outbox_core::store::DeadLetterFilter;
use outbox_core::{Dialect, EventId, TableName};

use crate::event_table::marker;
use crate::quote::Quote;
use crate::row::SELECT_COLUMNS;

/// A value bound into a statement. Each driver encodes ids and times its own way (`uuid`
/// or text; a time type, or Unix microseconds on SQLite).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// Text.
    Text(String),
    /// An integer (`BIGINT`).
    Int(i64),
    /// A point in time.
    Time(DateTime<Utc>),
    /// An event id.
    Id(EventId),
}

/// A statement's text and the values of its bind markers, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bound {
    /// The text, with the dialect's markers (`$n` on PostgreSQL, `?` elsewhere).
    pub text: String,
    /// One value per marker.
    pub values: Vec<Value>,
}

/// Builds a statement's text while numbering its markers.
struct Builder {
    dialect: Dialect,
    values: Vec<Value>,
}

impl Builder {
    fn new(dialect: Dialect) -> Self {
        Builder {
            dialect,
            values: Vec::new(),
        }
    }

    /// The marker for `value`, which is bound next.
    fn bind(&mut self, value: Value) -> String {
        self.values.push(value);
        marker(self.dialect, self.values.len())
    }

    /// "Now" as the database sees it; SQLite, which has no time type, gets it bound.
    fn now(&mut self) -> String {
        match self.dialect {
            Dialect::Postgres => "now()".to_owned(),
            Dialect::MySql => "UTC_TIMESTAMP(6)".to_owned(),
            _ => self.bind(Value::Time(Utc::now())),
        }
    }

    fn finish(self, text: String) -> Bound {
        Bound {
            text,
            values: self.values,
        }
    }

    /// The `WHERE` condition of a dead-letter filter.
    fn dead_filter(&mut self, filter: &DeadLetterFilter) -> String {
        let mut clauses = vec!["status = 3".to_owned()];
        if let Some(t) = &filter.event_type {
            clauses.push(format!(
                "event_type = {}",
                self.bind(Value::Text(t.clone()))
            ));
        }
        if let Some(k) = &filter.ordering_key {
            clauses.push(format!(
                "ordering_key = {}",
                self.bind(Value::Text(k.clone()))
            ));
        }
        if let Some(s) = filter.dead_since {
            clauses.push(format!("processed_at >= {}", self.bind(Value::Time(s))));
        }
        if let Some(b) = filter.dead_before {
            clauses.push(format!("processed_at < {}", self.bind(Value::Time(b))));
        }
        if let Some(ids) = &filter.ids {
            clauses.push(if ids.is_empty() {
                "1 = 0".to_owned()
            } else {
                let markers: Vec<String> = ids.iter().map(|id| self.bind(Value::Id(*id))).collect();
                format!("id IN ({})", markers.join(", "))
            });
        }
        clauses.join(" AND ")
    }
}

/// Retention, backlog and dead-letter statements for one outbox table.
#[derive(Clone, Debug)]
pub struct AdminStatements {
    dialect: Dialect,
    table: String,
}

impl AdminStatements {
    /// The statements for `table` on `dialect`.
    pub fn new(table: &TableName, dialect: Dialect) -> Self {
        AdminStatements {
            dialect,
            table: table.quoted(dialect),
        }
    }

    /// Deletes up to `limit` rows published before `before`, oldest first.
    pub fn purge_published(&self, before: DateTime<Utc>, limit: i64) -> Bound {
        let t = &self.table;
        let mut b = Builder::new(self.dialect);
        let (before, limit) = (b.bind(Value::Time(before)), b.bind(Value::Int(limit)));
        let text = match self.dialect {
            // A relay purging beside another skips the rows the other is deleting.
            Dialect::Postgres => format!(
                "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} WHERE status = 2 AND processed_at < {before} \
                 ORDER BY processed_at LIMIT {limit} FOR UPDATE SKIP LOCKED)"
            ),
            Dialect::MySql => format!(
                "DELETE FROM {t} WHERE status = 2 AND processed_at < {before} ORDER BY processed_at LIMIT {limit}"
            ),
            _ => format!(
                "DELETE FROM {t} WHERE seq IN (SELECT seq FROM {t} WHERE status = 2 AND processed_at < {before} \
                 ORDER BY processed_at LIMIT {limit})"
            ),
        };
        b.finish(text)
    }

    /// One row: the pending, in-flight and dead counts (`BIGINT`), the oldest unfinished
    /// `created_at`, and the count published in the last minute. A row whose lease
    /// expired counts as pending.
    pub fn stats(&self) -> Bound {
        let t = &self.table;
        let mut b = Builder::new(self.dialect);
        // Markers in the order the text names them: SQLite binds "now" at each.
        let (due, held) = (b.now(), b.now());
        let minute_ago = match self.dialect {
            Dialect::Postgres => "now() - interval '1 minute'".to_owned(),
            Dialect::MySql => "UTC_TIMESTAMP(6) - INTERVAL 1 MINUTE".to_owned(),
            _ => format!("{} - 60000000", b.now()),
        };
        let text = format!(
            "SELECT COUNT(CASE WHEN status = 0 OR (status = 1 AND lease_until <= {due}) THEN 1 END), \
                    COUNT(CASE WHEN status = 1 AND lease_until > {held} THEN 1 END), \
                    COUNT(CASE WHEN status = 3 THEN 1 END), \
                    MIN(CASE WHEN status IN (0, 1) THEN created_at END), \
                    (SELECT COUNT(*) FROM {t} WHERE status = 2 AND processed_at > {minute_ago}) \
             FROM {t} WHERE status IN (0, 1, 3)"
        );
        b.finish(text)
    }

    /// The dead letters `filter` selects, oldest first, at most `limit`: the outbox
    /// columns ([`SELECT_COLUMNS`]) and `processed_at`, when the row was dead-lettered.
    pub fn list_dead(&self, filter: &DeadLetterFilter, limit: i64) -> Bound {
        let mut b = Builder::new(self.dialect);
        let cond = b.dead_filter(filter);
        let limit = b.bind(Value::Int(limit));
        let text = format!(
            "SELECT {SELECT_COLUMNS}, processed_at FROM {} WHERE {cond} ORDER BY processed_at, seq LIMIT {limit}",
            self.table
        );
        b.finish(text)
    }

    /// Returns the dead letters `filter` selects to pending, due now, with their attempts
    /// reset.
    pub fn requeue_dead(&self, filter: &DeadLetterFilter) -> Bound {
        let mut b = Builder::new(self.dialect);
        let now = b.now();
        let cond = b.dead_filter(filter);
        let text = format!(
            "UPDATE {} SET status = 0, attempts = 0, available_at = {now}, processed_at = NULL WHERE {cond}",
            self.table
        );
        b.finish(text)
    }

    /// Deletes the dead letters `filter` selects.
    pub fn purge_dead(&self, filter: &DeadLetterFilter) -> Bound {
        let mut b = Builder::new(self.dialect);
        let cond = b.dead_filter(filter);
        let text = format!("DELETE FROM {} WHERE {cond}", self.table);
        b.finish(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> DeadLetterFilter {
        DeadLetterFilter {
            event_type: Some("order.placed".into()),
            ids: Some(vec![EventId::new(), EventId::new()]),
            ..DeadLetterFilter::default()
        }
    }

    #[test]
    fn markers_are_numbered_in_bind_order_on_postgres() {
        let s = AdminStatements::new(&TableName::default(), Dialect::Postgres);
        let b = s.list_dead(&filter(), 10);
        assert!(
            b.text
                .contains("event_type = $1 AND id IN ($2, $3) ORDER BY processed_at, seq LIMIT $4"),
            "{}",
            b.text
        );
        assert_eq!(b.values.len(), 4);
        assert_eq!(b.values[3], Value::Int(10));
    }

    #[test]
    fn sqlite_binds_now_before_the_filter() {
        let s = AdminStatements::new(&TableName::default(), Dialect::Sqlite);
        let b = s.requeue_dead(&filter());
        assert!(b.text.contains("available_at = ?,"), "{}", b.text);
        assert!(matches!(b.values[0], Value::Time(_)));
        assert_eq!(b.values[1], Value::Text("order.placed".into()));
        let mysql = AdminStatements::new(&TableName::default(), Dialect::MySql);
        let b = mysql.requeue_dead(&filter());
        assert!(
            b.text.contains("available_at = UTC_TIMESTAMP(6)"),
            "{}",
            b.text
        );
        assert_eq!(b.values.len(), 3);
    }

    #[test]
    fn an_empty_id_list_selects_nothing() {
        let f = DeadLetterFilter {
            ids: Some(Vec::new()),
            ..DeadLetterFilter::default()
        };
        for dialect in [Dialect::Postgres, Dialect::MySql, Dialect::Sqlite] {
            let b = AdminStatements::new(&TableName::default(), dialect).purge_dead(&f);
            assert!(b.text.ends_with("WHERE status = 3 AND 1 = 0"), "{}", b.text);
            assert!(b.values.is_empty());
        }
    }
}

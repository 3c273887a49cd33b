//! Decoding of the `pgoutput` messages the table mode needs: `Relation` (a table's columns,
//! sent before its first change in a session) and `Insert` (a new row), with column values
//! in binary format (`binary 'true'`), and the mapping of an inserted outbox row to a
//! [`StoredRow`]. Begin, Commit and logical decoding messages are framed by the
//! replication client; every other change (update, delete, truncate, type, origin) is
//! [`Change::Other`]: the publication publishes inserts only.
//!
//! Message layouts are those of PostgreSQL's "Logical Replication Message Formats",
//! protocol version 1; integers are big-endian.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use outbox_core::envelope::EventId;
use outbox_core::{Error, ErrorKind, Result};
use outbox_sql::StoredRow;

/// A table as a `Relation` message describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// The relation's OID, which later `Insert` messages refer to.
    pub id: u32,
    /// Schema.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// Columns, in the order tuples carry them: name and type OID.
    pub columns: Vec<(String, u32)>,
}

/// One column value of a tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Datum {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value (updates only; never in an insert).
    Unchanged,
    /// The value in text format.
    Text(Vec<u8>),
    /// The value in the type's binary (send) format.
    Binary(Vec<u8>),
}

/// One decoded `pgoutput` message.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A table's description.
    Relation(Relation),
    /// A row inserted into relation `relation`.
    Insert {
        /// The relation's OID.
        relation: u32,
        /// The new row's values, in the relation's column order.
        tuple: Vec<Datum>,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Message {
        /// Written with `transactional = true` (part of its transaction).
        transactional: bool,
        /// Its prefix.
        prefix: String,
        /// Its content.
        content: Vec<u8>,
    },
    /// Any other message, by its tag.
    Other(u8),
}

fn bad(what: &str) -> Error {
    Error::new(ErrorKind::Decode, format!("pgoutput message: {what}"))
}

/// A cursor over one message.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(bad(&format!("truncated in {what}")));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn cstring(&mut self, what: &str) -> Result<String> {
        let end = self
            .bytes
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| bad(&format!("unterminated {what}")))?;
        let s = std::str::from_utf8(&self.bytes[..end])
            .map_err(|_| bad(&format!("{what} is not UTF-8")))?
            .to_owned();
        self.bytes = &self.bytes[end + 1..];
        Ok(s)
    }
}

/// Decodes one `pgoutput` message (an `XLogData` payload).
pub fn decode(message: &[u8]) -> Result<Change> {
    let mut c = Cursor { bytes: message };
    match c.u8("the tag")? {
        b'R' => {
            let id = c.u32("the relation id")?;
            let namespace = c.cstring("the namespace")?;
            let name = c.cstring("the relation name")?;
            let _replica_identity = c.u8("the replica identity")?;
            let n = c.u16("the column count")?;
            let mut columns = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                let _flags = c.u8("a column's flags")?;
                let column = c.cstring("a column name")?;
                let type_oid = c.u32("a column type")?;
                let _typmod = c.u32("a column's type modifier")?;
                columns.push((column, type_oid));
            }
            Ok(Change::Relation(Relation {
                id,
                namespace,
                name,
                columns,
            }))
        }
        b'I' => {
            let relation = c.u32("the relation id")?;
            if c.u8("the tuple marker")? != b'N' {
                return Err(bad("an insert without a new tuple"));
            }
            let n = c.u16("the tuple's column count")?;
            let mut tuple = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                tuple.push(match c.u8("a column's kind")? {
                    b'n' => Datum::Null,
                    b'u' => Datum::Unchanged,
                    kind @ (b't' | b'b') => {
                        let len = c.u32("a value's length")?;
                        let len = usize::try_from(len).map_err(|_| bad("a value's length"))?;
                        let value = c.take(len, "a value")?.to_vec();
                        if kind == b't' {
                            Datum::Text(value)
                        } else {
                            Datum::Binary(value)
                        }
                    }
                    other => return Err(bad(&format!("column kind {other:#04x}"))),
                });
            }
            Ok(Change::Insert { relation, tuple })
        }
        b'M' => {
            let flags = c.u8("the message flags")?;
            let _lsn = c.u64("the message position")?;
            let prefix = c.cstring("the message prefix")?;
            let len = c.u32("the message length")?;
            let len = usize::try_from(len).map_err(|_| bad("the message length"))?;
            Ok(Change::Message {
                transactional: flags & 1 == 1,
                prefix,
                content: c.take(len, "the message content")?.to_vec(),
            })
        }
        other => Ok(Change::Other(other)),
    }
}

/// Reads, and consumes, what the slot of `spec` holds (inserts in binary format, and
/// logical decoding messages), decoded, in commit order, through SQL
/// (`pg_logical_slot_get_binary_changes`) rather than a replication connection: for tests
/// and one-off inspection, not for relaying (the slot must not be streamed meanwhile).
#[cfg(feature = "postgres")]
pub async fn read_changes(
    pool: &sqlx::PgPool,
    spec: &crate::slot::SlotSpec,
) -> Result<Vec<Change>> {
    let changes: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, \
         'proto_version', '1', 'publication_names', $2, 'binary', 'true', 'messages', 'true')",
    )
    .bind(&spec.slot)
    .bind(&spec.publication)
    .fetch_all(pool)
    .await
    .map_err(|e| outbox_sqlx::map_sqlx("reading the slot", e))?;
    changes.iter().map(|data| decode(data)).collect()
}

/// [`read_changes`], keeping the envelopes of the transactional messages with `prefix`
/// (what `emit` wrote), decoded with the default limits.
#[cfg(feature = "postgres")]
pub async fn read_events(
    pool: &sqlx::PgPool,
    spec: &crate::slot::SlotSpec,
    prefix: &str,
) -> Result<Vec<outbox_core::Envelope>> {
    let limits = outbox_core::ValidationLimits::default();
    let mut out = Vec::new();
    for change in read_changes(pool, spec).await? {
        if let Change::Message {
            transactional: true,
            prefix: p,
            content,
        } = change
            && p == prefix
        {
            out.push(outbox_core::codec::decode(&content, &limits)?);
        }
    }
    Ok(out)
}

/// The relations seen so far in a replication session, by OID.
#[derive(Clone, Debug, Default)]
pub struct Relations(HashMap<u32, Relation>);

impl Relations {
    /// Remembers (or replaces, after `ALTER TABLE`) a relation.
    pub fn learn(&mut self, relation: Relation) {
        self.0.insert(relation.id, relation);
    }

    /// The relation with `id`.
    pub fn get(&self, id: u32) -> Result<&Relation> {
        self.0
            .get(&id)
            .ok_or_else(|| bad(&format!("an insert into relation {id}, never described")))
    }
}

/// PostgreSQL's epoch (2000-01-01) in Unix microseconds.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// The `status` column of an inserted outbox row (binary values), if it has one: `0` for
/// an event to publish; a CDC relay's own dead letters have another.
pub fn row_status(relation: &Relation, tuple: &[Datum]) -> Option<i64> {
    let at = relation
        .columns
        .iter()
        .position(|(name, _)| name == "status")?;
    match tuple.get(at)? {
        Datum::Binary(b) if b.len() == 2 => Some(i64::from(i16::from_be_bytes([b[0], b[1]]))),
        Datum::Binary(b) if b.len() == 4 => {
            Some(i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])))
        }
        _ => None,
    }
}

/// An inserted outbox row (binary values) as the stored row the stores decode.
pub fn outbox_row(relation: &Relation, tuple: &[Datum]) -> Result<StoredRow> {
    let by_name: HashMap<&str, &Datum> = relation
        .columns
        .iter()
        .map(|(name, _)| name.as_str())
        .zip(tuple)
        .collect();
    let value = |column: &str| -> Result<Option<&[u8]>> {
        match by_name.get(column) {
            None => Err(bad(&format!(
                "table {}.{} has no column `{column}`",
                relation.namespace, relation.name
            ))),
            Some(Datum::Null) => Ok(None),
            Some(Datum::Binary(b)) => Ok(Some(b.as_slice())),
            Some(_) => Err(bad(&format!(
                "column `{column}` is not in binary format (start replication with binary 'true')"
            ))),
        }
    };
    let required = |column: &str| -> Result<&[u8]> {
        value(column)?.ok_or_else(|| bad(&format!("column `{column}` is NULL")))
    };
    let text = |column: &str| -> Result<String> {
        String::from_utf8(required(column)?.to_vec())
            .map_err(|_| bad(&format!("column `{column}` is not UTF-8")))
    };
    let optional_text = |column: &str| -> Result<Option<String>> {
        value(column)?
            .map(|b| {
                String::from_utf8(b.to_vec())
                    .map_err(|_| bad(&format!("column `{column}` is not UTF-8")))
            })
            .transpose()
    };
    let int = |column: &str| -> Result<i64> {
        let b = required(column)?;
        match b.len() {
            2 => Ok(i64::from(i16::from_be_bytes([b[0], b[1]]))),
            4 => Ok(i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
            8 => Ok(i64::from_be_bytes([
                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
            ])),
            n => Err(bad(&format!("column `{column}`: an integer of {n} bytes"))),
        }
    };
    let time = |column: &str| -> Result<DateTime<Utc>> {
        let since_2000 = int(column)?;
        DateTime::from_timestamp_micros(PG_EPOCH_UNIX_MICROS)
            .and_then(|epoch| epoch.checked_add_signed(Duration::microseconds(since_2000)))
            .ok_or_else(|| bad(&format!("column `{column}`: a time out of range")))
    };
    let id = required("id")?;
    let id = uuid::Uuid::from_slice(id).map_err(|_| bad("column `id` is not a UUID"))?;
    Ok(StoredRow {
        seq: int("seq")?,
        id: EventId::from_uuid(id),
        aggregate_type: text("aggregate_type")?,
        aggregate_id: text("aggregate_id")?,
        event_type: text("event_type")?,
        destination: text("destination")?,
        ordering_key: text("ordering_key")?,
        payload: required("payload")?.to_vec(),
        content_type: text("content_type")?,
        headers: text("headers")?,
        traceparent: optional_text("traceparent")?,
        tracestate: optional_text("tracestate")?,
        created_at: time("created_at")?,
        available_at: time("available_at")?,
        attempts: i32::try_from(int("attempts")?).map_err(|_| bad("column `attempts`"))?,
        last_error: optional_text("last_error")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation_message() -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&16_384u32.to_be_bytes());
        m.extend_from_slice(b"app\0outbox_events\0");
        m.push(b'd');
        m.extend_from_slice(&2u16.to_be_bytes());
        for (name, oid) in [("seq", 20u32), ("payload", 17)] {
            m.push(0);
            m.extend_from_slice(name.as_bytes());
            m.push(0);
            m.extend_from_slice(&oid.to_be_bytes());
            m.extend_from_slice(&(-1i32).to_be_bytes());
        }
        m
    }

    #[test]
    fn relations_and_inserts_decode() {
        let rel = match decode(&relation_message()).expect("relation") {
            Change::Relation(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(rel.name, "outbox_events");
        assert_eq!(rel.namespace, "app");
        assert_eq!(
            rel.columns,
            vec![("seq".into(), 20), ("payload".into(), 17)]
        );
        let mut insert = vec![b'I'];
        insert.extend_from_slice(&16_384u32.to_be_bytes());
        insert.push(b'N');
        insert.extend_from_slice(&2u16.to_be_bytes());
        insert.push(b'b');
        insert.extend_from_slice(&8u32.to_be_bytes());
        insert.extend_from_slice(&7i64.to_be_bytes());
        insert.push(b'n');
        assert_eq!(
            decode(&insert).expect("insert"),
            Change::Insert {
                relation: 16_384,
                tuple: vec![Datum::Binary(7i64.to_be_bytes().to_vec()), Datum::Null],
            }
        );
        assert_eq!(decode(b"U").expect("other"), Change::Other(b'U'));
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let m = relation_message();
        for cut in 1..m.len() {
            let err = decode(&m[..cut]).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Decode, "{cut}: {err}");
        }
    }

    #[test]
    fn a_missing_column_is_named() {
        let rel = Relation {
            id: 1,
            namespace: "app".into(),
            name: "outbox_events".into(),
            columns: vec![("seq".into(), 20)],
        };
        let Err(err) = outbox_row(&rel, &[Datum::Binary(1i64.to_be_bytes().to_vec())]) else {
            panic!("a row without an id decoded");
        };
        assert!(err.to_string().contains("`id`"), "{err}");
    }
}

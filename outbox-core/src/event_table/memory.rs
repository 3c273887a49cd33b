//! An in-memory append-only table with a sequence and transactions, for unit tests of the
//! log relay: positions are taken at append and become visible at commit, so commits can
//! happen out of position order and rollbacks leave gaps, as in a database.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::Utc;

use super::{Checkpoint, GapOracle, LogRead, LogRecord, LogSource, ReadPlan, owner_name};
use crate::envelope::Envelope;
use crate::error::{Error, ErrorKind, Result};

/// Which [`GapOracle`] the in-memory table reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OracleMode {
    /// Transaction ids, like PostgreSQL.
    Horizon,
    /// Nothing: gaps close by timeout only.
    Unknown,
}

struct Owner {
    name: String,
    until: Instant,
}

struct State {
    next_position: i64,
    next_tx: i64,
    running: BTreeSet<i64>,
    rows: BTreeMap<i64, Envelope>,
    checkpoint: Option<Checkpoint>,
    owner: Option<Owner>,
    fail_saves: u32,
    saves: u64,
}

/// The in-memory event table. Clones share the table.
#[derive(Clone)]
pub struct InMemoryLog {
    name: String,
    mode: OracleMode,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for InMemoryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryLog")
            .field("name", &self.name)
            .finish()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A transaction on an [`InMemoryLog`]: appended rows take their position at once and
/// become visible on [`commit`](Self::commit); dropping it rolls back (leaving a gap).
#[derive(Debug)]
pub struct LogTransaction {
    log: InMemoryLog,
    tx: i64,
    rows: Vec<(i64, Envelope)>,
    done: bool,
}

impl LogTransaction {
    /// Appends a row; returns its position.
    pub fn append(&mut self, envelope: Envelope) -> i64 {
        let mut st = lock(&self.log.state);
        st.next_position += 1;
        let p = st.next_position;
        self.rows.push((p, envelope));
        p
    }

    /// Makes the rows visible.
    pub fn commit(mut self) {
        let mut st = lock(&self.log.state);
        for (p, e) in self.rows.drain(..) {
            st.rows.insert(p, e);
        }
        st.running.remove(&self.tx);
        self.done = true;
    }

    /// Discards the rows; their positions stay unused.
    pub fn rollback(self) {}
}

impl Drop for LogTransaction {
    fn drop(&mut self) {
        if !self.done {
            lock(&self.log.state).running.remove(&self.tx);
        }
    }
}

impl InMemoryLog {
    /// An empty table whose checkpoint is called `name`.
    pub fn new(name: impl Into<String>, mode: OracleMode) -> Self {
        InMemoryLog {
            name: name.into(),
            mode,
            state: Arc::new(Mutex::new(State {
                next_position: 0,
                next_tx: 0,
                running: BTreeSet::new(),
                rows: BTreeMap::new(),
                checkpoint: None,
                owner: None,
                fail_saves: 0,
                saves: 0,
            })),
        }
    }

    /// Starts a transaction.
    pub fn begin(&self) -> LogTransaction {
        let mut st = lock(&self.state);
        st.next_tx += 1;
        let tx = st.next_tx;
        st.running.insert(tx);
        LogTransaction {
            log: self.clone(),
            tx,
            rows: Vec::new(),
            done: false,
        }
    }

    /// Appends one row in a transaction of its own.
    pub fn append_committed(&self, envelope: Envelope) -> i64 {
        let mut tx = self.begin();
        let p = tx.append(envelope);
        tx.commit();
        p
    }

    /// Committed positions.
    pub fn committed(&self) -> Vec<i64> {
        lock(&self.state).rows.keys().copied().collect()
    }

    /// The saved checkpoint.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        lock(&self.state).checkpoint.clone()
    }

    /// Makes the next `n` saves fail (a crash between publish and checkpoint).
    pub fn fail_next_saves(&self, n: u32) {
        lock(&self.state).fail_saves = n;
    }

    /// Checkpoint saves so far.
    pub fn saves(&self) -> u64 {
        lock(&self.state).saves
    }
}

impl LogSource for InMemoryLog {
    fn name(&self) -> &str {
        &self.name
    }

    async fn acquire(&self, owner: &str, lease_for: Duration) -> Result<Option<Checkpoint>> {
        let mut st = lock(&self.state);
        let now = Instant::now();
        if let Some(o) = &st.owner
            && o.name != owner
            && owner_name(&o.name) != owner_name(owner)
            && o.until > now
        {
            return Ok(None);
        }
        st.owner = Some(Owner {
            name: owner.to_owned(),
            until: now + lease_for,
        });
        Ok(Some(st.checkpoint.clone().unwrap_or_default()))
    }

    async fn read(&self, plan: &ReadPlan, limit: usize) -> Result<LogRead> {
        let st = lock(&self.state);
        let records = st
            .rows
            .iter()
            .filter(|(p, _)| plan.covers(**p))
            .take(limit)
            .map(|(p, e)| LogRecord {
                position: *p,
                envelope: e.clone(),
            })
            .collect();
        let oracle = match self.mode {
            OracleMode::Horizon => GapOracle::Horizon {
                marker: st.next_tx + 1,
                oldest_running: st.running.first().copied(),
            },
            OracleMode::Unknown => GapOracle::Unknown,
        };
        Ok(LogRead {
            records,
            undecodable: Vec::new(),
            now: Utc::now(),
            oracle,
        })
    }

    async fn save(&self, owner: &str, lease_for: Duration, checkpoint: &Checkpoint) -> Result<()> {
        let mut st = lock(&self.state);
        if st.fail_saves > 0 {
            st.fail_saves -= 1;
            return Err(Error::new(
                ErrorKind::Connection,
                "injected: checkpoint save lost",
            ));
        }
        let now = Instant::now();
        match &st.owner {
            Some(o) if o.name == owner && o.until > now => {}
            _ => {
                return Err(Error::new(
                    ErrorKind::LeaseLost,
                    format!("checkpoint {:?} is no longer held by {owner}", self.name),
                ));
            }
        }
        st.owner = Some(Owner {
            name: owner.to_owned(),
            until: now + lease_for,
        });
        st.checkpoint = Some(checkpoint.clone());
        st.saves += 1;
        Ok(())
    }

    async fn release(&self, owner: &str) -> Result<()> {
        let mut st = lock(&self.state);
        if st.owner.as_ref().is_some_and(|o| o.name == owner) {
            st.owner = None;
        }
        Ok(())
    }
}

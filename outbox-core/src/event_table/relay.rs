//! The event-table relay: rounds of acquire, read, publish (through the engine), save.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::{Instant, sleep};
use tracing::{info, warn};
use uuid::Uuid;

use super::{LogRecord, LogSource, PendingRecord};
use crate::engine::{Candidate, Fate, PublishEngine};
use crate::error::Result;
use crate::metrics::{NoMetrics, RelayMetrics};
use crate::publisher::Publisher;
use crate::relay::{invalid, relay_settings};
use crate::retry::RetryPolicy;

relay_settings! {
    /// Log relay settings.
    pub struct LogRelayConfig {
        unit: "read",
        held: "the checkpoint",
        max_idle: ("1 s", Duration::from_secs(1)),
        /// How long a gap the database vouches for stays open anyway (default 1 s).
        #[serde(with = "crate::duration_serde")]
        pub gap_grace: Duration = Duration::from_secs(1),
        /// How long a gap stays open when the database cannot vouch for it (default 5 min).
        #[serde(with = "crate::duration_serde")]
        pub gap_timeout: Duration = Duration::from_secs(300),
        /// Most open gaps kept; the oldest beyond this are closed (default 10,000).
        pub max_gaps: usize = 10_000,
    }
}

impl LogRelayConfig {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<()> {
        const SECTION: &str = "event-table relay setting";
        if self.gap_timeout < self.gap_grace {
            return Err(invalid(
                SECTION,
                "gap_timeout",
                "must not be shorter than `gap_grace`",
            ));
        }
        if self.max_gaps == 0 {
            return Err(invalid(SECTION, "max_gaps", "must be at least 1"));
        }
        self.check_pacing(SECTION)
    }
}

/// What one round of the log relay came to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogReport {
    /// Rows read.
    pub read: usize,
    /// Rows published.
    pub published: usize,
    /// Rows left for a retry (failed, or held behind a failure of their key).
    pub retried: usize,
    /// The most failed attempts of any row left for a retry (the back-off step).
    pub retry_attempts: u32,
    /// Rows skipped for good.
    pub dead: usize,
    /// Gaps open after the round.
    pub open_gaps: usize,
    /// Gaps closed by timeout or trimming (rows committed into them later are missed).
    pub abandoned_gaps: usize,
    /// Whether another relay holds the checkpoint (nothing was done).
    pub not_owner: bool,
}

/// Adds a later round to a running total: counts add up, the state (gaps open, retry step,
/// ownership) is the later round's.
impl std::ops::AddAssign<&LogReport> for LogReport {
    fn add_assign(&mut self, o: &LogReport) {
        self.read += o.read;
        self.published += o.published;
        self.retried += o.retried;
        self.retry_attempts = o.retry_attempts;
        self.dead += o.dead;
        self.open_gaps = o.open_gaps;
        self.abandoned_gaps += o.abandoned_gaps;
        self.not_owner = o.not_owner;
    }
}

/// Moves rows from a [`LogSource`] to a [`Publisher`]. See the module docs.
pub struct LogRelay<S, P> {
    source: S,
    publisher: P,
    config: LogRelayConfig,
    metrics: Arc<dyn RelayMetrics>,
    owner: String,
    instance: String,
}

/// The name part of an owner `name#instance`.
pub fn owner_name(owner: &str) -> &str {
    owner.rsplit_once('#').map_or(owner, |(name, _)| name)
}

impl<S: LogSource, P: Publisher> LogRelay<S, P> {
    /// A relay over `source` and `publisher`; the config is validated. The relay's owner
    /// name is random; see [`with_owner`](Self::with_owner).
    pub fn new(source: S, publisher: P, config: LogRelayConfig) -> Result<Self> {
        config.validate()?;
        Ok(LogRelay {
            source,
            publisher,
            config,
            metrics: Arc::new(NoMetrics),
            owner: format!("relay-{}", Uuid::new_v4().simple()),
            instance: Uuid::new_v4().simple().to_string(),
        })
    }

    /// Names this relay as the checkpoint's owner (a host name, a pod name). A restarted
    /// relay with the same owner name takes its checkpoint back without waiting for the
    /// lease to expire.
    pub fn with_owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into().replace('#', "_");
        self
    }

    /// Reports to these metrics, under the same names as the outbox relay's: a read counts
    /// as a claim of the rows it returned, a failed round as a store error.
    pub fn with_metrics(mut self, metrics: Arc<dyn RelayMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    fn holder(&self) -> String {
        format!("{}#{}", self.owner, self.instance)
    }

    /// The settings.
    pub fn config(&self) -> &LogRelayConfig {
        &self.config
    }

    /// The source.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// One round: take the checkpoint, read, publish, save. A failed publish is recorded in
    /// the checkpoint (retry or dead), not returned as an error; errors are the source's.
    pub async fn run_once(&self) -> Result<LogReport> {
        let res = self.round().await;
        if let Err(e) = &res {
            self.metrics.store_error(e);
        }
        res
    }

    async fn round(&self) -> Result<LogReport> {
        let cfg = &self.config;
        // The lease is measured from before it was taken, on our own clock.
        let deadline = Instant::now() + cfg.lease;
        let Some(mut cp) = self.source.acquire(&self.holder(), cfg.lease).await? else {
            return Ok(LogReport {
                not_owner: true,
                ..LogReport::default()
            });
        };
        let plan = cp.plan();
        let read = self.source.read(&plan, cfg.batch_size).await?;
        self.metrics
            .claimed(read.records.len() + read.undecodable.len());
        let mut report = LogReport {
            read: read.records.len() + read.undecodable.len(),
            ..LogReport::default()
        };
        let mut seen: Vec<i64> = read
            .records
            .iter()
            .map(|r| r.position)
            .chain(read.undecodable.iter().map(|u| u.position))
            .filter(|p| plan.covers(*p))
            .collect();
        seen.sort_unstable();
        seen.dedup();
        cp.observe(&plan, &seen, read.now, read.oracle);

        // Attempts carried over from earlier rounds.
        let mut attempts: BTreeMap<i64, (u32, Option<String>)> = cp
            .retries
            .drain(..)
            .map(|r| (r.position, (r.attempts, r.last_error)))
            .collect();
        for u in &read.undecodable {
            warn!(source = self.source.name(), position = u.position, error = %u.error, "row skipped: it cannot be mapped to an event");
            attempts.remove(&u.position);
            cp.add_dead(u.position, u.error.to_report(), read.now);
            report.dead += 1;
        }
        if !read.undecodable.is_empty() {
            self.metrics.dead_lettered(read.undecodable.len());
        }

        // Rows the plan covers, in position order, through the publish engine.
        let mut records: Vec<&LogRecord> = read
            .records
            .iter()
            .filter(|r| plan.covers(r.position))
            .collect();
        records.sort_by_key(|r| r.position);
        let candidates: Vec<Candidate> = records
            .iter()
            .map(|r| Candidate {
                envelope: r.envelope.clone(),
                attempts: attempts.get(&r.position).map_or(0, |(n, _)| *n),
            })
            .collect();
        let engine = PublishEngine::new(
            &self.publisher,
            cfg.publish_timeout,
            &cfg.retry,
            self.metrics.as_ref(),
        );
        let fates = engine.publish(&candidates, deadline, None).await;
        let mut pending: Vec<PendingRecord> = Vec::new();
        for (rec, fate) in records.iter().zip(fates) {
            let (before, last) = attempts.remove(&rec.position).unwrap_or((0, None));
            match fate {
                Fate::Published { .. } => report.published += 1,
                Fate::Retry { attempt, error, .. } => pending.push(PendingRecord {
                    position: rec.position,
                    attempts: attempt,
                    last_error: Some(error),
                }),
                Fate::Dead { error, .. } => {
                    warn!(source = self.source.name(), position = rec.position, event_id = %rec.envelope.id(), error = %error, "row skipped: the broker refused it");
                    cp.add_dead(rec.position, error, read.now);
                    report.dead += 1;
                }
                // Held behind a failure of its key, or not sent in time: unchanged.
                Fate::Released => pending.push(PendingRecord {
                    position: rec.position,
                    attempts: before,
                    last_error: last,
                }),
            }
        }
        for (position, (n, last)) in attempts {
            // A retry that was not returned by the read: the row vanished (deleted). Keep
            // it only if the read was cut short by the limit before reaching it.
            let cut_short =
                seen.len() >= cfg.batch_size && seen.last().is_some_and(|l| *l < position);
            if cut_short {
                pending.push(PendingRecord {
                    position,
                    attempts: n,
                    last_error: last,
                });
            } else {
                warn!(
                    source = self.source.name(),
                    position, "row to retry is gone from the table"
                );
            }
        }
        pending.sort_by_key(|p| p.position);
        report.retried = pending.len();
        report.retry_attempts = pending.iter().map(|p| p.attempts).max().unwrap_or(0);
        cp.retries = pending;

        let read_through =
            (report.read >= cfg.batch_size).then(|| seen.last().copied().unwrap_or(i64::MIN));
        let abandoned = cp.close_gaps(read.now, read.oracle, read_through, cfg);
        for g in &abandoned {
            warn!(
                source = self.source.name(),
                from = g.from,
                to = g.to,
                "gap closed without the database vouching for it; rows committed into it later will not be published"
            );
        }
        report.abandoned_gaps = abandoned.len();
        report.open_gaps = cp.gaps.len();
        self.source.save(&self.holder(), cfg.lease, &cp).await?;
        Ok(report)
    }

    /// Runs rounds until one reads nothing and leaves nothing to retry. For tests and tools.
    pub async fn drain(&self) -> Result<LogReport> {
        let mut total = LogReport::default();
        loop {
            let r = self.run_once().await?;
            total += &r;
            if r.not_owner || (r.read == 0 && r.retried == 0) {
                return Ok(total);
            }
        }
    }

    /// Runs until `shutdown` resolves, finishing the round in progress, then releases the
    /// checkpoint. Source errors are logged and retried after a back-off; they do not stop
    /// the relay.
    pub async fn run_until<F: Future<Output = ()> + Send>(self, shutdown: F) -> LogReport {
        let cfg = self.config.clone();
        let mut total = LogReport::default();
        let mut idle = cfg.poll_interval;
        let mut failures = 0u32;
        info!(source = self.source.name(), owner = %self.owner, "log relay started");
        tokio::pin!(shutdown);
        loop {
            // A round is never cut off half-way: it ends within `publish_timeout` plus two
            // database calls, so a graceful stop republishes nothing.
            if futures::FutureExt::now_or_never(&mut shutdown).is_some() {
                break;
            }
            let round = self.run_once().await;
            let wait = match round {
                Ok(r) => {
                    failures = 0;
                    total += &r;
                    if r.retried > 0 {
                        cfg.retry.delay(r.retry_attempts.max(1))
                    } else if r.read >= cfg.batch_size {
                        idle = cfg.poll_interval;
                        Duration::ZERO
                    } else if r.read > 0 {
                        idle = cfg.poll_interval;
                        cfg.poll_interval
                    } else {
                        let w = idle;
                        idle = (idle * 2).min(cfg.max_poll_interval);
                        if r.not_owner { cfg.lease / 4 } else { w }
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    warn!(source = self.source.name(), error = %e, "log relay round failed");
                    cfg.retry.delay(failures)
                }
            };
            if !wait.is_zero() {
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    _ = sleep(wait) => {}
                }
            }
        }
        if let Err(e) = self.source.release(&self.holder()).await {
            warn!(source = self.source.name(), error = %e, "could not release the checkpoint");
        }
        info!(
            source = self.source.name(),
            published = total.published,
            "log relay stopped"
        );
        total
    }
}

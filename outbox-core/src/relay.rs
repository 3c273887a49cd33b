//! The relay: claim due rows under a lease, publish them, mark the outcome.
//!
//! ```text
//! pending --claim(lease, fencing token)--> in flight --publish ok--> published
//!    ^                                         |
//!    |   available_at = now + backoff(attempt) +--retryable error--> pending (attempts+1)
//!    +-----------------------------------------+--permanent error or attempts exhausted--> dead
//! ```
//!
//! # Ordering
//!
//! A claim may hold a run of several events of one ordering key (the store only hands them
//! out in `seq` order and never while an earlier one is unfinished). How the relay
//! publishes a batch depends on the publisher:
//!
//! - **Ordered runs** ([`Publisher::ordered_runs`]: AMQP, Kafka, NATS on a connection of its
//!   own, the JSON lines sink). The broker stores what one link sends in the order it was
//!   sent, even when the link breaks, so the whole batch goes out in one call, runs
//!   included: a key's run of 100 events costs one pipelined round trip, not 100.
//! - **Waves** (every other publisher: SQS, whose concurrent requests may land in any order,
//!   and NATS on an application's client, which resends its buffer on a new connection
//!   after losing what the old one had in flight). Wave `n` holds the `n`-th event of
//!   every key in the batch, so one call never carries two events of the same key and may
//!   pipeline freely; a run costs one round trip per event, while a batch of many keys
//!   still pipelines fully.
//!
//! When an event fails with a retryable error, the later events of its key in the batch are
//! released untouched; its retry time then blocks its key, and only its key. With ordered
//! runs the later events were already sent: those the broker refused too are released;
//! one it acknowledged anyway (the broker refused an event and stored the next one of the
//! same link, which each ordered publisher documents as a rare failure of its own) is
//! already ahead of the retry, so it is kept as published, logged as a warning and counted
//! in [`BatchReport::out_of_order`].
//!
//! # Wake-ups and latency
//!
//! An empty claim makes the relay wait `poll_interval`, doubling up to
//! `max_poll_interval` while nothing comes; a [`WakeUp`](crate::store::WakeUp) source (on
//! PostgreSQL, `LISTEN` on the table's channel, which `outbox run` opens by itself) ends
//! the wait at once. Writers that notify after commit (`PgNotifier`) see their events on
//! the broker within a claim and a publish; writers that do not are found by polling: the
//! first event after an idle spell waits up to `max_poll_interval` (2 s by default), and
//! under steady load about `poll_interval` (100 ms). An empty claim while the relay's own
//! batches are in flight (their keys hold the next rows back) waits for one of them to
//! finish instead.
//!
//! # Where duplicates can happen
//!
//! Delivery is at least once. An event can reach the broker more than once only when
//! (a) the relay stops or crashes after the broker accepted it and before the store
//! recorded that, (b) the lease expired while the event was being published (another
//! relay then claims it again), or (c) the broker accepted it but the acknowledgement was
//! lost (timeout). Every copy carries the same event id, which publishers pass on as the
//! broker's dedupe id where one exists.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};
use tracing::{Instrument, error, info, warn};

use crate::engine::{Candidate, Fate, PublishEngine};
use crate::envelope::EventId;
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::{NoMetrics, RelayMetrics};
use crate::publisher::Publisher;
use crate::retry::RetryPolicy;
use crate::store::{BacklogStats, Claim, DeadLetter, DynWakeUp, Retry, Store, StoreStats};

/// Declares a relay's settings: the pacing every relay shares (batch size, lease, publish
/// timeout, polling, retry), written here once with its defaults and checks, and the fields
/// of that relay's own. `check_pacing(section)` validates the shared part.
macro_rules! relay_settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            unit: $unit:literal,
            held: $held:literal,
            max_idle: ($max_idle_doc:literal, $max_idle:expr),
            $( $(#[$fmeta:meta])* pub $field:ident: $ty:ty = $default:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            #[doc = concat!("Most rows per ", $unit, " (default 500).")]
            pub batch_size: usize,
            #[doc = concat!("How long ", $held, " is held before another relay may take it \
                             over (default 30 s).")]
            #[serde(with = "crate::duration_serde")]
            pub lease: Duration,
            /// Longest wait for one publish call; must be shorter than `lease` (default 10 s).
            #[serde(with = "crate::duration_serde")]
            pub publish_timeout: Duration,
            #[doc = concat!("Wait after an empty ", $unit, "; doubles while idle (default \
                             100 ms).")]
            #[serde(with = "crate::duration_serde")]
            pub poll_interval: Duration,
            #[doc = concat!("Longest wait between polls while idle (default ", $max_idle_doc,
                            ").")]
            #[serde(with = "crate::duration_serde")]
            pub max_poll_interval: Duration,
            $( $(#[$fmeta])* pub $field: $ty, )*
            /// Retry and dead-letter policy.
            pub retry: RetryPolicy,
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    batch_size: 500,
                    lease: Duration::from_secs(30),
                    publish_timeout: Duration::from_secs(10),
                    poll_interval: Duration::from_millis(100),
                    max_poll_interval: $max_idle,
                    $( $field: $default, )*
                    retry: RetryPolicy::default(),
                }
            }
        }

        impl $name {
            /// The checks of the shared pacing and retry policy.
            fn check_pacing(&self, section: &str) -> Result<()> {
                $crate::relay::check_relay_timing(
                    section,
                    self.batch_size,
                    self.lease,
                    self.publish_timeout,
                    self.poll_interval,
                    self.max_poll_interval,
                )?;
                self.retry.validate()
            }
        }
    };
}
pub(crate) use relay_settings;

relay_settings! {
    /// Relay settings.
    pub struct RelayConfig {
        unit: "claim",
        held: "a claim",
        max_idle: ("2 s", Duration::from_secs(2)),
        /// Most batches in flight at once (default 4).
        pub concurrency: usize = 4,
        /// On shutdown, how long in-flight batches may take to finish before their rows are
        /// released (default 10 s).
        #[serde(with = "crate::duration_serde")]
        pub shutdown_timeout: Duration = Duration::from_secs(10),
    }
}

impl RelayConfig {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if self.concurrency == 0 {
            return Err(invalid(
                "relay setting",
                "concurrency",
                "must be at least 1",
            ));
        }
        self.check_pacing("relay setting")
    }
}

/// An [`ErrorKind::InvalidInput`] error: "`<section>` `<field>` `<why>`".
pub(crate) fn invalid(section: &str, field: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::InvalidInput,
        format!("{section} `{field}` {why}"),
    )
}

/// The checks every relay's settings share: a batch of at least one, a publish timeout
/// shorter than the lease, a poll interval within its maximum.
pub(crate) fn check_relay_timing(
    section: &str,
    batch_size: usize,
    lease: Duration,
    publish_timeout: Duration,
    poll_interval: Duration,
    max_poll_interval: Duration,
) -> Result<()> {
    let bad = |field: &str, why: &str| Err(invalid(section, field, why));
    if batch_size == 0 {
        return bad("batch_size", "must be at least 1");
    }
    if publish_timeout.is_zero() {
        return bad("publish_timeout", "must be greater than zero");
    }
    if publish_timeout >= lease {
        return bad(
            "publish_timeout",
            "must be shorter than `lease`, or rows could be claimed twice while still being published",
        );
    }
    if poll_interval.is_zero() {
        return bad("poll_interval", "must be greater than zero");
    }
    if poll_interval > max_poll_interval {
        return bad("poll_interval", "must not exceed `max_poll_interval`");
    }
    Ok(())
}

/// What one batch came to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Rows claimed.
    pub claimed: usize,
    /// Events published and marked.
    pub published: usize,
    /// Events scheduled for retry.
    pub retried: usize,
    /// Events dead-lettered.
    pub dead_lettered: usize,
    /// Events released untouched (a key's earlier event failed, or shutdown).
    pub released: usize,
    /// Marks refused because the lease was lost.
    pub fenced: u64,
    /// Events the broker acknowledged after an earlier event of their key in the same call
    /// failed and was scheduled for retry (ordered runs only): published, but ahead of that
    /// retry.
    pub out_of_order: usize,
}

impl BatchReport {
    fn add(&mut self, other: &BatchReport) {
        self.claimed += other.claimed;
        self.published += other.published;
        self.retried += other.retried;
        self.dead_lettered += other.dead_lettered;
        self.released += other.released;
        self.fenced += other.fenced;
        self.out_of_order += other.out_of_order;
    }
}

type StatsFn = Arc<dyn Fn() -> BoxFuture<'static, Result<BacklogStats>> + Send + Sync>;

struct Shared<S, P> {
    store: S,
    publisher: P,
    config: RelayConfig,
    metrics: Arc<dyn RelayMetrics>,
    name: String,
}

/// Moves rows from a [`Store`] to a [`Publisher`]. See the module docs.
pub struct Relay<S, P> {
    shared: Shared<S, P>,
    wakeup: Option<Arc<dyn DynWakeUp>>,
    stats: Option<(StatsFn, Duration)>,
}

impl<S: Store + 'static, P: Publisher + 'static> Relay<S, P> {
    /// A relay over `store` and `publisher`; the config is validated.
    pub fn new(store: S, publisher: P, config: RelayConfig) -> Result<Self> {
        config.validate()?;
        Ok(Relay {
            shared: Shared {
                store,
                publisher,
                config,
                metrics: Arc::new(NoMetrics),
                name: "outbox".to_owned(),
            },
            wakeup: None,
            stats: None,
        })
    }

    /// Reports to these metrics.
    pub fn with_metrics(mut self, metrics: Arc<dyn RelayMetrics>) -> Self {
        self.shared.metrics = metrics;
        self
    }

    /// Names the relay in logs and spans.
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.shared.name = name.into();
        self
    }

    /// Wakes up on store notifications instead of waiting out the poll interval.
    pub fn with_wakeup(mut self, wakeup: Arc<dyn DynWakeUp>) -> Self {
        self.wakeup = Some(wakeup);
        self
    }

    /// Samples backlog figures from `stats` every `every` and reports them to the metrics.
    pub fn with_backlog_sampling<T: StoreStats + 'static>(
        mut self,
        stats: Arc<T>,
        every: Duration,
    ) -> Self {
        let f: StatsFn = Arc::new(move || {
            let stats = Arc::clone(&stats);
            Box::pin(async move { stats.stats().await })
        });
        self.stats = Some((f, every));
        self
    }

    /// The settings.
    pub fn config(&self) -> &RelayConfig {
        &self.shared.config
    }

    /// Claims one batch and processes it to the end. Returns what happened; an empty report
    /// means nothing was due.
    pub async fn run_once(&self) -> Result<BatchReport> {
        let claim = self.shared.claim().await?;
        if claim.is_empty() {
            return Ok(BatchReport::default());
        }
        let (_stop_tx, stop_rx) = watch::channel(false);
        Ok(self.shared.process(claim, stop_rx).await)
    }

    /// Runs [`run_once`](Self::run_once) until a claim comes back empty. For tests, tools
    /// and draining a backlog from a script.
    pub async fn drain(&self) -> Result<BatchReport> {
        let mut total = BatchReport::default();
        loop {
            let report = self.run_once().await?;
            if report.claimed == 0 {
                return Ok(total);
            }
            total.add(&report);
        }
    }

    /// Runs until `shutdown` resolves, then lets in-flight batches finish within
    /// `shutdown_timeout`; rows of batches still running then are released.
    ///
    /// Store errors do not stop the relay: they are logged, counted and retried after a
    /// back-off. A claim that comes back empty while this relay's own batches are in flight
    /// (their keys hold the next rows back) is retried as soon as one of them finishes, not
    /// after the idle back-off.
    pub async fn run_until<F: Future<Output = ()> + Send>(self, shutdown: F) -> BatchReport {
        let Relay {
            shared,
            wakeup,
            stats,
        } = self;
        let shared = Arc::new(shared);
        let span = tracing::info_span!("outbox.relay", relay = %shared.name);
        async move {
            let cfg = &shared.config;
            info!(
                batch_size = cfg.batch_size,
                concurrency = cfg.concurrency,
                "relay started"
            );
            let (stop_tx, stop_rx) = watch::channel(false);
            let permits = Arc::new(Semaphore::new(cfg.concurrency));
            let mut tasks: JoinSet<BatchReport> = JoinSet::new();
            let mut total = BatchReport::default();
            let mut idle = cfg.poll_interval;
            let sampler = stats.clone().map(|(f, every)| {
                let metrics = Arc::clone(&shared.metrics);
                tokio::spawn(async move {
                    loop {
                        match f().await {
                            Ok(stats) => metrics.backlog(&stats),
                            Err(e) => warn!(error = %e, "backlog sample failed"),
                        }
                        sleep(every).await;
                    }
                })
            });
            tokio::pin!(shutdown);
            loop {
                while let Some(done) = tasks.try_join_next() {
                    collect(&mut total, done);
                }
                let permit = tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    p = Arc::clone(&permits).acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                };
                let claimed = tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    c = shared.claim() => c,
                };
                match claimed {
                    Ok(claim) if !claim.is_empty() => {
                        idle = cfg.poll_interval;
                        let shared = Arc::clone(&shared);
                        let stop = stop_rx.clone();
                        tasks.spawn(async move {
                            let _permit = permit;
                            shared.process(claim, stop).await
                        });
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e.to_report(), "claim failed; backing off");
                    }
                }
                drop(permit);
                // An empty claim while our own batches are in flight usually means their
                // keys hold the next rows back: claim again as soon as one finishes instead
                // of sleeping out the idle back-off.
                let woke = tokio::select! {
                    biased;
                    _ = &mut shutdown => break,
                    Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                        collect(&mut total, done);
                        true
                    }
                    _ = sleep(idle) => false,
                    r = wait_for(&wakeup) => match r {
                        Ok(()) => true,
                        Err(e) => {
                            warn!(error = %e, "wake-up source failed; polling");
                            tokio::select! {
                                _ = &mut shutdown => break,
                                _ = sleep(idle) => false,
                            }
                        }
                    },
                };
                idle = if woke {
                    cfg.poll_interval
                } else {
                    (idle * 2).min(cfg.max_poll_interval)
                };
            }
            info!(
                in_flight = tasks.len(),
                "shutdown requested; finishing in-flight batches"
            );
            if !join_within(&mut tasks, &mut total, cfg.shutdown_timeout).await {
                warn!(
                    in_flight = tasks.len(),
                    "shutdown deadline passed; releasing unfinished batches"
                );
                let _ = stop_tx.send(true);
                if !join_within(&mut tasks, &mut total, Duration::from_secs(5)).await {
                    error!(
                        in_flight = tasks.len(),
                        "batches did not release in time; their leases will expire"
                    );
                    tasks.abort_all();
                }
            }
            if let Some(s) = sampler {
                s.abort();
            }
            info!(
                published = total.published,
                retried = total.retried,
                dead = total.dead_lettered,
                "relay stopped"
            );
            total
        }
        .instrument(span)
        .await
    }
}

async fn wait_for(wakeup: &Option<Arc<dyn DynWakeUp>>) -> Result<()> {
    match wakeup {
        Some(w) => w.wait_dyn().await,
        None => std::future::pending().await,
    }
}

/// Adds up the batch tasks as they finish; `false` if some were still running at `limit`.
async fn join_within(
    tasks: &mut JoinSet<BatchReport>,
    total: &mut BatchReport,
    limit: Duration,
) -> bool {
    timeout(limit, async {
        while let Some(done) = tasks.join_next().await {
            collect(total, done);
        }
    })
    .await
    .is_ok()
}

fn collect(
    total: &mut BatchReport,
    done: std::result::Result<BatchReport, tokio::task::JoinError>,
) {
    match done {
        Ok(report) => total.add(&report),
        Err(e) if e.is_panic() => {
            error!("a batch task panicked; its rows return when the lease expires")
        }
        Err(_) => {}
    }
}

impl<S: Store, P: Publisher> Shared<S, P> {
    async fn claim(&self) -> Result<Claim> {
        let span = tracing::debug_span!("outbox.claim", limit = self.config.batch_size);
        let res = self
            .store
            .claim(self.config.batch_size, self.config.lease)
            .instrument(span)
            .await;
        match &res {
            Ok(c) => self.metrics.claimed(c.len()),
            Err(e) => self.metrics.store_error(e),
        }
        res
    }

    async fn process(&self, claim: Claim, stop: watch::Receiver<bool>) -> BatchReport {
        // The lease is measured from before the claim returned, on our own clock, so it
        // never outlives the store's.
        let deadline = Instant::now() + self.config.lease;
        let lease = claim.lease;
        let span = tracing::info_span!(
            "outbox.batch",
            size = claim.len(),
            lease = lease.token.as_i64()
        );
        async move {
            let mut report = BatchReport {
                claimed: claim.len(),
                ..BatchReport::default()
            };
            let mut dead: Vec<DeadLetter> = claim
                .undecodable
                .into_iter()
                .map(|u| {
                    warn!(event_id = %u.id, error = %u.error, "row cannot be decoded; dead-lettering it");
                    DeadLetter {
                        id: u.id,
                        error: u.error.to_report(),
                    }
                })
                .collect();
            if !dead.is_empty() {
                self.metrics.dead_lettered(dead.len());
            }
            let candidates: Vec<Candidate> = claim
                .events
                .into_iter()
                .map(|ev| Candidate {
                    envelope: ev.envelope,
                    attempts: ev.attempts,
                })
                .collect();
            let engine = PublishEngine::new(
                &self.publisher,
                self.config.publish_timeout,
                &self.config.retry,
                self.metrics.as_ref(),
            );
            let fates = engine.publish(&candidates, deadline, Some(stop)).await;
            let mut published: Vec<EventId> = Vec::with_capacity(candidates.len());
            let mut retries: Vec<Retry> = Vec::new();
            let mut released: Vec<EventId> = Vec::new();
            let mut out_of_order = 0usize;
            for (c, fate) in candidates.iter().zip(fates) {
                let id = c.envelope.id();
                match fate {
                    Fate::Published { out_of_order: late } => {
                        published.push(id);
                        out_of_order += usize::from(late);
                    }
                    Fate::Retry { delay, error, .. } => retries.push(Retry { id, delay, error }),
                    Fate::Dead { error, .. } => dead.push(DeadLetter { id, error }),
                    Fate::Released => released.push(id),
                }
            }
            report.published = published.len();
            report.retried = retries.len();
            report.dead_lettered = dead.len();
            report.released = released.len();
            report.out_of_order = out_of_order;
            let expected = (published.len() + retries.len() + dead.len() + released.len()) as u64;
            let mut changed = 0u64;
            // Published first: it is the mark whose loss costs a duplicate.
            if !published.is_empty() {
                changed += self.mark(deadline, "mark_published", || self.store.mark_published(&lease, &published)).await;
            }
            if !dead.is_empty() {
                changed += self.mark(deadline, "dead_letter", || self.store.dead_letter(&lease, &dead)).await;
            }
            if !retries.is_empty() {
                changed += self.mark(deadline, "schedule_retry", || self.store.schedule_retry(&lease, &retries)).await;
            }
            if !released.is_empty() {
                changed += self.mark(deadline, "release", || self.store.release(&lease, &released)).await;
            }
            report.fenced = expected.saturating_sub(changed);
            if report.fenced > 0 {
                warn!(rows = report.fenced, "lease lost before marking; those rows will be claimed again");
                self.metrics.fenced(report.fenced);
            }
            report
        }
        .instrument(span)
        .await
    }

    /// Runs a mark, retrying store errors until the lease deadline (after which the store
    /// would refuse it anyway). Returns rows changed, 0 if it never succeeded.
    async fn mark<F, Fut>(&self, deadline: Instant, what: &'static str, op: F) -> u64
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<u64>>,
    {
        let mut pause = Duration::from_millis(50);
        loop {
            match op().await {
                Ok(n) => return n,
                Err(e) => {
                    self.metrics.store_error(&e);
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left <= pause {
                        error!(op = what, error = %e.to_report(), "store mark failed until the lease ran out; rows will be claimed again");
                        return 0;
                    }
                    warn!(op = what, error = %e.to_report(), "store mark failed; retrying");
                    sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_names_the_field() {
        let c = RelayConfig {
            publish_timeout: Duration::from_secs(30),
            lease: Duration::from_secs(30),
            ..RelayConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("`publish_timeout`"), "{err}");
        let c = RelayConfig {
            batch_size: 0,
            ..RelayConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("`batch_size`")
        );
        RelayConfig::default()
            .validate()
            .expect("defaults are valid");
    }

    #[test]
    fn config_reads_human_durations() {
        let c: RelayConfig = serde_json::from_str(
            r#"{"lease":"45s","publish_timeout":"5s","retry":{"max_attempts":3}}"#,
        )
        .expect("valid json");
        assert_eq!(c.lease, Duration::from_secs(45));
        assert_eq!(c.retry.max_attempts, 3);
        assert_eq!(
            c.batch_size,
            RelayConfig::default().batch_size,
            "unset fields keep their defaults"
        );
        let err = serde_json::from_str::<RelayConfig>(r#"{"leese":"45s"}"#).unwrap_err();
        assert!(err.to_string().contains("leese"), "{err}");
    }
}

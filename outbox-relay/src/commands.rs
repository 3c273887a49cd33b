//! The subcommands that work on a configuration: run, migrate, status, dead-letters.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use outbox_core::store::{
    DeadEvent, DeadLetterAdmin, DeadLetterFilter, DeadLetterRecord, Retention, StoreStats,
};
use outbox_core::{DynPublisher, EventId, Relay, TableName};
use outbox_sqlx::AnyStore;

use crate::config::{Config, PublisherConfig, SourceConfig};
use crate::router::Router;
use crate::sink::JsonLines;

/// A command's failure, printed as `outbox: <message>`.
pub type CmdResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn load(path: &Path) -> Result<Config, Box<dyn std::error::Error + Send + Sync>> {
    Ok(Config::load(path, std::env::vars())?)
}

/// The source's table (`table`, default `outbox_events`).
fn source_table(s: &SourceConfig) -> Result<TableName, Box<dyn std::error::Error + Send + Sync>> {
    Ok(match &s.table {
        Some(t) => TableName::parse(t)?,
        None => TableName::default(),
    })
}

/// Opens one source's store.
pub async fn open_source(
    name: &str,
    s: &SourceConfig,
) -> Result<AnyStore, Box<dyn std::error::Error + Send + Sync>> {
    let table = source_table(s)?;
    AnyStore::connect(&s.url, table, s.max_connections)
        .await
        .map_err(|e| format!("source {name}: {}", e.to_report()).into())
}

/// Builds one named publisher.
pub async fn open_publisher(
    name: &str,
    p: &PublisherConfig,
) -> Result<Arc<dyn DynPublisher>, Box<dyn std::error::Error + Send + Sync>> {
    let fail = |e: outbox_core::Error| format!("publisher {name}: {}", e.to_report());
    Ok(match p {
        #[cfg(feature = "nats")]
        PublisherConfig::Nats(c) => Arc::new(
            outbox_nats::NatsPublisher::connect(c.clone())
                .await
                .map_err(fail)?,
        ),
        #[cfg(feature = "amqp")]
        PublisherConfig::Amqp(c) => Arc::new(
            outbox_amqp::AmqpPublisher::connect(c.clone())
                .await
                .map_err(fail)?,
        ),
        #[cfg(feature = "kafka")]
        PublisherConfig::Kafka(c) => {
            Arc::new(outbox_kafka::KafkaPublisher::new(c.clone()).map_err(fail)?)
        }
        #[cfg(feature = "sqs")]
        PublisherConfig::Sqs(c) => {
            Arc::new(outbox_sqs::SqsPublisher::connect(c).await.map_err(fail)?)
        }
        PublisherConfig::Stdout => Arc::new(JsonLines::stdout()),
        PublisherConfig::File { path } => Arc::new(JsonLines::file(path).await.map_err(fail)?),
    })
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; SIGINT only");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// The router `outbox run` publishes through: every `[publishers.<name>]` opened, with the
/// config's routes and default publisher.
pub async fn open_router(
    config: &Config,
) -> Result<Arc<Router>, Box<dyn std::error::Error + Send + Sync>> {
    let mut publishers = Vec::new();
    for (name, p) in &config.publishers {
        publishers.push((name.clone(), open_publisher(name, p).await?));
    }
    Ok(Arc::new(Router::new(
        publishers,
        &config.routes,
        config.default_publisher.as_deref(),
    )))
}

/// The relay `outbox run` runs for one `[sources.<name>]`: `store` to `router` with the
/// source's settings, reporting to `metrics`, its backlog sampled every 5 s. The benchmark
/// (`outbox-bench`) drives this same wiring.
pub async fn source_relay(
    name: &str,
    s: &SourceConfig,
    store: AnyStore,
    router: Arc<Router>,
    metrics: Arc<outbox_core::CountingMetrics>,
) -> Result<Relay<AnyStore, Arc<Router>>, Box<dyn std::error::Error + Send + Sync>> {
    let sampled = Arc::new(store.clone());
    let wake_up = match store.wake_up().await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(source = %name, error = %e.to_report(), "cannot LISTEN for wake-ups; polling only");
            None
        }
    };
    let relay = Relay::new(store, router, s.relay.clone())
        .map_err(|e| format!("source {name}: {e}"))?
        .with_name(name.to_owned())
        .with_metrics(metrics)
        .with_backlog_sampling(sampled, Duration::from_secs(5));
    Ok(match wake_up {
        Some(w) => {
            tracing::info!(source = %name, "woken by NOTIFY on the outbox channel, polling as a fallback");
            relay.with_wakeup(w)
        }
        None => relay,
    })
}

/// `outbox run`.
pub async fn run(path: &Path) -> CmdResult {
    let config = load(path)?;
    if config.sources.is_empty() && config.event_tables.is_empty() && cdc_count(&config) == 0 {
        return Err(format!(
            "config file {}: no [sources.<name>], [event_tables.<name>] or [cdc.<name>] to relay from",
            path.display()
        )
        .into());
    }
    let router = open_router(&config).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let mut watched = Vec::new();
    for (name, s) in &config.sources {
        let store = open_source(name, s).await?;
        tracing::info!(source = %name, table = %store.table(), "relaying");
        let metrics = Arc::new(outbox_core::CountingMetrics::default());
        let probed = store.clone();
        watched.push(crate::http::WatchedSource {
            name: name.clone(),
            probe: Arc::new(move || {
                let store = probed.clone();
                Box::pin(async move {
                    outbox_core::store::StoreStats::stats(&store)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            }),
            metrics: Arc::clone(&metrics),
        });
        if let Some(keep) = s.retention {
            tasks.push(tokio::spawn(retention_loop(
                name.clone(),
                store.clone(),
                keep,
                stop_rx.clone(),
            )));
        }
        let relay = source_relay(name, s, store, Arc::clone(&router), metrics).await?;
        let stop = stopped(stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            relay.run_until(stop).await;
        }));
    }
    for (name, t) in &config.event_tables {
        let pool = outbox_sqlx::AnyPool::connect(&t.url, t.max_connections)
            .await
            .map_err(|e| format!("event table {name}: {e}"))?;
        let source =
            outbox_sqlx::event_table::EventTableSource::new(pool, name.clone(), t.mapping.clone())
                .map_err(|e| format!("event table {name}: {e}"))?;
        source
            .migrate()
            .await
            .map_err(|e| format!("event table {name}: creating the checkpoint table: {e}"))?;
        let owner = t.owner.clone().unwrap_or_else(|| {
            std::env::var("HOSTNAME").unwrap_or_else(|_| "outbox-relay".to_owned())
        });
        tracing::info!(event_table = %name, table = %t.mapping.table, %owner, "relaying");
        let metrics = Arc::new(outbox_core::CountingMetrics::default());
        let probed = Arc::new(source.clone());
        watched.push(crate::http::WatchedSource {
            name: name.clone(),
            probe: Arc::new(move || {
                let source = Arc::clone(&probed);
                Box::pin(async move {
                    source
                        .checkpoint()
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            }),
            metrics: Arc::clone(&metrics),
        });
        let relay = outbox_core::LogRelay::new(source, Arc::clone(&router), t.relay.clone())
            .map_err(|e| format!("event table {name}: {e}"))?
            .with_owner(owner)
            .with_metrics(metrics);
        let stop = stopped(stop_rx.clone());
        tasks.push(tokio::spawn(async move {
            relay.run_until(stop).await;
        }));
    }
    #[cfg(feature = "cdc")]
    for (name, c) in &config.cdc {
        let source = crate::cdc::open(name, c).await?;
        source.check().await?;
        let metrics = Arc::new(outbox_core::CountingMetrics::default());
        let (probe_spec, probe_pool) = (source.spec.clone(), source.pool.clone());
        watched.push(crate::http::WatchedSource {
            name: name.clone(),
            probe: Arc::new(move || {
                let (spec, pool) = (probe_spec.clone(), probe_pool.clone());
                Box::pin(async move {
                    match spec.status(&pool).await {
                        Ok(Some(_)) => Ok(()),
                        Ok(None) => Err(format!("slot {} does not exist", spec.slot)),
                        Err(e) => Err(e.to_string()),
                    }
                })
            }),
            metrics: Arc::clone(&metrics),
        });
        tasks.push(tokio::spawn(source.run(
            Arc::clone(&router),
            metrics,
            stop_rx.clone(),
        )));
    }
    if let Some(http) = &config.http {
        let brokers = config
            .publishers
            .iter()
            .map(|(n, p)| (n.clone(), broker_endpoint(p)))
            .collect();
        let state = Arc::new(crate::http::HttpState {
            sources: watched,
            brokers,
        });
        tasks.push(
            crate::http::serve(http.listen, state, stop_rx.clone())
                .await
                .map_err(|e| format!("http.listen {}: {e}", http.listen))?,
        );
    }
    shutdown_signal().await;
    tracing::info!("shutting down: in-flight batches finish or are released");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// How many `[cdc.<name>]` sources the config has (none in a build without CDC).
fn cdc_count(config: &Config) -> usize {
    #[cfg(feature = "cdc")]
    return config.cdc.len();
    #[cfg(not(feature = "cdc"))]
    {
        let _ = config;
        0
    }
}

/// The `host:port` a publisher talks to, for the health check.
fn broker_endpoint(p: &PublisherConfig) -> Option<String> {
    match p {
        #[cfg(feature = "nats")]
        PublisherConfig::Nats(c) => crate::http::endpoint(&c.url),
        #[cfg(feature = "amqp")]
        PublisherConfig::Amqp(c) => crate::http::endpoint(&c.url),
        #[cfg(feature = "kafka")]
        PublisherConfig::Kafka(c) => crate::http::endpoint(&c.bootstrap_servers),
        #[cfg(feature = "sqs")]
        PublisherConfig::Sqs(c) => c.endpoint_url.as_deref().and_then(crate::http::endpoint),
        PublisherConfig::Stdout | PublisherConfig::File { .. } => None,
    }
}

async fn retention_loop(
    name: String,
    store: AnyStore,
    keep: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let cutoff = Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
        loop {
            match store.purge_published(cutoff, 1000).await {
                Ok(0) => break,
                Ok(n) => tracing::debug!(source = %name, purged = n, "retention"),
                Err(e) => {
                    tracing::warn!(source = %name, error = %e, "retention purge failed");
                    break;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// `outbox migrate`: creates each source's table, or with `print` writes its DDL to
/// stdout (`;`-terminated statements, for a migration tool of your own) without connecting.
pub async fn migrate(path: &Path, only: Option<&str>, print: bool) -> CmdResult {
    let config = load(path)?;
    if let Some(o) = only
        && !config.sources.contains_key(o)
        && !cdc_names(&config).contains(&o)
    {
        return Err(format!("config file {}: no source named {o:?}", path.display()).into());
    }
    for (name, s) in config
        .sources
        .iter()
        .filter(|(n, _)| only.is_none_or(|o| o == n.as_str()))
    {
        if print {
            let dialect = outbox_sqlx::dialect_of(&s.url)
                .map_err(|e| format!("source {name}: {}", e.to_report()))?;
            let table = source_table(s)?;
            println!("-- source {name}: {table} ({dialect:?})");
            for stmt in outbox_sql::create_table_sql(&table, dialect) {
                println!("{stmt};");
            }
            continue;
        }
        let store = open_source(name, s).await?;
        store
            .migrate()
            .await
            .map_err(|e| format!("source {name}: {}", e.to_report()))?;
        println!("{name}: {} ready", store.table());
    }
    #[cfg(feature = "cdc")]
    for (name, c) in config
        .cdc
        .iter()
        .filter(|(n, _)| only.is_none_or(|o| o == n.as_str()))
    {
        if print {
            println!(
                "-- cdc {name}: created by `outbox migrate` with a connection (publication and slot)"
            );
            continue;
        }
        let source = crate::cdc::open(name, c).await?;
        source.migrate().await?;
        println!(
            "{name}: slot {} and publication {} ready",
            source.spec.slot, source.spec.publication
        );
    }
    Ok(())
}

/// The names of the `[cdc.<name>]` sources.
fn cdc_names(config: &Config) -> Vec<&str> {
    #[cfg(feature = "cdc")]
    return config.cdc.keys().map(String::as_str).collect();
    #[cfg(not(feature = "cdc"))]
    {
        let _ = config;
        Vec::new()
    }
}

/// `outbox drop-slot <name>`: drops a CDC source's slot and publication (the WAL the slot
/// held is released; what it had not confirmed will not be relayed).
#[cfg(feature = "cdc")]
pub async fn drop_slot(path: &Path, name: &str) -> CmdResult {
    let config = load(path)?;
    let c = config
        .cdc
        .get(name)
        .ok_or_else(|| format!("config file {}: no [cdc.{name}]", path.display()))?;
    let source = crate::cdc::open(name, c).await?;
    source
        .spec
        .drop_all(&source.pool)
        .await
        .map_err(|e| format!("cdc {name}: {}", e.to_report()))?;
    println!(
        "{name}: slot {} and publication {} dropped",
        source.spec.slot, source.spec.publication
    );
    Ok(())
}

/// `outbox status`.
pub async fn status(path: &Path, json: bool) -> CmdResult {
    let config = load(path)?;
    let mut rows = Vec::new();
    for (name, s) in &config.sources {
        let row = match open_source(name, s).await {
            Ok(store) => match store.stats().await {
                Ok(st) => serde_json::json!({
                    "source": name,
                    "pending": st.pending,
                    "in_flight": st.in_flight,
                    "dead": st.dead,
                    "published_last_minute": st.published_last_minute,
                    "oldest_unpublished_age_s": st.oldest_unpublished
                        .map(|t| (Utc::now() - t).num_milliseconds() as f64 / 1000.0),
                }),
                Err(e) => serde_json::json!({ "source": name, "error": e.to_report() }),
            },
            Err(e) => serde_json::json!({ "source": name, "error": e.to_string() }),
        };
        rows.push(row);
    }
    #[cfg_attr(not(feature = "cdc"), allow(unused_mut))]
    let mut cdc_rows: Vec<serde_json::Value> = Vec::new();
    #[cfg(feature = "cdc")]
    for (name, c) in &config.cdc {
        cdc_rows.push(match crate::cdc::open(name, c).await {
            Ok(source) => source.status_row().await,
            Err(e) => serde_json::json!({ "cdc": name, "error": e.to_string() }),
        });
    }
    if json {
        rows.extend(cdc_rows);
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    for line in text_table(&rows, &SOURCE_COLUMNS, 1) {
        println!("{line}");
    }
    if !cdc_rows.is_empty() {
        println!();
        for line in text_table(&cdc_rows, &CDC_COLUMNS, 2) {
            println!("{line}");
        }
    }
    Ok(())
}

/// `outbox status`'s table of sources: header, JSON field, how it shows.
const SOURCE_COLUMNS: [(&str, &str, Cell); 6] = [
    ("source", "source", Cell::Text),
    ("pending", "pending", Cell::Text),
    ("in flight", "in_flight", Cell::Text),
    ("dead", "dead", Cell::Text),
    ("oldest age", "oldest_unpublished_age_s", Cell::Seconds),
    ("published/1 min", "published_last_minute", Cell::Text),
];

/// `outbox status`'s table of CDC sources.
#[cfg_attr(not(feature = "cdc"), allow(dead_code))]
const CDC_COLUMNS: [(&str, &str, Cell); 7] = [
    ("cdc", "cdc", Cell::Text),
    ("slot", "slot", Cell::Text),
    ("active", "active", Cell::Text),
    ("confirmed LSN", "confirmed_lsn", Cell::Text),
    ("lag bytes", "lag_bytes", Cell::Text),
    ("lag time", "lag_seconds", Cell::Seconds),
    ("dead", "dead", Cell::Text),
];

/// How `outbox status` shows a value: as it is (`-` for none), or as seconds.
#[derive(Clone, Copy)]
enum Cell {
    Text,
    Seconds,
}

impl Cell {
    fn show(self, v: &serde_json::Value) -> String {
        match (self, v) {
            (Cell::Seconds, v) => v.as_f64().map_or("-".to_owned(), |s| format!("{s:.1}s")),
            (Cell::Text, serde_json::Value::String(s)) => s.clone(),
            (Cell::Text, serde_json::Value::Null) => "-".to_owned(),
            (Cell::Text, other) => other.to_string(),
        }
    }
}

/// The lines of a text table of `rows` (JSON objects), one column per `(header, field,
/// cell)`, each as wide as its widest cell (header included): the first `left` columns
/// aligned left, the rest right. A row with an `error` shows its first column, then the
/// error.
fn text_table(
    rows: &[serde_json::Value],
    columns: &[(&str, &str, Cell)],
    left: usize,
) -> Vec<String> {
    let cells: Vec<Result<Vec<String>, (String, String)>> = rows
        .iter()
        .map(|r| {
            let first = columns
                .first()
                .map_or(String::new(), |(_, f, c)| c.show(&r[*f]));
            match r.get("error") {
                Some(e) => Err((first, e.as_str().unwrap_or_default().to_owned())),
                None => Ok(columns.iter().map(|(_, f, c)| c.show(&r[*f])).collect()),
            }
        })
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|(h, _, _)| h.chars().count()).collect();
    for row in &cells {
        let shown: Vec<&String> = match row {
            Ok(c) => c.iter().collect(),
            Err((name, _)) => vec![name],
        };
        for (w, c) in widths.iter_mut().zip(shown) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = " ".repeat(w.saturating_sub(c.chars().count()));
            if i < left {
                out.push_str(c);
                out.push_str(&pad);
            } else {
                out.push_str(&pad);
                out.push_str(c);
            }
        }
        out.trim_end().to_owned()
    };
    let mut out = vec![line(&mut columns.iter().map(|(h, _, _)| *h))];
    for row in &cells {
        out.push(match row {
            Ok(c) => line(&mut c.iter().map(String::as_str)),
            Err((name, e)) => {
                let first = widths.first().copied().unwrap_or(0);
                format!("{name:<first$}  error: {e}")
            }
        });
    }
    out
}

/// What to do with dead letters.
#[derive(Clone, Copy, Debug, Subcommand)]
pub enum DeadAction {
    /// Print matching dead letters as JSON lines.
    List,
    /// Return matching dead letters to pending, attempts reset.
    Requeue,
    /// Delete matching dead letters.
    Purge,
}

/// Which dead letters, and where.
#[derive(Clone, Debug, Args)]
pub struct DeadArgs {
    /// The source.
    #[arg(long, global = true)]
    pub source: Option<String>,
    /// Only this event type.
    #[arg(long, global = true)]
    pub event_type: Option<String>,
    /// Only this ordering key.
    #[arg(long, global = true)]
    pub key: Option<String>,
    /// Only dead-lettered at or after this RFC 3339 time.
    #[arg(long, global = true)]
    pub since: Option<DateTime<Utc>>,
    /// Only dead-lettered before this RFC 3339 time.
    #[arg(long, global = true)]
    pub before: Option<DateTime<Utc>>,
    /// Only these event ids (repeat the option, or separate them with commas).
    #[arg(long = "id", global = true, value_delimiter = ',')]
    pub ids: Vec<EventId>,
    /// Most rows to list (default 100).
    #[arg(long, global = true, default_value_t = 100)]
    pub limit: usize,
}

/// One dead letter as the JSON line `outbox dead-letters list` prints: `"kind": "event"`
/// with the event's fields, or `"kind": "undecodable"` with the row's columns as stored and
/// the decode error; both with `id`, `seq`, `attempts`, `last_error` and `dead_at`.
pub fn dead_letter_line(d: &DeadLetterRecord) -> serde_json::Value {
    let mut line = match &d.event {
        DeadEvent::Event(e) => {
            let mut l = crate::sink::line(e);
            if let Some(o) = l.as_object_mut() {
                o.insert("kind".into(), "event".into());
            }
            l
        }
        DeadEvent::Undecodable(u) => serde_json::json!({
            "kind": "undecodable",
            "id": d.id.to_string(),
            "decode_error": u.error,
            "aggregate_type": u.aggregate_type,
            "aggregate_id": u.aggregate_id,
            "event_type": u.event_type,
            "destination": u.destination,
            "ordering_key": u.ordering_key,
            "content_type": u.content_type,
            "headers_raw": u.headers,
            "payload_bytes": u.payload_len,
            "created_at": u.created_at.to_rfc3339(),
        }),
    };
    if let Some(o) = line.as_object_mut() {
        o.insert("seq".into(), d.seq.into());
        o.insert("attempts".into(), d.attempts.into());
        o.insert("last_error".into(), d.last_error.clone().into());
        o.insert("dead_at".into(), d.dead_at.map(|t| t.to_rfc3339()).into());
    }
    line
}

/// `outbox dead-letters ...`.
pub async fn dead_letters(path: &Path, action: DeadAction, args: &DeadArgs) -> CmdResult {
    let config = load(path)?;
    let cdc = cdc_names(&config);
    let name = match (&args.source, config.sources.len() + cdc.len()) {
        (Some(n), _) => n.clone(),
        (None, 1) => config
            .sources
            .keys()
            .map(String::as_str)
            .chain(cdc.iter().copied())
            .next()
            .unwrap_or_default()
            .to_owned(),
        (None, _) => return Err("several sources: name one with --source".into()),
    };
    let filter = DeadLetterFilter {
        event_type: args.event_type.clone(),
        ordering_key: args.key.clone(),
        dead_since: args.since,
        dead_before: args.before,
        ids: (!args.ids.is_empty()).then(|| args.ids.clone()),
    };
    #[cfg(feature = "cdc")]
    if let Some(c) = config.cdc.get(&name) {
        let source = crate::cdc::open(&name, c).await?;
        return dead_letter_action(&source.ledger, action, args, &filter).await;
    }
    let s = config
        .sources
        .get(&name)
        .ok_or_else(|| format!("config file {}: no source named {name:?}", path.display()))?;
    let store = open_source(&name, s).await?;
    dead_letter_action(&store, action, args, &filter).await
}

/// Lists, requeues or purges the dead letters of `admin` that match `filter`.
async fn dead_letter_action<A: DeadLetterAdmin + StoreStats>(
    admin: &A,
    action: DeadAction,
    args: &DeadArgs,
    filter: &DeadLetterFilter,
) -> CmdResult {
    match action {
        DeadAction::List => {
            for d in admin.list_dead(filter, args.limit).await? {
                println!("{}", dead_letter_line(&d));
            }
        }
        DeadAction::Requeue | DeadAction::Purge => {
            // In bounded batches by id, with progress on stderr.
            let total = admin.stats().await?.dead;
            let mut done = 0u64;
            loop {
                let batch = admin.list_dead(filter, 500).await?;
                if batch.is_empty() {
                    break;
                }
                let ids = DeadLetterFilter {
                    ids: Some(batch.iter().map(|d| d.id).collect()),
                    ..filter.clone()
                };
                let n = match action {
                    DeadAction::Requeue => admin.requeue_dead(&ids).await?,
                    _ => admin.purge_dead(&ids).await?,
                };
                if n == 0 {
                    // What is left cannot be requeued (dead letters that are no events).
                    break;
                }
                done += n;
                eprint!(
                    "\r{} {done}/{total}",
                    if matches!(action, DeadAction::Requeue) {
                        "requeued"
                    } else {
                        "purged"
                    }
                );
            }
            eprintln!();
            println!("{done}");
        }
    }
    Ok(())
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_columns_line_up_under_their_headers() {
        let rows = vec![
            serde_json::json!({"source": "a-rather-long-source-name", "pending": 12345678901u64,
                "in_flight": 0, "dead": 3, "oldest_unpublished_age_s": 1.52,
                "published_last_minute": 7}),
            serde_json::json!({"source": "s", "pending": 1, "in_flight": 22, "dead": 0,
                "oldest_unpublished_age_s": null, "published_last_minute": 100}),
            serde_json::json!({"source": "broken", "error": "connection refused"}),
        ];
        let columns = SOURCE_COLUMNS;
        let header: Vec<&str> = columns.iter().map(|(h, _, _)| *h).collect();
        let lines = text_table(&rows, &columns, 1);
        // Right-aligned columns end where their header ends; the names start together.
        for h in &header[1..] {
            let end = lines[0].find(h).expect("header") + h.len();
            for l in &lines[1..3] {
                let before = &l[..end];
                assert!(
                    !before.ends_with(' ') && l[end..].chars().next().is_none_or(|c| c == ' '),
                    "column {h:?} does not end at {end} in {l:?}\n{}",
                    lines.join("\n")
                );
            }
        }
        assert!(lines[3].starts_with("broken ") && lines[3].contains("error: connection refused"));
        let second = lines[0].find("pending").expect("header");
        assert!(lines.iter().all(|l| l.len() >= second));
    }
}

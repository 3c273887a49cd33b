//! `[cdc.<name>]` sources: a PostgreSQL logical replication slot relayed by
//! `outbox_cdc::relay::CdcRelay`, beside the polling and event-table sources, through the
//! same router, metrics and health check.

use std::sync::Arc;
use std::time::Duration;

use outbox_cdc::ledger::PgLedger;
use outbox_cdc::postgres::{PgChangeStream, PgStreamConfig};
use outbox_cdc::relay::CdcRelay;
use outbox_cdc::slot::SlotSpec;
use outbox_core::{CountingMetrics, RelayMetrics};
use sqlx::postgres::PgPoolOptions;

use crate::config::{CdcConfig, CdcMode};
use crate::router::Router;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One CDC source, opened: its slot, its ledger and the pool they use.
#[derive(Clone)]
pub struct CdcSource {
    /// The source's name.
    pub name: String,
    /// Its configuration.
    pub config: CdcConfig,
    /// Its slot and publication.
    pub spec: SlotSpec,
    /// Where published and dead events are written down.
    pub ledger: PgLedger,
    /// The pool for the ledger and status queries.
    pub pool: sqlx::PgPool,
}

/// Connects to the source's database (no replication yet).
pub async fn open(name: &str, config: &CdcConfig) -> Result<CdcSource, BoxError> {
    let spec = config.spec(name)?;
    let ledger_table = config.ledger_table(name)?;
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .connect(&config.url)
        .await
        .map_err(|e| {
            format!(
                "cdc {name}: {}",
                outbox_sqlx::map_sqlx("connecting", e).to_report()
            )
        })?;
    Ok(CdcSource {
        name: name.to_owned(),
        config: config.clone(),
        spec,
        ledger: PgLedger::new(pool.clone(), ledger_table),
        pool,
    })
}

impl CdcSource {
    /// Creates the ledger's table (table mode: the outbox table; message mode: the
    /// dead-letter table), the publication and the slot, idempotently.
    pub async fn migrate(&self) -> Result<(), BoxError> {
        let name = &self.name;
        let what = match self.config.mode {
            CdcMode::Table => "outbox table",
            CdcMode::Message => "dead-letter table",
        };
        self.ledger
            .migrate()
            .await
            .map_err(|e| format!("cdc {name}: {what}: {}", e.to_report()))?;
        self.spec
            .ensure(&self.pool)
            .await
            .map_err(|e| format!("cdc {name}: slot: {}", e.to_report()))?;
        Ok(())
    }

    /// Checks that `outbox migrate` ran: the slot exists. `outbox run` runs no DDL on a CDC
    /// source: a `CREATE INDEX IF NOT EXISTS` on a live outbox table queues behind the
    /// writers' open transactions and blocks the writers queued behind it.
    pub async fn check(&self) -> Result<(), BoxError> {
        let name = &self.name;
        match self.spec.status(&self.pool).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!(
                "cdc {name}: replication slot {} does not exist: run `outbox migrate` first",
                self.spec.slot
            )
            .into()),
            Err(e) => Err(format!("cdc {name}: {}", e.to_report()).into()),
        }
    }

    /// Relays until `stop` turns true, reconnecting after a lost replication connection
    /// (from the slot's confirmed position: nothing is skipped) with a back-off of 1 s
    /// doubling to 30 s.
    pub async fn run(
        self,
        router: Arc<Router>,
        metrics: Arc<CountingMetrics>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let name = self.name.clone();
        let mut backoff = Duration::from_secs(1);
        loop {
            let outcome = self.run_once(Arc::clone(&router), Arc::clone(&metrics), stop.clone());
            match outcome.await {
                Ok(report) => {
                    tracing::info!(cdc = %name, ?report, "replication stream ended");
                    backoff = Duration::from_secs(1);
                }
                Err(e) => {
                    tracing::warn!(cdc = %name, error = %e, ?backoff, "CDC relay stopped; reconnecting")
                }
            }
            if *stop.borrow() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    async fn run_once(
        &self,
        router: Arc<Router>,
        metrics: Arc<CountingMetrics>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<outbox_cdc::relay::CdcReport, String> {
        let mut config = PgStreamConfig::new(self.config.url.clone(), self.spec.clone());
        config.prefix = self.config.prefix();
        if let Some(n) = self.config.max_piece_events {
            config.max_piece_events = n;
        }
        let stream = PgChangeStream::connect(config)
            .await
            .map_err(|e| e.to_report())?;
        tracing::info!(cdc = %self.name, slot = %self.spec.slot, mode = ?self.config.mode, "relaying");
        let metrics: Arc<dyn RelayMetrics> = metrics;
        CdcRelay::new(
            stream,
            router,
            self.ledger.clone(),
            self.config.relay.clone(),
        )
        .map_err(|e| e.to_report())?
        .with_metrics(metrics)
        .run_until(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .map_err(|e| e.to_report())
    }

    /// The slot's state as `outbox status` shows it.
    pub async fn status_row(&self) -> serde_json::Value {
        let name = &self.name;
        let slot = match self.spec.status(&self.pool).await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return serde_json::json!({
                    "cdc": name,
                    "error": format!("slot {} does not exist (run `outbox migrate`)", self.spec.slot),
                });
            }
            Err(e) => return serde_json::json!({ "cdc": name, "error": e.to_report() }),
        };
        let dead = outbox_core::StoreStats::stats(&self.ledger)
            .await
            .map(|s| s.dead)
            .ok();
        serde_json::json!({
            "cdc": name,
            "slot": self.spec.slot,
            "active": slot.active,
            "confirmed_lsn": slot.confirmed_lsn,
            "lag_bytes": slot.lag_bytes,
            "lag_seconds": slot.lag_seconds,
            "dead": dead,
        })
    }
}

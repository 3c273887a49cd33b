//! The chaos run: three `outbox run` processes on one outbox table (PostgreSQL, then
//! MariaDB), publishing to NATS JetStream and RabbitMQ through TCP proxies, while writers
//! commit events over many ordering keys (a tenth of the transactions rolled back) and
//! faults land at random points: SIGKILL and restart, SIGSTOP past the lease then SIGCONT
//! (a zombie the fencing must stop), connections cut and refused between the relays and
//! the database and brokers, and permanent publish failures. Rows that cannot be relayed
//! (undecodable headers, an oversized payload, a destination nothing routes, an unknown
//! status, on MariaDB an id that is no UUID) are written by plain SQL in the same run.
//!
//! The verifier then reads both brokers with their own clients and checks: every committed
//! event delivered at least once, no rolled-back event delivered, per key the first
//! deliveries in commit order, every permanent failure and bad row dead-lettered with its
//! error, every row published or dead, and no password in any relay's log. It prints one
//! summary per scenario and exits non-zero on any failure.
//!
//! Not part of `cargo test`: run it with
//! `cargo test --release -p outbox-relay --test chaos` (100 000 events and 1 000 faults per
//! scenario); `OUTBOX_CHAOS_EVENTS`, `OUTBOX_CHAOS_FAULTS`, `OUTBOX_CHAOS_DBS`
//! (`postgres,mariadb`) and `OUTBOX_CHAOS_SEED` change the run.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use outbox_core::testkit::{Service, TcpProxy, service_url, unique_name};
use outbox_core::{Envelope, EventId, schema::TableName};
use outbox_tests as fixtures;
use tokio::sync::Mutex;

const BIN: &str = env!("CARGO_BIN_EXE_outbox");
/// Relay processes sharing the table.
const RELAYS: usize = 3;
/// The relays' lease; a SIGSTOP lasts longer.
const LEASE: Duration = Duration::from_secs(2);

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Db {
    Postgres,
    MariaDb,
}

/// A small deterministic generator (xorshift), seeded per run so a run can be repeated.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn env_usize(name: &str, default: usize) -> Res<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a whole number").into()),
        Err(_) => Ok(default),
    }
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chaos: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_all()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_all() -> Res<bool> {
    let events = env_usize("OUTBOX_CHAOS_EVENTS", 100_000)?;
    let faults = env_usize("OUTBOX_CHAOS_FAULTS", 1_000)?;
    let seed = env_usize("OUTBOX_CHAOS_SEED", 0)? as u64;
    let seed = if seed == 0 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1
    } else {
        seed
    };
    let dbs = std::env::var("OUTBOX_CHAOS_DBS").unwrap_or_else(|_| "postgres,mariadb".into());
    let mut ok = true;
    for db in dbs.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let db = match db {
            "postgres" => Db::Postgres,
            "mariadb" | "mysql" => Db::MariaDb,
            other => {
                return Err(format!(
                    "OUTBOX_CHAOS_DBS names {other:?}; use postgres and/or mariadb"
                )
                .into());
            }
        };
        let services = [
            if db == Db::Postgres {
                Service::Postgres
            } else {
                Service::MySql
            },
            Service::Nats,
            Service::Amqp,
        ];
        let mut urls = Vec::new();
        for s in services {
            match service_url("chaos", s.env_var(), s.default_url()).await {
                Some(u) => urls.push(u),
                None => return Ok(true),
            }
        }
        let scenario = Scenario {
            db,
            events,
            faults,
            keys: 500.max(events / 100).min(2_000),
            seed,
            db_url: urls[0].clone(),
            nats_url: urls[1].clone(),
            amqp_url: urls[2].clone(),
        };
        ok &= scenario.run().await?;
    }
    Ok(ok)
}

struct Scenario {
    db: Db,
    events: usize,
    faults: usize,
    keys: usize,
    seed: u64,
    db_url: String,
    nats_url: String,
    amqp_url: String,
}

/// What the writers committed, and what they rolled back.
#[derive(Default)]
struct Written {
    /// Per ordering key, the committed events in commit order.
    by_key: HashMap<String, Vec<EventId>>,
    committed: HashSet<EventId>,
    rolled_back: HashSet<EventId>,
    /// Rows that must end dead (by their id as stored), with a word their error must
    /// contain ("" for any error).
    must_die: HashMap<String, &'static str>,
    /// Rows the database refused outright, and why.
    refused: Vec<String>,
}

/// One relay process slot: the running child, if any, and its log file.
struct Slot {
    child: Option<Child>,
    log: PathBuf,
}

/// A run that ends early (an error, a panic) leaves no relay behind.
impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Default)]
struct FaultCounts {
    kill: AtomicU64,
    stop: AtomicU64,
    db_cut: AtomicU64,
    db_refuse: AtomicU64,
    broker_cut: AtomicU64,
    broker_refuse: AtomicU64,
}

impl FaultCounts {
    fn total(&self) -> u64 {
        [
            &self.kill,
            &self.stop,
            &self.db_cut,
            &self.db_refuse,
            &self.broker_cut,
            &self.broker_refuse,
        ]
        .iter()
        .map(|c| c.load(Ordering::SeqCst))
        .sum()
    }
}

fn spawn_relay(config: &Path, log: &Path) -> Res<Child> {
    let out = File::options().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    Ok(Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env("OUTBOX_LOG", "debug")
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()?)
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status();
}

impl Scenario {
    async fn run(self) -> Res<bool> {
        let started = Instant::now();
        let name = unique_name("chaos");
        let secret = format!("s3cret-{}", name.replace('_', "-"));
        eprintln!(
            "[chaos] {:?}: {} events over {} keys, {} faults, seed {}, 3 relays, table {name}",
            self.db, self.events, self.keys, self.faults, self.seed
        );

        // Brokers: a stream for `{name}.n.>`, an exchange bound to a queue, and an exchange
        // with no queue (what is published there is unroutable: a permanent failure).
        let js = fixtures::nats::jetstream(&self.nats_url).await;
        let stream = name.to_uppercase();
        fixtures::nats::memory_stream(&js, &stream, &format!("{name}.n.>")).await;
        let (_amqp, ch) = fixtures::amqp::admin(&self.amqp_url).await;
        durable_queue(&ch, &format!("{name}.r"), &name).await?;
        fixtures::amqp::topic_exchange(&ch, &format!("{name}.x")).await;

        // Credentials with passwords, for the log check: a RabbitMQ user, a MariaDB user;
        // PostgreSQL (trust here) and NATS (no auth here) get one in their URLs.
        let amqp_user = rabbit_user(&name, &secret)?;
        let amqp_url = match &amqp_user {
            Some(u) => with_credentials(&self.amqp_url, u, &secret)?,
            None => self.amqp_url.clone(),
        };
        let nats_url = with_credentials(&self.nats_url, "chaos", &secret)?;

        // Proxies between the relays and every service.
        let db_proxy = TcpProxy::start(&host_port(&self.db_url)?).await?;
        let nats_proxy = TcpProxy::start(&host_port(&nats_url)?).await?;
        let amqp_proxy = TcpProxy::start(&host_port(&amqp_url)?).await?;

        let (source_url, writer_url, table_setting) = match self.db {
            Db::Postgres => {
                let url = with_credentials(&self.db_url, "postgres", &secret)?;
                (
                    through(&url, &db_proxy)?,
                    self.db_url.clone(),
                    format!("table = \"{name}.outbox_events\""),
                )
            }
            Db::MariaDb => {
                let admin = sqlx::MySqlPool::connect(&self.db_url).await?;
                for stmt in [
                    format!("CREATE DATABASE `{name}`"),
                    format!("CREATE USER '{name}'@'%' IDENTIFIED BY '{secret}'"),
                    format!("GRANT ALL ON `{name}`.* TO '{name}'@'%'"),
                ] {
                    sqlx::query(sqlx::AssertSqlSafe(stmt))
                        .execute(&admin)
                        .await?;
                }
                let base = self
                    .db_url
                    .rsplit_once('/')
                    .map_or(self.db_url.as_str(), |(b, _)| b);
                let url = with_credentials(&format!("{base}/{name}"), &name, &secret)?;
                (through(&url, &db_proxy)?, url, String::new())
            }
        };
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("outbox.toml");
        std::fs::write(
            &config,
            format!(
                r#"[sources.main]
url = "{source_url}"
{table_setting}
[sources.main.relay]
lease = "{lease}s"
publish_timeout = "1500ms"
poll_interval = "20ms"
max_poll_interval = "200ms"

[publishers.bus]
kind = "nats"
url = "{nats}"
ack_timeout = "1s"

[publishers.rabbit]
kind = "amqp"
url = "{amqp}"

[[routes]]
destination_prefix = "{name}.n."
publisher = "bus"

[[routes]]
destination_prefix = "{name}.r/"
publisher = "rabbit"

[[routes]]
destination_prefix = "{name}.x/"
publisher = "rabbit"
"#,
                lease = LEASE.as_secs(),
                nats = through(&nats_url, &nats_proxy)?,
                amqp = through(&amqp_url, &amqp_proxy)?,
            ),
        )?;
        // `migrate` goes straight to the database (the proxy is for the relays).
        let direct = dir.join("migrate.toml");
        std::fs::write(
            &direct,
            std::fs::read_to_string(&config)?.replace(&source_url, &writer_url),
        )?;
        fixtures::migrate(BIN, &direct);

        let slots: Arc<Vec<Mutex<Slot>>> = Arc::new(
            (0..RELAYS)
                .map(|i| {
                    let log = dir.join(format!("relay-{i}.log"));
                    Ok(Mutex::new(Slot { child: None, log }))
                })
                .collect::<Res<Vec<_>>>()?,
        );

        // Writers and faults at once. The relays start once a quarter of the events is
        // written, so they work through a backlog while the faults land.
        let counts = Arc::new(FaultCounts::default());
        let progress = Arc::new(AtomicUsize::new(0));
        let writing = tokio::spawn(write(
            self.db,
            writer_url.clone(),
            name.clone(),
            (self.events, self.keys),
            self.seed,
            Arc::clone(&progress),
        ));
        let injecting = tokio::spawn(inject(
            Arc::clone(&slots),
            config.clone(),
            [db_proxy.clone(), nats_proxy.clone(), amqp_proxy.clone()],
            Arc::clone(&counts),
            (self.faults, self.events, progress),
            Rng(self.seed ^ 0x9e37_79b9_7f4a_7c15),
        ));
        let written = writing.await??;
        injecting.await??;
        let writing_done = started.elapsed();

        // Every relay running again; then wait until no row is left unfinished.
        for slot in slots.iter() {
            let mut s = slot.lock().await;
            if let Some(c) = &s.child {
                signal(c, "-CONT");
            }
            if s.child.is_none() {
                s.child = Some(spawn_relay(&config, &s.log)?);
            }
        }
        let table = match self.db {
            Db::Postgres => format!("\"{name}\".outbox_events"),
            Db::MariaDb => "outbox_events".to_owned(),
        };
        let rows = Rows::open(self.db, &writer_url, table).await?;
        let drain_deadline = Instant::now() + Duration::from_secs(300);
        let mut unfinished = rows.unfinished().await?;
        while unfinished > 0 && Instant::now() < drain_deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            unfinished = rows.unfinished().await?;
        }
        // Acknowledged publishes are on the brokers; the relays stop.
        for slot in slots.iter() {
            let mut s = slot.lock().await;
            if let Some(c) = s.child.take() {
                stop_gracefully(c);
            }
        }

        // Read back from the brokers with their own clients.
        let nats_ids = fixtures::nats::stored_ids(&js, &stream).await;
        let window = match js.get_stream(&stream).await {
            Ok(mut s) => s.info().await.map(|i| i.config.duplicate_window).ok(),
            Err(_) => None,
        };
        let rabbit_ids = fixtures::amqp::take_ids(&ch, &name).await;
        let dead = rows.dead().await?;
        let status_counts = rows.status_counts().await?;

        let verdict = verify(&written, &[&nats_ids, &rabbit_ids], &dead);
        // What the two copies of a duplicate carried, when JetStream kept both.
        let mut copies = Vec::new();
        if let Some((0, a, b)) = verdict.first_duplicate
            && let Ok(mut s) = js.get_stream(&stream).await
            && let Ok(info) = s.info().await
        {
            let first = info.state.first_sequence;
            for p in [a, b] {
                if let Ok(m) = s.get_raw_message(first + p as u64).await {
                    let header = |name: &str| {
                        m.headers
                            .get(name)
                            .map_or("-".to_owned(), |v| v.as_str().to_owned())
                    };
                    copies.push(format!(
                        "seq {} at {}: Nats-Msg-Id {}, outbox-event-id {}",
                        m.sequence,
                        m.time,
                        header("Nats-Msg-Id"),
                        header("outbox-event-id")
                    ));
                }
            }
        }
        let mut leaks = Vec::new();
        for slot in slots.iter() {
            let s = slot.lock().await;
            let text = std::fs::read_to_string(&s.log).unwrap_or_default();
            for (n, line) in text.lines().enumerate() {
                if line.contains(&secret) {
                    leaks.push(format!("{}:{}: {line}", s.log.display(), n + 1));
                }
            }
        }
        let log_lines: usize = {
            let mut n = 0;
            for slot in slots.iter() {
                let s = slot.lock().await;
                n += std::fs::read_to_string(&s.log)
                    .map(|t| t.lines().count())
                    .unwrap_or(0);
            }
            n
        };

        let c = |a: &AtomicU64| a.load(Ordering::SeqCst);
        println!("chaos summary ({:?}, seed {})", self.db, self.seed);
        println!(
            "  faults: {} (SIGKILL+restart {}, SIGSTOP>lease+SIGCONT {}, db cut {}, db refused {}, broker cut {}, broker refused {}) + {} permanent publish failures",
            counts.total(),
            c(&counts.kill),
            c(&counts.stop),
            c(&counts.db_cut),
            c(&counts.db_refuse),
            c(&counts.broker_cut),
            c(&counts.broker_refuse),
            verdict.permanent
        );
        println!(
            "  events: {} committed over {} keys, {} rolled back; delivered {} (NATS {}, RabbitMQ {})",
            written.committed.len(),
            written.by_key.len(),
            written.rolled_back.len(),
            nats_ids.len() + rabbit_ids.len(),
            nats_ids.len(),
            rabbit_ids.len()
        );
        println!(
            "  lost {}, ghosts {}, order violations {}, duplicates {} (NATS {}, RabbitMQ {}): \
             copies re-sent after a relay was killed or stopped past its lease between the \
             broker's acknowledgement and its mark, or after a lost acknowledgement; NATS \
             drops them by Nats-Msg-Id within its duplicate window (not a retry whose \
             back-off grew past it), RabbitMQ keeps them",
            verdict.lost.len(),
            verdict.ghosts.len(),
            verdict.order_violations.len(),
            verdict.duplicates[0] + verdict.duplicates[1],
            verdict.duplicates[0],
            verdict.duplicates[1]
        );
        for c in &copies {
            println!("  a duplicate's copy in JetStream: {c}");
        }
        if !verdict.duplicate_samples.is_empty() {
            println!(
                "  duplicated, for example: {} (the stream's duplicate window: {window:?})",
                verdict.duplicate_samples.join(", ")
            );
        }
        println!(
            "  dead letters {} (expected {} with their errors: {} missing or without the error; {} unexpected); bad rows the database refused: {}",
            dead.len(),
            written.must_die.len(),
            verdict.dead_missing.len(),
            verdict.dead_unexpected.len(),
            if written.refused.is_empty() {
                "none".to_owned()
            } else {
                written.refused.join("; ")
            }
        );
        println!(
            "  rows by status {status_counts:?}, unfinished {unfinished}; secrets in {log_lines} log lines: {}",
            leaks.len()
        );
        println!(
            "  wall time {:.0} s (writing and faults {:.0} s)",
            started.elapsed().as_secs_f64(),
            writing_done.as_secs_f64()
        );
        let mut ok = true;
        for (what, list) in [
            ("lost", &verdict.lost),
            ("ghost", &verdict.ghosts),
            ("order violation", &verdict.order_violations),
            ("dead letter missing", &verdict.dead_missing),
            ("unexpected dead letter", &verdict.dead_unexpected),
            ("secret in a log", &leaks),
        ] {
            for item in list.iter().take(5) {
                println!("  FAIL {what}: {item}");
            }
            ok &= list.is_empty();
        }
        if unfinished > 0 {
            println!("  FAIL {unfinished} rows neither published nor dead");
            ok = false;
        }
        println!("  {}", if ok { "PASS" } else { "FAIL" });

        // Clean up what the run created (logs stay when it failed).
        let _ = js.delete_stream(&stream).await;
        let _ = ch
            .queue_delete(name.as_str().into(), Default::default())
            .await;
        for x in ["r", "x"] {
            let _ = ch
                .exchange_delete(format!("{name}.{x}").as_str().into(), Default::default())
                .await;
        }
        rows.drop_all(&name).await;
        if let Some(u) = amqp_user {
            let _ = Command::new("rabbitmqctl")
                .args(["delete_user", &u])
                .output();
        }
        if ok {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            println!("  relay logs kept in {}", dir.display());
        }
        Ok(ok)
    }
}

/// Declares the topic exchange `exchange` bound (`#`) to the queue `queue`, which stays
/// until deleted (the run reads it only at its end).
async fn durable_queue(ch: &lapin::Channel, exchange: &str, queue: &str) -> Res<()> {
    fixtures::amqp::topic_exchange(ch, exchange).await;
    ch.queue_declare(queue.into(), Default::default(), Default::default())
        .await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        Default::default(),
        Default::default(),
    )
    .await?;
    Ok(())
}

/// SIGTERM, then SIGKILL if the process has not ended within 10 s.
fn stop_gracefully(mut child: Child) {
    signal(&child, "-CONT");
    signal(&child, "-TERM");
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A RabbitMQ user with `secret` as password and all permissions on `/`, when
/// `rabbitmqctl` can make one (else the run keeps the URL's user).
fn rabbit_user(name: &str, secret: &str) -> Res<Option<String>> {
    let ctl = |args: &[&str]| {
        Command::new("rabbitmqctl")
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if ctl(&["add_user", name, secret])
        && ctl(&["set_permissions", "-p", "/", name, ".*", ".*", ".*"])
    {
        Ok(Some(name.to_owned()))
    } else {
        eprintln!("[chaos] rabbitmqctl could not add a user; RabbitMQ keeps the URL's credentials");
        Ok(None)
    }
}

/// `url` with `user:password@` in its authority.
fn with_credentials(url: &str, user: &str, password: &str) -> Res<String> {
    let mut u = url::Url::parse(url)?;
    u.set_username(user)
        .map_err(|_| format!("cannot set a user in {url}"))?;
    u.set_password(Some(password))
        .map_err(|_| format!("cannot set a password in {url}"))?;
    Ok(u.to_string())
}

/// The `host:port` of `url`.
fn host_port(url: &str) -> Res<String> {
    let u = url::Url::parse(url)?;
    let host = u.host_str().ok_or_else(|| format!("{url} names no host"))?;
    let port = u
        .port_or_known_default()
        .or(match u.scheme() {
            "nats" => Some(4222),
            "amqp" => Some(5672),
            "mysql" => Some(3306),
            "postgres" | "postgresql" => Some(5432),
            _ => None,
        })
        .ok_or_else(|| format!("{url} names no port"))?;
    Ok(format!("{host}:{port}"))
}

/// `url` pointed at `proxy`.
fn through(url: &str, proxy: &TcpProxy) -> Res<String> {
    let mut u = url::Url::parse(url)?;
    u.set_host(Some("127.0.0.1"))?;
    u.set_port(Some(proxy.addr().port()))
        .map_err(|_| format!("cannot set a port in {url}"))?;
    Ok(u.to_string())
}

/// The writers: four tasks, each owning a quarter of the keys (so a key's commit order is
/// its writer's order), in transactions of 1 to 10 events, a tenth rolled back; every
/// 200th transaction adds an event for the exchange no queue is bound to. Then the bad rows.
async fn write(
    db: Db,
    url: String,
    name: String,
    (events, keys): (usize, usize),
    seed: u64,
    progress: Arc<AtomicUsize>,
) -> Res<Written> {
    const WRITERS: usize = 4;
    let table = TableName::with_schema(&name, "outbox_events")?;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (url, name, table) = (url.clone(), name.clone(), table.clone());
        let progress = Arc::clone(&progress);
        let mut rng = Rng(seed.wrapping_mul(w as u64 + 7) | 1);
        tasks.push(tokio::spawn(async move {
            let mut out = Written::default();
            let store = Writer::open(db, &url, table).await?;
            let share = events / WRITERS + usize::from(w < events % WRITERS);
            let mut written = 0usize;
            let mut tx_no = 0usize;
            let mut pending: HashMap<String, Vec<EventId>> = HashMap::new();
            while written < share {
                tx_no += 1;
                let n = (1 + rng.below(10) as usize).min(share - written);
                let mut batch = Vec::with_capacity(n + 1);
                for _ in 0..n {
                    // Keys w, w + 4, w + 8, ...: this writer's own.
                    let k = w + WRITERS * rng.below((keys / WRITERS).max(1) as u64) as usize;
                    let key = format!("key-{k}");
                    let destination = if k % 2 == 0 {
                        format!("{name}.n.orders")
                    } else {
                        format!("{name}.r/orders")
                    };
                    batch.push(event(&destination, &key, written + batch.len())?);
                }
                let poison = tx_no % 100 == 0;
                if poison {
                    batch.push(event(
                        &format!("{name}.x/poison"),
                        &format!("poison-{w}-{tx_no}"),
                        0,
                    )?);
                }
                let rollback = rng.below(10) == 0;
                store.enqueue(&batch, rollback).await?;
                if rollback {
                    out.rolled_back.extend(batch.iter().map(Envelope::id));
                    continue;
                }
                written += n;
                progress.fetch_add(n, Ordering::SeqCst);
                for e in &batch {
                    out.committed.insert(e.id());
                    if e.destination().ends_with("/poison") {
                        out.must_die.insert(e.id().to_string(), "");
                    } else {
                        pending
                            .entry(e.ordering_key().to_owned())
                            .or_default()
                            .push(e.id());
                    }
                }
            }
            out.by_key = pending;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(out)
        }));
    }
    let mut all = Written::default();
    for t in tasks {
        let part = t.await??;
        all.committed.extend(part.committed);
        all.rolled_back.extend(part.rolled_back);
        all.must_die.extend(part.must_die);
        all.by_key.extend(part.by_key);
    }
    // Bad rows, each on a key of its own.
    let store = Writer::open(db, &url, table).await?;
    for (kind, expect) in store.bad_rows(&name).await? {
        match kind {
            Ok(stored_id) => {
                all.must_die.insert(stored_id, expect);
            }
            Err(refused) => all.refused.push(refused),
        }
    }
    Ok(all)
}

fn event(destination: &str, key: &str, n: usize) -> Res<Envelope> {
    Ok(Envelope::builder("order", key, "order.placed", destination)
        .json(&serde_json::json!({ "n": n, "key": key }))
        .build()?)
}

/// Runs `$body` with the writer's pool and outbox bound, whichever database it is on (the
/// two arms differ only in their types).
macro_rules! on_writer {
    ($writer:expr, |$pool:ident, $outbox:ident| $body:expr) => {
        match $writer {
            Writer::Pg($pool, $outbox) => $body,
            Writer::My($pool, $outbox) => $body,
        }
    };
}

/// A writer's connection and outbox.
enum Writer {
    Pg(sqlx::PgPool, outbox_sqlx::postgres::PgOutbox),
    My(sqlx::MySqlPool, outbox_sqlx::mysql::MySqlOutbox),
}

impl Writer {
    async fn open(db: Db, url: &str, table: TableName) -> Res<Writer> {
        Ok(match db {
            Db::Postgres => Writer::Pg(
                sqlx::PgPool::connect(url).await?,
                outbox_sqlx::postgres::PgOutbox::new(table),
            ),
            Db::MariaDb => Writer::My(
                sqlx::MySqlPool::connect(url).await?,
                outbox_sqlx::mysql::MySqlOutbox::default(),
            ),
        })
    }

    async fn enqueue(&self, batch: &[Envelope], rollback: bool) -> Res<()> {
        on_writer!(self, |pool, outbox| {
            let mut tx = pool.begin().await?;
            outbox.enqueue_all(&mut tx, batch).await?;
            if rollback {
                tx.rollback().await?;
            } else {
                tx.commit().await?;
            }
        });
        Ok(())
    }

    /// Writes one valid event per kind and corrupts it with plain SQL in the same
    /// transaction; the event id and a word its dead letter's error must hold, or why the
    /// database refused the row.
    async fn bad_rows(&self, name: &str) -> Res<Vec<(Result<String, String>, &'static str)>> {
        let mut kinds: Vec<(&str, &'static str, String)> = vec![
            (
                "headers",
                "header",
                "UPDATE {t} SET headers = '[\"not\", \"an object\"]' WHERE id = {id}".into(),
            ),
            (
                "payload",
                "payload",
                match self {
                    Writer::Pg(..) => "UPDATE {t} SET payload = decode(repeat('78', 2097152), 'hex') WHERE id = {id}".into(),
                    Writer::My(..) => "UPDATE {t} SET payload = REPEAT('x', 2097152) WHERE id = {id}".into(),
                },
            ),
            ("status", "status", "UPDATE {t} SET status = 7 WHERE id = {id}".into()),
        ];
        if matches!(self, Writer::My(..)) {
            kinds.push((
                "uuid",
                "id",
                "UPDATE {t} SET id = 'not-a-uuid' WHERE id = {id}".into(),
            ));
        }
        let mut out = Vec::new();
        for (kind, expect, sql) in kinds {
            let e = event(&format!("{name}.n.orders"), &format!("bad-{kind}"), 0)?;
            let table = match self {
                Writer::Pg(..) => format!("\"{name}\".outbox_events"),
                Writer::My(..) => "outbox_events".to_owned(),
            };
            let sql = sql
                .replace("{t}", &table)
                .replace("{id}", &format!("'{}'", e.id()));
            let result = on_writer!(self, |pool, outbox| {
                let mut tx = pool.begin().await?;
                outbox.enqueue(&mut tx, &e).await?;
                match sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *tx)
                    .await
                {
                    Ok(_) => {
                        tx.commit().await?;
                        Ok(if kind == "uuid" {
                            "not-a-uuid".to_owned()
                        } else {
                            e.id().to_string()
                        })
                    }
                    Err(err) => Err(format!("{kind}: {err}")),
                }
            });
            out.push((result, expect));
        }
        // A destination no route takes (there is no default publisher).
        let e = event("nowhere.at.all", "bad-route", 0)?;
        self.enqueue(std::slice::from_ref(&e), false).await?;
        out.push((Ok(e.id().to_string()), "route"));
        Ok(out)
    }
}

/// Starts the relays once a quarter of the `events` is written, then injects `faults`
/// faults spread over the rest of the writing (by the writers' progress), each a random 0
/// to 80 ms after its turn.
async fn inject(
    slots: Arc<Vec<Mutex<Slot>>>,
    config: PathBuf,
    proxies: [TcpProxy; 3],
    counts: Arc<FaultCounts>,
    (faults, events, progress): (usize, usize, Arc<AtomicUsize>),
    mut rng: Rng,
) -> Res<()> {
    let backlog = events / 4;
    while progress.load(Ordering::SeqCst) < backlog {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for slot in slots.iter() {
        let mut s = slot.lock().await;
        s.child = Some(spawn_relay(&config, &s.log)?);
    }
    let mut running = Vec::new();
    for i in 0..faults {
        let turn = backlog + i * (events - backlog) / faults.max(1);
        while progress.load(Ordering::SeqCst) < turn {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(80))).await;
        let kind = rng.below(6);
        let relay = rng.below(RELAYS as u64) as usize;
        let pause = Duration::from_millis(100 + rng.below(900));
        let (slots, config, counts) = (Arc::clone(&slots), config.clone(), Arc::clone(&counts));
        let proxy = match kind {
            2 | 3 => proxies[0].clone(),
            _ => proxies[1 + rng.below(2) as usize].clone(),
        };
        running.push(tokio::spawn(async move {
            match kind {
                0 => {
                    let mut s = slots[relay].lock().await;
                    if let Some(mut c) = s.child.take() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    counts.kill.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(pause / 2).await;
                    s.child = Some(spawn_relay(&config, &s.log)?);
                }
                1 => {
                    let s = slots[relay].lock().await;
                    if let Some(c) = &s.child {
                        signal(c, "-STOP");
                        counts.stop.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(LEASE + pause).await;
                        signal(c, "-CONT");
                    }
                }
                2 => {
                    proxy.cut();
                    counts.db_cut.fetch_add(1, Ordering::SeqCst);
                }
                3 => {
                    proxy.set_refusing(true);
                    proxy.cut();
                    counts.db_refuse.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(pause).await;
                    proxy.set_refusing(false);
                }
                4 => {
                    proxy.cut();
                    counts.broker_cut.fetch_add(1, Ordering::SeqCst);
                }
                _ => {
                    proxy.set_refusing(true);
                    proxy.cut();
                    counts.broker_refuse.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(pause).await;
                    proxy.set_refusing(false);
                }
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for r in running {
        r.await??;
    }
    for p in &proxies {
        p.set_refusing(false);
    }
    Ok(())
}

/// Runs `$body` with the table's pool and quoted name bound, whichever database it is on.
macro_rules! on_rows {
    ($rows:expr, |$pool:ident, $table:ident| $body:expr) => {
        match $rows {
            Rows::Pg($pool, $table) => $body,
            Rows::My($pool, $table) => $body,
        }
    };
}

/// The outbox table, read directly.
enum Rows {
    Pg(sqlx::PgPool, String),
    My(sqlx::MySqlPool, String),
}

/// A dead row: its id as stored, and its error.
struct DeadRow {
    id: String,
    error: String,
}

impl Rows {
    async fn open(db: Db, url: &str, table: String) -> Res<Rows> {
        Ok(match db {
            Db::Postgres => Rows::Pg(sqlx::PgPool::connect(url).await?, table),
            Db::MariaDb => Rows::My(sqlx::MySqlPool::connect(url).await?, table),
        })
    }

    async fn unfinished(&self) -> Res<i64> {
        Ok(on_rows!(self, |p, t| {
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {t} WHERE status IN (0, 1)"
            )))
            .fetch_one(p)
            .await?
        }))
    }

    async fn status_counts(&self) -> Res<Vec<(i32, i64)>> {
        let sql = |t: &str| {
            format!("SELECT CAST(status AS SIGNED), count(*) FROM {t} GROUP BY status ORDER BY 1")
        };
        Ok(match self {
            Rows::Pg(p, t) => sqlx::query_as::<_, (i16, i64)>(sqlx::AssertSqlSafe(format!(
                "SELECT status, count(*) FROM {t} GROUP BY status ORDER BY 1"
            )))
            .fetch_all(p)
            .await?
            .into_iter()
            .map(|(s, n)| (i32::from(s), n))
            .collect(),
            Rows::My(p, t) => sqlx::query_as::<_, (i64, i64)>(sqlx::AssertSqlSafe(sql(t)))
                .fetch_all(p)
                .await?
                .into_iter()
                .map(|(s, n)| (s as i32, n))
                .collect(),
        })
    }

    async fn dead(&self) -> Res<Vec<DeadRow>> {
        let id = match self {
            Rows::Pg(..) => "id::text",
            Rows::My(..) => "CAST(id AS CHAR)",
        };
        let rows: Vec<(String, Option<String>)> = on_rows!(self, |p, t| {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {id}, last_error FROM {t} WHERE status = 3"
            )))
            .fetch_all(p)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, error)| DeadRow {
                id,
                error: error.unwrap_or_default(),
            })
            .collect())
    }

    async fn drop_all(&self, name: &str) {
        match self {
            Rows::Pg(p, _) => {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS \"{name}\" CASCADE"
                )))
                .execute(p)
                .await;
            }
            Rows::My(p, _) => {
                for stmt in [
                    format!("DROP DATABASE IF EXISTS `{name}`"),
                    format!("DROP USER IF EXISTS '{name}'@'%'"),
                ] {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(stmt)).execute(p).await;
                }
            }
        }
    }
}

#[derive(Default)]
struct Verdict {
    lost: Vec<String>,
    ghosts: Vec<String>,
    order_violations: Vec<String>,
    /// Deliveries past the first, per broker.
    duplicates: [usize; 2],
    /// A few duplicated events, with their key and place.
    duplicate_samples: Vec<String>,
    /// The broker and the places of both copies of the first duplicate.
    first_duplicate: Option<(usize, usize, usize)>,
    dead_missing: Vec<String>,
    dead_unexpected: Vec<String>,
    permanent: usize,
}

fn verify(written: &Written, brokers: &[&Vec<EventId>; 2], dead: &[DeadRow]) -> Verdict {
    let mut v = Verdict::default();
    // Where each committed event stands in its key's commit order.
    let mut place: HashMap<EventId, (&str, usize)> = HashMap::new();
    for (key, ids) in &written.by_key {
        for (i, id) in ids.iter().enumerate() {
            place.insert(*id, (key.as_str(), i));
        }
    }
    let mut delivered: HashSet<EventId> = HashSet::new();
    for (b, ids) in brokers.iter().enumerate() {
        let mut seen: HashMap<EventId, usize> = HashMap::new();
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (n, id) in ids.iter().enumerate() {
            if let Some(first) = seen.get(id) {
                v.duplicates[b] += 1;
                if v.first_duplicate.is_none() {
                    v.first_duplicate = Some((b, *first, n));
                }
                if v.duplicate_samples.len() < 5 {
                    let at = place.get(id).map_or_else(
                        || "a dead or bad row".to_owned(),
                        |(key, i)| format!("key {key}, event #{i}"),
                    );
                    v.duplicate_samples.push(format!(
                        "{id} ({at}; copies at {first} and {n} of {})",
                        ids.len()
                    ));
                }
                continue;
            }
            seen.insert(*id, n);
            delivered.insert(*id);
            if !written.committed.contains(id) {
                v.ghosts.push(format!(
                    "{id} {}",
                    if written.rolled_back.contains(id) {
                        "was rolled back"
                    } else {
                        "was never written"
                    }
                ));
                continue;
            }
            if let Some((key, i)) = place.get(id) {
                match last.get(key) {
                    Some(prev) if *i < *prev => v.order_violations.push(format!(
                        "key {key}: event #{i} first delivered after #{prev}"
                    )),
                    _ => {
                        last.insert(key, *i);
                    }
                }
            }
        }
    }
    let dead_by_id: HashMap<&str, &str> = dead
        .iter()
        .map(|d| (d.id.as_str(), d.error.as_str()))
        .collect();
    for id in &written.committed {
        if !written.must_die.contains_key(&id.to_string()) && !delivered.contains(id) {
            v.lost.push(id.to_string());
        }
    }
    for (id, expect) in &written.must_die {
        v.permanent += usize::from(expect.is_empty());
        match dead_by_id.get(id.as_str()) {
            Some(error) if !error.is_empty() && error.to_lowercase().contains(expect) => {}
            Some(error) => v
                .dead_missing
                .push(format!("{id}: error {error:?} does not name {expect:?}")),
            None => v
                .dead_missing
                .push(format!("{id} (expected {expect:?}) is not dead")),
        }
    }
    for d in dead {
        if !written.must_die.contains_key(&d.id) {
            v.dead_unexpected.push(format!("{}: {}", d.id, d.error));
        }
    }
    v
}

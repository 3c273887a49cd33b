//! The `outbox` binary. See the crate README.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use outbox_relay::commands::{self, DeadAction, DeadArgs};
#[cfg(feature = "sqlite")]
use outbox_relay::demo::{self, DemoArgs};

#[derive(Parser)]
#[command(name = "outbox", version, about = "The transactional outbox relay")]
struct Cli {
    /// Log as JSON lines (for log collectors) instead of text.
    #[arg(long, global = true, env = "OUTBOX_LOG_JSON")]
    log_json: bool,
    /// The TOML configuration file (before or after the subcommand).
    #[arg(
        long,
        short,
        global = true,
        env = "OUTBOX_CONFIG",
        default_value = "outbox.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Relay every source to its routed brokers until SIGINT or SIGTERM.
    Run,
    /// Create the outbox table on every source (or one), idempotently.
    Migrate {
        /// Only this source.
        #[arg(long)]
        source: Option<String>,
        /// Print each source's DDL for a migration tool of your own instead of running it
        /// (no connection is made).
        #[arg(long)]
        print: bool,
    },
    /// Backlog per source: pending, in flight, dead letters, oldest unpublished age.
    Status {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Drop a CDC source's replication slot and publication (retiring the source).
    #[cfg(feature = "cdc")]
    DropSlot {
        /// The `[cdc.<name>]` source.
        name: String,
    },
    /// List, requeue or purge dead letters.
    DeadLetters {
        #[command(subcommand)]
        action: DeadAction,
        #[command(flatten)]
        args: DeadArgs,
    },
    /// The embedded demo: SQLite and a JSON-lines sink, nothing to install or configure.
    #[cfg(feature = "sqlite")]
    Demo(DemoArgs),
}

/// The span exporter `outbox run` asks for in `[telemetry]` or the environment.
#[cfg(feature = "opentelemetry")]
type Exporter = outbox_relay::telemetry::Exporter;
/// Built without the `opentelemetry` feature there is none.
#[cfg(not(feature = "opentelemetry"))]
type Exporter = std::convert::Infallible;

#[cfg(feature = "opentelemetry")]
fn start_exporter(cli: &Cli) -> Result<Option<Exporter>, String> {
    if !matches!(cli.command, Command::Run) {
        return Ok(None);
    }
    // A config that does not load is reported by `run` itself, with the rest of its errors.
    let config = outbox_relay::Config::load(&cli.config, std::env::vars()).ok();
    let telemetry = config.as_ref().and_then(|c| c.telemetry.as_ref());
    Exporter::start(telemetry, &|name| std::env::var(name).ok())
}

#[cfg(not(feature = "opentelemetry"))]
fn start_exporter(cli: &Cli) -> Result<Option<Exporter>, String> {
    let asked = matches!(cli.command, Command::Run)
        && outbox_relay::Config::load(&cli.config, std::env::vars())
            .is_ok_and(|c| c.telemetry.is_some_and(|t| t.otlp_endpoint.is_some()));
    if asked {
        return Err("[telemetry] otlp_endpoint: this outbox binary was built without the `opentelemetry` feature".to_owned());
    }
    Ok(None)
}

/// Logs to stderr, filtered by `OUTBOX_LOG` (default `info`); with an exporter, the
/// relay's own spans (targets `outbox*`, at `info`, the per-event `send` spans included)
/// go to it too.
fn init_logs(json: bool, exporter: Option<&Exporter>) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTBOX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // The per-event `send` spans are for the exporter; the log lines never show them, and
    // without an exporter they are not even made.
    let filter = match "outbox::send=off".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let lines: Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync> =
        if json {
            Box::new(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
        } else {
            Box::new(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        };
    #[cfg(feature = "opentelemetry")]
    let spans = exporter.map(|e| {
        e.layer().with_filter(
            tracing_subscriber::filter::Targets::new().with_target("outbox", tracing::Level::INFO),
        )
    });
    #[cfg(not(feature = "opentelemetry"))]
    let spans: Option<tracing_subscriber::layer::Identity> = exporter.map(|e| match *e {});
    tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(spans)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS crypto provider for the process (the brokers' clients bring two).
    outbox_sqlx::install_crypto_provider();
    // Before the runtime: the exporter's HTTP client runs on a thread of its own.
    let exporter = match start_exporter(&cli) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("outbox: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logs(cli.log_json, exporter.as_ref());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("outbox: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    drop(runtime);
    #[cfg(feature = "opentelemetry")]
    if let Some(e) = exporter {
        e.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outbox: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> commands::CmdResult {
    match cli.command {
        Command::Run => commands::run(&cli.config).await,
        Command::Migrate { source, print } => {
            commands::migrate(&cli.config, source.as_deref(), print).await
        }
        Command::Status { json } => commands::status(&cli.config, json).await,
        #[cfg(feature = "cdc")]
        Command::DropSlot { name } => commands::drop_slot(&cli.config, &name).await,
        Command::DeadLetters { action, args } => {
            commands::dead_letters(&cli.config, action, &args).await
        }
        #[cfg(feature = "sqlite")]
        Command::Demo(args) => demo::run(args).await,
    }
}

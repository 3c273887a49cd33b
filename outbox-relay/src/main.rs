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

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTBOX_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_json);
    let result = match cli.command {
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outbox: {e}");
            ExitCode::FAILURE
        }
    }
}

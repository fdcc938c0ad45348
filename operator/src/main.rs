//! `sagashop-operator`: reconciles `KafkaTopic` and `Saga` resources, and prints their CRDs.
//! Thin: flags and environment in, [`sagashop_operator::run`], an exit code out.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sagashop_kit::exit::{EX_CANTCREAT, EX_SOFTWARE, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE};
use sagashop_kit::telemetry::LogFormat;
use sagashop_operator::lease::LeaseConfig;
use sagashop_operator::{OperatorConfig, RunError, Scope};
use tokio_util::sync::CancellationToken;

/// sagashop's Kubernetes operator.
#[derive(Debug, Parser)]
#[command(name = "sagashop-operator", version, about, long_about = None)]
struct Cli {
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reconcile `KafkaTopic` and `Saga` resources until Ctrl-C or SIGTERM. The cluster comes
    /// from `KUBECONFIG` (or the in-cluster service account).
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions (or write one file per CRD into `--out`).
    Crds {
        /// A directory to write `<plural>.<group>.yaml` files into.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Kafka connection.
    #[command(flatten)]
    kafka: sagashop_kit::KafkaConfig,
    /// Namespaces to manage, comma-separated (every namespace when unset). With exactly one,
    /// only that namespace is watched, so a namespaced Role is enough.
    #[arg(long = "namespaces", env = "WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Objects of each kind reconciled at once.
    #[arg(long, env = "OPERATOR_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// How often every object is reconciled even when nothing changed (reverts drift).
    #[arg(long, env = "OPERATOR_RESYNC", default_value = "5m", value_parser = humantime::parse_duration)]
    resync: Duration,
    /// How long a Kafka admin request waits to be batched with others.
    #[arg(long, env = "OPERATOR_BATCH_LINGER", default_value = "20ms", value_parser = humantime::parse_duration)]
    batch_linger: Duration,
    /// `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "OPERATOR_HTTP", default_value = "127.0.0.1:8081")]
    http: SocketAddr,
    /// Take part in leader election (off: this replica reconciles alone, unconditionally).
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// The Lease's name.
    #[arg(
        long,
        env = "LEADER_ELECTION_LEASE",
        default_value = "sagashop-operator"
    )]
    lease_name: String,
    /// The Lease's namespace (the pod's own, in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's name in the Lease and in events (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// The installer makes the Lease (the chart does): wait for it, never create it.
    #[arg(long, env = "LEADER_ELECTION_LEASE_PROVIDED", default_value_t = false, action = clap::ArgAction::Set)]
    lease_provided: bool,
    /// How long a Lease lasts unrenewed before a standby takes over.
    #[arg(long, env = "LEADER_ELECTION_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return sagashop_kit::kafka::usage_exit(&e),
    };
    match cli.command {
        Command::Crds { out } => crds(out.as_deref()),
        Command::Run(args) => run(*args, cli.log_format).await,
    }
}

fn usage(message: &str) -> ExitCode {
    tracing::error!("{message}");
    ExitCode::from(EX_USAGE)
}

async fn run(args: RunArgs, log_format: LogFormat) -> ExitCode {
    let _telemetry = match sagashop_kit::telemetry::init(log_format, "sagashop-operator") {
        Ok(guard) => guard,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "sagashop-operator: {e}");
            return ExitCode::from(EX_SOFTWARE);
        }
    };
    if let Err(e) = args.kafka.validate() {
        return usage(&e.to_string());
    }
    if args.lease_duration < Duration::from_secs(2) {
        return usage("invalid setting LEADER_ELECTION_DURATION: must be at least 2s");
    }
    if args.resync < Duration::from_secs(1) {
        return usage("invalid setting OPERATOR_RESYNC: must be at least 1s");
    }
    let listener = match tokio::net::TcpListener::bind(args.http).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("cannot listen on {} (OPERATOR_HTTP): {e}", args.http);
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            tracing::error!("no Kubernetes API server: {e} (set KUBECONFIG, or run in a cluster)");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    let config = config(args);
    let shutdown = CancellationToken::new();
    let monitor = sagashop_kit::Monitor::new();
    let server = {
        let (app, stop) = (sagashop_kit::ops_router(monitor.clone()), shutdown.clone());
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    };
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let result = sagashop_operator::run(client, config, &monitor, shutdown.clone()).await;
    shutdown.cancel();
    let _ = server.await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ RunError::Kafka(_)) => {
            tracing::error!("{e}");
            ExitCode::from(EX_UNAVAILABLE)
        }
        Err(e @ RunError::LeaseLost(_)) => {
            tracing::error!("{e}");
            ExitCode::from(EX_TEMPFAIL)
        }
        Err(e @ RunError::ControllerEnded(_)) => {
            tracing::error!("{e}");
            ExitCode::from(EX_SOFTWARE)
        }
    }
}

/// The operator's configuration from its arguments; its identity is the pod name (or host
/// and process id).
fn config(args: RunArgs) -> OperatorConfig {
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".to_owned());
        format!("{host}-{}", std::process::id())
    });
    OperatorConfig {
        kafka: args.kafka,
        scope: Scope::only(args.namespaces),
        concurrency: args.concurrency.max(1),
        resync: args.resync,
        batch_linger: args.batch_linger,
        lease: args.leader_election.then(|| LeaseConfig {
            name: args.lease_name,
            namespace: args.lease_namespace,
            identity: identity.clone(),
            duration: args.lease_duration,
            renew_every: args.lease_duration / 3,
            provided: args.lease_provided,
        }),
        instance: Some(identity),
    }
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        Some(()) = async { term.as_mut()?.recv().await } => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

fn crds(out: Option<&std::path::Path>) -> ExitCode {
    let written = match out {
        Some(dir) => std::fs::create_dir_all(dir).and_then(|()| {
            sagashop_operator::crds()
                .into_iter()
                .try_for_each(|(file, yaml)| std::fs::write(dir.join(file), yaml))
        }),
        None => {
            let mut stdout = std::io::stdout().lock();
            sagashop_operator::crds()
                .into_iter()
                .try_for_each(|(_, yaml)| write!(stdout, "---\n{yaml}"))
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "sagashop-operator: writing the CRDs: {e}"
            );
            ExitCode::from(EX_CANTCREAT)
        }
    }
}

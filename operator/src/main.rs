//! `sagashop-operator`: reconciles `KafkaTopic` and `Saga` resources (being built), and prints
//! their CRDs.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// sagashop's Kubernetes operator.
#[derive(Debug, Parser)]
#[command(name = "sagashop-operator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Reconcile `KafkaTopic` resources into Kafka topics until Ctrl-C or SIGTERM. The cluster
    /// comes from `KUBECONFIG` (or the in-cluster service account).
    Run {
        /// Kafka connection.
        #[command(flatten)]
        kafka: sagashop_kit::KafkaConfig,
        /// Watch only this namespace (every namespace when unset).
        #[arg(long, env = "WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// Resources reconciled at once.
        #[arg(long, env = "OPERATOR_CONCURRENCY", default_value_t = 8)]
        concurrency: u16,
    },
    /// Print the CustomResourceDefinitions (or write one file per CRD into `--out`).
    Crds {
        /// A directory to write `<plural>.<group>.yaml` files into.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(64)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Crds { out } => crds(out.as_deref()),
        Command::Run {
            kafka,
            namespace,
            concurrency,
        } => run(kafka, namespace, concurrency).await,
    }
}

async fn run(
    kafka: sagashop_kit::KafkaConfig,
    namespace: Option<String>,
    concurrency: u16,
) -> ExitCode {
    let _telemetry = match sagashop_kit::telemetry::init(
        sagashop_kit::telemetry::LogFormat::Auto,
        "sagashop-operator",
    ) {
        Ok(guard) => guard,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "sagashop-operator: {e}");
            return ExitCode::from(70);
        }
    };
    if let Err(e) = kafka.validate() {
        tracing::error!("{e}");
        return ExitCode::from(64);
    }
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            tracing::error!("no Kubernetes API server: {e} (set KUBECONFIG, or run in a cluster)");
            return ExitCode::from(69);
        }
    };
    tracing::info!(
        namespace = namespace.as_deref().unwrap_or("(all)"),
        concurrency,
        "reconciling KafkaTopics"
    );
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            Some(()) = async { term.as_mut()?.recv().await } => {}
        }
    };
    match sagashop_operator::topics::run(client, kafka, namespace, concurrency.max(1), shutdown)
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(69)
        }
    }
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
            ExitCode::from(73)
        }
    }
}

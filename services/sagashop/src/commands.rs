//! What each subcommand does.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use sagashop_kit::{ClusterInfo, KafkaConfig};

use crate::cli::{Command, EX_CANTCREAT, EX_IOERR, EX_UNAVAILABLE, EX_USAGE, RunService};
use crate::system::Service;

/// A failed command: the error to print and the exit code to leave with.
pub(crate) struct Failure {
    pub(crate) error: anyhow::Error,
    pub(crate) code: u8,
}

/// Maps an output error to a failure, except a closed pipe (`sagashop dlq list | head`): the
/// reader has what it wanted, so that is success.
pub(crate) fn output(result: std::io::Result<()>) -> Result<(), Failure> {
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(fail(EX_IOERR)(e.into())),
        _ => Ok(()),
    }
}

/// Prints `json` to stdout, indented.
fn print_json(json: &[serde_json::Value]) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(json).unwrap_or_default();
    output(writeln!(std::io::stdout().lock(), "{text}"))
}

pub(crate) fn fail(code: u8) -> impl FnOnce(anyhow::Error) -> Failure {
    move |error| Failure { error, code }
}

pub(crate) async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Doctor { kafka, timeout } => doctor(&kafka, timeout).await,
        Command::Schemas { out } => schemas(&out).map_err(fail(EX_CANTCREAT)),
        Command::Topics { saga, topic_prefix } => {
            let list = crate::system::topic_list(saga.as_deref(), &topic_prefix)
                .map_err(fail(EX_USAGE))?;
            let json: Vec<serde_json::Value> = list
                .into_iter()
                .map(|(t, by)| {
                    serde_json::json!({"name": t.name, "partitions": t.partitions,
                        "replicas": t.replicas, "config": t.config, "declaredBy": by})
                })
                .collect();
            print_json(&json)
        }
        Command::Services => {
            let json: Vec<serde_json::Value> = Service::ALL
                .into_iter()
                .map(|s| serde_json::json!({"name": s.name(), "about": s.about()}))
                .collect();
            print_json(&json)
        }
        Command::Dlq {
            kafka,
            topic,
            timeout,
            action,
        } => crate::dlq::run(&kafka, topic, timeout, action).await,
        Command::Saga { url, token, action } => {
            let token = token.as_deref().map(str::trim).filter(|t| !t.is_empty());
            crate::saga::run(&url, token, action).await
        }
        Command::Dev(mut args) => {
            args.create_topics = true;
            crate::system::run(&Service::ALL, args).await
        }
        Command::Service(RunService { service, args }) => {
            crate::system::run(&[service], args).await
        }
    }
}

async fn doctor(kafka: &KafkaConfig, timeout: Duration) -> Result<(), Failure> {
    kafka.validate().map_err(|e| fail(EX_USAGE)(e.into()))?;
    let info = kafka
        .probe(timeout)
        .await
        .map_err(|e| fail(EX_UNAVAILABLE)(e.into()))?;
    output(report(&mut std::io::stdout().lock(), kafka, &info))
}

fn report(out: &mut impl Write, kafka: &KafkaConfig, info: &ClusterInfo) -> std::io::Result<()> {
    writeln!(out, "kafka: {} answers", kafka.bootstrap_servers)?;
    writeln!(out, "brokers: {}", info.brokers.join(", "))?;
    writeln!(out, "topics: {}", info.topics.len())?;
    for (name, partitions) in &info.topics {
        writeln!(out, "  {name} ({partitions} partitions)")?;
    }
    Ok(())
}

fn schemas(out: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let entries = sagashop_contracts::catalogue();
    for entry in &entries {
        entry
            .write_to(out)
            .with_context(|| format!("writing {} into {}", entry.file_name(), out.display()))?;
    }
    tracing::info!(count = entries.len(), dir = %out.display(), "wrote JSON Schemas");
    Ok(())
}

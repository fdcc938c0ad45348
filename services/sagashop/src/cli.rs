//! The command line: flags and environment, with `--help` as the documentation.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sagashop_kit::KafkaConfig;
use sagashop_kit::telemetry::LogFormat;
use sagashop_topology::Service;

use crate::system::SystemArgs;

pub(crate) use sagashop_kit::exit::{
    EX_CANTCREAT, EX_IOERR, EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE,
};

/// sagashop: an event-driven order saga on Apache Kafka.
#[derive(Debug, Parser)]
#[command(name = "sagashop", version, about, long_about = None)]
pub(crate) struct Cli {
    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto, global = true)]
    pub(crate) log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Check that Kafka answers, and list its brokers and topics.
    Doctor {
        /// Kafka connection.
        #[command(flatten)]
        kafka: KafkaConfig,
        /// How long to wait for the broker to answer.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Inspect and redrive the records a consumer gave up on.
    Dlq {
        /// Kafka connection.
        #[command(flatten)]
        kafka: KafkaConfig,
        /// The dead-letter topic.
        #[arg(long, global = true, env = "SAGASHOP_DLQ_TOPIC")]
        topic: Option<String>,
        /// How long reading the topic may take.
        #[arg(long, global = true, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// What to do with the dead letters.
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Find and inspect saga instances, through the `/api/sagas` of an orchestrator (or of
    /// `sagashop dev`).
    Saga {
        /// The HTTP address of an orchestrator or of `sagashop dev`.
        #[arg(
            long,
            global = true,
            env = "SAGASHOP_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        url: String,
        /// The admin token that `cancel` and `retry` need (sent as `Authorization: Bearer`).
        #[arg(
            long,
            global = true,
            env = "SAGASHOP_ADMIN_TOKEN",
            hide_env_values = true
        )]
        token: Option<String>,
        /// What to do.
        #[command(subcommand)]
        action: SagaAction,
    },
    /// Run every service in one process against Kafka: creates the topics, serves the HTTP API
    /// and `/healthz` `/readyz` `/metrics`, and prints a one-line summary. Ctrl-C stops it.
    Dev(crate::system::SystemArgs),
    /// One service (what a Kubernetes pod runs): a subcommand per service of the topology,
    /// `sagashop order`, `sagashop payment`, ….
    #[command(flatten)]
    Service(RunService),
    /// Print every Kafka topic the services need as JSON: name, partitions, replicas, config,
    /// and who declares it in Kubernetes (`saga`: the operator; `services`: KafkaTopics).
    Topics {
        /// A `Saga` manifest (the shipped order saga when unset).
        #[arg(long, env = "SAGASHOP_SAGA")]
        saga: Option<PathBuf>,
        /// Prepended to every topic name.
        #[arg(long, env = "SAGASHOP_TOPIC_PREFIX", default_value = "")]
        topic_prefix: String,
    },
    /// Print every service as JSON, name and what it does: the chart deploys one Deployment
    /// per entry (`charts/sagashop/files/services.json` is this output).
    Services,
    /// Write the JSON Schema of every event and command version into a directory.
    Schemas {
        /// The directory to write into (created if missing).
        #[arg(long, default_value = "services/contracts/schemas")]
        out: PathBuf,
    },
}

/// `sagashop <service>`: one subcommand per [`Service`], named and described by the topology,
/// so that a new service needs no change here.
#[derive(Debug)]
pub(crate) struct RunService {
    /// Which service.
    pub(crate) service: Service,
    /// Its settings.
    pub(crate) args: SystemArgs,
}

impl clap::FromArgMatches for RunService {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let Some((name, args)) = matches.subcommand() else {
            return Err(clap::Error::raw(
                clap::error::ErrorKind::MissingSubcommand,
                "name the service to run",
            ));
        };
        let service = Service::named(name).ok_or_else(|| {
            clap::Error::raw(
                clap::error::ErrorKind::InvalidSubcommand,
                format!("there is no service `{name}`"),
            )
        })?;
        Ok(Self {
            service,
            args: clap::FromArgMatches::from_arg_matches(args)?,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Subcommand for RunService {
    fn augment_subcommands(command: clap::Command) -> clap::Command {
        Service::ALL.into_iter().fold(command, |command, service| {
            command.subcommand(
                SystemArgs::augment_args(clap::Command::new(service.name()))
                    .about(service.about())
                    .long_about(None),
            )
        })
    }

    fn augment_subcommands_for_update(command: clap::Command) -> clap::Command {
        Self::augment_subcommands(command)
    }

    fn has_subcommand(name: &str) -> bool {
        Service::named(name).is_some()
    }
}

/// `sagashop saga` actions.
#[derive(Debug, Subcommand)]
pub(crate) enum SagaAction {
    /// Instances oldest first, one per line: id, status, step, attempt, age, customer; then the
    /// counts per status, and the cursor of the next page if there is one.
    List {
        /// RUNNING, COMPENSATING, COMPLETED or CANCELLED.
        #[arg(long)]
        status: Option<String>,
        /// Only instances at this step.
        #[arg(long)]
        step: Option<String>,
        /// Only instances that started at least this long ago (`90s`, `5m`, `1h`).
        #[arg(long)]
        older_than: Option<String>,
        /// Only this customer's.
        #[arg(long)]
        customer: Option<String>,
        /// At most this many (1–1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Start after this cursor (printed by the previous page).
        #[arg(long)]
        cursor: Option<String>,
        /// Print the API's JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a running saga: it compensates what its steps did and ends CANCELLED, with the
    /// reason and who asked in its timeline. Refused (exit 64) for a saga that has ended or is
    /// compensating already.
    Cancel {
        /// The saga id.
        id: String,
        /// Why (kept in the saga's timeline and outcome).
        #[arg(long)]
        reason: String,
        /// Who asks.
        #[arg(long = "by", env = "USER", default_value = "sagashop-cli")]
        requested_by: String,
    },
    /// Retry a saga: a FAILED one (a compensation gave up) sends that compensation again and
    /// goes on compensating, to CANCELLED; a running one sends the command it waits for again
    /// at once. Refused (exit 64) for a saga that has ended.
    Retry {
        /// The saga id.
        id: String,
        /// Why (kept in the saga's timeline).
        #[arg(long)]
        reason: String,
        /// Who asks.
        #[arg(long = "by", env = "USER", default_value = "sagashop-cli")]
        requested_by: String,
    },
    /// One instance and its timeline: every command, reply, timeout and compensation.
    Show {
        /// The saga id (for the order saga: the order id).
        id: String,
        /// Print the API's JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// The versions of the saga's definition instances still run on, with their steps: an
    /// instance runs to its end on the version it started with.
    Versions {
        /// Print the API's JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
}

/// `sagashop dlq` actions.
#[derive(Debug, Subcommand)]
pub(crate) enum DlqAction {
    /// One line per dead letter: where it came from, how often it was tried, why it failed.
    List,
    /// One dead letter in full: key, every header, the payload.
    Show {
        /// Its partition in the dead-letter topic.
        #[arg(long, default_value_t = 0)]
        partition: i32,
        /// Its offset in the dead-letter topic.
        #[arg(long)]
        offset: i64,
    },
    /// Publish dead letters again to the topic they came from (or `--to`), with their original
    /// key, bytes and headers; the consumer then handles them like new records.
    Replay {
        /// The partition of the one to replay.
        #[arg(long, default_value_t = 0, conflicts_with = "all")]
        partition: i32,
        /// The offset of the one to replay.
        #[arg(long, required_unless_present = "all", conflicts_with = "all")]
        offset: Option<i64>,
        /// Replay every dead letter in the topic.
        #[arg(long)]
        all: bool,
        /// Publish to this topic instead of the original one.
        #[arg(long)]
        to: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_malformed_kafka_property_is_a_usage_error() {
        let err =
            Cli::try_parse_from(["sagashop", "doctor", "--kafka-property", "nope"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    }
}

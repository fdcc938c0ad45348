//! `xtask`: sagashop's development tasks, run by the scripts in `scripts/`.
//!
//! `xtask bench` (what `scripts/bench` runs) measures the system on the real broker and writes
//! `target/bench/report.md` with PNG charts: the raw Kafka ceiling, the HTTP edge and end-to-end
//! saga rates and latencies at a ladder of offered rates (k6), and their ratios to the ceiling.
//!
//! `xtask chaos` (what `scripts/chaos` runs) is the fault suite: a broker restart, `kill -9` of
//! every service and duplicated messages under load, each checked for lost, doubled or
//! unannounced orders and for books that do not add up; it writes `target/chaos/report.md`.
//!
//! `xtask soak` (what `scripts/soak` runs) offers 10^6 orders to one `sagashop dev` with a
//! retention, sampling its memory and state, and times a restart halfway and at the end; it
//! writes `target/soak/report.md`.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool: its output is the table, its progress goes to stderr"
)]

mod bench;
mod chaos;
mod charts;
mod failover;
mod fleet;
mod names;
mod pods;
mod report;
mod scale;
mod soak;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// sagashop's development tasks.
#[derive(Debug, Parser)]
#[command(name = "xtask", about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Measure the ceiling, the edge and the end-to-end saga; write the report and charts.
    Bench(Box<bench::BenchArgs>),
    /// Inject faults under load and check that no order is lost or doubled.
    Chaos(Box<chaos::ChaosArgs>),
    /// Offer many orders to one system with a retention; sample memory, state and restarts.
    Soak(Box<soak::SoakArgs>),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return sagashop_kit::kafka::usage_exit(&e),
    };
    let result = match cli.task {
        Task::Bench(args) => bench::run(*args).await,
        Task::Chaos(args) => chaos::run(*args).await,
        Task::Soak(args) => soak::run(*args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

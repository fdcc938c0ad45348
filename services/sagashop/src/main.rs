//! `sagashop`: one binary for every sagashop service and tool.
//!
//! Kubernetes runs one service per container (`sagashop <service>`); developers run tools such
//! as `sagashop doctor` (is Kafka there?) and `sagashop schemas` (export the event contracts).
//! This file only parses, sets up logging, runs the command and maps its outcome to an exit code.

mod cli;
mod commands;
mod dlq;
mod saga;
mod system;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::Cli;

/// jemalloc, not glibc's malloc, for Rust and C alike. With glibc, tokio's worker threads each
/// fill a 64 MB arena, and memory freed on another thread than the one that allocated it is not
/// reused well: a soak at 400 orders/s grew ~1 KB per order while every store stayed the same
/// size. jemalloc keeps the process's memory at its live state (docs/benchmarks.md, "Bounded
/// state"). It also serves librdkafka's `malloc` (the `unprefixed_malloc_on_supported_platforms`
/// feature): left to glibc, the buffers of a restart's restore stayed in glibc's arenas and the
/// process kept about twice its steady memory after every restart.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return sagashop_kit::kafka::usage_exit(&e),
    };
    let _telemetry = match sagashop_kit::telemetry::init(cli.log_format, "sagashop") {
        Ok(guard) => guard,
        Err(e) => {
            #[allow(
                clippy::print_stderr,
                reason = "logging is not set up, stderr is all there is"
            )]
            {
                eprintln!("sagashop: {e}");
            }
            let code = match e {
                sagashop_kit::Error::InvalidConfig { .. } => cli::EX_USAGE,
                _ => cli::EX_SOFTWARE,
            };
            return ExitCode::from(code);
        }
    };
    let code = match commands::run(cli.command).await {
        Ok(()) => 0,
        Err(failure) => {
            tracing::error!("{:#}", failure.error);
            failure.code
        }
    };
    // Flush telemetry, then leave without waiting for librdkafka calls still blocked on a
    // broker that went away (the runtime would wait for them when dropped).
    drop(_telemetry);
    std::process::exit(i32::from(code))
}

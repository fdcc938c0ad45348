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
    /// Print the CustomResourceDefinitions (or write one file per CRD into `--out`).
    Crds {
        /// A directory to write `<plural>.<group>.yaml` files into.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
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

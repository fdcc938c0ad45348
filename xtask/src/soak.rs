//! `xtask soak`: bounded state, measured. Orders flow through one `sagashop dev` for a long time
//! (10^6 by default) while its memory and state are sampled; the system is restarted halfway
//! and at the end, and each restart's time to ready is measured. With a retention, memory and
//! restart time level off instead of growing with the orders taken.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::bench::{System, Tools, k6_run, metric, stop};

/// What `xtask soak` runs.
#[derive(Debug, clap::Args)]
pub(crate) struct SoakArgs {
    /// Kafka, the system and k6.
    #[command(flatten)]
    tools: Tools,
    /// Orders per second offered.
    #[arg(long, default_value_t = 400)]
    rate: u32,
    /// Orders to offer in all.
    #[arg(long, default_value_t = 1_000_000)]
    orders: u64,
    /// The system's `--retention`.
    #[arg(long, default_value = "1m")]
    retention: String,
    /// How long each load run lasts; memory and state are sampled after each.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    every: Duration,
    /// Where the report and logs go.
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
}

fn step(message: &str) {
    eprintln!("soak: {message}");
}

/// One sample, after a load run.
struct Sample {
    minutes: f64,
    orders: u64,
    accepted_per_s: f64,
    post_p99_ms: f64,
    rss_mb: f64,
    entries: i64,
}

/// One restart: after how many orders, and how long until ready again.
struct Restart {
    orders: u64,
    ready: Duration,
    rss_mb: f64,
    entries: i64,
}

/// The resident memory of `pid`, in MB, from `/proc/<pid>/status`.
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The keys every state store holds (`sagashop_store_entries`, summed).
async fn store_entries(address: &str) -> i64 {
    let Ok(response) = reqwest::get(format!("http://{address}/metrics")).await else {
        return -1;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("sagashop_store_entries{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<i64>().ok())
        .sum()
}

pub(crate) async fn run(args: SoakArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.out)?;
    args.tools.kafka.validate()?;
    args.tools.kafka.probe(Duration::from_secs(15)).await?;
    let system = System {
        sagashop: &args.tools.sagashop,
        kafka: &args.tools.kafka,
        out: &args.out,
    };
    let extra = ["--retention", args.retention.as_str()];
    let prefix = format!("{}.", sagashop_testkit::unique_name("soak"));
    step(&format!(
        "{} orders at {}/s through sagashop dev --retention {} (about {:.0} minutes)",
        args.orders,
        args.rate,
        args.retention,
        args.orders as f64 / f64::from(args.rate.max(1)) / 60.0
    ));
    let (mut dev, mut address) = system.start(&prefix, "soak", &extra).await?;
    let mut samples = vec![Sample {
        minutes: 0.0,
        orders: 0,
        accepted_per_s: 0.0,
        post_p99_ms: 0.0,
        rss_mb: rss_mb(dev.id()),
        entries: store_entries(&address).await,
    }];
    let mut restarts = Vec::new();
    let mut offered: u64 = 0;
    let load_started = Instant::now();
    while offered < args.orders {
        let left = args.orders - offered;
        let seconds = (left / u64::from(args.rate.max(1))).clamp(1, args.every.as_secs().max(1));
        offered += u64::from(args.rate) * seconds;
        let sample = load(&args, &address, dev.id(), seconds, offered, &load_started).await?;
        step(&format!(
            "{offered} of {} orders · {:.0} accepted/s · POST p99 {:.0} ms · RSS {:.0} MB · {} keys in the stores",
            args.orders, sample.accepted_per_s, sample.post_p99_ms, sample.rss_mb, sample.entries
        ));
        samples.push(sample);
        let halfway = offered >= args.orders / 2 && restarts.is_empty();
        if halfway || offered >= args.orders {
            let (child, at, restart) = restarted(&system, &prefix, &extra, dev, offered).await?;
            step(&format!(
                "restart after {offered} orders: ready in {:.1} s, RSS {:.0} MB, {} keys restored",
                restart.ready.as_secs_f64(),
                restart.rss_mb,
                restart.entries
            ));
            restarts.push(restart);
            (dev, address) = (child, at);
        }
    }
    stop(&mut dev);
    let report = report(&args, &samples, &restarts, started.elapsed());
    let path = args.out.join("report.md");
    std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
    #[allow(clippy::print_stdout, reason = "the report is the output")]
    {
        println!("{report}");
    }
    step(&format!("report: {}", path.display()));
    Ok(())
}

/// `seconds` of k6 load at `args.rate` against `address`, then a sample: `offered` orders so
/// far, the process's memory and its stores' keys.
async fn load(
    args: &SoakArgs,
    address: &str,
    pid: u32,
    seconds: u64,
    offered: u64,
    load_started: &Instant,
) -> anyhow::Result<Sample> {
    let summary = k6_run(
        &args.tools.k6,
        &args.out,
        address,
        args.rate,
        // One tag for every run: k6 names its customers after it, and a customer's
        // balance is state kept for good, so new names each run would grow it.
        "soak",
        Duration::from_secs(seconds),
        0,
    )?;
    let accepted = metric(&summary, "orders_accepted", "count");
    Ok(Sample {
        minutes: load_started.elapsed().as_secs_f64() / 60.0,
        orders: offered,
        accepted_per_s: accepted / seconds as f64,
        post_p99_ms: metric(&summary, "http_req_duration{name:place}", "p(99)"),
        rss_mb: rss_mb(pid),
        entries: store_entries(address).await,
    })
}

/// Stops `dev` gracefully, starts it again and times the restore.
async fn restarted(
    system: &System<'_>,
    prefix: &str,
    extra: &[&str],
    mut dev: Child,
    orders: u64,
) -> anyhow::Result<(Child, String, Restart)> {
    stop(&mut dev);
    let begun = Instant::now();
    let (child, address) = system.start(prefix, "soak", extra).await?;
    let ready = begun.elapsed();
    let restart = Restart {
        orders,
        ready,
        rss_mb: rss_mb(child.id()),
        entries: store_entries(&address).await,
    };
    Ok((child, address, restart))
}

fn report(args: &SoakArgs, samples: &[Sample], restarts: &[Restart], took: Duration) -> String {
    let mut md = String::new();
    // k6 inherits the environment: IDEMPOTENCY_KEYS=1 gives every order a key of its own.
    let keyed = std::env::var("IDEMPOTENCY_KEYS").is_ok_and(|v| v == "1");
    let _ = writeln!(
        md,
        "# Soak: {} orders at {}/s, `--retention {}`{}\n",
        args.orders,
        args.rate,
        args.retention,
        if keyed {
            ", every order with its own `Idempotency-Key`"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "One `sagashop dev` (release) on the real broker, k6 offering orders in runs of {:?}; \
         after each run the process's resident memory and the keys its state stores hold. \
         {:.0} minutes in all.\n",
        args.every,
        took.as_secs_f64() / 60.0
    );
    md.push_str(
        "| minutes | orders offered | accepted/s | POST p99 ms | RSS MB | keys in stores |\n",
    );
    md.push_str("| ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for s in samples {
        let _ = writeln!(
            md,
            "| {:.1} | {} | {:.0} | {:.0} | {:.0} | {} |",
            s.minutes, s.orders, s.accepted_per_s, s.post_p99_ms, s.rss_mb, s.entries
        );
    }
    md.push_str("\n| restart after orders | ready in s | RSS MB after | keys restored |\n");
    md.push_str("| ---: | ---: | ---: | ---: |\n");
    for r in restarts {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {:.0} | {} |",
            r.orders,
            r.ready.as_secs_f64(),
            r.rss_mb,
            r.entries
        );
    }
    md
}

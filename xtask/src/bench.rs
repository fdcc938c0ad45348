//! The measurements: ceiling, edge and end to end, each repeated and summarised as a median
//! with its range.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use sagashop_kit::KafkaConfig;
use sagashop_testkit::ceiling;
use sagashop_testkit::cpu::{cpu_time, local_broker};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use sagashop_topology::Service;

use crate::names::topic;
use crate::report::{Edge, EndToEnd, Figure, Report, RunFigures};

/// What `xtask bench` measures and where it writes.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Kafka, the system and k6.
    #[command(flatten)]
    tools: Tools,
    /// Offered order rates (orders/s), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "50,100,200,400,800")]
    rates: Vec<u32>,
    /// How long each rate is offered per run.
    #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Runs per measurement (medians are over these).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Records per ceiling run.
    #[arg(long, default_value_t = 50_000)]
    messages: usize,
    /// Where the report, charts and logs go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Record a CPU profile of `sagashop dev` (perf, cpu-clock) during the first run at the
    /// highest rate.
    #[arg(long)]
    profile: bool,
    /// After the ladder, a second `sagashop dev` replica joins (every service twice, sharing
    /// the partitions) and this rate is measured again; 0 skips it.
    #[arg(long, default_value_t = 200)]
    replica_rate: u32,
}

/// What a measurement runs: the broker, the system and the load generator.
#[derive(Debug, clap::Args)]
pub(crate) struct Tools {
    /// Kafka connection.
    #[command(flatten)]
    pub(crate) kafka: KafkaConfig,
    /// The release `sagashop` binary to run as `sagashop dev`.
    #[arg(long, default_value = "target/release/sagashop")]
    pub(crate) sagashop: PathBuf,
    /// The k6 binary.
    #[arg(long, default_value = ".local/bin/k6")]
    pub(crate) k6: PathBuf,
}

fn step(message: &str) {
    eprintln!("bench: {message}");
}

/// Starts `sagashop dev` on a free port with its own topic prefix; waits until it is ready.
async fn start_dev(
    args: &BenchArgs,
    prefix: &str,
    instance: &str,
) -> anyhow::Result<(Child, String)> {
    let system = System {
        sagashop: &args.tools.sagashop,
        kafka: &args.tools.kafka,
        out: &args.out,
    };
    system.start(prefix, instance, &[]).await
}

/// Where `sagashop dev` comes from, which Kafka it uses and where its log goes.
pub(crate) struct System<'a> {
    pub(crate) sagashop: &'a Path,
    pub(crate) kafka: &'a KafkaConfig,
    pub(crate) out: &'a Path,
}

impl System<'_> {
    /// Starts `sagashop dev` (with `extra` arguments) on a free port with its own topic prefix;
    /// waits until it is ready; returns the process and its address.
    pub(crate) async fn start(
        &self,
        prefix: &str,
        instance: &str,
        extra: &[&str],
    ) -> anyhow::Result<(Child, String)> {
        start_system(self, prefix, instance, extra).await
    }
}

async fn start_system(
    system: &System<'_>,
    prefix: &str,
    instance: &str,
    extra: &[&str],
) -> anyhow::Result<(Child, String)> {
    let port = crate::fleet::free_port()?;
    let out = system.out;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join(format!("sagashop-dev-{instance}.log")))?;
    let child = Command::new(system.sagashop)
        .args(["dev", "--topic-prefix", prefix, "--summary-every", "0s"])
        .args(["--instance", instance])
        .args(["--http", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("KAFKA_BOOTSTRAP_SERVERS", &system.kafka.bootstrap_servers)
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with `cargo build --release -p sagashop`)",
                system.sagashop.display()
            )
        })?;
    let address = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(120);
    while http_status(&address, "/readyz").await != Some(200) {
        if Instant::now() > deadline {
            bail!(
                "sagashop dev was not ready in 120 s; see {}/sagashop-dev-{instance}.log",
                out.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((child, address))
}

/// The status code of `GET path`, or `None` when nothing answers.
async fn http_status(address: &str, path: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Offsets (records written plus transaction markers) of every topic whose name starts with
/// `prefix`, by topic name without the prefix.
async fn offsets(
    kafka: &KafkaConfig,
    prefix: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, i64>> {
    let consumer: BaseConsumer = kafka.consumer("bench", "sagashop-bench").create()?;
    let prefix = prefix.to_owned();
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(10);
        let metadata = consumer.fetch_metadata(None, timeout)?;
        let mut by_topic = std::collections::BTreeMap::new();
        for topic in metadata.topics() {
            let Some(name) = topic.name().strip_prefix(&prefix) else {
                continue;
            };
            let mut total = 0;
            for partition in topic.partitions() {
                let (low, high) =
                    consumer.fetch_watermarks(topic.name(), partition.id(), timeout)?;
                total += high - low;
            }
            by_topic.insert(name.to_owned(), total);
        }
        Ok(by_topic)
    })
    .await?
}

/// One k6 load run; its summary JSON.
fn k6_load(
    args: &BenchArgs,
    base: &str,
    rate: u32,
    tag: &str,
    duration: Duration,
) -> anyhow::Result<Value> {
    k6_run(&args.tools.k6, &args.out, base, rate, tag, duration, 60)
}

/// One run of `k6/load.js` at `rate` for `duration`, waiting up to `drain` seconds for the
/// sagas afterwards; its summary JSON (written to `out`).
pub(crate) fn k6_run(
    k6: &Path,
    out: &Path,
    base: &str,
    rate: u32,
    tag: &str,
    duration: Duration,
    drain: u32,
) -> anyhow::Result<Value> {
    let summary = out.join(format!("k6-{tag}.json"));
    let output = Command::new(k6)
        .args([
            "run",
            "--quiet",
            "--no-color",
            "--no-usage-report",
            "k6/load.js",
        ])
        .env("BASE_URL", format!("http://{base}"))
        .env("RATE", rate.to_string())
        .env("DURATION", format!("{}s", duration.as_secs()))
        .env("VUS", (rate / 2).max(10).to_string())
        .env("MAX_VUS", (rate * 4).max(50).to_string())
        .env("DRAIN", drain.to_string())
        // Measure, do not gate: the report says what the thresholds would.
        .env("P95_MS", "1000000")
        .env("P99_MS", "1000000")
        .env("RUN_TAG", tag)
        .env("SUMMARY_JSON", &summary)
        .output()
        .with_context(|| format!("running {} (install it with `scripts/tools`)", k6.display()))?;
    // Exit code 99 means a threshold failed (an error rate over 1 %): still a measurement.
    if !output.status.success() && output.status.code() != Some(99) {
        bail!(
            "k6 failed at {rate}/s: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = std::fs::read_to_string(&summary)
        .with_context(|| format!("reading {}", summary.display()))?;
    Ok(serde_json::from_str(&text)?)
}

pub(crate) fn metric(summary: &Value, name: &str, field: &str) -> f64 {
    summary["metrics"][name]["values"][field]
        .as_f64()
        .unwrap_or(0.0)
}

fn edge_figures(summary: &Value, duration: Duration) -> Edge {
    let accepted = metric(summary, "orders_accepted", "count");
    let place = "http_req_duration{name:place}";
    Edge {
        accepted_per_s: accepted / duration.as_secs_f64(),
        errors: metric(summary, "orders_rejected", "count"),
        p50_ms: metric(summary, place, "med"),
        p95_ms: metric(summary, place, "p(95)"),
        p99_ms: metric(summary, place, "p(99)"),
        accepted,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The sagas of one run (customers tagged `tag`), from the outcome topic: how many finished,
/// how fast, and the time from `placedAt` (the 202) to `completedAt`/`cancelledAt`.
async fn end_to_end(kafka: &KafkaConfig, outcome: &str, tag: &str) -> anyhow::Result<EndToEnd> {
    let records =
        sagashop_kit::reader::read_to_end(kafka, "bench", outcome, Duration::from_secs(60)).await?;
    let prefix = format!("{tag}-");
    let time =
        |v: &Value, field: &str| -> Option<DateTime<Utc>> { v[field].as_str()?.parse().ok() };
    let mut latencies = Vec::new();
    let (mut first, mut last): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = (None, None);
    let mut completed = 0.0;
    for record in records {
        let Some(payload) = record.payload else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<Value>(&payload) else {
            continue;
        };
        if !v["customerId"]
            .as_str()
            .is_some_and(|c| c.starts_with(&prefix))
        {
            continue;
        }
        let Some(placed) = time(&v, "placedAt") else {
            continue;
        };
        let Some(done) = time(&v, "completedAt").or_else(|| time(&v, "cancelledAt")) else {
            continue; // a progress event, not an outcome
        };
        if v.get("completedAt").is_some() {
            completed += 1.0;
        }
        latencies.push((done - placed).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        first = Some(first.map_or(placed, |f| f.min(placed)));
        last = Some(last.map_or(done, |l| l.max(done)));
    }
    latencies.sort_by(f64::total_cmp);
    let span = match (first, last) {
        (Some(f), Some(l)) => (l - f).num_milliseconds().max(1) as f64 / 1000.0,
        _ => 1.0,
    };
    Ok(EndToEnd {
        finished: latencies.len() as f64,
        completed,
        completed_per_s: completed / span,
        p50_ms: percentile(&latencies, 50.0),
        p95_ms: percentile(&latencies, 95.0),
        p99_ms: percentile(&latencies, 99.0),
    })
}

fn perf_record(pid: u32, seconds: u64, out: &Path) -> Option<Child> {
    Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "499",
            "-g",
            "-p",
            &pid.to_string(),
            "-o",
        ])
        .arg(out.join("perf.data"))
        .args(["--", "sleep", &seconds.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            step(&format!(
                "no profile: perf did not start ({e}); apt-get install linux-perf"
            ));
        })
        .ok()
}

/// The hottest functions of the recorded profile (self time), as text.
fn perf_top(out: &Path) -> Option<String> {
    let report = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--percent-limit",
            "1.5",
            "-g",
            "none",
            "-i",
        ])
        .arg(out.join("perf.data"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&report.stdout);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .take(25)
        .collect();
    Some(lines.join("\n"))
}

/// Runs every measurement and writes the report.
/// SIGTERM, and wait for the exit.
pub(crate) fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// A second replica of everything joins the first (same topics and groups, its own
/// transactional ids); the replica rate is measured again, with the orders entering through
/// the first edge and every service's partitions shared by the two processes. CPU is both
/// processes'.
async fn two_replicas(
    args: &BenchArgs,
    prefix: &str,
    address: &str,
    first: &Child,
    outcome_topic: &str,
) -> anyhow::Result<Vec<RunFigures>> {
    step("a second replica of every service joins (sagashop dev --instance b)");
    let (mut second, _) = start_dev(args, prefix, "b").await?;
    // Let the groups settle: every member restored its partitions.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut runs = Vec::new();
    for run in 0..args.runs {
        let tag = format!("two{}n{run}", args.replica_rate);
        step(&format!(
            "two replicas: {} orders/s for {:?}, run {} of {}",
            args.replica_rate,
            args.duration,
            run + 1,
            args.runs
        ));
        let cpu = || {
            cpu_time(first.id())
                .zip(cpu_time(second.id()))
                .map(|(a, b)| a + b)
        };
        let cpu_before = cpu();
        let summary = k6_load(args, address, args.replica_rate, &tag, args.duration)?;
        let used = cpu().zip(cpu_before).map(|(a, b)| a.saturating_sub(b));
        let edge = edge_figures(&summary, args.duration);
        let e2e = end_to_end(&args.tools.kafka, outcome_topic, &tag).await?;
        runs.push(RunFigures {
            rate: args.replica_rate,
            cpu_ms_per_order: used
                .map_or(0.0, |c| c.as_secs_f64() * 1000.0 / edge.accepted.max(1.0)),
            broker_cpu_ms_per_order: None,
            edge,
            e2e,
        });
    }
    stop(&mut second);
    Ok(runs)
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    std::fs::create_dir_all(&args.out)?;
    args.tools.kafka.validate()?;
    let info = args.tools.kafka.probe(Duration::from_secs(15)).await?;
    step(&format!(
        "Kafka at {} ({} broker)",
        args.tools.kafka.bootstrap_servers,
        info.brokers.len()
    ));

    step(&format!(
        "ceiling: raw rdkafka produce and consume, {} records x {} runs",
        args.messages, args.runs
    ));
    let (produce, consume, bytes) = ceiling(&args).await;

    let prefix = format!("{}.", sagashop_testkit::unique_name("bench"));
    step("starting sagashop dev (release build)");
    let (mut dev, address) = start_dev(&args, &prefix, "a").await?;
    let outcome_topic = topic(&prefix, Service::Order, "outcome");
    let before = offsets(&args.tools.kafka, &prefix).await?;
    step("warm-up: 20 orders/s for 3 s");
    let warm = k6_load(&args, &address, 20, "warmup", Duration::from_secs(3));
    let mut accepted_total = warm
        .as_ref()
        .map(|s| metric(s, "orders_accepted", "count"))
        .unwrap_or(0.0);
    warm?;

    let runs = ladder(&args, &dev, &address, &outcome_topic, &mut accepted_total).await?;
    let after = offsets(&args.tools.kafka, &prefix).await?;
    let two_replicas = if args.replica_rate > 0 {
        two_replicas(&args, &prefix, &address, &dev, &outcome_topic).await?
    } else {
        Vec::new()
    };
    stop(&mut dev);

    let profile = if args.profile {
        perf_top(&args.out)
    } else {
        None
    };
    let operator = std::fs::read_to_string(args.out.join("operator.txt")).ok();
    let report = Report {
        message_bytes: bytes,
        produce: Figure::of(&produce),
        consume: Figure::of(&consume),
        runs,
        rates: args.rates.clone(),
        duration: args.duration,
        offsets_per_order: after
            .iter()
            .map(|(topic, n)| {
                (
                    topic.clone(),
                    (n - before.get(topic).unwrap_or(&0)) as f64 / accepted_total.max(1.0),
                )
            })
            .filter(|(_, per_order)| *per_order > 0.0)
            .collect(),
        two_replicas,
        operator,
        profile,
        took: started.elapsed(),
    };
    report.write(&args.out)?;
    println!("{}", report.table());
    step(&format!(
        "report: {}/report.md with edge.png, throughput.png, e2e.png ({:.0?} in all)",
        args.out.display(),
        started.elapsed()
    ));
    Ok(())
}

/// Raw rdkafka produce and consume rates (records/s) over `args.runs` runs, and the record
/// size: the ceiling the system's figures are read against.
async fn ceiling(args: &BenchArgs) -> (Vec<f64>, Vec<f64>, usize) {
    let mut produce = Vec::new();
    let mut consume = Vec::new();
    let mut bytes = 0;
    for _ in 0..args.runs {
        let topic = ceiling::topic(&args.tools.kafka, "bench-ceiling").await;
        let (rate, size) = ceiling::raw_produce(&args.tools.kafka, &topic, args.messages).await;
        produce.push(rate);
        consume.push(ceiling::raw_consume(&args.tools.kafka, &topic, args.messages).await);
        bytes = size;
    }

    (produce, consume, bytes)
}

/// Every rate of the ladder, `args.runs` times each, against the running system: the figures
/// of each run. Adds the orders accepted to `accepted_total`.
async fn ladder(
    args: &BenchArgs,
    dev: &std::process::Child,
    address: &str,
    outcome_topic: &str,
    accepted_total: &mut f64,
) -> anyhow::Result<Vec<RunFigures>> {
    let mut runs: Vec<RunFigures> = Vec::new();
    let top = args.rates.iter().copied().max().unwrap_or(0);
    for &rate in &args.rates {
        for run in 0..args.runs {
            let tag = format!("r{rate}n{run}");
            step(&format!(
                "{rate} orders/s for {:?}, run {} of {}",
                args.duration,
                run + 1,
                args.runs
            ));
            let profiling = (args.profile && rate == top && run == 0)
                .then(|| perf_record(dev.id(), args.duration.as_secs(), &args.out))
                .flatten();
            let broker = local_broker();
            let cpu_before = cpu_time(dev.id());
            let broker_before = broker.and_then(cpu_time);
            let summary = k6_load(args, address, rate, &tag, args.duration)?;
            let cpu = cpu_time(dev.id())
                .zip(cpu_before)
                .map(|(a, b)| a.saturating_sub(b));
            let broker_cpu = broker
                .and_then(cpu_time)
                .zip(broker_before)
                .map(|(a, b)| a.saturating_sub(b));
            if let Some(mut perf) = profiling {
                let _ = perf.wait();
            }
            let edge = edge_figures(&summary, args.duration);
            *accepted_total += edge.accepted;
            let e2e = end_to_end(&args.tools.kafka, outcome_topic, &tag).await?;
            let per_order = |c: Duration| c.as_secs_f64() * 1000.0 / edge.accepted.max(1.0);
            runs.push(RunFigures {
                rate,
                edge,
                e2e,
                cpu_ms_per_order: cpu.map_or(0.0, per_order),
                broker_cpu_ms_per_order: broker_cpu.map(per_order),
            });
        }
    }
    Ok(runs)
}

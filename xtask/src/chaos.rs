//! `xtask chaos`: the fault suite. Each scenario runs a sagashop system on a broker of its own,
//! offers orders continuously, injects one kind of fault, waits for every saga to finish and then
//! checks the promises of docs/reliability.md against what Kafka holds:
//! - every `202` order was written and finished exactly once (lost = 0, finished twice = 0);
//! - a `503` wrote nothing (Kafka holds no order the clients were not given);
//! - stock and balances equal their opening values minus exactly the completed orders.
//!
//! It prints one table row per scenario and writes `report.md`; any broken promise makes the run
//! fail and names it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sagashop_kit::reader::read_to_end;
use sagashop_kit::{Outgoing, Publisher};
use sagashop_topology::Service;

use crate::names::{participants, topic};

use crate::fleet::{
    Answer, Attempt, Broker, Ledger, Placed, Proc, client, done, latest, offer, order_body, post,
    system_args,
};

/// The faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Scenario {
    /// Stop the broker under load, start it again.
    BrokerRestart,
    /// Stop the broker under load for minutes (`--long-down`), start it again: every service
    /// waits it out by itself.
    LongOutage,
    /// A cluster of three brokers, every topic with three replicas and two in sync: `kill -9`
    /// of the partition leader of most saga partitions, of the orchestrator's transaction
    /// coordinator and of its group coordinator, each restarted before the next, then a
    /// rolling restart of all three.
    BrokerFailover,
    /// `kill -9` each service in turn under load (every service its own process), restart it.
    ProcessKills,
    /// Duplicate commands and replies, retried requests with one `Idempotency-Key`, and the
    /// participants' offsets reset to the beginning.
    Duplicates,
    /// Every service as 1 → 3 → 2 → 1 replicas (separate processes) under load, with a
    /// `kill -9` of replicas in the middle and one `Idempotency-Key` sent to two edges at once.
    Scale,
    /// The chart in pods on the local node (scripts/kube): `kubectl delete pod` of each service,
    /// then the participants scaled 1 → 3 → 1, under load through the order Service. Needs the
    /// node and the images (scripts/image); not in the default list.
    PodFaults,
    /// The chart in pods on the local node while the suite's broker is away for `--long-down`
    /// under load: the pods heal by themselves (or their liveness probe restarts them) and
    /// every order finishes. Needs the node and the images; not in the default list.
    PodOutage,
}

impl Scenario {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::BrokerRestart => "broker-restart",
            Self::LongOutage => "long-outage",
            Self::BrokerFailover => "broker-failover",
            Self::ProcessKills => "process-kills",
            Self::Duplicates => "duplicates",
            Self::Scale => "scale",
            Self::PodFaults => "pod-faults",
            Self::PodOutage => "pod-outage",
        }
    }
}

/// What `xtask chaos` runs.
#[derive(Debug, clap::Args)]
pub(crate) struct ChaosArgs {
    /// The scenarios to run, comma-separated.
    #[arg(
        long = "scenario",
        value_enum,
        value_delimiter = ',',
        default_value = "broker-restart,long-outage,broker-failover,process-kills,duplicates,scale"
    )]
    pub(crate) scenarios: Vec<Scenario>,
    /// How long orders are offered in each scenario.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Orders offered per second.
    #[arg(long, default_value_t = 40)]
    pub(crate) rate: u32,
    /// How long the broker stays down in `broker-restart` (longer than the edge's 1 s queue
    /// timeout, so some orders are refused).
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    broker_down: Duration,
    /// How long the broker stays down in `long-outage` and `pod-outage`: many transaction and session
    /// timeouts, as a node upgrade or a network partition can take.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub(crate) long_down: Duration,
    /// Stop the broker with SIGKILL (no clean shutdown) instead of SIGTERM.
    #[arg(long)]
    pub(crate) kill_broker: bool,
    /// The faults of `broker-failover`, in order (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "leader,transaction-coordinator,group-coordinator,rolling"
    )]
    pub(crate) failover: Vec<crate::failover::Fault>,
    /// How long sagas may take to finish after the load ends.
    #[arg(long, default_value = "180s", value_parser = humantime::parse_duration)]
    pub(crate) settle: Duration,
    /// The `sagashop` binary.
    #[arg(long, default_value = "target/debug/sagashop")]
    pub(crate) sagashop: PathBuf,
    /// Where the report, the broker's state and every process log go.
    #[arg(long, default_value = "target/chaos")]
    out: PathBuf,
}

/// One scenario's figures.
#[derive(Debug, Default)]
pub(crate) struct Row {
    pub(crate) scenario: &'static str,
    pub(crate) injection: String,
    pub(crate) offered: usize,
    pub(crate) accepted: usize,
    pub(crate) refused: usize,
    pub(crate) no_answer: usize,
    pub(crate) other: usize,
    pub(crate) completed: usize,
    pub(crate) cancelled: usize,
    /// Accepted orders that Kafka does not hold, or that never finished.
    pub(crate) lost: usize,
    /// Orders in Kafka that no client was told about (must be 0 where every request got an
    /// HTTP answer).
    pub(crate) unannounced: usize,
    pub(crate) finished_twice: usize,
    /// Requests answered `503` whose idempotency record Kafka holds: a 503 that wrote.
    pub(crate) wrote_on_503: usize,
    /// Order ids given in a `202` to more than one request.
    pub(crate) shared_ids: usize,
    /// Accepted orders whose `OrderPlaced` is not what the client sent.
    pub(crate) altered: usize,
    /// Orders with more than one `OrderPlaced` record, or records that differ.
    pub(crate) written_twice: usize,
    /// Orders whose saga started more than once.
    pub(crate) started_twice: usize,
    /// Records the scenario left in the dead-letter topics.
    pub(crate) dead_letters: usize,
    pub(crate) books: Vec<String>,
    pub(crate) notes: Vec<String>,
    pub(crate) elapsed: Duration,
}

pub(crate) fn step(message: &str) {
    eprintln!(
        "chaos: {} {message}",
        chrono::Utc::now().format("%H:%M:%S%.3f")
    );
}

pub(crate) async fn run(args: ChaosArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.sagashop.exists(),
        "{} is missing: build it with `cargo build -p sagashop`",
        args.sagashop.display()
    );
    let root = std::env::current_dir()?;
    std::fs::create_dir_all(&args.out)?;
    let out = args.out.canonicalize()?;
    step(&format!(
        "starting a broker of our own in {}",
        out.join("kafka").display()
    ));
    // Pods reach the host's broker on the node's bridge address (scripts/kube).
    let pods = args
        .scenarios
        .iter()
        .any(|s| matches!(s, Scenario::PodFaults | Scenario::PodOutage))
        .then_some("198.18.0.1");
    let broker = Broker::up(&root, &out.join("kafka"), pods)?;
    let mut rows = Vec::new();
    for (n, scenario) in args.scenarios.iter().enumerate() {
        let dir = out.join(scenario.name());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let prefix = format!("chaos{n}-{}.", std::process::id());
        step(&format!(
            "{}: start (logs in {})",
            scenario.name(),
            dir.display()
        ));
        let started = Instant::now();
        let mut row = match scenario {
            Scenario::BrokerRestart => {
                let outage = (Scenario::BrokerRestart, args.broker_down);
                broker_restart(&args, &broker, &dir, &prefix, outage).await
            }
            Scenario::LongOutage => {
                let outage = (Scenario::LongOutage, args.long_down);
                broker_restart(&args, &broker, &dir, &prefix, outage).await
            }
            Scenario::BrokerFailover => crate::failover::run(&args, &root, &dir, &prefix).await,
            Scenario::ProcessKills => process_kills(&args, &broker, &dir, &prefix).await,
            Scenario::Duplicates => duplicates(&args, &broker, &dir, &prefix).await,
            Scenario::Scale => crate::scale::run(&args, &broker, &dir, &prefix).await,
            Scenario::PodFaults => crate::pods::run(&args, &broker, &dir, &prefix).await,
            Scenario::PodOutage => crate::pods::outage(&args, &broker, &dir, &prefix).await,
        }
        .with_context(|| format!("scenario {}", scenario.name()))?;
        row.elapsed = started.elapsed();
        step(&format!(
            "{}: done in {:.0?}: {}",
            scenario.name(),
            row.elapsed,
            verdict(&row)
        ));
        rows.push(row);
    }
    drop(broker);
    let report = report(&args, &rows);
    std::fs::write(out.join("report.md"), &report)?;
    println!("{report}");
    let broken: Vec<String> = rows
        .iter()
        .filter(|r| !broken(r).is_empty())
        .map(|r| format!("{}: {}", r.scenario, broken(r).join("; ")))
        .collect();
    if !broken.is_empty() {
        bail!("promises broken:\n  {}", broken.join("\n  "));
    }
    step(&format!(
        "every promise held; report: {}",
        out.join("report.md").display()
    ));
    Ok(())
}

/// The promises a row breaks.
fn broken(row: &Row) -> Vec<String> {
    let mut broken = Vec::new();
    if row.lost > 0 {
        broken.push(format!("{} accepted orders lost or unfinished", row.lost));
    }
    if row.finished_twice > 0 {
        broken.push(format!("{} orders finished twice", row.finished_twice));
    }
    if row.other > 0 {
        broken.push(format!(
            "{} answers other than 202/503/no answer",
            row.other
        ));
    }
    // Kafka holds exactly the orders the clients were given, and those whose request got no
    // answer (each request's own key tells which those are).
    if row.unannounced > 0 {
        broken.push(format!(
            "{} orders written that no client was given",
            row.unannounced
        ));
    }
    let counts = [
        (row.wrote_on_503, "requests answered 503 wrote an order"),
        (
            row.shared_ids,
            "order ids were given to more than one request",
        ),
        (
            row.altered,
            "orders were written with other contents than the client sent",
        ),
        (row.written_twice, "orders were written more than once"),
        (row.started_twice, "sagas started more than once"),
        (row.dead_letters, "records were dead-lettered"),
    ];
    for (n, what) in counts {
        if n > 0 {
            broken.push(format!("{n} {what}"));
        }
    }
    broken.extend(row.books.iter().cloned());
    broken.extend(
        row.notes
            .iter()
            .filter(|n| n.starts_with("BROKEN"))
            .cloned(),
    );
    broken
}

fn verdict(row: &Row) -> String {
    let broken = broken(row);
    if broken.is_empty() {
        format!(
            "offered {}, accepted {}, refused {}, completed {}, cancelled {}, lost 0",
            row.offered, row.accepted, row.refused, row.completed, row.cancelled
        )
    } else {
        format!("BROKEN: {}", broken.join("; "))
    }
}

/// Counts the answers and checks them, request by request, against the ledger; `two_edges`
/// are ids two edges were asked for at once on purpose (each may write it once).
fn account(row: &mut Row, attempts: &[Attempt], ledger: &Ledger, two_edges: &[String]) {
    row.offered += attempts.len();
    let mut accepted: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    // Orders whose request got no answer: Kafka may hold them, unannounced but not broken.
    let mut unanswered = std::collections::HashSet::new();
    for attempt in attempts {
        let written = attempt.key_record().and_then(|k| ledger.keys.get(&k));
        match &attempt.answer {
            Answer::Accepted(id) => {
                *accepted.entry(id.clone()).or_default() += 1;
                let sent = attempt
                    .sent
                    .as_ref()
                    .map(|(body, _)| Placed::of_request(body));
                if let (Some(sent), Some(held)) = (sent, ledger.placed.get(id))
                    && sent != *held
                {
                    row.altered += 1;
                }
            }
            Answer::Unavailable => {
                row.refused += 1;
                if written.is_some() {
                    row.wrote_on_503 += 1;
                }
            }
            Answer::Silent(why) => {
                row.no_answer += 1;
                unanswered.extend(written.cloned());
                if row.no_answer == 1 {
                    row.notes
                        .push(format!("the first request without an answer: {why}"));
                }
            }
            Answer::Other(status, body) => {
                row.other += 1;
                if row.other <= 3 {
                    row.notes.push(format!("answer {status}: {body}"));
                }
            }
        }
    }
    row.accepted += accepted.len();
    row.shared_ids += accepted.values().filter(|n| **n > 1).count();
    row.lost += accepted
        .keys()
        .filter(|id| !ledger.placed.contains_key(*id) || !ledger.outcomes.contains_key(*id))
        .count();
    row.unannounced += ledger
        .placed
        .keys()
        .filter(|id| !accepted.contains_key(*id) && !unanswered.contains(*id))
        .count();
    row.finished_twice = ledger.finished_twice();
    row.written_twice = ledger.written_twice(two_edges) + ledger.rewritten;
    row.started_twice = ledger.started_twice();
    (row.completed, row.cancelled) = ledger.counts();
}

/// Waits for every saga to finish, then fills in the row's figures and books.
pub(crate) async fn conclude(
    args: &ChaosArgs,
    broker: &Broker,
    prefix: &str,
    mut row: Row,
    attempts: &[Attempt],
    two_edges: &[String],
) -> anyhow::Result<(Row, Ledger)> {
    step(&format!(
        "{}: waiting for every saga to finish",
        row.scenario
    ));
    let kafka = broker.config();
    let ledger = Ledger::settle(&kafka, prefix, args.settle).await?;
    account(&mut row, attempts, &ledger, two_edges);
    row.books = ledger.books(&kafka, prefix).await?;
    row.dead_letters = dead_letters(&kafka, prefix).await?;
    Ok((row, ledger))
}

/// Every record in the system's dead-letter topics.
pub(crate) async fn dead_letters(
    kafka: &sagashop_kit::KafkaConfig,
    prefix: &str,
) -> anyhow::Result<usize> {
    let mut n = 0;
    for topic in crate::names::dead_letter_topics(prefix) {
        n += read_to_end(kafka, "chaos", &topic, Duration::from_secs(60))
            .await?
            .len();
    }
    Ok(n)
}

/// The edge gives up on Kafka after 1 s instead of its default 2 s: an outage shows as `503`s
/// sooner.
const QUICK_503: &[&str] = &["--queue-timeout", "1s"];

/// `sagashop dev` for one scenario, with `extra` arguments.
pub(crate) async fn dev(
    args: &ChaosArgs,
    broker: &Broker,
    dir: &std::path::Path,
    prefix: &str,
    extra: &[&str],
) -> anyhow::Result<Proc> {
    let mut command = vec!["dev".to_owned()];
    command.extend(system_args(prefix, extra));
    let mut proc = Proc::start(
        &args.sagashop,
        dir,
        "sagashop-dev",
        command,
        &broker.bootstrap,
    )?;
    proc.ready(Duration::from_secs(120)).await?;
    Ok(proc)
}

/// `scenario`: the broker stopped for `down` under load, then started; the system heals by
/// itself.
async fn broker_restart(
    args: &ChaosArgs,
    broker: &Broker,
    dir: &std::path::Path,
    prefix: &str,
    (scenario, down): (Scenario, Duration),
) -> anyhow::Result<Row> {
    let name = scenario.name();
    let mut dev = dev(args, broker, dir, prefix, QUICK_503).await?;
    let base = dev.address.clone();
    let load_started = Instant::now();
    // The load goes on for a while after the broker is back, however long its restart takes.
    let (recovered, load) = crate::fleet::steady_load(base, args.rate, args.duration);
    tokio::time::sleep(args.duration / 4).await;
    let how = if args.kill_broker {
        "SIGKILL"
    } else {
        "SIGTERM"
    };
    step(&format!("{name}: stopping the broker ({how}) for {down:?}"));
    broker.stop(args.kill_broker)?;
    let stopped_at = load_started.elapsed();
    tokio::time::sleep(down).await;
    broker.start()?;
    let back_at = load_started.elapsed();
    let back_wall = chrono::Utc::now().timestamp_millis();
    step(&format!("{name}: broker back; load continues"));
    tokio::time::sleep(RECOVERY + args.duration / 4).await;
    recovered.store(true, Ordering::SeqCst);
    let attempts = load.await?;
    let row = Row {
        scenario: name,
        injection: format!(
            "`scripts/kafka stop{}` for {down:?} under {} orders/s, then `start`",
            if args.kill_broker { " --kill" } else { "" },
            args.rate
        ),
        ..Row::default()
    };
    let (mut row, ledger) = conclude(args, broker, prefix, row, &attempts, &[]).await?;
    recovery(&mut row, &attempts, stopped_at, back_at);
    row.notes.push(first_outcome_note(&ledger, back_wall));
    if let Some(status) = dev.exited() {
        row.notes.push(format!(
            "BROKEN: sagashop dev exited by itself during the outage ({status}); nothing may need a restart by hand"
        ));
    }
    if row.refused == 0 {
        row.notes.push(
            "no request was refused: the outage was shorter than the delivery timeout".into(),
        );
    }
    dev.terminate()?;
    Ok(row)
}

/// The note on when the first saga finished after the broker came back at `since` (Unix
/// milliseconds); BROKEN when none did.
pub(crate) fn first_outcome_note(ledger: &crate::fleet::Ledger, since: i64) -> String {
    match ledger.outcome_times.iter().filter(|t| **t >= since).min() {
        Some(first) => {
            let after = Duration::from_millis(u64::try_from(first - since).unwrap_or(0));
            format!("first saga finished {after:.1?} after the broker was back")
        }
        None => "BROKEN: no saga finished after the broker was back".to_owned(),
    }
}

/// The edge recovers by itself: once the broker is back, orders are accepted again, and
/// every order sent from [`RECOVERY`] after that is. Notes when the broker stopped and came
/// back and the first 202 after; BROKEN if the edge did not recover.
fn recovery(row: &mut Row, attempts: &[Attempt], stopped_at: Duration, back_at: Duration) {
    let first_after = attempts
        .iter()
        .find(|a| a.at > back_at && matches!(a.answer, Answer::Accepted(_)))
        .map(|a| a.at - back_at);
    let tail: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.at > back_at + RECOVERY)
        .collect();
    let tail_accepted = tail
        .iter()
        .filter(|a| matches!(a.answer, Answer::Accepted(_)))
        .count();
    row.notes.push(format!(
        "broker stopped {:.1?} into the load and answering again at {:.1?}; first 202 after it came back: {}",
        stopped_at,
        back_at,
        first_after.map_or("none".to_owned(), |d| format!("{d:.1?} later"))
    ));
    if tail.is_empty() || tail_accepted < tail.len() {
        row.notes.push(format!(
            "BROKEN: the edge did not recover: {tail_accepted} of {} orders sent from {RECOVERY:?} after the broker was back were accepted",
            tail.len()
        ));
    }
}

/// How long after the broker answers again the edge may take to accept every order.
const RECOVERY: Duration = Duration::from_secs(5);

/// Every service of sagashop, in the order they are killed: the topology's order (the edge
/// last).
pub(crate) fn services() -> [&'static str; Service::ALL.len()] {
    Service::ALL.map(Service::name)
}

/// Every service in the order the suite starts them: the edge first, since it creates the
/// topics, then the others in the topology's order.
pub(crate) fn edge_first() -> impl Iterator<Item = &'static str> {
    let edge = Service::Order.name();
    std::iter::once(edge).chain(services().into_iter().filter(move |s| *s != edge))
}

/// Every service as its own process, each ready: the edge first, creating the topics.
async fn start_each(
    args: &ChaosArgs,
    broker: &Broker,
    dir: &std::path::Path,
    prefix: &str,
) -> anyhow::Result<Vec<Proc>> {
    let mut procs = Vec::new();
    for service in edge_first() {
        let mut command = vec![service.to_owned()];
        command.extend(system_args(
            prefix,
            &["--instance", &format!("{service}-0")],
        ));
        if service == Service::Order.name() {
            command.push("--create-topics".into());
        }
        let mut proc = Proc::start(&args.sagashop, dir, service, command, &broker.bootstrap)?;
        proc.ready(Duration::from_secs(120)).await?;
        procs.push(proc);
    }
    Ok(procs)
}

async fn process_kills(
    args: &ChaosArgs,
    broker: &Broker,
    dir: &std::path::Path,
    prefix: &str,
) -> anyhow::Result<Row> {
    let mut procs = start_each(args, broker, dir, prefix).await?;
    let edge = Arc::new(Mutex::new(procs[0].address.clone()));
    let base = {
        let edge = Arc::clone(&edge);
        Arc::new(move || edge.lock().map(|a| a.clone()).unwrap_or_default())
    };
    // The load runs until every service has been killed and is back, and a little longer.
    let kills_done = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(offer(
        base,
        args.rate,
        args.duration,
        Arc::clone(&kills_done),
    ));
    let gap = args.duration / (services().len() as u32 + 1);
    let mut notes = Vec::new();
    for service in services() {
        tokio::time::sleep(gap).await;
        let proc = procs
            .iter_mut()
            .find(|p| p.name == service)
            .context("a service is missing")?;
        proc.kill9()?;
        step(&format!("process-kills: kill -9 {service}; restarting it"));
        let down = Instant::now();
        proc.restart()?;
        proc.ready(Duration::from_secs(120)).await?;
        notes.push(format!(
            "{service} ready {:.1?} after kill -9",
            down.elapsed()
        ));
    }
    tokio::time::sleep(gap).await;
    kills_done.store(true, Ordering::SeqCst);
    let attempts = load.await?;
    let row = Row {
        scenario: Scenario::ProcessKills.name(),
        injection: format!(
            "`kill -9` of each of the 7 services in turn under {} orders/s, each restarted at once",
            args.rate
        ),
        notes,
        ..Row::default()
    };
    let (mut row, ledger) = conclude(args, broker, prefix, row, &attempts, &[]).await?;
    if row.no_answer > 0 {
        row.notes.push(format!(
            "{} requests had no answer (the edge was down); {} orders were written without the client hearing (they finished like the others)",
            row.no_answer, row.unannounced
        ));
    }
    if ledger.unfinished() > 0 {
        row.notes.push(format!(
            "BROKEN: {} orders never finished",
            ledger.unfinished()
        ));
    }
    for proc in &mut procs {
        proc.terminate()?;
    }
    Ok(row)
}

async fn duplicates(
    args: &ChaosArgs,
    broker: &Broker,
    dir: &std::path::Path,
    prefix: &str,
) -> anyhow::Result<Row> {
    let kafka = broker.config();
    let mut dev = dev(args, broker, dir, prefix, QUICK_503).await?;
    let mut row = Row {
        scenario: Scenario::Duplicates.name(),
        injection: "every command and reply published twice more; requests retried with one \
                    `Idempotency-Key` (concurrently and later); participants' offsets reset to 0"
            .to_owned(),
        ..Row::default()
    };
    let load = keyed_load(args, &dev.address, prefix).await?;
    row.offered += load.retries;
    if load.diverged > 0 {
        row.notes.push(format!(
            "BROKEN: {} keys were given more than one order id",
            load.diverged
        ));
    }
    step("duplicates: waiting for every saga to finish");
    let before = Ledger::settle(&kafka, prefix, args.settle).await?;
    let books_before = snapshot(&kafka, prefix).await?;
    // Every consumer of a copied topic: what it had finished before the copies.
    let mut readers = participants(prefix);
    readers.push(crate::names::orchestrator(prefix));
    let mut finished_before = Vec::new();
    for (group, _) in &readers {
        finished_before.push(dev.settled(group).await.unwrap_or(0));
    }
    let copied = publish_copies(&kafka, prefix).await?;
    let copies: usize = copied.iter().map(|(_, n)| n).sum();
    step(&format!(
        "duplicates: published {copies} copies of commands and replies"
    ));
    // Wait until each consumer has taken every copy of its topic, then reset the
    // participants to the beginning of their topics.
    for ((group, topic), before) in readers.iter().zip(finished_before) {
        let n = copied
            .iter()
            .find(|(t, _)| t == topic)
            .map_or(0, |(_, n)| *n);
        if !wait_settled(&dev, group, before + n as u64, Duration::from_secs(60)).await {
            row.notes.push(format!(
                "BROKEN: {group} did not take the {n} copies of {topic}"
            ));
        }
    }
    dev.terminate()?;
    let rewound = rewind_participants(&kafka, prefix).await?;
    step(&format!(
        "duplicates: participants rewound to offset 0 ({rewound} commands to read again)"
    ));
    let mut dev = crate::chaos::dev(args, broker, dir, prefix, QUICK_503).await?;
    read_again(&kafka, &dev, prefix, &mut row).await?;
    // Keys outlive the process: the restarted edge answers retries with the first order id.
    let forgotten = forgotten_keys(&dev.address, &load.remembered).await;
    row.offered += load.remembered.len();
    if forgotten > 0 {
        row.notes.push(format!(
            "BROKEN: after a restart {forgotten} of {} retried keys did not get their first order id",
            load.remembered.len()
        ));
    }
    // Whatever the retries and the replay caused has reached the orchestrator before the
    // ledger is read.
    let (orchestrator, _) = crate::names::orchestrator(prefix);
    wait_settled(&dev, &orchestrator, 0, Duration::from_secs(60)).await;
    let after = Ledger::read(&kafka, prefix).await?;
    if snapshot(&kafka, prefix).await? != books_before {
        row.notes
            .push("BROKEN: stock or balances changed after the duplicates and the replay".into());
    }
    let outcomes_before: usize = before.outcomes.values().map(Vec::len).sum();
    let outcomes_after: usize = after.outcomes.values().map(Vec::len).sum();
    if outcomes_after != outcomes_before {
        row.notes.push(format!(
            "BROKEN: outcome events went from {outcomes_before} to {outcomes_after}"
        ));
    }
    row.notes.push(format!(
        "{copies} duplicate commands and replies and {rewound} replayed commands changed nothing: stock, balances and the {outcomes_after} outcomes are as before; {} keyed requests retried after a restart got their first order id",
        load.remembered.len() - forgotten
    ));
    account(&mut row, &load.attempts, &after, &[]);
    row.books = after.books(&kafka, prefix).await?;
    row.dead_letters = dead_letters(&kafka, prefix).await?;
    dev.terminate()?;
    Ok(row)
}

/// What the duplicates scenario's load did.
struct KeyedLoad {
    /// Every first try, plain and keyed.
    attempts: Vec<Attempt>,
    /// Up to 50 keys, their bodies and the order id they were given: asked again after a
    /// restart.
    remembered: Vec<(String, serde_json::Value, String)>,
    /// Keyed retries sent (two per key).
    retries: usize,
    /// Keys that were given more than one order id.
    diverged: usize,
}

/// Load, with a quarter of the orders sent three times under one Idempotency-Key: twice at
/// once, once more later.
async fn keyed_load(args: &ChaosArgs, address: &str, prefix: &str) -> anyhow::Result<KeyedLoad> {
    let base = address.to_owned();
    let plain = tokio::spawn(offer(
        Arc::new(move || base.clone()),
        args.rate * 3 / 4,
        args.duration,
        done(),
    ));
    let client = client();
    let keyed_count = (args.rate / 4).max(1) as usize * args.duration.as_secs().max(1) as usize;
    let mut keyed = Vec::new();
    for i in 0..keyed_count {
        let key = format!("{prefix}key-{i}");
        let body = order_body(100_000 + i);
        let (a, b) = tokio::join!(
            post(&client, address, &body, Some(&key)),
            post(&client, address, &body, Some(&key))
        );
        keyed.push((key, body, a, b));
        tokio::time::sleep(Duration::from_secs(1) / (args.rate / 4).max(1)).await;
    }
    let mut load = KeyedLoad {
        attempts: plain.await?,
        remembered: Vec::new(),
        retries: 0,
        diverged: 0,
    };
    for (key, body, a, b) in keyed {
        let c = post(&client, address, &body, Some(&key)).await;
        if let Answer::Accepted(id) = &c
            && load.remembered.len() < 50
        {
            load.remembered
                .push((key.clone(), body.clone(), id.clone()));
        }
        let ids: Vec<&str> = [&a, &b, &c]
            .iter()
            .filter_map(|x| match x {
                Answer::Accepted(id) => Some(id.as_str()),
                _ => None,
            })
            .collect();
        if ids.windows(2).any(|w| w[0] != w[1]) {
            load.diverged += 1;
        }
        load.retries += 2; // the first try is counted as an attempt
        // The three tries share a key: counted once, as the first that was accepted.
        let answer = [a, b, c]
            .into_iter()
            .find(|x| matches!(x, Answer::Accepted(_)))
            .unwrap_or_else(|| Answer::Silent("no try of the key was accepted".into()));
        load.attempts.push(Attempt::unchecked(answer));
    }
    Ok(load)
}

/// Publishes every command and reply twice more: same key, payload and headers (so the same
/// message id). Returns how many copies went to each topic.
async fn publish_copies(
    kafka: &sagashop_kit::KafkaConfig,
    prefix: &str,
) -> anyhow::Result<Vec<(String, usize)>> {
    let mut topics: Vec<String> = participants(prefix).into_iter().map(|(_, t)| t).collect();
    topics.push(topic(prefix, Service::Orchestrator, "replies"));
    let publisher = Publisher::new(kafka, "chaos")?;
    let mut copies = Vec::new();
    for topic in topics {
        let records = read_to_end(kafka, "chaos", &topic, Duration::from_secs(60)).await?;
        let outgoing: Vec<Outgoing> = records
            .into_iter()
            .map(|r| Outgoing {
                topic: topic.clone(),
                key: r.key,
                partition: None,
                payload: r.payload,
                headers: r
                    .headers
                    .into_iter()
                    .filter_map(|(k, v)| Some((k, v?)))
                    .collect(),
            })
            .collect();
        for _ in 0..2 {
            publisher.send_all(&outgoing).await?;
        }
        copies.push((topic, 2 * outgoing.len()));
    }
    Ok(copies)
}

/// Resets every participant's group to offset 0 of its command topic (the system is down).
/// Returns how many commands they will read again.
async fn rewind_participants(
    kafka: &sagashop_kit::KafkaConfig,
    prefix: &str,
) -> anyhow::Result<usize> {
    let mut rewound = 0;
    for (group, topic) in participants(prefix) {
        rewind(kafka, &group, &topic)?;
        rewound += read_to_end(kafka, "chaos", &topic, Duration::from_secs(60))
            .await?
            .len();
    }
    Ok(rewound)
}

/// Waits for each rewound participant to read its whole command topic again; notes one that
/// does not.
async fn read_again(
    kafka: &sagashop_kit::KafkaConfig,
    dev: &Proc,
    prefix: &str,
    row: &mut Row,
) -> anyhow::Result<()> {
    for (group, topic) in participants(prefix) {
        let total = read_to_end(kafka, "chaos", &topic, Duration::from_secs(60))
            .await?
            .len() as u64;
        if !wait_settled(dev, &group, total, Duration::from_secs(120)).await {
            row.notes.push(format!(
                "BROKEN: {group} did not read its {total} commands again"
            ));
        }
    }
    Ok(())
}

/// Asks again with each remembered key; returns how many did not get their first order id.
async fn forgotten_keys(
    address: &str,
    remembered: &[(String, serde_json::Value, String)],
) -> usize {
    let client = client();
    let mut forgotten = 0;
    for (key, body, id) in remembered {
        match post(&client, address, body, Some(key)).await {
            Answer::Accepted(again) if again == *id => {}
            _ => forgotten += 1,
        }
    }
    forgotten
}

/// Stock and balances as Kafka holds them.
async fn snapshot(
    kafka: &sagashop_kit::KafkaConfig,
    prefix: &str,
) -> anyhow::Result<(Vec<(String, String)>, Vec<(String, String)>)> {
    let sorted = |m: std::collections::HashMap<String, serde_json::Value>| {
        let mut v: Vec<(String, String)> = m.into_iter().map(|(k, v)| (k, v.to_string())).collect();
        v.sort();
        v
    };
    Ok((
        sorted(latest(kafka, &topic(prefix, Service::Inventory, "stock")).await?),
        sorted(latest(kafka, &topic(prefix, Service::Payment, "balances")).await?),
    ))
}

/// Waits until `group` has finished with at least `at_least` records and its count stops
/// moving; returns whether it got there within `timeout`.
async fn wait_settled(proc: &Proc, group: &str, at_least: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        let now = proc.settled(group).await;
        if let Some(n) = now
            && n >= at_least
            && last == Some(n)
        {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        last = now;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Commits offset 0 on every partition of `topic` for `group` (no member may be running).
fn rewind(kafka: &sagashop_kit::KafkaConfig, group: &str, topic: &str) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = kafka.consumer("chaos-rewind", group).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut offsets = TopicPartitionList::new();
    for partition in metadata
        .topics()
        .first()
        .context("no such topic")?
        .partitions()
    {
        offsets.add_partition_offset(topic, partition.id(), Offset::Offset(0))?;
    }
    consumer.commit(&offsets, CommitMode::Sync)?;
    Ok(())
}

fn report(args: &ChaosArgs, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# sagashop fault suite\n");
    let _ = writeln!(
        out,
        "`xtask chaos`, {} orders/s offered for {:?} per scenario, on {} ({}).\n",
        args.rate,
        args.duration,
        std::env::var("HOSTNAME").unwrap_or_else(|_| "this machine".into()),
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(
        out,
        "| fault | injection | offered | accepted (202) | refused (503) | no answer | completed | cancelled | lost | verdict |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let verdict = if broken(r).is_empty() {
            "held"
        } else {
            "BROKEN"
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.injection,
            r.offered,
            r.accepted,
            r.refused,
            r.no_answer,
            r.completed,
            r.cancelled,
            r.lost,
            verdict
        );
    }
    for r in rows {
        let _ = writeln!(out, "\n**{}** ({:.0?})", r.scenario, r.elapsed);
        let _ = writeln!(
            out,
            "- Kafka holds {} orders no client was given; {} orders finished twice",
            r.unannounced, r.finished_twice
        );
        if r.books.is_empty() {
            let _ = writeln!(out, "- stock and balances add up exactly");
        }
        for line in r.books.iter().chain(&r.notes) {
            let _ = writeln!(out, "- {line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn sent(i: usize) -> Option<(serde_json::Value, Option<String>)> {
        Some((order_body(i), Some(format!("k-{i}"))))
    }

    fn attempt(i: usize, answer: Answer) -> Attempt {
        Attempt {
            at: Duration::ZERO,
            answer,
            sent: sent(i),
        }
    }

    /// Kafka as it holds order `i` of [`order_body`] under id `id`, written `writes` times.
    fn hold(ledger: &mut Ledger, i: usize, id: &str, writes: usize) {
        let customer = order_body(i)["customerId"].as_str().unwrap().to_owned();
        ledger
            .placed
            .insert(id.into(), Placed::of_request(&order_body(i)));
        ledger.writes.insert(id.into(), writes);
        ledger.keys.insert(format!("{customer}/k-{i}"), id.into());
        ledger
            .outcomes
            .insert(id.into(), vec!["OrderCompleted".into()]);
        let steps = std::collections::HashMap::from([("reserve-inventory".to_owned(), 1)]);
        ledger.starts.insert(id.into(), steps);
    }

    fn broken_by(attempts: &[Attempt], ledger: &Ledger) -> Vec<String> {
        let mut row = Row::default();
        account(&mut row, attempts, ledger, &[]);
        broken(&row)
    }

    #[test]
    fn an_honest_ledger_breaks_no_promise() {
        let mut ledger = Ledger::default();
        hold(&mut ledger, 0, "a", 1);
        let attempts = [
            attempt(0, Answer::Accepted("a".into())),
            attempt(1, Answer::Unavailable),
        ];
        assert_eq!(broken_by(&attempts, &ledger), Vec::<String>::new());
    }

    #[test]
    fn each_broken_promise_is_named_request_by_request() {
        let mut ledger = Ledger::default();
        hold(&mut ledger, 0, "a", 2); // written twice
        hold(&mut ledger, 1, "b", 1); // written for a 503
        hold(&mut ledger, 2, "c", 1); // given to two requests
        hold(&mut ledger, 3, "d", 1); // other contents than sent
        ledger
            .placed
            .insert("d".into(), Placed::of_request(&order_body(8)));
        hold(&mut ledger, 4, "e", 1); // its saga started twice
        ledger
            .starts
            .get_mut("e")
            .unwrap()
            .insert("reserve-inventory".into(), 2);
        hold(&mut ledger, 5, "f", 1); // nobody was told
        let attempts = [
            attempt(0, Answer::Accepted("a".into())),
            attempt(1, Answer::Unavailable),
            attempt(2, Answer::Accepted("c".into())),
            attempt(2, Answer::Accepted("c".into())),
            attempt(3, Answer::Accepted("d".into())),
            attempt(4, Answer::Accepted("e".into())),
            attempt(5, Answer::Unavailable),
        ];
        let said = broken_by(&attempts, &ledger).join("; ");
        for promise in [
            "2 requests answered 503 wrote an order",
            "1 order ids were given to more than one request",
            "1 orders were written with other contents",
            "1 orders were written more than once",
            "1 sagas started more than once",
        ] {
            assert!(said.contains(promise), "`{promise}` not in: {said}");
        }
        // "b" and "f" are each written for a 503: written, but not unannounced twice over.
        assert!(
            said.contains("2 orders written that no client was given"),
            "{said}"
        );
    }

    #[test]
    fn an_order_whose_request_got_no_answer_may_be_in_kafka() {
        let mut ledger = Ledger::default();
        hold(&mut ledger, 0, "a", 1);
        let attempts = [attempt(0, Answer::Silent("reset".into()))];
        assert_eq!(broken_by(&attempts, &ledger), Vec::<String>::new());
    }
}

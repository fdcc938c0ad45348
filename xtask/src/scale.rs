//! The `scale` fault scenario: every service as 1 → 3 → 2 → 1 replicas, each replica its own
//! process, under a continuous order load spread over the live edges. Partitions move at every
//! step; in the middle a replica of every stateful service is killed with `kill -9` and not
//! brought back, so its partitions (and the transaction it may have left open) pass to the
//! survivors. Keys reach two edges at once. The books must still add up: nothing lost or
//! finished twice, stock never oversold, balances exact, one order per key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use sagashop_topology::Service as Named;

use crate::chaos::{ChaosArgs, Row, conclude, edge_first, step};
use crate::fleet::{
    Answer, Attempt, Broker, Proc, client, latest, offer, order_body, post, system_args,
};
use crate::names::topic;

/// The replicas of one service, by index.
struct Service {
    name: &'static str,
    replicas: Vec<Option<Proc>>,
}

impl Service {
    fn proc(&mut self, i: usize) -> Option<&mut Proc> {
        self.replicas.get_mut(i).and_then(Option::as_mut)
    }
}

/// The live edges' addresses, taken in turn by the load.
#[derive(Clone, Default)]
struct Edges {
    live: Arc<Mutex<Vec<String>>>,
    next: Arc<std::sync::atomic::AtomicUsize>,
}

impl Edges {
    /// The load goes to the first `n` edge replicas from now on.
    fn set(&self, services: &[Service], n: usize) {
        let addresses = services
            .iter()
            .filter(|s| s.name == "order")
            .flat_map(|s| {
                s.replicas
                    .iter()
                    .take(n)
                    .flatten()
                    .map(|p| p.address.clone())
            })
            .collect();
        if let Ok(mut live) = self.live.lock() {
            *live = addresses;
        }
    }

    fn pick(&self) -> String {
        let live = self.live.lock().map(|l| l.clone()).unwrap_or_default();
        if live.is_empty() {
            return String::new();
        }
        live[self.next.fetch_add(1, Ordering::Relaxed) % live.len()].clone()
    }
}

async fn start_replica(
    args: &ChaosArgs,
    broker: &Broker,
    dir: &std::path::Path,
    prefix: &str,
    service: &'static str,
    i: usize,
) -> anyhow::Result<Proc> {
    let name = format!("{service}-{i}");
    let mut command = vec![service.to_owned()];
    command.extend(system_args(prefix, &["--instance", &name]));
    if service == "order" && i == 0 {
        command.push("--create-topics".into());
    }
    let mut proc = Proc::start(&args.sagashop, dir, &name, command, &broker.bootstrap)?;
    proc.ready(Duration::from_secs(180))
        .await
        .with_context(|| format!("{name} did not get ready"))?;
    Ok(proc)
}

/// Brings every service to `n` replicas: starts the missing ones (all services at once, each
/// waited for), or stops the highest ones with SIGTERM (they drain and hand over) once the
/// load no longer goes to their edges, as a Service drops a terminating pod's endpoint.
async fn scale_to(
    args: &ChaosArgs,
    broker: &Broker,
    dir: &std::path::Path,
    prefix: &str,
    services: &mut [Service],
    n: usize,
    edges: &Edges,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    edges.set(services, n);
    for service in services.iter_mut() {
        while service.replicas.len() > n {
            if let Some(Some(mut proc)) = service.replicas.pop() {
                proc.terminate()?;
            }
        }
    }
    let mut starting = Vec::new();
    for service in services.iter() {
        for i in service.replicas.len()..n {
            starting.push((service.name, i));
        }
    }
    let started_procs = futures::future::join_all(
        starting
            .iter()
            .map(|(name, i)| start_replica(args, broker, dir, prefix, name, *i)),
    )
    .await;
    for ((name, _), proc) in starting.iter().zip(started_procs) {
        let proc = proc?;
        if let Some(service) = services.iter_mut().find(|s| s.name == *name) {
            service.replicas.push(Some(proc));
        }
    }
    edges.set(services, n);
    Ok(started.elapsed())
}

/// Waits until `proc` answers `/readyz` again after having been not ready (its takeover of a
/// killed replica's partitions: rebalance, then restore); how long from `since`, if it did.
async fn takeover(proc: &Proc, since: Instant, timeout: Duration) -> Option<Duration> {
    let client = reqwest::Client::new();
    let url = format!("http://{}/readyz", proc.address);
    let ready = || async {
        client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    };
    let mut saw_unready = false;
    while since.elapsed() < timeout {
        let now = ready().await;
        if !now {
            saw_unready = true;
        } else if saw_unready {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

pub(crate) async fn run(
    args: &ChaosArgs,
    broker: &Broker,
    dir: &std::path::Path,
    prefix: &str,
) -> anyhow::Result<Row> {
    let kafka = broker.config();
    let (mut services, edges) = start_all(args, broker, dir, prefix).await?;
    let base = {
        let edges = edges.clone();
        Arc::new(move || edges.pick())
    };
    let scaled = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(offer(base, args.rate, args.duration, Arc::clone(&scaled)));
    let gap = args.duration / 5;
    let mut notes = Vec::new();

    tokio::time::sleep(gap).await;
    step("scale: every service 1 -> 3 replicas");
    let took = scale_to(args, broker, dir, prefix, &mut services, 3, &edges).await?;
    notes.push(format!(
        "1 → 3 replicas: all 14 new ones ready in {took:.1?}"
    ));

    // One key, two edges, at once: one order.
    tokio::time::sleep(gap / 2).await;
    let (keyed_attempts, keyed_ids, note) = two_edges(&services, prefix).await;
    notes.push(note);

    tokio::time::sleep(gap / 2).await;
    step("scale: every service 3 -> 2 replicas");
    scale_to(args, broker, dir, prefix, &mut services, 2, &edges).await?;

    tokio::time::sleep(gap / 2).await;
    step("scale: kill -9 replica 1 of every service but the edge");
    let killed_at = chrono::Utc::now();
    notes.push(kill_replicas(&mut services).await?);

    tokio::time::sleep(gap / 2).await;
    step("scale: every service 2 -> 1 replicas");
    scale_to(args, broker, dir, prefix, &mut services, 1, &edges).await?;
    let last_step = Instant::now();
    tokio::time::sleep(gap).await;
    scaled.store(true, Ordering::SeqCst);
    let mut attempts = load.await?;
    attempts.extend(keyed_attempts);

    let row = Row {
        scenario: "scale",
        injection: format!(
            "every service 1 → 3 → 2 → 1 replicas under {} orders/s, `kill -9` of a replica of \
             each of 6 services at 2, one key sent to two edges at once",
            args.rate
        ),
        notes,
        ..Row::default()
    };
    let (mut row, ledger) = conclude(args, broker, prefix, row, &attempts, &keyed_ids).await?;
    row.notes.push(format!(
        "every accepted order final {:.1?} after the last scaling step",
        last_step.elapsed()
    ));
    check(&kafka, prefix, &mut row, &ledger, &keyed_ids).await?;
    if let Some(note) = longest_restore(&services, killed_at) {
        row.notes.push(note);
    }

    for service in &mut services {
        for proc in service.replicas.iter_mut().flatten() {
            proc.terminate()?;
        }
    }
    Ok(row)
}

/// Every service, one process each, the edge first (it creates the topics); and the edges
/// the load is spread over.
async fn start_all(
    args: &ChaosArgs,
    broker: &Broker,
    dir: &std::path::Path,
    prefix: &str,
) -> anyhow::Result<(Vec<Service>, Edges)> {
    let mut services: Vec<Service> = edge_first()
        .map(|name| Service {
            name,
            replicas: Vec::new(),
        })
        .collect();
    let edges = Edges::default();
    let (first, rest) = services.split_at_mut(1);
    scale_to(args, broker, dir, prefix, first, 1, &edges).await?;
    scale_to(args, broker, dir, prefix, rest, 1, &edges).await?;
    edges.set(&services, 1);
    Ok((services, edges))
}

/// The same key sent to two edges at once, 40 times: the answers as attempts, the order ids
/// given, and a note (BROKEN if a key got two ids).
async fn two_edges(services: &[Service], prefix: &str) -> (Vec<Attempt>, Vec<String>, String) {
    let (keyed, diverged, keyed_ids) = same_key_on_two_edges(services, prefix, 40).await;
    let attempts = keyed_ids
        .iter()
        .map(|id| Attempt::unchecked(Answer::Accepted(id.clone())))
        .collect();
    let note = if diverged > 0 {
        format!(
            "BROKEN: {diverged} of {keyed} keys sent to two edges at once were given two order ids"
        )
    } else {
        format!(
            "{keyed} keys each sent to two edges at once: one order id per key, each saga started once"
        )
    };
    (attempts, keyed_ids, note)
}

/// `kill -9` of replica 1 of every service but the edge; a note of how long the surviving
/// orchestrator took to restore the killed one's partitions.
async fn kill_replicas(services: &mut [Service]) -> anyhow::Result<String> {
    let killed = Instant::now();
    for service in services.iter_mut().filter(|s| s.name != "order") {
        if let Some(proc) = service.proc(1) {
            proc.kill9()?;
        }
        service.replicas.truncate(1);
    }
    let orchestrator = services
        .iter()
        .find(|s| s.name == "orchestrator")
        .and_then(|s| s.replicas.first())
        .and_then(Option::as_ref)
        .context("no orchestrator left")?;
    Ok(
        match takeover(orchestrator, killed, Duration::from_secs(120)).await {
            Some(after) => format!(
                "after kill -9 of a replica of each participant and the orchestrator, the \
                 surviving orchestrator had restored the killed one's partitions {after:.1?} \
                 later (session timeout, rebalance, then the killed transactions' abort)"
            ),
            None => "the surviving orchestrator never reported a takeover (it may have owned \
                     the partitions already)"
                .to_owned(),
        },
    )
}

/// The scenario's own promises: each keyed order finished once, nothing oversold, some orders
/// refused (stock and money ran out).
async fn check(
    kafka: &sagashop_kit::KafkaConfig,
    prefix: &str,
    row: &mut Row,
    ledger: &crate::fleet::Ledger,
    keyed_ids: &[String],
) -> anyhow::Result<()> {
    for id in keyed_ids {
        if ledger.outcomes.get(id).is_none_or(|o| o.len() != 1) {
            row.notes.push(format!(
                "BROKEN: keyed order {id} finished {} times",
                ledger.outcomes.get(id).map_or(0, Vec::len)
            ));
        }
        // The id is derived from the key, so both edges name the same order whatever they
        // do: what can break is the saga behind it starting twice.
        let started = ledger
            .starts
            .get(id)
            .and_then(|steps| steps.values().max().copied())
            .unwrap_or(0);
        if started != 1 {
            row.notes.push(format!(
                "BROKEN: the saga of keyed order {id} started {started} times"
            ));
        }
    }
    let stock = latest(kafka, &topic(prefix, Named::Inventory, "stock")).await?;
    let oversold: Vec<String> = stock
        .iter()
        .filter(|(_, v)| v.as_i64().is_some_and(|n| n < 0))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !oversold.is_empty() {
        row.notes
            .push(format!("BROKEN: oversold: {}", oversold.join(", ")));
    }
    if row.cancelled == 0 {
        row.notes
            .push("BROKEN: no order was refused: the scenario must run stock and money out".into());
    }
    Ok(())
}

/// How long the survivors' restores waited for the transactions the killed replicas left
/// open (bounded by the transaction timeout): a note naming the longest.
fn longest_restore(
    services: &[Service],
    killed_at: chrono::DateTime<chrono::Utc>,
) -> Option<String> {
    services
        .iter()
        .filter_map(|s| {
            let proc = s.replicas.first()?.as_ref()?;
            Some((s.name.to_owned(), proc.longest_restore_since(killed_at)?))
        })
        .max_by_key(|(_, d)| *d)
        .map(|(name, longest)| {
            format!(
                "the longest state restore after the kill took {longest:.1?} ({name}): the wait \
                 for transactions the killed replicas left open"
            )
        })
}

/// Sends `n` keyed orders, each to two different edges at the same moment; returns how many
/// keys, how many were given two different ids, and the ids given.
async fn same_key_on_two_edges(
    services: &[Service],
    prefix: &str,
    n: usize,
) -> (usize, usize, Vec<String>) {
    let edges: Vec<String> = services
        .iter()
        .filter(|s| s.name == "order")
        .flat_map(|s| s.replicas.iter().flatten().map(|p| p.address.clone()))
        .collect();
    if edges.len() < 2 {
        return (0, 0, Vec::new());
    }
    let client = client();
    let mut diverged = 0;
    let mut ids = Vec::new();
    for i in 0..n {
        let key = format!("{prefix}scale-key-{i}");
        let body = order_body(200_000 + i);
        let (a, b) = tokio::join!(
            post(&client, &edges[i % edges.len()], &body, Some(&key)),
            post(&client, &edges[(i + 1) % edges.len()], &body, Some(&key))
        );
        match (a, b) {
            (Answer::Accepted(a), Answer::Accepted(b)) => {
                if a != b {
                    diverged += 1;
                }
                ids.push(a);
            }
            (Answer::Accepted(id), _) | (_, Answer::Accepted(id)) => ids.push(id),
            _ => {}
        }
    }
    (n, diverged, ids)
}

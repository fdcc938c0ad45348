//! What the fault suite runs and measures: its own Kafka broker (`scripts/kafka` with a private
//! state directory, so stopping it never disturbs another broker), sagashop processes, an order
//! load, and the ledger that checks what Kafka holds against what the clients were told.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sagashop_kit::KafkaConfig;
use sagashop_kit::reader::read_settled;
use sagashop_topology::Service;
use serde_json::{Value, json};

use crate::names::topic;

/// Stock the inventory starts with: `sku-1` runs out during a run, `sku-2` never does, and
/// `ghost` is never stocked; customers start with 200,000 and some run out of money. Every
/// saga path (completed, out of stock, declined) is taken.
pub(crate) const STOCK: [(&str, i64); 2] = [("sku-1", 300), ("sku-2", 1_000_000)];
/// The opening balance of every customer, in minor units.
pub(crate) const OPENING_BALANCE: i64 = 200_000;

/// A broker of our own, or a cluster of them (`scripts/kafka` with `KAFKA_BROKERS`).
pub(crate) struct Broker {
    script: PathBuf,
    run_dir: PathBuf,
    /// How many brokers (node ids 1..=brokers).
    pub(crate) brokers: u32,
    pub(crate) bootstrap: String,
    /// Where the local node's pods reach it, when it listens for them.
    pub(crate) pods_bootstrap: Option<String>,
    /// The address it also listens on for pods (`KAFKA_PODS_ADDRESS`).
    pods_address: Option<String>,
}

impl Broker {
    /// `scripts/kafka up` on `run_dir`; with `pods_address`, also listening there for the local
    /// node's pods.
    pub(crate) fn up(
        root: &Path,
        run_dir: &Path,
        pods_address: Option<&str>,
    ) -> anyhow::Result<Self> {
        Self::cluster(root, run_dir, pods_address, 1)
    }

    /// `scripts/kafka up` of `brokers` brokers on `run_dir` (loopback only when more than one).
    pub(crate) fn cluster(
        root: &Path,
        run_dir: &Path,
        pods_address: Option<&str>,
        brokers: u32,
    ) -> anyhow::Result<Self> {
        let script = root.join("scripts/kafka");
        let mut broker = Self {
            script,
            run_dir: run_dir.to_owned(),
            brokers,
            bootstrap: String::new(),
            pods_bootstrap: None,
            pods_address: pods_address.map(str::to_owned),
        };
        let out = broker.kafka(&["up"])?;
        if pods_address.is_some() {
            broker.pods_bootstrap = broker
                .kafka(&["pods"])?
                .trim()
                .strip_prefix("KAFKA_PODS_BOOTSTRAP_SERVERS=")
                .map(str::to_owned);
        }
        broker.bootstrap = out
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("KAFKA_BOOTSTRAP_SERVERS="))
            .context("scripts/kafka up printed no KAFKA_BOOTSTRAP_SERVERS line")?
            .to_owned();
        Ok(broker)
    }

    fn kafka(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = Command::new(&self.script)
            .args(args)
            .env("KAFKA_RUN_DIR", &self.run_dir)
            .env("KAFKA_BROKERS", self.brokers.to_string())
            .env(
                "KAFKA_PODS_ADDRESS",
                self.pods_address.as_deref().unwrap_or(""),
            )
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.script.display()))?;
        if !output.status.success() {
            bail!(
                "scripts/kafka {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Stops it (SIGTERM, or SIGKILL when `kill`), keeping its data.
    pub(crate) fn stop(&self, kill: bool) -> anyhow::Result<()> {
        let args: &[&str] = if kill { &["stop", "--kill"] } else { &["stop"] };
        self.kafka(args).map(drop)
    }

    /// Starts it again on the same data and port.
    pub(crate) fn start(&self) -> anyhow::Result<()> {
        self.kafka(&["start"]).map(drop)
    }

    /// Stops broker `id` of a cluster (SIGTERM, or SIGKILL when `kill`), keeping its data.
    pub(crate) fn stop_node(&self, id: u32, kill: bool) -> anyhow::Result<()> {
        let id = id.to_string();
        let mut args = vec!["stop", "--broker", &id];
        if kill {
            args.push("--kill");
        }
        self.kafka(&args).map(drop)
    }

    /// Starts broker `id` of a cluster again, waiting until it answers.
    pub(crate) fn start_node(&self, id: u32) -> anyhow::Result<()> {
        self.kafka(&["start", "--broker", &id.to_string()])
            .map(drop)
    }

    pub(crate) fn config(&self) -> KafkaConfig {
        KafkaConfig::new(self.bootstrap.clone())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Err(e) = self.kafka(&["down"]) {
            eprintln!("chaos: could not stop the broker: {e:#}");
        }
    }
}

/// One `sagashop <command>` process.
pub(crate) struct Proc {
    pub(crate) name: String,
    args: Vec<String>,
    bootstrap: String,
    sagashop: PathBuf,
    log: PathBuf,
    pub(crate) address: String,
    child: Option<Child>,
    /// Where the current child's output starts in the (appended) log.
    log_from: u64,
}

/// A loopback port free when asked. Another process can take it before it is bound (see
/// [`Proc::ready`]).
pub(crate) fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Proc {
    /// Starts `sagashop <command> <args>` on a free port, logging to `<dir>/<name>.log`.
    pub(crate) fn start(
        sagashop: &Path,
        dir: &Path,
        name: &str,
        args: Vec<String>,
        bootstrap: &str,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut proc = Self {
            name: name.to_owned(),
            args,
            bootstrap: bootstrap.to_owned(),
            sagashop: sagashop.to_owned(),
            log: dir.join(format!("{name}.log")),
            address: format!("127.0.0.1:{port}"),
            child: None,
            log_from: 0,
        };
        proc.spawn()?;
        Ok(proc)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.log_from = log.metadata()?.len();
        let child = Command::new(&self.sagashop)
            .args(&self.args)
            .args(["--http", &self.address, "--summary-every", "0s"])
            .env("KAFKA_BOOTSTRAP_SERVERS", &self.bootstrap)
            .env("LOG_FORMAT", "json")
            // Store restores are logged with their duration: the scale scenario reads them.
            .env("RUST_LOG", "warn,sagashop_kit::store=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.sagashop.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits for `/readyz` (at most `timeout`).
    pub(crate) async fn ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let mut url = format!("http://{}/readyz", self.address);
        let deadline = Instant::now() + timeout;
        let mut rebound = 0;
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                // The port was free when picked, but an outgoing connection of another process
                // (a Kafka client's ephemeral port) can take it before the child binds it: pick
                // another and start again, a few times.
                // Only this child's output: an earlier clash in the same log is not this exit.
                let log = std::fs::read(&self.log).unwrap_or_default();
                let own = log
                    .get(usize::try_from(self.log_from).unwrap_or(usize::MAX)..)
                    .unwrap_or_default();
                if rebound < 3 && String::from_utf8_lossy(own).contains("Address already in use") {
                    rebound += 1;
                    let port = free_port()?;
                    self.address = format!("127.0.0.1:{port}");
                    url = format!("http://{}/readyz", self.address);
                    self.spawn()?;
                    continue;
                }
                bail!(
                    "{} exited ({status}); see {}",
                    self.name,
                    self.log.display()
                );
            }
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not ready within {timeout:?}; see {}",
                    self.name,
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// How it ended, if it ended (by itself: nothing here stopped it).
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL: no drain, no commit, no goodbye to the group.
    pub(crate) fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts it again with the same arguments, port and log.
    pub(crate) fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9()?;
        self.spawn()
    }

    /// SIGTERM, and a graceful exit within a minute.
    pub(crate) fn terminate(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                if !status.success() {
                    bail!(
                        "{} exited with {status} on SIGTERM; see {}",
                        self.name,
                        self.log.display()
                    );
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("{} did not stop on SIGTERM within 60 s", self.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The sum of `sagashop_messages_<kind>_total` for `group`, over every kind that means
    /// "this record is done with" (handled, duplicate, dead-lettered, unknown).
    pub(crate) async fn settled(&self, group: &str) -> Option<u64> {
        let url = format!("http://{}/metrics", self.address);
        let text = reqwest::get(url).await.ok()?.text().await.ok()?;
        let kinds = ["handled", "duplicate", "dead_lettered", "unknown"];
        let total: f64 = text
            .lines()
            .filter(|l| {
                kinds
                    .iter()
                    .any(|k| l.starts_with(&format!("sagashop_messages_{k}_total{{")))
                    && l.contains(&format!("group=\"{group}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        Some(total as u64)
    }
}

impl Proc {
    /// The longest state restore this process logged at or after `since` (a store waits there
    /// for transactions left open on its partitions), if it logged one.
    pub(crate) fn longest_restore_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Option<Duration> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|v| v["message"] == "store restored")
            .filter(|v| {
                v["timestamp"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| t >= since)
            })
            .filter_map(|v| parse_debug_duration(v["elapsed"].as_str()?))
            .max()
    }
}

/// A `Duration` as its `Debug` form prints it: `263.914432ms`, `1.2s`, `15µs`.
fn parse_debug_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => number,
        "ms" => number / 1e3,
        "µs" | "us" => number / 1e6,
        "ns" => number / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

/// The arguments every sagashop process of one system gets.
pub(crate) fn system_args(prefix: &str, extra: &[&str]) -> Vec<String> {
    let stock = STOCK
        .iter()
        .map(|(p, q)| format!("{p}={q}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut args: Vec<String> = vec![
        "--topic-prefix".into(),
        prefix.into(),
        "--stock".into(),
        stock,
        "--opening-balance".into(),
        OPENING_BALANCE.to_string(),
        // Deliveries fail after 3 s instead of 10: a broker outage turns into 503s quickly.
        "--kafka-delivery-timeout".into(),
        "3s".into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// What one request was answered.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    /// `202` with this order id.
    Accepted(String),
    /// `503`: not accepted, nothing written.
    Unavailable,
    /// No HTTP answer (connection refused or reset).
    Silent(String),
    /// Anything else.
    Other(u16, String),
}

/// One offered order and its answer.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    /// When it was sent, from the start of the load.
    pub(crate) at: Duration,
    pub(crate) answer: Answer,
    /// What was sent, when the ledger should check it: the body, and the `Idempotency-Key`
    /// if this request alone used it (then Kafka's key record says whether it wrote anything).
    pub(crate) sent: Option<(Value, Option<String>)>,
}

impl Attempt {
    /// An answer whose request the ledger does not check (its key is shared with others).
    pub(crate) fn unchecked(answer: Answer) -> Self {
        Self {
            at: Duration::ZERO,
            answer,
            sent: None,
        }
    }

    /// The idempotency record's key of this request: `<customerId>/<key>`.
    pub(crate) fn key_record(&self) -> Option<String> {
        let (body, key) = self.sent.as_ref()?;
        Some(format!(
            "{}/{}",
            body["customerId"].as_str()?,
            key.as_deref()?
        ))
    }
}

/// The body of the `i`-th order: a mix of customers, products and sizes.
pub(crate) fn order_body(i: usize) -> Value {
    let products = ["sku-1", "sku-2", "ghost"];
    let product = products[i % 7 % 3];
    json!({
        "customerId": format!("c-{}", i % 20),
        "currency": "EUR",
        "items": [{
            "productId": product,
            "quantity": 1 + (i % 3),
            "unitPrice": 1000 + 500 * (i % 5),
        }],
    })
}

/// Posts one order; `key` adds an `Idempotency-Key`.
pub(crate) async fn post(
    client: &reqwest::Client,
    base: &str,
    body: &Value,
    key: Option<&str>,
) -> Answer {
    let mut request = client.post(format!("http://{base}/api/orders")).json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    match request.send().await {
        Err(e) => Answer::Silent(e.to_string()),
        Ok(response) => {
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            match (status, body["orderId"].as_str()) {
                (202, Some(id)) => Answer::Accepted(id.to_owned()),
                (503, _) => Answer::Unavailable,
                _ => Answer::Other(status, body.to_string()),
            }
        }
    }
}

/// A flag that is already set: a load that ends after its duration.
pub(crate) fn done() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(true))
}

/// A client that waits long enough for any answer the edge can give (a commit in progress
/// when the broker went away is held until Kafka answers).
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default()
}

/// [`offer`] to one address, spawned: the flag that ends it (once `duration` has passed) and
/// the task that returns every attempt.
pub(crate) fn steady_load(
    base: String,
    rate: u32,
    duration: Duration,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Vec<Attempt>>) {
    let until = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(offer(
        Arc::new(move || base.clone()),
        rate,
        duration,
        Arc::clone(&until),
    ));
    (until, load)
}

/// Offers `rate` orders a second for at least `duration` and until `until` is set, to
/// whatever `base()` names at the time of each request; returns every attempt once all are
/// answered.
pub(crate) async fn offer(
    base: Arc<dyn Fn() -> String + Send + Sync>,
    rate: u32,
    duration: Duration,
    until: Arc<AtomicBool>,
) -> Vec<Attempt> {
    let client = client();
    let started = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0;
    // A key of its own on every request: Kafka's idempotency record then says, for each
    // request, whether it wrote an order, whatever answer (or none) the client got.
    let run = sagashop_testkit::unique_name("load");
    while started.elapsed() < duration || !until.load(Ordering::SeqCst) {
        ticker.tick().await;
        let (client, base, at) = (client.clone(), base(), started.elapsed());
        let body = order_body(i);
        let key = format!("{run}-{i}");
        tasks.spawn(async move {
            let answer = post(&client, &base, &body, Some(&key)).await;
            Attempt {
                at,
                answer,
                sent: Some((body, Some(key))),
            }
        });
        i += 1;
    }
    let mut attempts = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(attempt) = done {
            attempts.push(attempt);
        }
    }
    attempts.sort_by_key(|a| a.at);
    attempts
}

/// An order as Kafka holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placed {
    customer: String,
    /// (product, quantity), sorted.
    items: Vec<(String, i64)>,
    total: i64,
}

impl Placed {
    /// What a client's order body asks for.
    pub(crate) fn of_request(body: &Value) -> Self {
        let lines = body["items"].as_array().cloned().unwrap_or_default();
        let mut items: Vec<(String, i64)> = lines
            .iter()
            .map(|i| {
                let product = i["productId"].as_str().unwrap_or_default().to_owned();
                (product, i["quantity"].as_i64().unwrap_or_default())
            })
            .collect();
        items.sort();
        let total = lines
            .iter()
            .map(|i| {
                i["quantity"].as_i64().unwrap_or_default()
                    * i["unitPrice"].as_i64().unwrap_or_default()
            })
            .sum();
        Self {
            customer: body["customerId"].as_str().unwrap_or_default().to_owned(),
            items,
            total,
        }
    }
}

/// What Kafka holds for one system: every `OrderPlaced` (each record, not only each id), the
/// idempotency records, the sagas' first steps and the outcomes per order.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Order id → the first `OrderPlaced` written for it.
    pub(crate) placed: HashMap<String, Placed>,
    /// Order id → how many `OrderPlaced` records hold it (1 unless something wrote it twice).
    pub(crate) writes: HashMap<String, usize>,
    /// Order ids whose `OrderPlaced` records differ from each other.
    pub(crate) rewritten: usize,
    /// `<customerId>/<Idempotency-Key>` → the order id written for it.
    pub(crate) keys: HashMap<String, String>,
    /// Order id → first attempts of its saga's steps (a saga started twice has two of a step).
    pub(crate) starts: HashMap<String, HashMap<String, usize>>,
    /// Order id → the outcome events seen (`OrderCompleted` / `OrderCancelled`).
    pub(crate) outcomes: HashMap<String, Vec<String>>,
    /// When each outcome event was written (Kafka's timestamp, Unix milliseconds).
    pub(crate) outcome_times: Vec<i64>,
}

impl Ledger {
    /// Reads both topics to their end.
    pub(crate) async fn read(kafka: &KafkaConfig, prefix: &str) -> anyhow::Result<Self> {
        let timeout = Duration::from_secs(60);
        let mut ledger = Self::default();
        for record in read_settled(
            kafka,
            "chaos",
            &topic(prefix, Service::Order, "orders"),
            timeout,
        )
        .await?
        {
            let Some(payload) = record.payload else {
                continue;
            };
            let order: Value = serde_json::from_slice(&payload)?;
            let id = order["orderId"]
                .as_str()
                .context("OrderPlaced without orderId")?;
            let mut items: Vec<(String, i64)> = order["items"]
                .as_array()
                .context("OrderPlaced without items")?
                .iter()
                .map(|i| {
                    (
                        i["productId"].as_str().unwrap_or_default().to_owned(),
                        i["quantity"].as_i64().unwrap_or_default(),
                    )
                })
                .collect();
            items.sort();
            let placed = Placed {
                customer: order["customerId"].as_str().unwrap_or_default().to_owned(),
                items,
                total: order["totalMinor"].as_i64().unwrap_or_default(),
            };
            *ledger.writes.entry(id.to_owned()).or_default() += 1;
            match ledger.placed.get(id) {
                Some(first) if *first != placed => ledger.rewritten += 1,
                Some(_) => {}
                None => {
                    ledger.placed.insert(id.to_owned(), placed);
                }
            }
        }
        let keys = topic(prefix, Service::Order, "idempotency");
        for record in read_settled(kafka, "chaos", &keys, timeout).await? {
            let key =
                String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned();
            match record.payload {
                Some(bytes) => {
                    let id: String = serde_json::from_slice(&bytes)?;
                    ledger.keys.insert(key, id);
                }
                None => {
                    ledger.keys.remove(&key);
                }
            }
        }
        let outcome_topic = topic(prefix, Service::Order, "outcome");
        for record in read_settled(kafka, "chaos", &outcome_topic, timeout).await? {
            let kind = record
                .headers
                .iter()
                .find(|(k, _)| k == "event-type")
                .and_then(|(_, v)| v.as_deref())
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            if kind == "SagaStepChanged"
                && let Some(payload) = &record.payload
            {
                let change: Value = serde_json::from_slice(payload)?;
                if change["phase"] == "STARTED" && change["attempt"] == 1 {
                    let saga = change["sagaId"].as_str().unwrap_or_default().to_owned();
                    let step = change["step"].as_str().unwrap_or_default().to_owned();
                    *ledger
                        .starts
                        .entry(saga)
                        .or_default()
                        .entry(step)
                        .or_default() += 1;
                }
            }
            if kind != "OrderCompleted" && kind != "OrderCancelled" {
                continue;
            }
            ledger.outcome_times.extend(record.timestamp);
            let key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default());
            ledger
                .outcomes
                .entry(key.into_owned())
                .or_default()
                .push(kind);
        }
        Ok(ledger)
    }

    /// Orders placed without an outcome yet.
    pub(crate) fn unfinished(&self) -> usize {
        self.placed
            .keys()
            .filter(|id| !self.outcomes.contains_key(*id))
            .count()
    }

    /// Orders with more than one outcome: a saga finished twice.
    pub(crate) fn finished_twice(&self) -> usize {
        self.outcomes.values().filter(|o| o.len() > 1).count()
    }

    /// Orders written more than once (`OrderPlaced` records beyond the first), except `allowed`:
    /// ids that two edges were asked for at once on purpose.
    pub(crate) fn written_twice(&self, allowed: &[String]) -> usize {
        self.writes
            .iter()
            .filter(|(id, n)| **n > 1 && !allowed.contains(*id))
            .count()
    }

    /// Orders whose saga started more than once (a first attempt of one step seen twice).
    pub(crate) fn started_twice(&self) -> usize {
        self.starts
            .values()
            .filter(|steps| steps.values().any(|n| *n > 1))
            .count()
    }

    /// The first outcome of an order, if it has one.
    fn outcome(&self, id: &str) -> Option<&str> {
        self.outcomes.get(id)?.first().map(String::as_str)
    }

    /// How many orders completed and how many were cancelled.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let count = |kind: &str| {
            self.placed
                .keys()
                .filter(|id| self.outcome(id) == Some(kind))
                .count()
        };
        (count("OrderCompleted"), count("OrderCancelled"))
    }

    /// Reads until every placed order has an outcome, or `timeout`.
    pub(crate) async fn settle(
        kafka: &KafkaConfig,
        prefix: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let deadline = Instant::now() + timeout;
        loop {
            let ledger = Self::read(kafka, prefix).await?;
            if ledger.unfinished() == 0 || Instant::now() > deadline {
                return Ok(ledger);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Differences between the books (stock, balances) and what the completed orders say they
    /// must be; empty when they add up exactly.
    pub(crate) async fn books(
        &self,
        kafka: &KafkaConfig,
        prefix: &str,
    ) -> anyhow::Result<Vec<String>> {
        let mut used: HashMap<&str, i64> = HashMap::new();
        let mut spent: HashMap<&str, i64> = HashMap::new();
        for (id, order) in &self.placed {
            if self.outcome(id) == Some("OrderCompleted") {
                for (product, quantity) in &order.items {
                    *used.entry(product).or_default() += quantity;
                }
                *spent.entry(&order.customer).or_default() += order.total;
            }
        }
        let mut wrong = Vec::new();
        let stock = latest(kafka, &topic(prefix, Service::Inventory, "stock")).await?;
        for (product, seeded) in STOCK {
            let expected = seeded - used.get(product).copied().unwrap_or(0);
            let now = stock.get(product).and_then(Value::as_i64).unwrap_or(seeded);
            if now != expected {
                wrong.push(format!("stock of {product}: {now}, expected {expected}"));
            }
        }
        let balances = latest(kafka, &topic(prefix, Service::Payment, "balances")).await?;
        let mut customers: Vec<&str> = self.placed.values().map(|o| o.customer.as_str()).collect();
        customers.sort_unstable();
        customers.dedup();
        for customer in customers {
            let expected = OPENING_BALANCE - spent.get(customer).copied().unwrap_or(0);
            let now = balances
                .get(customer)
                .and_then(Value::as_i64)
                .unwrap_or(OPENING_BALANCE);
            if now != expected {
                wrong.push(format!("balance of {customer}: {now}, expected {expected}"));
            }
        }
        Ok(wrong)
    }
}

/// The latest value per key of a compacted store topic.
pub(crate) async fn latest(
    kafka: &KafkaConfig,
    topic: &str,
) -> anyhow::Result<HashMap<String, Value>> {
    let records = read_settled(kafka, "chaos-books", topic, Duration::from_secs(60)).await?;
    let mut latest = HashMap::new();
    for record in records {
        let key = String::from_utf8_lossy(record.key.as_deref().unwrap_or_default()).into_owned();
        match record.payload {
            Some(bytes) => latest.insert(key, serde_json::from_slice(&bytes)?),
            None => latest.remove(&key),
        };
    }
    Ok(latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for `sagashop` in `dir`: a shell script of `body`.
    fn fake_sagashop(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("sagashop");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fleet-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn a_child_whose_port_was_taken_starts_again_on_another_port() {
        let dir = scratch("clash");
        let mark = dir.join("started-once");
        let body = format!(
            "if [ ! -e {m} ]; then touch {m}; echo 'Address already in use' >&2; exit 1; fi\nexit 2",
            m = mark.display()
        );
        let sagashop = fake_sagashop(&dir, &body);
        let mut proc = Proc::start(&sagashop, &dir, "p", Vec::new(), "127.0.0.1:9").unwrap();
        let first = proc.address.clone();
        let failed = proc.ready(Duration::from_secs(10)).await.unwrap_err();
        assert!(failed.to_string().contains("exited"), "{failed}");
        assert_ne!(proc.address, first, "not started again after the clash");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_exit_is_not_taken_for_a_port_clash_an_earlier_child_logged() {
        let dir = scratch("earlier-clash");
        std::fs::write(dir.join("p.log"), "Address already in use\n").unwrap();
        let sagashop = fake_sagashop(&dir, "exit 2");
        let mut proc = Proc::start(&sagashop, &dir, "p", Vec::new(), "127.0.0.1:9").unwrap();
        let first = proc.address.clone();
        let failed = proc.ready(Duration::from_secs(10)).await.unwrap_err();
        assert!(failed.to_string().contains("exited"), "{failed}");
        assert_eq!(
            proc.address, first,
            "started again for a clash it did not have"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn debug_durations_parse_in_every_unit() {
        assert_eq!(
            parse_debug_duration("263.5ms"),
            Some(Duration::from_micros(263_500))
        );
        assert_eq!(
            parse_debug_duration("1.5s"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_debug_duration("15µs"),
            Some(Duration::from_micros(15))
        );
        assert_eq!(parse_debug_duration("soon"), None);
    }
}

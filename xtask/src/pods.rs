//! The `pod-faults` scenario: the chart installed on the local node (`scripts/kube`), every
//! service a real pod of the image `scripts/image` built, against this suite's broker. Under a
//! continuous order load through the order Service (kube-proxy), one pod of each service is
//! deleted with `kubectl delete pod` in turn (its ReplicaSet starts another, the kubelet runs it),
//! then the participants are scaled 1 → 3 → 1 with `kubectl scale`. The books are those of every
//! scenario: nothing lost or finished twice, stock and balances exact.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::chaos::{ChaosArgs, Row, conclude, services, step};
use crate::fleet::{Broker, OPENING_BALANCE, STOCK};

/// The Kubernetes side of one run: a namespace with the release in it.
struct Release {
    namespace: String,
    dir: std::path::PathBuf,
}

impl Drop for Release {
    fn drop(&mut self) {
        let log = self.dir.join("uninstall.log");
        let _ = helm(
            &["uninstall", "sagashop", "-n", &self.namespace, "--wait"],
            &log,
        );
        let _ = kubectl(
            &["delete", "namespace", &self.namespace, "--wait=false"],
            &log,
        );
    }
}

/// Runs a tool of `.local/bin` (scripts/tools) with its output appended to `log`; its stdout.
fn tool(name: &str, args: &[&str], log: &Path) -> anyhow::Result<String> {
    let output = Command::new(sagashop_testkit::tool(name))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {name} (scripts/tools installs it)"))?;
    let mut text = format!("$ {name} {}\n", args.join(" "));
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    if !output.status.success() {
        bail!(
            "{name} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn kubectl(args: &[&str], log: &Path) -> anyhow::Result<String> {
    tool("kubectl", args, log)
}

fn helm(args: &[&str], log: &Path) -> anyhow::Result<String> {
    tool("helm", args, log)
}

/// The chart's values for this run: this suite's broker as pods reach it, the local image, the
/// suite's topic prefix, stock and balances, and no autoscaler (the scenario scales by hand).
fn values(pods_bootstrap: &str, prefix: &str) -> String {
    let stock = STOCK
        .iter()
        .map(|(p, q)| format!("{p}={q}"))
        .collect::<Vec<_>>()
        .join(",");
    format!(
        r#"kafka: {{enabled: false, bootstrapServers: "{pods_bootstrap}", allowFewerReplicas: true}}
image: {{repository: localhost/sagashop, tag: dev, pullPolicy: Never}}
topics: {{create: false}}
operator: {{replicas: 1}}
serviceDefaults:
  replicas: 1
  hpa: {{enabled: false}}
  env:
    SAGASHOP_TOPIC_PREFIX: "{prefix}"
    SAGASHOP_CREATE_TOPICS: "true"
    INVENTORY_STOCK: "{stock}"
    PAYMENT_OPENING_BALANCE: "{OPENING_BALANCE}"
    KAFKA_DELIVERY_TIMEOUT: "3s"
services:
  order:
    replicas: 2
"#
    )
}

/// Every Deployment of the release with all its replicas updated and Ready, and every service
/// rolled onto the saga's configuration (the operator stamps it once after the install).
fn settled(namespace: &str, log: &Path) -> anyhow::Result<bool> {
    let list: Value = serde_json::from_str(&kubectl(
        &["get", "deployments", "-n", namespace, "-o", "json"],
        log,
    )?)?;
    let items = list["items"].as_array().context("no Deployment list")?;
    Ok(items.len() == services().len() + 1
        && items.iter().all(|d| {
            let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
            let s = &d["status"];
            let stamped = d["metadata"]["name"] == "sagashop-operator"
                || d["spec"]["template"]["metadata"]["annotations"]["sagashop.dev/config-hash"]
                    .is_string();
            stamped
                && s["observedGeneration"] == d["metadata"]["generation"]
                && s["updatedReplicas"].as_i64() == Some(want)
                && s["readyReplicas"].as_i64() == Some(want)
                && s["replicas"].as_i64() == Some(want)
        }))
}

async fn wait_settled(namespace: &str, log: &Path, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !settled(namespace, log)? {
        if Instant::now() > deadline {
            bail!(
                "the release's Deployments were not all Ready within {timeout:?} (see {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// The chart installed into a namespace of its own on the local node, against `broker`: the
/// release (uninstalled when dropped), the order Service's address and notes.
async fn release(
    broker: &Broker,
    dir: &Path,
    prefix: &str,
    log: &Path,
) -> anyhow::Result<(Release, String, Vec<String>)> {
    let pods_bootstrap = broker
        .pods_bootstrap
        .clone()
        .context("the suite's broker does not listen for pods")?;
    let nodes = kubectl(&["get", "nodes", "-o", "name"], log).context(
        "pod-faults needs the local node: scripts/kube up (and KUBECONFIG), scripts/image, scripts/image k6",
    )?;
    if !nodes.contains("node/sagashop-node") {
        bail!("pod-faults needs the node sagashop-node (scripts/kube up); found: {nodes}");
    }
    let namespace = format!("chaos-pods-{}-{prefix}", std::process::id())
        .replace('.', "")
        .to_lowercase();
    kubectl(&["create", "namespace", &namespace], log)?;
    let release = Release {
        namespace: namespace.clone(),
        dir: dir.to_owned(),
    };
    let (base, notes) = install(&namespace, dir, &pods_bootstrap, prefix, log).await?;
    Ok((release, base, notes))
}

pub(crate) async fn run(
    args: &ChaosArgs,
    broker: &Broker,
    dir: &Path,
    prefix: &str,
) -> anyhow::Result<Row> {
    let log = dir.join("kubectl.log");
    let (release, base, mut notes) = release(broker, dir, prefix, &log).await?;
    let namespace = release.namespace.clone();
    step(&format!(
        "pod-faults: orders to the order Service at {base}"
    ));
    let (faults_done, load) = crate::fleet::steady_load(base, args.rate, args.duration);
    // Seven deletions and two scalings share the load's duration.
    let gap = args.duration / 10;
    notes.extend(delete_each(&namespace, gap, &log).await?);
    notes.extend(scale_participants(&namespace, gap, &log).await?);
    tokio::time::sleep(gap).await;
    faults_done.store(true, Ordering::SeqCst);
    let attempts = load.await?;
    let events = kubectl(&["get", "pods", "-n", &namespace, "-o", "wide"], &log)?;
    std::fs::write(dir.join("pods.txt"), events)?;
    let row = Row {
        scenario: crate::chaos::Scenario::PodFaults.name(),
        injection: format!(
            "the chart in pods on the local node: `kubectl delete pod` of each of the 7 services in turn, then the participants scaled 1 → 3 → 1, under {} orders/s through the order Service",
            args.rate
        ),
        notes,
        ..Row::default()
    };
    let (mut row, ledger) = conclude(args, broker, prefix, row, &attempts, &[]).await?;
    if ledger.unfinished() > 0 {
        row.notes.push(format!(
            "BROKEN: {} orders never finished",
            ledger.unfinished()
        ));
    }
    if row.no_answer > 0 {
        row.notes.push(format!(
            "{} requests had no answer (a connection to a pod that was stopping); {} orders were written without the client hearing (they finished like the others)",
            row.no_answer, row.unannounced
        ));
    }
    Ok(row)
}

/// `pod-outage`: the chart in pods, under load through the order Service, while the suite's
/// broker is away for `--long-down`. Nothing is restarted by hand: the pods wait it out (or
/// their liveness probe restarts them), every Deployment is Ready again, and every accepted
/// order finishes.
pub(crate) async fn outage(
    args: &ChaosArgs,
    broker: &Broker,
    dir: &Path,
    prefix: &str,
) -> anyhow::Result<Row> {
    let name = crate::chaos::Scenario::PodOutage.name();
    let log = dir.join("kubectl.log");
    let (release, base, mut notes) = release(broker, dir, prefix, &log).await?;
    let namespace = release.namespace.clone();
    step(&format!("{name}: orders to the order Service at {base}"));
    let (done, load) = crate::fleet::steady_load(base, args.rate, args.duration);
    tokio::time::sleep(args.duration / 4).await;
    let down = args.long_down;
    step(&format!("{name}: stopping the broker for {down:?}"));
    broker.stop(args.kill_broker)?;
    tokio::time::sleep(down).await;
    broker.start()?;
    let back = Instant::now();
    let back_wall = chrono::Utc::now().timestamp_millis();
    step(&format!(
        "{name}: broker back; waiting for every pod to be Ready"
    ));
    wait_settled(&namespace, &log, Duration::from_secs(300)).await?;
    notes.push(format!(
        "every Deployment Ready again {:.1?} after the broker was back",
        back.elapsed()
    ));
    tokio::time::sleep(args.duration / 4).await;
    done.store(true, Ordering::SeqCst);
    let attempts = load.await?;
    notes.push(restarts(&namespace, &log)?);
    let row = Row {
        scenario: name,
        injection: format!(
            "the chart in pods on the local node; the host's broker stopped for {down:?} under {} orders/s through the order Service, then started",
            args.rate
        ),
        notes,
        ..Row::default()
    };
    let (mut row, ledger) = conclude(args, broker, prefix, row, &attempts, &[]).await?;
    row.notes
        .push(crate::chaos::first_outcome_note(&ledger, back_wall));
    if ledger.unfinished() > 0 {
        row.notes.push(format!(
            "BROKEN: {} orders never finished",
            ledger.unfinished()
        ));
    }
    drop(release);
    Ok(row)
}

/// How many times each pod's containers were restarted (by a liveness probe, or an exit).
fn restarts(namespace: &str, log: &Path) -> anyhow::Result<String> {
    let pods: Value = serde_json::from_str(&kubectl(
        &["get", "pods", "-n", namespace, "-o", "json"],
        log,
    )?)?;
    let mut restarted = Vec::new();
    for pod in pods["items"].as_array().into_iter().flatten() {
        let count: i64 = pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["restartCount"].as_i64())
            .sum();
        if count > 0 {
            let name = pod["metadata"]["name"].as_str().unwrap_or("?");
            restarted.push(format!("{name} ×{count}"));
        }
    }
    Ok(if restarted.is_empty() {
        "no pod was restarted: every one waited the outage out".to_owned()
    } else {
        format!("restarted by Kubernetes: {}", restarted.join(", "))
    })
}

/// `helm install` of the chart into `namespace`, every pod Ready: the order Service's address
/// and a note of how long it took.
async fn install(
    namespace: &str,
    dir: &Path,
    pods_bootstrap: &str,
    prefix: &str,
    log: &Path,
) -> anyhow::Result<(String, Vec<String>)> {
    let values_file = dir.join("values.yaml");
    std::fs::write(&values_file, values(pods_bootstrap, prefix))?;
    let chart = std::env::current_dir()?.join("charts/sagashop");
    step(&format!("pod-faults: helm install into {namespace}"));
    let started = Instant::now();
    helm(
        &[
            "install",
            "sagashop",
            &chart.display().to_string(),
            "-n",
            namespace,
            "-f",
            &values_file.display().to_string(),
            "--wait",
            "--timeout",
            "5m",
        ],
        log,
    )?;
    wait_settled(namespace, log, Duration::from_secs(300)).await?;
    let notes = vec![format!(
        "helm install to every pod Ready and stamped: {:.1?}",
        started.elapsed()
    )];
    let ip = kubectl(
        &[
            "get",
            "service",
            "sagashop-order",
            "-n",
            namespace,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
        log,
    )?;
    Ok((format!("{}:8080", ip.trim()), notes))
}

/// `kubectl delete pod` of one pod of each service in turn, `gap` apart, each time waiting for
/// every Deployment to be Ready again: a note per service.
async fn delete_each(namespace: &str, gap: Duration, log: &Path) -> anyhow::Result<Vec<String>> {
    let mut notes = Vec::new();
    for service in services() {
        tokio::time::sleep(gap).await;
        let selector = format!("app.kubernetes.io/component={service}");
        let pod = kubectl(
            &[
                "get",
                "pods",
                "-n",
                namespace,
                "-l",
                &selector,
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ],
            log,
        )?;
        step(&format!("pod-faults: kubectl delete pod {pod}"));
        let down = Instant::now();
        kubectl(
            &["delete", "pod", "-n", namespace, pod.trim(), "--wait=false"],
            log,
        )?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        wait_settled(namespace, log, Duration::from_secs(180)).await?;
        notes.push(format!(
            "{service}: a new pod Ready {:.1?} after the delete",
            down.elapsed()
        ));
    }
    Ok(notes)
}

/// The participants scaled to 3 replicas, then back to 1, `gap` apart: a note per scaling.
async fn scale_participants(
    namespace: &str,
    gap: Duration,
    log: &Path,
) -> anyhow::Result<Vec<String>> {
    let mut notes = Vec::new();
    for replicas in ["3", "1"] {
        tokio::time::sleep(gap).await;
        let started = Instant::now();
        for participant in crate::names::PARTICIPANTS.map(sagashop_topology::Service::name) {
            step(&format!(
                "pod-faults: kubectl scale {participant} --replicas {replicas}"
            ));
            kubectl(
                &[
                    "scale",
                    "deployment",
                    &format!("sagashop-{participant}"),
                    "-n",
                    namespace,
                    "--replicas",
                    replicas,
                ],
                log,
            )?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        wait_settled(namespace, log, Duration::from_secs(180)).await?;
        notes.push(format!(
            "participants scaled to {replicas}: Ready in {:.1?}",
            started.elapsed()
        ));
    }
    Ok(notes)
}

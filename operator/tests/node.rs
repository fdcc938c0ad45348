//! The brief's path on a real node (`scripts/kube up`): `helm install` of the chart against the
//! host's Kafka, as on GKE with an external Kafka; every pod Running and Ready through its real
//! probes; the operator in-cluster under the chart's ServiceAccount reconciling the Saga and
//! `kubectl apply -f k8s/topics.yaml`; an order placed through the order Service completing; the
//! k6 CronJob firing on its schedule; `helm upgrade` with a changed Saga rolling the services;
//! `helm uninstall` leaving nothing behind but what the chart promises to keep.
//!
//! Needs the node (`scripts/kube up`), the images (`scripts/image`, `scripts/image k6`) and a
//! broker that pods reach (`KAFKA_PODS_ADDRESS=198.18.0.1 scripts/kafka up`, then export what
//! `scripts/kafka pods` prints): `scripts/test` does all of it.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::print_stderr,
    reason = "test code: a panic is the failure report; the figures go to stderr"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{chart, config_hash, delete_namespace, helm, install_crds, kubectl, root};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::ListParams;
use sagashop_operator::{KafkaTopic, Saga};
use sagashop_testkit::{TestKube, eventually};
use serde_json::{Value, json};

const NODE: &str = "sagashop-node";
const IMAGE_REPOSITORY: &str = "localhost/sagashop";
const IMAGE_TAG: &str = "dev";
/// How long the chart may take to be Ready, a rollout to finish, or the CronJob to fire and run.
const SLOW: Duration = Duration::from_secs(300);

/// The broker's address as pods see it.
fn pods_bootstrap() -> String {
    std::env::var("KAFKA_PODS_BOOTSTRAP_SERVERS")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "KAFKA_PODS_BOOTSTRAP_SERVERS is not set: run the tests through scripts/test, or \
                 start the broker with KAFKA_PODS_ADDRESS=198.18.0.1 scripts/kafka up and export \
                 what `scripts/kafka pods` prints"
            )
        })
}

/// The node's images (its status lists them, refreshed every few seconds).
fn node_images(kube: &TestKube) -> BTreeSet<String> {
    let nodes: Value =
        serde_json::from_str(&kubectl(kube, &["get", "nodes", "-o", "json"])).unwrap();
    let node = nodes["items"]
        .as_array()
        .and_then(|items| items.iter().find(|n| n["metadata"]["name"] == NODE))
        .unwrap_or_else(|| {
            panic!("no node {NODE}: start the cluster with its node (scripts/kube up, not KUBE_NODE=false)")
        })
        .clone();
    node["status"]["images"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["names"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n.as_str().map(str::to_owned))
        .collect()
}

/// The node holds both images (the k6 one's name is returned), or the test says what to run.
async fn require_node(kube: &TestKube) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let images = node_images(kube);
        let k6 = images
            .iter()
            .find(|n| n.starts_with("localhost/k6:"))
            .cloned();
        let sagashop = images.contains(&format!("{IMAGE_REPOSITORY}:{IMAGE_TAG}"));
        match k6 {
            Some(k6) if sagashop => return k6,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_secs(2)).await,
            _ => panic!(
                "the node lacks {IMAGE_REPOSITORY}:{IMAGE_TAG} or localhost/k6: run scripts/image \
                 and scripts/image k6 (it has {images:?})"
            ),
        }
    }
}

/// Every pod of the release that belongs to a Deployment: (name, Running and Ready, restarts).
async fn deployment_pods(kube: &TestKube, ns: &str) -> Vec<(String, bool, i32)> {
    let pods: Api<Pod> = Api::namespaced(kube.client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/instance=sagashop"))
        .await
        .unwrap();
    list.items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app.kubernetes.io/component"))
                .is_some_and(|c| c != "loadtest")
        })
        .map(|p| {
            let status = p.status.clone().unwrap_or_default();
            let ready = status.phase.as_deref() == Some("Running")
                && status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
            let restarts = status
                .container_statuses
                .iter()
                .flatten()
                .map(|c| c.restart_count)
                .sum();
            (p.metadata.name.clone().unwrap(), ready, restarts)
        })
        .collect()
}

/// Every Deployment of the release has all its replicas updated and Ready, and every service's
/// pod template carries the operator's configuration stamp: until it does, the operator is still
/// about to roll that Deployment, and its Service may briefly have no endpoints.
async fn rolled_out(kube: &TestKube, ns: &str) -> Option<Vec<Deployment>> {
    let deployments: Api<Deployment> = Api::namespaced(kube.client.clone(), ns);
    let list = deployments
        .list(&ListParams::default().labels("app.kubernetes.io/instance=sagashop"))
        .await
        .ok()?
        .items;
    let done = list.iter().all(|d| {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = d.status.clone().unwrap_or_default();
        let stamped = d.metadata.name.as_deref() == Some("sagashop-operator")
            || d.spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .is_some_and(|a| a.contains_key("sagashop.dev/config-hash"));
        stamped
            && status.observed_generation == d.metadata.generation
            && status.updated_replicas == Some(want)
            && status.ready_replicas == Some(want)
            && status.replicas == Some(want)
    });
    (done && list.len() == 8).then_some(list)
}

/// What a stuck release looks like: its pods, claims and events, each Deployment's readiness
/// and the end of its logs (of every container ever started, the previous one too).
fn diagnosis(kube: &TestKube, ns: &str) -> String {
    let run = |args: &[&str]| {
        let output = kube.kubectl().args(args).output().unwrap();
        format!(
            "$ kubectl {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    };
    let mut report = run(&["get", "pods,pvc,events", "-n", ns, "-o", "wide"]);
    let pods = run(&["get", "pods", "-n", ns, "-o", "name"]);
    for pod in pods.lines().filter(|l| l.starts_with("pod/")) {
        report.push_str(&run(&[
            "logs",
            "-n",
            ns,
            pod,
            "--all-containers",
            "--tail=40",
        ]));
        report.push_str(&run(&[
            "logs",
            "-n",
            ns,
            pod,
            "--all-containers",
            "--tail=20",
            "--previous",
        ]));
    }
    report
}

fn ready(conditions: Option<&Vec<sagashop_operator::Condition>>) -> bool {
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The order Service's address, reached from this machine through kube-proxy.
async fn order_service(kube: &TestKube, ns: &str) -> String {
    let services: Api<Service> = Api::namespaced(kube.client.clone(), ns);
    let order = services.get("sagashop-order").await.unwrap();
    let ip = order.spec.unwrap().cluster_ip.unwrap();
    assert!(
        ip.starts_with("198.19."),
        "the Service {ip} is outside 198.19.0.0/16"
    );
    format!("http://{ip}:8080")
}

async fn place_and_complete(base: &str) -> Value {
    let client = reqwest::Client::new();
    let body = json!({
        "customerId": "node-customer",
        "currency": "EUR",
        "items": [{"productId": "sku-1", "quantity": 1, "unitPrice": 1250}]
    });
    let placed = eventually("the order Service to accept an order", SLOW, || {
        let request = client.post(format!("{base}/api/orders")).json(&body).send();
        async move {
            let response = request.await.ok()?;
            (response.status() == 202).then_some(())?;
            response.json::<Value>().await.ok()
        }
    })
    .await;
    let id = placed["orderId"].as_str().unwrap().to_owned();
    eventually(&format!("order {id} to finish"), SLOW, || {
        let request = client.get(format!("{base}/api/orders/{id}")).send();
        async move {
            let order: Value = request.await.ok()?.json().await.ok()?;
            (order["status"] != "PENDING" && order["status"].is_string()).then_some(order)
        }
    })
    .await
}

/// The chart, copied, with one step's timeout changed in the shipped Saga: what a user does to
/// change the saga before `helm upgrade`.
fn chart_with_changed_saga(ns: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{ns}-chart"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let status = std::process::Command::new("cp")
        .args(["-rL", &chart(), dir.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let saga = dir.join("sagashop/files/order-fulfilment.yaml");
    let text = std::fs::read_to_string(&saga).unwrap();
    assert!(
        text.contains("timeout: 5s"),
        "the shipped saga has no 5s step timeout"
    );
    let retry = "      commandTopic: payment.commands.v1\n      retry: { maxAttempts: 6, initialBackoff: 100ms, maxBackoff: 10s }\n";
    let changed = text.replacen("timeout: 5s", "timeout: 7s", 1).replacen(
        "      commandTopic: payment.commands.v1\n",
        retry,
        1,
    );
    assert!(
        changed.contains("maxAttempts: 6"),
        "the shipped saga's payment participant moved"
    );
    std::fs::write(&saga, changed).unwrap();
    dir.join("sagashop")
}

/// The admin token the release is installed with (kept by the chart in a Secret).
const ADMIN_TOKEN: &str = "node-admin-token";

/// `http://<pod ip>:8080` of a running pod of `component`.
async fn pod_base(kube: &TestKube, ns: &str, component: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(kube.client.clone(), ns);
    let selector =
        format!("app.kubernetes.io/instance=sagashop,app.kubernetes.io/component={component}");
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap();
    let ip = list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .find_map(|p| p.status.and_then(|s| s.pod_ip))
        .unwrap_or_else(|| panic!("no running {component} pod"));
    format!("http://{ip}:8080")
}

/// Each running service pod's component and `GET /wiring` (pods are reachable from the node).
async fn served_wirings(kube: &TestKube, ns: &str) -> Vec<(String, Value)> {
    let pods: Api<Pod> = Api::namespaced(kube.client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/instance=sagashop"))
        .await
        .unwrap();
    let mut served = Vec::new();
    for pod in list.items {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let component = labels
            .get("app.kubernetes.io/component")
            .cloned()
            .unwrap_or_default();
        let ip = pod.status.and_then(|s| s.pod_ip);
        if matches!(component.as_str(), "loadtest" | "operator" | "kafka" | "")
            || pod.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let url = format!("http://{}:8080/wiring", ip.unwrap());
        let wiring: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        served.push((component, wiring));
    }
    served
}

/// Uninstalls the release and deletes its namespace when the test fails half-way, so that no
/// pod of a failed run keeps consuming from the shared broker.
struct Release {
    kubeconfig: std::path::PathBuf,
    namespace: String,
}

/// PATH with the project's kubectl first.
fn path_with_kubectl() -> String {
    let kubectl = sagashop_testkit::tool("kubectl");
    let dir = kubectl
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    format!("{dir}:{}", std::env::var("PATH").unwrap_or_default())
}

impl Drop for Release {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let _ = std::process::Command::new(sagashop_testkit::tool("helm"))
            .args(["uninstall", "sagashop", "-n", &self.namespace, "--wait"])
            .env("KUBECONFIG", &self.kubeconfig)
            .status();
        // Without the operator, the KafkaTopics' finalizers would hold the namespace forever.
        let script = format!(
            "for t in $(kubectl get sagashoptopics -n {ns} -o name); do \
               kubectl patch -n {ns} $t --type merge -p '{{\"metadata\":{{\"finalizers\":[]}}}}'; \
             done; kubectl delete namespace {ns} --wait=false",
            ns = self.namespace
        );
        let _ = std::process::Command::new("bash")
            .args(["-c", &script])
            .env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", path_with_kubectl())
            .status();
    }
}

/// One release on the node at a time: two on two cores would time each other out.
static ONE_RELEASE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_in_pods_on_a_real_node_from_install_to_uninstall() {
    let _one = ONE_RELEASE.lock().await;
    let kube = TestKube::connect().await;
    let k6_image = require_node(&kube).await;
    let bootstrap = pods_bootstrap();
    install_crds(&kube);
    let ns = kube.namespace("node").await;
    let _release = Release {
        kubeconfig: kube.kubeconfig.clone(),
        namespace: ns.clone(),
    };

    // The plain manifests' topics, in this namespace, for the in-cluster operator.
    let plain = std::fs::read_to_string(root().join("k8s/topics.yaml"))
        .unwrap()
        .replace("namespace: sagashop", &format!("namespace: {ns}"));
    let mut apply = kube.kubectl();
    apply
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped());
    let mut child = apply.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), plain.as_bytes()).unwrap();
    assert!(
        child.wait().unwrap().success(),
        "kubectl apply k8s/topics.yaml failed"
    );

    let (k6_repository, k6_tag) = k6_image.rsplit_once(':').unwrap();
    let sets = [
        "kafka.enabled=false".to_owned(),
        format!("kafka.bootstrapServers={bootstrap}"),
        // The host's one broker: fewer replicas than the production profile, knowingly.
        "kafka.allowFewerReplicas=true".to_owned(),
        "topics.create=false".to_owned(),
        format!("image.repository={IMAGE_REPOSITORY}"),
        format!("image.tag={IMAGE_TAG}"),
        "image.pullPolicy=Never".to_owned(),
        "loadTest.enabled=true".to_owned(),
        format!("loadTest.image={k6_repository}:{k6_tag}"),
        "loadTest.schedule=* * * * *".to_owned(),
        "loadTest.rate=5".to_owned(),
        "loadTest.duration=15s".to_owned(),
        "loadTest.p95Ms=2000".to_owned(),
        "loadTest.p99Ms=5000".to_owned(),
        format!("admin.token={ADMIN_TOKEN}"),
    ];
    let chart_dir = chart();
    let mut install = vec!["install", "sagashop", &chart_dir, "-n", &ns];
    for set in &sets {
        install.extend(["--set", set]);
    }
    install.extend(["--wait", "--timeout", "6m"]);
    let started = Instant::now();
    helm(&kube, &install);
    let rollout = eventually("every Deployment rolled out and Ready", SLOW, || {
        rolled_out(&kube, &ns)
    })
    .await;
    eprintln!(
        "node: helm install to every pod Ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Every Deployment's pods Running and Ready through their real probes, none restarted.
    let pods = deployment_pods(&kube, &ns).await;
    let expected: i32 = rollout
        .iter()
        .map(|d| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1))
        .sum();
    assert_eq!(pods.len(), usize::try_from(expected).unwrap(), "{pods:?}");
    for (name, ready, restarts) in &pods {
        assert!(ready, "{name} is not Running and Ready: {pods:?}");
        assert_eq!(*restarts, 0, "{name} restarted: {pods:?}");
    }
    eprintln!(
        "{}",
        kubectl(&kube, &["get", "pods", "-n", &ns, "-o", "wide"])
    );

    // The operator, in-cluster under the chart's ServiceAccount, reconciled the Saga and every
    // KafkaTopic, and nothing was forbidden to it.
    let sagas: Api<Saga> = Api::namespaced(kube.client.clone(), &ns);
    let saga = sagas.get("order-fulfilment").await.unwrap();
    assert!(
        ready(saga.status.as_ref().map(|s| &s.conditions)),
        "{saga:?}"
    );
    let topics: Api<KafkaTopic> = Api::namespaced(kube.client.clone(), &ns);
    let topic_list = topics.list(&ListParams::default()).await.unwrap().items;
    let unready: Vec<_> = topic_list
        .iter()
        .filter(|t| !ready(t.status.as_ref().map(|s| &s.conditions)))
        .map(|t| t.metadata.name.clone())
        .collect();
    assert!(
        topic_list.len() >= 26 && unready.is_empty(),
        "{} topics, not Ready: {unready:?}",
        topic_list.len()
    );
    let operator_logs = kubectl(
        &kube,
        &[
            "logs",
            "-n",
            &ns,
            "-l",
            "app.kubernetes.io/component=operator",
            "--tail=-1",
        ],
    );
    assert!(
        !operator_logs.contains("forbidden"),
        "the chart's RBAC refused the in-cluster operator something:\n{operator_logs}"
    );
    let sa = kubectl(
        &kube,
        &[
            "get",
            "pods",
            "-n",
            &ns,
            "-l",
            "app.kubernetes.io/component=operator",
            "-o",
            "jsonpath={.items[*].spec.serviceAccountName}",
        ],
    );
    assert!(
        sa.split_whitespace().all(|a| a == "sagashop-operator") && !sa.trim().is_empty(),
        "operator pods run as {sa:?}"
    );

    // An order through the order Service (kube-proxy) completes.
    let base = order_service(&kube, &ns).await;
    let order = place_and_complete(&base).await;
    assert_eq!(order["status"], "COMPLETED", "{order}");

    // The k6 CronJob fires on its schedule; its pod runs k6/load.js against the order Service
    // (by its DNS name) and prints the summary. Only a Job started after every Deployment settled
    // counts: one fired during the operator's rolling stamp may meet a Service without endpoints.
    let settled_at = k8s_openapi::jiff::Timestamp::now();
    let jobs: Api<Job> = Api::namespaced(kube.client.clone(), &ns);
    let job = eventually(
        "the load-test CronJob to fire and its Job to finish",
        SLOW,
        || {
            let jobs = jobs.clone();
            async move {
                let list = jobs
                    .list(&ListParams::default().labels("app.kubernetes.io/component=loadtest"))
                    .await
                    .ok()?;
                list.items.into_iter().find(|j| {
                    let s = j.status.clone().unwrap_or_default();
                    s.start_time.is_some_and(|t| t.0 >= settled_at)
                        && s.succeeded.unwrap_or(0) + s.failed.unwrap_or(0) > 0
                })
            }
        },
    )
    .await;
    let job_name = job.metadata.name.clone().unwrap();
    let owner = job
        .metadata
        .owner_references
        .iter()
        .flatten()
        .map(|o| format!("{}/{}", o.kind, o.name))
        .collect::<Vec<_>>();
    assert_eq!(owner, ["CronJob/sagashop-loadtest"]);
    let summary = kubectl(&kube, &["logs", "-n", &ns, &format!("job/{job_name}")]);
    eprintln!("node: the CronJob's k6 summary ({job_name}):\n{summary}");
    assert!(
        job.status.as_ref().and_then(|s| s.succeeded) == Some(1),
        "the load-test Job failed:\n{summary}"
    );
    let figure = |label: &str| -> Option<u64> {
        let line = summary
            .lines()
            .find(|l| l.trim_start().starts_with(label))?;
        line.trim_start()[label.len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    assert!(
        summary.contains("sagashop load at 5 orders/s against http://sagashop-order:8080")
            && figure("accepted (202)").is_some_and(|n| n > 0)
            && figure("finished sagas").is_some_and(|n| n > 0)
            && summary.contains("thresholds          all passed"),
        "no k6 summary with accepted and finished orders in the Job's logs:\n{summary}"
    );

    // `helm upgrade` with a changed Saga: the operator rewrites the configuration and rolls every
    // service onto it.
    let before: BTreeMap<String, Option<String>> = rollout
        .iter()
        .filter(|d| d.metadata.name.as_deref() != Some("sagashop-operator"))
        .map(|d| (d.metadata.name.clone().unwrap(), config_hash(d)))
        .collect();
    assert!(
        before.values().all(Option::is_some),
        "not every service was stamped with the saga's hash: {before:?}"
    );
    let old_pods: BTreeSet<String> = pods.iter().map(|p| p.0.clone()).collect();
    let changed_chart = chart_with_changed_saga(&ns);
    let mut upgrade = vec![
        "upgrade",
        "sagashop",
        changed_chart.to_str().unwrap(),
        "-n",
        &ns,
    ];
    for set in &sets {
        upgrade.extend(["--set", set]);
    }
    upgrade.extend(["--wait", "--timeout", "6m"]);
    let started = Instant::now();
    helm(&kube, &upgrade);
    let saga = sagas.get("order-fulfilment").await.unwrap();
    assert_eq!(
        saga.spec.steps[0].timeout, "7s",
        "the upgrade did not change the Saga"
    );
    let rolled = eventually(
        "every service rolled onto the changed saga",
        SLOW,
        || async {
            let list = rolled_out(&kube, &ns).await?;
            list.iter()
                .filter(|d| before.contains_key(d.metadata.name.as_deref().unwrap_or("")))
                .all(|d| {
                    let name = d.metadata.name.clone().unwrap();
                    config_hash(d).is_some() && config_hash(d) != before[&name]
                })
                .then_some(list)
        },
    )
    .await;
    let new_pods = deployment_pods(&kube, &ns).await;
    eprintln!(
        "node: helm upgrade with a changed Saga rolled {} Deployments in {:.1}s",
        rolled.len() - 1,
        started.elapsed().as_secs_f64()
    );
    for (name, ready, _) in &new_pods {
        let component = name.rsplitn(3, '-').last().unwrap_or(name);
        if component == "sagashop-operator" {
            continue;
        }
        assert!(!old_pods.contains(name), "{name} was not replaced");
        assert!(ready, "{name} is not Ready after the rollout");
    }
    let configmap = kubectl(
        &kube,
        &[
            "get",
            "configmap",
            "saga-order-fulfilment",
            "-n",
            &ns,
            "-o",
            "json",
        ],
    );
    assert!(
        configmap.contains("7s"),
        "the saga ConfigMap does not have the new timeout"
    );
    // Every service runs on its wiring from that ConfigMap, the Saga's change included.
    let data: Value = serde_json::from_str::<Value>(&configmap).unwrap()["data"].clone();
    let payment: Value = serde_json::from_str(data["payment.json"].as_str().unwrap()).unwrap();
    assert_eq!(payment["retry"]["maxAttempts"], 6, "{payment}");
    let served = served_wirings(&kube, &ns).await;
    let services: BTreeSet<&String> = served.iter().map(|(c, _)| c).collect();
    assert_eq!(services.len(), 7, "{served:?}");
    for (component, wiring) in &served {
        let file = data[format!("{component}.json")]
            .as_str()
            .unwrap_or_default();
        let file: Value = serde_json::from_str(file).unwrap_or_default();
        assert_eq!(
            wiring,
            &json!([file]),
            "{component} does not run on its wiring"
        );
    }
    let order = place_and_complete(&base).await;
    assert_eq!(order["status"], "COMPLETED", "{order}");

    // The console is served by the orchestrator, and the chart's Secret reaches it: an action
    // without the token is refused; with it, it is judged (a completed saga cannot be retried).
    let orchestrator = pod_base(&kube, &ns, "orchestrator").await;
    let page = reqwest::get(format!("{orchestrator}/console"))
        .await
        .unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    assert!(page.text().await.unwrap().contains("sagashop console"));
    let about: Value = reqwest::get(format!("{orchestrator}/api/console"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(about["actions"], true, "{about}");
    let id = order["orderId"].as_str().unwrap();
    eventually("the orchestrator's view to have the saga", SLOW, || {
        let url = format!("{orchestrator}/api/sagas/{id}");
        async move {
            reqwest::get(url)
                .await
                .ok()?
                .status()
                .is_success()
                .then_some(())
        }
    })
    .await;
    let retry = |token: Option<&'static str>| {
        let mut request = reqwest::Client::new()
            .post(format!("{orchestrator}/api/sagas/{id}/retry"))
            .json(&json!({ "requestedBy": "node test", "reason": "check the token" }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(retry(None).await, reqwest::StatusCode::UNAUTHORIZED);
    assert_eq!(
        retry(Some(ADMIN_TOKEN)).await,
        reqwest::StatusCode::CONFLICT
    );

    // `helm uninstall` leaves only what the chart promises to keep: the CRDs (helm never deletes
    // them), the KafkaTopics applied by hand, and the topics in Kafka (deletionPolicy Retain).
    helm(&kube, &["uninstall", "sagashop", "-n", &ns, "--wait"]);
    let deadline = Instant::now() + SLOW;
    loop {
        let out = kubectl(
            &kube,
            &[
                "get",
                "deployments,replicasets,pods,services,configmaps,secrets,serviceaccounts,roles,\
                 rolebindings,cronjobs,jobs,horizontalpodautoscalers,poddisruptionbudgets,sagas,leases",
                "-n",
                &ns,
                "-o",
                "name",
            ],
        );
        let left: Vec<&str> = out
            .lines()
            .filter(|l| !matches!(*l, "configmap/kube-root-ca.crt" | "serviceaccount/default"))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "helm uninstall left these behind for {SLOW:?}: {left:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // The Saga's KafkaTopics went with it (Retain: no finalizer to wait for the operator);
    // the hand-applied ones stay, not even terminating.
    let by_hand: BTreeSet<String> = plain
        .split("\n---")
        .filter(|doc| doc.contains("kind: KafkaTopic"))
        .filter_map(|doc| {
            doc.lines()
                .find_map(|l| l.trim().strip_prefix("name: ").map(str::to_owned))
        })
        .collect();
    assert_eq!(by_hand.len(), 14, "{by_hand:?}");
    let deadline = Instant::now() + SLOW;
    loop {
        let kept = topics.list(&ListParams::default()).await.unwrap().items;
        let names: BTreeSet<String> = kept
            .iter()
            .filter_map(|t| t.metadata.name.clone())
            .collect();
        let terminating = kept.iter().any(|t| t.metadata.deletion_timestamp.is_some());
        if names == by_hand && !terminating {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after helm uninstall the KafkaTopics are {names:?} (terminating: {terminating}), expected {by_hand:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    delete_namespace(&kube, &ns).await;
    let _ = std::fs::remove_dir_all(changed_chart.parent().unwrap());
}

/// The `--set`s of the README's minikube install (`helm install sagashop charts/sagashop …` in
/// its "Install on minikube" block), so this test runs the command a newcomer copies.
fn readme_install_sets() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Install on minikube"))
        .expect("README.md has no \"## Install on minikube\" section");
    // The command's line and its continuation lines (ending in a backslash).
    let lines = section
        .lines()
        .skip_while(|l| !l.starts_with("helm install sagashop charts/sagashop"));
    let mut command = String::new();
    for line in lines {
        let line = line.split(" #").next().unwrap().trim_end();
        command.push_str(line.trim_end_matches('\\'));
        command.push(' ');
        if !line.ends_with('\\') {
            break;
        }
    }
    assert!(
        command.contains("-n sagashop --create-namespace"),
        "the README's minikube install is not `helm install sagashop charts/sagashop -n sagashop \
         --create-namespace …`: {command:?}"
    );
    let words: Vec<&str> = command.split_whitespace().collect();
    let sets: Vec<String> = words
        .windows(2)
        .filter(|w| w[0] == "--set")
        .map(|w| w[1].to_owned())
        .collect();
    let flags: Vec<&&str> = words
        .iter()
        .filter(|w| w.starts_with("--") && !matches!(**w, "--set" | "--create-namespace"))
        .collect();
    assert!(
        flags.is_empty(),
        "the README's install has flags this test does not run: {flags:?}"
    );
    sets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_install_runs_as_the_readme_says_with_its_bundled_kafka() {
    let _one = ONE_RELEASE.lock().await;
    let kube = TestKube::connect().await;
    let k6_image = require_node(&kube).await;
    let kafka_image = node_images(&kube)
        .into_iter()
        .find(|n| n.starts_with("localhost/kafka:"))
        .expect("the node lacks localhost/kafka: run scripts/image kafka");
    install_crds(&kube);
    let ns = kube.namespace("default").await;
    let _release = Release {
        kubeconfig: kube.kubeconfig.clone(),
        namespace: ns.clone(),
    };
    // The README's command, word for word, with only the images pointed at what this node holds
    // (minikube would hold sagashop:0.1.0 from `minikube image build`, and pull apache/kafka and
    // grafana/k6; nothing is pulled here).
    let mut sets = readme_install_sets();
    assert!(
        sets.iter().any(|s| s == "loadTest.enabled=true"),
        "the README's install does not turn on the k6 CronJob: {sets:?}"
    );
    sets.extend([
        format!("image.repository={IMAGE_REPOSITORY}"),
        format!("image.tag={IMAGE_TAG}"),
        format!("kafka.image={kafka_image}"),
        format!("loadTest.image={k6_image}"),
    ]);
    let chart_dir = chart();
    let mut install = vec!["install", "sagashop", &chart_dir, "-n", &ns];
    for set in &sets {
        install.extend(["--set", set]);
    }
    let started = Instant::now();
    helm(&kube, &install);
    // Waited for here rather than by helm, so that a release that never gets Ready says why.
    loop {
        if rolled_out(&kube, &ns).await.is_some() {
            break;
        }
        if started.elapsed() > SLOW {
            let state = diagnosis(&kube, &ns);
            panic!("the default install was not Ready after {SLOW:?}:\n{state}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!(
        "node: the default install (bundled Kafka) to every pod Ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    eprintln!(
        "{}",
        kubectl(&kube, &["get", "pods,pvc", "-n", &ns, "-o", "wide"])
    );

    // The broker runs in its pod, on a claimed volume, and nothing restarted on the way.
    let pods = deployment_pods(&kube, &ns).await;
    assert!(
        pods.iter()
            .any(|(name, ready, _)| name == "sagashop-kafka-0" && *ready),
        "no Ready broker pod: {pods:?}"
    );
    for (name, ready, restarts) in &pods {
        assert!(ready, "{name} is not Running and Ready: {pods:?}");
        assert_eq!(
            *restarts,
            0,
            "{name} restarted: {pods:?}\n{}",
            diagnosis(&kube, &ns)
        );
    }
    let claim = kubectl(
        &kube,
        &[
            "get",
            "pvc",
            "data-sagashop-kafka-0",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.phase} {.spec.volumeName}",
        ],
    );
    assert!(claim.starts_with("Bound "), "the broker's claim: {claim:?}");
    let volume = claim.trim_start_matches("Bound ").to_owned();

    // The operator made every topic in the bundled broker.
    let topics: Api<KafkaTopic> = Api::namespaced(kube.client.clone(), &ns);
    let listed = topics.list(&ListParams::default()).await.unwrap().items;
    assert!(
        listed.len() >= 26
            && listed
                .iter()
                .all(|t| ready(t.status.as_ref().map(|s| &s.conditions))),
        "{} topics, not all Ready",
        listed.len()
    );

    let base = order_service(&kube, &ns).await;
    let Ok(order) = tokio::spawn(async move { place_and_complete(&base).await }).await else {
        panic!(
            "an order in the default install did not finish:\n{}",
            diagnosis(&kube, &ns)
        );
    };
    assert_eq!(order["status"], "COMPLETED", "{order}");

    // The k6 CronJob, run now as the docs say, passes its default thresholds.
    kubectl(
        &kube,
        &[
            "create",
            "job",
            "-n",
            &ns,
            "--from=cronjob/sagashop-loadtest",
            "k6-now",
        ],
    );
    let jobs: Api<Job> = Api::namespaced(kube.client.clone(), &ns);
    let job = eventually("the k6 Job to finish", SLOW, || {
        let jobs = jobs.clone();
        async move {
            let job = jobs.get("k6-now").await.ok()?;
            let s = job.status.clone().unwrap_or_default();
            (s.succeeded.unwrap_or(0) + s.failed.unwrap_or(0) > 0).then_some(job)
        }
    })
    .await;
    let summary = kubectl(&kube, &["logs", "-n", &ns, "job/k6-now"]);
    eprintln!("node: the default install's k6 run:\n{summary}");
    assert_eq!(
        job.status.and_then(|s| s.succeeded),
        Some(1),
        "the k6 Job failed:\n{summary}"
    );
    assert!(
        summary.contains("sagashop load at 20 orders/s against http://sagashop-order:8080")
            && summary.contains("thresholds          all passed"),
        "no passing k6 summary at the chart's defaults:\n{summary}"
    );

    helm(&kube, &["uninstall", "sagashop", "-n", &ns, "--wait"]);
    delete_namespace(&kube, &ns).await;
    recycle(&kube, &volume).await;
}

/// What a recycler does for the node's volumes (scripts/kube makes a few, Retain): once the
/// claim is gone, empty the folder and make the volume Available for the next claim.
async fn recycle(kube: &TestKube, volume: &str) {
    eventually(&format!("{volume} to be released"), SLOW, || async {
        let phase = kubectl(
            kube,
            &["get", "pv", volume, "-o", "jsonpath={.status.phase}"],
        );
        (phase == "Released").then_some(())
    })
    .await;
    let path = kubectl(
        kube,
        &["get", "pv", volume, "-o", "jsonpath={.spec.hostPath.path}"],
    );
    for entry in std::fs::read_dir(&path).unwrap() {
        let entry = entry.unwrap().path();
        if entry.is_dir() {
            std::fs::remove_dir_all(&entry).unwrap();
        } else {
            std::fs::remove_file(&entry).unwrap();
        }
    }
    kubectl(
        kube,
        &[
            "patch",
            "pv",
            volume,
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/spec/claimRef"}]"#,
        ],
    );
}

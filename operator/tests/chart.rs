//! The Helm chart against real helm and the real API server: it lints; it renders with defaults
//! and with every option, and the API server accepts every object; every container runs the one
//! image as non-root with probes and resources; the operator's role grants only what it uses;
//! and, installed, the operator — run as a local process under the chart's own ServiceAccount —
//! turns the chart's Saga and `k8s/topics.yaml` into Ready resources and real topics.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use common::{
    WAIT, chart, config_hash, delete_namespace, helm, in_kafka, install_crds, kubectl, root,
};
use kube::Api;
use sagashop_operator::{KafkaTopic, Saga};
use sagashop_testkit::{TestKafka, TestKube, eventually, tool};
use serde_json::Value;

/// `helm template` with `sets`, parsed into objects.
fn render(kube: &TestKube, namespace: &str, sets: &[&str]) -> (String, Vec<Value>) {
    let chart = chart();
    let mut args = vec!["template", "sagashop", &chart, "-n", namespace];
    for set in sets {
        // `values-*.yaml` is a values file of the chart; anything else a --set.
        match set.strip_prefix("values-") {
            Some(_) => args.extend(["-f", set]),
            None => args.extend(["--set", set]),
        }
    }
    let files: Vec<String> = args
        .iter()
        .map(|a| {
            if a.starts_with("values-") {
                format!("{chart}/{a}")
            } else {
                (*a).to_owned()
            }
        })
        .collect();
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let yaml = helm(kube, &args);
    let objects = serde_saphyr::from_multiple::<Option<Value>>(&yaml)
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    (yaml, objects)
}

/// `helm template` with `sets`, which must fail; its error output.
fn refused(sets: &[&str]) -> String {
    let mut command = Command::new(tool("helm"));
    command.args(["template", "sagashop", &chart()]);
    for set in sets {
        command.args(["--set", set]);
    }
    let output = command.output().unwrap();
    assert!(!output.status.success(), "helm accepted {sets:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const EVERY_OPTION: &[&str] = &[
    "metrics.serviceMonitor.enabled=true",
    "metrics.grafanaDashboard.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "networkPolicy.enabled=true",
    "metrics.podMonitoring.enabled=true",
    "metrics.gmpRules.enabled=true",
    "ingress.enabled=true",
    "ingress.console=true",
    "gateway.enabled=true",
    "gateway.parentRefs[0].name=external-http",
    "loadTest.enabled=true",
    "otel.endpoint=http://otel-collector:4318",
    "kafka.existingSecret=kafka-credentials",
];

/// The CRDs the optional features' objects need (prometheus-operator's, Google Managed
/// Prometheus's, the Gateway API's), as (group, kind, plural).
const FOREIGN_KINDS: &[(&str, &str, &str)] = &[
    ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
    ("monitoring.coreos.com", "PrometheusRule", "prometheusrules"),
    (
        "monitoring.googleapis.com",
        "PodMonitoring",
        "podmonitorings",
    ),
    ("monitoring.googleapis.com", "Rules", "rules"),
    ("gateway.networking.k8s.io", "HTTPRoute", "httproutes"),
];

/// What the owner of `kind` installs, reduced to what lets the API server accept one: the test
/// cluster has no prometheus-operator, GMP or Gateway controller.
fn foreign_crd(group: &str, kind: &str, plural: &str) -> String {
    format!(
        r#"{{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition",
"metadata":{{"name":"{plural}.{group}"{approval}}},
"spec":{{"group":"{group}","scope":"Namespaced",
"names":{{"kind":"{kind}","plural":"{plural}","singular":"{singular}","listKind":"{kind}List"}},
"versions":[{{"name":"v1","served":true,"storage":true,"schema":{{"openAPIV3Schema":{{"type":"object","x-kubernetes-preserve-unknown-fields":true}}}}}}]}}}}"#,
        singular = kind.to_lowercase(),
        // The Gateway API is a Kubernetes group: its CRDs carry their approval.
        approval = if group.ends_with(".k8s.io") {
            r#","annotations":{"api-approved.kubernetes.io":"https://github.com/kubernetes-sigs/gateway-api/pull/3328"}"#
        } else {
            ""
        }
    )
}

fn apply_stdin(kube: &TestKube, args: &[&str], input: &str) {
    let mut child = kube
        .kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_lints_and_the_api_server_accepts_it_with_defaults_and_every_option() {
    let kube = TestKube::connect().await;
    install_crds(&kube);
    for (group, kind, plural) in FOREIGN_KINDS {
        apply_stdin(
            &kube,
            &["apply", "--server-side", "-f", "-"],
            &foreign_crd(group, kind, plural),
        );
        kubectl(
            &kube,
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{plural}.{group}"),
            ],
        );
    }
    helm(&kube, &["lint", &chart()]);
    helm(
        &kube,
        &[
            "lint",
            &chart(),
            "--set",
            "kafka.enabled=false",
            "--set",
            "kafka.bootstrapServers=kafka:9092",
            "--set",
            "kafka.allowFewerReplicas=true",
        ],
    );
    let ns = kube.namespace("chart").await;
    let external = [
        "kafka.enabled=false",
        "kafka.bootstrapServers=kafka.example:9092",
        "saga.replicas=3",
        "topics.replicas=3",
    ];
    let mut variants: Vec<Vec<&str>> = vec![
        vec![],
        external.to_vec(),
        vec!["operator.watchAllNamespaces=true"],
        vec![
            "operator.watchAllNamespaces=true",
            "operator.watchNamespaces={a,b}",
        ],
    ];
    variants.extend(
        EVERY_OPTION
            .iter()
            .filter(|o| !o.starts_with("gateway."))
            .map(|o| vec![*o]),
    );
    variants.push(vec![
        "gateway.enabled=true",
        "gateway.parentRefs[0].name=external-http",
    ]);
    variants.push(EVERY_OPTION.to_vec());
    // The documented values files for GKE and for a Strimzi-run Kafka.
    variants.push(vec!["values-gke.yaml"]);
    variants.push(vec!["values-strimzi.yaml"]);
    variants.push(SECURED_KAFKA.to_vec());
    for sets in &variants {
        let (yaml, objects) = render(&kube, &ns, sets);
        assert!(
            objects.len() > 40,
            "{sets:?} rendered only {} objects",
            objects.len()
        );
        apply_stdin(
            &kube,
            &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
            &yaml,
        );
    }
    // A value the schema refuses is refused with the key's name.
    assert!(refused(&["loadTest.rate=lots"]).contains("/loadTest/rate"));
    // So are several namespaces without the cluster-wide watch they need.
    assert!(refused(&["operator.watchNamespaces={a,b}"]).contains("watchAllNamespaces=true"));
    // So is an external Kafka without an address.
    refused(&["kafka.enabled=false"]);
    // And settings for a service that does not exist (a typo would otherwise be ignored).
    assert!(refused(&["services.paymnet.replicas=3"]).contains("services.paymnet"));
    // And state changelogs partitioned unlike the saga's topics they belong to.
    assert!(refused(&["topics.partitions=8"]).contains("saga.partitions"));
    // And Kafka security settings that cannot work, each naming the value to fix.
    let external = [
        "kafka.enabled=false",
        "kafka.bootstrapServers=k:9093",
        "kafka.allowFewerReplicas=true",
    ];
    for (sets, names) in [
        (vec!["kafka.securityProtocol=SASL_SSL"], "kafka.enabled"),
        (
            vec!["kafka.securityProtocol=TLS"],
            "/kafka/securityProtocol",
        ),
        (
            [&external[..], &["kafka.securityProtocol=SASL_SSL"]].concat(),
            "kafka.saslMechanism",
        ),
        (
            [
                &external[..],
                &[
                    "kafka.securityProtocol=SASL_SSL",
                    "kafka.saslMechanism=SCRAM-SHA-512",
                ],
            ]
            .concat(),
            "kafka.existingSecret",
        ),
        (vec!["kafka.saslMechanism=PLAIN"], "kafka.saslMechanism"),
    ] {
        let error = refused(&sets);
        assert!(error.contains(names), "{sets:?}: {error}");
    }
    kube.delete_namespace(&ns).await;
}

/// An external Kafka with TLS and SCRAM: credentials from a Secret, the CA from another.
const SECURED_KAFKA: &[&str] = &[
    "kafka.enabled=false",
    "kafka.bootstrapServers=kafka.example:9093",
    "saga.replicas=3",
    "topics.replicas=3",
    "kafka.securityProtocol=SASL_SSL",
    "kafka.saslMechanism=SCRAM-SHA-512",
    "kafka.existingSecret=kafka-credentials",
    "kafka.tls.caSecret=kafka-ca",
    "kafka.tls.caKey=ca.pem",
];

#[tokio::test]
async fn kafka_tls_and_sasl_settings_reach_every_kafka_client() {
    let kube = TestKube::connect().await;
    let (_, objects) = render(&kube, "shop", SECURED_KAFKA);
    let mut clients = 0;
    for object in objects.iter().filter(|o| o["kind"] == "Deployment") {
        let name = object["metadata"]["name"].as_str().unwrap();
        let pod = &object["spec"]["template"]["spec"];
        let (_, c) = &containers(object)[0];
        let env: BTreeMap<&str, &str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
            .collect();
        assert_eq!(
            env.get("KAFKA_SECURITY_PROTOCOL"),
            Some(&"SASL_SSL"),
            "{name}"
        );
        assert_eq!(
            env.get("KAFKA_SASL_MECHANISM"),
            Some(&"SCRAM-SHA-512"),
            "{name}"
        );
        assert_eq!(
            env.get("KAFKA_SSL_CA_LOCATION"),
            Some(&"/etc/sagashop/kafka-ca/ca.crt"),
            "{name}"
        );
        // The password is never in the manifest: it comes from the Secret.
        assert!(!env.contains_key("KAFKA_SASL_PASSWORD"), "{name}");
        assert_eq!(
            c["envFrom"][0]["secretRef"]["name"], "kafka-credentials",
            "{name}"
        );
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "kafka-ca")
            .unwrap_or_else(|| panic!("{name}: no CA mount"));
        assert_eq!(mount["mountPath"], "/etc/sagashop/kafka-ca", "{name}");
        assert_eq!(mount["readOnly"], true, "{name}");
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "kafka-ca")
            .unwrap_or_else(|| panic!("{name}: no CA volume"));
        assert_eq!(volume["secret"]["secretName"], "kafka-ca", "{name}");
        assert_eq!(volume["secret"]["items"][0]["key"], "ca.pem", "{name}");
        assert_eq!(volume["secret"]["items"][0]["path"], "ca.crt", "{name}");
        clients += 1;
    }
    // Seven services and the operator.
    assert_eq!(clients, 8);
}

fn containers(object: &Value) -> Vec<(Value, Value)> {
    let pod = match object["kind"].as_str() {
        Some("CronJob") => &object["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &object["spec"]["template"]["spec"],
    };
    pod["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|c| (pod["securityContext"].clone(), c))
        .collect()
}

#[tokio::test]
async fn every_container_runs_non_root_with_resources_and_every_service_is_the_one_image_with_probes()
 {
    let kube = TestKube::connect().await;
    let (_, objects) = render(&kube, "shop", EVERY_OPTION);
    let image = "sagashop:0.1.0";
    let mut deployments = BTreeSet::new();
    let mut checked = 0;
    for object in &objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        if !matches!(kind, "Deployment" | "StatefulSet" | "CronJob") {
            continue;
        }
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        for (pod, c) in containers(object) {
            let what = format!("{kind} {name} container {}", c["name"]);
            let resources = &c["resources"];
            assert!(
                resources["requests"].is_object() && resources["limits"].is_object(),
                "{what}: resources"
            );
            let non_root = c["securityContext"]["runAsNonRoot"] == Value::Bool(true)
                || pod["runAsNonRoot"] == Value::Bool(true);
            assert!(non_root, "{what}: may run as root");
            assert_eq!(
                c["securityContext"]["allowPrivilegeEscalation"],
                Value::Bool(false),
                "{what}"
            );
            assert_eq!(
                c["securityContext"]["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{what}: capabilities kept"
            );
            let seccomp = if c["securityContext"]["seccompProfile"].is_object() {
                &c["securityContext"]["seccompProfile"]
            } else {
                &pod["seccompProfile"]
            };
            assert_eq!(
                seccomp["type"], "RuntimeDefault",
                "{what}: no seccomp profile"
            );
            if kind == "Deployment" {
                assert_eq!(c["image"], image, "{what}: not the one image");
                assert!(
                    c["livenessProbe"]["httpGet"]["path"] == "/healthz",
                    "{what}: liveness"
                );
                assert!(
                    c["readinessProbe"]["httpGet"]["path"] == "/readyz",
                    "{what}: readiness"
                );
                assert_eq!(
                    c["securityContext"]["readOnlyRootFilesystem"],
                    Value::Bool(true),
                    "{what}"
                );
                deployments.insert(name.clone());
            }
            checked += 1;
        }
    }
    // Seven services and the operator, plus the broker and the k6 CronJob.
    assert_eq!(deployments.len(), 8, "{deployments:?}");
    assert_eq!(checked, 10);
}

#[tokio::test]
async fn the_operators_role_grants_only_what_it_uses() {
    let kube = TestKube::connect().await;
    let (_, objects) = render(&kube, "shop", &[]);
    let role = objects
        .iter()
        .find(|o| o["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    granted.insert(format!(
                        "{}/{} {}",
                        group.as_str().unwrap(),
                        resource.as_str().unwrap(),
                        verb.as_str().unwrap()
                    ));
                }
            }
        }
    }
    let expected: BTreeSet<String> = [
        "sagashop.dev/sagashoptopics get",
        "sagashop.dev/sagashoptopics list",
        "sagashop.dev/sagashoptopics watch",
        "sagashop.dev/sagashoptopics create",
        "sagashop.dev/sagashoptopics patch",
        "sagashop.dev/sagashoptopics/status patch",
        "sagashop.dev/sagas/status patch",
        "sagashop.dev/sagas get",
        "sagashop.dev/sagas list",
        "sagashop.dev/sagas watch",
        "sagashop.dev/sagas/finalizers update",
        "/configmaps get",
        "/configmaps list",
        "/configmaps watch",
        "/configmaps create",
        "/configmaps patch",
        "apps/deployments get",
        "apps/deployments patch",
        "events.k8s.io/events create",
        "events.k8s.io/events patch",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(
        granted, expected,
        "the ClusterRole grants more or less than the operator uses"
    );
    // Nothing cluster-wide unless asked for: the default binds the role in one namespace.
    assert!(!objects.iter().any(|o| o["kind"] == "ClusterRoleBinding"));
}

/// A kubeconfig for the API server in `kube` that authenticates with `token`.
fn kubeconfig_with_token(kube: &TestKube, token: &str, path: &std::path::Path) {
    let cluster = kubectl(
        kube,
        &[
            "config",
            "view",
            "--raw",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server} {.clusters[0].cluster.certificate-authority-data}",
        ],
    );
    let (server, ca) = cluster.split_once(' ').unwrap();
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: operator\n  user:\n    token: {}\ncontexts:\n- name: operator\n  context:\n    cluster: test\n    user: operator\ncurrent-context: operator\n",
        token.trim()
    );
    std::fs::write(path, config).unwrap();
}

fn ready(conditions: Option<&Vec<sagashop_operator::Condition>>) -> bool {
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_installed_chart_and_plain_topics_are_reconciled_by_the_operator_under_its_own_account()
{
    let (kube, kafka) = (TestKube::connect().await, TestKafka::connect().await);
    install_crds(&kube);
    let ns = kube.namespace("install").await;
    let bootstrap = format!("kafka.bootstrapServers={}", kafka.config.bootstrap_servers);
    helm(
        &kube,
        &[
            "install",
            "sagashop",
            &chart(),
            "-n",
            &ns,
            "--set",
            "kafka.enabled=false",
            "--set",
            &bootstrap,
            "--set",
            "kafka.allowFewerReplicas=true",
            "--set",
            "topics.create=false",
        ],
    );
    // The plain manifests' topics, in this test's namespace.
    let plain = std::fs::read_to_string(root().join("k8s/topics.yaml"))
        .unwrap()
        .replace("namespace: sagashop", &format!("namespace: {ns}"));
    apply_stdin(&kube, &["apply", "-f", "-"], &plain);

    // The operator binary, with the token of the chart's ServiceAccount: the chart's RBAC is all
    // it has.
    let token = kubectl(
        &kube,
        &[
            "create",
            "token",
            "sagashop-operator",
            "-n",
            &ns,
            "--duration=1h",
        ],
    );
    let dir = std::env::temp_dir();
    let config = dir.join(format!("{ns}.kubeconfig"));
    kubeconfig_with_token(&kube, &token, &config);
    let log = dir.join(format!("{ns}-operator.log"));
    let mut operator = Command::new(env!("CARGO_BIN_EXE_sagashop-operator"))
        .arg("run")
        .env("KUBECONFIG", &config)
        .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.config.bootstrap_servers)
        .env("WATCH_NAMESPACES", &ns)
        .env("POD_NAMESPACE", &ns)
        .env("POD_NAME", "operator-0")
        .env("LEADER_ELECTION_LEASE", "sagashop-operator")
        .env("OPERATOR_HTTP", "127.0.0.1:0")
        .env("LOG_FORMAT", "text")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    let sagas: Api<Saga> = Api::namespaced(kube.client.clone(), &ns);
    let topics: Api<KafkaTopic> = Api::namespaced(kube.client.clone(), &ns);
    let outcome = tokio::time::timeout(WAIT, async {
        loop {
            let saga_ready = sagas
                .get_opt("order-fulfilment")
                .await
                .ok()
                .flatten()
                .is_some_and(|s| ready(s.status.as_ref().map(|s| &s.conditions)));
            let list = topics
                .list(&Default::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            let ready_topics = list
                .iter()
                .filter(|t| ready(t.status.as_ref().map(|s| &s.conditions)))
                .count();
            // Every topic `sagashop topics` lists: the saga's and the services' own.
            if saga_ready && ready_topics == 26 {
                return list;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    })
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &operator.id().to_string()])
        .status();
    let stopped = operator.wait().unwrap();
    let list = outcome.unwrap_or_else(|_| {
        panic!(
            "not everything Ready in time; the operator said:\n{}",
            logs()
        )
    });
    assert!(
        stopped.success(),
        "the operator exited with {stopped}:\n{}",
        logs()
    );
    assert!(
        !logs().contains("forbidden"),
        "the chart's RBAC refused the operator something:\n{}",
        logs()
    );
    for topic in &list {
        let name = sagashop_operator::topics::topic_name(topic);
        assert!(
            in_kafka(&kafka, &name).await.is_some(),
            "{name} is Ready but not in Kafka"
        );
    }
    // The saga rolled the chart's Deployments to its configuration.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(kube.client.clone(), &ns);
    let order = deployments.get("sagashop-order").await.unwrap();
    assert!(
        config_hash(&order).is_some(),
        "sagashop-order was not stamped"
    );
    eventually("the operator to have released its lease", WAIT, || async {
        let lease = kubectl(
            &kube,
            &[
                "get",
                "lease",
                "sagashop-operator",
                "-n",
                &ns,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
        );
        lease.trim().is_empty().then_some(())
    })
    .await;
    // An upgrade that would grow the partitions under the installed state is refused, and
    // changes nothing (helm renders against the cluster: `lookup` finds the running Saga).
    let grow = Command::new(tool("helm"))
        .args(["upgrade", "sagashop", &chart(), "-n", &ns, "--reuse-values"])
        .args(["--set", "saga.partitions=8", "--set", "topics.partitions=8"])
        .env("KUBECONFIG", &kube.kubeconfig)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&grow.stderr);
    assert!(!grow.status.success(), "helm grew the partitions: {said}");
    assert!(
        said.contains("cannot change from 4 to 8 on a running release"),
        "{said}"
    );
    let revision = helm(&kube, &["history", "sagashop", "-n", &ns, "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(&revision).unwrap().len(),
        1,
        "the refused upgrade left a revision: {revision}"
    );
    helm(&kube, &["uninstall", "sagashop", "-n", &ns]);
    delete_namespace(&kube, &ns).await;
}

/// Runs promtool in the chart's `files/`; panics with its output when it fails.
fn promtool(args: &[&str]) -> String {
    let output = Command::new(tool("promtool"))
        .args(args)
        .current_dir(root().join("charts/sagashop/files"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {}: {text}",
        args.join(" ")
    );
    text
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests_and_the_chart_ships_them() {
    // Valid PromQL and templates, and each alert fires (and stays quiet) when its unit tests say.
    assert!(promtool(&["check", "rules", "alerts.yaml"]).contains("SUCCESS: 6 rules found"));
    assert!(promtool(&["test", "rules", "alerts.test.yaml"]).contains("SUCCESS"));

    // The chart's PrometheusRule is that file: the same groups, rule for rule.
    let output = Command::new(tool("helm"))
        .args(["template", "sagashop", &chart(), "--set"])
        .arg("metrics.prometheusRule.enabled=true")
        .args(["--show-only", "templates/monitoring.yaml"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rendered: Value = serde_saphyr::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap();
    assert_eq!(rendered["kind"], "PrometheusRule");
    let file: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root().join("charts/sagashop/files/alerts.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(rendered["spec"]["groups"], file["groups"]);
    assert_eq!(file["groups"][0]["rules"].as_array().map(Vec::len), Some(6));
}

/// The image is named one way: the chart's default (`image.repository` at the chart's
/// appVersion) is what the Dockerfile's, the README's and the deploy guide's build lines tag, so
/// an install that follows them finds the image it built instead of pulling one nobody publishes.
#[test]
fn the_charts_default_image_is_the_one_the_docs_build() {
    let chart_dir = std::path::PathBuf::from(chart());
    let values = std::fs::read_to_string(chart_dir.join("values.yaml")).unwrap();
    let values: Value = serde_saphyr::from_str(&values).unwrap();
    let meta = std::fs::read_to_string(chart_dir.join("Chart.yaml")).unwrap();
    let meta: Value = serde_saphyr::from_str(&meta).unwrap();
    assert_eq!(
        values["image"]["tag"], "",
        "the tag should follow appVersion"
    );
    let image = format!(
        "{}:{}",
        values["image"]["repository"].as_str().unwrap(),
        meta["appVersion"].as_str().unwrap()
    );
    let root = chart_dir.join("../..");
    for file in ["Dockerfile", "README.md", "docs/deploy.md"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let builds: Vec<&str> = text
            .lines()
            .filter_map(|l| {
                l.split("image build -t ")
                    .nth(1)
                    .or_else(|| l.split("docker build -t ").nth(1))
            })
            .map(|rest| rest.split_whitespace().next().unwrap_or_default())
            .filter(|tag| !tag.contains("pkg.dev") && !tag.contains("REGION"))
            .collect();
        assert!(!builds.is_empty(), "{file} shows no build line");
        for tag in builds {
            assert_eq!(tag, image, "{file} builds {tag}, the chart runs {image}");
        }
    }
}

/// `k8s/README.md`'s block, line by line, against the API server: the CRDs and the namespace
/// for real, every other `apply` and `create` with `--dry-run=server` (nothing runs), the chart
/// rendered as it says. Every object lands in the namespace the block made, in that order.
#[tokio::test]
async fn the_plain_manifests_apply_into_their_namespace_in_the_documented_order() {
    let kube = TestKube::connect().await;
    let readme = std::fs::read_to_string(root().join("k8s/README.md")).unwrap();
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("k8s/README.md has no ```sh block");
    let rendered = std::env::temp_dir().join(format!("plain-{}.yaml", std::process::id()));
    let tools = tool("kubectl").parent().unwrap().display().to_string();
    let mut ran = 0;
    for line in block.lines() {
        let command = line.split(" #").next().unwrap().trim();
        if command.is_empty() {
            continue;
        }
        let real =
            command.contains("charts/sagashop/crds/") || command.contains("k8s/namespace.yaml");
        let mut command = command.replace("/tmp/sagashop.yaml", rendered.to_str().unwrap());
        if !real && command.starts_with("kubectl ") {
            command.push_str(" --dry-run=server");
        }
        let output = Command::new("bash")
            .args(["-c", &command])
            .current_dir(root())
            .env("KUBECONFIG", &kube.kubeconfig)
            .env(
                "PATH",
                format!("{tools}:{}", std::env::var("PATH").unwrap_or_default()),
            )
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "k8s/README.md: `{command}` failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        ran += 1;
    }
    assert_eq!(
        ran, 9,
        "k8s/README.md's block changed: teach this test its new lines"
    );
    let _ = std::fs::remove_file(&rendered);
    kube.delete_namespace("sagashop").await;
}

/// `(replicas, min.insync.replicas)` of every KafkaTopic the chart renders, and the Saga's
/// topic replicas (the operator gives its topics `min.insync.replicas=2` from 3 up: the
/// topology's own test checks that rule).
fn durability(objects: &[Value]) -> (Vec<(i64, Option<String>)>, i64) {
    let topics = objects
        .iter()
        .filter(|o| o["kind"] == "KafkaTopic")
        .map(|o| {
            let spec = &o["spec"];
            let insync = spec["config"]["min.insync.replicas"]
                .as_str()
                .map(str::to_owned);
            (spec["replicas"].as_i64().unwrap(), insync)
        })
        .collect();
    let saga = objects.iter().find(|o| o["kind"] == "Saga").unwrap();
    (
        topics,
        saga["spec"]["topicDefaults"]["replicas"].as_i64().unwrap(),
    )
}

#[tokio::test]
async fn external_kafka_gets_three_replicas_with_two_in_sync_and_fewer_only_when_asked() {
    let kube = TestKube::connect().await;
    // The bundled single broker: one replica, the broker's own min.insync.replicas.
    let (_, objects) = render(&kube, "default", &[]);
    let (topics, saga) = durability(&objects);
    assert!(topics.len() > 5, "{topics:?}");
    assert!(topics.iter().all(|t| *t == (1, None)), "{topics:?}");
    assert_eq!(saga, 1);
    // The GKE values: three replicas, a write on two brokers before it is acknowledged.
    for profile in [
        &["values-gke.yaml"][..],
        &["values-strimzi.yaml"][..],
        SECURED_KAFKA,
    ] {
        let (_, objects) = render(&kube, "default", profile);
        let (topics, saga) = durability(&objects);
        assert!(
            topics.iter().all(|t| *t == (3, Some("2".to_owned()))),
            "{profile:?}: {topics:?}"
        );
        assert_eq!(saga, 3, "{profile:?}");
    }
    // External Kafka with fewer replicas is refused, naming the way out...
    let external = ["kafka.enabled=false", "kafka.bootstrapServers=k:9092"];
    let error = refused(&external);
    assert!(
        error.contains("must be at least 3 with an external Kafka")
            && error.contains("kafka.allowFewerReplicas=true"),
        "{error}"
    );
    assert!(
        refused(&[&external[..], &["saga.replicas=3"]].concat()).contains("topics.replicas (1)")
    );
    // ...and taken when the user says they mean it.
    let (_, objects) = render(
        &kube,
        "default",
        &[&external[..], &["kafka.allowFewerReplicas=true"]].concat(),
    );
    assert!(durability(&objects).0.iter().all(|t| *t == (1, None)));
}

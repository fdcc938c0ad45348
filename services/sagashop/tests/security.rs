//! Kafka with TLS and SASL: a broker of its own that accepts only SASL_SSL with SCRAM-SHA-512
//! (`KAFKA_SECURITY=sasl_ssl scripts/kafka up`), and the settings a Kubernetes Secret gives the
//! services. With them an order goes through the whole saga; with a wrong password or without
//! the broker's CA, the error says which setting to check.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Dev, finished, output_text};
use reqwest::StatusCode;
use sagashop_testkit::unique_name;
use serde_json::{Value, json};

/// A SASL_SSL broker in its own state directory, stopped when dropped.
struct SecureBroker {
    run_dir: PathBuf,
    bootstrap: String,
    /// What `client.env` holds: the settings the chart's Secret provides.
    env: Vec<(String, String)>,
}

fn kafka_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/kafka")
}

impl SecureBroker {
    fn up() -> Self {
        let run_dir = std::env::temp_dir().join(unique_name("kafka-sasl"));
        let output = Command::new(kafka_script())
            .arg("up")
            .env("KAFKA_RUN_DIR", &run_dir)
            .env("KAFKA_SECURITY", "sasl_ssl")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "scripts/kafka up failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        let bootstrap = stdout
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("KAFKA_BOOTSTRAP_SERVERS="))
            .unwrap()
            .to_owned();
        let env = std::fs::read_to_string(run_dir.join("client.env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Self {
            run_dir,
            bootstrap,
            env,
        }
    }

    /// The client settings with `key` replaced (or removed when `value` is `None`).
    fn env_with(&self, key: &str, value: Option<&str>) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> =
            self.env.iter().filter(|(k, _)| k != key).cloned().collect();
        if let Some(value) = value {
            env.push((key.to_owned(), value.to_owned()));
        }
        env
    }

    /// `sagashop doctor` with `env`: its exit code and what it logged.
    fn doctor(&self, env: &[(String, String)]) -> (i32, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_sagashop"))
            .args(["doctor", "--timeout", "10s"])
            .env("KAFKA_BOOTSTRAP_SERVERS", &self.bootstrap)
            .env("LOG_FORMAT", "text")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        (output.status.code().unwrap_or(-1), output_text(&output))
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        let _ = Command::new(kafka_script())
            .arg("down")
            .env("KAFKA_RUN_DIR", &self.run_dir)
            .output();
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_secret_s_settings_an_order_completes_over_sasl_ssl() {
    let broker = SecureBroker::up();
    let keys: Vec<&str> = broker.env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "KAFKA_SECURITY_PROTOCOL",
            "KAFKA_SASL_MECHANISM",
            "KAFKA_SASL_USERNAME",
            "KAFKA_SASL_PASSWORD",
            "KAFKA_SSL_CA_LOCATION"
        ]
    );

    let (code, text) = broker.doctor(&broker.env);
    assert_eq!(code, 0, "{text}");
    assert!(
        !text.contains(&broker.env[3].1),
        "the password was logged: {text}"
    );
    // A password no message would say by chance: if the refusal's log names what it was
    // given, this finds it.
    let wrong = "wrong-Pa55word-7f3c9e";
    let (code, text) = broker.doctor(&broker.env_with("KAFKA_SASL_PASSWORD", Some(wrong)));
    assert_eq!(code, 69, "{text}");
    assert!(text.contains("refused the connection"), "{text}");
    assert!(text.contains("SASL authentication"), "{text}");
    assert!(!text.contains(wrong), "the password was logged: {text}");
    let (code, text) = broker.doctor(&broker.env_with("KAFKA_SSL_CA_LOCATION", None));
    assert_eq!(code, 69, "{text}");
    assert!(text.contains("certificate verify failed"), "{text}");
    let (code, text) = broker.doctor(&broker.env_with("KAFKA_SASL_MECHANISM", None));
    assert_eq!(code, 64, "{text}");
    assert!(text.contains("KAFKA_SASL_MECHANISM"), "{text}");

    // Every client of every service (admin, transactional producers, consumer groups) works
    // over SASL_SSL: an order goes through the whole saga.
    let prefix = format!("{}.", unique_name("sasl"));
    let dev = Dev::start_with(&broker.bootstrap, &broker.env, &prefix, &[]).await;
    let response = reqwest::Client::new()
        .post(format!("{}/api/orders", dev.base))
        .json(&json!({
            "customerId": "c-tls",
            "currency": "EUR",
            "items": [{"productId": "sku-1", "quantity": 1, "unitPrice": 100}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    let order = finished(&dev.base, body["orderId"].as_str().unwrap()).await;
    assert_eq!(order["status"], "COMPLETED", "{order}");
    dev.terminate();
}

//! `sagashop dev` as a child process on the real broker, for end-to-end tests.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    dead_code,
    unreachable_pub,
    reason = "test code: a panic is the failure report; not every test uses every helper"
)]

pub mod browser;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use sagashop_testkit::{TestKafka, eventually};
use serde_json::{Value, json};

/// The admin token every process started here takes (an `env` entry overrides it; a blank
/// one makes the process read-only).
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// How long any wait lasts.
pub const WAIT: Duration = Duration::from_secs(120);

/// A `sagashop dev` process.
pub struct Dev {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    prefix: String,
    log: std::path::PathBuf,
}

impl Dev {
    /// Starts `sagashop dev` with its own topic prefix and port, and waits until it is ready.
    pub async fn start(kafka: &TestKafka, prefix: &str, extra: &[&str]) -> Self {
        Self::start_with(&kafka.config.bootstrap_servers, &[], prefix, extra).await
    }

    /// Like [`Dev::start`], against `bootstrap` with more environment (`env`).
    pub async fn start_with(
        bootstrap: &str,
        env: &[(String, String)],
        prefix: &str,
        extra: &[&str],
    ) -> Self {
        Self::run_with("dev", bootstrap, env, prefix, extra).await
    }

    /// `sagashop <command>` (one service, say) with its own port, waited for like
    /// [`Dev::start`].
    pub async fn service(kafka: &TestKafka, command: &str, prefix: &str, extra: &[&str]) -> Self {
        Self::run_with(command, &kafka.config.bootstrap_servers, &[], prefix, extra).await
    }

    /// `sagashop <command>` against `bootstrap` with more environment (`env`), its own topic
    /// prefix and port, waited for like [`Dev::start`].
    pub async fn run_with(
        command: &str,
        bootstrap: &str,
        env: &[(String, String)],
        prefix: &str,
        extra: &[&str],
    ) -> Self {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let log = std::env::temp_dir().join(format!("{prefix}{command}-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut args = vec![command, "--topic-prefix", prefix];
        if command == "dev" {
            args.extend(["--summary-every", "0s"]);
        }
        let child = Command::new(env!("CARGO_BIN_EXE_sagashop"))
            .args(args)
            .args(["--http", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
            .env("SAGASHOP_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut dev = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            prefix: prefix.to_owned(),
            log,
        };
        dev.wait_ready().await;
        dev
    }

    /// Waits for `/readyz`.
    pub async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        let url = format!("{}/readyz", self.base);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("sagashop dev exited ({status}): {}", self.logs());
            }
            if let Ok(r) = client.get(&url).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sagashop dev not ready: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What it logged.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A topic name with its prefix.
    pub fn topic(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// SIGTERM, and wait for a graceful exit.
    pub fn terminate(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "sagashop dev exited with {status}: {}",
                    self.logs()
                );
                return;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("sagashop dev did not stop on SIGTERM: {}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: no drain, no commit.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        // Only reached when a test failed with the process still running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An order body of one line.
pub fn order(customer: &str, product: &str, quantity: i64, unit_price: i64) -> Value {
    json!({
        "customerId": customer,
        "currency": "EUR",
        "items": [{"productId": product, "quantity": quantity, "unitPrice": unit_price}],
    })
}

/// Posts `body` to `/api/orders`; returns the status and the JSON answer.
pub async fn post(
    base: &str,
    body: &Value,
    key: Option<&str>,
) -> Result<(StatusCode, Value), String> {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/api/orders"))
        .json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// Waits until the order is COMPLETED or CANCELLED; returns it.
pub async fn finished(base: &str, order_id: &str) -> Value {
    let client = reqwest::Client::new();
    let url = format!("{base}/api/orders/{order_id}");
    eventually(&format!("order {order_id} to finish"), WAIT, || {
        let request = client.get(&url).send();
        async move {
            let order: Value = request.await.ok()?.json().await.ok()?;
            (order["status"] != "PENDING" && order["status"].is_string()).then_some(order)
        }
    })
    .await
}

/// A finished command's stdout and stderr, in that order, as text.
pub fn output_text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The `/metrics` page of the process at `base`.
pub async fn metrics_page(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of `series` (its name and labels as the page prints them) on a metrics page.
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

//! `sagashop saga list|show|cancel|retry`: saga instances from an orchestrator's `/api/sagas`.

use std::io::Write;

use serde_json::Value;

use crate::cli::{EX_UNAVAILABLE, EX_USAGE, SagaAction};
use crate::commands::{Failure, fail, output};

pub(crate) async fn run(url: &str, token: Option<&str>, action: SagaAction) -> Result<(), Failure> {
    let base = url.trim_end_matches('/');
    let ask = |verb: &'static str, id: String, reason: String, by: String, follows| Act {
        base,
        verb,
        id,
        reason,
        requested_by: by,
        follows,
        token,
    };
    match action {
        SagaAction::List {
            status,
            step,
            older_than,
            customer,
            limit,
            cursor,
            json,
        } => {
            let query: Vec<(&str, String)> = [
                ("status", status),
                ("step", step),
                ("olderThan", older_than),
                ("customer", customer),
                ("limit", Some(limit.to_string())),
                ("cursor", cursor),
            ]
            .into_iter()
            .filter_map(|(name, value)| value.map(|v| (name, v)))
            .collect();
            let page = get(&format!("{base}/api/sagas"), &query).await?;
            print(&page, json, list)
        }
        SagaAction::Cancel {
            id,
            reason,
            requested_by,
        } => {
            ask("cancel", id, reason, requested_by, "its compensation")
                .send()
                .await
        }
        SagaAction::Retry {
            id,
            reason,
            requested_by,
        } => {
            ask("retry", id, reason, requested_by, "the new attempt")
                .send()
                .await
        }
        SagaAction::Versions { json } => {
            let answer = get(&format!("{base}/api/sagas/versions"), &[]).await?;
            print(&answer, json, versions)
        }
        SagaAction::Show { id, json } => {
            let instance = get(&format!("{base}/api/sagas/{id}"), &[]).await?;
            print(&instance, json, show)
        }
    }
}

/// Prints `answer` as the API's JSON with `--json`, else as `lines` writes it.
fn print(
    answer: &Value,
    json: bool,
    lines: fn(&mut std::io::StdoutLock<'static>, &Value) -> std::io::Result<()>,
) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    output(if json {
        writeln!(out, "{answer:#}")
    } else {
        lines(&mut out, answer)
    })
}

/// A `verb` (cancel, retry) request for saga `id`.
struct Act<'a> {
    base: &'a str,
    verb: &'static str,
    id: String,
    reason: String,
    requested_by: String,
    /// What `saga show` follows once it is accepted.
    follows: &'static str,
    token: Option<&'a str>,
}

impl Act<'_> {
    async fn send(self) -> Result<(), Failure> {
        let Self { base, verb, id, .. } = self;
        let body = serde_json::json!({ "requestedBy": self.requested_by, "reason": self.reason });
        let answer = send(
            reqwest::Method::POST,
            &format!("{base}/api/sagas/{id}/{verb}"),
            &[],
            Some((&body, self.token)),
        )
        .await?;
        output(writeln!(
            std::io::stdout().lock(),
            "{verb} of {id} accepted (request {}): `sagashop saga show {id}` follows {}",
            text(&answer, "requestId"),
            self.follows
        ))
    }
}

/// GETs `url` with `query`.
async fn get(url: &str, query: &[(&str, String)]) -> Result<Value, Failure> {
    send(reqwest::Method::GET, url, query, None).await
}

/// Sends a request to `url`: the JSON answer, or a failure that says what the API refused
/// (exit 64) or that nothing answered (exit 69).
async fn send(
    method: reqwest::Method,
    url: &str,
    query: &[(&str, String)],
    body: Option<(&Value, Option<&str>)>,
) -> Result<Value, Failure> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| fail(EX_USAGE)(e.into()))?;
    let mut address = reqwest::Url::parse(url)
        .map_err(|e| fail(EX_USAGE)(anyhow::anyhow!("--url: {url} is not a URL ({e})")))?;
    if !query.is_empty() {
        address.query_pairs_mut().extend_pairs(query);
    }
    let mut request = client.request(method, address);
    if let Some((body, token)) = body {
        request = request.json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
    }
    let response = request.send().await.map_err(|e| {
        fail(EX_UNAVAILABLE)(anyhow::anyhow!(
            "no answer from {url}: {e} (is sagashop running there? `scripts/dev` starts one; \
             --url or SAGASHOP_URL names another)"
        ))
    })?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| {
        fail(EX_UNAVAILABLE)(anyhow::anyhow!("{url} answered {status} with no JSON: {e}"))
    })?;
    if status.is_success() {
        return Ok(body);
    }
    let detail = body["detail"].as_str().unwrap_or("no detail");
    let code = if status.is_client_error() {
        EX_USAGE
    } else {
        EX_UNAVAILABLE
    };
    let hint = if status == reqwest::StatusCode::UNAUTHORIZED {
        " (give it with --token or SAGASHOP_ADMIN_TOKEN)"
    } else {
        ""
    };
    Err(fail(code)(anyhow::anyhow!("{status}: {detail}{hint}")))
}

fn text<'v>(value: &'v Value, field: &str) -> &'v str {
    value[field].as_str().unwrap_or("-")
}

/// How long ago an RFC 3339 time was, to the second.
fn age(at: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(at).map_or_else(
        |_| "-".to_owned(),
        |at| {
            let secs = (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
                .num_seconds()
                .max(0);
            humantime::format_duration(std::time::Duration::from_secs(secs.unsigned_abs()))
                .to_string()
                .replace(' ', "")
        },
    )
}

fn list(out: &mut impl Write, page: &Value) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<38} {:<13} {:<20} {:>7} {:>10}  CUSTOMER",
        "SAGA", "STATUS", "STEP", "ATTEMPT", "AGE"
    )?;
    for saga in page["sagas"].as_array().into_iter().flatten() {
        writeln!(
            out,
            "{:<38} {:<13} {:<20} {:>7} {:>10}  {}",
            text(saga, "sagaId"),
            text(saga, "status"),
            text(saga, "step"),
            saga["attempt"]
                .as_u64()
                .map_or("-".into(), |a| a.to_string()),
            age(text(saga, "startedAt")),
            text(saga, "customer"),
        )?;
    }
    let counts: Vec<String> = page["counts"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(status, n)| format!("{status} {n}"))
        .collect();
    writeln!(out, "kept: {}", counts.join(", "))?;
    let on: Vec<String> = page["versions"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(version, n)| format!("{version} {n}"))
        .collect();
    if on.len() > 1 {
        writeln!(out, "not ended, per version: {}", on.join(", "))?;
    }
    if let Some(next) = page["next"].as_str() {
        writeln!(out, "more: --cursor {next}")?;
    }
    Ok(())
}

fn show(out: &mut impl Write, saga: &Value) -> std::io::Result<()> {
    writeln!(
        out,
        "saga      {} ({})",
        text(saga, "sagaId"),
        text(saga, "saga")
    )?;
    writeln!(out, "status    {}", text(saga, "status"))?;
    writeln!(out, "step      {}", text(saga, "step"))?;
    writeln!(out, "customer  {}", text(saga, "customer"))?;
    writeln!(out, "version   {}", text(saga, "version"))?;
    writeln!(
        out,
        "started   {} ({} ago)",
        text(saga, "startedAt"),
        age(text(saga, "startedAt"))
    )?;
    if saga["reason"].is_string() {
        writeln!(
            out,
            "failed    {}: {}",
            text(saga, "failedStep"),
            text(saga, "reason")
        )?;
    }
    if saga["incident"].is_string() {
        writeln!(
            out,
            "incident  {} (FAILED: `sagashop saga retry` resumes it)",
            text(saga, "incident")
        )?;
    }
    writeln!(out, "timeline")?;
    for line in saga["timeline"].as_array().into_iter().flatten() {
        let detail = line["detail"]
            .as_str()
            .map(|d| format!("  {d}"))
            .unwrap_or_default();
        writeln!(
            out,
            "  {}  {:<20} {:<13} attempt {}{detail}",
            text(line, "at"),
            text(line, "step"),
            text(line, "phase"),
            line["attempt"].as_u64().unwrap_or(0),
        )?;
    }
    Ok(())
}

fn versions(out: &mut impl Write, answer: &Value) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<14} {:<8} {:>9}  STEPS",
        "VERSION", "CURRENT", "INSTANCES"
    )?;
    for v in answer["versions"].as_array().into_iter().flatten() {
        let steps: Vec<&str> = v["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        writeln!(
            out,
            "{:<14} {:<8} {:>9}  {}",
            text(v, "version"),
            if v["current"] == true { "yes" } else { "no" },
            v["instances"].as_u64().unwrap_or(0),
            steps.join(" > ")
        )?;
    }
    Ok(())
}

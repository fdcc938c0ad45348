//! `docs/openapi.yaml` against the code: every route the services declare is documented and
//! nothing else is, and a real `sagashop dev` on the real broker answers each documented
//! operation with a documented status and a body of the documented shape.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{ADMIN_TOKEN, Dev, finished, order, post};
use sagashop_testkit::{TestKafka, unique_name};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn document() -> Value {
    let text = std::fs::read_to_string(root().join("docs/openapi.yaml")).unwrap();
    serde_saphyr::from_str(&text).expect("docs/openapi.yaml is not YAML")
}

/// Every `.route("<path>", <methods>)` in the services' sources (tests excluded): the router
/// as the code declares it, as (METHOD, path).
fn declared_routes() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    let mut dirs = vec![root().join("services")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() && !matches!(name.as_str(), "tests" | "target" | "assets") {
                dirs.push(path);
            } else if name.ends_with(".rs") {
                files.push(path);
            }
        }
    }
    let mut routes = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        // Unit tests build routers of their own.
        let text = text.split("#[cfg(test)]").next().unwrap();
        for (at, _) in text.match_indices(".route(") {
            let rest = text[at + ".route(".len()..].trim_start();
            let Some(rest) = rest.strip_prefix('"') else {
                continue; // not a path literal (a kafka Router's `route(record)`)
            };
            let path = &rest[..rest.find('"').unwrap()];
            // The methods: the call's text up to its closing parenthesis.
            let mut depth = 1;
            let mut end = 0;
            for (i, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    end = i;
                    break;
                }
            }
            let call = &rest[..end];
            let mut found = false;
            for method in ["get", "post", "put", "patch", "delete"] {
                let plain = format!("{method}(");
                if call.match_indices(&plain).any(|(i, _)| {
                    i == 0
                        || !call.as_bytes()[i - 1].is_ascii_alphanumeric()
                            && call.as_bytes()[i - 1] != b'_'
                }) {
                    routes.insert((method.to_uppercase(), path.to_owned()));
                    found = true;
                }
            }
            assert!(
                found,
                "{}: no method in .route({path:?}, …)",
                file.display()
            );
        }
    }
    routes
}

fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| matches!(k.as_str(), "get" | "post" | "put" | "patch" | "delete"))
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect()
}

#[test]
fn every_route_of_the_code_is_documented_and_nothing_else_is() {
    let declared = declared_routes();
    assert!(
        declared.len() >= 20,
        "the route scan found too few routes: {declared:?}"
    );
    let documented = documented_routes(&document());
    let missing: Vec<_> = declared.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&declared).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/openapi.yaml is out of step with the code.\n  routes not documented: \
         {missing:?}\n  documented but not served: {extra:?}"
    );
}

/// Resolves a local `$ref`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let mut at = doc;
            for part in reference.trim_start_matches("#/").split('/') {
                at = &at[part];
            }
            assert!(!at.is_null(), "unresolved $ref {reference}");
            resolve(doc, at)
        }
        None => schema,
    }
}

/// The JSON Schema keywords the document uses (type, enum, required, properties,
/// additionalProperties, items, allOf, $ref), checked on `value`; every mismatch, by path.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    for part in schema["allOf"].as_array().into_iter().flatten() {
        let part = resolve(doc, part);
        // allOf parts add required fields and properties; the extra-property rule is this
        // schema's own.
        for name in part["required"].as_array().into_iter().flatten() {
            if value.get(name.as_str().unwrap()).is_none() {
                errors.push(format!("{at}: missing `{}`", name.as_str().unwrap()));
            }
        }
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let fits = types.iter().any(|t| match *t {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "integer" => value.is_i64() || value.is_u64(),
            "number" => value.is_number(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => false,
        });
        if !fits {
            errors.push(format!("{at}: {value} is not of type {types:?}"));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Some(object) = value.as_object() {
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap();
            if !object.contains_key(name) {
                errors.push(format!("{at}: missing `{name}`"));
            }
        }
        let mut properties = schema["properties"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        for part in schema["allOf"].as_array().into_iter().flatten() {
            if let Some(more) = resolve(doc, part)["properties"].as_object() {
                properties.extend(more.clone());
            }
        }
        for (name, field) in object {
            match (properties.get(name), &schema["additionalProperties"]) {
                (Some(property), _) => {
                    check(doc, property, field, &format!("{at}.{name}"), errors);
                }
                (None, Value::Bool(false)) => {
                    errors.push(format!("{at}: `{name}` is not documented"));
                }
                (None, extra @ Value::Object(_)) => {
                    check(doc, extra, field, &format!("{at}.{name}"), errors);
                }
                _ => {}
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            check(doc, items, item, &format!("{at}[{i}]"), errors);
        }
    }
}

/// Sends one request and checks the answer against the operation's documented responses:
/// the status is listed, the content type is the documented one, and a JSON body fits.
async fn exchange(
    doc: &Value,
    base: &str,
    method: &str,
    template: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{base}{path}");
    let mut request = match method {
        "GET" => client.get(&url),
        "POST" => client.post(&url),
        other => panic!("no {other} here"),
    };
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let text = response.text().await.unwrap();
    let operation = &doc["paths"][template][method.to_lowercase()];
    assert!(
        operation.is_object(),
        "{method} {template} is not in docs/openapi.yaml"
    );
    let documented = resolve(doc, &operation["responses"][status.to_string()]);
    assert!(
        documented.is_object(),
        "{method} {path} answered {status}, which docs/openapi.yaml does not list: {text}"
    );
    let content = documented["content"]
        .as_object()
        .unwrap_or_else(|| panic!("{method} {template}: response {status} documents no content"));
    let schema = content.get(&content_type).unwrap_or_else(|| {
        panic!(
            "{method} {path} answered {status} as {content_type:?}; documented: {:?}",
            content.keys().collect::<Vec<_>>()
        )
    })["schema"]
        .clone();
    let value = if content_type.contains("json") {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    } else {
        Value::String(text)
    };
    let mut errors = Vec::new();
    check(doc, &schema, &value, "body", &mut errors);
    assert!(
        errors.is_empty(),
        "{method} {path} ({status}) does not fit docs/openapi.yaml:\n  {}\n{value:#}",
        errors.join("\n  ")
    );
    (status, value)
}

#[tokio::test]
async fn a_running_system_answers_every_documented_operation_as_documented() {
    let kafka = TestKafka::connect().await;
    let prefix = format!("{}.", unique_name("openapi"));
    let dev = Dev::start(&kafka, &prefix, &[]).await;
    let doc = document();
    let base = dev.base.as_str();
    let doc_ref = &doc;
    let call = move |method: &'static str,
                     template: &'static str,
                     path: String,
                     body: Option<Value>| async move {
        exchange(doc_ref, base, method, template, &path, body, None).await
    };

    // The documented example is an order that completes.
    let example = doc["paths"]["/api/orders"]["post"]["requestBody"]["content"]["application/json"]
        ["example"]
        .clone();
    let (status, accepted) = call("POST", "/api/orders", "/api/orders".into(), Some(example)).await;
    assert_eq!(status, 202);
    let id = accepted["orderId"].as_str().unwrap().to_owned();
    assert_eq!(finished(base, &id).await["status"], "COMPLETED");
    // One that is cancelled, with a reason and a failed step.
    let (_, out_of_stock) = post(base, &order("c-2", "sku-unknown", 1, 10), None)
        .await
        .unwrap();
    let cancelled = out_of_stock["orderId"].as_str().unwrap().to_owned();
    assert_eq!(finished(base, &cancelled).await["status"], "CANCELLED");
    // Refusals are problem documents.
    let (status, _) = call(
        "POST",
        "/api/orders",
        "/api/orders".into(),
        Some(json!({"customerId": "c", "currency": "eur", "items": []})),
    )
    .await;
    assert_eq!(status, 422);

    for (template, path, want) in [
        ("/api/orders", "/api/orders?limit=5".to_owned(), 200),
        ("/api/orders", "/api/orders?status=LOST".to_owned(), 400),
        ("/api/orders/{id}", format!("/api/orders/{id}"), 200),
        ("/api/orders/{id}", format!("/api/orders/{cancelled}"), 200),
        (
            "/api/orders/{id}",
            "/api/orders/no-such-order".to_owned(),
            404,
        ),
        ("/api/sagas", "/api/sagas?limit=1".to_owned(), 200),
        ("/api/sagas", "/api/sagas?status=CANCELLED".to_owned(), 200),
        ("/api/sagas", "/api/sagas?colour=red".to_owned(), 400),
        ("/api/sagas/versions", "/api/sagas/versions".to_owned(), 200),
        ("/api/sagas/flow", "/api/sagas/flow".to_owned(), 200),
        (
            "/api/sagas/load",
            "/api/sagas/load?minutes=2".to_owned(),
            200,
        ),
        ("/api/sagas/{id}", format!("/api/sagas/{id}"), 200),
        ("/api/sagas/{id}", "/api/sagas/none".to_owned(), 404),
        ("/api/console", "/api/console".to_owned(), 200),
        ("/api/dead-letters", "/api/dead-letters".to_owned(), 200),
        ("/api/topics", "/api/topics".to_owned(), 200),
        (
            "/api/analytics/summary",
            "/api/analytics/summary".to_owned(),
            200,
        ),
        ("/console", "/console".to_owned(), 200),
        ("/console/", "/console/".to_owned(), 200),
        ("/console/console.js", "/console/console.js".to_owned(), 200),
        (
            "/console/console.css",
            "/console/console.css".to_owned(),
            200,
        ),
        ("/healthz", "/healthz".to_owned(), 200),
        ("/readyz", "/readyz".to_owned(), 200),
        ("/metrics", "/metrics".to_owned(), 200),
        ("/metrics/catalogue", "/metrics/catalogue".to_owned(), 200),
        ("/wiring", "/wiring".to_owned(), 200),
    ] {
        let (status, _) = call("GET", template, path.clone(), None).await;
        assert_eq!(status, want, "GET {path}");
    }

    // Actions: refused without the token, judged with it.
    let action = json!({"requestedBy": "openapi test", "reason": "check the document"});
    for verb in ["cancel", "retry"] {
        let template = if verb == "cancel" {
            "/api/sagas/{id}/cancel"
        } else {
            "/api/sagas/{id}/retry"
        };
        let path = format!("/api/sagas/{id}/{verb}");
        let (status, _) = call("POST", template, path.clone(), Some(action.clone())).await;
        assert_eq!(status, 401, "POST {path} without the token");
        let (status, _) = exchange(
            &doc,
            base,
            "POST",
            template,
            &path,
            Some(action.clone()),
            Some(ADMIN_TOKEN),
        )
        .await;
        assert_eq!(status, 409, "POST {path}: the saga has ended");
    }
    let replay = json!({"topic": "nowhere", "partition": 0, "offset": 0});
    let (status, _) = exchange(
        &doc,
        base,
        "POST",
        "/api/dead-letters/replay",
        "/api/dead-letters/replay",
        Some(replay),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(
        status, 400,
        "a replay from a topic that is not a dead-letter topic"
    );
    dev.terminate();
}

/// The topic index in `docs/api.md` names every topic the services need (the chart's committed
/// list, itself checked against `sagashop topics`) and every event schema.
#[test]
fn the_topic_index_names_every_topic_and_schema() {
    let index = std::fs::read_to_string(root().join("docs/api.md")).unwrap();
    let topics: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("charts/sagashop/files/topics.json")).unwrap(),
    )
    .unwrap();
    let topics: Vec<&str> = topics
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(topics.len(), 26, "{topics:?}");
    let mut missing: Vec<String> = topics
        .iter()
        .filter(|t| !index.contains(&format!("`{t}`")))
        .map(|t| (*t).to_owned())
        .collect();
    for schema in std::fs::read_dir(root().join("services/contracts/schemas")).unwrap() {
        let name = schema.unwrap().file_name().to_string_lossy().into_owned();
        let event = name.split('.').next().unwrap().to_owned();
        if !index.contains(&format!("`{event}`")) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/api.md, \"Topics, events and schemas\", lacks: {missing:?}"
    );
}

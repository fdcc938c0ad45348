//! How fast the saga read model answers with 10^6 instances kept: `cargo bench -p
//! sagashop-saga --bench view`. Prints the time of each kind of query (median of 20).

#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "a benchmark's report"
)]

use std::time::{Duration, Instant};

use sagashop_saga::Saga;
use sagashop_saga::machine::{Instance, Reply};
use sagashop_saga::view::{Cursor, Filter, SagaStatus, SagaView};

fn main() {
    let n: i64 = std::env::var("SAGAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let d = Saga::load(
        include_str!("../../../k8s/sagas/order-fulfilment.yaml"),
        "order-fulfilment.yaml",
    )
    .unwrap();
    let view = SagaView::new(std::sync::Arc::new(sagashop_saga::versions::Versions::new(
        d.clone(),
    )));
    let started = Instant::now();
    fill(&view, &d, n);
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into());
    println!(
        "filled {n} instances in {:.1} s; the process holds {rss}",
        started.elapsed().as_secs_f64()
    );
    let now = chrono::DateTime::from_timestamp_millis(n).unwrap();
    let cases = cases(&view, now);
    println!("| query | returned | median | max |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, filter) in cases {
        let mut times = Vec::new();
        let mut returned = 0;
        for _ in 0..20 {
            let t = Instant::now();
            returned = view.list(&filter, now).sagas.len();
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "| {name} | {returned} | {:.2} ms | {:.2} ms |",
            times[10].as_secs_f64() * 1000.0,
            times[19].as_secs_f64() * 1000.0
        );
    }
    let t = Instant::now();
    for k in 0..1000 {
        view.get(&format!("saga-{:08}", k * 997 % n));
    }
    println!(
        "| one instance by id (GET /api/sagas/{{id}}), mean of 1,000 | 1 | {:.3} ms | |",
        t.elapsed().as_secs_f64()
    );
    // What the console's flow and load pages ask every 2 s.
    let timed = |f: &dyn Fn() -> usize| {
        let mut times: Vec<Duration> = (0..20)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed()
            })
            .collect();
        times.sort();
        (f(), times[10], times[19])
    };
    for (name, (returned, median, max)) in [
        (
            "counts per step (GET /api/sagas/flow)",
            timed(&|| view.flow().len()),
        ),
        (
            "10 minutes of load (GET /api/sagas/load)",
            timed(&|| view.load(10).len()),
        ),
    ] {
        println!(
            "| {name} | {returned} | {:.2} ms | {:.2} ms |",
            median.as_secs_f64() * 1000.0,
            max.as_secs_f64() * 1000.0
        );
    }
}

/// Fills `view` with `n` instances of `d`: 1 in 1,000 left running, the rest completed.
fn fill(view: &SagaView, d: &sagashop_saga::Definition, n: i64) {
    for k in 0..n {
        let trigger = serde_json::json!({ "customerId": format!("c-{}", k % 10_000) });
        let (mut i, _) = Instance::start(
            d,
            format!("saga-{k:08}"),
            "c".into(),
            trigger.as_object().unwrap().clone(),
            k,
        );
        // 1 in 1,000 stays running; the rest complete.
        if k % 1000 != 0 {
            for command in ["ReserveInventory", "AuthorizePayment", "CreateShipment"] {
                let step = d.steps[i.step].name.clone();
                let _ = i.apply(d, &step, command, 1, &Reply::Succeeded, k + 1);
            }
        }
        view.apply(&i.saga_id.clone(), Some(&i));
    }
}

/// The queries timed: each kind of filter, a page of 50.
fn cases(view: &SagaView, now: chrono::DateTime<chrono::Utc>) -> Vec<(&'static str, Filter)> {
    let page = |filter: Filter| Filter {
        limit: 50,
        ..filter
    };
    let deep = view
        .list(
            &page(Filter {
                limit: 1000,
                ..Filter::default()
            }),
            now,
        )
        .next
        .and_then(|c| Cursor::parse(&c));
    vec![
        ("first page of 50, no filter", page(Filter::default())),
        (
            "page of 50 after a cursor",
            page(Filter {
                after: deep,
                ..Filter::default()
            }),
        ),
        (
            "status=RUNNING (1,000 of them)",
            page(Filter {
                status: Some(SagaStatus::Running),
                ..Filter::default()
            }),
        ),
        (
            "status=COMPLETED&olderThan (oldest first)",
            page(Filter {
                status: Some(SagaStatus::Completed),
                older_than: Some(Duration::from_millis(10)),
                ..Filter::default()
            }),
        ),
        (
            "customer=c-42 (100 of them)",
            page(Filter {
                customer: Some("c-42".into()),
                ..Filter::default()
            }),
        ),
        (
            "step=authorize-payment (none there)",
            page(Filter {
                step: Some("authorize-payment".into()),
                ..Filter::default()
            }),
        ),
    ]
}

//! One order is one trace: the W3C context in Kafka headers continues across a processor hop.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::Headers;
use sagashop_contracts::Envelope;
use sagashop_contracts::events::SagaStepChanged;
use sagashop_kit::telemetry::{self, LogFormat};
use sagashop_kit::{Monitor, Outgoing, Processor, ProcessorConfig, Publisher, Router};
use sagashop_testkit::{TestKafka, sequenced, unique_name};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(message: &impl Message) -> String {
    let headers = message.headers().unwrap();
    let value = headers
        .iter()
        .find(|h| h.key == "traceparent")
        .unwrap()
        .value
        .unwrap();
    String::from_utf8(value.to_vec()).unwrap()
}

#[tokio::test]
async fn the_trace_of_an_input_continues_in_its_outputs() {
    let _telemetry = telemetry::init(LogFormat::Text, "tracing-test").unwrap();
    let kafka = TestKafka::connect().await;
    let input = kafka.topic("trace-in", 1).await;
    let output = kafka.topic("trace-out", 1).await;
    let dlq = kafka.topic("trace-dlq", 1).await;

    let mut event = sequenced("order-1", 0);
    event.metadata.traceparent = Some(format!("00-{TRACE}-{PARENT_SPAN}-01"));
    let publisher = Publisher::new(&kafka.config, "test").unwrap();
    publisher
        .send_all(&[Outgoing::event(&input, &event).unwrap()])
        .await
        .unwrap();

    let router = {
        let output = output.clone();
        Router::new().on(&input, move |env: Envelope<SagaStepChanged>| {
            let output = output.clone();
            async move {
                let reply = Envelope::caused_by(&env.metadata, env.key.clone(), env.payload);
                Ok(vec![Outgoing::event(&output, &reply).unwrap()])
            }
        })
    };
    let processor = Processor::new(
        &kafka.config,
        ProcessorConfig::new(unique_name("trace"), &dlq),
        router,
        publisher,
        &Monitor::new(),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(processor.run(shutdown.clone()));

    let reader = kafka.consumer(&unique_name("trace-reader"));
    reader.subscribe(&[&output]).unwrap();
    let reply = tokio::time::timeout(WAIT, reader.recv())
        .await
        .unwrap()
        .unwrap();
    let parts: Vec<String> = traceparent(&reply).split('-').map(str::to_owned).collect();
    assert_eq!(parts[1], TRACE, "the output left the input's trace");
    assert_ne!(
        parts[2], PARENT_SPAN,
        "the output's parent must be the consumer span, not the input's"
    );
    assert_eq!(parts[2].len(), 16);

    shutdown.cancel();
    task.await.unwrap().unwrap();
}

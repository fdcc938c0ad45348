//! `sagashop dlq list|show|replay` against the real broker, through the real binary.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::process::{Command, Output};
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::Headers;
use sagashop_kit::dlq::dead_letter;
use sagashop_kit::{Publisher, Record};
use sagashop_testkit::{TestKafka, unique_name};

fn sagashop(kafka: &TestKafka, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sagashop"))
        .args(args)
        .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.config.bootstrap_servers)
        .env("LOG_FORMAT", "text")
        .output()
        .unwrap()
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "sagashop failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn poison(topic: &str, offset: i64, payload: &[u8]) -> Record {
    Record {
        topic: topic.to_owned(),
        partition: 0,
        offset,
        key: Some(b"order-7".to_vec()),
        payload: Some(payload.to_vec()),
        headers: vec![
            ("event-type".into(), Some(b"OrderPlaced".to_vec())),
            (
                "message-id".into(),
                Some(format!("id-{offset}").into_bytes()),
            ),
        ],
        timestamp: None,
    }
}

#[tokio::test]
async fn dead_letters_are_listed_shown_and_replayed_to_their_topic() {
    let kafka = TestKafka::connect().await;
    let origin = kafka.topic("dlq-origin", 1).await;
    let dlq = kafka.topic("dlq", 1).await;
    let letters = [
        dead_letter(
            &poison(&origin, 5, b"\xff\x00garbage"),
            &dlq,
            "orders",
            "invalid payload at `.`",
            0,
        ),
        dead_letter(
            &poison(&origin, 9, br#"{"ok":true}"#),
            &dlq,
            "orders",
            "card declined",
            3,
        ),
    ];
    Publisher::new(&kafka.config, "test")
        .unwrap()
        .send_all(&letters)
        .await
        .unwrap();

    let listed = stdout_of(&sagashop(&kafka, &["dlq", "--topic", &dlq, "list"]));
    assert!(listed.contains(&format!("{origin}/0@5")), "{listed}");
    assert!(listed.contains(&format!("{origin}/0@9")), "{listed}");
    assert!(listed.contains("card declined"), "{listed}");
    assert!(listed.contains("2 dead letter(s)"), "{listed}");

    let shown = stdout_of(&sagashop(
        &kafka,
        &["dlq", "show", "--topic", &dlq, "--offset", "0"],
    ));
    assert!(shown.contains("key:       order-7"), "{shown}");
    assert!(shown.contains("dlq-attempts: 0"), "{shown}");
    assert!(shown.contains(r"(not UTF-8) \xff\x00garbage"), "{shown}");

    let replayed = stdout_of(&sagashop(
        &kafka,
        &["dlq", "replay", "--topic", &dlq, "--offset", "1"],
    ));
    assert!(replayed.contains("1 record(s) replayed"), "{replayed}");
    let reader = kafka.consumer(&unique_name("dlq-origin"));
    reader.subscribe(&[&origin]).unwrap();
    let record = tokio::time::timeout(Duration::from_secs(30), reader.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.key(), Some(&b"order-7"[..]));
    assert_eq!(record.payload(), Some(&br#"{"ok":true}"#[..]));
    let names: Vec<&str> = record.headers().unwrap().iter().map(|h| h.key).collect();
    assert_eq!(
        names,
        ["event-type", "message-id"],
        "dlq-* headers must be gone"
    );

    let missing = sagashop(&kafka, &["dlq", "show", "--topic", &dlq, "--offset", "99"]);
    assert_eq!(missing.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("no dead letter at partition 0, offset 99")
    );
}

#[tokio::test]
async fn dlq_without_a_topic_or_with_an_unknown_one_is_a_usage_error() {
    let kafka = TestKafka::connect().await;
    let no_topic = sagashop(&kafka, &["dlq", "list"]);
    assert_eq!(no_topic.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&no_topic.stderr).contains("--topic"));

    let unknown = sagashop(&kafka, &["dlq", "list", "--topic", &unique_name("nope")]);
    assert_eq!(unknown.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("does not exist"));
}

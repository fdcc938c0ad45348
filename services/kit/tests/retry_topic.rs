//! The retry topic against the real broker: a record that keeps failing is parked and
//! re-consumed when due without holding up other keys, later records of its key stay behind
//! it (also across a restart), and exhausted redeliveries end in the dead-letter topic.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test code: a panic is the failure report"
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::Headers;
use sagashop_contracts::Envelope;
use sagashop_contracts::events::SagaStepChanged;
use sagashop_kit::redelivery::Parked;
use sagashop_kit::{
    FailurePolicy, HandlerError, Monitor, Outgoing, Processor, ProcessorConfig, Publisher,
    RetryPolicy, RetryTopic, Router, Stats, Store,
};
use sagashop_testkit::{TestKafka, eventually, sequenced, unique_name};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

/// (key, sequence) in the order handlers succeeded.
type Log = Arc<Mutex<Vec<(String, u32)>>>;
/// How many more times each (key, sequence) fails transiently.
type Failures = Arc<Mutex<HashMap<(String, u32), u32>>>;

struct Topics {
    input: String,
    retry: String,
    parked: String,
    dlq: String,
}

async fn topics(kafka: &TestKafka, prefix: &str) -> Topics {
    Topics {
        input: kafka.topic(&format!("{prefix}-in"), 1).await,
        retry: kafka.topic(&format!("{prefix}-retry"), 1).await,
        parked: kafka.topic(&format!("{prefix}-parked"), 1).await,
        dlq: kafka.topic(&format!("{prefix}-dlq"), 1).await,
    }
}

fn router(topic: &str, log: &Log, failures: &Failures, policy: FailurePolicy) -> Router {
    let (log, failures) = (log.clone(), failures.clone());
    Router::new().on_with(topic, policy, move |env: Envelope<SagaStepChanged>| {
        let (log, failures) = (log.clone(), failures.clone());
        async move {
            let id = (env.key.clone(), env.payload.attempt);
            if let Some(left) = failures.lock().unwrap().get_mut(&id)
                && *left > 0
            {
                *left -= 1;
                return Err(HandlerError::Transient("the warehouse timed out".into()));
            }
            log.lock().unwrap().push(id);
            Ok(vec![])
        }
    })
}

struct Running {
    stats: Arc<Stats>,
    parked: Store<Parked>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), sagashop_kit::Error>>,
}

async fn start(
    kafka: &TestKafka,
    topics: &Topics,
    group: &str,
    delay: Duration,
    router: Router,
) -> Running {
    let monitor = Monitor::new();
    let parked = Store::open(&kafka.config, "parked", &topics.parked, &monitor)
        .await
        .unwrap();
    let mut retry_topic = RetryTopic::new(&topics.retry, parked.clone());
    retry_topic.redeliveries = 3;
    retry_topic.delay = RetryPolicy {
        max_attempts: u32::MAX,
        initial_backoff: delay,
        max_backoff: delay,
    };
    let config = ProcessorConfig {
        // No in-place retries: every transient failure parks the record.
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        retry_topic: Some(retry_topic),
        ..ProcessorConfig::new(group, &topics.dlq)
    };
    let publisher = Publisher::new(&kafka.config, "test").unwrap();
    let processor = Processor::new(&kafka.config, config, router, publisher, &monitor).unwrap();
    let stats = processor.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(processor.run(shutdown.clone()));
    Running {
        stats,
        parked,
        shutdown,
        task,
    }
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the processor did not shut down")
            .unwrap()
            .unwrap();
    }
}

async fn publish(kafka: &TestKafka, topic: &str, events: &[(&str, u32)]) {
    let records: Vec<_> = events
        .iter()
        .map(|(key, seq)| Outgoing::event(topic, &sequenced(key, *seq)).unwrap())
        .collect();
    Publisher::new(&kafka.config, "test")
        .unwrap()
        .send_all(&records)
        .await
        .unwrap();
}

fn of_key(log: &Log, key: &str) -> Vec<u32> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, seq)| *seq)
        .collect()
}

#[tokio::test]
async fn a_parked_record_keeps_its_key_in_order_and_lets_other_keys_flow() {
    let kafka = TestKafka::connect().await;
    let topics = topics(&kafka, "park").await;
    let log = Log::default();
    // a/0 fails twice: parked, then parked again behind the records queued after it.
    let failures = Failures::new(Mutex::new(HashMap::from([(("a".to_owned(), 0), 2)])));
    publish(
        &kafka,
        &topics.input,
        &[("a", 0), ("a", 1), ("b", 0), ("a", 2), ("b", 1), ("b", 2)],
    )
    .await;
    let running = start(
        &kafka,
        &topics,
        &unique_name("park"),
        Duration::from_millis(400),
        router(&topics.input, &log, &failures, FailurePolicy::default()),
    )
    .await;

    eventually("every record to be handled", WAIT, || {
        let done = log.lock().unwrap().len() == 6;
        async move { done.then_some(()) }
    })
    .await;
    assert_eq!(of_key(&log, "a"), [0, 1, 2], "a's order: {log:?}");
    assert_eq!(of_key(&log, "b"), [0, 1, 2]);
    let order = log.lock().unwrap().clone();
    let first_a = order.iter().position(|(k, _)| k == "a").unwrap();
    let last_b = order.iter().rposition(|(k, _)| k == "b").unwrap();
    assert!(last_b < first_a, "b waited for the parked a: {order:?}");
    let stats = running.stats.snapshot();
    assert_eq!(stats.dead_lettered, 0);
    // a/0 twice, a/1 and a/2 queued behind it and re-queued behind its second parking.
    assert!(stats.parked >= 4, "{stats:?}");
    let parked = running.parked.clone();
    eventually("the key to be released", WAIT, || {
        let empty = parked.is_empty();
        async move { empty.then_some(()) }
    })
    .await;
    running.stop().await;
}

#[tokio::test]
async fn a_parked_key_stays_parked_across_a_restart() {
    let kafka = TestKafka::connect().await;
    let topics = topics(&kafka, "park-restart").await;
    let group = unique_name("park-restart");
    let log = Log::default();
    let failures = Failures::new(Mutex::new(HashMap::from([(("a".to_owned(), 0), 1)])));
    publish(&kafka, &topics.input, &[("a", 0), ("a", 1)]).await;
    let instance = async || {
        let router = router(&topics.input, &log, &failures, FailurePolicy::default());
        start(&kafka, &topics, &group, Duration::from_secs(3), router).await
    };
    let first = instance().await;
    let stats = first.stats.clone();
    eventually("a/0 parked and a/1 queued behind it", WAIT, || {
        let parked = stats.snapshot().parked;
        async move { (parked >= 2).then_some(()) }
    })
    .await;
    first.stop().await;
    assert!(log.lock().unwrap().is_empty());

    // A new instance: a/2 arrives while a/0 is still not due; it must not overtake it.
    let second = instance().await;
    publish(&kafka, &topics.input, &[("a", 2)]).await;
    eventually("every record to be handled", WAIT, || {
        let done = log.lock().unwrap().len() == 3;
        async move { done.then_some(()) }
    })
    .await;
    assert_eq!(of_key(&log, "a"), [0, 1, 2]);
    second.stop().await;
}

#[tokio::test]
async fn exhausted_redeliveries_end_in_the_dead_letter_topic_under_the_original_topic() {
    let kafka = TestKafka::connect().await;
    let topics = topics(&kafka, "park-dlq").await;
    let log = Log::default();
    let failures = Failures::new(Mutex::new(HashMap::from([(("a".to_owned(), 0), 100)])));
    publish(&kafka, &topics.input, &[("a", 0), ("a", 1)]).await;
    // This handler allows one redelivery, whatever the retry topic's default.
    let policy = FailurePolicy {
        retry: None,
        redeliveries: Some(1),
    };
    let running = start(
        &kafka,
        &topics,
        &unique_name("park-dlq"),
        Duration::from_millis(200),
        router(&topics.input, &log, &failures, policy),
    )
    .await;
    eventually("a/1 to be handled after a/0 gave up", WAIT, || {
        let done = of_key(&log, "a") == [1];
        async move { done.then_some(()) }
    })
    .await;
    assert_eq!(running.stats.snapshot().dead_lettered, 1);

    let reader = kafka.consumer(&unique_name("park-dlq-reader"));
    reader.subscribe(&[&topics.dlq]).unwrap();
    let letter = tokio::time::timeout(WAIT, reader.recv())
        .await
        .unwrap()
        .unwrap();
    let header = |name: &str| {
        letter
            .headers()
            .unwrap()
            .iter()
            .filter(|h| h.key == name)
            .last()
            .and_then(|h| h.value)
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
            .unwrap_or_else(|| panic!("no {name} header"))
    };
    assert_eq!(header("dlq-original-topic"), topics.input);
    assert_eq!(header("dlq-original-offset"), "0");
    assert!(
        header("dlq-error").contains("after 1 redeliveries"),
        "{}",
        header("dlq-error")
    );
    assert_eq!(letter.key(), Some(&b"a"[..]));
    running.stop().await;
}

//! `sagashop dlq list|show|replay`: the operator's view of dead letters.

use std::io::Write;
use std::time::Duration;

use sagashop_kit::dlq::{DeadLetter, header, read_dead_letters};
use sagashop_kit::{Delivered, KafkaConfig, Outgoing, Publisher};

use crate::cli::{DlqAction, EX_UNAVAILABLE, EX_USAGE};
use crate::commands::{Failure, fail, output};

pub(crate) async fn run(
    kafka: &KafkaConfig,
    topic: Option<String>,
    timeout: Duration,
    action: DlqAction,
) -> Result<(), Failure> {
    kafka.validate().map_err(|e| fail(EX_USAGE)(e.into()))?;
    let topic = topic.ok_or_else(|| {
        fail(EX_USAGE)(anyhow::anyhow!(
            "name the dead-letter topic with --topic or SAGASHOP_DLQ_TOPIC"
        ))
    })?;
    let letters = read_dead_letters(kafka, &topic, timeout)
        .await
        .map_err(|e| {
            let code = match e {
                sagashop_kit::Error::InvalidConfig { .. } => EX_USAGE,
                _ => EX_UNAVAILABLE,
            };
            fail(code)(e.into())
        })?;
    let mut out = std::io::stdout().lock();
    let written = match action {
        DlqAction::List => list(&mut out, &topic, &letters),
        DlqAction::Show { partition, offset } => {
            let letter = find(&letters, &topic, partition, offset)?;
            show(&mut out, letter)
        }
        DlqAction::Replay {
            partition,
            offset,
            all,
            to,
        } => {
            let chosen: Vec<&DeadLetter> = match offset {
                Some(offset) if !all => vec![find(&letters, &topic, partition, offset)?],
                _ => letters.iter().collect(),
            };
            return replay(&mut out, kafka, &chosen, to.as_deref()).await;
        }
    };
    output(written)
}

fn find<'a>(
    letters: &'a [DeadLetter],
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<&'a DeadLetter, Failure> {
    letters
        .iter()
        .find(|l| l.record.partition == partition && l.record.offset == offset)
        .ok_or_else(|| {
            fail(EX_USAGE)(anyhow::anyhow!(
                "`{topic}` has no dead letter at partition {partition}, offset {offset} \
                 (`sagashop dlq list` shows what there is)"
            ))
        })
}

fn field<'a>(letter: &'a DeadLetter, name: &str) -> &'a str {
    letter.header(name).unwrap_or("-")
}

fn list(out: &mut impl Write, topic: &str, letters: &[DeadLetter]) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<10} {:<8} {:<36} {:<18} {:<8} {:<24} ERROR",
        "PARTITION",
        "OFFSET",
        "FROM (topic/partition@offset)",
        "EVENT-TYPE",
        "ATTEMPTS",
        "FAILED-AT"
    )?;
    for letter in letters {
        let from = format!(
            "{}/{}@{}",
            field(letter, header::ORIGINAL_TOPIC),
            field(letter, header::ORIGINAL_PARTITION),
            field(letter, header::ORIGINAL_OFFSET)
        );
        writeln!(
            out,
            "{:<10} {:<8} {:<36} {:<18} {:<8} {:<24} {}",
            letter.record.partition,
            letter.record.offset,
            from,
            field(letter, "event-type"),
            field(letter, header::ATTEMPTS),
            field(letter, header::FAILED_AT),
            field(letter, header::ERROR).replace('\n', " ")
        )?;
    }
    writeln!(out, "{} dead letter(s) in {topic}", letters.len())
}

fn show(out: &mut impl Write, letter: &DeadLetter) -> std::io::Result<()> {
    let record = &letter.record;
    writeln!(out, "partition: {}", record.partition)?;
    writeln!(out, "offset:    {}", record.offset)?;
    writeln!(out, "key:       {}", printable(record.key.as_deref()))?;
    writeln!(out, "headers:")?;
    for (name, value) in &record.headers {
        writeln!(out, "  {name}: {}", printable(value.as_deref()))?;
    }
    let payload = record.payload.as_deref();
    writeln!(out, "payload ({} bytes):", payload.map_or(0, <[u8]>::len))?;
    writeln!(out, "{}", printable(payload))
}

/// Text as it is; anything else escaped, so that bytes that broke a decoder can be seen.
fn printable(bytes: Option<&[u8]>) -> String {
    match bytes {
        None => "(none)".to_owned(),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => text.to_owned(),
            Err(_) => format!("(not UTF-8) {}", bytes.escape_ascii()),
        },
    }
}

async fn replay(
    out: &mut impl Write,
    kafka: &KafkaConfig,
    letters: &[&DeadLetter],
    to: Option<&str>,
) -> Result<(), Failure> {
    let records = letters
        .iter()
        .map(|l| l.replay(to))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(EX_USAGE)(e.into()))?;
    let publisher =
        Publisher::new(kafka, "dlq-replay").map_err(|e| fail(EX_UNAVAILABLE)(e.into()))?;
    let delivered = publisher
        .send_all(&records)
        .await
        .map_err(|e| fail(EX_UNAVAILABLE)(e.into()))?;
    output(report_replay(out, letters, &records, &delivered))
}

fn report_replay(
    out: &mut impl Write,
    letters: &[&DeadLetter],
    records: &[Outgoing],
    delivered: &[Delivered],
) -> std::io::Result<()> {
    for ((letter, record), at) in letters.iter().zip(records).zip(delivered) {
        writeln!(
            out,
            "replayed {}@{} -> {} (partition {}, offset {})",
            letter.record.partition, letter.record.offset, record.topic, at.partition, at.offset
        )?;
    }
    writeln!(out, "{} record(s) replayed", records.len())
}

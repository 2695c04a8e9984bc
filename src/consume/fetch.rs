//! One partition's reader: from the group's stored position into the
//! writer's queue, each record already validated into a history row or a
//! dead letter: the readers do that work while the writer commits the batch
//! before (what it bought: `docs/history.md`).
//!
//! A stored offset only means something in the log it was read from. The
//! broker on the other end may lose its storage, or the topic may be deleted
//! and created again: the partition then starts a new log at offset 0, and
//! waiting at the old offset would skip (or wait for) records that are new
//! events. So before reading on, after every start and every failed fetch
//! (a broker that comes back may be a new one), the reader looks at the log:
//! does it reach the stored offset, and is the record just before it the
//! one stored last? If not, the partition starts again in the new log
//! (as `CONSUMER_START_FROM` says), under a new log epoch, so its records
//! are never taken for the old log's records with the same offsets.
//!
//! The move to the new log travels through the queue like the records
//! ([`Work::NewLog`]), so the writer commits everything read from the old
//! log before it.

use deadpool_postgres::Pool;
use rskafka::client::partition::OffsetAt;
use rskafka::record::RecordAndOffset;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{ConsumeError, ConsumerSettings};
use crate::config::StartFrom;
use crate::event::{self, Event};
use crate::kafka::{self, Broker, KafkaError, LogCheck, Partition, RecordMark};
use crate::metrics::names;
use crate::retry::{Backoff, Streak};
use crate::store::{Batch, DeadLetter, NewLog, Position, Row, positions};

/// Most bytes asked for in one fetch: about a batch of simulated events
/// (5,000 of some 200 bytes), so that after a start the first batch is
/// ready once that much is read and checked, not four times as much (a
/// larger record still comes whole: brokers send at least one).
const FETCH_MAX_BYTES: i32 = 1024 * 1024;

/// Most records validated and handed over at once: the writer takes
/// what is there (merging chunks up to a batch), so a small chunk lets the
/// first batch go sooner.
const CHUNK: usize = 1_000;

/// What a reader hands the writer, in order.
#[derive(Debug)]
pub enum Work {
    /// Records of one partition, read from the log of `log_epoch`, already
    /// validated into history rows and dead letters with the partition's
    /// position after them: the reader does that work, beside the writer's
    /// commit of the batch before.
    Records {
        partition: i32,
        log_epoch: i32,
        chunk: Batch,
    },
    /// The partition's log is new: record the move before any of its records.
    NewLog(NewLog),
}

/// Reads one partition into `queue` until the partition is taken away (the
/// task is dropped) or the writer is gone.
///
/// Every broker request is bounded (`KAFKA_REQUEST_TIMEOUT`); one that goes
/// unanswered is retried over a new partition client (a new connection),
/// and the log is looked at again first, as after any failed fetch. Each
/// run of failures is warned about once.
pub(super) async fn run(
    settings: ConsumerSettings,
    pool: Pool,
    broker: Broker,
    partition: i32,
    queue: mpsc::Sender<Work>,
) {
    let mut backoff = Backoff::standard();
    let mut failing = Streak::new("cannot read the partition from the broker; retrying");
    let client = open(&broker, &settings.topic, partition, &mut failing, &mut backoff).await;
    let (position, checked) = loop {
        match start(&settings, &pool, &client, partition).await {
            Ok(start) => break start,
            Err(error) => failing.failed(&format!(
                "partition {partition}: cannot find the start offset: {error}"
            )),
        }
        backoff.wait(&CancellationToken::new()).await;
    };
    tracing::info!(
        partition,
        offset = position.next_offset,
        log_epoch = position.log_epoch,
        "reading partition"
    );
    let mut reader = Reader {
        settings,
        broker,
        client,
        partition,
        queue,
        position,
        checked,
        backoff,
        failing,
    };
    loop {
        let step = if reader.checked {
            reader.fetch().await
        } else {
            reader.check_log().await
        };
        if let Step::WriterGone = step {
            return;
        }
    }
}

/// What a reader's step left it with.
enum Step {
    Continue,
    /// The writer is gone: the consumer is stopping.
    WriterGone,
}

/// A client for the partition, retried until one opens.
async fn open(
    broker: &Broker,
    topic: &str,
    partition: i32,
    failing: &mut Streak,
    backoff: &mut Backoff,
) -> Partition {
    let never = CancellationToken::new();
    loop {
        match broker.partition(topic, partition).await {
            Ok(client) => return client,
            Err(error) => failing.failed(&format!("partition {partition}: cannot open it: {error}")),
        }
        backoff.wait(&never).await;
    }
}

/// Where reading starts: the stored position (still to be checked against
/// the log), or, for a group with none, where a new group starts (nothing
/// to check).
async fn start(
    settings: &ConsumerSettings,
    pool: &Pool,
    client: &Partition,
    partition: i32,
) -> Result<(Position, bool), ConsumeError> {
    let stored = positions::stored(pool, &settings.group, &settings.topic).await?;
    if let Some(position) = stored.get(&partition) {
        return Ok((*position, false));
    }
    let next_offset = start_offset(settings.start_from, client).await?;
    let position = Position {
        next_offset,
        log_epoch: 0,
        last: None,
    };
    Ok((position, true))
}

/// Where `start_from` says reading begins in the partition's log.
async fn start_offset(start_from: StartFrom, client: &Partition) -> Result<i64, KafkaError> {
    match start_from {
        StartFrom::Earliest => client.offset(OffsetAt::Earliest).await,
        StartFrom::Latest => client.end_offset().await,
    }
}

/// One partition's reader between steps: where it is, and whether that
/// position has been checked against the log since the last start or
/// failure.
struct Reader {
    settings: ConsumerSettings,
    broker: Broker,
    client: Partition,
    partition: i32,
    queue: mpsc::Sender<Work>,
    position: Position,
    checked: bool,
    backoff: Backoff,
    failing: Streak,
}

impl Reader {
    /// Looks at the log: is it still the one the position belongs to? If
    /// not, the partition starts again in the new one.
    async fn check_log(&mut self) -> Step {
        let partition = self.partition;
        match self
            .client
            .check_log(self.position.next_offset, self.position.last)
            .await
        {
            Ok(LogCheck::Same) => self.checked = true,
            Ok(LogCheck::New { log_end, why }) => match self.new_log(self.position, log_end, why).await {
                Ok(Some(next)) => {
                    self.position = next;
                    self.checked = true;
                }
                Ok(None) => return Step::WriterGone,
                Err(error) => {
                    self.failed(
                        &error,
                        format!("partition {partition}: cannot find where the new log starts: {error}"),
                    )
                    .await
                }
            },
            Err(error) => {
                self.failed(
                    &error,
                    format!("partition {partition}: cannot check the log: {error}"),
                )
                .await
            }
        }
        Step::Continue
    }

    /// One fetch from the position, handed to the writer.
    async fn fetch(&mut self) -> Step {
        let partition = self.partition;
        let fetched = self
            .client
            .fetch(
                self.position.next_offset,
                1..FETCH_MAX_BYTES,
                self.settings.fetch_wait_ms,
            )
            .await;
        match fetched {
            Ok((records, high_watermark)) => {
                self.backoff.reset();
                self.failing.ended("reading the partition again");
                if high_watermark < self.position.next_offset {
                    // The log ends below where we are: it is not the log we read.
                    self.checked = false;
                    return Step::Continue;
                }
                metrics::gauge!(names::CONSUMER_FETCH_LAG, "partition" => partition.to_string())
                    .set((high_watermark - self.position.next_offset) as f64);
                let records: Vec<_> = records
                    .into_iter()
                    .filter(|r| r.offset >= self.position.next_offset)
                    .collect();
                let Some(last) = records.last() else {
                    return Step::Continue;
                };
                self.position = Position {
                    next_offset: last.offset + 1,
                    log_epoch: self.position.log_epoch,
                    last: Some(RecordMark::of(&last.record)),
                };
                if !self.send(self.position.log_epoch, records).await {
                    return Step::WriterGone;
                }
            }
            Err(KafkaError::Client(e)) if kafka::is_offset_out_of_range(&e) => self.out_of_range().await,
            Err(error) => {
                // The broker may come back as another one: look at the log first.
                self.checked = false;
                self.failed(&error, format!("partition {partition}: fetch failed: {error}"))
                    .await;
            }
        }
        Step::Continue
    }

    /// The position is outside the log: before its start (records expired
    /// or deleted: skip ahead to the earliest), or beyond its end (look at
    /// the log).
    async fn out_of_range(&mut self) {
        let partition = self.partition;
        match self.client.offset(OffsetAt::Earliest).await {
            Ok(earliest) if earliest > self.position.next_offset => {
                tracing::warn!(
                    partition,
                    offset = self.position.next_offset,
                    earliest,
                    "records before {earliest} are gone from the broker; skipping ahead"
                );
                self.position.next_offset = earliest;
                self.position.last = None;
            }
            Ok(_) => self.checked = false,
            Err(error) => {
                self.checked = false;
                self.failed(
                    &error,
                    format!("partition {partition}: offset out of range: {error}"),
                )
                .await;
            }
        }
    }

    /// After a failed request: said (once per run of failures), a pause,
    /// and a new client when the old one went unanswered (its connection
    /// may hang for good).
    async fn failed(&mut self, error: &KafkaError, said: String) {
        self.failing.failed(&said);
        self.backoff.wait(&CancellationToken::new()).await;
        if error.is_silent() {
            self.client = open(
                &self.broker,
                &self.settings.topic,
                self.partition,
                &mut self.failing,
                &mut self.backoff,
            )
            .await;
        }
    }

    /// Hands records to the writer, validated, at most [`CHUNK`] (or a
    /// batch, if smaller) per message: the writer merges them up to a
    /// batch. `false` once the writer is gone.
    async fn send(&self, log_epoch: i32, mut records: Vec<RecordAndOffset>) -> bool {
        while !records.is_empty() {
            let rest = records.split_off(records.len().min(CHUNK.min(self.settings.batch_size)));
            let work = Work::Records {
                partition: self.partition,
                log_epoch,
                chunk: validated(self.partition, log_epoch, records),
            };
            if self.queue.send(work).await.is_err() {
                return false;
            }
            records = rest;
        }
        true
    }

    /// Starts the partition again in its new log; the position to read from
    /// there, or `None` once the writer is gone.
    async fn new_log(
        &self,
        stored: Position,
        log_end: i64,
        why: String,
    ) -> Result<Option<Position>, KafkaError> {
        let restart_at = start_offset(self.settings.start_from, &self.client).await?;
        let new_log = NewLog {
            partition: self.partition,
            stored,
            log_end,
            restart_at,
            why,
        };
        tracing::warn!(
            partition = self.partition,
            stored_offset = stored.next_offset,
            log_end,
            restart_at,
            log_epoch = stored.log_epoch + 1,
            "the partition's log is new ({}); reading it from offset {restart_at} (CONSUMER_START_FROM={})",
            new_log.why,
            match self.settings.start_from {
                StartFrom::Earliest => "earliest",
                StartFrom::Latest => "latest",
            }
        );
        metrics::counter!(names::CONSUMER_LOG_RESETS_TOTAL, "partition" => self.partition.to_string())
            .increment(1);
        let position = new_log.position();
        Ok(self
            .queue
            .send(Work::NewLog(new_log))
            .await
            .is_ok()
            .then_some(position))
    }
}

/// Every record of one chunk validated: a history row or a dead letter
/// each, and the partition's position after the last.
fn validated(partition: i32, log_epoch: i32, records: Vec<RecordAndOffset>) -> Batch {
    let mut batch = Batch::default();
    let mut after = None;
    for RecordAndOffset { record, offset } in records {
        let event_id = event::event_id(&record.headers);
        after = Some(Position {
            next_offset: offset + 1,
            log_epoch,
            last: Some(RecordMark {
                time: record.timestamp,
                event_id: event_id.as_ref().ok().copied().flatten(),
            }),
        });
        let value = record.value.unwrap_or_default();
        let valid = event_id.and_then(|id| Event::from_bytes(&value).map(|event| (id, event)));
        match valid {
            Ok((event_id, event)) => batch.rows.push(Row {
                partition,
                log_epoch,
                offset,
                event_id,
                event,
                raw: value,
            }),
            Err(invalid) => {
                tracing::warn!(partition, offset, reason = %invalid, "dead letter");
                batch.dead_letters.push(DeadLetter {
                    partition,
                    log_epoch,
                    offset,
                    key: record.key,
                    payload: Some(value),
                    reason: invalid.to_string(),
                });
            }
        }
    }
    batch
        .positions
        .extend(after.map(|position| (partition, position)));
    batch
}

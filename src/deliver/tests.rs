//! The dispatcher driven one [`Dispatcher::step`] at a time on paused time, through a
//! transport that answers as each test says: lanes, backoff, burial, 410 and read failures
//! without a network or a wall clock.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use super::metrics::DeliverMetrics;
use super::transport::{Attempt, Transport};
use super::*;
use crate::device::Commit;
use crate::event::{Envelope, Event, EventType};
use crate::metrics::Registry;

/// Answers each attempt with `answer(record)`, remembering what was sent and when.
struct Scripted {
    sent: Mutex<Vec<(tokio::time::Instant, String, String)>>,
    answer: Box<dyn Fn(&OutboxRecord) -> Outcome + Send + Sync>,
}

impl Transport for Scripted {
    fn send(&self, record: &OutboxRecord) -> Attempt {
        self.sent.lock().unwrap().push((
            tokio::time::Instant::now(),
            record.lane.clone(),
            record.id.clone(),
        ));
        let outcome = (self.answer)(record);
        Box::pin(async move { outcome })
    }
}

impl Scripted {
    /// Ids sent on `lane`, in order.
    fn sent_on(&self, lane: &str) -> Vec<String> {
        let sent = self.sent.lock().unwrap();
        sent.iter()
            .filter(|(_, l, _)| l == lane)
            .map(|(_, _, id)| id.clone())
            .collect()
    }
}

fn failed(status: u16) -> Outcome {
    Outcome::Retry {
        status: Some(status),
        retry_after: None,
        reason: format!("HTTP {status}"),
    }
}

struct Rig<T = Scripted> {
    _dir: tempfile::TempDir,
    outbox: Outbox,
    transport: Arc<T>,
    dispatcher: Dispatcher,
    cancel: CancellationToken,
}

/// [`rig_with`] a [`Scripted`] transport answering each attempt with `answer`.
async fn rig(
    extra: &str,
    readings: &[(&str, usize)],
    answer: impl Fn(&OutboxRecord) -> Outcome + Send + Sync + 'static,
) -> (Rig, Vec<Envelope>) {
    let transport = Arc::new(Scripted {
        sent: Mutex::new(Vec::new()),
        answer: Box::new(answer),
    });
    rig_with(extra, readings, transport).await
}

/// One endpoint (`[webhook]` with `extra` keys; no jitter) over a fresh outbox holding
/// `readings` per device, durable, sent through `transport`. Time is paused once it is set up.
async fn rig_with<T: Transport + 'static>(
    extra: &str,
    readings: &[(&str, usize)],
    transport: Arc<T>,
) -> (Rig<T>, Vec<Envelope>) {
    let config = test_config(&format!(
        "retry = {{ initial = \"1s\", max = \"1m\", multiplier = 2.0, jitter = 0.0 }}\n{extra}"
    ));
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(dir.path(), 1 << 20, vec![route(&config.webhook).unwrap()]).unwrap();
    let mut envelopes = Vec::new();
    for (device, n) in readings {
        for i in 0..*n {
            let mut fields = serde_json::Map::new();
            fields.insert("n".into(), i.into());
            let event = Event::device(EventType::SensorReadingUpdated, device, fields);
            envelopes.push(Envelope::seal(&event, "gw", SystemTime::now()));
        }
    }
    let commit = Commit {
        envelopes: envelopes.clone(),
        sync: true,
        ..Default::default()
    };
    outbox.write(&[commit], &[false]).unwrap();
    outbox.flush().await.unwrap();
    let metrics = DeliverMetrics::register(&mut Registry::default());
    let dispatcher = Dispatcher::with_transport(
        &config.webhook,
        outbox.clone(),
        Arc::new(DeliveryLog::new(dir.path(), 100)),
        metrics.endpoint(&config.webhook.name),
        transport.clone(),
    )
    .unwrap();
    tokio::time::pause();
    let rig = Rig {
        _dir: dir,
        outbox,
        transport,
        dispatcher,
        cancel: CancellationToken::new(),
    };
    (rig, envelopes)
}

impl<T> Rig<T> {
    /// Step until `done` holds; false if it still does not after `within` of (paused) time,
    /// whether the steps kept coming back or one of them never did.
    async fn step_until(&mut self, within: Duration, done: impl Fn(&Rig<T>) -> bool) -> bool {
        let steps = async {
            while !done(self) {
                if self.dispatcher.step(&self.cancel).await == Step::Cancelled {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(within, steps).await;
        done(self)
    }

    /// Step for `period` of (paused) time.
    async fn step_for(&mut self, period: Duration) {
        self.step_until(period, |_| false).await;
    }
}

#[tokio::test]
async fn a_failed_read_is_retried_on_its_own_while_every_device_is_quiet() {
    // Found by the fault harness (seed 3674800233764156329): the store was unavailable when
    // delivery read it, no device spoke again to wake delivery, and it never read again.
    let (mut rig, sent) = rig("", &[("quiet", 1)], |_| Outcome::Delivered { status: 200 }).await;
    let outage = rig.outbox.outage();
    // The store comes back while delivery waits, and nothing tells delivery so.
    let back = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(outage);
    };
    let delivered = rig.step_until(Duration::from_secs(5), |r| {
        r.outbox.queue_len(r.dispatcher.queue) == 0
    });
    let ((), delivered) = tokio::join!(back, delivered);
    assert!(delivered, "the failed read is retried without a wake-up");
    assert_eq!(
        rig.transport.sent_on("device:quiet"),
        vec![sent[0].id.clone()]
    );
}

#[tokio::test]
async fn one_rejected_device_never_holds_back_another_and_waits_out_its_backoff() {
    let (mut rig, sent) = rig("", &[("bad", 3), ("good", 3)], |r| {
        if r.lane == "device:bad" {
            failed(500)
        } else {
            Outcome::Delivered { status: 204 }
        }
    })
    .await;
    let start = tokio::time::Instant::now();
    let good_done = rig
        .step_until(Duration::from_secs(1), |r| {
            r.transport.sent_on("device:good").len() == 3
        })
        .await;
    assert!(
        good_done,
        "the good device's events all went while the bad one failed"
    );
    let good: Vec<String> = sent[3..].iter().map(|e| e.id.clone()).collect();
    assert_eq!(rig.transport.sent_on("device:good"), good, "in order");
    rig.step_for(Duration::from_millis(7_500)).await;
    // Backoff 1 s, 2 s, 4 s: attempts at 0, 1, 3 and 7 s, each for the lane's head only.
    let bad = rig.transport.sent_on("device:bad");
    assert_eq!(
        bad,
        vec![sent[0].id.clone(); 4],
        "the head is retried, nothing overtakes it"
    );
    let at: Vec<u64> = {
        let sent = rig.transport.sent.lock().unwrap();
        sent.iter()
            .filter(|(_, l, _)| l == "device:bad")
            .map(|(t, _, _)| (*t - start).as_millis() as u64 / 100)
            .collect()
    };
    assert_eq!(
        at,
        vec![0, 10, 30, 70],
        "tenths of a second after the start"
    );
    assert_eq!(
        rig.outbox.queue_len(rig.dispatcher.queue),
        3,
        "nothing of it dropped"
    );
}

#[tokio::test]
async fn an_event_given_up_on_becomes_a_dead_letter_and_its_lane_goes_on() {
    // The device's first event (its reading n = 0) is refused for good, the others accepted.
    let (mut rig, sent) = rig("max_attempts = 2", &[("d", 3)], |r| {
        if String::from_utf8_lossy(&r.body).contains(r#""n":0"#) {
            failed(422)
        } else {
            Outcome::Delivered { status: 200 }
        }
    })
    .await;
    let done = rig
        .step_until(Duration::from_secs(10), |r| {
            r.outbox.queue_len(r.dispatcher.queue) == 0
        })
        .await;
    assert!(done, "the lane went on after burying its head");
    let ids: Vec<String> = sent.iter().map(|e| e.id.clone()).collect();
    assert_eq!(
        rig.transport.sent_on("device:d"),
        vec![
            ids[0].clone(),
            ids[0].clone(),
            ids[1].clone(),
            ids[2].clone()
        ]
    );
    let dead = rig.outbox.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].record.id, ids[0]);
    assert_eq!(
        (
            dead[0].info.attempts,
            dead[0].info.last_status,
            dead[0].info.reason.as_str()
        ),
        (2, Some(422), "max_attempts")
    );
}

#[tokio::test]
async fn a_410_disables_the_endpoint_durably_and_keeps_every_event() {
    let (mut rig, _) = rig("", &[("a", 2), ("b", 2)], |_| failed(410)).await;
    let disabled = rig
        .step_until(Duration::from_secs(1), |r| {
            r.dispatcher.status.disabled.is_some()
        })
        .await;
    assert!(disabled);
    rig.step_for(Duration::from_secs(3600)).await;
    let sent = rig.transport.sent.lock().unwrap().len();
    assert!(sent <= 2, "at most the attempts already in flight: {sent}");
    assert_eq!(
        rig.outbox.queue_len(rig.dispatcher.queue),
        4,
        "every event kept"
    );
    let stored = rig.outbox.disabled("default");
    assert!(
        stored.is_some_and(|d| d.reason.contains("gone")),
        "remembered across restarts"
    );
    assert!(
        !rig.outbox.is_draining(rig.dispatcher.queue),
        "its share no longer holds back others"
    );
}

#[tokio::test]
async fn cancellation_ends_a_step_at_once() {
    let (mut rig, _) = rig("", &[("a", 1)], |_| failed(503)).await;
    rig.step_for(Duration::from_millis(10)).await;
    rig.cancel.cancel();
    let step = tokio::time::timeout(Duration::from_millis(1), rig.dispatcher.step(&rig.cancel));
    assert_eq!(step.await.ok(), Some(Step::Cancelled));
}

/// An event that cannot be made into a request (a template failing on it) is a dead letter
/// after its one attempt, with the error, and its lane goes on: never an endless retry.
#[tokio::test]
async fn an_unsendable_event_is_buried_at_once_with_its_error() {
    let (mut rig, sent) = rig("", &[("d", 3)], |r| {
        if String::from_utf8_lossy(&r.body).contains(r#""n":1"#) {
            Outcome::Unsendable {
                reason: "template: cannot index number with \"x\"".into(),
            }
        } else {
            Outcome::Delivered { status: 200 }
        }
    })
    .await;
    let done = rig
        .step_until(Duration::from_secs(1), |r| {
            r.outbox.queue_len(r.dispatcher.queue) == 0
        })
        .await;
    assert!(done, "the lane went on at once, no backoff");
    assert_eq!(
        rig.transport.sent_on("device:d").len(),
        3,
        "tried once each"
    );
    let dead = rig.outbox.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].record.id, sent[1].id);
    assert_eq!(dead[0].info.reason, "unsendable");
    assert!(
        dead[0].info.last_error.contains("template"),
        "{:?}",
        dead[0].info
    );
}

/// An event its format has nothing to say about is removed for the endpoint, not delivered,
/// and holds nothing up.
#[tokio::test]
async fn an_event_with_nothing_to_send_is_removed_not_delivered() {
    let (mut rig, _) = rig("", &[("d", 2)], |r| {
        if String::from_utf8_lossy(&r.body).contains(r#""n":0"#) {
            Outcome::NotSent
        } else {
            Outcome::Delivered { status: 200 }
        }
    })
    .await;
    let done = rig
        .step_until(Duration::from_secs(1), |r| {
            r.outbox.queue_len(r.dispatcher.queue) == 0
        })
        .await;
    assert!(done);
    assert!(rig.outbox.dead_letters(10).unwrap().is_empty());
}

/// Batches, as `Http` makes them: one request for the ready heads, answered `answer(batch)`.
type BatchAnswer = Box<dyn Fn(&[OutboxRecord]) -> Outcome + Send + Sync>;

struct Batched {
    batches: Mutex<Vec<Vec<String>>>,
    /// When each batch went.
    times: Mutex<Vec<tokio::time::Instant>>,
    answer: BatchAnswer,
}

impl Transport for Batched {
    fn send(&self, record: &OutboxRecord) -> Attempt {
        let outcomes = self.send_batch(vec![record.clone()]);
        Box::pin(async move { outcomes.await.remove(0) })
    }

    fn send_batch(&self, records: Vec<OutboxRecord>) -> transport::BatchAttempt {
        self.batches
            .lock()
            .unwrap()
            .push(records.iter().map(|r| r.lane.clone()).collect());
        self.times.lock().unwrap().push(tokio::time::Instant::now());
        let outcome = (self.answer)(&records);
        let members = records.iter().map(|_| Ok(true)).collect();
        Box::pin(async move { transport::batch_outcomes(members, Some(outcome)) })
    }
}

/// Issue 21: with `batch_max_events`, the ready heads of several devices go in one request; a
/// batch refused with a 4xx is split and each event sent again on its own, so the device the
/// receiver refuses holds up no other; the rest go on in batches.
#[tokio::test]
async fn a_refused_batch_is_split_and_only_the_refused_device_waits() {
    let transport = Arc::new(Batched {
        batches: Mutex::new(Vec::new()),
        times: Mutex::new(Vec::new()),
        answer: Box::new(|batch| {
            if batch.iter().any(|r| r.lane == "device:bad") {
                failed(422)
            } else {
                Outcome::Delivered { status: 200 }
            }
        }),
    });
    let (mut rig, sent) = rig_with(
        "batch_max_events = 10",
        &[("bad", 2), ("g1", 2), ("g2", 2)],
        transport,
    )
    .await;
    let done = rig
        .step_until(Duration::from_millis(500), |r| {
            r.outbox.queue_len(r.dispatcher.queue) <= 2
        })
        .await;
    assert!(
        done,
        "the good devices' events all go within half a second, while bad backs off"
    );
    let batches = rig.transport.batches.lock().unwrap().clone();
    assert_eq!(
        batches[0],
        ["device:bad", "device:g1", "device:g2"],
        "the three ready heads in one request"
    );
    assert!(
        batches[1..4].iter().all(|b| b.len() == 1),
        "then each on its own: {batches:?}"
    );
    let left: Vec<String> = rig
        .outbox
        .pending_after(rig.dispatcher.queue, None, 10)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        left,
        [sent[0].id.clone(), sent[1].id.clone()],
        "only the refused device's"
    );
}

/// Issue 21: `batch_linger` lets a batch wait for more events, up to `batch_max_events`: a
/// batch that is not full goes once it has waited the linger, a full one at once.
#[tokio::test]
async fn a_batch_waits_its_linger_unless_it_is_full() {
    for (max, want_at_ms, want_sizes) in [(10, 250, vec![3]), (2, 0, vec![2, 1])] {
        let extra = format!("batch_max_events = {max}\nbatch_linger = \"250ms\"");
        let transport = Arc::new(Batched {
            batches: Mutex::new(Vec::new()),
            times: Mutex::new(Vec::new()),
            answer: Box::new(|_| Outcome::Delivered { status: 200 }),
        });
        let (mut rig, _) = rig_with(&extra, &[("a", 1), ("b", 1), ("c", 1)], transport).await;
        let start = tokio::time::Instant::now();
        let done = rig
            .step_until(Duration::from_secs(2), |r| {
                r.outbox.queue_len(r.dispatcher.queue) == 0
            })
            .await;
        assert!(done, "delivered");
        let transport = &rig.transport;
        let sizes: Vec<usize> = transport
            .batches
            .lock()
            .unwrap()
            .iter()
            .map(Vec::len)
            .collect();
        let first = transport.times.lock().unwrap()[0] - start;
        assert_eq!(sizes, want_sizes, "max {max}");
        let at = first.as_millis() as u64;
        // (the timer's millisecond rounds up)
        assert!(
            (want_at_ms..=want_at_ms + 1).contains(&at),
            "max {max}: the first batch went at {at} ms"
        );
        tokio::time::resume(); // the next rig pauses it again
    }
}

#[tokio::test]
async fn a_dropped_reading_the_store_brings_back_is_never_sent_after_a_newer_one() {
    // Found by the fault harness (seed 3343455984250628370): a reading dropped to make room
    // (a newer one of its device superseded it) came back when the store was reopened after a
    // full disk — its removal was not yet durable, the write-ahead log still had it — and was
    // delivered after the newer reading its lane had already delivered: out of order, and
    // stale. A lane never sends a record behind one it has delivered; such a record (that,
    // or a delivered one whose removal was lost) is removed instead.
    let (mut rig, sent) = rig("", &[("d", 3)], |_| Outcome::Delivered { status: 200 }).await;
    let queue = rig.dispatcher.queue;
    let records = rig.outbox.pending_after(queue, None, 10).unwrap();
    let second = records[1].seq;
    let stored = rig
        .outbox
        .stored(queue, second)
        .expect("in sled after the flush");
    // Room for two: the superseded two go, the newest stays.
    let two = 2 * rig.outbox.stored_size(queue, second).unwrap();
    assert_eq!(rig.outbox.drop_oldest_readings(queue, two).unwrap(), 2);
    assert!(
        rig.step_until(Duration::from_secs(5), |r| r.outbox.queue_len(queue) == 0)
            .await
    );
    assert_eq!(rig.transport.sent_on("device:d"), vec![sent[2].id.clone()]);
    // The reopen brings the dropped second reading back.
    rig.outbox.put_back(queue, second, stored);
    // As `outbox::tests::open_when_released`: a process forked meanwhile by another test (a jq
    // worker starting) can hold sled's file lock for a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while let Err(e) = rig.outbox.reopen() {
        assert!(
            std::time::Instant::now() < deadline && e.to_string().contains("lock"),
            "{e}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(rig.outbox.queue_len(queue), 1);
    assert!(
        rig.step_until(Duration::from_secs(5), |r| r.outbox.queue_len(queue) == 0)
            .await,
        "the record brought back is removed"
    );
    assert_eq!(
        rig.transport.sent_on("device:d"),
        vec![sent[2].id.clone()],
        "nothing sent behind the newer reading"
    );
}

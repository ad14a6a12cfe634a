//! The writer task: commits grouped into batches, room made within each queue's share, the
//! batch logged and synced, and only then its acks sent; a checkpoint when one is due.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::config::{OnFull, OutboxConfig};
use super::metrics::OutboxMetrics as Metrics;
use super::seen::Seen;
use super::{Outbox, QueueId, Written};
use crate::device::Commit;
use crate::event::Envelope;

/// The outbox writer task: group incoming commits into batches, make room for each within
/// each queue's share of `outbox.max_size`, write it, flush, then send the batch's acks. Ends
/// when the device stage has gone, after writing and flushing everything it sent.
///
/// # Shares
/// Each queue (endpoint) may hold `max_size / queues` bytes, so no endpoint can take the space
/// of another. When a batch does not fit in a queue's share:
/// - a queue that drains (its endpoint is active and not disabled) applies `on_full`:
///   back-pressure (the batch waits, unacknowledged, until delivery frees space) or dropping
///   that queue's readings (superseded ones first, then the oldest) — and when no reading is
///   left to drop, refusing the batch for that queue as below, rather than waiting;
/// - a queue that cannot drain (paused, disabled by a 410, inactive, no longer configured)
///   would wait for ever and hold every other endpoint and every ack with it: with
///   `drop_oldest_readings` its readings are dropped to make room as above, and when that is
///   not enough (or with back-pressure) the batch's events are not stored *for that endpoint
///   only*: counted ([`DROPPED`], `edgehook_endpoint_dropped_total`, `outbox status`) and
///   logged, never silently. The other endpoints get them as usual.
///
/// A batch that only moves devices' `last_seen` is not written: its states are held and
/// written with the next batch, or alone once a minute ([`Seen`]); its acks go at once.
///
/// A batch's outgoing actions go to `outgoing` (the serial port or the broker) after the acks:
/// an action is published only once its `sent` state is durable.
pub async fn run_writer(
    outbox: Outbox,
    mut commits: mpsc::Receiver<Commit>,
    config: OutboxConfig,
    metrics: Arc<Metrics>,
    outgoing: crate::source::Router,
    cancel: CancellationToken,
) {
    let mut batch: Vec<Commit> = Vec::with_capacity(config.batch_max);
    let mut full = FullLog::new();
    let mut seen = Seen::default();
    loop {
        let (_, checkpoint_at) = outbox.checkpoint_due(config.checkpoint_interval);
        let wake = [seen.due(), checkpoint_at].into_iter().flatten().min();
        let timer = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            next = commits.recv() => next,
            () = timer => {
                // The held seen-times, alone (not logged: they need no sync), and the
                // checkpoint that puts them in sled.
                if seen
                    .due()
                    .is_some_and(|due| due <= tokio::time::Instant::now())
                {
                    seen.join(&mut batch);
                    persist(&outbox, &batch, &[], &metrics).await;
                    batch.clear();
                }
                checkpoint(&outbox, &metrics).await;
                continue;
            }
            () = outbox.storage_failed() => {
                if outbox.take_failed() {
                    tracing::warn!("the outbox failed outside the writer (a removal or a read back); checking it with a checkpoint and reopening it if it is broken");
                    checkpoint(&outbox, &metrics).await;
                }
                continue;
            }
        };
        let Some(first) = next else { break };
        // A batch stays well under a share, so that room for it can always be made, and
        // under MAX_BATCH_BYTES in all (an event is written once per queue).
        let queues = outbox.queue_count().max(1) as u64;
        let max_batch_bytes = (config.max_size / queues / 8)
            .min(MAX_BATCH_BYTES / queues)
            .max(1);
        let mut bytes = commit_size(&first);
        batch.push(first);
        // Group commit: gather what arrives within `commit_delay` of the first, up to the caps.
        let deadline = tokio::time::Instant::now() + config.commit_delay;
        while batch.len() < config.batch_max && bytes < max_batch_bytes {
            let next = match commits.try_recv() {
                Ok(c) => c,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, commits.recv()).await {
                        Ok(Some(c)) => c,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            bytes += commit_size(&next);
            batch.push(next);
        }
        if Seen::only_seen_times(&batch) {
            seen.hold(&mut batch, tokio::time::Instant::now());
            for ack in batch.drain(..).filter_map(|c| c.ack) {
                ack.send();
            }
            continue;
        }
        seen.join(&mut batch);
        let refused = make_room(&outbox, &batch, &config, &metrics, &cancel, &mut full).await;
        let written = persist(&outbox, &batch, &refused, &metrics).await;
        metrics.unrouted(written.unrouted as u64);
        for (queue, n) in outbox.all_queues().iter().zip(&written.dropped) {
            if *n > 0 {
                queue.dropped.fetch_add(*n, Ordering::Relaxed);
                metrics.dropped_for(&queue.endpoint, *n);
            }
        }
        for commit in batch.drain(..) {
            for env in &commit.envelopes {
                metrics.event_created(env.kind);
            }
            if let Some(ack) = commit.ack {
                ack.send();
            }
            for action in commit.outgoing {
                let device = action.device.clone();
                if let Err(why) = outgoing.send(action) {
                    tracing::warn!(device_id = %device, "an action could not be sent ({why}); it times out and is told so");
                }
            }
        }
        if written.queued > 0 {
            outbox.notify_appended();
        }
        metrics.set_depth(outbox.len());
        if outbox.checkpoint_due(config.checkpoint_interval).0 {
            checkpoint(&outbox, &metrics).await;
        }
    }
    seen.join(&mut batch);
    if !batch.is_empty() {
        persist(&outbox, &batch, &[], &metrics).await;
    }
    // sled refuses everything after an I/O error nobody may have met since (its own flush of
    // delivery's removals on a full disk): then the store is reopened (the log applied again,
    // a checkpoint in itself) and the checkpoint tried once more. Found by the fault harness:
    // a disk that had filled and freed while only delivery wrote made shutdown exit 1.
    let last = match outbox.flush().await {
        Err(e) => {
            tracing::warn!(error = %e, "final outbox checkpoint failed; reopening the outbox and trying again");
            match outbox.reopen() {
                Ok(()) => outbox.flush().await,
                Err(e) => Err(e),
            }
        }
        ok => ok,
    };
    if let Err(e) = last {
        tracing::error!(error = %e, "final outbox checkpoint failed");
    }
    tracing::debug!("outbox writer drained");
}

/// A checkpoint (see `Outbox::flush`), retried until it is made: a reopen after a failure
/// recovers the log into sled, which is one.
async fn checkpoint(outbox: &Outbox, metrics: &Metrics) {
    let mut delay = Duration::from_millis(100);
    let mut failures = 0u64;
    loop {
        let Err(e) = outbox.flush().await else {
            metrics.checkpointed();
            if failures > 0 {
                tracing::info!(failures, "outbox writable again; resuming");
                outbox.writable.store(true, Ordering::Relaxed);
            }
            return;
        };
        failures += 1;
        metrics.write_failed();
        outbox.writable.store(false, Ordering::Relaxed);
        if failures == 1 || failures.is_power_of_two() {
            tracing::error!(error = %e, failures, "cannot write the outbox (its checkpoint); holding new messages unacknowledged and retrying (back-pressure; nothing is lost: the log has what was acknowledged)");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
        match outbox.reopen() {
            Ok(()) => {
                tracing::info!(failures, "outbox writable again; resuming");
                outbox.writable.store(true, Ordering::Relaxed);
                return;
            }
            Err(e) => tracing::debug!(error = %e, "outbox not reopened yet"),
        }
    }
}

/// The most bytes of events one group commit gathers (all queues together) before it is
/// written, beyond its first commit: a quarter of a write-ahead log file, so that the log keeps
/// its size (a checkpoint is due at 4 MiB) and a burst of large readings holds at most this
/// much in memory at once.
pub(super) const MAX_BATCH_BYTES: u64 = 1024 * 1024;

/// About how many bytes one event takes in one queue.
pub(super) fn size_of(env: &Envelope) -> u64 {
    (env.body.len() + env.lane.len() + env.id.len() + 32) as u64
}

/// About how many bytes `commit`'s events take in one queue.
fn commit_size(commit: &Commit) -> u64 {
    commit.envelopes.iter().map(size_of).sum()
}

/// How the writer last reported each full queue: one line when it fills, one when it has room.
struct FullLog {
    /// Per queue: since when it is full, and what was dropped meanwhile.
    full: Vec<Option<(std::time::Instant, u64)>>,
    /// Per queue: its new events are refused (a share full of events never dropped).
    refusing: Vec<bool>,
}

impl FullLog {
    fn new() -> FullLog {
        FullLog {
            full: Vec::new(),
            refusing: Vec::new(),
        }
    }
}

/// Make room for `batch` in the share of every queue it goes to (see [`run_writer`]): wait
/// (back-pressure), or drop that queue's oldest readings (`on_full = drop_oldest_readings`),
/// for queues that drain; for queues that cannot drain, mark them refused. Returns, per queue,
/// whether the batch's events are left out of it. A queue's share gives way when the queue is
/// empty (one message larger than it is still written) and at shutdown (what the device stage
/// already made is kept).
async fn make_room(
    outbox: &Outbox,
    batch: &[Commit],
    config: &OutboxConfig,
    metrics: &Metrics,
    cancel: &CancellationToken,
    log: &mut FullLog,
) -> Vec<bool> {
    let needs = outbox.needs(batch);
    let share = config.max_size / needs.len().max(1) as u64;
    let mut refused = vec![false; needs.len()];
    if log.full.len() < needs.len() {
        log.full.resize(needs.len(), None); // endpoints created while running
    }
    let queues = outbox.all_queues();
    let mut reopen_at = tokio::time::Instant::now();
    loop {
        let mut waiting = false;
        for (i, &needed) in needs.iter().enumerate() {
            let queue = QueueId(i);
            let used = outbox.queue_bytes(queue);
            let fits = needed == 0 || used + needed <= share || outbox.queue_len(queue) == 0;
            if fits || cancel.is_cancelled() {
                refused[i] = false;
                continue;
            }
            let name = &queues[i].endpoint;
            let draining = outbox.is_draining(queue);
            if log.full[i].is_none() {
                log.full[i] = Some((std::time::Instant::now(), 0));
                if draining {
                    let policy = match config.on_full {
                        OnFull::Backpressure => "holding new messages unacknowledged until delivery frees space (back-pressure; the broker keeps them)",
                        OnFull::DropOldestReadings => "dropping its sensor readings to make room, superseded ones first (on_full = drop_oldest_readings)",
                    };
                    tracing::error!(endpoint = %name, used_bytes = used, share_bytes = share, pending = outbox.queue_len(queue), "outbox FULL for endpoint `{name}`: {policy}");
                } else {
                    let first = match config.on_full {
                        OnFull::Backpressure => "",
                        OnFull::DropOldestReadings => "its sensor readings are dropped to make room (superseded ones first, on_full = drop_oldest_readings), then ",
                    };
                    tracing::error!(endpoint = %name, used_bytes = used, share_bytes = share, pending = outbox.queue_len(queue), "outbox share FULL: endpoint `{name}` cannot drain (paused, disabled, inactive or removed), so {first}its new events are DROPPED for it alone (counted in edgehook_endpoint_dropped_total and `edgehook outbox status`); other endpoints still get them. Resume, re-enable or purge it to stop this");
                }
            }
            if config.on_full == OnFull::DropOldestReadings {
                // A queue that cannot drain gives up its readings too, before its other events
                // (found by the fault harness: a paused endpoint's full share refused a
                // workspace's last status while it held readings that policy drops).
                match outbox.drop_oldest_readings(queue, used + needed - share) {
                    Ok(0) => {
                        // Its share holds nothing this policy drops (health, workspace and
                        // action events): waiting would hold every endpoint for this one
                        // (found by the fault harness: a failing endpoint's share filled with
                        // a flood of new devices' registrations stopped the others). Its new
                        // events are dropped for it alone, counted, as for one that cannot
                        // drain.
                        if draining && !log.refusing.get(i).copied().unwrap_or(false) {
                            tracing::error!(endpoint = %name, used_bytes = used, share_bytes = share, pending = outbox.queue_len(queue), "outbox share FULL of events never dropped (no readings left to drop): endpoint `{name}`'s new events are DROPPED for it alone (counted in edgehook_endpoint_dropped_total), so that it does not hold the other endpoints back");
                            log.refusing.resize(needs.len(), false);
                            log.refusing[i] = true;
                        }
                        refused[i] = true;
                        continue;
                    }
                    Ok(n) => {
                        metrics.dropped(n as u64);
                        metrics.dropped_for(name, n as u64);
                        if let Some((_, dropped)) = &mut log.full[i] {
                            *dropped += n as u64;
                        }
                        if outbox.queue_bytes(queue) + needed <= share {
                            refused[i] = false;
                            continue;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot drop old readings");
                        // sled refuses everything after an I/O error (its own flush may have
                        // met a full disk): start again from what is on disk, once a second
                        // at most. Found by the fault harness: the writer waited here for
                        // ever, and delivery with it.
                        let now = tokio::time::Instant::now();
                        if now >= reopen_at {
                            reopen_at = now + Duration::from_secs(1);
                            if let Err(e) = outbox.reopen() {
                                tracing::debug!(error = %e, "outbox not reopened yet");
                            }
                        }
                    }
                }
            }
            if !draining {
                refused[i] = true;
                continue;
            }
            waiting = true;
        }
        metrics.set_full(waiting);
        if !waiting {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = cancel.cancelled() => {}
        }
    }
    for (i, &needed) in needs.iter().enumerate() {
        let queue = QueueId(i);
        let room = outbox.queue_bytes(queue) + needed <= share || outbox.queue_len(queue) == 0;
        if room && !refused[i] {
            if let Some(r) = log.refusing.get_mut(i) {
                *r = false;
            }
        }
        if let (true, Some((since, dropped))) = (room && !refused[i], log.full[i]) {
            tracing::warn!(
                endpoint = %queues[i].endpoint,
                full_for = %humantime::format_duration(Duration::from_secs(since.elapsed().as_secs())),
                dropped_readings = dropped,
                "outbox has room again"
            );
            log.full[i] = None;
        }
    }
    refused
}

/// Write and flush one batch, retrying until it is durable.
async fn persist(
    outbox: &Outbox,
    batch: &[Commit],
    refused: &[bool],
    metrics: &Metrics,
) -> Written {
    let mut delay = Duration::from_millis(100);
    let mut failures = 0u64;
    loop {
        let started = std::time::Instant::now();
        let result = match outbox.write(batch, refused) {
            Ok(w) if w.queued == 0 && !batch.iter().any(|c| c.sync) => Ok(w),
            Ok(w) => outbox.sync().await.map(|()| w),
            Err(e) => Err(e),
        };
        match result {
            Ok(w) => {
                if w.queued > 0 || batch.iter().any(|c| c.sync) {
                    metrics.committed(started.elapsed());
                }
                if failures > 0 {
                    tracing::info!(failures, "outbox writable again; resuming");
                    outbox.writable.store(true, Ordering::Relaxed);
                }
                return w;
            }
            Err(e) => {
                failures += 1;
                metrics.write_failed();
                outbox.writable.store(false, Ordering::Relaxed);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::error!(
                        error = %e,
                        failures,
                        "cannot write the outbox; holding {} messages unacknowledged and retrying (back-pressure, nothing is dropped)",
                        batch.len()
                    );
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                // sled refuses everything after an I/O error: start again from what is on disk.
                if let Err(e) = outbox.reopen() {
                    tracing::debug!(error = %e, "outbox not reopened yet");
                }
            }
        }
    }
}

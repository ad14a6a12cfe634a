//! `[outbox]`: the store's configuration and its checks (run by `check-config` and at start, as
//! every stage's are).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The name of the `[webhook]` endpoint.
pub const DEFAULT_ENDPOINT: &str = "default";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// Most inbound messages committed in one durable write (one fsync).
    pub batch_max: usize,
    /// How long a commit waits for more messages to share its write (group commit). Every
    /// fsync rewrites at least a block, so on an SD card a few milliseconds here save most of
    /// the bytes written per event; it adds at most this much latency. "0s" writes at once.
    #[serde(with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub commit_delay: Duration,
    /// How often what was written since the last checkpoint (undelivered events, device
    /// states) is put into sled, while anything waits for it (also after 1 MiB of undelivered
    /// events or 4 MiB of the write-ahead log, and at shutdown). Longer writes less to the SD
    /// card (an event delivered before the checkpoint never reaches sled) and makes a start
    /// after a crash replay more of the log; a full disk is noticed at the next checkpoint.
    #[serde(with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub checkpoint_interval: Duration,
    /// sled page cache, bytes. Small by default: a gateway has little RAM.
    pub cache_bytes: u64,
    /// Most bytes of events held for delivery, all endpoints together (`"64MB"`, `"1GiB"` or a
    /// number of bytes). sled's files take about twice this on disk. What happens when it is
    /// reached is `on_full`'s choice; either way it is logged, `/healthz` says so, and
    /// `edgehook_outbox_full` is 1.
    #[serde(with = "crate::size")]
    #[cfg_attr(test, schemars(with = "crate::schema::Size"))]
    pub max_size: u64,
    /// `backpressure` (default): hold new messages unacknowledged until delivery frees space, so
    /// the broker keeps them. `drop_oldest_readings`: delete `sensor.reading.updated` events
    /// to make room — first those a newer reading of the same device supersedes, then the
    /// oldest — never health or workspace events (those still wait); counted per endpoint
    /// (`edgehook_endpoint_dropped_total`, `outbox status`) and in `edgehook_outbox_dropped_total`.
    pub on_full: OnFull,
    /// Most bytes of dead letters kept (events given up on), on top of `max_size` and at most
    /// a quarter of it ([`OutboxConfig::dead_budget`]): past it the oldest letters are deleted,
    /// counted (`edgehook_dead_letters_let_go_total`) and logged.
    #[serde(with = "crate::size")]
    #[cfg_attr(test, schemars(with = "crate::schema::Size"))]
    pub max_dead_size: u64,
    /// Delivery attempts kept in the delivery log (`edgehook outbox log`, the file
    /// `delivery.log` in `state_dir`): at least this many and at most twice as many; 0 keeps
    /// none. Appended in chunks (64 attempts or a second), so a crash can lose the last second
    /// of the log, never events.
    pub delivery_log: usize,
}

impl OutboxConfig {
    /// The dead letters' budget in bytes: `max_dead_size`, at most a quarter of `max_size`.
    pub fn dead_budget(&self) -> u64 {
        self.max_dead_size.min(self.max_size / 4)
    }
}

/// What the outbox does when `outbox.max_size` is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    Backpressure,
    DropOldestReadings,
}

/// The outbox's checks: the key that is wrong and why.
pub fn validate(outbox: &OutboxConfig) -> Result<(), (String, String)> {
    let bad = |key: &str, msg: String| Err((key.to_string(), msg));
    if outbox.batch_max == 0 {
        return bad("outbox.batch_max", "must be at least 1".into());
    }
    if outbox.max_size < 64 * 1024 {
        return bad(
            "outbox.max_size",
            "must be at least 64KiB (a single burst of events needs room)".into(),
        );
    }
    if outbox.commit_delay > Duration::from_secs(1) {
        return bad(
            "outbox.commit_delay",
            "must be at most 1s (it delays every acknowledgement)".into(),
        );
    }
    if outbox.checkpoint_interval < Duration::from_millis(100)
        || outbox.checkpoint_interval > Duration::from_secs(3600)
    {
        return bad(
            "outbox.checkpoint_interval",
            "must be between 100ms and 1h".into(),
        );
    }
    Ok(())
}

//! Delivery: sign each outbox record, POST it, and retry until the receiver answers 2xx.
//!
//! - [`crate::sign`]: the signature schemes; [`format`](mod@format) and [`template`]: the bodies; [`endpoint`]:
//!   one receiver's requests (signed, keyed, maybe gzipped; one event or a batch).
//! - [`retry`]: the retry schedule and what counts as done, as plain functions over plain data.
//! - [`lanes`]: which records are held in memory, per lane, and which lane sends next.
//! - [`schedule`]: what becomes of a record after an attempt (remove, retry after, bury,
//!   disable), a pure function tested as a table.
//! - [`transport`]: how a record reaches the receiver (HTTPS; the tests bring their own);
//!   [`exchanges`]: the latest requests and answers, kept in memory for the operator.
//! - [`Dispatcher`]: one task per endpoint (its state and loop in `dispatcher`; what it reads in `read`, the
//!   attempts it starts in `send`, what an outcome does in `settle`, the delivery log in
//!   `journal`), reading that endpoint's own queue in the outbox (so
//!   a failing endpoint never delays another). Records are loaded into a bounded window
//!   and queued per *lane* (one device, or one workspace). A lane sends one record at a time, so a
//!   device's events arrive in order; up to `max_concurrency` lanes send at once, so one slow or
//!   failing device never holds the others back and bursts are not sent one request at a time.
//!   With `batch_max_events`, the heads ready at once (of different lanes) go in one
//!   request; a batch refused with a 4xx is split, each record sent again on its own.
//!   A failed record waits out its backoff on disk (its lane holds nothing in memory meanwhile,
//!   so a device the receiver keeps rejecting cannot fill the window); nothing is ever dropped.

pub mod config;
mod dispatcher;
pub mod endpoint;
pub mod exchanges;
pub mod fleet;
pub mod format;
mod journal;
pub mod lanes;
pub mod log;
pub mod metrics;
mod read;
pub mod retry;
pub mod schedule;
mod send;
mod settle;
pub mod template;
pub mod transport;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use crate::clock::system_now as now_ms;
pub use crate::outbox::Disabled;
use crate::outbox::Last;
use crate::outbox::{DeadInfo, Outbox, OutboxRecord, QueueId};
pub use crate::sign::Signer;
use config::WebhookConfig;
use dispatcher::PASSED_MAX;
pub use dispatcher::{Dispatcher, Step};
use endpoint::Endpoint;
use lanes::{Lanes, Limits, Offer};
use log::{Attempt, DeliveryLog};
use metrics::EndpointMetrics;
pub use retry::{classify, Outcome, RetryPolicy};
use schedule::{Decision, Facts, GiveUp};
pub use transport::Transport;

/// Most records one lane holds in memory (a quarter of the window when that is smaller); the
/// rest of its records wait on disk and are read back as it sends.
const PER_LANE: usize = 64;
/// Records the loader reads past the cursor in one go, and lanes read back, before the task
/// turns to its other work.
const SCAN_PER_LOAD: usize = 4096;
const REFILLS_PER_LOAD: usize = 64;
/// Records read from the outbox at a time.
const READ_CHUNK: usize = 64;

/// Delivery-log attempts appended together, at the latest after [`LOG_EVERY`]: one write per
/// chunk rather than per attempt.
const LOG_CHUNK: usize = 64;
const LOG_EVERY: Duration = Duration::from_secs(1);
/// How soon a failed read of the outbox is tried again.
const READ_RETRY: Duration = Duration::from_secs(1);

/// The outbox route of endpoint `config`: which events are queued for it.
pub fn route(config: &WebhookConfig) -> anyhow::Result<crate::outbox::QueueFilter> {
    let endpoint = Endpoint::new(config)?;
    Ok(crate::outbox::QueueFilter {
        endpoint: config.name.clone(),
        wants: Arc::new(move |kind: &str| endpoint.wants(kind)),
    })
}

/// Tests: a configuration with one endpoint, `[webhook]`, and the keys in `extra`.
#[cfg(test)]
pub(crate) fn test_config(extra: &str) -> crate::config::Config {
    crate::config::Config::from_toml_str(&format!(
        r#"
        gateway_id = "gw"
        [mqtt]
        subscriptions = [{{ topic = "s/{{device}}", kind = "reading" }}]
        [webhook]
        url = "https://hooks.example.com/in"
        secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        {extra}
        "#
    ))
    .unwrap()
}

#[cfg(test)]
mod tests;

/// Why a record is sent again on its own.
fn split_reason(status: u16) -> String {
    format!("its batch was refused with HTTP {status}; sent again on its own")
}

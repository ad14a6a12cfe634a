//! What the outbox remembers of each endpoint besides its queue, typed: whether it is disabled
//! (why and since when) or paused, and when it last succeeded and failed. The `meta` keys they live
//! under ([`meta_key`]) are this module's business; callers never name them.

use super::format::meta_key;
use super::{Outbox, OutboxError};

const DISABLED: &str = "disabled";
const PAUSED: &str = "paused";
const LAST_SUCCESS: &str = "last_success";
const LAST_FAILURE: &str = "last_failure";
/// The pull protocol's cursor (`control::pull`): everything upstream sent before it is taken.
const PULL_CURSOR: &str = "upstream.pull.cursor";

/// Why and since when an endpoint is disabled (after a 410 Gone).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Disabled {
    pub reason: String,
    /// RFC 3339.
    pub since: String,
}

/// Since when an operator has paused an endpoint (nothing is sent; events are still queued).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Paused {
    /// RFC 3339.
    pub since: String,
}

/// Which way an endpoint's last attempt went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Last {
    Success,
    Failure,
}

impl Last {
    fn fact(self) -> &'static str {
        match self {
            Last::Success => LAST_SUCCESS,
            Last::Failure => LAST_FAILURE,
        }
    }
}

impl Outbox {
    /// Why `endpoint` is disabled, if it is.
    pub fn disabled(&self, endpoint: &str) -> Option<Disabled> {
        self.meta(&meta_key(endpoint, DISABLED))
    }

    /// Disable `endpoint` (or with `None`, enable it again). Not flushed by itself.
    pub fn set_disabled(&self, endpoint: &str, why: Option<&Disabled>) -> Result<(), OutboxError> {
        self.set_meta(&meta_key(endpoint, DISABLED), why)
    }

    /// The last cursor of upstream's that every command before it was taken at.
    pub fn pull_cursor(&self) -> Option<String> {
        self.meta(PULL_CURSOR)
    }

    /// Keep the pull cursor (not flushed by itself).
    pub fn set_pull_cursor(&self, cursor: &str) -> Result<(), OutboxError> {
        self.set_meta(PULL_CURSOR, Some(&cursor))
    }

    /// Since when `endpoint` is paused, if it is.
    pub fn paused(&self, endpoint: &str) -> Option<Paused> {
        self.meta(&meta_key(endpoint, PAUSED))
    }

    /// Pause `endpoint` (or with `None`, resume it). Not flushed by itself.
    pub fn set_paused(&self, endpoint: &str, paused: Option<&Paused>) -> Result<(), OutboxError> {
        self.set_meta(&meta_key(endpoint, PAUSED), paused)
    }

    /// Forget what is remembered of `endpoint` (disabled, paused, its last success and
    /// failure): it was deleted, and one made again with its name starts as new. Its count of
    /// dropped events stays (it is a record of loss, not a setting). Not flushed by itself.
    pub fn forget_facts(&self, endpoint: &str) -> Result<(), OutboxError> {
        for fact in [DISABLED, PAUSED, LAST_SUCCESS, LAST_FAILURE] {
            self.set_meta::<()>(&meta_key(endpoint, fact), None)?;
        }
        Ok(())
    }

    /// When `endpoint`'s last successful (or failed) attempt was, Unix ms.
    pub fn last(&self, endpoint: &str, which: Last) -> Option<u64> {
        self.meta(&meta_key(endpoint, which.fact()))
    }

    /// Remember when `endpoint`'s last successful (or failed) attempt was: written at the next
    /// checkpoint (a crash may forget the last minute's).
    pub fn set_last(&self, endpoint: &str, which: Last, at_ms: u64) -> Result<(), OutboxError> {
        self.hold_meta(&meta_key(endpoint, which.fact()), &at_ms)
    }
}

//! Device stage: the registry of devices and workspaces. It decides which messages are events
//! (report by exception), tracks each device's health, and derives workspace status.
//!
//! The rules live in three pure modules, each a set of functions over plain state with an
//! explicit clock (`now`, milliseconds), tested as tables:
//! - [`health`]: online / offline (debounced) / lost communication.
//! - [`reading`]: changes with deadbands, `min_interval` coalescing, `max_interval` re-reports,
//!   staleness.
//! - [`workspace`]: Free / Occupied / Booked / Unknown, with a hold time.
//!
//! [`Registry`] (`registry.rs`; the events it makes are built in `events.rs`) owns all state
//! and the timers: [`Registry::apply`] takes one inbound message,
//! [`Registry::tick`] whatever the clock has made due, and both return the events produced and
//! the device and workspace states to persist. Those states are written in the same outbox
//! batch as the events they produced, after them, so after a crash a state on disk always has
//! its events on disk: a message whose events were lost is also not remembered, and its
//! redelivery produces them again (see the outbox's invariant 1, and [`Applied::sync`] for
//! which states must be synced before the message is acknowledged).
//!
//! The task around it ([`run`], `task.rs`) only moves messages from the sources to the outbox writer and
//! sleeps until the next deadline. Its clock ([`Clock`]) is the wall time at start plus
//! monotonic time since, so a wall-clock step (NTP on a Pi without a real-time clock) cannot
//! make every device look lost at once; when the wall clock steps, the clock follows it and
//! every remembered time moves with it ([`Registry::shift`]). Wall time is what is persisted,
//! since deadlines outlive restarts; a remembered time later than the start is clamped to it.
//! `crate::clock` states the whole policy.

pub mod action;
pub mod booking;
pub mod condition;
pub mod config;
pub mod group;
pub mod health;
pub mod metrics;
pub mod reading;
pub mod sync;
pub mod version;
pub mod workspace;

mod events;
mod registry;
mod requests;
mod task;

pub use events::samples;
use events::*;
pub use registry::{Applied, IgnoredAnswer, Outgoing, OverLimit, Registry, Rules};
pub use requests::{
    ActionAnswer, ActionRefusal, ActionRequest, BookRefusal, PageFill, Request, Selection,
    Snapshot, Submit, PAGE_BYTES, VIEW_BYTES,
};
pub use task::run;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use wildmatch::WildMatch;

use crate::event::{Envelope, Event, EventType};
use crate::source::{Ack, Inbound, InboundBody};
use config::{DeviceClassConfig, DevicesConfig, GroupConfig, WorkspaceConfig};
pub use health::Health;
use health::{HealthPolicy, Transition};
use reading::{ReadingPolicy, Report, Timed};
use workspace::Vote;
pub use workspace::{WorkspaceState, WorkspaceStatus};

use crate::clock::{millis, shifted};
pub use crate::clock::{Clock, Millis};

/// The state one message (or one tick) changed, persisted with its events: one value from
/// the registry ([`registry::Applied`]) through the device stage ([`Commit`]) to the outbox
/// writer (`outbox::write`), so a new piece of persisted state is a field here, its arm in the
/// writer and its reader in `outbox::states`.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// Device states that changed.
    pub devices: Vec<(String, DeviceState)>,
    /// Workspace states that changed.
    pub workspaces: Vec<(String, WorkspaceState)>,
    /// Group states that changed.
    pub groups: Vec<(String, group::GroupState)>,
    /// Devices forgotten: their states are deleted (after the events).
    pub forgotten: Vec<String>,
    /// Actions whose state changed.
    pub actions: Vec<action::Action>,
    /// Actions done and past their deadlines: deleted.
    pub forgotten_actions: Vec<String>,
    /// Bookings kept (`Some`) or forgotten (`None`), by id.
    pub bookings: Vec<(String, Option<booking::Booking>)>,
}

impl Changes {
    /// Take in what a later change did.
    pub fn absorb(&mut self, other: Changes) {
        self.devices.extend(other.devices);
        self.workspaces.extend(other.workspaces);
        self.groups.extend(other.groups);
        self.forgotten.extend(other.forgotten);
        self.actions.extend(other.actions);
        self.forgotten_actions.extend(other.forgotten_actions);
        self.bookings.extend(other.bookings);
    }

    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

/// What the device stage hands the outbox for one inbound message (or one tick of its clock).
#[derive(Debug, Default)]
pub struct Commit {
    pub envelopes: Vec<Envelope>,
    /// The states that changed, written with the events.
    pub changes: Changes,
    /// Actions to publish once the batch is durable.
    pub outgoing: Vec<Outgoing>,
    /// The states must be durable before `ack` even when no event is queued (see
    /// [`Applied::sync`]); otherwise only a batch with events is synced.
    pub sync: bool,
    pub ack: Option<Ack>,
}

/// How often a device's `last_seen` is handed to the outbox. Seen-times are handed on at most
/// this often per device (and only for classes that watch silence), without a sync of their
/// own ([`Applied::sync`] false: the outbox writer holds them for the next batch, or a
/// checkpoint of its own at most a minute later), so that unchanged readings and heartbeats
/// cost no disk writes of their own; the copy on disk may be this plus that minute behind (a
/// crash loses what the writer held). A restart may therefore find a
/// `last_seen` older than the truth; that is harmless because after a restart the lost and
/// stale deadlines are never earlier than one heartbeat (or `stale_after`) after the start
/// ([`DeviceClass::settle`]): a device still talking is heard again before then, and one that
/// went silent is reported one period late at worst, never falsely. (`forget_after` waits at
/// least a minute after a start: a device is forgotten early only when it is silent for longer
/// than a minute then, and `forget_after` is meant to be far longer than any device's period.)
const SEEN_RESOLUTION: Millis = 30_000;

/// What edgehook remembers of one device, persisted in the outbox's `devices` tree.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceState {
    pub health: Health,
    /// Its latest changes of health, oldest first (absent in stores written before it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_history: Vec<health::Change>,
    /// Last reported value of every field (metadata included): what upstream knows.
    pub values: Map<String, Value>,
    /// A due report waiting out `min_interval`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<reading::Held>,
    /// When anything was last heard from the device (coarse on disk, see [`SEEN_RESOLUTION`]).
    pub last_seen: Millis,
    /// When the last reading arrived (as coarse as `last_seen`).
    pub last_reading: Millis,
    /// When the last `sensor.reading.updated` was sent.
    pub last_report: Millis,
    /// An offline report still inside its debounce window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offline_since: Option<Millis>,
    /// `sensor.reading.stale` was sent and no reading has come since.
    pub stale: bool,
    /// The last value of the class's `version_field` (absent in stores written before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Value>,
    /// The last reported value of each state field (battery, tamper, ...).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub condition: Map<String, Value>,
    /// The sync field as last reported, and whether it differs from the desired value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<sync::SyncState>,
    /// The value of the sync field desired for this device alone (set through the API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Value>,
    /// Back from offline or lost, and no presence reading since: the presence it reported
    /// before is no evidence about the room now, so it does not vote on its workspaces.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_presence: bool,
}

impl DeviceState {
    /// Apply `f` to every time this state remembers (see `crate::clock`).
    fn map_times(&mut self, f: impl Fn(Millis) -> Millis) {
        for t in [
            &mut self.last_seen,
            &mut self.last_reading,
            &mut self.last_report,
        ] {
            if *t > 0 {
                *t = f(*t);
            }
        }
        if let Some(t) = &mut self.offline_since {
            *t = f(*t);
        }
        for change in &mut self.health_history {
            change.at = f(change.at);
        }
        if let Some(t) = self.sync.as_mut().and_then(|s| s.differs_since.as_mut()) {
            *t = f(*t);
        }
    }

    /// The newest value of `field`, held or reported.
    fn latest(&self, field: &str) -> Option<&Value> {
        self.held
            .as_ref()
            .and_then(|h| h.fields.get(field))
            .or_else(|| self.values.get(field))
    }
}

/// A device class compiled from its configuration.
#[derive(Debug)]
pub struct DeviceClass {
    pub name: String,
    patterns: Vec<WildMatch>,
    health: HealthPolicy,
    reading: ReadingPolicy,
    /// `version_field`, when set.
    version_field: Option<String>,
    /// `identity_fields`, carried in `device.registered`.
    identity_fields: Vec<String>,
    /// `forget_after`.
    forget_after: Option<Millis>,
    /// The actions the class allows, where they are published, and how long an answer may take.
    actions: Vec<String>,
    action_topic: String,
    action_timeout: std::time::Duration,
    condition: condition::ConditionPolicy,
    sync: sync::SyncPolicy,
}

impl DeviceClass {
    pub fn new(config: &DeviceClassConfig) -> DeviceClass {
        DeviceClass {
            name: config.name.clone(),
            patterns: config.matches.iter().map(|m| WildMatch::new(m)).collect(),
            health: HealthPolicy {
                heartbeat: config.heartbeat.map(millis),
                lost_after: config.lost_after,
                debounce: millis(config.debounce),
            },
            reading: ReadingPolicy {
                deadband: config.deadband.clone(),
                min_interval: millis(config.min_interval),
                max_interval: config.max_interval.map(millis),
                stale_after: config.stale_after.map(millis),
            },
            version_field: Some(config.version_field.clone()).filter(|f| !f.is_empty()),
            identity_fields: config.identity_fields.clone(),
            forget_after: config.forget_after.map(millis),
            actions: config.actions.clone(),
            action_topic: config.action_topic.clone(),
            action_timeout: config.action_timeout,
            condition: condition::ConditionPolicy {
                fields: config.state_fields.clone(),
                deadband: config.state_deadband.clone(),
            },
            sync: sync::SyncPolicy {
                field: Some(config.sync_field.clone()).filter(|f| !f.is_empty()),
                desired: config.desired.clone(),
                grace: millis(config.sync_grace),
            },
        }
    }

    /// The actions devices of this class take.
    pub fn actions(&self) -> &[String] {
        &self.actions
    }

    /// Whether one of the class's `match` patterns fits `device_id`.
    pub fn matches(&self, device_id: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(device_id))
    }

    /// Whether silence matters for this class (so seen-times are worth persisting).
    fn watches_silence(&self) -> bool {
        self.health.heartbeat.is_some()
            || self.reading.stale_after.is_some()
            || self.forget_after.is_some()
    }

    /// When a device last heard from at `last_seen` is forgotten, if ever: `forget_after`
    /// later, and after a restart at `started` not before the broker has had a minute to
    /// deliver what it kept meanwhile.
    fn forget_at(&self, last_seen: Millis, started: Millis) -> Option<Millis> {
        let after = self.forget_after?;
        Some((last_seen + after).max(started + after.min(60_000)))
    }

    /// The earliest a silence may be reported after a start at `started`: one period, so the
    /// broker can first deliver what the device sent while edgehook was down.
    fn settle(&self, started: Millis) -> Millis {
        started
            + self
                .health
                .heartbeat
                .or(self.reading.stale_after)
                .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;

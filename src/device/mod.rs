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
//! [`Registry`] owns all state and the timers: [`Registry::apply`] takes one inbound message,
//! [`Registry::tick`] whatever the clock has made due, and both return the events produced and
//! the device and workspace states to persist. Those states are written in the same outbox
//! batch as the events they produced, after them, so after a crash a state on disk always has
//! its events on disk: a message whose events were lost is also not remembered, and its
//! redelivery produces them again (see the outbox's invariant 1, and [`Applied::sync`] for
//! which states must be synced before the message is acknowledged).
//!
//! The task around it ([`run`]) only moves messages from the sources to the outbox writer and
//! sleeps until the next deadline. Its clock ([`Clock`]) is the wall time at start plus
//! monotonic time since, so a wall-clock step (NTP on a Pi without a real-time clock) cannot
//! make every device look lost at once; when the wall clock steps, the clock follows it and
//! every remembered time moves with it ([`Registry::shift`]). Wall time is what is persisted,
//! since deadlines outlive restarts; a remembered time later than the start is clamped to it.
//! `crate::clock` states the whole policy.

pub mod config;
pub mod health;
pub mod reading;
pub mod workspace;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use wildmatch::WildMatch;

use crate::event::{Envelope, Event, EventType};
use crate::source::{Ack, Inbound, InboundBody};
use config::{DeviceClassConfig, DevicesConfig, WorkspaceConfig};
pub use health::Health;
use health::{HealthPolicy, Transition};
use reading::{ReadingPolicy, Report, Timed};
use workspace::Vote;
pub use workspace::{WorkspaceState, WorkspaceStatus};

use crate::clock::{millis, shifted};
pub use crate::clock::{Clock, Millis};

/// What the device stage hands the outbox for one inbound message (or one tick of its clock).
#[derive(Debug, Default)]
pub struct Commit {
    pub envelopes: Vec<Envelope>,
    /// Device states that changed.
    pub devices: Vec<(String, DeviceState)>,
    /// Workspace states that changed.
    pub workspaces: Vec<(String, WorkspaceState)>,
    /// The states must be durable before `ack` even when no event is queued (see
    /// [`Applied::sync`]); otherwise only a batch with events is synced.
    pub sync: bool,
    pub ack: Option<Ack>,
}

/// How far a device's `last_seen` may run ahead of its persisted copy. Seen-times are written
/// at most this often per device (and only for classes that watch silence), and without a sync
/// of their own ([`Applied::sync`] false: they reach the disk with the next synced batch, or
/// sled's own flush within a second), so that unchanged readings and heartbeats cost no disk
/// writes of their own. A restart may therefore find a `last_seen` older than the truth; that
/// is harmless because after a restart the lost and stale deadlines are never earlier than one
/// heartbeat (or `stale_after`) after the start ([`DeviceClass::settle`]): a device still
/// talking is heard again before then, and one that went silent is reported one period late at
/// worst, never falsely.
const SEEN_RESOLUTION: Millis = 30_000;

/// What edgehook remembers of one device, persisted in the outbox's `devices` tree.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceState {
    pub health: Health,
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
        }
    }

    fn matches(&self, device_id: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(device_id))
    }

    /// Whether silence matters for this class (so seen-times are worth persisting).
    fn watches_silence(&self) -> bool {
        self.health.heartbeat.is_some() || self.reading.stale_after.is_some()
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

struct Device {
    state: DeviceState,
    /// Index into `Registry::classes`.
    class: usize,
    /// When the state was last handed out for persisting.
    saved_at: Millis,
}

struct Workspace {
    config: WorkspaceConfig,
    hold: Millis,
    state: WorkspaceState,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    Device(String),
    Workspace(usize),
}

/// The outcome of one message or one tick.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    pub events: Vec<Event>,
    /// Device states that changed and must be persisted with the events.
    pub devices: Vec<(String, DeviceState)>,
    /// Workspace states likewise.
    pub workspaces: Vec<(String, WorkspaceState)>,
    /// Whether these states decide what is reported later (held values, a pending offline,
    /// the values upstream knows, health, a workspace's status or hold): then they must be on
    /// disk before the message is acknowledged, even when no event came of it. False when the
    /// only change is a device's `last_seen` moving on, which is checkpointed lazily: see
    /// [`SEEN_RESOLUTION`] for why a stale `last_seen` after a restart reports nothing wrong.
    pub sync: bool,
    /// The message was skipped as bad input, and why (the registry's bounds).
    pub refused: Option<Refused>,
}

/// Why a message was skipped by the registry (see [`DevicesConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// From a new device, with `max_devices` already known.
    MaxDevices,
    /// Its fields would take the device past `max_fields` field names.
    MaxFields,
}

impl Refused {
    pub const KINDS: [&'static str; 2] = ["max_devices", "max_fields"];

    pub fn kind(self) -> &'static str {
        match self {
            Refused::MaxDevices => Self::KINDS[0],
            Refused::MaxFields => Self::KINDS[1],
        }
    }
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.devices.is_empty() && self.workspaces.is_empty()
    }
}

/// Device rules from a reloaded configuration.
#[derive(Debug, Clone)]
pub struct Rules {
    pub classes: Vec<DeviceClassConfig>,
    pub workspaces: Vec<WorkspaceConfig>,
}

/// All devices and workspaces this gateway knows about, and their timers.
pub struct Registry {
    devices: HashMap<String, Device>,
    /// Configured classes, then the default class (which matches everything).
    classes: Vec<DeviceClass>,
    workspaces: Vec<Workspace>,
    /// Device id (sensor or display) → indexes into `workspaces`.
    workspaces_of: HashMap<String, Vec<usize>>,
    /// Deadlines, earliest first. A timer may fire early (a deadline only ever moves later
    /// between firings); firing recomputes it.
    timers: BTreeSet<(Millis, Timer)>,
    scheduled: HashMap<Timer, Millis>,
    /// When this run started (see [`DeviceClass::settle`]).
    started: Millis,
    limits: DevicesConfig,
}

impl Registry {
    pub fn new(
        classes: &[DeviceClassConfig],
        workspaces: &[WorkspaceConfig],
        known_devices: impl IntoIterator<Item = (String, DeviceState)>,
        known_workspaces: impl IntoIterator<Item = (String, WorkspaceState)>,
        started: Millis,
    ) -> Registry {
        // A time remembered from the future (the clock was ahead, then stepped back) is now.
        let clamp = |t: Millis| t.min(started);
        let known_workspaces = known_workspaces.into_iter().map(|(id, mut state)| {
            state.map_times(clamp);
            (id, state)
        });
        let mut registry = Registry {
            devices: known_devices
                .into_iter()
                .map(|(id, mut state)| {
                    state.map_times(clamp);
                    let device = Device {
                        state,
                        class: 0,
                        saved_at: started,
                    };
                    (id, device)
                })
                .collect(),
            classes: Vec::new(),
            workspaces: Vec::new(),
            workspaces_of: HashMap::new(),
            timers: BTreeSet::new(),
            scheduled: HashMap::new(),
            started,
            limits: DevicesConfig::default(),
        };
        registry.install(classes, workspaces, known_workspaces.into_iter().collect());
        registry
    }

    /// The wall clock stepped by `step` ms (see `crate::clock`): every remembered time moves
    /// with it, so that durations keep running and timestamps in events agree with the
    /// envelopes'. Returns every state, to be written lazily (no sync: a restart before they
    /// are written clamps or settles them).
    pub fn shift(&mut self, step: i64) -> Applied {
        let mut out = Applied::default();
        self.started = shifted(self.started, step);
        for (id, dev) in self.devices.iter_mut() {
            dev.state.map_times(|t| shifted(t, step));
            dev.saved_at = shifted(dev.saved_at, step);
            out.devices.push((id.clone(), dev.state.clone()));
        }
        for ws in self.workspaces.iter_mut() {
            ws.state.map_times(|t| shifted(t, step));
            out.workspaces
                .push((ws.config.id.clone(), ws.state.clone()));
        }
        self.reschedule();
        out
    }

    /// Bound the registry (the default is [`DevicesConfig::default`]). Devices already known
    /// stay, even past the bound; only new ones are refused.
    pub fn with_limits(mut self, limits: DevicesConfig) -> Registry {
        self.limits = limits;
        self
    }

    /// Take new device rules (a configuration reload) at `now`: classes are matched afresh,
    /// workspaces keep the state of those that stay, and every status is re-evaluated.
    pub fn reconfigure(&mut self, rules: &Rules, now: Millis) -> Applied {
        let mut out = self.tick(now);
        let known: HashMap<String, WorkspaceState> = self
            .workspaces
            .drain(..)
            .map(|w| (w.config.id, w.state))
            .collect();
        self.install(&rules.classes, &rules.workspaces, known);
        for i in 0..self.workspaces.len() {
            self.evaluate_workspace(i, now, None, &mut out);
        }
        out
    }

    /// Compile `classes`, bind `workspaces` (with their known states), classify every device
    /// and schedule every timer afresh.
    fn install(
        &mut self,
        classes: &[DeviceClassConfig],
        workspaces: &[WorkspaceConfig],
        mut known_workspaces: HashMap<String, WorkspaceState>,
    ) {
        self.classes = classes.iter().map(DeviceClass::new).collect();
        self.classes
            .push(DeviceClass::new(&DeviceClassConfig::default()));
        self.workspaces_of.clear();
        self.workspaces = workspaces
            .iter()
            .enumerate()
            .map(|(i, ws)| {
                for device in ws.sensors.iter().chain(&ws.display) {
                    self.workspaces_of
                        .entry(device.clone())
                        .or_default()
                        .push(i);
                }
                Workspace {
                    config: ws.clone(),
                    hold: millis(ws.hold),
                    state: known_workspaces.remove(&ws.id).unwrap_or_default(),
                }
            })
            .collect();
        let ids: Vec<String> = self.devices.keys().cloned().collect();
        for id in &ids {
            let class = self.class_of(id);
            self.devices.get_mut(id).expect("listed above").class = class;
        }
        self.reschedule();
    }

    /// Compute every timer afresh from the states.
    fn reschedule(&mut self) {
        self.timers.clear();
        self.scheduled.clear();
        let ids: Vec<String> = self.devices.keys().cloned().collect();
        for id in &ids {
            self.schedule_device(id);
        }
        for i in 0..self.workspaces.len() {
            self.schedule_workspace(i);
        }
    }

    fn class_of(&self, device_id: &str) -> usize {
        self.classes
            .iter()
            .position(|c| c.matches(device_id))
            .expect("the default class matches everything")
    }

    pub fn device(&self, id: &str) -> Option<&DeviceState> {
        self.devices.get(id).map(|d| &d.state)
    }

    /// The class that applies to `id`.
    pub fn class_name(&self, id: &str) -> &str {
        &self.classes[self.class_of(id)].name
    }

    pub fn workspace_status(&self, id: &str) -> Option<WorkspaceStatus> {
        self.workspaces
            .iter()
            .find(|w| w.config.id == id)
            .and_then(|w| w.state.status)
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// The next time [`Registry::tick`] has work, if any.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Apply one message from `device_id` received at `now` (after anything already due).
    pub fn apply(&mut self, device_id: &str, body: &InboundBody, now: Millis) -> Applied {
        let mut out = self.tick(now);
        if let Some(refused) = self.refuses(device_id, body) {
            out.refused = Some(refused);
            return out;
        }
        if !self.devices.contains_key(device_id) {
            let class = self.class_of(device_id);
            self.devices.insert(
                device_id.to_string(),
                Device {
                    state: DeviceState::default(),
                    class,
                    saved_at: 0,
                },
            );
        }
        let dev = self.devices.get_mut(device_id).expect("inserted above");
        let class = &self.classes[dev.class];
        let mut dirty = false;
        let transition = match body {
            InboundBody::Status { online: true } => health::heard(&mut dev.state, now, &mut dirty),
            InboundBody::Status { online: false } => {
                health::offline_reported(&mut dev.state, &class.health, now, &mut dirty)
            }
            InboundBody::Reading { .. } => health::heard(&mut dev.state, now, &mut dirty),
        };
        if let Some(t) = transition {
            out.events.push(health_event(device_id, t));
        }
        if let InboundBody::Reading { fields, metadata } = body {
            let report = reading::received(
                &mut dev.state,
                &class.reading,
                fields,
                metadata,
                now,
                &mut dirty,
            );
            if let Some(report) = report {
                out.events.push(reading_event(device_id, report));
            }
        }
        out.sync |= dirty;
        if dirty || (class.watches_silence() && now >= dev.saved_at + SEEN_RESOLUTION) {
            dev.saved_at = now;
            out.devices.push((device_id.to_string(), dev.state.clone()));
        }
        self.schedule_device(device_id);
        self.evaluate_workspaces_of(device_id, now, &mut out);
        out
    }

    /// Whether a message from `device_id` is beyond the registry's bounds.
    fn refuses(&self, device_id: &str, body: &InboundBody) -> Option<Refused> {
        let known = self.devices.get(device_id);
        if known.is_none() && self.devices.len() >= self.limits.max_devices {
            return Some(Refused::MaxDevices);
        }
        let InboundBody::Reading { fields, .. } = body else {
            return None;
        };
        let state = known.map(|d| &d.state);
        let has = |k: &String| state.is_some_and(|s| s.latest(k).is_some());
        let held = state.and_then(|s| s.held.as_ref()).map_or(0, |h| {
            h.fields
                .keys()
                .filter(|k| !state.is_some_and(|s| s.values.contains_key(*k)))
                .count()
        });
        let before = state.map_or(0, |s| s.values.len()) + held;
        let new = fields.keys().filter(|k| !has(k)).count();
        (before + new > self.limits.max_fields).then_some(Refused::MaxFields)
    }

    /// Everything the clock has made due by `now`: debounced offlines, lost communication,
    /// held reports, staleness, workspace holds ending.
    pub fn tick(&mut self, now: Millis) -> Applied {
        let mut out = Applied::default();
        while let Some((at, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            let (_, timer) = self.timers.pop_first().expect("checked");
            self.scheduled.remove(&timer);
            match timer {
                Timer::Device(id) => self.device_due(&id, now, &mut out),
                Timer::Workspace(i) => self.evaluate_workspace(i, now, None, &mut out),
            }
        }
        out
    }

    fn device_due(&mut self, id: &str, now: Millis, out: &mut Applied) {
        let Some(dev) = self.devices.get_mut(id) else {
            return;
        };
        let class = &self.classes[dev.class];
        let mut dirty = false;
        let transition = health::due(&mut dev.state, &class.health, self.started, now);
        if let Some(t) = transition {
            out.events.push(health_event(id, t));
            dirty = true;
        }
        let online = dev.state.health == Health::Online;
        for timed in reading::due(
            &mut dev.state,
            &class.reading,
            online,
            class.settle(self.started),
            now,
        ) {
            dirty = true;
            out.events.push(match timed {
                Timed::Report(report) => reading_event(id, report),
                Timed::Stale { last_reading } => Event::device(
                    EventType::SensorReadingStale,
                    id,
                    one_field("last_reading", rfc3339(last_reading)),
                ),
            });
        }
        if dirty {
            dev.saved_at = now;
            out.sync = true;
            out.devices.push((id.to_string(), dev.state.clone()));
        }
        self.schedule_device(id);
        if transition.is_some() {
            self.evaluate_workspaces_of(id, now, out);
        }
    }

    fn evaluate_workspaces_of(&mut self, device_id: &str, now: Millis, out: &mut Applied) {
        if let Some(indexes) = self.workspaces_of.get(device_id) {
            for i in indexes.clone() {
                self.evaluate_workspace(i, now, Some(device_id), out);
            }
        }
    }

    fn evaluate_workspace(
        &mut self,
        i: usize,
        now: Millis,
        cause: Option<&str>,
        out: &mut Applied,
    ) {
        let ws = &self.workspaces[i];
        let votes: Vec<Vote> = ws
            .config
            .sensors
            .iter()
            .map(|s| {
                vote(
                    self.devices.get(s).map(|d| &d.state),
                    &ws.config.presence_field,
                )
            })
            .collect();
        let booked = ws
            .config
            .display
            .as_ref()
            .and_then(|d| self.devices.get(d))
            .filter(|d| d.state.health == Health::Online)
            .and_then(|d| d.state.latest(&ws.config.booking_field))
            .and_then(truthy)
            .unwrap_or(false);
        let next = workspace::evaluate(&ws.state, &votes, booked, ws.hold, now);
        let ws = &mut self.workspaces[i];
        if next != ws.state {
            if next.status != ws.state.status {
                if let Some(status) = next.status {
                    out.events.push(workspace_event(
                        &ws.config.id,
                        status,
                        ws.state.status,
                        cause,
                    ));
                }
            }
            out.sync = true;
            out.workspaces.push((ws.config.id.clone(), next.clone()));
            ws.state = next;
        }
        self.schedule_workspace(i);
    }

    fn schedule_device(&mut self, id: &str) {
        let Some(dev) = self.devices.get(id) else {
            return;
        };
        let class = &self.classes[dev.class];
        let online = dev.state.health == Health::Online;
        let at = health::deadline(&dev.state, &class.health, self.started)
            .into_iter()
            .chain(reading::deadline(
                &dev.state,
                &class.reading,
                online,
                class.settle(self.started),
            ))
            .min();
        self.schedule(Timer::Device(id.to_string()), at);
    }

    fn schedule_workspace(&mut self, i: usize) {
        let ws = &self.workspaces[i];
        let at = workspace::deadline(&ws.state, ws.hold);
        self.schedule(Timer::Workspace(i), at);
    }

    /// Make sure `timer` fires no later than `at`. An earlier firing stays: it recomputes.
    fn schedule(&mut self, timer: Timer, at: Option<Millis>) {
        let Some(at) = at else {
            return;
        };
        match self.scheduled.get(&timer) {
            Some(&current) if current <= at => {}
            current => {
                if let Some(current) = current {
                    self.timers.remove(&(*current, timer.clone()));
                }
                self.timers.insert((at, timer.clone()));
                self.scheduled.insert(timer, at);
            }
        }
    }
}

/// How a bound sensor votes on its workspace's status.
fn vote(device: Option<&DeviceState>, presence_field: &str) -> Vote {
    let Some(d) = device else {
        return Vote::Silent;
    };
    match d.health {
        Health::Lost | Health::Offline => Vote::Unavailable,
        Health::Online | Health::Unknown => match d.latest(presence_field).and_then(truthy) {
            Some(true) => Vote::Present,
            Some(false) => Vote::Absent,
            None => Vote::Silent,
        },
    }
}

/// Interpret a presence or booking field: booleans, numbers (non-zero is true) and the common
/// words.
fn truthy(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|x| x != 0.0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" | "occupied" | "present" | "detected" | "booked"
            | "reserved" => Some(true),
            "0" | "false" | "no" | "off" | "free" | "vacant" | "absent" | "clear" | "available" => {
                Some(false)
            }
            _ => None,
        },
        _ => None,
    }
}

fn rfc3339(at: Millis) -> Value {
    Value::String(rfc3339_text(at))
}

fn rfc3339_text(at: Millis) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(at)).to_string()
}

fn one_field(key: &str, value: Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(key.into(), value);
    m
}

fn health_event(device_id: &str, t: Transition) -> Event {
    match t {
        Transition::Online => Event::device(EventType::DeviceOnline, device_id, Map::new()),
        Transition::Offline { since } => Event::device(
            EventType::DeviceOffline,
            device_id,
            one_field("since", rfc3339(since)),
        ),
        Transition::Lost { last_seen } => Event::device(
            EventType::DeviceLostCommunication,
            device_id,
            one_field("last_seen", rfc3339(last_seen)),
        ),
    }
}

fn reading_event(device_id: &str, report: Report) -> Event {
    let mut data = Map::new();
    data.insert("fields".into(), Value::Object(report.fields));
    data.insert(
        "changed".into(),
        Value::Array(report.changed.into_iter().map(Value::String).collect()),
    );
    Event::device(EventType::SensorReadingUpdated, device_id, data)
}

fn workspace_event(
    workspace_id: &str,
    status: WorkspaceStatus,
    previous: Option<WorkspaceStatus>,
    cause: Option<&str>,
) -> Event {
    let mut data = Map::new();
    data.insert("workspace_id".into(), workspace_id.into());
    data.insert("status".into(), status.as_str().into());
    data.insert(
        "previous_status".into(),
        previous.map_or(Value::Null, |p| p.as_str().into()),
    );
    data.insert("device_id".into(), cause.map_or(Value::Null, |d| d.into()));
    Event::workspace(workspace_id, data)
}

/// The device stage task: apply each inbound message and each due deadline, seal the events
/// produced and pass them, with the states to persist and the message's ack, to the outbox
/// writer. Ends when the sources have all gone (their senders dropped), after passing on
/// everything received; timers still pending are persisted and resume on the next start.
pub async fn run(
    mut registry: Registry,
    mut clock: Clock,
    gateway_id: Arc<str>,
    mut inbound: mpsc::Receiver<Inbound>,
    mut rules: mpsc::Receiver<Rules>,
    commits: mpsc::Sender<Commit>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    let mut reloadable = true;
    let mut faults = crate::metrics::FaultLog::new(Duration::from_secs(60));
    let mut told_unset = false;
    // A clock step is noticed within a second even when nothing else happens.
    let mut watch = tokio::time::interval(Duration::from_secs(1));
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        crate::clock::STEPS.observe(); // for the ages delivery computes
        if let Some(step) = clock.follow_wall() {
            tracing::warn!(
                step_ms = step,
                now = %rfc3339_text(clock.now()),
                "system clock stepped; device timers keep their real durations and remembered times move with the clock"
            );
            let shifted = registry.shift(step);
            let commit = Commit {
                devices: shifted.devices,
                workspaces: shifted.workspaces,
                ..Default::default()
            };
            if commits.send(commit).await.is_err() {
                return;
            }
        }
        let set = crate::clock::synchronised(clock.now());
        if !set && !told_unset {
            tracing::error!(now = %rfc3339_text(clock.now()), "the system clock is not set (no real-time clock, NTP not synchronised yet): events are stamped with it, HTTPS certificates look not yet valid until it is, and nothing is given up on (max_age, max_attempts) meanwhile");
        } else if set && told_unset {
            tracing::info!(now = %rfc3339_text(clock.now()), "the system clock is set");
        }
        told_unset = !set;
        let wake = registry.next_deadline().map(|at| clock.instant_at(at));
        let (applied, ack) = tokio::select! {
            msg = inbound.recv() => match msg {
                Some(msg) => {
                    let applied = registry.apply(&msg.device_id, &msg.body, clock.now());
                    if let Some(refused) = applied.refused {
                        metrics.device_message_refused(refused.kind());
                        if let Some(suppressed) = faults.admit(refused.kind(), "registry", std::time::Instant::now()) {
                            let limits = &registry.limits;
                            match refused {
                                Refused::MaxDevices => tracing::warn!(device_id = %msg.device_id, max_devices = limits.max_devices, suppressed, "device limit reached: messages from new devices are skipped (known devices keep flowing); raise devices.max_devices if these are real devices"),
                                Refused::MaxFields => tracing::warn!(device_id = %msg.device_id, max_fields = limits.max_fields, suppressed, "reading skipped: it would give the device more than devices.max_fields field names"),
                            }
                        }
                    } else {
                        metrics.set_devices(registry.len() as u64);
                    }
                    (applied, msg.ack)
                }
                None => break,
            },
            new = rules.recv(), if reloadable => match new {
                Some(new) => (registry.reconfigure(&new, clock.now()), None),
                None => {
                    reloadable = false;
                    continue;
                }
            },
            _ = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {
                (registry.tick(clock.now()), None)
            }
            _ = watch.tick() => continue,
        };
        if applied.is_empty() && ack.is_none() {
            continue;
        }
        // The device stage's time, so that `timestamp` agrees with the times in `data`.
        let now = UNIX_EPOCH + Duration::from_millis(clock.now());
        let commit = Commit {
            envelopes: applied
                .events
                .iter()
                .map(|e| Envelope::seal(e, &gateway_id, now))
                .collect(),
            devices: applied.devices,
            workspaces: applied.workspaces,
            sync: applied.sync,
            ack,
        };
        if commits.send(commit).await.is_err() {
            tracing::error!("outbox writer has stopped; device stage stopping");
            return;
        }
    }
    tracing::debug!(devices = registry.len(), "device stage drained");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reading(v: Value) -> InboundBody {
        InboundBody::Reading {
            fields: v.as_object().unwrap().clone(),
            metadata: Arc::from(vec!["seq".to_string(), "ts".to_string()]),
        }
    }

    const ONLINE: InboundBody = InboundBody::Status { online: true };
    const OFFLINE: InboundBody = InboundBody::Status { online: false };

    fn kinds(a: &Applied) -> Vec<&'static str> {
        a.events.iter().map(|e| e.kind.as_str()).collect()
    }

    fn ws(id: &str, sensors: &[&str], display: Option<&str>) -> WorkspaceConfig {
        WorkspaceConfig {
            id: id.into(),
            sensors: sensors.iter().map(|s| s.to_string()).collect(),
            presence_field: "presence".into(),
            display: display.map(str::to_owned),
            booking_field: "booked".into(),
            hold: Duration::from_secs(60),
        }
    }

    fn class(name: &str, matches: &str) -> DeviceClassConfig {
        DeviceClassConfig {
            name: name.into(),
            matches: vec![matches.into()],
            heartbeat: Some(Duration::from_secs(10)),
            lost_after: 3.0,
            debounce: Duration::ZERO,
            ..Default::default()
        }
    }

    /// (workspace status, previous) of each workspace event.
    fn statuses(a: &Applied) -> Vec<(Value, Value)> {
        a.events
            .iter()
            .filter(|e| e.kind == EventType::WorkspaceStatusUpdated)
            .map(|e| (e.data["status"].clone(), e.data["previous_status"].clone()))
            .collect()
    }

    #[test]
    fn first_reading_is_a_change_and_brings_the_device_online() {
        let mut r = Registry::new(&[], &[], [], [], 0);
        let a = r.apply("t1", &reading(json!({"temp": 21.5, "seq": 1})), 1);
        assert_eq!(kinds(&a), ["device.online", "sensor.reading.updated"]);
        assert_eq!(a.events[1].data["changed"], json!(["temp"]));
        assert_eq!(a.events[1].data["fields"], json!({"temp": 21.5, "seq": 1}));
        assert_eq!(a.devices[0].1.health, Health::Online);
        // unchanged, in a class that does not watch silence: nothing to write at all
        assert!(r
            .apply("t1", &reading(json!({"temp": 21.5, "seq": 2})), 100_000)
            .is_empty());
    }

    #[test]
    fn classes_match_by_pattern_first_wins_and_default_catches_the_rest() {
        let r = Registry::new(
            &[class("occ", "occ-*"), class("any-1", "*-1")],
            &[],
            [],
            [],
            0,
        );
        assert_eq!(r.class_name("occ-1"), "occ");
        assert_eq!(r.class_name("disp-1"), "any-1");
        assert_eq!(r.class_name("disp-2"), "default");
    }

    #[test]
    fn default_class_debounces_offline() {
        let mut r = Registry::new(&[], &[], [], [], 0);
        assert_eq!(kinds(&r.apply("d", &ONLINE, 0)), ["device.online"]);
        assert!(r.apply("d", &OFFLINE, 1_000).events.is_empty());
        assert_eq!(r.next_deadline(), Some(6_000), "5 s default debounce");
        assert!(r.tick(5_999).events.is_empty());
        let a = r.tick(6_000);
        assert_eq!(kinds(&a), ["device.offline"]);
        assert_eq!(a.events[0].data["since"], "1970-01-01T00:00:01.000Z");
        assert_eq!(
            kinds(&r.apply("d", &reading(json!({"x": 1})), 7_000)),
            ["device.online", "sensor.reading.updated"]
        );
    }

    #[test]
    fn lost_communication_and_recovery_with_messages_in_between() {
        let mut r = Registry::new(&[class("occ", "occ-*")], &[], [], [], 0);
        r.apply("occ-1", &ONLINE, 0);
        for t in [10_000, 20_000, 30_000] {
            assert!(
                r.apply("occ-1", &reading(json!({"presence": false})), t)
                    .events
                    .len()
                    <= 1
            );
        }
        assert!(r.tick(59_999).events.is_empty());
        let a = r.tick(60_000);
        assert_eq!(kinds(&a), ["device.lost_communication"]);
        assert_eq!(a.events[0].data["last_seen"], "1970-01-01T00:00:30.000Z");
        assert_eq!(r.device("occ-1").unwrap().health, Health::Lost);
        assert_eq!(r.next_deadline(), None);
        assert_eq!(kinds(&r.apply("occ-1", &ONLINE, 70_000)), ["device.online"]);
    }

    #[test]
    fn seen_times_are_persisted_coarsely_for_watched_classes() {
        let mut r = Registry::new(&[class("occ", "occ-*")], &[], [], [], 0);
        assert_eq!(
            r.apply("occ-1", &reading(json!({"t": 1})), 1_000)
                .devices
                .len(),
            1
        );
        assert!(r
            .apply("occ-1", &reading(json!({"t": 1})), 2_000)
            .devices
            .is_empty());
        assert!(r
            .apply("occ-1", &reading(json!({"t": 1})), 30_999)
            .devices
            .is_empty());
        let a = r.apply("occ-1", &reading(json!({"t": 1})), 31_000);
        assert!(a.events.is_empty());
        assert_eq!(a.devices[0].1.last_seen, 31_000);
    }

    /// Issue 16 #1: what an acknowledgement must wait for. Anything that changes what will be
    /// reported is synced even without an event; a `last_seen` refresh alone is not.
    #[test]
    fn what_must_be_on_disk_before_the_ack() {
        let mut held = class("held", "held-*");
        held.min_interval = Duration::from_secs(5);
        held.heartbeat = Some(Duration::from_secs(60));
        let mut slow = class("slow", "slow-*");
        slow.debounce = Duration::from_secs(5);
        slow.heartbeat = Some(Duration::from_secs(60));
        let mut r = Registry::new(&[held, slow], &[], [], [], 0);
        // (device, message, at, events, states to write, sync); `None`: the clock alone
        type Case = (&'static str, Option<InboundBody>, Millis, usize, bool, bool);
        let cases: &[Case] = &[
            (
                "held-1",
                Some(reading(json!({"presence": true}))),
                1_000,
                2,
                true,
                true,
            ),
            // B inside min_interval: held back, no event, but what is held must survive
            (
                "held-1",
                Some(reading(json!({"presence": false}))),
                1_300,
                0,
                true,
                true,
            ),
            // an exact repeat of the held values changes nothing
            (
                "held-1",
                Some(reading(json!({"presence": false}))),
                1_400,
                0,
                false,
                false,
            ),
            // the held report goes out when min_interval ends
            ("held-1", None, 6_000, 1, true, true),
            ("slow-1", Some(ONLINE), 7_000, 1, true, true),
            // an offline report inside its debounce window: no event yet, synced
            ("slow-1", Some(OFFLINE), 8_000, 0, true, true),
            ("slow-1", Some(ONLINE), 8_500, 0, true, true),
            // unchanged, 30 s on, in a class that watches silence: a lazy checkpoint
            ("slow-1", Some(reading(json!({}))), 40_000, 0, true, false),
            ("slow-1", Some(reading(json!({}))), 41_000, 0, false, false),
        ];
        for (i, (device, body, at, events, states, sync)) in cases.iter().enumerate() {
            let a = match body {
                Some(body) => r.apply(device, body, *at),
                None => r.tick(*at),
            };
            let case = format!("case {i}: {device} at {at}: {a:?}");
            assert_eq!(a.events.len(), *events, "{case}");
            assert_eq!(!a.devices.is_empty(), *states, "{case}");
            assert_eq!(a.sync, *sync, "{case}");
        }
    }

    /// Issue 16 #6: the registry's bounds, as a table of messages and what each does.
    #[test]
    fn the_registry_is_bounded_in_devices_and_field_names() {
        let limits = DevicesConfig {
            max_devices: 2,
            max_fields: 3,
        };
        let mut r = Registry::new(&[], &[], [], [], 0).with_limits(limits);
        let cases: &[(&str, Value, Option<Refused>)] = &[
            ("a1", json!({"x": 1}), None),
            ("a2", json!({"x": 1}), None),
            ("a3", json!({"x": 1}), Some(Refused::MaxDevices)),
            ("a1", json!({"x": 2, "y": 1, "z": 1}), None),
            ("a1", json!({"w": 1}), Some(Refused::MaxFields)),
            ("a1", json!({"x": 3}), None),
            (
                "a2",
                json!({"p": 1, "q": 1, "r": 1}),
                Some(Refused::MaxFields),
            ),
        ];
        for (i, (device, fields, refused)) in cases.iter().enumerate() {
            let a = r.apply(device, &reading(fields.clone()), 1_000 + i as Millis);
            assert_eq!(a.refused, *refused, "case {i}");
            if refused.is_some() {
                assert!(
                    a.events.is_empty() && a.devices.is_empty(),
                    "case {i}: {a:?}"
                );
            } else {
                assert!(!a.events.is_empty(), "case {i}");
            }
        }
        assert_eq!(r.len(), 2);
        assert!(r.device("a3").is_none());
        // A status from a known device still counts; from a new one it is refused too.
        assert_eq!(r.apply("a2", &OFFLINE, 2_000).refused, None);
        assert_eq!(
            r.apply("a9", &ONLINE, 2_000).refused,
            Some(Refused::MaxDevices)
        );
    }

    /// Issue 16 #7: state written while the clock was a day ahead, then a restart with the
    /// right clock. A remembered time from the future is taken as now, so a change is reported
    /// at once (with `min_interval = 0` it used to wait a day), and timers run from now.
    #[test]
    fn times_remembered_from_the_future_are_taken_as_now() {
        let day = 86_400_000;
        let c = class("occ", "occ-*");
        let mut ahead = Registry::new(std::slice::from_ref(&c), &[], [], [], day);
        let saved = ahead
            .apply("occ-1", &reading(json!({"presence": true})), day + 1_000)
            .devices;
        let mut r = Registry::new(std::slice::from_ref(&c), &[], saved, [], 5_000);
        let a = r.apply("occ-1", &reading(json!({"presence": false})), 6_000);
        assert_eq!(kinds(&a), ["sensor.reading.updated"]);
        assert!(r.device("occ-1").unwrap().last_seen <= 6_000);
        // lost after 3 heartbeats of 10 s from the last message, not a day later
        assert!(r.tick(35_999).events.is_empty());
        assert_eq!(kinds(&r.tick(36_000)), ["device.lost_communication"]);
    }

    /// Issue 16 #7: a step while running moves every remembered time with the clock: a held
    /// report still waits out exactly `min_interval`, an offline its debounce, a hold its time.
    #[test]
    fn a_clock_step_keeps_every_duration_and_moves_every_time() {
        let mut c = class("occ", "occ-*");
        c.min_interval = Duration::from_secs(10);
        c.debounce = Duration::from_secs(5);
        c.heartbeat = None;
        let ws = [ws("room", &["occ-1"], None)];
        let mut r = Registry::new(std::slice::from_ref(&c), &ws, [], [], 0);
        r.apply("occ-1", &reading(json!({"presence": true})), 1_000);
        r.apply("occ-1", &reading(json!({"presence": false})), 2_000); // held until 11 s
        r.apply("occ-2", &OFFLINE, 2_000);
        r.apply("occ-3", &ONLINE, 2_500);
        r.apply("occ-3", &OFFLINE, 3_000); // offline at 8 s
        for step in [3_600_000i64, -500] {
            let mut r2 = Registry::new(
                std::slice::from_ref(&c),
                &ws,
                r.devices.iter().map(|(k, d)| (k.clone(), d.state.clone())),
                r.workspaces
                    .iter()
                    .map(|w| (w.config.id.clone(), w.state.clone())),
                3_000,
            );
            let shifted = r2.shift(step);
            assert_eq!(shifted.devices.len(), 3);
            assert!(!shifted.sync, "moved times are written lazily");
            let at = |t: i64| (t + step) as Millis;
            assert_eq!(r2.device("occ-1").unwrap().last_report, at(1_000));
            assert!(r2.tick(at(7_999)).events.is_empty(), "step {step}");
            assert_eq!(
                kinds(&r2.tick(at(8_000))),
                ["device.offline"],
                "step {step}"
            );
            assert!(r2.tick(at(10_999)).events.is_empty(), "step {step}");
            let a = r2.tick(at(11_000));
            assert_eq!(kinds(&a)[0], "sensor.reading.updated", "step {step}");
            // the workspace's hold (60 s) runs from when presence ended (2 s), moved too
            assert!(r2.tick(at(61_999)).events.is_empty(), "step {step}");
            assert_eq!(
                statuses(&r2.tick(at(62_000))),
                [(json!("Free"), json!("Occupied"))]
            );
        }
    }

    #[test]
    fn restart_neither_reannounces_nor_forgets_silence() {
        let mut before = Registry::new(&[class("occ", "occ-*")], &[], [], [], 0);
        let mut saved: HashMap<String, DeviceState> = HashMap::new();
        for id in ["occ-1", "occ-2"] {
            for (k, s) in before
                .apply(id, &reading(json!({"presence": true})), 1_000)
                .devices
            {
                saved.insert(k, s);
            }
        }
        // restarted at t=100 s: occ-1 still talks, occ-2 went silent while we were down
        let mut r = Registry::new(&[class("occ", "occ-*")], &[], saved, [], 100_000);
        assert!(
            r.apply("occ-1", &ONLINE, 100_500).events.is_empty(),
            "no online burst"
        );
        assert!(r
            .apply("occ-1", &reading(json!({"presence": true})), 101_000)
            .events
            .is_empty());
        assert!(
            r.tick(109_999).events.is_empty(),
            "one heartbeat of grace after the start"
        );
        let a = r.tick(110_000);
        assert_eq!(kinds(&a), ["device.lost_communication"]);
        assert_eq!(a.events[0].data["device_id"], "occ-2");
    }

    #[test]
    fn held_reports_survive_a_restart() {
        let mut c = class("occ", "occ-*");
        c.min_interval = Duration::from_secs(10);
        let mut r = Registry::new(std::slice::from_ref(&c), &[], [], [], 0);
        r.apply("occ-1", &reading(json!({"t": 1})), 1_000);
        let a = r.apply("occ-1", &reading(json!({"t": 2})), 2_000);
        assert!(a.events.is_empty());
        let saved = a.devices; // persisted with the message's ack
        let mut r = Registry::new(std::slice::from_ref(&c), &[], saved, [], 5_000);
        let a = r.tick(11_000);
        assert_eq!(kinds(&a), ["sensor.reading.updated"]);
        assert_eq!(a.events[0].data["fields"], json!({"t": 2}));
    }

    #[test]
    fn workspace_follows_sensors_display_hold_and_health() {
        let classes = [class("occ", "occ-*"), class("disp", "disp-*")];
        let mut r = Registry::new(
            &classes,
            &[ws("room", &["occ-a", "occ-b"], Some("disp-1"))],
            [],
            [],
            0,
        );
        // one sensor absent, the other never heard: Free (only usable sensors vote)
        assert_eq!(
            statuses(&r.apply("occ-a", &reading(json!({"presence": false})), 1_000)),
            [(json!("Free"), Value::Null)]
        );
        // the display reports a booking: Booked
        let a = r.apply("disp-1", &reading(json!({"booked": true})), 2_000);
        assert_eq!(statuses(&a), [(json!("Booked"), json!("Free"))]);
        assert_eq!(a.events.last().unwrap().data["device_id"], "disp-1");
        // presence anywhere: Occupied at once
        assert_eq!(
            statuses(&r.apply("occ-b", &reading(json!({"presence": "occupied"})), 3_000)),
            [(json!("Occupied"), json!("Booked"))]
        );
        // presence ends: held for 60 s
        assert!(
            statuses(&r.apply("occ-b", &reading(json!({"presence": false})), 4_000)).is_empty()
        );
        assert_eq!(
            r.next_deadline(),
            Some(31_000),
            "occ-a's lost deadline comes first"
        );
        for t in [30_000, 55_000] {
            r.apply("occ-a", &reading(json!({"presence": false})), t);
            r.apply("occ-b", &reading(json!({"presence": false})), t);
            r.apply("disp-1", &reading(json!({"booked": true})), t);
        }
        assert!(statuses(&r.tick(63_999)).is_empty());
        let a = r.tick(64_000);
        assert_eq!(statuses(&a), [(json!("Booked"), json!("Occupied"))]);
        assert_eq!(
            a.events[0].data["device_id"],
            Value::Null,
            "the hold ended, no device"
        );
        assert_eq!(r.workspace_status("room"), Some(WorkspaceStatus::Booked));
        // everything goes silent. The display first (timers of one instant run in id order):
        // no booking without it, so Free; then both sensors: Unknown.
        let a = r.tick(90_000);
        assert_eq!(
            kinds(&a),
            [
                "device.lost_communication",
                "workspace.status.updated",
                "device.lost_communication",
                "device.lost_communication",
                "workspace.status.updated"
            ]
        );
        assert_eq!(
            statuses(&a),
            [
                (json!("Free"), json!("Booked")),
                (json!("Unknown"), json!("Free"))
            ]
        );
        // a sensor comes back absent: Free (the display is lost, so no booking)
        let a = r.apply("occ-a", &reading(json!({"presence": false})), 95_000);
        assert_eq!(statuses(&a), [(json!("Free"), json!("Unknown"))]);
        assert_eq!(a.workspaces.last().unwrap().0, "room");
    }

    #[test]
    fn reconfigure_reclassifies_devices_and_binds_new_workspaces() {
        let mut r = Registry::new(&[], &[], [], [], 0);
        r.apply("occ-1", &reading(json!({"presence": true})), 1_000);
        assert_eq!(r.class_name("occ-1"), "default");
        let rules = Rules {
            classes: vec![class("occ", "occ-*")],
            workspaces: vec![ws("desk", &["occ-1"], None)],
        };
        let a = r.reconfigure(&rules, 2_000);
        assert_eq!(r.class_name("occ-1"), "occ");
        assert_eq!(statuses(&a), [(json!("Occupied"), Value::Null)]);
        assert_eq!(
            r.next_deadline(),
            Some(31_000),
            "the new class's heartbeat applies"
        );
        // the new class has no debounce: offline at once
        assert_eq!(
            kinds(&r.apply("occ-1", &OFFLINE, 3_000)),
            ["device.offline", "workspace.status.updated"]
        );
    }

    #[test]
    fn workspace_state_survives_a_restart_mid_hold() {
        let w = [ws("desk", &["occ-a"], None)];
        let mut r = Registry::new(&[], &w, [], [], 0);
        r.apply("occ-a", &reading(json!({"presence": true})), 1_000);
        let a = r.apply("occ-a", &reading(json!({"presence": false})), 2_000);
        let (devices, workspaces) = (a.devices, a.workspaces);
        assert_eq!(workspaces[0].1.vacated_at, Some(2_000));
        let mut r = Registry::new(&[], &w, devices, workspaces, 10_000);
        assert!(r
            .apply("occ-a", &reading(json!({"presence": false})), 20_000)
            .events
            .is_empty());
        assert_eq!(
            statuses(&r.tick(62_000)),
            [(json!("Free"), json!("Occupied"))]
        );
    }
}

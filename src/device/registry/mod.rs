//! The registry: every device's and workspace's state, and what applying one message or one
//! timer to it yields (events, state changes, refusals), on the stage's own clock.
//!
//! One concern per file, each an `impl Registry` of its own: here the devices (receive a
//! message, the clock's ticks, the registry's bounds, snapshots); [`actions`], [`bookings`],
//! [`groups`], [`workspaces`], and [`reconfigure`] (a reloaded configuration, forgetting a
//! device, a desired value).

mod actions;
mod bookings;
mod groups;
mod reconfigure;
mod workspaces;

pub use reconfigure::Rules;
pub(super) use workspaces::truthy;
#[cfg(test)]
pub(super) use workspaces::vote;

use super::*;

pub(super) struct Device {
    pub(super) state: DeviceState,
    /// Index into `Registry::classes`.
    pub(super) class: usize,
    /// When the state was last handed out for persisting.
    pub(super) saved_at: Millis,
}

pub(super) struct Workspace {
    pub(super) config: WorkspaceConfig,
    pub(super) hold: Millis,
    pub(super) state: WorkspaceState,
}

pub(super) struct Group {
    pub(super) config: GroupConfig,
    pub(super) policy: group::GroupPolicy,
    pub(super) patterns: Vec<WildMatch>,
    /// The workspace's sensors, when the group is a workspace's.
    pub(super) sensors: Vec<String>,
    pub(super) state: group::GroupState,
    /// The known devices that are members.
    pub(super) members: BTreeSet<String>,
    /// Their aggregates, kept up to date member by member ([`group::Tally`]).
    pub(super) tally: group::Tally,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Timer {
    Device(String),
    Workspace(usize),
    Group(usize),
    /// An action's timeout, deadline, or the end of remembering it.
    Action(String),
    /// Send a device its next action (after a restart).
    Dispatch(String),
}

/// The outcome of one message or one tick.
#[derive(Debug, Default, PartialEq)]
pub struct Applied {
    pub events: Vec<Event>,
    /// The states that changed, persisted with the events.
    pub changes: Changes,
    /// Whether these states decide what is reported later (held values, a pending offline,
    /// the values upstream knows, health, a workspace's status or hold): then they must be on
    /// disk before the message is acknowledged, even when no event came of it. False when the
    /// only change is a device's `last_seen` moving on, which is checkpointed lazily: see
    /// [`SEEN_RESOLUTION`] for why a stale `last_seen` after a restart reports nothing wrong.
    pub sync: bool,
    /// The message was skipped as bad input, and why (the registry's bounds).
    pub refused: Option<OverLimit>,
    /// A device's answer to an action was ignored, and why (no event came of it).
    pub ignored_answer: Option<IgnoredAnswer>,
    /// Actions to publish once this is durable.
    pub outgoing: Vec<Outgoing>,
}

/// Why an answer to an action made no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoredAnswer {
    /// The action was done already (answered before, timed out, expired): a second or late
    /// answer.
    Late,
    /// No such action of this device's is remembered.
    Unknown,
}

impl IgnoredAnswer {
    pub const KINDS: [&'static str; 2] = ["late", "unknown"];

    pub fn kind(self) -> &'static str {
        match self {
            IgnoredAnswer::Late => Self::KINDS[0],
            IgnoredAnswer::Unknown => Self::KINDS[1],
        }
    }
}

/// At most this many bookings are kept per workspace (more are refused, 429).
pub const MAX_BOOKINGS_PER_WORKSPACE: usize = 64;

/// Why a message was skipped by the registry (see [`DevicesConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimit {
    /// From a new device, with `max_devices` already known.
    MaxDevices,
    /// Its fields would take the device past `max_fields` field names.
    MaxFields,
    /// Its values would take what is kept of the device past `max_state_bytes`.
    MaxStateBytes,
}

impl OverLimit {
    pub const KINDS: [&'static str; 3] = ["max_devices", "max_fields", "max_state_bytes"];

    pub fn kind(self) -> &'static str {
        match self {
            OverLimit::MaxDevices => Self::KINDS[0],
            OverLimit::MaxFields => Self::KINDS[1],
            OverLimit::MaxStateBytes => Self::KINDS[2],
        }
    }
}

/// The size of `value` as JSON text, counted without writing it.
pub fn json_bytes(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

impl Applied {
    /// The commit for the outbox: the events sealed as `gateway_id`'s at `at` (the stage's
    /// time, so that `timestamp` agrees with the times in `data`), every state that changed,
    /// and the acknowledgement to send once it is durable.
    pub fn seal(self, gateway_id: &str, at: std::time::SystemTime, ack: Option<Ack>) -> Commit {
        Commit {
            envelopes: self
                .events
                .iter()
                .map(|e| Envelope::seal(e, gateway_id, at))
                .collect(),
            changes: self.changes,
            outgoing: self.outgoing,
            sync: self.sync,
            ack,
        }
    }

    /// Take in what another change did (after this one's).
    pub fn absorb(&mut self, other: Applied) {
        self.events.extend(other.events);
        self.changes.absorb(other.changes);
        self.sync |= other.sync;
        self.outgoing.extend(other.outgoing);
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.changes.is_empty()
    }
}

pub use crate::source::Outgoing;

/// All devices and workspaces this gateway knows about, and their timers.
pub struct Registry {
    pub(super) devices: HashMap<String, Device>,
    /// Configured classes, then the default class (which matches everything).
    pub(super) classes: Vec<DeviceClass>,
    pub(super) workspaces: Vec<Workspace>,
    /// Device id (sensor or display) → indexes into `workspaces`.
    pub(super) workspaces_of: HashMap<String, Vec<usize>>,
    pub(super) groups: Vec<Group>,
    /// Every action not yet forgotten, by id.
    pub(super) actions: std::collections::BTreeMap<String, action::Action>,
    /// The `seq` of the last action accepted.
    pub(super) action_seq: u64,
    /// Bookings from upstream not yet over, by id.
    pub(super) bookings: std::collections::BTreeMap<String, booking::Booking>,
    /// Bookings ended (by `booking.end` or their end), by id: their ids are not taken again
    /// (see [`booking::REMEMBER_ENDED`]).
    pub(super) ended: std::collections::BTreeMap<String, booking::Booking>,
    /// Deadlines, earliest first. A timer may fire early (a deadline only ever moves later
    /// between firings); firing recomputes it.
    pub(super) timers: BTreeSet<(Millis, Timer)>,
    pub(super) scheduled: HashMap<Timer, Millis>,
    /// When this run started (see [`DeviceClass::settle`]).
    pub(super) started: Millis,
    pub(super) limits: DevicesConfig,
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
            groups: Vec::new(),
            actions: Default::default(),
            action_seq: 0,
            bookings: Default::default(),
            ended: Default::default(),
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
            out.changes.devices.push((id.clone(), dev.state.clone()));
        }
        for ws in self.workspaces.iter_mut() {
            ws.state.map_times(|t| shifted(t, step));
            out.changes
                .workspaces
                .push((ws.config.id.clone(), ws.state.clone()));
        }
        for g in self.groups.iter_mut() {
            g.state.map_times(|t| shifted(t, step));
            out.changes
                .groups
                .push((g.config.id.clone(), g.state.clone()));
        }
        self.reschedule();
        out
    }

    fn class_of(&self, device_id: &str) -> usize {
        self.classes
            .iter()
            .position(|c| c.matches(device_id))
            .expect("the default class matches everything")
    }

    /// The selected devices (with their class) and every workspace as they are in memory now:
    /// exact, where the store's `last_seen` is as coarse as [`super::SEEN_RESOLUTION`].
    pub fn snapshot(&self, selection: &Selection) -> Snapshot {
        let (ids, more) = selection.pick(self.devices.keys(), |id| {
            json_bytes(&self.devices[id].state)
        });
        let devices: Vec<(String, String, DeviceState)> = ids
            .into_iter()
            .map(|id| {
                let state = self.devices[id].state.clone();
                (id.clone(), self.class_name(id).to_string(), state)
            })
            .collect();
        Snapshot {
            devices,
            more,
            workspaces: self
                .workspaces
                .iter()
                .map(|w| (w.config.id.clone(), w.state.clone()))
                .collect(),
        }
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
        self.receive(device_id, body, false, now)
    }

    /// Apply a retained message (the broker's copy, delivered at a subscribe): as
    /// [`Registry::apply`], but it is heard from the device only when that is news
    /// ([`health::retained_is_news`]).
    pub fn apply_retained(&mut self, device_id: &str, body: &InboundBody, now: Millis) -> Applied {
        self.receive(device_id, body, true, now)
    }

    fn receive(
        &mut self,
        device_id: &str,
        body: &InboundBody,
        retained: bool,
        now: Millis,
    ) -> Applied {
        let mut out = self.tick(now);
        if let Some(refused) = self.refuses(device_id, body) {
            out.refused = Some(refused);
            return out;
        }
        let new = !self.devices.contains_key(device_id);
        if new {
            for g in self.groups.iter_mut().filter(|g| g.takes(device_id)) {
                g.members.insert(device_id.to_string());
            }
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
        let was = dev.state.health;
        if new {
            let identity = match body {
                InboundBody::Reading { fields, .. } => class
                    .identity_fields
                    .iter()
                    .filter_map(|f| Some((f.clone(), fields.get(f)?.clone())))
                    .collect(),
                InboundBody::Status { .. } | InboundBody::ActionResult { .. } => Map::new(),
            };
            out.events
                .push(registered_event(device_id, &class.name, identity));
            dirty = true;
        }
        let transition = match body {
            InboundBody::Status { online: false } => {
                health::offline_reported(&mut dev.state, &class.health, now, &mut dirty)
            }
            _ if retained && !health::retained_is_news(&dev.state) => None,
            InboundBody::Status { online: true }
            | InboundBody::Reading { .. }
            | InboundBody::ActionResult { .. } => health::heard(&mut dev.state, now, &mut dirty),
        };
        let came_online = transition == Some(Transition::Online);
        if let Some(t) = transition {
            out.events.push(health_event(device_id, t));
        }
        if came_online && matches!(was, Health::Offline | Health::Lost) {
            dev.state.awaiting_presence = true;
            dirty = true;
        }
        if let InboundBody::Reading { fields, .. } = body {
            // A presence field of one of its workspaces (a sensor bound to some).
            let presence = || {
                self.workspaces_of.get(device_id).is_some_and(|ws| {
                    ws.iter()
                        .any(|&i| fields.contains_key(&self.workspaces[i].config.presence_field))
                })
            };
            if dev.state.awaiting_presence && presence() {
                dev.state.awaiting_presence = false;
                dirty = true;
            }
        }
        if let (InboundBody::Reading { fields, .. }, Some(field)) = (body, &class.version_field) {
            if let Some(event) = version::seen(&mut dev.state, device_id, field, fields, &mut dirty)
            {
                out.events.push(event);
            }
        }
        if let (InboundBody::Reading { fields, .. }, Some(field)) = (body, &class.sync.field) {
            if let Some(value) = fields.get(field) {
                if let Some(change) =
                    sync::reported(&mut dev.state, &class.sync, value, now, &mut dirty)
                {
                    out.events.push(sync_event(device_id, field, change));
                }
            }
        }
        if let InboundBody::Reading { fields, metadata } = body {
            let (reading, condition) = class.condition.split(fields);
            if !condition.is_empty() {
                if let Some(report) =
                    condition::received(&mut dev.state, &class.condition, &condition, &mut dirty)
                {
                    out.events.push(condition_event(device_id, report));
                }
            }
            // A message of state fields alone is no reading.
            if !reading.is_empty() || condition.is_empty() {
                let report = reading::received(
                    &mut dev.state,
                    &class.reading,
                    &reading,
                    metadata,
                    now,
                    &mut dirty,
                );
                if let Some(report) = report {
                    out.events.push(reading_event(device_id, report));
                }
            }
        }
        out.sync |= dirty;
        if dirty || (class.watches_silence() && now >= dev.saved_at + SEEN_RESOLUTION) {
            dev.saved_at = now;
            out.changes
                .devices
                .push((device_id.to_string(), dev.state.clone()));
        }
        self.schedule_device(device_id);
        self.evaluate_workspaces_of(device_id, now, &mut out);
        let reading = matches!(body, InboundBody::Reading { .. });
        self.evaluate_groups_of(device_id, reading, now, &mut out);
        if let InboundBody::ActionResult { .. } = body {
            self.answered(device_id, body, now, &mut out);
        } else if came_online {
            self.dispatch(device_id, now, &mut out);
        }
        out
    }

    /// Whether a message from `device_id` is beyond the registry's bounds.
    fn refuses(&self, device_id: &str, body: &InboundBody) -> Option<OverLimit> {
        let known = self.devices.get(device_id);
        if known.is_none() && self.devices.len() >= self.limits.max_devices {
            return Some(OverLimit::MaxDevices);
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
        if before + new > self.limits.max_fields {
            return Some(OverLimit::MaxFields);
        }
        // What would be kept: each field's latest value, this reading's where it has one.
        let entry = |k: &String, v: &Value| k.len() + json_bytes(v) + 4;
        let mut bytes: usize = fields.iter().map(|(k, v)| entry(k, v)).sum();
        if let Some(s) = state {
            let kept = s
                .values
                .keys()
                .chain(s.held.iter().flat_map(|h| h.fields.keys()));
            let mut seen = std::collections::HashSet::new();
            for k in kept {
                if !fields.contains_key(k) && seen.insert(k) {
                    if let Some(v) = s.latest(k) {
                        bytes += entry(k, v);
                    }
                }
            }
        }
        (bytes > self.limits.max_state_bytes).then_some(OverLimit::MaxStateBytes)
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
                Timer::Group(i) => self.group_due(i, now, &mut out),
                Timer::Action(id) => self.action_due(&id, now, &mut out),
                Timer::Dispatch(device) => self.dispatch(&device, now, &mut out),
            }
        }
        out
    }

    fn device_due(&mut self, id: &str, now: Millis, out: &mut Applied) {
        let Some(dev) = self.devices.get_mut(id) else {
            return;
        };
        let class = &self.classes[dev.class];
        if class
            .forget_at(dev.state.last_seen, self.started)
            .is_some_and(|at| now >= at)
        {
            self.remove(id, Forgotten::Silent, now, out);
            return;
        }
        let mut dirty = false;
        if let Some(change) = sync::due(&mut dev.state, &class.sync, now) {
            let field = class.sync.field.as_deref().unwrap_or_default();
            out.events.push(sync_event(id, field, change));
            dirty = true;
        }
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
                Timed::Stale { last_reading } => stale_event(id, last_reading),
            });
        }
        if dirty {
            dev.saved_at = now;
            out.sync = true;
            out.changes
                .devices
                .push((id.to_string(), dev.state.clone()));
        }
        self.schedule_device(id);
        if transition.is_some() {
            self.evaluate_workspaces_of(id, now, out);
        }
        if dirty {
            // Health, staleness or a held report: what the member gives its groups moved.
            self.evaluate_groups_of(id, false, now, out);
        }
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
            .chain(sync::deadline(&dev.state, &class.sync))
            .chain(class.forget_at(dev.state.last_seen, self.started))
            .min();
        self.schedule(Timer::Device(id.to_string()), at);
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

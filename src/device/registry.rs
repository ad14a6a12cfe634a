//! The registry: every device's and workspace's state, and what applying one message or one
//! timer to it yields (events, state changes, refusals), on the stage's own clock.

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

impl Group {
    fn takes(&self, device_id: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(device_id))
            || self.sensors.iter().any(|s| s == device_id)
    }
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
    /// Device states that changed and must be persisted with the events.
    pub devices: Vec<(String, DeviceState)>,
    /// Workspace states likewise.
    pub workspaces: Vec<(String, WorkspaceState)>,
    /// Group states likewise.
    pub groups: Vec<(String, group::GroupState)>,
    /// Whether these states decide what is reported later (held values, a pending offline,
    /// the values upstream knows, health, a workspace's status or hold): then they must be on
    /// disk before the message is acknowledged, even when no event came of it. False when the
    /// only change is a device's `last_seen` moving on, which is checkpointed lazily: see
    /// [`SEEN_RESOLUTION`] for why a stale `last_seen` after a restart reports nothing wrong.
    pub sync: bool,
    /// The message was skipped as bad input, and why (the registry's bounds).
    pub refused: Option<Refused>,
    /// A device's answer to an action was ignored, and why (no event came of it).
    pub ignored_answer: Option<IgnoredAnswer>,
    /// Devices forgotten: their states are deleted, after the events.
    pub forgotten: Vec<String>,
    /// Actions whose state changed, to persist with the events.
    pub actions: Vec<action::Action>,
    /// Actions done and past their deadlines: deleted.
    pub forgotten_actions: Vec<String>,
    /// Bookings kept (`Some`) or forgotten (`None`), by id: persisted with the events.
    pub bookings: Vec<(String, Option<booking::Booking>)>,
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

/// What device `d` gives the groups it is a member of.
fn member_of(d: &Device) -> group::Member<'_> {
    group::Member {
        usable: d.state.health == Health::Online && !d.state.stale,
        values: &d.state.values,
        condition: &d.state.condition,
    }
}

/// At most this many bookings are kept per workspace (more are refused, 429).
pub const MAX_BOOKINGS_PER_WORKSPACE: usize = 64;

/// Why a message was skipped by the registry (see [`DevicesConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// From a new device, with `max_devices` already known.
    MaxDevices,
    /// Its fields would take the device past `max_fields` field names.
    MaxFields,
    /// Its values would take what is kept of the device past `max_state_bytes`.
    MaxStateBytes,
}

impl Refused {
    pub const KINDS: [&'static str; 3] = ["max_devices", "max_fields", "max_state_bytes"];

    pub fn kind(self) -> &'static str {
        match self {
            Refused::MaxDevices => Self::KINDS[0],
            Refused::MaxFields => Self::KINDS[1],
            Refused::MaxStateBytes => Self::KINDS[2],
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
    /// Take in what another change did (after this one's).
    pub fn absorb(&mut self, other: Applied) {
        self.events.extend(other.events);
        self.devices.extend(other.devices);
        self.workspaces.extend(other.workspaces);
        self.groups.extend(other.groups);
        self.sync |= other.sync;
        self.forgotten.extend(other.forgotten);
        self.actions.extend(other.actions);
        self.forgotten_actions.extend(other.forgotten_actions);
        self.outgoing.extend(other.outgoing);
        self.bookings.extend(other.bookings);
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.devices.is_empty()
            && self.workspaces.is_empty()
            && self.groups.is_empty()
            && self.forgotten.is_empty()
            && self.actions.is_empty()
            && self.forgotten_actions.is_empty()
            && self.bookings.is_empty()
    }
}

/// Device rules from a reloaded configuration.
#[derive(Debug, Clone)]
pub struct Rules {
    pub classes: Vec<DeviceClassConfig>,
    pub workspaces: Vec<WorkspaceConfig>,
    pub groups: Vec<GroupConfig>,
}

/// Which devices a snapshot holds: one page, by id, so that what the API answers and what the
/// device stage copies for it stay bounded whatever the number of devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Those whose id sorts after `after` (all when `None`), at most `limit`.
    Page { after: Option<String>, limit: usize },
    /// This one alone.
    One(String),
}

/// The most a page of devices holds, as JSON: a page stops before the device that would take
/// it past this (it always holds one), so that a page of devices that each keep
/// `devices.max_state_bytes` costs what a page of small ones does.
pub const PAGE_BYTES: usize = 1 << 20;

impl Selection {
    /// The ids of `ids` this selection takes, in order, within [`PAGE_BYTES`] as `size`
    /// measures each; and whether more follow the last one taken.
    pub fn pick<'a>(
        &self,
        ids: impl Iterator<Item = &'a String>,
        size: impl Fn(&String) -> usize,
    ) -> (Vec<&'a String>, bool) {
        match self {
            Selection::One(id) => (ids.filter(|i| *i == id).take(1).collect(), false),
            Selection::Page { after, limit } => {
                let mut ids: Vec<&String> = ids
                    .filter(|i| after.as_ref().is_none_or(|a| *i > a))
                    .collect();
                ids.sort();
                let fit = fitting(ids.iter().take(*limit).map(|id| size(id)));
                let more = ids.len() > fit;
                ids.truncate(fit);
                (ids, more)
            }
        }
    }
}

/// What a device's view in a page adds to its stored state (its id, class, times as text,
/// the JSON around them), counted with each.
pub const VIEW_BYTES: usize = 512;

/// How many of a page's items, of these sizes (stored), fit in [`PAGE_BYTES`] as views: at
/// least one.
pub fn fitting(sizes: impl Iterator<Item = usize>) -> usize {
    let mut total = 0usize;
    let mut n = 0;
    for size in sizes {
        total = total.saturating_add(size + VIEW_BYTES);
        if n > 0 && total > PAGE_BYTES {
            break;
        }
        n += 1;
    }
    n
}

/// What the device stage knows now (see [`Registry::snapshot`]).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// (id, class, state), by id.
    pub devices: Vec<(String, String, DeviceState)>,
    /// The configured workspaces' states.
    pub workspaces: Vec<(String, WorkspaceState)>,
    /// More devices follow the last one of a page (cut by its `limit` or [`PAGE_BYTES`]).
    pub more: bool,
}

/// An action asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionRequest {
    pub id: String,
    pub device: String,
    pub name: String,
    pub params: Value,
    /// Unset: `devices.action_deadline` from now.
    pub deadline: Option<Millis>,
}

/// Why an action was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such device is known (`rejected`, told).
    UnknownDevice,
    /// Its class does not allow the action (`rejected`, told).
    NotAllowed,
    /// Past `devices.max_actions` or `max_actions_per_device` (not accepted at all).
    TooMany,
}

/// What became of a submitted action.
#[derive(Debug)]
pub enum Submit {
    /// Its id is known: this is what became of it (nothing is done again).
    Known(action::Action),
    /// Accepted: persist and send what this says.
    Accepted(Applied),
    /// Rejected and told (`device.action_completed`, `rejected`): persist this too.
    Rejected(Applied, Refusal),
    /// Not taken (bounds): nothing to persist.
    Refused(Refusal),
}

pub use crate::source::Outgoing;

/// What the control API asks of the device stage, answered between two messages.
#[derive(Debug)]
pub enum Request {
    /// What it knows now, of the selected devices.
    Snapshot(Selection, tokio::sync::oneshot::Sender<Snapshot>),
    /// Forget a device (`device.unregistered`, its state deleted); answered once that is
    /// durable: true, or false at once for a device it does not know.
    Forget {
        device_id: String,
        done: tokio::sync::oneshot::Sender<bool>,
    },
    /// Set (or clear) the sync value desired for one device; answered once durable.
    Desire {
        device_id: String,
        value: Option<Value>,
        done: tokio::sync::oneshot::Sender<bool>,
    },
    /// Submit an action: answered with what became of it, once that is durable.
    Act {
        request: ActionRequest,
        done: tokio::sync::oneshot::Sender<ActionAnswer>,
    },
    /// An action as it is now (None: not known).
    Action {
        id: String,
        done: tokio::sync::oneshot::Sender<Option<action::Action>>,
    },
    /// Cancel an action not yet sent: answered once durable.
    Cancel {
        id: String,
        done: tokio::sync::oneshot::Sender<Option<Result<action::Action, &'static str>>>,
    },
    /// Keep a booking (`booking.start`): answered once durable.
    Book {
        booking: booking::Booking,
        done: tokio::sync::oneshot::Sender<Result<(), BookRefusal>>,
    },
    /// End a booking (`booking.end`): answered once durable.
    Unbook {
        booking_id: String,
        workspace: String,
        done: tokio::sync::oneshot::Sender<Result<(), BookRefusal>>,
    },
    /// The bookings kept.
    Bookings(tokio::sync::oneshot::Sender<Vec<booking::Booking>>),
}

/// Why a booking was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookRefusal {
    UnknownWorkspace,
    /// The workspace has [`MAX_BOOKINGS_PER_WORKSPACE`] already.
    TooMany,
}

/// The answer to [`Request::Act`].
#[derive(Debug)]
pub enum ActionAnswer {
    Accepted(action::Action),
    Known(action::Action),
    Rejected(action::Action, Refusal),
    Refused(Refusal),
}

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
            out.devices.push((id.clone(), dev.state.clone()));
        }
        for ws in self.workspaces.iter_mut() {
            ws.state.map_times(|t| shifted(t, step));
            out.workspaces
                .push((ws.config.id.clone(), ws.state.clone()));
        }
        for g in self.groups.iter_mut() {
            g.state.map_times(|t| shifted(t, step));
            out.groups.push((g.config.id.clone(), g.state.clone()));
        }
        self.reschedule();
        out
    }

    /// Take the actions the store holds (`known`). One that was sent but not answered when
    /// the daemon stopped is sent again (at least once: the device drops a repeat by its id),
    /// in its place in its device's order, once the device is online.
    pub fn with_actions(mut self, known: impl IntoIterator<Item = action::Action>) -> Registry {
        let started = self.started;
        for mut a in known {
            if let action::ActionState::Sent { .. } = a.state {
                a.state = action::ActionState::Waiting;
            }
            self.action_seq = self.action_seq.max(a.seq);
            if !a.is_done() {
                self.schedule(Timer::Dispatch(a.device.clone()), Some(started));
            }
            self.actions.insert(a.id.clone(), a);
        }
        self.reschedule();
        self
    }

    /// Take the bookings the store holds (those in force or to come, and those ended whose ids
    /// are remembered); those over are ended at the first tick.
    pub fn with_bookings(mut self, known: impl IntoIterator<Item = booking::Booking>) -> Registry {
        for b in known {
            if b.ended.is_some() {
                self.ended.insert(b.id.clone(), b);
            } else {
                self.bookings.insert(b.id.clone(), b);
            }
        }
        self.reschedule();
        self
    }

    /// End booking `id` at `now` (it is in `bookings`): its id is remembered, and the ids
    /// remembered past [`booking::REMEMBER_ENDED`] or beyond [`booking::MAX_ENDED`] are
    /// forgotten, oldest first.
    fn end_booking(&mut self, id: &str, now: Millis, out: &mut Applied) {
        let Some(b) = self.bookings.remove(id) else {
            return;
        };
        let ended = b.ended_at(now);
        self.ended.insert(ended.id.clone(), ended.clone());
        out.bookings.push((ended.id.clone(), Some(ended)));
        out.sync = true;
        let mut by_age: Vec<(Millis, String)> = self
            .ended
            .values()
            .map(|b| (b.ended.unwrap_or(0), b.id.clone()))
            .collect();
        by_age.sort();
        let excess = by_age.len().saturating_sub(booking::MAX_ENDED);
        for (i, (at, id)) in by_age.into_iter().enumerate() {
            if i < excess || at.saturating_add(booking::REMEMBER_ENDED) <= now {
                self.ended.remove(&id);
                out.bookings.push((id, None));
            } else {
                break;
            }
        }
    }

    /// Keep a booking of upstream's (new, or changed: same id). None: no such workspace;
    /// `Err`: the workspace has [`MAX_BOOKINGS_PER_WORKSPACE`] already.
    pub fn book(&mut self, b: booking::Booking, now: Millis) -> Option<Result<Applied, ()>> {
        let i = self
            .workspaces
            .iter()
            .position(|w| w.config.id == b.workspace)?;
        let mut out = Applied::default();
        if self.bookings.get(&b.id) == Some(&b) || self.ended.contains_key(&b.id) {
            // The same booking again, or one that already ended: no change.
            return Some(Ok(out));
        }
        let of_workspace = self
            .bookings
            .values()
            .filter(|k| k.workspace == b.workspace && k.id != b.id)
            .count();
        if of_workspace >= MAX_BOOKINGS_PER_WORKSPACE {
            return Some(Err(()));
        }
        if let Some(old) = self.bookings.get(&b.id) {
            if old.workspace != b.workspace {
                // Moved to another room: the old one is re-evaluated without it.
                let old_ws = old.workspace.clone();
                self.bookings.remove(&b.id);
                if let Some(j) = self.workspaces.iter().position(|w| w.config.id == old_ws) {
                    self.evaluate_workspace(j, now, None, &mut out);
                }
            }
        }
        self.bookings.insert(b.id.clone(), b.clone());
        out.bookings.push((b.id.clone(), Some(b.clone())));
        out.sync = true;
        self.evaluate_workspace(i, now, None, &mut out);
        let params = serde_json::json!({
            "booking_id": b.id,
            "workspace_id": b.workspace,
            "start": rfc3339(b.start),
            "end": rfc3339(b.end),
            "details": b.details,
        });
        let id = format!("booking:{}:{}:{}", b.id, b.start, b.end);
        self.tell_display(i, id, "show_booking", params, b.end, now, &mut out);
        Some(Ok(out))
    }

    /// End a booking now (`booking.end`, `booking.cancelled`). None: no such workspace; one
    /// not known (never booked, or over) is no change.
    pub fn unbook(&mut self, booking_id: &str, workspace: &str, now: Millis) -> Option<Applied> {
        let i = self
            .workspaces
            .iter()
            .position(|w| w.config.id == workspace)?;
        let mut out = Applied::default();
        if self
            .bookings
            .get(booking_id)
            .is_none_or(|b| b.workspace != workspace)
        {
            return Some(out);
        }
        self.end_booking(booking_id, now, &mut out);
        self.evaluate_workspace(i, now, None, &mut out);
        let params = serde_json::json!({ "booking_id": booking_id, "workspace_id": workspace });
        let id = format!("booking:{booking_id}:end");
        let deadline = now + self.limits.action_deadline.as_millis() as Millis;
        self.tell_display(i, id, "clear_booking", params, deadline, now, &mut out);
        Some(out)
    }

    /// Pass a booking on to workspace `i`'s display as action `name`, when it has a display
    /// this gateway knows whose class takes that action (otherwise nothing is sent).
    #[allow(clippy::too_many_arguments)]
    fn tell_display(
        &mut self,
        i: usize,
        id: String,
        name: &str,
        params: Value,
        deadline: Millis,
        now: Millis,
        out: &mut Applied,
    ) {
        let Some(display) = self.workspaces[i].config.display.clone() else {
            return;
        };
        let takes = self
            .devices
            .get(&display)
            .is_some_and(|d| self.classes[d.class].actions.iter().any(|a| a == name));
        if !takes {
            return;
        }
        let request = ActionRequest {
            id,
            device: display,
            name: name.to_string(),
            params,
            deadline: Some(deadline.max(now + 1)),
        };
        if let Submit::Accepted(applied) = self.submit(request, now) {
            out.absorb(applied);
        }
    }

    /// The bookings kept (for the API).
    pub fn bookings(&self) -> impl Iterator<Item = &booking::Booking> {
        self.bookings.values()
    }

    /// The action `id`, if it is remembered.
    pub fn action(&self, id: &str) -> Option<&action::Action> {
        self.actions.get(id)
    }

    /// Accept an action for a device at `now` (see [`Submit`]).
    pub fn submit(&mut self, request: ActionRequest, now: Millis) -> Submit {
        if let Some(known) = self.actions.get(&request.id) {
            return Submit::Known(known.clone());
        }
        let open = |a: &&action::Action| !a.is_done();
        let pending = self.actions.values().filter(open).count();
        let of_device = self
            .actions
            .values()
            .filter(open)
            .filter(|a| a.device == request.device)
            .count();
        if pending >= self.limits.max_actions || of_device >= self.limits.max_actions_per_device {
            return Submit::Refused(Refusal::TooMany);
        }
        let mut out = self.tick(now);
        // Done actions are remembered until their deadlines, but at most ten times
        // `max_actions` in all: past that the oldest done are forgotten early (a flood of
        // rejected submissions cannot take the memory).
        let remembered = self.limits.max_actions.saturating_mul(10).max(1);
        while self.actions.len() >= remembered {
            let oldest = self
                .actions
                .values()
                .filter(|a| a.is_done())
                .min_by_key(|a| a.seq)
                .map(|a| a.id.clone());
            let Some(id) = oldest else { break };
            self.actions.remove(&id);
            if let Some(at) = self.scheduled.remove(&Timer::Action(id.clone())) {
                self.timers.remove(&(at, Timer::Action(id.clone())));
            }
            out.forgotten_actions.push(id);
        }
        self.action_seq += 1;
        let mut a = action::Action {
            id: request.id,
            device: request.device,
            name: request.name,
            params: request.params,
            submitted: now,
            seq: self.action_seq,
            deadline: request
                .deadline
                .unwrap_or(now + millis(self.limits.action_deadline)),
            state: action::ActionState::Waiting,
        };
        let refusal = match self.devices.get(&a.device) {
            None => Some((Refusal::UnknownDevice, "no such device is known")),
            Some(d) if !self.classes[d.class].actions.contains(&a.name) => Some((
                Refusal::NotAllowed,
                "the device's class does not allow this action",
            )),
            Some(_) => None,
        };
        if let Some((refusal, reason)) = refusal {
            a.finish(action::ActionStatus::Rejected, Some(reason.into()), now);
            out.events.push(action_completed_event(
                &a,
                action::Completion {
                    status: action::ActionStatus::Rejected,
                    reason: Some(reason.into()),
                    result: None,
                },
            ));
            out.sync = true;
            out.actions.push(a.clone());
            let id = a.id.clone();
            self.actions.insert(id.clone(), a);
            self.schedule_action(&id);
            return Submit::Rejected(out, refusal);
        }
        let (id, device) = (a.id.clone(), a.device.clone());
        out.sync = true;
        out.actions.push(a.clone());
        self.actions.insert(id.clone(), a);
        self.schedule_action(&id);
        self.dispatch(&device, now, &mut out);
        Submit::Accepted(out)
    }

    /// Cancel action `id` at `now`, if it was not sent yet. None for an unknown id.
    pub fn cancel(&mut self, id: &str, now: Millis) -> Option<Result<Applied, &'static str>> {
        let a = self.actions.get_mut(id)?;
        match a.state {
            action::ActionState::Waiting => {}
            action::ActionState::Sent { .. } => {
                return Some(Err(
                    "it was sent already; it ends when the device answers or times out",
                ))
            }
            action::ActionState::Done { .. } => return Some(Err("it is done already")),
        }
        a.finish(action::ActionStatus::Cancelled, None, now);
        let mut out = Applied {
            sync: true,
            actions: vec![a.clone()],
            ..Applied::default()
        };
        let device = a.device.clone();
        self.schedule_action(id);
        self.dispatch(&device, now, &mut out);
        Some(Ok(out))
    }

    /// Send `device` its next action, if it is online and has none in flight.
    fn dispatch(&mut self, device: &str, now: Millis, out: &mut Applied) {
        let Some(dev) = self.devices.get(device) else {
            return;
        };
        if dev.state.health != Health::Online {
            return;
        }
        let topic = self.classes[dev.class]
            .action_topic
            .replace("{device}", device);
        let mut mine: Vec<&action::Action> = self
            .actions
            .values()
            .filter(|a| a.device == device)
            .collect();
        mine.sort_by_key(|a| a.seq);
        let Some(id) = action::next(mine).map(|a| a.id.clone()) else {
            return;
        };
        let a = self.actions.get_mut(&id).expect("listed above");
        a.state = action::ActionState::Sent { at: now };
        let payload = serde_json::json!({
            "id": a.id,
            "name": a.name,
            "params": a.params,
            "deadline": rfc3339(a.deadline),
        });
        out.outgoing.push(Outgoing {
            device: device.to_string(),
            topic,
            message: payload,
        });
        out.sync = true;
        out.actions.retain(|x| x.id != id);
        out.actions.push(a.clone());
        self.schedule_action(&id);
    }

    /// `device` answered (`answer`: an [`InboundBody::ActionResult`]).
    fn answered(&mut self, device: &str, answer: &InboundBody, now: Millis, out: &mut Applied) {
        let InboundBody::ActionResult {
            id,
            succeeded,
            reason,
            result,
        } = answer
        else {
            return;
        };
        let (id, succeeded, reason, result) =
            (id.as_str(), *succeeded, reason.clone(), result.clone());
        let Some(a) = self.actions.get_mut(id).filter(|a| a.device == device) else {
            out.ignored_answer = Some(IgnoredAnswer::Unknown);
            return;
        };
        match action::answered(a, succeeded, reason, result, now) {
            Some(completion) => {
                out.events.push(action_completed_event(a, completion));
                out.sync = true;
                out.actions.retain(|x| x.id != id);
                out.actions.push(a.clone());
                self.schedule_action(id);
                self.dispatch(device, now, out);
            }
            None => out.ignored_answer = Some(IgnoredAnswer::Late),
        }
    }

    fn action_due(&mut self, id: &str, now: Millis, out: &mut Applied) {
        let Some(a) = self.actions.get(id) else {
            return;
        };
        let timeout = self.action_timeout(&a.device);
        let a = self.actions.get_mut(id).expect("looked up above");
        match action::due(a, timeout, now) {
            action::Due::Nothing => self.schedule_action(id),
            action::Due::Completed(completion) => {
                out.events.push(action_completed_event(a, completion));
                out.sync = true;
                out.actions.retain(|x| x.id != id);
                out.actions.push(a.clone());
                let device = a.device.clone();
                self.schedule_action(id);
                self.dispatch(&device, now, out);
            }
            action::Due::Forget => {
                self.actions.remove(id);
                out.actions.retain(|x| x.id != id);
                out.forgotten_actions.push(id.to_string());
            }
        }
    }

    fn action_timeout(&self, device: &str) -> Millis {
        millis(self.classes[self.class_of(device)].action_timeout)
    }

    fn schedule_action(&mut self, id: &str) {
        let Some(a) = self.actions.get(id) else {
            return;
        };
        let at = action::deadline(a, self.action_timeout(&a.device));
        self.schedule(Timer::Action(id.to_string()), Some(at));
    }

    /// Report `groups` (`[[groups]]`) too, with the states they had (`known`).
    pub fn with_groups(
        mut self,
        groups: &[GroupConfig],
        known: impl IntoIterator<Item = (String, group::GroupState)>,
    ) -> Registry {
        let started = self.started;
        let known = known
            .into_iter()
            .map(|(id, mut state)| {
                state.map_times(|t| t.min(started));
                (id, state)
            })
            .collect();
        self.install_groups(groups, known);
        self.reschedule();
        self
    }

    /// Bind `groups` (with their known states) and find their members among the devices.
    fn install_groups(
        &mut self,
        groups: &[GroupConfig],
        mut known: HashMap<String, group::GroupState>,
    ) {
        self.groups = groups
            .iter()
            .map(|g| {
                let sensors = g
                    .workspace
                    .as_ref()
                    .and_then(|w| self.workspaces.iter().find(|ws| &ws.config.id == w))
                    .map(|ws| ws.config.sensors.clone())
                    .unwrap_or_default();
                let mut group = Group {
                    policy: group::GroupPolicy {
                        presence_field: g.presence_field.clone(),
                        aggregates: g.aggregates.clone(),
                        state_aggregates: g.state_aggregates.clone(),
                        deadband: g.deadband.clone(),
                        min_interval: millis(g.min_interval),
                        stale_after: g.stale_after.map(millis),
                    },
                    patterns: g.members.iter().map(|m| WildMatch::new(m)).collect(),
                    sensors,
                    state: known.remove(&g.id).unwrap_or_default(),
                    members: BTreeSet::new(),
                    tally: group::Tally::default(),
                    config: g.clone(),
                };
                group.members = self
                    .devices
                    .keys()
                    .filter(|id| group.takes(id))
                    .cloned()
                    .collect();
                for id in &group.members {
                    let member = self.devices.get(id).map(member_of);
                    group.tally.set(&group.policy, id, member.as_ref());
                }
                group
            })
            .collect();
    }

    /// The groups `device_id` is a member of.
    fn groups_of(&self, device_id: &str) -> Vec<usize> {
        (0..self.groups.len())
            .filter(|&i| self.groups[i].members.contains(device_id))
            .collect()
    }

    /// Measure group `i` now: its reading and its state, from its tally. In tests, checked
    /// against a pass over every member (a path that changes a member without telling the
    /// tally fails them).
    fn measure_group(&self, i: usize) -> (Map<String, Value>, Map<String, Value>) {
        let g = &self.groups[i];
        let measured = g.tally.measure(&g.policy);
        #[cfg(test)]
        {
            let members: Vec<group::Member> = g
                .members
                .iter()
                .filter_map(|id| self.devices.get(id))
                .map(member_of)
                .collect();
            let full = group::measure(&g.policy, &members);
            group::assert_close(&measured, &full);
        }
        measured
    }

    /// Member `device_id` of group `i` as it is now (gone, when it is no longer known).
    fn refresh_member(&mut self, i: usize, device_id: &str) {
        let member = self.devices.get(device_id).map(member_of);
        let g = &mut self.groups[i];
        let member = member.filter(|_| g.members.contains(device_id));
        g.tally.set(&g.policy, device_id, member.as_ref());
    }

    /// Group `i` after something of a member changed at `now` (`reading`: a member's reading
    /// arrived): its events, and its state to persist.
    fn evaluate_group(&mut self, i: usize, reading: bool, now: Millis, out: &mut Applied) {
        let (measured, condition) = self.measure_group(i);
        let g = &mut self.groups[i];
        let mut dirty = false;
        let report = if reading {
            group::reading_arrived(&mut g.state, &g.policy, &measured, now, &mut dirty)
        } else {
            group::observe(&mut g.state, &g.policy, &measured, false, now, &mut dirty)
        };
        if let Some(report) = report {
            out.events.push(group_reading_event(&g.config.id, report));
        }
        if let Some(report) = group::state_observed(&mut g.state, &g.policy, &condition, &mut dirty)
        {
            out.events.push(group_state_event(&g.config.id, report));
        }
        if dirty {
            out.sync = true;
            out.groups.retain(|(id, _)| id != &g.config.id);
            out.groups.push((g.config.id.clone(), g.state.clone()));
        }
        self.schedule_group(i);
    }

    fn evaluate_groups_of(
        &mut self,
        device_id: &str,
        reading: bool,
        now: Millis,
        out: &mut Applied,
    ) {
        for i in self.groups_of(device_id) {
            self.refresh_member(i, device_id);
            self.evaluate_group(i, reading, now, out);
        }
    }

    fn group_due(&mut self, i: usize, now: Millis, out: &mut Applied) {
        let (measured, _) = self.measure_group(i);
        let settle = self.started + self.groups[i].policy.stale_after.unwrap_or(0);
        let g = &mut self.groups[i];
        let mut dirty = false;
        for timed in group::due(&mut g.state, &g.policy, &measured, settle, now, &mut dirty) {
            out.events.push(match timed {
                group::GroupTimed::Report(report) => group_reading_event(&g.config.id, report),
                group::GroupTimed::Stale { last_reading } => {
                    group_stale_event(&g.config.id, last_reading)
                }
            });
        }
        if dirty {
            out.sync = true;
            out.groups.retain(|(id, _)| id != &g.config.id);
            out.groups.push((g.config.id.clone(), g.state.clone()));
        }
        self.schedule_group(i);
    }

    fn schedule_group(&mut self, i: usize) {
        let g = &self.groups[i];
        let settle = self.started + g.policy.stale_after.unwrap_or(0);
        let at = group::deadline(&g.state, &g.policy, settle);
        self.schedule(Timer::Group(i), at);
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
        let known_groups = self
            .groups
            .drain(..)
            .map(|g| (g.config.id, g.state))
            .collect();
        self.install_groups(&rules.groups, known_groups);
        self.reschedule();
        // A class's desired value may have changed.
        let ids: Vec<String> = self.devices.keys().cloned().collect();
        for id in ids {
            self.evaluate_sync(&id, now, &mut out);
        }
        for i in 0..self.workspaces.len() {
            self.evaluate_workspace(i, now, None, &mut out);
        }
        out
    }

    /// Compare `id`'s sync field with what is desired now; persist and tell what changed.
    fn evaluate_sync(&mut self, id: &str, now: Millis, out: &mut Applied) {
        let Some(dev) = self.devices.get_mut(id) else {
            return;
        };
        let class = &self.classes[dev.class];
        let Some(field) = class.sync.field.clone() else {
            return;
        };
        let mut dirty = false;
        if let Some(change) = sync::evaluate(&mut dev.state, &class.sync, now, &mut dirty) {
            out.events.push(sync_event(id, &field, change));
        }
        if dirty {
            dev.saved_at = now;
            out.sync = true;
            out.devices.push((id.to_string(), dev.state.clone()));
        }
        self.schedule_device(id);
    }

    /// Forget `id` at an operator's request: `device.unregistered`, its state deleted. None if
    /// no such device is known.
    pub fn forget(&mut self, id: &str, now: Millis) -> Option<Applied> {
        if !self.devices.contains_key(id) {
            return None;
        }
        let mut out = self.tick(now);
        self.remove(id, Forgotten::Operator, now, &mut out);
        Some(out)
    }

    /// Set (or with `None` clear) the sync value desired for `id` alone, and compare at once.
    /// None if no such device is known.
    pub fn desire(&mut self, id: &str, value: Option<Value>, now: Millis) -> Option<Applied> {
        if !self.devices.contains_key(id) {
            return None;
        }
        let mut out = self.tick(now);
        let dev = self.devices.get_mut(id)?;
        let changed = dev.state.desired != value;
        dev.state.desired = value;
        let mut compared = Applied::default();
        self.evaluate_sync(id, now, &mut compared);
        out.events.extend(compared.events);
        if changed || compared.sync {
            let dev = self.devices.get_mut(id)?;
            dev.saved_at = now;
            out.sync = true;
            out.devices.retain(|(d, _)| d != id);
            out.devices.push((id.to_string(), dev.state.clone()));
        }
        Some(out)
    }

    /// Take `id` out of the registry: its event, its state deleted, its workspaces told.
    fn remove(&mut self, id: &str, why: Forgotten, now: Millis, out: &mut Applied) {
        let Some(dev) = self.devices.remove(id) else {
            return;
        };
        if let Some(at) = self.scheduled.remove(&Timer::Device(id.to_string())) {
            self.timers.remove(&(at, Timer::Device(id.to_string())));
        }
        let class = &self.classes[dev.class].name;
        out.events
            .push(unregistered_event(id, class, dev.state.last_seen, why));
        out.devices.retain(|(d, _)| d != id);
        out.forgotten.push(id.to_string());
        out.sync = true;
        self.evaluate_workspaces_of(id, now, out);
        let groups: Vec<usize> = self.groups_of(id);
        for &i in &groups {
            self.groups[i].members.remove(id);
            self.refresh_member(i, id);
        }
        for i in groups {
            self.evaluate_group(i, false, now, out);
        }
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
            self.schedule_workspace(i, self.started);
        }
        for i in 0..self.groups.len() {
            self.schedule_group(i);
        }
        let ids: Vec<String> = self.actions.keys().cloned().collect();
        for id in ids {
            self.schedule_action(&id);
        }
        // A dispatch may have been due (after a restart): look again at every device with an
        // action not done (one that has nothing to send sends nothing).
        let devices: BTreeSet<String> = self
            .actions
            .values()
            .filter(|a| !a.is_done())
            .map(|a| a.device.clone())
            .collect();
        for d in devices {
            self.schedule(Timer::Dispatch(d), Some(self.started));
        }
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
            out.devices.push((device_id.to_string(), dev.state.clone()));
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
        if before + new > self.limits.max_fields {
            return Some(Refused::MaxFields);
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
        (bytes > self.limits.max_state_bytes).then_some(Refused::MaxStateBytes)
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
            out.devices.push((id.to_string(), dev.state.clone()));
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
        let over: Vec<String> = self
            .bookings
            .values()
            .filter(|b| b.workspace == self.workspaces[i].config.id && b.is_over(now))
            .map(|b| b.id.clone())
            .collect();
        for id in over {
            self.end_booking(&id, now, out);
        }
        let ws = &self.workspaces[i];
        let (calendar, _) = booking::booked(
            self.bookings
                .values()
                .filter(|b| b.workspace == ws.config.id),
            now,
        );
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
            .unwrap_or(false)
            || calendar;
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
        self.schedule_workspace(i, now);
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

    /// Schedule workspace `i`'s next evaluation as of `now` (an older `now` only makes the
    /// timer fire early, and firing recomputes).
    fn schedule_workspace(&mut self, i: usize, now: Millis) {
        let ws = &self.workspaces[i];
        let hold = workspace::deadline(&ws.state, ws.hold);
        let (_, calendar) = booking::booked(
            self.bookings
                .values()
                .filter(|b| b.workspace == ws.config.id),
            now,
        );
        let over = self
            .bookings
            .values()
            .filter(|b| b.workspace == ws.config.id && b.is_over(now))
            .map(|b| b.end)
            .min();
        let at = [hold, calendar, over].into_iter().flatten().min();
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
pub(super) fn vote(device: Option<&DeviceState>, presence_field: &str) -> Vote {
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
pub(super) fn truthy(v: &Value) -> Option<bool> {
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

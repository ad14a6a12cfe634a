//! A reloaded configuration (classes, workspaces, groups, limits) applied to the devices
//! known; a device forgotten; a desired sync value.

use super::*;

/// Device rules from a reloaded configuration.
#[derive(Debug, Clone)]
pub struct Rules {
    pub classes: Vec<DeviceClassConfig>,
    pub workspaces: Vec<WorkspaceConfig>,
    pub groups: Vec<GroupConfig>,
}

impl Registry {
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
    pub(super) fn evaluate_sync(&mut self, id: &str, now: Millis, out: &mut Applied) {
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
            out.changes
                .devices
                .push((id.to_string(), dev.state.clone()));
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
            out.changes.devices.retain(|(d, _)| d != id);
            out.changes
                .devices
                .push((id.to_string(), dev.state.clone()));
        }
        Some(out)
    }

    /// Take `id` out of the registry: its event, its state deleted, its workspaces told.
    pub(super) fn remove(&mut self, id: &str, why: Forgotten, now: Millis, out: &mut Applied) {
        let Some(dev) = self.devices.remove(id) else {
            return;
        };
        if let Some(at) = self.scheduled.remove(&Timer::Device(id.to_string())) {
            self.timers.remove(&(at, Timer::Device(id.to_string())));
        }
        let class = &self.classes[dev.class].name;
        out.events
            .push(unregistered_event(id, class, dev.state.last_seen, why));
        out.changes.devices.retain(|(d, _)| d != id);
        out.changes.forgotten.push(id.to_string());
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
    pub(super) fn install(
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
    pub(super) fn reschedule(&mut self) {
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
}

//! Groups: aggregates of their members' readings, kept member by member and reported on
//! their own clock.

use super::*;

impl Group {
    pub(super) fn takes(&self, device_id: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(device_id))
            || self.sensors.iter().any(|s| s == device_id)
    }
}

/// What device `d` gives the groups it is a member of.
pub(super) fn member_of(d: &Device) -> group::Member<'_> {
    group::Member {
        usable: d.state.health == Health::Online && !d.state.stale,
        values: &d.state.values,
        condition: &d.state.condition,
    }
}

impl Registry {
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
    pub(super) fn install_groups(
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
    pub(super) fn groups_of(&self, device_id: &str) -> Vec<usize> {
        (0..self.groups.len())
            .filter(|&i| self.groups[i].members.contains(device_id))
            .collect()
    }

    /// Measure group `i` now: its reading and its state, from its tally. In tests, checked
    /// against a pass over every member (a path that changes a member without telling the
    /// tally fails them).
    pub(super) fn measure_group(&self, i: usize) -> (Map<String, Value>, Map<String, Value>) {
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
    pub(super) fn refresh_member(&mut self, i: usize, device_id: &str) {
        let member = self.devices.get(device_id).map(member_of);
        let g = &mut self.groups[i];
        let member = member.filter(|_| g.members.contains(device_id));
        g.tally.set(&g.policy, device_id, member.as_ref());
    }

    /// Group `i` after something of a member changed at `now` (`reading`: a member's reading
    /// arrived): its events, and its state to persist.
    pub(super) fn evaluate_group(
        &mut self,
        i: usize,
        reading: bool,
        now: Millis,
        out: &mut Applied,
    ) {
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
            out.changes.groups.retain(|(id, _)| id != &g.config.id);
            out.changes
                .groups
                .push((g.config.id.clone(), g.state.clone()));
        }
        self.schedule_group(i);
    }

    pub(super) fn evaluate_groups_of(
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

    pub(super) fn group_due(&mut self, i: usize, now: Millis, out: &mut Applied) {
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
            out.changes.groups.retain(|(id, _)| id != &g.config.id);
            out.changes
                .groups
                .push((g.config.id.clone(), g.state.clone()));
        }
        self.schedule_group(i);
    }

    pub(super) fn schedule_group(&mut self, i: usize) {
        let g = &self.groups[i];
        let settle = self.started + g.policy.stale_after.unwrap_or(0);
        let at = group::deadline(&g.state, &g.policy, settle);
        self.schedule(Timer::Group(i), at);
    }
}

//! Workspaces: their status (Free, Occupied, Booked, Unknown) from their sensors' votes,
//! the display's booking field and upstream's bookings, held on their own clock.

use super::*;

impl Registry {
    pub(super) fn evaluate_workspaces_of(
        &mut self,
        device_id: &str,
        now: Millis,
        out: &mut Applied,
    ) {
        if let Some(indexes) = self.workspaces_of.get(device_id) {
            for i in indexes.clone() {
                self.evaluate_workspace(i, now, Some(device_id), out);
            }
        }
    }

    pub(super) fn evaluate_workspace(
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
            out.changes
                .workspaces
                .push((ws.config.id.clone(), next.clone()));
            ws.state = next;
        }
        self.schedule_workspace(i, now);
    }

    /// Schedule workspace `i`'s next evaluation as of `now` (an older `now` only makes the
    /// timer fire early, and firing recomputes).
    pub(super) fn schedule_workspace(&mut self, i: usize, now: Millis) {
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
}

/// How a bound sensor votes on its workspace's status.
pub(in crate::device) fn vote(device: Option<&DeviceState>, presence_field: &str) -> Vote {
    let Some(d) = device else {
        return Vote::Silent;
    };
    match d.health {
        Health::Lost | Health::Offline => Vote::Unavailable,
        // Back from an outage: what it said before is not evidence about the room now.
        Health::Online | Health::Unknown if d.awaiting_presence => Vote::Unavailable,
        Health::Online | Health::Unknown => match d.latest(presence_field).and_then(truthy) {
            Some(true) => Vote::Present,
            Some(false) => Vote::Absent,
            None => Vote::Silent,
        },
    }
}

/// Interpret a presence or booking field: booleans, numbers (non-zero is true) and the common
/// words.
pub(in crate::device) fn truthy(v: &Value) -> Option<bool> {
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

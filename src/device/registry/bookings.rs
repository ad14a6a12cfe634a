//! Bookings from upstream: kept until their end or `booking.end`, shown on the room's
//! display, their ids taken once (ended ones are remembered).

use super::*;

impl Registry {
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
    pub(super) fn end_booking(&mut self, id: &str, now: Millis, out: &mut Applied) {
        let Some(b) = self.bookings.remove(id) else {
            return;
        };
        let ended = b.ended_at(now);
        self.ended.insert(ended.id.clone(), ended.clone());
        out.changes.bookings.push((ended.id.clone(), Some(ended)));
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
                out.changes.bookings.push((id, None));
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
        out.changes.bookings.push((b.id.clone(), Some(b.clone())));
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
    pub(super) fn tell_display(
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
}

//! Actions: submitted through the API or by upstream, sent to their device one at a time
//! when it can take them, answered or timed out, each told once as
//! `device.action_completed`, and remembered for a while.

use super::*;

impl Registry {
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
            return Submit::Refused(ActionRefusal::TooMany);
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
            out.changes.forgotten_actions.push(id);
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
            None => Some((ActionRefusal::UnknownDevice, "no such device is known")),
            Some(d) if !self.classes[d.class].actions.contains(&a.name) => Some((
                ActionRefusal::NotAllowed,
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
            out.changes.actions.push(a.clone());
            let id = a.id.clone();
            self.actions.insert(id.clone(), a);
            self.schedule_action(&id);
            return Submit::Rejected(out, refusal);
        }
        let (id, device) = (a.id.clone(), a.device.clone());
        out.sync = true;
        out.changes.actions.push(a.clone());
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
            changes: Changes {
                actions: vec![a.clone()],
                ..Default::default()
            },
            ..Applied::default()
        };
        let device = a.device.clone();
        self.schedule_action(id);
        self.dispatch(&device, now, &mut out);
        Some(Ok(out))
    }

    /// Send `device` its next action, if it is online and has none in flight.
    pub(super) fn dispatch(&mut self, device: &str, now: Millis, out: &mut Applied) {
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
        out.changes.actions.retain(|x| x.id != id);
        out.changes.actions.push(a.clone());
        self.schedule_action(&id);
    }

    /// `device` answered (`answer`: an [`InboundBody::ActionResult`]).
    pub(super) fn answered(
        &mut self,
        device: &str,
        answer: &InboundBody,
        now: Millis,
        out: &mut Applied,
    ) {
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
                out.changes.actions.retain(|x| x.id != id);
                out.changes.actions.push(a.clone());
                self.schedule_action(id);
                self.dispatch(device, now, out);
            }
            None => out.ignored_answer = Some(IgnoredAnswer::Late),
        }
    }

    pub(super) fn action_due(&mut self, id: &str, now: Millis, out: &mut Applied) {
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
                out.changes.actions.retain(|x| x.id != id);
                out.changes.actions.push(a.clone());
                let device = a.device.clone();
                self.schedule_action(id);
                self.dispatch(&device, now, out);
            }
            action::Due::Forget => {
                self.actions.remove(id);
                out.changes.actions.retain(|x| x.id != id);
                out.changes.forgotten_actions.push(id.to_string());
            }
        }
    }

    pub(super) fn action_timeout(&self, device: &str) -> Millis {
        millis(self.classes[self.class_of(device)].action_timeout)
    }

    pub(super) fn schedule_action(&mut self, id: &str) {
        let Some(a) = self.actions.get(id) else {
            return;
        };
        let at = action::deadline(a, self.action_timeout(&a.device));
        self.schedule(Timer::Action(id.to_string()), Some(at));
    }
}

//! Actions down to devices: each action's lifecycle, as pure functions over [`Action`].
//!
//! An accepted action *waits* until its device is online and has no other action in flight
//! (one at a time per device, in the order they were accepted); it is then *sent* (marked sent
//! durably before it is published, so a crash sends it again: at least once, carrying its id
//! for the device to drop repeats), and *done* when the device answers (`succeeded`,
//! `failed`), when no answer came within the class's `action_timeout` (`timed_out`), when its
//! deadline passed before it could be sent (`expired`), or at once when it could never run
//! (`rejected`: unknown device, an action its class does not allow). Each ending but a
//! cancellation is told once as `device.action_completed`; a late or second answer changes
//! nothing. A done action is remembered until its deadline, so a late resubmission of its id
//! is recognised and not executed again.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Millis;

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    Succeeded,
    Failed,
    TimedOut,
    Expired,
    Rejected,
    /// Cancelled by its submitter before it was sent (no event: the submitter knows).
    Cancelled,
}

impl ActionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Succeeded => "succeeded",
            ActionStatus::Failed => "failed",
            ActionStatus::TimedOut => "timed_out",
            ActionStatus::Expired => "expired",
            ActionStatus::Rejected => "rejected",
            ActionStatus::Cancelled => "cancelled",
        }
    }
}

/// Where an action is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ActionState {
    Waiting,
    Sent {
        at: Millis,
    },
    Done {
        status: ActionStatus,
        at: Millis,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// One action, persisted (the outbox's `actions` tree).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// The submitter's id: the idempotency key, and what the device answers with.
    pub id: String,
    pub device: String,
    pub name: String,
    #[serde(default)]
    pub params: Value,
    /// Accepted at; `seq` orders a device's actions.
    pub submitted: Millis,
    pub seq: u64,
    /// Sent by then, or expired.
    pub deadline: Millis,
    pub state: ActionState,
}

/// An ending to tell as `device.action_completed`.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub status: ActionStatus,
    pub reason: Option<String>,
    pub result: Option<Value>,
}

impl Action {
    pub fn is_done(&self) -> bool {
        matches!(self.state, ActionState::Done { .. })
    }

    /// End it with `status` at `now`.
    pub fn finish(&mut self, status: ActionStatus, reason: Option<String>, now: Millis) {
        self.state = ActionState::Done {
            status,
            at: now,
            reason,
        };
    }
}

/// What the clock decides for one action.
#[derive(Debug, Clone, PartialEq)]
pub enum Due {
    Nothing,
    Completed(Completion),
    /// Done and past its deadline: its id need not be remembered any longer.
    Forget,
}

/// When [`due`] next has something to do for `action` (`timeout`: its class's).
pub fn deadline(action: &Action, timeout: Millis) -> Millis {
    match action.state {
        ActionState::Waiting | ActionState::Done { .. } => action.deadline,
        ActionState::Sent { at } => at + timeout,
    }
}

/// Apply what the clock decides at `now`.
pub fn due(action: &mut Action, timeout: Millis, now: Millis) -> Due {
    let (status, reason) = match action.state {
        ActionState::Waiting if now >= action.deadline => (
            ActionStatus::Expired,
            "its deadline passed before it could be sent (the device was offline or busy)",
        ),
        ActionState::Sent { at } if now >= at + timeout => (
            ActionStatus::TimedOut,
            "the device did not answer within its class's action_timeout",
        ),
        ActionState::Done { .. } if now >= action.deadline => return Due::Forget,
        _ => return Due::Nothing,
    };
    action.finish(status, Some(reason.into()), now);
    Due::Completed(Completion {
        status,
        reason: Some(reason.into()),
        result: None,
    })
}

/// The device answered `succeeded` (or not) at `now`. None when the action was already done
/// (a late or repeated answer: nothing changes).
pub fn answered(
    action: &mut Action,
    succeeded: bool,
    reason: Option<String>,
    result: Option<Value>,
    now: Millis,
) -> Option<Completion> {
    if action.is_done() {
        return None;
    }
    let status = if succeeded {
        ActionStatus::Succeeded
    } else {
        ActionStatus::Failed
    };
    action.finish(status, reason.clone(), now);
    Some(Completion {
        status,
        reason,
        result,
    })
}

/// Of one device's actions (in `seq` order), the one to send now, if any: the first waiting
/// one, unless another is in flight.
pub fn next<'a>(actions: impl IntoIterator<Item = &'a Action>) -> Option<&'a Action> {
    let mut first = None;
    for a in actions {
        match a.state {
            ActionState::Sent { .. } => return None,
            ActionState::Waiting if first.is_none() => first = Some(a),
            _ => {}
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TIMEOUT: Millis = 30_000;

    fn action(id: &str, seq: u64, state: ActionState) -> Action {
        Action {
            id: id.into(),
            device: "disp-1".into(),
            name: "show_message".into(),
            params: json!({"text": "hi"}),
            submitted: 1_000,
            seq,
            deadline: 100_000,
            state,
        }
    }

    /// Each row: the state, now → what the clock decides and the state after.
    #[test]
    fn the_clock_as_a_table() {
        use ActionState::*;
        let done = |status| Done {
            status,
            at: 0,
            reason: None,
        };
        #[rustfmt::skip]
        let rows: Vec<(ActionState, Millis, Option<ActionStatus>, bool)> = vec![
            (Waiting, 99_999, None, false),                                // before its deadline: waits
            (Waiting, 100_000, Some(ActionStatus::Expired), false),        // never sent in time
            (Sent { at: 50_000 }, 79_999, None, false),                    // within the timeout
            (Sent { at: 50_000 }, 80_000, Some(ActionStatus::TimedOut), false),
            (Sent { at: 90_000 }, 100_000, None, false),                   // a sent one does not expire: it times out
            (done(ActionStatus::Succeeded), 99_999, None, false),         // remembered until the deadline
            (done(ActionStatus::Succeeded), 100_000, None, true),         // then forgotten
        ];
        for (i, (state, now, status, forget)) in rows.into_iter().enumerate() {
            let mut a = action("a", 1, state);
            let got = due(&mut a, TIMEOUT, now);
            match (&got, status, forget) {
                (Due::Completed(c), Some(s), false) => {
                    assert_eq!(c.status, s, "row {i}");
                    assert!(a.is_done(), "row {i}");
                }
                (Due::Nothing, None, false) | (Due::Forget, None, true) => {}
                _ => panic!("row {i}: {got:?}"),
            }
        }
    }

    #[test]
    fn an_answer_ends_it_once() {
        let mut a = action("a", 1, ActionState::Sent { at: 5_000 });
        let c = answered(&mut a, true, None, Some(json!({"shown": true})), 6_000).unwrap();
        assert_eq!(c.status, ActionStatus::Succeeded);
        assert_eq!(c.result, Some(json!({"shown": true})));
        assert_eq!(
            answered(&mut a, false, None, None, 7_000),
            None,
            "a second answer"
        );
        let mut timed_out = action("b", 2, ActionState::Sent { at: 5_000 });
        assert!(matches!(
            due(&mut timed_out, TIMEOUT, 40_000),
            Due::Completed(_)
        ));
        assert_eq!(
            answered(&mut timed_out, true, None, None, 41_000),
            None,
            "a late answer"
        );
        let mut failed = action("c", 3, ActionState::Sent { at: 5_000 });
        let c = answered(&mut failed, false, Some("no display".into()), None, 6_000).unwrap();
        assert_eq!(
            (c.status, c.reason.as_deref()),
            (ActionStatus::Failed, Some("no display"))
        );
    }

    #[test]
    fn one_at_a_time_in_order() {
        use ActionState::*;
        let done = Done {
            status: ActionStatus::Succeeded,
            at: 0,
            reason: None,
        };
        let queue = [
            action("a", 1, done),
            action("b", 2, Waiting),
            action("c", 3, Waiting),
        ];
        assert_eq!(next(&queue).map(|a| a.id.as_str()), Some("b"));
        let queue = [action("b", 2, Sent { at: 1 }), action("c", 3, Waiting)];
        assert_eq!(next(&queue), None, "one in flight");
        assert_eq!(next(&[]), None);
    }
}

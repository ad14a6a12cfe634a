//! What a command from upstream (pushed, pulled, or an action through the local API) becomes:
//! taken by the running device stage and answered, once what became of it is durable, with
//! the status the push listener and the local API answer and the pull protocol reports.

use serde_json::{json, Value};

use super::http::rfc3339;
use super::server::Body;
use super::Control;
use crate::device::{ActionAnswer, ActionRefusal, BookRefusal};
use crate::upstream::command::Command;

/// A command's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// Seconds, with 429.
    pub retry_after: Option<u64>,
}

impl Reply {
    pub fn new(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body,
            retry_after: None,
        }
    }

    pub fn error(status: u16, field: Option<&str>, why: &str) -> Reply {
        let mut body = json!({ "error": why });
        if let Some(field) = field {
            body["field"] = json!(field);
        }
        Reply::new(status, body)
    }

    /// Taken: the sender need not send it again (2xx, or a 4xx that will never change:
    /// a rejected action is remembered and told).
    pub fn is_final(&self) -> bool {
        self.status != 429 && self.status < 500
    }

    pub fn into_response(self) -> hyper::Response<Body> {
        let mut response = super::http::respond(self.status, self.body);
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert("retry-after", hyper::header::HeaderValue::from(secs));
        }
        response
    }
}

/// Seconds a sender is asked to wait when too much is pending.
pub const RETRY_AFTER: u64 = 30;

impl Control {
    /// Take `command` through the running device stage.
    pub async fn take(&self, command: Command) -> Reply {
        match command {
            Command::Action(request) => match self.act(request).await {
                Ok(ActionAnswer::Accepted(a)) => Reply::new(202, action_view(&a)),
                Ok(ActionAnswer::Known(a)) => Reply::new(200, action_view(&a)),
                Ok(ActionAnswer::Rejected(a, ActionRefusal::UnknownDevice)) => Reply::error(
                    404,
                    Some("device"),
                    &format!("no device `{}`: the action is rejected (device.action_completed)", a.device),
                ),
                Ok(ActionAnswer::Rejected(a, _)) => Reply::error(
                    422,
                    Some("name"),
                    &format!("the class of device `{}` does not take `{}`: the action is rejected (device.action_completed)", a.device, a.name),
                ),
                Ok(ActionAnswer::Refused(_)) => Reply {
                    retry_after: Some(RETRY_AFTER),
                    ..Reply::error(
                        429,
                        None,
                        "too many actions not yet done (devices.max_actions, max_actions_per_device): try again later",
                    )
                },
                Err(r) => Reply::error(r.status, r.field.as_deref(), &r.message),
            },
            Command::BookingStart(booking) => {
                let view = booking_view(&booking);
                let workspace = booking.workspace.clone();
                let answer = self
                    .ask(|done| crate::device::Request::Book { booking, done })
                    .await;
                booking_reply(answer, &workspace, view)
            }
            Command::BookingEnd {
                booking_id,
                workspace,
            } => {
                let view = json!({ "booking_id": booking_id, "workspace_id": workspace, "ended": true });
                let ws = workspace.clone();
                let answer = self
                    .ask(|done| crate::device::Request::Unbook {
                        booking_id,
                        workspace,
                        done,
                    })
                    .await;
                booking_reply(answer, &ws, view)
            }
        }
    }

    /// The bookings kept (not those ended, whose ids are only remembered): the running
    /// device stage's, or a stopped daemon's store's.
    pub async fn bookings(&self) -> Result<Vec<crate::device::booking::Booking>, super::ApiError> {
        if self.device_stage.is_none() {
            return self
                .outbox
                .bookings()
                .map(|all| all.into_iter().filter(|b| b.ended.is_none()).collect())
                .map_err(|e| super::ApiError::new_internal(e.to_string()));
        }
        self.ask(crate::device::Request::Bookings).await
    }
}

fn booking_reply(
    answer: Result<Result<(), BookRefusal>, super::ApiError>,
    workspace: &str,
    view: Value,
) -> Reply {
    match answer {
        Ok(Ok(())) => Reply::new(202, view),
        Ok(Err(BookRefusal::UnknownWorkspace)) => Reply::error(
            404,
            Some("data.workspace_id"),
            &format!("no workspace `{workspace}` on this gateway"),
        ),
        Ok(Err(BookRefusal::TooMany)) => Reply {
            retry_after: Some(RETRY_AFTER),
            ..Reply::error(
                429,
                None,
                &format!("workspace `{workspace}` has too many bookings kept: try again later"),
            )
        },
        Err(r) => Reply::error(r.status, r.field.as_deref(), &r.message),
    }
}

/// A booking as the API shows it.
pub fn booking_view(b: &crate::device::booking::Booking) -> Value {
    json!({
        "booking_id": b.id,
        "workspace_id": b.workspace,
        "start": rfc3339(b.start),
        "end": rfc3339(b.end),
        "details": b.details,
    })
}

/// An action as the API shows it.
pub fn action_view(a: &crate::device::action::Action) -> Value {
    use crate::device::action::ActionState;
    let (status, sent, done, reason) = match &a.state {
        ActionState::Waiting => ("waiting", Value::Null, Value::Null, None),
        ActionState::Sent { at } => ("sent", rfc3339(*at), Value::Null, None),
        ActionState::Done { status, at, reason } => {
            (status.as_str(), Value::Null, rfc3339(*at), reason.clone())
        }
    };
    json!({
        "id": a.id,
        "device": a.device,
        "name": a.name,
        "params": a.params,
        "status": status,
        "reason": reason,
        "submitted": rfc3339(a.submitted),
        "deadline": rfc3339(a.deadline),
        "sent_at": sent,
        "done_at": done,
    })
}

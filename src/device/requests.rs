//! What the control API asks of the device stage, and what it answers: snapshots a page at a
//! time, actions, bookings.

use super::*;

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

/// A page being filled, item by item: within [`PAGE_BYTES`] as views, and never empty.
#[derive(Debug, Default)]
pub struct PageFill {
    items: usize,
    bytes: usize,
}

impl PageFill {
    /// Whether an item of `size` stored bytes still goes on the page (the first always does);
    /// if so, it is counted.
    pub fn admits(&mut self, size: usize) -> bool {
        let total = self.bytes.saturating_add(size + VIEW_BYTES);
        if self.items > 0 && total > PAGE_BYTES {
            return false;
        }
        self.items += 1;
        self.bytes = total;
        true
    }
}

/// How many of a page's items, of these sizes (stored), fit in [`PAGE_BYTES`] as views: at
/// least one.
pub fn fitting(sizes: impl Iterator<Item = usize>) -> usize {
    let mut fill = PageFill::default();
    sizes.take_while(|size| fill.admits(*size)).count()
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
pub enum ActionRefusal {
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
    Rejected(Applied, ActionRefusal),
    /// Not taken (bounds): nothing to persist.
    Refused(ActionRefusal),
}

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
    Rejected(action::Action, ActionRefusal),
    Refused(ActionRefusal),
}

/// `applied`, to be answered with `answer` through `done` once it is durable.
fn once_durable<T: Send + Sync + 'static>(
    applied: Applied,
    done: tokio::sync::oneshot::Sender<T>,
    answer: T,
) -> Option<(Applied, Option<Ack>)> {
    Some((
        applied,
        Some(Ack::new(move || {
            let _ = done.send(answer);
        })),
    ))
}

/// What the device stage does with `request`, between two messages: what it changed, with the
/// acknowledgement that answers the request once that is durable; or none, answered at once
/// (nothing to write).
pub(super) fn handle(
    request: Request,
    registry: &mut Registry,
    now: Millis,
    metrics: &super::metrics::DeviceMetrics,
) -> Option<(Applied, Option<Ack>)> {
    match request {
        Request::Snapshot(selection, reply) => {
            let _ = reply.send(registry.snapshot(&selection));
            None
        }
        Request::Forget { device_id, done } => match registry.forget(&device_id, now) {
            Some(applied) => {
                metrics.set_devices(registry.len());
                tracing::info!(device_id = %device_id, "device forgotten by an operator");
                once_durable(applied, done, true)
            }
            None => {
                let _ = done.send(false);
                None
            }
        },
        Request::Act { request, done } => {
            let id = request.id.clone();
            match registry.submit(request, now) {
                Submit::Known(a) => {
                    let _ = done.send(ActionAnswer::Known(a));
                    None
                }
                Submit::Refused(r) => {
                    let _ = done.send(ActionAnswer::Refused(r));
                    None
                }
                Submit::Accepted(applied) => {
                    let a = registry.action(&id).cloned().expect("accepted");
                    tracing::info!(action_id = %id, device_id = %a.device, name = %a.name, "action accepted");
                    once_durable(applied, done, ActionAnswer::Accepted(a))
                }
                Submit::Rejected(applied, r) => {
                    let a = registry
                        .action(&id)
                        .cloned()
                        .expect("rejected and remembered");
                    tracing::info!(action_id = %id, device_id = %a.device, name = %a.name, refusal = ?r, "action rejected");
                    once_durable(applied, done, ActionAnswer::Rejected(a, r))
                }
            }
        }
        Request::Action { id, done } => {
            let _ = done.send(registry.action(&id).cloned());
            None
        }
        Request::Cancel { id, done } => match registry.cancel(&id, now) {
            None => {
                let _ = done.send(None);
                None
            }
            Some(Err(why)) => {
                let _ = done.send(Some(Err(why)));
                None
            }
            Some(Ok(applied)) => {
                let a = registry
                    .action(&id)
                    .cloned()
                    .expect("cancelled and remembered");
                tracing::info!(action_id = %id, "action cancelled before it was sent");
                once_durable(applied, done, Some(Ok(a)))
            }
        },
        Request::Book { booking, done } => {
            let (id, workspace) = (booking.id.clone(), booking.workspace.clone());
            match registry.book(booking, now) {
                None => {
                    let _ = done.send(Err(BookRefusal::UnknownWorkspace));
                    None
                }
                Some(Err(())) => {
                    let _ = done.send(Err(BookRefusal::TooMany));
                    None
                }
                Some(Ok(applied)) => {
                    tracing::info!(booking_id = %id, workspace_id = %workspace, "booking kept");
                    once_durable(applied, done, Ok(()))
                }
            }
        }
        Request::Unbook {
            booking_id,
            workspace,
            done,
        } => match registry.unbook(&booking_id, &workspace, now) {
            None => {
                let _ = done.send(Err(BookRefusal::UnknownWorkspace));
                None
            }
            Some(applied) => {
                tracing::info!(booking_id = %booking_id, workspace_id = %workspace, "booking ended");
                once_durable(applied, done, Ok(()))
            }
        },
        Request::Bookings(reply) => {
            let _ = reply.send(registry.bookings().cloned().collect());
            None
        }
        Request::Desire {
            device_id,
            value,
            done,
        } => {
            let set = value.is_some();
            match registry.desire(&device_id, value, now) {
                Some(applied) => {
                    tracing::info!(device_id = %device_id, set, "desired sync value for one device changed by an operator");
                    once_durable(applied, done, true)
                }
                None => {
                    let _ = done.send(false);
                    None
                }
            }
        }
    }
}

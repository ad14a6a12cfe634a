//! Commands from upstream: actions on devices and bookings of workspaces, sent down to this
//! gateway by the systems its events go up to. Two ways in, one contract:
//!
//! - **push**: upstream POSTs one command to the gateway's own upstream-facing listener
//!   (`[upstream.push]`, served by `control::push`), signed with Standard Webhooks.
//! - **pull**: behind NAT, the gateway long-polls upstream (`[upstream.pull]`, run by
//!   `control::pull`); requests and answers are both signed.
//!
//! Either way a command is verified ([`gate`]), parsed ([`command`]), and answered only once
//! what became of it is durable; its own id (an action's, a booking's) makes a repeat harmless.
//! The protocol is documented in the OpenAPI document (`/v1/openapi.json`).

pub mod command;
pub mod config;
pub mod gate;
pub mod metrics;
pub mod pull;

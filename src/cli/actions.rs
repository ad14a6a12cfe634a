//! `edgehook actions ...` and `edgehook bookings`: actions on devices and upstream's bookings,
//! through the control API ([`Api`]). Actions are taken by the running daemon only.

use clap::Subcommand;
use hyper::Method;
use serde_json::{json, Value};

use super::client::{segment, Api};
use super::print::{compact, text, when};

#[derive(Debug, Subcommand)]
pub enum ActionsCommand {
    /// Ask DEVICE to do NAME (one of its class's `actions`); answered once it is on disk.
    Submit {
        device: String,
        name: String,
        /// The action's id, its idempotency key (default: a new one).
        #[arg(long)]
        id: Option<String>,
        /// Its params, JSON.
        #[arg(long)]
        params: Option<String>,
        /// Sent by then or expired (RFC 3339; default: `devices.action_deadline` from now).
        #[arg(long)]
        deadline: Option<String>,
    },
    /// Where an action is: waiting, sent, or how it ended.
    Show { id: String },
    /// Cancel an action not yet sent.
    Cancel { id: String },
}

pub async fn run(command: ActionsCommand, api: &Api, json_out: bool) -> Result<(), String> {
    let err = |e: super::client::CallFailed| e.to_string();
    let action = match command {
        ActionsCommand::Submit {
            device,
            name,
            id,
            params,
            deadline,
        } => {
            let params = match params {
                None => Value::Null,
                Some(p) => {
                    serde_json::from_str(&p).map_err(|e| format!("--params is not JSON: {e}"))?
                }
            };
            let id = id.unwrap_or_else(|| format!("cli-{}", uuid::Uuid::now_v7().simple()));
            let body = json!({"id": id, "device": device, "name": name, "params": params, "deadline": deadline});
            api.call(Method::POST, "/v1/actions", Some(body))
                .await
                .map_err(err)?
        }
        ActionsCommand::Show { id } => api
            .get(&format!("/v1/actions/{}", segment(&id)))
            .await
            .map_err(err)?,
        ActionsCommand::Cancel { id } => api
            .call(
                Method::DELETE,
                &format!("/v1/actions/{}", segment(&id)),
                None,
            )
            .await
            .map_err(err)?,
    };
    if json_out {
        super::print::json(&action);
        return Ok(());
    }
    let line = |label: &str, value: String| println!("{label:<10} {value}");
    line("action", text(&action["id"]).to_string());
    line("device", text(&action["device"]).to_string());
    line("name", text(&action["name"]).to_string());
    if !action["params"].is_null() {
        line("params", compact(&action["params"], 80));
    }
    let status = match action["reason"].as_str() {
        Some(reason) => format!("{} ({reason})", text(&action["status"])),
        None => text(&action["status"]).to_string(),
    };
    line("status", status);
    line("submitted", when(&action["submitted"]));
    line("deadline", when(&action["deadline"]));
    if !action["sent_at"].is_null() {
        line("sent", when(&action["sent_at"]));
    }
    if !action["done_at"].is_null() {
        line("done", when(&action["done_at"]));
    }
    Ok(())
}

/// `edgehook bookings`: upstream's bookings kept.
pub async fn bookings(api: &Api, json_out: bool) -> Result<(), String> {
    let answer = api.get("/v1/bookings").await.map_err(|e| e.to_string())?;
    if json_out {
        super::print::json(&answer);
        return Ok(());
    }
    let all = answer["bookings"].as_array().cloned().unwrap_or_default();
    if all.is_empty() {
        println!("no bookings from upstream");
        return Ok(());
    }
    println!(
        "{:<20} {:<20} {:<21} {:<21} DETAILS",
        "BOOKING", "WORKSPACE", "START", "END"
    );
    for b in &all {
        println!(
            "{:<20} {:<20} {:<21} {:<21} {}",
            text(&b["booking_id"]),
            text(&b["workspace_id"]),
            super::print::seconds(&b["start"]),
            super::print::seconds(&b["end"]),
            compact(&b["details"], 50)
        );
    }
    Ok(())
}

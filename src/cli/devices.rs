//! `edgehook devices ...` and `edgehook workspaces`: what the gateway knows of its devices and
//! rooms, through the control API ([`Api`]).

use clap::Subcommand;
use hyper::Method;
use serde_json::Value;

use super::client::{segment, Api};
use super::print::{compact, seconds, text, when};

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// Every device: class, health, last seen, last values.
    List,
    /// One device with everything known of it.
    Show { id: String },
    /// Forget a device: `device.unregistered`, its state deleted (registered anew if it is
    /// heard from again). Needs the running daemon.
    Forget { id: String },
    /// Set the value of its class's `sync_field` desired for this device alone (JSON, or a
    /// plain word taken as a string); `--clear` goes back to the class's.
    Desire {
        id: String,
        #[arg(required_unless_present = "clear", conflicts_with = "clear")]
        value: Option<String>,
        #[arg(long)]
        clear: bool,
    },
}

/// Run one devices command through `api`.
pub async fn run(command: DevicesCommand, api: &Api, json: bool) -> Result<(), String> {
    let err = |e: super::client::CallFailed| e.to_string();
    match command {
        DevicesCommand::List => {
            // Every page (the API answers at most 1,000 devices a call).
            let mut all: Vec<serde_json::Value> = Vec::new();
            let mut path = "/v1/devices?limit=1000".to_string();
            loop {
                let answer = api.get(&path).await.map_err(err)?;
                all.extend(answer["devices"].as_array().cloned().unwrap_or_default());
                match answer["next"].as_str() {
                    Some(next) => path = format!("/v1/devices?limit=1000&after={}", segment(next)),
                    None => break,
                }
            }
            if json {
                super::print::json(&serde_json::json!({ "devices": all }));
                return Ok(());
            }
            if all.is_empty() {
                println!("no devices heard from yet");
                return Ok(());
            }
            println!(
                "{:<24} {:<14} {:<8} {:<21} VALUES",
                "DEVICE", "CLASS", "HEALTH", "LAST SEEN"
            );
            for d in &all {
                let mut health = text(&d["health"]).to_string();
                if d["stale"] == true {
                    health.push_str(",stale");
                }
                let seen = seconds(&d["last_seen"]);
                println!(
                    "{:<24} {:<14} {:<8} {:<21} {}",
                    text(&d["id"]),
                    text(&d["class"]),
                    health,
                    seen,
                    compact(&d["values"], 60)
                );
            }
        }
        DevicesCommand::Show { id } => {
            let d = api
                .get(&format!("/v1/devices/{}", segment(&id)))
                .await
                .map_err(err)?;
            if json {
                super::print::json(&d);
                return Ok(());
            }
            let line = |label: &str, value: String| println!("{label:<15} {value}");
            line("device", text(&d["id"]).to_string());
            line("class", text(&d["class"]).to_string());
            line("health", text(&d["health"]).to_string());
            line("stale", (d["stale"] == true).to_string());
            line("last seen", when(&d["last_seen"]));
            line("last reading", when(&d["last_reading"]));
            line("last report", when(&d["last_report"]));
            line("report pending", (d["report_pending"] == true).to_string());
            if !d["version"].is_null() {
                line("version", compact(&d["version"], 60));
            }
            if let Some(sync) = d["sync"].as_object() {
                let desired = match &d["desired"] {
                    Value::Null => String::new(),
                    v => format!(", desired for it {}", compact(v, 40)),
                };
                let state = if sync["in_sync"] == true {
                    "in sync".to_string()
                } else {
                    format!("OUT OF SYNC since {}", when(&sync["differs_since"]))
                };
                line(
                    "sync",
                    format!(
                        "{state} (reports {}{desired})",
                        compact(&sync["reported"], 40)
                    ),
                );
            }
            if let Some(changes) = d["health_history"].as_array().filter(|h| !h.is_empty()) {
                println!("health history");
                for c in changes {
                    println!("  {:<22} {}", text(&c["health"]), when(&c["at"]));
                }
            }
            if let Some(state) = d["state"].as_object().filter(|s| !s.is_empty()) {
                println!("state");
                for (k, v) in state {
                    println!("  {k:<22} {}", compact(v, 100));
                }
            }
            println!("values");
            if let Some(values) = d["values"].as_object() {
                for (k, v) in values {
                    println!("  {k:<22} {}", compact(v, 100));
                }
            }
        }
        DevicesCommand::Forget { id } => {
            let path = format!("/v1/devices/{}", segment(&id));
            api.call(Method::DELETE, &path, None).await.map_err(err)?;
            if json {
                super::print::json(&serde_json::json!({ "forgotten": id }));
            } else {
                println!("device {id} forgotten (device.unregistered sent; registered anew if heard from again)");
            }
        }
        DevicesCommand::Desire { id, value, clear } => {
            let value = match (clear, value) {
                (true, _) | (false, None) => Value::Null,
                (false, Some(text)) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
            };
            let path = format!("/v1/devices/{}/desired", segment(&id));
            let d = api
                .call(
                    Method::PUT,
                    &path,
                    Some(serde_json::json!({ "value": value })),
                )
                .await
                .map_err(err)?;
            if json {
                super::print::json(&d);
            } else {
                let sync = match d["sync"]["in_sync"].as_bool() {
                    Some(true) => "in sync",
                    Some(false) => {
                        "differs (device.out_of_sync once it lasts its class's sync_grace)"
                    }
                    None => "nothing reported yet",
                };
                match value {
                    Value::Null => {
                        println!("device {id}: its class's desired value applies; {sync}")
                    }
                    v => println!("device {id}: desired {}; {sync}", compact(&v, 40)),
                }
            }
        }
    }
    Ok(())
}

/// `edgehook workspaces`: every workspace's status and its sensors.
pub async fn workspaces(api: &Api, json: bool) -> Result<(), String> {
    let answer = api.get("/v1/workspaces").await.map_err(|e| e.to_string())?;
    if json {
        super::print::json(&answer);
        return Ok(());
    }
    let all = answer["workspaces"].as_array().cloned().unwrap_or_default();
    if all.is_empty() {
        println!("no workspaces configured");
        return Ok(());
    }
    println!(
        "{:<20} {:<9} {:<21} {:<16} SENSORS",
        "WORKSPACE", "STATUS", "SINCE", "DISPLAY"
    );
    for w in &all {
        let sensors: Vec<&str> = w["sensors"]
            .as_array()
            .map(|s| s.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "{:<20} {:<9} {:<21} {:<16} {}",
            text(&w["id"]),
            text(&w["status"]),
            seconds(&w["since"]),
            text(&w["display"]),
            sensors.join(" ")
        );
    }
    Ok(())
}

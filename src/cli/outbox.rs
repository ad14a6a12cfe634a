//! `edgehook outbox ...`: see into the outbox and repair it, on a gateway with no UI.
//!
//! Each command is a call to the control API ([`Api`]): the running daemon's when it runs,
//! or the same routes over its store when it is stopped, so the output is the same either way
//! and nothing asks the operator to stop the service. Changes (replay, purge, enable) are
//! durable before the command exits.

use std::path::Path;

use clap::Subcommand;
use hyper::Method;
use serde_json::{json, Value};

use super::client::{query, segment, Api};
use super::print::{count, text, when};

/// The most events one call to the API lists; longer lists are read a page at a time.
const PAGE: usize = 1000;

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Per endpoint: state, pending events, oldest age, dead letters, last success and failure.
    Status,
    /// List pending events (or dead letters with why), oldest first.
    List {
        /// Dead letters instead of pending events.
        #[arg(long)]
        dead: bool,
        /// Only this endpoint's.
        #[arg(long)]
        endpoint: Option<String>,
        /// Only events of this type or pattern (`sensor.*`).
        #[arg(long = "type")]
        kind: Option<String>,
        /// At most this many (said when more follow).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Every one, however many.
        #[arg(long, conflicts_with = "limit")]
        all: bool,
    },
    /// The delivery log: the latest attempts, with status, duration and error.
    Log {
        /// Only this endpoint's.
        #[arg(long)]
        endpoint: Option<String>,
        /// Only this event's (its id).
        #[arg(long)]
        event: Option<String>,
        /// Only `ok`, `failed` or one HTTP status.
        #[arg(long)]
        status: Option<String>,
        /// At most this many (up to 1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
    },
    /// Queue dead letters again (same event id, so receivers still deduplicate).
    Replay {
        /// The event id of one dead letter.
        #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
        id: Option<String>,
        /// Every dead letter.
        #[arg(long)]
        all_dead: bool,
        /// Only this endpoint's.
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// Delete every pending event (or, with --dead, every dead letter) for good.
    Purge {
        #[arg(long)]
        dead: bool,
        /// Only this endpoint's (e.g. the queue of an endpoint no longer configured).
        #[arg(long)]
        endpoint: Option<String>,
        /// Really do it.
        #[arg(long)]
        yes: bool,
    },
    /// Send again to an endpoint disabled after a 410 Gone (every disabled one, without
    /// --endpoint).
    Enable {
        #[arg(long)]
        endpoint: Option<String>,
    },
}

/// Run one outbox command through `api`; `json` prints the API's answers as they are.
/// Errors are for the user to read.
pub async fn run(
    command: OutboxCommand,
    api: &Api,
    state_dir: &Path,
    json: bool,
) -> Result<(), String> {
    let err = |e: super::client::CallFailed| e.to_string();
    let status = api.get("/v1/outbox").await.map_err(err)?;
    let queues = status["queues"].as_array().cloned().unwrap_or_default();
    let known = |endpoint: &Option<String>| -> Result<(), String> {
        match endpoint {
            Some(name) if !queues.iter().any(|q| q["endpoint"] == *name) => Err(format!(
                "no endpoint `{name}` in this outbox (edgehook outbox status lists them)"
            )),
            _ => Ok(()),
        }
    };
    let chosen = |endpoint: &Option<String>, q: &Value| {
        endpoint
            .as_deref()
            .is_none_or(|e| q["endpoint"].as_str() == Some(e))
    };
    match command {
        OutboxCommand::Status => {
            let endpoints = api.get("/v1/endpoints").await.map_err(err)?;
            if json {
                super::print::json(
                    &json!({ "outbox": status, "endpoints": endpoints["endpoints"] }),
                );
                return Ok(());
            }
            eprintln!("(from {})", api.source());
            println!("outbox        {}", state_dir.join("outbox.sled").display());
            let max = count(&status["max_bytes"]);
            let allowed = if max > 0 {
                format!(" of {max} allowed")
            } else {
                String::new()
            };
            println!(
                "pending       {} event(s), {} bytes{allowed}",
                count(&status["pending"]),
                count(&status["bytes"])
            );
            let configured = endpoints["endpoints"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for q in &queues {
                let name = text(&q["endpoint"]);
                let endpoint = configured.iter().find(|e| e["name"] == name);
                let url = endpoint.map_or("-", |e| text(&e["url"]));
                let state = if let Some(d) = q["disabled"].as_object() {
                    format!(
                        "DISABLED since {}: {}",
                        text(&d["since"]),
                        text(&d["reason"])
                    )
                } else {
                    match text(&q["state"]) {
                        "active" => format!("active, {url}"),
                        "paused" => format!(
                            "PAUSED since {}: nothing is sent, new events are still queued ({url})",
                            text(&q["paused_since"])
                        ),
                        "inactive" => "inactive (active = false)".into(),
                        "draining" => format!("draining before its deletion, {url}"),
                        _ => "NOT CONFIGURED: its queue is kept until purged".into(),
                    }
                };
                println!("\nendpoint {name}: {state}");
                let oldest = match q["oldest_pending"] {
                    Value::Null => String::new(),
                    ref at => format!(" (oldest {})", when(at)),
                };
                println!("  pending       {}{oldest}", count(&q["pending"]));
                println!("  dead letters  {}", count(&q["dead_letters"]));
                let dropped = count(&q["dropped"]);
                if dropped > 0 {
                    println!(
                        "  dropped       {dropped} event(s) it will never get: its share of the outbox was full (see the log)"
                    );
                }
                println!("  last success  {}", when(&q["last_success"]));
                println!("  last failure  {}", when(&q["last_failure"]));
                if let Some(error) = endpoint.and_then(|e| e["last_error"].as_str()) {
                    println!("  last error    {error}");
                }
            }
        }
        OutboxCommand::List {
            dead,
            endpoint,
            kind,
            limit,
            all,
        } => {
            known(&endpoint)?;
            // One more than asked for, to tell whether more follow.
            let want = if all { usize::MAX } else { limit + 1 };
            let mut events = Vec::new();
            while events.len() < want {
                let page = (want - events.len()).min(PAGE);
                let path = format!(
                    "/v1/outbox/events{}",
                    query(&[
                        ("endpoint", endpoint.clone()),
                        ("type", kind.clone()),
                        ("dead", dead.then(|| "true".to_string())),
                        ("limit", Some(page.to_string())),
                        ("offset", Some(events.len().to_string())),
                    ])
                );
                let answer = api.get(&path).await.map_err(err)?;
                let got = answer["events"].as_array().cloned().unwrap_or_default();
                let last_page = got.len() < page;
                events.extend(got);
                if last_page {
                    break;
                }
            }
            let cut = !all && events.len() > limit;
            if !all {
                events.truncate(limit);
            }
            if cut {
                eprintln!(
                    "the first {limit} shown; more follow (--limit N, or --all for every one)"
                );
            }
            if json {
                super::print::json(&json!({ "events": events }));
                return Ok(());
            }
            for e in &events {
                let line = format!(
                    "{}  {:<12} {:<26} {:<24} {}",
                    text(&e["event_id"]),
                    text(&e["endpoint"]),
                    text(&e["type"]),
                    text(&e["lane"]),
                    when(&e["created"])
                );
                match e["dead"].as_object() {
                    None => println!("{line}"),
                    Some(d) => println!(
                        "{line}  gave up {} ({}, {} attempts, last {}: {})",
                        when(&d["at"]),
                        text(&d["reason"]),
                        count(&d["attempts"]),
                        d["last_status"]
                            .as_u64()
                            .map_or("no answer".into(), |s| format!("HTTP {s}")),
                        text(&d["last_error"])
                    ),
                }
            }
        }
        OutboxCommand::Log {
            endpoint,
            event,
            status,
            limit,
        } => {
            let path = format!(
                "/v1/deliveries{}",
                query(&[
                    ("endpoint", endpoint.clone()),
                    ("event", event),
                    ("status", status),
                    ("limit", Some(limit.to_string())),
                ])
            );
            let answer = api.get(&path).await.map_err(err)?;
            let attempts = answer["deliveries"].as_array().cloned().unwrap_or_default();
            if json {
                super::print::json(&answer);
                return Ok(());
            }
            if attempts.is_empty() {
                if let Some(name) = &endpoint {
                    let endpoints = api.get("/v1/endpoints").await.map_err(err)?;
                    let configured = endpoints["endpoints"]
                        .as_array()
                        .is_some_and(|all| all.iter().any(|e| e["name"] == *name));
                    if !configured && known(&endpoint).is_err() {
                        return Err(format!(
                            "no endpoint `{name}` in the configuration, and none in the delivery log"
                        ));
                    }
                }
                eprintln!(
                    "no delivery attempts logged in {} yet",
                    state_dir.join(crate::deliver::log::FILE).display()
                );
            }
            for a in attempts {
                let result = match (a["ok"].as_bool() == Some(true), a["status"].as_u64()) {
                    (true, Some(s)) => format!("{s} ok"),
                    (true, None) => "ok".into(),
                    (false, Some(s)) => format!("{s} failed"),
                    (false, None) => "no answer".into(),
                };
                println!(
                    "{}  {:<12} {}  {:<11} {:>6} ms  {}",
                    text(&a["at"]),
                    text(&a["endpoint"]),
                    text(&a["event_id"]),
                    result,
                    count(&a["ms"]),
                    a["error"].as_str().unwrap_or("")
                );
            }
        }
        OutboxCommand::Replay {
            id,
            all_dead,
            endpoint,
        } => {
            known(&endpoint)?;
            let mut body = json!({ "all_dead": all_dead });
            if let Some(id) = &id {
                body["event_id"] = json!(id);
            }
            if let Some(e) = &endpoint {
                body["endpoint"] = json!(e);
            }
            match api
                .call(Method::POST, "/v1/outbox/replay", Some(body))
                .await
            {
                Ok(answer) => {
                    println!("{} dead letter(s) queued again", count(&answer["replayed"]));
                    let damaged = count(&answer["damaged_skipped"]);
                    if damaged > 0 {
                        println!("{damaged} left: set aside as damaged on disk, they cannot be sent (edgehook outbox purge --dead --yes deletes them)");
                    }
                }
                Err(e) if e.status == 409 => return Err(e.to_string()),
                Err(e) if e.status == 404 => {
                    return Err(match id {
                        Some(id) => format!(
                            "no dead letter with event id {id} (edgehook outbox list --dead)"
                        ),
                        None => "there are no dead letters".into(),
                    })
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        OutboxCommand::Purge {
            dead,
            endpoint,
            yes,
        } => {
            known(&endpoint)?;
            let (what, field) = if dead {
                ("dead letters", "dead_letters")
            } else {
                ("pending events", "pending")
            };
            let chosen: Vec<&Value> = queues.iter().filter(|q| chosen(&endpoint, q)).collect();
            let n: u64 = chosen.iter().map(|q| count(&q[field])).sum();
            let whose = endpoint
                .as_deref()
                .map_or(String::new(), |e| format!(" of endpoint {e}"));
            if !yes {
                return Err(format!(
                    "this deletes {n} {what}{whose} for good; run again with --yes"
                ));
            }
            let mut deleted = 0;
            for q in chosen {
                let body = json!({ "endpoint": q["endpoint"], "dead": dead });
                let answer = api
                    .call(Method::POST, "/v1/outbox/purge", Some(body))
                    .await
                    .map_err(err)?;
                deleted += count(&answer["purged"]);
            }
            println!("deleted {deleted} {what}{whose}");
        }
        OutboxCommand::Enable { endpoint } => {
            known(&endpoint)?;
            let mut enabled = 0;
            for q in queues.iter().filter(|q| chosen(&endpoint, q)) {
                // A queue whose endpoint is not configured sends nothing either way.
                let Some(d) = q["disabled"].as_object() else {
                    continue;
                };
                if q["state"] == "not configured" {
                    continue;
                }
                let name = text(&q["endpoint"]);
                let path = format!("/v1/endpoints/{}/enable", segment(name));
                api.call(Method::POST, &path, None).await.map_err(err)?;
                println!(
                    "endpoint {name} enabled again (was disabled since {}: {})",
                    text(&d["since"]),
                    text(&d["reason"])
                );
                enabled += 1;
            }
            if enabled == 0 {
                println!("no endpoint was disabled");
            }
        }
    }
    Ok(())
}

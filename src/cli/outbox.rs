//! `edgehook outbox ...`: see into the outbox and repair it, on a gateway with no UI.
//!
//! sled lets one process open the store at a time, so these commands work on a stopped daemon
//! (`systemctl stop edgehook`); while it runs they refuse, say why, and point at the live
//! figures on `/metrics`. `outbox log` reads the delivery log's own file, so it works either way. Changes (replay, purge, enable) are flushed before the command exits.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Subcommand;

use crate::config::Config;
use crate::outbox::{DeadLetter, Last, Outbox, OutboxRecord, Route};

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
        /// At most this many (per endpoint).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// The delivery log: the latest attempts, with status, duration and error.
    Log {
        /// Only this endpoint's.
        #[arg(long)]
        endpoint: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
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

/// Run one outbox command on the store in `state_dir`. `config`, when it loaded, says which
/// endpoints are configured and active. Errors are for the user to read.
pub async fn run(
    command: OutboxCommand,
    state_dir: &Path,
    config: Option<&Config>,
    metrics_hint: &str,
) -> Result<(), String> {
    if let OutboxCommand::Log { endpoint, limit } = &command {
        return print_log(state_dir, config, endpoint.as_deref(), *limit);
    }
    if !state_dir.join("outbox.sled").exists() {
        return Err(format!(
            "there is no outbox in {} (wrong state directory? --state-dir DIR)",
            state_dir.display()
        ));
    }
    // Queues for the active endpoints (nothing is written here, so they want nothing).
    let routes: Vec<Route> = config
        .map(|c| c.all_endpoints())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.active)
        .map(|e| Route {
            endpoint: e.name.clone(),
            wants: Arc::new(|_: &str| false),
        })
        .collect();
    let outbox = Outbox::open(state_dir, 1 << 20, routes).map_err(|e| {
        let text = e.to_string();
        if text.contains("lock") || text.contains("WouldBlock") || text.contains("temporarily unavailable") {
            format!(
                "the outbox in {} is in use by a running edgehook: stop it first (systemctl stop edgehook){metrics_hint}",
                state_dir.display()
            )
        } else {
            format!("cannot open the outbox in {}: {text}", state_dir.display())
        }
    })?;
    let err = |e: crate::outbox::OutboxError| e.to_string();
    let known = |endpoint: &Option<String>| -> Result<(), String> {
        match endpoint {
            Some(name) if outbox.queue(name).is_none() => Err(format!(
                "no endpoint `{name}` in this outbox (edgehook outbox status lists them)"
            )),
            _ => Ok(()),
        }
    };
    let chosen =
        |endpoint: &Option<String>, name: &str| endpoint.as_deref().is_none_or(|e| e == name);
    match command {
        OutboxCommand::Status => {
            println!("outbox        {}", state_dir.join("outbox.sled").display());
            let size = config.map_or(String::new(), |c| {
                format!(" of {} allowed", c.outbox.max_size)
            });
            println!(
                "pending       {} event(s), {} bytes{size}",
                outbox.len(),
                outbox.bytes()
            );
            let dead = outbox.dead_letters(usize::MAX).map_err(err)?;
            for (queue, name, routed) in outbox.queues() {
                let name = name.as_str();
                let configured =
                    config.and_then(|c| c.all_endpoints().into_iter().find(|e| e.name == name));
                let disabled = outbox.disabled(name);
                let state = match (disabled, configured, routed) {
                    (Some(d), _, _) => format!("DISABLED since {}: {}", d.since, d.reason),
                    (None, Some(e), true) => {
                        format!("active, {}", crate::secret::redact_url(&e.url))
                    }
                    (None, Some(_), false) => "inactive (active = false)".into(),
                    (None, None, _) if config.is_none() => "(configuration not loaded)".into(),
                    (None, None, _) => "NOT CONFIGURED: its queue is kept until purged".into(),
                };
                println!("\nendpoint {name}: {state}");
                let oldest = outbox.oldest(queue).map_err(err)?;
                println!(
                    "  pending       {}{}",
                    outbox.queue_len(queue),
                    oldest.map_or(String::new(), |r| format!(" (oldest {})", created(&r)))
                );
                println!(
                    "  dead letters  {}",
                    dead.iter().filter(|d| d.endpoint == name).count()
                );
                let dropped = outbox.dropped_for(queue);
                if dropped > 0 {
                    println!(
                        "  dropped       {dropped} event(s) it will never get: its share of the outbox was full (see the log)"
                    );
                }
                for (label, fact) in [
                    ("last success", Last::Success),
                    ("last failure", Last::Failure),
                ] {
                    let at = outbox.last(name, fact);
                    println!("  {label:<13} {}", at.map_or("never".into(), when));
                }
            }
        }
        OutboxCommand::List {
            dead: false,
            endpoint,
            limit,
        } => {
            known(&endpoint)?;
            for (queue, name, _) in outbox.queues() {
                let name = name.as_str();
                if !chosen(&endpoint, name) {
                    continue;
                }
                for r in outbox.pending_after(queue, None, limit).map_err(err)? {
                    println!(
                        "{}  {name:<12} {:<26} {:<24} {}",
                        r.id,
                        r.kind,
                        r.lane,
                        created(&r)
                    );
                }
            }
        }
        OutboxCommand::List {
            dead: true,
            endpoint,
            limit,
        } => {
            known(&endpoint)?;
            let dead = outbox.dead_letters(usize::MAX).map_err(err)?;
            for DeadLetter {
                endpoint: name,
                record: r,
                info,
            } in dead
                .into_iter()
                .filter(|d| chosen(&endpoint, &d.endpoint))
                .take(limit)
            {
                println!(
                    "{}  {name:<12} {:<26} {:<24} {}  gave up {} ({}, {} attempts, last {}: {})",
                    r.id,
                    r.kind,
                    r.lane,
                    created(&r),
                    when(info.dead_at),
                    info.reason,
                    info.attempts,
                    info.last_status
                        .map_or("no answer".into(), |s| format!("HTTP {s}")),
                    info.last_error
                );
            }
        }
        // Read from its own file above, without opening the store.
        OutboxCommand::Log { .. } => {}
        OutboxCommand::Replay {
            id,
            all_dead,
            endpoint,
        } => {
            known(&endpoint)?;
            let dead = outbox.dead_letters(usize::MAX).map_err(err)?;
            let chosen: Vec<&DeadLetter> = dead
                .iter()
                .filter(|d| chosen(&endpoint, &d.endpoint))
                .filter(|d| all_dead || id.as_deref() == Some(d.record.id.as_str()))
                .collect();
            if chosen.is_empty() {
                return Err(match id {
                    Some(id) => {
                        format!("no dead letter with event id {id} (edgehook outbox list --dead)")
                    }
                    None => "there are no dead letters".into(),
                });
            }
            for d in &chosen {
                outbox
                    .revive(&d.endpoint, d.record.seq)
                    .await
                    .map_err(err)?;
            }
            println!("{} dead letter(s) queued again", chosen.len());
        }
        OutboxCommand::Purge {
            dead,
            endpoint,
            yes,
        } => {
            known(&endpoint)?;
            let (what, n) = if dead {
                let all = outbox.dead_letters(usize::MAX).map_err(err)?;
                (
                    "dead letters",
                    all.iter()
                        .filter(|d| chosen(&endpoint, &d.endpoint))
                        .count(),
                )
            } else {
                let n = outbox
                    .queues()
                    .into_iter()
                    .filter(|(_, name, _)| chosen(&endpoint, name))
                    .map(|(q, _, _)| outbox.queue_len(q))
                    .sum();
                ("pending events", n)
            };
            let whose = endpoint
                .as_deref()
                .map_or(String::new(), |e| format!(" of endpoint {e}"));
            if !yes {
                return Err(format!(
                    "this deletes {n} {what}{whose} for good; run again with --yes"
                ));
            }
            let n = outbox.purge(dead, endpoint.as_deref()).await.map_err(err)?;
            println!("deleted {n} {what}{whose}");
        }
        OutboxCommand::Enable { endpoint } => {
            known(&endpoint)?;
            let mut enabled = 0;
            for (_, name, _) in outbox.queues() {
                let name = name.as_str();
                if !chosen(&endpoint, name) {
                    continue;
                }
                if let Some(d) = outbox.disabled(name) {
                    outbox.set_disabled(name, None).map_err(err)?;
                    println!(
                        "endpoint {name} enabled again (was disabled since {}: {})",
                        d.since, d.reason
                    );
                    enabled += 1;
                }
            }
            outbox.flush().await.map_err(err)?;
            if enabled == 0 {
                println!("no endpoint was disabled");
            }
        }
    }
    Ok(())
}

/// When an event was created (from its UUIDv7 id), and how long ago.
fn created(r: &OutboxRecord) -> String {
    crate::event::created_at(&r.id)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| when(d.as_millis() as u64))
        .unwrap_or_else(|| "unknown time".into())
}

fn when(unix_ms: u64) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms);
    let ago = SystemTime::now()
        .duration_since(at)
        .map(|d| Duration::from_secs(d.as_secs()))
        .unwrap_or_default();
    format!(
        "{} ({} ago)",
        humantime::format_rfc3339_seconds(at),
        humantime::format_duration(ago)
    )
}

/// `outbox log`: the delivery log is a file of its own, readable while the daemon runs.
fn print_log(
    state_dir: &Path,
    config: Option<&Config>,
    endpoint: Option<&str>,
    limit: usize,
) -> Result<(), String> {
    let attempts = crate::deliver::log::read(state_dir, endpoint, limit).map_err(|e| {
        format!(
            "cannot read the delivery log in {}: {e}",
            state_dir.display()
        )
    })?;
    if attempts.is_empty() {
        let configured =
            |name: &str| config.is_some_and(|c| c.all_endpoints().iter().any(|e| e.name == name));
        match endpoint {
            Some(name) if config.is_some() && !configured(name) => {
                return Err(format!(
                    "no endpoint `{name}` in the configuration, and none in the delivery log"
                ))
            }
            _ => eprintln!(
                "no delivery attempts logged in {} yet",
                state_dir.join(crate::deliver::log::FILE).display()
            ),
        }
    }
    for a in attempts {
        let result = match (a.ok, a.status) {
            (true, Some(s)) => format!("{s} ok"),
            (true, None) => "ok".into(),
            (false, Some(s)) => format!("{s} failed"),
            (false, None) => "no answer".into(),
        };
        println!(
            "{}  {:<12} {}  {:<11} {:>6} ms  {}",
            humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(a.at)),
            a.endpoint,
            a.event_id,
            result,
            a.ms,
            a.error.unwrap_or_default()
        );
    }
    Ok(())
}

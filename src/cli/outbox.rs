//! `edgehook outbox ...`: see into the outbox and repair it, on a gateway with no UI.
//!
//! sled lets one process open the store at a time, so these commands work on a stopped daemon
//! (`systemctl stop edgehook`); while it runs they refuse, say why, and point at the live
//! figures on `/metrics`. Changes (replay, purge, enable) are flushed before the command exits.

use std::path::Path;
use std::time::{Duration, SystemTime};

use clap::Subcommand;

use crate::deliver::{Disabled, DISABLED_KEY, LAST_FAILURE_KEY, LAST_SUCCESS_KEY};
use crate::outbox::{Outbox, OutboxRecord};

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Pending events, oldest age, dead letters, last success and failure, endpoint state.
    Status,
    /// List pending events (or dead letters with why), oldest first.
    List {
        /// Dead letters instead of pending events.
        #[arg(long)]
        dead: bool,
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
    },
    /// Delete every pending event (or, with --dead, every dead letter) for good.
    Purge {
        #[arg(long)]
        dead: bool,
        /// Really do it.
        #[arg(long)]
        yes: bool,
    },
    /// Send again to an endpoint disabled after a 410 Gone.
    Enable,
}

/// Run one outbox command on the store in `state_dir`. Errors are for the user to read.
pub async fn run(
    command: OutboxCommand,
    state_dir: &Path,
    metrics_hint: &str,
) -> Result<(), String> {
    if !state_dir.join("outbox.sled").exists() {
        return Err(format!(
            "there is no outbox in {} (wrong state directory? --state-dir DIR)",
            state_dir.display()
        ));
    }
    let outbox = Outbox::open(state_dir, 1 << 20).map_err(|e| {
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
    match command {
        OutboxCommand::Status => {
            let disabled: Option<Disabled> = outbox.meta(DISABLED_KEY);
            println!("outbox        {}", state_dir.join("outbox.sled").display());
            match disabled {
                Some(d) => println!("endpoint      DISABLED since {}: {}", d.since, d.reason),
                None => println!("endpoint      enabled"),
            }
            let oldest = outbox.oldest().map_err(err)?;
            println!(
                "pending       {}{}",
                outbox.len(),
                oldest.map_or(String::new(), |r| format!(" (oldest {})", created(&r)))
            );
            println!("dead letters  {}", outbox.dead_len());
            for (label, key) in [
                ("last success", LAST_SUCCESS_KEY),
                ("last failure", LAST_FAILURE_KEY),
            ] {
                let at: Option<u64> = outbox.meta(key);
                println!("{label:<13} {}", at.map_or("never".into(), when));
            }
        }
        OutboxCommand::List { dead: false, limit } => {
            for r in outbox.pending_after(None, limit).map_err(err)? {
                println!("{}  {:<26} {:<24} {}", r.id, r.kind, r.lane, created(&r));
            }
        }
        OutboxCommand::List { dead: true, limit } => {
            for (r, info) in outbox.dead_letters(limit).map_err(err)? {
                println!(
                    "{}  {:<26} {:<24} {}  gave up {} ({}, {} attempts, last {}: {})",
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
        OutboxCommand::Replay { id, all_dead } => {
            let dead = outbox.dead_letters(usize::MAX).map_err(err)?;
            let chosen: Vec<&OutboxRecord> = dead
                .iter()
                .map(|(r, _)| r)
                .filter(|r| all_dead || id.as_deref() == Some(r.id.as_str()))
                .collect();
            if chosen.is_empty() {
                return Err(match id {
                    Some(id) => {
                        format!("no dead letter with event id {id} (edgehook outbox list --dead)")
                    }
                    None => "there are no dead letters".into(),
                });
            }
            for r in &chosen {
                outbox.revive(r.seq).await.map_err(err)?;
            }
            println!("{} dead letter(s) queued again", chosen.len());
        }
        OutboxCommand::Purge { dead, yes } => {
            let (what, n) = if dead {
                ("dead letters", outbox.dead_len())
            } else {
                ("pending events", outbox.len())
            };
            if !yes {
                return Err(format!(
                    "this deletes {n} {what} for good; run again with --yes"
                ));
            }
            let n = outbox.purge(dead).await.map_err(err)?;
            println!("deleted {n} {what}");
        }
        OutboxCommand::Enable => {
            let was: Option<Disabled> = outbox.meta(DISABLED_KEY);
            outbox
                .set_meta::<Disabled>(DISABLED_KEY, None)
                .map_err(err)?;
            outbox.flush().await.map_err(err)?;
            match was {
                Some(d) => println!(
                    "endpoint enabled again (was disabled since {}: {})",
                    d.since, d.reason
                ),
                None => println!("endpoint was not disabled"),
            }
        }
    }
    Ok(())
}

/// When an event was created (from its UUIDv7 id), and how long ago.
fn created(r: &OutboxRecord) -> String {
    uuid::Uuid::parse_str(&r.id)
        .ok()
        .and_then(|u| u.get_timestamp())
        .map(|t| {
            let (secs, nanos) = t.to_unix();
            when(secs * 1000 + u64::from(nanos) / 1_000_000)
        })
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

//! `edgehook endpoints ...`: list, show, create, edit, pause, resume, enable, test and delete
//! webhook endpoints, through the control API ([`Api`]) as the console does. Endpoints of the
//! configuration file are edited in the file (`systemctl reload edgehook` applies them); those
//! made here are kept in the state directory (`endpoints.json`).

use std::path::PathBuf;

use clap::Subcommand;
use hyper::Method;
use serde_json::{json, Map, Value};

use super::client::{query, segment, Api};
use super::print::{count, seconds, text, when};

#[derive(Debug, Subcommand)]
pub enum EndpointsCommand {
    /// Every endpoint: where it is defined, its state, its queue, its last delivery.
    List,
    /// One endpoint with all its settings (secrets and header values are never shown).
    Show { name: String },
    /// Make an endpoint (kept in the state directory, applied at once while the daemon runs).
    Create {
        name: String,
        /// Where events go (https://, or http:// to this host).
        #[arg(long)]
        url: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Change some of an endpoint's settings (its queue is kept).
    Edit {
        name: String,
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Send nothing to it; new events are still queued within its share of the outbox.
    Pause { name: String },
    /// Send again after a pause.
    Resume { name: String },
    /// Send again after a 410 Gone disabled it.
    Enable { name: String },
    /// Send it one sample event now (not through the outbox) and say what it answered.
    Test { name: String },
    /// Delete an endpoint made through the API; refused while events wait for it, unless
    /// `--pending drain` (it delivers them first) or `--pending purge` (they are deleted).
    Delete {
        name: String,
        #[arg(long, default_value = "refuse", value_parser = ["refuse", "drain", "purge"])]
        pending: String,
    },
}

/// Settings given on the command line; `--settings FILE` gives any other as JSON.
#[derive(Debug, clap::Args)]
pub struct Settings {
    /// What the endpoint is for.
    #[arg(long)]
    description: Option<String>,
    /// Event types or patterns it receives (`device.*`); repeat or separate with commas.
    #[arg(long, value_delimiter = ',')]
    events: Vec<String>,
    /// Wire format (edgehook, spaceos, roomz, roomz-presence, gospace, generic, cloudevents).
    #[arg(long)]
    format: Option<String>,
    /// The signing secret. From the environment rather than the command line, where other
    /// users of the machine can see it.
    #[arg(long, env = "EDGEHOOK_ENDPOINT_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// A custom request header (`Name: value`, e.g. an API key); repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Queue and send to it (`--active false` makes it take nothing).
    #[arg(long)]
    active: Option<bool>,
    /// Any other settings, as a JSON object (a file, or - for standard input).
    #[arg(long = "settings", value_name = "FILE")]
    file: Option<PathBuf>,
}

impl Settings {
    /// The settings as a JSON object (for a create, or a merge patch).
    fn to_json(&self) -> Result<Map<String, Value>, String> {
        let mut map = match &self.file {
            None => Map::new(),
            Some(path) => {
                let text = if path.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin())
                        .map_err(|e| format!("cannot read standard input: {e}"))?
                } else {
                    std::fs::read_to_string(path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                };
                match serde_json::from_str(&text) {
                    Ok(Value::Object(map)) => map,
                    Ok(_) => return Err(format!("{}: not a JSON object", path.display())),
                    Err(e) => return Err(format!("{}: not JSON ({e})", path.display())),
                }
            }
        };
        let mut set = |key: &str, value: Option<Value>| {
            if let Some(v) = value {
                map.insert(key.to_string(), v);
            }
        };
        set("description", self.description.clone().map(Value::from));
        set(
            "events",
            (!self.events.is_empty()).then(|| json!(self.events)),
        );
        set("format", self.format.clone().map(Value::from));
        set("secret", self.secret.clone().map(Value::from));
        set("active", self.active.map(Value::from));
        if !self.headers.is_empty() {
            let mut headers = Map::new();
            for h in &self.headers {
                let (name, value) = h
                    .split_once(':')
                    .ok_or_else(|| format!("--header `{h}`: write it as `Name: value`"))?;
                headers.insert(name.trim().to_string(), json!(value.trim()));
            }
            map.insert("headers".into(), Value::Object(headers));
        }
        Ok(map)
    }
}

/// Run one endpoints command through `api`; `json` prints the API's answers as they are.
pub async fn run(command: EndpointsCommand, api: &Api, json: bool) -> Result<(), String> {
    let err = |e: super::client::CallFailed| e.to_string();
    let one = |name: &str| format!("/v1/endpoints/{}", segment(name));
    let (answer, said) = match command {
        EndpointsCommand::List => {
            let answer = api.get("/v1/endpoints").await.map_err(err)?;
            if !json {
                print_list(&answer);
            }
            (answer, None)
        }
        EndpointsCommand::Show { name } => {
            let answer = api.get(&one(&name)).await.map_err(err)?;
            if !json {
                print_one(&answer);
            }
            (answer, None)
        }
        EndpointsCommand::Create {
            name,
            url,
            settings,
        } => {
            let mut body = settings.to_json()?;
            body.insert("name".into(), json!(name));
            body.insert("url".into(), json!(url));
            let answer = api
                .call(Method::POST, "/v1/endpoints", Some(Value::Object(body)))
                .await
                .map_err(err)?;
            let said = format!("endpoint {name} created ({})", live(api));
            (answer, Some(said))
        }
        EndpointsCommand::Edit {
            name,
            url,
            settings,
        } => {
            let mut patch = settings.to_json()?;
            if let Some(url) = url {
                patch.insert("url".into(), json!(url));
            }
            if patch.is_empty() {
                return Err(
                    "nothing to change: give a setting (edgehook endpoints edit --help)".into(),
                );
            }
            let answer = api
                .call(Method::PATCH, &one(&name), Some(Value::Object(patch)))
                .await
                .map_err(err)?;
            let said = format!("endpoint {name} edited; its queue is kept ({})", live(api));
            (answer, Some(said))
        }
        EndpointsCommand::Pause { name } => {
            let path = format!("{}/pause", one(&name));
            let answer = api.call(Method::POST, &path, None).await.map_err(err)?;
            let said = format!(
                "endpoint {name} paused: nothing is sent to it; new events are still queued ({} pending)",
                count(&answer["pending"])
            );
            (answer, Some(said))
        }
        EndpointsCommand::Resume { name } => {
            let path = format!("{}/resume", one(&name));
            let answer = api.call(Method::POST, &path, None).await.map_err(err)?;
            let said = format!(
                "endpoint {name} resumed ({} pending)",
                count(&answer["pending"])
            );
            (answer, Some(said))
        }
        EndpointsCommand::Enable { name } => {
            let path = format!("{}/enable", one(&name));
            let answer = api.call(Method::POST, &path, None).await.map_err(err)?;
            (answer, Some(format!("endpoint {name} enabled")))
        }
        EndpointsCommand::Test { name } => {
            let path = format!("{}/test", one(&name));
            let answer = api.call(Method::POST, &path, None).await.map_err(err)?;
            let result = match (answer["delivered"].as_bool(), answer["status"].as_u64()) {
                (Some(true), Some(s)) => format!("delivered: HTTP {s}"),
                (_, Some(s)) => format!("NOT delivered: HTTP {s}"),
                _ => "NOT delivered".to_string(),
            };
            let error = answer["error"]
                .as_str()
                .map_or(String::new(), |e| format!(" ({e})"));
            let said = format!(
                "test {} {} to {name}: {result} in {} ms{error}",
                text(&answer["type"]),
                text(&answer["event_id"]),
                count(&answer["ms"])
            );
            if answer["delivered"] != true && !json {
                return Err(said);
            }
            (answer, Some(said))
        }
        EndpointsCommand::Delete { name, pending } => {
            let path = format!("{}{}", one(&name), query(&[("pending", Some(pending))]));
            let answer = api.call(Method::DELETE, &path, None).await.map_err(err)?;
            let said = if answer.is_null() {
                format!("endpoint {name} deleted")
            } else {
                format!(
                    "endpoint {name} deleted once it has delivered its {} pending event(s); it takes nothing new",
                    count(&answer["pending"])
                )
            };
            (answer, Some(said))
        }
    };
    if json {
        super::print::json(&answer);
    } else if let Some(said) = said {
        println!("{said}");
    }
    Ok(())
}

/// When a change takes effect.
fn live(api: &Api) -> &'static str {
    if api.is_live() {
        "applied now"
    } else {
        "the daemon is not running: it applies it at its next start"
    }
}

fn print_list(answer: &Value) {
    let all = answer["endpoints"].as_array().cloned().unwrap_or_default();
    if all.is_empty() {
        println!("no endpoints (edgehook endpoints create NAME --url URL)");
        return;
    }
    println!(
        "{:<16} {:<6} {:<9} {:>8} {:>5}  {:<26} URL",
        "NAME", "SOURCE", "STATE", "PENDING", "DEAD", "LAST SUCCESS"
    );
    for e in &all {
        let last = seconds(&e["last_success"]);
        println!(
            "{:<16} {:<6} {:<9} {:>8} {:>5}  {:<26} {}",
            text(&e["name"]),
            text(&e["source"]),
            text(&e["state"]),
            count(&e["pending"]),
            count(&e["dead_letters"]),
            last,
            text(&e["url"])
        );
    }
}

fn print_one(e: &Value) {
    let line = |label: &str, value: String| println!("{label:<15} {value}");
    line("name", text(&e["name"]).to_string());
    if let Some(d) = e["description"].as_str().filter(|d| !d.is_empty()) {
        line("description", d.to_string());
    }
    line("source", text(&e["source"]).to_string());
    line("url", text(&e["url"]).to_string());
    let mut state = text(&e["state"]).to_string();
    if let Some(d) = e["disabled"].as_object() {
        state = format!(
            "{state} since {}: {}",
            text(&d["since"]),
            text(&d["reason"])
        );
    } else if let Some(since) = e["paused_since"].as_str() {
        state = format!("{state} since {since}");
    }
    line("state", state);
    line("secrets set", count(&e["secrets_set"]).to_string());
    let headers: Vec<&str> = e["headers"]
        .as_array()
        .map(|h| h.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !headers.is_empty() {
        line("headers", format!("{} (values hidden)", headers.join(", ")));
    }
    let oldest = match &e["oldest_pending"] {
        Value::Null => String::new(),
        at => format!(" (oldest {})", when(at)),
    };
    line("pending", format!("{}{oldest}", count(&e["pending"])));
    line("dead letters", count(&e["dead_letters"]).to_string());
    if count(&e["dropped"]) > 0 {
        line("dropped", count(&e["dropped"]).to_string());
    }
    line("last success", when(&e["last_success"]));
    line("last failure", when(&e["last_failure"]));
    if let Some(error) = e["last_error"].as_str() {
        line("last error", error.to_string());
    }
    if let Some(ms) = e["last_latency_ms"].as_u64() {
        line("last latency", format!("{ms} ms"));
    }
    println!("settings");
    if let Some(settings) = e["settings"].as_object() {
        for (k, v) in settings {
            println!("  {k:<22} {}", super::print::compact(v, 100));
        }
    }
}

//! How a command reaches the daemon: through its control API when it runs (the local listener
//! named by `telemetry.listen`, with the token for changes), or, when it does not, through the
//! very same routes served in this process over its store ([`Control::offline`]: nothing is
//! sent from there). Either way a command gets the same JSON, and one printer renders it, so
//! the output does not depend on whether the daemon runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use serde_json::Value;

use crate::config::Config;
use crate::control::{Control, OfflineError};
use crate::secret::Secret;

/// Where the answers come from.
pub enum Api {
    /// The running daemon's API.
    Live {
        base: String,
        client: reqwest::Client,
        /// For changes; none when the token file cannot be read (reads still work).
        token: Option<Secret>,
        state_dir: PathBuf,
    },
    /// The stopped daemon's store, served here.
    Stopped(Arc<Control>),
}

/// An answer the API refused: its status, the field at fault and why.
#[derive(Debug)]
pub struct CallFailed {
    pub status: u16,
    pub message: String,
}

impl std::fmt::Display for CallFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// How long a call to the running daemon may take (an endpoint's test waits for its receiver).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for the daemon's listener to answer before taking it as not running.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

impl Api {
    /// The running daemon's API if it answers at `config`'s listener, else the store in
    /// `state_dir`. `config` is `None` when the file did not load (then only the store, with
    /// no endpoint configured).
    pub async fn connect(config: Option<&Config>, state_dir: &Path) -> Result<Api, String> {
        let listener = config
            .map(|c| c.telemetry.listen.as_str())
            .filter(|l| !l.is_empty());
        if let (Some(config), Some(listen)) = (config, listener) {
            if let Some(api) = Api::live(config, listen, state_dir).await? {
                return Ok(api);
            }
        }
        if !state_dir.join("outbox.sled").exists() {
            return Err(format!(
                "there is no outbox in {} (wrong state directory? --state-dir DIR)",
                state_dir.display()
            ));
        }
        let fallback = Config::default();
        match Control::offline(config.unwrap_or(&fallback), state_dir) {
            Ok(control) => Ok(Api::Stopped(Arc::new(control))),
            Err(OfflineError::InUse) => Err(match listener {
                Some(listen) => format!(
                    "the outbox in {} is in use by a running edgehook, but its API does not answer at {listen} (telemetry.listen)",
                    state_dir.display()
                ),
                None if config.is_none() => format!(
                    "the outbox in {} is in use by a running edgehook, and without its configuration (--config) its API's address is unknown",
                    state_dir.display()
                ),
                None => format!(
                    "the outbox in {} is in use by a running edgehook, and its API is off (telemetry.listen is empty): stop it first (systemctl stop edgehook)",
                    state_dir.display()
                ),
            }),
            Err(OfflineError::Failed(e)) => Err(format!(
                "cannot open the outbox in {}: {e}",
                state_dir.display()
            )),
        }
    }

    /// The daemon's API at `listen`, if it answers there as the gateway `config` names.
    async fn live(config: &Config, listen: &str, state_dir: &Path) -> Result<Option<Api>, String> {
        let token = crate::control::auth::read_token(state_dir).ok().flatten();
        let (base, client) = http_client(config, listen)?;
        let client = client
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        let mut probe = client
            .get(format!("{base}/v1/gateway"))
            .timeout(PROBE_TIMEOUT);
        if let Some(t) = &token {
            probe = probe.bearer_auth(t.expose());
        }
        let answer = match probe.send().await {
            Ok(a) => a,
            // Nothing listens (or it does not answer): the daemon is not running.
            Err(e) if e.is_connect() || e.is_timeout() => return Ok(None),
            Err(e) => return Err(format!("the daemon's API at {base} failed: {e}")),
        };
        let status = answer.status().as_u16();
        let body: Value = answer
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        if status != 200 {
            return Err(format!(
                "the daemon's API at {base} refused: {}",
                body["error"].as_str().unwrap_or("no reason given")
            ));
        }
        if body["id"].as_str() != Some(config.gateway_id.as_str()) {
            return Err(format!(
                "the API at {base} is gateway `{}`'s, not `{}`'s (is another edgehook listening there?)",
                body["id"].as_str().unwrap_or("?"),
                config.gateway_id
            ));
        }
        Ok(Some(Api::Live {
            base,
            client,
            token,
            state_dir: state_dir.to_path_buf(),
        }))
    }

    /// What a command's answers come from, for the operator (printed on stderr).
    pub fn source(&self) -> String {
        match self {
            Api::Live { base, .. } => format!("the running daemon ({base})"),
            Api::Stopped(c) => format!(
                "the store in {} (the daemon is not running)",
                c.state_dir.display()
            ),
        }
    }

    /// Whether the answers come from the running daemon.
    pub fn is_live(&self) -> bool {
        matches!(self, Api::Live { .. })
    }

    /// `GET path` (with its query).
    pub async fn get(&self, path: &str) -> Result<Value, CallFailed> {
        self.call(Method::GET, path, None).await
    }

    /// `method path` with a JSON `body`: the answer's JSON (`null` for none), or why it was
    /// refused.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CallFailed> {
        let (status, bytes) = match self {
            Api::Live {
                base,
                client,
                token,
                state_dir,
            } => {
                let changes = method != Method::GET;
                let mut request = client.request(method, format!("{base}{path}"));
                if let Some(body) = &body {
                    request = request
                        .header("content-type", "application/json")
                        .body(body.to_string());
                }
                match token {
                    Some(t) => request = request.bearer_auth(t.expose()),
                    None if changes => {
                        return Err(CallFailed {
                            status: 401,
                            message: format!(
                                "this changes something and needs the API token, which cannot be read from {} (run as root or as the daemon's user)",
                                state_dir.join(crate::control::auth::TOKEN_FILE).display()
                            ),
                        })
                    }
                    None => {}
                }
                let answer = request.send().await.map_err(|e| CallFailed {
                    status: 0,
                    message: format!("the daemon's API at {base} failed: {e}"),
                })?;
                let status = answer.status().as_u16();
                let bytes = answer.bytes().await.map_err(|e| CallFailed {
                    status: 0,
                    message: format!("the daemon's API at {base} failed: {e}"),
                })?;
                (status, bytes.to_vec())
            }
            Api::Stopped(control) => {
                let (path, query) = path.split_once('?').unwrap_or((path, ""));
                let body = body.map(|b| b.to_string()).unwrap_or_default();
                let response = crate::control::routes::route(
                    control,
                    &method,
                    path,
                    query,
                    body.into(),
                    tokio_util::sync::CancellationToken::new(),
                )
                .await;
                let status = response.status().as_u16();
                let bytes = match response.into_body() {
                    crate::control::server::Body::Full(b) => b.map(|b| b.to_vec()),
                    crate::control::server::Body::Stream(_) => None,
                };
                (status, bytes.unwrap_or_default())
            }
        };
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            let why = value["error"].as_str().unwrap_or("refused");
            let message = match value["field"].as_str() {
                Some(field) => format!("{field}: {why}"),
                None => why.to_string(),
            };
            Err(CallFailed { status, message })
        }
    }
}

/// The daemon's base URL at `listen` and a client for it: HTTPS trusting exactly the
/// configured certificate when the listener serves TLS (the command runs on the same machine,
/// whatever names the certificate holds), HTTP on loopback otherwise.
fn http_client(config: &Config, listen: &str) -> Result<(String, reqwest::ClientBuilder), String> {
    let mut addr: std::net::SocketAddr = listen
        .parse()
        .map_err(|e| format!("telemetry.listen `{listen}`: {e}"))?;
    // A listener on every address is reached on loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let (scheme, tls) = match &config.telemetry.tls_cert {
        Some(cert) => ("https", crate::tls::pinned_client(cert)),
        None => ("http", crate::tls::client_config(None)),
    };
    let tls = tls.map_err(|e| format!("{e:#}"))?;
    let builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    Ok((format!("{scheme}://{addr}"), builder))
}

/// `s` as one segment of a path (an endpoint's name, a device's id).
pub fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `pairs` as a query string (`?a=b&c=d`), the values encoded; empty values left out.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", segment(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

//! Configuration: built-in defaults → TOML file → `EDGEHOOK_*` environment overrides.
//!
//! Every key is documented in `edgehook.example.toml` at the repository root. A bad
//! configuration fails at start with the file (or environment variable), the key and what is
//! wrong; nothing falls back silently to a default. Secrets live in [`Secret`], whose `Debug`
//! and `Display` never show the value, and errors about secret keys never echo what was found.
//!
//! Environment overrides use `__` between path segments:
//! `EDGEHOOK_WEBHOOK__SECRET=...` sets `webhook.secret`, `EDGEHOOK_MQTT__PORT=8883` sets
//! `mqtt.port`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::deliver::config::WebhookConfig;
use crate::device::config::{DeviceClassConfig, DevicesConfig, WorkspaceConfig};
use crate::outbox::config::{OnFull, OutboxConfig, DEFAULT_ENDPOINT};
use crate::secret::redact_url;
use crate::secret::Secret;
use crate::source::config::{MqttConfig, SerialPortConfig, TlsConfig};

mod layers;
use layers::Layers;

/// Environment variables with the `EDGEHOOK_` prefix that are not configuration keys.
const NON_CONFIG_ENV: &[&str] = &["LOG", "CONFIG", "STATE_DIR", "ENDPOINT_SECRET"];

/// A configuration error, always naming where the bad value came from and which key it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{source_name}: {}{message}", key_label(.key))]
    Invalid {
        /// The file path or environment variable that supplied the value.
        source_name: String,
        key: String,
        message: String,
    },
    #[error("{0}")]
    Other(String),
}

/// "key `a.b`: ", or nothing for errors that are about no key in particular (TOML syntax).
fn key_label(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("key `{key}`: ")
    }
}

/// The whole daemon configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This gateway's id, carried in every event envelope as `gateway`.
    pub gateway_id: String,
    /// Where the sled store lives. `--state-dir` on the command line wins over this.
    pub state_dir: PathBuf,
    /// How long a stop (SIGTERM) waits for deliveries in flight before it lets them go (their
    /// events stay in the outbox and are sent after the next start). Keep it below the unit's
    /// `TimeoutStopSec` (30 s), which leaves room for the final flush.
    #[serde(with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub stop_timeout: Duration,
    pub mqtt: MqttConfig,
    /// Serial ports with sensors or displays on them (USB-serial adapters, the UART).
    #[serde(default)]
    pub serial_ports: Vec<SerialPortConfig>,
    /// Modbus devices: register maps and the buses (RTU lines, TCP gateways) they are polled
    /// on.
    #[serde(default, skip_serializing_if = "crate::config::is_default")]
    pub modbus: crate::source::modbus::config::ModbusConfig,
    /// Health and reporting rules per kind of device; the first class whose `match` fits a
    /// device id applies. Devices no class matches get [`DeviceClassConfig::default`].
    #[serde(default)]
    pub device_classes: Vec<DeviceClassConfig>,
    #[serde(default)]
    pub workspaces: Vec<WorkspaceConfig>,
    /// Sensors reported as one (`[[groups]]`).
    #[serde(default)]
    pub groups: Vec<crate::device::config::GroupConfig>,
    /// Bounds on what the device stage remembers, so that junk cannot take the memory.
    #[serde(default)]
    pub devices: DevicesConfig,
    /// The receiver, for a gateway with one (its endpoint name is `default`). Leave its `url`
    /// unset when `endpoints` lists them all.
    pub webhook: WebhookConfig,
    /// Further receivers (`[[endpoints]]`, each with a `name`): every endpoint has its own queue
    /// in the outbox, its own retries and dead letters, so a dead one never delays the others.
    #[serde(default)]
    pub endpoints: Vec<WebhookConfig>,
    pub outbox: OutboxConfig,
    pub telemetry: TelemetryConfig,
    /// Commands from upstream (actions, bookings): the push listener and pull mode.
    #[serde(default)]
    pub upstream: crate::upstream::config::UpstreamConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `GET /healthz`, `GET /metrics`, the control API (`/v1`) and the console (`/`). A
    /// loopback address, or any other with `tls_cert` and `tls_key` (then every call but the
    /// console's page needs the token); empty disables.
    pub listen: String,
    /// The listener's certificate chain (PEM, the server's first): it serves HTTPS. Read
    /// again on SIGHUP, so a renewed certificate needs no restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

/// The JSON Schema of the configuration file (shipped as `edgehook.schema.json`, for TOML
/// editors such as Taplo / Even Better TOML). Made from the code by the tests (schemars is
/// theirs alone: nothing of it is in the daemon), so it cannot drift: a test holds the shipped
/// file to it. The file is read over the defaults (and the environment over the file), so no
/// key is required in it.
#[cfg(test)]
pub fn schema() -> serde_json::Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(Config)).expect("a schema is JSON");
    fn optional(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.remove("required");
                map.values_mut().for_each(optional);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(optional),
            _ => {}
        }
    }
    optional(&mut schema);
    if let Some(map) = schema.as_object_mut() {
        map.insert("title".into(), "edgehook configuration".into());
        map.insert(
            "description".into(),
            "edgehook's configuration file (TOML), read over the built-in defaults; each key may also be given as EDGEHOOK_<KEY> (levels joined by __). See edgehook.example.toml.".into(),
        );
    }
    schema
}

/// The variables of a systemd `EnvironmentFile=`: `KEY=VALUE` lines, blank lines and `#` or
/// `;` comments skipped, a leading `export ` and quotes around the value taken off.
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect())
}

pub use crate::deliver::config::DEFAULT_STOP_TIMEOUT;

impl Default for Config {
    fn default() -> Self {
        Config {
            gateway_id: String::new(),
            state_dir: PathBuf::from("/var/lib/edgehook"),
            stop_timeout: DEFAULT_STOP_TIMEOUT,
            mqtt: MqttConfig {
                host: "127.0.0.1".into(),
                port: 1883,
                client_id: String::new(),
                username: String::new(),
                password: Secret::default(),
                keep_alive: Duration::from_secs(30),
                persistent_session: true,
                max_payload_bytes: 64 * 1024,
                max_packet_bytes: 4 * 1024 * 1024,
                reconnect_min: Duration::from_millis(500),
                reconnect_max: Duration::from_secs(30),
                tls: TlsConfig::default(),
                subscriptions: Vec::new(),
                presets: Vec::new(),
                radio_metadata: false,
            },
            serial_ports: Vec::new(),
            modbus: Default::default(),
            device_classes: Vec::new(),
            workspaces: Vec::new(),
            groups: Vec::new(),
            devices: DevicesConfig::default(),
            webhook: WebhookConfig {
                name: DEFAULT_ENDPOINT.into(),
                ..WebhookConfig::default()
            },
            endpoints: Vec::new(),
            outbox: OutboxConfig {
                batch_max: 512,
                commit_delay: Duration::from_millis(5),
                checkpoint_interval: Duration::from_secs(60),
                cache_bytes: 4 * 1024 * 1024,
                max_size: 256 * 1024 * 1024,
                on_full: OnFull::Backpressure,
                max_dead_size: 16 * 1024 * 1024,
                delivery_log: 10_000,
            },
            telemetry: TelemetryConfig {
                listen: "127.0.0.1:9187".into(),
                tls_cert: None,
                tls_key: None,
            },
            upstream: Default::default(),
        }
    }
}

impl Config {
    /// Load defaults, then `file`, then the process environment.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = Self::read_file(file)?;
        Self::from_layers(&text, Some(file))
    }

    /// The configuration as the commands (`edgehook outbox`, `endpoints`, `devices`, `token`,
    /// ...) need it: checked as [`Config::load`] checks it, but for the signing secrets, which
    /// they never use. On a gateway the secrets are given to the daemon alone (the unit's
    /// `EnvironmentFile=/etc/edgehook/edgehook.env`), not to whoever runs a command.
    pub fn load_for_commands(file: &Path) -> Result<Config, ConfigError> {
        let text = Self::read_file(file)?;
        Self::from_layers_checked(&text, Some(file), false, &[])
    }

    /// As [`Config::load`], with the variables of a systemd `EnvironmentFile=` (`env_file`)
    /// under the process environment: what the daemon will run with under its unit, secrets
    /// included (`check-config`).
    pub fn load_with_env_file(file: &Path, env_file: &Path) -> Result<Config, ConfigError> {
        let text = Self::read_file(file)?;
        let vars = read_env_file(env_file).map_err(ConfigError::Other)?;
        Self::from_layers_checked(&text, Some(file), true, &vars)
    }

    fn read_file(file: &Path) -> Result<String, ConfigError> {
        if !file.exists() {
            return Err(ConfigError::Other(format!(
                "{}: no such file",
                file.display()
            )));
        }
        std::fs::read_to_string(file)
            .map_err(|e| ConfigError::Other(format!("{}: {e}", file.display())))
    }

    /// Defaults, then the TOML text given, then the environment (tests and the demo).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Self::from_layers(text, None)
    }

    fn from_layers(text: &str, file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::from_layers_checked(text, file, true, &[])
    }

    fn from_layers_checked(
        text: &str,
        file: Option<&Path>,
        secrets_needed: bool,
        env_file: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut layers = Layers::new(&Config::default()).map_err(ConfigError::Other)?;
        layers
            .merge_toml(text, file)
            .map_err(|message| ConfigError::Invalid {
                source_name: layers.source_of(&[]),
                key: String::new(),
                message,
            })?;
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        layers.merge_env(
            "EDGEHOOK_",
            NON_CONFIG_ENV,
            env_file.iter().cloned().chain(vars),
        );
        let config: Config = layers.read().map_err(|e| {
            let key = key_path(&e.path);
            let message = if is_secret_key(&key) {
                hide_value(&e.message, layers.value_at(&e.path))
            } else {
                e.message
            };
            ConfigError::Invalid {
                source_name: layers.source_of(&e.path),
                key,
                message,
            }
        })?;
        let checked = if secrets_needed {
            config.validate()
        } else {
            config.with_placeholder_secrets().validate()
        };
        checked.map_err(|(key, message)| ConfigError::Invalid {
            source_name: layers.source_of(&key_segments(&key)),
            key,
            message,
        })?;
        Ok(config)
    }

    /// A copy whose missing signing secrets are a placeholder valid for every scheme, to check
    /// the rest of a configuration given without its secrets. Only ever validated, never used.
    fn with_placeholder_secrets(&self) -> Config {
        const PLACEHOLDER: &str = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let mut probe = self.clone();
        for w in std::iter::once(&mut probe.webhook).chain(probe.endpoints.iter_mut()) {
            if w.signing_secrets().iter().all(|s| s.is_empty()) {
                w.secret = Secret::new(PLACEHOLDER);
                w.secrets.clear();
            }
        }
        if probe.upstream.secrets.iter().all(|s| s.is_empty()) {
            probe.upstream.secrets = vec![Secret::new(PLACEHOLDER)];
        }
        probe
    }

    /// Checks that deserialising cannot express. Returns the offending key and what is wrong.
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: &str, msg: String| Err((key.to_string(), msg));
        if self.gateway_id.trim().is_empty() {
            return bad(
                "gateway_id",
                "must be set (this gateway's id in every event)".into(),
            );
        }
        if self.stop_timeout < Duration::from_secs(1)
            || self.stop_timeout > Duration::from_secs(600)
        {
            return bad(
                "stop_timeout",
                "must be from 1s to 10m (and below the unit's TimeoutStopSec)".into(),
            );
        }
        crate::source::config::validate(&self.mqtt, &self.serial_ports, &self.modbus)?;
        crate::device::config::validate(&self.devices, &self.device_classes, &self.workspaces)?;
        crate::device::config::validate_groups(&self.groups, &self.workspaces)?;
        let webhook_used = !self.webhook.url.is_empty() || self.endpoints.is_empty();
        let webhook = webhook_used.then_some(&self.webhook);
        crate::deliver::config::validate(webhook, &self.endpoints)?;
        crate::outbox::config::validate(&self.outbox)?;
        crate::upstream::config::validate(&self.upstream)?;
        let t = &self.telemetry;
        crate::tls::check_listener(
            "telemetry.",
            (!t.listen.is_empty()).then_some(t.listen.as_str()),
            t.tls_cert.as_deref(),
            t.tls_key.as_deref(),
            "127.0.0.1:9187",
        )?;
        Ok(())
    }

    /// Top-level keys that differ in `new` and take effect only after a restart. Device
    /// classes, workspaces and endpoints are not among them: a reload applies those live.
    pub fn needs_restart(&self, new: &Config) -> Vec<&'static str> {
        fn differ<T: Serialize>(a: &T, b: &T) -> bool {
            serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
        }
        let mut keys = Vec::new();
        if self.gateway_id != new.gateway_id {
            keys.push("gateway_id");
        }
        if self.state_dir != new.state_dir {
            keys.push("state_dir");
        }
        if self.stop_timeout != new.stop_timeout {
            keys.push("stop_timeout");
        }
        if differ(&self.mqtt, &new.mqtt) {
            keys.push("mqtt");
        }
        if differ(&self.serial_ports, &new.serial_ports) {
            keys.push("serial_ports");
        }
        if self.modbus != new.modbus {
            keys.push("modbus");
        }
        if differ(&self.outbox, &new.outbox) {
            keys.push("outbox");
        }
        if self.devices != new.devices {
            keys.push("devices");
        }
        if differ(&self.telemetry, &new.telemetry) {
            keys.push("telemetry");
        }
        if differ(&self.upstream, &new.upstream) {
            keys.push("upstream");
        }
        keys
    }

    /// Every configured endpoint: `[webhook]` (when its `url` is set) and then `[[endpoints]]`.
    pub fn all_endpoints(&self) -> Vec<&WebhookConfig> {
        let webhook = (!self.webhook.url.is_empty()).then_some(&self.webhook);
        webhook.into_iter().chain(&self.endpoints).collect()
    }

    /// The endpoints as they may be logged, `name=url`: no user info, no query string (either
    /// may carry a credential).
    pub fn endpoints_for_logs(&self) -> String {
        self.all_endpoints()
            .iter()
            .map(|e| format!("{}={}", e.name, redact_url(&e.url)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The MQTT client id actually used.
    pub fn mqtt_client_id(&self) -> String {
        if self.mqtt.client_id.is_empty() {
            format!("edgehook-{}", self.gateway_id)
        } else {
            self.mqtt.client_id.clone()
        }
    }
}

/// A key path as the validation messages and the docs write it: `workspaces[0].hold`.
fn key_path(path: &[String]) -> String {
    let mut key = String::new();
    for segment in path {
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            key.push_str(&format!("[{segment}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(segment);
        }
    }
    key
}

/// `workspaces[0].hold` as path segments: `workspaces`, `0`, `hold`.
fn key_segments(key: &str) -> Vec<String> {
    key.split(['.', '['])
        .map(|s| s.trim_end_matches(']').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Whether the value at `key` is (or is inside) a secret: a `secret`, an entry of `secrets`,
/// a `password`, or a header value (API keys live there). Its value is never echoed.
pub(crate) fn is_secret_key(key: &str) -> bool {
    key.split('.').any(|part| {
        // `secrets[0]`: the list's name
        let part = part.split('[').next().unwrap_or(part).to_ascii_lowercase();
        matches!(part.as_str(), "secret" | "secrets" | "password" | "headers")
            || part.ends_with("secret")
            || part.ends_with("password")
    })
}

/// serde's message about a secret key's value, without the value (serde quotes what it found):
/// what kind of value it is and what was expected.
fn hide_value(message: &str, value: Option<&toml::Value>) -> String {
    let found = match value {
        Some(toml::Value::String(_)) => "a string",
        Some(toml::Value::Integer(_)) => "an integer",
        Some(toml::Value::Float(_)) => "a float",
        Some(toml::Value::Boolean(_)) => "a boolean",
        Some(toml::Value::Datetime(_)) => "a date",
        Some(toml::Value::Array(_)) => "a list",
        Some(toml::Value::Table(_)) => "a table",
        None => "a value",
    };
    match message.rsplit_once(", expected ") {
        Some((_, expected)) if message.starts_with("invalid type") => {
            format!("invalid type: found {found}, expected {expected}")
        }
        Some((_, expected)) => format!("invalid value ({found}, not shown), expected {expected}"),
        None => format!("invalid value ({found}, not shown: the key holds a secret)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped schema (edgehook.schema.json) is the code's. When the configuration
    /// changes, `EDGEHOOK_WRITE_SCHEMA=1 cargo test --lib the_shipped_schema` writes it anew.
    #[test]
    fn the_shipped_schema_is_the_codes() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/edgehook.schema.json");
        let made = serde_json::to_string_pretty(&schema()).unwrap() + "\n";
        if std::env::var_os("EDGEHOOK_WRITE_SCHEMA").is_some() {
            std::fs::write(path, &made).unwrap();
        }
        let shipped = std::fs::read_to_string(path).unwrap();
        assert!(
            shipped == made,
            "edgehook.schema.json is stale: EDGEHOOK_WRITE_SCHEMA=1 cargo test --lib the_shipped_schema"
        );
    }

    /// A stop waits `stop_timeout` for deliveries in flight, then flushes: the unit's
    /// `TimeoutStopSec` leaves it room (else systemd kills the daemon mid-flush).
    #[test]
    fn the_unit_gives_a_stop_more_time_than_stop_timeout() {
        let unit = include_str!("../../systemd/edgehook.service");
        let stop = unit
            .lines()
            .find_map(|l| l.strip_prefix("TimeoutStopSec="))
            .expect("the unit sets TimeoutStopSec");
        let stop = humantime::parse_duration(stop.trim()).unwrap();
        assert!(
            DEFAULT_STOP_TIMEOUT + Duration::from_secs(5) <= stop,
            "stop_timeout {DEFAULT_STOP_TIMEOUT:?} against TimeoutStopSec {stop:?}"
        );
        // The example configuration shows the default.
        let shown = format!(
            "# stop_timeout = \"{}\"",
            humantime::format_duration(DEFAULT_STOP_TIMEOUT)
        );
        assert!(
            include_str!("../../edgehook.example.toml").contains(&shown),
            "{shown}"
        );
    }

    const MINIMAL: &str = r#"
        gateway_id = "gw-1"
        [mqtt]
        subscriptions = [{ topic = "sensors/{device}/reading", kind = "reading" }]
        [webhook]
        url = "http://127.0.0.1:8080/hook"
        secret = "s3cret-value"
    "#;

    fn err_of(text: &str) -> String {
        Config::from_toml_str(text).unwrap_err().to_string()
    }

    #[test]
    fn upstream_settings_default_sensibly_and_bad_ones_are_named() {
        const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let push = format!(
            "{MINIMAL}\n[upstream]\nsecrets = [\"{WHSEC}\"]\n[upstream.push]\nlisten = \"127.0.0.1:9480\"\n"
        );
        let c = Config::from_toml_str(&push).unwrap();
        assert_eq!(c.upstream.tolerance, Duration::from_secs(300));
        let pull = format!(
            "{MINIMAL}\n[upstream]\nsecrets = [\"{WHSEC}\"]\n[upstream.pull]\nurl = \"https://core.example.com/edge/poll\"\n"
        );
        assert_eq!(
            Config::from_toml_str(&pull)
                .unwrap()
                .upstream
                .pull
                .unwrap()
                .wait,
            Duration::from_secs(30)
        );
        // (what is changed, the key named)
        let rows = [
            (push.replace(WHSEC, "s3cret"), "upstream.secrets[0]"),
            (
                push.replace(&format!("secrets = [\"{WHSEC}\"]"), ""),
                "upstream.secrets",
            ),
            (
                push.replace("127.0.0.1:9480", "0.0.0.0:9480"),
                "upstream.push.listen",
            ),
            (
                push.replace("127.0.0.1:9480", "gateway"),
                "upstream.push.listen",
            ),
            (
                format!("{push}tls_cert = \"/x.pem\"\n"),
                "upstream.push.tls_key",
            ),
            (
                pull.replace("https://core", "http://core"),
                "upstream.pull.url",
            ),
            (format!("{pull}wait = \"10m\"\n"), "upstream.pull.wait"),
            (
                push.replace("[upstream.push]", "tolerance = \"2h\"\n[upstream.push]"),
                "upstream.tolerance",
            ),
        ];
        for (text, key) in rows {
            let e = err_of(&text);
            assert!(e.contains(key), "{key}: {e}");
            assert!(!e.contains("s3cret\""), "{e}");
        }
    }

    /// Issue 16 #11: `ExecStartPre=check-config` puts errors in the journal, so a value that
    /// may be a secret is never printed back, whatever its type.
    #[test]
    fn a_type_error_in_a_header_or_a_secret_list_never_prints_the_value() {
        for (section, key) in [
            (
                "headers = { \"X-Api-Key\" = 12345678 }",
                "webhook.headers.X-Api-Key",
            ),
            ("secrets = [12345678]", "webhook.secrets"),
            ("secret = 12345678", "webhook.secret"),
            (
                "headers = { \"X-Api-Key\" = true }",
                "webhook.headers.X-Api-Key",
            ),
        ] {
            let text = MINIMAL.replace("secret = \"s3cret-value\"", section);
            let e = err_of(&text);
            assert!(e.contains(key), "{e}");
            assert!(!e.contains("12345678") && !e.contains("true"), "{e}");
        }
        let e = err_of(&format!(
            "{MINIMAL}\n[[endpoints]]\nname = \"crm\"\nurl = \"http://127.0.0.1/x\"\nsecret = \"s\"\nheaders = {{ Authorization = 98765 }}\n"
        ));
        assert!(e.contains("headers") && !e.contains("98765"), "{e}");
        assert!(!is_secret_key("mqtt.port") && !is_secret_key("webhook.timeout"));
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::from_toml_str(MINIMAL).unwrap();
        assert_eq!(c.mqtt.port, 1883);
        assert_eq!(c.webhook.timeout, Duration::from_secs(30));
        assert_eq!(c.webhook.hmac_options().header, "X-Webhook-Signature");
        assert_eq!(c.mqtt_client_id(), "edgehook-gw-1");
        assert!(c.mqtt.persistent_session);
    }

    #[test]
    fn durations_are_human() {
        let c = Config::from_toml_str(&format!("{MINIMAL}\n[outbox]\nbatch_max = 7\n")).unwrap();
        assert_eq!(c.outbox.batch_max, 7);
        let text = MINIMAL.replace(
            "secret = \"s3cret-value\"",
            "secret = \"s3cret-value\"\ntimeout = \"1m 30s\"",
        );
        assert_eq!(
            Config::from_toml_str(&text).unwrap().webhook.timeout,
            Duration::from_secs(90)
        );
    }

    #[test]
    fn endpoints_have_names_and_their_own_keys_in_errors() {
        let ops = |extra: &str| {
            format!(
                "{MINIMAL}\n[[endpoints]]\nname = \"ops\"\nurl = \"https://ops.example.com/h\"\nsecret = \"k\"\n{extra}"
            )
        };
        let c = Config::from_toml_str(&ops(
            "events = [\"device.*\"]\n[endpoints.retry]\nmax = \"1m\"",
        ))
        .unwrap();
        let names: Vec<&str> = c.all_endpoints().iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["default", "ops"]);
        let ops_endpoint = &c.endpoints[0];
        assert_eq!(ops_endpoint.retry.max, Duration::from_secs(60));
        assert_eq!(
            ops_endpoint.retry.initial,
            Duration::from_secs(1),
            "defaults fill the rest"
        );
        assert_eq!(ops_endpoint.timeout, Duration::from_secs(30));
        assert!(ops_endpoint.active);

        let e = err_of(&ops("timeout = \"0s\""));
        assert!(e.contains("endpoints[0].timeout"), "{e}");
        let e = err_of(&ops("").replace("name = \"ops\"", "name = \"default\""));
        assert!(
            e.contains("endpoints[0].name") && e.contains("duplicate"),
            "{e}"
        );
        let e = err_of(&ops("").replace("name = \"ops\"\n", ""));
        assert!(
            e.contains("endpoints[0].name") && e.contains("must be set"),
            "{e}"
        );
        let e = err_of(&ops("").replace("name = \"ops\"", "name = \"a b\""));
        assert!(e.contains("endpoints[0].name"), "{e}");
        // [[endpoints]] alone, without [webhook]'s url.
        let only = ops("").replace("url = \"http://127.0.0.1:8080/hook\"\n", "");
        let c = Config::from_toml_str(&only).unwrap();
        assert_eq!(c.all_endpoints().len(), 1);
    }

    #[test]
    fn outbox_sizes_are_human() {
        let c = Config::from_toml_str(&format!(
            "{MINIMAL}\n[outbox]\nmax_size = \"64MB\"\non_full = \"drop_oldest_readings\"\n"
        ))
        .unwrap();
        assert_eq!(c.outbox.max_size, 64_000_000);
        assert_eq!(c.outbox.on_full, OnFull::DropOldestReadings);
        assert_eq!(crate::size::parse("512KiB"), Some(512 * 1024));
        assert_eq!(crate::size::parse("1 GiB"), Some(1 << 30));
        assert_eq!(crate::size::parse("12"), Some(12));
        assert_eq!(crate::size::parse("lots"), None);
        let e = err_of(&format!("{MINIMAL}\n[outbox]\nmax_size = \"big\"\n"));
        assert!(e.contains("outbox.max_size"), "{e}");
        let e = err_of(&format!("{MINIMAL}\n[outbox]\nmax_size = 1000\n"));
        assert!(e.contains("outbox.max_size") && e.contains("64KiB"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text = MINIMAL.replace("[mqtt]", "[mqtt]\nport = \"eighteen\"");
        let e = err_of(&text);
        assert!(e.contains("mqtt.port"), "{e}");
    }

    #[test]
    fn unknown_key_is_an_error_not_ignored() {
        let text = MINIMAL.replace("[mqtt]", "[mqtt]\nhots = \"typo\"");
        let e = err_of(&text);
        assert!(e.contains("hots"), "{e}");
    }

    #[test]
    fn bad_duration_names_the_key() {
        let text = MINIMAL.replace("[mqtt]", "[mqtt]\nkeep_alive = \"soon\"");
        let e = err_of(&text);
        assert!(e.contains("mqtt.keep_alive"), "{e}");
    }

    /// The mapping keys of a subscription and the presets: a bad one names its key.
    #[test]
    fn subscription_mappings_and_presets_name_the_key() {
        let sub = |extra: &str| {
            MINIMAL.replace(
                r#"kind = "reading" }"#,
                &format!(r#"kind = "reading", {extra} }}"#),
            )
        };
        let ok = Config::from_toml_str(&sub(
            r#"fields = "/object", flatten = true, exclude = ["sensors/bridge/#"]"#,
        ));
        assert!(ok.is_ok(), "{:?}", ok.err());
        let e = err_of(&sub(r#"fields = "object""#));
        assert!(
            e.contains("mqtt.subscriptions[0].fields") && e.contains("JSON pointer"),
            "{e}"
        );
        let e = err_of(&sub(r#"exclude = ["a/#/b"]"#));
        assert!(e.contains("mqtt.subscriptions[0].exclude[0]"), "{e}");
        let status = MINIMAL.replace(
            r#"kind = "reading" }"#,
            r#"kind = "status", flatten = true }"#,
        );
        assert!(err_of(&status).contains("readings only"));
        let presets_only = MINIMAL.replace(
            r#"subscriptions = [{ topic = "sensors/{device}/reading", kind = "reading" }]"#,
            r#"presets = ["zigbee2mqtt", "tasmota"]"#,
        );
        let c = Config::from_toml_str(&presets_only).unwrap();
        assert_eq!(c.mqtt.all_subscriptions().len(), 4);
        let e = err_of(&presets_only.replace("tasmota", "homekit"));
        assert!(e.contains("mqtt.presets") && e.contains("homekit"), "{e}");
    }

    #[test]
    fn validation_names_the_key() {
        let e = err_of(&MINIMAL.replace("{device}", "all"));
        assert!(e.contains("mqtt.subscriptions[0].topic"), "{e}");
        let e = err_of(&MINIMAL.replace("http://127.0.0.1:8080/hook", "ftp://x"));
        assert!(e.contains("webhook.url"), "{e}");
        let e = err_of(&MINIMAL.replace("secret = \"s3cret-value\"", ""));
        assert!(e.contains("webhook.secret"), "{e}");
        let e = err_of(&format!(
            "{MINIMAL}\n[telemetry]\nlisten = \"0.0.0.0:9187\"\n"
        ));
        assert!(
            e.contains("telemetry.listen") && e.contains("loopback"),
            "{e}"
        );
        let e = err_of(&format!(
            "{MINIMAL}\n[telemetry]\nlisten = \"0.0.0.0:9187\"\ntls_cert = \"/etc/edgehook/gw.pem\"\n"
        ));
        assert!(e.contains("telemetry.tls_key"), "{e}");
        let e = err_of(&format!(
            "{MINIMAL}\n[telemetry]\nlisten = \"0.0.0.0:9187\"\ntls_cert = \"/nonexistent/gw.pem\"\ntls_key = \"/nonexistent/gw.key\"\n"
        ));
        assert!(
            e.contains("telemetry.tls_cert") && e.contains("/nonexistent/gw.pem"),
            "{e}"
        );
    }

    #[test]
    fn device_classes_and_workspaces_parse_with_defaults() {
        let text = format!(
            r#"{MINIMAL}
[[device_classes]]
name = "occupancy"
match = ["occ-*", "desk-?"]
heartbeat = "1m"
stale_after = "10m"
min_interval = "2s"
max_interval = "15m"
deadband = {{ temperature = 0.1 }}

[[workspaces]]
id = "room-1"
sensors = ["occ-1"]
display = "disp-1"
hold = "90s"
"#
        );
        let c = Config::from_toml_str(&text).unwrap();
        let class = &c.device_classes[0];
        assert_eq!(class.heartbeat, Some(Duration::from_secs(60)));
        assert_eq!(class.lost_after, 3.0);
        assert_eq!(class.debounce, Duration::from_secs(5));
        assert_eq!(class.deadband["temperature"], 0.1);
        let ws = &c.workspaces[0];
        assert_eq!(ws.hold, Duration::from_secs(90));
        assert_eq!(ws.booking_field, "booked");
        assert_eq!(ws.presence_field, "presence");

        let bad = text.replace("heartbeat = \"1m\"", "heartbeat = \"1m\"\nlost_after = 0.5");
        let e = err_of(&bad);
        assert!(e.contains("device_classes[0].lost_after"), "{e}");
        let bad = text.replace("0.1 }", "-1.0 }");
        let e = err_of(&bad);
        assert!(e.contains("device_classes[0].deadband.temperature"), "{e}");
        let bad = text.replace("max_interval = \"15m\"", "max_interval = \"1s\"");
        let e = err_of(&bad);
        assert!(e.contains("device_classes[0].max_interval"), "{e}");
        let bad = text.replace("hold = \"90s\"", "hold = \"a while\"");
        let e = err_of(&bad);
        assert!(e.contains("key `workspaces[0].hold`"), "{e}");
    }

    #[test]
    fn webhook_transport_signature_and_format_rules() {
        let with = |old: &str, new: &str| MINIMAL.replace(old, new);
        let url = "http://127.0.0.1:8080/hook";
        assert!(Config::from_toml_str(&with(url, "http://localhost/hook")).is_ok());
        assert!(Config::from_toml_str(&with(url, "http://[::1]:9/hook")).is_ok());
        let e = err_of(&with(url, "http://hooks.example.com/in"));
        assert!(e.contains("webhook.url") && e.contains("clear text"), "{e}");
        let insecure = with(url, "http://hooks.example.com/in").replace(
            "secret = \"s3cret-value\"",
            "secret = \"s3cret-value\"\nallow_insecure_http = true",
        );
        assert!(Config::from_toml_str(&insecure).is_ok());
        // Host names are ASCII: one with other letters is refused, saying how to write it.
        let e = err_of(&with(url, "https://bücher.example/hook"));
        assert!(e.contains("webhook.url") && e.contains("punycode"), "{e}");
        assert!(Config::from_toml_str(&with(url, "https://xn--bcher-kva.example/hook")).is_ok());

        let e = err_of(&with(
            "secret = \"s3cret-value\"",
            "secret = \"s3cret-value\"\nsignature = \"standard-webhooks\"",
        ));
        assert!(
            e.contains("webhook.secret") && e.contains("whsec_") && !e.contains("s3cret-value"),
            "{e}"
        );
        let rotation = with(
            "secret = \"s3cret-value\"",
            "signature = \"standard-webhooks\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\", \"whsec_bad\"]",
        );
        let e = err_of(&rotation);
        assert!(e.contains("webhook.secrets[1]"), "{e}");

        let e = err_of(&with(
            "secret = \"s3cret-value\"",
            "secret = \"s3cret-value\"\nformat = \"roomz\"",
        ));
        assert!(
            e.contains("webhook.events") && e.contains("workspace"),
            "{e}"
        );
        let roomz = with(
            "secret = \"s3cret-value\"",
            "secret = \"s3cret-value\"\nformat = \"roomz\"\nevents = [\"workspace.*\"]",
        );
        assert!(Config::from_toml_str(&roomz).is_ok());

        let e = err_of(&with(
            "secret = \"s3cret-value\"",
            "secret = \"s3cret-value\"\nheaders = { \"Content-Type\" = \"text/plain\" }",
        ));
        assert!(e.contains("webhook.headers.Content-Type"), "{e}");
        let e = err_of(&with(
            "secret = \"s3cret-value\"",
            "secret = \"s3cret-value\"\nheaders = { \"X-Api-Key\" = \"a\\nb\" }",
        ));
        assert!(
            e.contains("webhook.headers.X-Api-Key") && !e.contains("a\nb"),
            "{e}"
        );
    }

    /// The signature and wire-format settings: each bad value is refused with its key.
    #[test]
    fn signature_options_and_formats_name_the_key() {
        let with = |extra: &str| {
            MINIMAL.replace(
                "secret = \"s3cret-value\"",
                &format!("secret = \"s3cret-value\"\n{extra}"),
            )
        };
        let ok = [
            "format = \"roomz-presence\"\nevents = [\"workspace.*\"]",
            "format = \"gospace\"\nevents = [\"workspace.status.updated\"]",
            "format = \"generic\"",
            "signature = \"hmac-sha256-hex\"",
            "signature_algorithm = \"sha512\"\nsignature_encoding = \"base64\"\nsignature_prefix = \"sha512=\"",
            "signature_timestamp_header = \"X-Webhook-Timestamp\"",
            "compress_above = \"4KiB\"",
            "batch_max_events = 50\nbatch_max_bytes = \"256KiB\"",
        ];
        for extra in ok {
            assert!(
                Config::from_toml_str(&with(extra)).is_ok(),
                "{extra}: {}",
                err_of(&with(extra))
            );
        }
        let bad = [
            ("format = \"gospace\"", "webhook.events", "format gospace carries workspace events only"),
            ("format = \"roomz-presence\"", "webhook.events", "roomz-presence"),
            ("signature_algorithm = \"md5\"", "signature_algorithm", "md5"),
            ("signature_encoding = \"base32\"", "signature_encoding", "base32"),
            ("signature_header = \"bad header\"", "webhook.signature_header", "not a valid HTTP header"),
            ("signature_timestamp_header = \"X-Webhook-Signature\"", "webhook.signature_timestamp_header", "differ"),
            ("signature_prefix = \"a\\nb\"", "webhook.signature_prefix", "header"),
            ("compress_above = 0", "webhook.compress_above", "above 0"),
            ("batch_max_events = 0", "webhook.batch_max_events", "between 1 and 1000"),
            ("batch_max_events = 5000", "webhook.batch_max_events", "between 1 and 1000"),
            ("batch_max_bytes = 0", "webhook.batch_max_bytes", "above 0"),
            ("batch_linger = \"2m\"", "webhook.batch_linger", "at most 60s"),
            ("compress_above = \"lots\"", "compress_above", "size"),
            ("signature = \"standard-webhooks\"\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\nsignature_algorithm = \"sha512\"", "webhook.signature_algorithm", "hmac"),
        ];
        for (extra, key, why) in bad {
            let e = err_of(&with(extra));
            assert!(e.contains(key) && e.contains(why), "{extra}: {e}");
        }
    }

    /// A template is compiled and run on a sample of every event type the endpoint gets, when
    /// the configuration is checked: a type it fails on is named with the error.
    #[test]
    fn templates_are_checked_against_every_event_type() {
        let with = |extra: &str| {
            MINIMAL.replace(
                "secret = \"s3cret-value\"",
                &format!("secret = \"s3cret-value\"\n{extra}"),
            )
        };
        assert!(Config::from_toml_str(&with(
            r#"template = "{kind: .type, at: .timestamp, data}""#
        ))
        .is_ok());
        let e = err_of(&with(r#"template = "{kind: .type""#));
        assert!(
            e.contains("webhook.template") && e.contains("does not parse"),
            "{e}"
        );
        let e = err_of(&with(r#"template = "{at: now}""#));
        assert!(e.contains("webhook.template") && e.contains("`now`"), "{e}");
        // Fails only on workspace events (their data has no `fields`).
        let e = err_of(&with(r#"template = ".data.fields | keys""#));
        assert!(
            e.contains("webhook.template") && e.contains("sample `device.online`"),
            "{e}"
        );
        let device_only = r#"template = ".data.fields // {} | keys"
events = ["sensor.*"]"#;
        assert!(
            Config::from_toml_str(&with(device_only)).is_ok(),
            "{}",
            err_of(&with(device_only))
        );
        let e = err_of(&with(
            r#"template = ".data.fields | keys"
events = ["workspace.*"]"#,
        ));
        assert!(e.contains("sample `workspace.status.updated`"), "{e}");
    }

    #[test]
    fn reload_tells_which_sections_need_a_restart() {
        let old = Config::from_toml_str(MINIMAL).unwrap();
        let mut new = old.clone();
        new.device_classes.push(DeviceClassConfig::default());
        new.webhook.secret = Secret::new("rotated");
        assert!(
            old.needs_restart(&new).is_empty(),
            "device rules and endpoints reload live"
        );
        new.mqtt.port = 1884;
        assert_eq!(old.needs_restart(&new), ["mqtt"]);
    }

    #[test]
    fn secrets_never_appear_in_errors_or_debug() {
        let text = MINIMAL.replace("secret = \"s3cret-value\"", "secret = 918273645");
        let e = err_of(&text);
        assert!(e.contains("webhook.secret"), "{e}");
        assert!(!e.contains("918273645"), "{e}");
        let c = Config::from_toml_str(MINIMAL).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cret-value"), "{dbg}");
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let e = err_of("gateway_id = \"x\"\n[mqtt\nport = 1\n");
        assert!(e.contains("line 2") && !e.contains("key ``"), "{e}");
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("edgehook.toml");
        std::fs::write(&path, MINIMAL.replace("[mqtt]", "[mqtt]\nport = 70000")).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("edgehook.toml") && e.contains("mqtt.port"),
            "{e}"
        );
        // A key the file leaves out (its default is refused): still the file, never the code
        // that holds the defaults.
        let no_source =
            "subscriptions = [{ topic = \"sensors/{device}/reading\", kind = \"reading\" }]";
        std::fs::write(&path, MINIMAL.replace(no_source, "")).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&path.display().to_string())
                && e.contains("mqtt.subscriptions")
                && !e.contains(".rs"),
            "{e}"
        );
        let e = Config::load(&dir.path().join("missing.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.toml"), "{e}");
    }
}

/// Whether `value` is its type's default (a section left out is not written back).
pub fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

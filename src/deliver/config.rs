//! `[webhook]` and `[[endpoints]]`: each endpoint's configuration and its checks (run by
//! `check-config` and at start, as every stage's are), stated with delivery's own rules (which
//! headers it sets itself, which event types a format carries, how a secret decodes).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::format::PayloadFormat;
use crate::secret::Secret;
pub use crate::sign::SignatureScheme;
use crate::sign::{Algorithm, Encoding, HmacOptions};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// The endpoint's name, in metrics, logs, `edgehook outbox` and the outbox's queue names
    /// (letters, digits, `-`, `_`). `[webhook]` is named `default`.
    pub name: String,
    /// What the endpoint is for, for people (shown by the API and the console).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// False: nothing new is queued for this endpoint and nothing is sent to it; what is
    /// already queued stays until it is active again.
    pub active: bool,
    /// The receiver's URL. `https://` is verified with the bundled web PKI roots; `http://` is
    /// accepted only to a loopback address or with `allow_insecure_http`.
    pub url: String,
    /// The signing key. Required unless `secrets` is given.
    pub secret: Secret,
    /// Several signing keys, newest first, for rotation: every request carries a signature
    /// per key (see `crate::sign`). Replaces `secret` when given.
    pub secrets: Vec<Secret>,
    /// `hmac` (in `signature_header`; `hmac-sha256-hex` is its old name) or
    /// `standard-webhooks`.
    pub signature: SignatureScheme,
    /// `hmac`: `sha256` or `sha512`. Unset: the format's receiver's (see `deliver::format`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_algorithm: Option<Algorithm>,
    /// `hmac`: `hex` or `base64`. Unset: the format's receiver's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_encoding: Option<Encoding>,
    /// `hmac`: the header the signature goes in. Unset: the format's receiver's
    /// (`X-Webhook-Signature`, `Roomz-Signature` for `roomz-presence`, `x-gospace-signature`
    /// for `gospace`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_header: Option<String>,
    /// `hmac`: written before the signature, e.g. `sha256=`.
    pub signature_prefix: String,
    /// `hmac`: when set, the attempt's Unix time goes in this header and the signed message
    /// is `"<timestamp>.<body>"`.
    pub signature_timestamp_header: String,
    /// `edgehook`, `spaceos`, `roomz`, `roomz-presence`, `gospace`, `generic` or `cloudevents`.
    pub format: PayloadFormat,
    /// Compress bodies larger than this with gzip (`Content-Encoding: gzip`; the signature
    /// covers the uncompressed body). Unset: never.
    #[serde(
        with = "crate::size::option",
        skip_serializing_if = "Option::is_none",
        default
    )]
    #[cfg_attr(test, schemars(with = "crate::schema::OptionalSize"))]
    pub compress_above: Option<u64>,
    /// A jq filter over the stored envelope that makes the body instead of `format` (which
    /// still gives the Content-Type and the signature defaults). Empty: none. See
    /// `deliver::template`.
    pub template: String,
    /// Send up to this many events (of different devices) in one request, as a JSON array,
    /// for receivers that accept it. Unset: one event per request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_max_events: Option<usize>,
    /// At most this many bytes of events in one batch (at least one event always goes).
    #[serde(with = "crate::size")]
    #[cfg_attr(test, schemars(with = "crate::schema::Size"))]
    pub batch_max_bytes: u64,
    /// How long a batch may wait for more events before it goes (`"0s"`: it takes what is
    /// ready and goes at once).
    #[serde(with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub batch_linger: Duration,
    /// Event types this endpoint receives (`*` and `?` patterns, e.g. `device.*`). Events of
    /// other types are not queued for it.
    pub events: Vec<String>,
    /// Extra request headers (an API key, a tenant id). Values are treated as secrets.
    pub headers: BTreeMap<String, Secret>,
    /// Allow `http://` to a non-loopback host: events and signatures in clear text.
    pub allow_insecure_http: bool,
    /// Give up on an event after this many failed attempts (counted since the daemon started)
    /// and keep it as a dead letter. Unset: retry for ever.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Give up on an event this long after it was created, likewise. Unset: never.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, schemars(with = "crate::schema::OptionalDuration"))]
    pub max_age: Option<Duration>,
    pub idempotency_header: String,
    #[serde(with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub timeout: Duration,
    /// Requests in flight at once (each device's events still go one at a time, in order).
    pub max_concurrency: usize,
    /// Events held in memory for delivery; the rest wait in the outbox on disk.
    pub window: usize,
    /// Bytes of events held in memory for delivery, likewise (`"1MiB"` or a number of bytes; at
    /// least one event is always held, however large).
    #[serde(with = "crate::size")]
    #[cfg_attr(test, schemars(with = "crate::schema::Size"))]
    pub window_bytes: u64,
    pub retry: RetryConfig,
}

impl Default for WebhookConfig {
    /// An endpoint as `[[endpoints]]` starts: everything but `name`, `url` and the secret.
    fn default() -> WebhookConfig {
        WebhookConfig {
            name: String::new(),
            description: String::new(),
            active: true,
            url: String::new(),
            secret: Secret::default(),
            secrets: Vec::new(),
            signature: SignatureScheme::default(),
            signature_algorithm: None,
            signature_encoding: None,
            signature_header: None,
            signature_prefix: String::new(),
            signature_timestamp_header: String::new(),
            format: PayloadFormat::default(),
            compress_above: None,
            template: String::new(),
            batch_max_events: None,
            batch_max_bytes: 1 << 20,
            batch_linger: Duration::ZERO,
            events: vec!["*".into()],
            headers: BTreeMap::new(),
            allow_insecure_http: false,
            max_attempts: None,
            max_age: None,
            idempotency_header: "Idempotency-Key".into(),
            timeout: Duration::from_secs(30),
            max_concurrency: 16,
            window: 4096,
            window_bytes: 256 << 10,
            retry: RetryConfig::default(),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl WebhookConfig {
    /// How an `hmac` signature is made: the endpoint's settings, else its format's defaults.
    pub fn hmac_options(&self) -> HmacOptions {
        let defaults = self.format.signature_defaults();
        HmacOptions {
            algorithm: self.signature_algorithm.unwrap_or(defaults.algorithm),
            encoding: self.signature_encoding.unwrap_or(defaults.encoding),
            header: self
                .signature_header
                .clone()
                .unwrap_or_else(|| defaults.header.to_string()),
            prefix: self.signature_prefix.clone(),
            timestamp_header: Some(self.signature_timestamp_header.clone())
                .filter(|h| !h.is_empty()),
        }
    }

    /// The signing keys in use, primary first.
    pub fn signing_secrets(&self) -> Vec<Secret> {
        if self.secrets.is_empty() {
            vec![self.secret.clone()]
        } else {
            self.secrets.clone()
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    #[serde(with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub initial: Duration,
    #[serde(with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub max: Duration,
    pub multiplier: f64,
    /// Fraction of each delay that is randomised (0.0 – 1.0), so that many gateways do not
    /// retry in lock-step.
    pub jitter: f64,
}

/// The endpoints' checks: `webhook` (when used) and every `[[endpoints]]` entry, their names
/// unique. Returns the key that is wrong and why.
/// Endpoints a gateway runs at most, from the file and the API together: each has its
/// dispatcher, HTTP client, queue and share of the outbox (400 took the daemon past 100 MB).
pub const MAX_ENDPOINTS: usize = 32;

/// `stop_timeout` by default (how long a stop waits for deliveries in flight): 10 s less than
/// the unit's `TimeoutStopSec`.
pub const DEFAULT_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Each endpoint with the key that names it in the file: `webhook`, then `endpoints[i]`.
pub fn keyed<'a>(
    webhook: Option<&'a WebhookConfig>,
    endpoints: &'a [WebhookConfig],
) -> Vec<(String, &'a WebhookConfig)> {
    webhook
        .map(|w| ("webhook".to_string(), w))
        .into_iter()
        .chain(
            endpoints
                .iter()
                .enumerate()
                .map(|(i, e)| (format!("endpoints[{i}]"), e)),
        )
        .collect()
}

pub fn validate(
    webhook: Option<&WebhookConfig>,
    endpoints: &[WebhookConfig],
) -> Result<(), (String, String)> {
    let bad = |key: &str, msg: String| Err((key.to_string(), msg));
    if endpoints.is_empty() && webhook.is_some_and(|w| w.url.trim().is_empty()) {
        return bad(
            "webhook.url",
            "no endpoint configured: set the receiver's URL here (or list [[endpoints]])".into(),
        );
    }
    if endpoints.len() + usize::from(webhook.is_some()) > MAX_ENDPOINTS {
        return bad(
            "endpoints",
            format!(
                "at most {MAX_ENDPOINTS} endpoints (each has its dispatcher, client and queue)"
            ),
        );
    }
    let mut names = Vec::new();
    for (key, w) in &keyed(webhook, endpoints) {
        let valid_name = !w.name.is_empty()
            && w.name.len() <= 64
            && w.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid_name {
            return bad(
                &format!("{key}.name"),
                "must be set: 1-64 letters, digits, `-` or `_` (it names the endpoint's queue)"
                    .into(),
            );
        }
        if names.contains(&w.name.as_str()) {
            return bad(
                &format!("{key}.name"),
                format!("duplicate endpoint name `{}`", w.name),
            );
        }
        names.push(w.name.as_str());
        validate_endpoint(key, w)?;
    }
    Ok(())
}

/// The checks of one endpoint (`[webhook]` or `[[endpoints]]`); `key` is where it is.
pub fn validate_endpoint(key: &str, w: &WebhookConfig) -> Result<(), (String, String)> {
    let bad = |key: &str, msg: String| Err((key.to_string(), msg));
    match parse_url(&w.url) {
        Err(e) => return bad(&format!("{key}.url"), e),
        Ok(u) if u.scheme() != "https" && u.scheme() != "http" => {
            return bad(&format!("{key}.url"), "must be https:// (or http:// to this host)".into())
        }
        Ok(u) if u.scheme() == "http" && !w.allow_insecure_http && !is_loopback(&u) => {
            return bad(&format!("{key}.url"),
                "http:// sends events and signatures in clear text: use https://, or set allow_insecure_http = true".into(),
            )
        }
        Ok(_) => {}
    }
    let secrets = w.signing_secrets();
    if secrets.iter().all(|s| s.is_empty()) {
        let hint = if key == "webhook" {
            " (or given as EDGEHOOK_WEBHOOK__SECRET)"
        } else {
            ""
        };
        return bad(&format!("{key}.secret"), format!("must be set{hint}"));
    }
    for (i, secret) in secrets.iter().enumerate() {
        if let Err(e) = crate::sign::key_bytes(w.signature, secret, i) {
            let key = if w.secrets.is_empty() {
                format!("{key}.secret")
            } else {
                format!("{key}.secrets[{i}]")
            };
            return bad(&key, e.to_string());
        }
    }
    let hmac = w.hmac_options();
    for (header_key, value) in [
        (format!("{key}.signature_header"), &hmac.header),
        (format!("{key}.idempotency_header"), &w.idempotency_header),
        (
            format!("{key}.signature_timestamp_header"),
            &w.signature_timestamp_header,
        ),
    ] {
        if value.is_empty() && header_key.ends_with("timestamp_header") {
            continue;
        }
        if reqwest::header::HeaderName::from_bytes(value.as_bytes()).is_err() {
            return bad(
                &header_key,
                format!("`{value}` is not a valid HTTP header name"),
            );
        }
    }
    if w.events.is_empty() || w.events.iter().any(|e| e.is_empty()) {
        return bad(
            &format!("{key}.events"),
            "must list event types or patterns, e.g. [\"device.*\"]".into(),
        );
    }
    if let Some(pattern) = w.events.iter().find(|p| {
        let p = wildmatch::WildMatch::new(p);
        !crate::event::EventType::ALL
            .iter()
            .any(|k| p.matches(k.as_str()))
    }) {
        let known: Vec<&str> = crate::event::EventType::ALL
            .iter()
            .map(|k| k.as_str())
            .collect();
        return bad(
            &format!("{key}.events"),
            format!(
                "`{pattern}` matches no event type (there are: {})",
                known.join(", ")
            ),
        );
    }
    if w.description.chars().count() > 500 {
        return bad(
            &format!("{key}.description"),
            "at most 500 characters".into(),
        );
    }
    if reqwest::header::HeaderValue::from_str(&w.signature_prefix).is_err() {
        return bad(
            &format!("{key}.signature_prefix"),
            "not valid in an HTTP header".into(),
        );
    }
    if hmac
        .timestamp_header
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case(&hmac.header))
    {
        return bad(
            &format!("{key}.signature_timestamp_header"),
            "must differ from the signature header".into(),
        );
    }
    if w.signature == SignatureScheme::StandardWebhooks {
        let set = [
            ("signature_algorithm", w.signature_algorithm.is_some()),
            ("signature_encoding", w.signature_encoding.is_some()),
            ("signature_header", w.signature_header.is_some()),
            ("signature_prefix", !w.signature_prefix.is_empty()),
            (
                "signature_timestamp_header",
                !w.signature_timestamp_header.is_empty(),
            ),
        ];
        if let Some((name, _)) = set.iter().find(|(_, set)| *set) {
            return bad(
                &format!("{key}.{name}"),
                "applies to signature = \"hmac\" only: Standard Webhooks fixes its own headers and HMAC-SHA256".into(),
            );
        }
    }
    if !w.template.is_empty() {
        check_template(w).map_err(|why| (format!("{key}.template"), why))?;
    }
    if w.batch_max_events.is_some_and(|n| !(1..=1000).contains(&n)) {
        return bad(
            &format!("{key}.batch_max_events"),
            "must be between 1 and 1000 (or left out: one event per request)".into(),
        );
    }
    if w.batch_linger > Duration::from_secs(60) {
        return bad(&format!("{key}.batch_linger"), "must be at most 60s".into());
    }
    if w.batch_max_bytes == 0 {
        return bad(&format!("{key}.batch_max_bytes"), "must be above 0".into());
    }
    if w.compress_above == Some(0) {
        return bad(
            &format!("{key}.compress_above"),
            "must be above 0 (or left out: never compress)".into(),
        );
    }
    if !w.format.carries(crate::event::EventType::DeviceOnline) {
        let patterns: Vec<wildmatch::WildMatch> = w
            .events
            .iter()
            .map(|e| wildmatch::WildMatch::new(e))
            .collect();
        if let Some(kind) = crate::event::EventType::ALL
            .iter()
            .find(|k| !w.format.carries(**k) && patterns.iter().any(|p| p.matches(k.as_str())))
        {
            return bad(&format!("{key}.events"),
                format!("format {} carries workspace events only, but `{}` matches; use events = [\"workspace.*\"]", w.format.as_str(), kind.as_str()),
            );
        }
    }
    for (name, value) in &w.headers {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
            || reqwest::header::HeaderValue::from_str(value.expose()).is_err()
        {
            return bad(
                &format!("{key}.headers.{name}"),
                "not a valid HTTP header (name or value)".into(),
            );
        }
        if super::endpoint::sets_header(w, name) {
            return bad(
                &format!("{key}.headers.{name}"),
                "is set by edgehook itself".into(),
            );
        }
    }
    if w.timeout.is_zero() {
        return bad(&format!("{key}.timeout"), "must be above 0".into());
    }
    if w.max_attempts == Some(0) {
        return bad(
            &format!("{key}.max_attempts"),
            "must be at least 1 (or left out)".into(),
        );
    }
    if w.max_age.is_some_and(|a| a.is_zero()) {
        return bad(
            &format!("{key}.max_age"),
            "must be above 0 (or left out)".into(),
        );
    }
    if w.max_concurrency == 0 {
        return bad(
            &format!("{key}.max_concurrency"),
            "must be at least 1".into(),
        );
    }
    if w.window < w.max_concurrency {
        return bad(
            &format!("{key}.window"),
            format!("must be at least {key}.max_concurrency"),
        );
    }
    if w.retry.initial.is_zero() || w.retry.initial > w.retry.max {
        return bad(
            &format!("{key}.retry.initial"),
            format!("must be above 0 and at most {key}.retry.max"),
        );
    }
    if !(w.retry.multiplier >= 1.0 && w.retry.multiplier <= 10.0) {
        return bad(
            &format!("{key}.retry.multiplier"),
            "must be between 1 and 10".into(),
        );
    }
    if !(0.0..=1.0).contains(&w.retry.jitter) {
        return bad(
            &format!("{key}.retry.jitter"),
            "must be between 0 and 1".into(),
        );
    }
    Ok(())
}

/// The endpoint's template compiles and, run on a sample of every event type the endpoint
/// gets, gives a body (or nothing) for each: no type fails at delivery for the template's sake.
fn check_template(w: &WebhookConfig) -> Result<(), String> {
    let template = super::template::Template::compile(&w.template)?;
    let patterns: Vec<wildmatch::WildMatch> = w
        .events
        .iter()
        .map(|e| wildmatch::WildMatch::new(e))
        .collect();
    let at = std::time::UNIX_EPOCH + Duration::from_millis(1_764_000_000_000);
    for event in crate::device::samples() {
        let kind = event.kind;
        if !w.format.carries(kind) || !patterns.iter().any(|p| p.matches(kind.as_str())) {
            continue;
        }
        let sample = crate::event::Envelope::seal(&event, "sample-gateway", at);
        if let Err(e) = template.render(&sample.body) {
            return Err(format!(
                "fails on a sample `{}` event: {e}\n  sample: {}",
                kind.as_str(),
                String::from_utf8_lossy(&sample.body)
            ));
        }
    }
    Ok(())
}

/// A receiver's or upstream's URL, or why it is not one. A host name is ASCII: one with other
/// letters is written as punycode (`xn--...`), which `url` is built here to take alone (see
/// `idna_adapter` in Cargo.toml).
pub fn parse_url(url: &str) -> Result<reqwest::Url, String> {
    crate::address::parse(url)
}

pub use crate::address::is_loopback;

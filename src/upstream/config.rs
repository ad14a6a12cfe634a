//! `[upstream]`: how upstream systems send commands (actions, bookings) down to this gateway.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;
use crate::sign::{self, SignatureScheme};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Standard Webhooks secrets (`whsec_` + base64). A pushed request or a pull answer is
    /// taken when any of them signed it (so a secret can be rotated without a gap); the first
    /// signs this gateway's pull requests.
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// How far a signed request's `webhook-timestamp` may be from this gateway's clock, either
    /// way. Ids are remembered this long, so a request replayed within it is refused too.
    #[serde(default = "default_tolerance", with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub tolerance: Duration,
    /// The push listener: upstream POSTs commands to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushConfig>,
    /// Pull mode: this gateway long-polls upstream for commands (behind NAT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// Where to listen: a loopback address, or any other with `tls_cert` and `tls_key`.
    pub listen: String,
    /// The listener's certificate chain (PEM): it serves HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PullConfig {
    /// The upstream URL this gateway POSTs its polls to (https://, or http:// to a loopback
    /// address or with `allow_insecure_http`).
    pub url: String,
    /// How long upstream may hold a poll open when it has nothing (long-polling); the request
    /// times out 10 s after it.
    #[serde(default = "default_wait", with = "humantime_serde")]
    #[cfg_attr(test, schemars(with = "crate::schema::Duration"))]
    pub wait: Duration,
    #[serde(default)]
    pub allow_insecure_http: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            secrets: Vec::new(),
            tolerance: default_tolerance(),
            push: None,
            pull: None,
        }
    }
}

fn default_tolerance() -> Duration {
    Duration::from_secs(300)
}

fn default_wait() -> Duration {
    Duration::from_secs(30)
}

impl UpstreamConfig {
    pub fn is_used(&self) -> bool {
        self.push.is_some() || self.pull.is_some()
    }

    /// The signer and verifier of this config's secrets (checked by [`validate`]).
    pub fn signer(&self) -> Result<sign::Signer, sign::SecretError> {
        sign::Signer::with(
            SignatureScheme::StandardWebhooks,
            &self.secrets,
            sign::HmacOptions::default(),
        )
    }
}

/// Checks deserialising cannot express: the offending key and what is wrong.
pub fn validate(u: &UpstreamConfig) -> Result<(), (String, String)> {
    let bad = |key: &str, msg: String| Err((format!("upstream.{key}"), msg));
    if !u.is_used() {
        return Ok(());
    }
    if let Err(e) = u.signer() {
        let key = match e {
            sign::SecretError::Missing => "secrets".to_string(),
            sign::SecretError::NotWhsec { index } | sign::SecretError::BadLength { index, .. } => {
                format!("secrets[{index}]")
            }
        };
        return bad(
            &key,
            format!("{e} (commands are verified with Standard Webhooks signatures)"),
        );
    }
    if u.tolerance < Duration::from_secs(1) || u.tolerance > Duration::from_secs(3600) {
        return bad("tolerance", "must be between 1s and 1h".into());
    }
    if let Some(p) = &u.push {
        crate::tls::check_listener(
            "upstream.push.",
            Some(&p.listen),
            p.tls_cert.as_deref(),
            p.tls_key.as_deref(),
            "127.0.0.1:9480",
        )?;
    }
    if let Some(p) = &u.pull {
        match crate::address::parse(&p.url) {
            Err(e) => return bad("pull.url", e),
            Ok(url) if url.scheme() == "https" => {}
            Ok(url) if url.scheme() == "http" => {
                if !crate::address::is_loopback(&url) && !p.allow_insecure_http {
                    return bad(
                        "pull.url",
                        "http:// carries commands in clear text: use https://, or set allow_insecure_http = true".into(),
                    );
                }
            }
            Ok(_) => return bad("pull.url", "must be an https:// (or http://) URL".into()),
        }
        if p.wait > Duration::from_secs(300) {
            return bad("pull.wait", "must be at most 5m".into());
        }
    }
    Ok(())
}

//! Values that must never be printed, and URLs as they may be shown.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A value that must never be printed: passwords, webhook secrets.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for the one place that needs it (signing, authenticating).
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// serde's message for a value of the wrong type or shape, without the value: `invalid type:
/// string "whsec_...", expected a sequence` becomes `invalid type: expected a sequence`. For a
/// value given where a secret (or header) belongs, which may be that secret: an API answer or
/// a command's output never repeats it (the configuration file's errors have their own,
/// `config::hide_value`, over TOML values).
pub fn without_value(message: &str) -> String {
    for kind in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(rest) = message.strip_prefix(kind) {
            return match rest.rfind(", expected ") {
                Some(at) => format!("{}{}", kind, &rest[at + 2..]),
                None => format!("{}(value not shown)", kind),
            };
        }
    }
    message.to_string()
}

/// `scheme://host:port/path`, dropping user info and the query; unparseable URLs are hidden.
pub fn redact_url(url: &str) -> String {
    match crate::address::parse(url) {
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let query = if u.query().is_some() { "?…" } else { "" };
            format!(
                "{}://{}{port}{}{query}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.path()
            )
        }
        Err(_) => "(invalid URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_for_logs() {
        assert_eq!(
            redact_url("https://user:pw@hooks.example.com:8443/in?token=abc"),
            "https://hooks.example.com:8443/in?…"
        );
        assert_eq!(redact_url("http://127.0.0.1/hook"), "http://127.0.0.1/hook");
    }

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
        assert_eq!(s.expose(), "hunter2");
    }
}

#[cfg(test)]
mod value_tests {
    use super::without_value;

    #[test]
    fn serde_messages_lose_the_value_given() {
        #[rustfmt::skip]
        let rows = [
            (r#"invalid type: string "whsec_c2VjcmV0", expected a sequence"#, "invalid type: expected a sequence"),
            ("invalid type: integer `12345678`, expected a string", "invalid type: expected a string"),
            (r#"invalid value: string "a, expected b", expected one of `x`, `y`"#, "invalid value: expected one of `x`, `y`"),
            ("invalid length 3, expected 2 elements", "invalid length expected 2 elements"),
            ("unknown field `secrett`, expected one of `url`, `secret`", "unknown field `secrett`, expected one of `url`, `secret`"),
            ("missing field `url`", "missing field `url`"),
        ];
        for (given, want) in rows {
            assert_eq!(without_value(given), want);
            assert!(!without_value(given).contains("whsec"));
        }
    }
}

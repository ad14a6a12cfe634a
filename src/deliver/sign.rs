//! Request signing: what lets the receiver know an event came from this gateway, unaltered.
//!
//! Two schemes, chosen per endpoint:
//! - `hmac-sha256-hex`: the lower-case hex HMAC-SHA256 of the exact body bytes, keyed with the
//!   secret's bytes, in one header (default `X-Webhook-Signature`; `x-gospace-signature`,
//!   `X-Roomz-Signature` and the like are just other names). Only the first secret is used.
//! - `standard-webhooks` ([standardwebhooks.com](https://www.standardwebhooks.com)): headers
//!   `webhook-id` (the event id), `webhook-timestamp` (Unix seconds of the attempt) and
//!   `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed with the
//!   base64-decoded part of a `whsec_...` secret. With several secrets (rotation) the header
//!   carries one `v1,` signature per secret, space-separated, and receivers accept any of them.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::secret::Secret;

/// The headers a Standard Webhooks signature takes: id, timestamp, signature.
pub const STANDARD_HEADERS: [&str; 3] = ["webhook-id", "webhook-timestamp", "webhook-signature"];

/// Which scheme an endpoint signs with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum SignatureScheme {
    #[default]
    #[serde(rename = "hmac-sha256-hex")]
    HmacSha256Hex,
    #[serde(rename = "standard-webhooks")]
    StandardWebhooks,
}

/// Signs request bodies for one endpoint.
#[derive(Clone)]
pub struct Signer {
    scheme: SignatureScheme,
    /// One MAC per secret, primary first.
    keys: Vec<Hmac<Sha256>>,
}

/// A secret that cannot be used for its scheme. Never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("no secret")]
    Missing,
    #[error("secret {index} is not `whsec_` followed by base64 (Standard Webhooks secrets are)")]
    NotWhsec { index: usize },
    #[error("secret {index} decodes to {len} bytes; Standard Webhooks keys are 24 to 64 bytes")]
    BadLength { index: usize, len: usize },
}

/// The key bytes of a secret under `scheme`.
pub fn key_bytes(
    scheme: SignatureScheme,
    secret: &Secret,
    index: usize,
) -> Result<Vec<u8>, SecretError> {
    match scheme {
        SignatureScheme::HmacSha256Hex => Ok(secret.expose().as_bytes().to_vec()),
        SignatureScheme::StandardWebhooks => {
            let encoded = secret
                .expose()
                .strip_prefix("whsec_")
                .ok_or(SecretError::NotWhsec { index })?;
            let key = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| SecretError::NotWhsec { index })?;
            if !(24..=64).contains(&key.len()) {
                return Err(SecretError::BadLength {
                    index,
                    len: key.len(),
                });
            }
            Ok(key)
        }
    }
}

impl Signer {
    /// The hex scheme with one secret (receivers in the demo and the docs use this).
    pub fn new(secret: &Secret) -> Signer {
        Signer::with(SignatureScheme::HmacSha256Hex, std::slice::from_ref(secret))
            .expect("any bytes are an HMAC key")
    }

    pub fn with(scheme: SignatureScheme, secrets: &[Secret]) -> Result<Signer, SecretError> {
        if secrets.is_empty() {
            return Err(SecretError::Missing);
        }
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let key = key_bytes(scheme, s, i)?;
                Ok(Hmac::new_from_slice(&key).expect("HMAC takes keys of any length"))
            })
            .collect::<Result<_, SecretError>>()?;
        Ok(Signer { scheme, keys })
    }

    pub fn scheme(&self) -> SignatureScheme {
        self.scheme
    }

    fn mac(key: &Hmac<Sha256>, parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = key.clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// `hmac-sha256-hex`: lower-case hex HMAC-SHA256 of `body` with the primary secret.
    pub fn sign(&self, body: &[u8]) -> String {
        hex::encode(Self::mac(&self.keys[0], &[body]))
    }

    /// `standard-webhooks`: the `webhook-signature` value for `id`, `timestamp` and `body`.
    pub fn sign_standard(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let ts = timestamp.to_string();
        self.keys
            .iter()
            .map(|key| {
                let mac = Self::mac(key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
                format!(
                    "v1,{}",
                    base64::engine::general_purpose::STANDARD.encode(mac)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The names of the headers [`Signer::headers`] sets (lower-case), whatever the scheme.
    pub fn header_names(scheme: SignatureScheme, hex_header: &str) -> Vec<String> {
        match scheme {
            SignatureScheme::HmacSha256Hex => vec![hex_header.to_ascii_lowercase()],
            SignatureScheme::StandardWebhooks => {
                STANDARD_HEADERS.iter().map(|h| h.to_string()).collect()
            }
        }
    }

    /// The signature headers of one attempt (names lower-case).
    pub fn headers(
        &self,
        hex_header: &str,
        id: &str,
        timestamp: u64,
        body: &[u8],
    ) -> Vec<(String, String)> {
        match self.scheme {
            SignatureScheme::HmacSha256Hex => {
                vec![(hex_header.to_ascii_lowercase(), self.sign(body))]
            }
            SignatureScheme::StandardWebhooks => {
                let [id_header, timestamp_header, signature_header] = STANDARD_HEADERS;
                vec![
                    (id_header.into(), id.to_string()),
                    (timestamp_header.into(), timestamp.to_string()),
                    (
                        signature_header.into(),
                        self.sign_standard(id, timestamp, body),
                    ),
                ]
            }
        }
    }

    /// Constant-time check of a hex signature (for receivers: the demo, the docs).
    pub fn verify(&self, body: &[u8], signature_hex: &str) -> bool {
        let Ok(sig) = hex::decode(signature_hex.trim()) else {
            return false;
        };
        let mut mac = self.keys[0].clone();
        mac.update(body);
        mac.verify_slice(&sig).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // printf '%s' '{"a":1}' | openssl dgst -sha256 -hmac 'whsec-test'
        let signer = Signer::new(&Secret::new("whsec-test"));
        let sig = signer.sign(br#"{"a":1}"#);
        assert_eq!(
            sig,
            "a40e86f8db5b22c03b9272899c227b359d6580eb7969a4f90f643a3d90fdc1cc"
        );
        assert!(signer.verify(br#"{"a":1}"#, &sig));
        assert!(!signer.verify(br#"{"a":2}"#, &sig));
        assert!(!signer.verify(br#"{"a":1}"#, "zz"));
        assert_eq!(
            signer.headers("X-Roomz-Signature", "id", 0, br#"{"a":1}"#),
            [("x-roomz-signature".to_string(), sig)]
        );
    }

    #[test]
    fn standard_webhooks_matches_the_spec_example_and_the_reference_library() {
        // The example of the Standard Webhooks specification; the PyPI `standardwebhooks`
        // package (Webhook(secret).sign(id, datetime(1614265330), payload)) gives the same.
        let secret = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let signer = Signer::with(SignatureScheme::StandardWebhooks, &[secret]).unwrap();
        let headers = signer.headers(
            "unused",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(
            headers,
            [
                (
                    "webhook-id".to_string(),
                    "msg_p5jXN8AQM9LWM0D4loKWxJek".to_string()
                ),
                ("webhook-timestamp".to_string(), "1614265330".to_string()),
                (
                    "webhook-signature".to_string(),
                    "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_string()
                ),
            ]
        );
    }

    #[test]
    fn rotation_signs_with_every_secret() {
        let old = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let new = Secret::new("whsec_dGhpcyBpcyBhIG5ldyAzMi1ieXRlIHNlY3JldCEhIQ==");
        let both = Signer::with(
            SignatureScheme::StandardWebhooks,
            &[new.clone(), old.clone()],
        )
        .unwrap();
        let sig = both.sign_standard(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            parts[1], "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "the old secret still verifies"
        );
        let only_new = Signer::with(SignatureScheme::StandardWebhooks, &[new]).unwrap();
        assert_eq!(
            parts[0],
            only_new.sign_standard(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            )
        );
    }

    #[test]
    fn bad_standard_secrets_are_refused_without_showing_them() {
        let cases = [
            ("not-whsec", SecretError::NotWhsec { index: 0 }),
            ("whsec_%%%", SecretError::NotWhsec { index: 0 }),
            (
                "whsec_c2hvcnQ=",
                SecretError::BadLength { index: 0, len: 5 },
            ),
        ];
        for (secret, want) in cases {
            let e = Signer::with(SignatureScheme::StandardWebhooks, &[Secret::new(secret)])
                .err()
                .unwrap();
            assert_eq!(e, want);
            assert!(!e.to_string().contains(secret));
        }
        assert_eq!(
            Signer::with(SignatureScheme::HmacSha256Hex, &[]).err(),
            Some(SecretError::Missing)
        );
    }
}

//! Request signing: what lets the receiver know an event came from this gateway, unaltered.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

/// Signs bodies with the endpoint's secret.
#[derive(Clone)]
pub struct Signer {
    mac: Hmac<Sha256>,
}

impl Signer {
    pub fn new(secret: &Secret) -> Signer {
        Signer {
            mac: Hmac::new_from_slice(secret.expose().as_bytes())
                .expect("HMAC takes keys of any length"),
        }
    }

    /// Lower-case hex HMAC-SHA256 of `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Constant-time check of a hex signature (for receivers: the demo, the docs).
    pub fn verify(&self, body: &[u8], signature_hex: &str) -> bool {
        let Ok(sig) = hex::decode(signature_hex.trim()) else {
            return false;
        };
        let mut mac = self.mac.clone();
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
    }
}

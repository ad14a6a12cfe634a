//! TLS client configuration shared by the MQTT source and webhook delivery: rustls with the
//! `ring` provider (no OpenSSL, no C toolchain for cross builds), the bundled web PKI roots plus
//! an optional private CA, and always-on certificate verification.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate file", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{}: no certificates in the file",
        path.display()
    );
    Ok(certs)
}

/// A verifying client config. `extra_ca` adds a PEM CA bundle to the web PKI roots; `client`
/// is a (certificate chain, key) pair of PEM files for mutual TLS.
pub fn client_config_with(
    extra_ca: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        for cert in read_certs(path)? {
            roots
                .add(cert)
                .with_context(|| format!("{}: invalid CA certificate", path.display()))?;
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_certs(cert)?;
            let pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
            let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    anyhow::anyhow!("{}: no private key in the file", key.display())
                }
                e => anyhow::anyhow!("{}: not a PEM private key: {e}", key.display()),
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .context("client certificate and key do not match")?
        }
    })
}

/// A verifying client config with the web PKI roots (and an optional extra CA).
pub fn client_config(extra_ca: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    client_config_with(extra_ca, None)
}

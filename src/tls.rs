//! TLS with rustls and the `ring` provider (no OpenSSL, no C toolchain for cross builds).
//! Clients (the MQTT source, webhook delivery): the bundled web PKI roots plus an optional
//! private CA, and always-on certificate verification. The server (the local listener when it
//! listens off loopback): a certificate reloaded from its files while serving
//! ([`ServerCert`]), and a client that trusts exactly that certificate ([`pinned_client`]) for
//! the `edgehook` commands on the same machine.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            anyhow::anyhow!("{}: no private key in the file", path.display())
        }
        e => anyhow::anyhow!("{}: not a PEM private key: {e}", path.display()),
    })
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
            let key_der = read_key(key)?;
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

/// A server's certificate chain and key, read from PEM files and read again on
/// [`ServerCert::reload`] (SIGHUP): each handshake uses the last that loaded, so a renewed
/// certificate is served without a restart, and one that does not load leaves the old in use.
#[derive(Debug)]
pub struct ServerCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ServerCert {
    /// Read `cert` (a PEM chain, the server's first) and `key` (PEM); fails, naming the file,
    /// when either does not load or they do not belong together.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerCert>> {
        let current = RwLock::new(Arc::new(certified(cert, key)?));
        Ok(Arc::new(ServerCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current,
        }))
    }

    /// Read the files again; on failure the certificate in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let next = certified(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        Ok(())
    }

    /// A server configuration that serves this certificate (HTTP/1.1).
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

impl rustls::server::ResolvesServerCert for ServerCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn certified(cert: &Path, key: &Path) -> anyhow::Result<rustls::sign::CertifiedKey> {
    let chain = read_certs(cert)?;
    let key_der = read_key(key)?;
    rustls::sign::CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| {
        anyhow::anyhow!(
            "{} and {} do not make a certificate and its key: {e}",
            cert.display(),
            key.display()
        )
    })
}

/// A client that trusts exactly the certificate in the PEM file `cert` (the first in it),
/// whatever names it holds: for a command reaching the daemon it runs beside, configured with
/// that file. Signatures are still checked, so only the holder of its key is trusted.
/// Check a listener's settings (`{prefix}listen`, `{prefix}tls_cert`, `{prefix}tls_key`): the
/// certificate and key both or neither, and loading; `listen` (unless `None`: off) an address
/// like `example`, off loopback only with them. `Err((key, why))` names the key at fault.
pub fn check_listener(
    prefix: &str,
    listen: Option<&str>,
    cert: Option<&Path>,
    key: Option<&Path>,
    example: &str,
) -> Result<(), (String, String)> {
    let bad = |k: &str, why: String| Err((format!("{prefix}{k}"), why));
    match (cert, key) {
        (Some(_), None) => {
            return bad(
                "tls_key",
                "must be set with tls_cert (the certificate's private key, PEM)".into(),
            )
        }
        (None, Some(_)) => {
            return bad(
                "tls_cert",
                "must be set with tls_key (the certificate chain, PEM)".into(),
            )
        }
        (Some(cert), Some(key)) => {
            if let Err(e) = ServerCert::load(cert, key) {
                return bad("tls_cert", format!("{e:#}"));
            }
        }
        (None, None) => {}
    }
    let Some(listen) = listen else {
        return Ok(());
    };
    match listen.parse::<std::net::SocketAddr>() {
        Err(e) => bad("listen", format!("not an address like {example} ({e})")),
        Ok(a) if !a.ip().is_loopback() && cert.is_none() => bad(
            "listen",
            format!("off loopback needs TLS (set {prefix}tls_cert and {prefix}tls_key); without them it must be a loopback address such as {example}"),
        ),
        Ok(_) => Ok(()),
    }
}

pub fn pinned_client(cert: &Path) -> anyhow::Result<rustls::ClientConfig> {
    let pinned = read_certs(cert)?.remove(0);
    let verifier = Arc::new(Pinned {
        cert: pinned,
        provider: provider(),
    });
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server's certificate is not the one configured (telemetry.tls_cert)".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

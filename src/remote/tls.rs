//! TLS for remote actor hosts: the host's client configuration and the learner's rustls server
//! configuration (the learner's accept loop, which runs each handshake itself so that it can
//! say why it refused one, is in `listener.rs`).

use std::path::Path;
use std::time::Duration;

use crate::config::Config;

/// Reads the PEM file of `flag`.
fn read_pem(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))?;
    if !pem.windows(10).any(|w| w == b"-----BEGIN") {
        anyhow::bail!(
            "{flag} {}: not a PEM file (no -----BEGIN line)",
            path.display()
        );
    }
    Ok(pem)
}

/// Client-side TLS of an actor host, from its flags (`None`: plain HTTP/2).
pub fn client_tls(
    cfg: &Config,
    host: &str,
) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let Some(ca) = &cfg.remote.tls_ca else {
        return Ok(None);
    };
    let domain = cfg.host.tls_domain.clone().unwrap_or_else(|| {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    });
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read_pem("--tls-ca", ca)?))
        .domain_name(domain)
        .timeout(Duration::from_secs(10));
    if let (Some(cert), Some(key)) = (&cfg.remote.tls_cert, &cfg.remote.tls_key) {
        tls = tls.identity(Identity::from_pem(
            read_pem("--tls-cert", cert)?,
            read_pem("--tls-key", key)?,
        ));
    }
    Ok(Some(tls))
}

/// Server-side TLS of a learner, from its flags (`None`: plain HTTP/2): rustls with the
/// learner's certificate, requiring client certificates signed by `--tls-ca` when it is
/// given (mutual TLS), HTTP/2 only. The learner runs the handshakes itself (see
/// `listener::tls`) so that it can say why it refused one.
pub fn server_tls(
    cfg: &Config,
) -> anyhow::Result<Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>> {
    use std::sync::Arc;
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{
        crypto::ring, server::WebPkiClientVerifier, RootCertStore, ServerConfig,
    };
    let (Some(cert), Some(key)) = (&cfg.remote.tls_cert, &cfg.remote.tls_key) else {
        return Ok(None);
    };
    let certs = |flag: &str, path: &Path| -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let pem = read_pem(flag, path)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("{flag} {}: {e}", path.display()))?;
        if certs.is_empty() {
            anyhow::bail!("{flag} {}: no CERTIFICATE in the file", path.display());
        }
        Ok(certs)
    };
    let chain = certs("--tls-cert", cert)?;
    let key_pem = read_pem("--tls-key", key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| anyhow::anyhow!("--tls-key {}: no usable private key: {e}", key.display()))?;
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS: {e}"))?;
    let builder = match &cfg.remote.tls_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs("--tls-ca", ca)? {
                roots
                    .add(c)
                    .map_err(|e| anyhow::anyhow!("--tls-ca {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| anyhow::anyhow!("--tls-ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, private).map_err(|e| {
        anyhow::anyhow!(
            "--tls-cert {} and --tls-key {}: {e}",
            cert.display(),
            key.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(Arc::new(config)))
}

//! TLS for client connections (rustls).

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

/// Why the TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// File path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The key file holds no private key.
    #[error("{0} contains no private key")]
    NoKey(String),
    /// The certificate file holds no certificate.
    #[error("{0} contains no certificate")]
    NoCert(String),
    /// rustls refused the certificate or key.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The server TLS settings cannot be used.
    #[error(transparent)]
    Server(#[from] shardgate_pool::TlsConfigError),
}

/// TLS towards the servers as `[proxy] server_tls` says.
pub fn server_tls(
    proxy: &crate::config::ProxyConfig,
) -> Result<shardgate_pool::ServerTls, TlsError> {
    use crate::config::ServerTlsMode as M;
    use shardgate_pool::TlsMode;
    let mode = match proxy.server_tls {
        M::Disable => TlsMode::Disable,
        M::Prefer => TlsMode::Prefer,
        M::Require => TlsMode::Require,
        M::VerifyCa => TlsMode::VerifyCa,
        M::VerifyFull => TlsMode::VerifyFull,
    };
    let root = match &proxy.server_tls_root_cert {
        Some(path) => Some(std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })?),
        None => None,
    };
    Ok(shardgate_pool::ServerTls::new(mode, root.as_deref())?)
}

fn open(path: &Path) -> Result<std::io::BufReader<std::fs::File>, TlsError> {
    std::fs::File::open(path)
        .map(std::io::BufReader::new)
        .map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })
}

/// TLS towards clients: the acceptor, and the certificate's channel-binding
/// data for SCRAM-SHA-256-PLUS.
#[derive(Clone)]
pub struct ClientTls {
    /// Accepts TLS connections.
    pub acceptor: TlsAcceptor,
    /// `tls-server-end-point` of the (leaf) certificate.
    pub end_point: Arc<[u8]>,
}

/// Builds the client TLS from PEM files.
pub fn acceptor(cert: &Path, key: &Path) -> Result<ClientTls, TlsError> {
    let read_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| TlsError::Read { path, source }
    };
    let certs = rustls_pemfile::certs(&mut open(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err(cert))?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(cert.display().to_string()));
    }
    let key_der = rustls_pemfile::private_key(&mut open(key)?)
        .map_err(read_err(key))?
        .ok_or_else(|| TlsError::NoKey(key.display().to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs.clone(), key_der)?;
    Ok(ClientTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        end_point: shardgate_protocol::auth::scram::tls_server_end_point(&certs[0]).into(),
    })
}

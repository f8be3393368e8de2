//! TLS towards the servers (`proxy.server_tls`): the modes libpq knows as
//! `sslmode`, the rustls configuration for each, and the stream a server
//! connection reads and writes.

use std::io;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

/// How server connections use TLS (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Never.
    Disable,
    /// When the server offers it, without checking its certificate.
    Prefer,
    /// Always, without checking the certificate.
    Require,
    /// Always, the certificate signed by the root certificate.
    VerifyCa,
    /// Always, the certificate signed by the root and naming the host.
    VerifyFull,
}

/// Why the server TLS configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// verify-ca / verify-full without a root certificate.
    #[error("server_tls = \"{0}\" needs server_tls_root_cert")]
    NoRoot(&'static str),
    /// The root certificate file holds no usable certificate.
    #[error("server_tls_root_cert: {0}")]
    Root(String),
    /// rustls refused the configuration.
    #[error("server TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server TLS settings shared by every pool.
#[derive(Clone)]
pub struct ServerTls {
    /// The mode.
    pub mode: TlsMode,
    pub(crate) connector: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .finish()
    }
}

impl ServerTls {
    /// No TLS.
    pub fn disabled() -> ServerTls {
        ServerTls {
            mode: TlsMode::Disable,
            connector: None,
        }
    }

    /// Settings for `mode`; `root_pem` is the PEM of the certificate(s)
    /// the server's must be signed by (needed for the verify modes).
    pub fn new(mode: TlsMode, root_pem: Option<&[u8]>) -> Result<ServerTls, TlsConfigError> {
        if mode == TlsMode::Disable {
            return Ok(ServerTls::disabled());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match mode {
            TlsMode::VerifyCa | TlsMode::VerifyFull => {
                let name = if mode == TlsMode::VerifyCa {
                    "verify-ca"
                } else {
                    "verify-full"
                };
                let pem = root_pem.ok_or(TlsConfigError::NoRoot(name))?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_pemfile::certs(&mut &pem[..]) {
                    let cert = cert.map_err(|e| TlsConfigError::Root(e.to_string()))?;
                    roots
                        .add(cert)
                        .map_err(|e| TlsConfigError::Root(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(TlsConfigError::Root("no certificate in the file".into()));
                }
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| TlsConfigError::Root(e.to_string()))?;
                Arc::new(Verify {
                    webpki,
                    check_name: mode == TlsMode::VerifyFull,
                })
            }
            _ => Arc::new(NoCheck(provider.clone())),
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(ServerTls {
            mode,
            connector: Some(tokio_rustls::TlsConnector::from(Arc::new(config))),
        })
    }

    /// Upgrades `tcp` to TLS after the server said yes to SSLRequest; `host`
    /// is the name or address the certificate must hold (verify-full).
    pub(crate) async fn handshake(&self, tcp: TcpStream, host: &str) -> io::Result<ServerStream> {
        let Some(connector) = &self.connector else {
            return Ok(ServerStream::Plain(tcp));
        };
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = connector.connect(name, tcp).await?;
        Ok(ServerStream::Tls(Box::new(tls)))
    }
}

/// Any certificate (require / prefer), its handshake signatures checked.
#[derive(Debug)]
struct NoCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The chain checked against the root; the host name only for verify-full.
#[derive(Debug)]
struct Verify {
    webpki: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for Verify {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// A server connection's byte stream: plain TCP or TLS over it.
pub type ServerStream = crate::MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

//! Password authentication, both as the server (clients log in to the proxy)
//! and as the client (the proxy logs in to Postgres).

pub mod md5;
pub mod scram;

/// Why a login failed. The client never learns which one: every variant is
/// reported as the same `28P01` message so user names cannot be probed.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The SASL exchange did not follow RFC 5802 / RFC 7677.
    #[error("malformed SCRAM message: {0}")]
    MalformedScram(&'static str),
    /// The client asked for a mechanism the proxy did not offer.
    #[error("unsupported SASL mechanism {0}")]
    UnsupportedMechanism(String),
    /// Proof, hash or password did not match.
    #[error("password does not match")]
    WrongPassword,
    /// A stored secret in the configuration is not usable for this method.
    #[error("invalid stored secret: {0}")]
    BadSecret(&'static str),
}

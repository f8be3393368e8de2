//! Client authentication: the proxy plays the server side of SCRAM-SHA-256,
//! md5 or trust for the users in `[[users]]`.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use rand::RngExt;
use shardgate_protocol::auth::scram::{Exchange, Negotiation, Verifier, MECHANISM, MECHANISM_PLUS};
use shardgate_protocol::auth::{md5, AuthError};
use shardgate_protocol::backend::{self, auth_code};
use shardgate_protocol::frontend::tag;
use shardgate_protocol::{MessageReader, PgError};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::client_io::{read_message, ReadError};
use crate::config::{is_md5_hash, is_scram_verifier, AuthMethod, Config, UserConfig};

/// Largest authentication message accepted from a client.
const MAX_AUTH_MESSAGE: usize = 16 * 1024;

/// A configured user with its secret in the form its method needs.
pub struct User {
    /// The configuration entry.
    pub config: UserConfig,
    secret: Secret,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.config.name)
            .finish()
    }
}

enum Secret {
    Scram(Verifier),
    Md5(String),
    Trust,
}

/// Every user who may log in.
pub struct UserDirectory {
    users: HashMap<String, Arc<User>>,
    mock_secret: [u8; 16],
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// Reading from the client failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Writing to the client failed.
    #[error("client connection: {0}")]
    Write(#[from] std::io::Error),
    /// Wrong password, unknown user or a broken exchange.
    #[error("authentication failed for user {user:?}: {reason}")]
    Failed {
        /// The user name the client gave.
        user: String,
        /// The real reason, for the log only.
        reason: AuthError,
    },
    /// The client sent something other than a password message.
    #[error("expected a password message, got type {0:?}")]
    Unexpected(char),
}

impl LoginError {
    /// What the client is told: the same `28P01` for every failure.
    pub fn to_pg_error(&self) -> PgError {
        match self {
            LoginError::Failed { user, .. } => PgError::fatal(
                "28P01",
                format!("password authentication failed for user \"{user}\""),
            ),
            LoginError::Read(ReadError::Protocol(p)) => p.to_pg_error(),
            LoginError::Unexpected(t) => PgError::fatal(
                "08P01",
                format!("expected password response, got message type {t:?}"),
            ),
            _ => PgError::fatal("08006", self.to_string()),
        }
    }
}

impl UserDirectory {
    /// Prepares the secrets of every configured user.
    pub fn new(config: &Config) -> UserDirectory {
        UserDirectory::reusing(config, None)
    }

    /// The users of `config`, reusing the prepared secrets of `previous`
    /// for users whose entry did not change (a SCRAM verifier from a plain
    /// password costs thousands of hash rounds).
    pub fn reusing(config: &Config, previous: Option<&UserDirectory>) -> UserDirectory {
        let users = config
            .users
            .iter()
            .map(|u| {
                if let Some(same) = previous
                    .and_then(|p| p.users.get(&u.name))
                    .filter(|p| p.config == *u)
                {
                    return (u.name.clone(), same.clone());
                }
                let pw = u.password.clone().unwrap_or_default();
                let secret = match u.auth {
                    AuthMethod::Trust => Secret::Trust,
                    AuthMethod::ScramSha256 if is_scram_verifier(&pw) => Secret::Scram(
                        Verifier::parse(&pw).expect("validated with the configuration"),
                    ),
                    AuthMethod::ScramSha256 => Secret::Scram(Verifier::from_password(&pw)),
                    AuthMethod::Md5 if is_md5_hash(&pw) => Secret::Md5(pw),
                    AuthMethod::Md5 => Secret::Md5(md5::stored_hash(&pw, &u.name)),
                };
                (
                    u.name.clone(),
                    Arc::new(User {
                        config: u.clone(),
                        secret,
                    }),
                )
            })
            .collect();
        UserDirectory {
            users,
            mock_secret: previous.map_or_else(|| rand::rng().random(), |p| p.mock_secret),
        }
    }

    /// The user named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<User>> {
        self.users.get(name).cloned()
    }

    /// Every user's name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.users.keys().map(String::as_str)
    }

    /// Runs the authentication exchange for `name`; on success the client has
    /// been sent AuthenticationOk. `binding`: the TLS certificate's
    /// `tls-server-end-point` data on a TLS connection (SCRAM-SHA-256-PLUS
    /// is offered then).
    pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        buf: &mut BytesMut,
        name: &str,
        binding: Option<&[u8]>,
    ) -> Result<Arc<User>, LoginError> {
        let user = self.users.get(name);
        let fail = |reason| LoginError::Failed {
            user: name.to_owned(),
            reason,
        };
        let result = match user.map(|u| &u.secret) {
            Some(Secret::Trust) => Ok(()),
            Some(Secret::Md5(stored)) => md5_exchange(stream, buf, stored).await,
            Some(Secret::Scram(v)) => scram_exchange(stream, buf, v.clone(), binding).await,
            // Unknown users go through a SCRAM exchange that cannot succeed, so
            // they are indistinguishable from a wrong password.
            None => scram_exchange(
                stream,
                buf,
                Verifier::mock(name, &self.mock_secret),
                binding,
            )
            .await
            .and(Err(Ok(AuthError::WrongPassword))),
        };
        match (result, user) {
            (Ok(()), Some(u)) => {
                let mut out = BytesMut::new();
                backend::authentication(auth_code::OK, &[], &mut out);
                stream.write_all(&out).await?;
                Ok(u.clone())
            }
            (Err(Ok(reason)), _) => Err(fail(reason)),
            (Err(Err(e)), _) => Err(e),
            (Ok(()), None) => Err(fail(AuthError::WrongPassword)),
        }
    }
}

/// `Err(Ok(_))` is a failed login, `Err(Err(_))` an I/O or protocol failure.
type ExchangeResult = Result<(), Result<AuthError, LoginError>>;

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, code: i32, data: &[u8]) -> ExchangeResult {
    let mut out = BytesMut::new();
    backend::authentication(code, data, &mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|e| Err(LoginError::Write(e)))
}

async fn receive<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<BytesMut, Result<AuthError, LoginError>> {
    let (t, body) = read_message(stream, buf, MAX_AUTH_MESSAGE)
        .await
        .map_err(|e| Err(e.into()))?;
    if t != tag::PASSWORD {
        return Err(Err(LoginError::Unexpected(t as char)));
    }
    Ok(body)
}

async fn md5_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    stored: &str,
) -> ExchangeResult {
    let salt: [u8; 4] = rand::rng().random();
    send(stream, auth_code::MD5, &salt).await?;
    let body = receive(stream, buf).await?;
    let response = MessageReader::new(&body, "PasswordMessage")
        .cstr()
        .map_err(|_| Ok(AuthError::WrongPassword))?;
    md5::verify(stored, salt, response).map_err(Ok)
}

async fn scram_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    verifier: Verifier,
    binding: Option<&[u8]>,
) -> ExchangeResult {
    let mut mechanisms = Vec::new();
    if binding.is_some() {
        mechanisms.extend_from_slice(MECHANISM_PLUS.as_bytes());
        mechanisms.push(0);
    }
    mechanisms.extend_from_slice(MECHANISM.as_bytes());
    mechanisms.extend_from_slice(b"\0\0");
    send(stream, auth_code::SASL, &mechanisms).await?;
    let body = receive(stream, buf).await?;
    let mut r = MessageReader::new(&body, "SASLInitialResponse");
    let mechanism = r
        .str()
        .map_err(|_| Ok(AuthError::MalformedScram("SASLInitialResponse")))?;
    let plus = binding.is_some() && mechanism == MECHANISM_PLUS;
    if mechanism != MECHANISM && !plus {
        return Err(Ok(AuthError::UnsupportedMechanism(mechanism.to_owned())));
    }
    let len = r
        .i32()
        .map_err(|_| Ok(AuthError::MalformedScram("SASLInitialResponse")))?;
    let data = if len < 0 {
        &[][..]
    } else {
        r.bytes(len as usize)
            .map_err(|_| Ok(AuthError::MalformedScram("SASLInitialResponse")))?
    };
    let negotiation = Negotiation {
        plus,
        offered_binding: binding,
    };
    let (exchange, server_first) = Exchange::start(verifier, data, negotiation).map_err(Ok)?;
    send(stream, auth_code::SASL_CONTINUE, server_first.as_bytes()).await?;
    let body = receive(stream, buf).await?;
    let server_final = exchange.finish(&body).map_err(Ok)?;
    send(stream, auth_code::SASL_FINAL, server_final.as_bytes()).await
}

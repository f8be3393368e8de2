//! One raw protocol connection to a Postgres node: startup and authentication.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use shardgate_protocol::backend::{self, auth_code, tag, ErrorFields};
use shardgate_protocol::frontend;
use shardgate_protocol::startup::encode_startup;
use shardgate_protocol::{Header, MessageReader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::PreparedSet;

/// Largest message accepted from a server while logging in.
const MAX_STARTUP_MESSAGE: usize = 1 << 20;

/// Where and as whom to connect.
#[derive(Clone)]
pub struct ConnectParams {
    /// `host:port` of the node.
    pub addr: Arc<str>,
    /// Role to log in as.
    pub user: String,
    /// Password for that role, if the server asks for one.
    pub password: Option<String>,
    /// Database to connect to.
    pub database: String,
    /// Limit on connecting and logging in.
    pub connect_timeout: Duration,
    /// Capacity of each connection's prepared statement cache.
    pub prepared_capacity: usize,
    /// TLS towards the server.
    pub tls: Arc<crate::ServerTls>,
}

impl std::fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectParams")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// Why a server connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect, read or write failed.
    #[error("could not connect to server {addr}: {source}")]
    Io {
        /// Node address.
        addr: String,
        /// Underlying error.
        source: io::Error,
    },
    /// Connecting and logging in took longer than `connect_timeout`.
    #[error("timed out connecting to server {0}")]
    Timeout(String),
    /// The server refused the login (bad password, unknown database, ...).
    #[error("server {addr} refused the connection: {} {}", fields.code, fields.message)]
    Refused {
        /// Node address.
        addr: String,
        /// The server's error.
        fields: ErrorFields,
    },
    /// TLS towards the server failed or was refused.
    #[error("TLS to server {addr} failed: {reason}")]
    Tls {
        /// Node address.
        addr: String,
        /// What went wrong (certificate not trusted, not offered, ...).
        reason: String,
    },
    /// The server asked for a password but none is configured.
    #[error("server {0} requires a password but none is configured for this user")]
    PasswordRequired(String),
    /// The server spoke something other than the protocol.
    #[error("protocol error from server {addr}: {reason}")]
    Protocol {
        /// Node address.
        addr: String,
        /// What was wrong.
        reason: String,
    },
}

/// A raw, logged-in connection to one Postgres node.
#[derive(Debug)]
pub struct ServerConn {
    /// The socket; the session reads and writes it directly.
    pub stream: crate::ServerStream,
    /// Bytes read from the server and not consumed yet.
    pub read_buf: BytesMut,
    /// Process id and secret for CancelRequest.
    pub backend_key: (i32, i32),
    /// Cancels what this connection runs (copying it allocates nothing: the
    /// address is the pool's shared string).
    pub cancel: CancelHandle,
    /// ParameterStatus values the server reported at login.
    pub server_params: Vec<(String, String)>,
    /// `host:port` this connection goes to.
    pub addr: Arc<str>,
    /// Set when the connection must not be reused (unclean state, I/O error).
    pub broken: bool,
    /// Set when the connection still serves its current client but must
    /// not be given to another (a proxy-named statement on it went stale).
    pub retire: bool,
    /// Fingerprint of the session state (SET parameters) applied to it.
    pub state_fingerprint: u64,
    /// Proxy-named prepared statements that exist on it.
    pub prepared: PreparedSet,
    /// Statement ids evicted from `prepared` still to be closed on the server.
    pub pending_closes: Vec<u64>,
    /// When it was opened.
    pub created: Instant,
    /// When it was last handed out by its pool.
    pub last_used: Instant,
    /// When its pool closes it instead of handing it out (`server_lifetime`).
    pub retire_at: Instant,
    /// What the current loan did (requests, bytes, errors): counted by the
    /// session without atomics, added to the pool's totals when it returns.
    pub loan: crate::pool::Loan,
}

impl ServerConn {
    /// Connects, authenticates and waits for the first ReadyForQuery.
    pub async fn connect(params: &ConnectParams) -> Result<ServerConn, ConnectError> {
        Self::connect_with(params, &[]).await
    }

    /// Like [`ServerConn::connect`], with more startup parameters (e.g.
    /// `replication = database` for a logical replication connection).
    pub async fn connect_with(
        params: &ConnectParams,
        extra: &[(&str, &str)],
    ) -> Result<ServerConn, ConnectError> {
        match tokio::time::timeout(params.connect_timeout, Self::connect_inner(params, extra)).await
        {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout(params.addr.to_string())),
        }
    }

    async fn connect_inner(
        params: &ConnectParams,
        extra: &[(&str, &str)],
    ) -> Result<ServerConn, ConnectError> {
        let io_err = |source| ConnectError::Io {
            addr: params.addr.to_string(),
            source,
        };
        let tcp = TcpStream::connect(&*params.addr).await.map_err(io_err)?;
        tcp.set_nodelay(true).map_err(io_err)?;
        let stream = negotiate_tls(tcp, params).await?;
        let now = Instant::now();
        let mut conn = ServerConn {
            stream,
            read_buf: BytesMut::with_capacity(8192),
            backend_key: (0, 0),
            cancel: CancelHandle {
                addr: params.addr.clone(),
                pid: 0,
                secret: 0,
            },
            server_params: Vec::new(),
            addr: params.addr.clone(),
            broken: false,
            retire: false,
            state_fingerprint: 0,
            prepared: PreparedSet::new(params.prepared_capacity),
            pending_closes: Vec::new(),
            created: now,
            last_used: now,
            retire_at: now + Duration::from_secs(86400 * 365),
            loan: Default::default(),
        };
        let mut out = BytesMut::new();
        let mut startup = vec![
            ("user", params.user.as_str()),
            ("database", params.database.as_str()),
        ];
        startup.extend_from_slice(extra);
        encode_startup(&startup, &mut out);
        conn.stream.send_all(&out).await.map_err(io_err)?;
        conn.login(params).await?;
        Ok(conn)
    }

    fn protocol_error(&self, reason: impl Into<String>) -> ConnectError {
        ConnectError::Protocol {
            addr: self.addr.to_string(),
            reason: reason.into(),
        }
    }

    /// Reads one whole message (at most 1 MiB); returns its type and body.
    pub async fn read_message(&mut self) -> Result<(u8, BytesMut), ConnectError> {
        loop {
            match Header::complete(&self.read_buf, MAX_STARTUP_MESSAGE) {
                Ok(Some(h)) => {
                    let mut msg = self.read_buf.split_to(h.total);
                    msg.advance(5);
                    return Ok((h.tag, msg));
                }
                Ok(None) => {}
                Err(e) => return Err(self.protocol_error(e.to_string())),
            }
            let n = self
                .stream
                .read_buf(&mut self.read_buf)
                .await
                .map_err(|source| ConnectError::Io {
                    addr: self.addr.to_string(),
                    source,
                })?;
            if n == 0 {
                return Err(ConnectError::Io {
                    addr: self.addr.to_string(),
                    source: io::ErrorKind::UnexpectedEof.into(),
                });
            }
        }
    }

    async fn send(&mut self, out: &[u8]) -> Result<(), ConnectError> {
        self.stream
            .send_all(out)
            .await
            .map_err(|source| ConnectError::Io {
                addr: self.addr.to_string(),
                source,
            })
    }

    async fn login(&mut self, params: &ConnectParams) -> Result<(), ConnectError> {
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (t, body) = self.read_message().await?;
            match t {
                tag::AUTHENTICATION => self.authenticate(params, &body, &mut scram).await?,
                tag::PARAMETER_STATUS => {
                    let (k, v) = backend::decode_parameter_status(&body)
                        .map_err(|e| self.protocol_error(e.to_string()))?;
                    self.server_params.push((k.to_owned(), v.to_owned()));
                }
                tag::BACKEND_KEY_DATA => {
                    self.backend_key = backend::decode_backend_key_data(&body)
                        .map_err(|e| self.protocol_error(e.to_string()))?;
                }
                tag::READY_FOR_QUERY => {
                    self.cancel = CancelHandle {
                        addr: self.addr.clone(),
                        pid: self.backend_key.0,
                        secret: self.backend_key.1,
                    };
                    return Ok(());
                }
                tag::ERROR_RESPONSE => {
                    let fields = ErrorFields::decode(&body)
                        .map_err(|e| self.protocol_error(e.to_string()))?;
                    return Err(ConnectError::Refused {
                        addr: self.addr.to_string(),
                        fields,
                    });
                }
                tag::NOTICE_RESPONSE | tag::NEGOTIATE_PROTOCOL_VERSION => {}
                other => {
                    return Err(self.protocol_error(format!(
                        "unexpected message type {:?} during login",
                        other as char
                    )))
                }
            }
        }
    }

    async fn authenticate(
        &mut self,
        params: &ConnectParams,
        body: &[u8],
        scram: &mut Option<ScramSha256>,
    ) -> Result<(), ConnectError> {
        let mut r = MessageReader::new(body, "Authentication");
        let code = r.i32().map_err(|e| self.protocol_error(e.to_string()))?;
        let password = || {
            params
                .password
                .as_deref()
                .ok_or_else(|| ConnectError::PasswordRequired(params.addr.to_string()))
        };
        let mut out = BytesMut::new();
        match code {
            auth_code::OK => return Ok(()),
            auth_code::CLEARTEXT => {
                let mut payload = password()?.as_bytes().to_vec();
                payload.push(0);
                frontend::encode_password(&payload, &mut out);
            }
            auth_code::MD5 => {
                let salt: [u8; 4] = r
                    .bytes(4)
                    .map_err(|e| self.protocol_error(e.to_string()))?
                    .try_into()
                    .map_err(|_| self.protocol_error("md5 salt"))?;
                let hash = postgres_protocol::authentication::md5_hash(
                    params.user.as_bytes(),
                    password()?.as_bytes(),
                    salt,
                );
                let mut payload = hash.into_bytes();
                payload.push(0);
                frontend::encode_password(&payload, &mut out);
            }
            auth_code::SASL => {
                let offered = r
                    .rest()
                    .split(|&b| b == 0)
                    .any(|m| m == SCRAM_SHA_256.as_bytes());
                if !offered {
                    return Err(
                        self.protocol_error("server offers no SASL mechanism shardgate supports")
                    );
                }
                let client =
                    ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                frontend::encode_sasl_initial(SCRAM_SHA_256, client.message(), &mut out);
                *scram = Some(client);
            }
            auth_code::SASL_CONTINUE => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| self.protocol_error("SASL continue without SASL start"))?;
                client
                    .update(r.rest())
                    .map_err(|e| ConnectError::Protocol {
                        addr: params.addr.to_string(),
                        reason: format!("SCRAM: {e}"),
                    })?;
                frontend::encode_password(client.message(), &mut out);
            }
            auth_code::SASL_FINAL => {
                let client = scram
                    .as_mut()
                    .ok_or_else(|| self.protocol_error("SASL final without SASL start"))?;
                client
                    .finish(r.rest())
                    .map_err(|e| ConnectError::Protocol {
                        addr: params.addr.to_string(),
                        reason: format!("SCRAM server signature: {e}"),
                    })?;
                return Ok(());
            }
            other => {
                return Err(self.protocol_error(format!(
                    "server requested unsupported authentication method {other}"
                )))
            }
        }
        self.send(&out).await
    }

    /// Whether the server sent nothing unexpected while idle and the socket is open.
    ///
    /// Called before reusing an idle connection: a server that shut down or
    /// terminated the backend (`pg_terminate_backend`) has written an error
    /// or closed the socket. Peeks at the socket itself (one system call),
    /// not at tokio's cached readiness, which may be stale either way.
    pub fn looks_healthy(&mut self) -> bool {
        if self.broken || self.retire || !self.read_buf.is_empty() {
            return false;
        }
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        // The socket is non-blocking: nothing to read is WouldBlock.
        match socket2::SockRef::from(self.stream.tcp()).peek(&mut probe) {
            Ok(_) => false,
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        }
    }
}

/// SSLRequest and, when the server accepts, the TLS handshake, as
/// `params.tls` asks (libpq's `sslmode`).
async fn negotiate_tls(
    mut tcp: TcpStream,
    params: &ConnectParams,
) -> Result<crate::ServerStream, ConnectError> {
    use crate::TlsMode;
    let mode = params.tls.mode;
    if mode == TlsMode::Disable {
        return Ok(crate::ServerStream::Plain(tcp));
    }
    let addr = params.addr.to_string();
    let io_err = |source| ConnectError::Io {
        addr: addr.clone(),
        source,
    };
    // SSLRequest: length 8, code 80877103.
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .map_err(io_err)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(io_err)?;
    match (answer[0], mode) {
        (b'S', _) => {
            let host = params
                .addr
                .rsplit_once(':')
                .map_or(&*params.addr, |(h, _)| h)
                .trim_matches(|c| c == '[' || c == ']');
            params
                .tls
                .handshake(tcp, host)
                .await
                .map_err(|source| ConnectError::Tls {
                    addr: addr.clone(),
                    reason: source.to_string(),
                })
        }
        (b'N', TlsMode::Prefer) => Ok(crate::ServerStream::Plain(tcp)),
        (b'N', _) => Err(ConnectError::Tls {
            addr: addr.clone(),
            reason: "the server does not support TLS (server_tls requires it)".into(),
        }),
        (other, _) => Err(ConnectError::Protocol {
            addr: addr.clone(),
            reason: format!("unexpected answer {other:#x} to SSLRequest"),
        }),
    }
}

/// What is needed to cancel a query on a server connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelHandle {
    /// Node address, shared by every connection of a pool (so comparing
    /// two handles' nodes compares pointers).
    pub addr: Arc<str>,
    /// Backend process id.
    pub pid: i32,
    /// Backend secret.
    pub secret: i32,
}

impl CancelHandle {
    /// Opens a new connection to the node and sends the CancelRequest.
    pub async fn cancel(&self) -> io::Result<()> {
        let mut stream = TcpStream::connect(&*self.addr).await?;
        let mut out = BytesMut::new();
        shardgate_protocol::startup::encode_cancel(self.pid, self.secret, &mut out);
        stream.write_all(&out).await?;
        // The server closes the connection once it has handled the request.
        let mut sink = [0u8; 16];
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut sink)).await;
        Ok(())
    }
}

//! One client session after login: reads client messages, lends it a server
//! connection for each transaction (or the whole session), relays responses.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use shardgate_pool::{ConnectError, Pool, PoolError, PooledConn};
use shardgate_protocol::backend::{self, tag as btag};
use shardgate_protocol::frontend::{self, tag, Bind, DescribeOrClose, Parse, Target};
use shardgate_protocol::{Header, PgError, ProtocolError};
use shardgate_router::lexer::{first_keyword, split_statements};
use shardgate_router::SessionCommand;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::auth::User;
use crate::cancel::CancelKey;
use crate::client_io::ClientStream;
use crate::config::PoolMode;
use crate::prepared::{ClientStatements, Statement};
use crate::proxy::Proxy;
use crate::relay::{relay, Exchange, Expect, RelayContext};
use crate::state::SessionState;

/// SQL the server rejects, sent to fail a transaction where the proxy itself
/// reports an error, so the client and server agree the transaction failed.
const FAILING_SQL: &str = "shardgate proxy error";

/// Why a session ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client socket failed or closed.
    #[error("client connection: {0}")]
    ClientIo(#[from] std::io::Error),
    /// The client broke the protocol.
    #[error("client protocol violation: {0}")]
    ClientProtocol(#[from] ProtocolError),
    /// The session must end with this error sent to the client.
    #[error("{0}")]
    Fatal(PgError),
}

/// A server connection lent to this session.
struct Backend {
    conn: PooledConn,
    ex: Exchange,
}

enum Event {
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
    Shutdown,
}

#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Which protocol a failed request came from, to finish the reply correctly.
#[derive(Clone, Copy)]
enum Proto {
    Simple,
    Extended,
}

/// A logged-in client.
pub struct Session {
    proxy: Arc<Proxy>,
    user: Arc<User>,
    client: ClientStream,
    cbuf: BytesMut,
    cout: BytesMut,
    sout: BytesMut,
    backend: Option<Backend>,
    pool: Pool,
    state: SessionState,
    statements: ClientStatements,
    cancel: CancelKey,
    mode: PoolMode,
    max_message: usize,
    shutdown: watch::Receiver<bool>,
    /// The proxy refused a message of the current extended batch: drop
    /// client messages until Sync.
    skip_until_sync: bool,
    /// The unnamed statement is a SET/RESET (session tracking in extended protocol).
    unnamed_set: Option<String>,
    /// Portal bound to a SET/RESET statement.
    bound_set: Option<(String, String)>,
    /// Login finished (errors of hidden queries are then only logged).
    logged_in: bool,
    /// The expectation queue of the last released connection, kept so
    /// lending a connection allocates nothing.
    spare_queue: std::collections::VecDeque<Expect>,
}

impl Session {
    /// A session for an authenticated client.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        proxy: Arc<Proxy>,
        user: Arc<User>,
        client: ClientStream,
        cbuf: BytesMut,
        pool: Pool,
        state: SessionState,
        cancel: CancelKey,
    ) -> Session {
        let mode = proxy.config.proxy.pool_mode;
        let max_message = proxy.config.proxy.max_message_size;
        let shutdown = proxy.shutdown.clone();
        Session {
            proxy,
            user,
            client,
            cbuf,
            cout: BytesMut::with_capacity(4096),
            sout: BytesMut::with_capacity(1024),
            backend: None,
            pool,
            state,
            statements: ClientStatements::default(),
            cancel,
            mode,
            max_message,
            shutdown,
            skip_until_sync: false,
            unnamed_set: None,
            bound_set: None,
            logged_in: false,
            spare_queue: std::collections::VecDeque::with_capacity(8),
        }
    }

    /// Finishes the login: applies the client's session state on a server
    /// connection (which also proves the database exists) and sends
    /// ParameterStatus, BackendKeyData and ReadyForQuery.
    async fn login(&mut self) -> Result<(), SessionError> {
        let fingerprint = self.state.fingerprint();
        let params = match self.proxy.login_params(self.pool.key(), fingerprint) {
            Some(params) => params,
            None => {
                let params = self.login_on_server().await?;
                self.proxy
                    .remember_login_params(self.pool.key(), fingerprint, params.clone());
                Arc::new(params)
            }
        };
        self.cout.clear();
        for (k, v) in params.iter() {
            backend::parameter_status(k, v, &mut self.cout);
        }
        backend::backend_key_data(self.cancel.pid, self.cancel.secret, &mut self.cout);
        backend::ready_for_query(b'I', &mut self.cout);
        self.flush_client().await?;
        self.logged_in = true;
        Ok(())
    }

    /// Applies the client's session state on a server connection (which also
    /// proves the database exists and the settings are valid) and returns the
    /// ParameterStatus values the client should see.
    async fn login_on_server(&mut self) -> Result<Vec<(String, String)>, SessionError> {
        let conn = self.pool.get().await.map_err(|e| {
            let mut pg = pool_error(&e);
            pg.severity = shardgate_protocol::Severity::Fatal;
            SessionError::Fatal(pg)
        })?;
        self.install(conn);
        self.flush_server().await?;
        // Wait for the replayed state (if any) to be acknowledged.
        while self
            .backend
            .as_ref()
            .is_some_and(|b| !b.ex.expect.is_empty())
        {
            match self.wait().await {
                Event::Server(Ok(n)) if n > 0 => self.handle_server_input()?,
                Event::Server(_) => {
                    return Err(SessionError::Fatal(PgError::fatal(
                        "08006",
                        "server closed the connection during login",
                    )))
                }
                Event::Client(Ok(n)) if n > 0 => {}
                Event::Client(Ok(_)) => {
                    return Err(SessionError::ClientIo(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    ))
                }
                Event::Client(Err(e)) => return Err(SessionError::ClientIo(e)),
                Event::Shutdown => {}
            }
        }
        let b = self.backend.as_mut().expect("attached during login");
        if let Some(err) = b.ex.hidden_error.take() {
            b.conn.broken = true;
            let code = static_code(&err.code);
            return Err(SessionError::Fatal(PgError::fatal(code, err.message)));
        }
        let params = b.conn.server_params.clone();
        self.cout.clear();
        self.maybe_release();
        Ok(params)
    }

    /// Logs the client in and serves it until it leaves; returns why it ended.
    pub async fn run(mut self) -> Result<(), SessionError> {
        let result = match self.login().await {
            Ok(()) => self.serve().await,
            Err(e) => Err(e),
        };
        let result = match result {
            Err(SessionError::ClientProtocol(e)) => {
                let mut out = BytesMut::new();
                e.to_pg_error().encode(&mut out);
                let _ = self.client.write_all(&out).await;
                Err(SessionError::ClientProtocol(e))
            }
            Err(SessionError::Fatal(e)) => {
                let mut out = std::mem::take(&mut self.cout);
                e.encode(&mut out);
                let _ = self.client.write_all(&out).await;
                let _ = self.client.flush().await;
                Err(SessionError::Fatal(e))
            }
            other => other,
        };
        self.detach_at_end().await;
        let _ = self.client.shutdown().await;
        result
    }

    async fn serve(&mut self) -> Result<(), SessionError> {
        loop {
            self.flush_client().await?;
            if self.backend.is_none() && self.proxy.shutting_down() {
                return Err(SessionError::Fatal(shutdown_error()));
            }
            match self.wait().await {
                Event::Client(Ok(0)) if self.cbuf.is_empty() => return Ok(()),
                Event::Client(Ok(0)) => return Err(ProtocolError::Incomplete.into()),
                Event::Client(Ok(_)) => {
                    if self.handle_client_input().await? == Flow::Stop {
                        return Ok(());
                    }
                }
                Event::Client(Err(e)) => return Err(SessionError::ClientIo(e)),
                Event::Server(Ok(0)) => {
                    self.server_lost("server closed the connection unexpectedly".into())?
                }
                Event::Server(Ok(_)) => self.handle_server_input()?,
                Event::Server(Err(e)) => self.server_lost(e.to_string())?,
                Event::Shutdown => {}
            }
            self.maybe_release();
        }
    }

    async fn wait(&mut self) -> Event {
        reserve(&mut self.cbuf);
        let client = &mut self.client;
        let cbuf = &mut self.cbuf;
        match &mut self.backend {
            Some(b) => {
                let conn = &mut *b.conn;
                reserve(&mut conn.read_buf);
                tokio::select! {
                    biased;
                    r = conn.stream.read_buf(&mut conn.read_buf) => Event::Server(r),
                    r = client.read_buf(cbuf) => Event::Client(r),
                }
            }
            None => {
                let shutdown = &mut self.shutdown;
                tokio::select! {
                    r = client.read_buf(cbuf) => Event::Client(r),
                    _ = shutdown.changed() => Event::Shutdown,
                }
            }
        }
    }

    async fn flush_client(&mut self) -> Result<(), SessionError> {
        if !self.cout.is_empty() {
            self.client.write_all(&self.cout).await?;
            self.cout.clear();
            if self.client.is_tls() {
                self.client.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush_server(&mut self) -> Result<(), SessionError> {
        if self.sout.is_empty() {
            return Ok(());
        }
        let Some(b) = self.backend.as_mut() else {
            self.sout.clear();
            return Ok(());
        };
        let written = b.conn.stream.write_all(&self.sout).await;
        self.sout.clear();
        if let Err(e) = written {
            self.server_lost(e.to_string())?;
        }
        Ok(())
    }

    // ---- client side -------------------------------------------------------

    async fn handle_client_input(&mut self) -> Result<Flow, SessionError> {
        let mut buf = std::mem::take(&mut self.cbuf);
        let result = self.process_client_buffer(&mut buf).await;
        self.cbuf = buf;
        let flow = result?;
        self.flush_server().await?;
        Ok(flow)
    }

    async fn process_client_buffer(&mut self, buf: &mut BytesMut) -> Result<Flow, SessionError> {
        while let Some(h) = Header::complete(buf, self.max_message)? {
            let msg = buf.split_to(h.total).freeze();
            if self.on_client_message(h.tag, msg).await? == Flow::Stop {
                return Ok(Flow::Stop);
            }
            if self.sout.len() >= 64 * 1024 {
                self.flush_server().await?;
            }
        }
        // Reject an oversized message as soon as its header is in.
        Header::peek(buf, self.max_message)?;
        Ok(Flow::Continue)
    }

    async fn on_client_message(&mut self, t: u8, msg: Bytes) -> Result<Flow, SessionError> {
        let body = &msg[5..];
        frontend::validate(t, body)?;
        if self.skip_until_sync && t != tag::SYNC && t != tag::TERMINATE {
            return Ok(Flow::Continue);
        }
        match t {
            tag::QUERY => self.on_query(&msg).await?,
            tag::PARSE => self.on_parse(&msg).await?,
            tag::BIND => self.on_bind(&msg).await?,
            tag::DESCRIBE => self.on_describe(&msg).await?,
            tag::CLOSE => self.on_close(&msg).await?,
            tag::EXECUTE => {
                if self.attach(Proto::Extended).await? {
                    let portal = frontend::Execute::decode(body)?.portal;
                    let set_stmt = match self.bound_set.take() {
                        Some((p, stmt)) if p == portal => Some(stmt),
                        _ => None,
                    };
                    self.forward(&msg, Expect::Execute { set_stmt });
                }
            }
            tag::FLUSH => {
                if let Some(b) = self.backend.as_mut() {
                    b.ex.unsynced = true;
                    self.sout.extend_from_slice(&msg);
                }
            }
            tag::SYNC => self.on_sync(&msg),
            tag::TERMINATE => return Ok(Flow::Stop),
            tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => {
                // Outside COPY these are ignored, as Postgres does.
                if self.backend.is_some() {
                    self.sout.extend_from_slice(&msg);
                }
            }
            tag::FUNCTION_CALL => {
                if self.attach(Proto::Simple).await? {
                    self.forward(&msg, Expect::Query { forward: true });
                }
            }
            other => return Err(ProtocolError::UnknownType(other).into()),
        }
        Ok(Flow::Continue)
    }

    /// Appends a client message for the server with its expectation.
    fn forward(&mut self, msg: &[u8], e: Expect) {
        let b = self.backend.as_mut().expect("attached before forwarding");
        if !matches!(e, Expect::Query { .. } | Expect::Sync) {
            b.ex.unsynced = true;
        }
        self.sout.extend_from_slice(msg);
        b.ex.push(e, &mut self.cout);
    }

    async fn on_query(&mut self, msg: &[u8]) -> Result<(), SessionError> {
        let sql = frontend::parse_query(&msg[5..])?;
        if self.mode == PoolMode::Transaction {
            if self.answer_locally(sql) {
                return Ok(());
            }
            self.state.note_query(sql);
        }
        if self.attach(Proto::Simple).await? {
            self.forward(msg, Expect::Query { forward: true });
        }
        Ok(())
    }

    /// Handles `DISCARD ALL` and `DEALLOCATE` in transaction pooling, which
    /// concern the client's own statements and state, not the server's.
    fn answer_locally(&mut self, sql: &str) -> bool {
        if !first_keyword(sql).is_some_and(|k| {
            k.eq_ignore_ascii_case("discard") || k.eq_ignore_ascii_case("deallocate")
        }) {
            return false;
        }
        let stmts = split_statements(sql);
        let [stmt] = stmts.as_slice() else {
            return false;
        };
        let Some(cmd) = SessionCommand::parse(stmt) else {
            return false;
        };
        let status = match &self.backend {
            None => b'I',
            Some(b) if b.ex.expect.is_empty() && b.ex.status == b'T' => b'T',
            Some(_) => return false,
        };
        let mut out = BytesMut::new();
        match cmd {
            SessionCommand::DiscardAll if status == b'I' => {
                self.statements.clear();
                self.state.discard_all();
                backend::command_complete("DISCARD ALL", &mut out);
            }
            SessionCommand::Deallocate(None) => {
                self.statements.clear();
                backend::command_complete("DEALLOCATE ALL", &mut out);
            }
            SessionCommand::Deallocate(Some(name)) => {
                if self.statements.remove(&name) {
                    backend::command_complete("DEALLOCATE", &mut out);
                } else {
                    PgError::error(
                        "26000",
                        format!("prepared statement \"{name}\" does not exist"),
                    )
                    .encode(&mut out);
                    if status == b'T' {
                        // Postgres would abort the transaction; let the server do it.
                        return self.fail_in_server(out.freeze(), Proto::Simple);
                    }
                }
            }
            _ => return false,
        }
        backend::ready_for_query(status, &mut out);
        self.cout.extend_from_slice(&out);
        true
    }

    async fn on_parse(&mut self, msg: &[u8]) -> Result<(), SessionError> {
        let p = Parse::decode(&msg[5..])?;
        if self.mode == PoolMode::Session || p.name.is_empty() {
            self.unnamed_set = is_set_statement(p.query).then(|| p.query.to_owned());
            if self.attach(Proto::Extended).await? {
                self.forward(
                    msg,
                    Expect::Parse {
                        forward: true,
                        stmt: None,
                        client_name: None,
                    },
                );
            }
            return Ok(());
        }
        if self.statements.contains(p.name) {
            let mut err = BytesMut::new();
            PgError::error(
                "42P05",
                format!("prepared statement \"{}\" already exists", p.name),
            )
            .encode(&mut err);
            self.refuse_extended(err.freeze()).await?;
            return Ok(());
        }
        let stmt = self.proxy.statements.intern(p.query, p.param_types);
        let name = p.name.to_owned();
        if self.backend.is_none() && stmt.is_validated() {
            // Known good statement and no transaction: no server needed until
            // it is bound. (A client such as pgbench that prepares with a
            // blocking call while its other connections hold every server
            // connection in open transactions would otherwise deadlock.)
            self.statements.insert(&name, stmt);
            backend::empty(btag::PARSE_COMPLETE, &mut self.cout);
            return Ok(());
        }
        if !self.attach(Proto::Extended).await? {
            return Ok(());
        }
        self.statements.insert(&name, stmt.clone());
        let b = self.backend.as_mut().expect("attached");
        if b.conn.prepared.touch(stmt.id) {
            let mut bytes = BytesMut::new();
            backend::empty(btag::PARSE_COMPLETE, &mut bytes);
            b.ex.unsynced = true;
            b.ex.push(
                Expect::Synthetic {
                    bytes: bytes.freeze(),
                    client_name: Some(name),
                },
                &mut self.cout,
            );
        } else {
            self.prepare_on_server(&stmt, true, Some(name));
        }
        Ok(())
    }

    /// Sends Parse for a proxy-named statement on the attached connection.
    fn prepare_on_server(
        &mut self,
        stmt: &Arc<Statement>,
        forward: bool,
        client_name: Option<String>,
    ) {
        let b = self.backend.as_mut().expect("attached");
        if let Some(evicted) = b.conn.prepared.insert(stmt.id) {
            let mut close = BytesMut::new();
            let target = DescribeOrClose {
                target: Target::Statement,
                name: "",
            };
            target.encode_as(tag::CLOSE, &format!("sg_{evicted}"), &mut close);
            self.sout.extend_from_slice(&close);
            b.ex.push(Expect::Close { forward: false }, &mut self.cout);
        }
        frontend::encode_parse(
            &stmt.server_name,
            &stmt.query,
            &stmt.param_types,
            &mut self.sout,
        );
        b.ex.unsynced = true;
        b.ex.push(
            Expect::Parse {
                forward,
                stmt: Some(stmt.clone()),
                client_name,
            },
            &mut self.cout,
        );
    }

    /// Makes sure the client's statement `name` exists on the attached
    /// connection; returns its server name, or `None` if the client never
    /// prepared it (the server then reports the error itself).
    fn ensure_prepared(&mut self, name: &str) -> Option<Arc<Statement>> {
        let stmt = self.statements.get(name)?.clone();
        let b = self.backend.as_mut().expect("attached");
        if !b.conn.prepared.touch(stmt.id) {
            self.prepare_on_server(&stmt, false, None);
        }
        Some(stmt)
    }

    async fn on_bind(&mut self, msg: &[u8]) -> Result<(), SessionError> {
        let bind = Bind::decode(&msg[5..])?;
        if !self.attach(Proto::Extended).await? {
            return Ok(());
        }
        if self.mode == PoolMode::Session || bind.statement.is_empty() {
            self.bound_set = self
                .unnamed_set
                .as_ref()
                .filter(|_| bind.statement.is_empty())
                .map(|s| (bind.portal.to_owned(), s.clone()));
            self.forward(msg, Expect::Bind);
            return Ok(());
        }
        match self.ensure_prepared(bind.statement) {
            Some(stmt) => {
                self.bound_set = is_set_statement(&stmt.query)
                    .then(|| (bind.portal.to_owned(), stmt.query.clone()));
                let mut out = BytesMut::with_capacity(msg.len() + 8);
                bind.encode_with_statement(&stmt.server_name, &mut out);
                self.forward(&out, Expect::Bind);
            }
            None => self.forward(msg, Expect::Bind),
        }
        Ok(())
    }

    async fn on_describe(&mut self, msg: &[u8]) -> Result<(), SessionError> {
        let d = DescribeOrClose::decode(&msg[5..], "Describe")?;
        if !self.attach(Proto::Extended).await? {
            return Ok(());
        }
        if self.mode == PoolMode::Transaction && d.target == Target::Statement && !d.name.is_empty()
        {
            if let Some(stmt) = self.ensure_prepared(d.name) {
                let mut out = BytesMut::new();
                d.encode_as(tag::DESCRIBE, &stmt.server_name, &mut out);
                self.forward(&out, Expect::Describe);
                return Ok(());
            }
        }
        self.forward(msg, Expect::Describe);
        Ok(())
    }

    async fn on_close(&mut self, msg: &[u8]) -> Result<(), SessionError> {
        let c = DescribeOrClose::decode(&msg[5..], "Close")?;
        let local = self.mode == PoolMode::Transaction
            && c.target == Target::Statement
            && !c.name.is_empty();
        if local {
            self.statements.remove(c.name);
        }
        if local || self.backend.is_none() {
            // Nothing to close on a server: answer in order.
            let mut bytes = BytesMut::new();
            backend::empty(btag::CLOSE_COMPLETE, &mut bytes);
            match self.backend.as_mut() {
                Some(b) => {
                    b.ex.unsynced = true;
                    b.ex.push(
                        Expect::Synthetic {
                            bytes: bytes.freeze(),
                            client_name: None,
                        },
                        &mut self.cout,
                    );
                }
                None => self.cout.extend_from_slice(&bytes),
            }
            return Ok(());
        }
        self.forward(msg, Expect::Close { forward: true });
        Ok(())
    }

    fn on_sync(&mut self, msg: &[u8]) {
        self.skip_until_sync = false;
        match self.backend.as_mut() {
            Some(b) => {
                b.ex.unsynced = false;
                self.sout.extend_from_slice(msg);
                b.ex.push(Expect::Sync, &mut self.cout);
            }
            None => backend::ready_for_query(b'I', &mut self.cout),
        }
    }

    /// Reports a proxy-detected error inside an extended batch.
    async fn refuse_extended(&mut self, err: Bytes) -> Result<(), SessionError> {
        if self.backend.is_some() {
            self.fail_in_server(err, Proto::Extended);
        } else {
            self.cout.extend_from_slice(&err);
            self.skip_until_sync = true;
        }
        Ok(())
    }

    /// Sends the server a statement that fails, replacing its error with
    /// `err`, so the transaction fails on the server exactly as the client is told.
    fn fail_in_server(&mut self, err: Bytes, proto: Proto) -> bool {
        let b = self.backend.as_mut().expect("attached");
        match proto {
            Proto::Simple => {
                frontend::encode_query(FAILING_SQL, &mut self.sout);
                b.ex.push(Expect::QueryError(err), &mut self.cout);
            }
            Proto::Extended => {
                frontend::encode_parse("", FAILING_SQL, &[], &mut self.sout);
                b.ex.unsynced = true;
                b.ex.push(Expect::ParseError(err), &mut self.cout);
                self.skip_until_sync = true;
            }
        }
        true
    }

    // ---- server side -------------------------------------------------------

    /// Makes sure a server connection is attached. On failure the client has
    /// been sent the error (and, for a simple query, ReadyForQuery) and
    /// `false` is returned.
    async fn attach(&mut self, proto: Proto) -> Result<bool, SessionError> {
        if self.backend.is_some() {
            return Ok(true);
        }
        match self.pool.get().await {
            Ok(conn) => {
                self.install(conn);
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(user = %self.user.config.name, error = %e, "no server connection");
                pool_error(&e).encode(&mut self.cout);
                match proto {
                    Proto::Simple => backend::ready_for_query(b'I', &mut self.cout),
                    Proto::Extended => self.skip_until_sync = true,
                }
                Ok(false)
            }
        }
    }

    /// Adopts a server connection: replays session state it lacks.
    fn install(&mut self, mut conn: PooledConn) {
        let mut ex = Exchange {
            expect: std::mem::take(&mut self.spare_queue),
            ..Exchange::default()
        };
        let wanted = self.state.fingerprint();
        if conn.state_fingerprint != wanted {
            let sql = self.state.replay_sql(conn.state_fingerprint);
            frontend::encode_query(&sql, &mut self.sout);
            ex.expect.push_back(Expect::Query { forward: false });
            conn.state_fingerprint = wanted;
        }
        self.cancel.slot.set_one(&conn.cancel);
        self.backend = Some(Backend { conn, ex });
    }

    fn handle_server_input(&mut self) -> Result<(), SessionError> {
        let Some(b) = self.backend.as_mut() else {
            return Ok(());
        };
        let mut cx = RelayContext {
            cout: &mut self.cout,
            state: &mut self.state,
            statements: &mut self.statements,
        };
        if let Err(e) = relay(&mut b.conn, &mut b.ex, &mut cx) {
            tracing::error!(server = %b.conn.addr, error = %e, "server broke the protocol");
            return self.server_lost(format!("protocol error from server: {e}"));
        }
        if b.ex.skipping && !b.ex.unsynced {
            // The client's Sync is already queued; nothing to skip.
            b.ex.skipping = false;
        } else if b.ex.skipping {
            self.skip_until_sync = true;
        }
        if let Some(err) = b.ex.hidden_error.take_if(|_| self.logged_in) {
            tracing::warn!(server = %b.conn.addr, code = %err.code, message = %err.message, "replaying session state failed");
            b.conn.state_fingerprint = crate::state::DIRTY;
        }
        if b.conn.broken && b.ex.expect.is_empty() {
            self.server_lost("server ended the session".into())?;
        }
        Ok(())
    }

    /// Returns the server connection to its pool when the transaction is over.
    fn maybe_release(&mut self) {
        if self.mode != PoolMode::Transaction {
            return;
        }
        if let Some(b) = &self.backend {
            if b.ex.idle() && self.sout.is_empty() && b.conn.read_buf.is_empty() {
                self.cancel.slot.clear();
                if let Some(mut b) = self.backend.take() {
                    self.spare_queue = std::mem::take(&mut b.ex.expect);
                }
            }
        }
    }

    /// The server connection failed. Outside a transaction the client gets an
    /// error and may go on; inside one the session ends, as with Postgres.
    fn server_lost(&mut self, why: String) -> Result<(), SessionError> {
        let Some(mut b) = self.backend.take() else {
            return Ok(());
        };
        self.cancel.slot.clear();
        b.conn.broken = true;
        tracing::warn!(server = %b.conn.addr, user = %self.user.config.name, reason = %why, "server connection lost");
        let err = PgError::error(
            "08006",
            format!("connection to server {} was lost: {why}", b.conn.addr),
        )
        .with_hint("The transaction, if any, was rolled back. Retry it.");
        if b.ex.status != b'I' {
            return Err(SessionError::Fatal(PgError {
                severity: shardgate_protocol::Severity::Fatal,
                ..err
            }));
        }
        err.encode(&mut self.cout);
        for e in &b.ex.expect {
            if matches!(
                e,
                Expect::Sync | Expect::Query { forward: true } | Expect::QueryError(_)
            ) {
                backend::ready_for_query(b'I', &mut self.cout);
            }
        }
        if b.ex.unsynced {
            self.skip_until_sync = true;
        }
        self.sout.clear();
        Ok(())
    }

    /// The client is gone: return a clean connection, discard any other.
    async fn detach_at_end(&mut self) {
        self.cancel.slot.clear();
        let Some(mut b) = self.backend.take() else {
            return;
        };
        if !b.ex.idle() || !b.conn.read_buf.is_empty() {
            if !b.ex.expect.is_empty() {
                let handle = b.conn.cancel.clone();
                tokio::spawn(async move {
                    let _ = handle.cancel().await;
                });
            }
            b.conn.broken = true;
            tracing::info!(user = %self.user.config.name, "client left mid-transaction; server connection discarded (rolled back)");
            return;
        }
        if self.mode == PoolMode::Session {
            reset_session_connection(&mut b.conn).await;
        }
    }
}

/// Cleans a session-pooled connection for the next client, or marks it broken.
async fn reset_session_connection(conn: &mut PooledConn) {
    let conn: &mut shardgate_pool::ServerConn = conn;
    let mut out = BytesMut::new();
    frontend::encode_query("DISCARD ALL", &mut out);
    let ok = tokio::time::timeout(Duration::from_secs(2), async {
        conn.stream.write_all(&out).await.ok()?;
        loop {
            reserve(&mut conn.read_buf);
            if conn.stream.read_buf(&mut conn.read_buf).await.ok()? == 0 {
                return None;
            }
            while let Some(h) = Header::complete(&conn.read_buf, 1 << 20).ok()? {
                let msg = conn.read_buf.split_to(h.total);
                if h.tag == btag::READY_FOR_QUERY {
                    return (msg.get(5) == Some(&b'I') && conn.read_buf.is_empty()).then_some(());
                }
            }
        }
    })
    .await;
    if matches!(ok, Ok(Some(()))) {
        conn.prepared.clear();
        conn.state_fingerprint = crate::state::FRESH;
    } else {
        conn.broken = true;
    }
}

#[inline]
fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 2048 {
        buf.reserve(16 * 1024);
    }
}

fn is_set_statement(sql: &str) -> bool {
    first_keyword(sql)
        .is_some_and(|k| k.eq_ignore_ascii_case("set") || k.eq_ignore_ascii_case("reset"))
}

fn shutdown_error() -> PgError {
    PgError::fatal(
        "57P01",
        "terminating connection because shardgate is shutting down",
    )
}

/// SQLSTATEs are five ASCII characters; anything else becomes XX000.
fn static_code(code: &str) -> &'static str {
    // Leaking is bounded: only the few distinct codes servers send at login.
    static CODES: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<&'static str>>> =
        std::sync::OnceLock::new();
    if code.len() != 5 || !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return "XX000";
    }
    let set = CODES.get_or_init(Default::default);
    let mut set = set.lock().expect("sqlstate set lock");
    if let Some(c) = set.get(code) {
        return c;
    }
    let leaked: &'static str = Box::leak(code.to_owned().into_boxed_str());
    set.insert(leaked);
    leaked
}

/// What a client is told when no server connection could be had.
pub fn pool_error(e: &PoolError) -> PgError {
    match e {
        PoolError::Timeout { addr, timeout_ms, size } => PgError::error(
            "53300",
            format!(
                "shardgate: no server connection to {addr} became free within pool_timeout ({timeout_ms} ms); all {size} are busy"
            ),
        )
        .with_hint("Retry, raise pool_size or pool_timeout in proxy.toml, or shorten long transactions."),
        PoolError::Connect(ConnectError::Refused { fields, .. }) => {
            PgError::error(static_code(&fields.code), fields.message.clone())
        }
        PoolError::Connect(c) => PgError::error("08006", format!("shardgate: {c}"))
            .with_hint("Check that the server is running and reachable, and the [[shards]] addresses in proxy.toml."),
        PoolError::Closed(_) => shutdown_error(),
    }
}

//! Finishing the login: ParameterStatus, BackendKeyData, ReadyForQuery.

use std::sync::Arc;

use shardgate_protocol::backend;
use shardgate_protocol::{PgError, Severity};

use super::{Event, Session, SessionError};
use crate::routing::Want;

impl Session {
    /// Sends the client what a server sends after authentication. The
    /// ParameterStatus values come from a server connection on which the
    /// client's startup settings were applied (which also proves the database
    /// exists and the settings are valid), or from an earlier login with the
    /// same settings, which then needs no server connection at all.
    pub(super) async fn login(&mut self) -> Result<(), SessionError> {
        let fingerprint = self.state.fingerprint();
        let key = (
            self.database.clone(),
            self.user.config.name.clone(),
            fingerprint,
        );
        let params = match self.runtime.login_params(&key) {
            Some(params) => params,
            None => {
                let params = self.login_on_server().await?;
                self.runtime.remember_login_params(key, params.clone());
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

    async fn login_on_server(&mut self) -> Result<Vec<(String, String)>, SessionError> {
        // Any healthy node will do; prefer the primary.
        self.target = self.default_shard();
        let want = if self.shards[self.target]
            .writer()
            .is_usable(self.snap.topology.now_ms())
            || !self.route_reads
        {
            Want::Primary
        } else {
            Want::Read(self.routing.level())
        };
        let (conn, choice) = self.checkout(self.target, want).await.map_err(|mut e| {
            e.severity = Severity::Fatal;
            SessionError::Fatal(e)
        })?;
        self.install(conn, choice, want, self.target);
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
                // Nobody listens during login.
                Event::Shutdown | Event::Notification(_) => {}
                Event::Timeout(t) => self.on_timeout(t)?,
            }
        }
        let b = self.backend.as_mut().expect("attached during login");
        if let Some(err) = b.ex.hidden_error.take() {
            b.conn.broken = true;
            return Err(SessionError::Fatal(PgError::fatal(&err.code, err.message)));
        }
        let params = b.conn.server_params.clone();
        self.cout.clear();
        self.maybe_release();
        Ok(params)
    }
}

//! `query_timeout`, `idle_transaction_timeout` and `client_idle_timeout`:
//! when a session's wait for the next message ends by itself.

use tokio::time::Instant;

use shardgate_protocol::PgError;

use super::{Session, SessionError};

/// Why a wait ended without a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timeout {
    /// A statement ran for `query_timeout`: it is cancelled at the server.
    Query,
    /// The server did not end a cancelled statement within
    /// [`CANCEL_GRACE`]: the connection is given up and the client gets
    /// `57014` from the proxy.
    CancelIgnored,
    /// The client sat in a transaction for `idle_transaction_timeout`.
    IdleInTransaction,
    /// The client sat outside a transaction for `client_idle_timeout`.
    ClientIdle,
}

/// How long a server has to end a statement after its cancel request
/// (never longer than `query_timeout` itself). A server that does not (its
/// network went silent, it is frozen) no longer holds the client.
pub(super) const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Sleeps until `deadline`; forever without one.
pub(super) async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl Session {
    /// The deadline of the coming wait and what it means.
    pub(super) fn next_timeout(&mut self) -> Option<(Instant, Timeout)> {
        let p = &self.snap.config.proxy;
        let (query, in_tx, idle) = (
            p.query_timeout,
            p.idle_transaction_timeout,
            p.client_idle_timeout,
        );
        if query.is_zero() && in_tx.is_zero() && idle.is_zero() {
            return None;
        }
        let now = Instant::now();
        let running = self
            .backend
            .as_ref()
            .is_some_and(|b| !b.ex.expect.is_empty() && !b.ex.copy_in);
        if running {
            let started = *self.query_started.get_or_insert(now);
            return (!query.is_zero()).then(|| {
                if self.query_cancelled {
                    (
                        started + query + query.min(CANCEL_GRACE),
                        Timeout::CancelIgnored,
                    )
                } else {
                    (started + query, Timeout::Query)
                }
            });
        }
        self.query_started = None;
        self.query_cancelled = false;
        if self.begin_deferred || self.client_status() != b'I' {
            (!in_tx.is_zero()).then(|| (now + in_tx, Timeout::IdleInTransaction))
        } else {
            (!idle.is_zero()).then(|| (now + idle, Timeout::ClientIdle))
        }
    }

    /// Acts on an expired deadline: a running statement is cancelled at
    /// its server (which answers `57014`); an idle client is disconnected.
    pub(super) fn on_timeout(&mut self, t: Timeout) -> Result<(), SessionError> {
        let p = &self.snap.config.proxy;
        match t {
            Timeout::Query => {
                self.query_cancelled = true;
                if let Some(b) = &self.backend {
                    let handle = b.conn.cancel.clone();
                    tracing::info!(user = %self.user.config.name, timeout_ms = p.query_timeout.as_millis() as u64, "statement cancelled: query_timeout");
                    tokio::spawn(async move {
                        let _ = handle.cancel().await;
                    });
                }
                Ok(())
            }
            Timeout::CancelIgnored => {
                tracing::warn!(user = %self.user.config.name, "the server did not end a statement cancelled for query_timeout; giving up its connection");
                if let Some(b) = self.backend.as_mut() {
                    // The client set a limit: the statement is not run again.
                    b.retry = None;
                }
                let why = format!(
                    "canceling statement due to statement timeout: the server did not answer within shardgate query_timeout = {} and its cancel",
                    crate::config::format_duration(p.query_timeout)
                );
                self.give_up_server(PgError::error("57014", why.clone()), why)
            }
            // The server connection of an open transaction is discarded
            // when the session ends (rolled back), so it is free again.
            Timeout::IdleInTransaction => Err(SessionError::Fatal(PgError::fatal(
                "25P03",
                format!(
                    "terminating connection due to idle-in-transaction timeout (shardgate idle_transaction_timeout = {})",
                    crate::config::format_duration(p.idle_transaction_timeout)
                ),
            ))),
            Timeout::ClientIdle => Err(SessionError::Fatal(PgError::fatal(
                "57P05",
                format!(
                    "terminating connection due to idle-session timeout (shardgate client_idle_timeout = {})",
                    crate::config::format_duration(p.client_idle_timeout)
                ),
            ))),
        }
    }
}

//! Connections of rebalancing jobs: one tokio-postgres client per node,
//! logged in as the monitor user (`routing.monitor_user`, by default the
//! first user's server login).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use shardgate_shardmap::{TableName, TableRule};
use tokio::sync::Notify;

use tokio_postgres::{AsyncMessage, Client, Config as PgConfig};

use super::RebalanceError;
use crate::config::Config;

/// A connection to one node and the task that drives it.
pub(super) struct Conn {
    /// The node (`host:port`).
    pub node: String,
    /// The client.
    pub client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    /// Connects to `node`'s database `database`.
    pub async fn open(config: &Config, node: &str, database: &str) -> Result<Conn, RebalanceError> {
        Conn::connect(config, node, database, |_| {}, || {}).await
    }

    /// Like [`Conn::open`]; `heard` is woken on every notification the
    /// connection receives (after a `LISTEN`).
    pub async fn open_listening(
        config: &Config,
        node: &str,
        database: &str,
        heard: Arc<Notify>,
    ) -> Result<Conn, RebalanceError> {
        let on_message = move |m: AsyncMessage| {
            if let AsyncMessage::Notification(_) = m {
                heard.notify_one();
            }
        };
        Conn::connect(config, node, database, on_message, || {}).await
    }

    /// Like [`Conn::open`]; `on_end` runs as soon as the connection is
    /// lost or closed.
    pub async fn open_watched(
        config: &Config,
        node: &str,
        database: &str,
        on_end: impl FnOnce() + Send + 'static,
    ) -> Result<Conn, RebalanceError> {
        Conn::connect(config, node, database, |_| {}, on_end).await
    }

    async fn connect(
        config: &Config,
        node: &str,
        database: &str,
        mut on_message: impl FnMut(AsyncMessage) + Send + 'static,
        on_end: impl FnOnce() + Send + 'static,
    ) -> Result<Conn, RebalanceError> {
        let (cfg, tls) = pg_config(config, node, database)?;
        let (client, mut conn) = cfg.connect(tls).await.map_err(|e| RebalanceError::Db {
            node: node.to_owned(),
            source: e,
        })?;
        let task = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(m)) = messages.next().await {
                on_message(m);
            }
            on_end();
        });
        Ok(Conn {
            node: node.to_owned(),
            client,
            task,
        })
    }

    /// Runs statements without results.
    pub async fn run(&self, sql: &str) -> Result<(), RebalanceError> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| self.err(e))
    }

    /// Streams every row of `rule`'s table: its key as text (`None` for
    /// NULL) and its size (`pg_column_size` of the row).
    pub async fn scan_keys(
        &self,
        rule: &TableRule,
        mut each: impl FnMut(Option<&str>, u64),
    ) -> Result<(), RebalanceError> {
        let sql = format!(
            "SELECT {}::text, pg_column_size(t.*)::int8 FROM {} t",
            TableName::new(None, &rule.column),
            rule.table
        );
        let rows = self
            .client
            .query_raw(
                sql.as_str(),
                std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>(),
            )
            .await
            .map_err(|e| self.err(e))?;
        futures_util::pin_mut!(rows);
        while let Some(row) = rows.next().await {
            let row = row.map_err(|e| self.err(e))?;
            each(
                row.get::<_, Option<&str>>(0),
                row.get::<_, i64>(1).max(0) as u64,
            );
        }
        Ok(())
    }

    /// Wraps a driver error with the node's name.
    pub fn err(&self, e: tokio_postgres::Error) -> RebalanceError {
        RebalanceError::Db {
            node: self.node.clone(),
            source: e,
        }
    }
}

/// The login the rebalancing jobs use: the monitor's, with TLS towards the
/// servers as `proxy.server_tls` says.
pub(super) fn login(
    config: &Config,
) -> Result<shardgate_jobs::monitor::MonitorConfig, RebalanceError> {
    let tls = crate::tls::server_tls(&config.proxy)
        .map_err(|e| RebalanceError::Invalid(e.to_string()))?;
    Ok(crate::runtime::monitor_config(config, tls))
}

/// The driver's settings for `node`'s database `database`, as the monitor
/// user, and the TLS to connect with.
fn pg_config(
    config: &Config,
    node: &str,
    database: &str,
) -> Result<(PgConfig, shardgate_pool::ServerTls), RebalanceError> {
    let m = login(config)?;
    let (host, port) = node
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| RebalanceError::Invalid(format!("{node} is not host:port")))?;
    let mut cfg = PgConfig::new();
    cfg.host(host)
        .port(port)
        .user(&m.user)
        .dbname(database)
        .application_name("shardgate-rebalance")
        .connect_timeout(Duration::from_secs(10))
        .ssl_mode(m.tls.ssl_mode());
    if let Some(pw) = &m.password {
        cfg.password(pw);
    }
    Ok((cfg, m.tls))
}

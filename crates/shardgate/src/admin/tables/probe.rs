//! Questions the admin tables ask each shard's primary (table sizes,
//! prepared transactions), over a short-lived connection with the
//! monitor's credentials and a time limit.

use std::time::Duration;

use tokio_postgres::SimpleQueryMessage;

use crate::runtime::Snapshot;

/// How long one shard may take to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `sql` (simple protocol) on `addr` in `database` (default: the
/// monitor's); rows as text cells, or why not.
pub async fn query(
    snap: &Snapshot,
    addr: &str,
    database: Option<&str>,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, String> {
    let m = snap.monitor_config();
    let (host, port) = addr.rsplit_once(':').ok_or("bad address")?;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(host)
        .port(port.parse().map_err(|_| "bad port")?)
        .user(&m.user)
        .dbname(database.unwrap_or(&m.database))
        .application_name("shardgate-admin")
        .connect_timeout(PROBE_TIMEOUT);
    if let Some(pw) = &m.password {
        cfg.password(pw);
    }
    let run = async {
        let client = m
            .tls
            .connect_pg(&mut cfg)
            .await
            .map_err(|e| e.to_string())?;
        client.simple_query(sql).await.map_err(|e| e.to_string())
    };
    let messages = tokio::time::timeout(PROBE_TIMEOUT, run)
        .await
        .map_err(|_| format!("{addr} did not answer within {} s", PROBE_TIMEOUT.as_secs()))??;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect())
}

/// A SQL string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

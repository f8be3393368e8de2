//! The durable metadata of rebalancing: schema `shardgate_meta` in
//! `sharding.rebalance_database` on `sharding.metadata_node` (by default
//! shard 0's primary). A shard map version
//! is written there before any proxy routes by it, so a restarted proxy
//! routes by the newest map the cluster has moved to, not by its file.

use tokio_postgres::Client;

use super::db::Conn;
use super::RebalanceError;
use crate::config::{Config, ShardConfig};

/// Creates the schema (idempotent).
const SCHEMA: &str = "
CREATE SCHEMA IF NOT EXISTS shardgate_meta;
CREATE TABLE IF NOT EXISTS shardgate_meta.shard_maps (
    version bigint PRIMARY KEY,
    shards text NOT NULL,
    job bigint,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS shardgate_meta.jobs (
    id bigserial PRIMARY KEY,
    kind text NOT NULL,
    args text NOT NULL,
    change text NOT NULL,
    phase text NOT NULL,
    error text,
    rows_copied bigint NOT NULL DEFAULT 0,
    bytes_copied bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE shardgate_meta.jobs ADD COLUMN IF NOT EXISTS owner text;
ALTER TABLE shardgate_meta.jobs ADD COLUMN IF NOT EXISTS hold text;
ALTER TABLE shardgate_meta.jobs ADD COLUMN IF NOT EXISTS mode text;
ALTER TABLE shardgate_meta.jobs ADD COLUMN IF NOT EXISTS from_shards text;
CREATE TABLE IF NOT EXISTS shardgate_meta.proxies (
    id text PRIMARY KEY,
    name text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    ack_job bigint,
    ack_hold text
);
ALTER TABLE shardgate_meta.proxies ADD COLUMN IF NOT EXISTS lock_key int;";

/// The channel every change of a job's hold or map is announced on.
pub(super) const CHANNEL: &str = "shardgate_meta";

/// First key of the session advisory lock each proxy's registry
/// connection holds (`pg_advisory_lock(LOCK_CLASS, proxies.lock_key)`).
pub(super) const LOCK_CLASS: i32 = 0x5347_4d45;

/// SQL: whether the proxy `owner` (a column or parameter) is alive: its
/// registry connection holds its advisory lock. A proxy that died lost it
/// with its connection; one that is stopped or cut off keeps it (until the
/// server drops the connection), so a move waits for it or gives up.
pub(super) fn alive(owner: &str) -> String {
    format!(
        "EXISTS (SELECT 1 FROM shardgate_meta.proxies p JOIN pg_locks l \
         ON l.locktype = 'advisory' AND l.classid = {LOCK_CLASS}::oid AND l.objid = p.lock_key::oid \
         AND l.objsubid = 2 AND l.granted \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         WHERE p.id = {owner})"
    )
}

/// Jobs that are neither done nor failed.
pub(super) const UNFINISHED: &str = "phase NOT IN ('done', 'failed')";

/// The shards of a map version as stored: one line per shard,
/// `primary|replica,replica|weight`, then `|arc,arc` when arcs are given to it.
pub fn encode_shards(shards: &[ShardConfig]) -> String {
    shards
        .iter()
        .map(|s| {
            let mut line = format!("{}|{}|{}", s.primary, s.replicas.join(","), s.weight);
            if !s.arcs.is_empty() {
                line.push('|');
                line.push_str(&s.arcs.join(","));
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The shards of a stored map version; `None` if the text is not one.
pub fn decode_shards(text: &str) -> Option<Vec<ShardConfig>> {
    text.lines()
        .map(|line| {
            let mut parts = line.split('|');
            let primary = parts.next()?.to_owned();
            let replicas = parts.next()?;
            let weight = parts.next()?.parse().ok()?;
            let arcs = parts
                .next()
                .unwrap_or("")
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect();
            Some(ShardConfig {
                arcs,
                primary,
                replicas: replicas
                    .split(',')
                    .filter(|r| !r.is_empty())
                    .map(str::to_owned)
                    .collect(),
                weight,
            })
        })
        .collect()
}

/// Whether two shard lists place rows alike: the same primaries, in order,
/// with the same weights and given arcs (replicas aside).
pub(super) fn same_placement(a: &[ShardConfig], b: &[ShardConfig]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.primary == y.primary && x.weight == y.weight && x.arcs == y.arcs)
}

/// The node holding `shardgate_meta`: `sharding.metadata_node`, by
/// default shard 0's primary.
pub(super) fn metadata_node(config: &Config) -> Result<&str, RebalanceError> {
    if !config.sharding.metadata_node.is_empty() {
        return Ok(&config.sharding.metadata_node);
    }
    config
        .shards
        .first()
        .map(|s| s.primary.as_str())
        .ok_or_else(|| RebalanceError::Invalid("no shards configured".into()))
}

/// A connection to the metadata node's `sharding.rebalance_database`.
pub(super) async fn open_node(config: &Config) -> Result<Conn, RebalanceError> {
    Conn::open(
        config,
        metadata_node(config)?,
        &config.sharding.rebalance_database,
    )
    .await
}

/// Whether the metadata schema has the proxies' registry (a proxy of this
/// version created it).
pub(super) async fn has_registry(conn: &Conn) -> Result<bool, RebalanceError> {
    Ok(conn
        .client
        .query_one(
            "SELECT to_regclass('shardgate_meta.proxies') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| conn.err(e))?
        .get(0))
}

/// The metadata node's connection.
pub(super) struct Meta(pub Conn);

impl Meta {
    /// Connects to the metadata node and makes sure the schema exists.
    pub async fn open(config: &Config) -> Result<Meta, RebalanceError> {
        Meta::ready(open_node(config).await?).await
    }

    /// Like [`Meta::open`]; `on_end` runs as soon as the connection is lost.
    pub async fn open_watched(
        config: &Config,
        on_end: impl FnOnce() + Send + 'static,
    ) -> Result<Meta, RebalanceError> {
        let conn = Conn::open_watched(
            config,
            metadata_node(config)?,
            &config.sharding.rebalance_database,
            on_end,
        )
        .await?;
        Meta::ready(conn).await
    }

    /// Makes sure the schema exists on `conn`.
    async fn ready(conn: Conn) -> Result<Meta, RebalanceError> {
        // Two proxies creating the schema at once: one loses the race on the
        // catalog's unique index; the second attempt sees it.
        if conn.run(SCHEMA).await.is_err() {
            conn.run(SCHEMA).await?;
        }
        Ok(Meta(conn))
    }

    fn client(&self) -> &Client {
        &self.0.client
    }

    /// Records a new job of `owner` (a proxy id); returns its id. Refused
    /// while another job, of any proxy, is unfinished, and when the newest
    /// recorded map is not `current` (this proxy has not followed it yet).
    pub async fn insert_job(
        &mut self,
        change: &super::Change,
        owner: &str,
        current: &[ShardConfig],
    ) -> Result<u64, RebalanceError> {
        let node = self.0.node.clone();
        let err = |e| RebalanceError::Db {
            node: node.clone(),
            source: e,
        };
        let tx = self.0.client.transaction().await.map_err(err)?;
        tx.batch_execute("LOCK TABLE shardgate_meta.jobs IN EXCLUSIVE MODE")
            .await
            .map_err(err)?;
        let busy = tx
            .query_opt(
                &format!("SELECT id, kind FROM shardgate_meta.jobs WHERE {UNFINISHED} LIMIT 1"),
                &[],
            )
            .await
            .map_err(err)?;
        if let Some(row) = busy {
            let (id, kind): (i64, String) = (row.get(0), row.get(1));
            return Err(RebalanceError::Invalid(format!(
                "job {id} ({kind}) is unfinished in shardgate_meta: one job moves rows at a time in a cluster; wait for it (shardgate.jobs on the proxy that runs it)"
            )));
        }
        if let Some(latest) = tx
            .query_opt(
                "SELECT version, shards FROM shardgate_meta.shard_maps ORDER BY version DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(err)?
        {
            let text: String = latest.get(1);
            if !decode_shards(&text).is_some_and(|s| same_placement(&s, current)) {
                return Err(RebalanceError::Invalid(format!(
                    "this proxy does not route by the newest shard map version ({}) yet: try again in a few seconds",
                    latest.get::<_, i64>(0)
                )));
            }
        }
        let row = tx
            .query_one(
                "INSERT INTO shardgate_meta.jobs (kind, args, change, phase, owner) VALUES ($1, $2, $3, 'starting', $4) RETURNING id",
                &[&change.kind(), &change.describe(), &change.encode(), &owner],
            )
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Asks every proxy to hold the moving keys of job `id` (`hold`:
    /// `copying` or `cutover`; `None` ends the hold) and announces it.
    pub async fn set_hold(
        &self,
        id: u64,
        hold: Option<&str>,
        mode: &str,
        from: &[ShardConfig],
    ) -> Result<(), RebalanceError> {
        self.client()
            .execute(
                &format!(
                    "WITH j AS (UPDATE shardgate_meta.jobs SET hold = $2, mode = $3, from_shards = $4, \
                     updated_at = now() WHERE id = $1) SELECT pg_notify('{CHANNEL}', $1::text)"
                ),
                &[&(id as i64), &hold, &mode, &encode_shards(from)],
            )
            .await
            .map_err(|e| self.0.err(e))?;
        Ok(())
    }

    /// Waits until every proxy but `me` that is live (see [`alive`]) or
    /// renewed its heartbeat within `outwait` acknowledged `hold` of job
    /// `id`; `Err` naming the others at `deadline`. A proxy whose registry
    /// connection the server dropped may not know it yet and still write
    /// by the old map; it fences itself once it has not renewed for half
    /// its lease, so a move outwaits the lease, and the longest a
    /// statement past the fence waits for a server connection, before it
    /// counts that proxy gone.
    pub async fn wait_acks(
        &self,
        me: &str,
        id: u64,
        hold: &str,
        outwait: std::time::Duration,
        deadline: std::time::Instant,
    ) -> Result<(), RebalanceError> {
        let sql = format!(
            "SELECT coalesce(string_agg(name || CASE WHEN {} THEN '' ELSE ' (lease not yet lapsed)' END, ', '), '') \
             FROM shardgate_meta.proxies q \
             WHERE q.id <> $1 AND ({} OR q.heartbeat_at > now() - $4::int8 * interval '1 millisecond') \
             AND (q.ack_job IS DISTINCT FROM $2 OR q.ack_hold IS DISTINCT FROM $3)",
            alive("q.id"),
            alive("q.id")
        );
        let outwait_ms = outwait.as_millis() as i64;
        let mut told = false;
        loop {
            let waiting: String = self
                .client()
                .query_one(&sql, &[&me, &(id as i64), &hold, &outwait_ms])
                .await
                .map_err(|e| self.0.err(e))?
                .get(0);
            if waiting.is_empty() {
                return Ok(());
            }
            if !told && waiting.contains("(lease not yet lapsed)") {
                told = true;
                tracing::info!(job = id, hold, proxies = %waiting, "waiting for proxies whose registry connection is gone until their lease lapses (they may still write by the old map until they fence themselves)");
            }
            if std::time::Instant::now() >= deadline {
                return Err(RebalanceError::HoldTimeout(format!(
                    "proxies {waiting} did not hold their writes to the moving keys ({hold})"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Records a job's phase, progress and error.
    pub async fn update_job(
        &self,
        id: u64,
        phase: &str,
        rows: u64,
        bytes: u64,
        error: Option<&str>,
    ) -> Result<(), RebalanceError> {
        // A finished job holds nothing; other proxies hear of it at once.
        self.client()
            .execute(
                &format!(
                    "WITH j AS (UPDATE shardgate_meta.jobs SET phase = $2, rows_copied = $3, bytes_copied = $4, \
                     error = $5, updated_at = now(), \
                     hold = CASE WHEN $2 IN ('done', 'failed') THEN NULL ELSE hold END WHERE id = $1) \
                     SELECT pg_notify('{CHANNEL}', $1::text)"
                ),
                &[
                    &(id as i64),
                    &phase,
                    &(rows as i64),
                    &(bytes as i64),
                    &error,
                ],
            )
            .await
            .map_err(|e| self.0.err(e))?;
        Ok(())
    }

    /// The decision of a move: the new map version and the job's phase
    /// `switched`, in one transaction. Once this commits the move happens,
    /// whatever fails afterwards.
    pub async fn record_switch(
        &mut self,
        job: u64,
        owner: &str,
        shards: &[ShardConfig],
    ) -> Result<u64, RebalanceError> {
        let text = encode_shards(shards);
        let node = self.0.node.clone();
        let err = |e| RebalanceError::Db {
            node: node.clone(),
            source: e,
        };
        let tx = self.0.client.transaction().await.map_err(err)?;
        tx.batch_execute("LOCK TABLE shardgate_meta.shard_maps IN EXCLUSIVE MODE")
            .await
            .map_err(err)?;
        let row = tx
            .query_one(
                "INSERT INTO shardgate_meta.shard_maps (version, shards, job) \
                 SELECT coalesce(max(version), 0) + 1, $1, $2 FROM shardgate_meta.shard_maps \
                 RETURNING version",
                &[&text, &(job as i64)],
            )
            .await
            .map_err(err)?;
        // Another proxy that took the job over (this one's registry
        // connection was lost)
        // rolls it back: then it must not be decided here.
        let mine = tx
            .execute(
                "UPDATE shardgate_meta.jobs SET phase = 'switched', updated_at = now() WHERE id = $1 AND owner = $2",
                &[&(job as i64), &owner],
            )
            .await
            .map_err(err)?;
        if mine == 0 {
            return Err(RebalanceError::Invalid(format!(
                "job {job} was taken over by another proxy while this one could not renew its lease; it was undone"
            )));
        }
        tx.commit().await.map_err(err)?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

/// The shards of the newest settled map version in the metadata (its job
/// done), if there is one
/// (`Ok(None)`: no metadata schema, no rebalancing happened yet).
pub async fn latest_shards(
    config: &Config,
) -> Result<Option<(u64, Vec<ShardConfig>)>, RebalanceError> {
    if config.shards.is_empty() {
        return Ok(None);
    }
    let conn = open_node(config).await?;
    latest_shards_on(&conn).await
}

/// [`latest_shards`] on an open connection to the metadata node.
pub(super) async fn latest_shards_on(
    conn: &Conn,
) -> Result<Option<(u64, Vec<ShardConfig>)>, RebalanceError> {
    let exists = conn
        .client
        .query_one(
            "SELECT to_regclass('shardgate_meta.shard_maps') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| conn.err(e))?;
    if !exists.get::<_, bool>(0) {
        return Ok(None);
    }
    // A version whose job has not committed its moves yet is not routed
    // by: until then the job's hold covers its keys.
    let row = conn
        .client
        .query_opt(
            "SELECT m.version, m.shards FROM shardgate_meta.shard_maps m \
             LEFT JOIN shardgate_meta.jobs j ON j.id = m.job \
             WHERE j.id IS NULL OR j.phase = 'done' ORDER BY m.version DESC LIMIT 1",
            &[],
        )
        .await
        .map_err(|e| conn.err(e))?;
    Ok(row.and_then(|r| {
        let text: String = r.get(1);
        Some((r.get::<_, i64>(0) as u64, decode_shards(&text)?))
    }))
}

/// `config` with the shards of the newest map version in the metadata,
/// when rebalancing moved the cluster past the file's `[[shards]]` list.
/// If the metadata node cannot be read the file's list is used and a
/// warning logged.
///
/// Entries the file appends to the recorded list are new shards: with
/// `keep_appended` (RELOAD) they stay at the end of the list, for RELOAD to
/// start `ADD SHARD` jobs; without (start-up) they are left out with a
/// warning, since routing by them before their rows moved would lose rows.
pub async fn with_latest_shards(mut config: Config, keep_appended: bool) -> Config {
    if !config.sharding_enabled() {
        return config;
    }
    let latest =
        tokio::time::timeout(std::time::Duration::from_secs(10), latest_shards(&config)).await;
    match latest {
        Ok(Ok(Some((version, shards)))) => {
            let same = same_placement(&shards, &config.shards);
            let appended = config.shards.len() > shards.len()
                && shards
                    .iter()
                    .zip(&config.shards)
                    .all(|(a, b)| a.primary == b.primary);
            if appended {
                let extra = config.shards.split_off(shards.len());
                config.shards = shards;
                if keep_appended {
                    config.shards.extend(extra);
                } else {
                    tracing::warn!(
                        new = ?extra.iter().map(|s| s.primary.as_str()).collect::<Vec<_>>(),
                        "[[shards]] lists shards the cluster does not have yet: they are added by RELOAD or ADD SHARD, which move their rows first"
                    );
                }
            } else if !same {
                tracing::warn!(
                    version,
                    shards = shards.len(),
                    file_shards = config.shards.len(),
                    "the cluster was rebalanced: routing by shard map version {version} from shardgate_meta, not by the file's [[shards]] (update proxy.toml to match)"
                );
                config.shards = shards;
            }
        }
        Ok(Ok(None)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read shard map versions from shardgate_meta; routing by the file's [[shards]]")
        }
        Err(_) => tracing::warn!(
            "shardgate_meta did not answer within 10 s; routing by the file's [[shards]]"
        ),
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_lists_survive_the_round_trip() {
        let shards = vec![
            ShardConfig {
                primary: "127.0.0.1:5432".into(),
                replicas: vec!["127.0.0.1:5433".into(), "127.0.0.1:5434".into()],
                weight: 1,
                arcs: Vec::new(),
            },
            ShardConfig {
                primary: "127.0.0.1:6432".into(),
                replicas: vec![],
                weight: 3,
                arcs: vec!["0-7".into(), "0-9".into()],
            },
        ];
        let text = encode_shards(&shards);
        assert_eq!(
            text,
            "127.0.0.1:5432|127.0.0.1:5433,127.0.0.1:5434|1\n127.0.0.1:6432||3|0-7,0-9"
        );
        let back = decode_shards(&text).expect("decodes");
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].replicas.len(), 2);
        assert_eq!(back[1].weight, 3);
        assert_eq!(back[1].arcs, ["0-7", "0-9"]);
        assert!(decode_shards("127.0.0.1:5432|x").is_none());
    }
}

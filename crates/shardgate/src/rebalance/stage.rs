//! The staging of a logical move on its targets (docs/ARCHITECTURE.md §10):
//! rows copied and changes caught up are committed into stage tables in
//! schema `shardgate_stage` on each target, invisible to clients, together
//! with how far each (source, table) copy got. A job stopped at any point
//! before its decision resumes from there: the copy from the next chunk of
//! pages, catch-up from the slot's confirmed position (advanced only after
//! the changes are committed here). Before the cutover the stage is merged
//! into the target's move transaction in one `INSERT ... SELECT`; keys
//! caught up after that are merged again in sets (`remerge`).

use std::collections::HashMap;

use shardgate_shardmap::TableName;

use super::db::Conn;
use super::RebalanceError;

/// The schema of stage tables and progress.
const SCHEMA: &str = "shardgate_stage";

/// Pages of a source table copied per chunk of `chunk_mb` megabytes
/// (`sharding.rebalance_chunk_mb`, pages of 8 kB): the unit of copy
/// progress a stopped job keeps.
pub(super) fn chunk_pages(chunk_mb: u64) -> i64 {
    (chunk_mb.max(1) as i64).saturating_mul(128)
}

/// The progress of a (source, table) copy that is complete.
pub(super) const COPIED: i64 = i64::MAX;

/// The stage table of moving table number `i` of `job`.
pub(super) fn table(job: u64, i: usize) -> TableName {
    TableName::new(Some(SCHEMA), &format!("j{job}_{i}"))
}

/// The session's scratch table a resumed chunk is copied into before it
/// joins the stage (a row may be in it twice).
fn scratch(i: usize) -> TableName {
    TableName::new(Some("pg_temp"), &format!("shardgate_chunk_{i}"))
}

/// Creates the stage of moving table `i` of `job` (like `table`, with its
/// primary key `key_columns`) and the progress table, unless they exist.
pub(super) async fn create(
    conn: &Conn,
    job: u64,
    i: usize,
    table: &TableName,
    key_columns: &[String],
) -> Result<(), RebalanceError> {
    let stage = self::table(job, i);
    conn.run(&format!(
        "CREATE SCHEMA IF NOT EXISTS {SCHEMA};
         CREATE TABLE IF NOT EXISTS {SCHEMA}.progress (
             job bigint NOT NULL, source int NOT NULL, tbl int NOT NULL,
             next_page bigint NOT NULL, PRIMARY KEY (job, source, tbl))"
    ))
    .await?;
    let exists: bool = conn
        .client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&stage.to_string()])
        .await
        .map_err(|e| conn.err(e))?
        .get(0);
    if !exists {
        let keys: Vec<String> = key_columns
            .iter()
            .map(|k| TableName::new(None, k).to_string())
            .collect();
        conn.run(&format!(
            "BEGIN; CREATE TABLE {stage} (LIKE {table}); \
             ALTER TABLE {stage} ADD PRIMARY KEY ({}); COMMIT",
            keys.join(", ")
        ))
        .await?;
    }
    Ok(())
}

/// Drops the stage tables and progress of `job` on `conn`'s node.
pub(super) async fn discard(conn: &Conn, job: u64) -> Result<(), RebalanceError> {
    let rows = conn
        .client
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname LIKE $2",
            &[&SCHEMA, &format!("j{job}\\_%")],
        )
        .await
        .map_err(|e| conn.err(e))?;
    for r in rows {
        conn.run(&format!("DROP TABLE IF EXISTS {}", r.get::<_, String>(0)))
            .await?;
    }
    conn.client
        .execute(
            &format!("DELETE FROM {SCHEMA}.progress WHERE job = $1"),
            &[&(job as i64)],
        )
        .await
        .map(|_| ())
        .or_else(|e| {
            // No progress table: nothing was staged on this node.
            if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) {
                Ok(())
            } else {
                Err(conn.err(e))
            }
        })
}

/// How far each (source, moving table) copy of `job` got on this target:
/// the first page not copied yet.
pub(super) async fn progress(
    conn: &Conn,
    job: u64,
) -> Result<HashMap<(usize, usize), i64>, RebalanceError> {
    let rows = conn
        .client
        .query(
            &format!("SELECT source, tbl, next_page FROM {SCHEMA}.progress WHERE job = $1"),
            &[&(job as i64)],
        )
        .await
        .map_err(|e| conn.err(e))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                (r.get::<_, i32>(0) as usize, r.get::<_, i32>(1) as usize),
                r.get::<_, i64>(2),
            )
        })
        .collect())
}

/// Where a chunk's rows go on a target: the stage itself, or (a resumed
/// copy, which may give a row again) the session's scratch table first.
pub(super) fn chunk_table(job: u64, i: usize, resumed: bool) -> TableName {
    if resumed {
        scratch(i)
    } else {
        table(job, i)
    }
}

/// Opens a chunk's transaction on a target (and its scratch table when
/// the copy resumed).
pub(super) async fn begin_chunk(
    conn: &Conn,
    job: u64,
    i: usize,
    resumed: bool,
) -> Result<(), RebalanceError> {
    if resumed {
        conn.run(&format!(
            "BEGIN; CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}) ON COMMIT DELETE ROWS",
            scratch(i),
            table(job, i)
        ))
        .await
    } else {
        conn.run("BEGIN").await
    }
}

/// Commits a chunk on a target with the page the copy of (`source`, `i`)
/// goes on from.
pub(super) async fn commit_chunk(
    conn: &Conn,
    job: u64,
    source: usize,
    i: usize,
    resumed: bool,
    next_page: i64,
) -> Result<(), RebalanceError> {
    let mut sql = String::new();
    if resumed {
        sql.push_str(&format!(
            "INSERT INTO {} SELECT * FROM {} ON CONFLICT DO NOTHING; ",
            table(job, i),
            scratch(i)
        ));
    }
    sql.push_str(&format!(
        "INSERT INTO {SCHEMA}.progress VALUES ({job}, {source}, {i}, {next_page}) \
         ON CONFLICT (job, source, tbl) DO UPDATE SET next_page = EXCLUDED.next_page; COMMIT"
    ));
    conn.run(&sql).await
}

/// Merges the stage of moving table `i` of `job` into `table` in the move
/// transaction on `tx` (columns `cols`); returns the rows merged.
pub(super) async fn merge(
    tx: &Conn,
    job: u64,
    i: usize,
    table: &TableName,
    cols: &[String],
) -> Result<u64, RebalanceError> {
    tx.client
        .execute(&insert_from(table, &self::table(job, i), cols, ""), &[])
        .await
        .map_err(|e| tx.err(e))
}

/// Replaces the rows of `keys` in `table` on `tx` by the stage's (`key_in`:
/// the filter on the shard key taking the keys as `$1`), so that the move
/// transaction catches up on changes the stage took since the merge: each
/// key costs one delete and one insert however often it changed.
pub(super) async fn remerge(
    tx: &Conn,
    table: &TableName,
    stage: &TableName,
    cols: &[String],
    key_in: &str,
    keys: &[String],
) -> Result<(), RebalanceError> {
    let delete = format!("DELETE FROM {table} WHERE {key_in}");
    let insert = insert_from(table, stage, cols, &format!(" WHERE {key_in}"));
    for batch in keys.chunks(REMERGE_BATCH) {
        for sql in [&delete, &insert] {
            tx.client
                .execute(sql.as_str(), &[&batch])
                .await
                .map_err(|e| tx.err(e))?;
        }
    }
    Ok(())
}

/// Keys per statement of [`remerge`].
const REMERGE_BATCH: usize = 50_000;

/// `INSERT INTO table SELECT ... FROM stage` over `cols`, then `filter`.
fn insert_from(table: &TableName, stage: &TableName, cols: &[String], filter: &str) -> String {
    let list = cols
        .iter()
        .map(|c| TableName::new(None, c).to_string())
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO {table} ({list}) OVERRIDING SYSTEM VALUE SELECT {list} FROM {stage}{filter}"
    )
}

/// The distinct shard keys (as text) in stage `i` of `job`.
pub(super) async fn keys(
    conn: &Conn,
    job: u64,
    i: usize,
    column: &str,
) -> Result<Vec<String>, RebalanceError> {
    let rows = conn
        .client
        .query(
            &format!(
                "SELECT DISTINCT {}::text FROM {}",
                TableName::new(None, column),
                table(job, i)
            ),
            &[],
        )
        .await
        .map_err(|e| conn.err(e))?;
    Ok(rows.iter().filter_map(|r| r.get(0)).collect())
}

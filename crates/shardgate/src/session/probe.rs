//! The session's own decoding and routing steps, callable without sockets.
//!
//! A session reads client bytes (COPY data, Bind parameters) and server
//! bytes (RowDescription, DataRow) with private helpers. The fuzz targets
//! (`crates/fuzz-targets`) and the property tests call them through these
//! functions, so they exercise exactly what a session runs, not a copy.

use bytes::BytesMut;
use shardgate_protocol::frontend::Bind;
use shardgate_protocol::{Header, PgError};
use shardgate_router::copy::{CopyRow, CopySplitter};
use shardgate_router::shard::{ShardPlan, TableLookup};
use shardgate_router::Analyzer;
use shardgate_shardmap::{ShardMap, TableRule};

use super::sharded::{send_rows, shards_of_filter, CopyFailure, MapLookup};

/// Shards a statement with key filter reaches, as a sharded session decides
/// it: the cached analysis's plan, literals resolved, key values (literals
/// or `params`) placed by `map`. `Ok(None)` when the plan is not keyed to one
/// sharded table (the session then routes by the plan's kind), or when a
/// key value cannot be known (a parameter without a Bind); `Err` is the
/// Postgres error the client would get.
pub fn point_shards(
    analyzer: &Analyzer,
    map: &ShardMap,
    sql: &str,
    params: Option<&Bind<'_>>,
) -> Result<Option<Vec<usize>>, PgError> {
    let (plan, literals) = analyzer.plan(sql, &MapLookup(map));
    match plan.resolve_literals(&literals) {
        ShardPlan::Keyed { table, filter } => match map.table(table.0.as_deref(), &table.1) {
            Some(rule) => shards_of_filter(map, rule, &filter, params),
            None => Ok(None),
        },
        _ => Ok(None),
    }
}

/// Splits `chunks` of `COPY ... FROM STDIN` data for a table sharded by
/// `rule` the way a session does (`splitter` from the COPY statement), and
/// returns each row's shard with the row's bytes as sent to that shard (a
/// binary header first, when the format has one, goes to every shard and is
/// not listed). `Err` is the error the client would get (22P04, 22P02,
/// 23502, 23514).
pub fn copy_rows_by_shard(
    map: &ShardMap,
    rule: &TableRule,
    mut splitter: CopySplitter,
    chunks: &[&[u8]],
) -> Result<Vec<(usize, Vec<u8>)>, PgError> {
    let shards = map.all_shards();
    let mut outs = vec![BytesMut::new(); shards.len()];
    let mut header_sent = false;
    let mut routed = Vec::new();
    let bad = |e: shardgate_router::CopyError| PgError::error("22P04", e.to_string());
    let mut rows: Vec<CopyRow> = Vec::new();
    // The chunks, then `None`: the end of the data.
    for chunk in chunks.iter().map(Some).chain([None]) {
        rows.clear();
        match chunk {
            Some(c) => splitter.feed_into(c, &mut rows).map_err(bad)?,
            None => rows = splitter.finish().map_err(bad)?,
        }
        // One row at a time, so each row's bytes show which shard got them.
        for row in &rows {
            for out in outs.iter_mut() {
                out.clear();
            }
            let header_before = header_sent;
            send_rows(
                &mut outs,
                &shards,
                &splitter,
                rule,
                map,
                &mut header_sent,
                std::slice::from_ref(row),
            )
            .map_err(|e| match e {
                CopyFailure::Data(e) => e,
                CopyFailure::Client(_) => PgError::error("57014", "COPY failed by the client"),
            })?;
            for (i, out) in outs.iter().enumerate() {
                // The binary header, sent to every shard before the first row.
                let mut pos = match (header_before, header_sent) {
                    (false, true) => Header::complete(out, usize::MAX)
                        .ok()
                        .flatten()
                        .map_or(0, |h| h.total),
                    _ => 0,
                };
                while let Ok(Some(h)) = Header::complete(&out[pos..], usize::MAX) {
                    routed.push((shards[i], out[pos + 5..pos + h.total].to_vec()));
                    pos += h.total;
                }
            }
        }
    }
    Ok(routed)
}

/// The sharded and reference tables of `map`, as the session's planners
/// see them.
pub fn table_lookup(map: &ShardMap) -> impl TableLookup + '_ {
    MapLookup(map)
}

/// Field types of a shard's RowDescription message (tag and length
/// included) and the end offset of each field, as the merge reads them.
pub fn row_description(msg: &[u8]) -> Option<(Vec<u32>, Vec<usize>)> {
    super::merge::parse_row_description(msg).ok()
}

/// The fields of a shard's DataRow body (`None` for NULL), as
/// `INSERT ... SELECT` reads them; `None` if malformed.
pub fn data_row(body: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    super::insert_select::data_row_fields(body)
}

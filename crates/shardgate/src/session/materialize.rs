//! A subquery over several shards under an outer query one server
//! evaluates (`shardgate_router::materialize`): the subquery runs as a
//! capturing merge, its rows become one binary array per column, and the
//! outer query runs on one shard reading them through `unnest(...)`
//! (docs/ARCHITECTURE.md §9).

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use shardgate_protocol::backend;
use shardgate_protocol::frontend::{self, Bind};
use shardgate_protocol::PgError;
use shardgate_router::gather::{self, Gather};
use shardgate_router::materialize::{outer_sql, renumber_params, value_sql, Kind, Materialize};
use shardgate_router::merge_plan::{self, MergePlan};
use shardgate_router::ShardPlan;

use super::merge::{Captured, MergeEnd, MergeRequest};
use super::sharded::{cross_shard_refusal, user_aggregate_call, MapLookup};
use super::{Session, SessionError};
use crate::routing::Want;

/// The parameters a statement derived by the proxy runs with: some of the
/// client's, then values of the proxy's own.
pub(super) struct ParamSet {
    /// The client's parameters it uses (0-based), `$1` first.
    pub used: Vec<usize>,
    /// Parameters after them: type OID and binary value.
    pub appended: Appended,
}

impl ParamSet {
    /// The Parse message's parameter types (raw, 4 bytes each): the
    /// client's declared type of each used parameter (0 when it declared
    /// none), then the appended ones'.
    pub(super) fn param_types(&self, client: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 * (self.used.len() + self.appended.len()));
        for &i in &self.used {
            match client.get(4 * i..4 * i + 4) {
                Some(t) => out.extend_from_slice(t),
                None => out.extend_from_slice(&0u32.to_be_bytes()),
            }
        }
        for (oid, _) in &self.appended {
            out.extend_from_slice(&oid.to_be_bytes());
        }
        out
    }

    /// The Bind message: the used client parameters in their formats, the
    /// appended ones binary, results in `formats`.
    pub(super) fn encode_bind(&self, bind: Option<&Bind<'_>>, formats: &[i16], out: &mut BytesMut) {
        let start = out.len();
        out.put_u8(frontend::tag::BIND);
        out.put_i32(0);
        out.put_u8(0);
        out.put_u8(0);
        out.put_i16((self.used.len() + self.appended.len()) as i16);
        for &i in &self.used {
            out.put_i16(bind.map_or(0, |b| b.param_format(i)));
        }
        for _ in &self.appended {
            out.put_i16(1);
        }
        out.put_i16((self.used.len() + self.appended.len()) as i16);
        for &i in &self.used {
            match bind.and_then(|b| b.param(i)) {
                Some(v) => {
                    out.put_i32(v.len() as i32);
                    out.extend_from_slice(v);
                }
                None => out.put_i32(-1),
            }
        }
        for (_, v) in &self.appended {
            match v {
                Some(v) => {
                    out.put_i32(v.len() as i32);
                    out.extend_from_slice(v);
                }
                None => out.put_i32(-1),
            }
        }
        out.put_i16(formats.len() as i16);
        for f in formats {
            out.put_i16(*f);
        }
        backend::patch_len(out, start);
    }
}

impl Session {
    /// A statement the shards cannot run as it is, answered by gathering
    /// one of its sharded tables ([`shardgate_router::gather`]): the
    /// smallest candidate (on the default shard), reading the columns the
    /// statement names. `None` when no table can be gathered.
    pub(super) async fn gathered(&mut self, sql: &str) -> Result<Option<Materialize>, PgError> {
        let sharding = self.snap.sharding.as_ref().expect("sharded session");
        let candidates = gather::candidates(sql, &MapLookup(&sharding.map));
        let chosen = if candidates.len() < 2 {
            candidates.into_iter().next()
        } else {
            let mut best: Option<(f64, Gather)> = None;
            for g in candidates {
                let size = self.catalog_size(&g.table).await?;
                if best.as_ref().is_none_or(|(n, _)| size < *n) {
                    best = Some((size, g));
                }
            }
            best.map(|(_, g)| g)
        };
        if let Some(g) = chosen {
            let columns = self.catalog_columns(&g.table).await?;
            return Ok(Some(Materialize {
                inner: g.inner_sql(&g.needed(&columns)),
                also: Vec::new(),
                outer: g.outer,
                kind: Kind::Table,
                explain: false,
            }));
        }
        // No one table does: every sharded table, one server answering.
        let sharding = self.snap.sharding.as_ref().expect("sharded session");
        let Some((all, outer)) = gather::gather_all(sql, &MapLookup(&sharding.map)) else {
            return Ok(None);
        };
        let mut reads = Vec::with_capacity(all.len());
        for g in &all {
            let columns = self.catalog_columns(&g.table).await?;
            reads.push(g.inner_sql(&g.needed(&columns)));
        }
        let mut reads = reads.into_iter();
        Ok(Some(Materialize {
            inner: reads.next().unwrap_or_default(),
            also: reads.collect(),
            outer,
            kind: Kind::Table,
            explain: false,
        }))
    }

    /// A read the shards cannot answer as it is, answered in two steps: a
    /// subquery materialized ([`shardgate_router::materialize::plan`]) or a
    /// table gathered ([`Session::gathered`]). `EXPLAIN` of such a read
    /// describes the steps.
    pub(super) async fn materialized(&mut self, sql: &str) -> Result<Option<Materialize>, PgError> {
        let explained = merge_plan::explained_query(sql);
        let query = explained.as_deref().unwrap_or(sql);
        let sharding = self.snap.sharding.as_ref().expect("sharded session");
        let planned = shardgate_router::materialize::plan(query, &MapLookup(&sharding.map));
        let m = match planned {
            Some(m) => Some(m),
            None => self.gathered(query).await?,
        };
        Ok(m.map(|m| Materialize {
            explain: explained.is_some(),
            ..m
        }))
    }

    /// Answers `m` for the client's statement `sql` (with the request
    /// `again` builds). A scalar subquery found correlated when it ran by
    /// itself (it named a column only the outer query has) is answered by
    /// gathering instead ([`Session::gathered`]), outside a transaction.
    pub(super) async fn materialize_or_gather<'r>(
        &mut self,
        sql: &str,
        m: &Materialize,
        want: Want,
        again: impl Fn() -> MergeRequest<'r>,
    ) -> Result<(), SessionError> {
        let mut correlated = None;
        self.materialize_steps(m, want, again(), &mut correlated)
            .await?;
        let Some(status) = correlated else {
            return Ok(());
        };
        let gathered = match status {
            b'I' => self.gathered(sql).await,
            _ => Ok(None),
        };
        match gathered {
            Ok(Some(g)) => self.materialize_query(&g, want, again()).await,
            Ok(None) => self.refuse_correlated(status).await,
            Err(e) => {
                self.merge_refused(e)?;
                self.flush_client().await
            }
        }
    }

    /// Answers `m`: the subquery across every shard, then the outer query
    /// on the default shard over its rows. `req` is what the client sent
    /// for the whole statement (its collation is looked up here).
    pub(super) async fn materialize_query(
        &mut self,
        m: &Materialize,
        want: Want,
        req: MergeRequest<'_>,
    ) -> Result<(), SessionError> {
        let mut correlated = None;
        self.materialize_steps(m, want, req, &mut correlated)
            .await?;
        match correlated {
            Some(status) => self.refuse_correlated(status).await,
            None => Ok(()),
        }
    }

    /// The refusal of a correlated scalar subquery nothing else answered,
    /// with ReadyForQuery in `status`.
    async fn refuse_correlated(&mut self, status: u8) -> Result<(), SessionError> {
        cross_shard_refusal("a correlated scalar subquery over several shards")
            .encode(&mut self.cout);
        backend::ready_for_query(status, &mut self.cout);
        self.flush_client().await
    }

    /// [`Session::materialize_query`], except that a scalar subquery that
    /// failed as correlated leaves the client buffer as it was and sets
    /// `correlated` to the transaction status it left.
    async fn materialize_steps(
        &mut self,
        m: &Materialize,
        want: Want,
        req: MergeRequest<'_>,
        correlated: &mut Option<u8>,
    ) -> Result<(), SessionError> {
        let (inner_sql, inner_used) = renumber_params(&m.inner);
        let facts = match self.database_facts().await {
            Ok(f) => f,
            Err(e) => return self.merge_refused(e),
        };
        if let Some(name) = user_aggregate_call(&inner_sql, &facts.user_aggregates) {
            let construct = format!("the user-defined aggregate {name}()");
            return self.merge_refused(cross_shard_refusal(&construct));
        }
        let collation = (!facts.bytewise_collation).then(|| facts.collation.clone());
        let outer_collation = collation.clone();
        let sharding = self.snap.sharding.as_ref().expect("sharded session");
        let plan = match self
            .snap
            .analyzer
            .merge_plan(&inner_sql, &MapLookup(&sharding.map))
        {
            Ok(p) => p,
            Err(e) => return self.merge_refused(cross_shard_refusal(&e.construct)),
        };
        let shards = sharding.map.all_shards();
        let default_shard = sharding.map.default_shard();
        if m.explain {
            let lines = steps(m, &plan.describe(&shards), self.outer_shards(m));
            self.answer_plan_lines(&lines, &req);
            return self.flush_client().await;
        }
        let captured = match self
            .capture(inner_used, plan, want, &req, collation.clone())
            .await?
        {
            Capture::Rows(c) => c,
            Capture::Answered => return Ok(()),
            Capture::Failed { status, mark } => {
                if m.kind == Kind::Value && names_outer_column(&self.cout[mark..]) {
                    // The subquery read a column of the outer query.
                    self.cout.truncate(mark);
                    *correlated = Some(status);
                    return Ok(());
                }
                backend::ready_for_query(status, &mut self.cout);
                return self.flush_client().await;
            }
        };
        if m.kind == Kind::Value {
            let value = match scalar_value(&captured) {
                Ok(v) => v,
                Err(e) => return self.merge_refused(e),
            };
            return self
                .run_with_value(m, want, req, value, outer_collation)
                .await;
        }
        let (names, arrays) = match column_arrays(&captured) {
            Ok(c) => c,
            Err(e) => return self.merge_refused(e),
        };
        let (outer_text, outer_used) = renumber_params(&m.outer);
        let mut sql = outer_sql(&outer_text, outer_used.len() + 1, &names);
        let mut params = ParamSet {
            used: outer_used,
            appended: arrays,
        };
        // Further gathered tables, their placeholders in the same order.
        for also in &m.also {
            let (also_sql, also_used) = renumber_params(also);
            let plan = Arc::new(MergePlan::concat(&also_sql));
            let step = self
                .capture(also_used, plan, want, &req, collation.clone())
                .await?;
            let captured = match step {
                Capture::Rows(c) => c,
                Capture::Answered => return Ok(()),
                Capture::Failed { status, .. } => {
                    backend::ready_for_query(status, &mut self.cout);
                    return self.flush_client().await;
                }
            };
            let (names, arrays) = match column_arrays(&captured) {
                Ok(c) => c,
                Err(e) => return self.merge_refused(e),
            };
            let first = params.used.len() + params.appended.len() + 1;
            sql = outer_sql(&sql, first, &names);
            params.appended.extend(arrays);
        }
        if m.kind == Kind::Table {
            return self
                .run_outer(&sql, params, want, req, outer_collation)
                .await;
        }
        let outer = MergeRequest {
            params: Some(params),
            collation: None,
            ..req
        };
        let plan = Arc::new(MergePlan::concat(&sql));
        self.merge_query(vec![default_shard], plan, want, outer)
            .await
    }

    /// Runs `plan` (with the client's parameters `used`) on every shard
    /// and captures its merged rows.
    async fn capture(
        &mut self,
        used: Vec<usize>,
        plan: Arc<MergePlan>,
        want: Want,
        req: &MergeRequest<'_>,
        collation: Option<String>,
    ) -> Result<Capture, SessionError> {
        let sharding = self.snap.sharding.as_ref().expect("sharded session");
        let shards = sharding.map.all_shards();
        let inner = MergeRequest {
            bind: req.bind,
            param_types: req.param_types,
            describe: false,
            max_rows: None,
            collation,
            copy: None,
            params: Some(ParamSet {
                used,
                appended: Vec::new(),
            }),
            capture: true,
        };
        let mark = self.cout.len();
        Ok(match self.merge_run(shards, plan, want, inner).await? {
            MergeEnd::Answered => Capture::Answered,
            MergeEnd::Finished {
                captured: Some(c), ..
            } => Capture::Rows(c),
            MergeEnd::Refused(e) => {
                self.merge_refused(e)?;
                Capture::Answered
            }
            MergeEnd::Finished { status, .. } => Capture::Failed { status, mark },
        })
    }

    /// The shards step 2 of `m` runs on.
    fn outer_shards(&self, m: &Materialize) -> Vec<usize> {
        let sharding = self.snap.sharding.as_ref().expect("sharded session");
        let probe = match m.kind {
            Kind::Rows => return vec![sharding.map.default_shard()],
            Kind::Value => value_sql(&m.outer, 65_000, "v"),
            Kind::Table => shardgate_router::materialize::probe_sql(&m.outer),
        };
        match shardgate_router::plan_shards(&probe, &MapLookup(&sharding.map)) {
            ShardPlan::Keyed { .. } | ShardPlan::NoKey { .. } => sharding.map.all_shards(),
            _ => vec![sharding.map.default_shard()],
        }
    }

    /// The outer statement of a [`Kind::Value`] subquery, its value bound
    /// as the last parameter.
    async fn run_with_value(
        &mut self,
        m: &Materialize,
        want: Want,
        req: MergeRequest<'_>,
        (name, value): (String, (u32, Option<BytesMut>)),
        collation: Option<String>,
    ) -> Result<(), SessionError> {
        let (outer_text, outer_used) = renumber_params(&m.outer);
        let sql = value_sql(&outer_text, outer_used.len() + 1, &name);
        let params = ParamSet {
            used: outer_used,
            appended: vec![value],
        };
        self.run_outer(&sql, params, want, req, collation).await
    }

    /// An outer statement reading materialized values as `params`: on the
    /// default shard when it reads no sharded table, else on every shard,
    /// merged as its plan says.
    async fn run_outer(
        &mut self,
        sql: &str,
        params: ParamSet,
        want: Want,
        req: MergeRequest<'_>,
        collation: Option<String>,
    ) -> Result<(), SessionError> {
        let facts = match self.database_facts().await {
            Ok(f) => f,
            Err(e) => return self.merge_refused(e),
        };
        let sharding = self.snap.sharding.as_ref().expect("sharded session");
        let lookup = MapLookup(&sharding.map);
        let (shards, plan) = match shardgate_router::plan_shards(sql, &lookup) {
            ShardPlan::Unsharded | ShardPlan::NoTable | ShardPlan::ReferenceRead => (
                vec![sharding.map.default_shard()],
                Arc::new(MergePlan::concat(sql)),
            ),
            ShardPlan::Keyed { .. } | ShardPlan::NoKey { .. } => {
                if let Some(name) = user_aggregate_call(sql, &facts.user_aggregates) {
                    let construct = format!("the user-defined aggregate {name}()");
                    return self.merge_refused(cross_shard_refusal(&construct));
                }
                match self.snap.analyzer.merge_plan(sql, &lookup) {
                    Ok(p) => (sharding.map.all_shards(), p),
                    Err(e) => return self.merge_refused(cross_shard_refusal(&e.construct)),
                }
            }
            ShardPlan::Unsupported { construct } => {
                return self.merge_refused(cross_shard_refusal(&construct))
            }
            _ => {
                return self.merge_refused(cross_shard_refusal(
                    "this statement over rows gathered from several shards",
                ))
            }
        };
        let outer = MergeRequest {
            params: Some(params),
            collation,
            ..req
        };
        self.merge_query(shards, plan, want, outer).await
    }
}

/// `EXPLAIN` of a two-step statement: what step 1 gathers (`inner`: its
/// merge's plan lines) and where step 2 runs (`outer_shards`).
fn steps(m: &Materialize, inner: &[String], outer_shards: Vec<usize>) -> Vec<String> {
    let list = |s: &[usize]| {
        s.iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (what, bound) = match m.kind {
        Kind::Rows => (
            "Materialize a subquery over several shards",
            "its rows, one array parameter per column",
        ),
        Kind::Value => (
            "Evaluate a scalar subquery over several shards once",
            "its value, as a parameter",
        ),
        Kind::Table => (
            "Gather a sharded table (the columns the statement names, its own conditions)",
            "the gathered rows, one array parameter per column",
        ),
    };
    let mut out = vec![format!("Shardgate Two Steps  ({what})")];
    out.push("  ->  Step 1 (captured at the proxy):".to_owned());
    out.extend(inner.iter().map(|l| format!("        {l}")));
    for also in &m.also {
        out.push(format!("        and from every shard: {also}"));
    }
    let place = match outer_shards.as_slice() {
        [one] => format!("on shard {one}"),
        many => format!("on shards {}, merged", list(many)),
    };
    out.push(format!(
        "  ->  Step 2 (the statement reading {bound}; {place}):"
    ));
    out.push(format!("        {}", m.outer));
    out
}

/// How capturing a step's rows ended.
enum Capture {
    /// Its rows.
    Rows(Captured),
    /// The client got its answer (an error and ReadyForQuery).
    Answered,
    /// It failed: the error is in the client buffer from `mark` on,
    /// ReadyForQuery with `status` is still to send.
    Failed { status: u8, mark: usize },
}

/// Whether the errors in `out` say a column or table is unknown (the
/// subquery, run by itself, named one of the outer query's).
fn names_outer_column(out: &[u8]) -> bool {
    [&b"C42703\0"[..], &b"C42P01\0"[..]]
        .iter()
        .any(|code| out.windows(code.len()).any(|w| w == *code))
}

/// The column name and the one value of a scalar subquery's rows, typed:
/// NULL over no rows; more than one row or column fails as Postgres fails.
fn scalar_value(c: &Captured) -> Result<(String, (u32, Option<BytesMut>)), PgError> {
    let columns = describe_columns(&c.desc).unwrap_or_default();
    let columns = &columns[..c.visible.min(columns.len())];
    let [(name, type_oid)] = columns else {
        return Err(PgError::error(
            "42601",
            "subquery must return only one column",
        ));
    };
    let rows = data_rows(&c.rows)?;
    let value = match rows.as_slice() {
        [] => None,
        [row] => row.field(0).map(BytesMut::from),
        _ => {
            return Err(PgError::error(
                "21000",
                "more than one row returned by a subquery used as an expression",
            ))
        }
    };
    Ok((name.clone(), (*type_oid, value)))
}

/// The DataRows of a capture.
fn data_rows(mut rest: &[u8]) -> Result<Vec<shardgate_merge::row::DataRow<'_>>, PgError> {
    let mut rows = Vec::new();
    while rest.len() >= 5 {
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let end = (1 + len).min(rest.len());
        let row = shardgate_merge::row::DataRow::parse(&rest[..end])
            .map_err(super::merge::merge_error)?;
        rows.push(row);
        rest = &rest[end..];
    }
    Ok(rows)
}

/// Parameters of the proxy's own: type OID and binary value (`None`:
/// NULL) each.
type Appended = Vec<(u32, Option<BytesMut>)>;

/// The captured rows as one binary array per column, with the columns'
/// names.
fn column_arrays(c: &Captured) -> Result<(Vec<String>, Appended), PgError> {
    let mut columns = describe_columns(&c.desc).ok_or_else(|| {
        PgError::error(
            "08P01",
            "shardgate: a shard sent a malformed RowDescription",
        )
    })?;
    columns.truncate(c.visible);
    let rows = data_rows(&c.rows)?;
    let mut names = Vec::with_capacity(columns.len());
    let mut arrays = Vec::with_capacity(columns.len());
    for (j, (name, elem)) in columns.into_iter().enumerate() {
        let array = array_type(elem).ok_or_else(|| {
            cross_shard_refusal(&format!(
                "a subquery column of type oid {elem} ({name}) read by an outer query"
            ))
        })?;
        let mut a = BytesMut::new();
        if rows.is_empty() {
            a.put_i32(0);
            a.put_i32(0);
            a.put_u32(elem);
        } else {
            let has_null = rows.iter().any(|r| r.field(j).is_none());
            a.put_i32(1);
            a.put_i32(has_null as i32);
            a.put_u32(elem);
            a.put_i32(rows.len() as i32);
            a.put_i32(1);
            for r in &rows {
                shardgate_merge::row::RowWriter::put(&mut a, r.field(j));
            }
        }
        names.push(name);
        arrays.push((array, Some(a)));
    }
    Ok((names, arrays))
}

/// Name and type OID of each column of a RowDescription.
fn describe_columns(msg: &[u8]) -> Option<Vec<(String, u32)>> {
    let d = shardgate_merge::row::RowDescription::parse(msg)?;
    let columns = d.columns().iter();
    Some(
        columns
            .map(|c| (d.name(c).into_owned(), c.type_oid))
            .collect(),
    )
}

/// The array type of a built-in element type.
fn array_type(elem: u32) -> Option<u32> {
    Some(match elem {
        16 => 1000,   // bool
        17 => 1001,   // bytea
        18 => 1002,   // "char"
        19 => 1003,   // name
        20 => 1016,   // int8
        21 => 1005,   // int2
        23 => 1007,   // int4
        25 => 1009,   // text
        26 => 1028,   // oid
        114 => 199,   // json
        700 => 1021,  // float4
        701 => 1022,  // float8
        1042 => 1014, // bpchar
        1043 => 1015, // varchar
        1082 => 1182, // date
        1083 => 1183, // time
        1114 => 1115, // timestamp
        1184 => 1185, // timestamptz
        1186 => 1187, // interval
        1700 => 1231, // numeric
        2950 => 2951, // uuid
        3802 => 3807, // jsonb
        _ => return None,
    })
}

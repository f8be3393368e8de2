//! Statements on a sharded cluster: which shard(s) a statement goes to,
//! transactions that span shards, multi-shard writes, COPY split by key.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;
use shardgate_protocol::backend;
use shardgate_protocol::frontend::{self, tag, Bind, DescribeOrClose, Execute, Parse};
use shardgate_protocol::{Header, PgError};
use shardgate_router::copy::{parse_copy, CopyRow, CopySplitter, FieldValue};
use shardgate_router::lexer::{first_keyword, split_statements, Lexer, TokenKind};
use shardgate_router::merge_plan::{MergeMode, MergePlan};
use shardgate_router::shard::{KeyFilter, ShardPlan, ShardedTable, TableLookup, ValueSource};
use shardgate_router::{parse_hints, Hints};
use shardgate_shardmap::{Function, KeyType, ShardKey, ShardMap, TableRule};

use super::fanout::{copy_data, FanOpts};
use super::merge::MergeRequest;
use super::{Proto, Session, SessionError, VirtualTx};

/// Whether the shards of a multi-shard statement hold different rows or copies.
enum DestKind {
    Rows,
    Copies,
}
use crate::catalog::CatalogSource;
use crate::routing::Want;

/// A statement recognised as transaction control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxControl {
    /// BEGIN / START TRANSACTION.
    Begin,
    /// COMMIT/END (`true`) or ROLLBACK/ABORT (`false`).
    End(bool),
    /// SAVEPOINT, RELEASE, ROLLBACK TO.
    Savepoint,
    /// Two-phase commit commands, which the proxy does not pass through.
    TwoPhase,
}

/// Recognises transaction control statements by their leading keywords.
pub(crate) fn tx_control(sql: &str) -> Option<TxControl> {
    let words: Vec<String> = Lexer::new(sql)
        .filter(|t| t.kind != TokenKind::BlockComment)
        .take(2)
        .filter(|t| t.kind == TokenKind::Word)
        .map(|t| t.text.to_ascii_lowercase())
        .collect();
    let second = words.get(1).map(String::as_str);
    match words.first().map(String::as_str)? {
        "begin" | "start" => Some(TxControl::Begin),
        "commit" | "end" if second == Some("prepared") => Some(TxControl::TwoPhase),
        "commit" | "end" => Some(TxControl::End(true)),
        "rollback" if second == Some("prepared") => Some(TxControl::TwoPhase),
        "rollback" if second == Some("to") => Some(TxControl::Savepoint),
        "rollback" | "abort" => Some(TxControl::End(false)),
        "savepoint" | "release" => Some(TxControl::Savepoint),
        "prepare" if second == Some("transaction") => Some(TxControl::TwoPhase),
        _ => None,
    }
}

/// Where a statement must run.
#[derive(Debug, Clone)]
pub(super) enum Dest {
    /// One shard.
    One(usize),
    /// The same statement on several shards, each holding different rows.
    Many(Vec<usize>),
    /// The same statement on every shard, each holding a copy (DDL,
    /// reference tables).
    Everywhere(Vec<usize>),
    /// A different statement per shard (a split multi-row INSERT).
    Split(Vec<(usize, String)>),
    /// A query over rows of several shards whose results are merged; the
    /// database collation when it does not order text bytewise.
    Merge(Vec<usize>, Arc<MergePlan>, Option<String>),
    /// `INSERT ... SELECT` whose rows the proxy carries from the query to
    /// the shards that own them.
    Stream(Box<super::insert_select::StreamInsert>),
    /// A subquery merged across shards, then the outer query on one shard
    /// over its rows.
    Materialize(Box<shardgate_router::materialize::Materialize>),
}

/// The shard map as the statement planner sees it.
pub(crate) struct MapLookup<'a>(pub &'a ShardMap);

impl TableLookup for MapLookup<'_> {
    fn sharded(&self, schema: Option<&str>, name: &str) -> Option<ShardedTable> {
        self.0.table(schema, name).map(|r| ShardedTable {
            column: r.column.clone(),
            ranged: matches!(r.function, Function::Range(_)),
        })
    }

    fn is_reference(&self, schema: Option<&str>, name: &str) -> bool {
        self.0.is_reference(schema, name)
    }

    fn version(&self) -> u64 {
        self.0.version()
    }

    fn co_located(&self, a: (Option<&str>, &str), b: (Option<&str>, &str)) -> bool {
        match (self.0.table(a.0, a.1), self.0.table(b.0, b.1)) {
            (Some(a), Some(b)) => a.co_located(b),
            _ => false,
        }
    }
}

impl crate::runtime::Snapshot {
    /// How `sql` routes (the cached analysis; with the shard map's tables
    /// when the proxy shards, so one cache version serves both questions).
    pub(crate) fn classify(&self, sql: &str) -> shardgate_router::Classification {
        match &self.sharding {
            Some(s) => self.analyzer.classify(sql, Some(&MapLookup(&s.map))),
            None => self.analyzer.classify(sql, None),
        }
    }
}

/// Bind parameters, when the statement came through the extended protocol.
pub(super) type Params<'a> = Option<&'a Bind<'a>>;

/// A key value could not be determined (an expression, a missing parameter).
pub(super) struct Unknown;

pub(super) fn not_null(table: &str, column: &str) -> PgError {
    PgError::error(
        "23502",
        format!("shard key {column} of sharded table {table} must not be NULL"),
    )
}

pub(super) fn bad_key(rule: &TableRule, e: impl std::fmt::Display) -> PgError {
    PgError::error(
        "22P02",
        format!("invalid shard key for {}.{}: {e}", rule.table, rule.column),
    )
}

/// The key a value source denotes (`Ok(None)` for SQL NULL).
pub(super) fn key_from(
    rule: &TableRule,
    src: &ValueSource,
    params: Params<'_>,
) -> Result<Result<Option<ShardKey>, Unknown>, PgError> {
    match src {
        ValueSource::Literal(text) => ShardKey::parse_text(rule.key_type, text)
            .map(|k| Ok(Some(k)))
            .map_err(|e| bad_key(rule, e)),
        ValueSource::Param(n) => {
            let Some(bind) = params else {
                return Ok(Err(Unknown));
            };
            let i = n.saturating_sub(1);
            if i >= bind.param_count() {
                return Ok(Err(Unknown));
            }
            let Some(raw) = bind.param(i) else {
                return Ok(Ok(None));
            };
            let key = if bind.param_format(i) == 1 {
                ShardKey::parse_binary(rule.key_type, raw)
            } else {
                match std::str::from_utf8(raw) {
                    Ok(t) => ShardKey::parse_text(rule.key_type, t),
                    Err(_) => return Err(bad_key(rule, "parameter is not valid UTF-8")),
                }
            };
            key.map(|k| Ok(Some(k))).map_err(|e| bad_key(rule, e))
        }
        ValueSource::Null => Ok(Ok(None)),
        ValueSource::LiteralIndex(_) | ValueSource::Other => Ok(Err(Unknown)),
    }
}

/// The shard of a row key (errors for keys no range/list entry accepts).
pub(super) fn shard_of_key(
    map: &ShardMap,
    rule: &TableRule,
    key: &ShardKey,
) -> Result<usize, PgError> {
    map.shard_for(rule, key).map_err(|e| {
        PgError::error("23514", e.to_string())
            .with_hint("Add the value to the table's ranges or lists in proxy.toml.")
    })
}

/// The Describe/Execute messages and the Sync that follow a Bind going to
/// several shards.
pub(super) struct AfterBind {
    /// The messages, Sync included.
    batch: BytesMut,
    /// A Describe is among them.
    pub(super) describe: bool,
    /// The row limit of the Execute, if it sets one.
    pub(super) max_rows: Option<u64>,
    /// Bytes of `rest` they take.
    pub(super) consumed: usize,
}

pub(super) fn batch_after_bind(rest: &[u8], max_message: usize) -> Result<AfterBind, PgError> {
    let mut batch = BytesMut::new();
    let mut describe = false;
    let mut max_rows = None;
    let mut executes = 0;
    let mut pos = 0;
    loop {
        let Ok(Some(h)) = Header::complete(&rest[pos..], max_message) else {
            return Err(PgError::error(
                "0A000",
                "a statement for several shards must arrive with its Execute and Sync",
            )
            .with_hint("Send Bind, Execute and Sync together."));
        };
        let m = &rest[pos..pos + h.total];
        let bad = |e: shardgate_protocol::ProtocolError| PgError::error("08P01", e.to_string());
        match h.tag {
            tag::DESCRIBE => {
                DescribeOrClose::decode(&m[5..], "Describe").map_err(bad)?;
                describe = true;
            }
            tag::EXECUTE => {
                let e = Execute::decode(&m[5..]).map_err(bad)?;
                executes += 1;
                if executes > 1 {
                    return Err(PgError::error(
                        "0A000",
                        "fetching a query over several shards in batches (several Executes of one portal) is not supported",
                    )
                    .with_hint("Fetch all rows with one Execute."));
                }
                if e.max_rows > 0 {
                    max_rows = Some(e.max_rows as u64);
                }
            }
            tag::SYNC => {
                batch.extend_from_slice(m);
                return Ok(AfterBind {
                    batch,
                    describe,
                    max_rows,
                    consumed: pos + h.total,
                });
            }
            _ => {
                return Err(PgError::error(
                    "0A000",
                    "only Describe, Execute and Sync may follow a Bind that goes to several shards",
                ))
            }
        }
        batch.extend_from_slice(m);
        pos += h.total;
    }
}

/// EXPLAIN of a statement that runs on several shards: each shard would
/// describe its own part, and glued together they are no plan at all.
pub(super) fn refuse_explain(sql: &str) -> Result<(), PgError> {
    if first_keyword(sql).is_some_and(|k| k.eq_ignore_ascii_case("explain")) {
        return Err(cross_shard_refusal(
            "EXPLAIN of a statement that runs on several shards",
        ));
    }
    Ok(())
}

/// Whether the portal a Bind creates is read in pieces: an Execute with a
/// row limit follows, or the batch ends (Flush or Sync) before any Execute
/// (pg-cursor, asyncpg's cursors, pgjdbc's fetch size).
fn read_in_pieces(rest: &[u8], portal: &str, max: usize) -> bool {
    let mut pos = 0;
    while let Ok(Some(h)) = Header::complete(&rest[pos..], max) {
        let body = &rest[pos + 5..pos + h.total];
        match h.tag {
            tag::DESCRIBE => {}
            tag::EXECUTE => {
                return Execute::decode(body).is_ok_and(|e| e.portal == portal && e.max_rows > 0)
            }
            tag::FLUSH | tag::SYNC => return true,
            _ => return false,
        }
        pos += h.total;
    }
    false
}

/// The 0A000 error for a query that cannot be answered across shards.
pub(super) fn cross_shard_refusal(construct: &str) -> PgError {
    PgError::error("0A000", format!("not supported across shards: {construct}")).with_hint(
        "Restrict the query to one shard key value, or add a /* shardgate: shard=N */ hint.",
    )
}

/// The first call of a user-defined aggregate in `sql`.
pub(super) fn user_aggregate_call(
    sql: &str,
    aggregates: &std::collections::HashSet<String>,
) -> Option<String> {
    if aggregates.is_empty() {
        return None;
    }
    let toks = shardgate_router::lexer::lean_tokens(sql);
    toks.iter().enumerate().find_map(|(i, t)| {
        let name = match t.kind {
            TokenKind::Word => t.text.to_ascii_lowercase(),
            TokenKind::QuotedIdent => t.text.trim_matches('"').to_owned(),
            _ => return None,
        };
        (toks.get(i + 1).is_some_and(|n| n.is_punct("(")) && aggregates.contains(&name))
            .then_some(name)
    })
}

/// Statements that cannot run inside a transaction block.
fn non_transactional(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    matches!(
        first_keyword(sql).map(str::to_ascii_lowercase).as_deref(),
        Some("vacuum" | "checkpoint" | "cluster" | "reindex")
    ) || lower.contains("concurrently")
        || lower.contains("database")
        || lower.contains("tablespace")
        || lower.contains("alter system")
}

impl Session {
    pub(super) fn map(&self) -> Arc<ShardMap> {
        self.snap
            .sharding
            .as_ref()
            .expect("sharded session")
            .map
            .clone()
    }

    /// The shard a shard hint names, checked.
    fn hinted_shard(&self, n: u32) -> Result<usize, PgError> {
        let count = self.shards.len();
        usize::try_from(n)
            .ok()
            .filter(|n| *n < count)
            .ok_or_else(|| {
                PgError::error("22023", format!("shard hint {n} names no shard")).with_hint(
                    format!("Shards are numbered 0 to {}.", count.saturating_sub(1)),
                )
            })
    }

    /// The shard of a sharding-key hint: mapped with the rule of the
    /// statement's sharded table, or of the first sharded table.
    fn key_hint_shard(
        &self,
        map: &ShardMap,
        plan: &ShardPlan,
        key: &str,
    ) -> Result<usize, PgError> {
        let table = match plan {
            ShardPlan::Keyed { table, .. } => Some((table.0.clone(), table.1.clone())),
            ShardPlan::Insert(p) => Some(p.table.clone()),
            _ => None,
        };
        let rule = table
            .and_then(|(s, n)| map.table(s.as_deref(), &n).cloned())
            .or_else(|| map.tables().first().cloned())
            .ok_or_else(|| {
                PgError::error(
                    "22023",
                    "shardgate.sharding_key needs a sharded table in the configuration",
                )
            })?;
        let key = ShardKey::parse_text(rule.key_type, key).map_err(|e| bad_key(&rule, e))?;
        shard_of_key(map, &rule, &key)
    }

    /// Where one statement goes. `Err` is what the client is told instead.
    /// An SQL cursor lives on the shard its DECLARE went to: FETCH, MOVE
    /// and CLOSE of it go there too.
    pub(super) async fn dest_for(
        &mut self,
        sql: &str,
        plan: &ShardPlan,
        hints: &Hints,
        params: Params<'_>,
    ) -> Result<Dest, PgError> {
        let cursor = matches!(plan, ShardPlan::NoTable)
            || first_keyword(sql).is_some_and(|k| k.eq_ignore_ascii_case("declare"));
        let cursor = cursor
            .then(|| shardgate_router::CursorStatement::parse(sql))
            .flatten();
        if let Some(shardgate_router::CursorStatement::Use(name)) = &cursor {
            if let Some(&shard) = self.cursors.get(name) {
                return Ok(Dest::One(shard));
            }
        }
        let dest = self.dest_of_plan(sql, plan, hints, params).await;
        if let (Some(shardgate_router::CursorStatement::Declare(name)), Ok(Dest::One(s))) =
            (cursor, &dest)
        {
            self.cursors.insert(name, *s);
        }
        dest
    }

    /// [`Session::dest_for`] from the statement's plan alone.
    async fn dest_of_plan(
        &mut self,
        sql: &str,
        plan: &ShardPlan,
        hints: &Hints,
        params: Params<'_>,
    ) -> Result<Dest, PgError> {
        self.pass_move_gate(sql, plan, params).await?;
        let map = self.map();
        if let Some(n) = hints.shard {
            return self.hinted_shard(n).map(Dest::One);
        }
        if let Some(k) = hints.sharding_key.clone().or_else(|| self.key_hint.clone()) {
            return self.key_hint_shard(&map, plan, &k).map(Dest::One);
        }
        if let Some(n) = self.shard_hint {
            return Ok(Dest::One(n));
        }
        let default = map.default_shard();
        match plan {
            ShardPlan::Unsharded | ShardPlan::NoTable => Ok(Dest::One(default)),
            ShardPlan::ReferenceRead => Ok(Dest::One(
                self.backend
                    .as_ref()
                    .map(|b| b.shard)
                    .or_else(|| self.parked.first().map(|b| b.shard))
                    .unwrap_or(default),
            )),
            ShardPlan::ReferenceWrite | ShardPlan::Broadcast => {
                if matches!(plan, ShardPlan::Broadcast) {
                    if let Some(s) = &self.snap.sharding {
                        s.catalog.clear();
                    }
                }
                Ok(Dest::Everywhere(map.all_shards()))
            }
            ShardPlan::Keyed { table, filter } => {
                let rule = map
                    .table(table.0.as_deref(), &table.1)
                    .cloned()
                    .ok_or_else(|| PgError::error("XX000", format!("no rule for {}", table.1)))?;
                match shards_of_filter(&map, &rule, filter, params)? {
                    None => Err(no_key(&rule.table.to_string())),
                    Some(set) => match set.len() {
                        0 => Ok(Dest::One(default)),
                        1 => Ok(Dest::One(set[0])),
                        _ => {
                            if !self.writes_rows(sql) {
                                return self.merge_dest(sql, set).await;
                            }
                            refuse_explain(sql)?;
                            Ok(Dest::Many(set))
                        }
                    },
                }
            }
            ShardPlan::Insert(ins) => self.insert_dest(&map, sql, ins, params).await,
            ShardPlan::NoKey { table } => {
                let _ = table;
                if self.writes_rows(sql) {
                    // UPDATE/DELETE without a key: every shard, counts summed.
                    refuse_explain(sql)?;
                    Ok(Dest::Many(map.all_shards()))
                } else {
                    self.merge_dest(sql, map.all_shards()).await
                }
            }
            ShardPlan::Unsupported { construct } => {
                if !self.writes_rows(sql) {
                    if let Some(m) = self.materialized(sql).await? {
                        return Ok(Dest::Materialize(Box::new(m)));
                    }
                }
                Err(PgError::error(
                    "0A000",
                    format!("not supported across shards: {construct}"),
                ))
            }
        }
    }

    /// A read over several shards: concatenated, or merged as its plan says.
    async fn merge_dest(&mut self, sql: &str, shards: Vec<usize>) -> Result<Dest, PgError> {
        let sharding = self.snap.sharding.as_ref().expect("sharded session");
        if sql.len() > shardgate_router::classify::MAX_PARSE_BYTES {
            // Refused by the merge planner before anything else looks at it.
            let lookup = MapLookup(&sharding.map);
            if let Err(e) = shardgate_router::merge_plan::plan_merge(sql, &lookup) {
                return Err(cross_shard_refusal(&e.construct));
            }
        }
        let facts = self.database_facts().await?;
        if let Some(name) = user_aggregate_call(sql, &facts.user_aggregates) {
            // Its per-shard results cannot be combined: one server runs it
            // over the gathered rows.
            return match self.materialized(sql).await? {
                Some(m) => Ok(Dest::Materialize(Box::new(m))),
                None => Err(cross_shard_refusal(&format!(
                    "the user-defined aggregate {name}()"
                ))),
            };
        }
        let sharding = self.snap.sharding.as_ref().expect("sharded session");
        match self
            .snap
            .analyzer
            .merge_plan(sql, &MapLookup(&sharding.map))
        {
            Ok(plan) if plan.mode == MergeMode::Concat && !plan.explain => Ok(Dest::Many(shards)),
            Ok(mut plan) => {
                let collation = (!facts.bytewise_collation).then(|| facts.collation.clone());
                let columns = self.group_alias_columns(&plan).await?;
                if !columns.is_empty() {
                    // GROUP BY a name that is also an input column: Postgres
                    // groups by the column, so the plan must too.
                    let sharding = self.snap.sharding.as_ref().expect("sharded session");
                    let lookup = MapLookup(&sharding.map);
                    plan = shardgate_router::merge_plan::plan_merge_with(sql, &lookup, &columns)
                        .map(Arc::new)
                        .map_err(|e| cross_shard_refusal(&e.construct))?;
                }
                Ok(Dest::Merge(shards, plan, collation))
            }
            Err(e) => match self.materialized(sql).await? {
                Some(m) => Ok(Dest::Materialize(Box::new(m))),
                None => Err(cross_shard_refusal(&e.construct)),
            },
        }
    }

    /// Where the catalog of the default shard is read: address, user,
    /// password.
    fn catalog_source_parts(&self) -> (String, String, Option<String>) {
        let addr = self.shards[self.map().default_shard()]
            .writer()
            .addr
            .clone();
        let user = self.user.config.server_user().to_owned();
        let password = self.user.config.server_password().map(str::to_owned);
        (addr, user, password)
    }

    /// Asks the catalog of the default shard with `ask`.
    async fn ask_catalog<T>(
        &self,
        ask: impl AsyncFnOnce(&crate::catalog::Catalog, &CatalogSource<'_>) -> Result<T, PgError>,
    ) -> Result<T, PgError> {
        let (addr, user, password) = self.catalog_source_parts();
        let sharding = self.snap.sharding.as_ref().expect("sharded session");
        let src = CatalogSource {
            addr: &addr,
            user: &user,
            password: password.as_deref(),
            database: &self.database,
            tls: &self.snap.server_tls,
        };
        ask(&sharding.catalog, &src).await
    }

    /// Collation and user-defined aggregates of the client's database.
    pub(super) async fn database_facts(
        &mut self,
    ) -> Result<Arc<crate::catalog::DatabaseFacts>, PgError> {
        self.ask_catalog(async |c, src| c.facts(src).await).await
    }

    /// The column order of a table, from the catalog of the default shard.
    pub(super) async fn table_columns(
        &mut self,
        schema: Option<&str>,
        name: &str,
    ) -> Result<Arc<Vec<String>>, PgError> {
        let qualified = match schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(name)),
            None => quote_ident(name),
        };
        self.catalog_columns(&qualified).await
    }

    /// The column order of `table` (as SQL names it).
    pub(super) async fn catalog_columns(&self, table: &str) -> Result<Arc<Vec<String>>, PgError> {
        self.ask_catalog(async |c, src| c.columns(src, table).await)
            .await
    }

    /// The size in bytes of `table` (as SQL names it) on the default shard.
    pub(super) async fn catalog_size(&self, table: &str) -> Result<f64, PgError> {
        self.ask_catalog(async |c, src| c.table_size(src, table).await)
            .await
    }

    async fn insert_dest(
        &mut self,
        map: &ShardMap,
        sql: &str,
        ins: &shardgate_router::shard::InsertPlan,
        params: Params<'_>,
    ) -> Result<Dest, PgError> {
        let rule = map
            .table(ins.table.0.as_deref(), &ins.table.1)
            .cloned()
            .ok_or_else(|| PgError::error("XX000", format!("no rule for {}", ins.table.1)))?;
        if ins.from_select {
            return self.insert_select_dest(&rule, sql, ins, params).await;
        }
        if ins.rows.is_empty() {
            return Err(PgError::error(
                "0A000",
                format!(
                    "INSERT ... DEFAULT VALUES into sharded table {} is not supported",
                    rule.table
                ),
            )
            .with_hint("Insert rows with VALUES so each can be sent to its shard."));
        }
        let index = self.insert_key_index(ins, &rule).await?.ok_or_else(|| {
            PgError::error(
                "0A000",
                format!(
                    "INSERT into sharded table {} must give its shard key {}",
                    rule.table, rule.column
                ),
            )
        })?;
        let mut by_shard: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (r, row) in ins.rows.iter().enumerate() {
            let src = row.values.get(index).unwrap_or(&ValueSource::Other);
            let key = match key_from(&rule, src, params)? {
                Ok(Some(k)) => k,
                Ok(None) => return Err(not_null(&rule.table.to_string(), &rule.column)),
                Err(Unknown) => {
                    return Err(PgError::error(
                        "0A000",
                        format!(
                            "the shard key {} of {} must be a constant or a parameter in INSERT",
                            rule.column, rule.table
                        ),
                    ))
                }
            };
            by_shard
                .entry(shard_of_key(map, &rule, &key)?)
                .or_default()
                .push(r);
        }
        if by_shard.len() == 1 {
            return Ok(Dest::One(*by_shard.keys().next().expect("one shard")));
        }
        let prefix = sql.get(ins.prefix.clone()).unwrap_or("");
        let suffix = sql.get(ins.suffix.clone()).unwrap_or("");
        let parts = by_shard
            .into_iter()
            .map(|(shard, rows)| {
                let rows: Vec<&str> = rows
                    .iter()
                    .map(|&r| sql.get(ins.rows[r].span.clone()).unwrap_or(""))
                    .collect();
                let mut text = format!("{prefix}{}", rows.join(", "));
                if !suffix.is_empty() {
                    text.push(' ');
                    text.push_str(suffix);
                }
                (shard, text)
            })
            .collect();
        Ok(Dest::Split(parts))
    }

    /// The position of `rule`'s key among an INSERT's columns (its column
    /// list, or the table's columns when it has none).
    pub(super) async fn insert_key_index(
        &mut self,
        ins: &shardgate_router::shard::InsertPlan,
        rule: &TableRule,
    ) -> Result<Option<usize>, PgError> {
        Ok(match &ins.columns {
            Some(cols) => cols.iter().position(|c| *c == rule.column),
            None => self
                .table_columns(ins.table.0.as_deref(), &ins.table.1)
                .await?
                .iter()
                .position(|c| *c == rule.column),
        })
    }

    /// What the statement needs from each shard's node, inside or outside a
    /// transaction spread over shards.
    pub(super) fn want_sharded(&self, sql: &str) -> Want {
        self.want_sharded_classified(sql, None)
    }

    /// [`Session::want_sharded`] when the statement's classification is at
    /// hand (`known`), so it is not looked up again.
    fn want_sharded_classified(
        &self,
        sql: &str,
        known: Option<&shardgate_router::Classification>,
    ) -> Want {
        match &self.vtx {
            Some(v) if v.read_only => match self.routing.want(
                shardgate_router::Route::Begin { read_only: true },
                &Hints::default(),
            ) {
                w @ Want::ReadOnlyTx(_) => w,
                _ => Want::Primary,
            },
            Some(_) => Want::Primary,
            None if !self.route_reads => self.want_for(sql).unwrap_or(Want::Primary),
            None => match known {
                Some(c) => self.want_of(c),
                None => self.want_for(sql),
            }
            .unwrap_or(Want::Primary),
        }
    }

    /// A simple query on a sharded cluster.
    pub(super) async fn on_query_sharded(
        &mut self,
        msg: &[u8],
        sql: &str,
    ) -> Result<(), SessionError> {
        let stmts = split_statements(sql);
        if let [one] = stmts.as_slice() {
            if let Some(tc) = tx_control(one) {
                return self.tx_control_simple(one, tc).await;
            }
        }
        if self.tx_aborted() {
            return self.reply_error(aborted());
        }
        if let [one] = stmts.as_slice() {
            if let Some(done) = self.cursor_query(one).await? {
                return Ok(done);
            }
        }
        if stmts.len() == 1
            && first_keyword(stmts[0]).is_some_and(|k| k.eq_ignore_ascii_case("copy"))
        {
            if let Some(done) = self.copy_sharded(msg, stmts[0]).await? {
                return Ok(done);
            }
        }
        let hints = match parse_hints(sql) {
            Ok(h) => h,
            Err(e) => return self.reply_error(super::hint_error(e)),
        };
        let mut dest = None;
        // A single statement's route comes with its plan (one lookup).
        let mut classified = None;
        for stmt in &stmts {
            let (plan, c) = self.plan_and_route(stmt);
            if stmts.len() == 1 && *stmt == sql {
                classified = Some(c);
            }
            let d = match self.dest_for(stmt, &plan, &hints, None).await {
                Ok(d) => d,
                // A later statement may need what an earlier one creates.
                Err(_) if stmts.len() > 1 => return self.statements_apart(&stmts).await,
                Err(e) => return self.reply_error(e),
            };
            dest = match (dest, d) {
                (None, d) => Some(d),
                (Some(Dest::One(a)), Dest::One(b)) if a == b => Some(Dest::One(a)),
                (Some(Dest::Everywhere(a)), Dest::Everywhere(b)) if a == b => {
                    Some(Dest::Everywhere(a))
                }
                _ => return self.statements_apart(&stmts).await,
            };
        }
        let want = self.want_sharded_classified(sql, classified.as_ref());
        let dest = dest.unwrap_or(Dest::One(self.default_shard()));
        let d_kind = if matches!(dest, Dest::Everywhere(_)) {
            DestKind::Copies
        } else {
            DestKind::Rows
        };
        match dest {
            Dest::One(s) => {
                self.target = s;
                if self.attach(Proto::Simple, want).await? {
                    if self.vtx.is_none() {
                        self.start_retry(msg);
                    }
                    self.cycle_starts(sql);
                    self.forward(msg, crate::relay::Expect::Query { forward: true });
                    if shardgate_router::quick_scan(sql).set {
                        self.restore_startup_values(sql);
                    }
                }
                Ok(())
            }
            Dest::Many(shards) | Dest::Everywhere(shards) => {
                let copies = matches!(d_kind, DestKind::Copies);
                let write = match &classified {
                    Some(c) => c.route != shardgate_router::Route::Read,
                    None => self.is_write(sql),
                };
                let wrap = write && !non_transactional(sql);
                let mut q = BytesMut::new();
                frontend::encode_query(sql, &mut q);
                let requests: Vec<(usize, BytesMut)> =
                    shards.into_iter().map(|s| (s, q.clone())).collect();
                let mut opts = FanOpts::new(want);
                opts.wrap = wrap;
                opts.sum = !copies;
                let used: Vec<usize> = requests.iter().map(|(s, _)| *s).collect();
                let timing = self.fanout_starts(sql);
                let r = self.fanout(requests, opts).await;
                self.fanout_ends(timing, &used);
                r
            }
            Dest::Merge(shards, plan, collation) => {
                let used = shards.clone();
                let timing = self.fanout_starts(sql);
                let again = || MergeRequest::simple(collation.clone(), None);
                let r = self.merge_or_gather(sql, (shards, plan, want), again).await;
                self.fanout_ends(timing, &used);
                r
            }
            Dest::Materialize(m) => {
                let again = || MergeRequest::simple(None, None);
                let used = self.map().all_shards();
                let timing = self.fanout_starts(sql);
                let r = self.materialize_or_gather(sql, &m, want, again).await;
                self.fanout_ends(timing, &used);
                r
            }
            Dest::Stream(si) => {
                let timing = self.fanout_starts(sql);
                let used = self.map().all_shards();
                let r = self.insert_select_run(*si, None, None).await;
                self.fanout_ends(timing, &used);
                r
            }
            Dest::Split(parts) => {
                let requests: Vec<(usize, BytesMut)> = parts
                    .into_iter()
                    .map(|(s, text)| {
                        let mut q = BytesMut::new();
                        frontend::encode_query(&text, &mut q);
                        (s, q)
                    })
                    .collect();
                let mut opts = FanOpts::new(want);
                opts.wrap = true;
                let used: Vec<usize> = requests.iter().map(|(s, _)| *s).collect();
                let timing = self.fanout_starts(sql);
                let r = self.fanout(requests, opts).await;
                self.fanout_ends(timing, &used);
                r
            }
        }
    }

    /// A query string whose statements go to different places: run one at
    /// a time ([`Session::run_one_by_one`]); COPY among them is refused.
    async fn statements_apart(&mut self, stmts: &[&str]) -> Result<(), SessionError> {
        let copies = stmts
            .iter()
            .any(|s| first_keyword(s).is_some_and(|k| k.eq_ignore_ascii_case("copy")));
        if copies {
            return self.reply_error(
                PgError::error(
                    "0A000",
                    "COPY in a query string whose statements go to different shards is not supported",
                )
                .with_hint("Send the COPY by itself."),
            );
        }
        self.run_one_by_one(stmts).await
    }

    pub(super) fn is_write(&self, sql: &str) -> bool {
        self.snap.classify(sql).route != shardgate_router::Route::Read
    }

    /// Whether a statement over several shards is a write whose answers
    /// (row counts, RETURNING rows) simply add up: INSERT, UPDATE, DELETE,
    /// MERGE or a writing WITH. Anything else the classifier sends to the
    /// primary (a `SELECT ... FOR UPDATE`, a statement it cannot parse) is
    /// a read whose rows must be merged or refused.
    fn writes_rows(&self, sql: &str) -> bool {
        self.is_write(sql)
            && first_keyword(sql).is_some_and(|k| {
                ["insert", "update", "delete", "merge", "with"]
                    .iter()
                    .any(|w| k.eq_ignore_ascii_case(w))
            })
    }

    /// The plan of a prepared statement, made once per shard map version.
    pub(super) fn statement_plan(&self, stmt: &crate::prepared::Statement) -> Arc<ShardPlan> {
        let sharding = self.snap.sharding.as_ref().expect("sharded session");
        stmt.shard_plan(sharding.map.version(), || self.plan_of(&stmt.query))
    }

    /// The cached plan of one statement, literals resolved.
    pub(super) fn plan_of(&self, sql: &str) -> ShardPlan {
        self.plan_and_route(sql).0
    }

    /// [`Session::plan_of`] and the statement's classification, from one
    /// analysis.
    fn plan_and_route(&self, sql: &str) -> (ShardPlan, shardgate_router::Classification) {
        let sharding = self.snap.sharding.as_ref().expect("sharded session");
        let planned = self
            .snap
            .analyzer
            .plan_and_classify(sql, &MapLookup(&sharding.map));
        let plan = planned.plan.resolve_literals(&planned.literals);
        (plan, planned.classification)
    }

    /// An error answering a simple query (the transaction, if any, fails).
    pub(super) fn reply_error(&mut self, e: PgError) -> Result<(), SessionError> {
        if let Some(v) = self.vtx.as_mut() {
            v.failed = true;
        }
        self.runtime.stats.proxy_error(e.code.as_str());
        e.encode(&mut self.cout);
        backend::ready_for_query(self.client_status(), &mut self.cout);
        Ok(())
    }

    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT in the simple protocol.
    async fn tx_control_simple(&mut self, sql: &str, tc: TxControl) -> Result<(), SessionError> {
        match tc {
            TxControl::Begin => {
                let mut out = BytesMut::new();
                self.begin_virtual(sql, &mut out);
                backend::ready_for_query(self.client_status(), &mut out);
                self.cout.extend_from_slice(&out);
                Ok(())
            }
            TxControl::End(commit) => self.end_virtual(commit, true).await,
            TxControl::Savepoint => self.savepoint(sql, true).await,
            TxControl::TwoPhase => self.reply_error(
                PgError::error("0A000", "PREPARE TRANSACTION and COMMIT/ROLLBACK PREPARED are not passed through shardgate")
                    .with_hint("shardgate coordinates multi-shard commits itself."),
            ),
        }
    }

    /// Whether the client's transaction spread over shards has failed: a
    /// statement failed on one of its shards, or the proxy refused one. Only
    /// ROLLBACK, COMMIT (which rolls back) and ROLLBACK TO run then.
    pub(super) fn tx_aborted(&self) -> bool {
        self.vtx.as_ref().is_some_and(|v| {
            v.failed
                || self.parked.iter().any(|b| b.ex.status == b'E')
                || self.backend.as_ref().is_some_and(|b| b.ex.status == b'E')
        })
    }

    /// SAVEPOINT, ROLLBACK TO and RELEASE: run on every shard the
    /// transaction uses (on the default shard if none yet), and remembered,
    /// so a shard that joins later gets the open savepoints after its
    /// BEGIN. `ready`: simple protocol (ReadyForQuery ends the answer).
    pub(super) async fn savepoint(&mut self, sql: &str, ready: bool) -> Result<(), SessionError> {
        let cmd = shardgate_router::SavepointCommand::parse(sql);
        let mut shards: Vec<usize> = self.parked.iter().map(|b| b.shard).collect();
        shards.extend(self.backend.as_ref().map(|b| b.shard));
        if shards.is_empty() {
            shards.push(self.default_shard());
        }
        let rolling_back = matches!(cmd, Some(shardgate_router::SavepointCommand::RollbackTo(_)));
        if let Some(v) = self.vtx.as_mut().filter(|_| rolling_back) {
            // ROLLBACK TO ends a failure; the shards' answers say whether it did.
            v.failed = false;
        }
        let mut q = BytesMut::new();
        frontend::encode_query(sql, &mut q);
        let requests = shards.into_iter().map(|s| (s, q.clone())).collect();
        let mut opts = FanOpts::new(Want::Primary);
        opts.ready = ready;
        opts.sum = false;
        self.fanout(requests, opts).await?;
        let failed = self.tx_aborted();
        if failed && !ready {
            // An error in an extended batch: the rest of it is skipped.
            self.skip_until_sync = true;
        }
        if let (Some(v), Some(cmd), false) = (self.vtx.as_mut(), cmd, failed) {
            use shardgate_router::SavepointCommand::*;
            let last = |name: &str| v.savepoints.iter().rposition(|n| n == name);
            match cmd {
                Savepoint(name) => v.savepoints.push(name),
                RollbackTo(name) => {
                    if let Some(i) = last(&name) {
                        v.savepoints.truncate(i + 1);
                    }
                }
                Release(name) => {
                    if let Some(i) = last(&name) {
                        v.savepoints.truncate(i);
                    }
                }
            }
        }
        Ok(())
    }

    /// Starts a client transaction; BEGIN reaches each shard on first use.
    pub(super) fn begin_virtual(&mut self, sql: &str, out: &mut BytesMut) {
        if self.vtx.is_some() || self.backend.as_ref().is_some_and(|b| b.ex.status != b'I') {
            backend::notice("25001", "there is already a transaction in progress", out);
        } else {
            let read_only = matches!(
                self.snap.classify(sql).route,
                shardgate_router::Route::Begin { read_only: true }
            );
            self.vtx = Some(VirtualTx {
                begin: sql.to_owned(),
                failed: false,
                read_only,
                savepoints: Vec::new(),
                implicit: false,
            });
        }
        backend::command_complete("BEGIN", out);
    }

    /// Ends the client transaction on every shard it used: COMMIT, or
    /// ROLLBACK if any statement failed. `ready`: also send ReadyForQuery
    /// (simple protocol; in the extended protocol Sync does).
    pub(super) async fn end_virtual(
        &mut self,
        commit: bool,
        ready: bool,
    ) -> Result<(), SessionError> {
        self.drain_current().await?;
        self.cursors.clear();
        self.merged_cursors.clear();
        let Some(v) = self.vtx.take() else {
            let mut out = BytesMut::new();
            backend::notice("25P01", "there is no transaction in progress", &mut out);
            backend::command_complete(if commit { "COMMIT" } else { "ROLLBACK" }, &mut out);
            if ready {
                backend::ready_for_query(self.client_status(), &mut out);
            }
            self.cout.extend_from_slice(&out);
            return Ok(());
        };
        let mut shards: Vec<usize> = self.parked.iter().map(|b| b.shard).collect();
        shards.extend(self.backend.as_ref().map(|b| b.shard));
        let failed = v.failed
            || self.parked.iter().any(|b| b.ex.status == b'E')
            || self.backend.as_ref().is_some_and(|b| b.ex.status == b'E');
        let end = if commit && !failed {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        if shards.is_empty() {
            let mut out = BytesMut::new();
            backend::command_complete(end, &mut out);
            if ready {
                backend::ready_for_query(b'I', &mut out);
            }
            self.cout.extend_from_slice(&out);
            return Ok(());
        }
        let mut parts = Vec::with_capacity(shards.len());
        for s in shards {
            match self.part_for(s, Want::Primary).await {
                Ok((p, _)) => parts.push(p),
                Err(e) => {
                    tracing::warn!(error = %e, "shard connection gone before the end of the transaction")
                }
            }
        }
        let error = self.finish_parts(&mut parts, end == "COMMIT").await;
        let mut out = BytesMut::new();
        match error {
            Some(e) => e.encode(&mut out),
            // A batch's implicit transaction ends without a tag of its own.
            None if v.implicit => {}
            None => backend::command_complete(end, &mut out),
        }
        if ready {
            backend::ready_for_query(b'I', &mut out);
        }
        self.cout.extend_from_slice(&out);
        for p in parts {
            self.return_part(p.settle());
        }
        self.flush_client().await
    }

    /// Parse in the extended protocol: answered by the proxy; the statement
    /// is prepared on whichever shard a Bind sends it to.
    pub(super) fn parse_sharded(&mut self, p: &Parse<'_>) -> Result<(), SessionError> {
        match self.check_parse(p, self.statements.contains(p.name)) {
            Err(e) => self.refuse_pg(e),
            Ok(stmt) => {
                self.statements.insert(p.name, stmt);
                let mut out = BytesMut::new();
                backend::empty(backend::tag::PARSE_COMPLETE, &mut out);
                self.emit_local(out.freeze());
                Ok(())
            }
        }
    }

    /// What Parse does on a sharded cluster before any server sees the
    /// statement: the name must be free (`exists`: the client uses it
    /// already) and the hints valid; the statement is interned.
    pub(super) fn check_parse(
        &self,
        p: &Parse<'_>,
        exists: bool,
    ) -> Result<Arc<crate::prepared::Statement>, PgError> {
        if !p.name.is_empty() && exists {
            return Err(PgError::error(
                "42P05",
                format!("prepared statement \"{}\" already exists", p.name),
            ));
        }
        parse_hints(p.query).map_err(super::hint_error)?;
        Ok(self.runtime.statements.intern(p.query, p.param_types))
    }

    /// Bind in the extended protocol: the parameters decide the shard.
    pub(super) async fn bind_sharded(
        &mut self,
        msg: &[u8],
        bind: &Bind<'_>,
        rest: &[u8],
    ) -> Result<(), SessionError> {
        // A new Bind replaces a portal of the same name.
        let portal_key = super::cursor::CursorKey::Portal(bind.portal.to_owned());
        if self.has_cursor(&portal_key) {
            self.close_cursor(&portal_key).await;
        }
        let Some(stmt) = self.statements.get(bind.statement).cloned() else {
            let err = PgError::error(
                "26000",
                format!("prepared statement \"{}\" does not exist", bind.statement),
            );
            return self.refuse_pg(err);
        };
        if self.tx_aborted() {
            return self.refuse_pg(aborted());
        }
        if let Some(split) = self.plan_split(msg, rest).await? {
            return self.run_split(split).await;
        }
        if first_keyword(&stmt.query).is_some_and(|k| k.eq_ignore_ascii_case("declare")) {
            if let Some(declared) = self.declare_bound(bind, &stmt).await? {
                return Ok(declared);
            }
        }
        let plan = self.statement_plan(&stmt);
        let hints = stmt
            .routing(|| self.snap.classify(&stmt.query))
            .hints
            .clone();
        let dest = match self.dest_for(&stmt.query, &plan, &hints, Some(bind)).await {
            Ok(d) => d,
            Err(e) => return self.refuse_pg(e),
        };
        let want = self.want_sharded(&stmt.query);
        match dest {
            Dest::One(s) => {
                self.target = s;
                if !self.attach(Proto::Extended, want).await? {
                    return Ok(());
                }
                if self.vtx.is_none() {
                    self.start_retry(msg);
                }
                self.bind_prepared(msg, bind, &stmt);
                Ok(())
            }
            Dest::Many(shards)
                if self.writes_rows(&stmt.query)
                    || !read_in_pieces(rest, bind.portal, self.max_message) =>
            {
                self.bind_fanout(bind, &stmt, shards, want, true, rest)
                    .await
            }
            Dest::Everywhere(shards) => {
                self.bind_fanout(bind, &stmt, shards, want, false, rest)
                    .await
            }
            Dest::Merge(shards, plan, collation)
                if !plan.explain && read_in_pieces(rest, bind.portal, self.max_message) =>
            {
                self.open_portal_cursor(bind, &stmt, shards, plan, collation)
                    .await
            }
            Dest::Many(shards) => {
                let sharding = self.snap.sharding.as_ref().expect("sharded session");
                let lookup = MapLookup(&sharding.map);
                match self.snap.analyzer.merge_plan(&stmt.query, &lookup) {
                    Ok(plan) => {
                        self.open_portal_cursor(bind, &stmt, shards, plan, None)
                            .await
                    }
                    Err(e) => self.refuse_pg(cross_shard_refusal(&e.construct)),
                }
            }
            Dest::Merge(shards, plan, collation) => {
                let after = match batch_after_bind(rest, self.max_message) {
                    Ok(b) => b,
                    Err(e) => return self.refuse_pg(e),
                };
                self.extra_consumed = after.consumed;
                let again =
                    || MergeRequest::bound(bind, &stmt.param_types, &after, collation.clone());
                self.merge_or_gather(&stmt.query, (shards, plan, want), again)
                    .await
            }
            Dest::Materialize(_) if read_in_pieces(rest, bind.portal, self.max_message) => self
                .refuse_pg(cross_shard_refusal(
                    "a subquery over several shards read in pieces (Execute with a row limit)",
                )),
            Dest::Materialize(m) => {
                let after = match batch_after_bind(rest, self.max_message) {
                    Ok(b) => b,
                    Err(e) => return self.refuse_pg(e),
                };
                self.extra_consumed = after.consumed;
                let again = || MergeRequest::bound(bind, &stmt.param_types, &after, None);
                let timing = self.fanout_starts(&stmt.query);
                let used = self.map().all_shards();
                let r = self
                    .materialize_or_gather(&stmt.query, &m, want, again)
                    .await;
                self.fanout_ends(timing, &used);
                r
            }
            Dest::Stream(si) => {
                let after = match batch_after_bind(rest, self.max_message) {
                    Ok(b) => b,
                    Err(e) => return self.refuse_pg(e),
                };
                self.extra_consumed = after.consumed;
                let bound = super::insert_select::Bound {
                    bind,
                    param_types: &stmt.param_types,
                };
                let timing = self.fanout_starts(&stmt.query);
                let used = self.map().all_shards();
                let r = self
                    .insert_select_run(*si, Some(bound), Some(after.describe))
                    .await;
                self.fanout_ends(timing, &used);
                r
            }
            Dest::Split(parts) => {
                // Each shard prepares its rows of the statement, with only
                // their parameters, renumbered (pgjdbc's
                // reWriteBatchedInserts sends rows of every shard in one).
                let after = match batch_after_bind(rest, self.max_message) {
                    Ok(b) => b,
                    Err(e) => return self.refuse_pg(e),
                };
                self.extra_consumed = after.consumed;
                let mut requests = Vec::with_capacity(parts.len());
                for (shard, text) in parts {
                    let Some(part) = super::split::part_bytes(&text, &stmt.param_types, bind)
                    else {
                        return self
                            .refuse_pg(PgError::error("08P01", "invalid parameter reference"));
                    };
                    let mut batch = BytesMut::from(&part[..]);
                    batch.extend_from_slice(&after.batch);
                    requests.push((shard, batch));
                }
                let mut opts = FanOpts::new(want);
                opts.wrap = true;
                opts.skip_parse = 1;
                self.fanout(requests, opts).await
            }
        }
    }

    /// Runs a Bind/[Describe]/Execute/Sync batch on several shards.
    async fn bind_fanout(
        &mut self,
        bind: &Bind<'_>,
        stmt: &crate::prepared::Statement,
        shards: Vec<usize>,
        want: Want,
        sum: bool,
        rest: &[u8],
    ) -> Result<(), SessionError> {
        let mut batch = BytesMut::new();
        frontend::encode_parse("", &stmt.query, &stmt.param_types, &mut batch);
        bind.encode_with_statement("", &mut batch);
        let after = match batch_after_bind(rest, self.max_message) {
            Ok(b) => b,
            Err(e) => return self.refuse_pg(e),
        };
        batch.extend_from_slice(&after.batch);
        let pos = after.consumed;
        self.extra_consumed = pos;
        let wrap = self.is_write(&stmt.query) && !non_transactional(&stmt.query);
        let requests = shards.into_iter().map(|s| (s, batch.clone())).collect();
        let mut opts = FanOpts::new(want);
        opts.wrap = wrap;
        opts.sum = sum;
        opts.skip_parse = 1;
        self.fanout(requests, opts).await
    }

    /// Describe or Execute with no connection yet: the default shard (or the
    /// shard the transaction already uses).
    pub(super) fn target_for_unrouted(&mut self) {
        if self.backend.is_none() {
            self.target = self
                .parked
                .first()
                .map(|b| b.shard)
                .unwrap_or_else(|| self.default_shard());
        }
    }

    /// COPY on a sharded cluster; `None` when the statement is not COPY or
    /// goes to one shard through the normal path.
    async fn copy_sharded(&mut self, msg: &[u8], sql: &str) -> Result<Option<()>, SessionError> {
        let Some(cs) = parse_copy(sql) else {
            return Ok(None);
        };
        if cs.query {
            return self.copy_query_to(msg, sql, &cs).await.map(Some);
        }
        let gate_plan = if self.map().is_reference(cs.table.0.as_deref(), &cs.table.1) {
            ShardPlan::ReferenceWrite
        } else {
            ShardPlan::NoKey {
                table: cs.table.1.clone(),
            }
        };
        if let Err(e) = self.pass_move_gate(sql, &gate_plan, None).await {
            self.reply_error(e)?;
            return Ok(Some(()));
        }
        let map = self.map();
        let (schema, name) = (cs.table.0.as_deref(), cs.table.1.as_str());
        let rule = map.table(schema, name).cloned();
        let reference = map.is_reference(schema, name);
        if rule.is_none() && !reference {
            return Ok(None);
        }
        let mut q = BytesMut::new();
        frontend::encode_query(sql, &mut q);
        let all = map.all_shards();
        let want = self.want_sharded(sql);
        if cs.to {
            if reference {
                return Ok(None);
            }
            let mut opts = FanOpts::new(want);
            opts.copy_out = shardgate_router::CopyOutJoin::new(&cs, all.len());
            let requests = all.into_iter().map(|s| (s, q.clone())).collect();
            self.fanout(requests, opts).await?;
            return Ok(Some(()));
        }
        let route = match rule {
            None => CopyRoute::Everywhere,
            Some(rule) => {
                let index = match &cs.columns {
                    Some(cols) => cols.iter().position(|c| *c == rule.column),
                    None => match self.table_columns(schema, name).await {
                        Ok(cols) => cols.iter().position(|c| *c == rule.column),
                        Err(e) => {
                            self.reply_error(e)?;
                            return Ok(Some(()));
                        }
                    },
                };
                let Some(index) = index else {
                    self.reply_error(PgError::error(
                        "0A000",
                        format!(
                            "COPY into sharded table {} must include its shard key {}",
                            rule.table, rule.column
                        ),
                    ))?;
                    return Ok(Some(()));
                };
                CopyRoute::ByKey {
                    splitter: Box::new(CopySplitter::for_statement(&cs, Some(index))),
                    rule,
                    map,
                    header_sent: false,
                    rows: Vec::new(),
                }
            }
        };
        let requests = all.into_iter().map(|s| (s, q.clone())).collect();
        let mut opts = FanOpts::new(want);
        opts.wrap = true;
        opts.sum = !matches!(route, CopyRoute::Everywhere);
        opts.copy = Some(route);
        self.fanout(requests, opts).await?;
        Ok(Some(()))
    }

    /// `COPY (query) TO STDOUT`: where the query goes decides where the
    /// COPY runs. One shard: there. Several shards whose rows are simply
    /// concatenated: all of them, joined into one stream. A query whose
    /// shards' rows must be merged (ORDER BY, LIMIT, aggregates, DISTINCT)
    /// runs as that query, and its merged rows go out as COPY data.
    async fn copy_query_to(
        &mut self,
        msg: &[u8],
        sql: &str,
        cs: &shardgate_router::CopyStatement,
    ) -> Result<(), SessionError> {
        let inner = cs.inner_query.as_deref().unwrap_or("");
        let hints = match parse_hints(sql) {
            Ok(h) => h,
            Err(e) => return self.reply_error(super::hint_error(e)),
        };
        let plan = self.plan_of(inner);
        let dest = match self.dest_for(inner, &plan, &hints, None).await {
            Ok(d) => d,
            Err(e) => return self.reply_error(e),
        };
        let want = self.want_sharded(sql);
        let shards = match dest {
            Dest::One(s) => vec![s],
            Dest::Everywhere(_) => vec![self.default_shard()],
            Dest::Many(shards) => shards,
            Dest::Merge(shards, plan, collation) => {
                // The shards run the query; the merged rows become COPY data.
                let copy = Some(shardgate_router::CopyRowsOut::new(cs));
                let req = MergeRequest::simple(collation, copy);
                return self.merge_query(shards, plan, want, req).await;
            }
            Dest::Split(_) | Dest::Stream(_) => {
                return self.reply_error(cross_shard_refusal("COPY (INSERT ...) TO"));
            }
            Dest::Materialize(_) => {
                return self.reply_error(cross_shard_refusal(
                    "COPY of a query whose subquery combines rows of several shards",
                ));
            }
        };
        if let [one] = shards.as_slice() {
            self.target = *one;
            if self.attach(Proto::Simple, want).await? {
                self.forward(msg, crate::relay::Expect::Query { forward: true });
            }
            return Ok(());
        }
        let mut q = BytesMut::new();
        frontend::encode_query(sql, &mut q);
        let mut opts = FanOpts::new(want);
        opts.copy_out = shardgate_router::CopyOutJoin::new(cs, shards.len());
        let requests = shards.into_iter().map(|s| (s, q.clone())).collect();
        self.fanout(requests, opts).await
    }

    /// CopyData, CopyDone or CopyFail while a COPY runs on several shards.
    pub(super) async fn copy_message(&mut self, t: u8, msg: &[u8]) -> Result<(), SessionError> {
        let Some(mut fan) = self.fanout_state.take() else {
            return Ok(());
        };
        let outcome = match t {
            tag::COPY_DATA => route_copy_data(&mut fan, &msg[5..]),
            tag::COPY_DONE => finish_copy(&mut fan).map(|()| true),
            _ => {
                let mut fail = BytesMut::new();
                fail.extend_from_slice(msg);
                Err(CopyFailure::Client(fail))
            }
        };
        let done = match outcome {
            Ok(done) => done,
            Err(CopyFailure::Client(fail)) => {
                broadcast(&mut fan, |out| out.extend_from_slice(&fail));
                true
            }
            Err(CopyFailure::Data(e)) => {
                e.encode(&mut self.cout);
                fan.errored = true;
                let mut fail = BytesMut::new();
                fail.extend_from_slice(&[tag::COPY_FAIL]);
                fail.extend_from_slice(&0i32.to_be_bytes());
                frontend::put_cstr(&mut fail, b"shardgate: COPY data refused");
                shardgate_protocol::backend::patch_len(&mut fail, 0);
                broadcast(&mut fan, |out| out.extend_from_slice(&fail));
                true
            }
        };
        self.write_parts(&mut fan).await;
        if done {
            fan.copy_in = false;
            fan.copy = None;
            self.continue_fanout(*fan).await
        } else {
            self.fanout_state = Some(fan);
            Ok(())
        }
    }
}

/// How the rows of a COPY FROM STDIN are spread over the shards.
pub(super) enum CopyRoute {
    /// A reference table: every row to every shard.
    Everywhere,
    /// A sharded table: each row to the shard of its key.
    ByKey {
        splitter: Box<CopySplitter>,
        rule: Arc<TableRule>,
        map: Arc<ShardMap>,
        header_sent: bool,
        rows: Vec<CopyRow>,
    },
}

pub(super) enum CopyFailure {
    /// The client sent CopyFail.
    Client(BytesMut),
    /// The data could not be split.
    Data(PgError),
}

fn broadcast(fan: &mut super::fanout::Fanout, f: impl Fn(&mut BytesMut)) {
    for out in fan.outs.iter_mut() {
        f(out);
    }
}

/// Routes one CopyData payload; returns whether the COPY is over.
fn route_copy_data(fan: &mut super::fanout::Fanout, data: &[u8]) -> Result<bool, CopyFailure> {
    let shard_index: Vec<usize> = fan.parts.iter().map(|p| p.b.shard).collect();
    match fan.copy.as_mut() {
        None | Some(CopyRoute::Everywhere) => {
            broadcast(fan, |out| copy_data(data, out));
            Ok(false)
        }
        Some(CopyRoute::ByKey {
            splitter,
            rule,
            map,
            header_sent,
            rows,
        }) => {
            splitter
                .feed_into(data, rows)
                .map_err(|e| bad_copy_data(&rule.table, e))?;
            send_rows(
                &mut fan.outs,
                &shard_index,
                splitter,
                rule,
                map,
                header_sent,
                rows,
            )?;
            Ok(false)
        }
    }
}

/// COPY data for a sharded table that could not be split by its key (22P04).
fn bad_copy_data(table: &impl std::fmt::Display, e: impl std::fmt::Display) -> CopyFailure {
    CopyFailure::Data(PgError::error(
        "22P04",
        format!("COPY data for {table}: {e}"),
    ))
}

fn finish_copy(fan: &mut super::fanout::Fanout) -> Result<(), CopyFailure> {
    let shard_index: Vec<usize> = fan.parts.iter().map(|p| p.b.shard).collect();
    if let Some(CopyRoute::ByKey {
        splitter,
        rule,
        map,
        header_sent,
        rows,
    }) = fan.copy.as_mut()
    {
        let last = splitter
            .finish()
            .map_err(|e| bad_copy_data(&rule.table, e))?;
        *rows = last;
        send_rows(
            &mut fan.outs,
            &shard_index,
            splitter,
            rule,
            map,
            header_sent,
            rows,
        )?;
        if let Some(trailer) = splitter.binary_trailer() {
            for out in fan.outs.iter_mut() {
                copy_data(trailer, out);
            }
        }
    }
    for out in fan.outs.iter_mut() {
        out.extend_from_slice(&[tag::COPY_DONE, 0, 0, 0, 4]);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn send_rows(
    outs: &mut [BytesMut],
    shard_index: &[usize],
    splitter: &CopySplitter,
    rule: &TableRule,
    map: &ShardMap,
    header_sent: &mut bool,
    rows: &[CopyRow],
) -> Result<(), CopyFailure> {
    if !*header_sent {
        if let Some(h) = splitter.header_bytes() {
            for out in outs.iter_mut() {
                copy_data(h, out);
            }
            *header_sent = true;
        }
    }
    for row in rows {
        let key = match &row.key {
            Some(FieldValue::Text(t)) => ShardKey::parse_text(rule.key_type, t),
            Some(FieldValue::Binary(b)) => ShardKey::parse_binary(rule.key_type, b),
            Some(FieldValue::Null) | None => {
                return Err(CopyFailure::Data(not_null(
                    &rule.table.to_string(),
                    &rule.column,
                )))
            }
        }
        .map_err(|e| CopyFailure::Data(bad_key(rule, e)))?;
        let shard = shard_of_key(map, rule, &key).map_err(CopyFailure::Data)?;
        let i = shard_index
            .iter()
            .position(|s| *s == shard)
            .ok_or_else(|| {
                CopyFailure::Data(PgError::error("XX000", "shard missing from the COPY"))
            })?;
        copy_data(splitter.row_bytes(row), &mut outs[i]);
    }
    Ok(())
}

/// Shards of a key filter; `None` when a key value cannot be known.
pub(super) fn shards_of_filter(
    map: &ShardMap,
    rule: &TableRule,
    filter: &KeyFilter,
    params: Params<'_>,
) -> Result<Option<Vec<usize>>, PgError> {
    // A literal that is no key of the column's type (`5.0`, `1e1`, `5.5`
    // against a bigint key) is compared after a cast by the server, which
    // may match rows (5.0 = 5): every shard decides (and errors, as one
    // server would, for text that is no number).
    let literal = |v: &ValueSource| matches!(v, ValueSource::Literal(_));
    let key = |v: &ValueSource| match key_from(rule, v, params) {
        Err(_) if literal(v) => Ok(Err(Unknown)),
        r => r,
    };
    match filter {
        KeyFilter::Eq(values) => {
            let mut set = Vec::new();
            for v in values {
                match key(v)? {
                    Ok(Some(key)) => {
                        // A key no shard accepts matches no row: skip it.
                        if let Ok(s) = map.shard_for(rule, &key) {
                            if !set.contains(&s) {
                                set.push(s);
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(Unknown) if literal(v) => return Ok(Some(map.all_shards())),
                    Err(Unknown) => return Ok(None),
                }
            }
            set.sort_unstable();
            Ok(Some(set))
        }
        KeyFilter::Range { lower, upper } => {
            let bound = |b: &Option<(ValueSource, bool)>| -> Result<Option<(i64, bool)>, PgError> {
                match b {
                    None => Ok(None),
                    Some((src, inclusive)) => match key(src)? {
                        Ok(Some(ShardKey::Int(v))) => Ok(Some((v, *inclusive))),
                        _ => Ok(None),
                    },
                }
            };
            if rule.key_type != KeyType::BigInt {
                return Ok(Some(map.all_shards()));
            }
            Ok(Some(map.shards_for_range(
                rule,
                bound(lower)?,
                bound(upper)?,
            )))
        }
    }
}

fn no_key(table: &str) -> PgError {
    PgError::error(
        "0A000",
        format!("statement on sharded table {table} has no shard key: queries across all shards are not supported yet"),
    )
    .with_hint("Add WHERE <key> = ... (or IN (...)), or a /* shardgate: shard=N */ hint.")
}

fn aborted() -> PgError {
    PgError::error(
        "25P02",
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

pub(super) fn quote_ident(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit();
    if plain {
        s.to_owned()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_transaction_control() {
        assert_eq!(tx_control("BEGIN"), Some(TxControl::Begin));
        assert_eq!(
            tx_control("start transaction read only"),
            Some(TxControl::Begin)
        );
        assert_eq!(tx_control("END;"), Some(TxControl::End(true)));
        assert_eq!(tx_control("rollback"), Some(TxControl::End(false)));
        assert_eq!(
            tx_control("ROLLBACK TO SAVEPOINT a"),
            Some(TxControl::Savepoint)
        );
        assert_eq!(tx_control("COMMIT PREPARED 'x'"), Some(TxControl::TwoPhase));
        assert_eq!(tx_control("SELECT 1"), None);
    }

    #[test]
    fn a_literal_that_is_no_key_reaches_every_shard() {
        use shardgate_shardmap::{ShardMapConfig, TableName};
        let rule = TableRule {
            table: TableName::new(None, "orders"),
            column: "customer_id".into(),
            key_type: KeyType::BigInt,
            function: Function::Hash,
        };
        let map = ShardMap::new(
            ShardMapConfig {
                weights: vec![1, 1, 1],
                vnodes: 16,
                default_shard: 0,
                tables: vec![rule.clone()],
                reference_tables: vec![],
                arcs: Vec::new(),
            },
            1,
        )
        .expect("valid");
        let lit = |s: &str| ValueSource::Literal(s.into());
        let shards = |f: KeyFilter| shards_of_filter(&map, &rule, &f, None).ok().flatten();
        // customer_id = 5.0 matches customer 5: not an error, every shard.
        for v in ["5.0", "1e1", "5.5"] {
            assert_eq!(shards(KeyFilter::Eq(vec![lit(v)])), Some(vec![0, 1, 2]));
        }
        assert_eq!(
            shards(KeyFilter::Eq(vec![lit("5"), lit("6.0")])),
            Some(vec![0, 1, 2])
        );
        assert_eq!(
            shards(KeyFilter::Eq(vec![lit("5")])).map(|s| s.len()),
            Some(1)
        );
        assert_eq!(shards(KeyFilter::Eq(vec![ValueSource::Other])), None);
    }
}

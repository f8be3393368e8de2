//! Statements the proxy answers itself: `SET`/`RESET`/`SHOW` of shardgate
//! settings (simple and extended protocol), and `DISCARD ALL`/`DEALLOCATE`
//! in transaction pooling.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use shardgate_protocol::backend::{self, tag as btag};
use shardgate_protocol::frontend::{Bind, DescribeOrClose, Parse, Target};
use shardgate_protocol::PgError;
use shardgate_router::hints::mentions_shardgate;
use shardgate_router::lexer::{first_keyword, split_statements, Lexer, TokenKind};
use shardgate_router::{parse_max_lag_ms, Consistency, SessionCommand};

use super::{Proto, Session};

/// A setting the proxy owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// `shardgate.consistency`.
    Consistency,
    /// `shardgate.max_lag_ms`.
    MaxLagMs,
    /// `shardgate.shard`: send every statement to this shard.
    Shard,
    /// `shardgate.sharding_key`: route by this key value.
    ShardingKey,
}

impl Setting {
    fn from_name(name: &str) -> Result<Setting, PgError> {
        match name {
            "shardgate.consistency" => Ok(Setting::Consistency),
            "shardgate.max_lag_ms" => Ok(Setting::MaxLagMs),
            "shardgate.shard" => Ok(Setting::Shard),
            "shardgate.sharding_key" => Ok(Setting::ShardingKey),
            other => Err(PgError::error(
                "42704",
                format!("unrecognized configuration parameter \"{other}\""),
            )
            .with_hint("shardgate settings: shardgate.consistency, shardgate.max_lag_ms, shardgate.shard, shardgate.sharding_key.")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Setting::Consistency => "shardgate.consistency",
            Setting::MaxLagMs => "shardgate.max_lag_ms",
            Setting::Shard => "shardgate.shard",
            Setting::ShardingKey => "shardgate.sharding_key",
        }
    }
}

/// `SET`, `RESET` or `SHOW` of a shardgate setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardgateCommand {
    /// `SET shardgate.x = value`.
    Set(Setting, String),
    /// `RESET shardgate.x`.
    Reset(Setting),
    /// `SHOW shardgate.x`.
    Show(Setting),
    /// `BEGIN`/`START TRANSACTION` in the extended protocol with sharding:
    /// the proxy opens the transaction on each shard as it is used.
    Begin(String),
    /// `COMMIT`/`END` (`true`) or `ROLLBACK`/`ABORT` (`false`) with sharding.
    End(bool),
    /// `SAVEPOINT`, `ROLLBACK TO`, `RELEASE` with sharding: every shard of
    /// the transaction.
    Savepoint(String),
    /// `LISTEN`/`UNLISTEN` in transaction pooling: the proxy listens.
    Listen(shardgate_router::ListenCommand),
    /// A `DECLARE` over several shards, already run at Bind.
    Declared,
    /// `FETCH`, `MOVE` or `CLOSE` of a cursor over several shards.
    Cursor(String),
}

impl ShardgateCommand {
    /// Recognises a statement that is a shardgate command; `Some(Err)` for a
    /// shardgate name that does not exist.
    pub fn parse(stmt: &str) -> Option<Result<ShardgateCommand, PgError>> {
        if !mentions_shardgate(stmt) {
            return None;
        }
        match SessionCommand::parse(stmt) {
            Some(SessionCommand::Set { name, value, .. }) if name.starts_with("shardgate.") => {
                Some(Setting::from_name(&name).map(|s| ShardgateCommand::Set(s, value.unquoted())))
            }
            Some(SessionCommand::SetLocal { name, .. }) if name.starts_with("shardgate.") => Some(
                Err(
                    PgError::error("0A000", "SET LOCAL is not supported for shardgate settings")
                        .with_hint("Use SET, or a /* shardgate: ... */ comment on the statement."),
                ),
            ),
            Some(SessionCommand::Reset { name }) if name.starts_with("shardgate.") => {
                Some(Setting::from_name(&name).map(ShardgateCommand::Reset))
            }
            _ => {
                let toks: Vec<_> = Lexer::new(stmt)
                    .filter(|t| t.kind != TokenKind::BlockComment && t.kind != TokenKind::Semicolon)
                    .collect();
                match toks.as_slice() {
                    [show, a, dot, b]
                        if show.is_keyword("show")
                            && a.is_keyword("shardgate")
                            && dot.is_punct(".") =>
                    {
                        let name = format!("shardgate.{}", b.text.to_ascii_lowercase());
                        Some(Setting::from_name(&name).map(ShardgateCommand::Show))
                    }
                    _ => None,
                }
            }
        }
    }

    /// The rows it returns: a column name for SHOW.
    fn column(&self) -> Option<&'static str> {
        match self {
            ShardgateCommand::Show(s) => Some(s.name()),
            _ => None,
        }
    }
}

/// Statements and portals of shardgate commands in the extended protocol.
#[derive(Debug, Default)]
pub struct VirtualStatements {
    named: HashMap<String, ShardgateCommand>,
    unnamed: Option<ShardgateCommand>,
    portals: HashMap<String, ShardgateCommand>,
    /// Result formats of portals that FETCH from a cursor over shards.
    formats: HashMap<String, Vec<i16>>,
}

impl VirtualStatements {
    /// Whether no unnamed statement and no portal is a shardgate command, so
    /// a batch of unnamed messages cannot touch one.
    pub fn no_unnamed_or_portals(&self) -> bool {
        self.unnamed.is_none() && self.portals.is_empty()
    }

    /// Whether the portal `name` is a shardgate command's.
    #[inline]
    pub fn is_portal(&self, name: &str) -> bool {
        !self.portals.is_empty() && self.portals.contains_key(name)
    }

    /// Whether no statement or portal at all is a shardgate command.
    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.no_unnamed_or_portals()
    }

    /// Unnamed portals end with the batch (named ones with the transaction;
    /// they are dropped here too, as shardgate commands run no transaction).
    pub fn end_of_batch(&mut self) {
        self.portals.clear();
        self.formats.clear();
    }

    /// The FETCH/MOVE/CLOSE of a cursor over shards that portal `name`
    /// runs, and the portal's result formats.
    pub fn cursor_portal(&self, name: &str) -> Option<(String, Vec<i16>)> {
        match self.portals.get(name)? {
            ShardgateCommand::Cursor(sql) => Some((
                sql.clone(),
                self.formats.get(name).cloned().unwrap_or_default(),
            )),
            _ => None,
        }
    }

    /// The FETCH/MOVE/CLOSE of a cursor over shards that statement `name`
    /// holds.
    pub fn cursor_statement(&self, name: &str) -> Option<String> {
        match self.statement(name)? {
            ShardgateCommand::Cursor(sql) => Some(sql.clone()),
            _ => None,
        }
    }

    /// Makes `name` a portal the proxy answers itself.
    pub fn set_portal(&mut self, name: &str, cmd: ShardgateCommand) {
        self.portals.insert(name.to_owned(), cmd);
    }

    /// Whether the statement `name` is one the proxy answers itself.
    pub fn has_statement(&self, name: &str) -> bool {
        self.statement(name).is_some()
    }

    fn statement(&self, name: &str) -> Option<&ShardgateCommand> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.named.get(name)
        }
    }
}

impl Session {
    /// Runs a shardgate command; returns the response messages without ReadyForQuery.
    fn run_shardgate(&mut self, cmd: &ShardgateCommand) -> Result<BytesMut, PgError> {
        let mut out = BytesMut::new();
        match cmd {
            ShardgateCommand::Set(Setting::Consistency, v) => {
                let c: Consistency = v
                    .parse()
                    .map_err(|_| invalid_value(Setting::Consistency, v))?;
                self.routing.set_consistency(c);
                backend::command_complete("SET", &mut out);
            }
            ShardgateCommand::Set(Setting::MaxLagMs, v) => {
                let ms = parse_max_lag_ms(v).map_err(|_| invalid_value(Setting::MaxLagMs, v))?;
                self.routing.set_max_lag_ms(ms);
                backend::command_complete("SET", &mut out);
            }
            ShardgateCommand::Reset(Setting::Consistency) => {
                self.routing.reset_consistency();
                backend::command_complete("RESET", &mut out);
            }
            ShardgateCommand::Reset(Setting::MaxLagMs) => {
                self.routing.reset_max_lag_ms();
                backend::command_complete("RESET", &mut out);
            }
            ShardgateCommand::Set(Setting::Shard, v) => {
                let count = self.shards.len();
                let n: usize = v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|n| *n < count)
                    .ok_or_else(|| {
                        invalid_value(Setting::Shard, v).with_hint(format!(
                            "Shards are numbered 0 to {}.",
                            count.saturating_sub(1)
                        ))
                    })?;
                self.shard_hint = Some(n);
                backend::command_complete("SET", &mut out);
            }
            ShardgateCommand::Set(Setting::ShardingKey, v) => {
                self.key_hint = Some(v.clone());
                backend::command_complete("SET", &mut out);
            }
            ShardgateCommand::Reset(Setting::Shard) => {
                self.shard_hint = None;
                backend::command_complete("RESET", &mut out);
            }
            ShardgateCommand::Reset(Setting::ShardingKey) => {
                self.key_hint = None;
                backend::command_complete("RESET", &mut out);
            }
            ShardgateCommand::Begin(_)
            | ShardgateCommand::End(_)
            | ShardgateCommand::Savepoint(_)
            | ShardgateCommand::Listen(_)
            | ShardgateCommand::Declared
            | ShardgateCommand::Cursor(_) => {
                return Err(PgError::error(
                    "XX000",
                    "transaction control runs elsewhere",
                ))
            }
            ShardgateCommand::Show(s) => {
                let value = match s {
                    Setting::Consistency => self.routing.level().consistency.to_string(),
                    Setting::MaxLagMs => self.routing.level().max_lag_ms.to_string(),
                    Setting::Shard => self.shard_hint.map(|n| n.to_string()).unwrap_or_default(),
                    Setting::ShardingKey => self.key_hint.clone().unwrap_or_default(),
                };
                backend::data_row(&[Some(value)], &mut out);
                backend::command_complete("SHOW", &mut out);
            }
        }
        Ok(out)
    }

    /// Answers a simple query that is a shardgate command; false if it is not one.
    pub(super) fn answer_shardgate_query(&mut self, sql: &str) -> bool {
        if !mentions_shardgate(sql) {
            return false;
        }
        let stmts = split_statements(sql);
        let result = match stmts.as_slice() {
            [one] => match ShardgateCommand::parse(one) {
                None => return false,
                Some(Err(e)) => Err(e),
                Some(Ok(cmd)) => {
                    let mut out = BytesMut::new();
                    if let Some(col) = cmd.column() {
                        backend::row_description(&[(col, 25)], &mut out);
                    }
                    self.run_shardgate(&cmd).map(|body| {
                        out.extend_from_slice(&body);
                        out
                    })
                }
            },
            many => {
                if !many.iter().any(|s| ShardgateCommand::parse(s).is_some()) {
                    return false;
                }
                Err(PgError::error(
                    "0A000",
                    "shardgate settings must be sent as a statement of their own",
                )
                .with_hint("Send SET/SHOW shardgate.* in a separate query."))
            }
        };
        self.reply_simple(result);
        true
    }

    /// Finishes a locally answered simple query with ReadyForQuery; an error
    /// inside a transaction fails that transaction on the server too.
    pub(super) fn reply_simple(&mut self, result: Result<BytesMut, PgError>) {
        let status = self.backend.as_ref().map_or(b'I', |b| b.ex.status);
        match result {
            Ok(mut out) => {
                backend::ready_for_query(status, &mut out);
                self.emit_local(out.freeze());
            }
            Err(e) => {
                let mut out = BytesMut::new();
                e.encode(&mut out);
                if self.backend.is_some() && status != b'I' {
                    self.fail_in_server(out.freeze(), Proto::Simple);
                } else {
                    backend::ready_for_query(status, &mut out);
                    self.emit_local(out.freeze());
                }
            }
        }
        if let Some(b) = self.backend.as_mut() {
            // A locally answered simple query is not an open batch.
            b.ex.unsynced = false;
        }
    }

    /// Handles `DISCARD ALL` and `DEALLOCATE` in transaction pooling, which
    /// concern the client's own statements and state, not the server's.
    pub(super) fn answer_locally(&mut self, sql: &str) -> bool {
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
        let in_tx = self.backend.as_ref().is_some_and(|b| b.ex.status != b'I');
        let mut out = BytesMut::new();
        let result = match cmd {
            SessionCommand::DiscardAll if in_tx => return false,
            SessionCommand::DiscardAll => {
                self.statements.clear();
                self.state.discard_all();
                backend::command_complete("DISCARD ALL", &mut out);
                Ok(out)
            }
            SessionCommand::Deallocate(None) => {
                self.statements.clear();
                backend::command_complete("DEALLOCATE ALL", &mut out);
                Ok(out)
            }
            SessionCommand::Deallocate(Some(name)) => {
                if self.statements.remove(&name) {
                    backend::command_complete("DEALLOCATE", &mut out);
                    Ok(out)
                } else {
                    Err(PgError::error(
                        "26000",
                        format!("prepared statement \"{name}\" does not exist"),
                    ))
                }
            }
            _ => return false,
        };
        self.reply_simple(result);
        true
    }

    /// Parse of a shardgate command: remembered, answered locally.
    /// `mentions`: whether the text contains the word shardgate (a quick scan).
    pub(super) fn parse_virtual(
        &mut self,
        p: &Parse<'_>,
        mentions: bool,
    ) -> Result<bool, super::SessionError> {
        let local = if self.sharded {
            match super::sharded::tx_control(p.query) {
                Some(super::sharded::TxControl::Begin) => {
                    Some(Ok(ShardgateCommand::Begin(p.query.to_owned())))
                }
                Some(super::sharded::TxControl::End(commit)) => {
                    Some(Ok(ShardgateCommand::End(commit)))
                }
                Some(super::sharded::TxControl::Savepoint) => {
                    Some(Ok(ShardgateCommand::Savepoint(p.query.to_owned())))
                }
                _ => None,
            }
        } else {
            None
        };
        let local = local.or_else(|| {
            if !self.sharded || self.merged_cursors.is_empty() {
                return None;
            }
            match shardgate_router::CursorStatement::parse(p.query)? {
                shardgate_router::CursorStatement::Use(name)
                    if self.has_cursor(&super::cursor::CursorKey::Sql(name.clone())) =>
                {
                    Some(Ok(ShardgateCommand::Cursor(p.query.to_owned())))
                }
                _ => None,
            }
        });
        let local = local.or_else(|| {
            (self.mode == crate::config::PoolMode::Transaction
                && shardgate_router::quick_scan(p.query).session_effects)
                .then(|| shardgate_router::ListenCommand::parse(p.query))
                .flatten()
                .map(|cmd| Ok(ShardgateCommand::Listen(cmd)))
        });
        let parsed = || mentions.then(|| ShardgateCommand::parse(p.query)).flatten();
        let cmd = match local.or_else(parsed) {
            None => {
                if p.name.is_empty() {
                    self.virtual_stmts.unnamed = None;
                } else {
                    self.virtual_stmts.named.remove(p.name);
                }
                return Ok(false);
            }
            Some(Err(e)) => {
                self.refuse_pg(e)?;
                return Ok(true);
            }
            Some(Ok(cmd)) => cmd,
        };
        if p.name.is_empty() {
            self.virtual_stmts.unnamed = Some(cmd);
        } else {
            self.virtual_stmts.named.insert(p.name.to_owned(), cmd);
        }
        self.emit_empty(btag::PARSE_COMPLETE);
        Ok(true)
    }

    pub(super) fn bind_virtual(&mut self, b: &Bind<'_>) -> bool {
        let Some(cmd) = self.virtual_stmts.statement(b.statement).cloned() else {
            // A real statement bound under the name of a portal the proxy
            // answered (pgjdbc binds its BEGIN and then the transaction's
            // first statement to the unnamed portal in one batch) replaces
            // that portal: its Execute must reach the server.
            if !self.virtual_stmts.portals.is_empty() {
                self.virtual_stmts.portals.remove(b.portal);
            }
            return false;
        };
        if matches!(cmd, ShardgateCommand::Cursor(_)) {
            self.virtual_stmts
                .formats
                .insert(b.portal.to_owned(), b.result_formats());
        }
        self.virtual_stmts.portals.insert(b.portal.to_owned(), cmd);
        self.emit_empty(btag::BIND_COMPLETE);
        true
    }

    pub(super) fn describe_virtual(&mut self, d: &DescribeOrClose<'_>) -> bool {
        let cmd = match d.target {
            Target::Statement => self.virtual_stmts.statement(d.name),
            Target::Portal => self.virtual_stmts.portals.get(d.name),
        };
        let Some(cmd) = cmd.cloned() else {
            return false;
        };
        let mut out = BytesMut::new();
        if d.target == Target::Statement {
            // ParameterDescription with no parameters.
            out.extend_from_slice(&[btag::PARAMETER_DESCRIPTION, 0, 0, 0, 6, 0, 0]);
        }
        match cmd.column() {
            Some(col) => backend::row_description(&[(col, 25)], &mut out),
            None => backend::empty(btag::NO_DATA, &mut out),
        }
        self.emit_local(out.freeze());
        true
    }

    pub(super) async fn execute_virtual(
        &mut self,
        portal: &str,
    ) -> Result<bool, super::SessionError> {
        let Some(cmd) = self.virtual_stmts.portals.get(portal).cloned() else {
            return Ok(false);
        };
        match &cmd {
            ShardgateCommand::Begin(sql) => {
                let mut out = BytesMut::new();
                self.begin_virtual(sql, &mut out);
                self.emit_local(out.freeze());
                return Ok(true);
            }
            ShardgateCommand::End(commit) => {
                self.end_virtual(*commit, false).await?;
                return Ok(true);
            }
            ShardgateCommand::Savepoint(sql) => {
                self.savepoint(sql, false).await?;
                return Ok(true);
            }
            ShardgateCommand::Declared => {
                let mut out = BytesMut::new();
                backend::command_complete("DECLARE CURSOR", &mut out);
                self.emit_local(out.freeze());
                return Ok(true);
            }
            ShardgateCommand::Cursor(sql) => {
                let formats = self.virtual_stmts.formats.get(portal).cloned();
                let result = match shardgate_router::CursorStatement::parse(sql) {
                    Some(shardgate_router::CursorStatement::Use(name)) => {
                        let key = super::cursor::CursorKey::Sql(name);
                        self.cursor_verb(&key, sql, formats.as_deref(), false).await
                    }
                    _ => Ok(()),
                };
                if let Err(e) = result {
                    self.refuse_pg(e)?;
                }
                return Ok(true);
            }
            ShardgateCommand::Listen(listen) => {
                match self.run_listen(listen).await {
                    Ok(out) => self.emit_local(out.freeze()),
                    Err(e) => self.refuse_pg(e)?,
                }
                return Ok(true);
            }
            _ => {}
        }
        match self.run_shardgate(&cmd) {
            Ok(out) => self.emit_local(out.freeze()),
            Err(e) => {
                let _ = self.refuse_pg(e);
            }
        }
        Ok(true)
    }

    pub(super) fn close_virtual(&mut self, c: &DescribeOrClose<'_>) -> bool {
        let existed = match c.target {
            Target::Statement if c.name.is_empty() => self.virtual_stmts.unnamed.take().is_some(),
            Target::Statement => self.virtual_stmts.named.remove(c.name).is_some(),
            Target::Portal => self.virtual_stmts.portals.remove(c.name).is_some(),
        };
        if existed {
            self.emit_empty(btag::CLOSE_COMPLETE);
        }
        existed
    }

    fn emit_empty(&mut self, t: u8) {
        let mut out = BytesMut::new();
        backend::empty(t, &mut out);
        self.emit_local(Bytes::from(out));
    }
}

fn invalid_value(setting: Setting, value: &str) -> PgError {
    let valid = match setting {
        Setting::Consistency => "Valid values are strong, bounded, eventual and session.",
        Setting::MaxLagMs => "Use a whole number of milliseconds, e.g. 500.",
        Setting::Shard => "Use a shard number.",
        Setting::ShardingKey => "Use a key value.",
    };
    PgError::error(
        "22023",
        format!(
            "invalid value for parameter \"{}\": \"{value}\"",
            setting.name()
        ),
    )
    .with_hint(valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_shardgate_commands() {
        assert_eq!(
            ShardgateCommand::parse("SET shardgate.consistency = 'strong'"),
            Some(Ok(ShardgateCommand::Set(
                Setting::Consistency,
                "strong".into()
            )))
        );
        assert_eq!(
            ShardgateCommand::parse("set shardgate.max_lag_ms to 250"),
            Some(Ok(ShardgateCommand::Set(Setting::MaxLagMs, "250".into())))
        );
        assert_eq!(
            ShardgateCommand::parse("SHOW shardgate.consistency"),
            Some(Ok(ShardgateCommand::Show(Setting::Consistency)))
        );
        assert_eq!(
            ShardgateCommand::parse("RESET shardgate.consistency"),
            Some(Ok(ShardgateCommand::Reset(Setting::Consistency)))
        );
        assert!(matches!(
            ShardgateCommand::parse("SET shardgate.nope = 1"),
            Some(Err(_))
        ));
        assert_eq!(ShardgateCommand::parse("SELECT 'shardgate'"), None);
        assert_eq!(ShardgateCommand::parse("SET search_path = shardgate"), None);
    }
}

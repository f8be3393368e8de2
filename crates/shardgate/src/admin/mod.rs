//! The admin console: clients that connect to `proxy.admin_database` as a
//! user with `admin = true` get a database whose schema `shardgate` holds
//! read-only tables of the live state (queried with SQL through an embedded
//! SQLite, see the `shardgate-admin` crate) and the admin commands (RELOAD,
//! PAUSE, BAN, ...), over the simple and the extended query protocol.

mod command;
/// Parses one console statement (a command such as `SHOW POOLS` or `BAN`).
pub use command::{parse as parse_command, Command, CommandError};
mod exec;
pub mod tables;
mod wire;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use shardgate_admin::{decode_param, ColType, Engine, ResultSet, Table, Value};
use shardgate_protocol::backend::{self, tag as btag};
use shardgate_protocol::frontend::{self, tag, Bind, DescribeOrClose, Execute, Parse, Target};
use shardgate_protocol::PgError;
use shardgate_router::lexer::{first_keyword, split_statements};
use tokio::io::AsyncWriteExt;

use crate::auth::User;
use crate::client_io::{read_message, ClientStream, ReadError};
use crate::runtime::Runtime;
use tables::{Source, TABLES};

/// Largest admin message accepted.
const MAX_ADMIN_MESSAGE: usize = 1 << 20;

/// Serves an admin client after authentication until it leaves.
pub async fn serve(rt: Arc<Runtime>, user: Arc<User>, mut stream: ClientStream, mut buf: BytesMut) {
    let mut out = BytesMut::new();
    if !user.config.admin {
        PgError::fatal(
            "42501",
            format!(
                "permission denied: user \"{}\" may not use the admin console",
                user.config.name
            ),
        )
        .with_hint("Connect to an application database, or set admin = true for this user in [[users]] of proxy.toml.")
        .encode(&mut out);
        let _ = stream.write_all(&out).await;
        return;
    }
    let names: Vec<&str> = TABLES.iter().map(|(n, _)| *n).collect();
    let engine = match Engine::new(&names) {
        Ok(e) => e,
        Err(e) => {
            PgError::fatal("XX000", format!("the admin console cannot start: {e}"))
                .encode(&mut out);
            let _ = stream.write_all(&out).await;
            return;
        }
    };
    for (k, v) in [
        ("server_version", "15.0 (shardgate admin console)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        backend::parameter_status(k, v, &mut out);
    }
    backend::backend_key_data(0, 0, &mut out);
    backend::ready_for_query(b'I', &mut out);
    if stream.write_all(&out).await.is_err() {
        return;
    }
    let mut console = Console {
        rt,
        engine,
        status: b'I',
        statements: HashMap::new(),
        portals: HashMap::new(),
        skipping: false,
        scratch: Vec::new(),
    };
    loop {
        let shutdown = console.rt.shutdown_notify.clone();
        let notified = shutdown.notified();
        if console.rt.shutting_down() {
            let mut out = BytesMut::new();
            PgError::fatal(
                "57P01",
                "terminating connection: shardgate is shutting down",
            )
            .encode(&mut out);
            let _ = stream.write_all(&out).await;
            return;
        }
        let read = tokio::select! {
            r = read_message(&mut stream, &mut buf, MAX_ADMIN_MESSAGE) => r,
            _ = notified => continue,
        };
        let (t, body) = match read {
            Ok(m) => m,
            Err(ReadError::Io(_)) => return,
            Err(ReadError::Protocol(e)) => {
                let mut out = BytesMut::new();
                e.to_pg_error().encode(&mut out);
                let _ = stream.write_all(&out).await;
                return;
            }
        };
        let mut out = BytesMut::new();
        match t {
            tag::TERMINATE => return,
            tag::QUERY => {
                match frontend::parse_query(&body) {
                    Ok(sql) => console.simple(sql, &mut out).await,
                    Err(e) => console.fail(e.to_pg_error(), &mut out),
                }
                console.skipping = false;
                backend::ready_for_query(console.status, &mut out);
            }
            tag::SYNC => {
                console.skipping = false;
                console.portals.retain(|name, _| !name.is_empty());
                backend::ready_for_query(console.status, &mut out);
            }
            tag::FLUSH => {}
            tag::PARSE | tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::CLOSE => {
                if !console.skipping {
                    if let Err(e) = console.extended(t, &body, &mut out).await {
                        console.fail(e, &mut out);
                        console.skipping = true;
                    }
                }
            }
            other => {
                PgError::fatal(
                    "08P01",
                    format!(
                        "the admin console does not take message type {:?}",
                        other as char
                    ),
                )
                .encode(&mut out);
                let _ = stream.write_all(&out).await;
                return;
            }
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// A prepared statement of the console.
struct Prepared {
    command: Command,
    /// Parameter types: as the client named them, else guessed.
    params: Vec<ColType>,
    /// Type OIDs the client named in Parse (0: none).
    param_oids: Vec<u32>,
    /// Result columns promised by a Describe (fixed from then on).
    columns: Option<Vec<(String, ColType)>>,
}

/// A bound statement and, once run, its result.
struct Portal {
    statement: String,
    params: Vec<Value>,
    formats: Vec<i16>,
    result: Option<Output>,
    /// Rows already sent (row-limited Execute).
    sent: usize,
    /// Ran to completion.
    done: bool,
}

/// What running a statement produced.
enum Output {
    /// Rows and the tag's verb (`SELECT`, `SHOW`).
    Rows(ResultSet, &'static str),
    /// A command's tag, with the notices to send before it.
    Tag(String, BytesMut),
}

struct Console {
    rt: Arc<Runtime>,
    engine: Engine,
    /// Transaction status drivers see (`BEGIN` ... `COMMIT` only change this).
    status: u8,
    statements: HashMap<String, Prepared>,
    portals: HashMap<String, Portal>,
    /// An extended-protocol error: messages are ignored until Sync.
    skipping: bool,
    scratch: Vec<u8>,
}

impl Console {
    fn fail(&mut self, e: PgError, out: &mut BytesMut) {
        e.encode(out);
        if self.status == b'T' {
            self.status = b'E';
        }
    }

    /// A simple Query: each statement in turn; the first error ends it.
    async fn simple(&mut self, sql: &str, out: &mut BytesMut) {
        let stmts = split_statements(sql);
        if stmts.is_empty() {
            backend::empty(btag::EMPTY_QUERY, out);
        }
        for stmt in stmts {
            let result = match command::parse(stmt) {
                Ok(cmd) => self.run(stmt, &cmd, &[], None).await,
                Err(e) => Err(PgError::error(e.sqlstate, e.message).with_hint(e.hint)),
            };
            match result.and_then(|o| self.send(o, &[], 0, 0, out)) {
                Ok(_) => {}
                Err(e) => {
                    self.fail(e, out);
                    return;
                }
            }
        }
    }

    /// Runs one statement.
    async fn run(
        &mut self,
        stmt: &str,
        cmd: &Command,
        params: &[Value],
        fixed: Option<&[ColType]>,
    ) -> Result<Output, PgError> {
        if self.status == b'E' && *cmd != Command::End {
            return Err(PgError::error(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        match cmd {
            Command::Begin => {
                self.status = b'T';
                Ok(tag_only("BEGIN"))
            }
            Command::End => {
                let rollback = self.status == b'E'
                    || first_keyword(stmt).is_some_and(|k| {
                        k.eq_ignore_ascii_case("rollback") || k.eq_ignore_ascii_case("abort")
                    });
                self.status = b'I';
                Ok(tag_only(if rollback { "ROLLBACK" } else { "COMMIT" }))
            }
            Command::NoOp(tag) => Ok(tag_only(tag)),
            Command::Show(name) => {
                let table = self.show_table(name).await?;
                let mut rs = table_result(table);
                if let Some(types) = fixed {
                    for ((_, t), f) in rs.columns.iter_mut().zip(types) {
                        *t = *f;
                    }
                }
                Ok(Output::Rows(rs, "SHOW"))
            }
            Command::RebalancePlan => {
                let proposal = crate::rebalance::propose(&self.rt)
                    .await
                    .map_err(|e| PgError::error("55000", format!("REBALANCE PLAN: {e}")))?;
                let table = tables::rebalance_plan::table(&proposal);
                Ok(Output::Rows(table_result(table), "REBALANCE PLAN"))
            }
            Command::Sql(sql) => {
                self.load_for(sql).await?;
                let rs = self
                    .engine
                    .query(sql, params, fixed)
                    .map_err(|e| e.to_pg_error())?;
                Ok(Output::Rows(rs, "SELECT"))
            }
            other => {
                let d = exec::run(&self.rt, other.clone()).await?;
                let mut pre = BytesMut::new();
                for n in &d.notices {
                    backend::notice("00000", n, &mut pre);
                }
                for w in &d.warnings {
                    backend::warning("01000", w, &mut pre);
                }
                Ok(Output::Tag(d.tag.to_owned(), pre))
            }
        }
    }

    async fn show_table(&mut self, name: &str) -> Result<Table, PgError> {
        let Some(table) = tables::show_name(name) else {
            return Err(
                PgError::error("42704", format!("unrecognized SHOW name \"{name}\""))
                    .with_hint("SHOW HELP lists the tables."),
            );
        };
        let snap = self.rt.snapshot();
        let src = Source {
            rt: &self.rt,
            snap: &snap,
        };
        Ok(tables::build(table, &src).await.expect("a known table"))
    }

    /// Builds and loads the tables `sql` mentions; returns them.
    async fn load_for(&mut self, sql: &str) -> Result<Vec<Table>, PgError> {
        let names: Vec<&str> = TABLES.iter().map(|(n, _)| *n).collect();
        let snap = self.rt.snapshot();
        let src = Source {
            rt: &self.rt,
            snap: &snap,
        };
        let mut loaded = Vec::new();
        for name in Engine::referenced_tables(sql, &names) {
            if let Some(t) = tables::build(&name, &src).await {
                self.engine.load(&t).map_err(|e| e.to_pg_error())?;
                loaded.push(t);
            }
        }
        Ok(loaded)
    }

    /// Sends what a statement produced: rows from `skip` on (at most
    /// `max_rows`, 0 for all) and the completion. Returns whether rows
    /// remain (the portal is suspended).
    fn send(
        &mut self,
        output: Output,
        formats: &[i16],
        skip: usize,
        max_rows: usize,
        out: &mut BytesMut,
    ) -> Result<bool, PgError> {
        match output {
            Output::Tag(t, pre) => {
                out.extend_from_slice(&pre);
                backend::command_complete(&t, out);
                Ok(false)
            }
            Output::Rows(rs, tag) => {
                if skip == 0 && max_rows == 0 {
                    wire::row_description(&rs.columns, formats, out);
                }
                send_rows(&rs, tag, formats, skip, max_rows, &mut self.scratch, out)
            }
        }
    }

    /// Parse, Bind, Describe, Execute or Close.
    async fn extended(&mut self, t: u8, body: &[u8], out: &mut BytesMut) -> Result<(), PgError> {
        let bad = |e: shardgate_protocol::ProtocolError| e.to_pg_error();
        match t {
            tag::PARSE => {
                let p = Parse::decode(body).map_err(bad)?;
                let stmts = split_statements(p.query);
                if stmts.len() > 1 {
                    return Err(PgError::error(
                        "42601",
                        "cannot insert multiple commands into a prepared statement",
                    ));
                }
                let text = stmts.first().copied().unwrap_or("");
                let command = command::parse(text)
                    .map_err(|e| PgError::error(e.sqlstate, e.message).with_hint(e.hint))?;
                let mut params: Vec<ColType> = p
                    .param_types
                    .chunks(4)
                    .map(|c| {
                        wire::type_of_oid(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                            .unwrap_or(ColType::Text)
                    })
                    .collect();
                if let Command::Sql(sql) = &command {
                    let tables = self.load_for(sql).await?;
                    let refs: Vec<&Table> = tables.iter().collect();
                    let d = self
                        .engine
                        .describe(sql, &refs)
                        .map_err(|e| e.to_pg_error())?;
                    let named = params.len();
                    for (i, guess) in d.params.iter().enumerate() {
                        let oid_given = p
                            .param_types
                            .get(i * 4..i * 4 + 4)
                            .is_some_and(|c| c != [0, 0, 0, 0]);
                        if i >= named {
                            params.push(*guess);
                        } else if !oid_given {
                            params[i] = *guess;
                        }
                    }
                }
                let param_oids = p
                    .param_types
                    .chunks(4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                self.statements.insert(
                    p.name.to_owned(),
                    Prepared {
                        command,
                        params,
                        param_oids,
                        columns: None,
                    },
                );
                backend::empty(btag::PARSE_COMPLETE, out);
            }
            tag::BIND => {
                let b = Bind::decode(body).map_err(bad)?;
                let stmt = self
                    .statements
                    .get(b.statement)
                    .ok_or_else(|| no_statement(b.statement))?;
                if b.param_count() < stmt.params.len() {
                    return Err(PgError::error(
                        "08P01",
                        format!(
                            "bind message supplies {} parameters, but prepared statement \"{}\" requires {}",
                            b.param_count(),
                            b.statement,
                            stmt.params.len()
                        ),
                    ));
                }
                let mut params = Vec::with_capacity(b.param_count());
                for i in 0..b.param_count() {
                    let ty = stmt.params.get(i).copied().unwrap_or(ColType::Text);
                    let binary = b.param_format(i) == 1;
                    let oid = stmt.param_oids.get(i).copied().unwrap_or(0);
                    let narrow = match (binary, b.param(i)) {
                        (true, Some(bytes)) => wire::decode_binary_oid(bytes, oid),
                        _ => None,
                    };
                    let value = match narrow {
                        Some(v) => v,
                        None => decode_param(b.param(i), binary, ty),
                    };
                    params.push(value.map_err(|e| e.to_pg_error())?);
                }
                self.portals.insert(
                    b.portal.to_owned(),
                    Portal {
                        statement: b.statement.to_owned(),
                        params,
                        formats: b.result_formats(),
                        result: None,
                        sent: 0,
                        done: false,
                    },
                );
                backend::empty(btag::BIND_COMPLETE, out);
            }
            tag::DESCRIBE => {
                let d = DescribeOrClose::decode(body, "Describe").map_err(bad)?;
                match d.target {
                    Target::Statement => self.describe_statement(d.name, out).await?,
                    Target::Portal => {
                        let columns = self.portal_result(d.name).await?;
                        let formats = self.portals[d.name].formats.clone();
                        match columns {
                            Some(c) => wire::row_description(&c, &formats, out),
                            None => backend::empty(btag::NO_DATA, out),
                        }
                    }
                }
            }
            tag::EXECUTE => {
                let e = Execute::decode(body).map_err(bad)?;
                self.portal_result(e.portal).await?;
                let Console {
                    portals, scratch, ..
                } = self;
                let p = portals.get_mut(e.portal).expect("run above");
                let max = usize::try_from(e.max_rows).unwrap_or(0);
                match p.result.as_ref().expect("run above") {
                    _ if p.done => backend::command_complete("SELECT 0", out),
                    Output::Rows(rs, tag) => {
                        let more = send_rows(rs, tag, &p.formats, p.sent, max, scratch, out)?;
                        if more {
                            p.sent += max;
                        } else {
                            p.done = true;
                        }
                    }
                    Output::Tag(t, pre) => {
                        out.extend_from_slice(pre);
                        backend::command_complete(t, out);
                        p.done = true;
                    }
                }
            }
            _ => {
                let c = DescribeOrClose::decode(body, "Close").map_err(bad)?;
                match c.target {
                    Target::Statement => self.statements.remove(c.name),
                    Target::Portal => {
                        self.portals.remove(c.name);
                        None
                    }
                };
                backend::empty(btag::CLOSE_COMPLETE, out);
            }
        }
        Ok(())
    }

    /// Describe of a statement: its parameter types, then its columns (the
    /// types are fixed from now on, so a later Execute matches them).
    async fn describe_statement(&mut self, name: &str, out: &mut BytesMut) -> Result<(), PgError> {
        let stmt = self
            .statements
            .get(name)
            .ok_or_else(|| no_statement(name))?;
        let params = stmt.params.clone();
        let command = stmt.command.clone();
        let columns = match &command {
            Command::Sql(_) | Command::Show(_) | Command::RebalancePlan => {
                let nulls = vec![Value::Null; params.len()];
                match self.run("", &command, &nulls, None).await? {
                    Output::Rows(rs, _) => Some(rs.columns),
                    Output::Tag(..) => None,
                }
            }
            _ => None,
        };
        wire::parameter_description(&params, out);
        match &columns {
            Some(c) => wire::row_description(c, &[], out),
            None => backend::empty(btag::NO_DATA, out),
        }
        if let Some(s) = self.statements.get_mut(name) {
            s.columns = columns;
        }
        Ok(())
    }

    /// Runs a portal's statement unless it ran already; returns its columns
    /// (`None` for a command).
    async fn portal_result(
        &mut self,
        name: &str,
    ) -> Result<Option<Vec<(String, ColType)>>, PgError> {
        let portal = self
            .portals
            .get(name)
            .ok_or_else(|| PgError::error("34000", format!("portal \"{name}\" does not exist")))?;
        if let Some(r) = &portal.result {
            return Ok(match r {
                Output::Rows(rs, _) => Some(rs.columns.clone()),
                Output::Tag(..) => None,
            });
        }
        let stmt = self
            .statements
            .get(&portal.statement)
            .ok_or_else(|| no_statement(&portal.statement))?;
        let command = stmt.command.clone();
        let fixed: Option<Vec<ColType>> = stmt
            .columns
            .as_ref()
            .map(|c| c.iter().map(|(_, t)| *t).collect());
        let params = portal.params.clone();
        let text = match &command {
            Command::Sql(s) => s.clone(),
            _ => String::new(),
        };
        let output = self.run(&text, &command, &params, fixed.as_deref()).await?;
        let columns = match &output {
            Output::Rows(rs, _) => Some(rs.columns.clone()),
            Output::Tag(..) => None,
        };
        if let Some(p) = self.portals.get_mut(name) {
            p.result = Some(output);
        }
        Ok(columns)
    }
}

/// A command's tag without notices.
fn tag_only(tag: &str) -> Output {
    Output::Tag(tag.to_owned(), BytesMut::new())
}

/// Sends rows `skip..` of `rs` (at most `max_rows`, 0 for all) and then
/// CommandComplete, or PortalSuspended when rows remain (returns true).
fn send_rows(
    rs: &ResultSet,
    tag: &str,
    formats: &[i16],
    skip: usize,
    max_rows: usize,
    scratch: &mut Vec<u8>,
    out: &mut BytesMut,
) -> Result<bool, PgError> {
    let end = if max_rows == 0 {
        rs.rows.len()
    } else {
        skip.saturating_add(max_rows).min(rs.rows.len())
    };
    for row in rs.rows.iter().take(end).skip(skip) {
        wire::data_row(row, &rs.columns, formats, scratch, out).map_err(|e| e.to_pg_error())?;
    }
    if end < rs.rows.len() {
        backend::empty(btag::PORTAL_SUSPENDED, out);
        return Ok(true);
    }
    backend::command_complete(&format!("{tag} {}", rs.rows.len()), out);
    Ok(false)
}

fn no_statement(name: &str) -> PgError {
    PgError::error(
        "26000",
        format!("prepared statement \"{name}\" does not exist"),
    )
}

/// A table as a result set (SHOW).
fn table_result(t: Table) -> ResultSet {
    ResultSet {
        columns: t
            .columns
            .iter()
            .map(|c| (c.name.to_owned(), c.ty))
            .collect(),
        rows: t.rows,
    }
}

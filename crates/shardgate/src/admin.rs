//! The admin console: clients that connect to `proxy.admin_database` (as a
//! user with `admin = true`) get SHOW commands over live proxy state.

use std::sync::Arc;

use bytes::BytesMut;
use shardgate_jobs::lsn::format_lsn;
use shardgate_protocol::backend;
use shardgate_protocol::frontend::{self, tag};
use shardgate_protocol::PgError;
use shardgate_router::lexer::{split_statements, Lexer, TokenKind};
use tokio::io::AsyncWriteExt;

use crate::auth::User;
use crate::client_io::{read_message, ClientStream, ReadError};
use crate::runtime::Runtime;

/// Largest admin command accepted.
const MAX_ADMIN_MESSAGE: usize = 1 << 20;

/// A table answer: column names and text rows.
struct Table {
    columns: Vec<&'static str>,
    rows: Vec<Vec<Option<String>>>,
}

impl Table {
    fn encode(&self, tag_text: &str, out: &mut BytesMut) {
        let cols: Vec<(&str, u32)> = self.columns.iter().map(|c| (*c, 25)).collect();
        backend::row_description(&cols, out);
        for r in &self.rows {
            backend::data_row(r, out);
        }
        backend::command_complete(&format!("{tag_text} {}", self.rows.len()), out);
    }
}

/// Serves an admin client after authentication until it leaves.
pub async fn serve(
    proxy: Arc<Runtime>,
    user: Arc<User>,
    mut stream: ClientStream,
    mut buf: BytesMut,
) {
    let mut out = BytesMut::new();
    if !user.config.admin {
        PgError::fatal(
            "28000",
            format!(
                "user \"{}\" may not use the admin console",
                user.config.name
            ),
        )
        .with_hint("Set admin = true for this user in [[users]] of proxy.toml.")
        .encode(&mut out);
        let _ = stream.write_all(&out).await;
        return;
    }
    for (k, v) in [
        ("server_version", "15.0 (shardgate admin console)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        backend::parameter_status(k, v, &mut out);
    }
    backend::backend_key_data(0, 0, &mut out);
    backend::ready_for_query(b'I', &mut out);
    if stream.write_all(&out).await.is_err() {
        return;
    }
    loop {
        let (t, body) = match read_message(&mut stream, &mut buf, MAX_ADMIN_MESSAGE).await {
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
            tag::QUERY => match frontend::parse_query(&body) {
                Ok(sql) => run_query(&proxy, sql, &mut out),
                Err(e) => {
                    e.to_pg_error().encode(&mut out);
                    let _ = stream.write_all(&out).await;
                    return;
                }
            },
            tag::SYNC => {}
            _ => PgError::error(
                "0A000",
                "the admin console supports the simple query protocol only",
            )
            .encode(&mut out),
        }
        if matches!(t, tag::QUERY | tag::SYNC) {
            backend::ready_for_query(b'I', &mut out);
        }
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn run_query(proxy: &Runtime, sql: &str, out: &mut BytesMut) {
    let stmts = split_statements(sql);
    if stmts.is_empty() {
        backend::empty(backend::tag::EMPTY_QUERY, out);
    }
    for stmt in stmts {
        match command(proxy, stmt) {
            Ok(table) => table.encode("SHOW", out),
            Err(e) => {
                e.encode(out);
                return;
            }
        }
    }
}

fn command(proxy: &Runtime, stmt: &str) -> Result<Table, PgError> {
    let words: Vec<String> = Lexer::new(stmt)
        .filter(|t| t.kind == TokenKind::Word)
        .map(|t| t.text.to_ascii_uppercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["SHOW", "HELP"] => Ok(help()),
        ["SHOW", "VERSION"] => Ok(Table {
            columns: vec!["version"],
            rows: vec![vec![Some(format!(
                "shardgate {}",
                env!("CARGO_PKG_VERSION")
            ))]],
        }),
        ["SHOW", "REPLICATION"] | ["SHOW", "SERVERS"] => Ok(replication(proxy)),
        ["SHOW", "POOLS"] => Ok(pools(proxy)),
        _ => Err(
            PgError::error("42601", format!("unknown admin command: {stmt}"))
                .with_hint("SHOW HELP lists the commands."),
        ),
    }
}

fn help() -> Table {
    let rows = [
        ("SHOW HELP", "this list"),
        ("SHOW VERSION", "shardgate version"),
        (
            "SHOW REPLICATION",
            "every node: role, health, replay position, lag, load",
        ),
        ("SHOW SERVERS", "same as SHOW REPLICATION"),
        (
            "SHOW POOLS",
            "server connection pools per node, user and database",
        ),
    ];
    Table {
        columns: vec!["command", "description"],
        rows: rows
            .iter()
            .map(|(c, d)| vec![Some(c.to_string()), Some(d.to_string())])
            .collect(),
    }
}

fn replication(proxy: &Runtime) -> Table {
    let snap = proxy.snapshot();
    let t = &snap.topology;
    let now = t.now_ms();
    let mut rows = Vec::new();
    for shard in &t.shards {
        let writer = shard.writer_index();
        for n in &shard.nodes {
            let role = if n.is_fenced() {
                "fenced"
            } else if n.index == writer {
                "primary"
            } else {
                "replica"
            };
            let state = if n.is_banned(now) { "banned" } else { "up" };
            let recovery = n.in_recovery().map(|r| r.to_string());
            let is_replica = n.index != writer;
            rows.push(vec![
                Some(shard.index.to_string()),
                Some(n.index.to_string()),
                Some(n.addr.clone()),
                Some(role.into()),
                Some(state.into()),
                recovery,
                Some(format_lsn(n.replay_lsn())),
                is_replica.then(|| n.lag_bytes().to_string()),
                is_replica.then(|| n.lag_ms(now).to_string()),
                Some(n.in_flight().to_string()),
                n.last_error(),
            ]);
        }
    }
    Table {
        columns: vec![
            "shard",
            "node",
            "addr",
            "role",
            "state",
            "in_recovery",
            "lsn",
            "lag_bytes",
            "lag_ms",
            "in_flight",
            "last_error",
        ],
        rows,
    }
}

fn pools(proxy: &Runtime) -> Table {
    let mut rows: Vec<Vec<Option<String>>> = proxy
        .pools
        .all()
        .iter()
        .map(|p| {
            let k = p.key();
            let s = p.stats();
            vec![
                Some(k.database.clone()),
                Some(k.user.clone()),
                Some(k.addr.clone()),
                Some(s.waiting.to_string()),
                Some(s.open.saturating_sub(s.idle).to_string()),
                Some(s.idle.to_string()),
                Some(s.checkouts.to_string()),
                Some(s.timeouts.to_string()),
            ]
        })
        .collect();
    rows.sort();
    Table {
        columns: vec![
            "database",
            "user",
            "server",
            "cl_waiting",
            "sv_active",
            "sv_idle",
            "checkouts",
            "timeouts",
        ],
        rows,
    }
}

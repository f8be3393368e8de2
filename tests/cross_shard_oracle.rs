//! Correctness oracle for cross-shard queries (issue 5, item 1).
//!
//! The same schema and rows are loaded through shardgate onto three shards
//! and, directly, into one unsharded Postgres (the oracle). Every query of
//! the corpus in `tests/oracle/*.sql` (syntax: see the top of
//! `tests/oracle/corpus.sql`) runs on both sides in three modes:
//!
//! 1. `simple`: simple query protocol (`simple_query`, text results);
//! 2. `binary`: extended protocol via tokio-postgres (binary results,
//!    compared as raw bytes);
//! 3. `text`: extended protocol with text results, spoken by a minimal
//!    wire-protocol client in this file (Parse/Bind with result format 0/
//!    Describe/Execute/Sync).
//!
//! What is compared: column names, column type OIDs (binary and text
//! modes), the command tag's row count (simple and text modes), and the rows:
//! byte for byte, except float4/float8 columns, which are compared with a
//! relative tolerance of 1e-12 because aggregation order differs between one
//! server and a merge over three (the float4 test data are multiples of 1/8,
//! so float4 sums are exact either way). Rows are compared in order for
//! entries marked `ordered`, as multisets otherwise.
//!
//! Environment:
//! - `ORACLE_ONLY=substring`: run only entries whose SQL, category or
//!   `file:line` contains the substring.
//! - `ORACLE_SELF_CHECK=1`: no proxy; the "proxy" side is a second
//!   connection to the oracle. Must give 0 mismatches (validates the corpus
//!   and the comparison).
//! - `ORACLE_RANDOM=n` (default 2000) random queries from the generator in
//!   `tests/oracle/generator.rs`, seeded by `ORACLE_SEED` (default 18; the
//!   seed is printed). They run after the corpus, as entries placed
//!   `random[seed/i]` (`ORACLE_ONLY=random[18/7]` reruns one); a 0A000
//!   refusal of one is allowed and counted by its reason.
//!
//! Output: `oracle: N matched, R refused (0A000), M mismatched`, a table per
//! category, and every mismatch. Fails when M > 0 (a wrong answer, a refusal
//! or error where an answer was expected, or an oracle error).

mod support;

#[path = "oracle/generator.rs"]
mod generator;

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use shardgate_harness::ClusterSpec;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage};

/// Limit on one statement (a hung query fails the entry, not the run).
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Relative tolerance for float4/float8 values.
const FLOAT_TOLERANCE: f64 = 1e-12;

const SHARDING: &str = r#"
[[users]]
name = "raw"
auth = "trust"
server_user = "app"
server_password = "secret"

[routing]
default_consistency = "strong"

[sharding]
vnodes = 256
default_shard = 0

[[sharded_tables]]
table = "customers"
column = "id"
function = "hash"
key_type = "bigint"

[[sharded_tables]]
table = "orders"
column = "customer_id"
function = "hash"
key_type = "bigint"

[[sharded_tables]]
table = "events"
column = "id"
function = "hash"
key_type = "bigint"

[[sharded_tables]]
table = "empty_t"
column = "k"
function = "hash"
key_type = "bigint"

[[reference_tables]]
table = "countries"
"#;

// ---------------------------------------------------------------- corpus

#[derive(Debug, Default, Clone, Copy)]
struct Flags {
    /// Compare row order.
    ordered: bool,
    /// Must be refused with 0A000 (or answered exactly).
    refuse: bool,
    /// Run inside BEGIN ... ROLLBACK on both sides.
    tx: bool,
    /// Both must fail with the same SQLSTATE (e.g. 22012 computed at the
    /// proxy and by the unsharded server).
    error: bool,
    /// Generated: a 0A000 refusal is allowed (and counted by reason), any
    /// answer must be exact.
    random: bool,
}

#[derive(Debug, Clone)]
struct Entry {
    place: String,
    category: String,
    flags: Flags,
    sql: String,
}

fn corpus_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/oracle"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    files
}

/// Parses one corpus file (syntax: see the top of `tests/oracle/corpus.sql`).
fn parse_corpus(name: &str, text: &str) -> Vec<Entry> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut category = String::from("uncategorised");
    let mut open = false;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            open = false;
            continue;
        }
        if let Some(c) = trimmed.strip_prefix("-- @") {
            category = c.trim().to_owned();
            open = false;
            continue;
        }
        if trimmed.starts_with("--") {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            let e = entries
                .last_mut()
                .filter(|_| open)
                .unwrap_or_else(|| panic!("{name}:{}: continuation without an entry", n + 1));
            e.sql.push('\n');
            e.sql.push_str(trimmed);
            continue;
        }
        let mut flags = Flags::default();
        let mut sql = trimmed;
        if let Some((head, rest)) = trimmed.split_once(':') {
            if !head.is_empty() && head.chars().all(|c| c.is_ascii_lowercase() || c == ',') {
                for f in head.split(',') {
                    match f {
                        "ordered" => flags.ordered = true,
                        "refuse" => flags.refuse = true,
                        "tx" => flags.tx = true,
                        "error" => flags.error = true,
                        other => panic!("{name}:{}: unknown flag {other:?}", n + 1),
                    }
                }
                sql = rest.trim();
            }
        }
        entries.push(Entry {
            place: format!("{name}:{}", n + 1),
            category: category.clone(),
            flags,
            sql: sql.to_owned(),
        });
        open = true;
    }
    for e in &mut entries {
        let s = e.sql.trim_end().trim_end_matches(';').to_owned();
        e.sql = s;
    }
    entries
}

// ---------------------------------------------------------------- results

type Val = Option<Vec<u8>>;

#[derive(Debug, Clone, Default)]
struct Outcome {
    /// Column names and type OIDs (0 when the mode does not report them).
    cols: Vec<(String, u32)>,
    rows: Vec<Vec<Val>>,
    /// Row count of the command tag, when the mode reports it.
    tag: Option<u64>,
}

#[derive(Debug, Clone)]
enum Got {
    Rows(Outcome),
    Error { code: String, message: String },
}

impl Got {
    fn err(code: &str, message: impl Into<String>) -> Got {
        Got::Error {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

fn pg_err(e: &tokio_postgres::Error) -> Got {
    match e.as_db_error() {
        Some(db) => Got::err(db.code().code(), db.message()),
        None => Got::err("CLIENT", e.to_string()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Simple,
    Binary,
    Text,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Simple, Mode::Binary, Mode::Text];

    fn name(self) -> &'static str {
        match self {
            Mode::Simple => "simple",
            Mode::Binary => "binary",
            Mode::Text => "text",
        }
    }

    fn is_binary(self) -> bool {
        self == Mode::Binary
    }
}

/// Keeps the raw bytes of a value of any type.
struct RawBytes(Vec<u8>);

impl<'a> FromSql<'a> for RawBytes {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawBytes(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

// ---------------------------------------------------------------- minimal text-format extended-protocol client

struct RawConn {
    stream: TcpStream,
}

fn cstr(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![kind];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn take_cstr(b: &[u8], pos: &mut usize) -> String {
    let end = b[*pos..]
        .iter()
        .position(|&c| c == 0)
        .map_or(b.len(), |e| *pos + e);
    let s = String::from_utf8_lossy(&b[*pos..end]).into_owned();
    *pos = (end + 1).min(b.len());
    s
}

fn be16(b: &[u8], pos: &mut usize) -> i16 {
    let v = i16::from_be_bytes([b[*pos], b[*pos + 1]]);
    *pos += 2;
    v
}

fn be32(b: &[u8], pos: &mut usize) -> i32 {
    let v = i32::from_be_bytes([b[*pos], b[*pos + 1], b[*pos + 2], b[*pos + 3]]);
    *pos += 4;
    v
}

fn error_fields(body: &[u8]) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    let mut pos = 0;
    while pos < body.len() && body[pos] != 0 {
        let field = body[pos];
        pos += 1;
        let v = take_cstr(body, &mut pos);
        match field {
            b'C' => code = v,
            b'M' => message = v,
            _ => {}
        }
    }
    (code, message)
}

fn tag_count(tag: &str) -> Option<u64> {
    tag.rsplit(' ').next().and_then(|n| n.parse().ok())
}

impl RawConn {
    async fn connect(port: u16, user: &str, database: &str) -> Result<RawConn, String> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut conn = RawConn { stream };
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in [("user", user), ("database", database)] {
            cstr(&mut body, k);
            cstr(&mut body, v);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        conn.send(&msg).await?;
        loop {
            let (kind, body) = conn.read().await?;
            match kind {
                b'R' if body.len() >= 4 && body[..4] == [0, 0, 0, 0] => {}
                b'R' => return Err("the server asked for a password (needs trust)".into()),
                b'E' => return Err(format!("login failed: {:?}", error_fields(&body))),
                b'Z' => return Ok(conn),
                _ => {}
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    async fn read(&mut self) -> Result<(u8, Vec<u8>), String> {
        let mut head = [0u8; 5];
        self.stream
            .read_exact(&mut head)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        self.stream
            .read_exact(&mut body)
            .await
            .map_err(|e| format!("read: {e}"))?;
        Ok((head[0], body))
    }

    /// Reads up to ReadyForQuery, collecting the result (or the first error).
    async fn collect(&mut self) -> Result<Got, String> {
        let mut out = Outcome::default();
        let mut error = None;
        loop {
            let (kind, body) = self.read().await?;
            let mut pos = 0;
            match kind {
                b'T' => {
                    let n = be16(&body, &mut pos);
                    out.cols.clear();
                    for _ in 0..n {
                        let name = take_cstr(&body, &mut pos);
                        pos += 6; // table oid, attribute number
                        let oid = be32(&body, &mut pos) as u32;
                        pos += 8; // type length, modifier, format
                        out.cols.push((name, oid));
                    }
                }
                b'D' => {
                    let n = be16(&body, &mut pos);
                    let mut row = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        let len = be32(&body, &mut pos);
                        if len < 0 {
                            row.push(None);
                        } else {
                            let len = len as usize;
                            row.push(Some(body[pos..pos + len].to_vec()));
                            pos += len;
                        }
                    }
                    out.rows.push(row);
                }
                b'C' => out.tag = tag_count(&take_cstr(&body, &mut pos)),
                b'E' if error.is_none() => {
                    let (code, message) = error_fields(&body);
                    error = Some(Got::Error { code, message });
                }
                b'Z' => return Ok(error.unwrap_or(Got::Rows(out))),
                _ => {}
            }
        }
    }

    /// Parse, Bind (all results in text), Describe portal, Execute, Sync.
    async fn extended_text(&mut self, sql: &str) -> Result<Got, String> {
        let mut batch = Vec::new();
        let mut parse = Vec::new();
        cstr(&mut parse, "");
        cstr(&mut parse, sql);
        parse.extend_from_slice(&0i16.to_be_bytes());
        batch.extend(frame(b'P', &parse));
        let mut bind = Vec::new();
        cstr(&mut bind, "");
        cstr(&mut bind, "");
        bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // no formats, no parameters, results in text
        batch.extend(frame(b'B', &bind));
        batch.extend(frame(b'D', b"P\0"));
        let mut exec = Vec::new();
        cstr(&mut exec, "");
        exec.extend_from_slice(&0i32.to_be_bytes());
        batch.extend(frame(b'E', &exec));
        batch.extend(frame(b'S', b""));
        self.send(&batch).await?;
        self.collect().await
    }

    async fn simple(&mut self, sql: &str) -> Result<Got, String> {
        let mut body = Vec::new();
        cstr(&mut body, sql);
        self.send(&frame(b'Q', &body)).await?;
        self.collect().await
    }
}

// ---------------------------------------------------------------- one side (proxy or oracle)

#[derive(Clone)]
struct Endpoint {
    conninfo: String,
    port: u16,
    raw_user: String,
    database: String,
}

struct Side {
    endpoint: Endpoint,
    client: Client,
    raw: RawConn,
}

impl Side {
    async fn connect(endpoint: &Endpoint) -> Side {
        let client = connect(&endpoint.conninfo).await;
        let raw = RawConn::connect(endpoint.port, &endpoint.raw_user, &endpoint.database)
            .await
            .unwrap_or_else(|e| panic!("raw connection to port {}: {e}", endpoint.port));
        Side {
            endpoint: endpoint.clone(),
            client,
            raw,
        }
    }

    async fn reconnect(&mut self) {
        *self = Side::connect(&self.endpoint).await;
    }

    async fn run_simple(&self, sql: &str) -> Got {
        match self.client.simple_query(sql).await {
            Err(e) => pg_err(&e),
            Ok(msgs) => {
                let mut out = Outcome::default();
                for m in msgs {
                    match m {
                        SimpleQueryMessage::RowDescription(cols) => {
                            out.cols = cols.iter().map(|c| (c.name().to_owned(), 0)).collect();
                        }
                        SimpleQueryMessage::Row(r) => out.rows.push(
                            (0..r.len())
                                .map(|i| r.get(i).map(|s| s.as_bytes().to_vec()))
                                .collect(),
                        ),
                        SimpleQueryMessage::CommandComplete(n) => out.tag = Some(n),
                        _ => {}
                    }
                }
                Got::Rows(out)
            }
        }
    }

    async fn run_binary(&self, sql: &str) -> Got {
        let stmt = match self.client.prepare(sql).await {
            Ok(s) => s,
            Err(e) => return pg_err(&e),
        };
        let rows = match self.client.query(&stmt, &[]).await {
            Ok(r) => r,
            Err(e) => return pg_err(&e),
        };
        let mut out = Outcome {
            cols: stmt
                .columns()
                .iter()
                .map(|c| (c.name().to_owned(), c.type_().oid()))
                .collect(),
            ..Outcome::default()
        };
        for r in rows {
            let mut vals = Vec::with_capacity(r.len());
            for i in 0..r.len() {
                match r.try_get::<_, Option<RawBytes>>(i) {
                    Ok(v) => vals.push(v.map(|b| b.0)),
                    Err(e) => return Got::err("CLIENT", format!("column {i}: {e}")),
                }
            }
            out.rows.push(vals);
        }
        Got::Rows(out)
    }

    async fn run_mode(&mut self, mode: Mode, sql: &str) -> Got {
        match mode {
            Mode::Simple => self.run_simple(sql).await,
            Mode::Binary => self.run_binary(sql).await,
            Mode::Text => match self.raw.extended_text(sql).await {
                Ok(g) => g,
                Err(e) => Got::err("CLIENT", e),
            },
        }
    }

    async fn control(&mut self, mode: Mode, sql: &str) -> Result<(), String> {
        let got = match mode {
            Mode::Text => self.raw.simple(sql).await?,
            _ => self.run_simple(sql).await,
        };
        match got {
            Got::Rows(_) => Ok(()),
            Got::Error { code, message } => Err(format!("{sql}: {code} {message}")),
        }
    }

    /// Runs an entry in one mode (inside BEGIN ... ROLLBACK for `tx`).
    async fn run(&mut self, mode: Mode, entry: &Entry) -> Got {
        let fut = async {
            if entry.flags.tx {
                if let Err(e) = self.control(mode, "BEGIN").await {
                    return Got::err("CLIENT", e);
                }
            }
            let got = self.run_mode(mode, &entry.sql).await;
            if entry.flags.tx {
                if let Err(e) = self.control(mode, "ROLLBACK").await {
                    return Got::err("CLIENT", e);
                }
            }
            got
        };
        match tokio::time::timeout(QUERY_TIMEOUT, fut).await {
            Ok(got) => got,
            Err(_) => {
                self.reconnect().await;
                Got::err("TIMEOUT", format!("no answer within {QUERY_TIMEOUT:?}"))
            }
        }
    }
}

// ---------------------------------------------------------------- comparison

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    F4,
    F8,
    Other,
}

fn kind_of(oid: u32) -> Kind {
    match oid {
        700 => Kind::F4,
        701 => Kind::F8,
        _ => Kind::Other,
    }
}

fn float_of(v: &[u8], kind: Kind, binary: bool) -> Option<f64> {
    if !binary {
        return std::str::from_utf8(v).ok()?.trim().parse().ok();
    }
    match (kind, v.len()) {
        (Kind::F4, 4) => Some(f32::from_be_bytes(v.try_into().ok()?) as f64),
        (Kind::F8, 8) => Some(f64::from_be_bytes(v.try_into().ok()?)),
        _ => None,
    }
}

fn floats_close(a: f64, b: f64) -> bool {
    if a == b || (a.is_nan() && b.is_nan()) {
        return true;
    }
    (a - b).abs() <= FLOAT_TOLERANCE * a.abs().max(b.abs())
}

fn value_eq(a: &Val, b: &Val, kind: Kind, binary: bool) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) if kind != Kind::Other => {
            match (float_of(x, kind, binary), float_of(y, kind, binary)) {
                (Some(p), Some(q)) => floats_close(p, q),
                _ => x == y,
            }
        }
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Multiset order: non-float columns first (bytes), then float columns (values).
fn row_cmp(a: &[Val], b: &[Val], kinds: &[Kind], binary: bool) -> Ordering {
    for pass_float in [false, true] {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let kind = kinds.get(i).copied().unwrap_or(Kind::Other);
            if (kind != Kind::Other) != pass_float {
                continue;
            }
            let o = if pass_float {
                let fx = x.as_deref().and_then(|v| float_of(v, kind, binary));
                let fy = y.as_deref().and_then(|v| float_of(v, kind, binary));
                match (fx, fy) {
                    (Some(p), Some(q)) => p.total_cmp(&q),
                    _ => x.cmp(y),
                }
            } else {
                x.cmp(y)
            };
            if o != Ordering::Equal {
                return o;
            }
        }
    }
    a.len().cmp(&b.len())
}

fn render_numeric(b: &[u8]) -> Option<String> {
    if b.len() < 8 {
        return None;
    }
    let rd = |i: usize| i16::from_be_bytes([b[i], b[i + 1]]);
    let n = rd(0) as usize;
    let weight = rd(2) as i32;
    let sign = rd(4) as u16;
    let dscale = rd(6) as usize;
    if b.len() != 8 + 2 * n {
        return None;
    }
    match sign {
        0xC000 => return Some("NaN".into()),
        0xD000 => return Some("Infinity".into()),
        0xF000 => return Some("-Infinity".into()),
        _ => {}
    }
    let digit = |i: i32| -> i32 {
        if i < 0 || i as usize >= n {
            0
        } else {
            rd(8 + 2 * i as usize) as i32
        }
    };
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for w in 0..=weight {
            if w == 0 {
                let _ = write!(s, "{}", digit(w));
            } else {
                let _ = write!(s, "{:04}", digit(w));
            }
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let mut i = weight + 1;
        while frac.len() < dscale {
            let _ = write!(frac, "{:04}", digit(i));
            i += 1;
        }
        frac.truncate(dscale);
        let _ = write!(s, ".{frac}");
    }
    Some(format!("{s} (numeric dscale {dscale})"))
}

fn render_value(v: &Val, oid: u32, binary: bool) -> String {
    let Some(b) = v else {
        return "NULL".into();
    };
    if !binary {
        return format!("{:?}", String::from_utf8_lossy(b));
    }
    let decoded = match (oid, b.len()) {
        (16, 1) => Some(if b[0] != 0 { "t" } else { "f" }.to_owned()),
        (21, 2) => Some(i16::from_be_bytes([b[0], b[1]]).to_string()),
        (23, 4) => Some(i32::from_be_bytes(b[..4].try_into().unwrap()).to_string()),
        (20, 8) => Some(i64::from_be_bytes(b[..8].try_into().unwrap()).to_string()),
        (700, 4) => Some(format!(
            "{:?}",
            f32::from_be_bytes(b[..4].try_into().unwrap())
        )),
        (701, 8) => Some(format!(
            "{:?}",
            f64::from_be_bytes(b[..8].try_into().unwrap())
        )),
        (25 | 1043 | 1042 | 19, _) => Some(format!("{:?}", String::from_utf8_lossy(b))),
        (1700, _) => render_numeric(b),
        _ => None,
    };
    decoded.unwrap_or_else(|| {
        let mut s = String::from("\\x");
        for byte in b {
            let _ = write!(s, "{byte:02x}");
        }
        s
    })
}

fn render_row(row: Option<&Vec<Val>>, oids: &[u32], binary: bool) -> String {
    match row {
        None => "(no row)".into(),
        Some(r) => {
            let vals: Vec<String> = r
                .iter()
                .enumerate()
                .map(|(i, v)| render_value(v, oids.get(i).copied().unwrap_or(0), binary))
                .collect();
            let text = vals.join(", ");
            if text.chars().count() > 300 {
                format!("({}...)", text.chars().take(300).collect::<String>())
            } else {
                format!("({text})")
            }
        }
    }
}

/// `None` when `got` equals `want`; otherwise what differs.
fn compare(
    mode: Mode,
    ordered: bool,
    want: &Outcome,
    got: &Outcome,
    oids: &[u32],
) -> Option<String> {
    let binary = mode.is_binary();
    let names = |o: &Outcome| o.cols.iter().map(|c| c.0.clone()).collect::<Vec<_>>();
    if names(want) != names(got) {
        return Some(format!(
            "column names: expected {:?}, got {:?}",
            names(want),
            names(got)
        ));
    }
    let types = |o: &Outcome| o.cols.iter().map(|c| c.1).collect::<Vec<_>>();
    if mode != Mode::Simple && types(want) != types(got) {
        return Some(format!(
            "column type OIDs: expected {:?}, got {:?}",
            types(want),
            types(got)
        ));
    }
    let kinds: Vec<Kind> = oids.iter().map(|&o| kind_of(o)).collect();
    let mut w = want.rows.clone();
    let mut g = got.rows.clone();
    if !ordered {
        w.sort_by(|a, b| row_cmp(a, b, &kinds, binary));
        g.sort_by(|a, b| row_cmp(a, b, &kinds, binary));
    }
    let same = |a: &Vec<Val>, b: &Vec<Val>| {
        a.len() == b.len()
            && a.iter().zip(b).enumerate().all(|(i, (x, y))| {
                value_eq(x, y, kinds.get(i).copied().unwrap_or(Kind::Other), binary)
            })
    };
    let first = (0..w.len().max(g.len())).find(|&i| match (w.get(i), g.get(i)) {
        (Some(a), Some(b)) => !same(a, b),
        _ => true,
    });
    if let Some(i) = first {
        return Some(format!(
            "{} rows expected, {} got; first difference at {} row {i}: expected {} got {}",
            w.len(),
            g.len(),
            if ordered { "" } else { "sorted" },
            render_row(w.get(i), oids, binary),
            render_row(g.get(i), oids, binary),
        ));
    }
    if let (Some(a), Some(b)) = (want.tag, got.tag) {
        if a != b {
            return Some(format!("command tag count: expected {a}, got {b}"));
        }
    }
    None
}

// ---------------------------------------------------------------- data

fn mix(i: u64, salt: u64) -> u64 {
    let mut z = i
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(salt.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(0x94D0_49BB_1331_11EB);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of 2023-01-01.
const BASE_DAY: i64 = 19_358;

fn date_lit(day: i64) -> String {
    let (y, m, d) = civil(BASE_DAY + day);
    format!("'{y:04}-{m:02}-{d:02}'")
}

fn ts_lit(secs: u64, micros: u64) -> String {
    let day = (secs / 86_400) as i64;
    let s = secs % 86_400;
    let (y, m, d) = civil(BASE_DAY + day);
    let frac = if micros == 0 {
        String::new()
    } else {
        format!(".{micros:06}")
    };
    format!(
        "'{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}{frac}'",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

fn text_lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn cents(v: i64) -> String {
    let sign = if v < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", v.abs() / 100, v.abs() % 100)
}

fn or_null(null: bool, v: String) -> String {
    if null {
        "NULL".into()
    } else {
        v
    }
}

const SCHEMA: &str = "
CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL, region text);
CREATE TABLE customers (id bigint PRIMARY KEY, name text, country text, created timestamp,
    vip bool, score int2, tier int4 NOT NULL, credit numeric(10,3));
CREATE TABLE orders (id bigint NOT NULL, customer_id bigint NOT NULL, amount numeric(12,2),
    qty int4, big int8, weight float8, ratio float4, status text, placed date,
    note varchar(20), small int2, price numeric, paid bool);
CREATE TABLE events (id bigint PRIMARY KEY, kind text, value int8, ok bool, at timestamp);
CREATE TABLE empty_t (k bigint, v int4, n numeric, f float8, t text, b bool, d date);
CREATE TABLE tiers (tier int4, label text)";

/// Customer ids: 1..=500 and -1..=-20.
fn customer_id(i: u64) -> i64 {
    if i <= 500 {
        i as i64
    } else {
        -((i - 500) as i64)
    }
}

/// The INSERT statements (the same text goes to the proxy and the oracle).
/// `shuffled`: the same rows in another order (for the self-check, so that
/// an ORDER BY that does not fix a total order shows up as a mismatch).
fn data_statements(shuffled: bool) -> Vec<String> {
    let mut out = Vec::new();
    let batch = |table: &str, mut rows: Vec<String>, out: &mut Vec<String>| {
        if shuffled {
            let mut keyed: Vec<(u64, String)> = rows
                .into_iter()
                .enumerate()
                .map(|(i, r)| (mix(i as u64, 999), r))
                .collect();
            keyed.sort();
            rows = keyed.into_iter().map(|(_, r)| r).collect();
        }
        for chunk in rows.chunks(150) {
            out.push(format!("INSERT INTO {table} VALUES {}", chunk.join(", ")));
        }
    };
    let country_rows = [
        "('fr', 'France', 'eu')",
        "('jp', 'Japan', 'asia')",
        "('br', 'Brazil', 'americas')",
        "('us', 'United States', 'americas')",
        "('de', 'Germany', 'eu')",
        "('cn', 'China', 'asia')",
        "('aq', 'Antarctica', NULL)",
    ];
    batch(
        "countries",
        country_rows.iter().map(|r| r.to_string()).collect(),
        &mut out,
    );
    // Unsharded: on the default shard only.
    let tier_rows = ["(1, 'bronze')", "(2, 'silver')", "(3, 'gold')", "(9, NULL)"];
    batch(
        "tiers",
        tier_rows.iter().map(|r| r.to_string()).collect(),
        &mut out,
    );
    let countries = ["fr", "jp", "br", "us", "de", "xx", "FR"];
    let names = ["O'Brien", "Élodie", "zoe", "Zoe", "anna", "Anna "];
    let customers: Vec<String> = (1..=520u64)
        .map(|i| {
            let h = |s| mix(i, s);
            let name = if h(1) % 9 == 0 {
                names[(h(2) % names.len() as u64) as usize].to_owned()
            } else {
                format!("cust-{:02}", h(2) % 60)
            };
            format!(
                "({}, {}, {}, {}, {}, {}, {}, {})",
                customer_id(i),
                or_null(i % 23 == 0, text_lit(&name)),
                or_null(
                    i % 11 == 0,
                    text_lit(countries[(h(3) % countries.len() as u64) as usize])
                ),
                or_null(
                    i % 29 == 0,
                    ts_lit(
                        h(4) % (400 * 86_400),
                        if i % 5 == 0 { h(5) % 1_000_000 } else { 0 }
                    )
                ),
                or_null(i % 7 == 0, (h(6) % 4 == 0).to_string()),
                or_null(i % 13 == 0, ((h(7) % 201) as i64 - 100).to_string()),
                h(8) % 5,
                or_null(
                    i % 10 == 0,
                    format!("{}.{:03}", (h(9) % 20_000) as i64 - 5_000, h(10) % 1000)
                ),
            )
        })
        .collect();
    batch("customers", customers, &mut out);
    let statuses = ["new", "paid", "shipped", "cancelled", "returned", "Paid"];
    let orders: Vec<String> = (1..=3000u64)
        .map(|i| {
            let h = |s: u64| mix(i, 100 + s);
            let customer = if h(1) % 50 == 0 {
                9000 + (h(2) % 20) as i64
            } else {
                customer_id(1 + h(2) % 520)
            };
            let big = if i % 500 == 0 {
                9_000_000_000_000_000_000 - i as i64
            } else {
                (h(5) % 4_000_000_000_000_000) as i64 - 1_000_000_000_000_000
            };
            let scale = (h(12) % 5) as u32;
            let int_part = (h(13) % 100_000) as i64 - 20_000;
            let price = if scale == 0 {
                int_part.to_string()
            } else {
                let frac = h(14) % 10u64.pow(scale);
                format!("{int_part}.{frac:0width$}", width = scale as usize)
            };
            let note = if h(9) % 10 == 0 {
                String::new()
            } else {
                format!("note-{}", h(9) % 50)
            };
            format!(
                "({i}, {customer}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
                or_null(i % 17 == 0, cents((h(3) % 200_000) as i64 - 50_000)),
                or_null(i % 19 == 0, ((h(4) % 41) as i64 - 10).to_string()),
                or_null(i % 23 == 0, big.to_string()),
                or_null(i % 13 == 0, format!("{}", (h(6) % 100_000) as f64 / 7.0)),
                or_null(
                    i % 11 == 0,
                    format!("{}", ((h(7) % 401) as f64 - 200.0) / 8.0)
                ),
                or_null(
                    i % 9 == 0,
                    text_lit(statuses[(h(8) % statuses.len() as u64) as usize])
                ),
                or_null(i % 31 == 0, date_lit((h(10) % 500) as i64)),
                or_null(i % 3 == 0, text_lit(&note)),
                or_null(i % 8 == 0, ((h(11) % 2001) as i64 - 1000).to_string()),
                or_null(i % 14 == 0, price),
                or_null(i % 6 == 0, (h(15) % 3 == 0).to_string()),
            )
        })
        .collect();
    batch("orders", orders, &mut out);
    let kinds = ["click", "view", "buy", "Share", "view ", "z"];
    let events: Vec<String> = (1..=1200u64)
        .map(|i| {
            let h = |s: u64| mix(i, 200 + s);
            let id = if i <= 1150 { 3 * i as i64 } else { -(i as i64) };
            format!(
                "({id}, {}, {}, {}, {})",
                or_null(
                    i % 10 == 0,
                    text_lit(kinds[(h(1) % kinds.len() as u64) as usize])
                ),
                or_null(
                    i % 9 == 0,
                    ((h(2) % 2_000_001) as i64 - 1_000_000).to_string()
                ),
                or_null(i % 5 == 0, (h(3) % 2 == 0).to_string()),
                or_null(i % 12 == 0, ts_lit(h(4) % (90 * 86_400), 0)),
            )
        })
        .collect();
    batch("events", events, &mut out);
    out
}

const TABLES: [(&str, &str); 6] = [
    ("countries", "code"),
    ("tiers", "tier"),
    ("customers", "id"),
    ("orders", "id"),
    ("events", "id"),
    ("empty_t", "k"),
];

/// All rows of `table` as text, sorted.
async fn table_text(client: &Client, table: &str) -> Vec<String> {
    let mut rows: Vec<String> = client
        .simple_query(&format!("SELECT t::text FROM {table} t"))
        .await
        .unwrap_or_else(|e| panic!("read {table}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    rows.sort();
    rows
}

// ---------------------------------------------------------------- the test

#[derive(Default)]
struct Tally {
    matched: usize,
    refused: usize,
    mismatched: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oracle_corpus_matches_unsharded_postgres() {
    let self_check = std::env::var("ORACLE_SELF_CHECK").is_ok_and(|v| v == "1");
    let only = std::env::var("ORACLE_ONLY").ok().filter(|s| !s.is_empty());

    let mut entries = Vec::new();
    for f in corpus_files() {
        let text = std::fs::read_to_string(&f).expect("read corpus");
        let name = format!(
            "tests/oracle/{}",
            f.file_name().unwrap_or_default().to_string_lossy()
        );
        entries.extend(parse_corpus(&name, &text));
    }
    let total = entries.len();
    assert!(total >= 300, "the corpus has only {total} entries");
    let seed: u64 = env_number("ORACLE_SEED", 18);
    let random = env_number("ORACLE_RANDOM", 2000) as usize;
    println!("random queries: {random}, ORACLE_SEED={seed}");
    entries.extend(generator::generate(seed, random));
    if let Some(o) = &only {
        entries.retain(|e| {
            e.sql.contains(o.as_str())
                || e.category.contains(o.as_str())
                || e.place.contains(o.as_str())
        });
    }
    println!(
        "corpus: {total} entries + {random} random, running {}",
        entries.len()
    );

    // The oracle: one unsharded Postgres.
    let oracle_cluster = cluster(ClusterSpec::new(1, 0).hba("host all app 127.0.0.1/32 trust"));
    let onode = &oracle_cluster.shard(0).primary;
    let oracle_ep = Endpoint {
        conninfo: onode.conninfo("app", APP_PASSWORD, "app"),
        port: onode.port(),
        raw_user: "app".into(),
        database: "app".into(),
    };
    let oracle_loader = connect(&oracle_ep.conninfo).await;
    oracle_loader
        .batch_execute(SCHEMA)
        .await
        .expect("oracle schema");
    let data = data_statements(false);
    for s in &data {
        oracle_loader
            .batch_execute(s)
            .await
            .unwrap_or_else(|e| panic!("oracle load: {e} {:?}", e.as_db_error()));
    }
    oracle_loader
        .batch_execute("ANALYZE")
        .await
        .expect("analyze");

    // The sharded side.
    let mut _keep = None;
    let proxy_ep = if self_check {
        println!(
            "ORACLE_SELF_CHECK=1: the proxy side is the oracle server, database app_shuffled (same rows, another physical order)"
        );
        oracle_loader
            .batch_execute("CREATE DATABASE app_shuffled OWNER app")
            .await
            .expect("create app_shuffled");
        let ep = Endpoint {
            conninfo: onode.conninfo("app", APP_PASSWORD, "app_shuffled"),
            port: onode.port(),
            raw_user: "app".into(),
            database: "app_shuffled".into(),
        };
        let loader = connect(&ep.conninfo).await;
        loader.batch_execute(SCHEMA).await.expect("schema");
        for s in data_statements(true) {
            loader.batch_execute(&s).await.expect("load app_shuffled");
        }
        loader.batch_execute("ANALYZE").await.expect("analyze");
        ep
    } else {
        let c = cluster(ClusterSpec::new(3, 0));
        let port = free_port();
        let text = config(&c, port, "pool_size = 10", SHARDING);
        let proxy = Proxy::start(c.dir(), port, &text);
        let ep = Endpoint {
            conninfo: proxy.app(),
            port,
            raw_user: "raw".into(),
            database: "app".into(),
        };
        let loader = connect(&ep.conninfo).await;
        // One statement at a time (DDL is broadcast to every shard).
        for ddl in SCHEMA.split(';') {
            loader
                .batch_execute(ddl)
                .await
                .unwrap_or_else(|e| panic!("schema through the proxy: {e} {:?}", e.as_db_error()));
        }
        for s in &data {
            loader.batch_execute(s).await.unwrap_or_else(|e| {
                panic!(
                    "load through the proxy: {e} {:?}\n{}",
                    e.as_db_error(),
                    &s[..s.len().min(300)]
                )
            });
        }
        // The union of the shards holds exactly the oracle's rows (read
        // directly from each shard, not through the proxy).
        let mut shard_clients = Vec::new();
        for shard in c.shards() {
            shard_clients.push(connect(&shard.primary.conninfo("app", APP_PASSWORD, "app")).await);
        }
        for (table, _) in TABLES {
            let want = table_text(&oracle_loader, table).await;
            let mut got = Vec::new();
            let mut per_shard = Vec::new();
            for sc in &shard_clients {
                let rows = table_text(sc, table).await;
                per_shard.push(rows.len());
                got.extend(rows);
            }
            got.sort();
            if table == "countries" {
                // A reference table: every shard has all rows.
                for n in &per_shard {
                    assert_eq!(*n, want.len(), "reference table countries on a shard");
                }
                got.dedup();
            }
            assert!(
                want == got,
                "{table}: the shards do not hold the oracle's rows"
            );
            println!(
                "loaded {table}: {} rows, per shard {per_shard:?}",
                want.len()
            );
        }
        for sc in &shard_clients {
            sc.batch_execute("ANALYZE").await.expect("analyze shard");
        }
        _keep = Some((c, proxy));
        ep
    };

    let mut oracle = Side::connect(&oracle_ep).await;
    let mut proxy = Side::connect(&proxy_ep).await;

    let mut tally = Tally::default();
    let mut by_category: BTreeMap<String, Tally> = BTreeMap::new();
    let mut mismatches: Vec<String> = Vec::new();
    let mut unexpected_refusals = 0usize;
    let mut matched_refuse = 0usize;
    let mut random_tally = Tally::default();
    // Refused random queries by reason (each query counted once).
    let mut random_refusals: BTreeMap<String, usize> = BTreeMap::new();
    let mut corpus_refusals: Vec<String> = Vec::new();
    for e in &entries {
        let mut refusal: Option<String> = None;
        let mut failed = false;
        // Column types from the oracle (decides which columns are floats).
        let oids: Vec<u32> = match oracle.client.prepare(&e.sql).await {
            Ok(s) => s.columns().iter().map(|c| c.type_().oid()).collect(),
            // An `error` entry may already fail to prepare.
            Err(_) if e.flags.error => Vec::new(),
            Err(err) => {
                let msg = format!(
                    "{} [{}] ORACLE ERROR (corpus bug): {err} {:?}\n    {}",
                    e.place,
                    e.category,
                    err.as_db_error().map(|d| d.message()),
                    e.sql
                );
                mismatches.push(msg);
                tally.mismatched += 1;
                if e.flags.random {
                    random_tally.mismatched += 1;
                }
                by_category
                    .entry(e.category.clone())
                    .or_default()
                    .mismatched += 1;
                continue;
            }
        };
        for mode in Mode::ALL {
            let want = oracle.run(mode, e).await;
            let got = proxy.run(mode, e).await;
            let cat = by_category.entry(e.category.clone()).or_default();
            let head = format!("{} [{}] {} mode", e.place, e.category, mode.name());
            let verdict: Result<bool, String> = match (&want, &got) {
                (Got::Error { code: w, .. }, Got::Error { code: g, .. }) if e.flags.error => {
                    if w == g {
                        Ok(true)
                    } else {
                        Err(format!("error {g} where the oracle failed with {w}"))
                    }
                }
                (Got::Error { code, .. }, Got::Rows(_)) if e.flags.error => {
                    Err(format!("answered where the oracle failed with {code}"))
                }
                (Got::Rows(_), _) if e.flags.error => {
                    Err("ORACLE ANSWERED (corpus bug: an `error` entry)".to_owned())
                }
                (Got::Error { code, message }, _) => {
                    Err(format!("ORACLE ERROR (corpus bug): {code} {message}"))
                }
                (Got::Rows(_), Got::Error { code, message }) if code == "0A000" => {
                    if e.flags.refuse || e.flags.random {
                        refusal.get_or_insert_with(|| refusal_reason(message));
                        Ok(false)
                    } else {
                        unexpected_refusals += 1;
                        Err(format!(
                            "refused (0A000) but an answer was expected: {message}"
                        ))
                    }
                }
                (Got::Rows(_), Got::Error { code, message }) => {
                    Err(format!("error {code}: {message}"))
                }
                (Got::Rows(w), Got::Rows(g)) => match compare(mode, e.flags.ordered, w, g, &oids) {
                    None => Ok(true),
                    Some(diff) => Err(diff),
                },
            };
            match verdict {
                Ok(true) => {
                    tally.matched += 1;
                    cat.matched += 1;
                    if e.flags.refuse {
                        matched_refuse += 1;
                    }
                }
                Ok(false) => {
                    tally.refused += 1;
                    cat.refused += 1;
                }
                Err(why) => {
                    failed = true;
                    tally.mismatched += 1;
                    cat.mismatched += 1;
                    mismatches.push(format!(
                        "{head}: {why}\n    {}",
                        e.sql.replace('\n', "\n    ")
                    ));
                }
            }
        }
        if let (false, Some(r)) = (e.flags.random, &refusal) {
            corpus_refusals.push(format!("{} [{}] {}\n      {r}", e.place, e.category, e.sql));
        }
        if e.flags.random {
            if failed {
                random_tally.mismatched += 1;
            } else if let Some(r) = refusal {
                random_tally.refused += 1;
                *random_refusals.entry(r).or_default() += 1;
            } else {
                random_tally.matched += 1;
            }
        }
    }

    println!("\nper category (matched / refused / mismatched, over 3 modes):");
    for (c, t) in &by_category {
        println!(
            "  {c:<28} {:>4} {:>4} {:>4}",
            t.matched, t.refused, t.mismatched
        );
    }
    if !mismatches.is_empty() {
        println!("\nmismatches:");
        for m in &mismatches {
            println!("{m}");
        }
    }
    println!("\ncorpus entries refused (0A000), with the reason:");
    for r in &corpus_refusals {
        println!("  {r}");
    }
    if random > 0 {
        println!("\nrandom queries refused (0A000), by reason:");
        for (r, n) in &random_refusals {
            println!("  {n:>5}  {r}");
        }
        println!(
            "random (ORACLE_SEED={seed}): {random} queries, {} matched in every mode, {} refused, {} mismatched",
            random_tally.matched, random_tally.refused, random_tally.mismatched
        );
    }
    println!(
        "\noracle: {} matched, {} refused (0A000), {} mismatched ({} entries x {} modes; {} of the mismatches are 0A000 refusals of queries that expect an answer; {} runs of `refuse` entries answered exactly)",
        tally.matched,
        tally.refused,
        tally.mismatched,
        entries.len(),
        Mode::ALL.len(),
        unexpected_refusals,
        matched_refuse
    );
    assert_eq!(
        tally.mismatched, 0,
        "the sharded answers differ from the oracle's (see the list above)"
    );
}

/// An environment variable as a number, or `default`.
fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

/// A refusal message without its specifics (quoted SQL, numbers), to count
/// refusals by kind.
fn refusal_reason(message: &str) -> String {
    let m = message.trim_start_matches("not supported across shards: ");
    let m = m.trim_end_matches(" across shards");
    if m.starts_with("GROUP BY ") && m.contains(", both an output column's name") {
        return "GROUP BY <name>, both an output column's name and an input column".into();
    }
    if m.starts_with("the expression ") && m.ends_with(" over an aggregate") {
        return "the expression ... over an aggregate".into();
    }
    if let Some(rest) = m.strip_prefix("HAVING ") {
        if !rest.starts_with("with the operator") && !rest.starts_with("comparing") {
            return "HAVING <expression>".into();
        }
    }
    m.chars().take(90).collect()
}

/// The generator is deterministic and reaches every part of its grammar.
#[test]
fn generator_is_seeded_and_covers_its_grammar() {
    let a = generator::generate(18, 2000);
    let b = generator::generate(18, 2000);
    assert!(a.iter().zip(&b).all(|(x, y)| x.sql == y.sql));
    assert_ne!(a[0].sql, generator::generate(19, 1)[0].sql);
    for construct in [
        " JOIN customers c ON",
        " JOIN countries k ON",
        "FROM (SELECT",
        " GROUP BY ",
        " HAVING ",
        "SELECT DISTINCT ",
        " ORDER BY ",
        " LIMIT ",
        " OFFSET ",
        " FILTER (WHERE ",
        "string_agg(",
        "count(DISTINCT ",
        " IN (SELECT ",
        " BETWEEN ",
        " LIKE ",
        "CASE WHEN ",
        "coalesce(",
        "::text",
        " IS NULL",
    ] {
        let n = a.iter().filter(|e| e.sql.contains(construct)).count();
        assert!(n >= 10, "{construct:?} in only {n} of 2000 queries");
    }
    // HAVING comparing a date or timestamp with a quoted literal.
    let quoted = a
        .iter()
        .filter(|e| {
            e.sql
                .split(" HAVING ")
                .nth(1)
                .is_some_and(|h| ["= '20", "> '20", "< '20"].iter().any(|op| h.contains(op)))
        })
        .count();
    assert!(quoted >= 5, "quoted literals in only {quoted} HAVINGs");
    let ordered = a.iter().filter(|e| e.flags.ordered).count();
    assert!(ordered >= 500, "only {ordered} ordered entries");
}

/// The comparison and the corpus syntax themselves (no servers needed).
#[test]
fn comparison_detects_differences() {
    let out = |cols: &[(&str, u32)], rows: Vec<Vec<Val>>| Outcome {
        cols: cols.iter().map(|(n, o)| (n.to_string(), *o)).collect(),
        rows,
        tag: None,
    };
    let v = |s: &str| Some(s.as_bytes().to_vec());
    let cols = [("id", 20), ("w", 701)];
    let oids = [20, 701];
    let a = out(&cols, vec![vec![v("1"), v("0.1")], vec![v("2"), None]]);
    let b = out(
        &cols,
        vec![vec![v("2"), None], vec![v("1"), v("0.10000000000000002")]],
    );
    assert!(compare(Mode::Text, false, &a, &b, &oids).is_none());
    assert!(compare(Mode::Text, true, &a, &b, &oids).is_some());
    let c = out(&cols, vec![vec![v("1"), v("0.1001")], vec![v("2"), None]]);
    assert!(compare(Mode::Text, false, &a, &c, &oids).is_some());
    let d = out(&cols, vec![vec![v("1"), v("0.1")], vec![v("2"), v("0")]]);
    assert!(compare(Mode::Text, false, &a, &d, &oids).is_some());
    let e = out(&cols, vec![vec![v("1"), v("0.1")]]);
    assert!(compare(Mode::Text, false, &a, &e, &oids).is_some());
    let renamed = out(&[("id", 20), ("x", 701)], a.rows.clone());
    assert!(compare(Mode::Text, false, &a, &renamed, &oids).is_some());
    let retyped = out(&[("id", 23), ("w", 701)], a.rows.clone());
    assert!(compare(Mode::Binary, false, &a, &retyped, &oids).is_some());
    // The same numeric value with another scale is a difference.
    let n = [("n", 1700)];
    assert!(compare(
        Mode::Text,
        false,
        &out(&n, vec![vec![v("1.50")]]),
        &out(&n, vec![vec![v("1.5")]]),
        &[1700]
    )
    .is_some());
    let f = |x: f64| Some(x.to_be_bytes().to_vec());
    let fc = [("f", 701)];
    assert!(compare(
        Mode::Binary,
        false,
        &out(&fc, vec![vec![f(0.3)]]),
        &out(&fc, vec![vec![f(0.1 + 0.2)]]),
        &[701]
    )
    .is_none());
    assert!(compare(
        Mode::Binary,
        false,
        &out(&fc, vec![vec![f(0.3)]]),
        &out(&fc, vec![vec![f(0.3001)]]),
        &[701]
    )
    .is_some());
    let mut t1 = a.clone();
    t1.tag = Some(2);
    let mut t2 = a.clone();
    t2.tag = Some(3);
    assert!(compare(Mode::Simple, false, &t1, &t2, &oids).is_some());
    assert_eq!(
        render_numeric(&[0, 2, 0, 0, 0x40, 0, 0, 2, 0, 1, 0x13, 0x88]).as_deref(),
        Some("-1.50 (numeric dscale 2)")
    );
    let es = parse_corpus(
        "t",
        "-- c\n-- @cat\nordered,tx: SELECT 1\n  + 1;\nSELECT a::text FROM t\n",
    );
    assert_eq!(es.len(), 2);
    assert!(es[0].flags.ordered && es[0].flags.tx && !es[0].flags.refuse);
    assert_eq!(es[0].sql, "SELECT 1\n+ 1");
    assert_eq!(es[1].sql, "SELECT a::text FROM t");
    assert_eq!(es[1].category, "cat");
}

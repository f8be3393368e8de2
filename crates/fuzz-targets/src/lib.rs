//! Fuzz target bodies: each feeds arbitrary bytes to the entry points the
//! proxy itself calls on input from outside (clients, servers, the
//! configuration file, the admin console).
//!
//! Every target is a plain `fn(&[u8])` listed in [`TARGETS`]. The afl
//! driver in `fuzz/` (a separate cargo project, built with `cargo afl`)
//! runs one of them per process; the test in `tests/corpus.rs` replays every
//! file under `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`
//! through its target on each `cargo test`. A target panics only where the
//! code under test would (a bug): errors are the expected answer to bad
//! input, and the targets check a few invariants on top (round trips, the
//! routing of a COPY row against the point-query planner).
//!
//! Inputs that carry several parts separate them with a NUL byte (see
//! [`split_nul`]); SQL, TOML and SCRAM text never contain one.

use std::sync::OnceLock;

use bytes::BytesMut;
use shardgate::config::Config;
use shardgate::routing::ReadLevel;
use shardgate::session::probe;
use shardgate_merge::expr::encode_value;
use shardgate_merge::{decode_key, float4_text, float8_text, oid, Key, Numeric, Rounding};
use shardgate_protocol::auth::scram::{Exchange, Negotiation, Verifier};
use shardgate_protocol::backend::{self, ErrorFields};
use shardgate_protocol::batch::batch_end;
use shardgate_protocol::frontend::{self, tag, Bind, DescribeOrClose, Execute, Parse};
use shardgate_protocol::startup::StartupPacket;
use shardgate_protocol::Header;
use shardgate_router::copy::{parse_copy, CopySplitter};
use shardgate_router::{Analyzer, Classifier, SessionCommand};
use shardgate_shardmap::ShardMap;

/// A fuzz target: takes any bytes, panics only on a bug.
pub type Target = fn(&[u8]);

/// Every target by name (the name is the afl driver's argument and the
/// corpus folder's name).
pub const TARGETS: &[(&str, Target)] = &[
    ("startup", startup),
    ("frontend_framing", frontend_framing),
    ("frontend_message", frontend_message),
    ("backend_message", backend_message),
    ("scram", scram),
    ("classify", classify),
    ("planner", planner),
    ("merge_plan", merge_plan),
    ("hints", hints),
    ("copy", copy),
    ("numeric", numeric),
    ("merge_key", merge_key),
    ("merge_expr", merge_expr),
    ("admin_sql", admin_sql),
    ("admin_command", admin_command),
    ("config", config),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// The largest message the proxy accepts by default (`proxy.max_message_size`
/// is 256 MiB; a smaller bound keeps the fuzzer's inputs meaningful and
/// checks the same comparisons).
const MAX_MESSAGE: usize = 1 << 20;

/// Splits `data` at its first NUL byte: (before, after); `after` is empty
/// when there is none.
pub fn split_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Input as text, invalid UTF-8 replaced (the proxy itself takes only
/// UTF-8 text, checked before it reaches the parsers).
fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// The configuration the routing targets use (`src/fixture.toml`: every
/// placement function and key type over three shards), parsed by the
/// proxy's own loader.
pub fn fixture_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        Config::parse(include_str!("fixture.toml"), "fixture.toml").expect("fixture.toml is valid")
    })
}

/// The shard map of [`fixture_config`], as the runtime builds it.
pub fn fixture_map() -> &'static ShardMap {
    static MAP: OnceLock<ShardMap> = OnceLock::new();
    MAP.get_or_init(|| fixture_config().shard_map().expect("fixture map is valid"))
}

/// The startup packet, as the handshake reads it from a new connection,
/// then its parameters as the handshake turns them into session settings.
pub fn startup(data: &[u8]) {
    let mut rest = data;
    while let Ok(Some((packet, used))) = StartupPacket::decode(rest) {
        assert!(
            used > 0 && used <= rest.len(),
            "decode consumed {used} of {}",
            rest.len()
        );
        if let StartupPacket::Startup { params, .. } = &packet {
            let config = fixture_config();
            let base = ReadLevel::configured(config, &config.users[0]);
            if let Ok((session, _)) = shardgate::handshake::startup_settings(params, base) {
                let _ = shardgate::state::SessionState::from_startup(&session);
            }
        }
        rest = &rest[used..];
    }
}

/// A client's byte stream cut into messages as the session reads it
/// (`Header::complete`, `batch_end` for extended-protocol batches), each
/// message validated as the session validates it before acting on it.
pub fn frontend_framing(data: &[u8]) {
    let mut pos = 0;
    while let Ok(Some(h)) = Header::complete(&data[pos..], MAX_MESSAGE) {
        assert!(h.total >= 5 && pos + h.total <= data.len());
        let _ = frontend::validate(h.tag, &data[pos + 5..pos + h.total]);
        pos += h.total;
    }
    let mut scanned = 0;
    while scanned < data.len() {
        match batch_end(&data[scanned..], 0, MAX_MESSAGE) {
            Ok(shardgate_protocol::batch::BatchEnd::Complete(n)) => {
                assert!(n > 0 && scanned + n <= data.len());
                scanned += n;
            }
            Ok(shardgate_protocol::batch::BatchEnd::Incomplete(n)) => {
                assert!(scanned + n <= data.len());
                break;
            }
            Err(_) => break,
        }
    }
}

/// One frontend message body: the first byte picks the type (Query, Parse,
/// Bind, Describe, Close, Execute, CopyData), the rest is its body, decoded
/// by the views the session uses and re-encoded the ways it rewrites them.
pub fn frontend_message(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let mut out = BytesMut::new();
    match selector % 7 {
        0 => {
            if let Ok(sql) = frontend::parse_query(body) {
                frontend::encode_query(sql, &mut out);
            }
        }
        1 => {
            if let Ok(p) = Parse::decode(body) {
                let _ = p.param_type_count();
                p.encode_as("s1", &mut out);
                let again = Parse::decode(&out[5..]).expect("re-encoded Parse decodes");
                assert_eq!(again.query, p.query);
                assert_eq!(again.param_types, p.param_types);
            }
        }
        2 => {
            if let Ok(b) = Bind::decode(body) {
                let n = b.param_count();
                for i in 0..n + 1 {
                    let _ = (b.param(i), b.param_format(i));
                }
                let formats = b.result_formats();
                let all: Vec<usize> = (0..n).collect();
                b.encode_with_params("s1", &all, &mut out);
                let again = Bind::decode(&out[5..]).expect("re-encoded Bind decodes");
                assert_eq!(again.param_count(), n);
                for i in 0..n {
                    assert_eq!(again.param(i), b.param(i));
                }
                out.clear();
                b.encode_with_results("s1", &formats, &mut out);
                out.clear();
                b.encode_with_statement("s1", &mut out);
                Bind::decode(&out[5..]).expect("re-encoded Bind decodes");
            }
        }
        3 | 4 => {
            let (what, t) = if selector % 7 == 3 {
                ("Describe", tag::DESCRIBE)
            } else {
                ("Close", tag::CLOSE)
            };
            if let Ok(d) = DescribeOrClose::decode(body, what) {
                d.encode_as(t, "p1", &mut out);
                DescribeOrClose::decode(&out[5..], what).expect("re-encoded message decodes");
            }
        }
        5 => {
            let _ = Execute::decode(body);
        }
        _ => {
            let _ = frontend::validate(tag::COPY_DATA, body);
        }
    }
}

/// One backend message the proxy decodes: the first byte picks the type
/// (ErrorResponse, ParameterStatus, CommandComplete, BackendKeyData,
/// RowDescription, DataRow), the rest is its body.
pub fn backend_message(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 6 {
        0 => {
            if let Ok(f) = ErrorFields::decode(body) {
                let _ = f.is_fatal();
            }
        }
        1 => {
            let _ = backend::decode_parameter_status(body);
        }
        2 => {
            let _ = backend::decode_command_complete(body);
        }
        3 => {
            let _ = backend::decode_backend_key_data(body);
        }
        4 => {
            let mut msg = vec![backend::tag::ROW_DESCRIPTION];
            msg.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
            msg.extend_from_slice(body);
            if let Some((types, ends)) = probe::row_description(&msg) {
                assert_eq!(types.len(), ends.len());
                assert!(ends.iter().all(|e| *e <= msg.len()));
            }
        }
        _ => {
            if let Some(fields) = probe::data_row(body) {
                let total: usize = fields.iter().flatten().map(|f| f.len()).sum();
                assert!(total <= body.len());
            }
        }
    }
}

/// SCRAM-SHA-256 as the handshake runs it: a stored verifier parsed from
/// text, the client-first message, then the client-final message (parts
/// separated by NUL); the first byte picks the channel-binding negotiation.
pub fn scram(data: &[u8]) {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (first, rest) = split_nul(rest);
    let (last, stored) = split_nul(rest);
    if let Ok(s) = std::str::from_utf8(stored) {
        let _ = Verifier::parse(s);
    }
    // The verifier of a password, computed once (PBKDF2 is slow by design).
    let verifier = VERIFIER
        .get_or_init(|| Verifier::from_password("secret"))
        .clone();
    let binding = [7u8; 32];
    let negotiation = Negotiation {
        plus: selector & 1 == 1,
        offered_binding: (selector & 2 == 2).then_some(&binding[..]),
    };
    if let Ok((exchange, server_first)) = Exchange::start(verifier, first, negotiation) {
        assert!(server_first.starts_with("r="));
        let _ = exchange.finish(last);
    }
}

/// The statement classifier (read or write, and the session effects the
/// session looks for) over arbitrary SQL text, through the analyzer's
/// cache as a proxy without sharding asks it.
pub fn classify(data: &[u8]) {
    static ANALYZER: OnceLock<Analyzer> = OnceLock::new();
    let sql = text(data);
    let analyzer = ANALYZER.get_or_init(|| {
        let r = &fixture_config().routing;
        Analyzer::new(Classifier::new(&r.write_functions), r.classifier_cache)
    });
    let cached = analyzer.classify(&sql, None);
    assert_eq!(
        cached,
        analyzer.classifier().classify(&sql),
        "cache changed the answer"
    );
    let _ = shardgate_router::quick_scan(&sql);
    let _ = SessionCommand::parse(&sql);
    let _ = shardgate_router::leaves_session_state(&sql);
}

/// The shard-key planner as a sharded session runs it: SQL text, then
/// (after a NUL) a Bind body whose parameters are the key values.
pub fn planner(data: &[u8]) {
    static ANALYZER: OnceLock<Analyzer> = OnceLock::new();
    let (sql, bind) = split_nul(data);
    let sql = text(sql);
    let analyzer = ANALYZER.get_or_init(|| Analyzer::new(Classifier::default(), 64));
    let map = fixture_map();
    let bind = Bind::decode(bind).ok();
    let uncached = shardgate_router::plan_shards(&sql, &probe::table_lookup(map));
    let shards = probe::point_shards(analyzer, map, &sql, bind.as_ref());
    // Control characters other than tab and line ends (`\x0b` between
    // words) are read differently by the planner's lexer and sqlparser;
    // with an unterminated string (no statement) the cached plan was keyed
    // and the uncached one not (fuzz/regressions/planner/). The server
    // rejects such text wherever it goes, so the comparison skips it. So
    // does a lone `\r`: it ends a `--` comment for Postgres and the lexer,
    // not for sqlparser.
    let plain = !sql
        .chars()
        .any(|c| c.is_ascii_control() && !matches!(c, '\t' | '\n' | '\r'))
        && !sql.replace("\r\n", "\n").contains('\r');
    // The route from the shared (normalised) analysis is the classifier's
    // for every text sqlparser understands. Where it does not (no
    // statement: every server rejects the text), the two may differ, as
    // normalising changes such text (fuzz/regressions/planner/glued_*).
    let direct = analyzer.classifier().classify(&sql);
    if plain && !direct.fallback {
        assert_eq!(
            analyzer.classify(&sql, Some(&probe::table_lookup(map))),
            direct,
            "the shared analysis changed the route of {sql:?}"
        );
    }
    if let Ok(Some(set)) = shards {
        assert!(set.iter().all(|s| *s < map.shard_count()));
        assert!(
            !plain
                || !matches!(
                    uncached,
                    shardgate_router::ShardPlan::Unsharded | shardgate_router::ShardPlan::NoTable
                ),
            "a keyed cached plan for an unkeyed plan: {sql:?}"
        );
    }
}

/// The merge planner for statements over several shards: the plan made
/// from the analysis's cached tree with the text's literals bound in must
/// be the plan of the text parsed as written.
pub fn merge_plan(data: &[u8]) {
    static ANALYZER: OnceLock<Analyzer> = OnceLock::new();
    let sql = text(data);
    let lookup = probe::table_lookup(fixture_map());
    let analyzer = ANALYZER.get_or_init(|| Analyzer::new(Classifier::default(), 64));
    let direct = shardgate_router::merge_plan::plan_merge(&sql, &lookup);
    let bound = analyzer.merge_plan(&sql, &lookup);
    if let (Ok(direct), Ok(bound)) = (&direct, &bound) {
        assert_eq!(
            direct, &**bound,
            "binding literals changed the merge plan of {sql:?}"
        );
    }
}

/// `/* shardgate: ... */` hint comments.
pub fn hints(data: &[u8]) {
    let _ = shardgate_router::parse_hints(&text(data));
}

/// `COPY ... FROM STDIN` as a sharded session runs it: the statement, then
/// (after a NUL) the data, cut into CopyData chunks at the offsets the
/// statement's last byte picks; each row must land where the point-query
/// planner puts its key.
pub fn copy(data: &[u8]) {
    let (sql, payload) = split_nul(data);
    let sql = text(sql);
    let Some(cs) = parse_copy(&sql) else {
        return;
    };
    let map = fixture_map();
    let _ = shardgate_router::CopyOutJoin::new(&cs, map.shard_count());
    if cs.to || cs.query {
        let mut out = Vec::new();
        shardgate_router::CopyRowsOut::new(&cs).convert(payload, &mut out);
        return;
    }
    let Some(rule) = map.table(cs.table.0.as_deref(), &cs.table.1) else {
        return;
    };
    let key = cs
        .columns
        .as_ref()
        .map_or(Some(0), |cols| cols.iter().position(|c| *c == rule.column));
    let Some(key) = key else {
        return;
    };
    let step = usize::from(sql.as_bytes().last().copied().unwrap_or(7)).max(1);
    let chunks: Vec<&[u8]> = payload.chunks(step).collect();
    let splitter = CopySplitter::for_statement(&cs, Some(key));
    let _ = probe::copy_rows_by_shard(map, rule, splitter, &chunks);
}

/// Exact numeric values as shards send them (binary and text) and the
/// arithmetic the merge does on them; the first byte picks the operation.
pub fn numeric(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (a, b) = split_nul(rest);
    let parse = |x: &[u8]| {
        if selector & 0x80 != 0 {
            Numeric::from_binary(x).ok()
        } else {
            std::str::from_utf8(x).ok().and_then(Numeric::parse_text)
        }
    };
    let (Some(a), b) = (parse(a), parse(b)) else {
        return;
    };
    let text = a.to_text();
    let mut bin = BytesMut::new();
    a.to_binary(&mut bin);
    let back = Numeric::from_binary(&bin).expect("own binary encoding decodes");
    assert_eq!(
        back.cmp_value(&a),
        std::cmp::Ordering::Equal,
        "binary round trip of {text}"
    );
    if !a.is_special() {
        let reparsed = Numeric::parse_text(&text).expect("own text decodes");
        assert_eq!(
            reparsed.cmp_value(&a),
            std::cmp::Ordering::Equal,
            "text round trip of {text}"
        );
    }
    let _ = (a.to_f64(), a.neg(), a.abs(), a.signum(), a.dscale());
    let small = i32::from(selector & 0x1f) - 8;
    match selector & 0x7 {
        0 => {
            for mode in [
                Rounding::HalfAway,
                Rounding::Trunc,
                Rounding::Ceil,
                Rounding::Floor,
            ] {
                let _ = a.round_to(small, mode);
            }
        }
        1 => {
            let _ = a.sqrt_rounded(small.unsigned_abs() as u16);
        }
        2 => {
            let _ = a.with_typmod(small.abs() + 1, small.abs() / 2);
        }
        3 => {
            let _ = a.to_int("bigint", i64::MIN, i64::MAX);
        }
        _ => {}
    }
    if let Some(b) = b {
        let _ = a.add(&b);
        let _ = a.sub(&b);
        let _ = a.mul(&b);
        let _ = a.div(&b);
        let _ = a.rem(&b);
        assert_eq!(a.cmp_value(&b), b.cmp_value(&a).reverse());
    }
}

/// Type OIDs whose values the merge reads as sort and group keys.
const KEY_TYPES: &[u32] = &[
    oid::BOOL,
    oid::BYTEA,
    oid::CHAR,
    oid::NAME,
    oid::INT8,
    oid::INT2,
    oid::INT4,
    oid::TEXT,
    oid::OID,
    oid::JSON,
    oid::FLOAT4,
    oid::FLOAT8,
    oid::NUMERIC,
    oid::DATE,
    oid::TIMESTAMP,
    oid::TIMESTAMPTZ,
    oid::UUID,
    oid::VARCHAR,
];

/// Sort and group keys decoded from binary values as shards send them
/// (the first byte picks the type; two values separated by NUL), compared
/// as the merge compares them, and encoded back as the merge writes them.
pub fn merge_key(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let ty = KEY_TYPES[usize::from(selector) % KEY_TYPES.len()];
    let (a, b) = split_nul(rest);
    let null = selector & 0x80 != 0;
    let Ok(ka) = decode_key(ty, (!null).then_some(a)) else {
        return;
    };
    let Ok(kb) = decode_key(ty, Some(b)) else {
        return;
    };
    assert_eq!(ka.cmp_value(&kb), kb.cmp_value(&ka).reverse());
    for (desc, nulls_first) in [(false, false), (true, true)] {
        assert_eq!(
            ka.cmp_sort(&kb, desc, nulls_first),
            kb.cmp_sort(&ka, desc, nulls_first).reverse()
        );
    }
    if ka.group_eq(&kb) {
        use std::hash::{Hash, Hasher};
        let hash = |k: &Key| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            k.hash_group(&mut h);
            0u8.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&ka), hash(&kb), "equal groups hash alike");
    }
    for format in [0, 1] {
        let _ = encode_value(&ka, ty, format);
    }
    if let Ok(bytes) = <[u8; 8]>::try_from(a) {
        let _ = float8_text(f64::from_be_bytes(bytes));
    }
    if let Ok(bytes) = <[u8; 4]>::try_from(a) {
        let _ = float4_text(f32::from_be_bytes(bytes));
    }
    let _ = Key::from_literal_number(&text(a));
}

/// A typed value read off an input: type OID, bytes (`None`: NULL), and
/// the rest of the input.
type Taken<'a> = (u32, Option<&'a [u8]>, &'a [u8]);

/// Takes one value off `data`: a type selector byte (into [`KEY_TYPES`]),
/// a length byte (255: NULL) and that many bytes.
fn take_value(data: &[u8]) -> Option<Taken<'_>> {
    let (&selector, rest) = data.split_first()?;
    let (&len, rest) = rest.split_first()?;
    let ty = KEY_TYPES[usize::from(selector) % KEY_TYPES.len()];
    if len == 255 {
        return Some((ty, None, rest));
    }
    let len = usize::from(len).min(rest.len());
    Some((ty, Some(&rest[..len]), &rest[len..]))
}

/// Expressions the proxy evaluates per combined group (arithmetic, casts,
/// comparisons and functions over aggregates, HAVING): a statement planned
/// by the merge planner, then (after a NUL) values for each expression's
/// inputs and types for its operator probes (see [`take_value`]), bound and
/// evaluated as the session does, the result encoded as it is sent.
pub fn merge_expr(data: &[u8]) {
    use shardgate_router::merge_plan::{plan_merge, MergeMode};
    let (sql, mut rest) = split_nul(data);
    let Ok(plan) = plan_merge(&text(sql), &probe::table_lookup(fixture_map())) else {
        return;
    };
    let MergeMode::Grouped(g) = &plan.mode else {
        return;
    };
    for x in &g.exprs {
        let mut types = Vec::new();
        let mut keys = Vec::new();
        for _ in &x.inputs {
            let Some((ty, value, r)) = take_value(rest) else {
                return;
            };
            rest = r;
            let Ok(key) = decode_key(ty, value) else {
                return;
            };
            types.push(ty);
            keys.push(key);
        }
        let mut probes = Vec::new();
        for _ in &x.probes {
            let Some((ty, _, r)) = take_value(rest) else {
                return;
            };
            rest = r;
            probes.push(ty);
        }
        if let Ok(bound) = x.tree.bind(&types, &probes) {
            if let Ok(v) = bound.eval(&keys) {
                for format in [0, 1] {
                    let _ = encode_value(&v, bound.type_oid(), format);
                }
            }
        }
    }
}

/// SQL over the admin console's tables (embedded SQLite), with a Bind
/// parameter decoded as the console decodes it; the first byte picks the
/// parameter's format and type.
pub fn admin_sql(data: &[u8]) {
    use shardgate_admin::{decode_param, ColType, Column, Engine, Table, Value};
    const COLUMNS: &[Column] = &[
        Column::new("node", ColType::Text),
        Column::new("shard", ColType::Int4),
        Column::new("lag", ColType::Int8),
        Column::new("load", ColType::Float8),
        Column::new("healthy", ColType::Bool),
        Column::new("since", ColType::Timestamptz),
    ];
    const TYPES: [ColType; 6] = ColType::ALL;
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (sql, param) = split_nul(rest);
    let Ok(sql) = std::str::from_utf8(sql) else {
        return;
    };
    let ty = TYPES[usize::from(selector) % TYPES.len()];
    let params: Vec<Value> = decode_param(Some(param), selector & 0x80 != 0, ty)
        .into_iter()
        .collect();
    let table = Table {
        name: "nodes",
        columns: COLUMNS,
        rows: vec![vec![
            Value::Text("127.0.0.1:5432".into()),
            Value::Int(0),
            Value::Int(12),
            Value::Float(0.5),
            Value::Bool(true),
            Value::Null,
        ]],
    };
    let Ok(mut engine) = Engine::new(&["nodes"]) else {
        return;
    };
    if engine.load(&table).is_err() {
        return;
    }
    let _ = Engine::referenced_tables(sql, &["nodes"]);
    let _ = engine.describe(sql, &[&table]);
    if let Ok(rs) = engine.query(sql, &params, None) {
        let _ = rs;
    }
}

/// The admin console's commands (`SHOW`, `BAN`, `PAUSE`, `SET`, ...).
pub fn admin_command(data: &[u8]) {
    let _ = shardgate::admin::parse_command(&text(data));
}

/// `proxy.toml` as the proxy loads it (parsing and validation), and the
/// shard map it describes.
pub fn config(data: &[u8]) {
    if let Ok(config) = Config::parse(&text(data), "proxy.toml") {
        if config.sharding_enabled() {
            let _ = config.shard_map();
        }
    }
}

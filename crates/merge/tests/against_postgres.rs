//! Compares this crate's arithmetic and encodings with a real PostgreSQL server.

use bytes::BytesMut;
use shardgate_harness::{Cluster, ClusterSpec};
use shardgate_merge::{float4_text, float8_text, oid, AggKind, AggState, Numeric};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// xorshift64: deterministic test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `lo + below(spread)` random decimal digits.
    fn digits(&mut self, lo: usize, spread: u64) -> String {
        let n = lo + self.below(spread) as usize;
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }

    /// A decimal literal with varied sign, magnitude and scale.
    fn numeric(&mut self) -> String {
        let sign = if self.below(3) == 0 { "-" } else { "" };
        match self.below(10) {
            0 => format!("{sign}0.{}", "0".repeat(self.below(8) as usize) + "1"),
            1 => format!("{sign}1{}", "0".repeat(self.below(30) as usize)),
            2 => format!("{sign}{}", self.below(100)),
            3 => format!("{sign}{}.{}", self.digits(1, 25), self.digits(1, 25)),
            4 => format!("{sign}0.{}", self.digits(1, 20)),
            5 => format!("{sign}{}", self.digits(1, 40)),
            6 => format!(
                "{sign}{}.{}",
                self.below(10000),
                "0".repeat(self.below(6) as usize)
            ),
            7 => format!("{sign}{}e{}", self.below(1000), self.below(60) as i64 - 30),
            _ => format!("{sign}{}.{}", self.digits(1, 6), self.digits(1, 6)),
        }
    }

    fn f64_any(&mut self) -> f64 {
        loop {
            let v = f64::from_bits(self.next());
            if v.is_finite() && (v == 0.0 || v.is_normal()) {
                return v;
            }
        }
    }

    fn f32_any(&mut self) -> f32 {
        loop {
            let v = f32::from_bits(self.next() as u32);
            if v.is_finite() && (v == 0.0 || v.is_normal()) {
                return v;
            }
        }
    }

    /// Short decimals at every magnitude, including the fixed/scientific boundaries.
    fn f64_nice(&mut self) -> f64 {
        let mantissa = self.below(100_000) as f64 / 10f64.powi(self.below(6) as i32);
        let v = mantissa * 10f64.powi(self.below(44) as i32 - 22);
        if self.below(2) == 0 {
            -v
        } else {
            v
        }
    }
}

async fn connect(conninfo: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {conninfo}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

async fn rows(client: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let messages = client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", e.as_db_error(), &sql[..sql.len().min(500)]));
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Decodes bytea text output (`\x...`).
fn unhex(s: &str) -> Vec<u8> {
    let h = s.strip_prefix("\\x").expect("bytea hex output");
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

fn numeric_bin(n: &Numeric) -> Vec<u8> {
    let mut out = BytesMut::new();
    n.to_binary(&mut out);
    out.to_vec()
}

fn get(row: &[Option<String>], i: usize) -> &str {
    row[i].as_deref().expect("non-null column")
}

#[test]
fn matches_postgres() {
    let cluster = Cluster::start(ClusterSpec::new(1, 0)).expect("start cluster");
    let conninfo = cluster.shard(0).primary.superuser_conninfo("postgres");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = connect(&conninfo).await;
        let version = rows(&client, "SHOW server_version_num").await;
        eprintln!("server_version_num {}", get(&version[0], 0));
        numeric_parse_and_encode(&client).await;
        numeric_division(&client).await;
        float_text(&client).await;
        aggregates(&client).await;
    });
}

async fn numeric_parse_and_encode(client: &Client) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut lits: Vec<String> = (0..400).map(|_| rng.numeric()).collect();
    lits.extend(
        [
            "0",
            "-0",
            "0.000",
            "NaN",
            "Infinity",
            "-Infinity",
            "1e-20",
            "1e20",
            "9999.9999",
            "10000",
            "0.00001",
            "-123.456e2",
            "1.5e-3",
        ]
        .map(String::from),
    );
    let values: Vec<String> = lits
        .iter()
        .enumerate()
        .map(|(i, l)| format!("({i}, '{l}'::numeric)"))
        .collect();
    let sql = format!(
        "SELECT x::text, numeric_send(x) FROM (VALUES {}) v(i, x) ORDER BY i",
        values.join(",")
    );
    let result = rows(client, &sql).await;
    assert_eq!(result.len(), lits.len());
    for (lit, row) in lits.iter().zip(&result) {
        let n = Numeric::parse_text(lit).unwrap_or_else(|| panic!("parse {lit}"));
        assert_eq!(n.to_text(), get(row, 0), "text of {lit}");
        let pg_bin = unhex(get(row, 1));
        assert_eq!(numeric_bin(&n), pg_bin, "numeric_send of {lit}");
        let back = Numeric::from_binary(&pg_bin).unwrap();
        assert_eq!(back.to_text(), get(row, 0), "from_binary of {lit}");
    }
}

async fn numeric_division(client: &Client) {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut pairs: Vec<(String, String)> = Vec::new();
    while pairs.len() < 1200 {
        let a = rng.numeric();
        let b = rng.numeric();
        if Numeric::parse_text(&b)
            .unwrap()
            .cmp_value(&Numeric::from_i64(0))
            .is_ne()
        {
            pairs.push((a, b));
        }
    }
    for (a, b) in [
        ("1", "3"),
        ("2", "3"),
        ("-2", "3"),
        ("3", "3"),
        ("9999", "9999"),
        ("1", "9999"),
        ("9999", "1"),
        ("0", "3"),
        ("0.0001", "3"),
        ("1", "7e30"),
        ("7e30", "1"),
        ("NaN", "2"),
        ("Infinity", "-2"),
        ("1", "Infinity"),
        ("-Infinity", "Infinity"),
        ("12345678901234567890.1", "4"),
        ("0.5", "0.0000000001"),
        ("1", "0.000000000000000000000000000003"),
    ] {
        pairs.push((a.to_string(), b.to_string()));
    }
    for chunk in pairs.chunks(400) {
        let values: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, (a, b))| format!("({i}, '{a}'::numeric, '{b}'::numeric)"))
            .collect();
        let sql = format!(
            "SELECT (a / b)::text, numeric_send(a / b) FROM (VALUES {}) v(i, a, b) ORDER BY i",
            values.join(",")
        );
        let result = rows(client, &sql).await;
        assert_eq!(result.len(), chunk.len());
        for ((a, b), row) in chunk.iter().zip(&result) {
            let q = Numeric::parse_text(a)
                .unwrap()
                .div(&Numeric::parse_text(b).unwrap())
                .unwrap();
            assert_eq!(q.to_text(), get(row, 0), "{a} / {b}");
            assert_eq!(numeric_bin(&q), unhex(get(row, 1)), "binary of {a} / {b}");
        }
    }
    let err = Numeric::from_i64(1).div(&Numeric::from_i64(0)).unwrap_err();
    let pg_err = client
        .simple_query("SELECT 1::numeric / 0")
        .await
        .unwrap_err();
    let db = pg_err.as_db_error().unwrap();
    assert_eq!(db.code().code(), err.sqlstate());
    assert_eq!(db.message(), err.to_string());
}

async fn float_text(client: &Client) {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let mut f8: Vec<f64> = (0..3000).map(|_| rng.f64_any()).collect();
    f8.extend((0..2000).map(|_| rng.f64_nice()));
    f8.extend([
        0.0,
        -0.0,
        0.1,
        0.1 + 0.2,
        1.0 / 3.0,
        1e14,
        99999999999999.9,
        999999999999999.0,
        1e15,
        1.5e15,
        1e16,
        0.0001,
        0.00009999,
        0.00001,
        123.456,
        f64::MAX,
        f64::MIN_POSITIVE,
        5e-324,
        1e-310,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ]);
    for chunk in f8.chunks(500) {
        let values: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| format!("({i}, '{v:e}'::float8)"))
            .collect();
        let sql = format!(
            "SELECT x::text, float8send(x) FROM (VALUES {}) v(i, x) ORDER BY i",
            values.join(",")
        );
        let result = rows(client, &sql).await;
        assert_eq!(result.len(), chunk.len());
        for (v, row) in chunk.iter().zip(&result) {
            assert_eq!(float8_text(*v), get(row, 0), "float8 {v:e}");
            assert_eq!(
                v.to_bits().to_be_bytes().to_vec(),
                unhex(get(row, 1)),
                "{v:e}"
            );
        }
    }

    // Arithmetic results (quotients have full-length digit strings).
    let pairs: Vec<(f64, f64)> = (0..400).map(|_| (rng.f64_nice(), rng.f64_nice())).collect();
    let values: Vec<String> = pairs
        .iter()
        .enumerate()
        .map(|(i, (a, b))| format!("({i}, '{a:e}'::float8, '{b:e}'::float8)"))
        .collect();
    let sql = format!(
        "SELECT (a / nullif(b, 0))::text, (a + b)::text FROM (VALUES {}) v(i, a, b) ORDER BY i",
        values.join(",")
    );
    for ((a, b), row) in pairs.iter().zip(&rows(client, &sql).await) {
        if *b != 0.0 {
            assert_eq!(float8_text(a / b), get(row, 0), "{a:e} / {b:e}");
        }
        assert_eq!(float8_text(a + b), get(row, 1), "{a:e} + {b:e}");
    }

    let mut f4: Vec<f32> = (0..3000).map(|_| rng.f32_any()).collect();
    f4.extend((0..1500).map(|_| rng.f64_nice() as f32));
    f4.extend([
        0.0,
        -0.0,
        0.1,
        1.0 / 3.0,
        99999.9,
        100000.0,
        999999.0,
        1e6,
        1234567.0,
        0.0001,
        0.00001,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-40,
        -8.1893e20,
        16777215.0,
        16777216.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ]);
    for chunk in f4.chunks(500) {
        let values: Vec<String> = chunk
            .iter()
            .enumerate()
            .map(|(i, v)| format!("({i}, '{v:e}'::float4)"))
            .collect();
        let sql = format!(
            "SELECT x::text, float4send(x), (x / 3::float4)::text FROM (VALUES {}) v(i, x) ORDER BY i",
            values.join(",")
        );
        let result = rows(client, &sql).await;
        assert_eq!(result.len(), chunk.len());
        for (v, row) in chunk.iter().zip(&result) {
            assert_eq!(float4_text(*v), get(row, 0), "float4 {v:e}");
            assert_eq!(
                v.to_bits().to_be_bytes().to_vec(),
                unhex(get(row, 1)),
                "{v:e}"
            );
            assert_eq!(float4_text(v / 3.0), get(row, 2), "float4 {v:e} / 3");
        }
    }
}

/// One aggregate checked against Postgres: `partials` are SQL expressions over `x` whose
/// binary encodings (via a send function) are the shard partials; `full` is the text and
/// binary of the aggregate over all rows.
struct AggCase {
    kind: AggKind,
    output_oid: u32,
    partial_oids: &'static [u32],
    partials: &'static [&'static str],
    full_text: &'static str,
    full_send: &'static str,
    column_type: &'static str,
}

async fn check_agg(client: &Client, case: &AggCase, groups: &[Vec<String>], shards: u64) {
    // Rows (group, shard, x); shards are assigned round-robin-ish.
    let mut values = Vec::new();
    for (g, xs) in groups.iter().enumerate() {
        for (j, x) in xs.iter().enumerate() {
            let shard = (j as u64 * 7 + g as u64) % shards;
            values.push(format!("({g}, {shard}, ({x})::{})", case.column_type));
        }
    }
    let values = values.join(",");
    let partial_sql = format!(
        "SELECT g, {} FROM (VALUES {values}) v(g, s, x) GROUP BY g, s ORDER BY g, s",
        case.partials.join(", ")
    );
    let full_sql = format!(
        "SELECT g, {}, {} FROM (VALUES {values}) v(g, s, x) GROUP BY g ORDER BY g",
        case.full_text, case.full_send
    );
    let partial_rows = rows(client, &partial_sql).await;
    let full_rows = rows(client, &full_sql).await;
    assert_eq!(full_rows.len(), groups.len(), "{:?}", case.kind);
    for full in &full_rows {
        let g = get(full, 0);
        let mut state = AggState::new(case.kind, case.output_oid, case.partial_oids).unwrap();
        for p in partial_rows.iter().filter(|r| get(r, 0) == g) {
            let bytes: Vec<Option<Vec<u8>>> = (1..p.len())
                .map(|i| {
                    p[i].as_deref().map(|s| {
                        // Min/Max second partial is client (text) format, not bytea.
                        if s.starts_with("\\x") {
                            unhex(s)
                        } else {
                            s.as_bytes().to_vec()
                        }
                    })
                })
                .collect();
            let refs: Vec<Option<&[u8]>> = bytes.iter().map(|b| b.as_deref()).collect();
            state.add(&refs).unwrap();
        }
        let text = state
            .finish(0)
            .unwrap()
            .map(|b| String::from_utf8(b.to_vec()).unwrap());
        assert_eq!(
            text.as_deref(),
            full[1].as_deref(),
            "{:?} group {g}",
            case.kind
        );
        if case.kind != AggKind::Min && case.kind != AggKind::Max {
            let bin = state.finish(1).unwrap().map(|b| b.to_vec());
            assert_eq!(
                bin,
                full[2].as_deref().map(unhex),
                "{:?} binary, group {g}",
                case.kind
            );
        }
    }
}

async fn aggregates(client: &Client) {
    let mut rng = Rng(0x5555_aaaa_1234_4321);
    let mut int_groups: Vec<Vec<String>> = (0..60)
        .map(|_| {
            let n = 1 + rng.below(12) as usize;
            let scale = 10u64.pow(rng.below(10) as u32);
            (0..n)
                .map(|_| {
                    let v = rng.below(scale.max(2)) as i64 - (scale / 3) as i64;
                    if rng.below(9) == 0 {
                        "NULL".to_string()
                    } else {
                        v.to_string()
                    }
                })
                .collect()
        })
        .collect();
    int_groups.push(vec!["NULL".into(), "NULL".into()]);
    int_groups.push(vec!["2147483647".into(); 5]);
    int_groups.push(vec!["-2147483648".into(), "1".into(), "2".into()]);
    let big_groups: Vec<Vec<String>> = (0..40)
        .map(|_| {
            let n = 1 + rng.below(8) as usize;
            (0..n)
                .map(|_| format!("{}", (rng.next() >> 2) as i64 - (1i64 << 61)))
                .collect()
        })
        .collect();
    let num_groups: Vec<Vec<String>> = (0..60)
        .map(|_| {
            let n = 1 + rng.below(8) as usize;
            (0..n).map(|_| format!("'{}'", rng.numeric())).collect()
        })
        .collect();
    let mut num_special = num_groups.clone();
    num_special.push(vec!["'NaN'".into(), "'1'".into()]);
    num_special.push(vec!["'Infinity'".into(), "'1.5'".into()]);
    num_special.push(vec!["'Infinity'".into(), "'-Infinity'".into()]);
    let float_groups: Vec<Vec<String>> = (0..60)
        .map(|_| {
            let n = 1 + rng.below(8) as usize;
            (0..n)
                .map(|_| format!("{}", (rng.below(100_000) as f64 - 50_000.0) / 8.0))
                .collect()
        })
        .collect();
    let bool_groups: Vec<Vec<String>> = (0..30)
        .map(|_| {
            (0..1 + rng.below(6))
                .map(|_| ["true", "false", "NULL"][rng.below(3) as usize].to_string())
                .collect()
        })
        .collect();

    let small_groups = bool_groups_to_ints(&bool_groups);
    const AVG_NUM: &[u32] = &[oid::INT8, oid::INT8, oid::NUMERIC];
    const AVG_NUMN: &[u32] = &[oid::NUMERIC, oid::INT8, oid::NUMERIC];
    const AVG_F8: &[u32] = &[oid::FLOAT8, oid::INT8, oid::FLOAT8];
    const AVG_F4: &[u32] = &[oid::FLOAT4, oid::INT8, oid::FLOAT8];
    let avg_int_partials: &[&str] = &[
        "int8send(sum(x))",
        "int8send(count(x))",
        "numeric_send(avg(x))",
    ];
    let avg_num_partials: &[&str] = &[
        "numeric_send(sum(x))",
        "int8send(count(x))",
        "numeric_send(avg(x))",
    ];
    let cases: Vec<(AggCase, &Vec<Vec<String>>)> = vec![
        (
            AggCase {
                kind: AggKind::Avg,
                output_oid: oid::NUMERIC,
                partial_oids: AVG_NUM,
                partials: avg_int_partials,
                full_text: "avg(x)::text",
                full_send: "numeric_send(avg(x))",
                column_type: "int4",
            },
            &int_groups,
        ),
        (
            AggCase {
                kind: AggKind::Avg,
                output_oid: oid::NUMERIC,
                partial_oids: AVG_NUM,
                partials: avg_int_partials,
                full_text: "avg(x)::text",
                full_send: "numeric_send(avg(x))",
                column_type: "int2",
            },
            &small_groups,
        ),
        (
            AggCase {
                kind: AggKind::Avg,
                output_oid: oid::NUMERIC,
                partial_oids: AVG_NUMN,
                partials: avg_num_partials,
                full_text: "avg(x)::text",
                full_send: "numeric_send(avg(x))",
                column_type: "int8",
            },
            &big_groups,
        ),
        (
            AggCase {
                kind: AggKind::Avg,
                output_oid: oid::NUMERIC,
                partial_oids: AVG_NUMN,
                partials: avg_num_partials,
                full_text: "avg(x)::text",
                full_send: "numeric_send(avg(x))",
                column_type: "numeric",
            },
            &num_special,
        ),
        (
            AggCase {
                kind: AggKind::Sum,
                output_oid: oid::NUMERIC,
                partial_oids: &[oid::NUMERIC],
                partials: &["numeric_send(sum(x))"],
                full_text: "sum(x)::text",
                full_send: "numeric_send(sum(x))",
                column_type: "numeric",
            },
            &num_special,
        ),
        (
            AggCase {
                kind: AggKind::Sum,
                output_oid: oid::NUMERIC,
                partial_oids: &[oid::NUMERIC],
                partials: &["numeric_send(sum(x))"],
                full_text: "sum(x)::text",
                full_send: "numeric_send(sum(x))",
                column_type: "int8",
            },
            &big_groups,
        ),
        (
            AggCase {
                kind: AggKind::Sum,
                output_oid: oid::INT8,
                partial_oids: &[oid::INT8],
                partials: &["int8send(sum(x))"],
                full_text: "sum(x)::text",
                full_send: "int8send(sum(x))",
                column_type: "int4",
            },
            &int_groups,
        ),
        (
            AggCase {
                kind: AggKind::Count,
                output_oid: oid::INT8,
                partial_oids: &[oid::INT8],
                partials: &["int8send(count(x))"],
                full_text: "count(x)::text",
                full_send: "int8send(count(x))",
                column_type: "int4",
            },
            &int_groups,
        ),
        (
            AggCase {
                kind: AggKind::Avg,
                output_oid: oid::FLOAT8,
                partial_oids: AVG_F8,
                partials: &[
                    "float8send(sum(x))",
                    "int8send(count(x))",
                    "float8send(avg(x))",
                ],
                full_text: "avg(x)::text",
                full_send: "float8send(avg(x))",
                column_type: "float8",
            },
            &float_groups,
        ),
        (
            AggCase {
                kind: AggKind::Avg,
                output_oid: oid::FLOAT8,
                partial_oids: AVG_F4,
                partials: &[
                    "float4send(sum(x))",
                    "int8send(count(x))",
                    "float8send(avg(x))",
                ],
                full_text: "avg(x)::text",
                full_send: "float8send(avg(x))",
                column_type: "float4",
            },
            &float_groups,
        ),
        (
            AggCase {
                kind: AggKind::Sum,
                output_oid: oid::FLOAT4,
                partial_oids: &[oid::FLOAT4],
                partials: &["float4send(sum(x))"],
                full_text: "sum(x)::text",
                full_send: "float4send(sum(x))",
                column_type: "float4",
            },
            &float_groups,
        ),
        (
            AggCase {
                kind: AggKind::Max,
                output_oid: oid::NUMERIC,
                partial_oids: &[oid::NUMERIC, oid::NUMERIC],
                partials: &["numeric_send(max(x))", "max(x)::text"],
                full_text: "max(x)::text",
                full_send: "numeric_send(max(x))",
                column_type: "numeric",
            },
            &num_special,
        ),
        (
            AggCase {
                kind: AggKind::Min,
                output_oid: oid::FLOAT8,
                partial_oids: &[oid::FLOAT8, oid::FLOAT8],
                partials: &["float8send(min(x))", "min(x)::text"],
                full_text: "min(x)::text",
                full_send: "float8send(min(x))",
                column_type: "float8",
            },
            &float_groups,
        ),
        (
            AggCase {
                kind: AggKind::BoolAnd,
                output_oid: oid::BOOL,
                partial_oids: &[oid::BOOL],
                partials: &["boolsend(bool_and(x))"],
                full_text: "bool_and(x)",
                full_send: "boolsend(bool_and(x))",
                column_type: "bool",
            },
            &bool_groups,
        ),
        (
            AggCase {
                kind: AggKind::BoolOr,
                output_oid: oid::BOOL,
                partial_oids: &[oid::BOOL],
                partials: &["boolsend(bool_or(x))"],
                full_text: "bool_or(x)",
                full_send: "boolsend(bool_or(x))",
                column_type: "bool",
            },
            &bool_groups,
        ),
    ];
    for (case, groups) in &cases {
        for shards in [1, 3] {
            check_agg(client, case, groups, shards).await;
        }
    }
}

/// Small ints (int2 range) derived from the bool groups' sizes, for avg(int2).
fn bool_groups_to_ints(groups: &[Vec<String>]) -> Vec<Vec<String>> {
    groups
        .iter()
        .enumerate()
        .map(|(g, xs)| {
            xs.iter()
                .enumerate()
                .map(|(j, _)| format!("{}", (g as i64 * 997 + j as i64 * 31) % 32767 - 16000))
                .collect()
        })
        .collect()
}

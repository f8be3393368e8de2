//! Seeded random SELECTs over the oracle's sample schema (issue 18): a
//! second source of entries for `cross_shard_oracle.rs`, compared the same
//! way as the corpus.
//!
//! The grammar covers projections (columns, arithmetic, casts, `coalesce`,
//! `CASE`, text and date functions), WHERE predicates (comparisons,
//! `IS NULL`, IN lists, BETWEEN, LIKE, AND/OR/NOT, shard key = constant,
//! co-located `IN` subqueries), GROUP BY with aggregates (`FILTER`,
//! `DISTINCT`, `string_agg`/`array_agg`/`json(b)_agg` with a total `ORDER BY` inside,
//! `stddev`/`variance` and their `_samp`/`_pop` forms, `percentile_cont`/
//! `percentile_disc`/`mode() WITHIN GROUP (ORDER BY ...)`, `corr`/`covar_*`/`regr_*`,
//! `bit_and`/`bit_or`/`bit_xor`,
//! expressions over aggregates), HAVING, ORDER BY, LIMIT/OFFSET, DISTINCT,
//! joins (orders with customers on the shard key, customers with the
//! countries reference table) and subqueries in FROM. Some shapes aim at
//! name resolution: ORDER BY the name Postgres derives for an output
//! column (`qty::text` is `qty`, `floor(...)` is `floor`, a CASE takes
//! its ELSE branch's name), GROUP BY a column's name that is also another
//! item's alias, and HAVING with quoted date literals.
//!
//! Every query has one answer on a single Postgres: an entry is `ordered`
//! only when its ORDER BY gives a total order (it covers a unique key of
//! the rows, or every group key), and LIMIT/OFFSET appear only then.
//! Nothing divides by a column or overflows.

use super::{Entry, Flags};

/// xorshift64* (deterministic, no crates).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A column or expression type (as far as the grammar needs it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Int2,
    Int4,
    Int8,
    Numeric,
    Float4,
    Float8,
    Text,
    Bool,
    Date,
    Ts,
}

impl Ty {
    fn is_int(self) -> bool {
        matches!(self, Ty::Int2 | Ty::Int4 | Ty::Int8)
    }

    fn is_number(self) -> bool {
        self.is_int() || matches!(self, Ty::Numeric | Ty::Float4 | Ty::Float8)
    }

    fn is_float(self) -> bool {
        matches!(self, Ty::Float4 | Ty::Float8)
    }
}

/// What literals fit a column (ranges taken from the data generator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dom {
    CustomerId,
    OrderId,
    EventId,
    Small(i64, i64),
    Big,
    Money(i64, i64),
    Float(i64, i64),
    Status,
    Name,
    Country,
    Note,
    Kind,
    Region,
    Day(i64),
    Time(i64),
    Bool,
}

/// One column of a FROM source: its SQL, type and literal domain.
#[derive(Debug, Clone)]
struct Col {
    sql: String,
    ty: Ty,
    dom: Dom,
}

/// A FROM clause with its columns, the expressions that are unique per row,
/// and the shard key column (for `key = constant`).
#[derive(Debug, Clone)]
struct Source {
    from: String,
    cols: Vec<Col>,
    unique: Vec<String>,
    key: Option<Col>,
    /// Names the source in the entry's category.
    label: &'static str,
}

type ColDef = (&'static str, Ty, Dom);

const CUSTOMERS: &[ColDef] = &[
    ("id", Ty::Int8, Dom::CustomerId),
    ("name", Ty::Text, Dom::Name),
    ("country", Ty::Text, Dom::Country),
    ("created", Ty::Ts, Dom::Time(400)),
    ("vip", Ty::Bool, Dom::Bool),
    ("score", Ty::Int2, Dom::Small(-100, 100)),
    ("tier", Ty::Int4, Dom::Small(0, 4)),
    ("credit", Ty::Numeric, Dom::Money(-5000, 15000)),
];

const ORDERS: &[ColDef] = &[
    ("id", Ty::Int8, Dom::OrderId),
    ("customer_id", Ty::Int8, Dom::CustomerId),
    ("amount", Ty::Numeric, Dom::Money(-500, 1500)),
    ("qty", Ty::Int4, Dom::Small(-10, 30)),
    ("big", Ty::Int8, Dom::Big),
    ("weight", Ty::Float8, Dom::Float(0, 14300)),
    ("ratio", Ty::Float4, Dom::Float(-25, 25)),
    ("status", Ty::Text, Dom::Status),
    ("placed", Ty::Date, Dom::Day(500)),
    ("note", Ty::Text, Dom::Note),
    ("small", Ty::Int2, Dom::Small(-1000, 1000)),
    ("price", Ty::Numeric, Dom::Money(-20000, 80000)),
    ("paid", Ty::Bool, Dom::Bool),
];

const EVENTS: &[ColDef] = &[
    ("id", Ty::Int8, Dom::EventId),
    ("kind", Ty::Text, Dom::Kind),
    ("value", Ty::Int8, Dom::Small(-1_000_000, 1_000_000)),
    ("ok", Ty::Bool, Dom::Bool),
    ("at", Ty::Ts, Dom::Time(90)),
];

const EMPTY: &[ColDef] = &[
    ("k", Ty::Int8, Dom::CustomerId),
    ("v", Ty::Int4, Dom::Small(-10, 10)),
    ("n", Ty::Numeric, Dom::Money(-10, 10)),
    ("f", Ty::Float8, Dom::Float(-10, 10)),
    ("t", Ty::Text, Dom::Status),
    ("b", Ty::Bool, Dom::Bool),
    ("d", Ty::Date, Dom::Day(100)),
];

const COUNTRIES: &[ColDef] = &[
    ("code", Ty::Text, Dom::Country),
    ("name", Ty::Text, Dom::Name),
    ("region", Ty::Text, Dom::Region),
];

fn cols(alias: Option<&str>, defs: &[ColDef]) -> Vec<Col> {
    defs.iter()
        .map(|(n, ty, dom)| Col {
            sql: match alias {
                Some(a) => format!("{a}.{n}"),
                None => (*n).to_owned(),
            },
            ty: *ty,
            dom: *dom,
        })
        .collect()
}

fn col(cols: &[Col], sql: &str) -> Col {
    cols.iter()
        .find(|c| c.sql == sql)
        .cloned()
        .unwrap_or_else(|| panic!("no column {sql}"))
}

/// A single sharded table, qualified or not.
fn single(rng: &mut Rng) -> Source {
    let (table, alias, defs, key, label): (&str, &str, &[ColDef], &str, &str) = match rng.below(10)
    {
        0..=4 => ("orders", "o", ORDERS, "customer_id", "orders"),
        5..=7 => ("customers", "c", CUSTOMERS, "id", "customers"),
        8 => ("events", "e", EVENTS, "id", "events"),
        _ if rng.chance(30) => ("empty_t", "t", EMPTY, "k", "empty"),
        _ => ("events", "e", EVENTS, "id", "events"),
    };
    let qualified = rng.chance(50);
    let q = qualified.then_some(alias);
    let cs = cols(q, defs);
    let unique_col = if table == "empty_t" { "k" } else { "id" };
    let name = |c: &str| match q {
        Some(a) => format!("{a}.{c}"),
        None => c.to_owned(),
    };
    Source {
        from: if qualified {
            format!("{table} {alias}")
        } else {
            table.to_owned()
        },
        unique: vec![name(unique_col)],
        key: Some(col(&cs, &name(key))),
        cols: cs,
        label,
    }
}

/// A FROM source: one table, a co-located or reference join, or a
/// subquery in FROM.
fn source(rng: &mut Rng) -> Source {
    match rng.below(20) {
        0..=9 => single(rng),
        10..=12 => {
            let left = rng.chance(30);
            let mut cs = cols(Some("o"), ORDERS);
            cs.extend(cols(Some("c"), CUSTOMERS));
            let (from, unique) = if left && rng.chance(50) {
                (
                    "customers c LEFT JOIN orders o ON o.customer_id = c.id",
                    vec!["c.id".to_owned(), "o.id".to_owned()],
                )
            } else if left {
                (
                    "orders o LEFT JOIN customers c ON c.id = o.customer_id",
                    vec!["o.id".to_owned()],
                )
            } else {
                (
                    "orders o JOIN customers c ON o.customer_id = c.id",
                    vec!["o.id".to_owned()],
                )
            };
            Source {
                from: from.to_owned(),
                key: Some(col(&cs, "c.id")),
                cols: cs,
                unique,
                label: "join-orders-customers",
            }
        }
        13..=14 => {
            let mut cs = cols(Some("c"), CUSTOMERS);
            cs.extend(cols(Some("k"), COUNTRIES));
            let join = if rng.chance(40) { "LEFT JOIN" } else { "JOIN" };
            Source {
                from: format!("customers c {join} countries k ON k.code = c.country"),
                key: Some(col(&cs, "c.id")),
                cols: cs,
                unique: vec!["c.id".to_owned()],
                label: "join-countries",
            }
        }
        15 => {
            let mut cs = cols(Some("o"), ORDERS);
            cs.extend(cols(Some("c"), CUSTOMERS));
            cs.extend(cols(Some("k"), COUNTRIES));
            Source {
                from: "orders o JOIN customers c ON c.id = o.customer_id JOIN countries k ON k.code = c.country".to_owned(),
                key: Some(col(&cs, "o.customer_id")),
                cols: cs,
                unique: vec!["o.id".to_owned()],
                label: "join-three",
            }
        }
        16..=17 => {
            // A filtered projection of one table.
            let inner = single(rng);
            let bare: Vec<Col> = inner
                .cols
                .iter()
                .map(|c| Col {
                    sql: c.sql.rsplit('.').next().unwrap_or(&c.sql).to_owned(),
                    ..c.clone()
                })
                .collect();
            let unique = inner.unique[0]
                .rsplit('.')
                .next()
                .unwrap_or("id")
                .to_owned();
            let keyname = inner
                .key
                .as_ref()
                .map(|k| k.sql.rsplit('.').next().unwrap_or("id").to_owned())
                .unwrap_or_default();
            let mut chosen: Vec<Col> = bare
                .iter()
                .filter(|c| c.sql == unique || c.sql == keyname || rng.chance(50))
                .cloned()
                .collect();
            chosen.dedup_by(|a, b| a.sql == b.sql);
            let list: Vec<&str> = chosen.iter().map(|c| c.sql.as_str()).collect();
            let wh = if rng.chance(60) {
                format!(" WHERE {}", predicate(rng, &inner, 1))
            } else {
                String::new()
            };
            let outer: Vec<Col> = chosen
                .iter()
                .map(|c| Col {
                    sql: format!("s.{}", c.sql),
                    ..c.clone()
                })
                .collect();
            Source {
                from: format!("(SELECT {} FROM {}{wh}) s", list.join(", "), inner.from),
                key: outer
                    .iter()
                    .find(|c| c.sql == format!("s.{keyname}"))
                    .cloned(),
                unique: vec![format!("s.{unique}")],
                cols: outer,
                label: "subquery",
            }
        }
        _ => {
            // Grouped per customer: pushed down whole (the key is the group).
            let by_key = rng.chance(85);
            let group = if by_key { "customer_id" } else { "status" };
            let (gty, gdom) = if by_key {
                (Ty::Int8, Dom::CustomerId)
            } else {
                (Ty::Text, Dom::Status)
            };
            let wh = if rng.chance(50) {
                let inner = Source {
                    from: String::new(),
                    cols: cols(None, ORDERS),
                    unique: vec!["id".into()],
                    key: None,
                    label: "",
                };
                format!(" WHERE {}", predicate(rng, &inner, 1))
            } else {
                String::new()
            };
            let cs = vec![
                Col {
                    sql: format!("s.{group}"),
                    ty: gty,
                    dom: gdom,
                },
                Col {
                    sql: "s.n".into(),
                    ty: Ty::Int8,
                    dom: Dom::Small(0, 15),
                },
                Col {
                    sql: "s.sq".into(),
                    ty: Ty::Int8,
                    dom: Dom::Small(-50, 200),
                },
                Col {
                    sql: "s.sa".into(),
                    ty: Ty::Numeric,
                    dom: Dom::Money(-3000, 8000),
                },
                Col {
                    sql: "s.ms".into(),
                    ty: Ty::Text,
                    dom: Dom::Status,
                },
                Col {
                    sql: "s.fp".into(),
                    ty: Ty::Date,
                    dom: Dom::Day(500),
                },
            ];
            Source {
                from: format!(
                    "(SELECT {group}, count(*) AS n, sum(qty) AS sq, sum(amount) AS sa, max(status) AS ms, min(placed) AS fp FROM orders{wh} GROUP BY {group}) s"
                ),
                key: by_key.then(|| cs[0].clone()),
                unique: vec![format!("s.{group}")],
                cols: cs,
                label: "subquery-grouped",
            }
        }
    }
}

// ---------------------------------------------------------------- literals

fn day(d: i64) -> String {
    // 2023-01-01 plus d days, via the server's date arithmetic.
    format!("date '2023-01-01' + {d}")
}

/// A literal of the column's domain (typed where Postgres needs it).
fn literal(rng: &mut Rng, dom: Dom) -> String {
    let pick = |rng: &mut Rng, xs: &[&str]| format!("'{}'", rng.pick(xs));
    match dom {
        Dom::CustomerId => match rng.below(10) {
            0 => rng.range(-20, -1).to_string(),
            1 => rng.range(9000, 9019).to_string(),
            _ => rng.range(1, 500).to_string(),
        },
        Dom::OrderId => rng.range(1, 3000).to_string(),
        Dom::EventId => {
            if rng.chance(10) {
                rng.range(-1200, -1151).to_string()
            } else {
                (3 * rng.range(1, 1150)).to_string()
            }
        }
        Dom::Small(lo, hi) => rng.range(lo, hi).to_string(),
        Dom::Big => {
            if rng.chance(10) {
                "8999999999999997000".to_owned()
            } else {
                (rng.range(-1_000_000, 3_000_000) * 1_000_000_000).to_string()
            }
        }
        Dom::Money(lo, hi) => {
            let v = rng.range(lo, hi);
            match rng.below(3) {
                0 => v.to_string(),
                1 => format!("{v}.5"),
                _ => format!("{v}.25"),
            }
        }
        Dom::Float(lo, hi) => {
            let v = rng.range(lo, hi);
            if rng.chance(50) {
                format!("{v}.125")
            } else {
                v.to_string()
            }
        }
        Dom::Status => pick(
            rng,
            &[
                "new",
                "paid",
                "shipped",
                "cancelled",
                "returned",
                "Paid",
                "p",
            ],
        ),
        Dom::Name => pick(
            rng,
            &[
                "cust-07", "cust-3", "cust-42", "O''Brien", "zoe", "Zoe", "anna", "Anna ",
                "Élodie", "France", "Japan",
            ],
        ),
        Dom::Country => pick(rng, &["fr", "jp", "br", "us", "de", "xx", "FR", "cn"]),
        Dom::Note => pick(rng, &["note-1", "note-25", "note-7", "", "note-49"]),
        Dom::Kind => pick(rng, &["click", "view", "buy", "Share", "view ", "z"]),
        Dom::Region => pick(rng, &["eu", "asia", "americas"]),
        Dom::Day(n) => day(rng.range(0, n)),
        Dom::Time(n) => format!(
            "timestamp '2023-01-01' + interval '{} hours'",
            rng.range(0, n * 24)
        ),
        Dom::Bool => if rng.chance(50) { "true" } else { "false" }.to_owned(),
    }
}

fn like_pattern(rng: &mut Rng, dom: Dom) -> String {
    let p: &[&str] = match dom {
        Dom::Name => &["cust-1%", "cust-_", "%e", "Z%", "%'%", "a%"],
        Dom::Note => &["note-1%", "note-_", "%5", ""],
        Dom::Kind => &["v%", "% ", "%i%", "S%"],
        Dom::Status => &["%ed", "p%", "P%", "%a%"],
        _ => &["%", "f%", "%r", "_s"],
    };
    format!("'{}'", rng.pick(p).replace('\'', "''"))
}

// ---------------------------------------------------------------- scalar expressions

/// A typed expression with the domain of the literals that fit it.
#[derive(Debug, Clone)]
struct Scalar {
    sql: String,
    ty: Ty,
    dom: Dom,
}

fn pick_col<'a>(rng: &mut Rng, src: &'a Source, want: impl Fn(&Col) -> bool) -> Option<&'a Col> {
    let cands: Vec<&Col> = src.cols.iter().filter(|c| want(c)).collect();
    (!cands.is_empty()).then(|| *rng.pick(&cands))
}

fn plain(c: &Col) -> Scalar {
    Scalar {
        sql: c.sql.clone(),
        ty: c.ty,
        dom: c.dom,
    }
}

/// A projection expression: a column, or arithmetic, a cast, `coalesce`,
/// `CASE`, a text or date function over one.
fn scalar(rng: &mut Rng, src: &Source, depth: usize) -> Scalar {
    let c = rng.pick(&src.cols).clone();
    if depth == 0 || rng.chance(45) {
        return plain(&c);
    }
    let s = &c.sql;
    let out = |sql: String, ty: Ty, dom: Dom| Scalar { sql, ty, dom };
    match (c.ty, rng.below(6)) {
        (Ty::Int2 | Ty::Int4, 0) => out(
            format!("{s} + {}", rng.range(-5, 5)),
            Ty::Int4,
            Dom::Small(-1000, 1000),
        ),
        (Ty::Int2 | Ty::Int4, 1) => out(
            format!("{s} * {}", rng.range(-3, 3)),
            Ty::Int4,
            Dom::Small(-100, 100),
        ),
        (Ty::Int2 | Ty::Int4 | Ty::Int8, 2) => out(
            format!("{s} % {}", rng.range(2, 7)),
            c.ty,
            Dom::Small(-6, 6),
        ),
        (Ty::Int2 | Ty::Int4 | Ty::Int8, 3) => out(
            format!("{s} / {}", rng.range(2, 1000)),
            c.ty,
            Dom::Small(-100, 100),
        ),
        (Ty::Int2 | Ty::Int4 | Ty::Int8, 4) => out(format!("{s}::numeric / 7"), Ty::Numeric, c.dom),
        (Ty::Int2 | Ty::Int4 | Ty::Int8, _) => {
            let f = rng.pick::<&'static str>(&["coalesce", "greatest", "least", "nullif"]);
            out(format!("{f}({s}, {})", literal(rng, c.dom)), c.ty, c.dom)
        }
        (Ty::Numeric, 0) => out(
            format!("round({s}, {})", rng.range(0, 2)),
            Ty::Numeric,
            c.dom,
        ),
        (Ty::Numeric, 1) => out(format!("{s}::int4"), Ty::Int4, Dom::Small(-500, 1500)),
        (Ty::Numeric, 2) => out(format!("{s} * 3 - 1.5"), Ty::Numeric, c.dom),
        (Ty::Numeric, 3) => out(format!("abs({s})"), Ty::Numeric, c.dom),
        (Ty::Numeric, 4) => out(format!("{s}::float8"), Ty::Float8, Dom::Float(-500, 1500)),
        (Ty::Float4 | Ty::Float8, 0) => out(format!("floor({s})"), Ty::Float8, c.dom),
        (Ty::Float4 | Ty::Float8, 1) => out(format!("{s} * 2"), c.ty, c.dom),
        (Ty::Float4 | Ty::Float8, 2) => out(
            format!("round({s}::numeric, 2)"),
            Ty::Numeric,
            Dom::Money(-25, 14000),
        ),
        (Ty::Text, 0) => out(format!("upper({s})"), Ty::Text, c.dom),
        (Ty::Text, 1) => out(format!("lower({s})"), Ty::Text, c.dom),
        (Ty::Text, 2) => out(format!("length({s})"), Ty::Int4, Dom::Small(0, 12)),
        (Ty::Text, 3) => out(format!("substr({s}, 1, 3)"), Ty::Text, c.dom),
        (Ty::Text, 4) => out(format!("{s} || '-x'"), Ty::Text, c.dom),
        (Ty::Bool, 0 | 1) => out(format!("NOT {s}"), Ty::Bool, Dom::Bool),
        (Ty::Bool, 2) => out(format!("{s} IS TRUE"), Ty::Bool, Dom::Bool),
        (Ty::Date, 0) => out(format!("{s} + {}", rng.range(0, 30)), Ty::Date, c.dom),
        (Ty::Date, 1) => out(
            format!("{s} - date '2023-01-01'"),
            Ty::Int4,
            Dom::Small(0, 500),
        ),
        (Ty::Date, 2) => out(
            format!("extract(month FROM {s})"),
            Ty::Numeric,
            Dom::Small(1, 12),
        ),
        (Ty::Ts, 0) => out(format!("{s}::date"), Ty::Date, Dom::Day(400)),
        (Ty::Ts, 1) => out(format!("date_trunc('month', {s})"), Ty::Ts, c.dom),
        (Ty::Ts, 2) => out(
            format!("extract(hour FROM {s})"),
            Ty::Numeric,
            Dom::Small(0, 23),
        ),
        (_, 5) => {
            // CASE with a same-typed ELSE branch.
            let p = predicate(rng, src, 0);
            let other = pick_col(rng, src, |o| o.ty == c.ty)
                .map(|o| o.sql.clone())
                .unwrap_or_else(|| "NULL".into());
            out(
                format!("CASE WHEN {p} THEN {s} ELSE {other} END"),
                c.ty,
                c.dom,
            )
        }
        (_, 4) => out(format!("{s}::text"), Ty::Text, Dom::Note),
        _ => out(
            format!("coalesce({s}, {})", literal(rng, c.dom)),
            c.ty,
            c.dom,
        ),
    }
}

// ---------------------------------------------------------------- predicates

fn cmp_op(rng: &mut Rng) -> &'static str {
    rng.pick::<&'static str>(&["=", "<>", "<", "<=", ">", ">="])
}

/// A WHERE predicate over the source's columns.
fn predicate(rng: &mut Rng, src: &Source, depth: usize) -> String {
    if depth > 0 && rng.chance(35) {
        let a = predicate(rng, src, depth - 1);
        let b = predicate(rng, src, depth - 1);
        return match rng.below(3) {
            0 => format!("({a} AND {b})"),
            1 => format!("({a} OR {b})"),
            _ => format!("NOT ({a} AND {b})"),
        };
    }
    if let Some(k) = src.key.as_ref().filter(|_| rng.chance(12)) {
        // The shard key: one shard, or an IN list over several; sometimes
        // written as a numeric (5.0 = 5 for the server).
        let key = |rng: &mut Rng| {
            let v = literal(rng, k.dom);
            if rng.chance(10) {
                format!("{v}.0")
            } else {
                v
            }
        };
        return if rng.chance(60) {
            format!("{} = {}", k.sql, key(rng))
        } else {
            let n = rng.range(2, 6);
            let v: Vec<String> = (0..n).map(|_| key(rng)).collect();
            format!("{} IN ({})", k.sql, v.join(", "))
        };
    }
    let e = if rng.chance(80) {
        plain(rng.pick(&src.cols))
    } else {
        scalar(rng, src, 1)
    };
    let s = &e.sql;
    match rng.below(10) {
        0 => format!("{s} IS {}NULL", if rng.chance(50) { "NOT " } else { "" }),
        1 => {
            let n = rng.range(1, 4);
            let v: Vec<String> = (0..n).map(|_| literal(rng, e.dom)).collect();
            let not = if rng.chance(25) { "NOT " } else { "" };
            format!("{s} {not}IN ({})", v.join(", "))
        }
        2 if e.ty != Ty::Bool => {
            let (a, b) = (literal(rng, e.dom), literal(rng, e.dom));
            format!("{s} BETWEEN {a} AND {b}")
        }
        3 if e.ty == Ty::Text => {
            let not = if rng.chance(25) { "NOT " } else { "" };
            format!("{s} {not}LIKE {}", like_pattern(rng, e.dom))
        }
        4 if e.ty == Ty::Bool => {
            if rng.chance(50) {
                s.clone()
            } else {
                format!("NOT {s}")
            }
        }
        5 => match pick_col(rng, src, |c| c.ty == e.ty && c.sql != *s) {
            Some(o) => format!("{s} {} {}", cmp_op(rng), o.sql),
            None => format!("{s} {} {}", cmp_op(rng), literal(rng, e.dom)),
        },
        6 if src.from == "orders o" && rng.chance(50) => {
            format!(
                "o.customer_id IN (SELECT id FROM customers WHERE {})",
                predicate(rng, &single_customers(), 0)
            )
        }
        6 if src.from == "orders o" => {
            let not = if rng.chance(30) { "NOT " } else { "" };
            format!(
                "{not}EXISTS (SELECT 1 FROM customers c2 WHERE c2.id = o.customer_id AND {})",
                predicate(rng, &single_customers(), 0)
            )
        }
        7 if src.cols.iter().any(|c| c.sql == "c.country") && rng.chance(50) => format!(
            "c.country IN (SELECT code FROM countries WHERE region = {})",
            literal(rng, Dom::Region)
        ),
        _ => format!("{s} {} {}", cmp_op(rng), literal(rng, e.dom)),
    }
}

fn single_customers() -> Source {
    Source {
        from: "customers".into(),
        cols: cols(None, CUSTOMERS),
        unique: vec!["id".into()],
        key: None,
        label: "",
    }
}

fn where_clause(rng: &mut Rng, src: &Source) -> String {
    if rng.chance(65) {
        format!(" WHERE {}", predicate(rng, src, 2))
    } else {
        String::new()
    }
}

// ---------------------------------------------------------------- aggregates

/// An aggregate expression; `sortable` when it is exact (no float sum or
/// average) so that ordering by it or comparing it is deterministic.
struct Agg {
    sql: String,
    sortable: bool,
    ty: Ty,
    dom: Dom,
}

fn aggregate(rng: &mut Rng, src: &Source) -> Agg {
    let filter = |rng: &mut Rng| {
        if rng.chance(12) {
            format!(" FILTER (WHERE {})", predicate(rng, src, 0))
        } else {
            String::new()
        }
    };
    let roll = rng.below(100);
    if roll < 12 {
        let f = filter(rng);
        return Agg {
            sql: format!("count(*){f}"),
            sortable: true,
            ty: Ty::Int8,
            dom: Dom::Small(0, 300),
        };
    }
    let e = scalar(rng, src, 1);
    let s = e.sql.clone();
    let f = filter(rng);
    let agg = |sql: String, sortable: bool, ty: Ty, dom: Dom| Agg {
        sql,
        sortable,
        ty,
        dom,
    };
    match roll {
        12..=21 => agg(format!("count({s}){f}"), true, Ty::Int8, Dom::Small(0, 300)),
        22..=26 => agg(
            format!("count(DISTINCT {s}){f}"),
            true,
            Ty::Int8,
            Dom::Small(0, 50),
        ),
        27..=52 if e.ty.is_number() => {
            let name = if roll <= 42 { "sum" } else { "avg" };
            let ty = if e.ty.is_float() {
                Ty::Float8
            } else {
                Ty::Numeric
            };
            agg(format!("{name}({s}){f}"), !e.ty.is_float(), ty, e.dom)
        }
        53..=76 if e.ty != Ty::Bool => {
            let m = if rng.chance(50) { "min" } else { "max" };
            // Rounded for the same reason as numeric group keys.
            let s = if e.ty == Ty::Numeric {
                format!("round({s}, 2)")
            } else {
                s
            };
            let d = if rng.chance(15) { "DISTINCT " } else { "" };
            agg(format!("{m}({d}{s}){f}"), true, e.ty, e.dom)
        }
        _ if e.ty == Ty::Bool => {
            let m = rng.pick(&["bool_and", "bool_or", "every"]);
            agg(format!("{m}({s}){f}"), true, Ty::Bool, Dom::Bool)
        }
        77..=81 => {
            let order = src.unique.join(", ");
            if rng.chance(50) {
                agg(
                    format!("string_agg(({s})::text, ',' ORDER BY {order}){f}"),
                    true,
                    Ty::Text,
                    Dom::Note,
                )
            } else if rng.chance(70) {
                agg(
                    format!("array_agg({s} ORDER BY {order}){f}"),
                    true,
                    Ty::Text,
                    Dom::Note,
                )
            } else {
                let j = rng.pick(&["json_agg", "jsonb_agg"]);
                agg(
                    format!("{j}({s} ORDER BY {order}){f}"),
                    false,
                    Ty::Text,
                    Dom::Note,
                )
            }
        }
        82..=89 if (e.ty.is_int() || e.ty == Ty::Numeric) && e.dom != Dom::Big => {
            // An expression over aggregates.
            match rng.below(5) {
                0 => agg(format!("sum({s}) * 2"), true, Ty::Numeric, e.dom),
                1 if e.ty.is_int() => agg(format!("max({s}) - min({s})"), true, Ty::Numeric, e.dom),
                2 => agg(format!("round(avg({s}), 2)"), true, Ty::Numeric, e.dom),
                3 => agg(format!("coalesce(sum({s}), 0)"), true, Ty::Numeric, e.dom),
                _ => agg(
                    format!("sum({s}) / nullif(count(*), 0)"),
                    true,
                    Ty::Numeric,
                    e.dom,
                ),
            }
        }
        90..=92 => agg(
            "CASE WHEN count(*) > 3 THEN 'many' ELSE 'few' END".to_owned(),
            true,
            Ty::Text,
            Dom::Note,
        ),
        93 if e.ty.is_int() => agg(format!("sum(DISTINCT {s})"), true, Ty::Numeric, e.dom),
        94 if e.ty.is_number() => {
            let name = rng.pick(&[
                "stddev",
                "variance",
                "stddev_pop",
                "var_pop",
                "stddev_samp",
                "var_samp",
            ]);
            let ty = if e.ty.is_float() {
                Ty::Float8
            } else {
                Ty::Numeric
            };
            agg(format!("{name}({s}){f}"), false, ty, e.dom)
        }
        95 if e.ty.is_number() => {
            let p = rng.pick(&["0", "0.25", "0.5", "0.9", "1"]);
            let d = rng.pick(&["", " DESC"]);
            agg(
                format!("percentile_cont({p}) WITHIN GROUP (ORDER BY {s}{d}){f}"),
                false,
                Ty::Float8,
                e.dom,
            )
        }
        96 => {
            // Rounded for the same reason as numeric group keys.
            let s = if e.ty == Ty::Numeric {
                format!("round({s}, 2)")
            } else {
                s
            };
            let d = rng.pick(&["", " DESC"]);
            let call = if rng.chance(50) {
                "mode()".to_owned()
            } else {
                format!(
                    "percentile_disc({})",
                    rng.pick(&["0", "0.3", "0.5", "0.75", "1"])
                )
            };
            agg(
                format!("{call} WITHIN GROUP (ORDER BY {s}{d}){f}"),
                true,
                e.ty,
                e.dom,
            )
        }
        97 if e.ty.is_number() => {
            let x = scalar(rng, src, 1);
            let x = if x.ty.is_number() { x.sql } else { s.clone() };
            let name = rng.pick(&[
                "corr",
                "covar_pop",
                "covar_samp",
                "regr_count",
                "regr_sxx",
                "regr_syy",
                "regr_sxy",
                "regr_avgx",
                "regr_avgy",
                "regr_slope",
                "regr_intercept",
                "regr_r2",
            ]);
            let ty = if *name == "regr_count" {
                Ty::Int8
            } else {
                Ty::Float8
            };
            agg(format!("{name}({s}, {x}){f}"), false, ty, e.dom)
        }
        98 if e.ty.is_int() => {
            let name = rng.pick(&["bit_and", "bit_or", "bit_xor"]);
            agg(format!("{name}({s}){f}"), true, e.ty, e.dom)
        }
        _ => agg(format!("count({s})"), true, Ty::Int8, Dom::Small(0, 300)),
    }
}

/// A HAVING condition over aggregates (exact ones only).
fn having(rng: &mut Rng, src: &Source) -> String {
    let one = |rng: &mut Rng| loop {
        let a = aggregate(rng, src);
        if !a.sortable || matches!(a.dom, Dom::Note) {
            continue;
        }
        let quoted = rng.chance(40);
        break match a.ty {
            Ty::Bool => a.sql,
            Ty::Int8 if a.sql.starts_with("count") && quoted => {
                format!("{} {} '{}'", a.sql, cmp_op(rng), rng.range(0, 20))
            }
            Ty::Int8 if a.sql.starts_with("count") => {
                format!("{} {} {}", a.sql, cmp_op(rng), rng.range(0, 20))
            }
            // A quoted literal takes the aggregate's type in Postgres.
            Ty::Date | Ty::Ts if quoted => format!(
                "{} {} '{}'",
                a.sql,
                cmp_op(rng),
                rng.pick(&["2023-02-01", "2023-06-15 12:00", "2024-01-01", "2023-01-02"])
            ),
            _ => format!("{} {} {}", a.sql, cmp_op(rng), literal(rng, a.dom)),
        };
    };
    let a = one(rng);
    match rng.below(6) {
        0 => format!("{a} AND {}", one(rng)),
        1 => format!("{a} OR {}", one(rng)),
        2 => format!("NOT ({a})"),
        _ => a,
    }
}

// ---------------------------------------------------------------- statements

fn direction(rng: &mut Rng) -> &'static str {
    rng.pick::<&'static str>(&[
        "",
        "",
        " DESC",
        " ASC",
        " NULLS FIRST",
        " DESC NULLS LAST",
        " DESC NULLS FIRST",
        " NULLS LAST",
    ])
}

fn limit(rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => format!(" LIMIT {}", rng.range(0, 30)),
        1 => format!(" LIMIT {} OFFSET {}", rng.range(1, 20), rng.range(0, 40)),
        2 => format!(" OFFSET {}", rng.range(0, 3000)),
        _ => format!(
            " OFFSET {} ROWS FETCH FIRST {} ROWS ONLY",
            rng.range(0, 10),
            rng.range(1, 10)
        ),
    }
}

/// The select list with optional aliases; returns (items, text).
fn select_list(rng: &mut Rng, items: &[String]) -> (Vec<String>, String) {
    let mut names = Vec::new();
    let mut text = Vec::new();
    for (i, it) in items.iter().enumerate() {
        if rng.chance(30) {
            names.push(format!("c{i}"));
            text.push(format!("{it} AS c{i}"));
        } else {
            names.push(it.clone());
            text.push(it.clone());
        }
    }
    (names, text.join(", "))
}

/// The output name Postgres gives an unaliased item, when it is a column's
/// (`qty`, `o.qty`, `qty::text`), a function call's (FILTER included) or
/// a CASE's (its ELSE branch's name, else `case`); `None`: "?column?" or
/// not derived here.
fn pg_name(sql: &str) -> Option<String> {
    let word = |w: &str| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    let (head, cast) = sql.split_once("::").unwrap_or((sql, "text"));
    if word(cast) && head.split('.').all(word) {
        return head.rsplit('.').next().map(str::to_owned);
    }
    if let Some(body) = sql
        .strip_prefix("CASE ")
        .and_then(|b| b.strip_suffix(" END"))
    {
        // The ELSE branch's name if it has one.
        let named = body.rsplit_once(" ELSE ").and_then(|(_, e)| pg_name(e));
        return named.or_else(|| Some("case".to_owned()));
    }
    let open = sql.find('(')?;
    let mut depth = 0;
    for (i, c) in sql.char_indices().skip(open) {
        depth += match c {
            '(' => 1,
            ')' => -1,
            _ => 0,
        };
        if depth == 0 {
            let f = &sql[..open];
            let whole = i == sql.len() - 1 || sql[i + 1..].starts_with(" FILTER (");
            return (whole && word(f)).then(|| f.to_owned());
        }
    }
    None
}

/// ORDER BY `key` where a bare column name would mean another output
/// column (Postgres matches output names first, and two different ones
/// are an error): qualified by the table then.
fn unshadow(key: String, names: &[String], items: &[String], from: &str) -> String {
    let bare = key.chars().all(|c| c.is_ascii_lowercase() || c == '_');
    let shadowed = names
        .iter()
        .zip(items)
        .any(|(n, it)| n == it && *it != key && pg_name(it).as_ref() == Some(&key));
    if bare && shadowed {
        format!("{from}.{key}")
    } else {
        key
    }
}

/// An ORDER BY reference to select item `i`: its alias, position or text,
/// or the output name Postgres derives for it (when no other item has it).
fn order_ref(rng: &mut Rng, i: usize, names: &[String], items: &[String], from: &str) -> String {
    let derived = pg_name(&items[i]).filter(|n| {
        names[i] == items[i]
            && names
                .iter()
                .zip(items)
                .all(|(m, it)| it == &items[i] || pg_name(m).as_ref() != Some(n))
    });
    match (rng.below(4), derived) {
        (0, _) => (i + 1).to_string(),
        (3, Some(n)) if n == "case" => "\"case\"".to_owned(),
        (3, Some(n)) => n,
        (1, _) => unshadow(names[i].clone(), names, items, from),
        _ => unshadow(items[i].clone(), names, items, from),
    }
}

/// SELECT expressions FROM ... WHERE ... [ORDER BY ... [LIMIT]].
fn plain_select(rng: &mut Rng, src: &Source) -> (String, bool) {
    let star = src.label != "subquery" && rng.chance(8);
    let n = rng.range(1, 5) as usize;
    let items: Vec<String> = (0..n).map(|_| scalar(rng, src, 2).sql).collect();
    let (names, list) = select_list(rng, &items);
    let list = if star { "*".to_owned() } else { list };
    let mut sql = format!("SELECT {list} FROM {}{}", src.from, where_clause(rng, src));
    if rng.chance(35) {
        return (sql, false);
    }
    // Column names ORDER BY could mean output columns by.
    let (shown, shown_items): (&[String], &[String]) =
        if star { (&[], &[]) } else { (&names, &items) };
    let mut keys = Vec::new();
    for _ in 0..rng.below(3) {
        keys.push(if !star && rng.chance(60) {
            let i = rng.below(items.len());
            order_ref(rng, i, &names, &items, &src.from)
        } else {
            unshadow(scalar(rng, src, 1).sql, shown, shown_items, &src.from)
        });
    }
    let total = keys.is_empty() || rng.chance(80);
    if total {
        for u in &src.unique {
            keys.push(unshadow(u.clone(), shown, shown_items, &src.from));
        }
    }
    let dirs: Vec<String> = keys
        .into_iter()
        .map(|k| format!("{k}{}", direction(rng)))
        .collect();
    sql.push_str(&format!(" ORDER BY {}", dirs.join(", ")));
    if total && rng.chance(50) {
        sql.push_str(&limit(rng));
    }
    (sql, total)
}

/// A group key: a column or expression, often of few values. numeric keys
/// are rounded: equal values of different scales (`5`, `5.0`) are one
/// group whose shown value is whichever row came first, even on one server.
fn group_key(rng: &mut Rng, src: &Source) -> String {
    let e = scalar(rng, src, 1);
    let few = rng.chance(60);
    match e.ty {
        Ty::Numeric if few => format!("round({}, -1)", e.sql),
        Ty::Numeric => format!("round({}, 1)", e.sql),
        Ty::Int8 if few => format!("({}) % 5", e.sql),
        Ty::Ts if few => format!("date_trunc('month', {})", e.sql),
        Ty::Float4 | Ty::Float8 if few => format!("floor({} / 1000)", e.sql),
        _ => e.sql,
    }
}

/// SELECT keys, aggregates FROM ... GROUP BY keys [HAVING] [ORDER BY [LIMIT]].
fn grouped_select(rng: &mut Rng, src: &Source) -> (String, bool) {
    let nkeys = rng.range(0, 3) as usize;
    let mut keys: Vec<String> = Vec::new();
    for _ in 0..nkeys {
        let k = group_key(rng, src);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let naggs = rng.range(1, 4) as usize;
    let aggs: Vec<Agg> = (0..naggs).map(|_| aggregate(rng, src)).collect();
    let mut items: Vec<String> = keys.iter().filter(|_| rng.chance(85)).cloned().collect();
    items.extend(aggs.iter().map(|a| a.sql.clone()));
    // Shuffle keys among aggregates a little.
    if rng.chance(30) && items.len() > 1 {
        let last = items.len() - 1;
        items.swap(0, last);
    }
    let (names, mut list) = select_list(rng, &items);
    let mut refs: Vec<String> = keys
        .iter()
        .map(|k| match items.iter().position(|i| i == k) {
            Some(i) if rng.chance(40) => (i + 1).to_string(),
            _ => k.clone(),
        })
        .collect();
    // An item aliased with a column's name, grouped by that name: Postgres
    // groups by the column (the input column wins in GROUP BY).
    let shadow = src.from.split(' ').count() <= 2 && rng.chance(15);
    if shadow {
        let c = rng.pick(&src.cols).clone();
        let name = c.sql.rsplit('.').next().unwrap_or(&c.sql).to_owned();
        let e = match rng.below(5) {
            0 => format!("{}::text", c.sql),
            1 => format!("{} IS NULL", c.sql),
            2 => format!("coalesce({}, {})", c.sql, literal(rng, c.dom)),
            3 => {
                // Another column under this name (refused: ambiguous to the proxy).
                let o = rng.pick(&src.cols).clone();
                refs.push(o.sql.clone());
                o.sql
            }
            _ => c.sql.clone(),
        };
        list.push_str(&format!(", {e} AS {name}"));
        refs.push(name);
    }
    let mut sql = format!("SELECT {list} FROM {}{}", src.from, where_clause(rng, src));
    if !refs.is_empty() {
        sql.push_str(&format!(" GROUP BY {}", refs.join(", ")));
    }
    if rng.chance(30) {
        sql.push_str(&format!(" HAVING {}", having(rng, src)));
        // A condition on a group key (a per-group value at the proxy).
        if !keys.is_empty() && rng.chance(40) {
            let k = rng.pick(&keys).clone();
            let cond = match src.cols.iter().find(|c| c.sql == k) {
                Some(c) if c.ty != Ty::Bool => {
                    format!("{k} {} {}", cmp_op(rng), literal(rng, c.dom))
                }
                _ => format!("({k}) IS NOT NULL"),
            };
            let op = if rng.chance(50) { "AND" } else { "OR" };
            sql.push_str(&format!(" {op} {cond}"));
        }
    }
    if keys.is_empty() || shadow || rng.chance(30) {
        // At most one row (no keys) or an unordered multiset.
        return (sql, false);
    }
    // ORDER BY: some exact aggregates and keys; total when every key is in.
    let mut order: Vec<String> = Vec::new();
    if rng.chance(20) {
        let a = aggregate(rng, src);
        if a.sortable && !matches!(a.dom, Dom::Note) {
            order.push(a.sql);
        }
    }
    for (i, it) in items.iter().enumerate() {
        let exact_agg = aggs.iter().any(|a| &a.sql == it && a.sortable);
        if exact_agg && rng.chance(30) {
            order.push(order_ref(rng, i, &names, &items, &src.from));
        }
    }
    let total = rng.chance(85);
    let mut ks: Vec<&String> = keys.iter().collect();
    if !total {
        ks.truncate(rng.below(ks.len()));
    }
    for k in ks {
        order.push(match items.iter().position(|i| i == k) {
            Some(i) => order_ref(rng, i, &names, &items, &src.from),
            None => unshadow(k.clone(), &names, &items, &src.from),
        });
    }
    if order.is_empty() {
        return (sql, false);
    }
    let dirs: Vec<String> = order
        .into_iter()
        .map(|k| format!("{k}{}", direction(rng)))
        .collect();
    sql.push_str(&format!(" ORDER BY {}", dirs.join(", ")));
    if total && rng.chance(40) {
        sql.push_str(&limit(rng));
    }
    (sql, total)
}

/// SELECT DISTINCT exprs ... [ORDER BY all of them [LIMIT]].
fn distinct_select(rng: &mut Rng, src: &Source) -> (String, bool) {
    let n = rng.range(1, 3) as usize;
    let mut items: Vec<String> = Vec::new();
    for _ in 0..n {
        let k = group_key(rng, src);
        if !items.contains(&k) {
            items.push(k);
        }
    }
    let (names, list) = select_list(rng, &items);
    let mut sql = format!(
        "SELECT DISTINCT {list} FROM {}{}",
        src.from,
        where_clause(rng, src)
    );
    if rng.chance(30) {
        return (sql, false);
    }
    let total = rng.chance(85);
    let k = if total {
        items.len()
    } else {
        rng.below(items.len())
    };
    if k == 0 {
        return (sql, false);
    }
    let order: Vec<String> = (0..k)
        .map(|i| {
            format!(
                "{}{}",
                order_ref(rng, i, &names, &items, &src.from),
                direction(rng)
            )
        })
        .collect();
    sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
    if total && rng.chance(40) {
        sql.push_str(&limit(rng));
    }
    (sql, total)
}

/// `n` entries from `seed` (category `random-<shape>`, place
/// `random[seed/i]`).
pub fn generate(seed: u64, n: usize) -> Vec<Entry> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let src = source(&mut rng);
            let (shape, (sql, ordered)) = match rng.below(10) {
                0..=3 => ("plain", plain_select(&mut rng, &src)),
                4..=8 => ("grouped", grouped_select(&mut rng, &src)),
                _ => ("distinct", distinct_select(&mut rng, &src)),
            };
            Entry {
                place: format!("random[{seed}/{i}]"),
                category: format!("random-{shape}-{}", src.label),
                flags: Flags {
                    ordered,
                    random: true,
                    ..Flags::default()
                },
                sql,
            }
        })
        .collect()
}

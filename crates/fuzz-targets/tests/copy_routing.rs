//! Property: every row of a `COPY ... FROM STDIN` split by a sharded session
//! lands on the shard that the point-query planner picks for a
//! `WHERE key = value` on its key, given as a literal or as a Bind
//! parameter; for text and CSV data cut into any CopyData chunks, and for
//! tables placed by hash, range and list, on bigint and text keys.

use proptest::prelude::*;
use shardgate::session::probe;
use shardgate_fuzz_targets::fixture_map;
use shardgate_protocol::frontend::Bind;
use shardgate_router::copy::{parse_copy, CopySplitter};
use shardgate_router::{Analyzer, Classifier};

/// A table of `fixture.toml` and a strategy for keys it accepts.
fn table_and_keys() -> impl Strategy<Value = (&'static str, &'static str, bool, Vec<String>)> {
    let ints =
        |r: std::ops::Range<i64>| prop::collection::vec(r.prop_map(|k| k.to_string()), 1..30);
    let texts = prop::collection::vec("[a-zA-Z0-9 ,;'\"\\\\|]{0,12}", 1..30);
    let regions = prop::collection::vec(
        prop::sample::select(vec!["eu", "us", "ca", "jp"]).prop_map(str::to_owned),
        1..30,
    );
    prop_oneof![
        ints(i64::MIN..i64::MAX).prop_map(|k| ("customers", "id", false, k)),
        texts.prop_map(|k| ("users", "name", true, k)),
        ints(0..3000).prop_map(|k| ("events", "id", false, k)),
        regions.prop_map(|k| ("accounts_geo", "region", true, k)),
    ]
}

/// A field in COPY text format.
fn text_field(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
}

/// A field in CSV, always quoted (an unquoted empty field is NULL).
fn csv_field(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A Bind body with one text parameter.
fn bind_body(value: &str) -> Vec<u8> {
    // Unnamed portal and statement, no format codes (all text).
    let mut b = vec![0, 0, 0, 0];
    b.extend_from_slice(&1i16.to_be_bytes());
    b.extend_from_slice(&(value.len() as i32).to_be_bytes());
    b.extend_from_slice(value.as_bytes());
    b.extend_from_slice(&[0, 0]);
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn copy_rows_land_where_point_queries_look(
        (table, column, quoted, keys) in table_and_keys(),
        csv in any::<bool>(),
        key_first in any::<bool>(),
        chunk in 1usize..64,
    ) {
        let map = fixture_map();
        let planner = Analyzer::new(Classifier::default(), 16);
        let (cols, format) = match (key_first, csv) {
            (true, false) => (format!("{column}, note"), ""),
            (false, false) => (format!("note, {column}"), ""),
            (true, true) => (format!("{column}, note"), " WITH (FORMAT csv)"),
            (false, true) => (format!("note, {column}"), " WITH (FORMAT csv)"),
        };
        let sql = format!("COPY {table} ({cols}) FROM STDIN{format}");
        let mut data = String::new();
        for (i, k) in keys.iter().enumerate() {
            let (k, note) = if csv {
                (csv_field(k), csv_field(&format!("row {i}")))
            } else {
                (text_field(k), format!("row {i}"))
            };
            let (sep, line) = if csv { (",", "\n") } else { ("\t", "\n") };
            if key_first {
                data.push_str(&format!("{k}{sep}{note}{line}"));
            } else {
                data.push_str(&format!("{note}{sep}{k}{line}"));
            }
        }
        let cs = parse_copy(&sql).expect("a COPY statement");
        let rule = map.table(None, table).expect("a sharded table");
        let splitter = CopySplitter::for_statement(&cs, Some(usize::from(!key_first)));
        let chunks: Vec<&[u8]> = data.as_bytes().chunks(chunk).collect();
        let routed = probe::copy_rows_by_shard(map, rule, splitter, &chunks)
            .unwrap_or_else(|e| panic!("{sql}: {}", e.message));
        prop_assert_eq!(routed.len(), keys.len());
        for (key, (shard, _row)) in keys.iter().zip(&routed) {
            let literal = if quoted {
                format!("'{}'", key.replace('\'', "''"))
            } else {
                key.clone()
            };
            let point = format!("SELECT * FROM {table} WHERE {column} = {literal}");
            let by_literal = probe::point_shards(&planner, map, &point, None)
                .unwrap_or_else(|e| panic!("{point}: {}", e.message));
            prop_assert_eq!(by_literal, Some(vec![*shard]), "{}", point);
            let param = format!("SELECT * FROM {table} WHERE {column} = $1");
            let body = bind_body(key);
            let bind = Bind::decode(&body).expect("a Bind body");
            let by_param = probe::point_shards(&planner, map, &param, Some(&bind))
                .unwrap_or_else(|e| panic!("{param} with {key:?}: {}", e.message));
            prop_assert_eq!(by_param, Some(vec![*shard]), "{} with {:?}", param, key);
        }
    }
}

use super::*;
use crate::shard::ShardedTable;

/// orders sharded by customer_id, customers by id, events by id;
/// countries a reference table; anything else unsharded.
struct Tables;

impl TableLookup for Tables {
    fn sharded(&self, _schema: Option<&str>, name: &str) -> Option<ShardedTable> {
        let column = match name {
            "orders" => "customer_id",
            "customers" | "events" => "id",
            _ => return None,
        };
        Some(ShardedTable {
            column: column.into(),
            ranged: false,
        })
    }
    fn is_reference(&self, _schema: Option<&str>, name: &str) -> bool {
        name == "countries"
    }
    fn version(&self) -> u64 {
        0
    }
}

fn bindings(sql: &str) -> Vec<String> {
    candidates(sql, &Tables)
        .into_iter()
        .map(|g| g.binding)
        .collect()
}

#[test]
fn either_side_of_a_join_not_on_the_keys_can_be_gathered() {
    let sql = "SELECT o.id, e.kind FROM orders o JOIN events e ON e.value = o.qty WHERE e.ok AND o.qty > $1";
    let found = candidates(sql, &Tables);
    assert_eq!(
        found.iter().map(|g| g.binding.as_str()).collect::<Vec<_>>(),
        ["o", "e"]
    );
    let e = &found[1];
    assert_eq!(e.table, "events");
    assert_eq!(e.filter.as_deref(), Some("(e.ok)"));
    assert_eq!(
        e.outer,
        "SELECT o.id, e.kind FROM orders o JOIN (SELECT * FROM __shardgate_rows) AS e ON e.value = o.qty WHERE e.ok AND o.qty > $1"
    );
    assert_eq!(found[0].filter.as_deref(), Some("(o.qty > $1)"));
    let cols: Vec<String> = ["id", "kind", "value", "ok", "at"]
        .map(String::from)
        .to_vec();
    let needed = e.needed(&cols);
    assert_eq!(
        e.inner_sql(&needed),
        "SELECT \"id\", \"kind\", \"value\", \"ok\" FROM events AS e WHERE (e.ok)"
    );
}

#[test]
fn conditions_of_an_outer_joins_statement_stay_out_of_the_gathering_read() {
    let sql = "SELECT count(*) FROM customers c LEFT JOIN orders o ON o.qty = c.tier AND o.paid WHERE o.note IS NULL";
    let found = candidates(sql, &Tables);
    let o = found
        .iter()
        .find(|g| g.binding == "o")
        .expect("orders gathered");
    // Its own ON conditions only: the WHERE tests the joined row.
    assert_eq!(o.filter.as_deref(), Some("(o.paid)"));
    assert!(
        found.iter().all(|g| g.binding != "c"),
        "the kept side gathered would repeat its unmatched rows on every shard"
    );
}

#[test]
fn unsharded_and_reference_driven_statements_gather_their_sharded_table() {
    assert_eq!(
        bindings("SELECT count(*) FROM customers c JOIN local_t l ON l.code = c.country"),
        ["c"]
    );
    assert_eq!(
        bindings("SELECT k.code, count(c.id) FROM countries k LEFT JOIN customers c ON c.country = k.code GROUP BY 1"),
        ["c"]
    );
    let exists = candidates(
        "SELECT k.code FROM countries k WHERE NOT EXISTS (SELECT 1 FROM customers c WHERE c.country = k.code AND c.tier > 1)",
        &Tables,
    );
    assert_eq!(exists.len(), 1);
    assert_eq!(
        exists[0].filter, None,
        "only conditions of the top level are read"
    );
    assert!(exists[0]
        .outer
        .contains("FROM (SELECT * FROM __shardgate_rows) AS c WHERE"));
    assert_eq!(
        bindings("SELECT code FROM countries UNION ALL SELECT country FROM customers"),
        ["\"customers\""]
    );
}

#[test]
fn a_co_located_pair_stays_and_the_stranger_is_gathered() {
    assert_eq!(
        bindings("SELECT * FROM customers c JOIN orders o ON o.customer_id = c.id JOIN events e ON e.value = o.qty"),
        ["e"]
    );
}

#[test]
fn only_named_columns_are_gathered_unless_rows_are_read_whole() {
    let cols: Vec<String> = ["id", "kind", "value"].map(String::from).to_vec();
    let g = |sql: &str| {
        candidates(sql, &Tables)
            .into_iter()
            .find(|g| g.binding == "e")
            .expect("events gathered")
    };
    let plain = g("SELECT count(*), sum(o.qty * 2) FROM orders o JOIN events e ON e.value = o.qty");
    assert!(!plain.all_columns);
    assert_eq!(plain.needed(&cols), [&cols[2]]);
    assert!(g("SELECT * FROM orders o JOIN events e ON e.value = o.qty").all_columns);
    assert!(g("SELECT e.* FROM orders o JOIN events e ON e.value = o.qty").all_columns);
    assert!(g("SELECT row_to_json(e) FROM orders o JOIN events e ON e.value = o.qty").all_columns);
    let none = g("SELECT count(*) FROM orders o CROSS JOIN events e");
    assert_eq!(none.needed(&cols), [&cols[0]]);
}

#[test]
fn statements_that_cannot_be_helped_have_no_candidate() {
    for sql in [
        "SELECT count(DISTINCT o.qty), count(DISTINCT e.kind) FROM orders o JOIN events e ON e.value = o.qty",
        "SELECT * FROM orders o JOIN events e ON e.value = o.qty JOIN customers c ON c.name = e.kind AND c.tier = o.qty",
        "SELECT * FROM orders o FULL JOIN events e ON e.value = o.qty",
        "SELECT * FROM orders o JOIN events e ON e.value = o.qty FOR UPDATE",
        "DELETE FROM orders USING events e WHERE e.value = orders.qty",
    ] {
        assert_eq!(bindings(sql), Vec::<String>::new(), "{sql}");
    }
}

#[test]
fn volatile_and_foreign_conditions_are_not_pushed() {
    assert!(!reads_only(&parse_expr("e.value > random()"), "e"));
    assert!(!reads_only(&parse_expr("e.value > o.qty"), "e"));
    assert!(!reads_only(&parse_expr("value > 1"), "e"));
    assert!(!reads_only(&parse_expr("1 = 1"), "e"));
    assert!(reads_only(&parse_expr("lower(e.kind) IN ('a', $2)"), "e"));
}

fn parse_expr(e: &str) -> Expr {
    let sql = format!("SELECT 1 WHERE {e}");
    let Statement::Query(q) = crate::sql_parse::parse_statements(&sql).unwrap().remove(0) else {
        unreachable!()
    };
    let SetExpr::Select(s) = *q.body else {
        unreachable!()
    };
    s.selection.unwrap()
}

#[test]
fn what_no_one_table_answers_gathers_them_all() {
    let sql = "SELECT o.id, e.kind FROM orders o FULL JOIN events e ON e.id = o.id WHERE o.qty > 1";
    assert!(candidates(sql, &Tables).is_empty());
    let (all, outer) = gather_all(sql, &Tables).expect("both gathered");
    assert_eq!(
        all.iter().map(|g| g.binding.as_str()).collect::<Vec<_>>(),
        ["o", "e"]
    );
    assert_eq!(all[0].filter, None, "a full join keeps unmatched rows");
    assert_eq!(
        outer,
        "SELECT o.id, e.kind FROM (SELECT * FROM __shardgate_rows) AS o FULL JOIN (SELECT * FROM __shardgate_rows) AS e ON e.id = o.id WHERE o.qty > 1"
    );
    let union = "SELECT count(*) FROM orders UNION ALL SELECT count(*) FROM events WHERE ok";
    let (all, _) = gather_all(union, &Tables).expect("both gathered");
    assert_eq!(all.len(), 2);
    assert_eq!(
        gather_all("SELECT * FROM orders", &Tables),
        None,
        "one table"
    );
}

//! The baseline for `one_query.rs`: the same table and output, filtered by
//! hand, so the embedded SQLite is not linked (see MEASUREMENTS.md).

use shardgate_admin::{columns, AdminError, Table, Value};

fn main() -> Result<(), AdminError> {
    let nodes = Table {
        name: "nodes",
        columns: columns![node: Text, port: Int4, healthy: Bool],
        rows: vec![
            vec![Value::Text("a".into()), Value::Int(5432), Value::Bool(true)],
            vec![
                Value::Text("b".into()),
                Value::Int(5433),
                Value::Bool(false),
            ],
        ],
    };
    for row in nodes.rows.iter().filter(|r| r[2] == Value::Bool(true)) {
        let mut line = Vec::new();
        for (v, c) in row.iter().zip(nodes.columns).take(2) {
            v.encode_text(c.ty, &mut line)?;
            line.push(b'|');
        }
        println!("{}", String::from_utf8_lossy(&line));
    }
    Ok(())
}

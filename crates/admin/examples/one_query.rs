//! Loads one admin table and prints the text encoding of one query's rows:
//! the program whose release size MEASUREMENTS.md compares with
//! `no_sqlite.rs`, which prints the same without the engine.

use shardgate_admin::{columns, AdminError, Engine, Table, Value};

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
    let mut engine = Engine::new(&["nodes"])?;
    engine.load(&nodes)?;
    let rs = engine.query("SELECT node, port FROM nodes WHERE healthy", &[], None)?;
    for row in &rs.rows {
        let mut line = Vec::new();
        for (v, (_, ty)) in row.iter().zip(&rs.columns) {
            v.encode_text(*ty, &mut line)?;
            line.push(b'|');
        }
        println!("{}", String::from_utf8_lossy(&line));
    }
    Ok(())
}

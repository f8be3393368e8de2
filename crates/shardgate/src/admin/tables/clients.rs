//! `shardgate.clients`: connected clients.

use shardgate_admin::{columns, Table, Value};

use super::{int, micros, text, Source};

/// Rows: one per client, by id.
pub fn table(src: &Source<'_>) -> Table {
    let rows = src
        .rt
        .clients
        .all()
        .iter()
        .map(|c| {
            vec![
                int(c.id),
                text(c.user.clone()),
                text(c.database.clone()),
                text(c.state().name()),
                text(c.peer.ip().to_string()),
                int(c.peer.port()),
                micros(c.connect_time),
                text(c.application_name.clone()),
                Value::Bool(c.tls),
                text(c.consistency().as_str()),
                Value::Bool(c.in_transaction()),
                int(c.links().len()),
            ]
        })
        .collect();
    Table {
        name: "clients",
        columns: columns![
            id: Int8,
            user: Text,
            database: Text,
            state: Text,
            addr: Text,
            port: Int4,
            connect_time: Timestamptz,
            application_name: Text,
            tls: Bool,
            consistency: Text,
            in_transaction: Bool,
            servers: Int4,
        ],
        rows,
    }
}

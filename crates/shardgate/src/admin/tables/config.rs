//! `shardgate.config`: every setting of `[proxy]`, `[routing]` and
//! `[sharding]` with its value, default, reloadability and source.

use shardgate_admin::{columns, Table, Value};

use super::{text, Source};

/// Rows: one per setting, by key.
pub fn table(src: &Source<'_>) -> Table {
    let overrides = src.rt.overrides.lock().expect("overrides lock").clone();
    let rows = crate::settings::list(&src.snap.config, &overrides)
        .into_iter()
        .filter(|s| !s.key.ends_with("password"))
        .map(|s| {
            vec![
                text(s.key),
                text(s.value),
                text(s.default),
                Value::Bool(s.reloadable),
                text(s.source),
            ]
        })
        .collect();
    Table {
        name: "config",
        columns: columns![key: Text, value: Text, default: Text, reloadable: Bool, source: Text],
        rows,
    }
}

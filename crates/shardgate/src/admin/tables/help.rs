//! `shardgate.help` (`SHOW HELP`): the commands and the tables.

use shardgate_admin::{columns, Table};

use super::{text, TABLES};

/// The commands, with their syntax.
const COMMANDS: &[(&str, &str)] = &[
    ("SELECT ... FROM shardgate.<table>", "any read-only SQL over the tables below (SQLite's dialect: joins, GROUP BY, $1 parameters)"),
    ("SHOW <table>", "the same as SELECT * FROM shardgate.<table> (SHOW REPLICATION is nodes)"),
    ("RELOAD", "read proxy.toml again and apply it; errors name the key and line, and nothing changes"),
    ("SET <key> = <value>", "change a reloadable setting until the next RELOAD (shardgate.config lists them)"),
    ("PAUSE [SHARD n]", "new transactions wait; returns once running ones finished"),
    ("RESUME [SHARD n]", "end a PAUSE"),
    ("BAN 'host:port' [FOR '30s']", "no traffic to the node for that long (default routing.ban_ms)"),
    ("UNBAN 'host:port'", "lift a ban or a DRAIN"),
    ("DRAIN 'host:port'", "no new traffic to the node; in-flight work finishes, then its pools close"),
    ("KILL CLIENT <id>", "end a client's session (its open transaction rolls back)"),
    ("SHUTDOWN", "stop accepting clients, let open transactions finish, exit"),
    (
        "ADD SHARD '<host:port>' [REPLICAS ('<host:port>', ...)] [WEIGHT <w>]",
        "start a job giving a new shard its tables, the reference tables and its hash-ring arcs",
    ),
    ("REMOVE SHARD <n>", "start a job moving every key of shard n to the others"),
    ("SET SHARD <n> WEIGHT <w>", "start a job moving the arcs a new weight changes"),
    (
        "MOVE LIST VALUE '<v>' OF <table> TO SHARD <n>",
        "start a job moving one list value's rows",
    ),
    (
        "MOVE RANGE <table> [<start>, <end>) TO SHARD <n>",
        "start a job moving a key range (ranges split at its bounds)",
    ),
    ("PAUSE JOB <id> / RESUME JOB <id>", "hold or continue a job's copy"),
    ("CANCEL JOB <id>", "undo a job before its cutover"),
    ("VERIFY JOB <id>", "check every row's shard against the map in force"),
    (
        "REBALANCE PLAN",
        "measure each hash-ring arc's data; list the arc moves that bring every shard within sharding.imbalance_threshold of its ideal share",
    ),
    ("REBALANCE", "start a job making the moves REBALANCE PLAN lists"),
];

/// Rows: commands, then `shardgate.<table>` for each table.
pub fn table() -> Table {
    let rows = COMMANDS
        .iter()
        .map(|(c, d)| vec![text(*c), text(*d)])
        .chain(
            TABLES
                .iter()
                .map(|(t, d)| vec![text(format!("shardgate.{t}")), text(*d)]),
        )
        .collect();
    Table {
        name: "help",
        columns: columns![command: Text, description: Text],
        rows,
    }
}

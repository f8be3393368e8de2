//! What an admin console statement asks for: a command (RELOAD, PAUSE,
//! BAN, ...), a `SHOW`, a session no-op drivers send, or SQL over the
//! admin tables.

use std::time::Duration;

use shardgate_router::lexer::{Lexer, Token, TokenKind};

/// One admin statement, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SHOW name`: the table of that name.
    Show(String),
    /// `RELOAD`.
    Reload,
    /// `PAUSE [SHARD n]` (every shard when none is named).
    Pause(Option<usize>),
    /// `RESUME [SHARD n]`.
    Resume(Option<usize>),
    /// `BAN 'host:port' [FOR 'duration']`.
    Ban {
        /// The node.
        node: String,
        /// How long (default: `routing.ban_ms`).
        duration: Option<Duration>,
    },
    /// `UNBAN 'host:port'`.
    Unban(String),
    /// `DRAIN 'host:port'`.
    Drain(String),
    /// `KILL CLIENT id`.
    KillClient(u64),
    /// `SET key = value` for a shardgate setting.
    Set {
        /// The setting's name as written.
        key: String,
        /// Its new value (quotes removed).
        value: String,
    },
    /// `SHUTDOWN`.
    Shutdown,
    /// A rebalancing job: `ADD SHARD`, `REMOVE SHARD`, `SET SHARD n WEIGHT
    /// w`, `MOVE LIST VALUE`, `MOVE RANGE`.
    Rebalance(crate::rebalance::Change),
    /// `PAUSE JOB id`, `RESUME JOB id`, `CANCEL JOB id`.
    JobControl(u64, crate::rebalance::Control),
    /// `VERIFY JOB id`.
    VerifyJob(u64),
    /// `REBALANCE PLAN`: the arcs `REBALANCE` would move, as rows.
    RebalancePlan,
    /// `REBALANCE`: start a job moving the planned arcs.
    RebalanceNow,
    /// `BEGIN` / `START TRANSACTION`: drivers wrap statements in
    /// transactions; the admin tables are read-only, so this is only status.
    Begin,
    /// `COMMIT` / `END` / `ROLLBACK` / `ABORT`.
    End,
    /// A statement drivers send when they connect (`SET application_name`,
    /// `DISCARD ALL`, ...): answered with its tag, changes nothing.
    NoOp(&'static str),
    /// A query over the admin tables.
    Sql(String),
}

/// A statement the console cannot run, with what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    /// SQLSTATE.
    pub sqlstate: &'static str,
    /// What is wrong.
    pub message: String,
    /// How to write it.
    pub hint: &'static str,
}

fn syntax(message: impl Into<String>, hint: &'static str) -> CommandError {
    CommandError {
        sqlstate: "42601",
        message: message.into(),
        hint,
    }
}

/// Session parameters drivers set at connect time: accepted, ignored.
const SESSION_PARAMS: &[&str] = &[
    "application_name",
    "extra_float_digits",
    "datestyle",
    "timezone",
    "client_encoding",
    "client_min_messages",
    "search_path",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "intervalstyle",
    "bytea_output",
    "standard_conforming_strings",
    "session",
    "transaction",
];

const BAN_HINT: &str = "Write BAN '127.0.0.1:5433' or BAN '127.0.0.1:5433' FOR '30s'.";
const NODE_HINT: &str = "Name the node as host:port in quotes, as shardgate.nodes shows it.";
const SHARD_HINT: &str = "Write PAUSE, or PAUSE SHARD 1 (shards are numbered from 0).";

/// Parses one statement (without its trailing `;`).
pub fn parse(stmt: &str) -> Result<Command, CommandError> {
    let tokens: Vec<Token<'_>> = Lexer::new(stmt)
        .filter(|t| t.kind != TokenKind::BlockComment && t.kind != TokenKind::Semicolon)
        .collect();
    let word = |i: usize| {
        tokens
            .get(i)
            .filter(|t| t.kind == TokenKind::Word)
            .map(|t| t.text.to_ascii_lowercase())
    };
    let Some(first) = word(0) else {
        return Ok(Command::Sql(stmt.to_owned()));
    };
    let rest = &tokens[1..];
    let only = |cmd: Command| {
        if rest.is_empty() {
            Ok(cmd)
        } else {
            Err(syntax(
                format!("unexpected text after {}", first.to_ascii_uppercase()),
                "SHOW HELP lists the commands and their syntax.",
            ))
        }
    };
    match first.as_str() {
        "show" => match rest {
            [t] if matches!(t.kind, TokenKind::Word | TokenKind::QuotedIdent) => {
                Ok(Command::Show(ident(t)))
            }
            _ => Err(syntax(
                "SHOW needs one name, e.g. SHOW POOLS",
                "SHOW HELP lists what can be shown.",
            )),
        },
        "reload" => only(Command::Reload),
        "shutdown" => only(Command::Shutdown),
        "add" => add_shard(rest),
        "remove" => match rest {
            [kw, n] if kw.is_keyword("shard") => shard_number(n)
                .map(|n| Command::Rebalance(crate::rebalance::Change::RemoveShard(n))),
            _ => Err(syntax(
                "REMOVE needs SHARD and a number",
                "Write REMOVE SHARD 2.",
            )),
        },
        "set" if word(1).as_deref() == Some("shard") => set_weight(rest),
        "move" => move_keys(rest),
        "pause" if word(1).as_deref() == Some("job") => {
            job_id(rest).map(|id| Command::JobControl(id, crate::rebalance::Control::Pause))
        }
        "resume" if word(1).as_deref() == Some("job") => {
            job_id(rest).map(|id| Command::JobControl(id, crate::rebalance::Control::Run))
        }
        "cancel" => {
            job_id(rest).map(|id| Command::JobControl(id, crate::rebalance::Control::Cancel))
        }
        "verify" => job_id(rest).map(Command::VerifyJob),
        "rebalance" => match rest {
            [] => Ok(Command::RebalanceNow),
            [kw] if kw.is_keyword("plan") => Ok(Command::RebalancePlan),
            _ => Err(syntax(
                "REBALANCE takes nothing, or PLAN",
                "Write REBALANCE PLAN to see the moves, REBALANCE to start them.",
            )),
        },
        "pause" => shard_arg(rest).map(Command::Pause),
        "resume" => shard_arg(rest).map(Command::Resume),
        "ban" => match rest {
            [n] => Ok(Command::Ban {
                node: node_arg(n)?,
                duration: None,
            }),
            [n, f, d] if f.is_keyword("for") => Ok(Command::Ban {
                node: node_arg(n)?,
                duration: Some(duration_arg(d)?),
            }),
            _ => Err(syntax(
                "BAN needs a node and optionally FOR a duration",
                BAN_HINT,
            )),
        },
        "unban" | "drain" => match rest {
            [n] => {
                let node = node_arg(n)?;
                Ok(if first == "unban" {
                    Command::Unban(node)
                } else {
                    Command::Drain(node)
                })
            }
            _ => Err(syntax(
                format!("{} needs one node", first.to_ascii_uppercase()),
                NODE_HINT,
            )),
        },
        "kill" => match rest {
            [c, id] if c.is_keyword("client") && id.kind == TokenKind::Number => id
                .text
                .parse()
                .map(Command::KillClient)
                .map_err(|_| CommandError {
                    sqlstate: "22023",
                    message: format!("invalid client id {}", id.text),
                    hint: "shardgate.clients lists the ids.",
                }),
            _ => Err(syntax(
                "KILL needs CLIENT and an id, e.g. KILL CLIENT 12",
                "shardgate.clients lists the ids.",
            )),
        },
        "set" => set(rest),
        "begin" => Ok(Command::Begin),
        "start" if word(1).as_deref() == Some("transaction") => Ok(Command::Begin),
        "commit" | "end" | "rollback" | "abort" => Ok(Command::End),
        "discard" => Ok(Command::NoOp("DISCARD ALL")),
        "reset" => Ok(Command::NoOp("RESET")),
        "deallocate" => Ok(Command::NoOp("DEALLOCATE")),
        "select" | "with" | "values" | "table" | "explain" => Ok(Command::Sql(stmt.to_owned())),
        other => Err(syntax(
            format!("unknown admin command: {}", other.to_ascii_uppercase()),
            "SHOW HELP lists the commands; the admin tables are queried with SELECT.",
        )),
    }
}

/// An identifier's name: unquoted ones folded to lower case.
fn ident(t: &Token<'_>) -> String {
    match t.kind {
        TokenKind::QuotedIdent => t.quoted_body().unwrap_or_default().replace("\"\"", "\""),
        _ => t.text.to_ascii_lowercase(),
    }
}

/// A string literal's value (plain `'...'` only).
fn string_value(t: &Token<'_>) -> Option<String> {
    // An unterminated string is a syntax error in the console too.
    t.quoted_body()
        .filter(|_| t.kind == TokenKind::String && t.text.len() >= 2 && t.text.ends_with('\''))
        .map(|b| b.replace("''", "'"))
}

const ADD_SHARD_HINT: &str =
    "Write ADD SHARD '10.0.0.5:5432' [REPLICAS ('10.0.0.6:5432', ...)] [WEIGHT 2].";

/// `SHARD 'primary' [REPLICAS ('r', ...)] [WEIGHT w]` after `ADD`.
fn add_shard(rest: &[Token<'_>]) -> Result<Command, CommandError> {
    let bad = || {
        syntax(
            "ADD needs SHARD and the new primary's address",
            ADD_SHARD_HINT,
        )
    };
    let (Some(kw), Some(primary)) = (rest.first(), rest.get(1)) else {
        return Err(bad());
    };
    if !kw.is_keyword("shard") {
        return Err(bad());
    }
    let primary = node_arg(primary)?;
    let mut replicas = Vec::new();
    let mut weight = 1;
    let mut i = 2;
    while let Some(t) = rest.get(i) {
        if t.is_keyword("replicas") {
            if !rest.get(i + 1).is_some_and(|t| t.is_punct("(")) {
                return Err(syntax(
                    "REPLICAS needs a parenthesised list",
                    ADD_SHARD_HINT,
                ));
            }
            i += 2;
            loop {
                let Some(t) = rest.get(i) else {
                    return Err(syntax("REPLICAS list is not closed", ADD_SHARD_HINT));
                };
                if t.is_punct(")") {
                    i += 1;
                    break;
                }
                if !t.is_punct(",") {
                    replicas.push(node_arg(t)?);
                }
                i += 1;
            }
        } else if t.is_keyword("weight") {
            weight = rest
                .get(i + 1)
                .filter(|t| t.kind == TokenKind::Number)
                .and_then(|t| t.text.parse::<u32>().ok())
                .filter(|w| *w > 0)
                .ok_or_else(|| CommandError {
                    sqlstate: "22023",
                    message: "WEIGHT needs a whole number of at least 1".into(),
                    hint: ADD_SHARD_HINT,
                })?;
            i += 2;
        } else {
            return Err(syntax(
                format!("unexpected {} in ADD SHARD", t.text),
                ADD_SHARD_HINT,
            ));
        }
    }
    Ok(Command::Rebalance(crate::rebalance::Change::AddShard(
        crate::config::ShardConfig {
            primary,
            replicas,
            weight,
            arcs: Vec::new(),
        },
    )))
}

const WEIGHT_HINT: &str = "Write SET SHARD 1 WEIGHT 2.";
const MOVE_HINT: &str =
    "Write MOVE LIST VALUE 'DE' OF customers TO SHARD 2, or MOVE RANGE events [1000, 2000) TO SHARD 2.";

const JOB_HINT: &str = "Write PAUSE JOB 3 (shardgate.jobs lists the ids).";

/// `JOB id` after PAUSE, RESUME, CANCEL or VERIFY.
fn job_id(rest: &[Token<'_>]) -> Result<u64, CommandError> {
    match rest {
        [j, id] if j.is_keyword("job") && id.kind == TokenKind::Number => {
            id.text.parse().map_err(|_| CommandError {
                sqlstate: "22023",
                message: format!("invalid job id {}", id.text),
                hint: JOB_HINT,
            })
        }
        _ => Err(syntax("expected JOB and a job id", JOB_HINT)),
    }
}

/// A shard number.
fn shard_number(t: &Token<'_>) -> Result<usize, CommandError> {
    if t.kind != TokenKind::Number {
        return Err(syntax(
            format!("{} is not a shard number", t.text),
            SHARD_HINT,
        ));
    }
    t.text.parse().map_err(|_| CommandError {
        sqlstate: "22023",
        message: format!("invalid shard number {}", t.text),
        hint: SHARD_HINT,
    })
}

/// `SHARD n WEIGHT w` after `SET`.
fn set_weight(rest: &[Token<'_>]) -> Result<Command, CommandError> {
    match rest {
        [s, n, w, v] if s.is_keyword("shard") && w.is_keyword("weight") => {
            let shard = shard_number(n)?;
            let weight = v
                .text
                .parse::<u32>()
                .ok()
                .filter(|w| *w > 0 && v.kind == TokenKind::Number)
                .ok_or_else(|| CommandError {
                    sqlstate: "22023",
                    message: "WEIGHT needs a whole number of at least 1".into(),
                    hint: WEIGHT_HINT,
                })?;
            Ok(Command::Rebalance(crate::rebalance::Change::SetWeight {
                shard,
                weight,
            }))
        }
        _ => Err(syntax("SET SHARD needs a number and WEIGHT w", WEIGHT_HINT)),
    }
}

/// An integer, possibly negative, at `toks[i..]`; returns it and the tokens used.
fn signed(toks: &[Token<'_>], i: usize) -> Option<(i64, usize)> {
    match toks.get(i)? {
        t if t.is_punct("-") => {
            let n = toks.get(i + 1).filter(|t| t.kind == TokenKind::Number)?;
            Some((format!("-{}", n.text).parse().ok()?, 2))
        }
        t if t.kind == TokenKind::Number => Some((t.text.parse().ok()?, 1)),
        _ => None,
    }
}

/// `LIST VALUE 'v' OF t TO SHARD n` or `RANGE t [a, b) TO SHARD n` after `MOVE`.
fn move_keys(rest: &[Token<'_>]) -> Result<Command, CommandError> {
    let bad = || syntax("MOVE needs LIST VALUE ... or RANGE ...", MOVE_HINT);
    let to_shard = |toks: &[Token<'_>]| -> Result<usize, CommandError> {
        match toks {
            [to, s, n] if to.is_keyword("to") && s.is_keyword("shard") => shard_number(n),
            _ => Err(syntax("MOVE ends with TO SHARD n", MOVE_HINT)),
        }
    };
    match rest.first() {
        Some(l) if l.is_keyword("list") => match rest {
            [_, v, value, of, table, tail @ ..] if v.is_keyword("value") && of.is_keyword("of") => {
                let value = string_value(value)
                    .or_else(|| (value.kind == TokenKind::Number).then(|| value.text.to_owned()))
                    .ok_or_else(bad)?;
                Ok(Command::Rebalance(
                    crate::rebalance::Change::MoveListValue {
                        table: ident(table),
                        value,
                        shard: to_shard(tail)?,
                    },
                ))
            }
            _ => Err(bad()),
        },
        Some(r) if r.is_keyword("range") => {
            let table = rest.get(1).map(ident).ok_or_else(bad)?;
            if !rest.get(2).is_some_and(|t| t.is_punct("[")) {
                return Err(bad());
            }
            let (start, used) = signed(rest, 3).ok_or_else(bad)?;
            let mut i = 3 + used;
            if !rest.get(i).is_some_and(|t| t.is_punct(",")) {
                return Err(bad());
            }
            let (end, used) = signed(rest, i + 1).ok_or_else(bad)?;
            i += 1 + used;
            if !rest.get(i).is_some_and(|t| t.is_punct(")")) {
                return Err(syntax(
                    "a range is written [start, end): end is excluded",
                    MOVE_HINT,
                ));
            }
            Ok(Command::Rebalance(crate::rebalance::Change::MoveRange {
                table,
                start,
                end,
                shard: to_shard(&rest[i + 1..])?,
            }))
        }
        _ => Err(bad()),
    }
}

fn node_arg(t: &Token<'_>) -> Result<String, CommandError> {
    string_value(t)
        .filter(|s| {
            s.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        })
        .ok_or_else(|| CommandError {
            sqlstate: "22023",
            message: format!("{} is not a node address like '127.0.0.1:5432'", t.text),
            hint: NODE_HINT,
        })
}

fn duration_arg(t: &Token<'_>) -> Result<Duration, CommandError> {
    let text = string_value(t).unwrap_or_else(|| t.text.to_owned());
    crate::config::parse_duration(&text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| CommandError {
            sqlstate: "22023",
            message: format!("invalid duration {}", t.text),
            hint: "Use a duration such as '30s', '500ms' or '5m'.",
        })
}

fn shard_arg(rest: &[Token<'_>]) -> Result<Option<usize>, CommandError> {
    match rest {
        [] => Ok(None),
        [s, n] if s.is_keyword("shard") && n.kind == TokenKind::Number => {
            n.text.parse().map(Some).map_err(|_| CommandError {
                sqlstate: "22023",
                message: format!("invalid shard number {}", n.text),
                hint: SHARD_HINT,
            })
        }
        _ => Err(syntax("expected SHARD and a shard number", SHARD_HINT)),
    }
}

fn set(rest: &[Token<'_>]) -> Result<Command, CommandError> {
    const HINT: &str =
        "Write SET pool_size = 50 or SET pool_timeout = '3s'; shardgate.config lists the settings.";
    // SET [SESSION | LOCAL] name {= | TO} value
    let rest = match rest.first() {
        Some(t) if t.is_keyword("session") || t.is_keyword("local") => &rest[1..],
        _ => rest,
    };
    let Some(name_end) = rest
        .iter()
        .position(|t| t.is_punct("=") || t.is_keyword("to"))
    else {
        return Err(syntax("SET needs a name, = and a value", HINT));
    };
    let key: String = rest[..name_end].iter().map(|t| t.text).collect::<String>();
    let key = key.to_ascii_lowercase();
    if key.is_empty() {
        return Err(syntax("SET needs a name, = and a value", HINT));
    }
    if SESSION_PARAMS.contains(&key.as_str()) {
        return Ok(Command::NoOp("SET"));
    }
    let value_tokens = &rest[name_end + 1..];
    let value = match value_tokens {
        [t] => string_value(t).unwrap_or_else(|| t.text.to_owned()),
        [] => return Err(syntax("SET needs a value", HINT)),
        many => many
            .iter()
            .map(|t| string_value(t).unwrap_or_else(|| t.text.to_owned()))
            .collect::<Vec<_>>()
            .join(""),
    };
    Ok(Command::Set { key, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fuzzing found it (fuzz/regressions/admin_command/): an unterminated
    /// string or identifier ending inside a multi-byte character panicked.
    #[test]
    fn unterminated_quotes_are_errors_not_panics() {
        for stmt in ["BAN '1:2' FOR '71r\u{fffd}", "BAN '\u{e9}", "KILL '"] {
            assert!(parse(stmt).is_err(), "{stmt}");
        }
        let _ = parse("SHOW \"\u{e9}");
        assert!(parse("BAN '127.0.0.1:5433' FOR '30s'").is_ok());
    }

    fn ok(s: &str) -> Command {
        parse(s).unwrap()
    }

    #[test]
    fn commands() {
        assert_eq!(ok("SHOW pools"), Command::Show("pools".into()));
        assert_eq!(ok("show \"Pools\""), Command::Show("Pools".into()));
        assert_eq!(ok("RELOAD"), Command::Reload);
        assert_eq!(ok("reload;"), Command::Reload);
        assert_eq!(ok("PAUSE"), Command::Pause(None));
        assert_eq!(ok("pause shard 1"), Command::Pause(Some(1)));
        assert_eq!(ok("RESUME SHARD 0"), Command::Resume(Some(0)));
        assert_eq!(
            ok("BAN '127.0.0.1:5433' FOR '30s'"),
            Command::Ban {
                node: "127.0.0.1:5433".into(),
                duration: Some(Duration::from_secs(30))
            }
        );
        assert_eq!(
            ok("ban 'h:1'"),
            Command::Ban {
                node: "h:1".into(),
                duration: None
            }
        );
        assert_eq!(ok("UNBAN 'h:1'"), Command::Unban("h:1".into()));
        assert_eq!(ok("DRAIN 'h:1'"), Command::Drain("h:1".into()));
        assert_eq!(ok("KILL CLIENT 12"), Command::KillClient(12));
        assert_eq!(
            ok("SET pool_size = 50"),
            Command::Set {
                key: "pool_size".into(),
                value: "50".into()
            }
        );
        assert_eq!(
            ok("set proxy.pool_timeout to '3s'"),
            Command::Set {
                key: "proxy.pool_timeout".into(),
                value: "3s".into()
            }
        );
        assert_eq!(ok("SET extra_float_digits = 3"), Command::NoOp("SET"));
        assert_eq!(ok("SET application_name = 'x'"), Command::NoOp("SET"));
        assert_eq!(ok("SHUTDOWN"), Command::Shutdown);
        use crate::rebalance::Change;
        assert_eq!(
            ok("ADD SHARD '127.0.0.1:5434' REPLICAS ('127.0.0.1:5435', '127.0.0.1:5436') WEIGHT 2"),
            Command::Rebalance(Change::AddShard(crate::config::ShardConfig {
                primary: "127.0.0.1:5434".into(),
                replicas: vec!["127.0.0.1:5435".into(), "127.0.0.1:5436".into()],
                weight: 2,
                arcs: Vec::new(),
            }))
        );
        assert_eq!(
            ok("add shard '127.0.0.1:5434'"),
            Command::Rebalance(Change::AddShard(crate::config::ShardConfig {
                primary: "127.0.0.1:5434".into(),
                replicas: vec![],
                weight: 1,
                arcs: Vec::new(),
            }))
        );
        assert_eq!(
            ok("REMOVE SHARD 2"),
            Command::Rebalance(Change::RemoveShard(2))
        );
        assert_eq!(
            ok("SET SHARD 1 WEIGHT 3"),
            Command::Rebalance(Change::SetWeight {
                shard: 1,
                weight: 3
            })
        );
        assert_eq!(
            ok("MOVE LIST VALUE 'DE' OF regions TO SHARD 2"),
            Command::Rebalance(Change::MoveListValue {
                table: "regions".into(),
                value: "DE".into(),
                shard: 2
            })
        );
        assert_eq!(
            ok("MOVE RANGE events [-5, 1000) TO SHARD 1"),
            Command::Rebalance(Change::MoveRange {
                table: "events".into(),
                start: -5,
                end: 1000,
                shard: 1
            })
        );
        assert_eq!(ok("BEGIN"), Command::Begin);
        assert_eq!(ok("start transaction read only"), Command::Begin);
        assert_eq!(ok("COMMIT"), Command::End);
        let q = "SELECT * FROM shardgate.pools WHERE node = $1";
        assert_eq!(ok(q), Command::Sql(q.into()));
        assert_eq!(
            ok("/* c */ select 1"),
            Command::Sql("/* c */ select 1".into())
        );
    }

    #[test]
    fn mistakes_say_what_to_write() {
        for (s, state) in [
            ("BAN localhost", "22023"),
            ("BAN 'h:1' FOR 'soon'", "22023"),
            ("BAN", "42601"),
            ("PAUSE shard x", "42601"),
            ("KILL 3", "42601"),
            ("SET pool_size", "42601"),
            ("RELOAD now", "42601"),
            ("DELETE FROM shardgate.nodes", "42601"),
            ("SHOW", "42601"),
        ] {
            let e = parse(s).unwrap_err();
            assert_eq!(e.sqlstate, state, "{s}: {e}");
            assert!(!e.hint.is_empty());
        }
    }
}

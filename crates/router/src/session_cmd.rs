//! Recognising statements that change session state (`SET`, `RESET`,
//! `DISCARD`, `DEALLOCATE`), so a transaction pooler can track and replay them.

use crate::lexer::{Lexer, Token, TokenKind};

/// The value part of a `SET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetValue {
    /// The value as written, e.g. `'UTC'` or `public, "$user"` or `DEFAULT`.
    pub text: String,
}

impl SetValue {
    /// The value with one level of single quotes removed (`'a''b'` → `a'b`),
    /// or the bare word/number as written.
    pub fn unquoted(&self) -> String {
        let t = self.text.trim();
        match t.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
            Some(inner) => inner.replace("''", "'"),
            None => t.to_owned(),
        }
    }

    /// Whether the value is the keyword DEFAULT.
    pub fn is_default(&self) -> bool {
        self.text.trim().eq_ignore_ascii_case("default")
    }
}

/// A statement that affects session state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCommand {
    /// `SET [SESSION] name ...`: replaying `statement` restores the setting.
    Set {
        /// Parameter name, lower case (`timezone` for `SET TIME ZONE`).
        name: String,
        /// The value as written.
        value: SetValue,
        /// Statement that re-applies it on another connection.
        statement: String,
    },
    /// `SET LOCAL ...`: lasts until the end of the transaction only.
    SetLocal {
        /// Parameter name, lower case.
        name: String,
        /// The value as written.
        value: SetValue,
    },
    /// `RESET name`.
    Reset {
        /// Parameter name, lower case.
        name: String,
    },
    /// `RESET ALL`.
    ResetAll,
    /// `DISCARD ALL`.
    DiscardAll,
    /// `DEALLOCATE [PREPARE] name`, or `None` for `DEALLOCATE ALL`.
    Deallocate(Option<String>),
}

/// A savepoint statement, with the savepoint's name as the server keeps it
/// (unquoted names folded to lower case).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SavepointCommand {
    /// `SAVEPOINT name`.
    Savepoint(String),
    /// `ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name`.
    RollbackTo(String),
    /// `RELEASE [SAVEPOINT] name`.
    Release(String),
}

impl SavepointCommand {
    /// Recognises a savepoint statement.
    pub fn parse(stmt: &str) -> Option<SavepointCommand> {
        let toks: Vec<Token<'_>> = Lexer::new(stmt)
            .filter(|t| t.kind != TokenKind::BlockComment && t.kind != TokenKind::Semicolon)
            .collect();
        let mut i = 1;
        let skip = |i: &mut usize, words: &[&str]| {
            while toks
                .get(*i)
                .is_some_and(|t| words.iter().any(|w| t.is_keyword(w)))
            {
                *i += 1;
            }
        };
        let first = toks.first()?;
        let make: fn(String) -> SavepointCommand = if first.is_keyword("savepoint") {
            SavepointCommand::Savepoint
        } else if first.is_keyword("release") {
            skip(&mut i, &["savepoint"]);
            SavepointCommand::Release
        } else if first.is_keyword("rollback") {
            skip(&mut i, &["work", "transaction"]);
            if !toks.get(i)?.is_keyword("to") {
                return None;
            }
            i += 1;
            skip(&mut i, &["savepoint"]);
            SavepointCommand::RollbackTo
        } else {
            return None;
        };
        if toks.len() != i + 1 {
            return None;
        }
        Some(make(ident(&toks[i])?))
    }

    /// The savepoint's name.
    pub fn name(&self) -> &str {
        match self {
            SavepointCommand::Savepoint(n)
            | SavepointCommand::RollbackTo(n)
            | SavepointCommand::Release(n) => n,
        }
    }
}

/// A statement about an SQL cursor, with the cursor's name as the server
/// keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorStatement {
    /// `DECLARE name ... CURSOR ... FOR query`.
    Declare(String),
    /// `FETCH`, `MOVE` or `CLOSE` of the named cursor.
    Use(String),
    /// `CLOSE ALL`.
    CloseAll,
}

impl CursorStatement {
    /// Recognises DECLARE, FETCH, MOVE and CLOSE.
    pub fn parse(stmt: &str) -> Option<CursorStatement> {
        let mut lexer = Lexer::new(stmt)
            .filter(|t| t.kind != TokenKind::BlockComment && t.kind != TokenKind::Semicolon);
        let first = lexer.next()?;
        // Only these statements are looked at whole (they are short).
        if !["declare", "close", "fetch", "move"]
            .iter()
            .any(|k| first.is_keyword(k))
        {
            return None;
        }
        let toks: Vec<Token<'_>> = if first.is_keyword("declare") {
            std::iter::once(first).chain(lexer.take(1)).collect()
        } else {
            std::iter::once(first).chain(lexer).collect()
        };
        let first = toks.first()?;
        if first.is_keyword("declare") {
            return Some(CursorStatement::Declare(ident(toks.get(1)?)?));
        }
        if first.is_keyword("close") {
            let t = toks.get(1)?;
            if t.is_keyword("all") && toks.len() == 2 {
                return Some(CursorStatement::CloseAll);
            }
            return Some(CursorStatement::Use(ident(t)?));
        }
        if first.is_keyword("fetch") || first.is_keyword("move") {
            // The cursor's name comes last, after any direction and FROM/IN.
            return Some(CursorStatement::Use(ident(toks.last()?)?));
        }
        None
    }
}

/// `LISTEN` or `UNLISTEN`, with the channel's name as the server keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenCommand {
    /// `LISTEN channel`.
    Listen(String),
    /// `UNLISTEN channel`.
    Unlisten(String),
    /// `UNLISTEN *`.
    UnlistenAll,
}

impl ListenCommand {
    /// Recognises one LISTEN or UNLISTEN statement.
    pub fn parse(stmt: &str) -> Option<ListenCommand> {
        let toks: Vec<Token<'_>> = Lexer::new(stmt)
            .filter(|t| t.kind != TokenKind::BlockComment && t.kind != TokenKind::Semicolon)
            .take(3)
            .collect();
        let [first, second] = toks.as_slice() else {
            return None;
        };
        if first.is_keyword("listen") {
            Some(ListenCommand::Listen(ident(second)?))
        } else if first.is_keyword("unlisten") {
            if second.is_punct("*") {
                Some(ListenCommand::UnlistenAll)
            } else {
                Some(ListenCommand::Unlisten(ident(second)?))
            }
        } else {
            None
        }
    }

    /// The command tag Postgres answers it with.
    pub fn tag(&self) -> &'static str {
        match self {
            ListenCommand::Listen(_) => "LISTEN",
            _ => "UNLISTEN",
        }
    }
}

/// `name` quoted as an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A `DECLARE ... CURSOR FOR query` taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declare {
    /// The cursor's name as the server keeps it.
    pub name: String,
    /// `BINARY`: rows in binary format.
    pub binary: bool,
    /// `SCROLL` (backward fetches).
    pub scroll: bool,
    /// `WITH HOLD` (outlives its transaction).
    pub hold: bool,
    /// The query's text.
    pub query: String,
}

impl Declare {
    /// Takes `DECLARE name [BINARY] [ASENSITIVE | INSENSITIVE] [[NO] SCROLL]
    /// CURSOR [{WITH | WITHOUT} HOLD] FOR query` apart.
    pub fn parse(stmt: &str) -> Option<Declare> {
        let toks: Vec<Token<'_>> = Lexer::new(stmt)
            .filter(|t| t.kind != TokenKind::BlockComment)
            .collect();
        if !toks.first()?.is_keyword("declare") {
            return None;
        }
        let name = ident(toks.get(1)?)?;
        let (mut binary, mut scroll, mut hold) = (false, false, false);
        let mut i = 2;
        loop {
            let t = toks.get(i)?;
            if t.is_keyword("for") {
                let query = stmt[toks.get(i + 1)?.offset..]
                    .trim()
                    .trim_end_matches(';')
                    .trim_end()
                    .to_owned();
                return Some(Declare {
                    name,
                    binary,
                    scroll,
                    hold,
                    query,
                });
            }
            if t.is_keyword("binary") {
                binary = true;
            } else if t.is_keyword("scroll") {
                scroll = !toks[i - 1].is_keyword("no");
            } else if t.is_keyword("with") && toks.get(i + 1).is_some_and(|h| h.is_keyword("hold"))
            {
                hold = true;
            }
            i += 1;
        }
    }
}

/// How many rows a `FETCH` or `MOVE` asks for, going forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchCount {
    /// This many (`NEXT` is 1).
    Rows(u64),
    /// `ALL`.
    All,
    /// A direction that goes backward or jumps (`PRIOR`, `FIRST`, `LAST`,
    /// `ABSOLUTE`, `RELATIVE`, `BACKWARD`, a negative count).
    NotForward,
}

/// The count of a `FETCH` or `MOVE` statement.
pub fn fetch_count(stmt: &str) -> Option<FetchCount> {
    let toks: Vec<Token<'_>> = Lexer::new(stmt)
        .filter(|t| t.kind != TokenKind::BlockComment && t.kind != TokenKind::Semicolon)
        .collect();
    let first = toks.first()?;
    if !(first.is_keyword("fetch") || first.is_keyword("move")) {
        return None;
    }
    // Tokens between the verb and [FROM|IN] name.
    let mut end = toks.len().checked_sub(1)?;
    if end >= 2 && (toks[end - 1].is_keyword("from") || toks[end - 1].is_keyword("in")) {
        end -= 1;
    }
    let words = &toks[1..end];
    let number = |t: &Token<'_>| t.text.parse::<u64>().ok();
    Some(match words {
        [] => FetchCount::Rows(1),
        [w] if w.is_keyword("next") => FetchCount::Rows(1),
        [w] if w.is_keyword("all") => FetchCount::All,
        [n] if number(n).is_some() => FetchCount::Rows(number(n)?),
        [w] if w.is_keyword("forward") => FetchCount::Rows(1),
        [w, a] if w.is_keyword("forward") && a.is_keyword("all") => FetchCount::All,
        [w, n] if w.is_keyword("forward") && number(n).is_some() => FetchCount::Rows(number(n)?),
        _ => FetchCount::NotForward,
    })
}

/// `SAVEPOINT name` for a name as the server keeps it, quoted.
pub fn savepoint_statement(name: &str) -> String {
    format!("SAVEPOINT {}", quote_ident(name))
}

/// Whether a statement may leave state in the server session that lasts
/// past its transaction and that a pooler cannot replay on another
/// connection or undo selectively: SQL `PREPARE`, `LISTEN`, `DECLARE ...
/// WITH HOLD`, temporary objects, `LOAD`, session advisory locks,
/// `set_config` (which may change the role), and `DO` blocks (which may run
/// any of these). A connection that ran one must be cleaned (`DISCARD ALL`)
/// before another client uses it. Errs towards true.
pub fn leaves_session_state(stmt: &str) -> bool {
    let lower = stmt.to_ascii_lowercase();
    if lower.contains("set_config") || lower.contains("advisory_lock") {
        return true;
    }
    let words: Vec<String> = Lexer::new(stmt)
        .filter(|t| t.kind == TokenKind::Word)
        .take(4)
        .map(|t| t.text.to_ascii_lowercase())
        .collect();
    let w = |i: usize| words.get(i).map(String::as_str);
    match w(0) {
        Some("prepare") => w(1) != Some("transaction"),
        Some("listen" | "load" | "do") => true,
        Some("declare") => lower.contains("hold"),
        Some("create") => {
            matches!(
                (w(1), w(2)),
                (Some("temp" | "temporary"), _)
                    | (Some("global" | "local"), Some("temp" | "temporary"))
                    | (Some("or"), _)
            ) && lower.contains("temp")
        }
        _ => false,
    }
}

fn ident(t: &Token<'_>) -> Option<String> {
    match t.kind {
        TokenKind::Word => Some(t.text.to_ascii_lowercase()),
        TokenKind::QuotedIdent => t.quoted_body().map(|b| b.replace("\"\"", "\"")),
        _ => None,
    }
}

/// Reads a possibly dotted parameter name starting at `toks[i]`; returns it and the next index.
fn dotted_name(toks: &[Token<'_>], mut i: usize) -> Option<(String, usize)> {
    let mut name = ident(toks.get(i)?)?;
    i += 1;
    while toks.get(i).is_some_and(|t| t.is_punct(".")) {
        name.push('.');
        name.push_str(&ident(toks.get(i + 1)?)?);
        i += 2;
    }
    Some((name, i))
}

impl SessionCommand {
    /// Recognises one statement (no trailing semicolon); `None` if it does not
    /// change session state this way.
    pub fn parse(stmt: &str) -> Option<SessionCommand> {
        let toks: Vec<Token<'_>> = Lexer::new(stmt)
            .filter(|t| t.kind != TokenKind::BlockComment && t.kind != TokenKind::Semicolon)
            .collect();
        let first = toks.first()?;
        if first.is_keyword("set") {
            Self::parse_set(stmt, &toks)
        } else if first.is_keyword("reset") {
            let second = toks.get(1)?;
            if second.is_keyword("all") && toks.len() == 2 {
                return Some(SessionCommand::ResetAll);
            }
            let name = match (second, toks.get(2)) {
                (s, Some(z)) if s.is_keyword("time") && z.is_keyword("zone") => "timezone".into(),
                (s, Some(a)) if s.is_keyword("session") && a.is_keyword("authorization") => {
                    "session_authorization".into()
                }
                _ => dotted_name(&toks, 1)?.0,
            };
            Some(SessionCommand::Reset { name })
        } else if first.is_keyword("discard") {
            toks.get(1)
                .filter(|t| t.is_keyword("all") && toks.len() == 2)
                .map(|_| SessionCommand::DiscardAll)
        } else if first.is_keyword("deallocate") {
            let mut i = 1;
            if toks.get(i).is_some_and(|t| t.is_keyword("prepare")) {
                i += 1;
            }
            let t = toks.get(i)?;
            if t.is_keyword("all") {
                Some(SessionCommand::Deallocate(None))
            } else {
                Some(SessionCommand::Deallocate(Some(ident(t)?)))
            }
        } else {
            None
        }
    }

    fn parse_set(stmt: &str, toks: &[Token<'_>]) -> Option<SessionCommand> {
        let mut i = 1;
        let mut local = false;
        match toks.get(i) {
            Some(t) if t.is_keyword("local") => {
                local = true;
                i += 1;
            }
            Some(t) if t.is_keyword("session") => {
                let next = toks.get(i + 1)?;
                if next.is_keyword("characteristics") {
                    let statement = stmt.trim().to_owned();
                    return Some(SessionCommand::Set {
                        name: "session characteristics".into(),
                        value: SetValue {
                            text: stmt[next.offset..].trim().to_owned(),
                        },
                        statement,
                    });
                }
                if !next.is_keyword("authorization") {
                    i += 1;
                }
            }
            _ => {}
        }
        let head = toks.get(i)?;
        // Transaction-scoped forms are not session state.
        if head.is_keyword("transaction") || head.is_keyword("constraints") {
            return None;
        }
        let (name, value_start) = if head.is_keyword("time") && toks.get(i + 1)?.is_keyword("zone")
        {
            ("timezone".to_owned(), toks.get(i + 2)?.offset)
        } else if head.is_keyword("schema") {
            ("search_path".to_owned(), toks.get(i + 1)?.offset)
        } else if head.is_keyword("names") {
            ("client_encoding".to_owned(), toks.get(i + 1)?.offset)
        } else if head.is_keyword("role") {
            ("role".to_owned(), toks.get(i + 1)?.offset)
        } else if head.is_keyword("session") && toks.get(i + 1)?.is_keyword("authorization") {
            ("session_authorization".to_owned(), toks.get(i + 2)?.offset)
        } else {
            let (name, j) = dotted_name(toks, i)?;
            let sep = toks.get(j)?;
            if !(sep.is_keyword("to") || sep.is_punct("=")) {
                return None;
            }
            (name, toks.get(j + 1)?.offset)
        };
        let value = SetValue {
            text: stmt[value_start..]
                .trim()
                .trim_end_matches(';')
                .trim_end()
                .to_owned(),
        };
        if local {
            return Some(SessionCommand::SetLocal { name, value });
        }
        Some(SessionCommand::Set {
            name,
            value,
            statement: stmt.trim().trim_end_matches(';').trim_end().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fuzzing found it: an unterminated quoted identifier ending inside a
    /// multi-byte character panicked where its name was read.
    #[test]
    fn unterminated_quoted_identifiers_do_not_panic() {
        for stmt in [
            "SET \"\u{e9}",
            "DEALLOCATE \"\u{e9}",
            "RESET \"\u{e9}",
            "LISTEN \"\u{e9}",
            "CLOSE \"\u{e9}",
        ] {
            let _ = SessionCommand::parse(stmt);
            let _ = leaves_session_state(stmt);
        }
    }

    fn set(stmt: &str) -> (String, String) {
        match SessionCommand::parse(stmt) {
            Some(SessionCommand::Set { name, value, .. }) => (name, value.text),
            other => panic!("{stmt}: {other:?}"),
        }
    }

    #[test]
    fn recognises_set_forms() {
        assert_eq!(
            set("SET search_path TO a, \"B\""),
            ("search_path".into(), "a, \"B\"".into())
        );
        assert_eq!(
            set("set SESSION TimeZone = 'UTC'"),
            ("timezone".into(), "'UTC'".into())
        );
        assert_eq!(
            set("SET TIME ZONE 'Europe/Paris'"),
            ("timezone".into(), "'Europe/Paris'".into())
        );
        assert_eq!(
            set("SET shardgate.consistency = strong"),
            ("shardgate.consistency".into(), "strong".into())
        );
        assert_eq!(set("SET SCHEMA 'x'"), ("search_path".into(), "'x'".into()));
        assert_eq!(set("SET ROLE app"), ("role".into(), "app".into()));
        assert_eq!(
            set("/* c */ SET application_name TO 'a;b'"),
            ("application_name".into(), "'a;b'".into())
        );
        assert!(matches!(
            SessionCommand::parse("SET LOCAL x = 1"),
            Some(SessionCommand::SetLocal { .. })
        ));
        assert_eq!(
            SessionCommand::parse("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            None
        );
        assert_eq!(SessionCommand::parse("SELECT 1"), None);
    }

    #[test]
    fn recognises_reset_discard_deallocate() {
        assert_eq!(
            SessionCommand::parse("RESET ALL"),
            Some(SessionCommand::ResetAll)
        );
        assert_eq!(
            SessionCommand::parse("reset Search_Path"),
            Some(SessionCommand::Reset {
                name: "search_path".into()
            })
        );
        assert_eq!(
            SessionCommand::parse("DISCARD ALL"),
            Some(SessionCommand::DiscardAll)
        );
        assert_eq!(SessionCommand::parse("DISCARD PLANS"), None);
        assert_eq!(
            SessionCommand::parse("DEALLOCATE PREPARE \"_pg3_1\""),
            Some(SessionCommand::Deallocate(Some("_pg3_1".into())))
        );
        assert_eq!(
            SessionCommand::parse("deallocate all"),
            Some(SessionCommand::Deallocate(None))
        );
    }

    #[test]
    fn statements_that_leave_session_state() {
        for stmt in [
            "PREPARE q AS SELECT 1",
            "LISTEN chan",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "CREATE TEMP TABLE t (x int)",
            "create global temporary table t (x int)",
            "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
            "SELECT set_config('role', 'r', false)",
            "SELECT pg_advisory_lock(1)",
            "SELECT pg_try_advisory_lock(1)",
            "DO $$ BEGIN EXECUTE 'SET ROLE r'; END $$",
            "LOAD 'auto_explain'",
        ] {
            assert!(leaves_session_state(stmt), "{stmt}");
        }
        for stmt in [
            "PREPARE TRANSACTION 'x'",
            "DECLARE c CURSOR FOR SELECT 1",
            "CREATE TABLE t (x int)",
            "SELECT pg_advisory_xact_lock(1)",
            "SELECT 1",
            "SET search_path TO a",
        ] {
            assert!(!leaves_session_state(stmt), "{stmt}");
        }
    }

    #[test]
    fn recognises_savepoint_statements() {
        use SavepointCommand::*;
        let p = SavepointCommand::parse;
        assert_eq!(p("SAVEPOINT a"), Some(Savepoint("a".into())));
        assert_eq!(p("savepoint \"My SP\";"), Some(Savepoint("My SP".into())));
        assert_eq!(p("ROLLBACK TO SAVEPOINT A"), Some(RollbackTo("a".into())));
        assert_eq!(p("rollback work to b"), Some(RollbackTo("b".into())));
        assert_eq!(
            p("ROLLBACK TRANSACTION TO SAVEPOINT c"),
            Some(RollbackTo("c".into()))
        );
        assert_eq!(p("RELEASE SAVEPOINT d"), Some(Release("d".into())));
        assert_eq!(p("release e"), Some(Release("e".into())));
        assert_eq!(p("ROLLBACK"), None);
        assert_eq!(p("SAVEPOINT"), None);
        assert_eq!(p("SELECT 1"), None);
        assert_eq!(
            savepoint_statement("My \"SP\""),
            "SAVEPOINT \"My \"\"SP\"\"\""
        );
    }

    #[test]
    fn recognises_cursor_statements() {
        use CursorStatement::*;
        let p = CursorStatement::parse;
        assert_eq!(
            p("DECLARE \"Cur\" BINARY NO SCROLL CURSOR WITH HOLD FOR SELECT 1"),
            Some(Declare("Cur".into()))
        );
        assert_eq!(p("FETCH FORWARD 7 FROM c1"), Some(Use("c1".into())));
        assert_eq!(p("fetch all in C2;"), Some(Use("c2".into())));
        assert_eq!(p("FETCH c3"), Some(Use("c3".into())));
        assert_eq!(p("MOVE ABSOLUTE 5 IN c4"), Some(Use("c4".into())));
        assert_eq!(p("CLOSE c5"), Some(Use("c5".into())));
        assert_eq!(p("CLOSE ALL"), Some(CloseAll));
        assert_eq!(p("SELECT 1"), None);
    }

    #[test]
    fn recognises_listen_statements() {
        use ListenCommand::*;
        assert_eq!(
            ListenCommand::parse("LISTEN Chan"),
            Some(Listen("chan".into()))
        );
        assert_eq!(
            ListenCommand::parse("listen \"Chan\";"),
            Some(Listen("Chan".into()))
        );
        assert_eq!(
            ListenCommand::parse("UNLISTEN c"),
            Some(Unlisten("c".into()))
        );
        assert_eq!(ListenCommand::parse("UNLISTEN *"), Some(UnlistenAll));
        assert_eq!(ListenCommand::parse("LISTEN"), None);
        assert_eq!(ListenCommand::parse("NOTIFY c"), None);
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn takes_declare_and_fetch_apart() {
        let d = Declare::parse("DECLARE \"C\" BINARY NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1;")
            .unwrap();
        assert_eq!(
            d,
            Declare {
                name: "C".into(),
                binary: true,
                scroll: false,
                hold: false,
                query: "SELECT 1".into()
            }
        );
        let d =
            Declare::parse("declare c scroll cursor with hold for select * from t where a = $1")
                .unwrap();
        assert!(d.scroll && d.hold && !d.binary);
        assert_eq!(d.query, "select * from t where a = $1");
        assert_eq!(Declare::parse("SELECT 1"), None);
        use FetchCount::*;
        for (sql, n) in [
            ("FETCH c", Rows(1)),
            ("FETCH NEXT FROM c", Rows(1)),
            ("fetch 7 from c", Rows(7)),
            ("FETCH FORWARD 7 FROM \"c\"", Rows(7)),
            ("FETCH ALL IN c", All),
            ("FETCH FORWARD ALL FROM c", All),
            ("MOVE 3 IN c", Rows(3)),
            ("FETCH PRIOR FROM c", NotForward),
            ("FETCH BACKWARD 2 FROM c", NotForward),
            ("FETCH ABSOLUTE 1 FROM c", NotForward),
            ("FETCH -1 FROM c", NotForward),
        ] {
            assert_eq!(fetch_count(sql), Some(n), "{sql}");
        }
    }

    #[test]
    fn unquoting() {
        let v = SetValue {
            text: "'it''s'".into(),
        };
        assert_eq!(v.unquoted(), "it's");
    }
}

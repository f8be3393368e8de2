//! Statement analysis for shardgate: everything that decides where a statement
//! goes, as pure functions of the SQL text and session state (no sockets).

pub mod lexer;
pub mod session_cmd;

pub use lexer::{Lexer, Token, TokenKind};
pub use session_cmd::{SessionCommand, SetValue};

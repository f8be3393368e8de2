//! A minimal protocol-level client: it sends any bytes and shows every message
//! the proxy answers with, so tests can check what drivers hide (transaction
//! status, duplicated errors, message order, malformed input).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One backend message: tag and payload.
pub type Msg = (u8, Vec<u8>);

/// A logged-in raw connection (trust authentication).
pub struct Raw {
    /// The socket, for tests that write or read bytes themselves.
    pub s: TcpStream,
}

impl Raw {
    /// Logs in as `user` to `database` and reads up to ReadyForQuery.
    pub fn connect(port: u16, user: &str, database: &str) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the proxy");
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let mut raw = Raw { s };
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        for (k, v) in [("user", user), ("database", database)] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        raw.s.write_all(&msg).unwrap();
        for (tag, payload) in raw.until_ready() {
            match tag {
                b'E' => panic!("login failed: {}", error_text(&payload)),
                b'R' => assert_eq!(&payload[..4], &[0, 0, 0, 0], "unexpected auth request"),
                _ => {}
            }
        }
        raw
    }

    /// Reads one message.
    pub fn read_msg(&mut self) -> Msg {
        let mut head = [0u8; 5];
        self.s.read_exact(&mut head).expect("read from the proxy");
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut payload = vec![0u8; len - 4];
        self.s
            .read_exact(&mut payload)
            .expect("read from the proxy");
        (head[0], payload)
    }

    /// Reads messages up to and including the first with tag `last`.
    pub fn until(&mut self, last: u8) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let m = self.read_msg();
            let done = m.0 == last;
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// Reads messages up to and including ReadyForQuery.
    pub fn until_ready(&mut self) -> Vec<Msg> {
        self.until(b'Z')
    }

    /// The tags of the messages up to and including the first with tag
    /// `last`; an ErrorResponse among them fails the test with its text.
    pub fn tags_until_ok(&mut self, last: u8) -> Vec<u8> {
        self.until(last)
            .iter()
            .map(|(t, p)| {
                assert_ne!(*t, b'E', "error: {}", error_text(p));
                *t
            })
            .collect()
    }

    /// Sends raw message bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Reads `n` messages.
    pub fn read_n(&mut self, n: usize) -> Vec<Msg> {
        (0..n).map(|_| self.read_msg()).collect()
    }

    /// Sends a simple Query and returns everything up to ReadyForQuery.
    pub fn query(&mut self, sql: &str) -> Vec<Msg> {
        self.send(&query_msg(sql));
        self.until_ready()
    }
}

/// A frontend message: tag, length, body.
pub fn frontend_msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A simple Query message.
pub fn query_msg(sql: &str) -> Vec<u8> {
    frontend_msg(b'Q', format!("{sql}\0").as_bytes())
}

/// Transaction status of the final ReadyForQuery.
pub fn status(msgs: &[Msg]) -> u8 {
    let (t, p) = msgs.last().expect("messages");
    assert_eq!(*t, b'Z');
    p[0]
}

/// SQLSTATE and message of an ErrorResponse payload.
pub fn error_text(p: &[u8]) -> String {
    format!("{} {}", field(p, b'C'), field(p, b'M'))
}

/// One field of an ErrorResponse or NoticeResponse payload.
pub fn field(p: &[u8], code: u8) -> String {
    p.split(|b| *b == 0)
        .find(|f| f.first() == Some(&code))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
        .unwrap_or_default()
}

pub fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

pub fn parse_msg(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&0i16.to_be_bytes());
    frontend_msg(b'P', &b)
}

/// Bind with text parameters and text results.
pub fn bind_msg(portal: &str, statement: &str, params: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, statement);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(p.len() as i32).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    frontend_msg(b'B', &b)
}

pub fn execute_msg(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&max_rows.to_be_bytes());
    frontend_msg(b'E', &b)
}

pub fn describe_statement_msg(name: &str) -> Vec<u8> {
    let mut b = vec![b'S'];
    cstr(&mut b, name);
    frontend_msg(b'D', &b)
}

/// The first column of each DataRow, as text.
pub fn first_column(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, p)| {
            let len = i32::from_be_bytes([p[2], p[3], p[4], p[5]]) as usize;
            String::from_utf8_lossy(&p[6..6 + len]).into_owned()
        })
        .collect()
}

/// SQLSTATEs of the ErrorResponses in `msgs`.
pub fn errors(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, p)| field(p, b'C'))
        .collect()
}

pub fn data_rows(msgs: &[Msg]) -> usize {
    msgs.iter().filter(|(t, _)| *t == b'D').count()
}

/// A raw query that must succeed.
pub fn raw_ok(raw: &mut Raw, sql: &str) -> Vec<Msg> {
    let msgs = raw.query(sql);
    let errs: Vec<String> = msgs
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, p)| error_text(p))
        .collect();
    assert!(errs.is_empty(), "{sql}: {errs:?}");
    msgs
}

/// Sync.
pub fn sync_msg() -> Vec<u8> {
    frontend_msg(b'S', &[])
}

/// Flush.
pub fn flush_msg() -> Vec<u8> {
    frontend_msg(b'H', &[])
}

/// Describe of a portal.
pub fn describe_portal_msg(name: &str) -> Vec<u8> {
    let mut b = vec![b'P'];
    cstr(&mut b, name);
    frontend_msg(b'D', &b)
}

/// Close of a portal (`b'P'`) or statement (`b'S'`).
pub fn close_msg(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    frontend_msg(b'C', &b)
}

/// The tags of `msgs`, as a string of characters (`"12CZ"`).
pub fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|(t, _)| *t as char).collect()
}

/// The command tags of the CommandComplete messages in `msgs`.
pub fn command_tags(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|(t, _)| *t == b'C')
        .map(|(_, p)| String::from_utf8_lossy(&p[..p.len() - 1]).into_owned())
        .collect()
}

//! The fault proxy's own behaviour, in front of a plain TCP echo server.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use shardgate_harness::{ConnFault, Direction, FaultProxy, NewConnections};

/// An echo server on a free port; returns its address.
fn echo_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn connect(proxy: &FaultProxy) -> TcpStream {
    let s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends `msg` and reads the echo of the same length.
fn echo(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    Ok(got)
}

/// What a read of at most `wait` yields: `Some(bytes)` (empty at EOF) or `None` (nothing).
fn read_within(s: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 4096];
    let got = match s.read(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(_) => Some(Vec::new()),
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    got
}

#[test]
fn passes_through_and_adds_latency() {
    let proxy = FaultProxy::start(&echo_server()).unwrap();
    let mut s = connect(&proxy);
    assert_eq!(echo(&mut s, b"hello").unwrap(), b"hello");
    proxy.set_latency(Duration::from_millis(200));
    let t = Instant::now();
    assert_eq!(echo(&mut s, b"slow").unwrap(), b"slow");
    // Both directions are delayed.
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    proxy.heal();
    assert_eq!(echo(&mut s, b"fast").unwrap(), b"fast");
    assert_eq!(proxy.open_connections(), 1);
}

#[test]
fn stall_holds_bytes_until_healed() {
    let proxy = FaultProxy::start(&echo_server()).unwrap();
    let mut s = connect(&proxy);
    assert_eq!(echo(&mut s, b"a").unwrap(), b"a");
    proxy.stall();
    s.write_all(b"held").unwrap();
    assert_eq!(read_within(&mut s, Duration::from_millis(500)), None);
    // New connections are accepted but get nothing either.
    let mut fresh = connect(&proxy);
    fresh.write_all(b"x").unwrap();
    assert_eq!(read_within(&mut fresh, Duration::from_millis(300)), None);
    proxy.heal();
    let mut got = vec![0u8; 4];
    s.read_exact(&mut got).unwrap();
    assert_eq!(got, b"held");
    assert_eq!(
        read_within(&mut fresh, Duration::from_secs(5)).unwrap(),
        b"x"
    );
}

#[test]
fn cut_closes_and_refuses_or_accepts_and_closes() {
    let proxy = FaultProxy::start(&echo_server()).unwrap();
    let mut s = connect(&proxy);
    assert_eq!(echo(&mut s, b"a").unwrap(), b"a");
    proxy.cut(NewConnections::Refuse);
    assert_eq!(read_within(&mut s, Duration::from_secs(5)).unwrap(), b"");
    let refused = (0..50).any(|_| {
        thread::sleep(Duration::from_millis(20));
        TcpStream::connect(proxy.addr()).is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused)
    });
    assert!(refused, "new connections are refused");
    proxy.cut(NewConnections::AcceptAndClose);
    let start = Instant::now();
    let mut closed = loop {
        match TcpStream::connect(proxy.addr()) {
            Ok(c) => break c,
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("not accepted: {e}"),
        }
    };
    assert_eq!(
        read_within(&mut closed, Duration::from_secs(5)).unwrap(),
        b""
    );
    proxy.heal();
    let mut again = connect(&proxy);
    assert_eq!(echo(&mut again, b"back").unwrap(), b"back");
}

#[test]
fn drops_one_direction() {
    let proxy = FaultProxy::start(&echo_server()).unwrap();
    let mut s = connect(&proxy);
    proxy.drop_direction(Direction::ToClient);
    s.write_all(b"lost").unwrap();
    assert_eq!(read_within(&mut s, Duration::from_millis(500)), None);
    proxy.heal();
    assert_eq!(echo(&mut s, b"kept").unwrap(), b"kept");
}

#[test]
fn pattern_stalls_or_cuts_only_its_connection() {
    let proxy = FaultProxy::start(&echo_server()).unwrap();
    let mut victim = connect(&proxy);
    let mut other = connect(&proxy);
    // What went through before the watch was armed does not fire it.
    assert_eq!(
        echo(&mut victim, b"COMMIT PREPARED 'a'").unwrap(),
        b"COMMIT PREPARED 'a'"
    );
    proxy.on_match(Direction::ToServer, b"COMMIT PREPARED", ConnFault::Stall);
    assert_eq!(echo(&mut victim, b"SELECT 1").unwrap(), b"SELECT 1");
    assert_eq!(proxy.fired(), 0);
    proxy.disarm();
    proxy.on_match(Direction::ToServer, b"COMMIT PREPARED", ConnFault::Stall);
    victim.write_all(b"xx COMMIT PRE").unwrap();
    assert_eq!(
        read_within(&mut victim, Duration::from_secs(5)).unwrap(),
        b"xx COMMIT PRE"
    );
    // The pattern split across two writes is still seen.
    victim.write_all(b"PARED 'g'").unwrap();
    assert_eq!(read_within(&mut victim, Duration::from_millis(500)), None);
    assert_eq!(proxy.fired(), 1);
    assert_eq!(
        echo(&mut other, b"COMMIT PREPARED").unwrap(),
        b"COMMIT PREPARED",
        "one-shot"
    );
    proxy.heal();
    assert_eq!(
        read_within(&mut victim, Duration::from_millis(300)),
        None,
        "stays stalled"
    );
    proxy.cut_open();
    assert_eq!(
        read_within(&mut victim, Duration::from_secs(5)).unwrap(),
        b""
    );

    proxy.on_match(Direction::ToClient, b"boom", ConnFault::Cut);
    let mut cut = connect(&proxy);
    assert_eq!(echo(&mut cut, b"fine").unwrap(), b"fine");
    cut.write_all(b"boom").unwrap();
    assert_eq!(read_within(&mut cut, Duration::from_secs(5)).unwrap(), b"");
}

//! A TCP fault proxy for loopback tests: sits between a client (shardgate) and a server
//! (a Postgres node) and injects network faults at runtime.
//!
//! The proxy runs on its own thread with its own tokio runtime, so it can be driven from
//! synchronous and asynchronous tests alike; dropping it closes every connection.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::error::{HarnessError, Result};

/// How often a refused listen address is tried again when it is opened anew.
const REBIND_ATTEMPTS: usize = 50;
/// Read size of one forwarded chunk.
const CHUNK: usize = 16 * 1024;

/// One direction of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client (shardgate) to the server (Postgres).
    ToServer,
    /// From the server back to the client.
    ToClient,
}

/// What happens to new connection attempts while connections are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewConnections {
    /// The listening socket is closed: connecting fails with "connection refused".
    Refuse,
    /// Connections are accepted and closed at once.
    AcceptAndClose,
}

/// What a matched pattern ([`FaultProxy::on_match`]) does to the connection it was seen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnFault {
    /// The connection forwards nothing more in either direction (the matching bytes
    /// included) until it is cut; it stays open.
    Stall,
    /// The connection is closed before the matching bytes are forwarded.
    Cut,
}

/// The proxy-wide fault in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Stall,
    Cut(NewConnections),
    Drop(Direction),
}

/// A one-shot byte pattern watch.
#[derive(Debug, Clone)]
struct Trigger {
    direction: Direction,
    pattern: Vec<u8>,
    fault: ConnFault,
}

/// Shared state, published through a watch channel so that every pump wakes on a change.
#[derive(Debug, Clone)]
struct State {
    mode: Mode,
    latency: Duration,
    /// Connections opened before this epoch are closed.
    cut_epoch: u64,
    triggers: Vec<Trigger>,
    shutdown: bool,
}

/// A TCP proxy on 127.0.0.1 in front of one server address, with faults switched at
/// runtime: latency, a stall (accept and forward nothing), cutting every connection,
/// dropping one direction, and faults on the connection whose bytes match a pattern.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    state: Arc<watch::Sender<State>>,
    counters: Arc<Counters>,
    thread: Option<thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Counters {
    open: AtomicUsize,
    accepted: AtomicUsize,
    fired: AtomicUsize,
}

impl FaultProxy {
    /// Starts a pass-through proxy on a free 127.0.0.1 port forwarding to `target`
    /// (`"127.0.0.1:<port>"`, e.g. [`crate::Node::addr`]).
    pub fn start(target: &str) -> Result<FaultProxy> {
        let target: SocketAddr = target
            .parse()
            .map_err(|e| HarnessError::Failed(format!("fault proxy target {target:?}: {e}")))?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| HarnessError::io("fault proxy: bind 127.0.0.1", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| HarnessError::io("fault proxy: set_nonblocking", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| HarnessError::io("fault proxy: local_addr", e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| HarnessError::io("fault proxy: runtime", e))?;
        let (state, _) = watch::channel(State {
            mode: Mode::Pass,
            latency: Duration::ZERO,
            cut_epoch: 0,
            triggers: Vec::new(),
            shutdown: false,
        });
        let state = Arc::new(state);
        let counters = Arc::new(Counters::default());
        let (st, ct) = (state.clone(), counters.clone());
        let thread = thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => accept_loop(listener, addr, target, st, ct).await,
                        Err(e) => eprintln!("fault proxy {addr}: {e}"),
                    }
                });
            })
            .map_err(|e| HarnessError::io("fault proxy: spawn thread", e))?;
        Ok(FaultProxy {
            addr,
            target,
            state,
            counters,
            thread: Some(thread),
        })
    }

    /// `"127.0.0.1:<port>"` to connect to instead of the target.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// The port the proxy listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address connections are forwarded to.
    pub fn target(&self) -> String {
        self.target.to_string()
    }

    /// Delays every forwarded chunk, in both directions, by `latency` (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        self.state.send_modify(|s| s.latency = latency);
    }

    /// Stalls: open and new connections stay open (new ones are accepted) but nothing is
    /// read or forwarded in either direction until [`FaultProxy::heal`].
    pub fn stall(&self) {
        self.state.send_modify(|s| s.mode = Mode::Stall);
    }

    /// Closes every open connection; new ones are refused or accepted and closed until
    /// [`FaultProxy::heal`].
    pub fn cut(&self, new: NewConnections) {
        self.state.send_modify(|s| {
            s.mode = Mode::Cut(new);
            s.cut_epoch += 1;
        });
    }

    /// Closes every open connection once; new connections are served as before.
    pub fn cut_open(&self) {
        self.state.send_modify(|s| s.cut_epoch += 1);
    }

    /// Reads and discards what flows in `direction` (the other direction still flows)
    /// until [`FaultProxy::heal`].
    pub fn drop_direction(&self, direction: Direction) {
        self.state.send_modify(|s| s.mode = Mode::Drop(direction));
    }

    /// Back to pass-through without latency: stalled connections forward what they held,
    /// new connections are accepted. Connections stalled by [`FaultProxy::on_match`] stay
    /// stalled (cut them with [`FaultProxy::cut_open`]); pending patterns stay armed.
    pub fn heal(&self) {
        self.state.send_modify(|s| {
            s.mode = Mode::Pass;
            s.latency = Duration::ZERO;
        });
    }

    /// Arms a one-shot watch: the first connection whose bytes in `direction` contain
    /// `pattern` gets `fault` before those bytes are forwarded.
    pub fn on_match(&self, direction: Direction, pattern: &[u8], fault: ConnFault) {
        let trigger = Trigger {
            direction,
            pattern: pattern.to_vec(),
            fault,
        };
        self.state.send_modify(|s| s.triggers.push(trigger));
    }

    /// Removes every armed [`FaultProxy::on_match`] watch that has not fired.
    pub fn disarm(&self) {
        self.state.send_modify(|s| s.triggers.clear());
    }

    /// How many armed watches have fired so far.
    pub fn fired(&self) -> usize {
        self.counters.fired.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// Connections accepted since start (including ones closed at once).
    pub fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.send_modify(|s| {
            s.shutdown = true;
            s.cut_epoch += 1;
        });
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts connections while the mode allows and starts a pair of pumps for each.
async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    target: SocketAddr,
    state: Arc<watch::Sender<State>>,
    counters: Arc<Counters>,
) {
    let mut rx = state.subscribe();
    let mut listener = Some(listener);
    loop {
        let (mode, shutdown) = {
            let s = rx.borrow_and_update();
            (s.mode, s.shutdown)
        };
        if shutdown {
            return;
        }
        if mode == Mode::Cut(NewConnections::Refuse) {
            listener = None;
        } else if listener.is_none() {
            listener = rebind(addr).await;
        }
        let Some(l) = listener.as_ref() else {
            if rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        tokio::select! {
            accepted = l.accept() => {
                let Ok((client, _)) = accepted else { continue };
                counters.accepted.fetch_add(1, Ordering::SeqCst);
                if matches!(mode, Mode::Cut(_)) {
                    drop(client);
                    continue;
                }
                let epoch = rx.borrow().cut_epoch;
                tokio::spawn(connection(client, target, epoch, state.clone(), counters.clone()));
            }
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Opens the listen address again after a refusing cut.
async fn rebind(addr: SocketAddr) -> Option<TcpListener> {
    for _ in 0..REBIND_ATTEMPTS {
        match TcpListener::bind(addr).await {
            Ok(l) => return Some(l),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    eprintln!("fault proxy: cannot listen on {addr} again");
    None
}

/// One proxied connection: its flags, shared by its two pumps.
#[derive(Debug)]
struct Conn {
    epoch: u64,
    stalled: AtomicBool,
    closed: AtomicBool,
}

/// What a pump does with its next chunk.
enum Verdict {
    Forward(Duration),
    Discard,
    Hold,
    Close,
}

impl Conn {
    fn verdict(&self, s: &State, direction: Direction) -> Verdict {
        if s.shutdown || self.closed.load(Ordering::SeqCst) || s.cut_epoch > self.epoch {
            return Verdict::Close;
        }
        if self.stalled.load(Ordering::SeqCst) {
            return Verdict::Hold;
        }
        match s.mode {
            Mode::Pass => Verdict::Forward(s.latency),
            Mode::Stall => Verdict::Hold,
            Mode::Cut(_) => Verdict::Close,
            Mode::Drop(d) if d == direction => Verdict::Discard,
            Mode::Drop(_) => Verdict::Forward(s.latency),
        }
    }
}

async fn connection(
    client: TcpStream,
    target: SocketAddr,
    epoch: u64,
    state: Arc<watch::Sender<State>>,
    counters: Arc<Counters>,
) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    counters.open.fetch_add(1, Ordering::SeqCst);
    let conn = Arc::new(Conn {
        epoch,
        stalled: AtomicBool::new(false),
        closed: AtomicBool::new(false),
    });
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let to_server = Pump {
        direction: Direction::ToServer,
        conn: conn.clone(),
        state: state.clone(),
        counters: counters.clone(),
    };
    let to_client = Pump {
        direction: Direction::ToClient,
        ..to_server.clone()
    };
    tokio::join!(
        to_server.run(client_read, server_write),
        to_client.run(server_read, client_write)
    );
    counters.open.fetch_sub(1, Ordering::SeqCst);
}

/// Forwards one direction of a connection.
#[derive(Clone)]
struct Pump {
    direction: Direction,
    conn: Arc<Conn>,
    state: Arc<watch::Sender<State>>,
    counters: Arc<Counters>,
}

impl Pump {
    /// Runs until either side closes or a fault closes the connection; then marks the
    /// connection closed so the other direction ends too.
    async fn run(self, mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
        let _ = self.forward(&mut from, &mut to).await;
        self.conn.closed.store(true, Ordering::SeqCst);
        // Wake the other pump.
        self.state.send_modify(|_| {});
        let _ = to.shutdown().await;
    }

    async fn forward(&self, from: &mut OwnedReadHalf, to: &mut OwnedWriteHalf) -> io::Result<()> {
        let mut rx = self.state.subscribe();
        let mut buf = vec![0u8; CHUNK];
        // The end of the previous chunk, to find patterns split across chunks.
        let mut tail: Vec<u8> = Vec::new();
        loop {
            // Read only while this direction may forward.
            if let Verdict::Hold | Verdict::Close = self.verdict(&mut rx) {
                if self.wait_go(&mut rx).await.is_none() {
                    return Ok(());
                }
            }
            let n = tokio::select! {
                r = from.read(&mut buf) => r?,
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    continue;
                }
            };
            if n == 0 {
                return Ok(());
            }
            let chunk = &buf[..n];
            match self.check_triggers(&tail, chunk) {
                Some(ConnFault::Cut) => return Ok(()),
                Some(ConnFault::Stall) => self.conn.stalled.store(true, Ordering::SeqCst),
                None => {}
            }
            keep_tail(&mut tail, chunk);
            let Some(verdict) = self.wait_go(&mut rx).await else {
                return Ok(());
            };
            match verdict {
                Verdict::Forward(latency) => {
                    if !latency.is_zero() {
                        tokio::time::sleep(latency).await;
                    }
                    to.write_all(chunk).await?;
                }
                Verdict::Discard => {}
                Verdict::Hold | Verdict::Close => unreachable!("wait_go returns a go"),
            }
        }
    }

    fn verdict(&self, rx: &mut watch::Receiver<State>) -> Verdict {
        self.conn.verdict(&rx.borrow_and_update(), self.direction)
    }

    /// Waits while the connection is held; `None` when it is to be closed.
    async fn wait_go(&self, rx: &mut watch::Receiver<State>) -> Option<Verdict> {
        loop {
            match self.verdict(rx) {
                Verdict::Close => return None,
                Verdict::Hold => rx.changed().await.ok()?,
                go => return Some(go),
            }
        }
    }

    /// Fires (and removes) the first armed trigger of this direction whose pattern is in
    /// `tail` + `chunk`.
    fn check_triggers(&self, tail: &[u8], chunk: &[u8]) -> Option<ConnFault> {
        if self.state.borrow().triggers.is_empty() {
            return None;
        }
        let mut seen = tail.to_vec();
        seen.extend_from_slice(chunk);
        let mut fired = None;
        self.state.send_if_modified(|s| {
            let found = s.triggers.iter().position(|t| {
                // Only matches that end in this chunk: the tail is there
                // for a pattern split across the two, not to match again.
                let from = tail.len() - tail.len().min(t.pattern.len().saturating_sub(1));
                t.direction == self.direction && contains(&seen[from..], &t.pattern)
            });
            match found {
                Some(i) => {
                    fired = Some(s.triggers.remove(i).fault);
                    true
                }
                None => false,
            }
        });
        fired?;
        self.counters.fired.fetch_add(1, Ordering::SeqCst);
        fired
    }
}

/// Whether `pattern` occurs in `haystack`.
fn contains(haystack: &[u8], pattern: &[u8]) -> bool {
    !pattern.is_empty() && haystack.windows(pattern.len()).any(|w| w == pattern)
}

/// Keeps the last bytes of what was seen, enough for any pattern split across two chunks.
fn keep_tail(tail: &mut Vec<u8>, chunk: &[u8]) {
    const KEEP: usize = 256;
    tail.extend_from_slice(chunk);
    let excess = tail.len().saturating_sub(KEEP);
    tail.drain(..excess);
}

//! Every connected client, as the admin console and `KILL CLIENT` see it.
//! Sessions publish a few facts here (state, transaction, the server
//! connections they hold); nothing here is read on a session's hot path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use shardgate_router::Consistency;

/// What a client is doing, as PgBouncer names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Logged in, holding no server connection.
    Idle = 0,
    /// Holding a server connection.
    Active = 1,
    /// Waiting for a server connection (pool full or shard paused).
    Waiting = 2,
}

impl ClientState {
    /// `idle`, `active` or `waiting`.
    pub fn name(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
        }
    }

    fn from_u8(v: u8) -> ClientState {
        match v {
            1 => ClientState::Active,
            2 => ClientState::Waiting,
            _ => ClientState::Idle,
        }
    }
}

/// Why the proxy ended a client's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// `KILL CLIENT`.
    Killed,
    /// A reload removed the client's user.
    UserRemoved,
}

impl EndReason {
    /// The FATAL the client is sent.
    pub fn to_pg_error(self) -> shardgate_protocol::PgError {
        match self {
            EndReason::Killed => shardgate_protocol::PgError::fatal(
                "57P01",
                "terminating connection due to administrator command (KILL CLIENT)",
            ),
            EndReason::UserRemoved => shardgate_protocol::PgError::fatal(
                "57P01",
                "terminating connection: the user was removed from the configuration (RELOAD)",
            ),
        }
    }
}

/// A server connection a client holds now (its role and database are the
/// client's server role and database).
#[derive(Debug, Clone)]
pub struct ServerLink {
    /// `host:port` of its node.
    pub addr: Arc<str>,
    /// Backend process id.
    pub pid: i32,
    /// When it was opened.
    pub opened: Instant,
}

/// One connected client.
pub struct ClientInfo {
    /// Identifies the client in `shardgate.clients` and `KILL CLIENT`.
    pub id: u64,
    /// Login name.
    pub user: String,
    /// Database it asked for.
    pub database: String,
    /// Its address.
    pub peer: SocketAddr,
    /// When it connected.
    pub connect_time: SystemTime,
    /// Whether it uses TLS.
    pub tls: bool,
    /// `application_name` from its startup packet.
    pub application_name: String,
    state: AtomicU8,
    in_transaction: AtomicBool,
    /// The snapshot version the session routes by while it handles client
    /// input, 0 while it waits between transactions (docs/ARCHITECTURE.md
    /// §10: a move waits until no session routes by an older snapshot).
    snapshot_in_use: AtomicU64,
    /// The client's transaction touched rows a move relocates (cleared
    /// between transactions): a move's cutover waits until none has.
    touching_moves: AtomicBool,
    /// Set by [`ClientInfo::end`]: the session forwards nothing more.
    ended: AtomicBool,
    consistency: AtomicU8,
    end: Mutex<Option<EndReason>>,
    links: Mutex<Vec<ServerLink>>,
    /// The client's socket (its descriptor, not a second one: a proxy with
    /// 10,000 clients would need twice the descriptors): shutting down its
    /// read side makes the session see the client leave, wherever it is
    /// waiting. The session clears it ([`ClientInfo::forget_socket`]) before
    /// the socket closes, under this lock, so a descriptor number reused by
    /// another connection is never shut down.
    socket: Mutex<Option<std::os::fd::RawFd>>,
}

impl ClientInfo {
    /// What the client does now.
    pub fn state(&self) -> ClientState {
        ClientState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Records what the client does now.
    #[inline]
    pub fn set_state(&self, s: ClientState) {
        self.state.store(s as u8, Ordering::Relaxed);
    }

    /// Whether the client is inside a transaction.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction.load(Ordering::Relaxed)
    }

    /// Records whether the client is inside a transaction.
    #[inline]
    pub fn set_in_transaction(&self, on: bool) {
        self.in_transaction.store(on, Ordering::Relaxed);
    }

    /// Publishes the snapshot version the session routes by (0: none, it
    /// waits between transactions). Sequentially consistent: the session
    /// stores it and then reads the runtime's version, a move stores a new
    /// version and then reads this, so one of the two sees the other.
    #[inline]
    pub fn use_snapshot(&self, version: u64) {
        if self.snapshot_in_use.load(Ordering::Relaxed) != version {
            self.snapshot_in_use.store(version, Ordering::SeqCst);
        }
    }

    /// The snapshot version the session routes by (0: none).
    pub fn snapshot_in_use(&self) -> u64 {
        self.snapshot_in_use.load(Ordering::SeqCst)
    }

    /// Records whether a statement touching moving rows is in flight.
    #[inline]
    pub fn set_touching_moves(&self, on: bool) {
        if self.touching_moves.load(Ordering::Relaxed) != on {
            self.touching_moves.store(on, Ordering::SeqCst);
        }
    }

    /// Whether a statement touching moving rows is in flight.
    pub fn touching_moves(&self) -> bool {
        self.touching_moves.load(Ordering::SeqCst)
    }

    /// The client's read consistency now.
    pub fn consistency(&self) -> Consistency {
        match self.consistency.load(Ordering::Relaxed) {
            0 => Consistency::Strong,
            1 => Consistency::Bounded,
            2 => Consistency::Eventual,
            _ => Consistency::Session,
        }
    }

    /// Records the client's read consistency.
    pub fn set_consistency(&self, c: Consistency) {
        let v = match c {
            Consistency::Strong => 0,
            Consistency::Bounded => 1,
            Consistency::Eventual => 2,
            Consistency::Session => 3,
        };
        self.consistency.store(v, Ordering::Relaxed);
    }

    /// Why the proxy is ending this session, if it is.
    pub fn end_reason(&self) -> Option<EndReason> {
        *self.end.lock().expect("client end lock")
    }

    /// Ends the session: it sees its client leave at once, wherever it
    /// waits, and its server connections inside a transaction are closed
    /// (the servers roll back).
    pub fn end(&self, reason: EndReason) {
        self.end
            .lock()
            .expect("client end lock")
            .get_or_insert(reason);
        self.ended.store(true, Ordering::SeqCst);
        let socket = self.socket.lock().expect("client socket lock");
        if let Some(fd) = *socket {
            // SAFETY: `fd` is the client's open socket: the session clears
            // it under this lock before closing the socket.
            let sock = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let _ = socket2::SockRef::from(&sock).shutdown(std::net::Shutdown::Read);
        }
    }

    /// The session's socket is about to close: [`ClientInfo::end`] must not
    /// touch its descriptor any more.
    pub fn forget_socket(&self) {
        *self.socket.lock().expect("client socket lock") = None;
    }

    /// Whether the proxy ended the session ([`ClientInfo::end`]): input
    /// that arrives afterwards is not forwarded (a COMMIT sent after `KILL
    /// CLIENT` must not commit).
    #[inline]
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }

    /// The server connections the client holds now.
    pub fn links(&self) -> Vec<ServerLink> {
        self.links.lock().expect("client links lock").clone()
    }

    /// Records a server connection the client holds until the returned
    /// guard drops.
    pub fn link(self: &Arc<Self>, link: ServerLink) -> Linked {
        let pid = link.pid;
        let addr = link.addr.clone();
        self.links.lock().expect("client links lock").push(link);
        self.set_state(ClientState::Active);
        Linked {
            client: self.clone(),
            pid,
            addr,
        }
    }
}

/// A server connection recorded as held by a client; forgotten on drop.
pub struct Linked {
    client: Arc<ClientInfo>,
    pid: i32,
    addr: Arc<str>,
}

impl Drop for Linked {
    fn drop(&mut self) {
        let mut links = self.client.links.lock().expect("client links lock");
        if let Some(i) = links
            .iter()
            .position(|l| l.pid == self.pid && Arc::ptr_eq(&l.addr, &self.addr))
        {
            links.swap_remove(i);
        }
        if links.is_empty() {
            self.client.set_state(ClientState::Idle);
        }
    }
}

/// What a client is registered with.
pub struct NewClient<'a> {
    /// Login name.
    pub user: &'a str,
    /// Database.
    pub database: &'a str,
    /// Address.
    pub peer: SocketAddr,
    /// TLS in use.
    pub tls: bool,
    /// `application_name` startup parameter.
    pub application_name: &'a str,
    /// Its consistency at login.
    pub consistency: Consistency,
    /// Its socket.
    pub socket: &'a tokio::net::TcpStream,
}

/// Every connected client by id.
#[derive(Default)]
pub struct ClientRegistry {
    next_id: AtomicU64,
    clients: Mutex<BTreeMap<u64, Arc<ClientInfo>>>,
}

impl ClientRegistry {
    /// Registers a client until the returned guard drops.
    /// Client connections of `user` open now.
    pub fn count_user(&self, user: &str) -> usize {
        self.clients
            .lock()
            .expect("clients lock")
            .values()
            .filter(|c| c.user == user)
            .count()
    }

    pub fn register(&self, c: NewClient<'_>) -> Registered<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let info = Arc::new(ClientInfo {
            id,
            user: c.user.to_owned(),
            database: c.database.to_owned(),
            peer: c.peer,
            connect_time: SystemTime::now(),
            tls: c.tls,
            application_name: c.application_name.to_owned(),
            state: AtomicU8::new(ClientState::Idle as u8),
            in_transaction: AtomicBool::new(false),
            snapshot_in_use: AtomicU64::new(0),
            touching_moves: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            consistency: AtomicU8::new(0),
            end: Mutex::new(None),
            links: Mutex::new(Vec::new()),
            socket: Mutex::new(Some(std::os::fd::AsRawFd::as_raw_fd(c.socket))),
        });
        info.set_consistency(c.consistency);
        self.clients
            .lock()
            .expect("clients lock")
            .insert(id, info.clone());
        Registered {
            registry: self,
            info,
        }
    }

    /// Every client now, by id.
    pub fn all(&self) -> Vec<Arc<ClientInfo>> {
        self.clients
            .lock()
            .expect("clients lock")
            .values()
            .cloned()
            .collect()
    }

    /// The client `id`.
    pub fn get(&self, id: u64) -> Option<Arc<ClientInfo>> {
        self.clients.lock().expect("clients lock").get(&id).cloned()
    }

    /// Waits until no session routes by a snapshot older than `version`
    /// (sessions idle between transactions take the newest when they next
    /// get input); `false` when `deadline` passed first.
    pub async fn wait_snapshots(&self, version: u64, deadline: std::time::Instant) -> bool {
        loop {
            let behind = self.all().iter().any(|c| {
                let v = c.snapshot_in_use();
                v != 0 && v < version
            });
            if !behind {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Waits until no transaction that touched moving rows is open;
    /// `false` when `deadline` passed first.
    pub async fn wait_moves_settled(&self, deadline: std::time::Instant) -> bool {
        loop {
            if !self.all().iter().any(|c| c.touching_moves()) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// Ends the idle sessions of `user` now (a reload removed it); the
    /// others end at their next transaction boundary, when they find the
    /// user gone from the snapshot.
    pub fn end_user(&self, user: &str) -> usize {
        let victims: Vec<_> = self
            .all()
            .into_iter()
            .filter(|c| c.user == user && !c.in_transaction() && c.state() == ClientState::Idle)
            .collect();
        for c in &victims {
            c.end(EndReason::UserRemoved);
        }
        victims.len()
    }
}

/// A registered client; unregistered on drop.
pub struct Registered<'a> {
    registry: &'a ClientRegistry,
    /// The client's published facts.
    pub info: Arc<ClientInfo>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry
            .clients
            .lock()
            .expect("clients lock")
            .remove(&self.info.id);
    }
}

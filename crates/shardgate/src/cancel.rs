//! Cancel keys the proxy hands to clients, and forwarding of CancelRequest to
//! the server connection that runs the client's query at that moment.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rand::RngExt;
use shardgate_pool::CancelHandle;

/// Where a client's running query can be cancelled (the server connections
/// it currently holds).
///
/// Written by the client's session on every checkout and release, read only
/// by cancel requests. A release is one store (`active`); a checkout of a
/// connection to the node already recorded overwrites its key in place, on
/// the slot's own cache line, with no reference count touched: that memory
/// is cold by the client's next transaction, and misses cost more than the
/// rest of the update.
#[derive(Debug, Default)]
pub struct CancelSlot {
    targets: Mutex<Targets>,
    /// Whether the client holds the connections in `targets`; while false
    /// they are stale, kept to be overwritten.
    active: AtomicBool,
}

/// The connections of a slot: the first inline, any further ones (a
/// transaction over several shards) in a list.
#[derive(Debug, Default)]
struct Targets {
    first: Option<CancelHandle>,
    more: Vec<CancelHandle>,
}

impl CancelSlot {
    /// Records the one server connection now serving the client.
    pub fn set_one(&self, target: &CancelHandle) {
        let mut t = self.targets.lock().expect("cancel slot lock");
        match &mut t.first {
            Some(first) if Arc::ptr_eq(&first.addr, &target.addr) => {
                first.pid = target.pid;
                first.secret = target.secret;
            }
            first => *first = Some(target.clone()),
        }
        if !t.more.is_empty() {
            t.more.clear();
        }
        self.active.store(true, Ordering::Release);
    }

    /// Adds a server connection now serving the client.
    pub fn add(&self, target: &CancelHandle) {
        let mut t = self.targets.lock().expect("cancel slot lock");
        if !self.active.load(Ordering::Relaxed) {
            *t = Targets::default();
        }
        match t.first {
            None => t.first = Some(target.clone()),
            Some(_) => t.more.push(target.clone()),
        }
        self.active.store(true, Ordering::Release);
    }

    /// The client holds no server connection any more.
    pub fn clear(&self) {
        self.active.store(false, Ordering::Release);
    }

    fn snapshot(&self) -> Vec<CancelHandle> {
        let t = self.targets.lock().expect("cancel slot lock");
        if !self.active.load(Ordering::Acquire) {
            return Vec::new();
        }
        t.first.iter().chain(&t.more).cloned().collect()
    }
}

/// All connected clients' cancel keys.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    next_pid: Mutex<i32>,
    clients: Mutex<HashMap<i32, (i32, Arc<CancelSlot>)>>,
}

/// A client's registration; unregisters on drop.
#[derive(Debug)]
pub struct CancelKey {
    /// Process id given to the client in BackendKeyData.
    pub pid: i32,
    /// Secret given to the client in BackendKeyData.
    pub secret: i32,
    /// Where its queries run.
    pub slot: Arc<CancelSlot>,
    registry: Arc<CancelRegistry>,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.registry
            .clients
            .lock()
            .expect("cancel registry lock")
            .remove(&self.pid);
    }
}

impl CancelRegistry {
    /// Issues a fresh key for a new client.
    pub fn register(self: &Arc<Self>) -> CancelKey {
        let secret = rand::rng().random::<i32>();
        let slot = Arc::new(CancelSlot::default());
        let mut clients = self.clients.lock().expect("cancel registry lock");
        let pid = loop {
            let mut next = self.next_pid.lock().expect("cancel pid lock");
            *next = if *next >= i32::MAX - 1 { 1 } else { *next + 1 };
            if !clients.contains_key(&*next) {
                break *next;
            }
        };
        clients.insert(pid, (secret, slot.clone()));
        CancelKey {
            pid,
            secret,
            slot,
            registry: self.clone(),
        }
    }

    /// Handles a CancelRequest: if the key matches, cancels what the client runs.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        let targets = {
            let clients = self.clients.lock().expect("cancel registry lock");
            match clients.get(&pid) {
                Some((s, slot)) if *s == secret => slot.snapshot(),
                _ => {
                    tracing::info!(pid, "cancel request with unknown key ignored");
                    return;
                }
            }
        };
        for t in targets {
            tracing::info!(pid, server = %t.addr, "forwarding cancel request");
            if let Err(e) = t.cancel().await {
                tracing::warn!(server = %t.addr, error = %e, "cancel request failed");
            }
        }
    }

    /// Number of registered clients.
    pub fn len(&self) -> usize {
        self.clients.lock().expect("cancel registry lock").len()
    }

    /// Whether no client is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

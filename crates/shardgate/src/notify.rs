//! `LISTEN` in transaction pooling.
//!
//! A client in transaction pooling has no server connection of its own to
//! listen on: a `LISTEN` sent to a pooled connection would stay there,
//! delivering the client's notifications to whoever borrows it next. So
//! the proxy keeps, per node, role and database, one connection of its own
//! (a *hub*) that listens to every channel some client listens to, and
//! passes each notification to the clients subscribed to its channel. A
//! session delivers them to its client between transactions, as Postgres
//! does. NOTIFY and `pg_notify` run on any pooled connection to the same
//! primary, so they reach the hub like any other listener.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use shardgate_pool::{ConnectParams, ServerConn};
use shardgate_protocol::backend::{tag as btag, ErrorFields};
use shardgate_protocol::{frontend, Header, MessageReader, PgError};
use shardgate_router::quote_ident;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};

/// A NotificationResponse message, whole.
pub type Notification = Bytes;

/// Largest message the hub accepts from its server.
const MAX_MESSAGE: usize = 1 << 30;

/// Wait before reconnecting a hub whose connection failed.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// Every hub of the proxy, one per node, role and database.
#[derive(Default)]
pub struct Notifications {
    hubs: Mutex<HashMap<(String, String, String), mpsc::UnboundedSender<Command>>>,
    next_client: AtomicU64,
}

/// A client's subscriptions: what it listens to arrives on `incoming`.
pub struct Subscription {
    hub: mpsc::UnboundedSender<Command>,
    client: u64,
    sender: mpsc::UnboundedSender<Notification>,
    /// Notifications for this client, in the order the server sent them.
    pub incoming: mpsc::UnboundedReceiver<Notification>,
}

enum Command {
    Listen {
        client: u64,
        channel: String,
        deliver: mpsc::UnboundedSender<Notification>,
        done: oneshot::Sender<Result<(), PgError>>,
    },
    /// `None`: every channel of the client.
    Unlisten {
        client: u64,
        channel: Option<String>,
    },
}

impl Notifications {
    /// A subscription of a new client to the hub for `params` (started on
    /// first use).
    pub fn subscribe(&self, params: &ConnectParams) -> Subscription {
        let key = (
            params.addr.to_string(),
            params.user.clone(),
            params.database.clone(),
        );
        let hub = {
            let mut hubs = self.hubs.lock().expect("hubs lock");
            let alive = hubs.get(&key).filter(|h| !h.is_closed()).cloned();
            alive.unwrap_or_else(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(run_hub(params.clone(), rx));
                hubs.insert(key, tx.clone());
                tx
            })
        };
        let (sender, incoming) = mpsc::unbounded_channel();
        Subscription {
            hub,
            client: self.next_client.fetch_add(1, Ordering::Relaxed),
            sender,
            incoming,
        }
    }
}

impl Subscription {
    /// Starts listening to `channel`; returns once the hub's server
    /// listens to it, or with the server's error.
    pub async fn listen(&self, channel: &str) -> Result<(), PgError> {
        let (done, answer) = oneshot::channel();
        let sent = self.hub.send(Command::Listen {
            client: self.client,
            channel: channel.to_owned(),
            deliver: self.sender.clone(),
            done,
        });
        if sent.is_err() {
            return Err(hub_gone());
        }
        answer.await.unwrap_or_else(|_| Err(hub_gone()))
    }

    /// Stops listening to `channel`, or to every channel.
    pub fn unlisten(&self, channel: Option<&str>) {
        let _ = self.hub.send(Command::Unlisten {
            client: self.client,
            channel: channel.map(str::to_owned),
        });
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.unlisten(None);
    }
}

fn hub_gone() -> PgError {
    PgError::error("08006", "shardgate: the LISTEN connection is gone")
        .with_hint("Retry the LISTEN.")
}

/// Channel → client → where its notifications go.
type Subscribers = HashMap<String, HashMap<u64, mpsc::UnboundedSender<Notification>>>;

/// One hub: its connection, and the channels it listens to for clients.
async fn run_hub(params: ConnectParams, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut subscribers: Subscribers = HashMap::new();
    let mut conn: Option<Box<ServerConn>> = None;
    loop {
        if conn.is_none() && !subscribers.is_empty() {
            conn = reconnect(&params, &subscribers).await;
            if conn.is_none() {
                tokio::time::sleep(RECONNECT_AFTER).await;
                continue;
            }
        }
        let event = match conn.as_mut() {
            Some(c) => {
                tokio::select! {
                    cmd = commands.recv() => HubEvent::Command(cmd),
                    read = c.stream.read_buf(&mut c.read_buf) => HubEvent::Read(read),
                }
            }
            None => HubEvent::Command(commands.recv().await),
        };
        match event {
            HubEvent::Command(None) => return,
            HubEvent::Command(Some(cmd)) => {
                if !handle(cmd, &params, &mut conn, &mut subscribers).await {
                    conn = None;
                }
            }
            HubEvent::Read(Ok(n)) if n > 0 => {
                let c = conn.as_mut().expect("read from it");
                if dispatch(&mut c.read_buf, &mut subscribers).is_err() {
                    conn = None;
                }
            }
            HubEvent::Read(_) => {
                tracing::warn!(server = %params.addr, "LISTEN connection lost; reconnecting");
                conn = None;
            }
        }
        if subscribers.is_empty() {
            // Nobody listens: the connection goes until someone does.
            conn = None;
        }
    }
}

enum HubEvent {
    Command(Option<Command>),
    Read(std::io::Result<usize>),
}

/// Runs one command; false when the connection failed.
async fn handle(
    cmd: Command,
    params: &ConnectParams,
    conn: &mut Option<Box<ServerConn>>,
    subscribers: &mut Subscribers,
) -> bool {
    match cmd {
        Command::Listen {
            client,
            channel,
            deliver,
            done,
        } => {
            if let Some(clients) = subscribers.get_mut(&channel) {
                clients.insert(client, deliver);
                let _ = done.send(Ok(()));
                return true;
            }
            if conn.is_none() {
                *conn = reconnect(params, subscribers).await;
            }
            let Some(c) = conn.as_mut() else {
                let _ = done.send(Err(hub_gone()));
                return true;
            };
            match run(c, &format!("LISTEN {}", quote_ident(&channel)), subscribers).await {
                Ok(None) => {
                    subscribers
                        .entry(channel)
                        .or_default()
                        .insert(client, deliver);
                    let _ = done.send(Ok(()));
                    true
                }
                Ok(Some(e)) => {
                    let _ = done.send(Err(PgError::error(&e.code, e.message)));
                    true
                }
                Err(()) => {
                    let _ = done.send(Err(hub_gone()));
                    false
                }
            }
        }
        Command::Unlisten { client, channel } => {
            let mut emptied = Vec::new();
            for (name, clients) in subscribers.iter_mut() {
                if channel.as_ref().is_none_or(|c| c == name) {
                    clients.remove(&client);
                    if clients.is_empty() {
                        emptied.push(name.clone());
                    }
                }
            }
            for name in emptied {
                subscribers.remove(&name);
                if let Some(c) = conn.as_mut() {
                    if run(c, &format!("UNLISTEN {}", quote_ident(&name)), subscribers)
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
            }
            true
        }
    }
}

/// Opens the hub's connection and listens to every channel clients want.
async fn reconnect(params: &ConnectParams, subscribers: &Subscribers) -> Option<Box<ServerConn>> {
    let mut c = match ServerConn::connect(params).await {
        Ok(c) => Box::new(c),
        Err(e) => {
            tracing::warn!(server = %params.addr, error = %e, "cannot open the LISTEN connection");
            return None;
        }
    };
    let channels: Vec<String> = subscribers.keys().cloned().collect();
    for name in channels {
        let mut none = Subscribers::new();
        run(&mut c, &format!("LISTEN {}", quote_ident(&name)), &mut none)
            .await
            .ok()?;
    }
    Some(c)
}

/// Runs one statement on the hub's connection, passing on notifications
/// that arrive meanwhile; `Ok(Some)`: the server's error.
async fn run(
    c: &mut ServerConn,
    sql: &str,
    subscribers: &mut Subscribers,
) -> Result<Option<ErrorFields>, ()> {
    let mut out = BytesMut::new();
    frontend::encode_query(sql, &mut out);
    c.stream.send_all(&out).await.map_err(drop)?;
    let mut error = None;
    loop {
        while let Some(h) = Header::complete(&c.read_buf, MAX_MESSAGE).map_err(drop)? {
            let msg = c.read_buf.split_to(h.total);
            match h.tag {
                btag::NOTIFICATION => deliver(msg.freeze(), subscribers),
                btag::ERROR_RESPONSE => error = ErrorFields::decode(&msg[5..]).ok(),
                btag::READY_FOR_QUERY => return Ok(error),
                _ => {}
            }
        }
        if c.stream.read_buf(&mut c.read_buf).await.map_err(drop)? == 0 {
            return Err(());
        }
    }
}

/// Passes on every whole notification in `buf`.
fn dispatch(buf: &mut BytesMut, subscribers: &mut Subscribers) -> Result<(), ()> {
    while let Some(h) = Header::complete(buf, MAX_MESSAGE).map_err(drop)? {
        let msg = buf.split_to(h.total);
        match h.tag {
            btag::NOTIFICATION => deliver(msg.freeze(), subscribers),
            // The server is ending the session (shutdown, terminate).
            btag::ERROR_RESPONSE => return Err(()),
            _ => {}
        }
    }
    Ok(())
}

/// Sends one notification to the clients of its channel.
fn deliver(msg: Notification, subscribers: &mut Subscribers) {
    let Some(channel) = notification_channel(&msg[5..]) else {
        return;
    };
    if let Some(clients) = subscribers.get_mut(channel.as_str()) {
        clients.retain(|_, tx| tx.send(msg.clone()).is_ok());
    }
}

/// The channel of a NotificationResponse body.
fn notification_channel(body: &[u8]) -> Option<String> {
    let mut r = MessageReader::new(body, "NotificationResponse");
    r.i32().ok()?;
    r.str().ok().map(str::to_owned)
}

/// What a session keeps of its notifications: the subscription, and the
/// ones held while a transaction runs.
#[derive(Default)]
pub struct ClientNotifications {
    /// The client's subscription, from its first LISTEN on.
    pub subscription: Option<Subscription>,
    /// Notifications that arrived while the client was in a transaction.
    pub held: Vec<Notification>,
}

impl ClientNotifications {
    /// The subscription, made on first use.
    pub fn get_or_subscribe(
        &mut self,
        hubs: &Arc<Notifications>,
        params: &ConnectParams,
    ) -> &Subscription {
        self.subscription
            .get_or_insert_with(|| hubs.subscribe(params))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(channel: &str, payload: &str) -> Bytes {
        let mut body = 42i32.to_be_bytes().to_vec();
        body.extend_from_slice(channel.as_bytes());
        body.push(0);
        body.extend_from_slice(payload.as_bytes());
        body.push(0);
        let mut m = vec![btag::NOTIFICATION];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(&body);
        Bytes::from(m)
    }

    #[test]
    fn notifications_reach_the_clients_of_their_channel_only() {
        let mut subscribers = Subscribers::new();
        let (a_tx, mut a_rx) = mpsc::unbounded_channel();
        let (b_tx, mut b_rx) = mpsc::unbounded_channel();
        subscribers
            .entry("jobs".into())
            .or_default()
            .insert(1, a_tx.clone());
        subscribers
            .entry("jobs".into())
            .or_default()
            .insert(2, b_tx);
        subscribers
            .entry("mail".into())
            .or_default()
            .insert(1, a_tx);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&notification("jobs", "1"));
        buf.extend_from_slice(&notification("mail", "2"));
        buf.extend_from_slice(&notification("other", "3"));
        let tail = notification("jobs", "4");
        buf.extend_from_slice(&tail[..7]);
        dispatch(&mut buf, &mut subscribers).unwrap();
        assert_eq!(buf.len(), 7, "an incomplete message waits");
        assert_eq!(a_rx.try_recv().unwrap(), notification("jobs", "1"));
        assert_eq!(a_rx.try_recv().unwrap(), notification("mail", "2"));
        assert!(a_rx.try_recv().is_err());
        assert_eq!(b_rx.try_recv().unwrap(), notification("jobs", "1"));
        assert!(b_rx.try_recv().is_err());
        // A client that went away is dropped from its channels.
        drop(b_rx);
        deliver(notification("jobs", "5"), &mut subscribers);
        assert_eq!(subscribers["jobs"].len(), 1);
        assert_eq!(subscribers.len(), 2);
    }
}

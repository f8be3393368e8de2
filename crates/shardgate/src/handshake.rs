//! A new client connection: TLS negotiation, startup packet, cancel requests,
//! authentication, then the session.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use shardgate_protocol::startup::StartupPacket;
use shardgate_protocol::PgError;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::client_io::{fill, ClientStream};
use crate::clients::{NewClient, Registered};
use crate::routing::{ReadLevel, RoutingState};
use crate::runtime::Runtime;
use crate::session::{Session, SessionError, SessionSetup};
use crate::state::SessionState;

/// Startup parameters the proxy consumes instead of replaying on servers.
const CONNECTION_PARAMS: &[&str] = &["user", "database", "options", "replication"];

/// Tells a client over the connection limit to go away.
pub async fn refuse_too_many(mut socket: TcpStream) {
    let mut out = BytesMut::new();
    PgError::fatal(
        "53300",
        "sorry, too many clients already (max_client_connections)",
    )
    .encode(&mut out);
    let _ = socket.write_all(&out).await;
}

async fn send_fatal(stream: &mut ClientStream, err: &PgError) {
    let mut out = BytesMut::new();
    err.encode(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
}

/// Serves one client connection from its first byte to its last.
pub async fn handle_client(runtime: Arc<Runtime>, socket: TcpStream, peer: SocketAddr) {
    // Boxed: what comes before the session (login, the startup parameters,
    // the checks) is done once, and its state would otherwise stay part of
    // the task's future, which an idle client holds all along.
    let Some((session, registered)) = Box::pin(start_session(&runtime, socket, peer)).await else {
        return;
    };
    let user_name = &registered.info.user;
    match session.run().await {
        Ok(()) => tracing::info!(%peer, user = %user_name, "client disconnected"),
        Err(e) => log_end(&peer, user_name, &e),
    }
}

/// Logs the client in and builds its session, registered with the
/// runtime's clients until the returned guard drops; `None` when the
/// connection ended before (the client was told why) or was the admin
/// console's, served here.
async fn start_session(
    runtime: &Arc<Runtime>,
    socket: TcpStream,
    peer: SocketAddr,
) -> Option<(Box<Session>, Registered<'_>)> {
    let _ = socket.set_nodelay(true);
    let snap = runtime.snapshot();
    // A client that is slow or silent before it is logged in holds nothing
    // past auth_timeout.
    let limit = snap.config.proxy.auth_timeout;
    // Boxed: the login's state (TLS handshake, SCRAM) would otherwise stay
    // part of the task's future, which an idle client holds all along.
    let login = Box::pin(log_in(runtime, &snap, socket, peer));
    let logged_in = match tokio::time::timeout(limit, login).await {
        Ok(Some(l)) => l,
        Ok(None) => return None,
        Err(_) => {
            tracing::info!(%peer, timeout_ms = limit.as_millis() as u64, "login not finished within auth_timeout; connection closed");
            return None;
        }
    };
    let LoggedIn {
        mut stream,
        buf,
        params,
        user_name,
        database,
        user,
    } = logged_in;
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let per_user = snap.config.proxy.max_connections_per_user;
    if per_user > 0 && runtime.clients.count_user(&user_name) >= per_user {
        send_fatal(
            &mut stream,
            &PgError::fatal(
                "53300",
                format!("too many connections for role \"{user_name}\" (max_connections_per_user = {per_user})"),
            ),
        )
        .await;
        return None;
    }
    if database == snap.config.proxy.admin_database {
        tracing::info!(%peer, user = %user_name, "admin console connected");
        // Boxed: the console's future is not part of every client's task.
        Box::pin(crate::admin::serve(runtime.clone(), user, stream, buf)).await;
        return None;
    }
    let base = ReadLevel::configured(&snap.config, &user.config);
    let (session_params, routing) = match startup_settings(&params, base) {
        Ok(p) => p,
        Err(e) => {
            send_fatal(&mut stream, &e).await;
            return None;
        }
    };
    let cancel = runtime.cancels.register();
    let state = SessionState::from_startup(&session_params);
    tracing::info!(%peer, user = %user_name, %database, tls = stream.is_tls(), "client connected");
    let registered = runtime.clients.register(NewClient {
        user: &user_name,
        database: &database,
        peer,
        tls: stream.is_tls(),
        application_name: get("application_name").unwrap_or(""),
        consistency: routing.level().consistency,
        socket: stream.tcp(),
    });
    let session = Box::new(Session::new(SessionSetup {
        runtime: runtime.clone(),
        snap: snap.clone(),
        info: registered.info.clone(),
        user,
        database,
        client: stream,
        cbuf: buf,
        state,
        routing,
        cancel,
    }));
    Some((session, registered))
}

/// A client past its startup packet and authentication.
struct LoggedIn {
    stream: ClientStream,
    buf: BytesMut,
    params: Vec<(String, String)>,
    user_name: String,
    database: String,
    user: Arc<crate::auth::User>,
}

/// Reads the startup packet and authenticates the client; `None` when the
/// connection ended (the client was told why).
async fn log_in(
    runtime: &Arc<Runtime>,
    snap: &Arc<crate::runtime::Snapshot>,
    socket: TcpStream,
    peer: SocketAddr,
) -> Option<LoggedIn> {
    let mut buf = BytesMut::with_capacity(1024);
    let (stream, startup) =
        read_startup(runtime, snap, ClientStream::Plain(socket), &mut buf).await;
    let (mut stream, params) = match (stream, startup) {
        (Some(stream), Ok(Startup::Login(params))) => (stream, params),
        (Some(mut stream), Err(e)) => {
            tracing::info!(%peer, error = %e, "bad startup packet");
            send_fatal(&mut stream, &e).await;
            return None;
        }
        (_, Ok(Startup::Cancelled)) | (None, _) => return None,
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let Some(user_name) = get("user").filter(|u| !u.is_empty()).map(str::to_owned) else {
        send_fatal(
            &mut stream,
            &PgError::fatal(
                "28000",
                "no PostgreSQL user name specified in startup packet",
            ),
        )
        .await;
        return None;
    };
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user_name)
        .to_owned();
    if get("replication").is_some_and(|r| r != "false" && r != "0" && r != "off") {
        send_fatal(
            &mut stream,
            &PgError::fatal("0A000", "shardgate does not proxy replication connections")
                .with_hint("Connect replication clients to the servers directly."),
        )
        .await;
        return None;
    }
    if runtime.shutting_down() {
        send_fatal(
            &mut stream,
            &PgError::fatal("57P03", "shardgate is shutting down"),
        )
        .await;
        return None;
    }
    // Over TLS SCRAM-SHA-256-PLUS binds the login to this connection.
    let binding = snap
        .tls
        .as_ref()
        .filter(|_| stream.is_tls())
        .map(|t| t.end_point.clone());
    let user = match snap
        .users
        .authenticate(&mut stream, &mut buf, &user_name, binding.as_deref())
        .await
    {
        Ok(u) => u,
        Err(e) => {
            tracing::info!(%peer, user = %user_name, error = %e, "login failed");
            send_fatal(&mut stream, &e.to_pg_error()).await;
            return None;
        }
    };
    Some(LoggedIn {
        stream,
        buf,
        params,
        user_name,
        database,
        user,
    })
}

fn log_end(peer: &SocketAddr, user: &str, e: &SessionError) {
    match e {
        SessionError::ClientIo(io) => {
            tracing::info!(%peer, %user, error = %io, "client connection closed")
        }
        other => tracing::info!(%peer, %user, error = %other, "client session ended with error"),
    }
}

/// What the startup phase ended with.
enum Startup {
    /// A StartupMessage with these parameters.
    Login(Vec<(String, String)>),
    /// A CancelRequest was handled; close the connection.
    Cancelled,
}

/// Reads startup packets until a StartupMessage; handles SSL/GSS negotiation
/// (upgrading the stream to TLS) and CancelRequest. Returns the stream when
/// it is still usable.
async fn read_startup(
    runtime: &Runtime,
    snap: &crate::runtime::Snapshot,
    mut stream: ClientStream,
    buf: &mut BytesMut,
) -> (Option<ClientStream>, Result<Startup, PgError>) {
    let io_err = |e: std::io::Error| PgError::fatal("08006", format!("client connection: {e}"));
    loop {
        let decoded = loop {
            match StartupPacket::decode(buf) {
                Ok(Some(p)) => break Ok(p),
                Ok(None) => {
                    if let Err(e) = fill(&mut stream, buf).await {
                        return (None, Err(io_err(e)));
                    }
                }
                Err(e) => break Err(e.to_pg_error()),
            }
        };
        let (packet, len) = match decoded {
            Ok(p) => p,
            Err(e) => return (Some(stream), Err(e)),
        };
        buf.advance(len);
        match packet {
            StartupPacket::SslRequest => {
                let mut tcp = match stream {
                    ClientStream::Plain(tcp) => tcp,
                    tls => {
                        let e = PgError::fatal("08P01", "SSLRequest after TLS was established");
                        return (Some(tls), Err(e));
                    }
                };
                if !buf.is_empty() {
                    // Bytes sent before the TLS handshake could have been injected.
                    let e = PgError::fatal("08P01", "received unencrypted data after SSL request");
                    return (Some(ClientStream::Plain(tcp)), Err(e));
                }
                let answer: &[u8] = if snap.tls.is_some() { b"S" } else { b"N" };
                if let Err(e) = tcp.write_all(answer).await {
                    return (None, Err(io_err(e)));
                }
                stream = match &snap.tls {
                    Some(tls) => match tls.acceptor.accept(tcp).await {
                        Ok(tls) => ClientStream::Tls(Box::new(tls)),
                        Err(e) => return (None, Err(io_err(e))),
                    },
                    None => ClientStream::Plain(tcp),
                };
            }
            StartupPacket::GssEncRequest => {
                if let Err(e) = stream.write_all(b"N").await {
                    return (None, Err(io_err(e)));
                }
            }
            StartupPacket::Cancel { pid, secret } => {
                runtime.cancels.cancel(pid, secret).await;
                return (Some(stream), Ok(Startup::Cancelled));
            }
            StartupPacket::Startup { params, .. } => {
                return (Some(stream), Ok(Startup::Login(params)))
            }
        }
    }
}

/// The session parameters and routing state a startup packet's parameters
/// ask for over `base`: `options` (`-c name=value`) unfolded, `shardgate.*`
/// settings taken out; `Err` is the FATAL error the client gets.
pub fn startup_settings(
    params: &[(String, String)],
    base: ReadLevel,
) -> Result<(Vec<(String, String)>, RoutingState), PgError> {
    session_params(params).and_then(|p| split_routing(p, base))
}

/// Takes `shardgate.*` startup options (`-c shardgate.consistency=...`) out
/// of the session parameters and applies them over `base`.
fn split_routing(
    params: Vec<(String, String)>,
    mut base: ReadLevel,
) -> Result<(Vec<(String, String)>, RoutingState), PgError> {
    let mut rest = Vec::with_capacity(params.len());
    for (k, v) in params {
        match k.to_ascii_lowercase().as_str() {
            "shardgate.consistency" => {
                base.consistency = v.parse().map_err(|_| {
                    PgError::fatal(
                        "22023",
                        format!("invalid value for parameter \"shardgate.consistency\": \"{v}\""),
                    )
                    .with_hint("Valid values are strong, bounded, eventual and session.")
                })?;
            }
            "shardgate.max_lag_ms" => {
                base.max_lag_ms = shardgate_router::parse_max_lag_ms(&v).map_err(|_| {
                    PgError::fatal(
                        "22023",
                        format!("invalid value for parameter \"shardgate.max_lag_ms\": \"{v}\""),
                    )
                    .with_hint("Use a whole number of milliseconds, e.g. 500.")
                })?;
            }
            name if name.starts_with("shardgate.") => {
                return Err(PgError::fatal(
                    "42704",
                    format!("unrecognized configuration parameter \"{k}\""),
                ))
            }
            _ => rest.push((k, v)),
        }
    }
    Ok((rest, RoutingState::new(base)))
}

/// The session parameters of a startup packet: everything but the connection
/// parameters, plus `-c name=value` settings from `options`.
fn session_params(params: &[(String, String)]) -> Result<Vec<(String, String)>, PgError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in params {
        if k == "options" {
            for (name, value) in parse_options(v)? {
                out.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
                out.push((name, value));
            }
        } else if !CONNECTION_PARAMS.contains(&k.as_str()) && !k.starts_with("_pq_.") {
            out.retain(|(n, _)| !n.eq_ignore_ascii_case(k));
            out.push((k.clone(), v.clone()));
        }
    }
    Ok(out)
}

/// Parses the `options` startup parameter (`-c a=b --c=d`, backslash escapes).
fn parse_options(options: &str) -> Result<Vec<(String, String)>, PgError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let bad = |w: &str| {
        PgError::fatal(
            "22023",
            format!("invalid command-line argument for server process: {w}"),
        )
        .with_hint("Only -c name=value and --name=value are supported in options.")
    };
    let mut out = Vec::new();
    let mut it = words.iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or_else(|| bad(w))?.as_str()
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest
        } else if let Some(rest) = w.strip_prefix("--") {
            rest
        } else {
            return Err(bad(w));
        };
        let (name, value) = setting.split_once('=').ok_or_else(|| bad(w))?;
        out.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_parsed() {
        assert_eq!(
            parse_options("-c search_path=a,b --statement-timeout=5s -csome.x=1\\ 2").unwrap(),
            vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("some.x".into(), "1 2".into())
            ]
        );
        assert!(parse_options("-x").is_err());
    }

    #[test]
    fn connection_params_are_not_session_state() {
        let p = session_params(&[
            ("user".into(), "u".into()),
            ("database".into(), "d".into()),
            ("application_name".into(), "psql".into()),
            ("options".into(), "-c TimeZone=UTC".into()),
        ])
        .unwrap();
        assert_eq!(
            p,
            vec![
                ("application_name".into(), "psql".into()),
                ("TimeZone".into(), "UTC".into())
            ]
        );
    }
}

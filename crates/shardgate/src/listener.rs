//! The listener: accepting clients, SIGHUP, and graceful shutdown. It owns
//! no shared state: that is the [`Runtime`]'s.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::runtime::{Runtime, StartError};
use crate::twophase::recover;

/// Accepts clients until `stop` resolves (or `SHUTDOWN`), then stops
/// listening, lets open transactions finish for up to `shutdown_timeout`
/// and returns. `config_path` is the file RELOAD and SIGHUP read again.
pub async fn serve(
    config: Config,
    config_path: Option<PathBuf>,
    listener: TcpListener,
    stop: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let config = crate::rebalance::meta::with_latest_shards(config, false).await;
    let runtime = Arc::new(Runtime::new(config, config_path)?);
    runtime.start_monitors();
    let metrics = crate::metrics::serve(&runtime).await?;
    recover_in_doubt(&runtime).await;
    // Registered, holding other proxies' moves and routing by the newest
    // settled map before the first client comes in.
    crate::rebalance::registry::Registry::spawn(runtime.clone()).await;
    crate::rebalance::follow::spawn(runtime.clone()).await;
    let mut hangup = hangup_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let limit = runtime.snapshot().config.proxy.max_client_connections;
                    if runtime.active_clients() >= limit {
                        tokio::spawn(crate::handshake::refuse_too_many(socket));
                        continue;
                    }
                    let guard = runtime.enter();
                    let task = async move {
                        crate::handshake::handle_client(guard.runtime().clone(), socket, peer).await;
                        drop(guard);
                    };
                    log_task_size_once(std::mem::size_of_val(&task));
                    tokio::spawn(task);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = recv(&mut hangup) => {
                let runtime = runtime.clone();
                tokio::spawn(async move {
                    tracing::info!("SIGHUP received: reloading the configuration");
                    match runtime.reload().await {
                        Ok(report) => report.log(),
                        Err(e) => tracing::error!(error = %e, "reload failed; the running configuration stays"),
                    }
                });
            }
            _ = runtime.shutdown_requested.notified() => break,
            _ = &mut stop => break,
        }
    }
    drop(listener);
    let timeout = runtime.snapshot().config.proxy.shutdown_timeout;
    tracing::info!(
        clients = runtime.active_clients(),
        timeout_ms = timeout.as_millis() as u64,
        "shutting down: no new connections; waiting for open transactions"
    );
    runtime.begin_shutdown();
    if tokio::time::timeout(timeout, runtime.all_gone())
        .await
        .is_err()
    {
        tracing::warn!(
            clients = runtime.active_clients(),
            "shutdown_timeout reached; closing remaining connections"
        );
    }
    runtime.stop_monitors();
    crate::rebalance::registry::Registry::leave(&runtime).await;
    if let Some(m) = metrics {
        m.abort();
    }
    for pool in runtime.pools.all() {
        pool.drain_idle();
    }
    tracing::info!("shutdown complete");
    Ok(())
}

/// Logs (debug) the size of a client's task once: every client holds it
/// for its whole life (`benches/idle_clients.rs` measures what idle clients
/// cost; `RUST_LOG=shardgate::listener=debug` shows it).
fn log_task_size_once(bytes: usize) {
    static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !LOGGED.load(std::sync::atomic::Ordering::Relaxed)
        && !LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::debug!(bytes, "size of a client's task future");
    }
}

/// In-doubt two-phase transactions of an earlier run are resolved before
/// clients come in; what cannot be resolved yet is retried in the background.
async fn recover_in_doubt(runtime: &Arc<Runtime>) {
    let Some(coordinator) = runtime.two_phase.clone() else {
        return;
    };
    let target = runtime.snapshot().recovery_target();
    let left = tokio::time::timeout(Duration::from_secs(30), recover(&coordinator, &target))
        .await
        .unwrap_or(1);
    if left > 0 {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if recover(&coordinator, &target).await == 0 {
                    break;
                }
            }
        });
    }
}

fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler; use RELOAD in the admin console");
            None
        }
    }
}

async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Binds the listen address of `config`.
pub async fn bind(config: &Config) -> Result<TcpListener, StartError> {
    TcpListener::bind(config.listen_addr())
        .await
        .map_err(|source| StartError::Bind {
            addr: config.proxy.listen.clone(),
            source,
        })
}

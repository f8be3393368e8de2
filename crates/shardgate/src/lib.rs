//! shardgate: a PostgreSQL sharding and replica-routing proxy.
//!
//! The binary wires the pieces together: configuration, the listener, one
//! session task per client, and the pools of server connections.

pub mod admin;
pub mod auth;
pub mod cancel;
pub mod catalog;
pub mod cli;
pub mod client_io;
pub mod clients;
pub mod config;
pub mod demo;
pub mod handshake;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod pause;
pub mod prepared;
pub mod rebalance;
pub mod relay;
pub mod reload;
pub mod routing;
pub mod runtime;
pub mod session;
pub mod settings;
pub mod state;
pub mod stats;
pub mod tls;
pub mod twophase;

use config::Config;

/// Sets up tracing from `RUST_LOG` (default `info`), one line per event.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Builds the runtime `config` asks for and serves until SIGTERM or SIGINT;
/// `path` is the file RELOAD and SIGHUP read again.
pub fn run_blocking(config: Config, path: std::path::PathBuf) -> Result<(), String> {
    let workers = config.proxy.worker_threads();
    let runtime = build_runtime(workers)?;
    runtime.block_on(async move {
        let listener = listener::bind(&config).await.map_err(|e| e.to_string())?;
        tracing::info!(listen = %config.proxy.listen, workers, pool_mode = ?config.proxy.pool_mode, "shardgate listening");
        listener::serve(config, Some(path), listener, shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })
}

/// The runtime of `workers` threads: single-threaded for one (the
/// process's main thread runs everything), multi-threaded otherwise.
pub fn build_runtime(workers: usize) -> Result<tokio::runtime::Runtime, String> {
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            // The main thread's size (statement analysis recurses over
            // parsed trees; their depth is bounded, this is the margin).
            .thread_stack_size(8 << 20)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install SIGTERM handler");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

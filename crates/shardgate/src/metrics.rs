//! The Prometheus endpoint: `GET /metrics` on `metrics_listen` answers in
//! the Prometheus text format (0.0.4), names prefixed `shardgate_`. The
//! values are read from the runtime at scrape time (pools, nodes, clients,
//! statement histograms); encoding is the `prometheus-client` crate's.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::clients::ClientState;
use crate::runtime::{Runtime, StartError};
use crate::stats::histogram::HistogramSnapshot;
use crate::stats::queries::Route;

/// Longest request head read.
const MAX_REQUEST: usize = 8192;

/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `metrics_listen` and serves scrapes; `None` when it is unset.
pub async fn serve(rt: &Arc<Runtime>) -> Result<Option<JoinHandle<()>>, StartError> {
    let Some(addr) = rt.snapshot().config.proxy.metrics_listen.clone() else {
        return Ok(None);
    };
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: addr.clone(),
            source,
        })?;
    tracing::info!(listen = %addr, "metrics at http://{addr}/metrics");
    let rt = rt.clone();
    Ok(Some(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((socket, _)) => {
                    let rt = rt.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(&rt, socket)).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })))
}

/// Reads one HTTP request and answers it; the connection then closes.
async fn answer(rt: &Arc<Runtime>, mut socket: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = socket.read(&mut chunk).await?;
        if n == 0 || head.len() + n > MAX_REQUEST {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(rt),
        ),
        (b"GET", b"/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "shardgate: metrics at /metrics\n".to_owned(),
        ),
        (b"GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await
}

/// The metrics now, in the Prometheus text format.
pub fn render(rt: &Arc<Runtime>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(RuntimeCollector(rt.clone())));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    out
}

/// Reads the runtime at each scrape.
struct RuntimeCollector(Arc<Runtime>);

impl std::fmt::Debug for RuntimeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RuntimeCollector")
    }
}

type Labels = Vec<(&'static str, String)>;

/// One family: name, help, type and its samples.
fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, metric) in samples {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(v: impl TryInto<i64>) -> ConstGauge<i64> {
    ConstGauge::new(v.try_into().unwrap_or(i64::MAX))
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

/// A histogram snapshot as an encodable metric.
struct Hist(HistogramSnapshot);

impl EncodeMetric for Hist {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            self.0.sum_seconds,
            self.0.count,
            &self.0.buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl Collector for RuntimeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rt = &self.0;
        let snap = rt.snapshot();
        let topo = &snap.topology;
        let now = topo.now_ms();
        let shard_of = |addr: &str| {
            topo.nodes()
                .find(|n| n.addr == addr)
                .map_or_else(String::new, |n| n.shard.to_string())
        };

        // Pools (pgbouncer_exporter's meanings: clients and servers per pool).
        let pools: Vec<_> = rt
            .pools
            .all()
            .into_iter()
            .map(|p| {
                let k = p.key().clone();
                let labels: Labels = vec![
                    ("node", k.addr.clone()),
                    ("shard", shard_of(&k.addr)),
                    ("user", k.user),
                    ("database", k.database),
                ];
                (labels, p.stats())
            })
            .collect();
        macro_rules! pool_family {
            ($name:expr, $help:expr, $ty:expr, $make:expr, $value:expr) => {
                family(
                    &mut enc,
                    $name,
                    $help,
                    $ty,
                    pools.iter().map(|(l, s)| (l.clone(), $make($value(s)))),
                )?
            };
        }
        use shardgate_pool::PoolStats;
        pool_family!(
            "shardgate_pool_client_active_connections",
            "Clients holding a server connection of the pool.",
            MetricType::Gauge,
            gauge,
            |s: &PoolStats| s.lent
        );
        pool_family!(
            "shardgate_pool_client_waiting_connections",
            "Clients waiting for a server connection of the pool.",
            MetricType::Gauge,
            gauge,
            |s: &PoolStats| s.waiting
        );
        pool_family!(
            "shardgate_pool_server_active_connections",
            "Server connections lent to clients.",
            MetricType::Gauge,
            gauge,
            |s: &PoolStats| s.lent
        );
        pool_family!(
            "shardgate_pool_server_idle_connections",
            "Server connections idle in the pool.",
            MetricType::Gauge,
            gauge,
            |s: &PoolStats| s.idle
        );
        pool_family!(
            "shardgate_pool_server_used_connections",
            "Idle server connections to be probed before their next use.",
            MetricType::Gauge,
            gauge,
            |s: &PoolStats| s.idle_untested
        );
        pool_family!(
            "shardgate_pool_size",
            "The pool's size limit.",
            MetricType::Gauge,
            gauge,
            |s: &PoolStats| s.max_size
        );
        pool_family!(
            "shardgate_pool_client_maxwait_microseconds",
            "How long the oldest waiting client has waited.",
            MetricType::Gauge,
            gauge,
            |s: &PoolStats| s.max_wait.as_micros() as u64
        );
        pool_family!(
            "shardgate_pool_transactions",
            "Server connection loans returned (transactions in transaction pooling).",
            MetricType::Counter,
            counter,
            |s: &PoolStats| s.totals.loans
        );
        pool_family!(
            "shardgate_pool_queries",
            "Client requests answered by the pool's servers.",
            MetricType::Counter,
            counter,
            |s: &PoolStats| s.totals.queries
        );
        pool_family!(
            "shardgate_pool_received_bytes",
            "Bytes received from the servers.",
            MetricType::Counter,
            counter,
            |s: &PoolStats| s.totals.bytes_received
        );
        pool_family!(
            "shardgate_pool_sent_bytes",
            "Bytes sent to the servers.",
            MetricType::Counter,
            counter,
            |s: &PoolStats| s.totals.bytes_sent
        );
        pool_family!(
            "shardgate_pool_transaction_microseconds",
            "Time server connections were lent, in total.",
            MetricType::Counter,
            counter,
            |s: &PoolStats| s.totals.lent_us
        );
        pool_family!(
            "shardgate_pool_query_microseconds",
            "Time client statements took, in total.",
            MetricType::Counter,
            counter,
            |s: &PoolStats| s.totals.query_us
        );
        pool_family!(
            "shardgate_pool_wait_microseconds",
            "Time clients waited for a server connection, in total.",
            MetricType::Counter,
            counter,
            |s: &PoolStats| s.wait_us
        );
        pool_family!(
            "shardgate_pool_checkout_timeouts",
            "Clients that gave up waiting (pool_timeout).",
            MetricType::Counter,
            counter,
            |s: &PoolStats| s.timeouts
        );

        // Errors by SQLSTATE class: from servers, and the proxy's own.
        let mut errors: Vec<(Labels, ConstCounter<u64>)> = Vec::new();
        for (labels, s) in &pools {
            for (class, n) in &s.error_classes {
                let mut l = labels.clone();
                l.push(("source", "server".into()));
                l.push(("class", String::from_utf8_lossy(class).into_owned()));
                errors.push((l, counter(*n)));
            }
        }
        for (class, n) in rt
            .stats
            .proxy_errors
            .lock()
            .expect("proxy errors lock")
            .iter()
        {
            errors.push((
                vec![
                    ("source", "proxy".into()),
                    ("class", String::from_utf8_lossy(class).into_owned()),
                ],
                counter(*n),
            ));
        }
        family(
            &mut enc,
            "shardgate_errors",
            "Errors sent to clients, by SQLSTATE class and where they came from.",
            MetricType::Counter,
            errors,
        )?;

        // Nodes.
        let nodes: Vec<_> = topo
            .shards
            .iter()
            .flat_map(|s| {
                let writer = s.writer_index();
                s.nodes.iter().filter(|n| !n.is_retired()).map(move |n| {
                    let role = if n.index == writer {
                        "primary"
                    } else {
                        "replica"
                    };
                    let labels: Labels = vec![
                        ("node", n.addr.clone()),
                        ("shard", s.index.to_string()),
                        ("role", role.into()),
                    ];
                    (labels, n.clone(), n.index == writer)
                })
            })
            .collect();
        family(
            &mut enc,
            "shardgate_node_up",
            "1 when the node gets traffic (not banned, draining or fenced).",
            MetricType::Gauge,
            nodes
                .iter()
                .map(|(l, n, _)| (l.clone(), gauge(i64::from(n.is_usable(now))))),
        )?;
        family(
            &mut enc,
            "shardgate_node_in_flight",
            "Transactions and statements running on the node through shardgate.",
            MetricType::Gauge,
            nodes
                .iter()
                .map(|(l, n, _)| (l.clone(), gauge(n.in_flight()))),
        )?;
        family(
            &mut enc,
            "shardgate_node_replication_lag_bytes",
            "WAL bytes a replica is behind its primary (0 for a primary).",
            MetricType::Gauge,
            nodes
                .iter()
                .map(|(l, n, w)| (l.clone(), gauge(if *w { 0 } else { n.lag_bytes() }))),
        )?;
        family(
            &mut enc,
            "shardgate_node_replication_lag_milliseconds",
            "How far behind a replica's data is, in time (0 for a primary).",
            MetricType::Gauge,
            nodes
                .iter()
                .map(|(l, n, w)| (l.clone(), gauge(if *w { 0 } else { n.lag_ms(now) }))),
        )?;
        family(
            &mut enc,
            "shardgate_node_bans",
            "Times the node was banned (health checks, connection failures, BAN).",
            MetricType::Counter,
            nodes
                .iter()
                .map(|(l, n, _)| (l.clone(), counter(n.ban_count()))),
        )?;
        family(
            &mut enc,
            "shardgate_shard_failovers",
            "Times a replica took over a shard's writes (role_detection = auto).",
            MetricType::Counter,
            topo.shards.iter().map(|s| {
                (
                    vec![("shard", s.index.to_string())],
                    counter(s.failover_count()),
                )
            }),
        )?;
        family(
            &mut enc,
            "shardgate_shard_paused",
            "1 while the shard is paused (PAUSE).",
            MetricType::Gauge,
            topo.shards.iter().map(|s| {
                (
                    vec![("shard", s.index.to_string())],
                    gauge(i64::from(rt.pause.is_paused(s.index))),
                )
            }),
        )?;

        // Clients.
        let clients = rt.clients.all();
        family(
            &mut enc,
            "shardgate_clients",
            "Connected clients by state.",
            MetricType::Gauge,
            [ClientState::Idle, ClientState::Active, ClientState::Waiting]
                .into_iter()
                .map(|st| {
                    (
                        vec![("state", st.name().to_owned())],
                        gauge(clients.iter().filter(|c| c.state() == st).count()),
                    )
                }),
        )?;

        // Statement latency.
        family(
            &mut enc,
            "shardgate_statement_duration_seconds",
            "Statement latency through shardgate, by route kind.",
            MetricType::Histogram,
            Route::KINDS.iter().enumerate().map(|(i, k)| {
                (
                    vec![("route", (*k).to_owned())],
                    Hist(rt.stats.latency[i].snapshot()),
                )
            }),
        )?;
        family(
            &mut enc,
            "shardgate_shard_statement_duration_seconds",
            "Latency of statements that ran on one shard, per shard.",
            MetricType::Histogram,
            rt.stats
                .shard_latency
                .iter()
                .take(snap.config.shards.len())
                .enumerate()
                .map(|(i, h)| (vec![("shard", i.to_string())], Hist(h.snapshot()))),
        )?;
        let no_labels = || Labels::new();
        family(
            &mut enc,
            "shardgate_fanout_statements",
            "Statements that ran on several shards.",
            MetricType::Counter,
            [(
                no_labels(),
                counter(
                    rt.stats
                        .fanout_statements
                        .load(std::sync::atomic::Ordering::Relaxed),
                ),
            )],
        )?;
        family(&mut enc, "shardgate_fanout_shards", "Shards those statements ran on, in total (divide by shardgate_fanout_statements for the mean width).", MetricType::Counter,
            [(no_labels(), counter(rt.stats.fanout_shards.load(std::sync::atomic::Ordering::Relaxed)))])?;
        let tp = rt.two_phase.as_ref();
        family(
            &mut enc,
            "shardgate_two_phase_commits",
            "Transactions committed with two-phase commit (decisions recorded).",
            MetricType::Counter,
            [(no_labels(), counter(tp.map_or(0, |c| c.commits())))],
        )?;
        family(
            &mut enc,
            "shardgate_two_phase_recovered",
            "In-doubt two-phase transactions finished by recovery.",
            MetricType::Counter,
            [(no_labels(), counter(tp.map_or(0, |c| c.recovered())))],
        )?;
        family(
            &mut enc,
            "shardgate_query_fingerprints",
            "Statement fingerprints kept in shardgate.query_stats.",
            MetricType::Gauge,
            [(no_labels(), gauge(rt.stats.queries.len()))],
        )?;
        family(
            &mut enc,
            "shardgate_config_version",
            "Version of the configuration snapshot in force (1 at start, +1 per reload or SET).",
            MetricType::Gauge,
            [(no_labels(), gauge(snap.version))],
        )?;
        family(
            &mut enc,
            "shardgate_shard_map_version",
            "Version of the shard map in force.",
            MetricType::Gauge,
            [(
                no_labels(),
                gauge(snap.sharding.as_ref().map_or(0, |s| s.map.version())),
            )],
        )?;
        // Rebalancing jobs this proxy ran.
        let jobs: Vec<(Labels, Arc<crate::rebalance::JobStatus>)> = rt
            .jobs
            .all()
            .into_iter()
            .map(|j| {
                let labels: Labels = vec![
                    ("job", j.id.to_string()),
                    ("kind", j.kind.to_owned()),
                    ("state", j.state().to_owned()),
                ];
                (labels, j)
            })
            .collect();
        family(
            &mut enc,
            "shardgate_job_progress_ratio",
            "Progress of each rebalancing job, 0 to 1.",
            MetricType::Gauge,
            jobs.iter()
                .map(|(l, j)| (l.clone(), ConstGauge::new(j.progress()))),
        )?;
        family(
            &mut enc,
            "shardgate_job_rows_copied",
            "Rows a rebalancing job has copied.",
            MetricType::Counter,
            jobs.iter().map(|(l, j)| {
                (
                    l.clone(),
                    counter(j.rows_copied.load(std::sync::atomic::Ordering::Relaxed)),
                )
            }),
        )?;
        family(
            &mut enc,
            "shardgate_job_bytes_copied",
            "Bytes of COPY data a rebalancing job has read from its sources.",
            MetricType::Counter,
            jobs.iter().map(|(l, j)| {
                (
                    l.clone(),
                    counter(j.bytes_copied.load(std::sync::atomic::Ordering::Relaxed)),
                )
            }),
        )?;
        family(
            &mut enc,
            "shardgate_job_lag_bytes",
            "WAL bytes a logical rebalancing job's slots have not read yet (at its last catch-up round).",
            MetricType::Gauge,
            jobs.iter().map(|(l, j)| {
                (
                    l.clone(),
                    gauge(j.lag_bytes.load(std::sync::atomic::Ordering::Relaxed)),
                )
            }),
        )?;
        family(
            &mut enc,
            "shardgate_job_cutover_retries",
            "Cutovers of a logical rebalancing job that released the moving keys because the last changes did not apply within sharding.rebalance_cutover_max_ms.",
            MetricType::Counter,
            jobs.iter().map(|(l, j)| {
                (
                    l.clone(),
                    counter(j.cutover_retries.load(std::sync::atomic::Ordering::Relaxed)),
                )
            }),
        )?;
        family(
            &mut enc,
            "shardgate_move_held_statements",
            "Statements waiting at a rebalancing move's gate now.",
            MetricType::Gauge,
            [(
                no_labels(),
                gauge(snap.move_gate.as_ref().map_or(0, |g| g.waiting())),
            )],
        )?;
        family(
            &mut enc,
            "shardgate_rebalance_fenced",
            "1 while this proxy's writes to sharded tables wait because it cannot renew its registration in shardgate_meta.",
            MetricType::Gauge,
            [(no_labels(), gauge(u64::from(rt.registry.fenced())))],
        )?;
        Ok(())
    }
}

//! pgbench throughput and latency directly against Postgres, through shardgate (bare, and
//! with replica routing at two consistency levels) and through PgBouncer, plus the proxies'
//! memory use.
//!
//! Run with `cargo bench -p shardgate --bench pgbench` (see `benches/README.md`). The program
//! starts one harness cluster (1 shard: a primary and [`REPLICAS`] streaming replicas), loads
//! it with `pgbench -i` and waits for the replicas to catch up, starts the proxies in
//! transaction mode with the same pool size (`direct`, `shardgate` and `pgbouncer` use the
//! primary only; `shardgate-strong` and `shardgate-eventual` list the replicas too), then
//! runs every mode against every target, interleaved (round by round, mode by mode, target
//! by target, the first target rotating each round) so machine noise hits all targets
//! alike. It prints a markdown table of the
//! means over the rounds on stdout and per-run numbers on stderr as it goes.
//!
//! `BENCH_SUITE=sharding` runs the sharding comparison instead: `pgbench -S`'s query as a
//! custom script (no `count(*)` on `pgbench_branches`) directly, through bare shardgate,
//! through shardgate with the pgbench tables sharded over the one shard, and through
//! shardgate over a second cluster of three shards loaded through it.
//!
//! `BENCH_SUITE=cross_shard` measures cross-shard queries: fan-out latency of aggregates
//! without a key (1 shard vs 3 shards vs direct), the throughput of reading a whole
//! 1,000,000-row result concatenated and k-way merged (`ORDER BY`) from three shards versus
//! one unsharded Postgres, with the proxy's RSS, and TPC-B over three shards with and
//! without two-phase commit.
//!
//! Environment (defaults in brackets): `BENCH_SUITE` [replica] (or `sharding`, `cross_shard`),
//! `BENCH_ROUNDS` [2], `BENCH_SECONDS` [20] per run, `BENCH_CLIENTS` [32], `BENCH_POOL` [10 and
//! the client count] server connections per proxy (a comma-separated list: the whole run is
//! repeated for each, one table each), `BENCH_SCALE` [10], `BENCH_WORKERS` [not set:
//! shardgate's shipped default] shardgate runtime threads (0 = one per core; 1 like
//! PgBouncer's single thread), `BENCH_MODES` and `BENCH_TARGETS`: comma-separated names
//! from [`MODES`] and [`TARGETS`] (any suite's; default: the suite's entries),
//! `BENCH_MERGE_ROUNDS` [3] rounds of the merge-throughput reads (`cross_shard`; 0 skips),
//! `BENCH_BASELINE`: another shardgate binary, run as target `shardgate-baseline` (configured
//! as `shardgate`) when `BENCH_TARGETS` names it, to compare two builds.
//!
//! More modes or targets (e.g. shardgate with another configuration) are added as entries
//! of [`MODES`] and [`TARGETS`].

use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use shardgate_harness::{pg_bin, Cluster, ClusterSpec};

#[path = "common/mod.rs"]
mod common;
use common::{
    create_app, free_port, in_own_session, mib, pgbouncer_version,
    start_pgbouncer as start_pgbouncer_process, status_kb, tail, write_readable, Process, DATABASE,
    PASSWORD, USER,
};

/// pgbench threads (`-j`).
const JOBS: usize = 2;
/// Clients and duration of the run that measures the proxies' memory with many clients.
const RSS_CLIENTS: usize = 100;
const RSS_SECONDS: u64 = 5;
/// Streaming replicas of the one shard (used by the replica-routing targets only).
const REPLICAS: usize = 2;
/// Postgres `max_connections` (every node): room for the direct clients plus every proxy's
/// pool and monitor connections.
const MAX_CONNECTIONS: &str = "300";
/// How long the replicas may take to replay the data loaded by `pgbench -i`.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// Time a pgbench run gets beyond its `-T` (connecting, reporting) before it is killed.
const PGBENCH_GRACE: Duration = Duration::from_secs(120);
/// Time limit for `pgbench -i`.
const INIT_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a running pgbench is polled (and the proxies' memory sampled).
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// One pgbench workload.
struct Mode {
    /// Name used in the table and in `BENCH_MODES`.
    name: &'static str,
    /// pgbench arguments selecting the script and the query protocol.
    args: &'static [&'static str],
    /// A custom script (run with `-f <file> -s $BENCH_SCALE`) instead of a built-in one.
    script: Option<&'static str>,
    /// The suites ([`SUITES`]) that run this mode unless `BENCH_MODES` says otherwise.
    suites: &'static [&'static str],
    /// The only targets that run this mode (the others show n/a); empty: every target.
    targets: &'static [&'static str],
}

/// `BENCH_SUITE` values: which modes and targets run unless `BENCH_MODES` and
/// `BENCH_TARGETS` name them. The first is the default.
const SUITES: &[&str] = &["replica", "sharding", "cross_shard"];

/// What `pgbench -S` runs, as a custom script. With `-f`, pgbench does not run its
/// `select count(*) from pgbench_branches` (which a sharded `pgbench_branches` cannot
/// answer before the cross-shard aggregate merge) and takes `:scale` from `-s`.
const POINT_SELECT_SCRIPT: &str = "\\set aid random(1, 100000 * :scale)\n\
                                   SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n";

/// 2000 consecutive accounts (about 250 kB of rows): what a proxy costs per row
/// when the answer is large, not per statement.
const RANGE_ROWS_SCRIPT: &str = "\\set a random(1, 100000 * :scale - 1999)\n\
                                 SELECT aid, bid, abalance, filler FROM pgbench_accounts \
                                 WHERE aid BETWEEN :a AND :a + 1999;\n";

/// A cross-shard aggregate without a key: every shard counts its branches, the proxy sums.
const COUNT_BRANCHES_SCRIPT: &str = "SELECT count(*) FROM pgbench_branches;\n";

/// A cross-shard aggregate over 100 consecutive accounts: hash sharding spreads them over
/// every shard, so each shard runs the range scan and the proxy combines the partials.
const RANGE_AGGREGATE_SCRIPT: &str = "\\set a random(1, 100000 * :scale - 99)\n\
                                      SELECT count(*), sum(abalance) FROM pgbench_accounts \
                                      WHERE aid BETWEEN :a AND :a + 99;\n";

/// Targets of the cross-shard aggregate modes.
const AGGREGATE_TARGETS: &[&str] = &["direct", "shardgate-1shard", "shardgate-3shards"];
/// Targets of the two-phase commit comparison (the same 3-shard cluster).
const TWO_PHASE_TARGETS: &[&str] = &["shardgate-3shards", "shardgate-3shards-2pc"];

/// The workloads, in table order.
const MODES: &[Mode] = &[
    Mode {
        name: "select-simple",
        args: &["-S", "-M", "simple"],
        script: None,
        suites: &["replica"],
        targets: &[],
    },
    Mode {
        name: "select-extended",
        args: &["-S", "-M", "extended"],
        script: None,
        suites: &["replica"],
        targets: &[],
    },
    Mode {
        name: "select-prepared",
        args: &["-S", "-M", "prepared"],
        script: None,
        suites: &["replica"],
        targets: &[],
    },
    Mode {
        name: "tpcb-simple",
        args: &["-M", "simple"],
        script: None,
        suites: &["replica"],
        targets: &[],
    },
    Mode {
        name: "tpcb-prepared",
        args: &["-M", "prepared"],
        script: None,
        suites: &["replica"],
        targets: &[],
    },
    Mode {
        name: "rows-simple",
        args: &["-M", "simple"],
        script: Some(RANGE_ROWS_SCRIPT),
        suites: &["replica"],
        targets: &[],
    },
    // `-S` as a custom script ([`POINT_SELECT_SCRIPT`]): runs over sharded pgbench tables.
    Mode {
        name: "key-select-simple",
        args: &["-M", "simple"],
        script: Some(POINT_SELECT_SCRIPT),
        suites: &["sharding"],
        targets: &[],
    },
    Mode {
        name: "key-select-extended",
        args: &["-M", "extended"],
        script: Some(POINT_SELECT_SCRIPT),
        suites: &["sharding"],
        targets: &[],
    },
    Mode {
        name: "key-select-prepared",
        args: &["-M", "prepared"],
        script: Some(POINT_SELECT_SCRIPT),
        suites: &["sharding"],
        targets: &[],
    },
    // Cross-shard aggregates (fan-out latency): 1 shard vs 3 shards vs direct.
    Mode {
        name: "count-branches-simple",
        args: &["-M", "simple"],
        script: Some(COUNT_BRANCHES_SCRIPT),
        suites: &["cross_shard"],
        targets: AGGREGATE_TARGETS,
    },
    Mode {
        name: "range-agg-simple",
        args: &["-M", "simple"],
        script: Some(RANGE_AGGREGATE_SCRIPT),
        suites: &["cross_shard"],
        targets: AGGREGATE_TARGETS,
    },
    Mode {
        name: "range-agg-prepared",
        args: &["-M", "prepared"],
        script: Some(RANGE_AGGREGATE_SCRIPT),
        suites: &["cross_shard"],
        targets: AGGREGATE_TARGETS,
    },
    // pgbench's TPC-B over three shards, with and without two-phase commit.
    Mode {
        name: "sharded-tpcb-simple",
        args: &["-M", "simple"],
        script: None,
        suites: &["cross_shard"],
        targets: TWO_PHASE_TARGETS,
    },
    Mode {
        name: "sharded-tpcb-prepared",
        args: &["-M", "prepared"],
        script: None,
        suites: &["cross_shard"],
        targets: TWO_PHASE_TARGETS,
    },
];

impl Mode {
    /// Whether the mode uses named prepared statements (`-M prepared`).
    fn uses_named_prepared(&self) -> bool {
        self.args.windows(2).any(|pair| pair == ["-M", "prepared"])
    }
}

/// How to start one kind of target.
struct TargetDef {
    /// Name used in the table and in `BENCH_TARGETS`.
    name: &'static str,
    /// Whether it serves named prepared statements (`-M prepared`); modes that need them
    /// are reported as n/a otherwise.
    named_prepared: bool,
    /// Starts it over the clusters.
    start: fn(&Clusters, &Params) -> Started,
    /// Its configuration, for the parameters printed after the table.
    describe: fn(&Params) -> String,
    /// Whether its memory is reported (peak RSS, and RSS with [`RSS_CLIENTS`] clients);
    /// only for targets with a process of their own.
    rss: bool,
    /// Whether it runs over the cluster of [`SHARDS`] primaries (started, and loaded
    /// through shardgate, only when a selected target needs it).
    three_shards: bool,
    /// The suites ([`SUITES`]) that start this target unless `BENCH_TARGETS` says otherwise.
    suites: &'static [&'static str],
}

/// The targets, in table order.
const TARGETS: &[TargetDef] = &[
    TargetDef {
        name: "direct",
        named_prepared: true,
        start: start_direct,
        describe: describe_direct,
        rss: false,
        three_shards: false,
        suites: &["replica", "sharding", "cross_shard"],
    },
    TargetDef {
        // The primary only: a shard without replicas skips statement classification, so
        // this is the bare proxy.
        name: "shardgate",
        named_prepared: true,
        start: start_shardgate,
        describe: describe_shardgate,
        rss: true,
        three_shards: false,
        suites: &["replica", "sharding"],
    },
    TargetDef {
        // `shardgate` while an operator watches it: an admin client runs `SELECT * FROM
        // shardgate.pools` ten times a second and `/metrics` is scraped every second.
        // Only when named in `BENCH_TARGETS`.
        name: "shardgate-observed",
        named_prepared: true,
        start: start_shardgate_observed,
        describe: describe_shardgate_observed,
        rss: false,
        three_shards: false,
        suites: &[],
    },
    TargetDef {
        // Primary and replicas, reads strong: every statement is classified and still goes
        // to the primary, so the difference to `shardgate` is the classification overhead.
        name: "shardgate-strong",
        named_prepared: true,
        start: start_shardgate_strong,
        describe: describe_shardgate_strong,
        rss: false,
        three_shards: false,
        suites: &["replica"],
    },
    TargetDef {
        // Primary and replicas, reads eventual: reads go to the least loaded replica;
        // explicit transactions (the TPC-B script) stay on the primary.
        name: "shardgate-eventual",
        named_prepared: true,
        start: start_shardgate_eventual,
        describe: describe_shardgate_eventual,
        rss: false,
        three_shards: false,
        suites: &["replica"],
    },
    TargetDef {
        // PgBouncer before 1.21 has no `max_prepared_statements`, so named prepared
        // statements do not survive transaction pooling.
        name: "pgbouncer",
        named_prepared: false,
        start: start_pgbouncer,
        describe: describe_pgbouncer,
        rss: true,
        three_shards: false,
        suites: &["replica"],
    },
    TargetDef {
        // Another shardgate build (`BENCH_BASELINE`) configured as `shardgate`: A/B of two
        // builds under the same care (sessions, interleaving, fresh processes). Only when
        // named in `BENCH_TARGETS`.
        name: "shardgate-baseline",
        named_prepared: true,
        start: start_shardgate_baseline,
        describe: describe_shardgate_baseline,
        rss: true,
        three_shards: false,
        suites: &[],
    },
    TargetDef {
        // One shard (the primary), with the pgbench tables configured as sharded: every
        // statement goes through shard-key planning and the shard map.
        name: "shardgate-1shard",
        named_prepared: true,
        start: start_shardgate_1shard,
        describe: describe_shardgate_1shard,
        rss: false,
        three_shards: false,
        suites: &["sharding", "cross_shard"],
    },
    TargetDef {
        // The cluster of three shards (primaries only), the pgbench tables sharded by
        // their keys and loaded through shardgate with `pgbench -i`.
        name: "shardgate-3shards",
        named_prepared: true,
        start: start_shardgate_3shards,
        describe: describe_shardgate_3shards,
        rss: false,
        three_shards: true,
        suites: &["sharding", "cross_shard"],
    },
    TargetDef {
        // The same 3-shard cluster and configuration as `shardgate-3shards`, with
        // `[proxy] two_phase_commit = true`.
        name: "shardgate-3shards-2pc",
        named_prepared: true,
        start: start_shardgate_3shards_2pc,
        describe: describe_shardgate_3shards_2pc,
        rss: false,
        three_shards: true,
        suites: &["cross_shard"],
    },
];

/// A throughput ratio shown in the table when both targets are selected.
struct Ratio {
    /// Column header.
    label: &'static str,
    /// Target names.
    numerator: &'static str,
    denominator: &'static str,
}

/// The ratios, in table order.
const RATIOS: &[Ratio] = &[
    Ratio {
        label: "shardgate/direct",
        numerator: "shardgate",
        denominator: "direct",
    },
    Ratio {
        label: "shardgate/pgbouncer",
        numerator: "shardgate",
        denominator: "pgbouncer",
    },
    Ratio {
        label: "shardgate/baseline",
        numerator: "shardgate",
        denominator: "shardgate-baseline",
    },
    Ratio {
        label: "eventual/strong",
        numerator: "shardgate-eventual",
        denominator: "shardgate-strong",
    },
    Ratio {
        label: "1shard/shardgate",
        numerator: "shardgate-1shard",
        denominator: "shardgate",
    },
    Ratio {
        label: "3shards/1shard",
        numerator: "shardgate-3shards",
        denominator: "shardgate-1shard",
    },
    Ratio {
        label: "3shards/direct",
        numerator: "shardgate-3shards",
        denominator: "direct",
    },
    Ratio {
        label: "2pc/no-2pc",
        numerator: "shardgate-3shards-2pc",
        denominator: "shardgate-3shards",
    },
];

/// What a target's start function returns.
struct Started {
    port: u16,
    process: Option<Process>,
    /// Background load of an operator watching the proxy (`shardgate-observed`).
    observer: Option<Observer>,
}

/// The clusters targets run over: the 1-shard cluster (primary and [`REPLICAS`] replicas,
/// loaded directly) and, when a selected target needs it, [`SHARDS`] primaries loaded
/// through shardgate. Dropped after the targets.
struct Clusters {
    one: Cluster,
    three: Option<Cluster>,
}

impl Clusters {
    fn three(&self) -> &Cluster {
        self.three
            .as_ref()
            .expect("the 3-shard cluster is started when a selected target needs it")
    }
}

/// A running target: where pgbench connects, and the proxy process if there is one.
struct Target {
    /// How it was started (and is restarted).
    def: &'static TargetDef,
    name: &'static str,
    port: u16,
    /// An operator's load on the proxy; declared first, so stopped before the proxy.
    _observer: Option<Observer>,
    /// Stopped when the target is dropped.
    process: Option<Process>,
}

impl Target {
    fn start(def: &'static TargetDef, clusters: &Clusters, params: &Params) -> Target {
        let Started {
            port,
            process,
            observer,
        } = (def.start)(clusters, params);
        Target {
            def,
            name: def.name,
            port,
            process,
            _observer: observer,
        }
    }

    /// The proxy's process id (not that of a `runuser` wrapper).
    fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|process| process.pid)
    }

    /// The process id of a proxy whose memory is reported.
    fn rss_pid(&self) -> Option<u32> {
        self.pid().filter(|_| self.def.rss)
    }

    /// Stops the target's process and starts a fresh one.
    fn restart(&mut self, clusters: &Clusters, params: &Params) {
        self._observer = None;
        self.process = None;
        *self = Target::start(self.def, clusters, params);
    }

    fn supports(&self, mode: &Mode) -> bool {
        (self.def.named_prepared || !mode.uses_named_prepared())
            && (mode.targets.is_empty() || mode.targets.contains(&self.name))
    }
}

/// Benchmark parameters, from the environment.
struct Params {
    rounds: usize,
    seconds: u64,
    clients: usize,
    /// Server connections per proxy in the run under way (one of `pools`).
    pool: usize,
    /// The pool sizes to run, one after another (`BENCH_POOL`).
    pools: Vec<usize>,
    scale: usize,
    /// shardgate's `workers`; `None` leaves it out of the configuration (the shipped default).
    workers: Option<usize>,
    suite: &'static str,
    modes: Vec<&'static Mode>,
    targets: Vec<&'static TargetDef>,
    /// Where each custom-script mode's script is written (`<mode>.sql`).
    script_dir: PathBuf,
    /// Rounds of the merge-throughput measurement (`cross_shard` suite; 0 skips it).
    merge_rounds: usize,
    /// The `shardgate-baseline` target's binary (`BENCH_BASELINE`).
    baseline: Option<PathBuf>,
}

impl Params {
    fn from_env() -> Params {
        let suite = std::env::var("BENCH_SUITE").unwrap_or_default();
        let suite = match suite.trim() {
            "" => SUITES[0],
            s => SUITES.iter().copied().find(|k| *k == s).unwrap_or_else(|| {
                panic!(
                    "BENCH_SUITE: unknown suite {s:?}; known: {}",
                    SUITES.join(",")
                )
            }),
        };
        let targets = env_selection(
            "BENCH_TARGETS",
            TARGETS,
            |target| target.name,
            |target| target.suites.contains(&suite),
        );
        let baseline = std::env::var_os("BENCH_BASELINE")
            .filter(|path| !path.is_empty())
            .map(PathBuf::from);
        if targets.iter().any(|t| t.name == "shardgate-baseline") {
            match &baseline {
                None => panic!(
                    "BENCH_TARGETS names shardgate-baseline: set BENCH_BASELINE to another \
                     shardgate binary (for example one built in a git worktree of the commit \
                     to compare against)"
                ),
                Some(path) if !path.is_file() => {
                    panic!("BENCH_BASELINE: {} is not a file", path.display())
                }
                Some(_) => {}
            }
        }
        let clients = env_number("BENCH_CLIENTS", 32);
        // Fewer server connections than clients, and as many.
        let pools = env_numbers("BENCH_POOL", &[10.min(clients), clients]);
        let workers = std::env::var("BENCH_WORKERS")
            .ok()
            .filter(|w| !w.trim().is_empty())
            .map(|_| env_number("BENCH_WORKERS", 0));
        Params {
            rounds: env_number("BENCH_ROUNDS", 2),
            seconds: env_number("BENCH_SECONDS", 20),
            clients,
            pool: pools[0],
            pools,
            scale: env_number("BENCH_SCALE", 10),
            workers,
            suite,
            modes: env_selection(
                "BENCH_MODES",
                MODES,
                |mode| mode.name,
                |mode| mode.suites.contains(&suite),
            ),
            targets,
            script_dir: PathBuf::new(),
            merge_rounds: env_number("BENCH_MERGE_ROUNDS", 3),
            baseline,
        }
    }

    /// shardgate's `workers` as configured, for the report.
    fn workers_text(&self) -> String {
        match self.workers {
            None => "default (not set)".to_owned(),
            Some(0) => "0 (one per core)".to_owned(),
            Some(n) => n.to_string(),
        }
    }

    /// The script file of a custom-script mode.
    fn script_file(&self, mode: &Mode) -> PathBuf {
        self.script_dir.join(format!("{}.sql", mode.name))
    }

    /// pgbench threads: `-j` may not exceed `-c`.
    fn jobs(&self, clients: usize) -> usize {
        JOBS.min(clients).max(1)
    }
}

/// `$name` parsed as a number, or `default` when unset or empty.
fn env_number<T: FromStr>(name: &str, default: T) -> T
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={value:?} is not a valid number: {e}")),
        _ => default,
    }
}

/// The comma-separated numbers of `$name` (at least one), or `default` when unset or empty.
fn env_numbers(name: &str, default: &[usize]) -> Vec<usize> {
    let value = std::env::var(name).unwrap_or_default();
    let numbers: Vec<usize> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .unwrap_or_else(|e| panic!("{name}={value:?}: {s:?} is not a valid number: {e}"))
        })
        .collect();
    if numbers.is_empty() {
        default.to_vec()
    } else {
        numbers
    }
}

/// The entries of `all` named in the comma-separated `$name`, in `all`'s order; those
/// `in_suite` accepts when unset or empty. Unknown names are an error, so a typo cannot
/// empty the run.
fn env_selection<T>(
    name: &str,
    all: &'static [T],
    key: fn(&T) -> &'static str,
    in_suite: impl Fn(&T) -> bool,
) -> Vec<&'static T> {
    let value = std::env::var(name).unwrap_or_default();
    let wanted: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if wanted.is_empty() {
        return all.iter().filter(|t| in_suite(t)).collect();
    }
    let known: Vec<&str> = all.iter().map(key).collect();
    if let Some(unknown) = wanted.iter().find(|w| !known.contains(w)) {
        panic!(
            "{name}: unknown name {unknown:?}; known: {}",
            known.join(",")
        );
    }
    all.iter().filter(|t| wanted.contains(&key(t))).collect()
}

fn main() {
    // `cargo test --benches` runs bench targets without `--bench`: skip the long run then.
    if !std::env::args().any(|arg| arg == "--bench") {
        eprintln!("pgbench bench: skipped (run it with `cargo bench`)");
        return;
    }
    let mut params = Params::from_env();
    let cluster = start_cluster(&params);
    params.script_dir = cluster.dir().to_owned();
    for mode in &params.modes {
        if let Some(script) = mode.script {
            write_readable(&params.script_file(mode), script);
        }
    }
    let three = params
        .targets
        .iter()
        .any(|def| def.three_shards)
        .then(|| start_three_shards(&params));
    let clusters = Clusters {
        one: cluster,
        three,
    };
    for (i, &pool) in params.pools.clone().iter().enumerate() {
        params.pool = pool;
        let mut targets: Vec<Target> = params
            .targets
            .iter()
            .map(|def| Target::start(def, &clusters, &params))
            .collect();
        // Before the pgbench runs, so every target still holds the rows `pgbench -i` loaded.
        let merge = (i == 0 && params.suite == "cross_shard" && params.merge_rounds > 0)
            .then(|| merge_throughput(&params, &targets));
        let results = run_rounds(&params, &clusters, &mut targets);
        let peaks = peak_rss(&targets);
        let with_clients = rss_with_clients(&params, &targets);
        println!("\n### pool_size = {pool}, {} clients", params.clients);
        print_table(&params, &targets, &results);
        if let Some(merge) = &merge {
            print_merge(&params, merge);
        }
        print_memory(&peaks, &with_clients);
        if i + 1 == params.pools.len() {
            print_parameters(&params, &clusters.one, &targets);
        }
        // `targets` (stopping the proxies) is dropped before `clusters` (stopping Postgres).
    }
}

// ---------------------------------------------------------------------------------------
// Cluster and targets
// ---------------------------------------------------------------------------------------

/// One shard with [`REPLICAS`] replicas, with the `app` role and database, loaded by
/// `pgbench -i` on the primary and replayed by the replicas.
fn start_cluster(params: &Params) -> Cluster {
    eprintln!("starting the cluster");
    let cluster =
        Cluster::start(ClusterSpec::new(1, REPLICAS).setting("max_connections", MAX_CONNECTIONS))
            .expect("start the cluster");
    create_app(&cluster);
    eprintln!("pgbench -i -s {}", params.scale);
    let scale = params.scale.to_string();
    let init = run(
        pgbench(cluster.shard(0).primary.port(), &["-i", "-q", "-s", &scale]),
        INIT_TIMEOUT,
        || {},
    )
    .and_then(|finished| finished.check());
    if let Err(e) = init {
        panic!("pgbench -i failed: {e}");
    }
    eprintln!("waiting for the replicas to catch up");
    cluster
        .wait_replicas_caught_up(CATCH_UP_TIMEOUT)
        .expect("replicas catch up after pgbench -i");
    cluster
}

fn start_direct(clusters: &Clusters, _params: &Params) -> Started {
    Started {
        port: clusters.one.shard(0).primary.port(),
        process: None,
        observer: None,
    }
}

fn describe_direct(_params: &Params) -> String {
    "PostgreSQL itself, no proxy".to_owned()
}

/// The nodes a shardgate configuration lists, and its routing.
#[derive(Clone, Copy)]
enum Routing {
    /// Each shard's primary only (`replicas = []`): no statement classification.
    PrimaryOnly,
    /// Primary and replicas, with `[routing] default_consistency = "<level>"`.
    Replicas { consistency: &'static str },
    /// Each shard's primary only, with the pgbench tables sharded ([`SHARDED_PGBENCH`]),
    /// and `[proxy] two_phase_commit` as given.
    Sharded { two_phase: bool },
    /// As `PrimaryOnly`, with an admin user and `metrics_listen` on port `metrics`.
    Observed { metrics: u16 },
}

/// The pgbench tables sharded by their keys (hash, bigint), as in `tests/sharding.rs`.
const SHARDED_PGBENCH: &str =
    "\n[[sharded_tables]]\ntable = \"pgbench_accounts\"\ncolumn = \"aid\"\n\
     \n[[sharded_tables]]\ntable = \"pgbench_tellers\"\ncolumn = \"tid\"\n\
     \n[[sharded_tables]]\ntable = \"pgbench_branches\"\ncolumn = \"bid\"\n\
     \n[[sharded_tables]]\ntable = \"pgbench_history\"\ncolumn = \"aid\"\n";

/// Shards of the cluster of the `shardgate-3shards` targets.
const SHARDS: usize = 3;

fn start_shardgate(clusters: &Clusters, params: &Params) -> Started {
    spawn_shardgate("shardgate", &clusters.one, params, Routing::PrimaryOnly)
}

fn start_shardgate_observed(clusters: &Clusters, params: &Params) -> Started {
    let metrics = free_port();
    let mut started = spawn_shardgate(
        "shardgate-observed",
        &clusters.one,
        params,
        Routing::Observed { metrics },
    );
    started.observer = Some(Observer::start(started.port, metrics));
    started
}

fn describe_shardgate_observed(params: &Params) -> String {
    format!(
        "{}; meanwhile an admin client runs SELECT * FROM shardgate.pools every 100 ms and \
         /metrics is scraped every second",
        describe_shardgate(params)
    )
}

/// An operator's load on a proxy: admin queries and metrics scrapes, until dropped.
struct Observer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Observer {
    fn start(port: u16, metrics: u16) -> Observer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("observer runtime");
            rt.block_on(async move {
                let conninfo = format!(
                    "host=127.0.0.1 port={port} user=admin password=admin dbname=shardgate"
                );
                let (client, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
                    .await
                    .expect("admin console");
                tokio::spawn(conn);
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                let mut n = 0u64;
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    tick.tick().await;
                    client
                        .simple_query("SELECT * FROM shardgate.pools")
                        .await
                        .expect("admin query");
                    n += 1;
                    if n.is_multiple_of(10) {
                        let mut s =
                            TcpStream::connect(("127.0.0.1", metrics)).expect("metrics endpoint");
                        std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\n\r\n")
                            .expect("scrape");
                        let mut body = String::new();
                        let _ = s.read_to_string(&mut body);
                        assert!(body.contains("shardgate_pool_size"), "a metrics page");
                    }
                }
            });
        });
        Observer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start_shardgate_baseline(clusters: &Clusters, params: &Params) -> Started {
    let binary = params
        .baseline
        .as_deref()
        .expect("checked in Params::from_env");
    spawn_shardgate_binary(
        binary,
        "shardgate-baseline",
        &clusters.one,
        params,
        Routing::PrimaryOnly,
    )
}

fn start_shardgate_strong(clusters: &Clusters, params: &Params) -> Started {
    let routing = Routing::Replicas {
        consistency: "strong",
    };
    spawn_shardgate("shardgate-strong", &clusters.one, params, routing)
}

fn start_shardgate_eventual(clusters: &Clusters, params: &Params) -> Started {
    let routing = Routing::Replicas {
        consistency: "eventual",
    };
    spawn_shardgate("shardgate-eventual", &clusters.one, params, routing)
}

fn start_shardgate_1shard(clusters: &Clusters, params: &Params) -> Started {
    let routing = Routing::Sharded { two_phase: false };
    spawn_shardgate("shardgate-1shard", &clusters.one, params, routing)
}

fn start_shardgate_3shards(clusters: &Clusters, params: &Params) -> Started {
    let routing = Routing::Sharded { two_phase: false };
    spawn_shardgate("shardgate-3shards", clusters.three(), params, routing)
}

fn start_shardgate_3shards_2pc(clusters: &Clusters, params: &Params) -> Started {
    let routing = Routing::Sharded { two_phase: true };
    spawn_shardgate("shardgate-3shards-2pc", clusters.three(), params, routing)
}

/// A cluster of [`SHARDS`] primaries, loaded with `pgbench -i` through a shardgate with
/// the pgbench tables sharded (so every row lands on the shard of its key); that loader
/// is stopped before the targets start.
fn start_three_shards(params: &Params) -> Cluster {
    eprintln!("starting a cluster of {SHARDS} primaries");
    let own =
        Cluster::start(ClusterSpec::new(SHARDS, 0).setting("max_connections", MAX_CONNECTIONS))
            .expect("start the 3-shard cluster");
    own.execute_on_primaries(&format!(
        "CREATE ROLE {USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}'"
    ))
    .expect("create the app role");
    own.execute_on_primaries(&format!("CREATE DATABASE {DATABASE} OWNER {USER}"))
        .expect("create the app database");
    let routing = Routing::Sharded { two_phase: false };
    let loader = spawn_shardgate("shardgate-3shards-loader", &own, params, routing);
    eprintln!(
        "3-shard cluster: pgbench -i -s {} through shardgate",
        params.scale
    );
    let scale = params.scale.to_string();
    let init = run(
        pgbench(loader.port, &["-i", "-q", "-s", &scale]),
        INIT_TIMEOUT,
        || {},
    )
    .and_then(|finished| finished.check());
    if let Err(e) = init {
        let log = loader.process.as_ref().map(Process::log_tail);
        panic!(
            "pgbench -i through shardgate over {SHARDS} shards failed: {e}\n{}",
            log.unwrap_or_default()
        );
    }
    drop(loader);
    for (i, shard) in own.shards().iter().enumerate() {
        let rows = shard
            .primary
            .psql(DATABASE, "SELECT count(*) FROM pgbench_accounts")
            .unwrap_or_else(|e| format!("unknown ({e})"));
        eprintln!("3-shard cluster: shard {i} holds {} accounts", rows.trim());
    }
    own
}

/// Starts a shardgate process named `name` (its config and log files in the cluster
/// directory are named after it) on a port of its own.
fn spawn_shardgate(
    name: &'static str,
    cluster: &Cluster,
    params: &Params,
    routing: Routing,
) -> Started {
    let binary = Path::new(env!("CARGO_BIN_EXE_shardgate"));
    spawn_shardgate_binary(binary, name, cluster, params, routing)
}

/// Starts `binary` (a shardgate build) as target `name`.
fn spawn_shardgate_binary(
    binary: &Path,
    name: &'static str,
    cluster: &Cluster,
    params: &Params,
    routing: Routing,
) -> Started {
    let port = free_port();
    let config = cluster.dir().join(format!("{name}-bench.toml"));
    write_readable(&config, &shardgate_config(cluster, params, port, routing));
    let mut command = in_own_session(binary);
    command.arg("--config").arg(&config);
    let log = cluster.dir().join(format!("{name}.log"));
    let mut process = Process::spawn(name, command, &log);
    process.wait_listening(port);
    Started {
        port,
        process: Some(process),
        observer: None,
    }
}

/// shardgate in transaction mode with the `app` user (SCRAM) over every shard, with the
/// nodes and routing of `routing`.
fn shardgate_config(cluster: &Cluster, params: &Params, port: u16, routing: Routing) -> String {
    let mut config = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\npool_mode = \"transaction\"\n\
         pool_size = {}\n",
        params.pool
    );
    if let Some(workers) = params.workers {
        let _ = writeln!(config, "workers = {workers}");
    }
    if let Routing::Sharded { two_phase: true } = routing {
        let log = cluster.dir().join(format!("shardgate-2pc-{port}.log"));
        let _ = writeln!(
            config,
            "two_phase_commit = true\ntwo_phase_log = {:?}",
            log.display().to_string()
        );
    }
    if let Routing::Observed { metrics } = routing {
        let _ = writeln!(config, "metrics_listen = \"127.0.0.1:{metrics}\"");
    }
    let _ = write!(
        config,
        "\n[[users]]\nname = \"{USER}\"\npassword = \"{PASSWORD}\"\n"
    );
    if let Routing::Observed { .. } = routing {
        config.push_str(
            "\n[[users]]\nname = \"admin\"\npassword = \"admin\"\nadmin = true\nserver_user = \"app\"\nserver_password = \"secret\"\n",
        );
    }
    if let Routing::Replicas { consistency } = routing {
        let _ = write!(
            config,
            "\n[routing]\ndefault_consistency = \"{consistency}\"\n"
        );
    }
    if let Routing::Sharded { .. } = routing {
        config.push_str(SHARDED_PGBENCH);
    }
    for shard in cluster.shards() {
        let replicas: Vec<String> = match routing {
            Routing::PrimaryOnly | Routing::Sharded { .. } | Routing::Observed { .. } => Vec::new(),
            Routing::Replicas { .. } => shard
                .replicas
                .iter()
                .map(|replica| format!("{:?}", replica.addr()))
                .collect(),
        };
        let _ = write!(
            config,
            "\n[[shards]]\nprimary = {:?}\nreplicas = [{}]\n",
            shard.primary.addr(),
            replicas.join(", ")
        );
    }
    config
}

fn describe_shardgate(params: &Params) -> String {
    format!(
        "transaction mode, pool_size={}, workers={}, SCRAM; \
         config lists the primary only (replicas = []), so no statement classification",
        params.pool,
        params.workers_text()
    )
}

fn describe_shardgate_1shard(params: &Params) -> String {
    format!(
        "as shardgate (the primary only, pool_size={}), with pgbench_accounts, _tellers, \
         _branches and _history configured as [[sharded_tables]] (hash on aid, tid, bid, aid): \
         every statement is planned for its shard key (statements without a key, such as \
         the count(*) on pgbench_branches of the built-in scripts, go to the one shard)",
        params.pool
    )
}

fn describe_shardgate_3shards(params: &Params) -> String {
    format!(
        "a second cluster of {SHARDS} primaries (no replicas, same machine), the pgbench \
         tables sharded as in shardgate-1shard and loaded with pgbench -i -s {} through \
         shardgate; pool_size={} per shard; two_phase_commit = false",
        params.scale, params.pool
    )
}

fn describe_shardgate_3shards_2pc(params: &Params) -> String {
    format!(
        "as shardgate-3shards (the same cluster and rows, pool_size={} per shard), with \
         [proxy] two_phase_commit = true (decision log in the cluster directory)",
        params.pool
    )
}

fn describe_shardgate_baseline(params: &Params) -> String {
    format!(
        "{} (BENCH_BASELINE), configured as shardgate",
        params
            .baseline
            .as_deref()
            .map_or("unset".into(), Path::to_string_lossy)
    )
}

fn describe_shardgate_strong(params: &Params) -> String {
    format!(
        "as shardgate, but the config lists the primary and {REPLICAS} replicas with \
         [routing] default_consistency = \"strong\": every statement is classified, all \
         run on the primary (pool_size={} per node)",
        params.pool
    )
}

fn describe_shardgate_eventual(params: &Params) -> String {
    format!(
        "as shardgate-strong, but default_consistency = \"eventual\": reads go to the least \
         loaded of the {REPLICAS} replicas, explicit transactions (TPC-B) to the primary \
         (pool_size={} per node)",
        params.pool
    )
}

/// PgBouncer as the `postgres` OS user (it refuses to run as root), with its files in the
/// cluster directory, which that user owns.
fn start_pgbouncer(clusters: &Clusters, params: &Params) -> Started {
    let cluster = &clusters.one;
    let server_port = cluster.shard(0).primary.port();
    let (port, process) = start_pgbouncer_process(cluster.dir(), server_port, params.pool, 5000);
    Started {
        port,
        process: Some(process),
        observer: None,
    }
}

fn describe_pgbouncer(params: &Params) -> String {
    format!(
        "{}, transaction mode, default_pool_size={}, scram-sha-256; -M prepared is n/a \
         (no prepared statement support in transaction mode before 1.21)",
        pgbouncer_version(),
        params.pool
    )
}

// ---------------------------------------------------------------------------------------
// Running pgbench
// ---------------------------------------------------------------------------------------

/// A `pgbench` command with `args` against 127.0.0.1:`port` as the app user.
fn pgbench(port: u16, args: &[&str]) -> Command {
    let mut command = in_own_session(pg_bin("pgbench"));
    command.args(args).arg(conninfo(port));
    command
}

/// The connection string used for every target.
fn conninfo(port: u16) -> String {
    format!(
        "host=127.0.0.1 port={port} user={USER} password={PASSWORD} dbname={DATABASE} \
         sslmode=disable"
    )
}

/// A finished command.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    /// Err with the command's output unless it exited successfully.
    fn check(self) -> Result<Finished, String> {
        if self.status.success() {
            Ok(self)
        } else {
            Err(format!(
                "exited with {}\nstdout:\n{}\nstderr:\n{}",
                self.status,
                tail(&self.stdout),
                tail(&self.stderr)
            ))
        }
    }
}

/// Runs `command`, calling `poll` every [`POLL_INTERVAL`] while it runs; kills it after
/// `timeout`.
fn run(
    mut command: Command,
    timeout: Duration,
    mut poll: impl FnMut(),
) -> Result<Finished, String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("waiting for {command:?}: {e}")),
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{command:?} did not finish within {timeout:?}"));
        }
        poll();
        thread::sleep(POLL_INTERVAL);
    };
    Ok(Finished {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn read_in_background(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// What one pgbench run measured.
#[derive(Debug, Clone, Copy)]
struct Stats {
    tps: f64,
    latency_ms: f64,
    failed_transactions: u64,
    /// The proxy's CPU time (user + system) per transaction, in µs; `None` for `direct`.
    proxy_cpu_us: Option<f64>,
    /// pgbench's CPU time per transaction, in µs.
    pgbench_cpu_us: Option<f64>,
    /// CPU time of every Postgres process on the machine per transaction, in µs.
    postgres_cpu_us: Option<f64>,
    /// Busy CPU time of the whole machine per transaction, in µs.
    machine_cpu_us: Option<f64>,
    /// Context switches of the whole machine per transaction.
    switches: Option<f64>,
}

/// A run's stats, or why it failed.
type Outcome = Result<Stats, String>;

/// One timed pgbench run of `mode` against `target` with the benchmark's client count.
fn bench_once(params: &Params, target: &Target, mode: &Mode) -> Outcome {
    let clients = params.clients.to_string();
    let jobs = params.jobs(params.clients).to_string();
    let seconds = params.seconds.to_string();
    let mut args = vec!["-c", &clients, "-j", &jobs, "-T", &seconds, "-n"];
    let scale = params.scale.to_string();
    let script = params.script_file(mode);
    let script = script.to_string_lossy();
    if mode.script.is_some() {
        args.extend(["-f", &script, "-s", &scale]);
    }
    args.extend(mode.args);
    let timeout = Duration::from_secs(params.seconds) + PGBENCH_GRACE;
    let cpu_before = target.pid().and_then(cpu_ticks);
    let children_before = children_cpu_ticks();
    let postgres_before = postgres_cpu_ticks();
    let machine_before = machine_busy_ticks();
    let switches_before = machine_context_switches();
    let finished = run(pgbench(target.port, &args), timeout, || {})?.check()?;
    let cpu_after = target.pid().and_then(cpu_ticks);
    let children_after = children_cpu_ticks();
    let postgres_after = postgres_cpu_ticks();
    let machine_after = machine_busy_ticks();
    let switches_after = machine_context_switches();
    if finished.stderr.to_lowercase().contains("error") {
        return Err(format!(
            "pgbench reported errors:\n{}",
            tail(&finished.stderr)
        ));
    }
    let mut stats = parse_stats(&finished.stdout)?;
    let transactions = finished
        .stdout
        .lines()
        .find_map(|line| number_after(line, "number of transactions actually processed: "));
    let per_transaction = |before: Option<u64>, after: Option<u64>| {
        let (before, after, transactions) = (before?, after?, transactions?);
        (transactions > 0.0).then(|| {
            after.saturating_sub(before) as f64 / CLOCK_TICKS_PER_SECOND * 1e6 / transactions
        })
    };
    stats.proxy_cpu_us = per_transaction(cpu_before, cpu_after);
    stats.pgbench_cpu_us = per_transaction(children_before, children_after);
    stats.postgres_cpu_us = per_transaction(postgres_before, postgres_after);
    stats.machine_cpu_us = per_transaction(machine_before, machine_after);
    stats.switches = per_transaction(switches_before, switches_after)
        .map(|scaled| scaled * CLOCK_TICKS_PER_SECOND / 1e6);
    Ok(stats)
}

/// Context switches on all CPUs since boot (`/proc/stat` `ctxt`).
fn machine_context_switches() -> Option<u64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|line| line.strip_prefix("ctxt "))?
        .trim()
        .parse()
        .ok()
}

/// Busy time of all CPUs so far (`/proc/stat`: everything but idle and iowait), in ticks.
fn machine_busy_ticks() -> Option<u64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = cpu
        .split_whitespace()
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some(ticks.iter().take(8).sum::<u64>() - idle)
}

/// A CPU time in µs with one decimal, or `-`.
fn micros(us: Option<f64>) -> String {
    us.map_or("-".to_owned(), |us| format!("{us:.1}"))
}

/// The kernel's `USER_HZ`: the unit of the CPU times in `/proc/<pid>/stat` (100 on Linux).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU time of `pid` so far, in clock ticks (`/proc/<pid>/stat` fields 14
/// and 15).
fn cpu_ticks(pid: u32) -> Option<u64> {
    stat_ticks(&format!("/proc/{pid}/stat"), 14)
}

/// CPU time of every Postgres process so far, in clock ticks: each live `postgres`
/// process's own, plus, for each postmaster (a `postgres` whose parent is not one), that of
/// its children that have exited (`cutime` and `cstime`), so backends that end between two
/// readings still count.
fn postgres_cpu_ticks() -> Option<u64> {
    let mut total = 0;
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if !stat.contains("(postgres)") {
            continue;
        }
        let path = format!("/proc/{pid}/stat");
        total += stat_ticks(&path, 14).unwrap_or(0);
        let parent_is_postgres = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
            .and_then(|ppid| fs::read_to_string(format!("/proc/{ppid}/stat")).ok())
            .is_some_and(|parent| parent.contains("(postgres)"));
        if !parent_is_postgres {
            total += stat_ticks(&path, 16).unwrap_or(0);
        }
    }
    Some(total)
}

/// CPU time of this program's waited-for children so far (pgbench runs), in clock ticks
/// (`/proc/self/stat` fields 16 and 17).
fn children_cpu_ticks() -> Option<u64> {
    stat_ticks("/proc/self/stat", 16)
}

/// The sum of fields `first` and `first + 1` (numbered from 1, as proc(5) does) of a
/// `/proc/<pid>/stat` file, counted after the parenthesised command name, which may contain
/// spaces.
fn stat_ticks(path: &str, first: usize) -> Option<u64> {
    let stat = fs::read_to_string(path).ok()?;
    // The text after ')' starts with field 3.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(first - 3);
    let a: u64 = fields.next()?.parse().ok()?;
    let b: u64 = fields.next()?.parse().ok()?;
    Some(a + b)
}

/// Reads TPS, average latency and failed transactions from pgbench's report.
fn parse_stats(stdout: &str) -> Outcome {
    let tps = stdout
        .lines()
        .find(|line| line.contains("without initial connection time"))
        .and_then(|line| number_after(line, "tps = "));
    let latency = stdout
        .lines()
        .find_map(|line| number_after(line, "latency average = "));
    let failed = stdout
        .lines()
        .find_map(|line| number_after(line, "number of failed transactions: "));
    match (tps, latency, failed) {
        (Some(tps), Some(latency_ms), Some(failed)) => Ok(Stats {
            tps,
            latency_ms,
            failed_transactions: failed as u64,
            proxy_cpu_us: None,
            pgbench_cpu_us: None,
            postgres_cpu_us: None,
            machine_cpu_us: None,
            switches: None,
        }),
        _ => Err(format!(
            "could not read tps, latency average and failed transactions from:\n{stdout}"
        )),
    }
}

/// The number right after `prefix` at the start of `line`.
fn number_after(line: &str, prefix: &str) -> Option<f64> {
    line.trim()
        .strip_prefix(prefix)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------------------

/// Outcomes per mode (in `params.modes` order), per target (in `targets` order), per round.
/// Modes a target does not support have no outcomes.
struct Results(Vec<Vec<Vec<Outcome>>>);

/// Every round runs every mode against every target in turn. The target that goes first
/// rotates from round to round, so background work a run leaves behind (autovacuum after
/// TPC-B, a checkpoint) does not always fall on the same target. Every round after the
/// first starts fresh proxy processes: where one process lands (its memory, its cores)
/// moved a cell by 10% for a whole run, and the mean over rounds should average that out.
fn run_rounds(params: &Params, clusters: &Clusters, targets: &mut [Target]) -> Results {
    let mut results = Results(vec![vec![Vec::new(); targets.len()]; params.modes.len()]);
    for round in 1..=params.rounds {
        if round > 1 {
            for target in targets.iter_mut() {
                target.restart(clusters, params);
            }
        }
        for (m, mode) in params.modes.iter().enumerate() {
            for i in 0..targets.len() {
                let t = (i + round - 1) % targets.len();
                let target = &targets[t];
                if !target.supports(mode) {
                    continue;
                }
                let outcome = bench_once(params, target, mode);
                report_run(params, round, mode, target, &outcome);
                results.0[m][t].push(outcome);
            }
        }
    }
    results
}

/// Prints one run's numbers (or its failure, with the proxy's log) to stderr.
fn report_run(params: &Params, round: usize, mode: &Mode, target: &Target, outcome: &Outcome) {
    let run = format!(
        "round {round}/{} {:<16} {:<18}",
        params.rounds, mode.name, target.name
    );
    match outcome {
        Ok(stats) => eprintln!(
            "{run} {:>10.0} tps {:>8.3} ms avg latency {} failed; CPU µs/txn: proxy {}, pgbench {}, postgres {}, machine {}; context switches/txn {}",
            stats.tps,
            stats.latency_ms,
            stats.failed_transactions,
            micros(stats.proxy_cpu_us),
            micros(stats.pgbench_cpu_us),
            micros(stats.postgres_cpu_us),
            micros(stats.machine_cpu_us),
            stats.switches.map_or("-".to_owned(), |n| format!("{n:.2}")),
        ),
        Err(e) => {
            eprintln!("{run} FAILED: {e}");
            if let Some(process) = &target.process {
                eprintln!("{}", process.log_tail());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------

/// Peak RSS (`VmHWM`) after the main run of every proxy whose memory is reported.
fn peak_rss(targets: &[Target]) -> Vec<(&'static str, Option<u64>)> {
    targets
        .iter()
        .filter_map(|target| Some((target.name, status_kb(target.rss_pid()?, "VmHWM"))))
        .collect()
}

/// Memory of one proxy during a run with [`RSS_CLIENTS`] clients.
struct ClientsRss {
    name: &'static str,
    /// The pgbench arguments used.
    args: String,
    /// Largest `VmRSS` sampled while the clients were connected.
    max_rss_kb: Option<u64>,
    /// `VmHWM` afterwards (includes the main run's peak).
    hwm_kb: Option<u64>,
    /// Why the pgbench run failed, if it did.
    error: Option<String>,
}

/// Runs `pgbench -c 100 -S` against every proxy whose memory is reported, in turn,
/// sampling its `VmRSS`.
fn rss_with_clients(params: &Params, targets: &[Target]) -> Vec<ClientsRss> {
    targets
        .iter()
        .filter_map(|target| Some(clients_rss(params, target, target.rss_pid()?)))
        .collect()
}

fn clients_rss(params: &Params, target: &Target, pid: u32) -> ClientsRss {
    let clients = RSS_CLIENTS.to_string();
    let jobs = params.jobs(RSS_CLIENTS).to_string();
    let seconds = RSS_SECONDS.to_string();
    let args = ["-c", &clients, "-j", &jobs, "-T", &seconds, "-n", "-S"];
    eprintln!(
        "{} with {RSS_CLIENTS} clients: measuring memory",
        target.name
    );
    let mut max_rss_kb = None;
    let sample = || max_rss_kb = max_rss_kb.max(status_kb(pid, "VmRSS"));
    let timeout = Duration::from_secs(RSS_SECONDS) + PGBENCH_GRACE;
    let error = run(pgbench(target.port, &args), timeout, sample)
        .and_then(Finished::check)
        .err();
    if let Some(e) = &error {
        eprintln!("{} with {RSS_CLIENTS} clients FAILED: {e}", target.name);
    }
    ClientsRss {
        name: target.name,
        args: args.join(" "),
        max_rss_kb,
        hwm_kb: status_kb(pid, "VmHWM"),
        error,
    }
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

/// Means over the rounds of one mode against one target.
struct Summary {
    tps: Option<f64>,
    latency_ms: Option<f64>,
    proxy_cpu_us: Option<f64>,
    pgbench_cpu_us: Option<f64>,
    postgres_cpu_us: Option<f64>,
    /// Mean over the runs of the proxy's CPU per transaction divided by pgbench's.
    proxy_per_pgbench_cpu: Option<f64>,
    failed_transactions: u64,
    failed_runs: usize,
    runs: usize,
}

impl Summary {
    fn of(outcomes: &[Outcome]) -> Summary {
        let ok: Vec<&Stats> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
        Summary {
            tps: mean(ok.iter().map(|s| s.tps)),
            latency_ms: mean(ok.iter().map(|s| s.latency_ms)),
            proxy_cpu_us: mean(ok.iter().filter_map(|s| s.proxy_cpu_us)),
            pgbench_cpu_us: mean(ok.iter().filter_map(|s| s.pgbench_cpu_us)),
            postgres_cpu_us: mean(ok.iter().filter_map(|s| s.postgres_cpu_us)),
            proxy_per_pgbench_cpu: mean(
                ok.iter()
                    .filter_map(|s| Some(s.proxy_cpu_us? / s.pgbench_cpu_us?)),
            ),
            failed_transactions: ok.iter().map(|s| s.failed_transactions).sum(),
            failed_runs: outcomes.len() - ok.len(),
            runs: outcomes.len(),
        }
    }

    /// Mean TPS, with failed runs and failed transactions spelled out.
    fn tps_text(&self) -> String {
        let mut text = match self.tps {
            Some(tps) => format!("{tps:.0}"),
            None if self.runs == 0 => "-".to_owned(),
            None => "FAILED".to_owned(),
        };
        if self.failed_runs > 0 && self.tps.is_some() {
            let _ = write!(text, " ({}/{} runs FAILED)", self.failed_runs, self.runs);
        }
        if self.failed_transactions > 0 {
            let _ = write!(text, " ({} failed txns)", self.failed_transactions);
        }
        text
    }

    fn latency_text(&self) -> String {
        match self.latency_ms {
            Some(ms) => format!("{ms:.3}"),
            None if self.runs == 0 => "-".to_owned(),
            None => "FAILED".to_owned(),
        }
    }

    /// Mean proxy CPU µs per transaction; `-` for targets without a proxy process.
    fn cpu_text(&self) -> String {
        micros(self.proxy_cpu_us)
    }

    /// Mean CPU µs per transaction of pgbench and of Postgres, `pgbench + postgres`.
    fn others_cpu_text(&self) -> String {
        format!(
            "{} + {}",
            micros(self.pgbench_cpu_us),
            micros(self.postgres_cpu_us)
        )
    }

    /// Proxy CPU relative to pgbench's; `-` for targets without a proxy process.
    fn relative_cpu_text(&self) -> String {
        self.proxy_per_pgbench_cpu
            .map_or("-".to_owned(), |r| format!("{r:.2}"))
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, count) = values.fold((0.0, 0usize), |(sum, count), v| (sum + v, count + 1));
    (count > 0).then(|| sum / count as f64)
}

/// One table row: the summaries of a mode per target (`None`: not
/// applicable) and the runs they summarise.
fn row_text(ratios: &[(usize, usize)], row: &[Option<Summary>], runs: &[Vec<Outcome>]) -> String {
    let mut cells: Vec<String> = row
        .iter()
        .map(|s| s.as_ref().map_or("n/a".to_owned(), Summary::tps_text))
        .collect();
    for &(num, den) in ratios {
        let mut cell = ratio_text(&row[num], &row[den]);
        if let Some(range) = round_ratio_range(&runs[num], &runs[den]) {
            cell.push(' ');
            cell.push_str(&range);
        }
        cells.push(cell);
    }
    let latencies: Vec<String> = row
        .iter()
        .map(|s| s.as_ref().map_or("n/a".to_owned(), Summary::latency_text))
        .collect();
    cells.push(latencies.join(" / "));
    let cpu: Vec<String> = row
        .iter()
        .map(|s| s.as_ref().map_or("n/a".to_owned(), Summary::cpu_text))
        .collect();
    cells.push(cpu.join(" / "));
    let others: Vec<String> = row
        .iter()
        .map(|s| {
            s.as_ref()
                .map_or("n/a".to_owned(), Summary::others_cpu_text)
        })
        .collect();
    cells.push(others.join(" / "));
    let relative: Vec<String> = row
        .iter()
        .map(|s| {
            s.as_ref()
                .map_or("n/a".to_owned(), Summary::relative_cpu_text)
        })
        .collect();
    cells.push(relative.join(" / "));
    cells.join(" | ")
}

/// The lowest and highest ratio of one round's TPS to the other target's in
/// the same round, e.g. `(0.94–1.06)`: how far single rounds scatter around
/// the mean ratio. `None` with fewer than two rounds where both succeeded.
fn round_ratio_range(numerator: &[Outcome], denominator: &[Outcome]) -> Option<String> {
    let ratios: Vec<f64> = numerator
        .iter()
        .zip(denominator)
        .filter_map(|(n, d)| match (n, d) {
            (Ok(n), Ok(d)) if d.tps > 0.0 => Some(n.tps / d.tps),
            _ => None,
        })
        .collect();
    if ratios.len() < 2 {
        return None;
    }
    let low = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let high = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some(format!("({low:.2}–{high:.2})"))
}

fn ratio_text(numerator: &Option<Summary>, denominator: &Option<Summary>) -> String {
    match (numerator, denominator) {
        (Some(n), Some(d)) => match (n.tps, d.tps) {
            (Some(n), Some(d)) if d > 0.0 => format!("{:.2}", n / d),
            _ => "-".to_owned(),
        },
        _ => "n/a".to_owned(),
    }
}

/// The markdown table of means over the rounds.
fn print_table(params: &Params, targets: &[Target], results: &Results) {
    let index = |name: &str| targets.iter().position(|t| t.name == name);
    let selected: Vec<(&Ratio, (usize, usize))> = RATIOS
        .iter()
        .filter_map(|r| Some((r, (index(r.numerator)?, index(r.denominator)?))))
        .collect();
    let ratios: Vec<(usize, usize)> = selected.iter().map(|&(_, pair)| pair).collect();
    let mut header = vec!["mode".to_owned()];
    header.extend(targets.iter().map(|t| format!("{} TPS", t.name)));
    header.extend(
        selected
            .iter()
            .map(|(r, _)| format!("{} (rounds: lowest–highest)", r.label)),
    );
    let names: Vec<&str> = targets.iter().map(|t| t.name).collect();
    header.push(format!("avg latency (ms) {}", names.join("/")));
    header.push(format!("proxy CPU µs/txn {}", names.join("/")));
    header.push(format!("pgbench + Postgres CPU µs/txn {}", names.join("/")));
    header.push(format!("proxy CPU / pgbench CPU {}", names.join("/")));
    println!();
    println!("| {} |", header.join(" | "));
    println!("|{}", "---|".repeat(header.len()));
    for (m, mode) in params.modes.iter().enumerate() {
        let row: Vec<Option<Summary>> = targets
            .iter()
            .zip(&results.0[m])
            .map(|(target, outcomes)| target.supports(mode).then(|| Summary::of(outcomes)))
            .collect();
        println!(
            "| {} | {} |",
            mode.name,
            row_text(&ratios, &row, &results.0[m])
        );
    }
    println!();
}

fn print_memory(peaks: &[(&str, Option<u64>)], with_clients: &[ClientsRss]) {
    for (name, hwm) in peaks {
        println!(
            "- {name} peak RSS in the last round (VmHWM of that round's process): {}",
            mib(*hwm)
        );
    }
    for rss in with_clients {
        let status = match &rss.error {
            Some(_) => " (pgbench FAILED, see stderr)",
            None => "",
        };
        println!(
            "- {} with {RSS_CLIENTS} clients (pgbench {}): \
             max VmRSS {}, VmHWM afterwards {}{status}",
            rss.name,
            rss.args,
            mib(rss.max_rss_kb),
            mib(rss.hwm_kb)
        );
    }
    println!();
}

fn print_parameters(params: &Params, cluster: &Cluster, targets: &[Target]) {
    let names = |items: Vec<&str>| items.join(",");
    let postgres = cluster
        .shard(0)
        .primary
        .psql("postgres", "show server_version")
        .unwrap_or_else(|e| format!("unknown ({e})"));
    println!("Parameters:");
    println!(
        "- BENCH_SUITE={} BENCH_ROUNDS={} BENCH_SECONDS={} BENCH_CLIENTS={} BENCH_POOL={} \
         BENCH_SCALE={} BENCH_WORKERS={} BENCH_MODES={} BENCH_TARGETS={}",
        params.suite,
        params.rounds,
        params.seconds,
        params.clients,
        params
            .pools
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(","),
        params.scale,
        params.workers.map_or(String::new(), |w| w.to_string()),
        names(params.modes.iter().map(|m| m.name).collect()),
        names(targets.iter().map(|t| t.name).collect()),
    );
    println!(
        "- each cell: pgbench -c {} -j {} -T {} -n <mode flags> \"{}\"; means over {} round(s), \
         targets interleaved, the first rotating each round, fresh proxy processes each round",
        params.clients,
        params.jobs(params.clients),
        params.seconds,
        conninfo(0).replace("port=0", "port=<target>"),
        params.rounds
    );
    for mode in &params.modes {
        match mode.script {
            None => println!("- {}: {}", mode.name, mode.args.join(" ")),
            Some(script) => println!(
                "- {}: -f <script> -s {} {}; script: {}",
                mode.name,
                params.scale,
                mode.args.join(" "),
                script.trim_end().replace('\n', " ")
            ),
        }
    }
    println!(
        "- cluster: 1 shard, primary + {REPLICAS} streaming replicas (same machine), \
         max_connections={MAX_CONNECTIONS}, PostgreSQL {postgres}, data loaded with \
         pgbench -i -s {} on the primary; direct, shardgate and pgbouncer use the primary only",
        params.scale
    );
    if targets
        .iter()
        .any(|t| t.name.starts_with("shardgate-3shards"))
    {
        println!(
            "- 3-shard cluster: {SHARDS} primaries, no replicas (same machine), \
             max_connections={MAX_CONNECTIONS}, max_prepared_transactions=64, loaded with \
             pgbench -i -s {} through shardgate (COPY split by aid)",
            params.scale
        );
    }
    println!("- harness servers run with fsync=off (the 2PC decision log is fsynced by the proxy)");
    let selected = |name: &str| targets.iter().any(|t| t.name == name);
    for ratio in RATIOS
        .iter()
        .filter(|r| selected(r.numerator) && selected(r.denominator))
    {
        println!(
            "- {}: {} TPS / {} TPS",
            ratio.label, ratio.numerator, ratio.denominator
        );
    }
    println!(
        "- proxy CPU / pgbench CPU: the proxy's CPU time per transaction divided by pgbench's \
         in the same run, averaged over the rounds. pgbench sends and reads the same bytes \
         through every proxy, so its CPU per transaction tracks how fast the machine ran \
         during that run; the ratio compares the proxies' cost with that factored out"
    );
    for def in &params.targets {
        println!("- {}: {}", def.name, (def.describe)(params));
    }
    println!(
        "- machine: {} CPU(s)",
        thread::available_parallelism().map_or(0, |n| n.get())
    );
}

// ---------------------------------------------------------------------------------------
// Merge throughput (`cross_shard` suite)
// ---------------------------------------------------------------------------------------

/// A query whose whole result a client reads in the merge-throughput measurement.
struct MergeQuery {
    name: &'static str,
    sql: &'static str,
}

/// Over the sharded targets: concatenation, a k-way merge on the key, and a k-way merge on
/// two keys whose first one (`abalance`, 0 on every row after `pgbench -i`) ties on every
/// row, so both keys are compared.
const MERGE_QUERIES: &[MergeQuery] = &[
    MergeQuery {
        name: "concat",
        sql: "SELECT aid, bid, abalance FROM pgbench_accounts",
    },
    MergeQuery {
        name: "order-by-aid",
        sql: "SELECT aid, bid, abalance FROM pgbench_accounts ORDER BY aid",
    },
    MergeQuery {
        name: "order-by-abalance-aid",
        sql: "SELECT aid, bid, abalance FROM pgbench_accounts ORDER BY abalance, aid",
    },
];

/// The targets the merge queries run against (those selected).
const MERGE_TARGETS: &[&str] = &["direct", "shardgate-1shard", "shardgate-3shards"];

/// How the client reads the rows (tokio-postgres).
#[derive(Clone, Copy)]
enum Protocol {
    /// `simple_query_raw`: simple protocol, text rows, streamed.
    Simple,
    /// `query_raw`: Parse/Bind/Execute, binary rows, streamed.
    Extended,
}

impl Protocol {
    const ALL: [Protocol; 2] = [Protocol::Simple, Protocol::Extended];

    fn name(self) -> &'static str {
        match self {
            Protocol::Simple => "simple (text)",
            Protocol::Extended => "extended (binary)",
        }
    }
}

/// One read of a whole result.
struct MergeRun {
    rows: u64,
    /// From sending the query to the first row.
    first_row: Duration,
    /// From sending the query to the end of the result.
    total: Duration,
    /// The proxy's `VmRSS` before the query and the largest sampled while it ran.
    rss_before_kb: Option<u64>,
    rss_max_kb: Option<u64>,
}

/// The runs of one query, protocol and target, over the rounds.
struct MergeCell {
    query: &'static MergeQuery,
    protocol: Protocol,
    target: &'static str,
    runs: Vec<Result<MergeRun, String>>,
}

/// Reads every [`MERGE_QUERIES`] result in both protocols from every selected
/// [`MERGE_TARGETS`] target, `params.merge_rounds` times, interleaved like the pgbench runs.
fn merge_throughput(params: &Params, targets: &[Target]) -> Vec<MergeCell> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build the client runtime");
    let merge_targets: Vec<&Target> = targets
        .iter()
        .filter(|t| MERGE_TARGETS.contains(&t.name))
        .collect();
    let mut cells: Vec<MergeCell> = Vec::new();
    for query in MERGE_QUERIES {
        for protocol in Protocol::ALL {
            for target in &merge_targets {
                cells.push(MergeCell {
                    query,
                    protocol,
                    target: target.name,
                    runs: Vec::new(),
                });
            }
        }
    }
    for round in 1..=params.merge_rounds {
        let mut cell = 0;
        for query in MERGE_QUERIES {
            for protocol in Protocol::ALL {
                for target in &merge_targets {
                    let run = merge_once(&runtime, target, query, protocol);
                    let label = format!(
                        "merge round {round}/{} {:<22} {:<17} {:<18}",
                        params.merge_rounds,
                        query.name,
                        protocol.name(),
                        target.name
                    );
                    match &run {
                        Ok(r) => eprintln!(
                            "{label} {} rows in {:.3} s ({:.0} rows/s, first row after {:.1} ms, \
                             proxy RSS {} -> max {})",
                            r.rows,
                            r.total.as_secs_f64(),
                            r.rows as f64 / r.total.as_secs_f64(),
                            r.first_row.as_secs_f64() * 1000.0,
                            mib(r.rss_before_kb),
                            mib(r.rss_max_kb)
                        ),
                        Err(e) => {
                            eprintln!("{label} FAILED: {e}");
                            if let Some(process) = &target.process {
                                eprintln!("{}", process.log_tail());
                            }
                        }
                    }
                    cells[cell].runs.push(run);
                    cell += 1;
                }
            }
        }
    }
    cells
}

/// One read of `query`'s whole result from `target`, sampling the proxy's `VmRSS` (every
/// few milliseconds, from another thread) while it runs.
fn merge_once(
    runtime: &tokio::runtime::Runtime,
    target: &Target,
    query: &MergeQuery,
    protocol: Protocol,
) -> Result<MergeRun, String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let pid = target.pid();
    let rss_before_kb = pid.and_then(|pid| status_kb(pid, "VmRSS"));
    let running = Arc::new(AtomicBool::new(true));
    let sampler = pid.map(|pid| {
        let running = Arc::clone(&running);
        thread::spawn(move || {
            let mut max = None;
            while running.load(Ordering::Relaxed) {
                max = max.max(status_kb(pid, "VmRSS"));
                thread::sleep(Duration::from_millis(5));
            }
            max.max(status_kb(pid, "VmRSS"))
        })
    });
    let read = runtime.block_on(read_result(target.port, query.sql, protocol));
    running.store(false, Ordering::Relaxed);
    let rss_max_kb = sampler.and_then(|s| s.join().ok().flatten());
    let (rows, first_row, total) = read?;
    Ok(MergeRun {
        rows,
        first_row,
        total,
        rss_before_kb,
        rss_max_kb,
    })
}

/// Connects, then sends `sql` and counts the rows as they stream in: (rows, time to the
/// first row, time to the end).
async fn read_result(
    port: u16,
    sql: &str,
    protocol: Protocol,
) -> Result<(u64, Duration, Duration), String> {
    use futures_util::StreamExt;
    use tokio_postgres::{NoTls, SimpleQueryMessage};

    let (client, connection) = tokio_postgres::connect(&conninfo(port), NoTls)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let connection = tokio::spawn(connection);
    let start = Instant::now();
    let mut rows = 0u64;
    let mut first_row = None;
    match protocol {
        Protocol::Simple => {
            let stream = client
                .simple_query_raw(sql)
                .await
                .map_err(|e| format!("{sql}: {e}"))?;
            let mut stream = std::pin::pin!(stream);
            while let Some(message) = stream.next().await {
                if let SimpleQueryMessage::Row(_) = message.map_err(|e| format!("{sql}: {e}"))? {
                    rows += 1;
                    first_row.get_or_insert_with(|| start.elapsed());
                }
            }
        }
        Protocol::Extended => {
            let stream = client
                .query_raw(sql, std::iter::empty::<i32>())
                .await
                .map_err(|e| format!("{sql}: {e}"))?;
            let mut stream = std::pin::pin!(stream);
            while let Some(row) = stream.next().await {
                row.map_err(|e| format!("{sql}: {e}"))?;
                rows += 1;
                first_row.get_or_insert_with(|| start.elapsed());
            }
        }
    }
    let total = start.elapsed();
    drop(client);
    let _ = connection.await;
    Ok((rows, first_row.unwrap_or(total), total))
}

/// The merge-throughput table: means over the rounds.
fn print_merge(params: &Params, cells: &[MergeCell]) {
    let expected = 100_000 * params.scale as u64;
    println!(
        "Merge throughput: the whole result read by a tokio-postgres client, \
         {expected} rows expected; means over {} round(s)",
        params.merge_rounds
    );
    println!();
    println!(
        "| query | protocol | target | rows | wall time (s) | rows/s | vs direct | \
         first row (ms) | proxy VmRSS before → max during (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let rate = |cell: &MergeCell| {
        mean(
            cell.runs
                .iter()
                .filter_map(|r| r.as_ref().ok())
                .map(|r| r.rows as f64 / r.total.as_secs_f64()),
        )
    };
    for cell in cells {
        let ok: Vec<&MergeRun> = cell.runs.iter().filter_map(|r| r.as_ref().ok()).collect();
        let failed = cell.runs.len() - ok.len();
        let rows: Vec<String> = {
            let mut counts: Vec<u64> = ok.iter().map(|r| r.rows).collect();
            counts.dedup();
            counts.iter().map(u64::to_string).collect()
        };
        let mut rows = rows.join("/");
        if ok.iter().any(|r| r.rows != expected) {
            rows.push_str(" (WRONG)");
        }
        if failed > 0 {
            let _ = write!(rows, " ({failed}/{} runs FAILED)", cell.runs.len());
        }
        let direct = cells.iter().find(|c| {
            c.target == "direct"
                && c.query.name == cell.query.name
                && c.protocol.name() == cell.protocol.name()
        });
        let versus = match (rate(cell), direct.and_then(rate)) {
            (Some(n), Some(d)) if d > 0.0 => format!("{:.2}", n / d),
            _ => "-".to_owned(),
        };
        let rss = if ok.iter().any(|r| r.rss_before_kb.is_some()) {
            let before = ok.iter().filter_map(|r| r.rss_before_kb).max();
            let max = ok.iter().filter_map(|r| r.rss_max_kb).max();
            format!("{} → {}", mib(before), mib(max))
        } else {
            "n/a".to_owned()
        };
        let fmt = |v: Option<f64>, scale: f64, digits: usize| {
            v.map_or("-".to_owned(), |v| format!("{:.*}", digits, v * scale))
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            cell.query.name,
            cell.protocol.name(),
            cell.target,
            rows,
            fmt(mean(ok.iter().map(|r| r.total.as_secs_f64())), 1.0, 3),
            fmt(rate(cell), 1.0, 0),
            versus,
            fmt(
                mean(ok.iter().map(|r| r.first_row.as_secs_f64())),
                1000.0,
                1
            ),
            rss
        );
    }
    println!();
    for query in MERGE_QUERIES {
        println!("- {}: {}", query.name, query.sql);
    }
    println!();
}

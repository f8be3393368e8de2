//! Test-cluster harness for shardgate: starts real PostgreSQL clusters from the installed
//! binaries for integration tests, benchmarks and `shardgate demo`.
//!
//! A [`Cluster`] has N shards, each a primary plus M streaming replicas (`pg_basebackup -R`),
//! on free 127.0.0.1 ports, in a directory under `<temp dir>/shardgate-harness/`. Dropping
//! the cluster (also during panic unwinding) stops every server and removes the directory.
//! Clusters left behind by killed test processes are removed by the next [`Cluster::start`].
//!
//! When the process runs as root, the servers run as the `postgres` OS user (PostgreSQL
//! refuses to run as root); clients such as `psql` connect over TCP with the superuser
//! `postgres`, password `postgres`.
//!
//! A [`FaultProxy`] placed between shardgate and a node injects network faults (latency,
//! stalls, cut connections, one dropped direction, faults triggered by a byte pattern);
//! [`Node::kill`], [`Node::pause`], [`Node::resume`] and [`Node::restart`] are the
//! node-level faults.
//!
//! Environment:
//! - `SHARDGATE_PG_BIN`: directory of the PostgreSQL programs (see [`pg_bin`]).
//! - `SHARDGATE_HARNESS_DIR`: base directory instead of `<temp dir>/shardgate-harness`. On
//!   machines where file creation on disk is slow, a tmpfs such as
//!   `/dev/shm/shardgate-harness` makes cluster startup several times faster.
//!
//! ```no_run
//! use shardgate_harness::{Cluster, ClusterSpec};
//!
//! let cluster = Cluster::start(ClusterSpec::new(2, 1))?;
//! cluster.execute_on_primaries("create table t (id int primary key)")?;
//! let count = cluster.shard(0).primary.psql("postgres", "select count(*) from t")?;
//! assert_eq!(count, "0");
//! # Ok::<(), shardgate_harness::HarnessError>(())
//! ```

#![warn(missing_docs)]

mod cluster;
mod config;
mod error;
mod fault;
mod node;
mod ports;
mod process;
mod server;
mod template;
mod workdir;

pub use cluster::{Cluster, ClusterSpec, Shard};
pub use error::{HarnessError, Result};
pub use fault::{ConnFault, Direction, FaultProxy, NewConnections};
pub use node::{Node, NodeRole, StopMode};
pub use process::{pg_bin, postgres_command};

//! Starts a cluster, prints its nodes and the startup time, and tears it down.
//!
//! Usage: `cargo run -p shardgate-harness --example start_cluster -- [shards] [replicas] [hold_secs]`
//! (`hold_secs`: how long to keep the cluster running before tearing it down).

use std::time::{Duration, Instant};

use shardgate_harness::{Cluster, ClusterSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let shards = args.next().map_or(Ok(1), |a| a.parse())?;
    let replicas = args.next().map_or(Ok(1), |a| a.parse())?;
    let hold = Duration::from_secs(args.next().map_or(Ok(0), |a| a.parse())?);
    let started = Instant::now();
    let cluster = Cluster::start(ClusterSpec::new(shards, replicas))?;
    let start_time = started.elapsed();
    for node in cluster.nodes() {
        println!(
            "{:<18} {}",
            node.name(),
            node.superuser_conninfo("postgres")
        );
    }
    std::thread::sleep(hold);
    let stopping = Instant::now();
    drop(cluster);
    println!(
        "{shards}x{replicas}: started in {start_time:?}, torn down in {:?}",
        stopping.elapsed()
    );
    Ok(())
}

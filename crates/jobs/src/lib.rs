//! Background jobs of shardgate and the live cluster state they maintain.
//!
//! [`Topology`] holds, per shard, every node's health, role, replay position
//! and replication lag in atomics, so routing reads it without locks.
//! [`monitor`] runs one task per node that keeps it current.

pub mod lsn;
pub mod monitor;
pub mod select;
pub mod topology;

pub use monitor::{MonitorConfig, Monitors, RoleDetection};
pub use select::{Consistency, ReadPolicy};
pub use topology::{NodeState, ShardState, Topology};

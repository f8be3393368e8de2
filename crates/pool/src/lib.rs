//! Server connections for shardgate.
//!
//! A [`ServerConn`] is a raw protocol connection to one Postgres node: the proxy
//! forwards client bytes over it without a driver in between. A [`Pool`] holds
//! them per (node, user, database); [`Pools`] creates pools lazily.
//!
//! Why not bb8: bb8 opens connections in background tasks and reports their
//! failures only to an error sink, so a client waiting for a connection to a
//! database that does not exist, or to a node that is down, waits the whole
//! timeout and then sees "timed out" instead of the server's error (3D000,
//! 28P01, connection refused). Here the waiting client opens the connection
//! itself and gets the real error at once. Waiting for a free slot is a FIFO
//! queue bounded by `pool_timeout`: a freed slot is handed to the oldest
//! waiter directly; idle connections, slots and waiters share one lock, so a
//! checkout and a release each take one uncontended lock.

mod conn;
mod pg_tls;
mod pool;
mod prepared;
mod stream;
#[cfg(test)]
mod tests;
mod tls;

pub use conn::{CancelHandle, ConnectError, ConnectParams, ServerConn};
pub use pg_tls::{PgTlsConnect, PgTlsStream};
pub use pool::{Loan, Pool, PoolConfig, PoolError, PoolKey, PoolStats, PooledConn, Pools, Totals};
pub use prepared::PreparedSet;
pub use stream::{write_all, MaybeTls, TlsOverTcp};
pub use tls::{ServerStream, ServerTls, TlsConfigError, TlsMode};

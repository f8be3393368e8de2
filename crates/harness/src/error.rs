//! The harness error type.

use std::io;
use std::path::Path;
use std::time::Duration;

/// Everything that can go wrong while starting, driving or stopping a test cluster.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A file-system or process-spawning operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An external command exited unsuccessfully.
    #[error("command {command} failed ({status}):\n{stderr}{stdout}")]
    Command {
        /// The command line (program and arguments).
        command: String,
        /// The exit status as text.
        status: String,
        /// Captured standard output (empty or followed by a newline).
        stdout: String,
        /// Captured standard error (empty or followed by a newline).
        stderr: String,
    },
    /// An external command did not finish in time and was killed.
    #[error("command {command} timed out after {timeout:?}")]
    CommandTimeout {
        /// The command line (program and arguments).
        command: String,
        /// The time limit that was exceeded.
        timeout: Duration,
    },
    /// A server operation failed; carries the tail of the node's log.
    #[error("node {node}: {message}\n--- tail of {log} ---\n{log_tail}")]
    Node {
        /// The node name, e.g. `shard0-primary`.
        node: String,
        /// What went wrong.
        message: String,
        /// Path of the node's server log.
        log: String,
        /// The last lines of the server log.
        log_tail: String,
    },
    /// A condition was not reached within its time limit.
    #[error("timed out after {timeout:?} waiting for {what}; last observation: {last}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// The time limit that was exceeded.
        timeout: Duration,
        /// The last observed state or error.
        last: String,
    },
    /// Some other failure, described in the message.
    #[error("{0}")]
    Failed(String),
    /// The cluster specification is unusable.
    #[error("invalid cluster spec: {0}")]
    InvalidSpec(String),
}

/// Result alias used throughout the harness.
pub type Result<T> = std::result::Result<T, HarnessError>;

impl HarnessError {
    /// Wraps an I/O error with a description of the operation.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        HarnessError::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps an I/O error that concerns a path.
    pub(crate) fn io_path(action: &str, path: &Path, source: io::Error) -> Self {
        Self::io(format!("{action} {}", path.display()), source)
    }
}

//! Text of the configuration files the harness writes, and the helper that writes them.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;

use crate::error::{HarnessError, Result};

/// File with the cluster-wide user settings, included by `postgresql.conf`.
pub(crate) const CLUSTER_CONF: &str = "shardgate_cluster.conf";
/// File with the node's own settings (port, socket dir, replica settings), included last.
pub(crate) const NODE_CONF: &str = "shardgate_node.conf";

/// Settings every node gets; appended to the template's `postgresql.conf`, followed by the
/// includes of [`CLUSTER_CONF`] and [`NODE_CONF`] (later settings win).
pub(crate) fn common_conf() -> String {
    let settings = [
        ("listen_addresses", "127.0.0.1"),
        ("wal_level", "replica"),
        ("max_wal_senders", "10"),
        ("max_replication_slots", "10"),
        ("wal_keep_size", "64MB"),
        ("hot_standby", "on"),
        ("hot_standby_feedback", "on"),
        ("max_prepared_transactions", "64"),
        ("max_connections", "300"),
        ("fsync", "off"),
        ("full_page_writes", "off"),
        ("synchronous_commit", "on"),
        ("shared_buffers", "32MB"),
        ("wal_receiver_status_interval", "1s"),
        ("logging_collector", "off"),
        ("jit", "off"),
    ];
    let mut text = String::from("\n# --- shardgate harness ---\n");
    text.push_str(&settings_text(
        settings.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    ));
    let _ = writeln!(text, "include '{CLUSTER_CONF}'");
    let _ = writeln!(text, "include '{NODE_CONF}'");
    text
}

/// The node's own settings file.
pub(crate) fn node_conf(port: u16, socket_dir: &Path, extra: &[(String, String)]) -> String {
    let own = [
        ("port".to_owned(), port.to_string()),
        (
            "unix_socket_directories".to_owned(),
            socket_dir.display().to_string(),
        ),
    ];
    settings_text(own.into_iter().chain(extra.iter().cloned()))
}

/// `key = 'value'` lines.
pub(crate) fn settings_text(settings: impl IntoIterator<Item = (String, String)>) -> String {
    settings
        .into_iter()
        .map(|(key, value)| format!("{} = {}\n", key.trim(), quote_setting(&value)))
        .collect()
}

/// Quotes a setting value for `postgresql.conf`, unless it is quoted already.
fn quote_setting(value: &str) -> String {
    let value = value.trim();
    if value.len() >= 2 && value.starts_with('\'') && value.ends_with('\'') {
        return value.to_owned();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// `pg_hba.conf`: the user's lines first, then the harness defaults.
pub(crate) fn hba_conf(extra_lines: &[String]) -> String {
    let defaults = [
        "local all all trust",
        "local replication all trust",
        "host all all 127.0.0.1/32 scram-sha-256",
        "host replication all 127.0.0.1/32 scram-sha-256",
    ];
    extra_lines
        .iter()
        .map(String::as_str)
        .chain(defaults)
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Quotes a libpq connection-string value when needed.
pub(crate) fn conninfo_value(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if plain {
        return value.to_owned();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Replaces the contents of `path` (keeping the owner of an existing file).
pub(crate) fn write_file(path: &Path, contents: &str) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .map_err(|e| HarnessError::io_path("writing", path, e))
}

/// Appends `contents` to `path` (keeping its owner).
pub(crate) fn append_file(path: &Path, contents: &str) -> Result<()> {
    OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .map_err(|e| HarnessError::io_path("appending to", path, e))
}

//! A new shard's tables, created like an existing shard's: `pg_dump
//! --schema-only` of the sharded and reference tables (columns, defaults,
//! indexes, constraints, owned sequences) replayed by `psql` in one
//! transaction. Tables that already exist on the target are left alone, so
//! a job that resumes does not fail here.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::db::Conn;
use super::RebalanceError;
use crate::config::Config;

/// Creates on `target` every table of `tables` (as written in the
/// configuration) that it lacks, dumped from `source`.
pub(super) async fn copy_schema(
    config: &Config,
    source: &str,
    target: &Conn,
    tables: &[shardgate_shardmap::TableName],
) -> Result<(), RebalanceError> {
    let mut missing = Vec::new();
    for t in tables {
        let row = target
            .client
            .query_one("SELECT to_regclass($1) IS NULL", &[&t.to_string()])
            .await
            .map_err(|e| target.err(e))?;
        if row.get::<_, bool>(0) {
            missing.push(t);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let fail = |message: String| RebalanceError::Schema {
        node: target.node.clone(),
        message,
    };
    for t in &missing {
        if let Some(schema) = &t.schema {
            target
                .run(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {}",
                    shardgate_shardmap::TableName::new(None, schema)
                ))
                .await?;
        }
    }
    let m = super::db::login(config)?;
    let db = &config.sharding.rebalance_database;
    let mut dump = client_command("pg_dump", source, &m, config)?;
    dump.args(["--schema-only", "--no-owner", "--no-privileges", "-d", db]);
    for t in &missing {
        dump.arg("-t").arg(t.to_string());
    }
    let out = dump
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| fail(format!("cannot run pg_dump: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "pg_dump: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut restore = client_command("psql", &target.node, &m, config)?;
    restore
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "--single-transaction",
            "-d",
            db,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = restore
        .spawn()
        .map_err(|e| fail(format!("cannot run psql: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let written = stdin.write_all(&out.stdout).await;
    drop(stdin);
    let done = child
        .wait_with_output()
        .await
        .map_err(|e| fail(format!("psql: {e}")))?;
    if !done.status.success() || written.is_err() {
        return Err(fail(format!(
            "psql: {}",
            String::from_utf8_lossy(&done.stderr).trim()
        )));
    }
    tracing::info!(node = %target.node, tables = missing.len(), "schema copied to the new shard");
    Ok(())
}

/// `pg_dump` or `psql` (from PATH, else the newest PostgreSQL install)
/// pointed at `node` as `user`.
fn client_command(
    program: &str,
    node: &str,
    login: &shardgate_jobs::monitor::MonitorConfig,
    config: &Config,
) -> Result<Command, RebalanceError> {
    let (host, port) = node
        .rsplit_once(':')
        .ok_or_else(|| RebalanceError::Invalid(format!("{node} is not host:port")))?;
    let mut cmd = Command::new(find_program(program));
    cmd.args(["-h", host, "-p", port, "-U", &login.user]);
    if let Some(pw) = &login.password {
        cmd.env("PGPASSWORD", pw);
    }
    // TLS as the proxy's own server connections use it.
    cmd.env("PGSSLMODE", config.proxy.server_tls.as_str());
    if let Some(root) = &config.proxy.server_tls_root_cert {
        cmd.env("PGSSLROOTCERT", root);
    }
    Ok(cmd)
}

fn find_program(program: &str) -> std::path::PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file());
    if let Some(p) = on_path {
        return p;
    }
    let mut installs: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(program))
        .filter(|p| p.is_file())
        .collect();
    installs.sort();
    installs.pop().unwrap_or_else(|| program.into())
}

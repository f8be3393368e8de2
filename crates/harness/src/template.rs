//! The initdb template: one cluster initialised once per PostgreSQL major version and copied
//! for every primary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use crate::config::{append_file, common_conf, write_file, CLUSTER_CONF, NODE_CONF};
use crate::error::{HarnessError, Result};
use crate::node::SUPERUSER;
use crate::process::{chown_to_postgres, pg_bin, postgres_command, run_ok};
use crate::workdir::{create_owned_dir, teardown_dir};

/// Bump when the template's contents change, so stale templates are not reused.
const TEMPLATE_VERSION: u32 = 1;
const INITDB_TIMEOUT: Duration = Duration::from_secs(180);
/// Locales to try in order (C.UTF-8 may not be installed).
const LOCALES: [&str; 2] = ["C.UTF-8", "C"];

/// The template data directory for the installed major version, created if missing.
///
/// The template is built in a staging directory and renamed into place, so concurrent test
/// processes never see a half-built template; within a process a lock avoids duplicate work.
pub(crate) fn ensure(base: &Path) -> Result<PathBuf> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let target = base.join(format!("template-{}-v{TEMPLATE_VERSION}", pg_major()?));
    if is_complete(&target) {
        return Ok(target);
    }
    let staging = create_owned_dir(base, "staging")?;
    let result = build(&staging).and_then(|data| install(&data, &target));
    teardown_dir(&staging);
    result.map(|()| target)
}

fn is_complete(template: &Path) -> bool {
    template.join("PG_VERSION").is_file()
}

fn install(data: &Path, target: &Path) -> Result<()> {
    match fs::rename(data, target) {
        Ok(()) => Ok(()),
        // Another process won the race.
        Err(_) if is_complete(target) => Ok(()),
        Err(e) => Err(HarnessError::io_path("installing template as", target, e)),
    }
}

/// The major version of the installed server, from `postgres -V`.
fn pg_major() -> Result<String> {
    let mut command = Command::new(pg_bin("postgres"));
    command.arg("-V");
    let output = run_ok(&mut command, None, Duration::from_secs(10))?;
    let version = output.stdout.split(')').nth(1).unwrap_or_default().trim();
    let major = version.split(['.', ' ']).next().unwrap_or_default();
    if major.is_empty() || !major.chars().all(|c| c.is_ascii_digit()) {
        return Err(HarnessError::Failed(format!(
            "unexpected `postgres -V` output: {}",
            output.stdout
        )));
    }
    Ok(major.to_owned())
}

/// Runs initdb in `staging/data` and adds the harness configuration; returns the data dir.
fn build(staging: &Path) -> Result<PathBuf> {
    let data = staging.join("data");
    let password_file = staging.join("pwfile");
    write_file(&password_file, "postgres\n")?;
    chown_to_postgres(&[staging])?;
    initdb(&data, &password_file)?;
    append_file(&data.join("postgresql.conf"), &common_conf())?;
    write_file(&data.join(CLUSTER_CONF), "")?;
    write_file(&data.join(NODE_CONF), "")?;
    chown_to_postgres(&[&data])?;
    Ok(data)
}

fn initdb(data: &Path, password_file: &Path) -> Result<()> {
    let mut last_error = None;
    for locale in LOCALES {
        let mut command = postgres_command(&pg_bin("initdb"));
        command
            .arg("-D")
            .arg(data)
            .args([
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", password_file.display()))
            .args([
                "-E",
                "UTF8",
                "--no-sync",
                "--wal-segsize=1",
                "--no-instructions",
            ])
            .arg(format!("--locale={locale}"));
        match run_ok(&mut command, None, INITDB_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(error) => {
                remove_partial(data)?;
                last_error = Some(error);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| HarnessError::Failed("initdb: no locale to try".into())))
}

/// Removes what a failed initdb left behind.
fn remove_partial(data: &Path) -> Result<()> {
    match fs::remove_dir_all(data) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(HarnessError::io_path("removing", data, e))
        }
        _ => Ok(()),
    }
}

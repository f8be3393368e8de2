//! Locating the PostgreSQL binaries, switching to the `postgres` OS user when running as root,
//! and running external commands with time limits.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{HarnessError, Result};

/// The OS user that owns and runs the servers when the harness runs as root.
pub(crate) const POSTGRES_OS_USER: &str = "postgres";

/// How long to keep reading a command's output after it exited.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Path of the PostgreSQL program `name` (e.g. `"pg_ctl"`, `"psql"`, `"pgbench"`).
///
/// The directory is `$SHARDGATE_PG_BIN` if set, else the highest-version
/// `/usr/lib/postgresql/*/bin` that contains `postgres`, else `pg_config --bindir`, else the
/// first `PATH` entry containing `postgres`. If none is found the bare name is returned, so the
/// program is looked up on `PATH` when run.
pub fn pg_bin(name: &str) -> PathBuf {
    static BIN_DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    match BIN_DIR.get_or_init(find_bin_dir) {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    }
}

fn find_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SHARDGATE_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    debian_bin_dir()
        .or_else(pg_config_bin_dir)
        .or_else(path_bin_dir)
}

fn debian_bin_dir() -> Option<PathBuf> {
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let version = version_key(&entry.file_name().to_string_lossy())?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

fn version_key(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

fn pg_config_bin_dir() -> Option<PathBuf> {
    let output = run(
        Command::new("pg_config").arg("--bindir"),
        None,
        Duration::from_secs(10),
    )
    .ok()?;
    let dir = PathBuf::from(output.stdout.trim());
    (output.status.success() && dir.join("postgres").is_file()).then_some(dir)
}

fn path_bin_dir() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).find(|dir| dir.join("postgres").is_file())
}

/// Whether this process runs with effective uid 0 (read from `/proc/self/status`).
pub(crate) fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| effective_uid() == Some(0))
}

fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

/// A [`Command`] for `program` that runs as the `postgres` OS user when this process is root
/// (through `runuser -u postgres --`, with the working directory set to `/`), and directly
/// otherwise. PostgreSQL's server programs refuse to run as root.
pub fn postgres_command(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command
            .args(["-u", POSTGRES_OS_USER, "--"])
            .arg(program)
            .current_dir("/");
        command
    } else {
        Command::new(program)
    }
}

/// Gives `paths` (recursively) to the `postgres` OS user when running as root; no-op otherwise.
pub(crate) fn chown_to_postgres(paths: &[&Path]) -> Result<()> {
    if !is_root() || paths.is_empty() {
        return Ok(());
    }
    let owner = format!("{POSTGRES_OS_USER}:{POSTGRES_OS_USER}");
    let mut command = Command::new("chown");
    command.arg("-R").arg(owner).args(paths);
    run_ok(&mut command, None, Duration::from_secs(60)).map(drop)
}

/// Whether process `pid` exists and is not a zombie.
pub(crate) fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat_fields(&stat).first(), Some(&"Z") | Some(&"X")),
        Err(_) => false,
    }
}

/// Whether process `pid` is a zombie (dead, not yet reaped by its parent).
pub(crate) fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat_fields(&stat).first() == Some(&"Z"))
}

/// The start time (in clock ticks since boot) of process `pid`, to tell reused pids apart.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 of /proc/<pid>/stat; the fields after the command name start at field 3.
    stat_fields(&stat).get(19)?.parse().ok()
}

/// Process `pid` and all its descendants (from `/proc`), parents before children.
pub(crate) fn process_tree(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            let parent = stat_fields(&stat).get(1)?.parse().ok()?;
            Some((child, parent))
        })
        .collect();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|&&(_, p)| p == parent)
                .map(|&(c, _)| c),
        );
        i += 1;
    }
    tree
}

fn stat_fields(stat: &str) -> Vec<&str> {
    match stat.rfind(')') {
        Some(end) => stat[end + 1..].split_whitespace().collect(),
        None => Vec::new(),
    }
}

/// The captured result of an external command.
#[derive(Debug)]
pub(crate) struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to completion, feeding it `input` on stdin, killing it after `timeout`.
pub(crate) fn run(command: &mut Command, input: Option<&str>, timeout: Duration) -> Result<Output> {
    let description = describe(command);
    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| HarnessError::io(format!("spawning {description}"), e))?;
    feed_stdin(&mut child, input);
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    let Some(status) = wait_child(&mut child, Instant::now() + timeout, &description)? else {
        return Err(HarnessError::CommandTimeout {
            command: description,
            timeout,
        });
    };
    Ok(Output {
        status,
        stdout: stdout.recv_timeout(OUTPUT_GRACE).unwrap_or_default(),
        stderr: stderr.recv_timeout(OUTPUT_GRACE).unwrap_or_default(),
    })
}

/// Like [`run`], but a non-zero exit status is an error carrying the command's output.
pub(crate) fn run_ok(
    command: &mut Command,
    input: Option<&str>,
    timeout: Duration,
) -> Result<Output> {
    let output = run(command, input, timeout)?;
    if output.status.success() {
        return Ok(output);
    }
    Err(HarnessError::Command {
        command: describe(command),
        status: output.status.to_string(),
        stdout: with_newline(output.stdout),
        stderr: with_newline(output.stderr),
    })
}

fn with_newline(mut text: String) -> String {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

fn feed_stdin(child: &mut Child, input: Option<&str>) {
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        let input = input.to_owned();
        // A write error means the child exited early; its status tells the story.
        thread::spawn(move || stdin.write_all(input.as_bytes()));
    }
}

fn collect(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = sender.send(String::from_utf8_lossy(&bytes).into_owned());
        });
    }
    receiver
}

/// Waits for `child` until `deadline`; kills it and returns `None` when the deadline passes.
fn wait_child(
    child: &mut Child,
    deadline: Instant,
    description: &str,
) -> Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        let status = child
            .try_wait()
            .map_err(|e| HarnessError::io(format!("waiting for {description}"), e))?;
        if status.is_some() {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Calls `probe` until it returns `Ok(Some(_))`, pausing briefly between calls; fails after
/// `timeout` with the last observation (`Ok(None)` observations are described by `what`).
pub(crate) fn poll_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> std::result::Result<Option<T>, String>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        let last = match probe() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => "condition not met yet".to_owned(),
            Err(message) => message,
        };
        if Instant::now() >= deadline {
            return Err(HarnessError::Timeout {
                what: what.to_owned(),
                timeout,
                last,
            });
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

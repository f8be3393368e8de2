//! The Docker Compose setup (docker-compose.yml at the top of the repository):
//! its topology, parsed as YAML, and the proxy configuration it mounts, checked
//! by the real binary's `check-config`. Needs neither Docker nor Postgres.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

/// The directory of docker-compose.yml (relative bind-mount sources resolve here).
fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn compose() -> Yaml {
    let path = root().join("docker-compose.yml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut docs = YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    assert_eq!(docs.len(), 1, "docker-compose.yml holds one document");
    docs.remove(0)
}

/// The services by name.
fn services(doc: &Yaml) -> BTreeMap<String, Yaml> {
    doc["services"]
        .as_hash()
        .expect("docker-compose.yml has a services mapping")
        .iter()
        .map(|(k, v)| (k.as_str().expect("service name").to_owned(), v.clone()))
        .collect()
}

/// A string or a list of strings (command, entrypoint), as one text.
fn text(y: &Yaml) -> String {
    match y {
        Yaml::String(s) => s.clone(),
        Yaml::Array(items) => items
            .iter()
            .map(|i| i.as_str().expect("list of strings"))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Whether the service runs the official postgres image.
fn is_postgres(service: &Yaml) -> bool {
    let image = service["image"].as_str().unwrap_or("");
    let name = image.split([':', '@']).next().unwrap_or("");
    matches!(
        name,
        "postgres" | "library/postgres" | "docker.io/library/postgres"
    )
}

/// The value of `-c name=value` settings in a postgres command line.
fn setting(command: &str, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    command
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix))
        .map(str::to_owned)
}

/// The host the replica's `pg_basebackup` copies from (`-h HOST`), checking
/// it writes the standby configuration (`-R`).
fn basebackup_source(command: &str) -> String {
    let line = command
        .lines()
        .find(|l| l.contains("pg_basebackup"))
        .expect("pg_basebackup line");
    let words: Vec<&str> = line.split_whitespace().collect();
    assert!(
        words.contains(&"-R"),
        "pg_basebackup must write the standby configuration (-R): {line}"
    );
    let h = words
        .iter()
        .position(|w| *w == "-h")
        .unwrap_or_else(|| panic!("pg_basebackup without -h HOST: {line}"));
    words[h + 1].to_owned()
}

/// A service's bind mounts as (host path, container path), short and long syntax.
fn mounts(service: &Yaml) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for v in service["volumes"].as_vec().map_or(&[][..], Vec::as_slice) {
        match v {
            Yaml::String(s) => {
                let mut parts = s.split(':');
                let (Some(source), Some(target)) = (parts.next(), parts.next()) else {
                    continue;
                };
                if source.starts_with('.') || source.starts_with('/') {
                    out.push((source.to_owned(), target.to_owned()));
                }
            }
            Yaml::Hash(_) if v["type"].as_str() == Some("bind") => out.push((
                v["source"].as_str().expect("source").to_owned(),
                v["target"].as_str().expect("target").to_owned(),
            )),
            _ => {}
        }
    }
    out
}

/// What the service publishes on the host, as written ("127.0.0.1:6432:6432").
fn ports(service: &Yaml) -> Vec<String> {
    service["ports"]
        .as_vec()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|p| p.as_str().expect("ports as strings").to_owned())
        .collect()
}

fn depends_on(service: &Yaml) -> Vec<String> {
    match &service["depends_on"] {
        Yaml::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str())
            .map(Into::into)
            .collect(),
        Yaml::Hash(h) => h
            .keys()
            .filter_map(|k| k.as_str())
            .map(Into::into)
            .collect(),
        _ => Vec::new(),
    }
}

/// Two shards, each a postgres primary and a replica made by pg_basebackup -R
/// from its own primary, and shardgate in front.
#[test]
fn compose_defines_two_shards_with_replicas_and_shardgate() {
    let services = services(&compose());
    let postgres: Vec<&String> = services
        .iter()
        .filter(|(_, s)| is_postgres(s))
        .map(|(n, _)| n)
        .collect();
    let (replicas, primaries): (Vec<&String>, Vec<&String>) = postgres
        .into_iter()
        .partition(|n| text(&services[*n]["command"]).contains("pg_basebackup"));
    assert_eq!(primaries.len(), 2, "two shard primaries: {primaries:?}");
    assert_eq!(replicas.len(), 2, "one replica per shard: {replicas:?}");

    for p in &primaries {
        let command = text(&services[*p]["command"]);
        assert_eq!(
            setting(&command, "wal_level").as_deref(),
            Some("replica"),
            "{p}: wal_level=replica"
        );
        let prepared: u32 = setting(&command, "max_prepared_transactions")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(
            prepared > 0,
            "{p}: two-phase commit needs max_prepared_transactions > 0"
        );
        let schema = mounts(&services[*p]).into_iter().find(|(source, target)| {
            source.ends_with("demo_schema.sql")
                && target.starts_with("/docker-entrypoint-initdb.d/")
        });
        assert!(
            schema.is_some(),
            "{p}: the sample schema in /docker-entrypoint-initdb.d/"
        );
    }

    let mut sources = Vec::new();
    for r in &replicas {
        let service = &services[*r];
        let command = text(&service["command"]);
        let source = basebackup_source(&command);
        assert!(
            primaries.iter().any(|p| **p == source),
            "{r}: pg_basebackup from {source:?}, which is not a primary"
        );
        assert!(
            depends_on(service).contains(&source),
            "{r}: must start after its primary {source}"
        );
        // A hot standby refuses to run with fewer prepared transactions than its primary.
        let primary_prepared = setting(
            &text(&services[&source]["command"]),
            "max_prepared_transactions",
        );
        assert_eq!(
            setting(&command, "max_prepared_transactions"),
            primary_prepared,
            "{r}: max_prepared_transactions as on {source}"
        );
        sources.push(source);
    }
    sources.sort();
    sources.dedup();
    assert_eq!(
        sources.len(),
        2,
        "each shard's replica copies its own primary"
    );

    let shardgate = services.get("shardgate").expect("a shardgate service");
    assert!(
        !shardgate["build"].is_badvalue(),
        "shardgate is built from the repository"
    );
    let config = mounts(shardgate)
        .into_iter()
        .find(|(source, _)| source.trim_start_matches("./") == "docker/proxy.toml");
    assert!(config.is_some(), "shardgate mounts docker/proxy.toml");
    let mut published = ports(shardgate);
    published.sort();
    assert_eq!(published, ["127.0.0.1:6432:6432", "127.0.0.1:9930:9930"]);

    // Every bind-mounted file is in the repository.
    for (name, service) in &services {
        for (source, _) in mounts(service) {
            assert!(
                root().join(&source).is_file(),
                "{name} mounts missing {source}"
            );
        }
    }
}

/// The config mounted into shardgate passes `shardgate check-config`, names
/// the compose services as its shards, and has an admin user and metrics.
#[test]
fn mounted_proxy_config_is_valid_and_matches_the_services() {
    let services = services(&compose());
    let shardgate = services.get("shardgate").expect("a shardgate service");
    let (source, target) = mounts(shardgate)
        .into_iter()
        .find(|(_, target)| target.ends_with(".toml"))
        .expect("a .toml config mounted into shardgate");
    // The proxy reads the file where it is mounted.
    let start = format!(
        "{} {} {}",
        text(&shardgate["entrypoint"]),
        text(&shardgate["command"]),
        shardgate["build"]["dockerfile_inline"]
            .as_str()
            .unwrap_or("")
    );
    assert!(
        start.contains(&format!("\"--config\", \"{target}\""))
            || start.contains(&format!("--config {target}")),
        "shardgate must start with --config {target}:\n{start}"
    );

    let path: PathBuf = root().join(&source);
    let out = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("run shardgate check-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("OK"),
        "check-config {}: {}\n{stdout}{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let config: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let shards = config["shards"].as_array().expect("[[shards]]");
    assert_eq!(shards.len(), 2, "two shards");
    for shard in shards {
        let hosts = std::iter::once(&shard["primary"]).chain(shard["replicas"].as_array().unwrap());
        for addr in hosts {
            let addr = addr.as_str().unwrap();
            let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
            assert!(
                services.get(host).is_some_and(is_postgres),
                "shard host {addr}: no postgres service {host} in docker-compose.yml"
            );
        }
    }
    assert_shards_follow_basebackup(&services, shards);

    let proxy = config["proxy"].as_table().expect("[proxy]");
    assert!(
        proxy
            .get("metrics_listen")
            .and_then(|m| m.as_str())
            .is_some(),
        "metrics_listen"
    );
    assert_eq!(
        proxy.get("two_phase_commit").and_then(|v| v.as_bool()),
        Some(true)
    );
    let users = config["users"].as_array().expect("[[users]]");
    assert!(
        users
            .iter()
            .any(|u| u.get("admin").and_then(|a| a.as_bool()) == Some(true)),
        "an admin user"
    );

    // The sharded and reference tables are the sample schema's tables.
    let schema =
        std::fs::read_to_string(root().join("crates/shardgate/src/demo_schema.sql")).unwrap();
    for key in ["sharded_tables", "reference_tables"] {
        for t in config[key]
            .as_array()
            .unwrap_or_else(|| panic!("[[{key}]]"))
        {
            let table = t["table"].as_str().unwrap();
            assert!(
                schema.contains(&format!("CREATE TABLE {table} (")),
                "{key}: {table} is not in demo_schema.sql"
            );
        }
    }
}

/// Each `[[shards]]` entry pairs a primary with the replica copied from it.
fn assert_shards_follow_basebackup(services: &BTreeMap<String, Yaml>, shards: &[toml::Value]) {
    for shard in shards {
        let primary = shard["primary"].as_str().unwrap();
        let primary_host = primary.rsplit_once(':').unwrap().0;
        for r in shard["replicas"].as_array().unwrap() {
            let host = r.as_str().unwrap().rsplit_once(':').unwrap().0;
            let command = text(&services[host]["command"]);
            assert_eq!(
                basebackup_source(&command),
                primary_host,
                "replica {host} of shard {primary} copies another primary"
            );
        }
    }
}

//! The scalar settings of `[proxy]`, `[routing]` and `[sharding]` as rows
//! (`shardgate.config`), and `SET key = value` in the admin console.

use std::collections::HashMap;

use crate::config::{Config, ConfigError, ProxyConfig, RoutingConfig, ShardingConfig};

/// Settings that take effect only at the next start.
pub const RESTART_ONLY: &[&str] = &[
    "proxy.listen",
    "proxy.workers",
    "proxy.pool_mode",
    "proxy.admin_database",
    "proxy.two_phase_commit",
    "proxy.two_phase_log",
    "proxy.metrics_listen",
];

/// Settings that would move rows between shards (refused until rebalancing
/// makes them a job).
pub const MOVES_DATA: &[&str] = &["sharding.vnodes", "sharding.default_shard"];

/// One setting as `shardgate.config` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// `section.key`.
    pub key: String,
    /// Value in force (empty when unset).
    pub value: String,
    /// Built-in default (empty when unset).
    pub default: String,
    /// Whether RELOAD or SET can change it while running.
    pub reloadable: bool,
    /// `file`, `default` or `SET`.
    pub source: &'static str,
}

/// Why `SET` refused a value.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    /// No such setting.
    #[error("unrecognized configuration parameter \"{0}\"")]
    Unknown(String),
    /// The name matches settings in several sections.
    #[error("\"{0}\" is ambiguous: write it with its section, e.g. proxy.{0}")]
    Ambiguous(String),
    /// It takes effect only at a restart.
    #[error("parameter \"{0}\" cannot be changed without restarting shardgate")]
    NeedsRestart(String),
    /// It would move data between shards.
    #[error("parameter \"{0}\" decides which shard holds each row; changing it moves data, which needs a rebalancing job")]
    MovesData(String),
    /// The value does not parse or validate.
    #[error("invalid value for parameter \"{key}\": {message}")]
    BadValue {
        /// The setting.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl SettingError {
    /// The SQLSTATE the admin console answers with.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            SettingError::Unknown(_) => "42704",
            SettingError::Ambiguous(_) => "42725",
            SettingError::NeedsRestart(_) => "55P02",
            SettingError::MovesData(_) => "0A000",
            SettingError::BadValue { .. } => "22023",
        }
    }
}

fn sections(c: &Config) -> [(&'static str, toml::Table); 3] {
    let table = |v: Result<toml::Value, _>| match v {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    [
        ("proxy", table(toml::Value::try_from(&c.proxy))),
        ("routing", table(toml::Value::try_from(&c.routing))),
        ("sharding", table(toml::Value::try_from(&c.sharding))),
    ]
}

fn defaults() -> [(&'static str, toml::Table); 3] {
    let c = Config {
        proxy: ProxyConfig::default(),
        users: Vec::new(),
        shards: Vec::new(),
        routing: RoutingConfig::default(),
        sharding: ShardingConfig::default(),
        sharded_tables: Vec::new(),
        reference_tables: Vec::new(),
        file_keys: Vec::new(),
    };
    sections(&c)
}

/// A value as a person writes it: strings bare, lists comma-separated.
fn text(v: Option<&toml::Value>) -> String {
    match v {
        None => String::new(),
        Some(toml::Value::String(s)) => s.clone(),
        Some(toml::Value::Array(a)) => a
            .iter()
            .map(|x| text(Some(x)))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => other.to_string(),
    }
}

/// Every scalar setting with its value, default and where it came from;
/// `overrides` are the keys changed with `SET`.
pub fn list(config: &Config, overrides: &HashMap<String, String>) -> Vec<Setting> {
    let defaults = defaults();
    let mut out = Vec::new();
    for ((section, values), (_, defaults)) in sections(config).iter().zip(defaults.iter()) {
        let mut keys: Vec<&String> = defaults.keys().chain(values.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let key = format!("{section}.{k}");
            let source = if overrides.contains_key(&key) {
                "SET"
            } else if config.file_keys.contains(&key) {
                "file"
            } else {
                "default"
            };
            out.push(Setting {
                reloadable: !RESTART_ONLY.contains(&key.as_str())
                    && !MOVES_DATA.contains(&key.as_str()),
                value: text(values.get(k)),
                default: text(defaults.get(k)),
                source,
                key,
            });
        }
    }
    out
}

/// The full name of `name` (`pool_size` or `proxy.pool_size`).
pub fn resolve(name: &str) -> Result<String, SettingError> {
    let name = name.trim().to_ascii_lowercase();
    let defaults = defaults();
    if let Some((section, key)) = name.split_once('.') {
        return match defaults.iter().find(|(s, _)| *s == section) {
            Some((_, t)) if t.contains_key(key) || optional_key(section, key) => Ok(name),
            _ => Err(SettingError::Unknown(name)),
        };
    }
    let found: Vec<&str> = defaults
        .iter()
        .filter(|(s, t)| t.contains_key(&name) || optional_key(s, &name))
        .map(|(s, _)| *s)
        .collect();
    match found.as_slice() {
        [one] => Ok(format!("{one}.{name}")),
        [] => Err(SettingError::Unknown(name)),
        _ => Err(SettingError::Ambiguous(name)),
    }
}

/// Settings without a default value (absent from the default sections).
fn optional_key(section: &str, key: &str) -> bool {
    matches!(
        (section, key),
        ("proxy", "tls_cert" | "tls_key" | "metrics_listen")
            | ("routing", "monitor_user" | "monitor_password")
    )
}

/// `config` with `name` set to `value` (text as typed after `SET name =`),
/// validated; returns it and the setting's full name.
pub fn apply(config: &Config, name: &str, value: &str) -> Result<(Config, String), SettingError> {
    let key = resolve(name)?;
    if RESTART_ONLY.contains(&key.as_str()) {
        return Err(SettingError::NeedsRestart(key));
    }
    if MOVES_DATA.contains(&key.as_str()) {
        return Err(SettingError::MovesData(key));
    }
    let (section, field) = key.split_once('.').expect("resolved keys have a section");
    let bad = |message: String| SettingError::BadValue {
        key: key.clone(),
        message,
    };
    let mut sections = sections(config);
    let defaults = defaults();
    let (_, table) = sections
        .iter_mut()
        .find(|(s, _)| *s == section)
        .expect("resolved section");
    let template = table
        .get(field)
        .or_else(|| defaults.iter().find(|(s, _)| *s == section)?.1.get(field))
        .cloned();
    let parsed = typed(template.as_ref(), value).map_err(bad)?;
    table.insert(field.to_owned(), parsed);
    let table = toml::Value::Table(table.clone());
    let mut next = config.clone();
    let result = match section {
        "proxy" => table.try_into().map(|p| next.proxy = p),
        "routing" => table.try_into().map(|r| next.routing = r),
        _ => table.try_into().map(|s| next.sharding = s),
    };
    result.map_err(|e| bad(e.message().trim().to_owned()))?;
    next.revalidate().map_err(|e| match e {
        ConfigError::Invalid { message, .. } => bad(message),
        other => bad(other.to_string()),
    })?;
    Ok((next, key))
}

/// `value` as a TOML value shaped like `template` (the setting's current
/// or default value).
fn typed(template: Option<&toml::Value>, value: &str) -> Result<toml::Value, String> {
    let v = value.trim();
    Ok(match template {
        Some(toml::Value::Integer(_)) => toml::Value::Integer(
            v.parse()
                .map_err(|_| format!("\"{v}\" is not a whole number"))?,
        ),
        Some(toml::Value::Boolean(_)) => {
            toml::Value::Boolean(match v.to_ascii_lowercase().as_str() {
                "true" | "on" | "yes" | "1" => true,
                "false" | "off" | "no" | "0" => false,
                _ => return Err(format!("\"{v}\" is not a boolean (on/off)")),
            })
        }
        Some(toml::Value::Array(_)) => toml::Value::Array(
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        _ => toml::Value::String(v.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[proxy]
pool_size = 7

[[users]]
name = "app"
password = "secret"

[[shards]]
primary = "127.0.0.1:5432"
"#;

    fn config() -> Config {
        Config::parse(FILE, "t.toml").unwrap()
    }

    fn row<'a>(rows: &'a [Setting], key: &str) -> &'a Setting {
        rows.iter().find(|s| s.key == key).unwrap()
    }

    #[test]
    fn rows_show_value_default_source_and_reloadability() {
        let c = config();
        let mut overrides = HashMap::new();
        overrides.insert("routing.max_lag_ms".to_owned(), "5".to_owned());
        let rows = list(&c, &overrides);
        let p = row(&rows, "proxy.pool_size");
        assert_eq!(
            (p.value.as_str(), p.default.as_str(), p.source),
            ("7", "20", "file")
        );
        assert!(p.reloadable);
        let t = row(&rows, "proxy.pool_timeout");
        assert_eq!((t.value.as_str(), t.source), ("5s", "default"));
        assert!(!row(&rows, "proxy.listen").reloadable);
        assert!(!row(&rows, "sharding.vnodes").reloadable);
        assert_eq!(row(&rows, "routing.max_lag_ms").source, "SET");
        assert_eq!(row(&rows, "routing.default_consistency").value, "eventual");
    }

    #[test]
    fn set_parses_by_the_settings_type_and_validates() {
        let c = config();
        let (n, key) = apply(&c, "pool_size", "12").unwrap();
        assert_eq!((n.proxy.pool_size, key.as_str()), (12, "proxy.pool_size"));
        let (n, _) = apply(&c, "proxy.pool_timeout", "250ms").unwrap();
        assert_eq!(n.proxy.pool_timeout.as_millis(), 250);
        let (n, _) = apply(&c, "defer_begin", "off").unwrap();
        assert!(!n.proxy.defer_begin);
        let (n, _) = apply(&c, "default_consistency", "strong").unwrap();
        assert_eq!(n.routing.default_consistency.as_str(), "strong");
        let (n, _) = apply(&c, "write_functions", "f1, s.f2").unwrap();
        assert_eq!(n.routing.write_functions, vec!["f1", "s.f2"]);

        let e = apply(&c, "pool_size", "0").unwrap_err();
        assert_eq!(e.sqlstate(), "22023");
        assert!(e.to_string().contains("at least 1"), "{e}");
        assert_eq!(
            apply(&c, "pool_size", "many").unwrap_err().sqlstate(),
            "22023"
        );
        assert_eq!(
            apply(&c, "default_consistency", "always")
                .unwrap_err()
                .sqlstate(),
            "22023"
        );
        assert_eq!(
            apply(&c, "listen", "127.0.0.1:1").unwrap_err().sqlstate(),
            "55P02"
        );
        assert_eq!(
            apply(&c, "metrics_listen", "127.0.0.1:1")
                .unwrap_err()
                .sqlstate(),
            "55P02"
        );
        assert_eq!(apply(&c, "vnodes", "8").unwrap_err().sqlstate(), "0A000");
        assert_eq!(apply(&c, "no_such", "1").unwrap_err().sqlstate(), "42704");
    }
}

//! Command line: `shardgate [--config FILE]`, `check-config FILE`, `demo`, `--help`.

use std::path::PathBuf;

/// Usage text for `--help`.
pub const USAGE: &str = "\
shardgate: a PostgreSQL sharding and replica-routing proxy

Usage:
  shardgate [--config FILE]      run the proxy (default config: ./proxy.toml)
  shardgate check-config FILE    validate a configuration file and print what is wrong
  shardgate demo [--port PORT]   start a local Postgres cluster and the proxy on 127.0.0.1:6432
  shardgate --help               this text
  shardgate --version            print the version

Logging: set RUST_LOG (e.g. RUST_LOG=shardgate=debug); default is info.
Signals: SIGTERM or SIGINT stop accepting clients, let open transactions
finish for up to proxy.shutdown_timeout, then exit 0.
";

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the proxy with this configuration file.
    Run(PathBuf),
    /// Validate a configuration file.
    CheckConfig(PathBuf),
    /// Start the demo cluster and proxy.
    Demo {
        /// Port for the proxy.
        port: u16,
    },
    /// Print usage.
    Help,
    /// Print the version.
    Version,
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let mut it = args.iter().map(String::as_str);
    match it.next() {
        None => Ok(Command::Run(PathBuf::from("proxy.toml"))),
        Some("-h" | "--help" | "help") => Ok(Command::Help),
        Some("-V" | "--version") => Ok(Command::Version),
        Some("-c" | "--config") => {
            let file = it.next().ok_or("--config needs a file name")?;
            no_more(it)?;
            Ok(Command::Run(PathBuf::from(file)))
        }
        Some("check-config") => {
            let file = it.next().unwrap_or("proxy.toml");
            no_more(it)?;
            Ok(Command::CheckConfig(PathBuf::from(file)))
        }
        Some("demo") => {
            let mut port = 6432;
            while let Some(a) = it.next() {
                match a {
                    "--port" => {
                        port = it
                            .next()
                            .and_then(|p| p.parse().ok())
                            .ok_or("--port needs a port number")?
                    }
                    other => return Err(format!("unknown demo option {other:?}")),
                }
            }
            Ok(Command::Demo { port })
        }
        Some(other) if other.starts_with("--config=") => {
            no_more(it)?;
            Ok(Command::Run(PathBuf::from(&other["--config=".len()..])))
        }
        Some(other) => Err(format!("unknown argument {other:?}")),
    }
}

fn no_more<'a>(mut it: impl Iterator<Item = &'a str>) -> Result<(), String> {
    match it.next() {
        Some(extra) => Err(format!("unexpected argument {extra:?}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses_commands() {
        assert_eq!(p(&[]), Ok(Command::Run("proxy.toml".into())));
        assert_eq!(
            p(&["--config", "x.toml"]),
            Ok(Command::Run("x.toml".into()))
        );
        assert_eq!(
            p(&["check-config", "y.toml"]),
            Ok(Command::CheckConfig("y.toml".into()))
        );
        assert_eq!(
            p(&["demo", "--port", "7000"]),
            Ok(Command::Demo { port: 7000 })
        );
        assert_eq!(p(&["--help"]), Ok(Command::Help));
        assert!(p(&["--config"]).is_err());
        assert!(p(&["bogus"]).is_err());
    }
}

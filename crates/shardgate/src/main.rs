//! The `shardgate` command.

use std::process::ExitCode;

use shardgate::cli::{self, Command, USAGE};
use shardgate::config::Config;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shardgate: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    shardgate::init_logging();
    let result = match command {
        Command::Help => {
            print!("{USAGE}");
            Ok(())
        }
        Command::Version => {
            println!("shardgate {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::CheckConfig(path) => match Config::load(&path) {
            Ok(_) => {
                println!("{}: OK", path.display());
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        },
        Command::Run(path) => Config::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|config| shardgate::run_blocking(config, path)),
        Command::Demo { port } => shardgate::demo::run(port),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardgate: {e}");
            ExitCode::FAILURE
        }
    }
}

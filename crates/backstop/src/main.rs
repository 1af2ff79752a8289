//! The backstop mail transfer agent.
//!
//! Layout:
//! - `main.rs`: the command line (`serve`, `check-config`, `version`, `hash-password`).
//! - [`config`]: the TOML configuration, checked into validated values with file:line:key errors.
//! - [`serve`]: wiring: tracing, the queue, TLS, users, listeners, signals.

mod config;
mod serve;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "backstop",
    about = "A mail transfer agent that never sends backscatter"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (on the embedded default config unless --config is given).
    Serve {
        /// The config file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a config file and report every problem with file, line and key.
    CheckConfig {
        /// The config file (TOML).
        file: PathBuf,
    },
    /// Print the version.
    Version,
    /// Read a password from standard input and print its argon2id hash for the users file.
    HashPassword,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let loaded = match &config {
                Some(path) => Config::load(path),
                None => Config::embedded(),
            };
            match loaded {
                Ok(config) => match serve::run(config) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("backstop: {e:#}");
                        ExitCode::FAILURE
                    }
                },
                Err(e) => {
                    eprintln!("backstop: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Version => {
            println!("backstop {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::HashPassword => {
            let mut line = String::new();
            if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
                eprintln!("backstop: reading the password: {e}");
                return ExitCode::FAILURE;
            }
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                eprintln!("backstop: the password is empty");
                return ExitCode::FAILURE;
            }
            match backstop_listener::users::hash_password(password) {
                Ok(hash) => {
                    println!("{hash}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("backstop: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

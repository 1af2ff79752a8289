//! The `backstop` command: the command line over the library (`serve`, `check-config`, the
//! queue and quarantine commands, `batv`, `hash-password`).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use backstop::load::Setup;
use backstop::{admin, batv, load, serve};

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
    /// The queue of the running server (like mailq, postqueue and postsuper).
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Messages held back from delivery and from bouncing.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCommand,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// The running server's metrics, in Prometheus' text format (as GET /metrics serves them)
    Metrics {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// BATV tags with this config's keys: sign an address, or check a tagged one.
    Batv {
        #[command(subcommand)]
        command: BatvCommand,
        /// The config file; the embedded default config when absent.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// Print the version.
    Version,
    /// Read a password from standard input and print its argon2id hash for the users file.
    HashPassword,
}

/// Which server to ask, and how to print the answer.
#[derive(Args)]
struct AdminTarget {
    /// The server's config file (its admin socket is found from it); the embedded default
    /// config when absent.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Every queued message.
    List,
    /// A message's envelope, per-recipient state and last error, and its headers.
    Show { id: String },
    /// Make messages due now (all unless an id is given); held ones stay held.
    Flush { id: Option<String> },
    /// Keep a message from being delivered until released.
    Hold { id: String },
    /// Let a held message be delivered again.
    Release { id: String },
    /// Remove a message for good.
    Delete { id: String },
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// Every quarantined message with its reason.
    List,
    /// A quarantined message's reason, envelope and headers.
    Show { id: String },
    /// Put a message back in the queue for delivery.
    Release { id: String },
    /// Remove a message for good.
    Delete { id: String },
}

#[derive(Subcommand)]
enum BatvCommand {
    /// Print ADDRESS with a tag, as backstop sends it today.
    Sign { address: String },
    /// Check ADDRESS's tag: print the address without it, or say why it is not valid.
    Verify { address: String },
    /// Make a new key file FILE (32 random bytes, hex, readable by its owner only) for
    /// [[batv.key]] secret_file; copy it to every node that signs or checks tags.
    NewKey { file: PathBuf },
}

/// The config at `path`, or the embedded default, with its files; a bad one is reported (every
/// problem, one per line), exit code 2.
fn load(path: Option<&std::path::Path>) -> Result<Setup, ExitCode> {
    load::load(path).map_err(|errors| {
        eprintln!("{errors}");
        ExitCode::from(2)
    })
}

fn batv_command(config: Option<&std::path::Path>, command: BatvCommand) -> ExitCode {
    if let BatvCommand::NewKey { file } = &command {
        return match batv::new_key(file) {
            Ok(()) => {
                println!("{}", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("backstop: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match load(config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let result = match command {
        BatvCommand::Sign { address } => batv::sign(&config, &address).map(Ok),
        BatvCommand::Verify { address } => batv::verify(&config, &address),
        BatvCommand::NewKey { .. } => unreachable!("handled above"),
    };
    match result {
        Ok(Ok(address)) => {
            println!("{address}");
            ExitCode::SUCCESS
        }
        Ok(Err(why)) => {
            eprintln!("backstop: {why}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("backstop: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn admin(target: &AdminTarget, request: admin::Request) -> ExitCode {
    let config = match load(target.config.as_deref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    match admin::run(&config.admin, request, target.json) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backstop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => match load(config.as_deref()) {
            Ok(setup) => match serve::run(setup, config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("backstop: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Err(code) => code,
        },
        // Every problem of the text and of the files it names, one per line; warnings too.
        Command::CheckConfig { file } => match load(Some(&file)) {
            Ok(setup) => {
                for warning in &setup.config.warnings {
                    eprintln!("warning: {warning}");
                }
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Queue { command, target } => {
            let request = match command {
                QueueCommand::List => admin::Request::QueueList,
                QueueCommand::Show { id } => admin::Request::QueueShow { id },
                QueueCommand::Flush { id } => admin::Request::QueueFlush { id },
                QueueCommand::Hold { id } => admin::Request::QueueHold { id },
                QueueCommand::Release { id } => admin::Request::QueueRelease { id },
                QueueCommand::Delete { id } => admin::Request::QueueDelete { id },
            };
            admin(&target, request)
        }
        Command::Quarantine { command, target } => {
            let request = match command {
                QuarantineCommand::List => admin::Request::QuarantineList,
                QuarantineCommand::Show { id } => admin::Request::QuarantineShow { id },
                QuarantineCommand::Release { id } => admin::Request::QuarantineRelease { id },
                QuarantineCommand::Delete { id } => admin::Request::QuarantineDelete { id },
            };
            admin(&target, request)
        }
        Command::Metrics { target } => admin(&target, admin::Request::Metrics),
        Command::Batv { command, config } => batv_command(config.as_deref(), command),
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

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
    /// Run the server on its config (see --config; the embedded default when there is none).
    Serve {
        /// The config file (TOML); else $BACKSTOP_CONFIG, else /etc/backstop/backstop.toml
        /// when it exists, else the embedded default.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// The config as the server reads it (like postconf).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Check a config file and report every problem with file, line and key.
    CheckConfig {
        /// The config file (TOML); else $BACKSTOP_CONFIG, else /etc/backstop/backstop.toml.
        file: Option<PathBuf>,
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
    /// How the running server would handle a recipient (like sendmail -bv): the RCPT rules,
    /// each recipient check, the reply, and where delivery would take it. Nothing is sent.
    Address {
        #[command(subcommand)]
        command: AddressCommand,
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
        /// The config file; else $BACKSTOP_CONFIG, else /etc/backstop/backstop.toml when it
        /// exists, else the embedded default.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
    },
    /// A summary of backstop's log (like pflogsumm): what was accepted, delivered, deferred
    /// and refused, by the check that decided, the busiest domains, the commonest deferrals.
    Report {
        /// Log files (text or JSON lines); standard input when none, e.g.
        /// `journalctl -u backstop -o cat | backstop report`.
        files: Vec<PathBuf>,
        /// Only what was logged in this last stretch of time (24h, 7d).
        #[arg(long, value_name = "AGE")]
        since: Option<String>,
        /// How many rows each table shows.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Send a message from standard input, as sendmail(1) does (-t, -f, -F, -i, -oi, -N, -R,
    /// -V, recipients as arguments), through the running server's local socket. Also what
    /// `backstop` does when run by the name `sendmail` (/usr/sbin/sendmail).
    #[command(disable_help_flag = true)]
    Sendmail {
        /// sendmail's options and the recipients.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print the version.
    Version,
    /// Read a password from standard input and print its argon2id hash for the users file.
    HashPassword,
    /// Write the man pages of this command line into DIR (for packaging).
    #[command(hide = true)]
    Man { dir: PathBuf },
}

/// Which server to ask, and how to print the answer.
#[derive(Args)]
struct AdminTarget {
    /// The server's config file (its admin socket is found from it); else $BACKSTOP_CONFIG,
    /// else /etc/backstop/backstop.toml when it exists, else the embedded default.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum QueueCommand {
    /// The queued messages, oldest first, a page at a time (like mailq).
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// The messages waiting, by recipient domain and age (like qshape).
    Summary,
    /// A message's envelope, per-recipient state and last error, and its headers.
    Show {
        id: String,
        #[command(flatten)]
        body: BodyArgs,
    },
    /// Make messages due now (all when no id is given); held ones stay held.
    Flush {
        #[command(flatten)]
        selection: Selection,
    },
    /// Keep messages from being delivered until released.
    Hold {
        #[command(flatten)]
        selection: Selection,
    },
    /// Let held messages be delivered again.
    Release {
        #[command(flatten)]
        selection: Selection,
    },
    /// Remove messages for good.
    Delete {
        #[command(flatten)]
        selection: Selection,
    },
}

#[derive(Subcommand)]
enum QuarantineCommand {
    /// The quarantined messages with their kind and reason, oldest first, a page at a time.
    List {
        #[command(flatten)]
        page: PageArgs,
        /// Only messages whose sender contains this (any letter case).
        #[arg(long, value_name = "TEXT")]
        from: Option<String>,
        /// Only messages held for a recipient that contains this.
        #[arg(long, value_name = "TEXT")]
        to: Option<String>,
        /// Only this kind: content, dmarc, undeliverable or hold.
        #[arg(long)]
        kind: Option<String>,
        /// Only messages quarantined since: a date (2026-12-01, UTC) or an age (24h, 7d).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only messages quarantined before: a date or an age.
        #[arg(long, value_name = "WHEN")]
        until: Option<String>,
    },
    /// A quarantined message's reason, envelope and headers.
    Show {
        id: String,
        #[command(flatten)]
        body: BodyArgs,
    },
    /// Put messages back in the queue for delivery: for every recipient still held, or one.
    Release {
        #[command(flatten)]
        selection: Selection,
        /// Only messages whose kind or reason contains this (any letter case).
        #[arg(long)]
        reason: Option<String>,
        /// Release the copy of this recipient only; the others stay held.
        #[arg(long, value_name = "RECIPIENT")]
        to: Option<String>,
    },
    /// Move queued messages into quarantine (an administrator's hold).
    Hold {
        #[command(flatten)]
        selection: Selection,
        /// The reason recorded with them.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Let SENDER (an address or @domain) through to RECIPIENT where a content check would
    /// hold its mail (never a virus, SPF, reverse-DNS or DMARC verdict).
    Allow { recipient: String, sender: String },
    /// Take SENDER off RECIPIENT's allow-list.
    Disallow { recipient: String, sender: String },
    /// The allow-list.
    Allowed,
    /// Send the digests due now (each recipient's new held messages), whatever the schedule.
    Digest,
    /// Remove messages for good.
    Delete {
        #[command(flatten)]
        selection: Selection,
        /// Only messages whose kind or reason contains this (any letter case).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Which page of a list.
#[derive(Args)]
struct PageArgs {
    /// Start after this queue id (the `--after` a previous page printed).
    #[arg(long, value_name = "ID")]
    after: Option<String>,
    /// The most messages on the page (1 to 1000; 100 when not given).
    #[arg(long)]
    limit: Option<usize>,
    /// Every page, one after another.
    #[arg(long, conflicts_with_all = ["after", "limit"])]
    all: bool,
}

/// Whether `show` prints the message itself (like postcat -q).
#[derive(Args)]
struct BodyArgs {
    /// The message too, as text (control characters escaped), up to --limit.
    #[arg(long)]
    body: bool,
    /// Only the message, exactly as stored (for a file or another program).
    #[arg(long, conflicts_with = "body")]
    raw: bool,
    /// The most of the message to show (100k for --body; all of it for --raw).
    #[arg(long, value_name = "SIZE")]
    limit: Option<String>,
}

impl BodyArgs {
    /// What to ask for and how to show it; an error message for a bad --limit.
    fn view(&self) -> Result<(Option<u64>, admin::View), String> {
        let limit = match self.limit.as_deref().map(backstop_config::parse_size) {
            None => None,
            Some(Ok(size)) => Some(size),
            Some(Err(why)) => return Err(format!("--limit: {why}")),
        };
        Ok(match (self.body, self.raw) {
            (_, true) => (Some(limit.unwrap_or(u64::MAX)), admin::View::Raw),
            (true, _) => (Some(limit.unwrap_or(100 * 1024)), admin::View::Text),
            _ => (None, admin::View::Header),
        })
    }
}

/// The messages a verb acts on (like postsuper's): ids, `ALL`, or `-` for ids read from
/// standard input (separated by spaces or lines), narrowed by the filters.
#[derive(Args)]
struct Selection {
    /// Queue ids, ALL for every message, or - to read ids from standard input.
    ids: Vec<String>,
    /// Only messages with a recipient in this domain.
    #[arg(long, value_name = "DOMAIN")]
    to_domain: Option<String>,
    /// Only messages from this sender: an address, @domain, or <> for bounces.
    #[arg(long, value_name = "SENDER")]
    from: Option<String>,
    /// Only messages older than this (30m, 12h, 7d).
    #[arg(long, value_name = "AGE")]
    older_than: Option<String>,
}

/// The config file a command reads: `--config`, else `$BACKSTOP_CONFIG`, else
/// /etc/backstop/backstop.toml when it exists (where the package puts it, as Postfix's
/// commands find /etc/postfix); `None`: the embedded default.
fn config_path(flag: Option<PathBuf>) -> Option<PathBuf> {
    config_path_from(
        flag,
        std::env::var_os("BACKSTOP_CONFIG"),
        std::path::Path::new(DEFAULT_CONFIG),
    )
}

const DEFAULT_CONFIG: &str = "/etc/backstop/backstop.toml";

fn config_path_from(
    flag: Option<PathBuf>,
    env: Option<std::ffi::OsString>,
    default: &std::path::Path,
) -> Option<PathBuf> {
    // A default this user may not even look at (/etc/backstop is the service's group's) is
    // still the config: reading it then says so, where the embedded one would mislead.
    let present = |path: &std::path::Path| match std::fs::metadata(path) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::PermissionDenied,
    };
    flag.or_else(|| env.filter(|v| !v.is_empty()).map(PathBuf::from))
        .or_else(|| present(default).then(|| default.to_owned()))
}

#[derive(Subcommand)]
enum AddressCommand {
    /// What RCPT TO:<ADDRESS> would get, and why; greylisting, rates and callahead are said,
    /// not done.
    Test {
        address: String,
        /// MAIL FROM (<> for a bounce); someone@example.org when not given.
        #[arg(long, value_name = "SENDER")]
        sender: Option<String>,
        /// The client's IP address; 192.0.2.1, a stranger, when not given.
        #[arg(long, value_name = "IP")]
        client: Option<String>,
        /// As this logged-in user (a submission).
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// On this listener; the first that needs no login (with --user, that needs one).
        #[arg(long, value_name = "NAME")]
        listener: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Every key of every section, with the file's value or the default, as TOML (password
    /// hashes and Redis passwords hidden).
    Show {
        /// Only the defaults: what an empty file means (like postconf -d).
        #[arg(long)]
        defaults: bool,
        /// The config file; else $BACKSTOP_CONFIG, else /etc/backstop/backstop.toml when it
        /// exists, else the embedded default.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// `backstop config show`: the config read (not the files it names) and printed; a bad one
/// is reported as check-config does, exit code 2.
fn config_show(path: Option<PathBuf>, defaults: bool) -> ExitCode {
    if defaults {
        print!("{}", backstop_config::defaults());
        return ExitCode::SUCCESS;
    }
    let parsed = match config_path(path) {
        None => backstop_config::embedded(),
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(text) => backstop_config::parse(&text, &path.display().to_string()),
            Err(e) => {
                eprintln!("backstop: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
    };
    match parsed {
        Ok(config) => {
            print!("{}", config.show());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(2)
        }
    }
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
    let config = match load(config_path(config.map(ToOwned::to_owned)).as_deref()) {
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
    admin_view(target, request, admin::View::Header)
}

/// `list --all`: every page of the queue or the quarantine, printed as one list.
fn admin_all(
    target: &AdminTarget,
    place: admin::Place,
    filter: admin::QuarantineFilter,
) -> ExitCode {
    let setup = match load(config_path(target.config.clone()).as_deref()) {
        Ok(setup) => setup,
        Err(code) => return code,
    };
    match admin::run_all(
        &setup.admin,
        &setup.config.data_dir,
        place,
        filter,
        target.json,
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backstop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn admin_view(target: &AdminTarget, request: admin::Request, view: admin::View) -> ExitCode {
    let setup = match load(config_path(target.config.clone()).as_deref()) {
        Ok(setup) => setup,
        Err(code) => return code,
    };
    let data_dir = &setup.config.data_dir;
    match admin::run(&setup.admin, data_dir, request, target.json, view) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backstop: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `backstop report`: reads the log lines of `files` (or standard input) and prints the summary.
fn report(files: &[PathBuf], since: Option<&str>, top: usize) -> ExitCode {
    let since = match since.map(backstop_config::parse_duration) {
        None => None,
        Some(Ok(age)) => Some(backstop::report::since(age)),
        Some(Err(why)) => {
            eprintln!("backstop: --since: {why}");
            return ExitCode::from(2);
        }
    };
    let mut summary = backstop::report::Summary::default();
    let mut read = |input: Box<dyn BufRead>, name: &str| -> Result<(), ExitCode> {
        for line in input.split(b'\n') {
            match line {
                // A log line is text; anything else is read as well as it can be.
                Ok(line) => summary.read(&String::from_utf8_lossy(&line), since.as_deref()),
                Err(e) => {
                    eprintln!("backstop: reading {name}: {e}");
                    return Err(ExitCode::FAILURE);
                }
            }
        }
        Ok(())
    };
    if files.is_empty() {
        if let Err(code) = read(Box::new(std::io::stdin().lock()), "standard input") {
            return code;
        }
    }
    for file in files {
        let opened = match std::fs::File::open(file) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("backstop: {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        };
        let name = file.display().to_string();
        if let Err(code) = read(Box::new(std::io::BufReader::new(opened)), &name) {
            return code;
        }
    }
    print!("{}", summary.render(top));
    ExitCode::SUCCESS
}

/// A verb over a selection of messages in `place`: each selected id in turn.
fn admin_each(
    target: &AdminTarget,
    place: admin::Place,
    selection: Selection,
    reason: Option<String>,
    request: impl Fn(String) -> admin::Request,
) -> ExitCode {
    let config = match load(config_path(target.config.clone()).as_deref()) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let older_than = match selection
        .older_than
        .as_deref()
        .map(backstop_config::parse_duration)
    {
        None => None,
        Some(Ok(age)) => Some(age),
        Some(Err(why)) => {
            eprintln!("backstop: --older-than: {why}");
            return ExitCode::from(2);
        }
    };
    // A flush leaves held messages held: they are not selected by ALL or a filter.
    let not_held = matches!(request(String::new()), admin::Request::QueueFlush { .. });
    let filter = admin::Filter {
        to_domain: selection.to_domain,
        from: selection.from,
        older_than,
        reason,
        not_held,
    };
    let mut ids = Vec::new();
    for id in selection.ids {
        if id == "-" {
            let mut text = String::new();
            if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
                eprintln!("backstop: reading ids from standard input: {e}");
                return ExitCode::FAILURE;
            }
            ids.extend(text.split_whitespace().map(str::to_owned));
        } else {
            ids.push(id);
        }
    }
    if ids.is_empty() {
        eprintln!(
            "backstop: name the messages: queue ids, ALL, or - to read ids from standard input"
        );
        return ExitCode::from(2);
    }
    let selected = match admin::select(&config.admin, place, &ids, &filter) {
        Ok(selected) => selected,
        Err(e) => {
            eprintln!("backstop: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if selected.is_empty() {
        eprintln!("backstop: no message matches");
        return ExitCode::SUCCESS;
    }
    match admin::run_each(&config.admin, &selected, request, target.json) {
        0 => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}

fn main() -> ExitCode {
    // Run as /usr/sbin/sendmail (a link or the alternative): sendmail's command line, whose
    // options clap could not read (-oi, -fuser).
    let mut args = std::env::args();
    let program = args.next().unwrap_or_default();
    if std::path::Path::new(&program).file_name() == Some(std::ffi::OsStr::new("sendmail")) {
        let args: Vec<String> = args.collect();
        return backstop::sendmail::run(&args, config_path(None));
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let config = config_path(config);
            match load(config.as_deref()) {
                Ok(setup) => match serve::run(setup, config) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) if e.is::<serve::Logged>() => ExitCode::FAILURE,
                    Err(e) => {
                        eprintln!("backstop: {e:#}");
                        ExitCode::FAILURE
                    }
                },
                Err(code) => code,
            }
        }
        Command::Config {
            command: ConfigCommand::Show { defaults, config },
        } => config_show(config, defaults),
        // Every problem of the text and of the files it names, one per line; warnings too.
        Command::CheckConfig { file } => {
            let Some(file) = config_path(file) else {
                eprintln!("backstop: no config file: name one, set BACKSTOP_CONFIG, or create {DEFAULT_CONFIG}");
                return ExitCode::from(2);
            };
            match load(Some(&file)) {
                Ok(setup) => {
                    for warning in &setup.config.warnings {
                        eprintln!("warning: {warning}");
                    }
                    println!("{}: ok", file.display());
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            }
        }
        Command::Queue { command, target } => {
            use admin::{Place, Request};
            let each = |selection: Selection, request: &dyn Fn(String) -> Request| {
                admin_each(&target, Place::Queue, selection, None, request)
            };
            match command {
                QueueCommand::List { page } if page.all => admin_all(
                    &target,
                    admin::Place::Queue,
                    admin::QuarantineFilter::default(),
                ),
                QueueCommand::List { page } => admin(
                    &target,
                    Request::QueueList {
                        after: page.after,
                        limit: page.limit,
                    },
                ),
                QueueCommand::Summary => {
                    let setup = match load(config_path(target.config.clone()).as_deref()) {
                        Ok(setup) => setup,
                        Err(code) => return code,
                    };
                    match admin::queue_summary(&setup.admin, &setup.config.data_dir, target.json) {
                        Ok(()) => ExitCode::SUCCESS,
                        Err(e) => {
                            eprintln!("backstop: {e:#}");
                            ExitCode::FAILURE
                        }
                    }
                }
                QueueCommand::Show { id, body } => match body.view() {
                    Ok((body, view)) => admin_view(&target, Request::QueueShow { id, body }, view),
                    Err(why) => {
                        eprintln!("backstop: {why}");
                        ExitCode::from(2)
                    }
                },
                // Without ids or filters: every message, in one request.
                QueueCommand::Flush { selection }
                    if selection.ids.is_empty()
                        && selection.to_domain.is_none()
                        && selection.from.is_none()
                        && selection.older_than.is_none() =>
                {
                    admin(&target, Request::QueueFlush { id: None })
                }
                QueueCommand::Flush { mut selection } => {
                    if selection.ids.is_empty() {
                        selection.ids.push("ALL".into());
                    }
                    each(selection, &|id| Request::QueueFlush { id: Some(id) })
                }
                QueueCommand::Hold { selection } => {
                    each(selection, &|id| Request::QueueHold { id })
                }
                QueueCommand::Release { selection } => {
                    each(selection, &|id| Request::QueueRelease { id })
                }
                QueueCommand::Delete { selection } => {
                    each(selection, &|id| Request::QueueDelete { id })
                }
            }
        }
        Command::Quarantine { command, target } => {
            use admin::{Place, Request};
            match command {
                QuarantineCommand::List {
                    page,
                    from,
                    to,
                    kind,
                    since,
                    until,
                } => {
                    let (since, until) = match (
                        since.as_deref().map(admin::when).transpose(),
                        until.as_deref().map(admin::when).transpose(),
                    ) {
                        (Ok(since), Ok(until)) => (since, until),
                        (Err(why), _) | (_, Err(why)) => {
                            eprintln!("backstop: {why}");
                            return ExitCode::from(2);
                        }
                    };
                    let filter = admin::QuarantineFilter {
                        after: page.after,
                        limit: page.limit,
                        sender: from,
                        recipient: to,
                        kind,
                        since,
                        until,
                    };
                    match page.all {
                        true => admin_all(&target, Place::Quarantine, filter),
                        false => admin(&target, Request::QuarantineList(filter)),
                    }
                }
                QuarantineCommand::Hold { selection, reason } => {
                    admin_each(&target, Place::Queue, selection, None, |id| {
                        Request::QuarantineHold {
                            id,
                            reason: reason.clone(),
                        }
                    })
                }
                QuarantineCommand::Allow { recipient, sender } => {
                    admin(&target, Request::QuarantineAllow { recipient, sender })
                }
                QuarantineCommand::Disallow { recipient, sender } => {
                    admin(&target, Request::QuarantineDisallow { recipient, sender })
                }
                QuarantineCommand::Allowed => admin(&target, Request::QuarantineAllowList),
                QuarantineCommand::Digest => admin(&target, Request::QuarantineDigest),
                QuarantineCommand::Show { id, body } => match body.view() {
                    Ok((body, view)) => {
                        admin_view(&target, Request::QuarantineShow { id, body }, view)
                    }
                    Err(why) => {
                        eprintln!("backstop: {why}");
                        ExitCode::from(2)
                    }
                },
                QuarantineCommand::Release {
                    selection,
                    reason,
                    to,
                } => admin_each(&target, Place::Quarantine, selection, reason, |id| {
                    Request::QuarantineRelease {
                        id,
                        recipient: to.clone(),
                    }
                }),
                QuarantineCommand::Delete { selection, reason } => {
                    admin_each(&target, Place::Quarantine, selection, reason, |id| {
                        Request::QuarantineDelete { id }
                    })
                }
            }
        }
        Command::Metrics { target } => admin(&target, admin::Request::Metrics),
        Command::Address {
            command:
                AddressCommand::Test {
                    address,
                    sender,
                    client,
                    user,
                    listener,
                },
            target,
        } => admin(
            &target,
            admin::Request::AddressTest(backstop::address_test::Question {
                address,
                sender,
                client,
                user,
                listener,
            }),
        ),
        Command::Batv { command, config } => batv_command(config.as_deref(), command),
        Command::Report { files, since, top } => report(&files, since.as_deref(), top),
        Command::Sendmail { args } => backstop::sendmail::run(&args, config_path(None)),
        Command::Man { dir } => {
            match backstop::man::write_pages(<Cli as clap::CommandFactory>::command(), &dir) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("backstop: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_the_flag_then_the_environment_then_etc_then_the_embedded_one() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("backstop.toml");
        let flag = Some(PathBuf::from("/x/flag.toml"));
        let env = Some(std::ffi::OsString::from("/x/env.toml"));
        assert_eq!(config_path_from(flag.clone(), env.clone(), &etc), flag);
        assert_eq!(
            config_path_from(None, env, &etc),
            Some(PathBuf::from("/x/env.toml"))
        );
        // An empty BACKSTOP_CONFIG is as if it were not set.
        assert_eq!(config_path_from(None, Some("".into()), &etc), None);
        assert_eq!(config_path_from(None, None, &etc), None);
        std::fs::write(&etc, "").unwrap();
        assert_eq!(config_path_from(None, None, &etc), Some(etc));
    }
}

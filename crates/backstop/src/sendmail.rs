//! `backstop sendmail`, and `backstop` run as `sendmail`: the command cron, scripts and mail(1)
//! hand a message to, with sendmail's options. It submits through the server's local socket
//! (`[sendmail] socket`), where the server logs the session in as the Unix user this runs as:
//! the message is checked, signed and queued as an authenticated submitter's, and a failure
//! after acceptance is reported to the sender by a DSN.
//!
//! Unlike Postfix's sendmail, which drops the message into a directory for the server to pick
//! up later, this one needs the server running, and says so (exit 75, `EX_TEMPFAIL`): the
//! server decides while the submitter waits, so a recipient it refuses is refused here, on
//! standard error, never by a bounce.
//!
//! Exit codes (sysexits.h): 0 sent (to at least one recipient; the ones refused are named on
//! standard error), 64 a bad option, 65 no recipient or a malformed address, 66 the message
//! could not be read, 69 refused for good, 75 try later (server down, 4xx), 78 a bad config.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use backstop_smtp_client::{Connection, NextHop, Settings, Timeouts, TlsPolicy, Transaction};
use backstop_types::{
    Address, AttemptOutcome, BodyType, Endpoint, Notify, Recipient, Ret, ReversePath,
};

/// Where a packaged server's socket is when the config cannot be read (a user other than the
/// service's may not read /etc/backstop).
pub const FALLBACK_SOCKET: &str = "/run/backstop/sendmail.sock";

const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_NOINPUT: u8 = 66;
const EX_UNAVAILABLE: u8 = 69;
const EX_TEMPFAIL: u8 = 75;
const EX_CONFIG: u8 = 78;

/// What the command line asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `-t`: the recipients are the message's To, Cc and Bcc (and the arguments too).
    pub extract: bool,
    /// `-f`/`-r`: the envelope sender; `Some("")` or `Some("<>")` for the null sender.
    pub sender: Option<String>,
    /// `-F`: the sender's full name, for a From: field the message lacks.
    pub full_name: Option<String>,
    /// Without `-i`/`-oi`, a line of a single dot ends the message.
    pub dot_ends: bool,
    /// `-C` (or `--config`): the config file.
    pub config: Option<PathBuf>,
    /// `-N`: NOTIFY for every recipient.
    pub notify: Option<Notify>,
    /// `-R`: RET.
    pub ret: Option<Ret>,
    /// `-V`: ENVID.
    pub envid: Option<String>,
    /// The recipients on the command line (each may be a comma-separated list).
    pub recipients: Vec<String>,
}

impl Options {
    /// Reads sendmail's options: `-fADDR` and `-f ADDR` alike; options that only tune how
    /// sendmail 8 queues or reports (`-oem`, `-odb`, `-v`, `-B`, `-h`, `-U`) are taken and
    /// ignored, as Postfix's sendmail does.
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut options = Options {
            dot_ends: true,
            ..Options::default()
        };
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            if arg == "--" {
                options.recipients.extend(args.by_ref().cloned());
                break;
            }
            // backstop's own name for -C, as the other commands take it.
            if arg == "--config" {
                let file = args.next().ok_or("--config needs a file")?;
                options.config = Some(PathBuf::from(file));
                continue;
            }
            if let Some(file) = arg.strip_prefix("--config=") {
                options.config = Some(PathBuf::from(file));
                continue;
            }
            let Some(flag) = arg.strip_prefix('-').filter(|f| !f.is_empty()) else {
                options.recipients.push(arg.clone());
                continue;
            };
            let (letter, attached) = flag.split_at(1);
            // The value of an option that takes one: attached (`-fme`) or the next argument.
            let mut value = |name: &str| -> Result<String, String> {
                if !attached.is_empty() {
                    return Ok(attached.to_owned());
                }
                args.next()
                    .cloned()
                    .ok_or_else(|| format!("-{name} needs a value"))
            };
            match letter {
                "t" if attached.is_empty() => options.extract = true,
                "i" if attached.is_empty() => options.dot_ends = false,
                "f" | "r" => options.sender = Some(value(letter)?),
                "F" => options.full_name = Some(value("F")?),
                "C" => options.config = Some(PathBuf::from(value("C")?)),
                "N" => options.notify = Some(notify(&value("N")?)?),
                "R" => {
                    options.ret = Some(match value("R")?.to_ascii_lowercase().as_str() {
                        "full" => Ret::Full,
                        "hdrs" => Ret::Headers,
                        other => return Err(format!("-R {other}: full or hdrs")),
                    })
                }
                "V" => options.envid = Some(value("V")?),
                "o" => match attached {
                    "i" => options.dot_ends = false,
                    // -oem, -oee, -odb, -odi, -om, -oQ...: sendmail 8's queue and report
                    // settings; and -o alone takes its value from the next argument.
                    "" if args.next().is_none() => return Err("-o needs a value".into()),
                    _ => {}
                },
                "b" => match attached {
                    "m" | "" => {}
                    "p" => return Err("-bp: the queue is `backstop queue list`".into()),
                    "v" => return Err("-bv is not supported".into()),
                    other => return Err(format!("-b{other} is not supported")),
                },
                // Accepted and ignored: verbosity, initial submission, queue runs, and the
                // body type, hop count, traffic log and option settings with their values.
                "v" | "U" | "n" | "m" | "e" | "G" | "x" | "q" => {}
                "B" | "h" | "X" | "O" | "L" => {
                    value(letter)?;
                }
                _ => return Err(format!("unknown option {arg}")),
            }
        }
        Ok(options)
    }
}

/// `-N never` or a comma-separated list of success, failure, delay.
fn notify(value: &str) -> Result<Notify, String> {
    let value = value.to_ascii_lowercase();
    if value == "never" {
        return Ok(Notify::Never);
    }
    let (mut success, mut failure, mut delay) = (false, false, false);
    for word in value.split(',').map(str::trim) {
        match word {
            "success" => success = true,
            "failure" => failure = true,
            "delay" => delay = true,
            other => {
                return Err(format!(
                    "-N {other}: never, or a list of success, failure, delay"
                ))
            }
        }
    }
    Ok(Notify::On {
        success,
        failure,
        delay,
    })
}

/// The message as read: CRLF line endings; up to a line `.` unless `dot_ends` is false.
pub fn read_message(input: &[u8], dot_ends: bool) -> Vec<u8> {
    let mut message = Vec::with_capacity(input.len() + input.len() / 32);
    // An mbox envelope line (`From user date`, as `git format-patch` writes it) is no header
    // field: dropped, as Postfix drops it.
    let input = match input.strip_prefix(b"From ") {
        Some(rest) => rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(&[][..], |at| &rest[at + 1..]),
        None => input,
    };
    let mut lines = input.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        // The piece after a final LF is no line.
        if lines.peek().is_none() && line.is_empty() {
            break;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if dot_ends && line == b"." {
            break;
        }
        message.extend_from_slice(line);
        message.extend_from_slice(b"\r\n");
    }
    message
}

/// The header fields of `message` (each with its continuation lines), and where the body
/// starts: after the empty line, or at the first line that is no field (a message that does
/// not start with a field is all body).
fn fields(message: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut at = 0;
    let body = loop {
        if at >= message.len() {
            break at;
        }
        let end = message[at..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(message.len(), |p| at + p + 2);
        let line = &message[at..end];
        if line == b"\r\n" {
            break end;
        }
        match spans.last_mut() {
            Some(span) if matches!(line.first(), Some(b' ' | b'\t')) => span.1 = end,
            _ if is_field_start(line) => spans.push((at, end)),
            _ => break at,
        }
        at = end;
    };
    (spans.iter().map(|&(a, b)| &message[a..b]).collect(), body)
}

/// `Name:` with a name of printable ASCII other than the colon (RFC 5322 2.2).
fn is_field_start(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b':') {
        Some(colon) if colon > 0 => line[..colon].iter().all(|&b| (33..=126).contains(&b)),
        _ => false,
    }
}

fn field_name(field: &[u8]) -> &[u8] {
    let colon = field.iter().position(|&b| b == b':').unwrap_or(0);
    &field[..colon]
}

fn has_field(fields: &[&[u8]], name: &str) -> bool {
    fields
        .iter()
        .any(|f| field_name(f).eq_ignore_ascii_case(name.as_bytes()))
}

/// What the submitter is, for the fields a message lacks.
pub struct Submitter {
    /// The envelope sender.
    pub sender: ReversePath,
    /// A display name for From:.
    pub full_name: Option<String>,
    /// The domain of a made-up Message-ID.
    pub domain: String,
}

/// The message to send and its recipients: with `-t`, the addresses of To, Cc and Bcc are
/// added to `recipients` and the Bcc fields taken out; a From:, Date: or Message-ID: the
/// message lacks is added (as Postfix's cleanup does for local mail).
pub fn prepare(
    message: &[u8],
    extract: bool,
    submitter: &Submitter,
    now: backstop_types::UnixTime,
    unique: &str,
) -> (Vec<u8>, Vec<String>) {
    let (fields, body_start) = fields(message);
    let mut recipients = Vec::new();
    if extract {
        let header: Vec<u8> = fields.concat();
        if let Some(parsed) = mail_parser::MessageParser::new().parse_headers(&header[..]) {
            for list in [parsed.to(), parsed.cc(), parsed.bcc()]
                .into_iter()
                .flatten()
            {
                recipients.extend(list.iter().filter_map(|a| a.address()).map(str::to_owned));
            }
        }
    }
    let mut out = Vec::with_capacity(message.len() + 256);
    if !has_field(&fields, "From") {
        let address = match &submitter.sender {
            ReversePath::Address(a) => a.to_string(),
            // A null sender's message still names someone.
            ReversePath::Null => format!("MAILER-DAEMON@{}", submitter.domain),
        };
        match submitter
            .full_name
            .as_deref()
            .filter(|n| !n.trim().is_empty())
        {
            Some(name) => out.extend_from_slice(
                format!("From: {} <{address}>\r\n", display_name(name)).as_bytes(),
            ),
            None => out.extend_from_slice(format!("From: {address}\r\n").as_bytes()),
        }
    }
    if !has_field(&fields, "Date") {
        out.extend_from_slice(format!("Date: {}\r\n", now.to_rfc5322()).as_bytes());
    }
    if !has_field(&fields, "Message-ID") {
        out.extend_from_slice(
            format!("Message-ID: <{unique}@{}>\r\n", submitter.domain).as_bytes(),
        );
    }
    for field in &fields {
        if !field_name(field).eq_ignore_ascii_case(b"Bcc") {
            out.extend_from_slice(field);
        }
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&message[body_start..]);
    (out, recipients)
}

/// A display name as a phrase: quoted when it has specials, RFC 2047-encoded when it is not
/// ASCII; never a line break.
fn display_name(name: &str) -> String {
    let name: String = name.chars().filter(|c| !c.is_control()).collect();
    if !name.is_ascii() {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(name.as_bytes());
        return format!("=?utf-8?b?{encoded}?=");
    }
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || " !#$%&'*+-/=?^_`{|}~".contains(c));
    if plain {
        name
    } else {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{escaped}\"")
    }
}

/// The recipients as addresses: each argument may be a list (`a@x, b@y`) and may have angle
/// brackets; a bare name (`root`, as cron and mdadm write it) is a user of `domain`, the mail
/// name (Postfix's `append_at_myorigin`).
fn parse_recipients(lists: &[String], domain: &str) -> Result<Vec<Address>, String> {
    let mut out: Vec<Address> = Vec::new();
    for item in lists.iter().flat_map(|l| l.split(',')) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let bare = match (item.find('<'), item.rfind('>')) {
            (Some(open), Some(close)) if open < close => &item[open + 1..close],
            _ => item,
        };
        let qualified;
        let bare = if bare.contains('@') {
            bare
        } else {
            qualified = format!("{bare}@{domain}");
            &qualified
        };
        let address = Address::parse(bare)
            .map_err(|e| format!("{}: {e}", backstop_types::text::Escaped(item)))?;
        if !out.contains(&address) {
            out.push(address);
        }
    }
    Ok(out)
}

fn parse_sender(sender: &str) -> Result<ReversePath, String> {
    let bare = sender.trim().trim_start_matches('<').trim_end_matches('>');
    if bare.is_empty() {
        return Ok(ReversePath::Null);
    }
    Address::parse(bare)
        .map(ReversePath::Address)
        .map_err(|e| format!("-f {}: {e}", backstop_types::text::Escaped(sender)))
}

/// The running user's name and full name (the first part of the GECOS field).
fn this_user() -> (String, Option<String>) {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let name = backstop_listener::local_user::name(uid);
    (name, backstop_listener::local_user::full_name(uid))
}

/// The domain of a sender without -f: /etc/mailname (Debian's), else the config's hostname.
fn mail_domain(hostname: &str) -> String {
    mail_name().unwrap_or_else(|| hostname.to_owned())
}

/// The host's mail name, `/etc/mailname` (Debian's): the domain of local users' addresses.
/// The server holds local users to it too.
pub(crate) fn mail_name() -> Option<String> {
    std::fs::read_to_string("/etc/mailname")
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty() && !t.contains(char::is_whitespace))
}

/// The socket and the host name from the config; when it cannot be read (its directory is
/// the service's), the packaged socket and this host's name.
fn from_config(path: Option<&Path>) -> Result<(Option<PathBuf>, String), String> {
    let (text, name) = match path {
        None => (
            backstop_config::DEFAULT.to_owned(),
            "(embedded default)".to_owned(),
        ),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => (text, path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let host = gethostname::gethostname().to_string_lossy().into_owned();
                return Ok((Some(PathBuf::from(FALLBACK_SOCKET)), host));
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        },
    };
    let config = backstop_config::parse(&text, &name).map_err(|e| e.to_string())?;
    Ok((config.sendmail, config.hostname))
}

/// `backstop sendmail ARGS`: see the module's doc. `config` is the config file the command
/// line and environment name (`-C` wins over it); `None`, the embedded default.
pub fn run(args: &[String], config: Option<PathBuf>) -> ExitCode {
    let options = match Options::parse(args) {
        Ok(options) => options,
        Err(why) => {
            eprintln!("sendmail: {why}");
            return ExitCode::from(EX_USAGE);
        }
    };
    // -C names the config as --config does.
    let config = options.config.clone().or(config);
    let (socket, hostname) = match from_config(config.as_deref()) {
        Ok(found) => found,
        Err(why) => {
            eprintln!("sendmail: {why}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    let Some(socket) = socket else {
        eprintln!("sendmail: the config turns the sendmail socket off ([sendmail] enabled = false); nothing was sent");
        return ExitCode::from(EX_CONFIG);
    };
    let (user, gecos) = this_user();
    let domain = mail_domain(&hostname);
    let sender = match options.sender.as_deref() {
        Some(given) => match parse_sender(given) {
            Ok(sender) => sender,
            Err(why) => {
                eprintln!("sendmail: {why}");
                return ExitCode::from(EX_DATAERR);
            }
        },
        None => match Address::parse(&format!("{user}@{domain}")) {
            Ok(a) => ReversePath::Address(a),
            Err(e) => {
                eprintln!("sendmail: no sender: {user}@{domain}: {e}; give one with -f");
                return ExitCode::from(EX_DATAERR);
            }
        },
    };
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().lock().read_to_end(&mut input) {
        eprintln!("sendmail: reading the message: {e}");
        return ExitCode::from(EX_NOINPUT);
    }
    let message = read_message(&input, options.dot_ends);
    drop(input);
    let submitter = Submitter {
        sender,
        full_name: options.full_name.clone().or(gecos),
        domain,
    };
    let now = backstop_types::Clock::now(&backstop_types::clock::SystemClock);
    let unique = unique_id();
    let (message, extracted) = prepare(&message, options.extract, &submitter, now, &unique);
    let mut lists = options.recipients.clone();
    lists.extend(extracted);
    let recipients = match parse_recipients(&lists, &submitter.domain) {
        Ok(r) if r.is_empty() => {
            eprintln!(
                "sendmail: no recipients (name them, or use -t to take them from the message)"
            );
            return ExitCode::from(EX_DATAERR);
        }
        Ok(r) => r,
        Err(why) => {
            eprintln!("sendmail: {why}");
            return ExitCode::from(EX_DATAERR);
        }
    };
    let recipients: Vec<Recipient> = recipients
        .into_iter()
        .map(|address| Recipient {
            address,
            notify: options.notify.unwrap_or(Notify::Default),
            orcpt: None,
        })
        .collect();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sendmail: {e}");
            return ExitCode::from(EX_TEMPFAIL);
        }
    };
    runtime.block_on(submit(
        &socket,
        &submitter.sender,
        &recipients,
        &options,
        &message,
    ))
}

/// A Message-ID's left part: the time, the process and random bits.
fn unique_id() -> String {
    use ring::rand::SecureRandom;
    let mut random = [0u8; 6];
    let _ = ring::rand::SystemRandom::new().fill(&mut random);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}.{}.{random}", now.as_micros(), std::process::id())
}

async fn submit(
    socket: &Path,
    sender: &ReversePath,
    recipients: &[Recipient],
    options: &Options,
    message: &[u8],
) -> ExitCode {
    let hop = NextHop {
        endpoint: Endpoint::Unix(socket.to_owned()),
        host: "localhost".into(),
    };
    let settings = Settings {
        helo: "localhost".into(),
        lmtp: false,
        tls: TlsPolicy::Off,
        connect_timeout: Duration::from_secs(30),
        timeouts: Timeouts::RFC5321,
        auth: None,
    };
    let mut connection = match Connection::open(&hop, &settings).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "sendmail: backstop is not running or not reachable at {}: {e}; nothing was sent",
                socket.display()
            );
            return ExitCode::from(EX_TEMPFAIL);
        }
    };
    let eight_bit = message.iter().any(|b| !b.is_ascii());
    let smtputf8 = sender.address().is_some_and(|a| !a.to_string().is_ascii())
        || recipients.iter().any(|r| !r.address.to_string().is_ascii());
    let txn = Transaction {
        sender,
        recipients: recipients.iter().enumerate().collect(),
        ret: options.ret,
        envid: options.envid.as_deref(),
        body_type: if eight_bit {
            BodyType::EightBitMime
        } else {
            BodyType::SevenBit
        },
        smtputf8,
        size: message.len() as u64,
    };
    let result = connection
        .deliver(&txn, backstop_smtp_client::Outgoing::memory(&[message]))
        .await;
    connection.quit().await;
    let (mut sent, mut permanent, mut transient) = (0, 0, 0);
    for (index, outcome) in &result.outcomes {
        let to = &recipients[*index].address;
        match outcome {
            AttemptOutcome::Delivered(_) => sent += 1,
            AttemptOutcome::Permanent(attempt) => {
                permanent += 1;
                eprintln!("sendmail: <{to}>: refused: {}", attempt.reply);
            }
            AttemptOutcome::Transient(attempt) => {
                transient += 1;
                eprintln!("sendmail: <{to}>: not now: {}", attempt.reply);
            }
        }
    }
    if sent > 0 {
        if permanent + transient > 0 {
            eprintln!(
                "sendmail: sent to {sent} of {} recipients",
                recipients.len()
            );
        }
        ExitCode::SUCCESS
    } else if transient > 0 {
        ExitCode::from(EX_TEMPFAIL)
    } else {
        ExitCode::from(EX_UNAVAILABLE)
    }
}

#[cfg(test)]
mod tests;

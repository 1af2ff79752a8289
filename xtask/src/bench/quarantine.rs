//! `cargo xtask bench quarantine [--messages N]`: how fast a large quarantine answers, beside
//! Postfix's hold queue, in one run.
//!
//! N messages (100,000 by default) are sent with smtp-source to a backstop whose header rule
//! quarantines every one, and to a Postfix that puts every one on hold. Then, timed from
//! here: the console's first page (logged in; 20 requests), its worst search (a kind nothing
//! has: every record read), `backstop quarantine list` (its first page, a whole process each
//! time; 10 runs), and `postqueue -p`, Postfix's only listing (all of it, 3 runs).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::peers::{free_port, Backstop, Postfix};
use super::{source, Load};

const TOKEN: &str = "bench-console-token-0123456789";

pub fn run(binary: &Path, dir: &Path, args: &[String]) -> Result<(), String> {
    let mut messages = 100_000;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--messages" => {
                messages = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--messages takes a number")?
            }
            other => {
                return Err(format!(
                    "cargo xtask bench quarantine: unknown argument {other:?}"
                ))
            }
        }
    }
    let backstop_dir = dir.join("backstop");
    std::fs::create_dir_all(&backstop_dir).map_err(|e| e.to_string())?;
    let token = backstop_dir.join("admin.token");
    std::fs::write(&token, TOKEN).map_err(|e| e.to_string())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
    }
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port(Ipv4Addr::LOCALHOST)?));
    let settings = format!(
        "[smtp]\nlocal_domains = [\"bench.test\"]\nmax_connections = 2000\n\
         max_connections_per_ip = 2000\n\n[delivery]\npaused = true\n\n\
         [sender_checks]\nenabled = false\n\n[log]\nlevel = \"warn\"\n\n\
         [admin]\nhttp = \"{admin}\"\ntoken_file = \"{}\"\n\n\
         [quarantine]\ndigest = \"off\"\n\n\
         [[filter]]\ntype = \"header\"\nheader = \"From\"\npattern = \"source\\\\.test\"\naction = \"quarantine\"\n",
        token.display()
    );
    let backstop = Backstop::start(binary, &backstop_dir, &settings)?;
    let load = Load {
        sessions: 50,
        kib: 5,
        recipients: 1,
        messages,
    };
    let started = Instant::now();
    let rate = source(backstop.address, &load)?;
    println!(
        "backstop: {messages} messages quarantined in {:.0} s ({rate:.0} msg/s)",
        started.elapsed().as_secs_f64()
    );
    let held = backstop.metric("smtp_messages_quarantined_total")?;
    if held != messages {
        return Err(format!("backstop quarantined {held} of {messages}"));
    }

    let cookie = login(admin)?;
    let first = timed(20, || console(admin, &cookie, "/quarantine"))?;
    let worst = timed(5, || console(admin, &cookie, "/quarantine?kind=dmarc"))?;
    let config = backstop_dir.join("backstop.toml");
    let cli = timed(10, || {
        let out = Command::new(binary)
            .args(["quarantine", "list", "--config"])
            .arg(&config)
            .output()
            .map_err(|e| e.to_string())?;
        match out.status.success() && out.stdout.starts_with(b"ID ") {
            true => Ok(()),
            false => Err(format!(
                "quarantine list: {}",
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    })?;
    drop(backstop);

    let postfix = match Postfix::available() {
        Ok(()) => {
            let postfix = Postfix::start(&dir.join("postfix"), "", None)?;
            let started = Instant::now();
            let rate = source(postfix.address, &load)?;
            println!(
                "postfix:  {messages} messages held in {:.0} s ({rate:.0} msg/s)",
                started.elapsed().as_secs_f64()
            );
            let conf = dir.join("postfix/etc");
            let listing = timed(3, || {
                let out = Command::new("postqueue")
                    .args(["-c"])
                    .arg(&conf)
                    .arg("-p")
                    .output()
                    .map_err(|e| e.to_string())?;
                match out.status.success() {
                    true => Ok(()),
                    false => Err("postqueue -p failed".to_owned()),
                }
            })?;
            Some(listing)
        }
        Err(why) => {
            println!("xtask bench: no Postfix column: {why}");
            None
        }
    };
    println!();
    println!(
        "{:<52} {:>10} {:>10}",
        "with the quarantine holding", "median", "slowest"
    );
    let row = |what: &str, (median, slowest): (Duration, Duration)| {
        println!(
            "{what:<52} {:>8.1}ms {:>8.1}ms",
            median.as_secs_f64() * 1000.0,
            slowest.as_secs_f64() * 1000.0
        )
    };
    row("backstop console, first page (50)", first);
    row("backstop console, search by a kind none has (all)", worst);
    row("backstop quarantine list, first page (100; process)", cli);
    if let Some(listing) = postfix {
        row("postfix postqueue -p (everything; process)", listing);
    }
    Ok(())
}

/// Runs `work` `n` times: the median and the slowest.
fn timed(
    n: usize,
    mut work: impl FnMut() -> Result<(), String>,
) -> Result<(Duration, Duration), String> {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        work()?;
        took.push(started.elapsed());
    }
    took.sort();
    Ok((took[n / 2], took[n - 1]))
}

/// One HTTP exchange with the admin listener: the whole response.
fn exchange(admin: SocketAddr, request: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(admin).map_err(|e| e.to_string())?;
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    Ok(answer)
}

/// Logs in to the console: the session cookie.
fn login(admin: SocketAddr) -> Result<String, String> {
    let body = format!("token={TOKEN}");
    let answer = exchange(
        admin,
        &format!(
            "POST /login HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )?;
    answer
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .and_then(|c| c.split(';').next())
        .map(str::to_owned)
        .ok_or_else(|| format!("no session from the console: {answer}"))
}

/// A console page, which must come back whole (200, the table's end).
fn console(admin: SocketAddr, cookie: &str, path: &str) -> Result<(), String> {
    let answer = exchange(
        admin,
        &format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nCookie: {cookie}\r\n\r\n"),
    )?;
    match answer.starts_with("HTTP/1.1 200") && answer.contains("</table>") {
        true => Ok(()),
        false => Err(format!(
            "console {path}: {}",
            &answer[..answer.len().min(300)]
        )),
    }
}

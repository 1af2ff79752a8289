//! A headless Chromium driven through chromedriver: a small blocking W3C WebDriver client.
//!
//! The client is a hand-written HTTP/1.1 exchange over a `TcpStream` per command (a
//! Content-Length body, `Connection: close`, the answer read by its Content-Length) with JSON
//! from serde_json. chromedriver listens on loopback only (its default: `--allowed-ips` or
//! `--allowed-origins`, even empty, would make it listen on every interface). Every WebDriver
//! error panics with its code and message; `try_find` and `wait_for` look without failing.
//!
//! Chromium runs with `--no-sandbox` (the tests run as root, where its sandbox refuses to
//! start), `--disable-dev-shm-usage` (a container's /dev/shm can be small) and a profile of its
//! own in a temporary directory. Dropping the [`Browser`] ends the session, stops chromedriver,
//! kills any process still running with that profile, and removes it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{free_port, have};

/// The key under which WebDriver returns an element's reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The Chromium chromedriver starts (Debian's launcher, which execs the browser).
const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium with one WebDriver session.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    /// Holds `profile/` (Chromium's user data) and `chromedriver.log`.
    dir: tempfile::TempDir,
}

/// An element of the current page.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

/// A WebDriver error answer: its code (`no such element`, ...) and message.
struct WdError {
    error: String,
    message: String,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a session, or returns `None`
    /// (after a loud skip) where chromedriver or Chromium is missing outside CI.
    pub fn start(test: &str) -> Option<Browser> {
        if !have("chromedriver", test) || !have("chromium", test) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("backstop-browser-")
            .tempdir()
            .expect("temporary directory for the browser");
        let profile = dir.path().join("profile");
        std::fs::create_dir(&profile).expect("profile directory");
        let log = std::fs::File::create(dir.path().join("chromedriver.log")).expect("log file");
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("starting chromedriver");
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = request(port, "GET", "/status", None, Duration::from_secs(2))
                .ok()
                .and_then(|(_, v)| v["value"]["ready"].as_bool())
                == Some(true);
            if ready {
                break;
            }
            if let Ok(Some(status)) = browser.driver.try_wait() {
                panic!(
                    "{test}: chromedriver exited ({status}): {}",
                    browser.driver_log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{test}: chromedriver not ready after 20 s: {}",
                    browser.driver_log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    format!("--user-data-dir={}", profile.display()),
                    "--no-first-run",
                    "--disable-background-networking",
                ],
            },
        }}});
        let answer = request(
            port,
            "POST",
            "/session",
            Some(&capabilities),
            Duration::from_secs(60),
        );
        let value = match answer {
            Ok((_, v)) => v,
            Err(e) => panic!("{test}: POST /session: {e}: {}", browser.driver_log()),
        };
        if let Some(error) = error_of(&value) {
            panic!(
                "{test}: WebDriver new session: {}: {}\nchromedriver: {}",
                error.error,
                error.message,
                browser.driver_log()
            );
        }
        browser.session = value["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("{test}: no sessionId in {value}"))
            .to_owned();
        Some(browser)
    }

    /// Opens `url` and waits for its load.
    pub fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url }));
    }

    /// The first element that matches `css`; panics with the page's source if there is none.
    pub fn find(&self, css: &str) -> Element<'_> {
        self.try_find(css).unwrap_or_else(|| {
            panic!(
                "no element matches {css:?} on {}:\n{}",
                self.current_url(),
                self.source()
            )
        })
    }

    /// Every element that matches `css`, in document order.
    pub fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let found = self.post(
            "/elements",
            json!({ "using": "css selector", "value": css }),
        );
        found
            .as_array()
            .unwrap_or_else(|| panic!("find elements {css:?}: not an array: {found}"))
            .iter()
            .map(|e| self.element(e))
            .collect()
    }

    /// The first element that matches `css`, if any.
    pub fn try_find(&self, css: &str) -> Option<Element<'_>> {
        self.find_all(css).into_iter().next()
    }

    /// Polls for an element that matches `css`; panics with the page's source after `timeout`.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> Element<'_> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(element) = self.try_find(css) {
                return element;
            }
            if Instant::now() > deadline {
                panic!(
                    "no element matches {css:?} on {} after {timeout:?}:\n{}",
                    self.current_url(),
                    self.source()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The current page's source, as the DOM is now.
    pub fn source(&self) -> String {
        string(self.get("/source"))
    }

    pub fn current_url(&self) -> String {
        string(self.get("/url"))
    }

    pub fn title(&self) -> String {
        string(self.get("/title"))
    }

    /// The cookies visible to the current page: an array of WebDriver cookie objects (`name`,
    /// `value`, `path`, `domain`, `secure`, `httpOnly`, `sameSite`, `expiry`).
    pub fn cookies(&self) -> Value {
        self.get("/cookie")
    }

    fn element(&self, reference: &Value) -> Element<'_> {
        let id = reference[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("not an element reference: {reference}"));
        Element {
            browser: self,
            id: id.to_owned(),
        }
    }

    fn get(&self, path: &str) -> Value {
        self.command("GET", path, None)
    }

    fn post(&self, path: &str, body: Value) -> Value {
        self.command("POST", path, Some(&body))
    }

    /// A command of this session; returns the answer's `value`, and panics on an error.
    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let (_, mut answer) = request(self.port, method, &path, body, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        if let Some(error) = error_of(&answer) {
            panic!(
                "WebDriver {method} {path}: {}: {}",
                error.error, error.message
            );
        }
        answer["value"].take()
    }

    fn driver_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default()
    }
}

impl Element<'_> {
    pub fn click(&self) {
        self.browser.post(&self.path("/click"), json!({}));
    }

    /// Types `text` into the element (an input, a textarea), after what it already holds.
    pub fn send_keys(&self, text: &str) {
        self.browser
            .post(&self.path("/value"), json!({ "text": text }));
    }

    /// The element's rendered text.
    pub fn text(&self) -> String {
        string(self.browser.get(&self.path("/text")))
    }

    /// The element's HTML attribute `name`, if it has one: what the markup says, so an
    /// input's `value` attribute stays as it was when typed into (see [`Element::property`]).
    pub fn attribute(&self, name: &str) -> Option<String> {
        self.read("attribute", name)
    }

    /// The element's DOM property `name` (`value` for what an input holds now, `checked`), if
    /// it is not null or undefined; a number or a boolean as JSON text.
    pub fn property(&self, name: &str) -> Option<String> {
        self.read("property", name)
    }

    fn read(&self, what: &str, name: &str) -> Option<String> {
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{what} name {name:?}"
        );
        match self.browser.get(&self.path(&format!("/{what}/{name}"))) {
            Value::Null => None,
            Value::String(s) => Some(s),
            other => Some(other.to_string()),
        }
    }

    fn path(&self, tail: &str) -> String {
        format!("/element/{}{tail}", self.id)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = request(self.port, "DELETE", &path, None, Duration::from_secs(10));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // chromedriver closes Chromium when the session ends; whatever survived a failed
        // delete (or a chromedriver that was already gone) has the profile on its command line.
        let profile = self.dir.path().join("profile");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = processes_with(&profile);
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in left {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The TempDir removes the directory after this.
    }
}

/// The processes whose command line mentions `path`.
fn processes_with(path: &Path) -> Vec<u32> {
    let needle = path.as_os_str().as_encoded_bytes();
    let own = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != own)
        .filter(|pid| {
            let cmdline = std::fs::read(PathBuf::from(format!("/proc/{pid}/cmdline")));
            cmdline.is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// The error of a WebDriver answer, if it is one.
fn error_of(answer: &Value) -> Option<WdError> {
    let error = answer["value"]["error"].as_str()?;
    Some(WdError {
        error: error.to_owned(),
        message: answer["value"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    })
}

fn string(value: Value) -> String {
    match value {
        Value::String(s) => s,
        other => panic!("WebDriver: expected a string, got {other}"),
    }
}

/// One HTTP/1.1 exchange with chromedriver on 127.0.0.1:`port`: the status code and the body
/// as JSON (`null` for an empty body).
fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, Value), String> {
    let mut stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)
        .map_err(|e| format!("connecting to chromedriver: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let content_type = match body.is_empty() {
        true => "",
        false => "Content-Type: application/json; charset=utf-8\r\n",
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(|e| format!("writing to chromedriver: {e}"))?;
    // chromedriver answers `Connection: close` but keeps the socket open: the body ends by
    // its Content-Length, not by EOF (read only where it has neither that nor chunks).
    let mut answer = Vec::new();
    let end = loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if read_some(&mut stream, &mut answer)? == 0 {
            return Err(format!(
                "no end of header in {:?}",
                String::from_utf8_lossy(&answer)
            ));
        }
    };
    let head = String::from_utf8_lossy(&answer[..end]).into_owned();
    let mut body = answer[end + 4..].to_vec();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    if header("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = loop {
            if let Some(content) = dechunk(&body)? {
                break content;
            }
            if read_some(&mut stream, &mut body)? == 0 {
                return Err("chunked body cut short".to_owned());
            }
        };
    } else if let Some(length) = header("Content-Length") {
        let length: usize = length
            .parse()
            .map_err(|_| format!("Content-Length {length:?}"))?;
        while body.len() < length {
            if read_some(&mut stream, &mut body)? == 0 {
                return Err(format!("short body: {} of {length} octets", body.len()));
            }
        }
        body.truncate(length);
    } else {
        stream
            .read_to_end(&mut body)
            .map_err(|e| format!("reading from chromedriver: {e}"))?;
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((status, Value::Null));
    }
    let value = serde_json::from_slice(&body).map_err(|e| {
        format!(
            "HTTP {status}, not JSON ({e}): {}",
            String::from_utf8_lossy(&body)
        )
    })?;
    Ok((status, value))
}

/// Appends what the stream has next to `buffer`; 0 at its end.
fn read_some(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<usize, String> {
    let mut chunk = [0; 16384];
    let n = stream
        .read(&mut chunk)
        .map_err(|e| format!("reading from chromedriver: {e}"))?;
    buffer.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// A chunked body's content, or `None` while it is incomplete.
fn dechunk(mut chunked: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(line) = chunked.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size = String::from_utf8_lossy(&chunked[..line]);
        let size = size.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| format!("chunk size {size:?}"))?;
        chunked = &chunked[line + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if chunked.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&chunked[..size]);
        chunked = &chunked[size + 2..];
    }
}

//! The monitoring shipped in etc/: the Prometheus alert rules pass `promtool check rules`, and
//! a real Prometheus scraping a running backstop loads them (every rule healthy) and answers
//! every query of the Grafana dashboard; every metric they name is one backstop serves.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{config, free_port, have, Server};
use crate::scanners::Peer;

fn etc(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../etc")
        .join(file)
}

/// GET `path` from 127.0.0.1:`port`: the body.
fn get(port: u16, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// A PromQL query as a URL's query string value.
fn encoded(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Prometheus' answer to `query`.
fn query(port: u16, query: &str) -> serde_json::Value {
    let body = get(port, &format!("/api/v1/query?query={}", encoded(query)));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The metric names (backstop's prefixes) an expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        let start = at;
        while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
            at += 1;
        }
        let word = &expr[start..at];
        if ["smtp_", "queue_", "delivery_", "dsn_", "quarantine_"]
            .iter()
            .any(|p| word.starts_with(p))
        {
            names.push(word.to_owned());
        }
        at = at.max(start + 1);
    }
    names
}

#[test]
fn alert_rules_and_the_dashboard_work_in_a_real_prometheus() {
    let test = "alert_rules_and_the_dashboard_work_in_a_real_prometheus";
    if !have("promtool", test) || !have("prometheus", test) {
        return;
    }
    let rules = etc("prometheus/backstop-alerts.yml");
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("SUCCESS: 8 rules found"), "{said}");

    // backstop with its metrics endpoint, and something to count.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let metrics_port = free_port();
    let server = Server::start(
        d,
        &(config(d, "") + &format!("\n[metrics]\naddress = \"127.0.0.1:{metrics_port}\"\n")),
    );
    let mut c = server.ready_for_rcpt();
    assert!(c
        .command("RCPT TO:<someone@elsewhere.example>")
        .starts_with("554"));
    assert!(c.command("RCPT TO:<user@example.test>").starts_with("250"));
    assert!(c.command("DATA").starts_with("354"));
    c.send(b"Subject: counted\r\n\r\nhello\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    drop(c);
    let served = get(metrics_port, "/metrics");

    // Every metric the rules and the dashboard name is one backstop serves.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(etc("grafana/backstop.json")).unwrap())
            .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let rule_text = std::fs::read_to_string(&rules).unwrap();
    for name in exprs
        .iter()
        .flat_map(|e| metric_names(e))
        .chain(metric_names(&rule_text))
    {
        assert!(
            served.contains(&format!("\n{name}")) || served.starts_with(&name),
            "{name} is not among backstop's metrics:\n{served}"
        );
    }

    // A real Prometheus: scrapes backstop as job "backstop" and evaluates the rules.
    let web = free_port();
    let config_file = d.join("prometheus.yml");
    std::fs::write(
        &config_file,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: backstop\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let log = d.join("prometheus.log");
    let _prometheus = Peer::spawn(
        "prometheus",
        Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", d.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{web}")),
        &log,
    )
    .wait(&log, || {
        std::net::TcpStream::connect(("127.0.0.1", web)).is_ok()
            && get(web, "/-/ready").contains("Ready")
    });
    // Scraped (up is 1) and every rule evaluated without error.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = query(web, "up{job=\"backstop\"}");
        let scraped = up["data"]["result"][0]["value"][1] == "1";
        let rules: serde_json::Value = serde_json::from_str(&get(web, "/api/v1/rules")).unwrap();
        let all: Vec<&serde_json::Value> = rules["data"]["groups"]
            .as_array()
            .map(|g| {
                g.iter()
                    .flat_map(|g| g["rules"].as_array().unwrap().iter())
                    .collect()
            })
            .unwrap_or_default();
        let healthy = all.len() == 8 && all.iter().all(|r| r["health"] == "ok");
        if scraped && healthy {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "up: {up}\nrules: {rules}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Every panel's query is one Prometheus takes; the plain gauges have data already.
    for expr in &exprs {
        let answer = query(web, expr);
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
    }
    let accepted = query(web, "smtp_messages_accepted_total{job=\"backstop\"}");
    assert_eq!(accepted["data"]["result"][0]["value"][1], "1", "{accepted}");
    let refused = query(
        web,
        "smtp_rejections_total{job=\"backstop\",check=\"relay\",stage=\"rcpt\"}",
    );
    assert_eq!(refused["data"]["result"][0]["value"][1], "1", "{refused}");
    server.stop();
}

//! The monitoring shipped in etc/: the Prometheus alert rules pass `promtool check rules`, and
//! a real Prometheus scraping a running backstop loads them (every rule healthy) and answers
//! every query of the Grafana dashboard with data; every metric they name is one backstop
//! serves. The dashboard itself fits Grafana's own schema of a dashboard (the types Grafana
//! publishes as `@grafana/schema`, checked by the TypeScript compiler), which refuses broken
//! copies of it.

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
    // Every panel's query is one Prometheus takes (one that does not parse is an error), and
    // it answers with data: every metric the queries name is served (above), so an empty answer
    // is a selector that matches nothing, such as a wrong label. rate() and increase() need two
    // scrapes, hence the wait.
    let deadline = Instant::now() + Duration::from_secs(60);
    for expr in &exprs {
        loop {
            let answer = query(web, expr);
            assert_eq!(answer["status"], "success", "{expr}: {answer}");
            if answer["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
            {
                break;
            }
            assert!(Instant::now() < deadline, "{expr}: no data: {answer}");
            std::thread::sleep(Duration::from_millis(500));
        }
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

/// `json`, a dashboard, as TypeScript typed with Grafana's `Dashboard` (its queries with
/// Grafana's `DataQuery`, as the dashboard's type leaves them open). Line N is the JSON's
/// line N, for the compiler's messages.
fn typed(json: &str) -> String {
    format!(
        "import type {{ Dashboard, DataQuery }} from '@grafana/schema'; export const dashboard = ({json}\n) satisfies Dashboard;\n\
         export const queries = dashboard.panels.flatMap((p): DataQuery[] => ('targets' in p ? p.targets : []));\n"
    )
}

/// Mistakes in a dashboard, each of which the schema must refuse.
const BROKEN: [&str; 6] = [
    "grid_position_a_string",
    "refresh_a_number",
    "panel_type_a_number",
    "panel_key_misspelt",
    "query_ref_id_a_number",
    "variable_hide_out_of_range",
];

/// `dashboard` with the mistake `name` (one of BROKEN).
fn broken(dashboard: &serde_json::Value, name: &str) -> serde_json::Value {
    let mut d = dashboard.clone();
    match name {
        "grid_position_a_string" => d["panels"][0]["gridPos"] = serde_json::json!("x"),
        "refresh_a_number" => d["refresh"] = serde_json::json!(30),
        "panel_type_a_number" => d["panels"][0]["type"] = serde_json::json!(7),
        "panel_key_misspelt" => d["panels"][0]["titel"] = serde_json::json!("typo"),
        "query_ref_id_a_number" => d["panels"][0]["targets"][0]["refId"] = serde_json::json!(1),
        "variable_hide_out_of_range" => d["templating"]["list"][0]["hide"] = serde_json::json!(9),
        _ => unreachable!("{name}"),
    }
    d
}

/// Grafana's own schema of a dashboard, as the TypeScript types that Grafana generates from it
/// and publishes (`@grafana/schema`, the dashboard model of its frontend), with the TypeScript
/// compiler in strict mode: every key known, every value of its type, enums in range, every
/// query with a refId; and every panel of a type Grafana ships. Grafana's server is in none of
/// the registries the project installs from, so it does not load the dashboard here; Grafana's
/// Python SDK (`grafana-foundation-sdk`) decodes without checking, so it cannot tell either.
#[test]
fn the_dashboard_fits_grafanas_own_schema() {
    let test = "the_dashboard_fits_grafanas_own_schema";
    if !have("node", test) || !have("npm", test) {
        return;
    }
    // Where `cargo xtask test` installs typescript and @grafana/schema (npm install --global).
    let out = Command::new("npm")
        .args(["root", "--global"])
        .output()
        .unwrap();
    let modules = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let tsc = modules.join("typescript/bin/tsc");
    let schema = modules.join("@grafana/schema");
    if !have(&tsc.display().to_string(), test)
        || !have(&schema.join("package.json").display().to_string(), test)
    {
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // '@grafana/schema' resolves from here to the global install.
    std::os::unix::fs::symlink(&modules, d.join("node_modules")).unwrap();
    let text = std::fs::read_to_string(etc("grafana/backstop.json")).unwrap();
    std::fs::write(d.join("dashboard.ts"), typed(&text)).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut files = vec!["dashboard.ts".to_owned()];
    for name in BROKEN {
        let file = format!("{name}.ts");
        let json = serde_json::to_string_pretty(&broken(&dashboard, name)).unwrap();
        std::fs::write(d.join(&file), typed(&json)).unwrap();
        files.push(file);
    }
    let out = Command::new("node")
        .arg(&tsc)
        .args([
            "--noEmit",
            "--strict",
            "--target",
            "es2022",
            "--module",
            "esnext",
            "--moduleResolution",
            "bundler",
        ])
        .args(&files)
        .current_dir(d)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let refused = |file: &str| said.lines().any(|l| l.starts_with(&format!("{file}(")));
    assert!(
        !refused("dashboard.ts"),
        "etc/grafana/backstop.json does not fit Grafana's schema (dashboard.ts's lines are the file's):\n{said}"
    );
    for name in BROKEN {
        assert!(
            refused(&format!("{name}.ts")),
            "the schema took a dashboard with {name}:\n{said}"
        );
    }

    // Every panel is of a type Grafana ships a schema for (the panel plugins in its release).
    let shipped: Vec<String> = std::fs::read_dir(schema.join("dist/types/raw/composable"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("panelcfg").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(shipped.iter().any(|t| t == "timeseries"), "{shipped:?}");
    for panel in dashboard["panels"].as_array().unwrap() {
        let kind = panel["type"].as_str().unwrap();
        assert!(
            kind == "row" || shipped.iter().any(|t| t == kind),
            "panel {}: Grafana has no panel type {kind} (it has {shipped:?})",
            panel["title"]
        );
    }
}

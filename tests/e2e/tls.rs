//! Debian's testssl.sh, the scanner of the security review, against the submission listener's
//! STARTTLS with the certificate backstop generates: no HIGH or CRITICAL finding except the
//! chain of trust and revocation, which no self-signed certificate can pass.
//!
//! Only the checks that bear on the listener run: protocols (`-p`), cipher categories (`-s`),
//! forward secrecy (`-f`), the server's preferences (`-P`), the certificate (`-S`) and the
//! vulnerabilities (`-U`); not each cipher one by one, client simulations or HTTP headers.
//! Measured on loopback with testssl 3.0.8 on 2 cores shared with builds: 50 to 65 s for
//! testssl, 1 to 2 s more for the test. Each run of testssl costs about 7 s of setup, so the
//! checks go in one run.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{config, have, Server};

/// The findings a self-signed certificate gets whatever else is right: no CA vouches for it
/// (CRITICAL, "failed (self signed)"), and so there is none to publish a CRL or answer OCSP
/// for it (HIGH, "Neither CRL nor OCSP URI provided").
const EXPECTED_FOR_SELF_SIGNED: &[&str] = &["cert_chain_of_trust", "cert_revocation"];

/// The hostname of `harness::config`, which the certificate is generated for.
const HOSTNAME: &str = "mx.backstop.test";

#[test]
fn testssl_finds_nothing_high_on_submission_starttls() {
    let test = "testssl_finds_nothing_high_on_submission_starttls";
    if !have("testssl", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), ""));
    let json = dir.path().join("testssl.json");
    let started = Instant::now();
    // By name, so that testssl sends it as SNI and checks it against the certificate; `--ip`
    // and `--nodns none` keep it from looking the test name up.
    let mut child = Command::new("testssl")
        .args(["--quiet", "--color", "0", "--warnings", "off"])
        .args(["--nodns", "none", "--ip", "127.0.0.1"])
        .args(["-t", "smtp", "-p", "-s", "-f", "-P", "-S", "-U"])
        .arg("--jsonfile")
        .arg(&json)
        .arg(format!("{HOSTNAME}:{}", server.submission.port()))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a hung run can be stopped with the openssl
        // processes it started.
        .process_group(0)
        .spawn()
        .expect("starting testssl");
    let deadline = started + Duration::from_secs(600);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = child.wait();
            panic!("testssl ran for over 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let elapsed = started.elapsed();
    let output = child.wait_with_output().unwrap();
    server.stop();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("testssl: {status} after {elapsed:.1?}");
    // Below 242 its status counts findings; from 242 on it says testssl itself failed (could
    // not connect, bad arguments, ...).
    assert!(
        status.code().is_some_and(|code| code < 242),
        "testssl failed: {status}\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "{}: {e}\n{stdout}\n{}",
            json.display(),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let findings: Vec<Finding> = serde_json::from_str(&text).unwrap();

    let bad: Vec<&Finding> = findings
        .iter()
        .filter(|f| matches!(f.severity.as_str(), "HIGH" | "CRITICAL"))
        .filter(|f| !EXPECTED_FOR_SELF_SIGNED.contains(&f.id.as_str()))
        .collect();
    assert!(bad.is_empty(), "{bad:#?}\n{stdout}");

    // The two findings of the review, fixed; and the certificate names the host.
    let find = |id: &str| {
        findings
            .iter()
            .find(|f| f.id == id)
            .unwrap_or_else(|| panic!("no {id} in testssl's findings:\n{stdout}"))
    };
    assert_eq!(find("cipher_order").severity, "OK", "{stdout}");
    assert_eq!(find("cert_validityPeriod").severity, "INFO", "{stdout}");
    assert_eq!(find("cert_expirationStatus").severity, "OK", "{stdout}");
    assert_eq!(find("cert_commonName").finding, HOSTNAME, "{stdout}");
    assert_eq!(find("cert_trust").severity, "OK", "{stdout}");
}

/// One finding of testssl's flat JSON output.
#[derive(Debug, serde::Deserialize)]
struct Finding {
    id: String,
    severity: String,
    finding: String,
}

//! A relay route with SMTP AUTH: one backstop hands its mail to another backstop's submission
//! port as a smarthost, logging in under STARTTLS. A wrong password defers the mail (4.7.0)
//! until the administrator fixes it.

use std::time::{Duration, Instant};

use backstop_types::TrustClass;

use crate::harness::{config, have, queue_id_in, queued, Server};

#[test]
fn a_relay_route_logs_in_to_a_smarthost() {
    if !have("swaks", "a_relay_route_logs_in_to_a_smarthost") {
        return;
    }
    let smarthost_dir = tempfile::tempdir().unwrap();
    let s = smarthost_dir.path();
    // The smarthost keeps what it receives (delivery paused) and lets alice send as anyone:
    // the return path arrives BATV-tagged.
    let smarthost = Server::start(s, &(config(s, "") + "\n[auth]\nrestrict_sender = false\n"));

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let password = d.join("smarthost.password");
    std::fs::write(&password, "wrong\n").unwrap();
    let route = format!(
        "\n[[route]]\ndomains = [\"example.net\"]\nrelay = \"{}\"\nhost = \"mx.backstop.test\"\n\
         auth_user = \"alice\"\nauth_password_file = \"{}\"\n",
        smarthost.submission,
        password.display()
    );
    let client_config =
        config(d, "").replace("[delivery]\npaused = true", "[delivery]\npaused = false") + &route;
    let server = Server::start(d, &client_config);
    let transcript = server.submit_as_alice("alice@example.test", "bob@example.net", &[]);
    let shown = server.after_first_attempt(queue_id_in(&transcript));
    assert!(shown.contains("451 4.7.0"), "{shown}");
    assert!(shown.contains("refused our login as alice: 535"), "{shown}");
    assert!(queued(s).is_empty());

    // The right password, a restart and a flush: the smarthost has it, from alice.
    server.stop();
    std::fs::write(&password, "secret\n").unwrap();
    let server = Server::restart(d);
    let (ok, out) = server.cli(&["queue", "flush"]);
    assert!(ok, "{out}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let received = loop {
        let received = queued(s);
        if !received.is_empty() {
            break received;
        }
        assert!(Instant::now() < deadline, "not relayed:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let (_, envelope, _) = &received[0];
    assert_eq!(
        envelope.trust,
        TrustClass::Authenticated {
            user: "alice".into()
        }
    );
    assert!(envelope.client.tls.is_some(), "logged in without TLS");
    let sender = envelope.sender.to_string();
    assert!(
        sender.starts_with("<prvs=") && sender.ends_with("=alice@example.test>"),
        "{sender}"
    );
    server.stop();
    smarthost.stop();
}

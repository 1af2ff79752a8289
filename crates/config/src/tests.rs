use std::path::{Path, PathBuf};
use std::time::Duration;

use expect_test::{expect, Expect};

use super::*;

/// Every problem `text` has, one per line.
fn errors(text: &str) -> String {
    parse(text, "test.toml").unwrap_err().to_string()
}

fn check(text: &str, expected: Expect) {
    expected.assert_eq(&errors(text));
}

const MINIMAL: &str = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\nkind = \"mx\"\n";

#[test]
fn the_embedded_default_parses() {
    let config = embedded().unwrap();
    assert!(DEFAULT.contains("password_hash = \"$argon2id$"));
    assert_eq!(config.listeners.len(), 2);
    assert_eq!(
        config.listeners[0].address,
        "127.0.0.1:2525".parse().unwrap()
    );
    assert_eq!(
        config.listeners[1].address,
        "127.0.0.1:5870".parse().unwrap()
    );
    assert_eq!(config.data_dir, PathBuf::from("var"));
}

#[test]
fn every_config_in_etc_parses() {
    let etc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../etc");
    let mut checked = 0;
    for entry in std::fs::read_dir(&etc).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = parse(&text, &path.display().to_string()) {
                panic!("{e}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 4, "{checked}");
}

#[test]
fn minimal_config_gets_the_defaults() {
    let c = parse(MINIMAL, "test.toml").unwrap();
    assert_eq!(c.smtp.max_recipients, 100);
    assert_eq!(c.smtp.max_message_size, 50 * 1024 * 1024);
    assert_eq!(c.smtp.command_timeout, Duration::from_secs(300));
    assert!(matches!(c.tls, Tls::SelfSigned));
    assert_eq!(c.log.level, "info");
    assert_eq!(c.callahead.ttl.positive, Duration::from_secs(3600));
    assert_eq!(c.delivery.maildir, PathBuf::from("var/maildir"));
}

#[test]
fn errors_name_file_line_and_key_in_plain_words() {
    check(
        &format!("[smtp]\nmax_recipients = \"many\"\n{MINIMAL}"),
        expect![[
            r#"test.toml:2: smtp.max_recipients: expected a whole number, 0 or more, not the text "many""#
        ]],
    );
    check(
        &format!("[smtp]\nmax_recipient = 5\n{MINIMAL}"),
        expect!["test.toml:2: smtp.max_recipient: unknown key max_recipient; the keys here are local_domains, relay_domains, local_networks, max_message_size, max_message_memory, spool_threshold, max_recipients, max_line_length, max_errors, command_timeout, data_timeout, min_data_rate, max_hops, stress_timeout, greeting_delay, shutdown_grace, max_connections, max_connections_per_ip"],
    );
    check(
        &format!("[smtp]\nlocal_domains = \"example.com\"\n{MINIMAL}"),
        expect![[
            r#"test.toml:2: smtp.local_domains: expected a list, like ["a", "b"], not the text "example.com""#
        ]],
    );
    check(
        &format!("[smtp]\nlocal_domains = [\"ok.test\", \"bad domain\"]\n{MINIMAL}"),
        expect![[
            r#"test.toml:2: smtp.local_domains: "bad domain": the domain contains the character ' '"#
        ]],
    );
    check(
        &format!("[smtp]\nlocal_networks = [\"10.0.0.0/99\"]\n{MINIMAL}"),
        expect![[
            r#"test.toml:2: smtp.local_networks: "10.0.0.0/99" is not a network like 192.0.2.0/24 or 2001:db8::/32"#
        ]],
    );
    check(
        &format!("[smtp]\nmax_message_size = \"10Q\"\n{MINIMAL}"),
        expect![[r#"test.toml:2: smtp.max_message_size: "10Q": unknown unit (use k, M or G)"#]],
    );
    check(
        &format!("[smtp]\nmax_message_size = \"50M\"\nmax_message_memory = \"40M\"\n{MINIMAL}"),
        expect![[
            r#"test.toml:3: smtp.max_message_memory: must be at least smtp.max_message_size and 1 MiB more (53477376 octets), or a message of the largest size could never be taken"#
        ]],
    );
    check(
        &format!("[smtp]\ndata_timeout = \"soon\"\n{MINIMAL}"),
        expect![[
            r#"test.toml:2: smtp.data_timeout: "soon" is not a duration like 30, "30s", "5m", "1h" or "2d""#
        ]],
    );
    check(
        "[[listener]]\nname = \"mx\"\naddress = \"localhost\"\nkind = \"mx\"\n",
        expect![[
            r#"test.toml:3: listener.address: "localhost" is not an address like 127.0.0.1:25 or [::1]:25"#
        ]],
    );
    check(
        "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\nkind = \"pop3\"\n",
        expect![[
            r#"test.toml:4: listener.kind: "pop3" is not one of mx, submission, submissions"#
        ]],
    );
    check(
        "hostname = \"x.test\"\n",
        expect!["test.toml: listener: at least one [[listener]] is needed"],
    );
    check(
        &format!("[tls]\ncert = \"/c.pem\"\n{MINIMAL}"),
        expect!["test.toml:2: tls.cert: cert needs a key too"],
    );
    check(
        &format!("{MINIMAL}[[auth.user]]\nname = \"a\"\npassword_hash = \"plain\"\n"),
        expect!["test.toml:7: auth.user.password_hash: the password of a is not an argon2 ($argon2id$...), SHA-512-crypt ($6$...) or bcrypt ($2y$...) hash; plain-text passwords are not accepted (make a hash with `backstop hash-password`, or `doveadm pw -s SHA512-CRYPT`)"],
    );
    check(
        "[[listener]]\nname = \"s\"\naddress = \"127.0.0.1:587\"\nkind = \"submission\"\n",
        expect!["test.toml:1: listener: a submission listener needs users: set auth.users_file, add [[auth.user]], or check logins with auth.dovecot or [auth.ldap]"],
    );
    check(
        "[[listener]\n",
        expect!["test.toml:1: listener: unclosed array table, expected `]`"],
    );
    check(
        &format!("{MINIMAL}[smpt]\nmax_recipients = 5\n"),
        expect!["test.toml:5: smpt: unknown key or section smpt; the known ones are: hostname, data_dir, smtp, tls, auth, listener, queue, quarantine, recipients, ldap, greylist, rate_limits, delivery, content, filter, route, dns, batv, dkim, sender_checks, dnsbl, bounce_provenance, state, admin, sendmail, metrics, log"],
    );
}

/// Found by the config fuzz target: a syntax error at the very start of the file (its span is
/// `0..0`, which otherwise stands for a value the file does not have) was shown without a line.
/// A line too broken to name a key names none (it showed `: ` or the line's junk, a NUL too).
/// Logins checked by Dovecot or a directory are users enough for a submission listener.
#[test]
fn a_submission_listener_may_leave_its_users_to_dovecot_or_ldap() {
    let listener =
        "[[listener]]\nname = \"s\"\naddress = \"127.0.0.1:587\"\nkind = \"submission\"\n";
    let dovecot = format!("[auth]\ndovecot = \"unix:/run/dovecot/auth-backstop\"\n{listener}");
    assert!(parse(&dovecot, "test.toml").is_ok());
    let ldap = format!(
        "[auth.ldap]\nurl = \"ldap://127.0.0.1\"\nbase = \"dc=example\"\nfilter = \"(uid=%s)\"\n{listener}"
    );
    if let Err(e) = parse(&ldap, "test.toml") {
        panic!("{e}");
    }
}

#[test]
fn a_syntax_error_at_the_start_is_at_line_1() {
    check(
        "= 1\n",
        expect!["test.toml:1: unquoted keys cannot be empty, expected letters, numbers, `-`, `_`"],
    );
    check(
        "{}\0=\"\n[[x",
        expect![[r#"
            test.toml:1: invalid key-value pair, expected key
            test.toml:2: x: unclosed array table, expected `]]`"#]],
    );
}

/// Found by the config fuzz target: a check between two values where one is the default was
/// reported at the default's place, so without a line: keys without key 0 and no sign_with, a
/// min_backoff above the default max_backoff, a delay longer than the default retry_window.
#[test]
fn a_problem_with_a_default_is_at_the_value_written() {
    check(
        &format!("{MINIMAL}[[batv.key]]\nnumber = 1\nsecret_file = \"/k\"\n"),
        expect!["test.toml:6: batv.key.number: the signing key 0 (sign_with) is not among the [[batv.key]] numbers"],
    );
    check(
        &format!("{MINIMAL}[queue]\nmin_backoff = \"2h\"\n"),
        expect!["test.toml:6: queue.min_backoff: max_backoff (3600s) must be at least min_backoff (7200s)"],
    );
    check(
        &format!("{MINIMAL}[greylist]\nenabled = true\ndelay = \"3d\"\n"),
        expect!["test.toml:7: greylist.delay: retry_window (172800s) must be longer than delay (259200s)"],
    );
}

/// Found by the config fuzz target: a dotted key nested past the TOML parser's limit is an
/// error the parser gives no place for; it is found at its line.
#[test]
fn a_key_nested_too_deep_is_at_its_line() {
    let deep = vec!["a"; 100].join(".");
    check(
        &format!("{MINIMAL}[smtp]\n{deep} = 1\nmax_errors = 3\n"),
        expect!["test.toml:6: smtp.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a: recursion limit"],
    );
}

/// One run reports every problem, in the order of the file: in one section, across sections,
/// and in each element of an array of tables; a required key taken out for its bad value is
/// not reported missing as well.
#[test]
fn every_problem_in_one_run() {
    let text = "\
hostname = \"mx.example.com\"

[smtp]
max_recipients = \"many\"
max_errors = -1
local_domains = [\"ok.test\", \"bad domain\"]
max_line_length = 100

[[listener]]
name = \"mx\"
address = \"localhost\"
kind = \"mx\"

[[listener]]
name = \"mx2\"
address = \"127.0.0.1:26\"
kind = \"pop3\"

[queue]
min_backoff = \"1w\"
max_bakcoff = \"1h\"

[log]
level = \"verbose\"

[[filter]]
type = \"clamd\"
pattern = \"x\"
address = \"unix:/run/clamav/clamd.ctl\"
";
    check(
        text,
        expect![[r#"
            test.toml:4: smtp.max_recipients: expected a whole number, 0 or more, not the text "many"
            test.toml:5: smtp.max_errors: the number -1 is out of range: expected a whole number from 0 to 4294967295
            test.toml:6: smtp.local_domains: "bad domain": the domain contains the character ' '
            test.toml:7: smtp.max_line_length: must be at least 512 (RFC 5321 4.5.3.1)
            test.toml:11: listener.address: "localhost" is not an address like 127.0.0.1:25 or [::1]:25
            test.toml:17: listener.kind: "pop3" is not one of mx, submission, submissions
            test.toml:20: queue.min_backoff: "1w": unknown unit (use s, m, h or d)
            test.toml:21: queue.max_bakcoff: unknown key max_bakcoff; the keys here are min_backoff, max_backoff, lifetime, delay_warnings, quarantine_retention
            test.toml:24: log.level: "verbose" is not a level (trace, debug, info, warn, error, off); per target: "backstop_delivery=debug,info"
            test.toml:28: filter.pattern: pattern does not apply to a clamd filter"#]],
    );
    // What could be read is kept: the config is there, with a default for each bad value.
    let (config, errors) = parse_all(text, "test.toml");
    let config = config.unwrap();
    assert_eq!(errors.len(), 10);
    assert_eq!(config.smtp.max_recipients, 100);
    assert_eq!(config.smtp.local_domains.len(), 1);
    assert_eq!(config.listeners.len(), 0);
}

#[test]
fn an_unqualified_host_name_is_a_warning() {
    let c = parse(&format!("hostname = \"vm\"\n{MINIMAL}"), "test.toml").unwrap();
    let warnings: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    expect![[r#"
        [
            "test.toml:1: hostname: the host name \"vm\" is not fully qualified: the greeting, Received: fields and reports will say \"vm\"; set hostname = \"mx.example.com\" (the name of this host in DNS)",
        ]
    "#]]
    .assert_debug_eq(&warnings);
    let c = parse(
        &format!("hostname = \"mx.example.com\"\n{MINIMAL}"),
        "test.toml",
    )
    .unwrap();
    assert!(c.warnings.is_empty());
}

#[test]
fn the_sendmail_socket_is_in_data_dir_unless_absolute_or_off() {
    let c = parse(MINIMAL, "test.toml").unwrap();
    assert_eq!(c.sendmail.as_deref(), Some(Path::new("var/sendmail.sock")));
    let c = parse(
        &format!("{MINIMAL}[sendmail]\nsocket = \"/run/backstop/sendmail.sock\"\n"),
        "test.toml",
    )
    .unwrap();
    assert_eq!(
        c.sendmail.as_deref(),
        Some(Path::new("/run/backstop/sendmail.sock"))
    );
    let c = parse(
        &format!("{MINIMAL}[sendmail]\nenabled = false\n"),
        "test.toml",
    )
    .unwrap();
    assert_eq!(c.sendmail, None);
    check(
        &format!("{MINIMAL}[sendmail]\nenable = false\n"),
        expect!["test.toml:6: sendmail.enable: unknown key enable; the keys here are enabled, socket, trusted_users"],
    );
}

#[test]
fn the_admin_api_is_a_socket_or_loopback_http_with_a_token() {
    let c = parse(MINIMAL, "test.toml").unwrap();
    assert!(matches!(&c.admin, AdminEndpoint::Unix(p) if p == Path::new("var/admin.sock")));
    check(
        &format!("{MINIMAL}[admin]\nhttp = \"127.0.0.1:8025\"\n"),
        expect!["test.toml:6: admin.http: http needs a token_file (the bearer token)"],
    );
    let with = |addr: &str| {
        format!("{MINIMAL}[admin]\nhttp = \"{addr}\"\ntoken_file = \"/etc/backstop/admin.token\"\n")
    };
    check(
        &with("192.0.2.1:8025"),
        expect!["test.toml:6: admin.http: 192.0.2.1:8025: the admin API listens on loopback only"],
    );
    let c = parse(&with("[::1]:8025"), "test.toml").unwrap();
    let AdminEndpoint::Http { token_file, .. } = &c.admin else {
        panic!("{:?}", c.admin);
    };
    assert_eq!(token_file.value, PathBuf::from("/etc/backstop/admin.token"));
    assert_eq!(token_file.at.to_string(), "test.toml:7: admin.token_file");
}

#[test]
fn routes_are_relay_or_mx_and_say_what_is_wrong() {
    let route = |body: &str| format!("{MINIMAL}[[route]]\ndomains = [\"*\"]\n{body}");
    let c = parse(&route("mx = true\n"), "test.toml").unwrap();
    assert!(c.routes[0].relay.is_none() && c.routes[0].any_domain);
    let c = parse(
        &route("relay = \"unix:/run/dovecot/lmtp\"\nprotocol = \"lmtp\"\n"),
        "test.toml",
    )
    .unwrap();
    let hop = c.routes[0].relay.as_ref().unwrap();
    assert_eq!(hop.endpoint.to_string(), "unix:/run/dovecot/lmtp");
    assert!(c.routes[0].lmtp);
    check(
        &route(""),
        expect![[r#"test.toml:6: route.domains: a route needs relay = "host:port" or mx = true"#]],
    );
    check(
        &route("relay = \"192.0.2.1:25\"\nmx = true\n"),
        expect!["test.toml:7: route.relay: a route has relay or mx = true, not both"],
    );
    check(
        &route("mx = true\nprotocol = \"lmtp\"\n"),
        expect!["test.toml:7: route.mx: LMTP goes to a fixed next hop (relay), not to MX hosts"],
    );
    check(
        &route("relay = \"unix:run/lmtp\"\n"),
        expect![[
            r#"test.toml:7: route.relay: "unix:run/lmtp": a Unix socket needs an absolute path"#
        ]],
    );
    let c = parse(
        &route("mx = true\ntls = \"require\"\ntls_ca_file = \"/etc/ssl/ca.pem\"\n"),
        "test.toml",
    )
    .unwrap();
    let RouteTls::Require { ca_file } = &c.routes[0].tls else {
        panic!("{:?}", c.routes[0].tls);
    };
    assert_eq!(ca_file.at.to_string(), "test.toml:9: route.tls_ca_file");
    check(
        &route("mx = true\ntls_ca_file = \"/etc/hosts\"\n"),
        expect![[r#"test.toml:8: route.tls_ca_file: tls_ca_file goes with tls = "require""#]],
    );
    check(
        &route("relay = \"192.0.2.1:587\"\ntls = \"none\"\nauth_user = \"u\"\nauth_password_file = \"/etc/hosts\"\n"),
        expect!["test.toml:9: route.auth_user: AUTH needs TLS: credentials are never sent in clear"],
    );
    check(
        &route("mx = true\nauth_user = \"u\"\nauth_password_file = \"/etc/hosts\"\n"),
        expect!["test.toml:8: route.auth_user: AUTH is for a relay, not for MX hosts"],
    );
    check(
        &route("relay = \"192.0.2.1:587\"\nauth_user = \"u\"\n"),
        expect!["test.toml:8: route.auth_user: auth_user needs auth_password_file"],
    );
    check(
        &route("mx = true\ncallahead = true\n"),
        expect![
            "test.toml:8: route.callahead: callahead asks a fixed next hop (relay), not MX hosts"
        ],
    );
    check(
        &route("mx = true\ntls = \"maybe\"\n"),
        expect![[r#"test.toml:8: route.tls: "maybe" is not one of none, may, require"#]],
    );
    // Callahead only for the domains it is asked about: local and relay ones.
    check(
        &format!("{MINIMAL}[[route]]\ndomains = [\"example.org\"]\nrelay = \"192.0.2.1:25\"\ncallahead = true\n"),
        expect!["test.toml:8: route.callahead: callahead checks recipients of local or relay domains (smtp.local_domains, smtp.relay_domains); example.org is neither"],
    );
    let local = format!(
        "[smtp]\nlocal_domains = [\"example.com\"]\n{MINIMAL}[[route]]\ndomains = [\"example.com\"]\nrelay = \"unix:/run/dovecot/lmtp\"\nprotocol = \"lmtp\"\ncallahead = true\n"
    );
    assert!(parse(&local, "test.toml").unwrap().routes[0].callahead);
}

#[test]
fn delivery_limits() {
    let c = parse(MINIMAL, "test.toml").unwrap();
    assert_eq!(
        (
            c.delivery.max_connections,
            c.delivery.max_connections_per_destination
        ),
        (100, 20)
    );
    check(
        &format!("[delivery]\nmax_connections_per_destination = 0\n{MINIMAL}"),
        expect!["test.toml:2: delivery.max_connections_per_destination: must be at least 1"],
    );
}

#[test]
fn sent_message_ids_are_kept_for_a_retention() {
    let c = parse(MINIMAL, "test.toml").unwrap();
    assert_eq!(c.sent_id_retention, Duration::from_secs(30 * 86_400));
    let c = parse(
        &format!("[bounce_provenance]\nretention = \"7d\"\n{MINIMAL}"),
        "test.toml",
    )
    .unwrap();
    assert_eq!(c.sent_id_retention, Duration::from_secs(7 * 86_400));
    check(
        &format!("[bounce_provenance]\nretention = 0\n{MINIMAL}"),
        expect!["test.toml:2: bounce_provenance.retention: must be more than 0 (a bounce comes days after the message it returns)"],
    );
}

#[test]
fn the_shared_state_is_the_nodes_or_a_redis() {
    use backstop_state::redis::Servers;
    assert_eq!(parse(MINIMAL, "test.toml").unwrap().state, None);
    let one = parse(
        &format!("[state]\nredis = \"redis://10.0.0.5:6379/0\"\n{MINIMAL}"),
        "test.toml",
    )
    .unwrap()
    .state
    .unwrap();
    assert_eq!(one.servers, Servers::One("redis://10.0.0.5:6379/0".into()));
    assert_eq!(
        (one.prefix.as_str(), one.timeout),
        ("backstop:", Duration::from_secs(1))
    );
    let cluster = parse(
        &format!("[state]\nredis_cluster = [\"redis://10.0.0.5:7000\", \"redis://10.0.0.6:7000\"]\nprefix = \"mx:\"\n{MINIMAL}"),
        "test.toml",
    )
    .unwrap()
    .state
    .unwrap();
    assert!(matches!(cluster.servers, Servers::Cluster(nodes) if nodes.len() == 2));
    check(
        &format!("[state]\nredis = \"http://10.0.0.5/\"\ntimeout = 0\n{MINIMAL}"),
        expect![[r#"
            test.toml:2: state.redis: not a Redis URL: redis://HOST:PORT/DB (rediss:// for TLS, redis+unix:///PATH)
            test.toml:3: state.timeout: must be more than 0 and at most 60s (a session waits this long for each answer)"#]],
    );
    let tls = parse(
        &format!("[state]\nredis = \"rediss://10.0.0.5:6380/0\"\ntls_ca_file = \"/etc/backstop/redis-ca.pem\"\n{MINIMAL}"),
        "test.toml",
    )
    .unwrap()
    .state
    .unwrap();
    assert_eq!(
        tls.ca_file,
        Some(PathBuf::from("/etc/backstop/redis-ca.pem"))
    );
    check(
        &format!("[state]\nredis = \"redis://a\"\nredis_cluster = [\"redis://b\"]\n{MINIMAL}"),
        expect!["test.toml:2: state.redis: redis (one server) and redis_cluster (the nodes of a cluster) exclude each other"],
    );
}

#[test]
fn batv_and_dkim_keys() {
    let text = format!(
        "{MINIMAL}[batv]\nsign_with = 2\n[[batv.key]]\nnumber = 1\nsecret_file = \"/etc/backstop/batv-1.key\"\n[[batv.key]]\nnumber = 12\nsecret_file = \"/x\"\n"
    );
    check(
        &text,
        expect![[r#"
            test.toml:6: batv.sign_with: the signing key 2 (sign_with) is not among the [[batv.key]] numbers
            test.toml:11: batv.key.number: key number 12 is not between 0 and 9"#]],
    );
    // Without keys, key 0 is made under data_dir on first use.
    let c = parse(MINIMAL, "test.toml").unwrap();
    let batv = c.batv.unwrap();
    assert!(
        matches!(&batv.keys, BatvKeys::Generated { file } if file.ends_with("batv/0.key")),
        "{batv:?}"
    );
    assert_eq!(batv.lifetime_days, 7);
    let c = parse(&format!("{MINIMAL}[batv]\nenabled = false\n"), "test.toml").unwrap();
    assert!(c.batv.is_none());
    check(
        &format!("{MINIMAL}[[dkim]]\ndomain = \"example.com\"\nselector = \"s 1\"\nkey_file = \"/k.pem\"\n"),
        expect![[r#"test.toml:7: dkim.selector: "s 1" is not a selector like "s2026""#]],
    );
}

#[test]
fn content_filters_are_typed_and_checked_with_their_line() {
    let filter = |body: &str| format!("{MINIMAL}[[filter]]\n{body}");
    let c = parse(
        &filter(
            "type = \"header\"\nheader = \"Subject\"\npattern = \"(?i)spam\"\naction = \"reject\"\n\n\
             [[filter]]\ntype = \"clamd\"\naddress = \"unix:/run/clamav/clamd.ctl\"\non_error = \"accept\"\n",
        ),
        "test.toml",
    )
    .unwrap();
    assert_eq!(c.content_checks.len(), 2);
    assert_eq!(c.content_checks[1].name, "clamd unix:/run/clamav/clamd.ctl");
    assert_eq!(c.content_deadline, Duration::from_secs(60));
    check(
        &filter("type = \"body\"\npattern = \"(unclosed\"\naction = \"reject\"\n"),
        expect![[r#"
            test.toml:7: filter.pattern: not a regular expression: regex parse error:
                (unclosed
                ^
            error: unclosed group"#]],
    );
    check(
        &filter("type = \"body\"\npattern = \"x\"\naction = \"discard\"\n"),
        expect!["test.toml:8: filter.action: discard drops mail without telling anyone: say certain = true if this rule never catches wanted mail"],
    );
    check(
        &filter("type = \"antivirus\"\n"),
        expect![[
            r#"test.toml:6: filter.type: "antivirus" is not one of header, body, attachment, mime_depth, milter, rspamd, clamd"#
        ]],
    );
    check(
        &filter("type = \"milter\"\naddress = \"localhost\"\n"),
        expect![[
            r#"test.toml:7: filter.address: "localhost" is not an address like 127.0.0.1:8891 or unix:/run/scanner.sock"#
        ]],
    );
    check(
        &filter("type = \"body\"\naction = \"reject\"\n"),
        expect!["test.toml:6: filter.type: a body filter needs a pattern"],
    );
}

#[test]
fn log_levels_are_checked() {
    let c = parse(
        &format!("{MINIMAL}[log]\nlevel = \"backstop_delivery=debug,info\"\nformat = \"json\"\n"),
        "test.toml",
    )
    .unwrap();
    assert!(c.log.json);
    check(
        &format!("{MINIMAL}[log]\nlevel = \"loud\"\n"),
        expect![[
            r#"test.toml:6: log.level: "loud" is not a level (trace, debug, info, warn, error, off); per target: "backstop_delivery=debug,info""#
        ]],
    );
}

/// Nothing a config file holds makes the parser panic: truncations of every config in etc/ at
/// every line, and bytes that are not what TOML expects.
#[test]
fn broken_text_is_an_error_not_a_panic() {
    let etc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../etc/mx.toml");
    let text = std::fs::read_to_string(etc).unwrap();
    let mut at = 0;
    while let Some(n) = text[at..].find('\n') {
        at += n + 1;
        let _ = parse_all(&text[..at], "mx.toml");
        let _ = parse_all(&format!("{}\u{0}=\"\n[[x", &text[..at]), "mx.toml");
    }
}

#[test]
fn config_show_has_every_key_and_reads_back_the_same() {
    let text = format!(
        "hostname = \"mx.example.com\"\n[smtp]\nmax_message_size = \"20M\"\nlocal_domains = [\"example.com\"]\n\
[state]\nredis = \"redis://app:s3cret@127.0.0.1:6379/0\"\n{MINIMAL}"
    );
    let shown = parse(&text, "test.toml").unwrap().show();
    // The file's values, the defaults of what it leaves out, in the file's own syntax.
    for line in [
        "hostname = \"mx.example.com\"",
        "[smtp]",
        "max_message_size = \"20M\"",
        "max_recipients = 100",
        "command_timeout = \"5m\"",
        "[[listener]]",
        "address = \"127.0.0.1:25\"",
        "[sendmail]",
        "redis = \"redis://app:***@127.0.0.1:6379/0\"",
    ] {
        assert!(shown.lines().any(|l| l == line), "{line} not in:\n{shown}");
    }
    assert!(!shown.contains("s3cret"));
    // What it shows is a config that means the same (the Redis password aside).
    let again = parse(&shown.replace("***", "s3cret"), "shown.toml")
        .unwrap()
        .show();
    assert_eq!(again, shown);
}

#[test]
fn config_show_hides_password_hashes_and_defaults_are_an_empty_file() {
    let shown = embedded().unwrap().show();
    assert!(shown.contains("password_hash = \"(hidden)\""), "{shown}");
    assert!(!shown.contains("$argon2id$"));
    let defaults = crate::defaults();
    assert!(defaults.contains("\n[smtp]\n"), "{defaults}");
    assert!(defaults.lines().any(|l| l == "max_message_size = \"50M\""));
    assert!(defaults.lines().any(|l| l == "local_domains = []"));
    assert!(!defaults.contains("[[listener]]"));
}

#[test]
fn quarantine_settings_are_checked_with_their_line() {
    check(
        &format!("[quarantine]\ndigest = \"sometimes\"\n{MINIMAL}"),
        expect![[
            r#"test.toml:2: quarantine.digest: "sometimes" is neither "off" nor a duration of at least a minute ("24h")"#
        ]],
    );
    check(
        &format!("[quarantine]\nurl = \"javascript:alert(1)\"\n{MINIMAL}"),
        expect![[
            r#"test.toml:2: quarantine.url: "javascript:alert(1)" is not an http(s) URL like https://quarantine.example.org"#
        ]],
    );
    check(
        &format!("[quarantine]\nweb = \"localhost\"\n{MINIMAL}"),
        expect![[
            r#"test.toml:2: quarantine.web: "localhost" is not an address like 127.0.0.1:8026"#
        ]],
    );
    check(
        &format!("[quarantine]\nsign_with = 2\n[[quarantine.key]]\nnumber = 0\nsecret_file = \"/k\"\n{MINIMAL}"),
        expect!["test.toml:2: quarantine.sign_with: the signing key 2 (sign_with) is not among the [[quarantine.key]] numbers"],
    );
    let c = parse(
        &format!("[queue]\nquarantine_retention = \"10d\"\n[quarantine]\nhold_retention = \"90d\"\ndigest = \"off\"\nurl = \"https://q.example.org/\"\n{MINIMAL}"),
        "test.toml",
    )
    .unwrap();
    let q = &c.quarantine;
    assert_eq!(q.digest_every, None);
    assert_eq!(q.url.as_deref(), Some("https://q.example.org"));
    assert_eq!(
        q.retention_of(backstop_types::quarantine::ReasonKind::Hold),
        std::time::Duration::from_secs(90 * 86_400)
    );
    assert_eq!(
        q.retention_of(backstop_types::quarantine::ReasonKind::Content),
        std::time::Duration::from_secs(10 * 86_400)
    );
}

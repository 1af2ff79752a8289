use super::*;

fn error(text: &str) -> String {
    Config::parse(text, "test.toml").unwrap_err().to_string()
}

const MINIMAL: &str = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\nkind = \"mx\"\n";

#[test]
fn the_embedded_default_parses() {
    let config = Config::embedded().unwrap();
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

/// Every file shipped in etc/ is a valid config.
#[test]
fn minimal_config_gets_the_defaults() {
    let c = Config::parse(MINIMAL, "test.toml").unwrap();
    assert_eq!(c.smtp.max_recipients, 100);
    assert_eq!(c.smtp.max_message_size, 50 * 1024 * 1024);
    assert_eq!(c.smtp.command_timeout, Duration::from_secs(300));
    assert!(matches!(c.tls, Tls::SelfSigned));
}

#[test]
fn errors_name_file_line_and_key() {
    assert_eq!(
        error(&format!("[smtp]\nmax_recipients = \"many\"\n{MINIMAL}")),
        "test.toml:2: smtp.max_recipients: invalid type: string \"many\", expected usize"
    );
    assert_eq!(
        error(&format!("[smtp]\nmax_recipient = 5\n{MINIMAL}")),
        "test.toml:2: smtp.max_recipient: unknown field `max_recipient`, expected one of `local_domains`, `relay_domains`, `local_networks`, `max_message_size`, `max_recipients`, `max_line_length`, `max_errors`, `command_timeout`, `data_timeout`, `min_data_rate`, `max_hops`, `stress_timeout`, `greeting_delay`, `shutdown_grace`, `max_connections`, `max_connections_per_ip`"
    );
    assert_eq!(
        error(&format!(
            "[smtp]\nlocal_domains = [\"ok.test\", \"bad domain\"]\n{MINIMAL}"
        )),
        "test.toml:2: smtp.local_domains: \"bad domain\": the domain contains the character ' '"
    );
    assert_eq!(
        error(&format!("[smtp]\nlocal_networks = [\"10.0.0.0/99\"]\n{MINIMAL}")),
        "test.toml:2: smtp.local_networks: \"10.0.0.0/99\" is not a network like 192.0.2.0/24 or 2001:db8::/32"
    );
    assert_eq!(
        error(&format!("[smtp]\nmax_message_size = \"10Q\"\n{MINIMAL}")),
        "test.toml:2: smtp.max_message_size: \"10Q\": unknown unit (use k, M or G)"
    );
    assert_eq!(
        error(&format!("[smtp]\ndata_timeout = \"soon\"\n{MINIMAL}")),
        "test.toml:2: smtp.data_timeout: \"soon\" is not a duration like 30, \"30s\", \"5m\", \"1h\" or \"2d\""
    );
    assert_eq!(
        error("[[listener]]\nname = \"mx\"\naddress = \"localhost\"\nkind = \"mx\"\n"),
        "test.toml:3: listener.address: \"localhost\" is not an address like 127.0.0.1:25 or [::1]:25"
    );
    assert_eq!(
        error("[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\nkind = \"pop3\"\n"),
        "test.toml:4: listener.kind: unknown variant `pop3`, expected one of `mx`, `submission`, `submissions`"
    );
    assert_eq!(
        error("hostname = \"x\"\n"),
        "test.toml: missing field `listener`"
    );
    assert_eq!(
        error(&format!("[tls]\ncert = \"/c.pem\"\n{MINIMAL}")),
        "test.toml:2: tls.cert: cert needs a key too"
    );
    assert_eq!(
        error(&format!("{MINIMAL}[[auth.user]]\nname = \"a\"\npassword_hash = \"plain\"\n")),
        "test.toml:7: auth.user.password_hash: the password of a is not an argon2 ($argon2id$...), SHA-512-crypt ($6$...) or bcrypt ($2y$...) hash; plain-text passwords are not accepted (make a hash with `backstop hash-password`, or `doveadm pw -s SHA512-CRYPT`)"
    );
    let submission =
        "[[listener]]\nname = \"s\"\naddress = \"127.0.0.1:587\"\nkind = \"submission\"\n";
    assert_eq!(
        error(submission),
        "test.toml:1: listener: a submission listener needs users: set auth.users_file or add [[auth.user]]"
    );
    assert_eq!(
        error("[[listener]\n"),
        "test.toml:1: listener: unclosed array table, expected `]`"
    );
}

#[test]
fn the_admin_api_is_a_socket_or_loopback_http_with_a_token() {
    let c = Config::parse(MINIMAL, "test.toml").unwrap();
    assert!(matches!(&c.admin, AdminEndpoint::Unix(p) if p == Path::new("var/admin.sock")));
    assert_eq!(
        error(&format!("{MINIMAL}[admin]\nhttp = \"127.0.0.1:8025\"\n")),
        "test.toml:6: admin.http: http needs a token_file (the bearer token)"
    );
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "a-long-enough-secret-token\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let with = |addr: &str| {
        format!(
            "{MINIMAL}[admin]\nhttp = \"{addr}\"\ntoken_file = \"{}\"\n",
            token.display()
        )
    };
    assert_eq!(
        error(&with("192.0.2.1:8025")),
        "test.toml:6: admin.http: 192.0.2.1:8025: the admin API listens on loopback only"
    );
    // Others can read it: the token is given away.
    assert!(error(&with("127.0.0.1:8025")).ends_with("(chmod 600)"));
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&token, "short").unwrap();
    assert!(error(&with("127.0.0.1:8025")).ends_with("the token must be at least 16 characters"));
    std::fs::write(&token, "a-long-enough-secret-token\n").unwrap();
    let c = Config::parse(&with("[::1]:8025"), "test.toml").unwrap();
    assert!(
        matches!(&c.admin, AdminEndpoint::Http { token, .. } if token == "a-long-enough-secret-token")
    );
}

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("10M"), Ok(10 << 20));
    assert_eq!(parse_size("512k"), Ok(512 << 10));
    assert_eq!(parse_size("1 G"), Ok(1 << 30));
    assert_eq!(parse_size("1234"), Ok(1234));
    assert!(parse_size("99999999999999999999G").is_err());
    assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
    assert!(parse_duration("1w").is_err());
}

#[test]
fn routes_are_relay_or_mx_and_say_what_is_wrong() {
    let route = |body: &str| format!("{MINIMAL}[[route]]\ndomains = [\"*\"]\n{body}");
    let c = Config::parse(&route("mx = true\n"), "test.toml").unwrap();
    assert!(c.routes[0].relay.is_none() && c.routes[0].any_domain);
    let c = Config::parse(
        &route("relay = \"unix:/run/dovecot/lmtp\"\nprotocol = \"lmtp\"\n"),
        "test.toml",
    )
    .unwrap();
    let hop = c.routes[0].relay.as_ref().unwrap();
    assert_eq!(hop.endpoint.to_string(), "unix:/run/dovecot/lmtp");
    assert!(c.routes[0].lmtp);
    assert_eq!(
        error(&route("")),
        "test.toml:6: route.domains: a route needs relay = \"host:port\" or mx = true"
    );
    assert_eq!(
        error(&route("relay = \"192.0.2.1:25\"\nmx = true\n")),
        "test.toml:7: route.relay: a route has relay or mx = true, not both"
    );
    assert_eq!(
        error(&route("mx = true\nprotocol = \"lmtp\"\n")),
        "test.toml:7: route.mx: LMTP goes to a fixed next hop (relay), not to MX hosts"
    );
    assert_eq!(
        error(&route("relay = \"unix:run/lmtp\"\n")),
        "test.toml:7: route.relay: \"unix:run/lmtp\": a Unix socket needs an absolute path"
    );
    assert_eq!(
        error(&route("mx = true\ntls = \"require\"\ntls_ca_file = \"/nonexistent.pem\"\n")),
        "test.toml:9: route.tls_ca_file: /nonexistent.pem: I/O error: No such file or directory (os error 2)"
    );
    assert_eq!(
        error(&route("mx = true\ntls_ca_file = \"/etc/hosts\"\n")),
        "test.toml:8: route.tls_ca_file: tls_ca_file goes with tls = \"require\""
    );
    assert_eq!(
        error(&route("relay = \"192.0.2.1:587\"\ntls = \"none\"\nauth_user = \"u\"\nauth_password_file = \"/etc/hosts\"\n")),
        "test.toml:9: route.auth_user: AUTH needs TLS: credentials are never sent in clear"
    );
    assert_eq!(
        error(&route(
            "mx = true\nauth_user = \"u\"\nauth_password_file = \"/etc/hosts\"\n"
        )),
        "test.toml:8: route.auth_user: AUTH is for a relay, not for MX hosts"
    );
    assert_eq!(
        error(&route("relay = \"192.0.2.1:587\"\nauth_user = \"u\"\n")),
        "test.toml:8: route.auth_user: auth_user needs auth_password_file"
    );
    assert_eq!(
        error(&route("mx = true\ncallahead = true\n")),
        "test.toml:6: route.domains: callahead asks a fixed next hop (relay), not MX hosts"
    );
    assert_eq!(
        error(&route("mx = true\ntls = \"maybe\"\n")),
        "test.toml:8: route.tls: unknown variant `maybe`, expected one of `none`, `may`, `require`"
    );
}

#[test]
fn delivery_limits() {
    let c = Config::parse(MINIMAL, "test.toml").unwrap();
    assert_eq!(
        (
            c.delivery.max_connections,
            c.delivery.max_connections_per_destination
        ),
        (100, 20)
    );
    assert_eq!(
        error(&format!(
            "[delivery]\nmax_connections_per_destination = 0\n{MINIMAL}"
        )),
        "test.toml:2: delivery.max_connections_per_destination: must be at least 1"
    );
}

#[test]
fn batv_and_dkim_keys_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.key");
    std::fs::write(&short, "tiny\n").unwrap();
    let text = format!(
        "{MINIMAL}[batv]\nsign_with = 1\n[[batv.key]]\nnumber = 1\nsecret_file = \"{}\"\n",
        short.display()
    );
    assert_eq!(
        error(&text),
        format!("test.toml:9: batv.key.secret_file: batv: key 1 is shorter than 16 bytes")
    );
    // Without keys, key 0 is made under data_dir on first use.
    let c = Config::parse(MINIMAL, "test.toml").unwrap();
    assert!(
        matches!(&c.batv, Some(Batv::Generated { file, lifetime_days: 7 }) if file.ends_with("batv/0.key"))
    );
    let c = Config::parse(&format!("{MINIMAL}[batv]\nenabled = false\n"), "test.toml").unwrap();
    assert!(c.batv.is_none());

    let text = format!(
        "{MINIMAL}[[dkim]]\ndomain = \"example.com\"\nselector = \"s1\"\nkey_file = \"{}\"\n",
        short.display()
    );
    let e = error(&text);
    assert!(
        e.starts_with("test.toml:8: dkim.key_file: ") && e.contains("not a PEM private key"),
        "{e}"
    );
}

#[test]
fn content_filters_are_checked_with_their_line() {
    let filter = |body: &str| format!("{MINIMAL}[[filter]]\n{body}");
    let c = Config::parse(
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
    assert_eq!(
        error(&filter("type = \"body\"\npattern = \"(unclosed\"\naction = \"reject\"\n")),
        "test.toml:7: filter.pattern: not a regular expression: regex parse error:\n    (unclosed\n    ^\nerror: unclosed group"
    );
    assert_eq!(
        error(&filter("type = \"body\"\npattern = \"x\"\naction = \"discard\"\n")),
        "test.toml:8: filter.action: discard drops mail without telling anyone: say certain = true if this rule never catches wanted mail"
    );
    assert_eq!(
        error(&filter("type = \"antivirus\"\n")),
        "test.toml:6: filter.type: \"antivirus\" is not a filter type (header, body, attachment, mime_depth, milter, rspamd, clamd)"
    );
    assert_eq!(
        error(&filter("type = \"milter\"\naddress = \"localhost\"\n")),
        "test.toml:7: filter.address: \"localhost\" is not an address like 127.0.0.1:8891 or unix:/run/scanner.sock"
    );
}

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
fn every_file_in_etc_parses() {
    let etc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../etc");
    let mut checked = 0;
    for entry in std::fs::read_dir(&etc).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = Config::load(&path) {
                panic!("{e}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 1);
}

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
        "test.toml:2: smtp.max_recipient: unknown field `max_recipient`, expected one of `local_domains`, `relay_domains`, `local_networks`, `max_message_size`, `max_recipients`, `max_line_length`, `max_errors`, `command_timeout`, `data_timeout`, `greeting_delay`, `max_connections`, `max_connections_per_ip`"
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
        "test.toml:7: auth.user.password_hash: the password of a is not an argon2 ($argon2id$...) or SHA-512-crypt ($6$...) hash; plain-text passwords are not accepted (make one with `backstop hash-password`)"
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
    std::fs::write(&token, "short").unwrap();
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

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use expect_test::expect;

use super::*;

const MINIMAL: &str = "[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\nkind = \"mx\"\n";

/// Loads `text` as the file `dir/test.toml`; every problem, one per line, with `dir` shown as
/// `DIR`.
fn errors(dir: &Path, text: &str) -> String {
    let file = dir.join("test.toml");
    std::fs::write(&file, text).unwrap();
    let shown = match load(Some(&file)) {
        Ok(_) => panic!("{text} loads"),
        Err(e) => e.to_string(),
    };
    shown.replace(&dir.display().to_string(), "DIR")
}

fn loads(dir: &Path, text: &str) -> Setup {
    let file = dir.join("test.toml");
    std::fs::write(&file, text).unwrap();
    match load(Some(&file)) {
        Ok(setup) => setup,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_embedded_default_loads() {
    let setup = load(None).unwrap();
    assert!(setup.users.knows("demo"));
    assert!(matches!(setup.batv, Some(BatvSource::Generated { .. })));
}

#[test]
fn the_admin_token_must_be_private_and_long() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "a-long-enough-secret-token\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = format!(
        "{MINIMAL}[admin]\nhttp = \"127.0.0.1:8025\"\ntoken_file = \"{}\"\n",
        token.display()
    );
    expect!["DIR/test.toml:7: admin.token_file: DIR/token: mode 644 lets others read or change the admin token; make it readable by its owner only (chmod 600)"]
        .assert_eq(&errors(dir.path(), &text));
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&token, "short").unwrap();
    expect![
        "DIR/test.toml:7: admin.token_file: DIR/token: the token must be at least 16 characters"
    ]
    .assert_eq(&errors(dir.path(), &text));
    std::fs::write(&token, "a-long-enough-secret-token\n").unwrap();
    let setup = loads(dir.path(), &text);
    assert_eq!(
        setup.admin,
        Admin::Http {
            address: "127.0.0.1:8025".parse().unwrap(),
            token: "a-long-enough-secret-token".into(),
            socket: setup.config.data_dir.join("admin.sock"),
        }
    );
}

/// The text's problems and the files' problems, all in one run, by line.
#[test]
fn every_problem_of_text_and_files_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let short = d.join("short.key");
    std::fs::write(&short, "tiny\n").unwrap();
    std::fs::write(d.join("users"), "alice:plaintext\n").unwrap();
    let text = format!(
        "{MINIMAL}\
[smtp]
max_recipients = 0

[auth]
users_file = \"{d}/users\"

[recipients]
table = \"{d}/missing-table\"

[batv]
sign_with = 1
[[batv.key]]
number = 1
secret_file = \"{short}\"

[[dkim]]
domain = \"example.com\"
selector = \"s1\"
key_file = \"{short}\"

[[route]]
domains = [\"*\"]
mx = true
tls = \"require\"
tls_ca_file = \"{d}/missing-ca.pem\"

[quarantine]
sign_with = 2
[[quarantine.key]]
number = 2
secret_file = \"{short}\"
[[quarantine.key]]
number = 3
secret_file = \"{d}/missing.key\"
",
        d = d.display(),
        short = short.display()
    );
    expect![[r#"
        DIR/test.toml:6: smtp.max_recipients: must be at least 1
        DIR/test.toml:9: auth.users_file: DIR/users:1: the password of alice is not an argon2 ($argon2id$...), SHA-512-crypt ($6$...) or bcrypt ($2y$...) hash; plain-text passwords are not accepted (make a hash with `backstop hash-password`, or `doveadm pw -s SHA512-CRYPT`)
        DIR/test.toml:12: recipients.table: DIR/missing-table: No such file or directory (os error 2)
        DIR/test.toml:18: batv.key.secret_file: batv: key 1 is shorter than 16 bytes
        DIR/test.toml:23: dkim.key_file: DIR/short.key: not a PEM private key: no items found
        DIR/test.toml:29: route.tls_ca_file: DIR/missing-ca.pem: I/O error: No such file or directory (os error 2)
        DIR/test.toml:35: quarantine.key.secret_file: quarantine: token key 2 is shorter than 16 bytes
        DIR/test.toml:38: quarantine.key.secret_file: DIR/missing.key: No such file or directory (os error 2)"#]]
    .assert_eq(&errors(d, &text));
}

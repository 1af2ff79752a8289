//! Recipient validation against OpenLDAP's slapd on loopback: known, unknown, and the
//! directory going down (451, never 250), with the cache answering for what it already knows.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{config, free_port, have, is_root, Server};

/// A slapd with base dc=example,dc=test and bob@example.test under ou=users. Stopped when
/// dropped.
struct Slapd {
    child: Child,
    port: u16,
    /// With TLS: the ldaps:// port (`port` then offers STARTTLS).
    tls_port: u16,
}

/// Certificate and key files for slapd's TLS.
struct Tls<'a> {
    cert: &'a Path,
    key: &'a Path,
}

/// The directory's account for backstop, and its password.
const SERVICE_DN: &str = "cn=backstop,dc=example,dc=test";
const SERVICE_PASSWORD: &str = "s3cret";

impl Slapd {
    /// Anyone may read, over plain LDAP.
    fn start(dir: &Path) -> Slapd {
        Slapd::start_with(dir, None)
    }

    /// With `tls`: STARTTLS on one port, ldaps:// on another, and only SERVICE_DN, bound
    /// with its password, may read (anonymous clients see nothing).
    fn start_with(dir: &Path, tls: Option<Tls<'_>>) -> Slapd {
        let db = dir.join("db");
        std::fs::create_dir_all(&db).unwrap();
        let port = free_port();
        let tls_port = free_port();
        let (tls_settings, access, urls) = match &tls {
            None => (
                String::new(),
                "access to * by * read\n".to_owned(),
                format!("ldap://127.0.0.1:{port}/"),
            ),
            Some(tls) => (
                format!(
                    "TLSCertificateFile {}\nTLSCertificateKeyFile {}\n",
                    tls.cert.display(),
                    tls.key.display()
                ),
                format!(
                    "access to attrs=userPassword by anonymous auth by * none\n\
                     access to * by dn.exact=\"{SERVICE_DN}\" read by * none\n"
                ),
                format!("ldap://127.0.0.1:{port}/ ldaps://127.0.0.1:{tls_port}/"),
            ),
        };
        let conf = dir.join("slapd.conf");
        std::fs::write(
            &conf,
            format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 {tls_settings}\
                 modulepath /usr/lib/ldap\nmoduleload back_mdb\n\
                 pidfile {pid}\ndatabase mdb\nmaxsize 104857600\n\
                 suffix \"dc=example,dc=test\"\nrootdn \"cn=admin,dc=example,dc=test\"\nrootpw secret\n\
                 directory {db}\nindex objectClass eq\nindex mail eq\n\
                 {access}",
                pid = dir.join("slapd.pid").display(),
                db = db.display()
            ),
        )
        .unwrap();
        let ldif = dir.join("init.ldif");
        std::fs::write(
            &ldif,
            "dn: dc=example,dc=test\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
             dn: ou=users,dc=example,dc=test\nobjectClass: organizationalUnit\nou: users\n\n\
             dn: uid=bob,ou=users,dc=example,dc=test\nobjectClass: inetOrgPerson\nuid: bob\ncn: bob\nsn: bob\nmail: bob@example.test\n\
             mail: robert@example.test\nuserPassword: bobs-secret\n\n\
             dn: cn=backstop,dc=example,dc=test\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n\
             cn: backstop\nuserPassword: s3cret\n\n",
        )
        .unwrap();
        let status = Command::new("slapadd")
            .args(["-q", "-f"])
            .arg(&conf)
            .arg("-l")
            .arg(&ldif)
            .status()
            .unwrap();
        assert!(status.success(), "slapadd failed");
        let child = Command::new("slapd")
            .args(["-d", "0", "-h", &urls, "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting slapd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "slapd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Slapd {
            child,
            port,
            tls_port,
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[test]
fn recipients_come_from_ldap_and_a_dead_directory_means_451() {
    let test = "recipients_come_from_ldap_and_a_dead_directory_means_451";
    if !have("slapd", test) || !is_root(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let slapd = Slapd::start(&d.join("slapd"));
    let config = config(d, "")
        + &format!(
            "\n[ldap]\nurl = \"ldap://127.0.0.1:{}\"\nbase = \"ou=users,dc=example,dc=test\"\nfilter = \"(mail=%s)\"\ntimeout = \"3s\"\n",
            slapd.port
        );
    let server = Server::start(d, &config);
    let mut c = server.ready_for_rcpt();
    let reply = c.command("RCPT TO:<bob@example.test>");
    assert!(reply.starts_with("250"), "{reply}\n{}", server.log());
    let reply = c.command("RCPT TO:<nobody@example.test>");
    assert!(reply.starts_with("550 5.1.1"), "{reply}");

    // The directory goes away: what is not cached gets 451, never 250.
    drop(slapd);
    let reply = c.command("RCPT TO:<carol@example.test>");
    assert!(reply.starts_with("451 4.4.3"), "{reply}");
    assert!(c.command("RCPT TO:<bob@example.test>").starts_with("250"));
    c.command("QUIT");
    server.stop();
}

#[test]
fn ldap_over_tls_binds_as_its_account() {
    use crate::postfix::test_certificate;
    let test = "ldap_over_tls_binds_as_its_account";
    if !have("slapd", test) || !is_root(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("certs")).unwrap();
    let (ca, cert, key) = test_certificate(&d.join("certs"), "IP:127.0.0.1,DNS:localhost");
    let slapd = Slapd::start_with(
        &d.join("slapd"),
        Some(Tls {
            cert: &cert,
            key: &key,
        }),
    );
    let good_password = d.join("ldap.password");
    std::fs::write(&good_password, format!("{SERVICE_PASSWORD}\n")).unwrap();
    let wrong_password = d.join("wrong.password");
    std::fs::write(&wrong_password, "guess\n").unwrap();
    // One backstop per way of reaching the directory; each answers bob@ and nobody@.
    let answers = |name: &str, ldap: &str| {
        let dir = d.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = config(&dir, "")
            + &format!(
                "\n[ldap]\nbase = \"ou=users,dc=example,dc=test\"\ntimeout = \"3s\"\n{ldap}\n"
            );
        let server = Server::start(&dir, &config);
        let mut c = server.ready_for_rcpt();
        let bob = c.command("RCPT TO:<bob@example.test>");
        let nobody = c.command("RCPT TO:<nobody@example.test>");
        c.command("QUIT");
        let log = server.log();
        server.stop();
        (bob, nobody, log)
    };
    let account = format!(
        "bind_dn = \"{SERVICE_DN}\"\nbind_password_file = \"{}\"\ntls_ca_file = \"{}\"",
        good_password.display(),
        ca.display()
    );
    // ldaps://, verified against the test CA, bound as the account.
    let (bob, nobody, log) = answers(
        "ldaps",
        &format!("url = \"ldaps://127.0.0.1:{}\"\n{account}", slapd.tls_port),
    );
    assert!(bob.starts_with("250"), "{bob}\n{log}");
    assert!(nobody.starts_with("550 5.1.1"), "{nobody}");
    // STARTTLS on the plain port.
    let (bob, nobody, log) = answers(
        "starttls",
        &format!(
            "url = \"ldap://127.0.0.1:{}\"\nstarttls = true\n{account}",
            slapd.port
        ),
    );
    assert!(bob.starts_with("250"), "{bob}\n{log}");
    assert!(nobody.starts_with("550 5.1.1"), "{nobody}");
    // Anonymous, the directory shows nothing, not even the base: the answers above came
    // through the bind, and a search the directory refuses is a 451.
    let (bob, _, log) = answers(
        "anonymous",
        &format!(
            "url = \"ldaps://127.0.0.1:{}\"\ntls_ca_file = \"{}\"",
            slapd.tls_port,
            ca.display()
        ),
    );
    assert!(bob.starts_with("451 4.4.3"), "{bob}");
    assert!(log.contains("rc=32"), "{log}");
    // A wrong password: the bind fails, and the directory cannot answer: 451, never 250.
    let (bob, _, log) = answers(
        "wrong-password",
        &format!(
            "url = \"ldaps://127.0.0.1:{}\"\nbind_dn = \"{SERVICE_DN}\"\n\
             bind_password_file = \"{}\"\ntls_ca_file = \"{}\"",
            slapd.tls_port,
            wrong_password.display(),
            ca.display()
        ),
    );
    assert!(bob.starts_with("451 4.4.3"), "{bob}\n{log}");
    assert!(log.contains("bind as cn=backstop"), "{log}");
    // The system's CAs do not know the test CA: the certificate is refused, 451.
    let (bob, _, log) = answers(
        "untrusted",
        &format!(
            "url = \"ldaps://127.0.0.1:{}\"\nbind_dn = \"{SERVICE_DN}\"\nbind_password_file = \"{}\"",
            slapd.tls_port,
            good_password.display()
        ),
    );
    assert!(bob.starts_with("451 4.4.3"), "{bob}\n{log}");
    assert!(log.to_ascii_lowercase().contains("certificate"), "{log}");
    drop(slapd);
}

/// Logs in over submission (STARTTLS, AUTH PLAIN) and tries MAIL FROM each of `senders`;
/// the replies, one per line.
fn login(server: &Server, user: &str, password: &str, senders: &[&str]) -> String {
    crate::harness::python(
        r#"
import smtplib, ssl, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30)
s.starttls(context=ssl._create_unverified_context())
try:
    code, text = s.login(sys.argv[2], sys.argv[3])
    print(code, text.decode())
except smtplib.SMTPResponseException as e:
    print(e.smtp_code, e.smtp_error.decode())
    sys.exit(0)
for sender in sys.argv[4:]:
    code, text = s.mail(sender)
    print(code, text.decode())
    s.rset()
s.quit()
"#,
        &[
            &[
                server.submission.port().to_string().as_str(),
                user,
                password,
            ],
            senders,
        ]
        .concat(),
    )
}

#[test]
fn logins_the_users_file_does_not_know_are_checked_against_ldap() {
    let test = "logins_the_users_file_does_not_know_are_checked_against_ldap";
    if !have("slapd", test) || !is_root(test) || !have("/usr/bin/python3", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let slapd = Slapd::start(&d.join("slapd"));
    let config = config(d, "")
        + &format!(
            "\n[auth.ldap]\nurl = \"ldap://127.0.0.1:{}\"\nbase = \"ou=users,dc=example,dc=test\"\n\
             filter = \"(uid=%s)\"\ntimeout = \"3s\"\n",
            slapd.port
        );
    let server = Server::start(d, &config);
    // bob is in the directory: his password, and the addresses it lists, are his.
    assert_eq!(
        login(
            &server,
            "bob",
            "bobs-secret",
            &[
                "bob@example.test",
                "robert@example.test",
                "alice@example.test"
            ]
        ),
        "235 2.7.0 Authentication successful\n250 2.1.0 Sender ok\n250 2.1.0 Sender ok\n\
         553 5.7.1 Sender address rejected: not owned by user bob"
    );
    assert!(login(&server, "bob", "wrong", &[]).starts_with("535 5.7.8"));
    assert!(login(&server, "nobody", "bobs-secret", &[]).starts_with("535 5.7.8"));
    // alice is in the users file, which answers first.
    assert!(login(&server, "alice", "secret", &[]).starts_with("235"));
    // The directory down: 454, try again later; never a login.
    drop(slapd);
    assert!(
        login(&server, "bob", "bobs-secret", &[]).starts_with("454 4.7.0"),
        "{}",
        server.log()
    );
    server.stop();
}

//! Recipient validation against OpenLDAP's slapd on loopback: known, unknown, and the
//! directory going down (451, never 250), with the cache answering for what it already knows.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{config, have, is_root, Server};

/// A slapd with base dc=example,dc=test and bob@example.test under ou=users. Stopped when
/// dropped.
struct Slapd {
    child: Child,
    port: u16,
}

impl Slapd {
    fn start(dir: &Path) -> Slapd {
        let db = dir.join("db");
        std::fs::create_dir_all(&db).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.join("slapd.conf");
        std::fs::write(
            &conf,
            format!(
                "include /etc/ldap/schema/core.schema\n\
                 include /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\n\
                 modulepath /usr/lib/ldap\nmoduleload back_mdb\n\
                 pidfile {pid}\ndatabase mdb\nmaxsize 104857600\n\
                 suffix \"dc=example,dc=test\"\nrootdn \"cn=admin,dc=example,dc=test\"\nrootpw secret\n\
                 directory {db}\nindex objectClass eq\nindex mail eq\n\
                 access to * by * read\n",
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
             dn: uid=bob,ou=users,dc=example,dc=test\nobjectClass: inetOrgPerson\nuid: bob\ncn: bob\nsn: bob\nmail: bob@example.test\n\n",
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
            .args(["-d", "0", "-h", &format!("ldap://127.0.0.1:{port}/"), "-f"])
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
        Slapd { child, port }
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

use super::*;

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

const TABLE: &str = "\
# mailboxes
bob@example.com
Carol@Example.com
sales@example.com   alice@example.com, bob@example.com   # alias
@example.org                                             # catch-all
@example.net        postmaster@example.com
";

#[test]
fn mailboxes_aliases_and_catch_alls() {
    let t = Table::parse(TABLE, Path::new("recipients")).unwrap();
    assert_eq!(
        t.check(&addr("bob@example.com")),
        Verdict::Accept(vec![addr("bob@example.com")])
    );
    assert_eq!(
        t.check(&addr("BOB@EXAMPLE.COM")),
        Verdict::Accept(vec![addr("bob@example.com")])
    );
    assert_eq!(
        t.check(&addr("carol@example.com")),
        Verdict::Accept(vec![addr("Carol@example.com")])
    );
    assert_eq!(
        t.check(&addr("sales@example.com")),
        Verdict::Accept(vec![addr("alice@example.com"), addr("bob@example.com")])
    );
    assert_eq!(t.check(&addr("nobody@example.com")), Verdict::Unknown);
    assert_eq!(
        t.check(&addr("anyone@example.org")),
        Verdict::Accept(vec![addr("anyone@example.org")])
    );
    assert_eq!(
        t.check(&addr("x@example.net")),
        Verdict::Accept(vec![addr("postmaster@example.com")])
    );
    assert!(t.covers(&Domain::parse("example.com").unwrap()));
    assert!(t.covers(&Domain::parse("example.org").unwrap()));
    assert!(!t.covers(&Domain::parse("example.edu").unwrap()));
}

#[test]
fn errors_name_file_and_line() {
    let error = |text: &str| {
        Table::parse(text, Path::new("/etc/backstop/recipients"))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        error("bob@example.com\nnot-an-address\n"),
        "/etc/backstop/recipients:2: \"not-an-address\": the address has no '@'"
    );
    assert_eq!(
        error("bob@example.com\nBOB@example.com\n"),
        "/etc/backstop/recipients:2: BOB@example.com is listed twice"
    );
    assert_eq!(
        error("sales@example.com  alice@example.com, bob\n"),
        "/etc/backstop/recipients:1: target \"bob\": the address has no '@'"
    );
    assert_eq!(error("@a..b\n"), "/etc/backstop/recipients:1: \"@a..b\": the domain has an empty label or a label longer than 63 octets");
}

#[test]
fn reload_on_demand_and_on_change_keeps_the_old_table_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recipients");
    std::fs::write(&path, "bob@example.com\n").unwrap();
    let file = TableFile::open(&path).unwrap();
    assert_eq!(
        file.table().check(&addr("new@example.com")),
        Verdict::Unknown
    );
    assert!(!file.reload_if_changed().unwrap());

    std::fs::write(&path, "bob@example.com\nnew@example.com\n").unwrap();
    set_mtime_ahead(&path);
    assert!(file.reload_if_changed().unwrap());
    assert!(matches!(
        file.table().check(&addr("new@example.com")),
        Verdict::Accept(_)
    ));

    // A broken edit is refused; the table in force stays.
    std::fs::write(&path, "new@example.com\nbroken line here\n").unwrap();
    set_mtime_ahead(&path);
    assert!(file.reload_if_changed().is_err());
    assert!(matches!(
        file.table().check(&addr("bob@example.com")),
        Verdict::Accept(_)
    ));
    assert!(
        !file.reload_if_changed().unwrap(),
        "a broken version is not retried every poll"
    );

    std::fs::write(&path, "bob@example.com\n").unwrap();
    file.reload().unwrap();
    assert_eq!(
        file.table().check(&addr("new@example.com")),
        Verdict::Unknown
    );
}

/// Some file systems keep modification times in whole seconds: move it on explicitly.
fn set_mtime_ahead(path: &Path) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STEP: AtomicU64 = AtomicU64::new(10);
    let at =
        SystemTime::now() + std::time::Duration::from_secs(STEP.fetch_add(10, Ordering::Relaxed));
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(at)
        .unwrap();
}

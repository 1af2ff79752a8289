use backstop_types::Address;

use super::*;

/// Every kind of sender against every event and NOTIFY: one row per sender, one column per
/// (NOTIFY, event); `S` is a report, anything else the reason there is none.
#[test]
fn the_gate_table() {
    let path = ReversePath::Address(Address::parse("someone@example.org").unwrap());
    let null = ReversePath::Null;
    let user = TrustClass::Authenticated {
        user: "alice".into(),
    };
    let sender = |path, trust, batv_valid, automatic| Sender {
        path,
        trust,
        batv_valid,
        automatic,
    };
    let unverified = TrustClass::Unverified;
    let local = TrustClass::LocalNetwork;
    let senders = [
        ("authenticated", sender(&path, &user, false, false)),
        ("local network", sender(&path, &local, false, false)),
        ("valid BATV tag", sender(&path, &unverified, true, false)),
        ("unverified", sender(&path, &unverified, false, false)),
        ("null sender", sender(&null, &user, false, false)),
        (
            "automatic, authenticated",
            sender(&path, &user, false, true),
        ),
        (
            "automatic, unverified",
            sender(&path, &unverified, false, true),
        ),
    ];
    let all = Notify::On {
        success: true,
        failure: true,
        delay: true,
    };
    let failure_only = Notify::On {
        success: false,
        failure: true,
        delay: false,
    };
    let columns = [
        ("default/failed", Notify::Default, Event::Failed),
        ("default/delayed", Notify::Default, Event::Delayed),
        ("default/delivered", Notify::Default, Event::Delivered),
        ("default/relayed", Notify::Default, Event::Relayed),
        ("all/failed", all, Event::Failed),
        ("all/delayed", all, Event::Delayed),
        ("all/delivered", all, Event::Delivered),
        ("all/relayed", all, Event::Relayed),
        ("failure/delayed", failure_only, Event::Delayed),
        ("failure/delivered", failure_only, Event::Delivered),
        ("never/failed", Notify::Never, Event::Failed),
    ];
    let mut table = String::new();
    for (name, sender) in &senders {
        table.push_str(&format!("{name}:\n"));
        for (column, notify, event) in columns {
            let cell = match decide(sender, notify, event) {
                Decision::Send => "SEND",
                Decision::Suppress(r) => r.label(),
            };
            table.push_str(&format!("  {column:<18} {cell}\n"));
        }
    }
    expect_test::expect![[r#"
        authenticated:
          default/failed     SEND
          default/delayed    SEND
          default/delivered  not_requested
          default/relayed    not_requested
          all/failed         SEND
          all/delayed        SEND
          all/delivered      SEND
          all/relayed        SEND
          failure/delayed    not_requested
          failure/delivered  not_requested
          never/failed       notify_never
        local network:
          default/failed     SEND
          default/delayed    SEND
          default/delivered  not_requested
          default/relayed    not_requested
          all/failed         SEND
          all/delayed        SEND
          all/delivered      SEND
          all/relayed        SEND
          failure/delayed    not_requested
          failure/delivered  not_requested
          never/failed       notify_never
        valid BATV tag:
          default/failed     SEND
          default/delayed    SEND
          default/delivered  not_requested
          default/relayed    not_requested
          all/failed         SEND
          all/delayed        SEND
          all/delivered      SEND
          all/relayed        SEND
          failure/delayed    not_requested
          failure/delivered  not_requested
          never/failed       notify_never
        unverified:
          default/failed     unverified
          default/delayed    unverified
          default/delivered  not_requested
          default/relayed    not_requested
          all/failed         unverified
          all/delayed        unverified
          all/delivered      unverified
          all/relayed        unverified
          failure/delayed    not_requested
          failure/delivered  not_requested
          never/failed       notify_never
        null sender:
          default/failed     null_sender
          default/delayed    null_sender
          default/delivered  null_sender
          default/relayed    null_sender
          all/failed         null_sender
          all/delayed        null_sender
          all/delivered      null_sender
          all/relayed        null_sender
          failure/delayed    null_sender
          failure/delivered  null_sender
          never/failed       null_sender
        automatic, authenticated:
          default/failed     automatic
          default/delayed    automatic
          default/delivered  not_requested
          default/relayed    not_requested
          all/failed         automatic
          all/delayed        automatic
          all/delivered      automatic
          all/relayed        automatic
          failure/delayed    not_requested
          failure/delivered  not_requested
          never/failed       notify_never
        automatic, unverified:
          default/failed     automatic
          default/delayed    automatic
          default/delivered  not_requested
          default/relayed    not_requested
          all/failed         automatic
          all/delayed        automatic
          all/delivered      automatic
          all/relayed        automatic
          failure/delayed    not_requested
          failure/delivered  not_requested
          never/failed       notify_never
    "#]]
    .assert_eq(&table);
}

#[test]
fn automatic_messages_are_recognised() {
    assert!(is_automatic(
        b"Auto-Submitted: auto-replied\r\nSubject: x\r\n\r\nbody\r\n"
    ));
    assert!(is_automatic(b"Auto-Submitted: auto-generated; x=y\r\n\r\n"));
    assert!(!is_automatic(b"Auto-Submitted: no\r\nSubject: x\r\n\r\n"));
    assert!(is_automatic(
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n"
    ));
    assert!(!is_automatic(
        b"Content-Type: text/plain\r\nSubject: hi\r\n\r\nhello\r\n"
    ));
}

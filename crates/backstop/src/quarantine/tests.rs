use std::time::Duration;

use backstop_queue::HeldState;
use backstop_types::quarantine::Reason;
use backstop_types::{
    Address, BodyType, ClientInfo, DsnParams, Envelope, Notify, Recipient, ReversePath, TrustClass,
};

use super::*;

fn runtime() -> Runtime {
    let settings = backstop_config::parse(
        "[smtp]\nlocal_domains = [\"example.test\"]\n[quarantine]\nlink_lifetime = \"14d\"\ncontent_retention = \"3d\"\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\nkind = \"mx\"\n",
        "test.toml",
    )
    .unwrap()
    .quarantine;
    let keys = TokenKeys::new(vec![(0, b"0123456789abcdef0123".to_vec())], 0).unwrap();
    Runtime::new(
        settings,
        Some(keys),
        Path::new("/nonexistent"),
        "mx.example.test".into(),
        vec![Domain::parse("example.test").unwrap()],
    )
    .unwrap()
}

fn record(reason: Reason, owner: Owner, at: UnixTime) -> QuarantineRecord {
    let envelope = Envelope {
        sender: ReversePath::Address(Address::parse("someone@sender.example").unwrap()),
        recipients: vec![Recipient {
            address: Address::parse("alice@example.test").unwrap(),
            notify: Notify::Default,
            orcpt: None,
        }],
        dsn: DsnParams {
            ret: None,
            envid: None,
        },
        body_type: BodyType::SevenBit,
        smtputf8: false,
        client: ClientInfo {
            ip: "192.0.2.1".parse().unwrap(),
            helo: "c.example".into(),
            ptr: None,
            tls: None,
            auth: None,
            listener: "mx".into(),
        },
        arrival: at,
        trust: TrustClass::Unverified,
    };
    QuarantineRecord::new(envelope, reason, at, 10, &[owner])
}

#[test]
fn a_digest_shows_links_and_host_names_inert() {
    assert_eq!(
        super::digest::defang("Mailbox full: sign in at https://evil.example/login now."),
        "Mailbox full: sign in at hxxps[:]//evil[.]example/login now."
    );
    assert_eq!(
        super::digest::defang("see www.evil.example or paypal.com.evil.example, Mr. Smith"),
        "see www[.]evil[.]example or paypal[.]com[.]evil[.]example, Mr. Smith"
    );
    assert_eq!(
        super::digest::defang("Scammer <scammer@sender.example>"),
        "Scammer <scammer@sender[.]example>"
    );
}

#[test]
fn a_link_is_made_only_for_what_its_recipient_may_release() {
    let rt = runtime();
    let now = UnixTime(1_800_000_000);
    let id = QueueId(42);
    // A suppressed report, even one (wrongly) marked the recipient's: no actions, no link.
    let suppressed = record(Reason::undeliverable("550 no"), Owner::Recipient, now);
    assert_eq!(Runtime::actions_for(&suppressed, 0), Actions::NONE);
    assert_eq!(rt.token_for(id, &suppressed, 0, now), None);
    let hold = record(Reason::hold("x"), Owner::Admin, now);
    assert_eq!(rt.token_for(id, &hold, 0, now), None);
    let virus = record(
        Reason::content("clamd", "clamd", "Eicar"),
        Owner::Recipient,
        now,
    );
    assert_eq!(rt.token_for(id, &virus, 0, now), None);
    let admins = record(Reason::content("rule", "rule x", "x"), Owner::Admin, now);
    assert_eq!(rt.token_for(id, &admins, 0, now), None);

    // Spam owned by alice: a link for her, which expires with the item's retention (3 days,
    // shorter than the 14-day link lifetime).
    let mut spam = record(
        Reason::content("rspamd", "rspamd", "score 12"),
        Owner::Recipient,
        now,
    );
    let token = rt.token_for(id, &spam, 0, now).expect("a link");
    let claims = rt.keys.verify(&token, now.0).unwrap();
    assert_eq!(claims.queue_id, 42);
    assert_eq!(claims.recipient, "alice@example.test");
    assert!(claims
        .actions
        .contains(Actions::RELEASE | Actions::ALLOW_SENDER));
    assert_eq!(claims.expires, now.0 + 3 * 86_400);
    // Past its retention, or released: none.
    let later = UnixTime(now.0 + 3 * 86_400);
    assert_eq!(rt.token_for(id, &spam, 0, later), None);
    spam.held[0].state = HeldState::Released(now);
    assert_eq!(rt.token_for(id, &spam, 0, now), None);
    assert_eq!(
        rt.retention(ReasonKind::Content),
        Duration::from_secs(3 * 86_400)
    );
    assert_eq!(
        rt.retention(ReasonKind::Hold),
        Duration::from_secs(30 * 86_400)
    );
}

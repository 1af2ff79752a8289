use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use backstop_filter::content::ContentAction;
use backstop_filter::greylist::GreylistPolicy;
use backstop_filter::pipeline::Pipeline;
use backstop_filter::rate::{Limit, RateLimits};
use backstop_filter::recipients::TableFile;
use backstop_session::{
    BounceProblem, Policy, RecipientQuery, RecipientVerdict, SenderQuery, SenderVerdict,
    TransactionRef,
};
use backstop_types::{Address, Clock, Domain, ManualClock, ReversePath, UnixTime};
use expect_test::{expect, Expect};

use crate::{BounceCheck, SessionState, SitePolicy};
use backstop_state::MemoryState;

/// Noon on a day, so that a BATV tag's day is the clock's.
const NOW: UnixTime = UnixTime(1_790_000_000);

/// A policy that checks nothing; tests set what they need.
fn bare() -> SitePolicy {
    SitePolicy {
        local_domains: vec![Domain::parse("example.com").unwrap()],
        batv: None,
        recipients: None,
        ldap: None,
        greylist: None,
        rate_limits: RateLimits::default(),
        counters: Arc::default(),
        callahead: None,
        proxy: None,
        dnsbl: None,
        sender_auth: None,
        rfc5322: ContentAction::Off,
        bounce_provenance: false,
        bounce_provenance_domains: Vec::new(),
        content: Pipeline {
            checks: Vec::new(),
            deadline: Duration::from_secs(60),
        },
        max_scan_size: None,
        memory: backstop_types::budget::MemoryBudget::new(1 << 30),
        hostname: "mx.test".into(),
        auth_ldap: None,
        auth_dovecot: None,
        users: Arc::default(),
        state: Arc::new(MemoryState::default()),
        clock: Arc::new(ManualClock::at(NOW)),
    }
}

fn keys() -> backstop_batv::Keys {
    backstop_batv::Keys::new(&[(2, b"a secret for the test".to_vec())], 2, 7).unwrap()
}

fn greylisting() -> GreylistPolicy {
    GreylistPolicy {
        delay: Duration::from_secs(300),
        retry_window: Duration::from_secs(86_400),
        auto_pass: Duration::from_secs(86_400),
    }
}

fn query(recipient: &Address, sender: &ReversePath, local: bool, trusted: bool) -> RecipientQuery {
    RecipientQuery {
        recipient: recipient.clone(),
        sender: sender.clone(),
        client: "192.0.2.1".parse().unwrap(),
        local,
        trusted,
        user: None,
        transaction: TransactionRef {
            session: 1,
            number: 1,
        },
        proxied: None,
        size: None,
    }
}

fn address(text: &str) -> Address {
    Address::parse(text).unwrap()
}

/// A policy with every synchronous recipient check on: a table with `bob` and an alias
/// `sales` for him, BATV on bounces (lists@example.com exempt), greylisting.
fn site(dir: &std::path::Path, clock: Arc<dyn Clock>) -> SitePolicy {
    let table = dir.join("recipients");
    std::fs::write(
        &table,
        "bob@example.com\nsales@example.com bob@example.com\nlists@example.com\n",
    )
    .unwrap();
    SitePolicy {
        recipients: Some(TableFile::open(&table).unwrap()),
        batv: Some(BounceCheck {
            keys: keys(),
            enforce: true,
            exempt: vec!["lists@example.com".into()],
            clock: Arc::clone(&clock),
        }),
        greylist: Some(greylisting()),
        clock,
        ..bare()
    }
}

fn short(verdict: &RecipientVerdict) -> String {
    match verdict {
        RecipientVerdict::Accept(targets) => {
            let targets: Vec<_> = targets.iter().map(|t| t.local_part().to_owned()).collect();
            format!("accept:{}", targets.join(","))
        }
        RecipientVerdict::Unknown => "550 unknown".into(),
        RecipientVerdict::Defer { .. } => "451 greylisted".into(),
        RecipientVerdict::NotOurBounce(p) => format!("550 bounce {p:?}"),
        RecipientVerdict::RateLimited => "451 rate".into(),
        RecipientVerdict::Unavailable => "451 unavailable".into(),
        other => format!("{other:?}"),
    }
}

/// The order of the recipient checks (crates/policy/src/recipient.rs), one row per
/// recipient, one column per kind of sender, each cell asked of a fresh policy: a bounce needs
/// our tag before anything else is asked, an unknown recipient is refused before greylisting,
/// trusted clients are never greylisted, and a valid tag is removed for any sender.
#[test]
fn the_recipient_order_table() {
    let bob = address("bob@example.com");
    let today = backstop_batv::day_of(NOW);
    let tagged = keys().sign(&bob, today);
    let forged = address(&tagged.to_string().replace("=bob@", "=eve@"));
    let expired = keys().sign(&bob, today - 30);
    let rows = [
        ("bob", bob.clone(), true),
        ("alias sales", address("sales@example.com"), true),
        ("unknown", address("nobody@example.com"), true),
        ("tagged bob", tagged.clone(), true),
        (
            "tagged unknown",
            keys().sign(&address("nobody@example.com"), today),
            true,
        ),
        ("forged tag", forged, true),
        ("expired tag", expired, true),
        ("abuse (exempt)", address("abuse@example.com"), true),
        ("lists (exempt)", address("lists@example.com"), true),
        ("relay domain", address("bob@relay.example"), false),
    ];
    let someone = ReversePath::Address(address("someone@example.org"));
    let columns = [
        ("bounce", ReversePath::Null, false),
        ("bounce, trusted", ReversePath::Null, true),
        ("mail", someone.clone(), false),
        ("mail, trusted", someone, true),
    ];
    let mut table = format!("{:<15}", "");
    for (name, _, _) in &columns {
        table.push_str(&format!(" | {name:<18}"));
    }
    table.push('\n');
    for (name, recipient, local) in &rows {
        table.push_str(&format!("{name:<15}"));
        for (_, sender, trusted) in &columns {
            let dir = tempfile::tempdir().unwrap();
            let policy = site(dir.path(), Arc::new(ManualClock::at(NOW)));
            let verdict = decide(&policy, &query(recipient, sender, *local, *trusted));
            table.push_str(&format!(" | {:<18}", short(&verdict)));
        }
        table.push('\n');
    }
    let table: String = table
        .lines()
        .map(|l| format!("{}\n", l.trim_end()))
        .collect();
    check(
        &table,
        expect![[r#"
                            | bounce             | bounce, trusted    | mail               | mail, trusted
            bob             | 550 bounce Missing | 550 bounce Missing | 451 greylisted     | accept:bob
            alias sales     | 550 bounce Missing | 550 bounce Missing | 451 greylisted     | accept:bob
            unknown         | 550 bounce Missing | 550 bounce Missing | 550 unknown        | 550 unknown
            tagged bob      | 451 greylisted     | accept:bob         | 451 greylisted     | accept:bob
            tagged unknown  | 550 unknown        | 550 unknown        | 550 unknown        | 550 unknown
            forged tag      | 550 bounce Invalid | 550 bounce Invalid | 550 unknown        | 550 unknown
            expired tag     | 550 bounce Expired | 550 bounce Expired | 550 unknown        | 550 unknown
            abuse (exempt)  | 550 unknown        | 550 unknown        | 550 unknown        | 550 unknown
            lists (exempt)  | 451 greylisted     | accept:lists       | 451 greylisted     | accept:lists
            relay domain    | 451 greylisted     | accept:bob         | 451 greylisted     | accept:bob
        "#]],
    );
}

/// The recipient checks of steps 2 to 5, run to their end here: the state is in memory and
/// never makes them wait.
fn decide(policy: &SitePolicy, query: &RecipientQuery) -> RecipientVerdict {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(policy.decide(query, None))
}

fn check(actual: &str, expect: Expect) {
    expect.assert_eq(actual);
}

/// A greylisted triplet passes once the delay is over; the wait is the clock's, not the test's.
#[test]
fn a_retry_after_the_delay_passes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::at(NOW));
    let policy = site(dir.path(), clock.clone());
    let mail = ReversePath::Address(address("someone@example.org"));
    let ask = || {
        decide(
            &policy,
            &query(&address("bob@example.com"), &mail, true, false),
        )
    };
    assert_eq!(ask(), RecipientVerdict::Defer { retry_after: 300 });
    clock.advance(299);
    assert_eq!(ask(), RecipientVerdict::Defer { retry_after: 1 });
    clock.advance(1);
    assert_eq!(
        ask(),
        RecipientVerdict::Accept(vec![address("bob@example.com")])
    );
}

#[test]
fn trusted_clients_are_never_greylisted_and_unknown_recipients_leave_no_state() {
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("recipients");
    std::fs::write(&table, "bob@example.com\n").unwrap();
    let store = Arc::new(MemoryState::default());
    let policy = SitePolicy {
        recipients: Some(TableFile::open(&table).unwrap()),
        greylist: Some(greylisting()),
        state: store.clone(),
        ..bare()
    };
    let ask = |recipient: &str, trusted: bool| {
        decide(
            &policy,
            &query(&address(recipient), &ReversePath::Null, true, trusted),
        )
    };
    let bob = address("bob@example.com");
    assert_eq!(
        ask("bob@example.com", true),
        RecipientVerdict::Accept(vec![bob])
    );
    assert_eq!(ask("nobody@example.com", false), RecipientVerdict::Unknown);
    assert_eq!(store.len(), 0);
    assert_eq!(
        ask("bob@example.com", false),
        RecipientVerdict::Defer { retry_after: 300 }
    );
}

#[test]
fn bounces_need_our_tag_and_leave_it_behind() {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::at(NOW));
    let today = backstop_batv::day_of(clock.now());
    let bob = address("bob@example.com");
    let tagged = keys().sign(&bob, today);
    let policy = SitePolicy {
        batv: Some(BounceCheck {
            keys: keys(),
            enforce: true,
            exempt: vec!["lists@example.com".into(), "@other.example".into()],
            clock: Arc::clone(&clock),
        }),
        ..bare()
    };
    let bounce = |r: &Address| decide(&policy, &query(r, &ReversePath::Null, true, false));
    assert_eq!(bounce(&tagged), RecipientVerdict::Accept(vec![bob.clone()]));
    assert_eq!(
        bounce(&bob),
        RecipientVerdict::NotOurBounce(BounceProblem::Missing)
    );
    let forged = address(&tagged.to_string().replace("=bob@", "=eve@"));
    assert_eq!(
        bounce(&forged),
        RecipientVerdict::NotOurBounce(BounceProblem::Invalid)
    );
    let stale = keys().sign(&bob, today - 30);
    assert_eq!(
        bounce(&stale),
        RecipientVerdict::NotOurBounce(BounceProblem::Expired)
    );
    // Exempt: abuse@, the configured address and domain.
    for exempt in ["abuse@example.com", "LISTS@example.com", "x@other.example"] {
        let a = address(exempt);
        assert_eq!(
            bounce(&a),
            RecipientVerdict::Accept(vec![a.clone()]),
            "{exempt}"
        );
    }
    // Mail with a sender is not a bounce: untagged is fine.
    let mail = ReversePath::Address(address("x@example.org"));
    assert_eq!(
        decide(&policy, &query(&bob, &mail, true, false)),
        RecipientVerdict::Accept(vec![bob])
    );
}

#[tokio::test]
async fn users_are_limited_apart_from_clients_and_local_networks_are_exempt() {
    let one_a_day = Some(Limit::parse("1/1d").unwrap());
    let policy = SitePolicy {
        rate_limits: RateLimits {
            client_messages: one_a_day,
            user_messages: one_a_day,
            ..RateLimits::default()
        },
        ..bare()
    };
    let mut session = SessionState::default();
    let query = |user: Option<&str>, trusted: bool| SenderQuery {
        sender: ReversePath::Null,
        client: "192.0.2.1".parse().unwrap(),
        helo: "client.example".into(),
        user: user.map(str::to_owned),
        trusted,
    };
    let alice = || query(Some("alice"), true);
    assert_eq!(
        policy.check_sender(&mut session, alice()).await,
        SenderVerdict::Accept
    );
    assert_eq!(
        policy.check_sender(&mut session, alice()).await,
        SenderVerdict::RateLimited
    );
    // The same address without AUTH has its own count; a local network has none.
    assert_eq!(
        policy.check_sender(&mut session, query(None, false)).await,
        SenderVerdict::Accept
    );
    assert_eq!(
        policy.check_sender(&mut session, query(None, false)).await,
        SenderVerdict::RateLimited
    );
    for _ in 0..3 {
        assert_eq!(
            policy.check_sender(&mut session, query(None, true)).await,
            SenderVerdict::Accept
        );
    }
    assert!(
        policy
            .allow_connection("192.0.2.1".parse().unwrap(), false)
            .await
    );
}

/// Which checks the session asks for follows from what is configured: nothing configured,
/// nothing asked; each check turns on its stage.
#[test]
fn the_checks_asked_follow_the_configuration() {
    use backstop_session::Checks;
    assert_eq!(bare().checks(), Checks::default());
    let dir = tempfile::tempdir().unwrap();
    let every_recipient_check = site(dir.path(), Arc::new(ManualClock::at(NOW)));
    assert_eq!(
        every_recipient_check.checks(),
        Checks {
            recipients: true,
            ..Checks::default()
        }
    );
    let messages = SitePolicy {
        rfc5322: ContentAction::Reject,
        ..bare()
    };
    assert!(messages.checks().messages);
    let senders = SitePolicy {
        rate_limits: RateLimits {
            client_messages: Some(Limit::parse("10/1h").unwrap()),
            ..RateLimits::default()
        },
        ..bare()
    };
    assert!(senders.checks().senders);
    // A connection limit alone asks nothing of MAIL or RCPT.
    let connections = SitePolicy {
        rate_limits: RateLimits {
            client_connections: Some(Limit::parse("10/1h").unwrap()),
            ..RateLimits::default()
        },
        ..bare()
    };
    assert_eq!(connections.checks(), Checks::default());
}

/// An IPv6 client is its /64 for the rate limits too: one host usually has the whole /64, and
/// a new address in it per connection must not be a new client.
#[tokio::test]
async fn an_ipv6_client_is_limited_as_its_64() {
    let policy = SitePolicy {
        rate_limits: RateLimits {
            client_connections: Some(Limit::parse("2/1d").unwrap()),
            client_messages: Some(Limit::parse("1/1d").unwrap()),
            ..RateLimits::default()
        },
        ..bare()
    };
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(policy.allow_connection(ip("2001:db8:1:2::1"), false).await);
    assert!(policy.allow_connection(ip("2001:db8:1:2::2"), false).await);
    assert!(!policy.allow_connection(ip("2001:db8:1:2::3"), false).await);
    assert!(policy.allow_connection(ip("2001:db8:1:3::1"), false).await);
    let mut session = SessionState::default();
    let query = |client: &str| SenderQuery {
        sender: ReversePath::Null,
        client: ip(client),
        helo: "client.example".into(),
        user: None,
        trusted: false,
    };
    assert_eq!(
        policy
            .check_sender(&mut session, query("2001:db8:1:2::1"))
            .await,
        SenderVerdict::Accept
    );
    assert_eq!(
        policy
            .check_sender(&mut session, query("2001:db8:1:2::ffff"))
            .await,
        SenderVerdict::RateLimited
    );
}

/// The site's state cannot be reached (Redis down): every call fails.
struct Down;

impl backstop_state::State for Down {
    fn get<'a>(
        &'a self,
        _: &'a backstop_state::Key,
        _: UnixTime,
    ) -> backstop_state::Answer<'a, Option<Vec<u8>>> {
        Box::pin(async { Err(backstop_state::StateError::Unreachable("refused".into())) })
    }
    fn put<'a>(
        &'a self,
        _: &'a backstop_state::Key,
        _: &'a [u8],
        _: UnixTime,
        _: UnixTime,
    ) -> backstop_state::Answer<'a, ()> {
        Box::pin(async { Err(backstop_state::StateError::Unreachable("refused".into())) })
    }
    fn add_in_window<'a>(
        &'a self,
        _: &'a backstop_state::Key,
        _: u64,
        _: Duration,
        _: UnixTime,
    ) -> backstop_state::Answer<'a, u64> {
        Box::pin(async { Err(backstop_state::StateError::Timeout(Duration::from_secs(1))) })
    }
    fn describe(&self) -> String {
        "Redis at redis://127.0.0.1:1/0".into()
    }
}

/// Each caller's rule for a site state that does not answer (docs/anti-backscatter.md):
/// greylisting and callahead answers are 451, never accept unchecked and never 5xx; a bounce
/// whose provenance cannot be looked up is 451; rate limits count on this node instead.
#[tokio::test]
async fn a_site_state_that_does_not_answer_is_451_or_the_nodes_own_count() {
    use backstop_session::ContentVerdict;
    use backstop_types::{
        BodyType, ClientInfo, DsnParams, Envelope, Notify, Recipient, TrustClass,
    };
    let policy = SitePolicy {
        greylist: Some(greylisting()),
        rate_limits: RateLimits {
            client_messages: Some(Limit::parse("2/1h").unwrap()),
            ..RateLimits::default()
        },
        bounce_provenance: true,
        state: Arc::new(Down),
        ..bare()
    };
    let mut session = SessionState::default();
    let mail = ReversePath::Address(address("someone@example.org"));
    assert_eq!(
        policy
            .check_recipient(
                &mut session,
                query(&address("bob@example.com"), &mail, true, false)
            )
            .await,
        RecipientVerdict::Unavailable
    );
    let sender = || SenderQuery {
        sender: mail.clone(),
        client: "192.0.2.1".parse().unwrap(),
        helo: "client.example.org".into(),
        user: None,
        trusted: false,
    };
    for _ in 0..2 {
        assert_eq!(
            policy.check_sender(&mut session, sender()).await,
            SenderVerdict::Accept
        );
    }
    assert_eq!(
        policy.check_sender(&mut session, sender()).await,
        SenderVerdict::RateLimited
    );
    let bounce = b"From: MAILER-DAEMON@mx.example.org\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nsorry\r\n\
--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: a@example.com\r\nMessage-ID: <x@example.com>\r\n\r\nhi\r\n\
--b--\r\n";
    let message = backstop_session::Message {
        envelope: Envelope {
            sender: ReversePath::Null,
            recipients: vec![Recipient {
                address: address("bob@example.com"),
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
                helo: "mx.example.org".into(),
                ptr: None,
                tls: None,
                auth: None,
                listener: "mx".into(),
            },
            arrival: NOW,
            trust: TrustClass::Unverified,
        },
        body: bounce.to_vec().into(),
        proxied: None,
    };
    match policy.check_message(&mut session, &message).await {
        ContentVerdict::Refuse(reply) => assert_eq!(reply.code(), 451, "{reply}"),
        other => panic!("{other:?}"),
    }
}
